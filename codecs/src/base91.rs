//! basE91 text encoding, bit for bit as the AoDNS reference uses it (aodns.md §4).
//!
//! AoDNS carries every Opus packet and the compressed sequence list as basE91 text
//! inside DNS TXT strings. The reference server uses the Python `base91` 1.0.1
//! package; this module reproduces its alphabet and algorithm exactly (the sheet's
//! vectors are the tests below), with two differences in interface, not output:
//!
//! - encoders write into caller-owned buffers (a byte slice or a reused `String`);
//! - the decoder rejects any byte outside the alphabet with a typed error, where the
//!   Python package silently skips it. Text produced by an AoDNS server never holds
//!   such bytes, so a listener loses nothing and a corrupted string is reported
//!   instead of being decoded into garbage.
//!
//! The algorithm (Joachim Henke's basE91): input bytes enter a bit queue LSB first;
//! while more than 13 bits are queued, 13 bits are taken as `v` (14 bits when the
//! 13-bit value is 88 or less) and written as two characters, `v % 91` then `v / 91`.
//! The leftover bits become one character, or two when more than 7 bits remain or
//! their value exceeds 90.

/// The 91 characters, indexed by value 0..=90 (aodns.md §4). It holds neither the
/// apostrophe (the AoDNS index separator), the backslash, `-` nor the space.
pub const ALPHABET: &[u8; 91] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&()*+,./:;<=>?@[]^_`{|}~\"";

/// Marks a byte that is not in [`ALPHABET`] in [`DECODE_TABLE`].
const INVALID: u8 = 0xff;

/// Byte -> value lookup, built from [`ALPHABET`] at compile time.
const DECODE_TABLE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Why a basE91 operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Base91Error {
    /// The text holds a byte that is not in [`ALPHABET`].
    #[error("byte 0x{byte:02x} at offset {offset} is not a basE91 character")]
    InvalidChar {
        /// The offending byte.
        byte: u8,
        /// Its position in the input.
        offset: usize,
    },
    /// The caller's output slice is shorter than the result.
    #[error("output buffer holds {capacity} bytes but {needed} are needed")]
    OutputTooSmall {
        /// Bytes the complete result takes.
        needed: usize,
        /// Bytes the caller provided.
        capacity: usize,
    },
}

/// The longest basE91 text `len` input bytes can produce: `ceil(16 * len / 13)`.
///
/// Every pair of characters carries at least 13 bits, and the final one or two
/// characters carry the rest, so this bound is reached (by data whose every 13-bit
/// group exceeds 88) and never exceeded.
pub const fn encoded_len_max(len: usize) -> usize {
    (len * 16).div_ceil(13)
}

/// The most bytes `chars` characters of basE91 text can decode to: each pair yields
/// at most 14 bits and a final odd character yields one byte.
pub const fn decoded_len_max(chars: usize) -> usize {
    (chars / 2) * 14 / 8 + chars % 2
}

/// The exact length of the basE91 text of `input`, without producing it.
pub fn encoded_len(input: &[u8]) -> usize {
    let mut count = 0;
    encode_with(input, |_| count += 1);
    count
}

/// Encodes `input` into `out` and returns the number of bytes written.
///
/// On [`Base91Error::OutputTooSmall`] `out` holds a truncated prefix; a buffer of
/// [`encoded_len_max`]`(input.len())` bytes always suffices.
pub fn encode_to(input: &[u8], out: &mut [u8]) -> Result<usize, Base91Error> {
    let mut pos = 0;
    encode_with(input, |c| {
        if let Some(slot) = out.get_mut(pos) {
            *slot = c;
        }
        pos += 1;
    });
    if pos > out.len() {
        return Err(Base91Error::OutputTooSmall {
            needed: pos,
            capacity: out.len(),
        });
    }
    Ok(pos)
}

/// Appends the basE91 text of `input` to `out` (clear it first to reuse it). Only
/// grows `out` when its capacity is short.
pub fn encode_append(input: &[u8], out: &mut String) {
    out.reserve(encoded_len_max(input.len()));
    // Every byte of ALPHABET is ASCII, so each one is a whole `char`.
    encode_with(input, |c| out.push(char::from(c)));
}

/// Decodes basE91 `text` into `out` and returns the number of bytes written.
///
/// A buffer of [`decoded_len_max`]`(text.len())` bytes always suffices. On error
/// `out` holds a partial result.
pub fn decode_to(text: &[u8], out: &mut [u8]) -> Result<usize, Base91Error> {
    let mut pos = 0;
    decode_with(text, |b| {
        if let Some(slot) = out.get_mut(pos) {
            *slot = b;
        }
        pos += 1;
    })?;
    if pos > out.len() {
        return Err(Base91Error::OutputTooSmall {
            needed: pos,
            capacity: out.len(),
        });
    }
    Ok(pos)
}

/// Decodes basE91 `text` and appends the bytes to `out`. On error `out` is left as
/// it was.
pub fn decode_append(text: &[u8], out: &mut Vec<u8>) -> Result<(), Base91Error> {
    let start = out.len();
    out.reserve(decoded_len_max(text.len()));
    let result = decode_with(text, |b| out.push(b));
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// The encoder proper: calls `emit` once per output character, in order.
fn encode_with(input: &[u8], mut emit: impl FnMut(u8)) {
    // At most 13 bits stay queued between bytes, so 13 + 8 bits fit in a u32.
    let mut queue: u32 = 0;
    let mut bits: u32 = 0;
    for &byte in input {
        queue |= u32::from(byte) << bits;
        bits += 8;
        if bits > 13 {
            let mut v = queue & 0x1fff;
            if v > 88 {
                queue >>= 13;
                bits -= 13;
            } else {
                v = queue & 0x3fff;
                queue >>= 14;
                bits -= 14;
            }
            emit(ALPHABET[(v % 91) as usize]);
            emit(ALPHABET[(v / 91) as usize]);
        }
    }
    if bits > 0 {
        // Fewer than 14 bits remain, so `queue / 91` is at most 90.
        emit(ALPHABET[(queue % 91) as usize]);
        if bits > 7 || queue > 90 {
            emit(ALPHABET[(queue / 91) as usize]);
        }
    }
}

/// The decoder proper: calls `emit` once per output byte, in order.
fn decode_with(text: &[u8], mut emit: impl FnMut(u8)) -> Result<(), Base91Error> {
    let mut queue: u32 = 0;
    let mut bits: u32 = 0;
    // The first character of a pair, waiting for its partner.
    let mut pending: Option<u32> = None;
    for (offset, &byte) in text.iter().enumerate() {
        let value = DECODE_TABLE[usize::from(byte)];
        if value == INVALID {
            return Err(Base91Error::InvalidChar { byte, offset });
        }
        let value = u32::from(value);
        match pending.take() {
            None => pending = Some(value),
            Some(low) => {
                // A pair is at most 90 + 90 * 91 = 8280 (14 bits), queued above
                // fewer than 8 leftover bits: well inside a u32.
                let v = low + value * 91;
                queue |= v << bits;
                bits += if v & 0x1fff > 88 { 13 } else { 14 };
                while bits > 7 {
                    emit((queue & 0xff) as u8);
                    queue >>= 8;
                    bits -= 8;
                }
            }
        }
    }
    if let Some(low) = pending {
        emit(((queue | low << bits) & 0xff) as u8);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// aodns.md §4, produced by running the Python `base91` 1.0.1 package.
    const SHEET_VECTORS: &[(&str, &str)] = &[
        ("", ""),
        ("00", "AA"),
        ("ff", "/C"),
        ("000102", ":CQA"),
        ("f8fffe", "`~lW"),
        ("48656c6c6f", ">OwJh>A"),
        ("00010203040506070809", ":C#(:C?hVB$MA"),
        ("48656c6c6f2c20776f726c6421", ">OwJh>}A\"=r@@Y?F"),
        ("0000000000000000", "AAAAAAAAAA"),
        // aodns.md §11: the first libopus packet of a silent 16 kHz voip encoder.
        (
            "5802f9304dbb0de5e392098938ebcae1b1d1dd85",
            "2G[Va2X=Z`za9L@T%egqp5AhI",
        ),
    ];

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A deterministic byte stream (xorshift32), so the tests need no RNG crate.
    fn pseudo_random(len: usize, mut seed: u32) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn alphabet_is_91_distinct_printable_bytes_without_apostrophe() {
        let mut seen = [false; 256];
        for &c in ALPHABET {
            assert!(c.is_ascii_graphic(), "{c:#x}");
            assert!(!seen[usize::from(c)], "duplicate {}", char::from(c));
            seen[usize::from(c)] = true;
        }
        for c in [b'\'', b'-', b'\\', b' '] {
            assert!(!seen[usize::from(c)]);
        }
        assert_eq!(ALPHABET[90], b'"');
    }

    #[test]
    fn encodes_the_sheet_vectors() {
        for &(hex, text) in SHEET_VECTORS {
            let bytes = unhex(hex);
            let mut out = String::new();
            encode_append(&bytes, &mut out);
            assert_eq!(out, text, "input {hex}");
            let mut buf = [0u8; 64];
            let n = encode_to(&bytes, &mut buf).unwrap();
            assert_eq!(&buf[..n], text.as_bytes());
            assert_eq!(encoded_len(&bytes), text.len());
        }
    }

    #[test]
    fn decodes_the_sheet_vectors() {
        for &(hex, text) in SHEET_VECTORS {
            let mut out = vec![0xaa];
            decode_append(text.as_bytes(), &mut out).unwrap();
            assert_eq!(out[1..], unhex(hex), "text {text}");
            let mut buf = [0u8; 64];
            let n = decode_to(text.as_bytes(), &mut buf).unwrap();
            assert_eq!(buf[..n], unhex(hex));
        }
    }

    #[test]
    fn round_trips_every_length_and_respects_both_bounds() {
        let mut text = String::new();
        let mut back = Vec::new();
        for len in 0..600 {
            for seed in [1u32, 0x9e37_79b9] {
                let data = pseudo_random(len, seed.wrapping_add(len as u32));
                text.clear();
                encode_append(&data, &mut text);
                assert!(text.len() <= encoded_len_max(len));
                assert!(len <= decoded_len_max(text.len()));
                back.clear();
                decode_append(text.as_bytes(), &mut back).unwrap();
                assert_eq!(back, data);
            }
            let ones = vec![0xffu8; len];
            assert_eq!(
                encoded_len(&ones),
                encoded_len_max(len),
                "all-ones is the worst case"
            );
        }
    }

    #[test]
    fn worst_case_bound_gives_198_bytes_for_244_chars() {
        // aodns.md §13: a 250-byte string minus the 6-byte "%03d'''" prefix.
        assert_eq!(encoded_len_max(198), 244);
        assert_eq!(encoded_len_max(199), 245);
        assert_eq!(encoded_len(&[0xff; 198]), 244);
    }

    #[test]
    fn rejects_bytes_outside_the_alphabet() {
        let mut out = vec![1, 2];
        let err = decode_append(b">OwJ'h>A", &mut out).unwrap_err();
        assert_eq!(
            err,
            Base91Error::InvalidChar {
                byte: b'\'',
                offset: 4
            }
        );
        assert_eq!(out, [1, 2], "output restored on error");
        let err = decode_to(b"AA AA", &mut [0u8; 8]).unwrap_err();
        assert_eq!(
            err,
            Base91Error::InvalidChar {
                byte: b' ',
                offset: 2
            }
        );
    }

    #[test]
    fn reports_short_output_buffers() {
        let mut small = [0u8; 5];
        assert_eq!(
            encode_to(b"Hello", &mut small),
            Err(Base91Error::OutputTooSmall {
                needed: 7,
                capacity: 5
            })
        );
        assert_eq!(
            decode_to(b">OwJh>A", &mut small[..4]),
            Err(Base91Error::OutputTooSmall {
                needed: 5,
                capacity: 4
            })
        );
    }

    #[test]
    fn decodes_non_canonical_pairs_like_the_reference() {
        // `"` twice is 90 + 90 * 91 = 8280, more than any encoder emits; the bits
        // past the counted 13 spill into the next byte. Expected bytes from running
        // Python `base91` 1.0.1 `decode('"""""')`.
        let mut out = Vec::new();
        decode_append(b"\"\"\"\"\"", &mut out).unwrap();
        assert_eq!(out, [88, 32, 22, 168]);
    }
}
