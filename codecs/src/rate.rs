//! Sample rates: the newtype every other module takes instead of a bare `u32`.

use std::fmt;
use std::num::NonZeroU32;

/// A sample rate in hertz, guaranteed to be one telepatch can process.
///
/// Built only through [`SampleRate::new`] / `TryFrom<u32>`, so a `SampleRate` in hand is
/// always between 8 kHz and 192 kHz.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleRate(NonZeroU32);

/// The rate was outside what telepatch processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unsupported sample rate {hz} Hz (supported: {min}..={max} Hz)", min = SampleRate::MIN_HZ, max = SampleRate::MAX_HZ)]
pub struct UnsupportedRate {
    /// The rejected rate.
    pub hz: u32,
}

impl SampleRate {
    /// Lowest accepted rate.
    pub const MIN_HZ: u32 = 8_000;
    /// Highest accepted rate.
    pub const MAX_HZ: u32 = 192_000;

    /// 8 kHz, the telephone rate (AudioSocket kind 0x10).
    pub const HZ_8000: SampleRate = SampleRate::from_const(8_000);
    /// 16 kHz, wideband telephony and the AoDNS Opus rate.
    pub const HZ_16000: SampleRate = SampleRate::from_const(16_000);
    /// 48 kHz, the bus rate of the patchbay and of AES67 and RTJam.
    pub const HZ_48000: SampleRate = SampleRate::from_const(48_000);

    const fn from_const(hz: u32) -> SampleRate {
        match NonZeroU32::new(hz) {
            Some(nz) => SampleRate(nz),
            None => panic!("zero sample rate constant"),
        }
    }

    /// Validates `hz`.
    pub fn new(hz: u32) -> Result<SampleRate, UnsupportedRate> {
        if !(Self::MIN_HZ..=Self::MAX_HZ).contains(&hz) {
            return Err(UnsupportedRate { hz });
        }
        NonZeroU32::new(hz)
            .map(SampleRate)
            .ok_or(UnsupportedRate { hz })
    }

    /// The rate in hertz.
    pub const fn hz(self) -> u32 {
        self.0.get()
    }

    /// Number of samples in `millis` milliseconds, rounded down (44.1 kHz: 441 per 10 ms).
    pub const fn samples_in_ms(self, millis: u32) -> usize {
        (self.0.get() as u64 * millis as u64 / 1000) as usize
    }
}

impl TryFrom<u32> for SampleRate {
    type Error = UnsupportedRate;
    fn try_from(hz: u32) -> Result<Self, Self::Error> {
        SampleRate::new(hz)
    }
}

impl fmt::Display for SampleRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Hz", self.hz())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_telephony_and_bus_rates() {
        for hz in [
            8_000, 12_000, 16_000, 24_000, 32_000, 44_100, 48_000, 96_000, 192_000,
        ] {
            assert_eq!(SampleRate::new(hz).map(SampleRate::hz), Ok(hz));
        }
    }

    #[test]
    fn rejects_out_of_range() {
        assert_eq!(SampleRate::new(0), Err(UnsupportedRate { hz: 0 }));
        assert_eq!(SampleRate::new(7_999), Err(UnsupportedRate { hz: 7_999 }));
        assert_eq!(
            SampleRate::new(192_001),
            Err(UnsupportedRate { hz: 192_001 })
        );
    }

    #[test]
    fn counts_samples_per_interval() {
        assert_eq!(SampleRate::HZ_8000.samples_in_ms(20), 160);
        assert_eq!(
            SampleRate::new(44_100).map(|r| r.samples_in_ms(20)),
            Ok(882)
        );
    }
}
