//! Node and port references, and the route model.
//!
//! A port is written `kind:name.port`, for example
//! `call:40325ec2-5efd-4bd3-805f-53576e581d13.voice`, `player:hold.out` or
//! `conference:desk.in3`. Calls are named by their AudioSocket UUID; every other node
//! by a short name of letters, digits, `-` and `_`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The kinds of node the patchbay knows.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NodeKind {
    /// A phone call (outputs `voice`, `heard`; input `ear`).
    Call,
    /// A WAV player (output `out`).
    Player,
    /// A WAV recorder (inputs `in` or `in1..inN`).
    Recorder,
    /// An N-way mix-minus (inputs `in1..inN`, outputs `out1..outN`).
    Conference,
    /// An AES67 transmit flow (inputs `ch1..chN`).
    Aes67Tx,
    /// An AES67 receive flow (outputs `ch1..chN`).
    Aes67Rx,
    /// An RTJam room, joined as a jammer or hosted (one input and one mix-minus
    /// output per seat).
    Jam,
    /// An AoDNS broadcast (input `in`).
    Dns,
    /// A WebSocket media stream to a voice bot, jambonz `listen` protocol (input `in`
    /// to the bot, output `out` from it).
    Websocket,
}

impl NodeKind {
    /// The word used in references.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Call => "call",
            NodeKind::Player => "player",
            NodeKind::Recorder => "recorder",
            NodeKind::Conference => "conference",
            NodeKind::Aes67Tx => "aes67tx",
            NodeKind::Aes67Rx => "aes67rx",
            NodeKind::Jam => "jam",
            NodeKind::Dns => "dns",
            NodeKind::Websocket => "websocket",
        }
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a reference or a route did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The node kind is not one we know.
    #[error("unknown node kind {kind:?} (expected call, player, recorder or conference)")]
    UnknownKind {
        /// What was given.
        kind: String,
    },
    /// The text is not `kind:name` / `kind:name.port`.
    #[error("{text:?} is not a {expected} reference (write it as {example})")]
    Malformed {
        /// What was given.
        text: String,
        /// "node" or "port".
        expected: &'static str,
        /// A correct example.
        example: &'static str,
    },
    /// A node name has characters or a length we do not accept.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// The node kind.
        kind: NodeKind,
        /// What was given.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A route field is invalid.
    #[error("invalid route {route:?}: {reason}")]
    InvalidRoute {
        /// The route's name.
        route: String,
        /// What is wrong.
        reason: String,
    },
}

/// Longest accepted node name (UUIDs are 36).
pub const MAX_NAME_LEN: usize = 64;

/// A reference to one node: its kind and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeRef {
    kind: NodeKind,
    name: String,
}

impl NodeRef {
    /// Validates a name for a kind. Calls must be named by a UUID (stored lowercase
    /// hyphenated); other nodes by 1-64 characters of `[A-Za-z0-9_-]`.
    pub fn new(kind: NodeKind, name: &str) -> Result<NodeRef, ModelError> {
        let invalid = |reason| ModelError::InvalidName {
            kind,
            name: name.to_owned(),
            reason,
        };
        if kind == NodeKind::Call {
            let uuid = Uuid::parse_str(name).map_err(|_| invalid("a call is named by its UUID"))?;
            return Ok(NodeRef::call(uuid));
        }
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(invalid("must be 1 to 64 characters long"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid("only letters, digits, '-' and '_' are allowed"));
        }
        Ok(NodeRef {
            kind,
            name: name.to_owned(),
        })
    }

    /// The node of the call with this UUID.
    pub fn call(uuid: Uuid) -> NodeRef {
        NodeRef {
            kind: NodeKind::Call,
            name: uuid.hyphenated().to_string(),
        }
    }

    /// The node's kind.
    pub fn kind(&self) -> NodeKind {
        self.kind
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A port of this node.
    pub fn port(&self, port: &str) -> PortRef {
        PortRef {
            node: self.clone(),
            port: port.to_owned(),
        }
    }
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

fn parse_kind(text: &str) -> Result<NodeKind, ModelError> {
    match text {
        "call" => Ok(NodeKind::Call),
        "player" => Ok(NodeKind::Player),
        "recorder" => Ok(NodeKind::Recorder),
        "conference" => Ok(NodeKind::Conference),
        "aes67tx" => Ok(NodeKind::Aes67Tx),
        "aes67rx" => Ok(NodeKind::Aes67Rx),
        "jam" => Ok(NodeKind::Jam),
        "dns" => Ok(NodeKind::Dns),
        "websocket" => Ok(NodeKind::Websocket),
        other => Err(ModelError::UnknownKind {
            kind: other.to_owned(),
        }),
    }
}

impl FromStr for NodeRef {
    type Err = ModelError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, name) = text.split_once(':').ok_or_else(|| ModelError::Malformed {
            text: text.to_owned(),
            expected: "node",
            example: "player:hold",
        })?;
        NodeRef::new(parse_kind(kind)?, name)
    }
}

/// A reference to one port of one node. Whether it is an input or an output is decided
/// by the node's kind; the patchbay checks it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRef {
    node: NodeRef,
    port: String,
}

impl PortRef {
    /// The node.
    pub fn node(&self) -> &NodeRef {
        &self.node
    }

    /// The port name.
    pub fn port(&self) -> &str {
        &self.port
    }
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.port)
    }
}

impl FromStr for PortRef {
    type Err = ModelError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || ModelError::Malformed {
            text: text.to_owned(),
            expected: "port",
            example: "player:hold.out",
        };
        let (node, port) = text.rsplit_once('.').ok_or_else(malformed)?;
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(malformed());
        }
        Ok(PortRef {
            node: node.parse()?,
            port: port.to_owned(),
        })
    }
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_str!(NodeRef);
serde_via_str!(PortRef);

/// Which calls a route applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RouteMatch {
    /// Exactly this UUID (registered before the call connects, typically).
    Uuid(Uuid),
    /// UUIDs whose lowercase hyphenated form starts with this text (e.g. `"0000"` for a
    /// block of UUIDs a dialplan reserves for a show).
    UuidPrefix(String),
    /// Every call that no other route matched.
    Default,
}

impl RouteMatch {
    /// Whether `uuid` matches.
    pub fn matches(&self, uuid: &Uuid) -> bool {
        match self {
            RouteMatch::Uuid(expected) => expected == uuid,
            RouteMatch::UuidPrefix(prefix) => {
                let mut buffer = Uuid::encode_buffer();
                uuid.hyphenated()
                    .encode_lower(&mut buffer)
                    .starts_with(prefix.as_str())
            }
            RouteMatch::Default => true,
        }
    }

    /// How specific the match is: exact beats prefix beats default, and a longer prefix
    /// beats a shorter one. Used to order routes of equal priority.
    pub fn specificity(&self) -> usize {
        match self {
            RouteMatch::Uuid(_) => 1000,
            RouteMatch::UuidPrefix(prefix) => 100 + prefix.len(),
            RouteMatch::Default => 0,
        }
    }
}

/// What to record when a route records a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordChannels {
    /// The caller's voice, mono.
    #[default]
    Voice,
    /// Stereo: the caller's voice left, what the caller hears right.
    Both,
}

fn zero_db() -> f32 {
    0.0
}

/// One thing a route does to a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "action", deny_unknown_fields)]
pub enum RouteAction {
    /// Record the call to a WAV file. `path` may use `{uuid}` and `{start}` (UTC start
    /// time, `YYYYmmddTHHMMSSZ`); relative paths are under the recordings directory.
    Record {
        /// File name template.
        path: String,
        /// What to record.
        #[serde(default)]
        channels: RecordChannels,
    },
    /// Play a WAV file into the caller's ear.
    Play {
        /// The file: a relative path inside the gateway's media directory (`media.dir`).
        file: String,
        /// Loop it until the call ends.
        #[serde(default, rename = "loop")]
        looped: bool,
        /// Gain in dB.
        #[serde(default = "zero_db")]
        gain_db: f32,
    },
    /// Patch the caller to other nodes' ports.
    Patch {
        /// Where the caller's voice goes (an input port).
        #[serde(default)]
        #[schema(value_type = Vec<String>)]
        voice_to: Vec<PortRef>,
        /// What the caller hears (output ports).
        #[serde(default)]
        #[schema(value_type = Vec<String>)]
        ear_from: Vec<PortRef>,
        /// Gain in dB for these patches.
        #[serde(default = "zero_db")]
        gain_db: f32,
    },
    /// Join a named conference (created when its first member arrives, removed when the
    /// last one leaves). Two callers in one conference are a bridge.
    Conference {
        /// The conference's name.
        name: String,
    },
    /// Join jam room `jam:<room>` (a node created through the API): the caller takes a
    /// free seat (`voice` to `in<k>`, `out<k>` to `ear`) and is a jammer of the room
    /// until the call ends.
    Jam {
        /// The jam node's name.
        room: String,
    },
    /// Put the caller on air in the AoDNS broadcast of `domain` (DNS TXT records): the
    /// caller's voice is patched into the `dns` node serving that domain, which is
    /// created with the default settings if none serves it yet, and stays on air
    /// (on silence) after the call so listeners do not stall.
    Broadcast {
        /// The broadcast's zone, e.g. `music.example.com`.
        domain: String,
        /// Gain in dB of the caller's voice into the broadcast.
        #[serde(default = "zero_db")]
        gain_db: f32,
    },
    /// Stream the call to a voice bot over a WebSocket (jambonz's `listen` protocol, see
    /// docs/API.md): a `websocket` node owned by the call is made, the caller's voice goes
    /// to the bot and the bot's audio to the caller's ear. The first text frame carries
    /// `callSid` (the call's UUID), `sampleRate`, `mixType` and the keys of `metadata`.
    Websocket {
        /// The bot's `ws://` or `wss://` URL.
        #[schema(example = "wss://bot.example.com/calls")]
        url: String,
        /// PCM rate both ways, Hz: 8000 (default), 16000, 24000 or 48000.
        #[serde(default = "crate::control::websocket_default_rate")]
        sample_rate: u32,
        /// A JSON object whose keys are added to the first text frame.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<Object>)]
        metadata: Option<serde_json::Value>,
    },
}

/// A rule applied to a call when it connects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// A unique, human-readable name.
    pub name: String,
    /// Higher runs first; among equal priorities the more specific match wins.
    #[serde(default)]
    pub priority: i32,
    /// Which calls it applies to.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// What it does, in order.
    #[serde(default)]
    pub actions: Vec<RouteAction>,
    /// What its calls send under kind 0x10 (the channel driver sends a `c(ulaw)`
    /// channel's μ-law bytes there); absent: `audiosocket.uplink_coding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coding: Option<AudioCoding>,
}

/// What a call's kind-0x10 payloads carry (AudioSocket fact sheet §9.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AudioCoding {
    /// Told from the audio itself, per call: slin unless the first loud frames are
    /// clearly μ-law.
    #[default]
    Auto,
    /// Signed 16-bit little-endian linear PCM (the dialplan app, `c(slin)`).
    Slin,
    /// G.711 μ-law bytes (`c(ulaw)`).
    Ulaw,
    /// G.711 A-law bytes (`c(alaw)`).
    Alaw,
}

impl AudioCoding {
    /// The name used in configuration, JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            AudioCoding::Auto => "auto",
            AudioCoding::Slin => "slin",
            AudioCoding::Ulaw => "ulaw",
            AudioCoding::Alaw => "alaw",
        }
    }
}

impl FromStr for AudioCoding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AudioCoding::Auto),
            "slin" => Ok(AudioCoding::Slin),
            "ulaw" => Ok(AudioCoding::Ulaw),
            "alaw" => Ok(AudioCoding::Alaw),
            other => Err(format!(
                "unknown coding {other:?} (auto, slin, ulaw or alaw)"
            )),
        }
    }
}

impl Route {
    /// Checks what serde cannot: names, prefixes, conference names.
    pub fn validate(&self) -> Result<(), ModelError> {
        let invalid = |reason: String| ModelError::InvalidRoute {
            route: self.name.clone(),
            reason,
        };
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(invalid("the name must be 1 to 64 characters long".into()));
        }
        if let RouteMatch::UuidPrefix(prefix) = &self.matcher
            && (prefix.is_empty()
                || prefix.len() > 36
                || !prefix
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-'))
        {
            return Err(invalid(format!(
                "uuid_prefix {prefix:?} must be 1-36 characters of lowercase hex digits and '-'"
            )));
        }
        for action in &self.actions {
            match action {
                RouteAction::Record { path, .. } if !is_contained_path(path) => {
                    return Err(invalid(format!(
                        "record path {path:?} must be a relative path inside the recordings directory (no `..`)"
                    )));
                }
                RouteAction::Play { file, .. } if !is_contained_path(file) => {
                    return Err(invalid(format!(
                        "play file {file:?} must be a relative path inside the media directory (no `..`)"
                    )));
                }
                RouteAction::Broadcast { domain, gain_db } => {
                    check_dns_domain(domain)
                        .map_err(|why| invalid(format!("broadcast domain {domain:?}: {why}")))?;
                    if !gain_db.is_finite() || !(-96.0..=24.0).contains(gain_db) {
                        return Err(invalid(format!(
                            "gain_db {gain_db} must be between -96 and +24"
                        )));
                    }
                }
                RouteAction::Play { gain_db, .. } | RouteAction::Patch { gain_db, .. }
                    if !gain_db.is_finite() || !(-96.0..=24.0).contains(gain_db) =>
                {
                    return Err(invalid(format!(
                        "gain_db {gain_db} must be between -96 and +24"
                    )));
                }
                RouteAction::Patch {
                    voice_to, ear_from, ..
                } if voice_to.is_empty() && ear_from.is_empty() => {
                    return Err(invalid("patch needs voice_to or ear_from".into()));
                }
                RouteAction::Conference { name } => {
                    NodeRef::new(NodeKind::Conference, name).map_err(|e| invalid(e.to_string()))?;
                }
                RouteAction::Jam { room } => {
                    NodeRef::new(NodeKind::Jam, room).map_err(|e| invalid(e.to_string()))?;
                }
                RouteAction::Websocket {
                    url,
                    sample_rate,
                    metadata,
                } => {
                    crate::control::check_websocket(
                        url,
                        *sample_rate,
                        "mono",
                        metadata.as_ref(),
                        crate::control::WEBSOCKET_DEFAULT_QUEUE_MS,
                    )
                    .map_err(|(field, why)| invalid(format!("websocket {field}: {why}")))?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Longest AoDNS zone root in wire bytes: 255 minus the longest label placed under it
/// (`seq_` and the 20 digits of a `u64`, with its length byte).
const MAX_DNS_ROOT_WIRE: usize = 255 - 25;

/// Checks an AoDNS broadcast domain (with or without its trailing dot): labels of 1-63
/// ASCII letters, digits, `-` or `_`, leaving room for `seq_<n>` under it within the
/// 255 bytes of a DNS name. The gateway applies the same rules when it builds the zone.
pub fn check_dns_domain(domain: &str) -> Result<(), String> {
    let bare = domain.strip_suffix('.').unwrap_or(domain);
    if bare.is_empty() {
        return Err("the domain is empty".into());
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("label {label:?} must be 1 to 63 characters long"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "label {label:?} may hold only letters, digits, '-' and '_'"
            ));
        }
    }
    if bare.len() + 2 > MAX_DNS_ROOT_WIRE {
        return Err(format!(
            "the domain is too long to hold seq_<n> under it (at most {} characters)",
            MAX_DNS_ROOT_WIRE - 2
        ));
    }
    Ok(())
}

/// Whether `path` is a non-empty relative path that cannot leave the directory it is
/// resolved against (recordings are confined to the recordings directory).
pub fn is_contained_path(path: &str) -> bool {
    let path = std::path::Path::new(path.trim());
    !path.as_os_str().is_empty()
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
}

/// Picks the route for `uuid`: the highest priority, then the most specific match, then
/// the earliest in the list. `None` sends the call to the lobby.
pub fn select_route<'a>(routes: &'a [Route], uuid: &Uuid) -> Option<&'a Route> {
    routes
        .iter()
        .enumerate()
        .filter(|(_, route)| route.matcher.matches(uuid))
        .max_by(|(ia, a), (ib, b)| {
            a.priority
                .cmp(&b.priority)
                .then(a.matcher.specificity().cmp(&b.matcher.specificity()))
                .then(ib.cmp(ia))
        })
        .map(|(_, route)| route)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "40325ec2-5efd-4bd3-805f-53576e581d13";

    #[test]
    fn port_refs_round_trip_through_text() {
        for text in [
            "player:hold.out",
            "conference:desk-1.in3",
            "recorder:show_2024.in",
            "call:40325ec2-5efd-4bd3-805f-53576e581d13.voice",
        ] {
            let port: PortRef = text.parse().unwrap();
            assert_eq!(port.to_string(), text);
        }
        let port: PortRef = "call:40325EC2-5EFD-4BD3-805F-53576E581D13.ear"
            .parse()
            .unwrap();
        assert_eq!(
            port.node().name(),
            UUID,
            "call names are normalised to lowercase"
        );
    }

    #[test]
    fn bad_refs_say_what_is_wrong() {
        assert!(matches!(
            "hold.out".parse::<PortRef>(),
            Err(ModelError::Malformed { .. })
        ));
        assert!(matches!(
            "speaker:x.out".parse::<PortRef>(),
            Err(ModelError::UnknownKind { .. })
        ));
        assert!(matches!(
            "call:not-a-uuid.voice".parse::<PortRef>(),
            Err(ModelError::InvalidName { .. })
        ));
        assert!(matches!(
            "player:a b.out".parse::<PortRef>(),
            Err(ModelError::InvalidName { .. })
        ));
        assert!(matches!(
            "player:hold.".parse::<PortRef>(),
            Err(ModelError::Malformed { .. })
        ));
        let long = format!("player:{}.out", "x".repeat(65));
        assert!(matches!(
            long.parse::<PortRef>(),
            Err(ModelError::InvalidName { .. })
        ));
    }

    #[test]
    fn matches_exact_prefix_and_default() {
        let uuid = Uuid::parse_str(UUID).unwrap();
        assert!(RouteMatch::Uuid(uuid).matches(&uuid));
        assert!(!RouteMatch::Uuid(Uuid::nil()).matches(&uuid));
        assert!(RouteMatch::UuidPrefix("40325ec2-5e".into()).matches(&uuid));
        assert!(!RouteMatch::UuidPrefix("40325ec3".into()).matches(&uuid));
        assert!(RouteMatch::Default.matches(&uuid));
    }

    fn route(name: &str, priority: i32, matcher: RouteMatch) -> Route {
        Route {
            name: name.into(),
            priority,
            matcher,
            actions: vec![],
            coding: None,
        }
    }

    #[test]
    fn selection_prefers_priority_then_specificity_then_order() {
        let uuid = Uuid::parse_str(UUID).unwrap();
        let routes = vec![
            route("default", 0, RouteMatch::Default),
            route("prefix", 0, RouteMatch::UuidPrefix("4032".into())),
            route(
                "longer-prefix",
                0,
                RouteMatch::UuidPrefix("40325ec2".into()),
            ),
            route("other", 0, RouteMatch::Uuid(Uuid::nil())),
        ];
        assert_eq!(
            select_route(&routes, &uuid).map(|r| r.name.as_str()),
            Some("longer-prefix")
        );
        let mut urgent = routes.clone();
        urgent.push(route("urgent-default", 5, RouteMatch::Default));
        assert_eq!(
            select_route(&urgent, &uuid).map(|r| r.name.as_str()),
            Some("urgent-default")
        );
        let twins = vec![
            route("first", 0, RouteMatch::Default),
            route("second", 0, RouteMatch::Default),
        ];
        assert_eq!(
            select_route(&twins, &uuid).map(|r| r.name.as_str()),
            Some("first")
        );
        assert_eq!(select_route(&routes[3..], &uuid), None);
    }

    #[test]
    fn routes_deserialize_from_toml_like_json() {
        let json = r#"{
            "name": "phone-in", "priority": 10, "match": {"uuid_prefix": "0000"},
            "actions": [
                {"action": "record", "path": "{uuid}.wav", "channels": "both"},
                {"action": "play", "file": "welcome.wav"},
                {"action": "patch", "voice_to": ["recorder:show.in"], "gain_db": -3},
                {"action": "conference", "name": "desk"}
            ]
        }"#;
        let route: Route = serde_json::from_str(json).unwrap();
        route.validate().unwrap();
        assert_eq!(route.actions.len(), 4);
        assert_eq!(
            route.actions[1],
            RouteAction::Play {
                file: "welcome.wav".into(),
                looped: false,
                gain_db: 0.0
            }
        );
    }

    #[test]
    fn jam_actions_name_a_jam_node() {
        let json = r#"{"name": "band", "match": "default", "actions": [{"action": "jam", "room": "band-1"}]}"#;
        let route: Route = serde_json::from_str(json).unwrap();
        route.validate().unwrap();
        assert_eq!(
            route.actions[0],
            RouteAction::Jam {
                room: "band-1".into()
            }
        );
        let bad = r#"{"name": "band", "match": "default", "actions": [{"action": "jam", "room": "a b"}]}"#;
        assert!(
            serde_json::from_str::<Route>(bad)
                .unwrap()
                .validate()
                .is_err()
        );
    }

    #[test]
    fn recordings_stay_inside_their_directory() {
        for good in ["{uuid}.wav", "show/{start}-{uuid}.wav", "./a.wav"] {
            assert!(is_contained_path(good), "{good}");
        }
        for bad in ["", "  ", "/etc/passwd", "../x.wav", "a/../../x.wav"] {
            assert!(!is_contained_path(bad), "{bad}");
        }
    }

    #[test]
    fn validation_rejects_bad_routes() {
        let mut bad = route("x", 0, RouteMatch::UuidPrefix("XYZ".into()));
        assert!(bad.validate().is_err());
        bad.matcher = RouteMatch::Default;
        bad.actions = vec![RouteAction::Patch {
            voice_to: vec![],
            ear_from: vec![],
            gain_db: 0.0,
        }];
        assert!(bad.validate().is_err());
        bad.actions = vec![RouteAction::Conference {
            name: "no spaces".into(),
        }];
        assert!(bad.validate().is_err());
        let websocket = |url: &str, sample_rate| RouteAction::Websocket {
            url: url.into(),
            sample_rate,
            metadata: None,
        };
        bad.actions = vec![websocket("ws://bot:8080/", 11_025)];
        let error = bad.validate().unwrap_err().to_string();
        assert!(error.contains("sample_rate"), "{error}");
        bad.actions = vec![websocket("https://bot/", 8_000)];
        assert!(bad.validate().unwrap_err().to_string().contains("url"));
        bad.actions = vec![websocket("wss://bot.example.com/calls", 16_000)];
        bad.validate().unwrap();
        bad.actions = vec![RouteAction::Play {
            file: "a.wav".into(),
            looped: true,
            gain_db: 90.0,
        }];
        assert!(bad.validate().is_err());
        let unknown = r#"{"name":"x","match":"default","actions":[{"action":"explode"}]}"#;
        assert!(serde_json::from_str::<Route>(unknown).is_err());
        for domain in ["", "a..b", "bad label.com", &"x".repeat(64)] {
            bad.actions = vec![RouteAction::Broadcast {
                domain: domain.into(),
                gain_db: 0.0,
            }];
            assert!(bad.validate().is_err(), "{domain:?}");
        }
        bad.actions = vec![RouteAction::Broadcast {
            domain: "music.example.com".into(),
            gain_db: 30.0,
        }];
        assert!(bad.validate().is_err());
    }

    #[test]
    fn broadcast_actions_parse_and_domains_are_checked() {
        let json = r#"{"name":"on-air","match":"default",
            "actions":[{"action":"broadcast","domain":"music.example.com."}]}"#;
        let route: Route = serde_json::from_str(json).unwrap();
        route.validate().unwrap();
        assert_eq!(
            route.actions,
            [RouteAction::Broadcast {
                domain: "music.example.com.".into(),
                gain_db: 0.0
            }]
        );
        assert!(check_dns_domain("a_b-c.d9").is_ok());
        // 228 characters is the longest root that leaves room for seq_<u64>.
        let longest = [
            &"a".repeat(63)[..],
            &"b".repeat(63),
            &"c".repeat(63),
            &"d".repeat(36),
        ]
        .join(".");
        assert_eq!(longest.len(), 228);
        assert!(check_dns_domain(&longest).is_ok());
        assert!(check_dns_domain(&format!("{longest}e")).is_err());
        assert!(check_dns_domain(".").is_err());
    }
}
