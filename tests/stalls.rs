//! End to end: the gateway on a machine that stops. The test freezes the whole gateway
//! process (`SIGSTOP`, then `SIGCONT` 300 ms later), as a host that deschedules a
//! virtual machine does: the engine must restart its schedule rather than burst, say how
//! much bus time it skipped (log and `/metrics`), and the recording of a call that went
//! on through the freeze must be shorter by exactly that (docs/OPERATIONS.md, "Engine
//! stalls"). And the gateway locks its memory unless told not to.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    GatewayProcess, RECORD_ALL, active_span, metric_value, metrics_text, read_wav, uuid,
    wait_recording,
};
use sip_glue::fake_asterisk::{CallEnd, FakeCall, Source};

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

async fn metric(gateway: &GatewayProcess, name: &str) -> f64 {
    metric_value(&metrics_text(gateway).await, name)
}

/// Kibibytes of locked memory of a process, from `/proc/<pid>/status`.
fn locked_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmLck in /proc/<pid>/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_gateway_skips_the_frozen_time_and_says_so() {
    let gateway = GatewayProcess::start(RECORD_ALL);
    let id = uuid();
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, id)
            .source(Source::tone(1000.0, -6.0))
            .duration(Duration::from_secs(3))
            .run(),
    );
    gateway
        .wait_log("recording started", Duration::from_secs(5))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        metric(&gateway, "telepatch_engine_late_restarts_total").await,
        0.0
    );

    signal(gateway.pid(), "STOP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(gateway.pid(), "CONT");

    let report = call.await.unwrap().unwrap();
    assert_eq!(report.end, CallEnd::Completed);
    let line = gateway
        .wait_log("engine thread was held up too long", Duration::from_secs(5))
        .expect("the skipped time is logged");
    assert_eq!(
        metric(&gateway, "telepatch_engine_late_restarts_total").await,
        1.0
    );
    // One block is 1 ms by default.
    let skipped_s = metric(&gateway, "telepatch_engine_skipped_blocks_total").await / 1000.0;
    assert!(
        (0.29..1.0).contains(&skipped_s),
        "skipped {skipped_s:.3} s for a 300 ms freeze"
    );
    assert!(
        line.contains(&format!("skipped_ms={}", skipped_s * 1000.0)),
        "log and metric agree: {line}"
    );

    // The call's writer saw the freeze too: counted and logged as a stall.
    assert!(
        metric(&gateway, "telepatch_writer_stalls_total").await >= 1.0,
        "the reply stall is counted"
    );
    let stall = gateway
        .wait_log("reply frames were held up", Duration::from_secs(2))
        .expect("the reply stall is logged");
    let late_ms: u64 = stall
        .split_whitespace()
        .find_map(|w| w.strip_prefix("late_ms="))
        .and_then(|v| v.parse().ok())
        .expect("late_ms in the stall line");
    assert!(late_ms >= 250, "{stall}");

    // The call's 3 s of tone, less what the bus skipped, within a frame.
    let path = gateway.recordings().join(format!("{id}.wav"));
    wait_recording(&gateway, &path);
    let (channels, rate) = read_wav(&path);
    let (first, last) = active_span(&channels[0], rate, 0.05).expect("the tone");
    let tone_s = (last - first) as f64 / f64::from(rate);
    println!("skipped {skipped_s:.3} s; recorded tone {tone_s:.3} s; {line}");
    assert!(
        (tone_s - (3.0 - skipped_s)).abs() <= 0.020,
        "tone lasts {tone_s:.3} s; 3 s less {skipped_s:.3} s skipped expected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_locks_its_memory_unless_told_not_to() {
    let locked = GatewayProcess::start("");
    if locked
        .wait_log("process memory locked", Duration::from_secs(2))
        .is_some()
    {
        assert!(locked_kib(locked.pid()) > 0, "VmLck of a locked gateway");
    } else {
        // Without CAP_IPC_LOCK the gateway says why and goes on.
        assert!(
            locked
                .wait_log("cannot lock the process's memory", Duration::from_secs(2))
                .is_some()
        );
    }
    let unlocked = GatewayProcess::start("[engine]\nlock_memory = false\n");
    assert_eq!(
        locked_kib(unlocked.pid()),
        0,
        "VmLck with lock_memory = false"
    );
    assert!(unlocked.logs().iter().all(|l| !l.contains("memory locked")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_stuck_on_the_disk_does_not_hold_up_its_call() {
    // The call's route plays a file that cannot be opened yet (the test holds a lease
    // on it): loading it blocks, as a read from a stalled disk does. The call must go on
    // meanwhile (replies every 20 ms, the caller's audio read), and the route completes
    // once the file can be read.
    let media = tempfile::tempdir().unwrap();
    let gateway =
        GatewayProcess::start(&format!("[media]\ndir = \"{}\"\n", media.path().display()));
    let token = gateway.token("routes", "admin");
    // The clip: 0.5 s of a 440 Hz tone.
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = std::io::Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new(&mut wav, spec).unwrap();
        for n in 0..4_000 {
            let x = (std::f64::consts::TAU * 440.0 * f64::from(n) / 8_000.0).sin();
            w.write_sample((x * 8_000.0) as i16).unwrap();
        }
        w.finalize().unwrap();
    }
    let stalled = common::StalledFile::create(&media.path().join("stuck.wav"), &wav.into_inner());
    let id = uuid();
    let route = serde_json::json!({
        "name": "stuck-clip",
        "match": { "uuid": id.to_string() },
        "actions": [{ "action": "play", "file": "stuck.wav" }],
    });
    let created = reqwest::Client::new()
        .post(format!("{}/v1/routes", gateway.api_url()))
        .bearer_auth(&token)
        .json(&route)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, id)
            .source(Source::tone(1000.0, -6.0))
            .duration(Duration::from_secs(4))
            .run(),
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let ear = format!("call:{id}.ear");
    let patches_into_ear = || async {
        let patches: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/v1/patches", gateway.api_url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        patches["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["sink"] == ear.as_str())
            .map(|p| p["source"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        patches_into_ear().await,
        Vec::<String>::new(),
        "the route was not held up by its file"
    );
    // The disk comes back: the route completes, and the call hears the clip.
    stalled.release();
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let sources = patches_into_ear().await;
        if sources.iter().any(|s| s.starts_with("player:")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no player patched into the call 1 s after its file could be read: {sources:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = call.await.unwrap().unwrap();
    assert_eq!(report.end, CallEnd::Completed);
    let longest = report.inter_arrival().max().unwrap();
    assert!(
        longest < Duration::from_millis(200),
        "replies paused {longest:?} while the route was stuck"
    );
    assert!(
        report.frames.len() >= 180,
        "{} reply frames in a 4 s call",
        report.frames.len()
    );
    assert!(
        !gateway
            .logs()
            .iter()
            .any(|l| l.contains("route action failed")),
        "the route completed once its clip arrived"
    );
}
