//! End to end: a hosted jam room under a flood, with its default settings. One source
//! sends 5 000 valid packets a second (a jammer sends 375, rtjam.md §2) and 200 more
//! source ports try to join, while a jammer plays a tone to a caller on a seat and to
//! another jammer. The room holds each member to its packet rate and admits at most its
//! default 16 members; the excess is dropped and counted, never forwarded, and the
//! jammer's audio stays clean: its tone in every 100 ms window at the caller, every
//! packet in order at the other jammer.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod jam_client;
mod rtjam;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{GatewayProcess, uuid};
use jam_client::{Api, assert_tone_in_every_window, member};
use rtjam::{Header, Jammer, Voice, packet};
use serde_json::json;
use sip_glue::fake_asterisk::{CallEnd, FakeCall, Source};

const JAMMER: u32 = 1001;
const LISTENER: u32 = 1002;
const FLOOD: u32 = 666;
const FLOOD_RATE: u64 = 5_000;
const PORTS: usize = 200;

/// Sends `FLOOD_RATE` silent packets a second from one socket, and one a packet every
/// 50 ms from each of `PORTS` more, until `stop`; returns (flood source address,
/// datagrams sent).
fn flood(
    room: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let ports: Vec<UdpSocket> = (0..PORTS)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let silence = [0.0f32; 128];
        let start = Instant::now();
        let mut sequence = 0u32;
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            // Every 10 ms: 50 packets from the flood source ...
            for _ in 0..FLOOD_RATE / 100 {
                let header = Header {
                    client_id: FLOOD,
                    sequence,
                    client_time: rtjam::now_us(),
                    ..Header::default()
                };
                sequence += 1;
                socket
                    .send_to(&packet(&header, &silence, &silence), room)
                    .unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
            }
            // ... and every 50 ms one from each of the other ports.
            if round.is_multiple_of(5) {
                for (i, port) in ports.iter().enumerate() {
                    let header = Header {
                        client_id: 5_000 + i as u32,
                        sequence: (round / 5) as u32,
                        ..Header::default()
                    };
                    let _ = port.send_to(&packet(&header, &silence, &silence), room);
                }
            }
            round += 1;
            let due = start + Duration::from_millis(10 * round);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    });
    (addr, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_room_keeps_its_members_audio_clean() {
    let caller = uuid();
    let gateway = GatewayProcess::start(&format!(
        r#"
[[routes]]
name = "to-the-band"
match = {{ uuid = "{caller}" }}
actions = [{{ action = "jam", room = "band" }}]
"#
    ));
    let api = Api::new(gateway.api_url(), gateway.token("jam-test", "admin"));
    // Defaults: 16 members, 500 packets a second each.
    api.create_jam(
        "band",
        json!({"mode": "host", "listen": "127.0.0.1:0", "seats": 1, "client_id": 3001}),
        false,
    )
    .await;
    let room = api.room_addr("band").await;
    let jammer = Jammer::start(
        room,
        JAMMER,
        Voice {
            ch1: (440.0, 0.25),
            ch2: (0.0, 0.0),
        },
    );
    let listener = Jammer::start(
        room,
        LISTENER,
        Voice {
            ch1: (0.0, 0.0),
            ch2: (0.0, 0.0),
        },
    );
    api.wait_status("band", Duration::from_secs(5), |s| {
        member(s, JAMMER).is_some() && member(s, LISTENER).is_some()
    })
    .await
    .expect("both jammers in the room");
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, caller)
            .source(Source::silence())
            .duration(Duration::from_secs(5))
            .run(),
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let flood_sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let (flood_addr, flooder) = flood(room, Arc::clone(&stop), Arc::clone(&flood_sent));
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let status = api.jam_status("band").await;
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    let flood_seconds = started.elapsed().as_secs_f64();
    let report = call.await.unwrap().unwrap();
    let jammer = jammer.finish();
    let listener = listener.finish();

    // The caller heard the jammer's tone in every window, flood or not.
    assert_eq!(report.end, CallEnd::Completed);
    let rate = report.received_rate.unwrap().hz();
    let half = rate as usize / 2;
    assert_tone_in_every_window(
        &report.received[half..report.received.len() - half],
        rate,
        440.0,
        -12.04,
    );
    // The other jammer got every packet of the jammer, in order, intact.
    let from_jammer = listener.audio_from(JAMMER);
    let seqs: Vec<u32> = from_jammer.iter().map(|r| r.header().sequence).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gaps in the jammer's stream"
    );
    assert!(
        seqs.len() as f64 >= jammer.sent.len() as f64 * 0.99,
        "{} of {}",
        seqs.len(),
        jammer.sent.len()
    );
    for r in &from_jammer {
        assert_eq!(
            &r.bytes[12..],
            &jammer.sent[r.header().sequence as usize][12..]
        );
    }
    // The flood reached the others at its member's rate at most: 500 a second plus
    // a 0.4 s burst.
    let flood_forwarded = listener.audio_from(FLOOD).len() as f64;
    let allowed = 500.0 * flood_seconds + 200.0 + 50.0;
    assert!(
        flood_forwarded <= allowed,
        "{flood_forwarded} flood packets forwarded in {flood_seconds:.2} s"
    );
    let sent = flood_sent.load(Ordering::Relaxed);
    assert!(sent as f64 > 4_000.0 * flood_seconds * 0.8, "{sent}");

    // Counted: the excess, the refused ports; at most 16 members.
    let counters = &status["counters"];
    assert!(
        counters["rate_limited"].as_u64().unwrap() > 5_000,
        "{counters}"
    );
    assert!(
        counters["room_full"].as_u64().unwrap() > 1_000,
        "{counters}"
    );
    assert_eq!(status["max_members"], 16);
    assert_eq!(status["max_packet_rate"], 500);
    let network: Vec<&serde_json::Value> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["local"] == false)
        .collect();
    assert_eq!(network.len(), 16, "{status}");
    let flooder = network
        .iter()
        .find(|m| m["address"] == flood_addr.to_string())
        .expect("the flood source is a member");
    assert!(
        flooder["rate_limited"].as_u64().unwrap() > 5_000,
        "{flooder}"
    );
    let metrics = common::metrics_text(&gateway).await;
    for reason in ["rate_limited", "room_full"] {
        assert!(
            metrics.contains(&format!(
                "telepatch_jam_datagrams_dropped_total{{node=\"jam:band\",reason=\"{reason}\"}}"
            )),
            "{metrics}"
        );
    }
    assert!(
        gateway
            .logs()
            .iter()
            .any(|l| l.contains("over its packet rate") && l.contains(&flood_addr.to_string())),
        "no log about the flood"
    );
}
