//! Message kind bytes, the audio kinds with their sample rates, DTMF digits and the
//! error codes of kind `0xFF` (audiosocket.md §3).

use codecs::rate::SampleRate;
use std::fmt;

/// Kind byte of the hangup / terminate message (§3; zero-length payload).
pub const KIND_HANGUP: u8 = 0x00;
/// Kind byte of the ID message: 16 raw UUID bytes, always the first message (§4).
pub const KIND_ID: u8 = 0x01;
/// Kind byte of the Go library's "silence" constant. Asterisk never sends it and
/// rejects it (§3); we treat it as an unknown kind.
pub const KIND_SILENCE: u8 = 0x02;
/// Kind byte of a DTMF digit: 1 ASCII byte, Asterisk to gateway only (§6).
pub const KIND_DTMF: u8 = 0x03;
/// Kind byte of the error message (optional 1-byte code). No Asterisk sends it and
/// Asterisk rejects it (§3).
pub const KIND_ERROR: u8 = 0xFF;

/// One of the nine audio kinds `0x10..=0x18`: signed 16-bit little-endian mono PCM at
/// the rate the kind names (§3, §5).
///
/// Under `0x10` a channel-driver or ARI session may carry μ-law/A-law bytes instead of
/// slin (§9.2); the kind alone cannot tell, only the configuration can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum AudioKind {
    /// `0x10`: 8 kHz.
    Slin8 = 0x10,
    /// `0x11`: 12 kHz (not 16 kHz, whatever one revision of the docs said, §3).
    Slin12 = 0x11,
    /// `0x12`: 16 kHz.
    Slin16 = 0x12,
    /// `0x13`: 24 kHz.
    Slin24 = 0x13,
    /// `0x14`: 32 kHz.
    Slin32 = 0x14,
    /// `0x15`: 44.1 kHz.
    Slin44_1 = 0x15,
    /// `0x16`: 48 kHz.
    Slin48 = 0x16,
    /// `0x17`: 96 kHz.
    Slin96 = 0x17,
    /// `0x18`: 192 kHz.
    Slin192 = 0x18,
}

impl AudioKind {
    /// Every audio kind, in kind-byte order.
    pub const ALL: [AudioKind; 9] = [
        AudioKind::Slin8,
        AudioKind::Slin12,
        AudioKind::Slin16,
        AudioKind::Slin24,
        AudioKind::Slin32,
        AudioKind::Slin44_1,
        AudioKind::Slin48,
        AudioKind::Slin96,
        AudioKind::Slin192,
    ];

    /// The audio kind for a kind byte, or `None` if the byte is not `0x10..=0x18`.
    pub const fn from_byte(byte: u8) -> Option<AudioKind> {
        Some(match byte {
            0x10 => AudioKind::Slin8,
            0x11 => AudioKind::Slin12,
            0x12 => AudioKind::Slin16,
            0x13 => AudioKind::Slin24,
            0x14 => AudioKind::Slin32,
            0x15 => AudioKind::Slin44_1,
            0x16 => AudioKind::Slin48,
            0x17 => AudioKind::Slin96,
            0x18 => AudioKind::Slin192,
            _ => return None,
        })
    }

    /// The kind byte on the wire.
    pub const fn byte(self) -> u8 {
        self as u8
    }

    /// The sample rate in hertz.
    pub const fn hz(self) -> u32 {
        match self {
            AudioKind::Slin8 => 8_000,
            AudioKind::Slin12 => 12_000,
            AudioKind::Slin16 => 16_000,
            AudioKind::Slin24 => 24_000,
            AudioKind::Slin32 => 32_000,
            AudioKind::Slin44_1 => 44_100,
            AudioKind::Slin48 => 48_000,
            AudioKind::Slin96 => 96_000,
            AudioKind::Slin192 => 192_000,
        }
    }

    /// The sample rate as the workspace's [`SampleRate`] newtype.
    pub fn rate(self) -> SampleRate {
        // Every kind's rate lies in SampleRate's 8..=192 kHz range (checked by the
        // `every_kind_has_its_rate` test), so the fallback is never taken.
        SampleRate::new(self.hz()).unwrap_or(SampleRate::HZ_8000)
    }

    /// The audio kind for a sample rate, or `None` if AudioSocket has no kind for it.
    pub fn for_rate(rate: SampleRate) -> Option<AudioKind> {
        AudioKind::ALL.into_iter().find(|k| k.hz() == rate.hz())
    }

    /// Payload bytes of `millis` ms of s16le audio at this kind's rate
    /// (20 ms at 8 kHz: 320, §5).
    pub const fn bytes_per_ms(self, millis: u32) -> usize {
        (self.hz() as u64 * millis as u64 / 1000) as usize * 2
    }

    /// The slin format name Asterisk uses for this rate (`slin`, `slin16`, `slin44`,
    /// ...), as in `c(slin16)` or the ARI `format` parameter (§9.2, §9.3).
    pub const fn asterisk_format(self) -> &'static str {
        match self {
            AudioKind::Slin8 => "slin",
            AudioKind::Slin12 => "slin12",
            AudioKind::Slin16 => "slin16",
            AudioKind::Slin24 => "slin24",
            AudioKind::Slin32 => "slin32",
            AudioKind::Slin44_1 => "slin44",
            AudioKind::Slin48 => "slin48",
            AudioKind::Slin96 => "slin96",
            AudioKind::Slin192 => "slin192",
        }
    }
}

impl fmt::Display for AudioKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02x} (slin {} Hz)", self.byte(), self.hz())
    }
}

/// A DTMF digit as carried by kind `0x03`: one of the ASCII bytes `0-9 * # A-D` (§6).
///
/// Built only through [`DtmfDigit::new`] / `TryFrom<char>`, so a value in hand is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DtmfDigit(u8);

impl DtmfDigit {
    /// Validates an ASCII digit byte; lower-case `a-d` are not accepted because Asterisk
    /// sends upper case.
    pub const fn new(byte: u8) -> Option<DtmfDigit> {
        match byte {
            b'0'..=b'9' | b'*' | b'#' | b'A'..=b'D' => Some(DtmfDigit(byte)),
            _ => None,
        }
    }

    /// The ASCII byte on the wire.
    pub const fn byte(self) -> u8 {
        self.0
    }

    /// The digit as a `char`.
    pub const fn as_char(self) -> char {
        self.0 as char
    }
}

impl TryFrom<char> for DtmfDigit {
    type Error = InvalidDtmfDigit;
    fn try_from(c: char) -> Result<Self, Self::Error> {
        u8::try_from(c)
            .ok()
            .and_then(DtmfDigit::new)
            .ok_or(InvalidDtmfDigit { found: c })
    }
}

impl fmt::Display for DtmfDigit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

/// A character that is not a DTMF digit (`0-9 * # A-D`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{found:?} is not a DTMF digit (expected 0-9, *, #, A-D)")]
pub struct InvalidDtmfDigit {
    /// The rejected character.
    pub found: char,
}

/// The code byte of an error message (kind `0xFF`), used as bit flags (§3, §13).
///
/// An empty payload or a code with bits outside the known flags decodes as
/// [`ErrorCode::UNKNOWN`], as the Go reference library does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(u8);

impl ErrorCode {
    /// `0x00`: no error.
    pub const NONE: ErrorCode = ErrorCode(0x00);
    /// `0x01`: the calling party hung up.
    pub const CALLER_HANGUP: ErrorCode = ErrorCode(0x01);
    /// `0x02`: frame forwarding error.
    pub const FRAME_FORWARDING: ErrorCode = ErrorCode(0x02);
    /// `0x04`: memory allocation error.
    pub const MEMORY: ErrorCode = ErrorCode(0x04);
    /// `0xFF`: unknown (also what an empty payload means).
    pub const UNKNOWN: ErrorCode = ErrorCode(0xFF);

    const KNOWN_BITS: u8 = 0x07;

    /// Interprets a code byte; bits outside `0x07` make it [`ErrorCode::UNKNOWN`].
    pub const fn from_byte(byte: u8) -> ErrorCode {
        if byte & !Self::KNOWN_BITS == 0 {
            ErrorCode(byte)
        } else {
            ErrorCode::UNKNOWN
        }
    }

    /// The code byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag of `other` is set in `self` (never true for `UNKNOWN` unless
    /// `other` is `UNKNOWN`).
    pub const fn contains(self, other: ErrorCode) -> bool {
        if self.0 == Self::UNKNOWN.0 || other.0 == Self::UNKNOWN.0 {
            self.0 == other.0
        } else {
            self.0 & other.0 == other.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_rate() {
        let expected = [
            (0x10, 8_000),
            (0x11, 12_000),
            (0x12, 16_000),
            (0x13, 24_000),
            (0x14, 32_000),
            (0x15, 44_100),
            (0x16, 48_000),
            (0x17, 96_000),
            (0x18, 192_000),
        ];
        for (byte, hz) in expected {
            let kind = AudioKind::from_byte(byte).unwrap();
            assert_eq!(kind.byte(), byte);
            assert_eq!(kind.hz(), hz);
            assert_eq!(kind.rate().hz(), hz);
            assert_eq!(AudioKind::for_rate(kind.rate()), Some(kind));
        }
        assert_eq!(AudioKind::from_byte(0x0f), None);
        assert_eq!(AudioKind::from_byte(0x19), None);
        assert_eq!(AudioKind::for_rate(SampleRate::new(22_050).unwrap()), None);
    }

    #[test]
    fn twenty_ms_payload_sizes_match_fact_sheet_table() {
        // §5 table, "bytes / 20 ms".
        let bytes: Vec<usize> = AudioKind::ALL.iter().map(|k| k.bytes_per_ms(20)).collect();
        assert_eq!(bytes, [320, 480, 640, 960, 1280, 1764, 1920, 3840, 7680]);
    }

    #[test]
    fn dtmf_digits_are_validated() {
        for c in "0123456789*#ABCD".chars() {
            assert_eq!(DtmfDigit::try_from(c).unwrap().as_char(), c);
        }
        for c in ['a', 'E', ' ', '\0', 'é'] {
            assert_eq!(DtmfDigit::try_from(c), Err(InvalidDtmfDigit { found: c }));
        }
    }

    #[test]
    fn error_codes_are_bit_flags_and_unknown_bits_collapse() {
        let both = ErrorCode::from_byte(0x03);
        assert!(both.contains(ErrorCode::CALLER_HANGUP));
        assert!(both.contains(ErrorCode::FRAME_FORWARDING));
        assert!(!both.contains(ErrorCode::MEMORY));
        assert_eq!(ErrorCode::from_byte(0x08), ErrorCode::UNKNOWN);
        assert_eq!(ErrorCode::from_byte(0xFF), ErrorCode::UNKNOWN);
        assert!(!ErrorCode::UNKNOWN.contains(ErrorCode::MEMORY));
    }
}
