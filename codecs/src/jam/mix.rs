//! Receive side of a jam client: assigns remote jammers to seats by client_id, keeps
//! one [`JitterBuffer`] per seat, and mixes the seats with per-channel gain, mute and
//! pan into a mono or stereo output (rtjam.md §3, §10).
//!
//! A driver that can tell senders apart (a hosted room knows each member's address)
//! passes a *source* with every datagram: seats are then keyed by source and client_id,
//! so a second sender using a jammer's client_id gets a seat of its own instead of
//! playing into the jammer's buffer. A jammer's *stream* lasts from the packet that
//! seats it until its buffer expires (1 s without audio, rtjam.md §3); its counters
//! ([`RemoteSeat::stats`]) start from zero with each stream.
//!
//! rtjam's client has 11 remote seats (24 mixer channels minus the local pair, two per
//! jammer); a 12th remote jammer is not heard. Gain is set in dB and stored linear,
//! clamped to ×0..×8 like rtjam's ChannelGain (rtjam.md §8). Pan uses rtjam's law,
//! left = √(1 − p), right = √(1 + p): constant power, unity on both sides at centre.
//! The mix is a plain sum, without limiter (as rtjam); the patchbay saturates later.

use std::ops::Range;

use super::jitter::{JitterBuffer, JitterConfig, JitterConfigError, JitterStats, PushOutcome};
use super::packet::{JamChannel, JamPacket, ParseError};

/// Remote seats of the stock rtjam client (rtjam.md §3).
pub const DEFAULT_REMOTE_SEATS: usize = 11;
/// Highest linear gain a strip accepts (rtjam's ×8, about +18 dB).
pub const MAX_LINEAR_GAIN: f32 = 8.0;

/// Gain, mute and pan of one mono channel in the mix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelStrip {
    gain: f32,
    pan: f32,
    muted: bool,
}

impl Default for ChannelStrip {
    fn default() -> Self {
        ChannelStrip::UNITY
    }
}

impl ChannelStrip {
    /// 0 dB, centre, not muted.
    pub const UNITY: ChannelStrip = ChannelStrip {
        gain: 1.0,
        pan: 0.0,
        muted: false,
    };

    /// Linear gain (0..=8).
    pub fn gain(&self) -> f32 {
        self.gain
    }

    /// Gain in dB (−∞ for a gain of 0).
    pub fn gain_db(&self) -> f32 {
        20.0 * self.gain.log10()
    }

    /// Sets the gain in dB; the linear value is clamped to ×0..×8. NaN is ignored.
    pub fn set_gain_db(&mut self, db: f32) {
        if db.is_nan() {
            return;
        }
        self.gain = 10f32.powf(db / 20.0).clamp(0.0, MAX_LINEAR_GAIN);
    }

    /// Pan position, −1 (left) ..= +1 (right).
    pub fn pan(&self) -> f32 {
        self.pan
    }

    /// Sets the pan position, clamped to −1..=1; NaN means centre.
    pub fn set_pan(&mut self, pan: f32) {
        self.pan = if pan.is_nan() {
            0.0
        } else {
            pan.clamp(-1.0, 1.0)
        };
    }

    /// Whether the channel is muted.
    pub fn muted(&self) -> bool {
        self.muted
    }

    /// Mutes or unmutes the channel.
    pub fn set_muted(&mut self, muted: bool) {
        self.muted = muted;
    }

    /// Effective gain into a mono mix (0 when muted). Pan does not apply: a
    /// constant-power pan moves a signal between sides without changing its level.
    pub fn mono_gain(&self) -> f32 {
        if self.muted { 0.0 } else { self.gain }
    }

    /// Effective (left, right) gains: gain·√(1 − pan), gain·√(1 + pan) (rtjam.md §10).
    pub fn stereo_gains(&self) -> (f32, f32) {
        let g = self.mono_gain();
        (g * (1.0 - self.pan).sqrt(), g * (1.0 + self.pan).sqrt())
    }

    /// Adds `input` × mono gain into `out` (over the shorter of the two).
    pub fn mix_mono(&self, input: &[f32], out: &mut [f32]) {
        let g = self.mono_gain();
        if g == 0.0 {
            return;
        }
        for (o, &x) in out.iter_mut().zip(input) {
            *o += g * x;
        }
    }

    /// Adds `input` into `left` and `right` with the stereo gains.
    pub fn mix_stereo(&self, input: &[f32], left: &mut [f32], right: &mut [f32]) {
        let (gl, gr) = self.stereo_gains();
        if gl == 0.0 && gr == 0.0 {
            return;
        }
        for ((l, r), &x) in left.iter_mut().zip(right.iter_mut()).zip(input) {
            *l += gl * x;
            *r += gr * x;
        }
    }
}

/// One remote jammer's place in the mix.
#[derive(Debug, Clone)]
pub struct RemoteSeat {
    owner: Option<u32>,
    last_owner: Option<u32>,
    source: u64,
    buffer: JitterBuffer,
    /// The buffer's counters when the current stream took the seat.
    baseline: JitterStats,
    strips: [ChannelStrip; 2],
}

impl RemoteSeat {
    /// client_id of the jammer on this seat, `None` when free.
    pub fn client_id(&self) -> Option<u32> {
        self.owner
    }

    /// The source the jammer's packets come from (0 when the driver gives none).
    pub fn source(&self) -> u64 {
        self.source
    }

    /// The seat's jitter buffer (depth, delay; its counters are the seat's lifetime
    /// totals).
    pub fn buffer(&self) -> &JitterBuffer {
        &self.buffer
    }

    /// Counters of the current jammer's stream: from the packet that seated it (the
    /// first, or the first after its buffer expired, or from a new source) on.
    pub fn stats(&self) -> JitterStats {
        self.buffer.stats().since(&self.baseline)
    }

    /// Starts counting a new stream.
    fn new_stream(&mut self) {
        self.baseline = *self.buffer.stats();
    }

    /// The strip of one channel.
    pub fn strip(&self, channel: JamChannel) -> &ChannelStrip {
        &self.strips[channel.index()]
    }

    /// The strip of one channel, to change.
    pub fn strip_mut(&mut self, channel: JamChannel) -> &mut ChannelStrip {
        &mut self.strips[channel.index()]
    }
}

/// Settings of a [`JamReceiver`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReceiverConfig {
    /// Remote seats (default 11, as rtjam).
    pub seats: usize,
    /// Largest block mixed in one pass; longer reads are split (default 1024).
    pub max_block: usize,
    /// Jitter buffer settings of every seat.
    pub jitter: JitterConfig,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            seats: DEFAULT_REMOTE_SEATS,
            max_block: 1024,
            jitter: JitterConfig::default(),
        }
    }
}

/// What [`JamReceiver::receive`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiveOutcome {
    /// Audio queued (or refused by the seat's buffer, see `pushed`).
    Audio {
        /// Seat index.
        seat: usize,
        /// What the jitter buffer did.
        pushed: PushOutcome,
    },
    /// A header-only packet (the server's echo): server_time and beat noted.
    HeaderOnly,
    /// A packet carrying our own client_id: server_time and beat noted, audio ignored.
    OwnClientId,
    /// Every seat is taken: this jammer is not heard (like rtjam's 12th jammer).
    NoFreeSeat {
        /// The jammer left out.
        client_id: u32,
    },
}

/// Counters of a [`JamReceiver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ReceiverStats {
    /// Datagrams offered.
    pub datagrams: u64,
    /// Datagrams that were not jam packets.
    pub malformed: u64,
    /// Header-only packets.
    pub header_only: u64,
    /// Packets carrying our own client_id.
    pub own_client_id: u64,
    /// Audio packets dropped because every seat was taken.
    pub no_free_seat: u64,
    /// Times a seat was given to a jammer.
    pub seats_assigned: u64,
}

/// Receive path of one jam client: datagrams in, mixed audio out. Allocates only in
/// [`JamReceiver::new`].
#[derive(Debug, Clone)]
pub struct JamReceiver {
    own_client_id: Option<u32>,
    seats: Vec<RemoteSeat>,
    scratch: [Vec<f32>; 2],
    sample_rate_hz: u32,
    last_server_time: u64,
    last_beat: Option<u8>,
    stats: ReceiverStats,
}

impl JamReceiver {
    /// Preallocates `config.seats` jitter buffers and the mixing scratch.
    pub fn new(config: ReceiverConfig) -> Result<JamReceiver, JitterConfigError> {
        let buffer = JitterBuffer::new(config.jitter)?;
        let seat = RemoteSeat {
            owner: None,
            last_owner: None,
            source: 0,
            buffer,
            baseline: JitterStats::default(),
            strips: [ChannelStrip::UNITY; 2],
        };
        let block = config.max_block.max(1);
        Ok(JamReceiver {
            own_client_id: None,
            seats: vec![seat; config.seats],
            scratch: [vec![0.0; block], vec![0.0; block]],
            sample_rate_hz: config.jitter.sample_rate.hz(),
            last_server_time: 0,
            last_beat: None,
            stats: ReceiverStats::default(),
        })
    }

    /// Our own client_id: packets carrying it are never given a seat.
    pub fn set_own_client_id(&mut self, client_id: Option<u32>) {
        self.own_client_id = client_id;
    }

    /// server_time of the most recent packet received (to echo, rtjam.md §5); 0 before.
    pub fn last_server_time(&self) -> u64 {
        self.last_server_time
    }

    /// Metronome beat of the most recent packet received (rtjam.md §6).
    pub fn last_beat(&self) -> Option<u8> {
        self.last_beat
    }

    /// Counters.
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// All seats, in mixer order.
    pub fn seats(&self) -> &[RemoteSeat] {
        &self.seats
    }

    /// One seat, to change its strips.
    pub fn seat_mut(&mut self, seat: usize) -> Option<&mut RemoteSeat> {
        self.seats.get_mut(seat)
    }

    /// Seat of the jammer with this client_id, if seated.
    pub fn seat_of(&self, client_id: u32) -> Option<usize> {
        self.seats.iter().position(|s| s.owner == Some(client_id))
    }

    /// Parses and routes one received datagram (arrival in µs on the clock later
    /// passed to the mix calls), from a driver that does not tell sources apart.
    pub fn receive(
        &mut self,
        arrival_us: u64,
        datagram: &[u8],
    ) -> Result<ReceiveOutcome, ParseError> {
        self.receive_from(arrival_us, 0, datagram)
    }

    /// Parses and routes one received datagram from `source` (see the module
    /// documentation).
    pub fn receive_from(
        &mut self,
        arrival_us: u64,
        source: u64,
        datagram: &[u8],
    ) -> Result<ReceiveOutcome, ParseError> {
        self.stats.datagrams += 1;
        match JamPacket::parse(datagram) {
            Ok(packet) => Ok(self.receive_packet_from(arrival_us, source, &packet)),
            Err(e) => {
                self.stats.malformed += 1;
                Err(e)
            }
        }
    }

    /// Routes one parsed packet: notes server_time and beat, then queues its audio on the
    /// sender's seat, assigning a free seat to a new client_id (rtjam.md §10 step 1).
    pub fn receive_packet(&mut self, arrival_us: u64, packet: &JamPacket<'_>) -> ReceiveOutcome {
        self.receive_packet_from(arrival_us, 0, packet)
    }

    /// [`receive_packet`](Self::receive_packet) for a packet from `source`.
    pub fn receive_packet_from(
        &mut self,
        arrival_us: u64,
        source: u64,
        packet: &JamPacket<'_>,
    ) -> ReceiveOutcome {
        let header = packet.header();
        self.last_server_time = header.server_time;
        self.last_beat = Some(header.beat);
        if packet.is_header_only() {
            self.stats.header_only += 1;
            return ReceiveOutcome::HeaderOnly;
        }
        if self.own_client_id == Some(header.client_id) {
            self.stats.own_client_id += 1;
            return ReceiveOutcome::OwnClientId;
        }
        let Some(seat) = self.seat_for(header.client_id, source, arrival_us) else {
            self.stats.no_free_seat += 1;
            return ReceiveOutcome::NoFreeSeat {
                client_id: header.client_id,
            };
        };
        let pushed = self.seats[seat].buffer.push_packet(arrival_us, packet);
        ReceiveOutcome::Audio { seat, pushed }
    }

    /// The seat this client_id owns from `source`, or a free one: preferably the seat
    /// it had before (keeping its strip settings), else one never used, else any whose
    /// jammer expired. A stream that starts here starts its counters.
    fn seat_for(&mut self, client_id: u32, source: u64, arrival_us: u64) -> Option<usize> {
        if let Some(i) = self
            .seats
            .iter()
            .position(|s| s.owner == Some(client_id) && s.source == source)
        {
            let seat = &mut self.seats[i];
            if seat.buffer.is_expired(arrival_us) {
                // Back after the expiry, before a read freed the seat: a new stream.
                seat.buffer.reset();
                seat.new_stream();
            }
            return Some(i);
        }
        let free = |s: &RemoteSeat| s.owner.is_none() || s.buffer.is_expired(arrival_us);
        let pick = self
            .seats
            .iter()
            .position(|s| free(s) && s.last_owner == Some(client_id))
            .or_else(|| {
                self.seats
                    .iter()
                    .position(|s| free(s) && s.last_owner.is_none())
            })
            .or_else(|| self.seats.iter().position(free))?;
        let seat = &mut self.seats[pick];
        if seat.last_owner != Some(client_id) {
            seat.strips = [ChannelStrip::UNITY; 2];
        }
        seat.buffer.reset();
        seat.new_stream();
        seat.owner = Some(client_id);
        seat.source = source;
        seat.last_owner = Some(client_id);
        self.stats.seats_assigned += 1;
        Some(pick)
    }

    /// Reads one seat's two channels unmixed (for routing seats separately). Do not also
    /// mix the same block: each read advances the seat. Returns samples from packets.
    pub fn pull_seat(
        &mut self,
        seat: usize,
        now_us: u64,
        out1: &mut [f32],
        out2: &mut [f32],
    ) -> usize {
        let Some(s) = self.seats.get_mut(seat) else {
            out1.fill(0.0);
            out2.fill(0.0);
            return 0;
        };
        let n = s.buffer.pull(now_us, out1, out2);
        if !s.buffer.is_active() {
            s.owner = None;
        }
        n
    }

    /// Mixes every seat into `out` (overwritten), mono: Σ gain·sample over both channels.
    pub fn mix_mono(&mut self, now_us: u64, out: &mut [f32]) {
        out.fill(0.0);
        self.pull_seats(now_us, out.len(), |strips, s1, s2, range| {
            strips[0].mix_mono(s1, &mut out[range.clone()]);
            strips[1].mix_mono(s2, &mut out[range]);
        });
    }

    /// Mixes every seat into `left` and `right` (overwritten) with the pan law.
    /// Both should have the same length; the excess of the longer one is zeroed.
    pub fn mix_stereo(&mut self, now_us: u64, left: &mut [f32], right: &mut [f32]) {
        left.fill(0.0);
        right.fill(0.0);
        let n = left.len().min(right.len());
        self.pull_seats(now_us, n, |strips, s1, s2, range| {
            let (l, r) = (&mut left[range.clone()], &mut right[range]);
            strips[0].mix_stereo(s1, l, r);
            strips[1].mix_stereo(s2, l, r);
        });
    }

    /// Reads `len` samples from every seated jammer in chunks of the scratch size, each
    /// chunk at its own time, and hands each seat's chunk with its strips to `mix`.
    fn pull_seats(
        &mut self,
        now_us: u64,
        len: usize,
        mut mix: impl FnMut(&[ChannelStrip; 2], &[f32], &[f32], Range<usize>),
    ) {
        let block = self.scratch[0].len();
        let mut start = 0;
        while start < len {
            let end = (start + block).min(len);
            let t = now_us.saturating_add(self.chunk_offset_us(start));
            let [s1, s2] = &mut self.scratch;
            let (s1, s2) = (&mut s1[..end - start], &mut s2[..end - start]);
            for seat in self.seats.iter_mut().filter(|s| s.owner.is_some()) {
                seat.buffer.pull(t, s1, s2);
                mix(&seat.strips, s1, s2, start..end);
                if !seat.buffer.is_active() {
                    seat.owner = None;
                }
            }
            start = end;
        }
    }

    fn chunk_offset_us(&self, samples: usize) -> u64 {
        samples as u64 * 1_000_000 / u64::from(self.sample_rate_hz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jam::packet::STANDARD_FRAMES;
    use crate::jam::sender::JamSender;

    const N: usize = STANDARD_FRAMES;
    const T0: u64 = 1_700_000_000_000_000;

    /// Test signal of jammer `j`, channel `c`, at stream position `pos`.
    fn signal(j: usize, c: usize, pos: usize) -> f32 {
        let f = 110.0 * (1 + j) as f64 + 37.0 * c as f64;
        let a = 0.05 + 0.01 * (j as f64) + 0.02 * c as f64;
        (a * (2.0 * std::f64::consts::PI * f * pos as f64 / 48_000.0).sin()) as f32
    }

    /// rtjam's codec from the sheet's formulas (rtjam.md §2): trunc((x+1)·32766) in
    /// rtjam's f32 arithmetic, then n/32768 − 1.
    fn wire(x: f32) -> f64 {
        let n = ((x + 1.0).clamp(0.0, 2.0) * 32766.0).trunc();
        f64::from(n) / 32768.0 - 1.0
    }

    struct Setting {
        db: f32,
        pan: f32,
        mute: bool,
    }

    fn setting(j: usize, c: usize) -> Setting {
        Setting {
            db: -9.0 + 1.5 * j as f32 - 2.0 * c as f32,
            pan: -1.0 + 0.2 * j as f32 - 0.1 * c as f32,
            mute: (j == 3 && c == 1) || (j == 8 && c == 0),
        }
    }

    /// 11 senders (client_ids 2001..) stream for `ms`, received on the ideal grid; the
    /// receiver is read every 1 ms in 48-sample blocks. Returns (left, right) or mono.
    fn run_room(stereo: bool, ms: usize, jammers: usize) -> (JamReceiver, Vec<f32>, Vec<f32>) {
        let mut rx = JamReceiver::new(ReceiverConfig::default()).unwrap();
        rx.set_own_client_id(Some(1));
        let mut senders: Vec<JamSender> = (0..jammers)
            .map(|j| JamSender::new(2001 + j as u32))
            .collect();
        let mut dgram = [0u8; 1024];
        let mut ch = [[0.0f32; N]; 2];
        let mut left = Vec::new();
        let mut right = Vec::new();
        let mut sent = 0usize;
        let mut l = [0.0f32; 48];
        let mut r = [0.0f32; 48];
        for t in 0..ms {
            let now = T0 + t as u64 * 1_000;
            while (sent as u64 * N as u64 * 1_000_000 / 48_000) <= t as u64 * 1_000 {
                let arrival = T0 + sent as u64 * N as u64 * 1_000_000 / 48_000;
                for (j, s) in senders.iter_mut().enumerate() {
                    for (c, samples) in ch.iter_mut().enumerate() {
                        for (i, x) in samples.iter_mut().enumerate() {
                            *x = signal(j, c, sent * N + i);
                        }
                    }
                    let len = s.write_packet(arrival, &ch[0], &ch[1], &mut dgram).unwrap();
                    rx.receive(arrival, &dgram[..len]).unwrap();
                }
                if sent == 0 {
                    for j in 0..jammers.min(DEFAULT_REMOTE_SEATS) {
                        let seat = rx.seat_of(2001 + j as u32).unwrap();
                        for (c, channel) in JamChannel::BOTH.into_iter().enumerate() {
                            let st = setting(j, c);
                            let strip = rx.seat_mut(seat).unwrap().strip_mut(channel);
                            strip.set_gain_db(st.db);
                            strip.set_pan(st.pan);
                            strip.set_muted(st.mute);
                        }
                    }
                }
                sent += 1;
            }
            if stereo {
                rx.mix_stereo(now, &mut l, &mut r);
                right.extend_from_slice(&r);
            } else {
                rx.mix_mono(now, &mut l);
            }
            left.extend_from_slice(&l);
        }
        (rx, left, right)
    }

    #[test]
    fn eleven_jammers_mono_mix_matches_independent_sum() {
        let (rx, out, _) = run_room(false, 300, 11);
        let start = out.iter().position(|&v| v != 0.0).unwrap();
        assert_eq!(start, 96, "2 ms playout delay");
        let mut max_err = 0.0f64;
        for (o, &got) in out.iter().enumerate().skip(start) {
            let pos = o - start;
            let mut want = 0.0f64;
            for j in 0..11 {
                for c in 0..2 {
                    let st = setting(j, c);
                    if !st.mute {
                        let g = 10f64.powf(f64::from(st.db) / 20.0);
                        want += g * wire(signal(j, c, pos));
                    }
                }
            }
            max_err = max_err.max((f64::from(got) - want).abs());
        }
        assert!(max_err < 2e-6, "max error {max_err}");
        for seat in rx.seats() {
            let s = seat.buffer().stats();
            assert_eq!((s.lost, s.underruns, s.late), (0, 0, 0));
        }
        assert_eq!(rx.stats().seats_assigned, 11);
    }

    #[test]
    fn eleven_jammers_stereo_mix_matches_independent_sum() {
        let (_, left, right) = run_room(true, 200, 11);
        let start = left.iter().position(|&v| v != 0.0).unwrap();
        let mut max_err = 0.0f64;
        for o in start..left.len() {
            let pos = o - start;
            let (mut wl, mut wr) = (0.0f64, 0.0f64);
            for j in 0..11 {
                for c in 0..2 {
                    let st = setting(j, c);
                    if st.mute {
                        continue;
                    }
                    let g = 10f64.powf(f64::from(st.db) / 20.0);
                    let p = f64::from(st.pan.clamp(-1.0, 1.0));
                    let x = wire(signal(j, c, pos));
                    wl += g * (1.0 - p).sqrt() * x;
                    wr += g * (1.0 + p).sqrt() * x;
                }
            }
            max_err = max_err
                .max((f64::from(left[o]) - wl).abs())
                .max((f64::from(right[o]) - wr).abs());
        }
        assert!(max_err < 3e-6, "max error {max_err}");
    }

    #[test]
    fn twelfth_jammer_is_not_heard() {
        let (rx, out, _) = run_room(false, 50, 12);
        assert!(rx.stats().no_free_seat > 0);
        assert_eq!(rx.seat_of(2012), None);
        // The mix is still exactly the 11 seated jammers.
        let start = out.iter().position(|&v| v != 0.0).unwrap();
        let pos = 500;
        let mut want = 0.0f64;
        for j in 0..11 {
            for c in 0..2 {
                let st = setting(j, c);
                if !st.mute {
                    want += 10f64.powf(f64::from(st.db) / 20.0) * wire(signal(j, c, pos));
                }
            }
        }
        assert!((f64::from(out[start + pos]) - want).abs() < 2e-6);
    }

    #[test]
    fn header_only_and_own_packets_update_echo_state_only() {
        use crate::jam::packet::{JamHeader, write_packet};
        let mut rx = JamReceiver::new(ReceiverConfig::default()).unwrap();
        rx.set_own_client_id(Some(77));
        let mut buf = [0u8; 64];
        let h = JamHeader {
            server_time: 42,
            beat: 3,
            client_id: 77,
            ..JamHeader::default()
        };
        let n = h.write_to(&mut buf).unwrap();
        assert_eq!(rx.receive(T0, &buf[..n]), Ok(ReceiveOutcome::HeaderOnly));
        assert_eq!((rx.last_server_time(), rx.last_beat()), (42, Some(3)));
        let h = JamHeader {
            server_time: 43,
            ..h
        };
        let n = write_packet(&h, &[0.1; 4], &[0.1; 4], &mut buf).unwrap();
        assert_eq!(rx.receive(T0, &buf[..n]), Ok(ReceiveOutcome::OwnClientId));
        assert_eq!(rx.last_server_time(), 43);
        assert!(rx.seats().iter().all(|s| s.client_id().is_none()));
        assert_eq!(
            rx.receive(T0, &buf[..n - 1]),
            Err(ParseError::OddLength { len: 43 })
        );
        assert_eq!(rx.stats().malformed, 1);
    }

    #[test]
    fn seats_are_reused_after_expiry_and_keep_a_returning_jammers_settings() {
        let mut rx = JamReceiver::new(ReceiverConfig {
            seats: 2,
            ..ReceiverConfig::default()
        })
        .unwrap();
        let mut buf = [0u8; 1024];
        let send = |rx: &mut JamReceiver, buf: &mut [u8], id: u32, t: u64| {
            let mut s = JamSender::new(id);
            let n = s.write_packet(t, &[0.5; N], &[0.5; N], buf).unwrap();
            rx.receive(t, &buf[..n]).unwrap()
        };
        send(&mut rx, &mut buf, 10, T0);
        send(&mut rx, &mut buf, 20, T0);
        assert_eq!((rx.seat_of(10), rx.seat_of(20)), (Some(0), Some(1)));
        rx.seat_mut(0)
            .unwrap()
            .strip_mut(JamChannel::Ch1)
            .set_gain_db(-6.0);
        assert!(matches!(
            send(&mut rx, &mut buf, 30, T0),
            ReceiveOutcome::NoFreeSeat { client_id: 30 }
        ));
        // 1 s later both seats have expired: 30 has no seat of its own, so it takes the
        // first expired one (0), whose settings are reset.
        let t1 = T0 + 1_000_000;
        assert!(matches!(
            send(&mut rx, &mut buf, 30, t1),
            ReceiveOutcome::Audio { seat: 0, .. }
        ));
        assert_eq!(rx.seats()[0].strip(JamChannel::Ch1).gain(), 1.0);
        // 10 returns and gets the other expired seat ...
        rx.seat_mut(1)
            .unwrap()
            .strip_mut(JamChannel::Ch2)
            .set_muted(true);
        assert!(matches!(
            send(&mut rx, &mut buf, 10, t1),
            ReceiveOutcome::Audio { seat: 1, .. }
        ));
        assert!(
            !rx.seats()[1].strip(JamChannel::Ch2).muted(),
            "settings of 20 not inherited"
        );
        // ... and after both expire again (the mix frees them), 10 gets back its own
        // seat with its settings, although seat 0 is free and comes first.
        rx.seat_mut(1)
            .unwrap()
            .strip_mut(JamChannel::Ch2)
            .set_pan(0.5);
        let t2 = t1 + 1_000_000;
        rx.mix_mono(t2, &mut [0.0; 48]);
        assert!(rx.seats().iter().all(|s| s.client_id().is_none()));
        assert!(matches!(
            send(&mut rx, &mut buf, 10, t2),
            ReceiveOutcome::Audio { seat: 1, .. }
        ));
        assert_eq!(rx.seats()[1].strip(JamChannel::Ch2).pan(), 0.5);
        assert!(matches!(
            send(&mut rx, &mut buf, 20, t2),
            ReceiveOutcome::Audio { seat: 0, .. }
        ));
    }

    #[test]
    fn strip_gain_pan_and_mute() {
        let mut s = ChannelStrip::UNITY;
        s.set_gain_db(-6.0);
        assert!((s.gain() - 0.501_187).abs() < 1e-5);
        assert!((s.gain_db() + 6.0).abs() < 1e-4);
        s.set_gain_db(40.0);
        assert_eq!(s.gain(), MAX_LINEAR_GAIN);
        s.set_gain_db(f32::NEG_INFINITY);
        assert_eq!(s.gain(), 0.0);
        s.set_gain_db(f32::NAN);
        assert_eq!(s.gain(), 0.0);
        s.set_gain_db(0.0);
        s.set_pan(-2.0);
        assert_eq!(s.stereo_gains(), (2f32.sqrt(), 0.0));
        s.set_pan(0.0);
        assert_eq!(s.stereo_gains(), (1.0, 1.0));
        s.set_pan(0.5);
        let (l, r) = s.stereo_gains();
        assert!((l * l + r * r - 2.0).abs() < 1e-6, "constant power");
        s.set_muted(true);
        assert_eq!(s.stereo_gains(), (0.0, 0.0));
        let mut out = [1.0; 3];
        s.mix_mono(&[1.0; 3], &mut out);
        assert_eq!(out, [1.0; 3]);
    }

    #[test]
    fn long_reads_are_split_into_chunks() {
        let mut rx = JamReceiver::new(ReceiverConfig {
            max_block: 32,
            ..ReceiverConfig::default()
        })
        .unwrap();
        let mut s = JamSender::new(5);
        let mut buf = [0u8; 1024];
        for k in 0..8u64 {
            let t = T0 + k * 2_667;
            let n = s.write_packet(t, &[0.25; N], &[0.25; N], &mut buf).unwrap();
            rx.receive(t, &buf[..n]).unwrap();
        }
        // Read 200 samples in one call, 3 ms after the first arrival: 7 chunks of 32,
        // each read at its own time so the playout delay stays on target.
        let mut out = vec![0.0; 200];
        rx.mix_mono(T0 + 3_000, &mut out);
        let s = rx.seats()[0].buffer().stats();
        assert_eq!((s.underruns, s.slips_dropped, s.slips_inserted), (0, 0, 0));
        let expected = 2.0 * wire(0.25);
        assert!(
            out.iter().all(|&v| (f64::from(v) - expected).abs() < 1e-6),
            "{out:?}"
        );
    }
    /// Streams jammer `id` from `source` for `ms` milliseconds from `start` (packets on
    /// their 2.667 ms grid, `skip` left out), reading the mix every 1 ms.
    fn play(
        rx: &mut JamReceiver,
        start: u64,
        ms: u64,
        streams: &mut [(u32, u64, &mut JamSender, Option<u32>)],
    ) -> Vec<f32> {
        let mut buf = [0u8; 1024];
        let mut out = Vec::new();
        let mut block = [0.0f32; 48];
        let mut k = 0u64;
        for t in 0..ms {
            while k * N as u64 * 1_000_000 / 48_000 <= t * 1_000 {
                let at = start + k * N as u64 * 1_000_000 / 48_000;
                for (id, source, sender, skip) in streams.iter_mut() {
                    let level = 0.1 * f32::from((*id % 7) as u8 + 1);
                    let n = sender
                        .write_packet(at, &[level; N], &[0.0; N], &mut buf)
                        .unwrap();
                    if *skip != Some(k as u32) {
                        rx.receive_from(at, *source, &buf[..n]).unwrap();
                    }
                }
                k += 1;
            }
            rx.mix_mono(start + t * 1_000, &mut block);
            out.extend_from_slice(&block);
        }
        out
    }

    #[test]
    fn a_returning_jammer_starts_with_fresh_counters() {
        let mut rx = JamReceiver::new(ReceiverConfig {
            seats: 2,
            ..ReceiverConfig::default()
        })
        .unwrap();
        // 300 ms with packet 40 lost: one loss, one underrun.
        let mut first = JamSender::new(10);
        play(&mut rx, T0, 300, &mut [(10, 0, &mut first, Some(40))]);
        let seat = rx.seat_of(10).unwrap();
        let s = rx.seats()[seat].stats();
        assert_eq!((s.lost, s.underruns), (1, 1), "{s:?}");
        // Gone for 1.5 s: the seat is freed.
        play(&mut rx, T0 + 300_000, 1_500, &mut []);
        assert_eq!(rx.seat_of(10), None);
        // Back with a clean stream: its counters start again; the buffer keeps totals.
        let mut back = JamSender::new(10);
        play(
            &mut rx,
            T0 + 1_800_000,
            300,
            &mut [(10, 0, &mut back, None)],
        );
        let seat = rx.seat_of(10).unwrap();
        let s = rx.seats()[seat].stats();
        assert_eq!(
            (
                s.packets,
                s.lost,
                s.late,
                s.underruns,
                s.overruns,
                s.expirations
            ),
            (113, 0, 0, 0, 0, 0),
            "{s:?}"
        );
        assert_eq!(rx.seats()[seat].buffer().stats().lost, 1, "lifetime total");
        // The same when the jammer returns before anything read its seat.
        let mut rx2 = JamReceiver::new(ReceiverConfig::default()).unwrap();
        let mut buf = [0u8; 1024];
        let mut s1 = JamSender::new(20);
        for k in [0u64, 1, 3] {
            let n = s1.write_packet(T0, &[0.1; N], &[0.1; N], &mut buf).unwrap();
            rx2.receive(T0 + k * 2_667, &buf[..n]).unwrap();
        }
        let n = s1.write_packet(T0, &[0.1; N], &[0.1; N], &mut buf).unwrap();
        rx2.receive(T0 + 1_200_000, &buf[..n]).unwrap();
        let s = rx2.seats()[0].stats();
        assert_eq!((s.packets, s.expirations), (1, 0), "{s:?}");
    }

    #[test]
    fn two_sources_under_one_client_id_get_a_seat_each() {
        let mut rx = JamReceiver::new(ReceiverConfig::default()).unwrap();
        let mut jammer = JamSender::new(7);
        // 200 ms alone, then a second sender from another source under the same
        // client_id, from sequence 0 (0.1 and 0.1 · 8 = 0.8 on the wire as set by `play`).
        let alone = play(&mut rx, T0, 200, &mut [(7, 1, &mut jammer, None)]);
        let mut intruder = JamSender::new(7);
        let both = play(
            &mut rx,
            T0 + 200_000,
            300,
            &mut [(7, 1, &mut jammer, None), (7, 2, &mut intruder, None)],
        );
        let seats: Vec<(u32, u64)> = rx
            .seats()
            .iter()
            .filter_map(|s| Some((s.client_id()?, s.source())))
            .collect();
        assert_eq!(seats, [(7, 1), (7, 2)]);
        let first = rx.seats()[0].stats();
        assert_eq!(
            (
                first.lost,
                first.late,
                first.resyncs,
                first.duplicates,
                first.underruns
            ),
            (0, 0, 0, 0, 0),
            "the jammer's stream is untouched: {first:?}"
        );
        // The jammer is heard throughout, the second sender added beside it.
        let level = wire(0.1);
        assert!(
            alone[200..]
                .iter()
                .all(|&v| (f64::from(v) - level - wire(0.0)).abs() < 1e-4)
        );
        assert!(
            both[200..]
                .iter()
                .all(|&v| (f64::from(v) - 2.0 * (level + wire(0.0))).abs() < 1e-4)
        );
    }
}
