//! The `dns` kind: an AoDNS broadcast (input `in`, or `left`/`right`), Opus in DNS TXT
//! records served by the gateway's DNS server. The encoder, zone and server live in
//! [`crate::dns`]; this is their seam.

use api::control::NodeConfig;
use api::model::{NodeKind, NodeRef};

use super::{BuiltNode, NodeKindBuilder, NodeResources, wrong_kind};
use crate::dns::BroadcastError;
use crate::node_service::NodeError;
use crate::patchbay::NodeSpec;

/// Builds broadcasts from `{"kind": "dns", "domain": ..., ...}`.
pub struct DnsKind;

impl NodeKindBuilder for DnsKind {
    fn kind(&self) -> NodeKind {
        NodeKind::Dns
    }

    fn build(
        &self,
        node: &NodeRef,
        config: &NodeConfig,
        resources: &NodeResources,
    ) -> Result<BuiltNode, NodeError> {
        if !matches!(config, NodeConfig::Dns { .. }) {
            return Err(wrong_kind(NodeKind::Dns, config));
        }
        let settings = crate::dns::BroadcastSettings::from_config(config)
            .map_err(|(field, why)| NodeError::invalid(field, why))?;
        let inputs = settings.inputs();
        let store = resources.sequence_store.get().cloned();
        let (engine, service) = crate::dns::broadcast::start(node, settings, &resources.dns, store)
            .map_err(broadcast_error)?;
        Ok(BuiltNode {
            spec: NodeSpec {
                node: node.clone(),
                outputs: vec![],
                inputs,
                owner: None,
            },
            engine,
            service,
        })
    }
}

/// Why a broadcast could not start, as a node error.
fn broadcast_error(error: BroadcastError) -> NodeError {
    match error {
        BroadcastError::Zone(crate::dns::zone::ZoneError::Exists { .. }) => {
            NodeError::Exists(error.to_string())
        }
        BroadcastError::Server(_) | BroadcastError::Sequence { .. } | BroadcastError::Thread(_) => {
            NodeError::Unavailable(error.to_string())
        }
        other => NodeError::Invalid {
            message: other.to_string(),
            field: None,
        },
    }
}
