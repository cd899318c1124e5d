//! Listener delay of an AoDNS broadcast for a given window: how far behind the caller
//! a new listener plays (aodns.md §10, §12: it starts at the oldest listed pack).
//!
//! Creates a broadcast with `--window` packs through the API of a running gateway,
//! calls in with a fake caller whose tone climbs by 20 Hz every 2 s (400, 420, ... Hz:
//! every step is a unique, dated marker), patches the caller into the broadcast, waits
//! until the window is full, then runs `telepatch listen-dns` for `--listen` seconds.
//! In what the listener played it finds a step, reads which one it is from the new
//! frequency, and compares when the listener played it with when the caller said it.
//!
//! ```text
//! cargo run --release -p telepatch-examples --example aodns_delay -- \
//!     --api http://127.0.0.1:8080 --token $TOKEN --audiosocket 127.0.0.1:9092 \
//!     --dns 127.0.0.1:5053 --telepatch target/release/telepatch --window 20
//! ```

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Parser;
use sip_glue::fake_asterisk::{FakeCall, Source};
use uuid::Uuid;

/// Seconds per tone step.
const STEP_S: f64 = 2.0;
/// First tone and the climb per step.
const BASE_HZ: f64 = 400.0;
const STEP_HZ: f64 = 20.0;
/// The caller's rate.
const CALLER_RATE: f64 = 8_000.0;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Measure how far behind the caller a new AoDNS listener plays")]
struct Args {
    /// The gateway's API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// An admin token.
    #[arg(long, env = "TELEPATCH_TOKEN")]
    token: String,
    /// The gateway's AudioSocket address.
    #[arg(long, default_value = "127.0.0.1:9092")]
    audiosocket: SocketAddr,
    /// The gateway's DNS server.
    #[arg(long, default_value = "127.0.0.1:5053")]
    dns: SocketAddr,
    /// The `telepatch` binary (for `listen-dns`).
    #[arg(long, default_value = "target/release/telepatch")]
    telepatch: String,
    /// Packs listed by the broadcast.
    #[arg(long, default_value_t = 20)]
    window: u16,
    /// Seconds the listener plays.
    #[arg(long, default_value_t = 30.0)]
    listen: f64,
}

/// The caller's signal: steps of `STEP_S` climbing by `STEP_HZ`, -6 dBFS, at 8 kHz.
fn staircase(seconds: f64) -> Vec<f32> {
    let mut phase = 0.0f64;
    (0..(seconds * CALLER_RATE) as usize)
        .map(|n| {
            let step = (n as f64 / CALLER_RATE / STEP_S).floor();
            let hz = BASE_HZ + STEP_HZ * step;
            phase = (phase + std::f64::consts::TAU * hz / CALLER_RATE) % std::f64::consts::TAU;
            (0.5 * phase.sin()) as f32
        })
        .collect()
}

/// Frequency of `x` (16 kHz) by rising zero crossings.
fn frequency(x: &[f32]) -> Option<f64> {
    let crossings: Vec<f64> = (1..x.len())
        .filter(|&i| x[i - 1] < 0.0 && x[i] >= 0.0)
        .map(|i| {
            let (a, b) = (f64::from(x[i - 1]), f64::from(x[i]));
            (i - 1) as f64 + a / (a - b)
        })
        .collect();
    let (first, last) = (crossings.first()?, crossings.last()?);
    (crossings.len() > 2).then(|| (crossings.len() - 1) as f64 * 16_000.0 / (last - first))
}

fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let name = format!("delay{}", args.window);
    let domain = format!("delay{}.example.com", args.window);
    let node = format!("dns:{name}");
    let created = http
        .post(format!("{}/v1/nodes", args.api))
        .bearer_auth(&args.token)
        .json(&serde_json::json!({
            "name": name, "persistent": false,
            "config": {"kind": "dns", "domain": domain, "window": args.window},
        }))
        .send()
        .await?;
    if !created.status().is_success() {
        bail!("cannot create the broadcast: {}", created.text().await?);
    }

    // Long enough to fill the window (up to ~1 s per pack) and to be listened to.
    let call_s = f64::from(args.window) * 1.2 + args.listen + 30.0;
    let caller = Uuid::new_v4();
    let said_from = SystemTime::now();
    let call = tokio::spawn(
        FakeCall::new(args.audiosocket, caller)
            .source(Source::samples(staircase(call_s)))
            .duration(Duration::from_secs_f64(call_s))
            .run(),
    );
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let patched = http
            .post(format!("{}/v1/patches", args.api))
            .bearer_auth(&args.token)
            .json(&serde_json::json!({
                "source": format!("call:{caller}.voice"), "sink": format!("{node}.in"),
            }))
            .send()
            .await?;
        if patched.status().is_success() {
            break;
        }
        if Instant::now() > until {
            bail!("cannot patch the caller: {}", patched.text().await?);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Wait for a full window (and two more packs), as a listener joining a running show.
    let status = loop {
        let body: serde_json::Value = http
            .get(format!("{}/v1/nodes/{node}", args.api))
            .bearer_auth(&args.token)
            .send()
            .await?
            .json()
            .await?;
        let status = body["status"].clone();
        if status["packs_published"].as_u64().unwrap_or(0) >= u64::from(args.window) + 2 {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    let work = std::env::temp_dir().join(format!("aodns-delay-{caller}.wav"));
    let output = Command::new(&args.telepatch)
        .args(["listen-dns", &domain, "--server", &args.dns.to_string()])
        .arg("--out")
        .arg(&work)
        .args([
            "--duration",
            &args.listen.to_string(),
            "--log-level",
            "warn",
        ])
        .output()
        .context("cannot run telepatch listen-dns")?;
    if !output.status.success() {
        bail!(
            "listen-dns failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap_or("{}"))?;
    let audio: Vec<f32> = hound::WavReader::open(&work)?
        .samples::<i16>()
        .map(|s| s.map(|s| f32::from(s) / 32_768.0))
        .collect::<Result<_, _>>()?;
    let _ = std::fs::remove_file(&work);

    // The first step in what was played: frequency per 100 ms, then the first jump.
    let window = 1_600;
    let freqs: Vec<Option<f64>> = audio.chunks_exact(window).map(frequency).collect();
    let (at, hz) = freqs
        .windows(3)
        .enumerate()
        .find_map(|(k, w)| match (w[0], w[2]) {
            (Some(a), Some(b)) if b - a > STEP_HZ / 2.0 => Some(((k + 2) * window, b)),
            _ => None,
        })
        .context("no tone step in what the listener played")?;
    // Refine: the step boundary within the 100 ms before `at`, by 10 ms windows.
    let boundary = (at.saturating_sub(2 * window)..at)
        .step_by(160)
        .find(|&i| frequency(&audio[i..i + 320]).is_some_and(|f| (f - hz).abs() < STEP_HZ / 2.0))
        .unwrap_or(at);
    let step = ((hz - BASE_HZ) / STEP_HZ).round();
    let said_at = unix_ms(said_from) + step * STEP_S * 1000.0;
    let played_at =
        report["playout_start_unix_ms"].as_f64().unwrap_or(f64::NAN) + boundary as f64 / 16.0;
    let delay_s = (played_at - said_at) / 1000.0;
    let frames: Vec<u64> = report["first_pack_frames"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default();
    // The audio listed at join is the first `window` packs played, when it played
    // that many.
    let listed = if frames.len() >= usize::from(args.window) {
        let seconds = frames.iter().take(usize::from(args.window)).sum::<u64>() as f64 * 0.06;
        format!("{seconds:6.2} s")
    } else {
        "n/a (fewer packs played than the window)".to_owned()
    };
    println!(
        "window {:3} packs | delay {delay_s:6.2} s | listed at join {listed} | pack {:.2} s | skipped {} | underruns {} | played {} packs",
        args.window,
        status["pack_duration_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        report["skipped_sequences"],
        report["underruns"],
        report["played_packs"],
    );
    call.abort();
    let _ = http
        .delete(format!("{}/v1/nodes/{node}", args.api))
        .bearer_auth(&args.token)
        .send()
        .await;
    Ok(())
}
