//! A PostgreSQL server that stops answering (a hung host, a dead network path) is
//! reported at once after the first request found it so: the store does not make every
//! request wait out the pool's acquire timeout.
//!
//! The store talks to the local server through a TCP relay owned by the test; cutting
//! the relay closes every connection and leaves new ones unanswered, as a black hole.
//! `TELEPATCH_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! names the server; the test FAILS when it cannot be reached.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use api::store::{StoreError, StoreOptions, open_store_with};
use tokio::net::{TcpListener, TcpStream};

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A relay on loopback to the server at `target`, which can be cut.
struct Relay {
    addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
    cut_now: Arc<tokio::sync::Notify>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let cut_now = Arc::new(tokio::sync::Notify::new());
        let (flag, notify) = (Arc::clone(&cut), Arc::clone(&cut_now));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    // A black hole: accepted, never answered.
                    held.push(client);
                    continue;
                }
                let server = TcpStream::connect(&target).await.unwrap();
                let notify = Arc::clone(&notify);
                tokio::spawn(async move {
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = notify.notified() => {}
                    }
                });
            }
        });
        Relay { addr, cut, cut_now }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.cut_now.notify_waiters();
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_known_to_be_down_is_reported_at_once() {
    let admin = std::env::var("TELEPATCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
    let authority = admin
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap()
        .to_owned();
    let (credentials, host) = authority
        .rsplit_once('@')
        .map_or((None, authority.as_str()), |(c, h)| (Some(c), h));
    let relay = Relay::start(host.to_owned()).await;
    let through_relay = admin.replacen(
        &authority,
        &match credentials {
            Some(c) => format!("{c}@{}", relay.addr),
            None => relay.addr.to_string(),
        },
        1,
    );
    let options = StoreOptions {
        acquire_timeout: Duration::from_secs(2),
        ..StoreOptions::default()
    };
    let store = open_store_with(&through_relay, &options).await.unwrap();
    store.list_routes().await.unwrap();

    relay.cut();
    // The first request finds out, within the acquire timeout.
    let start = Instant::now();
    assert!(matches!(
        store.list_routes().await,
        Err(StoreError::Unavailable { .. })
    ));
    let first = start.elapsed();
    assert!(
        first < Duration::from_secs(4),
        "first failure after {first:?}"
    );
    // The outage is known now: the next requests are answered at once.
    for _ in 0..10 {
        let start = Instant::now();
        assert!(matches!(
            store.ping().await,
            Err(StoreError::Unavailable { .. })
        ));
        assert!(
            start.elapsed() < Duration::from_millis(200),
            "a known outage took {:?} to report (the first took {first:?})",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    relay.restore();
    let back = Instant::now();
    while store.list_routes().await.is_err() {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "the store did not notice the database was back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
