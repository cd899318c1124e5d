//! End to end: AES67 transmit flows as ffmpeg receives them (issue 4; aes67.md §2-§6).
//!
//! Fake callers with different tones are patched into the channels of transmit flows;
//! ffmpeg, given the flow's SDP from `GET /v1/flows/{id}/sdp`, decodes each channel and
//! must find the right caller's tone, at the right level, on the right channel, with
//! nobody else's tone there. Every AES67 packet time and both encodings are covered; the
//! packets themselves are checked against the sheet's layout (sizes, sequence, timestamp
//! steps).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod aes67_util;
mod common;

use std::time::Duration;

use aes67_util::{
    Api, TalkingCallers, assert_tone, capture, ffmpeg_from_sdp, finish, unique_group, unique_name,
    unique_port,
};
use codecs::rtp::RtpPacket;
use common::{GatewayProcess, read_wav, uuid};
use sip_glue::fake_asterisk::Source;
use uuid::Uuid;

/// One test at a time: each runs a gateway, up to eight ffmpeg receivers and its callers,
/// and two such sets at once overload a 2-core machine into dropping packets.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The gateway's config: static routes sending caller `k`'s voice to channel `k + 1` of
/// every flow in `flows`, and a 10 ms clock-bridge margin (2 ms by default): a virtual
/// machine's scheduler stalls the engine thread for several milliseconds now and then,
/// and each stall longer than the margin is a gap on the wire.
fn routes(callers: &[Uuid], flows: &[String]) -> String {
    let mut config = String::from("[aes67]\nbridge_margin_ms = 10\n\n");
    for (k, id) in callers.iter().enumerate() {
        let sinks: Vec<String> = flows
            .iter()
            .map(|f| format!("\"aes67tx:{f}.ch{}\"", k + 1))
            .collect();
        config.push_str(&format!(
            "[[routes]]\nname = \"caller-{k}\"\nmatch = {{ uuid = \"{id}\" }}\n\
             actions = [{{ action = \"patch\", voice_to = [{}] }}]\n\n",
            sinks.join(", ")
        ));
    }
    config
}

/// Caller `k` saying `tones[k]` at `levels[k]` dBFS, until the test hangs up.
async fn talk(
    api: &Api,
    gateway: &GatewayProcess,
    callers: &[Uuid],
    tones: &[f64],
    levels: &[f64],
) -> TalkingCallers {
    let callers = callers
        .iter()
        .zip(tones.iter().zip(levels))
        .map(|(&id, (&hz, &dbfs))| (id, Source::tone(hz, dbfs), dbfs))
        .collect();
    TalkingCallers::start(api, gateway, callers).await
}

/// Checks that channel `k` of `wav` carries `tones[k]` at `levels[k]` dBFS and none of
/// the other tones, leaving out the first 500 ms (ffmpeg settling) and the last 200 ms.
fn check_channels(what: &str, wav: &std::path::Path, tones: &[f64], levels: &[f64]) {
    let (channels, rate) = read_wav(wav);
    assert_eq!(rate, 48_000, "{what}");
    assert_eq!(channels.len(), tones.len(), "{what}: channel count");
    for (k, channel) in channels.iter().enumerate() {
        let (start, end) = (
            rate as usize / 2,
            channel.len().saturating_sub(rate as usize / 5),
        );
        assert!(
            end > start + 2 * rate as usize,
            "{what}: only {} samples decoded",
            channel.len()
        );
        let others: Vec<f64> = tones
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != k)
            .map(|(_, &t)| t)
            .collect();
        assert_tone(
            &format!("{what} ch{}", k + 1),
            &channel[start..end],
            rate,
            tones[k],
            levels[k],
            &others,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_hears_four_callers_each_on_its_own_channel() {
    let flow = unique_name("phone-in");
    let callers: Vec<Uuid> = (0..4).map(|_| uuid()).collect();
    let tones = [425.0, 650.0, 900.0, 1250.0];
    let levels = [-6.0, -10.0, -14.0, -18.0];
    let _alone = ONE_AT_A_TIME.lock().await;
    let gateway = GatewayProcess::start(&routes(&callers, std::slice::from_ref(&flow)));
    let api = Api::new(&gateway);
    let (group, port) = (unique_group(), unique_port());
    api.create(
        &flow,
        serde_json::json!({"kind": "aes67tx", "channels": 4, "group": group.to_string(), "port": port}),
    )
    .await;
    let sdp = api.sdp(&flow).await;
    assert!(sdp.contains("a=rtpmap:98 L24/48000/4\r\n"), "{sdp}");
    assert!(sdp.contains(&format!("c=IN IP4 {group}/15\r\n")), "{sdp}");
    assert!(
        sdp.contains("a=ptime:1\r\na=mediaclk:direct=0\r\n"),
        "{sdp}"
    );

    let talking = talk(&api, &gateway, &callers, &tones, &levels).await;
    let out = aes67_util::wav(gateway.dir.path(), "four-callers");
    let ffmpeg = ffmpeg_from_sdp(gateway.dir.path(), &sdp, 3.5, &out);
    tokio::task::spawn_blocking(move || finish(ffmpeg, "ffmpeg", Duration::from_secs(30)))
        .await
        .unwrap();
    talking.hang_up(&api).await;
    // Send timing is a benchmark (docs/BENCHMARKS.md), not asserted here; errors are.
    // Printed for the diagnosis of a failure (late packets, bridge underruns).
    let status = api.status(&format!("aes67tx:{flow}")).await;
    eprintln!("flow status: {status:#}");
    check_channels("L24 1 ms, 4 callers", &out, &tones, &levels);
    assert_eq!(status["send_errors"], 0, "{status}");
    assert!(status["packets"].as_u64().unwrap() > 3000, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_packet_time_and_both_encodings_decode_in_ffmpeg() {
    // (encoding, packet time in µs, frames per packet, bytes per sample)
    let formats = [
        ("L24", 125, 6, 3),
        ("L24", 250, 12, 3),
        ("L24", 333, 16, 3),
        ("L24", 1000, 48, 3),
        ("L24", 4000, 192, 3),
        ("L16", 125, 6, 2),
        ("L16", 1000, 48, 2),
        ("L16", 4000, 192, 2),
    ];
    let flows: Vec<String> = formats
        .iter()
        .map(|(encoding, us, _, _)| unique_name(&format!("{}-{us}", encoding.to_lowercase())))
        .collect();
    let callers = [uuid(), uuid()];
    let tones = [500.0, 1500.0];
    let levels = [-6.0, -12.0];
    let _alone = ONE_AT_A_TIME.lock().await;
    let gateway = GatewayProcess::start(&routes(&callers, &flows));
    let api = Api::new(&gateway);
    let mut endpoints = Vec::new();
    for (flow, (encoding, us, _, _)) in flows.iter().zip(formats) {
        let (group, port) = (unique_group(), unique_port());
        api.create(
            flow,
            serde_json::json!({"kind": "aes67tx", "channels": 2, "encoding": encoding,
                "packet_time_us": us, "group": group.to_string(), "port": port}),
        )
        .await;
        endpoints.push((group, port));
    }

    // The packets on the wire: sizes, sequence and timestamp steps per packet time.
    for ((flow, (encoding, us, frames, bytes)), (group, port)) in
        flows.iter().zip(formats).zip(&endpoints)
    {
        let (group, port) = (*group, *port);
        let node = format!("aes67tx:{flow}");
        let resyncs_before = api.status(&node).await["resyncs"].as_u64().unwrap();
        let packets =
            tokio::task::spawn_blocking(move || capture(group, port, 40, Duration::from_secs(10)))
                .await
                .unwrap();
        let resyncs = api.status(&node).await["resyncs"].as_u64().unwrap() - resyncs_before;
        let headers: Vec<_> = packets
            .iter()
            .map(|(_, p)| RtpPacket::parse(p).unwrap())
            .collect();
        // Timestamps advance by the frames per packet; the one exception is a counted
        // resync (the host stalled the media thread beyond 20 ms: the flow skips to
        // the clock, forward and on a packet boundary, rather than send stale audio).
        let mut jumps = 0;
        for (pair, raw) in headers.windows(2).zip(&packets[1..]) {
            let (a, b) = (&pair[0].header, &pair[1].header);
            assert_eq!(raw.1.len(), 12 + frames * 2 * bytes, "{flow}");
            assert_eq!(b.sequence, a.sequence.wrapping_add(1), "{flow}");
            let step = b.timestamp.wrapping_sub(a.timestamp);
            if step != frames as u32 {
                jumps += 1;
                assert!(
                    step % frames as u32 == 0 && step < 48_000,
                    "{flow}: timestamp step {step}"
                );
            }
            assert_eq!((b.payload_type.get(), b.ssrc), (98, a.ssrc), "{flow}");
        }
        assert!(
            jumps <= resyncs,
            "{flow}: {jumps} timestamp jumps, {resyncs} resyncs counted"
        );
        let sdp = api.sdp(flow).await;
        assert!(
            sdp.contains(&format!("a=rtpmap:98 {encoding}/48000/2\r\n")),
            "{sdp}"
        );
        assert!(sdp.contains(&format!("a=framecount:{frames}\r\n")), "{sdp}");
        let ptime = match us {
            125 => "0.125",
            250 => "0.25",
            333 => "0.333",
            1000 => "1",
            _ => "4",
        };
        assert!(sdp.contains(&format!("a=ptime:{ptime}\r\n")), "{sdp}");
    }

    let talking = talk(&api, &gateway, &callers, &tones, &levels).await;
    let mut decoders = Vec::new();
    let mut outputs = Vec::new();
    for flow in &flows {
        let sdp = api.sdp(flow).await;
        let out = aes67_util::wav(gateway.dir.path(), flow);
        decoders.push((
            flow.clone(),
            ffmpeg_from_sdp(gateway.dir.path(), &sdp, 3.5, &out),
        ));
        outputs.push((flow.clone(), out));
    }
    tokio::task::spawn_blocking(move || {
        for (flow, child) in decoders {
            finish(child, &format!("ffmpeg {flow}"), Duration::from_secs(30));
        }
    })
    .await
    .unwrap();
    talking.hang_up(&api).await;
    for (flow, out) in &outputs {
        let status = api.status(&format!("aes67tx:{flow}")).await;
        eprintln!("{flow} status: {status:#}");
        check_channels(flow, out, &tones, &levels);
    }
}
