//! The [`MediaClock`] trait: where AES67 flows get PTP time from. Implemented by the
//! host clock (`clock::SystemClock`) and the built-in PTP follower (`ptp::FollowClock`),
//! which is why it lives apart from both.

/// A source of PTP time for AES67 flows. Implementations are cheap to query from a
/// media thread (no locks held across I/O, no allocation).
pub trait MediaClock: Send + Sync {
    /// PTP time now, in nanoseconds since the PTP epoch (1970-01-01 00:00:00 TAI), or
    /// `None` while the clock is not usable (a follower that has not locked yet). A
    /// follower gives the grandmaster's time as is, which is TAI when the grandmaster
    /// announces the PTP timescale (and what every receiver locked to it uses anyway).
    fn ptp_now_ns(&self) -> Option<u64>;

    /// The SDP `a=ts-refclk:` value, e.g. `ptp=IEEE1588-2008:39-A7-94-FF-FE-07-CB-D0:0`.
    fn ts_refclk(&self) -> String;

    /// State for the API (`mode`, lock state, grandmaster, offsets).
    fn status(&self) -> serde_json::Value;
}
