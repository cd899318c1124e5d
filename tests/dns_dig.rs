//! End to end, checked with a third-party client: a fake caller playing a tone is put
//! on air over DNS by a route (aodns.md), and `dig` fetches `sequence.<domain>` and
//! `seq_<n>.<domain>` over UDP and TCP. The strings must parse as the sheet says
//! (§3, §5), the TTLs follow the reference rule (§7), and the Opus packets, decoded
//! with reference libopus, give back the caller's tone at its frequency and level.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod dns_support;

use std::time::Duration;

use codecs::aodns::{PackReader, SequenceListDecoder, TtlRule, seq_ttl};
use codecs::opus::OpusFormat;
use common::{GatewayProcess, uuid};
use dns_support::{Api, DNS_CONFIG, DOMAIN, dig, dig_strings, dig_txt, dns_addr};
use sip_glue::fake_asterisk::{FakeCall, Source};
use std::net::SocketAddr;

const WINDOW: u16 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_fetches_a_callers_tone_over_udp_and_tcp() {
    let caller = uuid();
    let config = format!(
        r#"{DNS_CONFIG}
[[routes]]
name = "on-air"
match = {{ uuid = "{caller}" }}
actions = [{{ action = "broadcast", domain = "{DOMAIN}" }}]
"#
    );
    let gateway = GatewayProcess::start(&config);
    let api = Api::new(&gateway);
    api.create_broadcast("music", DOMAIN, WINDOW).await;
    let server = dns_addr(&gateway);

    // Before any input: a pack of silence is listed (NODATA would make every
    // client query `sequence` in a loop with no pause, §10).
    let start = dig(server, &["TXT", &format!("sequence.{DOMAIN}")]);
    assert!(start.contains("status: NOERROR"), "{start}");
    assert!(start.contains("ANSWER: 1, AUTHORITY: 1"), "{start}");
    assert!(start.contains("flags: qr aa rd;"), "{start}");

    let call = tokio::spawn(
        FakeCall::new(gateway.addr, caller)
            .source(Source::tone(440.0, -6.0))
            .duration(Duration::from_secs(14))
            .run(),
    );
    let status = api.wait_packs("music", 9, Duration::from_secs(30)).await;
    let (_, patches) = api.get("/v1/patches?node=dns:music").await;
    assert_eq!(
        patches["items"][0]["source"],
        format!("call:{caller}.voice"),
        "the route patched the caller into the broadcast: {patches}"
    );

    // `sequence` over UDP and TCP: one string, the consecutive newest numbers.
    let short = dig(server, &["+short", "TXT", &format!("sequence.{DOMAIN}")]);
    let lines: Vec<&str> = short.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one RR: {short}");
    let strings = dig_strings(lines[0]);
    assert_eq!(strings.len(), 1, "exactly one string: {short}");
    assert!(strings[0].len() <= 255 && strings[0].starts_with(b"q:"));
    let mut decoder = SequenceListDecoder::new();
    let mut listed = Vec::new();
    decoder.decode(&strings[0], &mut listed).unwrap();
    assert!(
        listed.len() >= 8 && listed.len() <= usize::from(WINDOW),
        "{listed:?}"
    );
    assert!(listed.windows(2).all(|w| w[1] == w[0] + 1), "{listed:?}");
    let newest = *listed.last().unwrap();
    assert!(newest >= status["current_sequence"].as_u64().unwrap());
    let (tcp_answers, _) = dig_txt(server, &format!("sequence.{DOMAIN}"), &["+tcp"]);
    assert_eq!(tcp_answers.len(), 1);
    assert_eq!(tcp_answers[0].ttl, 10, "sequence TTL (§7)");
    let mut over_tcp = Vec::new();
    decoder
        .decode(&tcp_answers[0].strings[0], &mut over_tcp)
        .unwrap();
    assert_eq!(over_tcp[0], listed[0]);

    // The newest six packs. A pack (~2.3 kB) does not fit dig's 1232-byte EDNS size:
    // the UDP reply is truncated and dig repeats the query over TCP.
    let wanted = &listed[listed.len() - 6..];
    let mut libopus = opus::Decoder::new(16_000, opus::Channels::Mono).unwrap();
    let mut packs: Vec<Vec<f32>> = Vec::new();
    let mut out = vec![0i16; 960];
    let mut reader = PackReader::new();
    for (k, &n) in wanted.iter().enumerate() {
        let name = format!("seq_{n}.{DOMAIN}");
        let (answers, transcript) = if k == 0 {
            let (answers, transcript) = dig_txt(server, &name, &[]);
            assert!(
                transcript.contains("Truncated, retrying in TCP mode"),
                "{transcript}"
            );
            let truncated = dig(server, &["+ignore", "TXT", &name]);
            assert!(truncated.contains("flags: qr aa tc rd;"), "{truncated}");
            assert!(
                truncated.contains("ANSWER: 0"),
                "never a partial pack: {truncated}"
            );
            (answers, transcript)
        } else {
            dig_txt(server, &name, &["+tcp"])
        };
        assert!(answers.len() >= 8, "{transcript}");
        let ttl = seq_ttl(
            TtlRule::Reference,
            answers.len(),
            OpusFormat::default(),
            usize::from(WINDOW),
        );
        reader.clear();
        for answer in &answers {
            assert_eq!(answer.name, format!("{name}."));
            assert_eq!(
                answer.ttl,
                ttl,
                "TTL rule (§7) for {} frames",
                answers.len()
            );
            assert_eq!(answer.strings.len(), 1, "one string per RR (§3)");
            assert!(answer.strings[0].len() <= 250, "string limit (§3)");
            reader.push_txt(&answer.strings[0]).unwrap();
        }
        let frames: Vec<(u32, Vec<u8>)> = reader
            .sorted_frames()
            .map(|(i, f)| (i, f.to_vec()))
            .collect();
        assert_eq!(
            frames.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..frames.len() as u32).collect::<Vec<_>>(),
            "indices 000.. in order"
        );
        let mut pcm = Vec::new();
        for (_, packet) in frames {
            assert!(packet.len() <= 198);
            let decoded = libopus.decode(&packet, &mut out, false).unwrap();
            assert_eq!(decoded, 960, "60 ms per packet (§8)");
            pcm.extend(out.iter().map(|&s| f32::from(s) / 32_768.0));
        }
        packs.push(pcm);
    }
    // 440 Hz at -6 dBFS went in at 8 kHz; it comes back at 16 kHz through the bus.
    // Measured pack by pack (each about 0.8 s), so that one hiccup of the caller's
    // uplink on a loaded machine shows as one odd pack, not as a shifted average.
    let mut fits: Vec<_> = packs
        .iter()
        .enumerate()
        .map(|(k, pcm)| {
            // The decoder's first frame is its start-up.
            let pcm = if k == 0 { &pcm[960..] } else { &pcm[..] };
            dns_support::tone(pcm, 0.0)
        })
        .collect();
    for fit in &fits {
        println!(
            "libopus {}: {:.3} Hz, {:.2} dBFS, SNR {:.1} dB",
            opus::version(),
            fit.frequency_hz,
            fit.amplitude_dbfs,
            fit.snr_db
        );
    }
    let off = fits
        .iter()
        .filter(|f| (f.frequency_hz - 440.0).abs() > 1.0)
        .count();
    // A pack that holds a glitch (the caller's frames late on a stalled host) defeats one
    // sine fit over its 0.8 s; at most a third of them may, the median decides.
    assert!(off * 3 <= fits.len(), "{off} packs off frequency: {fits:?}");
    fits.sort_by(|a, b| a.frequency_hz.total_cmp(&b.frequency_hz));
    let median = &fits[fits.len() / 2];
    assert!((median.frequency_hz - 440.0).abs() < 0.5, "{fits:?}");
    fits.sort_by(|a, b| a.amplitude_dbfs.total_cmp(&b.amplitude_dbfs));
    assert!(
        (fits[fits.len() / 2].amplitude_dbfs + 6.0).abs() < 1.5,
        "{fits:?}"
    );
    fits.sort_by(|a, b| a.snr_db.total_cmp(&b.snr_db));
    assert!(fits[fits.len() / 2].snr_db > 20.0, "{fits:?}");

    // State in the API and the metrics.
    let status = api.status("music").await;
    assert_eq!(status["window"], u64::from(WINDOW));
    assert_eq!(status["domain"], format!("{DOMAIN}."));
    assert!(status["queries_total"].as_u64().unwrap() >= 9, "{status}");
    assert!(
        status["distinct_listeners"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(status["truncated"].as_u64().unwrap() >= 2, "{status}");
    let pack_ms = status["pack_duration_ms"].as_u64().unwrap();
    assert!((480..=1200).contains(&pack_ms), "{status}");
    let metrics = api.metrics().await;
    for family in [
        "telepatch_dns_sequence{node=\"dns:music\"}",
        "telepatch_dns_window_packs{node=\"dns:music\"} 20",
        "telepatch_dns_queries_total{node=\"dns:music\",outcome=\"answer\"}",
        "telepatch_dns_queries_per_second{node=\"dns:music\"}",
        "telepatch_dns_listeners{node=\"dns:music\"}",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    let report = call.await.unwrap().unwrap();
    assert_eq!(report.end, sip_glue::fake_asterisk::CallEnd::Completed);
}

/// The numbers `sequence.<domain>` lists, through dig (`qname` in any spelling): it
/// must answer with exactly one RR of one string. Returns them and the RR's TTL.
fn dig_sequence(server: SocketAddr, qname: &str) -> (Vec<u64>, u32) {
    let (answers, transcript) = dig_txt(server, qname, &[]);
    assert!(transcript.contains("status: NOERROR"), "{transcript}");
    assert_eq!(answers.len(), 1, "{transcript}");
    assert_eq!(answers[0].strings.len(), 1, "{transcript}");
    let mut listed = Vec::new();
    SequenceListDecoder::new()
        .decode(&answers[0].strings[0], &mut listed)
        .unwrap();
    assert!(!listed.is_empty());
    assert!(listed.windows(2).all(|w| w[1] == w[0] + 1), "{listed:?}");
    (listed, answers[0].ttl)
}

/// `sequence` answers from the moment a broadcast is created, before any input, and
/// through a PUT, which keeps the window (NODATA makes every reference client query
/// `sequence` in a loop with no pause, aodns.md §10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_is_answered_from_creation_and_through_a_put() {
    let gateway = GatewayProcess::start(DNS_CONFIG);
    let api = Api::new(&gateway);
    let sequence = format!("sequence.{DOMAIN}");
    api.create_broadcast("music", DOMAIN, 12).await;
    let server = dns_addr(&gateway);
    let (created, ttl) = dig_sequence(server, &sequence);
    assert_eq!(ttl, 10);
    let pack = format!("seq_{}.{DOMAIN}", created[0]);
    let (frames, _) = dig_txt(server, &pack, &["+tcp"]);
    assert_eq!(frames.len(), 76, "a pack of silence, 4.56 s");

    let (status, body) = api
        .send(
            reqwest::Method::PUT,
            "/v1/nodes/dns:music",
            Some(serde_json::json!({"config": {"kind": "dns", "domain": DOMAIN, "window": 4}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (rebuilt, _) = dig_sequence(server, &sequence);
    assert!(
        created.iter().all(|n| rebuilt.contains(n)),
        "the PUT emptied the window: {created:?} then {rebuilt:?}"
    );
}

/// After a DELETE the zone stays served for a grace period (its listeners' clients
/// crash on REFUSED, NXDOMAIN or SERVFAIL, aodns.md §10): `sequence` still lists the
/// window, its packs are served, TTLs end with the grace period; and a broadcast
/// created again meanwhile takes the zone over, window and numbering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_broadcast_is_served_for_a_grace_period_and_taken_over() {
    let gateway = GatewayProcess::start(DNS_CONFIG);
    let api = Api::new(&gateway);
    let sequence = format!("sequence.{DOMAIN}");
    api.create_broadcast("music", DOMAIN, 12).await;
    let server = dns_addr(&gateway);
    api.wait_packs("music", 1, Duration::from_secs(15)).await;
    let (before, _) = dig_sequence(server, &sequence);

    let (status, _) = api
        .send(reqwest::Method::DELETE, "/v1/nodes/dns:music", None)
        .await;
    assert_eq!(status, 204);
    let (deleted, ttl) = dig_sequence(server, &sequence);
    assert!(
        before.iter().all(|n| deleted.contains(n)),
        "{before:?} then {deleted:?}"
    );
    assert!(ttl <= 10, "{ttl}");
    for n in &deleted {
        let (frames, transcript) = dig_txt(server, &format!("seq_{n}.{DOMAIN}"), &["+tcp"]);
        assert!(!frames.is_empty(), "{transcript}");
    }
    // The log says how long the zone is kept: at least the SOA's 60 s handed out a
    // moment ago; no answer carries a TTL beyond it.
    let line = gateway
        .wait_log("its zone stays served", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("{}", gateway.logs().join("\n")));
    let grace_s: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grace_s="))
        .unwrap()
        .parse()
        .unwrap();
    // (The last query before the delete handed out the SOA for 60 s: the grace period
    // is what remained of it, a little less than 60 s.)
    assert!((50..=60).contains(&grace_s), "{line}");
    let soa = dig(server, &["+noall", "+authority", "TXT", &sequence]);
    let soa_ttl: u32 = soa.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        u64::from(soa_ttl) <= grace_s && soa_ttl < 60,
        "cut to the time left: {soa}"
    );

    // Created again within the grace period: it takes the zone over, window and all.
    api.create_broadcast("music", DOMAIN, 12).await;
    let (again, ttl) = dig_sequence(server, &sequence);
    assert_eq!(ttl, 10, "full TTLs again");
    assert!(
        deleted.iter().all(|n| again.contains(n)),
        "{deleted:?} then {again:?}"
    );
    let newest = *again.last().unwrap();
    let status = api.wait_packs("music", 1, Duration::from_secs(15)).await;
    assert_eq!(
        status["current_sequence"].as_u64().unwrap(),
        newest + 1,
        "numbering went on without a jump: {status}"
    );
    let (later, _) = dig_sequence(server, &sequence);
    assert!(
        later.contains(&(newest + 1)) && later.contains(&newest),
        "{later:?}"
    );
}

/// Resolvers that randomise the case of query names (0x20) get the records, with
/// their own spelling back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_match_in_any_case_and_answers_are_spelled_as_asked() {
    let gateway = GatewayProcess::start(DNS_CONFIG);
    let api = Api::new(&gateway);
    api.create_broadcast("music", DOMAIN, 12).await;
    let server = dns_addr(&gateway);
    api.wait_packs("music", 1, Duration::from_secs(15)).await;
    let (lower, _) = dig_sequence(server, &format!("sequence.{DOMAIN}"));

    let mixed = "SeQuEnCe.MuSiC.eXaMpLe.CoM";
    let (listed, _) = dig_sequence(server, mixed);
    assert_eq!(listed, lower);
    let (answers, _) = dig_txt(server, mixed, &[]);
    assert_eq!(
        answers[0].name,
        format!("{mixed}."),
        "owner spelled as asked"
    );
    let pack = format!("SEQ_{}.MUSIC.example.COM", listed[0]);
    let (frames, transcript) = dig_txt(server, &pack, &["+tcp"]);
    assert_eq!(frames.len(), 76, "{transcript}");
    assert!(
        frames.iter().all(|f| f.name == format!("{pack}.")),
        "{transcript}"
    );
}

/// The zone apex has an NS record naming the configured name server, which the SOA
/// names too (`dig NS <zone>` used to be NODATA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apex_has_ns_and_soa_naming_the_configured_name_server() {
    let config = format!("{DNS_CONFIG}nameserver = \"ns1.telepatch.test\"\n");
    let gateway = GatewayProcess::start(&config);
    let api = Api::new(&gateway);
    api.create_broadcast("music", DOMAIN, 12).await;
    let server = dns_addr(&gateway);

    let ns = dig(server, &["+noall", "+answer", "+comments", "NS", DOMAIN]);
    assert!(ns.contains("status: NOERROR"), "{ns}");
    let records: Vec<Vec<&str>> = ns
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        records,
        [vec![
            &*format!("{DOMAIN}."),
            "60",
            "IN",
            "NS",
            "ns1.telepatch.test."
        ]],
        "{ns}"
    );
    let soa = dig(server, &["+short", "SOA", DOMAIN]);
    assert_eq!(
        soa.trim(),
        "ns1.telepatch.test. . 201307231 3600 10800 86400 3600"
    );
}

/// A deleted broadcast nobody had asked about is kept for the audio it lists (a pack
/// of silence, 4.56 s) plus 15 s; answers in that time carry TTLs that end with it, and
/// then the zone is gone (REFUSED, like any other zone's names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_zone_goes_when_its_grace_period_ends() {
    let gateway = GatewayProcess::start(DNS_CONFIG);
    let api = Api::new(&gateway);
    let sequence = format!("sequence.{DOMAIN}");
    api.create_broadcast("music", DOMAIN, 12).await;
    let server = dns_addr(&gateway);
    let (status, _) = api
        .send(reqwest::Method::DELETE, "/v1/nodes/dns:music", None)
        .await;
    assert_eq!(status, 204);
    let deleted_at = std::time::Instant::now();
    let line = gateway
        .wait_log("its zone stays served", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("{}", gateway.logs().join("\n")));
    let grace_s: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grace_s="))
        .unwrap()
        .parse()
        .unwrap();
    // 4.56 s listed and 15 s, rounded down (a second pack of silence if a busy host
    // took 4.56 s between the creation and the delete).
    assert!((19..=24).contains(&grace_s), "{line}");
    dig_sequence(server, &sequence);
    let soa = dig(server, &["+noall", "+authority", "TXT", &sequence]);
    let soa_ttl: u32 = soa.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(u64::from(soa_ttl) <= grace_s, "the SOA's 60 s cut: {soa}");
    let gone = gateway
        .wait_log("AoDNS zone no longer served", Duration::from_secs(40))
        .unwrap_or_else(|| panic!("{}", gateway.logs().join("\n")));
    let kept = deleted_at.elapsed();
    assert!(kept >= Duration::from_secs(grace_s), "{kept:?}: {gone}");
    let refused = dig(server, &["TXT", &sequence]);
    assert!(refused.contains("status: REFUSED"), "{refused}");
}
