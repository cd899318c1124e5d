//! Jam rooms: RTJam (rtjam.md) joined by callers, or hosted by the gateway.
//!
//! A `jam` node is three parts joined by lock-free rings (ARCHITECTURE §1):
//!
//! * [`node::JamNode`], the engine node: seats in, 128-frame packets out on the
//!   gateway's clock; received packets into per-jammer jitter buffers, mixes out;
//! * [`io`], the socket thread: UDP in and out, stamps, validation, the hosted room's
//!   forwarding ([`codecs::jam::RoomCore`]);
//! * [`service::JamService`], the control side: status, metrics, per-jammer mix, live
//!   settings, and which seats are in use.
//!
//! The protocol work (packet codec, jitter buffer, receiver, room core) is sans-IO in
//! [`codecs::jam`]; this module wires it to sockets and the patchbay.

pub mod io;
pub mod node;
pub mod service;
pub mod shared;

use std::sync::Arc;

use api::control::{Event, NodeConfig};
use api::model::NodeRef;
use tokio::sync::broadcast;

pub use service::{JamError, JamService};

use crate::node_service::BuildError;

/// Builds the jam node `node` from its configuration (engine node, socket thread and
/// service); the caller adds it to the patchbay.
pub fn build_node(
    node: &NodeRef,
    config: &NodeConfig,
    block_samples: usize,
    events: broadcast::Sender<Event>,
) -> Result<service::Built, BuildError> {
    let unprocessable = |field: &str, message: String| BuildError::invalid(field, message);
    let fields = config
        .jam_fields()
        .ok_or_else(|| unprocessable("config", "not a jam configuration".into()))?;
    let spec = fields
        .spec(node.name())
        .map_err(|(field, why)| unprocessable(field, why))?;
    let sink: io::EventSink = Arc::new(move |event| {
        // No subscribers is fine.
        let _ = events.send(event);
    });
    service::build(node, &spec, block_samples, sink, Arc::new(io::SystemClock)).map_err(|e| match e
    {
        JamError::Resolve { .. } => unprocessable("host", e.to_string()),
        JamError::Bind { .. } => unprocessable("listen", e.to_string()),
        other => BuildError::Unavailable {
            message: other.to_string(),
        },
    })
}
