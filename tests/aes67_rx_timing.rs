//! End to end: receive flows from senders that are not on the PTP media clock.
//!
//! - A sender whose crystal runs 2000 ppm slow, and one 2000 ppm fast (scripted here,
//!   1 ms L24 packets on their own pace, SDP without `a=mediaclk`): for 20 s, long enough
//!   to have drained (or overfilled) a fixed 20 ms buffer played on our clock twice over,
//!   each caller must hear their sender's tone, at the sender's pace, with no gap in any
//!   100 ms window, and the flows count no late packet and no resync.
//! - ffmpeg's RTP muxer with `-re` (bursts of 21 packets every 21 ms, give or take 10 ms)
//!   into a receive flow at the default latency (3 ms, where 54 % of its packets used to
//!   be late): the flow raises its latency to what the bursts need, and from then on the
//!   caller hears the tone at level in every window (but for one counted pause per
//!   further raise, should a host stall add to a burst).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod aes67_util;
mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aes67_util::{Api, assert_tone, in_loopback_namespace, unique_group, unique_name, unique_port};
use codecs::measure::fit_sine;
use codecs::rate::SampleRate;
use common::{GatewayProcess, uuid};
use sip_glue::fake_asterisk::{CallEnd, CallReport, FakeCall, Source};

/// Sends 1 ms L24 mono packets of a 1 kHz tone (of its own clock) at -6 dBFS to
/// `group:port` out of 127.0.0.1, its clock `ppm` off the host's, until stopped (from a
/// `SCHED_FIFO` thread when the test may have one).
struct SkewedSender {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SkewedSender {
    fn start(group: Ipv4Addr, port: u16, ppm: f64) -> SkewedSender {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        socket
            .bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())
            .unwrap();
        socket.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
        socket.set_multicast_ttl_v4(1).unwrap();
        let socket: UdpSocket = socket.into();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            // A device's sender runs on its own hardware clock: real-time here, so the
            // test's pacing is not starved by the machine's other work (an ordinary
            // thread on a loaded 2-core machine waits 30 ms and more now and then).
            let _ = gateway::threads::set_realtime_fifo(60);
            let period = Duration::from_secs_f64(1e-3 / (1.0 + ppm * 1e-6));
            let start = Instant::now();
            let amplitude = 10f64.powf(-6.0 / 20.0) * 8_388_607.0;
            let mut packet = Vec::with_capacity(12 + 144);
            for k in 0u64.. {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                // Packet k leaves when its last frame has been captured.
                let due = start + period * (k as u32 + 1);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                packet.clear();
                packet.extend_from_slice(&[0x80, 98]);
                packet.extend_from_slice(&(k as u16).to_be_bytes());
                packet
                    .extend_from_slice(&(0x4000_0000u32.wrapping_add(48 * k as u32)).to_be_bytes());
                packet.extend_from_slice(&0x5eed_u32.to_be_bytes());
                for i in 0..48 {
                    let n = (k * 48 + i) as f64;
                    let v = (amplitude * (std::f64::consts::TAU * 1000.0 * n / 48_000.0).sin())
                        .round() as i32;
                    packet.extend_from_slice(&v.to_be_bytes()[1..]);
                }
                let _ = socket.send_to(&packet, SocketAddrV4::new(group, port));
            }
        });
        SkewedSender {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SkewedSender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The SDP of a stream without `a=mediaclk` (so the flow aligns on its first packet).
fn sdp(group: Ipv4Addr, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=not on PTP\r\nc=IN IP4 {group}/1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 98\r\na=rtpmap:98 L24/48000/1\r\na=ptime:1\r\na=recvonly\r\n"
    )
}

/// Routes caller `id` to hear `aes67rx:{rx}.ch1`.
fn route(id: uuid::Uuid, rx: &str) -> String {
    format!(
        "[[routes]]\nname = \"{rx}\"\nmatch = {{ uuid = \"{id}\" }}\n\
         actions = [{{ action = \"patch\", ear_from = [\"aes67rx:{rx}.ch1\"] }}]\n\n"
    )
}

/// What `report`'s caller heard after its first `skip_s` seconds (less the last 250 ms).
fn heard(report: &CallReport, skip_s: f64) -> (&[f32], u32) {
    let rate = report.received_rate.expect("the caller heard audio").hz();
    let start = (rate as f64 * skip_s) as usize;
    let end = report.received.len().saturating_sub(rate as usize / 4);
    assert!(end > start + rate as usize, "too little heard");
    (&report.received[start..end], rate)
}

/// Every 100 ms window of `x` holds the tone with nothing else: no gap, no jump.
fn assert_every_window_clean(what: &str, x: &[f32], rate: u32) {
    assert_windows_clean_but(what, x, rate, 0);
}

/// A window with less SNR than this against a single sine holds a jump (a phase jump, a
/// click, noise). The drift controllers' pitch steps, a few hundred ppm at most, leave
/// well over it.
const JUMP_SNR_DB: f64 = 20.0;

/// The longest run of samples of `w` below a tenth of the tone's peak, in ms: a -6 dBFS
/// 1 kHz tone is that low for a small fraction of a millisecond around each zero
/// crossing, so a run of 1 ms or more is a gap.
fn longest_quiet_ms(w: &[f32], rate: u32) -> f64 {
    let quiet = 0.1 * 10f32.powf(-6.0 / 20.0);
    let (mut run, mut longest) = (0usize, 0usize);
    for &v in w {
        run = if v.abs() < quiet { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest as f64 * 1000.0 / f64::from(rate)
}

/// At most `allowed` 100 ms windows of `x` hold a gap (1 ms or more of silence) or a
/// jump; every other one holds the tone with nothing else.
fn assert_windows_clean_but(what: &str, x: &[f32], rate: u32, allowed: usize) {
    let sample_rate = SampleRate::new(rate).unwrap();
    let windows: Vec<(f64, f64)> = x
        .chunks_exact(rate as usize / 10)
        .map(|w| {
            let snr = fit_sine(w, sample_rate).map_or(f64::NEG_INFINITY, |f| f.snr_db);
            (snr, longest_quiet_ms(w, rate))
        })
        .collect();
    let glitches = windows
        .iter()
        .filter(|&&(snr, quiet_ms)| snr < JUMP_SNR_DB || quiet_ms >= 1.0)
        .count();
    assert!(
        glitches <= allowed,
        "{what}: {glitches} of {} windows hold a gap or a jump ({allowed} allowed); \
         (SNR dB, longest quiet ms) per window: {windows:.1?}",
        windows.len()
    );
}

/// The margins of these tests: the caller's call buffers ([`common::STALL_PROOF_CALL_BUFFERS`])
/// and the flow's clock bridge (media thread to engine) ride through 100 ms of lateness.
/// What the tests are about (the jitter buffer's latency and pace) does not depend on
/// them.
fn stall_proof_margins() -> String {
    format!(
        "{}[aes67]\nbridge_margin_ms = 100\n\n",
        common::STALL_PROOF_CALL_BUFFERS
    )
}

async fn wait_received(api: &Api, node: &str, packets: u64) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let status = api.status(node).await;
        if status["received"].as_u64().unwrap_or(0) >= packets {
            return;
        }
        assert!(Instant::now() < until, "nothing received: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_2000_ppm_slow_and_fast_are_heard_without_gaps_for_20_s() {
    let (slow, fast) = (unique_name("slow"), unique_name("fast"));
    let (slow_caller, fast_caller) = (uuid(), uuid());
    // A fixed 20 ms jitter latency: 20 s at 2000 ppm is 40 ms of drift, twice the buffer,
    // so only playing at the sender's pace keeps it from running dry or overflowing.
    // Margins against the host's stalls (`stall_proof_margins`).
    let config = format!(
        "{}{}{}",
        stall_proof_margins(),
        route(slow_caller, &slow),
        route(fast_caller, &fast)
    );
    let gateway = GatewayProcess::start(&config);
    let api = Api::new(&gateway);
    let mut senders = Vec::new();
    for (rx, ppm) in [(&slow, -2000.0), (&fast, 2000.0)] {
        let (group, port) = (unique_group(), unique_port());
        let node = api
            .create(
                rx,
                serde_json::json!({"kind": "aes67rx", "sdp": sdp(group, port),
                    "latency_ms": 20, "max_latency_ms": 20}),
            )
            .await;
        assert_eq!(node["status"]["source"]["alignment"], "first_packet");
        senders.push(SkewedSender::start(group, port, ppm));
    }
    for rx in [&slow, &fast] {
        wait_received(&api, &format!("aes67rx:{rx}"), 200).await;
    }
    let call = |id| {
        FakeCall::new(gateway.addr, id)
            .source(Source::tone(300.0, -30.0))
            .duration(Duration::from_secs(21))
            .run()
    };
    let (slow_report, fast_report) = tokio::join!(call(slow_caller), call(fast_caller));
    drop(senders);
    for (rx, ppm, report) in [
        (&slow, -2000.0, slow_report.unwrap()),
        (&fast, 2000.0, fast_report.unwrap()),
    ] {
        assert_eq!(report.end, CallEnd::Completed);
        let status = api.status(&format!("aes67rx:{rx}")).await;
        eprintln!("{rx}: {status:#}");
        let (audio, rate) = heard(&report, 1.0);
        // The sender's 1 kHz, at its pace.
        let hz = 1000.0 * (1.0 + ppm * 1e-6);
        assert_every_window_clean(rx, audio, rate);
        assert_tone(rx, audio, rate, hz, -6.0, &[]);
        assert_eq!(status["late"], 0, "{status}");
        assert_eq!(status["resyncs"], 0, "{status}");
        assert_eq!(status["concealed_frames"], 0, "{status}");
        assert_eq!(status["latency_ms"], 20.0, "{status}");
        // Both are estimates over the last seconds of arrival and fill: a few ppm off on
        // a quiet machine, up to ~200 ppm when other work delays the gateway's threads
        // (seen: 2096 measured, -2203 steered, with benchmarks running beside). A flow
        // that did not track would be 2000 ppm off; the audio checks above are exact.
        let measured = status["sender_ppm"].as_f64().unwrap();
        assert!((measured - ppm).abs() < 300.0, "{status}");
        let correction = status["bridge"]["correction_ppm"].as_f64().unwrap();
        assert!((correction + ppm).abs() < 400.0, "{status}");
        assert_eq!(status["bridge"]["underruns"], 0, "{status}");
        assert_eq!(status["bridge"]["resyncs"], 0, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_bursts_raise_the_default_latency_and_then_play_clean() {
    // ffmpeg joins and sends multicast on the default interface: loopback only here.
    if !in_loopback_namespace("ffmpeg_bursts_raise_the_default_latency_and_then_play_clean") {
        return;
    }
    let rx = unique_name("from-ffmpeg");
    let caller = uuid();
    // The jitter latency is what adapts to the bursts (`stall_proof_margins` keeps the
    // host's own stalls out of what the caller hears).
    let config = format!("{}{}", stall_proof_margins(), route(caller, &rx));
    let gateway = GatewayProcess::start(&config);
    let api = Api::new(&gateway);
    let (group, port) = (unique_group(), unique_port());
    // Default latency (packet time + 2 ms), default maximum (40 ms).
    let node = api
        .create(
            &rx,
            serde_json::json!({"kind": "aes67rx", "sdp": sdp(group, port)}),
        )
        .await;
    assert_eq!(node["status"]["source"]["latency_ms"], 3.0);
    assert_eq!(node["status"]["source"]["max_latency_ms"], 40.0);
    // 1 ms packets (pkt_size 156 = 12 + 48 × 3); each 1024-sample frame of the source
    // leaves as one burst of 21 packets and a short one. Real-time (`chrt`, util-linux)
    // so that its pacing is its own, not the loaded machine's: an ordinary process
    // on a busy 2-core machine is held up 30 ms and more now and then, and that
    // would add bursts beyond ffmpeg's.
    let _ffmpeg = Killed(
        Command::new("chrt")
            .args(["-f", "50", "ffmpeg"])
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
            .args([
                "-f",
                "lavfi",
                "-i",
                "aevalsrc=0.5*sin(2*PI*1000*t):s=48000:n=1024",
            ])
            .args(["-ac", "1", "-c:a", "pcm_s24be"])
            .args(["-f", "rtp", "-payload_type", "98"])
            .arg(format!("rtp://{group}:{port}?ttl=1&pkt_size=156"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ffmpeg is installed (tests/run.sh installs it)"),
    );
    let node_name = format!("aes67rx:{rx}");
    wait_received(&api, &node_name, 500).await;
    // Adapted: the latency covers the bursts and has not moved for 3 s.
    let until = Instant::now() + Duration::from_secs(20);
    let mut last = (0.0, Instant::now());
    loop {
        let status = api.status(&node_name).await;
        let latency = status["latency_ms"].as_f64().unwrap();
        if latency != last.0 {
            last = (latency, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(Instant::now() < until, "latency not settled: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = api.status(&node_name).await;
    let report = FakeCall::new(gateway.addr, caller)
        .source(Source::tone(300.0, -30.0))
        .duration(Duration::from_secs(5))
        .run()
        .await
        .unwrap();
    assert_eq!(report.end, CallEnd::Completed);
    let status = api.status(&node_name).await;
    eprintln!("{rx}: {status:#}");
    let (audio, rate) = heard(&report, 1.0);
    // Clean in every window, unless a burst later than any before raised the latency
    // while the caller listened (a host stall holding ffmpeg up on top of its own
    // bursts): each such raise is one pause, counted, in at most two windows.
    let raised = status["latency_increases"].as_u64().unwrap()
        - before["latency_increases"].as_u64().unwrap();
    assert_windows_clean_but(&rx, audio, rate, 2 * raised as usize);
    assert_tone(&rx, audio, rate, 1000.0, -6.0, &[]);
    if raised == 0 {
        // No packet was late while the caller listened.
        assert_eq!(status["late"], before["late"], "{status}");
    }
    assert_eq!(
        status["bridge"]["underruns"], before["bridge"]["underruns"],
        "{status}"
    );
    assert_eq!(status["latency_limited"], false, "{status}");
    let latency = status["latency_ms"].as_f64().unwrap();
    assert!((3.0..=40.0).contains(&latency), "{status}");
}

/// Kills a child process when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
