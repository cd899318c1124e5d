//! The `jam` kind: an RTJam room, joined (one jammer per seat) or hosted. The room's
//! engine node, socket thread and service live in [`crate::jam`]; this is their seam.

use api::control::NodeConfig;
use api::model::{NodeKind, NodeRef};

use super::{BuiltNode, NodeKindBuilder, NodeResources, wrong_kind};
use crate::node_service::NodeError;

/// Builds jam rooms from `{"kind": "jam", "mode": ..., ...}`.
pub struct JamKind;

impl NodeKindBuilder for JamKind {
    fn kind(&self) -> NodeKind {
        NodeKind::Jam
    }

    fn build(
        &self,
        node: &NodeRef,
        config: &NodeConfig,
        resources: &NodeResources,
    ) -> Result<BuiltNode, NodeError> {
        if !matches!(config, NodeConfig::Jam { .. }) {
            return Err(wrong_kind(NodeKind::Jam, config));
        }
        let built =
            crate::jam::build_node(node, config, resources.block, resources.events.clone())?;
        tracing::info!(node = %node, addr = ?built.service.local_addr(), "jam room ready");
        Ok(BuiltNode {
            spec: built.spec,
            engine: Box::new(built.node),
            service: built.service,
        })
    }
}
