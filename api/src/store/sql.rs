//! The store, written once over sqlx for every database it runs on.
//!
//! [`SqlStore`] holds the statements, the row decoding, the CDR batching and the outage
//! handling; a [`Dialect`] (implemented by each sqlx database type, in `sqlite.rs` and
//! `postgres.rs`) supplies only what differs between the databases: how values of the
//! store's types are bound and read back (times, UUIDs, booleans, JSON), a few SQL
//! words, the statement that refreshes open CDRs in a batch, which error codes mean
//! "unavailable", and how the pool is opened and migrated.
//!
//! Every value reaches the database as a bound parameter; the only text spliced into
//! statements is the dialect's constant SQL words.

use std::fmt::Display;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Database, Decode, Pool, QueryBuilder, Row, Type};
use uuid::Uuid;

use super::error::classify;
use super::records::{INTERRUPTED_REASON, now, to_i64, to_u64};
use super::{
    Backend, CdrFilter, CdrPage, CdrRecord, CdrWrite, EndedBy, NewToken, NodeRecord, OutageGate,
    PatchRecord, RouteRecord, Scope, Store, StoreError, StoreOptions, StoreResult, StoredCdr,
    TokenInfo, check_counter, check_dns_sequences, check_instance, check_patch_gain,
    check_persistent_node, check_route, check_token_name, coding_from_column, json_raw,
    node_from_columns, patch_key, port_from_column, sort_routes, token,
};
use crate::model::{AudioCoding, NodeKind, NodeRef, PortRef, Route};

/// The CDR columns, in insert order.
pub(crate) const CDR_COLUMNS: &str = "uuid, started_at, ended_at, duration_ms, caller_rate_hz, ended_by, end_reason, \
     frames_in, frames_out, uplink_gaps, downlink_underruns, max_jitter_ms, route, patches, peer";
/// Rows per INSERT statement: 15 parameters each stays far below the bound-parameter
/// limits (SQLite 32766, PostgreSQL 65535).
pub(crate) const CDR_ROWS_PER_STATEMENT: usize = 500;

/// A statement of the database `DB`, with its arguments.
pub(crate) type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as Database>::Arguments>;

/// A value bound to a statement, in the store's terms; each [`Dialect`] encodes it in
/// its database's types.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    /// A 64-bit integer.
    I64(i64),
    /// A 32-bit integer.
    I32(i32),
    /// An unsigned count in an `INTEGER` column (at most [`Dialect::INTEGER_MAX`]).
    U32(u32),
    /// A single-precision number.
    F32(f32),
    /// A double-precision number.
    F64(f64),
    /// Text, or NULL.
    Text(Option<&'a str>),
    /// A point in time (microsecond precision).
    Time(DateTime<Utc>),
    /// A UUID.
    Uuid(Uuid),
    /// A flag.
    Bool(bool),
    /// A JSON document.
    Json(&'a RawValue),
}

macro_rules! param_from {
    ($($from:ty => $variant:ident),* $(,)?) => {
        $(impl From<$from> for Param<'_> {
            fn from(value: $from) -> Self {
                Param::$variant(value)
            }
        })*
    };
}

param_from!(i64 => I64, i32 => I32, f32 => F32, f64 => F64, DateTime<Utc> => Time, Uuid => Uuid, bool => Bool);

impl<'a> From<&'a str> for Param<'a> {
    fn from(text: &'a str) -> Self {
        Param::Text(Some(text))
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(text: &'a String) -> Self {
        Param::Text(Some(text))
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(text: Option<&'a str>) -> Self {
        Param::Text(text)
    }
}

impl<'a> From<&'a RawValue> for Param<'a> {
    fn from(json: &'a RawValue) -> Self {
        Param::Json(json)
    }
}

/// A type both databases decode the same way.
pub(crate) trait Plain:
    for<'r> Decode<'r, sqlx::Sqlite>
    + Type<sqlx::Sqlite>
    + for<'r> Decode<'r, sqlx::Postgres>
    + Type<sqlx::Postgres>
{
}

impl<T> Plain for T where
    T: for<'r> Decode<'r, sqlx::Sqlite>
        + Type<sqlx::Sqlite>
        + for<'r> Decode<'r, sqlx::Postgres>
        + Type<sqlx::Postgres>
{
}

/// What differs between the databases [`SqlStore`] runs on. Implemented by the sqlx
/// database types; the executor and decoding methods are here (rather than as bounds
/// on `Self`) because generic code cannot name the drivers' executor implementations.
pub(crate) trait Dialect: Database {
    /// Which database this is.
    const BACKEND: Backend;
    /// The SQL literals of a stored flag (the `is_open` column), as written in the
    /// partial index over open records.
    const TRUE: &'static str;
    /// See [`Dialect::TRUE`].
    const FALSE: &'static str;
    /// The SQL function returning the larger of two values.
    const GREATEST: &'static str;
    /// The largest unsigned value an `INTEGER` column holds.
    const INTEGER_MAX: u32;

    /// Opens the pool and applies the migrations.
    fn connect<'a>(
        url: &'a str,
        options: &'a StoreOptions,
    ) -> BoxFuture<'a, StoreResult<Pool<Self>>>;

    /// Whether a SQLSTATE / result code means the database cannot serve us now.
    fn unavailable_code(code: &str) -> bool;

    /// Binds `value` to the next parameter of `query`.
    fn bind<'q>(query: Query<'q, Self>, value: Param<'_>) -> Query<'q, Self>;

    /// Appends a placeholder for `value` to `builder` and binds it.
    fn push_bind(builder: &mut QueryBuilder<Self>, value: Param<'_>);

    /// A CDR cursor's `ended_at` as bound, `None` if this database cannot hold it.
    fn cursor_time(micros: i64) -> Option<Param<'static>>;

    /// Runs a statement; returns how many rows it changed.
    fn execute<'e, 'q: 'e>(
        conn: &'e mut Self::Connection,
        query: Query<'q, Self>,
    ) -> BoxFuture<'e, sqlx::Result<u64>>;

    /// Runs a query; returns all its rows.
    fn fetch_all<'e, 'q: 'e>(
        conn: &'e mut Self::Connection,
        query: Query<'q, Self>,
    ) -> BoxFuture<'e, sqlx::Result<Vec<Self::Row>>>;

    /// Runs a query; returns its first row, if any.
    fn fetch_optional<'e, 'q: 'e>(
        conn: &'e mut Self::Connection,
        query: Query<'q, Self>,
    ) -> BoxFuture<'e, sqlx::Result<Option<Self::Row>>>;

    /// Updates the progress of `instance`'s open records (see [`CdrWrite::Refresh`]).
    fn refresh_cdrs<'e>(
        conn: &'e mut Self::Connection,
        instance: &'e str,
        cdrs: &'e [CdrValues<'e>],
    ) -> BoxFuture<'e, StoreResult<()>>;

    /// Reads a column of a type both databases store alike.
    fn get<T: Plain>(row: &Self::Row, name: &str) -> StoreResult<T>;

    /// Reads an `INTEGER` column (64 bits on SQLite, 32 on PostgreSQL).
    fn integer(row: &Self::Row, name: &str) -> StoreResult<i64>;

    /// Reads a flag.
    fn flag(row: &Self::Row, name: &str) -> StoreResult<bool>;

    /// Reads a time.
    fn time(row: &Self::Row, name: &str) -> StoreResult<DateTime<Utc>>;

    /// Reads a time that may be NULL.
    fn optional_time(row: &Self::Row, name: &str) -> StoreResult<Option<DateTime<Utc>>>;

    /// Reads the UUID of `what` `key`.
    fn uuid(
        row: &Self::Row,
        name: &str,
        what: &'static str,
        key: &dyn Display,
    ) -> StoreResult<Uuid>;

    /// Reads and decodes the JSON document of `what` `key`.
    fn json<T: serde::de::DeserializeOwned>(
        row: &Self::Row,
        name: &str,
        what: &'static str,
        key: &dyn Display,
    ) -> StoreResult<T>;
}

/// Reads column `name` of `row`; a value that does not decode is a database error.
pub(crate) fn column<'r, R, T>(row: &'r R, name: &str) -> StoreResult<T>
where
    R: Row,
    T: Decode<'r, R::Database> + Type<R::Database>,
    for<'n> &'n str: sqlx::ColumnIndex<R>,
{
    row.try_get(name)
        .map_err(|source| StoreError::Database { source })
}

/// Maps an error from running a statement of database `D`.
pub(crate) fn err<D: Dialect>(
    error: sqlx::Error,
    what: &'static str,
    key: &dyn Display,
) -> StoreError {
    classify(error, what, key, D::unavailable_code)
}

/// A statement whose parameters the dialect binds.
struct Statement<'q, D: Dialect>(Query<'q, D>);

impl<'q, D: Dialect> Statement<'q, D> {
    fn new(sql: &'static str) -> Self {
        Statement(sqlx::query(sql))
    }

    /// A statement whose text holds the dialect's SQL words (never a value).
    fn with_words(sql: String) -> Self {
        Statement(sqlx::query(AssertSqlSafe(sql)))
    }

    fn bind<'a>(self, value: impl Into<Param<'a>>) -> Self {
        Statement(D::bind(self.0, value.into()))
    }

    async fn execute(self, conn: &mut D::Connection) -> sqlx::Result<u64> {
        D::execute(conn, self.0).await
    }

    async fn fetch_all(self, conn: &mut D::Connection) -> sqlx::Result<Vec<D::Row>> {
        D::fetch_all(conn, self.0).await
    }

    async fn fetch_optional(self, conn: &mut D::Connection) -> sqlx::Result<Option<D::Row>> {
        D::fetch_optional(conn, self.0).await
    }

    async fn fetch_one(self, conn: &mut D::Connection) -> sqlx::Result<D::Row> {
        D::fetch_optional(conn, self.0)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }
}

/// [`QueryBuilder::push_bind`] through the dialect.
trait PushParam {
    fn push_param<'a>(&mut self, value: impl Into<Param<'a>>) -> &mut Self;
}

impl<D: Dialect> PushParam for QueryBuilder<D> {
    fn push_param<'a>(&mut self, value: impl Into<Param<'a>>) -> &mut Self {
        D::push_bind(self, value.into());
        self
    }
}

/// A store in an SQL database: [`SqliteStore`](super::SqliteStore) or
/// [`PgStore`](super::PgStore).
#[derive(Debug)]
pub struct SqlStore<D: Database> {
    pool: Pool<D>,
    outage: Arc<OutageGate>,
    database: PhantomData<fn() -> D>,
}

impl<D: Database> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        SqlStore {
            pool: self.pool.clone(),
            outage: Arc::clone(&self.outage),
            database: PhantomData,
        }
    }
}

// The dialect stays crate-private: these methods exist for exactly the databases this
// crate implements it for (`SqliteStore`, `PgStore`).
#[allow(private_bounds)]
impl<D: Dialect> SqlStore<D> {
    /// Opens the database at `url` with default [`StoreOptions`] and applies the
    /// migrations: `sqlite://telepatch.db` or `sqlite::memory:` for
    /// [`SqliteStore`](super::SqliteStore) (the file is created if missing),
    /// `postgres://user:password@host:port/database` for [`PgStore`](super::PgStore)
    /// (migrating under an advisory lock, so instances starting together do not race).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, &StoreOptions::default()).await
    }

    /// [`SqlStore::connect`] with explicit options. Fails with
    /// [`StoreError::Unavailable`] within `acquire_timeout` if the server cannot be
    /// reached.
    pub async fn connect_with(url: &str, options: &StoreOptions) -> StoreResult<Self> {
        Ok(SqlStore {
            pool: D::connect(url, options).await?,
            outage: Arc::default(),
            database: PhantomData,
        })
    }

    async fn conn(&self) -> StoreResult<PoolConnection<D>> {
        self.outage.admit()?;
        let conn = self.pool.acquire().await;
        self.outage.record(conn.is_ok());
        conn.map_err(super::error::unavailable)
    }
}

fn route_from_row<D: Dialect>(row: &D::Row) -> StoreResult<RouteRecord> {
    let name: String = D::get(row, "name")?;
    let matcher = D::json(row, "match_json", "route", &name)?;
    let actions = D::json(row, "actions", "route", &name)?;
    Ok(RouteRecord {
        route: Route {
            priority: D::get(row, "priority")?,
            matcher,
            actions,
            coding: coding_from_column(D::get(row, "coding")?, &name)?,
            name,
        },
        created_at: D::time(row, "created_at")?,
        updated_at: D::time(row, "updated_at")?,
    })
}

fn node_from_row<D: Dialect>(row: &D::Row) -> StoreResult<NodeRecord> {
    let kind: String = D::get(row, "kind")?;
    let name: String = D::get(row, "name")?;
    let node = node_from_columns(&kind, &name)?;
    Ok(NodeRecord {
        config: D::json(row, "config", "node", &node)?,
        created_at: D::time(row, "created_at")?,
        updated_at: D::time(row, "updated_at")?,
        node,
    })
}

fn patch_from_row<D: Dialect>(row: &D::Row) -> StoreResult<PatchRecord> {
    let id: i64 = D::get(row, "id")?;
    let source: String = D::get(row, "source")?;
    let sink: String = D::get(row, "sink")?;
    Ok(PatchRecord {
        id,
        source: port_from_column(&source, id)?,
        sink: port_from_column(&sink, id)?,
        gain_db: D::get(row, "gain_db")?,
        created_at: D::time(row, "created_at")?,
    })
}

fn token_from_row<D: Dialect>(row: &D::Row) -> StoreResult<TokenInfo> {
    Ok(TokenInfo {
        id: D::get(row, "id")?,
        name: D::get(row, "name")?,
        scope: D::get::<String>(row, "scope")?.parse()?,
        created_at: D::time(row, "created_at")?,
        last_used_at: D::optional_time(row, "last_used_at")?,
    })
}

fn cdr_from_row<D: Dialect>(row: &D::Row) -> StoreResult<StoredCdr> {
    let id: i64 = D::get(row, "id")?;
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "CDR",
        key: id.to_string(),
        reason,
    };
    let uuid = D::uuid(row, "uuid", "CDR", &id)?;
    let ended_by: String = D::get(row, "ended_by")?;
    let ended_by =
        EndedBy::parse(&ended_by).ok_or_else(|| corrupt(format!("ended_by {ended_by:?}")))?;
    let caller_rate_hz = D::integer(row, "caller_rate_hz")?;
    let peer: Option<String> = D::get(row, "peer")?;
    let peer = peer
        .map(|text| {
            text.parse::<SocketAddr>()
                .map_err(|_| corrupt(format!("peer {text:?}")))
        })
        .transpose()?;
    Ok(StoredCdr {
        id,
        instance: D::get(row, "instance")?,
        open: D::flag(row, "is_open")?,
        cdr: CdrRecord {
            uuid,
            started_at: D::time(row, "started_at")?,
            ended_at: D::time(row, "ended_at")?,
            duration_ms: to_u64(D::get(row, "duration_ms")?, "duration_ms", id)?,
            caller_rate_hz: u32::try_from(caller_rate_hz)
                .map_err(|_| corrupt(format!("caller_rate_hz {caller_rate_hz}")))?,
            ended_by,
            end_reason: D::get(row, "end_reason")?,
            frames_in: to_u64(D::get(row, "frames_in")?, "frames_in", id)?,
            frames_out: to_u64(D::get(row, "frames_out")?, "frames_out", id)?,
            uplink_gaps: to_u64(D::get(row, "uplink_gaps")?, "uplink_gaps", id)?,
            downlink_underruns: to_u64(
                D::get(row, "downlink_underruns")?,
                "downlink_underruns",
                id,
            )?,
            max_jitter_ms: D::get(row, "max_jitter_ms")?,
            route: D::get(row, "route")?,
            patches: D::json(row, "patches", "CDR", &id)?,
            peer,
        },
    })
}

/// A CDR converted to the values bound for it, so that a bad record fails the batch
/// before anything is sent.
pub(crate) struct CdrValues<'a> {
    pub(crate) uuid: Uuid,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) ended_at: DateTime<Utc>,
    pub(crate) duration_ms: i64,
    pub(crate) caller_rate_hz: u32,
    pub(crate) ended_by: &'static str,
    pub(crate) end_reason: &'a str,
    pub(crate) frames_in: i64,
    pub(crate) frames_out: i64,
    pub(crate) uplink_gaps: i64,
    pub(crate) downlink_underruns: i64,
    pub(crate) max_jitter_ms: f64,
    pub(crate) route: Option<&'a str>,
    pub(crate) patches: Box<RawValue>,
    pub(crate) peer: Option<String>,
}

impl<'a> CdrValues<'a> {
    fn new<D: Dialect>(cdr: &'a CdrRecord) -> StoreResult<CdrValues<'a>> {
        if !cdr.max_jitter_ms.is_finite() {
            return Err(StoreError::Invalid {
                what: "CDR",
                reason: "max_jitter_ms is not a finite number".into(),
            });
        }
        let duration_ms = to_i64(cdr.duration_ms, "duration_ms")?;
        if cdr.caller_rate_hz > D::INTEGER_MAX {
            return Err(StoreError::Invalid {
                what: "CDR",
                reason: format!("caller_rate_hz {} is too large", cdr.caller_rate_hz),
            });
        }
        Ok(CdrValues {
            uuid: cdr.uuid,
            started_at: cdr.started_at,
            ended_at: cdr.ended_at,
            duration_ms,
            caller_rate_hz: cdr.caller_rate_hz,
            ended_by: cdr.ended_by.as_str(),
            end_reason: &cdr.end_reason,
            frames_in: to_i64(cdr.frames_in, "frames_in")?,
            frames_out: to_i64(cdr.frames_out, "frames_out")?,
            uplink_gaps: to_i64(cdr.uplink_gaps, "uplink_gaps")?,
            downlink_underruns: to_i64(cdr.downlink_underruns, "downlink_underruns")?,
            max_jitter_ms: cdr.max_jitter_ms,
            route: cdr.route.as_deref(),
            patches: json_raw(&cdr.patches, "CDR")?,
            peer: cdr.peer.map(|peer| peer.to_string()),
        })
    }

    /// The values in [`CDR_COLUMNS`] order.
    fn params(&self) -> [Param<'_>; 15] {
        [
            Param::Uuid(self.uuid),
            Param::Time(self.started_at),
            Param::Time(self.ended_at),
            Param::I64(self.duration_ms),
            Param::U32(self.caller_rate_hz),
            Param::from(self.ended_by),
            Param::from(self.end_reason),
            Param::I64(self.frames_in),
            Param::I64(self.frames_out),
            Param::I64(self.uplink_gaps),
            Param::I64(self.downlink_underruns),
            Param::F64(self.max_jitter_ms),
            Param::Text(self.route),
            Param::Json(&self.patches),
            Param::Text(self.peer.as_deref()),
        ]
    }

    /// What an open record says: how it ends if the gateway stops unexpectedly.
    fn interrupted(mut self) -> CdrValues<'a> {
        self.ended_by = EndedBy::Interrupted.as_str();
        self.end_reason = INTERRUPTED_REASON;
        self
    }
}

/// A [`CdrWrite`] with its values converted.
enum WriteValues<'a> {
    Open(CdrValues<'a>),
    Refresh(Vec<CdrValues<'a>>),
    Close(CdrValues<'a>),
    CloseOrphans,
    CloseStale(DateTime<Utc>),
}

impl<'a> WriteValues<'a> {
    fn new<D: Dialect>(write: &'a CdrWrite) -> StoreResult<WriteValues<'a>> {
        Ok(match write {
            CdrWrite::Open(cdr) => WriteValues::Open(CdrValues::new::<D>(cdr)?.interrupted()),
            CdrWrite::Refresh(cdrs) => WriteValues::Refresh(
                cdrs.iter()
                    .map(CdrValues::new::<D>)
                    .collect::<StoreResult<_>>()?,
            ),
            CdrWrite::Close(cdr) => WriteValues::Close(CdrValues::new::<D>(cdr)?),
            CdrWrite::CloseOrphans => WriteValues::CloseOrphans,
            CdrWrite::CloseStale { before } => WriteValues::CloseStale(*before),
        })
    }
}

/// Appends `(value, value, ...)` to `builder`.
fn push_row<'a, D: Dialect>(
    builder: &mut QueryBuilder<D>,
    values: impl IntoIterator<Item = Param<'a>>,
) {
    builder.push("(");
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            builder.push(", ");
        }
        builder.push_param(value);
    }
    builder.push(")");
}

/// Inserts one record of `instance`.
async fn insert_cdr<D: Dialect>(
    tx: &mut D::Connection,
    instance: &str,
    cdr: &CdrValues<'_>,
    open: bool,
) -> StoreResult<()> {
    let mut insert = QueryBuilder::<D>::new(format!(
        "INSERT INTO cdrs ({CDR_COLUMNS}, instance, is_open) VALUES "
    ));
    push_row(
        &mut insert,
        cdr.params()
            .into_iter()
            .chain([Param::from(instance), Param::Bool(open)]),
    );
    D::execute(tx, insert.build())
        .await
        .map_err(|e| err::<D>(e, "CDR", &cdr.uuid))?;
    Ok(())
}

/// Completes the record of `instance`'s call, inserting it if it is missing.
async fn close_cdr<D: Dialect>(
    tx: &mut D::Connection,
    instance: &str,
    cdr: &CdrValues<'_>,
) -> StoreResult<()> {
    let done = Statement::<D>::with_words(format!(
        "UPDATE cdrs SET ended_at = $1, duration_ms = $2, caller_rate_hz = $3, ended_by = $4, \
         end_reason = $5, frames_in = $6, frames_out = $7, uplink_gaps = $8, \
         downlink_underruns = $9, max_jitter_ms = $10, route = $11, patches = $12, peer = $13, \
         is_open = {} \
         WHERE instance = $14 AND uuid = $15 AND started_at = $16",
        D::FALSE
    ))
    .bind(cdr.ended_at)
    .bind(cdr.duration_ms)
    .bind(Param::U32(cdr.caller_rate_hz))
    .bind(cdr.ended_by)
    .bind(cdr.end_reason)
    .bind(cdr.frames_in)
    .bind(cdr.frames_out)
    .bind(cdr.uplink_gaps)
    .bind(cdr.downlink_underruns)
    .bind(cdr.max_jitter_ms)
    .bind(cdr.route)
    .bind(&*cdr.patches)
    .bind(cdr.peer.as_deref())
    .bind(instance)
    .bind(cdr.uuid)
    .bind(cdr.started_at)
    .execute(&mut *tx)
    .await
    .map_err(|e| err::<D>(e, "CDR", &cdr.uuid))?;
    if done == 0 {
        insert_cdr::<D>(tx, instance, cdr, false).await?;
    }
    Ok(())
}

#[async_trait]
impl<D: Dialect> Store for SqlStore<D> {
    fn backend(&self) -> Backend {
        D::BACKEND
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        Statement::<D>::new("SELECT 1")
            .execute(&mut *conn)
            .await
            .map_err(|e| err::<D>(e, "ping", &""))?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn list_routes(&self) -> StoreResult<Vec<RouteRecord>> {
        let mut conn = self.conn().await?;
        let rows = Statement::<D>::new(
            "SELECT name, priority, match_json, actions, coding, created_at, updated_at FROM routes",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "route", &""))?;
        let mut routes = rows
            .iter()
            .map(route_from_row::<D>)
            .collect::<StoreResult<Vec<_>>>()?;
        sort_routes(&mut routes);
        Ok(routes)
    }

    async fn get_route(&self, name: &str) -> StoreResult<RouteRecord> {
        let mut conn = self.conn().await?;
        let row = Statement::<D>::new(
            "SELECT name, priority, match_json, actions, coding, created_at, updated_at FROM routes WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "route", &name))?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            what: "route",
            key: name.to_owned(),
        })?;
        route_from_row::<D>(&row)
    }

    async fn create_route(&self, route: &Route) -> StoreResult<RouteRecord> {
        check_route(route)?;
        let now = now();
        let mut conn = self.conn().await?;
        Statement::<D>::new(
            "INSERT INTO routes (name, priority, match_json, actions, coding, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(&route.name)
        .bind(route.priority)
        .bind(&*json_raw(&route.matcher, "route")?)
        .bind(&*json_raw(&route.actions, "route")?)
        .bind(route.coding.map(AudioCoding::as_str))
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "route", &route.name))?;
        Ok(RouteRecord {
            route: route.clone(),
            created_at: now,
            updated_at: now,
        })
    }

    async fn replace_route(&self, name: &str, route: &Route) -> StoreResult<RouteRecord> {
        check_route(route)?;
        let now = now();
        let mut conn = self.conn().await?;
        let row = Statement::<D>::new(
            "UPDATE routes SET name = $2, priority = $3, match_json = $4, actions = $5, coding = $6, updated_at = $7 \
             WHERE name = $1 RETURNING created_at",
        )
        .bind(name)
        .bind(&route.name)
        .bind(route.priority)
        .bind(&*json_raw(&route.matcher, "route")?)
        .bind(&*json_raw(&route.actions, "route")?)
        .bind(route.coding.map(AudioCoding::as_str))
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "route", &route.name))?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            what: "route",
            key: name.to_owned(),
        })?;
        Ok(RouteRecord {
            route: route.clone(),
            created_at: D::time(&row, "created_at")?,
            updated_at: now,
        })
    }

    async fn delete_route(&self, name: &str) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done = Statement::<D>::new("DELETE FROM routes WHERE name = $1")
            .bind(name)
            .execute(&mut *conn)
            .await
            .map_err(|e| err::<D>(e, "route", &name))?;
        if done == 0 {
            return Err(StoreError::NotFound {
                what: "route",
                key: name.to_owned(),
            });
        }
        Ok(())
    }

    async fn list_nodes(&self, kind: Option<NodeKind>) -> StoreResult<Vec<NodeRecord>> {
        let mut conn = self.conn().await?;
        let query = match kind {
            None => Statement::<D>::new("SELECT kind, name, config, created_at, updated_at FROM nodes ORDER BY kind, name"),
            Some(kind) => Statement::<D>::new(
                "SELECT kind, name, config, created_at, updated_at FROM nodes WHERE kind = $1 ORDER BY name",
            )
            .bind(kind.as_str()),
        };
        let rows = query
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| err::<D>(e, "node", &""))?;
        rows.iter().map(node_from_row::<D>).collect()
    }

    async fn get_node(&self, node: &NodeRef) -> StoreResult<NodeRecord> {
        let mut conn = self.conn().await?;
        let row = Statement::<D>::new(
            "SELECT kind, name, config, created_at, updated_at FROM nodes WHERE kind = $1 AND name = $2",
        )
        .bind(node.kind().as_str())
        .bind(node.name())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "node", node))?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            what: "node",
            key: node.to_string(),
        })?;
        node_from_row::<D>(&row)
    }

    async fn create_node(&self, node: &NodeRef, config: &Value) -> StoreResult<NodeRecord> {
        check_persistent_node(node)?;
        let now = now();
        let mut conn = self.conn().await?;
        Statement::<D>::new(
            "INSERT INTO nodes (kind, name, config, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(node.kind().as_str())
        .bind(node.name())
        .bind(&*json_raw(config, "node")?)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "node", node))?;
        Ok(NodeRecord {
            node: node.clone(),
            config: config.clone(),
            created_at: now,
            updated_at: now,
        })
    }

    async fn update_node_config(&self, node: &NodeRef, config: &Value) -> StoreResult<NodeRecord> {
        let now = now();
        let mut conn = self.conn().await?;
        let row = Statement::<D>::new(
            "UPDATE nodes SET config = $3, updated_at = $4 WHERE kind = $1 AND name = $2 RETURNING created_at",
        )
        .bind(node.kind().as_str())
        .bind(node.name())
        .bind(&*json_raw(config, "node")?)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "node", node))?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            what: "node",
            key: node.to_string(),
        })?;
        Ok(NodeRecord {
            node: node.clone(),
            config: config.clone(),
            created_at: D::time(&row, "created_at")?,
            updated_at: now,
        })
    }

    async fn delete_node(&self, node: &NodeRef) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done = Statement::<D>::new("DELETE FROM nodes WHERE kind = $1 AND name = $2")
            .bind(node.kind().as_str())
            .bind(node.name())
            .execute(&mut *conn)
            .await
            .map_err(|e| err::<D>(e, "node", node))?;
        if done == 0 {
            return Err(StoreError::NotFound {
                what: "node",
                key: node.to_string(),
            });
        }
        Ok(())
    }

    async fn list_patches(&self) -> StoreResult<Vec<PatchRecord>> {
        let mut conn = self.conn().await?;
        let rows = Statement::<D>::new(
            "SELECT id, source, sink, gain_db, created_at FROM patches ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "patch", &""))?;
        rows.iter().map(patch_from_row::<D>).collect()
    }

    async fn get_patch(&self, id: i64) -> StoreResult<PatchRecord> {
        let mut conn = self.conn().await?;
        let row = Statement::<D>::new(
            "SELECT id, source, sink, gain_db, created_at FROM patches WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "patch", &id))?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            what: "patch",
            key: id.to_string(),
        })?;
        patch_from_row::<D>(&row)
    }

    async fn create_patch(
        &self,
        source: &PortRef,
        sink: &PortRef,
        gain_db: f32,
    ) -> StoreResult<PatchRecord> {
        check_patch_gain(gain_db)?;
        let now = now();
        let mut conn = self.conn().await?;
        let row = Statement::<D>::new(
            "INSERT INTO patches (source, sink, gain_db, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(&source.to_string())
        .bind(&sink.to_string())
        .bind(gain_db)
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "patch", &patch_key(source, sink)))?;
        Ok(PatchRecord {
            id: D::get(&row, "id")?,
            source: source.clone(),
            sink: sink.clone(),
            gain_db,
            created_at: now,
        })
    }

    async fn update_patch_gain(&self, id: i64, gain_db: f32) -> StoreResult<PatchRecord> {
        check_patch_gain(gain_db)?;
        let mut conn = self.conn().await?;
        let row = Statement::<D>::new("UPDATE patches SET gain_db = $2 WHERE id = $1 RETURNING id, source, sink, gain_db, created_at")
            .bind(id)
            .bind(gain_db)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| err::<D>(e, "patch", &id))?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            what: "patch",
            key: id.to_string(),
        })?;
        patch_from_row::<D>(&row)
    }

    async fn delete_patch(&self, id: i64) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done = Statement::<D>::new("DELETE FROM patches WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(|e| err::<D>(e, "patch", &id))?;
        if done == 0 {
            return Err(StoreError::NotFound {
                what: "patch",
                key: id.to_string(),
            });
        }
        Ok(())
    }

    async fn create_token(&self, name: &str, scope: Scope) -> StoreResult<NewToken> {
        check_token_name(name)?;
        let clear = token::generate()?;
        let now = now();
        let mut conn = self.conn().await?;
        let row = Statement::<D>::new(
            "INSERT INTO api_tokens (name, scope, token_sha256, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(scope.as_str())
        .bind(&token::hash(&clear))
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "token", &name))?;
        Ok(NewToken {
            info: TokenInfo {
                id: D::get(&row, "id")?,
                name: name.to_owned(),
                scope,
                created_at: now,
                last_used_at: None,
            },
            token: clear,
        })
    }

    async fn verify_token(&self, token: &str) -> StoreResult<Option<TokenInfo>> {
        if !token::is_well_formed(token) {
            return Ok(None);
        }
        let mut conn = self.conn().await?;
        let row = Statement::<D>::new(
            "SELECT id, name, scope, created_at, last_used_at FROM api_tokens WHERE token_sha256 = $1",
        )
        .bind(&token::hash(token))
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "token", &""))?;
        let Some(row) = row else { return Ok(None) };
        let mut info = token_from_row::<D>(&row)?;
        let now = now();
        if token::needs_touch(info.last_used_at, now) {
            // The condition makes concurrent verifications (or other gateway instances)
            // write at most once per interval. A failure here must not refuse a valid
            // token: it is logged and the request goes on.
            let touched = Statement::<D>::new(
                "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at <= $3)",
            )
            .bind(now)
            .bind(info.id)
            .bind(now - token::TOUCH_INTERVAL)
            .execute(&mut *conn)
            .await;
            match touched {
                Ok(1) => info.last_used_at = Some(now),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(token = %info.name, %error, "could not record token use")
                }
            }
        }
        Ok(Some(info))
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        let mut conn = self.conn().await?;
        let rows = Statement::<D>::new(
            "SELECT id, name, scope, created_at, last_used_at FROM api_tokens ORDER BY name",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "token", &""))?;
        rows.iter().map(token_from_row::<D>).collect()
    }

    async fn revoke_token(&self, name: &str) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done = Statement::<D>::new("DELETE FROM api_tokens WHERE name = $1")
            .bind(name)
            .execute(&mut *conn)
            .await
            .map_err(|e| err::<D>(e, "token", &name))?;
        if done == 0 {
            return Err(StoreError::NotFound {
                what: "token",
                key: name.to_owned(),
            });
        }
        Ok(())
    }

    async fn insert_cdrs(&self, cdrs: &[CdrRecord]) -> StoreResult<()> {
        if cdrs.is_empty() {
            return Ok(());
        }
        let values = cdrs
            .iter()
            .map(CdrValues::new::<D>)
            .collect::<StoreResult<Vec<_>>>()?;
        let mut conn = self.conn().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(|e| err::<D>(e, "CDR", &""))?;
        for chunk in values.chunks(CDR_ROWS_PER_STATEMENT) {
            let mut insert =
                QueryBuilder::<D>::new(format!("INSERT INTO cdrs ({CDR_COLUMNS}) VALUES "));
            for (i, cdr) in chunk.iter().enumerate() {
                if i > 0 {
                    insert.push(", ");
                }
                push_row(&mut insert, cdr.params());
            }
            D::execute(&mut tx, insert.build())
                .await
                .map_err(|e| err::<D>(e, "CDR", &""))?;
        }
        tx.commit().await.map_err(|e| err::<D>(e, "CDR", &""))?;
        Ok(())
    }

    async fn write_cdrs(&self, instance: &str, writes: &[CdrWrite]) -> StoreResult<u64> {
        check_instance(instance)?;
        if writes.is_empty() {
            return Ok(0);
        }
        let values = writes
            .iter()
            .map(WriteValues::new::<D>)
            .collect::<StoreResult<Vec<_>>>()?;
        let mut conn = self.conn().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(|e| err::<D>(e, "CDR", &""))?;
        let mut closed = 0;
        for write in &values {
            match write {
                WriteValues::Open(cdr) => insert_cdr::<D>(&mut tx, instance, cdr, true).await?,
                WriteValues::Refresh(cdrs) => D::refresh_cdrs(&mut tx, instance, cdrs).await?,
                WriteValues::Close(cdr) => close_cdr::<D>(&mut tx, instance, cdr).await?,
                WriteValues::CloseOrphans | WriteValues::CloseStale(_) => {
                    let mut close = QueryBuilder::<D>::new(format!(
                        "UPDATE cdrs SET is_open = {}, ended_by = ",
                        D::FALSE
                    ));
                    close
                        .push_param(EndedBy::Interrupted.as_str())
                        .push(", end_reason = ")
                        .push_param(INTERRUPTED_REASON)
                        .push(format!(" WHERE is_open = {}", D::TRUE));
                    match write {
                        WriteValues::CloseStale(before) => {
                            close.push(" AND ended_at < ").push_param(*before)
                        }
                        _ => close.push(" AND instance = ").push_param(instance),
                    };
                    closed += D::execute(&mut tx, close.build())
                        .await
                        .map_err(|e| err::<D>(e, "CDR", &""))?;
                }
            }
        }
        tx.commit().await.map_err(|e| err::<D>(e, "CDR", &""))?;
        Ok(closed)
    }

    async fn query_cdrs(&self, filter: &CdrFilter) -> StoreResult<CdrPage> {
        let limit = filter.page_size();
        let mut query = QueryBuilder::<D>::new(format!(
            "SELECT id, instance, is_open, {CDR_COLUMNS} FROM cdrs WHERE 1 = 1"
        ));
        if !filter.include_open {
            query.push(format!(" AND is_open = {}", D::FALSE));
        }
        if let Some(uuid) = filter.uuid {
            query.push(" AND uuid = ").push_param(uuid);
        }
        if let Some(from) = filter.from {
            query.push(" AND ended_at >= ").push_param(from);
        }
        if let Some(to) = filter.to {
            query.push(" AND ended_at < ").push_param(to);
        }
        if let Some(cursor) = filter.cursor {
            let ended_at =
                D::cursor_time(cursor.ended_at_us).ok_or_else(|| StoreError::Invalid {
                    what: "cursor",
                    reason: format!("{cursor} is out of range"),
                })?;
            query
                .push(" AND (ended_at, id) < (")
                .push_param(ended_at)
                .push(", ")
                .push_param(cursor.id)
                .push(")");
        }
        query
            .push(" ORDER BY ended_at DESC, id DESC LIMIT ")
            .push_param(i64::from(limit) + 1);
        let mut conn = self.conn().await?;
        let rows = D::fetch_all(&mut conn, query.build())
            .await
            .map_err(|e| err::<D>(e, "CDR", &""))?;
        let items = rows
            .iter()
            .map(cdr_from_row::<D>)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(CdrPage::from_rows(items, limit))
    }

    async fn next_counter(&self, name: &str, by: i64) -> StoreResult<i64> {
        check_counter(name, by)?;
        let mut conn = self.conn().await?;
        let row = Statement::<D>::new(
            "INSERT INTO counters (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value RETURNING value",
        )
        .bind(name)
        .bind(by)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "counter", &name))?;
        D::get(&row, "value")
    }

    async fn get_counter(&self, name: &str) -> StoreResult<Option<i64>> {
        let mut conn = self.conn().await?;
        let row = Statement::<D>::new("SELECT value FROM counters WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| err::<D>(e, "counter", &name))?;
        row.map(|row| D::get(&row, "value")).transpose()
    }

    async fn reserve_dns_sequences(
        &self,
        domain: &str,
        at_least: i64,
        count: i64,
    ) -> StoreResult<i64> {
        check_dns_sequences(domain, at_least, count)?;
        let mut conn = self.conn().await?;
        // One statement: the upsert is atomic, so concurrent reservations never overlap.
        let row = Statement::<D>::with_words(format!(
            "INSERT INTO dns_sequences (domain, next_sequence) VALUES ($1, $2 + $3) \
             ON CONFLICT (domain) DO UPDATE \
             SET next_sequence = {}(dns_sequences.next_sequence, $2) + $3 \
             RETURNING next_sequence - $3 AS first_sequence",
            D::GREATEST
        ))
        .bind(domain)
        .bind(at_least)
        .bind(count)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| err::<D>(e, "DNS sequence", &domain))?;
        D::get(&row, "first_sequence")
    }

    async fn next_dns_sequence(&self, domain: &str) -> StoreResult<Option<i64>> {
        let mut conn = self.conn().await?;
        let row = Statement::<D>::new("SELECT next_sequence FROM dns_sequences WHERE domain = $1")
            .bind(domain)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| err::<D>(e, "DNS sequence", &domain))?;
        row.map(|row| D::get(&row, "next_sequence")).transpose()
    }
}
