//! End to end: the call cap, duplicate UUIDs and graceful shutdown (AudioSocket fact
//! sheet §8: `00 00 00` makes the dialplan continue; §10.11: duplicates handled on
//! purpose). Shutdown hangs up every call and finalizes every recording.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{GatewayProcess, active_span, read_wav, uuid};
use sip_glue::fake_asterisk::{CallEnd, FakeCall, Source};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hangs_up_every_call_and_finalizes_recordings() {
    let gateway_config = r#"
[[routes]]
name = "record"
match = "default"
actions = [{ action = "record", path = "{uuid}.wav" }]
"#;
    let mut gateway = GatewayProcess::start(gateway_config);
    let ids = [uuid(), uuid()];
    let calls: Vec<_> = ids
        .iter()
        .map(|&id| {
            tokio::spawn(
                FakeCall::new(gateway.addr, id)
                    .source(Source::tone(1000.0, -6.0))
                    .until_hangup()
                    .run(),
            )
        })
        .collect();
    gateway
        .wait_log_count("recording started", 2, Duration::from_secs(5))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let exited_cleanly = tokio::task::spawn_blocking(move || {
        let ok = gateway.terminate();
        (ok, gateway)
    })
    .await
    .unwrap();
    let (ok, gateway) = exited_cleanly;
    assert!(ok, "exit status");
    for call in calls {
        let report = call.await.unwrap().unwrap();
        assert!(report.hangup_received, "{}: no 00 00 00", report.uuid);
        assert_eq!(report.end, CallEnd::ServerHangup);
        assert!(report.violations.is_empty());
    }
    assert!(
        gateway
            .logs()
            .iter()
            .any(|l| l.contains("shutdown complete"))
    );
    for id in ids {
        let path = gateway.recordings().join(format!("{id}.wav"));
        let (channels, rate) = read_wav(&path);
        let (first, last) = active_span(&channels[0], rate, 0.05).unwrap();
        let seconds = (last - first) as f64 / f64::from(rate);
        assert!(
            seconds > 1.9,
            "recording of {id} holds {seconds:.2} s of tone"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_cap_are_refused_with_a_hangup() {
    let gateway = GatewayProcess::start_with_args("", &["--max-calls", "2"]);
    let long = |id| {
        FakeCall::new(gateway.addr, id)
            .duration(Duration::from_secs(3))
            .run()
    };
    let first = tokio::spawn(long(uuid()));
    let second = tokio::spawn(long(uuid()));
    gateway
        .wait_log_count("call connected", 2, Duration::from_secs(5))
        .unwrap();
    let refused_id = uuid();
    let refused = FakeCall::new(gateway.addr, refused_id)
        .duration(Duration::from_secs(3))
        .run()
        .await
        .unwrap();
    assert_eq!(refused.end, CallEnd::ServerHangup);
    assert!(refused.hangup_received);
    let line = gateway
        .wait_log("call cap reached", Duration::from_secs(2))
        .unwrap();
    assert!(
        line.contains(&refused_id.to_string()),
        "the refusal names the call: {line}"
    );
    assert_eq!(first.await.unwrap().unwrap().end, CallEnd::Completed);
    assert_eq!(second.await.unwrap().unwrap().end, CallEnd::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_uuids_are_rejected_or_replace_the_old_call_by_policy() {
    let id = uuid();
    let reject = GatewayProcess::start("");
    let original = tokio::spawn(
        FakeCall::new(reject.addr, id)
            .duration(Duration::from_secs(2))
            .run(),
    );
    reject
        .wait_log("call connected", Duration::from_secs(5))
        .unwrap();
    let duplicate = FakeCall::new(reject.addr, id)
        .duration(Duration::from_secs(2))
        .run()
        .await
        .unwrap();
    assert_eq!(duplicate.end, CallEnd::ServerHangup);
    assert!(
        reject
            .wait_log("already connected", Duration::from_secs(2))
            .is_some()
    );
    assert_eq!(original.await.unwrap().unwrap().end, CallEnd::Completed);

    let replace = GatewayProcess::start("[audiosocket]\nduplicate_uuid = \"replace\"\n");
    let original = tokio::spawn(
        FakeCall::new(replace.addr, id)
            .duration(Duration::from_secs(3))
            .run(),
    );
    replace
        .wait_log("call connected", Duration::from_secs(5))
        .unwrap();
    let newcomer = FakeCall::new(replace.addr, id)
        .duration(Duration::from_secs(1))
        .run()
        .await
        .unwrap();
    assert_eq!(newcomer.end, CallEnd::Completed);
    assert_eq!(original.await.unwrap().unwrap().end, CallEnd::ServerHangup);
}
