//! Our AoDNS Opus packets decode with reference libopus (aodns.md §8, §13).
//!
//! The reference listener decodes with the system libopus (1.3.1 in the sheet);
//! these tests decode our opus-rs packets with the same library through the `opus`
//! crate, which links the system libopus found by pkg-config (Debian package
//! `libopus-dev`). They also drive the signals that crash the reference server
//! (white-noise bursts, tone steps, full-scale square waves, speech) through every
//! selectable format and check each packet fits one 250-byte TXT string.

// Helpers outside #[test] functions unwrap too: this file is test code.
#![allow(clippy::unwrap_used)]

use codecs::aodns::{Pack, PackBuilder, PackLimits, PackReader, Pushed};
use codecs::opus::{
    AodnsOpusEncoder, Application, Channels, OpusEncoderConfig, OpusFormat, OpusRate,
};

const SPEECH_16K: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/speech-16k.wav");

fn libopus_decoder(format: OpusFormat) -> opus::Decoder {
    let channels = match format.channels {
        Channels::Mono => opus::Channels::Mono,
        Channels::Stereo => opus::Channels::Stereo,
    };
    opus::Decoder::new(format.rate.hz(), channels).unwrap()
}

/// Frequency (Hz) from rising zero crossings, interpolated between samples.
fn zero_crossing_frequency(x: &[f64], rate: f64) -> f64 {
    let mut crossings = Vec::new();
    for i in 1..x.len() {
        if x[i - 1] < 0.0 && x[i] >= 0.0 {
            crossings.push((i - 1) as f64 + x[i - 1] / (x[i - 1] - x[i]));
        }
    }
    let (first, last) = (crossings[0], crossings[crossings.len() - 1]);
    (crossings.len() - 1) as f64 * rate / (last - first)
}

/// Least-squares fit of `a cos + b sin + c` at `freq`: (amplitude, SNR in dB of the
/// fitted sine against the residual).
fn sine_fit(x: &[f64], rate: f64, freq: f64) -> (f64, f64) {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    // Normal equations of the 3-parameter fit.
    let mut m = [[0.0f64; 3]; 3];
    let mut v = [0.0f64; 3];
    for (n, &y) in x.iter().enumerate() {
        let basis = [(w * n as f64).cos(), (w * n as f64).sin(), 1.0];
        for r in 0..3 {
            v[r] += basis[r] * y;
            for c in 0..3 {
                m[r][c] += basis[r] * basis[c];
            }
        }
    }
    let p = solve3(m, v);
    let amplitude = p[0].hypot(p[1]);
    let mut residual = 0.0;
    for (n, &y) in x.iter().enumerate() {
        let fit = p[0] * (w * n as f64).cos() + p[1] * (w * n as f64).sin() + p[2];
        residual += (y - fit).powi(2);
    }
    let signal = amplitude * amplitude / 2.0 * x.len() as f64;
    (amplitude, 10.0 * (signal / residual).log10())
}

/// Gaussian elimination with partial pivoting for a 3x3 system.
fn solve3(mut m: [[f64; 3]; 3], mut v: [f64; 3]) -> [f64; 3] {
    for col in 0..3 {
        let pivot = (col..3)
            .max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))
            .unwrap();
        m.swap(col, pivot);
        v.swap(col, pivot);
        let pivot_row = m[col];
        for row in col + 1..3 {
            let f = m[row][col] / pivot_row[col];
            for (cell, &p) in m[row].iter_mut().zip(&pivot_row).skip(col) {
                *cell -= f * p;
            }
            v[row] -= f * v[col];
        }
    }
    let mut p = [0.0; 3];
    for row in (0..3).rev() {
        let s: f64 = (row + 1..3).map(|c| m[row][c] * p[c]).sum();
        p[row] = (v[row] - s) / m[row][row];
    }
    p
}

#[test]
fn sine_fit_helpers_measure_a_known_sine() {
    // The measuring tools themselves, on a synthetic 997 Hz sine plus a little noise.
    let rate = 16_000.0;
    let mut seed = 1u32;
    let x: Vec<f64> = (0..16_000)
        .map(|n| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (f64::from(seed >> 8) / f64::from(1u32 << 24) - 0.5) * 2.0;
            1000.0 * (2.0 * std::f64::consts::PI * 997.0 * n as f64 / rate).sin() + noise
        })
        .collect();
    let f = zero_crossing_frequency(&x, rate);
    assert!((f - 997.0).abs() < 0.05, "{f}");
    let (amp, snr) = sine_fit(&x, rate, f);
    assert!((amp - 1000.0).abs() < 1.0, "{amp}");
    // Noise RMS 0.577 against sine RMS 707: ~61.8 dB.
    assert!((snr - 61.8).abs() < 1.0, "{snr}");
}

#[test]
fn tone_through_packs_decodes_with_reference_libopus() {
    assert!(
        opus::version().starts_with("libopus "),
        "{}",
        opus::version()
    );
    let format = OpusFormat::default();
    let mut encoder = AodnsOpusEncoder::new(OpusEncoderConfig::default()).unwrap();
    let mut builder = PackBuilder::new(PackLimits::REFERENCE);
    let mut closed = Pack::new();
    let mut packs = Vec::new();
    let mut packet = [0u8; 256];
    let mut pcm = vec![0i16; format.frame_len()];
    let amplitude = 16_384.0; // -6 dBFS
    let frames = 80; // 4.8 s
    for f in 0..frames {
        for (i, s) in pcm.iter_mut().enumerate() {
            let n = (f * 960 + i) as f64;
            *s = (amplitude * (2.0 * std::f64::consts::PI * 1000.0 * n / 16_000.0).sin()) as i16;
        }
        let len = encoder.encode_i16(&pcm, &mut packet).unwrap();
        if builder.push(&packet[..len], &mut closed).unwrap() == Pushed::ClosedPrevious {
            packs.push(closed.clone());
        }
    }
    let mut last = Pack::new();
    builder.take_open(&mut last);
    packs.push(last);
    assert!(packs.len() >= 3, "several packs ({})", packs.len());

    // Listener side: strings -> frames -> reference libopus.
    let mut reader = PackReader::new();
    let mut decoder = libopus_decoder(format);
    let mut out = vec![0i16; 960];
    let mut decoded = Vec::new();
    for pack in &packs {
        reader.clear();
        for s in pack.txt_strings() {
            assert!(s.len() <= 250);
            reader.push_txt(s.as_bytes()).unwrap();
        }
        for (_, opus_packet) in reader.sorted_frames() {
            let n = decoder.decode(opus_packet, &mut out, false).unwrap();
            assert_eq!(n, 960);
            decoded.extend(out.iter().map(|&s| f64::from(s)));
        }
    }
    assert_eq!(decoded.len(), frames * 960);
    let steady = &decoded[16_000..]; // skip the first second (codec start-up)
    let freq = zero_crossing_frequency(steady, 16_000.0);
    let (amp, snr) = sine_fit(steady, 16_000.0, freq);
    let level_db = 20.0 * (amp / amplitude).log10();
    println!(
        "libopus {}: {freq:.3} Hz, level {level_db:+.2} dB, SNR {snr:.1} dB",
        opus::version()
    );
    assert!((freq - 1000.0).abs() < 0.5, "frequency {freq}");
    assert!(level_db.abs() < 1.0, "level {level_db} dB");
    assert!(snr > 20.0, "SNR {snr} dB");
}

/// xorshift32 noise in -1..1.
fn noise(len: usize, mut seed: u32) -> Vec<f32> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The signals that break the reference server or stress the size limit, at `hz`,
/// `seconds` long (mono).
fn hostile_signals(hz: u32, seconds: usize) -> Vec<(&'static str, Vec<f32>)> {
    let len = hz as usize * seconds;
    let rate = hz as f32;
    let white = noise(len, 0x1234_5678);
    let burst = hz as usize / 5;
    let two_pi = 2.0 * std::f32::consts::PI;
    let mut phase = 0.0f32;
    let steps: Vec<f32> = (0..len)
        .map(|i| {
            // 440 Hz then +330 Hz every 100 ms (the sheet's crash: aodns.md §3).
            let f = 440.0 + 330.0 * ((i / (hz as usize / 10)) % 8) as f32;
            phase = (phase + two_pi * f / rate) % two_pi;
            0.9 * phase.sin()
        })
        .collect();
    let square = |f: f32| -> Vec<f32> {
        (0..len)
            .map(|i| {
                if (i as f32 * f / rate) % 1.0 < 0.5 {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect()
    };
    vec![
        ("white noise full scale", white.clone()),
        (
            "white noise bursts",
            (0..len)
                .map(|i| {
                    if (i / burst).is_multiple_of(2) {
                        white[i]
                    } else {
                        0.0
                    }
                })
                .collect(),
        ),
        ("tone steps", steps),
        ("square 440 Hz full scale", square(440.0)),
        ("square 2.9 kHz full scale", square(2900.0)),
    ]
}

fn speech_16k() -> Vec<f32> {
    let mut reader = hound::WavReader::open(SPEECH_16K).unwrap();
    assert_eq!(reader.spec().sample_rate, 16_000);
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32_768.0)
        .collect()
}

/// Encodes `mono` (interleaving it to stereo if needed), packs it, decodes every
/// packet with libopus; returns (largest packet, mean packet, decoded RMS / input
/// RMS in dB).
fn encode_pack_decode(config: OpusEncoderConfig, mono: &[f32]) -> (usize, usize, f64) {
    let format = config.format;
    let ch = format.channels.count();
    let frame = format.rate.frame_samples();
    let mut encoder = AodnsOpusEncoder::new(config).unwrap();
    let mut decoder = libopus_decoder(format);
    let mut builder = PackBuilder::new(PackLimits::REFERENCE);
    let mut closed = Pack::new();
    let mut packet = [0u8; 256];
    let mut pcm = vec![0.0f32; frame * ch];
    let mut out = vec![0i16; frame * ch];
    let (mut largest, mut total, mut frames) = (0, 0, 0);
    let (mut energy_in, mut energy_out) = (0.0f64, 0.0f64);
    for (k, chunk) in mono.chunks_exact(frame).enumerate() {
        for (i, &s) in chunk.iter().enumerate() {
            for c in 0..ch {
                // Stereo: the right channel is the left at half level.
                pcm[i * ch + c] = if c == 0 { s } else { s * 0.5 };
            }
        }
        let len = encoder.encode_f32(&pcm, &mut packet).unwrap();
        assert!(len <= 198, "{len}-byte packet");
        // The pack builder enforces the 250-byte string; it must never refuse.
        let _ = builder.push(&packet[..len], &mut closed).unwrap();
        let n = decoder.decode(&packet[..len], &mut out, false).unwrap();
        assert_eq!(n, frame, "libopus decoded a full 60 ms frame");
        largest = largest.max(len);
        total += len;
        frames += 1;
        if k >= 5 {
            energy_in += pcm.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
            energy_out += out
                .iter()
                .map(|&x| (f64::from(x) / 32_768.0).powi(2))
                .sum::<f64>();
        }
    }
    (
        largest,
        total / frames,
        10.0 * (energy_out / energy_in).log10(),
    )
}

#[test]
fn hostile_signals_fit_a_txt_string_and_decode_with_libopus() {
    let mono_16k = OpusEncoderConfig::default();
    let configs = [
        ("16 kHz mono auto", mono_16k),
        (
            "16 kHz mono 64 kb/s requested",
            OpusEncoderConfig {
                bitrate_bps: Some(64_000),
                ..mono_16k
            },
        ),
        (
            "16 kHz mono CBR",
            OpusEncoderConfig {
                cbr: true,
                ..mono_16k
            },
        ),
        (
            "16 kHz mono audio",
            OpusEncoderConfig {
                application: Application::Audio,
                ..mono_16k
            },
        ),
        (
            "16 kHz stereo",
            OpusEncoderConfig {
                format: OpusFormat {
                    rate: OpusRate::Hz16000,
                    channels: Channels::Stereo,
                },
                ..mono_16k
            },
        ),
        (
            "12 kHz mono",
            OpusEncoderConfig {
                format: OpusFormat {
                    rate: OpusRate::Hz12000,
                    channels: Channels::Mono,
                },
                ..mono_16k
            },
        ),
        (
            "8 kHz stereo 64 kb/s requested",
            OpusEncoderConfig {
                format: OpusFormat {
                    rate: OpusRate::Hz8000,
                    channels: Channels::Stereo,
                },
                bitrate_bps: Some(64_000),
                ..mono_16k
            },
        ),
    ];
    let mut cap_reached = false;
    for (name, config) in configs {
        let mut signals = hostile_signals(config.format.rate.hz(), 4);
        if config.format.rate == OpusRate::Hz16000 {
            signals.push(("speech", speech_16k()));
        }
        for (signal, samples) in signals {
            let (largest, mean, gain_db) = encode_pack_decode(config, &samples);
            println!(
                "{name:32} {signal:26} max {largest:3} B, mean {mean:3} B, level {gain_db:+.1} dB"
            );
            cap_reached |= largest >= 190;
            // The codec neither mutes nor blows up the signal (speech and tones
            // within a few dB; noise loses level at low bitrates, as libopus does).
            assert!(
                gain_db > -12.0 && gain_db < 3.0,
                "{name} / {signal}: {gain_db:.1} dB"
            );
        }
    }
    assert!(cap_reached, "the 198-byte ceiling was exercised");
}
