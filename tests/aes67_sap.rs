//! End to end: SAP (RFC 2974, aes67.md §7) around AES67 flows (issue 4).
//!
//! - ffmpeg's SAP demuxer, in a loopback-only network namespace, finds our announcement
//!   and plays the flow it describes (a caller's tone on channel 1);
//! - our listener (`GET /v1/discovery/sap`) lists a scripted announcement with the
//!   sheet's layout and our own, and drops each on its deletion;
//! - a receive flow subscribed by session name follows the session: it plays our own
//!   transmit flow on the PTP media clock, goes silent when the session is deleted and
//!   comes back when it is announced again;
//! - on the wire: announcements repeat at the configured interval with one hash; an update
//!   sends the old version's deletion and a new SDP with a bumped `o=` version and a new
//!   hash; removal and shutdown send three deletions.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod aes67_util;
mod common;

use std::time::{Duration, Instant};

use aes67_util::{
    Api, SapRecorder, TalkingCallers, assert_tone, finish, in_loopback_namespace, sap_socket,
    send_sap, unique_group, unique_name, unique_port,
};
use codecs::sap::{MessageType, SapPacket};
use common::{GatewayProcess, read_wav, tone_level_dbfs, uuid};
use sip_glue::fake_asterisk::{CallEnd, FakeCall, Source};

/// Polls the SAP listing until `pick` finds what it wants (or panics after `limit`).
async fn wait_listing(
    api: &Api,
    limit: Duration,
    what: &str,
    pick: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let until = Instant::now() + limit;
    loop {
        let (status, body) = api.get("/v1/discovery/sap").await;
        assert_eq!(status, 200, "{body}");
        let sessions = body.as_array().unwrap().clone();
        if pick(&sessions) {
            return sessions;
        }
        assert!(Instant::now() < until, "{what}: listing is {body:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn named<'a>(sessions: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    sessions.iter().find(|s| s["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_finds_our_flow_by_sap_and_plays_it() {
    if !in_loopback_namespace("ffmpeg_finds_our_flow_by_sap_and_plays_it") {
        return;
    }
    // Alone in this namespace: the flow keeps its default group (239.69.x.y) and port.
    let caller = uuid();
    let config = format!(
        "[aes67]\nsap_interval_s = 1\nbridge_margin_ms = 10\n\n[[routes]]\nname = \"on-air\"\n\
         match = {{ uuid = \"{caller}\" }}\n\
         actions = [{{ action = \"patch\", voice_to = [\"aes67tx:studio.ch1\"] }}]\n"
    );
    let gateway = GatewayProcess::start(&config);
    let api = Api::new(&gateway);
    let node = api
        .create(
            "studio",
            serde_json::json!({"kind": "aes67tx", "channels": 2}),
        )
        .await;
    assert_eq!(node["status"]["port"], 5004);
    let talking = TalkingCallers::start(
        &api,
        &gateway,
        vec![(caller, Source::tone(800.0, -6.0), -6.0)],
    )
    .await;
    // ffmpeg finds the flow by its next announcement (every second here) and records it.
    let out = aes67_util::wav(gateway.dir.path(), "sap");
    let ffmpeg = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-y", "-loglevel", "warning"])
        .args(["-f", "sap", "-i", "sap://239.255.255.255:9875"])
        .args(["-t", "3", "-c:a", "pcm_f32le"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ffmpeg is installed");
    tokio::task::spawn_blocking(move || finish(ffmpeg, "ffmpeg -f sap", Duration::from_secs(30)))
        .await
        .unwrap();
    talking.hang_up(&api).await;
    let (channels, rate) = read_wav(&out);
    assert_eq!((channels.len(), rate), (2, 48_000), "the SDP's format");
    let (start, end) = (rate as usize / 2, channels[0].len() - rate as usize / 5);
    assert_tone(
        "channel 1",
        &channels[0][start..end],
        rate,
        800.0,
        -6.0,
        &[],
    );
    let silent = &channels[1][start..end];
    assert!(
        tone_level_dbfs(silent, rate, 800.0) < -60.0,
        "channel 2 is silent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_listener_lists_announcements_and_drops_them_on_deletion() {
    let gateway = GatewayProcess::start("");
    let api = Api::new(&gateway);

    // A scripted announcer: aes67.md §12.1's layout (origin 192.168.1.10, hash 0x1234)
    // with a name and session id of this test's own.
    let name = unique_name("scripted");
    let session_id = uuid::Uuid::new_v4().as_u128() as u32;
    let sdp = format!(
        "v=0\r\no=- {session_id} 1 IN IP4 192.168.1.10\r\ns={name}\r\nc=IN IP4 239.69.1.10/32\r\n\
         t=0 0\r\nm=audio 5004 RTP/AVP 98\r\na=rtpmap:98 L24/48000/2\r\na=ptime:1\r\n\
         a=ts-refclk:ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0\r\na=mediaclk:direct=0\r\n\
         a=recvonly\r\n"
    );
    let origin = std::net::Ipv4Addr::new(192, 168, 1, 10);
    let announce = SapPacket::announce(0x1234, origin, sdp.as_bytes());
    let mut bytes = vec![0u8; announce.encoded_len()];
    let n = announce.write_to(&mut bytes).unwrap();
    assert_eq!(
        &bytes[..8],
        &[0x20, 0x00, 0x12, 0x34, 0xc0, 0xa8, 0x01, 0x0a]
    );
    let socket = sap_socket();
    send_sap(&socket, &bytes[..n]);
    let sessions = wait_listing(
        &api,
        Duration::from_secs(5),
        "scripted session listed",
        |s| named(s, &name).is_some(),
    )
    .await;
    let session = named(&sessions, &name).unwrap();
    assert_eq!(session["origin"], "192.168.1.10");
    assert_eq!(session["msg_id_hash"], 0x1234);
    assert_eq!(session["group"], "239.69.1.10");
    assert_eq!(session["port"], 5004);
    assert_eq!(session["channels"], 2);
    assert_eq!(session["format"], "L24/48000/2, 1 ms");
    assert_eq!(
        session["ts_refclk"],
        "ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0"
    );
    assert_eq!(session["unusable"], serde_json::Value::Null);
    assert_eq!(session["sdp_version"], format!("{session_id} 1"));
    assert_eq!(session["sdp"], sdp);
    assert!(session["age_s"].as_f64().unwrap() < 5.0);
    // Heard once: it expires an hour after that (RFC 2974 §4 minimum).
    let expires = session["expires_in_s"].as_f64().unwrap();
    assert!((3590.0..=3600.0).contains(&expires), "{expires}");

    // Its deletion: same hash and origin, the o= line only (§12.2's layout).
    let origin_line = format!("o=- {session_id} 1 IN IP4 192.168.1.10\r\n");
    let deletion = SapPacket::deletion(0x1234, origin, origin_line.as_bytes());
    let n = deletion.write_to(&mut bytes).unwrap();
    assert_eq!(bytes[0], 0x24);
    send_sap(&socket, &bytes[..n]);
    wait_listing(
        &api,
        Duration::from_secs(5),
        "scripted session deleted",
        |s| named(s, &name).is_none(),
    )
    .await;

    // Our own flow: listed with the SDP the API serves, gone once the node is removed.
    let flow = unique_name("listed");
    api.create(
        &flow,
        serde_json::json!({"kind": "aes67tx", "group": unique_group().to_string(), "port": unique_port()}),
    )
    .await;
    let our_sdp = api.sdp(&flow).await;
    let sessions = wait_listing(&api, Duration::from_secs(5), "own flow listed", |s| {
        named(s, &flow).is_some()
    })
    .await;
    let session = named(&sessions, &flow).unwrap();
    assert_eq!(session["origin"], "127.0.0.1");
    assert_eq!(session["sdp"], our_sdp);
    assert_eq!(session["format"], "L24/48000/2, 1 ms");
    assert_eq!(api.delete(&format!("/v1/nodes/aes67tx:{flow}")).await, 204);
    wait_listing(&api, Duration::from_secs(5), "own flow deleted", |s| {
        named(s, &flow).is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_flow_follows_a_sap_session_by_name() {
    let tx = unique_name("console");
    let rx = unique_name("returns");
    let (talker, listener) = (uuid(), uuid());
    // The phone-in example's margins (README): at the Dante-like defaults every few-ms
    // stall of this virtual machine's threads is a gap in what the listener hears.
    let config = format!(
        "[aes67]\nbridge_margin_ms = 10\n\n[[routes]]\nname = \"talker\"\nmatch = {{ uuid = \"{talker}\" }}\n\
         actions = [{{ action = \"patch\", voice_to = [\"aes67tx:{tx}.ch2\"] }}]\n\n\
         [[routes]]\nname = \"listener\"\nmatch = {{ uuid = \"{listener}\" }}\n\
         actions = [{{ action = \"patch\", ear_from = [\"aes67rx:{rx}.ch2\"] }}]\n"
    );
    let gateway = GatewayProcess::start(&config);
    let api = Api::new(&gateway);
    let tx_config = serde_json::json!({"kind": "aes67tx", "channels": 2,
        "group": unique_group().to_string(), "port": unique_port()});
    api.create(&tx, tx_config.clone()).await;
    wait_listing(&api, Duration::from_secs(5), "transmit flow heard", |s| {
        named(s, &tx).is_some()
    })
    .await;

    // Subscribed by name: the channel count comes from the session.
    let node = api
        .create(
            &rx,
            serde_json::json!({"kind": "aes67rx", "sap_session": tx, "latency_ms": 20}),
        )
        .await;
    assert_eq!(node["outputs"], serde_json::json!(["ch1", "ch2"]));
    let source = &node["status"]["source"];
    assert_eq!(node["status"]["state"], "subscribed", "{node}");
    // Our own flow is PTP-timed (a=mediaclk): played on the media clock.
    assert_eq!(source["alignment"], "media_clock");
    assert_eq!(source["mediaclk_offset"], 0);
    assert_eq!(source["latency_ms"], 20.0);

    let talk = FakeCall::new(gateway.addr, talker)
        .source(Source::tone(950.0, -10.0))
        .duration(Duration::from_secs(4))
        .record_audio(false)
        .run();
    let listen = FakeCall::new(gateway.addr, listener)
        .duration(Duration::from_secs(4))
        .run();
    let (talk, listen) = tokio::join!(talk, listen);
    assert_eq!(talk.unwrap().end, CallEnd::Completed);
    let report = listen.unwrap();
    let rate = report.received_rate.unwrap().hz();
    let heard = &report.received[rate as usize..report.received.len() - rate as usize / 4];
    assert_tone("the listener", heard, rate, 950.0, -10.0, &[]);

    let status = api.status(&format!("aes67rx:{rx}")).await;
    assert!(status["received"].as_u64().unwrap() > 3000, "{status}");
    assert_eq!(status["lost"], 0, "{status}");
    assert_eq!(
        status["early"], 0,
        "timestamps on our media clock: {status}"
    );
    assert_eq!(status["malformed"], 0, "{status}");

    // The session is deleted: the flow stops receiving.
    assert_eq!(api.delete(&format!("/v1/nodes/aes67tx:{tx}")).await, 204);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let status = api.status(&format!("aes67rx:{rx}")).await;
        if status["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("withdrawn"))
        {
            assert_eq!(status["source"], serde_json::Value::Null);
            break;
        }
        assert!(Instant::now() < until, "not withdrawn: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Announced again: followed again.
    api.create(&tx, tx_config).await;
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let status = api.status(&format!("aes67rx:{rx}")).await;
        if status["state"] == "subscribed" && status["receiving"] == true {
            break;
        }
        assert!(Instant::now() < until, "not re-subscribed: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A SAP packet from the recorder, decoded.
struct Heard {
    at: Instant,
    kind: MessageType,
    hash: u16,
    payload: String,
}

fn heard(recorder: &SapRecorder, session_id: &str) -> Vec<Heard> {
    let needle = format!("o=- {session_id} ");
    recorder
        .packets()
        .into_iter()
        .filter_map(|(at, bytes)| {
            let packet = SapPacket::decode(&bytes).ok()?;
            let payload = String::from_utf8(packet.payload.to_vec()).ok()?;
            payload.contains(&needle).then_some(Heard {
                at,
                kind: packet.message_type,
                hash: packet.msg_id_hash,
                payload,
            })
        })
        .collect()
}

/// The `o=` version of an SDP or deletion payload.
fn version(payload: &str) -> u64 {
    let line = codecs::sdp::origin_line(payload).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn session_id(sdp: &str) -> String {
    let line = codecs::sdp::origin_line(sdp).unwrap();
    line.split_whitespace().nth(1).unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_repeat_and_every_change_and_removal_is_announced() {
    let recorder = SapRecorder::start();
    let mut gateway = GatewayProcess::start("[aes67]\nsap_interval_s = 1\n");
    let api = Api::new(&gateway);
    let flow = unique_name("periodic");
    let node = format!("aes67tx:{flow}");
    let config = |channels: u8| {
        serde_json::json!({"kind": "aes67tx", "channels": channels,
            "group": unique_group().to_string(), "port": unique_port()})
    };
    let created = Instant::now();
    api.create(&flow, config(2)).await;
    let sdp = api.sdp(&flow).await;
    let id = session_id(&sdp);
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // At creation, then every second, the same SDP under the same hash.
    let first = heard(&recorder, &id);
    assert!(first.len() >= 3, "{} announcements in 2.5 s", first.len());
    assert!(first[0].at.duration_since(created) < Duration::from_millis(500));
    for h in &first {
        assert_eq!(h.kind, MessageType::Announce);
        assert_eq!((h.hash, h.payload.as_str()), (first[0].hash, sdp.as_str()));
    }
    for pair in first.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap > Duration::from_millis(800) && gap < Duration::from_millis(1500),
            "{gap:?} between announcements"
        );
    }
    let (old_hash, old_version) = (first[0].hash, version(&sdp));

    // An update: the old version's deletion, then the new SDP (new hash, higher version).
    let (status, body) = api
        .put(
            &format!("/v1/nodes/{node}"),
            serde_json::json!({"config": config(4)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new_sdp = api.sdp(&flow).await;
    assert_eq!(session_id(&new_sdp), id, "the session keeps its identity");
    assert!(version(&new_sdp) > old_version);
    assert!(new_sdp.contains("L24/48000/4"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // (A periodic announcement of the old version may have slipped in before the update.)
    let after: Vec<Heard> = heard(&recorder, &id)
        .into_iter()
        .skip(first.len())
        .skip_while(|h| h.kind == MessageType::Announce && h.hash == old_hash && h.payload == sdp)
        .collect();
    let deletions: Vec<&Heard> = after
        .iter()
        .take_while(|h| h.kind == MessageType::Delete)
        .collect();
    assert_eq!(deletions.len(), 3, "old version's deletion, repeated");
    for d in &deletions {
        assert_eq!(d.hash, old_hash);
        assert_eq!(
            d.payload,
            format!("o=- {id} {old_version} IN IP4 127.0.0.1\r\n")
        );
    }
    let announced = &after[3];
    assert_eq!(announced.kind, MessageType::Announce);
    assert_ne!(announced.hash, old_hash, "a new hash for the new SDP");
    assert_eq!(announced.payload, new_sdp);
    let new_hash = announced.hash;

    // Removal: three deletions of the current version.
    let before = heard(&recorder, &id).len();
    assert_eq!(api.delete(&format!("/v1/nodes/{node}")).await, 204);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let removal: Vec<Heard> = heard(&recorder, &id)
        .into_iter()
        .skip(before)
        .skip_while(|h| h.kind == MessageType::Announce && h.payload == new_sdp)
        .collect();
    assert_eq!(removal.len(), 3, "three deletions and nothing after them");
    for d in &removal {
        assert_eq!((d.kind, d.hash), (MessageType::Delete, new_hash));
        assert_eq!(
            d.payload,
            format!("o=- {id} {} IN IP4 127.0.0.1\r\n", version(&new_sdp))
        );
    }

    // Shutdown: a live flow's deletions go out before the gateway exits.
    let last = unique_name("shutdown");
    api.create(&last, config(2)).await;
    let last_id = session_id(&api.sdp(&last).await);
    assert!(gateway.terminate(), "clean exit");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let goodbye: Vec<Heard> = heard(&recorder, &last_id)
        .into_iter()
        .filter(|h| h.kind == MessageType::Delete)
        .collect();
    assert_eq!(goodbye.len(), 3, "three deletions at shutdown");
}

/// A second gateway started on the same configuration and database while the first one
/// holds the API port: it must exit non-zero saying why, and leave no session of its own
/// in listeners' directories (announce nothing, or delete what it announced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_cannot_start_leaves_no_stray_announcement() {
    let recorder = SapRecorder::start();
    let gateway = GatewayProcess::start("[aes67]\nsap_interval_s = 300\n");
    let api = Api::new(&gateway);
    let flow = unique_name("stored");
    api.create(
        &flow,
        serde_json::json!({"kind": "aes67tx", "channels": 2,
        "group": unique_group().to_string(), "port": unique_port()}),
    )
    .await;
    let sdp = api.sdp(&flow).await;
    let id = session_id(&sdp);

    let config = gateway.dir.path().join("telepatch.toml");
    let taken = gateway.api_addr.to_string();
    let database = gateway.database.clone();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_telepatch"))
            .arg("--config")
            .arg(&config)
            .args(["--listen", "127.0.0.1:0", "--api-listen", &taken])
            .args(["--database-url", &database])
            .arg("serve")
            .env_remove("TELEPATCH_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the second gateway did not exit");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "exit status {}", output.status);
    assert!(
        stderr.contains(&format!(
            "cannot listen for the HTTP API on {}",
            gateway.api_addr
        )),
        "{stderr}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Whatever the second gateway announced (another version of the stored flow) must
    // have been deleted again.
    let ours = version(&sdp);
    let packets = heard(&recorder, &id);
    let strays: Vec<&Heard> = packets
        .iter()
        .filter(|h| h.kind == MessageType::Announce && version(&h.payload) != ours)
        .collect();
    for stray in &strays {
        assert!(
            packets.iter().any(|h| h.kind == MessageType::Delete
                && h.hash == stray.hash
                && h.at >= stray.at
                && version(&h.payload) == version(&stray.payload)),
            "the second gateway announced {:?} (hash {:#06x}) and never deleted it:\n{stderr}",
            stray.payload,
            stray.hash
        );
    }
    // The running gateway's session is untouched.
    assert!(
        packets
            .iter()
            .all(|h| h.kind == MessageType::Announce || version(&h.payload) != ours),
        "the running gateway's session was deleted"
    );
}
