//! AES67 load and timing probe (docs/BENCHMARKS.md, "AES67 flows"): creates N transmit
//! flows on a running gateway through its API, receives every one of them on loopback,
//! and reports
//!
//! - packet cadence: inter-packet intervals (p50/p99/max) over all flows;
//! - send timing against PTP: each packet's arrival minus its due time (the media time of
//!   its last sample, aes67.md §5), and how many arrived more than 1 ms late;
//! - losses and timestamp discontinuities;
//! - the gateway's CPU use over the window (from `/proc/<pid>/stat`), per flow;
//! - with `--audiosocket`: the latency from an AudioSocket frame leaving this tool to the
//!   RTP packet carrying its first sample (a click at the frame's first sample, found
//!   again on channel 1 of the first flow).
//!
//! ```text
//! cargo run --release -p telepatch-examples --example aes67_load -- \
//!     --api http://127.0.0.1:8080 --token tp_... --flows 8 --channels 8 --seconds 30 \
//!     --audiosocket 127.0.0.1:9092 --pid "$(pidof telepatch)"
//! ```
//!
//! Loopback only: every flow is sent out of 127.0.0.1 (the gateway's default interface)
//! and joined here on 127.0.0.1. The flows are removed at the end. The receiving threads
//! ask for `SCHED_FIFO` priority 30 (below the gateway's 40) when allowed, so that the
//! machine's other work disturbs the measurement less; the gateway's own send-delay
//! histogram (from the API) is printed too, and is the better figure of its timing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use codecs::aes67::media_clock;
use codecs::rtp::RtpPacket;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Create N AES67 flows on a gateway and measure their packets on loopback")]
struct Args {
    /// The gateway's API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// An admin API token.
    #[arg(long, env = "TELEPATCH_TOKEN")]
    token: String,
    /// Transmit flows to create.
    #[arg(long, default_value_t = 8)]
    flows: usize,
    /// Channels per flow (1-8).
    #[arg(long, default_value_t = 8)]
    channels: u8,
    /// Packet time in µs.
    #[arg(long, default_value_t = 1000)]
    packet_time_us: u32,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Third octet of the groups used: flow i sends to 239.69.<octet + i / 250>.<1 + i % 250>.
    #[arg(long, default_value_t = 230)]
    group_octet: u8,
    /// First port (flow i uses port + 2 i).
    #[arg(long, default_value_t = 30_000)]
    port: u16,
    /// The gateway's AudioSocket address: enables the latency probe.
    #[arg(long)]
    audiosocket: Option<String>,
    /// The gateway's process id: enables the CPU measurement.
    #[arg(long)]
    pid: Option<u32>,
}

/// PTP time as the gateway's `system` clock mode reads it: `CLOCK_TAI` if the kernel's
/// TAI offset is set, else `CLOCK_REALTIME` + 37 s.
struct PtpClock {
    use_tai: bool,
}

fn read(clock: rustix::time::ClockId) -> u64 {
    let t = rustix::time::clock_gettime(clock);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

impl PtpClock {
    fn detect() -> PtpClock {
        let tai = read(rustix::time::ClockId::Tai);
        let realtime = read(rustix::time::ClockId::Realtime);
        PtpClock {
            use_tai: tai.saturating_sub(realtime) >= 500_000_000,
        }
    }

    fn now_ns(&self) -> u64 {
        if self.use_tai {
            read(rustix::time::ClockId::Tai)
        } else {
            read(rustix::time::ClockId::Realtime) + 37_000_000_000
        }
    }
}

/// One received packet.
#[derive(Clone, Copy)]
struct Arrival {
    at: Instant,
    /// Arrival minus due time (the PTP time of the packet's last sample), in ns.
    lateness_ns: i64,
    sequence: u16,
    timestamp: u32,
}

/// What one flow's receiver recorded.
#[derive(Default)]
struct Received {
    arrivals: Vec<Arrival>,
    /// Arrival times of packets in which channel 1 rose above the click threshold after
    /// silence (flow 0 only).
    clicks: Vec<Instant>,
}

fn receive(
    group: Ipv4Addr,
    port: u16,
    channels: usize,
    frames: u64,
    detect_clicks: bool,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
) -> anyhow::Result<Received> {
    // Below the gateway's threads (40) but above the machine's other work, so that what
    // is measured is the packets' timing rather than this thread's scheduling.
    let _ = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        thread_priority::ThreadPriority::Crossplatform(
            thread_priority::ThreadPriorityValue::try_from(30u8)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        thread_priority::ThreadSchedulePolicy::Realtime(
            thread_priority::RealtimeThreadSchedulePolicy::Fifo,
        ),
    );
    let socket = UdpSocket::bind((group, port)).with_context(|| format!("bind {group}:{port}"))?;
    socket.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let clock = PtpClock::detect();
    let mut received = Received::default();
    let mut buffer = [0u8; 2048];
    let mut samples = vec![0.0f32; 480 * 8];
    // Armed after 50 ms of silence: the click's pre-ringing (the resampler's filter is
    // symmetric) must not disarm it before its main lobe.
    let (mut quiet_frames, mut armed) = (0u64, false);
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = socket.recv(&mut buffer) else {
            continue;
        };
        let (at, now) = (Instant::now(), clock.now_ns());
        let Ok(packet) = RtpPacket::parse(&buffer[..n]) else {
            continue;
        };
        let timestamp = packet.header.timestamp;
        // The media clock of the packet's first sample, unwrapped against now.
        let now_media = media_clock(now);
        let lag = (now_media as u32).wrapping_sub(timestamp) as i32;
        let first = now_media as i64 - i64::from(lag);
        let due_ns = ((first + frames as i64) as i128 * 1_000_000_000).div_euclid(48_000);
        if measuring.load(Ordering::Relaxed) {
            received.arrivals.push(Arrival {
                at,
                lateness_ns: (i128::from(now) - due_ns) as i64,
                sequence: packet.header.sequence,
                timestamp,
            });
        }
        if detect_clicks {
            let count = codecs::pcm::read_l24(packet.payload, &mut samples);
            let mut clicked = false;
            for frame in samples[..count].chunks_exact(channels) {
                let level = frame[0].abs();
                if level > 0.2 && armed {
                    clicked = true;
                    armed = false;
                }
                quiet_frames = if level < 0.01 { quiet_frames + 1 } else { 0 };
                armed |= quiet_frames > 2_400;
            }
            if clicked && measuring.load(Ordering::Relaxed) {
                received.clicks.push(at);
            }
        }
    }
    Ok(received)
}

/// A minimal AudioSocket caller (audiosocket.md §4-§5): the ID, then 20 ms frames of 8 kHz
/// slin, every fifth one starting with a click; returns when each click frame was sent.
fn probe_call(
    addr: &str,
    uuid: uuid::Uuid,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
) -> anyhow::Result<Vec<Instant>> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let mut id = vec![0x01, 0x00, 0x10];
    id.extend_from_slice(uuid.as_bytes());
    stream.write_all(&id)?;
    // Asterisk always reads: so do we.
    let mut reader = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut sink = [0u8; 4096];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    let mut sent = Vec::new();
    let start = Instant::now();
    let mut frame_index = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = start + Duration::from_millis(20 * frame_index);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut frame = vec![0x10, 0x01, 0x40];
        let click = frame_index.is_multiple_of(5);
        for k in 0..160 {
            let sample: i16 = if click && k == 0 { 16_000 } else { 0 };
            frame.extend_from_slice(&sample.to_le_bytes());
        }
        let at = Instant::now();
        stream.write_all(&frame)?;
        if click && measuring.load(Ordering::Relaxed) {
            sent.push(at);
        }
        frame_index += 1;
    }
    let _ = stream.write_all(&[0x00, 0x00, 0x00]);
    Ok(sent)
}

/// The gateway's own view of the load flows: per delay bucket (upper bound in µs, `None`
/// for the rest), packets sent so far, summed over the flows; and the largest delay.
async fn gateway_send_delays(
    http: &reqwest::Client,
    api: &str,
    token: &str,
) -> anyhow::Result<(Vec<(Option<f64>, u64)>, f64)> {
    let page: serde_json::Value = http
        .get(format!("{api}/v1/nodes?kind=aes67tx&limit=1000"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    let mut buckets: Vec<(Option<f64>, u64)> = Vec::new();
    let mut max_ms = 0.0f64;
    for node in page["items"].as_array().into_iter().flatten() {
        if !node["node"]
            .as_str()
            .unwrap_or_default()
            .starts_with("aes67tx:load-")
        {
            continue;
        }
        let status = &node["status"];
        max_ms = max_ms.max(status["max_send_delay_ms"].as_f64().unwrap_or(0.0));
        for (k, pair) in status["send_delay_histogram"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let (bound, count) = (pair[0].as_f64(), pair[1].as_u64().unwrap_or(0));
            if buckets.len() <= k {
                buckets.push((bound, 0));
            }
            buckets[k].1 += count;
        }
    }
    Ok((buckets, max_ms))
}

/// The bucket bound (µs) under which `p` of the packets fall.
fn bucket_percentile(buckets: &[(Option<f64>, u64)], p: f64) -> String {
    let total: u64 = buckets.iter().map(|b| b.1).sum();
    let mut seen = 0;
    for (bound, count) in buckets {
        seen += count;
        if seen as f64 >= p * total as f64 {
            return match bound {
                Some(us) => format!("<= {us} µs"),
                None => "above the last bucket".into(),
            };
        }
    }
    "n/a".into()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at ")".
    let after = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ")".
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.flows == 0 || args.flows > 2_500 {
        bail!("--flows must be 1..=2500");
    }
    let frames = match args.packet_time_us {
        125 => 6,
        250 => 12,
        333 => 16,
        1000 => 48,
        4000 => 192,
        other => bail!("{other} µs is not an AES67 packet time"),
    };
    let http = reqwest::Client::builder().no_proxy().build()?;
    let api = |path: &str| format!("{}{path}", args.api.trim_end_matches('/'));
    let endpoints: Vec<(String, Ipv4Addr, u16)> = (0..args.flows)
        .map(|i| {
            let group = Ipv4Addr::new(
                239,
                69,
                args.group_octet.wrapping_add((i / 250) as u8),
                1 + (i % 250) as u8,
            );
            (format!("load-{i}"), group, args.port + 2 * i as u16)
        })
        .collect();
    for (name, group, port) in &endpoints {
        let response = http
            .post(api("/v1/nodes"))
            .bearer_auth(&args.token)
            .json(
                &serde_json::json!({"name": name, "persistent": false, "config": {
                "kind": "aes67tx", "channels": args.channels, "group": group.to_string(),
                "port": port, "packet_time_us": args.packet_time_us, "announce": false}}),
            )
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "creating {name}: {} {}",
                response.status(),
                response.text().await?
            );
        }
    }
    eprintln!("{} flows of {} channels created", args.flows, args.channels);

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for (i, (_, group, port)) in endpoints.iter().enumerate() {
        let (group, port, channels) = (*group, *port, usize::from(args.channels));
        let (stop, measuring) = (Arc::clone(&stop), Arc::clone(&measuring));
        let detect = i == 0 && args.audiosocket.is_some();
        receivers.push(std::thread::spawn(move || {
            receive(group, port, channels, frames, detect, stop, measuring)
        }));
    }

    let probe = match &args.audiosocket {
        Some(addr) => {
            let uuid = uuid::Uuid::new_v4();
            let (addr, stop, measuring) = (addr.clone(), Arc::clone(&stop), Arc::clone(&measuring));
            let call = std::thread::spawn(move || probe_call(&addr, uuid, stop, measuring));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let response = http
                .post(api("/v1/patches"))
                .bearer_auth(&args.token)
                .json(&serde_json::json!({"source": format!("call:{uuid}.voice"),
                    "sink": "aes67tx:load-0.ch1", "persistent": false}))
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("patching the probe call: {}", response.text().await?);
            }
            Some(call)
        }
        None => None,
    };

    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let (delays_before, _) = gateway_send_delays(&http, &args.api, &args.token).await?;
    let ticks_before = args.pid.map(cpu_ticks).transpose()?;
    let window_start = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let window = window_start.elapsed().as_secs_f64();
    let ticks_after = args.pid.map(cpu_ticks).transpose()?;
    let (delays_after, max_delay_ms) = gateway_send_delays(&http, &args.api, &args.token).await?;
    stop.store(true, Ordering::Relaxed);
    let window_delays: Vec<(Option<f64>, u64)> = delays_after
        .iter()
        .zip(
            delays_before
                .iter()
                .map(|b| b.1)
                .chain(std::iter::repeat(0)),
        )
        .map(|(&(bound, after), before)| (bound, after.saturating_sub(before)))
        .collect();

    let mut intervals_ms = Vec::new();
    let mut lateness_ms = Vec::new();
    let (mut packets, mut lost, mut discontinuities, mut late) = (0u64, 0u64, 0u64, 0u64);
    let mut clicks = Vec::new();
    for receiver in receivers {
        let received = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        packets += received.arrivals.len() as u64;
        for pair in received.arrivals.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            intervals_ms.push(b.at.duration_since(a.at).as_secs_f64() * 1e3);
            let gap = b.sequence.wrapping_sub(a.sequence);
            lost += u64::from(gap.saturating_sub(1));
            if b.timestamp.wrapping_sub(a.timestamp) != u32::from(gap) * frames as u32 {
                discontinuities += 1;
            }
        }
        for a in &received.arrivals {
            lateness_ms.push(a.lateness_ns as f64 / 1e6);
            if a.lateness_ns > 1_000_000 {
                late += 1;
            }
        }
        clicks.extend(received.clicks);
    }
    intervals_ms.sort_by(f64::total_cmp);
    lateness_ms.sort_by(f64::total_cmp);

    println!(
        "flows {} x {} ch, {} µs packets, {window:.1} s measured",
        args.flows, args.channels, args.packet_time_us
    );
    println!(
        "packets {packets} (expected about {:.0}); lost {lost}; timestamp discontinuities {discontinuities}",
        args.flows as f64 * window * 1e6 / f64::from(args.packet_time_us)
    );
    println!(
        "inter-packet interval ms: p50 {:.3} p99 {:.3} max {:.3}",
        percentile(&intervals_ms, 0.5),
        percentile(&intervals_ms, 0.99),
        intervals_ms.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "arrival after due time (PTP) ms: min {:.3} p50 {:.3} p99 {:.3} max {:.3}; late (> 1 ms) {late}",
        lateness_ms.first().copied().unwrap_or(f64::NAN),
        percentile(&lateness_ms, 0.5),
        percentile(&lateness_ms, 0.99),
        lateness_ms.last().copied().unwrap_or(f64::NAN)
    );
    let sent: u64 = window_delays.iter().map(|b| b.1).sum();
    let late_sent: u64 = window_delays
        .iter()
        .filter(|b| b.0.is_none_or(|us| us > 1000.0))
        .map(|b| b.1)
        .sum();
    println!(
        "gateway's send delay after due time: p50 {}, p99 {}, p99.9 {}; max since start {max_delay_ms:.3} ms; \
         sent more than 1 ms late {late_sent} of {sent}",
        bucket_percentile(&window_delays, 0.5),
        bucket_percentile(&window_delays, 0.99),
        bucket_percentile(&window_delays, 0.999),
    );
    if let (Some(before), Some(after)) = (ticks_before, ticks_after) {
        let cpu = (after - before) as f64 / clock_ticks_per_second() / window * 100.0;
        println!(
            "gateway CPU {cpu:.1} % of one core; {:.2} % per flow",
            cpu / args.flows as f64
        );
    }
    if let Some(call) = probe {
        let sent = call
            .join()
            .map_err(|_| anyhow::anyhow!("probe panicked"))??;
        let mut latencies: Vec<f64> = clicks
            .iter()
            .filter_map(|&heard| {
                let frame = sent.iter().rev().find(|&&s| s <= heard)?;
                let latency = heard.duration_since(*frame).as_secs_f64() * 1e3;
                // Clicks are 100 ms apart: anything longer is not this frame's.
                (latency < 100.0).then_some(latency)
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        println!(
            "AudioSocket frame -> RTP packet with its first sample, ms: p50 {:.2} p99 {:.2} ({} clicks of {} sent)",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.len(),
            sent.len()
        );
    }
    for (name, _, _) in &endpoints {
        let _ = http
            .delete(api(&format!("/v1/nodes/aes67tx:{name}")))
            .bearer_auth(&args.token)
            .send()
            .await;
    }
    Ok(())
}
