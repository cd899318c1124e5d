//! AES67 receive flows: one RTP stream out as the patchbay's `ch1..chN`.
//!
//! ```text
//! socket ─► RxCore.push ─► JitterBuffer (reorders, conceals, counts)
//! media thread (PTP time): RxCore.play ─► 1 ms chunks at media-clock pace ─► BridgeWriter ══╗
//! engine: RxNode.produce ◄─ BridgeReader (drift-corrected to the host clock) ◄═══════════════╝
//! ```
//!
//! [`RxCore`] is sans-IO: datagrams and PTP time go in, chunks come out. A chunk whose
//! playout time is `t` holds the frames with media time `t − latency`
//! ([`codecs::aes67::JitterBuffer`]), and is read once the media clock has passed its
//! end, so a frame leaves the jitter buffer between `latency` and `latency + 1 ms` after
//! its timestamp. Until a subscription exists (a SAP session not heard yet), and while the
//! media clock is known, chunks of silence keep the bridge flowing.
//!
//! A sender that is not on the media clock (`first_packet`) is played on its own clock:
//! chunks are read when the jitter buffer's estimate of the sender's clock
//! ([`JitterBuffer::playout_time`]) has passed their end, so they reach the bridge at the
//! sender's rate, and the bridge's read-out is told that rate up front (a feed-forward
//! ratio, [`BridgeWriter::set_feed_forward_ppm`]) so the caller hears the sender's pace
//! without the ring running dry or filling up. Latency changes (a bursty sender raising
//! it) are logged here, a few times per subscription at most.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use codecs::aes67::{JitterBuffer, RxStats as JitterStats, media_clock};

use super::bridge::{BridgeReader, BridgeStats, BridgeWriter};
use super::tx::ptp_ns_of_sample;
use crate::engine::Node;

/// Frames per playout chunk (1 ms).
pub const CHUNK: usize = 48;
/// A playout cursor this far from the media clock is moved to it (the thread stalled or
/// the clock stepped), in frames: 100 ms.
const RESYNC_FRAMES: u64 = 4_800;

/// Counters of one receive flow, shared with the API: the jitter buffer's (summed over
/// every subscription the flow has had) and the flow's own.
#[derive(Debug, Default)]
pub struct RxStats {
    /// Datagrams read from the socket.
    pub datagrams: AtomicU64,
    /// Distinct RTP packets received from the followed SSRC (including late ones).
    pub received: AtomicU64,
    /// Packets never received (RFC 3550: expected − received).
    pub lost: AtomicU64,
    /// Packets received twice.
    pub duplicate: AtomicU64,
    /// Packets that arrived after a newer one but still in time.
    pub reordered: AtomicU64,
    /// Packets that arrived after their playout time.
    pub late: AtomicU64,
    /// Packets too far ahead of the playout window (timestamps not on our media clock).
    pub early: AtomicU64,
    /// Frames played as silence because the sender's packet was missing.
    pub concealed_frames: AtomicU64,
    /// Frames played as silence while no sender was present (no packet for 1 s).
    pub no_sender_frames: AtomicU64,
    /// Frames of silence inserted once when the latency grew.
    pub inserted_frames: AtomicU64,
    /// Times a late packet raised the latency.
    pub latency_increases: AtomicU64,
    /// The current playout latency, in µs (0 without a subscription).
    pub latency_us: AtomicU64,
    /// The largest latency a packet needed, in µs.
    pub needed_latency_us: AtomicU64,
    /// The sender's measured rate error in ppm (`f64` bits; NaN until measured).
    sender_ppm_bits: AtomicU64,
    /// Datagrams that were not RTP or not whole frames.
    pub malformed: AtomicU64,
    /// Packets with another payload type.
    pub wrong_payload_type: AtomicU64,
    /// Packets from another SSRC than the one followed.
    pub foreign_ssrc: AtomicU64,
    /// Jitter-buffer re-anchors, SSRC switches, sequence restarts, and playout cursor
    /// moves.
    pub resyncs: AtomicU64,
    /// Socket read errors.
    pub recv_errors: AtomicU64,
    /// PTP time (ns) of the last datagram, 0 before the first.
    pub last_datagram_ns: AtomicU64,
    /// Whether the media clock is unavailable.
    pub waiting_for_clock: AtomicBool,
    /// The clock bridge's counters.
    pub bridge: Arc<BridgeStats>,
}

impl RxStats {
    /// Counters over a given bridge's.
    pub fn new(bridge: Arc<BridgeStats>) -> RxStats {
        RxStats {
            bridge,
            sender_ppm_bits: AtomicU64::new(f64::NAN.to_bits()),
            ..RxStats::default()
        }
    }

    /// The sender's measured rate error in ppm, once measured (`first_packet` only).
    pub fn sender_ppm(&self) -> Option<f64> {
        let ppm = f64::from_bits(self.sender_ppm_bits.load(Ordering::Relaxed));
        (!ppm.is_nan()).then_some(ppm)
    }

    fn publish(&self, before: &JitterStats, now: &JitterStats, playout_resyncs: u64) {
        let sum = |a: u64, b: u64| a.saturating_add(b);
        let set = |field: &AtomicU64, value: u64| field.store(value, Ordering::Relaxed);
        set(&self.received, sum(before.received, now.received));
        set(&self.lost, sum(before.lost, now.lost));
        set(&self.duplicate, sum(before.duplicate, now.duplicate));
        set(&self.reordered, sum(before.reordered, now.reordered));
        set(&self.late, sum(before.late, now.late));
        set(&self.early, sum(before.early, now.early));
        set(
            &self.concealed_frames,
            sum(before.concealed_frames, now.concealed_frames),
        );
        set(
            &self.no_sender_frames,
            sum(before.no_sender_frames, now.no_sender_frames),
        );
        set(
            &self.inserted_frames,
            sum(before.inserted_frames, now.inserted_frames),
        );
        set(
            &self.latency_increases,
            sum(before.latency_increases, now.latency_increases),
        );
        set(&self.malformed, sum(before.malformed, now.malformed));
        set(
            &self.wrong_payload_type,
            sum(before.wrong_payload_type, now.wrong_payload_type),
        );
        set(
            &self.foreign_ssrc,
            sum(before.foreign_ssrc, now.foreign_ssrc),
        );
        set(
            &self.resyncs,
            sum(sum(before.resyncs, now.resyncs), playout_resyncs),
        );
    }
}

fn add(a: &JitterStats, b: &JitterStats) -> JitterStats {
    JitterStats {
        received: a.received + b.received,
        lost: a.lost + b.lost,
        duplicate: a.duplicate + b.duplicate,
        reordered: a.reordered + b.reordered,
        late: a.late + b.late,
        early: a.early + b.early,
        concealed_frames: a.concealed_frames + b.concealed_frames,
        no_sender_frames: a.no_sender_frames + b.no_sender_frames,
        inserted_frames: a.inserted_frames + b.inserted_frames,
        latency_increases: a.latency_increases + b.latency_increases,
        malformed: a.malformed + b.malformed,
        wrong_payload_type: a.wrong_payload_type + b.wrong_payload_type,
        foreign_ssrc: a.foreign_ssrc + b.foreign_ssrc,
        resyncs: a.resyncs + b.resyncs,
    }
}

/// A stream being received: its jitter buffer and a chunk of its channels, planar.
pub struct Subscription {
    jitter: JitterBuffer,
    channels: usize,
    planar: Vec<f32>,
}

impl Subscription {
    /// Wraps a jitter buffer (allocates the chunk buffer).
    pub fn new(jitter: JitterBuffer) -> Subscription {
        let channels = jitter.config().format.channels.count();
        Subscription {
            jitter,
            channels,
            planar: vec![0.0; channels * CHUNK],
        }
    }
}

/// The sans-IO receive side of one flow. See the module documentation.
pub struct RxCore {
    writer: BridgeWriter,
    channels: usize,
    subscription: Option<Box<Subscription>>,
    /// Playout time (media clock) of the next chunk's first frame.
    cursor: Option<u64>,
    interleaved: Vec<f32>,
    /// Jitter-buffer counters of earlier subscriptions.
    before: JitterStats,
    playout_resyncs: u64,
    /// The latency and the most needed at the last report, in frames (for the log).
    reported_latency: (u32, u32),
    name: Arc<str>,
    stats: Arc<RxStats>,
}

impl RxCore {
    /// A core feeding `writer` with `channels` interleaved channels.
    pub fn new(writer: BridgeWriter, channels: usize, stats: Arc<RxStats>) -> RxCore {
        RxCore {
            writer,
            channels,
            subscription: None,
            cursor: None,
            interleaved: vec![0.0; channels * CHUNK],
            before: JitterStats::default(),
            playout_resyncs: 0,
            reported_latency: (0, 0),
            name: Arc::from(""),
            stats,
        }
    }

    /// The same core naming its flow `name` in the log.
    pub fn named(mut self, name: &str) -> RxCore {
        self.name = Arc::from(name);
        self
    }

    /// Replaces the stream received (`None`: silence until the next one). Returns the
    /// previous subscription so it can be dropped off the media thread.
    pub fn replace(
        &mut self,
        subscription: Option<Box<Subscription>>,
    ) -> Option<Box<Subscription>> {
        let old = std::mem::replace(&mut self.subscription, subscription);
        if let Some(old) = &old {
            self.before = add(&self.before, &old.jitter.stats());
        }
        // The new stream has its own timeline: playout restarts from its now.
        self.cursor = None;
        self.reported_latency = (0, 0);
        self.writer.set_feed_forward_ppm(0.0);
        old
    }

    /// Counts a socket read error.
    pub fn count_recv_error(&self) {
        self.stats.recv_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Records whether the media clock is unavailable.
    pub fn set_waiting_for_clock(&self, waiting: bool) {
        self.stats
            .waiting_for_clock
            .store(waiting, Ordering::Relaxed);
    }

    /// Whether a stream is subscribed.
    pub fn subscribed(&self) -> bool {
        self.subscription.is_some()
    }

    /// Handles one datagram received at PTP time `now_ns`.
    pub fn push(&mut self, datagram: &[u8], now_ns: u64) {
        self.stats.datagrams.fetch_add(1, Ordering::Relaxed);
        self.stats.last_datagram_ns.store(now_ns, Ordering::Relaxed);
        if let Some(subscription) = &mut self.subscription {
            subscription.jitter.push(datagram, media_clock(now_ns));
        }
    }

    /// Plays every chunk whose playout has passed by PTP time `now_ns` into the bridge;
    /// returns when the next one is due.
    pub fn play(&mut self, now_ns: u64) -> u64 {
        let local = media_clock(now_ns);
        let now = self
            .subscription
            .as_ref()
            .map_or(local, |s| s.jitter.playout_time(local));
        let chunk = CHUNK as u64;
        let mut cursor = *self.cursor.get_or_insert(now);
        if now > cursor + RESYNC_FRAMES || cursor > now + RESYNC_FRAMES {
            cursor = now;
            self.playout_resyncs += 1;
        }
        let ch = self.channels;
        while now >= cursor + chunk {
            match &mut self.subscription {
                Some(s) => {
                    // The chunk is exactly CHUNK frames: read_block cannot fail.
                    let _ = s.jitter.read_block(cursor, &mut s.planar);
                    for c in 0..ch {
                        if c < s.channels {
                            let src = &s.planar[c * CHUNK..(c + 1) * CHUNK];
                            for (i, &v) in src.iter().enumerate() {
                                self.interleaved[i * ch + c] = v;
                            }
                        } else {
                            for i in 0..CHUNK {
                                self.interleaved[i * ch + c] = 0.0;
                            }
                        }
                    }
                }
                None => self.interleaved.fill(0.0),
            }
            self.writer.write(&self.interleaved);
            cursor += chunk;
        }
        self.cursor = Some(cursor);
        let current = match self.subscription.take() {
            Some(s) => {
                // Chunks go out at the sender's rate: the bridge reads them out that
                // much slower (or faster) from the start.
                self.writer
                    .set_feed_forward_ppm(-s.jitter.playout_rate_ppm());
                let ppm = s.jitter.sender_ppm().unwrap_or(f64::NAN);
                self.stats
                    .sender_ppm_bits
                    .store(ppm.to_bits(), Ordering::Relaxed);
                self.report_latency(&s.jitter);
                let stats = s.jitter.stats();
                self.subscription = Some(s);
                stats
            }
            None => {
                self.stats.latency_us.store(0, Ordering::Relaxed);
                JitterStats::default()
            }
        };
        self.stats
            .publish(&self.before, &current, self.playout_resyncs);
        ptp_ns_of_sample(local + (cursor + chunk).saturating_sub(now))
    }

    /// Publishes the latency, and logs when it grew or when the sender needs more than
    /// the maximum (each happens a few times per subscription at most: the latency only
    /// grows, in whole milliseconds, up to 40 ms).
    fn report_latency(&mut self, jitter: &JitterBuffer) {
        let latency = jitter.latency_frames();
        let needed = jitter.needed_latency_frames();
        let max = jitter.config().max_latency_frames;
        let us = |frames: u32| u64::from(frames) * 1000 / 48;
        self.stats.latency_us.store(us(latency), Ordering::Relaxed);
        self.stats
            .needed_latency_us
            .store(us(needed), Ordering::Relaxed);
        let (reported, reported_needed) = self.reported_latency;
        let ms = |frames: u32| f64::from(frames) / 48.0;
        if reported != 0 && latency > reported {
            tracing::info!(
                flow = %self.name,
                latency_ms = ms(latency),
                max_latency_ms = ms(max),
                "packets arrived late: receive latency raised"
            );
        }
        if needed > max && reported_needed <= max {
            tracing::warn!(
                flow = %self.name,
                needed_ms = ms(needed),
                max_latency_ms = ms(max),
                "the sender's packets arrive later than max_latency_ms allows: late packets \
                 will be heard as gaps (raise max_latency_ms or fix the sender's pacing)"
            );
        }
        self.reported_latency = (latency, needed);
    }
}

/// The engine side of a receive flow: the bridge out as outputs `ch1..chN`.
pub struct RxNode {
    reader: BridgeReader,
    channels: usize,
    interleaved: Vec<f32>,
}

impl RxNode {
    /// A node of `channels` outputs for blocks of up to `max_block` samples.
    pub fn new(reader: BridgeReader, channels: usize, max_block: usize) -> RxNode {
        RxNode {
            reader,
            channels,
            interleaved: vec![0.0; channels * max_block],
        }
    }
}

impl Node for RxNode {
    fn produce(&mut self, outputs: &mut [f32], block: usize) {
        let ch = self.channels;
        let frames = block.min(self.interleaved.len() / ch);
        self.reader.pull(&mut self.interleaved[..frames * ch]);
        for (c, output) in outputs.chunks_exact_mut(block).take(ch).enumerate() {
            for (i, sample) in output[..frames].iter_mut().enumerate() {
                *sample = self.interleaved[i * ch + c];
            }
            output[frames..].fill(0.0);
        }
    }

    fn consume(&mut self, _inputs: &[f32], _block: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aes67::bridge::{BridgeSettings, bridge};
    use codecs::aes67::{
        Alignment, Channels, Encoding, PacketTime, Packetizer, RxConfig, StreamFormat, TxConfig,
        rtp_timestamp,
    };
    use codecs::measure::fit_sine;
    use codecs::rate::SampleRate;
    use codecs::rtp::PayloadType;

    const TAI_NS: u64 = 1_700_000_000_000_000_000;

    fn format(channels: u8) -> StreamFormat {
        StreamFormat {
            encoding: Encoding::L24,
            channels: Channels::new(channels).unwrap(),
            packet_time: PacketTime::Ms1,
        }
    }

    /// A sender on the PTP media clock: packet k carries frames from `m0 + 48k`, channel
    /// c value `(c + 1) × 0.1` (constant, easy to place), sent at its due time.
    fn packets(channels: u8, m0: u64, count: usize) -> Vec<(u64, Vec<u8>)> {
        let mut p = Packetizer::new(
            TxConfig {
                format: format(channels),
                payload_type: PayloadType::AES67_DEFAULT,
                ssrc: 7,
                first_sequence: 1,
            },
            rtp_timestamp(m0, 0),
        );
        let frames: Vec<f32> = (0..48)
            .flat_map(|_| (0..channels).map(|c| f32::from(c + 1) * 0.1))
            .collect();
        (0..count)
            .map(|k| {
                let mut out = vec![0u8; 2000];
                let n = p.write_packet(&frames, &mut out).unwrap();
                out.truncate(n);
                (ptp_ns_of_sample(m0 + 48 * (k as u64 + 1)) + 50_000, out)
            })
            .collect()
    }

    #[test]
    fn a_ptp_timed_stream_plays_at_its_latency_with_channels_mapped() {
        // A 4-channel stream into a 2-channel node: channels 3 and 4 are not heard.
        let bridge_stats = Arc::new(BridgeStats::default());
        let (writer, mut reader) = bridge(
            BridgeSettings::new(2, 48, 48, 2.0),
            Arc::clone(&bridge_stats),
        );
        let stats = Arc::new(RxStats::new(bridge_stats));
        let mut core = RxCore::new(writer, 2, Arc::clone(&stats));
        let jitter =
            JitterBuffer::new(RxConfig::new(PayloadType::AES67_DEFAULT, format(4))).unwrap();
        assert!(
            core.replace(Some(Box::new(Subscription::new(jitter))))
                .is_none()
        );
        let m0 = media_clock(TAI_NS);
        let stream = packets(4, m0, 200);
        let mut next = 0;
        let mut heard = Vec::new();
        let mut out = [0.0f32; 96];
        // The media thread wakes every 250 µs; the engine pulls a block per ms.
        let mut t = TAI_NS;
        while t < TAI_NS + 180_000_000 {
            while next < stream.len() && stream[next].0 <= t {
                core.push(&stream[next].1, stream[next].0);
                next += 1;
            }
            core.play(t);
            if (t - TAI_NS).is_multiple_of(1_000_000) {
                reader.pull(&mut out);
                heard.extend_from_slice(&out);
            }
            t += 250_000;
        }
        // Once playing, every frame is the stream's: 0.1 on ch1, 0.2 on ch2.
        let start = heard.iter().position(|&v| v != 0.0).unwrap();
        for frame in heard[start..].chunks_exact(2) {
            assert!((frame[0] - 0.1).abs() < 1e-6 && (frame[1] - 0.2).abs() < 1e-6);
        }
        // Jitter latency (3 ms) + chunking (1 ms) + bridge target (4.2 ms).
        let ms = start as f64 / 2.0 / 48.0;
        assert!((4.0..=10.0).contains(&ms), "audio after {ms} ms");
        assert_eq!(stats.received.load(Ordering::Relaxed), next as u64);
        assert_eq!(stats.lost.load(Ordering::Relaxed), 0);
        assert_eq!(stats.late.load(Ordering::Relaxed), 0);
        assert_eq!(stats.concealed_frames.load(Ordering::Relaxed), 0);
    }

    /// A non-PTP sender (`first_packet`) whose crystal is `ppm` off the media clock sends
    /// a 1 kHz tone (of its clock) in 1 ms L24 mono packets for 60 s; the media thread
    /// plays every 250 µs and the engine pulls 1 ms blocks on the media clock. Returns
    /// what the engine heard after the first 5 s, the flow's counters and the bridge's.
    fn drifting_sender(ppm: f64) -> (Vec<f32>, Arc<RxStats>) {
        let bridge_stats = Arc::new(BridgeStats::default());
        let (writer, mut reader) = bridge(
            BridgeSettings::new(1, CHUNK, 48, 2.0),
            Arc::clone(&bridge_stats),
        );
        let stats = Arc::new(RxStats::new(bridge_stats));
        let mut core = RxCore::new(writer, 1, Arc::clone(&stats));
        let mut cfg = RxConfig::new(PayloadType::AES67_DEFAULT, format(1));
        cfg.alignment = Alignment::FirstPacket;
        core.replace(Some(Box::new(Subscription::new(
            JitterBuffer::new(cfg).unwrap(),
        ))));
        let m0 = media_clock(TAI_NS);
        let arrival = |k: u64| {
            ptp_ns_of_sample(m0 + (48.0 * (k + 1) as f64 / (1.0 + ppm * 1e-6)) as u64) + 50_000
        };
        let packet = |k: u64| {
            let mut p = vec![0x80, 98];
            p.extend_from_slice(&(k as u16).to_be_bytes());
            p.extend_from_slice(&(0x1234_0000u32.wrapping_add(48 * k as u32)).to_be_bytes());
            p.extend_from_slice(&7u32.to_be_bytes());
            for i in 0..48 {
                let n = (k * 48 + i) as f64;
                let v = (0.5 * (std::f64::consts::TAU * 1000.0 * n / 48_000.0).sin() * 8_388_607.0)
                    .round() as i32;
                p.extend_from_slice(&v.to_be_bytes()[1..]);
            }
            p
        };
        let mut k = 0u64;
        let mut heard = Vec::new();
        let mut out = [0.0f32; 48];
        let mut t = TAI_NS;
        while t < TAI_NS + 60_000_000_000 {
            while arrival(k) <= t {
                core.push(&packet(k), arrival(k));
                k += 1;
            }
            core.play(t);
            if (t - TAI_NS).is_multiple_of(1_000_000) {
                reader.pull(&mut out);
                if t >= TAI_NS + 5_000_000_000 {
                    heard.extend_from_slice(&out);
                }
            }
            t += 250_000;
        }
        (heard, stats)
    }

    #[test]
    fn a_drifting_non_ptp_sender_is_heard_clean_at_its_own_pace() {
        for ppm in [-2000.0, 2000.0] {
            let (heard, stats) = drifting_sender(ppm);
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let counters = (
                load(&stats.late),
                load(&stats.resyncs),
                load(&stats.concealed_frames),
                load(&stats.bridge.underruns),
                load(&stats.bridge.overflow_frames),
                load(&stats.bridge.resyncs),
            );
            assert_eq!(
                counters,
                (0, 0, 0, 0, 0, 0),
                "{ppm}: late, resyncs, concealed, bridge"
            );
            // The sender's pace: its 1 kHz is heard `ppm` off, in every 100 ms window,
            // with no gap or jump (a glitch leaves an SNR of 25 dB or less).
            let expected = 1000.0 * (1.0 + ppm * 1e-6);
            for (w, window) in heard.chunks_exact(4800).enumerate() {
                let fit = fit_sine(window, SampleRate::HZ_48000).unwrap();
                assert!(
                    (fit.frequency_hz - expected).abs() < 0.5 && fit.snr_db > 50.0,
                    "{ppm}: window {w}: {:.2} Hz, SNR {:.1} dB",
                    fit.frequency_hz,
                    fit.snr_db
                );
            }
            // The bridge reads out at the sender's rate (the measured drift, fed forward).
            let correction = stats.bridge.correction_ppm();
            assert!(
                (correction + ppm).abs() < 20.0,
                "{ppm}: bridge correction {correction} ppm"
            );
            let measured = stats.sender_ppm().unwrap();
            assert!((measured - ppm).abs() < 5.0, "{ppm}: measured {measured}");
            // The latency stayed the default 3 ms.
            assert_eq!(load(&stats.latency_us), 3000, "{ppm}");
        }
    }

    #[test]
    fn counters_survive_a_new_subscription_and_silence_fills_without_one() {
        let (writer, mut reader) = bridge(
            BridgeSettings::new(1, 48, 48, 2.0),
            Arc::new(BridgeStats::default()),
        );
        let stats = Arc::new(RxStats::new(Arc::new(BridgeStats::default())));
        let mut core = RxCore::new(writer, 1, Arc::clone(&stats));
        let mut cfg = RxConfig::new(PayloadType::AES67_DEFAULT, format(1));
        cfg.alignment = Alignment::FirstPacket;
        core.replace(Some(Box::new(Subscription::new(
            JitterBuffer::new(cfg).unwrap(),
        ))));
        let stream = packets(1, 5_000, 20);
        for (k, (_, bytes)) in stream.iter().enumerate() {
            if k != 7 {
                core.push(bytes, TAI_NS + k as u64 * 1_000_000);
            }
            core.play(TAI_NS + k as u64 * 1_000_000);
        }
        core.play(TAI_NS + 30_000_000);
        assert_eq!(stats.lost.load(Ordering::Relaxed), 1);
        assert_eq!(stats.received.load(Ordering::Relaxed), 19);
        // Unsubscribed: counters stay, silence keeps the bridge going.
        core.replace(None);
        assert!(!core.subscribed());
        core.play(TAI_NS + 60_000_000);
        assert_eq!(stats.received.load(Ordering::Relaxed), 19);
        let mut out = [1.0f32; 48];
        for _ in 0..40 {
            reader.pull(&mut out);
        }
        assert_eq!(stats.datagrams.load(Ordering::Relaxed), 19);
        // A clock step moves the cursor instead of playing a second of chunks.
        core.play(TAI_NS + 2_000_000_000);
        assert_eq!(stats.resyncs.load(Ordering::Relaxed), 1);
    }
}
