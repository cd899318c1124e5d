//! The `sequence` record: published pack numbers, ascending and comma-joined, then
//! zlib (RFC 1950, level 9), then base91, in one TXT string (aodns.md §5).
//!
//! Compression goes through flate2 on the C zlib backend: it produces the same bytes
//! as CPython's `zlib.compress(..., level=9)` that the reference runs, so the sheet's
//! vectors match byte for byte. flate2's default Rust backend (miniz_oxide) and zlib-rs
//! emit different (equally valid) streams for some lists; listeners would not care,
//! but identical bytes make our server comparable with the reference.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::MAX_TXT_STRING_BYTES;
use crate::base91::{self, Base91Error};

/// zlib level the reference uses (`zlib.compress(text, level=9)`).
const ZLIB_LEVEL: u32 = 9;

/// Largest window [`SequenceListEncoder::encode_window`] considers; longer requests
/// are cut to their newest numbers first. Consecutive numbers compress about 3:1 at
/// best, so even this many could never fit 255 base91 chars.
pub const MAX_WINDOW_PROBE: u64 = 4096;

/// Largest decompressed list a listener accepts (a zip-bomb guard: 255 chars of
/// base91 hold ~224 bytes of zlib, which could otherwise inflate to ~230 kB).
pub const MAX_DECODED_LIST_BYTES: usize = 64 * 1024;

/// Why a sequence list could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SequenceListError {
    /// No numbers: the reference client crashes on an empty list (aodns.md §5).
    #[error("sequence list is empty")]
    Empty,
    /// Numbers must be strictly ascending.
    #[error("sequence list not ascending at item {index}: {value} after {previous}")]
    NotAscending {
        /// Position of the offending number.
        index: usize,
        /// The number before it.
        previous: u64,
        /// The offending number.
        value: u64,
    },
    /// The encoded list exceeds one TXT character-string.
    #[error("encoded sequence list is {chars} chars (max {max})")]
    TooLong {
        /// Encoded length.
        chars: usize,
        /// The limit, 255.
        max: usize,
    },
    /// zlib refused to compress (not expected with valid state).
    #[error("zlib compression failed")]
    Compress(#[source] flate2::CompressError),
    /// The TXT string is not base91.
    #[error("sequence list is not base91")]
    Base91(#[from] Base91Error),
    /// The decoded bytes are not a zlib stream.
    #[error("sequence list is not a valid zlib stream")]
    Inflate(#[source] flate2::DecompressError),
    /// The zlib stream stops before its end.
    #[error("zlib stream is truncated")]
    Truncated,
    /// Bytes follow the end of the zlib stream.
    #[error("{extra} bytes after the end of the zlib stream")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The list inflates beyond [`MAX_DECODED_LIST_BYTES`].
    #[error("decompressed sequence list exceeds {max} bytes")]
    DecodedTooLarge {
        /// The limit.
        max: usize,
    },
    /// An item is empty, holds a non-digit, or overflows a `u64`.
    #[error("item {index} of the sequence list is not a decimal number")]
    BadNumber {
        /// Position of the item.
        index: usize,
    },
}

/// A window of consecutive pack numbers as actually encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedSequenceList<'a> {
    /// The TXT string (at most 255 ASCII bytes).
    pub text: &'a str,
    /// Oldest number listed; later than requested when the window was shortened.
    pub oldest: u64,
    /// Newest number listed.
    pub newest: u64,
}

impl EncodedSequenceList<'_> {
    /// How many numbers the list holds.
    pub fn count(&self) -> u64 {
        self.newest - self.oldest + 1
    }
}

/// Encodes `sequence` lists, reusing its zlib state and buffers between calls.
pub struct SequenceListEncoder {
    deflate: Compress,
    /// The comma-joined decimal text.
    text: Vec<u8>,
    /// Its zlib stream.
    zlib: Vec<u8>,
    /// The base91 of `zlib`: the TXT string.
    encoded: String,
}

impl Default for SequenceListEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SequenceListEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceListEncoder")
            .finish_non_exhaustive()
    }
}

impl SequenceListEncoder {
    /// A new encoder with buffers sized for the reference window (75 numbers).
    pub fn new() -> Self {
        SequenceListEncoder {
            deflate: Compress::new(Compression::new(ZLIB_LEVEL), true),
            text: Vec::with_capacity(2048),
            zlib: Vec::with_capacity(512),
            encoded: String::with_capacity(MAX_TXT_STRING_BYTES + 64),
        }
    }

    /// Encodes the consecutive numbers `oldest..=newest` (the reference always
    /// publishes consecutive numbers, aodns.md §6).
    ///
    /// If the string would exceed 255 bytes the window is shortened from its oldest
    /// end, never broken: the result says which numbers it lists, and the caller
    /// should publish (or at least list) only those. A single number always fits.
    pub fn encode_window(
        &mut self,
        oldest: u64,
        newest: u64,
    ) -> Result<EncodedSequenceList<'_>, SequenceListError> {
        if oldest > newest {
            return Err(SequenceListError::Empty);
        }
        let wanted = (newest - oldest).saturating_add(1).min(MAX_WINDOW_PROBE);
        let count = if self.window_fits(newest, wanted)? {
            wanted
        } else {
            // Largest count that fits, by bisection: lengths grow with the count
            // (all but monotonically), and 1 always fits.
            let (mut fits, mut fails) = (1, wanted);
            while fails - fits > 1 {
                let mid = fits + (fails - fits) / 2;
                if self.window_fits(newest, mid)? {
                    fits = mid;
                } else {
                    fails = mid;
                }
            }
            if !self.window_fits(newest, fits)? {
                // Unreachable: 20 digits deflate to ~28 bytes, 37 base91 chars.
                return Err(SequenceListError::TooLong {
                    chars: self.encoded.len(),
                    max: MAX_TXT_STRING_BYTES,
                });
            }
            fits
        };
        Ok(EncodedSequenceList {
            text: &self.encoded,
            oldest: newest - (count - 1),
            newest,
        })
    }

    /// Encodes an arbitrary strictly ascending list, without shortening.
    pub fn encode_list(&mut self, numbers: &[u64]) -> Result<&str, SequenceListError> {
        let (&first, rest) = numbers.split_first().ok_or(SequenceListError::Empty)?;
        let mut previous = first;
        for (i, &value) in rest.iter().enumerate() {
            if value <= previous {
                return Err(SequenceListError::NotAscending {
                    index: i + 1,
                    previous,
                    value,
                });
            }
            previous = value;
        }
        self.text.clear();
        for (i, &n) in numbers.iter().enumerate() {
            if i > 0 {
                self.text.push(b',');
            }
            push_decimal(&mut self.text, n);
        }
        self.compress_and_encode()?;
        if self.encoded.len() > MAX_TXT_STRING_BYTES {
            return Err(SequenceListError::TooLong {
                chars: self.encoded.len(),
                max: MAX_TXT_STRING_BYTES,
            });
        }
        Ok(&self.encoded)
    }

    /// Encodes the `count` numbers ending at `newest` into `self.encoded` and says
    /// whether they fit one TXT string.
    fn window_fits(&mut self, newest: u64, count: u64) -> Result<bool, SequenceListError> {
        self.text.clear();
        for n in newest - (count - 1)..=newest {
            if n != newest - (count - 1) {
                self.text.push(b',');
            }
            push_decimal(&mut self.text, n);
        }
        self.compress_and_encode()?;
        Ok(self.encoded.len() <= MAX_TXT_STRING_BYTES)
    }

    /// `self.text` -> zlib -> base91 into `self.encoded`.
    fn compress_and_encode(&mut self) -> Result<(), SequenceListError> {
        self.deflate.reset();
        self.zlib.clear();
        loop {
            // deflate only writes into spare capacity; the stream never exceeds the
            // input by more than a few bytes per 16 kB block, plus 11 bytes of header.
            self.zlib.reserve(self.text.len() / 8 + 64);
            let consumed = usize::try_from(self.deflate.total_in()).unwrap_or(usize::MAX);
            let input = self.text.get(consumed..).unwrap_or_default();
            let status = self
                .deflate
                .compress_vec(input, &mut self.zlib, FlushCompress::Finish)
                .map_err(SequenceListError::Compress)?;
            if status == Status::StreamEnd {
                break;
            }
        }
        self.encoded.clear();
        base91::encode_append(&self.zlib, &mut self.encoded);
        Ok(())
    }
}

/// Decodes `sequence` TXT strings for a listener, reusing its buffers.
pub struct SequenceListDecoder {
    inflate: Decompress,
    /// The base91-decoded zlib stream.
    zlib: Vec<u8>,
    /// The inflated comma-joined text.
    text: Vec<u8>,
}

impl Default for SequenceListDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SequenceListDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceListDecoder")
            .finish_non_exhaustive()
    }
}

impl SequenceListDecoder {
    /// A new decoder.
    pub fn new() -> Self {
        SequenceListDecoder {
            inflate: Decompress::new(true),
            zlib: Vec::with_capacity(256),
            text: Vec::with_capacity(2048),
        }
    }

    /// Decodes one `sequence` TXT string into `out` (cleared first), in the order
    /// listed. Stricter than the reference client, which parses items with Python's
    /// `int()`: items here are plain ASCII digits.
    pub fn decode(&mut self, txt: &[u8], out: &mut Vec<u64>) -> Result<(), SequenceListError> {
        out.clear();
        self.zlib.clear();
        base91::decode_append(txt, &mut self.zlib)?;
        self.inflate_text()?;
        for (index, item) in self.text.split(|&b| b == b',').enumerate() {
            out.push(parse_decimal(item).ok_or(SequenceListError::BadNumber { index })?);
        }
        Ok(())
    }

    /// Inflates `self.zlib` into `self.text`, bounded by [`MAX_DECODED_LIST_BYTES`].
    fn inflate_text(&mut self) -> Result<(), SequenceListError> {
        self.inflate.reset(true);
        self.text.clear();
        loop {
            if self.text.len() == self.text.capacity() {
                if self.text.len() > MAX_DECODED_LIST_BYTES {
                    return Err(SequenceListError::DecodedTooLarge {
                        max: MAX_DECODED_LIST_BYTES,
                    });
                }
                // One byte past the limit tells "too large" from "exactly at it".
                let room = (MAX_DECODED_LIST_BYTES + 1 - self.text.len()).min(16 * 1024);
                self.text.reserve(room.max(1));
            }
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let consumed = usize::try_from(in_before).unwrap_or(usize::MAX);
            let input = self.zlib.get(consumed..).unwrap_or_default();
            let status = self
                .inflate
                .decompress_vec(input, &mut self.text, FlushDecompress::Finish)
                .map_err(SequenceListError::Inflate)?;
            if self.text.len() > MAX_DECODED_LIST_BYTES {
                return Err(SequenceListError::DecodedTooLarge {
                    max: MAX_DECODED_LIST_BYTES,
                });
            }
            if status == Status::StreamEnd {
                break;
            }
            let progressed =
                self.inflate.total_in() != in_before || self.inflate.total_out() != out_before;
            let has_room = self.text.len() < self.text.capacity();
            if !progressed && has_room {
                return Err(SequenceListError::Truncated);
            }
        }
        let consumed = usize::try_from(self.inflate.total_in()).unwrap_or(usize::MAX);
        if consumed < self.zlib.len() {
            return Err(SequenceListError::TrailingBytes {
                extra: self.zlib.len() - consumed,
            });
        }
        Ok(())
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Parses one or more ASCII digits into a `u64`.
fn parse_decimal(item: &[u8]) -> Option<u64> {
    if item.is_empty() {
        return None;
    }
    item.iter().try_fold(0u64, |acc, &d| {
        if d.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// aodns.md §5, produced by running the reference (CPython zlib + base91).
    const LIST_1000_1074: &str = "q:n*6okNXLGAAguOr~Z}kR8S<6vr;sE|fZh/Ci*)a|W4OGa)wIdMyuGR6Y1Z|k5xTz^/VJlM:5+R&YfOyjpx!cJ,@Iq5o#QT]Y?khm/xrR#*$I=ihxmR#*$I8l%xr!d;lJ`i58;S,*}TXkU}ngq]ks";

    #[test]
    fn encodes_the_sheet_vectors_byte_for_byte() {
        let mut enc = SequenceListEncoder::new();
        assert_eq!(enc.encode_list(&[0, 1, 2]).unwrap(), "q:yEDjaKjAlBYEtp");
        assert_eq!(unhex("78da33d031d431020002c200ec"), enc.zlib);
        assert_eq!(
            enc.encode_list(&[3, 4, 5, 6, 7]).unwrap(),
            "q:zxEjUKt]\"a|@AAhZ0WX"
        );
        assert_eq!(unhex("78da33d631d131d531d3310700089201ba"), enc.zlib);

        let list = enc.encode_window(1000, 1074).unwrap();
        assert_eq!((list.oldest, list.newest, list.count()), (1000, 1074, 75));
        assert_eq!(list.text, LIST_1000_1074);
        assert_eq!(list.text.len(), 150, "aodns.md §5: 150 chars");
        assert_eq!(enc.zlib.len(), 122, "aodns.md §5: 122 bytes of zlib");

        // §5: 75 numbers 999925..999999 take 163 chars.
        assert_eq!(enc.encode_window(999_925, 999_999).unwrap().text.len(), 163);
    }

    #[test]
    fn window_and_list_encodings_agree() {
        let mut enc = SequenceListEncoder::new();
        let numbers: Vec<u64> = (40..115).collect();
        let a = enc.encode_list(&numbers).unwrap().to_owned();
        let b = enc.encode_window(40, 114).unwrap().text.to_owned();
        assert_eq!(a, b);
    }

    #[test]
    fn decodes_what_it_encodes_and_the_sheet_vectors() {
        let mut dec = SequenceListDecoder::new();
        let mut out = vec![7];
        dec.decode(b"q:yEDjaKjAlBYEtp", &mut out).unwrap();
        assert_eq!(out, [0, 1, 2]);
        dec.decode(LIST_1000_1074.as_bytes(), &mut out).unwrap();
        assert_eq!(out, (1000..1075).collect::<Vec<_>>());

        let mut enc = SequenceListEncoder::new();
        for (oldest, newest) in [
            (0, 0),
            (0, 74),
            (u64::MAX - 5, u64::MAX),
            (123_456, 123_500),
        ] {
            let list = enc.encode_window(oldest, newest).unwrap();
            dec.decode(list.text.as_bytes(), &mut out).unwrap();
            assert_eq!(out, (list.oldest..=list.newest).collect::<Vec<_>>());
        }
    }

    #[test]
    fn shortens_long_windows_from_the_oldest_end_to_the_longest_that_fits() {
        let mut enc = SequenceListEncoder::new();
        let mut dec = SequenceListDecoder::new();
        let mut out = Vec::new();
        // 150 twenty-digit numbers cannot fit 255 chars.
        let newest = u64::MAX - 1000;
        let list = enc.encode_window(newest - 149, newest).unwrap();
        let (oldest, count, text) = (list.oldest, list.count(), list.text.to_owned());
        assert!(text.len() <= MAX_TXT_STRING_BYTES);
        assert_eq!(list.newest, newest);
        assert!(count < 150 && count > 10, "kept {count}");
        dec.decode(text.as_bytes(), &mut out).unwrap();
        assert_eq!(out, (oldest..=newest).collect::<Vec<_>>());
        // One more number does not fit (checked independently of the bisection).
        let longer: Vec<u64> = (oldest - 1..=newest).collect();
        assert!(matches!(
            enc.encode_list(&longer),
            Err(SequenceListError::TooLong { .. })
        ));
        // A huge request is cut to MAX_WINDOW_PROBE first and still succeeds.
        let list = enc.encode_window(0, u64::MAX).unwrap();
        assert_eq!(list.newest, u64::MAX);
        assert!(list.text.len() <= MAX_TXT_STRING_BYTES);
    }

    #[test]
    fn rejects_empty_and_unordered_lists() {
        let mut enc = SequenceListEncoder::new();
        assert!(matches!(
            enc.encode_window(5, 4),
            Err(SequenceListError::Empty)
        ));
        assert!(matches!(
            enc.encode_list(&[]),
            Err(SequenceListError::Empty)
        ));
        assert!(matches!(
            enc.encode_list(&[1, 3, 3]),
            Err(SequenceListError::NotAscending {
                index: 2,
                previous: 3,
                value: 3
            })
        ));
    }

    fn zlib9(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), Compression::new(9));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn b91(data: &[u8]) -> String {
        let mut s = String::new();
        base91::encode_append(data, &mut s);
        s
    }

    #[test]
    fn decoder_reports_each_kind_of_damage() {
        let mut dec = SequenceListDecoder::new();
        let mut out = Vec::new();
        let err = |dec: &mut SequenceListDecoder, txt: &[u8]| {
            dec.decode(txt, &mut Vec::new()).unwrap_err()
        };
        assert!(matches!(
            err(&mut dec, b"q:y'EDj"),
            SequenceListError::Base91(_)
        ));
        assert!(matches!(
            err(&mut dec, b"AAAA"),
            SequenceListError::Inflate(_)
        ));
        let good = zlib9(b"1,2,3");
        assert!(matches!(
            err(&mut dec, b91(&good[..good.len() - 3]).as_bytes()),
            SequenceListError::Truncated
        ));
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"xy");
        assert!(matches!(
            err(&mut dec, b91(&trailing).as_bytes()),
            SequenceListError::TrailingBytes { extra: 2 }
        ));
        for (text, index) in [
            (&b""[..], 0),
            (b"1,,2", 1),
            (b"1,2,", 2),
            (b"1, 2", 1),
            (b"18446744073709551616", 0),
        ] {
            match err(&mut dec, b91(&zlib9(text)).as_bytes()) {
                SequenceListError::BadNumber { index: i } => assert_eq!(i, index, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let bomb = zlib9(&vec![b'1'; MAX_DECODED_LIST_BYTES + 1]);
        assert!(matches!(
            err(&mut dec, b91(&bomb).as_bytes()),
            SequenceListError::DecodedTooLarge { .. }
        ));
        // Exactly at the limit is accepted: 3276 items of 19 ones, then 16 ones.
        let mut text = b"1".repeat(19);
        while text.len() < MAX_DECODED_LIST_BYTES {
            text.push(if text.len() % 20 == 19 { b',' } else { b'1' });
        }
        dec.decode(b91(&zlib9(&text)).as_bytes(), &mut out).unwrap();
        assert_eq!(out.len(), 3277);
        assert_eq!(out[0], 1_111_111_111_111_111_111);
        assert_eq!(out[3276], 1_111_111_111_111_111);
        // The decoder recovers after every error.
        dec.decode(b"q:yEDjaKjAlBYEtp", &mut out).unwrap();
        assert_eq!(out, [0, 1, 2]);
    }
}
