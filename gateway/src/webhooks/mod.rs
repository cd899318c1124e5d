//! Event webhooks: call events POSTed to `[webhooks] events_url`, signed, in order per
//! call, retried with backoff, with an idempotency key (`docs/API.md`, "Event webhooks").
//!
//! - [`queue`]: the sans-IO core (order per call, backoff, limit, expiry, counts);
//! - [`signature`]: the `Telepatch-Signature` header;
//! - [`config`]: the `[webhooks]` section;
//! - [`driver`]: the one task that feeds the core from the gateway's event broadcast
//!   and makes the HTTP requests.
//!
//! The media path and the API never wait for an endpoint: they publish events on the
//! broadcast channel and go on; the driver reads it at its own pace (a driver that falls
//! behind loses the oldest events and counts them), and the queue it keeps is bounded.

pub mod config;
pub mod driver;
pub mod queue;
pub mod signature;

use std::sync::atomic::{AtomicU64, Ordering};

pub use config::WebhooksConfig;
pub use driver::{WebhookDriver, WebhookError};

/// Counters of the webhook driver, read by `/metrics` (lock-free: the driver stores,
/// the scrape loads).
#[derive(Debug, Default)]
pub struct WebhookStats {
    delivered: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
    expired: AtomicU64,
    lagged: AtomicU64,
    depth: AtomicU64,
}

/// A copy of [`WebhookStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookSnapshot {
    /// Events the endpoint accepted (2xx).
    pub delivered: u64,
    /// Failed attempts that were scheduled again.
    pub retried: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Events given up: too old (`max_age_s`) or out of attempts (`max_attempts`).
    pub expired: u64,
    /// Events the driver missed because it fell behind the event broadcast.
    pub lagged: u64,
    /// Events held now.
    pub depth: u64,
}

impl WebhookStats {
    /// The counters now.
    pub fn snapshot(&self) -> WebhookSnapshot {
        WebhookSnapshot {
            delivered: self.delivered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            lagged: self.lagged.load(Ordering::Relaxed),
            depth: self.depth.load(Ordering::Relaxed),
        }
    }

    fn store(&self, snapshot: WebhookSnapshot) {
        self.delivered.store(snapshot.delivered, Ordering::Relaxed);
        self.retried.store(snapshot.retried, Ordering::Relaxed);
        self.dropped.store(snapshot.dropped, Ordering::Relaxed);
        self.expired.store(snapshot.expired, Ordering::Relaxed);
        self.lagged.store(snapshot.lagged, Ordering::Relaxed);
        self.depth.store(snapshot.depth, Ordering::Relaxed);
    }
}
