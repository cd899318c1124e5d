//! Measuring instruments for tests: levels, sine fits, tone power, delay.
//!
//! Every DSP test in the project (and the end-to-end tests of the whole gateway) asserts
//! against figures measured with these functions instead of comparing samples, so a test
//! states what it means: "the 1 kHz tone comes out at -6 dBFS with 80 dB SNR, 2.4 ms late".
//!
//! Level convention (AES17): 0 dBFS is the level of a full-scale sine, i.e. a sine with
//! peak 1.0. A sine of peak 0.5 therefore reads -6.02 dBFS both as [`rms_dbfs`] and as
//! [`SineFit::amplitude_dbfs`], and white noise of RMS `r` reads `20·log10(r·√2)` dBFS.
//! Silence reads `-inf`.
//!
//! These are test and diagnostic tools, not media-path code: they allocate (FFT buffers)
//! and compute in `f64` for accuracy over windows from 20 ms to several minutes.

use std::f64::consts::{PI, TAU};

use realfft::RealFftPlanner;
use realfft::num_complex::Complex;

use crate::rate::SampleRate;

/// Longest prefix used for the FFT search of [`dominant_frequency`] (about 5.5 s at 48 kHz).
/// Longer windows are refined by the sine fit itself, in stages.
const MAX_FFT_LEN: usize = 1 << 18;

/// How much longer each refinement stage of [`fit_sine`] may be than the previous one. The
/// frequency from a stage of length L is accurate to far better than 1/(16·L) cycles per
/// sample, which keeps the next stage inside the Gauss-Newton capture range.
const STAGE_GROWTH: usize = 16;

/// Level in dBFS (AES17, full-scale sine = 0 dBFS) of a mean-square power.
pub fn power_to_dbfs(mean_square: f64) -> f64 {
    10.0 * (2.0 * mean_square).log10()
}

/// RMS level of `x` in dBFS (AES17: a full-scale sine reads 0 dBFS). Empty or silent: `-inf`.
pub fn rms_dbfs(x: &[f32]) -> f64 {
    if x.is_empty() {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    power_to_dbfs(sum / x.len() as f64)
}

/// Peak level of `x` in dBFS (largest magnitude; 1.0 = 0 dBFS). Empty or silent: `-inf`.
pub fn peak_dbfs(x: &[f32]) -> f64 {
    let peak = x.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    20.0 * f64::from(peak).log10()
}

/// Result of fitting `A·cos(2π·f·n/fs + φ) + dc` to a signal (IEEE 1057 sine fit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SineFit {
    /// Fitted frequency in hertz.
    pub frequency_hz: f64,
    /// Peak amplitude `A` (1.0 = full scale).
    pub amplitude: f64,
    /// `A` in dBFS (AES17: `20·log10(A)`).
    pub amplitude_dbfs: f64,
    /// Phase `φ` in radians in (-π, π], of a cosine, at the first sample (n = 0).
    pub phase_rad: f64,
    /// Fitted DC offset.
    pub dc: f64,
    /// RMS of the residual (signal minus fitted sine and DC): noise plus distortion.
    pub residual_rms: f64,
    /// Signal power (`A²/2`) over residual power, in dB; `+inf` for a perfect fit.
    pub snr_db: f64,
}

/// Fits a sine of unknown frequency to `x` (IEEE 1057 four-parameter least-squares fit).
///
/// The start value comes from [`dominant_frequency`]; Gauss-Newton iterations then refine
/// frequency, amplitude, phase and DC together. Long windows (minutes) are fitted in
/// stages of growing length so each stage starts inside the capture range of the next.
/// Works on windows as short as a few cycles (20 ms of a 1 kHz tone is plenty).
///
/// Returns `None` when `x` has fewer than 8 samples, is silent, or the fit fails.
pub fn fit_sine(x: &[f32], rate: SampleRate) -> Option<SineFit> {
    let fs = f64::from(rate.hz());
    let mut omega = dominant_frequency(x, rate)? * TAU / fs;
    let mut len = x.len().min(MAX_FFT_LEN);
    loop {
        omega = four_parameter_fit(&x[..len], omega)?.omega;
        if len == x.len() {
            break;
        }
        len = (len * STAGE_GROWTH).min(x.len());
    }
    fit_sine_at(x, rate, omega * fs / TAU)
}

/// Fits a sine of known frequency to `x` (IEEE 1057 three-parameter least-squares fit):
/// the amplitude and phase of the component at `frequency_hz`, with DC, and the residual.
///
/// Use it to measure a tone whose frequency the test chose (e.g. the alias a resampler
/// should have removed). Returns `None` for fewer than 4 samples or a degenerate frequency
/// (0 or Nyquist, where sine and cosine are not independent).
pub fn fit_sine_at(x: &[f32], rate: SampleRate, frequency_hz: f64) -> Option<SineFit> {
    let fs = f64::from(rate.hz());
    let omega = frequency_hz * TAU / fs;
    let p = three_parameter_fit(x, omega)?;
    Some(summarise(x, p, fs))
}

/// Frequency in hertz of the strongest spectral peak of `x` (DC excluded).
///
/// Hann-windowed FFT of the first 2^18 samples, peak bin refined by Gaussian interpolation
/// (accurate to a few hundredths of a bin for a clean tone). Returns `None` for fewer than
/// 8 samples or silence.
pub fn dominant_frequency(x: &[f32], rate: SampleRate) -> Option<f64> {
    let n = x.len().min(MAX_FFT_LEN);
    if n < 8 {
        return None;
    }
    let x = &x[..n];
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let mut planner = RealFftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(n);
    let mut input: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let w = 0.5 - 0.5 * (TAU * i as f64 / n as f64).cos();
            (f64::from(v) - mean) * w
        })
        .collect();
    let mut spectrum = fft.make_output_vec();
    fft.process(&mut input, &mut spectrum).ok()?;
    let power: Vec<f64> = spectrum.iter().map(|c| c.norm_sqr()).collect();
    // Bin 0 and its Hann neighbour carry what is left of DC.
    let (peak, &peak_power) = power
        .iter()
        .enumerate()
        .skip(2)
        .max_by(|a, b| a.1.total_cmp(b.1))?;
    if peak_power <= 0.0 {
        return None;
    }
    // Gaussian (log-parabolic) interpolation: nearly exact for the Hann main lobe.
    let offset = if peak + 1 < power.len() {
        let (l, c, r) = (power[peak - 1].ln(), peak_power.ln(), power[peak + 1].ln());
        let denom = l - 2.0 * c + r;
        if denom.is_finite() && denom < 0.0 {
            0.5 * (l - r) / denom
        } else {
            0.0
        }
    } else {
        0.0
    };
    Some((peak as f64 + offset.clamp(-0.5, 0.5)) * f64::from(rate.hz()) / n as f64)
}

/// Mean-square power of the component of `x` at `frequency_hz` (Goertzel algorithm).
///
/// Normalised so that a sine of peak `A` at that frequency, over a whole number of
/// cycles, gives `A²/2` (use [`power_to_dbfs`] for its level). Away from whole cycles the
/// usual rectangular-window leakage applies; prefer [`fit_sine_at`] there. Empty: 0.
pub fn goertzel_power(x: &[f32], rate: SampleRate, frequency_hz: f64) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    let omega = frequency_hz * TAU / f64::from(rate.hz());
    let coeff = 2.0 * omega.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = f64::from(v) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    // |X(ω)|² from the last two states.
    let magnitude_sq = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let n = x.len() as f64;
    2.0 * magnitude_sq.max(0.0) / (n * n)
}

/// Delay found by [`estimate_delay`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delay {
    /// How many samples `delayed` lags `reference` (negative: it leads), with sub-sample
    /// precision from a parabola through the correlation peak.
    pub samples: f64,
    /// Peak of the normalised cross-correlation (1.0: identical shape); a confidence figure.
    pub correlation: f64,
}

/// Finds the delay of `delayed` relative to `reference` by cross-correlation (via FFT),
/// searching lags in `-max_lag..=max_lag`.
///
/// Both signals must be at the same rate. Works best with broadband or transient signals
/// (noise, clicks, speech); a pure tone is ambiguous by whole periods. Cost is an FFT of
/// about `reference.len() + delayed.len()` points, so pass a window of seconds, not
/// minutes. Returns `None` if either signal is empty or silent.
pub fn estimate_delay(reference: &[f32], delayed: &[f32], max_lag: usize) -> Option<Delay> {
    let energy = |s: &[f32]| s.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
    let (er, ed) = (energy(reference), energy(delayed));
    if er <= 0.0 || ed <= 0.0 {
        return None;
    }
    let n = (reference.len() + delayed.len()).next_power_of_two();
    let mut planner = RealFftPlanner::<f64>::new();
    let forward = planner.plan_fft_forward(n);
    let inverse = planner.plan_fft_inverse(n);
    let spectrum_of = |s: &[f32]| -> Option<Vec<Complex<f64>>> {
        let mut input = vec![0.0f64; n];
        for (d, &v) in input.iter_mut().zip(s) {
            *d = f64::from(v);
        }
        let mut out = forward.make_output_vec();
        forward.process(&mut input, &mut out).ok()?;
        Some(out)
    };
    let r = spectrum_of(reference)?;
    let mut cross = spectrum_of(delayed)?;
    for (c, r) in cross.iter_mut().zip(&r) {
        *c *= r.conj();
    }
    // The inverse transform insists on real DC and Nyquist bins; they are, up to rounding.
    if let Some(first) = cross.first_mut() {
        first.im = 0.0;
    }
    if let Some(last) = cross.last_mut() {
        last.im = 0.0;
    }
    let mut corr = vec![0.0f64; n];
    inverse.process(&mut cross, &mut corr).ok()?;
    // corr[k] = sum reference[i] * delayed[i + k] (times n); negative lags wrap around.
    let max_lag = max_lag.min(n / 2 - 1) as isize;
    let at = |k: isize| corr[k.rem_euclid(n as isize) as usize];
    let best = (-max_lag..=max_lag).max_by(|&a, &b| at(a).total_cmp(&at(b)))?;
    let (l, c, r) = (at(best - 1), at(best), at(best + 1));
    let denom = l - 2.0 * c + r;
    let offset = if denom < 0.0 {
        (0.5 * (l - r) / denom).clamp(-0.5, 0.5)
    } else {
        0.0
    };
    Some(Delay {
        samples: best as f64 + offset,
        correlation: c / n as f64 / (er * ed).sqrt(),
    })
}

// ---------------------------------------------------------------------------------------
// Least-squares machinery
// ---------------------------------------------------------------------------------------

/// Linear parameters of `a·cos(ω·t) + b·sin(ω·t) + c`, with `t = n - centre`.
#[derive(Debug, Clone, Copy)]
struct Params {
    a: f64,
    b: f64,
    c: f64,
    omega: f64,
    centre: f64,
}

/// The time origin at the middle of the window keeps the normal equations well conditioned.
fn centre_of(len: usize) -> f64 {
    (len as f64 - 1.0) / 2.0
}

/// Three-parameter fit (known ω): solves the 3×3 normal equations.
fn three_parameter_fit(x: &[f32], omega: f64) -> Option<Params> {
    if x.len() < 4 || !omega.is_finite() {
        return None;
    }
    let centre = centre_of(x.len());
    let mut ata = [[0.0f64; 3]; 3];
    let mut atb = [0.0f64; 3];
    for (i, &v) in x.iter().enumerate() {
        let (s, c) = (omega * (i as f64 - centre)).sin_cos();
        let row = [c, s, 1.0];
        accumulate(&mut ata, &mut atb, &row, f64::from(v));
    }
    let [a, b, c] = solve(ata, atb)?;
    Some(Params {
        a,
        b,
        c,
        omega,
        centre,
    })
}

/// Four-parameter fit (IEEE 1057 §4.1.3.3): Gauss-Newton on (a, b, c, ω) from `omega`.
fn four_parameter_fit(x: &[f32], omega: f64) -> Option<Params> {
    let mut p = three_parameter_fit(x, omega)?;
    let half = (x.len() as f64 / 2.0).max(1.0); // scales the ω column to the others
    for _ in 0..30 {
        let mut ata = [[0.0f64; 4]; 4];
        let mut atb = [0.0f64; 4];
        for (i, &v) in x.iter().enumerate() {
            let t = i as f64 - p.centre;
            let (s, c) = (p.omega * t).sin_cos();
            let model = p.a * c + p.b * s + p.c;
            let row = [c, s, 1.0, (t / half) * (p.b * c - p.a * s)];
            accumulate(&mut ata, &mut atb, &row, f64::from(v) - model);
        }
        let [da, db, dc, dw] = solve(ata, atb)?;
        let step = dw / half;
        p.a += da;
        p.b += db;
        p.c += dc;
        p.omega += step;
        if !p.omega.is_finite() || p.omega <= 0.0 || p.omega >= PI {
            return None;
        }
        if step.abs() < 1e-13 * p.omega.max(1e-6) {
            break;
        }
    }
    Some(p)
}

/// Adds one observation row to normal equations `AᵀA`, `Aᵀb`.
fn accumulate<const N: usize>(ata: &mut [[f64; N]; N], atb: &mut [f64; N], row: &[f64; N], y: f64) {
    for (r, ata_row) in row.iter().zip(ata.iter_mut()) {
        for (c, cell) in row.iter().zip(ata_row.iter_mut()) {
            *cell += r * c;
        }
    }
    for (r, b) in row.iter().zip(atb.iter_mut()) {
        *b += r * y;
    }
}

/// Gaussian elimination with partial pivoting; `None` if singular.
fn solve<const N: usize>(mut a: [[f64; N]; N], mut b: [f64; N]) -> Option<[f64; N]> {
    let scale = a.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    for col in 0..N {
        let pivot = (col..N).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() <= scale * 1e-14 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col];
        for row in col + 1..N {
            let f = a[row][col] / pivot_row[col];
            for (x, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0f64; N];
    for row in (0..N).rev() {
        let tail: f64 = (row + 1..N).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    Some(x)
}

/// Turns fitted parameters into the public summary, computing the residual.
fn summarise(x: &[f32], p: Params, fs: f64) -> SineFit {
    let residual_sq: f64 = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (s, c) = (p.omega * (i as f64 - p.centre)).sin_cos();
            let e = f64::from(v) - (p.a * c + p.b * s + p.c);
            e * e
        })
        .sum();
    let residual_ms = residual_sq / x.len() as f64;
    let amplitude = p.a.hypot(p.b);
    // a·cos + b·sin = A·cos(ωt + φc) with φc = atan2(-b, a); move the origin to n = 0.
    let phase = wrap_phase((-p.b).atan2(p.a) - p.omega * p.centre);
    SineFit {
        frequency_hz: p.omega * fs / TAU,
        amplitude,
        amplitude_dbfs: 20.0 * amplitude.log10(),
        phase_rad: phase,
        dc: p.c,
        residual_rms: residual_ms.sqrt(),
        snr_db: 10.0 * (amplitude * amplitude / 2.0 / residual_ms).log10(),
    }
}

/// Wraps an angle into (-π, π].
fn wrap_phase(phi: f64) -> f64 {
    let w = phi.rem_euclid(TAU);
    if w > PI { w - TAU } else { w }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::SQRT_2;

    /// Level of an RMS value in dBFS (AES17).
    fn rms_to_dbfs(rms: f64) -> f64 {
        20.0 * (rms * SQRT_2).log10()
    }

    const FS: SampleRate = SampleRate::HZ_48000;

    /// Deterministic Gaussian noise (xorshift64* + Box-Muller): tests stay reproducible.
    struct Noise(u64);

    impl Noise {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
            (bits as f64 + 0.5) / (1u64 << 53) as f64
        }

        fn gaussian(&mut self) -> f64 {
            let (u1, u2) = (self.uniform(), self.uniform());
            (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()
        }
    }

    fn sine(len: usize, fs: f64, freq: f64, amplitude: f64, phase: f64) -> Vec<f64> {
        (0..len)
            .map(|n| amplitude * (TAU * freq * n as f64 / fs + phase).cos())
            .collect()
    }

    fn to_f32(x: &[f64]) -> Vec<f32> {
        x.iter().map(|&v| v as f32).collect()
    }

    #[test]
    fn levels_follow_aes17() {
        let s = to_f32(&sine(48_000, 48_000.0, 997.0, 0.5, 0.3));
        assert!((rms_dbfs(&s) - (-6.0206)).abs() < 0.01, "{}", rms_dbfs(&s));
        assert!(
            (peak_dbfs(&s) - (-6.0206)).abs() < 0.01,
            "{}",
            peak_dbfs(&s)
        );
        let full = to_f32(&sine(4800, 48_000.0, 1000.0, 1.0, 0.0));
        assert!(rms_dbfs(&full).abs() < 0.01);
        // A DC of 0.5 has RMS 0.5 -> 20·log10(0.5·√2) = -3.01 dBFS, peak -6.02 dBFS.
        assert!((rms_dbfs(&[0.5; 100]) - (-3.0103)).abs() < 0.001);
        assert_eq!(rms_dbfs(&[]), f64::NEG_INFINITY);
        assert_eq!(peak_dbfs(&[0.0; 4]), f64::NEG_INFINITY);
        assert!((power_to_dbfs(0.5) - 0.0).abs() < 1e-12);
    }

    #[test]
    fn sine_fit_measures_snr_against_known_noise() {
        // 997 Hz at -6 dBFS plus white noise at -80 dBFS: SNR must read 74 dB.
        let mut noise = Noise(0x1234_5678_9ABC_DEF1);
        let noise_rms = 10f64.powf(-80.0 / 20.0) / SQRT_2;
        let clean = sine(96_000, 48_000.0, 997.0, 0.5, 1.0);
        let x: Vec<f32> = clean
            .iter()
            .map(|&v| (v + noise_rms * noise.gaussian()) as f32)
            .collect();
        let fit = fit_sine(&x, FS).expect("fit");
        assert!(
            (fit.frequency_hz - 997.0).abs() < 1e-3,
            "{}",
            fit.frequency_hz
        );
        assert!(
            (fit.amplitude_dbfs - (-6.0206)).abs() < 0.01,
            "{}",
            fit.amplitude_dbfs
        );
        assert!((fit.phase_rad - 1.0).abs() < 1e-3, "{}", fit.phase_rad);
        assert!((fit.snr_db - 74.0).abs() < 1.0, "{}", fit.snr_db);
        assert!((rms_to_dbfs(fit.residual_rms) - (-80.0)).abs() < 0.5);
    }

    #[test]
    fn sine_fit_works_on_a_20ms_window_with_offset_start_frequency() {
        // 20 ms at 8 kHz (160 samples) of 1234.5 Hz, DC 0.01, noise at -60 dBFS: SNR 50 dB.
        let fs = SampleRate::HZ_8000;
        let mut noise = Noise(42);
        let noise_rms = 10f64.powf(-60.0 / 20.0) / SQRT_2;
        let x: Vec<f32> = sine(160, 8000.0, 1234.5, 0.25, -2.0)
            .iter()
            .map(|&v| (v + 0.01 + noise_rms * noise.gaussian()) as f32)
            .collect();
        let fit = fit_sine(&x, fs).expect("fit");
        assert!(
            (fit.frequency_hz - 1234.5).abs() < 0.5,
            "{}",
            fit.frequency_hz
        );
        assert!((fit.amplitude - 0.25).abs() < 0.25 * 0.01);
        assert!((fit.dc - 0.01).abs() < 2e-4, "{}", fit.dc);
        assert!((fit.phase_rad - (-2.0)).abs() < 0.01, "{}", fit.phase_rad);
        assert!((fit.snr_db - 50.0).abs() < 2.0, "{}", fit.snr_db);
    }

    #[test]
    fn sine_fit_is_exact_on_a_long_window() {
        // Two minutes of a call at 8 kHz (960 000 samples), f not on any FFT bin: the fit
        // is refined in stages beyond the 2^18-sample FFT.
        let fs = SampleRate::HZ_8000;
        let f = 440.123_456;
        let x = to_f32(&sine(8_000 * 120, 8_000.0, f, 0.7, 0.5));
        let fit = fit_sine(&x, fs).expect("fit");
        assert!(
            (fit.frequency_hz - f).abs() < 1e-6,
            "{}",
            fit.frequency_hz - f
        );
        assert!((fit.amplitude - 0.7).abs() < 1e-6);
        assert!((fit.phase_rad - 0.5).abs() < 1e-5, "{}", fit.phase_rad);
        // Only f32 rounding of the samples is left: about 24 bits -> well over 130 dB.
        assert!(fit.snr_db > 130.0, "{}", fit.snr_db);
    }

    #[test]
    fn sine_fit_at_known_frequency_measures_a_weak_tone() {
        // A -90 dBFS tone under -60 dBFS noise: 3-parameter fit recovers its level.
        let mut noise = Noise(7);
        let noise_rms = 10f64.powf(-60.0 / 20.0) / SQRT_2;
        let weak = 10f64.powf(-90.0 / 20.0);
        let x: Vec<f32> = sine(480_000, 48_000.0, 2000.0, weak, 0.0)
            .iter()
            .map(|&v| (v + noise_rms * noise.gaussian()) as f32)
            .collect();
        let fit = fit_sine_at(&x, FS, 2000.0).expect("fit");
        assert!(
            (fit.amplitude_dbfs - (-90.0)).abs() < 1.5,
            "{}",
            fit.amplitude_dbfs
        );
        assert!(fit_sine_at(&x[..3], FS, 2000.0).is_none());
        assert!(
            fit_sine_at(&x, FS, 0.0).is_none(),
            "sin column is zero at DC"
        );
    }

    #[test]
    fn goertzel_reads_tone_power_and_rejects_other_bins() {
        let x = to_f32(&sine(4800, 48_000.0, 1000.0, 0.5, 0.7));
        assert!((power_to_dbfs(goertzel_power(&x, FS, 1000.0)) - (-6.0206)).abs() < 0.01);
        // 1100 Hz is a whole number of cycles away in 0.1 s: an exact null.
        assert!(power_to_dbfs(goertzel_power(&x, FS, 1100.0)) < -120.0);
        assert_eq!(goertzel_power(&[], FS, 1000.0), 0.0);
    }

    #[test]
    fn dominant_frequency_finds_the_strongest_of_two_tones() {
        let a = sine(48_000, 48_000.0, 3210.7, 0.5, 0.0);
        let b = sine(48_000, 48_000.0, 700.0, 0.1, 0.0);
        let x: Vec<f32> = a.iter().zip(&b).map(|(p, q)| (p + q) as f32).collect();
        let f = dominant_frequency(&x, FS).expect("peak");
        assert!((f - 3210.7).abs() < 0.1, "{f}");
        assert!(dominant_frequency(&[0.0; 1000], FS).is_none());
        assert!(dominant_frequency(&[1.0; 4], FS).is_none());
    }

    #[test]
    fn delay_of_delayed_noise_is_found_with_sub_sample_precision() {
        let mut noise = Noise(99);
        let reference: Vec<f32> = (0..8000).map(|_| noise.gaussian() as f32 * 0.1).collect();
        // Integer delay of 37 samples, plus a little noise on the copy.
        let delayed: Vec<f32> = (0..8000)
            .map(
                |i| if i >= 37 { reference[i - 37] } else { 0.0 } + 0.001 * noise.gaussian() as f32,
            )
            .collect();
        let d = estimate_delay(&reference, &delayed, 200).expect("delay");
        assert!((d.samples - 37.0).abs() < 0.05, "{:?}", d);
        assert!(d.correlation > 0.98, "{:?}", d);
        // And the other way round: the reference leads.
        let d = estimate_delay(&delayed, &reference, 200).expect("delay");
        assert!((d.samples + 37.0).abs() < 0.05, "{:?}", d);
        assert!(estimate_delay(&reference, &[0.0; 10], 5).is_none());
    }

    #[test]
    fn delay_of_a_band_limited_fractional_shift() {
        // A band-limited pulse (windowed sinc, cutoff 0.4·fs) shifted by 12.3 samples.
        let pulse = |t: f64| {
            let x = 0.8 * t;
            let sinc = if x.abs() < 1e-12 {
                1.0
            } else {
                (PI * x).sin() / (PI * x)
            };
            let w = if t.abs() < 40.0 {
                0.5 + 0.5 * (PI * t / 40.0).cos()
            } else {
                0.0
            };
            sinc * w
        };
        let reference: Vec<f32> = (0..400).map(|n| pulse(n as f64 - 100.0) as f32).collect();
        let delayed: Vec<f32> = (0..400).map(|n| pulse(n as f64 - 112.3) as f32).collect();
        let d = estimate_delay(&reference, &delayed, 50).expect("delay");
        assert!((d.samples - 12.3).abs() < 0.15, "{:?}", d);
    }
}
