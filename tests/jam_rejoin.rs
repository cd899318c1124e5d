//! End to end: a jammer's counters in a hosted room belong to its stream. A jammer that
//! loses packets on the way leaves (silent for over a second, rtjam.md §3) and comes
//! back with a clean stream: every counter of its member entry (the room's `packets`
//! and `sequence_gaps`, the jitter buffer's `lost`, `late`, `drops`, `underruns`,
//! `overruns`) starts again from zero.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod jam_client;
mod rtjam;

use std::time::Duration;

use common::GatewayProcess;
use jam_client::{Api, member};
use rtjam::{Jammer, Voice};
use serde_json::{Value, json};

const JAMMER: u32 = 1001;
const TONE: Voice = Voice {
    ch1: (440.0, 0.25),
    ch2: (0.0, 0.0),
};

fn count(m: &Value, field: &str) -> u64 {
    m[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {m}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_jammers_counters_start_again() {
    let gateway = GatewayProcess::start("");
    let api = Api::new(gateway.api_url(), gateway.token("jam-test", "admin"));
    api.create_jam(
        "band",
        json!({"mode": "host", "listen": "127.0.0.1:0"}),
        false,
    )
    .await;
    let room = api.room_addr("band").await;

    // 2 s with one packet in 25 lost on the way.
    let lossy = Jammer::start_lossy(room, JAMMER, TONE, Some(25));
    let (before, _) = api
        .wait_status("band", Duration::from_secs(5), |s| {
            member(s, JAMMER).is_some_and(|m| m["lost"].as_u64().unwrap_or(0) >= 40)
        })
        .await
        .expect("the losses are counted");
    let m = member(&before, JAMMER).unwrap();
    assert!(count(m, "sequence_gaps") >= 40, "{m}");
    assert!(count(m, "drops") >= 40, "{m}");
    lossy.finish();
    api.wait_status("band", Duration::from_secs(3), |s| {
        member(s, JAMMER).is_none()
    })
    .await
    .expect("the jammer leaves");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Back with a clean stream for a second.
    let clean = Jammer::start(room, JAMMER, TONE);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let after = api.jam_status("band").await;
    clean.finish();
    let m = member(&after, JAMMER).expect("back in the room");
    let packets = count(m, "packets");
    assert!((300..=450).contains(&packets), "{m}");
    // The old stream's losses (40 and more each) are not carried over; a clean stream
    // loses nothing, however the host schedules it.
    for field in ["sequence_gaps", "lost", "drops"] {
        assert!(count(m, field) <= 5, "{field} carried over: {m}");
    }
    // Timing counters: a host that stalls the jammer's thread (a busy virtual machine
    // holds every thread up 20-30 ms now and then) adds one underrun per block of the
    // stall, so they may count a few dozen: where the old stream left more than a few,
    // the new count is below what it left.
    let old = member(&before, JAMMER).unwrap();
    for field in ["late", "underruns", "overruns"] {
        let (was, now) = (count(old, field), count(m, field));
        assert!(
            was <= 5 || now < was,
            "{field} carried over ({was} before): {m}"
        );
    }
}
