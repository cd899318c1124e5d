//! The `aes67tx` and `aes67rx` kinds: AES67 transmit flows (inputs `ch1..chN`, sent as
//! RTP multicast, announced by SAP) and receive flows (outputs `ch1..chN`). The flows
//! themselves, their threads, SDP and SAP live in [`crate::aes67`]; this is their seam.

use api::control::NodeConfig;
use api::model::{NodeKind, NodeRef};

use super::{BuiltNode, NodeKindBuilder, NodeResources, wrong_kind};
use crate::node_service::NodeError;

/// Builds AES67 transmit flows from `{"kind": "aes67tx", ...}`.
pub struct Aes67TxKind;

/// Builds AES67 receive flows from `{"kind": "aes67rx", ...}`.
pub struct Aes67RxKind;

fn build_flow(
    node: &NodeRef,
    config: &NodeConfig,
    resources: &NodeResources,
) -> Result<BuiltNode, NodeError> {
    let flow =
        resources
            .aes67
            .build(node, config, std::sync::Arc::clone(&resources.media_clock))?;
    Ok(BuiltNode {
        spec: flow.spec,
        engine: flow.node,
        service: flow.service,
    })
}

impl NodeKindBuilder for Aes67TxKind {
    fn kind(&self) -> NodeKind {
        NodeKind::Aes67Tx
    }

    fn build(
        &self,
        node: &NodeRef,
        config: &NodeConfig,
        resources: &NodeResources,
    ) -> Result<BuiltNode, NodeError> {
        if !matches!(config, NodeConfig::Aes67Tx { .. }) {
            return Err(wrong_kind(NodeKind::Aes67Tx, config));
        }
        build_flow(node, config, resources)
    }
}

impl NodeKindBuilder for Aes67RxKind {
    fn kind(&self) -> NodeKind {
        NodeKind::Aes67Rx
    }

    fn build(
        &self,
        node: &NodeRef,
        config: &NodeConfig,
        resources: &NodeResources,
    ) -> Result<BuiltNode, NodeError> {
        if !matches!(config, NodeConfig::Aes67Rx { .. }) {
            return Err(wrong_kind(NodeKind::Aes67Rx, config));
        }
        build_flow(node, config, resources)
    }
}
