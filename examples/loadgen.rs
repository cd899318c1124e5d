//! Load generator: N concurrent fake-Asterisk calls (audiosocket.md §4-§8), each
//! streaming a paced tone for D seconds, started in a staggered way; measures per call
//! how the gateway's downlink frames arrived (count, inter-arrival p50/p99/max, gaps
//! over 40 ms) and prints a summary table.
//!
//! ```text
//! cargo run --release -p telepatch-examples --example loadgen -- \
//!     --connect 127.0.0.1:9092 --calls 200 --duration 30
//! ```
//!
//! With `--talking N` only the first N calls send audio; the others send none at all,
//! as Asterisk does for a channel in an idle bridge (audiosocket.md §5): they are live
//! calls that listen (callers on hold, listeners of a programme) and cost the gateway
//! only their downlink.
//!
//! A call fails if it cannot connect, if the gateway breaks the protocol, if it ends
//! any other way than by the caller hanging up after D seconds, if it received fewer
//! than `--min-received-percent` (99.9) of the reply frames due in D seconds, or if two
//! reply frames arrived more than 40 ms apart; the exit code is non-zero if any call
//! failed. At ~1000 calls raise the open-files limit (`ulimit -n 4096`): each call is one
//! socket here and one in the gateway.
//!
//! The calls run on `--threads` (2) runtime threads. With `--gateway-pid` the summary
//! also gives the CPU the gateway and the load generator used while the calls ran, so a
//! run shows whether the generator itself was the bottleneck.

use anyhow::{Context, bail};
use clap::Parser;
use sip_glue::fake_asterisk::{CallEnd, CallReport, FakeCall, FakeCallError, Source};
use std::process::ExitCode;
use std::time::Duration;
use telepatch_examples::{ArrivalStats, kind_for_hz, ms, resolve};
use tokio::task::JoinSet;
use uuid::Uuid;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Open many concurrent paced AudioSocket calls and measure the downlink")]
struct Args {
    /// Gateway to connect to (host:port).
    #[arg(long, default_value = "127.0.0.1:9092")]
    connect: String,
    /// Number of concurrent calls.
    #[arg(long, default_value_t = 10)]
    calls: usize,
    /// Seconds each call streams before hanging up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Delay between call starts, in milliseconds.
    #[arg(long, default_value_t = 10)]
    stagger_ms: u64,
    /// Sample rate of every call (selects the kind).
    #[arg(long, default_value_t = 8000)]
    rate: u32,
    /// Frame duration in milliseconds.
    #[arg(long, default_value_t = 20)]
    frame_ms: u64,
    /// Tone level in dBFS (call i sends 300 + 50 * (i % 40) Hz).
    #[arg(long, default_value_t = -12.0, allow_negative_numbers = true)]
    level_dbfs: f64,
    /// How many of the calls send audio (the first N); the others send none, like an
    /// idle bridged channel. Default: all.
    #[arg(long)]
    talking: Option<usize>,
    /// Print one row per call even above 50 calls.
    #[arg(long)]
    per_call: bool,
    /// A call also fails if it received fewer than this percentage of the reply frames
    /// its duration calls for (the gateway must answer every 20 ms).
    #[arg(long, default_value_t = 99.9)]
    min_received_percent: f64,
    /// Runtime threads the calls run on.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The gateway's process ID, to report its CPU use during the run.
    #[arg(long)]
    gateway_pid: Option<u32>,
}

/// CPU time a process has used so far (user + system), from `/proc/<pid>/stat`.
fn cpu_seconds(pid: &str, ticks_per_second: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // utime and stime are fields 14 and 15, so 11 and 12 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`; 100 on Linux when it
/// cannot be asked).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// What one call produced.
struct Outcome {
    index: usize,
    uuid: Uuid,
    result: Result<CallReport, FakeCallError>,
}

impl Outcome {
    /// Why the call counts as failed, if it does: an error, a protocol violation, an
    /// early end, or fewer reply frames than `min_received` of those expected.
    fn failure(&self, expected_frames: u64, min_received: f64) -> Option<String> {
        match &self.result {
            Err(e) => Some(e.to_string()),
            Ok(r) if !r.violations.is_empty() => Some(format!("{:?}", r.violations[0])),
            Ok(r) if r.end != CallEnd::Completed => Some(format!("ended early: {:?}", r.end)),
            Ok(r) => {
                let arrivals = ArrivalStats::of(r);
                let received = arrivals.frames as u64;
                if received < (expected_frames as f64 * min_received).floor() as u64 {
                    Some(format!(
                        "received {received} of {expected_frames} reply frames"
                    ))
                } else if arrivals.gaps > 0 {
                    Some(format!("{} reply gaps over 40 ms", arrivals.gaps))
                } else {
                    None
                }
            }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let addr = resolve(&args.connect).await?;
    let kind = kind_for_hz(args.rate)?;
    let duration = Duration::try_from_secs_f64(args.duration).context("--duration")?;
    if args.calls == 0 || args.frame_ms == 0 {
        bail!("--calls and --frame-ms must be at least 1");
    }
    let talking = args.talking.unwrap_or(args.calls).min(args.calls);
    eprintln!(
        "{} calls to {addr}, {kind}, {} s each, starts {} ms apart, {talking} of them talking",
        args.calls, args.duration, args.stagger_ms
    );

    let ticks = ticks_per_second();
    let gateway_pid = args.gateway_pid.map(|pid| pid.to_string());
    let cpu_at_start = (
        cpu_seconds("self", ticks),
        gateway_pid
            .as_deref()
            .and_then(|pid| cpu_seconds(pid, ticks)),
    );
    let started = std::time::Instant::now();
    let mut set = JoinSet::new();
    for index in 0..args.calls {
        let uuid = Uuid::new_v4();
        let source = if index < talking {
            Source::tone(300.0 + 50.0 * (index % 40) as f64, args.level_dbfs)
        } else {
            Source::nothing()
        };
        let call = FakeCall::new(addr, uuid)
            .source(source)
            .kind(kind)
            .frame(Duration::from_millis(args.frame_ms))
            .duration(duration)
            .record_audio(false);
        let delay = Duration::from_millis(args.stagger_ms.saturating_mul(index as u64));
        set.spawn(async move {
            tokio::time::sleep(delay).await;
            Outcome {
                index,
                uuid,
                result: call.run().await,
            }
        });
    }
    let mut outcomes = Vec::with_capacity(args.calls);
    while let Some(joined) = set.join_next().await {
        outcomes.push(joined.context("call task panicked")?);
    }
    outcomes.sort_by_key(|o| o.index);
    let wall = started.elapsed().as_secs_f64();
    let cpu_at_end = (
        cpu_seconds("self", ticks),
        gateway_pid
            .as_deref()
            .and_then(|pid| cpu_seconds(pid, ticks)),
    );

    let show_rows = args.per_call || outcomes.len() <= 50;
    if show_rows {
        println!(
            "{:>5}  {:36}  {:>6}  {:>6}  {:>7}  {:>7}  {:>7}  {:>5}  status",
            "call", "uuid", "sent", "recv", "p50 ms", "p99 ms", "max ms", "gaps"
        );
    }
    // The gateway answers with 20 ms frames whatever the caller's frame size.
    let expected_frames = (duration.as_millis() / 20) as u64;
    let min_received = args.min_received_percent / 100.0;
    let mut failed = 0;
    for o in &outcomes {
        let failure = o.failure(expected_frames, min_received);
        failed += usize::from(failure.is_some());
        if !show_rows && failure.is_none() {
            continue;
        }
        let status = failure.unwrap_or_else(|| "ok".to_owned());
        match &o.result {
            Ok(r) => {
                let s = ArrivalStats::of(r);
                println!(
                    "{:>5}  {:36}  {:>6}  {:>6}  {:>7}  {:>7}  {:>7}  {:>5}  {status}",
                    o.index,
                    o.uuid,
                    r.frames_sent,
                    s.frames,
                    ms(s.p50),
                    ms(s.p99),
                    ms(s.max),
                    s.gaps
                );
            }
            Err(_) => println!("{:>5}  {:36}  {status}", o.index, o.uuid),
        }
    }
    let reports: Vec<&CallReport> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().ok())
        .collect();
    let pooled = ArrivalStats::pooled(reports.iter().copied());
    let sent: u64 = reports.iter().map(|r| r.frames_sent).sum();
    println!();
    println!(
        "calls {}  ok {}  failed {}",
        outcomes.len(),
        outcomes.len() - failed,
        failed
    );
    println!("frames sent {sent}  received {}", pooled.frames);
    println!(
        "downlink inter-arrival (all calls): p50 {} ms  p99 {} ms  max {} ms  gaps > 40 ms: {}",
        ms(pooled.p50),
        ms(pooled.p99),
        ms(pooled.max),
        pooled.gaps
    );
    if let (Some(start), Some(end)) = (cpu_at_start.0, cpu_at_end.0) {
        println!(
            "loadgen CPU: {:.1} % of a core over {wall:.1} s",
            100.0 * (end - start) / wall
        );
    }
    if let (Some(start), Some(end)) = (cpu_at_start.1, cpu_at_end.1) {
        // Calls overlap the whole run but for the stagger at both ends.
        let call_seconds = outcomes.len() as f64 * duration.as_secs_f64();
        println!(
            "gateway CPU: {:.1} % of a core over {wall:.1} s, {:.3} ms per call-second",
            100.0 * (end - start) / wall,
            1000.0 * (end - start) / call_seconds
        );
    }
    if pooled.frames == 0 {
        println!("note: the gateway sent no audio frames at all");
    }
    Ok(failed == 0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
