//! WebSocket media nodes: a call (or any patch) streamed to a voice bot over jambonz's
//! `listen` protocol with bidirectional streaming ([`protocol`] says what is sent and
//! received, and where telepatch had to choose).
//!
//! A `websocket` node is three parts joined by two lock-free rings (ARCHITECTURE §1):
//!
//! * [`node::WebsocketNode`], the engine node: input `in` into the caller's ring, the
//!   bot's ring out on `out` through a jitter buffer ([`playout::Playout`]);
//! * [`io::Session`], on its own thread: the socket, resampling between 48 kHz and the
//!   node's rate, the bot's commands, marks ([`playout::MarkBook`]);
//! * [`WebsocketService`], the control side: status, metrics, and stopping the thread.
//!
//! The bot's ring holds at most `max_queue_ms` of audio: a bot that sends faster than
//! real time loses the excess (counted), and a bot that stalls leaves the caller hearing
//! silence; neither ever blocks the engine.

pub mod io;
pub mod node;
pub mod playout;
pub mod protocol;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use api::control::NodeConfig;
use api::model::NodeRef;
use codecs::rate::SampleRate;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::engine::BUS_RATE;
use crate::node_service::{BuildError, MetricFamilies, MetricKind, NodeService};
use crate::patchbay::NodeSpec;
use crate::threads::{OwnedThread, Priority};

/// The jitter buffer starts playing the bot's audio once this much is queued (ms).
pub const PREFILL_MS: u32 = 40;
/// The caller's ring towards the I/O thread holds this much (ms); the thread drains it
/// every 20 ms.
const CALLER_RING_MS: u32 = 1000;

/// A `websocket` node's settings, parsed once from its configuration (or route action).
#[derive(Debug, Clone, PartialEq)]
pub struct WebsocketSettings {
    /// The bot's `ws://` or `wss://` URL.
    pub url: String,
    /// The PCM rate both ways.
    pub sample_rate: SampleRate,
    /// Keys added to the first text frame.
    pub metadata: Option<Value>,
    /// Whether the bot's audio is played.
    pub bidirectional: bool,
    /// Most of the bot's audio held for playing, ms.
    pub max_queue_ms: u32,
}

impl WebsocketSettings {
    /// Settings of a route's `websocket` action: mono, bidirectional, the default queue.
    pub fn for_route(
        url: &str,
        sample_rate: u32,
        metadata: Option<&Value>,
    ) -> Result<WebsocketSettings, BuildError> {
        WebsocketSettings::parse(
            url,
            sample_rate,
            "mono",
            metadata,
            true,
            api::control::WEBSOCKET_DEFAULT_QUEUE_MS,
        )
    }

    fn parse(
        url: &str,
        sample_rate: u32,
        mix_type: &str,
        metadata: Option<&Value>,
        bidirectional: bool,
        max_queue_ms: u32,
    ) -> Result<WebsocketSettings, BuildError> {
        api::control::check_websocket(url, sample_rate, mix_type, metadata, max_queue_ms)
            .map_err(|(field, why)| BuildError::invalid(field, why))?;
        // What the client will be handed must parse as its request too.
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .map_err(|e| BuildError::invalid("url", e))?;
        Ok(WebsocketSettings {
            url: url.to_owned(),
            sample_rate: SampleRate::new(sample_rate)
                .map_err(|e| BuildError::invalid("sample_rate", e))?,
            metadata: metadata.cloned(),
            bidirectional,
            max_queue_ms,
        })
    }
}

impl TryFrom<&NodeConfig> for WebsocketSettings {
    type Error = BuildError;

    fn try_from(config: &NodeConfig) -> Result<WebsocketSettings, BuildError> {
        let NodeConfig::Websocket {
            url,
            sample_rate,
            mix_type,
            metadata,
            bidirectional,
            max_queue_ms,
        } = config
        else {
            return Err(BuildError::invalid("kind", "not a websocket configuration"));
        };
        WebsocketSettings::parse(
            url,
            *sample_rate,
            mix_type,
            metadata.as_ref(),
            *bidirectional,
            *max_queue_ms,
        )
    }
}

/// A built `websocket` node: its ports, engine node and service.
pub struct Built {
    /// Its name, ports (`in`, `out`) and owner.
    pub spec: NodeSpec,
    /// The engine half.
    pub node: node::WebsocketNode,
    /// The control half (owns the I/O thread).
    pub service: Arc<WebsocketService>,
}

pub use io::DtmfSource;

/// Builds node `node` streaming to the bot of `settings`, whose first frame carries
/// `attributes` (a call's `callSid`, say); owned by `owner` if given, and passing the
/// digits of `dtmf` if given. Starts the I/O thread, which connects at once.
pub fn build(
    node: &NodeRef,
    settings: WebsocketSettings,
    attributes: &Map<String, Value>,
    owner: Option<NodeRef>,
    dtmf: Option<DtmfSource>,
) -> Result<Built, BuildError> {
    let first_frame = protocol::first_frame(
        attributes,
        settings.sample_rate.hz(),
        settings.metadata.as_ref(),
    );
    let (caller_in, caller_out) = rtrb::RingBuffer::new(BUS_RATE.samples_in_ms(CALLER_RING_MS));
    let (bot_in, bot_out) = rtrb::RingBuffer::new(BUS_RATE.samples_in_ms(settings.max_queue_ms));
    let shared = Arc::new(node::Shared::default());
    let engine = node::WebsocketNode::new(
        caller_in,
        bot_out,
        BUS_RATE.samples_in_ms(PREFILL_MS),
        Arc::clone(&shared),
    );
    let (url, rate, max_queue_ms) = (
        settings.url.clone(),
        settings.sample_rate,
        settings.max_queue_ms,
    );
    let io::SessionHandle { session, status } = io::Session::prepare(
        settings,
        first_frame,
        caller_out,
        bot_in,
        Arc::clone(&shared),
        dtmf,
    )
    .map_err(|e| BuildError::Unavailable {
        message: format!("cannot build the resamplers: {e}"),
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BuildError::Unavailable {
            message: format!("cannot start the websocket runtime: {e}"),
        })?;
    let stop = CancellationToken::new();
    let wake = stop.clone();
    let thread = OwnedThread::spawn(
        format!("ws-{}", node.name()),
        Priority::Normal,
        move |_signal| runtime.block_on(session.run(stop)),
    )
    .map_err(|e| BuildError::Unavailable {
        message: format!("cannot start the websocket thread: {e}"),
    })?
    .with_wake(move || wake.cancel());
    Ok(Built {
        spec: NodeSpec {
            node: node.clone(),
            outputs: vec!["out".into()],
            inputs: vec!["in".into()],
            owner,
        },
        node: engine,
        service: Arc::new(WebsocketService {
            url,
            rate,
            max_queue_ms,
            shared,
            status,
            thread,
        }),
    })
}

/// The control half of a `websocket` node: its status and metrics, and the I/O thread
/// it stops (closing the socket with a close frame) when the node goes.
pub struct WebsocketService {
    url: String,
    rate: SampleRate,
    max_queue_ms: u32,
    shared: Arc<node::Shared>,
    status: Arc<io::IoStatus>,
    thread: OwnedThread<()>,
}

impl WebsocketService {
    /// The bot's audio waiting to be played, ms.
    fn queue_ms(&self) -> f64 {
        let queued = self.shared.queued_total.load(Ordering::Acquire);
        let taken = self.shared.taken.load(Ordering::Acquire);
        let through = self.shared.discard_through.load(Ordering::Acquire);
        let waiting = queued.saturating_sub(taken.max(through));
        waiting as f64 * 1000.0 / f64::from(BUS_RATE.hz())
    }
}

impl NodeService for WebsocketService {
    fn status(&self) -> Value {
        let (state, reason) = match self.status.state() {
            io::ConnectionState::Connecting => ("connecting", None),
            io::ConnectionState::Connected => ("connected", None),
            io::ConnectionState::Closed { reason } => ("closed", Some(reason)),
        };
        let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let dropped_ms = c(&self.status.dropped_samples) as f64 * 1000.0 / f64::from(BUS_RATE.hz());
        serde_json::json!({
            "url": self.url,
            "sample_rate": self.rate.hz(),
            "mix_type": "mono",
            "state": state,
            "reason": reason,
            "frames_sent": c(&self.status.frames_sent),
            "frames_received": c(&self.status.frames_received),
            "frames_not_sent": c(&self.status.frames_not_sent),
            "queue_ms": self.queue_ms(),
            "max_queue_ms": self.max_queue_ms,
            "dropped_ms": dropped_ms,
            "underruns": c(&self.shared.underruns),
            "marks_pending": c(&self.status.marks_pending),
            "kills": c(&self.status.kills),
            "ignored_messages": c(&self.status.ignored_messages),
            "caller_blocks_dropped": c(&self.shared.caller_blocks_dropped),
        })
    }

    fn publish_metrics(&self, node: &NodeRef, families: &mut MetricFamilies) {
        let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        let counters = [
            (
                "telepatch_websocket_frames_sent_total",
                "Binary frames of audio written to the bot.",
                c(&self.status.frames_sent),
            ),
            (
                "telepatch_websocket_frames_received_total",
                "Binary frames of audio received from the bot.",
                c(&self.status.frames_received),
            ),
            (
                "telepatch_websocket_frames_not_sent_total",
                "Frames of the caller's audio dropped because the bot was not reading.",
                c(&self.status.frames_not_sent),
            ),
            (
                "telepatch_websocket_dropped_samples_total",
                "48 kHz samples of the bot's audio dropped because its queue was full.",
                c(&self.status.dropped_samples),
            ),
            (
                "telepatch_websocket_underruns_total",
                "Times the bot's queue ran dry while playing.",
                c(&self.shared.underruns),
            ),
        ];
        for (name, help, value) in counters {
            families.sample(name, MetricKind::Counter, help, node, &[], value);
        }
        families.sample(
            "telepatch_websocket_queue_seconds",
            MetricKind::Gauge,
            "The bot's audio waiting to be played.",
            node,
            &[],
            self.queue_ms() / 1000.0,
        );
    }

    fn stop(&self) {
        self.thread.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::{Duration, Instant};

    use api::model::NodeKind;

    use super::*;

    fn settings(url: &str) -> WebsocketSettings {
        WebsocketSettings::for_route(url, 8_000, None).unwrap()
    }

    fn wait_closed(service: &WebsocketService) -> Value {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let status = service.status();
            if status["state"] == "closed" {
                return status;
            }
            assert!(Instant::now() < until, "still {status}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn settings_come_from_the_node_configuration_and_name_the_wrong_field() {
        let config: NodeConfig = serde_json::from_value(serde_json::json!({
            "kind": "websocket", "url": "wss://bot.example.com/a", "sample_rate": 24000,
            "bidirectional": false, "max_queue_ms": 500
        }))
        .unwrap();
        let parsed = WebsocketSettings::try_from(&config).unwrap();
        assert_eq!(parsed.sample_rate.hz(), 24_000);
        assert!(!parsed.bidirectional);
        assert_eq!(parsed.max_queue_ms, 500);
        let wrong = WebsocketSettings::for_route("ws://bot/", 22_050, None).unwrap_err();
        assert!(matches!(wrong, BuildError::Invalid { ref field, .. } if field == "sample_rate"));
    }

    #[test]
    fn wss_speaks_tls_and_a_failed_handshake_is_reported() {
        // A TCP server that is not TLS: the node's first bytes must be a TLS handshake
        // record (0x16), and the node must report the failure, not panic.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("wss://{}/bot", listener.local_addr().unwrap());
        let node = NodeRef::new(NodeKind::Websocket, "tls").unwrap();
        let built = build(&node, settings(&url), &Map::new(), None, None).unwrap();
        let (mut socket, _) = listener.accept().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut first = [0u8; 3];
        socket.read_exact(&mut first).unwrap();
        assert_eq!(first[0], 0x16, "not a TLS handshake record: {first:02x?}");
        drop(socket);
        let status = wait_closed(&built.service);
        assert!(
            status["reason"]
                .as_str()
                .unwrap()
                .contains("cannot connect"),
            "{status}"
        );
        built.service.stop();
    }

    #[test]
    fn stopping_a_node_that_is_still_connecting_ends_its_thread() {
        // Accepted by the kernel but never answered: the upgrade waits, the stop wins.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/bot", listener.local_addr().unwrap());
        let node = NodeRef::new(NodeKind::Websocket, "silent").unwrap();
        let built = build(&node, settings(&url), &Map::new(), None, None).unwrap();
        assert_eq!(built.service.status()["state"], "connecting");
        let started = Instant::now();
        built.service.stop();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            built.service.status()["reason"],
            "stopped before connecting"
        );
    }
}
