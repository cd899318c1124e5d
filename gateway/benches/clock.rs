//! Cost of reading PTP time from a media thread: `ptp_now_ns` of both media clocks.
//!
//! `system` mode reads `CLOCK_REALTIME` (+ the TAI offset); `follow` mode reads
//! `CLOCK_MONOTONIC` and maps it through the follower's published estimate (a sequence
//! lock of atomics, `gateway::ptp::published`), which is measured here with an estimate
//! published the way the driver thread publishes it, and with the driver thread writing
//! concurrently (a writer 1000 times faster than the real one: 8 Syncs/s).
//!
//! Run: `cargo bench -p telepatch --bench clock`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use codecs::ptp::TimeMapping;
use criterion::{Criterion, criterion_group, criterion_main};
use gateway::clock::{MediaClock, SystemClock, TAI_UTC_OFFSET, TaiSource};
use gateway::ptp::local_clock::monotonic_ns;
use gateway::ptp::published::{Published, PublishedCell};

fn published(local_ns: u64) -> Option<Published> {
    Some(Published {
        mapping: TimeMapping {
            local_ns,
            ptp_ns: 1_700_000_000_000_000_000,
            rate_ratio: 1.000_012,
        },
        usable_until_ns: u64::MAX,
    })
}

fn clock_reads(c: &mut Criterion) {
    let system = SystemClock::new(TaiSource::RealtimePlus(TAI_UTC_OFFSET), "");
    c.bench_function("system ptp_now_ns", |b| b.iter(|| system.ptp_now_ns()));

    let cell = Arc::new(PublishedCell::new());
    cell.write(published(monotonic_ns()));
    c.bench_function("follow ptp_now_ns", |b| {
        b.iter(|| cell.ptp_at(monotonic_ns()))
    });

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (cell, stop) = (Arc::clone(&cell), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                cell.write(published(monotonic_ns()));
                std::thread::sleep(Duration::from_micros(125));
            }
        })
    };
    c.bench_function("follow ptp_now_ns, writer active", |b| {
        b.iter(|| cell.ptp_at(monotonic_ns()))
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}

criterion_group!(benches, clock_reads);
criterion_main!(benches);
