//! The PostgreSQL backend, for several gateway instances sharing one store.
//!
//! Times are `TIMESTAMPTZ`, JSON is `JSONB`, names sort with `COLLATE "C"` (see
//! `migrations/postgres`). Every connection gets a server-side `statement_timeout`, so
//! a stuck query cannot hold an API request forever; the pool tests connections before
//! handing them out, so connections killed by a server restart are replaced instead
//! of failing a request.

use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Decode, Postgres, QueryBuilder, Row, Type};
use uuid::Uuid;

use super::error::{classify, connect_error, migrate_error, pg_unavailable_code, unavailable};
use super::records::{INTERRUPTED_REASON, now, to_i64, to_u64};
use super::{
    Backend, CdrFilter, CdrPage, CdrRecord, CdrWrite, EndedBy, NewToken, NodeRecord, OutageGate,
    PatchRecord, RouteRecord, Scope, Store, StoreError, StoreOptions, StoreResult, StoredCdr,
    TokenInfo, check_counter, check_dns_sequences, check_instance, check_patch_gain,
    check_persistent_node, check_route, check_token_name, coding_from_column, json_from_value,
    json_text, node_from_columns, patch_key, port_from_column, sort_routes, token,
};
use crate::model::{AudioCoding, NodeKind, NodeRef, PortRef, Route};

/// The CDR columns, in insert order.
const CDR_COLUMNS: &str = "uuid, started_at, ended_at, duration_ms, caller_rate_hz, ended_by, end_reason, \
     frames_in, frames_out, uplink_gaps, downlink_underruns, max_jitter_ms, route, patches, peer";
/// Rows per INSERT statement: 15 parameters each stays far below PostgreSQL's limit of
/// 65535 bound parameters per statement.
const CDR_ROWS_PER_STATEMENT: usize = 500;

/// A store in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    outage: std::sync::Arc<OutageGate>,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`) with default
    /// [`StoreOptions`] and applies the migrations (under an advisory lock, so
    /// instances starting together do not race).
    pub async fn connect(url: &str) -> StoreResult<PgStore> {
        PgStore::connect_with(url, &StoreOptions::default()).await
    }

    /// [`PgStore::connect`] with explicit options. Fails with
    /// [`StoreError::Unavailable`] within `acquire_timeout` if the server cannot be
    /// reached.
    pub async fn connect_with(url: &str, options: &StoreOptions) -> StoreResult<PgStore> {
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
        Ok(PgStore {
            pool,
            outage: std::sync::Arc::default(),
        })
    }

    async fn conn(&self) -> StoreResult<PoolConnection<Postgres>> {
        self.outage.admit()?;
        let conn = self.pool.acquire().await;
        self.outage.record(conn.is_ok());
        conn.map_err(unavailable)
    }
}

fn err(error: sqlx::Error, what: &'static str, key: &dyn Display) -> StoreError {
    classify(error, what, key, pg_unavailable_code)
}

fn col<'r, T: Decode<'r, Postgres> + Type<Postgres>>(row: &'r PgRow, name: &str) -> StoreResult<T> {
    row.try_get(name)
        .map_err(|source| StoreError::Database { source })
}

fn route_from_row(row: &PgRow) -> StoreResult<RouteRecord> {
    let name: String = col(row, "name")?;
    let matcher = json_from_value(col(row, "match_json")?, "route", &name)?;
    let actions = json_from_value(col(row, "actions")?, "route", &name)?;
    Ok(RouteRecord {
        route: Route {
            priority: col(row, "priority")?,
            matcher,
            actions,
            coding: coding_from_column(col(row, "coding")?, &name)?,
            name,
        },
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

fn node_from_row(row: &PgRow) -> StoreResult<NodeRecord> {
    let node = node_from_columns(col(row, "kind")?, col(row, "name")?)?;
    Ok(NodeRecord {
        config: json_from_value(col(row, "config")?, "node", &node)?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
        node,
    })
}

fn patch_from_row(row: &PgRow) -> StoreResult<PatchRecord> {
    let id: i64 = col(row, "id")?;
    Ok(PatchRecord {
        id,
        source: port_from_column(col(row, "source")?, id)?,
        sink: port_from_column(col(row, "sink")?, id)?,
        gain_db: col(row, "gain_db")?,
        created_at: col(row, "created_at")?,
    })
}

fn token_from_row(row: &PgRow) -> StoreResult<TokenInfo> {
    Ok(TokenInfo {
        id: col(row, "id")?,
        name: col(row, "name")?,
        scope: col::<&str>(row, "scope")?.parse()?,
        created_at: col(row, "created_at")?,
        last_used_at: col(row, "last_used_at")?,
    })
}

fn cdr_from_row(row: &PgRow) -> StoreResult<StoredCdr> {
    let id: i64 = col(row, "id")?;
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "CDR",
        key: id.to_string(),
        reason,
    };
    let ended_by: &str = col(row, "ended_by")?;
    let ended_by =
        EndedBy::parse(ended_by).ok_or_else(|| corrupt(format!("ended_by {ended_by:?}")))?;
    let caller_rate_hz: i32 = col(row, "caller_rate_hz")?;
    let peer: Option<&str> = col(row, "peer")?;
    let peer = peer
        .map(|text| {
            text.parse::<SocketAddr>()
                .map_err(|_| corrupt(format!("peer {text:?}")))
        })
        .transpose()?;
    Ok(StoredCdr {
        id,
        instance: col(row, "instance")?,
        open: col(row, "is_open")?,
        cdr: CdrRecord {
            uuid: col(row, "uuid")?,
            started_at: col(row, "started_at")?,
            ended_at: col(row, "ended_at")?,
            duration_ms: to_u64(col(row, "duration_ms")?, "duration_ms", id)?,
            caller_rate_hz: u32::try_from(caller_rate_hz)
                .map_err(|_| corrupt(format!("caller_rate_hz {caller_rate_hz}")))?,
            ended_by,
            end_reason: col(row, "end_reason")?,
            frames_in: to_u64(col(row, "frames_in")?, "frames_in", id)?,
            frames_out: to_u64(col(row, "frames_out")?, "frames_out", id)?,
            uplink_gaps: to_u64(col(row, "uplink_gaps")?, "uplink_gaps", id)?,
            downlink_underruns: to_u64(col(row, "downlink_underruns")?, "downlink_underruns", id)?,
            max_jitter_ms: col(row, "max_jitter_ms")?,
            route: col(row, "route")?,
            patches: json_from_value(col(row, "patches")?, "CDR", &id)?,
            peer,
        },
    })
}

/// A CDR converted to the values bound for it, so that a bad record fails the batch
/// before anything is sent.
struct CdrValues<'a> {
    uuid: Uuid,
    started_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
    duration_ms: i64,
    caller_rate_hz: i32,
    ended_by: &'static str,
    end_reason: &'a str,
    frames_in: i64,
    frames_out: i64,
    uplink_gaps: i64,
    downlink_underruns: i64,
    max_jitter_ms: f64,
    route: Option<&'a str>,
    patches: Json<&'a Vec<String>>,
    peer: Option<String>,
}

impl<'a> CdrValues<'a> {
    fn new(cdr: &'a CdrRecord) -> StoreResult<CdrValues<'a>> {
        if !cdr.max_jitter_ms.is_finite() {
            return Err(StoreError::Invalid {
                what: "CDR",
                reason: "max_jitter_ms is not a finite number".into(),
            });
        }
        Ok(CdrValues {
            uuid: cdr.uuid,
            started_at: cdr.started_at,
            ended_at: cdr.ended_at,
            duration_ms: to_i64(cdr.duration_ms, "duration_ms")?,
            caller_rate_hz: i32::try_from(cdr.caller_rate_hz).map_err(|_| StoreError::Invalid {
                what: "CDR",
                reason: format!("caller_rate_hz {} is too large", cdr.caller_rate_hz),
            })?,
            ended_by: cdr.ended_by.as_str(),
            end_reason: &cdr.end_reason,
            frames_in: to_i64(cdr.frames_in, "frames_in")?,
            frames_out: to_i64(cdr.frames_out, "frames_out")?,
            uplink_gaps: to_i64(cdr.uplink_gaps, "uplink_gaps")?,
            downlink_underruns: to_i64(cdr.downlink_underruns, "downlink_underruns")?,
            max_jitter_ms: cdr.max_jitter_ms,
            route: cdr.route.as_deref(),
            patches: Json(&cdr.patches),
            peer: cdr.peer.map(|peer| peer.to_string()),
        })
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
    fn new(write: &'a CdrWrite) -> StoreResult<WriteValues<'a>> {
        Ok(match write {
            CdrWrite::Open(cdr) => WriteValues::Open(CdrValues::new(cdr)?.interrupted()),
            CdrWrite::Refresh(cdrs) => WriteValues::Refresh(
                cdrs.iter()
                    .map(CdrValues::new)
                    .collect::<StoreResult<_>>()?,
            ),
            CdrWrite::Close(cdr) => WriteValues::Close(CdrValues::new(cdr)?),
            CdrWrite::CloseOrphans => WriteValues::CloseOrphans,
            CdrWrite::CloseStale { before } => WriteValues::CloseStale(*before),
        })
    }
}

/// Inserts one record of `instance`.
async fn insert_cdr(
    tx: &mut sqlx::PgConnection,
    instance: &str,
    cdr: &CdrValues<'_>,
    open: bool,
) -> StoreResult<()> {
    let mut insert = QueryBuilder::<Postgres>::new(format!(
        "INSERT INTO cdrs ({CDR_COLUMNS}, instance, is_open) "
    ));
    insert.push_values([cdr], |mut row, cdr| {
        row.push_bind(cdr.uuid)
            .push_bind(cdr.started_at)
            .push_bind(cdr.ended_at)
            .push_bind(cdr.duration_ms)
            .push_bind(cdr.caller_rate_hz)
            .push_bind(cdr.ended_by)
            .push_bind(cdr.end_reason)
            .push_bind(cdr.frames_in)
            .push_bind(cdr.frames_out)
            .push_bind(cdr.uplink_gaps)
            .push_bind(cdr.downlink_underruns)
            .push_bind(cdr.max_jitter_ms)
            .push_bind(cdr.route)
            .push_bind(cdr.patches)
            .push_bind(&cdr.peer)
            .push_bind(instance)
            .push_bind(open);
    });
    insert
        .build()
        .execute(&mut *tx)
        .await
        .map_err(|e| err(e, "CDR", &cdr.uuid))?;
    Ok(())
}

/// Completes the record of `instance`'s call, inserting it if it is missing.
async fn close_cdr(
    tx: &mut sqlx::PgConnection,
    instance: &str,
    cdr: &CdrValues<'_>,
) -> StoreResult<()> {
    let done = sqlx::query(
        "UPDATE cdrs SET ended_at = $1, duration_ms = $2, caller_rate_hz = $3, ended_by = $4, \
         end_reason = $5, frames_in = $6, frames_out = $7, uplink_gaps = $8, \
         downlink_underruns = $9, max_jitter_ms = $10, route = $11, patches = $12, peer = $13, \
         is_open = FALSE \
         WHERE instance = $14 AND uuid = $15 AND started_at = $16",
    )
    .bind(cdr.ended_at)
    .bind(cdr.duration_ms)
    .bind(cdr.caller_rate_hz)
    .bind(cdr.ended_by)
    .bind(cdr.end_reason)
    .bind(cdr.frames_in)
    .bind(cdr.frames_out)
    .bind(cdr.uplink_gaps)
    .bind(cdr.downlink_underruns)
    .bind(cdr.max_jitter_ms)
    .bind(cdr.route)
    .bind(cdr.patches)
    .bind(&cdr.peer)
    .bind(instance)
    .bind(cdr.uuid)
    .bind(cdr.started_at)
    .execute(&mut *tx)
    .await
    .map_err(|e| err(e, "CDR", &cdr.uuid))?;
    if done.rows_affected() == 0 {
        insert_cdr(tx, instance, cdr, false).await?;
    }
    Ok(())
}

/// Updates the progress of `instance`'s open records in one statement: each column's
/// values go as one array, unnested into rows.
async fn refresh_cdrs(
    tx: &mut sqlx::PgConnection,
    instance: &str,
    cdrs: &[CdrValues<'_>],
) -> StoreResult<()> {
    if cdrs.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&CdrValues<'_>) -> i64| cdrs.iter().map(f).collect::<Vec<_>>();
    let patches = cdrs
        .iter()
        .map(|cdr| json_text(cdr.patches.0, "CDR"))
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
    .bind(
        cdrs.iter()
            .map(|cdr| cdr.caller_rate_hz)
            .collect::<Vec<_>>(),
    )
    .bind(column(|cdr| cdr.frames_in))
    .bind(column(|cdr| cdr.frames_out))
    .bind(column(|cdr| cdr.uplink_gaps))
    .bind(column(|cdr| cdr.downlink_underruns))
    .bind(cdrs.iter().map(|cdr| cdr.max_jitter_ms).collect::<Vec<_>>())
    .bind(patches)
    .bind(instance)
    .execute(&mut *tx)
    .await
    .map_err(|e| err(e, "CDR", &""))?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map_err(|e| err(e, "ping", &""))?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn list_routes(&self) -> StoreResult<Vec<RouteRecord>> {
        let mut conn = self.conn().await?;
        let rows = sqlx::query(
            "SELECT name, priority, match_json, actions, coding, created_at, updated_at FROM routes",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| err(e, "route", &""))?;
        let mut routes = rows
            .iter()
            .map(route_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        sort_routes(&mut routes);
        Ok(routes)
    }

    async fn get_route(&self, name: &str) -> StoreResult<RouteRecord> {
        let mut conn = self.conn().await?;
        let row = sqlx::query(
            "SELECT name, priority, match_json, actions, coding, created_at, updated_at FROM routes WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| err(e, "route", &name))?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            what: "route",
            key: name.to_owned(),
        })?;
        route_from_row(&row)
    }

    async fn create_route(&self, route: &Route) -> StoreResult<RouteRecord> {
        check_route(route)?;
        let now = now();
        let mut conn = self.conn().await?;
        sqlx::query(
            "INSERT INTO routes (name, priority, match_json, actions, coding, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(&route.name)
        .bind(route.priority)
        .bind(Json(&route.matcher))
        .bind(Json(&route.actions))
        .bind(route.coding.map(AudioCoding::as_str))
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| err(e, "route", &route.name))?;
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
        let created_at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE routes SET name = $2, priority = $3, match_json = $4, actions = $5, coding = $6, updated_at = $7 \
             WHERE name = $1 RETURNING created_at",
        )
        .bind(name)
        .bind(&route.name)
        .bind(route.priority)
        .bind(Json(&route.matcher))
        .bind(Json(&route.actions))
        .bind(route.coding.map(AudioCoding::as_str))
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| err(e, "route", &route.name))?;
        let created_at = created_at.ok_or_else(|| StoreError::NotFound {
            what: "route",
            key: name.to_owned(),
        })?;
        Ok(RouteRecord {
            route: route.clone(),
            created_at,
            updated_at: now,
        })
    }

    async fn delete_route(&self, name: &str) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done = sqlx::query("DELETE FROM routes WHERE name = $1")
            .bind(name)
            .execute(&mut *conn)
            .await
            .map_err(|e| err(e, "route", &name))?;
        if done.rows_affected() == 0 {
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
            None => sqlx::query("SELECT kind, name, config, created_at, updated_at FROM nodes ORDER BY kind, name"),
            Some(kind) => sqlx::query(
                "SELECT kind, name, config, created_at, updated_at FROM nodes WHERE kind = $1 ORDER BY name",
            )
            .bind(kind.as_str()),
        };
        let rows = query
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| err(e, "node", &""))?;
        rows.iter().map(node_from_row).collect()
    }

    async fn get_node(&self, node: &NodeRef) -> StoreResult<NodeRecord> {
        let mut conn = self.conn().await?;
        let row = sqlx::query(
            "SELECT kind, name, config, created_at, updated_at FROM nodes WHERE kind = $1 AND name = $2",
        )
        .bind(node.kind().as_str())
        .bind(node.name())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| err(e, "node", node))?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            what: "node",
            key: node.to_string(),
        })?;
        node_from_row(&row)
    }

    async fn create_node(&self, node: &NodeRef, config: &Value) -> StoreResult<NodeRecord> {
        check_persistent_node(node)?;
        let now = now();
        let mut conn = self.conn().await?;
        sqlx::query(
            "INSERT INTO nodes (kind, name, config, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(node.kind().as_str())
        .bind(node.name())
        .bind(Json(config))
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| err(e, "node", node))?;
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
        let created_at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE nodes SET config = $3, updated_at = $4 WHERE kind = $1 AND name = $2 RETURNING created_at",
        )
        .bind(node.kind().as_str())
        .bind(node.name())
        .bind(Json(config))
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| err(e, "node", node))?;
        let created_at = created_at.ok_or_else(|| StoreError::NotFound {
            what: "node",
            key: node.to_string(),
        })?;
        Ok(NodeRecord {
            node: node.clone(),
            config: config.clone(),
            created_at,
            updated_at: now,
        })
    }

    async fn delete_node(&self, node: &NodeRef) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done = sqlx::query("DELETE FROM nodes WHERE kind = $1 AND name = $2")
            .bind(node.kind().as_str())
            .bind(node.name())
            .execute(&mut *conn)
            .await
            .map_err(|e| err(e, "node", node))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "node",
                key: node.to_string(),
            });
        }
        Ok(())
    }

    async fn list_patches(&self) -> StoreResult<Vec<PatchRecord>> {
        let mut conn = self.conn().await?;
        let rows =
            sqlx::query("SELECT id, source, sink, gain_db, created_at FROM patches ORDER BY id")
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| err(e, "patch", &""))?;
        rows.iter().map(patch_from_row).collect()
    }

    async fn get_patch(&self, id: i64) -> StoreResult<PatchRecord> {
        let mut conn = self.conn().await?;
        let row =
            sqlx::query("SELECT id, source, sink, gain_db, created_at FROM patches WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| err(e, "patch", &id))?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            what: "patch",
            key: id.to_string(),
        })?;
        patch_from_row(&row)
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
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO patches (source, sink, gain_db, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(source.to_string())
        .bind(sink.to_string())
        .bind(gain_db)
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| err(e, "patch", &patch_key(source, sink)))?;
        Ok(PatchRecord {
            id,
            source: source.clone(),
            sink: sink.clone(),
            gain_db,
            created_at: now,
        })
    }

    async fn update_patch_gain(&self, id: i64, gain_db: f32) -> StoreResult<PatchRecord> {
        check_patch_gain(gain_db)?;
        let mut conn = self.conn().await?;
        let row = sqlx::query("UPDATE patches SET gain_db = $2 WHERE id = $1 RETURNING id, source, sink, gain_db, created_at")
            .bind(id)
            .bind(gain_db)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| err(e, "patch", &id))?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            what: "patch",
            key: id.to_string(),
        })?;
        patch_from_row(&row)
    }

    async fn delete_patch(&self, id: i64) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done = sqlx::query("DELETE FROM patches WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(|e| err(e, "patch", &id))?;
        if done.rows_affected() == 0 {
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
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO api_tokens (name, scope, token_sha256, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(scope.as_str())
        .bind(token::hash(&clear))
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| err(e, "token", &name))?;
        Ok(NewToken {
            info: TokenInfo {
                id,
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
        let row = sqlx::query(
            "SELECT id, name, scope, created_at, last_used_at FROM api_tokens WHERE token_sha256 = $1",
        )
        .bind(token::hash(token))
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| err(e, "token", &""))?;
        let Some(row) = row else { return Ok(None) };
        let mut info = token_from_row(&row)?;
        let now = now();
        if token::needs_touch(info.last_used_at, now) {
            // The condition makes concurrent verifications (or other gateway instances)
            // write at most once per interval. A failure here must not refuse a valid
            // token: it is logged and the request goes on.
            let touched = sqlx::query(
                "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at <= $3)",
            )
            .bind(now)
            .bind(info.id)
            .bind(now - token::TOUCH_INTERVAL)
            .execute(&mut *conn)
            .await;
            match touched {
                Ok(done) if done.rows_affected() == 1 => info.last_used_at = Some(now),
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
        let rows = sqlx::query(
            "SELECT id, name, scope, created_at, last_used_at FROM api_tokens ORDER BY name",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| err(e, "token", &""))?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, name: &str) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done = sqlx::query("DELETE FROM api_tokens WHERE name = $1")
            .bind(name)
            .execute(&mut *conn)
            .await
            .map_err(|e| err(e, "token", &name))?;
        if done.rows_affected() == 0 {
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
            .map(CdrValues::new)
            .collect::<StoreResult<Vec<_>>>()?;
        let mut conn = self.conn().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(|e| err(e, "CDR", &""))?;
        for chunk in values.chunks(CDR_ROWS_PER_STATEMENT) {
            let mut insert =
                QueryBuilder::<Postgres>::new(format!("INSERT INTO cdrs ({CDR_COLUMNS}) "));
            insert.push_values(chunk, |mut row, cdr| {
                row.push_bind(cdr.uuid)
                    .push_bind(cdr.started_at)
                    .push_bind(cdr.ended_at)
                    .push_bind(cdr.duration_ms)
                    .push_bind(cdr.caller_rate_hz)
                    .push_bind(cdr.ended_by)
                    .push_bind(cdr.end_reason)
                    .push_bind(cdr.frames_in)
                    .push_bind(cdr.frames_out)
                    .push_bind(cdr.uplink_gaps)
                    .push_bind(cdr.downlink_underruns)
                    .push_bind(cdr.max_jitter_ms)
                    .push_bind(cdr.route)
                    .push_bind(cdr.patches)
                    .push_bind(&cdr.peer);
            });
            insert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(|e| err(e, "CDR", &""))?;
        }
        tx.commit().await.map_err(|e| err(e, "CDR", &""))?;
        Ok(())
    }

    async fn write_cdrs(&self, instance: &str, writes: &[CdrWrite]) -> StoreResult<u64> {
        check_instance(instance)?;
        if writes.is_empty() {
            return Ok(0);
        }
        let values = writes
            .iter()
            .map(WriteValues::new)
            .collect::<StoreResult<Vec<_>>>()?;
        let mut conn = self.conn().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(|e| err(e, "CDR", &""))?;
        let mut closed = 0;
        for write in &values {
            match write {
                WriteValues::Open(cdr) => insert_cdr(&mut tx, instance, cdr, true).await?,
                WriteValues::Refresh(cdrs) => refresh_cdrs(&mut tx, instance, cdrs).await?,
                WriteValues::Close(cdr) => close_cdr(&mut tx, instance, cdr).await?,
                WriteValues::CloseOrphans | WriteValues::CloseStale(_) => {
                    let mut close = QueryBuilder::<Postgres>::new(
                        "UPDATE cdrs SET is_open = FALSE, ended_by = ",
                    );
                    close
                        .push_bind(EndedBy::Interrupted.as_str())
                        .push(", end_reason = ")
                        .push_bind(INTERRUPTED_REASON)
                        .push(" WHERE is_open");
                    match write {
                        WriteValues::CloseStale(before) => {
                            close.push(" AND ended_at < ").push_bind(*before)
                        }
                        _ => close.push(" AND instance = ").push_bind(instance),
                    };
                    let done = close
                        .build()
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| err(e, "CDR", &""))?;
                    closed += done.rows_affected();
                }
            }
        }
        tx.commit().await.map_err(|e| err(e, "CDR", &""))?;
        Ok(closed)
    }

    async fn query_cdrs(&self, filter: &CdrFilter) -> StoreResult<CdrPage> {
        let limit = filter.page_size();
        let mut query = QueryBuilder::<Postgres>::new(format!(
            "SELECT id, instance, is_open, {CDR_COLUMNS} FROM cdrs WHERE 1 = 1"
        ));
        if !filter.include_open {
            query.push(" AND NOT is_open");
        }
        if let Some(uuid) = filter.uuid {
            query.push(" AND uuid = ").push_bind(uuid);
        }
        if let Some(from) = filter.from {
            query.push(" AND ended_at >= ").push_bind(from);
        }
        if let Some(to) = filter.to {
            query.push(" AND ended_at < ").push_bind(to);
        }
        if let Some(cursor) = filter.cursor {
            let ended_at =
                DateTime::from_timestamp_micros(cursor.ended_at_us).ok_or_else(|| {
                    StoreError::Invalid {
                        what: "cursor",
                        reason: format!("{cursor} is out of range"),
                    }
                })?;
            query
                .push(" AND (ended_at, id) < (")
                .push_bind(ended_at)
                .push(", ")
                .push_bind(cursor.id)
                .push(")");
        }
        query
            .push(" ORDER BY ended_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let mut conn = self.conn().await?;
        let rows = query
            .build()
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| err(e, "CDR", &""))?;
        let items = rows
            .iter()
            .map(cdr_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(CdrPage::from_rows(items, limit))
    }

    async fn next_counter(&self, name: &str, by: i64) -> StoreResult<i64> {
        check_counter(name, by)?;
        let mut conn = self.conn().await?;
        sqlx::query_scalar(
            "INSERT INTO counters (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value RETURNING value",
        )
        .bind(name)
        .bind(by)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| err(e, "counter", &name))
    }

    async fn get_counter(&self, name: &str) -> StoreResult<Option<i64>> {
        let mut conn = self.conn().await?;
        sqlx::query_scalar("SELECT value FROM counters WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| err(e, "counter", &name))
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
        sqlx::query_scalar(
            "INSERT INTO dns_sequences (domain, next_sequence) VALUES ($1, $2 + $3) \
             ON CONFLICT (domain) DO UPDATE \
             SET next_sequence = GREATEST(dns_sequences.next_sequence, $2) + $3 \
             RETURNING next_sequence - $3",
        )
        .bind(domain)
        .bind(at_least)
        .bind(count)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| err(e, "DNS sequence", &domain))
    }

    async fn next_dns_sequence(&self, domain: &str) -> StoreResult<Option<i64>> {
        let mut conn = self.conn().await?;
        sqlx::query_scalar("SELECT next_sequence FROM dns_sequences WHERE domain = $1")
            .bind(domain)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| err(e, "DNS sequence", &domain))
    }
}
