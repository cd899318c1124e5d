//! The HTTP API's accept loop: bounded connections, bounded waits for a request, and
//! graceful shutdown.
//!
//! - A request's head must arrive complete within `api.header_timeout_ms` of the
//!   connection opening, or of the previous response ending on a kept-alive
//!   connection; otherwise the connection is closed. So a connection that sends nothing,
//!   sends its head slowly, or idles between requests holds a descriptor only that
//!   long. Once a head has arrived nothing times out: a response may stream for as long
//!   as it likes (the event stream).
//! - At most [`HttpLimits::max_connections`] connections are open at once; beyond that
//!   new connections are closed as soon as they are accepted (counted, logged once per
//!   burst).
//! - A failing `accept` (out of descriptors) backs off instead of spinning.
//! - On stop no connection is accepted, idle connections close, requests in flight get
//!   [`SHUTDOWN_GRACE`] to finish (event streams end on the same stop signal).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;
use tracing::{debug, error, info, warn};

use crate::net::burst::Burst;
use crate::service::Gateway;

/// How long requests in flight may take to finish once the server is stopping.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// First and longest pause after a failed `accept`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// The limits the server enforces.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Longest wait for a request's complete head (also the keep-alive idle time).
    pub header_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `stop`, then waits for the connections to end.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    gateway: Arc<Gateway>,
    stop: CancellationToken,
) {
    // With the peer's address: failed token checks are limited per source.
    let mut make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut refused = Burst::default();
    let mut accept_failures = Burst::default();
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF.0;
                if let Some(failures) = accept_failures.succeeded() {
                    info!(failures, "HTTP API accepts connections again");
                }
                accepted
            }
            Err(e) => {
                gateway.count_api_accept_error();
                if accept_failures.failed() {
                    error!(error = %e, "HTTP API cannot accept connections (out of file \
                        descriptors?); retrying, further failures are counted");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            // Closed at once, unread: a flood of connections costs nothing more.
            gateway.count_api_connection_refused();
            if refused.failed() {
                warn!(%peer, limit = limits.max_connections,
                    "HTTP API connection limit reached; closing new connections until \
                     some end");
            }
            drop(stream);
            continue;
        };
        if let Some(refused) = refused.succeeded() {
            info!(
                refused,
                "HTTP API takes connections again after refusing some at its limit"
            );
        }
        connections.spawn(serve_connection(
            stream,
            peer,
            &mut make_service,
            limits.header_timeout,
            stop.clone(),
            place,
        ));
    }
    drop(listener);
    connections.close();
    debug!(
        connections = connections.len(),
        "HTTP API stopped accepting; waiting for open connections"
    );
    connections.wait().await;
}

/// One connection, holding its `place` until it ends.
fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    make_service: &mut IntoMakeServiceWithConnectInfo<Router, SocketAddr>,
    header_timeout: Duration,
    stop: CancellationToken,
    place: tokio::sync::OwnedSemaphorePermit,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    // The make-service is always ready and only attaches the peer's address.
    let service = make_service.call(peer);
    async move {
        let _place = place;
        let service = match service.await {
            Ok(service) => service,
            Err(never) => match never {},
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let mut connection = std::pin::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                match tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut()).await {
                    Ok(result) => result,
                    Err(_) => {
                        debug!(%peer, "HTTP connection still busy at shutdown; closing it");
                        Ok(())
                    }
                }
            }
        };
        if let Err(e) = result {
            // Timeouts and clients that go away are routine.
            debug!(%peer, error = %e, "HTTP connection ended with an error");
        }
    }
}
