//! The AudioSocket listener: accepts connections, bounds those that have not identified
//! themselves yet, caps concurrent calls, shuts down gracefully (house style 6.7).
//!
//! Every session is a task on a [`TaskTracker`], so shutdown can wait for all of them:
//! on SIGINT/SIGTERM the gateway asks every call to hang up (`00 00 00`, the dialplan
//! continues), the listener stops accepting, waits for the sessions to finish, and
//! only then are the engine stopped and recordings finalized.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::net::burst::Burst;
use crate::net::session;
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

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnidentifiedLimit {
    /// `audiosocket.max_unidentified`.
    Overall,
    /// `audiosocket.max_unidentified_per_source`.
    PerSource,
}

impl std::fmt::Display for UnidentifiedLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnidentifiedLimit::Overall => "audiosocket.max_unidentified",
            UnidentifiedLimit::PerSource => "audiosocket.max_unidentified_per_source",
        })
    }
}

/// Places for connections that have not sent their ID yet, overall and per address.
#[derive(Clone)]
pub struct Unidentified {
    inner: Arc<UnidentifiedInner>,
}

struct UnidentifiedInner {
    overall: usize,
    per_source: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place among the unidentified; freed when dropped (the ID arrived,
/// or the connection ended).
pub struct UnidentifiedPlace {
    inner: Arc<UnidentifiedInner>,
    source: IpAddr,
}

impl Unidentified {
    /// Room for `overall` unidentified connections, `per_source` from any one address.
    pub fn new(overall: usize, per_source: usize) -> Unidentified {
        Unidentified {
            inner: Arc::new(UnidentifiedInner {
                overall,
                per_source,
                held: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Takes a place for a connection from `source`, if one is free.
    pub fn admit(&self, source: IpAddr) -> Result<UnidentifiedPlace, UnidentifiedLimit> {
        let mut held = self
            .inner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total: usize = held.values().sum();
        if total >= self.inner.overall {
            return Err(UnidentifiedLimit::Overall);
        }
        let mine = held.entry(source).or_insert(0);
        if *mine >= self.inner.per_source {
            return Err(UnidentifiedLimit::PerSource);
        }
        *mine += 1;
        Ok(UnidentifiedPlace {
            inner: Arc::clone(&self.inner),
            source,
        })
    }
}

impl Drop for UnidentifiedPlace {
    fn drop(&mut self) {
        let mut held = self
            .inner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.source);
            }
        }
    }
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
