//! Opus for AoDNS broadcasts (aodns.md §8), on the pure-Rust `opus-rs` codec.
//!
//! The reference encodes 60 ms frames at 16 kHz mono (8/12 kHz and stereo
//! selectable) with libopus in `voip` mode at its automatic bitrate (17 kb/s).
//! Every packet must fit one TXT string of at most 250 bytes: 6 bytes of
//! `%03d'''` prefix leave 244 base91 chars, i.e. 198 bytes of packet whatever
//! their value ([`crate::aodns::PackLimits::max_opus_packet_bytes`]). libopus in
//! VBR mode sometimes goes beyond (the reference server then crashes, aodns.md §3);
//! here the encoder gets a packet buffer of exactly the limit, which opus-rs, like
//! libopus's `max_data_bytes`, treats as a hard ceiling for the packet it codes.
//! The wrapper checks the result anyway and reports a typed error rather than
//! ever returning an oversize packet.
//!
//! Why opus-rs and not libopus bindings: it is pure Rust (no C toolchain, cmake or
//! system library at build or run time; `audiopus_sys` 0.2.2 links a system libopus
//! only when pkg-config finds one and otherwise needs cmake to build its own), it
//! encodes as fast as libopus 1.3.1 (`benches/opus.rs`), and its packets decode
//! with reference libopus (`tests/opus_reference.rs`). Its codec state is allocated
//! once in `new`; encoding and decoding write into caller buffers and allocate
//! nothing (the crate also builds `no_std` without `alloc`).

use crate::aodns::PackLimits;

/// Frame duration of AoDNS (aodns.md §8).
pub const FRAME_MS: u32 = 60;

/// Longest packet for the reference limits: 198 bytes (244 base91 chars).
pub const AODNS_MAX_PACKET_BYTES: usize = PackLimits::REFERENCE.max_opus_packet_bytes();

/// Sample rates the AoDNS reference accepts (`--sample-rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OpusRate {
    /// 8 kHz (narrowband).
    Hz8000,
    /// 12 kHz (mediumband).
    Hz12000,
    /// 16 kHz (wideband), the reference default.
    #[default]
    Hz16000,
}

impl OpusRate {
    /// The rate in hertz.
    pub const fn hz(self) -> u32 {
        match self {
            OpusRate::Hz8000 => 8_000,
            OpusRate::Hz12000 => 12_000,
            OpusRate::Hz16000 => 16_000,
        }
    }

    /// Samples per channel in one 60 ms frame (960 at 16 kHz).
    pub const fn frame_samples(self) -> usize {
        (self.hz() * FRAME_MS / 1000) as usize
    }
}

impl TryFrom<u32> for OpusRate {
    type Error = OpusError;
    fn try_from(hz: u32) -> Result<Self, OpusError> {
        match hz {
            8_000 => Ok(OpusRate::Hz8000),
            12_000 => Ok(OpusRate::Hz12000),
            16_000 => Ok(OpusRate::Hz16000),
            _ => Err(OpusError::UnsupportedRate { hz }),
        }
    }
}

/// Channel count (`--channels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Channels {
    /// One channel, the reference default.
    #[default]
    Mono,
    /// Two channels, interleaved L R.
    Stereo,
}

impl Channels {
    /// 1 or 2.
    pub const fn count(self) -> usize {
        match self {
            Channels::Mono => 1,
            Channels::Stereo => 2,
        }
    }
}

/// Rate and channels, which broadcaster and listener must agree on out of band
/// (AoDNS publishes no configuration record, aodns.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OpusFormat {
    /// Sample rate.
    pub rate: OpusRate,
    /// Channels.
    pub channels: Channels,
}

impl OpusFormat {
    /// Interleaved samples in one 60 ms frame (960 for 16 kHz mono).
    pub const fn frame_len(self) -> usize {
        self.rate.frame_samples() * self.channels.count()
    }

    /// libopus's automatic bitrate (`OPUS_AUTO`) for 60 ms frames:
    /// `60 * rate / frame_samples + rate * channels`, 17000 b/s for 16 kHz mono,
    /// which is what the reference encoder runs at (aodns.md §8).
    pub const fn auto_bitrate_bps(self) -> u32 {
        60 * 1000 / FRAME_MS + self.rate.hz() * self.channels.count() as u32
    }
}

/// Opus application (coding mode preference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Application {
    /// Speech-optimised (SILK), as the reference (`voip`).
    #[default]
    Voip,
    /// General audio.
    Audio,
}

/// Encoder settings. `Default` is the reference: 16 kHz mono voip, automatic
/// bitrate, VBR, complexity 9, packets capped at 198 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpusEncoderConfig {
    /// Rate and channels.
    pub format: OpusFormat,
    /// Coding mode preference.
    pub application: Application,
    /// Target bitrate; `None` is libopus's automatic choice (17 kb/s at the
    /// defaults). Capped to what `max_packet_bytes` can carry per 60 ms.
    pub bitrate_bps: Option<u32>,
    /// Hard ceiling on one packet; at most what one TXT string carries
    /// ([`PackLimits::max_opus_packet_bytes`]).
    pub max_packet_bytes: usize,
    /// Constant bitrate instead of VBR (every packet the same size).
    pub cbr: bool,
    /// 0..=10; libopus's default 9.
    pub complexity: u8,
}

impl Default for OpusEncoderConfig {
    fn default() -> Self {
        OpusEncoderConfig {
            format: OpusFormat::default(),
            application: Application::Voip,
            bitrate_bps: None,
            max_packet_bytes: AODNS_MAX_PACKET_BYTES,
            cbr: false,
            complexity: 9,
        }
    }
}

/// Opus encoding or decoding failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpusError {
    /// Not one of 8000, 12000, 16000 Hz.
    #[error("unsupported AoDNS sample rate {hz} Hz (8000, 12000 or 16000)")]
    UnsupportedRate {
        /// The rejected rate.
        hz: u32,
    },
    /// A setting is out of range.
    #[error("invalid Opus setting {name}: {value}")]
    InvalidConfig {
        /// Which setting.
        name: &'static str,
        /// Its value.
        value: u64,
    },
    /// The PCM slice is not exactly one 60 ms frame.
    #[error("PCM frame has {got} samples, expected {expected}")]
    WrongFrameLength {
        /// Samples given.
        got: usize,
        /// Samples per frame (interleaved).
        expected: usize,
    },
    /// The caller's output buffer is too small.
    #[error("output buffer holds {capacity}, needs {needed}")]
    OutputTooSmall {
        /// Needed length.
        needed: usize,
        /// Given length.
        capacity: usize,
    },
    /// The codec produced a packet over the limit (never observed; reported
    /// instead of returning a packet the pack builder would reject).
    #[error("Opus packet of {len} bytes exceeds the {max}-byte limit")]
    PacketTooLarge {
        /// Packet size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The codec rejected the call (corrupt packet, internal limit).
    #[error("opus-rs: {reason}")]
    Codec {
        /// The codec's message.
        reason: &'static str,
    },
}

/// An Opus encoder producing packets that always fit one AoDNS TXT string.
pub struct AodnsOpusEncoder {
    inner: opus_rs::OpusEncoder,
    config: OpusEncoderConfig,
    bitrate_bps: u32,
}

impl std::fmt::Debug for AodnsOpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AodnsOpusEncoder")
            .field("config", &self.config)
            .field("bitrate_bps", &self.bitrate_bps)
            .finish_non_exhaustive()
    }
}

impl AodnsOpusEncoder {
    /// Builds the encoder (allocates its state once).
    pub fn new(config: OpusEncoderConfig) -> Result<Self, OpusError> {
        let max_any = PackLimits::new(255, 255)
            .map(|l| l.max_opus_packet_bytes())
            .unwrap_or(AODNS_MAX_PACKET_BYTES);
        // Below ~3 bytes per frame libopus and opus-rs emit "lost frame" packets.
        if !(8..=max_any).contains(&config.max_packet_bytes) {
            return Err(OpusError::InvalidConfig {
                name: "max_packet_bytes",
                value: config.max_packet_bytes as u64,
            });
        }
        if config.complexity > 10 {
            return Err(OpusError::InvalidConfig {
                name: "complexity",
                value: u64::from(config.complexity),
            });
        }
        // The most a packet of max_packet_bytes every 60 ms can carry.
        let ceiling = (config.max_packet_bytes as u32) * 8 * 1000 / FRAME_MS;
        let requested = config
            .bitrate_bps
            .unwrap_or(config.format.auto_bitrate_bps());
        if requested < 500 {
            return Err(OpusError::InvalidConfig {
                name: "bitrate_bps",
                value: u64::from(requested),
            });
        }
        let bitrate_bps = requested.min(ceiling);
        let application = match config.application {
            Application::Voip => opus_rs::Application::Voip,
            Application::Audio => opus_rs::Application::Audio,
        };
        let mut inner = opus_rs::OpusEncoder::new(
            config.format.rate.hz() as i32,
            config.format.channels.count(),
            application,
        )
        .map_err(|reason| OpusError::Codec { reason })?;
        // bitrate_bps <= 26_933 (202 bytes per 60 ms): fits an i32.
        inner.bitrate_bps = bitrate_bps as i32;
        inner.use_cbr = config.cbr;
        inner.complexity = i32::from(config.complexity);
        inner.use_inband_fec = false;
        inner.packet_loss_perc = 0;
        Ok(AodnsOpusEncoder {
            inner,
            config,
            bitrate_bps,
        })
    }

    /// The settings given to [`AodnsOpusEncoder::new`].
    pub fn config(&self) -> &OpusEncoderConfig {
        &self.config
    }

    /// The bitrate the codec runs at, after the packet-size cap.
    pub fn bitrate_bps(&self) -> u32 {
        self.bitrate_bps
    }

    /// Interleaved samples each call takes (960 for 16 kHz mono).
    pub fn frame_len(&self) -> usize {
        self.config.format.frame_len()
    }

    /// Encodes one 60 ms frame of interleaved s16 PCM into `out` (at least
    /// `max_packet_bytes` long); returns the packet length.
    pub fn encode_i16(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, OpusError> {
        let frame = self.check_frame(pcm.len())?;
        let max = self.config.max_packet_bytes;
        let out = Self::packet_buffer(out, max)?;
        let len = self
            .inner
            .encode_i16(pcm, frame, out)
            .map_err(|reason| OpusError::Codec { reason })?;
        Self::check_len(len, max)
    }

    /// Encodes one 60 ms frame of interleaved f32 PCM (full scale ±1.0) into `out`;
    /// returns the packet length.
    pub fn encode_f32(&mut self, pcm: &[f32], out: &mut [u8]) -> Result<usize, OpusError> {
        let frame = self.check_frame(pcm.len())?;
        let max = self.config.max_packet_bytes;
        let out = Self::packet_buffer(out, max)?;
        let len = self
            .inner
            .encode(pcm, frame, out)
            .map_err(|reason| OpusError::Codec { reason })?;
        Self::check_len(len, max)
    }

    /// Samples per channel, after checking `len` is exactly one frame.
    fn check_frame(&self, len: usize) -> Result<usize, OpusError> {
        let expected = self.frame_len();
        if len != expected {
            return Err(OpusError::WrongFrameLength { got: len, expected });
        }
        Ok(self.config.format.rate.frame_samples())
    }

    /// The first `max` bytes of `out`: the codec's packet budget.
    fn packet_buffer(out: &mut [u8], max: usize) -> Result<&mut [u8], OpusError> {
        let capacity = out.len();
        out.get_mut(..max).ok_or(OpusError::OutputTooSmall {
            needed: max,
            capacity,
        })
    }

    fn check_len(len: usize, max: usize) -> Result<usize, OpusError> {
        if len > max {
            return Err(OpusError::PacketTooLarge { len, max });
        }
        Ok(len)
    }
}

/// An Opus decoder for AoDNS listeners (60 ms frames, f32 output).
pub struct AodnsOpusDecoder {
    inner: opus_rs::OpusDecoder,
    format: OpusFormat,
}

impl std::fmt::Debug for AodnsOpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AodnsOpusDecoder")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl AodnsOpusDecoder {
    /// Builds the decoder (allocates its state once).
    pub fn new(format: OpusFormat) -> Result<Self, OpusError> {
        let inner = opus_rs::OpusDecoder::new(format.rate.hz() as i32, format.channels.count())
            .map_err(|reason| OpusError::Codec { reason })?;
        Ok(AodnsOpusDecoder { inner, format })
    }

    /// The format decoded to.
    pub fn format(&self) -> OpusFormat {
        self.format
    }

    /// Decodes one packet into interleaved f32 PCM; returns samples per channel.
    /// `out` must hold a 60 ms frame ([`OpusFormat::frame_len`]). An empty packet
    /// conceals one lost frame.
    pub fn decode_f32(&mut self, packet: &[u8], out: &mut [f32]) -> Result<usize, OpusError> {
        let needed = self.format.frame_len();
        let capacity = out.len();
        let out = out
            .get_mut(..needed)
            .ok_or(OpusError::OutputTooSmall { needed, capacity })?;
        self.inner
            .decode(packet, self.format.rate.frame_samples(), out)
            .map_err(|reason| OpusError::Codec { reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_format_numbers() {
        let f = OpusFormat::default();
        assert_eq!(f.rate.frame_samples(), 960);
        assert_eq!(f.frame_len(), 960);
        assert_eq!(
            f.auto_bitrate_bps(),
            17_000,
            "aodns.md §8: the encoder reports 17000"
        );
        assert_eq!(OpusRate::Hz8000.frame_samples(), 480);
        assert_eq!(OpusRate::Hz12000.frame_samples(), 720);
        let stereo = OpusFormat {
            rate: OpusRate::Hz8000,
            channels: Channels::Stereo,
        };
        assert_eq!(stereo.frame_len(), 960);
        assert_eq!(stereo.auto_bitrate_bps(), 17_000);
        assert_eq!(AODNS_MAX_PACKET_BYTES, 198);
        assert_eq!(OpusRate::try_from(12_000), Ok(OpusRate::Hz12000));
        assert_eq!(
            OpusRate::try_from(48_000),
            Err(OpusError::UnsupportedRate { hz: 48_000 })
        );
    }

    #[test]
    fn caps_the_bitrate_to_the_packet_ceiling() {
        let enc = AodnsOpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        assert_eq!(enc.bitrate_bps(), 17_000);
        let stereo = OpusEncoderConfig {
            format: OpusFormat {
                rate: OpusRate::Hz16000,
                channels: Channels::Stereo,
            },
            ..OpusEncoderConfig::default()
        };
        // Auto would be 33 kb/s; 198 bytes per 60 ms carry 26.4 kb/s.
        assert_eq!(AodnsOpusEncoder::new(stereo).unwrap().bitrate_bps(), 26_400);
        let high = OpusEncoderConfig {
            bitrate_bps: Some(64_000),
            ..OpusEncoderConfig::default()
        };
        assert_eq!(AodnsOpusEncoder::new(high).unwrap().bitrate_bps(), 26_400);
    }

    #[test]
    fn rejects_bad_settings_and_frames() {
        let bad = |c: OpusEncoderConfig| AodnsOpusEncoder::new(c).unwrap_err();
        let d = OpusEncoderConfig::default();
        assert!(matches!(
            bad(OpusEncoderConfig {
                max_packet_bytes: 203,
                ..d
            }),
            OpusError::InvalidConfig { .. }
        ));
        assert!(matches!(
            bad(OpusEncoderConfig {
                max_packet_bytes: 7,
                ..d
            }),
            OpusError::InvalidConfig { .. }
        ));
        assert!(matches!(
            bad(OpusEncoderConfig {
                complexity: 11,
                ..d
            }),
            OpusError::InvalidConfig { .. }
        ));
        assert!(matches!(
            bad(OpusEncoderConfig {
                bitrate_bps: Some(100),
                ..d
            }),
            OpusError::InvalidConfig { .. }
        ));

        let mut enc = AodnsOpusEncoder::new(d).unwrap();
        let mut out = [0u8; 198];
        assert_eq!(
            enc.encode_i16(&[0; 959], &mut out),
            Err(OpusError::WrongFrameLength {
                got: 959,
                expected: 960
            })
        );
        assert_eq!(
            enc.encode_f32(&[0.0; 960], &mut out[..100]),
            Err(OpusError::OutputTooSmall {
                needed: 198,
                capacity: 100
            })
        );
    }

    #[test]
    fn round_trips_a_tone_through_opus_rs() {
        let mut enc = AodnsOpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        let mut dec = AodnsOpusDecoder::new(OpusFormat::default()).unwrap();
        let mut packet = [0u8; 256];
        let mut pcm = vec![0.0f32; 960];
        let mut decoded = vec![0.0f32; 960];
        let mut energy_in = 0.0f64;
        let mut energy_out = 0.0f64;
        for frame in 0..50 {
            for (i, s) in pcm.iter_mut().enumerate() {
                let t = (frame * 960 + i) as f32 / 16_000.0;
                *s = 0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin();
            }
            let len = enc.encode_f32(&pcm, &mut packet).unwrap();
            assert!((2..=198).contains(&len), "{len}");
            assert_eq!(
                packet[0], 0x58,
                "TOC: SILK wideband 60 ms mono, as libopus (aodns.md §8)"
            );
            assert_eq!(dec.decode_f32(&packet[..len], &mut decoded).unwrap(), 960);
            if frame >= 10 {
                energy_in += pcm.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
                energy_out += decoded.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
            }
        }
        let gain_db = 10.0 * (energy_out / energy_in).log10();
        assert!(
            gain_db.abs() < 1.0,
            "level through the codec changed by {gain_db:.2} dB"
        );
        // A lost frame is concealed, not an error.
        assert_eq!(dec.decode_f32(&[], &mut decoded).unwrap(), 960);
    }

    #[test]
    fn decodes_the_reference_libopus_silence_packet() {
        // aodns.md §11: first libopus 1.3.1 packet for 960 zero samples; it decodes
        // to 960 samples of |x| <= 1 LSB.
        let packet = [
            0x58, 0x02, 0xf9, 0x30, 0x4d, 0xbb, 0x0d, 0xe5, 0xe3, 0x92, 0x09, 0x89, 0x38, 0xeb,
            0xca, 0xe1, 0xb1, 0xd1, 0xdd, 0x85,
        ];
        let mut dec = AodnsOpusDecoder::new(OpusFormat::default()).unwrap();
        let mut out = vec![1.0f32; 960];
        assert_eq!(dec.decode_f32(&packet, &mut out).unwrap(), 960);
        let peak = out.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        assert!(peak <= 1.0 / 32768.0, "peak {peak}");
    }
}
