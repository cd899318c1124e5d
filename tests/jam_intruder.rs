//! End to end: a stranger sending packets under an established jammer's client_id, from
//! another port, at a jammer's rate (rtjam.md §3, §7: RTJam has no authentication).
//!
//! * In a hosted room the client_id belongs to the member that holds it: the stranger's
//!   datagrams are dropped and counted (`intruder`), never forwarded, and the caller on
//!   a seat keeps hearing the jammer in every window.
//! * In a joined room the room server (the scripted rtjam forwarder of tests/rtjam,
//!   which keys members by address and relays both) sends both streams to the seat from
//!   its own address; the seat keeps the stream that was established and drops the
//!   other, counted and logged the same way.
//!
//! The jammers and the forwarder are written from the fact sheet (tests/rtjam), not
//! with telepatch's codec.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod jam_client;
mod rtjam;

use std::time::Duration;

use common::{GatewayProcess, uuid};
use jam_client::{Api, assert_tone_in_every_window, member, tone_level_near};
use rtjam::{Forwarder, Jammer, Voice};
use serde_json::json;
use sip_glue::fake_asterisk::{CallEnd, FakeCall, Source};

const JAMMER: u32 = 1001;
const TONE: Voice = Voice {
    ch1: (440.0, 0.25),
    ch2: (0.0, 0.0),
};
/// What the stranger sends: a different tone, loud, so hearing it would show.
const STRANGER: Voice = Voice {
    ch1: (880.0, 0.5),
    ch2: (0.0, 0.0),
};
/// The jammer's tone as the caller hears it: 0.25 peak.
const TONE_DBFS: f64 = -12.04;

fn route(caller: uuid::Uuid, room: &str) -> String {
    format!(
        r#"
[[routes]]
name = "to-the-room"
match = {{ uuid = "{caller}" }}
actions = [{{ action = "jam", room = "{room}" }}]
"#
    )
}

/// Checks what the caller heard from 0.5 s to 0.5 s before the end: the jammer's tone
/// at its level in every 100 ms window (the stranger's packets in the jammer's buffer
/// mute it), and never the stranger.
fn assert_caller_heard_only_the_jammer(report: &sip_glue::fake_asterisk::CallReport) {
    assert_eq!(report.end, CallEnd::Completed);
    let rate = report.received_rate.unwrap().hz();
    let half = rate as usize / 2;
    let heard = &report.received[half..report.received.len() - half];
    let level = tone_level_near(heard, rate, 440.0);
    assert!(
        (level - TONE_DBFS).abs() < 1.0,
        "the jammer heard at {level:.1} dBFS"
    );
    assert_tone_in_every_window(heard, rate, 440.0, TONE_DBFS);
    let stranger = tone_level_near(heard, rate, 880.0);
    assert!(
        stranger < -40.0,
        "the stranger is heard at {stranger:.1} dBFS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_under_a_members_client_id_does_not_silence_it_in_a_hosted_room() {
    let caller = uuid();
    let gateway = GatewayProcess::start(&route(caller, "band"));
    let api = Api::new(gateway.api_url(), gateway.token("jam-test", "admin"));
    api.create_jam(
        "band",
        json!({"mode": "host", "listen": "127.0.0.1:0", "seats": 1, "client_id": 3001}),
        false,
    )
    .await;
    let room = api.room_addr("band").await;
    let jammer = Jammer::start(room, JAMMER, TONE);
    let listener = Jammer::start(
        room,
        1002,
        Voice {
            ch1: (0.0, 0.0),
            ch2: (0.0, 0.0),
        },
    );
    api.wait_status("band", Duration::from_secs(5), |s| {
        member(s, JAMMER).is_some() && member(s, 1002).is_some()
    })
    .await
    .expect("both jammers in the room");
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, caller)
            .source(Source::silence())
            .duration(Duration::from_secs(5))
            .run(),
    );
    // 1.5 s into the call the stranger starts, for 2.5 s.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let stranger = Jammer::start(room, JAMMER, STRANGER);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let status = api.jam_status("band").await;
    let stranger = stranger.finish();
    let report = call.await.unwrap().unwrap();
    let jammer = jammer.finish();
    let listener = listener.finish();

    assert_caller_heard_only_the_jammer(&report);

    // The client_id stays with the member that held it; the stranger is no member.
    let members: Vec<&serde_json::Value> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["client_id"] == JAMMER)
        .collect();
    assert_eq!(members.len(), 1, "{status}");
    assert_eq!(members[0]["address"], jammer.addr.to_string());
    let intruder = status["counters"]["intruder"].as_u64().unwrap();
    let sent = stranger.sent.len() as u64;
    assert!(sent > 375 * 2, "{sent}");
    assert!(
        intruder + 20 >= sent && intruder <= sent,
        "{intruder} intruder datagrams counted of {sent} sent"
    );
    let metrics = common::metrics_text(&gateway).await;
    let line = "telepatch_jam_datagrams_dropped_total{node=\"jam:band\",reason=\"intruder\"} ";
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line:?} in:\n{metrics}"));
    assert!(counted >= intruder, "{counted}");
    // Logged, at most once per 10 s.
    let logged = gateway.logs();
    let lines: Vec<&String> = logged
        .iter()
        .filter(|l| l.contains("jam intruder") && l.contains("client_id=1001"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(&stranger.addr.to_string()),
        "{}",
        lines[0]
    );

    // The other jammer got every packet the jammer sent, and none of the stranger's.
    let mut from_jammer: Vec<u32> = listener
        .audio_from(JAMMER)
        .iter()
        .map(|r| r.header().sequence)
        .collect();
    let received = from_jammer.len();
    from_jammer.dedup();
    assert_eq!(from_jammer.len(), received, "duplicates");
    assert!(
        received as f64 >= jammer.sent.len() as f64 * 0.99,
        "{received} of {}",
        jammer.sent.len()
    );
    for r in listener.audio_from(JAMMER) {
        let original = &jammer.sent[r.header().sequence as usize];
        assert_eq!(&r.bytes[12..], &original[12..], "not the jammer's packet");
    }
    // The stranger got nothing back: no echo, no audio.
    assert!(stranger.received.is_empty(), "{}", stranger.received.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_relayed_by_the_room_server_does_not_silence_the_jammer_in_a_joined_room() {
    let room = Forwarder::start();
    let jammer = Jammer::start(room.addr, JAMMER, TONE);
    let caller = uuid();
    let gateway = GatewayProcess::start(&route(caller, "remote"));
    let api = Api::new(gateway.api_url(), gateway.token("jam-test", "admin"));
    api.create_jam(
        "remote",
        json!({"mode": "join", "host": "127.0.0.1", "port": room.addr.port(), "client_id": 7001}),
        false,
    )
    .await;
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, caller)
            .source(Source::silence())
            .duration(Duration::from_secs(5))
            .run(),
    );
    api.wait_status("remote", Duration::from_secs(3), |s| {
        member(s, JAMMER).is_some_and(|m| m["buffer_ms"].is_number())
    })
    .await
    .expect("the seat hears the jammer");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let stranger = Jammer::start(room.addr, JAMMER, STRANGER);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let status = api.jam_status("remote").await;
    let stranger = stranger.finish();
    let report = call.await.unwrap().unwrap();
    let _jammer = jammer.finish();
    // The room server took the stranger as a member and relayed its packets to the
    // seat: telling the two apart is up to the seat.
    let relayed = room
        .member(stranger.addr)
        .expect("the stranger was a member of the room");
    assert!(relayed.received.len() > 375 * 2);
    let room_addr = room.addr;
    room.stop();
    eprintln!("counters: {}", status["counters"]);
    eprintln!("jammer: {}", member(&status, JAMMER).unwrap());

    assert_caller_heard_only_the_jammer(&report);

    let counters = &status["counters"];
    let intruder = counters["intruder"].as_u64().unwrap();
    let sent = stranger.sent.len() as u64;
    assert!(
        intruder + 20 >= sent && intruder <= sent,
        "{intruder} intruder datagrams counted of {sent} sent: {counters}"
    );
    let metrics = common::metrics_text(&gateway).await;
    assert!(
        metrics.contains(
            "telepatch_jam_datagrams_dropped_total{node=\"jam:remote\",reason=\"intruder\"}"
        ),
        "{metrics}"
    );
    let jammers: Vec<&serde_json::Value> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["client_id"] == JAMMER)
        .collect();
    assert_eq!(jammers.len(), 1, "{status}");
    let logged = gateway.logs();
    let lines: Vec<&String> = logged
        .iter()
        .filter(|l| l.contains("jam intruder") && l.contains("client_id=1001"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&room_addr.to_string()), "{}", lines[0]);
}
