//! Hands the follower's estimate from the driver thread to media threads without a lock.
//!
//! The driver writes a few times a second; flows read on every packet (aes67.md §5:
//! pacing follows the media clock). A sequence lock built from atomics: the writer bumps
//! the sequence to odd, stores the fields, bumps it to even; a reader retries when the
//! sequence was odd or changed under it. Readers never block the writer and nothing
//! allocates.

use std::sync::atomic::{AtomicU64, Ordering, fence};

use codecs::ptp::TimeMapping;

/// The estimate media threads map with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Published {
    /// The local (monotonic) -> PTP line.
    pub mapping: TimeMapping,
    /// Local time (monotonic ns) after which the estimate must not be used: `u64::MAX`
    /// while locked, the end of the holdover after lock is lost.
    pub usable_until_ns: u64,
}

/// A [`Published`] value behind a sequence lock. One writer (the driver thread); any
/// number of readers.
#[derive(Debug, Default)]
pub struct PublishedCell {
    sequence: AtomicU64,
    local_ns: AtomicU64,
    ptp_ns: AtomicU64,
    rate_bits: AtomicU64,
    usable_until_ns: AtomicU64,
}

impl PublishedCell {
    /// An empty cell: [`PublishedCell::read`] gives `None` until the first write.
    pub fn new() -> PublishedCell {
        PublishedCell::default()
    }

    /// Stores `value` (the driver thread only), or clears the cell with `None`.
    pub fn write(&self, value: Option<Published>) {
        let sequence = self.sequence.load(Ordering::Relaxed);
        self.sequence
            .store(sequence.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        match value {
            Some(v) => {
                // PTP ns below 2^63 (the year 2262), so i64 holds every sane value; an
                // insane one is clamped and maps nowhere useful, never panics.
                let ptp = v.mapping.ptp_ns.clamp(0, i128::from(i64::MAX)) as u64;
                self.local_ns.store(v.mapping.local_ns, Ordering::Relaxed);
                self.ptp_ns.store(ptp, Ordering::Relaxed);
                self.rate_bits
                    .store(v.mapping.rate_ratio.to_bits(), Ordering::Relaxed);
                self.usable_until_ns
                    .store(v.usable_until_ns, Ordering::Relaxed);
            }
            // usable_until 0 marks the cell empty.
            None => self.usable_until_ns.store(0, Ordering::Relaxed),
        }
        self.sequence
            .store(sequence.wrapping_add(2), Ordering::Release);
    }

    /// The latest value, `None` if empty.
    pub fn read(&self) -> Option<Published> {
        loop {
            let before = self.sequence.load(Ordering::Acquire);
            let local_ns = self.local_ns.load(Ordering::Relaxed);
            let ptp_ns = self.ptp_ns.load(Ordering::Relaxed);
            let rate_bits = self.rate_bits.load(Ordering::Relaxed);
            let usable_until_ns = self.usable_until_ns.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            let after = self.sequence.load(Ordering::Relaxed);
            if before != after || before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            if usable_until_ns == 0 {
                return None;
            }
            return Some(Published {
                mapping: TimeMapping {
                    local_ns,
                    ptp_ns: i128::from(ptp_ns),
                    rate_ratio: f64::from_bits(rate_bits),
                },
                usable_until_ns,
            });
        }
    }

    /// PTP time (ns) at the monotonic instant `local_ns`, if the estimate is usable then.
    pub fn ptp_at(&self, local_ns: u64) -> Option<u64> {
        let published = self.read()?;
        if local_ns > published.usable_until_ns {
            return None;
        }
        u64::try_from(published.mapping.ptp_at(local_ns)).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;

    fn value(k: u64) -> Published {
        Published {
            mapping: TimeMapping {
                local_ns: k,
                ptp_ns: i128::from(k) * 3,
                rate_ratio: 1.0 + k as f64 * 1e-9,
            },
            usable_until_ns: k + 1_000,
        }
    }

    #[test]
    fn empty_written_cleared() {
        let cell = PublishedCell::new();
        assert_eq!(cell.read(), None);
        assert_eq!(cell.ptp_at(5), None);
        let v = Published {
            mapping: TimeMapping {
                local_ns: 1_000,
                ptp_ns: 1_700_000_000_000_000_000,
                rate_ratio: 1.0 + 50e-6,
            },
            usable_until_ns: 1_000_000_000,
        };
        cell.write(Some(v));
        assert_eq!(cell.read(), Some(v));
        assert_eq!(cell.ptp_at(1_000), Some(1_700_000_000_000_000_000));
        assert_eq!(cell.ptp_at(1_000_001_000), None, "past the usable limit");
        assert_eq!(
            cell.ptp_at(999_999_000),
            // 999_998_000 × 1.00005 = 1_000_047_999.9, rounded.
            Some(1_700_000_000_000_000_000 + 1_000_048_000)
        );
        cell.write(None);
        assert_eq!(cell.read(), None);
    }

    #[test]
    fn readers_never_see_a_torn_value() {
        let cell = Arc::new(PublishedCell::new());
        cell.write(Some(value(1)));
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (cell, stop) = (Arc::clone(&cell), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let v = cell.read().expect("never empty");
                        assert_eq!(v, value(v.mapping.local_ns), "torn read");
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for k in 2..200_000 {
            cell.write(Some(value(k)));
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            assert!(reader.join().unwrap() > 0);
        }
    }
}
