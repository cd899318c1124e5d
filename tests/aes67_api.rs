//! End to end: AES67 flows as API resources (issue 4): validated on creation, described
//! by `GET /v1/flows/{id}/sdp`, counted in `GET /v1/nodes/{id}` and `/metrics`, stored
//! and restored at start-up, updated in place of their configuration. The packets of a
//! transmit flow carry the PTP media clock (aes67.md §5): in `system` clock mode each
//! leaves just after the media time of its last sample.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod aes67_util;
mod common;

use std::time::Duration;

use aes67_util::{Api, capture, unique_group, unique_name, unique_port};
use codecs::aes67::media_clock;
use codecs::rtp::RtpPacket;
use common::GatewayProcess;
use gateway::clock::MediaClock;

/// Media clock (samples) of this host's PTP time, as the gateway's `system` clock reads it.
fn media_now(clock: &gateway::clock::SystemClock) -> u64 {
    media_clock(clock.ptp_now_ns().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_flows_are_refused_with_the_field_at_fault() {
    let gateway = GatewayProcess::start("");
    let api = Api::new(&gateway);
    let cases = [
        (
            serde_json::json!({"kind": "aes67tx", "channels": 9}),
            "channels",
        ),
        (
            serde_json::json!({"kind": "aes67tx", "channels": 8, "packet_time_us": 4000}),
            "channels",
        ),
        (
            serde_json::json!({"kind": "aes67tx", "packet_time_us": 500}),
            "packet_time_us",
        ),
        (
            serde_json::json!({"kind": "aes67tx", "group": "10.1.2.3"}),
            "group",
        ),
        (
            serde_json::json!({"kind": "aes67tx", "group": "239.255.255.255"}),
            "group",
        ),
        (serde_json::json!({"kind": "aes67tx", "dscp": 64}), "dscp"),
        (
            serde_json::json!({"kind": "aes67tx", "payload_type": 11}),
            "payload_type",
        ),
        (
            serde_json::json!({"kind": "aes67tx", "interface": "0.0.0.0"}),
            "interface",
        ),
        (serde_json::json!({"kind": "aes67rx"}), "sdp"),
        (
            serde_json::json!({"kind": "aes67rx", "sdp": "v=0", "sap_session": "x"}),
            "sdp",
        ),
        (
            serde_json::json!({"kind": "aes67rx", "sdp": "hello"}),
            "sdp",
        ),
        (
            serde_json::json!({"kind": "aes67rx", "sdp": "v=0\r\nc=IN IP4 239.69.1.1/15\r\nm=audio 5004 RTP/AVP 96\r\na=rtpmap:96 L16/44100/2\r\n"}),
            "sdp",
        ),
        (
            serde_json::json!({"kind": "aes67rx", "sdp": "v=0\r\nc=IN IP4 239.69.1.1/15\r\nm=audio 5004 RTP/AVP 96\r\na=rtpmap:96 L24/48000/2\r\na=ptime:4\r\n", "latency_ms": 2.0}),
            "latency_ms",
        ),
        (
            serde_json::json!({"kind": "aes67rx", "sap_session": "nobody announced this"}),
            "channels",
        ),
        (
            serde_json::json!({"kind": "aes67rx", "sap_session": "x", "latency_ms": 41}),
            "latency_ms",
        ),
        (
            serde_json::json!({"kind": "aes67rx", "sap_session": "x", "latency_ms": 10, "max_latency_ms": 5}),
            "max_latency_ms",
        ),
        (
            serde_json::json!({"kind": "aes67rx", "sap_session": "x", "max_latency_ms": 41}),
            "max_latency_ms",
        ),
        (
            // Below the default latency of 4 ms packets (6 ms).
            serde_json::json!({"kind": "aes67rx", "sdp": "v=0\r\nc=IN IP4 239.69.1.1/15\r\nm=audio 5004 RTP/AVP 96\r\na=rtpmap:96 L24/48000/2\r\na=ptime:4\r\n", "max_latency_ms": 5}),
            "max_latency_ms",
        ),
    ];
    // Ranges are checked by the API before anything is built (400, like every node's
    // configuration); what needs the SDP or the network is refused by the gateway (422).
    let by_gateway = |config: &serde_json::Value| {
        config["sdp"].as_str().is_some_and(|s| s.len() > 3) && config["sap_session"].is_null()
            || config["sap_session"] == "nobody announced this"
    };
    for (config, field) in cases {
        let (status, body) = api
            .post(
                "/v1/nodes",
                serde_json::json!({"name": unique_name("bad"), "config": config}),
            )
            .await;
        let expected = if by_gateway(&config) { 422 } else { 400 };
        assert_eq!(status, expected, "{config}: {body}");
        assert_eq!(body["field"], field, "{config}: {body}");
    }
    let (status, _) = api.get("/v1/flows/nothing-here/sdp").await;
    assert_eq!(status, 404);
    let (status, body) = api.get("/v1/flows/player:hold/sdp").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.get("/v1/flows/aes67tx:bad%20name/sdp").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_measured_stored_restored_and_stamped_with_ptp_time() {
    let dir = tempfile::tempdir().unwrap();
    let database = common::database_url(dir.path());
    let start = || GatewayProcess::start_with_args("", &["--database-url", &database]);
    let mut first = start();
    let api = Api::new(&first);
    let (tx, rx) = (unique_name("stamped"), unique_name("loop"));
    let (group, port) = (unique_group(), unique_port());
    api.create(
        &tx,
        serde_json::json!({"kind": "aes67tx", "channels": 3, "group": group.to_string(),
            "port": port, "session_name": "Studio 1", "info": "ch1 caller 1, ch2 caller 2, ch3 host"}),
    )
    .await;
    let sdp = api.sdp(&tx).await;
    assert_eq!(sdp, api.sdp(&format!("aes67tx:{tx}")).await);
    let lines: Vec<&str> = sdp.split("\r\n").collect();
    assert_eq!(lines[2], "s=Studio 1");
    assert_eq!(lines[3], "i=ch1 caller 1, ch2 caller 2, ch3 host");
    assert!(lines[1].ends_with(" IN IP4 127.0.0.1"));
    assert!(sdp.contains(&format!(
        "a=source-filter: incl IN IP4 {group} 127.0.0.1\r\n"
    )));
    api.create(
        &rx,
        serde_json::json!({"kind": "aes67rx", "sdp": sdp, "latency_ms": 5}),
    )
    .await;

    // The wire: header per aes67.md §2, timestamps on the PTP media clock.
    let clock = gateway::clock::SystemClock::detect(gateway::clock::TAI_UTC_OFFSET, "");
    let packets = tokio::task::spawn_blocking(move || {
        let packets = capture(group, port, 500, Duration::from_secs(10));
        let now = media_now(&clock);
        (packets, now, std::time::Instant::now())
    })
    .await
    .unwrap();
    let (packets, media_at_end, end) = packets;
    let mut lags = Vec::new();
    for (at, bytes) in &packets {
        assert_eq!(bytes[0], 0x80, "V=2, no padding, extension or CSRC");
        assert_eq!(bytes[1], 98, "M=0, PT 98");
        let packet = RtpPacket::parse(bytes).unwrap();
        assert_eq!(packet.payload.len(), 48 * 3 * 3);
        // Media clock at arrival minus the packet's first sample.
        let arrival = media_at_end - (end.duration_since(*at).as_nanos() as u64 * 48 / 1_000_000);
        lags.push((arrival as u32).wrapping_sub(packet.header.timestamp) as i32);
    }
    lags.sort_unstable();
    let median = lags[lags.len() / 2];
    // Sent once its last sample (48 after the first) has happened: never early, and
    // typically well within a millisecond after.
    assert!(
        (47..=48 + 48).contains(&median),
        "median lag {median} samples; all: {:?}",
        &lags[..10]
    );
    assert!(
        lags[0] >= 46,
        "a packet left before its last sample's time: {lags:?}"
    );

    // Counters in the API and in /metrics.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = api.status(&format!("aes67tx:{tx}")).await;
    assert!(status["packets"].as_u64().unwrap() > 500, "{status}");
    assert_eq!(status["send_errors"], 0, "{status}");
    assert_eq!(status["announced"], true, "{status}");
    let rx_status = api.status(&format!("aes67rx:{rx}")).await;
    assert!(rx_status["received"].as_u64().unwrap() > 300, "{rx_status}");
    assert_eq!(rx_status["source"]["latency_ms"], 5.0);
    assert_eq!(rx_status["source"]["max_latency_ms"], 40.0);
    assert_eq!(rx_status["source"]["alignment"], "media_clock");
    // The latency now (5 ms unless a late packet raised it), and no sender clock to
    // follow on the media clock.
    let latency = rx_status["latency_ms"].as_f64().unwrap();
    assert!((5.0..=40.0).contains(&latency), "{rx_status}");
    assert_eq!(
        rx_status["sender_ppm"],
        serde_json::Value::Null,
        "{rx_status}"
    );
    assert_eq!(rx_status["no_sender_frames"], 0, "{rx_status}");
    let metrics = api.metrics().await;
    for family in [
        format!("telepatch_aes67_tx_packets_total{{node=\"aes67tx:{tx}\"}}"),
        format!("telepatch_aes67_rx_packets_total{{node=\"aes67rx:{rx}\"}}"),
        format!("telepatch_aes67_rx_latency_seconds{{node=\"aes67rx:{rx}\"}}"),
        format!("telepatch_aes67_rx_no_sender_frames_total{{node=\"aes67rx:{rx}\"}}"),
        format!("telepatch_aes67_bridge_underruns_total{{node=\"aes67tx:{tx}\"}}"),
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&family))
            .unwrap_or_else(|| panic!("no {family} in\n{metrics}"));
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        if family.contains("packets") {
            assert!(value > 100.0, "{line}");
        }
    }
    assert!(metrics.contains("# TYPE telepatch_sap_announcements_total counter"));

    // An update keeps the node and its stored configuration.
    let (status, body) = api
        .put(
            &format!("/v1/nodes/aes67rx:{rx}"),
            serde_json::json!({"config": {"kind": "aes67rx", "sdp": sdp, "latency_ms": 10}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"]["source"]["latency_ms"], 10.0);
    let version = |sdp: &str| -> (String, u64) {
        let line = codecs::sdp::origin_line(sdp).unwrap().to_owned();
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields[1].to_owned(), fields[2].parse().unwrap())
    };
    let (session, old_version) = version(&sdp);

    // Restart on the same database: both flows come back; the transmit flow keeps its
    // session id with a higher version and sends again.
    let token = api.token().to_owned();
    assert!(first.terminate());
    let second = start();
    let api = Api::with_token(&second, token);
    let restored = api.sdp(&tx).await;
    let (same_session, new_version) = version(&restored);
    assert_eq!(same_session, session);
    assert!(
        new_version > old_version,
        "{new_version} after {old_version}"
    );
    let (status, node) = api.get(&format!("/v1/nodes/aes67rx:{rx}")).await;
    assert_eq!(status, 200);
    assert_eq!(node["persistent"], true);
    assert_eq!(node["config"]["latency_ms"], 10.0);
    let packets =
        tokio::task::spawn_blocking(move || capture(group, port, 10, Duration::from_secs(10)))
            .await
            .unwrap();
    assert_eq!(packets.len(), 10);
}
