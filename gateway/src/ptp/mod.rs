//! `follow` mode of the media clock: the built-in PTPv2 follower (aes67.md §5 option 2,
//! §11).
//!
//! - [`local_clock`]: the monotonic time base and kernel receive timestamps;
//! - [`tracker`]: the sans-IO follower ([`codecs::ptp::Follower`]) with holdover, change
//!   detection and the status snapshot;
//! - [`published`]: the lock-free hand-over of the estimate to media threads;
//! - [`driver`]: the sockets and the `telepatch-ptp` thread.
//!
//! [`FollowClock`] ties them together and is the [`MediaClock`] of `follow` mode:
//! [`MediaClock::ptp_now_ns`] reads `CLOCK_MONOTONIC` and maps it through the published
//! estimate, without a lock or an allocation.
//!
//! PTP time here is the grandmaster's time as it puts it on the wire: TAI when it
//! announces ptpTimescale, otherwise its arbitrary timescale (a `ptp4l` grandmaster
//! stamping with the system clock, `-S`, announces ARB and sends `CLOCK_REALTIME`).
//! Receivers locked to the same grandmaster expect exactly that time in RTP timestamps,
//! so it is used as is.

pub mod driver;
pub mod local_clock;
pub mod published;
pub mod tracker;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use api::control::{ClockMode, ClockState, ClockStatus, PtpCounters};
use codecs::ptp::{
    ClockIdentity, EVENT_PORT, Follower, FollowerConfig, GENERAL_PORT, LockState, PortIdentity,
};

use crate::media_clock::MediaClock;
use crate::threads::{OwnedThread, Priority};
use local_clock::{ClockPair, StampedSocket};
use published::PublishedCell;
use tracker::{Snapshot, Tracker};

/// Where and how the follower runs (`[clock]` in `follow` mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowSettings {
    /// IPv4 address of the interface PTP arrives on.
    pub interface: Ipv4Addr,
    /// PTP domain to follow.
    pub domain: u8,
    /// DSCP of our Delay_Req.
    pub dscp: u8,
}

/// The follower could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FollowError {
    /// A socket operation failed.
    #[error("PTP follower: cannot {what} for UDP port {port} on {interface}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The port (319 or 320).
        port: u16,
        /// The configured interface.
        interface: Ipv4Addr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The thread could not be spawned.
    #[error("PTP follower: cannot start its thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What the driver thread and the clock's readers share.
#[derive(Debug)]
pub struct Shared {
    settings: FollowSettings,
    our_port: PortIdentity,
    published: PublishedCell,
    snapshot: Mutex<Snapshot>,
}

/// The [`MediaClock`] of `follow` mode. See the module documentation.
#[derive(Debug)]
pub struct FollowClock {
    shared: Arc<Shared>,
    /// Stopped and joined by [`FollowClock::stop`] or on drop.
    thread: OwnedThread,
}

/// A random clock identity with the locally-administered bit set: unique on the
/// network without borrowing the interface's MAC, which a `ptp4l` on the same host
/// already uses for its own identity.
fn random_identity() -> ClockIdentity {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut identity = [0u8; 8];
    identity.copy_from_slice(&bytes[..8]);
    identity[0] = (identity[0] | 0x02) & !0x01;
    ClockIdentity(identity)
}

impl FollowClock {
    /// Opens the sockets on `settings.interface` and starts the follower thread.
    pub fn start(settings: FollowSettings) -> Result<Arc<FollowClock>, FollowError> {
        let event = driver::open_socket(EVENT_PORT, settings.interface, settings.dscp)?;
        let general = driver::open_socket(GENERAL_PORT, settings.interface, settings.dscp)?;
        let stamped = |socket, port| {
            StampedSocket::new(socket).map_err(|source| FollowError::Socket {
                what: "enable SO_TIMESTAMPNS",
                port,
                interface: settings.interface,
                source,
            })
        };
        let event = stamped(event, EVENT_PORT)?;
        let general = stamped(general, GENERAL_PORT)?;
        let our_port = PortIdentity {
            clock: random_identity(),
            port: 1,
        };
        let shared = Arc::new(Shared {
            settings,
            our_port,
            published: PublishedCell::new(),
            snapshot: Mutex::new(Snapshot::default()),
        });
        let driver = driver::Driver {
            event,
            general,
            tracker: Tracker::new(Follower::new(FollowerConfig::new(
                settings.domain,
                our_port,
            ))),
            shared: Arc::clone(&shared),
        };
        let thread = OwnedThread::spawn("telepatch-ptp", Priority::Normal, move |stop| {
            driver.run(&stop)
        })
        .map_err(FollowError::Thread)?;
        tracing::info!(
            interface = %settings.interface,
            domain = settings.domain,
            identity = %our_port.clock,
            "PTP follower listening"
        );
        Ok(Arc::new(FollowClock { shared, thread }))
    }

    /// Stops the thread and closes the sockets (waits at most ~100 ms).
    pub fn stop(&self) {
        let _ = self.thread.stop();
    }

    /// Our own port identity (in Delay_Req).
    pub fn port_identity(&self) -> PortIdentity {
        self.shared.our_port
    }

    fn snapshot(&self) -> Snapshot {
        *self
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The clock's state for the API and metrics.
    pub fn clock_status(&self) -> ClockStatus {
        let pair = ClockPair::now();
        let ptp_time_ns = self.shared.published.ptp_at(pair.monotonic_ns);
        let snap = self.snapshot();
        let holdover_until = snap
            .holdover_until_ns
            .filter(|&until| until >= pair.monotonic_ns && ptp_time_ns.is_some());
        let state = match (snap.state, holdover_until) {
            (Some(LockState::Locked), _) => ClockState::Locked,
            (_, Some(_)) => ClockState::Holdover,
            (Some(LockState::Acquiring), None) => ClockState::Acquiring,
            (Some(LockState::Listening) | None, None) => ClockState::Listening,
        };
        let gm = snap.grandmaster;
        let stats = snap.stats;
        let counters = snap.counters;
        ClockStatus {
            mode: ClockMode::Follow,
            state,
            usable: ptp_time_ns.is_some(),
            ptp_time_ns,
            realtime_ns: pair.realtime_ns,
            ts_refclk: ts_refclk(gm.map(|gm| gm.identity), self.shared.settings.domain),
            grandmaster_id: gm.map(|gm| gm.identity.to_string()),
            domain: self.shared.settings.domain,
            source: None,
            tai_utc_offset_s: gm.map(|gm| i32::from(gm.current_utc_offset)),
            interface: Some(self.shared.settings.interface.to_string()),
            master_port: gm.map(|gm| format!("{}/{}", gm.master_port.clock, gm.master_port.port)),
            ptp_timescale: gm.map(|gm| gm.ptp_timescale),
            offset_ns: snap.offset_ns,
            rate_ratio_ppm: snap.rate_ratio.map(|r| (r - 1.0) * 1e6),
            mean_path_delay_ns: snap.mean_path_delay_ns,
            last_sync_age_ms: snap
                .last_sync_local_ns
                .map(|t| pair.monotonic_ns.saturating_sub(t) as f64 / 1e6),
            fit_rms_ns: snap.fit_rms_ns,
            holdover_remaining_ms: holdover_until
                .map(|until| (until - pair.monotonic_ns) / 1_000_000),
            counters: Some(PtpCounters {
                announces: stats.announces,
                syncs: stats.syncs,
                delay_requests: stats.delay_reqs,
                delay_responses: stats.delay_resps,
                delay_response_timeouts: stats.delay_resp_timeouts,
                outliers: stats.outliers,
                resets: stats.resets,
                ignored: stats.ignored,
                bad_messages: counters.bad_messages,
                unsupported: counters.unsupported,
                kernel_timestamps: counters.kernel_timestamps,
                read_timestamps: counters.read_timestamps,
                send_errors: counters.send_errors,
            }),
        }
    }
}

/// The `a=ts-refclk` value for a grandmaster (RFC 7273 form, aes67.md §6), or
/// `ptp=IEEE1588-2008:traceable` while none is known.
pub fn ts_refclk(grandmaster: Option<ClockIdentity>, domain: u8) -> String {
    match grandmaster {
        Some(gm) => format!("ptp=IEEE1588-2008:{gm}:{domain}"),
        None => "ptp=IEEE1588-2008:traceable".to_owned(),
    }
}

impl MediaClock for FollowClock {
    fn ptp_now_ns(&self) -> Option<u64> {
        self.shared.published.ptp_at(local_clock::monotonic_ns())
    }

    fn ts_refclk(&self) -> String {
        let gm = self.snapshot().grandmaster.map(|gm| gm.identity);
        ts_refclk(gm, self.shared.settings.domain)
    }

    fn status(&self) -> serde_json::Value {
        serde_json::to_value(self.clock_status()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_refclk_names_the_grandmaster_and_domain() {
        let gm: ClockIdentity = "00-1D-C1-FF-FE-12-34-56".parse().unwrap();
        assert_eq!(
            ts_refclk(Some(gm), 0),
            "ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0"
        );
        assert_eq!(ts_refclk(None, 3), "ptp=IEEE1588-2008:traceable");
    }

    #[test]
    fn random_identities_are_local_unicast_and_distinct() {
        let a = random_identity();
        let b = random_identity();
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.0[0] & 0x03, 0x02, "{id}");
        }
    }

    #[test]
    fn a_follower_on_loopback_reports_listening_and_stops() {
        // Ports 319/320 need root, which the test machines have (the PTP end-to-end test
        // needs it anyway). Nothing announces on loopback: the clock is unusable.
        let clock = FollowClock::start(FollowSettings {
            interface: Ipv4Addr::LOCALHOST,
            domain: 0,
            dscp: 56,
        })
        .expect("start the follower (as root)");
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert_eq!(clock.ptp_now_ns(), None);
        assert_eq!(clock.ts_refclk(), "ptp=IEEE1588-2008:traceable");
        let status = clock.clock_status();
        assert_eq!(status.mode, ClockMode::Follow);
        assert_eq!(status.state, ClockState::Listening);
        assert!(!status.usable);
        assert_eq!(status.interface.as_deref(), Some("127.0.0.1"));
        assert_eq!(status.counters.unwrap().syncs, 0);
        let json = clock.status();
        assert_eq!(json["mode"], "follow");
        assert_eq!(json["state"], "listening");
        let started = std::time::Instant::now();
        clock.stop();
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        clock.stop();
    }
}
