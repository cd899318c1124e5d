//! The API's view of RTJam jam rooms (rtjam.md): the pieces of a `jam` node's
//! configuration, its per-jammer mix settings, and their validation.
//!
//! A jam node either *joins* a remote room server as one jammer per seat, or *hosts* an
//! RTJam-compatible room server itself. Callers sit on its seats: seat *k* has the input
//! `in<k>` (sent on channel 1), optionally `aux<k>` (channel 2), and the output `out<k>`
//! (everyone in the room but the seat itself). `mix_left` and `mix_right` carry a stereo
//! mix of the whole room with every jammer's pan.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// UDP port of rtjam's room server (rtjam.md §1).
pub const DEFAULT_ROOM_PORT: u16 = 7891;
/// Where a hosted room listens unless configured: loopback, rtjam's port.
pub const DEFAULT_HOST_LISTEN: &str = "127.0.0.1:7891";
/// Where a joining node's seats bind unless configured: loopback, ephemeral ports.
pub const DEFAULT_JOIN_LISTEN: &str = "127.0.0.1:0";
/// Most seats one jam node has.
pub const MAX_SEATS: u16 = 32;
/// A hosted room's member cap unless configured: what its seats can hear at once.
pub const DEFAULT_MAX_MEMBERS: u16 = 16;
/// A hosted room's packet rate per member unless configured, datagrams per second: a
/// jammer sends 375 (rtjam.md §2), plus a third for margin.
pub const DEFAULT_MAX_PACKET_RATE: u32 = 500;
/// Highest packet rate per member that can be configured.
pub const MAX_PACKET_RATE: u32 = 100_000;
/// Most per-jammer mix settings one node keeps.
pub const MAX_MIX_SETTINGS: usize = 64;
/// Why a jammer's mix setting could not be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MixError {
    /// The node is not a jam room.
    #[error("only jam nodes have a mix")]
    NotJam,
    /// The node keeps settings for [`MAX_MIX_SETTINGS`] jammers already.
    #[error("at most {MAX_MIX_SETTINGS} jammers can have settings")]
    TooManySettings,
    /// The room's live mix table has no slot left.
    #[error("the mix table is full")]
    TableFull,
}

/// Highest gain of a jammer in the mix, dB (rtjam clamps its linear gain to ×8).
pub const MAX_MIX_GAIN_DB: f32 = 18.0;
/// Lowest gain of a jammer in the mix, dB (below is as good as muted).
pub const MIN_MIX_GAIN_DB: f32 = -96.0;
/// client_ids rtjam gives a meaning: 40000 marks an empty slot, 40001 is the server's
/// playback, 40002 its room mix, 4321 the stock client's placeholder (rtjam.md §3).
pub const RESERVED_CLIENT_IDS: [u32; 4] = [4_321, 40_000, 40_001, 40_002];

/// Whether a jam node joins a remote room or is the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JamMode {
    /// Each seat is a jammer of a remote RTJam room server (`host`, `port`).
    Join,
    /// The node is an RTJam room server on `listen`; its seats are members without a
    /// network hop.
    Host,
}

/// What a seat sends on channel 2 of its packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JamChannel2 {
    /// Silence (the wire word 0x7FFE).
    #[default]
    Silence,
    /// The seat's second input, `aux<k>`.
    Input,
}

/// How one jammer (by client_id) sits in the node's mix.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JamMixSetting {
    /// The jammer.
    pub client_id: u32,
    /// Gain in dB (-96..=18).
    #[serde(default)]
    #[schema(minimum = -96, maximum = 18)]
    pub gain_db: f32,
    /// Muted.
    #[serde(default)]
    pub mute: bool,
    /// Pan, -1 (left) ..= +1 (right); affects `mix_left`/`mix_right` only.
    #[serde(default)]
    #[schema(minimum = -1, maximum = 1)]
    pub pan: f32,
}

impl JamMixSetting {
    /// Unity gain, centre, not muted.
    pub fn unity(client_id: u32) -> JamMixSetting {
        JamMixSetting {
            client_id,
            gain_db: 0.0,
            mute: false,
            pan: 0.0,
        }
    }

    /// Whether this setting changes nothing (unity, centre, unmuted).
    pub fn is_unity(&self) -> bool {
        self.gain_db == 0.0 && !self.mute && self.pan == 0.0
    }

    /// Checks the ranges; returns the offending field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.gain_db.is_finite() || !(MIN_MIX_GAIN_DB..=MAX_MIX_GAIN_DB).contains(&self.gain_db)
        {
            return Err((
                "gain_db",
                format!(
                    "{} is out of range ({MIN_MIX_GAIN_DB}..={MAX_MIX_GAIN_DB})",
                    self.gain_db
                ),
            ));
        }
        if !self.pan.is_finite() || !(-1.0..=1.0).contains(&self.pan) {
            return Err(("pan", format!("{} is out of range (-1..=1)", self.pan)));
        }
        Ok(())
    }
}

/// A change of one jammer's mix (`PUT /v1/nodes/{node}/mix/{client_id}`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JamMixUpdate {
    /// Gain in dB (-96..=18).
    #[serde(default)]
    #[schema(minimum = -96, maximum = 18)]
    pub gain_db: f32,
    /// Muted.
    #[serde(default)]
    pub mute: bool,
    /// Pan, -1 (left) ..= +1 (right).
    #[serde(default)]
    #[schema(minimum = -1, maximum = 1)]
    pub pan: f32,
}

/// One jammer in a node's mix (`GET /v1/nodes/{node}/mix`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JamMixEntry {
    /// The jammer.
    pub client_id: u32,
    /// Gain in dB.
    pub gain_db: f32,
    /// Muted.
    pub mute: bool,
    /// Pan, -1..=1.
    pub pan: f32,
    /// Whether the setting is stored in the node's configuration (false: the default
    /// of a jammer that is in the room).
    pub configured: bool,
    /// Whether the jammer is in the room now.
    pub present: bool,
}

/// A jam node's configuration after defaults, as the gateway builds it. See
/// [`crate::control::NodeConfig::Jam`] for the meaning of each field.
#[derive(Debug, Clone, PartialEq)]
pub struct JamSpec {
    /// Join or host.
    pub mode: JamMode,
    /// Join: the room server.
    pub server: Option<(String, u16)>,
    /// Join: where seat 1 binds (seat k at port + k - 1 unless the port is 0);
    /// host: the room's address.
    pub listen: SocketAddr,
    /// client_id of seat 1; seat k has `client_id + k - 1`.
    pub client_id: u32,
    /// Seats.
    pub seats: u16,
    /// Channel 2 content.
    pub channel2: JamChannel2,
    /// Skip silent packets (keeping the seat with a keepalive).
    pub suppress_silence: bool,
    /// Host: metronome tempo.
    pub tempo_bpm: u32,
    /// Host: member cap.
    pub max_members: u16,
    /// Host: datagrams per second one member may send.
    pub max_packet_rate: u32,
    /// Host: admitted source networks, as written.
    pub allow: Vec<String>,
    /// Per-jammer mix settings.
    pub mix: Vec<JamMixSetting>,
}

/// The default client_id of a node's first seat: a stable hash of its name into
/// 10000..=39999, away from rtjam's special values (rtjam.md §3).
pub fn default_client_id(name: &str) -> u32 {
    // FNV-1a, 32 bit: stable across builds and platforms.
    let hash = name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    10_000 + hash % 30_000
}

/// Whether `host` is an IP address or a syntactically valid host name (RFC 1123: dot
/// separated labels of 1-63 letters, digits and hyphens, not starting or ending with a
/// hyphen, 253 characters at most; one trailing dot allowed).
pub fn is_host(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Parses one allow-list entry: a CIDR prefix (`10.0.0.0/8`, `::1/128`) or an address.
pub fn parse_network(entry: &str) -> Result<(IpAddr, u8), String> {
    let entry = entry.trim();
    let (addr, prefix) = match entry.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (entry, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{entry:?} is not an address or CIDR prefix"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{entry:?} has an invalid prefix length"))?,
    };
    Ok((ip, prefix))
}

/// The fields of a `jam` node configuration, borrowed (see
/// [`crate::control::NodeConfig::Jam`] for their meaning).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JamFields<'a> {
    /// Join or host.
    pub mode: JamMode,
    /// Join: the room server's host.
    pub host: Option<&'a str>,
    /// Join: the room server's port.
    pub port: Option<u16>,
    /// Join: local bind address of seat 1; host: the room's address.
    pub listen: Option<&'a str>,
    /// client_id of seat 1.
    pub client_id: Option<u32>,
    /// Seats.
    pub seats: u16,
    /// Channel 2 content.
    pub channel2: JamChannel2,
    /// Skip silent packets.
    pub suppress_silence: bool,
    /// Host: tempo.
    pub tempo_bpm: Option<u32>,
    /// Host: member cap.
    pub max_members: Option<u16>,
    /// Host: packet rate per member.
    pub max_packet_rate: Option<u32>,
    /// Host: allow-list.
    pub allow: Option<&'a [String]>,
    /// Per-jammer mix settings.
    pub mix: &'a [JamMixSetting],
}

impl JamFields<'_> {
    /// Builds the effective settings of a jam node named `name`, checking everything
    /// serde cannot. The error names the field at fault.
    pub fn spec(&self, name: &str) -> Result<JamSpec, (&'static str, String)> {
        let only_for = |field: &'static str, wanted: &str| {
            Err((field, format!("{field} applies to mode \"{wanted}\" only")))
        };
        let server = match self.mode {
            JamMode::Join => {
                if self.tempo_bpm.is_some() {
                    return only_for("tempo_bpm", "host");
                }
                if self.max_members.is_some() {
                    return only_for("max_members", "host");
                }
                if self.max_packet_rate.is_some() {
                    return only_for("max_packet_rate", "host");
                }
                if self.allow.is_some() {
                    return only_for("allow", "host");
                }
                let host = self.host.map(str::trim).unwrap_or_default();
                if !is_host(host) {
                    return Err((
                        "host",
                        "mode \"join\" needs the room server's host name (RFC 1123) or IP address"
                            .into(),
                    ));
                }
                let port = self.port.unwrap_or(DEFAULT_ROOM_PORT);
                if port == 0 {
                    return Err(("port", "the room server's port cannot be 0".into()));
                }
                Some((host.to_owned(), port))
            }
            JamMode::Host => {
                if self.host.is_some() {
                    return only_for("host", "join");
                }
                if self.port.is_some() {
                    return only_for("port", "join");
                }
                None
            }
        };
        let default_listen = match self.mode {
            JamMode::Join => DEFAULT_JOIN_LISTEN,
            JamMode::Host => DEFAULT_HOST_LISTEN,
        };
        let listen: SocketAddr = self
            .listen
            .unwrap_or(default_listen)
            .trim()
            .parse()
            .map_err(|_| {
                (
                    "listen",
                    "must be an address with a port, e.g. 127.0.0.1:7891".to_owned(),
                )
            })?;
        let seats = self.seats;
        if !(1..=MAX_SEATS).contains(&seats) {
            return Err((
                "seats",
                format!("{seats} is out of range (1..={MAX_SEATS})"),
            ));
        }
        let last_port = u32::from(listen.port()) + u32::from(seats) - 1;
        if self.mode == JamMode::Join && listen.port() != 0 && last_port > u32::from(u16::MAX) {
            return Err((
                "listen",
                format!("seats 1..={seats} need ports up to {last_port}"),
            ));
        }
        let client_id = self.client_id.unwrap_or_else(|| default_client_id(name));
        let last = client_id.checked_add(u32::from(seats) - 1).ok_or((
            "client_id",
            format!("{client_id} + {seats} seats overflows"),
        ))?;
        if let Some(reserved) = RESERVED_CLIENT_IDS
            .iter()
            .find(|r| (client_id..=last).contains(r))
        {
            return Err((
                "client_id",
                format!(
                    "the seats' client_ids {client_id}..={last} include {reserved}, which rtjam reserves"
                ),
            ));
        }
        let tempo_bpm = self.tempo_bpm.unwrap_or(120);
        if !(1..=1000).contains(&tempo_bpm) {
            return Err((
                "tempo_bpm",
                format!("{tempo_bpm} is out of range (1..=1000)"),
            ));
        }
        let max_members = self.max_members.unwrap_or(DEFAULT_MAX_MEMBERS);
        if !(1..=1024).contains(&max_members) {
            return Err((
                "max_members",
                format!("{max_members} is out of range (1..=1024)"),
            ));
        }
        let max_packet_rate = self.max_packet_rate.unwrap_or(DEFAULT_MAX_PACKET_RATE);
        if !(1..=MAX_PACKET_RATE).contains(&max_packet_rate) {
            return Err((
                "max_packet_rate",
                format!("{max_packet_rate} is out of range (1..={MAX_PACKET_RATE})"),
            ));
        }
        let allow = match self.allow {
            Some(list) => {
                for entry in list {
                    parse_network(entry).map_err(|e| ("allow", e))?;
                }
                list.to_vec()
            }
            None => vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()],
        };
        if self.mix.len() > MAX_MIX_SETTINGS {
            return Err((
                "mix",
                format!("at most {MAX_MIX_SETTINGS} jammers can have settings"),
            ));
        }
        for (i, setting) in self.mix.iter().enumerate() {
            setting.validate().map_err(|(_, why)| ("mix", why))?;
            if self.mix[..i]
                .iter()
                .any(|s| s.client_id == setting.client_id)
            {
                return Err((
                    "mix",
                    format!("client_id {} appears twice", setting.client_id),
                ));
            }
        }
        Ok(JamSpec {
            mode: self.mode,
            server,
            listen,
            client_id,
            seats,
            channel2: self.channel2,
            suppress_silence: self.suppress_silence,
            tempo_bpm,
            max_members,
            max_packet_rate,
            allow,
            mix: self.mix.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(mode: JamMode) -> JamFields<'static> {
        JamFields {
            mode,
            host: None,
            port: None,
            listen: None,
            client_id: None,
            seats: 1,
            channel2: JamChannel2::Silence,
            suppress_silence: false,
            tempo_bpm: None,
            max_members: None,
            max_packet_rate: None,
            allow: None,
            mix: &[],
        }
    }

    #[test]
    fn join_defaults_and_requirements() {
        let join = JamFields {
            host: Some("room.example"),
            client_id: Some(5555),
            seats: 2,
            ..fields(JamMode::Join)
        };
        let spec = join.spec("band").unwrap();
        assert_eq!(spec.server, Some(("room.example".into(), 7891)));
        assert_eq!(spec.listen, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
        assert_eq!(spec.client_id, 5555);
        let no_host = JamFields { host: None, ..join };
        assert_eq!(no_host.spec("band").unwrap_err().0, "host");
        let blank = JamFields {
            host: Some("a b"),
            ..join
        };
        assert_eq!(blank.spec("band").unwrap_err().0, "host");
        let high = JamFields {
            listen: Some("127.0.0.1:65535"),
            ..join
        };
        assert_eq!(high.spec("band").unwrap_err().0, "listen");
    }

    #[test]
    fn host_defaults_to_loopback_and_rtjams_port() {
        let spec = JamFields {
            seats: 4,
            channel2: JamChannel2::Input,
            ..fields(JamMode::Host)
        }
        .spec("room")
        .unwrap();
        assert_eq!(spec.listen, "127.0.0.1:7891".parse::<SocketAddr>().unwrap());
        assert_eq!(spec.tempo_bpm, 120);
        assert_eq!(spec.allow, ["127.0.0.0/8", "::1/128"]);
        assert_eq!((spec.max_members, spec.max_packet_rate), (16, 500));
        assert_eq!(spec.client_id, default_client_id("room"));
        assert!((10_000..40_000).contains(&spec.client_id));
    }

    #[test]
    fn fields_of_the_other_mode_and_bad_values_are_refused() {
        let join = JamFields {
            host: Some("h"),
            tempo_bpm: Some(100),
            ..fields(JamMode::Join)
        };
        assert_eq!(join.spec("x").unwrap_err().0, "tempo_bpm");
        let host = JamFields {
            port: Some(1),
            ..fields(JamMode::Host)
        };
        assert_eq!(host.spec("x").unwrap_err().0, "port");
        let wide = [String::from("10.0.0.0/33")];
        let word = [String::from("nonsense")];
        let join_rate = JamFields {
            host: Some("h"),
            max_packet_rate: Some(750),
            ..fields(JamMode::Join)
        };
        assert_eq!(join_rate.spec("x").unwrap_err().0, "max_packet_rate");
        let cases: [(JamFields<'_>, &str); 11] = [
            (
                JamFields {
                    max_packet_rate: Some(0),
                    ..fields(JamMode::Host)
                },
                "max_packet_rate",
            ),
            (
                JamFields {
                    max_members: Some(0),
                    ..fields(JamMode::Host)
                },
                "max_members",
            ),
            (
                JamFields {
                    client_id: Some(39_999),
                    seats: 2,
                    ..fields(JamMode::Host)
                },
                "client_id",
            ),
            (
                JamFields {
                    client_id: Some(4_321),
                    ..fields(JamMode::Host)
                },
                "client_id",
            ),
            (
                JamFields {
                    client_id: Some(u32::MAX),
                    seats: 2,
                    ..fields(JamMode::Host)
                },
                "client_id",
            ),
            (
                JamFields {
                    seats: 0,
                    ..fields(JamMode::Host)
                },
                "seats",
            ),
            (
                JamFields {
                    seats: 33,
                    ..fields(JamMode::Host)
                },
                "seats",
            ),
            (
                JamFields {
                    tempo_bpm: Some(0),
                    ..fields(JamMode::Host)
                },
                "tempo_bpm",
            ),
            (
                JamFields {
                    tempo_bpm: Some(1001),
                    ..fields(JamMode::Host)
                },
                "tempo_bpm",
            ),
            (
                JamFields {
                    allow: Some(&wide),
                    ..fields(JamMode::Host)
                },
                "allow",
            ),
            (
                JamFields {
                    allow: Some(&word),
                    ..fields(JamMode::Host)
                },
                "allow",
            ),
        ];
        for (case, field) in cases {
            assert_eq!(case.spec("x").unwrap_err().0, field, "{case:?}");
        }
    }

    #[test]
    fn mix_settings_are_checked() {
        let check = |settings: &[JamMixSetting]| {
            JamFields {
                mix: settings,
                ..fields(JamMode::Host)
            }
            .spec("x")
            .map(|_| ())
        };
        let mut s = JamMixSetting::unity(7);
        assert!(check(&[s]).is_ok());
        assert_eq!(check(&[s, s]).unwrap_err().0, "mix");
        s.gain_db = 19.0;
        assert_eq!(check(&[s]).unwrap_err().0, "mix");
        s.gain_db = f32::NAN;
        assert_eq!(check(&[s]).unwrap_err().0, "mix");
        s.gain_db = 0.0;
        s.pan = -1.5;
        assert_eq!(check(&[s]).unwrap_err().0, "mix");
    }

    #[test]
    fn hosts_are_names_or_addresses() {
        for good in [
            "127.0.0.1",
            "::1",
            "jam.example.org",
            "jam.example.org.",
            "a-1.b",
        ] {
            assert!(is_host(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "a..b",
            "-a.b",
            "a-.b",
            "a b",
            "a_b",
            "x:1",
            &"a".repeat(64),
        ] {
            assert!(!is_host(bad), "{bad}");
        }
    }

    #[test]
    fn networks_parse_like_cidr() {
        assert_eq!(
            parse_network("10.1.0.0/16"),
            Ok(("10.1.0.0".parse().unwrap(), 16))
        );
        assert_eq!(
            parse_network("192.0.2.7"),
            Ok(("192.0.2.7".parse().unwrap(), 32))
        );
        assert_eq!(parse_network("::1"), Ok(("::1".parse().unwrap(), 128)));
        assert!(parse_network("::1/129").is_err());
        assert!(parse_network("10.0.0.0/").is_err());
    }

    #[test]
    fn default_client_ids_are_stable_and_spread() {
        assert_eq!(default_client_id("band"), default_client_id("band"));
        assert_ne!(default_client_id("band"), default_client_id("band2"));
    }
}
