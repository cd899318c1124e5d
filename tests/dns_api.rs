//! End to end: AoDNS broadcasts as API nodes (aodns.md; issue 6 §3, §5). They are
//! validated, created, rebuilt and deleted through `/v1/nodes`, stored and restored at
//! start-up with their sequence numbers still increasing (§6: a client stalls on
//! numbers that go back), created on demand by the `broadcast` route action, and
//! paused on silence when asked to.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod dns_support;

use std::time::Duration;

use codecs::aodns::SequenceListDecoder;
use common::{GatewayProcess, uuid};
use dns_support::{Api, DNS_CONFIG, DOMAIN, ask, dns_addr};
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{RData, RecordType};
use sip_glue::fake_asterisk::{FakeCall, Source};

/// The numbers listed in `sequence.<domain>`.
fn listed(server: std::net::SocketAddr, domain: &str) -> Vec<u64> {
    let reply = ask(server, &format!("sequence.{domain}."), RecordType::TXT).unwrap();
    let RData::TXT(txt) = &reply.answers[0].data else {
        panic!("not TXT: {reply:?}")
    };
    let mut numbers = Vec::new();
    SequenceListDecoder::new()
        .decode(&txt.txt_data[0], &mut numbers)
        .unwrap();
    numbers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_are_validated_created_rebuilt_and_deleted() {
    let gateway = GatewayProcess::start(DNS_CONFIG);
    let api = Api::new(&gateway);
    // Nothing binds port 53xx until a broadcast exists.
    assert!(
        gateway
            .logs()
            .iter()
            .all(|l| !l.contains("DNS server ready"))
    );

    for (config, field) in [
        (
            serde_json::json!({"kind": "dns", "domain": "bad domain.com"}),
            "domain",
        ),
        (
            serde_json::json!({"kind": "dns", "domain": DOMAIN, "window": 0}),
            "window",
        ),
        (
            serde_json::json!({"kind": "dns", "domain": DOMAIN, "sample_rate": 48000}),
            "sample_rate",
        ),
        (
            serde_json::json!({"kind": "dns", "domain": DOMAIN, "channels": 3}),
            "channels",
        ),
    ] {
        let (status, body) = api
            .post(
                "/v1/nodes",
                serde_json::json!({"name": "bad", "config": config}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["field"], field, "{body}");
    }

    api.create_broadcast("music", DOMAIN, 12).await;
    let server = dns_addr(&gateway);
    let (status, node) = api.get("/v1/nodes/dns:music").await;
    assert_eq!(status, 200);
    assert_eq!(node["kind"], "dns");
    assert_eq!(node["inputs"], serde_json::json!(["in"]));
    assert_eq!(node["persistent"], true);
    assert_eq!(node["config"]["window"], 12);
    assert_eq!(node["status"]["dns_server"], server.to_string());
    // A second broadcast of the same zone (in any spelling) is a conflict.
    let (status, body) = api
        .post(
            "/v1/nodes",
            serde_json::json!({"name": "again", "config": {"kind": "dns", "domain": "Music.Example.COM."}}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    // Several zones on one server; a stereo one has two inputs.
    let (status, body) = api
        .post(
            "/v1/nodes",
            serde_json::json!({"name": "stereo", "config": {"kind": "dns", "domain": "stereo.example.com", "channels": 2, "sample_rate": 12000}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["inputs"], serde_json::json!(["in1", "in2"]));

    // Nothing patched: the broadcast runs on silence (76 frames per pack, 4.56 s).
    let status = api.wait_packs("music", 1, Duration::from_secs(15)).await;
    assert_eq!(status["frames_per_pack"], 76, "{status}");
    let first = listed(server, DOMAIN);
    let stereo = api.wait_packs("stereo", 1, Duration::from_secs(15)).await;
    assert_eq!(stereo["channels"], 2);
    assert_eq!(stereo["sample_rate"], 12000);

    // PUT rebuilds it: the window is kept (listeners see no change) and numbering goes
    // on from where it was.
    let (status, body) = api
        .send(
            reqwest::Method::PUT,
            "/v1/nodes/dns:music",
            Some(serde_json::json!({"config": {"kind": "dns", "domain": DOMAIN, "window": 3}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"]["window"], 3);
    let kept = listed(server, DOMAIN);
    assert!(
        first.iter().all(|n| kept.contains(n)),
        "{first:?} then {kept:?}"
    );
    let before = *kept.last().unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(15);
    let rebuilt = loop {
        let now = listed(server, DOMAIN);
        if *now.last().unwrap() > before {
            break now;
        }
        assert!(std::time::Instant::now() < until, "no new pack: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(rebuilt.len() <= 3, "{rebuilt:?}");
    assert!(rebuilt.windows(2).all(|w| w[1] == w[0] + 1), "{rebuilt:?}");

    // A change the gateway refuses (the stereo broadcast serves that zone) is a
    // conflict, and the node keeps running as it was, with its patch.
    let (status, body) = api
        .post(
            "/v1/nodes",
            serde_json::json!({"name": "desk", "config": {"kind": "conference", "members": 2}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api
        .post(
            "/v1/patches",
            serde_json::json!({"source": "conference:desk.out1", "sink": "dns:music.in"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api
        .send(
            reqwest::Method::PUT,
            "/v1/nodes/dns:music",
            Some(serde_json::json!({"config": {"kind": "dns", "domain": "stereo.example.com"}})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = api.get("/v1/nodes/dns:music").await;
    assert_eq!(status, 200, "the refused change lost the node: {body}");
    assert_eq!(body["config"]["domain"], DOMAIN, "{body}");
    assert_eq!(body["config"]["window"], 3, "{body}");
    let (_, patches) = api.get("/v1/patches").await;
    assert!(
        patches["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["source"] == "conference:desk.out1" && p["sink"] == "dns:music.in"),
        "the refused change lost the node's patch: {patches}"
    );
    let rebuilt = listed(server, DOMAIN);

    // DELETE: the zone is still answered for its grace period (REFUSED or NXDOMAIN
    // would crash the listeners' clients).
    let (status, _) = api
        .send(reqwest::Method::DELETE, "/v1/nodes/dns:music", None)
        .await;
    assert_eq!(status, 204);
    let reply = ask(server, &format!("sequence.{DOMAIN}."), RecordType::TXT).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.answers.len(), 1, "{reply:?}");
    assert!(listed(server, DOMAIN).last() >= rebuilt.last());
    assert!(ask(server, "sequence.stereo.example.com.", RecordType::TXT).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_broadcasts_come_back_after_a_restart_with_higher_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let database = common::database_url(dir.path());
    let args = ["--database-url", database.as_str()];
    let caller = uuid();
    let config = format!(
        r#"{DNS_CONFIG}
[[routes]]
name = "on-air"
match = {{ uuid = "{caller}" }}
actions = [{{ action = "broadcast", domain = "{DOMAIN}" }}]
"#
    );
    let mut gateway = GatewayProcess::start_with_args(&config, &args);
    let api = Api::new(&gateway);
    api.create_broadcast("music", DOMAIN, 75).await;
    let report = FakeCall::new(gateway.addr, caller)
        .source(Source::tone(700.0, -6.0))
        .duration(Duration::from_secs(4))
        .run()
        .await
        .unwrap();
    assert_eq!(report.end, sip_glue::fake_asterisk::CallEnd::Completed);
    let status = api.wait_packs("music", 3, Duration::from_secs(15)).await;
    let last_before = status["current_sequence"].as_u64().unwrap();
    assert!(gateway.terminate(), "clean shutdown");
    drop(api);
    drop(gateway);

    let gateway = GatewayProcess::start_with_args(&config, &args);
    let api = Api::new(&gateway);
    let (status, node) = api.get("/v1/nodes/dns:music").await;
    assert_eq!(status, 200, "restored: {node}");
    assert_eq!(node["config"]["window"], 75);
    // Answered from the first moment the server answers (a pack of silence), with
    // numbers that went on increasing.
    let server = dns_addr(&gateway);
    let reply = ask(server, &format!("sequence.{DOMAIN}."), RecordType::TXT).unwrap();
    assert_eq!(
        reply.answers.len(),
        1,
        "NODATA after the restart: {reply:?}"
    );
    let after = listed(server, DOMAIN);
    assert!(
        after[0] > last_before,
        "numbers went back: {last_before} before the restart, {after:?} after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_action_creates_a_broadcast_on_demand_and_silence_can_pause_it() {
    let talk = uuid();
    let quiet = uuid();
    let config = format!(
        r#"{DNS_CONFIG}
[[routes]]
name = "talk"
match = {{ uuid = "{talk}" }}
actions = [{{ action = "broadcast", domain = "talk.example.com", gain_db = -3 }}]

[[routes]]
name = "quiet"
match = {{ uuid = "{quiet}" }}
actions = [{{ action = "broadcast", domain = "quiet.example.com" }}]
"#
    );
    let gateway = GatewayProcess::start(&config);
    let api = Api::new(&gateway);

    // On demand: created with the defaults (not stored), the caller patched in.
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, talk)
            .source(Source::tone(1000.0, -6.0))
            .duration(Duration::from_secs(3))
            .run(),
    );
    gateway
        .wait_log("caller on air over DNS", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("{}", gateway.logs().join("\n")));
    let (status, node) = api.get("/v1/nodes/dns:talk-example-com").await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["persistent"], false);
    assert_eq!(node["config"]["window"], 75);
    let (_, patches) = api.get("/v1/patches?node=dns:talk-example-com").await;
    assert_eq!(patches["items"][0]["source"], format!("call:{talk}.voice"));
    assert_eq!(patches["items"][0]["gain_db"], -3.0);
    call.await.unwrap().unwrap();
    // The caller is gone; the broadcast stays on air, on silence.
    let before = api.status("talk-example-com").await["packs_published"]
        .as_u64()
        .unwrap();
    let after = api
        .wait_packs("talk-example-com", before + 1, Duration::from_secs(15))
        .await;
    assert_eq!(after["paused"], false);

    // `silence = "pause"`: packs stop after the silence, and the open pack is published.
    let (status, body) = api
        .post(
            "/v1/nodes",
            serde_json::json!({"name": "quiet", "config": {"kind": "dns", "domain": "quiet.example.com", "silence": "pause", "pause_after_ms": 600}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = api.status("quiet").await;
    assert_eq!(idle["paused"], true, "{idle}");
    assert_eq!(
        idle["packs_published"], 1,
        "only the pack of silence listed from the start: {idle}"
    );
    let report = FakeCall::new(gateway.addr, quiet)
        .source(Source::tone(800.0, -6.0))
        .duration(Duration::from_secs(3))
        .run()
        .await
        .unwrap();
    assert_eq!(report.end, sip_glue::fake_asterisk::CallEnd::Completed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paused = api.status("quiet").await;
    assert_eq!(paused["paused"], true, "{paused}");
    let published = paused["packs_published"].as_u64().unwrap();
    // 3 s of tone is about 4 packs (after the one of silence); the last, partial one
    // was flushed on pausing.
    assert!((4..=7).contains(&published), "{paused}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(api.status("quiet").await["packs_published"], published);
    let server = dns_addr(&gateway);
    assert_eq!(listed(server, "quiet.example.com").len() as u64, published);
}
