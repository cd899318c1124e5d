//! End to end: the README's broadcast phone-in over AES67, from its example files
//! (`examples/phone-in-aes67/`): four callers on four lines go on air as one 4-channel
//! flow that a console (ffmpeg here) receives, each on its own channel; the console's four
//! mix-minus returns come back as a flow announced by SAP ("Console Mix-Minus", simulated
//! by a second transmit flow fed by four tone players) and each caller hears exactly
//! their own return.
//!
//! Runs in a loopback-only network namespace: the example uses fixed groups and ports
//! (239.69.10.1:5004) that must not meet any other test's traffic.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod aes67_util;
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aes67_util::{
    Api, TalkingCallers, assert_tone, ffmpeg_from_sdp, finish, in_loopback_namespace,
};
use common::{GatewayProcess, read_wav};
use sip_glue::fake_asterisk::Source;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/phone-in-aes67")
        .join(name)
}

/// A looping 48 kHz tone for a player, written into the media directory `dir`; returns
/// its name there.
fn tone_wav(dir: &Path, hz: f64, dbfs: f64) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let name = format!("return-{hz}.wav");
    let path = dir.join(&name);
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut writer = hound::WavWriter::create(&path, spec).unwrap();
    let amplitude = 10f64.powf(dbfs / 20.0);
    // A whole number of cycles in one second: the loop is seamless.
    for n in 0..48_000 {
        let s = amplitude * (2.0 * std::f64::consts::PI * hz * n as f64 / 48_000.0).sin();
        writer.write_sample(s as f32).unwrap();
    }
    writer.finalize().unwrap();
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_in_example_puts_four_lines_on_air_and_returns_mix_minus() {
    if !in_loopback_namespace("the_phone_in_example_puts_four_lines_on_air_and_returns_mix_minus") {
        return;
    }
    let config = std::fs::read_to_string(example("telepatch.toml")).unwrap();
    let gateway = GatewayProcess::start(&config);
    let api = Api::new(&gateway);
    for flow in ["studio.json", "returns.json"] {
        let body: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(example(flow)).unwrap()).unwrap();
        let (status, created) = api.post("/v1/nodes", body).await;
        assert_eq!(status, 201, "{flow}: {created}");
    }
    let (status, returns) = api.get("/v1/nodes/aes67rx:returns").await;
    assert_eq!(status, 200);
    assert_eq!(returns["status"]["state"], "waiting for the SAP session");

    // The console: its four mix-minus returns, announced as "Console Mix-Minus".
    let return_tones = [300.0, 520.0, 760.0, 1020.0];
    api.create(
        "console",
        serde_json::json!({"kind": "aes67tx", "channels": 4, "group": "239.69.20.1",
            "session_name": "Console Mix-Minus"}),
    )
    .await;
    for (k, hz) in return_tones.iter().enumerate() {
        let file = tone_wav(&gateway.dir.path().join("media"), *hz, -12.0);
        let name = format!("mix-minus-{}", k + 1);
        api.create(
            &name,
            serde_json::json!({"kind": "player", "file": file, "loop": true}),
        )
        .await;
        let (status, body) = api
            .post(
                "/v1/patches",
                serde_json::json!({"source": format!("player:{name}.out"),
                    "sink": format!("aes67tx:console.ch{}", k + 1)}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let status = api.status("aes67rx:returns").await;
        if status["state"] == "subscribed" {
            assert_eq!(status["source"]["session_name"], "Console Mix-Minus");
            break;
        }
        assert!(Instant::now() < until, "returns not subscribed: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What the console hears of the studio flow, while four lines are on air.
    let sdp = api.sdp("studio").await;
    assert!(sdp.contains("s=Phone-in callers\r\n"), "{sdp}");
    assert!(sdp.contains("c=IN IP4 239.69.10.1/15\r\n"), "{sdp}");
    let caller_tones = [440.0, 620.0, 860.0, 1180.0];
    let callers = (1..=4)
        .zip(caller_tones)
        .map(|(line, hz)| {
            let id = uuid::Uuid::parse_str(&format!(
                "{line}{line}{line}{line}0000-0000-4000-8000-{:012x}",
                rand_suffix()
            ))
            .unwrap();
            (id, Source::tone(hz, -6.0), -6.0)
        })
        .collect();
    let talking = TalkingCallers::start(&api, &gateway, callers).await;
    let out = aes67_util::wav(gateway.dir.path(), "studio");
    let ffmpeg = ffmpeg_from_sdp(gateway.dir.path(), &sdp, 3.5, &out);
    tokio::task::spawn_blocking(move || finish(ffmpeg, "ffmpeg", Duration::from_secs(30)))
        .await
        .unwrap();
    let reports = talking.hang_up(&api).await;

    let (channels, rate) = read_wav(&out);
    assert_eq!(channels.len(), 4);
    for (k, channel) in channels.iter().enumerate() {
        let others: Vec<f64> = caller_tones
            .iter()
            .chain(&return_tones)
            .copied()
            .filter(|&t| t != caller_tones[k])
            .collect();
        let steady = &channel[rate as usize / 2..channel.len() - rate as usize / 5];
        assert_tone(
            &format!("console ch{}", k + 1),
            steady,
            rate,
            caller_tones[k],
            -6.0,
            &others,
        );
    }
    for (k, report) in reports.into_iter().enumerate() {
        let rate = report.received_rate.unwrap().hz();
        let heard = &report.received[rate as usize..report.received.len() - rate as usize / 4];
        // Its own return, nobody else's, and not itself (mix-minus).
        let others: Vec<f64> = return_tones
            .iter()
            .copied()
            .filter(|&t| t != return_tones[k])
            .chain([caller_tones[k]])
            .collect();
        assert_tone(
            &format!("line {}", k + 1),
            heard,
            rate,
            return_tones[k],
            -12.0,
            &others,
        );
    }
}

fn rand_suffix() -> u64 {
    (uuid::Uuid::new_v4().as_u128() as u64) & 0xffff_ffff_ffff
}
