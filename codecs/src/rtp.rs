//! RTP (RFC 3550 §5.1) fixed header: zero-copy parse and caller-buffer write.
//!
//! This is the AES67 media path (aes67.md §2): every received packet is parsed here and
//! every sent packet's header is written here, so neither direction allocates. Parsing
//! returns a borrowed [`RtpPacket`] view whose `payload` already has CSRCs, the header
//! extension and padding stripped. AES67 senders use none of those (12-byte header,
//! `0x80` first byte), but a receiver must still skip them correctly when a third-party
//! sender adds them.
//!
//! Why not the `rtp` crate (webrtc-rs): its `Packet`/`Header` own a `Vec<u32>` of CSRCs,
//! a `Vec<Extension>` and a `Bytes` payload, so unmarshalling from a `&[u8]` allocates per
//! packet, and building a packet to send needs an owned `Bytes` payload (see
//! docs/DECISIONS.md).

use std::fmt;

/// The only RTP version on the wire (RFC 3550 §5.1, `V=2`).
pub const RTP_VERSION: u8 = 2;

/// Length of the fixed header without CSRCs or extension (RFC 3550 §5.1).
pub const FIXED_HEADER_LEN: usize = 12;

/// Errors from parsing or writing RTP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// The datagram ends before a part of the header that it announces.
    #[error("RTP packet too short: {len} bytes, header needs {needed}")]
    TooShort {
        /// Bytes available.
        len: usize,
        /// Bytes the header (fixed part, CSRCs, extension) needs.
        needed: usize,
    },
    /// The version field is not 2.
    #[error("unsupported RTP version {version}")]
    BadVersion {
        /// The version bits found.
        version: u8,
    },
    /// The P bit is set but the padding count is 0 or larger than the payload.
    #[error("bad RTP padding count {count} with {available} payload bytes")]
    BadPadding {
        /// The padding count from the last octet.
        count: usize,
        /// Payload bytes (including the padding) after the header.
        available: usize,
    },
    /// The output buffer cannot hold the packet.
    #[error("output buffer too small: need {needed} bytes, have {capacity}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        capacity: usize,
    },
    /// More than 15 CSRCs or an extension longer than 65535 words was asked for.
    #[error("RTP field out of range: {field}")]
    FieldOutOfRange {
        /// Which field.
        field: &'static str,
    },
}

/// An RTP payload type: 7 bits (RFC 3550 §5.1). AES67 uses a dynamic type (96..=127)
/// announced in the SDP `a=rtpmap` (aes67.md §2); 98 is the common default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayloadType(u8);

impl PayloadType {
    /// PT 98, the value aes67-linux-daemon and most AES67 senders use (aes67.md §2).
    pub const AES67_DEFAULT: PayloadType = PayloadType(98);

    /// Validates a 7-bit payload type.
    pub const fn new(pt: u8) -> Option<PayloadType> {
        if pt <= 0x7f {
            Some(PayloadType(pt))
        } else {
            None
        }
    }

    /// The numeric value, 0..=127.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Whether the value lies in the dynamic range 96..=127 (RFC 3551 §6).
    pub const fn is_dynamic(self) -> bool {
        self.0 >= 96
    }
}

/// The payload type did not fit in 7 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("RTP payload type {value} out of range 0..=127")]
pub struct InvalidPayloadType {
    /// The rejected value.
    pub value: u8,
}

impl TryFrom<u8> for PayloadType {
    type Error = InvalidPayloadType;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        PayloadType::new(value).ok_or(InvalidPayloadType { value })
    }
}

impl fmt::Display for PayloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The fields of the fixed header that a sender chooses (RFC 3550 §5.1).
///
/// Writing it produces exactly the 12-byte AES67 header of aes67.md §2: `V=2, P=0, X=0,
/// CC=0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit (receivers ignore it for AES67, aes67.md §2).
    pub marker: bool,
    /// Payload type.
    pub payload_type: PayloadType,
    /// Sequence number, +1 per packet, wrapping.
    pub sequence: u16,
    /// Media-clock time of the first sample in the packet (aes67.md §5).
    pub timestamp: u32,
    /// Synchronisation source, fixed for the life of a stream.
    pub ssrc: u32,
}

impl RtpHeader {
    /// Writes the 12-byte fixed header into `out` and returns 12.
    pub fn write_to(&self, out: &mut [u8]) -> Result<usize, RtpError> {
        let Some(dst) = out.get_mut(..FIXED_HEADER_LEN) else {
            return Err(RtpError::BufferTooSmall {
                needed: FIXED_HEADER_LEN,
                capacity: out.len(),
            });
        };
        write_fixed(dst, self, false, false, 0);
        Ok(FIXED_HEADER_LEN)
    }
}

fn write_fixed(dst: &mut [u8], h: &RtpHeader, padding: bool, extension: bool, cc: u8) {
    dst[0] = (RTP_VERSION << 6) | (u8::from(padding) << 5) | (u8::from(extension) << 4) | cc;
    dst[1] = (u8::from(h.marker) << 7) | h.payload_type.get();
    dst[2..4].copy_from_slice(&h.sequence.to_be_bytes());
    dst[4..8].copy_from_slice(&h.timestamp.to_be_bytes());
    dst[8..12].copy_from_slice(&h.ssrc.to_be_bytes());
}

/// A header extension (RFC 3550 §5.3.1), kept opaque: AES67 defines none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpExtension<'a> {
    /// The 16-bit "defined by profile" field (0xBEDE for RFC 8285 one-byte elements).
    pub profile: u16,
    /// The extension body, a multiple of 4 bytes.
    pub data: &'a [u8],
}

/// A parsed RTP packet borrowing the datagram it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// The fixed-header fields.
    pub header: RtpHeader,
    /// Whether the P bit was set (the padding is already removed from `payload`).
    pub padding: bool,
    /// Raw CSRC list, 4 bytes per entry (see [`RtpPacket::csrcs`]).
    csrc_bytes: &'a [u8],
    /// The header extension, if the X bit was set.
    pub extension: Option<RtpExtension<'a>>,
    /// The payload, without padding.
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// Parses one datagram. Never panics; allocates nothing.
    pub fn parse(buf: &'a [u8]) -> Result<RtpPacket<'a>, RtpError> {
        if buf.len() < FIXED_HEADER_LEN {
            return Err(RtpError::TooShort {
                len: buf.len(),
                needed: FIXED_HEADER_LEN,
            });
        }
        let b0 = buf[0];
        let version = b0 >> 6;
        if version != RTP_VERSION {
            return Err(RtpError::BadVersion { version });
        }
        let padding = b0 & 0x20 != 0;
        let has_extension = b0 & 0x10 != 0;
        let cc = usize::from(b0 & 0x0f);
        let b1 = buf[1];
        let header = RtpHeader {
            marker: b1 & 0x80 != 0,
            payload_type: PayloadType(b1 & 0x7f),
            sequence: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        };

        let mut pos = FIXED_HEADER_LEN + 4 * cc;
        let csrc_bytes = buf.get(FIXED_HEADER_LEN..pos).ok_or(RtpError::TooShort {
            len: buf.len(),
            needed: pos,
        })?;

        let extension = if has_extension {
            // RFC 3550 §5.3.1: 16-bit profile, 16-bit length in 32-bit words, body.
            let words = buf.get(pos..pos + 4).ok_or(RtpError::TooShort {
                len: buf.len(),
                needed: pos + 4,
            })?;
            let profile = u16::from_be_bytes([words[0], words[1]]);
            let body_len = 4 * usize::from(u16::from_be_bytes([words[2], words[3]]));
            let start = pos + 4;
            let data = buf.get(start..start + body_len).ok_or(RtpError::TooShort {
                len: buf.len(),
                needed: start + body_len,
            })?;
            pos = start + body_len;
            Some(RtpExtension { profile, data })
        } else {
            None
        };

        // `pos <= buf.len()` holds here: every step above was bounds-checked.
        let mut payload = &buf[pos..];
        if padding {
            // RFC 3550 §5.1: the last octet counts the padding octets, itself included.
            let count = payload.last().map_or(0, |&c| usize::from(c));
            if count == 0 || count > payload.len() {
                return Err(RtpError::BadPadding {
                    count,
                    available: payload.len(),
                });
            }
            payload = &payload[..payload.len() - count];
        }

        Ok(RtpPacket {
            header,
            padding,
            csrc_bytes,
            extension,
            payload,
        })
    }

    /// Number of CSRC entries.
    pub fn csrc_count(&self) -> usize {
        self.csrc_bytes.len() / 4
    }

    /// The contributing sources, in order.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.csrc_bytes
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// Total bytes [`RtpPacket::write_to`] will produce (no padding is written).
    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER_LEN
            + self.csrc_bytes.len()
            + self.extension.map_or(0, |e| 4 + e.data.len())
            + self.payload.len()
    }

    /// Writes the packet back: header, CSRCs, extension and payload, without padding
    /// (the P bit is written as 0). Returns the bytes written.
    pub fn write_to(&self, out: &mut [u8]) -> Result<usize, RtpError> {
        let needed = self.encoded_len();
        let Some(dst) = out.get_mut(..needed) else {
            return Err(RtpError::BufferTooSmall {
                needed,
                capacity: out.len(),
            });
        };
        let cc = self.csrc_count();
        if cc > 15 {
            return Err(RtpError::FieldOutOfRange {
                field: "csrc count",
            });
        }
        // cc <= 15 was just checked, so the cast is lossless.
        write_fixed(dst, &self.header, false, self.extension.is_some(), cc as u8);
        let mut pos = FIXED_HEADER_LEN;
        dst[pos..pos + self.csrc_bytes.len()].copy_from_slice(self.csrc_bytes);
        pos += self.csrc_bytes.len();
        if let Some(ext) = self.extension {
            if !ext.data.len().is_multiple_of(4) {
                return Err(RtpError::FieldOutOfRange {
                    field: "extension length",
                });
            }
            let words =
                u16::try_from(ext.data.len() / 4).map_err(|_| RtpError::FieldOutOfRange {
                    field: "extension length",
                })?;
            dst[pos..pos + 2].copy_from_slice(&ext.profile.to_be_bytes());
            dst[pos + 2..pos + 4].copy_from_slice(&words.to_be_bytes());
            pos += 4;
            dst[pos..pos + ext.data.len()].copy_from_slice(ext.data);
            pos += ext.data.len();
        }
        dst[pos..pos + self.payload.len()].copy_from_slice(self.payload);
        Ok(needed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// aes67.md §12.3: L24 stereo, 2 frames, PT 98, seq 1, ts 0xFB038000, SSRC 0x12345678.
    const SHEET_12_3: [u8; 24] = [
        0x80, 0x62, 0x00, 0x01, 0xfb, 0x03, 0x80, 0x00, 0x12, 0x34, 0x56, 0x78, // header
        0x20, 0x00, 0x00, 0xe0, 0x00, 0x00, // frame 0
        0x00, 0x00, 0x01, 0xff, 0xff, 0xff, // frame 1
    ];

    #[test]
    fn parses_sheet_vector_12_3() {
        let p = RtpPacket::parse(&SHEET_12_3).unwrap();
        assert_eq!(p.header.payload_type.get(), 98);
        assert!(!p.header.marker);
        assert_eq!(p.header.sequence, 1);
        assert_eq!(p.header.timestamp, 4_211_310_592);
        assert_eq!(p.header.ssrc, 0x1234_5678);
        assert_eq!(p.csrc_count(), 0);
        assert!(p.extension.is_none());
        assert!(!p.padding);
        assert_eq!(p.payload, &SHEET_12_3[12..]);
    }

    #[test]
    fn writes_sheet_vector_12_3_header() {
        let h = RtpHeader {
            marker: false,
            payload_type: PayloadType::AES67_DEFAULT,
            sequence: 1,
            timestamp: 0xFB03_8000,
            ssrc: 0x1234_5678,
        };
        let mut out = [0u8; 12];
        assert_eq!(h.write_to(&mut out).unwrap(), 12);
        assert_eq!(out, SHEET_12_3[..12]);
        // And the full-packet writer reproduces the whole vector.
        let p = RtpPacket::parse(&SHEET_12_3).unwrap();
        let mut out = [0u8; 64];
        let n = p.write_to(&mut out).unwrap();
        assert_eq!(&out[..n], &SHEET_12_3[..]);
    }

    #[test]
    fn marker_bit_sets_top_bit_of_byte_1() {
        let h = RtpHeader {
            marker: true,
            payload_type: PayloadType::new(97).unwrap(),
            sequence: 0xffff,
            timestamp: 0,
            ssrc: 0,
        };
        let mut out = [0u8; 12];
        h.write_to(&mut out).unwrap();
        assert_eq!(out[1], 0x80 | 97);
        assert_eq!(&out[2..4], &[0xff, 0xff]);
    }

    #[test]
    fn skips_csrcs_extension_and_padding() {
        // V=2 P=1 X=1 CC=2, M=1 PT=96, seq 7, ts 9, ssrc 1; 2 CSRCs; extension profile
        // 0xBEDE with one word; payload "abc"; 5 bytes of padding (count 5).
        let mut pkt = vec![0xb2, 0xe0, 0, 7, 0, 0, 0, 9, 0, 0, 0, 1];
        pkt.extend_from_slice(&[0, 0, 0, 0x11, 0, 0, 0, 0x22]);
        pkt.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
        pkt.extend_from_slice(b"abc");
        pkt.extend_from_slice(&[0, 0, 0, 0, 5]);
        let p = RtpPacket::parse(&pkt).unwrap();
        assert!(p.header.marker);
        assert_eq!(p.header.payload_type.get(), 96);
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![0x11, 0x22]);
        let ext = p.extension.unwrap();
        assert_eq!(ext.profile, 0xbede);
        assert_eq!(ext.data, &[0x10, 0xaa, 0, 0]);
        assert!(p.padding);
        assert_eq!(p.payload, b"abc");

        // Written back without padding, re-parsed to the same fields.
        let mut out = [0u8; 64];
        let n = p.write_to(&mut out).unwrap();
        assert_eq!(n, pkt.len() - 5);
        let q = RtpPacket::parse(&out[..n]).unwrap();
        assert_eq!(q.header, p.header);
        assert_eq!(q.csrcs().collect::<Vec<_>>(), vec![0x11, 0x22]);
        assert_eq!(q.extension, p.extension);
        assert_eq!(q.payload, b"abc");
        assert!(!q.padding);
    }

    #[test]
    fn rejects_truncated_and_malformed() {
        assert_eq!(
            RtpPacket::parse(&SHEET_12_3[..11]),
            Err(RtpError::TooShort {
                len: 11,
                needed: 12
            })
        );
        let mut v1 = SHEET_12_3;
        v1[0] = 0x40;
        assert_eq!(
            RtpPacket::parse(&v1),
            Err(RtpError::BadVersion { version: 1 })
        );
        // CC=3 but only 4 bytes follow the fixed header.
        let mut cc = SHEET_12_3[..16].to_vec();
        cc[0] = 0x83;
        assert_eq!(
            RtpPacket::parse(&cc),
            Err(RtpError::TooShort {
                len: 16,
                needed: 24
            })
        );
        // X=1 with an extension claiming 255 words.
        let mut ext = SHEET_12_3.to_vec();
        ext[0] = 0x90;
        ext[12..16].copy_from_slice(&[0, 0, 0, 0xff]);
        assert_eq!(
            RtpPacket::parse(&ext),
            Err(RtpError::TooShort {
                len: 24,
                needed: 16 + 1020
            })
        );
        // P=1 with a zero count, and with a count larger than the payload.
        let mut pad = SHEET_12_3.to_vec();
        pad[0] = 0xa0;
        *pad.last_mut().unwrap() = 0;
        assert!(matches!(
            RtpPacket::parse(&pad),
            Err(RtpError::BadPadding { count: 0, .. })
        ));
        *pad.last_mut().unwrap() = 13;
        assert!(matches!(
            RtpPacket::parse(&pad),
            Err(RtpError::BadPadding { count: 13, .. })
        ));
        // P=1 with no payload at all.
        let mut empty = SHEET_12_3[..12].to_vec();
        empty[0] = 0xa0;
        assert!(matches!(
            RtpPacket::parse(&empty),
            Err(RtpError::BadPadding { .. })
        ));
    }

    #[test]
    fn write_reports_small_buffer() {
        let h = RtpHeader {
            marker: false,
            payload_type: PayloadType::AES67_DEFAULT,
            sequence: 0,
            timestamp: 0,
            ssrc: 0,
        };
        assert_eq!(
            h.write_to(&mut [0u8; 11]),
            Err(RtpError::BufferTooSmall {
                needed: 12,
                capacity: 11
            })
        );
    }

    #[test]
    fn payload_type_range() {
        assert_eq!(PayloadType::new(127).map(PayloadType::get), Some(127));
        assert!(PayloadType::new(128).is_none());
        assert_eq!(
            PayloadType::try_from(200),
            Err(InvalidPayloadType { value: 200 })
        );
        assert!(PayloadType::AES67_DEFAULT.is_dynamic());
        assert!(!PayloadType::new(0).unwrap().is_dynamic());
    }
}
