//! The `websocket` kind: a media stream to a voice bot over jambonz's `listen` protocol
//! (input `in` to the bot, output `out` from it). Made through the API (standing), or by
//! a route's `websocket` action for one call (owned by the call, whose attributes go in
//! the first frame). The engine node, I/O thread and service live in
//! [`crate::websocket`]; this is their seam.

use api::control::NodeConfig;
use api::model::{NodeKind, NodeRef};
use serde_json::{Map, Value};

use super::{BuiltNode, NodeKindBuilder, NodeResources, wrong_kind};
use crate::node_service::NodeError;
use crate::websocket::{self, DtmfSource, WebsocketSettings};

/// Builds the websocket node `node` for `settings`, owned by `owner` if given, with
/// `attributes` in the first frame and the digits of `dtmf` passed to the bot.
pub fn websocket_node(
    node: &NodeRef,
    settings: WebsocketSettings,
    attributes: &Map<String, Value>,
    owner: Option<NodeRef>,
    dtmf: Option<DtmfSource>,
) -> Result<BuiltNode, NodeError> {
    let built = websocket::build(node, settings, attributes, owner, dtmf)?;
    Ok(BuiltNode {
        spec: built.spec,
        engine: Box::new(built.node),
        service: built.service,
    })
}

/// Builds websocket nodes from `{"kind": "websocket", "url": ..., ...}`.
pub struct WebsocketKind;

impl NodeKindBuilder for WebsocketKind {
    fn kind(&self) -> NodeKind {
        NodeKind::Websocket
    }

    fn build(
        &self,
        node: &NodeRef,
        config: &NodeConfig,
        _resources: &NodeResources,
    ) -> Result<BuiltNode, NodeError> {
        if !matches!(config, NodeConfig::Websocket { .. }) {
            return Err(wrong_kind(NodeKind::Websocket, config));
        }
        let settings = WebsocketSettings::try_from(config)?;
        websocket_node(node, settings, &Map::new(), None, None)
    }
}
