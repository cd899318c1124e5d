//! The RTJam datagram: 28-byte big-endian header, then two non-interleaved channels
//! of 16-bit offset-binary samples (rtjam.md §2).
//!
//! Decoding is zero-copy: [`JamPacket::parse`] checks a received datagram and returns a
//! view with sample accessors, so the media path decodes straight into its own buffers.
//! Encoding writes into a caller-owned buffer ([`write_packet`], [`JamHeader::write_to`]).
//! Sample scaling reproduces rtjam bit for bit: encode with 32766, decode with 32768.

use crate::rate::SampleRate;

/// Length of the fixed header (rtjam.md §2).
pub const HEADER_LEN: usize = 28;
/// Largest datagram rtjam's server receives (its 1024-byte receive buffer, rtjam.md §1).
///
/// Drivers should receive into a buffer of at least `MAX_DATAGRAM_LEN + 1` bytes so an
/// oversized datagram is reported as [`ParseError::TooLong`] instead of being truncated.
pub const MAX_DATAGRAM_LEN: usize = 1024;
/// Most frames per channel a valid datagram can carry: (1024 − 28) / 4 = 249.
pub const MAX_FRAMES: usize = (MAX_DATAGRAM_LEN - HEADER_LEN) / BYTES_PER_FRAME;
/// Frames per channel in the stock client's packets (one 128-frame audio callback).
pub const STANDARD_FRAMES: usize = 128;
/// Length of a standard 128-frame packet: 28 + 512 = 540 bytes.
pub const STANDARD_PACKET_LEN: usize = HEADER_LEN + STANDARD_FRAMES * BYTES_PER_FRAME;
/// Bytes per frame on the wire: two channels of 16 bits.
pub const BYTES_PER_FRAME: usize = 4;
/// The wire word rtjam's encoder produces for 0.0 (not 0x8000: the scales differ).
pub const SILENCE_WORD: u16 = 0x7FFE;
/// Sample rate every RTJam stream runs at (fixed by convention, not carried on the wire).
pub const SAMPLE_RATE: SampleRate = SampleRate::HZ_48000;
/// Default UDP port of the broadcast server (rtjam.md §1).
pub const DEFAULT_SERVER_PORT: u16 = 7891;
/// UDP port the stock sound client binds (rtjam.md §1).
pub const STOCK_CLIENT_PORT: u16 = 9991;
/// Encoder scale: `(x + 1) * 32766`, truncated (rtjam.md §2).
pub const ENCODE_SCALE: f32 = 32766.0;
/// Decoder scale: `n / 32768 - 1` (rtjam.md §2).
pub const DECODE_SCALE: f32 = 32768.0;
/// client_id rtjam uses to mark an empty slot in its tables; never assign it (rtjam.md §3).
pub const CLIENT_ID_EMPTY_SLOT: u32 = 40_000;
/// client_id of the rtjam server's recording playback stream (rtjam.md §3).
pub const CLIENT_ID_SERVER_PLAYBACK: u32 = 40_001;
/// client_id of the rtjam server's room-mix stream in "mix" mode (rtjam.md §3, §4).
pub const CLIENT_ID_ROOM_MIX: u32 = 40_002;
/// client_id the stock client uses before it has joined a room (rtjam.md §3).
pub const CLIENT_ID_PLACEHOLDER: u32 = 4_321;

/// Why a received datagram is not a jam packet. The real server and client drop all
/// of these silently; we count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Shorter than the 28-byte header.
    #[error("jam datagram of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort {
        /// Datagram length.
        len: usize,
    },
    /// Longer than the 1024 bytes rtjam can receive.
    #[error("jam datagram of {len} bytes exceeds the {max}-byte maximum")]
    TooLong {
        /// Datagram length.
        len: usize,
        /// The limit, [`MAX_DATAGRAM_LEN`].
        max: usize,
    },
    /// Odd length: rtjam's validity rule requires an even number of bytes.
    #[error("jam datagram length {len} is odd")]
    OddLength {
        /// Datagram length.
        len: usize,
    },
    /// Even length, but the audio part is not a whole number of 4-byte frames, so no
    /// real sender produced it. rtjam would ignore the stray 2 bytes; we reject it.
    #[error(
        "jam datagram of {len} bytes has {audio_bytes} audio bytes, not a whole number of frames"
    )]
    RaggedAudio {
        /// Datagram length.
        len: usize,
        /// Bytes after the header.
        audio_bytes: usize,
    },
}

/// A caller-supplied buffer or slice does not fit the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BufferError {
    /// The output buffer is too small.
    #[error("buffer of {available} too small, {needed} needed")]
    TooSmall {
        /// Bytes (encoding) or samples (decoding) required.
        needed: usize,
        /// Bytes or samples provided.
        available: usize,
    },
    /// The two channels to encode have different lengths.
    #[error("channel lengths differ: ch1 {ch1}, ch2 {ch2}")]
    ChannelLengthMismatch {
        /// Samples in channel 1.
        ch1: usize,
        /// Samples in channel 2.
        ch2: usize,
    },
    /// More frames than fit in one datagram.
    #[error("{frames} frames exceed the {max}-frame maximum of one jam datagram")]
    TooManyFrames {
        /// Frames requested.
        frames: usize,
        /// The limit, [`MAX_FRAMES`].
        max: usize,
    },
}

/// One of the two audio channels every jam packet carries (rtjam.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JamChannel {
    /// Channel 1 (the stock client's first input; a caller's voice in telepatch).
    Ch1,
    /// Channel 2.
    Ch2,
}

impl JamChannel {
    /// Both channels in wire order.
    pub const BOTH: [JamChannel; 2] = [JamChannel::Ch1, JamChannel::Ch2];

    /// 0 for channel 1, 1 for channel 2.
    pub const fn index(self) -> usize {
        match self {
            JamChannel::Ch1 => 0,
            JamChannel::Ch2 => 1,
        }
    }
}

/// Encodes one sample exactly as rtjam does: `x + 1`, clamped to `[0, 2]`, times
/// 32766, truncated (rtjam.md §2). −1.0 ↦ 0x0000, 0.0 ↦ 0x7FFE, +1.0 ↦ 0xFFFC;
/// anything beyond ±1 clips to those ends.
///
/// NaN encodes as [`SILENCE_WORD`]. (rtjam's float-to-int cast would turn NaN into
/// 0x0000, a full-scale negative click; silence is the deliberate deviation.)
pub fn encode_sample(x: f32) -> u16 {
    // Same f32 operations in the same order as rtjam, so results are bit-identical.
    // clamp() passes NaN through, like rtjam's two comparisons.
    let s = (x + 1.0).clamp(0.0, 2.0);
    if s.is_nan() {
        return SILENCE_WORD;
    }
    // s * 32766 lies in [0, 65532]: the cast only truncates the fraction.
    (s * ENCODE_SCALE) as u16
}

/// Decodes one wire word exactly as rtjam does: `n / 32768 − 1` (rtjam.md §2).
/// Exact in f32: every result is a multiple of 2^−15 in [−1, 1).
pub fn decode_sample(n: u16) -> f32 {
    f32::from(n) / DECODE_SCALE - 1.0
}

/// Datagram length for `frames` frames per channel: `28 + 4·frames`.
pub const fn encoded_len(frames: usize) -> usize {
    HEADER_LEN + frames * BYTES_PER_FRAME
}

/// The 28-byte header (rtjam.md §2). All integers big-endian on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct JamHeader {
    /// Offset 0: reserved "room/channel" byte, 0 in practice, never interpreted.
    pub channel: u8,
    /// Offset 1: unused, 0 from the stock client.
    pub sample_rate: u8,
    /// Offset 2: floor(datagram length / 32), see [`JamHeader::chunks_for_len`]. Only
    /// rtjam's recorder reads it; the server's echo keeps the sender's value.
    pub num_audio_chunks: u8,
    /// Offset 3: metronome beat 0..=3, written by the server (rtjam.md §6).
    pub beat: u8,
    /// Offset 4: server clock in µs since the Unix epoch, written by the server; clients
    /// echo the latest value they received (rtjam.md §5). An opaque token to echo.
    pub server_time: u64,
    /// Offset 12: sender's clock in µs since the Unix epoch at send time; unused by rtjam.
    pub client_time: u64,
    /// Offset 20: the sender's jammer identity (rtjam.md §3).
    pub client_id: u32,
    /// Offset 24: per-sender packet counter, from 0 at join, +1 per packet, wrapping.
    pub sequence: u32,
}

impl JamHeader {
    /// The `num_audio_chunks` value rtjam's encoder writes for a datagram of `len`
    /// bytes: floor(len / 32), saturating at 255 (540 bytes → 16).
    pub const fn chunks_for_len(len: usize) -> u8 {
        let chunks = len / 32;
        if chunks > u8::MAX as usize {
            u8::MAX
        } else {
            chunks as u8
        }
    }

    /// Reads the header from the first 28 bytes of `bytes` (further bytes are ignored;
    /// use [`JamPacket::parse`] to validate a whole datagram).
    pub fn parse(bytes: &[u8]) -> Result<JamHeader, ParseError> {
        let Some(h) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(ParseError::TooShort { len: bytes.len() });
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let u32_at = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        Ok(JamHeader {
            channel: h[0],
            sample_rate: h[1],
            num_audio_chunks: h[2],
            beat: h[3],
            server_time: u64_at(4),
            client_time: u64_at(12),
            client_id: u32_at(20),
            sequence: u32_at(24),
        })
    }

    /// Writes the 28 header bytes at the start of `out`; returns 28. Writing only the
    /// header produces the server's header-only echo (rtjam.md §2 V2, §4).
    pub fn write_to(&self, out: &mut [u8]) -> Result<usize, BufferError> {
        let Some(h) = out.first_chunk_mut::<HEADER_LEN>() else {
            return Err(BufferError::TooSmall {
                needed: HEADER_LEN,
                available: out.len(),
            });
        };
        h[0] = self.channel;
        h[1] = self.sample_rate;
        h[2] = self.num_audio_chunks;
        h[3] = self.beat;
        h[4..12].copy_from_slice(&self.server_time.to_be_bytes());
        h[12..20].copy_from_slice(&self.client_time.to_be_bytes());
        h[20..24].copy_from_slice(&self.client_id.to_be_bytes());
        h[24..28].copy_from_slice(&self.sequence.to_be_bytes());
        Ok(HEADER_LEN)
    }
}

/// Checks a received datagram against the validity rules and returns its frame count
/// (rtjam.md §2: at least 28 bytes, even; plus our limits: at most 1024 bytes and a
/// whole number of frames). A 28-byte datagram is valid and carries no audio.
pub fn check(datagram: &[u8]) -> Result<usize, ParseError> {
    let len = datagram.len();
    if len < HEADER_LEN {
        return Err(ParseError::TooShort { len });
    }
    if len > MAX_DATAGRAM_LEN {
        return Err(ParseError::TooLong {
            len,
            max: MAX_DATAGRAM_LEN,
        });
    }
    if !len.is_multiple_of(2) {
        return Err(ParseError::OddLength { len });
    }
    let audio_bytes = len - HEADER_LEN;
    if !audio_bytes.is_multiple_of(BYTES_PER_FRAME) {
        return Err(ParseError::RaggedAudio { len, audio_bytes });
    }
    Ok(audio_bytes / BYTES_PER_FRAME)
}

/// Overwrites the two fields the server stamps on every packet it forwards:
/// `server_time` and `beat` (rtjam.md §4 step 2). Needs at least the header.
pub fn stamp_server_fields(
    datagram: &mut [u8],
    server_time: u64,
    beat: u8,
) -> Result<(), ParseError> {
    let len = datagram.len();
    let Some(h) = datagram.first_chunk_mut::<HEADER_LEN>() else {
        return Err(ParseError::TooShort { len });
    };
    h[3] = beat;
    h[4..12].copy_from_slice(&server_time.to_be_bytes());
    Ok(())
}

/// A validated jam datagram, borrowed: header fields parsed, samples decoded on access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JamPacket<'a> {
    header: JamHeader,
    datagram: &'a [u8],
    frames: usize,
}

impl<'a> JamPacket<'a> {
    /// Validates `datagram` ([`check`]) and parses its header.
    pub fn parse(datagram: &'a [u8]) -> Result<JamPacket<'a>, ParseError> {
        let frames = check(datagram)?;
        let header = JamHeader::parse(datagram)?;
        Ok(JamPacket {
            header,
            datagram,
            frames,
        })
    }

    /// The header.
    pub fn header(&self) -> &JamHeader {
        &self.header
    }

    /// Frames per channel, (length − 28) / 4.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// True for a 28-byte datagram (such as the server's echo to a sender).
    pub fn is_header_only(&self) -> bool {
        self.frames == 0
    }

    /// The whole datagram.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.datagram
    }

    /// The wire bytes of one channel: `2·frames` bytes.
    pub fn channel_bytes(&self, channel: JamChannel) -> &'a [u8] {
        let start = HEADER_LEN + channel.index() * 2 * self.frames;
        // In range by construction: check() proved len == 28 + 4·frames.
        self.datagram
            .get(start..start + 2 * self.frames)
            .unwrap_or(&[])
    }

    /// Raw wire word `index` of `channel`, or `None` past the end.
    pub fn word(&self, channel: JamChannel, index: usize) -> Option<u16> {
        let b = self.channel_bytes(channel);
        let at = index.checked_mul(2)?;
        Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
    }

    /// Decoded sample `index` of `channel`, or `None` past the end.
    pub fn sample(&self, channel: JamChannel, index: usize) -> Option<f32> {
        self.word(channel, index).map(decode_sample)
    }

    /// The raw wire words of one channel.
    pub fn words(&self, channel: JamChannel) -> impl ExactSizeIterator<Item = u16> + 'a {
        self.channel_bytes(channel)
            .chunks_exact(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
    }

    /// The decoded samples of one channel.
    pub fn samples(&self, channel: JamChannel) -> impl ExactSizeIterator<Item = f32> + 'a {
        self.words(channel).map(decode_sample)
    }

    /// Decodes one channel into the start of `out`; returns the number of samples
    /// written (= [`frames`](Self::frames)). Fails if `out` is shorter.
    pub fn decode_channel_into(
        &self,
        channel: JamChannel,
        out: &mut [f32],
    ) -> Result<usize, BufferError> {
        let Some(dst) = out.get_mut(..self.frames) else {
            return Err(BufferError::TooSmall {
                needed: self.frames,
                available: out.len(),
            });
        };
        for (d, s) in dst.iter_mut().zip(self.samples(channel)) {
            *d = s;
        }
        Ok(self.frames)
    }

    /// Decodes both channels; returns the number of frames written to each.
    pub fn decode_into(&self, ch1: &mut [f32], ch2: &mut [f32]) -> Result<usize, BufferError> {
        self.decode_channel_into(JamChannel::Ch1, ch1)?;
        self.decode_channel_into(JamChannel::Ch2, ch2)
    }
}

fn check_frames(ch1: usize, ch2: usize, out: usize) -> Result<usize, BufferError> {
    if ch1 != ch2 {
        return Err(BufferError::ChannelLengthMismatch { ch1, ch2 });
    }
    if ch1 > MAX_FRAMES {
        return Err(BufferError::TooManyFrames {
            frames: ch1,
            max: MAX_FRAMES,
        });
    }
    let needed = encoded_len(ch1);
    if out < needed {
        return Err(BufferError::TooSmall {
            needed,
            available: out,
        });
    }
    Ok(needed)
}

/// Encodes a packet into `out`: the header exactly as given, then channel 1, then
/// channel 2 ([`encode_sample`]). Returns the datagram length, `28 + 4·frames`.
///
/// The header is written verbatim; a sender sets `num_audio_chunks` with
/// [`JamHeader::chunks_for_len`] (or uses [`JamSender`](super::JamSender), which does).
pub fn write_packet(
    header: &JamHeader,
    ch1: &[f32],
    ch2: &[f32],
    out: &mut [u8],
) -> Result<usize, BufferError> {
    let len = check_frames(ch1.len(), ch2.len(), out.len())?;
    header.write_to(out)?;
    let audio = &mut out[HEADER_LEN..len];
    let (a1, a2) = audio.split_at_mut(2 * ch1.len());
    for (dst, &x) in a1.chunks_exact_mut(2).zip(ch1) {
        dst.copy_from_slice(&encode_sample(x).to_be_bytes());
    }
    for (dst, &x) in a2.chunks_exact_mut(2).zip(ch2) {
        dst.copy_from_slice(&encode_sample(x).to_be_bytes());
    }
    Ok(len)
}

/// Like [`write_packet`] but with samples already in wire form (offset binary), so
/// re-encoding a received packet reproduces its bytes exactly.
pub fn write_packet_words(
    header: &JamHeader,
    ch1: &[u16],
    ch2: &[u16],
    out: &mut [u8],
) -> Result<usize, BufferError> {
    let len = check_frames(ch1.len(), ch2.len(), out.len())?;
    header.write_to(out)?;
    let audio = &mut out[HEADER_LEN..len];
    let (a1, a2) = audio.split_at_mut(2 * ch1.len());
    for (dst, &w) in a1.chunks_exact_mut(2).zip(ch1) {
        dst.copy_from_slice(&w.to_be_bytes());
    }
    for (dst, &w) in a2.chunks_exact_mut(2).zip(ch2) {
        dst.copy_from_slice(&w.to_be_bytes());
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// rtjam.md §2 V1.
    const V1: &str =
        "0000010000060a241820224000060a2418202848000003e9000000077ffebffd3ffffffc00009ffd7ffe5ffe";
    /// rtjam.md §2 V2.
    const V2: &str = "0000010200060a241820301800060a2418202848000003e900000007";
    /// rtjam.md §2 V3 header.
    const V3_HEADER: &str = "0000100000000000000000000000000000000000000003e900000000";

    fn v1_header() -> JamHeader {
        JamHeader {
            channel: 0,
            sample_rate: 0,
            num_audio_chunks: 1,
            beat: 0,
            server_time: 1_700_000_000_123_456,
            client_time: 1_700_000_000_125_000,
            client_id: 1001,
            sequence: 7,
        }
    }

    #[test]
    fn v1_encodes_byte_for_byte() {
        let ch1 = [0.0, 0.5, -0.5, 1.0];
        let ch2 = [-1.0, 0.25, 0.0, -0.25];
        let mut out = [0u8; 64];
        let header = v1_header();
        assert_eq!(header.num_audio_chunks, JamHeader::chunks_for_len(44));
        let n = write_packet(&header, &ch1, &ch2, &mut out).unwrap();
        assert_eq!(n, 44);
        assert_eq!(&out[..n], hex(V1).as_slice());
    }

    #[test]
    fn v1_decodes_to_the_sheet_values() {
        let bytes = hex(V1);
        let p = JamPacket::parse(&bytes).unwrap();
        assert_eq!(*p.header(), v1_header());
        assert_eq!(p.header().server_time, 0x0006_0A24_1820_2240);
        assert_eq!(p.header().client_time, 0x0006_0A24_1820_2848);
        assert_eq!(p.frames(), 4);
        let mut c1 = [9.0f32; 4];
        let mut c2 = [9.0f32; 4];
        assert_eq!(p.decode_into(&mut c1, &mut c2).unwrap(), 4);
        let want1 = [-0.000061, 0.49991, -0.50003, 0.99988];
        let want2 = [-1.0, 0.24991, -0.000061, -0.25006];
        for (got, want) in c1.iter().zip(want1).chain(c2.iter().zip(want2)) {
            assert!((got - want).abs() < 5e-6, "{got} vs {want}");
        }
        // And exactly n / 32768 - 1, computed independently in f64.
        for (i, w) in [0x7ffe_u16, 0xbffd, 0x3fff, 0xfffc].into_iter().enumerate() {
            assert_eq!(f64::from(c1[i]), f64::from(w) / 32768.0 - 1.0);
        }
    }

    #[test]
    fn v2_header_only_echo() {
        let mut h = v1_header();
        h.server_time = 1_700_000_000_127_000;
        h.beat = 2;
        let mut out = [0u8; HEADER_LEN];
        assert_eq!(h.write_to(&mut out).unwrap(), 28);
        assert_eq!(out.as_slice(), hex(V2).as_slice());
        assert_eq!(h.server_time, 0x0006_0A24_1820_3018);

        // Stamping V1 in place and keeping the header gives the same bytes.
        let mut v1 = hex(V1);
        stamp_server_fields(&mut v1, 1_700_000_000_127_000, 2).unwrap();
        assert_eq!(&v1[..HEADER_LEN], hex(V2).as_slice());

        let echo = hex(V2);
        let p = JamPacket::parse(&echo).unwrap();
        assert!(p.is_header_only());
        assert_eq!(
            p.header().num_audio_chunks,
            1,
            "echo keeps the sender's chunks byte"
        );
        assert_eq!(p.samples(JamChannel::Ch1).len(), 0);
    }

    #[test]
    fn v3_standard_silent_packet() {
        let h = JamHeader {
            num_audio_chunks: JamHeader::chunks_for_len(STANDARD_PACKET_LEN),
            client_id: 1001,
            ..JamHeader::default()
        };
        let silence = [0.0f32; STANDARD_FRAMES];
        let mut out = [0u8; MAX_DATAGRAM_LEN];
        let n = write_packet(&h, &silence, &silence, &mut out).unwrap();
        assert_eq!(n, 540);
        assert_eq!(&out[..HEADER_LEN], hex(V3_HEADER).as_slice());
        assert_eq!(out[2], 0x10);
        assert!(
            out[HEADER_LEN..n]
                .chunks_exact(2)
                .all(|w| w == [0x7f, 0xfe])
        );
        assert_eq!(out[HEADER_LEN..n].len() / 2, 256);
        let p = JamPacket::parse(&out[..n]).unwrap();
        assert_eq!(p.frames(), STANDARD_FRAMES);
    }

    #[test]
    fn sheet_scale_examples() {
        // rtjam.md §2 "Sample encoding".
        assert_eq!(encode_sample(-1.0), 0x0000);
        assert_eq!(encode_sample(0.0), 0x7FFE);
        assert_eq!(encode_sample(1.0), 0xFFFC);
        assert_eq!(decode_sample(0x0000), -1.0);
        assert!((decode_sample(0x7FFE) - -0.000061).abs() < 1e-6);
        assert_eq!(decode_sample(0x8000), 0.0);
        assert!((decode_sample(0xFFFF) - 0.99997).abs() < 1e-5);
    }

    #[test]
    fn clipping_matches_rtjam() {
        // Beyond full scale clamps to the ends, like rtjam's [0, 2] clamp of x + 1.
        for x in [1.0001, 2.0, 1e9, f32::INFINITY] {
            assert_eq!(encode_sample(x), 0xFFFC, "{x}");
        }
        for x in [-1.0001, -3.0, -1e9, f32::NEG_INFINITY] {
            assert_eq!(encode_sample(x), 0x0000, "{x}");
        }
        assert_eq!(encode_sample(f32::NAN), SILENCE_WORD);
        // Just inside full scale still truncates, never rounds up past the clamp.
        assert_eq!(encode_sample(0.99999), (1.99999f32 * 32766.0) as u16);
    }

    #[test]
    fn encoder_uses_rtjam_f32_arithmetic() {
        // rtjam computes (x + 1) * 32766 in f32. Against exact real arithmetic (f64
        // here) that differs by at most one step, and only where f32 rounding crosses
        // an integer: rare, but real, so the f32 path is what interop needs.
        let mut differ = 0;
        for i in -40_000..=40_000 {
            let x = i as f32 / 40_000.0;
            let exact = ((f64::from(x) + 1.0).clamp(0.0, 2.0) * 32766.0).trunc() as i64;
            let got = i64::from(encode_sample(x));
            assert!((got - exact).abs() <= 1, "{x}: {got} vs {exact}");
            differ += usize::from(got != exact);
            let f32_model = ((x + 1.0f32).clamp(0.0, 2.0) * 32766.0f32).trunc() as i64;
            assert_eq!(got, f32_model, "{x}");
        }
        assert!(differ < 80_001 / 200, "{differ}");
    }

    #[test]
    fn round_trip_at_scale_extremes() {
        let ch1 = [1.0, -1.0, 0.999_97, -0.999_97, 0.0, 1.5, -1.5, 0.5];
        let ch2 = [-1.0, 1.0, 0.25, -0.25, 1e-6, -1e-6, 0.75, -0.75];
        let mut out = [0u8; 64];
        let n = write_packet(&JamHeader::default(), &ch1, &ch2, &mut out).unwrap();
        let p = JamPacket::parse(&out[..n]).unwrap();
        // +1.0 comes back as 65532/32768 - 1 = 0.99988 (the two scales differ).
        assert_eq!(p.sample(JamChannel::Ch1, 0), Some(65532.0 / 32768.0 - 1.0));
        assert_eq!(p.sample(JamChannel::Ch1, 1), Some(-1.0));
        // 1.5 clips to the same word as 1.0, -1.5 to the same as -1.0.
        assert_eq!(p.word(JamChannel::Ch1, 5), Some(0xFFFC));
        assert_eq!(p.word(JamChannel::Ch1, 6), Some(0x0000));
        for (x, y) in ch1
            .iter()
            .chain(&ch2)
            .zip(p.samples(JamChannel::Ch1).chain(p.samples(JamChannel::Ch2)))
        {
            let x = x.clamp(-1.0, 1.0);
            // Error bound: scale shrink (x+1)·2/32768 plus one truncation step.
            let bound = (x + 1.0) * 2.0 / 32768.0 + 1.0 / 32768.0 + 1e-7;
            assert!((x - y).abs() <= bound, "{x} -> {y}");
        }
        assert_eq!(p.word(JamChannel::Ch2, 8), None);
        assert_eq!(p.sample(JamChannel::Ch1, usize::MAX), None);
    }

    #[test]
    fn words_round_trip_exactly() {
        let bytes = hex(V1);
        let p = JamPacket::parse(&bytes).unwrap();
        let w1: Vec<u16> = p.words(JamChannel::Ch1).collect();
        let w2: Vec<u16> = p.words(JamChannel::Ch2).collect();
        let mut out = [0u8; 64];
        let n = write_packet_words(p.header(), &w1, &w2, &mut out).unwrap();
        assert_eq!(&out[..n], bytes.as_slice());
    }

    #[test]
    fn validity_rules_each_have_their_own_error() {
        assert_eq!(
            JamPacket::parse(&[]).unwrap_err(),
            ParseError::TooShort { len: 0 }
        );
        assert_eq!(
            JamPacket::parse(&[0; 27]).unwrap_err(),
            ParseError::TooShort { len: 27 }
        );
        assert_eq!(
            JamPacket::parse(&[0; 541]).unwrap_err(),
            ParseError::OddLength { len: 541 }
        );
        assert_eq!(
            JamPacket::parse(&[0; 1026]).unwrap_err(),
            ParseError::TooLong {
                len: 1026,
                max: 1024
            }
        );
        assert_eq!(
            JamPacket::parse(&[0; 30]).unwrap_err(),
            ParseError::RaggedAudio {
                len: 30,
                audio_bytes: 2
            }
        );
        // Boundaries that are valid.
        assert_eq!(check(&[0; 28]), Ok(0));
        assert_eq!(check(&[0; 1024]), Ok(MAX_FRAMES));
        assert_eq!(MAX_FRAMES, 249);
        assert_eq!(check(&[0; 540]), Ok(128));
    }

    #[test]
    fn encoder_rejects_bad_buffers() {
        let mut small = [0u8; 43];
        let four = [0.0f32; 4];
        assert_eq!(
            write_packet(&JamHeader::default(), &four, &four, &mut small),
            Err(BufferError::TooSmall {
                needed: 44,
                available: 43
            })
        );
        let mut out = [0u8; 2048];
        assert_eq!(
            write_packet(&JamHeader::default(), &four, &four[..3], &mut out),
            Err(BufferError::ChannelLengthMismatch { ch1: 4, ch2: 3 })
        );
        let many = [0.0f32; 250];
        assert_eq!(
            write_packet(&JamHeader::default(), &many, &many, &mut out),
            Err(BufferError::TooManyFrames {
                frames: 250,
                max: 249
            })
        );
        assert_eq!(
            JamHeader::default().write_to(&mut [0u8; 27]),
            Err(BufferError::TooSmall {
                needed: 28,
                available: 27
            })
        );
        let bytes = hex(V1);
        let p = JamPacket::parse(&bytes).unwrap();
        assert_eq!(
            p.decode_channel_into(JamChannel::Ch2, &mut [0.0; 3]),
            Err(BufferError::TooSmall {
                needed: 4,
                available: 3
            })
        );
    }

    #[test]
    fn chunks_byte() {
        assert_eq!(JamHeader::chunks_for_len(44), 1);
        assert_eq!(JamHeader::chunks_for_len(540), 16);
        assert_eq!(JamHeader::chunks_for_len(28), 0);
        assert_eq!(JamHeader::chunks_for_len(100_000), 255);
    }
}
