//! End to end: AudioSocket peers that try to hurt everyone else get bounded cost
//! (AudioSocket fact sheet §4, §10): connections that never identify themselves cannot
//! lock real calls out, a peer that stops reading is hung up, and what a peer can make
//! the gateway log stays bounded.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::{GatewayProcess, metric_value, metrics_text, uuid, wait_cdr};
use sip_glue::fake_asterisk::{CallEnd, FakeCall, Source};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn id_message(id: uuid::Uuid) -> Vec<u8> {
    let mut m = vec![0x01, 0x00, 0x10];
    m.extend_from_slice(id.as_bytes());
    m
}

/// One 20 ms frame of the given slin kind (silence).
fn audio_message(kind: u8, samples: usize) -> Vec<u8> {
    let len = u16::try_from(samples * 2).unwrap().to_be_bytes();
    let mut m = vec![kind, len[0], len[1]];
    m.resize(3 + samples * 2, 0);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_identify_cannot_lock_out_real_calls() {
    let config = r#"
[audiosocket]
max_calls = 2
max_unidentified = 8
max_unidentified_per_source = 4
id_timeout_ms = 10000
"#;
    let gateway = GatewayProcess::start(config);
    // Six silent connections from another address (127.0.0.2, still loopback): four
    // wait for their ID (the per-source limit), two are closed at once.
    let mut silent = Vec::new();
    for _ in 0..6 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        silent.push(socket.connect(gateway.addr).await.unwrap());
    }
    let mut closed_at_once = 0;
    for stream in &mut silent {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte)).await
        {
            closed_at_once += 1;
        }
    }
    assert_eq!(
        closed_at_once, 2,
        "the two beyond the per-source limit are closed"
    );

    // Both call slots are still free for real calls.
    let calls = (0..2).map(|_| {
        FakeCall::new(gateway.addr, uuid())
            .source(Source::tone(1000.0, -6.0))
            .duration(Duration::from_secs(1))
            .run()
    });
    for report in futures_util::future::join_all(calls).await {
        let report = report.unwrap();
        assert_eq!(report.end, CallEnd::Completed, "a real call was refused");
        assert!(!report.hangup_received);
        assert!(report.frames.len() >= 45, "{} replies", report.frames.len());
    }
    let metrics = metrics_text(&gateway).await;
    assert_eq!(
        metric_value(&metrics, "telepatch_unidentified_refused_total"),
        2.0
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_cap_counts_identified_calls_only() {
    let config = "[audiosocket]\nmax_calls = 1\nid_timeout_ms = 10000\n";
    let gateway = GatewayProcess::start(config);
    let _silent: Vec<TcpStream> =
        futures_util::future::join_all((0..3).map(|_| TcpStream::connect(gateway.addr)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let first = tokio::spawn(
        FakeCall::new(gateway.addr, uuid())
            .duration(Duration::from_secs(2))
            .run(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = FakeCall::new(gateway.addr, uuid())
        .duration(Duration::from_secs(1))
        .run()
        .await
        .unwrap();
    assert_eq!(
        second.end,
        CallEnd::ServerHangup,
        "beyond max_calls: 00 00 00"
    );
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.end, CallEnd::Completed, "the first call was admitted");
    gateway
        .wait_log(
            "call cap reached; refusing the call",
            Duration::from_secs(2),
        )
        .expect("the refusal is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_hung_up_and_recorded_as_an_error() {
    let config = "[audiosocket]\nwrite_timeout_ms = 500\n";
    let gateway = GatewayProcess::start(config);
    let token = gateway.token("reader", "read");
    let id = uuid();
    // A tiny receive buffer, and nothing ever read: the gateway's writes soon block.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut stream = socket.connect(gateway.addr).await.unwrap();
    stream.write_all(&id_message(id)).await.unwrap();
    let started = Instant::now();
    // Keep sending audio, as a live channel would, while reading nothing.
    let frame = audio_message(0x10, 160);
    // ...until the gateway gives up on us and closes.
    while started.elapsed() < Duration::from_secs(60) && stream.write_all(&frame).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ended_after = started.elapsed();
    let record = wait_cdr(&gateway, &token, id).await;
    assert_eq!(
        record["uuid"],
        id.to_string(),
        "the call never ended: {:#?}",
        gateway.logs()
    );
    assert_eq!(record["ended_by"], "error", "{record}");
    assert_eq!(record["end_reason"], "peer stopped reading", "{record}");
    println!("a peer that stopped reading was hung up after {ended_after:?}");
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_peer_can_make_the_gateway_log_is_bounded() {
    let gateway = GatewayProcess::start("");
    // 1. Huge invalid DTMF payloads: at most one short line per call.
    let mut dtmf = TcpStream::connect(gateway.addr).await.unwrap();
    dtmf.write_all(&id_message(uuid())).await.unwrap();
    let mut huge = vec![0x03, 0xFF, 0xFF];
    huge.resize(3 + 65_535, b'7');
    for _ in 0..20 {
        dtmf.write_all(&huge).await.unwrap();
    }
    // 2. Valid DTMF as fast as possible: per-digit lines stop after a few dozen.
    for _ in 0..2_000 {
        dtmf.write_all(&[0x03, 0x00, 0x01, b'5']).await.unwrap();
    }
    // 3. Alternating audio kinds: the call is closed after a few switches.
    let mut kinds = TcpStream::connect(gateway.addr).await.unwrap();
    let kinds_id = uuid();
    kinds.write_all(&id_message(kinds_id)).await.unwrap();
    let slin8 = audio_message(0x10, 160);
    let slin192 = audio_message(0x18, 3_840);
    let mut closed = false;
    for k in 0..2_000 {
        let frame = if k % 2 == 0 { &slin8 } else { &slin192 };
        if kinds.write_all(frame).await.is_err() {
            closed = true;
            break;
        }
    }
    if !closed {
        // The gateway closes; reading sees the end.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), kinds.read_to_end(&mut rest)).await;
    }
    gateway
        .wait_log(
            "caller keeps changing its audio rate; closing the call",
            Duration::from_secs(5),
        )
        .expect("the rate flipper is closed");
    gateway
        .wait_log(
            "further digits are counted, not logged",
            Duration::from_secs(5),
        )
        .expect("the DTMF flood stops being logged");
    drop(dtmf);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let logs = gateway.logs();
    let longest = logs.iter().map(String::len).max().unwrap_or(0);
    assert!(longest < 2_000, "longest log line {longest} characters");
    let dtmf_lines = logs.iter().filter(|l| l.contains(" DTMF")).count();
    assert!(dtmf_lines <= 70, "{dtmf_lines} DTMF lines");
    let invalid_lines = logs
        .iter()
        .filter(|l| l.contains("invalid DTMF message skipped"))
        .count();
    assert_eq!(invalid_lines, 1);
    let rate_lines = logs
        .iter()
        .filter(|l| l.contains(&kinds_id.to_string()))
        .count();
    assert!(
        rate_lines <= 20,
        "{rate_lines} lines about the rate flipper"
    );
    assert!(logs.len() < 200, "{} log lines in all", logs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_source_networks_may_connect() {
    // Asterisk is "at" 127.0.0.2; a stranger on 127.0.0.1 claiming a UUID gets nothing.
    let gateway = GatewayProcess::start("[audiosocket]\nallow = \"127.0.0.2/32\"\n");
    let mut stranger = TcpStream::connect(gateway.addr).await.unwrap();
    let _ = stranger.write_all(&id_message(uuid())).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), stranger.read_to_end(&mut rest))
        .await
        .expect("the stranger's connection is closed at once");
    assert!(
        read.is_err() || rest.is_empty(),
        "the stranger got {rest:?}"
    );

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut asterisk = socket.connect(gateway.addr).await.unwrap();
    asterisk.write_all(&id_message(uuid())).await.unwrap();
    for _ in 0..25 {
        asterisk.write_all(&audio_message(0x10, 160)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut header = [0u8; 3];
    asterisk.read_exact(&mut header).await.unwrap();
    assert_eq!(
        header,
        [0x10, 0x01, 0x40],
        "the allowed caller hears 20 ms replies"
    );
    drop(asterisk);

    let metrics = metrics_text(&gateway).await;
    assert_eq!(
        metric_value(&metrics, "telepatch_audiosocket_source_refused_total"),
        1.0
    );
    assert_eq!(metric_value(&metrics, "telepatch_calls_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_counters_never_go_backwards_while_calls_end() {
    // Calls end all the time while /metrics is scraped: each scrape must count every
    // call exactly once, live or ended.
    let gateway = GatewayProcess::start("");
    let calls = tokio::spawn({
        let addr = gateway.addr;
        async move {
            let calls = (0..40u64).map(|k| async move {
                tokio::time::sleep(Duration::from_millis(25 * k)).await;
                FakeCall::new(addr, uuid())
                    .duration(Duration::from_millis(300))
                    .run()
                    .await
            });
            futures_util::future::join_all(calls).await
        }
    });
    let mut last = (0.0, 0.0);
    let mut scrapes = 0;
    while !calls.is_finished() {
        let metrics = metrics_text(&gateway).await;
        let now = (
            metric_value(&metrics, "telepatch_frames_in_total"),
            metric_value(&metrics, "telepatch_frames_out_total"),
        );
        assert!(
            now.0 >= last.0 && now.1 >= last.1,
            "counters went backwards: {last:?} -> {now:?}"
        );
        last = now;
        scrapes += 1;
    }
    for report in calls.await.unwrap() {
        assert_eq!(report.unwrap().end, CallEnd::Completed);
    }
    assert!(scrapes > 20, "only {scrapes} scrapes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_tokens_is_limited_per_source_address() {
    let gateway = GatewayProcess::start("");
    let operator = gateway.token("operator", "read");
    let http = reqwest::Client::new();
    let get = |token: &str| {
        http.get(format!("{}/v1/calls", gateway.api_url()))
            .bearer_auth(token)
            .send()
    };
    // The operator's token was verified before the guessing started.
    assert_eq!(get(&operator).await.unwrap().status().as_u16(), 200);
    let mut statuses = Vec::new();
    for k in 0..40 {
        statuses.push(get(&format!("guess-{k}")).await.unwrap().status().as_u16());
    }
    assert!(
        statuses[..20].iter().all(|&s| s == 401),
        "the first 20 guesses are checked: {statuses:?}"
    );
    assert!(
        statuses[20..].iter().all(|&s| s == 429),
        "then the address is refused: {statuses:?}"
    );
    gateway
        .wait_log(
            "failed API token checks from this address",
            Duration::from_secs(2),
        )
        .expect("the brute force is logged");
    let logged = gateway
        .logs()
        .iter()
        .filter(|l| l.contains("failed API token checks"))
        .count();
    assert_eq!(logged, 1, "logged once, not per guess");
    // A token verified before keeps working from the same address.
    assert_eq!(get(&operator).await.unwrap().status().as_u16(), 200);
    // Health checks need no token and are not refused.
    let health = http
        .get(format!("{}/healthz", gateway.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

/// Creates `player:<name>` for `file` through the API; the status and body.
async fn create_player(
    gateway: &GatewayProcess,
    token: &str,
    name: &str,
    file: &str,
) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/nodes", gateway.api_url()))
        .bearer_auth(token)
        .json(&serde_json::json!({"name": name, "config": {"kind": "player", "file": file}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_only_read_regular_files_inside_the_media_directory() {
    let media = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let prompt = common::data("prompt-8k.wav");
    std::fs::copy(&prompt, media.path().join("prompt.wav")).unwrap();
    std::fs::create_dir(media.path().join("ivr")).unwrap();
    std::fs::copy(&prompt, media.path().join("ivr/menu.wav")).unwrap();
    std::fs::copy(&prompt, outside.path().join("secret.wav")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.wav"),
        media.path().join("linked.wav"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), media.path().join("elsewhere")).unwrap();
    let fifo = media.path().join("fifo.wav");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let gateway =
        GatewayProcess::start(&format!("[media]\ndir = \"{}\"\n", media.path().display()));
    let token = gateway.token("ops", "admin");

    // Plain relative paths inside the directory play.
    for (name, file) in [("prompt", "prompt.wav"), ("menu", "ivr/menu.wav")] {
        let (status, body) = create_player(&gateway, &token, name, file).await;
        assert_eq!(status, 201, "{file}: {body}");
    }
    // Paths that leave it are refused before anything is opened.
    let secret = outside.path().join("secret.wav");
    for file in [secret.to_str().unwrap(), "../secret.wav", "ivr/../../x.wav"] {
        let (status, body) = create_player(&gateway, &token, "escape", file).await;
        assert_eq!(status, 400, "{file}: {body}");
        assert_eq!(body["field"], "file", "{body}");
    }
    // Links inside it are never followed, to a file or through a directory.
    for file in ["linked.wav", "elsewhere/secret.wav"] {
        let (status, body) = create_player(&gateway, &token, "linked", file).await;
        assert_eq!(status, 422, "{file}: {body}");
    }
    // A FIFO is refused at once instead of blocking the request.
    let began = Instant::now();
    let (status, body) = create_player(&gateway, &token, "fifo", "fifo.wav").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("not a regular file"), "{body}");
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "the FIFO held the request {:?}",
        began.elapsed()
    );
    // The errors never name anything outside the media directory.
    let logs = gateway.logs().join("\n");
    assert!(!logs.contains(outside.path().to_str().unwrap()), "{logs}");
    // Routes are held to the same rule.
    let route = reqwest::Client::new()
        .post(format!("{}/v1/routes", gateway.api_url()))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "name": "escape", "match": "default",
            "actions": [{"action": "play", "file": secret.to_str().unwrap()}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(route.status().as_u16(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_patches_beyond_the_engine_capacity_are_refused() {
    let gateway = GatewayProcess::start("[engine]\nmax_nodes = 3\nmax_patches = 2\n");
    let token = gateway.token("ops", "admin");
    let http = reqwest::Client::new();
    let post = |path: &'static str, body: serde_json::Value| {
        http.post(format!("{}{path}", gateway.api_url()))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let conference = |name: &str| serde_json::json!({"name": name, "config": {"kind": "conference", "members": 2}});
    for name in ["a", "b", "c"] {
        assert_eq!(
            post("/v1/nodes", conference(name)).await.unwrap().status(),
            201
        );
    }
    let refused = post("/v1/nodes", conference("d")).await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body.to_string().contains("engine.max_nodes"), "{body}");

    let patch = |from: &str, to: &str| serde_json::json!({"source": format!("conference:{from}.out1"), "sink": format!("conference:{to}.in1")});
    assert_eq!(
        post("/v1/patches", patch("a", "b")).await.unwrap().status(),
        201
    );
    assert_eq!(
        post("/v1/patches", patch("b", "c")).await.unwrap().status(),
        201
    );
    let refused = post("/v1/patches", patch("c", "a")).await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body.to_string().contains("engine.max_patches"), "{body}");

    // Deleting makes room again.
    let deleted = http
        .delete(format!("{}/v1/nodes/conference:c", gateway.api_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        post("/v1/nodes", conference("d")).await.unwrap().status(),
        201
    );
    assert_eq!(
        post("/v1/patches", patch("d", "a")).await.unwrap().status(),
        201
    );
    // Calls are not nodes of the capacity: one still connects and is heard.
    let report = FakeCall::new(gateway.addr, uuid())
        .duration(Duration::from_millis(600))
        .run()
        .await
        .unwrap();
    assert_eq!(report.end, CallEnd::Completed);
    assert!(report.frames.len() >= 25, "{} frames", report.frames.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_sink_that_stops_reading_holds_up_no_call() {
    let gateway = GatewayProcess::start("");
    let logged_before: usize = gateway.logs().iter().map(|l| l.len() + 1).sum();
    gateway.stop_reading_logs();
    // Far more log output than a pipe holds (64 KiB): 200 short calls, each logging its
    // start, its route and its end. A gateway that wrote its logs from the threads that
    // log would block in those writes once the pipe is full.
    for _ in 0..10 {
        let calls: Vec<_> = (0..20)
            .map(|_| {
                tokio::spawn(
                    FakeCall::new(gateway.addr, uuid())
                        .duration(Duration::from_millis(100))
                        .run(),
                )
            })
            .collect();
        for call in calls {
            let report = tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .expect("a short call was held up while nobody read the logs")
                .unwrap()
                .unwrap();
            assert_eq!(report.end, CallEnd::Completed);
        }
    }
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        FakeCall::new(gateway.addr, uuid())
            .source(Source::tone(1000.0, -6.0))
            .duration(Duration::from_secs(2))
            .run(),
    )
    .await
    .expect("the call was held up while nobody read the logs")
    .unwrap();
    assert_eq!(report.end, CallEnd::Completed);
    assert!(
        report.frames.len() >= 90,
        "{} reply frames in a 2 s call while nobody read the logs",
        report.frames.len()
    );
    let longest = report.inter_arrival().max().unwrap_or_default();
    assert!(
        longest < Duration::from_millis(200),
        "replies paused {longest:?} while nobody read the logs"
    );
    let health = tokio::time::timeout(
        Duration::from_secs(5),
        reqwest::get(format!("{}/healthz", gateway.api_url())),
    )
    .await
    .expect("the API was held up while nobody read the logs")
    .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // Reading again, every line comes through, and there was more than a pipe holds.
    gateway.resume_reading_logs();
    let last = report.uuid.to_string();
    gateway
        .wait_log_all(&["call ended", &last], Duration::from_secs(10))
        .expect("the queued log lines arrive once the logs are read again");
    let logged_after: usize = gateway.logs().iter().map(|l| l.len() + 1).sum();
    assert!(
        logged_after - logged_before > 64 * 1024,
        "only {} bytes were logged while nobody read them",
        logged_after - logged_before
    );
}
