//! Clock drift on virtual time (ARCHITECTURE §3): callers whose clocks run 1000 ppm fast
//! or slow stream for ten minutes into the call uplink; the fill-steered resampler keeps
//! the ring from underrunning or overflowing and the delay bounded, without warping the
//! audio.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use codecs::measure::fit_sine;
use codecs::rate::SampleRate;
use gateway::engine::Node;
use gateway::engine::call::{CallBuffering, CallStats, call_media};

const BLOCK: usize = 48;

struct Outcome {
    gaps: u64,
    overflow: u64,
    fill_ms_after_settling: (f64, f64),
    final_ppm: f64,
    tail: Vec<f32>,
}

/// Streams a 1 kHz tone from a caller whose clock is off by `drift_ppm`, for `minutes`
/// of virtual time, through the real uplink and call node.
fn simulate(drift_ppm: f64, minutes: u64) -> Outcome {
    let stats = Arc::new(CallStats::default());
    let (mut uplink, node, _downlink) = call_media(
        SampleRate::HZ_8000,
        20,
        CallBuffering::default(),
        Arc::clone(&stats),
    )
    .unwrap();
    let mut node = node.with_block(BLOCK);
    let mut outputs = vec![0.0f32; 2 * BLOCK];
    let inputs = vec![0.0f32; BLOCK];

    // A fast caller's 20 ms frames arrive every 20 ms / (1 + drift) of our time.
    let frame_interval_ns = 20e6 / (1.0 + drift_ppm * 1e-6);
    let mut next_frame_ns = 0.0;
    let mut caller_sample: u64 = 0;
    let mut frame = [0.0f32; 160];

    let total_blocks = minutes * 60 * 1000;
    let settle_blocks = 120 * 1000;
    let tail_blocks = 1000;
    let mut fill = (f64::MAX, f64::MIN);
    let mut tail = Vec::with_capacity(tail_blocks * BLOCK);
    for block in 0..total_blocks {
        let now_ns = block as f64 * 1e6;
        while next_frame_ns <= now_ns {
            for s in frame.iter_mut() {
                let t = caller_sample as f64 / 8000.0;
                *s = (0.5 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as f32;
                caller_sample += 1;
            }
            uplink.push_samples(&frame);
            next_frame_ns += frame_interval_ns;
        }
        node.produce(&mut outputs, BLOCK);
        node.consume(&inputs, BLOCK);
        if block >= settle_blocks {
            let ms = uplink.queued() as f64 / 48.0;
            fill = (fill.0.min(ms), fill.1.max(ms));
        }
        if block >= total_blocks - tail_blocks as u64 {
            tail.extend_from_slice(&outputs[..BLOCK]);
        }
    }
    Outcome {
        gaps: stats.uplink_gaps.load(Ordering::Relaxed),
        overflow: stats.uplink_overflow_samples.load(Ordering::Relaxed),
        fill_ms_after_settling: fill,
        final_ppm: uplink.correction_ppm(),
        tail,
    }
}

fn check(drift_ppm: f64) {
    let outcome = simulate(drift_ppm, 10);
    assert_eq!(outcome.gaps, 0, "{drift_ppm:+} ppm: the uplink ran dry");
    assert_eq!(
        outcome.overflow, 0,
        "{drift_ppm:+} ppm: the uplink overflowed"
    );
    let (lo, hi) = outcome.fill_ms_after_settling;
    // The ring oscillates by one 20 ms frame around a target of 20 ms margin; the
    // controller's dead band adds at most a few ms either way. Bounded delay: it never
    // grows beyond a frame plus margin plus dead band.
    assert!(lo > 5.0, "{drift_ppm:+} ppm: fill fell to {lo:.2} ms");
    assert!(hi < 46.0, "{drift_ppm:+} ppm: fill rose to {hi:.2} ms");
    // The correction cancels the caller's drift.
    assert!(
        (outcome.final_ppm + drift_ppm).abs() < 100.0,
        "{drift_ppm:+} ppm: correction {:.1} ppm",
        outcome.final_ppm
    );
    // The tone is intact: on our clock it is the caller's 1 kHz scaled by its clock error.
    let fit = fit_sine(&outcome.tail, SampleRate::HZ_48000).unwrap();
    let expected = 1000.0 * (1.0 + drift_ppm * 1e-6);
    assert!(
        (fit.frequency_hz - expected).abs() < 0.3,
        "{drift_ppm:+} ppm: {:.3} Hz",
        fit.frequency_hz
    );
    assert!(
        fit.snr_db > 60.0,
        "{drift_ppm:+} ppm: SNR {:.1} dB",
        fit.snr_db
    );
}

#[test]
fn a_caller_1000_ppm_fast_for_ten_minutes() {
    check(1000.0);
}

#[test]
fn a_caller_1000_ppm_slow_for_ten_minutes() {
    check(-1000.0);
}

#[test]
fn agreeing_clocks_leave_the_ratio_practically_nominal() {
    let outcome = simulate(0.0, 2);
    assert_eq!(outcome.gaps, 0);
    // Start-up can leave the fill a little outside the dead band; what the integrator
    // keeps from that leaks away.
    assert!(
        outcome.final_ppm.abs() < 0.01,
        "correction {} ppm",
        outcome.final_ppm
    );
    let fit = fit_sine(&outcome.tail, SampleRate::HZ_48000).unwrap();
    assert!(fit.snr_db > 80.0, "SNR {:.1} dB", fit.snr_db);
}
