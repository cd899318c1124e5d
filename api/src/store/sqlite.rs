//! The SQLite dialect of [`SqlStore`](super::SqlStore): an embedded database file, the
//! zero-set-up default.
//!
//! The file is created if missing and opened in WAL mode (readers do not block the
//! writer) with `synchronous = NORMAL` (in WAL mode a power cut can lose the last
//! transactions but never corrupts the file), a busy timeout (a writer waits for the
//! lock instead of failing at once) and foreign keys on. Times are stored as integer
//! microseconds since the Unix epoch, UUIDs and JSON as text, flags as 0 and 1 (see
//! `migrations/sqlite`).
//!
//! No transaction reads before it writes (writes are single statements using upserts
//! and `RETURNING`; the CDR batch transaction only inserts), so a transaction never has
//! to upgrade a read lock to the write lock: SQLite fails such an upgrade at once with
//! SQLITE_BUSY instead of waiting out the busy timeout.

use std::fmt::Display;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::sqlite::{
    SqliteArgumentsBuffer, SqliteConnectOptions, SqliteConnection, SqliteJournalMode,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous, SqliteTypeInfo,
};
use sqlx::{Encode, Pool, QueryBuilder, Sqlite, Type};
use uuid::Uuid;

use super::error::{connect_error, migrate_error, sqlite_unavailable_code};
use super::records::from_micros;
use super::sql::{CDR_ROWS_PER_STATEMENT, CdrValues, Dialect, Param, Plain, Query, column, err};
use super::{Backend, StoreError, StoreOptions, StoreResult, json_from_text};

/// The columns a refresh updates, in bind order after `uuid, started_at`.
const CDR_PROGRESS_COLUMNS: [&str; 9] = [
    "ended_at",
    "duration_ms",
    "caller_rate_hz",
    "frames_in",
    "frames_out",
    "uplink_gaps",
    "downlink_underruns",
    "max_jitter_ms",
    "patches",
];

impl Type<Sqlite> for Param<'_> {
    fn type_info() -> SqliteTypeInfo {
        // SQLite types values, not parameters: only `encode_by_ref` matters.
        <i64 as Type<Sqlite>>::type_info()
    }
}

impl Encode<'_, Sqlite> for Param<'_> {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        match *self {
            Param::I64(value) => Encode::<Sqlite>::encode(value, buf),
            Param::I32(value) => Encode::<Sqlite>::encode(value, buf),
            Param::U32(value) => Encode::<Sqlite>::encode(i64::from(value), buf),
            Param::F32(value) => Encode::<Sqlite>::encode(value, buf),
            Param::F64(value) => Encode::<Sqlite>::encode(value, buf),
            Param::Text(text) => Encode::<Sqlite>::encode(text, buf),
            Param::Time(time) => Encode::<Sqlite>::encode(time.timestamp_micros(), buf),
            Param::Uuid(uuid) => Encode::<Sqlite>::encode(uuid.hyphenated().to_string(), buf),
            Param::Bool(flag) => Encode::<Sqlite>::encode(i64::from(flag), buf),
            Param::Json(json) => Encode::<Sqlite>::encode(json.get(), buf),
        }
    }
}

impl Dialect for Sqlite {
    const BACKEND: Backend = Backend::Sqlite;
    const TRUE: &'static str = "1";
    const FALSE: &'static str = "0";
    const GREATEST: &'static str = "max";
    const INTEGER_MAX: u32 = u32::MAX;

    fn connect<'a>(
        url: &'a str,
        options: &'a StoreOptions,
    ) -> BoxFuture<'a, StoreResult<Pool<Sqlite>>> {
        Box::pin(async move {
            let connect = SqliteConnectOptions::from_str(url)
                .map_err(connect_error)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(options.busy_timeout)
                .foreign_keys(true);
            let mut pool = SqlitePoolOptions::new().acquire_timeout(options.acquire_timeout);
            // An in-memory database lives as long as one of its connections: keep exactly
            // one, forever (several would also contend on shared-cache table locks).
            if url.contains(":memory:") || url.contains("mode=memory") {
                pool = pool
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None);
            } else {
                pool = pool.max_connections(options.max_connections.max(1));
            }
            let pool = pool.connect_with(connect).await.map_err(connect_error)?;
            sqlx::migrate!("../migrations/sqlite")
                .run(&pool)
                .await
                .map_err(|error| migrate_error(error, sqlite_unavailable_code))?;
            Ok(pool)
        })
    }

    fn unavailable_code(code: &str) -> bool {
        sqlite_unavailable_code(code)
    }

    fn bind<'q>(query: Query<'q, Sqlite>, value: Param<'_>) -> Query<'q, Sqlite> {
        query.bind(value)
    }

    fn push_bind(builder: &mut QueryBuilder<Sqlite>, value: Param<'_>) {
        builder.push_bind(value);
    }

    fn cursor_time(micros: i64) -> Option<Param<'static>> {
        Some(Param::I64(micros))
    }

    fn execute<'e, 'q: 'e>(
        conn: &'e mut SqliteConnection,
        query: Query<'q, Sqlite>,
    ) -> BoxFuture<'e, sqlx::Result<u64>> {
        Box::pin(async move { Ok(query.execute(conn).await?.rows_affected()) })
    }

    fn fetch_all<'e, 'q: 'e>(
        conn: &'e mut SqliteConnection,
        query: Query<'q, Sqlite>,
    ) -> BoxFuture<'e, sqlx::Result<Vec<SqliteRow>>> {
        Box::pin(query.fetch_all(conn))
    }

    fn fetch_optional<'e, 'q: 'e>(
        conn: &'e mut SqliteConnection,
        query: Query<'q, Sqlite>,
    ) -> BoxFuture<'e, sqlx::Result<Option<SqliteRow>>> {
        Box::pin(query.fetch_optional(conn))
    }

    /// One statement per chunk: a `WITH progress (...) AS (VALUES ...)` joined on
    /// the record's key.
    fn refresh_cdrs<'e>(
        conn: &'e mut SqliteConnection,
        instance: &'e str,
        cdrs: &'e [CdrValues<'e>],
    ) -> BoxFuture<'e, StoreResult<()>> {
        Box::pin(async move {
            for chunk in cdrs.chunks(CDR_ROWS_PER_STATEMENT) {
                let mut update = QueryBuilder::<Sqlite>::new(format!(
                    "WITH progress (uuid, started_at, {}) AS (",
                    CDR_PROGRESS_COLUMNS.join(", ")
                ));
                update.push_values(chunk, |mut row, cdr| {
                    row.push_bind(Param::Uuid(cdr.uuid))
                        .push_bind(Param::Time(cdr.started_at))
                        .push_bind(Param::Time(cdr.ended_at))
                        .push_bind(cdr.duration_ms)
                        .push_bind(i64::from(cdr.caller_rate_hz))
                        .push_bind(cdr.frames_in)
                        .push_bind(cdr.frames_out)
                        .push_bind(cdr.uplink_gaps)
                        .push_bind(cdr.downlink_underruns)
                        .push_bind(cdr.max_jitter_ms)
                        .push_bind(cdr.patches.get());
                });
                let set = CDR_PROGRESS_COLUMNS
                    .iter()
                    .map(|column| format!("{column} = progress.{column}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                update
                    .push(format!(
                        ") UPDATE cdrs SET {set} FROM progress \
                         WHERE cdrs.is_open = 1 AND cdrs.uuid = progress.uuid \
                         AND cdrs.started_at = progress.started_at AND cdrs.instance = "
                    ))
                    .push_bind(instance);
                update
                    .build()
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| err::<Sqlite>(e, "CDR", &""))?;
            }
            Ok(())
        })
    }

    fn get<T: Plain>(row: &SqliteRow, name: &str) -> StoreResult<T> {
        column(row, name)
    }

    fn integer(row: &SqliteRow, name: &str) -> StoreResult<i64> {
        column(row, name)
    }

    fn flag(row: &SqliteRow, name: &str) -> StoreResult<bool> {
        column::<_, i64>(row, name).map(|flag| flag != 0)
    }

    fn time(row: &SqliteRow, name: &str) -> StoreResult<DateTime<Utc>> {
        from_micros(column(row, name)?)
    }

    fn optional_time(row: &SqliteRow, name: &str) -> StoreResult<Option<DateTime<Utc>>> {
        column::<_, Option<i64>>(row, name)?
            .map(from_micros)
            .transpose()
    }

    fn uuid(
        row: &SqliteRow,
        name: &str,
        what: &'static str,
        key: &dyn Display,
    ) -> StoreResult<Uuid> {
        Uuid::parse_str(column(row, name)?).map_err(|error| StoreError::Corrupt {
            what,
            key: key.to_string(),
            reason: error.to_string(),
        })
    }

    fn json<T: serde::de::DeserializeOwned>(
        row: &SqliteRow,
        name: &str,
        what: &'static str,
        key: &dyn Display,
    ) -> StoreResult<T> {
        json_from_text(column(row, name)?, what, key)
    }
}
