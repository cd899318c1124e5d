//! Configuration: a TOML file, `TELEPATCH_*` environment variables and CLI flags,
//! validated once into [`Config`] before anything starts (house style 6.5).
//!
//! Precedence, highest first: command-line flag, environment variable, file, built-in
//! default. Every built-in default binds loopback only; an operator opens the gateway to
//! a network explicitly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::model::{AudioCoding, Route, RouteAction};
use serde::{Deserialize, Serialize};

use crate::engine::DEFAULT_BLOCK_SAMPLES;
use crate::engine::recorder::RecordingFormat;

/// What to do when a call arrives with the UUID of a call that is still connected
/// (fact sheet §4: UUIDs are not guaranteed unique; §10.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DuplicatePolicy {
    /// Refuse the newcomer with a hangup (`00 00 00`); the live call is untouched.
    #[default]
    Reject,
    /// Hang up the live call and admit the newcomer (a reconnect after a network blip).
    Replace,
}

/// The rate replies to Asterisk are sent at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyRate {
    /// The caller's own rate, learnt from its first audio message (fact sheet §7: keep
    /// one rate per connection). If no audio arrives within `reply_rate_wait_ms`, 8 kHz.
    #[default]
    Caller,
    /// Always this rate in hertz (one of the AudioSocket rates).
    #[serde(untagged)]
    Fixed(u32),
}

/// A list of source networks, written as text (`"127.0.0.0/8, ::1"`) and parsed once,
/// when the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceNetworks {
    text: String,
    parsed: codecs::jam::AllowList,
}

impl SourceNetworks {
    /// 127.0.0.0/8 and ::1.
    pub fn loopback() -> SourceNetworks {
        SourceNetworks {
            text: "127.0.0.0/8, ::1".into(),
            parsed: codecs::jam::AllowList::loopback(),
        }
    }

    /// Whether `ip` is inside one of the networks.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.parsed.allows(ip)
    }
}

impl TryFrom<String> for SourceNetworks {
    type Error = codecs::jam::InvalidNetwork;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let parsed = text.parse()?;
        Ok(SourceNetworks { text, parsed })
    }
}

impl From<SourceNetworks> for String {
    fn from(networks: SourceNetworks) -> String {
        networks.text
    }
}

/// The AudioSocket listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudioSocketConfig {
    /// Address to listen on for Asterisk's connections.
    pub listen: SocketAddr,
    /// Most calls at once; connections beyond it are closed with a hangup.
    pub max_calls: usize,
    /// How long a new connection may take to send its ID message.
    pub id_timeout_ms: u64,
    /// Source networks Asterisk may connect from (CIDR prefixes or addresses); others
    /// are closed at once. The UUID is a call's only credential, so keep this to the
    /// Asterisk hosts.
    pub allow: SourceNetworks,
    /// Connections that have not sent their ID yet, at most (beyond: closed at once).
    pub max_unidentified: usize,
    /// ...of which at most this many from one source address.
    pub max_unidentified_per_source: usize,
    /// Largest audio message accepted, in milliseconds at its kind's rate (§10.7).
    pub max_message_ms: u32,
    /// Duplicate-UUID policy.
    pub duplicate_uuid: DuplicatePolicy,
    /// Rate of the audio sent back to Asterisk.
    pub reply_rate: ReplyRate,
    /// How long to wait for the caller's first audio to learn its rate.
    pub reply_rate_wait_ms: u64,
    /// Duration of each reply frame (Asterisk's own frames are 20 ms).
    pub frame_ms: u32,
    /// What kind 0x10 carries unless the call's route says: `auto` (told from each
    /// call's audio), `slin` (always with the dialplan app), `ulaw` or `alaw` (channel
    /// driver with `c(ulaw)` / `c(alaw)`, fact sheet §9.2).
    pub uplink_coding: AudioCoding,
    /// Jitter margin of the uplink ring beyond one frame, in milliseconds.
    pub uplink_buffer_ms: u32,
    /// Margin of the downlink ring beyond one frame, in milliseconds: how late the engine
    /// may be (a host stalling its threads) before the caller hears a gap.
    pub downlink_buffer_ms: u32,
    /// Give up on a connection whose writes block for this long (Asterisk stopped reading).
    pub write_timeout_ms: u64,
}

impl Default for AudioSocketConfig {
    fn default() -> Self {
        AudioSocketConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            max_calls: 500,
            id_timeout_ms: 2_000,
            allow: SourceNetworks::loopback(),
            max_unidentified: 1024,
            max_unidentified_per_source: 512,
            max_message_ms: 1_000,
            duplicate_uuid: DuplicatePolicy::Reject,
            reply_rate: ReplyRate::Caller,
            reply_rate_wait_ms: 300,
            frame_ms: 20,
            uplink_coding: AudioCoding::Auto,
            uplink_buffer_ms: 20,
            downlink_buffer_ms: 10,
            write_timeout_ms: 2_000,
        }
    }
}

/// The patchbay engine.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Samples per block at 48 kHz (48 = 1 ms).
    pub block_samples: usize,
    /// Members a conference can hold.
    pub conference_members: usize,
    /// Run the engine thread with real-time (`SCHED_FIFO`) priority when allowed.
    pub realtime_priority: bool,
    /// Lock the process's memory (`mlockall`) when allowed, so that no page the media
    /// threads touch is paged out and read back from disk in the middle of a block.
    pub lock_memory: bool,
    /// Most memory the decoded clips of players may take, in MiB (a clip is kept
    /// decoded at 48 kHz while a player uses it: 11 MiB a minute). A clip that would
    /// not fit is refused.
    pub clip_cache_mb: usize,
    /// Most nodes besides calls (players, recorders, conferences, flows, rooms,
    /// broadcasts); each costs engine time in every block.
    pub max_nodes: usize,
    /// Most patches (a caller's lobby patch not counted).
    pub max_patches: usize,
    /// New nodes and patches are refused through the API while the engine's recent
    /// block processing time exceeds this share of the block period, in percent.
    pub max_load_percent: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_samples: DEFAULT_BLOCK_SAMPLES,
            conference_members: 16,
            realtime_priority: true,
            lock_memory: true,
            clip_cache_mb: 512,
            max_nodes: 2_000,
            max_patches: 20_000,
            max_load_percent: 80,
        }
    }
}

/// Name of the lobby's hold-music player (`player:hold`), made from `lobby.hold_music`.
pub const HOLD_PLAYER: &str = "hold";

/// Calls no route claims wait here.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LobbyConfig {
    /// A WAV file looped to every caller in the lobby; silence if unset.
    pub hold_music: Option<PathBuf>,
    /// Gain of the hold music in dB.
    pub hold_gain_db: f32,
}

/// Where recordings go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingsConfig {
    /// Directory for relative recording paths.
    pub dir: PathBuf,
    /// Sample format.
    pub format: RecordingFormat,
}

impl Default for RecordingsConfig {
    fn default() -> Self {
        RecordingsConfig {
            dir: PathBuf::from("recordings"),
            format: RecordingFormat::S16,
        }
    }
}

/// Where the files that routes and API clients may play live.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Directory of prompts and music: every file a route or an API client names is a
    /// relative path inside it, opened without following symbolic links.
    pub dir: PathBuf,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            dir: PathBuf::from("media"),
        }
    }
}

/// A player that exists from start-up (a studio's jingle, a second hold music).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlayerConfig {
    /// Node name (`player:<name>`).
    pub name: String,
    /// The WAV file.
    pub file: PathBuf,
    /// Loop forever.
    #[serde(default, rename = "loop")]
    pub looped: bool,
    /// Gain in dB.
    #[serde(default)]
    pub gain_db: f32,
}

/// Logging.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `telepatch=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// The REST API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the HTTP API (`/v1`, `/healthz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
    /// Interval of the level-meter events on the event stream, in ms.
    pub levels_interval_ms: u64,
    /// Threads of the control plane's runtime (API, database, CDR writer), apart from
    /// the call sessions' runtime so that busy calls cannot starve the API.
    pub worker_threads: usize,
    /// Unknown API tokens one address may present within 10 s before its requests with
    /// tokens not verified recently are refused (429) for the rest of the window (20;
    /// 0 turns the limit off).
    pub max_failed_tokens: u32,
    /// A request's head must arrive complete within this many ms of the connection
    /// opening or of the previous response ending (so it also closes idle kept-alive
    /// connections); 10000.
    pub header_timeout_ms: u64,
    /// HTTP API connections open at once (256); fewer if the file-descriptor limit
    /// leaves less after what calls need (see `net::fd_limit`).
    pub max_connections: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            levels_interval_ms: 100,
            worker_threads: 1,
            max_failed_tokens: api::http::auth::DEFAULT_MAX_FAILURES,
            header_timeout_ms: 10_000,
            max_connections: 256,
        }
    }
}

/// The database.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path/telepatch.db` or `postgres://user@host/db`. Default: a SQLite file
    /// `telepatch.db` next to the configuration file (or in the working directory).
    pub url: Option<String>,
    /// Call record writes that may wait in memory while the database is unavailable
    /// (10000).
    pub cdr_queue: usize,
    /// How often live calls' open records are refreshed with their duration and
    /// counters so far, in ms (5000): what a record keeps if the gateway dies.
    pub cdr_refresh_ms: u64,
    /// Open records of any instance not refreshed for this long, in seconds, are closed
    /// as interrupted by whichever instance notices (600).
    pub cdr_stale_after_s: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            cdr_queue: 10_000,
            cdr_refresh_ms: 5_000,
            cdr_stale_after_s: 600,
        }
    }
}

/// This gateway among others sharing a database.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// The instance's name in the call records it writes (1-64 characters of
    /// `[A-Za-z0-9._-]`): at start-up it closes the records of its own calls that a
    /// crash left open. Default: the host name. Instances sharing a database must have
    /// different names.
    pub instance: Option<String>,
}

impl GatewayConfig {
    /// The instance name: the configured one, else the host name (characters outside
    /// `[A-Za-z0-9._-]` replaced by `-`, at most 64), else `telepatch`.
    pub fn instance(&self) -> String {
        if let Some(name) = &self.instance {
            return name.clone();
        }
        let host: String = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        if host.is_empty() {
            "telepatch".into()
        } else {
            host
        }
    }
}

/// Voice activity detection on callers' audio (talk start/stop events).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VadConfig {
    /// Run it at all.
    pub enabled: bool,
    /// webrtc-vad aggressiveness, 0 (quality) to 3 (very aggressive).
    pub mode: u8,
    /// Voiced 10 ms frames in a row before "talk start".
    pub start_frames: u32,
    /// Unvoiced 10 ms frames in a row before "talk stop".
    pub stop_frames: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            enabled: true,
            mode: 2,
            start_frames: 3,
            stop_frames: 30,
        }
    }
}

pub use crate::dns::config::{DnsConfig, NameServerName};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This gateway instance.
    pub gateway: GatewayConfig,
    /// AudioSocket listener and call handling.
    pub audiosocket: AudioSocketConfig,
    /// Patchbay engine.
    pub engine: EngineConfig,
    /// Lobby.
    pub lobby: LobbyConfig,
    /// Recordings.
    pub recordings: RecordingsConfig,
    /// Files that routes and API clients may play.
    pub media: MediaConfig,
    /// Players created at start-up.
    pub players: Vec<PlayerConfig>,
    /// Static routes.
    pub routes: Vec<Route>,
    /// Logging.
    pub log: LogConfig,
    /// REST API.
    pub api: ApiConfig,
    /// Database.
    pub database: DatabaseConfig,
    /// Voice activity detection.
    pub vad: VadConfig,
    /// The DNS server of AoDNS broadcasts.
    pub dns: DnsConfig,
    /// AES67 flows and SAP.
    pub aes67: crate::aes67::Aes67Config,
    /// The media clock (PTP time for AES67 flows).
    pub clock: crate::clock::ClockConfig,
    /// Call events POSTed to an application.
    pub webhooks: crate::webhooks::WebhooksConfig,
}

/// One problem found while loading or validating the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where: a dotted path such as `audiosocket.max_calls` or `routes[2]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The values are inconsistent or out of range.
    #[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {}: {}", p.field, p.message)).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
}

/// Overrides from the command line and environment (clap fills these).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `audiosocket.listen`.
    pub listen: Option<SocketAddr>,
    /// `audiosocket.max_calls`.
    pub max_calls: Option<usize>,
    /// `lobby.hold_music`.
    pub hold_music: Option<PathBuf>,
    /// `recordings.dir`.
    pub recordings_dir: Option<PathBuf>,
    /// `media.dir`.
    pub media_dir: Option<PathBuf>,
    /// `log.level`.
    pub log_level: Option<String>,
    /// `log.format`.
    pub log_format: Option<LogFormat>,
    /// `api.listen`.
    pub api_listen: Option<SocketAddr>,
    /// `database.url`.
    pub database_url: Option<String>,
}

const AUDIOSOCKET_RATES: [u32; 9] = [
    8_000, 12_000, 16_000, 24_000, 32_000, 44_100, 48_000, 96_000, 192_000,
];

impl Config {
    /// Reads `path` (if given) over the defaults, applies `overrides` and validates.
    /// Relative paths in a file are taken relative to the file's directory.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match path {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let mut config =
                    Config::from_toml(&text).map_err(|message| ConfigError::Parse {
                        path: path.to_path_buf(),
                        message,
                    })?;
                if let Some(base) = path.parent() {
                    config.resolve_paths(base);
                    if config.database.url.is_none() {
                        config.database.url =
                            Some(format!("sqlite://{}", base.join("telepatch.db").display()));
                    }
                }
                config
            }
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (no validation).
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(hold) = self.lobby.hold_music.as_mut() {
            resolve(hold);
        }
        resolve(&mut self.recordings.dir);
        resolve(&mut self.media.dir);
        for player in &mut self.players {
            resolve(&mut player.file);
        }
        // A route's play files stay relative: they are inside `media.dir`.
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(listen) = o.listen {
            self.audiosocket.listen = listen;
        }
        if let Some(max) = o.max_calls {
            self.audiosocket.max_calls = max;
        }
        if let Some(hold) = &o.hold_music {
            self.lobby.hold_music = Some(hold.clone());
        }
        if let Some(dir) = &o.recordings_dir {
            self.recordings.dir = dir.clone();
        }
        if let Some(dir) = &o.media_dir {
            self.media.dir = dir.clone();
        }
        if let Some(level) = &o.log_level {
            self.log.level = level.clone();
        }
        if let Some(format) = o.log_format {
            self.log.format = format;
        }
        if let Some(listen) = o.api_listen {
            self.api.listen = listen;
        }
        if let Some(url) = &o.database_url {
            self.database.url = Some(url.clone());
        }
    }

    /// Checks every value; reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(ConfigProblem {
                field: field.to_owned(),
                message,
            });
        };
        let a = &self.audiosocket;
        if a.max_calls == 0 || a.max_calls > 20_000 {
            problem(
                "audiosocket.max_calls",
                format!("{} is out of range (1..=20000)", a.max_calls),
            );
        }
        if !(1..=65_536).contains(&self.engine.clip_cache_mb) {
            problem(
                "engine.clip_cache_mb",
                format!("{} is out of range (1..=65536)", self.engine.clip_cache_mb),
            );
        }
        if !(1..=100_000).contains(&self.engine.max_nodes) {
            problem(
                "engine.max_nodes",
                format!("{} is out of range (1..=100000)", self.engine.max_nodes),
            );
        }
        if !(1..=1_000_000).contains(&self.engine.max_patches) {
            problem(
                "engine.max_patches",
                format!("{} is out of range (1..=1000000)", self.engine.max_patches),
            );
        }
        if !(1..=100).contains(&self.engine.max_load_percent) {
            problem(
                "engine.max_load_percent",
                format!("{} is out of range (1..=100)", self.engine.max_load_percent),
            );
        }
        if a.max_unidentified == 0 || a.max_unidentified > 100_000 {
            problem(
                "audiosocket.max_unidentified",
                format!("{} is out of range (1..=100000)", a.max_unidentified),
            );
        }
        if a.max_unidentified_per_source == 0 || a.max_unidentified_per_source > a.max_unidentified
        {
            problem(
                "audiosocket.max_unidentified_per_source",
                format!(
                    "{} is out of range (1..=max_unidentified, {})",
                    a.max_unidentified_per_source, a.max_unidentified
                ),
            );
        }
        if !(100..=60_000).contains(&a.id_timeout_ms) {
            problem(
                "audiosocket.id_timeout_ms",
                format!("{} is out of range (100..=60000)", a.id_timeout_ms),
            );
        }
        if !(20..=4_000).contains(&a.max_message_ms) {
            problem(
                "audiosocket.max_message_ms",
                format!("{} is out of range (20..=4000)", a.max_message_ms),
            );
        }
        if let ReplyRate::Fixed(hz) = a.reply_rate
            && !AUDIOSOCKET_RATES.contains(&hz)
        {
            problem(
                "audiosocket.reply_rate",
                format!(
                    "{hz} is not an AudioSocket rate (\"caller\" or one of {AUDIOSOCKET_RATES:?})"
                ),
            );
        }
        if a.reply_rate_wait_ms > 1_500 {
            problem(
                "audiosocket.reply_rate_wait_ms",
                format!(
                    "{} is too long: the dialplan app hangs up after 2 s of silence",
                    a.reply_rate_wait_ms
                ),
            );
        }
        if !matches!(a.frame_ms, 10 | 20) {
            problem(
                "audiosocket.frame_ms",
                format!("{} must be 10 or 20", a.frame_ms),
            );
        }
        if !(5..=200).contains(&a.uplink_buffer_ms) {
            problem(
                "audiosocket.uplink_buffer_ms",
                format!("{} is out of range (5..=200)", a.uplink_buffer_ms),
            );
        }
        if !(5..=200).contains(&a.downlink_buffer_ms) {
            problem(
                "audiosocket.downlink_buffer_ms",
                format!("{} is out of range (5..=200)", a.downlink_buffer_ms),
            );
        }
        if !(100..=30_000).contains(&a.write_timeout_ms) {
            problem(
                "audiosocket.write_timeout_ms",
                format!("{} is out of range (100..=30000)", a.write_timeout_ms),
            );
        }
        if !(16..=480).contains(&self.engine.block_samples)
            || 48_000 % self.engine.block_samples != 0
        {
            problem(
                "engine.block_samples",
                format!(
                    "{} must divide 48000 and be 16..=480 (48 = 1 ms)",
                    self.engine.block_samples
                ),
            );
        }
        if !(2..=256).contains(&self.engine.conference_members) {
            problem(
                "engine.conference_members",
                format!(
                    "{} is out of range (2..=256)",
                    self.engine.conference_members
                ),
            );
        }
        if !(1..=1_000_000).contains(&self.database.cdr_queue) {
            problem(
                "database.cdr_queue",
                format!("{} is out of range (1..=1000000)", self.database.cdr_queue),
            );
        }
        if !(100..=60_000).contains(&self.database.cdr_refresh_ms) {
            problem(
                "database.cdr_refresh_ms",
                format!(
                    "{} is out of range (100..=60000)",
                    self.database.cdr_refresh_ms
                ),
            );
        }
        if !(60..=604_800).contains(&self.database.cdr_stale_after_s) {
            problem(
                "database.cdr_stale_after_s",
                format!(
                    "{} is out of range (60..=604800)",
                    self.database.cdr_stale_after_s
                ),
            );
        }
        if let Err(e) = api::store::check_instance(&self.gateway.instance()) {
            problem("gateway.instance", e.to_string());
        }
        if !(1..=16).contains(&self.api.worker_threads) {
            problem(
                "api.worker_threads",
                format!("{} is out of range (1..=16)", self.api.worker_threads),
            );
        }
        if !(100..=600_000).contains(&self.api.header_timeout_ms) {
            problem(
                "api.header_timeout_ms",
                format!(
                    "{} is out of range (100..=600000)",
                    self.api.header_timeout_ms
                ),
            );
        }
        let min_connections = crate::net::fd_limit::MIN_API_CONNECTIONS;
        if !(min_connections..=1_000_000).contains(&self.api.max_connections) {
            problem(
                "api.max_connections",
                format!(
                    "{} is out of range ({min_connections}..=1000000)",
                    self.api.max_connections
                ),
            );
        }
        let dns = &self.dns;
        if !(512..=4096).contains(&dns.max_udp_payload) {
            problem(
                "dns.max_udp_payload",
                format!("{} is out of range (512..=4096)", dns.max_udp_payload),
            );
        }
        if dns.rate_limit_qps > 1_000_000 {
            problem(
                "dns.rate_limit_qps",
                format!("{} is out of range (0..=1000000)", dns.rate_limit_qps),
            );
        }
        if dns.rate_limit_qps > 0 && !(1..=1_000_000).contains(&dns.rate_limit_burst) {
            problem(
                "dns.rate_limit_burst",
                format!("{} is out of range (1..=1000000)", dns.rate_limit_burst),
            );
        }
        if !(100..=600_000).contains(&dns.tcp_timeout_ms) {
            problem(
                "dns.tcp_timeout_ms",
                format!("{} is out of range (100..=600000)", dns.tcp_timeout_ms),
            );
        }
        if !(1..=16).contains(&dns.worker_threads) {
            problem(
                "dns.worker_threads",
                format!("{} is out of range (1..=16)", dns.worker_threads),
            );
        }
        if !(-96.0..=24.0).contains(&self.lobby.hold_gain_db) {
            problem(
                "lobby.hold_gain_db",
                format!("{} is out of range (-96..=24)", self.lobby.hold_gain_db),
            );
        }
        if let Some(hold) = &self.lobby.hold_music
            && !hold.is_file()
        {
            problem(
                "lobby.hold_music",
                format!("{} is not a readable file", hold.display()),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, player) in self.players.iter().enumerate() {
            let field = format!("players[{i}]");
            if let Err(e) = api::model::NodeRef::new(api::model::NodeKind::Player, &player.name) {
                problem(&field, e.to_string());
            }
            if player.name == HOLD_PLAYER {
                problem(
                    &field,
                    format!(
                        "the name {:?} is reserved for the lobby's hold music",
                        player.name
                    ),
                );
            }
            if !names.insert(player.name.clone()) {
                problem(&field, format!("duplicate player name {:?}", player.name));
            }
            if !player.file.is_file() {
                problem(
                    &field,
                    format!("{} is not a readable file", player.file.display()),
                );
            }
        }
        let mut route_names = std::collections::HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            if let Err(e) = route.validate() {
                problem(&field, e.to_string());
            }
            if !route_names.insert(route.name.clone()) {
                problem(&field, format!("duplicate route name {:?}", route.name));
            }
            for action in &route.actions {
                if let RouteAction::Play { file, .. } = action
                    && !self.media.dir.join(file).is_file()
                {
                    problem(
                        &field,
                        format!(
                            "play file {file} is not a readable file in {}",
                            self.media.dir.display()
                        ),
                    );
                }
            }
        }
        for (field, message) in self.clock.problems() {
            problem(&field, message);
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            problem(
                "log.level",
                format!("{:?} is not a valid log filter", self.log.level),
            );
        }
        for (field, message) in self.aes67.problems() {
            problem(&field, message);
        }
        for (field, message) in self.webhooks.problems() {
            problem(&field, message);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    /// The database URL in force (the default SQLite file when none is configured).
    pub fn database_url(&self) -> String {
        self.database
            .url
            .clone()
            .unwrap_or_else(|| "sqlite://telepatch.db".to_owned())
    }

    /// The ID deadline.
    pub fn id_timeout(&self) -> Duration {
        Duration::from_millis(self.audiosocket.id_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bind_loopback_and_validate() {
        let config = Config::default();
        assert!(config.audiosocket.listen.ip().is_loopback());
        config.validate().unwrap();
    }

    #[test]
    fn instance_defaults_to_a_valid_host_name_and_is_checked() {
        let config = Config::default();
        let instance = config.gateway.instance();
        api::store::check_instance(&instance).unwrap();
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        if api::store::check_instance(&host).is_ok() {
            assert_eq!(instance, host);
        }
        let named = Config::from_toml("[gateway]\ninstance = \"studio-2\"\n").unwrap();
        assert_eq!(named.gateway.instance(), "studio-2");
        named.validate().unwrap();
        for bad in ["", "two words", "x/y"] {
            let config = Config::from_toml(&format!("[gateway]\ninstance = {bad:?}\n")).unwrap();
            let Err(ConfigError::Invalid { problems }) = config.validate() else {
                panic!("{bad:?} accepted");
            };
            assert!(
                problems.iter().any(|p| p.field == "gateway.instance"),
                "{bad:?}"
            );
        }
        for (text, field) in [
            (
                "[database]\ncdr_refresh_ms = 50\n",
                "database.cdr_refresh_ms",
            ),
            (
                "[database]\ncdr_stale_after_s = 10\n",
                "database.cdr_stale_after_s",
            ),
        ] {
            let Err(ConfigError::Invalid { problems }) =
                Config::from_toml(text).unwrap().validate()
            else {
                panic!("{text} accepted");
            };
            assert!(problems.iter().any(|p| p.field == field), "{text}");
        }
    }

    #[test]
    fn audiosocket_sources_default_to_loopback_and_are_parsed_once() {
        let config = Config::from_toml("").unwrap();
        assert!(
            config
                .audiosocket
                .allow
                .allows("127.0.0.1".parse().unwrap())
        );
        assert!(config.audiosocket.allow.allows("::1".parse().unwrap()));
        assert!(!config.audiosocket.allow.allows("10.0.0.1".parse().unwrap()));
        let config =
            Config::from_toml("[audiosocket]\nallow = \"10.1.0.0/16, 192.0.2.7\"\n").unwrap();
        assert!(config.audiosocket.allow.allows("10.1.2.3".parse().unwrap()));
        assert!(
            config
                .audiosocket
                .allow
                .allows("192.0.2.7".parse().unwrap())
        );
        assert!(
            !config
                .audiosocket
                .allow
                .allows("127.0.0.1".parse().unwrap())
        );
        assert!(Config::from_toml("[audiosocket]\nallow = \"10.1.0.0/99\"\n").is_err());
    }

    #[test]
    fn parses_a_full_file() {
        let text = r#"
            [audiosocket]
            listen = "127.0.0.1:19092"
            max_calls = 10
            reply_rate = 16000
            uplink_coding = "ulaw"
            duplicate_uuid = "replace"

            [engine]
            conference_members = 4

            [[routes]]
            name = "desk"
            priority = 5
            match = { uuid_prefix = "0000" }
            actions = [
              { action = "record", path = "{uuid}.wav", channels = "both" },
              { action = "conference", name = "desk" },
            ]

            [[routes]]
            name = "everyone-else"
            match = "default"
        "#;
        let config = Config::from_toml(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.audiosocket.reply_rate, ReplyRate::Fixed(16_000));
        assert_eq!(config.audiosocket.uplink_coding, AudioCoding::Ulaw);
        assert_eq!(config.audiosocket.duplicate_uuid, DuplicatePolicy::Replace);
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.routes[1].matcher, api::model::RouteMatch::Default);
    }

    #[test]
    fn dns_section_defaults_to_loopback_and_is_validated() {
        let config = Config::default();
        assert_eq!(config.dns.listen, SocketAddr::from(([127, 0, 0, 1], 5053)));
        let config = Config::from_toml(
            "[dns]\nlisten = \"127.0.0.1:0\"\nrate_limit_qps = 0\nmax_udp_payload = 4096\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.dns.rate_limit_qps, 0);
        let mut bad = Config::default();
        bad.dns.max_udp_payload = 100;
        bad.dns.worker_threads = 0;
        let Err(ConfigError::Invalid { problems }) = bad.validate() else {
            panic!("expected problems");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["dns.max_udp_payload", "dns.worker_threads"]);
    }

    #[test]
    fn api_connection_limits_are_read_and_validated() {
        let config =
            Config::from_toml("[api]\nheader_timeout_ms = 500\nmax_connections = 16\n").unwrap();
        config.validate().unwrap();
        assert_eq!(config.api.header_timeout_ms, 500);
        assert_eq!(config.api.max_connections, 16);
        let mut bad = Config::default();
        bad.api.header_timeout_ms = 0;
        bad.api.max_connections = 1;
        let Err(ConfigError::Invalid { problems }) = bad.validate() else {
            panic!("expected problems");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["api.header_timeout_ms", "api.max_connections"]);
    }

    #[test]
    fn dns_nameserver_defaults_to_localhost_and_must_be_a_host_name() {
        assert_eq!(
            Config::default().dns.nameserver.name().to_ascii(),
            "localhost."
        );
        let config = Config::from_toml("[dns]\nnameserver = \"NS1.Example.net\"\n").unwrap();
        assert_eq!(config.dns.nameserver.name().to_ascii(), "ns1.example.net.");
        for bad in ["", "a..b", "bad host.net", "."] {
            let err = Config::from_toml(&format!("[dns]\nnameserver = {bad:?}\n")).unwrap_err();
            assert!(err.contains("name server"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_errors_with_a_location() {
        let err = Config::from_toml("[audiosocket]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.contains("listen_addr"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let mut config = Config::default();
        config.audiosocket.max_calls = 0;
        config.audiosocket.reply_rate = ReplyRate::Fixed(11_025);
        config.engine.block_samples = 7;
        config.lobby.hold_music = Some(PathBuf::from("/nonexistent/hold.wav"));
        let Err(ConfigError::Invalid { problems }) = config.validate() else {
            panic!("expected problems");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "audiosocket.max_calls",
                "audiosocket.reply_rate",
                "engine.block_samples",
                "lobby.hold_music"
            ]
        );
    }

    #[test]
    fn overrides_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("telepatch.toml");
        std::fs::write(
            &path,
            "[audiosocket]\nlisten = \"127.0.0.1:1000\"\nmax_calls = 3\n",
        )
        .unwrap();
        let overrides = Overrides {
            max_calls: Some(7),
            ..Overrides::default()
        };
        let config = Config::load(Some(&path), &overrides).unwrap();
        assert_eq!(config.audiosocket.listen.port(), 1000);
        assert_eq!(config.audiosocket.max_calls, 7);
        assert_eq!(config.recordings.dir, dir.path().join("recordings"));
    }
}
