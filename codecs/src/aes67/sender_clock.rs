//! The clock of a sender that is not on our media clock (`first_packet` alignment),
//! estimated from when its packets arrive.
//!
//! A sender that is not PTP-locked (ffmpeg, GStreamer, most boxes without PTP) stamps its
//! packets on its own crystal, some hundreds of ppm off ours. Played out on our clock, its
//! stream would drift through the jitter buffer: a slow sender drains it into late
//! packets, a fast one grows the latency until a resync. So the buffer is read on the
//! sender's clock as seen from here, `s(t)`: a line through the arrivals that were least
//! delayed.
//!
//! Each packet gives `e = m − t`: its first frame's media time (in the anchored sender
//! timeline) minus our clock at arrival. Network delay only ever lowers `e`, so the
//! largest `e` of each 250 ms window is the least-delayed arrival, and those window maxima
//! lie on a line whose slope is the sender's rate error. A least-squares fit over the
//! last 8 s of window maxima gives the rate; `s(t)` runs at that rate, plus a slow phase
//! term (2 s time constant) that holds the sender's least-delayed packets where the first
//! window put them, so the latency stays at its target and does not wander with
//! estimation error. `s` is continuous: every update re-bases it at the current time.
//!
//! All times are media-clock frames (48 kHz); nothing here reads a clock or allocates.

/// Local frames per estimation window (250 ms).
const WINDOW_FRAMES: u64 = 12_000;
/// Window maxima kept for the fit (8 s).
const HISTORY: usize = 32;
/// Window maxima needed before the rate is trusted.
const MIN_WINDOWS: usize = 3;
/// Time constant of the phase correction, in frames (2 s).
const PHASE_FRAMES: f64 = 96_000.0;
/// Largest sender rate error followed, in ppm (the tested range is ±2000).
pub const MAX_SENDER_PPM: f64 = 3_000.0;
/// Largest extra rate the phase correction adds, in ppm.
const MAX_PHASE_PPM: f64 = 1_000.0;

/// The estimated clock of one sender. See the module documentation.
#[derive(Debug, Clone)]
pub struct SenderClock {
    /// `s(t) = base_s + ratio × (t − base_t)`.
    base_t: u64,
    base_s: f64,
    ratio: f64,
    /// The rate error measured by the fit (without the phase term), in ppm.
    measured_ppm: f64,
    /// The current window: its start and its largest `e` with that packet's arrival.
    window_start: Option<u64>,
    window_max: Option<(u64, i64)>,
    /// Window maxima `(t, e)`, a ring of HISTORY entries.
    history: [(u64, i64); HISTORY],
    len: usize,
    head: usize,
    /// `e` of the first window since the (re)anchor: where the least-delayed packets
    /// belong.
    reference: Option<i64>,
}

impl Default for SenderClock {
    fn default() -> Self {
        SenderClock::new()
    }
}

impl SenderClock {
    /// A clock equal to ours (`s(t) = t`) until packets say otherwise.
    pub const fn new() -> SenderClock {
        SenderClock {
            base_t: 0,
            base_s: 0.0,
            ratio: 1.0,
            measured_ppm: 0.0,
            window_start: None,
            window_max: None,
            history: [(0, 0); HISTORY],
            len: 0,
            head: 0,
            reference: None,
        }
    }

    /// The sender's media time at our media time `t`.
    pub fn sender_time(&self, t: u64) -> u64 {
        let dt = t.wrapping_sub(self.base_t) as i64 as f64;
        let s = self.base_s + self.ratio * dt;
        if s <= 0.0 { 0 } else { s as u64 }
    }

    /// The rate `s` runs at now against ours, in ppm above nominal.
    pub fn ratio_ppm(&self) -> f64 {
        (self.ratio - 1.0) * 1e6
    }

    /// The sender's measured rate error, in ppm (0 until locked).
    pub fn measured_ppm(&self) -> f64 {
        self.measured_ppm
    }

    /// Whether enough windows were seen to follow the sender's rate.
    pub fn locked(&self) -> bool {
        self.len >= MIN_WINDOWS
    }

    /// Forgets the measurements (the sender's timeline was re-anchored) but keeps the
    /// rate, and `s` stays continuous.
    pub fn restart(&mut self, t: u64) {
        self.rebase(t);
        self.window_start = None;
        self.window_max = None;
        self.len = 0;
        self.head = 0;
        self.reference = None;
    }

    fn rebase(&mut self, t: u64) {
        let dt = t.wrapping_sub(self.base_t) as i64 as f64;
        self.base_s += self.ratio * dt;
        self.base_t = t;
    }

    /// A packet whose first frame has sender media time `m` (mod 2^32, in the anchored
    /// timeline) arrived at our media time `t`.
    pub fn observe(&mut self, t: u64, m: u32) {
        let s_now = self.sender_time(t);
        // The packet's media time unwrapped next to s(t) (within ±2^31 frames).
        // Wrapping: any u64 is a valid (if absurd) time from the network's point of view.
        let m_full = (s_now as i64).wrapping_add(i64::from(m.wrapping_sub(s_now as u32) as i32));
        let e = m_full.wrapping_sub(t as i64);
        let start = *self.window_start.get_or_insert(t);
        if t.saturating_sub(start) >= WINDOW_FRAMES {
            if let Some(point) = self.window_max.take() {
                self.push_point(point);
                self.update(t);
            }
            self.window_start = Some(t);
        }
        match self.window_max {
            Some((_, best)) if best >= e => {}
            _ => self.window_max = Some((t, e)),
        }
    }

    fn push_point(&mut self, point: (u64, i64)) {
        if self.reference.is_none() {
            self.reference = Some(point.1);
        }
        self.history[self.head] = point;
        self.head = (self.head + 1) % HISTORY;
        self.len = (self.len + 1).min(HISTORY);
    }

    /// Fits the window maxima and steers `s` from time `t` on.
    fn update(&mut self, t: u64) {
        if self.len < MIN_WINDOWS {
            return;
        }
        let Some(reference) = self.reference else {
            return;
        };
        let points = &self.history[..self.len];
        // Relative to the newest point, so the sums stay small.
        let (t0, e0) = self.history[(self.head + HISTORY - 1) % HISTORY];
        let n = self.len as f64;
        let (mut sx, mut sy) = (0.0, 0.0);
        let dx = |pt: u64| pt.wrapping_sub(t0) as i64 as f64;
        for &(pt, pe) in points {
            sx += dx(pt);
            sy += pe.wrapping_sub(e0) as f64;
        }
        let (mx, my) = (sx / n, sy / n);
        let (mut sxx, mut sxy) = (0.0, 0.0);
        for &(pt, pe) in points {
            let x = dx(pt) - mx;
            let y = pe.wrapping_sub(e0) as f64 - my;
            sxx += x * x;
            sxy += x * y;
        }
        if sxx <= 0.0 {
            return;
        }
        let slope = (sxy / sxx).clamp(-MAX_SENDER_PPM * 1e-6, MAX_SENDER_PPM * 1e-6);
        self.measured_ppm = slope * 1e6;
        // Where the least-delayed packets are now (on the fitted line), against where
        // s(t) puts them.
        let fitted_e = e0 as f64 + my + slope * (dx(t) - mx);
        self.rebase(t);
        let offset_now = self.base_s - t as f64;
        let phase_error = fitted_e - reference as f64 - offset_now;
        let phase = (phase_error / PHASE_FRAMES).clamp(-MAX_PHASE_PPM * 1e-6, MAX_PHASE_PPM * 1e-6);
        self.ratio = 1.0 + slope + phase;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender `ppm` off ours sending 1 ms packets; packet k is stamped 48k and arrives
    /// at our time `t0 + 48k / (1 + ppm) + delay(k)`.
    fn arrival(t0: u64, k: u64, ppm: f64, delay: u64) -> u64 {
        t0 + (48.0 * k as f64 / (1.0 + ppm * 1e-6)) as u64 + delay
    }

    #[test]
    fn follows_a_drifting_sender_and_holds_its_phase() {
        for ppm in [-2000.0, -200.0, 0.0, 200.0, 2000.0] {
            let t0 = 5_000_000u64;
            let mut clock = SenderClock::new();
            let mut worst_after_lock = 0i64;
            for k in 0..600_000u64 {
                // Jitter: up to 3 ms, in a repeating pattern; every 7th packet on time.
                let delay = if k % 7 == 0 { 10 } else { 10 + (k * 37) % 144 };
                let t = arrival(t0, k, ppm, delay);
                let m = (t0 + 48 * k) as u32;
                clock.observe(t, m);
                if k > 3_000 {
                    // How far the sender's least-delayed packets sit from s(t).
                    if k % 7 == 0 {
                        let lead = i64::from(m.wrapping_sub(clock.sender_time(t) as u32) as i32);
                        worst_after_lock = worst_after_lock.max(lead.abs());
                    }
                }
            }
            assert!(clock.locked());
            assert!(
                (clock.measured_ppm() - ppm).abs() < 5.0,
                "{ppm}: measured {}",
                clock.measured_ppm()
            );
            assert!(
                worst_after_lock < 48,
                "{ppm}: phase off by {worst_after_lock} frames"
            );
        }
    }
}
