//! The PostgreSQL dialect of [`SqlStore`](super::SqlStore), for several gateway
//! instances sharing one store.
//!
//! Times are `TIMESTAMPTZ`, UUIDs `UUID`, flags `BOOLEAN`, JSON is `JSONB`, names sort
//! with `COLLATE "C"` (see `migrations/postgres`). Every connection gets a server-side
//! `statement_timeout`, so a stuck query cannot hold an API request forever; the pool
//! tests connections before handing them out, so connections killed by a server
//! restart are replaced instead of failing a request.

use std::fmt::Display;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{
    PgArgumentBuffer, PgConnectOptions, PgConnection, PgPoolOptions, PgRow, PgTypeInfo,
};
use sqlx::types::Json;
use sqlx::{Encode, Pool, Postgres, QueryBuilder, Type};
use uuid::Uuid;

use super::error::{connect_error, migrate_error, pg_unavailable_code};
use super::sql::{CdrValues, Dialect, Param, Plain, Query, column, err};
use super::{Backend, StoreError, StoreOptions, StoreResult, json_from_value};

impl Type<Postgres> for Param<'_> {
    fn type_info() -> PgTypeInfo {
        // Each value names its own type (`produces`); this is never used.
        <&str as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Param<'_> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        match *self {
            Param::I64(value) => Encode::<Postgres>::encode(value, buf),
            Param::I32(value) => Encode::<Postgres>::encode(value, buf),
            Param::U32(value) => Encode::<Postgres>::encode(i32::try_from(value)?, buf),
            Param::F32(value) => Encode::<Postgres>::encode(value, buf),
            Param::F64(value) => Encode::<Postgres>::encode(value, buf),
            Param::Text(text) => Encode::<Postgres>::encode(text, buf),
            Param::Time(time) => Encode::<Postgres>::encode(time, buf),
            Param::Uuid(uuid) => Encode::<Postgres>::encode(uuid, buf),
            Param::Bool(flag) => Encode::<Postgres>::encode(flag, buf),
            Param::Json(json) => Encode::<Postgres>::encode(Json(json), buf),
        }
    }

    fn produces(&self) -> Option<PgTypeInfo> {
        Some(match self {
            Param::I64(_) => <i64 as Type<Postgres>>::type_info(),
            Param::I32(_) | Param::U32(_) => <i32 as Type<Postgres>>::type_info(),
            Param::F32(_) => <f32 as Type<Postgres>>::type_info(),
            Param::F64(_) => <f64 as Type<Postgres>>::type_info(),
            Param::Text(_) => <&str as Type<Postgres>>::type_info(),
            Param::Time(_) => <DateTime<Utc> as Type<Postgres>>::type_info(),
            Param::Uuid(_) => <Uuid as Type<Postgres>>::type_info(),
            Param::Bool(_) => <bool as Type<Postgres>>::type_info(),
            Param::Json(_) => <Json<&RawValue> as Type<Postgres>>::type_info(),
        })
    }
}

impl Dialect for Postgres {
    const BACKEND: Backend = Backend::Postgres;
    const TRUE: &'static str = "TRUE";
    const FALSE: &'static str = "FALSE";
    const GREATEST: &'static str = "GREATEST";
    const INTEGER_MAX: u32 = i32::MAX.unsigned_abs();

    fn connect<'a>(
        url: &'a str,
        options: &'a StoreOptions,
    ) -> BoxFuture<'a, StoreResult<Pool<Postgres>>> {
        Box::pin(async move {
            let connect = PgConnectOptions::from_str(url)
                .map_err(connect_error)?
                .application_name("telepatch")
                .options([("statement_timeout", options.statement_timeout.as_millis())]);
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections.max(1))
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await
                .map_err(connect_error)?;
            sqlx::migrate!("../migrations/postgres")
                .run(&pool)
                .await
                .map_err(|error| migrate_error(error, pg_unavailable_code))?;
            Ok(pool)
        })
    }

    fn unavailable_code(code: &str) -> bool {
        pg_unavailable_code(code)
    }

    fn bind<'q>(query: Query<'q, Postgres>, value: Param<'_>) -> Query<'q, Postgres> {
        query.bind(value)
    }

    fn push_bind(builder: &mut QueryBuilder<Postgres>, value: Param<'_>) {
        builder.push_bind(value);
    }

    fn cursor_time(micros: i64) -> Option<Param<'static>> {
        DateTime::from_timestamp_micros(micros).map(Param::Time)
    }

    fn execute<'e, 'q: 'e>(
        conn: &'e mut PgConnection,
        query: Query<'q, Postgres>,
    ) -> BoxFuture<'e, sqlx::Result<u64>> {
        Box::pin(async move { Ok(query.execute(conn).await?.rows_affected()) })
    }

    fn fetch_all<'e, 'q: 'e>(
        conn: &'e mut PgConnection,
        query: Query<'q, Postgres>,
    ) -> BoxFuture<'e, sqlx::Result<Vec<PgRow>>> {
        Box::pin(query.fetch_all(conn))
    }

    fn fetch_optional<'e, 'q: 'e>(
        conn: &'e mut PgConnection,
        query: Query<'q, Postgres>,
    ) -> BoxFuture<'e, sqlx::Result<Option<PgRow>>> {
        Box::pin(query.fetch_optional(conn))
    }

    /// One statement for the whole batch: each column's values go as one array,
    /// unnested into rows.
    fn refresh_cdrs<'e>(
        conn: &'e mut PgConnection,
        instance: &'e str,
        cdrs: &'e [CdrValues<'e>],
    ) -> BoxFuture<'e, StoreResult<()>> {
        Box::pin(async move {
            if cdrs.is_empty() {
                return Ok(());
            }
            let column = |f: fn(&CdrValues<'_>) -> i64| cdrs.iter().map(f).collect::<Vec<_>>();
            let caller_rates = cdrs
                .iter()
                .map(|cdr| {
                    i32::try_from(cdr.caller_rate_hz).map_err(|_| StoreError::Invalid {
                        what: "CDR",
                        reason: format!("caller_rate_hz {} is too large", cdr.caller_rate_hz),
                    })
                })
                .collect::<StoreResult<Vec<_>>>()?;
            sqlx::query(
                "UPDATE cdrs SET ended_at = p.ended_at, duration_ms = p.duration_ms, \
                 caller_rate_hz = p.caller_rate_hz, frames_in = p.frames_in, frames_out = p.frames_out, \
                 uplink_gaps = p.uplink_gaps, downlink_underruns = p.downlink_underruns, \
                 max_jitter_ms = p.max_jitter_ms, patches = p.patches::jsonb \
                 FROM UNNEST($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::bigint[], \
                 $5::integer[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], \
                 $10::double precision[], $11::text[]) \
                 AS p (uuid, started_at, ended_at, duration_ms, caller_rate_hz, frames_in, frames_out, \
                 uplink_gaps, downlink_underruns, max_jitter_ms, patches) \
                 WHERE cdrs.is_open AND cdrs.instance = $12 AND cdrs.uuid = p.uuid \
                 AND cdrs.started_at = p.started_at",
            )
            .bind(cdrs.iter().map(|cdr| cdr.uuid).collect::<Vec<_>>())
            .bind(cdrs.iter().map(|cdr| cdr.started_at).collect::<Vec<_>>())
            .bind(cdrs.iter().map(|cdr| cdr.ended_at).collect::<Vec<_>>())
            .bind(column(|cdr| cdr.duration_ms))
            .bind(caller_rates)
            .bind(column(|cdr| cdr.frames_in))
            .bind(column(|cdr| cdr.frames_out))
            .bind(column(|cdr| cdr.uplink_gaps))
            .bind(column(|cdr| cdr.downlink_underruns))
            .bind(cdrs.iter().map(|cdr| cdr.max_jitter_ms).collect::<Vec<_>>())
            .bind(cdrs.iter().map(|cdr| cdr.patches.get()).collect::<Vec<_>>())
            .bind(instance)
            .execute(conn)
            .await
            .map_err(|e| err::<Postgres>(e, "CDR", &""))?;
            Ok(())
        })
    }

    fn get<T: Plain>(row: &PgRow, name: &str) -> StoreResult<T> {
        column(row, name)
    }

    fn integer(row: &PgRow, name: &str) -> StoreResult<i64> {
        column::<_, i32>(row, name).map(i64::from)
    }

    fn flag(row: &PgRow, name: &str) -> StoreResult<bool> {
        column(row, name)
    }

    fn time(row: &PgRow, name: &str) -> StoreResult<DateTime<Utc>> {
        column(row, name)
    }

    fn optional_time(row: &PgRow, name: &str) -> StoreResult<Option<DateTime<Utc>>> {
        column(row, name)
    }

    fn uuid(row: &PgRow, name: &str, _what: &'static str, _key: &dyn Display) -> StoreResult<Uuid> {
        column(row, name)
    }

    fn json<T: serde::de::DeserializeOwned>(
        row: &PgRow,
        name: &str,
        what: &'static str,
        key: &dyn Display,
    ) -> StoreResult<T> {
        json_from_value(column::<_, Value>(row, name)?, what, key)
    }
}
