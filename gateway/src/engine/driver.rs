//! The real-time driver: one thread running the engine on absolute deadlines.
//!
//! Deadlines are `start + n * block_duration` on the monotonic clock, never "sleep one
//! block after the last one finished", so processing time and wake-up latency do not
//! accumulate into drift. When the thread wakes late it runs the blocks it owes back to
//! back (the rings absorb that); when it is hopelessly behind (a stalled machine) it
//! restarts the schedule instead of bursting seconds of audio.
//!
//! The schedule arithmetic lives in [`Pacer`], which takes the time as a parameter so
//! tests can drive it on virtual time.

use std::time::{Duration, Instant};

use super::Engine;
use crate::threads::{OwnedThread, Priority};

/// Owing more blocks than this restarts the schedule rather than catching up.
pub const MAX_CATCH_UP_BLOCKS: u64 = 100;

/// What the driver should do at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacerStep {
    /// Sleep until this deadline.
    SleepUntil(Instant),
    /// Run this many blocks now.
    Run(u64),
}

/// Absolute-deadline schedule for fixed-length blocks.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    period: Duration,
    done: u64,
}

impl Pacer {
    /// A schedule whose first block is due at `start`.
    pub fn new(start: Instant, period: Duration) -> Pacer {
        Pacer {
            start,
            period,
            done: 0,
        }
    }

    fn deadline(&self, block: u64) -> Instant {
        let nanos = self.period.as_nanos().saturating_mul(u128::from(block));
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Decides what to do at `now`. Returns the step and, when the schedule was
    /// restarted, how many due blocks it gave up on.
    pub fn step(&mut self, now: Instant) -> (PacerStep, Option<u64>) {
        let next = self.deadline(self.done);
        if now < next {
            return (PacerStep::SleepUntil(next), None);
        }
        let elapsed = now.duration_since(self.start).as_nanos();
        let due = u64::try_from(elapsed / self.period.as_nanos().max(1)).unwrap_or(u64::MAX) + 1;
        let owed = due.saturating_sub(self.done);
        if owed > MAX_CATCH_UP_BLOCKS {
            // Hopelessly behind: run one block now and restart the schedule from here.
            self.start = now;
            self.done = 1;
            return (PacerStep::Run(1), Some(owed - 1));
        }
        self.done += owed;
        (PacerStep::Run(owed), None)
    }
}

/// A running engine thread.
pub struct EngineThread {
    thread: OwnedThread,
}

/// Real-time priority of the engine thread (`SCHED_FIFO`, 1..=99): above ordinary
/// threads, below the kernel's own interrupt threads (50) would starve them, so a value
/// in the lower half.
pub const ENGINE_FIFO_PRIORITY: u8 = 40;

impl EngineThread {
    /// Moves `engine` onto a new thread and runs it every `block_duration`. With
    /// `realtime`, the thread asks for `SCHED_FIFO` so busy tokio workers (or anything
    /// else on the machine) cannot delay a block; without the privilege
    /// (`CAP_SYS_NICE` or an `rtprio` limit) it logs why and runs at normal priority.
    pub fn spawn(
        mut engine: Engine,
        block_duration: Duration,
        realtime: bool,
    ) -> std::io::Result<EngineThread> {
        let stats = engine.stats();
        let priority = Priority::realtime_if(realtime, ENGINE_FIFO_PRIORITY);
        let thread = OwnedThread::spawn("telepatch-engine", priority, move |stop| {
            let mut pacer = Pacer::new(Instant::now(), block_duration);
            while !stop.is_stopped() {
                match pacer.step(Instant::now()) {
                    (PacerStep::SleepUntil(deadline), _) => {
                        let now = Instant::now();
                        if deadline > now {
                            std::thread::sleep(deadline - now);
                        }
                    }
                    (PacerStep::Run(blocks), skipped) => {
                        if let Some(skipped) = skipped {
                            stats.record_late_restart(skipped);
                        }
                        if blocks > 1 {
                            stats.record_catch_up(blocks);
                        }
                        for _ in 0..blocks {
                            let began = Instant::now();
                            engine.process_block();
                            stats.record_block_time(began.elapsed());
                        }
                    }
                }
            }
            // Apply the last commands (node removals) so their nodes are retired.
            engine.process_block();
        })?;
        Ok(EngineThread { thread })
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        let _ = self.thread.stop();
    }
}

/// Locks every page the process has mapped and every page it touches from now on
/// (`mlockall`: `MCL_CURRENT`, then `MCL_FUTURE | MCL_ONFAULT`), so memory reclaim (the
/// kernel's, or a virtual machine's proactive reclaim of cold pages) cannot take code or
/// buffers the media threads need and make a real-time thread wait for the disk. Future
/// mappings are locked as they are touched rather than up front, so reserved but unused
/// memory (thread stacks, allocator arenas) costs nothing. Fails without `CAP_IPC_LOCK`
/// or a large enough `RLIMIT_MEMLOCK`; the caller decides how loudly to say so.
pub fn lock_process_memory() -> Result<(), String> {
    use rustix::mm::{MlockAllFlags, mlockall};
    mlockall(MlockAllFlags::CURRENT).map_err(|e| format!("mlockall(MCL_CURRENT): {e}"))?;
    mlockall(MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT)
        .map_err(|e| format!("mlockall(MCL_FUTURE | MCL_ONFAULT): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_the_next_absolute_deadline() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0, Duration::from_millis(1));
        assert_eq!(pacer.step(t0), (PacerStep::Run(1), None));
        // Processing took 300 µs: the next deadline is still t0 + 1 ms, not +1.3 ms.
        assert_eq!(
            pacer.step(t0 + Duration::from_micros(300)),
            (PacerStep::SleepUntil(t0 + Duration::from_millis(1)), None)
        );
    }

    #[test]
    fn catches_up_the_blocks_it_owes_after_a_late_wake() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0, Duration::from_millis(1));
        assert_eq!(pacer.step(t0), (PacerStep::Run(1), None));
        // Woke 4.5 ms late: blocks 1..=5 are due.
        assert_eq!(
            pacer.step(t0 + Duration::from_micros(5_500)),
            (PacerStep::Run(5), None)
        );
        assert_eq!(
            pacer.step(t0 + Duration::from_micros(5_600)),
            (PacerStep::SleepUntil(t0 + Duration::from_millis(6)), None)
        );
    }

    #[test]
    fn runs_exactly_one_block_per_period_over_a_long_virtual_run() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0, Duration::from_millis(1));
        let mut blocks = 0;
        // Wake every 700 µs of virtual time for 10 s.
        for step in 0..=(10_000_000 / 700) {
            if let (PacerStep::Run(n), _) = pacer.step(t0 + Duration::from_micros(step * 700)) {
                blocks += n;
            }
        }
        // Virtual time reached 9.9995 s: blocks 0..=9999 are due.
        assert_eq!(blocks, 10_000);
    }

    #[test]
    fn restarts_instead_of_bursting_after_a_stall() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0, Duration::from_millis(1));
        pacer.step(t0);
        let later = t0 + Duration::from_secs(2);
        // Blocks 1..=2000 were due: one runs now, 1999 are given up.
        assert_eq!(pacer.step(later), (PacerStep::Run(1), Some(1999)));
        assert_eq!(
            pacer.step(later + Duration::from_micros(10)),
            (
                PacerStep::SleepUntil(later + Duration::from_millis(1)),
                None
            )
        );
    }
}
