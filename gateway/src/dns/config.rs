//! The `[dns]` section of the configuration: the authoritative server's address,
//! limits and name. Part of this module so that the server does not depend on the
//! whole configuration.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The DNS server that serves AoDNS broadcasts (`dns` nodes). It binds when the first
/// broadcast is created, so a gateway without broadcasts opens no DNS port.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// UDP and TCP address of the authoritative server (port 0: any free port).
    pub listen: SocketAddr,
    /// Largest UDP reply sent to an EDNS client, whatever larger size it offers (512
    /// without EDNS); a longer reply goes out truncated (TC) and the client retries over
    /// TCP. 1232 avoids IP fragmentation (DNS flag day 2020) and bounds what a spoofed
    /// query can reflect.
    pub max_udp_payload: u16,
    /// Queries per second each client address (IPv6: each /64) may make; beyond it
    /// queries are dropped (every second UDP one is answered empty and truncated, so a
    /// real client can retry over TCP). 0 turns the limit off.
    pub rate_limit_qps: u32,
    /// Queries a client may make at once above the rate (a new listener fetches the
    /// whole window, 75 packs, in one burst).
    pub rate_limit_burst: u32,
    /// A TCP connection that sends no query for this long is closed.
    pub tcp_timeout_ms: u64,
    /// Threads of the DNS server's own runtime (kept apart from calls and the API).
    pub worker_threads: usize,
    /// The name server every zone names in its NS record and as its SOA's MNAME: the
    /// host name under which the parent zone delegates to this server. The default,
    /// `localhost.`, is true of the default loopback listener.
    pub nameserver: NameServerName,
}

/// The absolute host name of a name server, checked when the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct NameServerName(hickory_server::proto::rr::Name);

impl NameServerName {
    /// The name, as hickory takes it.
    pub fn name(&self) -> &hickory_server::proto::rr::Name {
        &self.0
    }
}

impl TryFrom<String> for NameServerName {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        // The same rules as a broadcast's domain: letters, digits, `-` and `_` in
        // labels of at most 63 bytes.
        let host = codecs::aodns::ZoneRoot::parse(&text)
            .map_err(|e| format!("name server {text:?}: {e}"))?;
        hickory_server::proto::rr::Name::from_ascii(host.as_str())
            .map(NameServerName)
            .map_err(|e| format!("name server {text:?}: {e}"))
    }
}

impl From<NameServerName> for String {
    fn from(name: NameServerName) -> String {
        name.0.to_ascii()
    }
}

impl Default for NameServerName {
    fn default() -> Self {
        NameServerName(
            hickory_server::proto::rr::Name::from_labels([&b"localhost"[..]])
                .unwrap_or_else(|_| hickory_server::proto::rr::Name::root()),
        )
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5053)),
            max_udp_payload: 1232,
            rate_limit_qps: 100,
            rate_limit_burst: 300,
            tcp_timeout_ms: 5_000,
            worker_threads: 1,
            nameserver: NameServerName::default(),
        }
    }
}
