//! SDP (RFC 4566) for AES67 flows: the exact text a sender publishes (aes67.md §6
//! template) and a tolerant parser that extracts what a receiver needs.
//!
//! The builder ([`SenderSdp`]) writes the sheet's template line for line, in its order,
//! with CRLF line ends: both the session- and media-level `c=` (aes67-linux-daemon does
//! the same), the RAVENNA extras `a=clock-domain`, `a=sync-time` and `a=framecount`, the
//! SSM `a=source-filter`, `a=mediaclk:direct=`, `a=ts-refclk` and `a=recvonly`. Free
//! text (`s=`, `i=`) has CR/LF replaced so a flow name from the API cannot inject lines.
//!
//! The parser ([`parse`]) accepts CRLF or LF, ignores attributes it does not know, takes
//! the first `m=audio ... RTP/AVP` section, lets media-level `c=` and attributes override
//! session-level ones (RFC 7273 allows `ts-refclk`/`mediaclk` at either level), and
//! reports what is missing with a typed [`SdpError`]. A SAP deletion payload (just an
//! `o=` line, aes67.md §7) yields [`SdpError::NoAudioMedia`]: handle deletions before
//! parsing.

use crate::aes67::{Channels, Encoding, PacketTime, SAMPLE_RATE, StreamFormat};
use crate::ptp::ClockIdentity;
use crate::rtp::PayloadType;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

/// The RTP port AES67 flows use by default (aes67.md §1).
pub const DEFAULT_PORT: u16 = 5004;

/// The reference clock of `a=ts-refclk` (RFC 7273; aes67.md §6).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RefClock {
    /// `ptp=IEEE1588-2008:<gmid>:<domain>` (also accepted: IEEE1588-2019, no domain = 0).
    Ptp {
        /// Grandmaster clock identity.
        gmid: ClockIdentity,
        /// PTP domain.
        domain: u8,
    },
    /// `ptp=IEEE1588-2008:traceable`.
    PtpTraceable,
    /// Anything else, as written after `a=ts-refclk:` (e.g. `localmac=...`, `ntp=...`).
    Other(String),
}

impl RefClock {
    /// Reads the value of an `a=ts-refclk:` attribute (what follows the colon), as a
    /// [`crate::sdp`] parse would; never fails (unknown forms are [`RefClock::Other`]).
    pub fn parse(value: &str) -> RefClock {
        parse_refclk(value.trim())
    }

    /// The PTP domain this refclk names (0 for `traceable`).
    pub fn domain(&self) -> Option<u8> {
        match self {
            RefClock::Ptp { domain, .. } => Some(*domain),
            RefClock::PtpTraceable => Some(0),
            RefClock::Other(_) => None,
        }
    }
}

/// What a sender publishes for one flow (aes67.md §6). Build it, then [`SenderSdp::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderSdp {
    /// `o=` sess-id: numeric, unique per stream.
    pub session_id: u64,
    /// `o=` sess-version: bump on every change (and change the SAP hash, aes67.md §7).
    pub session_version: u64,
    /// Sender's unicast address (`o=` and the `a=source-filter` source).
    pub origin: Ipv4Addr,
    /// `s=`: the flow name receivers show.
    pub name: String,
    /// Session-level `i=` (e.g. channel labels); omitted when `None`.
    pub session_info: Option<String>,
    /// Media-level `i=`; omitted when `None`.
    pub media_title: Option<String>,
    /// Multicast group (239.69.x.y for Dante, aes67.md §8).
    pub group: Ipv4Addr,
    /// Multicast TTL written as `/<ttl>` in `c=` (15 by default, aes67.md §10).
    pub ttl: u8,
    /// RTP port (5004).
    pub port: u16,
    /// RTP payload type (98).
    pub payload_type: PayloadType,
    /// Encoding, channels, packet time.
    pub format: StreamFormat,
    /// `a=mediaclk:direct=` offset (0).
    pub mediaclk_offset: u32,
    /// `a=ts-refclk` value.
    pub refclk: RefClock,
}

/// Replaces CR and LF so free text stays on its line.
fn one_line(s: &str) -> impl std::fmt::Display + '_ {
    struct OneLine<'a>(&'a str);
    impl std::fmt::Display for OneLine<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            for c in self.0.chars() {
                f.write_char(if c == '\r' || c == '\n' { ' ' } else { c })?;
            }
            Ok(())
        }
    }
    OneLine(s)
}

impl SenderSdp {
    /// The SDP text, CRLF line ends, in the order of the aes67.md §6 template.
    pub fn write(&self) -> String {
        let mut s = String::with_capacity(640);
        self.write_to(&mut s);
        s
    }

    /// Appends the SDP text to `out`.
    pub fn write_to(&self, out: &mut String) {
        let domain = self.refclk.domain().unwrap_or(0);
        let conn = format!("IN IP4 {}/{}", self.group, self.ttl);
        let pt = self.payload_type;
        // Writing into a String cannot fail; the results are ignored for that reason.
        let _ = write!(out, "v=0\r\n");
        let _ = write!(out, "{}", self.origin_line());
        let _ = write!(out, "s={}\r\n", one_line(&self.name));
        if let Some(info) = &self.session_info {
            let _ = write!(out, "i={}\r\n", one_line(info));
        }
        let _ = write!(out, "c={conn}\r\n");
        let _ = write!(out, "t=0 0\r\n");
        let _ = write!(out, "a=clock-domain:PTPv2 {domain}\r\n");
        let _ = write!(out, "m=audio {} RTP/AVP {pt}\r\n", self.port);
        if let Some(title) = &self.media_title {
            let _ = write!(out, "i={}\r\n", one_line(title));
        }
        let _ = write!(out, "c={conn}\r\n");
        let _ = write!(
            out,
            "a=source-filter: incl IN IP4 {} {}\r\n",
            self.group, self.origin
        );
        let _ = write!(
            out,
            "a=rtpmap:{pt} {}/{SAMPLE_RATE}/{}\r\n",
            self.format.encoding,
            self.format.channels.get()
        );
        let _ = write!(out, "a=sync-time:0\r\n");
        let _ = write!(out, "a=framecount:{}\r\n", self.format.packet_time.frames());
        let _ = write!(out, "a=ptime:{}\r\n", self.format.packet_time.sdp_ptime());
        let _ = write!(out, "a=mediaclk:direct={}\r\n", self.mediaclk_offset);
        match &self.refclk {
            RefClock::Ptp { gmid, domain } => {
                let _ = write!(out, "a=ts-refclk:ptp=IEEE1588-2008:{gmid}:{domain}\r\n");
            }
            RefClock::PtpTraceable => {
                let _ = write!(out, "a=ts-refclk:ptp=IEEE1588-2008:traceable\r\n");
            }
            RefClock::Other(v) => {
                let _ = write!(out, "a=ts-refclk:{}\r\n", one_line(v));
            }
        }
        let _ = write!(out, "a=recvonly\r\n");
    }

    /// The `o=` line with CRLF: the payload of this session's SAP deletion (aes67.md §7).
    pub fn origin_line(&self) -> String {
        format!(
            "o=- {} {} IN IP4 {}\r\n",
            self.session_id, self.session_version, self.origin
        )
    }
}

/// Errors of [`parse`]: what a receiver needs and did not find.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The text is not UTF-8.
    #[error("SDP is not UTF-8")]
    NotUtf8,
    /// No `m=audio` section with an RTP/AVP transport.
    #[error("SDP has no m=audio RTP/AVP section")]
    NoAudioMedia,
    /// No `c=` at session or media level.
    #[error("SDP has no c= connection line for the audio media")]
    NoConnection,
    /// The payload type is dynamic and no `a=rtpmap` describes it.
    #[error("SDP has no a=rtpmap for payload type {payload_type}")]
    NoRtpmap {
        /// The payload type of the `m=` line.
        payload_type: u8,
    },
    /// The encoding is not L16 or L24.
    #[error("unsupported encoding {encoding:?} (want L16 or L24)")]
    UnsupportedEncoding {
        /// The encoding name from `a=rtpmap`.
        encoding: String,
    },
    /// A line needed by the receiver is malformed.
    #[error("malformed SDP line {line}: {field}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// Which field could not be read.
        field: &'static str,
    },
    /// The sample rate is not 48 kHz (checked by [`SdpInfo::stream_format`]).
    #[error("unsupported sample rate {rate} Hz (AES67 here is 48000)")]
    UnsupportedRate {
        /// The `a=rtpmap` rate.
        rate: u32,
    },
    /// The channel count is outside 1..=8 (checked by [`SdpInfo::stream_format`]).
    #[error("unsupported channel count {channels} (1..=8)")]
    UnsupportedChannels {
        /// The `a=rtpmap` channel count.
        channels: u16,
    },
    /// The packet time is not an AES67 one (checked by [`SdpInfo::stream_format`]).
    #[error("unsupported packet time {micros} µs")]
    UnsupportedPtime {
        /// The `a=ptime` value in µs.
        micros: u32,
    },
    /// The stream is `a=inactive`.
    #[error("stream is inactive")]
    Inactive,
}

/// The `o=` line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// username (`-` for AES67 senders).
    pub username: String,
    /// sess-id, kept as text (it may exceed 64 bits).
    pub session_id: String,
    /// sess-version, as text.
    pub session_version: String,
    /// unicast-address, as text (may be a host name).
    pub address: String,
}

/// `a=mediaclk` (RFC 7273).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MediaClock {
    /// `direct=<offset>[ rate=<n>]`; the offset reduced mod 2^32 like RTP timestamps.
    Direct {
        /// The offset added to the media clock to give RTP timestamps.
        offset: u32,
        /// Optional `rate=`.
        rate: Option<u32>,
    },
    /// Anything else (e.g. `sender`), as written.
    Other(String),
}

/// Stream direction attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `a=sendrecv`.
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly` (what AES67 senders write, aes67.md §6).
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

/// What a receiver learns from an SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpInfo {
    /// `o=`, if present.
    pub origin: Option<Origin>,
    /// `s=`, if present.
    pub session_name: Option<String>,
    /// Destination address (the multicast group).
    pub group: IpAddr,
    /// TTL from `c=` (`/<ttl>`), if given.
    pub ttl: Option<u8>,
    /// RTP port.
    pub port: u16,
    /// Source to filter on: the `a=source-filter: incl` source, else the `o=` address
    /// when it is an IP address.
    pub source: Option<IpAddr>,
    /// RTP payload type.
    pub payload_type: PayloadType,
    /// L16 or L24.
    pub encoding: Encoding,
    /// `a=rtpmap` clock rate.
    pub sample_rate: u32,
    /// `a=rtpmap` channels (1 when omitted, RFC 4566).
    pub channels: u16,
    /// `a=ptime` in µs, if given.
    pub ptime_us: Option<u32>,
    /// `a=framecount`, if given.
    pub framecount: Option<u32>,
    /// `a=mediaclk`, if given.
    pub mediaclk: Option<MediaClock>,
    /// `a=ts-refclk`, if given.
    pub refclk: Option<RefClock>,
    /// `a=clock-domain:PTPv2 <n>`, if given.
    pub clock_domain: Option<u8>,
    /// Direction attribute, if given.
    pub direction: Option<Direction>,
}

impl SdpInfo {
    /// The `a=mediaclk:direct=` offset, 0 when absent or not `direct`.
    pub fn mediaclk_offset(&self) -> u32 {
        match self.mediaclk {
            Some(MediaClock::Direct { offset, .. }) => offset,
            _ => 0,
        }
    }

    /// The packet time from `a=ptime`, else from `a=framecount`, else `None`.
    pub fn packet_time(&self) -> Option<PacketTime> {
        self.ptime_us.and_then(PacketTime::from_micros).or_else(|| {
            self.framecount
                .and_then(|f| usize::try_from(f).ok())
                .and_then(PacketTime::from_frames)
        })
    }

    /// Checks the flow is one we can receive (48 kHz, 1-8 channels, an AES67 packet time
    /// or none given = 1 ms, not inactive) and returns its format.
    pub fn stream_format(&self) -> Result<StreamFormat, SdpError> {
        if self.direction == Some(Direction::Inactive) {
            return Err(SdpError::Inactive);
        }
        if self.sample_rate != SAMPLE_RATE {
            return Err(SdpError::UnsupportedRate {
                rate: self.sample_rate,
            });
        }
        let channels = u8::try_from(self.channels)
            .ok()
            .and_then(Channels::new)
            .ok_or(SdpError::UnsupportedChannels {
                channels: self.channels,
            })?;
        let packet_time = match (self.ptime_us, self.packet_time()) {
            (_, Some(p)) => p,
            (Some(micros), None) => return Err(SdpError::UnsupportedPtime { micros }),
            (None, None) => PacketTime::Ms1,
        };
        Ok(StreamFormat {
            encoding: self.encoding,
            channels,
            packet_time,
        })
    }
}

/// Attributes that may appear at session or media level.
#[derive(Default)]
struct Level {
    connection: Option<(IpAddr, Option<u8>)>,
    mediaclk: Option<MediaClock>,
    refclk: Option<RefClock>,
    clock_domain: Option<u8>,
    direction: Option<Direction>,
    source: Option<IpAddr>,
}

/// Parses an SDP (bytes, e.g. a SAP payload). Never panics.
pub fn parse(sdp: &[u8]) -> Result<SdpInfo, SdpError> {
    let text = std::str::from_utf8(sdp).map_err(|_| SdpError::NotUtf8)?;
    parse_str(text)
}

/// Parses SDP text. Never panics.
pub fn parse_str(text: &str) -> Result<SdpInfo, SdpError> {
    let mut origin = None;
    let mut session_name = None;
    let mut session = Level::default();
    let mut media = Level::default();
    // (port, payload types as text) of the chosen m= section.
    let mut chosen: Option<(u16, Vec<&str>)> = None;
    // Whether the lines being read belong to the chosen section / any media section.
    let mut in_chosen = false;
    let mut in_media = false;
    let mut rtpmaps: Vec<(u8, &str)> = Vec::new();
    let mut ptime_us = None;
    let mut framecount = None;

    for (idx, raw) in text.split('\n').enumerate() {
        let lineno = idx + 1;
        let line = raw.trim();
        let Some((kind, value)) = line.split_once('=') else {
            continue;
        };
        if kind.len() != 1 {
            continue;
        }
        if kind == "m" {
            in_media = true;
            in_chosen = false;
            if chosen.is_none() {
                let mut parts = value.split_whitespace();
                let (Some(mtype), Some(port), Some(proto)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(SdpError::Malformed {
                        line: lineno,
                        field: "m= line",
                    });
                };
                if mtype == "audio" && proto.starts_with("RTP/AVP") {
                    // "<port>/<number of ports>" is allowed; the base port is what we need.
                    let port = port
                        .split('/')
                        .next()
                        .and_then(|p| p.parse::<u16>().ok())
                        .ok_or(SdpError::Malformed {
                            line: lineno,
                            field: "m= port",
                        })?;
                    chosen = Some((port, parts.collect()));
                    in_chosen = true;
                }
            }
            continue;
        }
        // Lines of other media sections are not ours.
        if in_media && !in_chosen {
            continue;
        }
        let level = if in_chosen { &mut media } else { &mut session };
        match kind {
            "o" if !in_media => origin = parse_origin(value),
            "s" if !in_media => session_name = Some(value.to_owned()),
            "c" => {
                level.connection = Some(parse_connection(value).ok_or(SdpError::Malformed {
                    line: lineno,
                    field: "c= line",
                })?);
            }
            "a" => {
                let (name, val) = value.split_once(':').unwrap_or((value, ""));
                let val = val.trim();
                match name {
                    "rtpmap" if in_chosen => {
                        let (pt, enc) =
                            val.split_once(char::is_whitespace)
                                .ok_or(SdpError::Malformed {
                                    line: lineno,
                                    field: "a=rtpmap",
                                })?;
                        let pt = pt.parse::<u8>().map_err(|_| SdpError::Malformed {
                            line: lineno,
                            field: "a=rtpmap payload type",
                        })?;
                        rtpmaps.push((pt, enc.trim()));
                    }
                    "ptime" if in_chosen => {
                        ptime_us = Some(parse_ptime(val).ok_or(SdpError::Malformed {
                            line: lineno,
                            field: "a=ptime",
                        })?);
                    }
                    "framecount" if in_chosen => framecount = val.parse::<u32>().ok(),
                    "mediaclk" => {
                        level.mediaclk = Some(parse_mediaclk(val).ok_or(SdpError::Malformed {
                            line: lineno,
                            field: "a=mediaclk",
                        })?);
                    }
                    "ts-refclk" => level.refclk = Some(parse_refclk(val)),
                    "clock-domain" => {
                        level.clock_domain = val
                            .strip_prefix("PTPv2")
                            .and_then(|d| d.trim().parse::<u8>().ok());
                    }
                    "source-filter" => {
                        // " incl IN IP4 <dest> <src> [...]": the first source.
                        let parts: Vec<&str> = val.split_whitespace().collect();
                        if let ["incl", _, _, _, src, ..] = parts.as_slice() {
                            level.source = src.parse::<IpAddr>().ok();
                        }
                    }
                    "sendrecv" => level.direction = Some(Direction::SendRecv),
                    "sendonly" => level.direction = Some(Direction::SendOnly),
                    "recvonly" => level.direction = Some(Direction::RecvOnly),
                    "inactive" => level.direction = Some(Direction::Inactive),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    let (port, fmts) = chosen.ok_or(SdpError::NoAudioMedia)?;
    let (group, ttl) = media
        .connection
        .or(session.connection)
        .ok_or(SdpError::NoConnection)?;

    // The first payload type of the m= line that has an L16/L24 rtpmap, else the first
    // one (static PT 10/11 are L16/44100 per RFC 3551 and need no rtpmap).
    let mut first_pt = None;
    let mut found = None;
    for f in &fmts {
        let Ok(pt) = f.parse::<u8>() else { continue };
        let Some(pt) = PayloadType::new(pt) else {
            continue;
        };
        first_pt.get_or_insert(pt);
        if let Some((_, enc)) = rtpmaps.iter().find(|(p, _)| *p == pt.get()) {
            let name = enc.split('/').next().unwrap_or("");
            if Encoding::from_name(name).is_some() {
                found = Some((pt, *enc));
                break;
            }
        }
    }
    let (payload_type, encoding, sample_rate, channels) = match (found, first_pt) {
        (Some((pt, enc)), _) => {
            let (e, r, c) = parse_rtpmap_encoding(enc)?;
            (pt, e, r, c)
        }
        (None, Some(pt)) => match (pt.get(), rtpmaps.iter().find(|(p, _)| *p == pt.get())) {
            (_, Some((_, enc))) => {
                let name = enc.split('/').next().unwrap_or("");
                return Err(SdpError::UnsupportedEncoding {
                    encoding: name.to_owned(),
                });
            }
            (10, None) => (pt, Encoding::L16, 44_100, 2),
            (11, None) => (pt, Encoding::L16, 44_100, 1),
            (p, None) if p >= 96 => return Err(SdpError::NoRtpmap { payload_type: p }),
            (p, None) => {
                return Err(SdpError::UnsupportedEncoding {
                    encoding: format!("static payload type {p}"),
                });
            }
        },
        (None, None) => {
            return Err(SdpError::Malformed {
                line: 0,
                field: "m= payload type",
            });
        }
    };

    let source = media.source.or(session.source).or_else(|| {
        origin
            .as_ref()
            .and_then(|o: &Origin| o.address.parse::<IpAddr>().ok())
    });

    Ok(SdpInfo {
        origin,
        session_name,
        group,
        ttl,
        port,
        source,
        payload_type,
        encoding,
        sample_rate,
        channels,
        ptime_us,
        framecount,
        mediaclk: media.mediaclk.or(session.mediaclk),
        refclk: media.refclk.or(session.refclk),
        clock_domain: media.clock_domain.or(session.clock_domain),
        direction: media.direction.or(session.direction),
    })
}

/// The `o=` line of an SDP or SAP deletion payload (without its line end), if any.
pub fn origin_line(sdp: &str) -> Option<&str> {
    sdp.split('\n').map(str::trim).find(|l| l.starts_with("o="))
}

fn parse_origin(value: &str) -> Option<Origin> {
    let p: Vec<&str> = value.split_whitespace().collect();
    match p.as_slice() {
        [user, id, ver, _net, _addrtype, addr, ..] => Some(Origin {
            username: (*user).to_owned(),
            session_id: (*id).to_owned(),
            session_version: (*ver).to_owned(),
            address: (*addr).to_owned(),
        }),
        _ => None,
    }
}

/// `IN IP4 239.69.1.10/32[/n]` or without TTL; IP6 addresses have no TTL.
fn parse_connection(value: &str) -> Option<(IpAddr, Option<u8>)> {
    let mut parts = value.split_whitespace();
    let (_net, addrtype, addr) = (parts.next()?, parts.next()?, parts.next()?);
    let mut fields = addr.split('/');
    let ip: IpAddr = fields.next()?.parse().ok()?;
    let ttl = match (addrtype, fields.next()) {
        ("IP4", Some(t)) => Some(t.parse::<u8>().ok()?),
        _ => None,
    };
    Some((ip, ttl))
}

/// `L24/48000/2` -> (encoding, rate, channels).
fn parse_rtpmap_encoding(enc: &str) -> Result<(Encoding, u32, u16), SdpError> {
    let mut f = enc.split('/');
    let name = f.next().unwrap_or("");
    let encoding = Encoding::from_name(name).ok_or_else(|| SdpError::UnsupportedEncoding {
        encoding: name.to_owned(),
    })?;
    let malformed = SdpError::Malformed {
        line: 0,
        field: "a=rtpmap rate/channels",
    };
    let rate = f
        .next()
        .and_then(|r| r.trim().parse::<u32>().ok())
        .ok_or(malformed.clone())?;
    let channels = match f.next() {
        Some(c) => c.trim().parse::<u16>().map_err(|_| malformed)?,
        None => 1,
    };
    Ok((encoding, rate, channels))
}

/// `a=ptime` in ms (`1`, `0.125`, `0.333`) to µs, rounded.
fn parse_ptime(v: &str) -> Option<u32> {
    let ms: f64 = v.parse().ok()?;
    if !(ms > 0.0 && ms <= 1000.0) {
        return None;
    }
    // Bounded to 1..=1_000_000 by the check above.
    Some((ms * 1000.0).round() as u32)
}

fn parse_mediaclk(v: &str) -> Option<MediaClock> {
    let mut parts = v.split_whitespace();
    let first = parts.next()?;
    let Some(off) = first.strip_prefix("direct=") else {
        return Some(MediaClock::Other(v.to_owned()));
    };
    // RTP timestamps are mod 2^32, so is the offset.
    let offset = off.parse::<u64>().ok()? as u32;
    let rate = parts
        .find_map(|p| p.strip_prefix("rate="))
        .and_then(|r| r.parse::<u32>().ok());
    Some(MediaClock::Direct { offset, rate })
}

fn parse_refclk(v: &str) -> RefClock {
    let ptp = v
        .strip_prefix("ptp=IEEE1588-2008:")
        .or_else(|| v.strip_prefix("ptp=IEEE1588-2019:"));
    match ptp {
        Some("traceable") => RefClock::PtpTraceable,
        Some(rest) => {
            let mut f = rest.split(':');
            let gmid = f.next().and_then(|g| g.parse::<ClockIdentity>().ok());
            let domain = match f.next() {
                None => Some(0),
                Some(d) => d.trim().parse::<u8>().ok(),
            };
            match (gmid, domain) {
                (Some(gmid), Some(domain)) => RefClock::Ptp { gmid, domain },
                _ => RefClock::Other(v.to_owned()),
            }
        }
        None => RefClock::Other(v.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gmid() -> ClockIdentity {
        "00-1D-C1-FF-FE-12-34-56".parse().unwrap()
    }

    fn sender() -> SenderSdp {
        SenderSdp {
            session_id: 1_700_000_001,
            session_version: 3,
            origin: Ipv4Addr::new(192, 168, 1, 10),
            name: "gw-call-1".into(),
            session_info: None,
            media_title: None,
            group: Ipv4Addr::new(239, 69, 1, 10),
            ttl: 15,
            port: 5004,
            payload_type: PayloadType::AES67_DEFAULT,
            format: StreamFormat::l24_1ms(Channels::STEREO),
            mediaclk_offset: 0,
            refclk: RefClock::Ptp {
                gmid: gmid(),
                domain: 0,
            },
        }
    }

    /// The aes67.md §6 template filled in by hand, optional `i=` lines included.
    const TEMPLATE_FILLED: &str = "v=0\r\n\
o=- 1700000001 3 IN IP4 192.168.1.10\r\n\
s=gw-call-1\r\n\
i=ch1 caller, ch2 host\r\n\
c=IN IP4 239.69.1.10/15\r\n\
t=0 0\r\n\
a=clock-domain:PTPv2 0\r\n\
m=audio 5004 RTP/AVP 98\r\n\
i=phone-in\r\n\
c=IN IP4 239.69.1.10/15\r\n\
a=source-filter: incl IN IP4 239.69.1.10 192.168.1.10\r\n\
a=rtpmap:98 L24/48000/2\r\n\
a=sync-time:0\r\n\
a=framecount:48\r\n\
a=ptime:1\r\n\
a=mediaclk:direct=0\r\n\
a=ts-refclk:ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0\r\n\
a=recvonly\r\n";

    /// The SDP inside the aes67.md §12.1 SAP vector (CRLF).
    const SHEET_12_1: &str = "v=0\r\no=- 1 1 IN IP4 192.168.1.10\r\ns=gw-call-1\r\nc=IN IP4 239.69.1.10/32\r\nt=0 0\r\nm=audio 5004 RTP/AVP 98\r\na=rtpmap:98 L24/48000/2\r\na=ptime:1\r\na=ts-refclk:ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0\r\na=mediaclk:direct=0\r\na=recvonly\r\n";

    #[test]
    fn builder_writes_the_sheet_template_exactly() {
        let mut s = sender();
        s.session_info = Some("ch1 caller, ch2 host".into());
        s.media_title = Some("phone-in".into());
        assert_eq!(s.write(), TEMPLATE_FILLED);
        // Without the optional i= lines, exactly those two lines disappear.
        let without: String = TEMPLATE_FILLED
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with("i="))
            .collect();
        assert_eq!(sender().write(), without);
    }

    #[test]
    fn builder_variants() {
        let mut s = sender();
        s.format = StreamFormat {
            encoding: Encoding::L16,
            channels: Channels::new(8).unwrap(),
            packet_time: PacketTime::Us333,
        };
        s.refclk = RefClock::PtpTraceable;
        s.mediaclk_offset = 963_214_424;
        s.name = "evil\r\na=inactive".into();
        let text = s.write();
        assert!(text.contains("a=rtpmap:98 L16/48000/8\r\n"));
        assert!(text.contains("a=framecount:16\r\na=ptime:0.333\r\n"));
        assert!(text.contains("a=mediaclk:direct=963214424\r\n"));
        assert!(text.contains("a=ts-refclk:ptp=IEEE1588-2008:traceable\r\n"));
        assert!(text.contains("s=evil  a=inactive\r\n"), "{text}");
        assert!(!text.contains("\na=inactive"));
        assert_eq!(s.origin_line(), "o=- 1700000001 3 IN IP4 192.168.1.10\r\n");
        // And it reads back.
        let info = parse_str(&text).unwrap();
        assert_eq!(info.stream_format().unwrap(), s.format);
        assert_eq!(info.mediaclk_offset(), 963_214_424);
        assert_eq!(info.refclk, Some(RefClock::PtpTraceable));
        assert_eq!(info.direction, Some(Direction::RecvOnly));
    }

    #[test]
    fn parses_the_filled_template() {
        let info = parse_str(TEMPLATE_FILLED).unwrap();
        assert_eq!(
            info.origin,
            Some(Origin {
                username: "-".into(),
                session_id: "1700000001".into(),
                session_version: "3".into(),
                address: "192.168.1.10".into(),
            })
        );
        assert_eq!(info.session_name.as_deref(), Some("gw-call-1"));
        assert_eq!(info.group, IpAddr::V4(Ipv4Addr::new(239, 69, 1, 10)));
        assert_eq!(info.ttl, Some(15));
        assert_eq!(info.port, 5004);
        assert_eq!(
            info.source,
            Some(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)))
        );
        assert_eq!(info.payload_type.get(), 98);
        assert_eq!(
            (info.encoding, info.sample_rate, info.channels),
            (Encoding::L24, 48_000, 2)
        );
        assert_eq!(info.ptime_us, Some(1000));
        assert_eq!(info.framecount, Some(48));
        assert_eq!(
            info.mediaclk,
            Some(MediaClock::Direct {
                offset: 0,
                rate: None
            })
        );
        assert_eq!(
            info.refclk,
            Some(RefClock::Ptp {
                gmid: gmid(),
                domain: 0
            })
        );
        assert_eq!(info.clock_domain, Some(0));
        assert_eq!(info.direction, Some(Direction::RecvOnly));
        assert_eq!(
            info.stream_format().unwrap(),
            StreamFormat::l24_1ms(Channels::STEREO)
        );
        // Round trip: our own builder output parses to the same fields.
        assert_eq!(parse_str(&sender().write()).unwrap().port, 5004);
    }

    #[test]
    fn parses_sheet_12_1_and_its_lf_form() {
        for text in [SHEET_12_1.to_owned(), SHEET_12_1.replace("\r\n", "\n")] {
            let info = parse(text.as_bytes()).unwrap();
            assert_eq!(info.group, IpAddr::V4(Ipv4Addr::new(239, 69, 1, 10)));
            assert_eq!(info.ttl, Some(32));
            assert_eq!(info.port, 5004);
            assert_eq!(info.payload_type.get(), 98);
            assert_eq!(
                info.stream_format().unwrap(),
                StreamFormat::l24_1ms(Channels::STEREO)
            );
            assert_eq!(info.mediaclk_offset(), 0);
            assert_eq!(info.refclk.as_ref().and_then(RefClock::domain), Some(0));
            // No source-filter: the o= address is the source.
            assert_eq!(
                info.source,
                Some(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)))
            );
        }
    }

    #[test]
    fn parses_ffmpeg_sdp() {
        // libavformat sdp.c output for `-f rtp rtp://239.69.1.10:5004` with pcm_s24be:
        // CRLF, session-level c= without TTL (no ?ttl= in the URL), a=tool, b=AS, PT 97,
        // no ptime/mediaclk/refclk.
        let ff = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\nc=IN IP4 239.69.1.10\r\nt=0 0\r\na=tool:libavformat 61.7.100\r\nm=audio 5004 RTP/AVP 97\r\nb=AS:2304\r\na=rtpmap:97 L24/48000/2\r\n";
        let info = parse_str(ff).unwrap();
        assert_eq!(info.ttl, None);
        assert_eq!(info.payload_type.get(), 97);
        assert_eq!(info.ptime_us, None);
        assert_eq!(info.mediaclk, None);
        assert_eq!(info.refclk, None);
        assert_eq!(
            info.stream_format().unwrap(),
            StreamFormat::l24_1ms(Channels::STEREO)
        );
        // With ?ttl=5 in the URL ffmpeg writes the TTL.
        let info = parse_str(&ff.replace("239.69.1.10\r\n", "239.69.1.10/5\r\n")).unwrap();
        assert_eq!(info.ttl, Some(5));
    }

    #[test]
    fn parses_gstreamer_sdp() {
        // As gst-rtsp-server's DESCRIBE answers (LF, i=, e=, a=tool/type/control/range,
        // media-level c=, port 0), here with L16/44100/1 as captured: parsed, then
        // rejected as a format.
        let gst = "v=0\no=- 1188340656180883 1 IN IP4 127.0.0.1\ns=Session streamed with GStreamer\ni=rtsp-server\ne=NONE\nt=0 0\na=tool:GStreamer\na=type:broadcast\na=control:*\na=range:npt=0.000000-\nm=audio 0 RTP/AVP 96\nc=IN IP4 127.0.0.1\na=rtpmap:96 L16/44100/1\na=control:stream=0\n";
        let info = parse_str(gst).unwrap();
        assert_eq!(info.origin.as_ref().unwrap().session_id, "1188340656180883");
        assert_eq!(
            (info.encoding, info.sample_rate, info.channels),
            (Encoding::L16, 44_100, 1)
        );
        assert_eq!(info.group, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            info.stream_format(),
            Err(SdpError::UnsupportedRate { rate: 44_100 })
        );
        // The same shape with an AES67 stream on multicast is receivable.
        let aes = gst
            .replace("m=audio 0 ", "m=audio 5004 ")
            .replace("c=IN IP4 127.0.0.1", "c=IN IP4 239.69.1.10/15")
            .replace("L16/44100/1", "L24/48000/2");
        let info = parse_str(&aes).unwrap();
        assert_eq!(
            info.stream_format().unwrap(),
            StreamFormat::l24_1ms(Channels::STEREO)
        );
        assert_eq!(info.port, 5004);
    }

    #[test]
    fn parses_elemental_style_and_redundant_sections() {
        // a=mediaclk with rate=, sendonly, session-level refclk, PT 97.
        let sdp = "v=0\no=- 7 7 IN IP4 10.0.0.5\ns=Elemental\nt=0 0\na=ts-refclk:ptp=IEEE1588-2008:39-A7-94-FF-FE-07-CB-D0:5\nm=audio 5006 RTP/AVP 97\nc=IN IP4 239.69.2.2/64\na=rtpmap:97 L24/48000/8\na=ptime:0.125\na=mediaclk:direct=12345 rate=48000\na=sendonly\n";
        let info = parse_str(sdp).unwrap();
        assert_eq!(
            info.mediaclk,
            Some(MediaClock::Direct {
                offset: 12_345,
                rate: Some(48_000)
            })
        );
        assert_eq!(info.mediaclk_offset(), 12_345);
        assert_eq!(info.refclk.as_ref().and_then(RefClock::domain), Some(5));
        assert_eq!(info.direction, Some(Direction::SendOnly));
        assert_eq!(info.stream_format().unwrap().packet_time, PacketTime::Us125);
        // ST 2022-7: two m= sections; the first is taken, the second's lines ignored.
        let dup = "v=0\no=- 9 9 IN IP4 10.0.0.6\ns=dual\nt=0 0\na=group:DUP 1 2\nm=audio 5004 RTP/AVP 98\nc=IN IP4 239.69.3.1/15\na=rtpmap:98 L24/48000/4\na=mid:1\nm=audio 5004 RTP/AVP 99\nc=IN IP4 239.70.3.1/15\na=rtpmap:99 L16/48000/4\na=mid:2\n";
        let info = parse_str(dup).unwrap();
        assert_eq!(info.group, IpAddr::V4(Ipv4Addr::new(239, 69, 3, 1)));
        assert_eq!(info.payload_type.get(), 98);
        assert_eq!(info.encoding, Encoding::L24);
    }

    #[test]
    fn typed_errors_for_what_is_missing() {
        // The §12.2 deletion payload: just the o= line.
        assert_eq!(
            parse_str("o=- 1 1 IN IP4 192.168.1.10\r\n"),
            Err(SdpError::NoAudioMedia)
        );
        assert_eq!(parse(&[0xff, 0xfe]), Err(SdpError::NotUtf8));
        let no_c = SHEET_12_1.replace("c=IN IP4 239.69.1.10/32\r\n", "");
        assert_eq!(parse_str(&no_c), Err(SdpError::NoConnection));
        let no_map = SHEET_12_1.replace("a=rtpmap:98 L24/48000/2\r\n", "");
        assert_eq!(
            parse_str(&no_map),
            Err(SdpError::NoRtpmap { payload_type: 98 })
        );
        let opus = SHEET_12_1.replace("L24/48000/2", "opus/48000/2");
        assert_eq!(
            parse_str(&opus),
            Err(SdpError::UnsupportedEncoding {
                encoding: "opus".into()
            })
        );
        let video = SHEET_12_1.replace("m=audio", "m=video");
        assert_eq!(parse_str(&video), Err(SdpError::NoAudioMedia));
        let bad_c = SHEET_12_1.replace("239.69.1.10/32", "not-an-ip/32");
        assert!(matches!(
            parse_str(&bad_c),
            Err(SdpError::Malformed { line: 4, .. })
        ));
        let many = SHEET_12_1.replace("L24/48000/2", "L24/48000/16");
        assert_eq!(
            parse_str(&many).unwrap().stream_format(),
            Err(SdpError::UnsupportedChannels { channels: 16 })
        );
        let odd = SHEET_12_1.replace("a=ptime:1\r\n", "a=ptime:0.5\r\n");
        assert_eq!(
            parse_str(&odd).unwrap().stream_format(),
            Err(SdpError::UnsupportedPtime { micros: 500 })
        );
        let inactive = SHEET_12_1.replace("a=recvonly", "a=inactive");
        assert_eq!(
            parse_str(&inactive).unwrap().stream_format(),
            Err(SdpError::Inactive)
        );
        // Static PT 11 (L16/44100/1) needs no rtpmap.
        let pt11 = SHEET_12_1
            .replace("RTP/AVP 98", "RTP/AVP 11")
            .replace("a=rtpmap:98 L24/48000/2\r\n", "");
        let info = parse_str(&pt11).unwrap();
        assert_eq!(
            (info.encoding, info.sample_rate, info.channels),
            (Encoding::L16, 44_100, 1)
        );
    }

    #[test]
    fn refclk_values_parse_as_in_an_sdp() {
        assert_eq!(
            RefClock::parse("ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0"),
            RefClock::Ptp {
                gmid: gmid(),
                domain: 0
            }
        );
        assert_eq!(
            RefClock::parse(" ptp=IEEE1588-2008:traceable "),
            RefClock::PtpTraceable
        );
        assert_eq!(
            RefClock::parse("localmac=00-1D-C1-12-34-56"),
            RefClock::Other("localmac=00-1D-C1-12-34-56".into())
        );
    }

    #[test]
    fn origin_line_helper() {
        assert_eq!(origin_line(SHEET_12_1), Some("o=- 1 1 IN IP4 192.168.1.10"));
        assert_eq!(origin_line("v=0\n"), None);
    }
}
