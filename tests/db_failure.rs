//! End to end: losing the database never stops audio (control plane issue). With the
//! gateway on PostgreSQL, the test cuts the database off mid-call: the call keeps
//! streaming, the API answers 503 for what needs the store (and keeps serving live
//! state), the finished call's record waits in the queue, and it is written once the
//! database is back.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{GatewayProcess, PgDatabase, uuid};
use sip_glue::fake_asterisk::{CallEnd, FakeCall, Source};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_and_records_wait_while_the_database_is_down() {
    let database = PgDatabase::create("telepatch_e2e");
    let url = database.url();
    // No refresh of the open record during the call: the end is the one write held.
    let gateway = GatewayProcess::start_with_args(
        "[database]\ncdr_refresh_ms = 60000\n",
        &["--database-url", &url],
    );
    let token = gateway.token("ops", "admin");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let get = |path: &str| {
        http.get(format!("{}{path}", gateway.api_url()))
            .bearer_auth(&token)
            .send()
    };

    // Prime the token cache while the database is up.
    assert_eq!(get("/v1/routes").await.unwrap().status().as_u16(), 200);

    let id = uuid();
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, id)
            .source(Source::tone(1000.0, -6.0))
            .duration(Duration::from_secs(6))
            .run(),
    );
    gateway
        .wait_log_all(&["call connected", &id.to_string()], Duration::from_secs(5))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The call is on record (open) before the database goes.
    let mut opened = false;
    for _ in 0..100 {
        let page: serde_json::Value = get(&format!("/v1/cdrs?uuid={id}&include_open=true"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["items"]
            .as_array()
            .is_some_and(|items| items.len() == 1)
        {
            assert_eq!(page["items"][0]["open"], true);
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(opened, "the call was not put on record when admitted");
    database.cut_off();

    // The store is gone: what needs it is 503; live state is still served.
    let routes = get("/v1/routes").await.unwrap();
    assert_eq!(routes.status().as_u16(), 503);
    let problem: serde_json::Value = routes.json().await.unwrap();
    assert_eq!(problem["error"], "unavailable");
    let calls = get("/v1/calls").await.unwrap();
    assert_eq!(
        calls.status().as_u16(),
        200,
        "live calls do not need the database"
    );
    let calls: serde_json::Value = calls.json().await.unwrap();
    assert_eq!(calls["items"][0]["uuid"], id.to_string());
    let ready = http
        .get(format!("{}/readyz", gateway.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);

    // The call ends while the database is down; its record waits.
    let report = call.await.unwrap().unwrap();
    assert_eq!(report.end, CallEnd::Completed, "the call ran to its end");
    assert!(report.violations.is_empty());
    let gaps: Vec<f64> = report
        .inter_arrival()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let worst = gaps.iter().copied().fold(0.0, f64::max);
    assert!(
        worst < 60.0,
        "audio to the caller stalled for {worst:.1} ms during the outage"
    );
    assert!(
        report.frames.len() > 280,
        "{} frames heard in 6 s",
        report.frames.len()
    );
    // The gateway sees the hangup a moment after the caller closes.
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = reqwest::get(format!("{}/metrics", gateway.api_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.lines().any(|l| l == "telepatch_calls_active 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metrics.lines().any(|l| l == "telepatch_calls_active 0"),
        "{metrics}"
    );
    let pending = metrics
        .lines()
        .find(|l| l.starts_with("telepatch_cdr_pending "))
        .unwrap();
    assert_eq!(
        pending, "telepatch_cdr_pending 1",
        "the call's end waits in the queue"
    );

    database.restore();
    let mut written = false;
    for _ in 0..100 {
        let response = get(&format!("/v1/cdrs?uuid={id}")).await.unwrap();
        if response.status().as_u16() == 200 {
            let page: serde_json::Value = response.json().await.unwrap();
            if page["items"]
                .as_array()
                .is_some_and(|items| items.len() == 1)
            {
                assert_eq!(page["items"][0]["ended_by"], "caller");
                assert_eq!(page["items"][0]["open"], false);
                written = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        written,
        "the record was written after the database came back; logs:\n{}",
        gateway.logs().join("\n")
    );
    assert_eq!(
        get("/v1/routes").await.unwrap().status().as_u16(),
        200,
        "the API recovered"
    );
}
