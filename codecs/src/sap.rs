//! SAP (RFC 2974) announcement and deletion packets, and a sans-IO directory of the
//! sessions heard (aes67.md §7).
//!
//! Packet layout (aes67.md §7): flags byte (`0x20` announce, `0x24` delete: V=1, IPv4,
//! no encryption/compression), auth length in 32-bit words, 16-bit msg id hash, the
//! originating source address, optional auth data, then the payload type
//! `application/sdp` + NUL and the SDP. The payload type may be absent when the payload
//! starts with `v=0`; both forms decode. A deletion carries the session's `o=` line.
//!
//! [`SapDirectory`] keys sessions by (origin, msg id hash), records when each was last
//! heard, expires a session after `max(10 × its announcement interval, 1 hour)` of
//! silence (RFC 2974 §4), applies deletions, and replaces a session whose announcer sent
//! a new hash for the same SDP `o=` session (a modification, RFC 2974 §5). Time is a
//! parameter: a `Duration` since any epoch the driver picks.

use crate::sdp::{self, SdpError, SdpInfo};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// SAP UDP port (aes67.md §7).
pub const PORT: u16 = 9875;
/// The group AES67 and Dante devices announce on (aes67.md §7).
pub const AES67_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 255);
/// The payload type string of SDP payloads.
pub const SDP_PAYLOAD_TYPE: &str = "application/sdp";
/// Announcement interval used in practice by AES67 devices (aes67.md §7).
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(30);
/// Minimum listener timeout (RFC 2974 §4: one hour).
pub const MIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// How many times a deletion is sent (aes67-linux-daemon `max_deletions`, aes67.md §7).
pub const DELETION_REPEATS: u32 = 3;
/// Length of the fixed header with an IPv4 origin.
pub const HEADER_LEN_V4: usize = 8;

/// Errors decoding or encoding SAP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SapError {
    /// Fewer bytes than the header, the origin or the auth data need.
    #[error("SAP packet too short: {len} bytes, need {needed}")]
    TooShort {
        /// Bytes available.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// The version field is not 1.
    #[error("unsupported SAP version {version}")]
    BadVersion {
        /// The version bits found.
        version: u8,
    },
    /// The E bit is set: the payload is encrypted.
    #[error("encrypted SAP payloads are not supported")]
    Encrypted,
    /// The C bit is set: the payload is zlib-compressed.
    #[error("compressed SAP payloads are not supported")]
    Compressed,
    /// The payload does not start with `v=0` and has no NUL-terminated payload type.
    #[error("SAP payload type is not NUL-terminated text")]
    BadPayloadType,
    /// The output buffer cannot hold the packet.
    #[error("output buffer too small: need {needed} bytes, have {capacity}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        capacity: usize,
    },
    /// Auth data not a multiple of 4 bytes or longer than 255 words, or a payload type
    /// containing NUL.
    #[error("SAP field out of range: {field}")]
    FieldOutOfRange {
        /// Which field.
        field: &'static str,
    },
}

/// Announcement or deletion (the T bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// T=0.
    Announce,
    /// T=1.
    Delete,
}

/// One SAP packet, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SapPacket<'a> {
    /// Announce or delete.
    pub message_type: MessageType,
    /// Message id hash: non-zero, changes whenever the SDP changes.
    pub msg_id_hash: u16,
    /// Originating source (IPv6 when the A bit is set).
    pub origin: IpAddr,
    /// Authentication data (a multiple of 4 bytes), usually empty.
    pub auth: &'a [u8],
    /// The payload type, `None` when the payload starts directly with `v=0`.
    pub payload_type: Option<&'a str>,
    /// The payload: SDP text, or the `o=` line for a deletion.
    pub payload: &'a [u8],
}

impl<'a> SapPacket<'a> {
    /// An announcement of `sdp` as aes67-linux-daemon writes it (aes67.md §7).
    pub fn announce(msg_id_hash: u16, origin: Ipv4Addr, sdp: &'a [u8]) -> SapPacket<'a> {
        SapPacket {
            message_type: MessageType::Announce,
            msg_id_hash,
            origin: IpAddr::V4(origin),
            auth: &[],
            payload_type: Some(SDP_PAYLOAD_TYPE),
            payload: sdp,
        }
    }

    /// A deletion: same hash and origin as the announcement, payload the session's `o=`
    /// line (see [`crate::sdp::SenderSdp::origin_line`]).
    pub fn deletion(msg_id_hash: u16, origin: Ipv4Addr, origin_line: &'a [u8]) -> SapPacket<'a> {
        SapPacket {
            message_type: MessageType::Delete,
            ..SapPacket::announce(msg_id_hash, origin, origin_line)
        }
    }

    /// Whether the payload is SDP (payload type `application/sdp` or absent).
    pub fn is_sdp(&self) -> bool {
        self.payload_type
            .is_none_or(|t| t.eq_ignore_ascii_case(SDP_PAYLOAD_TYPE))
    }

    /// Decodes one datagram. Never panics.
    pub fn decode(buf: &'a [u8]) -> Result<SapPacket<'a>, SapError> {
        let too_short = |needed| SapError::TooShort {
            len: buf.len(),
            needed,
        };
        let [b0, auth_words, h0, h1, ..] = *buf else {
            return Err(too_short(4));
        };
        let version = b0 >> 5;
        if version != 1 {
            return Err(SapError::BadVersion { version });
        }
        if b0 & 0x02 != 0 {
            return Err(SapError::Encrypted);
        }
        if b0 & 0x01 != 0 {
            return Err(SapError::Compressed);
        }
        let ipv6 = b0 & 0x10 != 0;
        let message_type = if b0 & 0x04 != 0 {
            MessageType::Delete
        } else {
            MessageType::Announce
        };
        let addr_len = if ipv6 { 16 } else { 4 };
        let addr = buf.get(4..4 + addr_len).ok_or(too_short(4 + addr_len))?;
        let origin = match *addr {
            [a, b, c, d] => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            _ => {
                let mut o = [0u8; 16];
                o.copy_from_slice(addr);
                IpAddr::V6(Ipv6Addr::from(o))
            }
        };
        let auth_start = 4 + addr_len;
        let auth_end = auth_start + 4 * usize::from(auth_words);
        let auth = buf.get(auth_start..auth_end).ok_or(too_short(auth_end))?;
        let rest = &buf[auth_end..];
        let (payload_type, payload) = if rest.starts_with(b"v=0") {
            (None, rest)
        } else {
            let nul = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or(SapError::BadPayloadType)?;
            let t = std::str::from_utf8(&rest[..nul]).map_err(|_| SapError::BadPayloadType)?;
            (Some(t), &rest[nul + 1..])
        };
        Ok(SapPacket {
            message_type,
            msg_id_hash: u16::from_be_bytes([h0, h1]),
            origin,
            auth,
            payload_type,
            payload,
        })
    }

    /// Bytes [`SapPacket::write_to`] produces.
    pub fn encoded_len(&self) -> usize {
        let addr = if self.origin.is_ipv4() { 4 } else { 16 };
        4 + addr
            + self.auth.len()
            + self.payload_type.map_or(0, |t| t.len() + 1)
            + self.payload.len()
    }

    /// Encodes into `out` and returns the length (the reserved R bit is written 0).
    pub fn write_to(&self, out: &mut [u8]) -> Result<usize, SapError> {
        let len = self.encoded_len();
        let Some(b) = out.get_mut(..len) else {
            return Err(SapError::BufferTooSmall {
                needed: len,
                capacity: out.len(),
            });
        };
        if !self.auth.len().is_multiple_of(4) || self.auth.len() > 255 * 4 {
            return Err(SapError::FieldOutOfRange { field: "auth data" });
        }
        if self.payload_type.is_some_and(|t| t.contains('\0')) {
            return Err(SapError::FieldOutOfRange {
                field: "payload type",
            });
        }
        let mut b0 = 0x20; // V=1
        if self.origin.is_ipv6() {
            b0 |= 0x10;
        }
        if self.message_type == MessageType::Delete {
            b0 |= 0x04;
        }
        b[0] = b0;
        // Checked above: at most 255 words.
        b[1] = (self.auth.len() / 4) as u8;
        b[2..4].copy_from_slice(&self.msg_id_hash.to_be_bytes());
        let mut pos = 4;
        match self.origin {
            IpAddr::V4(a) => {
                b[4..8].copy_from_slice(&a.octets());
                pos += 4;
            }
            IpAddr::V6(a) => {
                b[4..20].copy_from_slice(&a.octets());
                pos += 16;
            }
        }
        b[pos..pos + self.auth.len()].copy_from_slice(self.auth);
        pos += self.auth.len();
        if let Some(t) = self.payload_type {
            b[pos..pos + t.len()].copy_from_slice(t.as_bytes());
            pos += t.len();
            b[pos] = 0;
            pos += 1;
        }
        b[pos..pos + self.payload.len()].copy_from_slice(self.payload);
        Ok(len)
    }
}

/// A message id hash for an SDP: 32-bit FNV-1a folded to 16 bits, never 0. Any change
/// to the text (e.g. the `o=` version bump) changes it with probability 1 − 2^-16; a
/// driver announcing several sessions should still check its hashes are distinct.
pub fn msg_id_hash(sdp: &[u8]) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in sdp {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    // Fold: the low 16 bits of the xor of both halves; 0 is reserved (aes67.md §7).
    match ((h >> 16) ^ h) as u16 {
        0 => 1,
        x => x,
    }
}

/// One announced session as heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SapSession {
    /// Announcer's address.
    pub origin: IpAddr,
    /// Message id hash.
    pub msg_id_hash: u16,
    /// The SDP text as received.
    pub sdp: String,
    /// When first heard.
    pub first_heard: Duration,
    /// When last heard.
    pub last_heard: Duration,
    /// Announcements heard.
    pub announcements: u64,
    /// Time between the last two announcements, once two were heard.
    pub interval: Option<Duration>,
}

impl SapSession {
    /// Silence after which the session is dropped: `max(10 × interval, 1 hour)`
    /// (RFC 2974 §4; aes67.md §7).
    pub fn timeout(&self) -> Duration {
        self.interval
            .map_or(MIN_TIMEOUT, |i| i.saturating_mul(10).max(MIN_TIMEOUT))
    }

    /// When the session expires unless heard again.
    pub fn expires_at(&self) -> Duration {
        self.last_heard.saturating_add(self.timeout())
    }

    /// Parses the SDP for a receiver.
    pub fn info(&self) -> Result<SdpInfo, SdpError> {
        sdp::parse_str(&self.sdp)
    }
}

/// Why a packet did not change the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IgnoreReason {
    /// Hash 0 or origin 0.0.0.0 (RFC 2974: listeners may discard them).
    ZeroHashOrOrigin,
    /// Payload type other than `application/sdp`.
    NotSdp,
    /// Payload is not UTF-8.
    NotUtf8,
    /// A deletion for a session we do not know.
    UnknownSession,
    /// The directory is full.
    Full,
}

/// What [`SapDirectory::handle_packet`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectoryEvent {
    /// A new session.
    Added,
    /// A known session heard again with the same SDP.
    Refreshed,
    /// A known session (same origin and hash, or same origin and `o=` session with a new
    /// hash) with a changed SDP; `previous_hash` is the hash it had.
    Updated {
        /// The hash before the change.
        previous_hash: u16,
    },
    /// A session removed by a deletion.
    Deleted,
    /// Nothing changed.
    Ignored(IgnoreReason),
}

/// The sessions heard on a SAP group. Control-plane state: it allocates when sessions
/// are added or change, not when they are refreshed.
#[derive(Debug, Clone)]
pub struct SapDirectory {
    sessions: Vec<SapSession>,
    max_sessions: usize,
}

/// The `o=` fields that identify a session across versions: everything but the version.
fn session_identity(sdp: &str) -> Option<(&str, &str, &str)> {
    let line = sdp::origin_line(sdp)?.strip_prefix("o=")?;
    let f: Vec<&str> = line.split_whitespace().collect();
    match f.as_slice() {
        [user, id, _version, _net, _addrtype, addr, ..] => Some((user, id, addr)),
        _ => None,
    }
}

impl SapDirectory {
    /// An empty directory holding at most `max_sessions` sessions.
    pub fn new(max_sessions: usize) -> SapDirectory {
        SapDirectory {
            sessions: Vec::new(),
            max_sessions,
        }
    }

    /// Decodes and handles one datagram received at `now`.
    pub fn handle(&mut self, datagram: &[u8], now: Duration) -> Result<DirectoryEvent, SapError> {
        let pkt = SapPacket::decode(datagram)?;
        Ok(self.handle_packet(&pkt, now))
    }

    /// Handles one decoded packet received at `now`.
    pub fn handle_packet(&mut self, pkt: &SapPacket<'_>, now: Duration) -> DirectoryEvent {
        if pkt.msg_id_hash == 0 || pkt.origin.is_unspecified() {
            return DirectoryEvent::Ignored(IgnoreReason::ZeroHashOrOrigin);
        }
        if !pkt.is_sdp() {
            return DirectoryEvent::Ignored(IgnoreReason::NotSdp);
        }
        let Ok(text) = std::str::from_utf8(pkt.payload) else {
            return DirectoryEvent::Ignored(IgnoreReason::NotUtf8);
        };
        let by_key = self
            .sessions
            .iter()
            .position(|s| s.origin == pkt.origin && s.msg_id_hash == pkt.msg_id_hash);
        let identity = session_identity(text);
        let by_identity = || {
            identity.and_then(|id| {
                self.sessions
                    .iter()
                    .position(|s| s.origin == pkt.origin && session_identity(&s.sdp) == Some(id))
            })
        };
        match pkt.message_type {
            MessageType::Delete => match by_key.or_else(by_identity) {
                Some(i) => {
                    self.sessions.remove(i);
                    DirectoryEvent::Deleted
                }
                None => DirectoryEvent::Ignored(IgnoreReason::UnknownSession),
            },
            MessageType::Announce => {
                if let Some(i) = by_key.or_else(by_identity) {
                    let s = &mut self.sessions[i];
                    s.interval = Some(now.saturating_sub(s.last_heard));
                    s.last_heard = now;
                    s.announcements += 1;
                    if s.msg_id_hash == pkt.msg_id_hash && s.sdp == text {
                        return DirectoryEvent::Refreshed;
                    }
                    let previous_hash = s.msg_id_hash;
                    s.msg_id_hash = pkt.msg_id_hash;
                    s.sdp = text.to_owned();
                    return DirectoryEvent::Updated { previous_hash };
                }
                if self.sessions.len() >= self.max_sessions {
                    return DirectoryEvent::Ignored(IgnoreReason::Full);
                }
                self.sessions.push(SapSession {
                    origin: pkt.origin,
                    msg_id_hash: pkt.msg_id_hash,
                    sdp: text.to_owned(),
                    first_heard: now,
                    last_heard: now,
                    announcements: 1,
                    interval: None,
                });
                DirectoryEvent::Added
            }
        }
    }

    /// Drops sessions silent past their timeout; returns how many were dropped.
    pub fn expire(&mut self, now: Duration) -> usize {
        let before = self.sessions.len();
        self.sessions.retain(|s| now < s.expires_at());
        before - self.sessions.len()
    }

    /// The earliest expiry, for the driver's timer.
    pub fn next_expiry(&self) -> Option<Duration> {
        self.sessions.iter().map(SapSession::expires_at).min()
    }

    /// All sessions, in the order first heard.
    pub fn sessions(&self) -> &[SapSession] {
        &self.sessions
    }

    /// The session with this key.
    pub fn get(&self, origin: IpAddr, msg_id_hash: u16) -> Option<&SapSession> {
        self.sessions
            .iter()
            .find(|s| s.origin == origin && s.msg_id_hash == msg_id_hash)
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is known.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
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

    /// aes67.md §12.1, verbatim.
    const SHEET_12_1: &str = "
        20 00 12 34 c0 a8 01 0a
        61 70 70 6c 69 63 61 74 69 6f 6e 2f 73 64 70 00
        763d300d0a6f3d2d2031203120494e20495034203139322e3136382e312e31300d0a
        733d67772d63616c6c2d310d0a633d494e20495034203233392e36392e312e31302f33320d0a
        743d3020300d0a6d3d617564696f2035303034205254502f4156502039380d0a
        613d7274706d61703a3938204c32342f34383030302f320d0a613d7074696d653a310d0a
        613d74732d726566636c6b3a7074703d49454545313538382d323030383a30302d31442d43312d46462d46452d31322d33342d35363a300d0a
        613d6d65646961636c6b3a6469726563743d300d0a613d726563766f6e6c790d0a";

    /// aes67.md §12.2, verbatim.
    const SHEET_12_2: &str = "
        24 00 12 34 c0 a8 01 0a
        6170706c69636174696f6e2f73647000
        6f3d2d2031203120494e20495034203139322e3136382e312e31300d0a";

    const SDP_12_1: &str = "v=0\r\no=- 1 1 IN IP4 192.168.1.10\r\ns=gw-call-1\r\nc=IN IP4 239.69.1.10/32\r\nt=0 0\r\nm=audio 5004 RTP/AVP 98\r\na=rtpmap:98 L24/48000/2\r\na=ptime:1\r\na=ts-refclk:ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0\r\na=mediaclk:direct=0\r\na=recvonly\r\n";

    const ORIGIN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);

    #[test]
    fn sheet_12_1_round_trips_byte_for_byte() {
        let bytes = hex(SHEET_12_1);
        assert_eq!(bytes.len(), 254);
        let p = SapPacket::decode(&bytes).unwrap();
        assert_eq!(p.message_type, MessageType::Announce);
        assert_eq!(p.msg_id_hash, 0x1234);
        assert_eq!(p.origin, IpAddr::V4(ORIGIN));
        assert!(p.auth.is_empty());
        assert_eq!(p.payload_type, Some("application/sdp"));
        assert_eq!(p.payload, SDP_12_1.as_bytes());
        let mut out = [0u8; 512];
        let n = p.write_to(&mut out).unwrap();
        assert_eq!(&out[..n], &bytes[..]);
        // Built from parts, the same bytes.
        let built = SapPacket::announce(0x1234, ORIGIN, SDP_12_1.as_bytes());
        let n = built.write_to(&mut out).unwrap();
        assert_eq!(&out[..n], &bytes[..]);
        // And the SDP inside parses.
        let info = sdp::parse(p.payload).unwrap();
        assert_eq!(info.port, 5004);
    }

    #[test]
    fn sheet_12_2_deletion_round_trips_byte_for_byte() {
        let bytes = hex(SHEET_12_2);
        assert_eq!(bytes.len(), 53);
        let p = SapPacket::decode(&bytes).unwrap();
        assert_eq!(p.message_type, MessageType::Delete);
        assert_eq!(p.msg_id_hash, 0x1234);
        assert_eq!(p.payload, b"o=- 1 1 IN IP4 192.168.1.10\r\n");
        let mut out = [0u8; 64];
        let n = p.write_to(&mut out).unwrap();
        assert_eq!(&out[..n], &bytes[..]);
        let built = SapPacket::deletion(0x1234, ORIGIN, b"o=- 1 1 IN IP4 192.168.1.10\r\n");
        let n = built.write_to(&mut out).unwrap();
        assert_eq!(&out[..n], &bytes[..]);
    }

    #[test]
    fn optional_payload_type_ipv6_and_auth() {
        // No payload type: the SDP follows the header directly.
        let mut bare = hex("20 00 12 34 c0 a8 01 0a");
        bare.extend_from_slice(SDP_12_1.as_bytes());
        let p = SapPacket::decode(&bare).unwrap();
        assert_eq!(p.payload_type, None);
        assert!(p.is_sdp());
        assert_eq!(p.payload, SDP_12_1.as_bytes());
        let mut out = [0u8; 512];
        let n = p.write_to(&mut out).unwrap();
        assert_eq!(&out[..n], &bare[..]);

        // IPv6 origin (A=1), one word of auth data, reserved R bit set on input.
        let mut v6 = vec![0x38, 0x01, 0xab, 0xcd];
        v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v6.extend_from_slice(&[9, 9, 9, 9]);
        v6.extend_from_slice(b"application/sdp\0v=0\r\n");
        let p = SapPacket::decode(&v6).unwrap();
        assert_eq!(p.origin, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(p.auth, &[9, 9, 9, 9]);
        assert_eq!(p.payload, b"v=0\r\n");
        let n = p.write_to(&mut out).unwrap();
        assert_eq!(out[0], 0x30, "R bit is written as 0");
        assert_eq!(&out[1..n], &v6[1..]);
    }

    #[test]
    fn decode_errors() {
        assert_eq!(
            SapPacket::decode(&[0x20, 0, 0]),
            Err(SapError::TooShort { len: 3, needed: 4 })
        );
        assert_eq!(
            SapPacket::decode(&[0x20, 0, 0, 1, 10, 0]),
            Err(SapError::TooShort { len: 6, needed: 8 })
        );
        assert_eq!(
            SapPacket::decode(&[0x20, 2, 0, 1, 10, 0, 0, 1, 0, 0]),
            Err(SapError::TooShort {
                len: 10,
                needed: 16
            })
        );
        assert_eq!(
            SapPacket::decode(&[0x00, 0, 0, 1, 10, 0, 0, 1]),
            Err(SapError::BadVersion { version: 0 })
        );
        assert_eq!(
            SapPacket::decode(&[0x22, 0, 0, 1, 10, 0, 0, 1]),
            Err(SapError::Encrypted)
        );
        assert_eq!(
            SapPacket::decode(&[0x21, 0, 0, 1, 10, 0, 0, 1]),
            Err(SapError::Compressed)
        );
        assert_eq!(
            SapPacket::decode(b"\x20\x00\x00\x01\x0a\x00\x00\x01application/sdp"),
            Err(SapError::BadPayloadType)
        );
        let p = SapPacket {
            auth: &[1, 2, 3],
            ..SapPacket::announce(1, ORIGIN, b"v=0")
        };
        assert_eq!(
            p.write_to(&mut [0u8; 64]),
            Err(SapError::FieldOutOfRange { field: "auth data" })
        );
        assert!(matches!(
            SapPacket::announce(1, ORIGIN, b"v=0").write_to(&mut [0u8; 10]),
            Err(SapError::BufferTooSmall {
                needed: 27,
                capacity: 10
            })
        ));
    }

    #[test]
    fn hash_is_nonzero_and_tracks_changes() {
        let a = msg_id_hash(SDP_12_1.as_bytes());
        let bumped = SDP_12_1.replace("o=- 1 1 ", "o=- 1 2 ");
        let b = msg_id_hash(bumped.as_bytes());
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(a, msg_id_hash(SDP_12_1.as_bytes()));
        // Over many distinct inputs: never 0, and few collisions.
        let mut seen = std::collections::HashSet::new();
        for i in 0..5000u32 {
            let h = msg_id_hash(format!("o=- {i} 1 IN IP4 10.0.0.1").as_bytes());
            assert_ne!(h, 0);
            seen.insert(h);
        }
        // Birthday bound for 5000 draws from 65535: ~185 expected collisions.
        assert!(seen.len() > 4700, "{} distinct", seen.len());
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn directory_add_refresh_expire() {
        let mut d = SapDirectory::new(16);
        let ann = hex(SHEET_12_1);
        assert_eq!(d.handle(&ann, secs(100)), Ok(DirectoryEvent::Added));
        for k in 1..=3 {
            assert_eq!(
                d.handle(&ann, secs(100 + 30 * k)),
                Ok(DirectoryEvent::Refreshed)
            );
        }
        let s = d.get(IpAddr::V4(ORIGIN), 0x1234).unwrap();
        assert_eq!((s.announcements, s.interval), (4, Some(secs(30))));
        assert_eq!(s.first_heard, secs(100));
        assert_eq!(s.last_heard, secs(190));
        // 30 s interval: 10 × 30 s < 1 h, so the hour applies.
        assert_eq!(s.timeout(), secs(3600));
        assert_eq!(d.next_expiry(), Some(secs(3790)));
        assert_eq!(d.expire(secs(3789)), 0);
        assert_eq!(d.expire(secs(3790)), 1);
        assert!(d.is_empty());

        // A slow announcer (every 10 min): 10 × interval = 100 min.
        d.handle(&ann, secs(0)).unwrap();
        d.handle(&ann, secs(600)).unwrap();
        assert_eq!(d.sessions()[0].timeout(), secs(6000));
        assert_eq!(d.expire(secs(6599)), 0);
        assert_eq!(d.expire(secs(6600)), 1);
    }

    #[test]
    fn directory_deletion_and_modification() {
        let mut d = SapDirectory::new(16);
        assert_eq!(
            d.handle(&hex(SHEET_12_1), secs(0)),
            Ok(DirectoryEvent::Added)
        );
        // Modification: new version, new hash, same o= session -> replaces the entry.
        let v2 = SDP_12_1
            .replace("o=- 1 1 ", "o=- 1 2 ")
            .replace("L24/48000/2", "L24/48000/4");
        let mut buf = [0u8; 512];
        let n = SapPacket::announce(0x5678, ORIGIN, v2.as_bytes())
            .write_to(&mut buf)
            .unwrap();
        assert_eq!(
            d.handle(&buf[..n], secs(10)),
            Ok(DirectoryEvent::Updated {
                previous_hash: 0x1234
            })
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d.sessions()[0].msg_id_hash, 0x5678);
        assert_eq!(d.sessions()[0].info().unwrap().channels, 4);
        // The sheet's deletion names the old hash; the o= session still matches.
        assert_eq!(
            d.handle(&hex(SHEET_12_2), secs(20)),
            Ok(DirectoryEvent::Deleted)
        );
        assert!(d.is_empty());
        assert_eq!(
            d.handle(&hex(SHEET_12_2), secs(21)),
            Ok(DirectoryEvent::Ignored(IgnoreReason::UnknownSession))
        );

        // Another announcer with the same o= line is a different session.
        d.handle(&hex(SHEET_12_1), secs(30)).unwrap();
        let other =
            SapPacket::announce(0x1234, Ipv4Addr::new(192, 168, 1, 11), SDP_12_1.as_bytes());
        let n = other.write_to(&mut buf).unwrap();
        assert_eq!(d.handle(&buf[..n], secs(31)), Ok(DirectoryEvent::Added));
        assert_eq!(d.len(), 2);
        // Deletion by exact key.
        assert_eq!(
            d.handle(&hex(SHEET_12_2), secs(32)),
            Ok(DirectoryEvent::Deleted)
        );
        assert_eq!(
            d.sessions()[0].origin,
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, 11))
        );
    }

    #[test]
    fn directory_ignores_what_it_should() {
        let mut d = SapDirectory::new(1);
        let mut buf = [0u8; 512];
        let zero = SapPacket::announce(0, ORIGIN, SDP_12_1.as_bytes());
        let n = zero.write_to(&mut buf).unwrap();
        assert_eq!(
            d.handle(&buf[..n], secs(0)),
            Ok(DirectoryEvent::Ignored(IgnoreReason::ZeroHashOrOrigin))
        );
        let unspecified = SapPacket::announce(1, Ipv4Addr::UNSPECIFIED, SDP_12_1.as_bytes());
        let n = unspecified.write_to(&mut buf).unwrap();
        assert_eq!(
            d.handle(&buf[..n], secs(0)),
            Ok(DirectoryEvent::Ignored(IgnoreReason::ZeroHashOrOrigin))
        );
        let other_type = SapPacket {
            payload_type: Some("application/x-other"),
            ..SapPacket::announce(1, ORIGIN, b"hello")
        };
        let n = other_type.write_to(&mut buf).unwrap();
        assert_eq!(
            d.handle(&buf[..n], secs(0)),
            Ok(DirectoryEvent::Ignored(IgnoreReason::NotSdp))
        );
        let not_utf8 = SapPacket::announce(1, ORIGIN, &[0xff, 0xfe]);
        let n = not_utf8.write_to(&mut buf).unwrap();
        assert_eq!(
            d.handle(&buf[..n], secs(0)),
            Ok(DirectoryEvent::Ignored(IgnoreReason::NotUtf8))
        );
        assert_eq!(
            d.handle(&hex(SHEET_12_1), secs(0)),
            Ok(DirectoryEvent::Added)
        );
        let second = SapPacket::announce(
            2,
            Ipv4Addr::new(10, 0, 0, 1),
            b"v=0\r\no=- 5 1 IN IP4 10.0.0.1\r\n",
        );
        let n = second.write_to(&mut buf).unwrap();
        assert_eq!(
            d.handle(&buf[..n], secs(0)),
            Ok(DirectoryEvent::Ignored(IgnoreReason::Full))
        );
        assert!(d.handle(&[1, 2], secs(0)).is_err());
    }
}
