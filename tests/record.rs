//! End to end: a caller's audio is recorded on the 48 kHz bus with the right frequency,
//! level, SNR and duration, for slin callers at 8, 16 and 48 kHz and for μ-law under
//! kind 0x10 (AudioSocket fact sheet §3, §5, §9.2).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{GatewayProcess, RECORD_ALL, active_span, read_wav, steady_fit, uuid, wait_recording};
use sip_glue::audiosocket::AudioKind;
use sip_glue::fake_asterisk::{CallEnd, FakeCall, Source, WireCodec};

/// Checks one recording of a 3 s, -6 dBFS, 1 kHz tone; returns the fitted SNR.
fn check_recording(gateway: &GatewayProcess, id: uuid::Uuid, min_snr_db: f64) -> f64 {
    let path = gateway.recordings().join(format!("{id}.wav"));
    wait_recording(gateway, &path);
    let (channels, rate) = read_wav(&path);
    assert_eq!(rate, 48_000, "recordings are on the bus rate");
    assert_eq!(channels.len(), 1);
    let voice = &channels[0];
    let (first, last) = active_span(voice, rate, 0.05).expect("the tone is in the recording");
    let tone_seconds = (last - first) as f64 / f64::from(rate);
    assert!(
        (tone_seconds - 3.0).abs() <= 0.020,
        "tone lasts {tone_seconds:.4} s, expected 3 s within one 20 ms frame"
    );
    let fit = steady_fit(&voice[first..last], rate, 0.1);
    assert!(
        (fit.frequency_hz - 1000.0).abs() < 0.5,
        "frequency {:.3} Hz",
        fit.frequency_hz
    );
    assert!(
        (fit.amplitude_dbfs + 6.0).abs() < 0.3,
        "level {:.2} dBFS",
        fit.amplitude_dbfs
    );
    assert!(
        fit.snr_db >= min_snr_db,
        "SNR {:.1} dB < {min_snr_db} dB",
        fit.snr_db
    );
    fit.snr_db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slin_callers_at_8_16_and_48_khz_are_recorded_faithfully() {
    common::retry_if_host_stalled(|| async {
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
            let snr = check_recording(&gateway, *id, 70.0);
            eprintln!("{kind}: SNR {snr:.1} dB");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ulaw_under_kind_0x10_is_decoded_when_configured() {
    common::retry_if_host_stalled(|| async {
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
        check_recording(&gateway, id, 33.0);
    })
    .await;
}
