//! End to end: the AoDNS authority under bad and heavy input (aodns.md §9, §13). Queries
//! for missing names, wrong types, ANY and other zones get the right answers (in-zone:
//! NOERROR, never NXDOMAIN or SERVFAIL, which crash the reference client); malformed
//! packets and oversized TCP lengths get FORMERR or nothing and harm no one; a flood
//! of 10,000 queries per second from one address is rate-limited while another address
//! is still served; and through all of it the broadcast keeps publishing packs. While
//! the zone rotates, every pack a `sequence` answer lists is served when asked right
//! after (snapshots swap whole; the reference briefly answers NODATA, aodns.md §6).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod dns_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{GatewayProcess, uuid};
use dns_support::{Api, DNS_CONFIG, DOMAIN, ask, dns_addr, query, udp_exchange};
use hickory_server::proto::op::{Message, ResponseCode};
use hickory_server::proto::rr::RecordType;
use sip_glue::fake_asterisk::{FakeCall, Source};

/// The broadcast answers a plain `sequence` query from `local` (retrying a few times,
/// as a real client would, since the machine may be loaded).
fn sequence_answered(server: SocketAddr, local: &str) -> bool {
    let name = format!("sequence.{DOMAIN}.");
    (0..4).any(|attempt| {
        let bytes = query(0x7000 + attempt, &name, RecordType::TXT, Some(1232));
        udp_exchange(local, server, &bytes, Duration::from_millis(500))
            .and_then(|reply| Message::from_vec(&reply).ok())
            .is_some_and(|m| {
                m.metadata.response_code == ResponseCode::NoError && m.answers.len() == 1
            })
    })
}

/// One query over TCP; the parsed reply.
fn tcp_ask(server: SocketAddr, name: &str) -> Message {
    let bytes = query(0x0303, name, RecordType::TXT, None);
    let mut stream = TcpStream::connect(server).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).unwrap();
    Message::from_vec(&reply).unwrap()
}

/// While the zone rotates (a new pack every ~0.8 s), every number a `sequence` answer
/// lists is served when asked right after, the oldest included: updates are atomic.
fn check_listed_packs_are_always_served(server: SocketAddr) {
    use hickory_server::proto::rr::RData;
    let until = Instant::now() + Duration::from_secs(4);
    let mut rounds = 0;
    while Instant::now() < until {
        let reply = ask(server, &format!("sequence.{DOMAIN}."), RecordType::TXT).unwrap();
        let RData::TXT(txt) = &reply.answers[0].data else {
            panic!("not TXT")
        };
        let mut listed = Vec::new();
        codecs::aodns::SequenceListDecoder::new()
            .decode(&txt.txt_data[0], &mut listed)
            .unwrap();
        for n in [listed[0], listed[listed.len() - 1]] {
            let pack = tcp_ask(server, &format!("seq_{n}.{DOMAIN}."));
            assert_eq!(pack.metadata.response_code, ResponseCode::NoError);
            assert!(!pack.answers.is_empty(), "seq_{n} listed but not served");
        }
        rounds += 1;
        // 30 queries a second: well under this gateway's rate limit.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rounds > 10, "{rounds}");
}

fn check_queries(server: SocketAddr) {
    let name = |label: &str| format!("{label}.{DOMAIN}.");
    for label in ["sequence", "SEQUENCE", "SeQuEnCe"] {
        let reply = ask(server, &name(label), RecordType::TXT).unwrap();
        assert_eq!(reply.answers.len(), 1, "{label}");
    }

    // In zone, nothing there: NOERROR, no answer, the SOA.
    for (qname, qtype) in [
        (name("seq_999999999"), RecordType::TXT),
        (name("nothing"), RecordType::TXT),
        (name("sequences"), RecordType::TXT),
        (name("sequence"), RecordType::A),
        (name("sequence"), RecordType::AAAA),
        (name("sequence"), RecordType::MX),
        (format!("{DOMAIN}."), RecordType::TXT),
        (format!("a.b.c.{DOMAIN}."), RecordType::TXT),
    ] {
        let reply = ask(server, &qname, qtype).unwrap();
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{qname} {qtype}"
        );
        assert!(reply.answers.is_empty(), "{qname} {qtype}");
        assert_eq!(reply.authorities.len(), 1, "{qname} {qtype}: SOA");
        assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
        assert!(reply.metadata.authoritative);
    }
    // ANY at a name with records: its TXT RRset; the apex: its SOA.
    let any = ask(server, &name("sequence"), RecordType::ANY).unwrap();
    assert_eq!(any.answers.len(), 1);
    assert_eq!(any.answers[0].record_type(), RecordType::TXT);
    let soa = ask(server, &format!("{DOMAIN}."), RecordType::SOA).unwrap();
    assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
    assert_eq!(soa.answers[0].ttl, 60);
    // Other zones: REFUSED.
    for qname in ["example.org.", "other.example.com.", "example.com."] {
        let reply = ask(server, qname, RecordType::TXT).unwrap();
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::Refused,
            "{qname}"
        );
    }
}

fn check_malformed_packets(server: SocketAddr) {
    let valid = query(
        0x0101,
        &format!("sequence.{DOMAIN}."),
        RecordType::TXT,
        None,
    );
    let mut seed = 0x1234_5678u32;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect()
    };
    let mut packets: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one byte", vec![0x12]),
        ("short header", valid[..11].to_vec()),
        ("header only, one question promised", {
            let mut p = valid[..12].to_vec();
            p[5] = 1;
            p
        }),
        ("question cut in the middle", valid[..20].to_vec()),
        ("label longer than the packet", {
            let mut p = valid[..12].to_vec();
            p.extend_from_slice(&[63, b'a', b'b']);
            p
        }),
        ("compression loop", {
            let mut p = valid[..12].to_vec();
            p.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x10, 0x00, 0x01]);
            p
        }),
        ("65535 questions", {
            let mut p = valid.clone();
            p[4] = 0xff;
            p[5] = 0xff;
            p
        }),
        ("a response, not a query", {
            let mut p = valid.clone();
            p[2] |= 0x80;
            p
        }),
        ("trailing garbage", {
            let mut p = valid.clone();
            p.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
            p
        }),
    ];
    for len in [12, 100, 512, 1400] {
        packets.push(("random bytes", noise(len)));
    }
    for (what, packet) in &packets {
        let reply = udp_exchange("127.0.0.1:0", server, packet, Duration::from_millis(300));
        if let Some(reply) = reply {
            // Whatever hickory could parse of the header is answered with an error
            // (FORMERR), or, if it parsed, NOERROR/REFUSED; never a crash.
            if let Ok(message) = Message::from_vec(&reply) {
                assert!(
                    matches!(
                        message.metadata.response_code,
                        ResponseCode::FormErr
                            | ResponseCode::NoError
                            | ResponseCode::Refused
                            | ResponseCode::NotImp
                    ),
                    "{what}: {:?}",
                    message.metadata.response_code
                );
            }
        }
        assert!(sequence_answered(server, "127.0.0.1:0"), "after {what}");
    }
}

fn check_oversized_tcp(server: SocketAddr) {
    // Lengths that promise more than ever comes, a zero length, a huge garbage body.
    let mut held = Vec::new();
    for (prefix, body) in [
        (0xffffu16, vec![0u8; 100]),
        (0x0000, vec![]),
        (0x8000, vec![0x41; 0x8000]),
        (0x00ff, vec![0x00]),
    ] {
        let mut stream = TcpStream::connect(server).unwrap();
        stream.write_all(&prefix.to_be_bytes()).unwrap();
        let _ = stream.write_all(&body);
        held.push(stream);
    }
    // A half-sent length prefix.
    let mut half = TcpStream::connect(server).unwrap();
    half.write_all(&[0x01]).unwrap();
    held.push(half);

    // Everyone else is served meanwhile, over TCP and UDP.
    let valid = query(
        0x0202,
        &format!("sequence.{DOMAIN}."),
        RecordType::TXT,
        None,
    );
    let started = Instant::now();
    let mut stream = TcpStream::connect(server).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut framed = (valid.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&valid);
    stream.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.answers.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(sequence_answered(server, "127.0.0.1:0"));

    // The stuck connections are closed once idle for `dns.tcp_timeout_ms` (1 s here).
    for mut stream in held {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buffer = [0u8; 512];
        let closed = loop {
            match stream.read(&mut buffer) {
                Ok(0) => break true,
                // A FORMERR to the garbage body may come first.
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                // A read cut short by a signal (or a stop and continue) is read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break false,
            }
        };
        assert!(closed, "a stuck TCP connection stayed open");
    }
}

/// 10,000 queries per second from 127.0.0.1 for `seconds`; returns (sent, replies
/// with records, truncated replies).
fn flood(server: SocketAddr, seconds: u64) -> (u64, u64, u64) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let receiver = socket.try_clone().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let (answered, truncated) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counting = {
        let (done, answered, truncated) = (done.clone(), answered.clone(), truncated.clone());
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 4096];
            while !done.load(Ordering::Relaxed) {
                if let Ok(len) = receiver.recv(&mut buffer)
                    && let Ok(m) = Message::from_vec(&buffer[..len])
                {
                    if m.metadata.truncation {
                        truncated.fetch_add(1, Ordering::Relaxed);
                    } else if !m.answers.is_empty() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let name = format!("sequence.{DOMAIN}.");
    let packets: Vec<Vec<u8>> = (0..100u16)
        .map(|i| query(i, &name, RecordType::TXT, Some(1232)))
        .collect();
    let start = Instant::now();
    let mut sent = 0u64;
    for tick in 0..seconds * 100 {
        // 100 queries every 10 ms, on absolute deadlines.
        let due = start + Duration::from_millis(tick * 10);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        for packet in &packets {
            if socket.send_to(packet, server).is_ok() {
                sent += 1;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Relaxed);
    counting.join().unwrap();
    (
        sent,
        answered.load(Ordering::Relaxed),
        truncated.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_heavy_queries_are_answered_or_limited_and_the_broadcast_goes_on() {
    let caller = uuid();
    let config = format!(
        r#"[dns]
listen = "127.0.0.1:0"
tcp_timeout_ms = 1000
rate_limit_qps = 100
rate_limit_burst = 300

[[routes]]
name = "on-air"
match = {{ uuid = "{caller}" }}
actions = [{{ action = "broadcast", domain = "{DOMAIN}" }}]
"#
    );
    let _ = DNS_CONFIG;
    let gateway = GatewayProcess::start(&config);
    let api = Api::new(&gateway);
    api.create_broadcast("music", DOMAIN, 10).await;
    let server = dns_addr(&gateway);
    let call = tokio::spawn(
        FakeCall::new(gateway.addr, caller)
            .source(Source::tone(500.0, -6.0))
            .duration(Duration::from_secs(40))
            .run(),
    );
    api.wait_packs("music", 2, Duration::from_secs(30)).await;

    tokio::task::spawn_blocking(move || {
        check_queries(server);
        check_listed_packs_are_always_served(server);
        check_malformed_packets(server);
        check_oversized_tcp(server);
    })
    .await
    .unwrap();

    // The flood, while another address keeps asking.
    let before = api.status("music").await;
    let seconds = 4;
    let flooding = tokio::task::spawn_blocking(move || flood(server, seconds));
    let bystander = tokio::task::spawn_blocking(move || {
        let mut served = 0;
        for _ in 0..(seconds * 4) {
            std::thread::sleep(Duration::from_millis(250));
            if sequence_answered(server, "127.0.0.2:0") {
                served += 1;
            }
        }
        served
    });
    let (sent, answered, truncated) = flooding.await.unwrap();
    let served = bystander.await.unwrap();
    let after = api.status("music").await;
    println!(
        "flood: {sent} sent, {answered} answered, {truncated} truncated; bystander served {served}/{}",
        seconds * 4
    );
    assert!(sent >= 9_000 * seconds, "the flood was not sent: {sent}");
    // The flooder got its burst and its rate, give or take, and no more.
    let allowed = 300 + 100 * (seconds + 1);
    assert!(answered <= allowed, "{answered} answers > {allowed}");
    assert!(answered >= 300, "{answered}: the burst was not served");
    assert!(
        truncated > 0,
        "every second dropped query slips through truncated"
    );
    assert_eq!(served, seconds * 4, "the other address was always served");
    assert!(
        after["rate_limited"].as_u64().unwrap() > sent / 2,
        "{after}"
    );

    // The broadcast went on during the flood: packs kept coming, nothing overran.
    let published = |s: &serde_json::Value| s["packs_published"].as_u64().unwrap();
    let made = published(&after) - published(&before);
    assert!(made >= seconds, "{made} packs in {seconds} s of flood");
    assert_eq!(after["input_overruns"], 0, "{after}");
    assert_eq!(after["encode_errors"], 0, "{after}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = api.status("music").await;
    assert!(published(&later) > published(&after), "still publishing");
    assert!(
        tokio::task::spawn_blocking(move || sequence_answered(server, "127.0.0.1:0"))
            .await
            .unwrap(),
        "the flooder is served again once it stops"
    );
    let metrics = api.metrics().await;
    let limited = metrics
        .lines()
        .find_map(|l| l.strip_prefix("telepatch_dns_rate_limited_total "))
        .unwrap();
    assert!(limited.parse::<u64>().unwrap() > 0, "{metrics}");
    drop(call);
}
