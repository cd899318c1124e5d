//! End to end: the REST API of a running gateway driving real calls (control plane
//! issue). A call patched by the API hears the player; a route registered for a UUID
//! before the call connects is applied; the event stream reports a call's life in
//! order; finished calls leave records; what the API stored survives a restart; the
//! metrics endpoint counts calls.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use codecs::rate::SampleRate;
use common::{GatewayProcess, read_events, tone_level_dbfs, uuid};
use sip_glue::audiosocket::DtmfDigit;
use sip_glue::fake_asterisk::{CallEnd, FakeCall, Source};

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(gateway: &GatewayProcess, token: String) -> Client {
        Client {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: gateway.api_url(),
            token,
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

    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
}

/// Writes a 48 kHz mono WAV of a `hz` tone at `dbfs` (peak), `seconds` long, into the
/// media directory `dir`; returns its name there (what routes and players are given).
fn tone_wav(dir: &std::path::Path, hz: f64, dbfs: f64, seconds: f64) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let name = format!("tone-{hz}.wav");
    let path = dir.join(&name);
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&path, spec).unwrap();
    let amplitude = 10f64.powf(dbfs / 20.0) * 32767.0;
    for n in 0..(seconds * 48_000.0) as usize {
        let s = amplitude * (2.0 * std::f64::consts::PI * hz * n as f64 / 48_000.0).sin();
        writer.write_sample(s.round() as i16).unwrap();
    }
    writer.finalize().unwrap();
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_patched_through_the_api_hears_the_player() {
    let gateway = GatewayProcess::start("");
    let api = Client::new(&gateway, gateway.token("ops", "admin"));
    let wav = tone_wav(&gateway.dir.path().join("media"), 700.0, -6.0, 2.0);
    let (status, node) = api
        .post("/v1/nodes", serde_json::json!({"name": "tone", "config": {"kind": "player", "file": wav, "loop": true}}))
        .await;
    assert_eq!(status, 201, "{node}");

    let id = uuid();
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, id)
            .duration(Duration::from_secs(3))
            .run(),
    );
    gateway
        .wait_log_all(&["call connected", &id.to_string()], Duration::from_secs(5))
        .unwrap();
    let (status, call_info) = api.get(&format!("/v1/calls/{id}")).await;
    assert_eq!(
        (status, call_info["state"].as_str()),
        (200, Some("lobby")),
        "{call_info}"
    );
    let (status, patch) = api
        .post("/v1/patches", serde_json::json!({"source": "player:tone.out", "sink": format!("call:{id}.ear"), "gain_db": -6}))
        .await;
    assert_eq!(status, 201, "{patch}");
    let (_, call_info) = api.get(&format!("/v1/calls/{id}")).await;
    assert_eq!(call_info["state"], "patched");
    assert_eq!(call_info["patches"][0]["source"], "player:tone.out");

    let report = call.await.unwrap().unwrap();
    assert_eq!(report.end, CallEnd::Completed);
    // The last second the caller heard: the 700 Hz tone at -6 dBFS, minus 6 dB of gain.
    let rate = report.received_rate.map(SampleRate::hz).unwrap();
    let tail = &report.received[report.received.len() - rate as usize..];
    let level = tone_level_dbfs(tail, rate, 700.0);
    assert!(
        (level + 12.0).abs() < 0.5,
        "heard the player at {level:.2} dBFS, expected -12"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_registered_before_the_call_is_applied_when_it_connects() {
    let gateway = GatewayProcess::start("");
    let api = Client::new(&gateway, gateway.token("ivr", "admin"));
    let wav = tone_wav(&gateway.dir.path().join("media"), 900.0, -6.0, 5.0);
    let id = uuid();
    let (status, route) = api
        .post(
            "/v1/routes",
            serde_json::json!({
                "name": format!("ivr-{id}"), "priority": 100, "match": {"uuid": id},
                "actions": [
                    {"action": "play", "file": wav},
                    {"action": "record", "path": "{uuid}.wav"}
                ]
            }),
        )
        .await;
    assert_eq!(status, 201, "{route}");
    let report = FakeCall::new(gateway.addr, id)
        .source(Source::tone(400.0, -6.0))
        .duration(Duration::from_secs(2))
        .run()
        .await
        .unwrap();
    let rate = report.received_rate.map(SampleRate::hz).unwrap();
    let heard = &report.received[rate as usize / 2..];
    let prompt = tone_level_dbfs(heard, rate, 900.0);
    assert!(
        (prompt + 6.0).abs() < 0.5,
        "the route's prompt is heard at {prompt:.2} dBFS"
    );
    let recording = gateway.recordings().join(format!("{id}.wav"));
    common::wait_recording(&gateway, &recording);
    let (channels, rec_rate) = common::read_wav(&recording);
    let recorded = &channels[0];
    let (first, last) =
        common::active_span(recorded, rec_rate, 0.05).expect("the caller is in the recording");
    let level = tone_level_dbfs(&recorded[first + 4_800..last - 4_800], rec_rate, 400.0);
    assert!(
        (level + 6.0).abs() < 0.5,
        "the route's recording holds the caller at {level:.2} dBFS"
    );
    // Another call is not touched by that route.
    let other = FakeCall::new(gateway.addr, uuid())
        .duration(Duration::from_secs(1))
        .run()
        .await
        .unwrap();
    assert!(other.received.iter().all(|s| *s == 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_follows_a_call_from_start_to_end() {
    let gateway = GatewayProcess::start("");
    let mut stream = common::open_events(
        &gateway,
        "call_started,talk_start,talk_stop,dtmf,call_ended,levels",
    )
    .await;
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );

    // One second of silence, a one-second burst of a voiced sound, then silence.
    let rate = 8_000usize;
    let mut samples = vec![0.0f32; rate];
    samples.extend((0..rate).map(|n| {
        let t = n as f32 / rate as f32;
        // A 150 Hz buzz with harmonics, like a vowel.
        (1..=12)
            .map(|k| (2.0 * std::f32::consts::PI * 150.0 * k as f32 * t).sin() / k as f32)
            .sum::<f32>()
            * 0.25
    }));
    samples.extend(vec![0.0f32; rate * 2]);
    let id = uuid();
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, id)
            .source(Source::samples(samples))
            .dtmf(
                Duration::from_millis(3500),
                DtmfDigit::try_from('#').unwrap(),
            )
            .duration(Duration::from_secs(4))
            .run(),
    );
    let events = read_events(&mut stream, Duration::from_secs(15), |events| {
        events.iter().any(|e| e["type"] == "call_ended")
    })
    .await;
    let report = call.await.unwrap().unwrap();
    assert_eq!(report.end, CallEnd::Completed);

    let about_this_call: Vec<&str> = events
        .iter()
        .filter(|e| e["call"] == id.to_string())
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        about_this_call,
        vec![
            "call_started",
            "talk_start",
            "talk_stop",
            "dtmf",
            "call_ended"
        ],
        "all events: {events:#?}"
    );
    let dtmf = events.iter().find(|e| e["type"] == "dtmf").unwrap();
    assert_eq!(dtmf["digit"], "#");
    // Level meters arrived while the call was up, and one of them heard the burst.
    let loud = events
        .iter()
        .filter(|e| e["type"] == "levels")
        .flat_map(|e| e["calls"].as_array().unwrap().clone())
        .filter(|c| c["call"] == id.to_string())
        .map(|c| c["voice"]["peak_dbfs"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert!(loud > -20.0, "loudest level event {loud} dBFS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_calls_leave_records_and_metrics_count_them() {
    // Stall-proof buffers: a paced caller then has no uplink gap at all, and the hangup
    // at its end is not one either.
    let gateway = GatewayProcess::start(common::STALL_PROOF_CALL_BUFFERS);
    let api = Client::new(&gateway, gateway.token("billing", "read"));
    let id = uuid();
    let report = FakeCall::new(gateway.addr, id)
        .source(Source::tone(1000.0, -6.0))
        .duration(Duration::from_secs(2))
        .run()
        .await
        .unwrap();
    assert_eq!(report.end, CallEnd::Completed);
    let mut record = serde_json::Value::Null;
    for _ in 0..50 {
        let (status, page) = api.get(&format!("/v1/cdrs?uuid={id}")).await;
        assert_eq!(status, 200, "{page}");
        if let Some(item) = page["items"].as_array().and_then(|items| items.first()) {
            record = item.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(record["uuid"], id.to_string(), "no record for the call");
    assert_eq!(record["ended_by"], "caller");
    assert_eq!(record["caller_rate_hz"], 8000);
    assert_eq!(record["frames_in"], report.frames_sent);
    assert_eq!(record["uplink_gaps"], 0, "{record}");
    let duration = record["duration_ms"].as_u64().unwrap();
    assert!((1_900..3_000).contains(&duration), "duration {duration} ms");

    let metrics = common::metrics_text(&gateway).await;
    let value = |name: &str| common::metric_value(&metrics, name);
    assert_eq!(value("telepatch_calls_total"), 1.0);
    assert_eq!(value("telepatch_calls_active"), 0.0);
    assert_eq!(
        value("telepatch_frames_in_total"),
        report.frames_sent as f64
    );
    assert_eq!(value("telepatch_uplink_gaps_total"), 0.0);
    assert!(value("telepatch_engine_blocks_total") > 1000.0);
    assert!(metrics.contains("telepatch_engine_block_seconds_bucket{le=\"+Inf\"}"));
    assert!(
        metrics.contains("telepatch_api_requests_total"),
        "API request counters are rendered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_api_stored_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = "";
    let wav = tone_wav(dir.path(), 500.0, -6.0, 1.0);
    let database = common::database_url(dir.path());
    let media = dir.path().to_str().unwrap();
    let start = || {
        GatewayProcess::start_with_args(
            config,
            &["--database-url", &database, "--media-dir", media],
        )
    };

    let mut first = start();
    let token = first.token("ops", "admin");
    let api = Client::new(&first, token.clone());
    assert_eq!(api.post("/v1/nodes", serde_json::json!({"name": "jingle", "config": {"kind": "player", "file": wav, "loop": true}})).await.0, 201);
    assert_eq!(
        api.post(
            "/v1/nodes",
            serde_json::json!({"name": "desk", "config": {"kind": "conference", "members": 4}})
        )
        .await
        .0,
        201
    );
    let (status, patch) = api
        .post("/v1/patches", serde_json::json!({"source": "player:jingle.out", "sink": "conference:desk.in1", "gain_db": -3, "persistent": true}))
        .await;
    assert_eq!(status, 201, "{patch}");
    assert_eq!(api.post("/v1/routes", serde_json::json!({"name": "desk", "match": {"uuid_prefix": "de5c"}, "actions": [{"action": "conference", "name": "desk"}]})).await.0, 201);
    assert!(first.terminate());

    let second = start();
    let api = Client::new(&second, token);
    let (status, node) = api.get("/v1/nodes/player:jingle").await;
    assert_eq!(status, 200, "the token and the node survived: {node}");
    assert_eq!(node["persistent"], true);
    let (_, patches) = api.get("/v1/patches").await;
    let restored: Vec<(String, String, f64, bool)> = patches["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["source"].as_str().unwrap().into(),
                p["sink"].as_str().unwrap().into(),
                p["gain_db"].as_f64().unwrap(),
                p["persistent"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        restored,
        vec![(
            "player:jingle.out".into(),
            "conference:desk.in1".into(),
            -3.0,
            true
        )]
    );
    let (_, routes) = api.get("/v1/routes/desk").await;
    assert_eq!(routes["match"]["uuid_prefix"], "de5c");
    // The restored route works: a caller from that block joins the desk and hears the jingle.
    let id = uuid::Uuid::parse_str("de5c0000-0000-4000-8000-000000000001").unwrap();
    let report = FakeCall::new(second.addr, id)
        .duration(Duration::from_secs(2))
        .run()
        .await
        .unwrap();
    let rate = report.received_rate.map(SampleRate::hz).unwrap();
    let level = tone_level_dbfs(&report.received[rate as usize..], rate, 500.0);
    assert!(
        (level + 9.0).abs() < 0.5,
        "caller in the restored conference hears the jingle at {level:.2} dBFS"
    );
}
