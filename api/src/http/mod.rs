//! The REST API: axum handlers under `/v1`, documented with utoipa.
//!
//! [`router`] builds the axum `Router` and the OpenAPI document from the same handler
//! list (utoipa-axum), so a route cannot exist without being documented. Every `/v1`
//! route sits behind [`auth::require_token`]; `/healthz`, `/readyz` and `/metrics` do not.

mod aes67;
pub mod auth;
mod clock;
pub mod error;
mod handlers;
mod jam;
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
    /// Failed token checks per source address.
    pub failed_attempts: Arc<auth::FailedAttempts>,
    /// Renders the `metrics` crate's registry (API request counters and latency), if a
    /// Prometheus recorder was installed.
    pub prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Cancelled when the server shuts down: event streams end then.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl AppState {
    /// Limits failed token checks to `max_failures` per address and 10 s (0: no limit).
    pub fn with_failed_token_limit(mut self, max_failures: u32) -> AppState {
        self.failed_attempts = Arc::new(auth::FailedAttempts::new(max_failures));
        self
    }

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
            failed_attempts: Arc::new(auth::FailedAttempts::default()),
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
    // Used only by path and query parameters, which utoipa does not collect; and the
    // webhook body, which no /v1 operation returns (it is described under `webhooks`).
    components(schemas(
        handlers::NodeReference,
        aes67::FlowReference,
        crate::webhook::WebhookEvent,
        crate::webhook::WebhookEventType
    )),
    tags(
        (name = "calls", description = "Live calls"),
        (name = "nodes", description = "Patchbay nodes and their ports"),
        (name = "patches", description = "Connections between ports"),
        (name = "routes", description = "What happens when a call connects"),
        (name = "cdrs", description = "Call detail records"),
        (name = "events", description = "Live event stream"),
        (name = "tokens", description = "API tokens"),
        (name = "aes67", description = "AES67 flows' SDP and the sessions heard on SAP"),
        (name = "meta", description = "Health, readiness, the API document"),
        (name = "clock", description = "The PTP media clock of AES67 flows"),
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
    let (router, mut openapi) = v1_routes().split_for_parts();
    finish_document(&mut openapi);
    let router = router.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    (router, openapi)
}

/// The `/v1` handlers, each with its documentation (no middleware yet).
fn v1_routes() -> OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(handlers::list_calls))
        .routes(routes!(handlers::get_call, handlers::hang_up_call))
        .routes(routes!(handlers::list_nodes, handlers::create_node))
        .routes(routes!(
            handlers::get_node,
            handlers::replace_node,
            handlers::delete_node
        ))
        .routes(routes!(jam::get_jam_mix))
        .routes(routes!(jam::set_jam_mix, jam::reset_jam_mix))
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
        .routes(routes!(aes67::flow_sdp))
        .routes(routes!(aes67::sap_sessions))
        .routes(routes!(clock::get_clock))
}

/// What the handlers' annotations cannot say by themselves.
fn finish_document(openapi: &mut utoipa::openapi::OpenApi) {
    document_common_responses(openapi);
    deny_unknown_variant_fields(openapi);
    document_webhooks(openapi);
}

/// Describes the event webhook (`[webhooks] events_url`) under the document's
/// `webhooks`: the POST the gateway sends, its headers and the body
/// [`WebhookEvent`](crate::webhook::WebhookEvent).
fn document_webhooks(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{
        HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
    };
    use utoipa::openapi::request_body::RequestBodyBuilder;
    use utoipa::openapi::{Content, ObjectBuilder, Ref, Required, Response, Type};

    let header = |name: &str, description: &str| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Header)
            .required(Required::True)
            .description(Some(description))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String).build()))
            .build()
    };
    let operation = OperationBuilder::new()
        .operation_id(Some("callEvent"))
        .summary(Some("A call event, POSTed to [webhooks] events_url"))
        .description(Some(
            "One request per event. A call's events are delivered one at a time, in `seq` order; \
             any status other than 2xx, or no answer within `timeout_ms`, is retried with backoff. \
             Verify `Telepatch-Signature` before trusting the body (docs/API.md, \"Event webhooks\").",
        ))
        .parameter(header(
            crate::webhook::SIGNATURE_HEADER,
            "`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, \"<t>.<raw body>\")>`",
        ))
        .parameter(header(
            crate::webhook::EVENT_ID_HEADER,
            "The event's id, the same on every attempt: the idempotency key",
        ))
        .request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("WebhookEvent"))),
                )
                .build(),
        ))
        .response(
            "2XX",
            Response::new("Received: the event is not sent again"),
        )
        .response(
            "default",
            Response::new("Not received: the event is sent again later"),
        );
    let webhooks = openapi.webhooks.get_or_insert_with(Default::default);
    webhooks.paths.insert(
        "callEvent".into(),
        PathItem::new(HttpMethod::Post, operation),
    );
}

/// Adds the responses that do not come from a handler but from the layers and extractors
/// every `/v1` operation shares, so the document lists every status a client can get:
/// - 401 and 503 from [`auth::require_token`] (no or an unknown token; the database is
///   down and the token was not seen recently), 403 for changes (they need `admin`);
/// - 400 from a path parameter that does not parse ([`error::PathParams`]);
/// - 400, 415 and 422 from a JSON body: malformed, not sent as `application/json`, or
///   the wrong shape ([`error::JsonBody`]).
///
/// A status an operation already documents keeps its handler's description.
fn document_common_responses(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{Content, Ref, RefOr, Response};

    let problem = |description: &str| -> RefOr<Response> {
        RefOr::T(
            utoipa::openapi::ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("Problem"))),
                )
                .build(),
        )
    };
    for item in openapi.paths.paths.values_mut() {
        let methods = [
            (&mut item.get, false),
            (&mut item.head, false),
            (&mut item.put, true),
            (&mut item.post, true),
            (&mut item.delete, true),
            (&mut item.patch, true),
            (&mut item.options, true),
            (&mut item.trace, true),
        ];
        for (operation, is_change) in methods {
            let Some(operation) = operation.as_mut() else {
                continue;
            };
            let has_path_parameter =
                operation.parameters.iter().flatten().any(
                    |p| matches!(p, RefOr::T(p) if matches!(p.parameter_in, ParameterIn::Path)),
                );
            let has_body = operation.request_body.is_some();
            let mut common = vec![
                ("401", "No token, or an unknown or revoked one"),
                (
                    "503",
                    "The database is unavailable (and the token was not seen recently)",
                ),
            ];
            if is_change {
                common.push(("403", "The token's scope does not allow changes"));
            }
            if has_path_parameter || has_body {
                common.push(("400", "Malformed request"));
            }
            if has_body {
                common.push(("415", "The body is not sent as application/json"));
                common.push(("422", "The body does not have the documented shape"));
            }
            for (status, description) in common {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem(description));
            }
        }
    }
}

/// Enums whose variants are JSON objects and that serde parses with
/// `deny_unknown_fields`. utoipa documents the container attribute for structs
/// (`additionalProperties: false`) but not for the variants of an enum, so the document
/// would accept fields the server refuses (422). A test checks each one still denies.
const ENUMS_DENYING_UNKNOWN_FIELDS: [&str; 3] = ["NodeConfig", "RouteMatch", "RouteAction"];

/// Marks the object variants of [`ENUMS_DENYING_UNKNOWN_FIELDS`] as closed
/// (`additionalProperties: false`), as serde parses them.
fn deny_unknown_variant_fields(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AdditionalProperties, Schema};

    let Some(components) = openapi.components.as_mut() else {
        return;
    };
    for name in ENUMS_DENYING_UNKNOWN_FIELDS {
        let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut(name) else {
            continue;
        };
        for variant in &mut one_of.items {
            if let RefOr::T(Schema::Object(object)) = variant
                && !object.properties.is_empty()
            {
                object.additional_properties =
                    Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::control::NodeConfig;
    use crate::model::{RouteAction, RouteMatch};

    fn document() -> Value {
        let (_, mut openapi) = v1_routes().split_for_parts();
        finish_document(&mut openapi);
        serde_json::to_value(openapi).unwrap()
    }

    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut found = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                found.push((method.clone(), path.clone(), operation));
            }
        }
        found
    }

    fn collect_refs<'a>(value: &'a Value, refs: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner) {
                        ("$ref", Value::String(target)) => refs.push(target),
                        _ => collect_refs(inner, refs),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_in_the_document_resolves() {
        let doc = document();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(refs.contains(&"#/components/schemas/NodeReference"));
        for target in refs {
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {target}"));
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{target} is not in components.schemas"
            );
        }
    }

    #[test]
    fn every_operation_documents_the_statuses_of_its_middleware_and_extractors() {
        let doc = document();
        let operations = operations(&doc);
        assert_eq!(operations.len(), 30, "every /v1 operation");
        for (method, path, operation) in operations {
            let responses = operation["responses"].as_object().unwrap();
            let mut expected = vec!["401", "503"];
            if method != "get" {
                expected.push("403");
            }
            if path.contains('{') || operation.get("requestBody").is_some() {
                expected.push("400");
            }
            if operation.get("requestBody").is_some() {
                expected.extend(["415", "422"]);
            }
            for status in expected {
                let response = responses
                    .get(status)
                    .unwrap_or_else(|| panic!("{method} {path} does not document {status}"));
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
            }
        }
        // A handler's own description is kept.
        assert_eq!(
            doc["paths"]["/v1/calls/{uuid}"]["get"]["responses"]["404"]["content"]["application/json"]
                ["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
    }

    #[test]
    fn the_webhook_body_is_documented_under_webhooks() {
        let doc = document();
        let post = &doc["webhooks"]["callEvent"]["post"];
        assert_eq!(
            post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/WebhookEvent"
        );
        let headers: Vec<&str> = post["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(headers, ["Telepatch-Signature", "Telepatch-Event-Id"]);
        let schemas = &doc["components"]["schemas"];
        for name in [
            "WebhookEvent",
            "WebhookPayload",
            "CdrRecord",
            "WebhookEventType",
        ] {
            assert!(schemas.get(name).is_some(), "{name} in components.schemas");
        }
    }

    #[test]
    fn enum_variants_documented_as_closed_are_closed_for_serde() {
        // The document says so...
        let doc = document();
        for name in ENUMS_DENYING_UNKNOWN_FIELDS {
            let variants = doc["components"]["schemas"][name]["oneOf"]
                .as_array()
                .unwrap();
            let objects: Vec<_> = variants.iter().filter(|v| v["type"] == "object").collect();
            assert!(!objects.is_empty(), "{name}");
            for variant in objects {
                assert_eq!(variant["additionalProperties"], false, "{name}: {variant}");
            }
        }
        // ...because serde refuses an extra field in a variant that is valid without it.
        let closed = [
            serde_json::from_value::<NodeConfig>(
                serde_json::json!({"kind": "conference", "members": 4, "extra": 1}),
            )
            .is_err(),
            serde_json::from_value::<RouteMatch>(
                serde_json::json!({"uuid_prefix": "c0de", "extra": 1}),
            )
            .is_err(),
            serde_json::from_value::<RouteAction>(
                serde_json::json!({"action": "conference", "name": "desk", "extra": 1}),
            )
            .is_err(),
        ];
        assert_eq!(closed, [true; 3]);
        assert!(
            serde_json::from_value::<NodeConfig>(
                serde_json::json!({"kind": "conference", "members": 4})
            )
            .is_ok()
        );
        assert!(
            serde_json::from_value::<RouteAction>(
                serde_json::json!({"action": "conference", "name": "desk"})
            )
            .is_ok()
        );
    }
}
