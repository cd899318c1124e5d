//! An independent RTJam jammer and room forwarder for the end-to-end tests, written
//! from the fact sheet (rtjam.md §2-§5) and deliberately not using telepatch's codec,
//! so a mistake in `codecs::jam` cannot cancel itself out.
//!
//! * [`Jammer`]: the stock client's network behaviour: one UDP socket, a 540-byte
//!   packet every 2.667 ms (two channels of 128 offset-binary samples), sequence from
//!   0, client_time = now, server_time = the newest one received; everything received
//!   is recorded with its arrival time.
//! * [`Forwarder`]: the broadcast server's "separate" mode: members keyed by source
//!   address, 1 s expiry, server_time and beat stamped, the whole packet to the others
//!   and the 28-byte header back to the sender.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (rtjam's server_time/client_time clock).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// rtjam.md §2: x + 1, clamped to [0, 2], times 32766, truncated.
pub fn encode(x: f32) -> u16 {
    (((x + 1.0).clamp(0.0, 2.0)) * 32766.0) as u16
}

/// rtjam.md §2: n / 32768 - 1.
pub fn decode(n: u16) -> f32 {
    f32::from(n) / 32768.0 - 1.0
}

/// The fields of a 28-byte header (rtjam.md §2 table), big-endian on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub channel: u8,
    pub sample_rate: u8,
    pub chunks: u8,
    pub beat: u8,
    pub server_time: u64,
    pub client_time: u64,
    pub client_id: u32,
    pub sequence: u32,
}

impl Header {
    pub fn read(b: &[u8]) -> Header {
        Header {
            channel: b[0],
            sample_rate: b[1],
            chunks: b[2],
            beat: b[3],
            server_time: u64::from_be_bytes(b[4..12].try_into().unwrap()),
            client_time: u64::from_be_bytes(b[12..20].try_into().unwrap()),
            client_id: u32::from_be_bytes(b[20..24].try_into().unwrap()),
            sequence: u32::from_be_bytes(b[24..28].try_into().unwrap()),
        }
    }

    pub fn write(&self, b: &mut Vec<u8>) {
        b.extend_from_slice(&[self.channel, self.sample_rate, self.chunks, self.beat]);
        b.extend_from_slice(&self.server_time.to_be_bytes());
        b.extend_from_slice(&self.client_time.to_be_bytes());
        b.extend_from_slice(&self.client_id.to_be_bytes());
        b.extend_from_slice(&self.sequence.to_be_bytes());
    }
}

/// A packet: header, all of channel 1, then all of channel 2 (not interleaved).
pub fn packet(header: &Header, ch1: &[f32], ch2: &[f32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(28 + 4 * ch1.len());
    let mut h = *header;
    h.chunks = ((28 + 4 * ch1.len()) / 32) as u8;
    h.write(&mut b);
    for x in ch1.iter().chain(ch2) {
        b.extend_from_slice(&encode(*x).to_be_bytes());
    }
    b
}

/// Channel `c` (0 or 1) of a received packet, decoded.
pub fn samples(bytes: &[u8], c: usize) -> Vec<f32> {
    let frames = (bytes.len() - 28) / 4;
    let start = 28 + c * 2 * frames;
    bytes[start..start + 2 * frames]
        .chunks_exact(2)
        .map(|w| decode(u16::from_be_bytes([w[0], w[1]])))
        .collect()
}

/// A datagram as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Arrival (monotonic).
    pub at: Instant,
    /// Arrival, µs since the epoch.
    pub at_us: u64,
    /// Where it came from.
    pub from: SocketAddr,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl Received {
    pub fn header(&self) -> Header {
        Header::read(&self.bytes)
    }
}

/// What a jammer sends on each channel.
#[derive(Debug, Clone, Copy)]
pub struct Voice {
    /// Tone on channel 1 (Hz, peak amplitude).
    pub ch1: (f64, f32),
    /// Tone on channel 2 (Hz, peak amplitude); amplitude 0 is silence.
    pub ch2: (f64, f32),
}

/// A stock-client-like jammer. See the module documentation.
pub struct Jammer {
    pub client_id: u32,
    pub addr: SocketAddr,
    sending: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<Vec<Vec<u8>>>>,
    receiver: Option<JoinHandle<Vec<Received>>>,
    last_sent_us: Arc<AtomicU64>,
}

/// Everything a jammer sent and received.
pub struct JammerLog {
    pub client_id: u32,
    pub addr: SocketAddr,
    pub sent: Vec<Vec<u8>>,
    pub received: Vec<Received>,
}

impl Jammer {
    /// Starts sending to `room` from a fresh loopback socket.
    pub fn start(room: SocketAddr, client_id: u32, voice: Voice) -> Jammer {
        Jammer::start_lossy(room, client_id, voice, None)
    }

    /// Same, but every `lose_every`-th packet is lost on the way: its sequence number is
    /// used and nothing is sent.
    pub fn start_lossy(
        room: SocketAddr,
        client_id: u32,
        voice: Voice,
        lose_every: Option<u32>,
    ) -> Jammer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let recv_socket = socket.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sending = Arc::new(AtomicBool::new(true));
        let last_server_time = Arc::new(AtomicU64::new(0));
        let last_sent_us = Arc::new(AtomicU64::new(0));
        let receiver = {
            let stop = Arc::clone(&stop);
            let last_server_time = Arc::clone(&last_server_time);
            std::thread::spawn(move || {
                let mut log = Vec::new();
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = recv_socket.recv_from(&mut buf) {
                        let r = Received {
                            at: Instant::now(),
                            at_us: now_us(),
                            from,
                            bytes: buf[..n].to_vec(),
                        };
                        // The validity rule of rtjam.md §2; then note server_time (§5).
                        if n >= 28 && n % 2 == 0 {
                            last_server_time.store(r.header().server_time, Ordering::Relaxed);
                        }
                        log.push(r);
                    }
                }
                log
            })
        };
        let sender = {
            let stop = Arc::clone(&stop);
            let sending = Arc::clone(&sending);
            let last_sent_us = Arc::clone(&last_sent_us);
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                let start = Instant::now();
                let mut sequence = 0u32;
                let mut position = 0usize;
                let period = Duration::from_nanos(128 * 1_000_000_000 / 48_000);
                while !stop.load(Ordering::Relaxed) {
                    let due = start + period * (position / 128) as u32;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let tone = |(hz, amp): (f64, f32), i: usize| {
                        amp * (2.0 * std::f64::consts::PI * hz * (position + i) as f64 / 48_000.0)
                            .sin() as f32
                    };
                    let ch1: Vec<f32> = (0..128).map(|i| tone(voice.ch1, i)).collect();
                    let ch2: Vec<f32> = (0..128).map(|i| tone(voice.ch2, i)).collect();
                    position += 128;
                    if !sending.load(Ordering::Relaxed) {
                        continue;
                    }
                    if lose_every.is_some_and(|n| sequence % n == n - 1) {
                        sequence += 1;
                        continue;
                    }
                    let header = Header {
                        server_time: last_server_time.load(Ordering::Relaxed),
                        client_time: now_us(),
                        client_id,
                        sequence,
                        ..Header::default()
                    };
                    let bytes = packet(&header, &ch1, &ch2);
                    if socket.send_to(&bytes, room).is_ok() {
                        sent.push(bytes);
                        last_sent_us.store(now_us(), Ordering::Relaxed);
                    }
                    sequence += 1;
                }
                sent
            })
        };
        Jammer {
            client_id,
            addr,
            sending,
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
            last_sent_us,
        }
    }

    /// Stops sending (the jammer goes quiet but keeps listening); returns when its
    /// last packet left, µs since the epoch.
    pub fn go_quiet(&self) -> u64 {
        self.sending.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(10));
        self.last_sent_us.load(Ordering::Relaxed)
    }

    /// Stops and returns what was sent and received.
    pub fn finish(mut self) -> JammerLog {
        self.stop.store(true, Ordering::Relaxed);
        JammerLog {
            client_id: self.client_id,
            addr: self.addr,
            sent: self.sender.take().unwrap().join().unwrap(),
            received: self.receiver.take().unwrap().join().unwrap(),
        }
    }
}

impl JammerLog {
    /// Received packets carrying audio from `client_id`.
    pub fn audio_from(&self, client_id: u32) -> Vec<&Received> {
        self.received
            .iter()
            .filter(|r| r.bytes.len() > 28 && r.header().client_id == client_id)
            .collect()
    }

    /// Received 28-byte echoes of the jammer's own packets.
    pub fn echoes(&self) -> Vec<&Received> {
        self.received
            .iter()
            .filter(|r| r.bytes.len() == 28 && r.header().client_id == self.client_id)
            .collect()
    }

    /// Channel `c` of `client_id`'s packets, concatenated in sequence order.
    pub fn channel_from(&self, client_id: u32, c: usize) -> Vec<f32> {
        let mut packets = self.audio_from(client_id);
        packets.sort_by_key(|r| r.header().sequence);
        packets.iter().flat_map(|r| samples(&r.bytes, c)).collect()
    }
}

/// One member of a [`Forwarder`]'s room.
#[derive(Debug, Clone)]
pub struct ForwarderMember {
    pub last_heard: Instant,
    /// Every datagram received from it.
    pub received: Vec<Received>,
    /// Every server_time stamped on a datagram sent to it.
    pub stamps_sent: Vec<u64>,
}

/// A scripted rtjam broadcast server ("separate" mode). See the module documentation.
pub struct Forwarder {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Members by address (departed members stay, with their history).
    pub members: Arc<Mutex<HashMap<SocketAddr, ForwarderMember>>>,
    /// Addresses that are members now.
    pub current: Arc<Mutex<Vec<SocketAddr>>>,
    socket: UdpSocket,
}

impl Forwarder {
    pub fn start() -> Forwarder {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(6)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let members: Arc<Mutex<HashMap<SocketAddr, ForwarderMember>>> = Arc::default();
        let current: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let thread = {
            let (stop, members, current) = (
                Arc::clone(&stop),
                Arc::clone(&members),
                Arc::clone(&current),
            );
            let socket = socket.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while !stop.load(Ordering::Relaxed) {
                    let received = socket.recv_from(&mut buf);
                    let now = Instant::now();
                    let mut current = current.lock().unwrap();
                    let mut members = members.lock().unwrap();
                    // rtjam.md §3: a member silent for 1 s is dropped.
                    current.retain(|a| {
                        now.duration_since(members[a].last_heard) < Duration::from_secs(1)
                    });
                    let Ok((n, from)) = received else { continue };
                    if n < 28 || n % 2 != 0 {
                        continue;
                    }
                    let server_time = now_us();
                    let member = members.entry(from).or_insert_with(|| ForwarderMember {
                        last_heard: now,
                        received: Vec::new(),
                        stamps_sent: Vec::new(),
                    });
                    member.last_heard = now;
                    member.received.push(Received {
                        at: now,
                        at_us: server_time,
                        from,
                        bytes: buf[..n].to_vec(),
                    });
                    if !current.contains(&from) {
                        current.push(from);
                    }
                    // §4 step 2: stamp server_time and beat (120 BPM, §6).
                    buf[3] = ((server_time / 500_000) % 4) as u8;
                    buf[4..12].copy_from_slice(&server_time.to_be_bytes());
                    for to in current.iter() {
                        let bytes = if *to == from { &buf[..28] } else { &buf[..n] };
                        let _ = socket.send_to(bytes, to);
                        if let Some(m) = members.get_mut(to) {
                            m.stamps_sent.push(server_time);
                        }
                    }
                }
            })
        };
        Forwarder {
            addr,
            stop,
            thread: Some(thread),
            members,
            current,
            socket,
        }
    }

    /// Sends raw bytes from the forwarder's own address (it is the room server).
    pub fn inject(&self, to: SocketAddr, bytes: &[u8]) {
        self.socket.send_to(bytes, to).unwrap();
    }

    /// The member at `addr`, if it ever sent anything.
    pub fn member(&self, addr: SocketAddr) -> Option<ForwarderMember> {
        self.members.lock().unwrap().get(&addr).cloned()
    }

    /// The member whose packets carry `client_id`.
    pub fn member_with_id(&self, client_id: u32) -> Option<(SocketAddr, ForwarderMember)> {
        self.members
            .lock()
            .unwrap()
            .iter()
            .find(|(_, m)| {
                m.received
                    .iter()
                    .any(|r| r.bytes.len() >= 28 && r.header().client_id == client_id)
            })
            .map(|(a, m)| (*a, m.clone()))
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}
