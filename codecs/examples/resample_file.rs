//! Converts a raw mono f32 (little-endian) file with the call path's
//! [`StreamResampler`] in 20 ms frames, the way a call's uplink or downlink does, and
//! prints the CPU time of the conversion loop alone (this thread's time on a CPU, from
//! Linux's schedstat) per second of audio. Also makes the test
//! signals and measures a tone's SNR in a raw file, so `examples/resample_vs_soxr.sh`
//! can compare the result with soxr on the same input.
//!
//! ```text
//! resample_file generate RATE SECONDS OUT [TONE_HZ]   speech-band test signal, or a tone
//! resample_file convert FROM TO IN OUT [PPM]          prints µs per second of audio
//! resample_file snr RATE FILE                         SNR of the tone in 2 s after 100 ms
//! ```

use std::f64::consts::TAU;
use std::process::ExitCode;

use codecs::measure::fit_sine;
use codecs::rate::{SampleRate, UnsupportedRate};
use codecs::resample::{Quality, ResampleError, StreamResampler};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
enum ToolError {
    #[error(
        "usage:\n  resample_file generate RATE SECONDS OUT [TONE_HZ]\n  resample_file convert FROM TO IN OUT [PPM]\n  resample_file snr RATE FILE"
    )]
    Usage,
    #[error("not a number: {0:?}")]
    Number(String),
    #[error(transparent)]
    Rate(#[from] UnsupportedRate),
    #[error(transparent)]
    Resampler(#[from] ResampleError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: too short or no tone to fit")]
    NoFit(String),
}

fn number<T: std::str::FromStr>(arg: Option<&String>) -> Result<T, ToolError> {
    let arg = arg.ok_or(ToolError::Usage)?;
    arg.parse().map_err(|_| ToolError::Number(arg.clone()))
}

fn rate(arg: Option<&String>) -> Result<SampleRate, ToolError> {
    Ok(SampleRate::new(number(arg)?)?)
}

fn path(arg: Option<&String>) -> Result<&str, ToolError> {
    arg.map(String::as_str).ok_or(ToolError::Usage)
}

fn read_f32(path: &str) -> Result<Vec<f32>, ToolError> {
    let bytes = std::fs::read(path).map_err(|source| ToolError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn write_f32(path: &str, samples: &[f32]) -> Result<(), ToolError> {
    let mut bytes = Vec::with_capacity(samples.len() * 4);
    for s in samples {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, bytes).map_err(|source| ToolError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Two tones and a sweep repeating every second (the criterion bench's signal), -6 dBFS
/// peak at most; or one -6 dBFS tone.
fn generate(rate: SampleRate, seconds: u32, tone_hz: Option<f64>) -> Vec<f32> {
    let fs = f64::from(rate.hz());
    (0..rate.samples_in_ms(seconds * 1000))
        .map(|n| {
            let t = n as f64 / fs;
            let value = match tone_hz {
                Some(f) => 0.5 * (TAU * f * t).sin(),
                None => {
                    let s = t.fract();
                    0.3 * (TAU * 440.0 * t).sin() + 0.2 * (TAU * (300.0 + 1500.0 * s) * s).sin()
                }
            };
            value as f32
        })
        .collect()
}

/// Converts `input` in 20 ms frames, each into a small scratch buffer and from there into
/// the output, the way a call feeds its ring; returns the output and the CPU seconds the
/// loop took (this thread's time on a CPU, so time spent preempted by other work on the
/// machine is not counted).
fn convert(
    from: SampleRate,
    to: SampleRate,
    input: &[f32],
    ppm: f64,
) -> Result<(Vec<f32>, f64), ToolError> {
    let mut resampler = StreamResampler::new(from, to, Quality::Voice)?;
    resampler.set_ratio_ppm(ppm);
    let frame = from.samples_in_ms(20);
    let mut scratch = vec![0.0f32; resampler.max_output_len(frame)];
    // Touched up front so page faults are not timed.
    let mut output = vec![1.0f32; resampler.max_output_len(input.len())];
    let mut written = 0;
    let started = thread_cpu_seconds()?;
    for piece in input.chunks(frame) {
        let produced = resampler.process(piece, &mut scratch);
        output[written..written + produced].copy_from_slice(&scratch[..produced]);
        written += produced;
    }
    let busy = thread_cpu_seconds()? - started;
    output.truncate(written);
    Ok((output, busy))
}

/// This thread's CPU time so far (Linux `schedstat`, nanoseconds).
fn thread_cpu_seconds() -> Result<f64, ToolError> {
    const PATH: &str = "/proc/thread-self/schedstat";
    let text = std::fs::read_to_string(PATH).map_err(|source| ToolError::Io {
        path: PATH.to_owned(),
        source,
    })?;
    let nanos: f64 = number(text.split_whitespace().next().map(str::to_owned).as_ref())?;
    Ok(nanos * 1e-9)
}

fn run(args: &[String]) -> Result<(), ToolError> {
    match args.first().map(String::as_str) {
        Some("generate") => {
            let fs = rate(args.get(1))?;
            let seconds: u32 = number(args.get(2))?;
            let out = path(args.get(3))?;
            let tone = args.get(4).map(|_| number(args.get(4))).transpose()?;
            write_f32(out, &generate(fs, seconds, tone))
        }
        Some("convert") => {
            let (from, to) = (rate(args.get(1))?, rate(args.get(2))?);
            let (input_path, output_path) = (path(args.get(3))?, path(args.get(4))?);
            let ppm = args.get(5).map(|_| number(args.get(5))).transpose()?;
            let input = read_f32(input_path)?;
            let (output, seconds) = convert(from, to, &input, ppm.unwrap_or(0.0))?;
            write_f32(output_path, &output)?;
            let audio_seconds = input.len() as f64 / f64::from(from.hz());
            println!(
                "{:.1} us per call-second ({audio_seconds:.0} s of audio in {:.1} ms)",
                seconds * 1e6 / audio_seconds,
                seconds * 1e3
            );
            Ok(())
        }
        Some("snr") => {
            let fs = rate(args.get(1))?;
            let file = path(args.get(2))?;
            let x = read_f32(file)?;
            let skip = fs.samples_in_ms(100);
            let len = fs.samples_in_ms(2000).min(x.len().saturating_sub(2 * skip));
            let fit = x
                .get(skip..skip + len)
                .and_then(|w| fit_sine(w, fs))
                .ok_or_else(|| ToolError::NoFit(file.to_owned()))?;
            println!("{:.1} dB", fit.snr_db);
            Ok(())
        }
        _ => Err(ToolError::Usage),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resample_file: {e}");
            ExitCode::FAILURE
        }
    }
}
