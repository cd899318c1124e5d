//! CDR write throughput of the store: `Store::insert_cdrs` with batches of 1, 100 and
//! 500 records, on SQLite (a temporary file) and PostgreSQL (the local server; a
//! database `telepatch_bench_<random>` is created through `TELEPATCH_TEST_POSTGRES_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`, and dropped afterwards).
//!
//! Run: `cargo bench -p api --bench cdr`. Criterion reports records/s ("thrpt").
//! PostgreSQL is skipped, with a message, when it cannot be reached.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::store::{CdrRecord, EndedBy, Store, open_store};
use chrono::{DateTime, TimeDelta, Utc};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use uuid::Uuid;

const BATCHES: [usize; 3] = [1, 100, 500];

fn record(i: usize) -> CdrRecord {
    let ended_at = DateTime::<Utc>::from_timestamp(1_750_000_000 + i as i64, 0).unwrap_or_default();
    CdrRecord {
        uuid: Uuid::new_v4(),
        started_at: ended_at - TimeDelta::seconds(95),
        ended_at,
        duration_ms: 95_000,
        caller_rate_hz: 8000,
        ended_by: EndedBy::Caller,
        end_reason: "hangup".into(),
        frames_in: 4750,
        frames_out: 4750,
        uplink_gaps: 1,
        downlink_underruns: 0,
        max_jitter_ms: 12.5,
        route: Some("phone-in".into()),
        patches: vec![format!("call:{}.voice -> recorder:show.in", Uuid::nil())],
        peer: Some(SocketAddr::from(([127, 0, 0, 1], 40_000))),
    }
}

fn bench_store(c: &mut Criterion, rt: &Runtime, name: &str, store: Arc<dyn Store>) {
    let mut group = c.benchmark_group(format!("cdr_insert/{name}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for batch in BATCHES {
        let records: Vec<CdrRecord> = (0..batch).map(record).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        store.insert_cdrs(&records).await.expect("insert_cdrs");
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| i + authority);
    match query {
        Some(query) => format!("{}/{database}?{query}", &base[..path]),
        None => format!("{}/{database}", &base[..path]),
    }
}

fn cdr_insert(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");

    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = rt.block_on(open_store(&url)).expect("SQLite store");
    bench_store(c, &rt, "sqlite", store);

    let admin_url = std::env::var("TELEPATCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let admin = match rt.block_on(sqlx::PgPool::connect(&admin_url)) {
        Ok(admin) => admin,
        Err(error) => {
            eprintln!("PostgreSQL at {admin_url} unreachable ({error}): skipping its benchmark");
            return;
        }
    };
    let database = format!("telepatch_bench_{}", Uuid::new_v4().simple());
    let run = |sql: String| {
        rt.block_on(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&admin))
            .expect("admin statement");
    };
    run(format!("CREATE DATABASE \"{database}\""));
    let store = rt
        .block_on(open_store(&with_database(&admin_url, &database)))
        .expect("PostgreSQL store");
    bench_store(c, &rt, "postgres", store.clone());
    rt.block_on(store.close());
    run(format!("DROP DATABASE \"{database}\" WITH (FORCE)"));
}

criterion_group!(benches, cdr_insert);
criterion_main!(benches);
