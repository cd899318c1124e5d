//! Sans-IO end-to-end PTP follower (aes67.md §11 "minimal slave algorithm").
//!
//! 1. Announces on our domain fill a small foreign-master table; the best by the 1588
//!    dataset comparison (priority1, clockClass, clockAccuracy, variance, priority2,
//!    identity, then stepsRemoved and port identity) is selected.
//! 2. Each Sync from the selected master gives t2 (local receive time); t1 is its origin
//!    timestamp or, when twoStep is set, the Follow_Up's precise origin (either may
//!    arrive first: they come in on different sockets). correctionFields are added.
//! 3. [`Follower::poll_transmit`] emits a Delay_Req when due (t3 = the `now` given, or the
//!    time reported by [`Follower::delay_req_sent`]); the matching Delay_Resp gives t4.
//! 4. Mean path delay uses the rate-corrected form of the two-step formula,
//!    `d = ((t4 - t1) - r·(t3 - t2)) / 2`, which is `((t2 - t1) + (t4 - t3)) / 2` when the
//!    rate ratio `r` is 1; the median of the last 16 samples is used.
//! 5. The (t2, t1) pairs of the last `window` Syncs are fitted by least squares: the slope
//!    is the rate ratio (master ns per local ns), the line plus the path delay maps local
//!    time to PTP time. Samples far off the fit (software-timestamp stalls) are dropped;
//!    a run of them means the master stepped and the fit restarts.
//!
//! Nothing here allocates after [`Follower::new`].

use super::{
    Announce, Body, ClockIdentity, Flags, Header, Message, PortIdentity, PtpError, PtpTimestamp,
};

/// Foreign-master table size; a domain rarely has more than two or three masters.
const MAX_FOREIGN_MASTERS: usize = 8;
/// Path-delay samples kept for the median.
const DELAY_SAMPLES: usize = 16;
/// Consecutive rejected Syncs after which the fit is restarted (the master stepped).
const MAX_CONSECUTIVE_OUTLIERS: u32 = 8;
/// announceReceiptTimeout, in announce intervals (IEEE 1588 default).
const ANNOUNCE_RECEIPT_TIMEOUT: u64 = 3;
/// Syncs missed (in sync intervals) before lock is declared lost.
const SYNC_RECEIPT_TIMEOUT: u64 = 6;

/// Follower settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerConfig {
    /// PTP domain to follow (0 for AES67 with Dante, aes67.md §8).
    pub domain: u8,
    /// Our own port identity, sent in Delay_Req and matched in Delay_Resp.
    pub port_identity: PortIdentity,
    /// Delay_Req interval in ns unless the master's logMinDelayReqInterval is longer.
    pub delay_req_interval_ns: u64,
    /// Syncs in the least-squares fit (at least 2).
    pub window: usize,
    /// Fit residual RMS (ns) at or below which the follower reports [`LockState::Locked`].
    pub lock_threshold_ns: u64,
    /// Syncs needed in the fit before locking or rejecting outliers.
    pub min_samples_for_lock: usize,
    /// Delay_Req/Delay_Resp exchanges needed before locking, so that the median path
    /// delay is not one sample (the first request out of a socket is often slow).
    pub min_delay_samples_for_lock: usize,
    /// Smallest residual (ns) treated as an outlier; the effective threshold is the larger
    /// of this and 5 × the fit RMS.
    pub outlier_floor_ns: u64,
}

impl FollowerConfig {
    /// Defaults: Delay_Req every second, a 64-Sync fit (8 s at the media profile's
    /// 8 Syncs/s), lock below 100 µs RMS after 8 Syncs and 3 delay exchanges, outliers
    /// beyond 250 µs.
    pub const fn new(domain: u8, port_identity: PortIdentity) -> FollowerConfig {
        FollowerConfig {
            domain,
            port_identity,
            delay_req_interval_ns: 1_000_000_000,
            window: 64,
            lock_threshold_ns: 100_000,
            min_samples_for_lock: 8,
            min_delay_samples_for_lock: 3,
            outlier_floor_ns: 250_000,
        }
    }
}

/// How far the follower is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockState {
    /// No master selected (no Announce on our domain, or all timed out).
    Listening,
    /// A master is selected; the fit or the path delay is not good enough yet, or Syncs
    /// stopped arriving.
    Acquiring,
    /// Offset, delay and rate are being tracked within the lock threshold.
    Locked,
}

/// What the selected master announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrandmasterInfo {
    /// grandmasterIdentity: the `<gmid>` of `a=ts-refclk` (aes67.md §6).
    pub identity: ClockIdentity,
    /// Domain number.
    pub domain: u8,
    /// The port we take Sync and Delay_Resp from (the GM itself or a boundary clock).
    pub master_port: PortIdentity,
    /// currentUtcOffset (TAI - UTC, seconds).
    pub current_utc_offset: i16,
    /// Whether currentUtcOffsetValid is set.
    pub utc_offset_valid: bool,
    /// Whether ptpTimescale is set (PTP time is TAI).
    pub ptp_timescale: bool,
    /// The announce body as last received.
    pub announce: Announce,
}

/// Counters (monotonic, for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FollowerStats {
    /// Announces accepted on our domain.
    pub announces: u64,
    /// Sync samples completed (t1, t2 known) and used.
    pub syncs: u64,
    /// Delay_Resp matched to our Delay_Req.
    pub delay_resps: u64,
    /// Delay_Req emitted.
    pub delay_reqs: u64,
    /// Delay_Req superseded without an answer.
    pub delay_resp_timeouts: u64,
    /// Sync samples rejected as outliers.
    pub outliers: u64,
    /// Fit restarts after a run of outliers or a master change.
    pub resets: u64,
    /// Messages ignored (other domain, other master, our own, unmatched).
    pub ignored: u64,
}

#[derive(Debug, Clone, Copy)]
struct ForeignMaster {
    port: PortIdentity,
    header_flags: Flags,
    announce: Announce,
    last_heard: u64,
    timeout_ns: u64,
}

/// Comparison key of the 1588 dataset comparison: lower wins.
fn rank(m: &ForeignMaster) -> (u8, u8, u8, u16, u8, ClockIdentity, u16, PortIdentity) {
    let a = &m.announce;
    (
        a.priority1,
        a.clock_class,
        a.clock_accuracy,
        a.offset_scaled_log_variance,
        a.priority2,
        a.grandmaster_identity,
        a.steps_removed,
        m.port,
    )
}

/// 2^log2 seconds in ns for a logMessageInterval, clamped to a sane 1/128 s .. 64 s.
fn interval_ns(log2: i8, default_ns: u64) -> u64 {
    match log2 {
        0..=6 => 1_000_000_000u64 << log2,
        -7..=-1 => 1_000_000_000u64 >> (-log2),
        _ => default_ns,
    }
}

#[derive(Debug, Clone, Copy)]
struct Fit {
    /// Local time of the newest sample.
    ref_local: u64,
    /// Fitted t1 (master ns, without path delay) at `ref_local`.
    ref_master: i128,
    /// Master ns per local ns.
    slope: f64,
    /// RMS residual of the fit, ns.
    rms_ns: f64,
    /// Samples in the fit.
    n: usize,
}

impl Fit {
    fn master_at(&self, local: u64) -> i128 {
        let dl = i128::from(local) - i128::from(self.ref_local);
        // dl spans seconds, so the f64 product is exact to well under a nanosecond.
        self.ref_master + (self.slope * dl as f64).round() as i128
    }
}

/// The local-clock -> PTP-time line the follower currently estimates, as a plain value
/// a driver can hand to other threads (see [`Follower::mapping`]): PTP time at a local
/// instant `l` is `ptp_ns + rate_ratio * (l - local_ns)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeMapping {
    /// Local time of the reference point, ns (the newest Sync's receive time).
    pub local_ns: u64,
    /// PTP time at `local_ns`, ns since the PTP epoch (mean path delay included).
    pub ptp_ns: i128,
    /// Master nanoseconds per local nanosecond.
    pub rate_ratio: f64,
}

impl TimeMapping {
    /// PTP time at the local instant `local_ns` (extrapolating the line).
    pub fn ptp_at(&self, local_ns: u64) -> i128 {
        let dl = i128::from(local_ns) - i128::from(self.local_ns);
        // dl spans seconds, so the f64 product is exact to well under a nanosecond.
        self.ptp_ns + (self.rate_ratio * dl as f64).round() as i128
    }
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    sequence_id: u16,
    t3: u64,
    /// The Sync (t1, t2) most recent when the request went out.
    sync: (i128, u64),
}

/// The sans-IO PTP follower. See the module docs for the algorithm.
#[derive(Debug, Clone)]
pub struct Follower {
    cfg: FollowerConfig,
    masters: Vec<ForeignMaster>,
    selected: Option<PortIdentity>,
    pending_sync: Option<(u16, u64, i64)>,
    pending_follow_up: Option<(u16, i128)>,
    last_sync: Option<(i128, u64)>,
    sync_interval_ns: u64,
    sync_lost: bool,
    samples: Vec<(u64, i128)>,
    sample_head: usize,
    fit: Option<Fit>,
    delays: [i64; DELAY_SAMPLES],
    delay_count: usize,
    delay_head: usize,
    mean_path_delay: Option<i64>,
    outstanding: Option<Outstanding>,
    next_delay_req_at: Option<u64>,
    delay_req_interval_ns: u64,
    next_sequence_id: u16,
    consecutive_outliers: u32,
    last_offset: Option<i64>,
    stats: FollowerStats,
}

impl Follower {
    /// A follower in [`LockState::Listening`]. `window` is raised to at least 2.
    pub fn new(cfg: FollowerConfig) -> Follower {
        let window = cfg.window.max(2);
        Follower {
            cfg: FollowerConfig { window, ..cfg },
            masters: Vec::with_capacity(MAX_FOREIGN_MASTERS),
            selected: None,
            pending_sync: None,
            pending_follow_up: None,
            last_sync: None,
            sync_interval_ns: 1_000_000_000,
            sync_lost: false,
            samples: Vec::with_capacity(window),
            sample_head: 0,
            fit: None,
            delays: [0; DELAY_SAMPLES],
            delay_count: 0,
            delay_head: 0,
            mean_path_delay: None,
            outstanding: None,
            next_delay_req_at: None,
            delay_req_interval_ns: cfg.delay_req_interval_ns,
            next_sequence_id: 0,
            consecutive_outliers: 0,
            last_offset: None,
            stats: FollowerStats::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &FollowerConfig {
        &self.cfg
    }

    /// Decodes and handles one received datagram (either port) stamped with its local
    /// receive time. Undecodable input is returned as an error and changes nothing.
    pub fn handle(&mut self, datagram: &[u8], rx_local_ns: u64) -> Result<(), PtpError> {
        let msg = Message::decode(datagram)?;
        self.handle_message(&msg, rx_local_ns);
        Ok(())
    }

    /// Handles one decoded message stamped with its local receive time.
    pub fn handle_message(&mut self, msg: &Message, rx_local_ns: u64) {
        self.handle_timeout(rx_local_ns);
        let h = &msg.header;
        if h.domain != self.cfg.domain || h.source_port.clock == self.cfg.port_identity.clock {
            self.stats.ignored += 1;
            return;
        }
        match msg.body {
            Body::Announce(a) => self.on_announce(h, a, rx_local_ns),
            Body::Sync { origin_timestamp } => self.on_sync(h, origin_timestamp, rx_local_ns),
            Body::FollowUp {
                precise_origin_timestamp,
            } => self.on_follow_up(h, precise_origin_timestamp),
            Body::DelayResp {
                receive_timestamp,
                requesting_port,
            } => self.on_delay_resp(h, receive_timestamp, requesting_port),
            Body::DelayReq { .. } => self.stats.ignored += 1,
        }
    }

    /// Expires silent masters and notices missing Syncs. Called by `handle*` and
    /// `poll_transmit`; call it on a timer too (e.g. every second) so a dead master is
    /// noticed without traffic.
    pub fn handle_timeout(&mut self, now: u64) {
        let before = self.masters.len();
        self.masters
            .retain(|m| now.saturating_sub(m.last_heard) <= m.timeout_ns);
        if self.masters.len() != before {
            self.reselect();
        }
        let timeout = SYNC_RECEIPT_TIMEOUT * self.sync_interval_ns;
        if self
            .last_sync
            .is_some_and(|(_, t2)| now.saturating_sub(t2) > timeout)
        {
            self.sync_lost = true;
        }
    }

    /// When the next Delay_Req is due (local ns), if one is scheduled.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.selected
            .and(self.last_sync)
            .and(self.next_delay_req_at)
    }

    /// If a Delay_Req is due at `now`, writes it into `out` (at least
    /// [`super::SYNC_LEN`] bytes) and returns its length. Send it to
    /// 224.0.1.129:319; `now` is taken as t3 unless [`Follower::delay_req_sent`]
    /// reports a better transmit time.
    pub fn poll_transmit(&mut self, now: u64, out: &mut [u8]) -> Result<Option<usize>, PtpError> {
        self.handle_timeout(now);
        let (Some(_), Some(sync), Some(due)) =
            (self.selected, self.last_sync, self.next_delay_req_at)
        else {
            return Ok(None);
        };
        if now < due {
            return Ok(None);
        }
        let sequence_id = self.next_sequence_id;
        let msg = Message {
            header: Header {
                transport_specific: 0,
                domain: self.cfg.domain,
                flags: Flags::default(),
                correction: 0,
                source_port: self.cfg.port_identity,
                sequence_id,
                // 0x7F: logMessageInterval is not meaningful in Delay_Req.
                log_message_interval: 0x7f,
            },
            body: Body::DelayReq {
                origin_timestamp: PtpTimestamp::default(),
            },
        };
        let n = msg.write_to(out)?;
        if self.outstanding.is_some() {
            self.stats.delay_resp_timeouts += 1;
        }
        self.outstanding = Some(Outstanding {
            sequence_id,
            t3: now,
            sync,
        });
        self.next_sequence_id = sequence_id.wrapping_add(1);
        self.next_delay_req_at = Some(now.saturating_add(self.delay_req_interval_ns));
        self.stats.delay_reqs += 1;
        Ok(Some(n))
    }

    /// Reports the actual transmit time (t3) of the Delay_Req with `sequence_id`, e.g.
    /// from a kernel TX timestamp. Ignored if that request is no longer outstanding.
    pub fn delay_req_sent(&mut self, sequence_id: u16, tx_local_ns: u64) {
        if let Some(o) = self
            .outstanding
            .as_mut()
            .filter(|o| o.sequence_id == sequence_id)
        {
            o.t3 = tx_local_ns;
        }
    }

    /// Current lock state.
    pub fn state(&self) -> LockState {
        if self.selected.is_none() {
            return LockState::Listening;
        }
        match (self.fit, self.mean_path_delay) {
            (Some(fit), Some(_))
                if !self.sync_lost
                    && fit.n >= self.cfg.min_samples_for_lock
                    && self.delay_count >= self.cfg.min_delay_samples_for_lock
                    && fit.rms_ns <= self.cfg.lock_threshold_ns as f64 =>
            {
                LockState::Locked
            }
            _ => LockState::Acquiring,
        }
    }

    /// The selected master's announced data.
    pub fn grandmaster(&self) -> Option<GrandmasterInfo> {
        let port = self.selected?;
        let m = self.masters.iter().find(|m| m.port == port)?;
        Some(GrandmasterInfo {
            identity: m.announce.grandmaster_identity,
            domain: self.cfg.domain,
            master_port: m.port,
            current_utc_offset: m.announce.current_utc_offset,
            utc_offset_valid: m.header_flags.contains(Flags::UTC_OFFSET_VALID),
            ptp_timescale: m.header_flags.contains(Flags::PTP_TIMESCALE),
            announce: m.announce,
        })
    }

    /// Filtered mean path delay in ns (median of recent exchanges).
    pub fn mean_path_delay_ns(&self) -> Option<i64> {
        self.mean_path_delay
    }

    /// Rate ratio: master nanoseconds per local nanosecond (1.0 when the clocks run at
    /// the same rate; below 1 when the local clock is fast).
    pub fn rate_ratio(&self) -> Option<f64> {
        self.fit.map(|f| f.slope)
    }

    /// offsetFromMaster in the IEEE 1588 sign convention, `local - master`, in ns, at the
    /// receive time of the newest Sync.
    pub fn offset_from_master_ns(&self) -> Option<i64> {
        let (_, t2) = self.last_sync?;
        let master = self.local_to_ptp_i128(t2)?;
        let off = i128::from(t2) - master;
        Some(off.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
    }

    /// Maps a local time to PTP time (ns since the PTP epoch), extrapolating the fit.
    /// `None` until a Sync fit and a path delay exist, or if the result is negative.
    pub fn local_to_ptp_ns(&self, local_ns: u64) -> Option<u64> {
        u64::try_from(self.local_to_ptp_i128(local_ns)?).ok()
    }

    /// RMS residual of the Sync fit, ns (a jitter figure for metrics).
    pub fn fit_rms_ns(&self) -> Option<f64> {
        self.fit.map(|f| f.rms_ns)
    }

    /// The current local -> PTP mapping (a copyable snapshot of the fit and the path
    /// delay), `None` until both exist. It does not say whether the follower is locked:
    /// ask [`Follower::state`].
    pub fn mapping(&self) -> Option<TimeMapping> {
        let fit = self.fit?;
        let d = self.mean_path_delay?;
        Some(TimeMapping {
            local_ns: fit.ref_local,
            ptp_ns: fit.ref_master + i128::from(d),
            rate_ratio: fit.slope,
        })
    }

    /// Local receive time of the newest Sync used, ns.
    pub fn last_sync_local_ns(&self) -> Option<u64> {
        self.last_sync.map(|(_, t2)| t2)
    }

    /// The selected master's Sync interval (from its logMessageInterval), ns.
    pub fn sync_interval_ns(&self) -> u64 {
        self.sync_interval_ns
    }

    /// How far the estimate was from the newest accepted Sync before that Sync was
    /// folded in, ns: `estimate - master` at its receive time (the IEEE 1588 sign of
    /// offsetFromMaster; what `ptp4l` logs as "master offset"). A figure of tracking
    /// quality: it stays within the timestamp jitter while locked. `None` until the fit
    /// has `min_samples_for_lock` samples.
    pub fn last_offset_ns(&self) -> Option<i64> {
        self.last_offset
    }

    /// Counters.
    pub fn stats(&self) -> FollowerStats {
        self.stats
    }

    fn local_to_ptp_i128(&self, local_ns: u64) -> Option<i128> {
        Some(self.mapping()?.ptp_at(local_ns))
    }

    fn on_announce(&mut self, h: &Header, a: Announce, rx: u64) {
        // IEEE 1588 §9.3.2.5: announces that travelled 255 steps are not qualified.
        if a.steps_removed >= 255 {
            self.stats.ignored += 1;
            return;
        }
        self.stats.announces += 1;
        let entry = ForeignMaster {
            port: h.source_port,
            header_flags: h.flags,
            announce: a,
            last_heard: rx,
            timeout_ns: ANNOUNCE_RECEIPT_TIMEOUT
                * interval_ns(h.log_message_interval, 2_000_000_000),
        };
        if let Some(m) = self.masters.iter_mut().find(|m| m.port == h.source_port) {
            *m = entry;
        } else if self.masters.len() < MAX_FOREIGN_MASTERS {
            self.masters.push(entry);
        } else if let Some(oldest) = self.masters.iter_mut().min_by_key(|m| m.last_heard) {
            *oldest = entry;
        }
        self.reselect();
    }

    fn reselect(&mut self) {
        let best = self.masters.iter().min_by_key(|m| rank(m)).map(|m| m.port);
        if best != self.selected {
            self.selected = best;
            self.reset_servo();
        }
    }

    fn reset_servo(&mut self) {
        if self.fit.is_some() || !self.samples.is_empty() {
            self.stats.resets += 1;
        }
        self.pending_sync = None;
        self.pending_follow_up = None;
        self.last_sync = None;
        self.sync_lost = false;
        self.samples.clear();
        self.sample_head = 0;
        self.fit = None;
        self.delay_count = 0;
        self.delay_head = 0;
        self.mean_path_delay = None;
        self.outstanding = None;
        self.next_delay_req_at = None;
        self.delay_req_interval_ns = self.cfg.delay_req_interval_ns;
        self.consecutive_outliers = 0;
        self.last_offset = None;
    }

    fn is_from_selected(&mut self, h: &Header) -> bool {
        let ok = self.selected == Some(h.source_port);
        if !ok {
            self.stats.ignored += 1;
        }
        ok
    }

    fn on_sync(&mut self, h: &Header, origin: PtpTimestamp, rx: u64) {
        if !self.is_from_selected(h) {
            return;
        }
        self.sync_interval_ns = interval_ns(h.log_message_interval, 1_000_000_000);
        let corr = h.correction_ns();
        if h.flags.contains(Flags::TWO_STEP) {
            match self.pending_follow_up.take() {
                Some((seq, precise)) if seq == h.sequence_id => {
                    self.complete_sync(precise + i128::from(corr), rx);
                }
                _ => self.pending_sync = Some((h.sequence_id, rx, corr)),
            }
        } else {
            self.complete_sync(origin.as_nanos() + i128::from(corr), rx);
        }
    }

    fn on_follow_up(&mut self, h: &Header, precise: PtpTimestamp) {
        if !self.is_from_selected(h) {
            return;
        }
        let t1 = precise.as_nanos() + i128::from(h.correction_ns());
        match self.pending_sync.take() {
            Some((seq, t2, sync_corr)) if seq == h.sequence_id => {
                self.complete_sync(t1 + i128::from(sync_corr), t2);
            }
            _ => self.pending_follow_up = Some((h.sequence_id, t1)),
        }
    }

    fn on_delay_resp(&mut self, h: &Header, t4_ts: PtpTimestamp, requesting: PortIdentity) {
        if requesting != self.cfg.port_identity || !self.is_from_selected(h) {
            if requesting != self.cfg.port_identity {
                self.stats.ignored += 1;
            }
            return;
        }
        let Some(o) = self.outstanding else {
            self.stats.ignored += 1;
            return;
        };
        if o.sequence_id != h.sequence_id {
            self.stats.ignored += 1;
            return;
        }
        self.outstanding = None;
        self.stats.delay_resps += 1;
        // logMinDelayReqInterval travels in the Delay_Resp's logMessageInterval.
        self.delay_req_interval_ns = self
            .cfg
            .delay_req_interval_ns
            .max(interval_ns(h.log_message_interval, 0));
        let t4 = t4_ts.as_nanos() - i128::from(h.correction_ns());
        let (t1, t2) = o.sync;
        let r = self.fit.map_or(1.0, |f| f.slope);
        let master_leg = (t4 - t1) as f64;
        let local_leg = (i128::from(o.t3) - i128::from(t2)) as f64;
        let d = ((master_leg - r * local_leg) / 2.0).round();
        if !d.is_finite() || d.abs() > 1e12 {
            // A delay above 1000 s is a pairing with a stale Sync, not a network.
            self.stats.ignored += 1;
            return;
        }
        self.delays[self.delay_head] = d as i64;
        self.delay_head = (self.delay_head + 1) % DELAY_SAMPLES;
        self.delay_count = (self.delay_count + 1).min(DELAY_SAMPLES);
        let mut sorted = [0i64; DELAY_SAMPLES];
        sorted[..self.delay_count].copy_from_slice(&self.delays[..self.delay_count]);
        let sorted = &mut sorted[..self.delay_count];
        sorted.sort_unstable();
        let n = sorted.len();
        self.mean_path_delay = Some(if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2
        });
    }

    fn complete_sync(&mut self, t1: i128, t2: u64) {
        let min_samples = self.cfg.min_samples_for_lock;
        let mut offset = None;
        if let Some(fit) = self.fit.filter(|f| f.n >= min_samples) {
            let error = fit.master_at(t2) - t1;
            offset = Some(error.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64);
            let residual = error.abs() as f64;
            let threshold = (self.cfg.outlier_floor_ns as f64).max(5.0 * fit.rms_ns);
            if residual > threshold {
                self.stats.outliers += 1;
                self.consecutive_outliers += 1;
                if self.consecutive_outliers < MAX_CONSECUTIVE_OUTLIERS {
                    return;
                }
                // The master stepped (or we did): start the fit again from here.
                let selected = self.selected;
                self.reset_servo();
                self.selected = selected;
                offset = None;
            }
        }
        self.consecutive_outliers = 0;
        if offset.is_some() {
            self.last_offset = offset;
        }
        self.stats.syncs += 1;
        self.sync_lost = false;
        self.last_sync = Some((t1, t2));
        if self.samples.len() < self.cfg.window {
            self.samples.push((t2, t1));
        } else {
            self.samples[self.sample_head] = (t2, t1);
            self.sample_head = (self.sample_head + 1) % self.cfg.window;
        }
        self.refit(t2, t1);
        if self.next_delay_req_at.is_none() {
            self.next_delay_req_at = Some(t2);
        }
    }

    /// Least-squares line through the samples, centred on the newest one (x0, y0) so the
    /// f64 sums stay small and exact enough.
    fn refit(&mut self, x0: u64, y0: i128) {
        let n = self.samples.len();
        let prev_slope = self.fit.map_or(1.0, |f| f.slope);
        let centred =
            |&(x, y): &(u64, i128)| ((i128::from(x) - i128::from(x0)) as f64, (y - y0) as f64);
        let nf = n as f64;
        let (sx, sy) = self
            .samples
            .iter()
            .map(centred)
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        let (mx, my) = (sx / nf, sy / nf);
        let (sxx, sxy) = self
            .samples
            .iter()
            .map(centred)
            .fold((0.0, 0.0), |(a, b), (x, y)| {
                (a + (x - mx) * (x - mx), b + (x - mx) * (y - my))
            });
        let slope = if n >= 2 && sxx > 0.0 {
            sxy / sxx
        } else {
            prev_slope
        };
        // Line value at x0 (dx = 0): my + slope * (0 - mx).
        let at_x0 = my - slope * mx;
        let rss: f64 = self
            .samples
            .iter()
            .map(centred)
            .map(|(x, y)| {
                let r = y - (at_x0 + slope * x);
                r * r
            })
            .sum();
        self.fit = Some(Fit {
            ref_local: x0,
            ref_master: y0 + at_x0.round() as i128,
            slope,
            rms_ns: (rss / nf).sqrt(),
            n,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ClockIdentity, SYNC_LEN};
    use super::*;

    const T0: i128 = 1_700_000_000 * 1_000_000_000;
    const OFFSET0: i128 = 1_234_000; // local - master at T0: 1.234 ms
    const PPM: i128 = 100; // local clock runs 100 ppm fast
    const DELAY: i128 = 50_000; // 50 µs each way
    const SYNC_INTERVAL: i128 = 125_000_000; // logSyncInterval -3

    fn gm_port() -> PortIdentity {
        PortIdentity {
            clock: "00-1D-C1-FF-FE-12-34-56".parse().unwrap(),
            port: 1,
        }
    }

    fn our_port() -> PortIdentity {
        PortIdentity {
            clock: ClockIdentity::from_mac([0x02, 0, 0, 0, 0, 0x01]),
            port: 1,
        }
    }

    /// Local clock reading at master time `t` (exact integer model).
    fn local_of(t: i128) -> u64 {
        let e = t - T0;
        (T0 + OFFSET0 + e + e * PPM / 1_000_000) as u64
    }

    /// Master time at local reading `l` (inverse of `local_of`, within 1 ns).
    fn master_of(l: u64) -> i128 {
        let x = i128::from(l) - T0 - OFFSET0;
        T0 + x * 1_000_000 / (1_000_000 + PPM)
    }

    fn ts(ns: i128) -> PtpTimestamp {
        PtpTimestamp::from_nanos(ns as u64)
    }

    fn header(port: PortIdentity, seq: u16, flags: u16, log: i8) -> Header {
        Header {
            transport_specific: 0,
            domain: 0,
            flags: Flags(flags),
            correction: 0,
            source_port: port,
            sequence_id: seq,
            log_message_interval: log,
        }
    }

    fn announce(port: PortIdentity, gm: ClockIdentity, priority1: u8, seq: u16) -> Message {
        Message {
            header: header(port, seq, Flags::PTP_TIMESCALE | Flags::UTC_OFFSET_VALID, 1),
            body: Body::Announce(Announce {
                origin_timestamp: PtpTimestamp::default(),
                current_utc_offset: 37,
                priority1,
                clock_class: 248,
                clock_accuracy: 0xfe,
                offset_scaled_log_variance: 0xffff,
                priority2: 128,
                grandmaster_identity: gm,
                steps_removed: 0,
                time_source: 0xa0,
            }),
        }
    }

    fn bytes(m: &Message) -> Vec<u8> {
        let mut out = vec![0u8; 64];
        let n = m.write_to(&mut out).unwrap();
        out.truncate(n);
        out
    }

    /// Deterministic noise source (xorshift64*), uniform in [0, max).
    struct Noise(u64);
    impl Noise {
        fn next(&mut self, max: i128) -> i128 {
            if max == 0 {
                return 0;
            }
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            i128::from(self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) % max
        }
    }

    struct Outcome {
        follower: Follower,
        last_t2: u64,
    }

    /// Runs `seconds` of a two-step master on the wire as bytes. Queueing noise in
    /// [0, jitter) is added to every one-way trip; every `outlier_every`-th Sync is
    /// additionally stalled by 3 ms in our receive path.
    fn simulate(seconds: i128, jitter: i128, outlier_every: Option<i128>) -> Outcome {
        let mut f = Follower::new(FollowerConfig::new(0, our_port()));
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        let gm = gm_port();
        let mut last_t2 = 0;
        let mut out = [0u8; 64];
        let n_syncs = seconds * 1_000_000_000 / SYNC_INTERVAL;
        for k in 0..n_syncs {
            let t_k = T0 + k * SYNC_INTERVAL;
            let seq = k as u16;
            if k % 16 == 0 {
                let a = announce(gm, gm.clock, 128, seq);
                f.handle(&bytes(&a), local_of(t_k + DELAY)).unwrap();
            }
            let mut t2 = local_of(t_k + DELAY + noise.next(jitter));
            if outlier_every.is_some_and(|every| k % every == every - 1) {
                t2 += 3_000_000;
            }
            let sync = Message {
                header: header(gm, seq, Flags::TWO_STEP, -3),
                body: Body::Sync {
                    origin_timestamp: ts(t_k),
                },
            };
            let fu = Message {
                header: header(gm, seq, 0, -3),
                body: Body::FollowUp {
                    precise_origin_timestamp: ts(t_k),
                },
            };
            f.handle(&bytes(&sync), t2).unwrap();
            f.handle(&bytes(&fu), t2 + 10_000).unwrap();
            last_t2 = t2;

            let now = t2 + 20_000;
            if let Some(n) = f.poll_transmit(now, &mut out).unwrap() {
                let req = Message::decode(&out[..n]).unwrap();
                assert_eq!(req.header.source_port, our_port());
                assert_eq!(req.header.domain, 0);
                assert!(matches!(req.body, Body::DelayReq { .. }));
                let t4 = master_of(now) + DELAY + noise.next(jitter);
                let resp = Message {
                    header: header(gm, req.header.sequence_id, 0, 0),
                    body: Body::DelayResp {
                        receive_timestamp: ts(t4),
                        requesting_port: our_port(),
                    },
                };
                f.handle(&bytes(&resp), local_of(t4 + DELAY + noise.next(jitter)))
                    .unwrap();
            }
        }
        Outcome {
            follower: f,
            last_t2,
        }
    }

    /// True `local - master` at the local instant `l`.
    fn true_offset(l: u64) -> i128 {
        i128::from(l) - master_of(l)
    }

    #[test]
    fn converges_on_exact_exchange() {
        // offset 1.234 ms, delay 50 µs, local clock +100 ppm; 30 s of 8 Syncs/s.
        let Outcome {
            follower: f,
            last_t2,
        } = simulate(30, 0, None);
        assert_eq!(f.state(), LockState::Locked);
        let gm = f.grandmaster().unwrap();
        assert_eq!(gm.identity.to_string(), "00-1D-C1-FF-FE-12-34-56");
        assert_eq!(gm.domain, 0);
        assert_eq!(gm.current_utc_offset, 37);
        assert!(gm.ptp_timescale && gm.utc_offset_valid);

        let delay = f.mean_path_delay_ns().unwrap();
        assert!((i128::from(delay) - DELAY).abs() <= 2, "delay {delay}");
        let rate = f.rate_ratio().unwrap();
        let true_rate = 1.0 / (1.0 + PPM as f64 * 1e-6);
        assert!(
            (rate - true_rate).abs() < 1e-9,
            "rate {rate} vs {true_rate}"
        );
        let off = f.offset_from_master_ns().unwrap();
        // 1.234 ms + 30 s × 100 ppm ≈ 4.23 ms by now.
        let want = true_offset(last_t2);
        assert!(
            (i128::from(off) - want).abs() <= 5,
            "offset {off} vs {want}"
        );
        // Extrapolating half a second ahead stays within 10 ns.
        let l = last_t2 + 500_000_000;
        let got = i128::from(f.local_to_ptp_ns(l).unwrap());
        assert!(
            (got - master_of(l)).abs() <= 10,
            "map error {}",
            got - master_of(l)
        );
        let s = f.stats();
        assert_eq!(s.syncs, 240);
        assert_eq!(s.outliers, 0);
        assert_eq!(s.delay_reqs, s.delay_resps);
        assert!(
            s.delay_reqs >= 29,
            "one Delay_Req per second: {}",
            s.delay_reqs
        );
    }

    #[test]
    fn mapping_snapshot_and_tracking_figures() {
        let Outcome {
            follower: f,
            last_t2,
        } = simulate(30, 0, None);
        // The copyable snapshot maps exactly like the follower itself, and it is what a
        // driver publishes: half a second ahead it is within 10 ns of the master.
        let m = f.mapping().unwrap();
        assert_eq!(m.local_ns, last_t2);
        for l in [
            last_t2,
            last_t2 + 1,
            last_t2 + 500_000_000,
            last_t2 - 3_000_000_000,
        ] {
            assert_eq!(Some(m.ptp_at(l)), f.local_to_ptp_ns(l).map(i128::from));
        }
        let l = last_t2 + 500_000_000;
        assert!((m.ptp_at(l) - master_of(l)).abs() <= 10);
        assert_eq!(f.last_sync_local_ns(), Some(last_t2));
        assert_eq!(f.sync_interval_ns(), SYNC_INTERVAL as u64);
        // With exact timestamps the newest Sync was predicted to within a few ns.
        let offset = f.last_offset_ns().unwrap();
        assert!(offset.abs() <= 5, "offset {offset}");

        let Outcome { follower: f, .. } = simulate(30, 20_000, None);
        // 0..20 µs queueing on each leg: the prediction error stays within that spread.
        let offset = f.last_offset_ns().unwrap();
        assert!(offset.abs() <= 20_000, "offset {offset}");

        // Before any fit there is nothing to publish or report.
        let fresh = Follower::new(FollowerConfig::new(0, our_port()));
        assert_eq!(fresh.mapping(), None);
        assert_eq!(fresh.last_offset_ns(), None);
        assert_eq!(fresh.last_sync_local_ns(), None);
    }

    #[test]
    fn lock_waits_for_three_path_delay_samples() {
        // One Delay_Req a second from the first Sync: after 2 s two exchanges, after 3 s
        // three. The fit alone (16 Syncs) would be enough.
        let Outcome { follower: f, .. } = simulate(2, 0, None);
        assert_eq!(f.stats().delay_resps, 2);
        assert!(f.mapping().is_some());
        assert_eq!(f.state(), LockState::Acquiring);
        let Outcome { follower: f, .. } = simulate(3, 0, None);
        assert_eq!(f.stats().delay_resps, 3);
        assert_eq!(f.state(), LockState::Locked);
    }

    #[test]
    fn converges_with_queueing_jitter() {
        // Uniform 0..20 µs extra on every one-way trip: the delay estimate includes the
        // 10 µs mean queueing; the offset error stays a few µs; the rate within 1 ppm.
        let Outcome {
            follower: f,
            last_t2,
        } = simulate(60, 20_000, None);
        assert_eq!(f.state(), LockState::Locked);
        let delay = i128::from(f.mean_path_delay_ns().unwrap());
        assert!((delay - (DELAY + 10_000)).abs() <= 5_000, "delay {delay}");
        let rate = f.rate_ratio().unwrap();
        let true_rate = 1.0 / (1.0 + PPM as f64 * 1e-6);
        assert!(
            (rate - true_rate).abs() < 1e-6,
            "rate error {}",
            rate - true_rate
        );
        let err = i128::from(f.offset_from_master_ns().unwrap()) - true_offset(last_t2);
        assert!(err.abs() <= 5_000, "offset error {err} ns");
        let rms = f.fit_rms_ns().unwrap();
        assert!(rms > 1_000.0 && rms < 10_000.0, "rms {rms}");
    }

    #[test]
    fn rejects_stalled_sync_samples() {
        let Outcome {
            follower: f,
            last_t2,
        } = simulate(30, 5_000, Some(17));
        let s = f.stats();
        // 240 Syncs, every 17th (k = 16, 33, ..., 237) stalled by 3 ms: all 14 come after
        // the fit has its 8 samples and are rejected.
        assert_eq!(s.outliers, 14);
        assert_eq!(s.syncs, 240 - 14);
        assert_eq!(s.resets, 0);
        assert_eq!(f.state(), LockState::Locked);
        let err = i128::from(f.offset_from_master_ns().unwrap()) - true_offset(last_t2);
        assert!(err.abs() <= 5_000, "offset error {err} ns");
    }

    #[test]
    fn one_step_sync_and_follow_up_before_sync() {
        let mut f = Follower::new(FollowerConfig::new(0, our_port()));
        let gm = gm_port();
        f.handle_message(&announce(gm, gm.clock, 128, 0), 1_000);
        assert_eq!(f.state(), LockState::Acquiring);
        // One-step Sync: t1 from the Sync itself (+ correction 2 ns).
        let mut h = header(gm, 1, 0, 0);
        h.correction = 2 << 16;
        f.handle_message(
            &Message {
                header: h,
                body: Body::Sync {
                    origin_timestamp: ts(T0),
                },
            },
            5_000,
        );
        assert_eq!(f.stats().syncs, 1);
        // Two-step pair where the Follow_Up is delivered first.
        f.handle_message(
            &Message {
                header: header(gm, 2, 0, 0),
                body: Body::FollowUp {
                    precise_origin_timestamp: ts(T0 + 1_000_000_000),
                },
            },
            1_000_005_500,
        );
        assert_eq!(f.stats().syncs, 1);
        f.handle_message(
            &Message {
                header: header(gm, 2, Flags::TWO_STEP, 0),
                body: Body::Sync {
                    origin_timestamp: PtpTimestamp::default(),
                },
            },
            1_000_005_000,
        );
        assert_eq!(f.stats().syncs, 2);
        // Two samples 1 s apart on both clocks: rate ratio 1 (the 2 ns correction of the
        // first shifts it by 2e-9).
        let r = f.rate_ratio().unwrap();
        assert!((r - (1.0 - 2e-9)).abs() < 1e-12, "rate {r}");
    }

    #[test]
    fn selects_best_master_and_times_out() {
        let mut f = Follower::new(FollowerConfig::new(0, our_port()));
        let a = PortIdentity {
            clock: ClockIdentity([0xaa; 8]),
            port: 1,
        };
        let b = PortIdentity {
            clock: ClockIdentity([0xbb; 8]),
            port: 1,
        };
        f.handle_message(&announce(a, a.clock, 200, 0), 0);
        assert_eq!(f.grandmaster().unwrap().identity, a.clock);
        // Lower priority1 wins.
        f.handle_message(&announce(b, b.clock, 100, 0), 10);
        assert_eq!(f.grandmaster().unwrap().identity, b.clock);
        // Another domain is ignored.
        let mut other = announce(a, a.clock, 1, 1);
        other.header.domain = 1;
        f.handle_message(&other, 20);
        assert_eq!(f.grandmaster().unwrap().identity, b.clock);
        // Our own messages (multicast loop) are ignored.
        let me = announce(our_port(), our_port().clock, 0, 0);
        f.handle_message(&me, 30);
        assert_eq!(f.grandmaster().unwrap().identity, b.clock);
        // b keeps announcing every 2 s, a goes silent: a expires after 3 × 2 s.
        for t in 1..=4u64 {
            f.handle_message(&announce(b, b.clock, 100, t as u16), t * 2_000_000_000);
        }
        assert_eq!(f.masters.len(), 1);
        // Then b goes silent too.
        f.handle_timeout(8_000_000_000 + 6_000_000_001);
        assert_eq!(f.state(), LockState::Listening);
        assert!(f.grandmaster().is_none());
        let mut out = [0u8; SYNC_LEN];
        assert_eq!(f.poll_transmit(20_000_000_000, &mut out).unwrap(), None);
    }

    #[test]
    fn ignores_delay_resp_for_others_and_stale_sequence() {
        let mut f = Follower::new(FollowerConfig::new(0, our_port()));
        let gm = gm_port();
        f.handle_message(&announce(gm, gm.clock, 128, 0), 0);
        f.handle_message(
            &Message {
                header: header(gm, 1, 0, 0),
                body: Body::Sync {
                    origin_timestamp: ts(T0),
                },
            },
            100,
        );
        let mut out = [0u8; SYNC_LEN];
        assert_eq!(
            f.poll_transmit(99, &mut out).unwrap(),
            None,
            "not due before the Sync"
        );
        let n = f.poll_transmit(200, &mut out).unwrap().unwrap();
        let seq = Message::decode(&out[..n]).unwrap().header.sequence_id;
        assert!(
            f.poll_transmit(300, &mut out).unwrap().is_none(),
            "interval not elapsed"
        );
        let resp = |seq: u16, who: PortIdentity| Message {
            header: header(gm, seq, 0, 0),
            body: Body::DelayResp {
                receive_timestamp: ts(T0 + 1_000),
                requesting_port: who,
            },
        };
        let stranger = PortIdentity {
            clock: ClockIdentity([7; 8]),
            port: 1,
        };
        f.handle_message(&resp(seq, stranger), 400);
        f.handle_message(&resp(seq.wrapping_add(1), our_port()), 400);
        assert_eq!(f.mean_path_delay_ns(), None);
        f.handle_message(&resp(seq, our_port()), 400);
        // t1 = T0 at t2 = 100, t3 = 200, t4 = T0 + 1000: d = (1000 - 100) / 2.
        assert_eq!(f.mean_path_delay_ns(), Some(450));
        assert_eq!(f.stats().delay_resps, 1);
        assert!(
            f.poll_transmit(200 + 1_000_000_000, &mut [0u8; 10])
                .is_err()
        );
    }
}
