//! Interoperability with a real Asterisk 22.10.1 (AudioSocket fact sheet §4-§9): the
//! dialplan application, the channel driver with every `c()` choice and ARI
//! externalMedia, each measured as audio at both ends. telepatch records the caller
//! (Asterisk's Milliwatt, 1004 Hz at -2.98 dBFS); MixMonitor records on the Asterisk
//! side what telepatch sent back (a player tone chosen per call by its UUID prefix).
//! Every 100 ms window of both recordings is checked for frequency and level, and every
//! 2.5 ms for gaps.
//!
//! Run by `tests/interop.sh` (the `interop` feature; `TELEPATCH_ASTERISK_PREFIX` names
//! the Asterisk installation, and its absence fails the tests).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod asterisk_util;
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use asterisk_util::{AriEvents, Asterisk, assert_wav_sizes_match};
use codecs::measure::fit_sine;
use codecs::rate::SampleRate;
use common::{GatewayProcess, active_span, read_events, read_wav, wait_recording};

/// Milliwatt() plays 1004 Hz with a peak of 23255 (app_milliwatt.c, indications.c):
/// 20·log10(23255/32768) = -2.98 dBFS.
const MILLIWATT_HZ: f64 = 1004.0;
const MILLIWATT_DBFS: f64 = -2.98;
/// The players telepatch answers with: level of every reply tone.
const REPLY_DBFS: f64 = -6.0;
/// Reply tone of narrowband calls (UUID prefix `0008`): fits 8 kHz.
const NARROW_HZ: f64 = 700.0;
/// Reply tone of wideband calls (`0016`): only a 16 kHz or faster reply can carry it.
const WIDE_HZ: f64 = 6000.0;
/// Reply tone of full-band calls (`0048`): only a 32 kHz or faster reply can carry it.
const FULL_HZ: f64 = 12000.0;
/// How far a recording's pitch may stray: beyond 0.5 Hz for the median of its windows,
/// beyond 1 Hz for any single 100 ms window, in ppm of the tone's frequency.
#[derive(Clone, Copy)]
struct Pitch {
    median_ppm: f64,
    window_ppm: f64,
}
/// telepatch's recording of the caller: the uplink's drift steering rests at nominal on a
/// steady caller, but bends the ratio by a few hundred ppm for a moment.
const CALLER_PITCH: Pitch = Pitch {
    median_ppm: 0.0,
    window_ppm: 600.0,
};
/// What Asterisk hears: the downlink's drift steering may bend the reply by up to its
/// documented bound, half a percent (`MAX_CORRECTION_PPM`). Measured: -300 ppm for a few
/// hundred milliseconds at the start of every call, and now and then about -2000 ppm held
/// for a whole call.
const REPLY_PITCH: Pitch = Pitch {
    median_ppm: 5000.0,
    window_ppm: 5000.0,
};
/// Longest gap a recording of a single call may show: shorter than one 20 ms frame, so
/// no frame was lost (a frame a few milliseconds late on a busy host can still show).
const NO_GAP_MS: f64 = 20.0;

/// A test's telepatch, its Asterisk and the reply tones.
struct Rig {
    asterisk: Asterisk,
    gateway: GatewayProcess,
    api: Api,
    tones: tempfile::TempDir,
}

/// Starts telepatch (default settings: the reply rate follows the caller, kind 0x10
/// coding is not configured) with three looping reply players and routes that record
/// every call and patch a player to its ear by UUID prefix, then Asterisk pointed at it.
fn rig() -> Rig {
    let tones = tempfile::tempdir().unwrap();
    let nb = tone_wav(tones.path(), NARROW_HZ);
    let wb = tone_wav(tones.path(), WIDE_HZ);
    let fb = tone_wav(tones.path(), FULL_HZ);
    // Every call's audio is checked for gaps: margins against the host's stalls.
    let mut config = String::from(common::STALL_PROOF_CALL_BUFFERS);
    for (name, file) in [("nb", &nb), ("wb", &wb), ("fb", &fb)] {
        config.push_str(&format!(
            "[[players]]\nname = \"{name}\"\nfile = \"{}\"\nloop = true\n\n",
            file.display()
        ));
    }
    for (prefix, player) in [("0008", "nb"), ("0016", "wb"), ("0048", "fb")] {
        config.push_str(&format!(
            "[[routes]]\nname = \"reply-{player}\"\npriority = 10\n\
             match = {{ uuid_prefix = \"{prefix}\" }}\n\
             actions = [{{ action = \"record\", path = \"{{uuid}}.wav\" }}, \
             {{ action = \"patch\", ear_from = [\"player:{player}.out\"] }}]\n\n"
        ));
    }
    config.push_str(common::RECORD_ALL);
    // Routes and the API play files from the tones' directory.
    config.push_str(&format!(
        "\n[media]\ndir = \"{}\"\n",
        tones.path().display()
    ));
    let gateway = GatewayProcess::start(&config);
    let api = Api::new(&gateway);
    let asterisk = Asterisk::start(gateway.addr);
    Rig {
        asterisk,
        gateway,
        api,
        tones,
    }
}

/// One second (a whole number of cycles, so the loop is seamless) of a `hz` sine at
/// [`REPLY_DBFS`], 48 kHz.
fn tone_wav(dir: &Path, hz: f64) -> PathBuf {
    let path = dir.join(format!("tone-{hz}.wav"));
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&path, spec).unwrap();
    let amplitude = 10f64.powf(REPLY_DBFS / 20.0) * 32767.0;
    for n in 0..48_000 {
        let s = amplitude * (std::f64::consts::TAU * hz * f64::from(n) / 48_000.0).sin();
        writer.write_sample(s.round() as i16).unwrap();
    }
    writer.finalize().unwrap();
    path
}

/// A fresh call UUID whose first four hex digits are `prefix` (routes match on it).
fn call_id(prefix: &str) -> String {
    format!("{prefix}{}", &common::uuid().to_string()[4..])
}

/// The REST API of the test's gateway.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(gateway: &GatewayProcess) -> Api {
        Api {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: gateway.api_url(),
            token: gateway.token("interop", "admin"),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// `DELETE /v1/calls/{id}`: telepatch sends `00 00 00`.
    async fn hang_up(&self, id: &str) {
        let (status, body) = self
            .send(reqwest::Method::DELETE, &format!("/v1/calls/{id}"), None)
            .await;
        assert_eq!(status, 202, "hang up {id}: {body}");
    }

    /// The call record of `id`, waiting for it to be written.
    async fn cdr(&self, id: &str) -> serde_json::Value {
        for _ in 0..100 {
            let (status, page) = self
                .send(reqwest::Method::GET, &format!("/v1/cdrs?uuid={id}"), None)
                .await;
            assert_eq!(status, 200, "{page}");
            if let Some(item) = page["items"].as_array().and_then(|items| items.first()) {
                return item.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no call record for {id}");
    }
}

/// What a recording of a tone shows, window by window.
#[derive(Debug)]
struct ToneFigures {
    /// Seconds between the first and the last moment the tone is present.
    seconds: f64,
    /// 100 ms windows measured (the span less 100 ms at either end).
    windows: usize,
    median_hz: f64,
    min_hz: f64,
    max_hz: f64,
    median_dbfs: f64,
    min_dbfs: f64,
    max_dbfs: f64,
    /// Start (seconds into the span) of the window furthest from the median level.
    worst_at_s: f64,
    /// Longest run of 2.5 ms windows whose peak stays under a quarter of the tone's
    /// expected amplitude, in the measured part of the span (the tone's first and last
    /// 100 ms are its start and the hangup, not its steady state).
    longest_gap_ms: f64,
}

impl std::fmt::Display for ToneFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} s, {} windows: {:.3} Hz (windows {:.2}..{:.2}), {:.2} dBFS (windows {:.2}..{:.2}, furthest at {:.1} s), longest gap {:.1} ms",
            self.seconds,
            self.windows,
            self.median_hz,
            self.min_hz,
            self.max_hz,
            self.median_dbfs,
            self.min_dbfs,
            self.max_dbfs,
            self.worst_at_s,
            self.longest_gap_ms
        )
    }
}

/// Measures the single tone in `x` (expected near `dbfs`); `None` if it is absent. The
/// `excused_windows` windows whose level is furthest from the median are left out of the
/// per-window extremes (the windows around a gap the gateway counted).
fn measure_tone(x: &[f32], rate: u32, dbfs: f64, excused_windows: usize) -> Option<ToneFigures> {
    let amplitude = 10f64.powf(dbfs / 20.0) as f32;
    let (first, last) = active_span(x, rate, amplitude / 4.0)?;
    let sample_rate = SampleRate::new(rate).unwrap();
    let window = rate as usize / 10;
    let span = &x[first..last];
    if span.len() < 3 * window {
        return None;
    }
    let inner = &span[window..span.len() - window];
    let mut frequencies = Vec::new();
    let mut levels = Vec::new();
    for w in inner.chunks_exact(window) {
        let fit = fit_sine(w, sample_rate);
        frequencies.push(fit.map_or(0.0, |f| f.frequency_hz));
        levels.push(fit.map_or(-200.0, |f| f.amplitude_dbfs));
    }
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    if excused_windows > 0 {
        let median_level = median(&levels);
        let mut order: Vec<usize> = (0..levels.len()).collect();
        order.sort_by(|&a, &b| {
            (levels[b] - median_level)
                .abs()
                .total_cmp(&(levels[a] - median_level).abs())
        });
        let excused: std::collections::HashSet<usize> =
            order.into_iter().take(excused_windows).collect();
        let keep = |values: &[f64]| -> Vec<f64> {
            (0..values.len())
                .filter(|k| !excused.contains(k))
                .map(|k| values[k])
                .collect()
        };
        frequencies = keep(&frequencies);
        levels = keep(&levels);
    }
    let min = |values: &[f64]| values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = |values: &[f64]| values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let step = rate as usize / 400;
    let (mut run, mut longest) = (0usize, 0usize);
    for w in inner.chunks_exact(step) {
        if w.iter().all(|s| s.abs() < amplitude / 4.0) {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let median_dbfs = median(&levels);
    let worst = (0..levels.len())
        .max_by(|&a, &b| {
            (levels[a] - median_dbfs)
                .abs()
                .total_cmp(&(levels[b] - median_dbfs).abs())
        })
        .unwrap_or(0);
    Some(ToneFigures {
        seconds: span.len() as f64 / f64::from(rate),
        windows: levels.len(),
        median_hz: median(&frequencies),
        min_hz: min(&frequencies),
        max_hz: max(&frequencies),
        median_dbfs,
        min_dbfs: min(&levels),
        max_dbfs: max(&levels),
        worst_at_s: (worst + 1) as f64 / 10.0,
        longest_gap_ms: (longest * step) as f64 * 1000.0 / f64::from(rate),
    })
}

/// Checks a tone recording: frequency within 0.5 Hz (median) and 6 Hz (every window),
/// each plus the `pitch` allowance; level within 0.5 dB (median) and 1 dB (every window,
/// plus what a gap of `max_gap_ms` takes out of it); no gap longer than `max_gap_ms`; at
/// least `min_seconds` long. Prints the figures.
#[allow(clippy::too_many_arguments)]
fn check_tone(
    label: &str,
    x: &[f32],
    rate: u32,
    hz: f64,
    pitch: Pitch,
    dbfs: f64,
    min_seconds: f64,
    max_gap_ms: f64,
    excuse: StallExcuse,
) -> Result<ToneFigures, String> {
    let Some(figures) = measure_tone(x, rate, dbfs, excuse.windows) else {
        return Err(format!("{label}: no {hz} Hz tone near {dbfs} dBFS at all"));
    };
    eprintln!("{label}: {figures}");
    let median_hz = 0.5 + hz * pitch.median_ppm * 1e-6;
    // After an allowed gap the audio may resume out of phase: up to half a cycle inside
    // a 100 ms window moves that window's fitted frequency by up to 5 Hz (the median
    // stays strict).
    let window_hz = 1.0 + hz * pitch.window_ppm * 1e-6 + 5.0;
    // A window may be as much quieter as the longest gap allowed takes out of it.
    let window_db = 1.0 - 20.0 * (1.0 - max_gap_ms / 100.0).log10();
    let problem = if figures.seconds < min_seconds {
        format!(
            "lasts {:.2} s, expected at least {min_seconds} s",
            figures.seconds
        )
    } else if (figures.median_hz - hz).abs() > median_hz {
        format!("expected {hz} Hz")
    } else if (figures.min_hz - hz).abs() > window_hz || (figures.max_hz - hz).abs() > window_hz {
        "a window is off frequency".into()
    } else if (figures.median_dbfs - dbfs).abs() > 0.5 {
        format!("expected {dbfs} dBFS")
    } else if (figures.min_dbfs - dbfs).abs() > window_db || (figures.max_dbfs - dbfs).abs() > 1.0 {
        "a window is off level".into()
    } else if figures.longest_gap_ms > max_gap_ms.max(excuse.gap_ms) {
        format!("a gap longer than {} ms", max_gap_ms.max(excuse.gap_ms))
    } else {
        return Ok(figures);
    };
    Err(format!("{label}: {problem}: {figures}"))
}

/// [`check_tone`], panicking on a failure.
#[allow(clippy::too_many_arguments)]
fn assert_tone(
    label: &str,
    x: &[f32],
    rate: u32,
    hz: f64,
    pitch: Pitch,
    dbfs: f64,
    min_seconds: f64,
    max_gap_ms: f64,
) -> ToneFigures {
    check_tone(
        label,
        x,
        rate,
        hz,
        pitch,
        dbfs,
        min_seconds,
        max_gap_ms,
        StallExcuse::NONE,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// telepatch's recording of the caller `id` (48 kHz, voice only).
fn telepatch_recording(gateway: &GatewayProcess, id: &str) -> Vec<f32> {
    let path = gateway.recordings().join(format!("{id}.wav"));
    wait_recording(gateway, &path);
    let (mut channels, rate) = read_wav(&path);
    assert_eq!(rate, 48_000);
    channels.swap_remove(0)
}

/// Checks telepatch's recording of a Milliwatt caller.
fn check_caller_recorded(
    gateway: &GatewayProcess,
    label: &str,
    id: &str,
    min_seconds: f64,
    max_gap_ms: f64,
) -> Result<ToneFigures, String> {
    let voice = telepatch_recording(gateway, id);
    with_call_summary(
        gateway,
        id,
        check_tone(
            &format!("{label}: telepatch recorded the caller"),
            &voice,
            48_000,
            MILLIWATT_HZ,
            CALLER_PITCH,
            MILLIWATT_DBFS,
            // What the rig's uplink buffer (100 ms, 80 more than the default) still held
            // when the call ended never reached the recording.
            min_seconds - 0.08,
            max_gap_ms,
            StallExcuse::NONE,
        ),
    )
}

/// Checks what Asterisk recorded of telepatch's reply to the call `id`.
fn check_reply_heard(
    asterisk: &Asterisk,
    gateway: &GatewayProcess,
    label: &str,
    id: &str,
    hz: f64,
    min_seconds: f64,
    max_gap_ms: f64,
) -> Result<ToneFigures, String> {
    asterisk.wait_mixmonitor_closed(id, Duration::from_secs(10));
    let (heard, rate) = asterisk.heard(id);
    let excuse = call_summary(gateway, id)
        .map(|summary| StallExcuse::counted_in(&summary))
        .unwrap_or(StallExcuse::NONE);
    with_call_summary(
        gateway,
        id,
        check_tone(
            &format!("{label}: Asterisk heard the reply ({rate} Hz recording)"),
            &heard,
            rate,
            hz,
            REPLY_PITCH,
            REPLY_DBFS,
            min_seconds,
            max_gap_ms,
            excuse,
        ),
    )
}

/// Gaps in the reply that the gateway itself counted. Its writer skips ahead when it
/// wakes more than three frames (60 ms) late, as the AudioSocket fact sheet's pacing
/// rule asks (§7: never send more than ~60 ms ahead), and counts each such skip
/// (`writer_stalls`, the longest in `longest_writer_stall_ms`): a whole-host stall that
/// long is heard whatever the buffers. Such a gap is excused, up to the counted stall
/// plus two frames, with the 100 ms windows it can touch; any other gap still fails.
#[derive(Debug, Clone, Copy)]
struct StallExcuse {
    /// Longest gap excused, in ms.
    gap_ms: f64,
    /// Windows left out of the per-window frequency and level checks.
    windows: usize,
}

impl StallExcuse {
    const NONE: StallExcuse = StallExcuse {
        gap_ms: 0.0,
        windows: 0,
    };

    /// What the gateway's `call ended` line says it skipped.
    fn counted_in(summary: &str) -> StallExcuse {
        let field = |name: &str| -> Option<f64> {
            let start = summary.find(&format!(" {name}="))? + name.len() + 2;
            summary[start..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        match (field("writer_stalls"), field("longest_writer_stall_ms")) {
            (Some(stalls), Some(longest)) if stalls >= 1.0 => {
                let gap_ms = longest + 40.0;
                StallExcuse {
                    gap_ms,
                    windows: stalls as usize * ((gap_ms / 100.0).ceil() as usize + 1),
                }
            }
            _ => StallExcuse::NONE,
        }
    }
}

/// The gateway's `call ended` line for the call `id`, if it was logged.
fn call_summary(gateway: &GatewayProcess, id: &str) -> Option<String> {
    gateway
        .logs()
        .into_iter()
        .find(|l| l.contains("call ended") && l.contains(id))
}

/// Adds telepatch's summary of the call (frames, gaps, underruns, jitter) to a failure.
fn with_call_summary(
    gateway: &GatewayProcess,
    id: &str,
    check: Result<ToneFigures, String>,
) -> Result<ToneFigures, String> {
    check.map_err(|e| {
        let summary = gateway
            .logs()
            .into_iter()
            .find(|l| l.contains("call ended") && l.contains(id))
            .unwrap_or_else(|| "(no call summary logged)".into());
        format!("{e}\n    telepatch: {summary}")
    })
}

/// [`check_caller_recorded`], panicking on a failure.
fn assert_caller_recorded(
    gateway: &GatewayProcess,
    label: &str,
    id: &str,
    min_seconds: f64,
    max_gap_ms: f64,
) -> ToneFigures {
    check_caller_recorded(gateway, label, id, min_seconds, max_gap_ms)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`check_reply_heard`], panicking on a failure.
fn assert_reply_heard(
    asterisk: &Asterisk,
    gateway: &GatewayProcess,
    label: &str,
    id: &str,
    hz: f64,
    min_seconds: f64,
    max_gap_ms: f64,
) -> ToneFigures {
    check_reply_heard(asterisk, gateway, label, id, hz, min_seconds, max_gap_ms)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn wait_connected(gateway: &GatewayProcess, id: &str) {
    gateway
        .wait_log_all(&["call connected", id], Duration::from_secs(10))
        .unwrap_or_else(|| panic!("call {id} never reached telepatch"));
}

/// a) and e): the dialplan application at 8 kHz with Milliwatt as the caller. telepatch
/// records the tone; a player patched through the API reaches Asterisk; the API hangup
/// (`00 00 00`) makes the dialplan continue after AudioSocket().
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_mode_records_the_caller_and_asterisk_hears_the_patched_player() {
    let rig = rig();
    let id = call_id("0000");
    rig.asterisk.originate("app", &id, "application Milliwatt");
    wait_connected(&rig.gateway, &id);
    let (status, patch) = rig
        .api
        .send(
            reqwest::Method::POST,
            "/v1/patches",
            Some(serde_json::json!({"source": "player:nb.out", "sink": format!("call:{id}.ear")})),
        )
        .await;
    assert_eq!(status, 201, "{patch}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.api.hang_up(&id).await;
    rig.asterisk
        .wait_log(&["INTEROP continued", &id], Duration::from_secs(5));

    assert_caller_recorded(&rig.gateway, "app", &id, 2.9, NO_GAP_MS);
    assert_reply_heard(
        &rig.asterisk,
        &rig.gateway,
        "app",
        &id,
        NARROW_HZ,
        2.5,
        NO_GAP_MS,
    );
    let cdr = rig.api.cdr(&id).await;
    assert_eq!(cdr["caller_rate_hz"], 8000, "{cdr}");
    assert_eq!(cdr["ended_by"], "gateway", "{cdr}");
}

/// e): an API hangup returns the dialplan application with success, so the dialplan
/// goes on at the next priority (the Verbose() after AudioSocket()).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_hangup_continues_the_dialplan_after_the_application() {
    let rig = rig();
    let id = call_id("0008");
    rig.asterisk.originate("app", &id, "application Milliwatt");
    wait_connected(&rig.gateway, &id);
    rig.gateway
        .wait_log_all(&["recording started", &id], Duration::from_secs(5))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.api.hang_up(&id).await;
    let line = rig
        .asterisk
        .wait_log(&["INTEROP continued", &id], Duration::from_secs(5));
    eprintln!("Asterisk: {line}");
    let cdr = rig.api.cdr(&id).await;
    assert_eq!(cdr["ended_by"], "gateway", "{cdr}");
}

/// b) and defect 2: `Dial(AudioSocket/...)` with `c(slin)`, `c(slin16)`, `c(slin48)`,
/// `c(ulaw)` (μ-law bytes under kind 0x10) and without `c()`, all at once on one gateway
/// with default settings. Each caller is recorded at the right frequency and level, and
/// each hears telepatch's reply: narrowband calls a 700 Hz tone, `c(slin16)` a 6 kHz
/// tone, `c(slin48)` a 12 kHz tone that only a reply at their own rate can carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_with_each_codec_records_the_caller_and_carries_the_reply() {
    let rig = rig();
    // (context, UUID prefix, reply tone, the caller's rate, kind 0x10 coding telepatch
    // should tell from the audio and log once)
    let calls = [
        ("dial-slin", "0008", NARROW_HZ, 8_000, Some("slin")),
        ("dial-ulaw", "0008", NARROW_HZ, 8_000, Some("ulaw")),
        ("dial-default", "0008", NARROW_HZ, 8_000, Some("slin")),
        ("dial-slin16", "0016", WIDE_HZ, 16_000, None),
        ("dial-slin48", "0048", FULL_HZ, 48_000, None),
    ];
    let ids: Vec<String> = calls.iter().map(|c| call_id(c.1)).collect();
    for ((context, ..), id) in calls.iter().zip(&ids) {
        rig.asterisk.originate(context, id, "application Milliwatt");
    }
    for id in &ids {
        wait_connected(&rig.gateway, id);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &ids {
        rig.asterisk
            .hangup_channel(&rig.asterisk.audiosocket_channel(id));
    }
    // Every call is measured before anything is asserted, so a failure names them all.
    let mut failures = Vec::new();
    for ((context, _, reply_hz, caller_rate, coding), id) in calls.iter().zip(&ids) {
        let caller = check_caller_recorded(&rig.gateway, context, id, 2.9, NO_GAP_MS);
        let reply = check_reply_heard(
            &rig.asterisk,
            &rig.gateway,
            context,
            id,
            *reply_hz,
            2.5,
            NO_GAP_MS,
        );
        failures.extend(caller.err());
        failures.extend(reply.err());
        let cdr = rig.api.cdr(id).await;
        if cdr["caller_rate_hz"] != *caller_rate || cdr["ended_by"] != "caller" {
            failures.push(format!(
                "{context}: call record {cdr}, expected caller_rate_hz {caller_rate} and ended_by caller"
            ));
        }
        let told: Vec<String> = rig
            .gateway
            .logs()
            .into_iter()
            .filter(|l| {
                l.contains("kind 0x10 coding told from the caller's audio") && l.contains(id)
            })
            .collect();
        let as_expected = match coding {
            Some(coding) => told.len() == 1 && told[0].contains(&format!("coding=\"{coding}\"")),
            None => told.is_empty(),
        };
        if !as_expected {
            failures.push(format!(
                "{context}: expected the coding {coding:?} logged once, got {told:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Defect 1 through the channel driver: a `c(slin16)` caller that is silent for its
/// first second (Wait(1), then Milliwatt) still gets a wideband reply once it talks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_slin16_caller_silent_at_first_gets_a_wideband_reply() {
    let rig = rig();
    let id = call_id("0016");
    rig.asterisk
        .originate("dial-slin16", &id, "extension s@caller-late");
    wait_connected(&rig.gateway, &id);
    tokio::time::sleep(Duration::from_secs(4)).await;
    rig.asterisk
        .hangup_channel(&rig.asterisk.audiosocket_channel(&id));
    assert_caller_recorded(&rig.gateway, "late c(slin16)", &id, 2.5, NO_GAP_MS);
    assert_reply_heard(
        &rig.asterisk,
        &rig.gateway,
        "late c(slin16)",
        &id,
        WIDE_HZ,
        2.5,
        NO_GAP_MS,
    );
    let cdr = rig.api.cdr(&id).await;
    assert_eq!(cdr["caller_rate_hz"], 16000, "{cdr}");
}

/// c) and defect 1 through ARI: an externalMedia channel (slin16, audiosocket, tcp) sends
/// nothing until it is bridged. Added a second after it connected to a mixing bridge
/// with a Local channel playing Milliwatt, it is recorded by telepatch, and the reply
/// reaching the Local channel through the bridge carries the 6 kHz tone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ari_external_media_in_a_mixing_bridge_gets_a_wideband_reply() {
    let rig = rig();
    let events = AriEvents::connect(&rig.asterisk).await;
    let ari = rig.asterisk.ari();
    let id = call_id("0016");
    let external_host = rig.gateway.addr.to_string();
    let media = ari
        .post(
            "/channels/externalMedia",
            &[
                ("app", asterisk_util::ARI_APP),
                ("external_host", &external_host),
                ("format", "slin16"),
                ("encapsulation", "audiosocket"),
                ("transport", "tcp"),
                ("data", &id),
            ],
        )
        .await;
    let media_id = media["id"].as_str().unwrap().to_owned();
    assert_eq!(
        media["channelvars"]["AUDIOSOCKET_UUID"],
        id.as_str(),
        "{media}"
    );
    wait_connected(&rig.gateway, &id);
    let connected = tokio::time::Instant::now();
    let bridge = ari.post("/bridges", &[("type", "mixing")]).await;
    let bridge_id = bridge["id"].as_str().unwrap().to_owned();
    let endpoint = format!("Local/{id}@ari-milliwatt/n");
    let local = ari
        .post(
            "/channels",
            &[
                ("endpoint", endpoint.as_str()),
                ("app", asterisk_util::ARI_APP),
                ("formats", "slin16"),
            ],
        )
        .await;
    let local_id = local["id"].as_str().unwrap().to_owned();
    events
        .wait("StasisStart", &local_id, Duration::from_secs(5))
        .await;
    // The externalMedia channel stays unbridged, so silent, for its first second.
    tokio::time::sleep_until(connected + Duration::from_secs(1)).await;
    let channels = format!("{media_id},{local_id}");
    ari.post(
        &format!("/bridges/{bridge_id}/addChannel"),
        &[("channel", channels.as_str())],
    )
    .await;
    events
        .wait("ChannelEnteredBridge", &media_id, Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ari.delete(&format!("/channels/{local_id}")).await;
    ari.delete(&format!("/channels/{media_id}")).await;
    ari.delete(&format!("/bridges/{bridge_id}")).await;

    assert_caller_recorded(&rig.gateway, "externalMedia", &id, 2.5, NO_GAP_MS);
    assert_reply_heard(
        &rig.asterisk,
        &rig.gateway,
        "externalMedia",
        &id,
        WIDE_HZ,
        2.5,
        NO_GAP_MS,
    );
    let cdr = rig.api.cdr(&id).await;
    assert_eq!(cdr["caller_rate_hz"], 16000, "{cdr}");
    assert_eq!(cdr["ended_by"], "caller", "{cdr}");
}

/// d): `SendDTMF(123#)` on the caller's leg reaches telepatch's event stream as the
/// digits 1, 2, 3, # in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_dtmf_reaches_the_event_stream_in_order() {
    let rig = rig();
    let mut stream = rig
        .api
        .http
        .get(format!("{}/v1/events?types=dtmf", rig.api.base))
        .bearer_auth(&rig.api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let id = call_id("0008");
    rig.asterisk
        .originate("app", &id, "extension s@caller-dtmf");
    let events = read_events(&mut stream, Duration::from_secs(15), |events| {
        events.iter().filter(|e| e["call"] == id.as_str()).count() >= 4
    })
    .await;
    let digits: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "dtmf" && e["call"] == id.as_str())
        .filter_map(|e| e["digit"].as_str())
        .collect();
    assert_eq!(digits, ["1", "2", "3", "#"], "events: {events:#?}");
    rig.api.hang_up(&id).await;
    rig.asterisk
        .wait_log(&["INTEROP continued", &id], Duration::from_secs(5));
}

/// f) and defect 3: Asterisk ends calls (the caller's dialplan ends in app mode; `channel
/// request hangup` of the AudioSocket channel in Dial mode) while telepatch keeps
/// replying. Every one of 200 calls (ten waves of twenty) is recorded as ended by the
/// caller, none as an error. (A reset instead of a clean close hit about 2 % of such
/// calls, so 200 of them leave that under a 2 % chance of going unnoticed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asterisk_hangups_are_recorded_as_caller_hangups() {
    let rig = rig();
    let mut ids = Vec::new();
    for _wave in 0..10 {
        let app: Vec<String> = (0..10).map(|_| call_id("0008")).collect();
        let dial: Vec<String> = (0..10).map(|_| call_id("0016")).collect();
        for id in &app {
            rig.asterisk.originate("app", id, "extension s@caller-2s");
        }
        for id in &dial {
            rig.asterisk
                .originate("dial-slin16", id, "application Milliwatt");
        }
        for id in app.iter().chain(&dial) {
            wait_connected(&rig.gateway, id);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        for id in &dial {
            rig.asterisk
                .hangup_channel(&rig.asterisk.audiosocket_channel(id));
        }
        for id in app.iter().chain(&dial) {
            rig.gateway
                .wait_log_all(&["call ended", id], Duration::from_secs(10))
                .unwrap_or_else(|| panic!("call {id} did not end"));
        }
        ids.extend(app.into_iter().chain(dial));
    }
    let mut ended_by = std::collections::BTreeMap::<String, Vec<String>>::new();
    for id in &ids {
        let cdr = rig.api.cdr(id).await;
        let by = cdr["ended_by"].as_str().unwrap_or("?").to_owned();
        let reason = cdr["end_reason"].as_str().unwrap_or("").to_owned();
        ended_by
            .entry(by)
            .or_default()
            .push(format!("{id}: {reason}"));
    }
    let tally: Vec<String> = ended_by
        .iter()
        .map(|(by, calls)| format!("{by}: {}", calls.len()))
        .collect();
    eprintln!("{} calls ended by {}", ids.len(), tally.join(", "));
    assert_eq!(
        ended_by.get("caller").map_or(0, Vec::len),
        ids.len(),
        "every call was ended by Asterisk: {ended_by:#?}"
    );
}

/// Defect 4: twenty dialplan-application calls at once, each for ten seconds, started a
/// quarter of a second apart and hung up through the API in the same order, so calls
/// connect, and end (recordings finalized, records written), while the others stream.
/// Every call's recording at both ends is free of gaps longer than 40 ms, Asterisk never
/// gives up on inactivity, and every dialplan continues after the hangup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_app_calls_stream_without_gaps_and_continue_their_dialplan() {
    const CALLS: u32 = 20;
    const MAX_GAP_MS: f64 = 40.0;
    const STAGGER: Duration = Duration::from_millis(250);
    const LENGTH: Duration = Duration::from_secs(10);
    let rig = rig();
    let ids: Vec<String> = (0..CALLS).map(|_| call_id("0008")).collect();
    let start = tokio::time::Instant::now();
    for (n, id) in (0..CALLS).zip(&ids) {
        tokio::time::sleep_until(start + STAGGER * n).await;
        rig.asterisk.originate("app", id, "application Milliwatt");
    }
    for id in &ids {
        wait_connected(&rig.gateway, id);
    }
    for (n, id) in (0..CALLS).zip(&ids) {
        tokio::time::sleep_until(start + STAGGER * n + LENGTH).await;
        rig.api.hang_up(id).await;
    }
    for id in &ids {
        rig.asterisk
            .wait_log(&["INTEROP continued", id], Duration::from_secs(10));
    }
    // Every call is measured before anything is asserted, so a failure names them all.
    let mut failures = Vec::new();
    let mut worst_gap: f64 = 0.0;
    for (n, id) in ids.iter().enumerate() {
        let label = format!("call {n}");
        let checks = [
            check_caller_recorded(&rig.gateway, &label, id, 9.5, MAX_GAP_MS),
            check_reply_heard(
                &rig.asterisk,
                &rig.gateway,
                &label,
                id,
                NARROW_HZ,
                9.5,
                MAX_GAP_MS,
            ),
        ];
        for check in checks {
            match check {
                Ok(figures) => worst_gap = worst_gap.max(figures.longest_gap_ms),
                Err(e) => failures.push(e),
            }
        }
    }
    eprintln!("{CALLS} calls: longest gap in any passing recording {worst_gap:.1} ms");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let log = rig.asterisk.log_text();
    assert!(
        !log.contains("Reached timeout"),
        "Asterisk gave up on an idle AudioSocket"
    );
}

/// Defect 4, its cause: a call whose route is stuck on the disk (it plays a "file" that
/// is a FIFO nobody writes for 3 s, as a read from a stalled disk) and whose caller is
/// silent.
/// Its replies must flow meanwhile, or the dialplan application gives up after 2 s
/// without activity ("Reached timeout") and the dialplan stops; five calls streaming
/// beside it keep their audio free of gaps longer than 40 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_stuck_on_the_disk_holds_up_neither_its_call_nor_the_others() {
    const MAX_GAP_MS: f64 = 40.0;
    let rig = rig();
    let streaming: Vec<String> = (0..5).map(|_| call_id("0008")).collect();
    for id in &streaming {
        rig.asterisk.originate("app", id, "application Milliwatt");
    }
    for id in &streaming {
        wait_connected(&rig.gateway, id);
    }
    let stuck = call_id("0000");
    // A clip that cannot be opened until the test lets go of its lease: loading it
    // blocks, as a read from a stalled disk does.
    let clip = std::fs::read(tone_wav(rig.tones.path(), NARROW_HZ)).unwrap();
    let stalled = common::StalledFile::create(&rig.tones.path().join("stuck.wav"), &clip);
    let route = serde_json::json!({
        "name": "stuck-clip",
        "priority": 100,
        "match": { "uuid": stuck },
        "actions": [{ "action": "play", "file": "stuck.wav" }],
    });
    let (status, body) = rig
        .api
        .send(reqwest::Method::POST, "/v1/routes", Some(route))
        .await;
    assert_eq!(status, 201, "{body}");
    rig.asterisk
        .originate("app", &stuck, "extension s@caller-silent");
    wait_connected(&rig.gateway, &stuck);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The disk comes back.
    stalled.release();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = rig.asterisk.log_text();
    let gave_up: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Reached timeout"))
        .collect();
    assert!(
        gave_up.is_empty(),
        "Asterisk gave up on an idle AudioSocket: {gave_up:#?}"
    );
    for id in streaming.iter().chain([&stuck]) {
        rig.api.hang_up(id).await;
    }
    for id in streaming.iter().chain([&stuck]) {
        rig.asterisk
            .wait_log(&["INTEROP continued", id], Duration::from_secs(10));
    }
    let mut failures = Vec::new();
    for (n, id) in streaming.iter().enumerate() {
        let label = format!("streaming call {n}");
        failures.extend(check_caller_recorded(&rig.gateway, &label, id, 5.0, MAX_GAP_MS).err());
        failures.extend(
            check_reply_heard(
                &rig.asterisk,
                &rig.gateway,
                &label,
                id,
                NARROW_HZ,
                5.0,
                MAX_GAP_MS,
            )
            .err(),
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// g): SIGTERM to telepatch mid-call: every dialplan continues after AudioSocket(),
/// telepatch exits 0, and its recordings are complete WAV files (header sizes match the
/// data) holding the caller's tone without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_call_continues_the_dialplan_and_leaves_valid_recordings() {
    let rig = rig();
    let Rig {
        asterisk,
        mut gateway,
        ..
    } = rig;
    let ids = [call_id("0008"), call_id("0008")];
    for id in &ids {
        asterisk.originate("app", id, "application Milliwatt");
    }
    for id in &ids {
        wait_connected(&gateway, id);
        gateway
            .wait_log_all(&["recording started", id], Duration::from_secs(5))
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (exited_cleanly, gateway) = tokio::task::spawn_blocking(move || {
        let ok = gateway.terminate();
        (ok, gateway)
    })
    .await
    .unwrap();
    assert!(exited_cleanly, "telepatch exit status after SIGTERM");
    for id in &ids {
        asterisk.wait_log(&["INTEROP continued", id], Duration::from_secs(5));
        let path = gateway.recordings().join(format!("{id}.wav"));
        let data_bytes = assert_wav_sizes_match(&path);
        let (channels, rate) = read_wav(&path);
        assert_eq!(channels[0].len() * 2, data_bytes, "16-bit mono samples");
        assert_tone(
            "after SIGTERM: telepatch recorded the caller",
            &channels[0],
            rate,
            MILLIWATT_HZ,
            CALLER_PITCH,
            MILLIWATT_DBFS,
            1.9,
            NO_GAP_MS,
        );
    }
}

/// The excuse reads what the gateway counted, and nothing else.
#[test]
fn only_a_counted_writer_stall_excuses_a_reply_gap() {
    let stalled = "INFO call{uuid=0008eed8} gateway::service: call ended reason=Caller \
                   duration_ms=10000 frames_in=500 frames_out=495 uplink_gaps=1 \
                   writer_stalls=1 longest_writer_stall_ms=88";
    let excuse = StallExcuse::counted_in(stalled);
    assert_eq!(excuse.gap_ms, 128.0);
    assert_eq!(excuse.windows, 3);
    let clean = "call ended reason=Caller writer_stalls=0 longest_writer_stall_ms=0";
    assert_eq!(StallExcuse::counted_in(clean).windows, 0);
    assert_eq!(StallExcuse::counted_in(clean).gap_ms, 0.0);
    assert_eq!(StallExcuse::counted_in("call ended").windows, 0);
}
