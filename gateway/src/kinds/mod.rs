//! The node-kind seam: every kind of node that is not a call (player, recorder,
//! conference, AES67 transmit and receive flows, jam room, AoDNS broadcast, WebSocket
//! stream to a voice bot) is one type
//! implementing [`NodeKindBuilder`], registered once in [`KindRegistry::standard`].
//!
//! A kind builds, from its API configuration, everything a node is: its ports
//! ([`NodeSpec`]), its engine half (a [`Node`] the media thread runs) and its control
//! half (a [`NodeService`] that reports status and metrics, hears about patch changes,
//! offers seats to callers and stops its I/O). The gateway keeps the service beside the
//! node for as long as it lives and never asks what kind a node is: status, metrics,
//! seating and shutdown all go through the service.
//!
//! What kinds need from the gateway (the engine's block size, the event stream, the clip
//! cache, the disk writer, the DNS server, the AES67 hub, the media clock) is handed to
//! them as [`NodeResources`], not as the gateway itself, so no kind depends on the
//! switchboard that uses it.
//!
//! Adding a kind: its configuration variant in `api::control::NodeConfig`, its module
//! with a type implementing [`NodeKindBuilder`], and one line in
//! [`KindRegistry::standard`].

pub mod aes67;
pub mod conference;
pub mod dns;
pub mod jam;
pub mod player;
pub mod recorder;
pub mod websocket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use api::control::{Event, NodeConfig};
use api::model::{NodeKind, NodeRef};
use tokio::sync::broadcast;

use crate::engine::Node;
pub use crate::node_service::Seating;
use crate::node_service::{NodeError, NodeService};
use crate::patchbay::NodeSpec;

pub use player::ClipLibrary;
pub use recorder::Recordings;

/// A node a kind has built, ready to be installed in the patchbay.
pub struct BuiltNode {
    /// Its name, ports and owner.
    pub spec: NodeSpec,
    /// The engine half.
    pub engine: Box<dyn Node>,
    /// The control half.
    pub service: Arc<dyn NodeService>,
}

/// One kind of node: builds nodes of that kind from their API configuration.
pub trait NodeKindBuilder: Send + Sync {
    /// The kind this builds.
    fn kind(&self) -> NodeKind;

    /// Builds `node` from `config` (a configuration of this kind). May block briefly
    /// (opening sockets or files, reserving sequence numbers in the database).
    fn build(
        &self,
        node: &NodeRef,
        config: &NodeConfig,
        resources: &NodeResources,
    ) -> Result<BuiltNode, NodeError>;
}

/// What node kinds may use of the gateway's resources.
pub struct NodeResources {
    /// Samples per engine block.
    pub block: usize,
    /// The gateway's event stream (`/v1/events`).
    pub events: broadcast::Sender<Event>,
    /// Decoded clips (prompts, hold music) and the media directory they come from.
    pub clips: ClipLibrary,
    /// The recordings directory and the disk writer.
    pub recordings: Recordings,
    /// The DNS server of AoDNS broadcasts.
    pub dns: Arc<crate::dns::DnsServer>,
    /// Where broadcasts reserve their sequence numbers (the database, once open).
    pub sequence_store: OnceLock<Arc<dyn crate::dns::SequenceStore>>,
    /// AES67 flows' threads, SDP and SAP.
    pub aes67: crate::aes67::Aes67Hub,
    /// PTP time for AES67 flows.
    pub media_clock: Arc<dyn crate::clock::MediaClock>,
    /// Seats of a conference made on demand by a route or a seat request.
    pub conference_members: usize,
}

impl NodeResources {
    /// Publishes an event (no subscribers is fine).
    pub fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }
}

/// Every node kind the gateway can build, filled once at start-up.
#[derive(Default)]
pub struct KindRegistry {
    builders: HashMap<NodeKind, Box<dyn NodeKindBuilder>>,
}

impl KindRegistry {
    /// The kinds telepatch ships with.
    pub fn standard() -> KindRegistry {
        let mut registry = KindRegistry::default();
        registry.register(player::PlayerKind);
        registry.register(recorder::RecorderKind);
        registry.register(conference::ConferenceKind);
        registry.register(aes67::Aes67TxKind);
        registry.register(aes67::Aes67RxKind);
        registry.register(jam::JamKind);
        registry.register(dns::DnsKind);
        registry.register(websocket::WebsocketKind);
        registry
    }

    /// Adds (or replaces) the builder of a kind.
    pub fn register(&mut self, builder: impl NodeKindBuilder + 'static) {
        self.builders.insert(builder.kind(), Box::new(builder));
    }

    /// Builds `node` with the builder of its configuration's kind.
    pub fn build(
        &self,
        node: &NodeRef,
        config: &NodeConfig,
        resources: &NodeResources,
    ) -> Result<BuiltNode, NodeError> {
        let builder = self
            .builders
            .get(&config.kind())
            .ok_or_else(|| NodeError::Invalid {
                field: Some("kind".into()),
                message: format!("this gateway cannot build {} nodes", config.kind().as_str()),
            })?;
        builder.build(node, config, resources)
    }

    /// Whether a builder is registered for `kind`.
    pub fn knows(&self, kind: NodeKind) -> bool {
        self.builders.contains_key(&kind)
    }
}

/// The error for a configuration handed to the builder of another kind (a registry bug).
pub(crate) fn wrong_kind(expected: NodeKind, config: &NodeConfig) -> NodeError {
    NodeError::invalid(
        "kind",
        format!(
            "a {} configuration reached the {} builder",
            config.kind().as_str(),
            expected.as_str()
        ),
    )
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug; the data is still the best we
    // have, so keep going rather than cascading the panic.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_registry_builds_every_kind_but_calls() {
        let registry = KindRegistry::standard();
        for kind in [
            NodeKind::Player,
            NodeKind::Recorder,
            NodeKind::Conference,
            NodeKind::Aes67Tx,
            NodeKind::Aes67Rx,
            NodeKind::Jam,
            NodeKind::Dns,
            NodeKind::Websocket,
        ] {
            assert!(registry.knows(kind), "{kind:?} has no builder");
        }
        assert!(!registry.knows(NodeKind::Call));
    }
}
