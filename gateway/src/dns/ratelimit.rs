//! Per-client-address rate limiting of DNS queries: a token bucket per address, so a
//! broken listener (the reference client loops without pause while `sequence` is
//! missing, aodns.md §10) or a flood cannot take the server from everyone else.
//!
//! IPv6 clients are limited per /64 (one host usually owns a whole /64). Time is a
//! parameter, so the limiter is tested on virtual time. Buckets live in a few shards
//! behind their own mutexes (held for a handful of instructions), and each shard keeps
//! at most [`MAX_PER_SHARD`] addresses: when full it forgets the buckets that have
//! refilled (idle clients), at most once a second (a flood of spoofed addresses must not
//! make every query scan the table), and past that, new addresses pass unlimited
//! (counted in [`RateLimiter::untracked`]) rather than being refused.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Shards of the bucket table.
const SHARDS: usize = 16;
/// Addresses remembered per shard.
pub const MAX_PER_SHARD: usize = 4096;
/// Least time between two sweeps of idle buckets in one shard.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<IpAddr, Bucket>,
    last_sweep: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The key a client is limited by: its IPv4 address, or its IPv6 /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
    }
}

/// Token buckets per client. See the module documentation.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    untracked: AtomicU64,
}

impl RateLimiter {
    /// `rate` queries per second per client with bursts of `burst`; `rate == 0` lets
    /// everything through.
    pub fn new(rate: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            untracked: AtomicU64::new(0),
        }
    }

    /// Whether limiting is on.
    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes one token for `ip` at `now`; false when the client is over its rate.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if !self.enabled() {
            return true;
        }
        let key = client_key(ip);
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if !shard.buckets.contains_key(&key) && shard.buckets.len() >= MAX_PER_SHARD {
            let swept_lately = shard
                .last_sweep
                .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_INTERVAL);
            if !swept_lately {
                shard.last_sweep = Some(now);
                self.forget_idle(&mut shard.buckets, now);
            }
            if shard.buckets.len() >= MAX_PER_SHARD {
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        let bucket = shard.buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops the buckets that would be full by now: those clients are idle.
    fn forget_idle(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
        });
    }

    /// Queries let through unlimited because the tables were full of active clients.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let limiter = RateLimiter::new(10, 5);
        let ip = IpAddr::from([192, 0, 2, 1]);
        let t0 = Instant::now();
        let burst = (0..20).filter(|_| limiter.allow(ip, t0)).count();
        assert_eq!(burst, 5);
        // 10 per second afterwards: 1 s of steady queries at 1 kHz lets ~10 through.
        let passed = (1..=1000)
            .filter(|ms| limiter.allow(ip, t0 + Duration::from_millis(*ms)))
            .count();
        assert!((9..=11).contains(&passed), "{passed}");
        // Another client is not affected.
        assert!(limiter.allow(IpAddr::from([192, 0, 2, 2]), t0));
    }

    #[test]
    fn limits_ipv6_per_64_and_mapped_ipv4_as_ipv4() {
        let limiter = RateLimiter::new(1, 2);
        let t0 = Instant::now();
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(limiter.allow(a.into(), t0));
        assert!(limiter.allow(b.into(), t0));
        assert!(!limiter.allow(a.into(), t0), "same /64 shares the bucket");
        assert!(limiter.allow("2001:db8:1:3::1".parse::<IpAddr>().unwrap(), t0));
        let v4 = IpAddr::from([198, 51, 100, 7]);
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert!(limiter.allow(v4, t0));
        assert!(limiter.allow(mapped, t0));
        assert!(!limiter.allow(v4, t0));
    }

    #[test]
    fn zero_rate_disables_limiting() {
        let limiter = RateLimiter::new(0, 0);
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| limiter.allow(IpAddr::from([10, 0, 0, 1]), t0)));
    }

    #[test]
    fn full_tables_forget_idle_clients_and_never_refuse_new_ones() {
        let limiter = RateLimiter::new(1, 1);
        let t0 = Instant::now();
        // Many more addresses than the tables hold, all active at once.
        let clients = (SHARDS * MAX_PER_SHARD * 2) as u32;
        for n in 0..clients {
            assert!(limiter.allow(IpAddr::from(n.to_be_bytes()), t0));
        }
        assert!(limiter.untracked() > 0);
        // Later, every old bucket has refilled and is forgotten when room is needed.
        let later = t0 + Duration::from_secs(10);
        let fresh = IpAddr::from([255, 255, 255, 254]);
        assert!(limiter.allow(fresh, later));
        assert!(!limiter.allow(fresh, later), "tracked again");
    }
}
