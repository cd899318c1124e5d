//! File descriptors: raising the process's limit at start-up, and the rule that keeps
//! HTTP API connections from using up the descriptors calls need.
//!
//! Every AudioSocket connection is a descriptor, and so is every HTTP API connection.
//! Once the process runs out, `accept` fails for both. The rule: the descriptors of
//! [`CallReserve`] (two per call slot, one per unidentified place, and a fixed
//! [`BASE_RESERVE`] for everything else the gateway opens) are kept for calls, and the
//! API may hold at most what is left, never more than `api.max_connections`, never fewer
//! than [`MIN_API_CONNECTIONS`] (so `/healthz` keeps answering even on a limit too low for
//! the configured calls, which is logged).

/// Descriptors kept for what is neither a call nor an API connection: runtimes, the
/// listeners, database connections (three files each for SQLite), DNS, AES67 and jam
/// sockets, standing players' files, standard streams.
pub const BASE_RESERVE: u64 = 128;

/// Descriptors each call slot may need: its connection and a recording file.
pub const PER_CALL: u64 = 2;

/// The API is never capped below this, whatever the limit.
pub const MIN_API_CONNECTIONS: usize = 4;

/// When the hard limit is unlimited, the soft limit is raised to this (the kernel's
/// default `fs.nr_open`; descriptors can never be unlimited).
const UNLIMITED_TARGET: u64 = 1 << 20;

/// What the calls configuration needs kept free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallReserve {
    /// `audiosocket.max_calls`.
    pub max_calls: usize,
    /// `audiosocket.max_unidentified`.
    pub max_unidentified: usize,
}

impl CallReserve {
    /// Descriptors kept for calls and the rest of the gateway.
    pub fn descriptors(&self) -> u64 {
        BASE_RESERVE
            .saturating_add(PER_CALL.saturating_mul(self.max_calls as u64))
            .saturating_add(self.max_unidentified as u64)
    }
}

/// The cap on concurrent API connections under a descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiConnectionCap {
    /// Connections the API may hold at once.
    pub connections: usize,
    /// Whether the limit left less than `api.max_connections` after the calls' reserve.
    pub limited_by_descriptors: bool,
    /// Whether the limit is too low even for the calls' reserve plus the minimum API.
    pub reserve_short: bool,
}

/// Applies the rule: `min(configured, limit - reserve)`, at least [`MIN_API_CONNECTIONS`].
/// `limit` is the soft `RLIMIT_NOFILE` (`None`: unlimited).
pub fn api_connection_cap(
    configured: usize,
    limit: Option<u64>,
    reserve: CallReserve,
) -> ApiConnectionCap {
    let configured = configured.max(MIN_API_CONNECTIONS);
    let Some(limit) = limit else {
        return ApiConnectionCap {
            connections: configured,
            limited_by_descriptors: false,
            reserve_short: false,
        };
    };
    let left = limit.saturating_sub(reserve.descriptors());
    let left = usize::try_from(left).unwrap_or(usize::MAX);
    ApiConnectionCap {
        connections: configured.min(left).max(MIN_API_CONNECTIONS),
        limited_by_descriptors: left < configured,
        reserve_short: left < MIN_API_CONNECTIONS,
    }
}

/// The soft and hard `RLIMIT_NOFILE` (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit, the one that applies.
    pub soft: Option<u64>,
    /// The hard limit, the most the soft one can be raised to.
    pub hard: Option<u64>,
}

/// The process's descriptor limit now.
pub fn current() -> NofileLimit {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    NofileLimit {
        soft: limit.current,
        hard: limit.maximum,
    }
}

/// The result of [`raise_to_hard`].
#[derive(Debug)]
pub struct Raised {
    /// The limit before.
    pub before: NofileLimit,
    /// The limit after (unchanged if raising failed).
    pub after: NofileLimit,
    /// Why raising failed, if it did.
    pub error: Option<std::io::Error>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one (needs no privilege).
pub fn raise_to_hard() -> Raised {
    let before = current();
    let target = before.hard.unwrap_or(UNLIMITED_TARGET);
    if before.soft.is_some_and(|soft| soft >= target) || before.soft.is_none() {
        return Raised {
            before,
            after: before,
            error: None,
        };
    }
    let error = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(target),
            maximum: before.hard,
        },
    )
    .err()
    .map(std::io::Error::from);
    Raised {
        before,
        after: current(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: CallReserve = CallReserve {
        max_calls: 500,
        max_unidentified: 1024,
    };

    #[test]
    fn the_reserve_counts_two_per_call_one_per_unidentified_place_and_the_base() {
        assert_eq!(DEFAULTS.descriptors(), 128 + 1000 + 1024);
    }

    #[test]
    fn a_large_limit_leaves_the_configured_cap() {
        let cap = api_connection_cap(256, Some(65_536), DEFAULTS);
        assert_eq!(cap.connections, 256);
        assert!(!cap.limited_by_descriptors && !cap.reserve_short);
        let cap = api_connection_cap(256, None, DEFAULTS);
        assert_eq!(cap.connections, 256);
    }

    #[test]
    fn a_small_limit_gives_the_api_only_what_calls_leave() {
        let reserve = CallReserve {
            max_calls: 4,
            max_unidentified: 8,
        };
        // 256 - (128 + 8 + 8) = 112.
        let cap = api_connection_cap(256, Some(256), reserve);
        assert_eq!(cap.connections, 112);
        assert!(cap.limited_by_descriptors);
        assert!(!cap.reserve_short);
    }

    #[test]
    fn a_limit_below_the_reserve_keeps_a_minimal_api_and_says_so() {
        let cap = api_connection_cap(256, Some(1024), DEFAULTS);
        assert_eq!(cap.connections, MIN_API_CONNECTIONS);
        assert!(cap.limited_by_descriptors && cap.reserve_short);
    }

    #[test]
    fn the_configured_cap_is_never_below_the_minimum() {
        let cap = api_connection_cap(1, None, DEFAULTS);
        assert_eq!(cap.connections, MIN_API_CONNECTIONS);
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let before = current();
        let raised = raise_to_hard();
        assert!(raised.error.is_none(), "{:?}", raised.error);
        assert_eq!(raised.after.hard, before.hard);
        match (before.soft, raised.after.soft) {
            (Some(b), Some(a)) => assert!(a >= b),
            (None, after) => assert_eq!(after, None),
            (Some(_), None) => {}
        }
        assert_eq!(raised.after.soft, raised.after.hard.or(raised.after.soft));
    }
}
