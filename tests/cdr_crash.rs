//! End to end: every call is on record even when the gateway dies. Calls are put on
//! record when admitted and refreshed while they last; the test SIGKILLs the real
//! binary with live calls, starts it again on the same database, and checks that each
//! call has exactly one record, closed as interrupted with the duration it had reached
//! (within a refresh interval). On PostgreSQL a second instance shares the database:
//! its live calls' records are left open by the restart, and completed by their ends.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{GatewayProcess, PgDatabase, uuid};
use serde_json::Value;
use sip_glue::fake_asterisk::{CallReport, FakeCall, FakeCallError, Source};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// `database.cdr_refresh_ms` of these gateways.
const REFRESH: Duration = Duration::from_millis(500);
/// How stale a refreshed duration may be when the test reads it: a refresh interval,
/// plus the queue's flush interval (200 ms) and the write itself.
const READ_STALENESS: Duration = Duration::from_millis(900);

fn config(instance: &str) -> String {
    format!(
        "[gateway]\ninstance = \"{instance}\"\n[database]\ncdr_refresh_ms = {}\n",
        REFRESH.as_millis()
    )
}

/// Every record (open ones too) of call `id`.
async fn records(gateway: &GatewayProcess, token: &str, id: Uuid) -> Vec<Value> {
    let page: Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/cdrs?uuid={id}&include_open=true",
            gateway.api_url()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["items"].as_array().cloned().unwrap_or_default()
}

/// Waits until `done` holds for the records of every call in `ids`; returns them.
async fn wait_records(
    gateway: &GatewayProcess,
    token: &str,
    ids: &[Uuid],
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> HashMap<Uuid, Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut all = HashMap::new();
        for id in ids {
            all.insert(*id, records(gateway, token, *id).await);
        }
        if all.values().all(|r| done(r)) {
            return all;
        }
        assert!(Instant::now() < deadline, "{what}: {all:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Call = (Uuid, Instant, JoinHandle<Result<CallReport, FakeCallError>>);

/// Starts `count` calls of `duration` and waits until the gateway admitted them all.
fn start_calls(gateway: &GatewayProcess, count: usize, duration: Duration) -> Vec<Call> {
    let calls: Vec<Call> = (0..count)
        .map(|_| {
            let id = uuid();
            let connecting = Instant::now();
            let call = tokio::spawn(
                FakeCall::new(gateway.addr, id)
                    .source(Source::tone(440.0, -12.0))
                    .duration(duration)
                    .run(),
            );
            (id, connecting, call)
        })
        .collect();
    for (id, _, _) in &calls {
        gateway
            .wait_log_all(
                &["call connected", &id.to_string()],
                Duration::from_secs(10),
            )
            .unwrap_or_else(|| panic!("call {id} not admitted"));
    }
    calls
}

/// Kills `gateway` with the `calls` live after they have been refreshed at least
/// `lasting`, restarts it on the same database and checks their records.
async fn crash_and_restart(
    gateway: &mut GatewayProcess,
    token: &str,
    calls: Vec<Call>,
    lasting: Duration,
    instance: &str,
) -> GatewayProcess {
    let ids: Vec<Uuid> = calls.iter().map(|(id, _, _)| *id).collect();
    // On record from admission: open, saying what it will say if the gateway dies.
    let opened = wait_records(gateway, token, &ids, "records opened", |r| r.len() == 1).await;
    for (id, record) in &opened {
        let record = &record[0];
        assert_eq!(record["open"], true, "{id}: {record}");
        assert_eq!(record["instance"], instance);
        assert_eq!(record["ended_by"], "interrupted");
    }
    // Wait until every record has been refreshed to within READ_STALENESS of the time
    // its call has lasted, and the calls have lasted `lasting`; kill right after.
    let connected: HashMap<Uuid, Instant> = calls.iter().map(|(id, at, _)| (*id, *at)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (seen, read_at) = loop {
        let read_at = Instant::now();
        let seen = wait_records(gateway, token, &ids, "records open", |r| r.len() == 1).await;
        let fresh = seen.iter().all(|(id, r)| {
            let so_far = Duration::from_millis(r[0]["duration_ms"].as_u64().unwrap());
            let lasted = read_at - connected[id];
            lasted >= lasting && lasted.saturating_sub(so_far) <= READ_STALENESS
        });
        if fresh {
            break (seen, read_at);
        }
        assert!(
            Instant::now() < deadline,
            "records not refreshed: {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let killed_at = Instant::now();
    gateway.kill();
    for (_, _, call) in calls {
        // The caller sees its connection drop; how is not the point here.
        let _ = call.await.unwrap();
    }

    let restarted =
        GatewayProcess::start_with_args(&config(instance), &["--database-url", &gateway.database]);
    let closed = wait_records(&restarted, token, &ids, "records closed", |r| {
        r.iter().all(|record| record["open"] == false)
    })
    .await;
    for (id, records) in &closed {
        assert_eq!(
            records.len(),
            1,
            "exactly one record for {id}: {records:#?}"
        );
        let record = &records[0];
        assert_eq!(record["ended_by"], "interrupted", "{record}");
        assert_eq!(record["end_reason"], "gateway stopped unexpectedly");
        assert_eq!(record["instance"], instance);
        let kept = record["duration_ms"].as_u64().unwrap();
        let before_kill = seen[id][0]["duration_ms"].as_u64().unwrap();
        // The record keeps the last refresh: no older than what was read before the
        // kill, no longer than the call really lasted (it was admitted after the
        // connection and refreshed before the kill)...
        let lasted = (killed_at - connected[id]).as_millis() as u64;
        assert!(
            (before_kill..=lasted).contains(&kept),
            "{id}: kept {kept} ms, read {before_kill} ms before the kill, lasted {lasted} ms"
        );
        // ...so within a refresh (and the write) of it.
        let slack = (READ_STALENESS + (killed_at - read_at)).as_millis() as u64;
        assert!(
            lasted - kept <= slack,
            "{id}: kept {kept} ms of {lasted} ms (slack {slack} ms)"
        );
        assert!(record["frames_in"].as_u64().unwrap() > 0, "{record}");
    }
    let metrics = common::metrics_text(&restarted).await;
    assert_eq!(
        common::metric_value(&metrics, "telepatch_cdr_interrupted_closed_total"),
        ids.len() as f64,
        "the restart closed exactly the killed calls' records"
    );
    // Closed records are listed by default.
    for id in &ids {
        let page: Value = reqwest::Client::new()
            .get(format!("{}/v1/cdrs?uuid={id}", restarted.api_url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    }
    restarted
}

/// A call that ends normally while the gateway runs: one record, completed.
async fn normal_call(gateway: &GatewayProcess, token: &str) -> Uuid {
    let id = uuid();
    FakeCall::new(gateway.addr, id)
        .source(Source::tone(440.0, -12.0))
        .duration(Duration::from_millis(1500))
        .run()
        .await
        .unwrap();
    let done = wait_records(gateway, token, &[id], "normal call closed", |r| {
        r.first().is_some_and(|record| record["open"] == false)
    })
    .await;
    let records = &done[&id];
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["ended_by"], "caller");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_calls_live_at_a_kill_are_closed_as_interrupted_at_restart() {
    let mut gateway = GatewayProcess::start(&config("crash-sqlite"));
    let token = gateway.token("ops", "admin");
    let normal = normal_call(&gateway, &token).await;
    let calls = start_calls(&gateway, 5, Duration::from_secs(60));
    let restarted = crash_and_restart(
        &mut gateway,
        &token,
        calls,
        Duration::from_secs(3),
        "crash-sqlite",
    )
    .await;
    let after = records(&restarted, &token, normal).await;
    assert_eq!(after.len(), 1, "{after:#?}");
    assert_eq!(after[0]["ended_by"], "caller");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_closes_only_its_own_instances_records() {
    let database = PgDatabase::create("telepatch_crash");
    let url = database.url();
    let mut crashing = GatewayProcess::start_with_args(&config("pg-a"), &["--database-url", &url]);
    let other = GatewayProcess::start_with_args(&config("pg-b"), &["--database-url", &url]);
    let token = crashing.token("ops", "admin");

    // The other instance's calls outlive the crash and the restart.
    let others = start_calls(&other, 2, Duration::from_secs(25));
    let calls = start_calls(&crashing, 3, Duration::from_secs(60));
    let restarted =
        crash_and_restart(&mut crashing, &token, calls, Duration::from_secs(3), "pg-a").await;

    let other_ids: Vec<Uuid> = others.iter().map(|(id, _, _)| *id).collect();
    let live = wait_records(
        &restarted,
        &token,
        &other_ids,
        "other instance's records",
        |r| r.len() == 1,
    )
    .await;
    for (id, records) in &live {
        assert_eq!(records[0]["instance"], "pg-b", "{id}");
        assert_eq!(
            records[0]["open"], true,
            "{id}: another instance's live call is not closed: {records:#?}"
        );
    }
    let mut connected = HashMap::new();
    for (id, connecting, call) in others {
        call.await.unwrap().unwrap();
        connected.insert(id, connecting);
    }
    let ended = wait_records(&restarted, &token, &other_ids, "other calls ended", |r| {
        r.iter().all(|record| record["open"] == false)
    })
    .await;
    for (id, records) in &ended {
        let upper = connected[id].elapsed().as_millis() as u64;
        assert_eq!(records.len(), 1, "one record for {id}: {records:#?}");
        assert_eq!(records[0]["ended_by"], "caller", "{id}");
        // The real end: the whole 25 s call, no longer than from its connection to the
        // moment its completed record was seen.
        let kept = records[0]["duration_ms"].as_u64().unwrap();
        assert!(
            (25_000..=upper).contains(&kept),
            "{id}: {kept} ms of {upper} ms"
        );
    }
    drop(restarted);
    drop(other);
}
