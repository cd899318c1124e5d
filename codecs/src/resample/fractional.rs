//! Clock-drift correction for the fixed-ratio resampler: a fractional-delay read-out on
//! the higher-rate side whose ratio is steered by up to ±[`super::MAX_RATIO_PPM`].
//!
//! The read position advances by `1 / (1 + ppm·10⁻⁶)` input samples per output (fixed
//! point, 32 fractional bits, so hours of steering accumulate no rounding). Each output
//! is a Kaiser-windowed sinc interpolation around that position, its coefficients
//! interpolated linearly between tabulated sub-phases. The kernel's length depends on how
//! much of the band the signal occupies (an 8 kHz caller's voice fills a sixth of the
//! 48 kHz band, so eight taps suffice where a full-band 48 kHz signal needs 56).
//!
//! At a ratio of exactly 1 with the read position on a sample (a stream never steered,
//! or reset), the output is the input delayed by half the kernel, copied bit for bit:
//! the drift correction then costs a copy.

use std::sync::OnceLock;

use super::MAX_RATIO_PPM;
use super::fir::{LANES, interpolated_dot, kaiser, sinc};

/// One input sample in the read position's fixed-point units.
const ONE: u64 = 1 << 32;

/// How much of the band between 0 and the higher rate's Nyquist frequency the signal
/// occupies: the lower rate divided by the higher one, rounded up to one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Band {
    /// Up to a sixth (8 kHz against 48 kHz).
    Sixth,
    /// Up to a third (12 and 16 kHz against 48 kHz).
    Third,
    /// Up to two thirds (24 and 32 kHz against 48 kHz).
    TwoThirds,
    /// The whole band (48 kHz against 48, 96 or 192 kHz).
    Full,
}

impl Band {
    /// The band of a signal carried at `higher` Hz that came from or goes to `lower` Hz.
    pub(super) fn of(lower: u32, higher: u32) -> Band {
        let (lower, higher) = (u64::from(lower), u64::from(higher));
        if lower * 6 <= higher {
            Band::Sixth
        } else if lower * 3 <= higher {
            Band::Third
        } else if lower * 3 <= higher * 2 {
            Band::TwoThirds
        } else {
            Band::Full
        }
    }

    /// The kernel for this band, chosen by measurement (one-way SNR of a tone at the
    /// band's edge, 0.85 × the lower Nyquist, steered ±1000 ppm; see the tests here and in
    /// `resample.rs`). Lagrange kernels are maximally flat at low frequencies, which is
    /// what a heavily oversampled signal needs; the full band needs a windowed sinc.
    fn spec(self) -> KernelSpec {
        match self {
            // 124 dB at 3.4 kHz.
            Band::Sixth => KernelSpec {
                taps: 8,
                shape: Shape::Lagrange,
                sub_phases: 128,
            },
            // 132 dB at 5.1 kHz, 127 dB at 6.8 kHz.
            Band::Third => KernelSpec {
                taps: 16,
                shape: Shape::Lagrange,
                sub_phases: 256,
            },
            // 117 dB at 10.2 kHz, 114 dB at 13.6 kHz.
            Band::TwoThirds => KernelSpec {
                taps: 24,
                shape: Shape::KaiserSinc { beta: 12.0 },
                sub_phases: 256,
            },
            // 118 dB at 20.4 kHz.
            Band::Full => KernelSpec {
                taps: 56,
                shape: Shape::KaiserSinc { beta: 12.0 },
                sub_phases: 512,
            },
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a kernel's coefficients are made.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Lagrange interpolation through all the taps.
    Lagrange,
    /// A sinc cut off at the Nyquist frequency, Kaiser-windowed over all the taps.
    KaiserSinc {
        /// Kaiser window shape.
        beta: f64,
    },
}

/// A fractional-delay kernel.
#[derive(Debug, Clone, Copy)]
struct KernelSpec {
    /// Input samples per output (a multiple of [`LANES`]).
    taps: usize,
    shape: Shape,
    /// Tabulated fractional positions per input sample (a power of two).
    sub_phases: usize,
}

/// Coefficients of one kernel at every tabulated fractional position, shared by every
/// stage of the same [`Band`].
#[derive(Debug)]
pub(super) struct DelayTable {
    taps: usize,
    /// Bits of the fixed-point fraction below the sub-phase index.
    weight_bits: u32,
    /// Per sub-phase: the row at that position, then its difference to the next one.
    rows: Vec<f32>,
}

impl DelayTable {
    fn design(spec: KernelSpec) -> DelayTable {
        let taps = spec.taps;
        let half = taps as f64 / 2.0;
        // Coefficient `i` weighs input sample `newest - taps + 1 + i` for an output at
        // `newest + fraction - taps / 2`.
        let row_at = |fraction: f64| -> Vec<f64> {
            // Offsets of the taps from the output's position.
            let offsets: Vec<f64> = (0..taps)
                .map(|i| i as f64 + 1.0 - half - fraction)
                .collect();
            let row: Vec<f64> = match spec.shape {
                Shape::Lagrange => (0..taps)
                    .map(|k| {
                        (0..taps)
                            .filter(|&j| j != k)
                            .map(|j| offsets[j] / (offsets[j] - offsets[k]))
                            .product()
                    })
                    .collect(),
                Shape::KaiserSinc { beta } => offsets
                    .iter()
                    .map(|&x| sinc(x) * kaiser(x, half, beta))
                    .collect(),
            };
            // Unity gain at DC for every position.
            let gain: f64 = row.iter().sum();
            row.iter().map(|c| c / gain).collect()
        };
        let positions: Vec<Vec<f64>> = (0..=spec.sub_phases)
            .map(|s| row_at(s as f64 / spec.sub_phases as f64))
            .collect();
        let mut rows = Vec::with_capacity(2 * taps * spec.sub_phases);
        for pair in positions.windows(2) {
            rows.extend(pair[0].iter().map(|c| *c as f32));
            rows.extend(pair[0].iter().zip(&pair[1]).map(|(a, b)| (b - a) as f32));
        }
        DelayTable {
            taps,
            weight_bits: 32 - spec.sub_phases.trailing_zeros(),
            rows,
        }
    }

    /// Bytes of coefficients (shared, not per stage).
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        std::mem::size_of_val(self.rows.as_slice())
    }
}

static TABLES: [OnceLock<DelayTable>; 4] = [const { OnceLock::new() }; 4];

/// The shared table for `band`, designed on first use.
pub(super) fn table(band: Band) -> &'static DelayTable {
    TABLES[band.index()].get_or_init(|| {
        let spec = band.spec();
        debug_assert_eq!(spec.taps % LANES, 0);
        debug_assert!(spec.sub_phases.is_power_of_two());
        DelayTable::design(spec)
    })
}

/// Outputs of the drift stage computed side by side, one per SIMD lane.
const GROUP: usize = 4;

/// [`GROUP`] outputs whose windows start one sample apart, all from one sub-phase row
/// (`base`, `slope`) at their own `weights`: output `k` is
/// `Σ (base[i] + weights[k] · slope[i]) · samples[i + k]`. `TAPS` is the row length as
/// a constant (0: any length).
#[inline]
fn group_dots<const TAPS: usize>(
    base: &[f32],
    slope: &[f32],
    weights: [f32; GROUP],
    samples: &[f32],
) -> [f32; GROUP] {
    let taps = if TAPS == 0 { base.len() } else { TAPS };
    let (base, slope) = (&base[..taps], &slope[..taps]);
    let samples = &samples[..taps + GROUP - 1];
    let mut acc = [0.0f32; GROUP];
    for i in 0..taps {
        let (b, d) = (base[i], slope[i]);
        let window = &samples[i..i + GROUP];
        for k in 0..GROUP {
            acc[k] += (b + weights[k] * d) * window[k];
        }
    }
    acc
}

/// One steerable stream through a [`DelayTable`].
#[derive(Debug)]
pub(super) struct FractionalDelayStage {
    table: &'static DelayTable,
    /// History (`taps - 1` samples) followed by input not yet used up.
    buffer: Vec<f32>,
    /// Samples held in `buffer`.
    filled: usize,
    /// Index in `buffer` of the newest input sample the next output needs (the read
    /// position's integer part).
    newest: usize,
    /// The read position's fractional part, in 2⁻³² samples.
    fraction: u32,
    /// Read-position advance per output, in 2⁻³² samples.
    step: u64,
}

impl FractionalDelayStage {
    /// A stage that accepts up to `max_input` samples between two [`run`](Self::run)s.
    pub(super) fn new(table: &'static DelayTable, max_input: usize) -> FractionalDelayStage {
        let mut stage = FractionalDelayStage {
            table,
            buffer: vec![0.0; table.taps - 1 + max_input],
            filled: 0,
            newest: 0,
            fraction: 0,
            step: ONE,
        };
        stage.reset();
        stage
    }

    /// Silence as history, ratio 1, read position on the next input sample.
    pub(super) fn reset(&mut self) {
        let history = self.table.taps - 1;
        self.buffer[..history].fill(0.0);
        self.filled = history;
        self.newest = history;
        self.fraction = 0;
        self.step = ONE;
    }

    /// The table this stage reads.
    #[cfg(test)]
    pub(super) fn table(&self) -> &'static DelayTable {
        self.table
    }

    /// Steers to `ppm` more outputs per input (already clamped by the caller).
    pub(super) fn set_ratio_ppm(&mut self, ppm: f64) {
        self.step = (ONE as f64 / (1.0 + ppm * 1e-6)).round() as u64;
    }

    /// Delay in input samples at a ratio of 1 (half the kernel).
    pub(super) fn delay_input(&self) -> f64 {
        (self.table.taps / 2) as f64
    }

    /// Whether outputs are currently plain delayed copies of the input.
    pub(super) fn is_bypassed(&self) -> bool {
        self.step == ONE && self.fraction == 0
    }

    /// Most outputs [`run`](Self::run) makes after `input` more samples, at any allowed
    /// ratio.
    pub(super) fn max_output(input: usize) -> usize {
        (input as f64 * (1.0 + 1.5 * MAX_RATIO_PPM * 1e-6)).ceil() as usize + 2
    }

    /// Room for input before the next [`run`](Self::run): write into it, then
    /// [`commit`](Self::commit) how much was written.
    pub(super) fn spare(&mut self) -> &mut [f32] {
        &mut self.buffer[self.filled..]
    }

    /// Takes `written` samples just written into [`spare`](Self::spare).
    pub(super) fn commit(&mut self, written: usize) {
        self.filled += written;
    }

    /// Appends `input` (at most the stage's `max_input` since the last run).
    pub(super) fn push(&mut self, input: &[f32]) {
        self.spare()[..input.len()].copy_from_slice(input);
        self.commit(input.len());
    }

    /// Writes every output the input so far allows into `output` (at least
    /// [`max_output`](Self::max_output) of the input since the last run long); returns
    /// how many.
    pub(super) fn run(&mut self, output: &mut [f32]) -> usize {
        let written = if self.is_bypassed() {
            let count = self.filled.saturating_sub(self.newest);
            let from = self.newest - self.table.taps / 2;
            output[..count].copy_from_slice(&self.buffer[from..from + count]);
            self.newest += count;
            count
        } else {
            if self.table.taps <= 24 {
                self.interpolate::<4>(output)
            } else {
                self.interpolate::<8>(output)
            }
        };
        // Keep the history the next outputs reach back into.
        let history = self.table.taps - 1;
        let drop = self.filled - history;
        self.buffer.copy_within(drop..self.filled, 0);
        self.filled = history;
        self.newest -= drop;
        written
    }

    /// The steered read-out. Four consecutive outputs that read four consecutive input
    /// windows through one sub-phase are computed together, one output per SIMD lane,
    /// which needs no horizontal sums; the rest one at a time with `ACC` accumulators
    /// (short kernels fit one SSE register, long ones need two to keep the additions from
    /// waiting on each other). The read position crosses a sub-phase every
    /// `1 / (|ppm|·10⁻⁶ · sub-phases)` outputs, so at the tens of ppm real clocks drift
    /// nearly every group qualifies; at 1000 ppm about 60 % do for 8 kHz callers (128
    /// sub-phases), a quarter for 12-32 kHz and none for the full band.
    fn interpolate<const ACC: usize>(&mut self, output: &mut [f32]) -> usize {
        let table = self.table;
        let taps = table.taps;
        let weight_mask = (1u32 << table.weight_bits) - 1;
        let weight_scale = 1.0 / (1u64 << table.weight_bits) as f32;
        let filled = self.filled;
        // Locals, so the loop does not store the position back on every output.
        let (mut newest, mut fraction, step) = (self.newest, self.fraction, self.step);
        let advance = |newest: &mut usize, fraction: &mut u32| {
            let advanced = u64::from(*fraction) + step;
            *newest += (advanced >> 32) as usize;
            *fraction = (advanced & (ONE - 1)) as u32;
        };
        let mut written = 0;
        while written < output.len() && newest < filled {
            let sub_phase = (fraction >> table.weight_bits) as usize;
            let at = sub_phase * 2 * taps;
            let (base, slope) = table.rows[at..at + 2 * taps].split_at(taps);
            if written + GROUP <= output.len() && newest + GROUP <= filled {
                // Output k of the group sits at fraction + k·step (fixed point): the group
                // reads consecutive windows if its integer part advances by exactly k, and
                // one sub-phase if the first and last fractions share it (the fractions
                // move monotonically).
                let last = u64::from(fraction) + (GROUP as u64 - 1) * step;
                let second = u64::from(fraction) + step;
                let last_fraction = (last & (ONE - 1)) as u32;
                if second >> 32 == 1
                    && last >> 32 == GROUP as u64 - 1
                    && last_fraction >> table.weight_bits == fraction >> table.weight_bits
                {
                    let first_weight = (fraction & weight_mask) as f32 * weight_scale;
                    let weight_step = (step as f64 - ONE as f64) as f32 * weight_scale;
                    let weights: [f32; GROUP] =
                        std::array::from_fn(|k| first_weight + k as f32 * weight_step);
                    let start = newest + 1 - taps;
                    let samples = &self.buffer[start..start + taps + GROUP - 1];
                    // The common kernel lengths as constants, so the loop unrolls.
                    let acc = match taps {
                        8 => group_dots::<8>(base, slope, weights, samples),
                        16 => group_dots::<16>(base, slope, weights, samples),
                        _ => group_dots::<0>(base, slope, weights, samples),
                    };
                    output[written..written + GROUP].copy_from_slice(&acc);
                    written += GROUP;
                    let next = u64::from(fraction) + GROUP as u64 * step;
                    newest += (next >> 32) as usize;
                    fraction = (next & (ONE - 1)) as u32;
                    continue;
                }
            }
            let weight = (fraction & weight_mask) as f32 * weight_scale;
            let window = &self.buffer[newest + 1 - taps..=newest];
            output[written] = interpolated_dot::<ACC>(base, slope, weight, window);
            written += 1;
            advance(&mut newest, &mut fraction);
        }
        self.newest = newest;
        self.fraction = fraction;
        written
    }

    /// Address and length of the stage's buffer.
    #[cfg(test)]
    pub(super) fn buffer_identity(&self) -> (usize, usize) {
        (self.buffer.as_ptr() as usize, self.buffer.len())
    }

    /// Bytes this stage owns (its table is shared).
    #[cfg(test)]
    pub(super) fn owned_bytes(&self) -> usize {
        std::mem::size_of_val(self.buffer.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_ratio_one_the_output_is_the_input_delayed_bit_for_bit() {
        for band in [Band::Sixth, Band::Third, Band::TwoThirds, Band::Full] {
            let table = table(band);
            let delay = table.taps / 2;
            let mut stage = FractionalDelayStage::new(table, 100);
            let x: Vec<f32> = (0..300)
                .map(|n| ((n * 37 % 101) as f32 - 50.0) / 51.0)
                .collect();
            let mut y = Vec::new();
            let mut out = vec![0.0f32; FractionalDelayStage::max_output(100)];
            for piece in x.chunks(100) {
                stage.push(piece);
                let n = stage.run(&mut out);
                y.extend_from_slice(&out[..n]);
            }
            assert_eq!(y.len(), x.len());
            assert!(y[..delay].iter().all(|v| *v == 0.0));
            assert_eq!(y[delay..], x[..x.len() - delay]);
        }
    }

    #[test]
    fn the_interpolated_read_out_matches_the_copy_on_a_sample() {
        // A steered stage whose read position lands back on a sample computes the same
        // value as the bypass (the kernel is a unit impulse there), so steering can start
        // and stop without a step.
        for band in [Band::Sixth, Band::Third, Band::TwoThirds, Band::Full] {
            let table = table(band);
            let taps = table.taps;
            let (base, slope) = table.rows[..2 * taps].split_at(taps);
            let mut impulse = vec![0.0f32; taps];
            impulse[taps / 2 - 1] = 1.0;
            assert_eq!(base, impulse.as_slice(), "{band:?}");
            // Row K (fraction 1) is the impulse one sample later.
            let last = (table.rows.len() / (2 * taps) - 1) * 2 * taps;
            let (base, slope_last) = table.rows[last..last + 2 * taps].split_at(taps);
            let end: Vec<f32> = base.iter().zip(slope_last).map(|(b, d)| b + d).collect();
            let mut later = vec![0.0f32; taps];
            later[taps / 2] = 1.0;
            let worst = end
                .iter()
                .zip(&later)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-6, "{band:?}: {worst}");
            assert_eq!(slope.len(), taps);
        }
    }

    #[test]
    fn bands_follow_the_rate_ratio() {
        assert_eq!(Band::of(8_000, 48_000), Band::Sixth);
        assert_eq!(Band::of(12_000, 48_000), Band::Third);
        assert_eq!(Band::of(16_000, 48_000), Band::Third);
        assert_eq!(Band::of(24_000, 48_000), Band::TwoThirds);
        assert_eq!(Band::of(32_000, 48_000), Band::TwoThirds);
        assert_eq!(Band::of(48_000, 48_000), Band::Full);
        assert_eq!(Band::of(48_000, 96_000), Band::TwoThirds);
        assert_eq!(Band::of(48_000, 192_000), Band::Third);
    }
}
