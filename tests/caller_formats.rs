//! End to end: what each kind of Asterisk caller sends and is sent back (AudioSocket
//! fact sheet §5, §7, §9.2, §9.3, §12).
//!
//! - A caller that says nothing at first (an ARI `externalMedia` channel before it is
//!   bridged, a `c(slin16)` channel whose far end is silent) is answered at its own
//!   rate as soon as its kind shows, not at 8 kHz for the rest of the call.
//! - μ-law under kind 0x10 (`Dial(AudioSocket/.../c(ulaw))`) and slin callers on the same
//!   gateway, with the default configuration, are both decoded right: the coding is told
//!   from each call's audio.
//! - A caller that closes its socket with a reset has hung up: its call record says
//!   so, not "error".
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{GatewayProcess, RECORD_ALL, check_tone_recording, uuid, wait_cdr};
use sip_glue::audiosocket::AudioKind;
use sip_glue::fake_asterisk::{CallEnd, FakeCall, Source, WireCodec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_silent_at_first_is_answered_at_its_own_rate_once_it_speaks() {
    let gateway = GatewayProcess::start("");
    let quiet = Duration::from_secs(1);
    let report = FakeCall::new(gateway.addr, uuid())
        .kind(AudioKind::Slin16)
        .quiet_for(quiet)
        .source(Source::tone(1000.0, -6.0))
        .duration(Duration::from_secs(3))
        .run()
        .await
        .unwrap();
    assert_eq!(report.end, CallEnd::Completed);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let first_wideband = report
        .frames
        .iter()
        .position(|f| f.kind == AudioKind::Slin16)
        .expect("no reply at 16 kHz at all");
    // Before the caller spoke, replies went at 8 kHz (nothing else was known)...
    assert!(
        report.frames[..first_wideband]
            .iter()
            .all(|f| f.kind == AudioKind::Slin8),
        "replies before the switch: {:?}",
        report.frames[..first_wideband]
            .iter()
            .map(|f| f.kind)
            .collect::<Vec<_>>()
    );
    // ...and switched once, within a few frames of the caller's first audio (sent 1 s
    // after connecting; generous margin for a loaded machine).
    let switched_after = report.frames[first_wideband]
        .at
        .duration_since(report.connected_at);
    assert!(
        switched_after >= quiet && switched_after < quiet + Duration::from_millis(500),
        "reply rate switched {switched_after:?} after connecting"
    );
    assert_eq!(report.rate_changes, 1, "one switch, then one rate");
    assert!(
        report.frames[first_wideband..]
            .iter()
            .all(|f| f.kind == AudioKind::Slin16 && f.samples == 320),
        "every later reply is a 20 ms 16 kHz frame"
    );
    gateway
        .wait_log("reply rate follows the caller", Duration::from_secs(2))
        .expect("the switch is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ulaw_and_slin_callers_side_by_side_are_both_decoded_with_the_default_config() {
    let gateway = GatewayProcess::start(RECORD_ALL);
    let (ulaw, slin) = (uuid(), uuid());
    let calls = [(ulaw, WireCodec::Ulaw), (slin, WireCodec::Slin)].map(|(id, codec)| {
        FakeCall::new(gateway.addr, id)
            .codec(codec)
            .source(Source::tone(1000.0, -6.0))
            .duration(Duration::from_secs(3))
            .run()
    });
    for report in futures_util::future::join_all(calls).await {
        let report = report.unwrap();
        assert_eq!(report.end, CallEnd::Completed);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        // Replies are always slin (fact sheet §9.2: Asterisk reads them as slin).
        assert!(report.frames.iter().all(|f| f.kind == AudioKind::Slin8));
    }
    // G.711 μ-law itself limits a -6 dBFS sine to about 38 dB SNR.
    check_tone_recording(&gateway, ulaw, 33.0);
    check_tone_recording(&gateway, slin, 70.0);
    gateway
        .wait_log_count(
            "kind 0x10 coding told from the caller's audio",
            2,
            Duration::from_secs(2),
        )
        .expect("each call's coding decision is logged");
    let logs = gateway.logs();
    let decision = |id: uuid::Uuid| {
        logs.iter()
            .find(|l| l.contains(&id.to_string()) && l.contains("coding told from"))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        decision(ulaw).contains("coding=\"ulaw\""),
        "{}",
        decision(ulaw)
    );
    assert!(
        decision(slin).contains("coding=\"slin\""),
        "{}",
        decision(slin)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_fix_the_coding_of_its_calls() {
    // A route saying `coding = "ulaw"` decodes its calls as μ-law from the first byte,
    // with no detection (and so no log line about one).
    let config = r#"
[[routes]]
name = "ulaw-trunk"
match = "default"
coding = "ulaw"
actions = [{ action = "record", path = "{uuid}.wav" }]
"#;
    let gateway = GatewayProcess::start(config);
    let id = uuid();
    let report = FakeCall::new(gateway.addr, id)
        .codec(WireCodec::Ulaw)
        .source(Source::tone(1000.0, -6.0))
        .duration(Duration::from_secs(3))
        .run()
        .await
        .unwrap();
    assert_eq!(report.end, CallEnd::Completed);
    check_tone_recording(&gateway, id, 33.0);
    assert!(
        !gateway
            .logs()
            .iter()
            .any(|l| l.contains("coding told from")),
        "a fixed coding is not detected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_with_a_reset_is_recorded_as_ended_by_the_caller() {
    let gateway = GatewayProcess::start("");
    let token = gateway.token("cdr-reader", "read");
    let ids: Vec<uuid::Uuid> = (0..5).map(|_| uuid()).collect();
    let calls = ids.iter().map(|&id| {
        FakeCall::new(gateway.addr, id)
            .source(Source::tone(1000.0, -6.0))
            .duration(Duration::from_secs(1))
            .reset_on_hangup()
            .run()
    });
    for report in futures_util::future::join_all(calls).await {
        assert_eq!(report.unwrap().end, CallEnd::Completed);
    }
    for id in ids {
        let record = wait_cdr(&gateway, &token, id).await;
        assert_eq!(record["uuid"], id.to_string(), "no record for {id}");
        assert_eq!(record["ended_by"], "caller", "{record}");
    }
    assert!(
        !gateway
            .logs()
            .iter()
            .any(|l| l.contains("connection error")),
        "a reset is no connection error"
    );
}
