//! The clock bridge of a flow: where the patchbay's clock meets the PTP media clock
//! (ARCHITECTURE §3).
//!
//! The engine runs on the host's monotonic clock; a flow's packets are due on the PTP
//! media clock. Between them sits a single-producer single-consumer ring of interleaved
//! frames (`rtrb`). The consumer drains it through a [`DriftInterpolator`] whose ratio a
//! [`FillController`] steers from the ring's fill, so a host clock running fast or slow
//! against PTP neither starves the ring nor grows it. Direction by flow kind:
//!
//! ```text
//! transmit: engine (host clock) --BridgeWriter--> ring --BridgeReader--> packets (PTP)
//! receive:  jitter buffer (PTP)  --BridgeWriter--> ring --BridgeReader--> engine (host)
//! ```
//!
//! The reader starts once the ring holds its target fill and drops anything beyond it
//! (pure latency), as a call's uplink does. It re-primes after an underrun, and drops back
//! to the target when the ring has grown far beyond it (the consumer stalled), rather than
//! bending pitch for seconds to absorb a backlog. The controller's dead band is narrower
//! than the margin, so drift is corrected before the ring runs dry; inside it the ratio
//! stays exactly nominal and the bridge passes audio through bit for bit.
//!
//! A producer that knows its rate is off (a receive flow playing a sender that is not on
//! the media clock, at that sender's pace) says so ([`BridgeWriter::set_feed_forward_ppm`]):
//! the reader applies it on top of the controller's correction from its next update, so
//! the controller only has the host's own drift left to find.
//!
//! A loaded host stalls the consumer for milliseconds at a time, and it then catches up
//! with a burst of pulls that find the ring fuller: that is lateness, not drift. So a late
//! consumer says how late it is and the fill it measures leaves that out
//! ([`BridgeReader::pull_late`]).
//!
//! Nothing here allocates after construction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use codecs::drift::DriftInterpolator;

use crate::engine::drift::FillController;

/// Fill error tolerated before the controller steers, in ms (below the default 2 ms
/// margin, see the module docs).
pub const DEAD_BAND_MS: f64 = 1.0;
/// A ring this far above its target is drained back to it at once, in ms (or the
/// bridge's margin, when that is larger: a consumer late by up to its margin is expected,
/// not a stall to drop audio for).
pub const MAX_EXCESS_MS: f64 = 30.0;
/// How often the fill controller is updated, in ms of audio (its gains assume 20 ms).
const UPDATE_EVERY_MS: usize = 20;
/// Frames per millisecond at 48 kHz.
const FRAMES_PER_MS: usize = 48;

/// Counters of one bridge, shared with the API.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Frames the producer could not write because the ring was full.
    pub overflow_frames: AtomicU64,
    /// Pulls that found too little in the ring (silence went out; the reader re-primes).
    pub underruns: AtomicU64,
    /// Times the ring was drained back to its target after growing too far.
    pub resyncs: AtomicU64,
    /// Current ratio correction in ppm, as `f64` bits.
    correction_ppm_bits: AtomicU64,
    /// The producer's known rate offset in ppm (`f64` bits, 0 = +0.0): applied on top of
    /// the controller's correction.
    feed_forward_ppm_bits: AtomicU64,
    /// Fill before the last pull, in µs.
    pub fill_us: AtomicU64,
}

impl BridgeStats {
    /// The ratio correction applied now, in ppm.
    pub fn correction_ppm(&self) -> f64 {
        f64::from_bits(self.correction_ppm_bits.load(Ordering::Relaxed))
    }

    /// The rate correction the producer asked for up front, in ppm.
    pub fn feed_forward_ppm(&self) -> f64 {
        f64::from_bits(self.feed_forward_ppm_bits.load(Ordering::Relaxed))
    }

    fn set_correction_ppm(&self, ppm: f64) {
        // `+ 0.0` turns the controller's -0.0 into 0.0 for the API.
        self.correction_ppm_bits
            .store((ppm + 0.0).to_bits(), Ordering::Relaxed);
    }
}

/// Sizes of one bridge.
#[derive(Debug, Clone, Copy)]
pub struct BridgeSettings {
    /// Interleaved channels per frame.
    pub channels: usize,
    /// Most frames one [`BridgeReader::pull`] asks for.
    pub max_pull: usize,
    /// Fill the reader starts at and keeps, in frames.
    pub target_frames: usize,
    /// Fill beyond the target at which the reader drains back to it, in frames.
    pub excess_frames: usize,
}

impl BridgeSettings {
    /// The settings for a producer writing `write_frames` at a time, a consumer pulling
    /// `pull_frames` at a time, and `margin_ms` on top for scheduling jitter.
    pub fn new(
        channels: usize,
        write_frames: usize,
        pull_frames: usize,
        margin_ms: f64,
    ) -> BridgeSettings {
        let margin = (margin_ms.max(0.0) * FRAMES_PER_MS as f64).round() as usize;
        BridgeSettings {
            channels: channels.max(1),
            max_pull: pull_frames.max(1),
            // Look-ahead of the interpolator included (a few frames).
            target_frames: write_frames + pull_frames + margin + 8,
            excess_frames: margin.max(MAX_EXCESS_MS as usize * FRAMES_PER_MS),
        }
    }

    /// Latency the bridge adds, in ms (its target fill).
    pub fn latency_ms(&self) -> f64 {
        self.target_frames as f64 / FRAMES_PER_MS as f64
    }
}

/// Room in the ring beyond the target and the excess, in ms: what a stalled consumer
/// may fall behind before the producer has to drop (and count) frames.
const HEADROOM_MS: usize = 200;

/// Builds a bridge; the ring holds the target, the excess ([`MAX_EXCESS_MS`] or the margin)
/// and 200 ms more (370 KB for 8 channels at the default margin).
pub fn bridge(settings: BridgeSettings, stats: Arc<BridgeStats>) -> (BridgeWriter, BridgeReader) {
    let ch = settings.channels;
    let capacity_frames =
        settings.target_frames + settings.excess_frames + HEADROOM_MS * FRAMES_PER_MS;
    let (producer, consumer) = rtrb::RingBuffer::new(capacity_frames * ch);
    let controller =
        FillController::new(settings.target_frames, 48_000).with_dead_band_ms(DEAD_BAND_MS);
    (
        BridgeWriter {
            ring: producer,
            channels: ch,
            stats: Arc::clone(&stats),
        },
        BridgeReader {
            ring: consumer,
            channels: ch,
            interpolator: DriftInterpolator::new(ch, settings.max_pull),
            controller,
            settings,
            started: false,
            window_frames: 0,
            window_fill_sum: 0.0,
            window_pulls: 0,
            stats,
        },
    )
}

/// The producer side.
pub struct BridgeWriter {
    ring: rtrb::Producer<f32>,
    channels: usize,
    stats: Arc<BridgeStats>,
}

impl BridgeWriter {
    /// Tells the reader that frames come `-ppm` off nominal: it reads them out with a
    /// ratio `ppm` higher (positive: more output per input, for a slow producer).
    pub fn set_feed_forward_ppm(&self, ppm: f64) {
        self.stats
            .feed_forward_ppm_bits
            .store((ppm + 0.0).to_bits(), Ordering::Relaxed);
    }

    /// Writes whole interleaved frames; what does not fit is dropped and counted.
    pub fn write(&mut self, interleaved: &[f32]) {
        let ch = self.channels;
        let frames = interleaved.len() / ch;
        let fit = (self.ring.slots() / ch).min(frames);
        if fit > 0 {
            // Cannot fail: `fit` frames of room were just measured and only this side
            // writes.
            let _ = self.ring.push_entire_slice(&interleaved[..fit * ch]);
        }
        if fit < frames {
            self.stats
                .overflow_frames
                .fetch_add((frames - fit) as u64, Ordering::Relaxed);
        }
    }
}

/// The consumer side. See the module documentation.
pub struct BridgeReader {
    ring: rtrb::Consumer<f32>,
    channels: usize,
    interpolator: DriftInterpolator,
    controller: FillController,
    settings: BridgeSettings,
    started: bool,
    window_frames: usize,
    window_fill_sum: f64,
    window_pulls: usize,
    stats: Arc<BridgeStats>,
}

impl BridgeReader {
    /// Frames queued ahead of the read position (ring plus interpolator).
    pub fn fill_frames(&self) -> f64 {
        (self.ring.slots() / self.channels) as f64 + self.interpolator.buffered()
    }

    /// The settings.
    pub fn settings(&self) -> &BridgeSettings {
        &self.settings
    }

    /// Drops everything queued beyond the target (the consumer skipped ahead).
    pub fn drop_to_target(&mut self) {
        if self.started {
            self.drop_ring_frames_beyond(self.settings.target_frames);
            self.restart_controller();
        }
    }

    /// Forgets the controller's history and measures afresh.
    fn restart_controller(&mut self) {
        self.controller.reset();
        self.window_frames = 0;
        self.window_fill_sum = 0.0;
        self.window_pulls = 0;
    }

    fn drop_ring_frames_beyond(&mut self, keep: usize) {
        let queued = self.ring.slots() / self.channels;
        let held = self.interpolator.buffered().ceil() as usize;
        self.drop_ring_frames(queued.saturating_sub(keep.saturating_sub(held)));
    }

    /// Drops the oldest `frames` in the ring (or all it has).
    fn drop_ring_frames(&mut self, frames: usize) {
        let frames = frames.min(self.ring.slots() / self.channels);
        if frames > 0
            && let Ok(chunk) = self.ring.read_chunk(frames * self.channels)
        {
            chunk.commit_all();
        }
    }

    /// Fills `out` with `out.len() / channels` interleaved frames (at most `max_pull`):
    /// audio once the bridge has started, silence before and on an underrun. For a
    /// consumer pulling on time; see [`BridgeReader::pull_late`].
    pub fn pull(&mut self, out: &mut [f32]) {
        self.pull_late(out, 0);
    }

    /// [`BridgeReader::pull`] by a consumer `late_frames` behind its schedule (a packet
    /// sent 3 ms after its due time is 144 frames late). The producer kept writing
    /// meanwhile, so the ring reads that much fuller than it would have on time: the fill
    /// fed to the drift controller leaves it out. Otherwise the catch-up burst after every
    /// stall of a loaded host would read as a clock running fast and bend the pitch.
    pub fn pull_late(&mut self, out: &mut [f32], late_frames: usize) {
        let ch = self.channels;
        let frames = (out.len() / ch).min(self.settings.max_pull);
        let out = &mut out[..frames * ch];
        let target = self.settings.target_frames;
        if !self.started {
            if self.ring.slots() / ch < target {
                out.fill(0.0);
                return;
            }
            // Start at exactly the target: anything queued beyond it is pure latency.
            self.interpolator.reset();
            self.interpolator
                .set_ratio_ppm(self.stats.feed_forward_ppm());
            self.drop_ring_frames_beyond(target);
            self.restart_controller();
            self.started = true;
        }
        let fill = self.fill_frames();
        self.stats.fill_us.store(
            (fill * 1000.0 / FRAMES_PER_MS as f64) as u64,
            Ordering::Relaxed,
        );
        if fill > (target + self.settings.excess_frames) as f64 {
            self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
            self.drop_ring_frames_beyond(target);
            self.restart_controller();
        }
        let needed = self.interpolator.input_needed(frames);
        let queued = self.ring.slots() / ch;
        if queued < needed {
            out.fill(0.0);
            self.stats.underruns.fetch_add(1, Ordering::Relaxed);
            self.started = false;
            return;
        }
        if needed > 0
            && let Ok(chunk) = self.ring.read_chunk(needed * ch)
        {
            let (first, second) = chunk.as_slices();
            self.interpolator.push(first);
            self.interpolator.push(second);
            chunk.commit_all();
        }
        let written = self.interpolator.pull(out);
        // `needed` guarantees every frame; zero the rest should rounding ever leave one.
        out[written * ch..].fill(0.0);

        self.window_fill_sum += (fill - late_frames as f64).max(0.0);
        self.window_pulls += 1;
        self.window_frames += frames;
        if self.window_frames >= UPDATE_EVERY_MS * FRAMES_PER_MS {
            let window_fill = self.window_fill_sum / self.window_pulls as f64;
            let elapsed_s = self.window_frames as f64 / 48_000.0;
            let ppm = self
                .controller
                .update(window_fill.round() as usize, elapsed_s)
                + self.stats.feed_forward_ppm();
            self.interpolator.set_ratio_ppm(ppm);
            self.stats.set_correction_ppm(ppm);
            self.window_frames = 0;
            self.window_fill_sum = 0.0;
            self.window_pulls = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codecs::measure::fit_sine;
    use codecs::rate::SampleRate;

    /// A producer writing 48-frame blocks on one clock and a consumer pulling 48 frames
    /// on another, `ppm` faster, for `seconds`; a 1 kHz tone on channel 0, its negation
    /// on channel 1. Returns the stats and the consumer's last second of channel 0.
    fn run(ppm: f64, seconds: f64) -> (Arc<BridgeStats>, Vec<f32>, (f64, f64)) {
        let stats = Arc::new(BridgeStats::default());
        let settings = BridgeSettings::new(2, 48, 48, 2.0);
        let (mut writer, mut reader) = bridge(settings, Arc::clone(&stats));
        let producer_period = 1e-3;
        let consumer_period = 1e-3 / (1.0 + ppm * 1e-6);
        let (mut t_producer, mut t_consumer) = (0.0, 0.37e-3);
        let mut n = 0u64;
        let mut block = [0.0f32; 96];
        let mut out = [0.0f32; 96];
        let mut tail = Vec::new();
        let mut fill_range = (f64::MAX, f64::MIN);
        let end = seconds;
        while t_consumer < end {
            if t_producer <= t_consumer {
                for frame in block.chunks_exact_mut(2) {
                    let v = (0.5
                        * (2.0 * std::f64::consts::PI * 1000.0 * n as f64 / 48_000.0).sin())
                        as f32;
                    frame.copy_from_slice(&[v, -v]);
                    n += 1;
                }
                writer.write(&block);
                t_producer += producer_period;
            } else {
                reader.pull(&mut out);
                for frame in out.chunks_exact(2) {
                    assert_eq!(frame[0], -frame[1]);
                }
                if t_consumer > end - 1.0 {
                    tail.extend(out.chunks_exact(2).map(|f| f[0]));
                }
                if t_consumer > 60.0 {
                    let f = reader.fill_frames() / 48.0;
                    fill_range = (fill_range.0.min(f), fill_range.1.max(f));
                }
                t_consumer += consumer_period;
            }
        }
        (stats, tail, fill_range)
    }

    #[test]
    fn agreeing_clocks_pass_audio_bit_for_bit() {
        let stats = Arc::new(BridgeStats::default());
        let settings = BridgeSettings::new(1, 48, 48, 2.0);
        let (mut writer, mut reader) = bridge(settings, Arc::clone(&stats));
        let input: Vec<f32> = (0..48 * 400).map(|k| (k as f32 * 0.01).sin()).collect();
        let mut got = Vec::new();
        let mut out = [0.0f32; 48];
        for block in input.chunks_exact(48) {
            writer.write(block);
            reader.pull(&mut out);
            got.extend_from_slice(&out);
        }
        // Silence until the target fill was reached, then the input unchanged.
        let lead = got.iter().position(|&v| v != 0.0).unwrap();
        assert!(
            lead <= settings.target_frames + 48,
            "started after {lead} frames"
        );
        let start = input.iter().position(|&v| v == got[lead]).unwrap();
        assert_eq!(&got[lead..], &input[start..start + got.len() - lead]);
        assert_eq!(stats.underruns.load(Ordering::Relaxed), 0);
        assert_eq!(stats.correction_ppm(), 0.0);
    }

    #[test]
    fn a_drifting_clock_is_absorbed_for_ten_minutes() {
        for ppm in [200.0, -200.0] {
            let (stats, tail, (lo, hi)) = run(ppm, 600.0);
            assert_eq!(stats.underruns.load(Ordering::Relaxed), 0, "{ppm}");
            assert_eq!(stats.overflow_frames.load(Ordering::Relaxed), 0, "{ppm}");
            assert_eq!(stats.resyncs.load(Ordering::Relaxed), 0, "{ppm}");
            // The consumer's clock is `ppm` faster: it takes more output per input.
            assert!(
                (stats.correction_ppm() - ppm).abs() < 20.0,
                "{ppm}: correction {}",
                stats.correction_ppm()
            );
            // Bounded latency: the fill stays around the 4.2 ms target (3.2 ms after a
            // pull), within the dead band.
            assert!(lo > 1.0 && hi < 5.5, "{ppm}: fill {lo:.2}..{hi:.2} ms");
            let fit = fit_sine(&tail, SampleRate::HZ_48000).unwrap();
            let expected = 1000.0 / (1.0 + ppm * 1e-6);
            assert!(
                (fit.frequency_hz - expected).abs() < 0.05,
                "{ppm}: {} Hz",
                fit.frequency_hz
            );
            assert!(fit.snr_db > 100.0, "{ppm}: SNR {:.1} dB", fit.snr_db);
        }
    }

    #[test]
    fn underrun_reprimes_and_backlog_is_dropped() {
        let stats = Arc::new(BridgeStats::default());
        let settings = BridgeSettings::new(1, 48, 48, 2.0);
        let (mut writer, mut reader) = bridge(settings, Arc::clone(&stats));
        let block = [0.5f32; 48];
        let mut out = [0.0f32; 48];
        for _ in 0..10 {
            writer.write(&block);
            reader.pull(&mut out);
        }
        assert_eq!(out, [0.5; 48]);
        // The producer stalls: the ring drains, an underrun gives silence and re-primes.
        for _ in 0..10 {
            reader.pull(&mut out);
        }
        assert_eq!(out, [0.0; 48]);
        assert_eq!(stats.underruns.load(Ordering::Relaxed), 1);
        // It comes back with a 100 ms burst: playback restarts at the target fill.
        for _ in 0..100 {
            writer.write(&block);
        }
        reader.pull(&mut out);
        assert_eq!(out, [0.5; 48]);
        let fill = reader.fill_frames();
        assert!(
            (fill - settings.target_frames as f64 + 48.0).abs() < 8.0,
            "fill {fill} vs target {}",
            settings.target_frames
        );
        // The consumer stalls for 100 ms: the backlog beyond 30 ms is dropped at once.
        for _ in 0..100 {
            writer.write(&block);
        }
        reader.pull(&mut out);
        assert_eq!(stats.resyncs.load(Ordering::Relaxed), 1);
        assert!(reader.fill_frames() < settings.target_frames as f64);
        assert_eq!(stats.overflow_frames.load(Ordering::Relaxed), 0);
    }

    /// With a margin for a host that stalls for tens of milliseconds (100 ms), a producer
    /// stalled 80 ms leaves no gap and a consumer stalled 80 ms is caught up, not drained
    /// back: the stream plays on without a gap or a jump.
    #[test]
    fn a_large_margin_rides_through_stalls_of_either_side() {
        let stats = Arc::new(BridgeStats::default());
        let settings = BridgeSettings::new(1, 48, 48, 100.0);
        assert_eq!(settings.excess_frames, 100 * 48);
        let (mut writer, mut reader) = bridge(settings, Arc::clone(&stats));
        let mut next = 0u32;
        let mut write_block = |writer: &mut BridgeWriter| {
            let block: Vec<f32> = (next..next + 48).map(|k| k as f32).collect();
            writer.write(&block);
            next += 48;
        };
        let mut got = Vec::new();
        let mut out = [0.0f32; 48];
        for ms in 0..2_000u32 {
            let producer_stalled = (500..580).contains(&ms);
            let consumer_stalled = (1_200..1_280).contains(&ms);
            if producer_stalled {
                if ms == 579 {
                    // The producer wakes up and writes the 80 blocks it owes.
                    for _ in 0..80 {
                        write_block(&mut writer);
                    }
                }
            } else {
                write_block(&mut writer);
            }
            if consumer_stalled {
                continue;
            }
            if ms == 1_280 {
                // The consumer catches up with the 80 pulls it owes, each saying how late.
                for owed in (1..=80).rev() {
                    reader.pull_late(&mut out, owed * 48);
                    got.extend_from_slice(&out);
                }
            }
            reader.pull(&mut out);
            got.extend_from_slice(&out);
        }
        assert_eq!(stats.underruns.load(Ordering::Relaxed), 0);
        assert_eq!(stats.resyncs.load(Ordering::Relaxed), 0);
        assert_eq!(stats.overflow_frames.load(Ordering::Relaxed), 0);
        // The ramp goes on without a gap or a jump: steps of 1 within 5 % (the controller
        // bends the ratio a little while the fill is off its target, and f32 resolves a
        // ramp near 40 000 to 0.004).
        let lead = got.iter().position(|&v| v != 0.0).unwrap();
        for (pair, k) in got[lead..].windows(2).zip(lead..) {
            let step = pair[1] - pair[0];
            assert!((step - 1.0).abs() < 0.05, "step {step} at output frame {k}");
        }
        // The same consumer stall with the default margin drains the backlog at once.
        let stats = Arc::new(BridgeStats::default());
        let (mut writer, mut reader) =
            bridge(BridgeSettings::new(1, 48, 48, 2.0), Arc::clone(&stats));
        for _ in 0..20 {
            writer.write(&[0.5; 48]);
            reader.pull(&mut out);
        }
        for _ in 0..80 {
            writer.write(&[0.5; 48]);
        }
        reader.pull(&mut out);
        assert_eq!(stats.resyncs.load(Ordering::Relaxed), 1);
    }

    /// A consumer that stalls (its thread descheduled for 15 ms, as on a loaded host) and
    /// then catches up with a burst of pulls, right after starting and twice a second
    /// after that: the bursts' readings must not move the ratio, so the audio passes bit
    /// for bit, without a gap.
    #[test]
    fn consumer_stalls_and_catch_up_bursts_leave_the_ratio_nominal() {
        let stats = Arc::new(BridgeStats::default());
        // A 125 µs flow: 6 frames a pull, 8 pulls per 1 ms engine block.
        let settings = BridgeSettings::new(1, 48, 6, 2.0);
        let (mut writer, mut reader) = bridge(settings, Arc::clone(&stats));
        let mut next = 0u32;
        let mut got = Vec::new();
        let mut out = [0.0f32; 6];
        let mut missed = 0;
        let mut started_at = None;
        for tick in 0..8 * 5_000u32 {
            if tick % 8 == 0 {
                let block: Vec<f32> = (next..next + 48).map(|k| k as f32).collect();
                writer.write(&block);
                next += 48;
            }
            // 15 ms stalls, 5 ms after the start (inside the controller's first
            // measurement) and every 500 ms after that.
            let stalled = started_at.is_some_and(|start| (tick - start) % 4_000 >= 40)
                && started_at.is_some_and(|start| (tick - start) % 4_000 < 160);
            if stalled {
                missed += 1;
                continue;
            }
            // The catch-up burst: pull `j` is `missed - j` pulls late.
            for j in 0..=missed {
                reader.pull_late(&mut out, (missed - j) * 6);
                got.extend_from_slice(&out);
            }
            missed = 0;
            if started_at.is_none() && out.iter().any(|&v| v != 0.0) {
                started_at = Some(tick);
            }
        }
        assert_eq!(stats.underruns.load(Ordering::Relaxed), 0);
        assert_eq!(stats.resyncs.load(Ordering::Relaxed), 0);
        assert_eq!(stats.correction_ppm(), 0.0);
        let lead = got.iter().position(|&v| v != 0.0).unwrap();
        for (pair, k) in got[lead..].windows(2).zip(lead..) {
            assert_eq!(pair[1], pair[0] + 1.0, "discontinuity at output frame {k}");
        }
    }
}
