//! The REST API: axum handlers under `/v1`, documented with utoipa.
//!
//! [`router`] builds the axum `Router` and the OpenAPI document from the same handler
//! list (utoipa-axum), so a route cannot exist without being documented. Every `/v1`
//! route sits behind [`auth::require_token`]; `/healthz`, `/readyz` and `/metrics` do not.

pub mod auth;
pub mod error;
mod handlers;
mod metrics;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use crate::control::Control;
use crate::store::Store;
pub use error::{ApiError, Problem};
pub use metrics::install_prometheus_recorder;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    /// The running gateway.
    pub control: Arc<dyn Control>,
    /// The database.
    pub store: Arc<dyn Store>,
    /// Verified-token cache.
    pub tokens: Arc<auth::TokenCache>,
    /// Renders the `metrics` crate's registry (API request counters and latency), if a
    /// Prometheus recorder was installed.
    pub prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Cancelled when the server shuts down: event streams end then.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl AppState {
    /// State for `control` and `store`, with a fresh token cache.
    pub fn new(
        control: Arc<dyn Control>,
        store: Arc<dyn Store>,
        prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> AppState {
        AppState {
            control,
            store,
            tokens: Arc::new(auth::TokenCache::default()),
            prometheus,
            shutdown,
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "telepatch",
        description = "Control API of the telepatch media gateway: live calls, the patchbay's nodes and patches, \
                       routes applied when calls connect, call records and a live event stream. Every /v1 route \
                       needs a Bearer token (`telepatch token create`); reads need the read scope, changes admin.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "calls", description = "Live calls"),
        (name = "nodes", description = "Patchbay nodes and their ports"),
        (name = "patches", description = "Connections between ports"),
        (name = "routes", description = "What happens when a call connects"),
        (name = "cdrs", description = "Records of finished calls"),
        (name = "events", description = "Live event stream"),
        (name = "tokens", description = "API tokens"),
        (name = "meta", description = "Health, readiness, the API document"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tp_...")
                    .build(),
            ),
        );
    }
}

/// Builds the `/v1` API (authenticated) and its OpenAPI document.
fn v1(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa_axum::routes;
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(handlers::list_calls))
        .routes(routes!(handlers::get_call, handlers::hang_up_call))
        .routes(routes!(handlers::list_nodes, handlers::create_node))
        .routes(routes!(
            handlers::get_node,
            handlers::replace_node,
            handlers::delete_node
        ))
        .routes(routes!(handlers::list_patches, handlers::create_patch))
        .routes(routes!(
            handlers::get_patch,
            handlers::update_patch,
            handlers::delete_patch
        ))
        .routes(routes!(handlers::list_routes, handlers::create_route))
        .routes(routes!(
            handlers::get_route,
            handlers::replace_route,
            handlers::delete_route
        ))
        .routes(routes!(handlers::list_cdrs))
        .routes(routes!(handlers::events))
        .routes(routes!(handlers::list_tokens, handlers::create_token))
        .routes(routes!(handlers::revoke_token))
        .routes(routes!(handlers::openapi_document))
        .split_for_parts();
    let router = router.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    (router, openapi)
}

/// The whole HTTP application: `/v1` (authenticated), `/healthz`, `/readyz`, `/metrics`.
pub fn router(state: AppState) -> Router {
    let (v1, openapi) = v1(&state);
    let openapi = Arc::new(openapi);
    Router::new()
        .merge(v1)
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(metrics::render))
        .fallback(handlers::not_found)
        .layer(axum::Extension(openapi))
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}

/// The OpenAPI document, without a running server (for tests and tooling).
pub fn openapi(state: &AppState) -> utoipa::openapi::OpenApi {
    v1(state).1
}
