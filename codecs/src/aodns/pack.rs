//! Packs: Opus packets as `%03d'''<base91>` TXT strings, grouped under a byte limit
//! (aodns.md §3, §3.1), and the listener's parser for those strings.

use std::time::Duration;

use crate::base91::{self, Base91Error};
use crate::opus::FRAME_MS;

use super::MAX_TXT_STRING_BYTES;

/// Separator between a frame's index and its base91 text: three apostrophes, a
/// character absent from the base91 alphabet (aodns.md §3).
pub const FRAME_SEPARATOR: &str = "'''";

/// Digits of the zero-padded frame index (`%03d`).
const INDEX_DIGITS: usize = 3;

/// Bytes of a TXT string before the base91 text: 3 index digits and the separator.
pub const TXT_PREFIX_LEN: usize = INDEX_DIGITS + FRAME_SEPARATOR.len();

/// Most frames in one pack, so the index always takes exactly three digits. The
/// reference limits (2000 bytes, at least 2 chars per frame) never reach it; larger
/// custom limits could, and a fourth digit would break the per-string limit.
pub const MAX_FRAMES_PER_PACK: usize = 1000;

/// The two byte limits of the reference server (aodns.md §3, §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackLimits {
    max_string_bytes: usize,
    max_pack_bytes: usize,
}

impl Default for PackLimits {
    fn default() -> Self {
        Self::REFERENCE
    }
}

impl PackLimits {
    /// `--max-data-per-feed 250`, `--max-bytes-per-record 2000`.
    pub const REFERENCE: PackLimits = PackLimits {
        max_string_bytes: 250,
        max_pack_bytes: 2000,
    };

    /// Validates custom limits: a string must have room for the prefix and one
    /// base91 pair (8..=255 bytes); the pack limit must be at least 8 too.
    pub fn new(max_string_bytes: usize, max_pack_bytes: usize) -> Result<Self, PackError> {
        let min = TXT_PREFIX_LEN + 2;
        if !(min..=MAX_TXT_STRING_BYTES).contains(&max_string_bytes) || max_pack_bytes < min {
            return Err(PackError::InvalidLimits {
                max_string_bytes,
                max_pack_bytes,
            });
        }
        Ok(PackLimits {
            max_string_bytes,
            max_pack_bytes,
        })
    }

    /// Most bytes of one TXT string, prefix included (reference: 250).
    pub const fn max_string_bytes(&self) -> usize {
        self.max_string_bytes
    }

    /// Pack limit (reference: 2000). A frame joins the open pack while
    /// `base91 chars already in it + 6 + its base91 chars <= max_pack_bytes`.
    pub const fn max_pack_bytes(&self) -> usize {
        self.max_pack_bytes
    }

    /// Longest Opus packet that always fits one string, whatever its bytes:
    /// the largest `n` with `ceil(16 n / 13) <= max_string - 6`. 198 for the
    /// reference limits (244 base91 chars).
    pub const fn max_opus_packet_bytes(&self) -> usize {
        let string = if self.max_string_bytes < self.max_pack_bytes {
            self.max_string_bytes
        } else {
            self.max_pack_bytes
        };
        (string - TXT_PREFIX_LEN) * 13 / 16
    }
}

/// Why a frame could not be packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// An empty packet would be a lost frame to the listener's decoder.
    #[error("empty Opus packet")]
    EmptyFrame,
    /// The frame's string would exceed a limit (the reference server crashes here,
    /// aodns.md §3).
    #[error("{packet_bytes}-byte packet makes a {string_bytes}-byte TXT string (max {max})")]
    FrameTooLong {
        /// Size of the Opus packet.
        packet_bytes: usize,
        /// Size of its TXT string, prefix included.
        string_bytes: usize,
        /// The limit it broke.
        max: usize,
    },
    /// [`PackLimits::new`] got limits that cannot hold a frame.
    #[error("invalid pack limits: {max_string_bytes} per string, {max_pack_bytes} per pack")]
    InvalidLimits {
        /// Requested string limit.
        max_string_bytes: usize,
        /// Requested pack limit.
        max_pack_bytes: usize,
    },
}

/// One pack: the TXT strings of consecutive frames, index 000, 001, ... in order.
///
/// All strings live in one buffer; [`Pack::clear`] keeps its capacity so a pack
/// can be recycled through [`PackBuilder::push`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pack {
    /// The strings, back to back.
    text: String,
    /// `(start, end)` of each string in `text`.
    spans: Vec<(usize, usize)>,
    /// Sum of the base91 lengths (prefixes excluded): the reference's `len(pack)`.
    payload_chars: usize,
}

impl Pack {
    /// An empty pack.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty pack whose buffers already hold the largest pack `limits` allow,
    /// so filling it never allocates.
    pub fn with_capacity(limits: PackLimits) -> Self {
        // Worst case: 2-char frames (1-byte packets), whose 6-byte prefixes are
        // not counted against the limit: up to max_pack / 2 frames and 4x the
        // limit in text.
        let frames = (limits.max_pack_bytes / 2).min(MAX_FRAMES_PER_PACK);
        Pack {
            text: String::with_capacity(limits.max_pack_bytes * 4),
            spans: Vec::with_capacity(frames),
            payload_chars: 0,
        }
    }

    /// Frames (TXT strings) in the pack.
    pub fn frame_count(&self) -> usize {
        self.spans.len()
    }

    /// True when no frame has been added.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Sum of the frames' base91 lengths, prefixes excluded (aodns.md §3.1).
    pub fn payload_chars(&self) -> usize {
        self.payload_chars
    }

    /// Audio held: 60 ms per frame (aodns.md §8).
    pub fn audio_duration(&self) -> Duration {
        Duration::from_millis(u64::from(FRAME_MS) * self.spans.len() as u64)
    }

    /// The TXT string of frame `index`, e.g. ``001'''`~lW``.
    pub fn txt_string(&self, index: usize) -> Option<&str> {
        let &(start, end) = self.spans.get(index)?;
        self.text.get(start..end)
    }

    /// All TXT strings in index order: one TXT RR with one string each.
    pub fn txt_strings(&self) -> impl DoubleEndedIterator<Item = &str> + ExactSizeIterator + '_ {
        // Spans are char boundaries by construction (ASCII only).
        self.spans
            .iter()
            .map(|&(start, end)| &self.text[start..end])
    }

    /// Empties the pack, keeping its buffers.
    pub fn clear(&mut self) {
        self.text.clear();
        self.spans.clear();
        self.payload_chars = 0;
    }

    /// Appends a frame as the next index; the caller has checked the limits.
    fn append(&mut self, packet: &[u8], chars: usize) {
        let start = self.text.len();
        let index = self.spans.len();
        debug_assert!(index < MAX_FRAMES_PER_PACK);
        for divisor in [100, 10, 1] {
            self.text
                .push(char::from(b'0' + (index / divisor % 10) as u8));
        }
        self.text.push_str(FRAME_SEPARATOR);
        base91::encode_append(packet, &mut self.text);
        self.spans.push((start, self.text.len()));
        self.payload_chars += chars;
    }
}

/// What [`PackBuilder::push`] did with the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Pushed {
    /// Added to the open pack.
    Appended,
    /// The open pack was full: it was moved into the caller's `closed` pack (ready
    /// to publish) and the packet opened the next pack.
    ClosedPrevious,
}

/// Gathers Opus packets into packs exactly as the reference `DataPacker` does
/// (aodns.md §3.1): the open pack is never published; it closes when the next
/// frame does not fit.
#[derive(Debug, Clone)]
pub struct PackBuilder {
    limits: PackLimits,
    open: Pack,
}

impl PackBuilder {
    /// A builder with an empty open pack, its buffers sized for `limits`.
    pub fn new(limits: PackLimits) -> Self {
        PackBuilder {
            limits,
            open: Pack::with_capacity(limits),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> PackLimits {
        self.limits
    }

    /// The pack being filled (not yet publishable).
    pub fn open_pack(&self) -> &Pack {
        &self.open
    }

    /// Adds one Opus packet.
    ///
    /// When it does not fit the open pack, `closed` is cleared, receives the full
    /// pack, and its old buffers become the new open pack: pass a recycled pack
    /// (or one from [`Pack::with_capacity`]) and packing allocates nothing.
    pub fn push(&mut self, opus_packet: &[u8], closed: &mut Pack) -> Result<Pushed, PackError> {
        if opus_packet.is_empty() {
            return Err(PackError::EmptyFrame);
        }
        let chars = base91::encoded_len(opus_packet);
        let string_bytes = TXT_PREFIX_LEN + chars;
        let max = self.limits.max_string_bytes.min(self.limits.max_pack_bytes);
        if string_bytes > max {
            return Err(PackError::FrameTooLong {
                packet_bytes: opus_packet.len(),
                string_bytes,
                max,
            });
        }
        let full = self.open.payload_chars + string_bytes > self.limits.max_pack_bytes
            || self.open.frame_count() >= MAX_FRAMES_PER_PACK;
        let outcome = if full {
            closed.clear();
            std::mem::swap(&mut self.open, closed);
            Pushed::ClosedPrevious
        } else {
            Pushed::Appended
        };
        self.open.append(opus_packet, chars);
        Ok(outcome)
    }

    /// Moves the open pack, even if not full, into `out` (for a broadcast that
    /// ends; the reference never publishes it).
    pub fn take_open(&mut self, out: &mut Pack) {
        out.clear();
        std::mem::swap(&mut self.open, out);
    }
}

/// Why a TXT string is not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxtParseError {
    /// No `'''` in the string.
    #[error("no ''' separator")]
    NoSeparator,
    /// A second `'''`: the reference client's split would give three parts.
    #[error("more than one ''' separator")]
    ExtraSeparator,
    /// The index is empty, not decimal, or longer than 9 digits.
    #[error("frame index is not a decimal number")]
    BadIndex,
    /// The frame text is not base91.
    #[error("frame text is not base91")]
    Base91(#[from] Base91Error),
}

/// One TXT string split into its index and base91 text (not yet decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxtFrame<'a> {
    /// Position of the frame in its pack.
    pub index: u32,
    /// The base91 text of the Opus packet.
    pub base91: &'a [u8],
}

/// Splits one TXT string `<index>'''<base91>` (aodns.md §3). Like the reference
/// client it accepts any number of index digits (up to 9 here), and it rejects a
/// second separator.
pub fn parse_txt_string(txt: &[u8]) -> Result<TxtFrame<'_>, TxtParseError> {
    let sep = FRAME_SEPARATOR.as_bytes();
    let at = txt
        .windows(sep.len())
        .position(|w| w == sep)
        .ok_or(TxtParseError::NoSeparator)?;
    let (digits, rest) = txt.split_at(at);
    let text = &rest[sep.len()..];
    if text.windows(sep.len()).any(|w| w == sep) {
        return Err(TxtParseError::ExtraSeparator);
    }
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(TxtParseError::BadIndex);
    }
    let index = digits
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    Ok(TxtFrame {
        index,
        base91: text,
    })
}

/// Reassembles a pack from its TXT strings on the listener side (aodns.md §10):
/// strings may arrive in any RR order; frames are played sorted by index.
#[derive(Debug, Clone, Default)]
pub struct PackReader {
    /// `(index, start, end)` of each decoded packet in `bytes`.
    frames: Vec<(u32, usize, usize)>,
    /// Decoded Opus packets, back to back.
    bytes: Vec<u8>,
}

impl PackReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets all frames, keeping the buffers.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes.clear();
    }

    /// Frames read so far.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Parses one TXT string and decodes its packet; returns the frame's index. A
    /// string that fails leaves the reader unchanged.
    pub fn push_txt(&mut self, txt: &[u8]) -> Result<u32, TxtParseError> {
        let frame = parse_txt_string(txt)?;
        let start = self.bytes.len();
        base91::decode_append(frame.base91, &mut self.bytes)?;
        self.frames.push((frame.index, start, self.bytes.len()));
        Ok(frame.index)
    }

    /// The Opus packets sorted by index (stable: duplicates keep arrival order, as
    /// the reference client's sort does).
    pub fn sorted_frames(&mut self) -> impl ExactSizeIterator<Item = (u32, &[u8])> + '_ {
        self.frames.sort_by_key(|&(index, _, _)| index);
        let bytes = &self.bytes;
        self.frames
            .iter()
            .map(move |&(index, start, end)| (index, &bytes[start..end]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_strings_as_the_sheet_shows() {
        // aodns.md §11 table, and the libopus silence packet as frame 0.
        let mut builder = PackBuilder::new(PackLimits::REFERENCE);
        let mut closed = Pack::new();
        let silence = [
            0x58, 0x02, 0xf9, 0x30, 0x4d, 0xbb, 0x0d, 0xe5, 0xe3, 0x92, 0x09, 0x89, 0x38, 0xeb,
            0xca, 0xe1, 0xb1, 0xd1, 0xdd, 0x85,
        ];
        for packet in [&silence[..], &[0xf8, 0xff, 0xfe], b"Hello"] {
            assert_eq!(builder.push(packet, &mut closed), Ok(Pushed::Appended));
        }
        let open = builder.open_pack();
        let strings: Vec<&str> = open.txt_strings().collect();
        assert_eq!(
            strings,
            [
                "000'''2G[Va2X=Z`za9L@T%egqp5AhI",
                "001'''`~lW",
                "002'''>OwJh>A"
            ]
        );
        assert_eq!(open.txt_string(1), Some("001'''`~lW"));
        assert_eq!(open.txt_string(3), None);
        assert_eq!(open.payload_chars(), 25 + 4 + 7);
        assert_eq!(open.audio_duration(), Duration::from_millis(180));
    }

    #[test]
    fn closes_packs_with_the_reference_test() {
        // §3.1: a pack closes when chars_in_pack + 6 + len(new) > 2000. With
        // 26-char frames (libopus silence) that is 76 frames, as measured.
        let frame = [0x5au8; 20];
        assert_eq!(base91::encoded_len(&frame), 25);
        let frame26 = [0xa5u8; 21];
        assert_eq!(base91::encoded_len(&frame26), 26);
        let mut builder = PackBuilder::new(PackLimits::REFERENCE);
        let mut closed = Pack::new();
        let mut pushes = 0;
        while builder.push(&frame26, &mut closed) == Ok(Pushed::Appended) {
            pushes += 1;
        }
        assert_eq!(pushes, 76);
        assert_eq!(closed.frame_count(), 76);
        assert_eq!(closed.payload_chars(), 76 * 26);
        assert_eq!(closed.txt_string(75).map(|s| &s[..6]), Some("075'''"));
        assert_eq!(builder.open_pack().frame_count(), 1);
        assert_eq!(
            builder.open_pack().txt_string(0).map(|s| &s[..6]),
            Some("000'''")
        );
        // Boundary: 1974 chars held; 1974 + 6 + 20 = 2000 fits, 21 does not.
        let mut b = PackBuilder::new(PackLimits::REFERENCE);
        for _ in 0..75 {
            assert_eq!(b.push(&frame26, &mut closed), Ok(Pushed::Appended));
        }
        assert_eq!(base91::encoded_len(&[0xffu8; 19]), 24);
        assert_eq!(b.push(&[0xffu8; 19], &mut closed), Ok(Pushed::Appended));
        assert_eq!(b.open_pack().payload_chars(), 1974);
        assert_eq!(base91::encoded_len(&[0xffu8; 16]), 20);
        let mut probe = b.clone();
        assert_eq!(probe.push(&[0xffu8; 16], &mut closed), Ok(Pushed::Appended));
        assert_eq!(base91::encoded_len(&[0xffu8; 17]), 21);
        assert_eq!(
            b.push(&[0xffu8; 17], &mut closed),
            Ok(Pushed::ClosedPrevious)
        );
    }

    #[test]
    fn recycles_the_closed_pack_buffers() {
        let mut builder = PackBuilder::new(PackLimits::REFERENCE);
        let mut closed = Pack::new();
        let packet = [0x33u8; 150];
        let mut closes = 0;
        for _ in 0..200 {
            if builder.push(&packet, &mut closed).unwrap() == Pushed::ClosedPrevious {
                closes += 1;
                // 150 bytes -> 185 chars; 1990 / 191 -> 10 frames per pack.
                assert_eq!(closed.frame_count(), 10);
            }
        }
        assert_eq!(closes, 19);
        let mut rest = Pack::new();
        builder.take_open(&mut rest);
        assert_eq!(rest.frame_count(), 10);
        assert!(builder.open_pack().is_empty());
    }

    #[test]
    fn a_pack_with_capacity_never_reallocates() {
        // 1-byte packets are the worst case for the prefix overhead.
        let mut builder = PackBuilder::new(PackLimits::REFERENCE);
        let (text_ptr, text_cap) = (builder.open.text.as_ptr(), builder.open.text.capacity());
        let spans_cap = builder.open.spans.capacity();
        let mut closed = Pack::with_capacity(PackLimits::REFERENCE);
        while builder.push(&[7], &mut closed) == Ok(Pushed::Appended) {}
        assert_eq!(
            closed.frame_count(),
            997,
            "(2000 - 6) / 2 frames of 2 chars"
        );
        assert_eq!(closed.text.as_ptr(), text_ptr);
        assert_eq!(closed.text.capacity(), text_cap);
        assert_eq!(closed.spans.capacity(), spans_cap);
    }

    #[test]
    fn rejects_empty_and_oversize_frames() {
        let mut builder = PackBuilder::new(PackLimits::REFERENCE);
        let mut closed = Pack::new();
        assert_eq!(builder.push(&[], &mut closed), Err(PackError::EmptyFrame));
        let max = PackLimits::REFERENCE.max_opus_packet_bytes();
        assert_eq!(max, 198);
        assert_eq!(
            builder.push(&[0xff; 198], &mut closed),
            Ok(Pushed::Appended)
        );
        assert_eq!(builder.open_pack().txt_string(0).map(str::len), Some(250));
        assert_eq!(
            builder.push(&[0xff; 199], &mut closed),
            Err(PackError::FrameTooLong {
                packet_bytes: 199,
                string_bytes: 251,
                max: 250
            })
        );
        // Near the sheet's crash case, a 257-char frame (aodns.md §3).
        assert!(matches!(
            builder.push(&[0xff; 208], &mut closed),
            Err(PackError::FrameTooLong {
                string_bytes: 262,
                ..
            })
        ));
        assert_eq!(
            builder.open_pack().frame_count(),
            1,
            "failed pushes change nothing"
        );
    }

    #[test]
    fn validates_limits() {
        assert!(PackLimits::new(250, 2000).is_ok());
        assert_eq!(PackLimits::new(250, 2000).unwrap(), PackLimits::REFERENCE);
        assert!(PackLimits::new(255, 8).is_ok());
        assert!(PackLimits::new(256, 2000).is_err());
        assert!(PackLimits::new(7, 2000).is_err());
        assert!(PackLimits::new(250, 7).is_err());
        assert_eq!(
            PackLimits::new(255, 4000).unwrap().max_opus_packet_bytes(),
            202
        );
        assert_eq!(
            PackLimits::new(250, 30).unwrap().max_opus_packet_bytes(),
            19
        );
    }

    #[test]
    fn caps_a_pack_at_1000_frames() {
        let limits = PackLimits::new(250, 100_000).unwrap();
        let mut builder = PackBuilder::new(limits);
        let mut closed = Pack::new();
        for _ in 0..MAX_FRAMES_PER_PACK {
            assert_eq!(builder.push(&[1], &mut closed), Ok(Pushed::Appended));
        }
        assert_eq!(
            builder.open_pack().txt_string(999).map(|s| &s[..6]),
            Some("999'''")
        );
        assert_eq!(builder.push(&[1], &mut closed), Ok(Pushed::ClosedPrevious));
        assert_eq!(closed.frame_count(), MAX_FRAMES_PER_PACK);
    }

    #[test]
    fn parses_strings_like_the_reference_client() {
        assert_eq!(
            parse_txt_string(b"001'''`~lW"),
            Ok(TxtFrame {
                index: 1,
                base91: b"`~lW"
            })
        );
        assert_eq!(parse_txt_string(b"1234'''AA").map(|f| f.index), Ok(1234));
        assert_eq!(
            parse_txt_string(b"000'''"),
            Ok(TxtFrame {
                index: 0,
                base91: b""
            })
        );
        assert_eq!(
            parse_txt_string(b"000''AA"),
            Err(TxtParseError::NoSeparator)
        );
        assert_eq!(
            parse_txt_string(b"000''''''AA"),
            Err(TxtParseError::ExtraSeparator)
        );
        assert_eq!(
            parse_txt_string(b"0'''A'''A"),
            Err(TxtParseError::ExtraSeparator)
        );
        assert_eq!(parse_txt_string(b"'''AA"), Err(TxtParseError::BadIndex));
        assert_eq!(parse_txt_string(b"-1'''AA"), Err(TxtParseError::BadIndex));
        assert_eq!(
            parse_txt_string(b"1234567890'''AA"),
            Err(TxtParseError::BadIndex)
        );
        // Four apostrophes: the split leaves "'AA", which is not base91.
        let mut reader = PackReader::new();
        assert!(matches!(
            reader.push_txt(b"000''''AA"),
            Err(TxtParseError::Base91(Base91Error::InvalidChar {
                byte: b'\'',
                offset: 0
            }))
        ));
        assert_eq!(reader.frame_count(), 0);
    }

    #[test]
    fn reader_sorts_shuffled_rrs_and_round_trips_the_builder() {
        let mut builder = PackBuilder::new(PackLimits::REFERENCE);
        let mut closed = Pack::new();
        // 16 packets of 60..=180 bytes: about 2400 base91 chars, so two packs.
        let packets: Vec<Vec<u8>> = (0..16u8)
            .map(|i| {
                (0..(60 + 8 * usize::from(i)))
                    .map(|j| (j as u8) ^ i)
                    .collect()
            })
            .collect();
        let mut seen = Vec::new();
        for p in &packets {
            if builder.push(p, &mut closed).unwrap() == Pushed::ClosedPrevious {
                seen.push(closed.clone());
            }
        }
        let mut last = Pack::new();
        builder.take_open(&mut last);
        seen.push(last);
        let mut reader = PackReader::new();
        let mut all = Vec::new();
        for pack in &seen {
            reader.clear();
            // Reverse order, as a shuffling resolver might deliver them.
            for s in pack.txt_strings().rev() {
                reader.push_txt(s.as_bytes()).unwrap();
            }
            let indices: Vec<u32> = reader.sorted_frames().map(|(i, _)| i).collect();
            assert_eq!(indices, (0..pack.frame_count() as u32).collect::<Vec<_>>());
            all.extend(reader.sorted_frames().map(|(_, f)| f.to_vec()));
        }
        assert!(seen.len() > 1, "the test spans several packs");
        assert_eq!(all, packets);
    }
}
