//! Cost of the call-path resampler ([`Quality::Voice`]): one call-second converted in
//! 20 ms frames, the way a call's uplink (caller rate -> 48 kHz) and downlink
//! (48 kHz -> caller rate) run it, plus building one resampler (per call set-up) and the
//! offline preset for comparison, and the call path with its ratio steered by +1000 ppm
//! (drift correction working). Throughput is reported per input sample; the time per
//! iteration is the cost of one call-second in one direction.

use std::hint::black_box;
use std::time::Duration;

use codecs::rate::SampleRate;
use codecs::resample::{Quality, StreamResampler};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// One second of a speech-band test signal (two tones and a slow sweep) at `rate`.
fn call_second(rate: SampleRate) -> Vec<f32> {
    let fs = f64::from(rate.hz());
    (0..rate.hz())
        .map(|n| {
            let t = f64::from(n) / fs;
            (0.3 * (std::f64::consts::TAU * 440.0 * t).sin()
                + 0.2 * (std::f64::consts::TAU * (300.0 + 1500.0 * t) * t).sin()) as f32
        })
        .collect()
}

fn bench_call_second(c: &mut Criterion) {
    let mut group = c.benchmark_group("resample_call_second");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let pairs = [
        (8_000, 48_000),
        (48_000, 8_000),
        (16_000, 48_000),
        (48_000, 16_000),
        (48_000, 48_000),
    ];
    for quality in [Quality::Voice, Quality::High] {
        for (from, to) in pairs {
            if quality == Quality::High && from == 48_000 && to == 48_000 {
                continue;
            }
            let (from, to) = (
                SampleRate::new(from).expect("rate"),
                SampleRate::new(to).expect("rate"),
            );
            let input = call_second(from);
            let frame = from.samples_in_ms(20);
            let mut r = StreamResampler::new(from, to, quality).expect("resampler");
            let mut out = vec![0.0f32; r.max_output_len(frame)];
            group.throughput(Throughput::Elements(input.len() as u64));
            let name = format!("{quality:?}/{}k->{}k", from.hz() / 1000, to.hz() / 1000);
            group.bench_function(name, |b| {
                b.iter(|| {
                    let mut produced = 0;
                    for f in input.chunks(frame) {
                        produced += r.process(black_box(f), &mut out);
                    }
                    black_box(produced)
                })
            });
        }
    }
    // The drift correction working: the same call-second with the ratio steered.
    for (from, to) in [(8_000, 48_000), (48_000, 8_000)] {
        let (from, to) = (
            SampleRate::new(from).expect("rate"),
            SampleRate::new(to).expect("rate"),
        );
        let input = call_second(from);
        let frame = from.samples_in_ms(20);
        let mut r = StreamResampler::new(from, to, Quality::Voice).expect("resampler");
        r.set_ratio_ppm(1000.0);
        let mut out = vec![0.0f32; r.max_output_len(frame)];
        group.throughput(Throughput::Elements(input.len() as u64));
        let name = format!("Voice+1000ppm/{}k->{}k", from.hz() / 1000, to.hz() / 1000);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut produced = 0;
                for f in input.chunks(frame) {
                    produced += r.process(black_box(f), &mut out);
                }
                black_box(produced)
            })
        });
    }
    group.finish();
}

fn bench_construction(c: &mut Criterion) {
    let mut group = c.benchmark_group("resample_new");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for (from, to) in [(8_000, 48_000), (48_000, 8_000)] {
        let (from, to) = (
            SampleRate::new(from).expect("rate"),
            SampleRate::new(to).expect("rate"),
        );
        let name = format!("Voice/{}k->{}k", from.hz() / 1000, to.hz() / 1000);
        group.bench_function(name, |b| {
            b.iter(|| black_box(StreamResampler::new(from, to, Quality::Voice).expect("resampler")))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_call_second, bench_construction);
criterion_main!(benches);
