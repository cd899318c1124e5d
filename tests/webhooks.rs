//! End to end: event webhooks (`docs/API.md`, "Event webhooks"). A loopback HTTP
//! server in the test plays the application behind `[webhooks] events_url`; the real
//! gateway binary takes calls from fake Asterisk callers.
//!
//! - every event arrives signed (`Telepatch-Signature`, checked here with an HMAC of our
//!   own), with its id in `Telepatch-Event-Id`, numbered 1, 2, 3... per call in the order
//!   it arrives; `call_ended` carries the call record;
//! - an endpoint that answers 503 for its first 10 s gets every event afterwards, in
//!   order, each retry with the same id and body;
//! - an endpoint that is down for good costs no more than `queue_limit` held events:
//!   the rest are dropped and counted, and calls keep flowing without gaps.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{GatewayProcess, metric_value, metrics_text, uuid};
use hmac::{KeyInit, Mac};
use serde_json::Value;
use sip_glue::audiosocket::DtmfDigit;
use sip_glue::fake_asterisk::{CallEnd, CallReport, FakeCall, Source};
use uuid::Uuid;

const SECRET: &str = "whsec-test-0123456789";

/// One request the application received.
#[derive(Debug, Clone)]
struct Received {
    accepted: bool,
    event_id: String,
    signature: String,
    content_type: String,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// The application: records every request; answers 503 while `refusing`, else 200.
#[derive(Clone, Default)]
struct Application {
    received: Arc<Mutex<Vec<Received>>>,
    refusing: Arc<AtomicBool>,
}

impl Application {
    /// Serves on a loopback port; returns the events URL.
    async fn start(&self) -> String {
        async fn hook(
            State(app): State<Application>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            let accepted = !app.refusing.load(Ordering::SeqCst);
            app.received.lock().unwrap().push(Received {
                accepted,
                event_id: header("telepatch-event-id"),
                signature: header("telepatch-signature"),
                content_type: header("content-type"),
                body,
            });
            if accepted {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .route("/hooks", axum::routing::post(hook))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}/hooks")
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The accepted events of each call, in arrival order.
    fn accepted_by_call(&self) -> BTreeMap<String, Vec<Value>> {
        let mut calls: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for request in self.received().iter().filter(|r| r.accepted) {
            let event = request.json();
            calls
                .entry(event["call"].as_str().unwrap().to_owned())
                .or_default()
                .push(event);
        }
        calls
    }

    /// Waits until every call in `calls` has had its `call_ended` accepted.
    async fn wait_ended(&self, calls: &[Uuid], limit: Duration) {
        let until = Instant::now() + limit;
        loop {
            let by_call = self.accepted_by_call();
            let ended = calls.iter().all(|call| {
                by_call
                    .get(&call.to_string())
                    .is_some_and(|events| events.iter().any(|e| e["type"] == "call_ended"))
            });
            if ended {
                return;
            }
            assert!(
                Instant::now() < until,
                "not every call_ended arrived within {limit:?}: {by_call:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Checks the signature as a receiver would: `t=<unix>,v1=<hex HMAC-SHA256(secret,
/// "<t>.<body>")>`, with a timestamp within 5 minutes.
fn assert_signed(request: &Received) {
    let mut timestamp = None;
    let mut signature = None;
    for part in request.signature.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = Some(t.to_owned()),
            Some(("v1", v)) => signature = Some(v.to_owned()),
            _ => {}
        }
    }
    let timestamp = timestamp.expect("t= in Telepatch-Signature");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&request.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        signature.as_deref(),
        Some(expected.as_str()),
        "signature of {}",
        String::from_utf8_lossy(&request.body)
    );
    let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
    assert!(age.abs() < 300, "signed {age} s ago");
    assert_eq!(request.content_type, "application/json");
    assert_eq!(request.event_id, request.json()["id"].as_str().unwrap());
}

/// Asserts `events` are numbered 1, 2, 3... in arrival order; returns their types.
fn types_in_order(call: &str, events: &[Value]) -> Vec<String> {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, expected, "{call}: {events:#?}");
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

fn webhooks_section(url: &str, extra: &str) -> String {
    format!("[webhooks]\nevents_url = \"{url}\"\nsecret = \"{SECRET}\"\n{extra}\n")
}

/// One second of silence, a second of a voiced buzz (voice activity detection hears
/// talk start and stop), then silence.
fn talk_burst() -> Source {
    let rate = 8_000usize;
    let mut samples = vec![0.0f32; rate];
    samples.extend((0..rate).map(|n| {
        let t = n as f32 / rate as f32;
        (1..=12)
            .map(|k| (2.0 * std::f32::consts::PI * 150.0 * k as f32 * t).sin() / k as f32)
            .sum::<f32>()
            * 0.25
    }));
    samples.extend(vec![0.0f32; rate * 2]);
    Source::samples(samples)
}

fn assert_completed(report: &CallReport) {
    assert_eq!(report.end, CallEnd::Completed, "{}", report.uuid);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_signed_and_in_order_per_call() {
    let app = Application::default();
    let url = app.start().await;
    let mut gateway = GatewayProcess::start(&webhooks_section(
        &url,
        "\n[gateway]\ninstance = \"hooks-1\"",
    ));
    let (talker, dialer) = (uuid(), uuid());
    let talking = tokio::spawn(
        FakeCall::new(gateway.addr, talker)
            .source(talk_burst())
            .dtmf(
                Duration::from_millis(3500),
                DtmfDigit::try_from('#').unwrap(),
            )
            .duration(Duration::from_secs(4))
            .run(),
    );
    let dialing = tokio::spawn(
        FakeCall::new(gateway.addr, dialer)
            .dtmf(
                Duration::from_millis(500),
                DtmfDigit::try_from('1').unwrap(),
            )
            .dtmf(
                Duration::from_millis(1000),
                DtmfDigit::try_from('2').unwrap(),
            )
            .dtmf(
                Duration::from_millis(1500),
                DtmfDigit::try_from('3').unwrap(),
            )
            .duration(Duration::from_secs(3))
            .run(),
    );
    assert_completed(&talking.await.unwrap().unwrap());
    assert_completed(&dialing.await.unwrap().unwrap());
    app.wait_ended(&[talker, dialer], Duration::from_secs(20))
        .await;

    for request in app.received() {
        assert!(request.accepted);
        assert_signed(&request);
    }
    let by_call = app.accepted_by_call();
    assert_eq!(by_call.len(), 2, "{by_call:#?}");
    let talker_events = &by_call[&talker.to_string()];
    assert_eq!(
        types_in_order("talker", talker_events),
        [
            "call_started",
            "talk_start",
            "talk_stop",
            "dtmf",
            "call_ended"
        ]
    );
    let dialer_events = &by_call[&dialer.to_string()];
    assert_eq!(
        types_in_order("dialer", dialer_events),
        ["call_started", "dtmf", "dtmf", "dtmf", "call_ended"]
    );
    let digits: Vec<&str> = dialer_events
        .iter()
        .filter(|e| e["type"] == "dtmf")
        .map(|e| e["data"]["digit"].as_str().unwrap())
        .collect();
    assert_eq!(digits, ["1", "2", "3"]);
    for event in talker_events.iter().chain(dialer_events) {
        assert_eq!(event["gateway"], "hooks-1");
        assert!(event["created_at"].as_str().unwrap().ends_with('Z'));
    }
    // The end carries the call record.
    let ended = talker_events.last().unwrap();
    let data = &ended["data"];
    assert_eq!(data["ended_by"], "caller");
    assert!(data["duration_ms"].as_u64().unwrap() >= 3_500, "{data}");
    let record = &data["record"];
    assert_eq!(record["uuid"], talker.to_string());
    assert_eq!(record["ended_by"], "caller");
    assert_eq!(record["duration_ms"], data["duration_ms"]);
    assert!(record["frames_in"].as_u64().unwrap() > 150, "{record}");
    assert!(record["frames_out"].as_u64().unwrap() > 100, "{record}");
    assert!(record["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let started = &talker_events[0]["data"];
    assert!(started["peer"].as_str().unwrap().starts_with("127.0.0.1:"));

    let metrics = metrics_text(&gateway).await;
    assert_eq!(
        metric_value(
            &metrics,
            "telepatch_webhook_deliveries_total{result=\"delivered\"}"
        ),
        10.0
    );
    assert_eq!(metric_value(&metrics, "telepatch_webhook_queue_depth"), 0.0);
    assert!(gateway.terminate(), "clean exit");
    assert!(
        gateway
            .wait_log("nothing left undelivered", Duration::from_secs(5))
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_for_ten_seconds_receives_every_event_afterwards() {
    let app = Application::default();
    app.refusing.store(true, Ordering::SeqCst);
    let url = app.start().await;
    let down_since = Instant::now();
    let gateway = GatewayProcess::start(&webhooks_section(&url, ""));
    let calls = [uuid(), uuid(), uuid()];
    let mut running = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        running.push(tokio::spawn(
            FakeCall::new(gateway.addr, *call)
                .dtmf(
                    Duration::from_millis(400 + 300 * i as u64),
                    DtmfDigit::try_from('5').unwrap(),
                )
                .dtmf(
                    Duration::from_millis(1800),
                    DtmfDigit::try_from('#').unwrap(),
                )
                .duration(Duration::from_secs(2))
                .run(),
        ));
    }
    for call in running {
        assert_completed(&call.await.unwrap().unwrap());
    }
    // Still down: attempts were made and refused.
    let until_up = Duration::from_secs(10).saturating_sub(down_since.elapsed());
    tokio::time::sleep(until_up).await;
    assert!(
        app.received().iter().any(|r| !r.accepted),
        "the gateway tried while the endpoint was down"
    );
    app.refusing.store(false, Ordering::SeqCst);
    app.wait_ended(&calls, Duration::from_secs(60)).await;

    let received = app.received();
    let mut bodies: BTreeMap<String, Bytes> = BTreeMap::new();
    for request in &received {
        assert_signed(request);
        // Every attempt of one event carries the same id and the same body.
        let body = bodies
            .entry(request.event_id.clone())
            .or_insert_with(|| request.body.clone());
        assert_eq!(*body, request.body, "event {}", request.event_id);
    }
    let by_call = app.accepted_by_call();
    for call in &calls {
        let events = &by_call[&call.to_string()];
        assert_eq!(
            types_in_order(&call.to_string(), events),
            ["call_started", "dtmf", "dtmf", "call_ended"]
        );
    }
    // Each event was accepted once, and every refused one was delivered later.
    let accepted: Vec<&str> = received
        .iter()
        .filter(|r| r.accepted)
        .map(|r| r.event_id.as_str())
        .collect();
    let mut unique = accepted.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), accepted.len(), "an event was accepted twice");
    assert_eq!(accepted.len(), 12);
    for refused in received.iter().filter(|r| !r.accepted) {
        assert!(accepted.contains(&refused.event_id.as_str()));
    }
    let metrics = metrics_text(&gateway).await;
    let result = |r: &str| {
        metric_value(
            &metrics,
            &format!("telepatch_webhook_deliveries_total{{result=\"{r}\"}}"),
        )
    };
    assert_eq!(result("delivered"), 12.0);
    assert!(result("retried") >= 3.0);
    assert_eq!(
        result("dropped") + result("expired") + result("lagged"),
        0.0
    );
    assert!(
        gateway
            .wait_log(
                "webhook endpoint accepts events again",
                Duration::from_secs(1)
            )
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_for_good_keeps_memory_bounded_and_calls_flowing() {
    // Nothing listens on this port: every attempt is refused at once.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks", dead.local_addr().unwrap());
    drop(dead);
    let limit = 5;
    let gateway = GatewayProcess::start(&format!(
        "{}{}",
        common::STALL_PROOF_CALL_BUFFERS,
        webhooks_section(&url, &format!("queue_limit = {limit}"))
    ));
    let calls: Vec<Uuid> = (0..6).map(|_| uuid()).collect();
    let mut running = Vec::new();
    for call in &calls {
        let mut caller = FakeCall::new(gateway.addr, *call)
            .source(Source::tone(1000.0, -6.0))
            .duration(Duration::from_secs(4));
        for (n, digit) in "1234".chars().enumerate() {
            caller = caller.dtmf(
                Duration::from_millis(500 + 700 * n as u64),
                DtmfDigit::try_from(digit).unwrap(),
            );
        }
        running.push(tokio::spawn(caller.run()));
    }
    // While the calls run, the queue never holds more than its limit.
    let mut deepest = 0.0f64;
    while running.iter().any(|call| !call.is_finished()) {
        let metrics = metrics_text(&gateway).await;
        deepest = deepest.max(metric_value(&metrics, "telepatch_webhook_queue_depth"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for call in running {
        let report = call.await.unwrap().unwrap();
        assert_completed(&report);
        let worst_ms = report
            .inter_arrival()
            .map(|d| d.as_secs_f64() * 1000.0)
            .fold(0.0, f64::max);
        assert!(
            worst_ms < 60.0,
            "{}: audio to the caller stalled for {worst_ms:.1} ms",
            report.uuid
        );
        assert!(
            report.frames.len() > 180,
            "{} frames in 4 s",
            report.frames.len()
        );
    }
    // 6 calls x (start, 4 digits, end) = 36 events, at most 5 held.
    let until = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = metrics_text(&gateway).await;
        let result = |r: &str| {
            metric_value(
                &metrics,
                &format!("telepatch_webhook_deliveries_total{{result=\"{r}\"}}"),
            )
        };
        let settled = result("dropped")
            + result("expired")
            + metric_value(&metrics, "telepatch_webhook_queue_depth");
        if settled >= 36.0 || Instant::now() > until {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let depth = metric_value(&metrics, "telepatch_webhook_queue_depth");
    let dropped = metric_value(
        &metrics,
        "telepatch_webhook_deliveries_total{result=\"dropped\"}",
    );
    let delivered = metric_value(
        &metrics,
        "telepatch_webhook_deliveries_total{result=\"delivered\"}",
    );
    assert!(
        deepest <= f64::from(limit) && depth <= f64::from(limit),
        "{deepest} {depth}"
    );
    assert_eq!(delivered, 0.0);
    assert!(dropped >= 30.0, "{dropped} dropped\n{metrics}");
    // The log says so once per burst, not once per event.
    let logs = gateway.logs();
    let full = logs
        .iter()
        .filter(|l| l.contains("webhook queue full"))
        .count();
    let failing = logs
        .iter()
        .filter(|l| l.contains("webhook endpoint is failing"))
        .count();
    assert_eq!((full, failing), (1, 1), "{}", logs.join("\n"));
    // The API is not held up either.
    let healthy = reqwest::get(format!("{}/healthz", gateway.api_url()))
        .await
        .unwrap();
    assert_eq!(healthy.status().as_u16(), 200);
}
