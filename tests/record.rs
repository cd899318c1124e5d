//! End to end: a caller's audio is recorded on the 48 kHz bus with the right frequency,
//! level, SNR and duration, for slin callers at 8, 16 and 48 kHz and for μ-law under
//! kind 0x10 (AudioSocket fact sheet §3, §5, §9.2).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{GatewayProcess, RECORD_ALL, check_tone_recording, uuid};
use sip_glue::audiosocket::AudioKind;
use sip_glue::fake_asterisk::{CallEnd, FakeCall, Source, WireCodec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slin_callers_at_8_16_and_48_khz_are_recorded_faithfully() {
    let gateway = GatewayProcess::start(RECORD_ALL);
    let kinds = [AudioKind::Slin8, AudioKind::Slin16, AudioKind::Slin48];
    let ids: Vec<uuid::Uuid> = kinds.iter().map(|_| uuid()).collect();
    let calls = kinds.iter().zip(&ids).map(|(&kind, &id)| {
        FakeCall::new(gateway.addr, id)
            .kind(kind)
            .source(Source::tone(1000.0, -6.0))
            .duration(Duration::from_secs(3))
            .run()
    });
    for report in futures_util::future::join_all(calls).await {
        let report = report.unwrap();
        assert_eq!(report.end, CallEnd::Completed);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }
    for (kind, id) in kinds.iter().zip(&ids) {
        let snr = check_tone_recording(&gateway, *id, 70.0);
        eprintln!("{kind}: SNR {snr:.1} dB");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ulaw_under_kind_0x10_is_decoded_when_configured() {
    let config = format!("[audiosocket]\nuplink_coding = \"ulaw\"\n{RECORD_ALL}");
    let gateway = GatewayProcess::start(&config);
    let id = uuid();
    let report = FakeCall::new(gateway.addr, id)
        .codec(WireCodec::Ulaw)
        .source(Source::tone(1000.0, -6.0))
        .duration(Duration::from_secs(3))
        .run()
        .await
        .unwrap();
    assert_eq!(report.end, CallEnd::Completed);
    // G.711 μ-law itself limits a -6 dBFS sine to about 38 dB SNR.
    check_tone_recording(&gateway, id, 33.0);
}
