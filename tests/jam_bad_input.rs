//! End to end: bad datagrams sent to a hosted jam room (issue 5, rtjam.md §2 validity
//! rules) are dropped and counted by reason, create no member, and do not disturb the
//! jammers: their packets keep flowing to each other intact and without gaps. A valid
//! packet from outside the room's allow-list, or from a new jammer while the room is at
//! its member cap, is refused the same way.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod jam_client;
mod rtjam;

use std::net::UdpSocket;
use std::time::Duration;

use common::GatewayProcess;
use jam_client::{Api, member};
use rtjam::{Header, Jammer, Voice};
use serde_json::json;

/// Deterministic pseudo-random bytes (xorshift).
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_datagrams_are_dropped_and_counted_without_disturbing_the_room() {
    let gateway = GatewayProcess::start("");
    let api = Api::new(gateway.api_url(), gateway.token("jam-test", "admin"));
    api.create_jam(
        "room",
        json!({"mode": "host", "listen": "127.0.0.1:0", "allow": ["127.0.0.1/32"], "max_members": 2}),
        false,
    )
    .await;
    let room = api.room_addr("room").await;
    let voice = Voice {
        ch1: (440.0, 0.25),
        ch2: (0.0, 0.0),
    };
    let a = Jammer::start(room, 1001, voice);
    let b = Jammer::start(room, 1002, voice);
    api.wait_status("room", Duration::from_secs(5), |s| {
        member(s, 1001).is_some() && member(s, 1002).is_some()
    })
    .await
    .expect("both jammers in the room");

    // Every kind of bad datagram, 40 of each, spread over a second while A and B play.
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let outsider = UdpSocket::bind("127.0.0.2:0").unwrap();
    let third = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut valid = Vec::new();
    Header {
        client_id: 666,
        ..Header::default()
    }
    .write(&mut valid);
    valid.extend_from_slice(&[0x7f, 0xfe].repeat(256));
    let kinds: [(&str, Vec<Vec<u8>>); 6] = [
        (
            "too_short",
            vec![vec![], vec![0], garbage(1, 27), garbage(2, 12)],
        ),
        (
            "odd_length",
            vec![garbage(3, 29), garbage(4, 541), valid[..539].to_vec()],
        ),
        (
            "too_long",
            vec![garbage(5, 1026), garbage(6, 1500), garbage(7, 9000)],
        ),
        ("ragged_audio", vec![garbage(8, 30), garbage(9, 542)]),
        ("not_allowed", vec![valid.clone()]),
        ("room_full", vec![valid.clone()]),
    ];
    let rounds = 40;
    for round in 0..rounds {
        for (kind, datagrams) in &kinds {
            let datagram = &datagrams[round % datagrams.len()];
            let socket = match *kind {
                "not_allowed" => &outsider,
                "room_full" => &third,
                _ => &attacker,
            };
            socket.send_to(datagram, room).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let status = api.jam_status("room").await;
    let counters = &status["counters"];
    for (kind, _) in &kinds {
        assert_eq!(counters[*kind], rounds, "{kind}: {counters}");
    }
    assert_eq!(counters["dropped"], rounds * kinds.len(), "{counters}");
    let mut ids: Vec<u64> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["client_id"].as_u64().unwrap())
        .collect();
    // Members are listed in the order they joined, which the two jammers race for.
    ids.sort_unstable();
    assert_eq!(ids, [1001, 1002], "no member from bad datagrams");
    // Prometheus has the same counts.
    let metrics = common::metrics_text(&gateway).await;
    assert!(
        metrics.contains(&format!(
            "telepatch_jam_datagrams_dropped_total{{node=\"jam:room\",reason=\"too_long\"}} {rounds}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("telepatch_jam_members{node=\"jam:room\"} 2"));

    let a = a.finish();
    let b = b.finish();
    // A heard every packet B sent, in order, intact.
    let from_b = a.audio_from(1002);
    let mut seqs: Vec<u32> = from_b.iter().map(|r| r.header().sequence).collect();
    let received = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), received, "no duplicates");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "no gaps");
    assert!(
        received as f64 >= b.sent.len() as f64 * 0.99,
        "{received} of {}",
        b.sent.len()
    );
    for r in from_b {
        let sent = &b.sent[r.header().sequence as usize];
        assert_eq!(&r.bytes[12..], &sent[12..]);
    }
    // And the jammers never saw anything of the attackers.
    for log in [&a, &b] {
        assert!(log.received.iter().all(|r| {
            let id = r.header().client_id;
            (id == 1001 || id == 1002) && (r.bytes.len() == 28 || r.bytes.len() == 540)
        }));
    }
}
