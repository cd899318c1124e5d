//! End to end: what the gateway sends to Asterisk (AudioSocket fact sheet §7): one frame
//! every 20 ms without bursts, continuous silence when nothing is patched, the caller's
//! rate, never a kind Asterisk rejects; hold music and prompts reach the caller.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use codecs::measure::{estimate_delay, rms_dbfs};
use codecs::rate::SampleRate;
use common::{GatewayProcess, data, read_wav, uuid};
use sip_glue::audiosocket::AudioKind;
use sip_glue::fake_asterisk::{CallEnd, CallReport, FakeCall, Source};

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

fn check_cadence(report: &CallReport, seconds: f64) {
    let gaps: Vec<f64> = report
        .inter_arrival()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let frames = report.frames.len() as f64;
    // The first frames wait for the reply rate (up to 300 ms); then 50 per second.
    assert!(
        frames > (seconds - 0.4) * 50.0 - 3.0 && frames <= seconds * 50.0 + 3.0,
        "{frames} frames in {seconds} s"
    );
    let median = percentile(gaps.clone(), 0.5);
    let p99 = percentile(gaps.clone(), 0.99);
    let bursts = gaps.iter().filter(|g| **g < 5.0).count();
    assert!(
        (18.0..=22.0).contains(&median),
        "median inter-arrival {median:.2} ms"
    );
    assert!(p99 < 45.0, "p99 inter-arrival {p99:.2} ms");
    // The gateway catches up at most three frames after its runtime stalled (and skips
    // ahead beyond that); this 2-core VM stalls it, or the fake caller, a few times a
    // call now and then. A gateway that bursted by design would show dozens.
    assert!(
        bursts <= 6,
        "{bursts} frames arrived less than 5 ms after the previous one"
    );
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpatched_callers_get_continuous_paced_silence_at_their_own_rate() {
    let gateway = GatewayProcess::start("");
    let narrow = FakeCall::new(gateway.addr, uuid())
        .source(Source::tone(1000.0, -6.0))
        .duration(Duration::from_secs(4))
        .run();
    let wide = FakeCall::new(gateway.addr, uuid())
        .kind(AudioKind::Slin16)
        .source(Source::tone(1000.0, -6.0))
        .duration(Duration::from_secs(4))
        .run();
    // An idle bridge sends no audio at all (§5): the gateway still streams, at 8 kHz.
    let idle = FakeCall::new(gateway.addr, uuid())
        .source(Source::nothing())
        .duration(Duration::from_secs(4))
        .run();
    let (narrow, wide, idle) = tokio::join!(narrow, wide, idle);
    for (report, rate) in [
        (narrow.unwrap(), 8_000),
        (wide.unwrap(), 16_000),
        (idle.unwrap(), 8_000),
    ] {
        assert_eq!(report.end, CallEnd::Completed);
        assert_eq!(report.received_rate.map(SampleRate::hz), Some(rate));
        assert_eq!(report.rate_changes, 0, "one rate per connection");
        check_cadence(&report, 4.0);
        assert!(
            report.received.iter().all(|s| *s == 0.0),
            "nothing is patched: silence"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lobby_callers_hear_hold_music_and_routed_callers_hear_their_prompt() {
    let prompt = data("prompt-8k.wav");
    // The prompt is compared sample for sample: margins against the host's stalls.
    let config = format!(
        r#"{buffers}
[lobby]
hold_music = "{hold}"

[media]
dir = "{media}"

[[routes]]
name = "welcome"
match = {{ uuid_prefix = "aaaa" }}
actions = [{{ action = "play", file = "prompt-8k.wav" }}]
"#,
        buffers = common::STALL_PROOF_CALL_BUFFERS,
        hold = data("hold-music-48k.wav").display(),
        media = prompt.parent().unwrap().display()
    );
    let gateway = GatewayProcess::start(&config);
    let welcome_id = uuid::Uuid::parse_str("aaaa0000-0000-4000-8000-000000000001").unwrap();
    let lobby = FakeCall::new(gateway.addr, uuid())
        .duration(Duration::from_secs(3))
        .run();
    let welcomed = FakeCall::new(gateway.addr, welcome_id)
        .duration(Duration::from_secs(4))
        .run();
    let (lobby, welcomed) = tokio::join!(lobby, welcomed);
    let (lobby, welcomed) = (lobby.unwrap(), welcomed.unwrap());

    let hold_level = rms_dbfs(&lobby.received[4_000..]);
    assert!(
        hold_level > -40.0,
        "lobby caller hears {hold_level:.1} dBFS"
    );
    check_cadence(&lobby, 3.0);

    // The welcomed caller hears the prompt itself: find it in what was heard and check
    // that the two line up sample for sample after the delay.
    let (reference, rate) = read_wav(&prompt);
    assert_eq!(rate, 8_000);
    let reference = &reference[0];
    let heard = &welcomed.received;
    let delay =
        estimate_delay(&reference[..16_000], &heard[..24_000], 8_000).expect("prompt found");
    let lag = delay.samples.round() as usize;
    // Compare the prompt with what was heard in 0.5 s segments. Each segment may sit a
    // sample either side of the overall alignment: two passes through the resamplers
    // leave a fraction of a sample of delay, and the downlink's drift steering may move
    // it by a fraction more over seconds. Speech content must match segment by segment.
    let energy = |v: &[f32]| v.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>();
    let n = reference.len().min(heard.len().saturating_sub(lag + 2));
    let mut segments = 0;
    for start in (0..n.saturating_sub(4_000)).step_by(4_000) {
        let x = &reference[start..start + 4_000];
        if rms_dbfs(x) < -40.0 {
            continue; // a pause between words
        }
        let best = (lag.saturating_sub(2)..=lag + 2)
            .map(|l| {
                let y = &heard[start + l..start + l + 4_000];
                let dot: f64 = x
                    .iter()
                    .zip(y)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                dot / (energy(x) * energy(y)).sqrt()
            })
            .fold(f64::MIN, f64::max);
        assert!(
            best > 0.9,
            "segment at {start}: heard audio correlates {best:.3} with the prompt"
        );
        segments += 1;
    }
    assert!(segments >= 4, "only {segments} speech segments compared");
    let y = &heard[lag..lag + n];
    let level_error = rms_dbfs(y) - rms_dbfs(&reference[..n]);
    assert!(
        level_error.abs() < 1.0,
        "prompt heard {level_error:+.2} dB off its file level"
    );
    // Within 200 ms, plus the 90 ms the stall-proof downlink buffer (100 ms) holds beyond
    // the default (10 ms).
    assert!(
        lag < 8_000 * 290 / 1_000,
        "prompt starts {lag} samples late"
    );
}
