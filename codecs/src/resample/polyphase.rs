//! Fixed-ratio polyphase FIR conversion by `up / down` (small integers, e.g. 6/1 for
//! 8 → 48 kHz, 1/6 for 48 → 8 kHz, 3/2 for 32 → 48 kHz).
//!
//! Conceptually the input is zero-stuffed by `up`, low-pass filtered at the lower of the
//! two Nyquist frequencies and kept every `down`-th sample; only the products that are
//! not multiplied by a stuffed zero are computed. Output `j` sits at input time
//! `j · down / up` and uses branch `(j · down) mod up` of the prototype filter, stored
//! reversed and zero-padded at its start to a multiple of [`LANES`] so one output is one
//! [`dot`] over the newest input samples.
//!
//! The tables ([`PolyphaseTable`]) depend only on the ratio, so they are designed once per
//! process and shared by every resampler ([`table`]); a [`PolyphaseStage`] holds only its
//! input history.

use std::sync::OnceLock;

use super::fir::{LANES, dot, kaiser, sinc};

/// Largest `up` and `down` (after reducing the ratio) with a shared table: covers every
/// supported rate (8 to 192 kHz) that is a ratio of small integers to 48 kHz.
pub(super) const MAX_FACTOR: usize = 6;

/// The prototype filter of every table (the call path's [`super::Quality::Voice`]).
///
/// Chosen by measurement (the module tests of `resample.rs`): a Kaiser-windowed sinc
/// spanning 40 samples of the lower rate keeps the delay of the rubato filter it replaces
/// (2.5 ms at 8 kHz); cutoff and window shape trade the droop at 0.85 × Nyquist against
/// the rejection from 1.15 × Nyquist.
#[derive(Debug, Clone, Copy)]
struct PrototypeSpec {
    /// Filter length in samples of the lower of the two rates.
    taps_at_lower_rate: usize,
    /// -6 dB point relative to the lower Nyquist frequency.
    cutoff: f64,
    /// Kaiser window shape.
    beta: f64,
}

const VOICE: PrototypeSpec = PrototypeSpec {
    taps_at_lower_rate: 40,
    cutoff: 0.96,
    beta: 11.5,
};

/// Coefficients of one `up / down` conversion, shared by every stage with that ratio.
#[derive(Debug)]
pub(super) struct PolyphaseTable {
    up: usize,
    down: usize,
    /// Length of every branch row (a multiple of [`LANES`]).
    taps: usize,
    /// `up` rows of `taps` coefficients, newest input sample last.
    branches: Vec<f32>,
    /// Group delay in output samples.
    delay_output: f64,
}

impl PolyphaseTable {
    fn design(up: usize, down: usize, spec: PrototypeSpec) -> PolyphaseTable {
        // The prototype runs at `up` × the input rate; the lower rate is `max(up, down)`
        // times below that.
        let factor = up.max(down);
        let total = (spec.taps_at_lower_rate * factor).next_multiple_of(up);
        let branch_len = total / up;
        let taps = branch_len.next_multiple_of(LANES);
        let centre = (total - 1) as f64 / 2.0;
        // Cutoff in cycles per prototype sample.
        let cutoff = spec.cutoff / (2.0 * factor as f64);
        let prototype: Vec<f64> = (0..total)
            .map(|n| {
                let x = n as f64 - centre;
                sinc(2.0 * cutoff * x) * kaiser(x, centre, spec.beta)
            })
            .collect();
        let mut branches = vec![0.0f32; up * taps];
        for (phase, row) in branches.chunks_exact_mut(taps).enumerate() {
            let branch: Vec<f64> = prototype.iter().skip(phase).step_by(up).copied().collect();
            // Each branch on its own passes DC with gain 1, so no output phase carries a
            // different gain (which would leave images at multiples of the input rate).
            let gain: f64 = branch.iter().sum();
            for (slot, c) in row[taps - branch.len()..]
                .iter_mut()
                .zip(branch.iter().rev())
            {
                *slot = (c / gain) as f32;
            }
        }
        PolyphaseTable {
            up,
            down,
            taps,
            branches,
            // The symmetric prototype delays by `centre` prototype samples, `down` of which
            // make one output sample.
            delay_output: centre / down as f64,
        }
    }

    /// Bytes of coefficients (shared, not per stage).
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        std::mem::size_of_val(self.branches.as_slice())
    }
}

/// Tables by `(up, down)`, each designed on first use.
static TABLES: [OnceLock<PolyphaseTable>; MAX_FACTOR * MAX_FACTOR] =
    [const { OnceLock::new() }; MAX_FACTOR * MAX_FACTOR];

/// The shared table for `up / down` (reduced, both in `1..=MAX_FACTOR`), or `None` if the
/// ratio has none.
pub(super) fn table(up: usize, down: usize) -> Option<&'static PolyphaseTable> {
    if !(1..=MAX_FACTOR).contains(&up) || !(1..=MAX_FACTOR).contains(&down) {
        return None;
    }
    let slot = TABLES.get((up - 1) * MAX_FACTOR + (down - 1))?;
    Some(slot.get_or_init(|| PolyphaseTable::design(up, down, VOICE)))
}

/// One stream through a [`PolyphaseTable`]: the input history and where the next output
/// falls in it.
#[derive(Debug)]
pub(super) struct PolyphaseStage {
    table: &'static PolyphaseTable,
    /// History (`taps - 1` samples) followed by input not yet used up.
    buffer: Vec<f32>,
    /// Samples held in `buffer`.
    filled: usize,
    /// Index in `buffer` of the newest input sample the next output needs.
    newest: usize,
    /// Branch of the next output.
    phase: usize,
    /// Whole input samples and branches the position advances per output.
    advance_samples: usize,
    advance_phase: usize,
}

impl PolyphaseStage {
    /// A stage that accepts up to `max_input` samples between two [`run`](Self::run)s.
    pub(super) fn new(table: &'static PolyphaseTable, max_input: usize) -> PolyphaseStage {
        let mut stage = PolyphaseStage {
            table,
            buffer: vec![0.0; table.taps - 1 + max_input],
            filled: 0,
            newest: 0,
            phase: 0,
            advance_samples: table.down / table.up,
            advance_phase: table.down % table.up,
        };
        stage.reset();
        stage
    }

    /// Silence as history, the next input sample is the stream's first.
    pub(super) fn reset(&mut self) {
        let history = self.table.taps - 1;
        self.buffer[..history].fill(0.0);
        self.filled = history;
        self.newest = history;
        self.phase = 0;
    }

    /// The table this stage reads.
    #[cfg(test)]
    pub(super) fn table(&self) -> &'static PolyphaseTable {
        self.table
    }

    /// Group delay in output samples.
    pub(super) fn delay_output(&self) -> f64 {
        self.table.delay_output
    }

    /// Most outputs [`run`](Self::run) makes after `input` more samples.
    pub(super) fn max_output(&self, input: usize) -> usize {
        (input * self.table.up).div_ceil(self.table.down) + 1
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
        let table = self.table;
        let taps = table.taps;
        // Locals, so the loop does not store the position back on every output.
        let (mut newest, mut phase) = (self.newest, self.phase);
        let mut written = 0;
        for slot in output.iter_mut() {
            if newest >= self.filled {
                break;
            }
            let row = &table.branches[phase * taps..(phase + 1) * taps];
            let window = &self.buffer[newest + 1 - taps..=newest];
            *slot = dot::<LANES>(row, window);
            written += 1;
            newest += self.advance_samples;
            phase += self.advance_phase;
            if phase >= table.up {
                phase -= table.up;
                newest += 1;
            }
        }
        // Keep the history the next outputs reach back into.
        let history = taps - 1;
        let drop = self.filled - history;
        self.buffer.copy_within(drop..self.filled, 0);
        self.filled = history;
        self.newest = newest - drop;
        self.phase = phase;
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

    /// Response in dB of `table`'s prototype at `f` (relative to the lower Nyquist
    /// frequency), from its coefficients.
    fn response_db(t: &PolyphaseTable, f: f64) -> f64 {
        let w = std::f64::consts::PI * f / t.up.max(t.down) as f64;
        let (mut re, mut im) = (0.0, 0.0);
        for phase in 0..t.up {
            let row = &t.branches[phase * t.taps..(phase + 1) * t.taps];
            for (i, c) in row.iter().rev().enumerate() {
                let n = (phase + i * t.up) as f64;
                re += f64::from(*c) * (w * n).cos();
                im -= f64::from(*c) * (w * n).sin();
            }
        }
        20.0 * ((re * re + im * im).sqrt() / t.up as f64).log10()
    }

    #[test]
    fn every_table_meets_the_voice_response() {
        // The telephone band edge is 0.85 × Nyquist; its mirror 1.15 × Nyquist is where
        // everything that could fold into or image onto the band starts.
        for (up, down) in [
            (6, 1),
            (1, 6),
            (3, 1),
            (1, 3),
            (2, 1),
            (1, 2),
            (3, 2),
            (2, 3),
            (1, 4),
        ] {
            let t = table(up, down).expect("table");
            let factor = up.max(down) as f64;
            let droop = (0..=85)
                .map(|i| response_db(t, f64::from(i) / 100.0))
                .fold(0.0f64, |a, b| if b.abs() > a.abs() { b } else { a });
            let stop = (0..=4000)
                .map(|i| response_db(t, 1.15 + (factor - 1.15) * f64::from(i) / 4000.0))
                .fold(f64::NEG_INFINITY, f64::max);
            eprintln!("{up}/{down}: passband {droop:+.3} dB, stopband {stop:.1} dB");
            assert!(droop.abs() < 0.16, "{up}/{down}: passband {droop}");
            assert!(stop < -111.0, "{up}/{down}: stopband {stop}");
        }
    }

    #[test]
    fn tables_exist_only_for_small_ratios() {
        assert!(table(6, 1).is_some());
        assert!(table(7, 1).is_none());
        assert!(table(0, 1).is_none());
        assert!(std::ptr::eq(
            table(1, 6).expect("table"),
            table(1, 6).expect("table")
        ));
    }
}
