//! `/v1/nodes/{node}/mix`: the per-jammer mix of a jam room (gain, mute, pan by
//! client_id, rtjam.md §8 ChannelGain/ChannelMute/SetFader). A change applies at once
//! and is stored with the node's configuration when the node is persistent.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::AppState;
use super::error::{ApiError, JsonBody, PathParams, Problem};
use super::handlers::NodeReference;
use crate::control::NodeConfig;
use crate::jam::{JamMixEntry, JamMixSetting, JamMixUpdate};
use crate::model::{NodeKind, NodeRef};

/// Parses `jam:<name>`; anything else is not a jam node (404).
fn jam_node(text: &str) -> Result<NodeRef, ApiError> {
    let node: NodeRef = text
        .parse()
        .map_err(|e: crate::model::ModelError| ApiError::invalid_field("node", e.to_string()))?;
    if node.kind() != NodeKind::Jam {
        return Err(ApiError::not_found(format!("{node} is not a jam node")));
    }
    Ok(node)
}

/// The node's configuration and whether it is stored, or 404.
fn current(state: &AppState, node: &NodeRef) -> Result<(NodeConfig, bool), ApiError> {
    let info = state
        .control
        .node(node)
        .ok_or_else(|| ApiError::not_found(format!("no node {node}")))?;
    let config = info
        .config
        .and_then(|c| serde_json::from_value::<NodeConfig>(c).ok())
        .ok_or_else(|| ApiError::not_found(format!("{node} has no jam configuration")))?;
    Ok((config, info.persistent))
}

/// The mix of a jam room: every jammer with a stored setting and every jammer in the
/// room now (at the default: 0 dB, centre, unmuted).
#[utoipa::path(get, path = "/v1/nodes/{node}/mix", tag = "nodes",
    params(("node" = NodeReference, Path, description = "`jam:<name>`")),
    responses((status = 200, body = Vec<JamMixEntry>), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_jam_mix(
    State(state): State<AppState>,
    PathParams(node): PathParams<String>,
) -> Result<Json<Vec<JamMixEntry>>, ApiError> {
    let node = jam_node(&node)?;
    Ok(Json(state.control.jam_mix(&node)?))
}

/// Sets one jammer's gain, mute and pan (admin scope). Applies at once, also to a
/// jammer not in the room yet, and is stored with a persistent node.
#[utoipa::path(put, path = "/v1/nodes/{node}/mix/{client_id}", tag = "nodes",
    params(("node" = NodeReference, Path, description = "`jam:<name>`"),
        ("client_id" = i64, Path, minimum = 0, maximum = 4294967295.0, description = "The jammer's client_id (0-4294967295)")),
    request_body = JamMixUpdate,
    responses((status = 200, body = JamMixEntry), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn set_jam_mix(
    State(state): State<AppState>,
    PathParams((node, client_id)): PathParams<(String, u32)>,
    JsonBody(update): JsonBody<JamMixUpdate>,
) -> Result<Json<JamMixEntry>, ApiError> {
    let node = jam_node(&node)?;
    let setting = JamMixSetting {
        client_id,
        gain_db: update.gain_db,
        mute: update.mute,
        pan: update.pan,
    };
    setting
        .validate()
        .map_err(|(field, why)| ApiError::invalid_field(field, why))?;
    let (mut config, persistent) = current(&state, &node)?;
    config
        .set_jam_mix(setting)
        .map_err(|why| ApiError::unprocessable(why.to_string(), Some("client_id".into())))?;
    if persistent {
        let stored = serde_json::to_value(&config).map_err(ApiError::internal)?;
        state.store.update_node_config(&node, &stored).await?;
    }
    state.control.set_jam_mix(&node, setting)?;
    let entry = state
        .control
        .jam_mix(&node)?
        .into_iter()
        .find(|e| e.client_id == client_id)
        .ok_or_else(|| ApiError::not_found(format!("{node} vanished")))?;
    Ok(Json(entry))
}

/// Returns one jammer to the default mix (0 dB, centre, unmuted) and forgets its
/// stored setting (admin scope).
#[utoipa::path(delete, path = "/v1/nodes/{node}/mix/{client_id}", tag = "nodes",
    params(("node" = NodeReference, Path, description = "`jam:<name>`"),
        ("client_id" = i64, Path, minimum = 0, maximum = 4294967295.0, description = "The jammer's client_id (0-4294967295)")),
    responses((status = 204, description = "Back to the default"), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn reset_jam_mix(
    State(state): State<AppState>,
    PathParams((node, client_id)): PathParams<(String, u32)>,
) -> Result<StatusCode, ApiError> {
    let node = jam_node(&node)?;
    let (mut config, persistent) = current(&state, &node)?;
    if config.remove_jam_mix(client_id) && persistent {
        let stored = serde_json::to_value(&config).map_err(ApiError::internal)?;
        state.store.update_node_config(&node, &stored).await?;
    }
    state.control.reset_jam_mix(&node, client_id)?;
    Ok(StatusCode::NO_CONTENT)
}
