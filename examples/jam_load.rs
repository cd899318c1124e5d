//! Load generator for a hosted jam room (rtjam.md §4): N jammers on loopback, each
//! sending a standard 540-byte packet every 2.667 ms (375 per second), like rtjam's
//! client. The room sends every packet to the N - 1 others and echoes its header, so it
//! writes N² · 375 datagrams per second.
//!
//! ```text
//! cargo run --release -p telepatch-examples --example jam_load -- \
//!     --room 127.0.0.1:7891 --members 16 --seconds 10 --gateway-pid $(pidof telepatch)
//! ```
//!
//! Jammer 1 is the probe: it reads everything it is sent and measures how many of the
//! others' packets arrived and how long each took (its arrival minus the sender's
//! client_time, one clock). The other jammers never read their sockets; the kernel
//! drops what overflows their buffers, which costs the room the same to send. With
//! `--gateway-pid` the gateway's CPU time over the run is read from /proc.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use codecs::jam::{JamPacket, JamSender};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Load a hosted jam room with N jammers at 375 packets per second each")]
struct Args {
    /// The room (host:port).
    #[arg(long, default_value = "127.0.0.1:7891")]
    room: SocketAddr,
    /// Jammers.
    #[arg(long, default_value_t = 8)]
    members: u32,
    /// Seconds of measurement (after a 1 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The gateway's process id, to measure its CPU time.
    #[arg(long)]
    gateway_pid: Option<u32>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// User + system CPU seconds of a process (/proc/PID/stat fields 14 and 15).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / USER_HZ)
}

/// Clock ticks per second in /proc (USER_HZ): 100 on every mainstream Linux build.
const USER_HZ: f64 = 100.0;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run(args: Args) -> anyhow::Result<()> {
    let n = args.members.max(2);
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let probe = sockets[0].try_clone()?;
    probe.set_read_timeout(Some(Duration::from_millis(50)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let last_server_time = Arc::new(AtomicU64::new(0));

    let sender = {
        let (stop, last_server_time) = (Arc::clone(&stop), Arc::clone(&last_server_time));
        std::thread::spawn(move || -> u64 {
            let mut senders: Vec<JamSender> = (0..n).map(|i| JamSender::new(5000 + i)).collect();
            let ch = [0.0f32; 128];
            let mut buf = [0u8; 1024];
            let period = Duration::from_nanos(128 * 1_000_000_000 / 48_000);
            let start = Instant::now();
            let mut sent = 0u64;
            let mut k = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let due = start + period * k;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                for (i, (socket, s)) in sockets.iter().zip(&mut senders).enumerate() {
                    if i == 0 {
                        s.observe(&codecs::jam::JamHeader {
                            server_time: last_server_time.load(Ordering::Relaxed),
                            ..Default::default()
                        });
                    }
                    if let Ok(len) = s.write_packet(now_us(), &ch, &ch, &mut buf)
                        && socket.send_to(&buf[..len], args.room).is_ok()
                    {
                        sent += 1;
                    }
                }
                k += 1;
            }
            sent
        })
    };

    let receiver = {
        let (stop, measuring, last_server_time) = (
            Arc::clone(&stop),
            Arc::clone(&measuring),
            Arc::clone(&last_server_time),
        );
        std::thread::spawn(move || -> (u64, u64, Vec<u64>) {
            let mut buf = [0u8; 2048];
            let (mut audio, mut echoes) = (0u64, 0u64);
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = probe.recv(&mut buf) else {
                    continue;
                };
                let arrived = now_us();
                let Ok(p) = JamPacket::parse(&buf[..n]) else {
                    continue;
                };
                last_server_time.store(p.header().server_time, Ordering::Relaxed);
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                if p.is_header_only() {
                    echoes += 1;
                } else {
                    audio += 1;
                    latencies.push(arrived.saturating_sub(p.header().client_time));
                }
            }
            (audio, echoes, latencies)
        })
    };

    std::thread::sleep(Duration::from_secs(1));
    let cpu_before = args.gateway_pid.map(cpu_seconds).transpose()?;
    let started = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = args.gateway_pid.map(cpu_seconds).transpose()?;
    stop.store(true, Ordering::Relaxed);
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))?;
    let (audio, echoes, mut latencies) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    latencies.sort_unstable();

    let n = f64::from(n);
    let expected_audio = (n - 1.0) * 375.0 * elapsed;
    println!(
        "members {n}: offered {:.0} packets/s into the room (sent {sent} in all), room sends {:.0} datagrams/s",
        n * 375.0,
        n * n * 375.0
    );
    println!(
        "probe: {audio} of {expected_audio:.0} expected packets from the others ({:.2} % lost), {echoes} echoes",
        100.0 * (1.0 - audio as f64 / expected_audio).max(0.0)
    );
    println!(
        "probe: forwarding latency p50 {} µs, p99 {} µs, max {} µs",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0)
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let share = (after - before) / elapsed;
        println!(
            "gateway CPU: {:.1} % of one core; {:.2} µs per datagram in or out",
            share * 100.0,
            share * 1e6 / (n * 375.0 + n * n * 375.0)
        );
    }
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
