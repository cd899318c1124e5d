//! The store suite: one set of tests written against `Arc<dyn Store>`, run against
//! SQLite (a temporary file) and PostgreSQL (the local server), as `sqlite::<test>`
//! and `postgres::<test>`.
//!
//! PostgreSQL: `TELEPATCH_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) names a server and an existing database
//! to connect to; every test creates its own database `telepatch_test_<random>` there
//! and drops it afterwards, so tests and runs do not interfere. The PostgreSQL tests
//! FAIL, they do not skip, when the server cannot be reached: CI provides one.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::model::{
    AudioCoding, NodeKind, NodeRef, PortRef, RecordChannels, Route, RouteAction, RouteMatch,
};
use api::store::{
    Backend, CDR_PAGE_DEFAULT, CDR_PAGE_MAX, CdrFilter, CdrQueue, CdrQueueConfig, CdrRecord,
    CdrWrite, EndedBy, INTERRUPTED_REASON, Scope, Store, StoreError, StoreOptions, StoredCdr,
    open_store, open_store_with,
};
use chrono::{DateTime, TimeDelta, Utc};
use futures_util::FutureExt;
use serde_json::json;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

/// One test's database: a temporary SQLite file, or a fresh PostgreSQL database.
struct TestDb {
    kind: Kind,
    url: String,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<PgAdmin>,
}

/// A connection to the server's admin database, to create and drop test databases.
struct PgAdmin {
    pool: sqlx::PgPool,
    database: String,
}

fn postgres_admin_url() -> String {
    std::env::var("TELEPATCH_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// `url` with its database (path) replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).expect("a postgres:// URL");
    let path_start = base[authority_start..]
        .find('/')
        .map(|i| i + authority_start)
        .unwrap_or(base.len());
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

impl TestDb {
    async fn new(kind: Kind) -> TestDb {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("store.db").display());
                TestDb {
                    kind,
                    url,
                    _dir: Some(dir),
                    postgres: None,
                }
            }
            Kind::Postgres => {
                let admin_url = postgres_admin_url();
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(&admin_url)
                    .await
                    .unwrap_or_else(|error| {
                        panic!(
                            "PostgreSQL is not reachable at {admin_url} ({error}). Start it \
                             (pg_ctlcluster --skip-systemctl-redirect <version> main start) or \
                             set TELEPATCH_TEST_POSTGRES_URL."
                        )
                    });
                let database = format!("telepatch_test_{}", Uuid::new_v4().simple());
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE \"{database}\""
                )))
                .execute(&pool)
                .await
                .unwrap();
                let url = with_database(&admin_url, &database);
                TestDb {
                    kind,
                    url,
                    _dir: None,
                    postgres: Some(PgAdmin { pool, database }),
                }
            }
        }
    }

    async fn open(&self) -> Arc<dyn Store> {
        open_store(&self.url).await.unwrap()
    }

    async fn cleanup(self) {
        if let Some(admin) = self.postgres {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                admin.database
            )))
            .execute(&admin.pool)
            .await
            .unwrap();
            admin.pool.close().await;
        }
    }

    /// The token hashes as stored, read behind the store's back.
    async fn stored_token_hashes(&self) -> Vec<String> {
        let sql = "SELECT token_sha256 FROM api_tokens ORDER BY id";
        match self.kind {
            Kind::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
            }
            Kind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
            }
        }
    }

    /// Moves a token's `last_used_at` two minutes into the past.
    async fn age_token_use(&self, name: &str) {
        match self.kind {
            Kind::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query(
                    "UPDATE api_tokens SET last_used_at = last_used_at - 120000000 WHERE name = $1",
                )
                .bind(name)
                .execute(&mut conn)
                .await
                .unwrap();
            }
            Kind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query(
                    "UPDATE api_tokens SET last_used_at = last_used_at - interval '2 minutes' WHERE name = $1",
                )
                .bind(name)
                .execute(&mut conn)
                .await
                .unwrap();
            }
        }
    }
}

/// Runs one test against a fresh database of `kind`, dropping the database even when
/// the test panics.
async fn run(kind: Kind, test: impl AsyncFnOnce(&TestDb)) {
    let db = TestDb::new(kind).await;
    let outcome = AssertUnwindSafe(test(&db)).catch_unwind().await;
    db.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::run(super::Kind::Sqlite, super::$test).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::run(super::Kind::Postgres, super::$test).await;
                }
            )*
        }
    };
}

suite!(
    routes_crud_order_and_round_trip,
    nodes_crud,
    patches_crud,
    tokens_create_verify_revoke,
    cdrs_batch_insert_and_keyset_paging,
    cdrs_open_refresh_close_and_interrupted,
    counters_are_atomic_under_concurrency,
    dns_sequences_are_reserved_in_disjoint_increasing_blocks,
    data_survives_a_restart,
    unreachable_database_fails_fast,
    outage_is_unavailable_then_recovers,
);

fn uuid(text: &str) -> Uuid {
    Uuid::parse_str(text).unwrap()
}

fn port(text: &str) -> PortRef {
    text.parse().unwrap()
}

fn node(text: &str) -> NodeRef {
    text.parse().unwrap()
}

fn route(name: &str, priority: i32, matcher: RouteMatch) -> Route {
    Route {
        name: name.into(),
        priority,
        matcher,
        actions: vec![],
        coding: None,
    }
}

/// Asserts a time the store just stamped is now-ish (the clock is the test's own).
fn assert_recent(at: DateTime<Utc>) {
    let age = Utc::now() - at;
    assert!(
        age >= TimeDelta::zero() && age < TimeDelta::seconds(60),
        "{at} is not recent"
    );
}

const CALLER: &str = "40325ec2-5efd-4bd3-805f-53576e581d13";

async fn routes_crud_order_and_round_trip(db: &TestDb) {
    let store = db.open().await;
    assert!(store.list_routes().await.unwrap().is_empty());

    let full = Route {
        name: "phone-in".into(),
        priority: 0,
        matcher: RouteMatch::UuidPrefix("4032".into()),
        actions: vec![
            RouteAction::Record {
                path: "{uuid}-{start}.wav".into(),
                channels: RecordChannels::Both,
            },
            RouteAction::Play {
                file: "welcome.wav".into(),
                looped: true,
                gain_db: -6.5,
            },
            RouteAction::Patch {
                voice_to: vec![port("recorder:show.in"), port("conference:desk.in3")],
                ear_from: vec![port("player:hold.out")],
                gain_db: -3.25,
            },
            RouteAction::Conference {
                name: "desk".into(),
            },
        ],
        coding: Some(AudioCoding::Ulaw),
    };
    let created = store.create_route(&full).await.unwrap();
    assert_eq!(created.route, full);
    assert_eq!(created.created_at, created.updated_at);
    assert_recent(created.created_at);
    let read = store.get_route("phone-in").await.unwrap();
    assert_eq!(
        read, created,
        "what is read back equals what was stored, times included"
    );

    for r in [
        route("default", 0, RouteMatch::Default),
        route("zeta", 0, RouteMatch::Default),
        route("alpha", 0, RouteMatch::Default),
        route("urgent", 5, RouteMatch::Default),
        route("exact", 0, RouteMatch::Uuid(uuid(CALLER))),
        route("long-prefix", 0, RouteMatch::UuidPrefix("40325ec2".into())),
        route("low", -1, RouteMatch::Uuid(uuid(CALLER))),
    ] {
        store.create_route(&r).await.unwrap();
    }
    let names: Vec<String> = store
        .list_routes()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.route.name)
        .collect();
    assert_eq!(
        names,
        [
            "urgent",
            "exact",
            "long-prefix",
            "phone-in",
            "alpha",
            "default",
            "zeta",
            "low"
        ],
        "priority desc, then specificity desc, then name"
    );

    let duplicate = store
        .create_route(&route("default", 9, RouteMatch::Default))
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict { what: "route", ref key }) if key == "default")
    );

    // Replace under a new name: the creation time is kept.
    let mut renamed = full.clone();
    renamed.name = "phone-in-2".into();
    renamed.priority = 3;
    renamed.actions.truncate(1);
    let replaced = store.replace_route("phone-in", &renamed).await.unwrap();
    assert_eq!(replaced.created_at, created.created_at);
    assert!(replaced.updated_at >= created.updated_at);
    assert_eq!(store.get_route("phone-in-2").await.unwrap(), replaced);
    assert!(matches!(
        store.get_route("phone-in").await,
        Err(StoreError::NotFound { what: "route", .. })
    ));

    let taken = store
        .replace_route("phone-in-2", &route("zeta", 0, RouteMatch::Default))
        .await;
    assert!(
        matches!(taken, Err(StoreError::Conflict { .. })),
        "{taken:?}"
    );
    let missing = store
        .replace_route("nope", &route("nope", 0, RouteMatch::Default))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
    let invalid = store
        .create_route(&route("bad", 0, RouteMatch::UuidPrefix("XYZ".into())))
        .await;
    assert!(
        matches!(invalid, Err(StoreError::Invalid { what: "route", .. })),
        "{invalid:?}"
    );

    store.delete_route("zeta").await.unwrap();
    assert!(matches!(
        store.delete_route("zeta").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.list_routes().await.unwrap().len(), 7);
}

async fn nodes_crud(db: &TestDb) {
    let store = db.open().await;
    let hold = node("player:hold");
    let hold_config =
        json!({"file": "hold.wav", "loop": true, "gain_db": -3.5, "big": 9007199254740993u64});
    let created = store.create_node(&hold, &hold_config).await.unwrap();
    assert_eq!(created.config, hold_config);
    assert_recent(created.created_at);
    assert_eq!(store.get_node(&hold).await.unwrap(), created);

    let desk_config =
        json!({"members": [1, 2.5, "x"], "nested": {"none": null, "ü": "ünïcödé \"quoted\""}});
    store
        .create_node(&node("conference:desk"), &desk_config)
        .await
        .unwrap();
    store
        .create_node(&node("recorder:show"), &json!({"path": "show.wav"}))
        .await
        .unwrap();
    store
        .create_node(&node("player:announce"), &json!({}))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_node(&node("conference:desk"))
            .await
            .unwrap()
            .config,
        desk_config
    );

    let all: Vec<String> = store
        .list_nodes(None)
        .await
        .unwrap()
        .iter()
        .map(|n| n.node.to_string())
        .collect();
    assert_eq!(
        all,
        [
            "conference:desk",
            "player:announce",
            "player:hold",
            "recorder:show"
        ]
    );
    let players: Vec<String> = store
        .list_nodes(Some(NodeKind::Player))
        .await
        .unwrap()
        .iter()
        .map(|n| n.node.to_string())
        .collect();
    assert_eq!(players, ["player:announce", "player:hold"]);

    let duplicate = store.create_node(&hold, &json!({})).await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict { what: "node", ref key }) if key == "player:hold")
    );
    let call = store
        .create_node(&NodeRef::call(uuid(CALLER)), &json!({}))
        .await;
    assert!(
        matches!(call, Err(StoreError::Invalid { what: "node", .. })),
        "{call:?}"
    );

    let new_config = json!({"file": "other.wav"});
    let updated = store.update_node_config(&hold, &new_config).await.unwrap();
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.updated_at >= created.updated_at);
    assert_eq!(store.get_node(&hold).await.unwrap(), updated);
    let missing = store
        .update_node_config(&node("player:nope"), &new_config)
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );

    store.delete_node(&hold).await.unwrap();
    assert!(matches!(
        store.get_node(&hold).await,
        Err(StoreError::NotFound { what: "node", .. })
    ));
    assert!(matches!(
        store.delete_node(&hold).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn patches_crud(db: &TestDb) {
    let store = db.open().await;
    let voice = port(&format!("call:{CALLER}.voice"));
    let ear = port(&format!("call:{CALLER}.ear"));
    let show = port("recorder:show.in");
    let hold = port("player:hold.out");

    let first = store.create_patch(&voice, &show, -3.0).await.unwrap();
    assert_eq!(
        (&first.source, &first.sink, first.gain_db),
        (&voice, &show, -3.0)
    );
    assert_recent(first.created_at);
    let second = store.create_patch(&hold, &ear, 0.0).await.unwrap();
    assert!(second.id > first.id);

    let duplicate = store.create_patch(&voice, &show, 6.0).await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict { what: "patch", ref key }) if key.contains("recorder:show.in")),
        "{duplicate:?}"
    );
    let nan = store
        .create_patch(&voice, &port("recorder:other.in"), f32::NAN)
        .await;
    assert!(matches!(nan, Err(StoreError::Invalid { .. })), "{nan:?}");

    assert_eq!(
        store.list_patches().await.unwrap(),
        [first.clone(), second.clone()]
    );
    let louder = store.update_patch_gain(first.id, 1.5).await.unwrap();
    assert_eq!(louder.gain_db, 1.5);
    assert_eq!(louder.created_at, first.created_at);
    assert_eq!(store.get_patch(first.id).await.unwrap(), louder);

    store.delete_patch(first.id).await.unwrap();
    assert!(matches!(
        store.get_patch(first.id).await,
        Err(StoreError::NotFound { what: "patch", .. })
    ));
    assert!(matches!(
        store.update_patch_gain(first.id, 0.0).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete_patch(first.id).await,
        Err(StoreError::NotFound { .. })
    ));
    // Ids are not reused.
    let third = store.create_patch(&voice, &show, 0.0).await.unwrap();
    assert!(third.id > second.id);
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn tokens_create_verify_revoke(db: &TestDb) {
    let store = db.open().await;
    let admin = store.create_token("ops-admin", Scope::Admin).await.unwrap();
    let reader = store.create_token("grafana.ro", Scope::Read).await.unwrap();
    for token in [&admin.token, &reader.token] {
        assert!(token.starts_with("tp_") && token.len() == 46, "{token}");
        assert!(
            token[3..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
    assert_ne!(admin.token, reader.token);

    // Only SHA-256 hex of the tokens is in the database.
    assert_eq!(
        db.stored_token_hashes().await,
        [sha256_hex(&admin.token), sha256_hex(&reader.token)]
    );

    let verified = store.verify_token(&admin.token).await.unwrap().unwrap();
    assert_eq!(
        (verified.id, verified.name.as_str(), verified.scope),
        (admin.info.id, "ops-admin", Scope::Admin)
    );
    let first_use = verified.last_used_at.expect("the first use is recorded");
    assert_recent(first_use);
    assert_eq!(
        store
            .verify_token(&reader.token)
            .await
            .unwrap()
            .unwrap()
            .scope,
        Scope::Read
    );

    // Within a minute, uses are not written again.
    let again = store.verify_token(&admin.token).await.unwrap().unwrap();
    assert_eq!(again.last_used_at, Some(first_use));
    // After a minute they are.
    db.age_token_use("ops-admin").await;
    let later = store.verify_token(&admin.token).await.unwrap().unwrap();
    assert!(later.last_used_at.unwrap() >= first_use);
    let listed = store.list_tokens().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .find(|t| t.name == "ops-admin")
            .unwrap()
            .last_used_at,
        later.last_used_at
    );

    // Wrong, tampered and malformed tokens verify to nothing.
    let mut tampered = admin.token.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [
        tampered.as_str(),
        "tp_short",
        "",
        &admin.token[..45],
        &format!("{} ", admin.token),
    ] {
        assert_eq!(store.verify_token(bad).await.unwrap(), None, "{bad:?}");
    }

    let names: Vec<String> = listed.iter().map(|t| t.name.clone()).collect();
    assert_eq!(names, ["grafana.ro", "ops-admin"]);
    let listed_json = serde_json::to_string(&listed).unwrap();
    assert!(!listed_json.contains(&admin.token[3..]) && !listed_json.contains(&reader.token[3..]));

    let duplicate = store.create_token("ops-admin", Scope::Read).await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict { what: "token", .. })),
        "{duplicate:?}"
    );
    let bad_name = store.create_token("has space", Scope::Read).await;
    assert!(
        matches!(bad_name, Err(StoreError::Invalid { .. })),
        "{bad_name:?}"
    );

    store.revoke_token("ops-admin").await.unwrap();
    assert_eq!(store.verify_token(&admin.token).await.unwrap(), None);
    assert!(store.verify_token(&reader.token).await.unwrap().is_some());
    assert!(matches!(
        store.revoke_token("ops-admin").await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Microsecond-precise times, as the databases keep them.
fn at_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap()
}

const BASE_US: i64 = 1_750_000_000_000_000;

/// Record `i` of the test set: groups of three share an `ended_at` (so ties are broken
/// by id), ten records per UUID, every optional field both set and unset.
fn test_cdr(i: usize, uuids: &[Uuid]) -> CdrRecord {
    let ended_at = at_micros(BASE_US + (i as i64 / 3) * 1_000_003);
    let duration_ms = 1_000 + (i as u64 * 7919) % 600_000;
    CdrRecord {
        uuid: uuids[i % uuids.len()],
        started_at: ended_at - TimeDelta::milliseconds(duration_ms as i64),
        ended_at,
        duration_ms,
        caller_rate_hz: [8000, 16000, 48000][i % 3],
        ended_by: [EndedBy::Caller, EndedBy::Gateway, EndedBy::Error][i % 3],
        end_reason: format!("r{i}"),
        frames_in: i as u64 * 50,
        frames_out: i as u64 * 50 + 1,
        uplink_gaps: (i % 5) as u64,
        downlink_underruns: (i % 7) as u64,
        max_jitter_ms: i as f64 / 8.0 + 0.1,
        route: i.is_multiple_of(2).then(|| format!("route-{}", i % 4)),
        patches: (0..i % 3)
            .map(|p| format!("call:{}.voice -> recorder:r{p}.in", uuids[i % uuids.len()]))
            .collect(),
        peer: (!i.is_multiple_of(4)).then(|| SocketAddr::from(([127, 0, 0, 1], 40_000 + i as u16))),
    }
}

/// Walks every page of `filter`, checking the order as it goes.
async fn walk(store: &dyn Store, mut filter: CdrFilter) -> Vec<StoredCdr> {
    let mut seen = Vec::new();
    loop {
        let page = store.query_cdrs(&filter).await.unwrap();
        assert!(page.items.len() <= filter.page_size() as usize);
        seen.extend(page.items);
        match page.next_cursor {
            Some(cursor) => filter.cursor = Some(cursor),
            None => break,
        }
    }
    for pair in seen.windows(2) {
        let key = |c: &StoredCdr| (c.cdr.ended_at, c.id);
        assert!(
            key(&pair[0]) > key(&pair[1]),
            "newest first, strictly: {} then {}",
            pair[0].id,
            pair[1].id
        );
    }
    seen
}

fn reasons(cdrs: &[StoredCdr]) -> BTreeSet<String> {
    cdrs.iter().map(|c| c.cdr.end_reason.clone()).collect()
}

async fn cdrs_batch_insert_and_keyset_paging(db: &TestDb) {
    let store = db.open().await;
    let uuids: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
    let records: Vec<CdrRecord> = (0..1000).map(|i| test_cdr(i, &uuids)).collect();
    // Inserted in a scrambled order (a permutation: 7 is prime to 1000), so ids do not
    // follow ended_at.
    let scrambled: Vec<CdrRecord> = (0..1000).map(|i| records[(i * 7) % 1000].clone()).collect();
    store.insert_cdrs(&scrambled).await.unwrap();
    store.insert_cdrs(&[]).await.unwrap();

    // Walk everything 37 at a time while new calls keep finishing: rows inserted above
    // the cursor do not disturb the walk.
    let mut filter = CdrFilter {
        limit: Some(37),
        ..CdrFilter::default()
    };
    let mut seen = Vec::new();
    let mut later = 0;
    loop {
        let page = store.query_cdrs(&filter).await.unwrap();
        seen.extend(page.items);
        let newer: Vec<CdrRecord> = (0..3)
            .map(|_| {
                later += 1;
                CdrRecord {
                    end_reason: format!("later{later}"),
                    ended_at: Utc::now(),
                    ..records[0].clone()
                }
            })
            .collect();
        store.insert_cdrs(&newer).await.unwrap();
        match page.next_cursor {
            Some(cursor) => filter.cursor = Some(cursor),
            None => break,
        }
    }
    assert_eq!(seen.len(), 1000, "every row exactly once");
    assert_eq!(
        seen.iter().map(|c| c.id).collect::<HashSet<_>>().len(),
        1000
    );
    for pair in seen.windows(2) {
        assert!((pair[0].cdr.ended_at, pair[0].id) > (pair[1].cdr.ended_at, pair[1].id));
    }
    let mut read_back: Vec<CdrRecord> = seen.iter().map(|c| c.cdr.clone()).collect();
    read_back.sort_by_key(|c| c.end_reason[1..].parse::<usize>().unwrap());
    assert_eq!(read_back, records, "every field round-trips");

    // Time range [from, to) on ended_at.
    let from = records[300].ended_at;
    let to = records[700].ended_at;
    let expected: BTreeSet<String> = records
        .iter()
        .filter(|c| c.ended_at >= from && c.ended_at < to)
        .map(|c| c.end_reason.clone())
        .collect();
    assert_eq!(
        expected.len(),
        399,
        "records 300..=698 (699 shares 700's end)"
    );
    let range = CdrFilter {
        from: Some(from),
        to: Some(to),
        limit: Some(50),
        ..CdrFilter::default()
    };
    assert_eq!(reasons(&walk(&*store, range.clone()).await), expected);

    // One UUID, alone and within the range.
    let one = uuids[7];
    let expected: BTreeSet<String> = records
        .iter()
        .filter(|c| c.uuid == one)
        .map(|c| c.end_reason.clone())
        .collect();
    assert_eq!(expected.len(), 10);
    let by_uuid = CdrFilter {
        uuid: Some(one),
        limit: Some(3),
        ..CdrFilter::default()
    };
    assert_eq!(reasons(&walk(&*store, by_uuid).await), expected);
    let expected: BTreeSet<String> = records
        .iter()
        .filter(|c| c.uuid == one && c.ended_at >= from && c.ended_at < to)
        .map(|c| c.end_reason.clone())
        .collect();
    assert_eq!(
        reasons(
            &walk(
                &*store,
                CdrFilter {
                    uuid: Some(one),
                    ..range
                }
            )
            .await
        ),
        expected
    );
    let nobody = CdrFilter {
        uuid: Some(Uuid::new_v4()),
        ..CdrFilter::default()
    };
    let empty = store.query_cdrs(&nobody).await.unwrap();
    assert!(empty.items.is_empty() && empty.next_cursor.is_none());

    // Page sizes: default, clamped maximum.
    let total = 1000 + later;
    let page = store.query_cdrs(&CdrFilter::default()).await.unwrap();
    assert_eq!(page.items.len(), CDR_PAGE_DEFAULT as usize);
    let page = store
        .query_cdrs(&CdrFilter {
            limit: Some(5000),
            ..CdrFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), CDR_PAGE_MAX as usize);
    assert!(total > CDR_PAGE_MAX as usize && page.next_cursor.is_some());
    assert_eq!(
        walk(
            &*store,
            CdrFilter {
                limit: Some(1000),
                ..CdrFilter::default()
            }
        )
        .await
        .len(),
        total
    );

    // A batch with one invalid record is refused whole.
    let mut bad = records[1].clone();
    bad.max_jitter_ms = f64::NAN;
    let refused = store.insert_cdrs(&[records[0].clone(), bad]).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid { .. })),
        "{refused:?}"
    );
    assert_eq!(
        walk(
            &*store,
            CdrFilter {
                limit: Some(1000),
                ..CdrFilter::default()
            }
        )
        .await
        .len(),
        total
    );
}

/// Every record, open ones included, of call `uuid`.
async fn records_of(store: &dyn Store, uuid: Uuid) -> Vec<StoredCdr> {
    let filter = CdrFilter {
        uuid: Some(uuid),
        include_open: true,
        ..CdrFilter::default()
    };
    walk(store, filter).await
}

/// The one record of call `uuid`.
async fn record_of(store: &dyn Store, uuid: Uuid) -> StoredCdr {
    let mut records = records_of(store, uuid).await;
    assert_eq!(records.len(), 1, "one record for {uuid}: {records:?}");
    records.remove(0)
}

async fn cdrs_open_refresh_close_and_interrupted(db: &TestDb) {
    let store = db.open().await;
    let uuids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    // Call `i` as known `so_far_ms` after it was admitted.
    let live = |i: usize, so_far_ms: u64| {
        let started_at = at_micros(BASE_US + i as i64 * 1_000_003);
        CdrRecord {
            uuid: uuids[i],
            started_at,
            ended_at: started_at + TimeDelta::milliseconds(so_far_ms as i64),
            duration_ms: so_far_ms,
            caller_rate_hz: 8000,
            // An open record is stored as interrupted whatever it says.
            ended_by: EndedBy::Caller,
            end_reason: "not yet".into(),
            frames_in: so_far_ms / 20,
            frames_out: so_far_ms / 20 + 1,
            uplink_gaps: 1,
            downlink_underruns: 2,
            max_jitter_ms: 0.5,
            route: Some("r".into()),
            patches: vec![format!("call:{}.voice -> recorder:r.in", uuids[i])],
            peer: Some(SocketAddr::from(([127, 0, 0, 1], 40_000))),
        }
    };
    let opened = store
        .write_cdrs(
            "gw-a",
            &[
                CdrWrite::Open(live(0, 0)),
                CdrWrite::Open(live(1, 0)),
                CdrWrite::Open(live(2, 0)),
            ],
        )
        .await
        .unwrap();
    assert_eq!(opened, 0);
    store
        .write_cdrs("gw-b", &[CdrWrite::Open(live(3, 0))])
        .await
        .unwrap();

    // Open records are hidden unless asked for.
    assert!(walk(&*store, CdrFilter::default()).await.is_empty());
    let all = CdrFilter {
        include_open: true,
        ..CdrFilter::default()
    };
    let open = walk(&*store, all.clone()).await;
    assert_eq!(open.len(), 4);
    for record in &open {
        assert!(record.open);
        assert_eq!(record.cdr.ended_by, EndedBy::Interrupted);
        assert_eq!(record.cdr.end_reason, INTERRUPTED_REASON);
        let i = uuids.iter().position(|u| *u == record.cdr.uuid).unwrap();
        assert_eq!(record.instance, if i == 3 { "gw-b" } else { "gw-a" });
        let expected = live(i, 0);
        assert_eq!(record.cdr.started_at, expected.started_at);
        assert_eq!(record.cdr.route, expected.route);
        assert_eq!(record.cdr.peer, expected.peer);
    }
    let id_of_0 = record_of(&*store, uuids[0]).await.id;

    // One refresh updates all of gw-a's calls, and nothing of gw-b's (call 3 is not
    // gw-a's, whatever gw-a says).
    store
        .write_cdrs(
            "gw-a",
            &[CdrWrite::Refresh(vec![
                live(0, 5_000),
                live(1, 6_000),
                live(2, 7_000),
                live(3, 9_999),
            ])],
        )
        .await
        .unwrap();
    for (i, so_far) in [(0, 5_000), (1, 6_000), (2, 7_000), (3, 0)] {
        let record = record_of(&*store, uuids[i]).await;
        let expected = live(i, so_far);
        assert!(record.open);
        assert_eq!(record.cdr.duration_ms, so_far, "call {i}");
        assert_eq!(record.cdr.ended_at, expected.ended_at, "call {i}");
        assert_eq!(record.cdr.frames_in, expected.frames_in, "call {i}");
        assert_eq!(record.cdr.frames_out, expected.frames_out, "call {i}");
        assert_eq!(record.cdr.patches, expected.patches, "call {i}");
        assert_eq!(record.cdr.ended_by, EndedBy::Interrupted);
    }

    // The normal end completes the same record; a late refresh never reopens it.
    let mut end = live(0, 8_000);
    end.end_reason = "the caller hung up".into();
    store
        .write_cdrs(
            "gw-a",
            &[
                CdrWrite::Close(end.clone()),
                CdrWrite::Refresh(vec![live(0, 9_000)]),
            ],
        )
        .await
        .unwrap();
    let record = record_of(&*store, uuids[0]).await;
    assert_eq!(
        record.id, id_of_0,
        "the open record was completed, not replaced"
    );
    assert!(!record.open);
    assert_eq!(record.cdr, end);
    assert_eq!(record.instance, "gw-a");

    // gw-a starts again after a crash: it closes its own open records, not gw-b's.
    let closed = store
        .write_cdrs("gw-a", &[CdrWrite::CloseOrphans])
        .await
        .unwrap();
    assert_eq!(closed, 2);
    for (i, so_far) in [(1, 6_000), (2, 7_000)] {
        let record = record_of(&*store, uuids[i]).await;
        let expected = live(i, so_far);
        assert!(!record.open, "call {i}");
        assert_eq!(record.cdr.ended_by, EndedBy::Interrupted);
        assert_eq!(record.cdr.end_reason, INTERRUPTED_REASON);
        assert_eq!(record.cdr.duration_ms, so_far);
        assert_eq!(record.cdr.ended_at, expected.ended_at);
        assert_eq!(record.cdr.frames_in, expected.frames_in);
    }
    assert!(
        record_of(&*store, uuids[3]).await.open,
        "gw-b's call is not gw-a's"
    );
    assert_eq!(
        record_of(&*store, uuids[0]).await.cdr.ended_by,
        EndedBy::Caller,
        "a finished record is left alone"
    );
    let again = store
        .write_cdrs("gw-a", &[CdrWrite::CloseOrphans])
        .await
        .unwrap();
    assert_eq!(again, 0);

    // gw-b never comes back: whoever notices closes its record once it is stale.
    let last_refresh = live(3, 0).ended_at;
    let not_yet = store
        .write_cdrs(
            "gw-a",
            &[CdrWrite::CloseStale {
                before: last_refresh,
            }],
        )
        .await
        .unwrap();
    assert_eq!(not_yet, 0);
    assert!(record_of(&*store, uuids[3]).await.open);
    let stale = store
        .write_cdrs(
            "gw-a",
            &[CdrWrite::CloseStale {
                before: last_refresh + TimeDelta::microseconds(1),
            }],
        )
        .await
        .unwrap();
    assert_eq!(stale, 1);
    let record = record_of(&*store, uuids[3]).await;
    assert!(!record.open);
    assert_eq!(record.cdr.ended_by, EndedBy::Interrupted);
    assert_eq!(record.instance, "gw-b");

    // gw-b was only cut off: its call's real end still completes that record.
    let mut end = live(3, 700_000);
    end.ended_by = EndedBy::Gateway;
    end.end_reason = "hangup requested".into();
    store
        .write_cdrs("gw-b", &[CdrWrite::Close(end.clone())])
        .await
        .unwrap();
    assert_eq!(record_of(&*store, uuids[3]).await.cdr, end);

    // A close whose open never reached the database writes the whole record.
    let mut end = live(4, 1_234);
    end.ended_by = EndedBy::Error;
    store
        .write_cdrs("gw-a", &[CdrWrite::Close(end.clone())])
        .await
        .unwrap();
    let record = record_of(&*store, uuids[4]).await;
    assert_eq!((record.cdr, record.open), (end, false));

    let finished = walk(&*store, CdrFilter::default()).await;
    assert_eq!(finished.len(), 5);
    assert_eq!(walk(&*store, all).await.len(), 5);

    // A bad instance name is refused before anything is written.
    for bad in ["", "has space", &"x".repeat(65)] {
        let refused = store.write_cdrs(bad, &[CdrWrite::Open(live(1, 0))]).await;
        assert!(
            matches!(refused, Err(StoreError::Invalid { .. })),
            "{bad:?}: {refused:?}"
        );
    }
    assert_eq!(records_of(&*store, uuids[1]).await.len(), 1);
}

async fn counters_are_atomic_under_concurrency(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.get_counter("aodns.seq").await.unwrap(), None);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..25 {
                    got.push(store.next_counter("aodns.seq", 1).await.unwrap());
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=500).collect::<Vec<i64>>(),
        "each caller got a distinct value, none skipped"
    );
    assert_eq!(store.get_counter("aodns.seq").await.unwrap(), Some(500));

    assert_eq!(store.next_counter("block", 1000).await.unwrap(), 1000);
    assert_eq!(store.next_counter("block", 1000).await.unwrap(), 2000);
    assert_eq!(store.next_counter("block", 0).await.unwrap(), 2000);
    assert!(matches!(
        store.next_counter("block", -1).await,
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        store.next_counter("", 1).await,
        Err(StoreError::Invalid { .. })
    ));
}

async fn dns_sequences_are_reserved_in_disjoint_increasing_blocks(db: &TestDb) {
    let store = db.open().await;
    let music = "music.example.com.";
    assert_eq!(store.next_dns_sequence(music).await.unwrap(), None);
    assert_eq!(store.reserve_dns_sequences(music, 0, 100).await.unwrap(), 0);
    assert_eq!(store.next_dns_sequence(music).await.unwrap(), Some(100));
    assert_eq!(
        store.reserve_dns_sequences(music, 0, 100).await.unwrap(),
        100
    );
    // A broadcast that ran past its block while the database was away moves it on.
    assert_eq!(
        store.reserve_dns_sequences(music, 5000, 10).await.unwrap(),
        5000
    );
    assert_eq!(store.next_dns_sequence(music).await.unwrap(), Some(5010));
    // A lower floor never moves it back.
    assert_eq!(
        store.reserve_dns_sequences(music, 10, 1).await.unwrap(),
        5010
    );
    // Domains are independent (and compared exactly: the gateway normalizes them).
    assert_eq!(
        store
            .reserve_dns_sequences("talk.example.com.", 7, 3)
            .await
            .unwrap(),
        7
    );
    assert_eq!(
        store.next_dns_sequence("Music.example.com.").await.unwrap(),
        None
    );

    // Concurrent reservations never overlap and leave no hole.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut starts = Vec::new();
                for _ in 0..10 {
                    starts.push(store.reserve_dns_sequences("busy.", 0, 7).await.unwrap());
                }
                starts
            })
        })
        .collect();
    let mut starts = Vec::new();
    for task in tasks {
        starts.extend(task.await.unwrap());
    }
    starts.sort_unstable();
    assert_eq!(starts, (0..200).map(|k| k * 7).collect::<Vec<i64>>());

    for (domain, at_least, count) in [
        ("", 0, 1),
        (&"x".repeat(256)[..], 0, 1),
        ("a.", -1, 1),
        ("a.", 1 << 62 | 1, 1),
        ("a.", 0, 0),
        ("a.", 0, (1 << 20) + 1),
    ] {
        assert!(
            matches!(
                store.reserve_dns_sequences(domain, at_least, count).await,
                Err(StoreError::Invalid { .. })
            ),
            "{domain:?} {at_least} {count}"
        );
    }

    // Reservations survive reopening the database.
    store.close().await;
    drop(store);
    let store = db.open().await;
    assert_eq!(store.next_dns_sequence(music).await.unwrap(), Some(5011));
    assert_eq!(
        store.reserve_dns_sequences(music, 0, 64).await.unwrap(),
        5011
    );
}

async fn data_survives_a_restart(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(
        store.backend(),
        if db.kind == Kind::Sqlite {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    );
    store.ping().await.unwrap();
    let kept_route = store
        .create_route(&route("keep", 1, RouteMatch::Default))
        .await
        .unwrap();
    let node_record = store
        .create_node(&node("player:hold"), &json!({"file": "hold.wav"}))
        .await
        .unwrap();
    let patch = store
        .create_patch(&port("player:hold.out"), &port("recorder:show.in"), -1.0)
        .await
        .unwrap();
    let token = store.create_token("keeper", Scope::Admin).await.unwrap();
    let cdr = test_cdr(0, &[Uuid::new_v4()]);
    store.insert_cdrs(std::slice::from_ref(&cdr)).await.unwrap();
    store.next_counter("seq", 41).await.unwrap();

    store.close().await;
    let closed = store.list_routes().await;
    assert!(
        matches!(closed, Err(StoreError::Unavailable { .. })),
        "{closed:?}"
    );
    assert!(store.ping().await.unwrap_err().is_unavailable());
    drop(store);

    let store = db.open().await;
    assert_eq!(store.list_routes().await.unwrap(), [kept_route]);
    assert_eq!(store.list_nodes(None).await.unwrap(), [node_record]);
    assert_eq!(store.list_patches().await.unwrap(), [patch]);
    let verified = store.verify_token(&token.token).await.unwrap().unwrap();
    assert_eq!((verified.id, verified.scope), (token.info.id, Scope::Admin));
    let cdrs = store.query_cdrs(&CdrFilter::default()).await.unwrap();
    assert_eq!(
        cdrs.items.iter().map(|c| c.cdr.clone()).collect::<Vec<_>>(),
        [cdr]
    );
    assert_eq!(store.next_counter("seq", 1).await.unwrap(), 42);
}

async fn unreachable_database_fails_fast(db: &TestDb) {
    let url = match db.kind {
        // A directory that does not exist: the file cannot be created.
        Kind::Sqlite => format!("sqlite:///nonexistent-{}/store.db", Uuid::new_v4().simple()),
        // A loopback port nothing listens on.
        Kind::Postgres => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            drop(listener);
            format!("postgres://postgres@127.0.0.1:{port}/nothing")
        }
    };
    let start = Instant::now();
    let result = open_store(&url).await;
    let took = start.elapsed();
    assert!(
        matches!(result, Err(StoreError::Unavailable { .. })),
        "{:?}",
        result.err()
    );
    // The default acquire timeout is 2 s.
    assert!(took < Duration::from_secs(4), "connect took {took:?}");

    let unknown = open_store("mysql://localhost/x").await;
    assert!(
        matches!(unknown, Err(StoreError::Invalid { .. })),
        "{:?}",
        unknown.err()
    );
}

/// Makes the database unusable to the open store, then usable again.
enum Outage {
    /// SQLite: another connection holds the write lock.
    Locked(sqlx::SqliteConnection),
    /// PostgreSQL: the database refuses new connections and the pool's are killed.
    Refused,
}

async fn begin_outage(db: &TestDb) -> Outage {
    match db.kind {
        Kind::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut conn)
                .await
                .unwrap();
            Outage::Locked(conn)
        }
        Kind::Postgres => {
            let admin = db.postgres.as_ref().unwrap();
            let database = &admin.database;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS false"
            )))
            .execute(&admin.pool)
            .await
            .unwrap();
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(database)
            .execute(&admin.pool)
            .await
            .unwrap();
            Outage::Refused
        }
    }
}

async fn end_outage(db: &TestDb, outage: Outage) {
    match outage {
        Outage::Locked(mut conn) => {
            sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
        }
        Outage::Refused => {
            let admin = db.postgres.as_ref().unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
                admin.database
            )))
            .execute(&admin.pool)
            .await
            .unwrap();
        }
    }
}

async fn outage_is_unavailable_then_recovers(db: &TestDb) {
    let options = StoreOptions {
        busy_timeout: Duration::from_millis(300),
        ..StoreOptions::default()
    };
    let store = open_store_with(&db.url, &options).await.unwrap();
    store
        .create_route(&route("before", 0, RouteMatch::Default))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let queue_config = CdrQueueConfig {
        flush_interval: Duration::from_millis(10),
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..CdrQueueConfig::default()
    };
    let (queue, writer) = CdrQueue::spawn(store.clone(), queue_config, cancel.clone());

    let outage = begin_outage(db).await;
    let start = Instant::now();
    let refused = store
        .create_route(&route("during", 0, RouteMatch::Default))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable { .. })),
        "{refused:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "failed in {:?}",
        start.elapsed()
    );
    // Now the outage is known: requests are answered at once, not after the pool's
    // acquire timeout each. (A locked SQLite file is no unreachable server: each
    // request there waits its busy timeout.)
    let known_outages = if matches!(db.kind, Kind::Postgres) {
        5
    } else {
        0
    };
    for _ in 0..known_outages {
        let start = Instant::now();
        let refused = store.list_routes().await;
        assert!(
            matches!(refused, Err(StoreError::Unavailable { .. })),
            "{refused:?}"
        );
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "a known outage took {:?} to report",
            start.elapsed()
        );
    }
    let uuids = [Uuid::new_v4()];
    for i in 0..10 {
        assert!(
            queue.push(CdrWrite::Close(test_cdr(i, &uuids))),
            "the queue accepts records during the outage"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue.stats().retries < 2 {
        assert!(
            Instant::now() < deadline,
            "the queue never retried: {:?}",
            queue.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(queue.stats().written, 0);

    end_outage(db, outage).await;
    // Recovery is noticed by the next probe, at most a second later.
    let recovered = Instant::now();
    while let Err(e) = store
        .create_route(&route("after", 0, RouteMatch::Default))
        .await
    {
        assert!(
            matches!(e, StoreError::Unavailable { .. })
                && recovered.elapsed() < Duration::from_secs(3),
            "not back {:?} after the outage: {e:?}",
            recovered.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let names: BTreeSet<String> = store
        .list_routes()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.route.name)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["after".to_owned(), "before".to_owned()])
    );
    while queue.stats().written < 10 {
        assert!(
            Instant::now() < deadline,
            "held CDRs were not written: {:?}",
            queue.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = queue.stats();
    assert_eq!((stats.pending, stats.dropped, stats.rejected), (0, 0, 0));
    let stored = store
        .query_cdrs(&CdrFilter {
            uuid: Some(uuids[0]),
            ..CdrFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(stored.items.len(), 10);
    cancel.cancel();
    writer.await.unwrap();
}

/// `sqlite::memory:` (handy for API tests) is one private database per store, kept for
/// the store's lifetime.
#[tokio::test]
async fn in_memory_sqlite_is_private_and_keeps_its_data() {
    let store = open_store("sqlite::memory:").await.unwrap();
    store
        .create_route(&route("r", 0, RouteMatch::Default))
        .await
        .unwrap();
    let other = open_store("sqlite::memory:").await.unwrap();
    assert!(other.list_routes().await.unwrap().is_empty());
    assert_eq!(store.list_routes().await.unwrap().len(), 1);
    let counters: Vec<i64> =
        futures_util::future::join_all((0..5).map(|_| store.next_counter("c", 1)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    assert_eq!(
        counters.into_iter().collect::<BTreeSet<_>>(),
        (1..=5).collect()
    );
}
