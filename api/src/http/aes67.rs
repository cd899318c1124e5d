//! AES67 routes: a transmit flow's SDP (what a receiver such as ffmpeg, a console or Dante
//! Controller's SAP listing needs) and the sessions heard on SAP.

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, PathParams, Problem};
use crate::control::SapSessionInfo;
use crate::model::{NodeKind, NodeRef};

/// A transmit flow: its name, or its node reference `aes67tx:<name>` (documentation only:
/// the handler parses the text).
#[derive(ToSchema)]
#[schema(pattern = "^(aes67tx:)?[A-Za-z0-9_-]{1,64}$", example = "studio")]
#[allow(dead_code)] // documentation only
pub struct FlowReference(String);

/// The SDP of an AES67 transmit flow, exactly as its SAP announcements carry it (CRLF
/// line ends). `{flow}` is the flow's name (`studio`) or its node reference
/// (`aes67tx:studio`).
#[utoipa::path(get, path = "/v1/flows/{flow}/sdp", tag = "aes67",
    params(("flow" = FlowReference, Path, description = "The transmit flow: `studio` or `aes67tx:studio`")),
    responses(
        (status = 200, description = "The flow's SDP", content_type = "application/sdp", body = String),
        (status = 400, body = Problem),
        (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn flow_sdp(
    State(state): State<AppState>,
    PathParams(flow): PathParams<String>,
) -> Result<Response, ApiError> {
    let name = match flow.split_once(':') {
        None => flow.as_str(),
        Some(("aes67tx", name)) => name,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "flow",
                format!("{flow:?} is not an AES67 transmit flow (write `name` or `aes67tx:name`)"),
            ));
        }
    };
    let node = NodeRef::new(NodeKind::Aes67Tx, name)
        .map_err(|e| ApiError::invalid_field("flow", e.to_string()))?;
    let sdp = state
        .control
        .flow_sdp(node.name())
        .ok_or_else(|| ApiError::not_found(format!("no transmit flow {node}")))?;
    Ok(([(CONTENT_TYPE, "application/sdp")], sdp).into_response())
}

/// Sessions heard on the SAP group 239.255.255.255:9875 (our own flows included), with
/// what a receive flow needs to subscribe (`"sap_session": "<name>"`). A session is
/// dropped on its deletion packet, or after `max(10 × its interval, 1 hour)` of silence.
#[utoipa::path(get, path = "/v1/discovery/sap", tag = "aes67",
    responses((status = 200, body = Vec<SapSessionInfo>)),
    security(("bearer" = [])))]
pub async fn sap_sessions(State(state): State<AppState>) -> Json<Vec<SapSessionInfo>> {
    Json(state.control.sap_sessions())
}
