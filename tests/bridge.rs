//! End to end: bridged callers and conferences (mix-minus). Each caller hears the others
//! and never themselves (ARCHITECTURE §2: conferences are patches with mix-minus).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{GatewayProcess, tone_level_dbfs, uuid};
use sip_glue::fake_asterisk::{CallEnd, CallReport, FakeCall, Source};
use uuid::Uuid;

/// The part of what a caller heard after everyone joined (from `from_s` seconds on),
/// excluding the last 300 ms.
fn heard(report: &CallReport, from_s: f64) -> (&[f32], u32) {
    let rate = report.received_rate.expect("caller received audio").hz();
    let start = (from_s * f64::from(rate)) as usize;
    let end = report.received.len().saturating_sub(rate as usize * 3 / 10);
    assert!(
        end > start + rate as usize,
        "too little audio heard: {} samples",
        report.received.len()
    );
    (&report.received[start..end], rate)
}

/// Asserts `report`'s caller heard each of `others` near -6 dBFS and not `own`.
fn assert_hears(report: &CallReport, own: f64, others: &[f64], from_s: f64) {
    let (audio, rate) = heard(report, from_s);
    for &hz in others {
        let level = tone_level_dbfs(audio, rate, hz);
        assert!(
            (level + 6.0).abs() < 1.0,
            "{}: hears {hz} Hz at {level:.1} dBFS, expected -6",
            report.uuid
        );
    }
    let own_level = tone_level_dbfs(audio, rate, own);
    assert!(
        own_level < -60.0,
        "{}: hears its own {own} Hz tone at {own_level:.1} dBFS",
        report.uuid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_callers_patched_to_each_other_hear_each_other() {
    let b = uuid();
    let a = uuid();
    let config = format!(
        r#"
[[routes]]
name = "bridge-a-to-b"
match = {{ uuid = "{a}" }}
actions = [{{ action = "patch", voice_to = ["call:{b}.ear"], ear_from = ["call:{b}.voice"] }}]
"#
    );
    let gateway = GatewayProcess::start(&config);
    let call_b = tokio::spawn(
        FakeCall::new(gateway.addr, b)
            .source(Source::tone(600.0, -6.0))
            .duration(Duration::from_secs(4))
            .run(),
    );
    // B must be connected before A's route refers to it.
    gateway
        .wait_log(&format!("uuid={b}"), Duration::from_secs(5))
        .unwrap();
    let report_a = FakeCall::new(gateway.addr, a)
        .source(Source::tone(1000.0, -6.0))
        .duration(Duration::from_secs(3))
        .run()
        .await
        .unwrap();
    let report_b = call_b.await.unwrap().unwrap();
    assert_eq!(report_a.end, CallEnd::Completed);
    assert_hears(&report_a, 1000.0, &[600.0], 0.5);
    // B joined about 0.3 s before A; look at B's audio while A talked.
    let (b_audio, rate) = heard(&report_b, 1.0);
    let b_while_a = &b_audio[..(rate as usize * 2).min(b_audio.len())];
    let level = tone_level_dbfs(b_while_a, rate, 1000.0);
    assert!((level + 6.0).abs() < 1.0, "B hears A at {level:.1} dBFS");
    assert!(
        tone_level_dbfs(b_while_a, rate, 600.0) < -60.0,
        "B hears itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_way_conference_is_mix_minus() {
    // A UUID block reserved for the conference, matched by prefix.
    let config = r#"
[[routes]]
name = "desk"
match = { uuid_prefix = "c0f0" }
actions = [{ action = "conference", name = "desk" }]
"#;
    let gateway = GatewayProcess::start(config);
    let tones = [500.0, 800.0, 1200.0];
    let ids: Vec<Uuid> = (0..3)
        .map(|i| Uuid::parse_str(&format!("c0f00000-0000-4000-8000-00000000000{i}")).unwrap())
        .collect();
    let calls = ids.iter().zip(tones).map(|(&id, hz)| {
        FakeCall::new(gateway.addr, id)
            .source(Source::tone(hz, -6.0))
            .duration(Duration::from_secs(3))
            .run()
    });
    let reports: Vec<CallReport> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (i, report) in reports.iter().enumerate() {
        assert_eq!(report.end, CallEnd::Completed);
        let others: Vec<f64> = tones
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, t)| *t)
            .collect();
        assert_hears(report, tones[i], &others, 0.5);
    }
    // The conference existed only while it had members.
    gateway
        .wait_log_count("call ended", 3, Duration::from_secs(5))
        .expect("three calls ended");
    assert!(
        gateway
            .logs()
            .iter()
            .filter(|l| l.contains("joined conference"))
            .count()
            == 3
    );
}
