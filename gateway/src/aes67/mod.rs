//! AES67 flows: transmit (`aes67tx`, inputs `ch1..chN`) and receive (`aes67rx`, outputs
//! `ch1..chN`) nodes, their SDP and SAP (aes67.md).
//!
//! - [`bridge`]: the ring and drift correction between the patchbay's clock and the PTP
//!   media clock;
//! - [`tx`] / [`rx`]: the sans-IO cores (packet schedule, playout) and engine nodes;
//! - [`media`]: the one thread that sends and receives every flow's packets on PTP time;
//! - [`sap`]: announcements, deletions and the directory of sessions heard;
//! - [`net`]: socket set-up (always bound to the flow's interface, never the wildcard).
//!
//! [`Aes67Hub`] ties them to the gateway: it builds a flow's engine node and
//! [`NodeService`] from its [`NodeConfig`], serves `GET /v1/flows/{id}/sdp` and
//! `GET /v1/discovery/sap`, and stops everything at shutdown. The PTP time comes from
//! [`crate::clock::MediaClock`] (`gateway.media_clock()`).
//!
//! Identity of a transmit flow's session: the `o=` session id is a hash of the node's
//! name, so a flow keeps its identity across restarts and updates; the version is the
//! Unix time of its creation (at least the last version + 1), so it grows on every update
//! (an update rebuilds the node) and every restart.

pub mod bridge;
pub mod media;
pub mod net;
pub mod rx;
pub mod sap;
pub mod tx;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use api::control::{
    Aes67Alignment, Aes67Encoding, NodeConfig, SapSessionInfo, aes67_frames_per_packet,
};
use api::model::NodeRef;
use codecs::aes67::{
    Alignment, Channels, Encoding, JitterBuffer, PacketTime, RxConfig, StreamFormat, TxConfig,
};
use codecs::rtp::PayloadType;
use codecs::sdp::{RefClock, SenderSdp};
use serde::{Deserialize, Serialize};

use self::bridge::{BridgeSettings, BridgeStats, bridge};
use self::media::{Command, MediaThread, RxEndpoint, RxSource, TxEndpoint};
use self::rx::{CHUNK, RxCore, RxNode, RxStats, Subscription};
use self::sap::{SapService, SapSubscriber};
use self::tx::{TxCore, TxNode, TxStats};
use crate::engine::Node;
use crate::media_clock::MediaClock;
use crate::node_service::{BuildError, MetricFamilies, MetricKind, NodeService};
use crate::patchbay::NodeSpec;

/// The `[aes67]` configuration section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Aes67Config {
    /// Seconds between two SAP announcements of a transmit flow (30, as AES67 devices
    /// announce; 1-300).
    pub sap_interval_s: u64,
    /// Listen for SAP announcements (`GET /v1/discovery/sap`, `sap_session`
    /// subscriptions).
    pub sap_listen: bool,
    /// Address of the interface the SAP listener joins 239.255.255.255 on.
    pub sap_interface: Ipv4Addr,
    /// Most sessions the SAP directory remembers.
    pub sap_max_sessions: usize,
    /// Scheduling margin of each flow's clock bridge beyond one engine block and one
    /// packet, in ms (0.5-200): latency against robustness to a late thread. Hosts that
    /// stall for tens of milliseconds (busy virtual machines) need the upper end.
    pub bridge_margin_ms: f64,
}

impl Default for Aes67Config {
    fn default() -> Self {
        Aes67Config {
            sap_interval_s: 30,
            sap_listen: true,
            sap_interface: Ipv4Addr::LOCALHOST,
            sap_max_sessions: 1024,
            bridge_margin_ms: 2.0,
        }
    }
}

impl Aes67Config {
    /// Every problem with the values, as `(field, message)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !(1..=300).contains(&self.sap_interval_s) {
            problems.push((
                "aes67.sap_interval_s".into(),
                format!("{} is out of range (1..=300)", self.sap_interval_s),
            ));
        }
        let i = self.sap_interface;
        if i.is_unspecified() || i.is_multicast() || i.is_broadcast() {
            problems.push((
                "aes67.sap_interface".into(),
                format!("{i} is not the unicast address of an interface"),
            ));
        }
        if !(1..=100_000).contains(&self.sap_max_sessions) {
            problems.push((
                "aes67.sap_max_sessions".into(),
                format!("{} is out of range (1..=100000)", self.sap_max_sessions),
            ));
        }
        if !(self.bridge_margin_ms.is_finite() && (0.5..=200.0).contains(&self.bridge_margin_ms)) {
            problems.push((
                "aes67.bridge_margin_ms".into(),
                format!("{} is out of range (0.5..=200)", self.bridge_margin_ms),
            ));
        }
        problems
    }
}

/// 32-bit FNV-1a.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The default group of a flow named `name`: 239.69.x.y (Dante's default AES67 prefix,
/// aes67.md §8), x.y from a hash of the name, y never 0 or 255.
pub fn default_group(name: &str) -> Ipv4Addr {
    let h = fnv1a(name);
    Ipv4Addr::new(239, 69, (h >> 8) as u8, 1 + (h % 254) as u8)
}

fn unprocessable(field: &str, message: impl std::fmt::Display) -> BuildError {
    BuildError::invalid(field, message)
}

/// A transmit flow's settings, resolved from its [`NodeConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct TxSettings {
    /// Encoding, channels, packet time.
    pub format: StreamFormat,
    /// Destination group.
    pub group: Ipv4Addr,
    /// Destination port.
    pub port: u16,
    /// Multicast TTL.
    pub ttl: u8,
    /// DSCP.
    pub dscp: u8,
    /// Interface address (source, `IP_MULTICAST_IF`, SDP origin).
    pub interface: Ipv4Addr,
    /// RTP payload type.
    pub payload_type: PayloadType,
    /// `s=`.
    pub session_name: String,
    /// `i=`.
    pub info: Option<String>,
    /// Announce with SAP.
    pub announce: bool,
}

impl TxSettings {
    /// Resolves an `aes67tx` configuration for the node named `name`.
    pub fn from_config(name: &str, config: &NodeConfig) -> Result<TxSettings, BuildError> {
        let NodeConfig::Aes67Tx {
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
            announce,
        } = config
        else {
            return Err(unprocessable("kind", "not an aes67tx configuration"));
        };
        config
            .validate()
            .map_err(|(field, message)| unprocessable(field, message))?;
        let packet_time = aes67_frames_per_packet(*packet_time_us)
            .and_then(|f| PacketTime::from_frames(f as usize))
            .ok_or_else(|| unprocessable("packet_time_us", "not an AES67 packet time"))?;
        let channels =
            Channels::new(*channels).ok_or_else(|| unprocessable("channels", "1..=8"))?;
        let payload_type = PayloadType::new(*payload_type)
            .ok_or_else(|| unprocessable("payload_type", "96..=127"))?;
        Ok(TxSettings {
            format: StreamFormat {
                encoding: match encoding {
                    Aes67Encoding::L24 => Encoding::L24,
                    Aes67Encoding::L16 => Encoding::L16,
                },
                channels,
                packet_time,
            },
            group: group.unwrap_or_else(|| default_group(name)),
            port: *port,
            ttl: *ttl,
            dscp: *dscp,
            interface: *interface,
            payload_type,
            session_name: session_name.clone().unwrap_or_else(|| name.to_owned()),
            info: info.clone(),
            announce: *announce,
        })
    }
}

/// The SDP of a transmit flow and its SAP message id hash.
struct FlowSdp {
    sender: SenderSdp,
    /// The media clock's `ts-refclk` it was written with.
    refclk: String,
    text: String,
    hash: u16,
}

impl FlowSdp {
    fn new(sender: SenderSdp, refclk: String) -> FlowSdp {
        let text = sender.write();
        let hash = codecs::sap::msg_id_hash(text.as_bytes());
        FlowSdp {
            sender,
            refclk,
            text,
            hash,
        }
    }
}

/// A transmit flow as the control side, the SAP thread and the API see it.
pub struct TxFlow {
    /// Its node.
    pub node: NodeRef,
    /// Its id among flows.
    pub id: u64,
    /// Its settings.
    pub settings: TxSettings,
    /// Its counters.
    pub stats: Arc<TxStats>,
    /// Its SSRC.
    pub ssrc: u32,
    /// The bridge's latency, in ms.
    pub bridge_latency_ms: f64,
    clock: Arc<dyn MediaClock>,
    sdp: Mutex<FlowSdp>,
}

impl TxFlow {
    fn sdp_state(&self) -> MutexGuard<'_, FlowSdp> {
        self.sdp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The SDP text (CRLF), as announced.
    pub fn sdp(&self) -> String {
        self.sdp_state().text.clone()
    }

    /// The `o=` session version.
    pub fn sdp_version(&self) -> u64 {
        self.sdp_state().sender.session_version
    }

    /// The SAP message id hash of the current SDP.
    pub fn msg_id_hash(&self) -> u16 {
        self.sdp_state().hash
    }

    fn set_msg_id_hash(&self, hash: u16) {
        self.sdp_state().hash = hash;
    }

    /// (hash, SDP) to announce.
    fn announcement(&self) -> (u16, String) {
        let sdp = self.sdp_state();
        (sdp.hash, sdp.text.clone())
    }

    /// (hash, `o=` line) of the current version's deletion.
    fn deletion(&self) -> (u16, String) {
        let sdp = self.sdp_state();
        (sdp.hash, sdp.sender.origin_line())
    }

    /// Re-reads the media clock's `ts-refclk`; if it changed, rewrites the SDP with a
    /// bumped version and a new hash and returns the old version's (hash, `o=` line).
    fn refresh(&self) -> Option<(u16, String)> {
        let refclk = self.clock.ts_refclk();
        let mut sdp = self.sdp_state();
        if refclk == sdp.refclk {
            return None;
        }
        let old = (sdp.hash, sdp.sender.origin_line());
        let mut sender = sdp.sender.clone();
        sender.refclk = RefClock::parse(&refclk);
        sender.session_version += 1;
        *sdp = FlowSdp::new(sender, refclk);
        tracing::info!(flow = %self.node, version = sdp.sender.session_version, "SDP changed (media clock reference)");
        Some(old)
    }
}

/// A receive flow's settings, resolved from its [`NodeConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct RxSettings {
    /// The SDP text, if subscribed from one.
    pub sdp: Option<String>,
    /// The SAP session name, if subscribed by SAP.
    pub sap_session: Option<String>,
    /// Output channels, if given.
    pub channels: Option<u8>,
    /// Latency in ms at the start, if given.
    pub latency_ms: Option<f32>,
    /// Largest latency in ms late packets may raise it to, if given (40 by default).
    pub max_latency_ms: Option<f32>,
    /// Interface to join on.
    pub interface: Ipv4Addr,
    /// Timestamp alignment.
    pub alignment: Aes67Alignment,
}

impl RxSettings {
    /// Resolves an `aes67rx` configuration.
    pub fn from_config(config: &NodeConfig) -> Result<RxSettings, BuildError> {
        let NodeConfig::Aes67Rx {
            sdp,
            sap_session,
            channels,
            latency_ms,
            max_latency_ms,
            interface,
            alignment,
        } = config
        else {
            return Err(unprocessable("kind", "not an aes67rx configuration"));
        };
        config
            .validate()
            .map_err(|(field, message)| unprocessable(field, message))?;
        Ok(RxSettings {
            sdp: sdp.clone(),
            sap_session: sap_session.clone(),
            channels: *channels,
            latency_ms: *latency_ms,
            max_latency_ms: *max_latency_ms,
            interface: *interface,
            alignment: *alignment,
        })
    }
}

/// What a receive flow is subscribed to, for its status.
#[derive(Debug, Clone, Serialize)]
struct SourceInfo {
    session_name: Option<String>,
    origin: Option<String>,
    group: String,
    port: u16,
    format: String,
    packet_time_us: u32,
    payload_type: u8,
    alignment: &'static str,
    mediaclk_offset: Option<u32>,
    latency_ms: f64,
    max_latency_ms: f64,
    ts_refclk: Option<String>,
}

#[derive(Debug, Default)]
struct RxState {
    source: Option<SourceInfo>,
    /// `subscribed`, `waiting for the SAP session`, `withdrawn` or why it failed.
    state: String,
    watcher: Option<u64>,
}

/// A receive flow as the control side and the SAP thread see it.
pub struct RxFlow {
    /// Its node.
    pub node: NodeRef,
    /// Its id among flows.
    pub id: u64,
    /// Its settings.
    pub settings: RxSettings,
    /// Output channels.
    pub channels: usize,
    /// Its counters.
    pub stats: Arc<RxStats>,
    /// The bridge's latency, in ms.
    pub bridge_latency_ms: f64,
    clock: Arc<dyn MediaClock>,
    media: Arc<MediaThread>,
    state: Mutex<RxState>,
}

impl RxFlow {
    fn rx_state(&self) -> MutexGuard<'_, RxState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Parses `sdp` and opens its stream: the socket and the jitter buffer.
    fn prepare(&self, sdp: &str) -> Result<(RxSource, SourceInfo), (&'static str, String)> {
        let info = codecs::sdp::parse_str(sdp).map_err(|e| ("sdp", e.to_string()))?;
        let format = info.stream_format().map_err(|e| ("sdp", e.to_string()))?;
        let mut cfg = RxConfig::new(info.payload_type, format);
        let alignment = match (self.settings.alignment, &info.mediaclk) {
            (Aes67Alignment::MediaClock, _) | (Aes67Alignment::Auto, Some(_)) => {
                Alignment::MediaClock {
                    offset: info.mediaclk_offset(),
                }
            }
            (Aes67Alignment::FirstPacket, _) | (Aes67Alignment::Auto, None) => {
                Alignment::FirstPacket
            }
        };
        cfg.alignment = alignment;
        if let Some(ms) = self.settings.latency_ms {
            cfg.latency_frames = (f64::from(ms) * 48.0).round() as u32;
        }
        cfg.max_latency_frames = match self.settings.max_latency_ms {
            Some(ms) => (f64::from(ms) * 48.0).round() as u32,
            None => codecs::aes67::jitter::MAX_LATENCY_FRAMES,
        };
        if cfg.max_latency_frames < cfg.latency_frames {
            return Err((
                "max_latency_ms",
                format!(
                    "{} ms is below the latency of {} ms",
                    f64::from(cfg.max_latency_frames) / 48.0,
                    f64::from(cfg.latency_frames) / 48.0
                ),
            ));
        }
        let jitter = JitterBuffer::new(cfg).map_err(|e| ("latency_ms", e.to_string()))?;
        let socket =
            net::flow_receiver(info.group, info.port, self.settings.interface).map_err(|e| {
                (
                    "interface",
                    format!(
                        "cannot receive {}:{} on {}: {e}",
                        info.group, info.port, self.settings.interface
                    ),
                )
            })?;
        let source = SourceInfo {
            session_name: info.session_name.clone(),
            origin: info.origin.as_ref().map(|o| o.address.clone()),
            group: info.group.to_string(),
            port: info.port,
            format: format!("{}/48000/{}", format.encoding, format.channels.get()),
            packet_time_us: format.packet_time.micros(),
            payload_type: info.payload_type.get(),
            alignment: match alignment {
                Alignment::MediaClock { .. } => "media_clock",
                Alignment::FirstPacket => "first_packet",
            },
            mediaclk_offset: match alignment {
                Alignment::MediaClock { offset } => Some(offset),
                Alignment::FirstPacket => None,
            },
            latency_ms: f64::from(cfg.latency_frames) / 48.0,
            max_latency_ms: f64::from(cfg.max_latency_frames) / 48.0,
            ts_refclk: info.refclk.as_ref().map(|r| match r {
                RefClock::Ptp { gmid, domain } => format!("ptp=IEEE1588-2008:{gmid}:{domain}"),
                RefClock::PtpTraceable => "ptp=IEEE1588-2008:traceable".to_owned(),
                RefClock::Other(text) => text.clone(),
            }),
        };
        Ok((
            RxSource {
                socket,
                subscription: Box::new(Subscription::new(jitter)),
            },
            source,
        ))
    }

    /// Subscribes to `sdp` (replacing any stream received now).
    fn subscribe(&self, sdp: &str) -> Result<(), (&'static str, String)> {
        let (source, info) = self.prepare(sdp)?;
        self.media.send(Command::Subscribe {
            id: self.id,
            source: Some(Box::new(source)),
        });
        tracing::info!(flow = %self.node, group = %info.group, port = info.port, format = %info.format, "receive flow subscribed");
        let mut state = self.rx_state();
        state.source = Some(info);
        state.state = "subscribed".into();
        Ok(())
    }
}

impl SapSubscriber for RxFlow {
    fn session_changed(&self, sdp: Option<&str>) {
        match sdp {
            Some(sdp) => {
                if let Err((_, why)) = self.subscribe(sdp) {
                    tracing::warn!(flow = %self.node, error = %why, "cannot follow the SAP session");
                    self.media.send(Command::Subscribe {
                        id: self.id,
                        source: None,
                    });
                    let mut state = self.rx_state();
                    state.source = None;
                    state.state = format!("cannot receive the announced session: {why}");
                }
            }
            None => {
                self.media.send(Command::Subscribe {
                    id: self.id,
                    source: None,
                });
                tracing::info!(flow = %self.node, "SAP session withdrawn");
                let mut state = self.rx_state();
                state.source = None;
                state.state = "withdrawn: the SAP session was deleted or expired".into();
            }
        }
    }
}

/// A flow's engine node, ports and service, ready for
/// the [`crate::kinds`] seam.
pub struct BuiltFlow {
    /// The node and its ports.
    pub spec: NodeSpec,
    /// The engine side.
    pub node: Box<dyn Node>,
    /// The I/O side.
    pub service: Arc<dyn NodeService>,
}

struct HubInner {
    config: Aes67Config,
    realtime: bool,
    block: usize,
    sap: Option<SapService>,
    media: Mutex<Option<Arc<MediaThread>>>,
    flows: Mutex<HashMap<String, Arc<TxFlow>>>,
    versions: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl HubInner {
    fn media(&self, clock: &Arc<dyn MediaClock>) -> Result<Arc<MediaThread>, BuildError> {
        let mut media = lock(&self.media);
        if let Some(thread) = media.as_ref() {
            return Ok(Arc::clone(thread));
        }
        let thread = MediaThread::start(Arc::clone(clock), self.realtime).map_err(|e| {
            BuildError::Unavailable {
                message: format!("cannot start the AES67 media thread: {e}"),
            }
        })?;
        let thread = Arc::new(thread);
        *media = Some(Arc::clone(&thread));
        Ok(thread)
    }

    /// Next `o=` version for the flow named `name`: now in Unix milliseconds, or one more
    /// than the last version it had. A timestamp (as RFC 4566 recommends) keeps versions
    /// increasing across restarts without storing them; milliseconds rather than seconds
    /// so a restart within the same second still moves the version on.
    fn next_version(&self, name: &str) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2))
            .unwrap_or(1);
        let mut versions = lock(&self.versions);
        let version = versions.get(name).map_or(now, |&last| now.max(last + 1));
        versions.insert(name.to_owned(), version);
        version
    }
}

/// The gateway's AES67 side. See the module documentation.
pub struct Aes67Hub {
    inner: Arc<HubInner>,
}

impl Aes67Hub {
    /// Starts the SAP thread (if announcing or listening is possible); the media thread
    /// starts with the first flow. `block` is the engine's block length.
    pub fn start(config: &Aes67Config, realtime: bool, block: usize) -> Aes67Hub {
        let sap = SapService::start(
            Duration::from_secs(config.sap_interval_s),
            config.sap_listen.then_some(config.sap_interface),
            config.sap_max_sessions,
        )
        .map_err(|e| tracing::error!(error = %e, "cannot start the SAP thread"))
        .ok();
        Aes67Hub {
            inner: Arc::new(HubInner {
                config: config.clone(),
                realtime,
                block,
                sap,
                media: Mutex::new(None),
                flows: Mutex::new(HashMap::new()),
                versions: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Builds a flow from an `aes67tx` or `aes67rx` configuration, already sending or
    /// receiving; the caller adds it to the patchbay.
    pub fn build(
        &self,
        node: &NodeRef,
        config: &NodeConfig,
        clock: Arc<dyn MediaClock>,
    ) -> Result<BuiltFlow, BuildError> {
        match config {
            NodeConfig::Aes67Tx { .. } => self.build_tx(node, config, clock),
            NodeConfig::Aes67Rx { .. } => self.build_rx(node, config, clock),
            _ => Err(unprocessable("kind", "not an AES67 flow")),
        }
    }

    fn build_tx(
        &self,
        node: &NodeRef,
        config: &NodeConfig,
        clock: Arc<dyn MediaClock>,
    ) -> Result<BuiltFlow, BuildError> {
        let inner = &self.inner;
        let settings = TxSettings::from_config(node.name(), config)?;
        let channels = settings.format.channels.count();
        let frames = settings.format.packet_time.frames();
        let socket = net::flow_sender(
            settings.interface,
            SocketAddrV4::new(settings.group, settings.port),
            settings.ttl,
            settings.dscp,
        )
        .map_err(|e| {
            unprocessable(
                "interface",
                format!(
                    "cannot send to {}:{} from {}: {e}",
                    settings.group, settings.port, settings.interface
                ),
            )
        })?;
        let media = inner.media(&clock)?;
        let bridge_settings =
            BridgeSettings::new(channels, inner.block, frames, inner.config.bridge_margin_ms);
        let bridge_stats = Arc::new(BridgeStats::default());
        let (writer, reader) = bridge(bridge_settings, Arc::clone(&bridge_stats));
        let stats = Arc::new(TxStats::new(bridge_stats));
        let random = uuid::Uuid::new_v4().as_u128();
        let ssrc = random as u32;
        let core = TxCore::new(
            TxConfig {
                format: settings.format,
                payload_type: settings.payload_type,
                ssrc,
                first_sequence: (random >> 32) as u16,
            },
            0,
            reader,
            Arc::clone(&stats),
        );
        let refclk = clock.ts_refclk();
        let sender = SenderSdp {
            session_id: u64::from(fnv1a(&node.to_string()).max(1)),
            session_version: inner.next_version(node.name()),
            origin: settings.interface,
            name: settings.session_name.clone(),
            session_info: settings.info.clone(),
            media_title: None,
            group: settings.group,
            ttl: settings.ttl,
            port: settings.port,
            payload_type: settings.payload_type,
            format: settings.format,
            mediaclk_offset: 0,
            refclk: RefClock::parse(&refclk),
        };
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let flow = Arc::new(TxFlow {
            node: node.clone(),
            id,
            settings: settings.clone(),
            stats: Arc::clone(&stats),
            ssrc,
            bridge_latency_ms: bridge_settings.latency_ms(),
            clock,
            sdp: Mutex::new(FlowSdp::new(sender, refclk)),
        });
        let packet_len = core.packet_len();
        media.send(Command::AddTx(Box::new(TxEndpoint {
            id,
            core,
            socket,
            buffer: vec![0; packet_len],
        })));
        let mut sap_error = None;
        if settings.announce
            && let Some(sap) = &inner.sap
            && let Err(e) = sap.announce(Arc::clone(&flow))
        {
            tracing::warn!(flow = %node, error = %e, "cannot announce the flow with SAP");
            sap_error = Some(e.to_string());
        }
        lock(&inner.flows).insert(node.name().to_owned(), Arc::clone(&flow));
        tracing::info!(
            flow = %node, group = %settings.group, port = settings.port,
            interface = %settings.interface, format = %format_name(&settings.format),
            "transmit flow started"
        );
        let service = TxService {
            flow,
            hub: Arc::clone(inner),
            media,
            sap_error,
        };
        Ok(BuiltFlow {
            spec: NodeSpec {
                node: node.clone(),
                outputs: Vec::new(),
                inputs: (1..=channels).map(|c| format!("ch{c}")).collect(),
                owner: None,
            },
            node: Box::new(TxNode::new(writer, channels, inner.block)),
            service: Arc::new(service),
        })
    }

    fn build_rx(
        &self,
        node: &NodeRef,
        config: &NodeConfig,
        clock: Arc<dyn MediaClock>,
    ) -> Result<BuiltFlow, BuildError> {
        let inner = &self.inner;
        let settings = RxSettings::from_config(config)?;
        // The SDP to start with: given, or the SAP session's if heard already.
        let initial_sdp = match (&settings.sdp, &settings.sap_session) {
            (Some(sdp), _) => Some(sdp.clone()),
            (None, Some(session)) => inner.sap.as_ref().and_then(|sap| sap.session_sdp(session)),
            (None, None) => None,
        };
        let sdp_channels = match &initial_sdp {
            Some(sdp) => {
                let info = codecs::sdp::parse_str(sdp).map_err(|e| unprocessable("sdp", e))?;
                let format = info.stream_format().map_err(|e| unprocessable("sdp", e))?;
                Some(format.channels.get())
            }
            None => None,
        };
        let channels = match (settings.channels, sdp_channels) {
            (Some(c), _) | (None, Some(c)) => usize::from(c),
            (None, None) => {
                return Err(unprocessable(
                    "channels",
                    format!(
                        "the SAP session {:?} has not been heard (yet): give `channels` to \
                         create the flow before it is announced",
                        settings.sap_session.as_deref().unwrap_or_default()
                    ),
                ));
            }
        };
        if settings.sap_session.is_some() && inner.sap.is_none() {
            return Err(BuildError::Unavailable {
                message: "the SAP thread is not running".into(),
            });
        }
        let media = inner.media(&clock)?;
        let bridge_settings =
            BridgeSettings::new(channels, CHUNK, inner.block, inner.config.bridge_margin_ms);
        let bridge_stats = Arc::new(BridgeStats::default());
        let (writer, reader) = bridge(bridge_settings, Arc::clone(&bridge_stats));
        let stats = Arc::new(RxStats::new(bridge_stats));
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let flow = Arc::new(RxFlow {
            node: node.clone(),
            id,
            settings: settings.clone(),
            channels,
            stats: Arc::clone(&stats),
            bridge_latency_ms: bridge_settings.latency_ms(),
            clock,
            media: Arc::clone(&media),
            state: Mutex::new(RxState {
                state: "waiting for the SAP session".into(),
                ..RxState::default()
            }),
        });
        let mut core = RxCore::new(writer, channels, Arc::clone(&stats)).named(&node.to_string());
        let mut socket = None;
        if let Some(sdp) = &settings.sdp {
            let (source, info) = flow
                .prepare(sdp)
                .map_err(|(field, message)| unprocessable(field, message))?;
            core.replace(Some(source.subscription));
            socket = Some(source.socket);
            let mut state = flow.rx_state();
            state.source = Some(info);
            state.state = "subscribed".into();
        }
        media.send(Command::AddRx(Box::new(RxEndpoint { id, core, socket })));
        if let (Some(session), Some(sap)) = (&settings.sap_session, &inner.sap) {
            let target: Weak<dyn SapSubscriber> = Arc::downgrade(&flow) as Weak<dyn SapSubscriber>;
            let watcher = sap.watch(session, target);
            flow.rx_state().watcher = Some(watcher);
        }
        tracing::info!(flow = %node, channels, "receive flow started");
        let service = RxService {
            flow,
            hub: Arc::clone(inner),
            media,
        };
        Ok(BuiltFlow {
            spec: NodeSpec {
                node: node.clone(),
                outputs: (1..=channels).map(|c| format!("ch{c}")).collect(),
                inputs: Vec::new(),
                owner: None,
            },
            node: Box::new(RxNode::new(reader, channels, inner.block)),
            service: Arc::new(service),
        })
    }

    /// The SDP of the transmit flow `aes67tx:<name>`.
    pub fn flow_sdp(&self, name: &str) -> Option<String> {
        lock(&self.inner.flows).get(name).map(|flow| flow.sdp())
    }

    /// The sessions heard on SAP.
    pub fn sap_sessions(&self) -> Vec<SapSessionInfo> {
        self.inner
            .sap
            .as_ref()
            .map(SapService::sessions)
            .unwrap_or_default()
    }

    /// Publishes the SAP counters into the current `metrics` recorder.
    pub fn publish_metrics(&self) {
        let Some(sap) = &self.inner.sap else { return };
        let s = sap.stats();
        let sessions = sap.sessions().len();
        for (name, kind, help, value) in [
            (
                "telepatch_sap_announcements_total",
                MetricKind::Counter,
                "SAP announcements sent.",
                s.announcements.load(Ordering::Relaxed) as f64,
            ),
            (
                "telepatch_sap_deletions_total",
                MetricKind::Counter,
                "SAP deletions sent.",
                s.deletions.load(Ordering::Relaxed) as f64,
            ),
            (
                "telepatch_sap_send_errors_total",
                MetricKind::Counter,
                "SAP packets that could not be sent.",
                s.send_errors.load(Ordering::Relaxed) as f64,
            ),
            (
                "telepatch_sap_received_total",
                MetricKind::Counter,
                "Packets heard on the SAP group.",
                s.received.load(Ordering::Relaxed) as f64,
            ),
            (
                "telepatch_sap_malformed_total",
                MetricKind::Counter,
                "Packets heard on the SAP group that were not SAP.",
                s.malformed.load(Ordering::Relaxed) as f64,
            ),
            (
                "telepatch_sap_sessions",
                MetricKind::Gauge,
                "Sessions in the SAP directory.",
                sessions as f64,
            ),
        ] {
            match kind {
                MetricKind::Counter => {
                    metrics::describe_counter!(name, help);
                    metrics::counter!(name).absolute(value as u64);
                }
                MetricKind::Gauge => {
                    metrics::describe_gauge!(name, help);
                    metrics::gauge!(name).set(value);
                }
            }
        }
    }

    /// Lets SAP announcements go out (start-up succeeded; see [`SapService::release`]).
    pub fn start_announcing(&self) {
        if let Some(sap) = &self.inner.sap {
            sap.release();
        }
    }

    /// Stops the media and SAP threads (flows' services are stopped first).
    pub fn shutdown(&self) {
        let media = lock(&self.inner.media).take();
        if let Some(media) = media {
            media.stop();
        }
        if let Some(sap) = &self.inner.sap {
            sap.stop();
        }
    }
}

fn format_name(format: &StreamFormat) -> String {
    format!(
        "{}/48000/{} {} ms",
        format.encoding,
        format.channels.get(),
        format.packet_time.sdp_ptime()
    )
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn bridge_status(stats: &BridgeStats, latency_ms: f64) -> serde_json::Value {
    serde_json::json!({
        "latency_ms": latency_ms,
        "fill_ms": stats.fill_us.load(Ordering::Relaxed) as f64 / 1000.0,
        "correction_ppm": stats.correction_ppm(),
        "underruns": stats.underruns.load(Ordering::Relaxed),
        "overflow_frames": stats.overflow_frames.load(Ordering::Relaxed),
        "resyncs": stats.resyncs.load(Ordering::Relaxed),
    })
}

fn bridge_metrics(node: &NodeRef, families: &mut MetricFamilies, stats: &BridgeStats) {
    families.sample(
        "telepatch_aes67_bridge_underruns_total",
        MetricKind::Counter,
        "Times a flow's clock bridge ran dry (silence went out).",
        node,
        &[],
        stats.underruns.load(Ordering::Relaxed) as f64,
    );
    families.sample(
        "telepatch_aes67_bridge_overflow_frames_total",
        MetricKind::Counter,
        "Frames a flow's clock bridge had no room for.",
        node,
        &[],
        stats.overflow_frames.load(Ordering::Relaxed) as f64,
    );
    families.sample(
        "telepatch_aes67_bridge_correction_ppm",
        MetricKind::Gauge,
        "Drift correction between the host clock and the PTP media clock, in ppm.",
        node,
        &[],
        stats.correction_ppm(),
    );
    families.sample(
        "telepatch_aes67_bridge_fill_seconds",
        MetricKind::Gauge,
        "Audio queued in a flow's clock bridge.",
        node,
        &[],
        stats.fill_us.load(Ordering::Relaxed) as f64 / 1e6,
    );
}

/// The I/O side of a transmit flow.
struct TxService {
    flow: Arc<TxFlow>,
    hub: Arc<HubInner>,
    media: Arc<MediaThread>,
    sap_error: Option<String>,
}

impl NodeService for TxService {
    fn status(&self) -> serde_json::Value {
        let f = &self.flow;
        let s = &f.stats;
        let packets = s.packets.load(Ordering::Relaxed);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "group": f.settings.group.to_string(),
            "port": f.settings.port,
            "interface": f.settings.interface.to_string(),
            "ttl": f.settings.ttl,
            "dscp": f.settings.dscp,
            "format": format_name(&f.settings.format),
            "payload_type": f.settings.payload_type.get(),
            "ssrc": f.ssrc,
            "session_name": f.settings.session_name,
            "sdp_version": f.sdp_version(),
            "announced": f.settings.announce && self.sap_error.is_none() && self.hub.sap.is_some(),
            "sap_error": self.sap_error,
            "waiting_for_clock": s.waiting_for_clock.load(Ordering::Relaxed),
            "packets": packets,
            "bytes": load(&s.bytes),
            "late_packets": load(&s.late_packets),
            "mean_send_delay_ms": if packets > 0 { ms(load(&s.send_delay_sum_ns)) / packets as f64 } else { 0.0 },
            "max_send_delay_ms": ms(load(&s.max_send_delay_ns)),
            // Packets by delay after their due time: [upper bound in µs (null: above
            // the last), count], cumulative since the flow started.
            "send_delay_histogram": tx::SEND_DELAY_BUCKETS_US
                .iter()
                .map(|&bound| Some(bound))
                .chain([None])
                .zip(&s.send_delay_buckets)
                .map(|(bound, count)| serde_json::json!([bound, load(count)]))
                .collect::<Vec<_>>(),
            "resyncs": load(&s.resyncs),
            "send_errors": load(&s.send_errors),
            "last_timestamp": load(&s.last_timestamp),
            "bridge": bridge_status(&s.bridge, f.bridge_latency_ms),
        })
    }

    fn publish_metrics(&self, node: &NodeRef, families: &mut MetricFamilies) {
        let s = &self.flow.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        for (name, help, value) in [
            (
                "telepatch_aes67_tx_packets_total",
                "RTP packets a transmit flow wrote.",
                load(&s.packets),
            ),
            (
                "telepatch_aes67_tx_bytes_total",
                "Bytes a transmit flow sent.",
                load(&s.bytes),
            ),
            (
                "telepatch_aes67_tx_late_packets_total",
                "Packets sent more than 1 ms after their due time on the PTP clock.",
                load(&s.late_packets),
            ),
            (
                "telepatch_aes67_tx_resyncs_total",
                "Times a transmit flow re-bootstrapped its timestamps on the clock.",
                load(&s.resyncs),
            ),
            (
                "telepatch_aes67_tx_send_errors_total",
                "Packets the socket refused.",
                load(&s.send_errors),
            ),
        ] {
            families.sample(name, MetricKind::Counter, help, node, &[], value);
        }
        families.fractional_counter(
            "telepatch_aes67_tx_send_delay_seconds_total",
            "Sum of the delays between packets' due times and their sending.",
            node,
            load(&s.send_delay_sum_ns) / 1e9,
        );
        families.sample(
            "telepatch_aes67_tx_max_send_delay_seconds",
            MetricKind::Gauge,
            "Largest delay between a packet's due time and its sending.",
            node,
            &[],
            load(&s.max_send_delay_ns) / 1e9,
        );
        bridge_metrics(node, families, &s.bridge);
    }

    fn stop(&self) {
        self.media.remove(self.flow.id);
        if self.flow.settings.announce
            && let Some(sap) = &self.hub.sap
        {
            sap.withdraw(self.flow.id);
        }
        let mut flows = lock(&self.hub.flows);
        if flows
            .get(self.flow.node.name())
            .is_some_and(|f| f.id == self.flow.id)
        {
            flows.remove(self.flow.node.name());
        }
        tracing::info!(flow = %self.flow.node, "transmit flow stopped");
    }
}

/// The I/O side of a receive flow.
struct RxService {
    flow: Arc<RxFlow>,
    hub: Arc<HubInner>,
    media: Arc<MediaThread>,
}

impl NodeService for RxService {
    fn status(&self) -> serde_json::Value {
        let f = &self.flow;
        let s = &f.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let last = load(&s.last_datagram_ns);
        let age_ms = match (last, f.clock.ptp_now_ns()) {
            (0, _) | (_, None) => None,
            (last, Some(now)) => Some(ms(now.saturating_sub(last))),
        };
        let state = f.rx_state();
        serde_json::json!({
            "subscribed_by": if f.settings.sdp.is_some() { "sdp" } else { "sap" },
            "sap_session": f.settings.sap_session,
            "state": state.state,
            "source": state.source,
            "receiving": age_ms.is_some_and(|age| age < 1000.0),
            "last_packet_ms_ago": age_ms,
            "waiting_for_clock": s.waiting_for_clock.load(Ordering::Relaxed),
            "datagrams": load(&s.datagrams),
            "received": load(&s.received),
            "lost": load(&s.lost),
            "late": load(&s.late),
            "duplicate": load(&s.duplicate),
            "reordered": load(&s.reordered),
            "early": load(&s.early),
            "latency_ms": ms(load(&s.latency_us) * 1000),
            "needed_latency_ms": ms(load(&s.needed_latency_us) * 1000),
            "latency_increases": load(&s.latency_increases),
            "latency_limited": state.source.as_ref().is_some_and(|source| {
                ms(load(&s.needed_latency_us) * 1000) > source.max_latency_ms
            }),
            "sender_ppm": s.sender_ppm(),
            "concealed_frames": load(&s.concealed_frames),
            "no_sender_frames": load(&s.no_sender_frames),
            "inserted_frames": load(&s.inserted_frames),
            "malformed": load(&s.malformed),
            "wrong_payload_type": load(&s.wrong_payload_type),
            "foreign_ssrc": load(&s.foreign_ssrc),
            "resyncs": load(&s.resyncs),
            "recv_errors": load(&s.recv_errors),
            "bridge": bridge_status(&s.bridge, f.bridge_latency_ms),
        })
    }

    fn publish_metrics(&self, node: &NodeRef, families: &mut MetricFamilies) {
        let s = &self.flow.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        for (name, help, value) in [
            (
                "telepatch_aes67_rx_datagrams_total",
                "Datagrams a receive flow read.",
                load(&s.datagrams),
            ),
            (
                "telepatch_aes67_rx_packets_total",
                "RTP packets received from the followed sender.",
                load(&s.received),
            ),
            (
                "telepatch_aes67_rx_lost_total",
                "Packets never received (RFC 3550).",
                load(&s.lost),
            ),
            (
                "telepatch_aes67_rx_late_total",
                "Packets that arrived after their playout time.",
                load(&s.late),
            ),
            (
                "telepatch_aes67_rx_duplicate_total",
                "Packets received twice.",
                load(&s.duplicate),
            ),
            (
                "telepatch_aes67_rx_reordered_total",
                "Packets that arrived out of order but in time.",
                load(&s.reordered),
            ),
            (
                "telepatch_aes67_rx_early_total",
                "Packets too far ahead of the playout window.",
                load(&s.early),
            ),
            (
                "telepatch_aes67_rx_concealed_frames_total",
                "Frames played as silence because their packet was missing.",
                load(&s.concealed_frames),
            ),
            (
                "telepatch_aes67_rx_no_sender_frames_total",
                "Frames played as silence while no sender was present.",
                load(&s.no_sender_frames),
            ),
            (
                "telepatch_aes67_rx_latency_increases_total",
                "Times late packets raised a receive flow's latency.",
                load(&s.latency_increases),
            ),
            (
                "telepatch_aes67_rx_malformed_total",
                "Datagrams that were not usable RTP.",
                load(&s.malformed),
            ),
            (
                "telepatch_aes67_rx_resyncs_total",
                "Re-anchors, sender switches and playout restarts.",
                load(&s.resyncs),
            ),
        ] {
            families.sample(name, MetricKind::Counter, help, node, &[], value);
        }
        families.sample(
            "telepatch_aes67_rx_latency_seconds",
            MetricKind::Gauge,
            "A receive flow's playout latency after the media timestamp.",
            node,
            &[],
            load(&s.latency_us) / 1e6,
        );
        bridge_metrics(node, families, &s.bridge);
    }

    fn stop(&self) {
        let watcher = self.flow.rx_state().watcher.take();
        if let (Some(watcher), Some(sap)) = (watcher, &self.hub.sap) {
            sap.unwatch(watcher);
        }
        self.media.remove(self.flow.id);
        tracing::info!(flow = %self.flow.node, "receive flow stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_groups_are_in_the_dante_prefix_and_stable() {
        for name in ["studio", "console", "a", "phone-in_4"] {
            let g = default_group(name);
            assert_eq!(&g.octets()[..2], &[239, 69]);
            assert!(g.octets()[3] != 0 && g.octets()[3] != 255);
            assert_eq!(g, default_group(name));
        }
        assert_ne!(default_group("studio"), default_group("console"));
    }

    #[test]
    fn tx_settings_fill_the_defaults() {
        let config: NodeConfig = serde_json::from_value(serde_json::json!({
            "kind": "aes67tx", "channels": 4
        }))
        .unwrap();
        let s = TxSettings::from_config("studio", &config).unwrap();
        assert_eq!(s.format, StreamFormat::l24_1ms(Channels::new(4).unwrap()));
        assert_eq!(s.group, default_group("studio"));
        assert_eq!((s.port, s.ttl, s.dscp), (5004, 15, 46));
        assert_eq!(s.interface, Ipv4Addr::LOCALHOST);
        assert_eq!(s.payload_type.get(), 98);
        assert_eq!(s.session_name, "studio");
        assert!(s.announce);
        let too_big: NodeConfig = serde_json::from_value(serde_json::json!({
            "kind": "aes67tx", "channels": 8, "packet_time_us": 4000
        }))
        .unwrap();
        let Err(BuildError::Invalid { field, .. }) = TxSettings::from_config("x", &too_big) else {
            panic!("8 channels of 4 ms L24 do not fit a packet");
        };
        assert_eq!(field, "channels");
    }

    #[test]
    fn config_problems_are_reported() {
        assert!(Aes67Config::default().problems().is_empty());
        let bad = Aes67Config {
            sap_interval_s: 0,
            sap_interface: Ipv4Addr::UNSPECIFIED,
            bridge_margin_ms: 0.0,
            ..Aes67Config::default()
        };
        let fields: Vec<String> = bad.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "aes67.sap_interval_s",
                "aes67.sap_interface",
                "aes67.bridge_margin_ms"
            ]
        );
    }

    #[test]
    fn the_sdp_follows_the_media_clock_reference() {
        struct Clock(Mutex<String>);
        impl MediaClock for Clock {
            fn ptp_now_ns(&self) -> Option<u64> {
                None
            }
            fn ts_refclk(&self) -> String {
                lock(&self.0).clone()
            }
            fn status(&self) -> serde_json::Value {
                serde_json::Value::Null
            }
        }
        let clock = Arc::new(Clock(Mutex::new(
            "ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0".into(),
        )));
        let config: NodeConfig =
            serde_json::from_value(serde_json::json!({ "kind": "aes67tx" })).unwrap();
        let settings = TxSettings::from_config("studio", &config).unwrap();
        let sender = SenderSdp {
            session_id: 42,
            session_version: 7,
            origin: Ipv4Addr::LOCALHOST,
            name: "studio".into(),
            session_info: None,
            media_title: None,
            group: settings.group,
            ttl: 15,
            port: 5004,
            payload_type: PayloadType::AES67_DEFAULT,
            format: settings.format,
            mediaclk_offset: 0,
            refclk: RefClock::parse(&clock.ts_refclk()),
        };
        let flow = TxFlow {
            node: "aes67tx:studio".parse().unwrap(),
            id: 1,
            settings,
            stats: Arc::new(TxStats::default()),
            ssrc: 1,
            bridge_latency_ms: 1.0,
            clock: Arc::clone(&clock) as Arc<dyn MediaClock>,
            sdp: Mutex::new(FlowSdp::new(sender, clock.ts_refclk())),
        };
        assert!(flow.refresh().is_none());
        let (hash, before) = flow.announcement();
        assert!(before.contains("a=ts-refclk:ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0\r\n"));
        *lock(&clock.0) = "ptp=IEEE1588-2008:39-A7-94-FF-FE-07-CB-D0:0".into();
        let (old_hash, old_origin) = flow.refresh().unwrap();
        assert_eq!(old_hash, hash);
        assert_eq!(old_origin, "o=- 42 7 IN IP4 127.0.0.1\r\n");
        let (new_hash, after) = flow.announcement();
        assert_ne!(new_hash, hash);
        assert!(after.contains("o=- 42 8 IN IP4 127.0.0.1\r\n"));
        assert!(after.contains("a=ts-refclk:ptp=IEEE1588-2008:39-A7-94-FF-FE-07-CB-D0:0\r\n"));
        assert_eq!(flow.sdp_version(), 8);
    }
}
