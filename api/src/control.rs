//! The [`Control`] trait: what the REST API needs from the running gateway.
//!
//! `api` never imports the gateway (ARCHITECTURE §4: `api` declares, `gateway`
//! implements). The views here are plain serializable snapshots; nothing in them holds a
//! lock or a reference into the media plane.

use std::net::Ipv4Addr;

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
        /// The WAV file: a relative path inside the gateway's media directory
        /// (`media.dir`).
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
    /// An RTJam jam room (rtjam.md), joined (`mode: "join"`, one jammer per seat) or
    /// hosted (`mode: "host"`, an RTJam-compatible room server). Seat *k* has the input
    /// `in<k>` (channel 1), `aux<k>` when `channel2` is `input`, and the output `out<k>`
    /// (the room without the seat itself); `mix_left`/`mix_right` carry the whole room in
    /// stereo. See `docs/JAM.md`.
    Jam {
        /// `join` a remote room or `host` one.
        mode: crate::jam::JamMode,
        /// Join: the room server's host name or IP address (a name is looked up when a
        /// seat is first used).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// Join: the room server's UDP port (default 7891).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 1, maximum = 65535)]
        port: Option<u16>,
        /// Host: the room's UDP address (default `127.0.0.1:7891`). Join: where seat 1's
        /// socket binds (default `127.0.0.1:0`; with a port, seat k binds port + k - 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        listen: Option<String>,
        /// client_id of seat 1; seat k is `client_id + k - 1` (default: derived from the
        /// node's name, in 10000..=39999).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<u32>,
        /// Seats, one caller each (1-32).
        #[serde(default = "one")]
        #[schema(minimum = 1, maximum = 32)]
        seats: u16,
        /// What channel 2 carries: `silence` (default) or `input` (`aux<k>`).
        #[serde(default)]
        channel2: crate::jam::JamChannel2,
        /// Send nothing while a seat is silent, only a keepalive every 250 ms so it keeps
        /// its place in the room (default false: always send, like rtjam's client).
        #[serde(default)]
        suppress_silence: bool,
        /// Host: metronome tempo, BPM (1-1000, default 120).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 1, maximum = 1000)]
        tempo_bpm: Option<u32>,
        /// Host: most network members at once (1-1024; default 16). rtjam has no cap.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 1, maximum = 1024)]
        max_members: Option<u16>,
        /// Host: datagrams per second one member may send, with 0.4 s of burst; the
        /// excess is dropped (1-100000; default 500: a jammer sends 375, one with
        /// 64-frame packets 750). rtjam has no limit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 1, maximum = 100000)]
        max_packet_rate: Option<u32>,
        /// Host: source networks admitted, CIDR prefixes or addresses (default loopback
        /// only: `["127.0.0.0/8", "::1/128"]`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        allow: Option<Vec<String>>,
        /// Per-jammer mix settings (also set through `/v1/nodes/{node}/mix`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mix: Vec<crate::jam::JamMixSetting>,
    },
    /// An AoDNS broadcast (input `in`; `in1`, `in2` in stereo): what reaches its input
    /// is encoded with Opus and served as DNS TXT records under `domain` by the
    /// gateway's DNS server (`[dns]` in the configuration).
    Dns {
        /// The zone, e.g. `music.example.com` (labels of letters, digits, `-`, `_`).
        #[schema(min_length = 1, max_length = 229, example = "music.example.com")]
        domain: String,
        /// Packs listed in the `sequence` record (1-255; the reference uses 75). A
        /// new listener starts this many packs (about 0.75 s each for speech) behind.
        #[serde(default = "seventy_five")]
        #[schema(minimum = 1, maximum = 255)]
        window: u16,
        /// Opus sample rate in Hz: 8000, 12000 or 16000 (listeners must use the same).
        #[serde(default = "sixteen_khz")]
        sample_rate: u32,
        /// 1 (input `in`) or 2 (inputs `in1`, `in2`).
        #[serde(default = "one")]
        #[schema(minimum = 1, maximum = 2)]
        channels: u16,
        /// Opus bitrate in b/s; default: what libopus chooses by itself (17 kb/s at
        /// 16 kHz mono), as the reference. Capped so every packet fits one TXT string.
        #[serde(default)]
        #[schema(minimum = 500, maximum = 64000)]
        bitrate_bps: Option<u32>,
        /// What happens while the input is digital silence.
        #[serde(default)]
        silence: DnsSilence,
        /// With `silence = "pause"`: digital silence this long (ms) pauses the broadcast.
        #[serde(default = "two_seconds")]
        #[schema(minimum = 60, maximum = 600000)]
        pause_after_ms: u32,
        /// How the `seq_<n>` TTL is computed.
        #[serde(default)]
        ttl: DnsTtl,
    },
    /// A WebSocket media stream to a voice bot (input `in`: audio to the bot; output
    /// `out`: the bot's audio), speaking jambonz's `listen` protocol with bidirectional
    /// streaming (subprotocol `audio.jambonz.org`, a first JSON text frame, then binary
    /// frames of 16-bit little-endian mono PCM). See docs/API.md.
    Websocket {
        /// The bot's `ws://` or `wss://` URL; telepatch connects out to it.
        #[schema(
            min_length = 1,
            max_length = 2048,
            example = "wss://bot.example.com/calls"
        )]
        url: String,
        /// PCM rate both ways, Hz: 8000 (default), 16000, 24000 or 48000.
        #[serde(default = "websocket_default_rate")]
        sample_rate: u32,
        /// `mono`, the only stream telepatch sends (one node carries one voice).
        #[serde(default = "websocket_mono")]
        mix_type: String,
        /// A JSON object whose keys are added to the first text frame.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<Object>)]
        metadata: Option<serde_json::Value>,
        /// Play the bot's binary frames on `out` (default true); false: the bot only
        /// listens and its audio is discarded.
        #[serde(default = "yes_bool")]
        bidirectional: bool,
        /// Most audio from the bot held for playing, ms (100-60000, default 10000); what
        /// arrives beyond is dropped and counted.
        #[serde(default = "websocket_default_queue_ms")]
        #[schema(minimum = 100, maximum = 60000)]
        max_queue_ms: u32,
    },
    /// An AES67 transmit flow (inputs `ch1..chN`): one RTP packet per packet time to a
    /// multicast group, stamped with the PTP media clock and announced with SAP.
    Aes67Tx {
        /// Channels (1-8; Dante takes at most 8 per flow).
        #[serde(default = "two_u8")]
        #[schema(minimum = 1, maximum = 8)]
        channels: u8,
        /// `L24` (default, what Dante expects) or `L16`.
        #[serde(default)]
        encoding: Aes67Encoding,
        /// Packet time in µs: 125, 250, 333, 1000 (default) or 4000.
        #[serde(default = "thousand")]
        packet_time_us: u32,
        /// Multicast group; by default 239.69.x.y derived from the flow's name (239.69 is
        /// Dante's default AES67 prefix).
        #[serde(default)]
        #[schema(value_type = Option<String>, example = "239.69.10.1")]
        group: Option<Ipv4Addr>,
        /// RTP port (5004).
        #[serde(default = "aes67_port")]
        #[schema(minimum = 1, maximum = 65535)]
        port: u16,
        /// Multicast TTL of the RTP packets (15).
        #[serde(default = "fifteen")]
        #[schema(minimum = 1, maximum = 255)]
        ttl: u8,
        /// DSCP of the RTP packets (46 = EF, as Dante networks prioritise audio).
        #[serde(default = "forty_six")]
        #[schema(minimum = 0, maximum = 63)]
        dscp: u8,
        /// Address of the interface the flow and its SAP announcements leave from, and
        /// the SDP origin (127.0.0.1).
        #[serde(default = "loopback")]
        #[schema(value_type = String, example = "127.0.0.1")]
        interface: Ipv4Addr,
        /// RTP payload type (96-127, default 98).
        #[serde(default = "ninety_eight")]
        #[schema(minimum = 96, maximum = 127)]
        payload_type: u8,
        /// The session name receivers show (`s=`); by default the node's name.
        #[serde(default)]
        session_name: Option<String>,
        /// Session information (`i=`), e.g. what each channel carries.
        #[serde(default)]
        info: Option<String>,
        /// Announce the flow with SAP (default true; Dante Controller lists only flows
        /// it hears announced).
        #[serde(default = "yes_bool")]
        announce: bool,
    },
    /// An AES67 receive flow (outputs `ch1..chN`), subscribed from an SDP or from a
    /// session heard on SAP.
    Aes67Rx {
        /// The sender's SDP text (give this or `sap_session`).
        #[serde(default)]
        sdp: Option<String>,
        /// The name (`s=`) of a session listed by `GET /v1/discovery/sap`; the flow
        /// follows that session's announcements (give this or `sdp`).
        #[serde(default)]
        sap_session: Option<String>,
        /// Output channels (1-8). Default: the SDP's. Needed for a `sap_session` not heard
        /// yet (at start-up, say).
        #[serde(default)]
        #[schema(minimum = 1, maximum = 8)]
        channels: Option<u8>,
        /// Jitter-buffer latency beyond the media timestamp, in ms, at the start: from one
        /// packet time up to 40. Default: packet time + 2 ms.
        #[serde(default)]
        #[schema(minimum = 0.125, maximum = 40)]
        latency_ms: Option<f32>,
        /// Largest latency, in ms, that packets arriving late may raise the latency to (in
        /// whole ms, each time heard once as a short pause): `latency_ms` up to 40.
        /// Default: 40. Equal to `latency_ms`: a fixed latency.
        #[serde(default)]
        #[schema(minimum = 0.125, maximum = 40)]
        max_latency_ms: Option<f32>,
        /// Address of the interface to join the group on (127.0.0.1).
        #[serde(default = "loopback")]
        #[schema(value_type = String, example = "127.0.0.1")]
        interface: Ipv4Addr,
        /// How RTP timestamps map to playout time (default `auto`).
        #[serde(default)]
        alignment: Aes67Alignment,
    },
}

/// What an AoDNS broadcast does while its input is digital silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DnsSilence {
    /// Keep encoding and publishing packs (of silence), so listeners never stall.
    #[default]
    Continue,
    /// After `pause_after_ms` of silence, publish what is buffered and make no new packs
    /// until sound returns; the last window stays served.
    Pause,
}

/// How an AoDNS broadcast computes the TTL of its `seq_<n>` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DnsTtl {
    /// The reference server's formula (about 40 % of the audio the window holds).
    #[default]
    Reference,
    /// 80 % of the audio the window really holds.
    Accurate,
}

/// Sample encoding of an AES67 flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub enum Aes67Encoding {
    /// 24-bit big-endian.
    #[default]
    L24,
    /// 16-bit big-endian.
    L16,
}

/// How a receive flow places packets in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aes67Alignment {
    /// `media_clock` when the SDP has `a=mediaclk` (a PTP-timed sender), otherwise
    /// `first_packet`.
    #[default]
    Auto,
    /// Timestamps are PTP media clock (plus the SDP's `mediaclk` offset): a packet plays
    /// `latency_ms` after its timestamp, as a Dante receiver plays it.
    MediaClock,
    /// The first packet plays `latency_ms` after it arrived (senders not locked to PTP,
    /// such as ffmpeg or GStreamer without a PTP clock).
    FirstPacket,
}

/// Frames per packet of an AES67 packet time in µs (aes67.md §4), if it is one.
pub fn aes67_frames_per_packet(packet_time_us: u32) -> Option<u32> {
    match packet_time_us {
        125 => Some(6),
        250 => Some(12),
        333 => Some(16),
        1000 => Some(48),
        4000 => Some(192),
        _ => None,
    }
}

/// Largest RTP payload that fits a 1500-byte IP MTU (aes67.md §4: 20 IPv4 + 8 UDP + 12
/// RTP bytes of headers); AES67 never relies on fragmentation.
pub const AES67_MAX_PAYLOAD: u32 = 1460;

fn two_u8() -> u8 {
    2
}

fn thousand() -> u32 {
    1000
}

fn aes67_port() -> u16 {
    5004
}

fn fifteen() -> u8 {
    15
}

fn forty_six() -> u8 {
    46
}

fn ninety_eight() -> u8 {
    98
}

fn loopback() -> Ipv4Addr {
    Ipv4Addr::LOCALHOST
}

fn yes_bool() -> bool {
    true
}

/// Checks an interface address: a unicast address of this host.
/// Default PCM rate of a `websocket` node (jambonz's `listen` default).
pub fn websocket_default_rate() -> u32 {
    8_000
}

fn websocket_mono() -> String {
    "mono".into()
}

/// Default bound of a `websocket` node's queue of the bot's audio, ms.
pub const WEBSOCKET_DEFAULT_QUEUE_MS: u32 = 10_000;

fn websocket_default_queue_ms() -> u32 {
    WEBSOCKET_DEFAULT_QUEUE_MS
}

/// PCM rates a `websocket` node speaks.
pub const WEBSOCKET_RATES: [u32; 4] = [8_000, 16_000, 24_000, 48_000];

/// Checks a `websocket` node's (or route action's) settings; returns the offending field
/// and why.
pub fn check_websocket(
    url: &str,
    sample_rate: u32,
    mix_type: &str,
    metadata: Option<&serde_json::Value>,
    max_queue_ms: u32,
) -> Result<(), (&'static str, String)> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or(("url", format!("{url:?} must start with ws:// or wss://")))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || url.len() > 2048 || url.chars().any(char::is_whitespace) {
        return Err((
            "url",
            format!("{url:?} must name a host (at most 2048 characters, no spaces)"),
        ));
    }
    if !WEBSOCKET_RATES.contains(&sample_rate) {
        return Err((
            "sample_rate",
            format!(
                "{sample_rate} Hz is not a rate the bot can be sent (8000, 16000, 24000 or 48000)"
            ),
        ));
    }
    if mix_type != "mono" {
        return Err((
            "mix_type",
            format!(
                "{mix_type:?} is not supported: a websocket node streams one voice, `mono` \
                 (jambonz's `stereo` and `mixed` are for two-party bridges)"
            ),
        ));
    }
    if let Some(metadata) = metadata
        && !metadata.is_object()
    {
        return Err(("metadata", "must be a JSON object".into()));
    }
    if !(100..=60_000).contains(&max_queue_ms) {
        return Err((
            "max_queue_ms",
            format!("{max_queue_ms} is out of range (100..=60000)"),
        ));
    }
    Ok(())
}

fn check_interface(interface: &Ipv4Addr) -> Result<(), (&'static str, String)> {
    if interface.is_unspecified() || interface.is_multicast() || interface.is_broadcast() {
        return Err((
            "interface",
            format!("{interface} is not the unicast address of an interface"),
        ));
    }
    Ok(())
}

fn one() -> u16 {
    1
}

fn sixteen() -> u16 {
    16
}

fn seventy_five() -> u16 {
    75
}

fn sixteen_khz() -> u32 {
    16_000
}

fn two_seconds() -> u32 {
    2_000
}

impl NodeConfig {
    /// The node kind this configures.
    pub fn kind(&self) -> NodeKind {
        match self {
            NodeConfig::Player { .. } => NodeKind::Player,
            NodeConfig::Recorder { .. } => NodeKind::Recorder,
            NodeConfig::Conference { .. } => NodeKind::Conference,
            NodeConfig::Aes67Tx { .. } => NodeKind::Aes67Tx,
            NodeConfig::Aes67Rx { .. } => NodeKind::Aes67Rx,
            NodeConfig::Dns { .. } => NodeKind::Dns,
            NodeConfig::Jam { .. } => NodeKind::Jam,
            NodeConfig::Websocket { .. } => NodeKind::Websocket,
        }
    }

    /// Stores `setting` in a jam configuration, replacing the jammer's previous one.
    /// Fails (with why) for other kinds or when the configuration holds the most settings.
    pub fn set_jam_mix(
        &mut self,
        setting: crate::jam::JamMixSetting,
    ) -> Result<(), crate::jam::MixError> {
        let NodeConfig::Jam { mix, .. } = self else {
            return Err(crate::jam::MixError::NotJam);
        };
        if let Some(existing) = mix.iter_mut().find(|s| s.client_id == setting.client_id) {
            *existing = setting;
        } else if mix.len() >= crate::jam::MAX_MIX_SETTINGS {
            return Err(crate::jam::MixError::TooManySettings);
        } else {
            mix.push(setting);
        }
        Ok(())
    }

    /// Removes a jammer's setting from a jam configuration; false if it had none.
    pub fn remove_jam_mix(&mut self, client_id: u32) -> bool {
        let NodeConfig::Jam { mix, .. } = self else {
            return false;
        };
        let before = mix.len();
        mix.retain(|s| s.client_id != client_id);
        mix.len() != before
    }

    /// The fields of a `jam` configuration, borrowed; `None` for other kinds.
    pub fn jam_fields(&self) -> Option<crate::jam::JamFields<'_>> {
        match self {
            NodeConfig::Jam {
                mode,
                host,
                port,
                listen,
                client_id,
                seats,
                channel2,
                suppress_silence,
                tempo_bpm,
                max_members,
                max_packet_rate,
                allow,
                mix,
            } => Some(crate::jam::JamFields {
                mode: *mode,
                host: host.as_deref(),
                port: *port,
                listen: listen.as_deref(),
                client_id: *client_id,
                seats: *seats,
                channel2: *channel2,
                suppress_silence: *suppress_silence,
                tempo_bpm: *tempo_bpm,
                max_members: *max_members,
                max_packet_rate: *max_packet_rate,
                allow: allow.as_deref(),
                mix,
            }),
            _ => None,
        }
    }

    /// Checks ranges serde cannot; returns the offending field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self {
            NodeConfig::Player { file, gain_db, .. } => {
                if !crate::model::is_contained_path(file) {
                    return Err((
                        "file",
                        "must be a WAV file's relative path inside the media directory (no `..`)"
                            .into(),
                    ));
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
            NodeConfig::Websocket {
                url,
                sample_rate,
                mix_type,
                metadata,
                max_queue_ms,
                ..
            } => check_websocket(
                url,
                *sample_rate,
                mix_type,
                metadata.as_ref(),
                *max_queue_ms,
            )?,
            NodeConfig::Jam { .. } => {
                if let Some(fields) = self.jam_fields() {
                    // The name only picks a default client_id; any name checks the same.
                    fields.spec("jam")?;
                }
            }
            NodeConfig::Dns {
                domain,
                window,
                sample_rate,
                channels,
                bitrate_bps,
                pause_after_ms,
                ..
            } => {
                crate::model::check_dns_domain(domain).map_err(|why| ("domain", why))?;
                if !(1..=255).contains(window) {
                    return Err(("window", format!("{window} is out of range (1..=255)")));
                }
                if ![8_000, 12_000, 16_000].contains(sample_rate) {
                    return Err((
                        "sample_rate",
                        format!("{sample_rate} Hz is not an AoDNS rate (8000, 12000 or 16000)"),
                    ));
                }
                if !(1..=2).contains(channels) {
                    return Err(("channels", format!("{channels} must be 1 or 2")));
                }
                if let Some(bps) = bitrate_bps
                    && !(500..=64_000).contains(bps)
                {
                    return Err((
                        "bitrate_bps",
                        format!("{bps} is out of range (500..=64000)"),
                    ));
                }
                if !(60..=600_000).contains(pause_after_ms) {
                    return Err((
                        "pause_after_ms",
                        format!("{pause_after_ms} is out of range (60..=600000)"),
                    ));
                }
            }
            NodeConfig::Aes67Tx {
                channels,
                encoding,
                packet_time_us,
                group,
                port,
                ttl,
                dscp,
                interface,
                payload_type,
                session_name,
                info,
                ..
            } => {
                if !(1..=8).contains(channels) {
                    return Err(("channels", format!("{channels} is out of range (1..=8)")));
                }
                let Some(frames) = aes67_frames_per_packet(*packet_time_us) else {
                    return Err((
                        "packet_time_us",
                        format!(
                            "{packet_time_us} is not an AES67 packet time (125, 250, 333, 1000, 4000)"
                        ),
                    ));
                };
                let bytes = match encoding {
                    Aes67Encoding::L24 => 3,
                    Aes67Encoding::L16 => 2,
                };
                let payload = frames * u32::from(*channels) * bytes;
                if payload > AES67_MAX_PAYLOAD {
                    return Err((
                        "channels",
                        format!(
                            "{channels} channels of {encoding:?} at {packet_time_us} µs make {payload}-byte packets; \
                             at most {AES67_MAX_PAYLOAD} fit a 1500-byte MTU"
                        ),
                    ));
                }
                if let Some(group) = group
                    && (!group.is_multicast()
                        || group.octets()[..3] == [224, 0, 0]
                        || *group == Ipv4Addr::new(239, 255, 255, 255))
                {
                    return Err((
                        "group",
                        format!(
                            "{group} is not a multicast group for media (224.0.0.0/24 and the SAP group 239.255.255.255 are reserved)"
                        ),
                    ));
                }
                if *port == 0 {
                    return Err(("port", "must not be 0".into()));
                }
                if *ttl == 0 {
                    return Err(("ttl", "must be at least 1".into()));
                }
                if *dscp > 63 {
                    return Err(("dscp", format!("{dscp} is out of range (0..=63)")));
                }
                check_interface(interface)?;
                if !(96..=127).contains(payload_type) {
                    return Err((
                        "payload_type",
                        format!("{payload_type} is not a dynamic payload type (96..=127)"),
                    ));
                }
                for (field, text) in [("session_name", session_name), ("info", info)] {
                    if let Some(text) = text
                        && (text.trim().is_empty() || text.len() > 256)
                    {
                        return Err((field, "must be 1 to 256 characters long".into()));
                    }
                }
            }
            NodeConfig::Aes67Rx {
                sdp,
                sap_session,
                channels,
                latency_ms,
                max_latency_ms,
                interface,
                ..
            } => {
                match (sdp, sap_session) {
                    (Some(_), Some(_)) | (None, None) => {
                        return Err(("sdp", "give either `sdp` or `sap_session`".into()));
                    }
                    (Some(sdp), None) if sdp.trim().is_empty() || sdp.len() > 65_536 => {
                        return Err(("sdp", "must be SDP text of at most 64 KiB".into()));
                    }
                    (None, Some(name)) if name.trim().is_empty() || name.len() > 256 => {
                        return Err(("sap_session", "must be 1 to 256 characters long".into()));
                    }
                    _ => {}
                }
                if let Some(channels) = channels
                    && !(1..=8).contains(channels)
                {
                    return Err(("channels", format!("{channels} is out of range (1..=8)")));
                }
                if let Some(latency) = latency_ms
                    && (!latency.is_finite() || *latency <= 0.0 || *latency > 40.0)
                {
                    return Err(("latency_ms", format!("{latency} is out of range (0..=40]")));
                }
                if let Some(max) = max_latency_ms
                    && (!max.is_finite()
                        || *max <= 0.0
                        || *max > 40.0
                        || latency_ms.is_some_and(|latency| *max < latency))
                {
                    return Err((
                        "max_latency_ms",
                        format!("{max} is out of range (latency_ms..=40)"),
                    ));
                }
                check_interface(interface)?;
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
        /// The call's record, as `GET /v1/cdrs` will show it.
        record: Box<crate::store::CdrRecord>,
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
    /// A recording failed (a full disk): it stopped taking audio and its file keeps, as
    /// a valid WAV, what was written before; or it could not start, and no file was left.
    /// Told once per recording, when it happens.
    RecordingFailed {
        /// The recorder node.
        #[schema(value_type = String)]
        node: NodeRef,
        /// The file.
        path: String,
        /// What failed.
        error: String,
    },
    /// A jammer joined a jam room: a source address that sent its first packet to a
    /// hosted room, or a client_id first heard in a joined room.
    JamMemberJoined {
        /// The jam node.
        #[schema(value_type = String)]
        node: NodeRef,
        /// The jammer's client_id.
        client_id: u32,
        /// Its address (hosted rooms), or the room server's (joined rooms).
        address: String,
    },
    /// A jammer left a jam room: silent for a second (rtjam.md §3), or refused by a
    /// changed allow-list.
    JamMemberLeft {
        /// The jam node.
        #[schema(value_type = String)]
        node: NodeRef,
        /// The jammer's client_id.
        client_id: u32,
        /// Its address (hosted rooms), or the room server's (joined rooms).
        address: String,
        /// `timeout` or `removed`.
        reason: String,
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
            Event::RecordingFailed { .. } => "recording_failed",
            Event::JamMemberJoined { .. } => "jam_member_joined",
            Event::JamMemberLeft { .. } => "jam_member_left",
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

/// How the gateway keeps PTP time (`[clock] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClockMode {
    /// The host clock is PTP time (disciplined by linuxptp `ptp4l` + `phc2sys`).
    #[default]
    System,
    /// The built-in PTPv2 follower tracks the grandmaster itself.
    Follow,
}

/// Where the media clock stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClockState {
    /// `system` mode: the host clock is taken as PTP time (whether ptp4l and phc2sys
    /// discipline it is not visible from here).
    HostClock,
    /// `follow`: no grandmaster announces on the domain.
    Listening,
    /// `follow`: a grandmaster is selected; the estimate is not good enough yet.
    Acquiring,
    /// `follow`: tracking the grandmaster.
    Locked,
    /// `follow`: lock was lost; the last locked estimate is still used for a while.
    Holdover,
}

/// How `system` mode reads PTP time from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClockSource {
    /// `CLOCK_TAI` (the kernel's TAI offset is set).
    ClockTai,
    /// `CLOCK_REALTIME` plus `tai_utc_offset_s`.
    ClockRealtimePlusOffset,
}

/// Counters of the built-in follower (since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PtpCounters {
    /// Announces accepted on the domain.
    pub announces: u64,
    /// Sync samples used (t1 and t2 known).
    pub syncs: u64,
    /// Delay_Req sent.
    pub delay_requests: u64,
    /// Delay_Resp matched to our Delay_Req.
    pub delay_responses: u64,
    /// Delay_Req that went unanswered.
    pub delay_response_timeouts: u64,
    /// Sync samples rejected as outliers (timestamp stalls).
    pub outliers: u64,
    /// Estimate restarts (grandmaster change, a step in time).
    pub resets: u64,
    /// Messages ignored (other domain, other master, unmatched).
    pub ignored: u64,
    /// Datagrams that are not PTPv2 messages.
    pub bad_messages: u64,
    /// Well-formed messages the follower does not use (PTPv1, Pdelay, Management).
    pub unsupported: u64,
    /// Datagrams stamped by the kernel on arrival (`SO_TIMESTAMPNS`).
    pub kernel_timestamps: u64,
    /// Datagrams stamped by a clock read instead.
    pub read_timestamps: u64,
    /// Delay_Req that could not be sent.
    pub send_errors: u64,
}

/// The media clock AES67 flows stamp and pace with (`GET /v1/clock`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClockStatus {
    /// `system` or `follow`.
    pub mode: ClockMode,
    /// Lock state.
    pub state: ClockState,
    /// Whether flows can stamp with the clock now (`ptp_time_ns` is set).
    pub usable: bool,
    /// PTP time sampled for this response: ns since the PTP epoch on the grandmaster's
    /// timescale (TAI when it sets ptpTimescale); null while the clock is unusable.
    pub ptp_time_ns: Option<u64>,
    /// `CLOCK_REALTIME` read at the same instant as `ptp_time_ns`, ns since 1970.
    pub realtime_ns: u64,
    /// The `a=ts-refclk` value flows announce in SDP.
    #[schema(example = "ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0")]
    pub ts_refclk: String,
    /// The grandmaster identity: configured (`system`) or announced (`follow`).
    #[schema(example = "00-1D-C1-FF-FE-12-34-56")]
    pub grandmaster_id: Option<String>,
    /// PTP domain.
    pub domain: u8,
    /// `system`: how PTP time is read.
    pub source: Option<ClockSource>,
    /// `system`: the TAI-UTC offset added to `CLOCK_REALTIME` (or the kernel's, with
    /// `CLOCK_TAI`); `follow`: the grandmaster's announced currentUtcOffset.
    pub tai_utc_offset_s: Option<i32>,
    /// `follow`: the interface address the follower listens on.
    pub interface: Option<String>,
    /// `follow`: the port Sync and Delay_Resp come from (`identity/port`).
    pub master_port: Option<String>,
    /// `follow`: whether the grandmaster announces the PTP (TAI) timescale.
    pub ptp_timescale: Option<bool>,
    /// `follow`: how far the estimate was from the newest Sync, ns (`estimate - master`,
    /// what `ptp4l` logs as master offset).
    pub offset_ns: Option<i64>,
    /// `follow`: the grandmaster's rate against the local clock, in ppm (positive: the
    /// grandmaster runs fast).
    pub rate_ratio_ppm: Option<f64>,
    /// `follow`: mean path delay to the master, ns.
    pub mean_path_delay_ns: Option<i64>,
    /// `follow`: time since the newest Sync was used, ms.
    pub last_sync_age_ms: Option<f64>,
    /// `follow`: RMS residual of the Sync fit, ns (timestamp jitter).
    pub fit_rms_ns: Option<f64>,
    /// `follow`: how much longer the held-over estimate stays usable, ms.
    pub holdover_remaining_ms: Option<u64>,
    /// `follow`: counters.
    pub counters: Option<PtpCounters>,
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

/// A session heard on SAP (`GET /v1/discovery/sap`), parsed for a receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SapSessionInfo {
    /// The session name (`s=`), if the SDP has one.
    pub name: Option<String>,
    /// The announcer's address (the SAP header's originating source).
    pub origin: String,
    /// The SAP message id hash.
    pub msg_id_hash: u16,
    /// The SDP `o=` line's session id and version, e.g. `3411843210 1763700001`.
    pub sdp_version: Option<String>,
    /// Multicast group (or unicast destination) of the RTP stream.
    pub group: Option<String>,
    /// RTP port.
    pub port: Option<u16>,
    /// Channels.
    pub channels: Option<u16>,
    /// Format as `a=rtpmap` gives it with the packet time, e.g. `L24/48000/2, 1 ms`.
    pub format: Option<String>,
    /// The `a=ts-refclk` value, e.g. `ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0`.
    pub ts_refclk: Option<String>,
    /// Why a receive flow could not use this session (not L16/L24 at 48 kHz, 1-8
    /// channels...), if it could not.
    pub unusable: Option<String>,
    /// When it was last announced (RFC 3339, UTC).
    pub last_heard: chrono::DateTime<chrono::Utc>,
    /// Seconds since it was last announced.
    pub age_s: f64,
    /// Seconds until it expires unless announced again: `max(10 × its announcement
    /// interval, 1 hour)` after the last announcement (RFC 2974 §4).
    pub expires_in_s: f64,
    /// Announcements heard.
    pub announcements: u64,
    /// The SDP text.
    pub sdp: String,
}

/// What the REST API needs from the running gateway.
pub trait Control: Send + Sync + 'static {
    /// Live calls, oldest first.
    fn calls(&self) -> Vec<CallInfo>;
    /// One live call.
    fn call(&self, id: Uuid) -> Option<CallInfo>;
    /// One page of live calls (oldest first), optionally only those in `state`: the
    /// number that match, and at most `limit` of them from `offset` on. Implementations
    /// should build entries only for the page; the default filters [`Control::calls`].
    fn calls_page(
        &self,
        state: Option<CallState>,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<CallInfo>) {
        let mut calls = self.calls();
        if let Some(wanted) = state {
            calls.retain(|c| c.state == wanted);
        }
        let total = calls.len();
        (total, calls.into_iter().skip(offset).take(limit).collect())
    }
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
    /// The media clock (PTP time for AES67 flows).
    fn clock(&self) -> ClockStatus;
    /// The SDP of the AES67 transmit flow `aes67tx:<name>`, if it exists.
    fn flow_sdp(&self, _name: &str) -> Option<String> {
        None
    }
    /// The sessions heard on SAP, oldest first.
    fn sap_sessions(&self) -> Vec<SapSessionInfo> {
        Vec::new()
    }

    /// Applies a new configuration to a node without rebuilding it, if the node can
    /// (a jam room's tempo, member cap, allow-list or mix, say). `None`: it cannot, and
    /// the caller rebuilds the node.
    fn reconfigure_node(
        &self,
        _node: &NodeRef,
        _config: &NodeConfig,
    ) -> Option<Result<NodeInfo, ControlError>> {
        None
    }

    /// The per-jammer mix of a jam node: every configured setting and every jammer in
    /// the room.
    fn jam_mix(&self, node: &NodeRef) -> Result<Vec<crate::jam::JamMixEntry>, ControlError> {
        Err(ControlError::NotFound {
            message: format!("no jam node {node}"),
        })
    }

    /// Sets one jammer's mix in a jam node (and in its configuration).
    fn set_jam_mix(
        &self,
        node: &NodeRef,
        _setting: crate::jam::JamMixSetting,
    ) -> Result<(), ControlError> {
        Err(ControlError::NotFound {
            message: format!("no jam node {node}"),
        })
    }

    /// Returns one jammer of a jam node to the default mix (unity, centre, unmuted) and
    /// removes its setting from the configuration.
    fn reset_jam_mix(&self, node: &NodeRef, _client_id: u32) -> Result<(), ControlError> {
        Err(ControlError::NotFound {
            message: format!("no jam node {node}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_configs_default_to_the_reference_settings() {
        let config: NodeConfig =
            serde_json::from_str(r#"{"kind":"dns","domain":"music.example.com"}"#).unwrap();
        assert_eq!(
            config,
            NodeConfig::Dns {
                domain: "music.example.com".into(),
                window: 75,
                sample_rate: 16_000,
                channels: 1,
                bitrate_bps: None,
                silence: DnsSilence::Continue,
                pause_after_ms: 2_000,
                ttl: DnsTtl::Reference,
            }
        );
        assert_eq!(config.kind(), NodeKind::Dns);
        config.validate().unwrap();
        let full: NodeConfig = serde_json::from_str(
            r#"{"kind":"dns","domain":"a.b","window":5,"sample_rate":8000,"channels":2,
                "bitrate_bps":12000,"silence":"pause","pause_after_ms":500,"ttl":"accurate"}"#,
        )
        .unwrap();
        full.validate().unwrap();
        assert!(
            serde_json::from_str::<NodeConfig>(r#"{"kind":"dns","domain":"a.b","codec":"x"}"#)
                .is_err()
        );
    }

    #[test]
    fn dns_configs_out_of_range_name_the_field() {
        let base = NodeConfig::Dns {
            domain: "music.example.com".into(),
            window: 75,
            sample_rate: 16_000,
            channels: 1,
            bitrate_bps: None,
            silence: DnsSilence::Continue,
            pause_after_ms: 2_000,
            ttl: DnsTtl::Reference,
        };
        let field = |change: &dyn Fn(&mut NodeConfig)| {
            let mut config = base.clone();
            change(&mut config);
            config.validate().unwrap_err().0
        };
        let set = |f: fn(&mut String, &mut u16, &mut u32, &mut u16, &mut Option<u32>, &mut u32)| {
            move |c: &mut NodeConfig| {
                if let NodeConfig::Dns {
                    domain,
                    window,
                    sample_rate,
                    channels,
                    bitrate_bps,
                    pause_after_ms,
                    ..
                } = c
                {
                    f(
                        domain,
                        window,
                        sample_rate,
                        channels,
                        bitrate_bps,
                        pause_after_ms,
                    );
                }
            }
        };
        assert_eq!(
            field(&set(|d, _, _, _, _, _| *d = "no spaces.com".into())),
            "domain"
        );
        assert_eq!(field(&set(|_, w, _, _, _, _| *w = 0)), "window");
        assert_eq!(field(&set(|_, w, _, _, _, _| *w = 256)), "window");
        assert_eq!(field(&set(|_, _, r, _, _, _| *r = 48_000)), "sample_rate");
        assert_eq!(field(&set(|_, _, _, c, _, _| *c = 3)), "channels");
        assert_eq!(
            field(&set(|_, _, _, _, b, _| *b = Some(100))),
            "bitrate_bps"
        );
        assert_eq!(field(&set(|_, _, _, _, _, p| *p = 10)), "pause_after_ms");
    }

    #[test]
    fn websocket_configs_default_to_jambonz_settings_and_name_the_wrong_field() {
        let config: NodeConfig =
            serde_json::from_str(r#"{"kind":"websocket","url":"ws://127.0.0.1:9/bot"}"#).unwrap();
        assert_eq!(
            config,
            NodeConfig::Websocket {
                url: "ws://127.0.0.1:9/bot".into(),
                sample_rate: 8_000,
                mix_type: "mono".into(),
                metadata: None,
                bidirectional: true,
                max_queue_ms: 10_000,
            }
        );
        config.validate().unwrap();
        let field = |json: &str| {
            serde_json::from_str::<NodeConfig>(json)
                .unwrap()
                .validate()
                .unwrap_err()
                .0
        };
        assert_eq!(field(r#"{"kind":"websocket","url":"http://x/"}"#), "url");
        assert_eq!(field(r#"{"kind":"websocket","url":"ws:///path"}"#), "url");
        assert_eq!(
            field(r#"{"kind":"websocket","url":"ws://x","sample_rate":44100}"#),
            "sample_rate"
        );
        assert_eq!(
            field(r#"{"kind":"websocket","url":"ws://x","mix_type":"stereo"}"#),
            "mix_type"
        );
        assert_eq!(
            field(r#"{"kind":"websocket","url":"ws://x","metadata":[1]}"#),
            "metadata"
        );
        assert_eq!(
            field(r#"{"kind":"websocket","url":"ws://x","max_queue_ms":99}"#),
            "max_queue_ms"
        );
        for rate in WEBSOCKET_RATES {
            check_websocket("wss://bot.example.com/a", rate, "mono", None, 100).unwrap();
        }
    }
}
