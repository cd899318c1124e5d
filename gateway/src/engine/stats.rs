//! Lock-free counters the media plane updates and the control plane reads.
//!
//! Per-block code only does relaxed atomic adds here (house style 6.6: counters, not
//! logs, per packet). Readers get a consistent-enough snapshot for metrics and the API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (in microseconds) of the block-time histogram buckets; the last bucket
/// is open-ended. Chosen around the 1 ms block budget.
pub const BLOCK_TIME_BUCKETS_US: [u64; 10] = [10, 25, 50, 100, 200, 400, 700, 1_000, 2_000, 5_000];

/// Engine-wide counters.
#[derive(Debug, Default)]
pub struct EngineStats {
    blocks: AtomicU64,
    late_restarts: AtomicU64,
    skipped_blocks: AtomicU64,
    blocks_behind_max: AtomicU64,
    block_time_ns_total: AtomicU64,
    block_time_ns_max: AtomicU64,
    block_time_buckets: [AtomicU64; BLOCK_TIME_BUCKETS_US.len() + 1],
    /// Recent block time in ns, averaged exponentially over about
    /// [`RECENT_BLOCKS`] blocks (one writer: the engine driver).
    recent_block_time_ns: AtomicU64,
}

/// Blocks the recent block time is averaged over (about a second of 1 ms blocks).
pub const RECENT_BLOCKS: u64 = 1024;

/// A copy of [`EngineStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineSnapshot {
    /// Blocks processed since start.
    pub blocks: u64,
    /// Times the driver fell so far behind that it restarted its schedule.
    pub late_restarts: u64,
    /// Blocks never processed because the driver restarted its schedule: the bus time
    /// (and the audio in it) lost to stalls.
    pub skipped_blocks: u64,
    /// The most blocks the driver ever had to catch up in one go.
    pub blocks_behind_max: u64,
    /// Sum of measured block processing times, in nanoseconds.
    pub block_time_ns_total: u64,
    /// Longest block processing time, in nanoseconds.
    pub block_time_ns_max: u64,
    /// Histogram counts, one per bucket of [`BLOCK_TIME_BUCKETS_US`] plus the overflow.
    pub block_time_buckets: Vec<u64>,
}

impl EngineStats {
    pub(crate) fn count_block(&self) {
        self.blocks.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long one block took to process (called by the driver).
    pub fn record_block_time(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.block_time_ns_total.fetch_add(ns, Ordering::Relaxed);
        self.block_time_ns_max.fetch_max(ns, Ordering::Relaxed);
        let us = ns / 1_000;
        let bucket = BLOCK_TIME_BUCKETS_US
            .iter()
            .position(|&bound| us < bound)
            .unwrap_or(BLOCK_TIME_BUCKETS_US.len());
        self.block_time_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        // Single writer, so a load and a store make the update.
        let recent = self.recent_block_time_ns.load(Ordering::Relaxed);
        let updated = recent - recent / RECENT_BLOCKS + ns.min(u64::MAX / 2) / RECENT_BLOCKS;
        self.recent_block_time_ns.store(updated, Ordering::Relaxed);
    }

    /// The recent average block processing time.
    pub fn recent_block_time(&self) -> Duration {
        Duration::from_nanos(self.recent_block_time_ns.load(Ordering::Relaxed))
    }

    /// The share of real time the engine recently spent processing blocks of
    /// `block_period` (1.0: all of it, and real time is about to break).
    pub fn recent_load(&self, block_period: Duration) -> f64 {
        self.recent_block_time().as_secs_f64() / block_period.as_secs_f64().max(1e-9)
    }

    /// Records that the driver had to run `behind` blocks back to back to catch up.
    pub fn record_catch_up(&self, behind: u64) {
        self.blocks_behind_max.fetch_max(behind, Ordering::Relaxed);
    }

    /// Records that the driver gave up catching up and restarted its schedule, leaving
    /// `skipped` blocks unprocessed.
    pub fn record_late_restart(&self, skipped: u64) {
        self.late_restarts.fetch_add(1, Ordering::Relaxed);
        self.skipped_blocks.fetch_add(skipped, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            blocks: self.blocks.load(Ordering::Relaxed),
            late_restarts: self.late_restarts.load(Ordering::Relaxed),
            skipped_blocks: self.skipped_blocks.load(Ordering::Relaxed),
            blocks_behind_max: self.blocks_behind_max.load(Ordering::Relaxed),
            block_time_ns_total: self.block_time_ns_total.load(Ordering::Relaxed),
            block_time_ns_max: self.block_time_ns_max.load(Ordering::Relaxed),
            block_time_buckets: self
                .block_time_buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Samples in one level-meter window: 100 ms on the 48 kHz bus (meters update at 10 Hz).
pub const LEVEL_WINDOW_SAMPLES: usize = 4_800;

/// Published peak and RMS level of one signal, updated once per 100 ms window.
///
/// Written by exactly one media thread (through a [`LevelAccumulator`]) and read by the
/// control plane; values are `f32` bit patterns in atomics.
#[derive(Debug, Default)]
pub struct LevelMeter {
    peak_bits: std::sync::atomic::AtomicU32,
    rms_bits: std::sync::atomic::AtomicU32,
    windows: AtomicU64,
}

/// One reading of a [`LevelMeter`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Level {
    /// Peak of the last window in dBFS (-inf for digital silence, shown as -120).
    pub peak_dbfs: f32,
    /// RMS of the last window in dBFS, AES17 convention (a full-scale sine reads 0 dBFS,
    /// like `codecs::measure::rms_dbfs`).
    pub rms_dbfs: f32,
    /// Windows measured so far; lets readers tell a fresh reading from a stale one.
    pub windows: u64,
}

/// Floor used for digital silence, so readings stay finite in JSON.
pub const SILENCE_DBFS: f32 = -120.0;

fn to_dbfs(linear: f32) -> f32 {
    if linear <= 0.0 {
        SILENCE_DBFS
    } else {
        (20.0 * linear.log10()).max(SILENCE_DBFS)
    }
}

impl LevelMeter {
    /// The last complete window.
    pub fn read(&self) -> Level {
        Level {
            peak_dbfs: to_dbfs(f32::from_bits(self.peak_bits.load(Ordering::Relaxed))),
            rms_dbfs: to_dbfs(
                f32::from_bits(self.rms_bits.load(Ordering::Relaxed)) * std::f32::consts::SQRT_2,
            ),
            windows: self.windows.load(Ordering::Relaxed),
        }
    }

    fn publish(&self, peak: f32, rms: f32) {
        self.peak_bits.store(peak.to_bits(), Ordering::Relaxed);
        self.rms_bits.store(rms.to_bits(), Ordering::Relaxed);
        self.windows.fetch_add(1, Ordering::Relaxed);
    }
}

/// The writer's half of a level meter: accumulates blocks, publishes per window.
#[derive(Debug, Default, Clone)]
pub struct LevelAccumulator {
    peak: f32,
    sum_squares: f64,
    samples: usize,
}

impl LevelAccumulator {
    /// Adds one block; publishes to `meter` when a window is complete.
    pub fn add_block(&mut self, block: &[f32], meter: &LevelMeter) {
        let mut peak = self.peak;
        let mut sum = 0.0f32;
        for &s in block {
            peak = peak.max(s.abs());
            sum += s * s;
        }
        self.peak = peak;
        self.sum_squares += f64::from(sum);
        self.samples += block.len();
        if self.samples >= LEVEL_WINDOW_SAMPLES {
            let rms = (self.sum_squares / self.samples as f64).sqrt() as f32;
            meter.publish(self.peak, rms);
            *self = LevelAccumulator::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_times_land_in_their_buckets() {
        let stats = EngineStats::default();
        stats.record_block_time(Duration::from_micros(5));
        stats.record_block_time(Duration::from_micros(150));
        stats.record_block_time(Duration::from_millis(9));
        let snap = stats.snapshot();
        assert_eq!(snap.block_time_buckets[0], 1);
        assert_eq!(snap.block_time_buckets[4], 1);
        assert_eq!(snap.block_time_buckets[BLOCK_TIME_BUCKETS_US.len()], 1);
        assert_eq!(snap.block_time_ns_max, 9_000_000);
        assert_eq!(snap.block_time_ns_total, 9_155_000);
    }

    #[test]
    fn recent_load_follows_the_block_time_over_about_a_thousand_blocks() {
        let stats = EngineStats::default();
        let period = Duration::from_millis(1);
        for _ in 0..5 * RECENT_BLOCKS {
            stats.record_block_time(Duration::from_micros(800));
        }
        let busy = stats.recent_load(period);
        assert!((0.78..=0.80).contains(&busy), "{busy}");
        // A single stalled block barely moves it.
        stats.record_block_time(Duration::from_millis(20));
        assert!(stats.recent_load(period) - busy < 0.02);
        // After a few seconds of light blocks the load is light again.
        for _ in 0..5 * RECENT_BLOCKS {
            stats.record_block_time(Duration::from_micros(100));
        }
        let light = stats.recent_load(period);
        assert!((0.09..=0.11).contains(&light), "{light}");
    }

    #[test]
    fn level_meter_reads_a_full_scale_sine_as_0_dbfs_peak_and_rms() {
        let meter = LevelMeter::default();
        let mut acc = LevelAccumulator::default();
        let sine: Vec<f32> = (0..LEVEL_WINDOW_SAMPLES)
            .map(|n| (2.0 * std::f32::consts::PI * 1000.0 * n as f32 / 48_000.0).sin())
            .collect();
        assert_eq!(meter.read().windows, 0);
        for block in sine.chunks(48) {
            acc.add_block(block, &meter);
        }
        let level = meter.read();
        assert_eq!(level.windows, 1);
        assert!(level.peak_dbfs.abs() < 0.01, "{level:?}");
        assert!(level.rms_dbfs.abs() < 0.01, "{level:?}");
    }

    #[test]
    fn silence_reads_as_the_floor() {
        let meter = LevelMeter::default();
        let mut acc = LevelAccumulator::default();
        for _ in 0..100 {
            acc.add_block(&[0.0; 48], &meter);
        }
        assert_eq!(meter.read().peak_dbfs, SILENCE_DBFS);
        assert_eq!(meter.read().rms_dbfs, SILENCE_DBFS);
    }
}
