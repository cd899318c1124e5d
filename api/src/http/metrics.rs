//! `/metrics` in Prometheus text format, and per-request API metrics.
//!
//! API request counts and latency go through the `metrics` crate into
//! `metrics-exporter-prometheus`'s recorder; the gateway's media counters are read from
//! its lock-free counters at scrape time ([`Control::render_metrics`]), so nothing on the
//! media path ever calls into a metrics registry.
//!
//! [`Control::render_metrics`]: crate::control::Control::render_metrics

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::AppState;

/// Installs the process-wide Prometheus recorder (once; later calls return the same
/// handle) so API metrics are recorded.
pub fn install_prometheus_recorder() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "telepatch_api_request_duration_seconds".into(),
                    ),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    ],
                )
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "cannot install the Prometheus recorder"))
                .ok()
        })
        .clone()
}

/// Middleware: counts every request and records its latency, labelled by route
/// template (not the raw path, so label cardinality stays bounded).
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("telepatch_api_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("telepatch_api_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The `method` label: the standard methods by name, anything a client invents as
/// `other` (every label value is a new time series kept for the process's life).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics`.
pub async fn render(State(state): State<AppState>) -> Response {
    let mut text = String::with_capacity(8 * 1024);
    state.control.render_metrics(&mut text);
    if let Some(handle) = &state.prometheus {
        text.push_str(&handle.render());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
