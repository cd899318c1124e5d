//! The AudioSocket listener: accepts connections, bounds those that have not identified
//! themselves yet, caps concurrent calls, shuts down gracefully (house style 6.7).
//!
//! Every session is a task on a [`TaskTracker`], so shutdown can wait for all of them:
//! on SIGINT/SIGTERM the gateway asks every call to hang up (`00 00 00`, the dialplan
//! continues), the listener stops accepting, waits for the sessions to finish, and
//! only then are the engine stopped and recordings finalized.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::net::burst::Burst;
use crate::net::session;
use crate::net::unidentified::Unidentified;
use crate::service::Gateway;

/// Longest pause after repeated accept errors (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts connections until shutdown, then waits for every session to end.
///
/// A connection is only a call once its ID arrives: until then it holds one of
/// `max_unidentified` places (at most `max_unidentified_per_source` from one address),
/// which the ID deadline frees within `id_timeout_ms`. The call slot (`max_calls`) is
/// taken with the ID, so connections that never identify themselves cannot lock real
/// calls out.
pub async fn serve(gateway: Arc<Gateway>, listener: TcpListener) {
    let config = &gateway.config().audiosocket;
    let max_calls = config.max_calls;
    let slots = Arc::new(Semaphore::new(max_calls));
    let unidentified =
        Unidentified::new(config.max_unidentified, config.max_unidentified_per_source);
    let sessions = TaskTracker::new();
    let shutdown = gateway.shutdown_token();
    let mut backoff = Duration::from_millis(10);
    match listener.local_addr() {
        Ok(addr) => info!(%addr, max_calls, "AudioSocket listener ready"),
        Err(e) => warn!(error = %e, "AudioSocket listener ready (address unknown)"),
    }
    let mut refused_logged = RateLimitedLog::default();
    let mut accept_failures = Burst::default();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                if let Some(failures) = accept_failures.succeeded() {
                    info!(failures, "AudioSocket accepts connections again");
                }
                if !config.allow.allows(peer.ip()) {
                    gateway.count_source_refused();
                    if refused_logged.allow() {
                        warn!(%peer, suppressed = refused_logged.take_suppressed(),
                            "AudioSocket connection from outside audiosocket.allow; closing it");
                    }
                    drop(stream);
                    continue;
                }
                match unidentified.admit(peer.ip()) {
                    Ok(place) => {
                        sessions.spawn(session::run(
                            Arc::clone(&gateway),
                            stream,
                            peer,
                            place,
                            Arc::clone(&slots),
                        ));
                    }
                    Err(full) => {
                        // Closed at once, without reading: under a flood of connections
                        // that never identify themselves, spend nothing on them.
                        gateway.count_unidentified_refused();
                        if refused_logged.allow() {
                            warn!(%peer, limit = %full, suppressed = refused_logged.take_suppressed(),
                                "too many connections waiting to send their ID; closing this one");
                        }
                        drop(stream);
                    }
                }
            }
            Err(e) => {
                // Transient (EMFILE, ECONNABORTED...): back off instead of spinning, say
                // so once, count every one.
                gateway.count_audiosocket_accept_error();
                if accept_failures.failed() {
                    error!(error = %e, "AudioSocket accept failed (out of file descriptors?); \
                        retrying with a backoff, further failures are counted");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
    drop(listener);
    sessions.close();
    info!(
        sessions = sessions.len(),
        "listener closed; waiting for calls to hang up"
    );
    sessions.wait().await;
}

/// At most one line per second about refused connections, with a count of the rest.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn allow(&mut self) -> bool {
        let now = std::time::Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => {
                self.suppressed += 1;
                false
            }
            _ => {
                self.last = Some(now);
                true
            }
        }
    }

    fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}
