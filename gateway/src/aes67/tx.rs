//! AES67 transmit flows: the patchbay's `ch1..chN` out as one RTP stream.
//!
//! ```text
//! engine: TxNode.consume ─► interleave ─► BridgeWriter ══ ring ══╗
//! media thread (PTP time):  TxCore.poll ◄─ BridgeReader ◄═════════╝
//!                              └─► Packetizer (encode once, reused buffer) ─► socket
//! ```
//!
//! [`TxCore`] is the sans-IO heart, driven with PTP time as a parameter. Packet `k`
//! carries the media-clock samples `[m_k, m_k + frames)` and is due when the media clock
//! reaches `m_k + frames`, the instant its last sample has happened (aes67.md §5). `m_0`
//! is the media clock at start rounded down to a packet boundary; after that the
//! timestamp advances by the frames per packet and is never re-read from the clock. The
//! clock only decides *when* a packet leaves, so a host clock drifting against PTP changes
//! nothing on the wire: the bridge absorbs the difference. Only when the schedule and the
//! clock disagree by more than [`RESYNC_NS`] (the thread stalled, or the clock stepped)
//! does the core re-bootstrap on the clock, skipping or waiting, and count a resync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use codecs::aes67::{Packetizer, TxConfig, media_clock, rtp_timestamp};

use super::bridge::{BridgeReader, BridgeStats, BridgeWriter};
use crate::engine::Node;

/// Schedule and clock further apart than this re-bootstrap the timestamps: 20 ms, beyond
/// any receiver's default latency, so packets that late would only be dropped.
pub const RESYNC_NS: u64 = 20_000_000;
/// A packet sent more than this after its due time counts as late (half the 2 ms a
/// receiver waits beyond the packet time by default).
pub const LATE_NS: u64 = 1_000_000;
/// Upper bounds (µs) of the send-delay histogram buckets; a last bucket takes the rest.
pub const SEND_DELAY_BUCKETS_US: [u64; 9] = [25, 50, 100, 250, 500, 1000, 2000, 5000, 10000];

/// The PTP time (ns since the PTP epoch) at which the media clock reaches sample `m`:
/// the smallest `t` with `media_clock(t) >= m`.
pub const fn ptp_ns_of_sample(m: u64) -> u64 {
    (m as u128 * 1_000_000_000).div_ceil(48_000) as u64
}

/// Counters of one transmit flow, shared with the API.
#[derive(Debug, Default)]
pub struct TxStats {
    /// Packets written (one per packet time).
    pub packets: AtomicU64,
    /// Bytes the socket took.
    pub bytes: AtomicU64,
    /// Packets sent more than [`LATE_NS`] after they were due.
    pub late_packets: AtomicU64,
    /// Largest send delay after the due time seen, in ns.
    pub max_send_delay_ns: AtomicU64,
    /// Sum of send delays, in ns (with `packets`, the mean).
    pub send_delay_sum_ns: AtomicU64,
    /// Send delays per [`SEND_DELAY_BUCKETS_US`] bucket (the last counts the rest).
    pub send_delay_buckets: [AtomicU64; SEND_DELAY_BUCKETS_US.len() + 1],
    /// Re-bootstraps of the timestamps on the clock.
    pub resyncs: AtomicU64,
    /// Sends the socket refused.
    pub send_errors: AtomicU64,
    /// Whether the media clock is unavailable (a PTP follower not locked yet).
    pub waiting_for_clock: AtomicBool,
    /// RTP timestamp of the last packet.
    pub last_timestamp: AtomicU64,
    /// The clock bridge's counters.
    pub bridge: Arc<BridgeStats>,
}

impl TxStats {
    /// Counters over a given bridge's.
    pub fn new(bridge: Arc<BridgeStats>) -> TxStats {
        TxStats {
            bridge,
            ..TxStats::default()
        }
    }

    fn record_send_delay(&self, delay_ns: u64) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.send_delay_sum_ns
            .fetch_add(delay_ns, Ordering::Relaxed);
        self.max_send_delay_ns
            .fetch_max(delay_ns, Ordering::Relaxed);
        let bucket = SEND_DELAY_BUCKETS_US
            .iter()
            .position(|&bound| delay_ns <= bound * 1000)
            .unwrap_or(SEND_DELAY_BUCKETS_US.len());
        self.send_delay_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        if delay_ns > LATE_NS {
            self.late_packets.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What [`TxCore::poll`] asks the driver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxPoll {
    /// Send the first `n` bytes of the buffer now.
    Packet(usize),
    /// Nothing is due before this PTP time (ns).
    WaitUntil(u64),
}

/// The sans-IO transmit side of one flow. See the module documentation.
pub struct TxCore {
    packetizer: Packetizer,
    reader: BridgeReader,
    /// One packet of interleaved frames, reused.
    frames: Vec<f32>,
    frames_per_packet: u64,
    mediaclk_offset: u32,
    /// Media clock (samples) of the next packet's first sample, once started.
    next: Option<u64>,
    /// The schedule was re-bootstrapped after a stall: the first packet of the new one
    /// drops what the engine wrote to catch up (see [`TxCore::poll`]).
    drop_backlog: bool,
    stats: Arc<TxStats>,
}

impl TxCore {
    /// A core sending `cfg`'s format with timestamps `media clock + mediaclk_offset`,
    /// its audio drawn from `reader`.
    pub fn new(
        cfg: TxConfig,
        mediaclk_offset: u32,
        reader: BridgeReader,
        stats: Arc<TxStats>,
    ) -> TxCore {
        let frames = cfg.format.packet_time.frames();
        TxCore {
            packetizer: Packetizer::new(cfg, 0),
            reader,
            frames: vec![0.0; frames * cfg.format.channels.count()],
            frames_per_packet: frames as u64,
            mediaclk_offset,
            next: None,
            drop_backlog: false,
            stats,
        }
    }

    /// Bytes of every packet.
    pub fn packet_len(&self) -> usize {
        self.packetizer.packet_len()
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<TxStats> {
        &self.stats
    }

    /// Media clock (samples) of the next packet's first sample, once started.
    pub fn next_media_sample(&self) -> Option<u64> {
        self.next
    }

    /// Starts (or re-bootstraps) the schedule at the packet boundary at or before
    /// `now_media`, and returns its first due time.
    fn start(&mut self, now_media: u64) -> u64 {
        let fpp = self.frames_per_packet;
        let first = now_media / fpp * fpp;
        self.packetizer
            .resync(rtp_timestamp(first, self.mediaclk_offset));
        self.next = Some(first);
        ptp_ns_of_sample(first + fpp)
    }

    /// Writes the packet due at PTP time `now_ns` into `out` (at least
    /// [`packet_len`](Self::packet_len) bytes), or says when the next one is due. Call it
    /// again after every `Packet` until it says `WaitUntil`: a late driver catches up.
    pub fn poll(&mut self, now_ns: u64, out: &mut [u8]) -> TxPoll {
        let fpp = self.frames_per_packet;
        let now_media = media_clock(now_ns);
        let next = match self.next {
            Some(next) => next,
            None => return TxPoll::WaitUntil(self.start(now_media)),
        };
        let due_ns = ptp_ns_of_sample(next + fpp);
        if now_ns < due_ns {
            if due_ns - now_ns > RESYNC_NS + ptp_ns_of_sample(fpp) {
                // The clock jumped back: waiting for the old schedule would mean silence.
                self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                return TxPoll::WaitUntil(self.start(now_media));
            }
            return TxPoll::WaitUntil(due_ns);
        }
        let delay_ns = now_ns - due_ns;
        if delay_ns > RESYNC_NS {
            // Stalled (or the clock jumped ahead): skip what nobody would play any more.
            // The backlog is dropped at the first packet of the new schedule, not now:
            // when the whole host stalled, the engine was held up too and writes the
            // blocks it owes only after this, and kept, they would be latency that the
            // drift controller bends the pitch for seconds to squeeze out.
            self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
            self.drop_backlog = true;
            return TxPoll::WaitUntil(self.start(now_media));
        }
        if std::mem::take(&mut self.drop_backlog) {
            self.reader.drop_to_target();
        }
        // Frames the engine wrote since this packet was due (none when on time).
        let late_frames = (u128::from(delay_ns) * 48_000 / 1_000_000_000) as usize;
        self.reader.pull_late(&mut self.frames, late_frames);
        let timestamp = self.packetizer.next_timestamp();
        match self.packetizer.write_packet(&self.frames, out) {
            Ok(n) => {
                self.next = Some(next + fpp);
                self.stats.record_send_delay(delay_ns);
                self.stats
                    .last_timestamp
                    .store(u64::from(timestamp), Ordering::Relaxed);
                TxPoll::Packet(n)
            }
            Err(_) => {
                // Only a buffer shorter than packet_len() gets here (a driver bug): skip
                // the packet rather than stall the schedule.
                self.next = Some(next + fpp);
                self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                TxPoll::WaitUntil(ptp_ns_of_sample(next + 2 * fpp))
            }
        }
    }
}

/// The engine side of a transmit flow: inputs `ch1..chN` interleaved into the bridge.
pub struct TxNode {
    writer: BridgeWriter,
    channels: usize,
    interleaved: Vec<f32>,
}

impl TxNode {
    /// A node of `channels` inputs for blocks of up to `max_block` samples.
    pub fn new(writer: BridgeWriter, channels: usize, max_block: usize) -> TxNode {
        TxNode {
            writer,
            channels,
            interleaved: vec![0.0; channels * max_block],
        }
    }
}

impl Node for TxNode {
    fn produce(&mut self, _outputs: &mut [f32], _block: usize) {}

    fn consume(&mut self, inputs: &[f32], block: usize) {
        let ch = self.channels;
        let frames = block.min(self.interleaved.len() / ch);
        for (c, input) in inputs.chunks_exact(block).take(ch).enumerate() {
            for (i, &sample) in input[..frames].iter().enumerate() {
                self.interleaved[i * ch + c] = sample;
            }
        }
        self.writer.write(&self.interleaved[..frames * ch]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aes67::bridge::{BridgeSettings, bridge};
    use codecs::aes67::{Channels, Encoding, PacketTime, StreamFormat};
    use codecs::measure::fit_sine;
    use codecs::rate::SampleRate;
    use codecs::rtp::{PayloadType, RtpPacket};

    const TAI_NS: u64 = 1_700_000_000_000_000_000;

    fn core(packet_time: PacketTime, channels: u8) -> (TxCore, TxNode, Arc<TxStats>) {
        let format = StreamFormat {
            encoding: Encoding::L24,
            channels: Channels::new(channels).unwrap(),
            packet_time,
        };
        let bridge_stats = Arc::new(BridgeStats::default());
        let settings = BridgeSettings::new(usize::from(channels), 48, packet_time.frames(), 2.0);
        let (writer, reader) = bridge(settings, Arc::clone(&bridge_stats));
        let stats = Arc::new(TxStats::new(bridge_stats));
        let cfg = TxConfig {
            format,
            payload_type: PayloadType::AES67_DEFAULT,
            ssrc: 0x1234_5678,
            first_sequence: 65_000,
        };
        (
            TxCore::new(cfg, 0, reader, Arc::clone(&stats)),
            TxNode::new(writer, usize::from(channels), 48),
            stats,
        )
    }

    #[test]
    fn due_times_round_up_to_the_sample() {
        assert_eq!(ptp_ns_of_sample(0), 0);
        assert_eq!(ptp_ns_of_sample(1), 20_834);
        assert_eq!(media_clock(ptp_ns_of_sample(1)), 1);
        assert_eq!(media_clock(ptp_ns_of_sample(1) - 1), 0);
        let m = media_clock(TAI_NS);
        assert_eq!(ptp_ns_of_sample(m), TAI_NS);
    }

    /// The engine (host clock, `host_ppm` off PTP) feeds a 1 kHz tone into channel 1 and
    /// its negation into channel 2 in 1 ms blocks; the core is polled at exactly the times
    /// it asks for, plus `wake_delay_ns`. Returns every packet with its send time.
    fn simulate(
        packet_time: PacketTime,
        host_ppm: f64,
        seconds: f64,
        wake_delay_ns: u64,
    ) -> (Vec<(u64, Vec<u8>)>, Arc<TxStats>) {
        let (mut core, mut node, stats) = core(packet_time, 2);
        // One host millisecond is (1 + ppm) PTP milliseconds... expressed in PTP ns.
        let block_ns = 1e6 * (1.0 + host_ppm * 1e-6);
        let start = TAI_NS + 123_456;
        let end = start + (seconds * 1e9) as u64;
        // Relative to `start`: an f64 near 1.7e18 ns has a 256 ns resolution.
        let mut next_block = 0.0f64;
        let mut next_poll = start;
        let mut n = 0u64;
        let mut inputs = vec![0.0f32; 2 * 48];
        let mut out = vec![0u8; 1500];
        let mut sent = Vec::new();
        while next_poll < end {
            // Engine blocks that happen before this poll.
            while next_block <= (next_poll - start) as f64 {
                for i in 0..48 {
                    let v = (0.5
                        * (2.0 * std::f64::consts::PI * 1000.0 * n as f64 / 48_000.0).sin())
                        as f32;
                    inputs[i] = v;
                    inputs[48 + i] = -v;
                    n += 1;
                }
                node.consume(&inputs, 48);
                next_block += block_ns;
            }
            loop {
                match core.poll(next_poll, &mut out) {
                    TxPoll::Packet(len) => sent.push((next_poll, out[..len].to_vec())),
                    TxPoll::WaitUntil(t) => {
                        next_poll = t + wake_delay_ns;
                        break;
                    }
                }
            }
        }
        (sent, stats)
    }

    #[test]
    fn packets_leave_on_the_ptp_schedule_with_continuous_timestamps() {
        for packet_time in PacketTime::ALL {
            let fpp = packet_time.frames() as u64;
            let (sent, stats) = simulate(packet_time, 0.0, 0.5, 0);
            assert!(sent.len() as u64 >= 24_000 / fpp - 1, "{packet_time:?}");
            let first = RtpPacket::parse(&sent[0].1).unwrap().header;
            // The first packet starts on a packet boundary of the media clock.
            assert_eq!(media_clock(sent[0].0) % fpp, 0, "{packet_time:?}");
            for (k, (at, bytes)) in sent.iter().enumerate() {
                let h = RtpPacket::parse(bytes).unwrap().header;
                assert_eq!(h.sequence, 65_000u16.wrapping_add(k as u16));
                let ts = first.timestamp.wrapping_add((k as u64 * fpp) as u32);
                assert_eq!(h.timestamp, ts, "{packet_time:?} packet {k}");
                // Sent exactly when its last sample's time came: never early, never late.
                let media = media_clock(*at);
                assert_eq!(
                    (media as u32).wrapping_sub(ts),
                    fpp as u32,
                    "{packet_time:?} packet {k}"
                );
                assert_eq!(bytes.len(), 12 + packet_time.frames() * 6);
            }
            assert_eq!(stats.late_packets.load(Ordering::Relaxed), 0);
            assert_eq!(stats.resyncs.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn a_drifting_host_clock_changes_nothing_on_the_wire() {
        for host_ppm in [300.0, -300.0] {
            let (sent, stats) = simulate(PacketTime::Ms1, host_ppm, 300.0, 15_000);
            let first = RtpPacket::parse(&sent[0].1).unwrap().header.timestamp;
            for (k, (at, bytes)) in sent.iter().enumerate().step_by(97) {
                let h = RtpPacket::parse(bytes).unwrap().header;
                assert_eq!(h.timestamp, first.wrapping_add(48 * k as u32));
                // Packet k leaves 15 µs (the wake delay) after its PTP due time, whatever
                // the host clock does.
                let due = ptp_ns_of_sample(media_clock(TAI_NS) / 48 * 48 + 48 * (k as u64 + 1));
                assert!(
                    *at >= due && at - due <= 15_000 + 21_000,
                    "packet {k}: {at} vs {due}"
                );
            }
            assert_eq!(stats.late_packets.load(Ordering::Relaxed), 0);
            assert_eq!(stats.resyncs.load(Ordering::Relaxed), 0);
            assert_eq!(
                stats.bridge.underruns.load(Ordering::Relaxed),
                0,
                "{host_ppm}"
            );
            assert_eq!(stats.bridge.overflow_frames.load(Ordering::Relaxed), 0);
            // The tone crossed the boundary intact: the host's 1 kHz is 1 kHz × (1 - ppm)
            // on the PTP clock (a fast host clock makes a lower tone in PTP time).
            let mut left = Vec::new();
            for (_, bytes) in &sent[sent.len() - 1000..] {
                let payload = RtpPacket::parse(bytes).unwrap().payload;
                let mut s = [0.0f32; 96];
                codecs::pcm::read_l24(payload, &mut s);
                left.extend(s.chunks_exact(2).map(|f| f[0]));
            }
            let fit = fit_sine(&left, SampleRate::HZ_48000).unwrap();
            let expected = 1000.0 / (1.0 + host_ppm * 1e-6);
            assert!(
                (fit.frequency_hz - expected).abs() < 0.05,
                "{host_ppm}: {} Hz vs {expected}",
                fit.frequency_hz
            );
            assert!(fit.snr_db > 90.0, "{host_ppm}: SNR {:.1}", fit.snr_db);
        }
    }

    /// The whole host stalls `stall_ns` every 2 s (a busy virtual machine stops every
    /// thread at once); on resuming, the media thread polls first and the engine then
    /// writes the blocks it owes. Returns, for each stretch between stalls (from 100 ms
    /// after one to the next), the tone's pitch error in ppm on the wire.
    fn pitch_between_whole_host_stalls(packet_time: PacketTime, stall_ns: u64) -> Vec<f64> {
        let (mut core, mut node, stats) = core(packet_time, 1);
        let fpp = packet_time.frames();
        let start = TAI_NS + 123_456;
        let (period, seconds) = (2_000_000_000u64, 12u64);
        let stalled_until = |t: u64| {
            let into = (t - start) % period;
            (t > start + period / 2 && into < stall_ns).then(|| t - into + stall_ns)
        };
        let (mut next_block, mut next_poll) = (start, start);
        let mut n = 0u64;
        let mut block = [0.0f32; 48];
        let mut out = vec![0u8; 1500];
        let mut sent: Vec<(u64, Vec<f32>)> = Vec::new();
        let mut poll = |core: &mut TxCore, at: u64, sent: &mut Vec<(u64, Vec<f32>)>| loop {
            match core.poll(at, &mut out) {
                TxPoll::Packet(len) => {
                    let payload = RtpPacket::parse(&out[..len]).unwrap().payload;
                    let mut samples = vec![0.0f32; fpp];
                    codecs::pcm::read_l24(payload, &mut samples);
                    sent.push((at, samples));
                }
                TxPoll::WaitUntil(t) => break t,
            }
        };
        let mut write_block = |node: &mut TxNode| {
            for v in &mut block {
                *v = (0.5 * (std::f64::consts::TAU * 1000.0 * n as f64 / 48_000.0).sin()) as f32;
                n += 1;
            }
            node.consume(&block, 48);
        };
        while next_poll < start + seconds * 1_000_000_000 {
            let t = next_block.min(next_poll);
            if let Some(resume) = stalled_until(t) {
                next_poll = poll(&mut core, resume.max(next_poll), &mut sent);
                while next_block <= resume {
                    write_block(&mut node);
                    next_block += 1_000_000;
                }
                continue;
            }
            if next_block <= next_poll {
                write_block(&mut node);
                next_block += 1_000_000;
            } else {
                next_poll = poll(&mut core, next_poll, &mut sent);
            }
        }
        assert!(stats.resyncs.load(Ordering::Relaxed) >= 5);
        assert_eq!(stats.bridge.underruns.load(Ordering::Relaxed), 0);
        assert_eq!(stats.bridge.resyncs.load(Ordering::Relaxed), 0);
        (1..seconds / 2)
            .map(|k| {
                let from = start + k * period + 100_000_000;
                let to = from + period - 200_000_000;
                let tone: Vec<f32> = sent
                    .iter()
                    .filter(|(at, _)| (from..to).contains(at))
                    .flat_map(|(_, s)| s.iter().copied())
                    .collect();
                let fit = fit_sine(&tone, SampleRate::HZ_48000).unwrap();
                (fit.frequency_hz / 1000.0 - 1.0) * 1e6
            })
            .collect()
    }

    #[test]
    fn whole_host_stalls_leave_the_pitch_alone() {
        for packet_time in [PacketTime::Ms1, PacketTime::Ms4] {
            let pitch = pitch_between_whole_host_stalls(packet_time, 30_000_000);
            assert!(
                pitch.iter().all(|ppm| ppm.abs() < 20.0),
                "{packet_time:?}: pitch error (ppm) between stalls {pitch:.0?}"
            );
        }
    }

    #[test]
    fn late_wakes_catch_up_and_stalls_resync() {
        let (mut core, _node, stats) = core(PacketTime::Ms1, 2);
        let mut out = vec![0u8; 1500];
        let TxPoll::WaitUntil(first_due) = core.poll(TAI_NS, &mut out) else {
            panic!("nothing is due at start");
        };
        // Woken 3.5 ms late: three packets at once (all late by more than 1 ms but the
        // last), then a wait for the fourth.
        let now = first_due + 3_500_000;
        let mut burst = 0;
        while let TxPoll::Packet(_) = core.poll(now, &mut out) {
            burst += 1;
        }
        assert_eq!(burst, 4);
        assert_eq!(stats.late_packets.load(Ordering::Relaxed), 3);
        assert_eq!(stats.max_send_delay_ns.load(Ordering::Relaxed), 3_500_000);
        // Stalled 50 ms: nothing is sent for the past, the schedule restarts on the clock.
        let now = now + 50_000_000;
        let TxPoll::WaitUntil(next) = core.poll(now, &mut out) else {
            panic!("a stale packet was sent");
        };
        assert_eq!(stats.resyncs.load(Ordering::Relaxed), 1);
        assert!(next > now && next - now <= 1_000_000);
        // The clock steps back by a second: the schedule follows at once.
        let TxPoll::WaitUntil(next) = core.poll(now - 1_000_000_000, &mut out) else {
            panic!();
        };
        assert_eq!(stats.resyncs.load(Ordering::Relaxed), 2);
        assert!(next < now);
        let buckets: u64 = stats
            .send_delay_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum();
        assert_eq!(buckets, stats.packets.load(Ordering::Relaxed));
        assert_eq!(buckets, 4);
    }
}
