//! A fake Asterisk: one AudioSocket call to a gateway, streaming a WAV file, a tone,
//! silence or nothing, paced in real time like Asterisk (audiosocket.md §4-§8), and
//! reporting what the gateway sent back.
//!
//! ```text
//! cargo run -p telepatch-examples --example fake_asterisk -- \
//!     --connect 127.0.0.1:9092 --tone 1000 --rate 16000 --duration 5 --record out.wav
//! ```
//!
//! Exits non-zero if the call could not be made or the gateway broke the protocol.

use anyhow::{Context, bail};
use clap::{ArgGroup, Parser, ValueEnum};
use sip_glue::fake_asterisk::{CallEnd, FakeCall, Source, WireCodec};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use telepatch_examples::{ArrivalStats, kind_for_hz, ms, parse_dtmf, resolve};
use uuid::Uuid;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Behave like Asterisk on one AudioSocket call")]
#[command(group(ArgGroup::new("source").args(["wav", "tone", "silence", "idle"])))]
struct Args {
    /// Gateway to connect to (host:port, [v6]:port).
    #[arg(long, default_value = "127.0.0.1:9092")]
    connect: String,
    /// Stream UUID sent in the ID message (default: a random v4).
    #[arg(long)]
    uuid: Option<Uuid>,
    /// Stream this mono WAV file (its rate must equal --rate).
    #[arg(long, value_name = "FILE")]
    wav: Option<PathBuf>,
    /// Stream a sine tone of this frequency in Hz (the default is 1000 Hz).
    #[arg(long, value_name = "HZ")]
    tone: Option<f64>,
    /// Peak level of the tone in dBFS.
    #[arg(long, default_value_t = -6.0, allow_negative_numbers = true)]
    level_dbfs: f64,
    /// Stream digital silence.
    #[arg(long)]
    silence: bool,
    /// Send no audio at all, like an idle two-party bridge.
    #[arg(long)]
    idle: bool,
    /// Sample rate, which selects the kind (8000 = 0x10 ... 192000 = 0x18).
    #[arg(long, default_value_t = 8000)]
    rate: u32,
    /// Wire codec; ulaw/alaw are sent under 0x10 at 8 kHz, as a c(ulaw) channel does.
    #[arg(long, value_enum, default_value_t = Codec::Slin)]
    codec: Codec,
    /// Frame duration in milliseconds.
    #[arg(long, default_value_t = 20)]
    frame_ms: u64,
    /// Hang up (close TCP) after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Ignore --duration: run until the gateway sends a hangup or closes.
    #[arg(long)]
    until_hangup: bool,
    /// DTMF digits to send (0-9 * # A-D), 300 ms apart.
    #[arg(long)]
    dtmf: Option<String>,
    /// When to send the first DTMF digit, in seconds.
    #[arg(long, default_value_t = 1.0)]
    dtmf_at: f64,
    /// Caller clock error in ppm (positive = fast).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    drift_ppm: f64,
    /// Write the audio received from the gateway to this WAV file.
    #[arg(long, value_name = "OUT.wav")]
    record: Option<PathBuf>,
}

/// `--codec` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Codec {
    Slin,
    Ulaw,
    Alaw,
}

/// Spacing of DTMF digits, as observed from `SendDTMF` (audiosocket.md §6).
const DTMF_GAP: Duration = Duration::from_millis(300);

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{what} must be >= 0 seconds"))
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let addr = resolve(&args.connect).await?;
    let kind = kind_for_hz(args.rate)?;
    let uuid = args.uuid.unwrap_or_else(Uuid::new_v4);
    let source = if let Some(path) = &args.wav {
        Source::wav(path)
    } else if args.silence {
        Source::silence()
    } else if args.idle {
        Source::nothing()
    } else {
        Source::tone(args.tone.unwrap_or(1000.0), args.level_dbfs)
    };
    let codec = match args.codec {
        Codec::Slin => WireCodec::Slin,
        Codec::Ulaw => WireCodec::Ulaw,
        Codec::Alaw => WireCodec::Alaw,
    };
    if args.frame_ms == 0 {
        bail!("--frame-ms must be at least 1");
    }
    let mut call = FakeCall::new(addr, uuid)
        .source(source)
        .kind(kind)
        .codec(codec)
        .frame(Duration::from_millis(args.frame_ms))
        .drift_ppm(args.drift_ppm)
        .record_audio(args.record.is_some());
    call = if args.until_hangup {
        call.until_hangup()
    } else {
        call.duration(secs(args.duration, "--duration")?)
    };
    if let Some(digits) = &args.dtmf {
        let mut at = secs(args.dtmf_at, "--dtmf-at")?;
        for digit in parse_dtmf(digits)? {
            call = call.dtmf(at, digit);
            at += DTMF_GAP;
        }
    }

    eprintln!("calling {addr} as {uuid} ({kind}, {:?})", args.codec);
    let report = call.run().await?;
    let stats = ArrivalStats::of(&report);
    println!("uuid            {}", report.uuid);
    println!("end             {:?}", report.end);
    println!(
        "sent            {} audio frames, {} DTMF",
        report.frames_sent, report.dtmf_sent
    );
    println!(
        "received        {} frames, {:.2} s of audio at {}",
        stats.frames,
        report.received_seconds(),
        report
            .received_rate
            .map_or_else(|| "-".to_owned(), |r| r.to_string())
    );
    println!(
        "inter-arrival   p50 {} ms, p99 {} ms, max {} ms, gaps > 40 ms: {}",
        ms(stats.p50),
        ms(stats.p99),
        ms(stats.max),
        stats.gaps
    );
    println!("rate changes    {}", report.rate_changes);
    println!("hangup received {}", report.hangup_received);
    for v in &report.violations {
        println!("VIOLATION       {v:?}");
    }
    if let Some(path) = &args.record {
        match report.write_wav(path) {
            Ok(()) => println!("recorded        {}", path.display()),
            Err(e) => eprintln!("not recorded: {e}"),
        }
    }
    let clean = report.violations.is_empty()
        && matches!(
            report.end,
            CallEnd::Completed | CallEnd::ServerHangup | CallEnd::ServerClosed
        );
    Ok(clean)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
