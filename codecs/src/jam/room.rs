//! Sans-IO core of a hosted jam room: rtjam's broadcast server in "separate" mode
//! (rtjam.md §3–§6).
//!
//! Members are keyed by source address and created by their first datagram; each valid
//! datagram is stamped with the server time and metronome beat, sent whole to every
//! other member, and its 28-byte header is echoed to the sender. A member silent for
//! 1 s is dropped. Unlike rtjam (which admits anyone, rtjam.md §7) the room protects its
//! members, and counts every drop:
//! * an allow-list of source networks and a member cap (16 by default);
//! * a packet-rate limit per member (a token bucket: 500 datagrams per second by
//!   default, with 0.4 s of burst; a jammer sends 375), so one source cannot flood the
//!   others;
//! * a client_id belongs to the member that holds it: a datagram carrying it from any
//!   other address is an intruder's (rtjam's clients key jammers by client_id, so a
//!   second stream under the same id would silence the first for everyone) and is
//!   dropped, never forwarded. The ids of the hosting node's own seats are held too.
//!
//! "mix" mode (rtjam.md §4) is not implemented.
//!
//! The driver owns the socket and the clock: it passes each datagram with its source
//! and `now` (µs since the Unix epoch, the server_time clock) and sends what the sink
//! is given. Nothing allocates per packet once the members exist.

use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::str::FromStr;

pub use ipnet::IpNet;

use super::packet::{HEADER_LEN, JamHeader, JamPacket, ParseError, stamp_server_fields};

/// Silence after which a member is dropped: 1 s (rtjam.md §3).
pub const MEMBER_TIMEOUT_US: u64 = 1_000_000;
/// Round trips at or above this are ignored, as rtjam does (rtjam.md §5).
pub const MAX_ROUND_TRIP_US: u64 = 100_000;
/// Weight of a new round-trip sample in the smoothed value (≈ 0.34 s at 375 pkt/s).
const RTT_SMOOTHING: f64 = 1.0 / 128.0;
/// Default member cap: what a hosting node's seats can hear at once, and well within
/// what one core forwards (rtjam's own client hears 11 others, rtjam.md §3).
pub const DEFAULT_MAX_MEMBERS: usize = 16;
/// Default datagrams per second one member may send: a jammer sends 375 (rtjam.md §2),
/// plus a third for margin.
pub const DEFAULT_MAX_PACKET_RATE: u32 = 500;
/// Burst a member's token bucket holds, in seconds of its rate: a sender that stalled
/// for up to about 0.5 s may catch up at once.
pub const PACKET_BURST_SECONDS: f64 = 0.4;

/// Metronome tempo in beats per minute (1..=1000; rtjam's default is 120).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tempo(NonZeroU32);

/// The tempo was outside 1..=1000 BPM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tempo {bpm} BPM outside 1..=1000")]
pub struct InvalidTempo {
    /// The rejected tempo.
    pub bpm: u32,
}

impl Tempo {
    /// rtjam's default, 120 BPM (rtjam.md §6).
    pub const DEFAULT: Tempo = Tempo(NonZeroU32::MIN.saturating_add(119));

    /// Validates `bpm`.
    pub fn new(bpm: u32) -> Result<Tempo, InvalidTempo> {
        if bpm > 1000 {
            return Err(InvalidTempo { bpm });
        }
        NonZeroU32::new(bpm).map(Tempo).ok_or(InvalidTempo { bpm })
    }

    /// Beats per minute.
    pub fn bpm(self) -> u32 {
        self.0.get()
    }

    /// Length of one beat in µs, `60 000 000 / bpm` in integers as rtjam computes it.
    pub fn beat_interval_us(self) -> u64 {
        60_000_000 / u64::from(self.0.get())
    }

    /// The beat (0..=3) at absolute time `now_us`: floor(now / interval) mod 4 (rtjam.md §6).
    pub fn beat_at(self, now_us: u64) -> u8 {
        // mod 4 keeps it in 0..=3.
        ((now_us / self.beat_interval_us()) % 4) as u8
    }
}

impl Default for Tempo {
    fn default() -> Self {
        Tempo::DEFAULT
    }
}

impl TryFrom<u32> for Tempo {
    type Error = InvalidTempo;
    fn try_from(bpm: u32) -> Result<Self, Self::Error> {
        Tempo::new(bpm)
    }
}

/// A source network list entry that is neither a CIDR prefix nor an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network {entry:?} in allow-list (expected CIDR like 10.0.0.0/8 or an address)")]
pub struct InvalidNetwork {
    /// The offending entry.
    pub entry: String,
}

/// Source networks allowed into a room. IPv4-mapped IPv6 sources (from a dual-stack
/// socket) are matched as IPv4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<IpNet>,
}

impl AllowList {
    /// Every source (rtjam's behaviour).
    pub fn any() -> AllowList {
        AllowList {
            nets: vec![
                IpNet::V4(ipnet::Ipv4Net::default()),
                IpNet::V6(ipnet::Ipv6Net::default()),
            ],
        }
    }

    /// Loopback only: 127.0.0.0/8 and ::1.
    pub fn loopback() -> AllowList {
        let v4 = ipnet::Ipv4Net::new(std::net::Ipv4Addr::LOCALHOST, 8).map(IpNet::V4);
        let v6 = ipnet::Ipv6Net::new(std::net::Ipv6Addr::LOCALHOST, 128).map(IpNet::V6);
        AllowList {
            nets: v4.into_iter().chain(v6).collect(),
        }
    }

    /// Nobody.
    pub fn none() -> AllowList {
        AllowList { nets: Vec::new() }
    }

    /// Exactly these networks.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> AllowList {
        AllowList {
            nets: nets.into_iter().collect(),
        }
    }

    /// The networks.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// Whether `ip` is inside one of the networks.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

impl FromStr for AllowList {
    type Err = InvalidNetwork;

    /// Parses a comma- or whitespace-separated list of CIDR prefixes or bare addresses
    /// (a bare address is a single host), e.g. `"127.0.0.0/8, 192.168.1.0/24 ::1"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut nets = Vec::new();
        for entry in s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
        {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| InvalidNetwork {
                    entry: entry.to_owned(),
                })?;
            nets.push(net);
        }
        Ok(AllowList { nets })
    }
}

/// Settings of a [`RoomCore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomConfig {
    /// Metronome tempo (default 120 BPM).
    pub tempo: Tempo,
    /// Most members at once; `None` is unbounded, as rtjam (default 16,
    /// [`DEFAULT_MAX_MEMBERS`]).
    pub max_members: Option<NonZeroUsize>,
    /// Source networks admitted (default loopback only; rtjam admits everyone).
    pub allow: AllowList,
    /// Silence after which a member is dropped (default 1 s, rtjam.md §3).
    pub member_timeout_us: u64,
    /// Datagrams per second one member may send, with [`PACKET_BURST_SECONDS`] of
    /// burst; the excess is dropped. `None` is unlimited, as rtjam (default 500,
    /// [`DEFAULT_MAX_PACKET_RATE`]).
    pub max_packet_rate: Option<NonZeroU32>,
    /// client_ids the room holds for itself (a hosting node's seats): refused from the
    /// network like any client_id another member holds (default none).
    pub local_client_ids: Vec<u32>,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            tempo: Tempo::DEFAULT,
            max_members: NonZeroUsize::new(DEFAULT_MAX_MEMBERS),
            allow: AllowList::loopback(),
            member_timeout_us: MEMBER_TIMEOUT_US,
            max_packet_rate: NonZeroU32::new(DEFAULT_MAX_PACKET_RATE),
            local_client_ids: Vec::new(),
        }
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a jam packet.
    Malformed(ParseError),
    /// Source address outside the allow-list.
    NotAllowed,
    /// A new source while the room is at its member cap.
    RoomFull,
    /// A member over its packet rate.
    RateLimited,
    /// A client_id another member (or the room itself) holds, from another address.
    Intruder {
        /// The client_id it carried.
        client_id: u32,
    },
}

/// What [`RoomCore::handle_datagram`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomOutcome {
    /// Stamped, sent to `recipients` other members, header echoed to the sender.
    Forwarded {
        /// Members that got the whole packet.
        recipients: usize,
        /// Whether this datagram made the sender a member.
        joined: bool,
    },
    /// Dropped (and counted).
    Dropped(DropReason),
}

/// Datagrams dropped, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RoomDrops {
    /// Shorter than the header.
    pub too_short: u64,
    /// Longer than 1024 bytes.
    pub too_long: u64,
    /// Odd length.
    pub odd_length: u64,
    /// Audio not a whole number of frames.
    pub ragged_audio: u64,
    /// Source not in the allow-list.
    pub not_allowed: u64,
    /// Room at its member cap.
    pub room_full: u64,
    /// Over the sending member's packet rate.
    pub rate_limited: u64,
    /// A client_id held by another member (or the room), from another address.
    pub intruder: u64,
}

/// Counters of a [`RoomCore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RoomStats {
    /// Datagrams offered.
    pub datagrams: u64,
    /// Datagrams accepted and forwarded.
    pub forwarded: u64,
    /// Whole-packet copies handed to the sink.
    pub copies_sent: u64,
    /// Header-only echoes handed to the sink.
    pub echoes_sent: u64,
    /// Members created.
    pub joined: u64,
    /// Members dropped for silence.
    pub expired: u64,
    /// Drops by reason.
    pub drops: RoomDrops,
}

/// One member of the room, keyed by its source address.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Member {
    /// Source address (where packets for this member go).
    pub addr: SocketAddr,
    /// client_id of its latest packet (statistics only, rtjam.md §3).
    pub client_id: u32,
    /// When it joined, µs.
    pub joined_us: u64,
    /// When its latest datagram arrived, µs.
    pub last_heard_us: u64,
    /// Datagrams received from it.
    pub packets: u64,
    /// Times its sequence number was not the previous + 1 (the first packet excluded,
    /// unlike rtjam which charges a stream starting at 0 one drop).
    pub sequence_gaps: u64,
    /// Smoothed round trip (now − echoed server_time), µs, once measured (rtjam.md §5).
    pub round_trip_us: Option<f64>,
    /// Identifies this member's stream: unique among the members a room ever had, so a
    /// client_id that leaves and comes back (or changes hands) is a new stream.
    pub stream: u64,
    /// Datagrams dropped for going over the packet rate.
    pub rate_limited: u64,
    last_sequence: u32,
    /// Token bucket of the packet-rate limit, and when it was last refilled (µs).
    tokens: f64,
    refilled_us: u64,
}

/// The room: members, forwarding, expiry, metronome.
#[derive(Debug, Clone)]
pub struct RoomCore {
    config: RoomConfig,
    members: Vec<Member>,
    /// Members that left since the driver last drained them (for join/leave events).
    departed: Vec<(Member, Departure)>,
    stats: RoomStats,
    /// Stream number of the next member.
    next_stream: u64,
}

/// Why a member left the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Departure {
    /// Silent for the member timeout (rtjam.md §3).
    Expired,
    /// Removed: kicked, or no longer admitted by a changed allow-list.
    Removed,
}

/// Departures kept for the driver at most; beyond, the oldest undrained ones are lost.
const MAX_DEPARTED: usize = 1024;

impl RoomCore {
    /// An empty room. Member storage for the cap (or 16) is reserved up front.
    pub fn new(config: RoomConfig) -> RoomCore {
        let reserve = config.max_members.map_or(16, NonZeroUsize::get).min(1024);
        RoomCore {
            config,
            members: Vec::with_capacity(reserve),
            departed: Vec::with_capacity(reserve),
            stats: RoomStats::default(),
            next_stream: 1,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RoomConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &RoomStats {
        &self.stats
    }

    /// Current members, in join order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member at `addr`, if any.
    pub fn member(&self, addr: SocketAddr) -> Option<&Member> {
        self.members.iter().find(|m| m.addr == addr)
    }

    /// Metronome tempo.
    pub fn tempo(&self) -> Tempo {
        self.config.tempo
    }

    /// Changes the tempo (rtjam's SetTempo room command, rtjam.md §8).
    pub fn set_tempo(&mut self, tempo: Tempo) {
        self.config.tempo = tempo;
    }

    /// Beat at `now_us` (rtjam.md §6).
    pub fn beat_at(&self, now_us: u64) -> u8 {
        self.config.tempo.beat_at(now_us)
    }

    /// Changes the member cap; members beyond it stay until they expire.
    pub fn set_max_members(&mut self, max: Option<NonZeroUsize>) {
        self.config.max_members = max;
    }

    /// Changes the packet-rate limit per member (`None`: unlimited).
    pub fn set_max_packet_rate(&mut self, rate: Option<NonZeroU32>) {
        self.config.max_packet_rate = rate;
    }

    /// Sets the client_ids the room holds for itself (a hosting node's seats).
    pub fn set_local_client_ids(&mut self, ids: Vec<u32>) {
        self.config.local_client_ids = ids;
    }

    /// Whether `client_id` is held by the room itself or by a member other than the
    /// one at index `except`.
    fn client_id_taken(&self, client_id: u32, except: Option<usize>) -> bool {
        self.config.local_client_ids.contains(&client_id)
            || self
                .members
                .iter()
                .enumerate()
                .any(|(i, m)| m.client_id == client_id && Some(i) != except)
    }

    /// Replaces the allow-list and removes members it no longer admits.
    pub fn set_allow_list(&mut self, allow: AllowList) {
        self.config.allow = allow;
        let allow = &self.config.allow;
        let gone: Vec<Member> = self
            .members
            .extract_if(.., |m| !allow.allows(m.addr.ip()))
            .collect();
        for member in gone {
            self.note_departure(member, Departure::Removed);
        }
    }

    /// Removes a member now (e.g. kicked); true if it existed.
    pub fn remove(&mut self, addr: SocketAddr) -> bool {
        match self.members.iter().position(|m| m.addr == addr) {
            Some(i) => {
                let member = self.members.remove(i);
                self.note_departure(member, Departure::Removed);
                true
            }
            None => false,
        }
    }

    /// Hands over the members that left since the last call, oldest first, with why.
    /// Drivers that report departures call this after each datagram and expiry check;
    /// at most 1024 undrained departures are kept.
    pub fn drain_departed(&mut self) -> std::vec::Drain<'_, (Member, Departure)> {
        self.departed.drain(..)
    }

    fn note_departure(&mut self, member: Member, why: Departure) {
        if self.departed.len() >= MAX_DEPARTED {
            self.departed.remove(0);
        }
        self.departed.push((member, why));
    }

    /// Drops members silent for the timeout at `now_us` (rtjam keeps a member while
    /// last_heard + 1 s > now). Returns how many were dropped.
    pub fn expire(&mut self, now_us: u64) -> usize {
        let timeout = self.config.member_timeout_us;
        let mut gone = 0;
        // Rarely true: without an expired member this neither moves nor allocates.
        while let Some(i) = self
            .members
            .iter()
            .position(|m| m.last_heard_us.saturating_add(timeout) <= now_us)
        {
            let member = self.members.remove(i);
            self.note_departure(member, Departure::Expired);
            gone += 1;
        }
        self.stats.expired += gone as u64;
        gone
    }

    /// When the next member would expire (for the driver's timer), if any.
    pub fn next_expiry_us(&self) -> Option<u64> {
        let timeout = self.config.member_timeout_us;
        self.members
            .iter()
            .map(|m| m.last_heard_us.saturating_add(timeout))
            .min()
    }

    /// Handles one datagram from `from` received at `now_us` (rtjam.md §4): expires
    /// silent members, checks source, rate and packet, updates or creates the member,
    /// stamps server_time = `now_us` and the beat into `datagram` in place, then calls
    /// `send(addr, bytes)` with the whole datagram for every other member and with the
    /// 28-byte header for the sender. A dropped datagram sends nothing.
    pub fn handle_datagram(
        &mut self,
        now_us: u64,
        from: SocketAddr,
        datagram: &mut [u8],
        mut send: impl FnMut(SocketAddr, &[u8]),
    ) -> RoomOutcome {
        self.stats.datagrams += 1;
        self.expire(now_us);
        if !self.config.allow.allows(from.ip()) {
            self.stats.drops.not_allowed += 1;
            return RoomOutcome::Dropped(DropReason::NotAllowed);
        }
        let existing = self.members.iter().position(|m| m.addr == from);
        if let Some(i) = existing {
            // First, as the cheapest way out of a flood.
            let rate = self.config.max_packet_rate;
            if !self.members[i].take_token(now_us, rate) {
                self.members[i].rate_limited += 1;
                self.stats.drops.rate_limited += 1;
                return RoomOutcome::Dropped(DropReason::RateLimited);
            }
        }
        let header = match JamPacket::parse(datagram) {
            Ok(p) => *p.header(),
            Err(e) => return self.drop_malformed(e),
        };
        let changed_id = existing.is_none_or(|i| self.members[i].client_id != header.client_id);
        if changed_id && self.client_id_taken(header.client_id, existing) {
            self.stats.drops.intruder += 1;
            return RoomOutcome::Dropped(DropReason::Intruder {
                client_id: header.client_id,
            });
        }
        let joined = match existing {
            Some(i) => {
                self.members[i].update(now_us, &header);
                false
            }
            None => {
                if self
                    .config
                    .max_members
                    .is_some_and(|max| self.members.len() >= max.get())
                {
                    self.stats.drops.room_full += 1;
                    return RoomOutcome::Dropped(DropReason::RoomFull);
                }
                let mut member = Member::new(from, now_us, &header, self.next_stream);
                self.next_stream += 1;
                member.take_token(now_us, self.config.max_packet_rate);
                self.members.push(member);
                self.stats.joined += 1;
                true
            }
        };
        let beat = self.beat_at(now_us);
        if let Err(e) = stamp_server_fields(datagram, now_us, beat) {
            return self.drop_malformed(e);
        }
        let mut recipients = 0;
        for m in self.members.iter().filter(|m| m.addr != from) {
            send(m.addr, datagram);
            recipients += 1;
        }
        send(from, &datagram[..HEADER_LEN]);
        self.stats.forwarded += 1;
        self.stats.copies_sent += recipients as u64;
        self.stats.echoes_sent += 1;
        RoomOutcome::Forwarded { recipients, joined }
    }

    fn drop_malformed(&mut self, e: ParseError) -> RoomOutcome {
        let d = &mut self.stats.drops;
        match e {
            ParseError::TooShort { .. } => d.too_short += 1,
            ParseError::TooLong { .. } => d.too_long += 1,
            ParseError::OddLength { .. } => d.odd_length += 1,
            ParseError::RaggedAudio { .. } => d.ragged_audio += 1,
        }
        RoomOutcome::Dropped(DropReason::Malformed(e))
    }
}

impl Member {
    fn new(addr: SocketAddr, now_us: u64, header: &JamHeader, stream: u64) -> Member {
        let mut m = Member {
            addr,
            client_id: header.client_id,
            joined_us: now_us,
            last_heard_us: now_us,
            packets: 0,
            sequence_gaps: 0,
            round_trip_us: None,
            stream,
            rate_limited: 0,
            last_sequence: header.sequence,
            tokens: f64::MAX,
            refilled_us: now_us,
        };
        m.update(now_us, header);
        m
    }

    /// Takes one datagram's token from the bucket at `now_us`; false when the member is
    /// over `rate` (always true without a limit).
    fn take_token(&mut self, now_us: u64, rate: Option<NonZeroU32>) -> bool {
        let Some(rate) = rate else { return true };
        let rate = f64::from(rate.get());
        let burst = (rate * PACKET_BURST_SECONDS).max(1.0);
        let elapsed_s = now_us.saturating_sub(self.refilled_us) as f64 / 1e6;
        self.refilled_us = self.refilled_us.max(now_us);
        self.tokens = (self.tokens + elapsed_s * rate).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn update(&mut self, now_us: u64, header: &JamHeader) {
        if self.packets > 0 && header.sequence != self.last_sequence.wrapping_add(1) {
            self.sequence_gaps += 1;
        }
        self.packets += 1;
        self.last_sequence = header.sequence;
        self.client_id = header.client_id;
        self.last_heard_us = self.last_heard_us.max(now_us);
        // rtjam.md §5: the echoed server_time gives the loop time; ignore zero, future
        // and ≥ 100 ms stamps.
        let st = header.server_time;
        if st != 0 && st <= now_us && now_us - st < MAX_ROUND_TRIP_US {
            let sample = (now_us - st) as f64;
            self.round_trip_us = Some(match self.round_trip_us {
                Some(avg) => avg + (sample - avg) * RTT_SMOOTHING,
                None => sample,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jam::packet::write_packet;

    const T0: u64 = 1_700_000_000_000_000;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn packet(client_id: u32, sequence: u32, server_time: u64, level: f32) -> Vec<u8> {
        let h = JamHeader {
            num_audio_chunks: 16,
            server_time,
            client_time: 5,
            client_id,
            sequence,
            ..JamHeader::default()
        };
        let mut buf = vec![0u8; 1024];
        let n = write_packet(&h, &[level; 128], &[-level; 128], &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    /// Runs one datagram through the room; returns what was sent, in order.
    fn handle(
        room: &mut RoomCore,
        now: u64,
        from: SocketAddr,
        mut dgram: Vec<u8>,
    ) -> (RoomOutcome, Vec<(SocketAddr, Vec<u8>)>) {
        let mut sent = Vec::new();
        let out = room.handle_datagram(now, from, &mut dgram, |to, bytes| {
            sent.push((to, bytes.to_vec()))
        });
        (out, sent)
    }

    #[test]
    fn three_members_forwarding_matrix_and_echoes() {
        let mut room = RoomCore::new(RoomConfig::default());
        let a = addr("127.0.0.1:40001");
        let b = addr("127.0.0.2:40002");
        let c = addr("[::1]:40003");
        let ids = [(a, 101), (b, 102), (c, 103)];
        // Everyone joins.
        for (i, (from, id)) in ids.iter().enumerate() {
            let (out, _) = handle(&mut room, T0 + i as u64 * 10, *from, packet(*id, 0, 0, 0.1));
            assert_eq!(
                out,
                RoomOutcome::Forwarded {
                    recipients: i,
                    joined: true
                }
            );
        }
        assert_eq!(room.members().len(), 3);
        // Now each sends once: the others get the whole packet, the sender its header.
        for (k, (from, id)) in ids.iter().enumerate() {
            let now = T0 + 1_000 + k as u64 * 300_123;
            let original = packet(*id, 1, T0 + 5, 0.25 * (k + 1) as f32);
            let (out, sent) = handle(&mut room, now, *from, original.clone());
            assert_eq!(
                out,
                RoomOutcome::Forwarded {
                    recipients: 2,
                    joined: false
                }
            );
            assert_eq!(sent.len(), 3);
            let expected_beat = ((now / 500_000) % 4) as u8;
            for (to, bytes) in &sent {
                let p = JamPacket::parse(bytes).unwrap();
                assert_eq!(p.header().server_time, now, "stamped with the server clock");
                assert_eq!(p.header().beat, expected_beat);
                assert_eq!(p.header().client_id, *id);
                if to == from {
                    assert_eq!(bytes.len(), 28, "header-only echo to the sender");
                    assert_eq!(p.header().num_audio_chunks, 16, "chunks byte kept");
                } else {
                    assert_eq!(bytes.len(), 540);
                    // Audio untouched: everything after byte 12 is as sent.
                    assert_eq!(&bytes[12..], &original[12..]);
                    assert_eq!(&bytes[..3], &original[..3]);
                }
            }
            let mut targets: Vec<_> = sent.iter().map(|(to, _)| *to).collect();
            targets.sort();
            let mut all: Vec<_> = ids.iter().map(|(x, _)| *x).collect();
            all.sort();
            assert_eq!(targets, all, "one datagram to each member");
        }
        // Joins reached 0, 1 and 2 others; then three packets reached 2 each.
        assert_eq!(room.stats().copies_sent, 3 + 6);
        assert_eq!(room.stats().echoes_sent, 6);
        // Round trip measured from the echoed server_time (T0 + 5).
        assert_eq!(room.member(a).unwrap().round_trip_us, Some(995.0));
        assert_eq!(
            room.member(b).unwrap().round_trip_us,
            None,
            "≥ 100 ms is ignored"
        );
    }

    #[test]
    fn v2_echo_from_v1() {
        // rtjam.md §2: V2 is V1's echo stamped at 1 700 000 000 127 000 µs with beat 2.
        // The beat there is illustrative (at 120 BPM that instant is beat 0), so pick a
        // tempo that gives beat 2 at that instant and compare the echo byte for byte.
        let v1 = "0000010000060a241820224000060a2418202848000003e9000000077ffebffd3ffffffc00009ffd7ffe5ffe";
        let v2 = "0000010200060a241820301800060a2418202848000003e900000007";
        let bytes: Vec<u8> = (0..v1.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&v1[i..i + 2], 16).unwrap())
            .collect();
        let now = 1_700_000_000_127_000;
        let tempo = (1..=1000)
            .map(|b| Tempo::new(b).unwrap())
            .find(|t| t.beat_at(now) == 2)
            .unwrap();
        let mut room = RoomCore::new(RoomConfig {
            tempo,
            ..RoomConfig::default()
        });
        let (_, sent) = handle(&mut room, now, addr("127.0.0.1:9991"), bytes);
        assert_eq!(sent.len(), 1);
        let hex: String = sent[0].1.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, v2);
    }

    #[test]
    fn metronome_matches_rtjam_formula() {
        let t = Tempo::DEFAULT;
        assert_eq!(t.bpm(), 120);
        assert_eq!(t.beat_interval_us(), 500_000);
        assert_eq!(t.beat_at(0), 0);
        assert_eq!(t.beat_at(499_999), 0);
        assert_eq!(t.beat_at(500_000), 1);
        assert_eq!(t.beat_at(1_999_999), 3);
        assert_eq!(t.beat_at(2_000_000), 0);
        // 1 700 000 000 127 000 / 500 000 = 3 400 000 000 (rem 127 000) → beat 0.
        assert_eq!(t.beat_at(1_700_000_000_127_000), 0);
        let t = Tempo::new(7).unwrap();
        assert_eq!(t.beat_interval_us(), 8_571_428);
        assert_eq!(t.beat_at(8_571_428 * 6 + 1), 2);
        assert_eq!(Tempo::new(0), Err(InvalidTempo { bpm: 0 }));
        assert_eq!(Tempo::new(1001), Err(InvalidTempo { bpm: 1001 }));
    }

    #[test]
    fn silent_member_expires_after_one_second() {
        let mut room = RoomCore::new(RoomConfig::default());
        let a = addr("127.0.0.1:1");
        let b = addr("127.0.0.1:2");
        handle(&mut room, T0, a, packet(1, 0, 0, 0.0));
        handle(&mut room, T0, b, packet(2, 0, 0, 0.0));
        assert_eq!(room.next_expiry_us(), Some(T0 + 1_000_000));
        // b keeps sending; a is silent.
        let (_, sent) = handle(&mut room, T0 + 999_999, b, packet(2, 1, 0, 0.0));
        assert!(
            sent.iter().any(|(to, _)| *to == a),
            "a still a member at 0.999999 s"
        );
        let (out, sent) = handle(&mut room, T0 + 1_000_000, b, packet(2, 2, 0, 0.0));
        assert_eq!(
            out,
            RoomOutcome::Forwarded {
                recipients: 0,
                joined: false
            }
        );
        assert_eq!(sent, vec![(b, sent[0].1.clone())]);
        assert_eq!(room.members().len(), 1);
        assert_eq!(room.stats().expired, 1);
        assert_eq!(room.expire(T0 + 1_999_999), 0);
        assert_eq!(room.expire(T0 + 2_000_000), 1);
        assert!(room.members().is_empty());
        assert_eq!(room.next_expiry_us(), None);
    }

    #[test]
    fn departures_are_reported_once_with_their_reason() {
        let mut room = RoomCore::new(RoomConfig::default());
        let (a, b, c) = (
            addr("127.0.0.1:1"),
            addr("127.0.0.1:2"),
            addr("127.0.0.2:3"),
        );
        handle(&mut room, T0, a, packet(11, 0, 0, 0.0));
        handle(&mut room, T0 + 500_000, b, packet(22, 0, 0, 0.0));
        handle(&mut room, T0 + 500_000, c, packet(33, 0, 0, 0.0));
        assert_eq!(room.drain_departed().count(), 0);
        // a expires when b's next packet is handled 1 s after a was last heard.
        handle(&mut room, T0 + 1_000_000, b, packet(22, 1, 0, 0.0));
        let gone: Vec<_> = room
            .drain_departed()
            .map(|(m, why)| (m.client_id, m.addr, why))
            .collect();
        assert_eq!(gone, vec![(11, a, Departure::Expired)]);
        assert_eq!(room.drain_departed().count(), 0, "reported once");
        room.set_allow_list("127.0.0.1/32".parse().unwrap());
        assert!(room.remove(b));
        assert!(!room.remove(b));
        let gone: Vec<_> = room
            .drain_departed()
            .map(|(m, why)| (m.client_id, why))
            .collect();
        assert_eq!(
            gone,
            vec![(33, Departure::Removed), (22, Departure::Removed)]
        );
        assert!(room.members().is_empty());
    }

    #[test]
    fn member_cap() {
        let mut room = RoomCore::new(RoomConfig {
            max_members: NonZeroUsize::new(2),
            ..RoomConfig::default()
        });
        let (a, b, c) = (
            addr("127.0.0.1:1"),
            addr("127.0.0.1:2"),
            addr("127.0.0.1:3"),
        );
        handle(&mut room, T0, a, packet(1, 0, 0, 0.0));
        handle(&mut room, T0, b, packet(2, 0, 0, 0.0));
        let (out, sent) = handle(&mut room, T0, c, packet(3, 0, 0, 0.0));
        assert_eq!(out, RoomOutcome::Dropped(DropReason::RoomFull));
        assert!(sent.is_empty());
        assert_eq!(room.stats().drops.room_full, 1);
        // Existing members are unaffected.
        let (out, _) = handle(&mut room, T0 + 1, a, packet(1, 1, 0, 0.0));
        assert_eq!(
            out,
            RoomOutcome::Forwarded {
                recipients: 1,
                joined: false
            }
        );
        // Once a seat frees up (b expires), c gets in.
        handle(&mut room, T0 + 900_000, a, packet(1, 2, 0, 0.0));
        let (out, _) = handle(&mut room, T0 + 1_000_000, c, packet(3, 1, 0, 0.0));
        assert_eq!(
            out,
            RoomOutcome::Forwarded {
                recipients: 1,
                joined: true
            }
        );
    }

    #[test]
    fn allow_list() {
        let allow: AllowList = "10.1.0.0/16, 192.168.5.7 ::1".parse().unwrap();
        assert_eq!(allow.nets().len(), 3);
        assert!(allow.allows("10.1.200.3".parse().unwrap()));
        assert!(!allow.allows("10.2.0.1".parse().unwrap()));
        assert!(allow.allows("192.168.5.7".parse().unwrap()));
        assert!(!allow.allows("192.168.5.8".parse().unwrap()));
        assert!(
            allow.allows("::ffff:10.1.2.3".parse().unwrap()),
            "v4-mapped matched as v4"
        );
        assert!(allow.allows("::1".parse().unwrap()));
        assert_eq!(
            "10.0.0.0/33".parse::<AllowList>(),
            Err(InvalidNetwork {
                entry: "10.0.0.0/33".into()
            })
        );
        assert!(AllowList::any().allows("203.0.113.9".parse().unwrap()));
        assert!(!AllowList::none().allows("127.0.0.1".parse().unwrap()));
        let lo = AllowList::loopback();
        assert!(lo.allows("127.8.9.10".parse().unwrap()));
        assert!(!lo.allows("192.0.2.1".parse().unwrap()));

        let mut room = RoomCore::new(RoomConfig::default());
        let (out, sent) = handle(&mut room, T0, addr("192.0.2.1:5000"), packet(1, 0, 0, 0.0));
        assert_eq!(out, RoomOutcome::Dropped(DropReason::NotAllowed));
        assert!(sent.is_empty());
        assert!(room.members().is_empty());
        assert_eq!(room.stats().drops.not_allowed, 1);
        // Narrowing the list removes members outside it.
        handle(&mut room, T0, addr("127.0.0.1:1"), packet(1, 0, 0, 0.0));
        handle(&mut room, T0, addr("127.0.0.2:1"), packet(2, 0, 0, 0.0));
        room.set_allow_list("127.0.0.1/32".parse().unwrap());
        assert_eq!(room.members().len(), 1);
    }

    #[test]
    fn garbage_is_dropped_and_counted_without_disturbing_members() {
        let mut room = RoomCore::new(RoomConfig::default());
        let (a, b, c) = (
            addr("127.0.0.1:1"),
            addr("127.0.0.1:2"),
            addr("127.0.0.1:3"),
        );
        handle(&mut room, T0, a, packet(1, 0, 0, 0.0));
        handle(&mut room, T0, b, packet(2, 0, 0, 0.0));
        let garbage: [(Vec<u8>, DropReason); 4] = [
            (
                vec![0xAB; 13],
                DropReason::Malformed(ParseError::TooShort { len: 13 }),
            ),
            (
                vec![0xAB; 541],
                DropReason::Malformed(ParseError::OddLength { len: 541 }),
            ),
            (
                vec![0xAB; 1500],
                DropReason::Malformed(ParseError::TooLong {
                    len: 1500,
                    max: 1024,
                }),
            ),
            (
                vec![0xAB; 30],
                DropReason::Malformed(ParseError::RaggedAudio {
                    len: 30,
                    audio_bytes: 2,
                }),
            ),
        ];
        for (g, reason) in garbage {
            // From a member and from a stranger.
            for from in [a, c] {
                let (out, sent) = handle(&mut room, T0 + 10, from, g.clone());
                assert_eq!(out, RoomOutcome::Dropped(reason));
                assert!(sent.is_empty());
            }
        }
        let d = room.stats().drops;
        assert_eq!(
            (d.too_short, d.odd_length, d.too_long, d.ragged_audio),
            (2, 2, 2, 2)
        );
        assert_eq!(room.members().len(), 2, "garbage does not create members");
        assert_eq!(
            room.member(a).unwrap().last_heard_us,
            T0,
            "nor keep them alive"
        );
        let (out, sent) = handle(&mut room, T0 + 20, b, packet(2, 1, 0, 0.5));
        assert_eq!(
            out,
            RoomOutcome::Forwarded {
                recipients: 1,
                joined: false
            }
        );
        assert_eq!(sent.len(), 2);
        assert_eq!(room.member(b).unwrap().sequence_gaps, 0);
    }

    #[test]
    fn sequence_gaps_are_counted_per_member() {
        let mut room = RoomCore::new(RoomConfig::default());
        let a = addr("127.0.0.1:1");
        for seq in [0, 1, 2, 5, 6, 4] {
            handle(&mut room, T0, a, packet(1, seq, 0, 0.0));
        }
        assert_eq!(room.member(a).unwrap().sequence_gaps, 2);
        assert_eq!(room.member(a).unwrap().packets, 6);
        // Wrap-around is not a gap.
        let b = addr("127.0.0.1:2");
        handle(&mut room, T0, b, packet(2, u32::MAX, 0, 0.0));
        handle(&mut room, T0, b, packet(2, 0, 0, 0.0));
        assert_eq!(room.member(b).unwrap().sequence_gaps, 0);
    }

    #[test]
    fn header_only_datagrams_are_forwarded_like_rtjam() {
        let mut room = RoomCore::new(RoomConfig::default());
        let (a, b) = (addr("127.0.0.1:1"), addr("127.0.0.1:2"));
        handle(&mut room, T0, a, packet(1, 0, 0, 0.0));
        let mut h = [0u8; 28];
        JamHeader::default().write_to(&mut h).unwrap();
        let (out, sent) = handle(&mut room, T0, b, h.to_vec());
        assert_eq!(
            out,
            RoomOutcome::Forwarded {
                recipients: 1,
                joined: true
            }
        );
        assert!(sent.iter().all(|(_, bytes)| bytes.len() == 28));
    }

    #[test]
    fn forwarding_does_not_allocate_member_storage_per_packet() {
        let mut room = RoomCore::new(RoomConfig::default());
        let addrs: Vec<SocketAddr> = (1..=12)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        for (i, a) in addrs.iter().enumerate() {
            handle(&mut room, T0, *a, packet(i as u32, 0, 0, 0.0));
        }
        let cap = room.members.capacity();
        let mut dgrams: Vec<Vec<u8>> = (0..12).map(|i| packet(i, 1, 0, 0.3)).collect();
        let mut copies = 0;
        for k in 0..1_000u64 {
            let i = (k % 12) as usize;
            room.handle_datagram(T0 + k, addrs[i], &mut dgrams[i], |_, _| copies += 1);
        }
        assert_eq!(room.members.capacity(), cap);
        assert_eq!(copies, 1_000 * 12);
    }
    #[test]
    fn a_client_id_belongs_to_the_member_that_holds_it() {
        let mut room = RoomCore::new(RoomConfig {
            local_client_ids: vec![500, 501],
            ..RoomConfig::default()
        });
        let (a, b, stranger) = (
            addr("127.0.0.1:1"),
            addr("127.0.0.1:2"),
            addr("127.0.0.1:3"),
        );
        handle(&mut room, T0, a, packet(7, 0, 0, 0.5));
        handle(&mut room, T0, b, packet(8, 0, 0, 0.0));
        let stream_a = room.member(a).unwrap().stream;
        // A stranger streams under A's client_id, interleaved with A, at A's rate: none
        // of it goes anywhere, and A goes on as before.
        for k in 1..=100u32 {
            let t = T0 + u64::from(k) * 2_667;
            let (out, sent) = handle(&mut room, t, stranger, packet(7, 1_000 + k, 0, -0.5));
            assert_eq!(
                out,
                RoomOutcome::Dropped(DropReason::Intruder { client_id: 7 })
            );
            assert!(sent.is_empty(), "an intruder's datagram was sent on");
            let (out, sent) = handle(&mut room, t + 1, a, packet(7, k, 0, 0.5));
            assert_eq!(
                out,
                RoomOutcome::Forwarded {
                    recipients: 1,
                    joined: false
                }
            );
            assert_eq!(sent.len(), 2);
        }
        assert_eq!(room.stats().drops.intruder, 100);
        assert!(room.member(stranger).is_none());
        let m = room.member(a).unwrap();
        assert_eq!((m.packets, m.sequence_gaps, m.stream), (101, 0, stream_a));
        // A member may not take another member's id, nor one the room holds (its seats').
        let (out, _) = handle(&mut room, T0 + 300_000, b, packet(7, 1, 0, 0.0));
        assert_eq!(
            out,
            RoomOutcome::Dropped(DropReason::Intruder { client_id: 7 })
        );
        assert_eq!(room.member(b).unwrap().client_id, 8);
        let (out, _) = handle(&mut room, T0 + 300_000, stranger, packet(501, 0, 0, 0.0));
        assert_eq!(
            out,
            RoomOutcome::Dropped(DropReason::Intruder { client_id: 501 })
        );
        // Once A has left (1 s of silence) its client_id is free again: whoever takes it
        // is a new stream.
        let a_last = T0 + 100 * 2_667 + 1;
        handle(&mut room, a_last + 500_000, b, packet(8, 1, 0, 0.0));
        let (out, _) = handle(
            &mut room,
            a_last + 1_000_000,
            stranger,
            packet(7, 0, 0, 0.0),
        );
        assert_eq!(
            out,
            RoomOutcome::Forwarded {
                recipients: 1,
                joined: true
            }
        );
        let newcomer = room.member(stranger).unwrap();
        assert_ne!(newcomer.stream, stream_a);
        assert_eq!((newcomer.packets, newcomer.sequence_gaps), (1, 0));
        assert_eq!(room.stats().drops.intruder, 102);
    }

    #[test]
    fn a_flooding_member_is_held_to_its_packet_rate_and_the_others_are_untouched() {
        let mut room = RoomCore::new(RoomConfig::default());
        let (a, b, flood) = (
            addr("127.0.0.1:1"),
            addr("127.0.0.1:2"),
            addr("127.0.0.1:3"),
        );
        handle(&mut room, T0, a, packet(1, 0, 0, 0.5));
        handle(&mut room, T0, b, packet(2, 0, 0, 0.0));
        handle(&mut room, T0, flood, packet(3, 0, 0, 0.0));
        // For 2 s, A sends like a jammer (375 per second) and the flood 20 000 per second.
        let (mut flood_to_b, mut a_to_b, mut a_sent, mut flood_sent) = (1u64, 0u64, 0u32, 1u64);
        for tick in 1..=40_000u64 {
            let t = T0 + tick * 50;
            let (_, sent) = handle(&mut room, t, flood, packet(3, tick as u32, 0, 0.0));
            flood_sent += 1;
            flood_to_b += sent.iter().filter(|(to, _)| *to == b).count() as u64;
            if tick.is_multiple_of(2_000) {
                // B plays too (it would leave the room after 1 s of silence).
                handle(&mut room, t, b, packet(2, tick as u32, 0, 0.0));
            }
            if u64::from(a_sent + 1) * 2_667 <= tick * 50 {
                a_sent += 1;
                let (out, sent) = handle(&mut room, t, a, packet(1, a_sent, 0, 0.5));
                assert!(matches!(out, RoomOutcome::Forwarded { .. }), "{out:?}");
                a_to_b += sent.iter().filter(|(to, _)| *to == b).count() as u64;
            }
        }
        assert_eq!(a_to_b, u64::from(a_sent), "every packet of A reached B");
        // The flood got its burst (0.4 s of 500 per second) and 2 s of its rate.
        assert!((1_195..=1_201).contains(&flood_to_b), "{flood_to_b}");
        let dropped = flood_sent - flood_to_b;
        assert_eq!(room.stats().drops.rate_limited, dropped);
        assert_eq!(room.member(flood).unwrap().rate_limited, dropped);
        assert_eq!(room.member(a).unwrap().rate_limited, 0);
        // Unlimited, as rtjam, when asked for.
        room.set_max_packet_rate(None);
        let (out, _) = handle(&mut room, T0 + 2_000_001, flood, packet(3, 0, 0, 0.0));
        assert!(matches!(out, RoomOutcome::Forwarded { .. }));
    }

    #[test]
    fn a_jammer_catching_up_after_a_stall_is_not_limited() {
        let mut room = RoomCore::new(RoomConfig::default());
        let (a, b) = (addr("127.0.0.1:1"), addr("127.0.0.1:2"));
        handle(&mut room, T0, b, packet(2, 0, 0, 0.0));
        // 375 packets a second, but packets 100..250 stall for 400 ms and leave together.
        for k in 0..1_000u32 {
            let due = T0 + u64::from(k) * 2_667;
            let at = if (100..250).contains(&k) {
                T0 + 250 * 2_667
            } else {
                due
            };
            let (out, _) = handle(&mut room, at, a, packet(1, k, 0, 0.1));
            assert!(matches!(out, RoomOutcome::Forwarded { .. }), "{k}: {out:?}");
            if k.is_multiple_of(300) {
                handle(&mut room, at, b, packet(2, k, 0, 0.0));
            }
        }
        assert_eq!(room.stats().drops.rate_limited, 0);
    }

    #[test]
    fn the_default_member_cap_is_sixteen() {
        let mut room = RoomCore::new(RoomConfig::default());
        for port in 1..=16u16 {
            let (out, _) = handle(
                &mut room,
                T0,
                SocketAddr::from(([127, 0, 0, 1], port)),
                packet(u32::from(port), 0, 0, 0.0),
            );
            assert!(matches!(out, RoomOutcome::Forwarded { joined: true, .. }));
        }
        let (out, sent) = handle(
            &mut room,
            T0,
            SocketAddr::from(([127, 0, 0, 1], 17)),
            packet(17, 0, 0, 0.0),
        );
        assert_eq!(out, RoomOutcome::Dropped(DropReason::RoomFull));
        assert!(sent.is_empty());
        assert_eq!(DEFAULT_MAX_MEMBERS, 16);
    }
}
