//! End to end: HTTP clients that connect and then say nothing, or say it slowly, cannot
//! take the gateway down. A request's head must arrive within `api.header_timeout_ms`,
//! API connections are capped (and the cap leaves the file descriptors calls need), and
//! long-lived responses (the event stream) are not cut by the timeout.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{GatewayProcess, RECORD_ALL, check_tone_recording, metric_value, metrics_text, uuid};
use sip_glue::fake_asterisk::{CallEnd, FakeCall, Source};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A client that never finishes its request head: it sends a header line every `every`
/// until the server closes the connection. Returns how long after connecting that
/// happened, or `None` if the connection was still open at `limit`.
async fn slowloris(addr: SocketAddr, every: Duration, limit: Duration) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let deadline = started + limit;
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
        .await
        .is_err()
    {
        return Some(started.elapsed());
    }
    let mut ticker = tokio::time::interval_at(started + every, every);
    let mut buffer = [0u8; 1024];
    let mut line = 0u64;
    loop {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                // A 408 may come before the end; the end is what counts.
                Ok(n) if n > 0 => continue,
                _ => return Some(started.elapsed()),
            },
            _ = ticker.tick() => {
                line += 1;
                let header = format!("X-Slow-{line}: 1\r\n");
                if stream.write_all(header.as_bytes()).await.is_err() {
                    return Some(started.elapsed());
                }
            }
            () = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

/// Waits until the server closes `stream` (reading and discarding what it sends);
/// how long that took, or `None` if it stayed open for `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(started + limit, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(n)) if n > 0 => continue,
            Ok(_) => return Some(started.elapsed()),
        }
    }
}

/// `GET /healthz` on a fresh connection; its status.
async fn healthz(api: SocketAddr) -> Result<u16, String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    http.get(format!("http://{api}/healthz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_closed_at_the_header_timeout_while_healthz_answers() {
    const TIMEOUT: Duration = Duration::from_millis(1500);
    let gateway = GatewayProcess::start("[api]\nheader_timeout_ms = 1500\n");
    let api = gateway.api_addr;
    // Twenty clients dripping a header line every 250 ms: never idle, never done.
    let attackers: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(slowloris(
                api,
                Duration::from_millis(250),
                TIMEOUT + Duration::from_secs(10),
            ))
        })
        .collect();
    // Health checks from fresh connections all along.
    let mut checks = 0;
    while !attackers.iter().all(|a| a.is_finished()) {
        assert_eq!(healthz(api).await, Ok(200), "/healthz during the attack");
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checks >= 3, "only {checks} health checks during the attack");
    for attacker in attackers {
        let closed_after = attacker
            .await
            .unwrap()
            .expect("a slow request head was never closed");
        // Never before the timeout (less a margin for when the client's clock started),
        // and not long after it.
        assert!(
            closed_after >= TIMEOUT - Duration::from_millis(500),
            "closed after {closed_after:?}, before the {TIMEOUT:?} header timeout"
        );
        assert!(
            closed_after <= TIMEOUT + Duration::from_secs(6),
            "closed only after {closed_after:?}"
        );
    }
    assert_eq!(healthz(api).await, Ok(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_cap_leave_calls_their_file_descriptors() {
    // 256 descriptors; the calls' reserve is 128 + 2 x 4 calls + 8 unidentified = 144,
    // so the API gets 112 connections whatever api.max_connections says.
    const FD_LIMIT: u64 = 256;
    const API_CAP: usize = 112;
    const IDLE: usize = 400;
    let config = format!(
        "[audiosocket]\nmax_calls = 4\nmax_unidentified = 8\nmax_unidentified_per_source = 8\n\
         [api]\nheader_timeout_ms = 6000\nmax_connections = 1000\n{RECORD_ALL}"
    );
    let gateway = GatewayProcess::start_with_fd_limit(&config, FD_LIMIT);
    gateway
        .wait_log_all(
            &[
                "capped below api.max_connections",
                &format!("api_connections={API_CAP}"),
            ],
            Duration::from_secs(2),
        )
        .expect("the API's cap is derived from the descriptor limit");

    // More idle connections (no byte, no token) than the process has descriptors.
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(gateway.api_addr).await.unwrap());
    }

    // A call still connects and streams, and its audio is recorded without a gap.
    let id = uuid();
    let report = FakeCall::new(gateway.addr, id)
        .source(Source::tone(1000.0, -6.0))
        .duration(Duration::from_secs(3))
        .run()
        .await
        .unwrap();
    assert_eq!(report.end, CallEnd::Completed, "{report:?}");
    assert!(!report.hangup_received);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(
        report.frames.len() >= 140,
        "{} reply frames in 3 s",
        report.frames.len()
    );
    let longest_silence = report
        .frames
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .max()
        .unwrap();
    assert!(
        longest_silence < Duration::from_millis(500),
        "the replies stopped for {longest_silence:?}"
    );

    // Every idle connection is closed: those beyond the cap at once, the others at the
    // header timeout.
    let closings = futures_util::future::join_all(
        idle.iter_mut()
            .map(|stream| closed_within(stream, Duration::from_secs(25))),
    )
    .await;
    let open = closings.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{open} idle connections were never closed");

    // Then a fresh connection gets its health check.
    assert_eq!(healthz(gateway.api_addr).await, Ok(200));
    check_tone_recording(&gateway, id, 33.0);
    let metrics = metrics_text(&gateway).await;
    assert_eq!(
        metric_value(&metrics, "telepatch_api_connections_refused_total"),
        (IDLE - API_CAP) as f64
    );
    assert_eq!(
        metric_value(&metrics, "telepatch_api_accept_errors_total"),
        0.0
    );
    assert_eq!(
        metric_value(&metrics, "telepatch_audiosocket_accept_errors_total"),
        0.0
    );
    let logs = gateway.logs();
    let refusal_lines = logs
        .iter()
        .filter(|l| l.contains("HTTP API connection limit reached"))
        .count();
    assert_eq!(refusal_lines, 1, "logged once for the burst");
    assert!(
        !logs.iter().any(|l| l.contains("Too many open files")),
        "the gateway ran out of descriptors"
    );
}

/// Reads the event stream until an event of `kind` arrives (true) or `limit` passes.
async fn wait_event(response: &mut reqwest::Response, kind: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut text = String::new();
    let needle = format!("\"type\":\"{kind}\"");
    while !text.contains(&needle) {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_outlives_the_idle_timeout_and_ends_at_shutdown() {
    const TIMEOUT: Duration = Duration::from_millis(1000);
    let mut gateway = GatewayProcess::start("[api]\nheader_timeout_ms = 1000\n");
    let mut events = common::open_events(&gateway, "call_started").await;

    // A kept-alive connection that idles after its response is closed at the timeout...
    let mut kept_alive = TcpStream::connect(gateway.api_addr).await.unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    kept_alive.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let idle_for = closed_within(&mut kept_alive, TIMEOUT + Duration::from_secs(6))
        .await
        .expect("an idle kept-alive connection is closed");
    assert!(
        idle_for >= TIMEOUT - Duration::from_millis(500),
        "closed after {idle_for:?} idle"
    );

    // ...while the event stream, quiet for three timeouts, still delivers.
    tokio::time::sleep(3 * TIMEOUT).await;
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, uuid())
            .duration(Duration::from_millis(500))
            .run(),
    );
    assert!(
        wait_event(&mut events, "call_started", Duration::from_secs(5)).await,
        "the event stream was cut"
    );
    assert_eq!(call.await.unwrap().unwrap().end, CallEnd::Completed);

    // SIGTERM ends the stream and the process promptly.
    let asked = std::time::Instant::now();
    let stream_ended = tokio::spawn(async move {
        let started = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.chunk()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(_) => return Some(started.elapsed()),
                Err(_) => return None,
            }
        }
    });
    let exited_ok = common::off_the_runtime(|| gateway.terminate());
    assert!(exited_ok, "exit status");
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    let ended = stream_ended.await.unwrap();
    assert!(ended.is_some(), "the event stream outlived the gateway");
}
