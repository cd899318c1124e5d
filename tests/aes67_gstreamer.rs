//! End to end: a GStreamer AES67 sender into a receive flow (issue 4; aes67.md §2-§3).
//!
//! GStreamer's `rtpL24pay` sends two channels (700 Hz at -6 dBFS, 1300 Hz at -12 dBFS)
//! with 1 ms packets to a multicast group out of `lo`. An `aes67rx` node subscribed from
//! the SDP describing that stream (no `a=mediaclk`: GStreamer's timestamps are not PTP
//! time, so the flow aligns on the first packet) feeds two callers' ears, channel 1 to
//! one, channel 2 to the other; each must hear its channel's tone at its level and not
//! the other one.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod aes67_util;
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use aes67_util::{Api, assert_tone, unique_group, unique_name, unique_port};
use common::{GatewayProcess, uuid};
use sip_glue::fake_asterisk::{CallEnd, CallReport, FakeCall, Source};

/// Kills the sender when the test ends, however it ends.
struct Sender(std::process::Child);

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn heard(report: &CallReport) -> (&[f32], u32) {
    let rate = report.received_rate.expect("the caller heard audio").hz();
    let start = rate as usize; // after the first second
    let end = report.received.len().saturating_sub(rate as usize / 4);
    assert!(end > start + rate as usize, "too little heard");
    (&report.received[start..end], rate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_hear_a_gstreamer_flow_through_a_receive_flow() {
    let (group, port) = (unique_group(), unique_port());
    let _sender = Sender(
        Command::new("gst-launch-1.0")
            .args(["-q", "interleave", "name=i", "!", "audioconvert", "!"])
            .arg("audio/x-raw,format=S24BE,rate=48000,channels=2")
            .args([
                "!",
                "rtpL24pay",
                "pt=97",
                "min-ptime=1000000",
                "max-ptime=1000000",
            ])
            .args([
                "!",
                "udpsink",
                &format!("host={group}"),
                &format!("port={port}"),
            ])
            .args(["multicast-iface=lo", "bind-address=127.0.0.1", "ttl-mc=1"])
            .args(["auto-multicast=true", "sync=true"])
            .args([
                "audiotestsrc",
                "freq=700",
                "volume=0.5",
                "is-live=true",
                "!",
            ])
            .args(["audio/x-raw,channels=1,rate=48000", "!", "i.sink_0"])
            .args([
                "audiotestsrc",
                "freq=1300",
                "volume=0.25",
                "is-live=true",
                "!",
            ])
            .args(["audio/x-raw,channels=1,rate=48000", "!", "i.sink_1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("GStreamer is installed (tests/run.sh installs it)"),
    );
    // What a receiver is told about that stream.
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=gstreamer\r\nc=IN IP4 {group}/1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 97\r\na=rtpmap:97 L24/48000/2\r\na=ptime:1\r\na=recvonly\r\n"
    );
    let rx = unique_name("from-gst");
    let (a, b) = (uuid(), uuid());
    // 10 ms of clock-bridge margin and 20 ms of receive latency, as the phone-in example
    // sets (README): GStreamer's sender and this gateway's threads are stalled for a few
    // milliseconds now and then on a virtual machine, and at the Dante-like defaults
    // (2 ms, packet time + 2 ms) every such stall is a gap in what the callers hear.
    let config = format!(
        "[aes67]\nbridge_margin_ms = 10\n\n[[routes]]\nname = \"a\"\nmatch = {{ uuid = \"{a}\" }}\n\
         actions = [{{ action = \"patch\", ear_from = [\"aes67rx:{rx}.ch1\"] }}]\n\n\
         [[routes]]\nname = \"b\"\nmatch = {{ uuid = \"{b}\" }}\n\
         actions = [{{ action = \"patch\", ear_from = [\"aes67rx:{rx}.ch2\"] }}]\n"
    );
    let gateway = GatewayProcess::start(&config);
    let api = Api::new(&gateway);
    let node = api
        .create(
            &rx,
            serde_json::json!({"kind": "aes67rx", "sdp": sdp, "latency_ms": 20}),
        )
        .await;
    assert_eq!(node["outputs"], serde_json::json!(["ch1", "ch2"]));
    assert_eq!(node["status"]["source"]["alignment"], "first_packet");
    assert_eq!(node["status"]["source"]["format"], "L24/48000/2");
    assert_eq!(node["status"]["source"]["latency_ms"], 20.0);

    // GStreamer's first start on a fresh machine scans its plugins for seconds: the callers
    // connect once the flow is arriving.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = api.status(&format!("aes67rx:{rx}")).await;
        if status["received"].as_u64().unwrap_or(0) >= 500 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "nothing from GStreamer: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let call = |id, hz| {
        FakeCall::new(gateway.addr, id)
            .source(Source::tone(hz, -30.0))
            .duration(Duration::from_secs(4))
            .run()
    };
    let (report_a, report_b) = tokio::join!(call(a, 300.0), call(b, 3000.0));
    let (report_a, report_b) = (report_a.unwrap(), report_b.unwrap());
    assert_eq!(report_a.end, CallEnd::Completed);
    assert_eq!(report_b.end, CallEnd::Completed);

    let status = api.status(&format!("aes67rx:{rx}")).await;
    eprintln!("receive flow: {status:#}");
    for (report, (own, level), other) in [
        (&report_a, (700.0, -6.0), 1300.0),
        (&report_b, (1300.0, -12.0), 700.0),
    ] {
        let (audio, rate) = heard(report);
        assert_tone(&report.uuid.to_string(), audio, rate, own, level, &[other]);
    }

    assert_eq!(status["state"], "subscribed", "{status}");
    assert_eq!(status["receiving"], true, "{status}");
    assert!(status["received"].as_u64().unwrap() > 3000, "{status}");
    assert_eq!(status["malformed"], 0, "{status}");
    assert_eq!(status["wrong_payload_type"], 0, "{status}");
}
