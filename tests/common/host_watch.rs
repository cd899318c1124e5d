//! Watches the machine the tests run on: one real-time thread per CPU, pinned to it,
//! wakes every millisecond and notes every wake-up that came 10 ms or more late.
//!
//! A `SCHED_FIFO` thread that wakes that late was not held up by other processes (it
//! preempts them) but by the machine itself: a virtual CPU its host descheduled, or the
//! kernel busy with preemption off. Timing-sensitive tests print what it saw when they
//! fail (see `GatewayProcess`'s `Drop`), so a failure caused by the machine can be told
//! from one caused by the code. Without the privilege for `SCHED_FIFO` the threads run at
//! normal priority and also note ordinary CPU contention. Starting the watch also locks
//! the test process's memory, as the gateway locks its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// A wake-up at least this late is a stall.
const STALL: Duration = Duration::from_millis(10);
const PERIOD: Duration = Duration::from_millis(1);

/// One late wake-up.
#[derive(Debug, Clone, Copy)]
pub struct HostStall {
    /// When the watcher woke.
    pub at: SystemTime,
    /// The CPU it is pinned to.
    pub cpu: usize,
    /// How much later than asked it woke.
    pub late: Duration,
}

struct Watch {
    stalls: Mutex<Vec<HostStall>>,
    /// Cleared when a watcher could not be pinned or made real-time.
    realtime: AtomicBool,
}

fn watch() -> &'static Watch {
    static WATCH: OnceLock<&'static Watch> = OnceLock::new();
    WATCH.get_or_init(|| {
        // The fake callers and players in this process keep time too: like the gateway
        // (`engine.lock_memory`), keep their pages from being reclaimed and read back
        // from disk mid-call. Best effort: without the privilege nothing is locked.
        let _ = gateway::engine::driver::lock_process_memory();
        let watch: &'static Watch = Box::leak(Box::new(Watch {
            stalls: Mutex::new(Vec::new()),
            realtime: AtomicBool::new(true),
        }));
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for cpu in 0..cpus {
            let ready = ready_tx.clone();
            std::thread::Builder::new()
                .name(format!("host-watch-{cpu}"))
                .spawn(move || {
                    let mut set = nix::sched::CpuSet::new();
                    let pinned = set.set(cpu).is_ok()
                        && nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                            .is_ok();
                    let fifo = gateway::threads::set_realtime_fifo(90).is_ok();
                    if !(pinned && fifo) {
                        watch.realtime.store(false, Ordering::Relaxed);
                    }
                    let _ = ready.send(());
                    watch_cpu(watch, cpu);
                })
                .expect("start a host watch thread");
        }
        for _ in 0..cpus {
            let _ = ready_rx.recv();
        }
        watch
    })
}

fn watch_cpu(watch: &'static Watch, cpu: usize) {
    let mut last = Instant::now();
    loop {
        std::thread::sleep(PERIOD);
        let now = Instant::now();
        let late = now.duration_since(last).saturating_sub(PERIOD);
        if late >= STALL {
            let stall = HostStall {
                at: SystemTime::now(),
                cpu,
                late,
            };
            watch
                .stalls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(stall);
        }
        last = now;
    }
}

/// Starts watching (once per test process).
pub fn start() {
    let _ = watch();
}

/// Whether the watchers run pinned with real-time priority (so that what they saw was
/// the machine, not other processes).
pub fn realtime() -> bool {
    watch().realtime.load(Ordering::Relaxed)
}

/// Stalls seen since `since`.
pub fn stalls_since(since: SystemTime) -> Vec<HostStall> {
    watch()
        .stalls
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|s| s.at >= since)
        .copied()
        .collect()
}

/// A one-paragraph account of the stalls since `since`, for a failing test's output.
pub fn report_since(since: SystemTime) -> String {
    let stalls = stalls_since(since);
    let kind = if realtime() {
        "pinned SCHED_FIFO watchers"
    } else {
        "watchers at normal priority (no real-time privilege)"
    };
    if stalls.is_empty() {
        return format!(
            "host watch ({kind}): no wake-up {} ms or more late",
            STALL.as_millis()
        );
    }
    let longest = stalls.iter().map(|s| s.late).max().unwrap_or_default();
    let listed: Vec<String> = stalls
        .iter()
        .take(20)
        .map(|s| {
            let offset = s.at.duration_since(since).unwrap_or_default();
            format!(
                "+{:.3} s cpu{} {:.1} ms",
                offset.as_secs_f64(),
                s.cpu,
                s.late.as_secs_f64() * 1000.0
            )
        })
        .collect();
    format!(
        "host watch ({kind}): {} wake-ups {} ms or more late, longest {:.1} ms: {}",
        stalls.len(),
        STALL.as_millis(),
        longest.as_secs_f64() * 1000.0,
        listed.join(", ")
    )
}
