//! The control plane's persistent store: routes, node configurations, persistent
//! patches, API tokens, call detail records (CDRs) and counters.
//!
//! [`Store`] is one object-safe async trait (used as `Arc<dyn Store>`), implemented once
//! over sqlx by [`SqlStore`] for two databases: [`SqliteStore`], an embedded file and
//! the zero-set-up default, and [`PgStore`], for several gateway instances sharing one
//! database (the differences live in the `sqlite` and `postgres` dialect modules).
//! [`open_store`] picks one by URL scheme. Each applies its migrations
//! (`migrations/sqlite`, `migrations/postgres`, embedded at compile time) when it
//! connects, so the binary needs no files at run time.
//!
//! Failure of the database must never stop audio. Nothing on the media path calls the
//! store: calls hand their CDR writes (open, refresh, close) to a [`CdrQueue`], whose
//! `push` never blocks;
//! the API maps [`StoreError::Unavailable`] to 503 for what needs the store; pools fail
//! fast (a bounded acquire timeout) instead of hanging.
//!
//! Times are UTC with microsecond precision (what PostgreSQL keeps; SQLite stores
//! integer microseconds): values are truncated to the microsecond when stored, and
//! records returned by the store carry the truncated values.

mod cdr_queue;
mod error;
mod postgres;
mod records;
mod sql;
mod sqlite;
mod token;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::model::{NodeKind, NodeRef, PortRef, Route};

pub use cdr_queue::{CdrQueue, CdrQueueConfig, CdrQueueStats, CdrSink};
pub use error::StoreError;
pub use records::{
    Backend, CDR_PAGE_DEFAULT, CDR_PAGE_MAX, CdrCursor, CdrFilter, CdrPage, CdrRecord, CdrWrite,
    EndedBy, INTERRUPTED_REASON, NewToken, NodeRecord, PatchRecord, RouteRecord, Scope, StoredCdr,
    TokenInfo,
};
pub use sql::SqlStore;

/// The store in an SQLite database file (or in memory).
pub type SqliteStore = SqlStore<sqlx::Sqlite>;
/// The store in a PostgreSQL database.
pub type PgStore = SqlStore<sqlx::Postgres>;

/// Shorthand for results of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Connection settings shared by both backends. The defaults suit one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most connections the pool opens (an in-memory SQLite database always uses one).
    pub max_connections: u32,
    /// How long an operation (and `connect`) waits for a connection before failing with
    /// [`StoreError::Unavailable`]. Short, so a dead database fails requests quickly.
    pub acquire_timeout: Duration,
    /// SQLite: how long a write waits for another writer's lock before failing with
    /// [`StoreError::Unavailable`].
    pub busy_timeout: Duration,
    /// PostgreSQL: the server-side `statement_timeout` of every connection.
    pub statement_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 5,
            acquire_timeout: Duration::from_secs(2),
            busy_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(10),
        }
    }
}

/// The persistent state of the control plane.
///
/// Every method may fail with [`StoreError::Unavailable`] when the database cannot be
/// reached; the API answers 503 then. Lists are returned whole (they are small
/// configuration tables) except CDRs, which are paged.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// Checks that the database answers (for `/readyz`).
    async fn ping(&self) -> StoreResult<()>;

    /// Closes the pool: waits for connections in use to be returned, then closes them.
    /// Later operations fail with [`StoreError::Unavailable`].
    async fn close(&self);

    /// All routes, in the order they are tried: priority descending, then
    /// [`RouteMatch::specificity`](crate::model::RouteMatch::specificity) descending,
    /// then name (byte-wise).
    async fn list_routes(&self) -> StoreResult<Vec<RouteRecord>>;

    /// The route named `name`, or [`StoreError::NotFound`].
    async fn get_route(&self, name: &str) -> StoreResult<RouteRecord>;

    /// Stores a new route after [`Route::validate`]; [`StoreError::Conflict`] if the
    /// name is taken.
    async fn create_route(&self, route: &Route) -> StoreResult<RouteRecord>;

    /// Replaces the route named `name` with `route` (which may carry a new name; the
    /// creation time is kept). [`StoreError::NotFound`] if `name` does not exist,
    /// [`StoreError::Conflict`] if the new name is taken by another route.
    async fn replace_route(&self, name: &str, route: &Route) -> StoreResult<RouteRecord>;

    /// Deletes the route named `name`, or [`StoreError::NotFound`].
    async fn delete_route(&self, name: &str) -> StoreResult<()>;

    /// Persistent node configurations, of one kind or all, ordered by kind then name.
    async fn list_nodes(&self, kind: Option<NodeKind>) -> StoreResult<Vec<NodeRecord>>;

    /// One node's configuration, or [`StoreError::NotFound`].
    async fn get_node(&self, node: &NodeRef) -> StoreResult<NodeRecord>;

    /// Stores a new node configuration. Calls are not persistent nodes
    /// ([`StoreError::Invalid`]); [`StoreError::Conflict`] if the node exists.
    async fn create_node(&self, node: &NodeRef, config: &Value) -> StoreResult<NodeRecord>;

    /// Replaces a node's configuration, or [`StoreError::NotFound`].
    async fn update_node_config(&self, node: &NodeRef, config: &Value) -> StoreResult<NodeRecord>;

    /// Deletes a node configuration, or [`StoreError::NotFound`].
    async fn delete_node(&self, node: &NodeRef) -> StoreResult<()>;

    /// All persistent patches, oldest (lowest id) first.
    async fn list_patches(&self) -> StoreResult<Vec<PatchRecord>>;

    /// One patch, or [`StoreError::NotFound`].
    async fn get_patch(&self, id: i64) -> StoreResult<PatchRecord>;

    /// Stores a patch; [`StoreError::Conflict`] if `source -> sink` already exists,
    /// [`StoreError::Invalid`] if the gain is not finite.
    async fn create_patch(
        &self,
        source: &PortRef,
        sink: &PortRef,
        gain_db: f32,
    ) -> StoreResult<PatchRecord>;

    /// Changes a patch's gain, or [`StoreError::NotFound`].
    async fn update_patch_gain(&self, id: i64, gain_db: f32) -> StoreResult<PatchRecord>;

    /// Deletes a patch, or [`StoreError::NotFound`].
    async fn delete_patch(&self, id: i64) -> StoreResult<()>;

    /// Creates an API token. The clear token is in the result and nowhere else: only
    /// its SHA-256 is stored. Names are 1-64 characters of `[A-Za-z0-9._-]`;
    /// [`StoreError::Conflict`] if the name is taken.
    async fn create_token(&self, name: &str, scope: Scope) -> StoreResult<NewToken>;

    /// The token's details if `token` is a live token, `None` otherwise (including
    /// text that is not shaped like a token, which is rejected without a query).
    /// Records `last_used_at`, writing it at most once a minute per token.
    async fn verify_token(&self, token: &str) -> StoreResult<Option<TokenInfo>>;

    /// All tokens, by name, without secrets.
    async fn list_tokens(&self) -> StoreResult<Vec<TokenInfo>>;

    /// Deletes the token named `name` (it stops verifying at once), or
    /// [`StoreError::NotFound`].
    async fn revoke_token(&self, name: &str) -> StoreResult<()>;

    /// Inserts CDRs in one transaction (multi-row inserts): all or none.
    async fn insert_cdrs(&self, cdrs: &[CdrRecord]) -> StoreResult<()>;

    /// Applies call record changes of gateway `instance` (1-64 characters of
    /// `[A-Za-z0-9._-]`) in order, in one transaction: all or none. Returns how many
    /// open records [`CdrWrite::CloseOrphans`] and [`CdrWrite::CloseStale`] closed.
    async fn write_cdrs(&self, instance: &str, writes: &[CdrWrite]) -> StoreResult<u64>;

    /// One page of CDRs, newest `ended_at` first (ties by id), with the cursor of the
    /// next page. Open records are left out unless [`CdrFilter::include_open`]. Keyset pagination: rows inserted while a client pages never shift
    /// or repeat the rows it has not yet seen.
    async fn query_cdrs(&self, filter: &CdrFilter) -> StoreResult<CdrPage>;

    /// Atomically adds `by` (at least 0) to the counter `name` (a missing counter
    /// starts at 0) and returns the new value. Concurrent callers with `by >= 1` each
    /// get a distinct value.
    async fn next_counter(&self, name: &str, by: i64) -> StoreResult<i64>;

    /// The counter's value, `None` if it was never incremented.
    async fn get_counter(&self, name: &str) -> StoreResult<Option<i64>>;

    /// Reserves `count` (1 to 2^20) AoDNS sequence numbers for the broadcast of
    /// `domain` (its zone root as the gateway writes it) and returns the first: the
    /// numbers `start..start + count`, where `start` is the domain's next free number
    /// or `at_least` (0 to 2^62), whichever is larger. Atomic: concurrent and later
    /// reservations never overlap these, so a broadcast's numbers keep increasing
    /// across calls and restarts (aodns.md §6). `at_least` lets a broadcast that ran
    /// past its reservation while the database was away record how far it got.
    async fn reserve_dns_sequences(
        &self,
        domain: &str,
        at_least: i64,
        count: i64,
    ) -> StoreResult<i64>;

    /// The next number [`Store::reserve_dns_sequences`] would start from (before
    /// `at_least`), `None` for a domain that never reserved any.
    async fn next_dns_sequence(&self, domain: &str) -> StoreResult<Option<i64>>;
}

/// Opens the store named by `url` with default [`StoreOptions`]: `sqlite:` (e.g.
/// `sqlite://telepatch.db`, `sqlite::memory:`) or `postgres:`/`postgresql:`.
/// Migrations are applied before this returns.
pub async fn open_store(url: &str) -> StoreResult<Arc<dyn Store>> {
    open_store_with(url, &StoreOptions::default()).await
}

/// [`open_store`] with explicit options.
pub async fn open_store_with(url: &str, options: &StoreOptions) -> StoreResult<Arc<dyn Store>> {
    // Only the scheme goes into errors: the rest of the URL may hold a password.
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme)
        .unwrap_or_default();
    match scheme {
        "sqlite" => Ok(Arc::new(SqliteStore::connect_with(url, options).await?)),
        "postgres" | "postgresql" => Ok(Arc::new(PgStore::connect_with(url, options).await?)),
        other => Err(StoreError::Invalid {
            what: "database URL",
            reason: format!(
                "unknown scheme {other:?} (expected sqlite:, postgres: or postgresql:)"
            ),
        }),
    }
}

// Checks shared by both backends, so they reject the same inputs the same way.

/// Longest counter and token name.
const MAX_NAME_LEN: usize = 64;

fn check_patch_gain(gain_db: f32) -> StoreResult<()> {
    if gain_db.is_finite() {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            what: "patch",
            reason: format!("gain_db {gain_db} is not a finite number"),
        })
    }
}

fn check_route(route: &Route) -> StoreResult<()> {
    route.validate().map_err(|error| StoreError::Invalid {
        what: "route",
        reason: error.to_string(),
    })
}

fn check_persistent_node(node: &NodeRef) -> StoreResult<()> {
    if node.kind() == NodeKind::Call {
        return Err(StoreError::Invalid {
            what: "node",
            reason: "calls are not persistent nodes; they exist while connected".into(),
        });
    }
    Ok(())
}

fn check_counter(name: &str, by: i64) -> StoreResult<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(StoreError::Invalid {
            what: "counter",
            reason: "the name must be 1 to 64 bytes long".into(),
        });
    }
    if by < 0 {
        return Err(StoreError::Invalid {
            what: "counter",
            reason: format!("increment {by} is negative"),
        });
    }
    Ok(())
}

/// Largest block [`Store::reserve_dns_sequences`] hands out at once.
const MAX_DNS_SEQUENCE_BLOCK: i64 = 1 << 20;
/// Largest `at_least`: far beyond any real broadcast, and far from `i64` overflow.
const MAX_DNS_SEQUENCE: i64 = 1 << 62;

fn check_dns_sequences(domain: &str, at_least: i64, count: i64) -> StoreResult<()> {
    let invalid = |reason: String| StoreError::Invalid {
        what: "DNS sequence reservation",
        reason,
    };
    if domain.is_empty() || domain.len() > 255 {
        return Err(invalid("the domain must be 1 to 255 bytes long".into()));
    }
    if !(0..=MAX_DNS_SEQUENCE).contains(&at_least) {
        return Err(invalid(format!(
            "at_least {at_least} is out of range (0..=2^62)"
        )));
    }
    if !(1..=MAX_DNS_SEQUENCE_BLOCK).contains(&count) {
        return Err(invalid(format!("count {count} is out of range (1..=2^20)")));
    }
    Ok(())
}

/// Checks a gateway instance name: 1 to 64 characters of letters, digits, '.', '-' and
/// '_'.
pub fn check_instance(name: &str) -> StoreResult<()> {
    if is_plain_name(name) {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            what: "instance",
            reason: format!(
                "name {name:?} must be 1 to 64 characters of letters, digits, '.', '-' and '_'"
            ),
        })
    }
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn check_token_name(name: &str) -> StoreResult<()> {
    if is_plain_name(name) {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            what: "token",
            reason: format!(
                "name {name:?} must be 1 to 64 characters of letters, digits, '.', '-' and '_'"
            ),
        })
    }
}

/// Builds a node reference read back from the database.
fn node_from_columns(kind: &str, name: &str) -> StoreResult<NodeRef> {
    format!("{kind}:{name}")
        .parse()
        .map_err(|error: crate::model::ModelError| StoreError::Corrupt {
            what: "node",
            key: format!("{kind}:{name}"),
            reason: error.to_string(),
        })
}

/// Parses a port read back from the database.
fn port_from_column(text: &str, patch_id: i64) -> StoreResult<PortRef> {
    text.parse()
        .map_err(|error: crate::model::ModelError| StoreError::Corrupt {
            what: "patch",
            key: patch_id.to_string(),
            reason: error.to_string(),
        })
}

/// How often, while the database is known to be down, one request may try it again;
/// the others are answered at once.
const OUTAGE_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Remembers that the database could not be reached, so that requests fail at once
/// instead of each waiting out the pool's `acquire_timeout`. One request a second goes
/// through as a probe; the first connection that succeeds ends the outage.
#[derive(Debug, Default)]
pub(crate) struct OutageGate {
    /// When the last attempt to reach the database started, while it is down.
    down: std::sync::Mutex<Option<std::time::Instant>>,
}

impl OutageGate {
    /// Whether this request may try the database now.
    pub(crate) fn admit(&self) -> StoreResult<()> {
        let mut down = self
            .down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *down {
            Some(last_try) if last_try.elapsed() < OUTAGE_PROBE_INTERVAL => {
                Err(StoreError::Unavailable {
                    source: sqlx::Error::PoolTimedOut,
                })
            }
            Some(_) => {
                // This request is the probe; others keep failing fast meanwhile.
                *down = Some(std::time::Instant::now());
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records whether reaching the database worked.
    pub(crate) fn record(&self, reached: bool) {
        let mut down = self
            .down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (reached, *down) {
            (true, _) => *down = None,
            (false, None) => *down = Some(std::time::Instant::now()),
            (false, Some(_)) => {}
        }
    }
}

/// Decodes JSON read back from the database (JSONB on PostgreSQL).
fn json_from_value<T: serde::de::DeserializeOwned>(
    value: Value,
    what: &'static str,
    key: &dyn std::fmt::Display,
) -> StoreResult<T> {
    serde_json::from_value(value).map_err(|error| StoreError::Corrupt {
        what,
        key: key.to_string(),
        reason: error.to_string(),
    })
}

/// Decodes JSON text read back from the database (TEXT on SQLite).
fn json_from_text<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &'static str,
    key: &dyn std::fmt::Display,
) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|error| StoreError::Corrupt {
        what,
        key: key.to_string(),
        reason: error.to_string(),
    })
}

/// Decodes a route's stored `coding` column (NULL: the gateway's default).
fn coding_from_column(
    text: Option<String>,
    route: &dyn std::fmt::Display,
) -> StoreResult<Option<crate::model::AudioCoding>> {
    text.map(|t| {
        t.parse().map_err(|reason| StoreError::Corrupt {
            what: "route",
            key: route.to_string(),
            reason,
        })
    })
    .transpose()
}

/// Encodes a value as JSON for storage.
fn json_raw<T: serde::Serialize + ?Sized>(
    value: &T,
    what: &'static str,
) -> StoreResult<Box<serde_json::value::RawValue>> {
    serde_json::value::to_raw_value(value).map_err(|error| StoreError::Invalid {
        what,
        reason: error.to_string(),
    })
}

/// Puts routes in the order they are tried (see [`Store::list_routes`]). Done here
/// rather than in SQL so the order always follows the model's current
/// [`specificity`](crate::model::RouteMatch::specificity) and sorts names byte-wise
/// on both databases.
fn sort_routes(routes: &mut [RouteRecord]) {
    routes.sort_by(|a, b| {
        b.route
            .priority
            .cmp(&a.route.priority)
            .then(
                b.route
                    .matcher
                    .specificity()
                    .cmp(&a.route.matcher.specificity()),
            )
            .then(a.route.name.cmp(&b.route.name))
    });
}

fn patch_key(source: &PortRef, sink: &PortRef) -> String {
    format!("{source} -> {sink}")
}
