//! AES67 audio over RTP: stream formats, the media clock, the transmit packetizer and
//! (in [`jitter`]) the receive jitter buffer.
//!
//! * Format (aes67.md §3-§4): 48 kHz, L24 (default) or L16 big-endian, 1-8 interleaved
//!   channels (the Dante limit, aes67.md §8), packet times 125/250/333 µs, 1 ms (default)
//!   and 4 ms = 6/12/16/48/192 frames.
//! * Timestamps (aes67.md §5): the RTP timestamp is the media clock (PTP seconds × 48000,
//!   plus the `a=mediaclk:direct=` offset, mod 2^32) of the first sample in the packet.
//!   The packetizer is given the start value once and then advances it by the frames per
//!   packet; it never reads a clock. The caller compares [`Packetizer::next_timestamp`]
//!   with its PTP-derived media clock now and then and calls [`Packetizer::resync`] only
//!   past a threshold (aes67.md §5).
//! * Sequence numbers start at a random value the caller picks (aes67.md §2), as does the
//!   SSRC; this module has no randomness source. The marker bit is always 0, as ffmpeg
//!   writes it; receivers ignore it (aes67.md §2).
//!
//! Nothing on the per-packet or per-block path allocates: buffers are sized in `new`.

pub mod jitter;
pub mod sender_clock;

pub use jitter::{Alignment, JitterBuffer, PushOutcome, RxConfig, RxStats};
pub use sender_clock::SenderClock;

use crate::pcm;
use crate::rtp::{FIXED_HEADER_LEN, PayloadType, RtpHeader};
use std::fmt;

/// The AES67 sample rate and media clock rate (aes67.md §1).
pub const SAMPLE_RATE: u32 = 48_000;

/// Most channels one flow carries (Dante AES67 mode, aes67.md §8).
pub const MAX_CHANNELS: u8 = 8;

/// Most frames per channel [`Packetizer::push_block`] accepts in one call (4 ms).
pub const MAX_BLOCK_FRAMES: usize = 192;

/// Sample encoding of the payload (aes67.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// 16-bit big-endian.
    L16,
    /// 24-bit big-endian (the AES67/Dante default).
    #[default]
    L24,
}

impl Encoding {
    /// Bytes per sample: 2 or 3.
    pub const fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::L16 => 2,
            Encoding::L24 => 3,
        }
    }

    /// The `a=rtpmap` encoding name.
    pub const fn name(self) -> &'static str {
        match self {
            Encoding::L16 => "L16",
            Encoding::L24 => "L24",
        }
    }

    /// Parses an `a=rtpmap` encoding name (case-insensitive, RFC 4566 §6).
    pub fn from_name(name: &str) -> Option<Encoding> {
        if name.eq_ignore_ascii_case("L24") {
            Some(Encoding::L24)
        } else if name.eq_ignore_ascii_case("L16") {
            Some(Encoding::L16)
        } else {
            None
        }
    }

    /// Encodes interleaved samples into `out`; returns bytes written.
    fn write(self, samples: &[f32], out: &mut [u8]) -> usize {
        match self {
            Encoding::L16 => pcm::write_l16(samples, out),
            Encoding::L24 => pcm::write_l24(samples, out),
        }
    }

    /// Decodes a payload into interleaved samples; returns samples written.
    fn read(self, payload: &[u8], out: &mut [f32]) -> usize {
        match self {
            Encoding::L16 => pcm::read_l16(payload, out),
            Encoding::L24 => pcm::read_l24(payload, out),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The AES67 packet times at 48 kHz (aes67.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum PacketTime {
    /// 125 µs, 6 frames.
    Us125,
    /// 250 µs, 12 frames.
    Us250,
    /// 333 µs, 16 frames.
    Us333,
    /// 1 ms, 48 frames: the one every device supports.
    #[default]
    Ms1,
    /// 4 ms, 192 frames.
    Ms4,
}

impl PacketTime {
    /// All packet times, shortest first.
    pub const ALL: [PacketTime; 5] = [
        PacketTime::Us125,
        PacketTime::Us250,
        PacketTime::Us333,
        PacketTime::Ms1,
        PacketTime::Ms4,
    ];

    /// Frames (samples per channel) per packet at 48 kHz.
    pub const fn frames(self) -> usize {
        match self {
            PacketTime::Us125 => 6,
            PacketTime::Us250 => 12,
            PacketTime::Us333 => 16,
            PacketTime::Ms1 => 48,
            PacketTime::Ms4 => 192,
        }
    }

    /// Nominal duration in microseconds (333 for the 16-frame packet).
    pub const fn micros(self) -> u32 {
        match self {
            PacketTime::Us125 => 125,
            PacketTime::Us250 => 250,
            PacketTime::Us333 => 333,
            PacketTime::Ms1 => 1000,
            PacketTime::Ms4 => 4000,
        }
    }

    /// The `a=ptime` value in milliseconds as senders print it (aes67.md §6).
    pub const fn sdp_ptime(self) -> &'static str {
        match self {
            PacketTime::Us125 => "0.125",
            PacketTime::Us250 => "0.25",
            PacketTime::Us333 => "0.333",
            PacketTime::Ms1 => "1",
            PacketTime::Ms4 => "4",
        }
    }

    /// The packet time with this many frames.
    pub fn from_frames(frames: usize) -> Option<PacketTime> {
        PacketTime::ALL.into_iter().find(|p| p.frames() == frames)
    }

    /// The packet time within 2 µs of `micros` (accepts 333.33 µs printed as 333).
    pub fn from_micros(micros: u32) -> Option<PacketTime> {
        PacketTime::ALL
            .into_iter()
            .find(|p| p.micros().abs_diff(micros) <= 2)
    }
}

/// A channel count between 1 and [`MAX_CHANNELS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channels(u8);

impl Channels {
    /// Stereo.
    pub const STEREO: Channels = Channels(2);

    /// Validates 1..=8.
    pub const fn new(n: u8) -> Option<Channels> {
        if n >= 1 && n <= MAX_CHANNELS {
            Some(Channels(n))
        } else {
            None
        }
    }

    /// The count.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The count as `usize`.
    pub const fn count(self) -> usize {
        self.0 as usize
    }
}

impl TryFrom<u8> for Channels {
    type Error = Aes67Error;
    fn try_from(n: u8) -> Result<Self, Self::Error> {
        Channels::new(n).ok_or(Aes67Error::BadChannelCount { channels: n.into() })
    }
}

/// Encoding, channel count and packet time of one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamFormat {
    /// L16 or L24.
    pub encoding: Encoding,
    /// Interleaved channels.
    pub channels: Channels,
    /// Packet time.
    pub packet_time: PacketTime,
}

impl StreamFormat {
    /// L24, 1 ms: the safe choice for Dante (aes67.md §8).
    pub const fn l24_1ms(channels: Channels) -> StreamFormat {
        StreamFormat {
            encoding: Encoding::L24,
            channels,
            packet_time: PacketTime::Ms1,
        }
    }

    /// Bytes of one frame (one sample of every channel).
    pub const fn bytes_per_frame(&self) -> usize {
        self.encoding.bytes_per_sample() * self.channels.count()
    }

    /// RTP payload bytes of one packet (aes67.md §3: L24/2ch/1 ms = 288).
    pub const fn payload_len(&self) -> usize {
        self.bytes_per_frame() * self.packet_time.frames()
    }

    /// Whole RTP packet bytes (12-byte header + payload; L24/2ch/1 ms = 300).
    pub const fn packet_len(&self) -> usize {
        FIXED_HEADER_LEN + self.payload_len()
    }
}

/// Media clock in samples since the PTP epoch: `floor(tai_ns × 48000 / 10^9)`
/// (aes67.md §5). `tai_ns` must be on the TAI timescale (PTP time).
pub const fn media_clock(tai_ns: u64) -> u64 {
    (tai_ns as u128 * SAMPLE_RATE as u128 / 1_000_000_000) as u64
}

/// RTP timestamp for a media clock value: `(media_clock + offset) mod 2^32`, where
/// `offset` is the `a=mediaclk:direct=` value (aes67.md §5).
pub const fn rtp_timestamp(media_clock: u64, offset: u32) -> u32 {
    (media_clock as u32).wrapping_add(offset)
}

/// Errors of the AES67 packetizer and jitter buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Aes67Error {
    /// Channel count outside 1..=8.
    #[error("channel count {channels} outside 1..=8")]
    BadChannelCount {
        /// The rejected count.
        channels: usize,
    },
    /// The number of channel slices does not match the flow.
    #[error("expected {expected} channel buffers, got {got}")]
    ChannelMismatch {
        /// Channels of the flow.
        expected: usize,
        /// Slices given.
        got: usize,
    },
    /// Sample buffers of the wrong length.
    #[error("expected {expected} samples, got {got}")]
    LengthMismatch {
        /// Samples required.
        expected: usize,
        /// Samples given.
        got: usize,
    },
    /// A block longer than the packetizer or jitter buffer takes in one call.
    #[error("block of {frames} frames exceeds the limit of {max}")]
    BlockTooLong {
        /// Frames given.
        frames: usize,
        /// Limit.
        max: usize,
    },
    /// The packetizer holds too many unsent frames: poll packets before pushing more.
    #[error(
        "packetizer staging full: {staged} frames staged, {pushed} more pushed, room for {capacity}"
    )]
    StagingFull {
        /// Frames already staged.
        staged: usize,
        /// Frames in the rejected push.
        pushed: usize,
        /// Staging capacity in frames.
        capacity: usize,
    },
    /// The output buffer cannot hold a packet.
    #[error("output buffer too small: need {needed} bytes, have {capacity}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        capacity: usize,
    },
    /// Jitter-buffer latency outside one packet time .. 40 ms.
    #[error("latency of {frames} frames outside {min}..={max}")]
    BadLatency {
        /// Requested latency in frames.
        frames: u32,
        /// Minimum (one packet time).
        min: u32,
        /// Maximum (40 ms).
        max: u32,
    },
}

/// Transmit settings of one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxConfig {
    /// Encoding, channels and packet time.
    pub format: StreamFormat,
    /// Payload type announced in the SDP (98 by default).
    pub payload_type: PayloadType,
    /// SSRC, random per session (aes67.md §2).
    pub ssrc: u32,
    /// Sequence number of the first packet, random (aes67.md §2).
    pub first_sequence: u16,
}

/// Turns per-channel blocks into AES67 RTP packets.
///
/// Two ways to feed it: [`Packetizer::push_block`] (planar blocks of any length up to
/// [`MAX_BLOCK_FRAMES`], e.g. the engine's 48-frame blocks) followed by
/// [`Packetizer::poll_packet`] until it returns `None`; or [`Packetizer::write_packet`]
/// with exactly one packet of interleaved frames. Don't mix the two while frames are
/// staged.
#[derive(Debug, Clone)]
pub struct Packetizer {
    cfg: TxConfig,
    sequence: u16,
    /// Timestamp of the first staged frame (= of the next packet).
    timestamp: u32,
    /// Interleaved staged frames, capacity `staging_frames × channels`.
    staging: Vec<f32>,
    staged_frames: usize,
    staging_frames: usize,
}

impl Packetizer {
    /// A packetizer whose first packet carries `first_timestamp` (the media clock of its
    /// first sample, aes67.md §5).
    pub fn new(cfg: TxConfig, first_timestamp: u32) -> Packetizer {
        let staging_frames = cfg.format.packet_time.frames() + MAX_BLOCK_FRAMES;
        Packetizer {
            cfg,
            sequence: cfg.first_sequence,
            timestamp: first_timestamp,
            staging: vec![0.0; staging_frames * cfg.format.channels.count()],
            staged_frames: 0,
            staging_frames,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TxConfig {
        &self.cfg
    }

    /// Frames per packet.
    pub fn frames_per_packet(&self) -> usize {
        self.cfg.format.packet_time.frames()
    }

    /// Bytes of every packet this packetizer writes.
    pub fn packet_len(&self) -> usize {
        self.cfg.format.packet_len()
    }

    /// Sequence number of the next packet.
    pub fn next_sequence(&self) -> u16 {
        self.sequence
    }

    /// RTP timestamp of the next packet's first sample.
    pub fn next_timestamp(&self) -> u32 {
        self.timestamp
    }

    /// RTP timestamp the next pushed frame will get (after the staged ones).
    pub fn next_push_timestamp(&self) -> u32 {
        // staged_frames < 2^32 by construction (bounded by staging_frames).
        self.timestamp.wrapping_add(self.staged_frames as u32)
    }

    /// Frames pushed but not yet sent.
    pub fn staged_frames(&self) -> usize {
        self.staged_frames
    }

    /// How far the packetizer's timestamps run ahead (+) or behind (−) the media clock,
    /// in samples: `next_push_timestamp − media_ts`, where `media_ts` is the RTP-domain
    /// media clock of the next frame to be pushed. Wrap-safe.
    pub fn timestamp_error(&self, media_ts: u32) -> i32 {
        self.next_push_timestamp().wrapping_sub(media_ts) as i32
    }

    /// Re-bootstraps the timestamp after drift beyond the caller's threshold: staged
    /// frames are dropped and the next pushed frame gets `timestamp`. The sequence
    /// continues. Returns the frames dropped.
    pub fn resync(&mut self, timestamp: u32) -> usize {
        let dropped = self.staged_frames;
        self.staged_frames = 0;
        self.timestamp = timestamp;
        dropped
    }

    /// Stages one block: `channels[c]` holds the block's samples for channel `c`; all
    /// slices have the same length (at most [`MAX_BLOCK_FRAMES`]).
    pub fn push_block(&mut self, channels: &[&[f32]]) -> Result<(), Aes67Error> {
        let ch = self.cfg.format.channels.count();
        if channels.len() != ch {
            return Err(Aes67Error::ChannelMismatch {
                expected: ch,
                got: channels.len(),
            });
        }
        let frames = channels.first().map_or(0, |c| c.len());
        if let Some(bad) = channels.iter().find(|c| c.len() != frames) {
            return Err(Aes67Error::LengthMismatch {
                expected: frames,
                got: bad.len(),
            });
        }
        if frames > MAX_BLOCK_FRAMES {
            return Err(Aes67Error::BlockTooLong {
                frames,
                max: MAX_BLOCK_FRAMES,
            });
        }
        if self.staged_frames + frames > self.staging_frames {
            return Err(Aes67Error::StagingFull {
                staged: self.staged_frames,
                pushed: frames,
                capacity: self.staging_frames,
            });
        }
        let base = self.staged_frames * ch;
        let dst = &mut self.staging[base..base + frames * ch];
        for (c, src) in channels.iter().enumerate() {
            for (frame, &s) in dst.chunks_exact_mut(ch).zip(src.iter()) {
                frame[c] = s;
            }
        }
        self.staged_frames += frames;
        Ok(())
    }

    /// Writes the next packet into `out` if a packet's worth of frames is staged.
    pub fn poll_packet(&mut self, out: &mut [u8]) -> Result<Option<usize>, Aes67Error> {
        let fpp = self.frames_per_packet();
        if self.staged_frames < fpp {
            return Ok(None);
        }
        let ch = self.cfg.format.channels.count();
        let n = Self::write_one(
            &self.cfg,
            self.sequence,
            self.timestamp,
            &self.staging[..fpp * ch],
            out,
        )?;
        self.staging
            .copy_within(fpp * ch..self.staged_frames * ch, 0);
        self.staged_frames -= fpp;
        self.advance();
        Ok(Some(n))
    }

    /// Writes one packet from exactly one packet's worth of interleaved frames
    /// (`frames_per_packet × channels` samples) and advances sequence and timestamp.
    pub fn write_packet(
        &mut self,
        interleaved: &[f32],
        out: &mut [u8],
    ) -> Result<usize, Aes67Error> {
        let expected = self.frames_per_packet() * self.cfg.format.channels.count();
        if interleaved.len() != expected {
            return Err(Aes67Error::LengthMismatch {
                expected,
                got: interleaved.len(),
            });
        }
        let n = Self::write_one(&self.cfg, self.sequence, self.timestamp, interleaved, out)?;
        self.advance();
        Ok(n)
    }

    fn advance(&mut self) {
        self.sequence = self.sequence.wrapping_add(1);
        // frames() <= 192, lossless.
        self.timestamp = self.timestamp.wrapping_add(self.frames_per_packet() as u32);
    }

    fn write_one(
        cfg: &TxConfig,
        sequence: u16,
        timestamp: u32,
        samples: &[f32],
        out: &mut [u8],
    ) -> Result<usize, Aes67Error> {
        let len = cfg.format.packet_len();
        let capacity = out.len();
        let Some(dst) = out.get_mut(..len) else {
            return Err(Aes67Error::BufferTooSmall {
                needed: len,
                capacity,
            });
        };
        let header = RtpHeader {
            marker: false,
            payload_type: cfg.payload_type,
            sequence,
            timestamp,
            ssrc: cfg.ssrc,
        };
        header
            .write_to(dst)
            .map_err(|_| Aes67Error::BufferTooSmall {
                needed: len,
                capacity,
            })?;
        cfg.format
            .encoding
            .write(samples, &mut dst[FIXED_HEADER_LEN..]);
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpPacket;

    fn cfg(format: StreamFormat) -> TxConfig {
        TxConfig {
            format,
            payload_type: PayloadType::AES67_DEFAULT,
            ssrc: 0x1234_5678,
            first_sequence: 1,
        }
    }

    #[test]
    fn media_clock_worked_value() {
        // aes67.md §5: TAI 1 700 000 000 s, offset 0 -> 4 211 310 592 (0xFB038000).
        let mc = media_clock(1_700_000_000 * 1_000_000_000);
        assert_eq!(mc, 81_600_000_000_000);
        assert_eq!(rtp_timestamp(mc, 0), 0xFB03_8000);
        assert_eq!(rtp_timestamp(mc, 0x0500_0000), 0x0003_8000);
        // floor: 20.833 µs is exactly one sample, one ns less is still zero.
        assert_eq!(media_clock(20_834), 1);
        assert_eq!(media_clock(20_833), 0);
    }

    #[test]
    fn sheet_sizes() {
        // aes67.md §3 and §4.
        let st = StreamFormat::l24_1ms(Channels::STEREO);
        assert_eq!((st.payload_len(), st.packet_len()), (288, 300));
        let eight = StreamFormat::l24_1ms(Channels::new(8).unwrap());
        assert_eq!((eight.payload_len(), eight.packet_len()), (1152, 1164));
        let per_channel: Vec<(usize, usize)> = PacketTime::ALL
            .iter()
            .map(|&packet_time| {
                let f = |encoding| StreamFormat {
                    encoding,
                    channels: Channels::new(1).unwrap(),
                    packet_time,
                };
                (
                    f(Encoding::L24).payload_len(),
                    f(Encoding::L16).payload_len(),
                )
            })
            .collect();
        assert_eq!(
            per_channel,
            vec![(18, 12), (36, 24), (48, 32), (144, 96), (576, 384)]
        );
    }

    #[test]
    fn packet_time_lookups() {
        assert_eq!(PacketTime::from_frames(16), Some(PacketTime::Us333));
        assert_eq!(PacketTime::from_frames(47), None);
        assert_eq!(PacketTime::from_micros(333), Some(PacketTime::Us333));
        assert_eq!(PacketTime::from_micros(334), Some(PacketTime::Us333));
        assert_eq!(PacketTime::from_micros(1000), Some(PacketTime::Ms1));
        assert_eq!(PacketTime::from_micros(500), None);
        assert_eq!(PacketTime::default(), PacketTime::Ms1);
        assert_eq!(Encoding::from_name("l24"), Some(Encoding::L24));
        assert_eq!(Encoding::from_name("L20"), None);
        assert!(Channels::new(0).is_none() && Channels::new(9).is_none());
        assert_eq!(
            Channels::try_from(9),
            Err(Aes67Error::BadChannelCount { channels: 9 })
        );
    }

    #[test]
    fn first_packet_matches_sheet_vector_12_3() {
        // §12.3 carries 2 frames; a 125 µs packet carries 6, so the first 24 bytes must
        // equal the sheet and the remaining 4 frames (silence) must be zero.
        let mut p = Packetizer::new(
            cfg(StreamFormat {
                encoding: Encoding::L24,
                channels: Channels::STEREO,
                packet_time: PacketTime::Us125,
            }),
            rtp_timestamp(media_clock(1_700_000_000 * 1_000_000_000), 0),
        );
        let lsb = 1.0 / 8_388_608.0;
        let mut frames = [0.0f32; 12];
        frames[..4].copy_from_slice(&[0.25, -0.25, lsb, -lsb]);
        let mut out = [0u8; 64];
        let n = p.write_packet(&frames, &mut out).unwrap();
        assert_eq!(n, 12 + 6 * 2 * 3);
        let sheet: [u8; 24] = [
            0x80, 0x62, 0x00, 0x01, 0xfb, 0x03, 0x80, 0x00, 0x12, 0x34, 0x56, 0x78, 0x20, 0x00,
            0x00, 0xe0, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0xff, 0xff,
        ];
        assert_eq!(&out[..24], &sheet);
        assert!(out[24..n].iter().all(|&b| b == 0));
    }

    #[test]
    fn sequence_and_timestamp_advance_and_wrap() {
        let mut c = cfg(StreamFormat::l24_1ms(Channels::STEREO));
        c.first_sequence = 65_534;
        let mut p = Packetizer::new(c, u32::MAX - 50);
        let frames = vec![0.0f32; 96];
        let mut out = vec![0u8; 300];
        let mut seen = Vec::new();
        for _ in 0..4 {
            let n = p.write_packet(&frames, &mut out).unwrap();
            assert_eq!(n, 300);
            let pkt = RtpPacket::parse(&out[..n]).unwrap();
            assert_eq!(pkt.payload.len(), 288);
            seen.push((pkt.header.sequence, pkt.header.timestamp));
        }
        assert_eq!(
            seen,
            vec![
                (65_534, u32::MAX - 50),
                (65_535, u32::MAX - 2),
                (0, 45),
                (1, 93)
            ]
        );
    }

    #[test]
    fn blocks_to_packets_for_every_packet_time() {
        // 48-frame engine blocks: 8 packets per block at 125 µs, one per 4 blocks at 4 ms.
        for pt in PacketTime::ALL {
            let format = StreamFormat {
                encoding: Encoding::L16,
                channels: Channels::new(3).unwrap(),
                packet_time: pt,
            };
            let mut p = Packetizer::new(cfg(format), 1000);
            let mut out = vec![0u8; format.packet_len()];
            let mut packets = Vec::new();
            for block in 0..8u32 {
                // Channel c carries (sample index + 1) × (c + 1) / 4096: exact in L16.
                let chans: Vec<Vec<f32>> = (0..3)
                    .map(|c| {
                        (0..48)
                            .map(|i| ((block * 48 + i + 1) * (c + 1)) as f32 / 4096.0)
                            .collect()
                    })
                    .collect();
                let refs: Vec<&[f32]> = chans.iter().map(|v| v.as_slice()).collect();
                p.push_block(&refs).unwrap();
                while let Some(n) = p.poll_packet(&mut out).unwrap() {
                    packets.push(out[..n].to_vec());
                }
            }
            let fpp = pt.frames();
            assert_eq!(packets.len(), 8 * 48 / fpp, "{pt:?}");
            for (k, raw) in packets.iter().enumerate() {
                let pkt = RtpPacket::parse(raw).unwrap();
                assert_eq!(pkt.header.sequence, 1 + k as u16);
                assert_eq!(pkt.header.timestamp, 1000 + (k * fpp) as u32);
                let mut s = vec![0.0f32; fpp * 3];
                assert_eq!(pcm::read_l16(pkt.payload, &mut s), fpp * 3);
                for (i, frame) in s.chunks_exact(3).enumerate() {
                    let idx = (k * fpp + i + 1) as f32;
                    for (c, &v) in frame.iter().enumerate() {
                        assert_eq!(v, idx * (c + 1) as f32 / 4096.0, "{pt:?} pkt {k} frame {i}");
                    }
                }
            }
            assert_eq!(p.staged_frames(), 0);
        }
    }

    #[test]
    fn push_errors_and_resync() {
        let mut p = Packetizer::new(cfg(StreamFormat::l24_1ms(Channels::STEREO)), 0);
        let a = [0.0f32; 48];
        let b = [0.0f32; 47];
        assert_eq!(
            p.push_block(&[&a]),
            Err(Aes67Error::ChannelMismatch {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            p.push_block(&[&a, &b]),
            Err(Aes67Error::LengthMismatch {
                expected: 48,
                got: 47
            })
        );
        let big = [0.0f32; 193];
        assert!(matches!(
            p.push_block(&[&big, &big]),
            Err(Aes67Error::BlockTooLong { .. })
        ));
        // Staging holds one packet + one max block (48 + 192 frames): 5 blocks fit.
        for _ in 0..5 {
            p.push_block(&[&a, &a]).unwrap();
        }
        assert!(matches!(
            p.push_block(&[&a, &a]),
            Err(Aes67Error::StagingFull { .. })
        ));
        assert_eq!(p.next_push_timestamp(), 240);
        assert_eq!(p.timestamp_error(200), 40);
        assert_eq!(p.timestamp_error(300), -60);
        assert!(matches!(
            p.poll_packet(&mut [0u8; 299]),
            Err(Aes67Error::BufferTooSmall {
                needed: 300,
                capacity: 299
            })
        ));
        assert_eq!(p.resync(5000), 240);
        assert_eq!(p.next_timestamp(), 5000);
        assert_eq!(p.poll_packet(&mut [0u8; 300]), Ok(None));
        assert_eq!(
            p.write_packet(&[0.0; 95], &mut [0u8; 300]),
            Err(Aes67Error::LengthMismatch {
                expected: 96,
                got: 95
            })
        );
    }
}
