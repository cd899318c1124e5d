//! End to end: telepatch hosts an RTJam room (rtjam.md §3-§6, issue 5). Two jammers
//! written from the fact sheet (tests/rtjam, not telepatch's codec) and one phone caller
//! (the fake Asterisk) share the room:
//!
//! * each jammer receives the caller's tone on channel 1 (channel 2 silent) and the
//!   other jammer's packets byte for byte, but for the server_time and beat the room
//!   stamps (§4);
//! * the caller hears both jammers at their levels, and not itself;
//! * each jammer gets a header-only echo of every packet, carrying its own client_time,
//!   client_id and sequence and the room's server_time (§4 step 4, §5);
//! * a jammer that goes quiet is dropped about a second later (§3), with an event.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod jam_client;
mod rtjam;

use std::time::Duration;

use codecs::measure::fit_sine;
use codecs::rate::SampleRate;
use common::{GatewayProcess, uuid};
use jam_client::{Api, member, read_events, tone_level_near};
use rtjam::{Header, Jammer, JammerLog, Voice};
use serde_json::json;
use sip_glue::fake_asterisk::{CallEnd, FakeCall, Source};

const SEAT_CLIENT_ID: u32 = 3001;

/// Checks that `to` received `from`'s packets intact: same audio, same header except
/// the beat and server_time the room stamps; returns how many it compared.
fn assert_forwarded_intact(from: &JammerLog, to: &JammerLog) -> usize {
    let sent: std::collections::HashMap<u32, &Vec<u8>> = from
        .sent
        .iter()
        .map(|b| (Header::read(b).sequence, b))
        .collect();
    let received = to.audio_from(from.client_id);
    for r in &received {
        let h = r.header();
        let original = sent[&h.sequence];
        assert_eq!(r.bytes.len(), original.len());
        assert_eq!(&r.bytes[..3], &original[..3], "channel, rate, chunks kept");
        assert_eq!(
            &r.bytes[12..],
            &original[12..],
            "client fields and audio intact"
        );
        assert!(h.beat < 4);
        assert!(h.server_time >= Header::read(original).client_time.saturating_sub(5_000));
        assert!(h.server_time <= r.at_us + 1_000);
    }
    received.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rtjam_jammers_and_a_caller_share_a_hosted_room() {
    let caller = uuid();
    let config = format!(
        r#"{}
[[routes]]
name = "to-the-band"
match = {{ uuid = "{caller}" }}
actions = [{{ action = "jam", room = "band" }}]
"#,
        common::STALL_PROOF_CALL_BUFFERS
    );
    let gateway = GatewayProcess::start(&config);
    let api = Api::new(gateway.api_url(), gateway.token("jam-test", "admin"));
    let created = api
        .create_jam(
            "band",
            json!({"mode": "host", "listen": "127.0.0.1:0", "seats": 2, "client_id": SEAT_CLIENT_ID}),
            false,
        )
        .await;
    assert_eq!(
        created["inputs"],
        json!(["in1", "in2"]),
        "one input per seat"
    );
    assert_eq!(
        created["outputs"],
        json!(["out1", "out2", "mix_left", "mix_right"])
    );
    let room = api.room_addr("band").await;
    let mut events = api.events("jam_member_joined,jam_member_left").await;

    let a = Jammer::start(
        room,
        1001,
        Voice {
            ch1: (440.0, 0.25),
            ch2: (550.0, 0.1),
        },
    );
    let b = Jammer::start(
        room,
        1002,
        Voice {
            ch1: (660.0, 0.25),
            ch2: (0.0, 0.0),
        },
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, caller)
            .source(Source::tone(1000.0, -6.0))
            .duration(Duration::from_secs(5))
            .run(),
    );

    // While everyone plays: the room knows both jammers and the caller's seat.
    let (status, _) = api
        .wait_status("band", Duration::from_secs(5), |s| {
            // The seat list and the member list are read one after the other: wait
            // until both show the seat, which becomes active while the call is set up.
            member(s, 1001).is_some_and(|m| m["round_trip_ms"].is_number())
                && member(s, 1002).is_some()
                && member(s, SEAT_CLIENT_ID).is_some()
                && s["seats"][0]["active"] == true
        })
        .await
        .expect("members in the status");
    let ma = member(&status, 1001).unwrap();
    assert_eq!(ma["address"], a.addr.to_string());
    assert_eq!(ma["local"], false);
    // Loopback: the round trip from the echoed server_time is short.
    assert!(ma["round_trip_ms"].as_f64().unwrap() < 20.0, "{ma}");
    let seat = member(&status, SEAT_CLIENT_ID).unwrap();
    assert_eq!((&seat["local"], &seat["seat"]), (&json!(true), &json!(1)));
    assert_eq!(status["seats"][0]["active"], true);
    assert_eq!(status["seats"][1]["active"], false);

    // 3 s into the call, B goes quiet; the room drops it about a second later.
    tokio::time::sleep(Duration::from_millis(2_700)).await;
    let last_packet_us = b.go_quiet();
    api.wait_status("band", Duration::from_secs(3), |s| {
        member(s, 1002).is_none()
    })
    .await
    .expect("B dropped");
    let after = Duration::from_micros(rtjam::now_us() - last_packet_us);
    assert!(
        (Duration::from_millis(950)..Duration::from_millis(1_300)).contains(&after),
        "B dropped {after:?} after its last packet"
    );
    let still = api.jam_status("band").await;
    assert!(member(&still, 1001).is_some(), "A stays");

    let report = call.await.unwrap().unwrap();
    assert_eq!(report.end, CallEnd::Completed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = a.finish();
    let b = b.finish();

    // Each jammer got the caller's tone on channel 1, at the caller's level.
    for log in [&a, &b] {
        let voice = log.channel_from(SEAT_CLIENT_ID, 0);
        assert!(voice.len() > 48_000 * 2, "{} samples", voice.len());
        let fit = fit_sine(&voice[24_000..72_000], SampleRate::HZ_48000).unwrap();
        assert!((fit.frequency_hz - 1000.0).abs() < 0.5, "{fit:?}");
        assert!((fit.amplitude_dbfs + 6.0).abs() < 0.5, "{fit:?}");
        assert!(fit.snr_db > 40.0, "{fit:?}");
        let ch2 = log.channel_from(SEAT_CLIENT_ID, 1);
        assert!(ch2.iter().all(|x| x.abs() < 1e-4), "channel 2 is silence");
        let seqs: Vec<u32> = log
            .audio_from(SEAT_CLIENT_ID)
            .iter()
            .map(|r| r.header().sequence)
            .collect();
        assert_eq!(seqs[0], 0, "the seat's stream starts at sequence 0");
        assert!(
            log.audio_from(SEAT_CLIENT_ID)
                .iter()
                .all(|r| r.bytes.len() == 540)
        );
    }

    // Each jammer got the other's packets intact: all of them while both were there.
    let b_to_a = assert_forwarded_intact(&b, &a);
    let a_to_b = assert_forwarded_intact(&a, &b);
    assert!(
        b_to_a as f64 >= b.sent.len() as f64 * 0.99,
        "{b_to_a} of {}",
        b.sent.len()
    );
    assert!(a_to_b > 375 * 3, "{a_to_b}");

    // Each sender got a header-only echo of (nearly) every packet.
    for log in [&a, &b] {
        let echoes = log.echoes();
        assert!(
            echoes.len() as f64 >= log.sent.len() as f64 * 0.99,
            "{} echoes for {} packets",
            echoes.len(),
            log.sent.len()
        );
        let sent: std::collections::HashMap<u32, &Vec<u8>> = log
            .sent
            .iter()
            .map(|b| (Header::read(b).sequence, b))
            .collect();
        for echo in echoes {
            let h = echo.header();
            let original = sent[&h.sequence];
            assert_eq!(&echo.bytes[12..28], &original[12..28]);
            assert_eq!(echo.bytes[2], 16, "the sender's chunks byte");
            assert!(h.server_time >= h.client_time.saturating_sub(5_000));
            assert!(h.server_time <= echo.at_us + 1_000);
        }
    }

    // The caller heard both jammers (each channel at its level) and not itself.
    let rate = report.received_rate.unwrap().hz();
    let both = &report.received[rate as usize..(rate as usize * 5 / 2)];
    for (hz, dbfs) in [(440.0, -12.04), (550.0, -20.0), (660.0, -12.04)] {
        let level = tone_level_near(both, rate, hz);
        assert!(
            (level - dbfs).abs() < 1.0,
            "{hz} Hz heard at {level:.1} dBFS"
        );
    }
    // Hearing itself would read about -6 dBFS; what is left is the noise of the jitter
    // buffers' one-sample slips.
    let own = tone_level_near(both, rate, 1000.0);
    assert!(own < -40.0, "the caller hears itself at {own:.1} dBFS");
    let end = report.received.len() - rate as usize / 2;
    let after_b = &report.received[end - rate as usize / 2..end];
    assert!(
        tone_level_near(after_b, rate, 660.0) < -40.0,
        "B still heard"
    );
    assert!((tone_level_near(after_b, rate, 440.0) + 12.04).abs() < 1.0);

    // Events: both joined, B left for silence.
    let events = read_events(&mut events, Duration::from_secs(3), |e| {
        e.iter().any(|e| e["type"] == "jam_member_left")
    })
    .await;
    for log in [&a, &b] {
        let joined = events
            .iter()
            .find(|e| e["type"] == "jam_member_joined" && e["client_id"] == log.client_id)
            .unwrap_or_else(|| panic!("no join event for {}: {events:?}", log.client_id));
        assert_eq!(joined["node"], "jam:band");
        assert_eq!(joined["address"], log.addr.to_string());
    }
    let left = events
        .iter()
        .find(|e| e["type"] == "jam_member_left")
        .unwrap();
    assert_eq!(
        (&left["client_id"], &left["reason"]),
        (&json!(1002), &json!("timeout"))
    );
}
