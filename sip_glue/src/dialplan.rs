//! Text builders for the three ways to point Asterisk at the gateway (audiosocket.md
//! §9): the dialplan application `AudioSocket(uuid,host:port)`, the channel-driver dial
//! string `AudioSocket/host:port/uuid/c(format)`, and the query parameters of ARI
//! `POST /ari/channels/externalMedia` with `encapsulation=audiosocket`.
//!
//! Inputs are validated once ([`Target::parse`], [`parse_uuid`]) so the text produced
//! is something Asterisk parses the way we mean: the port is mandatory, IPv6 goes in
//! brackets (§1), and nothing may contain the `,` `/` `(` `)` separators Asterisk
//! splits on (§9.1, §9.2).

use crate::audiosocket::AudioKind;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use uuid::Uuid;

/// Where Asterisk connects: `host:port`, host an IP address or a DNS name (§1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Input that cannot become dialplan or ARI text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialplanError {
    /// The target has no `:port`, or the port is not 1..=65535.
    #[error("target {input:?} needs a port 1-65535 (host:port, [v6]:port)")]
    BadPort {
        /// The rejected input.
        input: String,
    },
    /// An IPv6 address without brackets (`::1:9092` is ambiguous).
    #[error("IPv6 target {input:?} must be written in brackets, e.g. [::1]:9092")]
    UnbracketedIpv6 {
        /// The rejected input.
        input: String,
    },
    /// A host that is neither an IP address nor a DNS name.
    #[error("host {host:?} is neither an IP address nor a DNS name")]
    BadHost {
        /// The rejected host.
        host: String,
    },
    /// Not the 36-character hyphenated UUID form Asterisk requires (§4).
    #[error("{input:?} is not a UUID in the 36-character hyphenated form")]
    BadUuid {
        /// The rejected input.
        input: String,
    },
    /// An ARI application name that is empty or contains a control character.
    #[error("ARI application name {app:?} must be non-empty printable text")]
    BadAppName {
        /// The rejected name.
        app: String,
    },
}

impl Target {
    /// Parses `host:port`, `[v6]:port` or `name:port`.
    pub fn parse(input: &str) -> Result<Target, DialplanError> {
        if let Ok(addr) = input.parse::<SocketAddr>() {
            return Target::from_socket_addr(addr).ok_or_else(|| DialplanError::BadPort {
                input: input.to_owned(),
            });
        }
        let Some((host, port)) = input.rsplit_once(':') else {
            return Err(DialplanError::BadPort {
                input: input.to_owned(),
            });
        };
        if host.contains(':') {
            return Err(if host.starts_with('[') {
                DialplanError::BadHost {
                    host: host.to_owned(),
                }
            } else {
                DialplanError::UnbracketedIpv6 {
                    input: input.to_owned(),
                }
            });
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => {
                return Err(DialplanError::BadPort {
                    input: input.to_owned(),
                });
            }
        };
        if !is_dns_name(host) {
            return Err(DialplanError::BadHost {
                host: host.to_owned(),
            });
        }
        Ok(Target {
            host: Host::Name(host.to_ascii_lowercase()),
            port,
        })
    }

    /// A target for a socket address; `None` for port 0.
    pub fn from_socket_addr(addr: SocketAddr) -> Option<Target> {
        (addr.port() != 0).then(|| Target {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        })
    }

    /// The port.
    pub const fn port(&self) -> u16 {
        self.port
    }
}

/// Letters, digits, hyphens and dots, in labels of 1..=63 characters, not starting or
/// ending with a hyphen (RFC 1123 host names).
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = DialplanError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::parse(s)
    }
}

/// Parses a UUID in the only form Asterisk accepts: 36 characters, hyphenated, hex in
/// either case (§4). The simple, braced and URN forms are refused.
pub fn parse_uuid(input: &str) -> Result<Uuid, DialplanError> {
    let hyphens_ok = input.len() == 36
        && input
            .bytes()
            .enumerate()
            .all(|(i, b)| matches!(i, 8 | 13 | 18 | 23) == (b == b'-'));
    match Uuid::parse_str(input) {
        Ok(uuid) if hyphens_ok => Ok(uuid),
        _ => Err(DialplanError::BadUuid {
            input: input.to_owned(),
        }),
    }
}

/// The codec Asterisk should use on an AudioSocket channel (§9.2): slin at a kind's
/// rate (recommended), or μ-law / A-law, which Asterisk then sends **under kind 0x10**
/// while still reading what the gateway sends as slin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// `slin`, `slin12` ... `slin192`: kinds `0x10..=0x18` in both directions.
    Slin(AudioKind),
    /// `ulaw`: 8-bit G.711 μ-law bytes under 0x10 toward the gateway.
    Ulaw,
    /// `alaw`: 8-bit G.711 A-law bytes under 0x10 toward the gateway.
    Alaw,
}

impl Format {
    /// The Asterisk format name, as in `c(slin16)` or ARI `format=slin16`.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Slin(kind) => kind.asterisk_format(),
            Format::Ulaw => "ulaw",
            Format::Alaw => "alaw",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The dialplan application call `AudioSocket(uuid,host:port)` (§9.1): exactly two
/// arguments, no options. The channel must be answered first, and Asterisk sends
/// 8 kHz slin (0x10).
pub fn audiosocket_app(uuid: Uuid, target: &Target) -> String {
    format!("AudioSocket({},{target})", uuid.hyphenated())
}

/// The channel-driver dial string `AudioSocket/host:port/uuid/c(format)` (§9.2).
/// Always names the format: without `c()` Asterisk picks the caller's first codec.
pub fn dial_string(target: &Target, uuid: Uuid, format: Format) -> String {
    format!("AudioSocket/{target}/{}/c({format})", uuid.hyphenated())
}

/// The dialplan application call `Dial(AudioSocket/host:port/uuid/c(format))` (§9.2).
pub fn dial_app(target: &Target, uuid: Uuid, format: Format) -> String {
    format!("Dial({})", dial_string(target, uuid, format))
}

/// Query parameters of `POST /ari/channels/externalMedia` for an AudioSocket session
/// (§9.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalMedia {
    app: String,
    target: Target,
    format: Format,
    uuid: Uuid,
    channel_id: Option<String>,
}

impl ExternalMedia {
    /// Parameters for Stasis application `app`, connecting to `target`, with channel
    /// codec `format`, carrying `uuid` as `data` (the only correlation on the wire).
    pub fn new(
        app: &str,
        target: Target,
        format: Format,
        uuid: Uuid,
    ) -> Result<ExternalMedia, DialplanError> {
        if app.is_empty() || app.chars().any(char::is_control) {
            return Err(DialplanError::BadAppName {
                app: app.to_owned(),
            });
        }
        Ok(ExternalMedia {
            app: app.to_owned(),
            target,
            format,
            uuid,
            channel_id: None,
        })
    }

    /// Sets the optional `channelId` of the new channel.
    pub fn channel_id(mut self, id: impl Into<String>) -> ExternalMedia {
        self.channel_id = Some(id.into());
        self
    }

    /// The parameters as (name, value) pairs, unencoded, in a fixed order: `app`,
    /// `external_host`, `format`, `data`, `encapsulation=audiosocket`,
    /// `transport=tcp`, then `channelId` if set. (`connection_type` is left at its
    /// default, `client`; `direction` has no effect for AudioSocket.)
    pub fn query_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![
            ("app", self.app.clone()),
            ("external_host", self.target.to_string()),
            ("format", self.format.name().to_owned()),
            ("data", self.uuid.hyphenated().to_string()),
            ("encapsulation", "audiosocket".to_owned()),
            ("transport", "tcp".to_owned()),
        ];
        if let Some(id) = &self.channel_id {
            pairs.push(("channelId", id.clone()));
        }
        pairs
    }

    /// The percent-encoded query string (without the leading `?`).
    pub fn query_string(&self) -> String {
        self.query_pairs()
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Percent-encodes everything except RFC 3986 unreserved characters.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "40325ec2-5efd-4bd3-805f-53576e581d13";

    fn uuid() -> Uuid {
        parse_uuid(UUID).unwrap()
    }

    #[test]
    fn app_line_matches_the_fact_sheet_example() {
        // §11 V1: "AudioSocket(40325ec2-5efd-4bd3-805f-53576e581d13,127.0.0.1:9092)".
        let target = Target::parse("127.0.0.1:9092").unwrap();
        assert_eq!(
            audiosocket_app(uuid(), &target),
            "AudioSocket(40325ec2-5efd-4bd3-805f-53576e581d13,127.0.0.1:9092)"
        );
    }

    #[test]
    fn dial_string_names_the_codec() {
        // §9.2: Dial(AudioSocket/host:port/uuid/c(slin16)).
        let target = Target::parse("127.0.0.1:9092").unwrap();
        assert_eq!(
            dial_app(&target, uuid(), Format::Slin(AudioKind::Slin16)),
            "Dial(AudioSocket/127.0.0.1:9092/40325ec2-5efd-4bd3-805f-53576e581d13/c(slin16))"
        );
        assert_eq!(
            dial_string(&target, uuid(), Format::Slin(AudioKind::Slin8)),
            "AudioSocket/127.0.0.1:9092/40325ec2-5efd-4bd3-805f-53576e581d13/c(slin)"
        );
        assert_eq!(
            dial_string(&target, uuid(), Format::Ulaw),
            "AudioSocket/127.0.0.1:9092/40325ec2-5efd-4bd3-805f-53576e581d13/c(ulaw)"
        );
        let names: Vec<&str> = AudioKind::ALL.iter().map(|k| k.asterisk_format()).collect();
        assert_eq!(
            names,
            [
                "slin", "slin12", "slin16", "slin24", "slin32", "slin44", "slin48", "slin96",
                "slin192"
            ]
        );
    }

    #[test]
    fn ipv6_targets_are_bracketed_and_bare_ipv6_refused() {
        // §1: "IPv6 goes in brackets ([::1]:9092)".
        let t = Target::parse("[::1]:9092").unwrap();
        assert_eq!(t.to_string(), "[::1]:9092");
        let from_addr = Target::from_socket_addr("[::1]:9092".parse().unwrap()).unwrap();
        assert_eq!(from_addr, t);
        assert_eq!(
            dial_string(&t, uuid(), Format::Slin(AudioKind::Slin48)),
            "AudioSocket/[::1]:9092/40325ec2-5efd-4bd3-805f-53576e581d13/c(slin48)"
        );
        assert!(matches!(
            Target::parse("::1:9092"),
            Err(DialplanError::UnbracketedIpv6 { .. })
        ));
    }

    #[test]
    fn targets_need_a_port_and_a_clean_host() {
        // §1: "the port is mandatory".
        for bad in [
            "127.0.0.1",
            "gw.example:0",
            "gw.example:",
            "gw.example:70000",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(DialplanError::BadPort { .. })),
                "{bad}"
            );
        }
        // Separators Asterisk splits on would corrupt the app/dial arguments (§9.1).
        for bad in ["a,b:9092", "a/b:9092", "c(x):9092", "-gw:1", ":9092"] {
            assert!(
                matches!(Target::parse(bad), Err(DialplanError::BadHost { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            Target::parse("GW-1.Example.org:9092").unwrap().to_string(),
            "gw-1.example.org:9092"
        );
        assert_eq!(
            Target::from_socket_addr("127.0.0.1:0".parse().unwrap()),
            None
        );
    }

    #[test]
    fn uuids_must_be_36_char_hyphenated_either_case() {
        // §4: "standard 36-character hyphenated form (hex in either case)".
        assert_eq!(parse_uuid(&UUID.to_uppercase()).unwrap(), uuid());
        assert_eq!(
            parse_uuid("00000000-0000-0000-0000-000000000000").unwrap(),
            Uuid::nil()
        );
        for bad in [
            "40325ec25efd4bd3805f53576e581d13",
            "{40325ec2-5efd-4bd3-805f-53576e581d13}",
            "urn:uuid:40325ec2-5efd-4bd3-805f-53576e581d13",
            "40325ec2-5efd-4bd3-805f-53576e581d1",
            "40325ec2-5efd-4bd3-805f-53576e581d1g",
            "40325ec2+5efd-4bd3-805f-53576e581d13",
        ] {
            assert!(parse_uuid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn external_media_query_has_the_audiosocket_parameters() {
        // §9.3: app, external_host=host:port, format, data=uuid,
        // encapsulation=audiosocket, transport=tcp.
        let em = ExternalMedia::new(
            "telepatch",
            Target::parse("[::1]:9092").unwrap(),
            Format::Slin(AudioKind::Slin16),
            uuid(),
        )
        .unwrap();
        let pairs = em.query_pairs();
        let get = |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("app"), Some("telepatch"));
        assert_eq!(get("external_host"), Some("[::1]:9092"));
        assert_eq!(get("format"), Some("slin16"));
        assert_eq!(get("data"), Some(UUID));
        assert_eq!(get("encapsulation"), Some("audiosocket"));
        assert_eq!(get("transport"), Some("tcp"));
        assert_eq!(get("channelId"), None);
        assert_eq!(
            em.clone().channel_id("call 1").query_string(),
            "app=telepatch&external_host=%5B%3A%3A1%5D%3A9092&format=slin16\
             &data=40325ec2-5efd-4bd3-805f-53576e581d13&encapsulation=audiosocket\
             &transport=tcp&channelId=call%201"
        );
        assert!(matches!(
            ExternalMedia::new("", Target::parse("h:1").unwrap(), Format::Ulaw, uuid()),
            Err(DialplanError::BadAppName { .. })
        ));
    }
}
