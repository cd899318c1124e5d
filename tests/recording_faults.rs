//! End to end: recordings survive a crash and a full disk. A gateway killed with
//! SIGKILL mid-recording leaves a file whose header the next start sets to the audio on
//! disk; a disk that fills mid-call is reported at once (log, the recorder's status,
//! `recording_failed`, `telepatch_recording_failures_total`), every file left is a valid
//! WAV of what reached the disk, a recording started on the full disk leaves nothing
//! behind, and a call beside them goes on without a gap (docs/OPERATIONS.md,
//! "Recordings"). `ffprobe` (Debian's ffmpeg) is the third-party reader.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    GatewayProcess, RECORD_ALL, STALL_PROOF_CALL_BUFFERS, active_span, metric_value, metrics_text,
    read_events, uuid,
};
use sip_glue::fake_asterisk::{FakeCall, Source};

/// Bytes of the header `hound` writes for mono 16-bit files (the default format).
const HEADER: u64 = 44;
/// Bytes of one mono 16-bit frame.
const FRAME: u64 = 2;

/// The RIFF and data sizes a WAV header states.
fn stated_sizes(path: &Path) -> (u64, u64) {
    let bytes = std::fs::read(path).unwrap();
    let at = |i: usize| u64::from(u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()));
    assert_eq!(
        &bytes[36..40],
        b"data",
        "{} has the canonical layout",
        path.display()
    );
    (at(4), at(40))
}

/// Checks that `path`'s header states exactly the whole frames in the file and that
/// ffprobe reads that duration; returns the frames.
fn check_header_matches_audio(path: &Path) -> u64 {
    let len = std::fs::metadata(path).unwrap().len();
    let (riff, data) = stated_sizes(path);
    assert_eq!(
        data,
        len - HEADER,
        "{}: data size vs bytes on disk",
        path.display()
    );
    assert_eq!(riff, len - 8, "{}: RIFF size", path.display());
    assert_eq!(data % FRAME, 0, "{}: whole frames", path.display());
    let seconds = (data / FRAME) as f64 / 48_000.0;
    let probed = ffprobe_seconds(path);
    assert!(
        (probed - seconds).abs() < 0.001,
        "{}: ffprobe reads {probed:.4} s, the file holds {seconds:.4} s",
        path.display()
    );
    // And hound reads every frame.
    let reader = hound::WavReader::open(path).unwrap();
    assert_eq!(u64::from(reader.duration()), data / FRAME);
    data / FRAME
}

/// The duration ffprobe reads from a WAV file.
fn ffprobe_seconds(path: &Path) -> f64 {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0"])
        .args(["-show_entries", "stream=duration", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe is installed (ffmpeg)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("ffprobe duration of {}: {text:?}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_cut_by_sigkill_is_repaired_at_the_next_start() {
    let mut first = GatewayProcess::start(RECORD_ALL);
    let id = uuid();
    let call = tokio::spawn(
        FakeCall::new(first.addr, id)
            .source(Source::tone(1000.0, -6.0))
            .until_hangup()
            .run(),
    );
    first
        .wait_log("recording started", Duration::from_secs(5))
        .unwrap();
    let started = Instant::now();
    // Mid-second: the header, updated once a second, lags the audio on disk.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    first.kill();
    let recorded = started.elapsed().as_secs_f64();
    let _ = call.await;

    let recordings = first.recordings();
    let path = recordings.join(format!("{id}.wav"));
    let len = std::fs::metadata(&path).unwrap().len();
    let (_, stated) = stated_sizes(&path);
    eprintln!(
        "after SIGKILL: {:.3} s on disk, the header states {:.3} s",
        (len - HEADER) as f64 / 96_000.0,
        stated as f64 / 96_000.0
    );
    // A file that is not ours, even one the journal names, is never touched.
    let foreign = recordings.join("notes.wav");
    std::fs::write(&foreign, b"RIFF, but only in name: someone's notes").unwrap();
    let journal = recordings.join(".telepatch-recordings");
    let mut text = std::fs::read_to_string(&journal).unwrap();
    assert!(
        text.contains(&format!("{{\"open\":\"{id}.wav\"}}")),
        "{text}"
    );
    text.push_str("{\"open\":\"notes.wav\"}\n");
    std::fs::write(&journal, text).unwrap();

    let dir = recordings.to_str().unwrap();
    let second = GatewayProcess::start_with_args(RECORD_ALL, &["--recordings-dir", dir]);
    let repaired = format!("path={}", path.display());
    second
        .wait_log_all(
            &["recording left open by an unclean stop repaired", &repaired],
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("no repair logged:\n{}", second.logs().join("\n")));
    let seconds = check_header_matches_audio(&path) as f64 / 48_000.0;
    println!("recorded {recorded:.3} s before SIGKILL; the repaired file holds {seconds:.3} s");
    // Everything the disk thread had written (it drains every 20 ms) is in the file.
    assert!(
        seconds > recorded - 0.5 && seconds < recorded + 0.5,
        "the repaired file holds {seconds:.3} s of {recorded:.3} s recorded"
    );
    let (channels, rate) = common::read_wav(&path);
    let (first_loud, last_loud) = active_span(&channels[0], rate, 0.05).expect("the tone");
    assert!(
        (last_loud - first_loud) as f64 / f64::from(rate) > seconds - 0.5,
        "the tone runs to the end of the file"
    );
    assert_eq!(
        std::fs::read(&foreign).unwrap(),
        b"RIFF, but only in name: someone's notes"
    );
    let logged = second
        .logs()
        .iter()
        .filter(|l| l.contains("repaired") && l.contains(&repaired))
        .count();
    assert_eq!(logged, 1, "the repair is logged once");
    drop(second);
    drop(first);
}

/// Runs the calling test again in a private mount namespace (`unshare -m`) and checks it
/// passed there. Returns true when already inside: the caller then runs its body.
fn in_mount_namespace(test: &str) -> bool {
    if std::env::var_os("TELEPATCH_TEST_MOUNTNS").is_some() {
        return true;
    }
    let output = Command::new("unshare")
        .args(["-m", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env("TELEPATCH_TEST_MOUNTNS", "1")
        .output()
        .expect("unshare is installed (util-linux)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(
        output.status.success() && text.contains("1 passed"),
        "{test} in a private mount namespace failed:\n{text}"
    );
    false
}

/// A call UUID starting with `prefix` (hex).
fn uuid_with_prefix(prefix: &str) -> uuid::Uuid {
    let rest = uuid().simple().to_string();
    uuid::Uuid::parse_str(&format!("{prefix}{}", &rest[prefix.len()..])).unwrap()
}

/// A 192 KiB disk holds about two seconds of one mono recording (96 kB/s).
const DISK: &str = "size=192k";
/// How long the recorded caller and the listener beside it talk.
const CALL: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_at_once_and_leaves_only_valid_wavs() {
    if !in_mount_namespace("a_full_disk_is_reported_at_once_and_leaves_only_valid_wavs") {
        return;
    }
    let disk = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", DISK, "tmpfs"])
        .arg(disk.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a small tmpfs");
    let recordings = disk.path().join("recordings");
    // The listener hears the recorded caller through a conference and records nothing.
    let config = format!(
            r#"{STALL_PROOF_CALL_BUFFERS}
[[routes]]
name = "listener"
match = {{ uuid_prefix = "beef" }}
actions = [{{ action = "conference", name = "room" }}]
{RECORD_ALL}
"#
        )
        .replace(
            r#"actions = [{ action = "record", path = "{uuid}.wav" }]"#,
            r#"actions = [{ action = "record", path = "{uuid}.wav" }, { action = "conference", name = "room" }]"#,
        );
    let dir = recordings.to_str().unwrap();
    let gateway = GatewayProcess::start_with_args(&config, &["--recordings-dir", dir]);
    let mut stream = common::open_events(&gateway, "recording_failed,recording_finished").await;
    let token = gateway.token("status-reader", "read");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    let talker = uuid_with_prefix("a1");
    let listener = uuid_with_prefix("beef");
    let calls = [
        tokio::spawn(
            FakeCall::new(gateway.addr, talker)
                .source(Source::tone(1000.0, -6.0))
                .duration(CALL)
                .run(),
        ),
        tokio::spawn(
            FakeCall::new(gateway.addr, listener)
                .source(Source::silence())
                .duration(CALL)
                .run(),
        ),
    ];
    let failed_line = gateway
        .wait_log("recording failed", Duration::from_secs(5))
        .expect("the failure is logged when it happens");
    let failed_at = Instant::now();
    let talker_path = recordings.join(format!("{talker}.wav"));
    assert!(
        failed_line.contains(&talker_path.display().to_string()),
        "{failed_line}"
    );
    assert!(
        failed_line.contains("No space left on device"),
        "{failed_line}"
    );

    // The recorder's status says so while the call goes on.
    let recorder = format!("recorder:rec-{talker}-0");
    let node: serde_json::Value = http
        .get(format!("{}/v1/nodes/{recorder}", gateway.api_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(node["status"]["state"], "failed", "{node}");
    assert!(
        node["status"]["error"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{node}"
    );
    let metrics = metrics_text(&gateway).await;
    assert_eq!(
        metric_value(&metrics, "telepatch_recording_failures_total"),
        1.0
    );

    // A recording started on the full disk is refused and leaves no file.
    let late = uuid_with_prefix("c2");
    let late_call = FakeCall::new(gateway.addr, late)
        .source(Source::tone(500.0, -6.0))
        .duration(Duration::from_secs(1))
        .run()
        .await
        .unwrap();
    assert!(
        late_call.violations.is_empty(),
        "{:?}",
        late_call.violations
    );
    let late_path = recordings.join(format!("{late}.wav"));
    assert!(
        gateway
            .wait_log_all(
                &["recording refused", &late.to_string()],
                Duration::from_secs(2)
            )
            .is_some(),
        "the refusal is logged"
    );
    assert!(
        !late_path.exists(),
        "no file is left for the refused recording"
    );
    assert!(
        !gateway
            .logs()
            .iter()
            .any(|l| l.contains("recording started") && l.contains(&late.to_string())),
        "a refused recording is never said to have started"
    );
    let metrics = metrics_text(&gateway).await;
    assert_eq!(
        metric_value(&metrics, "telepatch_recording_failures_total"),
        2.0
    );

    let reports: Vec<_> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    println!(
        "the disk filled {:.2} s before the calls ended",
        (Instant::now() - failed_at).as_secs_f64()
    );

    // The listener heard the talker without a gap, before, during and after the
    // failure: its reply frames came on time and every 10 ms of them carry the tone.
    let heard = &reports[1];
    let longest = heard.inter_arrival().max().unwrap();
    assert!(
        longest < Duration::from_millis(100),
        "a reply frame came {longest:?} after the one before"
    );
    let rate = heard.received_rate.expect("the listener heard audio").hz();
    let (first, last) = active_span(&heard.received, rate, 0.05).expect("the tone");
    let window = rate as usize / 100;
    let silent: Vec<usize> = heard.received[first..last]
        .chunks_exact(window)
        .enumerate()
        .filter(|(_, w)| w.iter().all(|s| s.abs() < 0.05))
        .map(|(i, _)| i * 10)
        .collect();
    assert!(
        silent.is_empty(),
        "the listener's audio went silent at {silent:?} ms"
    );
    let heard_s = (last - first) as f64 / f64::from(rate);
    assert!(
        heard_s > CALL.as_secs_f64() - 0.5,
        "heard {heard_s:.3} s of the tone"
    );

    // The failed recording ends as a valid WAV of what reached the disk.
    gateway
        .wait_log_all(
            &["recording incomplete", &talker.to_string()],
            Duration::from_secs(5),
        )
        .expect("the incomplete recording is finalized");
    let frames = check_header_matches_audio(&talker_path);
    assert!(frames > 48_000, "the recording kept {frames} frames");
    let events = read_events(&mut stream, Duration::from_secs(5), |events| {
        events
            .iter()
            .filter(|e| e["type"] == "recording_failed")
            .count()
            >= 2
            && events.iter().any(|e| e["type"] == "recording_finished")
    })
    .await;
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "recording_failed")
        .collect();
    assert_eq!(failed.len(), 2, "{events:?}");
    assert_eq!(failed[0]["node"], recorder.as_str());
    assert_eq!(
        failed[0]["path"],
        talker_path.display().to_string().as_str()
    );
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("No space left")
    );
    assert_eq!(failed[1]["node"], format!("recorder:rec-{late}-0").as_str());
    let finished = events
        .iter()
        .find(|e| e["type"] == "recording_finished")
        .unwrap();
    assert_eq!(finished["frames"].as_u64().unwrap(), frames);
    assert!(finished["error"].is_string(), "{finished}");

    // Nothing but valid WAVs (and the journal) is left on the disk.
    for entry in std::fs::read_dir(&recordings).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() == ".telepatch-recordings" {
            continue;
        }
        assert_eq!(path, talker_path, "unexpected file");
        check_header_matches_audio(&path);
    }
    drop(gateway);
    let unmounted = Command::new("umount").arg(disk.path()).status().unwrap();
    assert!(unmounted.success());
}
