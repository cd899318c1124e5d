//! PTPv2 (IEEE 1588-2008) messages and a sans-IO end-to-end follower (aes67.md §11).
//!
//! An AES67 sender stamps RTP with the PTP media clock (aes67.md §5). When no linuxptp
//! runs on the host, the gateway follows the grandmaster itself: [`Follower`] is fed the
//! Announce, Sync, Follow_Up and Delay_Resp messages it receives (with the local receive
//! time, a parameter, never read here), tells the driver when to send a Delay_Req and
//! gives it the bytes, and maintains a local-clock -> PTP-time mapping (offset, mean path
//! delay, rate ratio) plus the grandmaster identity that goes into
//! `a=ts-refclk:ptp=IEEE1588-2008:<gmid>:<domain>` (aes67.md §6).
//!
//! Only the five message types an E2E follower needs are decoded (aes67.md §11 bodies);
//! Pdelay, Signaling and Management are reported as [`PtpError::Unsupported`]. PTPv1
//! (Dante native clocking) is rejected by the version check.
//!
//! Times: local times are `u64` nanoseconds of whatever clock the driver stamps with
//! (kernel `SO_TIMESTAMPNS` realtime, or monotonic); PTP times are [`PtpTimestamp`]s or
//! `i128` nanoseconds since the PTP epoch (TAI when the grandmaster sets `ptpTimescale`).

mod follower;

pub use follower::{
    Follower, FollowerConfig, FollowerStats, GrandmasterInfo, LockState, TimeMapping,
};

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// UDP port of event messages (Sync, Delay_Req), aes67.md §11.
pub const EVENT_PORT: u16 = 319;
/// UDP port of general messages (Follow_Up, Delay_Resp, Announce), aes67.md §11.
pub const GENERAL_PORT: u16 = 320;
/// The primary IPv4 PTP multicast group, aes67.md §11.
pub const PRIMARY_MULTICAST: Ipv4Addr = Ipv4Addr::new(224, 0, 1, 129);
/// Length of the common header (aes67.md §11).
pub const HEADER_LEN: usize = 34;
/// Length of Sync, Delay_Req and Follow_Up messages.
pub const SYNC_LEN: usize = 44;
/// Length of a Delay_Resp message.
pub const DELAY_RESP_LEN: usize = 54;
/// Length of an Announce message without TLVs.
pub const ANNOUNCE_LEN: usize = 64;

/// Errors decoding or encoding PTP messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PtpError {
    /// Fewer bytes than the header or the body needs.
    #[error("PTP message too short: {len} bytes, need {needed}")]
    TooShort {
        /// Bytes available (or announced by messageLength).
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// versionPTP is not 2 (PTPv1 from Dante, or garbage).
    #[error("unsupported PTP version {version}")]
    UnsupportedVersion {
        /// The version nibble found.
        version: u8,
    },
    /// A message type this codec does not decode (Pdelay, Signaling, Management, reserved).
    #[error("unsupported PTP message type {message_type:#x}")]
    Unsupported {
        /// The messageType nibble.
        message_type: u8,
    },
    /// The output buffer cannot hold the message.
    #[error("output buffer too small: need {needed} bytes, have {capacity}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        capacity: usize,
    },
    /// A field does not fit its wire width (48-bit seconds, 4-bit transportSpecific).
    #[error("PTP field out of range: {field}")]
    FieldOutOfRange {
        /// Which field.
        field: &'static str,
    },
}

/// An 8-byte PTP clock identity (EUI-64), e.g. a grandmaster identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ClockIdentity(pub [u8; 8]);

impl ClockIdentity {
    /// The identity derived from a MAC address: FF-FE inserted in the middle (aes67.md §6).
    pub const fn from_mac(mac: [u8; 6]) -> ClockIdentity {
        ClockIdentity([mac[0], mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]])
    }
}

/// Formats as dash-separated uppercase hex, the `a=ts-refclk` form (aes67.md §6):
/// `00-1D-C1-FF-FE-50-36-33`.
impl fmt::Display for ClockIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// The text was not eight dash-separated hex bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PTP clock identity {text:?} (want eight dash-separated hex bytes)")]
pub struct InvalidClockIdentity {
    /// The rejected text.
    pub text: String,
}

/// Parses `00-1D-C1-FF-FE-50-36-33` (case-insensitive; `:` separators are accepted too).
impl FromStr for ClockIdentity {
    type Err = InvalidClockIdentity;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || InvalidClockIdentity { text: s.to_owned() };
        let mut out = [0u8; 8];
        let mut parts = s.split(['-', ':']);
        for slot in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(ClockIdentity(out))
    }
}

/// A port identity: clock identity plus port number (10 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PortIdentity {
    /// The clock.
    pub clock: ClockIdentity,
    /// The port number on that clock (1-based for real ports).
    pub port: u16,
}

/// A PTP timestamp: 48-bit seconds and 32-bit nanoseconds (aes67.md §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PtpTimestamp {
    /// Seconds since the PTP epoch; only the low 48 bits go on the wire.
    pub seconds: u64,
    /// Nanoseconds; below 10^9 in well-formed messages (decoding does not enforce it).
    pub nanoseconds: u32,
}

impl PtpTimestamp {
    /// Largest seconds value the 48-bit field holds.
    pub const MAX_SECONDS: u64 = (1 << 48) - 1;

    /// Splits nanoseconds since the epoch.
    pub const fn from_nanos(ns: u64) -> PtpTimestamp {
        PtpTimestamp {
            seconds: ns / 1_000_000_000,
            nanoseconds: (ns % 1_000_000_000) as u32,
        }
    }

    /// Nanoseconds since the epoch (exact for every decodable value).
    pub const fn as_nanos(self) -> i128 {
        self.seconds as i128 * 1_000_000_000 + self.nanoseconds as i128
    }

    fn read(b: &[u8]) -> PtpTimestamp {
        let seconds = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]);
        let nanoseconds = u32::from_be_bytes([b[6], b[7], b[8], b[9]]);
        PtpTimestamp {
            seconds,
            nanoseconds,
        }
    }

    fn write(self, b: &mut [u8]) -> Result<(), PtpError> {
        if self.seconds > Self::MAX_SECONDS {
            return Err(PtpError::FieldOutOfRange {
                field: "timestamp seconds",
            });
        }
        b[..6].copy_from_slice(&self.seconds.to_be_bytes()[2..]);
        b[6..10].copy_from_slice(&self.nanoseconds.to_be_bytes());
        Ok(())
    }
}

/// PTP messageType values (aes67.md §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageType {
    /// 0x0, event.
    Sync,
    /// 0x1, event.
    DelayReq,
    /// 0x8, general.
    FollowUp,
    /// 0x9, general.
    DelayResp,
    /// 0xB, general.
    Announce,
}

impl MessageType {
    /// The 4-bit wire value.
    pub const fn nibble(self) -> u8 {
        match self {
            MessageType::Sync => 0x0,
            MessageType::DelayReq => 0x1,
            MessageType::FollowUp => 0x8,
            MessageType::DelayResp => 0x9,
            MessageType::Announce => 0xB,
        }
    }

    /// The decodable type for a wire value.
    pub const fn from_nibble(n: u8) -> Option<MessageType> {
        match n {
            0x0 => Some(MessageType::Sync),
            0x1 => Some(MessageType::DelayReq),
            0x8 => Some(MessageType::FollowUp),
            0x9 => Some(MessageType::DelayResp),
            0xB => Some(MessageType::Announce),
            _ => None,
        }
    }

    /// The deprecated controlField value written for this type (aes67.md §11).
    const fn control(self) -> u8 {
        match self {
            MessageType::Sync => 0,
            MessageType::DelayReq => 1,
            MessageType::FollowUp => 2,
            MessageType::DelayResp => 3,
            MessageType::Announce => 5,
        }
    }
}

/// The 16-bit flagField, byte 6 in the high half (aes67.md §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u16);

impl Flags {
    /// alternateMasterFlag (byte 6, 0x01).
    pub const ALTERNATE_MASTER: u16 = 0x0100;
    /// twoStepFlag (byte 6, 0x02): t1 comes in the Follow_Up.
    pub const TWO_STEP: u16 = 0x0200;
    /// unicastFlag (byte 6, 0x04).
    pub const UNICAST: u16 = 0x0400;
    /// leap61 (byte 7, 0x01).
    pub const LEAP61: u16 = 0x0001;
    /// leap59 (byte 7, 0x02).
    pub const LEAP59: u16 = 0x0002;
    /// currentUtcOffsetValid (byte 7, 0x04).
    pub const UTC_OFFSET_VALID: u16 = 0x0004;
    /// ptpTimescale (byte 7, 0x08): the grandmaster's time is TAI.
    pub const PTP_TIMESCALE: u16 = 0x0008;
    /// timeTraceable (byte 7, 0x10).
    pub const TIME_TRACEABLE: u16 = 0x0010;
    /// frequencyTraceable (byte 7, 0x20).
    pub const FREQUENCY_TRACEABLE: u16 = 0x0020;

    /// Whether every bit of `mask` is set.
    pub const fn contains(self, mask: u16) -> bool {
        self.0 & mask == mask
    }
}

/// The common header minus what is derived on encode (messageLength, controlField,
/// reserved bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// transportSpecific, high nibble of byte 0 (0 for UDP/IPv4 E2E).
    pub transport_specific: u8,
    /// domainNumber (0 for AES67/Dante).
    pub domain: u8,
    /// flagField.
    pub flags: Flags,
    /// correctionField: nanoseconds × 2^16.
    pub correction: i64,
    /// sourcePortIdentity.
    pub source_port: PortIdentity,
    /// sequenceId.
    pub sequence_id: u16,
    /// logMessageInterval (log2 seconds; 0x7F = unspecified).
    pub log_message_interval: i8,
}

impl Header {
    /// correctionField converted to whole nanoseconds (rounded towards -infinity).
    pub const fn correction_ns(&self) -> i64 {
        self.correction >> 16
    }
}

/// The body of an Announce (aes67.md §11 offsets 34..64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// originTimestamp.
    pub origin_timestamp: PtpTimestamp,
    /// currentUtcOffset (TAI - UTC, seconds; 37 at present).
    pub current_utc_offset: i16,
    /// grandmasterPriority1 (lower wins).
    pub priority1: u8,
    /// grandmasterClockQuality.clockClass.
    pub clock_class: u8,
    /// grandmasterClockQuality.clockAccuracy.
    pub clock_accuracy: u8,
    /// grandmasterClockQuality.offsetScaledLogVariance.
    pub offset_scaled_log_variance: u16,
    /// grandmasterPriority2.
    pub priority2: u8,
    /// grandmasterIdentity: the GMID for `a=ts-refclk`.
    pub grandmaster_identity: ClockIdentity,
    /// stepsRemoved.
    pub steps_removed: u16,
    /// timeSource.
    pub time_source: u8,
}

/// Message bodies this codec handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Sync: originTimestamp (t1 for one-step masters, approximate for two-step).
    Sync {
        /// originTimestamp.
        origin_timestamp: PtpTimestamp,
    },
    /// Delay_Req: originTimestamp (may be 0).
    DelayReq {
        /// originTimestamp.
        origin_timestamp: PtpTimestamp,
    },
    /// Follow_Up: the precise t1 of the two-step Sync with the same sequenceId.
    FollowUp {
        /// preciseOriginTimestamp.
        precise_origin_timestamp: PtpTimestamp,
    },
    /// Delay_Resp: t4 and who asked.
    DelayResp {
        /// receiveTimestamp (t4).
        receive_timestamp: PtpTimestamp,
        /// requestingPortIdentity.
        requesting_port: PortIdentity,
    },
    /// Announce.
    Announce(Announce),
}

impl Body {
    /// The messageType of this body.
    pub const fn message_type(&self) -> MessageType {
        match self {
            Body::Sync { .. } => MessageType::Sync,
            Body::DelayReq { .. } => MessageType::DelayReq,
            Body::FollowUp { .. } => MessageType::FollowUp,
            Body::DelayResp { .. } => MessageType::DelayResp,
            Body::Announce(_) => MessageType::Announce,
        }
    }

    /// messageLength of a message with this body (no TLVs).
    pub const fn encoded_len(&self) -> usize {
        match self {
            Body::Sync { .. } | Body::DelayReq { .. } | Body::FollowUp { .. } => SYNC_LEN,
            Body::DelayResp { .. } => DELAY_RESP_LEN,
            Body::Announce(_) => ANNOUNCE_LEN,
        }
    }
}

/// A decoded PTPv2 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// The common header.
    pub header: Header,
    /// The type-specific body.
    pub body: Body,
}

fn read_port(b: &[u8]) -> PortIdentity {
    let mut clock = [0u8; 8];
    clock.copy_from_slice(&b[..8]);
    PortIdentity {
        clock: ClockIdentity(clock),
        port: u16::from_be_bytes([b[8], b[9]]),
    }
}

fn write_port(p: &PortIdentity, b: &mut [u8]) {
    b[..8].copy_from_slice(&p.clock.0);
    b[8..10].copy_from_slice(&p.port.to_be_bytes());
}

impl Message {
    /// Decodes one PTPv2 datagram. Bytes beyond messageLength (TLVs, padding) are
    /// ignored. Never panics.
    pub fn decode(buf: &[u8]) -> Result<Message, PtpError> {
        if buf.len() < HEADER_LEN {
            return Err(PtpError::TooShort {
                len: buf.len(),
                needed: HEADER_LEN,
            });
        }
        let version = buf[1] & 0x0f;
        if version != 2 {
            return Err(PtpError::UnsupportedVersion { version });
        }
        let nibble = buf[0] & 0x0f;
        let message_type = MessageType::from_nibble(nibble).ok_or(PtpError::Unsupported {
            message_type: nibble,
        })?;
        let declared = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        let needed = match message_type {
            MessageType::Sync | MessageType::DelayReq | MessageType::FollowUp => SYNC_LEN,
            MessageType::DelayResp => DELAY_RESP_LEN,
            MessageType::Announce => ANNOUNCE_LEN,
        };
        if declared < needed {
            return Err(PtpError::TooShort {
                len: declared,
                needed,
            });
        }
        if buf.len() < declared {
            return Err(PtpError::TooShort {
                len: buf.len(),
                needed: declared,
            });
        }
        let header = Header {
            transport_specific: buf[0] >> 4,
            domain: buf[4],
            flags: Flags(u16::from_be_bytes([buf[6], buf[7]])),
            correction: i64::from_be_bytes([
                buf[8], buf[9], buf[10], buf[11], buf[12], buf[13], buf[14], buf[15],
            ]),
            source_port: read_port(&buf[20..30]),
            sequence_id: u16::from_be_bytes([buf[30], buf[31]]),
            log_message_interval: i8::from_be_bytes([buf[33]]),
        };
        let ts = PtpTimestamp::read(&buf[34..44]);
        let body = match message_type {
            MessageType::Sync => Body::Sync {
                origin_timestamp: ts,
            },
            MessageType::DelayReq => Body::DelayReq {
                origin_timestamp: ts,
            },
            MessageType::FollowUp => Body::FollowUp {
                precise_origin_timestamp: ts,
            },
            MessageType::DelayResp => Body::DelayResp {
                receive_timestamp: ts,
                requesting_port: read_port(&buf[44..54]),
            },
            MessageType::Announce => {
                let mut gm = [0u8; 8];
                gm.copy_from_slice(&buf[53..61]);
                Body::Announce(Announce {
                    origin_timestamp: ts,
                    current_utc_offset: i16::from_be_bytes([buf[44], buf[45]]),
                    priority1: buf[47],
                    clock_class: buf[48],
                    clock_accuracy: buf[49],
                    offset_scaled_log_variance: u16::from_be_bytes([buf[50], buf[51]]),
                    priority2: buf[52],
                    grandmaster_identity: ClockIdentity(gm),
                    steps_removed: u16::from_be_bytes([buf[61], buf[62]]),
                    time_source: buf[63],
                })
            }
        };
        Ok(Message { header, body })
    }

    /// Bytes [`Message::write_to`] produces.
    pub const fn encoded_len(&self) -> usize {
        self.body.encoded_len()
    }

    /// Encodes into `out` (reserved fields zero, controlField from the type, versionPTP
    /// 2) and returns the length.
    pub fn write_to(&self, out: &mut [u8]) -> Result<usize, PtpError> {
        let len = self.encoded_len();
        let Some(b) = out.get_mut(..len) else {
            return Err(PtpError::BufferTooSmall {
                needed: len,
                capacity: out.len(),
            });
        };
        if self.header.transport_specific > 0x0f {
            return Err(PtpError::FieldOutOfRange {
                field: "transportSpecific",
            });
        }
        b.fill(0);
        let h = &self.header;
        let mt = self.body.message_type();
        b[0] = (h.transport_specific << 4) | mt.nibble();
        b[1] = 2;
        // `len` is at most ANNOUNCE_LEN, so it fits u16.
        b[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        b[4] = h.domain;
        b[6..8].copy_from_slice(&h.flags.0.to_be_bytes());
        b[8..16].copy_from_slice(&h.correction.to_be_bytes());
        write_port(&h.source_port, &mut b[20..30]);
        b[30..32].copy_from_slice(&h.sequence_id.to_be_bytes());
        b[32] = mt.control();
        b[33] = h.log_message_interval.to_be_bytes()[0];
        match &self.body {
            Body::Sync { origin_timestamp }
            | Body::DelayReq { origin_timestamp }
            | Body::FollowUp {
                precise_origin_timestamp: origin_timestamp,
            } => origin_timestamp.write(&mut b[34..44])?,
            Body::DelayResp {
                receive_timestamp,
                requesting_port,
            } => {
                receive_timestamp.write(&mut b[34..44])?;
                write_port(requesting_port, &mut b[44..54]);
            }
            Body::Announce(a) => {
                a.origin_timestamp.write(&mut b[34..44])?;
                b[44..46].copy_from_slice(&a.current_utc_offset.to_be_bytes());
                b[47] = a.priority1;
                b[48] = a.clock_class;
                b[49] = a.clock_accuracy;
                b[50..52].copy_from_slice(&a.offset_scaled_log_variance.to_be_bytes());
                b[52] = a.priority2;
                b[53..61].copy_from_slice(&a.grandmaster_identity.0);
                b[61..63].copy_from_slice(&a.steps_removed.to_be_bytes());
                b[63] = a.time_source;
            }
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn gm() -> ClockIdentity {
        "00-1D-C1-FF-FE-12-34-56".parse().unwrap()
    }

    /// An Announce laid out by hand from the aes67.md §11 offset table (not by our
    /// encoder): two-step, ptpTimescale + utcOffsetValid, domain 0, seq 0x0102, log
    /// interval 1, UTC offset 37, priority1 128, class 248, accuracy 0xFE, variance
    /// 0xFFFF, priority2 127, GM 00-1D-C1-FF-FE-12-34-56, steps 0, time source 0xA0.
    const ANNOUNCE_HEX: &str = "
        0b 02 0040 00 00 020c 0000000000000000 00000000
        001dc1fffe123456 0001 0102 05 01
        000000000000 00000000
        0025 00 80 f8 fe ffff 7f 001dc1fffe123456 0000 a0";

    #[test]
    fn decodes_hand_built_announce_by_sheet_offsets() {
        let bytes = hex(ANNOUNCE_HEX);
        assert_eq!(bytes.len(), 64);
        let m = Message::decode(&bytes).unwrap();
        assert_eq!(m.header.domain, 0);
        assert!(m.header.flags.contains(Flags::TWO_STEP));
        assert!(
            m.header
                .flags
                .contains(Flags::PTP_TIMESCALE | Flags::UTC_OFFSET_VALID)
        );
        assert!(!m.header.flags.contains(Flags::UNICAST));
        assert_eq!(
            m.header.source_port,
            PortIdentity {
                clock: gm(),
                port: 1
            }
        );
        assert_eq!(m.header.sequence_id, 0x0102);
        assert_eq!(m.header.log_message_interval, 1);
        let Body::Announce(a) = m.body else {
            panic!("not an announce: {m:?}")
        };
        assert_eq!(a.current_utc_offset, 37);
        assert_eq!(a.priority1, 128);
        assert_eq!(a.clock_class, 248);
        assert_eq!(a.clock_accuracy, 0xfe);
        assert_eq!(a.offset_scaled_log_variance, 0xffff);
        assert_eq!(a.priority2, 127);
        assert_eq!(a.grandmaster_identity, gm());
        assert_eq!(
            a.grandmaster_identity.to_string(),
            "00-1D-C1-FF-FE-12-34-56"
        );
        assert_eq!(a.time_source, 0xa0);
        // Re-encoding reproduces the hand-built bytes exactly.
        let mut out = [0u8; 64];
        assert_eq!(m.write_to(&mut out).unwrap(), 64);
        assert_eq!(out.to_vec(), bytes);
    }

    #[test]
    fn sync_follow_up_delay_resp_layouts() {
        // Sync, two-step, seq 7, t = 1_700_000_000 s + 5 ns, correction 1.5 ns (0x18000).
        let sync = hex("
            00 02 002c 00 00 0200 0000000000018000 00000000
            001dc1fffe123456 0001 0007 00 fd
            00006553f100 00000005");
        let m = Message::decode(&sync).unwrap();
        assert_eq!(m.header.correction_ns(), 1);
        assert_eq!(m.header.log_message_interval, -3);
        assert_eq!(
            m.body,
            Body::Sync {
                origin_timestamp: PtpTimestamp {
                    seconds: 1_700_000_000,
                    nanoseconds: 5
                }
            }
        );
        let mut out = [0u8; 64];
        let n = m.write_to(&mut out).unwrap();
        assert_eq!(&out[..n], &sync[..]);

        // Delay_Resp: t4 = 1 s + 2 ns, requesting port aa..bb/2.
        let resp = hex("
            09 02 0036 00 00 0000 0000000000000000 00000000
            001dc1fffe123456 0001 0009 03 00
            000000000001 00000002 0102030405060708 0002");
        let m = Message::decode(&resp).unwrap();
        assert_eq!(
            m.body,
            Body::DelayResp {
                receive_timestamp: PtpTimestamp {
                    seconds: 1,
                    nanoseconds: 2
                },
                requesting_port: PortIdentity {
                    clock: ClockIdentity([1, 2, 3, 4, 5, 6, 7, 8]),
                    port: 2
                }
            }
        );
        let n = m.write_to(&mut out).unwrap();
        assert_eq!(&out[..n], &resp[..]);

        // Follow_Up and Delay_Req share the Sync layout with controlField 2 and 1.
        let fu = Message {
            header: m.header,
            body: Body::FollowUp {
                precise_origin_timestamp: PtpTimestamp::from_nanos(3_000_000_007),
            },
        };
        let n = fu.write_to(&mut out).unwrap();
        assert_eq!(n, 44);
        assert_eq!(out[0] & 0x0f, 0x8);
        assert_eq!(out[32], 2);
        assert_eq!(&out[34..44], &hex("000000000003 00000007")[..]);
        assert_eq!(Message::decode(&out[..n]).unwrap(), fu);
    }

    #[test]
    fn rejects_ptpv1_short_and_unsupported() {
        // PTPv1 header: versionPTP u16 = 1 at offset 0 (aes67.md §11).
        let mut v1 = vec![0u8; 124];
        v1[1] = 1;
        assert_eq!(
            Message::decode(&v1),
            Err(PtpError::UnsupportedVersion { version: 1 })
        );
        assert_eq!(
            Message::decode(&[0u8; 20]),
            Err(PtpError::TooShort {
                len: 20,
                needed: 34
            })
        );
        let mut pdelay = hex(ANNOUNCE_HEX);
        pdelay[0] = 0x02;
        assert_eq!(
            Message::decode(&pdelay),
            Err(PtpError::Unsupported { message_type: 2 })
        );
        // messageLength larger than the datagram.
        let mut long = hex(ANNOUNCE_HEX);
        long[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(
            Message::decode(&long),
            Err(PtpError::TooShort {
                len: 64,
                needed: 100
            })
        );
        // messageLength smaller than the Announce body.
        let mut small = hex(ANNOUNCE_HEX);
        small[2..4].copy_from_slice(&44u16.to_be_bytes());
        assert_eq!(
            Message::decode(&small),
            Err(PtpError::TooShort {
                len: 44,
                needed: 64
            })
        );
    }

    #[test]
    fn announce_with_trailing_tlv_decodes() {
        let mut bytes = hex(ANNOUNCE_HEX);
        bytes[2..4].copy_from_slice(&76u16.to_be_bytes());
        // PATH_TRACE TLV (type 8, length 8, one identity).
        bytes.extend_from_slice(&hex("0008 0008 001dc1fffe123456"));
        let m = Message::decode(&bytes).unwrap();
        assert!(matches!(m.body, Body::Announce(_)));
    }

    #[test]
    fn clock_identity_text_forms() {
        let id = ClockIdentity::from_mac([0x00, 0x1d, 0xc1, 0x50, 0x36, 0x33]);
        assert_eq!(id.to_string(), "00-1D-C1-FF-FE-50-36-33");
        assert_eq!(
            "00-1d-c1-ff-fe-50-36-33".parse::<ClockIdentity>().unwrap(),
            id
        );
        assert_eq!(
            "00:1D:C1:FF:FE:50:36:33".parse::<ClockIdentity>().unwrap(),
            id
        );
        for bad in [
            "",
            "00-1D-C1-FF-FE-50-36",
            "00-1D-C1-FF-FE-50-36-33-44",
            "0-1D-C1-FF-FE-50-36-333",
            "zz-1D-C1-FF-FE-50-36-33",
        ] {
            assert!(bad.parse::<ClockIdentity>().is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamp_limits() {
        let t = PtpTimestamp {
            seconds: PtpTimestamp::MAX_SECONDS + 1,
            nanoseconds: 0,
        };
        let m = Message {
            header: Header {
                transport_specific: 0,
                domain: 0,
                flags: Flags::default(),
                correction: 0,
                source_port: PortIdentity::default(),
                sequence_id: 0,
                log_message_interval: 0,
            },
            body: Body::Sync {
                origin_timestamp: t,
            },
        };
        assert!(matches!(
            m.write_to(&mut [0u8; 44]),
            Err(PtpError::FieldOutOfRange { .. })
        ));
        assert_eq!(
            PtpTimestamp::from_nanos(1_700_000_000_123_456_789).as_nanos(),
            1_700_000_000_123_456_789
        );
    }
}
