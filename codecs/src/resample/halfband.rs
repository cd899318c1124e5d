//! Half-band FIR stages that double or halve the rate next to the 48 kHz side, so the
//! sharp polyphase filter of a low caller rate runs at 24 kHz instead of 48 kHz.
//!
//! A half-band filter is a low-pass whose every other coefficient is zero except the
//! centre (0.5): halving the rate, each output is one [`dot`] over the even input samples
//! plus half of one odd sample; doubling it, every odd output is a delayed copy of the
//! input and every even one a [`dot`]. Its response is symmetric about a quarter of the
//! higher rate, so it only has to keep the caller's band (up to 1.15 × its Nyquist
//! frequency, the start of the polyphase filter's stopband) and reject that band's mirror
//! image about 12 kHz; that wide transition makes it short. 8 → 48 kHz then costs 40
//! multiply-adds per 24 kHz sample plus 16 per 48 kHz pair instead of 40 per 48 kHz
//! sample.
//!
//! The tables depend only on the caller's band and are shared ([`table`]).

use std::sync::OnceLock;

use super::fir::{LANES, SLIDING, dot, kaiser, sinc, sliding_dots};

/// Design target for the rejection of the mirror image, dB (Kaiser's estimate; the tests
/// measure 118.7 dB with 31 taps for 8 kHz callers and 123.6 dB with 43 for 12 kHz).
const STOPBAND_DB: f64 = 125.0;

/// The coefficients of one half-band filter at the higher rate.
#[derive(Debug)]
pub(super) struct HalfbandTable {
    /// The non-zero coefficients away from the centre (every other one), reversed and
    /// zero-padded at the start to a multiple of [`LANES`].
    taps: Vec<f32>,
    /// The centre sits `2 · centre_pairs + 1` samples (of the higher rate) in: the
    /// group delay.
    centre_pairs: usize,
}

impl HalfbandTable {
    /// A half-band filter flat to `pass` (a fraction of the higher rate, below 1/4) and
    /// rejecting from `1/2 - pass` by [`STOPBAND_DB`].
    fn design(pass: f64) -> HalfbandTable {
        let transition = 0.5 - 2.0 * pass;
        // Kaiser's estimates; the length is 4m + 3 so the centre is odd-indexed.
        let beta = 0.1102 * (STOPBAND_DB - 8.7);
        let min_len = ((STOPBAND_DB - 7.95) / (14.36 * transition)).ceil() as usize + 1;
        let len = (min_len.saturating_sub(3)).div_ceil(4) * 4 + 3;
        let centre = (len - 1) / 2;
        let half = centre as f64;
        // The taps at even indices (odd offsets from the centre).
        let even: Vec<f64> = (0..len)
            .step_by(2)
            .map(|n| {
                let x = n as f64 - half;
                0.5 * sinc(x / 2.0) * kaiser(x, half, beta)
            })
            .collect();
        // With the centre's 0.5, DC passes with gain exactly 1.
        let sum: f64 = even.iter().sum();
        let padded = even.len().next_multiple_of(LANES);
        let mut taps = vec![0.0f32; padded];
        for (slot, c) in taps[padded - even.len()..]
            .iter_mut()
            .zip(even.iter().rev())
        {
            *slot = (c * 0.5 / sum) as f32;
        }
        HalfbandTable {
            taps,
            centre_pairs: (centre - 1) / 2,
        }
    }

    /// Group delay in samples of the higher rate.
    pub(super) fn delay_higher(&self) -> f64 {
        (2 * self.centre_pairs + 1) as f64
    }

    /// Bytes of coefficients (shared, not per stage).
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        std::mem::size_of_val(self.taps.as_slice())
    }
}

static TABLES: [OnceLock<HalfbandTable>; 2] = [const { OnceLock::new() }; 2];

/// The shared half-band table next to 48 kHz for a caller rate `48 kHz / factor`: a
/// factor of 6 (8 kHz) or 4 (12 kHz); `None` for others, which need no half-band stage.
pub(super) fn table(factor: usize) -> Option<&'static HalfbandTable> {
    let slot = match factor {
        6 => 0,
        4 => 1,
        _ => return None,
    };
    // Flat up to 1.15 × the caller's Nyquist frequency.
    let pass = 1.15 / (2.0 * factor as f64);
    Some(TABLES[slot].get_or_init(|| HalfbandTable::design(pass)))
}

/// Doubles the rate: each input sample gives two outputs.
#[derive(Debug)]
pub(super) struct HalfbandUp {
    table: &'static HalfbandTable,
    /// History (`taps - 1` samples) followed by input not yet used up.
    buffer: Vec<f32>,
    filled: usize,
}

impl HalfbandUp {
    /// The table this stage reads.
    #[cfg(test)]
    pub(super) fn table(&self) -> &'static HalfbandTable {
        self.table
    }

    /// Group delay in samples of the higher rate.
    pub(super) fn delay_higher(&self) -> f64 {
        self.table.delay_higher()
    }

    /// A stage that accepts up to `max_input` samples between two [`run`](Self::run)s.
    pub(super) fn new(table: &'static HalfbandTable, max_input: usize) -> HalfbandUp {
        let mut stage = HalfbandUp {
            table,
            buffer: vec![0.0; table.taps.len() - 1 + max_input],
            filled: 0,
        };
        stage.reset();
        stage
    }

    pub(super) fn reset(&mut self) {
        let history = self.table.taps.len() - 1;
        self.buffer[..history].fill(0.0);
        self.filled = history;
    }

    /// Most outputs [`run`](Self::run) makes after `input` more samples.
    pub(super) fn max_output(input: usize) -> usize {
        2 * input
    }

    /// Room for input before the next [`run`](Self::run).
    pub(super) fn spare(&mut self) -> &mut [f32] {
        &mut self.buffer[self.filled..]
    }

    /// Takes `written` samples just written into [`spare`](Self::spare).
    pub(super) fn commit(&mut self, written: usize) {
        self.filled += written;
    }

    /// Writes two outputs per new input sample into `output`; returns how many.
    pub(super) fn run(&mut self, output: &mut [f32]) -> usize {
        let table = self.table;
        let taps = table.taps.len();
        let history = taps - 1;
        let mut newest = history;
        let mut written = 0;
        // Four even outputs at a time, one per SIMD lane (their windows start one input
        // sample apart), then the rest one by one.
        while newest + SLIDING <= self.filled && written + 2 * SLIDING <= output.len() {
            let evens = sliding_dots(
                &table.taps,
                &self.buffer[newest + 1 - taps..newest + SLIDING],
            );
            for (o, even) in evens.iter().enumerate() {
                // The zero-stuffed input carries half the energy: gain 2 on the even phase.
                output[written] = 2.0 * even;
                output[written + 1] = self.buffer[newest + o - table.centre_pairs];
                written += 2;
            }
            newest += SLIDING;
        }
        while newest < self.filled && written + 2 <= output.len() {
            let window = &self.buffer[newest + 1 - taps..=newest];
            output[written] = 2.0 * dot::<LANES>(&table.taps, window);
            output[written + 1] = self.buffer[newest - table.centre_pairs];
            written += 2;
            newest += 1;
        }
        let drop = self.filled - history;
        self.buffer.copy_within(drop..self.filled, 0);
        self.filled = history;
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

/// Halves the rate: one output per even-indexed input sample.
#[derive(Debug)]
pub(super) struct HalfbandDown {
    table: &'static HalfbandTable,
    /// Even- and odd-indexed input samples apart, so each output's products read one
    /// contiguous run; index `i` of both is the same input pair. History (`taps - 1`
    /// pairs) first.
    even: Vec<f32>,
    odd: Vec<f32>,
    filled_even: usize,
    filled_odd: usize,
}

impl HalfbandDown {
    /// The table this stage reads.
    #[cfg(test)]
    pub(super) fn table(&self) -> &'static HalfbandTable {
        self.table
    }

    /// Group delay in samples of the higher rate.
    pub(super) fn delay_higher(&self) -> f64 {
        self.table.delay_higher()
    }

    /// A stage that accepts up to `max_input` samples between two [`run`](Self::run)s.
    pub(super) fn new(table: &'static HalfbandTable, max_input: usize) -> HalfbandDown {
        let len = table.taps.len() - 1 + max_input.div_ceil(2) + 1;
        let mut stage = HalfbandDown {
            table,
            even: vec![0.0; len],
            odd: vec![0.0; len],
            filled_even: 0,
            filled_odd: 0,
        };
        stage.reset();
        stage
    }

    pub(super) fn reset(&mut self) {
        let history = self.table.taps.len() - 1;
        self.even[..history].fill(0.0);
        self.odd[..history].fill(0.0);
        self.filled_even = history;
        self.filled_odd = history;
    }

    /// Most outputs [`run`](Self::run) makes after `input` more samples.
    pub(super) fn max_output(input: usize) -> usize {
        input.div_ceil(2) + 1
    }

    /// Appends `input` (at most the stage's `max_input` since the last run).
    pub(super) fn push(&mut self, input: &[f32]) {
        let mut input = input;
        if self.filled_odd < self.filled_even
            && let Some((&first, rest)) = input.split_first()
        {
            self.odd[self.filled_odd] = first;
            self.filled_odd += 1;
            input = rest;
        }
        let pairs = input.chunks_exact(2);
        let last = pairs.remainder().first().copied();
        let start = self.filled_even;
        let count = pairs.len();
        for ((pair, even), odd) in pairs
            .zip(&mut self.even[start..start + count])
            .zip(&mut self.odd[start..start + count])
        {
            *even = pair[0];
            *odd = pair[1];
        }
        self.filled_even += count;
        self.filled_odd += count;
        if let Some(sample) = last {
            self.even[self.filled_even] = sample;
            self.filled_even += 1;
        }
    }

    /// Writes one output per even-indexed input sample into `output`; returns how many.
    pub(super) fn run(&mut self, output: &mut [f32]) -> usize {
        let table = self.table;
        let taps = table.taps.len();
        let history = taps - 1;
        let centre = table.centre_pairs + 1;
        let mut newest = history;
        let mut written = 0;
        // Four outputs at a time, one per SIMD lane (their windows start one even sample
        // apart), then the rest one by one.
        while newest + SLIDING <= self.filled_even && written + SLIDING <= output.len() {
            let sums = sliding_dots(&table.taps, &self.even[newest + 1 - taps..newest + SLIDING]);
            for (o, sum) in sums.iter().enumerate() {
                output[written + o] = sum + 0.5 * self.odd[newest + o - centre];
            }
            written += SLIDING;
            newest += SLIDING;
        }
        while newest < self.filled_even && written < output.len() {
            let window = &self.even[newest + 1 - taps..=newest];
            output[written] = dot::<LANES>(&table.taps, window) + 0.5 * self.odd[newest - centre];
            written += 1;
            newest += 1;
        }
        let drop = self.filled_even - history;
        self.even.copy_within(drop..self.filled_even, 0);
        self.odd.copy_within(drop..self.filled_odd, 0);
        self.filled_even = history;
        self.filled_odd -= drop;
        written
    }

    /// Address and length of the stage's buffers.
    #[cfg(test)]
    pub(super) fn buffer_identity(&self) -> (usize, usize) {
        (
            self.even.as_ptr() as usize,
            self.even.len() + self.odd.len(),
        )
    }

    /// Bytes this stage owns (its table is shared).
    #[cfg(test)]
    pub(super) fn owned_bytes(&self) -> usize {
        std::mem::size_of_val(self.even.as_slice()) + std::mem::size_of_val(self.odd.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Response in dB at `f` (a fraction of the higher rate) of the whole filter: the
    /// tabulated taps plus the centre.
    fn response_db(t: &HalfbandTable, f: f64) -> f64 {
        let w = std::f64::consts::TAU * f;
        let centre = t.delay_higher();
        let (mut re, mut im) = (0.5 * (w * centre).cos(), -0.5 * (w * centre).sin());
        for (i, c) in t.taps.iter().rev().enumerate() {
            let n = (2 * i) as f64;
            re += f64::from(*c) * (w * n).cos();
            im -= f64::from(*c) * (w * n).sin();
        }
        20.0 * (re * re + im * im).sqrt().log10()
    }

    #[test]
    fn both_tables_keep_the_band_and_reject_its_mirror() {
        for factor in [6usize, 4] {
            let t = table(factor).expect("table");
            let pass = 1.15 / (2.0 * factor as f64);
            let ripple = (0..=100)
                .map(|i| response_db(t, pass * f64::from(i) / 100.0).abs())
                .fold(0.0f64, f64::max);
            let stop = (0..=1000)
                .map(|i| response_db(t, 0.5 - pass + pass * f64::from(i) / 1000.0))
                .fold(f64::NEG_INFINITY, f64::max);
            eprintln!(
                "1/{factor}: {} taps, ripple {ripple:.5} dB, mirror {stop:.1} dB",
                2 * t.delay_higher() as usize + 1
            );
            assert!(ripple < 0.001, "1/{factor}: ripple {ripple}");
            assert!(stop < -115.0, "1/{factor}: mirror {stop}");
        }
        assert!(table(3).is_none());
    }
}
