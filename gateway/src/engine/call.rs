//! A call's media path: uplink and downlink pipelines and the call node (ARCHITECTURE §5).
//!
//! ```text
//!  session reader ──► Uplink ──(ring, 48 kHz)──► CallNode.voice ─► patches
//!  session writer ◄── Downlink ◄─(ring, 48 kHz)── CallNode.ear ◄── patches
//! ```
//!
//! The rings are single-producer single-consumer and lock-free (`rtrb`); they are where
//! Asterisk's clock meets the gateway's. Each pipeline owns a resampler whose ratio a
//! [`FillController`] steers from the ring's fill, so drift is absorbed without dropouts
//! or growing delay. Everything here is allocated in `new` and nothing allocates per
//! frame or per block (a caller switching rates mid-call rebuilds its resampler once).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use codecs::pcm;
use codecs::rate::SampleRate;
use codecs::resample::{Quality, ResampleError, StreamResampler};

use super::drift::FillController;
use super::{BUS_RATE, Node};
use crate::engine::stats::{LevelAccumulator, LevelMeter};

/// Largest chunk of caller-rate samples converted in one step; bounds per-call scratch
/// memory however large an incoming message is.
const UPLINK_CHUNK: usize = 1024;
/// How far the uplink may run above its target fill before the excess is dropped
/// (40 ms: more than the drift controller should ever have to absorb).
const MAX_EXCESS_SAMPLES: usize = 1920;
/// Largest chunk of bus samples the downlink pulls from its ring in one step (5 ms).
const DOWNLINK_CHUNK: usize = 240;

/// How the payload of kind 0x10 is coded (the channel driver may send G.711 under
/// 0x10, fact sheet §9.2; the stream itself cannot tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UplinkCoding {
    /// Signed 16-bit little-endian linear PCM (always the case for the dialplan app).
    #[default]
    Slin,
    /// G.711 μ-law bytes (channel driver with `c(ulaw)`).
    Ulaw,
    /// G.711 A-law bytes (channel driver with `c(alaw)`).
    Alaw,
}

/// Counters of one call's media path, shared by its session tasks, its node and the API.
#[derive(Debug, Default)]
pub struct CallStats {
    /// Audio messages received.
    pub frames_in: AtomicU64,
    /// Audio messages sent.
    pub frames_out: AtomicU64,
    /// Caller-rate samples received.
    pub samples_in: AtomicU64,
    /// Times the uplink ring ran dry while playing (late frames, or the caller's side
    /// stopped sending, as it does on an idle bridge).
    pub uplink_gaps: AtomicU64,
    /// Bus samples dropped because the uplink ring was full (a burst from Asterisk).
    pub uplink_overflow_samples: AtomicU64,
    /// Bus samples skipped to bring an overfull uplink back to its target latency.
    pub uplink_discarded_samples: AtomicU64,
    /// Frames the downlink had to pad with silence because the engine had not filled
    /// the ring in time.
    pub downlink_underruns: AtomicU64,
    /// Bus samples the engine could not queue because the downlink ring was full.
    pub downlink_overflow_samples: AtomicU64,
    /// The caller's stream has ended (hangup, end of stream, or the gateway ending the
    /// call): the uplink ring running dry after this is the call's end, not a gap.
    pub uplink_ended: AtomicBool,
    /// Bus samples the uplink pushed with its last frame (the node's prebuffer uses it).
    pub uplink_frame_samples: AtomicU32,
    /// Whether the call node is playing the uplink (false while it prebuffers); the
    /// drift controller only steers a ring that is being played.
    pub uplink_playing: AtomicBool,
    /// Largest deviation of a frame's arrival from its expected time, in microseconds.
    pub max_jitter_us: AtomicU64,
    /// DTMF digits received.
    pub dtmf_digits: AtomicU64,
    /// Times the session's writer found itself more than three frames late and skipped
    /// ahead (its thread was blocked or starved; the caller heard a gap).
    pub writer_stalls: AtomicU64,
    /// Longest such stall, in milliseconds.
    pub longest_writer_stall_ms: AtomicU64,
    /// Messages skipped (unknown kinds, empty audio, odd bytes).
    pub skipped_messages: AtomicU64,
    /// Current uplink ratio correction in ppm (rounded), for the API.
    pub uplink_correction_ppm: AtomicU64,
    /// Level of the caller's voice on the bus.
    pub voice_level: LevelMeter,
    /// Level of what the caller hears.
    pub ear_level: LevelMeter,
}

impl CallStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Sizes of a call's rings and buffers, derived from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct CallBuffering {
    /// Capacity of each ring in bus samples.
    pub ring_samples: usize,
    /// Extra fill the uplink keeps beyond one frame, to ride out arrival jitter.
    pub uplink_margin_samples: usize,
    /// Extra fill the downlink keeps beyond one frame.
    pub downlink_margin_samples: usize,
}

impl Default for CallBuffering {
    fn default() -> Self {
        CallBuffering {
            ring_samples: BUS_RATE.samples_in_ms(250),
            uplink_margin_samples: BUS_RATE.samples_in_ms(20),
            downlink_margin_samples: BUS_RATE.samples_in_ms(10),
        }
    }
}

/// Builds the three halves of one call's media path.
pub fn call_media(
    caller_rate: SampleRate,
    reply_frame_ms: u32,
    buffering: CallBuffering,
    stats: Arc<CallStats>,
) -> Result<(Uplink, CallNode, Downlink), ResampleError> {
    let (up_tx, up_rx) = rtrb::RingBuffer::new(buffering.ring_samples);
    let (down_tx, down_rx) = rtrb::RingBuffer::new(buffering.ring_samples);
    let uplink = Uplink::new(up_tx, caller_rate, buffering, Arc::clone(&stats))?;
    let node = CallNode {
        uplink: up_rx,
        downlink: down_tx,
        playing: false,
        margin: buffering.uplink_margin_samples,
        heard: Vec::new(),
        voice_level: LevelAccumulator::default(),
        ear_level: LevelAccumulator::default(),
        stats: Arc::clone(&stats),
    };
    let downlink = Downlink::new(down_rx, reply_frame_ms, buffering, stats);
    Ok((uplink, node, downlink))
}

/// The producer side of the uplink: caller audio in, bus samples into the ring.
pub struct Uplink {
    ring: rtrb::Producer<f32>,
    capacity: usize,
    rate: SampleRate,
    resampler: StreamResampler,
    controller: FillController,
    scratch_in: Vec<f32>,
    scratch_out: Vec<f32>,
    vad: Option<super::vad::VadTap>,
    margin: usize,
    last_discarded: u64,
    stats: Arc<CallStats>,
}

impl Uplink {
    fn new(
        ring: rtrb::Producer<f32>,
        rate: SampleRate,
        buffering: CallBuffering,
        stats: Arc<CallStats>,
    ) -> Result<Uplink, ResampleError> {
        let resampler = StreamResampler::new(rate, BUS_RATE, Quality::Voice)?;
        let scratch_out = vec![0.0; resampler.max_output_len(UPLINK_CHUNK)];
        Ok(Uplink {
            capacity: ring.buffer().capacity(),
            ring,
            rate,
            resampler,
            controller: FillController::new(buffering.uplink_margin_samples, BUS_RATE.hz()),
            scratch_in: vec![0.0; UPLINK_CHUNK],
            scratch_out,
            vad: None,
            margin: buffering.uplink_margin_samples,
            last_discarded: 0,
            stats,
        })
    }

    /// The caller rate the pipeline currently converts from.
    pub fn rate(&self) -> SampleRate {
        self.rate
    }

    /// Switches to another caller rate (fact sheet §10.10: key on each message's kind).
    /// Allocates a new resampler: only ever called when the rate really changes.
    pub fn set_rate(&mut self, rate: SampleRate) -> Result<(), ResampleError> {
        if rate != self.rate {
            let resampler = StreamResampler::new(rate, BUS_RATE, Quality::Voice)?;
            self.scratch_out = vec![0.0; resampler.max_output_len(UPLINK_CHUNK)];
            self.resampler = resampler;
            self.rate = rate;
            self.controller.reset();
        }
        Ok(())
    }

    /// Feeds one audio message's payload (at [`Uplink::rate`]) into the ring.
    pub fn push_payload(&mut self, payload: &[u8], coding: UplinkCoding) {
        let samples = match coding {
            UplinkCoding::Slin => payload.len() / 2,
            UplinkCoding::Ulaw | UplinkCoding::Alaw => payload.len(),
        };
        CallStats::add(&self.stats.frames_in, 1);
        CallStats::add(&self.stats.samples_in, samples as u64);
        if self.drop_if_backlogged(samples) {
            return;
        }

        self.steer(samples);

        let mut pushed = 0usize;
        let bytes_per_sample = if coding == UplinkCoding::Slin { 2 } else { 1 };
        for chunk in payload.chunks(UPLINK_CHUNK * bytes_per_sample) {
            let n = match coding {
                UplinkCoding::Slin => pcm::s16le_to_f32(chunk, &mut self.scratch_in),
                UplinkCoding::Ulaw => pcm::ulaw_to_f32(chunk, &mut self.scratch_in),
                UplinkCoding::Alaw => pcm::alaw_to_f32(chunk, &mut self.scratch_in),
            };
            Self::tap_caller_rate(&mut self.vad, self.rate, &self.scratch_in[..n]);
            let produced = self
                .resampler
                .process(&self.scratch_in[..n], &mut self.scratch_out);
            pushed += self.push_bus(produced);
        }
        self.stats
            .uplink_frame_samples
            .store(u32::try_from(pushed).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// Feeds caller-rate samples that are already float (tests, players of calls).
    pub fn push_samples(&mut self, samples: &[f32]) {
        CallStats::add(&self.stats.frames_in, 1);
        CallStats::add(&self.stats.samples_in, samples.len() as u64);
        if self.drop_if_backlogged(samples.len()) {
            return;
        }
        self.steer(samples.len());
        let mut pushed = 0usize;
        for chunk in samples.chunks(UPLINK_CHUNK) {
            Self::tap_caller_rate(&mut self.vad, self.rate, chunk);
            let produced = self.resampler.process(chunk, &mut self.scratch_out);
            pushed += self.push_bus(produced);
        }
        self.stats
            .uplink_frame_samples
            .store(u32::try_from(pushed).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// Drops a frame of `samples` caller-rate samples unconverted, counting it as
    /// overflow, when the ring has no room for it: converted, it would be dropped at the
    /// ring anyway. That happens when a session's reader was starved and catches up on a
    /// backlog faster than the engine drains it; resampling audio that is about to be
    /// thrown away is exactly the work an overloaded gateway cannot afford, and it would
    /// starve other calls' writers in turn. (Smaller bursts fit the ring and are trimmed
    /// by the node from the oldest end, which keeps the newest audio continuous.)
    fn drop_if_backlogged(&mut self, samples: usize) -> bool {
        let bus_samples =
            samples as u64 * u64::from(BUS_RATE.hz()) / u64::from(self.rate.hz().max(1));
        if self.ring.slots() as u64 >= bus_samples {
            return false;
        }
        CallStats::add(&self.stats.uplink_overflow_samples, bus_samples);
        true
    }

    /// Updates the ratio correction before `samples` new caller samples are pushed.
    /// The fill right before a frame lands is the low point of the ring's sawtooth and
    /// the quantity the controller holds on target. While the node prebuffers, the fill
    /// says nothing about drift, so the controller rests.
    fn steer(&mut self, samples: usize) {
        let fill = self.capacity - self.ring.slots();
        // Frames that arrive in a burst (a stalled reader catching up, Asterisk flushing
        // a queue) pile up far beyond anything drift could cause; the node trims such an
        // excess, so it must not wind up the controller either. Likewise after every trim.
        let discarded = self.stats.uplink_discarded_samples.load(Ordering::Relaxed);
        let trimmed = discarded != self.last_discarded;
        self.last_discarded = discarded;
        let burst = fill > self.margin + MAX_EXCESS_SAMPLES;
        let correction = if self.stats.uplink_playing.load(Ordering::Relaxed) && !burst && !trimmed
        {
            self.controller
                .update(fill, samples as f64 / f64::from(self.rate.hz()))
        } else {
            self.controller.reset();
            0.0
        };
        self.resampler.set_ratio_ppm(correction);
        self.stats
            .uplink_correction_ppm
            .store(correction.round() as i64 as u64, Ordering::Relaxed);
    }

    /// Taps the caller's audio into voice activity detection.
    pub fn set_vad(&mut self, tap: super::vad::VadTap) {
        self.vad = Some(tap);
    }

    /// Taps caller-rate samples into voice activity detection, when the detector takes
    /// the caller's rate directly (cheaper than the bus copy, see `push_bus`).
    fn tap_caller_rate(vad: &mut Option<super::vad::VadTap>, rate: SampleRate, samples: &[f32]) {
        if let Some(vad) = vad.as_mut()
            && super::vad::detects_at(rate.hz())
        {
            vad.feed(samples, rate.hz());
        }
    }

    fn push_bus(&mut self, produced: usize) -> usize {
        // Callers at rates the detector cannot take are heard on the bus instead.
        if let Some(vad) = self.vad.as_mut()
            && !super::vad::detects_at(self.rate.hz())
        {
            vad.feed(&self.scratch_out[..produced], BUS_RATE.hz());
        }
        let (pushed, dropped) = self.ring.push_partial_slice(&self.scratch_out[..produced]);
        if !dropped.is_empty() {
            CallStats::add(&self.stats.uplink_overflow_samples, dropped.len() as u64);
        }
        pushed.len()
    }

    /// Pushes the resampler's delay line out with silence, so the last samples the
    /// caller sent reach the ring (called once when the caller hangs up).
    pub fn flush_tail(&mut self) {
        let delay_in = (self.resampler.latency() * f64::from(self.rate.hz())
            / f64::from(BUS_RATE.hz()))
        .ceil() as usize
            + UPLINK_CHUNK / 8;
        let mut remaining = delay_in;
        while remaining > 0 {
            let n = remaining.min(UPLINK_CHUNK);
            self.scratch_in[..n].fill(0.0);
            let produced = self
                .resampler
                .process(&self.scratch_in[..n], &mut self.scratch_out);
            self.push_bus(produced);
            remaining -= n;
        }
    }

    /// Says that nothing more will be pushed (the caller's stream ended), so the engine
    /// does not count the ring running dry as an uplink gap.
    pub fn mark_ended(&self) {
        self.stats.uplink_ended.store(true, Ordering::Relaxed);
    }

    /// Bus samples waiting in the ring for the engine.
    pub fn queued(&self) -> usize {
        self.capacity - self.ring.slots()
    }

    /// Delay through the resampler, in bus samples.
    pub fn resampler_latency(&self) -> f64 {
        self.resampler.latency()
    }

    /// The current ratio correction, in ppm.
    pub fn correction_ppm(&self) -> f64 {
        self.controller.correction_ppm()
    }
}

/// The engine side of a call: `voice` and `heard` outputs, an `ear` input.
pub struct CallNode {
    uplink: rtrb::Consumer<f32>,
    downlink: rtrb::Producer<f32>,
    playing: bool,
    margin: usize,
    heard: Vec<f32>,
    voice_level: LevelAccumulator,
    ear_level: LevelAccumulator,
    stats: Arc<CallStats>,
}

/// Output port numbers of a call node.
pub mod ports {
    /// What the caller says.
    pub const VOICE: u16 = 0;
    /// What the caller heard in the previous block (for recording both sides).
    pub const HEARD: u16 = 1;
    /// Input: what the caller hears.
    pub const EAR: u16 = 0;
    /// Output port names, by number.
    pub const OUTPUTS: [&str; 2] = ["voice", "heard"];
    /// Input port names, by number.
    pub const INPUTS: [&str; 1] = ["ear"];
}

impl Node for CallNode {
    fn produce(&mut self, outputs: &mut [f32], block: usize) {
        let (voice, rest) = outputs.split_at_mut(block.min(outputs.len()));
        let available = self.uplink.slots();
        let frame = (self.stats.uplink_frame_samples.load(Ordering::Relaxed) as usize).max(block);
        let target = frame + self.margin;
        let mut excess = 0;
        if !self.playing && available >= target {
            // Prebuffered: a frame plus the jitter margin is waiting, so the next frame
            // arrives before the ring runs dry. Anything beyond that (frames that piled
            // up before the call was patched) is latency nobody wants: start fresh.
            self.playing = true;
            self.stats.uplink_playing.store(true, Ordering::Relaxed);
            excess = available - target;
        } else if self.playing && available > target + MAX_EXCESS_SAMPLES {
            // A burst from Asterisk: drop the oldest instead of making the drift
            // controller time-compress audible seconds of it.
            excess = available - target;
        }
        if excess > 0 {
            if let Ok(chunk) = self.uplink.read_chunk(excess) {
                chunk.commit_all();
            }
            CallStats::add(&self.stats.uplink_discarded_samples, excess as u64);
        }
        let mut taken = 0;
        if self.playing {
            taken = self.uplink.pop_partial_slice(voice).0.len();
            if taken < block {
                self.playing = false;
                self.stats.uplink_playing.store(false, Ordering::Relaxed);
                // Read after the ring ran dry: the session sets it after its last push.
                if !self.stats.uplink_ended.load(Ordering::Relaxed) {
                    CallStats::add(&self.stats.uplink_gaps, 1);
                }
            }
        }
        voice[taken..].fill(0.0);
        self.voice_level.add_block(voice, &self.stats.voice_level);

        // `heard`: the ear mix of the previous block.
        if rest.len() >= block {
            if self.heard.len() == block {
                rest[..block].copy_from_slice(&self.heard);
            } else {
                rest[..block].fill(0.0);
            }
        }
    }

    fn consume(&mut self, inputs: &[f32], block: usize) {
        let ear = &inputs[..block.min(inputs.len())];
        self.ear_level.add_block(ear, &self.stats.ear_level);
        if self.heard.len() == ear.len() {
            self.heard.copy_from_slice(ear);
        }
        let (_, dropped) = self.downlink.push_partial_slice(ear);
        if !dropped.is_empty() {
            CallStats::add(&self.stats.downlink_overflow_samples, dropped.len() as u64);
        }
    }
}

impl CallNode {
    /// Preallocates the `heard` buffer for `block`-sample blocks (done before install).
    pub fn with_block(mut self, block: usize) -> CallNode {
        self.heard = vec![0.0; block];
        self
    }
}

/// The consumer side of the downlink: bus samples out of the ring, caller frames out.
pub struct Downlink {
    ring: rtrb::Consumer<f32>,
    frame_ms: u32,
    margin: usize,
    reply: Option<ReplyPath>,
    playing: bool,
    scratch_bus: Vec<f32>,
    stats: Arc<CallStats>,
}

/// The part of the downlink that depends on the reply rate, built once it is known.
struct ReplyPath {
    rate: SampleRate,
    resampler: StreamResampler,
    controller: FillController,
    pending: Vec<f32>,
    pending_len: usize,
    frame_samples: usize,
}

impl Downlink {
    fn new(
        ring: rtrb::Consumer<f32>,
        frame_ms: u32,
        buffering: CallBuffering,
        stats: Arc<CallStats>,
    ) -> Downlink {
        Downlink {
            ring,
            frame_ms,
            margin: buffering.downlink_margin_samples,
            reply: None,
            playing: false,
            scratch_bus: vec![0.0; DOWNLINK_CHUNK],
            stats,
        }
    }

    /// Sets the rate replies are sent at (rarely: every switch makes Asterisk rebuild
    /// its translation path, fact sheet §7).
    pub fn set_reply_rate(&mut self, rate: SampleRate) -> Result<(), ResampleError> {
        if self.reply.as_ref().is_some_and(|r| r.rate == rate) {
            return Ok(());
        }
        let resampler = StreamResampler::new(BUS_RATE, rate, Quality::Voice)?;
        let frame_samples = rate.samples_in_ms(self.frame_ms);
        let pending = vec![0.0; frame_samples + resampler.max_output_len(DOWNLINK_CHUNK)];
        let frame_bus = BUS_RATE.samples_in_ms(self.frame_ms);
        // A switch (the caller's rate showed late or changed) starts the new path like
        // a new call: primed to exactly the target fill, with a fresh drift controller,
        // so the audio the old path held back is not read as clock drift.
        self.playing = false;
        self.reply = Some(ReplyPath {
            rate,
            resampler,
            controller: FillController::new(frame_bus + self.margin, BUS_RATE.hz()),
            pending,
            pending_len: 0,
            frame_samples,
        });
        Ok(())
    }

    /// The reply rate, once fixed.
    pub fn reply_rate(&self) -> Option<SampleRate> {
        self.reply.as_ref().map(|r| r.rate)
    }

    /// Samples in one reply frame at the reply rate (0 before the rate is fixed).
    pub fn frame_samples(&self) -> usize {
        self.reply.as_ref().map_or(0, |r| r.frame_samples)
    }

    /// Throws away whatever the engine queued (while the reply rate is not known yet).
    pub fn discard_queued(&mut self) {
        let n = self.ring.slots();
        if let Ok(chunk) = self.ring.read_chunk(n) {
            chunk.commit_all();
        }
    }

    /// Produces the next reply frame as s16le into `out` (which must hold
    /// `2 * frame_samples()` bytes); returns the bytes written (0 before the rate is
    /// fixed). Pads with silence, counting an underrun, when the engine fell behind.
    pub fn next_frame(&mut self, out: &mut [u8]) -> usize {
        let Some(reply) = self.reply.as_mut() else {
            return 0;
        };
        let frame_bus = BUS_RATE.samples_in_ms(self.frame_ms);
        let fill = self.ring.slots();
        let target = frame_bus + self.margin;
        let mut fill = fill;
        if !self.playing {
            if fill >= target {
                // Start at exactly the target fill: frames are pulled every `frame_ms`,
                // so the fill seen at a pull can overshoot the target by up to a frame,
                // and that overshoot would otherwise be latency the drift controller
                // has to squeeze out by audibly changing pitch.
                if let Ok(chunk) = self.ring.read_chunk(fill - target) {
                    chunk.commit_all();
                }
                fill = target;
                self.playing = true;
                reply.controller.reset();
            } else {
                // Still priming: send silence, which keeps the app's idle timer quiet.
                let bytes = reply.frame_samples * 2;
                out[..bytes].fill(0);
                CallStats::add(&self.stats.frames_out, 1);
                return bytes;
            }
        }
        let correction = reply
            .controller
            .update(fill, f64::from(self.frame_ms) / 1000.0);
        reply.resampler.set_ratio_ppm(correction);

        while reply.pending_len < reply.frame_samples {
            let take = self.ring.pop_partial_slice(&mut self.scratch_bus).0.len();
            if take == 0 {
                self.playing = false;
                CallStats::add(&self.stats.downlink_underruns, 1);
                break;
            }
            let produced = reply.resampler.process(
                &self.scratch_bus[..take],
                &mut reply.pending[reply.pending_len..],
            );
            reply.pending_len += produced;
        }

        let n = reply.pending_len.min(reply.frame_samples);
        let written = pcm::f32_to_s16le(&reply.pending[..n], out);
        out[written..reply.frame_samples * 2].fill(0);
        reply.pending.copy_within(n..reply.pending_len, 0);
        reply.pending_len -= n;
        CallStats::add(&self.stats.frames_out, 1);
        reply.frame_samples * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_the_ring_has_no_room_for_is_dropped_before_resampling() {
        let stats = Arc::new(CallStats::default());
        let (mut uplink, _node, _downlink) = call_media(
            SampleRate::HZ_8000,
            20,
            CallBuffering::default(),
            Arc::clone(&stats),
        )
        .expect("call media");
        let frame = [0.25f32; 160];
        // Nothing drains the 250 ms ring: twelve 20 ms frames fit (960 bus samples each,
        // less the few the resampler holds back), the thirteenth does not.
        for _ in 0..12 {
            uplink.push_samples(&frame);
        }
        let queued = uplink.queued();
        assert!(queued > 11 * 960 && queued <= 12 * 960, "{queued}");
        assert_eq!(stats.uplink_overflow_samples.load(Ordering::Relaxed), 0);
        // Every further frame is dropped whole and counted in bus samples.
        for _ in 0..10 {
            uplink.push_samples(&frame);
        }
        assert_eq!(uplink.queued(), queued);
        assert_eq!(
            stats.uplink_overflow_samples.load(Ordering::Relaxed),
            10 * 960
        );
        assert_eq!(stats.frames_in.load(Ordering::Relaxed), 22);
    }

    /// A caller sending 20 ms frames for 2 s, on virtual time, then going quiet for 1 s;
    /// `hang_up` says whether it hung up (the session flushes and marks the end) or just
    /// stopped sending. Returns the uplink gaps the engine counted.
    fn uplink_gaps_when_the_caller_stops(hang_up: bool) -> u64 {
        let stats = Arc::new(CallStats::default());
        let (mut uplink, node, _downlink) = call_media(
            SampleRate::HZ_8000,
            20,
            CallBuffering::default(),
            Arc::clone(&stats),
        )
        .expect("call media");
        let mut node = node.with_block(48);
        let frame = [0.25f32; 160];
        let mut outputs = [0.0f32; 96];
        for ms in 0..3_000 {
            if ms < 2_000 && ms % 20 == 0 {
                uplink.push_samples(&frame);
            }
            if ms == 2_000 && hang_up {
                uplink.flush_tail();
                uplink.mark_ended();
            }
            node.produce(&mut outputs, 48);
        }
        stats.uplink_gaps.load(Ordering::Relaxed)
    }

    #[test]
    fn a_hangup_is_not_an_uplink_gap_but_a_silent_caller_is() {
        assert_eq!(uplink_gaps_when_the_caller_stops(true), 0);
        assert_eq!(uplink_gaps_when_the_caller_stops(false), 1);
    }

    /// Runs an engine feeding `ear` with a 1 kHz tone every 1 ms block and a writer
    /// pulling a reply frame every 20 ms, on virtual time; the reply rate switches from
    /// 8 to 16 kHz after 2 s. Returns the 16 kHz replies after the switch.
    fn replies_across_a_rate_switch(seconds_after: usize) -> Vec<f32> {
        let stats = Arc::new(CallStats::default());
        let (_uplink, node, mut downlink) = call_media(
            SampleRate::HZ_8000,
            20,
            CallBuffering::default(),
            Arc::clone(&stats),
        )
        .expect("call media");
        let mut node = node.with_block(48);
        downlink.set_reply_rate(SampleRate::HZ_8000).expect("8 kHz");
        let mut out = vec![0u8; 2 * 960];
        let mut heard = Vec::new();
        let mut phase = 0usize;
        for ms in 0..(2_000 + seconds_after * 1_000) {
            let block: Vec<f32> = (0..48)
                .map(|k| {
                    let n = (phase + k) as f64;
                    (0.5 * (std::f64::consts::TAU * 1_000.0 * n / 48_000.0).sin()) as f32
                })
                .collect();
            phase += 48;
            node.consume(&block, 48);
            if ms == 2_000 {
                downlink
                    .set_reply_rate(SampleRate::HZ_16000)
                    .expect("16 kHz");
            }
            if ms % 20 == 19 {
                let bytes = downlink.next_frame(&mut out);
                if ms > 2_000 {
                    heard.extend(
                        out[..bytes]
                            .chunks_exact(2)
                            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0),
                    );
                }
            }
        }
        assert_eq!(stats.downlink_underruns.load(Ordering::Relaxed), 0);
        heard
    }

    /// Engine and writer both stalled `stall_ms` (a host stalling every thread), then the
    /// writer catching up first: returns the downlink underruns of 10 s with one such
    /// stall a second.
    fn downlink_underruns_with_stalls(margin_ms: usize, stall_ms: usize) -> u64 {
        let stats = Arc::new(CallStats::default());
        let buffering = CallBuffering {
            downlink_margin_samples: BUS_RATE.samples_in_ms(margin_ms as u32),
            ..CallBuffering::default()
        };
        let (_uplink, node, mut downlink) =
            call_media(SampleRate::HZ_8000, 20, buffering, Arc::clone(&stats)).expect("call media");
        let mut node = node.with_block(48);
        downlink.set_reply_rate(SampleRate::HZ_8000).expect("8 kHz");
        let block = [0.25f32; 48];
        let mut out = vec![0u8; 2 * 960];
        let (mut blocks_owed, mut frames_owed) = (0, 0);
        for ms in 0..10_000 {
            blocks_owed += 1;
            if ms % 20 == 19 {
                frames_owed += 1;
            }
            if ms > 1_000 && ms % 1_000 < stall_ms {
                continue;
            }
            // The writer wakes first and sends what it owes, then the engine catches up.
            for _ in 0..frames_owed {
                downlink.next_frame(&mut out);
            }
            for _ in 0..blocks_owed {
                node.consume(&block, 48);
            }
            (blocks_owed, frames_owed) = (0, 0);
        }
        stats.downlink_underruns.load(Ordering::Relaxed)
    }

    #[test]
    fn the_downlink_margin_rides_through_stalls_shorter_than_it() {
        assert_eq!(downlink_underruns_with_stalls(60, 40), 0);
        assert_eq!(downlink_underruns_with_stalls(10, 0), 0);
        assert!(downlink_underruns_with_stalls(10, 40) >= 9);
    }

    #[test]
    fn a_reply_rate_switch_keeps_the_pitch() {
        // Engine and writer share one clock here: after the switch the replies must
        // carry the tone at its pitch, not one bent by a controller that mistook the
        // switch for drift.
        let heard = replies_across_a_rate_switch(8);
        // Skip the first second after the switch (priming), fit the rest.
        let steady = &heard[16_000..];
        let fit = codecs::measure::fit_sine(steady, SampleRate::HZ_16000).expect("a tone");
        let ppm = (fit.frequency_hz / 1_000.0 - 1.0) * 1e6;
        assert!(
            ppm.abs() < 20.0,
            "pitch off by {ppm:.0} ppm after the switch"
        );
        assert!((fit.amplitude_dbfs + 6.02).abs() < 0.1, "{fit:?}");
    }
}
