//! The [`Control`] trait: what the REST API needs from the running gateway.
//!
//! `api` never imports the gateway (ARCHITECTURE §4: `api` declares, `gateway`
//! implements). The views here are plain serializable snapshots; nothing in them holds a
//! lock or a reference into the media plane.

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::model::{NodeKind, NodeRef, PortRef, Route};

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    /// Nothing claims it: it hears the hold music (or silence).
    Lobby,
    /// Patched to something.
    Patched,
    /// Hanging up.
    Ending,
}

/// Peak and RMS level of a signal over the last 100 ms, in dBFS (AES17: a full-scale
/// sine reads 0 dBFS); -120 for digital silence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Level {
    /// Peak level.
    pub peak_dbfs: f32,
    /// RMS level.
    pub rms_dbfs: f32,
}

/// Media counters of a call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallCounters {
    /// Audio messages received from Asterisk.
    pub frames_in: u64,
    /// Audio messages sent to Asterisk.
    pub frames_out: u64,
    /// Times the caller's audio ran dry while playing.
    pub uplink_gaps: u64,
    /// Reply frames padded with silence because the engine was late.
    pub downlink_underruns: u64,
    /// Largest deviation of a frame's arrival from its nominal time, in ms.
    pub max_jitter_ms: f64,
    /// DTMF digits received.
    pub dtmf_digits: u64,
    /// Messages skipped (unknown kinds, empty audio...).
    pub skipped_messages: u64,
    /// Current drift correction of the uplink resampler, in ppm.
    pub uplink_correction_ppm: i64,
}

/// A live call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallInfo {
    /// The AudioSocket UUID.
    pub uuid: Uuid,
    /// Its node, `call:<uuid>`.
    #[schema(value_type = String, example = "call:40325ec2-5efd-4bd3-805f-53576e581d13")]
    pub node: NodeRef,
    /// Asterisk's address.
    pub peer: String,
    /// The caller's sample rate in Hz (0 until its first audio message).
    pub caller_rate_hz: u32,
    /// The AudioSocket kind byte of the caller's audio (0 until known).
    pub kind: u8,
    /// Lobby, patched or ending.
    pub state: CallState,
    /// When it connected (RFC 3339, UTC).
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// How long it has been connected, in ms.
    pub duration_ms: u64,
    /// The route applied when it connected.
    pub route: Option<String>,
    /// Whether voice activity detection hears the caller talking.
    pub talking: bool,
    /// Level of the caller's voice.
    pub voice_level: Level,
    /// Level of what the caller hears.
    pub ear_level: Level,
    /// Its patches.
    pub patches: Vec<PatchInfo>,
    /// Media counters.
    pub counters: CallCounters,
}

/// Why a patch exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PatchRole {
    /// Made on purpose by a route or an operator: takes a call out of the lobby.
    Normal,
    /// The lobby's hold-music patch.
    Lobby,
    /// A recording tap.
    Monitor,
}

/// A patch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PatchInfo {
    /// Its id (live patches are numbered for the life of the process).
    pub id: u64,
    /// The output port it reads.
    #[schema(value_type = String, example = "player:hold.out")]
    pub source: PortRef,
    /// The input port it feeds.
    #[schema(value_type = String, example = "call:40325ec2-5efd-4bd3-805f-53576e581d13.ear")]
    pub sink: PortRef,
    /// Gain in dB.
    pub gain_db: f32,
    /// Why it exists.
    pub role: PatchRole,
    /// The call whose end removes it.
    #[schema(value_type = Option<String>)]
    pub owner: Option<NodeRef>,
    /// Whether it is stored and restored at start-up.
    pub persistent: bool,
}

/// A node and its ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    /// Its reference, `kind:name`.
    #[schema(value_type = String, example = "player:hold")]
    pub node: NodeRef,
    /// Its kind.
    pub kind: NodeKind,
    /// Output port names.
    pub outputs: Vec<String>,
    /// Input port names.
    pub inputs: Vec<String>,
    /// The call whose end removes it, if any.
    #[schema(value_type = Option<String>)]
    pub owner: Option<NodeRef>,
    /// Whether it is stored and restored at start-up.
    pub persistent: bool,
    /// Its configuration (configurable kinds).
    #[schema(value_type = Option<Object>)]
    pub config: Option<serde_json::Value>,
    /// Kind-specific state and statistics.
    #[schema(value_type = Option<Object>)]
    pub status: Option<serde_json::Value>,
}

/// Configuration of a node created through the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum NodeConfig {
    /// A WAV player (output `out`).
    Player {
        /// The WAV file (on the gateway's machine).
        #[schema(min_length = 1)]
        file: String,
        /// Loop forever.
        #[serde(default, rename = "loop")]
        looped: bool,
        /// Gain in dB (-96..=24).
        #[serde(default)]
        #[schema(minimum = -96, maximum = 24)]
        gain_db: f32,
    },
    /// A WAV recorder (input `in`, or `in1..inN`).
    Recorder {
        /// The file; relative paths are under the recordings directory.
        #[schema(min_length = 1)]
        path: String,
        /// Channels (1-8).
        #[serde(default = "one")]
        #[schema(minimum = 1, maximum = 8)]
        channels: u16,
    },
    /// A mix-minus conference (`in1..inN`, `out1..outN`).
    Conference {
        /// Member capacity (2-256).
        #[serde(default = "sixteen")]
        #[schema(minimum = 2, maximum = 256)]
        members: u16,
    },
}

fn one() -> u16 {
    1
}

fn sixteen() -> u16 {
    16
}

impl NodeConfig {
    /// The node kind this configures.
    pub fn kind(&self) -> NodeKind {
        match self {
            NodeConfig::Player { .. } => NodeKind::Player,
            NodeConfig::Recorder { .. } => NodeKind::Recorder,
            NodeConfig::Conference { .. } => NodeKind::Conference,
        }
    }

    /// Checks ranges serde cannot; returns the offending field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self {
            NodeConfig::Player { file, gain_db, .. } => {
                if file.trim().is_empty() {
                    return Err(("file", "must name a WAV file".into()));
                }
                if !gain_db.is_finite() || !(-96.0..=24.0).contains(gain_db) {
                    return Err(("gain_db", format!("{gain_db} is out of range (-96..=24)")));
                }
            }
            NodeConfig::Recorder { path, channels } => {
                if !crate::model::is_contained_path(path) {
                    return Err((
                        "path",
                        "must be a relative path inside the recordings directory (no `..`)".into(),
                    ));
                }
                if !(1..=8).contains(channels) {
                    return Err(("channels", format!("{channels} is out of range (1..=8)")));
                }
            }
            NodeConfig::Conference { members } => {
                if !(2..=256).contains(members) {
                    return Err(("members", format!("{members} is out of range (2..=256)")));
                }
            }
        }
        Ok(())
    }
}

/// Something that happened, on the event stream (`GET /v1/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Event {
    /// A call connected and was identified.
    CallStarted {
        /// Its UUID.
        call: Uuid,
        /// Asterisk's address.
        peer: String,
        /// The route applied, if any.
        route: Option<String>,
    },
    /// A call's state changed.
    CallState {
        /// Its UUID.
        call: Uuid,
        /// The new state.
        state: CallState,
    },
    /// A call ended.
    CallEnded {
        /// Its UUID.
        call: Uuid,
        /// Who ended it: `caller`, `gateway` or `error`.
        ended_by: String,
        /// Why, in words.
        reason: String,
        /// How long it lasted, in ms.
        duration_ms: u64,
    },
    /// A DTMF digit arrived.
    Dtmf {
        /// The call.
        call: Uuid,
        /// The digit.
        digit: String,
    },
    /// Voice activity detection heard the caller start talking.
    TalkStart {
        /// The call.
        call: Uuid,
    },
    /// Voice activity detection heard the caller stop talking.
    TalkStop {
        /// The call.
        call: Uuid,
    },
    /// Level meters of every live call (about 10 per second while someone listens).
    Levels {
        /// One entry per call.
        calls: Vec<CallLevels>,
    },
    /// A patch was made.
    PatchCreated {
        /// The patch.
        patch: PatchInfo,
    },
    /// A patch was removed.
    PatchRemoved {
        /// Its id.
        id: u64,
    },
    /// A node was created.
    NodeCreated {
        /// The node.
        #[schema(value_type = String)]
        node: NodeRef,
    },
    /// A node was removed.
    NodeRemoved {
        /// The node.
        #[schema(value_type = String)]
        node: NodeRef,
    },
    /// A recording was closed.
    RecordingFinished {
        /// The file.
        path: String,
        /// Frames written.
        frames: u64,
        /// Why it is incomplete, if it is.
        error: Option<String>,
    },
    /// The subscriber fell behind and missed this many events.
    Lagged {
        /// Events missed.
        missed: u64,
    },
}

impl Event {
    /// The SSE event name (the `type` tag).
    pub fn name(&self) -> &'static str {
        match self {
            Event::CallStarted { .. } => "call_started",
            Event::CallState { .. } => "call_state",
            Event::CallEnded { .. } => "call_ended",
            Event::Dtmf { .. } => "dtmf",
            Event::TalkStart { .. } => "talk_start",
            Event::TalkStop { .. } => "talk_stop",
            Event::Levels { .. } => "levels",
            Event::PatchCreated { .. } => "patch_created",
            Event::PatchRemoved { .. } => "patch_removed",
            Event::NodeCreated { .. } => "node_created",
            Event::NodeRemoved { .. } => "node_removed",
            Event::RecordingFinished { .. } => "recording_finished",
            Event::Lagged { .. } => "lagged",
        }
    }
}

/// One call's meters in a [`Event::Levels`] event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallLevels {
    /// The call.
    pub call: Uuid,
    /// Its voice.
    pub voice: Level,
    /// What it hears.
    pub ear: Level,
    /// Whether it is talking.
    pub talking: bool,
}

/// Why the gateway refused a change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The thing does not exist.
    #[error("{message}")]
    NotFound {
        /// What was missing.
        message: String,
    },
    /// The request is well-formed but cannot be applied (unknown port, wrong direction,
    /// a file that is not a WAV file...).
    #[error("{message}")]
    Unprocessable {
        /// Why.
        message: String,
        /// The request field at fault, if one is.
        field: Option<String>,
    },
    /// It exists already.
    #[error("{message}")]
    Conflict {
        /// What.
        message: String,
    },
    /// The gateway cannot do it right now (shutting down).
    #[error("{message}")]
    Unavailable {
        /// Why.
        message: String,
    },
}

/// What the REST API needs from the running gateway.
pub trait Control: Send + Sync + 'static {
    /// Live calls, oldest first.
    fn calls(&self) -> Vec<CallInfo>;
    /// One live call.
    fn call(&self, id: Uuid) -> Option<CallInfo>;
    /// Hangs a call up gracefully (`00 00 00`: the dialplan continues). False if no
    /// such call is live.
    fn hangup(&self, id: Uuid) -> bool;
    /// Every node.
    fn nodes(&self) -> Vec<NodeInfo>;
    /// One node.
    fn node(&self, node: &NodeRef) -> Option<NodeInfo>;
    /// Creates a configurable node. May block briefly (loading a WAV file): the API
    /// calls it from a blocking thread.
    fn create_node(
        &self,
        name: &str,
        config: &NodeConfig,
        persistent: bool,
    ) -> Result<NodeInfo, ControlError>;
    /// Removes a node (and its patches).
    fn delete_node(&self, node: &NodeRef) -> Result<(), ControlError>;
    /// Every patch.
    fn patches(&self) -> Vec<PatchInfo>;
    /// Connects an output port to an input port.
    fn connect(
        &self,
        source: PortRef,
        sink: PortRef,
        gain_db: f32,
        persistent: bool,
    ) -> Result<PatchInfo, ControlError>;
    /// Changes a patch's gain.
    fn set_patch_gain(&self, id: u64, gain_db: f32) -> Result<PatchInfo, ControlError>;
    /// Removes a patch.
    fn disconnect(&self, id: u64) -> Result<PatchInfo, ControlError>;
    /// Routes defined in the configuration file (read-only through the API).
    fn static_routes(&self) -> Vec<Route>;
    /// Replaces the routes that come from the database (applied to calls that connect
    /// from now on).
    fn set_stored_routes(&self, routes: Vec<Route>);
    /// Subscribes to events.
    fn subscribe(&self) -> broadcast::Receiver<Event>;
    /// Appends the gateway's metrics in Prometheus text format.
    fn render_metrics(&self, out: &mut String);
    /// Whether the media plane is running and accepting calls.
    fn ready(&self) -> bool;
}
