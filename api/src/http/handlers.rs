//! The `/v1` handlers, each documented for the OpenAPI document.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, JsonBody, PathParams, Problem, QueryParams};
use crate::control::{CallInfo, CallState, Event, NodeConfig, NodeInfo, PatchInfo};
use crate::model::{NodeKind, NodeRef, PortRef, Route};
use crate::store::{CdrFilter, CdrPage, Scope, TokenInfo};

/// Most items one page of a list returns.
const MAX_PAGE: usize = 1000;
/// Items a page returns when the client does not say.
const DEFAULT_PAGE: usize = 100;

/// A page of a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// How many items match in all.
    pub total: usize,
    /// Offset of the first item.
    pub offset: usize,
}

/// The page size asked for, or the default; 400 outside 1..=MAX_PAGE.
fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::invalid_field(
            "limit",
            format!("must be 1..={MAX_PAGE}"),
        ));
    }
    Ok(limit)
}

fn paginate<T>(
    mut all: Vec<T>,
    offset: Option<usize>,
    limit: Option<usize>,
) -> Result<Page<T>, ApiError> {
    let limit = page_limit(limit)?;
    let offset = offset.unwrap_or(0);
    let total = all.len();
    let items = if offset >= total {
        Vec::new()
    } else {
        all.drain(offset..).take(limit).collect()
    };
    Ok(Page {
        items,
        total,
        offset,
    })
}

fn require_admin(token: &TokenInfo) -> Result<(), ApiError> {
    if token.scope.allows(Scope::Admin) {
        Ok(())
    } else {
        Err(ApiError::forbidden("managing tokens needs the admin scope"))
    }
}

/// Runs a blocking gateway call off the async runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)
}

// ------------------------------------------------------- documentation-only schemas
// The wire types parse these from plain strings (`NodeRef`, `PortRef`, `Scope`); these
// stand-ins give the OpenAPI document their exact syntax, so clients and schemathesis
// know what the server accepts. They are never built.

/// A node reference, `kind:name`: `call:<uuid>`, or `player`, `recorder`, `conference`,
/// `aes67tx`, `aes67rx`, `jam` or `dns` with a name of 1-64 letters, digits, `-` and `_`.
#[derive(ToSchema)]
#[schema(
    pattern = "^(call:[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|(player|recorder|conference|aes67tx|aes67rx|jam|dns):[A-Za-z0-9_-]{1,64})$",
    example = "player:hold"
)]
#[allow(dead_code)] // documentation only
pub struct NodeReference(String);

/// A port reference, `kind:name.port`, e.g. `player:hold.out` or `call:<uuid>.ear`.
#[derive(ToSchema)]
#[schema(
    pattern = "^(call:[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|(player|recorder|conference|aes67tx|aes67rx|jam|dns):[A-Za-z0-9_-]{1,64})[.][A-Za-z0-9_]+$",
    example = "player:hold.out"
)]
#[allow(dead_code)] // documentation only
pub struct PortReference(String);

/// What a token may do: `read` (GET requests) or `admin` (everything).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // documentation only
pub enum TokenScope {
    /// GET requests.
    Read,
    /// Everything, including managing tokens.
    Admin,
}

// ----------------------------------------------------------------------------- calls

/// Filters of `GET /v1/calls`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallQuery {
    /// Only calls in this state.
    state: Option<CallState>,
    /// Skip this many calls (oldest first).
    offset: Option<usize>,
    /// Return at most this many (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Lists live calls, oldest first.
#[utoipa::path(get, path = "/v1/calls", tag = "calls", params(CallQuery),
    responses((status = 200, body = Page<CallInfo>), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_calls(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<CallQuery>,
) -> Result<Json<Page<CallInfo>>, ApiError> {
    let limit = page_limit(query.limit)?;
    let offset = query.offset.unwrap_or(0);
    let (total, items) = state.control.calls_page(query.state, offset, limit);
    Ok(Json(Page {
        items,
        total,
        offset,
    }))
}

/// One live call.
#[utoipa::path(get, path = "/v1/calls/{uuid}", tag = "calls", params(("uuid" = Uuid, Path, description = "The call's AudioSocket UUID")),
    responses((status = 200, body = CallInfo), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_call(
    State(state): State<AppState>,
    PathParams(uuid): PathParams<Uuid>,
) -> Result<Json<CallInfo>, ApiError> {
    state
        .control
        .call(uuid)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no live call {uuid}")))
}

/// Hangs a call up gracefully: the gateway sends `00 00 00`, so the dialplan continues.
#[utoipa::path(delete, path = "/v1/calls/{uuid}", tag = "calls", params(("uuid" = Uuid, Path, description = "The call's AudioSocket UUID")),
    responses((status = 202, description = "Hangup sent"), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn hang_up_call(
    State(state): State<AppState>,
    PathParams(uuid): PathParams<Uuid>,
) -> Result<StatusCode, ApiError> {
    if state.control.hangup(uuid) {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(ApiError::not_found(format!("no live call {uuid}")))
    }
}

// ----------------------------------------------------------------------------- nodes

/// Filters of `GET /v1/nodes`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NodeQuery {
    /// Only nodes of this kind.
    kind: Option<NodeKind>,
    /// Skip this many nodes.
    offset: Option<usize>,
    /// Return at most this many (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Lists every node with its ports.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", params(NodeQuery),
    responses((status = 200, body = Page<NodeInfo>), (status = 400, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_nodes(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<NodeQuery>,
) -> Result<Json<Page<NodeInfo>>, ApiError> {
    let mut nodes = state.control.nodes();
    if let Some(kind) = query.kind {
        nodes.retain(|n| n.kind == kind);
    }
    Ok(Json(paginate(nodes, query.offset, query.limit)?))
}

/// A node to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    /// Its name (1-64 of letters, digits, `-`, `_`); the kind comes from `config`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", example = "hold")]
    name: String,
    /// Its configuration.
    config: NodeConfig,
    /// Store it and recreate it at start-up (default true).
    #[serde(default = "yes")]
    persistent: bool,
}

fn yes() -> bool {
    true
}

fn parse_node(text: &str) -> Result<NodeRef, ApiError> {
    text.parse()
        .map_err(|e: crate::model::ModelError| ApiError::invalid_field("node", e.to_string()))
}

/// Creates a player, recorder, conference, AES67 flow, jam room or AoDNS broadcast (`dns`).
#[utoipa::path(post, path = "/v1/nodes", tag = "nodes", request_body = NewNode,
    responses((status = 201, body = NodeInfo), (status = 400, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_node(
    State(state): State<AppState>,
    JsonBody(new): JsonBody<NewNode>,
) -> Result<(StatusCode, Json<NodeInfo>), ApiError> {
    let node = NodeRef::new(new.config.kind(), &new.name)
        .map_err(|e| ApiError::invalid_field("name", e.to_string()))?;
    new.config
        .validate()
        .map_err(|(field, why)| ApiError::invalid_field(field, why))?;
    if state.control.node(&node).is_some() {
        return Err(ApiError::conflict(format!("{node} exists already")));
    }
    if new.persistent {
        let config = serde_json::to_value(&new.config).map_err(ApiError::internal)?;
        state.store.create_node(&node, &config).await?;
    }
    let control = Arc::clone(&state.control);
    let (name, config, persistent) = (new.name.clone(), new.config.clone(), new.persistent);
    match blocking(move || control.create_node(&name, &config, persistent)).await? {
        Ok(info) => Ok((StatusCode::CREATED, Json(info))),
        Err(e) => {
            if new.persistent
                && let Err(cleanup) = state.store.delete_node(&node).await
            {
                tracing::warn!(error = %cleanup, %node, "cannot remove the stored node after a failed create");
            }
            Err(e.into())
        }
    }
}

/// One node, with its ports, configuration and status.
#[utoipa::path(get, path = "/v1/nodes/{node}", tag = "nodes", params(("node" = NodeReference, Path, description = "`kind:name`, e.g. `player:hold`")),
    responses((status = 200, body = NodeInfo), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_node(
    State(state): State<AppState>,
    PathParams(node): PathParams<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    let node = parse_node(&node)?;
    state
        .control
        .node(&node)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no node {node}")))
}

/// A node's new configuration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeUpdate {
    /// The new configuration (same kind).
    config: NodeConfig,
}

/// Replaces a configurable node's configuration. The node is rebuilt and its patches
/// are restored where its ports still exist; changes a node can take live (a jam
/// room's tempo, member cap, allow-list, mix or silence policy) apply without a rebuild.
#[utoipa::path(put, path = "/v1/nodes/{node}", tag = "nodes", params(("node" = NodeReference, Path, description = "`kind:name`")), request_body = NodeUpdate,
    responses((status = 200, body = NodeInfo), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn replace_node(
    State(state): State<AppState>,
    PathParams(node): PathParams<String>,
    JsonBody(update): JsonBody<NodeUpdate>,
) -> Result<Json<NodeInfo>, ApiError> {
    let node = parse_node(&node)?;
    update
        .config
        .validate()
        .map_err(|(field, why)| ApiError::invalid_field(field, why))?;
    if update.config.kind() != node.kind() {
        return Err(ApiError::invalid_field(
            "config",
            format!(
                "{node} is a {}, not a {}",
                node.kind(),
                update.config.kind()
            ),
        ));
    }
    let current = state
        .control
        .node(&node)
        .ok_or_else(|| ApiError::not_found(format!("no node {node}")))?;
    let Some(old_config) = current.config.clone() else {
        return Err(ApiError::unprocessable(
            format!("{node} is not configurable through the API"),
            None,
        ));
    };
    if current.persistent {
        let config = serde_json::to_value(&update.config).map_err(ApiError::internal)?;
        state.store.update_node_config(&node, &config).await?;
    }
    // A node that can take the change live (a jam room's tempo, say) keeps running.
    if let Some(result) = state.control.reconfigure_node(&node, &update.config) {
        return Ok(Json(result?));
    }
    let control = Arc::clone(&state.control);
    let patches: Vec<PatchInfo> = control
        .patches()
        .into_iter()
        .filter(|p| p.source.node() == &node || p.sink.node() == &node)
        .collect();
    let (target, config, persistent) = (node.clone(), update.config.clone(), current.persistent);
    // The running configuration, to put the node back if the change is refused.
    let old: Option<NodeConfig> = serde_json::from_value(old_config.clone()).ok();
    let rebuilt = blocking(move || -> Result<NodeInfo, crate::control::ControlError> {
        let reconnect = |patches: &[PatchInfo]| {
            for patch in patches {
                // Ports that no longer exist (a recorder with fewer channels) lose their
                // patches.
                let _ = control.connect(
                    patch.source.clone(),
                    patch.sink.clone(),
                    patch.gain_db,
                    patch.persistent,
                );
            }
        };
        control.delete_node(&target)?;
        match control.create_node(target.name(), &config, persistent) {
            Ok(info) => {
                reconnect(&patches);
                Ok(info)
            }
            Err(refused) => {
                // A change the gateway refuses (another broadcast serves that domain,
                // say) must not lose the node: it comes back as it was.
                if let Some(old) = &old
                    && control.create_node(target.name(), old, persistent).is_ok()
                {
                    reconnect(&patches);
                }
                Err(refused)
            }
        }
    })
    .await?;
    if rebuilt.is_err() && current.persistent {
        // The database keeps the configuration that runs.
        state.store.update_node_config(&node, &old_config).await?;
    }
    Ok(Json(rebuilt?))
}

/// Removes a node and every patch touching it.
#[utoipa::path(delete, path = "/v1/nodes/{node}", tag = "nodes", params(("node" = NodeReference, Path, description = "`kind:name`")),
    responses((status = 204, description = "Removed"), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_node(
    State(state): State<AppState>,
    PathParams(node): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    let node = parse_node(&node)?;
    let current = state
        .control
        .node(&node)
        .ok_or_else(|| ApiError::not_found(format!("no node {node}")))?;
    if node.kind() == NodeKind::Call {
        return Err(ApiError::unprocessable(
            "hang a call up with DELETE /v1/calls/{uuid}",
            None,
        ));
    }
    if current.persistent {
        match state.store.delete_node(&node).await {
            Ok(()) | Err(crate::store::StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    state.control.delete_node(&node)?;
    Ok(StatusCode::NO_CONTENT)
}

// --------------------------------------------------------------------------- patches

/// Filters of `GET /v1/patches`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PatchQuery {
    /// Only patches touching this node (`kind:name`).
    #[param(value_type = Option<NodeReference>)]
    node: Option<String>,
    /// Skip this many patches.
    offset: Option<usize>,
    /// Return at most this many (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Lists patches.
#[utoipa::path(get, path = "/v1/patches", tag = "patches", params(PatchQuery),
    responses((status = 200, body = Page<PatchInfo>), (status = 400, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_patches(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<PatchQuery>,
) -> Result<Json<Page<PatchInfo>>, ApiError> {
    let mut patches = state.control.patches();
    if let Some(node) = &query.node {
        let node = parse_node(node)?;
        patches.retain(|p| p.source.node() == &node || p.sink.node() == &node);
    }
    Ok(Json(paginate(patches, query.offset, query.limit)?))
}

/// A patch to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPatch {
    /// An output port, `kind:name.port`.
    #[schema(value_type = PortReference, example = "player:hold.out")]
    source: String,
    /// An input port, `kind:name.port`.
    #[schema(value_type = PortReference, example = "call:40325ec2-5efd-4bd3-805f-53576e581d13.ear")]
    sink: String,
    /// Gain in dB (-96..=24, default 0).
    #[serde(default)]
    #[schema(minimum = -96, maximum = 24)]
    gain_db: f32,
    /// Store it and restore it at start-up (not for patches touching calls).
    #[serde(default)]
    persistent: bool,
}

fn parse_port(field: &str, text: &str) -> Result<PortRef, ApiError> {
    text.parse()
        .map_err(|e: crate::model::ModelError| ApiError::invalid_field(field, e.to_string()))
}

fn check_gain(gain_db: f32) -> Result<(), ApiError> {
    if gain_db.is_finite() && (-96.0..=24.0).contains(&gain_db) {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            "gain_db",
            format!("{gain_db} is out of range (-96..=24)"),
        ))
    }
}

/// Connects an output port to an input port. Invalid references or a port of the wrong
/// direction get 422 with the reason.
#[utoipa::path(post, path = "/v1/patches", tag = "patches", request_body = NewPatch,
    responses((status = 201, body = PatchInfo), (status = 400, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_patch(
    State(state): State<AppState>,
    JsonBody(new): JsonBody<NewPatch>,
) -> Result<(StatusCode, Json<PatchInfo>), ApiError> {
    let source = parse_port("source", &new.source)?;
    let sink = parse_port("sink", &new.sink)?;
    check_gain(new.gain_db)?;
    if new.persistent
        && (source.node().kind() == NodeKind::Call || sink.node().kind() == NodeKind::Call)
    {
        return Err(ApiError::invalid_field(
            "persistent",
            "patches touching a call end with the call and cannot persist",
        ));
    }
    let patch = state
        .control
        .connect(source.clone(), sink.clone(), new.gain_db, new.persistent)?;
    if new.persistent
        && let Err(e) = state.store.create_patch(&source, &sink, new.gain_db).await
    {
        // Keep the live state and the database in step: undo the live patch.
        let _ = state.control.disconnect(patch.id);
        return Err(e.into());
    }
    Ok((StatusCode::CREATED, Json(patch)))
}

/// One patch.
#[utoipa::path(get, path = "/v1/patches/{id}", tag = "patches", params(("id" = u64, Path, description = "Patch id")),
    responses((status = 200, body = PatchInfo), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_patch(
    State(state): State<AppState>,
    PathParams(id): PathParams<u64>,
) -> Result<Json<PatchInfo>, ApiError> {
    state
        .control
        .patches()
        .into_iter()
        .find(|p| p.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no patch {id}")))
}

/// A patch's new gain.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUpdate {
    /// Gain in dB (-96..=24).
    #[schema(minimum = -96, maximum = 24)]
    gain_db: f32,
}

async fn stored_patch_id(state: &AppState, patch: &PatchInfo) -> Result<Option<i64>, ApiError> {
    Ok(state
        .store
        .list_patches()
        .await?
        .into_iter()
        .find(|r| r.source == patch.source && r.sink == patch.sink)
        .map(|r| r.id))
}

/// Changes a patch's gain, live.
#[utoipa::path(patch, path = "/v1/patches/{id}", tag = "patches", params(("id" = u64, Path, description = "Patch id")), request_body = PatchUpdate,
    responses((status = 200, body = PatchInfo), (status = 400, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn update_patch(
    State(state): State<AppState>,
    PathParams(id): PathParams<u64>,
    JsonBody(update): JsonBody<PatchUpdate>,
) -> Result<Json<PatchInfo>, ApiError> {
    check_gain(update.gain_db)?;
    let current = state
        .control
        .patches()
        .into_iter()
        .find(|p| p.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no patch {id}")))?;
    if current.persistent
        && let Some(stored) = stored_patch_id(&state, &current).await?
    {
        state
            .store
            .update_patch_gain(stored, update.gain_db)
            .await?;
    }
    Ok(Json(state.control.set_patch_gain(id, update.gain_db)?))
}

/// Removes a patch.
#[utoipa::path(delete, path = "/v1/patches/{id}", tag = "patches", params(("id" = u64, Path, description = "Patch id")),
    responses((status = 204, description = "Removed"), (status = 400, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_patch(
    State(state): State<AppState>,
    PathParams(id): PathParams<u64>,
) -> Result<StatusCode, ApiError> {
    let current = state
        .control
        .patches()
        .into_iter()
        .find(|p| p.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no patch {id}")))?;
    if current.persistent
        && let Some(stored) = stored_patch_id(&state, &current).await?
    {
        state.store.delete_patch(stored).await?;
    }
    state.control.disconnect(id)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------- routes

/// A route and where it comes from: the route's fields, then `source` and the times.
/// Documented by [`RouteInfoSchema`].
#[derive(Debug, Serialize, Deserialize)]
pub struct RouteInfo {
    /// The route.
    #[serde(flatten)]
    route: Route,
    /// `config` (the configuration file: read-only here) or `api` (the database).
    source: String,
    /// When it was stored (API routes).
    created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When it last changed (API routes).
    updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

// The OpenAPI schema of `RouteInfo`, written out field by field: deriving it would
// render the flattened route as `allOf: [Route, {...}]`, and `Route`'s own
// `additionalProperties: false` (right for a request body, which denies unknown
// fields) would then forbid `source` and the times the response carries. A test checks
// that it lists exactly the fields `RouteInfo` serializes.
/// A route and where it comes from.
#[derive(ToSchema)]
#[schema(as = RouteInfo)]
#[allow(dead_code)] // never built: it only describes RouteInfo's JSON
pub struct RouteInfoSchema {
    /// A unique, human-readable name.
    name: String,
    /// Higher runs first; among equal priorities the more specific match wins.
    priority: i32,
    /// Which calls it applies to.
    #[schema(rename = "match")]
    matcher: crate::model::RouteMatch,
    /// What it does, in order.
    actions: Vec<crate::model::RouteAction>,
    /// `config` (the configuration file: read-only here) or `api` (the database).
    source: String,
    /// When it was stored (API routes).
    created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When it last changed (API routes).
    updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn reload_routes(state: &AppState) -> Result<(), ApiError> {
    let routes = state.store.list_routes().await?;
    state
        .control
        .set_stored_routes(routes.into_iter().map(|r| r.route).collect());
    Ok(())
}

/// Lists routes in the order they are tried: configuration-file routes and API routes.
#[utoipa::path(get, path = "/v1/routes", tag = "routes",
    responses((status = 200, body = Vec<RouteInfoSchema>), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_routes(State(state): State<AppState>) -> Result<Json<Vec<RouteInfo>>, ApiError> {
    let mut routes: Vec<RouteInfo> = state
        .control
        .static_routes()
        .into_iter()
        .map(|route| RouteInfo {
            route,
            source: "config".into(),
            created_at: None,
            updated_at: None,
        })
        .collect();
    routes.extend(
        state
            .store
            .list_routes()
            .await?
            .into_iter()
            .map(|r| RouteInfo {
                route: r.route,
                source: "api".into(),
                created_at: Some(r.created_at),
                updated_at: Some(r.updated_at),
            }),
    );
    routes.sort_by(|a, b| {
        b.route.priority.cmp(&a.route.priority).then(
            b.route
                .matcher
                .specificity()
                .cmp(&a.route.matcher.specificity()),
        )
    });
    Ok(Json(routes))
}

fn validate_route(route: &Route) -> Result<(), ApiError> {
    route
        .validate()
        .map_err(|e| ApiError::unprocessable(e.to_string(), Some("route".into())))
}

fn check_not_static(state: &AppState, name: &str) -> Result<(), ApiError> {
    if state.control.static_routes().iter().any(|r| r.name == name) {
        Err(ApiError::conflict(format!(
            "route {name:?} comes from the configuration file and cannot be changed here"
        )))
    } else {
        Ok(())
    }
}

/// Creates a route. A route for one UUID may be registered before the call connects:
/// that is how a dialplan or an IVR back-end routes AudioSocket calls through the API.
#[utoipa::path(post, path = "/v1/routes", tag = "routes", request_body = Route,
    responses((status = 201, body = RouteInfoSchema), (status = 400, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_route(
    State(state): State<AppState>,
    JsonBody(route): JsonBody<Route>,
) -> Result<(StatusCode, Json<RouteInfo>), ApiError> {
    validate_route(&route)?;
    check_not_static(&state, &route.name)?;
    let record = state.store.create_route(&route).await?;
    reload_routes(&state).await?;
    Ok((
        StatusCode::CREATED,
        Json(RouteInfo {
            route: record.route,
            source: "api".into(),
            created_at: Some(record.created_at),
            updated_at: Some(record.updated_at),
        }),
    ))
}

/// One route.
#[utoipa::path(get, path = "/v1/routes/{name}", tag = "routes", params(("name" = String, Path, description = "Route name")),
    responses((status = 200, body = RouteInfoSchema), (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_route(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<RouteInfo>, ApiError> {
    if let Some(route) = state
        .control
        .static_routes()
        .into_iter()
        .find(|r| r.name == name)
    {
        return Ok(Json(RouteInfo {
            route,
            source: "config".into(),
            created_at: None,
            updated_at: None,
        }));
    }
    let record = state.store.get_route(&name).await?;
    Ok(Json(RouteInfo {
        route: record.route,
        source: "api".into(),
        created_at: Some(record.created_at),
        updated_at: Some(record.updated_at),
    }))
}

/// Replaces a route (it may be renamed).
#[utoipa::path(put, path = "/v1/routes/{name}", tag = "routes", params(("name" = String, Path, description = "Route name")), request_body = Route,
    responses((status = 200, body = RouteInfoSchema), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn replace_route(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    JsonBody(route): JsonBody<Route>,
) -> Result<Json<RouteInfo>, ApiError> {
    validate_route(&route)?;
    check_not_static(&state, &name)?;
    check_not_static(&state, &route.name)?;
    let record = state.store.replace_route(&name, &route).await?;
    reload_routes(&state).await?;
    Ok(Json(RouteInfo {
        route: record.route,
        source: "api".into(),
        created_at: Some(record.created_at),
        updated_at: Some(record.updated_at),
    }))
}

/// Deletes a route.
#[utoipa::path(delete, path = "/v1/routes/{name}", tag = "routes", params(("name" = String, Path, description = "Route name")),
    responses((status = 204, description = "Deleted"), (status = 404, body = Problem), (status = 409, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_route(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    check_not_static(&state, &name)?;
    state.store.delete_route(&name).await?;
    reload_routes(&state).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------------------ cdrs

/// Filters of `GET /v1/cdrs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CdrQuery {
    /// Only this call.
    uuid: Option<Uuid>,
    /// Calls that ended at or after this time (RFC 3339).
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// Calls that ended before this time (RFC 3339).
    to: Option<chrono::DateTime<chrono::Utc>>,
    /// Page size (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Also list open records: calls still live (or whose gateway stopped and has not
    /// closed them yet), with `open: true` and `ended_at` / `duration_ms` as of their
    /// last refresh. Default false: only finished calls.
    include_open: Option<bool>,
}

/// Records of calls, newest first, a page at a time: finished calls, and with
/// `include_open=true` calls still live.
#[utoipa::path(get, path = "/v1/cdrs", tag = "cdrs", params(CdrQuery),
    responses((status = 200, description = "A page of records and the cursor of the next", body = CdrPage),
        (status = 400, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_cdrs(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<CdrQuery>,
) -> Result<Json<CdrPage>, ApiError> {
    if let (Some(from), Some(to)) = (query.from, query.to)
        && from > to
    {
        return Err(ApiError::invalid_field("from", "must not be after `to`"));
    }
    if query.limit.is_some_and(|l| l == 0 || l as usize > MAX_PAGE) {
        return Err(ApiError::invalid_field(
            "limit",
            format!("must be 1..={MAX_PAGE}"),
        ));
    }
    let filter: CdrFilter = serde_json::from_value(serde_json::json!({
        "uuid": query.uuid,
        "from": query.from,
        "to": query.to,
        "limit": query.limit,
        "cursor": query.cursor,
        "include_open": query.include_open.unwrap_or(false),
    }))
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(state.store.query_cdrs(&filter).await?))
}

// ---------------------------------------------------------------------------- events

/// Filters of the event stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Comma-separated event types to receive (default: all), e.g. `call_started,dtmf`.
    types: Option<String>,
    /// Only events about this call (plus `levels`, which covers every call).
    call: Option<Uuid>,
}

fn event_call(event: &Event) -> Option<Uuid> {
    match event {
        Event::CallStarted { call, .. }
        | Event::CallState { call, .. }
        | Event::CallEnded { call, .. }
        | Event::Dtmf { call, .. }
        | Event::TalkStart { call }
        | Event::TalkStop { call } => Some(*call),
        Event::PatchCreated { patch } => [patch.source.node(), patch.sink.node()]
            .into_iter()
            .find(|n| n.kind() == NodeKind::Call)
            .and_then(|n| Uuid::parse_str(n.name()).ok()),
        _ => None,
    }
}

/// Live events as Server-Sent Events: calls starting and ending, state changes, DTMF,
/// talk start/stop (voice activity detection), level meters (about 10 Hz), patches,
/// nodes, finished recordings and jam room members joining and leaving. Each SSE
/// message's `event` is the JSON's `type`.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventQuery),
    responses((status = 200, description = "An endless text/event-stream of Event objects", content_type = "text/event-stream", body = Event),
        (status = 400, body = Problem)),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    token: Option<axum::Extension<super::auth::PresentedToken>>,
    QueryParams(query): QueryParams<EventQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let types: Option<Vec<String>> = query.types.as_ref().map(|t| {
        t.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let call = query.call;
    let receiver = state.control.subscribe();
    let shutdown = state.shutdown.clone();
    let token = token.map(|t| t.0.0);
    // The stream re-checks its token as often as the token cache would, and ends when
    // the token has been revoked.
    let mut recheck = tokio::time::interval(super::auth::CACHE_FRESH);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream =
        futures_util::stream::unfold((receiver, recheck), move |(mut receiver, mut recheck)| {
            let types = types.clone();
            let shutdown = shutdown.clone();
            let (state, token) = (state.clone(), token.clone());
            async move {
                loop {
                    let next = tokio::select! {
                        () = shutdown.cancelled() => return None,
                        _ = recheck.tick() => {
                            if let Some(token) = &token
                                && !super::auth::still_valid(&state, token).await
                            {
                                return None;
                            }
                            continue;
                        }
                        next = receiver.recv() => next,
                    };
                    let event = match next {
                        Ok(event) => event,
                        Err(RecvError::Lagged(missed)) => Event::Lagged { missed },
                        Err(RecvError::Closed) => return None,
                    };
                    if let Some(types) = &types
                        && !types.iter().any(|t| t == event.name())
                    {
                        continue;
                    }
                    if let Some(call) = call
                        && !matches!(event, Event::Levels { .. } | Event::Lagged { .. })
                        && event_call(&event) != Some(call)
                    {
                        continue;
                    }
                    let sse = SseEvent::default()
                        .event(event.name())
                        .json_data(&event)
                        .unwrap_or_else(|_| SseEvent::default().comment("unserializable event"));
                    return Some((Ok(sse), (receiver, recheck)));
                }
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

// ---------------------------------------------------------------------------- tokens

/// A token to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A unique name (who or what uses it), 1 to 64 characters and not all blank;
    /// stored without surrounding blanks.
    #[schema(min_length = 1, max_length = 64)]
    name: String,
    /// `read` or `admin`.
    #[schema(value_type = TokenScope, example = "read")]
    scope: Scope,
}

/// A freshly created token: the secret is shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// Its name.
    name: String,
    /// Its scope.
    #[schema(value_type = TokenScope)]
    scope: Scope,
    /// The secret to send as `Authorization: Bearer <token>`.
    token: String,
}

/// A token without its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenSummary {
    /// Its name.
    name: String,
    /// Its scope.
    #[schema(value_type = TokenScope)]
    scope: Scope,
    /// When it was created.
    created_at: chrono::DateTime<chrono::Utc>,
    /// When it was last used (to the minute).
    last_used_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Lists tokens (admin scope).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenSummary>), (status = 403, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_tokens(
    State(state): State<AppState>,
    Extension(token): Extension<TokenInfo>,
) -> Result<Json<Vec<TokenSummary>>, ApiError> {
    require_admin(&token)?;
    Ok(Json(
        state
            .store
            .list_tokens()
            .await?
            .into_iter()
            .map(|t| TokenSummary {
                name: t.name,
                scope: t.scope,
                created_at: t.created_at,
                last_used_at: t.last_used_at,
            })
            .collect(),
    ))
}

/// Creates a token (admin scope); its secret is in the response, once.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<AppState>,
    Extension(token): Extension<TokenInfo>,
    JsonBody(new): JsonBody<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    require_admin(&token)?;
    // Characters, not bytes, as documented (maxLength); counted as sent, so a name
    // the document calls too long is refused even if trimming would shorten it.
    let name = new.name.trim();
    if name.is_empty() || new.name.chars().count() > 64 {
        return Err(ApiError::invalid_field(
            "name",
            "must be 1 to 64 characters, not all blank",
        ));
    }
    let created = state.store.create_token(name, new.scope).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            name: created.info.name.clone(),
            scope: created.info.scope,
            token: created.token.clone(),
        }),
    ))
}

/// Revokes a token (admin scope). Cached verifications expire within a minute.
#[utoipa::path(delete, path = "/v1/tokens/{name}", tag = "tokens", params(("name" = String, Path, description = "Token name")),
    responses((status = 204, description = "Revoked"), (status = 403, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(token): Extension<TokenInfo>,
    PathParams(name): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&token)?;
    state.store.revoke_token(&name).await?;
    state.tokens.clear();
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------------------ meta

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")),
    security(("bearer" = [])))]
pub async fn openapi_document(
    Extension(openapi): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Response {
    Json(openapi.as_ref().clone()).into_response()
}

/// Liveness: the process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the media plane runs and the database answers.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let media = state.control.ready();
    let database = state.store.ping().await.is_ok();
    let status = if media && database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "media": media, "database": database })),
    )
        .into_response()
}

/// 404 for anything else.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; the API is under /v1 (see /v1/openapi.json)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_info_schema_lists_exactly_the_fields_route_info_serializes() {
        let route: Route = serde_json::from_value(serde_json::json!({
            "name": "phone-in",
            "priority": 10,
            "match": {"uuid_prefix": "c0de"},
            "actions": [{"action": "conference", "name": "desk"}],
        }))
        .unwrap();
        let info = RouteInfo {
            route,
            source: "api".into(),
            created_at: Some(chrono::Utc::now()),
            updated_at: None,
        };
        let serialized = serde_json::to_value(&info).unwrap();
        let mut fields: Vec<&String> = serialized.as_object().unwrap().keys().collect();
        fields.sort();

        let schema =
            serde_json::to_value(<RouteInfoSchema as utoipa::PartialSchema>::schema()).unwrap();
        let mut documented: Vec<&String> =
            schema["properties"].as_object().unwrap().keys().collect();
        documented.sort();
        assert_eq!(fields, documented);
        assert_eq!(<RouteInfoSchema as utoipa::ToSchema>::name(), "RouteInfo");
        // Every field but the two nullable times is always present.
        assert_eq!(
            schema["required"],
            serde_json::json!(["name", "priority", "match", "actions", "source"])
        );
    }
}
