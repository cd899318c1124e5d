//! TTL of `seq_<n>` records (aodns.md §7).
//!
//! The reference computes `int(frame_size * frames / (rate * channels * 2) *
//! max_sequences * 0.8)`, at least 5. Treating the frame size in samples as bytes
//! (`* 2`) and dividing by the channel count makes it about 40 % of the audio the
//! window holds for mono and 20 % for stereo, not the 80 % its README states.
//! [`TtlRule::Reference`] reproduces that number exactly (listeners and caches see
//! the same TTLs as from the reference server); [`TtlRule::AccurateDuration`] uses
//! the real audio duration, as the README intends.

use crate::opus::{FRAME_MS, OpusFormat};

/// Lowest `seq_<n>` TTL the reference publishes.
pub const MIN_SEQ_TTL_SECS: u32 = 5;

/// How the `seq_<n>` TTL is derived from the pack size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TtlRule {
    /// The reference formula, bit for bit (including its float arithmetic).
    #[default]
    Reference,
    /// 80 % of the audio the whole window holds: `frames * 60 ms * max_sequences
    /// * 0.8`, rounded down, at least 5 s.
    AccurateDuration,
}

/// TTL in seconds for a pack of `frame_count` frames, with `max_sequences` packs
/// published (reference default 75).
pub fn seq_ttl(rule: TtlRule, frame_count: usize, format: OpusFormat, max_sequences: usize) -> u32 {
    let ttl = match rule {
        TtlRule::Reference => {
            // Same operations in the same order as the Python, in f64: the integer
            // products are exact below 2^53 and Python's int/int true division
            // rounds exactly like f64 division of the two exact values.
            let frame_size = format.rate.frame_samples() as f64;
            let divisor = f64::from(format.rate.hz()) * format.channels.count() as f64 * 2.0;
            let seq_duration = (frame_size * frame_count as f64) / divisor;
            // `as` truncates toward zero (Python `int()`) and saturates.
            (seq_duration * max_sequences as f64 * 0.8) as u32
        }
        TtlRule::AccurateDuration => {
            let millis = u64::from(FRAME_MS)
                .saturating_mul(frame_count as u64)
                .saturating_mul(max_sequences as u64);
            // * 0.8 / 1000 ms, in integers.
            u32::try_from(millis.saturating_mul(8) / 10_000).unwrap_or(u32::MAX)
        }
    };
    ttl.max(MIN_SEQ_TTL_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opus::{Channels, OpusRate};

    const MONO_16K: OpusFormat = OpusFormat {
        rate: OpusRate::Hz16000,
        channels: Channels::Mono,
    };

    #[test]
    fn reference_rule_gives_the_sheet_values() {
        // aodns.md §7 and §11 (defaults: 16 kHz mono, 75 sequences).
        for (frames, ttl) in [(12, 21), (13, 23), (76, 136), (3, 5)] {
            assert_eq!(
                seq_ttl(TtlRule::Reference, frames, MONO_16K, 75),
                ttl,
                "{frames} frames"
            );
        }
    }

    #[test]
    fn reference_rule_matches_the_python_expression() {
        // Expected values from CPython:
        // int((60*rate//1000 * n) / (rate*ch*2) * m * 0.8), at least 5.
        let stereo_8k = OpusFormat {
            rate: OpusRate::Hz8000,
            channels: Channels::Stereo,
        };
        let mono_12k = OpusFormat {
            rate: OpusRate::Hz12000,
            channels: Channels::Mono,
        };
        assert_eq!(seq_ttl(TtlRule::Reference, 13, stereo_8k, 75), 11);
        assert_eq!(seq_ttl(TtlRule::Reference, 40, mono_12k, 75), 72);
        assert_eq!(seq_ttl(TtlRule::Reference, 1, MONO_16K, 75), 5);
        assert_eq!(seq_ttl(TtlRule::Reference, 1000, MONO_16K, 1000), 24000);
        assert_eq!(seq_ttl(TtlRule::Reference, 25, MONO_16K, 75), 45);
    }

    #[test]
    fn accurate_rule_uses_the_real_duration() {
        // 13 frames = 0.78 s; * 75 * 0.8 = 46.8 s.
        assert_eq!(seq_ttl(TtlRule::AccurateDuration, 13, MONO_16K, 75), 46);
        let stereo_8k = OpusFormat {
            rate: OpusRate::Hz8000,
            channels: Channels::Stereo,
        };
        assert_eq!(seq_ttl(TtlRule::AccurateDuration, 13, stereo_8k, 75), 46);
        assert_eq!(seq_ttl(TtlRule::AccurateDuration, 1, MONO_16K, 75), 5);
        assert_eq!(
            seq_ttl(TtlRule::AccurateDuration, usize::MAX, MONO_16K, usize::MAX),
            u32::MAX
        );
        assert_eq!(TtlRule::default(), TtlRule::Reference);
    }
}
