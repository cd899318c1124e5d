//! Receive-side jitter buffer for one AES67 flow, indexed by RTP timestamp against the
//! media clock (aes67.md §13 item 6).
//!
//! Every received frame has a media time `m = rtp_ts − offset` (mod 2^32). The engine
//! reads a block at media clock `now` and gets the frames with `m` in
//! `[now − latency, now − latency + block)`: a frame plays `latency` after its own
//! timestamp, whatever order or grouping its packet arrived in. Frames nobody delivered
//! in time read as silence. Storage is a fixed ring of 4096 frames (85 ms) where frame `m`
//! lives in slot `m mod 4096`, tagged with `m` so stale slots are never replayed.
//!
//! Two alignments ([`Alignment`]):
//! * `MediaClock { offset }`: proper AES67. `offset` is the SDP `a=mediaclk:direct=`
//!   value and `now` is the PTP media clock; a sender whose timestamps are not PTP time
//!   is heard as silence and shows up in the late/early counters, as with Dante
//!   (aes67.md §5).
//! * `FirstPacket`: for senders that are format peers but not timing peers (ffmpeg,
//!   aes67.md §6): the first packet fixes `offset` so it plays `latency` after arrival;
//!   16 packets in a row outside the window re-anchor (counted in `resyncs`). Such a
//!   sender runs on its own crystal, so the buffer is read on the sender's clock as
//!   estimated from its arrivals ([`SenderClock`]): the caller reads at
//!   [`JitterBuffer::playout_time`] of its media clock, and the latency stays where the
//!   first packets put it however far the sender drifts (±3000 ppm).
//!
//! Latency: `latency_frames` is where playout starts. With `max_latency_frames` above it,
//! a packet that arrives after its playout time raises the latency (to its lateness plus
//! 1 ms, in whole ms, up to the maximum): the read position steps back, so the late
//! packet still plays and what was already read is heard once as a pause (counted in
//! `inserted_frames`). A sender that needs more than the maximum is flagged
//! ([`JitterBuffer::needed_latency_frames`]). Bursty senders (ffmpeg's RTP muxer sends
//! 10-20 ms bursts) settle this way after a few seconds.
//!
//! Concealment counts only frames a sender failed to deliver: silence while a later frame
//! is already here, or a gap that the sender's next packet closes within 1 s. A longer
//! silence means no sender, and its frames count as `no_sender_frames`.
//!
//! Counters follow RFC 3550 §6.4.1 / A.3 where it defines them: `lost` = expected −
//! received (late packets count as received), sequence numbers extended across wraps, and
//! a jump of more than 3000 starts a new sequence only when the next packet confirms it
//! (RFC 3550 A.1 probation).

use super::sender_clock::SenderClock;
use super::{Aes67Error, PacketTime, StreamFormat};
use crate::rtp::{PayloadType, RtpPacket};

/// Ring size in frames (a power of two; 85 ms at 48 kHz).
const RING_FRAMES: usize = 4096;
/// Largest latency accepted: 40 ms.
pub const MAX_LATENCY_FRAMES: u32 = 1920;
/// Largest packet (frames) accepted: 10 ms, more than any AES67 packet time.
pub const MAX_PACKET_FRAMES: usize = 480;
/// Largest block [`JitterBuffer::read_block`] serves in one call (10 ms).
pub const MAX_READ_FRAMES: usize = 480;
/// Packets in a row outside the window before `FirstPacket` re-anchors.
const REANCHOR_AFTER: u32 = 16;
/// Packets in a row from another SSRC before the buffer follows it.
const SSRC_SWITCH_AFTER: u32 = 8;
/// RFC 3550 A.1 MAX_DROPOUT: a forward sequence jump beyond this is suspicious.
const MAX_DROPOUT: i32 = 3000;
/// Sequence numbers remembered for duplicate detection (RFC 3550 A.1 MAX_MISORDER 100
/// is smaller; this also covers a full 40 ms of 125 µs packets).
const SEQ_HISTORY: usize = 1024;
/// Silence for this long (frames, 1 s) without a packet means there is no sender.
const ABSENT_AFTER_FRAMES: u64 = 48_000;
/// Margin added to a late packet's lateness when the latency grows (1 ms).
const GROWTH_GUARD_FRAMES: u32 = 48;

/// How RTP timestamps map onto the local media clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alignment {
    /// `m = rtp_ts − offset`; `offset` from `a=mediaclk:direct=` (usually 0).
    MediaClock {
        /// The `direct=` offset.
        offset: u32,
    },
    /// Anchor on the first packet's arrival (non-PTP senders).
    FirstPacket,
}

/// Receive settings of one flow, usually taken from its SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxConfig {
    /// Payload type from `a=rtpmap`; other packets are dropped.
    pub payload_type: PayloadType,
    /// Encoding, channel count and the announced packet time.
    pub format: StreamFormat,
    /// Playout delay in frames after the media timestamp, at the start.
    pub latency_frames: u32,
    /// Largest playout delay late packets may raise it to (at most `latency_frames`, 0
    /// say: a fixed latency).
    pub max_latency_frames: u32,
    /// Timestamp alignment.
    pub alignment: Alignment,
}

impl RxConfig {
    /// Default latency: one packet time + 2 ms (96 frames), fixed; media-clock alignment
    /// with offset 0.
    pub const fn new(payload_type: PayloadType, format: StreamFormat) -> RxConfig {
        RxConfig {
            payload_type,
            format,
            latency_frames: Self::default_latency(format.packet_time),
            max_latency_frames: 0,
            alignment: Alignment::MediaClock { offset: 0 },
        }
    }

    /// Packet time + 2 ms, in frames.
    pub const fn default_latency(packet_time: PacketTime) -> u32 {
        // frames() <= 192.
        packet_time.frames() as u32 + 96
    }
}

/// Counters of one receive flow (monotonic; read them for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxStats {
    /// Distinct packets received from the followed SSRC (including late ones).
    pub received: u64,
    /// Packets never received: expected − received over every sequence run (RFC 3550).
    pub lost: u64,
    /// Packets received again (same sequence number).
    pub duplicate: u64,
    /// Packets older than the newest sequence number that were still in time.
    pub reordered: u64,
    /// Packets (or their first frames) that arrived after their playout time.
    pub late: u64,
    /// Packets too far ahead of the playout window (timestamps not aligned with ours).
    pub early: u64,
    /// Frames played as silence because the sender's packet was missing (lost or late)
    /// while the sender was present.
    pub concealed_frames: u64,
    /// Frames played as silence because no packet came for more than 1 s (no sender).
    pub no_sender_frames: u64,
    /// Frames of silence heard once when the latency grew.
    pub inserted_frames: u64,
    /// Times the latency grew for a late packet.
    pub latency_increases: u64,
    /// Datagrams that were not RTP or whose payload was not whole frames.
    pub malformed: u64,
    /// Packets with another payload type.
    pub wrong_payload_type: u64,
    /// Packets from an SSRC other than the one followed.
    pub foreign_ssrc: u64,
    /// Re-anchors (FirstPacket), SSRC switches and sequence restarts.
    pub resyncs: u64,
}

/// What [`JitterBuffer::push`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored in order.
    Accepted,
    /// Stored, but it arrived after a newer packet.
    Reordered,
    /// Its sequence number was already received; dropped.
    Duplicate,
    /// Arrived after its playout time; dropped (or partly stored, see `late`).
    Late,
    /// Too far ahead of the playout window; dropped.
    TooEarly,
    /// Not RTP, or not whole frames, or too long.
    Malformed,
    /// Another payload type.
    WrongPayloadType,
    /// Another SSRC (until it persists and the buffer switches to it).
    ForeignSsrc,
    /// A big sequence jump awaiting confirmation (RFC 3550 A.1); dropped.
    Probation,
}

/// RFC 3550 A.1 style sequence state.
#[derive(Debug, Clone)]
struct SeqState {
    /// Extended highest sequence number.
    max_ext: i64,
    /// Extended first sequence number of this run.
    base_ext: i64,
    /// Distinct packets received in this run.
    received: u64,
    /// Awaited sequence number confirming a jump.
    bad_seq: Option<u16>,
    /// Seen flags for the last SEQ_HISTORY sequence numbers, indexed by seq mod size.
    seen: [u64; SEQ_HISTORY / 64],
}

enum SeqClass {
    New,
    Reordered,
    Duplicate,
    Probation,
}

impl SeqState {
    fn start(seq: u16) -> SeqState {
        let mut s = SeqState {
            max_ext: i64::from(seq),
            base_ext: i64::from(seq),
            received: 0,
            bad_seq: None,
            seen: [0; SEQ_HISTORY / 64],
        };
        s.mark(seq);
        s.received = 1;
        s
    }

    fn lost(&self) -> u64 {
        let expected = self.max_ext - self.base_ext + 1;
        u64::try_from(expected)
            .unwrap_or(0)
            .saturating_sub(self.received)
    }

    fn bit(seq: u16) -> (usize, u64) {
        let i = usize::from(seq) % SEQ_HISTORY;
        (i / 64, 1u64 << (i % 64))
    }

    fn mark(&mut self, seq: u16) {
        let (w, b) = Self::bit(seq);
        self.seen[w] |= b;
    }

    fn is_seen(&self, seq: u16) -> bool {
        let (w, b) = Self::bit(seq);
        self.seen[w] & b != 0
    }

    /// Classifies `seq` and records it. A confirmed jump restarts the state (the caller
    /// accumulates the old run's losses first via `Restart`).
    fn classify(&mut self, seq: u16) -> SeqClass {
        let max16 = self.max_ext as u16; // low 16 bits of the extended max
        let delta = i32::from(seq.wrapping_sub(max16) as i16);
        if delta > 0 && delta <= MAX_DROPOUT {
            // Clear the history slots the window moves over.
            for k in 1..=delta.min(SEQ_HISTORY as i32) {
                let s = max16.wrapping_add(k as u16);
                let (w, b) = Self::bit(s);
                self.seen[w] &= !b;
            }
            self.max_ext += i64::from(delta);
            self.mark(seq);
            self.received += 1;
            self.bad_seq = None;
            SeqClass::New
        } else if delta <= 0 && -delta < SEQ_HISTORY as i32 {
            if self.is_seen(seq) {
                SeqClass::Duplicate
            } else {
                self.mark(seq);
                self.received += 1;
                SeqClass::Reordered
            }
        } else {
            SeqClass::Probation
        }
    }
}

/// The jitter buffer of one receive flow. See the module docs.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    cfg: RxConfig,
    channels: usize,
    bytes_per_frame: usize,
    /// Interleaved samples, RING_FRAMES × channels.
    ring: Vec<f32>,
    /// Media time stored in each slot; meaningful only where `valid`.
    tags: Vec<u32>,
    valid: Vec<bool>,
    offset: Option<u32>,
    next_read: Option<u32>,
    ssrc: Option<u32>,
    candidate_ssrc: Option<(u32, u32)>,
    seq: Option<SeqState>,
    lost_before: u64,
    out_of_window_run: u32,
    /// Media time of the first frame ever stored; concealment counts from there.
    first_frame: Option<u32>,
    /// Whether playout has reached `first_frame`.
    started: bool,
    last_arrival: Option<u64>,
    /// The sender's clock (`FirstPacket` only).
    sender: Option<SenderClock>,
    /// Media time just past the newest frame stored.
    newest_end: Option<u32>,
    /// Silent frames read since the last frame stored, not yet known to be loss or absence.
    pending_silence: u64,
    /// Whether the silence has lasted long enough to mean no sender.
    absent: bool,
    /// Frames before this were read before the latency last grew: missing, they are the
    /// pause the growth inserted.
    inserted_until: Option<u32>,
    /// The largest latency a packet needed (frames), also beyond the maximum.
    needed_latency: u32,
    stats: RxStats,
}

impl JitterBuffer {
    /// Allocates the ring for `cfg` (the only allocation this type makes).
    pub fn new(cfg: RxConfig) -> Result<JitterBuffer, Aes67Error> {
        let min = u32::try_from(cfg.format.packet_time.frames()).unwrap_or(u32::MAX);
        if cfg.latency_frames < min || cfg.latency_frames > MAX_LATENCY_FRAMES {
            return Err(Aes67Error::BadLatency {
                frames: cfg.latency_frames,
                min,
                max: MAX_LATENCY_FRAMES,
            });
        }
        if cfg.max_latency_frames > MAX_LATENCY_FRAMES {
            return Err(Aes67Error::BadLatency {
                frames: cfg.max_latency_frames,
                min: cfg.latency_frames,
                max: MAX_LATENCY_FRAMES,
            });
        }
        let mut cfg = cfg;
        cfg.max_latency_frames = cfg.max_latency_frames.max(cfg.latency_frames);
        let channels = cfg.format.channels.count();
        Ok(JitterBuffer {
            cfg,
            channels,
            bytes_per_frame: cfg.format.bytes_per_frame(),
            ring: vec![0.0; RING_FRAMES * channels],
            tags: vec![0; RING_FRAMES],
            valid: vec![false; RING_FRAMES],
            offset: match cfg.alignment {
                Alignment::MediaClock { offset } => Some(offset),
                Alignment::FirstPacket => None,
            },
            next_read: None,
            ssrc: None,
            candidate_ssrc: None,
            seq: None,
            lost_before: 0,
            out_of_window_run: 0,
            first_frame: None,
            started: false,
            last_arrival: None,
            sender: match cfg.alignment {
                Alignment::MediaClock { .. } => None,
                Alignment::FirstPacket => Some(SenderClock::new()),
            },
            newest_end: None,
            pending_silence: 0,
            absent: false,
            inserted_until: None,
            needed_latency: 0,
            stats: RxStats::default(),
        })
    }

    /// The configuration (`latency_frames` is the current latency).
    pub fn config(&self) -> &RxConfig {
        &self.cfg
    }

    /// The current playout latency in frames.
    pub fn latency_frames(&self) -> u32 {
        self.cfg.latency_frames
    }

    /// The largest latency a packet has needed so far, in frames; above
    /// `max_latency_frames` the sender cannot be played without late packets.
    pub fn needed_latency_frames(&self) -> u32 {
        self.needed_latency
    }

    /// Where to read at media clock `now`: `now` itself on the media clock, the sender's
    /// estimated clock for `FirstPacket`. Pass it to [`JitterBuffer::read_block`].
    pub fn playout_time(&self, now: u64) -> u64 {
        match &self.sender {
            Some(sender) => sender.sender_time(now),
            None => now,
        }
    }

    /// How much faster than our media clock [`JitterBuffer::playout_time`] runs, in ppm
    /// (0 on the media clock).
    pub fn playout_rate_ppm(&self) -> f64 {
        self.sender.as_ref().map_or(0.0, SenderClock::ratio_ppm)
    }

    /// The sender's measured rate error in ppm, once measured (`FirstPacket`).
    pub fn sender_ppm(&self) -> Option<f64> {
        self.sender
            .as_ref()
            .filter(|s| s.locked())
            .map(SenderClock::measured_ppm)
    }

    /// Sets the offset so a packet stamped `ts` starts at playout time `now_s` (the
    /// sender's clock is re-measured from here).
    fn anchor(&mut self, ts: u32, now: u64, now_s: u32) -> u32 {
        let o = ts.wrapping_sub(now_s);
        self.offset = Some(o);
        if let Some(sender) = &mut self.sender {
            sender.restart(now);
        }
        o
    }

    /// Raises the latency by `frames`: the read position steps back.
    fn grow_latency(&mut self, frames: u32) {
        self.cfg.latency_frames += frames;
        self.stats.latency_increases += 1;
        if let Some(next) = self.next_read {
            self.inserted_until = Some(next);
            self.next_read = Some(next.wrapping_sub(frames));
        }
    }

    /// The counters, with `lost` brought up to date.
    pub fn stats(&self) -> RxStats {
        let mut s = self.stats;
        s.lost = self.lost_before + self.seq.as_ref().map_or(0, SeqState::lost);
        s
    }

    /// The SSRC being followed.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    /// The `now` of the last datagram from the followed SSRC (for liveness).
    pub fn last_arrival(&self) -> Option<u64> {
        self.last_arrival
    }

    /// Handles one received datagram. `now` is the media clock (samples, any epoch as
    /// long as it is the one `read_block` gets) at arrival. Never panics; allocates
    /// nothing.
    pub fn push(&mut self, datagram: &[u8], now: u64) -> PushOutcome {
        let Ok(pkt) = RtpPacket::parse(datagram) else {
            self.stats.malformed += 1;
            return PushOutcome::Malformed;
        };
        if pkt.header.payload_type != self.cfg.payload_type {
            self.stats.wrong_payload_type += 1;
            return PushOutcome::WrongPayloadType;
        }
        let frames = pkt.payload.len() / self.bytes_per_frame;
        if pkt.payload.is_empty()
            || !pkt.payload.len().is_multiple_of(self.bytes_per_frame)
            || frames > MAX_PACKET_FRAMES
        {
            self.stats.malformed += 1;
            return PushOutcome::Malformed;
        }
        // Truncation: the media clock is used mod 2^32 like RTP timestamps. On the
        // sender's clock for `FirstPacket`.
        let now32 = self.playout_time(now) as u32;
        let ssrc = pkt.header.ssrc;
        match self.ssrc {
            None => self.ssrc = Some(ssrc),
            Some(s) if s == ssrc => self.candidate_ssrc = None,
            Some(_) => {
                self.stats.foreign_ssrc += 1;
                let run = match self.candidate_ssrc {
                    Some((c, n)) if c == ssrc => n + 1,
                    _ => 1,
                };
                self.candidate_ssrc = Some((ssrc, run));
                if run < SSRC_SWITCH_AFTER {
                    return PushOutcome::ForeignSsrc;
                }
                // The old sender is gone and a new one has taken the flow.
                self.stats.resyncs += 1;
                self.ssrc = Some(ssrc);
                self.candidate_ssrc = None;
                self.restart_sequence();
                if self.cfg.alignment == Alignment::FirstPacket {
                    self.offset = None;
                }
            }
        }
        self.last_arrival = Some(now);

        // Sequence bookkeeping (RFC 3550 A.1).
        let seq = pkt.header.sequence;
        let class = match self.seq.as_mut() {
            None => {
                self.seq = Some(SeqState::start(seq));
                SeqClass::New
            }
            Some(state) => match state.classify(seq) {
                SeqClass::Probation if state.bad_seq == Some(seq) => {
                    // Two packets in sequence after the jump: a new sequence run.
                    self.stats.resyncs += 1;
                    self.restart_sequence();
                    self.seq = Some(SeqState::start(seq));
                    SeqClass::New
                }
                SeqClass::Probation => {
                    state.bad_seq = Some(seq.wrapping_add(1));
                    return PushOutcome::Probation;
                }
                other => other,
            },
        };
        if let SeqClass::Duplicate = class {
            self.stats.duplicate += 1;
            return PushOutcome::Duplicate;
        }
        self.stats.received += 1;

        // Place the packet on the media timeline.
        let ts = pkt.header.timestamp;
        let offset = match self.offset {
            Some(o) => o,
            // FirstPacket: this packet's first frame gets media time `now`.
            None => self.anchor(ts, now, now32),
        };
        let mut m_start = ts.wrapping_sub(offset);
        let mut cursor = self
            .next_read
            .unwrap_or(now32.wrapping_sub(self.cfg.latency_frames));
        let mut rel = i64::from(m_start.wrapping_sub(cursor) as i32);
        let n = frames as i64;
        if rel < 0 && -rel < RING_FRAMES as i64 {
            // Late: what latency would have played it?
            let needed = self.cfg.latency_frames as i64 - rel + i64::from(GROWTH_GUARD_FRAMES);
            let needed = u32::try_from(needed)
                .unwrap_or(u32::MAX)
                .next_multiple_of(48);
            self.needed_latency = self.needed_latency.max(needed);
            let grown = needed.min(self.cfg.max_latency_frames);
            if grown > self.cfg.latency_frames {
                self.grow_latency(grown - self.cfg.latency_frames);
                cursor = self
                    .next_read
                    .unwrap_or(now32.wrapping_sub(self.cfg.latency_frames));
                rel = i64::from(m_start.wrapping_sub(cursor) as i32);
            }
        }
        let latency = self.cfg.latency_frames;
        let out_of_window = rel + n <= 0 || rel + n > RING_FRAMES as i64;
        if out_of_window {
            self.out_of_window_run += 1;
            if self.cfg.alignment == Alignment::FirstPacket
                && self.out_of_window_run >= REANCHOR_AFTER
            {
                self.stats.resyncs += 1;
                let o = self.anchor(ts, now, now32);
                self.valid.fill(false);
                if !self.started {
                    // The old anchor's first frame means nothing on the new timeline.
                    self.first_frame = None;
                }
                m_start = ts.wrapping_sub(o);
                cursor = self.next_read.unwrap_or(now32.wrapping_sub(latency));
                rel = i64::from(m_start.wrapping_sub(cursor) as i32);
                self.out_of_window_run = 0;
            } else if rel + n <= 0 {
                self.stats.late += 1;
                if let Some(sender) = &mut self.sender {
                    sender.observe(now, m_start);
                }
                return PushOutcome::Late;
            } else {
                self.stats.early += 1;
                return PushOutcome::TooEarly;
            }
        } else {
            self.out_of_window_run = 0;
        }

        // Frames before the cursor already played: skip them (the rest is still useful).
        let skip = if rel < 0 { (-rel) as usize } else { 0 };
        self.store(
            &pkt.payload[skip * self.bytes_per_frame..],
            m_start.wrapping_add(skip as u32),
        );
        self.first_frame
            .get_or_insert(m_start.wrapping_add(skip as u32));
        let end = m_start.wrapping_add(frames as u32);
        match self.newest_end {
            Some(newest) if (end.wrapping_sub(newest) as i32) <= 0 => {}
            _ => self.newest_end = Some(end),
        }
        // The sender is here: the silence read since its last packet was loss, unless it
        // lasted long enough to mean there was no sender.
        if !self.absent {
            self.stats.concealed_frames += self.pending_silence;
        }
        self.pending_silence = 0;
        self.absent = false;
        if let Some(sender) = &mut self.sender {
            sender.observe(now, m_start);
        }
        if skip > 0 {
            self.stats.late += 1;
            return PushOutcome::Late;
        }
        match class {
            SeqClass::Reordered => {
                self.stats.reordered += 1;
                PushOutcome::Reordered
            }
            _ => PushOutcome::Accepted,
        }
    }

    /// Reads one block into `out`, planar: channel `c` in
    /// `out[c × frames .. (c + 1) × frames]`, `frames = out.len() / channels` (at most
    /// [`MAX_READ_FRAMES`]). `now` is the media clock at the block's playout; frames with
    /// media time `now − latency ..` are read, missing ones as silence. Returns the number
    /// of frames read as silence (counted as concealed only once playout has reached the
    /// stream's first frame).
    pub fn read_block(&mut self, now: u64, out: &mut [f32]) -> Result<usize, Aes67Error> {
        let ch = self.channels;
        if !out.len().is_multiple_of(ch) {
            return Err(Aes67Error::LengthMismatch {
                expected: out.len() - out.len() % ch,
                got: out.len(),
            });
        }
        let frames = out.len() / ch;
        if frames > MAX_READ_FRAMES {
            return Err(Aes67Error::BlockTooLong {
                frames,
                max: MAX_READ_FRAMES,
            });
        }
        let start = (now as u32).wrapping_sub(self.cfg.latency_frames);
        let mut missing = 0;
        let mut concealed = 0;
        for i in 0..frames {
            let m = start.wrapping_add(i as u32);
            if !self.started
                && let Some(first) = self.first_frame
            {
                // Frames before the stream's first are not missing, just not yet due
                // (compared within ±2^31 frames, 12 hours).
                self.started = m.wrapping_sub(first) as i32 >= 0;
            }
            if let Some(until) = self.inserted_until
                && (m.wrapping_sub(until) as i32) >= 0
            {
                self.inserted_until = None;
            }
            let slot = m as usize % RING_FRAMES;
            if self.valid[slot] && self.tags[slot] == m {
                let src = &self.ring[slot * ch..(slot + 1) * ch];
                for (c, &s) in src.iter().enumerate() {
                    out[c * frames + i] = s;
                }
                self.valid[slot] = false;
            } else {
                for c in 0..ch {
                    out[c * frames + i] = 0.0;
                }
                missing += 1;
                let before =
                    |limit: Option<u32>| limit.is_some_and(|l| (m.wrapping_sub(l) as i32) < 0);
                if !self.started {
                } else if before(self.inserted_until) {
                    self.stats.inserted_frames += 1;
                } else if before(self.newest_end) {
                    // A later frame is here: this one was lost or late.
                    concealed += 1;
                } else if self.absent {
                    self.stats.no_sender_frames += 1;
                } else {
                    self.pending_silence += 1;
                    if self.pending_silence > ABSENT_AFTER_FRAMES {
                        self.absent = true;
                        self.newest_end = None;
                        self.stats.no_sender_frames += self.pending_silence;
                        self.pending_silence = 0;
                    }
                }
            }
        }
        self.next_read = Some(start.wrapping_add(frames as u32));
        self.stats.concealed_frames += concealed;
        Ok(missing)
    }

    /// Decodes whole frames of `payload` into the ring from media time `m0` on.
    fn store(&mut self, payload: &[u8], m0: u32) {
        let ch = self.channels;
        let bpf = self.bytes_per_frame;
        let frames = payload.len() / bpf;
        let mut done = 0;
        while done < frames {
            let m = m0.wrapping_add(done as u32);
            let slot = m as usize % RING_FRAMES;
            let run = (frames - done).min(RING_FRAMES - slot);
            let bytes = &payload[done * bpf..(done + run) * bpf];
            let dst = &mut self.ring[slot * ch..(slot + run) * ch];
            self.cfg.format.encoding.read(bytes, dst);
            for k in 0..run {
                self.tags[slot + k] = m.wrapping_add(k as u32);
                self.valid[slot + k] = true;
            }
            done += run;
        }
    }

    fn restart_sequence(&mut self) {
        if let Some(old) = self.seq.take() {
            self.lost_before += old.lost();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Channels, Encoding, Packetizer, TxConfig};
    use super::*;

    const LATENCY: u32 = 144; // 1 ms packets + 2 ms
    const TRANSIT: u64 = 10; // frames from the last sample's capture to arrival

    fn fmt() -> StreamFormat {
        StreamFormat::l24_1ms(Channels::STEREO)
    }

    /// A stream of `count` 1 ms stereo packets starting at `ts0` / `seq0`. Sample value of
    /// frame n (counting from the stream start): left (n+1)/2^23, right −(n+1)/2^23 —
    /// exact in L24, so any misplaced frame is visible.
    fn stream(ts0: u32, seq0: u16, count: usize) -> Vec<Vec<u8>> {
        let mut p = Packetizer::new(
            TxConfig {
                format: fmt(),
                payload_type: PayloadType::AES67_DEFAULT,
                ssrc: 0xfeed,
                first_sequence: seq0,
            },
            ts0,
        );
        (0..count)
            .map(|k| {
                let frames: Vec<f32> = (0..48)
                    .flat_map(|i| {
                        let v = (k * 48 + i + 1) as f32 / 8_388_608.0;
                        [v, -v]
                    })
                    .collect();
                let mut out = vec![0u8; 300];
                let n = p.write_packet(&frames, &mut out).unwrap();
                out.truncate(n);
                out
            })
            .collect()
    }

    fn expected_left(n: usize) -> f32 {
        (n + 1) as f32 / 8_388_608.0
    }

    /// Plays `blocks` 48-frame blocks. `base` is the media clock of the stream's first
    /// sample; packet k normally arrives at base + 48(k+1) + TRANSIT. `arrivals[k]` may
    /// override that (None = lost). Returns the left channel and the right channel.
    fn play(
        jb: &mut JitterBuffer,
        packets: &[Vec<u8>],
        base: u64,
        arrivals: &[Option<u64>],
        blocks: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut order: Vec<(u64, usize)> = arrivals
            .iter()
            .enumerate()
            .filter_map(|(k, a)| a.map(|t| (t, k)))
            .collect();
        order.sort();
        let mut next = 0;
        let (mut left, mut right) = (Vec::new(), Vec::new());
        let mut out = [0.0f32; 96];
        for j in 0..blocks as u64 {
            let now = base + 48 * j + u64::from(jb.config().latency_frames);
            while next < order.len() && order[next].0 <= now {
                jb.push(&packets[order[next].1], order[next].0);
                next += 1;
            }
            jb.read_block(now, &mut out).unwrap();
            left.extend_from_slice(&out[..48]);
            right.extend_from_slice(&out[48..]);
        }
        (left, right)
    }

    fn normal_arrivals(base: u64, count: usize) -> Vec<Option<u64>> {
        (0..count as u64)
            .map(|k| Some(base + 48 * (k + 1) + TRANSIT))
            .collect()
    }

    fn jb() -> JitterBuffer {
        JitterBuffer::new(RxConfig::new(PayloadType::AES67_DEFAULT, fmt())).unwrap()
    }

    /// Asserts frames of packet k are exact (or silent when `silent` holds k).
    fn check(left: &[f32], right: &[f32], count: usize, silent: &[usize]) {
        for k in 0..count {
            for i in 0..48 {
                let n = k * 48 + i;
                let want = if silent.contains(&k) {
                    0.0
                } else {
                    expected_left(n)
                };
                assert_eq!(left[n], want, "left frame {n} (packet {k})");
                assert_eq!(right[n], -want, "right frame {n} (packet {k})");
            }
        }
    }

    const BASE: u64 = 1_000_000;

    #[test]
    fn in_order_stream_is_bit_exact_at_the_latency() {
        let mut jb = jb();
        assert_eq!(jb.config().latency_frames, LATENCY);
        let packets = stream(BASE as u32, 100, 20);
        let (l, r) = play(&mut jb, &packets, BASE, &normal_arrivals(BASE, 20), 20);
        check(&l, &r, 20, &[]);
        let s = jb.stats();
        assert_eq!(s.received, 20);
        assert_eq!(
            (s.lost, s.late, s.duplicate, s.reordered, s.concealed_frames),
            (0, 0, 0, 0, 0)
        );
    }

    #[test]
    fn sheet_vector_12_3_decodes_to_its_samples() {
        // aes67.md §12.3: L24 stereo, 2 frames, PT 98, seq 1, ts 0xFB038000 (TAI 1.7e9 s).
        let packet: [u8; 24] = [
            0x80, 0x62, 0x00, 0x01, 0xfb, 0x03, 0x80, 0x00, 0x12, 0x34, 0x56, 0x78, 0x20, 0x00,
            0x00, 0xe0, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0xff, 0xff,
        ];
        let mut jb = jb();
        let media = super::super::media_clock(1_700_000_000 * 1_000_000_000);
        assert_eq!(jb.push(&packet, media), PushOutcome::Accepted);
        assert_eq!(jb.ssrc(), Some(0x1234_5678));
        let mut out = [9.0f32; 2 * 48];
        jb.read_block(media + u64::from(LATENCY), &mut out).unwrap();
        let lsb = 1.0 / 8_388_608.0;
        assert_eq!(
            (out[0], out[48]),
            (0.25, -0.25),
            "frame 0: +0x200000, -0x200000"
        );
        assert_eq!((out[1], out[49]), (lsb, -lsb), "frame 1: +1, -1");
        assert!(out[2..48].iter().chain(&out[50..]).all(|&v| v == 0.0));
    }

    #[test]
    fn lead_in_before_the_first_packet_is_not_concealment() {
        // The first packet arrives early; playout runs for 5 ms before its first frame.
        // Those 5 ms are silence but nothing was lost; a packet lost later is.
        let mut jb = jb();
        let packets = stream(BASE as u32, 100, 20);
        assert_eq!(jb.push(&packets[0], BASE - 200), PushOutcome::Accepted);
        let mut block = [0.0f32; 96];
        let mut silent = 0;
        for j in 0..5u64 {
            silent += jb
                .read_block(BASE - 240 + 48 * j + u64::from(LATENCY), &mut block)
                .unwrap();
        }
        assert_eq!(silent, 240, "every lead-in frame read as silence");
        assert_eq!(jb.stats().concealed_frames, 0);
        let mut arr = normal_arrivals(BASE, 20);
        arr[0] = None; // already pushed
        arr[12] = None;
        let (l, r) = play(&mut jb, &packets, BASE, &arr, 20);
        check(&l, &r, 20, &[12]);
        let s = jb.stats();
        assert_eq!((s.lost, s.concealed_frames), (1, 48));
    }

    #[test]
    fn reorder_is_repaired() {
        let mut jb = jb();
        let packets = stream(BASE as u32, 100, 20);
        let mut arr = normal_arrivals(BASE, 20);
        arr.swap(3, 4); // 4 arrives before 3, both in time
        let (l, r) = play(&mut jb, &packets, BASE, &arr, 20);
        check(&l, &r, 20, &[]);
        let s = jb.stats();
        assert_eq!(
            (s.reordered, s.lost, s.late, s.concealed_frames),
            (1, 0, 0, 0)
        );
    }

    #[test]
    fn loss_is_concealed_with_silence() {
        let mut jb = jb();
        let packets = stream(BASE as u32, 100, 20);
        let mut arr = normal_arrivals(BASE, 20);
        arr[5] = None;
        let (l, r) = play(&mut jb, &packets, BASE, &arr, 20);
        check(&l, &r, 20, &[5]);
        let s = jb.stats();
        assert_eq!((s.lost, s.concealed_frames, s.late), (1, 48, 0));
    }

    #[test]
    fn duplicate_is_dropped() {
        let mut jb = jb();
        let packets = stream(BASE as u32, 100, 20);
        let mut arr = normal_arrivals(BASE, 20);
        let (l, r) = {
            // Packet 2 again, one ms after the original.
            let mut packets = packets.clone();
            packets.push(packets[2].clone());
            arr.push(Some(BASE + 48 * 4 + TRANSIT));
            play(&mut jb, &packets, BASE, &arr, 20)
        };
        check(&l, &r, 20, &[]);
        let s = jb.stats();
        assert_eq!((s.duplicate, s.lost, s.reordered), (1, 0, 0));
    }

    #[test]
    fn late_packet_is_dropped_not_lost() {
        let mut jb = jb();
        let packets = stream(BASE as u32, 100, 20);
        let mut arr = normal_arrivals(BASE, 20);
        // Packet 6 plays from BASE + 288 + 144; deliver it after the whole packet played.
        arr[6] = Some(BASE + 48 * 7 + u64::from(LATENCY) + 1);
        let (l, r) = play(&mut jb, &packets, BASE, &arr, 20);
        check(&l, &r, 20, &[6]);
        let s = jb.stats();
        assert_eq!((s.late, s.lost, s.concealed_frames), (1, 0, 48));
        assert_eq!(
            s.received, 20,
            "a late packet counts as received (RFC 3550)"
        );
        assert_eq!(
            s.reordered, 0,
            "reordered counts only packets still in time"
        );
    }

    #[test]
    fn burst_within_latency_plays_out() {
        // 10 ms latency; packets 10..=17 are held and delivered together at packet 17's
        // arrival time (8 ms of burst).
        let mut cfg = RxConfig::new(PayloadType::AES67_DEFAULT, fmt());
        cfg.latency_frames = 480;
        let mut jb = JitterBuffer::new(cfg).unwrap();
        let packets = stream(BASE as u32, 0, 40);
        let mut arr = normal_arrivals(BASE, 40);
        for a in arr.iter_mut().take(18).skip(10) {
            *a = Some(BASE + 48 * 18 + TRANSIT);
        }
        let (l, r) = play(&mut jb, &packets, BASE, &arr, 40);
        check(&l, &r, 40, &[]);
        let s = jb.stats();
        assert_eq!((s.late, s.lost, s.concealed_frames), (0, 0, 0));
    }

    #[test]
    fn burst_beyond_latency_is_late() {
        // Same 8 ms burst with the default 3 ms latency: packets whose playout passed
        // before the burst (10..=15) are late, the rest play.
        let mut jb = jb();
        let packets = stream(BASE as u32, 0, 40);
        let mut arr = normal_arrivals(BASE, 40);
        let burst_at = BASE + 48 * 18 + TRANSIT; // = BASE + 874
        for a in arr.iter_mut().take(18).skip(10) {
            *a = Some(burst_at);
        }
        let (l, _) = play(&mut jb, &packets, BASE, &arr, 40);
        // The burst is pushed before the block at now >= 874 is read, i.e. the block with
        // now = BASE + 912 (j = 16) reading media frames 768..816: packet 16 onward plays.
        for k in 10..16 {
            assert!(
                l[k * 48..(k + 1) * 48].iter().all(|&v| v == 0.0),
                "packet {k} silent"
            );
        }
        for k in 16..40 {
            assert_eq!(l[k * 48], expected_left(k * 48), "packet {k} plays");
        }
        let s = jb.stats();
        assert_eq!(s.late, 6);
        assert_eq!(s.lost, 0);
        assert_eq!(s.concealed_frames, 6 * 48);
    }

    #[test]
    fn sequence_wrap_with_loss_and_reorder() {
        // 10 ms latency so that a packet overtaken by two others is still in time.
        let mut cfg = RxConfig::new(PayloadType::AES67_DEFAULT, fmt());
        cfg.latency_frames = 480;
        let mut jb = JitterBuffer::new(cfg).unwrap();
        let packets = stream(BASE as u32, 65_530, 20); // seq 65530..=65535, 0..=13
        let mut arr = normal_arrivals(BASE, 20);
        arr[6] = None; // seq 0 lost
        arr.swap(5, 7); // seq 65535 arrives after seq 1
        let (l, r) = play(&mut jb, &packets, BASE, &arr, 20);
        check(&l, &r, 20, &[6]);
        let s = jb.stats();
        assert_eq!((s.lost, s.reordered, s.duplicate, s.late), (1, 1, 0, 0));
    }

    #[test]
    fn timestamp_wrap() {
        // The stream's timestamps cross 2^32 in packet 2; the media clock (u64) crosses
        // 2^32 at the same point.
        let base = (1u64 << 32) - 100;
        let mut jb = jb();
        let packets = stream(base as u32, 7, 10);
        let (l, r) = play(&mut jb, &packets, base, &normal_arrivals(base, 10), 10);
        check(&l, &r, 10, &[]);
        assert_eq!(jb.stats().concealed_frames, 0);
    }

    #[test]
    fn media_clock_offset_from_sdp() {
        // a=mediaclk:direct=12345: rtp_ts = media + 12345.
        let mut cfg = RxConfig::new(PayloadType::AES67_DEFAULT, fmt());
        cfg.alignment = Alignment::MediaClock { offset: 12_345 };
        let mut jb = JitterBuffer::new(cfg).unwrap();
        let packets = stream((BASE as u32).wrapping_add(12_345), 0, 10);
        let (l, r) = play(&mut jb, &packets, BASE, &normal_arrivals(BASE, 10), 10);
        check(&l, &r, 10, &[]);
    }

    #[test]
    fn misaligned_sender_is_silent_in_media_clock_mode() {
        // Timestamps 37 s off (a TAI/UTC mix-up): everything is early, nothing plays.
        let mut jb = jb();
        let off = 37 * 48_000;
        let packets = stream((BASE + off) as u32, 0, 10);
        let (l, _) = play(&mut jb, &packets, BASE, &normal_arrivals(BASE, 10), 10);
        assert!(l.iter().all(|&v| v == 0.0));
        let s = jb.stats();
        assert_eq!(s.early, 10);
        assert_eq!(s.concealed_frames, 0, "the stream never started");
    }

    #[test]
    fn first_packet_alignment_for_non_ptp_senders() {
        let mut cfg = RxConfig::new(PayloadType::AES67_DEFAULT, fmt());
        cfg.alignment = Alignment::FirstPacket;
        let mut jb = JitterBuffer::new(cfg).unwrap();
        // Arbitrary sender timestamps; the first packet arrives at BASE + 48 + TRANSIT.
        let packets = stream(0x1234_5678, 0, 20);
        let (l, r) = play(&mut jb, &packets, BASE, &normal_arrivals(BASE, 20), 24);
        // Packet 0 plays `latency` after its arrival: frame 0 of it lands at block
        // position (48 + TRANSIT) = 58 frames into the output.
        let lead = 48 + TRANSIT as usize;
        assert!(l[..lead].iter().all(|&v| v == 0.0));
        for n in 0..20 * 48 {
            assert_eq!(l[lead + n], expected_left(n), "frame {n}");
            assert_eq!(r[lead + n], -expected_left(n), "frame {n}");
        }
        // Sender restarts with new timestamps (same SSRC, continuing sequence): after 16
        // out-of-window packets the buffer re-anchors.
        let restarted = stream(0x0bad_0000, 20, 40);
        for (k, p) in restarted.iter().enumerate() {
            let now = BASE + 2000 + 48 * k as u64;
            jb.push(p, now);
        }
        let s = jb.stats();
        assert_eq!(s.resyncs, 1);
        assert_eq!(s.early + s.late, 15);
    }

    #[test]
    fn filters_payload_type_ssrc_and_garbage() {
        let mut jb = jb();
        let packets = stream(BASE as u32, 0, 30);
        assert_eq!(jb.push(&packets[0], BASE + 58), PushOutcome::Accepted);
        let mut wrong_pt = packets[1].clone();
        wrong_pt[1] = 97;
        assert_eq!(
            jb.push(&wrong_pt, BASE + 106),
            PushOutcome::WrongPayloadType
        );
        assert_eq!(
            jb.push(&packets[1][..100], BASE + 106),
            PushOutcome::Malformed
        );
        assert_eq!(jb.push(&[0u8; 5], BASE + 106), PushOutcome::Malformed);
        assert_eq!(
            jb.push(&packets[1][..12], BASE + 106),
            PushOutcome::Malformed
        );
        // Another SSRC: ignored 7 times, followed on the 8th.
        for (k, packet) in packets.iter().enumerate().take(8).skip(1) {
            let mut p = packet.clone();
            p[8..12].copy_from_slice(&0xbeefu32.to_be_bytes());
            assert_eq!(
                jb.push(&p, BASE + 48 * k as u64 + 58),
                PushOutcome::ForeignSsrc
            );
        }
        let mut p = packets[8].clone();
        p[8..12].copy_from_slice(&0xbeefu32.to_be_bytes());
        assert_eq!(jb.push(&p, BASE + 48 * 8 + 58), PushOutcome::Accepted);
        assert_eq!(jb.ssrc(), Some(0xbeef));
        let s = jb.stats();
        assert_eq!(
            (s.wrong_payload_type, s.malformed, s.foreign_ssrc, s.resyncs),
            (1, 3, 8, 1)
        );
    }

    #[test]
    fn sequence_jump_needs_confirmation() {
        let mut jb = jb();
        let packets = stream(BASE as u32, 10, 6);
        for (k, p) in packets.iter().take(3).enumerate() {
            assert_eq!(jb.push(p, BASE + 48 * k as u64 + 58), PushOutcome::Accepted);
        }
        // Same timeline, sequence numbers jump by 20000.
        let mut a = packets[3].clone();
        a[2..4].copy_from_slice(&20_013u16.to_be_bytes());
        let mut b = packets[4].clone();
        b[2..4].copy_from_slice(&20_014u16.to_be_bytes());
        assert_eq!(jb.push(&a, BASE + 48 * 3 + 58), PushOutcome::Probation);
        assert_eq!(jb.push(&b, BASE + 48 * 4 + 58), PushOutcome::Accepted);
        let s = jb.stats();
        assert_eq!(s.resyncs, 1);
        assert_eq!(s.lost, 0, "the jump is not counted as 20000 losses");
    }

    #[test]
    fn latency_bounds_and_read_errors() {
        let mut cfg = RxConfig::new(PayloadType::AES67_DEFAULT, fmt());
        cfg.latency_frames = 1921;
        assert!(matches!(
            JitterBuffer::new(cfg),
            Err(Aes67Error::BadLatency { .. })
        ));
        cfg.latency_frames = 47;
        assert!(matches!(
            JitterBuffer::new(cfg),
            Err(Aes67Error::BadLatency { min: 48, .. })
        ));
        cfg.latency_frames = 1920;
        let mut jb = JitterBuffer::new(cfg).unwrap();
        assert!(jb.read_block(0, &mut [0.0; 95]).is_err());
        assert!(jb.read_block(0, &mut [0.0; 2 * 481]).is_err());
        assert_eq!(jb.read_block(0, &mut [1.0; 96]), Ok(48));
        assert_eq!(jb.stats().concealed_frames, 0, "not started yet");
    }

    /// Distinct values a [`mono_packet`] frame counts through before wrapping.
    const RAMP: u64 = 4_000_000;

    /// A 1 ms L24 mono packet: frame n of the stream carries (n mod RAMP) + 1 LSBs.
    fn mono_packet(k: u64, ts0: u32) -> Vec<u8> {
        let mut p = vec![0x80, 98];
        p.extend_from_slice(&(k as u16).to_be_bytes());
        p.extend_from_slice(&ts0.wrapping_add(48 * k as u32).to_be_bytes());
        p.extend_from_slice(&0xfeedu32.to_be_bytes());
        for i in 0..48 {
            let v = ((k * 48 + i) % RAMP + 1) as u32;
            p.extend_from_slice(&v.to_be_bytes()[1..]);
        }
        p
    }

    /// What a virtual run of a mono 1 ms stream through a jitter buffer gave.
    struct Run {
        /// Frames heard out of order (a gap, a repeat or a jump) after `settle_s`.
        discontinuities: usize,
        /// Silent frames after the first sound, before `settle_s` and after.
        silent_before: usize,
        silent_after: usize,
        /// Arrival-to-playout delay of the stream's frames after `settle_s`, in frames.
        delay: (u64, u64),
        /// The counters at the end.
        stats: RxStats,
    }

    /// Plays `seconds` of a sender whose clock is `ppm` off ours through `jb` the way the
    /// gateway's media thread does: it wakes every 250 µs of our media clock, pushes what
    /// arrived, and reads 48-frame chunks while [`JitterBuffer::playout_time`] has passed
    /// their end. Packet k leaves the sender when its last frame is captured (sender time
    /// 48(k+1)) and arrives `delay(k)` frames later.
    fn run_virtual(
        jb: &mut JitterBuffer,
        ppm: f64,
        seconds: u64,
        settle_s: u64,
        delay: impl Fn(u64) -> u64,
    ) -> Run {
        let t0 = 7_000_000_000u64;
        let arrival = |k: u64| t0 + (48.0 * (k + 1) as f64 / (1.0 + ppm * 1e-6)) as u64 + delay(k);
        // Enough for a sender up to 1 % fast.
        let packets = seconds * 1010 + 100;
        let mut next_packet = 0u64;
        let mut cursor: Option<u64> = None;
        let mut block = [0.0f32; 48];
        let mut last: Option<u64> = None;
        let mut run = Run {
            discontinuities: 0,
            silent_before: 0,
            silent_after: 0,
            delay: (u64::MAX, 0),
            stats: RxStats::default(),
        };
        let settle = t0 + settle_s * 48_000;
        let mut t = t0;
        while t < t0 + seconds * 48_000 {
            while next_packet < packets && arrival(next_packet) <= t {
                jb.push(&mono_packet(next_packet, 0x5000_0000), arrival(next_packet));
                next_packet += 1;
            }
            let now = jb.playout_time(t);
            let c = cursor.get_or_insert(now);
            while now >= *c + 48 {
                jb.read_block(*c, &mut block).unwrap();
                *c += 48;
                for &v in &block {
                    let value = (v * 8_388_608.0).round() as u64;
                    if value == 0 {
                        if last.is_some() {
                            if t < settle {
                                run.silent_before += 1;
                            } else {
                                run.silent_after += 1;
                            }
                        }
                        continue;
                    }
                    let n_mod = value - 1;
                    if let Some(previous) = last
                        && t >= settle
                        && n_mod != (previous + 1) % RAMP
                    {
                        run.discontinuities += 1;
                    }
                    last = Some(n_mod);
                    if t >= settle {
                        // Frame n_mod (mod RAMP) came with packet n / 48; which wrap of
                        // the ramp: the one closest to what was sent by now.
                        let sent = next_packet * 48;
                        let n = sent - (sent + RAMP - n_mod) % RAMP;
                        let d = t - arrival(n / 48);
                        run.delay = (run.delay.0.min(d), run.delay.1.max(d));
                    }
                }
            }
            t += 12;
        }
        run.stats = jb.stats();
        run
    }

    fn first_packet_mono(latency: u32, max_latency: u32) -> JitterBuffer {
        let format = StreamFormat::l24_1ms(Channels::new(1).unwrap());
        let mut cfg = RxConfig::new(PayloadType::AES67_DEFAULT, format);
        cfg.alignment = Alignment::FirstPacket;
        cfg.latency_frames = latency;
        cfg.max_latency_frames = max_latency;
        JitterBuffer::new(cfg).unwrap()
    }

    #[test]
    fn a_drifting_non_ptp_sender_plays_at_a_steady_latency_for_ten_minutes() {
        for ppm in [-2000.0, -200.0, 200.0, 2000.0] {
            let mut jb = first_packet_mono(LATENCY, LATENCY);
            // 10 frames of transit, and every 5th packet up to 1 ms later.
            // Locked within a second; the phase settles within a few more (2 s time
            // constant): the latency is checked from 5 s on, gaps and late packets from
            // the start.
            let run = run_virtual(&mut jb, ppm, 600, 5, |k| {
                10 + if k % 5 == 0 { (k * 13) % 48 } else { 0 }
            });
            let s = run.stats;
            assert_eq!((s.late, s.resyncs, s.lost), (0, 0, 0), "{ppm}: {s:?}");
            assert_eq!(run.silent_before + run.silent_after, 0, "{ppm}: gaps");
            assert_eq!(run.discontinuities, 0, "{ppm}");
            assert_eq!(s.concealed_frames, 0, "{ppm}");
            // A frame leaves the buffer in the 1 ms chunk read once the sender's clock
            // is past the chunk's end: between `latency` - 1 ms and `latency` + 2 ms
            // (+ 250 µs of wake-up) after its packet arrived, depending on its place in
            // the packet and in the chunk, and on its packet's jitter. Within 1 ms of
            // that band over the ten minutes (200 ppm of drift alone would be 120 ms).
            let latency = u64::from(LATENCY);
            let (lo, hi) = run.delay;
            assert!(
                lo + 48 >= latency - 48 && hi <= latency + 96 + 12 + 48,
                "{ppm}: arrival to playout {lo}..{hi} frames, latency {latency}"
            );
            let measured = jb.sender_ppm().unwrap();
            assert!(
                (measured - ppm).abs() < 5.0,
                "{ppm}: measured {measured} ppm"
            );
            assert!((jb.playout_rate_ppm() - ppm).abs() < 10.0, "{ppm}");
        }
    }

    /// ffmpeg's RTP muxer with `-re`: packets leave in bursts, here every 20 ms with the
    /// last 20 ms of packets, so the oldest of each burst is 19 ms late. The stream starts
    /// with the last packet of a burst (the first packet is on time).
    fn burst_delay(k: u64) -> u64 {
        10 + (19 - (k + 19) % 20) * 48
    }

    #[test]
    fn a_bursty_sender_raises_the_latency_to_what_it_needs_then_plays_clean() {
        let mut jb = first_packet_mono(LATENCY, MAX_LATENCY_FRAMES);
        let run = run_virtual(&mut jb, 0.0, 30, 3, burst_delay);
        let s = run.stats;
        // The latency grew, in a few steps, to cover the 19 ms bursts (and not much
        // more: at most the default latency on top).
        let latency = jb.latency_frames();
        assert!(
            (19 * 48..=19 * 48 + LATENCY + 96).contains(&latency),
            "latency {latency}"
        );
        assert!((1..=5).contains(&s.latency_increases), "{s:?}");
        assert_eq!(jb.needed_latency_frames(), latency);
        assert_eq!(run.silent_after, 0);
        assert_eq!(run.discontinuities, 0);
        assert!(s.late <= 5, "late only before adapting: {s:?}");
        // Only the first burst was missing when its time came; the pause the growth
        // inserted is not loss.
        assert!(s.concealed_frames <= 19 * 48, "{s:?}");
        assert!(s.inserted_frames > 0);
    }

    #[test]
    fn a_sender_needing_more_than_the_maximum_is_flagged() {
        let mut jb = first_packet_mono(LATENCY, 480);
        let run = run_virtual(&mut jb, 0.0, 5, 2, burst_delay);
        assert_eq!(jb.latency_frames(), 480, "grown to the maximum");
        assert!(jb.needed_latency_frames() > 480);
        assert!(run.stats.late > 100, "{:?}", run.stats);
    }

    #[test]
    fn no_sender_is_not_concealment() {
        // 2 s of stream, 1 lost packet, then 10 s without any packet, then the sender is
        // back for 1 s.
        let mut jb = jb();
        let mut block = [0.0f32; 96];
        let packets = stream(BASE as u32, 0, 13_000);
        for j in 0..13_000u64 {
            let now = BASE + 48 * j + u64::from(LATENCY);
            let k = j as usize;
            let sending = !(2_000..12_000).contains(&k) && k != 500;
            if sending {
                jb.push(&packets[k], BASE + 48 * j + 48 + TRANSIT);
            }
            jb.read_block(now, &mut block).unwrap();
        }
        let s = jb.stats();
        assert_eq!(s.concealed_frames, 48, "only the lost packet: {s:?}");
        // The 10 s away, and the first packet after them: a sequence jump of 10000 is
        // confirmed by the next packet first (RFC 3550 A.1 probation).
        assert_eq!(s.no_sender_frames, 10_001 * 48, "{s:?}");
    }

    #[test]
    fn every_packet_time_round_trips_through_tx_and_rx() {
        for pt in PacketTime::ALL {
            let format = StreamFormat {
                encoding: Encoding::L16,
                channels: Channels::new(8).unwrap(),
                packet_time: pt,
            };
            let mut tx = Packetizer::new(
                TxConfig {
                    format,
                    payload_type: PayloadType::AES67_DEFAULT,
                    ssrc: 1,
                    first_sequence: 0,
                },
                BASE as u32,
            );
            let mut rx =
                JitterBuffer::new(RxConfig::new(PayloadType::AES67_DEFAULT, format)).unwrap();
            let latency = u64::from(rx.config().latency_frames);
            // Sender: engine block j covers media frames BASE + 48j ..; channel c carries
            // (n+1)(c+1)/2^15. Packets leave at the end of the block that completes them
            // and arrive TRANSIT frames later.
            let mut out = vec![0u8; format.packet_len()];
            let mut wire: Vec<(u64, Vec<u8>)> = Vec::new();
            for j in 0..40u64 {
                let chans: Vec<Vec<f32>> = (0..8u64)
                    .map(|c| {
                        (0..48u64)
                            .map(|i| ((48 * j + i + 1) * (c + 1)) as f32 / 32_768.0)
                            .collect()
                    })
                    .collect();
                let refs: Vec<&[f32]> = chans.iter().map(|v| v.as_slice()).collect();
                tx.push_block(&refs).unwrap();
                while let Some(n) = tx.poll_packet(&mut out).unwrap() {
                    wire.push((BASE + 48 * (j + 1) + TRANSIT, out[..n].to_vec()));
                }
            }
            // Receiver: block j plays at BASE + 48j + latency; everything that arrived by
            // then is pushed first.
            let mut block = vec![0.0f32; 8 * 48];
            let mut got: Vec<Vec<f32>> = vec![Vec::new(); 8];
            let mut next = 0;
            for j in 0..40u64 {
                let now = BASE + 48 * j + latency;
                while next < wire.len() && wire[next].0 <= now {
                    assert_eq!(
                        rx.push(&wire[next].1, wire[next].0),
                        PushOutcome::Accepted,
                        "{pt:?}"
                    );
                    next += 1;
                }
                rx.read_block(now, &mut block).unwrap();
                for (c, g) in got.iter_mut().enumerate() {
                    g.extend_from_slice(&block[c * 48..(c + 1) * 48]);
                }
            }
            // With latency = packet time + 2 ms every frame is in time.
            for (c, g) in got.iter().enumerate() {
                for (n, &v) in g.iter().enumerate() {
                    let want = ((n + 1) * (c + 1)) as f32 / 32_768.0;
                    assert_eq!(v, want, "{pt:?} ch {c} frame {n}");
                }
            }
            assert_eq!(rx.stats().concealed_frames, 0, "{pt:?}");
        }
    }
}
