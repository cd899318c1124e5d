//! Start-up and graceful shutdown of the whole service (used by `main` and by tests).
//!
//! Start: bind the HTTP API's and AudioSocket's listeners (a gateway that cannot serve
//! stops here, before it starts or announces any flow), open the database (migrations
//! run), start the gateway (engine, disk writer, players), restore what the API stored
//! (nodes, patches, routes), start the CDR writer, the HTTP API, the level-meter ticker
//! and the AudioSocket listener, and only then release the SAP announcements. The control plane
//! (database, API, CDR writer, level ticker) runs on its own small runtime, apart from
//! the call sessions.
//!
//! Shutdown: every call hears `00 00 00` and its session ends (its call record queued);
//! the HTTP server stops (event streams are closed, requests in flight get a short
//! grace); the CDR writer flushes; the engine stops and every recording is finalized.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use api::control::{CallLevels, Control, Event, NodeConfig};
use api::store::{CdrQueue, CdrQueueConfig, CdrWrite, Store, open_store};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::{GatewayControl, level};
use crate::engine::BUS_RATE;
use crate::net::fd_limit;
use crate::net::http::HttpLimits;
use crate::net::listener;
use crate::service::Gateway;

/// A running gateway.
pub struct Running {
    /// The service.
    pub gateway: Arc<Gateway>,
    /// The database.
    pub store: Arc<dyn Store>,
    /// The AudioSocket listener's bound address (useful with port 0).
    pub audiosocket_addr: SocketAddr,
    /// The HTTP API's bound address.
    pub api_addr: SocketAddr,
    listener: JoinHandle<()>,
    http: JoinHandle<()>,
    http_stop: CancellationToken,
    cdr_stop: CancellationToken,
    cdr_writer: JoinHandle<()>,
    webhooks: Option<Webhooks>,
    control_plane: ControlPlaneRuntime,
}

/// The event webhooks' driver task and its token.
struct Webhooks {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The control plane's own tokio runtime: the HTTP API, the database pool, the CDR
/// writer and the level ticker run here, so hundreds of busy call sessions on the main
/// runtime cannot starve them (and a slow query cannot delay a call's frames).
struct ControlPlaneRuntime(Option<tokio::runtime::Runtime>);

impl ControlPlaneRuntime {
    fn start(worker_threads: usize) -> anyhow::Result<ControlPlaneRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads.max(1))
            .thread_name("telepatch-control")
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start the control-plane runtime: {e}"))?;
        Ok(ControlPlaneRuntime(Some(runtime)))
    }

    fn handle(&self) -> anyhow::Result<tokio::runtime::Handle> {
        self.0
            .as_ref()
            .map(|runtime| runtime.handle().clone())
            .ok_or_else(|| anyhow::anyhow!("the control-plane runtime has stopped"))
    }

    /// Runs `work` on the control plane and waits for it from any runtime.
    async fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> anyhow::Result<T> {
        Ok(self.handle()?.spawn(work).await?)
    }
}

impl Drop for ControlPlaneRuntime {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's async context would panic; everything
        // that matters was awaited before this point.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Binds the listeners and starts serving.
///
/// Every listener is bound before anything else starts: a gateway that cannot serve (its
/// API or AudioSocket port taken, by a gateway already running on the same configuration
/// say) exits before it restores a flow or announces anything. SAP announcements are
/// released only once start-up has succeeded, and a start-up that fails after the
/// gateway started shuts it down, which withdraws (deletes) whatever it announced.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let api_listen = config.api.listen;
    let http_listener = std::net::TcpListener::bind(api_listen)
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .map_err(|e| anyhow::anyhow!("cannot listen for the HTTP API on {api_listen}: {e}"))?;
    let audiosocket_listen = config.audiosocket.listen;
    let audiosocket_listener = std::net::TcpListener::bind(audiosocket_listen)
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .map_err(|e| {
            anyhow::anyhow!("cannot listen for AudioSocket on {audiosocket_listen}: {e}")
        })?;

    let control_plane = ControlPlaneRuntime::start(config.api.worker_threads)?;
    let database_url = config.database_url();
    let url = database_url.clone();
    let store = control_plane
        .run(async move { open_store(&url).await })
        .await?
        .map_err(|e| anyhow::anyhow!("cannot open the database {}: {e}", redact(&database_url)))?;
    tracing::info!(database = %redact(&database_url), "database open");

    let levels_interval = Duration::from_millis(config.api.levels_interval_ms);
    let cdr_queue = CdrQueueConfig {
        instance: config.gateway.instance(),
        capacity: config.database.cdr_queue,
        ..CdrQueueConfig::default()
    };
    let gateway = Gateway::start(config)?;
    let started = serve(
        Arc::clone(&gateway),
        store,
        control_plane,
        Listeners {
            http: http_listener,
            audiosocket: audiosocket_listener,
        },
        levels_interval,
        cdr_queue,
    )
    .await;
    match started {
        Ok(running) => {
            gateway.aes67().start_announcing();
            Ok(running)
        }
        Err(e) => {
            tracing::error!(error = %e, "start-up failed; stopping what started");
            gateway.begin_shutdown();
            let stopping = Arc::clone(&gateway);
            tokio::task::spawn_blocking(move || stopping.finish()).await?;
            Err(e)
        }
    }
}

/// The listeners [`start`] bound.
struct Listeners {
    http: std::net::TcpListener,
    audiosocket: std::net::TcpListener,
}

/// The HTTP API's limits: its connection cap is `api.max_connections` or what the
/// file-descriptor limit leaves after what calls need, whichever is lower.
fn http_limits(config: &Config) -> HttpLimits {
    let limit = fd_limit::current();
    let reserve = fd_limit::CallReserve {
        max_calls: config.audiosocket.max_calls,
        max_unidentified: config.audiosocket.max_unidentified,
    };
    let cap = fd_limit::api_connection_cap(config.api.max_connections, limit.soft, reserve);
    let limits = HttpLimits {
        header_timeout: Duration::from_millis(config.api.header_timeout_ms),
        max_connections: cap.connections,
    };
    if cap.reserve_short {
        tracing::warn!(
            fd_limit = limit.soft,
            kept_for_calls = reserve.descriptors(),
            api_connections = cap.connections,
            "the file-descriptor limit is too low for audiosocket.max_calls and \
             audiosocket.max_unidentified; raise the hard RLIMIT_NOFILE (LimitNOFILE=) or \
             lower them"
        );
    } else if cap.limited_by_descriptors {
        tracing::warn!(
            fd_limit = limit.soft,
            kept_for_calls = reserve.descriptors(),
            api_connections = cap.connections,
            configured = config.api.max_connections,
            "HTTP API connections capped below api.max_connections by the file-descriptor limit"
        );
    }
    tracing::info!(
        max_connections = limits.max_connections,
        header_timeout_ms = config.api.header_timeout_ms,
        "HTTP API connection limits"
    );
    limits
}

/// Restores what the API stored and starts serving on `listeners`.
async fn serve(
    gateway: Arc<Gateway>,
    store: Arc<dyn Store>,
    control_plane: ControlPlaneRuntime,
    listeners: Listeners,
    levels_interval: Duration,
    cdr_queue: CdrQueueConfig,
) -> anyhow::Result<Running> {
    // AoDNS broadcasts keep their sequence numbers in the database.
    gateway.set_sequence_store(Arc::new(crate::dns::StoreSequences::new(
        Arc::clone(&store),
        control_plane.handle()?,
    )));

    {
        // Stored broadcasts come back before their DNS server answers anything, so no
        // listener is refused a zone that is about to be restored.
        gateway.dns().hold();
        let (restoring, store) = (Arc::clone(&gateway), Arc::clone(&store));
        let restored = control_plane
            .run(async move { restore(&restoring, store.as_ref()).await })
            .await;
        gateway.dns().release()?;
        restored??;
    }

    let control_handle = control_plane.handle()?;
    let cdr_stop = gateway.child_token();
    tracing::info!(instance = %cdr_queue.instance, "call records are written as this instance");
    let (cdr_queue, cdr_writer) = {
        let _control_context = control_handle.enter();
        CdrQueue::spawn(Arc::clone(&store), cdr_queue, cdr_stop.clone())
    };
    // Before any call is admitted: this instance's records that a crash left open are
    // closed first (the queue keeps this order, and retries while the database is
    // away), then those of any instance gone for good.
    cdr_queue.push(CdrWrite::CloseOrphans);
    cdr_queue.push(stale_cdrs(gateway.config()));
    gateway.set_cdr_queue(cdr_queue.clone());
    control_handle.spawn(cdr_refresher(Arc::clone(&gateway), cdr_queue));

    // Subscribed before the listener admits any call, so no call's first event is missed.
    let webhook_stats = Arc::new(crate::webhooks::WebhookStats::default());
    let webhooks = crate::webhooks::WebhookDriver::new(
        &gateway.config().webhooks,
        &gateway.config().gateway.instance(),
        Arc::clone(&webhook_stats),
    )?
    .map(|driver| {
        let stop = gateway.child_token();
        let task = control_handle.spawn(driver.run(gateway.subscribe(), stop.clone()));
        Webhooks { stop, task }
    });
    let mut metrics = crate::scrape::GatewayMetrics::new();
    if webhooks.is_some() {
        metrics = metrics.with_webhooks(webhook_stats);
    }
    let metrics = Arc::new(metrics);
    let control: Arc<dyn Control> = Arc::new(GatewayControl::new(
        Arc::clone(&gateway),
        Arc::clone(&metrics),
    ));
    let http_stop = gateway.child_token();
    let state = api::http::AppState::new(
        control,
        Arc::clone(&store),
        api::http::install_prometheus_recorder(),
        http_stop.clone(),
    )
    .with_failed_token_limit(gateway.config().api.max_failed_tokens);
    let api_addr = listeners.http.local_addr()?;
    let limits = http_limits(gateway.config());
    let http = {
        let _control_context = control_handle.enter();
        let http_listener = TcpListener::from_std(listeners.http)?;
        control_handle.spawn(crate::net::http::serve(
            http_listener,
            api::http::router(state),
            limits,
            Arc::clone(&gateway),
            http_stop.clone(),
        ))
    };
    tracing::info!(addr = %api_addr, "HTTP API ready");

    control_handle.spawn(level_ticker(Arc::clone(&gateway), levels_interval));
    control_handle.spawn(engine_watch(Arc::clone(&gateway)));
    control_handle.spawn(crate::scrape::feed_block_times_every_second(
        Arc::clone(&gateway),
        metrics,
    ));

    let tcp = TcpListener::from_std(listeners.audiosocket)?;
    let audiosocket_addr = tcp.local_addr()?;
    let listener = tokio::spawn(listener::serve(Arc::clone(&gateway), tcp));
    Ok(Running {
        gateway,
        store,
        audiosocket_addr,
        api_addr,
        listener,
        http,
        http_stop,
        cdr_stop,
        cdr_writer,
        webhooks,
        control_plane,
    })
}

/// How often open records are checked for staleness (and at start-up).
const STALE_CDR_CHECK: Duration = Duration::from_secs(60);

/// Closes open records of any instance not refreshed within `database.cdr_stale_after_s`.
fn stale_cdrs(config: &crate::config::Config) -> CdrWrite {
    let stale_after = chrono::TimeDelta::seconds(
        i64::try_from(config.database.cdr_stale_after_s).unwrap_or(i64::MAX / 1_000_000),
    );
    CdrWrite::CloseStale {
        before: chrono::Utc::now() - stale_after,
    }
}

/// Refreshes live calls' open records every `database.cdr_refresh_ms`, and closes stale
/// records of other instances every [`STALE_CDR_CHECK`], until shutdown begins (the
/// calls' own ends complete their records then).
async fn cdr_refresher(gateway: Arc<Gateway>, queue: CdrQueue) {
    let shutdown = gateway.shutdown_token();
    let refresh_every = Duration::from_millis(gateway.config().database.cdr_refresh_ms);
    let mut refresh = tokio::time::interval(refresh_every);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stale = tokio::time::interval(STALE_CDR_CHECK);
    stale.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Both fire at once; start-up already pushed its stale check.
    stale.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = refresh.tick() => gateway.refresh_cdrs(),
            _ = stale.tick() => {
                queue.push(stale_cdrs(gateway.config()));
            }
        }
    }
}

/// Recreates the nodes and patches the API stored, and loads the stored routes.
async fn restore(gateway: &Arc<Gateway>, store: &dyn Store) -> anyhow::Result<()> {
    let routes = store.list_routes().await?;
    gateway.set_stored_routes(routes.into_iter().map(|r| r.route).collect());
    for record in store.list_nodes(None).await? {
        let config: NodeConfig = match serde_json::from_value(record.config.clone()) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(node = %record.node, error = %e, "stored node has an unreadable configuration; skipped");
                continue;
            }
        };
        let gw = Arc::clone(gateway);
        let name = record.node.name().to_owned();
        let result =
            tokio::task::spawn_blocking(move || gw.create_configured_node(&name, &config, true))
                .await?;
        if let Err(e) = result {
            tracing::error!(node = %record.node, error = %e, "cannot restore a stored node");
        }
    }
    for record in store.list_patches().await? {
        match gateway.connect(record.source.clone(), record.sink.clone(), record.gain_db) {
            Ok(patch) => {
                let _ = gateway.set_patch_persistent(patch.id, true);
            }
            Err(e) => {
                tracing::error!(source = %record.source, sink = %record.sink, error = %e, "cannot restore a stored patch")
            }
        }
    }
    Ok(())
}

/// Says in the log when the engine thread was held up: a catch-up longer than any seen
/// before, and every schedule restart (the bus time it skipped, and the audio in it, is
/// lost). The engine only counts; this task, off the media path, does the talking.
async fn engine_watch(gateway: Arc<Gateway>) {
    /// Catch-ups shorter than this are routine scheduling jitter.
    const NOTEWORTHY_CATCH_UP_MS: f64 = 20.0;
    let shutdown = gateway.shutdown_token();
    let stats = gateway.engine_stats();
    let block_ms = gateway.block_samples() as f64 * 1000.0 / f64::from(BUS_RATE.hz());
    let mut seen = stats.snapshot();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = stats.snapshot();
        if now.late_restarts > seen.late_restarts {
            tracing::warn!(
                restarts = now.late_restarts - seen.late_restarts,
                skipped_ms = (now.skipped_blocks - seen.skipped_blocks) as f64 * block_ms,
                "engine thread was held up too long to catch up (a host stall?); it \
                 restarted its schedule and the audio of the skipped time is lost"
            );
        }
        let behind_ms = now.blocks_behind_max as f64 * block_ms;
        if now.blocks_behind_max > seen.blocks_behind_max && behind_ms >= NOTEWORTHY_CATCH_UP_MS {
            tracing::info!(behind_ms, "engine thread woke late and caught up");
        }
        seen = now;
    }
}

/// Publishes every call's level meters about ten times a second, while anyone listens.
async fn level_ticker(gateway: Arc<Gateway>, every: Duration) {
    let shutdown = gateway.shutdown_token();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !gateway.has_subscribers() {
            continue;
        }
        let calls: Vec<CallLevels> = gateway
            .calls()
            .iter()
            .map(|c| CallLevels {
                call: c.id,
                voice: level(&c.stats.voice_level),
                ear: level(&c.stats.ear_level),
                talking: c.talking(),
            })
            .collect();
        if !calls.is_empty() {
            gateway.publish(Event::Levels { calls });
        }
    }
}

/// Hides a password in a database URL for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Running {
    /// Graceful shutdown: every call hears `00 00 00`, sessions end, the API stops, call
    /// records are flushed, the engine stops and every recording is finalized.
    ///
    /// The one place shutdown happens. Every token is a child of the gateway's root
    /// (cancelling the root alone stops everything); graceful shutdown cancels them in
    /// this order, each stage joined before the next, because each stage still feeds
    /// the one after it:
    /// 1. the gateway's shutdown stage: calls hang up, the AudioSocket listener and the
    ///    control plane's tickers stop; joined: the listener, and with it every session
    ///    (each queues its call record);
    /// 2. the HTTP API (event streams end, requests in flight get a grace); joined;
    /// 3. the call-record writer, which flushes what the sessions queued, and the event
    ///    webhooks' driver, which makes one last attempt (at most 2 s) at what it holds;
    ///    joined;
    /// 4. [`Gateway::finish`]: every thread, in its documented order, then the root;
    /// 5. the database pool.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.gateway.begin_shutdown();
        self.listener.await?;
        self.http_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), self.http)
            .await
            .is_err()
        {
            tracing::warn!("HTTP API did not stop within 5 s");
        }
        self.cdr_stop.cancel();
        if let Some(webhooks) = self.webhooks {
            // The sessions have published their last events; the driver makes one last
            // attempt of at most its grace, then stops.
            webhooks.stop.cancel();
            let limit = crate::webhooks::driver::SHUTDOWN_GRACE + Duration::from_secs(1);
            let mut task = webhooks.task;
            if tokio::time::timeout(limit, &mut task).await.is_err() {
                task.abort();
                tracing::warn!("event webhooks did not stop within {limit:?}");
            }
        }
        let _ = self.cdr_writer.await;
        let gateway = Arc::clone(&self.gateway);
        tokio::task::spawn_blocking(move || gateway.finish()).await?;
        let store = Arc::clone(&self.store);
        self.control_plane
            .run(async move { store.close().await })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/tp"),
            "postgres://app:***@db:5432/tp"
        );
        assert_eq!(redact("postgres://app@db/tp"), "postgres://app@db/tp");
        assert_eq!(redact("sqlite://telepatch.db"), "sqlite://telepatch.db");
    }
}
