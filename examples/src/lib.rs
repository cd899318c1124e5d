//! Shared helpers for the example programs: command-line value parsing and the
//! downlink timing statistics the fake Asterisk and the load generator print.

use anyhow::{Context, bail};
use sip_glue::audiosocket::{AudioKind, DtmfDigit};
use sip_glue::fake_asterisk::CallReport;
use std::net::SocketAddr;
use std::time::Duration;

/// The AudioSocket kind for a sample rate given on the command line (8000, 12000,
/// 16000, 24000, 32000, 44100, 48000, 96000 or 192000).
pub fn kind_for_hz(hz: u32) -> anyhow::Result<AudioKind> {
    AudioKind::ALL
        .into_iter()
        .find(|k| k.hz() == hz)
        .with_context(|| {
            let rates: Vec<String> = AudioKind::ALL.iter().map(|k| k.hz().to_string()).collect();
            format!(
                "no AudioSocket kind for {hz} Hz (use one of {})",
                rates.join(", ")
            )
        })
}

/// Parses a DTMF string such as `"123#"` into digits.
pub fn parse_dtmf(digits: &str) -> anyhow::Result<Vec<DtmfDigit>> {
    digits
        .chars()
        .map(|c| DtmfDigit::try_from(c).map_err(anyhow::Error::from))
        .collect()
}

/// Resolves `host:port` to the first address, as Asterisk tries them in order.
pub async fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("cannot resolve {target:?} (expected host:port)"))?;
    match addrs.next() {
        Some(a) => Ok(a),
        None => bail!("{target:?} resolved to no address"),
    }
}

/// Inter-arrival statistics of the audio frames a call received (the gateway's
/// downlink pacing, audiosocket.md §7: 20 ms frames in real time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArrivalStats {
    /// Frames received.
    pub frames: usize,
    /// Median gap between frames.
    pub p50: Duration,
    /// 99th-percentile gap.
    pub p99: Duration,
    /// Largest gap.
    pub max: Duration,
    /// Gaps longer than [`GAP_THRESHOLD`].
    pub gaps: usize,
}

/// A gap this long means at least one 20 ms frame was missing or late.
pub const GAP_THRESHOLD: Duration = Duration::from_millis(40);

impl ArrivalStats {
    /// Statistics of `report`'s received frames.
    pub fn of(report: &CallReport) -> ArrivalStats {
        let mut gaps: Vec<Duration> = report.inter_arrival().collect();
        gaps.sort_unstable();
        ArrivalStats {
            frames: report.frames.len(),
            p50: percentile(&gaps, 0.50),
            p99: percentile(&gaps, 0.99),
            max: gaps.last().copied().unwrap_or_default(),
            gaps: gaps.iter().filter(|g| **g > GAP_THRESHOLD).count(),
        }
    }

    /// Statistics over several calls' gaps pooled together.
    pub fn pooled<'a>(reports: impl IntoIterator<Item = &'a CallReport>) -> ArrivalStats {
        let mut frames = 0;
        let mut gaps = Vec::new();
        for r in reports {
            frames += r.frames.len();
            gaps.extend(r.inter_arrival());
        }
        gaps.sort_unstable();
        ArrivalStats {
            frames,
            p50: percentile(&gaps, 0.50),
            p99: percentile(&gaps, 0.99),
            max: gaps.last().copied().unwrap_or_default(),
            gaps: gaps.iter().filter(|g| **g > GAP_THRESHOLD).count(),
        }
    }
}

/// Nearest-rank percentile of sorted values (`q` in 0..=1); zero when empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with one decimal, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&v, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn rates_map_to_kinds_and_dtmf_parses() {
        assert_eq!(kind_for_hz(44_100).unwrap(), AudioKind::Slin44_1);
        assert!(kind_for_hz(22_050).is_err());
        let d: String = parse_dtmf("123#*AD")
            .unwrap()
            .iter()
            .map(|d| d.as_char())
            .collect();
        assert_eq!(d, "123#*AD");
        assert!(parse_dtmf("12x").is_err());
    }
}
