//! End to end: a route's `websocket` action streams a call to a voice bot over jambonz's
//! `listen` protocol with bidirectional streaming, and the bot's audio to the caller.
//!
//! The bot here is written from jambonz's published documentation, not from telepatch's
//! code:
//!
//! * docs.jambonz.org, verbs, "listen": the bot accepts connections with the subprotocol
//!   `audio.jambonz.org`; one text frame comes first, a JSON object with the call's
//!   attributes (`callSid`, ...) plus `sampleRate` and `mixType`, and the verb's
//!   `metadata`; then binary frames of 16-bit PCM at `sampleRate` (8000 by default, or
//!   16000, 24000, 48000);
//! * jambonz, "Bidirectional (streaming) audio" (release 0.9.0, `bidirectionalAudio`
//!   `{enabled, streaming, sampleRate}`): the bot sends binary frames of linear-16 PCM
//!   back, which the caller hears; `{"type": "killAudio"}` clears what is queued;
//!   `{"type": "mark", "data": {"name": ...}}` is answered with
//!   `{"type": "mark", "data": {"name": ..., "event": "playout"}}` once the audio sent
//!   before it has played, or `"event": "cleared"` when it was killed first; with
//!   `passDtmf`, digits arrive as `{"event": "dtmf", "dtmf": "5", ...}`.
//!
//! PCM is little-endian both ways (as on jambonz's hosts). Margins: the calls' buffers
//! ride through 100 ms of host stalls ([`common::STALL_PROOF_CALL_BUFFERS`]); deadlines
//! are generous; the timing assertions compare durations the gateway itself plays.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use codecs::rate::SampleRate;
use common::{GatewayProcess, STALL_PROOF_CALL_BUFFERS, steady_fit, tone_level_dbfs, uuid};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sip_glue::audiosocket::DtmfDigit;
use sip_glue::fake_asterisk::{CallEnd, CallReport, FakeCall, Source};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SUBPROTOCOL: &str = "audio.jambonz.org";

/// A bot's WebSocket server on loopback; each accepted connection is handed over.
struct Bot {
    url: String,
    accepted: mpsc::UnboundedReceiver<BotConnection>,
}

/// What the bot has received on one connection.
#[derive(Default)]
struct Heard {
    /// The caller's audio, decoded.
    audio: Vec<f32>,
    /// Binary frames.
    frames: usize,
    /// Text frames after the first, with their arrival.
    texts: Vec<(Instant, Value)>,
    /// Close frames.
    closes: usize,
}

/// One connection from the gateway.
struct BotConnection {
    /// The `Sec-WebSocket-Protocol` the gateway asked for.
    asked_protocols: String,
    /// The first text frame.
    first: Value,
    sink: SplitSink<WebSocketStream<TcpStream>, Message>,
    heard: Arc<Mutex<Heard>>,
    /// Set to stop reading (a stalled bot); the reader then holds the socket unread.
    stall: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<SplitStream<WebSocketStream<TcpStream>>>,
}

impl Bot {
    async fn start() -> Bot {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/calls", listener.local_addr().unwrap());
        let (hand_over, accepted) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let hand_over = hand_over.clone();
                tokio::spawn(async move {
                    if let Some(connection) = BotConnection::accept(tcp).await {
                        let _ = hand_over.send(connection);
                    }
                });
            }
        });
        Bot { url, accepted }
    }

    async fn next_connection(&mut self) -> BotConnection {
        tokio::time::timeout(Duration::from_secs(20), self.accepted.recv())
            .await
            .expect("the gateway connected to the bot")
            .unwrap()
    }
}

impl BotConnection {
    async fn accept(tcp: TcpStream) -> Option<BotConnection> {
        let asked = Arc::new(Mutex::new(String::new()));
        let seen = Arc::clone(&asked);
        // The callback's signature (and its error type) is tungstenite's.
        #[allow(clippy::result_large_err)]
        let callback = move |request: &Request, mut response: Response| {
            let protocols = request
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if protocols.split(',').any(|p| p.trim() == SUBPROTOCOL) {
                response.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    HeaderValue::from_static(SUBPROTOCOL),
                );
            }
            *seen.lock().unwrap() = protocols;
            Ok::<Response, ErrorResponse>(response)
        };
        let socket = tokio_tungstenite::accept_hdr_async(tcp, callback)
            .await
            .ok()?;
        let (sink, mut stream) = socket.split();
        let first = match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str(text.as_str()).unwrap(),
            other => panic!("the first frame must be text, got {other:?}"),
        };
        let heard = Arc::new(Mutex::new(Heard::default()));
        let stall = Arc::new(AtomicBool::new(false));
        let reader = {
            let (heard, stall) = (Arc::clone(&heard), Arc::clone(&stall));
            tokio::spawn(async move {
                while !stall.load(Ordering::Relaxed) {
                    let next = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
                    match next {
                        Err(_) => continue,
                        Ok(None | Some(Err(_))) => break,
                        Ok(Some(Ok(Message::Binary(bytes)))) => {
                            let mut heard = heard.lock().unwrap();
                            heard.frames += 1;
                            heard.audio.extend(
                                bytes
                                    .chunks_exact(2)
                                    .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0),
                            );
                        }
                        Ok(Some(Ok(Message::Text(text)))) => {
                            let value = serde_json::from_str(text.as_str()).unwrap();
                            heard.lock().unwrap().texts.push((Instant::now(), value));
                        }
                        Ok(Some(Ok(Message::Close(_)))) => heard.lock().unwrap().closes += 1,
                        Ok(Some(Ok(_))) => {}
                    }
                }
                stream
            })
        };
        let asked_protocols = asked.lock().unwrap().clone();
        Some(BotConnection {
            asked_protocols,
            first,
            sink,
            heard,
            stall,
            reader,
        })
    }

    /// Sends `frames` as fast as the socket takes them.
    async fn send_all(&mut self, frames: Vec<Bytes>) {
        for frame in frames {
            self.sink.feed(Message::Binary(frame)).await.unwrap();
        }
        self.sink.flush().await.unwrap();
    }

    /// Sends `frames` one every 20 ms.
    async fn send_paced(&mut self, frames: Vec<Bytes>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        for frame in frames {
            ticker.tick().await;
            if self.sink.send(Message::Binary(frame)).await.is_err() {
                return;
            }
        }
    }

    async fn send_json(&mut self, value: Value) {
        self.sink
            .send(Message::text(value.to_string()))
            .await
            .unwrap();
    }

    /// Waits for the event answering mark `name`; returns it and when it came.
    async fn mark_event(&self, name: &str) -> (Instant, Value) {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(found) = self
                .heard
                .lock()
                .unwrap()
                .texts
                .iter()
                .find(|(_, v)| v["type"] == "mark" && v["data"]["name"] == name)
            {
                return found.clone();
            }
            assert!(Instant::now() < until, "no answer to mark {name}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// `seconds` of a `hz` tone at `dbfs` (peak) as 20 ms frames of s16le PCM at `rate`.
fn tone_frames(hz: f64, dbfs: f64, rate: u32, seconds: f64) -> Vec<Bytes> {
    let amplitude = 10f64.powf(dbfs / 20.0) * 32767.0;
    let total = (seconds * f64::from(rate)) as usize;
    let samples: Vec<u8> = (0..total)
        .flat_map(|n| {
            let phase = 2.0 * std::f64::consts::PI * hz * n as f64 / f64::from(rate);
            ((amplitude * phase.sin()).round() as i16).to_le_bytes()
        })
        .collect();
    samples
        .chunks(rate as usize / 50 * 2)
        .map(Bytes::copy_from_slice)
        .collect()
}

/// The stretches of `x` where a tone sounds: 5 ms windows above -30 dBFS RMS, with
/// pauses shorter than 10 ms bridged. (start, end) sample indices.
fn tone_runs(x: &[f32], rate: u32) -> Vec<(usize, usize)> {
    let window = rate as usize / 200;
    let loud: Vec<bool> = x
        .chunks(window)
        .map(|w| (w.iter().map(|s| s * s).sum::<f32>() / w.len() as f32).sqrt() > 0.03)
        .collect();
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, &on) in loud.iter().enumerate() {
        if !on {
            continue;
        }
        let (start, end) = (i * window, ((i + 1) * window).min(x.len()));
        match runs.last_mut() {
            Some(last) if start - last.1 < 2 * window => last.1 = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

fn websocket_route(caller: uuid::Uuid, url: &str, rate: u32, metadata: &Value) -> String {
    format!(
        r#"
[[routes]]
name = "bot-{caller}"
match = {{ uuid = "{caller}" }}
actions = [{{ action = "websocket", url = "{url}", sample_rate = {rate}, metadata = {metadata} }}]
"#,
        metadata = toml_inline(metadata)
    )
}

/// A flat JSON object of strings as a TOML inline table.
fn toml_inline(value: &Value) -> String {
    let fields: Vec<String> = value
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

/// `GET /v1/nodes/{node}`'s status.
async fn node_status(gateway: &GatewayProcess, token: &str, node: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}/v1/nodes/{node}", gateway.api_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{node}");
    let body: Value = response.json().await.unwrap();
    body["status"].clone()
}

fn received(report: &CallReport) -> (&[f32], u32) {
    (
        &report.received,
        report.received_rate.expect("the caller heard audio").hz(),
    )
}

async fn caller_and_bot_hear_each_other_at(rate: u32) {
    let mut bot = Bot::start().await;
    let caller = uuid();
    let metadata = json!({"tenant": "acme"});
    let gateway = GatewayProcess::start(&format!(
        "{STALL_PROOF_CALL_BUFFERS}{}",
        websocket_route(caller, &bot.url, rate, &metadata)
    ));
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, caller)
            .source(Source::tone(1000.0, -6.0))
            .duration(Duration::from_secs(5))
            .dtmf(Duration::from_secs(2), DtmfDigit::try_from('5').unwrap())
            .run(),
    );
    let mut connection = bot.next_connection().await;
    assert!(
        connection
            .asked_protocols
            .split(',')
            .any(|p| p.trim() == SUBPROTOCOL),
        "asked for {:?}",
        connection.asked_protocols
    );
    let first = &connection.first;
    assert_eq!(first["sampleRate"], rate, "{first}");
    assert_eq!(first["mixType"], "mono", "{first}");
    assert_eq!(first["callSid"], caller.to_string(), "{first}");
    assert_eq!(first["tenant"], "acme", "{first}");
    // The bot answers with 600 Hz at -12 dBFS, in real time.
    connection
        .send_paced(tone_frames(600.0, -12.0, rate, 4.0))
        .await;
    let report = call.await.unwrap().unwrap();
    assert_eq!(report.end, CallEnd::Completed);

    let heard = connection.heard.lock().unwrap();
    // The caller's digit reached the bot (jambonz's passDtmf event).
    assert!(
        heard
            .texts
            .iter()
            .any(|(_, v)| v["event"] == "dtmf" && v["dtmf"] == "5"),
        "no DTMF event: {:?}",
        heard.texts
    );
    let seconds = heard.audio.len() as f64 / f64::from(rate);
    assert!(seconds > 4.0, "the bot heard {seconds:.2} s");
    let fit = steady_fit(&heard.audio, rate, 0.5);
    assert!(
        (fit.frequency_hz - 1000.0).abs() < 1.0,
        "the bot heard {:.2} Hz at {rate} Hz",
        fit.frequency_hz
    );
    assert!(
        (fit.amplitude_dbfs + 6.0).abs() < 1.0,
        "the bot heard {:.2} dBFS",
        fit.amplitude_dbfs
    );

    let (audio, caller_rate) = received(&report);
    let runs = tone_runs(audio, caller_rate);
    let &(start, end) = runs
        .iter()
        .max_by_key(|(s, e)| e - s)
        .expect("the caller heard the bot");
    let tone = &audio[start..end];
    let fit = steady_fit(tone, caller_rate, 0.3);
    assert!(
        (fit.frequency_hz - 600.0).abs() < 1.0,
        "the caller heard {:.2} Hz",
        fit.frequency_hz
    );
    let level = tone_level_dbfs(tone, caller_rate, 600.0);
    assert!(
        (level + 12.0).abs() < 1.0,
        "the caller heard {level:.2} dBFS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_hears_the_caller_and_the_caller_hears_the_bot_at_8_khz() {
    caller_and_bot_hear_each_other_at(8000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_hears_the_caller_and_the_caller_hears_the_bot_at_16_khz() {
    caller_and_bot_hear_each_other_at(16000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_come_back_after_their_audio_and_kill_audio_stops_the_queued_tone() {
    let mut bot = Bot::start().await;
    let caller = uuid();
    let rate = 8000;
    let gateway = GatewayProcess::start(&format!(
        "{STALL_PROOF_CALL_BUFFERS}{}",
        websocket_route(caller, &bot.url, rate, &json!({}))
    ));
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, caller)
            .source(Source::silence())
            .duration(Duration::from_secs(10))
            .run(),
    );
    let mut connection = bot.next_connection().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1.5 s of 500 Hz at once, then a mark: it comes back once that has played.
    let sent_a = Instant::now();
    connection
        .send_all(tone_frames(500.0, -12.0, rate, 1.5))
        .await;
    connection
        .send_json(json!({"type": "mark", "data": {"name": "after-a"}}))
        .await;
    let (played_a, event) = connection.mark_event("after-a").await;
    assert_eq!(event["data"]["event"], "playout", "{event}");
    let waited = played_a - sent_a;
    assert!(
        waited >= Duration::from_millis(1495),
        "the mark came back {waited:?} after 1.5 s of audio was sent"
    );

    // 8 s of 700 Hz at once and a mark, then killAudio 1.5 s later: the mark is
    // cleared, and the tone stops.
    let sent_b = Instant::now();
    connection
        .send_all(tone_frames(700.0, -12.0, rate, 8.0))
        .await;
    connection
        .send_json(json!({"type": "mark", "data": {"name": "in-b"}}))
        .await;
    tokio::time::sleep_until((sent_b + Duration::from_millis(1500)).into()).await;
    let killed = Instant::now();
    connection.send_json(json!({"type": "killAudio"})).await;
    let (_, event) = connection.mark_event("in-b").await;
    assert_eq!(event["data"]["event"], "cleared", "{event}");
    let report = call.await.unwrap().unwrap();
    assert_eq!(report.end, CallEnd::Completed);

    let (audio, caller_rate) = received(&report);
    let runs = tone_runs(audio, caller_rate);
    assert_eq!(runs.len(), 2, "expected the two tones, heard {runs:?}");
    let seconds = |(start, end): (usize, usize)| (end - start) as f64 / f64::from(caller_rate);
    let (a, b) = (runs[0], runs[1]);
    assert!(
        (seconds(a) - 1.5).abs() < 0.03,
        "the 1.5 s tone played for {:.3} s",
        seconds(a)
    );
    let sample_rate = SampleRate::new(caller_rate).unwrap();
    let hz = |(start, end): (usize, usize)| {
        codecs::measure::fit_sine(&audio[start + 400..end - 400], sample_rate)
            .unwrap()
            .frequency_hz
    };
    assert!((hz(a) - 500.0).abs() < 1.0 && (hz(b) - 700.0).abs() < 1.0);
    // The 8 s tone played from when it was sent until the kill, and not much longer; it
    // started only after it was sent, so this bounds the kill's delay. The node drops
    // what is queued at the first block after the kill reaches it (exactly: the
    // `websocket::node` unit tests); end to end, the kill also waits for the gateway's
    // socket thread to be scheduled, which a busy host delays by tens of milliseconds
    // now and then, hence the allowance beyond one 20 ms frame.
    const SCHEDULING_ALLOWANCE_S: f64 = 0.08;
    let until_kill = (killed - sent_b).as_secs_f64();
    eprintln!(
        "mark after {waited:?}; tones {:.3} s and {:.3} s, killAudio {until_kill:.3} s after the second was sent",
        seconds(a),
        seconds(b)
    );
    assert!(
        seconds(b) <= until_kill + 0.020 + SCHEDULING_ALLOWANCE_S,
        "the tone played {:.3} s, killAudio came {until_kill:.3} s after it was sent",
        seconds(b)
    );
    assert!(
        seconds(b) >= until_kill - 0.2,
        "the tone played only {:.3} s of {until_kill:.3} s",
        seconds(b)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_that_floods_then_stalls_keeps_its_bound_and_disturbs_no_other_call() {
    let mut bot = Bot::start().await;
    let flooded = uuid();
    let (c, d) = (uuid(), uuid());
    let rate = 8000;
    let gateway = GatewayProcess::start(&format!(
        r#"{STALL_PROOF_CALL_BUFFERS}{}
[[routes]]
name = "unrelated"
match = {{ uuid_prefix = "{}" }}
actions = [{{ action = "conference", name = "unrelated" }}]
"#,
        websocket_route(flooded, &bot.url, rate, &json!({})),
        // Calls c and d share a prefix no random UUID has.
        "0000dddd"
    ));
    let c = uuid::Uuid::parse_str(&format!("0000dddd{}", &c.to_string()[8..])).unwrap();
    let d = uuid::Uuid::parse_str(&format!("0000dddd{}", &d.to_string()[8..])).unwrap();
    let token = gateway.token("websocket-test", "read");
    let unrelated = |id, hz| {
        tokio::spawn(
            FakeCall::new(gateway.addr, id)
                .source(Source::tone(hz, -6.0))
                .duration(Duration::from_secs(9))
                .run(),
        )
    };
    let (call_c, call_d) = (unrelated(c, 500.0), unrelated(d, 800.0));
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, flooded)
            .source(Source::tone(1000.0, -6.0))
            .duration(Duration::from_secs(8))
            .run(),
    );
    let mut connection = bot.next_connection().await;
    // 60 s of 600 Hz at once, then the bot neither reads nor sends.
    let frames = tone_frames(600.0, -12.0, rate, 60.0);
    let sent = frames.len() as u64;
    connection.send_all(frames).await;
    connection.stall.store(true, Ordering::Relaxed);

    let node = format!("websocket:ws-{flooded}-0");
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = node_status(&gateway, &token, &node).await;
        if status["frames_received"].as_u64() == Some(sent) {
            break status;
        }
        assert!(
            Instant::now() < until,
            "the flood was not all received: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("{node}: {status}");
    assert_eq!(status["state"], "connected", "{status}");
    assert_eq!(status["max_queue_ms"], 10_000, "{status}");
    let queue_ms = status["queue_ms"].as_f64().unwrap();
    let dropped_ms = status["dropped_ms"].as_f64().unwrap();
    assert!(queue_ms <= 10_000.0, "{status}");
    // 60 s arrived; at most 10 s plus what played meanwhile was kept.
    assert!(dropped_ms >= 40_000.0, "{status}");
    assert!(queue_ms + dropped_ms >= 45_000.0, "{status}");
    let metrics = common::metrics_text(&gateway).await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("telepatch_websocket_dropped_samples_total")
                && l.contains(&node)
                && !l.ends_with(" 0")
        ),
        "no drops counted in /metrics"
    );

    let report = call.await.unwrap().unwrap();
    let (report_c, report_d) = (
        call_c.await.unwrap().unwrap(),
        call_d.await.unwrap().unwrap(),
    );
    for report in [&report, &report_c, &report_d] {
        assert_eq!(report.end, CallEnd::Completed, "{}", report.uuid);
        let longest = report.inter_arrival().max().unwrap();
        assert!(
            longest < Duration::from_millis(200),
            "{}: a {longest:?} gap in what it heard",
            report.uuid
        );
    }
    // The stalled bot's socket was closed with the call; nothing is left to read.
    connection.reader.abort();
    // The flooded caller hears the bot's tone steadily (10 s queued outlasts the call).
    let (audio, caller_rate) = received(&report);
    let runs = tone_runs(audio, caller_rate);
    assert_eq!(runs.len(), 1, "the bot's tone broke up: {runs:?}");
    let level = tone_level_dbfs(&audio[runs[0].0..runs[0].1], caller_rate, 600.0);
    assert!(
        (level + 12.0).abs() < 1.0,
        "the caller heard {level:.2} dBFS"
    );
    // The unrelated callers hear each other in every 100 ms from 1 s to the end.
    for (report, other) in [(&report_c, 800.0), (&report_d, 500.0)] {
        let (audio, caller_rate) = received(report);
        let window = caller_rate as usize / 10;
        let start = caller_rate as usize;
        let end = audio.len() - caller_rate as usize / 2;
        for (k, w) in audio[start..end].chunks_exact(window).enumerate() {
            let level = tone_level_dbfs(w, caller_rate, other);
            assert!(
                (level + 6.0).abs() < 1.5,
                "{}: window {k} hears {other} Hz at {level:.1} dBFS",
                report.uuid
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_node_made_through_the_api_streams_and_says_goodbye_when_deleted() {
    let mut bot = Bot::start().await;
    let gateway = GatewayProcess::start("");
    let token = gateway.token("websocket-api", "admin");
    let client = reqwest::Client::new();
    let nodes = format!("{}/v1/nodes", gateway.api_url());
    let create = |config: Value| {
        client
            .post(&nodes)
            .bearer_auth(&token)
            .json(&json!({"name": "survey", "config": config}))
            .send()
    };
    for (config, field) in [
        (
            json!({"kind": "websocket", "url": "http://127.0.0.1/"}),
            "url",
        ),
        (
            json!({"kind": "websocket", "url": bot.url, "sample_rate": 44100}),
            "sample_rate",
        ),
        (
            json!({"kind": "websocket", "url": bot.url, "mix_type": "stereo"}),
            "mix_type",
        ),
        (
            json!({"kind": "websocket", "url": bot.url, "max_queue_ms": 50}),
            "max_queue_ms",
        ),
    ] {
        let response = create(config).await.unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["field"], field, "{body}");
    }
    let response = create(
        json!({"kind": "websocket", "url": bot.url, "sample_rate": 24000,
        "metadata": {"survey": 7}}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["inputs"], json!(["in"]), "{body}");
    assert_eq!(body["outputs"], json!(["out"]), "{body}");

    let connection = bot.next_connection().await;
    assert_eq!(
        connection.first["sampleRate"], 24000,
        "{}",
        connection.first
    );
    assert_eq!(connection.first["mixType"], "mono", "{}", connection.first);
    assert_eq!(connection.first["survey"], 7, "{}", connection.first);
    assert!(connection.first.get("callSid").is_none());
    // Nothing is patched to `in`: the bot hears silence, 20 ms (480 samples) a frame.
    let until = Instant::now() + Duration::from_secs(20);
    while connection.heard.lock().unwrap().frames < 25 {
        assert!(Instant::now() < until, "no frames");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = node_status(&gateway, &token, "websocket:survey").await;
    assert_eq!(status["state"], "connected", "{status}");
    {
        let heard = connection.heard.lock().unwrap();
        let per_frame = heard.audio.len() as f64 / heard.frames as f64;
        assert!(
            (per_frame - 480.0).abs() < 48.0,
            "{per_frame} samples a frame"
        );
        assert!(heard.audio.iter().all(|s| *s == 0.0));
    }

    let response = client
        .delete(format!("{nodes}/websocket:survey"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let until = Instant::now() + Duration::from_secs(10);
    while connection.heard.lock().unwrap().closes == 0 {
        assert!(
            Instant::now() < until,
            "no close frame after the node was deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
