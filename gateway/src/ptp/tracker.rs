//! The follower as the driver thread runs it: the sans-IO [`Follower`] plus what the
//! gateway adds around it, still without sockets or clock reads (time is a parameter),
//! so it is tested with a simulated grandmaster.
//!
//! - After every batch of datagrams [`Tracker::update`] publishes the estimate for
//!   media threads ([`PublishedCell`]) and a status snapshot for the API, and reports
//!   the changes the driver logs: lock gained or lost, grandmaster selected, changed or
//!   lost, holdover over.
//! - Holdover: when lock is lost (the grandmaster went quiet, or a new one is being
//!   acquired) the last locked estimate stays usable for [`HOLDOVER_NS`]; a flow keeps
//!   stamping through a short outage instead of stopping, and the error grows only
//!   with the rate error (well under 1 µs/s once locked).

use std::sync::Mutex;

use codecs::ptp::{
    ClockIdentity, Follower, FollowerStats, GrandmasterInfo, LockState, PtpError, TimeMapping,
};

use super::published::{Published, PublishedCell};

/// How long the last locked estimate stays usable after lock is lost.
pub const HOLDOVER_NS: u64 = 10_000_000_000;

/// Counters the driver keeps beside the follower's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverCounters {
    /// Datagrams that are not PTPv2 messages (too short, garbage).
    pub bad_messages: u64,
    /// Well-formed messages this follower does not use (PTPv1, Pdelay, Management,
    /// Signaling).
    pub unsupported: u64,
    /// Datagrams stamped by the kernel (`SO_TIMESTAMPNS`).
    pub kernel_timestamps: u64,
    /// Datagrams stamped by a clock read after receipt (no kernel stamp came).
    pub read_timestamps: u64,
    /// Delay_Req that could not be sent.
    pub send_errors: u64,
}

/// Everything the API shows about the follower, copied out after each batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// The follower's state.
    pub state: Option<LockState>,
    /// Whether the last locked estimate is in use although lock is lost.
    pub holdover_until_ns: Option<u64>,
    /// The selected master.
    pub grandmaster: Option<GrandmasterInfo>,
    /// `estimate - master` at the newest Sync, ns.
    pub offset_ns: Option<i64>,
    /// Master ns per local ns.
    pub rate_ratio: Option<f64>,
    /// Mean path delay, ns.
    pub mean_path_delay_ns: Option<i64>,
    /// RMS residual of the Sync fit, ns.
    pub fit_rms_ns: Option<f64>,
    /// Local (monotonic) receive time of the newest Sync used.
    pub last_sync_local_ns: Option<u64>,
    /// The follower's counters.
    pub stats: FollowerStats,
    /// The driver's counters.
    pub counters: DriverCounters,
}

/// A change worth a log line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// A grandmaster was selected where there was none.
    GrandmasterSelected(GrandmasterInfo),
    /// The selected grandmaster changed.
    GrandmasterChanged {
        /// The previous one.
        from: ClockIdentity,
        /// The new one.
        to: GrandmasterInfo,
    },
    /// No grandmaster is announcing any more.
    GrandmasterLost(ClockIdentity),
    /// The follower locked.
    Locked {
        /// The grandmaster.
        grandmaster: ClockIdentity,
        /// Mean path delay, ns.
        mean_path_delay_ns: i64,
        /// Rate ratio in ppm (master against our monotonic clock).
        rate_ratio_ppm: f64,
    },
    /// Lock was lost; the last estimate is used until `holdover_until_ns`.
    Unlocked {
        /// The follower's state now.
        state: LockState,
    },
    /// The holdover ran out: the media clock is unusable until lock returns.
    HoldoverEnded,
}

/// The follower, its publication and its change detection. See the module docs.
#[derive(Debug)]
pub struct Tracker {
    follower: Follower,
    counters: DriverCounters,
    last_state: LockState,
    last_grandmaster: Option<ClockIdentity>,
    last_locked: Option<TimeMapping>,
    holdover_until_ns: Option<u64>,
}

impl Tracker {
    /// Wraps a fresh follower.
    pub fn new(follower: Follower) -> Tracker {
        Tracker {
            follower,
            counters: DriverCounters::default(),
            last_state: LockState::Listening,
            last_grandmaster: None,
            last_locked: None,
            holdover_until_ns: None,
        }
    }

    /// The follower (read-only).
    pub fn follower(&self) -> &Follower {
        &self.follower
    }

    /// Handles one received datagram stamped at `local_ns` (`kernel_stamp` says how).
    /// Bad input is counted, never fatal.
    pub fn on_datagram(&mut self, datagram: &[u8], local_ns: u64, kernel_stamp: bool) {
        if kernel_stamp {
            self.counters.kernel_timestamps += 1;
        } else {
            self.counters.read_timestamps += 1;
        }
        match self.follower.handle(datagram, local_ns) {
            Ok(()) => {}
            Err(PtpError::Unsupported { .. } | PtpError::UnsupportedVersion { .. }) => {
                self.counters.unsupported += 1;
            }
            Err(_) => self.counters.bad_messages += 1,
        }
    }

    /// Counts a datagram that was dropped before decoding (longer than any PTP message).
    pub fn count_bad_message(&mut self) {
        self.counters.bad_messages += 1;
    }

    /// A Delay_Req to send now, written into `out` (see [`Follower::poll_transmit`]).
    pub fn poll_transmit(&mut self, now_ns: u64, out: &mut [u8]) -> Option<usize> {
        // `out` is sized by the driver for a Delay_Req, so encoding cannot fail; if it
        // ever did, skipping one request is the right outcome.
        self.follower.poll_transmit(now_ns, out).ok().flatten()
    }

    /// Reports when the Delay_Req with `sequence_id` actually left.
    pub fn delay_req_sent(&mut self, sequence_id: u16, tx_local_ns: u64) {
        self.follower.delay_req_sent(sequence_id, tx_local_ns);
    }

    /// A Delay_Req could not be sent.
    pub fn send_failed(&mut self) {
        self.counters.send_errors += 1;
    }

    /// When the follower next wants [`Tracker::poll_transmit`] called.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.follower.poll_timeout()
    }

    /// Publishes the estimate and the snapshot as of `now_ns`; calls `on_change` for
    /// each change since the previous call.
    pub fn update(
        &mut self,
        now_ns: u64,
        published: &PublishedCell,
        snapshot: &Mutex<Snapshot>,
        mut on_change: impl FnMut(Change),
    ) {
        self.follower.handle_timeout(now_ns);
        let grandmaster = self.follower.grandmaster();
        match (self.last_grandmaster, grandmaster) {
            (None, Some(gm)) => on_change(Change::GrandmasterSelected(gm)),
            (Some(from), Some(to)) if from != to.identity => {
                on_change(Change::GrandmasterChanged { from, to });
            }
            (Some(from), None) => on_change(Change::GrandmasterLost(from)),
            _ => {}
        }
        self.last_grandmaster = grandmaster.map(|gm| gm.identity);

        let state = self.follower.state();
        if state == LockState::Locked {
            if let Some(mapping) = self.follower.mapping() {
                if self.last_state != LockState::Locked {
                    on_change(Change::Locked {
                        grandmaster: grandmaster.map(|gm| gm.identity).unwrap_or_default(),
                        mean_path_delay_ns: self.follower.mean_path_delay_ns().unwrap_or(0),
                        rate_ratio_ppm: (mapping.rate_ratio - 1.0) * 1e6,
                    });
                }
                self.last_locked = Some(mapping);
                self.holdover_until_ns = None;
                published.write(Some(Published {
                    mapping,
                    usable_until_ns: u64::MAX,
                }));
            }
        } else if self.last_state == LockState::Locked {
            on_change(Change::Unlocked { state });
            let until = now_ns.saturating_add(HOLDOVER_NS);
            self.holdover_until_ns = Some(until);
            if let Some(mapping) = self.last_locked {
                published.write(Some(Published {
                    mapping,
                    usable_until_ns: until,
                }));
            }
        } else if let Some(until) = self.holdover_until_ns
            && now_ns > until
        {
            on_change(Change::HoldoverEnded);
            self.holdover_until_ns = None;
            self.last_locked = None;
            published.write(None);
        }
        self.last_state = state;

        let snap = Snapshot {
            state: Some(state),
            holdover_until_ns: self.holdover_until_ns,
            grandmaster,
            offset_ns: self.follower.last_offset_ns(),
            rate_ratio: self.follower.rate_ratio(),
            mean_path_delay_ns: self.follower.mean_path_delay_ns(),
            fit_rms_ns: self.follower.fit_rms_ns(),
            last_sync_local_ns: self.follower.last_sync_local_ns(),
            stats: self.follower.stats(),
            counters: self.counters,
        };
        *snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = snap;
    }
}

#[cfg(test)]
mod tests {
    use codecs::ptp::{
        Announce, Body, Flags, FollowerConfig, Header, Message, PortIdentity, PtpTimestamp,
        SYNC_LEN,
    };

    use super::*;

    const T0: u64 = 1_700_000_000_000_000_000;
    /// Local (monotonic) clock: starts at 1 s, runs 20 ppm slow against the master.
    fn local_of(master: u64) -> u64 {
        let e = master - T0;
        1_000_000_000 + e - e / 50_000
    }
    const DELAY: u64 = 30_000;

    fn port(byte: u8) -> PortIdentity {
        PortIdentity {
            clock: ClockIdentity([byte; 8]),
            port: 1,
        }
    }

    fn ours() -> PortIdentity {
        port(0x02)
    }

    fn encode(header: Header, body: Body) -> Vec<u8> {
        let mut out = vec![0u8; 64];
        let n = Message { header, body }.write_to(&mut out).unwrap();
        out.truncate(n);
        out
    }

    fn header(from: PortIdentity, seq: u16, flags: u16, log: i8) -> Header {
        Header {
            transport_specific: 0,
            domain: 0,
            flags: Flags(flags),
            correction: 0,
            source_port: from,
            sequence_id: seq,
            log_message_interval: log,
        }
    }

    fn announce(gm: PortIdentity, priority1: u8, seq: u16) -> Vec<u8> {
        encode(
            header(gm, seq, 0, 0),
            Body::Announce(Announce {
                origin_timestamp: PtpTimestamp::default(),
                current_utc_offset: 37,
                priority1,
                clock_class: 248,
                clock_accuracy: 0xfe,
                offset_scaled_log_variance: 0xffff,
                priority2: 128,
                grandmaster_identity: gm.clock,
                steps_removed: 0,
                time_source: 0xa0,
            }),
        )
    }

    /// A two-step master `gm` talking for `seconds` (8 Syncs/s, Announce 1/s) starting at
    /// master time `from`; answers Delay_Req. Returns the master time reached.
    fn run_master(
        tracker: &mut Tracker,
        gm: PortIdentity,
        from: u64,
        seconds: u64,
        cell: &PublishedCell,
        snapshot: &Mutex<Snapshot>,
        changes: &mut Vec<Change>,
    ) -> u64 {
        let mut out = [0u8; SYNC_LEN];
        let mut t = from;
        for k in 0..seconds * 8 {
            let seq = (k % 65_536) as u16;
            if k % 8 == 0 {
                tracker.on_datagram(&announce(gm, 128, seq), local_of(t + DELAY), true);
            }
            let sync = encode(
                header(gm, seq, Flags::TWO_STEP, -3),
                Body::Sync {
                    origin_timestamp: PtpTimestamp::default(),
                },
            );
            tracker.on_datagram(&sync, local_of(t + DELAY), true);
            let fu = encode(
                header(gm, seq, 0, -3),
                Body::FollowUp {
                    precise_origin_timestamp: PtpTimestamp::from_nanos(t),
                },
            );
            tracker.on_datagram(&fu, local_of(t + DELAY + 20_000), true);
            let now = local_of(t + DELAY + 50_000);
            if let Some(n) = tracker.poll_transmit(now, &mut out) {
                let req = Message::decode(&out[..n]).unwrap();
                assert_eq!(req.header.source_port, ours());
                let t4 = t + 50_000 + 2 * DELAY;
                let resp = encode(
                    header(gm, req.header.sequence_id, 0, 0),
                    Body::DelayResp {
                        receive_timestamp: PtpTimestamp::from_nanos(t4),
                        requesting_port: ours(),
                    },
                );
                tracker.on_datagram(&resp, local_of(t4 + DELAY), true);
            }
            tracker.update(local_of(t + DELAY + 60_000), cell, snapshot, |c| {
                changes.push(c)
            });
            t += 125_000_000;
        }
        t
    }

    #[test]
    fn locks_publishes_and_holds_over() {
        let mut tracker = Tracker::new(Follower::new(FollowerConfig::new(0, ours())));
        let cell = PublishedCell::new();
        let snapshot = Mutex::new(Snapshot::default());
        let mut changes = Vec::new();
        tracker.update(local_of(T0), &cell, &snapshot, |c| changes.push(c));
        assert!(changes.is_empty());
        assert_eq!(cell.read(), None, "nothing before lock");

        let gm = port(0xaa);
        let t = run_master(&mut tracker, gm, T0, 5, &cell, &snapshot, &mut changes);
        assert!(matches!(changes[0], Change::GrandmasterSelected(g) if g.identity == gm.clock));
        let Some(Change::Locked {
            grandmaster,
            mean_path_delay_ns,
            rate_ratio_ppm,
        }) = changes.get(1).copied()
        else {
            panic!("expected a lock: {changes:?}")
        };
        assert_eq!(grandmaster, gm.clock);
        // Delay 30 µs each way; the local clock runs 20 ppm slow, so the master's rate is
        // 20 ppm fast against it.
        assert!(
            (mean_path_delay_ns - DELAY as i64).abs() <= 2,
            "{mean_path_delay_ns}"
        );
        assert!((rate_ratio_ppm - 20.0).abs() < 0.01, "{rate_ratio_ppm}");
        assert_eq!(changes.len(), 2);

        // Media threads map to the master's time within a few ns.
        let local = local_of(t);
        let ptp = cell.ptp_at(local).unwrap();
        assert!(ptp.abs_diff(t) < 10, "{ptp} vs {t}");
        let snap = *snapshot.lock().unwrap();
        assert_eq!(snap.state, Some(LockState::Locked));
        assert_eq!(snap.grandmaster.unwrap().identity, gm.clock);
        // 5 Announces, 40 Syncs and Follow_Ups, 5 Delay_Resps (one request a second).
        assert_eq!(snap.counters.kernel_timestamps, 90);
        assert_eq!(snap.stats.delay_resps, 5);
        assert_eq!(snap.counters.bad_messages, 0);

        // Garbage and PTPv1 are counted, not fatal.
        tracker.on_datagram(&[1, 2, 3], local, false);
        let mut v1 = [0u8; 124];
        v1[1] = 1;
        tracker.on_datagram(&v1, local, true);

        // The master goes quiet: Syncs time out (6 intervals), lock is lost and the
        // estimate is held over for 10 s, then withdrawn; the Announce timeout (3 s)
        // loses the grandmaster.
        changes.clear();
        let quiet = |dt: u64| local_of(t + dt);
        tracker.update(quiet(1_000_000_000), &cell, &snapshot, |c| changes.push(c));
        assert_eq!(
            changes,
            vec![Change::Unlocked {
                state: LockState::Acquiring
            }]
        );
        let ptp = cell.ptp_at(quiet(2_000_000_000)).expect("holdover");
        assert!(ptp.abs_diff(t + 2_000_000_000) < 10);
        tracker.update(quiet(4_000_000_000), &cell, &snapshot, |c| changes.push(c));
        assert_eq!(changes[1], Change::GrandmasterLost(gm.clock));
        let snap = *snapshot.lock().unwrap();
        assert_eq!(snap.state, Some(LockState::Listening));
        assert!(snap.holdover_until_ns.is_some());
        assert_eq!(snap.counters.bad_messages, 1);
        assert_eq!(snap.counters.unsupported, 1);
        assert_eq!(snap.counters.read_timestamps, 1);
        tracker.update(quiet(11_500_000_000), &cell, &snapshot, |c| changes.push(c));
        assert_eq!(changes[2], Change::HoldoverEnded);
        assert_eq!(cell.ptp_at(quiet(11_600_000_000)), None);
        assert_eq!(changes.len(), 3);
    }

    #[test]
    fn a_better_grandmaster_takes_over() {
        let mut tracker = Tracker::new(Follower::new(FollowerConfig::new(0, ours())));
        let cell = PublishedCell::new();
        let snapshot = Mutex::new(Snapshot::default());
        let mut changes = Vec::new();
        let (a, b) = (port(0xaa), port(0x11));
        let t = run_master(&mut tracker, a, T0, 3, &cell, &snapshot, &mut changes);
        assert!(changes.iter().any(|c| matches!(c, Change::Locked { .. })));
        changes.clear();
        // b announces with a better priority1: it is selected at once and the fit restarts.
        tracker.on_datagram(&announce(b, 100, 0), local_of(t), true);
        tracker.update(local_of(t) + 1, &cell, &snapshot, |c| changes.push(c));
        assert!(matches!(
            changes[0],
            Change::GrandmasterChanged { from, to } if from == a.clock && to.identity == b.clock
        ));
        assert_eq!(
            changes[1],
            Change::Unlocked {
                state: LockState::Acquiring
            }
        );
        // Held over on a's estimate meanwhile, then locked to b.
        assert!(cell.ptp_at(local_of(t) + 2).is_some());
        changes.clear();
        run_master(&mut tracker, b, t, 3, &cell, &snapshot, &mut changes);
        assert!(
            changes.iter().any(
                |c| matches!(c, Change::Locked { grandmaster, .. } if *grandmaster == b.clock)
            ),
            "{changes:?}"
        );
    }
}
