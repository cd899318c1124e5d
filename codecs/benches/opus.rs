//! Cost of an AoDNS broadcast: Opus encoding of one 60 ms frame (16.7 per broadcast
//! second), packing it as a TXT string, and the `sequence` list rebuilt per pack;
//! libopus (what the reference runs) encodes the same speech for comparison.

use std::hint::black_box;

use codecs::aodns::{Pack, PackBuilder, PackLimits, SequenceListEncoder};
use codecs::opus::{AodnsOpusEncoder, OpusEncoderConfig};
use criterion::{Criterion, criterion_group, criterion_main};

const SPEECH_16K: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/speech-16k.wav");

fn speech_frames() -> Vec<Vec<i16>> {
    let samples: Vec<i16> = hound::WavReader::open(SPEECH_16K)
        .expect("speech fixture")
        .samples::<i16>()
        .map(|s| s.expect("sample"))
        .collect();
    samples.chunks_exact(960).map(<[i16]>::to_vec).collect()
}

fn noise_frames(count: usize) -> Vec<Vec<i16>> {
    let mut seed = 0x2545_f491u32;
    (0..count)
        .map(|_| {
            (0..960)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed >> 16) as i16
                })
                .collect()
        })
        .collect()
}

fn bench_encode(c: &mut Criterion) {
    for (name, frames) in [("speech", speech_frames()), ("noise", noise_frames(100))] {
        let mut encoder = AodnsOpusEncoder::new(OpusEncoderConfig::default()).expect("encoder");
        let mut packet = [0u8; 256];
        let mut i = 0;
        c.bench_function(&format!("opus encode 60 ms 16k mono {name}"), |b| {
            b.iter(|| {
                let frame = &frames[i % frames.len()];
                i += 1;
                black_box(
                    encoder
                        .encode_i16(black_box(frame), &mut packet)
                        .expect("encode"),
                )
            })
        });
    }
}

/// The reference's encoder for comparison: system libopus, `voip`, its defaults
/// (automatic bitrate, complexity 9), as the AoDNS reference runs it.
fn bench_libopus(c: &mut Criterion) {
    let frames = speech_frames();
    let mut encoder = opus::Encoder::new(16_000, opus::Channels::Mono, opus::Application::Voip)
        .expect("libopus encoder");
    let mut packet = [0u8; 1500];
    let mut i = 0;
    c.bench_function("libopus encode 60 ms 16k mono speech (reference)", |b| {
        b.iter(|| {
            let frame = &frames[i % frames.len()];
            i += 1;
            black_box(
                encoder
                    .encode(black_box(frame), &mut packet)
                    .expect("encode"),
            )
        })
    });
}

fn bench_pack(c: &mut Criterion) {
    let frames = speech_frames();
    let mut encoder = AodnsOpusEncoder::new(OpusEncoderConfig::default()).expect("encoder");
    let mut packet = [0u8; 256];
    let packets: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let n = encoder.encode_i16(f, &mut packet).expect("encode");
            packet[..n].to_vec()
        })
        .collect();
    let mut builder = PackBuilder::new(PackLimits::REFERENCE);
    let mut closed = Pack::new();
    let mut i = 0;
    c.bench_function("pack push (base91 + TXT string)", |b| {
        b.iter(|| {
            let p = &packets[i % packets.len()];
            i += 1;
            black_box(builder.push(black_box(p), &mut closed).expect("push"))
        })
    });
    let mut lists = SequenceListEncoder::new();
    let mut newest = 1_000_000u64;
    c.bench_function("sequence list 75 numbers", |b| {
        b.iter(|| {
            newest += 1;
            black_box(
                lists
                    .encode_window(newest - 74, newest)
                    .expect("list")
                    .text
                    .len(),
            )
        })
    });
}

criterion_group!(benches, bench_encode, bench_libopus, bench_pack);
criterion_main!(benches);
