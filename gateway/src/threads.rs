//! Owned, named threads: every thread the gateway starts has exactly one owner that
//! stops and joins it.
//!
//! [`OwnedThread::spawn`] starts a named thread, optionally on real-time priority
//! ([`Priority::Realtime`]: `SCHED_FIFO` when the process may, normal priority and one
//! warning when it may not), and hands its body a [`StopSignal`]. [`OwnedThread::stop`]
//! raises the signal, runs the owner's wake-up (for a thread parked in `poll` or on a
//! condition variable) and joins; dropping the owner does the same. The join happens
//! once: later calls report [`Joined::AlreadyJoined`]. A thread that panicked is
//! reported (logged, and returned as [`Joined::Panicked`]), never re-raised in the owner,
//! so one broken thread cannot turn shutdown into a second panic.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// The scheduling a thread asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// The default time-sharing scheduler.
    Normal,
    /// `SCHED_FIFO` at this priority (1..=99) when allowed, normal priority otherwise.
    Realtime(u8),
}

impl Priority {
    /// `Realtime(priority)` when `realtime` is asked for, `Normal` otherwise.
    pub fn realtime_if(realtime: bool, priority: u8) -> Priority {
        if realtime {
            Priority::Realtime(priority)
        } else {
            Priority::Normal
        }
    }
}

/// What a thread's priority request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriorityOutcome {
    /// Nothing was asked for.
    Normal,
    /// Runs on `SCHED_FIFO` at this priority.
    Realtime(u8),
    /// Refused (no `CAP_SYS_NICE`, no rtprio limit): runs at normal priority.
    FellBack {
        /// Why it was refused.
        reason: String,
        /// Whether this refusal is the one the process warns about (the first).
        warn: bool,
    },
}

/// Decides a thread's priority: tries `attempt` for a real-time request and falls back
/// to normal priority when it fails. `warned` remembers whether a refusal was already
/// warned about, so a process without the privilege says so once, not once per thread.
pub fn decide_priority(
    priority: Priority,
    attempt: impl FnOnce(u8) -> Result<(), String>,
    warned: &AtomicBool,
) -> PriorityOutcome {
    match priority {
        Priority::Normal => PriorityOutcome::Normal,
        Priority::Realtime(value) => match attempt(value) {
            Ok(()) => PriorityOutcome::Realtime(value),
            Err(reason) => PriorityOutcome::FellBack {
                reason,
                warn: !warned.swap(true, Ordering::Relaxed),
            },
        },
    }
}

/// Whether a refused real-time request was already warned about in this process.
static REALTIME_REFUSAL_WARNED: AtomicBool = AtomicBool::new(false);

/// Applies `priority` to the calling thread and says in the log what came of it.
fn apply_priority(name: &str, priority: Priority) {
    match decide_priority(priority, set_realtime_fifo, &REALTIME_REFUSAL_WARNED) {
        PriorityOutcome::Normal => {}
        PriorityOutcome::Realtime(value) => {
            tracing::info!(
                thread = name,
                priority = value,
                "{name} thread runs with SCHED_FIFO"
            )
        }
        PriorityOutcome::FellBack { reason, warn: true } => tracing::warn!(
            thread = name,
            error = %reason,
            "cannot give the {name} thread real-time priority (needs CAP_SYS_NICE or an \
             rtprio limit); it and any other media thread run at normal priority"
        ),
        PriorityOutcome::FellBack {
            reason,
            warn: false,
        } => {
            tracing::debug!(thread = name, error = %reason, "{name} thread runs at normal priority")
        }
    }
}

/// Puts the calling thread on `SCHED_FIFO` at `priority` (1..=99). Fails without
/// `CAP_SYS_NICE` or an rtprio limit; the caller decides how loudly to say so.
pub fn set_realtime_fifo(priority: u8) -> Result<(), String> {
    use thread_priority::{
        RealtimeThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let value = ThreadPriorityValue::try_from(priority).map_err(|e| e.to_string())?;
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    )
    .map_err(|e| format!("{e:?}"))
}

/// Tells a thread's body that its owner wants it to end. Cheap to check (one atomic
/// load, no lock), so media loops test it every turn.
#[derive(Debug, Clone)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    /// Whether the owner asked the thread to end.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// How a join ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined<T> {
    /// The thread returned this.
    Finished(T),
    /// The thread panicked with this message (already logged).
    Panicked(String),
    /// An earlier stop or join already joined it.
    AlreadyJoined,
}

impl<T> Joined<T> {
    /// The thread's result, if this join got it.
    pub fn finished(self) -> Option<T> {
        match self {
            Joined::Finished(value) => Some(value),
            Joined::Panicked(_) | Joined::AlreadyJoined => None,
        }
    }
}

type Wake = Box<dyn Fn() + Send + Sync>;

/// A named thread and its one owner. See the module documentation.
pub struct OwnedThread<T: Send + 'static = ()> {
    name: String,
    stop: Arc<AtomicBool>,
    wake: Option<Wake>,
    handle: Mutex<Option<JoinHandle<T>>>,
}

impl<T: Send + 'static> std::fmt::Debug for OwnedThread<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedThread")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> OwnedThread<T> {
    /// Starts `body` on a thread called `name` (the kernel keeps 15 bytes of it) with
    /// `priority` applied first.
    pub fn spawn(
        name: impl Into<String>,
        priority: Priority,
        body: impl FnOnce(StopSignal) -> T + Send + 'static,
    ) -> std::io::Result<OwnedThread<T>> {
        let name = name.into();
        let stop = Arc::new(AtomicBool::new(false));
        let signal = StopSignal(Arc::clone(&stop));
        let thread_name = name.clone();
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                apply_priority(&thread_name, priority);
                body(signal)
            })?;
        Ok(OwnedThread {
            name,
            stop,
            wake: None,
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Adds what wakes the thread when it is asked to stop (an eventfd, a condition
    /// variable, a command), so a stop does not wait out a blocking call.
    pub fn with_wake(mut self, wake: impl Fn() + Send + Sync + 'static) -> OwnedThread<T> {
        self.wake = Some(Box::new(wake));
        self
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Raises the stop signal and wakes the thread, without waiting for it.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(wake) = &self.wake {
            wake();
        }
        self.unpark();
    }

    /// Unparks the thread (for bodies that park between turns).
    pub fn unpark(&self) {
        if let Some(handle) = self.lock_handle().as_ref() {
            handle.thread().unpark();
        }
    }

    /// Whether the thread's body has returned (or it was joined).
    pub fn is_finished(&self) -> bool {
        self.lock_handle()
            .as_ref()
            .is_none_or(JoinHandle::is_finished)
    }

    /// Asks the thread to stop and waits for it.
    pub fn stop(&self) -> Joined<T> {
        self.request_stop();
        self.join()
    }

    /// Waits for the thread without asking it to stop (for threads that end on their
    /// own, or were told to in their own terms).
    pub fn join(&self) -> Joined<T> {
        let Some(handle) = self.lock_handle().take() else {
            return Joined::AlreadyJoined;
        };
        match handle.join() {
            Ok(value) => Joined::Finished(value),
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                tracing::error!(thread = %self.name, panic = %message, "{} thread panicked", self.name);
                Joined::Panicked(message)
            }
        }
    }

    fn lock_handle(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<T>>> {
        self.handle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Send + 'static> Drop for OwnedThread<T> {
    fn drop(&mut self) {
        // A thread must never join itself (an owner dropped on its own thread): that
        // would wait forever, so it is only told to stop then.
        let own_thread = self
            .lock_handle()
            .as_ref()
            .is_some_and(|handle| handle.thread().id() == std::thread::current().id());
        if own_thread {
            self.request_stop();
            return;
        }
        let _ = self.stop();
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(not a string)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// A body that loops until stopped, then reports how many turns it ran.
    fn looping(counter: Arc<AtomicUsize>) -> impl FnOnce(StopSignal) -> usize + Send {
        move |stop| {
            while !stop.is_stopped() {
                counter.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
            counter.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn stop_signals_the_thread_and_joins_it_once() {
        let counter = Arc::new(AtomicUsize::new(0));
        let thread =
            OwnedThread::spawn("test-stop", Priority::Normal, looping(Arc::clone(&counter)))
                .unwrap();
        while counter.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let Joined::Finished(turns) = thread.stop() else {
            panic!("the thread did not finish");
        };
        assert!(thread.is_finished());
        // Joined: nothing runs any more, and the count it returned is the final one.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(counter.load(Ordering::Relaxed), turns);
        assert_eq!(thread.stop(), Joined::AlreadyJoined);
        assert_eq!(thread.join(), Joined::AlreadyJoined);
    }

    #[test]
    fn drop_stops_and_joins() {
        let (done_tx, done_rx) = mpsc::channel();
        let thread = OwnedThread::spawn("test-drop", Priority::Normal, move |stop| {
            while !stop.is_stopped() {
                std::thread::park_timeout(Duration::from_secs(60));
            }
            // Still running when drop() returns unless drop joined.
            std::thread::sleep(Duration::from_millis(50));
            done_tx.send(()).unwrap();
        })
        .unwrap();
        drop(thread);
        // The body finished before drop returned: its message is already there.
        assert_eq!(done_rx.try_recv(), Ok(()));
    }

    #[test]
    fn the_wake_up_runs_on_stop() {
        let (wake_tx, wake_rx) = mpsc::channel::<()>();
        let wake_tx = Mutex::new(wake_tx);
        // Blocks on its channel (not the flag): only the wake-up can end it.
        let thread = OwnedThread::spawn("test-wake", Priority::Normal, move |_stop| {
            wake_rx.recv().is_ok()
        })
        .unwrap()
        .with_wake(move || {
            let _ = wake_tx.lock().unwrap().send(());
        });
        assert_eq!(thread.stop(), Joined::Finished(true));
    }

    #[test]
    fn a_panicking_thread_is_reported_not_propagated() {
        let thread: OwnedThread<()> = OwnedThread::spawn("test-panic", Priority::Normal, |_stop| {
            panic!("broken on purpose")
        })
        .unwrap();
        assert_eq!(
            thread.stop(),
            Joined::Panicked("broken on purpose".to_owned())
        );
        // A second panic would abort the test here; dropping after a panic is quiet.
        drop(thread);
        let formatted: OwnedThread<()> =
            OwnedThread::spawn("test-panic2", Priority::Normal, |_stop| {
                panic!("code {}", 7)
            })
            .unwrap();
        drop(formatted);
    }

    #[test]
    fn a_thread_may_drop_its_own_owner() {
        let (owner_tx, owner_rx) = mpsc::channel::<OwnedThread<()>>();
        let (done_tx, done_rx) = mpsc::channel();
        let thread = OwnedThread::spawn("test-self", Priority::Normal, move |stop| {
            let owner = owner_rx.recv().unwrap();
            drop(owner);
            done_tx.send(stop.is_stopped()).unwrap();
        })
        .unwrap();
        owner_tx.send(thread).unwrap();
        // Dropped on its own thread: told to stop, not joined (no deadlock).
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(true));
    }

    #[test]
    fn a_normal_thread_asks_for_nothing() {
        let warned = AtomicBool::new(false);
        let outcome = decide_priority(
            Priority::Normal,
            |_| panic!("a normal thread tried real-time priority"),
            &warned,
        );
        assert_eq!(outcome, PriorityOutcome::Normal);
        assert_eq!(Priority::realtime_if(false, 40), Priority::Normal);
        assert_eq!(Priority::realtime_if(true, 40), Priority::Realtime(40));
    }

    #[test]
    fn a_granted_request_runs_realtime_at_its_priority() {
        let warned = AtomicBool::new(false);
        let mut asked = None;
        let outcome = decide_priority(
            Priority::Realtime(40),
            |value| {
                asked = Some(value);
                Ok(())
            },
            &warned,
        );
        assert_eq!(outcome, PriorityOutcome::Realtime(40));
        assert_eq!(asked, Some(40));
        assert!(!warned.load(Ordering::Relaxed));
    }

    #[test]
    fn a_refused_request_falls_back_and_warns_once() {
        let warned = AtomicBool::new(false);
        let refuse = |_| Err("EPERM".to_owned());
        assert_eq!(
            decide_priority(Priority::Realtime(40), refuse, &warned),
            PriorityOutcome::FellBack {
                reason: "EPERM".into(),
                warn: true
            }
        );
        assert_eq!(
            decide_priority(Priority::Realtime(30), refuse, &warned),
            PriorityOutcome::FellBack {
                reason: "EPERM".into(),
                warn: false
            }
        );
    }
}
