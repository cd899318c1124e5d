//! Topology behaviours tested sample for sample: a gateway whose engine the test steps
//! block by block on the test's own thread (no engine thread, no wall clock), probe
//! nodes that play a constant or capture their input, and exact expectations: mix-minus,
//! the lobby's hold music, route matching, seats, duplicate UUIDs, patch gains, and the
//! clean-up when a call ends.
//!
//! Values are powers of two so that every sum the engine makes is exact in `f32`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use api::model::{NodeKind, NodeRef, PortRef, Route, RouteAction, RouteMatch};
use uuid::Uuid;

use crate::config::{Config, DuplicatePolicy};
use crate::engine::{Engine, Node};
use crate::kinds::BuiltNode;
use crate::node_service::NodeService;
use crate::patchbay::{NodeSpec, PatchRole};
use crate::service::{AdmitError, AdmittedCall, EndReason, Gateway};

/// Plays a constant on `out`.
struct Constant(f32);

impl Node for Constant {
    fn produce(&mut self, outputs: &mut [f32], block: usize) {
        outputs[..block].fill(self.0);
    }

    fn consume(&mut self, _inputs: &[f32], _block: usize) {}
}

/// Keeps the last block its input `in` received.
struct Capture(Arc<Mutex<Vec<f32>>>);

impl Node for Capture {
    fn produce(&mut self, _outputs: &mut [f32], _block: usize) {}

    fn consume(&mut self, inputs: &[f32], block: usize) {
        let mut last = self.0.lock().unwrap();
        last.clear();
        last.extend_from_slice(&inputs[..block]);
    }
}

struct ProbeService;

impl NodeService for ProbeService {
    fn status(&self) -> serde_json::Value {
        serde_json::json!({})
    }

    fn stop(&self) {}
}

/// A gateway with its engine in the test's hands.
struct Rig {
    gateway: Arc<Gateway>,
    engine: Option<Engine>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(adjust: impl FnOnce(&mut Config, &Path)) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.engine.realtime_priority = false;
        config.engine.lock_memory = false;
        config.vad.enabled = false;
        config.recordings.dir = dir.path().join("recordings");
        config.media.dir = dir.path().to_path_buf();
        adjust(&mut config, dir.path());
        let (gateway, engine) = Gateway::start_stepped(config).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Rig {
            gateway,
            engine: Some(engine),
            runtime,
            _dir: dir,
        }
    }

    /// Runs the engine for `blocks` blocks.
    fn run(&mut self, blocks: usize) {
        let engine = self.engine.as_mut().unwrap();
        for _ in 0..blocks {
            engine.process_block();
        }
    }

    fn add(&self, node: NodeRef, outputs: &[&str], inputs: &[&str], engine: Box<dyn Node>) {
        self.gateway
            .add_built_node(BuiltNode {
                spec: NodeSpec {
                    node,
                    outputs: outputs.iter().map(|p| p.to_string()).collect(),
                    inputs: inputs.iter().map(|p| p.to_string()).collect(),
                    owner: None,
                },
                engine,
                service: Arc::new(ProbeService),
            })
            .unwrap();
    }

    /// A node `player:<name>` playing `value` on `out`.
    fn source(&self, name: &str, value: f32) -> PortRef {
        let node = NodeRef::new(NodeKind::Player, name).unwrap();
        self.add(node.clone(), &["out"], &[], Box::new(Constant(value)));
        node.port("out")
    }

    /// A node `recorder:<name>` capturing its input `in`.
    fn sink(&self, name: &str) -> (PortRef, Arc<Mutex<Vec<f32>>>) {
        let node = NodeRef::new(NodeKind::Recorder, name).unwrap();
        let last = Arc::new(Mutex::new(Vec::new()));
        self.add(
            node.clone(),
            &[],
            &["in"],
            Box::new(Capture(Arc::clone(&last))),
        );
        (node.port("in"), last)
    }

    /// Taps `source` into `sink` as a monitor, which (like a recording) does not take a
    /// call out of the lobby.
    fn monitor(&self, source: PortRef, sink: PortRef) {
        crate::service::tests_support::connect_monitor(&self.gateway, source, sink);
    }

    /// A sink that hears what `call` hears (its `heard` output: the previous block's ear).
    fn ear_of(&self, call: &AdmittedCall) -> Arc<Mutex<Vec<f32>>> {
        let (sink, last) = self.sink(&format!("ear-{}", call.handle.id));
        self.monitor(call.handle.node.port("heard"), sink);
        last
    }

    fn admit(&self, id: Uuid) -> AdmittedCall {
        let call = self
            .gateway
            .admit_call(id, "127.0.0.1:4000".parse().unwrap())
            .unwrap();
        // What a session does once the call is admitted: its route, then the lobby.
        self.runtime.block_on(self.gateway.route_call(&call.handle));
        call
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The reaper ends with the engine, so the engine goes first.
        self.engine.take();
        self.gateway.begin_shutdown();
        self.gateway.finish();
    }
}

/// Every sample of the last block.
fn last(capture: &Arc<Mutex<Vec<f32>>>) -> Vec<f32> {
    capture.lock().unwrap().clone()
}

fn assert_constant(capture: &Arc<Mutex<Vec<f32>>>, expected: f32, what: &str) {
    let block = last(capture);
    assert!(!block.is_empty(), "{what}: nothing captured");
    assert!(
        block.iter().all(|&s| s == expected),
        "{what}: expected {expected}, got {:?}",
        &block[..4.min(block.len())]
    );
}

/// A WAV of 48 kHz mono 16-bit samples all equal to `value`, one second long.
fn constant_wav(path: &Path, value: f32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    let sample = (value * 32768.0) as i16;
    for _ in 0..48_000 {
        writer.write_sample(sample).unwrap();
    }
    writer.finalize().unwrap();
}

fn with_hold_music(config: &mut Config, dir: &Path, value: f32) {
    let hold = dir.join("hold.wav");
    constant_wav(&hold, value);
    config.lobby.hold_music = Some(hold);
    config.lobby.hold_gain_db = 0.0;
}

#[test]
fn a_conference_gives_each_member_everyone_but_itself() {
    let mut rig = Rig::new(|_, _| {});
    let conference = rig
        .gateway
        .create_configured_node(
            "desk",
            &api::control::NodeConfig::Conference { members: 3 },
            false,
        )
        .unwrap();
    let values = [0.125, 0.25, 0.5];
    let mut outs = Vec::new();
    for (k, value) in values.iter().enumerate() {
        let seat = k + 1;
        let source = rig.source(&format!("member{seat}"), *value);
        rig.gateway
            .connect(source, conference.port(&format!("in{seat}")), 0.0)
            .unwrap();
        let (sink, last) = rig.sink(&format!("return{seat}"));
        rig.gateway
            .connect(conference.port(&format!("out{seat}")), sink, 0.0)
            .unwrap();
        outs.push(last);
    }
    rig.run(4);
    let total: f32 = values.iter().sum();
    for (k, out) in outs.iter().enumerate() {
        assert_constant(out, total - values[k], &format!("return of seat {}", k + 1));
    }
}

#[test]
fn a_caller_hears_hold_music_until_patched_and_again_when_unpatched() {
    let mut rig = Rig::new(|config, dir| with_hold_music(config, dir, 0.25));
    let call = rig.admit(Uuid::new_v4());
    let ear = rig.ear_of(&call);
    rig.run(3);
    assert_constant(&ear, 0.25, "in the lobby");
    assert_eq!(call.handle.state(), api::control::CallState::Lobby);

    let host = rig.source("host", 0.5);
    let patch = rig
        .gateway
        .connect(host, call.handle.node.port("ear"), 0.0)
        .unwrap();
    rig.run(3);
    assert_constant(&ear, 0.5, "patched to the host (hold music gone)");
    assert_eq!(call.handle.state(), api::control::CallState::Patched);

    rig.gateway.disconnect(patch.id).unwrap();
    rig.run(3);
    assert_constant(&ear, 0.25, "back in the lobby");
    assert_eq!(call.handle.state(), api::control::CallState::Lobby);
}

#[test]
fn routes_match_by_priority_then_specificity_and_stored_routes_count_too() {
    let exact: Uuid = "00000000-aaaa-4bbb-8ccc-000000000001".parse().unwrap();
    let prefixed: Uuid = "00000000-aaaa-4bbb-8ccc-000000000002".parse().unwrap();
    let registered: Uuid = "00000000-aaaa-4bbb-8ccc-000000000003".parse().unwrap();
    let other: Uuid = "ffffffff-aaaa-4bbb-8ccc-000000000004".parse().unwrap();
    let route = |name: &str, priority: i32, matcher: RouteMatch, from: &str| Route {
        name: name.into(),
        priority,
        matcher,
        actions: vec![RouteAction::Patch {
            voice_to: vec![],
            ear_from: vec![from.parse().unwrap()],
            gain_db: 0.0,
        }],
        coding: None,
    };
    let mut rig = Rig::new(|config, _| {
        config.routes = vec![
            route("everyone", 0, RouteMatch::Default, "player:a.out"),
            route(
                "block",
                0,
                RouteMatch::UuidPrefix("00000000".into()),
                "player:b.out",
            ),
            route("one", 0, RouteMatch::Uuid(exact), "player:c.out"),
        ];
    });
    for (name, value) in [("a", 0.125), ("b", 0.25), ("c", 0.5), ("d", 0.0625)] {
        rig.source(name, value);
    }
    // Registered through the API before the call connects, above everything else.
    rig.gateway.set_stored_routes(vec![route(
        "registered",
        10,
        RouteMatch::Uuid(registered),
        "player:d.out",
    )]);
    let cases = [
        (exact, "one", 0.5),
        (prefixed, "block", 0.25),
        (registered, "registered", 0.0625),
        (other, "everyone", 0.125),
    ];
    let mut ears = Vec::new();
    for (id, _, _) in cases {
        let call = rig.admit(id);
        let ear = rig.ear_of(&call);
        ears.push((call, ear));
    }
    rig.run(3);
    for ((id, route, value), (call, ear)) in cases.iter().zip(&ears) {
        assert_eq!(call.handle.route.as_deref(), Some(*route), "{id}");
        assert_constant(ear, *value, &format!("{id} via {route}"));
    }
}

#[test]
fn callers_in_a_conference_hear_the_others_and_not_themselves() {
    let mut rig = Rig::new(|_, _| {});
    let (a, b) = (rig.admit(Uuid::new_v4()), rig.admit(Uuid::new_v4()));
    rig.gateway.join_conference(&a.handle.node, "show").unwrap();
    rig.gateway.join_conference(&b.handle.node, "show").unwrap();
    let show = NodeRef::new(NodeKind::Conference, "show").unwrap();
    // A jingle on the third seat: both callers hear it, as they would each other.
    let jingle = rig.source("jingle", 0.25);
    rig.gateway.connect(jingle, show.port("in3"), 0.0).unwrap();
    let (ear_a, ear_b) = (rig.ear_of(&a), rig.ear_of(&b));
    rig.run(4);
    // Neither caller sends audio here, so each hears exactly the jingle.
    assert_constant(&ear_a, 0.25, "caller A");
    assert_constant(&ear_b, 0.25, "caller B");
    // The seat the jingle holds is taken: a third caller gets the fourth seat.
    let c = rig.admit(Uuid::new_v4());
    rig.gateway.join_conference(&c.handle.node, "show").unwrap();
    let (_, patches) = rig.gateway.topology_snapshot();
    assert!(
        patches
            .iter()
            .any(|p| p.source == c.handle.node.port("voice") && p.sink == show.port("in4")),
        "the third caller did not get seat 4"
    );
}

#[test]
fn a_duplicate_uuid_is_refused_or_replaces_the_first_call() {
    let id = Uuid::new_v4();
    let rig = Rig::new(|config, _| config.audiosocket.duplicate_uuid = DuplicatePolicy::Reject);
    let first = rig.admit(id);
    match rig
        .gateway
        .admit_call(id, "127.0.0.1:4001".parse().unwrap())
    {
        Err(AdmitError::Duplicate { id: refused }) => assert_eq!(refused, id),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a second call with the same UUID was admitted"),
    }
    assert!(!first.handle.hangup.is_cancelled());
    drop(rig);

    let mut rig = Rig::new(|config, dir| {
        with_hold_music(config, dir, 0.25);
        config.audiosocket.duplicate_uuid = DuplicatePolicy::Replace;
    });
    let first = rig.admit(id);
    let host = rig.source("host", 0.5);
    rig.gateway
        .connect(host, first.handle.node.port("ear"), 0.0)
        .unwrap();
    let second = rig.admit(id);
    assert!(
        first.handle.hangup.is_cancelled(),
        "the first call was not hung up"
    );
    // The first call's patches went with it: the new call starts in the lobby.
    let (_, patches) = rig.gateway.topology_snapshot();
    assert!(
        patches
            .iter()
            .all(|p| p.role == PatchRole::Lobby || p.sink != second.handle.node.port("ear")),
        "the first call's patch survived: {patches:?}"
    );
    let ear = rig.ear_of(&second);
    rig.run(3);
    assert_constant(&ear, 0.25, "the replacing call, in the lobby");
}

#[test]
fn patch_gains_scale_and_sums_saturate() {
    let mut rig = Rig::new(|_, _| {});
    let source = rig.source("tone", 0.5);
    let (sink, captured) = rig.sink("meter");
    let patch = rig
        .gateway
        .connect(source.clone(), sink.clone(), -6.0)
        .unwrap();
    rig.run(2);
    let expected = 0.5 * 10f32.powf(-6.0 / 20.0);
    let block = last(&captured);
    assert!(
        block.iter().all(|s| (s - expected).abs() < 1e-6),
        "-6 dB of 0.5: {:?}",
        &block[..4]
    );
    rig.gateway.set_patch_gain(patch.id, 0.0).unwrap();
    rig.run(2);
    assert_constant(&captured, 0.5, "at 0 dB");
    // Three half-scale sources into one input: the sum clips at full scale.
    for name in ["more", "even-more"] {
        let extra = rig.source(name, 0.5);
        rig.gateway.connect(extra, sink.clone(), 0.0).unwrap();
    }
    rig.run(2);
    assert_constant(&captured, 1.0, "a saturated sum");
}

#[test]
fn a_call_that_ends_takes_its_nodes_and_patches_and_its_partner_returns_to_the_lobby() {
    let mut rig = Rig::new(|config, dir| {
        with_hold_music(config, dir, 0.25);
        constant_wav(&dir.join("prompt.wav"), 0.5);
        config.routes = vec![Route {
            name: "prompt-and-record".into(),
            priority: 0,
            matcher: RouteMatch::UuidPrefix("0".into()),
            actions: vec![
                RouteAction::Play {
                    file: "prompt.wav".into(),
                    looped: true,
                    gain_db: 0.0,
                },
                RouteAction::Record {
                    path: "{uuid}.wav".into(),
                    channels: api::model::RecordChannels::Voice,
                },
            ],
            coding: None,
        }];
    });
    let a = rig.admit("00000000-0000-4000-8000-00000000000a".parse().unwrap());
    let b = rig.admit("10000000-0000-4000-8000-00000000000b".parse().unwrap());
    let ear_a = rig.ear_of(&a);
    let ear_b = rig.ear_of(&b);
    // B listens to A (a deliberate patch: B leaves the lobby).
    rig.gateway
        .connect(a.handle.node.port("voice"), b.handle.node.port("ear"), 0.0)
        .unwrap();
    rig.run(3);
    assert_constant(&ear_a, 0.5, "A hears its route's prompt");
    assert_constant(&ear_b, 0.0, "B hears A, who says nothing");
    let owned = |gateway: &Gateway| {
        let (nodes, _) = gateway.topology_snapshot();
        nodes
            .iter()
            .filter(|n| n.owner.as_ref() == Some(&a.handle.node))
            .count()
    };
    assert_eq!(
        owned(&rig.gateway),
        2,
        "the prompt's player and the recorder"
    );

    rig.gateway.end_call(&a.handle, EndReason::Caller);
    let (nodes, patches) = rig.gateway.topology_snapshot();
    assert_eq!(owned(&rig.gateway), 0);
    assert!(nodes.iter().all(|n| n.node != a.handle.node));
    assert!(
        patches
            .iter()
            .all(|p| p.source.node() != &a.handle.node && p.sink.node() != &a.handle.node),
        "a patch of the ended call is left: {patches:?}"
    );
    rig.run(3);
    assert_constant(&ear_b, 0.25, "B is back on hold");
    assert_eq!(b.handle.state(), api::control::CallState::Lobby);
}

#[test]
fn a_websocket_route_patches_the_caller_to_a_bot_node_that_goes_with_the_call() {
    // Nothing listens on the discard port of loopback: the node reports why it closed.
    let mut rig = Rig::new(|config, _| {
        config.routes = vec![Route {
            name: "bot".into(),
            priority: 0,
            matcher: RouteMatch::Default,
            actions: vec![RouteAction::Websocket {
                url: "ws://127.0.0.1:9/calls".into(),
                sample_rate: 16_000,
                metadata: None,
            }],
            coding: None,
        }];
    });
    let a = rig.admit("00000000-0000-4000-8000-0000000000aa".parse().unwrap());
    let bot = NodeRef::new(NodeKind::Websocket, &format!("ws-{}-0", a.handle.id)).unwrap();
    let (nodes, patches) = rig.gateway.topology_snapshot();
    let node = nodes
        .iter()
        .find(|n| n.node == bot)
        .expect("the bot's node");
    assert_eq!(node.owner.as_ref(), Some(&a.handle.node));
    let pairs: Vec<(String, String)> = patches
        .iter()
        .map(|p| (p.source.to_string(), p.sink.to_string()))
        .collect();
    for (source, sink) in [
        (a.handle.node.port("voice"), bot.port("in")),
        (bot.port("out"), a.handle.node.port("ear")),
    ] {
        assert!(
            pairs.contains(&(source.to_string(), sink.to_string())),
            "no {source} -> {sink} in {pairs:?}"
        );
    }
    rig.run(3);
    assert_eq!(a.handle.state(), api::control::CallState::Patched);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let status = rig.gateway.node_status(&bot).expect("a status");
        if status["state"] == "closed" {
            break status;
        }
        assert!(std::time::Instant::now() < until, "still {status}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{status}"
    );
    assert_eq!(status["sample_rate"], 16_000);

    rig.gateway.end_call(&a.handle, EndReason::Caller);
    let (nodes, patches) = rig.gateway.topology_snapshot();
    assert!(nodes.iter().all(|n| n.node != bot));
    assert!(
        patches
            .iter()
            .all(|p| p.source.node() != &bot && p.sink.node() != &bot)
    );
}
