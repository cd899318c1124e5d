//! Sequence numbers of a broadcast: increasing across calls and restarts (aodns.md §6:
//! a running client takes lower numbers for packs it has played and stalls).
//!
//! Numbers are reserved in the database in blocks ([`BLOCK`]): a broadcast reserves one
//! block when it starts (blocking: a broadcast that cannot learn where to continue does
//! not start) and the next one in the background when half of the current block is
//! used, so the encoder never waits for the database. The database therefore holds the
//! first number no broadcast of that domain has been given; a restart continues from
//! there, skipping at most one block's unused remainder (a listener sees that as one
//! gap, which it would see anyway while the gateway was down).
//!
//! If the database is unreachable when a block runs out, numbering simply goes on past
//! it (the broadcast never stalls) and the next reservation records how far it got
//! (`at_least`). Only a restart before the database came back could then repeat
//! numbers. Why the database and not the wall clock: a clock-derived number must grow
//! faster than packs are made (a pack can be as short as 0.48 s) and survive clock
//! steps; the database gives small, dense numbers (shorter `sequence` strings) and is
//! shared by gateways that take over each other's domains.

use std::sync::{Arc, Mutex, PoisonError};

/// Numbers reserved at once: about 3 minutes of speech (0.75 s packs), 20 of silence.
pub const BLOCK: u64 = 256;

/// Why numbers could not be reserved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SequenceError {
    /// The numbers asked for do not fit the database's integers.
    #[error("sequence numbers beyond the database's range")]
    OutOfRange,
    /// The database refused the reservation.
    #[error("the database refused the reservation: {0}")]
    Store(String),
    /// The database did not answer in time.
    #[error("the database did not answer within {} s", RESERVE_TIMEOUT.as_secs())]
    TimedOut,
    /// The control plane's runtime did not run the reservation.
    #[error("the control plane did not answer")]
    ControlPlaneGone,
}

/// Where reservations are stored (the gateway's database; see `app.rs`).
pub trait SequenceStore: Send + Sync + 'static {
    /// Reserves `count` numbers for `domain`, at or above `at_least`; returns the
    /// first. Blocking (called from a thread that may block).
    fn reserve_blocking(
        &self,
        domain: &str,
        at_least: u64,
        count: u64,
    ) -> Result<u64, SequenceError>;

    /// The same in the background; `done` receives the result.
    fn reserve_in_background(
        &self,
        domain: String,
        at_least: u64,
        count: u64,
        done: Box<dyn FnOnce(Result<u64, SequenceError>) + Send>,
    );
}

/// Reservations in the gateway's database ([`api::store::Store`]), run on the control
/// plane's runtime.
pub struct StoreSequences {
    store: Arc<dyn api::store::Store>,
    runtime: tokio::runtime::Handle,
}

/// How long a blocking reservation may take before the broadcast gives up starting.
const RESERVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl StoreSequences {
    /// Reservations in `store`, made on `runtime` (the control plane's).
    pub fn new(store: Arc<dyn api::store::Store>, runtime: tokio::runtime::Handle) -> Self {
        StoreSequences { store, runtime }
    }
}

/// Runs one reservation against the store.
async fn reserve(
    store: Arc<dyn api::store::Store>,
    domain: String,
    at_least: u64,
    count: u64,
) -> Result<u64, SequenceError> {
    let at_least = i64::try_from(at_least).map_err(|_| SequenceError::OutOfRange)?;
    let count = i64::try_from(count).map_err(|_| SequenceError::OutOfRange)?;
    let reservation = store.reserve_dns_sequences(&domain, at_least, count);
    match tokio::time::timeout(RESERVE_TIMEOUT, reservation).await {
        Ok(Ok(start)) => u64::try_from(start).map_err(|_| SequenceError::OutOfRange),
        Ok(Err(e)) => Err(SequenceError::Store(e.to_string())),
        Err(_) => Err(SequenceError::TimedOut),
    }
}

impl SequenceStore for StoreSequences {
    fn reserve_blocking(
        &self,
        domain: &str,
        at_least: u64,
        count: u64,
    ) -> Result<u64, SequenceError> {
        let work = reserve(Arc::clone(&self.store), domain.to_owned(), at_least, count);
        // Run on the control plane's runtime and wait from this (blocking) thread.
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv_timeout(RESERVE_TIMEOUT + std::time::Duration::from_secs(1))
            .unwrap_or(Err(SequenceError::ControlPlaneGone))
    }

    fn reserve_in_background(
        &self,
        domain: String,
        at_least: u64,
        count: u64,
        done: Box<dyn FnOnce(Result<u64, SequenceError>) + Send>,
    ) {
        let work = reserve(Arc::clone(&self.store), domain, at_least, count);
        self.runtime.spawn(async move { done(work.await) });
    }
}

#[derive(Debug, Default)]
struct Pending {
    /// A reservation is under way.
    requested: bool,
    /// The next block, once reserved: `start..end`.
    next_block: Option<(u64, u64)>,
    /// The last failure, for the status.
    last_error: Option<SequenceError>,
}

/// Hands out a broadcast's numbers. See the module documentation.
pub struct SequenceLedger {
    domain: String,
    store: Option<Arc<dyn SequenceStore>>,
    next: u64,
    /// End (exclusive) of the block in use.
    limit: u64,
    pending: Arc<Mutex<Pending>>,
    /// Numbers handed out beyond any reservation (database unreachable).
    unreserved: u64,
}

impl std::fmt::Debug for SequenceLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceLedger")
            .field("domain", &self.domain)
            .field("next", &self.next)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl SequenceLedger {
    /// Reserves the first block for `domain` (blocking). Without a store, numbering
    /// starts at 0, as the reference does.
    pub fn open(
        domain: &str,
        store: Option<Arc<dyn SequenceStore>>,
    ) -> Result<Self, SequenceError> {
        let (next, limit) = match &store {
            Some(store) => {
                let start = store.reserve_blocking(domain, 0, BLOCK)?;
                (start, start.saturating_add(BLOCK))
            }
            None => (0, u64::MAX),
        };
        Ok(SequenceLedger {
            domain: domain.to_owned(),
            store,
            next,
            limit,
            pending: Arc::new(Mutex::new(Pending::default())),
            unreserved: 0,
        })
    }

    /// The next number, advancing. Never blocks.
    pub fn take(&mut self) -> u64 {
        if self.next >= self.limit {
            let block = self
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .next_block
                .take();
            match block {
                Some((start, end)) => {
                    // Normally start == limit; later if another gateway reserved in
                    // between (a jump, never a repeat).
                    self.next = self.next.max(start);
                    self.limit = end;
                }
                None => self.unreserved += 1,
            }
        }
        let n = self.next;
        self.next = self.next.saturating_add(1);
        self.reserve_ahead();
        n
    }

    /// Asks for the next block once half of this one is used (or we are past it).
    fn reserve_ahead(&self) {
        let Some(store) = &self.store else { return };
        if self.limit.saturating_sub(self.next) > BLOCK / 2 {
            return;
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.requested || pending.next_block.is_some() {
                return;
            }
            pending.requested = true;
        }
        let shared = Arc::clone(&self.pending);
        // Continue where this block ends, or where numbering already is.
        let at_least = self.limit.max(self.next);
        store.reserve_in_background(
            self.domain.clone(),
            at_least,
            BLOCK,
            Box::new(move |result| {
                let mut pending = shared.lock().unwrap_or_else(PoisonError::into_inner);
                pending.requested = false;
                match result {
                    Ok(start) => {
                        pending.next_block = Some((start, start.saturating_add(BLOCK)));
                        pending.last_error = None;
                    }
                    Err(e) => {
                        // Once per outage, not once per pack.
                        if pending.last_error.is_none() {
                            tracing::warn!(error = %e, "cannot reserve AoDNS sequence numbers; numbering goes on unreserved");
                        }
                        pending.last_error = Some(e);
                    }
                }
            }),
        );
    }

    /// The number [`SequenceLedger::take`] returns next.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// End of the numbers reserved so far (exclusive), including a block reserved ahead.
    pub fn reserved_until(&self) -> u64 {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.next_block.map_or(self.limit, |(_, end)| end)
    }

    /// Numbers handed out without a reservation.
    pub fn unreserved(&self) -> u64 {
        self.unreserved
    }

    /// The last reservation failure, if the latest attempt failed.
    pub fn last_error(&self) -> Option<SequenceError> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_error
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// An in-memory store with the database's semantics; background reservations
    /// run at once, or fail while `down` is set.
    #[derive(Default)]
    struct MemoryStore {
        next: Mutex<HashMap<String, u64>>,
        down: std::sync::atomic::AtomicBool,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl SequenceStore for MemoryStore {
        fn reserve_blocking(
            &self,
            domain: &str,
            at_least: u64,
            count: u64,
        ) -> Result<u64, SequenceError> {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.down.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(SequenceError::Store("database down".into()));
            }
            let mut next = self.next.lock().unwrap();
            let slot = next.entry(domain.to_owned()).or_insert(0);
            let start = (*slot).max(at_least);
            *slot = start + count;
            Ok(start)
        }

        fn reserve_in_background(
            &self,
            domain: String,
            at_least: u64,
            count: u64,
            done: Box<dyn FnOnce(Result<u64, SequenceError>) + Send>,
        ) {
            done(self.reserve_blocking(&domain, at_least, count));
        }
    }

    #[test]
    fn numbers_continue_across_restarts_and_blocks() {
        let store = Arc::new(MemoryStore::default());
        let mut ledger = SequenceLedger::open("a.b.", Some(store.clone())).unwrap();
        let first: Vec<u64> = (0..600).map(|_| ledger.take()).collect();
        assert_eq!(first, (0..600).collect::<Vec<_>>(), "dense across blocks");
        assert_eq!(ledger.unreserved(), 0);
        assert!(ledger.reserved_until() >= 600);
        // A restart (new ledger) never repeats a number handed out.
        let mut again = SequenceLedger::open("a.b.", Some(store.clone())).unwrap();
        let n = again.take();
        assert!((600..=600 + 2 * BLOCK).contains(&n), "{n}");
        // Another domain is independent.
        let mut other = SequenceLedger::open("c.d.", Some(store)).unwrap();
        assert_eq!(other.take(), 0);
    }

    #[test]
    fn an_unreachable_database_never_stalls_numbering() {
        let store = Arc::new(MemoryStore::default());
        let mut ledger = SequenceLedger::open("a.b.", Some(store.clone())).unwrap();
        store.down.store(true, std::sync::atomic::Ordering::Relaxed);
        let numbers: Vec<u64> = (0..1000).map(|_| ledger.take()).collect();
        assert_eq!(numbers, (0..1000).collect::<Vec<_>>());
        assert!(ledger.unreserved() > 0);
        assert!(ledger.last_error().is_some());
        // Back up: the next reservation starts where numbering got to.
        store
            .down
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let n = ledger.take();
        assert_eq!(n, 1000);
        let restarted = SequenceLedger::open("a.b.", Some(store)).unwrap();
        assert!(restarted.peek() > 1000, "{}", restarted.peek());
        assert!(ledger.last_error().is_none());
    }

    #[test]
    fn without_a_store_numbering_starts_at_zero() {
        let mut ledger = SequenceLedger::open("a.b.", None).unwrap();
        assert_eq!((ledger.take(), ledger.take()), (0, 1));
    }

    #[test]
    fn a_failing_first_reservation_refuses_to_start() {
        let store = Arc::new(MemoryStore::default());
        store.down.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(SequenceLedger::open("a.b.", Some(store)).is_err());
    }
}
