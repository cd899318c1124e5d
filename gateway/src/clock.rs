//! The media clock: PTP time as AES67 flows stamp and pace with it.
//!
//! AES67 RTP timestamps are `PTP seconds x 48000 + offset` (the SDP's `mediaclk`),
//! so every flow asks a [`MediaClock`] for PTP time. In `system` mode
//! ([`SystemClock`]) the host clock is the PTP clock: production hosts discipline it
//! with linuxptp (`ptp4l` + `phc2sys`), and PTP time is `CLOCK_TAI`, or
//! `CLOCK_REALTIME` plus a configured TAI-UTC offset when the kernel's TAI offset is
//! unset (then `CLOCK_TAI` equals `CLOCK_REALTIME`). In `follow` mode
//! ([`crate::ptp::FollowClock`]) the built-in PTPv2 follower supplies it.
//!
//! [`ClockConfig`] is the `[clock]` section; [`ClockHandle::start`] builds the clock it
//! asks for, and the handle serves the API (`GET /v1/clock`) and `/metrics`.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use api::control::{ClockMode, ClockSource, ClockState, ClockStatus};
use codecs::ptp::ClockIdentity;
use serde::{Deserialize, Serialize};

use crate::metric_families::MetricKind;
use crate::ptp::{FollowClock, FollowError, FollowSettings};

pub use crate::media_clock::MediaClock;

/// How `system` mode turns the host clock into PTP time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaiSource {
    /// Read `CLOCK_TAI` (the kernel's TAI offset is set, as `phc2sys -a` or
    /// `ptp4l`'s UTC offset handling do).
    KernelTai,
    /// `CLOCK_REALTIME` plus this TAI-UTC offset (37 s since 2017).
    RealtimePlus(Duration),
}

/// The host clock as PTP time. See the module documentation.
#[derive(Debug, Clone)]
pub struct SystemClock {
    source: TaiSource,
    ts_refclk: String,
    grandmaster: Option<ClockIdentity>,
    domain: u8,
}

/// The TAI-UTC offset since 2017-01-01.
pub const TAI_UTC_OFFSET: Duration = Duration::from_secs(37);

impl SystemClock {
    /// A system clock reading PTP time from `source`, announcing `ts_refclk` in SDP.
    pub fn new(source: TaiSource, ts_refclk: impl Into<String>) -> SystemClock {
        SystemClock {
            source,
            ts_refclk: ts_refclk.into(),
            grandmaster: None,
            domain: 0,
        }
    }

    /// Names the grandmaster and domain the host clock follows (from `[clock]`): they go
    /// into `a=ts-refclk` (`ptp=IEEE1588-2008:<gmid>:<domain>`, aes67.md §6) and the
    /// status; without a grandmaster the reference is `ptp=IEEE1588-2008:traceable`.
    pub fn with_reference(mut self, grandmaster: Option<ClockIdentity>, domain: u8) -> SystemClock {
        self.grandmaster = grandmaster;
        self.domain = domain;
        self.ts_refclk = crate::ptp::ts_refclk(grandmaster, domain);
        self
    }

    /// The clock's state for the API and metrics; `ptp_time_ns` and `realtime_ns` are
    /// read together.
    pub fn clock_status(&self) -> ClockStatus {
        let (source, offset_s, ptp, realtime) = match self.source {
            TaiSource::KernelTai => {
                let realtime = read(rustix::time::ClockId::Realtime);
                let tai = read(rustix::time::ClockId::Tai);
                let offset = (tai.saturating_sub(realtime) + 500_000_000) / 1_000_000_000;
                (ClockSource::ClockTai, offset, tai, realtime)
            }
            TaiSource::RealtimePlus(offset) => {
                let realtime = read(rustix::time::ClockId::Realtime);
                (
                    ClockSource::ClockRealtimePlusOffset,
                    offset.as_secs(),
                    realtime + offset.as_nanos() as u64,
                    realtime,
                )
            }
        };
        ClockStatus {
            mode: ClockMode::System,
            state: ClockState::HostClock,
            usable: true,
            ptp_time_ns: Some(ptp),
            realtime_ns: realtime,
            ts_refclk: self.ts_refclk.clone(),
            grandmaster_id: self.grandmaster.map(|gm| gm.to_string()),
            domain: self.domain,
            source: Some(source),
            tai_utc_offset_s: Some(i32::try_from(offset_s).unwrap_or(i32::MAX)),
            interface: None,
            master_port: None,
            ptp_timescale: None,
            offset_ns: None,
            rate_ratio_ppm: None,
            mean_path_delay_ns: None,
            last_sync_age_ms: None,
            fit_rms_ns: None,
            holdover_remaining_ms: None,
            counters: None,
        }
    }

    /// Picks the source automatically: `CLOCK_TAI` when the kernel's TAI offset is set
    /// (it differs from `CLOCK_REALTIME`), otherwise `CLOCK_REALTIME + offset`.
    pub fn detect(offset_when_unset: Duration, ts_refclk: impl Into<String>) -> SystemClock {
        let source = if kernel_tai_offset() >= Duration::from_millis(500) {
            TaiSource::KernelTai
        } else {
            TaiSource::RealtimePlus(offset_when_unset)
        };
        SystemClock::new(source, ts_refclk)
    }

    /// Where PTP time comes from.
    pub fn source(&self) -> TaiSource {
        self.source
    }
}

/// `CLOCK_TAI - CLOCK_REALTIME`, rounded to whole seconds (zero when unset).
pub fn kernel_tai_offset() -> Duration {
    let tai = read(rustix::time::ClockId::Tai);
    let realtime = read(rustix::time::ClockId::Realtime);
    let difference = tai.saturating_sub(realtime);
    Duration::from_secs((difference + 500_000_000) / 1_000_000_000)
}

fn read(clock: rustix::time::ClockId) -> u64 {
    let t = rustix::time::clock_gettime(clock);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

impl MediaClock for SystemClock {
    fn ptp_now_ns(&self) -> Option<u64> {
        Some(match self.source {
            TaiSource::KernelTai => read(rustix::time::ClockId::Tai),
            TaiSource::RealtimePlus(offset) => {
                read(rustix::time::ClockId::Realtime) + offset.as_nanos() as u64
            }
        })
    }

    fn ts_refclk(&self) -> String {
        self.ts_refclk.clone()
    }

    fn status(&self) -> serde_json::Value {
        serde_json::to_value(self.clock_status()).unwrap_or_default()
    }
}

/// `[clock] tai_utc_offset`: how `system` mode gets from the host clock to TAI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "TaiUtcOffsetValue", into = "TaiUtcOffsetValue")]
pub enum TaiUtcOffset {
    /// `"auto"`: `CLOCK_TAI` when the kernel's TAI offset is set (it differs from
    /// `CLOCK_REALTIME`), otherwise `CLOCK_REALTIME` + 37 s.
    #[default]
    Auto,
    /// Always `CLOCK_REALTIME` + this many seconds.
    Seconds(i64),
}

/// The TOML spelling of [`TaiUtcOffset`]: `"auto"` or a number.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum TaiUtcOffsetValue {
    Seconds(i64),
    Word(String),
}

impl TryFrom<TaiUtcOffsetValue> for TaiUtcOffset {
    type Error = String;
    fn try_from(value: TaiUtcOffsetValue) -> Result<Self, Self::Error> {
        match value {
            TaiUtcOffsetValue::Seconds(seconds) => Ok(TaiUtcOffset::Seconds(seconds)),
            TaiUtcOffsetValue::Word(word) if word == "auto" => Ok(TaiUtcOffset::Auto),
            TaiUtcOffsetValue::Word(word) => Err(format!(
                "tai_utc_offset {word:?}: expected \"auto\" or a number of seconds"
            )),
        }
    }
}

impl From<TaiUtcOffset> for TaiUtcOffsetValue {
    fn from(offset: TaiUtcOffset) -> Self {
        match offset {
            TaiUtcOffset::Auto => TaiUtcOffsetValue::Word("auto".into()),
            TaiUtcOffset::Seconds(seconds) => TaiUtcOffsetValue::Seconds(seconds),
        }
    }
}

/// The `[clock]` section: where AES67 flows get PTP time from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockConfig {
    /// `system` (host clock disciplined by ptp4l + phc2sys) or `follow` (built-in
    /// follower).
    pub mode: ClockMode,
    /// `system`: `"auto"` or the TAI-UTC offset in seconds.
    pub tai_utc_offset: TaiUtcOffset,
    /// `system`: the grandmaster identity to announce in `a=ts-refclk`
    /// (`00-1D-C1-FF-FE-12-34-56`); unset announces `traceable`.
    pub grandmaster: Option<String>,
    /// The PTP domain: announced (`system`) or followed (`follow`). 0 for AES67 with
    /// Dante (aes67.md §8).
    pub domain: u8,
    /// `follow`: IPv4 address of the interface PTP arrives on (default 127.0.0.1).
    pub interface: Option<Ipv4Addr>,
    /// `follow`: DSCP of our Delay_Req (CS7 = 56 for PTP event messages on Dante
    /// networks, aes67.md §10).
    pub dscp: u8,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            mode: ClockMode::System,
            tai_utc_offset: TaiUtcOffset::Auto,
            grandmaster: None,
            domain: 0,
            interface: None,
            dscp: 56,
        }
    }
}

impl ClockConfig {
    /// Every problem with the section, as (`clock.<field>`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push((format!("clock.{field}"), message));
        };
        if self.domain > 127 {
            problem(
                "domain",
                format!(
                    "{} is out of range (0..=127; 0 for AES67 with Dante)",
                    self.domain
                ),
            );
        }
        if self.dscp > 63 {
            problem("dscp", format!("{} is out of range (0..=63)", self.dscp));
        }
        match self.mode {
            ClockMode::System => {
                if let TaiUtcOffset::Seconds(seconds) = self.tai_utc_offset
                    && !(0..=100).contains(&seconds)
                {
                    problem(
                        "tai_utc_offset",
                        format!("{seconds} is out of range (0..=100 seconds; 37 since 2017)"),
                    );
                }
                if let Some(text) = &self.grandmaster
                    && let Err(e) = text.parse::<ClockIdentity>()
                {
                    problem("grandmaster", e.to_string());
                }
                if self.interface.is_some() {
                    problem(
                        "interface",
                        "only used in follow mode (the host's ptp4l has its own interface)".into(),
                    );
                }
            }
            ClockMode::Follow => {
                if self.grandmaster.is_some() {
                    problem(
                        "grandmaster",
                        "in follow mode the grandmaster is learned from its Announce messages"
                            .into(),
                    );
                }
                if matches!(self.tai_utc_offset, TaiUtcOffset::Seconds(_)) {
                    problem(
                        "tai_utc_offset",
                        "only used in system mode (follow mode uses the grandmaster's time as is)"
                            .into(),
                    );
                }
                let interface = self.follow_interface();
                if interface.is_unspecified()
                    || interface.is_multicast()
                    || interface.is_broadcast()
                {
                    problem(
                        "interface",
                        format!("{interface} is not the address of an interface"),
                    );
                }
            }
        }
        problems
    }

    /// The interface `follow` mode listens on.
    pub fn follow_interface(&self) -> Ipv4Addr {
        self.interface.unwrap_or(Ipv4Addr::LOCALHOST)
    }
}

/// The clock could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClockError {
    /// `[clock] grandmaster` does not parse (validation normally catches it first).
    #[error("clock.grandmaster: {0}")]
    Grandmaster(#[from] codecs::ptp::InvalidClockIdentity),
    /// The follower could not start.
    #[error(transparent)]
    Follow(#[from] FollowError),
}

/// The clock the gateway runs with, as configured.
#[derive(Debug, Clone)]
pub enum ClockHandle {
    /// `system` mode.
    System(Arc<SystemClock>),
    /// `follow` mode.
    Follow(Arc<FollowClock>),
}

impl ClockHandle {
    /// Builds the configured clock (starting the follower in `follow` mode).
    pub fn start(config: &ClockConfig) -> Result<ClockHandle, ClockError> {
        match config.mode {
            ClockMode::System => {
                let grandmaster = config
                    .grandmaster
                    .as_deref()
                    .map(str::parse::<ClockIdentity>)
                    .transpose()?;
                let clock = match config.tai_utc_offset {
                    TaiUtcOffset::Auto => SystemClock::detect(TAI_UTC_OFFSET, ""),
                    TaiUtcOffset::Seconds(seconds) => SystemClock::new(
                        TaiSource::RealtimePlus(Duration::from_secs(seconds.unsigned_abs())),
                        "",
                    ),
                }
                .with_reference(grandmaster, config.domain);
                tracing::info!(
                    source = ?clock.source(),
                    ts_refclk = %clock.ts_refclk(),
                    "media clock: the host clock is PTP time"
                );
                Ok(ClockHandle::System(Arc::new(clock)))
            }
            ClockMode::Follow => Ok(ClockHandle::Follow(FollowClock::start(FollowSettings {
                interface: config.follow_interface(),
                domain: config.domain,
                dscp: config.dscp,
            })?)),
        }
    }

    /// The clock as flows use it.
    pub fn media_clock(&self) -> Arc<dyn MediaClock> {
        match self {
            ClockHandle::System(clock) => Arc::clone(clock) as Arc<dyn MediaClock>,
            ClockHandle::Follow(clock) => Arc::clone(clock) as Arc<dyn MediaClock>,
        }
    }

    /// `GET /v1/clock`.
    pub fn status(&self) -> ClockStatus {
        match self {
            ClockHandle::System(clock) => clock.clock_status(),
            ClockHandle::Follow(clock) => clock.clock_status(),
        }
    }

    /// Stops the follower (nothing to do in `system` mode).
    pub fn stop(&self) {
        if let ClockHandle::Follow(clock) = self {
            clock.stop();
        }
    }

    /// Publishes the clock's gauges and counters into the current `metrics` recorder.
    pub fn publish_metrics(&self) {
        publish_clock_metrics(&self.status());
    }
}

/// The clock's metrics from a status, into the current `metrics` recorder (no sample for
/// what is unknown).
pub fn publish_clock_metrics(status: &ClockStatus) {
    metric_info(status);
    let metric = |name: &'static str, kind: MetricKind, help: &'static str, value: Option<f64>| {
        let Some(value) = value else { return };
        if kind == MetricKind::Counter {
            metrics::describe_counter!(name, help);
            metrics::counter!(name).absolute(value as u64);
        } else {
            metrics::describe_gauge!(name, help);
            metrics::gauge!(name).set(value);
        }
    };
    let flag = |b: bool| Some(if b { 1.0 } else { 0.0 });
    metric(
        "telepatch_clock_usable",
        MetricKind::Gauge,
        "Whether flows can stamp with the media clock (1) or not (0).",
        flag(status.usable),
    );
    metric(
        "telepatch_clock_ptp_time_seconds",
        MetricKind::Gauge,
        "PTP time when scraped, seconds since the PTP epoch.",
        status.ptp_time_ns.map(|ns| ns as f64 / 1e9),
    );
    metric(
        "telepatch_clock_tai_utc_offset_seconds",
        MetricKind::Gauge,
        "TAI-UTC offset applied (system) or announced by the grandmaster (follow).",
        status.tai_utc_offset_s.map(f64::from),
    );
    if status.mode != ClockMode::Follow {
        return;
    }
    metric(
        "telepatch_ptp_locked",
        MetricKind::Gauge,
        "Whether the PTP follower is locked to a grandmaster (1) or not (0).",
        flag(status.state == ClockState::Locked),
    );
    metric(
        "telepatch_ptp_offset_nanoseconds",
        MetricKind::Gauge,
        "Estimate minus grandmaster time at the newest Sync.",
        status.offset_ns.map(|v| v as f64),
    );
    metric(
        "telepatch_ptp_rate_ratio_ppm",
        MetricKind::Gauge,
        "Grandmaster rate against the local clock, ppm.",
        status.rate_ratio_ppm,
    );
    metric(
        "telepatch_ptp_mean_path_delay_nanoseconds",
        MetricKind::Gauge,
        "Mean path delay to the master.",
        status.mean_path_delay_ns.map(|v| v as f64),
    );
    metric(
        "telepatch_ptp_last_sync_age_seconds",
        MetricKind::Gauge,
        "Time since the newest Sync was used.",
        status.last_sync_age_ms.map(|ms| ms / 1e3),
    );
    metric(
        "telepatch_ptp_fit_rms_nanoseconds",
        MetricKind::Gauge,
        "RMS residual of the Sync fit (timestamp jitter).",
        status.fit_rms_ns,
    );
    if let Some(c) = status.counters {
        for (name, help, value) in [
            (
                "telepatch_ptp_announces_total",
                "Announces accepted.",
                c.announces,
            ),
            ("telepatch_ptp_syncs_total", "Sync samples used.", c.syncs),
            (
                "telepatch_ptp_delay_requests_total",
                "Delay_Req sent.",
                c.delay_requests,
            ),
            (
                "telepatch_ptp_delay_responses_total",
                "Delay_Resp matched.",
                c.delay_responses,
            ),
            (
                "telepatch_ptp_delay_response_timeouts_total",
                "Delay_Req left unanswered.",
                c.delay_response_timeouts,
            ),
            (
                "telepatch_ptp_outliers_total",
                "Sync samples rejected as outliers.",
                c.outliers,
            ),
            ("telepatch_ptp_resets_total", "Estimate restarts.", c.resets),
            (
                "telepatch_ptp_ignored_total",
                "Messages ignored.",
                c.ignored,
            ),
            (
                "telepatch_ptp_bad_messages_total",
                "Datagrams that are not PTPv2.",
                c.bad_messages,
            ),
            (
                "telepatch_ptp_unsupported_total",
                "PTP messages not used.",
                c.unsupported,
            ),
            (
                "telepatch_ptp_send_errors_total",
                "Delay_Req that could not be sent.",
                c.send_errors,
            ),
            (
                "telepatch_ptp_read_timestamps_total",
                "Datagrams stamped by a clock read instead of the kernel.",
                c.read_timestamps,
            ),
        ] {
            metric(name, MetricKind::Counter, help, Some(value as f64));
        }
    }
}

fn metric_info(status: &ClockStatus) {
    let mode = match status.mode {
        ClockMode::System => "system",
        ClockMode::Follow => "follow",
    };
    let state = match status.state {
        ClockState::HostClock => "host_clock",
        ClockState::Listening => "listening",
        ClockState::Acquiring => "acquiring",
        ClockState::Locked => "locked",
        ClockState::Holdover => "holdover",
    };
    let name = "telepatch_clock_info";
    let grandmaster = status.grandmaster_id.clone().unwrap_or_default();
    metrics::describe_gauge!(
        name,
        "The media clock: mode, state, grandmaster and domain."
    );
    metrics::gauge!(
        name,
        "mode" => mode,
        "state" => state,
        "grandmaster" => grandmaster,
        "domain" => status.domain.to_string()
    )
    .set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_plus_offset_is_tai() {
        let clock = SystemClock::new(TaiSource::RealtimePlus(TAI_UTC_OFFSET), "ptp=traceable");
        let realtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let ptp = Duration::from_nanos(clock.ptp_now_ns().unwrap());
        let difference = ptp.saturating_sub(realtime);
        assert!(
            difference >= Duration::from_secs(37) && difference < Duration::from_millis(37_100),
            "{difference:?}"
        );
    }

    fn parse(text: &str) -> ClockConfig {
        #[derive(Deserialize)]
        struct File {
            clock: ClockConfig,
        }
        toml::from_str::<File>(text).unwrap().clock
    }

    #[test]
    fn clock_section_parses_both_modes() {
        let c = parse("[clock]\n");
        assert_eq!(c, ClockConfig::default());
        assert!(c.problems().is_empty());
        let c = parse(
            "[clock]\nmode = \"system\"\ntai_utc_offset = 0\n\
             grandmaster = \"00-1d-c1-ff-fe-12-34-56\"\ndomain = 1\n",
        );
        assert_eq!(c.tai_utc_offset, TaiUtcOffset::Seconds(0));
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        let c = parse("[clock]\nmode = \"follow\"\ninterface = \"10.250.0.2\"\n");
        assert_eq!(c.mode, ClockMode::Follow);
        assert_eq!(c.follow_interface(), Ipv4Addr::new(10, 250, 0, 2));
        assert_eq!(c.domain, 0);
        assert_eq!(c.dscp, 56);
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!(
            parse("[clock]\ntai_utc_offset = \"auto\"\n").tai_utc_offset,
            TaiUtcOffset::Auto
        );
        // What `check-config` prints parses back to the same section.
        for c in [c, parse("[clock]\ntai_utc_offset = 36\n")] {
            let text = toml::to_string(&c).unwrap();
            assert_eq!(toml::from_str::<ClockConfig>(&text).unwrap(), c, "{text}");
        }
    }

    #[test]
    fn clock_section_problems_name_their_fields() {
        #[derive(Debug, Deserialize)]
        struct File {
            #[serde(rename = "clock")]
            _clock: ClockConfig,
        }
        let err = toml::from_str::<File>("[clock]\ntai_utc_offset = \"utc\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected \"auto\" or a number"), "{err}");
        assert!(toml::from_str::<File>("[clock]\nmode = \"ptp\"\n").is_err());
        assert!(toml::from_str::<File>("[clock]\ninterface = \"eth0\"\n").is_err());
        assert!(toml::from_str::<File>("[clock]\ngm = \"x\"\n").is_err());

        let fields = |c: &ClockConfig| {
            c.problems()
                .into_iter()
                .map(|(field, _)| field)
                .collect::<Vec<_>>()
        };
        let c = parse(
            "[clock]\ntai_utc_offset = 400\ngrandmaster = \"00-1D\"\n\
             interface = \"10.0.0.1\"\ndomain = 200\ndscp = 64\n",
        );
        assert_eq!(
            fields(&c),
            [
                "clock.domain",
                "clock.dscp",
                "clock.tai_utc_offset",
                "clock.grandmaster",
                "clock.interface"
            ]
        );
        let c = parse(
            "[clock]\nmode = \"follow\"\ntai_utc_offset = 37\n\
             grandmaster = \"00-1D-C1-FF-FE-12-34-56\"\ninterface = \"224.0.1.129\"\n",
        );
        assert_eq!(
            fields(&c),
            [
                "clock.grandmaster",
                "clock.tai_utc_offset",
                "clock.interface"
            ]
        );
        let c = parse("[clock]\nmode = \"follow\"\ninterface = \"0.0.0.0\"\n");
        assert_eq!(fields(&c), ["clock.interface"]);
    }

    #[test]
    fn system_mode_announces_the_configured_reference() {
        let traceable = ClockHandle::start(&ClockConfig::default()).unwrap();
        assert_eq!(
            traceable.media_clock().ts_refclk(),
            "ptp=IEEE1588-2008:traceable"
        );
        let status = traceable.status();
        assert_eq!(status.state, ClockState::HostClock);
        assert_eq!(status.grandmaster_id, None);

        let config = parse(
            "[clock]\ntai_utc_offset = 37\ngrandmaster = \"00-1d-c1-ff-fe-12-34-56\"\ndomain = 0\n",
        );
        let handle = ClockHandle::start(&config).unwrap();
        let clock = handle.media_clock();
        assert_eq!(
            clock.ts_refclk(),
            "ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0"
        );
        let status = handle.status();
        assert_eq!(status.mode, ClockMode::System);
        assert_eq!(status.source, Some(ClockSource::ClockRealtimePlusOffset));
        assert_eq!(status.tai_utc_offset_s, Some(37));
        assert_eq!(
            status.grandmaster_id.as_deref(),
            Some("00-1D-C1-FF-FE-12-34-56")
        );
        // Read at one instant: exactly 37 s apart.
        assert_eq!(
            status.ptp_time_ns.unwrap() - status.realtime_ns,
            37_000_000_000
        );
        // The JSON status is the same document.
        let json = clock.status();
        assert_eq!(json["mode"], "system");
        assert_eq!(json["state"], "host_clock");
        assert_eq!(json["source"], "clock_realtime_plus_offset");
        assert_eq!(json["tai_utc_offset_s"], 37);

        let out = crate::metric_families::render_published(|| handle.publish_metrics());
        for line in [
            "telepatch_clock_info{mode=\"system\",state=\"host_clock\",\
             grandmaster=\"00-1D-C1-FF-FE-12-34-56\",domain=\"0\"} 1",
            "telepatch_clock_usable 1",
            "telepatch_clock_tai_utc_offset_seconds 37",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        assert!(!out.contains("telepatch_ptp_locked"), "{out}");
    }

    #[test]
    fn follow_metrics_report_lock_and_counters() {
        let status = ClockStatus {
            mode: ClockMode::Follow,
            state: ClockState::Locked,
            usable: true,
            ptp_time_ns: Some(1_700_000_000_500_000_000),
            realtime_ns: 1_700_000_000_500_000_000,
            ts_refclk: "ptp=IEEE1588-2008:02-2E-49-FF-FE-C5-BE-8C:0".into(),
            grandmaster_id: Some("02-2E-49-FF-FE-C5-BE-8C".into()),
            domain: 0,
            source: None,
            tai_utc_offset_s: Some(37),
            interface: Some("10.250.0.2".into()),
            master_port: Some("02-2E-49-FF-FE-C5-BE-8C/1".into()),
            ptp_timescale: Some(false),
            offset_ns: Some(-1_200),
            rate_ratio_ppm: Some(0.25),
            mean_path_delay_ns: Some(31_000),
            last_sync_age_ms: Some(62.5),
            fit_rms_ns: Some(900.0),
            holdover_remaining_ms: None,
            counters: Some(api::control::PtpCounters {
                syncs: 80,
                ..Default::default()
            }),
        };
        let out = crate::metric_families::render_published(|| publish_clock_metrics(&status));
        for line in [
            "telepatch_clock_info{mode=\"follow\",state=\"locked\",\
             grandmaster=\"02-2E-49-FF-FE-C5-BE-8C\",domain=\"0\"} 1",
            "telepatch_ptp_locked 1",
            "telepatch_ptp_offset_nanoseconds -1200",
            "telepatch_ptp_rate_ratio_ppm 0.25",
            "telepatch_ptp_mean_path_delay_nanoseconds 31000",
            "telepatch_ptp_last_sync_age_seconds 0.0625",
            "telepatch_ptp_syncs_total 80",
            "# TYPE telepatch_ptp_syncs_total counter",
            "telepatch_clock_ptp_time_seconds 1700000000.5",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }

    #[test]
    fn detected_clock_is_never_behind_utc() {
        let clock = SystemClock::detect(TAI_UTC_OFFSET, "ptp=traceable");
        let realtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let ptp = Duration::from_nanos(clock.ptp_now_ns().unwrap());
        // Either the kernel's TAI offset (tens of seconds) or the configured 37 s.
        assert!(
            ptp > realtime + Duration::from_secs(10),
            "{ptp:?} vs {realtime:?}"
        );
    }
}
