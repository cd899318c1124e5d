//! The CDR queue: takes call record writes from calls (a record opened when a call is
//! admitted, refreshed while it lasts, completed when it ends; see [`CdrWrite`]) and
//! applies them to the database in batches, without ever making a call wait for the
//! database.
//!
//! [`CdrQueue::push`] is a `try_send` into a bounded channel: it never blocks and never
//! awaits. When the channel is full the write is dropped and counted. One writer task
//! takes up to `batch_max` writes, or whatever arrived within `flush_interval` of the
//! first one, and applies them in order in one transaction, as the queue's gateway
//! instance. While the database is unavailable it keeps that batch and retries with
//! capped exponential backoff, reading nothing more, so at most `capacity + batch_max`
//! writes are held in memory; writes keep their push order, so a call's open, refreshes
//! and close reach the database in that order. Refreshes are not stacked up: while one
//! is queued or held, later ones are skipped (each carries the whole progress of every
//! live call, so the next one taken supersedes them). A write the database refuses for
//! another reason (a bug, not an outage) would block the queue forever if retried, so
//! the batch is retried one write at a time and only the refused writes are dropped
//! (counted as `rejected`).
//!
//! On shutdown (the `CancellationToken`) the writer stops accepting writes, applies
//! what it holds and gives up after `shutdown_timeout`, counting what it could not
//! write as dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{CdrWrite, Store, StoreError, StoreResult};

/// Where the queue writes: any [`Store`], or a test double.
#[async_trait]
pub trait CdrSink: Send + Sync + 'static {
    /// Applies the writes of `instance` in order, in one transaction: all or none.
    /// Returns how many open records were closed (see [`Store::write_cdrs`]).
    async fn write_cdrs(&self, instance: &str, writes: &[CdrWrite]) -> StoreResult<u64>;
}

#[async_trait]
impl<S: Store + ?Sized> CdrSink for S {
    async fn write_cdrs(&self, instance: &str, writes: &[CdrWrite]) -> StoreResult<u64> {
        Store::write_cdrs(self, instance, writes).await
    }
}

/// Sizes and timings of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdrQueueConfig {
    /// The gateway instance whose records these are (`gateway.instance`).
    pub instance: String,
    /// Writes the channel holds while the writer is busy or the database is down.
    pub capacity: usize,
    /// Most writes per transaction.
    pub batch_max: usize,
    /// How long the writer waits for a batch to fill after its first write.
    pub flush_interval: Duration,
    /// First retry delay after the database was unavailable.
    pub retry_min: Duration,
    /// Longest retry delay (the delay doubles from `retry_min` up to this).
    pub retry_max: Duration,
    /// How long the writer keeps trying to write what it holds after shutdown begins.
    pub shutdown_timeout: Duration,
}

impl Default for CdrQueueConfig {
    fn default() -> Self {
        CdrQueueConfig {
            instance: "telepatch".into(),
            capacity: 10_000,
            batch_max: 500,
            flush_interval: Duration::from_millis(200),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// A snapshot of the queue's counters, for `/metrics`. They count writes (a record's
/// open, a refresh of all live calls, a record's close, a closing of left-open records).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CdrQueueStats {
    /// Writes accepted by `push` since start (a counter).
    pub queued: u64,
    /// Writes accepted and not yet written, rejected or dropped (a gauge).
    pub pending: u64,
    /// Writes applied to the database.
    pub written: u64,
    /// Writes lost: pushed while the queue was full or shut down, or still held when
    /// the shutdown timeout ran out. A refresh skipped because another one is still
    /// queued is not lost (the queued one is applied), and not counted.
    pub dropped: u64,
    /// Writes the database refused for a reason other than being unavailable.
    pub rejected: u64,
    /// Open records closed because their gateway stopped unexpectedly.
    pub interrupted_closed: u64,
    /// Inserts retried because the database was unavailable.
    pub retries: u64,
    /// The last error, if any insert ever failed.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    pending: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    interrupted_closed: AtomicU64,
    retries: AtomicU64,
    /// A refresh is queued or held by the writer.
    refresh_queued: AtomicBool,
    // Only the writer task writes it, and never across an await.
    last_error: Mutex<Option<String>>,
}

impl Counters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` held records left the queue into `outcome`.
    fn settle(&self, outcome: &AtomicU64, n: usize) {
        Counters::add(outcome, n);
        self.pending.fetch_sub(n as u64, Ordering::Relaxed);
    }

    fn set_last_error(&self, error: &StoreError) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_string());
        }
    }
}

/// The handle calls use to hand in their record writes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CdrQueue {
    sender: mpsc::Sender<CdrWrite>,
    counters: Arc<Counters>,
}

impl CdrQueue {
    /// Starts the writer task on the current tokio runtime. It ends after `cancel`
    /// fires and it has flushed (or given up, see [`CdrQueueConfig::shutdown_timeout`]),
    /// or when every handle is dropped and the queue is empty.
    pub fn spawn<S: CdrSink + ?Sized>(
        sink: Arc<S>,
        config: CdrQueueConfig,
        cancel: CancellationToken,
    ) -> (CdrQueue, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(config.capacity.max(1));
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            sink,
            receiver,
            batch_max: config.batch_max.max(1),
            config,
            counters: counters.clone(),
            cancel,
            deadline: None,
        };
        (CdrQueue { sender, counters }, tokio::spawn(writer.run()))
    }

    /// Queues a write. Never blocks: returns `false` (and counts the write as dropped)
    /// when the queue is full or shut down; also `false`, without counting, for a
    /// [`CdrWrite::Refresh`] while another refresh is still queued or held.
    pub fn push(&self, write: CdrWrite) -> bool {
        let refresh = matches!(write, CdrWrite::Refresh(_));
        if refresh && self.counters.refresh_queued.swap(true, Ordering::AcqRel) {
            return false;
        }
        // Counted before sending: the writer may settle it before `try_send` returns.
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        match self.sender.try_send(write) {
            Ok(()) => {
                Counters::add(&self.counters.queued, 1);
                true
            }
            Err(_) => {
                if refresh {
                    self.counters.refresh_queued.store(false, Ordering::Release);
                }
                self.counters.settle(&self.counters.dropped, 1);
                false
            }
        }
    }

    /// The current counters.
    pub fn stats(&self) -> CdrQueueStats {
        let counters = &self.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CdrQueueStats {
            queued: load(&counters.queued),
            pending: load(&counters.pending),
            written: load(&counters.written),
            dropped: load(&counters.dropped),
            rejected: load(&counters.rejected),
            interrupted_closed: load(&counters.interrupted_closed),
            retries: load(&counters.retries),
            last_error: counters
                .last_error
                .lock()
                .ok()
                .and_then(|last| last.clone()),
        }
    }
}

struct Writer<S: ?Sized> {
    sink: Arc<S>,
    receiver: mpsc::Receiver<CdrWrite>,
    config: CdrQueueConfig,
    batch_max: usize,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    /// Set when shutdown begins: everything must be written before it.
    deadline: Option<Instant>,
}

impl<S: CdrSink + ?Sized> Writer<S> {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_max);
        loop {
            self.fill(&mut batch).await;
            if batch.is_empty() {
                // Shut down and drained, or every handle dropped and drained.
                return;
            }
            let had_refresh = batch.iter().any(|w| matches!(w, CdrWrite::Refresh(_)));
            self.write(&mut batch).await;
            if had_refresh {
                // Settled (written, rejected or lost): the next refresh may be queued.
                self.counters.refresh_queued.store(false, Ordering::Release);
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.config.shutdown_timeout);
            // Later pushes fail at once (counted as dropped); what is queued stays
            // readable.
            self.receiver.close();
        }
    }

    /// Fills `batch`: waits for a first record, then for more until the batch is full
    /// or `flush_interval` has passed. Leaves it empty when there is nothing more.
    async fn fill(&mut self, batch: &mut Vec<CdrWrite>) {
        if self.deadline.is_some() {
            // Shutting down: the channel is closed, take what is left without waiting.
            self.receiver.recv_many(batch, self.batch_max).await;
            return;
        }
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => {
                self.begin_shutdown();
                self.receiver.recv_many(batch, self.batch_max).await;
                return;
            }
            received = self.receiver.recv_many(batch, self.batch_max) => {
                if received == 0 {
                    return;
                }
            }
        }
        let flush_at = Instant::now() + self.config.flush_interval;
        while batch.len() < self.batch_max {
            let room = self.batch_max - batch.len();
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    self.begin_shutdown();
                    return;
                }
                received = tokio::time::timeout_at(flush_at, self.receiver.recv_many(batch, room)) => {
                    if !matches!(received, Ok(n) if n > 0) {
                        return; // flush time, or every handle dropped
                    }
                }
            }
        }
    }

    /// Writes `batch` (leaving it empty): retries while the database is unavailable,
    /// isolates records it refuses, gives up at the shutdown deadline.
    async fn write(&mut self, batch: &mut Vec<CdrWrite>) {
        let mut backoff = self.config.retry_min;
        let instance = self.config.instance.clone();
        loop {
            let result = match self.deadline {
                None => self.sink.write_cdrs(&instance, batch).await,
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.sink.write_cdrs(&instance, batch))
                        .await
                    {
                        Ok(result) => result,
                        Err(_) => return self.give_up(batch),
                    }
                }
            };
            match result {
                Ok(closed) => {
                    if backoff > self.config.retry_min {
                        tracing::info!(
                            writes = batch.len(),
                            "CDR database is back; wrote held records"
                        );
                    }
                    if closed > 0 {
                        tracing::warn!(
                            records = closed,
                            "closed call records left open by a gateway that stopped unexpectedly"
                        );
                        self.counters
                            .interrupted_closed
                            .fetch_add(closed, Ordering::Relaxed);
                    }
                    self.counters.settle(&self.counters.written, batch.len());
                    batch.clear();
                    return;
                }
                Err(error) if error.is_unavailable() => {
                    if backoff == self.config.retry_min {
                        tracing::warn!(%error, writes = batch.len(), "CDR database unavailable; holding records and retrying");
                    }
                    Counters::add(&self.counters.retries, 1);
                    self.counters.set_last_error(&error);
                    self.wait(backoff).await;
                    if self
                        .deadline
                        .is_some_and(|deadline| Instant::now() >= deadline)
                    {
                        return self.give_up(batch);
                    }
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
                Err(error) => {
                    self.counters.set_last_error(&error);
                    if batch.len() == 1 {
                        tracing::error!(%error, write = batch[0].kind(), call = ?batch[0].call(), "CDR write refused by the database; dropped");
                        self.counters.settle(&self.counters.rejected, 1);
                        batch.clear();
                        return;
                    }
                    // Find the refused writes by applying one at a time, in order.
                    for record in std::mem::take(batch) {
                        let mut one = vec![record];
                        Box::pin(self.write(&mut one)).await;
                    }
                    return;
                }
            }
        }
    }

    /// Sleeps before a retry; a shutdown that begins meanwhile cuts the sleep short,
    /// and a shutdown deadline caps it.
    async fn wait(&mut self, backoff: Duration) {
        let until = Instant::now() + backoff;
        match self.deadline {
            Some(deadline) => tokio::time::sleep_until(until.min(deadline)).await,
            None => {
                tokio::select! {
                    () = self.cancel.cancelled() => self.begin_shutdown(),
                    () = tokio::time::sleep_until(until) => {}
                }
            }
        }
    }

    /// The shutdown deadline passed: what is held and queued is lost.
    fn give_up(&mut self, batch: &mut Vec<CdrWrite>) {
        let mut lost = batch.len();
        batch.clear();
        while self.receiver.try_recv().is_ok() {
            lost += 1;
        }
        tracing::error!(
            writes = lost,
            "CDR database unavailable at shutdown; record writes lost"
        );
        self.counters.settle(&self.counters.dropped, lost);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::store::{CdrRecord, EndedBy};

    /// A sink that fails with `Unavailable` a given number of times, then writes; it
    /// refuses (as a constraint violation would) records whose `end_reason` is "bad".
    #[derive(Default)]
    struct FakeSink {
        failures_left: AtomicUsize,
        always_unavailable: bool,
        calls: AtomicUsize,
        batches: Mutex<Vec<usize>>,
        written: Mutex<Vec<CdrWrite>>,
    }

    #[async_trait]
    impl CdrSink for FakeSink {
        async fn write_cdrs(&self, instance: &str, cdrs: &[CdrWrite]) -> StoreResult<u64> {
            assert_eq!(instance, "test-instance");
            self.calls.fetch_add(1, Ordering::SeqCst);
            let unavailable = self.always_unavailable
                || self
                    .failures_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if unavailable {
                return Err(StoreError::Unavailable {
                    source: sqlx::Error::PoolTimedOut,
                });
            }
            if cdrs.iter().any(|write| reason(write) == "bad") {
                return Err(StoreError::Invalid {
                    what: "CDR",
                    reason: "refused".into(),
                });
            }
            self.batches.lock().unwrap().push(cdrs.len());
            self.written.lock().unwrap().extend_from_slice(cdrs);
            Ok(0)
        }
    }

    /// What the tests tell writes apart by: a record's `end_reason`, or the write's kind.
    fn reason(write: &CdrWrite) -> String {
        match write {
            CdrWrite::Open(cdr) | CdrWrite::Close(cdr) => cdr.end_reason.clone(),
            CdrWrite::Refresh(cdrs) => format!("refresh of {}", cdrs.len()),
            other => other.kind().to_owned(),
        }
    }

    impl FakeSink {
        fn written_reasons(&self) -> Vec<String> {
            self.written.lock().unwrap().iter().map(reason).collect()
        }
    }

    fn cdr(reason: &str) -> CdrWrite {
        CdrWrite::Close(record(reason))
    }

    fn record(reason: &str) -> CdrRecord {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        CdrRecord {
            uuid: Uuid::new_v4(),
            started_at: at,
            ended_at: at,
            duration_ms: 0,
            caller_rate_hz: 8000,
            ended_by: EndedBy::Caller,
            end_reason: reason.into(),
            frames_in: 0,
            frames_out: 0,
            uplink_gaps: 0,
            downlink_underruns: 0,
            max_jitter_ms: 0.0,
            route: None,
            patches: vec![],
            peer: None,
        }
    }

    fn config(capacity: usize, batch_max: usize) -> CdrQueueConfig {
        CdrQueueConfig {
            instance: "test-instance".into(),
            capacity,
            batch_max,
            ..CdrQueueConfig::default()
        }
    }

    /// Waits (in virtual time) until `done` holds.
    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..100_000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test(start_paused = true)]
    async fn holds_records_while_unavailable_and_drops_only_beyond_the_bound() {
        let sink = Arc::new(FakeSink {
            failures_left: AtomicUsize::new(3),
            ..FakeSink::default()
        });
        let (queue, writer) = CdrQueue::spawn(sink.clone(), config(8, 4), CancellationToken::new());

        // The writer takes record 0 and fails on it; it then holds it and reads nothing
        // more, so the channel accepts exactly `capacity` records and drops the rest.
        assert!(queue.push(cdr("0")));
        until(|| sink.calls.load(Ordering::SeqCst) >= 1).await;
        for i in 1..=8 {
            assert!(
                queue.push(cdr(&i.to_string())),
                "record {i} is within the bound"
            );
        }
        for i in 9..=11 {
            assert!(
                !queue.push(cdr(&i.to_string())),
                "record {i} is beyond the bound"
            );
        }
        assert_eq!(queue.stats().pending, 9);
        assert_eq!(queue.stats().dropped, 3);

        until(|| queue.stats().pending == 0).await;
        let expected: Vec<String> = (0..=8).map(|i| i.to_string()).collect();
        assert_eq!(sink.written_reasons(), expected, "nothing lost, order kept");
        let stats = queue.stats();
        assert_eq!(
            (stats.queued, stats.written, stats.dropped, stats.retries),
            (9, 9, 3, 3)
        );
        assert!(stats.last_error.unwrap().contains("unavailable"));
        drop(queue);
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_exponentially_up_to_the_cap() {
        let sink = Arc::new(FakeSink {
            failures_left: AtomicUsize::new(8),
            ..FakeSink::default()
        });
        let config = CdrQueueConfig {
            flush_interval: Duration::ZERO,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_millis(1000),
            ..config(8, 4)
        };
        let (queue, _writer) = CdrQueue::spawn(sink.clone(), config, CancellationToken::new());
        let start = Instant::now();
        queue.push(cdr("x"));
        until(|| queue.stats().written == 1).await;
        // 100 + 200 + 400 + 800 + 1000 * 4 ms of waiting before the 9th attempt.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(5500) && waited < Duration::from_millis(5600),
            "{waited:?}"
        );
        assert_eq!(queue.stats().retries, 8);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_up_to_batch_max() {
        let sink = Arc::new(FakeSink::default());
        let (queue, _writer) =
            CdrQueue::spawn(sink.clone(), config(100, 4), CancellationToken::new());
        for i in 0..10 {
            assert!(queue.push(cdr(&i.to_string())));
        }
        until(|| queue.stats().written == 10).await;
        assert_eq!(*sink.batches.lock().unwrap(), vec![4, 4, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_record_does_not_block_the_others() {
        let sink = Arc::new(FakeSink::default());
        let (queue, _writer) =
            CdrQueue::spawn(sink.clone(), config(100, 10), CancellationToken::new());
        for reason in ["a", "bad", "c"] {
            queue.push(cdr(reason));
        }
        until(|| queue.stats().pending == 0).await;
        assert_eq!(sink.written_reasons(), ["a", "c"]);
        let stats = queue.stats();
        assert_eq!((stats.written, stats.rejected, stats.retries), (2, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_flushes_what_is_held() {
        let sink = Arc::new(FakeSink::default());
        let cancel = CancellationToken::new();
        let config = CdrQueueConfig {
            flush_interval: Duration::from_secs(3600),
            ..config(100, 100)
        };
        let (queue, writer) = CdrQueue::spawn(sink.clone(), config, cancel.clone());
        for i in 0..5 {
            queue.push(cdr(&i.to_string()));
        }
        cancel.cancel();
        writer.await.unwrap();
        assert_eq!(sink.written_reasons(), ["0", "1", "2", "3", "4"]);
        assert!(!queue.push(cdr("late")), "a closed queue refuses records");
        let stats = queue.stats();
        assert_eq!((stats.written, stats.dropped, stats.pending), (5, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_gives_up_after_its_timeout() {
        let sink = Arc::new(FakeSink {
            always_unavailable: true,
            ..FakeSink::default()
        });
        let cancel = CancellationToken::new();
        let config = CdrQueueConfig {
            shutdown_timeout: Duration::from_secs(2),
            ..config(100, 2)
        };
        let (queue, writer) = CdrQueue::spawn(sink.clone(), config, cancel.clone());
        for i in 0..5 {
            queue.push(cdr(&i.to_string()));
        }
        until(|| sink.calls.load(Ordering::SeqCst) >= 1).await;
        let start = Instant::now();
        cancel.cancel();
        writer.await.unwrap();
        let took = start.elapsed();
        assert!(took <= Duration::from_secs(2), "{took:?}");
        let stats = queue.stats();
        assert_eq!((stats.written, stats.dropped, stats.pending), (0, 5, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_do_not_pile_up_while_the_database_is_down() {
        let sink = Arc::new(FakeSink {
            failures_left: AtomicUsize::new(5),
            ..FakeSink::default()
        });
        let (queue, _writer) =
            CdrQueue::spawn(sink.clone(), config(100, 10), CancellationToken::new());
        assert!(queue.push(CdrWrite::Open(record("open a"))));
        assert!(queue.push(CdrWrite::Refresh(vec![record("a")])));
        until(|| sink.calls.load(Ordering::SeqCst) >= 1).await;
        // The first refresh is held with the open: later ones are skipped, not queued,
        // while opens and closes still queue in order.
        assert!(!queue.push(CdrWrite::Refresh(vec![record("a")])));
        assert!(queue.push(CdrWrite::Open(record("open b"))));
        assert!(!queue.push(CdrWrite::Refresh(vec![record("a"), record("b")])));
        assert!(queue.push(cdr("close a")));
        until(|| queue.stats().pending == 0).await;
        assert_eq!(
            sink.written_reasons(),
            ["open a", "refresh of 1", "open b", "close a"]
        );
        let stats = queue.stats();
        assert_eq!((stats.queued, stats.written, stats.dropped), (4, 4, 0));
        // Once the held refresh is written, the next one is accepted again.
        assert!(queue.push(CdrWrite::Refresh(vec![record("b")])));
        until(|| queue.stats().written == 5).await;
        assert_eq!(sink.written_reasons()[4], "refresh of 1");
    }
}
