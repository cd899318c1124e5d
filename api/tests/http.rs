//! The REST API through `router().oneshot()`, against a scripted [`Control`] and a real
//! SQLite store: authentication on every documented route, scopes, problem bodies for
//! every kind of bad request, and the happy path of each resource.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::{Arc, Mutex};

use api::control::{
    CallCounters, CallInfo, CallState, ClockMode, ClockState, ClockStatus, Control, ControlError,
    Event, Level, NodeConfig, NodeInfo, PatchInfo, PatchRole, PtpCounters,
};
use api::http::{AppState, Problem, openapi, router};
use api::model::{NodeKind, NodeRef, PortRef, Route};
use api::store::{Scope, Store, open_store};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::broadcast;
use tower::ServiceExt;
use uuid::Uuid;

/// A gateway stand-in: one call, a hold player, and whatever the API creates.
struct FakeControl {
    call: Uuid,
    nodes: Mutex<Vec<NodeInfo>>,
    patches: Mutex<Vec<PatchInfo>>,
    stored_routes: Mutex<Vec<Route>>,
    hung_up: Mutex<Vec<Uuid>>,
    events: broadcast::Sender<Event>,
}

impl FakeControl {
    fn new() -> FakeControl {
        let call = Uuid::parse_str("40325ec2-5efd-4bd3-805f-53576e581d13").unwrap();
        let nodes = vec![
            NodeInfo {
                node: NodeRef::call(call),
                kind: NodeKind::Call,
                outputs: vec!["voice".into(), "heard".into()],
                inputs: vec!["ear".into()],
                owner: None,
                persistent: false,
                config: None,
                status: None,
            },
            NodeInfo {
                node: "player:hold".parse().unwrap(),
                kind: NodeKind::Player,
                outputs: vec!["out".into()],
                inputs: vec![],
                owner: None,
                persistent: false,
                config: None,
                status: None,
            },
        ];
        FakeControl {
            call,
            nodes: Mutex::new(nodes),
            patches: Mutex::new(vec![]),
            stored_routes: Mutex::new(vec![]),
            hung_up: Mutex::new(vec![]),
            events: broadcast::channel(16).0,
        }
    }

    fn port_exists(&self, port: &PortRef, output: bool) -> Result<(), ControlError> {
        let nodes = self.nodes.lock().unwrap();
        let node = nodes
            .iter()
            .find(|n| &n.node == port.node())
            .ok_or_else(|| ControlError::Unprocessable {
                message: format!("no node {}", port.node()),
                field: None,
            })?;
        let ports = if output { &node.outputs } else { &node.inputs };
        if ports.iter().any(|p| p == port.port()) {
            Ok(())
        } else {
            Err(ControlError::Unprocessable {
                message: format!(
                    "{port} is not an {}",
                    if output { "output" } else { "input" }
                ),
                field: None,
            })
        }
    }
}

impl Control for FakeControl {
    fn calls(&self) -> Vec<CallInfo> {
        vec![CallInfo {
            uuid: self.call,
            node: NodeRef::call(self.call),
            peer: "127.0.0.1:5000".into(),
            caller_rate_hz: 8000,
            kind: 0x10,
            state: CallState::Lobby,
            started_at: chrono::Utc::now(),
            duration_ms: 1234,
            route: None,
            talking: false,
            voice_level: Level {
                peak_dbfs: -6.0,
                rms_dbfs: -6.0,
            },
            ear_level: Level {
                peak_dbfs: -120.0,
                rms_dbfs: -120.0,
            },
            patches: vec![],
            counters: CallCounters::default(),
        }]
    }
    fn call(&self, id: Uuid) -> Option<CallInfo> {
        self.calls().into_iter().find(|c| c.uuid == id)
    }
    fn hangup(&self, id: Uuid) -> bool {
        self.hung_up.lock().unwrap().push(id);
        id == self.call
    }
    fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes.lock().unwrap().clone()
    }
    fn node(&self, node: &NodeRef) -> Option<NodeInfo> {
        self.nodes().into_iter().find(|n| &n.node == node)
    }
    fn create_node(
        &self,
        name: &str,
        config: &NodeConfig,
        persistent: bool,
    ) -> Result<NodeInfo, ControlError> {
        let node = NodeRef::new(config.kind(), name).unwrap();
        if let NodeConfig::Player { file, .. } = config
            && !file.ends_with(".wav")
        {
            return Err(ControlError::Unprocessable {
                message: format!("{file} is not a WAV file"),
                field: Some("file".into()),
            });
        }
        let info = NodeInfo {
            node,
            kind: config.kind(),
            outputs: vec!["out".into()],
            inputs: vec![],
            owner: None,
            persistent,
            config: Some(serde_json::to_value(config).unwrap()),
            status: None,
        };
        self.nodes.lock().unwrap().push(info.clone());
        Ok(info)
    }
    fn delete_node(&self, node: &NodeRef) -> Result<(), ControlError> {
        let mut nodes = self.nodes.lock().unwrap();
        let before = nodes.len();
        nodes.retain(|n| &n.node != node);
        if nodes.len() == before {
            Err(ControlError::NotFound {
                message: format!("no node {node}"),
            })
        } else {
            Ok(())
        }
    }
    fn patches(&self) -> Vec<PatchInfo> {
        self.patches.lock().unwrap().clone()
    }
    fn connect(
        &self,
        source: PortRef,
        sink: PortRef,
        gain_db: f32,
        persistent: bool,
    ) -> Result<PatchInfo, ControlError> {
        self.port_exists(&source, true)?;
        self.port_exists(&sink, false)?;
        let mut patches = self.patches.lock().unwrap();
        let patch = PatchInfo {
            id: patches.len() as u64 + 1,
            source,
            sink,
            gain_db,
            role: PatchRole::Normal,
            owner: None,
            persistent,
        };
        patches.push(patch.clone());
        Ok(patch)
    }
    fn set_patch_gain(&self, id: u64, gain_db: f32) -> Result<PatchInfo, ControlError> {
        let mut patches = self.patches.lock().unwrap();
        let patch = patches
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or(ControlError::NotFound {
                message: "no patch".into(),
            })?;
        patch.gain_db = gain_db;
        Ok(patch.clone())
    }
    fn disconnect(&self, id: u64) -> Result<PatchInfo, ControlError> {
        let mut patches = self.patches.lock().unwrap();
        let index = patches
            .iter()
            .position(|p| p.id == id)
            .ok_or(ControlError::NotFound {
                message: "no patch".into(),
            })?;
        Ok(patches.remove(index))
    }
    fn static_routes(&self) -> Vec<Route> {
        vec![
            serde_json::from_value(serde_json::json!({"name": "from-file", "match": "default"}))
                .unwrap(),
        ]
    }
    fn set_stored_routes(&self, routes: Vec<Route>) {
        *self.stored_routes.lock().unwrap() = routes;
    }
    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
    fn render_metrics(&self, out: &mut String) {
        out.push_str("# TYPE telepatch_calls_active gauge\ntelepatch_calls_active 1\n");
    }
    fn ready(&self) -> bool {
        true
    }
    fn clock(&self) -> ClockStatus {
        ClockStatus {
            mode: ClockMode::Follow,
            state: ClockState::Locked,
            usable: true,
            ptp_time_ns: Some(1_700_000_037_000_000_000),
            realtime_ns: 1_700_000_000_000_000_000,
            ts_refclk: "ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0".into(),
            grandmaster_id: Some("00-1D-C1-FF-FE-12-34-56".into()),
            domain: 0,
            source: None,
            tai_utc_offset_s: Some(37),
            interface: Some("10.250.0.2".into()),
            master_port: Some("00-1D-C1-FF-FE-12-34-56/1".into()),
            ptp_timescale: Some(true),
            offset_ns: Some(-850),
            rate_ratio_ppm: Some(-3.5),
            mean_path_delay_ns: Some(42_000),
            last_sync_age_ms: Some(80.0),
            fit_rms_ns: Some(1_200.0),
            holdover_remaining_ms: None,
            counters: Some(PtpCounters {
                syncs: 400,
                ..PtpCounters::default()
            }),
        }
    }
}

struct Api {
    state: AppState,
    control: Arc<FakeControl>,
    store: Arc<dyn Store>,
    admin: String,
    read: String,
    _dir: tempfile::TempDir,
}

async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&format!("sqlite://{}", dir.path().join("api.db").display()))
        .await
        .unwrap();
    let admin = store
        .create_token("ops", Scope::Admin)
        .await
        .unwrap()
        .token
        .clone();
    let read = store
        .create_token("screen", Scope::Read)
        .await
        .unwrap()
        .token
        .clone();
    let control = Arc::new(FakeControl::new());
    let state = AppState::new(
        Arc::clone(&control) as Arc<dyn Control>,
        Arc::clone(&store),
        None,
        tokio_util::sync::CancellationToken::new(),
    );
    Api {
        state,
        control,
        store,
        admin,
        read,
        _dir: dir,
    }
}

impl Api {
    async fn send(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(json) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = router(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let streaming = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if streaming {
            // The event stream never ends; its status is what these tests look at.
            return (status, Vec::new());
        }
        let bytes = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, bytes)
    }

    async fn json(
        &self,
        method: Method,
        uri: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let (status, bytes) = self
            .send(method, uri, Some(&self.admin.clone()), body)
            .await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    async fn problem(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, Problem) {
        let (status, bytes) = self.send(method, uri, token, body).await;
        let problem: Problem = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{status}: not a problem body: {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, problem)
    }
}

/// Every documented operation, with its path parameters filled in.
fn documented_operations(state: &AppState) -> Vec<(Method, String)> {
    let spec = serde_json::to_value(openapi(state)).unwrap();
    let mut operations = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{uuid}", "40325ec2-5efd-4bd3-805f-53576e581d13")
            .replace("{node}", "player:hold")
            .replace("{id}", "1")
            .replace("{name}", "x");
        for method in item.as_object().unwrap().keys() {
            operations.push((
                Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                concrete.clone(),
            ));
        }
    }
    operations
}

#[tokio::test]
async fn every_documented_route_demands_a_valid_token() {
    let api = api().await;
    let operations = documented_operations(&api.state);
    assert!(
        operations.len() >= 20,
        "only {} operations documented",
        operations.len()
    );
    for (method, path) in &operations {
        assert!(path.starts_with("/v1/"), "{path} is outside /v1");
        let (status, problem) = api.problem(method.clone(), path, None, None).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        assert_eq!(problem.error, "unauthorized");
        let (status, _) = api
            .problem(
                method.clone(),
                path,
                Some("tp_not-a-real-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
                None,
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a bogus token"
        );
        let (status, _) = api.send(method.clone(), path, Some("garbage"), None).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a malformed token"
        );
    }
}

#[tokio::test]
async fn read_tokens_read_and_admin_tokens_write() {
    let api = api().await;
    for (method, path) in documented_operations(&api.state) {
        let (status, _) = api
            .send(method.clone(), &path, Some(&api.read.clone()), None)
            .await;
        let reads = method == Method::GET && !path.starts_with("/v1/tokens");
        if reads {
            assert_ne!(
                status,
                StatusCode::FORBIDDEN,
                "{method} {path} must be readable"
            );
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        } else {
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{method} {path} must need the admin scope"
            );
        }
    }
}

#[tokio::test]
async fn health_readiness_and_metrics_need_no_token() {
    let api = api().await;
    assert_eq!(
        api.send(Method::GET, "/healthz", None, None).await.0,
        StatusCode::OK
    );
    let (status, body) = api.send(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"media": true, "database": true})
    );
    let (status, body) = api.send(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains("telepatch_calls_active 1")
    );
    let (status, problem) = api.problem(Method::GET, "/nowhere", None, None).await;
    assert_eq!(
        (status, problem.error.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn calls_are_listed_fetched_and_hung_up() {
    let api = api().await;
    let (status, page) = api.json(Method::GET, "/v1/calls", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["uuid"], api.control.call.to_string());
    let (status, page) = api.json(Method::GET, "/v1/calls?state=patched", None).await;
    assert_eq!((status, page["total"].as_u64()), (StatusCode::OK, Some(0)));
    let uri = format!("/v1/calls/{}", api.control.call);
    assert_eq!(api.json(Method::GET, &uri, None).await.0, StatusCode::OK);
    assert_eq!(
        api.send(Method::DELETE, &uri, Some(&api.admin.clone()), None)
            .await
            .0,
        StatusCode::ACCEPTED
    );
    assert_eq!(*api.control.hung_up.lock().unwrap(), vec![api.control.call]);

    let admin = api.admin.clone();
    let cases = [
        (Method::GET, "/v1/calls/not-a-uuid", StatusCode::BAD_REQUEST),
        (
            Method::GET,
            "/v1/calls/00000000-0000-0000-0000-000000000000",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            "/v1/calls/00000000-0000-0000-0000-000000000000",
            StatusCode::NOT_FOUND,
        ),
        (Method::GET, "/v1/calls?limit=0", StatusCode::BAD_REQUEST),
        (Method::GET, "/v1/calls?limit=5000", StatusCode::BAD_REQUEST),
        (
            Method::GET,
            "/v1/calls?state=asleep",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, uri, expected) in cases {
        let (status, problem) = api.problem(method.clone(), uri, Some(&admin), None).await;
        assert_eq!(status, expected, "{method} {uri}: {}", problem.message);
        assert!(!problem.message.is_empty());
    }
}

#[tokio::test]
async fn nodes_are_created_persisted_and_removed() {
    let api = api().await;
    let body = serde_json::json!({"name": "jingle", "config": {"kind": "player", "file": "jingle.wav", "loop": true}});
    let (status, node) = api
        .json(Method::POST, "/v1/nodes", Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{node}");
    assert_eq!(node["node"], "player:jingle");
    assert_eq!(
        api.store.list_nodes(None).await.unwrap().len(),
        1,
        "persistent by default"
    );
    let (status, problem) = api
        .problem(
            Method::POST,
            "/v1/nodes",
            Some(&api.admin.clone()),
            Some(body),
        )
        .await;
    assert_eq!(
        (status, problem.error.as_str()),
        (StatusCode::CONFLICT, "conflict")
    );

    let (status, page) = api.json(Method::GET, "/v1/nodes?kind=player", None).await;
    assert_eq!((status, page["total"].as_u64()), (StatusCode::OK, Some(2)));
    assert_eq!(
        api.json(Method::GET, "/v1/nodes/player:jingle", None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        api.send(
            Method::DELETE,
            "/v1/nodes/player:jingle",
            Some(&api.admin.clone()),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert!(api.store.list_nodes(None).await.unwrap().is_empty());

    let admin = api.admin.clone();
    let bad = [
        (
            serde_json::json!({"name": "x y", "config": {"kind": "player", "file": "a.wav"}}),
            StatusCode::BAD_REQUEST,
            Some("name"),
        ),
        (
            serde_json::json!({"name": "x", "config": {"kind": "speaker"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            serde_json::json!({"name": "x", "config": {"kind": "recorder", "path": "a.wav", "channels": 9}}),
            StatusCode::BAD_REQUEST,
            Some("channels"),
        ),
        (
            serde_json::json!({"name": "x", "config": {"kind": "conference", "members": 1}}),
            StatusCode::BAD_REQUEST,
            Some("members"),
        ),
        (
            serde_json::json!({"name": "x", "config": {"kind": "player", "file": "notes.txt"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("file"),
        ),
        (
            serde_json::json!({"name": "x", "config": {"kind": "player", "file": "a.wav"}, "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
    ];
    for (body, expected, field) in bad {
        let (status, problem) = api
            .problem(Method::POST, "/v1/nodes", Some(&admin), Some(body.clone()))
            .await;
        assert_eq!(status, expected, "{body}: {}", problem.message);
        assert_eq!(problem.field.as_deref(), field, "{body}");
    }
    assert!(
        api.store.list_nodes(None).await.unwrap().is_empty(),
        "failed creations leave nothing stored"
    );
    let (status, _) = api
        .send(Method::POST, "/v1/nodes", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, problem) = api
        .problem(Method::DELETE, "/v1/nodes/player:nope", Some(&admin), None)
        .await;
    assert_eq!(
        (status, problem.error.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, _) = api
        .problem(Method::GET, "/v1/nodes/speaker:x", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn patches_connect_outputs_to_inputs_and_explain_refusals() {
    let api = api().await;
    let ear = format!("call:{}.ear", api.control.call);
    let (status, patch) = api
        .json(
            Method::POST,
            "/v1/patches",
            Some(serde_json::json!({"source": "player:hold.out", "sink": ear, "gain_db": -6})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{patch}");
    assert_eq!(patch["gain_db"], -6.0);
    let (status, patch) = api
        .json(
            Method::PATCH,
            "/v1/patches/1",
            Some(serde_json::json!({"gain_db": -3})),
        )
        .await;
    assert_eq!(
        (status, patch["gain_db"].as_f64()),
        (StatusCode::OK, Some(-3.0))
    );
    let (status, page) = api
        .json(
            Method::GET,
            &format!("/v1/patches?node=call:{}", api.control.call),
            None,
        )
        .await;
    assert_eq!((status, page["total"].as_u64()), (StatusCode::OK, Some(1)));

    let admin = api.admin.clone();
    let cases = [
        (
            serde_json::json!({"source": "player:nope.out", "sink": ear}),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            serde_json::json!({"source": ear, "sink": "player:hold.out"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            serde_json::json!({"source": "hold.out", "sink": ear}),
            StatusCode::BAD_REQUEST,
            Some("source"),
        ),
        (
            serde_json::json!({"source": "player:hold.out", "sink": ear, "gain_db": 99}),
            StatusCode::BAD_REQUEST,
            Some("gain_db"),
        ),
        (
            serde_json::json!({"source": "player:hold.out", "sink": ear, "persistent": true}),
            StatusCode::BAD_REQUEST,
            Some("persistent"),
        ),
        (
            serde_json::json!({"source": "player:hold.out"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
    ];
    for (body, expected, field) in cases {
        let (status, problem) = api
            .problem(
                Method::POST,
                "/v1/patches",
                Some(&admin),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, expected, "{body}: {}", problem.message);
        assert_eq!(problem.field.as_deref(), field, "{body}");
    }
    let (status, _) = api
        .problem(
            Method::PATCH,
            "/v1/patches/1",
            Some(&admin),
            Some(serde_json::json!({"gain_db": "loud"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = api
        .problem(
            Method::POST,
            "/v1/patches",
            Some(&admin),
            Some(serde_json::json!("{not json")),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        api.send(Method::DELETE, "/v1/patches/1", Some(&admin), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.problem(Method::DELETE, "/v1/patches/1", Some(&admin), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.problem(Method::GET, "/v1/patches/x", Some(&admin), None)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn routes_are_stored_and_pushed_to_the_gateway() {
    let api = api().await;
    let route = serde_json::json!({
        "name": "caller-42", "priority": 10,
        "match": {"uuid": "40325ec2-5efd-4bd3-805f-53576e581d13"},
        "actions": [{"action": "conference", "name": "desk"}]
    });
    let (status, created) = api
        .json(Method::POST, "/v1/routes", Some(route.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["source"], "api");
    assert_eq!(
        api.control.stored_routes.lock().unwrap().len(),
        1,
        "the gateway got the new route"
    );
    let (status, list) = api.json(Method::GET, "/v1/routes", None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["caller-42", "from-file"], "priority order");

    let admin = api.admin.clone();
    assert_eq!(
        api.problem(
            Method::POST,
            "/v1/routes",
            Some(&admin),
            Some(route.clone())
        )
        .await
        .0,
        StatusCode::CONFLICT
    );
    let file_route = serde_json::json!({"name": "from-file", "match": "default"});
    assert_eq!(
        api.problem(Method::POST, "/v1/routes", Some(&admin), Some(file_route))
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        api.problem(Method::DELETE, "/v1/routes/from-file", Some(&admin), None)
            .await
            .0,
        StatusCode::CONFLICT
    );
    let bad_prefix = serde_json::json!({"name": "bad", "match": {"uuid_prefix": "XYZ"}});
    let (status, problem) = api
        .problem(Method::POST, "/v1/routes", Some(&admin), Some(bad_prefix))
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        problem.message
    );
    let bad_action =
        serde_json::json!({"name": "bad", "match": "default", "actions": [{"action": "explode"}]});
    assert_eq!(
        api.problem(Method::POST, "/v1/routes", Some(&admin), Some(bad_action))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let mut renamed = route.clone();
    renamed["name"] = "caller-43".into();
    let (status, _) = api
        .json(Method::PUT, "/v1/routes/caller-42", Some(renamed))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        api.problem(Method::GET, "/v1/routes/caller-42", Some(&admin), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.send(Method::DELETE, "/v1/routes/caller-43", Some(&admin), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert!(api.control.stored_routes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn cdrs_are_paged_and_filtered() {
    let api = api().await;
    let now = chrono::Utc::now();
    let records: Vec<api::store::CdrRecord> = (0..5)
        .map(|i| api::store::CdrRecord {
            uuid: Uuid::new_v4(),
            started_at: now - chrono::Duration::seconds(60 - i),
            ended_at: now - chrono::Duration::seconds(30 - i),
            duration_ms: 30_000,
            caller_rate_hz: 8000,
            ended_by: api::store::EndedBy::Caller,
            end_reason: "the caller hung up".into(),
            frames_in: 1500,
            frames_out: 1500,
            uplink_gaps: 1,
            downlink_underruns: 0,
            max_jitter_ms: 1.5,
            route: None,
            patches: vec![],
            peer: None,
        })
        .collect();
    api.store.insert_cdrs(&records).await.unwrap();
    let (status, page) = api.json(Method::GET, "/v1/cdrs?limit=2", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, next) = api
        .json(
            Method::GET,
            &format!("/v1/cdrs?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(next["items"].as_array().unwrap().len(), 2);
    let (_, one) = api
        .json(
            Method::GET,
            &format!("/v1/cdrs?uuid={}", records[3].uuid),
            None,
        )
        .await;
    assert_eq!(one["items"].as_array().unwrap().len(), 1);
    let admin = api.admin.clone();
    let from =
        (now + chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, _) = api
        .problem(
            Method::GET,
            &format!("/v1/cdrs?from={from}&to={to}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        api.problem(Method::GET, "/v1/cdrs?cursor=garbage", Some(&admin), None)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.problem(Method::GET, "/v1/cdrs?from=yesterday", Some(&admin), None)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn tokens_are_managed_by_admins_only() {
    let api = api().await;
    let (status, created) = api
        .json(
            Method::POST,
            "/v1/tokens",
            Some(serde_json::json!({"name": "board", "scope": "read"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(
        api.send(Method::GET, "/v1/calls", Some(&token), None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, list) = api.json(Method::GET, "/v1/tokens", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !list.to_string().contains(&token),
        "listing never shows secrets"
    );
    assert_eq!(
        api.send(Method::GET, "/v1/tokens", Some(&api.read.clone()), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.send(
            Method::DELETE,
            "/v1/tokens/board",
            Some(&api.admin.clone()),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.send(Method::GET, "/v1/calls", Some(&token), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED,
        "revoked at once on this instance"
    );
}

#[tokio::test]
async fn the_openapi_document_is_openapi_3_1_and_served() {
    let api = api().await;
    let (status, spec) = api.json(Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        spec["openapi"]
    );
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for path in [
        "/v1/calls",
        "/v1/calls/{uuid}",
        "/v1/nodes",
        "/v1/nodes/{node}",
        "/v1/patches",
        "/v1/patches/{id}",
        "/v1/routes",
        "/v1/routes/{name}",
        "/v1/cdrs",
        "/v1/events",
        "/v1/tokens",
        "/v1/tokens/{name}",
        "/v1/openapi.json",
        "/v1/clock",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} is not documented"
        );
    }
    // Every JSON success response names its schema, so clients (and schemathesis) can
    // check bodies; the call records page among them.
    let cdr_page = &spec["paths"]["/v1/cdrs"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"]["$ref"];
    assert_eq!(cdr_page, "#/components/schemas/CdrPage");
    // A jammer's client_id is any u32: the documented range says so (not int32's).
    let mix = &spec["paths"]["/v1/nodes/{node}/mix/{client_id}"]["put"]["parameters"];
    let client_id = mix
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "client_id")
        .unwrap();
    assert_eq!(client_id["schema"]["maximum"], 4294967295.0, "{client_id}");
    assert_eq!(client_id["schema"]["minimum"], 0.0, "{client_id}");
    let fields = &spec["components"]["schemas"]["CdrPage"]["properties"];
    assert!(
        fields.get("items").is_some() && fields.get("next_cursor").is_some(),
        "{fields}"
    );
}

#[tokio::test]
async fn the_clock_reads_with_a_read_token() {
    let api = api().await;
    let (status, bytes) = api
        .send(Method::GET, "/v1/clock", Some(&api.read.clone()), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let clock: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(clock["mode"], "follow");
    assert_eq!(clock["state"], "locked");
    assert_eq!(clock["grandmaster_id"], "00-1D-C1-FF-FE-12-34-56");
    assert_eq!(clock["domain"], 0);
    assert_eq!(clock["rate_ratio_ppm"], -3.5);
    assert_eq!(clock["mean_path_delay_ns"], 42_000);
    assert_eq!(clock["ptp_time_ns"], 1_700_000_037_000_000_000u64);
    assert_eq!(clock["counters"]["syncs"], 400);
    // What the server sends parses back as the documented type.
    let typed: ClockStatus = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(typed, api.control.clock());
    let (status, _) = api
        .send(Method::POST, "/v1/clock", Some(&api.admin.clone()), None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn invented_http_methods_do_not_grow_the_metrics() {
    let mut api = api().await;
    api.state = AppState::new(
        Arc::clone(&api.control) as Arc<dyn Control>,
        Arc::clone(&api.store),
        api::http::install_prometheus_recorder(),
        tokio_util::sync::CancellationToken::new(),
    );
    let before = metrics_lines(&api).await;
    for k in 0..300 {
        let method = Method::from_bytes(format!("INVENTED{k}").as_bytes()).unwrap();
        api.send(method, "/healthz", None, None).await;
    }
    let text = String::from_utf8(api.send(Method::GET, "/metrics", None, None).await.1).unwrap();
    assert!(
        !text.contains("INVENTED"),
        "a client's method became a label"
    );
    assert!(
        text.contains(r#"method="other""#),
        "invented methods are counted as other"
    );
    let after = text.lines().count();
    assert!(
        after < before + 40,
        "/metrics grew from {before} to {after} lines"
    );
}

async fn metrics_lines(api: &Api) -> usize {
    let body = api.send(Method::GET, "/metrics", None, None).await.1;
    String::from_utf8(body).unwrap().lines().count()
}

#[tokio::test]
async fn a_token_revoked_elsewhere_stops_working_within_seconds() {
    let api = api().await;
    assert_eq!(
        api.send(Method::GET, "/v1/calls", Some(&api.read), None)
            .await
            .0,
        StatusCode::OK
    );
    // Revoked straight in the database, as the CLI or another gateway does: this
    // gateway's token cache does not hear of it.
    api.store.revoke_token("screen").await.unwrap();
    let revoked = std::time::Instant::now();
    loop {
        let status = api
            .send(Method::GET, "/v1/calls", Some(&api.read), None)
            .await
            .0;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            revoked.elapsed() < std::time::Duration::from_secs(7),
            "a revoked token still works after {:?}",
            revoked.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_event_stream_ends_when_its_token_is_revoked() {
    let api = api().await;
    let request = Request::builder()
        .method(Method::GET)
        .uri("/v1/events")
        .header(header::AUTHORIZATION, format!("Bearer {}", api.read))
        .body(Body::empty())
        .unwrap();
    let response = router(api.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    api.store.revoke_token("screen").await.unwrap();
    let revoked = std::time::Instant::now();
    // Drain what the stream sends (keep-alives, events) until it ends.
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(8), body.frame()).await {
            Ok(None) => break,
            Ok(Some(frame)) => drop(frame.unwrap()),
            Err(_) => panic!("the stream outlived its token's revocation by 8 s"),
        }
    }
    assert!(
        revoked.elapsed() < std::time::Duration::from_secs(7),
        "ended {:?} after the revocation",
        revoked.elapsed()
    );
}
