//! End to end: jam rooms through the REST API (issue 5). Rooms are nodes, created,
//! changed and removed through `/v1/nodes`, stored and restored at start-up; the
//! per-jammer mix (`/v1/nodes/{node}/mix`) changes what a caller hears at once; a new
//! tempo applies live (the room keeps its members and its address) and the beat the
//! room stamps follows it (rtjam.md §6); writes need the admin scope.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod jam_client;
mod rtjam;

use std::time::Duration;

use common::{GatewayProcess, uuid};
use jam_client::{Api, member, tone_level_near};
use rtjam::{Jammer, Voice};
use serde_json::json;
use sip_glue::fake_asterisk::{FakeCall, Source};

/// Level of `hz` in what the caller heard between `from_s` and `to_s`.
fn heard_level(
    report: &sip_glue::fake_asterisk::CallReport,
    from_s: f64,
    to_s: f64,
    hz: f64,
) -> f64 {
    let rate = report.received_rate.unwrap().hz();
    let at = |s: f64| ((s * f64::from(rate)) as usize).min(report.received.len());
    tone_level_near(&report.received[at(from_s)..at(to_s)], rate, hz)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_mix_and_tempo_through_the_api_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let database = common::database_url(dir.path());
    let caller = uuid();
    let config = format!(
        r#"
[[routes]]
name = "band"
match = {{ uuid = "{caller}" }}
actions = [{{ action = "jam", room = "room" }}]
"#
    );
    let start = || GatewayProcess::start_with_args(&config, &["--database-url", &database]);
    let mut first = start();
    let token = first.token("ops", "admin");
    let api = Api::new(first.api_url(), token.clone());
    let reader = Api::new(first.api_url(), first.token("viewer", "read"));

    // Validation: 400 with the field at fault; the mode's fields only.
    for (config, field) in [
        (json!({"kind": "jam", "mode": "join"}), "host"),
        (json!({"kind": "jam", "mode": "host", "host": "x"}), "host"),
        (
            json!({"kind": "jam", "mode": "host", "tempo_bpm": 0}),
            "tempo_bpm",
        ),
        (
            json!({"kind": "jam", "mode": "host", "client_id": 40000}),
            "client_id",
        ),
        (
            json!({"kind": "jam", "mode": "host", "allow": ["10.0.0.0/99"]}),
            "allow",
        ),
    ] {
        let (status, body) = api
            .post("/v1/nodes", json!({"name": "bad", "config": config}))
            .await;
        assert_eq!((status, &body["field"]), (400, &json!(field)), "{body}");
    }

    let created = api
        .create_jam(
            "room",
            json!({"mode": "host", "listen": "127.0.0.1:0", "tempo_bpm": 100,
                   "mix": [{"client_id": 1001, "gain_db": -6}]}),
            true,
        )
        .await;
    assert_eq!(created["config"]["tempo_bpm"], 100);
    assert_eq!(created["persistent"], true);
    let room = api.room_addr("room").await;
    let a = Jammer::start(
        room,
        1001,
        Voice {
            ch1: (440.0, 0.25),
            ch2: (0.0, 0.0),
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

    // The mix: A has a stored setting, B is present at the default.
    api.wait_status("room", Duration::from_secs(5), |s| {
        member(s, 1002).is_some()
    })
    .await
    .unwrap();
    let (status, mix) = api.get("/v1/nodes/jam:room/mix").await;
    assert_eq!(status, 200);
    assert_eq!(
        mix,
        json!([
            {"client_id": 1001, "gain_db": -6.0, "mute": false, "pan": 0.0, "configured": true, "present": true},
            {"client_id": 1002, "gain_db": 0.0, "mute": false, "pan": 0.0, "configured": false, "present": true},
        ])
    );
    let (status, entry) = api
        .put(
            "/v1/nodes/jam:room/mix/1002",
            json!({"gain_db": -12, "pan": 0.5}),
        )
        .await;
    assert_eq!(status, 200, "{entry}");
    assert_eq!(
        (&entry["gain_db"], &entry["configured"]),
        (&json!(-12.0), &json!(true))
    );
    assert_eq!(
        reader.put("/v1/nodes/jam:room/mix/1002", json!({})).await.0,
        403
    );
    let (status, body) = api
        .put("/v1/nodes/jam:room/mix/1002", json!({"gain_db": 30}))
        .await;
    assert_eq!((status, &body["field"]), (400, &json!("gain_db")));
    assert_eq!(
        api.put("/v1/nodes/conference:x/mix/1", json!({})).await.0,
        404
    );
    assert_eq!(api.get("/v1/nodes/jam:nothing/mix").await.0, 404);

    // The caller hears A at -12 - 6 dB and B at -12 - 12 dB; then A muted.
    let call = tokio::spawn(
        FakeCall::new(first.addr, caller)
            .source(Source::tone(1000.0, -6.0))
            .duration(Duration::from_secs(4))
            .run(),
    );
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let (status, _) = api
        .put(
            "/v1/nodes/jam:room/mix/1001",
            json!({"gain_db": -6, "mute": true}),
        )
        .await;
    assert_eq!(status, 200);

    // A new tempo applies live: same address, same members, beats at 240 BPM.
    let (_, node) = api.get("/v1/nodes/jam:room").await;
    let mut config = node["config"].clone();
    config["tempo_bpm"] = json!(240);
    let (status, updated) = api
        .put("/v1/nodes/jam:room", json!({"config": config}))
        .await;
    assert_eq!(status, 200, "{updated}");
    let changed_at = rtjam::now_us();
    assert_eq!(updated["status"]["tempo_bpm"], 240);
    assert_eq!(
        updated["status"]["address"],
        room.to_string(),
        "not rebuilt"
    );
    assert!(member(&updated["status"], 1001).is_some(), "members kept");
    assert_eq!(updated["config"]["mix"].as_array().unwrap().len(), 2);

    let report = call.await.unwrap().unwrap();
    let a_before = heard_level(&report, 0.7, 2.0, 440.0);
    let b_before = heard_level(&report, 0.7, 2.0, 660.0);
    assert!(
        (a_before + 18.06).abs() < 1.0,
        "A heard at {a_before:.1} dBFS"
    );
    assert!(
        (b_before + 24.06).abs() < 1.0,
        "B heard at {b_before:.1} dBFS"
    );
    let a_muted = heard_level(&report, 3.0, 3.8, 440.0);
    assert!(a_muted < -50.0, "muted A heard at {a_muted:.1} dBFS");
    assert!((heard_level(&report, 3.0, 3.8, 660.0) + 24.06).abs() < 1.0);

    let a = a.finish();
    let _ = b.finish();
    // Beats before and after the change follow rtjam's formula at each tempo (§6).
    let mut checked = [0, 0];
    for r in a.audio_from(1002) {
        let h = r.header();
        let interval = if h.server_time > changed_at + 200_000 {
            checked[1] += 1;
            250_000
        } else if h.server_time + 200_000 < changed_at {
            checked[0] += 1;
            600_000
        } else {
            continue;
        };
        assert_eq!(u64::from(h.beat), h.server_time / interval % 4, "{h:?}");
    }
    assert!(checked[0] > 300 && checked[1] > 300, "{checked:?}");

    // Back to the default for A.
    assert_eq!(api.delete("/v1/nodes/jam:room/mix/1001").await.0, 204);
    let (_, node) = api.get("/v1/nodes/jam:room").await;
    assert_eq!(
        node["config"]["mix"],
        json!([{"client_id": 1002, "gain_db": -12.0, "mute": false, "pan": 0.5}])
    );

    // Everything above survives a restart.
    assert!(first.terminate());
    let second = start();
    let api = Api::new(second.api_url(), token);
    let (status, node) = api.get("/v1/nodes/jam:room").await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["config"]["tempo_bpm"], 240);
    assert_eq!(node["status"]["tempo_bpm"], 240);
    assert_eq!(node["config"]["mix"][0]["client_id"], 1002);
    let (_, mix) = api.get("/v1/nodes/jam:room/mix").await;
    assert_eq!(mix[0]["gain_db"], -12.0);
    // Deleting a room closes its socket.
    let addr = api.room_addr("room").await;
    assert_eq!(api.delete("/v1/nodes/jam:room").await.0, 204);
    assert!(
        std::net::UdpSocket::bind(addr).is_ok(),
        "the room's port is free again"
    );
    let (_, doc) = api.get("/v1/openapi.json").await;
    assert!(doc["paths"]["/v1/nodes/{node}/mix/{client_id}"]["put"].is_object());
}
