//! DNS load generator for AoDNS broadcasts: asks a server for `seq_<n>.<domain>` (the
//! packs a listener fetches, aodns.md §3) as fast as it answers, from several sockets
//! with a fixed number of queries in flight each, and prints what came back: replies
//! per second, answers, truncations, errors, timeouts and latency percentiles.
//!
//! ```text
//! cargo run --release -p telepatch-examples --example dns_load -- \
//!     --server 127.0.0.1:5053 --domain music.example.com --duration 10
//! ```
//!
//! It first reads `sequence.<domain>` to learn which packs exist, then spreads its
//! queries over them. Over UDP it offers EDNS with `--edns` bytes (a whole pack, about
//! 2.3 kB, fits only if the server's `dns.max_udp_payload` allows it; otherwise the
//! replies come back truncated, which is also a load worth measuring). `--tcp` sends
//! the queries over one persistent, pipelined TCP connection per worker instead.
//! Everything goes to the address given: run it on loopback against a test gateway.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use codecs::aodns::{SequenceListDecoder, ZoneRoot};
use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Measure how many AoDNS seq_<n> lookups a DNS server answers per second")]
struct Args {
    /// The DNS server.
    #[arg(long, default_value = "127.0.0.1:5053")]
    server: SocketAddr,
    /// The broadcast's zone.
    #[arg(long, default_value = "music.example.com")]
    domain: String,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Worker threads, one socket each.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Queries each worker keeps in flight.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// EDNS UDP size offered (0: no EDNS, 512-byte replies).
    #[arg(long, default_value_t = 4096)]
    edns: u16,
    /// Use TCP (one pipelined connection per worker) instead of UDP.
    #[arg(long)]
    tcp: bool,
}

/// What one worker saw.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    replies: u64,
    answered: u64,
    truncated: u64,
    errors: u64,
    timeouts: u64,
    bytes: u64,
    latencies_us: Vec<u32>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.replies += other.replies;
        self.answered += other.answered;
        self.truncated += other.truncated;
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        self.bytes += other.bytes;
        self.latencies_us.extend(other.latencies_us);
    }

    fn count(&mut self, reply: &[u8], sent_at: Option<Instant>) {
        self.replies += 1;
        self.bytes += reply.len() as u64;
        if let Some(at) = sent_at {
            self.latencies_us
                .push(u32::try_from(at.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
        match Message::from_vec(reply) {
            Ok(m) if m.metadata.truncation => self.truncated += 1,
            Ok(m) if m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty() => {
                self.answered += 1
            }
            _ => self.errors += 1,
        }
    }
}

fn query_bytes(id: u16, name: &Name, edns: u16) -> anyhow::Result<Vec<u8>> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name.clone(), RecordType::TXT));
    if edns > 0 {
        let mut opt = Edns::new();
        opt.set_max_payload(edns);
        message.set_edns(opt);
    }
    Ok(message.to_vec()?)
}

/// Where our sockets bind to reach `server`: its own loopback address when it is on
/// loopback (the default), so nothing listens beyond it; otherwise any address.
fn local_for(server: SocketAddr) -> SocketAddr {
    let ip = if server.ip().is_loopback() {
        server.ip()
    } else if server.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    SocketAddr::new(ip, 0)
}

/// The pack numbers the server lists now.
fn listed(server: SocketAddr, root: &ZoneRoot) -> anyhow::Result<Vec<u64>> {
    let name = Name::from_ascii(root.sequence_name())?;
    let socket = UdpSocket::bind(local_for(server))?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.send_to(&query_bytes(1, &name, 1232)?, server)?;
    let mut buffer = vec![0u8; 4096];
    let (len, _) = socket
        .recv_from(&mut buffer)
        .context("no answer to sequence")?;
    let reply = Message::from_vec(&buffer[..len])?;
    let Some(RData::TXT(txt)) = reply.answers.first().map(|r| &r.data) else {
        bail!(
            "no sequence record yet ({:?})",
            reply.metadata.response_code
        );
    };
    let mut numbers = Vec::new();
    SequenceListDecoder::new().decode(&txt.txt_data[0], &mut numbers)?;
    Ok(numbers)
}

/// The queries a worker cycles through (one per listed pack, distinct IDs).
fn prepared(
    root: &ZoneRoot,
    numbers: &[u64],
    edns: u16,
    worker: usize,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut queries = Vec::new();
    for (k, &n) in numbers.iter().enumerate() {
        let name = Name::from_ascii(root.seq_name(n))?;
        // The ID says which prepared query it is; the worker number spreads them out.
        let id = u16::try_from((k + worker * 1024) % 65_536).unwrap_or(0);
        queries.push(query_bytes(id, &name, edns)?);
    }
    Ok(queries)
}

fn udp_worker(args: &Args, queries: &[Vec<u8>], until: Instant) -> anyhow::Result<Tally> {
    let socket = UdpSocket::bind(local_for(args.server))?;
    socket.connect(args.server)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut tally = Tally::default();
    let mut sent_at = vec![None; 65_536];
    let mut next = 0usize;
    let mut send = |tally: &mut Tally, sent_at: &mut Vec<Option<Instant>>| -> anyhow::Result<()> {
        let query = &queries[next % queries.len()];
        next += 1;
        let id = usize::from(u16::from_be_bytes([query[0], query[1]]));
        sent_at[id] = Some(Instant::now());
        socket.send(query)?;
        tally.sent += 1;
        Ok(())
    };
    for _ in 0..args.in_flight {
        send(&mut tally, &mut sent_at)?;
    }
    let mut buffer = vec![0u8; 65_535];
    while Instant::now() < until {
        match socket.recv(&mut buffer) {
            Ok(len) if len >= 2 => {
                let id = usize::from(u16::from_be_bytes([buffer[0], buffer[1]]));
                tally.count(&buffer[..len], sent_at[id].take());
                send(&mut tally, &mut sent_at)?;
            }
            Ok(_) => tally.errors += 1,
            Err(_) => {
                // Lost in flight: refill the window.
                tally.timeouts += args.in_flight as u64;
                for _ in 0..args.in_flight {
                    send(&mut tally, &mut sent_at)?;
                }
            }
        }
    }
    Ok(tally)
}

fn tcp_worker(args: &Args, queries: &[Vec<u8>], until: Instant) -> anyhow::Result<Tally> {
    let mut stream = TcpStream::connect(args.server)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut writer = stream.try_clone()?;
    let mut tally = Tally::default();
    let mut next = 0usize;
    let mut sent_at = vec![None; 65_536];
    let mut send = |tally: &mut Tally, sent_at: &mut Vec<Option<Instant>>| -> anyhow::Result<()> {
        let query = &queries[next % queries.len()];
        next += 1;
        let id = usize::from(u16::from_be_bytes([query[0], query[1]]));
        let mut framed = u16::try_from(query.len())?.to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        sent_at[id] = Some(Instant::now());
        writer.write_all(&framed)?;
        tally.sent += 1;
        Ok(())
    };
    for _ in 0..args.in_flight {
        send(&mut tally, &mut sent_at)?;
    }
    let mut buffer = vec![0u8; 65_535];
    while Instant::now() < until {
        let mut prefix = [0u8; 2];
        if stream.read_exact(&mut prefix).is_err() {
            tally.timeouts += 1;
            break;
        }
        let len = usize::from(u16::from_be_bytes(prefix));
        stream.read_exact(&mut buffer[..len])?;
        if len >= 2 {
            let id = usize::from(u16::from_be_bytes([buffer[0], buffer[1]]));
            tally.count(&buffer[..len], sent_at[id].take());
        }
        send(&mut tally, &mut sent_at)?;
    }
    Ok(tally)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = ZoneRoot::parse(&args.domain)?;
    let numbers = listed(args.server, &root)?;
    eprintln!(
        "{} packs listed ({}..={}); {} workers x {} in flight over {} for {} s",
        numbers.len(),
        numbers.first().copied().unwrap_or_default(),
        numbers.last().copied().unwrap_or_default(),
        args.workers,
        args.in_flight,
        if args.tcp { "TCP" } else { "UDP" },
        args.duration
    );
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.duration);
    let mut total = Tally::default();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..args.workers)
            .map(|worker| {
                let args = &args;
                let queries = prepared(&root, &numbers, args.edns, worker);
                scope.spawn(move || {
                    let queries = queries?;
                    if args.tcp {
                        tcp_worker(args, &queries, until)
                    } else {
                        udp_worker(args, &queries, until)
                    }
                })
            })
            .collect();
        for handle in handles {
            match handle.join() {
                Ok(tally) => total.merge(tally?),
                Err(_) => bail!("a worker panicked"),
            }
        }
        Ok(())
    })?;
    let seconds = start.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    println!(
        "sent {} | replies {} ({:.0}/s) | answered {} ({:.0}/s) | truncated {} | errors {} | timeouts {} | {:.1} MB/s | latency p50 {:.2} ms p99 {:.2} ms",
        total.sent,
        total.replies,
        total.replies as f64 / seconds,
        total.answered,
        total.answered as f64 / seconds,
        total.truncated,
        total.errors,
        total.timeouts,
        total.bytes as f64 / seconds / 1e6,
        percentile(&total.latencies_us, 0.5),
        percentile(&total.latencies_us, 0.99),
    );
    Ok(())
}
