//! Clock-drift steering: a slow PI loop on a ring buffer's fill level (ARCHITECTURE §3).
//!
//! A call's uplink ring is filled on Asterisk's clock and drained on the gateway's. If
//! Asterisk runs 1000 ppm fast the ring gains 48 samples a second; the controller answers
//! by asking the resampler for slightly fewer output samples per input sample (a negative
//! ratio correction) until the fill is back on target. The same controller steers the
//! downlink, where the roles are mirrored.
//!
//! The loop treats the ring as a pure integrator: `d(fill_ms)/dt = -ppm / 1000` (ms per
//! second). With proportional gain `KP` (ppm per ms of error) and integral gain `KI`
//! (ppm per ms·s) the closed loop is `e'' + KP/1000·e' + KI/1000·e = 0`; the constants
//! below make it critically damped with a time constant of about 7 s, slow enough that
//! the ratio changes are inaudible and fast enough to absorb a ±1000 ppm clock within a
//! minute while the fill stays within a few milliseconds of its target.
//!
//! Inside a dead band around the target (a few milliseconds, wider than arrival jitter)
//! the controller only lets its integrator decay slowly towards zero: when the two clocks
//! agree, the ratio settles at nominal and a steady tone comes out phase-stable, with no
//! wow from chasing measurement noise. Only a real drift pushes the fill out of the
//! band, and the loop then settles with the fill just at its edge.
//!
//! Time is a parameter: callers pass the audio duration that elapsed since the last
//! update (derived from the samples they moved), never a clock reading.

/// Proportional gain in ppm per millisecond of fill error.
const KP_PPM_PER_MS: f64 = 300.0;
/// Integral gain in ppm per millisecond-second of fill error (critical damping for KP).
const KI_PPM_PER_MS_S: f64 = 22.5;
/// Smoothing of the measured fill (per update; updates come once per frame, ~20 ms, so
/// this averages over about a second of frames).
const FILL_SMOOTHING: f64 = 0.05;
/// Errors smaller than this (in ms) are treated as zero.
pub const DEAD_BAND_MS: f64 = 3.0;
/// Inside the dead band a small integrator (below [`LEAK_BELOW_PPM`]) decays towards zero
/// with this time constant, so a residue left over from a start-up transient does not
/// keep the ratio off nominal forever. A large one is a real clock difference and holds.
const INTEGRATOR_LEAK_S: f64 = 30.0;
/// Integrator corrections smaller than this (ppm) count as start-up residue.
const LEAK_BELOW_PPM: f64 = 20.0;
/// The correction never exceeds this, whatever the error (a broken peer cannot make us
/// warp audio by more than half a percent).
pub const MAX_CORRECTION_PPM: f64 = 5_000.0;

/// PI controller turning a ring's fill level into a resampling ratio correction.
#[derive(Debug, Clone)]
pub struct FillController {
    /// The fill the controller was asked to keep.
    nominal_target_ms: f64,
    /// The fill it keeps now: the nominal one, or higher if the stream (re)started with
    /// more queued (see [`FillController::update`]).
    target_ms: f64,
    samples_per_ms: f64,
    smoothed_error_ms: Option<f64>,
    integral_ms_s: f64,
    correction_ppm: f64,
    dead_band_ms: f64,
}

impl FillController {
    /// A controller keeping the fill at `target_samples`, for a ring running at
    /// `rate_hz` samples per second.
    pub fn new(target_samples: usize, rate_hz: u32) -> FillController {
        let samples_per_ms = f64::from(rate_hz) / 1000.0;
        FillController {
            nominal_target_ms: target_samples as f64 / samples_per_ms,
            target_ms: target_samples as f64 / samples_per_ms,
            samples_per_ms,
            smoothed_error_ms: None,
            integral_ms_s: 0.0,
            correction_ppm: 0.0,
            dead_band_ms: DEAD_BAND_MS,
        }
    }

    /// The same controller with another dead band (default [`DEAD_BAND_MS`]). A ring kept
    /// only a few milliseconds deep (an AES67 flow's clock bridge) needs a band narrower
    /// than its margin, or a real drift would run it dry before the loop reacts.
    pub fn with_dead_band_ms(mut self, dead_band_ms: f64) -> FillController {
        self.dead_band_ms = dead_band_ms.max(0.0);
        self
    }

    /// Takes a fill measurement and the audio time since the previous one; returns the
    /// ratio correction in ppm. Positive means "produce more output per input", which is
    /// what a ring that runs low needs.
    ///
    /// The first measurement after a (re)start sets the target: if the stream started
    /// with more queued than the nominal target (a caller whose first frames arrived
    /// together while the call was being set up), that latency is kept rather than
    /// squeezed out, because squeezing it out means audibly raising the pitch for
    /// seconds. Only drift from then on is corrected.
    pub fn update(&mut self, fill_samples: usize, elapsed_s: f64) -> f64 {
        let fill_ms = fill_samples as f64 / self.samples_per_ms;
        if self.smoothed_error_ms.is_none() {
            self.target_ms = self.nominal_target_ms.max(fill_ms);
        }
        let error_ms = fill_ms - self.target_ms;
        let smoothed = match self.smoothed_error_ms {
            None => error_ms,
            Some(previous) => previous + FILL_SMOOTHING * (error_ms - previous),
        };
        self.smoothed_error_ms = Some(smoothed);

        let band = self.dead_band_ms;
        let outside = if smoothed > band {
            smoothed - band
        } else if smoothed < -band {
            smoothed + band
        } else {
            0.0
        };
        let limit_ms_s = MAX_CORRECTION_PPM / KI_PPM_PER_MS_S;
        if outside == 0.0 && (KI_PPM_PER_MS_S * self.integral_ms_s).abs() < LEAK_BELOW_PPM {
            self.integral_ms_s *= (1.0 - elapsed_s / INTEGRATOR_LEAK_S).max(0.0);
        }
        self.integral_ms_s =
            (self.integral_ms_s + outside * elapsed_s).clamp(-limit_ms_s, limit_ms_s);
        let correction = -(KP_PPM_PER_MS * outside + KI_PPM_PER_MS_S * self.integral_ms_s);
        self.correction_ppm = correction.clamp(-MAX_CORRECTION_PPM, MAX_CORRECTION_PPM);
        self.correction_ppm
    }

    /// The last correction returned by [`FillController::update`].
    pub fn correction_ppm(&self) -> f64 {
        self.correction_ppm
    }

    /// The fill the controller aims for, in milliseconds.
    pub fn target_ms(&self) -> f64 {
        self.target_ms
    }

    /// Forgets the history (after the stream restarts); the next update sets the target.
    pub fn reset(&mut self) {
        self.smoothed_error_ms = None;
        self.integral_ms_s = 0.0;
        self.correction_ppm = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates the ring as an integrator: a producer `drift_ppm` fast against the
    /// consumer, corrected by the controller, updated every 20 ms for `seconds`.
    /// Returns the fill error (ms) over the last minute as (min, max).
    fn simulate(drift_ppm: f64, seconds: f64) -> (f64, f64) {
        let target = 960; // 20 ms at 48 kHz
        let mut controller = FillController::new(target, 48_000);
        let mut fill_ms = 20.0;
        let dt = 0.02;
        let steps = (seconds / dt) as usize;
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for step in 0..steps {
            let correction = controller.update((fill_ms * 48.0) as usize, dt);
            // Net producer excess: its clock error plus our correction, in ms per second.
            fill_ms += (drift_ppm + correction) / 1000.0 * dt;
            if step as f64 * dt > seconds - 60.0 {
                lo = lo.min(fill_ms - 20.0);
                hi = hi.max(fill_ms - 20.0);
            }
        }
        (lo, hi)
    }

    #[test]
    fn absorbs_plus_and_minus_1000_ppm() {
        for drift in [1000.0, -1000.0, 3000.0] {
            let (lo, hi) = simulate(drift, 600.0);
            let bound = DEAD_BAND_MS + 0.5;
            assert!(
                lo > -bound && hi < bound,
                "drift {drift}: settled error {lo}..{hi} ms"
            );
            assert!(
                hi - lo < 0.5,
                "drift {drift}: still wandering {lo}..{hi} ms"
            );
        }
    }

    #[test]
    fn a_stream_that_starts_fuller_keeps_that_latency_instead_of_bending_pitch() {
        let mut controller = FillController::new(960, 48_000);
        // Started with one extra 20 ms frame queued, then steady.
        for _ in 0..500 {
            assert_eq!(controller.update(1_920, 0.02), 0.0);
        }
        // A genuine, lasting rise from there is still corrected.
        let mut correction = 0.0;
        for _ in 0..200 {
            correction = controller.update(1_920 + 48 * 10, 0.02);
        }
        assert!(correction < 0.0, "{correction}");
    }

    #[test]
    fn agreeing_clocks_leave_the_ratio_exactly_nominal() {
        let mut controller = FillController::new(960, 48_000);
        // Fill jitters by ±1.5 ms around the target, as frame arrival jitter makes it.
        for step in 0..10_000 {
            let jitter = [0.0, 1.5, -1.5, 0.7, -0.7][step % 5];
            let correction = controller.update(((20.0 + jitter) * 48.0) as usize, 0.02);
            assert_eq!(correction, 0.0);
        }
    }

    #[test]
    fn transient_error_stays_within_a_few_milliseconds() {
        let mut controller = FillController::new(960, 48_000);
        let mut fill_ms: f64 = 20.0;
        let mut worst: f64 = 0.0;
        for _ in 0..30_000 {
            let correction = controller.update((fill_ms * 48.0) as usize, 0.02);
            fill_ms += (1000.0 + correction) / 1000.0 * 0.02;
            worst = worst.max((fill_ms - 20.0).abs());
        }
        assert!(worst < 6.0, "worst transient {worst} ms");
    }

    #[test]
    fn correction_is_bounded() {
        let mut controller = FillController::new(960, 48_000);
        controller.update(960, 0.02);
        for _ in 0..1000 {
            let c = controller.update(48_000, 0.02);
            assert!(c.abs() <= MAX_CORRECTION_PPM);
        }
        assert_eq!(controller.correction_ppm(), -MAX_CORRECTION_PPM);
    }
}
