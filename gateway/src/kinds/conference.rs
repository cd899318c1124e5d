//! The `conference` kind: an N-way mix-minus (`in1..inN`, `out1..outN`), where each
//! member hears everyone but itself. Made through the API (standing), or on demand by a
//! route's `conference` action, in which case it goes when its last caller hangs up.

use std::sync::Arc;

use api::control::NodeConfig;
use api::model::{NodeKind, NodeRef};

use super::{BuiltNode, NodeKindBuilder, NodeResources, Seating, wrong_kind};
use crate::engine::conference::ConferenceNode;
use crate::node_service::{NodeError, NodeService};
use crate::patchbay::NodeSpec;

/// Builds a conference `node` of `members` seats; `on_demand` marks one made for the
/// callers who join it.
pub fn conference_node(node: NodeRef, members: usize, on_demand: bool, block: usize) -> BuiltNode {
    BuiltNode {
        spec: NodeSpec {
            node,
            outputs: (1..=members).map(|k| format!("out{k}")).collect(),
            inputs: (1..=members).map(|k| format!("in{k}")).collect(),
            owner: None,
        },
        engine: Box::new(ConferenceNode::new(members, block)),
        service: Arc::new(ConferenceService { members, on_demand }),
    }
}

/// The control half of a conference: its seats. Who holds them is the switchboard's
/// business (it shows them in the status through the seat book).
struct ConferenceService {
    members: usize,
    on_demand: bool,
}

impl NodeService for ConferenceService {
    fn status(&self) -> serde_json::Value {
        serde_json::json!({ "capacity": self.members })
    }

    fn stop(&self) {}

    fn seating(&self) -> Option<Seating> {
        Some(Seating {
            prefixes: &["in", "out"],
            held_until_hangup: true,
            removed_when_empty: self.on_demand,
        })
    }
}

/// Builds conferences from `{"kind": "conference", "members": ...}`.
pub struct ConferenceKind;

impl NodeKindBuilder for ConferenceKind {
    fn kind(&self) -> NodeKind {
        NodeKind::Conference
    }

    fn build(
        &self,
        node: &NodeRef,
        config: &NodeConfig,
        resources: &NodeResources,
    ) -> Result<BuiltNode, NodeError> {
        let NodeConfig::Conference { members } = config else {
            return Err(wrong_kind(NodeKind::Conference, config));
        };
        Ok(conference_node(
            node.clone(),
            usize::from(*members),
            false,
            resources.block,
        ))
    }
}
