//! The records the store reads and writes, and the CDR query types.
//!
//! Times are `chrono::DateTime<Utc>`, which serialize as RFC 3339 in JSON.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::StoreError;
use crate::model::{NodeRef, PortRef, Route};

/// Which database a store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend's name ("sqlite", "postgres").
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteRecord {
    /// The route as it was given.
    #[serde(flatten)]
    pub route: Route,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last replaced (equal to `created_at` until then).
    pub updated_at: DateTime<Utc>,
}

/// A persistent node's configuration (players, recorders, conferences; later AES67
/// flows, jam rooms, DNS broadcasts). The configuration's shape belongs to the node
/// kind; the store keeps it as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRecord {
    /// The node.
    pub node: NodeRef,
    /// Its configuration.
    pub config: Value,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its configuration was last changed.
    pub updated_at: DateTime<Utc>,
}

/// A persistent patch: `source` (an output port) feeds `sink` (an input port).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatchRecord {
    /// The patch's id (never reused).
    pub id: i64,
    /// The output port.
    pub source: PortRef,
    /// The input port.
    pub sink: PortRef,
    /// Gain in dB.
    pub gain_db: f32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read-only requests.
    Read,
    /// Everything, including creating tokens.
    Admin,
}

impl Scope {
    /// The scope's name ("read", "admin").
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// Whether a token with this scope may do what needs `required`.
    pub fn allows(self, required: Scope) -> bool {
        self >= required
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = StoreError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            other => Err(StoreError::Invalid {
                what: "scope",
                reason: format!("{other:?} is not read or admin"),
            }),
        }
    }
}

/// An API token's details (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// The token's id.
    pub id: i64,
    /// Its unique name.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used, to the minute (see [`Store::verify_token`](super::Store::verify_token)).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A token just created: the only time its clear text exists outside the client.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct NewToken {
    /// The token's details.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The clear token: `tp_` then 43 characters of URL-safe base64.
    pub token: String,
}

impl fmt::Debug for NewToken {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("info", &self.info)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Who ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndedBy {
    /// The caller hung up (AudioSocket hangup, or Asterisk closed the connection).
    Caller,
    /// telepatch ended it (API, shutdown, timeout).
    Gateway,
    /// An error ended it (protocol or I/O error).
    Error,
    /// The gateway stopped unexpectedly (killed, crashed, lost power) while the call was
    /// live: the record was closed afterwards, by the same instance when it started
    /// again or by another one that found it stale. Its `ended_at`, duration and
    /// counters are the last ones the gateway wrote while the call was live.
    Interrupted,
}

impl EndedBy {
    /// The value's name ("caller", "gateway", "error", "interrupted").
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::Caller => "caller",
            EndedBy::Gateway => "gateway",
            EndedBy::Error => "error",
            EndedBy::Interrupted => "interrupted",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<EndedBy> {
        match text {
            "caller" => Some(EndedBy::Caller),
            "gateway" => Some(EndedBy::Gateway),
            "error" => Some(EndedBy::Error),
            "interrupted" => Some(EndedBy::Interrupted),
            _ => None,
        }
    }
}

/// The `end_reason` of [`EndedBy::Interrupted`] records.
pub const INTERRUPTED_REASON: &str = "gateway stopped unexpectedly";

/// A call detail record: one per call, opened when the call is admitted and completed
/// when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CdrRecord {
    /// The call's AudioSocket UUID.
    pub uuid: Uuid,
    /// When the call connected.
    pub started_at: DateTime<Utc>,
    /// When it ended (for an open record: when it was last refreshed).
    pub ended_at: DateTime<Utc>,
    /// How long it lasted, measured on the monotonic clock (for an open record: so far).
    pub duration_ms: u64,
    /// The caller's sample rate in Hz (8000 for slin).
    pub caller_rate_hz: u32,
    /// Who ended the call.
    pub ended_by: EndedBy,
    /// Why, in words.
    pub end_reason: String,
    /// Audio frames received from the caller.
    pub frames_in: u64,
    /// Audio frames sent to the caller.
    pub frames_out: u64,
    /// Gaps in the caller's audio (uplink ring starved).
    pub uplink_gaps: u64,
    /// Times the downlink had nothing to send (silence was sent).
    pub downlink_underruns: u64,
    /// Largest inter-arrival jitter seen, in ms.
    pub max_jitter_ms: f64,
    /// The route applied, if any.
    pub route: Option<String>,
    /// The patches the call had, as text (`"call:<uuid>.voice -> recorder:x.in"`).
    pub patches: Vec<String>,
    /// Asterisk's address for the AudioSocket connection.
    #[schema(value_type = Option<String>)]
    pub peer: Option<SocketAddr>,
}

/// A CDR as stored, with its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredCdr {
    /// The row's id.
    pub id: i64,
    /// The gateway instance (`gateway.instance`) that wrote it; empty for records
    /// written before instances were recorded.
    pub instance: String,
    /// Whether the call is still live as far as the database knows: its `ended_at`,
    /// duration and counters are those of the last refresh, and `ended_by` /
    /// `end_reason` say what the record will keep if the gateway stops unexpectedly.
    pub open: bool,
    /// The record.
    #[serde(flatten)]
    pub cdr: CdrRecord,
}

/// One change to the call records, as the gateway sends them through the
/// [`CdrQueue`](super::CdrQueue). A store applies a batch of them in order, in one
/// transaction, for one gateway instance. A call's record is found by its instance,
/// UUID and `started_at`.
#[derive(Debug, Clone, PartialEq)]
pub enum CdrWrite {
    /// A call was admitted: insert its open record (`ended_by` and `end_reason` are
    /// stored as [`EndedBy::Interrupted`] / [`INTERRUPTED_REASON`], whatever the record
    /// says, since that is what it will keep if the gateway dies).
    Open(CdrRecord),
    /// Live calls' progress: updates their records' `ended_at`, duration, counters and
    /// patches, in one statement, if they are still open (a finished or closed record
    /// is never reopened).
    Refresh(Vec<CdrRecord>),
    /// A call ended: completes its record, open or not (a record another instance
    /// closed as stale gets the real end); inserts one if there is none.
    Close(CdrRecord),
    /// Start-up: closes every open record of this instance, left by a gateway that
    /// stopped unexpectedly, as [`EndedBy::Interrupted`].
    CloseOrphans,
    /// Closes open records of any instance not refreshed since `before` (their gateway
    /// stopped and never came back), as [`EndedBy::Interrupted`].
    CloseStale {
        /// Records whose `ended_at` (last refresh) is before this are closed.
        before: DateTime<Utc>,
    },
}

impl CdrWrite {
    /// The write's kind, for logs ("open", "refresh", "close", "close_orphans",
    /// "close_stale").
    pub fn kind(&self) -> &'static str {
        match self {
            CdrWrite::Open(_) => "open",
            CdrWrite::Refresh(_) => "refresh",
            CdrWrite::Close(_) => "close",
            CdrWrite::CloseOrphans => "close_orphans",
            CdrWrite::CloseStale { .. } => "close_stale",
        }
    }

    /// The call it is about, for a write about one call.
    pub fn call(&self) -> Option<Uuid> {
        match self {
            CdrWrite::Open(cdr) | CdrWrite::Close(cdr) => Some(cdr.uuid),
            _ => None,
        }
    }
}

/// Page size when a query does not give one.
pub const CDR_PAGE_DEFAULT: u32 = 100;
/// Largest page size; larger limits are clamped to it.
pub const CDR_PAGE_MAX: u32 = 1000;

/// Which CDRs to return. All conditions are combined.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CdrFilter {
    /// Only this call.
    pub uuid: Option<Uuid>,
    /// Calls that ended at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Calls that ended before this time.
    pub to: Option<DateTime<Utc>>,
    /// Page size: default [`CDR_PAGE_DEFAULT`], at most [`CDR_PAGE_MAX`], at least 1.
    pub limit: Option<u32>,
    /// Continue after this position (from [`CdrPage::next_cursor`]).
    pub cursor: Option<CdrCursor>,
    /// Also return open records (calls still live); by default only finished calls.
    pub include_open: bool,
}

impl CdrFilter {
    /// The page size to use.
    pub fn page_size(&self) -> u32 {
        self.limit
            .unwrap_or(CDR_PAGE_DEFAULT)
            .clamp(1, CDR_PAGE_MAX)
    }
}

/// A position in the CDR order: the last row of a page. Its text form is opaque to
/// clients (today `<ended_at µs>.<id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CdrCursor {
    pub(crate) ended_at_us: i64,
    pub(crate) id: i64,
}

impl CdrCursor {
    pub(crate) fn after(cdr: &StoredCdr) -> CdrCursor {
        CdrCursor {
            ended_at_us: cdr.cdr.ended_at.timestamp_micros(),
            id: cdr.id,
        }
    }
}

impl fmt::Display for CdrCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.ended_at_us, self.id)
    }
}

impl FromStr for CdrCursor {
    type Err = StoreError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || StoreError::Invalid {
            what: "cursor",
            reason: format!("{text:?} is not a CDR cursor"),
        };
        let (ended_at, id) = text.split_once('.').ok_or_else(invalid)?;
        Ok(CdrCursor {
            ended_at_us: ended_at.parse().map_err(|_| invalid())?,
            id: id.parse().map_err(|_| invalid())?,
        })
    }
}

impl Serialize for CdrCursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CdrCursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One page of CDRs.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CdrPage {
    /// The records, newest first.
    pub items: Vec<StoredCdr>,
    /// Where the next page starts (pass it as `cursor`); `null` on the last page.
    #[schema(value_type = Option<String>)]
    pub next_cursor: Option<CdrCursor>,
}

impl CdrPage {
    /// Builds a page from up to `limit + 1` rows: the extra row only tells that there
    /// is a next page.
    pub(crate) fn from_rows(mut items: Vec<StoredCdr>, limit: u32) -> CdrPage {
        let limit = limit as usize;
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(CdrCursor::after)
        } else {
            None
        };
        CdrPage { items, next_cursor }
    }
}

/// The current time, truncated to what the databases keep.
pub(crate) fn now() -> DateTime<Utc> {
    from_micros(Utc::now().timestamp_micros()).unwrap_or_else(|_| Utc::now())
}

/// Reads a time stored as microseconds since the Unix epoch.
pub(crate) fn from_micros(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| StoreError::Corrupt {
        what: "time",
        key: micros.to_string(),
        reason: "out of range".into(),
    })
}

/// Converts a counter to the signed 64-bit integer both databases store.
pub(crate) fn to_i64(value: u64, field: &'static str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid {
        what: "CDR",
        reason: format!("{field} {value} is too large"),
    })
}

/// Converts a stored integer back to an unsigned counter.
pub(crate) fn to_u64(value: i64, field: &'static str, id: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        what: "CDR",
        key: id.to_string(),
        reason: format!("{field} {value} is negative"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = CdrCursor {
            ended_at_us: 1_700_000_000_123_456,
            id: 42,
        };
        assert_eq!(cursor.to_string().parse::<CdrCursor>().unwrap(), cursor);
        let json = serde_json::to_string(&cursor).unwrap();
        assert_eq!(json, "\"1700000000123456.42\"");
        for bad in ["", "12", "a.b", "1.", ".1", "1.2.3"] {
            assert!(bad.parse::<CdrCursor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn page_size_is_clamped() {
        let mut filter = CdrFilter::default();
        assert_eq!(filter.page_size(), CDR_PAGE_DEFAULT);
        filter.limit = Some(5000);
        assert_eq!(filter.page_size(), CDR_PAGE_MAX);
        filter.limit = Some(0);
        assert_eq!(filter.page_size(), 1);
    }

    #[test]
    fn admin_allows_read_but_not_the_reverse() {
        assert!(Scope::Admin.allows(Scope::Read));
        assert!(Scope::Admin.allows(Scope::Admin));
        assert!(Scope::Read.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Admin));
    }

    #[test]
    fn new_token_debug_hides_the_secret() {
        let token = NewToken {
            info: TokenInfo {
                id: 1,
                name: "ops".into(),
                scope: Scope::Read,
                created_at: now(),
                last_used_at: None,
            },
            token: "tp_secret".into(),
        };
        assert!(!format!("{token:?}").contains("secret"));
    }
}
