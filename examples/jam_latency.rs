//! Latency between a phone caller and an RTJam jammer through a jam room hosted by the
//! gateway (docs/JAM.md). The program is both ends at once, on one clock:
//!
//! * a caller: an AudioSocket connection (audiosocket.md) sending paced 20 ms frames of
//!   8 kHz signed-linear silence, with a 1 kHz burst starting exactly at the start of a
//!   frame every `--every-ms`;
//! * a jammer: a UDP socket in the room sending rtjam's 540-byte packets every 2.667 ms,
//!   silent but for a 1 kHz burst starting exactly at the start of a packet, half-way
//!   between the caller's bursts.
//!
//! It reports, per direction, the time from the moment the frame (packet) that starts a
//! burst was written to the moment the packet (frame) carrying the burst's first loud
//! sample arrived at the other end, and to the moment that sample would sound if what
//! arrived were played at once (arrival plus the sample's offset in it):
//!
//! * caller → jam: the gateway's added latency from a caller's frame to the jam packet
//!   carrying it (uplink ring, resampling, the engine block, packetization, the socket
//!   thread);
//! * jam → caller: a jammer's packet to the caller's frame (jitter buffer, the engine,
//!   downlink ring, resampling, 20 ms framing).
//!
//! ```text
//! cargo run --release -p telepatch-examples --example jam_latency -- \
//!     --audiosocket 127.0.0.1:9092 --room 127.0.0.1:7891 --uuid 1a7e0000-... --bursts 40
//! ```
//! The gateway must route `--uuid` into the room (a `jam` route action).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use codecs::jam::{JamChannel, JamPacket, JamSender};
use uuid::Uuid;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Measure caller <-> jammer latency through a hosted jam room")]
struct Args {
    /// The gateway's AudioSocket address.
    #[arg(long, default_value = "127.0.0.1:9092")]
    audiosocket: SocketAddr,
    /// The hosted room.
    #[arg(long, default_value = "127.0.0.1:7891")]
    room: SocketAddr,
    /// The call's UUID (routed into the room by the gateway's configuration).
    #[arg(long)]
    uuid: Uuid,
    /// Bursts in each direction.
    #[arg(long, default_value_t = 40)]
    bursts: u32,
    /// Time between two bursts of one side, ms.
    #[arg(long, default_value_t = 400)]
    every_ms: u64,
}

const CALLER_RATE: usize = 8_000;
const FRAME: usize = 160;
const BURST_HZ: f64 = 1_000.0;
const BURST_AMPLITUDE: f64 = 0.5;
/// Bursts last 60 ms; a sample above this is "loud".
const BURST_MS: usize = 60;
const THRESHOLD: f32 = 0.1;
/// The jammer's client_id.
const JAMMER: u32 = 4_242;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn burst(i: usize, rate: usize) -> f32 {
    (BURST_AMPLITUDE * (2.0 * std::f64::consts::PI * BURST_HZ * i as f64 / rate as f64).sin())
        as f32
}

/// Send times of burst starts (µs), and for each detected arrival the latency (µs) and
/// the loud sample's offset in its frame or packet.
#[derive(Default)]
struct Log {
    starts: Vec<u64>,
    arrivals: Vec<(u64, usize)>,
}

impl Log {
    /// Pairs each arrival with the latest start before it.
    fn latencies(&self) -> Vec<(u64, usize)> {
        self.arrivals
            .iter()
            .filter_map(|&(at, offset)| {
                let start = self.starts.iter().rev().find(|&&s| s <= at)?;
                Some((at - start, offset))
            })
            .collect()
    }
}

fn summary(name: &str, log: &Log, rate: usize) {
    let pairs = log.latencies();
    if pairs.is_empty() {
        println!("{name}: no bursts detected");
        return;
    }
    let stats = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        format!(
            "min {:.2}, p50 {:.2}, p95 {:.2}, max {:.2} ms",
            v[0],
            p(0.5),
            p(0.95),
            v[v.len() - 1]
        )
    };
    let arrival: Vec<f64> = pairs.iter().map(|&(us, _)| us as f64 / 1e3).collect();
    // The burst's first sample is `offset` samples into what arrived: played in real
    // time from the arrival on, it sounds that much later.
    let onset: Vec<f64> = pairs
        .iter()
        .map(|&(us, offset)| us as f64 / 1e3 + offset as f64 * 1e3 / rate as f64)
        .collect();
    println!("{name}: {} bursts", pairs.len());
    println!(
        "  arrival of the frame or packet carrying the onset: {}",
        stats(arrival)
    );
    println!(
        "  the onset sample itself (arrival + its offset):     {}",
        stats(onset)
    );
}

fn run(args: Args) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let to_jam = Arc::new(Mutex::new(Log::default()));
    let to_caller = Arc::new(Mutex::new(Log::default()));

    // The jammer: joins the room first so the caller's seat has someone to send to.
    let jam_socket = UdpSocket::bind("127.0.0.1:0")?;
    jam_socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let jam_rx = jam_socket.try_clone()?;
    let jammer = {
        let (stop, log, room, every) = (
            Arc::clone(&stop),
            Arc::clone(&to_caller),
            args.room,
            args.every_ms,
        );
        std::thread::spawn(move || {
            let mut sender = JamSender::new(JAMMER);
            let mut buf = [0u8; 1024];
            let period = Duration::from_nanos(128 * 1_000_000_000 / 48_000);
            let start = Instant::now();
            let first_burst = Duration::from_millis(1_000 + every / 2);
            let mut k = 0u32;
            let mut burst_pos: Option<usize> = None;
            while !stop.load(Ordering::Relaxed) {
                let due = start + period * k;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let t = due.duration_since(start);
                if t >= first_burst
                    && burst_pos.is_none()
                    && (t - first_burst).as_micros() % (u128::from(every) * 1000)
                        < period.as_micros()
                {
                    burst_pos = Some(0);
                }
                let mut ch1 = [0.0f32; 128];
                if let Some(pos) = burst_pos {
                    for (i, x) in ch1.iter_mut().enumerate() {
                        *x = burst(pos + i, 48_000);
                    }
                    burst_pos = (pos + 128 < 48 * BURST_MS).then_some(pos + 128);
                }
                if let Ok(len) = sender.write_packet(now_us(), &ch1, &[0.0; 128], &mut buf)
                    && jam_socket.send_to(&buf[..len], room).is_ok()
                    && burst_pos == Some(128)
                {
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .starts
                        .push(now_us());
                }
                k += 1;
            }
        })
    };
    let jam_listener = {
        let (stop, log) = (Arc::clone(&stop), Arc::clone(&to_jam));
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut quiet_since = 0u64;
            let mut loud = false;
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = jam_rx.recv(&mut buf) else {
                    continue;
                };
                let at = now_us();
                let Ok(p) = JamPacket::parse(&buf[..n]) else {
                    continue;
                };
                if p.is_header_only() || p.header().client_id == JAMMER {
                    continue;
                }
                let first = p.samples(JamChannel::Ch1).position(|x| x.abs() > THRESHOLD);
                match (first, loud) {
                    (Some(offset), false) if at - quiet_since > 100_000 => {
                        log.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .arrivals
                            .push((at, offset));
                        loud = true;
                    }
                    (None, true) => {
                        loud = false;
                        quiet_since = at;
                    }
                    _ => {}
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    // The caller.
    let mut stream = TcpStream::connect(args.audiosocket)
        .with_context(|| format!("cannot connect to {}", args.audiosocket))?;
    stream.set_nodelay(true)?;
    let mut id = vec![0x01, 0x00, 0x10];
    id.extend_from_slice(args.uuid.as_bytes());
    stream.write_all(&id)?;
    let mut reader = stream.try_clone()?;
    let ear = {
        let (stop, log) = (Arc::clone(&stop), Arc::clone(&to_caller));
        std::thread::spawn(move || {
            let mut header = [0u8; 3];
            let mut payload = vec![0u8; 65_535];
            let mut quiet_since = 0u64;
            let mut loud = false;
            while !stop.load(Ordering::Relaxed) {
                if reader.read_exact(&mut header).is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([header[1], header[2]]));
                if reader.read_exact(&mut payload[..len]).is_err() {
                    return;
                }
                let at = now_us();
                if header[0] != 0x10 {
                    continue;
                }
                let first = payload[..len].chunks_exact(2).position(|s| {
                    f32::from(i16::from_le_bytes([s[0], s[1]])).abs() / 32768.0 > THRESHOLD
                });
                match (first, loud) {
                    (Some(offset), false) if at - quiet_since > 100_000 => {
                        log.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .arrivals
                            .push((at, offset));
                        loud = true;
                    }
                    (None, true) => {
                        loud = false;
                        quiet_since = at;
                    }
                    _ => {}
                }
            }
        })
    };

    let frame_period = Duration::from_millis(20);
    let total = Duration::from_millis(1_000 + args.every_ms * u64::from(args.bursts) + 500);
    let frames = total.as_millis() as u32 / 20;
    let every_frames = (args.every_ms / 20).max(1) as u32;
    let start = Instant::now();
    let mut burst_pos: Option<usize> = None;
    for k in 0..frames {
        let due = start + frame_period * k;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if k >= 50 && (k - 50) % every_frames == 0 {
            burst_pos = Some(0);
        }
        let mut frame = vec![0x10, 0x01, 0x40];
        for i in 0..FRAME {
            let x = burst_pos.map_or(0.0, |pos| burst(pos + i, CALLER_RATE));
            frame.extend_from_slice(&((x * 32767.0) as i16).to_le_bytes());
        }
        let starts_burst = burst_pos == Some(0);
        burst_pos = burst_pos
            .map(|pos| pos + FRAME)
            .filter(|pos| *pos < CALLER_RATE * BURST_MS / 1000);
        stream.write_all(&frame)?;
        if starts_burst {
            to_jam
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .starts
                .push(now_us());
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let _ = stream.write_all(&[0x00, 0x00, 0x00]);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = jammer.join();
    let _ = jam_listener.join();
    let _ = ear.join();

    summary(
        "caller -> jam (frame written to packet received)",
        &to_jam.lock().unwrap_or_else(|e| e.into_inner()),
        48_000,
    );
    summary(
        "jam -> caller (packet written to frame received)",
        &to_caller.lock().unwrap_or_else(|e| e.into_inner()),
        CALLER_RATE,
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
