//! Helpers shared by the AoDNS end-to-end tests: an API client, `dig` runs and the
//! parsing of their output, raw DNS queries, and the tone measurements.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_server::proto::op::{Edns, Message, Query};
use hickory_server::proto::rr::{Name, RecordType};

use crate::common::GatewayProcess;

/// The broadcast's zone in these tests.
pub const DOMAIN: &str = "music.example.com";

/// A gateway configuration whose DNS server binds a free loopback port.
pub const DNS_CONFIG: &str = "[dns]\nlisten = \"127.0.0.1:0\"\n";

/// The REST API of a test gateway.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(gateway: &GatewayProcess) -> Api {
        Api {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: gateway.api_url(),
            token: gateway.token(
                &format!("dns-test-{}", uuid::Uuid::new_v4().simple()),
                "admin",
            ),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Creates a stored broadcast `dns:<name>` on `domain` with `window` packs.
    pub async fn create_broadcast(&self, name: &str, domain: &str, window: u16) {
        let (status, body) = self
            .post(
                "/v1/nodes",
                serde_json::json!({
                    "name": name,
                    "config": {"kind": "dns", "domain": domain, "window": window},
                }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// The broadcast's status (`GET /v1/nodes/dns:<name>`).
    pub async fn status(&self, name: &str) -> serde_json::Value {
        let (status, body) = self.get(&format!("/v1/nodes/dns:{name}")).await;
        assert_eq!(status, 200, "{body}");
        body["status"].clone()
    }

    /// Waits until the broadcast has published `packs` packs.
    pub async fn wait_packs(&self, name: &str, packs: u64, limit: Duration) -> serde_json::Value {
        let until = Instant::now() + limit;
        loop {
            let status = self.status(name).await;
            if status["packs_published"].as_u64().unwrap_or(0) >= packs {
                return status;
            }
            assert!(
                Instant::now() < until,
                "only {} packs after {limit:?}: {status}",
                status["packs_published"]
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The DNS server's address, from the gateway's log.
pub fn dns_addr(gateway: &GatewayProcess) -> SocketAddr {
    let line = gateway
        .wait_log("DNS server ready", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no DNS server; logs:\n{}", gateway.logs().join("\n")));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("addr in the DNS line")
        .parse()
        .unwrap()
}

/// Runs `dig @addr -p port <args>` and returns its stdout.
pub fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let output = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string()])
        .args(["+time=2", "+tries=2"])
        .args(args)
        .output()
        .expect("dig is installed (tests/run.sh installs dnsutils)");
    assert!(
        output.status.success(),
        "dig {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The character-strings of one line of dig output, unescaped (`\"`, `\\`, `\DDD`).
pub fn dig_strings(line: &str) -> Vec<Vec<u8>> {
    let bytes = line.as_bytes();
    let mut strings = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        let mut s = Vec::new();
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' {
                if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap();
                    s.push(digits.parse::<u8>().unwrap());
                    i += 4;
                } else {
                    s.push(bytes[i + 1]);
                    i += 2;
                }
            } else {
                s.push(bytes[i]);
                i += 1;
            }
        }
        i += 1;
        strings.push(s);
    }
    strings
}

/// One TXT answer as dig prints it with `+noall +answer`.
#[derive(Debug, Clone)]
pub struct DigTxt {
    pub name: String,
    pub ttl: u32,
    pub strings: Vec<Vec<u8>>,
}

/// `TXT name` through dig (`extra` adds options such as `+tcp`); the answers, and the
/// whole output (to look for "Truncated, retrying in TCP mode").
pub fn dig_txt(addr: SocketAddr, name: &str, extra: &[&str]) -> (Vec<DigTxt>, String) {
    let mut args = vec!["+noall", "+answer", "+comments", "TXT", name];
    args.extend_from_slice(extra);
    let out = dig(addr, &args);
    let answers = out
        .lines()
        .filter(|l| !l.starts_with(';') && l.split_whitespace().nth(3) == Some("TXT"))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            DigTxt {
                name: fields[0].to_owned(),
                ttl: fields[1].parse().unwrap(),
                strings: dig_strings(l),
            }
        })
        .collect();
    (answers, out)
}

/// A DNS query message.
pub fn query(id: u16, name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        message.set_edns(edns);
    }
    message.to_vec().unwrap()
}

/// Sends `bytes` over UDP from `local` and waits up to `timeout` for a reply.
pub fn udp_exchange(
    local: &str,
    server: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind(local).unwrap();
    socket.set_read_timeout(Some(timeout)).unwrap();
    socket.send_to(bytes, server).unwrap();
    let mut buffer = vec![0u8; 65_535];
    match socket.recv_from(&mut buffer) {
        Ok((len, _)) => Some(buffer[..len].to_vec()),
        Err(_) => None,
    }
}

/// A parsed reply to a UDP query, or `None` when none came.
pub fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> Option<Message> {
    let bytes = udp_exchange(
        "127.0.0.1:0",
        server,
        &query(0x4242, name, qtype, Some(1232)),
        Duration::from_secs(2),
    )?;
    Some(Message::from_vec(&bytes).unwrap())
}

/// Goertzel power of `hz` in `x`.
pub fn power_at(x: &[f32], rate: f64, hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &sample in x {
        let s0 = f64::from(sample) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (x.len() as f64).powi(2)
}

/// Frequency (Hz) from rising zero crossings, interpolated between samples.
pub fn zero_crossing_frequency(x: &[f32], rate: f64) -> f64 {
    let mut crossings = Vec::new();
    for i in 1..x.len() {
        if x[i - 1] < 0.0 && x[i] >= 0.0 {
            let (a, b) = (f64::from(x[i - 1]), f64::from(x[i]));
            crossings.push((i - 1) as f64 + a / (a - b));
        }
    }
    assert!(crossings.len() > 2, "no tone");
    let (first, last) = (crossings[0], crossings[crossings.len() - 1]);
    (crossings.len() - 1) as f64 * rate / (last - first)
}

/// The tone in `x` (16 kHz) after skipping `skip_s` at each end: its frequency by zero
/// crossings, then a least-squares sine at that frequency (level and SNR).
pub fn tone(x: &[f32], skip_s: f64) -> codecs::measure::SineFit {
    let skip = (skip_s * 16_000.0) as usize;
    let x = &x[skip..x.len() - skip];
    let hz = zero_crossing_frequency(x, 16_000.0);
    codecs::measure::fit_sine_at(x, codecs::rate::SampleRate::new(16_000).unwrap(), hz).unwrap()
}
