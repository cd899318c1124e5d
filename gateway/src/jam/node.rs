//! The engine side of a jam node: seats in, packets out; packets in, mixes out.
//!
//! Per block (1 ms by default) the node
//! 1. drains the receive rings into [`JamReceiver`]s: one adaptive jitter buffer per
//!    remote jammer (rtjam.md §10), keyed by client_id and the member stream the socket
//!    thread tagged the packet with;
//! 2. *produces* each seat's output: every remote jammer at its gain (the jammer's
//!    channel 1 and 2 summed), plus in a hosted room every other seat (one block late,
//!    like a conference); and a stereo mix of the whole room with each jammer's pan;
//! 3. *consumes* each active seat's input: appends it to the seat's packet (channel 1,
//!    channel 2 silence or `aux<k>`); every 128 frames (2.667 ms on the gateway's clock)
//!    the packet is encoded into the send ring and the socket thread is woken.
//!
//! Seats are inactive until something is patched to them (the control plane sets the
//! flag); an inactive seat sends nothing, so it is not a member of the room. On
//! activation its sequence restarts at 0, as rtjam's client does on joining (§3).
//!
//! Time: the node keeps its own clock, advanced one block per block and steered slowly
//! toward the wall clock the socket thread stamps arrivals with, so the jitter buffers
//! compare like with like and a late engine wake-up is not mistaken for network jitter.
//! Nothing allocates after construction; the rings and buffers are preallocated.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use codecs::jam::packet::{SAMPLE_RATE, STANDARD_FRAMES};
use codecs::jam::{JamReceiver, JamSender, JitterConfig, ReceiverConfig};

use super::io::{Datagram, EngineLink, JamClock, Wake};
use super::shared::{JamShared, MixGains, NO_CLIENT};
use crate::engine::Node;
use crate::engine::stats::LevelAccumulator;

/// Frames per packet: one rtjam audio callback (rtjam.md §2).
pub const PACKET_FRAMES: usize = STANDARD_FRAMES;
/// A packet whose peak stays below this (-60 dBFS) counts as silent for
/// `suppress_silence`.
pub const SILENCE_PEAK: f32 = 0.001;
/// With `suppress_silence`, a silent joined seat still sends a header-only packet this
/// often, so the room keeps its place (rtjam drops a member after 1 s, §3) and keeps
/// echoing (for the round trip).
pub const KEEPALIVE_US: u64 = 250_000;
/// The node clock snaps to the wall clock when they differ by more than this (a stalled
/// engine); smaller differences are followed slowly.
const CLOCK_SNAP_NS: i64 = 50_000_000;
/// Fraction of the node clock's error corrected per block (a 256-block time constant).
const CLOCK_FOLLOW_SHIFT: u32 = 8;
/// Blocks between two publications of the jitter-buffer statistics.
const PUBLISH_EVERY: u32 = 10;

/// What the node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeMode {
    /// Each seat is a jammer of a remote room: one receiver per seat.
    Join,
    /// The node is the room: one receiver for the members; seats hear each other here.
    Host,
}

/// Output and input port names of a jam node with `seats` seats: outputs
/// `out1..outN`, `mix_left`, `mix_right`; inputs `in1..inN`, then `aux1..auxN` when
/// channel 2 is an input.
pub fn port_names(seats: u16, aux: bool) -> (Vec<String>, Vec<String>) {
    let mut outputs: Vec<String> = (1..=seats).map(|k| format!("out{k}")).collect();
    outputs.push("mix_left".into());
    outputs.push("mix_right".into());
    let mut inputs: Vec<String> = (1..=seats).map(|k| format!("in{k}")).collect();
    if aux {
        inputs.extend((1..=seats).map(|k| format!("aux{k}")));
    }
    (outputs, inputs)
}

struct Seat {
    sender: JamSender,
    active: bool,
    pending: [Vec<f32>; 2],
    fill: usize,
    peak: f32,
    last_sent_us: u64,
    /// Join: this seat's own rings.
    send: Option<rtrb::Producer<Datagram>>,
    /// Channel 1 + 2 of the previous block (what the other seats hear of this one).
    previous: Vec<f32>,
    gains: MixGains,
    input_level: LevelAccumulator,
    output_level: LevelAccumulator,
}

struct Receiver {
    rx: JamReceiver,
    recv: rtrb::Consumer<Datagram>,
    owners: Vec<Option<u32>>,
    gains: Vec<MixGains>,
    levels: Vec<[LevelAccumulator; 2]>,
}

/// The engine node of a jam room. See the module documentation.
pub struct JamNode {
    mode: NodeMode,
    block: usize,
    block_ns: u64,
    clock: Arc<dyn JamClock>,
    now_ns: u64,
    shared: Arc<JamShared>,
    wake: Arc<Wake>,
    aux: bool,
    seats: Vec<Seat>,
    receivers: Vec<Receiver>,
    host_send: Option<rtrb::Producer<Datagram>>,
    mix_version: u64,
    scratch: [Vec<f32>; 2],
    room: Vec<f32>,
    publish_countdown: u32,
}

/// Everything a [`JamNode`] is built from.
pub struct JamNodeParts {
    /// Join or host.
    pub mode: NodeMode,
    /// Engine block, samples.
    pub block: usize,
    /// Whether channel 2 comes from the `aux<k>` inputs.
    pub aux: bool,
    /// Remote jammers each receiver can seat.
    pub mix_seats: usize,
    /// State shared with the socket thread and the service, made for the same seats,
    /// receivers and `mix_seats`.
    pub shared: Arc<JamShared>,
    /// One link per seat (join) or exactly one (host).
    pub links: Vec<EngineLink>,
    /// Wakes the socket thread.
    pub wake: Arc<Wake>,
    /// Wall clock.
    pub clock: Arc<dyn JamClock>,
}

/// Why a jam node could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JamNodeError {
    /// The links do not match the mode and seats.
    #[error("a {mode:?} node with {seats} seats needs {expected} ring links, got {got}")]
    Links {
        /// The mode.
        mode: NodeMode,
        /// Its seats.
        seats: usize,
        /// Links needed.
        expected: usize,
        /// Links given.
        got: usize,
    },
    /// The jitter buffers refused their settings.
    #[error(transparent)]
    Jitter(#[from] codecs::jam::JitterConfigError),
}

impl JamNode {
    /// Builds the node from its parts (see [`JamNodeParts`]).
    pub fn new(parts: JamNodeParts) -> Result<JamNode, JamNodeError> {
        let JamNodeParts {
            mode,
            block,
            aux,
            mix_seats,
            shared,
            links,
            wake,
            clock,
        } = parts;
        let seat_count = shared.seats.len();
        let expected = match mode {
            NodeMode::Join => seat_count,
            NodeMode::Host => 1,
        };
        if links.len() != expected {
            return Err(JamNodeError::Links {
                mode,
                seats: seat_count,
                expected,
                got: links.len(),
            });
        }
        let receiver_config = ReceiverConfig {
            seats: mix_seats,
            max_block: block.max(1),
            jitter: JitterConfig::default(),
        };
        let mut seats = Vec::with_capacity(seat_count);
        let mut receivers = Vec::with_capacity(links.len());
        let mut host_send = None;
        for (k, link) in links.into_iter().enumerate() {
            let mut rx = JamReceiver::new(receiver_config)?;
            let send = match mode {
                NodeMode::Join => {
                    rx.set_own_client_id(Some(shared.seats[k].client_id));
                    Some(link.send)
                }
                NodeMode::Host => {
                    host_send = Some(link.send);
                    None
                }
            };
            receivers.push(Receiver {
                rx,
                recv: link.recv,
                owners: vec![None; mix_seats],
                gains: vec![MixGains::UNITY; mix_seats],
                levels: vec![[LevelAccumulator::default(), LevelAccumulator::default()]; mix_seats],
            });
            if mode == NodeMode::Join {
                seats.push(Seat::new(shared.seats[k].client_id, send, block));
            }
        }
        if mode == NodeMode::Host {
            for seat in &shared.seats {
                seats.push(Seat::new(seat.client_id, None, block));
            }
        }
        let block_ns = block as u64 * 1_000_000_000 / u64::from(SAMPLE_RATE.hz());
        Ok(JamNode {
            mode,
            block,
            block_ns,
            clock,
            now_ns: 0,
            shared,
            wake,
            aux,
            seats,
            receivers,
            host_send,
            mix_version: u64::MAX,
            scratch: [vec![0.0; block], vec![0.0; block]],
            room: vec![0.0; block],
            publish_countdown: 0,
        })
    }

    /// Advances the node clock by one block, steered toward the wall clock; µs.
    fn tick(&mut self) -> u64 {
        let wall_ns = self.clock.now_us().saturating_mul(1_000);
        let next = self.now_ns.saturating_add(self.block_ns);
        let error = wall_ns as i64 - next as i64;
        self.now_ns = if self.now_ns == 0 || error.abs() > CLOCK_SNAP_NS {
            wall_ns
        } else {
            next.saturating_add_signed(error >> CLOCK_FOLLOW_SHIFT)
        };
        self.now_ns / 1_000
    }

    /// Follows the control plane's seat activity; a seat that becomes active starts a
    /// fresh stream (sequence 0), one that becomes inactive stops sending.
    fn sync_activity(&mut self) {
        for (seat, shared) in self.seats.iter_mut().zip(&self.shared.seats) {
            let active = shared.active.load(Ordering::Relaxed);
            if active != seat.active {
                seat.reset(shared.client_id);
                seat.active = active;
            }
        }
    }

    /// Re-reads mix settings when they changed, or for jammers that took a seat.
    fn sync_gains(&mut self) {
        let version = self.shared.mix.version();
        let all = version != self.mix_version;
        self.mix_version = version;
        let mix = &self.shared.mix;
        for receiver in &mut self.receivers {
            for (s, seat) in receiver.rx.seats().iter().enumerate() {
                let owner = seat.client_id();
                if all || owner != receiver.owners[s] {
                    if owner != receiver.owners[s] {
                        receiver.levels[s] =
                            [LevelAccumulator::default(), LevelAccumulator::default()];
                    }
                    receiver.owners[s] = owner;
                    receiver.gains[s] = owner.map_or(MixGains::UNITY, |id| mix.gains(id));
                }
            }
        }
        if all {
            for (seat, shared) in self.seats.iter_mut().zip(&self.shared.seats) {
                seat.gains = mix.gains(shared.client_id);
            }
        }
    }

    /// Feeds every received datagram to its receiver.
    fn drain_rings(&mut self) {
        for receiver in &mut self.receivers {
            while let Ok(chunk) = receiver.recv.read_chunk(1) {
                let (first, _) = chunk.as_slices();
                if let Some(d) = first.first() {
                    // Malformed datagrams never get here (the socket thread checks), and
                    // the receiver counts anything it refuses.
                    let _ = receiver.rx.receive_from(d.time_us, d.source, d.as_bytes());
                }
                chunk.commit_all();
            }
        }
    }

    fn publish(&mut self) {
        for (r, receiver) in self.receivers.iter().enumerate() {
            for (s, seat) in receiver.rx.seats().iter().enumerate() {
                let slot = &self.shared.jammers[r][s];
                slot.client_id.store(
                    seat.client_id().map_or(NO_CLIENT, u64::from),
                    Ordering::Relaxed,
                );
                let buffer = seat.buffer();
                // The jammer's current stream: a jammer that left and came back, or a
                // new one on the seat, starts from zero.
                let stats = seat.stats();
                slot.depth_samples.store(
                    u32::try_from(buffer.depth_samples()).unwrap_or(u32::MAX),
                    Ordering::Relaxed,
                );
                slot.target_us
                    .store(buffer.target_delay_us(self.block) as u32, Ordering::Relaxed);
                slot.jitter_us
                    .store(buffer.jitter_us() as u32, Ordering::Relaxed);
                slot.packets.store(stats.packets, Ordering::Relaxed);
                slot.lost.store(stats.lost, Ordering::Relaxed);
                slot.late.store(stats.late, Ordering::Relaxed);
                slot.underruns.store(stats.underruns, Ordering::Relaxed);
                slot.overruns.store(stats.overruns, Ordering::Relaxed);
                slot.reordered.store(stats.reordered, Ordering::Relaxed);
                slot.duplicates.store(stats.duplicates, Ordering::Relaxed);
            }
        }
    }
}

impl Seat {
    fn new(client_id: u32, send: Option<rtrb::Producer<Datagram>>, block: usize) -> Seat {
        Seat {
            sender: JamSender::new(client_id),
            active: false,
            pending: [vec![0.0; PACKET_FRAMES], vec![0.0; PACKET_FRAMES]],
            fill: 0,
            peak: 0.0,
            last_sent_us: 0,
            send,
            previous: vec![0.0; block],
            gains: MixGains::UNITY,
            input_level: LevelAccumulator::default(),
            output_level: LevelAccumulator::default(),
        }
    }

    fn reset(&mut self, client_id: u32) {
        self.sender = JamSender::new(client_id);
        self.fill = 0;
        self.peak = 0.0;
        self.last_sent_us = 0;
        self.previous.fill(0.0);
    }
}

/// Pulls one block from every seated jammer of `receiver` into `mono` (each jammer's
/// two channels at its gain) and, if given, into `stereo` with its pan, leaving out the
/// node's own seats there.
fn pull_receiver(
    receiver: &mut Receiver,
    r: usize,
    now_us: u64,
    shared: &JamShared,
    scratch: &mut [Vec<f32>; 2],
    mono: &mut [f32],
    mut stereo: Option<(&mut [f32], &mut [f32])>,
) {
    let [s1, s2] = scratch;
    for s in 0..receiver.owners.len() {
        let Some(id) = receiver.rx.seats().get(s).and_then(|seat| seat.client_id()) else {
            continue;
        };
        receiver.rx.pull_seat(s, now_us, s1, s2);
        let slot = &shared.jammers[r][s];
        receiver.levels[s][0].add_block(s1, &slot.levels[0]);
        receiver.levels[s][1].add_block(s2, &slot.levels[1]);
        // Gains were read when the jammer took the seat (sync_gains runs first).
        let gains = if receiver.owners[s] == Some(id) {
            receiver.gains[s]
        } else {
            MixGains::UNITY
        };
        let g = gains.mono();
        if g != 0.0 {
            for ((o, a), b) in mono.iter_mut().zip(s1.iter()).zip(s2.iter()) {
                *o += g * (a + b);
            }
        }
        if let Some((left, right)) = stereo.as_mut()
            && !shared.is_own(id)
        {
            let (gl, gr) = gains.stereo();
            for (((l, rr), a), b) in left
                .iter_mut()
                .zip(right.iter_mut())
                .zip(s1.iter())
                .zip(s2.iter())
            {
                let x = a + b;
                *l += gl * x;
                *rr += gr * x;
            }
        }
    }
}

impl Node for JamNode {
    fn produce(&mut self, outputs: &mut [f32], block: usize) {
        outputs.fill(0.0);
        if block != self.block {
            return;
        }
        let now_us = self.tick();
        self.sync_activity();
        self.drain_rings();
        self.sync_gains();
        let n = self.seats.len();
        let (outs, stereo) = outputs.split_at_mut(n * block);
        let (left, right) = stereo.split_at_mut(block);
        match self.mode {
            NodeMode::Host => {
                self.room.fill(0.0);
                pull_receiver(
                    &mut self.receivers[0],
                    0,
                    now_us,
                    &self.shared,
                    &mut self.scratch,
                    &mut self.room,
                    Some((&mut *left, &mut *right)),
                );
                for (k, out) in outs.chunks_exact_mut(block).enumerate() {
                    if !self.seats[k].active {
                        continue;
                    }
                    out.copy_from_slice(&self.room);
                    // Mix-minus: every other seat, never the seat itself.
                    for (j, other) in self.seats.iter().enumerate() {
                        let g = other.gains.mono();
                        if j == k || !other.active || g == 0.0 {
                            continue;
                        }
                        for (o, x) in out.iter_mut().zip(&other.previous) {
                            *o += g * x;
                        }
                    }
                }
            }
            NodeMode::Join => {
                let first_active = self.seats.iter().position(|s| s.active);
                for (k, out) in outs.chunks_exact_mut(block).enumerate() {
                    if !self.seats[k].active {
                        continue;
                    }
                    let stereo = (first_active == Some(k)).then_some((&mut *left, &mut *right));
                    pull_receiver(
                        &mut self.receivers[k],
                        k,
                        now_us,
                        &self.shared,
                        &mut self.scratch,
                        out,
                        stereo,
                    );
                }
            }
        }
        // The seats themselves in the stereo mix of the room.
        for seat in self.seats.iter().filter(|s| s.active) {
            let (gl, gr) = seat.gains.stereo();
            for ((l, r), x) in left.iter_mut().zip(right.iter_mut()).zip(&seat.previous) {
                *l += gl * x;
                *r += gr * x;
            }
        }
        for (k, out) in outs.chunks_exact(block).enumerate() {
            if self.seats[k].active {
                self.seats[k]
                    .output_level
                    .add_block(out, &self.shared.seats[k].output_level);
            }
        }
        if self.publish_countdown == 0 {
            self.publish();
            self.publish_countdown = PUBLISH_EVERY;
        }
        self.publish_countdown -= 1;
    }

    fn consume(&mut self, inputs: &[f32], block: usize) {
        if block != self.block {
            return;
        }
        let now_us = self.now_ns / 1_000;
        let n = self.seats.len();
        let suppress = self.shared.suppress_silence.load(Ordering::Relaxed);
        let mut queued = false;
        for k in 0..n {
            if !self.seats[k].active {
                continue;
            }
            let ch1 = inputs.get(k * block..(k + 1) * block).unwrap_or(&[]);
            let ch2 = if self.aux {
                inputs
                    .get((n + k) * block..(n + k + 1) * block)
                    .unwrap_or(&[])
            } else {
                &[]
            };
            let shared = &self.shared.seats[k];
            let seat = &mut self.seats[k];
            seat.input_level.add_block(ch1, &shared.input_level);
            for (i, p) in seat.previous.iter_mut().enumerate() {
                *p = ch1.get(i).copied().unwrap_or(0.0) + ch2.get(i).copied().unwrap_or(0.0);
            }
            let mut i = 0;
            while i < block {
                let take = (PACKET_FRAMES - seat.fill).min(block - i);
                let range = seat.fill..seat.fill + take;
                let [p1, p2] = &mut seat.pending;
                for (j, (d1, d2)) in p1[range.clone()].iter_mut().zip(&mut p2[range]).enumerate() {
                    *d1 = ch1.get(i + j).copied().unwrap_or(0.0);
                    *d2 = ch2.get(i + j).copied().unwrap_or(0.0);
                    seat.peak = seat.peak.max(d1.abs()).max(d2.abs());
                }
                seat.fill += take;
                i += take;
                if seat.fill == PACKET_FRAMES {
                    queued |= finish_packet(
                        seat,
                        k,
                        now_us,
                        suppress && self.mode == NodeMode::Join,
                        suppress,
                        shared,
                        self.host_send.as_mut(),
                    );
                    seat.fill = 0;
                    seat.peak = 0.0;
                }
            }
        }
        if queued {
            self.wake.notify();
        }
    }
}

/// Encodes a seat's full packet into the send ring (or, when it is silent and silence is
/// suppressed, nothing or a header-only keepalive). True if something was queued.
fn finish_packet(
    seat: &mut Seat,
    k: usize,
    now_us: u64,
    keepalive: bool,
    suppress: bool,
    shared: &super::shared::SeatShared,
    host_send: Option<&mut rtrb::Producer<Datagram>>,
) -> bool {
    let silent = suppress && seat.peak < SILENCE_PEAK;
    let header_only =
        silent && keepalive && now_us.saturating_sub(seat.last_sent_us) >= KEEPALIVE_US;
    if silent && !header_only {
        shared.packets_suppressed.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    let mut d = Datagram::empty();
    let (ch1, ch2): (&[f32], &[f32]) = if header_only {
        (&[], &[])
    } else {
        (&seat.pending[0], &seat.pending[1])
    };
    let Ok(len) = seat.sender.write_packet(now_us, ch1, ch2, &mut d.bytes) else {
        return false;
    };
    // A packet is at most 28 + 4 · 128 bytes.
    d.len = len as u16;
    d.seat = k as u16;
    d.time_us = now_us;
    let ring = match seat.send.as_mut() {
        Some(ring) => Some(ring),
        None => host_send,
    };
    let Some(ring) = ring else { return false };
    if ring.push(d).is_err() {
        shared.send_ring_full.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    shared.packets_queued.fetch_add(1, Ordering::Relaxed);
    seat.last_sent_us = now_us;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    use api::jam::JamMixSetting;
    use codecs::jam::packet::{JamChannel, JamPacket};

    const T0: u64 = 1_700_000_000_000_000;
    const BLOCK: usize = 48;

    /// Virtual wall clock, advanced by the test.
    struct Virtual(AtomicU64);
    impl JamClock for Virtual {
        fn now_us(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    struct Rig {
        node: JamNode,
        shared: Arc<JamShared>,
        clock: Arc<Virtual>,
        /// The socket thread's ends: (send consumer, recv producer) per link.
        sockets: Vec<(rtrb::Consumer<Datagram>, rtrb::Producer<Datagram>)>,
        seats: usize,
        aux: bool,
    }

    fn rig(mode: NodeMode, seats: u16, aux: bool) -> Rig {
        let receivers = match mode {
            NodeMode::Join => usize::from(seats),
            NodeMode::Host => 1,
        };
        let shared = Arc::new(JamShared::new(500, seats, receivers, 11));
        let mut engine_links = Vec::new();
        let mut sockets = Vec::new();
        for _ in 0..receivers {
            let (send_tx, send_rx) = rtrb::RingBuffer::new(256);
            let (recv_tx, recv_rx) = rtrb::RingBuffer::new(256);
            engine_links.push(EngineLink {
                send: send_tx,
                recv: recv_rx,
            });
            sockets.push((send_rx, recv_tx));
        }
        let clock = Arc::new(Virtual(AtomicU64::new(T0)));
        let node = JamNode::new(JamNodeParts {
            mode,
            block: BLOCK,
            aux,
            mix_seats: 11,
            shared: Arc::clone(&shared),
            links: engine_links,
            wake: Arc::new(Wake::new().unwrap()),
            clock: Arc::clone(&clock) as Arc<dyn JamClock>,
        })
        .unwrap();
        Rig {
            node,
            shared,
            clock,
            sockets,
            seats: usize::from(seats),
            aux,
        }
    }

    impl Rig {
        fn inputs(&self) -> usize {
            self.seats * if self.aux { 2 } else { 1 }
        }

        /// One block at virtual time `t`: returns the outputs.
        fn block(&mut self, t: u64, inputs: &[f32]) -> Vec<f32> {
            self.clock.0.store(t, Ordering::Relaxed);
            let mut out = vec![0.0; (self.seats + 2) * BLOCK];
            self.node.produce(&mut out, BLOCK);
            self.node.consume(inputs, BLOCK);
            out
        }

        fn deliver(&mut self, link: usize, bytes: &[u8], at: u64) {
            self.sockets[link]
                .1
                .push(Datagram::copy_of(bytes, at))
                .unwrap();
        }

        fn sent(&mut self, link: usize) -> Vec<Datagram> {
            let mut out = Vec::new();
            while let Ok(d) = self.sockets[link].0.pop() {
                out.push(d);
            }
            out
        }
    }

    fn tone(hz: f64, amplitude: f64, pos: usize) -> f32 {
        (amplitude * (2.0 * std::f64::consts::PI * hz * pos as f64 / 48_000.0).sin()) as f32
    }

    /// rtjam's wire round trip, from the sheet's formulas (rtjam.md §2).
    fn wire(x: f32) -> f32 {
        let n = ((x + 1.0).clamp(0.0, 2.0) * 32766.0).trunc();
        n / 32768.0 - 1.0
    }

    #[test]
    fn join_seat_sends_paced_packets_from_sequence_zero_only_while_active() {
        let mut rig = rig(NodeMode::Join, 1, false);
        let input: Vec<f32> = (0..BLOCK).map(|i| tone(1000.0, 0.5, i)).collect();
        for b in 0..100u64 {
            rig.block(T0 + b * 1_000, &input);
        }
        assert!(
            rig.sent(0).is_empty(),
            "an inactive seat is not in the room"
        );
        rig.shared.seats[0].active.store(true, Ordering::Relaxed);
        let mut pos = 0usize;
        let mut sent = Vec::new();
        for b in 100..1100u64 {
            let input: Vec<f32> = (0..BLOCK).map(|i| tone(1000.0, 0.5, pos + i)).collect();
            pos += BLOCK;
            rig.block(T0 + b * 1_000, &input);
            // The socket thread drains the ring as packets come.
            sent.extend(rig.sent(0));
        }
        assert_eq!(
            rig.shared.seats[0].send_ring_full.load(Ordering::Relaxed),
            0
        );
        // 1 s of 48 kHz in 128-frame packets: 375 (the first block is produced while
        // the seat was still inactive for consume: activation is read in produce).
        assert_eq!(sent.len(), 375);
        let mut expected = 0usize;
        for (i, d) in sent.iter().enumerate() {
            let p = JamPacket::parse(d.as_bytes()).unwrap();
            assert_eq!(p.frames(), 128);
            assert_eq!(p.header().sequence, i as u32);
            assert_eq!(p.header().client_id, 500);
            for (j, w) in p.words(JamChannel::Ch1).enumerate() {
                let x = tone(1000.0, 0.5, expected + j);
                assert_eq!(w, codecs::jam::encode_sample(x));
            }
            assert!(p.words(JamChannel::Ch2).all(|w| w == 0x7FFE));
            expected += 128;
        }
        // Deactivate and reactivate: a fresh stream from sequence 0.
        rig.shared.seats[0].active.store(false, Ordering::Relaxed);
        rig.block(T0 + 1_200_000, &input);
        rig.shared.seats[0].active.store(true, Ordering::Relaxed);
        for b in 0..10u64 {
            rig.block(T0 + 1_201_000 + b * 1_000, &input);
        }
        let again = rig.sent(0);
        let p = JamPacket::parse(again[0].as_bytes()).unwrap();
        assert_eq!(p.header().sequence, 0);
    }

    #[test]
    fn eleven_remote_jammers_are_mixed_with_their_gains() {
        let mut rig = rig(NodeMode::Join, 1, false);
        rig.shared.seats[0].active.store(true, Ordering::Relaxed);
        rig.shared.mix.set(&JamMixSetting {
            client_id: 2003,
            gain_db: -6.0206,
            mute: false,
            pan: 0.0,
        });
        rig.shared.mix.set(&JamMixSetting {
            client_id: 2007,
            gain_db: 0.0,
            mute: true,
            pan: 0.0,
        });
        let mut senders: Vec<JamSender> = (0..11).map(|j| JamSender::new(2001 + j)).collect();
        let mut out1 = Vec::new();
        let mut sent_packets = 0usize;
        let mut buf = [0u8; 1024];
        let silence = vec![0.0; BLOCK];
        for b in 0..400u64 {
            let t = T0 + b * 1_000;
            // Packets arrive on their 2.667 ms grid, before the block that reads them.
            while sent_packets as u64 * 128 * 1_000_000 / 48_000 <= b * 1_000 {
                let at = T0 + sent_packets as u64 * 128 * 1_000_000 / 48_000;
                for (j, s) in senders.iter_mut().enumerate() {
                    let ch1: Vec<f32> = (0..128)
                        .map(|i| tone(200.0 + 100.0 * j as f64, 0.04, sent_packets * 128 + i))
                        .collect();
                    let n = s.write_packet(at, &ch1, &[0.0; 128], &mut buf).unwrap();
                    rig.deliver(0, &buf[..n], at);
                }
                sent_packets += 1;
            }
            let out = rig.block(t, &silence);
            out1.extend_from_slice(&out[..BLOCK]);
        }
        let start = out1.iter().position(|&v| v != 0.0).unwrap();
        let mut max_err = 0.0f32;
        for (o, &got) in out1.iter().enumerate().skip(start) {
            let pos = o - start;
            let mut want = 0.0f32;
            for j in 0..11usize {
                let g = match 2001 + j as u32 {
                    2003 => 0.5,
                    2007 => 0.0,
                    _ => 1.0,
                };
                // Channel 2 (silence on the wire) decodes to -0.000061.
                want += g * (wire(tone(200.0 + 100.0 * j as f64, 0.04, pos)) + wire(0.0));
            }
            max_err = max_err.max((got - want).abs());
        }
        assert!(max_err < 1e-4, "max error {max_err}");
        // Every jammer is published with a shallow buffer on this perfect network.
        for _ in 0..PUBLISH_EVERY {
            rig.block(T0 + 400_000, &silence);
        }
        let seated: Vec<u32> = rig.shared.jammers[0]
            .iter()
            .filter_map(|s| s.client())
            .collect();
        assert_eq!(seated.len(), 11);
        for slot in &rig.shared.jammers[0] {
            assert!(slot.depth_samples.load(Ordering::Relaxed) < 400);
            assert_eq!(slot.lost.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn hosted_seats_hear_members_and_each_other_but_not_themselves() {
        let mut rig = rig(NodeMode::Host, 2, false);
        for seat in &rig.shared.seats {
            seat.active.store(true, Ordering::Relaxed);
        }
        let mut member = JamSender::new(9000);
        let mut buf = [0u8; 1024];
        let mut outs = [Vec::new(), Vec::new()];
        let mut left = Vec::new();
        let mut packets = 0usize;
        rig.shared.mix.set(&JamMixSetting {
            client_id: 9000,
            gain_db: 0.0,
            mute: false,
            pan: -1.0,
        });
        for b in 0..300u64 {
            let t = T0 + b * 1_000;
            while packets as u64 * 128 * 1_000_000 / 48_000 <= b * 1_000 {
                let at = T0 + packets as u64 * 128 * 1_000_000 / 48_000;
                let n = member
                    .write_packet(at, &[0.25; 128], &[0.0; 128], &mut buf)
                    .unwrap();
                rig.deliver(0, &buf[..n], at);
                packets += 1;
            }
            // Seat 1 says 0.1, seat 2 says 0.05.
            let mut inputs = vec![0.1f32; BLOCK];
            inputs.extend(std::iter::repeat_n(0.05f32, BLOCK));
            let out = rig.block(t, &inputs);
            outs[0].extend_from_slice(&out[..BLOCK]);
            outs[1].extend_from_slice(&out[BLOCK..2 * BLOCK]);
            left.extend_from_slice(&out[2 * BLOCK..3 * BLOCK]);
        }
        let member_level = wire(0.25) + wire(0.0);
        let end = outs[0].len() - 1;
        assert!(
            (outs[0][end] - (member_level + 0.05)).abs() < 1e-5,
            "{}",
            outs[0][end]
        );
        assert!(
            (outs[1][end] - (member_level + 0.1)).abs() < 1e-5,
            "{}",
            outs[1][end]
        );
        // Stereo: the member hard left at √2, the seats centred.
        let want_left = 2f32.sqrt() * member_level + 0.1 + 0.05;
        assert!((left[end] - want_left).abs() < 1e-5, "{}", left[end]);
        // The seats' packets go out on the room's one ring, tagged with their seat.
        let sent = rig.sent(0);
        assert!(sent.iter().any(|d| d.seat == 0) && sent.iter().any(|d| d.seat == 1));
        let p = JamPacket::parse(sent[1].as_bytes()).unwrap();
        assert_eq!(p.header().client_id, 500 + u32::from(sent[1].seat));
    }

    #[test]
    fn silence_is_suppressed_but_a_joined_seat_keeps_its_place() {
        let mut rig = rig(NodeMode::Join, 1, false);
        rig.shared.seats[0].active.store(true, Ordering::Relaxed);
        rig.shared.suppress_silence.store(true, Ordering::Relaxed);
        let silence = vec![0.0; BLOCK];
        for b in 0..1000u64 {
            rig.block(T0 + b * 1_000, &silence);
        }
        let sent = rig.sent(0);
        // One header-only keepalive every 250 ms.
        assert_eq!(sent.len(), 4, "{sent:?}");
        assert!(sent.iter().all(|d| d.len == 28));
        let loud = vec![0.5; BLOCK];
        for b in 1000..1100u64 {
            rig.block(T0 + b * 1_000, &loud);
        }
        let sent = rig.sent(0);
        assert!(sent.len() >= 37 && sent.iter().all(|d| d.len == 540));
        assert!(
            rig.shared.seats[0]
                .packets_suppressed
                .load(Ordering::Relaxed)
                > 300
        );
    }

    /// Runs blocks `from_ms..to_ms`; when `sender` is given it streams 0.5 on the
    /// 2.667 ms grid (packet `k` due at k · 128 / 48 ms from `grid_ms`). Returns how many
    /// output samples were loud.
    fn stream(
        rig: &mut Rig,
        from_ms: u64,
        to_ms: u64,
        mut sender: Option<&mut JamSender>,
        grid_ms: u64,
    ) -> usize {
        let mut buf = [0u8; 1024];
        let silence = vec![0.0; BLOCK];
        let mut loud = 0;
        let mut k = 0u64;
        for b in from_ms..to_ms {
            let t = T0 + b * 1_000;
            if let Some(s) = sender.as_mut() {
                while grid_ms * 1_000 + k * 128 * 1_000_000 / 48_000 <= b * 1_000 {
                    let at = T0 + grid_ms * 1_000 + k * 128 * 1_000_000 / 48_000;
                    let n = s
                        .write_packet(at, &[0.5; 128], &[0.0; 128], &mut buf)
                        .unwrap();
                    rig.deliver(0, &buf[..n], at);
                    k += 1;
                }
            }
            let out = rig.block(t, &silence);
            loud += out[..BLOCK].iter().filter(|v| v.abs() > 0.4).count();
        }
        loud
    }

    #[test]
    fn a_jammer_leaving_frees_its_slot_and_is_heard_again_when_it_returns() {
        let mut rig = rig(NodeMode::Join, 1, false);
        rig.shared.seats[0].active.store(true, Ordering::Relaxed);
        let mut jammer = JamSender::new(77);
        // 500 ms of audio, all heard but the first 2 ms of playout delay.
        let loud = stream(&mut rig, 0, 500, Some(&mut jammer), 0);
        assert!(loud > 23_000, "{loud}");
        assert_eq!(rig.shared.jammers[0][0].client(), Some(77));
        // Silent for 1.5 s: forgotten.
        assert!(stream(&mut rig, 500, 2_000, None, 0) < 200);
        assert_eq!(rig.shared.jammers[0][0].client(), None);
        // Back, with a new stream from sequence 0: heard again, from the same slot.
        let mut back = JamSender::new(77);
        let loud = stream(&mut rig, 2_000, 2_500, Some(&mut back), 2_000);
        assert!(loud > 23_000, "{loud}");
        assert_eq!(rig.shared.jammers[0][0].client(), Some(77));
        let slot = &rig.shared.jammers[0][0];
        assert_eq!(slot.lost.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_returning_jammers_published_counters_start_again() {
        let mut rig = rig(NodeMode::Join, 1, false);
        rig.shared.seats[0].active.store(true, Ordering::Relaxed);
        let mut buf = [0u8; 1024];
        let silence = vec![0.0; BLOCK];
        // 500 ms from jammer 77 with every 20th packet lost on the way.
        let mut jammer = JamSender::new(77);
        let mut k = 0u64;
        for b in 0..500u64 {
            while k * 128 * 1_000_000 / 48_000 <= b * 1_000 {
                let at = T0 + k * 128 * 1_000_000 / 48_000;
                let n = jammer
                    .write_packet(at, &[0.5; 128], &[0.0; 128], &mut buf)
                    .unwrap();
                if k % 20 != 19 {
                    rig.deliver(0, &buf[..n], at);
                }
                k += 1;
            }
            rig.block(T0 + b * 1_000, &silence);
        }
        let slot = &rig.shared.jammers[0][0];
        assert!(slot.lost.load(Ordering::Relaxed) >= 8);
        // Gone for 1.5 s, then back with a clean stream.
        assert!(stream(&mut rig, 500, 2_000, None, 0) < 200);
        let mut back = JamSender::new(77);
        stream(&mut rig, 2_000, 2_500, Some(&mut back), 2_000);
        let slot = &rig.shared.jammers[0][0];
        assert_eq!(slot.client(), Some(77));
        let counts = [
            &slot.lost,
            &slot.late,
            &slot.underruns,
            &slot.overruns,
            &slot.reordered,
            &slot.duplicates,
        ]
        .map(|c| c.load(Ordering::Relaxed));
        assert_eq!(counts, [0; 6]);
        let packets = slot.packets.load(Ordering::Relaxed);
        assert!((180..=190).contains(&packets), "{packets}");
    }

    #[test]
    fn channel_two_carries_the_aux_input() {
        let mut rig = rig(NodeMode::Join, 1, true);
        assert_eq!(rig.inputs(), 2);
        rig.shared.seats[0].active.store(true, Ordering::Relaxed);
        let mut inputs = vec![0.25f32; BLOCK];
        inputs.extend(std::iter::repeat_n(-0.5f32, BLOCK));
        for b in 0..10u64 {
            rig.block(T0 + b * 1_000, &inputs);
        }
        let sent = rig.sent(0);
        let p = JamPacket::parse(sent[0].as_bytes()).unwrap();
        assert!(
            p.words(JamChannel::Ch1)
                .all(|w| w == codecs::jam::encode_sample(0.25))
        );
        assert!(
            p.words(JamChannel::Ch2)
                .all(|w| w == codecs::jam::encode_sample(-0.5))
        );
    }

    #[test]
    fn port_names_follow_the_seats() {
        let (outputs, inputs) = port_names(2, true);
        assert_eq!(outputs, ["out1", "out2", "mix_left", "mix_right"]);
        assert_eq!(inputs, ["in1", "in2", "aux1", "aux2"]);
        let (_, inputs) = port_names(1, false);
        assert_eq!(inputs, ["in1"]);
    }
}
