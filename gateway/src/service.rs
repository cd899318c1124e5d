//! The gateway service: calls, routes, the lobby and the patchbay, tied together.
//!
//! [`Gateway`] is what the network drivers and (later) the REST API talk to. It owns
//! the engine thread, the disk writer, the topology (behind one mutex that is only held
//! for short synchronous changes, never across an await) and the registry of live
//! calls, and it publishes [`Event`]s. It knows nothing about sockets: a session hands
//! it a UUID and gets back the call's media halves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, mpsc};
use std::time::{Duration, Instant, SystemTime};

use api::control::{CallState, Event, NodeConfig};
use api::model::{NodeKind, NodeRef, PortRef, RecordChannels, Route, RouteAction, select_route};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Config, DuplicatePolicy};
use crate::engine::call::{
    CallBuffering, CallNode, CallStats, Downlink, Uplink, call_media, ports,
};
use crate::engine::driver::EngineThread;
use crate::engine::player::{Clip, ClipError};
use crate::engine::{BUS_RATE, Engine, EngineStats, Retired};
use crate::kinds::player::{PlayerSettings, player_node};
use crate::kinds::{BuiltNode, ClipLibrary, KindRegistry, NodeResources, Recordings};
use crate::node_service::{NodeError, NodeService};
use crate::patchbay::{NodeSpec, PatchEntry, PatchRole, Patchbay, PatchbayError};
use crate::switchboard::{Effect, SeatError, Switchboard, affected_calls};
use crate::threads::{OwnedThread, Priority};
use crate::websocket::WebsocketSettings;

pub use crate::config::HOLD_PLAYER;
pub use crate::kinds::player::ClipSource;

fn state_from_u8(value: u8) -> CallState {
    match value {
        0 => CallState::Lobby,
        1 => CallState::Patched,
        _ => CallState::Ending,
    }
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum EndReason {
    /// Asterisk closed the connection (the caller hung up, §8).
    Caller,
    /// The gateway hung up: API request, shutdown, or a newer call with the same UUID.
    Gateway {
        /// Why.
        why: String,
    },
    /// The stream broke: protocol error, I/O error, Asterisk stopped reading.
    Error {
        /// What happened.
        error: String,
    },
}

impl EndReason {
    /// `caller`, `gateway` or `error`.
    pub fn ended_by(&self) -> &'static str {
        match self {
            EndReason::Caller => "caller",
            EndReason::Gateway { .. } => "gateway",
            EndReason::Error { .. } => "error",
        }
    }

    /// Why, in words.
    pub fn describe(&self) -> String {
        match self {
            EndReason::Caller => "the caller hung up".into(),
            EndReason::Gateway { why } => why.clone(),
            EndReason::Error { error } => error.clone(),
        }
    }
}

/// A live call as the control plane sees it.
#[derive(Debug)]
pub struct CallHandle {
    /// The AudioSocket UUID.
    pub id: Uuid,
    /// Its node.
    pub node: NodeRef,
    /// Asterisk's address.
    pub peer: SocketAddr,
    /// Wall-clock start (for records).
    pub started_at: SystemTime,
    started: Instant,
    /// Media counters.
    pub stats: Arc<CallStats>,
    /// Cancelled when the gateway wants the call to end; the session then sends
    /// `00 00 00` and closes.
    pub hangup: CancellationToken,
    hangup_reason: Mutex<Option<String>>,
    caller_rate: AtomicU32,
    kind: AtomicU8,
    state: AtomicU8,
    talking: std::sync::atomic::AtomicBool,
    /// The route applied when it connected.
    pub route: Option<String>,
}

impl CallHandle {
    /// Current state.
    pub fn state(&self) -> CallState {
        state_from_u8(self.state.load(Ordering::Relaxed))
    }

    fn set_state(&self, state: CallState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// The caller's rate in Hz, 0 until its first audio message.
    pub fn caller_rate(&self) -> u32 {
        self.caller_rate.load(Ordering::Relaxed)
    }

    /// Records the caller's rate and AudioSocket kind (the session calls this on audio).
    pub fn set_caller_rate(&self, hz: u32, kind: u8) {
        self.caller_rate.store(hz, Ordering::Relaxed);
        self.kind.store(kind, Ordering::Relaxed);
    }

    /// The AudioSocket kind byte of the caller's audio (0 until known).
    pub fn kind(&self) -> u8 {
        self.kind.load(Ordering::Relaxed)
    }

    /// Whether voice activity detection hears the caller.
    pub fn talking(&self) -> bool {
        self.talking.load(Ordering::Relaxed)
    }

    /// Time since the call connected.
    pub fn duration(&self) -> Duration {
        self.started.elapsed()
    }

    /// Asks the session to hang up with `why`.
    pub fn request_hangup(&self, why: &str) {
        if let Ok(mut reason) = self.hangup_reason.lock()
            && reason.is_none()
        {
            *reason = Some(why.to_owned());
        }
        self.set_state(CallState::Ending);
        self.hangup.cancel();
    }

    /// Why the gateway asked for a hangup, if it did.
    pub fn hangup_reason(&self) -> Option<String> {
        self.hangup_reason.lock().ok().and_then(|r| r.clone())
    }
}

/// Why a call was not admitted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdmitError {
    /// A call with this UUID is live and the policy is `reject`.
    #[error("a call with UUID {id} is already connected (duplicate_uuid = \"reject\")")]
    Duplicate {
        /// The UUID.
        id: Uuid,
    },
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The call's media path could not be built.
    #[error("cannot build the call's media path: {0}")]
    Media(String),
    /// The patchbay refused the node.
    #[error(transparent)]
    Patchbay(#[from] PatchbayError),
}

/// What a session gets when its call is admitted.
pub struct AdmittedCall {
    /// The control plane's handle.
    pub handle: Arc<CallHandle>,
    /// The uplink producer (the session's reader feeds it).
    pub uplink: Uplink,
    /// The downlink consumer (the session's writer drains it).
    pub downlink: Downlink,
    /// What the call's kind-0x10 payloads carry: its route's `coding`, else
    /// `audiosocket.uplink_coding`.
    pub coding: api::model::AudioCoding,
}

/// Cumulative counters of calls that have ended (live calls are summed at scrape time).
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    /// Calls admitted.
    pub calls: u64,
    /// Connections refused.
    pub refused: u64,
    /// Audio messages received by ended calls.
    pub frames_in: u64,
    /// Audio messages sent to ended calls.
    pub frames_out: u64,
    /// Uplink gaps of ended calls.
    pub uplink_gaps: u64,
    /// Downlink underruns of ended calls.
    pub downlink_underruns: u64,
    /// Writer stalls of ended calls.
    pub writer_stalls: u64,
    /// Connections closed unidentified because too many were waiting for their ID.
    pub unidentified_refused: u64,
    /// Connections from sources outside `audiosocket.allow`.
    pub source_refused: u64,
    /// Failed `accept`s of the AudioSocket listener (out of file descriptors...).
    pub audiosocket_accept_errors: u64,
    /// HTTP API connections closed at once because `api.max_connections` were open.
    pub api_connections_refused: u64,
    /// Failed `accept`s of the HTTP API.
    pub api_accept_errors: u64,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The media clock (a PTP follower's sockets, say) could not start.
    #[error(transparent)]
    Clock(#[from] crate::clock::ClockError),
    /// One of the gateway's threads could not be started.
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    /// The recordings directory or its disk thread could not be set up.
    #[error("cannot set up recordings: {0}")]
    Recordings(std::io::Error),
    /// A configured player (the hold music, say) could not be created.
    #[error("cannot create a configured player: {0}")]
    Player(ActionError),
}

/// Why a node could not be added or an action of a route (or a seat request) could not
/// be applied to a call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// A node name is not valid.
    #[error(transparent)]
    Name(#[from] api::model::ModelError),
    /// The patchbay refused a node or patch.
    #[error(transparent)]
    Patchbay(#[from] PatchbayError),
    /// Several patches of one action were refused (each reason, `; `-separated).
    #[error("{0}")]
    Patches(String),
    /// A clip could not be loaded.
    #[error(transparent)]
    Clip(#[from] ClipError),
    /// A route's clip could not be loaded.
    #[error("cannot play {file}: {reason}")]
    Play {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// A recording could not start.
    #[error(transparent)]
    Recorder(#[from] crate::engine::recorder::RecorderError),
    /// A broadcast could not be found or created.
    #[error("cannot broadcast on {domain}: {reason}")]
    Broadcast {
        /// The broadcast's domain.
        domain: String,
        /// Why.
        reason: String,
    },
    /// A node could not be built.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A node the action needs is gone.
    #[error("{node} has gone")]
    NodeGone {
        /// The node.
        node: NodeRef,
    },
    /// No jam room of that name exists.
    #[error("no jam room {room} (create it through the API)")]
    NoJamRoom {
        /// The room.
        room: NodeRef,
    },
    /// Every seat is taken.
    #[error("{node} is full ({seats} seats)")]
    Full {
        /// The conference or jam room.
        node: NodeRef,
        /// Its seats.
        seats: usize,
    },
}

/// The gateway. See the module documentation.
pub struct Gateway {
    config: Config,
    block: usize,
    /// The topology and its rules (sans-IO); what it decides is carried out by
    /// [`Gateway::settle`] after the lock is released.
    switchboard: Mutex<Switchboard>,
    calls: Mutex<HashMap<Uuid, Arc<CallHandle>>>,
    /// Builders of every node kind.
    kinds: KindRegistry,
    /// What node kinds build with (clips, recordings, DNS, AES67, the media clock).
    resources: NodeResources,
    /// Routes tried when a call connects: the configuration file's, then the database's.
    routes: RwLock<Vec<Route>>,
    cdrs: Mutex<Option<api::store::CdrQueue>>,
    totals: Mutex<Totals>,
    /// Voice activity detection, and which call each detector key belongs to.
    vad: std::sync::OnceLock<crate::engine::vad::VadHub>,
    vad_calls: Mutex<HashMap<u64, Arc<CallHandle>>>,
    /// Patches each live call has had, for its record.
    call_patch_log: Mutex<HashMap<Uuid, Vec<String>>>,
    engine_thread: Mutex<Option<EngineThread>>,
    /// Drops what the engine retires; joined after the engine.
    reaper: OwnedThread,
    engine_stats: Arc<EngineStats>,
    events: broadcast::Sender<Event>,
    /// The root of the cancellation tree: cancelled last, it ends whatever is left.
    root: CancellationToken,
    /// The first stage of shutdown (a child of `root`): calls hang up, the listener and
    /// the control plane's tickers stop.
    shutdown: CancellationToken,
    /// The configured clock behind `media_clock` (status, metrics, stop).
    clock: crate::clock::ClockHandle,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug; the data is still the best
    // we have, so keep going rather than cascading the panic into every call.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Gateway {
    /// Starts the engine and disk threads and creates the configured players.
    pub fn start(config: Config) -> Result<Arc<Gateway>, StartError> {
        let realtime = config.engine.realtime_priority;
        let (gateway, engine) = Gateway::assemble(config)?;
        let block_duration =
            Duration::from_nanos(gateway.block as u64 * 1_000_000_000 / u64::from(BUS_RATE.hz()));
        let engine_thread = EngineThread::spawn(engine, block_duration, realtime)
            .map_err(|e| StartError::Thread("engine", e))?;
        *lock(&gateway.engine_thread) = Some(engine_thread);
        gateway
            .add_configured_players()
            .map_err(StartError::Player)?;
        Ok(gateway)
    }

    /// Like [`Gateway::start`], but hands the engine to the caller instead of running it
    /// on its thread: tests step it block by block, on virtual time. Drop the engine
    /// before [`Gateway::finish`] (its reaper ends with the engine).
    #[cfg(test)]
    pub(crate) fn start_stepped(config: Config) -> Result<(Arc<Gateway>, Engine), StartError> {
        let (gateway, engine) = Gateway::assemble(config)?;
        gateway
            .add_configured_players()
            .map_err(StartError::Player)?;
        Ok((gateway, engine))
    }

    /// Builds the gateway around a new engine, which is returned to be driven.
    fn assemble(config: Config) -> Result<(Arc<Gateway>, Engine), StartError> {
        let block = config.engine.block_samples;
        // First, so a follower that cannot open its sockets fails start-up cleanly.
        let clock = crate::clock::ClockHandle::start(&config.clock)?;
        let (command_tx, command_rx) = mpsc::channel();
        let (retired_tx, retired_rx) = mpsc::channel::<Retired>();
        // Everything the engine lets go of is dropped here, off the media thread. It
        // ends once the engine (the sender's owner) is gone.
        let reaper =
            OwnedThread::spawn(
                "telepatch-reaper",
                Priority::Normal,
                move |_stop| {
                    for _ in retired_rx {}
                },
            )
            .map_err(|e| StartError::Thread("reaper", e))?;
        let engine = Engine::new(
            block,
            config.audiosocket.max_calls * 3 + 64,
            command_rx,
            retired_tx,
        );
        let engine_stats = engine.stats();
        let (events, _) = broadcast::channel(4096);
        let root = CancellationToken::new();
        let recordings = Recordings::start(&config.recordings.dir, config.recordings.format, block)
            .map_err(StartError::Recordings)?;
        let gateway = Arc::new(Gateway {
            block,
            switchboard: Mutex::new(Switchboard::new(
                Patchbay::with_capacity(
                    block,
                    crate::patchbay::Capacity {
                        max_nodes: config.engine.max_nodes,
                        max_patches: config.engine.max_patches,
                    },
                    command_tx,
                ),
                NodeRef::new(NodeKind::Player, HOLD_PLAYER).ok(),
            )),
            calls: Mutex::new(HashMap::new()),
            kinds: KindRegistry::standard(),
            resources: NodeResources {
                block,
                events: events.clone(),
                clips: ClipLibrary::new(
                    config.media.dir.clone(),
                    config.engine.clip_cache_mb.saturating_mul(1024 * 1024),
                ),
                recordings,
                dns: Arc::new(crate::dns::DnsServer::new(
                    config.dns.clone(),
                    root.child_token(),
                )),
                sequence_store: std::sync::OnceLock::new(),
                aes67: crate::aes67::Aes67Hub::start(
                    &config.aes67,
                    config.engine.realtime_priority,
                    block,
                ),
                media_clock: clock.media_clock(),
                conference_members: config.engine.conference_members,
            },
            routes: RwLock::new(config.routes.clone()),
            cdrs: Mutex::new(None),
            call_patch_log: Mutex::new(HashMap::new()),
            totals: Mutex::new(Totals::default()),
            vad: std::sync::OnceLock::new(),
            vad_calls: Mutex::new(HashMap::new()),
            engine_thread: Mutex::new(None),
            reaper,
            engine_stats,
            events,
            shutdown: root.child_token(),
            root,
            clock,
            config,
        });

        if gateway.config.vad.enabled {
            let weak = Arc::downgrade(&gateway);
            let vad = &gateway.config.vad;
            let hub = crate::engine::vad::VadHub::start(
                crate::engine::vad::VadSettings {
                    mode: vad.mode,
                    start_frames: vad.start_frames,
                    stop_frames: vad.stop_frames,
                },
                Arc::new(move |key, talking| {
                    if let Some(gateway) = weak.upgrade() {
                        let handle = lock(&gateway.vad_calls).get(&key).cloned();
                        if let Some(handle) = handle {
                            gateway.set_talking(&handle, talking);
                        }
                    }
                }),
            )
            .map_err(|e| StartError::Thread("voice activity", e))?;
            let _ = gateway.vad.set(hub);
        }
        Ok((gateway, engine))
    }

    /// Creates the hold-music player and the configuration's standing players.
    fn add_configured_players(&self) -> Result<(), ActionError> {
        if let Some(hold) = self.config.lobby.hold_music.clone() {
            let gain = self.config.lobby.hold_gain_db;
            self.add_player(HOLD_PLAYER, ClipSource::Operator(&hold), true, gain)?;
        }
        for player in self.config.players.clone() {
            self.add_player(
                &player.name,
                ClipSource::Operator(&player.file),
                player.looped,
                player.gain_db,
            )?;
        }
        Ok(())
    }

    /// The configuration the gateway runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The media clock AES67 flows stamp and pace with.
    pub fn media_clock(&self) -> Arc<dyn crate::clock::MediaClock> {
        Arc::clone(&self.resources.media_clock)
    }

    /// The DNS server of AoDNS broadcasts.
    pub fn dns(&self) -> &Arc<crate::dns::DnsServer> {
        &self.resources.dns
    }

    /// Sets where AoDNS broadcasts reserve their sequence numbers (once, before any
    /// broadcast is created; without it numbering starts at 0 on every start).
    pub fn set_sequence_store(&self, store: Arc<dyn crate::dns::SequenceStore>) {
        let _ = self.resources.sequence_store.set(store);
    }

    /// AES67 flows' SDP, the SAP directory and their threads.
    pub fn aes67(&self) -> &crate::aes67::Aes67Hub {
        &self.resources.aes67
    }

    /// The configured clock (`GET /v1/clock`, metrics).
    pub fn clock(&self) -> &crate::clock::ClockHandle {
        &self.clock
    }

    /// Cancelled when shutdown begins.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// A token for a subsystem of the gateway (the HTTP API, the call-record writer):
    /// its owner cancels it at its turn in the shutdown order, and the end of
    /// [`Gateway::finish`] cancels whatever is left.
    pub fn child_token(&self) -> CancellationToken {
        self.root.child_token()
    }

    /// Subscribes to events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Samples per engine block.
    pub fn block_samples(&self) -> usize {
        self.block
    }

    /// Recordings refused or stopped by a failing disk since start.
    pub fn recording_failures(&self) -> u64 {
        self.resources.recordings.failures()
    }

    /// Engine counters.
    pub fn engine_stats(&self) -> Arc<EngineStats> {
        Arc::clone(&self.engine_stats)
    }

    /// The share of real time the engine recently spent on blocks (see
    /// [`EngineStats::recent_load`]).
    pub fn engine_load(&self) -> f64 {
        let period = Duration::from_secs_f64(self.block as f64 / f64::from(BUS_RATE.hz()));
        self.engine_stats.recent_load(period)
    }

    /// Refuses new work for the engine while it is busier than
    /// `engine.max_load_percent` of real time.
    pub fn check_engine_load(&self) -> Result<(), NodeError> {
        let load = self.engine_load();
        let limit = f64::from(self.config.engine.max_load_percent) / 100.0;
        if load > limit {
            return Err(NodeError::EngineBusy {
                load_percent: load * 100.0,
                limit_percent: self.config.engine.max_load_percent,
            });
        }
        Ok(())
    }

    /// Refuses a new node when the engine is too busy or runs `engine.max_nodes` already.
    fn check_node_capacity(&self) -> Result<(), NodeError> {
        self.check_engine_load()?;
        let board = lock(&self.switchboard);
        let limit = board.patchbay().capacity().max_nodes;
        if board.patchbay().nodes_besides_calls() >= limit {
            return Err(NodeError::Unavailable(
                PatchbayError::TooManyNodes { limit }.to_string(),
            ));
        }
        Ok(())
    }

    fn emit(&self, event: Event) {
        if let Event::PatchCreated { patch } = &event {
            self.log_call_patch(&patch.source, &patch.sink);
        }
        // No subscribers is fine.
        let _ = self.events.send(event);
    }

    /// Releases the switchboard and carries out what it decided, in order: publishes
    /// its events, moves call handles to their new state, stops removed services.
    fn settle(&self, mut board: MutexGuard<'_, Switchboard>) {
        let effects = board.take_effects();
        drop(board);
        if effects.is_empty() {
            return;
        }
        let calls = lock(&self.calls).clone();
        for effect in effects {
            match effect {
                Effect::Event(event) => self.emit(event),
                Effect::CallState(node, state) => {
                    if let Some(handle) = Uuid::parse_str(node.name())
                        .ok()
                        .and_then(|id| calls.get(&id))
                        && handle.state() != CallState::Ending
                        && handle.state() != state
                    {
                        handle.set_state(state);
                        self.emit(Event::CallState {
                            call: handle.id,
                            state,
                        });
                    }
                }
                Effect::Stop(service) => service.stop(),
            }
        }
    }

    /// A decoded clip, from the cache or the file (blocking I/O on first use). Refused
    /// when it would not fit in `engine.clip_cache_mb`.
    pub fn clip(&self, source: ClipSource<'_>) -> Result<Clip, ClipError> {
        self.resources.clips.clip(source)
    }

    /// Creates a standing player node `player:<name>`.
    pub fn add_player(
        &self,
        name: &str,
        source: ClipSource<'_>,
        looped: bool,
        gain_db: f32,
    ) -> Result<(), ActionError> {
        let clip = self.clip(source)?;
        let node = NodeRef::new(NodeKind::Player, name)?;
        let built = player_node(
            node,
            PlayerSettings {
                clip,
                file: source.path().to_path_buf(),
                looped,
                gain_db,
            },
            None,
        );
        let mut board = lock(&self.switchboard);
        let installed = board.install(built);
        self.settle(board);
        installed?;
        Ok(())
    }

    /// Admits a call that sent its ID: builds its media path and node. The caller then
    /// applies routes with [`Gateway::route_call`].
    pub fn admit_call(&self, id: Uuid, peer: SocketAddr) -> Result<AdmittedCall, AdmitError> {
        if self.shutdown.is_cancelled() {
            return Err(AdmitError::ShuttingDown);
        }
        let node_ref = NodeRef::call(id);
        let existing = lock(&self.calls).get(&id).cloned();
        if let Some(existing) = existing {
            match self.config.audiosocket.duplicate_uuid {
                DuplicatePolicy::Reject => return Err(AdmitError::Duplicate { id }),
                DuplicatePolicy::Replace => {
                    existing.request_hangup("replaced by a new connection with the same UUID");
                    self.release_call(&existing);
                }
            }
        }

        let a = &self.config.audiosocket;
        let buffering = CallBuffering {
            uplink_margin_samples: BUS_RATE.samples_in_ms(a.uplink_buffer_ms),
            downlink_margin_samples: BUS_RATE.samples_in_ms(a.downlink_buffer_ms),
            ..CallBuffering::default()
        };
        let stats = Arc::new(CallStats::default());
        let (uplink, node, downlink) = call_media(
            codecs::rate::SampleRate::HZ_8000,
            a.frame_ms,
            buffering,
            Arc::clone(&stats),
        )
        .map_err(|e| AdmitError::Media(e.to_string()))?;
        let node: CallNode = node.with_block(self.block);

        lock(&self.switchboard).add_call(
            NodeSpec {
                node: node_ref.clone(),
                outputs: ports::OUTPUTS.iter().map(|s| s.to_string()).collect(),
                inputs: ports::INPUTS.iter().map(|s| s.to_string()).collect(),
                owner: None,
            },
            Box::new(node),
        )?;

        let (route, route_coding) = select_route(
            &self
                .routes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            &id,
        )
        .map_or((None, None), |r| (Some(r.name.clone()), r.coding));
        let handle = Arc::new(CallHandle {
            id,
            node: node_ref,
            peer,
            started_at: SystemTime::now(),
            started: Instant::now(),
            stats,
            hangup: self.shutdown.child_token(),
            hangup_reason: Mutex::new(None),
            caller_rate: AtomicU32::new(0),
            kind: AtomicU8::new(0),
            state: AtomicU8::new(CallState::Lobby as u8),
            talking: std::sync::atomic::AtomicBool::new(false),
            route: route.clone(),
        });
        lock(&self.calls).insert(id, Arc::clone(&handle));
        lock(&self.totals).calls += 1;
        self.open_cdr(&handle);
        let mut uplink = uplink;
        if let Some(hub) = self.vad.get() {
            let tap = hub.open();
            lock(&self.vad_calls).insert(tap.key(), Arc::clone(&handle));
            uplink.set_vad(tap);
        }
        self.emit(Event::CallStarted {
            call: id,
            peer: peer.to_string(),
            route,
        });
        Ok(AdmittedCall {
            handle,
            uplink,
            downlink,
            coding: route_coding.unwrap_or(a.uplink_coding),
        })
    }

    /// Applies the call's route (if any), then puts it in the lobby if nothing claims it.
    /// Loads clips on a blocking thread; failures of single actions are logged and the
    /// rest of the route still applies.
    pub async fn route_call(self: &Arc<Self>, handle: &Arc<CallHandle>) {
        let route = {
            let routes = self
                .routes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            select_route(&routes, &handle.id).cloned()
        };
        if let Some(route) = route {
            // Decode any clips first, off the async runtime's threads.
            let files: Vec<PathBuf> = route
                .actions
                .iter()
                .filter_map(|a| match a {
                    RouteAction::Play { file, .. } => Some(PathBuf::from(file)),
                    _ => None,
                })
                .collect();
            let clips = if files.is_empty() {
                Vec::new()
            } else {
                let gateway = Arc::clone(self);
                tokio::task::spawn_blocking(move || {
                    files
                        .into_iter()
                        .map(|f| {
                            let clip = gateway.clip(ClipSource::Media(&f));
                            (f, clip)
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default()
            };
            let clips: HashMap<PathBuf, Result<Clip, ClipError>> = clips.into_iter().collect();
            // Find or create the broadcasts first: that may wait for the database.
            let mut broadcasts = HashMap::new();
            for action in &route.actions {
                if let RouteAction::Broadcast { domain, .. } = action {
                    let gateway = Arc::clone(self);
                    let wanted = domain.clone();
                    let found = tokio::task::spawn_blocking(move || {
                        gateway.broadcast_node(&wanted).map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                    broadcasts.insert(domain.clone(), found);
                }
            }
            // Opening recordings touches the disk and takes the topology lock: on a
            // blocking thread, never on a worker that runs call sessions.
            let (gateway, call) = (Arc::clone(self), Arc::clone(handle));
            let span = tracing::Span::current();
            let applied = tokio::task::spawn_blocking(move || {
                let _call = span.enter();
                for (index, action) in route.actions.iter().enumerate() {
                    if let Err(e) = gateway.apply_action(&call, index, action, &clips, &broadcasts)
                    {
                        tracing::warn!(route = %route.name, action = index, error = %e, "route action failed");
                    }
                }
            })
            .await;
            if let Err(e) = applied {
                tracing::error!(error = %e, "applying the route's actions failed");
            }
        }
        self.refresh_lobby(std::slice::from_ref(&handle.node));
    }

    fn apply_action(
        &self,
        handle: &CallHandle,
        index: usize,
        action: &RouteAction,
        clips: &HashMap<PathBuf, Result<Clip, ClipError>>,
        broadcasts: &HashMap<String, Result<NodeRef, String>>,
    ) -> Result<(), ActionError> {
        let call = &handle.node;
        match action {
            RouteAction::Record { path, channels } => {
                let relative = self.recording_path(path, handle);
                let stereo = *channels == RecordChannels::Both;
                let recorder =
                    NodeRef::new(NodeKind::Recorder, &format!("rec-{}-{index}", handle.id))?;
                let (built, path) = self.resources.recordings.open(
                    &recorder,
                    &relative,
                    if stereo { 2 } else { 1 },
                    Some(call.clone()),
                    &self.events,
                )?;
                let mut board = lock(&self.switchboard);
                let patched = (|| {
                    board.install(built)?;
                    let first = if stereo { "in1" } else { "in" };
                    board.connect(
                        call.port("voice"),
                        recorder.port(first),
                        0.0,
                        PatchRole::Monitor,
                        Some(call.clone()),
                    )?;
                    if stereo {
                        board.connect(
                            call.port("heard"),
                            recorder.port("in2"),
                            0.0,
                            PatchRole::Monitor,
                            Some(call.clone()),
                        )?;
                    }
                    Ok::<_, PatchbayError>(())
                })();
                self.settle(board);
                patched?;
                tracing::info!(path = %path.display(), "recording started");
            }
            RouteAction::Play {
                file,
                looped,
                gain_db,
            } => {
                let clip = match clips.get(Path::new(file)) {
                    Some(Ok(clip)) => Arc::clone(clip),
                    Some(Err(e)) => {
                        return Err(ActionError::Play {
                            file: file.clone(),
                            reason: e.to_string(),
                        });
                    }
                    None => {
                        return Err(ActionError::Play {
                            file: file.clone(),
                            reason: "the clip was not loaded".into(),
                        });
                    }
                };
                let player =
                    NodeRef::new(NodeKind::Player, &format!("play-{}-{index}", handle.id))?;
                let built = player_node(
                    player.clone(),
                    PlayerSettings {
                        clip,
                        file: PathBuf::from(file),
                        looped: *looped,
                        gain_db: *gain_db,
                    },
                    Some(call.clone()),
                );
                let mut board = lock(&self.switchboard);
                let patched = board.install(built).and_then(|()| {
                    board.connect(
                        player.port("out"),
                        call.port("ear"),
                        0.0,
                        PatchRole::Normal,
                        Some(call.clone()),
                    )
                });
                self.settle(board);
                patched?;
            }
            RouteAction::Patch {
                voice_to,
                ear_from,
                gain_db,
            } => {
                let mut board = lock(&self.switchboard);
                let mut made = Vec::new();
                let mut failures = Vec::new();
                for sink in voice_to {
                    match board.connect(
                        call.port("voice"),
                        sink.clone(),
                        *gain_db,
                        PatchRole::Normal,
                        Some(call.clone()),
                    ) {
                        Ok(p) => made.push(p),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                for source in ear_from {
                    match board.connect(
                        source.clone(),
                        call.port("ear"),
                        *gain_db,
                        PatchRole::Normal,
                        Some(call.clone()),
                    ) {
                        Ok(p) => made.push(p),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                board.refresh_lobby(&affected_calls(&made));
                self.settle(board);
                if !failures.is_empty() {
                    return Err(ActionError::Patches(failures.join("; ")));
                }
            }
            RouteAction::Conference { name } => {
                self.join_conference(call, name)?;
            }
            RouteAction::Jam { room } => {
                self.join_jam(call, room)?;
            }
            RouteAction::Broadcast { domain, gain_db } => {
                let broadcast = match broadcasts.get(domain) {
                    Some(Ok(node)) => node.clone(),
                    Some(Err(e)) => {
                        return Err(ActionError::Broadcast {
                            domain: domain.clone(),
                            reason: e.clone(),
                        });
                    }
                    None => {
                        return Err(ActionError::Broadcast {
                            domain: domain.clone(),
                            reason: "it was not prepared".into(),
                        });
                    }
                };
                let mut board = lock(&self.switchboard);
                let inputs = board
                    .patchbay()
                    .node(&broadcast)
                    .map(|entry| entry.inputs.clone())
                    .ok_or_else(|| ActionError::NodeGone {
                        node: broadcast.clone(),
                    })?;
                let patched = inputs.iter().try_for_each(|input| {
                    board
                        .connect(
                            call.port("voice"),
                            broadcast.port(input),
                            *gain_db,
                            PatchRole::Normal,
                            Some(call.clone()),
                        )
                        .map(drop)
                });
                board.refresh_lobby(std::slice::from_ref(call));
                self.settle(board);
                patched?;
                tracing::info!(%broadcast, domain, "caller on air over DNS");
            }
            RouteAction::Websocket {
                url,
                sample_rate,
                metadata,
            } => {
                let bot = NodeRef::new(NodeKind::Websocket, &format!("ws-{}-{index}", handle.id))?;
                let settings = WebsocketSettings::for_route(url, *sample_rate, metadata.as_ref())
                    .map_err(NodeError::from)?;
                let mut attributes = serde_json::Map::new();
                attributes.insert("callSid".into(), handle.id.to_string().into());
                attributes.insert("direction".into(), "inbound".into());
                let built = crate::kinds::websocket::websocket_node(
                    &bot,
                    settings,
                    &attributes,
                    Some(call.clone()),
                    Some(crate::websocket::DtmfSource {
                        call: handle.id,
                        events: self.events.subscribe(),
                    }),
                )?;
                let mut board = lock(&self.switchboard);
                let patched = board.install(built).and_then(|()| {
                    [
                        (call.port("voice"), bot.port("in")),
                        (bot.port("out"), call.port("ear")),
                    ]
                    .into_iter()
                    .try_for_each(|(source, sink)| {
                        board
                            .connect(source, sink, 0.0, PatchRole::Normal, Some(call.clone()))
                            .map(drop)
                    })
                });
                board.refresh_lobby(std::slice::from_ref(call));
                self.settle(board);
                patched?;
                tracing::info!(%bot, url, "caller streamed to a bot");
            }
        }
        Ok(())
    }

    /// The `dns` node broadcasting `domain`, created with the default settings (and
    /// not stored) if none does yet. Blocking: a new broadcast reserves its sequence
    /// numbers in the database.
    pub fn broadcast_node(&self, domain: &str) -> Result<NodeRef, NodeError> {
        let root =
            codecs::aodns::ZoneRoot::parse(domain).map_err(|e| NodeError::invalid("domain", e))?;
        let existing = || {
            lock(&self.switchboard).find_configured(|config| {
                matches!(config, NodeConfig::Dns { domain, .. }
                    if codecs::aodns::ZoneRoot::parse(domain).is_ok_and(|r| r == root))
            })
        };
        if let Some(node) = existing() {
            return Ok(node);
        }
        // `music.example.com.` -> `dns:music-example-com`.
        let name: String = root
            .as_str()
            .trim_end_matches('.')
            .chars()
            .map(|c| if c == '.' { '-' } else { c })
            .take(64)
            .collect();
        let config: NodeConfig = serde_json::from_value(serde_json::json!({
            "kind": "dns",
            "domain": root.as_str().trim_end_matches('.'),
        }))
        .map_err(|e| NodeError::invalid("domain", e))?;
        match self.create_configured_node(&name, &config, false) {
            Ok(node) => Ok(node),
            // Another call created it meanwhile.
            Err(e) => existing().ok_or(e),
        }
    }

    /// A route's recording path for this call, relative to the recordings directory.
    fn recording_path(&self, template: &str, handle: &CallHandle) -> PathBuf {
        let start = format_utc(handle.started_at);
        let expanded = template
            .replace("{uuid}", &handle.id.to_string())
            .replace("{start}", &start);
        PathBuf::from(expanded)
    }

    /// Puts `call` into conference `name`, creating it on demand (with
    /// `engine.conference_members` seats; it goes when its last caller hangs up).
    pub fn join_conference(&self, call: &NodeRef, name: &str) -> Result<(), ActionError> {
        let conference = NodeRef::new(NodeKind::Conference, name)?;
        {
            let mut board = lock(&self.switchboard);
            let created = if board.patchbay().node(&conference).is_none() {
                board.install(crate::kinds::conference::conference_node(
                    conference.clone(),
                    self.resources.conference_members,
                    true,
                    self.block,
                ))
            } else {
                Ok(())
            };
            self.settle(board);
            created?;
        }
        let k = self.take_seat(call, &conference, || ActionError::NodeGone {
            node: conference.clone(),
        })?;
        tracing::info!(conference = name, seat = k, "joined conference");
        Ok(())
    }

    /// Seats `call` in jam room `jam:<room>` (which must exist).
    pub fn join_jam(&self, call: &NodeRef, room: &str) -> Result<(), ActionError> {
        let jam = NodeRef::new(NodeKind::Jam, room)?;
        let k = self.take_seat(call, &jam, || ActionError::NoJamRoom { room: jam.clone() })?;
        tracing::info!(jam = room, seat = k, "joined jam room");
        Ok(())
    }

    /// Seats `call` in `node` with the switchboard's seat allocator; `missing` is the
    /// error when the node does not exist or seats no callers. Returns the seat.
    fn take_seat(
        &self,
        call: &NodeRef,
        node: &NodeRef,
        missing: impl FnOnce() -> ActionError,
    ) -> Result<usize, ActionError> {
        let mut board = lock(&self.switchboard);
        let seated = board.take_seat(call, node);
        self.settle(board);
        match seated {
            Ok(k) => Ok(k),
            Err(SeatError::NotSeating { .. }) => Err(missing()),
            Err(SeatError::Full { node, seats }) => Err(ActionError::Full { node, seats }),
            Err(SeatError::Patchbay(e)) => Err(e.into()),
        }
    }

    /// Brings each call's lobby patch in line with its other patches: a call with no
    /// deliberate patch hears the hold music; one with any loses it.
    pub fn refresh_lobby(&self, calls: &[NodeRef]) {
        let mut board = lock(&self.switchboard);
        board.refresh_lobby(calls);
        self.settle(board);
    }

    /// Records a DTMF digit from a call.
    pub fn dtmf(&self, call: Uuid, digit: char) {
        self.emit(Event::Dtmf {
            call,
            digit: digit.to_string(),
        });
    }

    /// Asks a live call to hang up (`00 00 00`, so the dialplan continues). Returns
    /// false if no such call is live.
    pub fn hangup(&self, id: &Uuid, why: &str) -> bool {
        match lock(&self.calls).get(id) {
            Some(handle) => {
                handle.request_hangup(why);
                true
            }
            None => false,
        }
    }

    /// Live calls.
    pub fn calls(&self) -> Vec<Arc<CallHandle>> {
        let mut calls: Vec<_> = lock(&self.calls).values().cloned().collect();
        calls.sort_by_key(|c| c.started);
        calls
    }

    /// Removes a call's nodes and patches; the session calls this when it ends.
    pub fn end_call(&self, handle: &Arc<CallHandle>, reason: EndReason) {
        let s = &handle.stats;
        // The call's counters move into the totals and the call leaves the registry
        // under the totals lock, which a scrape holds while it reads both
        // ([`Gateway::calls_and_totals`]): no scrape can count the call twice or not at
        // all, so counters never go backwards.
        let removed_from_registry = {
            let mut totals = lock(&self.totals);
            totals.frames_in += s.frames_in.load(Ordering::Relaxed);
            totals.frames_out += s.frames_out.load(Ordering::Relaxed);
            totals.uplink_gaps += s.uplink_gaps.load(Ordering::Relaxed);
            totals.downlink_underruns += s.downlink_underruns.load(Ordering::Relaxed);
            totals.writer_stalls += s.writer_stalls.load(Ordering::Relaxed);
            let mut calls = lock(&self.calls);
            match calls.get(&handle.id) {
                Some(current) if Arc::ptr_eq(current, handle) => calls.remove(&handle.id).is_some(),
                _ => false,
            }
        };
        if removed_from_registry {
            self.release_call(handle);
        }
        lock(&self.vad_calls).retain(|_, h| !Arc::ptr_eq(h, handle));
        self.set_talking(handle, false);
        tracing::info!(
            reason = ?reason,
            duration_ms = handle.duration().as_millis() as u64,
            frames_in = s.frames_in.load(Ordering::Relaxed),
            frames_out = s.frames_out.load(Ordering::Relaxed),
            uplink_gaps = s.uplink_gaps.load(Ordering::Relaxed),
            downlink_underruns = s.downlink_underruns.load(Ordering::Relaxed),
            uplink_discarded = s.uplink_discarded_samples.load(Ordering::Relaxed),
            uplink_correction_ppm = s.uplink_correction_ppm.load(Ordering::Relaxed) as i64,
            max_jitter_us = s.max_jitter_us.load(Ordering::Relaxed),
            writer_stalls = s.writer_stalls.load(Ordering::Relaxed),
            longest_writer_stall_ms = s.longest_writer_stall_ms.load(Ordering::Relaxed),
            "call ended"
        );
        let duration_ms = u64::try_from(handle.duration().as_millis()).unwrap_or(u64::MAX);
        let record = self.record_cdr(handle, &reason, duration_ms);
        self.emit(Event::CallEnded {
            call: handle.id,
            ended_by: reason.ended_by().to_owned(),
            reason: reason.describe(),
            duration_ms,
            record: Box::new(record),
        });
    }

    /// Takes the call's node and everything it owns out of the patchbay, frees its
    /// seats, and removes the nodes made for callers that it leaves empty.
    fn release_call(&self, handle: &CallHandle) {
        lock(&self.calls).retain(|_, c| !std::ptr::eq(Arc::as_ptr(c), handle));
        let mut board = lock(&self.switchboard);
        board.release_call(&handle.node);
        self.settle(board);
    }

    /// Ports of every node and the patches between them (for the API and tests).
    pub fn topology_snapshot(&self) -> (Vec<crate::patchbay::NodeEntry>, Vec<PatchEntry>) {
        lock(&self.switchboard).snapshot()
    }

    /// Connects two ports on behalf of an operator (lobby rules apply).
    pub fn connect(
        &self,
        source: PortRef,
        sink: PortRef,
        gain_db: f32,
    ) -> Result<PatchEntry, PatchbayError> {
        let mut board = lock(&self.switchboard);
        let patch = board.connect(source, sink, gain_db, PatchRole::Normal, None);
        if let Ok(patch) = &patch {
            board.refresh_lobby(&affected_calls(std::slice::from_ref(patch)));
        }
        self.settle(board);
        patch
    }

    /// Removes a patch on behalf of an operator.
    pub fn disconnect(&self, id: u64) -> Result<PatchEntry, PatchbayError> {
        let mut board = lock(&self.switchboard);
        let patch = board.disconnect(id);
        if let Ok(patch) = &patch {
            board.refresh_lobby(&affected_calls(std::slice::from_ref(patch)));
        }
        self.settle(board);
        patch
    }

    /// Live calls and the totals of ended ones, read together so that every call is
    /// counted exactly once (see [`Gateway::end_call`]).
    pub fn calls_and_totals(&self) -> (Vec<Arc<CallHandle>>, Totals) {
        let totals = lock(&self.totals);
        let calls = lock(&self.calls).values().cloned().collect();
        (calls, *totals)
    }

    /// Cumulative counters of ended calls.
    pub fn totals(&self) -> Totals {
        *lock(&self.totals)
    }

    /// Counts a refused connection.
    pub fn count_refused(&self) {
        lock(&self.totals).refused += 1;
    }

    /// Counts a connection from a source outside `audiosocket.allow`.
    pub fn count_source_refused(&self) {
        lock(&self.totals).source_refused += 1;
    }

    /// Counts a connection closed before its ID because too many were waiting for theirs.
    pub fn count_unidentified_refused(&self) {
        lock(&self.totals).unidentified_refused += 1;
    }

    /// Counts a failed `accept` of the AudioSocket listener.
    pub fn count_audiosocket_accept_error(&self) {
        lock(&self.totals).audiosocket_accept_errors += 1;
    }

    /// Counts an HTTP API connection closed at its connection limit.
    pub fn count_api_connection_refused(&self) {
        lock(&self.totals).api_connections_refused += 1;
    }

    /// Counts a failed `accept` of the HTTP API.
    pub fn count_api_accept_error(&self) {
        lock(&self.totals).api_accept_errors += 1;
    }

    /// The routes of the configuration file.
    pub fn static_routes(&self) -> &[Route] {
        &self.config.routes
    }

    /// Replaces the database's routes; the configuration file's stay first.
    pub fn set_stored_routes(&self, stored: Vec<Route>) {
        let mut routes = self.config.routes.clone();
        routes.extend(stored);
        *self
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = routes;
    }

    /// Where finished calls' records go (set once the database is open).
    pub fn set_cdr_queue(&self, queue: api::store::CdrQueue) {
        *lock(&self.cdrs) = Some(queue);
    }

    /// The CDR queue's counters, if there is one.
    pub fn cdr_stats(&self) -> Option<api::store::CdrQueueStats> {
        lock(&self.cdrs).as_ref().map(api::store::CdrQueue::stats)
    }

    /// Completes the call's record (the queue writes it) and returns it (for the
    /// `call_ended` event).
    fn record_cdr(
        &self,
        handle: &CallHandle,
        reason: &EndReason,
        duration_ms: u64,
    ) -> api::store::CdrRecord {
        let patches = lock(&self.call_patch_log)
            .remove(&handle.id)
            .unwrap_or_default();
        let mut record = call_record(handle, patches);
        record.duration_ms = duration_ms;
        record.ended_by = match reason {
            EndReason::Caller => api::store::EndedBy::Caller,
            EndReason::Gateway { .. } => api::store::EndedBy::Gateway,
            EndReason::Error { .. } => api::store::EndedBy::Error,
        };
        record.end_reason = reason.describe();
        let queue = lock(&self.cdrs).clone();
        if let Some(queue) = queue
            && !queue.push(api::store::CdrWrite::Close(record.clone()))
        {
            tracing::warn!(call = %handle.id, "CDR queue full: this call's record is not completed");
        }
        record
    }

    /// Puts a call just admitted on record (an open record, which says "interrupted"
    /// until the call's end completes it).
    fn open_cdr(&self, handle: &CallHandle) {
        let queue = lock(&self.cdrs).clone();
        let Some(queue) = queue else { return };
        if !queue.push(api::store::CdrWrite::Open(call_record(handle, Vec::new()))) {
            tracing::warn!(call = %handle.id, "CDR queue full: this call is not on record until it ends");
        }
    }

    /// Refreshes the open records of all live calls with their duration and counters
    /// so far, in one write: what the records keep if the gateway dies.
    pub fn refresh_cdrs(&self) {
        let queue = lock(&self.cdrs).clone();
        let Some(queue) = queue else { return };
        // Pushed under the registry lock: a call in this refresh leaves the registry
        // before its close is pushed, so the close is written after the refresh.
        let calls = lock(&self.calls);
        if calls.is_empty() {
            return;
        }
        let records = {
            let patches = lock(&self.call_patch_log);
            calls
                .values()
                .map(|handle| {
                    call_record(handle, patches.get(&handle.id).cloned().unwrap_or_default())
                })
                .collect()
        };
        queue.push(api::store::CdrWrite::Refresh(records));
    }

    /// Remembers, for the call's record, every patch a call had.
    fn log_call_patch(&self, source: &PortRef, sink: &PortRef) {
        let mut log = lock(&self.call_patch_log);
        for node in [source.node(), sink.node()] {
            if node.kind() == NodeKind::Call
                && let Ok(id) = Uuid::parse_str(node.name())
            {
                let entry = log.entry(id).or_default();
                let text = format!("{source} -> {sink}");
                if entry.len() < 64 && !entry.contains(&text) {
                    entry.push(text);
                }
            }
        }
    }

    /// Creates a node from an API configuration, with the builder of its kind.
    pub fn create_configured_node(
        &self,
        name: &str,
        config: &NodeConfig,
        persistent: bool,
    ) -> Result<NodeRef, NodeError> {
        let node = NodeRef::new(config.kind(), name).map_err(|e| NodeError::invalid("name", e))?;
        if lock(&self.switchboard).patchbay().node(&node).is_some() {
            return Err(NodeError::Exists(format!("{node} exists already")));
        }
        self.check_node_capacity()?;
        let built = self.kinds.build(&node, config, &self.resources)?;
        let mut board = lock(&self.switchboard);
        let installed = board.install(built);
        if installed.is_ok() {
            board.set_configured(&node, config.clone(), persistent);
        }
        self.settle(board);
        installed.map_err(|e| NodeError::invalid("name", e))?;
        self.emit(Event::NodeCreated { node: node.clone() });
        Ok(node)
    }

    /// Adds a node built outside the kind registry (see [`crate::kinds`]). If the engine
    /// refuses the node, its service is stopped and the error returned.
    pub fn add_built_node(&self, built: BuiltNode) -> Result<(), PatchbayError> {
        let mut board = lock(&self.switchboard);
        let installed = board.install(built);
        self.settle(board);
        installed
    }

    /// Every node service, for metrics.
    pub fn node_services(&self) -> Vec<(NodeRef, Arc<dyn NodeService>)> {
        lock(&self.switchboard).services()
    }

    /// Removes a node that is not a call, with its patches.
    pub fn delete_node(&self, node: &NodeRef) -> Result<(), NodeError> {
        if node.kind() == NodeKind::Call {
            return Err(NodeError::Invalid {
                message: "a call ends with a hangup, not by removing its node".into(),
                field: None,
            });
        }
        let mut board = lock(&self.switchboard);
        let removed = board.remove_node(node);
        self.settle(board);
        removed.map_err(|e| match e {
            PatchbayError::UnknownNode { .. } => NodeError::NotFound(e.to_string()),
            other => NodeError::Unavailable(other.to_string()),
        })
    }

    /// The I/O side of a node, if it has one.
    pub fn node_service(&self, node: &NodeRef) -> Option<Arc<dyn NodeService>> {
        lock(&self.switchboard).service(node)
    }

    /// Records a node's configuration after a live change (the node keeps running).
    pub fn set_node_config(&self, node: &NodeRef, config: NodeConfig, persistent: bool) {
        lock(&self.switchboard).set_configured(node, config, persistent);
    }

    /// A node's API configuration and whether it is stored, if it has one.
    pub fn node_config(&self, node: &NodeRef) -> Option<(NodeConfig, bool)> {
        lock(&self.switchboard).configured(node).cloned()
    }

    /// Kind-specific status of a node, for the API; for a node whose seats are held
    /// until hangup, also the calls holding them (`members`).
    pub fn node_status(&self, node: &NodeRef) -> Option<serde_json::Value> {
        let (service, holders) = {
            let board = lock(&self.switchboard);
            (board.service(node)?, board.seat_holders(node))
        };
        let mut status = service.status();
        if let (Some(holders), Some(object)) = (holders, status.as_object_mut()) {
            let members: Vec<String> = holders.iter().map(ToString::to_string).collect();
            object.insert("members".into(), serde_json::json!(members));
        }
        Some(status)
    }

    /// Marks a patch as stored in the database.
    pub fn set_patch_persistent(
        &self,
        id: u64,
        persistent: bool,
    ) -> Result<PatchEntry, PatchbayError> {
        lock(&self.switchboard).set_patch_persistent(id, persistent)
    }

    /// Changes a patch's gain.
    pub fn set_patch_gain(&self, id: u64, gain_db: f32) -> Result<PatchEntry, PatchbayError> {
        lock(&self.switchboard).set_patch_gain(id, gain_db)
    }

    /// Records voice activity of a call; emits talk start/stop on a change.
    pub fn set_talking(&self, handle: &CallHandle, talking: bool) {
        if handle.talking.swap(talking, Ordering::Relaxed) != talking {
            self.emit(if talking {
                Event::TalkStart { call: handle.id }
            } else {
                Event::TalkStop { call: handle.id }
            });
        }
    }

    /// Whether anyone listens to events (level meters are only built then).
    pub fn has_subscribers(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Emits an event.
    pub fn publish(&self, event: Event) {
        self.emit(event);
    }

    /// Graceful shutdown, part one: every call is asked to hang up. The listener waits
    /// for the sessions, then calls [`Gateway::finish`].
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
        for call in self.calls() {
            call.request_hangup("gateway shutting down");
        }
    }

    /// Graceful shutdown, part two (after every session ended): stops and joins every
    /// thread the gateway owns, in this order, then cancels the root token. Blocking.
    ///
    /// 1. node services (jam rooms, AES67 flows, AoDNS broadcasts): their socket and
    ///    encoder threads;
    /// 2. the DNS server (ending AoDNS grace periods), then the AES67 media and SAP
    ///    threads (SAP deletions sent);
    /// 3. the voice-activity detector (no call feeds it any more);
    /// 4. the engine thread (applying the last removals), then its reaper;
    /// 5. the disk writer (every recording finalized);
    /// 6. the media clock (the PTP follower), which the AES67 threads read until 2.
    pub fn finish(&self) {
        let services = lock(&self.switchboard).drain_services();
        for service in services {
            service.stop();
        }
        self.resources.dns.stop();
        self.resources.aes67.shutdown();
        if let Some(vad) = self.vad.get() {
            vad.stop();
        }
        if let Some(engine) = lock(&self.engine_thread).take() {
            engine.stop();
        }
        let _ = self.reaper.join();
        self.resources.recordings.shutdown();
        self.clock.stop();
        self.root.cancel();
    }
}

/// The call's record as of now: duration and counters so far, ending "interrupted"
/// (what an open record says); the call's end overwrites how it ended.
fn call_record(handle: &CallHandle, patches: Vec<String>) -> api::store::CdrRecord {
    let s = &handle.stats;
    api::store::CdrRecord {
        uuid: handle.id,
        started_at: chrono::DateTime::<chrono::Utc>::from(handle.started_at),
        ended_at: chrono::Utc::now(),
        duration_ms: u64::try_from(handle.duration().as_millis()).unwrap_or(u64::MAX),
        caller_rate_hz: handle.caller_rate(),
        ended_by: api::store::EndedBy::Interrupted,
        end_reason: api::store::INTERRUPTED_REASON.into(),
        frames_in: s.frames_in.load(Ordering::Relaxed),
        frames_out: s.frames_out.load(Ordering::Relaxed),
        uplink_gaps: s.uplink_gaps.load(Ordering::Relaxed),
        downlink_underruns: s.downlink_underruns.load(Ordering::Relaxed),
        max_jitter_ms: s.max_jitter_us.load(Ordering::Relaxed) as f64 / 1000.0,
        route: handle.route.clone(),
        patches,
        peer: Some(handle.peer),
    }
}

/// `YYYYmmddTHHMMSSZ` for a wall-clock time (recording names); times before 1970 read
/// as 1970-01-01.
fn format_utc(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time.max(SystemTime::UNIX_EPOCH))
        .format("%Y%m%dT%H%M%SZ")
        .to_string()
}

/// What the topology tests (`crate::topology_tests`) reach inside the gateway for.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// Patches `source` to `sink` as a monitor (which, like a recording, leaves a call
    /// in the lobby).
    pub(crate) fn connect_monitor(gateway: &Gateway, source: PortRef, sink: PortRef) {
        let mut board = lock(&gateway.switchboard);
        board
            .connect(source, sink, 0.0, PatchRole::Monitor, None)
            .unwrap();
        gateway.settle(board);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_nodes_are_refused_while_the_engine_is_busy_or_full() {
        let mut config = Config::default();
        config.engine.realtime_priority = false;
        config.engine.lock_memory = false;
        config.engine.max_nodes = 2;
        config.engine.max_load_percent = 50;
        let recordings = tempfile::tempdir().unwrap();
        config.recordings.dir = recordings.path().to_path_buf();
        let gateway = Gateway::start(config).unwrap();
        let conference = NodeConfig::Conference { members: 2 };

        // The engine's real blocks take microseconds; these stand for a second of blocks
        // taking 0.9 ms of each 1 ms period.
        for _ in 0..5 * crate::engine::stats::RECENT_BLOCKS {
            gateway
                .engine_stats
                .record_block_time(Duration::from_micros(900));
        }
        let busy = gateway.create_configured_node("first", &conference, false);
        match busy {
            Err(e @ NodeError::EngineBusy { .. }) => {
                assert!(e.to_string().contains("engine.max_load_percent"), "{e}")
            }
            other => panic!("a busy engine took a node: {other:?}"),
        }
        for _ in 0..10 * crate::engine::stats::RECENT_BLOCKS {
            gateway.engine_stats.record_block_time(Duration::ZERO);
        }
        gateway
            .create_configured_node("first", &conference, false)
            .unwrap();
        gateway
            .create_configured_node("second", &conference, false)
            .unwrap();
        match gateway.create_configured_node("third", &conference, false) {
            Err(NodeError::Unavailable(message)) => {
                assert!(message.contains("engine.max_nodes"), "{message}")
            }
            other => panic!("a third node was taken beyond max_nodes = 2: {other:?}"),
        }
        gateway
            .delete_node(&NodeRef::new(NodeKind::Conference, "first").unwrap())
            .unwrap();
        gateway
            .create_configured_node("third", &conference, false)
            .unwrap();
        gateway.begin_shutdown();
        gateway.finish();
    }

    fn test_gateway(recordings: &Path) -> Arc<Gateway> {
        let mut config = Config::default();
        config.engine.realtime_priority = false;
        config.engine.lock_memory = false;
        config.engine.conference_members = 2;
        config.recordings.dir = recordings.to_path_buf();
        Gateway::start(config).unwrap()
    }

    fn admit(gateway: &Gateway) -> AdmittedCall {
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        gateway.admit_call(Uuid::new_v4(), peer).unwrap()
    }

    fn members(gateway: &Gateway, node: &NodeRef) -> Option<Vec<String>> {
        let status = gateway.node_status(node)?;
        Some(
            status["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap().to_owned())
                .collect(),
        )
    }

    #[test]
    fn an_on_demand_conference_seats_callers_and_goes_with_the_last_one() {
        let recordings = tempfile::tempdir().unwrap();
        let gateway = test_gateway(recordings.path());
        let (a, b, c) = (admit(&gateway), admit(&gateway), admit(&gateway));
        let room = NodeRef::new(NodeKind::Conference, "room").unwrap();
        gateway.join_conference(&a.handle.node, "room").unwrap();
        gateway.join_conference(&b.handle.node, "room").unwrap();
        match gateway.join_conference(&c.handle.node, "room") {
            Err(ActionError::Full { seats: 2, .. }) => {}
            other => panic!("a third caller got a seat of two: {other:?}"),
        }
        assert_eq!(
            members(&gateway, &room).unwrap(),
            [a.handle.node.to_string(), b.handle.node.to_string()]
        );
        assert_eq!(gateway.node_status(&room).unwrap()["capacity"], 2);
        // Seat k: the caller's voice into in<k>, out<k> back to its ear.
        let (_, patches) = gateway.topology_snapshot();
        let seat_patches: Vec<(String, String)> = patches
            .iter()
            .filter(|p| p.source.node() == &room || p.sink.node() == &room)
            .map(|p| (p.source.to_string(), p.sink.to_string()))
            .collect();
        for (k, call) in [(1, &a), (2, &b)] {
            let call = &call.handle.node;
            assert!(seat_patches.contains(&(format!("{call}.voice"), format!("{room}.in{k}"))));
            assert!(seat_patches.contains(&(format!("{room}.out{k}"), format!("{call}.ear"))));
        }
        // The first caller leaves: its seat is free again, and the third takes it.
        gateway.end_call(&a.handle, EndReason::Caller);
        assert_eq!(
            members(&gateway, &room).unwrap(),
            [b.handle.node.to_string()]
        );
        gateway.join_conference(&c.handle.node, "room").unwrap();
        gateway.end_call(&b.handle, EndReason::Caller);
        assert!(
            gateway.node_status(&room).is_some(),
            "one caller is still in it"
        );
        gateway.end_call(&c.handle, EndReason::Caller);
        assert!(
            gateway.node_status(&room).is_none(),
            "the on-demand conference outlived its last caller"
        );
        gateway.begin_shutdown();
        gateway.finish();
    }

    #[test]
    fn a_standing_conference_stays_when_it_empties_and_jam_seats_need_a_room() {
        let recordings = tempfile::tempdir().unwrap();
        let gateway = test_gateway(recordings.path());
        let stage = gateway
            .create_configured_node("stage", &NodeConfig::Conference { members: 3 }, false)
            .unwrap();
        let a = admit(&gateway);
        gateway.join_conference(&a.handle.node, "stage").unwrap();
        assert_eq!(
            members(&gateway, &stage).unwrap(),
            [a.handle.node.to_string()]
        );
        gateway.end_call(&a.handle, EndReason::Caller);
        assert_eq!(members(&gateway, &stage).unwrap(), Vec::<String>::new());
        assert_eq!(gateway.node_status(&stage).unwrap()["capacity"], 3);

        let b = admit(&gateway);
        match gateway.join_jam(&b.handle.node, "nowhere") {
            Err(ActionError::NoJamRoom { .. }) => {}
            other => panic!("seated in a room that does not exist: {other:?}"),
        }
        gateway.end_call(&b.handle, EndReason::Caller);
        gateway.begin_shutdown();
        gateway.finish();
    }

    #[test]
    fn formats_utc_timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_763_700_000);
        assert_eq!(format_utc(t), "20251121T044000Z");
        assert_eq!(format_utc(SystemTime::UNIX_EPOCH), "19700101T000000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_utc(leap), "20000229T000000Z");
    }
}
