//! Adaptive jitter buffer for one remote jammer (both of its channels).
//!
//! rtjam's own buffer is a plain sample FIFO in arrival order (rtjam.md §10). This one is
//! sequence-indexed instead, so it can put reordered packets back in place, drop
//! duplicates, conceal a lost packet with silence of the right length, and keep the
//! playout point stable. It is fed packets (sequence, arrival time, samples) and read
//! out in blocks of any size; nothing allocates after [`JitterBuffer::new`].
//!
//! How the delay adapts:
//! * Each packet's *transit* is its arrival time minus its media time (sequence ×
//!   frames / rate). The running minimum transit (allowed to creep up at 200 ppm so a
//!   slower sender clock is followed) is the fastest path seen; a packet's *delay
//!   variation* is how much later than that it arrived.
//! * The peak variation is held for `peak_hold_us`, then released exponentially with
//!   time constant `peak_release_us`.
//! * The target playout delay is one read block + peak variation + `safety_us`.
//! * The reader measures its actual playout delay (time since the sample under the read
//!   point would have arrived on the fastest path) and steers it to the target by
//!   dropping or repeating one sample at most every `slip_interval` samples (0.4 % at
//!   the default). The same slips absorb clock drift between sender and reader.
//! * Starved (underrun): output silence, hold the read point, count one underrun, and
//!   resume once the delay reaches the target (raised meanwhile if the missing packet
//!   turned up late). Whatever the stall pushed beyond the target is skipped, so a lost
//!   packet costs exactly its own length of silence and the timeline stays put.
//! * A packet later than `max_delay_us` is not jitter we would wait for: on time in
//!   sequence it means the sender paused, so the timeline is re-anchored on it; behind
//!   the read point it is just counted late.
//! * No packet for `expiry_us` (1 s, rtjam.md §3): everything is forgotten; the next
//!   packet starts a fresh stream, so a returning jammer never plays stale audio.

use super::packet::{JamChannel, JamPacket, MAX_FRAMES, SAMPLE_RATE, decode_sample};
use crate::rate::SampleRate;

/// How fast the minimum-transit estimate may rise, as a fraction of elapsed time
/// (200 ppm covers the ±100 ppm of ordinary sound-card clocks).
const MIN_TRANSIT_RISE: f64 = 200e-6;
/// A packet behind or ahead of the newest by more than this many ring sizes is taken
/// as a restarted stream, not as jitter.
const RESYNC_RING_SPANS: i64 = 2;
/// Smoothing of the RFC 3550 §6.4.1 interarrival jitter statistic.
const RFC3550_GAIN: f64 = 1.0 / 16.0;

/// Settings of a [`JitterBuffer`]. `Default` suits rtjam streams read in 1 ms blocks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterConfig {
    /// Stream sample rate; RTJam is always 48 kHz.
    pub sample_rate: SampleRate,
    /// Packet slots in the ring (default 64: 170 ms of 128-frame packets).
    pub slots: usize,
    /// Largest packet accepted, frames per channel (default 249, [`MAX_FRAMES`]).
    pub max_frames: usize,
    /// Margin on top of read block + peak jitter (default 1000 µs).
    pub safety_us: u32,
    /// Lower bound of the target playout delay (default 0).
    pub min_delay_us: u32,
    /// Upper bound of the target playout delay; a deeper buffer is cut back at once and
    /// counted as an overrun (default 100 ms).
    pub max_delay_us: u32,
    /// How long a jitter peak holds the target up (default 2 s).
    pub peak_hold_us: u32,
    /// Time constant of the peak's exponential release after the hold (default 2 s).
    pub peak_release_us: u32,
    /// Output samples between two one-sample slips (default 240: at most 0.42 %).
    pub slip_interval: usize,
    /// Dead band around the target inside which no slip happens (default 500 µs).
    pub slip_hysteresis_us: u32,
    /// Silence after which the jammer is forgotten (default 1 s, rtjam.md §3).
    pub expiry_us: u64,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            sample_rate: SAMPLE_RATE,
            slots: 64,
            max_frames: MAX_FRAMES,
            safety_us: 1_000,
            min_delay_us: 0,
            max_delay_us: 100_000,
            peak_hold_us: 2_000_000,
            peak_release_us: 2_000_000,
            slip_interval: 240,
            slip_hysteresis_us: 500,
            expiry_us: 1_000_000,
        }
    }
}

/// A [`JitterConfig`] that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JitterConfigError {
    /// Fewer than 4 slots.
    #[error("jitter buffer needs at least 4 slots, got {slots}")]
    TooFewSlots {
        /// Requested slots.
        slots: usize,
    },
    /// `max_frames` is 0 or above 4096.
    #[error("max_frames {max_frames} outside 1..=4096")]
    FramesOutOfRange {
        /// Requested maximum.
        max_frames: usize,
    },
    /// `min_delay_us` above `max_delay_us`.
    #[error("min delay {min_us} µs above max delay {max_us} µs")]
    DelayRange {
        /// Requested minimum.
        min_us: u32,
        /// Requested maximum.
        max_us: u32,
    },
    /// `slip_interval` is 0.
    #[error("slip_interval must be at least 1")]
    ZeroSlipInterval,
    /// `peak_release_us` or `expiry_us` is 0.
    #[error("{field} must be positive")]
    ZeroTime {
        /// The offending field.
        field: &'static str,
    },
}

/// What [`JitterBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushOutcome {
    /// Queued in order.
    Queued,
    /// Queued, but it arrived after a packet with a higher sequence number.
    Reordered,
    /// Started a new stream (first packet, after expiry, or after a resync).
    Started,
    /// Already queued or played; dropped.
    Duplicate,
    /// Its playout time has passed (it was concealed or skipped); dropped.
    Late,
    /// No audio (a header-only packet); ignored.
    NoAudio,
    /// More frames than `max_frames`; dropped.
    Oversized,
    /// The two channels had different lengths; dropped.
    ChannelMismatch,
}

/// Counters of one jitter buffer (cumulative over the buffer's life; they survive
/// resets). [`JitterStats::since`] gives the counts of one stretch, e.g. one jammer's
/// stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct JitterStats {
    /// Audio packets offered.
    pub packets: u64,
    /// Packets that arrived after a higher sequence number but in time.
    pub reordered: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Packets dropped because their playout time had passed.
    pub late: u64,
    /// Packets never received in time, concealed with silence.
    pub lost: u64,
    /// Times the reader found the buffer empty.
    pub underruns: u64,
    /// Times audio was discarded because the buffer was too deep or the ring full.
    pub overruns: u64,
    /// Samples (per channel) discarded by overruns.
    pub overrun_samples: u64,
    /// One-sample slips that dropped a sample (buffer too deep).
    pub slips_dropped: u64,
    /// One-sample slips that repeated a sample (buffer too shallow).
    pub slips_inserted: u64,
    /// Streams restarted because of a sequence jump or frame-count change.
    pub resyncs: u64,
    /// Times the jammer was forgotten after `expiry_us` of silence.
    pub expirations: u64,
    /// Times the timeline was re-anchored after a gap longer than `max_delay_us`.
    pub timeline_jumps: u64,
    /// Packets dropped for exceeding `max_frames`.
    pub oversized: u64,
}

impl JitterStats {
    /// What was counted since `earlier` (a snapshot of the same buffer).
    pub fn since(&self, earlier: &JitterStats) -> JitterStats {
        JitterStats {
            packets: self.packets.saturating_sub(earlier.packets),
            reordered: self.reordered.saturating_sub(earlier.reordered),
            duplicates: self.duplicates.saturating_sub(earlier.duplicates),
            late: self.late.saturating_sub(earlier.late),
            lost: self.lost.saturating_sub(earlier.lost),
            underruns: self.underruns.saturating_sub(earlier.underruns),
            overruns: self.overruns.saturating_sub(earlier.overruns),
            overrun_samples: self.overrun_samples.saturating_sub(earlier.overrun_samples),
            slips_dropped: self.slips_dropped.saturating_sub(earlier.slips_dropped),
            slips_inserted: self.slips_inserted.saturating_sub(earlier.slips_inserted),
            resyncs: self.resyncs.saturating_sub(earlier.resyncs),
            expirations: self.expirations.saturating_sub(earlier.expirations),
            timeline_jumps: self.timeline_jumps.saturating_sub(earlier.timeline_jumps),
            oversized: self.oversized.saturating_sub(earlier.oversized),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No stream.
    Idle,
    /// Waiting for the delay to reach target (start, or after an underrun).
    Filling,
    /// Playing out.
    Playing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Empty,
    Filled,
    Played,
    Concealed,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Unwrapped sequence number the slot currently describes.
    seq: i64,
    state: SlotState,
}

const EMPTY_SLOT: Slot = Slot {
    seq: i64::MIN,
    state: SlotState::Empty,
};

/// Adaptive, sequence-ordered jitter buffer for one remote jammer's two channels.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    slots: Vec<Slot>,
    /// Sample storage: slot `i` holds frames at `[i·max_frames, i·max_frames + frames)`.
    audio: [Vec<f32>; 2],
    phase: Phase,
    /// Frames per packet of the current stream.
    frames: usize,
    /// Wire sequence number of unwrapped sequence 0.
    anchor_raw: u32,
    /// Highest unwrapped sequence received.
    highest: i64,
    /// Packet under the read point, and the sample offset in it.
    read_seq: i64,
    read_offset: usize,
    /// Whether any received sample of this stream has been played.
    played_any: bool,
    last_arrival_us: u64,
    timing_last_us: u64,
    min_transit_us: f64,
    peak_us: f64,
    peak_hold_until_us: u64,
    peak_decayed_at_us: u64,
    jitter_us: f64,
    prev_in_order: Option<(i64, u64)>,
    /// Last packet that arrived behind the read point while starved (restart detector).
    stale: Option<i64>,
    slip_countdown: usize,
    last_out: [f32; 2],
    stats: JitterStats,
}

impl JitterBuffer {
    /// Allocates a buffer for `config.slots` packets of up to `config.max_frames`.
    pub fn new(config: JitterConfig) -> Result<JitterBuffer, JitterConfigError> {
        if config.slots < 4 {
            return Err(JitterConfigError::TooFewSlots {
                slots: config.slots,
            });
        }
        if config.max_frames == 0 || config.max_frames > 4096 {
            return Err(JitterConfigError::FramesOutOfRange {
                max_frames: config.max_frames,
            });
        }
        if config.min_delay_us > config.max_delay_us {
            return Err(JitterConfigError::DelayRange {
                min_us: config.min_delay_us,
                max_us: config.max_delay_us,
            });
        }
        if config.slip_interval == 0 {
            return Err(JitterConfigError::ZeroSlipInterval);
        }
        if config.peak_release_us == 0 {
            return Err(JitterConfigError::ZeroTime {
                field: "peak_release_us",
            });
        }
        if config.expiry_us == 0 {
            return Err(JitterConfigError::ZeroTime { field: "expiry_us" });
        }
        let samples = config.slots * config.max_frames;
        Ok(JitterBuffer {
            cfg: config,
            slots: vec![EMPTY_SLOT; config.slots],
            audio: [vec![0.0; samples], vec![0.0; samples]],
            phase: Phase::Idle,
            frames: 0,
            anchor_raw: 0,
            highest: 0,
            read_seq: 0,
            read_offset: 0,
            played_any: false,
            last_arrival_us: 0,
            timing_last_us: 0,
            min_transit_us: 0.0,
            peak_us: 0.0,
            peak_hold_until_us: 0,
            peak_decayed_at_us: 0,
            jitter_us: 0.0,
            prev_in_order: None,
            stale: None,
            slip_countdown: 0,
            last_out: [0.0; 2],
            stats: JitterStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &JitterConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> &JitterStats {
        &self.stats
    }

    /// True while a stream is known (from its first packet until it expires).
    pub fn is_active(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// True if the buffer holds no stream or its last packet is `expiry_us` old at `now_us`.
    pub fn is_expired(&self, now_us: u64) -> bool {
        self.phase == Phase::Idle
            || now_us.saturating_sub(self.last_arrival_us) >= self.cfg.expiry_us
    }

    /// Arrival time of the most recent packet (0 before the first).
    pub fn last_arrival_us(&self) -> u64 {
        self.last_arrival_us
    }

    /// Frames per packet of the current stream, if any.
    pub fn frames_per_packet(&self) -> Option<usize> {
        (self.phase != Phase::Idle).then_some(self.frames)
    }

    /// Samples (per channel) queued from the read point to the end of the newest packet,
    /// holes included: rtjam's "depth" statistic.
    pub fn depth_samples(&self) -> usize {
        if self.phase == Phase::Idle || self.read_seq > self.highest {
            return 0;
        }
        let packets = usize::try_from(self.highest - self.read_seq + 1).unwrap_or(0);
        (packets * self.frames).saturating_sub(self.read_offset)
    }

    /// RFC 3550 §6.4.1 interarrival jitter estimate, µs.
    pub fn jitter_us(&self) -> f64 {
        self.jitter_us
    }

    /// Held/released peak delay variation that drives the target, µs.
    pub fn peak_jitter_us(&self) -> f64 {
        self.peak_us
    }

    /// Target playout delay for reads of `block` samples, µs.
    pub fn target_delay_us(&self, block: usize) -> f64 {
        self.media_us(self.target_samples(block))
    }

    /// Current playout delay at `now_us`, µs: how long after its fastest-path arrival the
    /// sample under the read point is being played. `None` without a stream.
    pub fn playout_delay_us(&self, now_us: u64) -> Option<f64> {
        (self.phase != Phase::Idle).then(|| self.media_us(self.delay_samples(now_us)))
    }

    /// Forgets the stream (counters are kept).
    pub fn reset(&mut self) {
        self.phase = Phase::Idle;
        self.slots.fill(EMPTY_SLOT);
        self.peak_us = 0.0;
        self.jitter_us = 0.0;
        self.last_out = [0.0; 2];
    }

    /// Offers one packet's samples (both channels, same length) with its wire sequence
    /// number and arrival time (µs, the same clock as [`pull`](Self::pull)'s `now_us`).
    pub fn push(
        &mut self,
        arrival_us: u64,
        sequence: u32,
        ch1: &[f32],
        ch2: &[f32],
    ) -> PushOutcome {
        if ch1.len() != ch2.len() {
            return PushOutcome::ChannelMismatch;
        }
        self.push_with(arrival_us, sequence, ch1.len(), |d1, d2| {
            d1.copy_from_slice(ch1);
            d2.copy_from_slice(ch2);
        })
    }

    /// Offers a received jam packet, decoding its samples straight into the ring.
    pub fn push_packet(&mut self, arrival_us: u64, packet: &JamPacket<'_>) -> PushOutcome {
        self.push_with(
            arrival_us,
            packet.header().sequence,
            packet.frames(),
            |d1, d2| {
                for (d, w) in d1.iter_mut().zip(packet.words(JamChannel::Ch1)) {
                    *d = decode_sample(w);
                }
                for (d, w) in d2.iter_mut().zip(packet.words(JamChannel::Ch2)) {
                    *d = decode_sample(w);
                }
            },
        )
    }

    fn push_with(
        &mut self,
        arrival_us: u64,
        sequence: u32,
        frames: usize,
        fill: impl FnOnce(&mut [f32], &mut [f32]),
    ) -> PushOutcome {
        if frames == 0 {
            return PushOutcome::NoAudio;
        }
        if frames > self.cfg.max_frames {
            self.stats.oversized += 1;
            return PushOutcome::Oversized;
        }
        self.stats.packets += 1;
        if self.phase == Phase::Idle {
            self.start(arrival_us, sequence, frames, false, fill);
            return PushOutcome::Started;
        }
        if arrival_us.saturating_sub(self.last_arrival_us) >= self.cfg.expiry_us {
            self.stats.expirations += 1;
            self.start(arrival_us, sequence, frames, false, fill);
            return PushOutcome::Started;
        }
        if frames != self.frames {
            self.stats.resyncs += 1;
            self.start(arrival_us, sequence, frames, true, fill);
            return PushOutcome::Started;
        }
        self.last_arrival_us = self.last_arrival_us.max(arrival_us);

        let u = self.unwrap_seq(sequence);
        let span = RESYNC_RING_SPANS * self.ring_len();
        if (u - self.highest).abs() > span {
            self.stats.resyncs += 1;
            self.start(arrival_us, sequence, frames, true, fill);
            return PushOutcome::Started;
        }
        let idx = self.slot_index(u);
        let slot = self.slots[idx];
        let behind = u < self.read_seq || (slot.seq == u && slot.state == SlotState::Concealed);
        if behind {
            let duplicate = slot.seq == u && slot.state == SlotState::Played;
            let fits = self.read_seq - u < self.ring_len() && self.highest - u < self.ring_len();
            if !duplicate && !self.played_any && slot.state != SlotState::Concealed && fits {
                // Reordered ahead of the very first packet, before playback began:
                // start the stream from it instead.
                self.read_seq = u;
                self.read_offset = 0;
            } else {
                if self.phase == Phase::Filling && self.played_any {
                    // Starved, and fed consecutive packets from the past: the sender
                    // restarted its sequence (a quick rejoin, rtjam.md §3).
                    if self.stale == Some(u - 1) {
                        self.stats.resyncs += 1;
                        self.start(arrival_us, sequence, frames, true, fill);
                        return PushOutcome::Started;
                    }
                    self.stale = Some(u);
                }
                if duplicate {
                    self.stats.duplicates += 1;
                    return PushOutcome::Duplicate;
                }
                self.update_timing(u, arrival_us, true);
                self.stats.late += 1;
                return PushOutcome::Late;
            }
        } else if slot.seq == u && slot.state == SlotState::Filled {
            self.stats.duplicates += 1;
            return PushOutcome::Duplicate;
        }
        self.stale = None;
        self.update_timing(u, arrival_us, false);
        let outcome = if u < self.highest {
            self.stats.reordered += 1;
            PushOutcome::Reordered
        } else {
            self.highest = u;
            PushOutcome::Queued
        };
        if u - self.read_seq >= self.ring_len() {
            // Ring full (reader stalled or a burst beyond capacity): keep the newest.
            let new_read = u - self.ring_len() + 1;
            let dropped = usize::try_from(new_read - self.read_seq).unwrap_or(0) * self.frames
                - self.read_offset;
            self.stats.overruns += 1;
            self.stats.overrun_samples += dropped as u64;
            self.skip_packets_to(new_read);
        }
        self.store(u, fill);
        outcome
    }

    /// Fills `out1` and `out2` (channel 1 and 2) with the next samples at `now_us`;
    /// silence where nothing is due. Both should have the same length; any excess of the
    /// longer one is zeroed. Returns how many samples per channel came from packets.
    pub fn pull(&mut self, now_us: u64, out1: &mut [f32], out2: &mut [f32]) -> usize {
        let n = out1.len().min(out2.len());
        out1[n..].fill(0.0);
        out2[n..].fill(0.0);
        let (out1, out2) = (&mut out1[..n], &mut out2[..n]);
        if self.phase == Phase::Idle {
            out1.fill(0.0);
            out2.fill(0.0);
            return 0;
        }
        if now_us.saturating_sub(self.last_arrival_us) >= self.cfg.expiry_us {
            self.stats.expirations += 1;
            self.reset();
            out1.fill(0.0);
            out2.fill(0.0);
            return 0;
        }
        let target = self.target_samples(n);
        let mut delay = self.delay_samples(now_us);
        if self.phase == Phase::Filling {
            if delay < target || self.read_seq > self.highest {
                out1.fill(0.0);
                out2.fill(0.0);
                return 0;
            }
            // Start exactly at target: skip what the block granularity (or the stall
            // of an underrun) overshot. More than a block is stale audio: an overrun.
            let skip = ((delay - target).round().max(0.0) as usize).min(self.depth_samples());
            self.skip_samples(skip);
            if skip > n {
                self.stats.overruns += 1;
                self.stats.overrun_samples += skip as u64;
            }
            delay = self.delay_samples(now_us);
            self.phase = Phase::Playing;
        }
        let hysteresis = self.us_to_samples(f64::from(self.cfg.slip_hysteresis_us));
        if delay > self.max_target_samples(n) + hysteresis {
            // Far too deep (e.g. the fastest path got much faster): cut back at once.
            let want = (delay - target).round().max(0.0) as usize;
            let k = want.min(self.depth_samples());
            if k > 0 {
                self.skip_samples(k);
                self.stats.overruns += 1;
                self.stats.overrun_samples += k as u64;
                delay -= k as f64;
            }
        }
        let error = delay - target;
        let mut slip_drop = false;
        let mut slip_insert = false;
        if self.slip_countdown == 0 && n > 0 {
            if error > hysteresis {
                slip_drop = true;
            } else if error < -hysteresis {
                slip_insert = true;
            }
        }
        let mut real = 0;
        let mut i = 0;
        if slip_insert {
            out1[0] = self.last_out[0];
            out2[0] = self.last_out[1];
            self.stats.slips_inserted += 1;
            self.slip_countdown = self.cfg.slip_interval;
            i = 1;
        } else if slip_drop && self.next_sample().is_some() {
            self.stats.slips_dropped += 1;
            self.slip_countdown = self.cfg.slip_interval;
        }
        while i < n {
            match self.next_sample() {
                Some((a, b, from_packet)) => {
                    out1[i] = a;
                    out2[i] = b;
                    real += usize::from(from_packet);
                }
                None => {
                    self.stats.underruns += 1;
                    self.phase = Phase::Filling;
                    out1[i..].fill(0.0);
                    out2[i..].fill(0.0);
                    self.last_out = [0.0; 2];
                    break;
                }
            }
            i += 1;
        }
        if i > 0 && self.phase == Phase::Playing {
            self.last_out = [out1[i - 1], out2[i - 1]];
        }
        self.slip_countdown = self.slip_countdown.saturating_sub(n);
        real
    }

    /// Starts a new stream with this packet as unwrapped sequence 0.
    fn start(
        &mut self,
        arrival_us: u64,
        sequence: u32,
        frames: usize,
        keep_peak: bool,
        fill: impl FnOnce(&mut [f32], &mut [f32]),
    ) {
        let peak = self.peak_us;
        let jitter = self.jitter_us;
        self.reset();
        if keep_peak {
            self.peak_us = peak;
            self.jitter_us = jitter;
        }
        self.phase = Phase::Filling;
        self.frames = frames;
        self.anchor_raw = sequence;
        self.highest = 0;
        self.read_seq = 0;
        self.read_offset = 0;
        self.played_any = false;
        self.last_arrival_us = arrival_us;
        self.timing_last_us = arrival_us;
        self.min_transit_us = arrival_us as f64;
        self.peak_hold_until_us = arrival_us.saturating_add(u64::from(self.cfg.peak_hold_us));
        self.peak_decayed_at_us = self.peak_hold_until_us;
        self.prev_in_order = Some((0, arrival_us));
        self.stale = None;
        self.slip_countdown = 0;
        self.store(0, fill);
    }

    fn ring_len(&self) -> i64 {
        self.slots.len() as i64
    }

    fn slot_index(&self, u: i64) -> usize {
        // rem_euclid of a positive modulus is in 0..len.
        u.rem_euclid(self.ring_len()) as usize
    }

    /// Maps a wire sequence number to the unwrapped timeline, nearest to `highest`.
    fn unwrap_seq(&self, sequence: u32) -> i64 {
        let raw_highest = self.anchor_raw.wrapping_add(self.highest as u32);
        let delta = sequence.wrapping_sub(raw_highest) as i32;
        self.highest + i64::from(delta)
    }

    fn store(&mut self, u: i64, fill: impl FnOnce(&mut [f32], &mut [f32])) {
        let idx = self.slot_index(u);
        self.slots[idx] = Slot {
            seq: u,
            state: SlotState::Filled,
        };
        let at = idx * self.cfg.max_frames;
        let [a1, a2] = &mut self.audio;
        fill(&mut a1[at..at + self.frames], &mut a2[at..at + self.frames]);
    }

    fn update_timing(&mut self, u: i64, arrival_us: u64, late: bool) {
        let transit = arrival_us as f64 - self.media_us(u as f64 * self.frames as f64);
        let elapsed = arrival_us.saturating_sub(self.timing_last_us);
        self.timing_last_us = self.timing_last_us.max(arrival_us);
        self.min_transit_us += MIN_TRANSIT_RISE * elapsed as f64;
        if transit < self.min_transit_us {
            self.min_transit_us = transit;
        }
        let max_delay = f64::from(self.cfg.max_delay_us);
        let mut variation = transit - self.min_transit_us;
        if variation > max_delay {
            if late {
                // Later than we would ever wait (or from a restarted sender): not jitter.
                return;
            } else {
                // Longer than any jitter we would wait for: the sender paused or the
                // path changed. Re-anchor the timeline on this packet.
                self.min_transit_us = transit;
                variation = 0.0;
                self.stats.timeline_jumps += 1;
            }
        }
        if arrival_us > self.peak_decayed_at_us {
            let dt = (arrival_us - self.peak_decayed_at_us) as f64;
            self.peak_us *= (-dt / f64::from(self.cfg.peak_release_us)).exp();
            self.peak_decayed_at_us = arrival_us;
        }
        if variation >= self.peak_us {
            self.peak_us = variation;
            self.peak_hold_until_us = arrival_us.saturating_add(u64::from(self.cfg.peak_hold_us));
            self.peak_decayed_at_us = self.peak_hold_until_us;
        }
        match self.prev_in_order {
            Some((pu, pa)) if u > pu => {
                if u == pu + 1 {
                    let spacing = self.media_us(self.frames as f64);
                    let d = (arrival_us as f64 - pa as f64) - spacing;
                    self.jitter_us += (d.abs() - self.jitter_us) * RFC3550_GAIN;
                }
                self.prev_in_order = Some((u, arrival_us));
            }
            None => self.prev_in_order = Some((u, arrival_us)),
            Some(_) => {}
        }
    }

    /// Next sample under the read point, advancing it; `None` when starved.
    /// The flag says whether the sample came from a packet (false: concealment).
    fn next_sample(&mut self) -> Option<(f32, f32, bool)> {
        let idx = self.slot_index(self.read_seq);
        let slot = self.slots[idx];
        if slot.seq == self.read_seq && slot.state == SlotState::Filled {
            let at = idx * self.cfg.max_frames + self.read_offset;
            let sample = (self.audio[0][at], self.audio[1][at], true);
            self.played_any = true;
            self.read_offset += 1;
            if self.read_offset == self.frames {
                self.slots[idx].state = SlotState::Played;
                self.read_seq += 1;
                self.read_offset = 0;
            }
            Some(sample)
        } else if self.read_seq < self.highest
            || (slot.seq == self.read_seq && slot.state == SlotState::Concealed)
        {
            // A later packet is here, so this one missed its time: conceal it.
            self.mark_concealed(idx);
            self.read_offset += 1;
            if self.read_offset == self.frames {
                self.read_seq += 1;
                self.read_offset = 0;
            }
            Some((0.0, 0.0, false))
        } else {
            None
        }
    }

    /// Marks the packet under the read point as lost (once).
    fn mark_concealed(&mut self, idx: usize) {
        let slot = self.slots[idx];
        if !(slot.seq == self.read_seq && slot.state == SlotState::Concealed) {
            self.stats.lost += 1;
            self.slots[idx] = Slot {
                seq: self.read_seq,
                state: SlotState::Concealed,
            };
        }
    }

    /// Advances the read point by `k` samples without output (bounded by the depth).
    fn skip_samples(&mut self, mut k: usize) {
        while k > 0 && self.read_seq <= self.highest {
            let idx = self.slot_index(self.read_seq);
            let filled =
                self.slots[idx].seq == self.read_seq && self.slots[idx].state == SlotState::Filled;
            if !filled {
                self.mark_concealed(idx);
            }
            let rest = self.frames - self.read_offset;
            if k >= rest {
                if filled {
                    self.slots[idx].state = SlotState::Played;
                }
                self.read_seq += 1;
                self.read_offset = 0;
                k -= rest;
            } else {
                self.read_offset += k;
                k = 0;
            }
        }
    }

    /// Moves the read point forward to the start of packet `to`; packets skipped that
    /// never arrived count as lost.
    fn skip_packets_to(&mut self, to: i64) {
        let count = (to - self.read_seq).clamp(0, self.ring_len());
        for s in to - count..to {
            let idx = self.slot_index(s);
            let slot = &mut self.slots[idx];
            if slot.seq == s && slot.state == SlotState::Filled {
                slot.state = SlotState::Played;
            } else if !(slot.seq == s && slot.state == SlotState::Concealed) {
                self.stats.lost += 1;
                *slot = Slot {
                    seq: s,
                    state: SlotState::Concealed,
                };
            }
        }
        self.read_seq = to;
        self.read_offset = 0;
    }

    /// Duration of `samples` in µs.
    fn media_us(&self, samples: f64) -> f64 {
        samples * 1e6 / f64::from(self.cfg.sample_rate.hz())
    }

    fn us_to_samples(&self, us: f64) -> f64 {
        us * f64::from(self.cfg.sample_rate.hz()) / 1e6
    }

    /// Playout delay at `now_us` in samples (see [`playout_delay_us`](Self::playout_delay_us)).
    fn delay_samples(&self, now_us: u64) -> f64 {
        let read_pos = self.read_seq as f64 * self.frames as f64 + self.read_offset as f64;
        self.us_to_samples(now_us as f64 - self.min_transit_us - self.media_us(read_pos))
    }

    /// Ceiling of the target: `max_delay_us`, and what the ring can hold.
    fn max_target_samples(&self, block: usize) -> f64 {
        let ring =
            (self.slots.len().saturating_sub(2) * self.frames.max(1)).saturating_sub(block) as f64;
        self.us_to_samples(f64::from(self.cfg.max_delay_us))
            .min(ring)
    }

    fn target_samples(&self, block: usize) -> f64 {
        let wanted =
            block as f64 + self.us_to_samples(self.peak_us + f64::from(self.cfg.safety_us));
        let floor = self.us_to_samples(f64::from(self.cfg.min_delay_us));
        wanted
            .max(floor)
            .min(self.max_target_samples(block).max(floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 128;
    const BLOCK: usize = 48;
    const T0: u64 = 1_700_000_000_000_000;
    const WRAP: usize = 40_000;

    /// Sample value that encodes its stream position exactly (f32-exact, nonzero).
    fn marker(pos: usize) -> f32 {
        ((pos % WRAP) + 1) as f32 / 65_536.0
    }

    fn unmark(v: f32) -> Option<usize> {
        (v != 0.0).then(|| (v * 65_536.0) as usize - 1)
    }

    /// Arrival time of packet `k` on a perfect 2.667 ms grid.
    fn ideal_arrival(t0: u64, k: u64) -> u64 {
        t0 + k * N as u64 * 1_000_000 / 48_000
    }

    /// Packet `k` of a marker stream: ch1 = marker(position), ch2 = −ch1.
    fn packet(k: usize) -> ([f32; N], [f32; N]) {
        let mut a = [0.0; N];
        let mut b = [0.0; N];
        for i in 0..N {
            a[i] = marker(k * N + i);
            b[i] = -a[i];
        }
        (a, b)
    }

    /// Event-driven simulation on virtual time: packets (arrival µs, seq, packet index)
    /// are pushed in arrival order between 1 ms pulls of 48 samples.
    struct Sim {
        events: Vec<(u64, u32, usize)>,
        next: usize,
        now: u64,
    }

    impl Sim {
        fn new(mut events: Vec<(u64, u32, usize)>, start: u64) -> Sim {
            events.sort_by_key(|e| e.0);
            Sim {
                events,
                next: 0,
                now: start,
            }
        }

        /// Runs until `t_end`; returns channel 1 output.
        fn run(&mut self, jb: &mut JitterBuffer, t_end: u64) -> Vec<f32> {
            let mut out = Vec::new();
            let mut b1 = [0.0; BLOCK];
            let mut b2 = [0.0; BLOCK];
            while self.now < t_end {
                while self.next < self.events.len() && self.events[self.next].0 <= self.now {
                    let (t, seq, k) = self.events[self.next];
                    let (a, b) = packet(k);
                    jb.push(t, seq, &a, &b);
                    self.next += 1;
                }
                jb.pull(self.now, &mut b1, &mut b2);
                for (x, y) in b1.iter().zip(&b2) {
                    assert_eq!(*x, -*y, "channels must stay paired");
                }
                out.extend_from_slice(&b1);
                self.now += 1_000;
            }
            out
        }
    }

    /// Positions played, in output order (silence skipped).
    fn positions(out: &[f32]) -> Vec<usize> {
        out.iter().filter_map(|&v| unmark(v)).collect()
    }

    fn assert_contiguous(pos: &[usize]) {
        for w in pos.windows(2) {
            assert_eq!((w[0] + 1) % WRAP, w[1], "discontinuity at {}", w[0]);
        }
    }

    /// In order apart from one-sample slips: each step is +1, +0 (repeat) or +2 (drop).
    fn assert_in_order_with_slips(pos: &[usize], stats: &JitterStats) {
        let mut repeats = 0;
        let mut drops = 0;
        for w in pos.windows(2) {
            match (w[1] + WRAP - w[0]) % WRAP {
                1 => {}
                0 => repeats += 1,
                2 => drops += 1,
                d => panic!("jump of {d} at {}", w[0]),
            }
        }
        assert!(
            repeats <= stats.slips_inserted && drops <= stats.slips_dropped,
            "{repeats} {drops} {stats:?}"
        );
    }

    fn calm_events(t0: u64, seq0: u32, count: usize) -> Vec<(u64, u32, usize)> {
        (0..count)
            .map(|k| (ideal_arrival(t0, k as u64), seq0.wrapping_add(k as u32), k))
            .collect()
    }

    fn buffer() -> JitterBuffer {
        JitterBuffer::new(JitterConfig::default()).unwrap()
    }

    #[test]
    fn in_order_stream_plays_contiguously_at_target_delay() {
        let mut jb = buffer();
        let out = Sim::new(calm_events(T0, 0, 375), T0).run(&mut jb, T0 + 1_000_000);
        let pos = positions(&out);
        assert_contiguous(&pos);
        // Playback starts with the first sample, 2 ms (= target) after it arrived.
        assert_eq!(pos[0], 0);
        assert_eq!(out.iter().position(|&v| v != 0.0), Some(96));
        // 375 packets = 48000 samples; all but the 2 ms still buffered are played.
        assert_eq!(pos.len(), 48_000 - 96);
        let s = jb.stats();
        assert_eq!((s.lost, s.late, s.underruns, s.overruns), (0, 0, 0, 0));
        assert_eq!((s.slips_dropped, s.slips_inserted), (0, 0));
        // Target = block (1 ms) + safety (1 ms) + ~0 jitter.
        let target = jb.target_delay_us(BLOCK);
        assert!((target - 2_000.0).abs() < 10.0, "{target}");
        let delay = jb.playout_delay_us(T0 + 1_000_000).unwrap();
        assert!((delay - target).abs() < 50.0, "{delay} vs {target}");
        assert!(jb.jitter_us() < 1.0, "{}", jb.jitter_us());
    }

    #[test]
    fn reordered_packets_are_put_back_in_place() {
        let mut jb = JitterBuffer::new(JitterConfig {
            min_delay_us: 8_000,
            ..JitterConfig::default()
        })
        .unwrap();
        let mut ev = calm_events(T0, 100, 100);
        // Packet 11 overtakes packet 10 (10 arrives 1 ms after 11).
        ev[10].0 = ev[11].0 + 1_000;
        let out = Sim::new(ev, T0).run(&mut jb, T0 + 300_000);
        let pos = positions(&out);
        assert_contiguous(&pos);
        assert_eq!(pos.len(), 100 * N);
        let s = jb.stats();
        assert_eq!(s.reordered, 1);
        assert_eq!((s.lost, s.late, s.duplicates), (0, 0, 0));
        assert_eq!(s.underruns, 1, "only at the end of the stream");
    }

    #[test]
    fn reordering_beyond_the_delay_is_late_and_concealed() {
        let mut jb = buffer();
        let mut ev = calm_events(T0, 0, 100);
        // Packet 10 arrives 20 ms late: its slot was already concealed.
        ev[10].0 += 20_000;
        let out = Sim::new(ev, T0).run(&mut jb, T0 + 300_000);
        let pos = positions(&out);
        assert!(!pos.iter().any(|p| (10 * N..11 * N).contains(p)));
        let s = jb.stats();
        assert_eq!((s.late, s.lost), (1, 1));
        // The late packet raised the target: the buffer grew to cover 20 ms.
        assert!(jb.target_delay_us(BLOCK) > 20_000.0);
    }

    #[test]
    fn loss_is_concealed_with_exactly_one_packet_of_silence() {
        let mut jb = buffer();
        let mut ev = calm_events(T0, 0, 100);
        ev.remove(20);
        let out = Sim::new(ev, T0).run(&mut jb, T0 + 250_000);
        let first = out.iter().position(|&v| v != 0.0).unwrap();
        let played = &out[first..first + 90 * N];
        for (i, &v) in played.iter().enumerate() {
            if (20 * N..21 * N).contains(&i) {
                assert_eq!(v, 0.0, "lost packet must be silent at {i}");
            } else {
                assert_eq!(unmark(v), Some(i), "sample {i}");
            }
        }
        let s = jb.stats();
        assert_eq!(s.lost, 1);
        // The reader stalled once (packet 21 was not yet there to prove the loss).
        assert_eq!(s.underruns, 1);
        assert_eq!((s.late, s.slips_dropped, s.slips_inserted), (0, 0, 0));
    }

    #[test]
    fn duplicates_are_dropped_and_counted() {
        let mut jb = buffer();
        let mut ev = calm_events(T0, 0, 100);
        // A duplicate of packet 30 right behind it (still queued) ...
        ev.push((ev[30].0 + 10, 30, 30));
        // ... and one of packet 5 long after it was played.
        ev.push((ev[40].0 + 10, 5, 5));
        let out = Sim::new(ev, T0).run(&mut jb, T0 + 300_000);
        let pos = positions(&out);
        assert_contiguous(&pos);
        assert_eq!(pos.len(), 100 * N);
        assert_eq!(jb.stats().duplicates, 2);
        assert_eq!((jb.stats().late, jb.stats().lost), (0, 0));
    }

    #[test]
    fn sequence_wraps_without_a_glitch() {
        let mut jb = buffer();
        let out = Sim::new(calm_events(T0, u32::MAX - 20, 60), T0).run(&mut jb, T0 + 170_000);
        let pos = positions(&out);
        assert_contiguous(&pos);
        assert_eq!(pos.len(), 60 * N);
        let s = jb.stats();
        assert_eq!((s.lost, s.resyncs, s.late, s.reordered), (0, 0, 0, 0));
    }

    #[test]
    fn bursts_raise_the_delay_until_nothing_underruns() {
        let mut jb = buffer();
        // Packets arrive 4 at a time every 10.67 ms (each burst when its last is due).
        let ev: Vec<_> = (0..1_500)
            .map(|k| (ideal_arrival(T0, (k / 4 * 4 + 3) as u64), k as u32, k))
            .collect();
        let mut sim = Sim::new(ev, T0);
        sim.run(&mut jb, T0 + 2_000_000);
        let settled = *jb.stats();
        let out = sim.run(&mut jb, T0 + 3_900_000);
        let s = jb.stats();
        assert_eq!(
            (s.underruns, s.lost, s.late),
            (settled.underruns, settled.lost, settled.late)
        );
        let pos = positions(&out);
        assert_eq!(pos.len(), out.len(), "no silence in steady bursts");
        assert_in_order_with_slips(&pos, s);
        // Lateness of 3 packets (8 ms) drives the target to 8 ms + block + safety.
        let target = jb.target_delay_us(BLOCK);
        assert!((9_800.0..11_500.0).contains(&target), "{target}");
    }

    /// Deterministic pseudo-random generator for jitter patterns.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
    }

    #[test]
    fn delay_adapts_up_under_jitter_and_back_down_when_calm() {
        let mut jb = buffer();
        let mut rng = Lcg(7);
        let per_s = 375;
        // 2 s calm, 4 s with 0..6 ms random extra delay (reordering included), 12 s calm.
        let ev: Vec<_> = (0..per_s * 18)
            .map(|k| {
                let t = ideal_arrival(T0, k as u64);
                let jittery = (2 * per_s..6 * per_s).contains(&k);
                let extra = if jittery { rng.next() % 6_000 } else { 0 };
                (t + extra, k as u32, k)
            })
            .collect();
        let s = |x: u64| T0 + x * 1_000_000;
        let mut sim = Sim::new(ev, T0);

        sim.run(&mut jb, s(2));
        let calm_target = jb.target_delay_us(BLOCK);
        assert!(calm_target < 2_050.0, "{calm_target}");

        sim.run(&mut jb, s(4));
        let mid = *jb.stats();
        let out = sim.run(&mut jb, s(6));
        let jitter_target = jb.target_delay_us(BLOCK);
        // Peak lateness just under 6 ms: target ≈ 6 + 1 + 1 ms.
        assert!(
            (7_500.0..8_100.0).contains(&jitter_target),
            "{jitter_target}"
        );
        let delay = jb.playout_delay_us(s(6)).unwrap();
        assert!(
            (delay - jitter_target).abs() < 600.0,
            "delay {delay} follows target {jitter_target}"
        );
        // Once adapted, no more underruns, losses or late packets.
        let st = *jb.stats();
        assert_eq!(
            (st.underruns, st.lost, st.late),
            (mid.underruns, mid.lost, mid.late)
        );
        assert!(st.reordered > mid.reordered, "the jitter reorders packets");
        assert_in_order_with_slips(&positions(&out), &st);
        assert!(jb.jitter_us() > 500.0, "RFC 3550 jitter {}", jb.jitter_us());

        let out = sim.run(&mut jb, s(18));
        let final_target = jb.target_delay_us(BLOCK);
        assert!(final_target < 2_100.0, "target back down: {final_target}");
        let delay = jb.playout_delay_us(s(18)).unwrap();
        assert!(
            (delay - final_target).abs() < 600.0,
            "delay {delay} back down to {final_target}"
        );
        let end = *jb.stats();
        assert!(
            end.slips_dropped - st.slips_dropped > 200,
            "shrunk by slips: {end:?}"
        );
        assert_eq!(
            (end.underruns, end.lost, end.late),
            (mid.underruns, mid.lost, mid.late)
        );
        assert_in_order_with_slips(&positions(&out), &end);
        assert!(jb.jitter_us() < 10.0, "calm again: {}", jb.jitter_us());
    }

    #[test]
    fn clock_drift_is_absorbed_by_slips() {
        // Sender clock ±150 ppm against the reader: 3 ms (144 samples) over 20 s.
        for ppm in [150.0, -150.0f64] {
            let mut jb = buffer();
            let period = N as f64 * 1e6 / 48_000.0 * (1.0 - ppm * 1e-6);
            let ev: Vec<_> = (0..7_600)
                .map(|k| (T0 + (k as f64 * period) as u64, k as u32, k))
                .collect();
            let out = Sim::new(ev, T0).run(&mut jb, T0 + 20_000_000);
            let s = *jb.stats();
            assert_eq!(
                (s.underruns, s.lost, s.late, s.overruns),
                (0, 0, 0, 0),
                "{ppm}: {s:?}"
            );
            // Every slip corrects one sample; the dead band (24 samples) is never crossed
            // back, so the count is the drift minus at most the dead band.
            let (slips, other) = if ppm > 0.0 {
                (s.slips_dropped, s.slips_inserted)
            } else {
                (s.slips_inserted, s.slips_dropped)
            };
            assert!((144 - 25..=144).contains(&slips), "{ppm}: {slips}");
            assert_eq!(other, 0);
            let target = jb.target_delay_us(BLOCK);
            let delay = jb.playout_delay_us(T0 + 20_000_000).unwrap();
            assert!(
                (delay - target).abs() <= 520.0,
                "{ppm}: {delay} vs {target}"
            );
            assert!(
                target < 2_100.0,
                "drift is not mistaken for jitter: {target}"
            );
            assert_in_order_with_slips(&positions(&out), &s);
        }
    }

    #[test]
    fn jammer_leaving_and_returning_after_expiry_starts_fresh() {
        let mut jb = buffer();
        Sim::new(calm_events(T0, 500, 40), T0).run(&mut jb, T0 + 120_000);
        assert!(jb.is_active());
        // Silent for 1 s: forgotten on the reader side.
        let mut b1 = [1.0; BLOCK];
        let mut b2 = [1.0; BLOCK];
        let last = ideal_arrival(T0, 39);
        jb.pull(last + 999_000, &mut b1, &mut b2);
        assert!(jb.is_active());
        jb.pull(last + 1_000_000, &mut b1, &mut b2);
        assert!(!jb.is_active());
        assert_eq!(jb.stats().expirations, 1);
        assert!(b1.iter().all(|&v| v == 0.0));

        // Returns with a restarted sequence and different audio (positions 19968+).
        let t1 = last + 1_500_000;
        let base = 20_000 / N;
        let ev: Vec<_> = (0..40)
            .map(|k| (ideal_arrival(t1, k as u64), k as u32, base + k))
            .collect();
        let out = Sim::new(ev, t1).run(&mut jb, t1 + 120_000);
        let pos = positions(&out);
        assert_eq!(pos[0], base * N, "fresh stream starts at its first sample");
        assert_contiguous(&pos);
        assert_eq!(pos.len(), 40 * N);
    }

    #[test]
    fn expiry_also_applies_when_the_reader_was_not_pulling() {
        let mut jb = buffer();
        let (a, b) = packet(0);
        jb.push(T0, 9, &a, &b);
        jb.push(T0 + 2_667, 10, &a, &b);
        // 1.2 s later the same jammer sends again: old audio must be gone.
        let (c, d) = packet(1_000);
        assert_eq!(jb.push(T0 + 1_202_667, 11, &c, &d), PushOutcome::Started);
        assert_eq!(jb.depth_samples(), N);
        assert_eq!(jb.stats().expirations, 1);
    }

    #[test]
    fn quick_rejoin_with_restarted_sequence_resyncs() {
        let mut jb = buffer();
        // 50 packets with seq 0.., a 300 ms gap, then seq 0.. again with new audio.
        let mut ev = calm_events(T0, 0, 50);
        let t1 = ideal_arrival(T0, 50) + 300_000;
        let base = 30_000 / N;
        ev.extend((0..60).map(|k| (ideal_arrival(t1, k as u64), k as u32, base + k)));
        let out = Sim::new(ev, T0).run(&mut jb, t1 + 200_000);
        let pos = positions(&out);
        let first_new = pos.iter().position(|&p| p >= base * N).unwrap();
        assert_eq!(first_new, 50 * N, "all of the first stream played");
        assert_contiguous(&pos[..first_new]);
        assert_contiguous(&pos[first_new..]);
        // Only the first restarted packet is sacrificed to detect the restart.
        assert_eq!(pos[first_new], base * N + N);
        assert_eq!(pos.len() - first_new, 59 * N);
        assert_eq!(jb.stats().resyncs, 1);
        assert_eq!(jb.stats().expirations, 0);
    }

    #[test]
    fn large_sequence_jump_resyncs_at_once() {
        let mut jb = buffer();
        let mut ev = calm_events(T0, 1_000, 20);
        let t1 = ideal_arrival(T0, 20);
        ev.extend((0..20).map(|k| (ideal_arrival(t1, k as u64), 900_000 + k as u32, 100 + k)));
        let out = Sim::new(ev, T0).run(&mut jb, t1 + 100_000);
        let pos = positions(&out);
        assert_eq!(jb.stats().resyncs, 1);
        let first_new = pos.iter().position(|&p| p >= 100 * N).unwrap();
        assert!(pos[..first_new].iter().all(|&p| p < 20 * N));
        // The new stream starts at target delay: less than one block of its first
        // packet is skipped to land exactly on the target (arrival was off the ms grid).
        assert!(pos[first_new] < 100 * N + BLOCK, "{}", pos[first_new]);
        assert_contiguous(&pos[first_new..]);
        assert_eq!(pos.last(), Some(&(120 * N - 1)));
    }

    #[test]
    fn overrun_keeps_the_newest_audio() {
        let mut jb = buffer();
        // 100 packets pushed at once with nobody reading: the ring (64) overflows.
        for k in 0..100 {
            let (a, b) = packet(k);
            jb.push(T0 + k as u64, k as u32, &a, &b);
        }
        assert_eq!(jb.stats().overruns, 36);
        assert_eq!(jb.stats().overrun_samples, 36 * N as u64);
        assert_eq!(jb.depth_samples(), 64 * N);
        // Reading now: far deeper than the target, so it is cut back to target at once.
        let mut b1 = [0.0; BLOCK];
        let mut b2 = [0.0; BLOCK];
        jb.pull(T0 + 100, &mut b1, &mut b2);
        assert_eq!(jb.stats().overruns, 37);
        let p = unmark(b1[0]).unwrap();
        // Playback resumes the target delay (96 samples) behind the newest packet,
        // whose start is where its on-time arrival would be.
        assert_eq!(p, 99 * N - 96);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn header_only_oversized_and_mismatched_packets_are_refused() {
        let mut jb = JitterBuffer::new(JitterConfig {
            max_frames: 128,
            ..JitterConfig::default()
        })
        .unwrap();
        assert_eq!(jb.push(T0, 0, &[], &[]), PushOutcome::NoAudio);
        assert_eq!(
            jb.push(T0, 0, &[0.0; 129], &[0.0; 129]),
            PushOutcome::Oversized
        );
        assert_eq!(
            jb.push(T0, 0, &[0.0; 4], &[0.0; 3]),
            PushOutcome::ChannelMismatch
        );
        assert!(!jb.is_active());
        assert_eq!(jb.stats().oversized, 1);
    }

    #[test]
    fn frame_count_change_restarts_the_stream() {
        let mut jb = buffer();
        assert_eq!(
            jb.push(T0, 0, &[0.5; 128], &[0.5; 128]),
            PushOutcome::Started
        );
        assert_eq!(
            jb.push(T0 + 2_667, 1, &[0.5; 64], &[0.5; 64]),
            PushOutcome::Started
        );
        assert_eq!(jb.frames_per_packet(), Some(64));
        assert_eq!(jb.stats().resyncs, 1);
    }

    #[test]
    fn push_packet_decodes_wire_samples() {
        use crate::jam::packet::{JamHeader, write_packet};
        let mut jb = buffer();
        let ch1: Vec<f32> = (0..N).map(|i| i as f32 / 200.0).collect();
        let ch2 = [0.25f32; N];
        let mut buf = [0u8; 1024];
        let header = JamHeader {
            sequence: 3,
            ..JamHeader::default()
        };
        let n = write_packet(&header, &ch1, &ch2, &mut buf).unwrap();
        let p = JamPacket::parse(&buf[..n]).unwrap();
        assert_eq!(jb.push_packet(T0, &p), PushOutcome::Started);
        let mut o1 = [0.0; N];
        let mut o2 = [0.0; N];
        // Target for 128-sample reads is 128 + 48 samples: 3.667 ms after arrival.
        assert_eq!(jb.pull(T0 + 3_667, &mut o1, &mut o2), N);
        for i in 0..N {
            assert_eq!(o1[i], p.sample(JamChannel::Ch1, i).unwrap());
            assert_eq!(o2[i], p.sample(JamChannel::Ch2, i).unwrap());
        }
    }

    #[test]
    fn config_is_validated() {
        let bad = |c: JitterConfig| JitterBuffer::new(c).unwrap_err();
        let d = JitterConfig::default();
        assert_eq!(
            bad(JitterConfig { slots: 3, ..d }),
            JitterConfigError::TooFewSlots { slots: 3 }
        );
        assert_eq!(
            bad(JitterConfig { max_frames: 0, ..d }),
            JitterConfigError::FramesOutOfRange { max_frames: 0 }
        );
        assert_eq!(
            bad(JitterConfig {
                min_delay_us: 5,
                max_delay_us: 4,
                ..d
            }),
            JitterConfigError::DelayRange {
                min_us: 5,
                max_us: 4
            }
        );
        assert_eq!(
            bad(JitterConfig {
                slip_interval: 0,
                ..d
            }),
            JitterConfigError::ZeroSlipInterval
        );
        assert_eq!(
            bad(JitterConfig { expiry_us: 0, ..d }),
            JitterConfigError::ZeroTime { field: "expiry_us" }
        );
    }
}
