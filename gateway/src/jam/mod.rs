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

use api::control::{ControlError, Event, NodeConfig};
use api::jam::{JamMixEntry, JamMixSetting};
use api::model::{NodeKind, NodeRef};
use tokio::sync::broadcast;

pub use service::{JamError, JamService};

use crate::service::Gateway;

/// Builds the jam node `node` from its configuration and adds it to the gateway.
pub fn create(
    gateway: &Gateway,
    node: &NodeRef,
    config: &NodeConfig,
    events: broadcast::Sender<Event>,
) -> Result<(), ControlError> {
    let unprocessable = |field: &str, message: String| ControlError::Unprocessable {
        message,
        field: Some(field.to_owned()),
    };
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
    let built = service::build(
        node,
        &spec,
        gateway.config().engine.block_samples,
        sink,
        Arc::new(io::SystemClock),
    )
    .map_err(|e| match e {
        JamError::Resolve { .. } => unprocessable("host", e.to_string()),
        JamError::Bind { .. } => unprocessable("listen", e.to_string()),
        other => ControlError::Unavailable {
            message: other.to_string(),
        },
    })?;
    let service = Arc::clone(&built.service);
    gateway
        .add_service_node(built.spec, Box::new(built.node), built.service)
        .map_err(|e| ControlError::Conflict {
            message: e.to_string(),
        })?;
    tracing::info!(node = %node, addr = ?service.local_addr(), "jam room ready");
    Ok(())
}

/// The service of jam node `node`.
pub fn jam_service(gateway: &Gateway, node: &NodeRef) -> Result<Arc<JamService>, ControlError> {
    let not_found = || ControlError::NotFound {
        message: format!("no jam node {node}"),
    };
    if node.kind() != NodeKind::Jam {
        return Err(not_found());
    }
    gateway
        .node_service(node)
        .and_then(|s| s.into_any())
        .and_then(|any| any.downcast::<JamService>().ok())
        .ok_or_else(not_found)
}

/// The mix of a jam node (for `GET /v1/nodes/{node}/mix`).
pub fn mix(gateway: &Gateway, node: &NodeRef) -> Result<Vec<JamMixEntry>, ControlError> {
    Ok(jam_service(gateway, node)?.mix_entries())
}

/// Sets one jammer's mix, live and in the node's configuration.
pub fn set_mix(
    gateway: &Gateway,
    node: &NodeRef,
    setting: JamMixSetting,
) -> Result<(), ControlError> {
    let service = jam_service(gateway, node)?;
    let unprocessable = |message: String| ControlError::Unprocessable {
        message,
        field: Some("client_id".into()),
    };
    let (mut config, persistent) =
        gateway
            .node_config(node)
            .ok_or_else(|| ControlError::NotFound {
                message: format!("no jam node {node}"),
            })?;
    config.set_jam_mix(setting).map_err(unprocessable)?;
    service.set_mix(setting).map_err(unprocessable)?;
    gateway.set_node_config(node, config, persistent);
    Ok(())
}

/// Returns one jammer to the default mix, live and in the node's configuration.
pub fn reset_mix(gateway: &Gateway, node: &NodeRef, client_id: u32) -> Result<(), ControlError> {
    let service = jam_service(gateway, node)?;
    if let Some((mut config, persistent)) = gateway.node_config(node) {
        config.remove_jam_mix(client_id);
        gateway.set_node_config(node, config, persistent);
    }
    service.reset_mix(client_id);
    Ok(())
}

/// Applies `config` to a running jam node if only live settings changed; `None` if it
/// is not a jam node or needs a rebuild.
pub fn reconfigure(gateway: &Gateway, node: &NodeRef, config: &NodeConfig) -> Option<()> {
    let service = jam_service(gateway, node).ok()?;
    let spec = config.jam_fields()?.spec(node.name()).ok()?;
    if !service.reconfigure(&spec) {
        return None;
    }
    let persistent = gateway.node_config(node).is_some_and(|(_, p)| p);
    gateway.set_node_config(node, config.clone(), persistent);
    Some(())
}
