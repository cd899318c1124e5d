//! The authoritative answer logic: our hickory [`RequestHandler`] serving the rotating
//! AoDNS records of every registered zone.
//!
//! Behaviour (aodns.md §9 and §13, and what a well-behaved authority does where the
//! reference does not):
//!
//! - `TXT sequence.<root>` and `TXT seq_<n>.<root>`: the records, with the zone's SOA
//!   in the authority section as the reference sends it; `SOA <root>`: the SOA;
//!   `NS <root>`: the NS record (`dns.nameserver`); `ANY` at those names: the same
//!   RRset (`ANY <root>`: SOA and NS).
//! - Names match in any case (RFC 4343): resolvers that randomise the case of query
//!   names (0x20) get the records, with the query's own spelling as owner names.
//! - Any other name or type in a zone: NOERROR with no answer and the SOA (NODATA).
//!   Never NXDOMAIN or SERVFAIL in a zone: both crash the reference client.
//! - A zone whose broadcast was deleted is served until its grace period ends
//!   (`broadcast`), with every TTL cut to the time left, so no cache outlives it.
//! - Names outside every zone, and classes other than IN: REFUSED (the reference
//!   answers an empty NOERROR; REFUSED is what an authority says, and the real client
//!   only ever asks in-zone).
//! - EDNS is honoured: the reply carries OPT, the UDP size is the client's (at least
//!   512, at most `dns.max_udp_payload`), version > 0 gets BADVERS. Without EDNS a UDP
//!   reply is at most 512 bytes.
//! - A reply that does not fit the UDP size goes out empty with TC set, and the client
//!   repeats the query over TCP (the real client does, aodns.md §10); a pack is never
//!   delivered cut short.
//! - Queries over the per-address rate are dropped (the reference client retries
//!   after a timeout, where REFUSED would crash it), except that every second dropped
//!   UDP query is answered empty with TC, so a real client behind a busy address can
//!   still get through over TCP.
//! - Header: QR, AA; RD copied from the query; RA clear (we do not recurse; the
//!   reference sets it, which is the only bit in which our replies to the sheet's
//!   queries differ from its bytes).
//!
//! Nothing here parses the wire: hickory decodes the request (a malformed one gets
//! FORMERR or is dropped before it reaches us); we look at labels and types only.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use codecs::aodns::QueryTarget;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use super::ratelimit::RateLimiter;
use super::zone::{Zone, Zones};

/// Largest reply over a stream (TCP): a DNS message cannot be longer.
const STREAM_MAX: u16 = u16::MAX;
/// UDP size of a client without EDNS (RFC 1035 §4.2.1).
const CLASSIC_UDP: u16 = 512;
/// Header, and the largest question (a 255-byte name, type and class).
const HEADER_AND_QUESTION_MAX: usize = 12 + 255 + 4;
/// An OPT record without options.
const OPT_LEN: usize = 11;

/// Counters of the whole server (per-zone ones live in [`Zone`]).
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Requests that reached the handler.
    pub requests: AtomicU64,
    /// Refused: outside every zone, or a class other than IN.
    pub refused: AtomicU64,
    /// Answered FORMERR, NOTIMP or BADVERS.
    pub errors: AtomicU64,
    /// Dropped or refused by the rate limit (all zones and none).
    pub rate_limited: AtomicU64,
    /// Replies the transport failed to send.
    pub send_failures: AtomicU64,
}

/// Answers AoDNS queries for every zone in [`Zones`]. See the module documentation.
#[derive(Debug)]
pub struct AodnsHandler {
    zones: Arc<Zones>,
    limiter: RateLimiter,
    max_udp_payload: u16,
    counters: Arc<ServerCounters>,
    /// Rate-limited UDP queries so far, to answer every second one with TC.
    slip: AtomicU64,
}

/// The request being answered, with how the reply must be sent.
struct Exchange<'a> {
    request: &'a Request,
    /// The reply's OPT record, when the query had one.
    edns: Option<&'a Edns>,
    /// Largest reply: the UDP size, or 65535 over TCP.
    limit: u16,
}

/// What a reply says.
struct Reply<'a> {
    code: ResponseCode,
    answers: &'a [Record],
    authority: &'a [Record],
}

impl Reply<'_> {
    /// A reply with no records.
    fn empty(code: ResponseCode) -> Self {
        Reply {
            code,
            answers: &[],
            authority: &[],
        }
    }
}

impl AodnsHandler {
    /// A handler for `zones`, limiting each client to `rate_qps` (burst `burst`), sending
    /// UDP replies of at most `max_udp_payload` bytes.
    pub fn new(
        zones: Arc<Zones>,
        rate_qps: u32,
        burst: u32,
        max_udp_payload: u16,
        counters: Arc<ServerCounters>,
    ) -> Self {
        AodnsHandler {
            zones,
            limiter: RateLimiter::new(rate_qps, burst),
            max_udp_payload: max_udp_payload.max(CLASSIC_UDP),
            counters,
            slip: AtomicU64::new(0),
        }
    }

    /// The zone a request's (first) question falls in, if any.
    fn zone_of(&self, request: &Request) -> Option<(Arc<Zone>, QueryTarget)> {
        let query = request.queries.queries().first()?;
        let labels: Vec<&[u8]> = query.original().name().iter().collect();
        self.zones.find(&labels)
    }

    /// Sends `reply`, or an empty truncated reply if it does not fit `limit`.
    async fn send<R: ResponseHandler>(
        &self,
        exchange: &Exchange<'_>,
        mut metadata: Metadata,
        reply: Reply<'_>,
        zone: Option<&Zone>,
        mut response_handle: R,
    ) -> ResponseInfo {
        metadata.response_code = reply.code;
        let fits = fits_in(exchange, metadata, &reply);
        let builder = MessageResponseBuilder::new(&exchange.request.queries, exchange.edns);
        let result = if fits {
            if let Some(zone) = zone {
                let counter = if reply.answers.is_empty() {
                    &zone.counters.nodata
                } else {
                    &zone.counters.answers
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            let response = builder.build(
                metadata,
                reply.answers.iter(),
                reply.authority.iter(),
                std::iter::empty(),
                std::iter::empty(),
            );
            response_handle.send_response(response).await
        } else {
            if let Some(zone) = zone {
                zone.counters.truncated.fetch_add(1, Ordering::Relaxed);
            }
            metadata.truncation = true;
            response_handle
                .send_response(builder.build_no_records(metadata))
                .await
        };
        match result {
            Ok(info) => info,
            Err(_) => {
                self.counters.send_failures.fetch_add(1, Ordering::Relaxed);
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }

    /// Counts a query over its client's rate; true when this one should be answered
    /// (empty, truncated) rather than dropped.
    fn rate_limited(&self, request: &Request) -> bool {
        self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        if let Some((zone, _)) = self.zone_of(request) {
            zone.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        // Answer every second dropped UDP query with an empty truncated reply.
        self.slip.fetch_add(1, Ordering::Relaxed) % 2 == 1
    }
}

/// The UDP size a reply to `request` may use.
fn udp_limit(request: &Request, max_udp_payload: u16) -> u16 {
    match &request.edns {
        Some(edns) => edns.max_payload().clamp(CLASSIC_UDP, max_udp_payload),
        None => CLASSIC_UDP,
    }
}

/// Wire length of a record, without name compression (an upper bound).
fn record_wire_len(record: &Record) -> usize {
    // Name: hickory's `len` counts label bytes and one per dot, so the wire form (a
    // length byte per label and the root's zero byte) is at most one more; type,
    // class, TTL and RDLENGTH take 10.
    record.name.len() + 1 + 10 + record_data_len(record)
}

fn record_data_len(record: &Record) -> usize {
    use hickory_server::proto::rr::RData;
    match &record.data {
        RData::TXT(txt) => txt.txt_data.iter().map(|s| 1 + s.len()).sum(),
        // MNAME and RNAME (uncompressed), then five 32-bit timers.
        RData::SOA(soa) => soa.mname.len() + 1 + soa.rname.len() + 1 + 20,
        RData::NS(ns) => ns.0.len() + 1,
        _ => usize::from(u16::MAX),
    }
}

/// `records` with `owner` as their owner name, and TTLs of at most `cap`: borrowed
/// when they already are (names compared case-sensitively: the spelling matters).
fn as_asked<'r>(records: &'r [Record], owner: &Name, cap: Option<u32>) -> Cow<'r, [Record]> {
    let fits = |r: &Record| r.name.eq_case(owner) && cap.is_none_or(|cap| r.ttl <= cap);
    if records.iter().all(fits) {
        return Cow::Borrowed(records);
    }
    Cow::Owned(
        records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.name = owner.clone();
                if let Some(cap) = cap {
                    r.ttl = r.ttl.min(cap);
                }
                r
            })
            .collect(),
    )
}

thread_local! {
    /// Scratch for trial encodings (one per server thread, reused).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(4096));
}

/// Whether `reply` fits `limit` bytes: by an upper bound when it obviously does, by a
/// trial encoding otherwise.
fn fits_in(exchange: &Exchange<'_>, metadata: Metadata, reply: &Reply<'_>) -> bool {
    let Exchange {
        request,
        edns,
        limit,
    } = *exchange;
    let bound = HEADER_AND_QUESTION_MAX
        + reply
            .answers
            .iter()
            .chain(reply.authority)
            .map(record_wire_len)
            .sum::<usize>()
        + if edns.is_some() { OPT_LEN } else { 0 };
    if bound <= usize::from(limit) {
        return true;
    }
    SCRATCH.with(|scratch| {
        let mut buffer = scratch.borrow_mut();
        buffer.clear();
        let mut encoder = BinEncoder::new(&mut buffer);
        encoder.set_max_size(limit);
        let response = MessageResponseBuilder::new(&request.queries, edns).build(
            metadata,
            reply.answers.iter(),
            reply.authority.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        matches!(response.destructive_emit(&mut encoder), Ok(info) if !info.truncation)
    })
}

#[async_trait::async_trait]
impl RequestHandler for AodnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let src: IpAddr = request.src().ip();
        let datagram = request.protocol().is_datagram();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = false;
        let dropped = |metadata| {
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        };

        // EDNS (RFC 6891): answer with OPT when asked with OPT.
        let mut response_edns = Edns::new();
        response_edns.set_version(0);
        response_edns.set_max_payload(udp_limit(request, self.max_udp_payload));
        let exchange = Exchange {
            request,
            edns: request.edns.as_ref().map(|_| &response_edns),
            limit: if datagram {
                udp_limit(request, self.max_udp_payload)
            } else {
                STREAM_MAX
            },
        };

        if !self.limiter.allow(src, Instant::now()) {
            // Dropped, not refused: the reference client crashes on REFUSED for
            // `sequence` but retries after a timeout (aodns.md §10).
            if !self.rate_limited(request) || !datagram {
                return dropped(metadata);
            }
            // An empty truncated reply: a real client retries over TCP.
            metadata.truncation = true;
            let builder = MessageResponseBuilder::new(&request.queries, exchange.edns);
            let mut handle = response_handle;
            return match handle
                .send_response(builder.build_no_records(metadata))
                .await
            {
                Ok(info) => info,
                Err(_) => {
                    self.counters.send_failures.fetch_add(1, Ordering::Relaxed);
                    dropped(metadata)
                }
            };
        }

        let error = if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Some(ResponseCode::BADVERS)
        } else if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            Some(ResponseCode::NotImp)
        } else if request.queries.len() != 1 {
            Some(ResponseCode::FormErr)
        } else {
            None
        };
        if let Some(code) = error {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            let reply = Reply::empty(code);
            return self
                .send(&exchange, metadata, reply, None, response_handle)
                .await;
        }
        let query = &request.queries.queries()[0];
        let found = self
            .zone_of(request)
            .filter(|_| query.query_class() == DNSClass::IN);
        let Some((zone, target)) = found else {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            let reply = Reply::empty(ResponseCode::Refused);
            return self
                .send(&exchange, metadata, reply, None, response_handle)
                .await;
        };
        zone.counters.queries.fetch_add(1, Ordering::Relaxed);
        if !datagram {
            zone.counters.tcp.fetch_add(1, Ordering::Relaxed);
        }
        zone.note_client(src);

        let snapshot = zone.snapshot();
        let qtype = query.query_type();
        let qname = query.original().name();
        let txt_or_any = matches!(qtype, RecordType::TXT | RecordType::ANY);
        let apex = zone.apex_records();
        let stored: &[Record] = match target {
            QueryTarget::Sequence if txt_or_any => snapshot.sequence.as_slice(),
            QueryTarget::Seq(n) if txt_or_any => snapshot.pack(n).unwrap_or(&[]),
            QueryTarget::Apex => match qtype {
                RecordType::ANY => apex,
                RecordType::SOA => std::slice::from_ref(zone.soa()),
                RecordType::NS => std::slice::from_ref(zone.ns()),
                _ => &[],
            },
            _ => &[],
        };
        let now = Instant::now();
        let cap = zone.ttl_cap(now);
        // Owner names spelled as asked (0x20), TTLs within a retiring zone's time left.
        let answers = as_asked(stored, qname, cap);
        // The SOA goes in the authority section, except when the apex is what was asked.
        let authority = if matches!(target, QueryTarget::Apex) && !stored.is_empty() {
            Cow::Borrowed(&[][..])
        } else {
            let apex_name = qname.trim_to(zone.root().label_count());
            as_asked(std::slice::from_ref(zone.soa()), &apex_name, cap)
        };
        if let Some(longest) = answers.iter().chain(authority.iter()).map(|r| r.ttl).max() {
            zone.note_ttl_handed_out(now, longest);
        }
        let reply = Reply {
            code: ResponseCode::NoError,
            answers: &answers,
            authority: &authority,
        };
        self.send(&exchange, metadata, reply, Some(&zone), response_handle)
            .await
    }
}

#[cfg(test)]
mod tests {
    //! The handler against the sheet's worked example (aodns.md §11) and every kind of
    //! query the robustness tests send, on raw DNS bytes through hickory's parser.
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use codecs::aodns::{
        Pack, PackBuilder, PackLimits, Pushed, SOA_SERIAL, SequenceListEncoder, TtlRule, ZoneRoot,
        seq_ttl,
    };
    use codecs::opus::OpusFormat;
    use hickory_server::net::NetError;
    use hickory_server::net::runtime::TokioTime;
    use hickory_server::net::xfer::Protocol;
    use hickory_server::proto::op::{Message, Query};
    use hickory_server::proto::rr::{Name, RData};
    use hickory_server::zone_handler::MessageResponse;

    use super::*;
    use crate::dns::zone::{PackRecords, ZoneSnapshot, sequence_record};

    /// Records the bytes of every reply, encoded as the server's own handle does.
    #[derive(Clone)]
    struct Capture {
        protocol: Protocol,
        replies: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    #[async_trait::async_trait]
    impl ResponseHandler for Capture {
        async fn send_response<'a>(
            &mut self,
            response: MessageResponse<
                '_,
                'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
            >,
        ) -> Result<ResponseInfo, NetError> {
            let mut bytes = Vec::new();
            let mut encoder = BinEncoder::new(&mut bytes);
            encoder.set_max_size(match self.protocol {
                Protocol::Udp => response.edns().map_or(512, Edns::max_payload),
                _ => u16::MAX,
            });
            let info = response
                .destructive_emit(&mut encoder)
                .map_err(|e| NetError::from(e.to_string()))?;
            self.replies.lock().unwrap().push(bytes);
            Ok(info)
        }
    }

    fn unhex(hex: &str) -> Vec<u8> {
        let hex: String = hex.split_whitespace().collect();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// aodns.md §11: the reference's 147-byte reply to `TXT seq_1.music.example.com`.
    const SEQ_1_REPLY: &str = "
        1234 8580 0001 0003 0001 0000
        057365715f31 056d75736963 076578616d706c65 03636f6d 00 0010 0001
        c00c 0010 0001 00000005 000b 0a 303030272727 3a435141
        c00c 0010 0001 00000005 000b 0a 303031272727 607e6c57
        c00c 0010 0001 00000005 000e 0d 303032272727 3e4f774a683e41
        c012 0006 0001 0000003c 0016 00 00 0bffb45f 00000e10 00002a30 00015180 00000e10";

    /// The sheet's zone: sequences 0, 1 and 2 all hold the tiny three-frame pack.
    fn sheet_zone() -> (Arc<Zones>, Arc<Zone>) {
        let root = ZoneRoot::parse("music.example.com").unwrap();
        // The root label as name server: the reference's SOA, MNAME included.
        let zone = Arc::new(Zone::new(root.clone(), &Name::root()).unwrap());
        let mut builder = PackBuilder::new(PackLimits::new(250, 30).unwrap());
        let mut closed = Pack::new();
        for frame in [&[0x00, 0x01, 0x02][..], &[0xf8, 0xff, 0xfe], b"Hello"] {
            assert_eq!(builder.push(frame, &mut closed).unwrap(), Pushed::Appended);
        }
        builder.take_open(&mut closed);
        let ttl = seq_ttl(TtlRule::Reference, 3, OpusFormat::default(), 75);
        let mut packs = BTreeMap::new();
        for n in 0..3 {
            packs.insert(
                n,
                Arc::new(PackRecords::build(&root, n, &closed, ttl).unwrap()),
            );
        }
        let mut list = SequenceListEncoder::new();
        let text = list.encode_window(0, 2).unwrap().text.to_owned();
        let name = Name::from_ascii(root.sequence_name()).unwrap();
        zone.publish(ZoneSnapshot {
            sequence: Some(sequence_record(&name, &text)),
            listed: Some((0, 2)),
            packs,
        });
        let zones = Arc::new(Zones::new());
        zones.insert(Arc::clone(&zone)).unwrap();
        (zones, zone)
    }

    fn handler(zones: &Arc<Zones>, rate: u32, burst: u32) -> AodnsHandler {
        AodnsHandler::new(
            Arc::clone(zones),
            rate,
            burst,
            1232,
            Arc::new(ServerCounters::default()),
        )
    }

    /// Sends raw query bytes; returns the reply bytes, if any was sent.
    async fn ask(handler: &AodnsHandler, query: &[u8], protocol: Protocol) -> Option<Vec<u8>> {
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let request = Request::from_bytes(query.to_vec(), src, protocol).unwrap();
        let capture = Capture {
            protocol,
            replies: Arc::new(Mutex::new(Vec::new())),
        };
        handler
            .handle_request::<_, TokioTime>(&request, capture.clone())
            .await;
        capture.replies.lock().unwrap().pop()
    }

    fn query(name: &str, qtype: RecordType, edns: Option<(u16, u8)>) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 0x1234;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some((size, version)) = edns {
            let mut edns = Edns::new();
            edns.set_max_payload(size);
            edns.set_version(version);
            message.set_edns(edns);
        }
        message.to_vec().unwrap()
    }

    async fn answer(handler: &AodnsHandler, name: &str, qtype: RecordType) -> Message {
        let bytes = ask(handler, &query(name, qtype, None), Protocol::Udp)
            .await
            .unwrap();
        Message::from_vec(&bytes).unwrap()
    }

    #[tokio::test]
    async fn reproduces_the_sheet_reply_record_for_record() {
        let (zones, _) = sheet_zone();
        let handler = handler(&zones, 0, 0);
        // The query of §11: ID 0x1234, RD, one TXT question, no EDNS.
        let query = unhex(
            "1234 0100 0001 0000 0000 0000
             057365715f31 056d75736963 076578616d706c65 03636f6d 00 0010 0001",
        );
        let ours = ask(&handler, &query, Protocol::Udp).await.unwrap();
        let sheet = unhex(SEQ_1_REPLY);
        assert_eq!(sheet.len(), 147);
        // Header: the same but for RA (0x80 of the fourth byte), which the reference
        // sets and an authority that does not recurse must not.
        assert_eq!(&ours[..3], &sheet[..3]);
        assert_eq!(ours[3], sheet[3] & !0x80);
        assert_eq!(
            &ours[4..12],
            &sheet[4..12],
            "one question, 3 answers, 1 authority"
        );
        // Question echoed unchanged.
        assert_eq!(&ours[12..41], &sheet[12..41]);
        // Every record equal once names are decompressed: owner, type, class, TTL and
        // the exact rdata bytes.
        let (ours, sheet) = (
            Message::from_vec(&ours).unwrap(),
            Message::from_vec(&sheet).unwrap(),
        );
        assert_eq!(ours.answers, sheet.answers);
        assert_eq!(ours.authorities, sheet.authorities);
        for (a, b) in ours.answers.iter().zip(&sheet.answers) {
            assert_eq!(a.ttl, b.ttl);
            assert_eq!(a.data, b.data);
        }
        assert_eq!(ours.authorities[0].ttl, 60);
    }

    #[tokio::test]
    async fn reply_bytes_differ_from_the_sheet_only_by_ra_and_one_uncompressed_name() {
        // hickory 0.26 does not compress answer names against the question (its
        // pointer candidate covers the question's type and class too), so the first
        // answer spells `seq_1.music.example.com` out: 23 bytes more than the sheet's
        // pointer. Everything else is the sheet's bytes, re-pointed.
        let (zones, _) = sheet_zone();
        let handler = handler(&zones, 0, 0);
        let query = unhex(
            "1234 0100 0001 0000 0000 0000
             057365715f31 056d75736963 076578616d706c65 03636f6d 00 0010 0001",
        );
        let ours = ask(&handler, &query, Protocol::Udp).await.unwrap();
        let mut sheet = unhex(SEQ_1_REPLY);
        sheet[3] &= !0x80;
        // Spell the first answer's owner out and move the later pointers by the same
        // 23 bytes: 0xc00c -> 0xc029 (the full name at offset 41), 0xc012 -> 0xc02f.
        let name = sheet[12..37].to_vec();
        let mut expected = sheet[..41].to_vec();
        expected.extend_from_slice(&name);
        let rest = sheet[43..].to_vec();
        let mut i = 0;
        while i < rest.len() {
            if rest[i] == 0xc0 && (rest.get(i + 1) == Some(&0x0c) || rest.get(i + 1) == Some(&0x12))
            {
                let target = if rest[i + 1] == 0x0c { 0x29 } else { 0x2f };
                expected.extend_from_slice(&[0xc0, target]);
                i += 2;
            } else {
                expected.push(rest[i]);
                i += 1;
            }
        }
        assert_eq!(ours.len(), 147 + 23);
        assert_eq!(ours, expected);
    }

    #[tokio::test]
    async fn serves_the_sequence_record_and_the_soa() {
        let (zones, _) = sheet_zone();
        let handler = handler(&zones, 0, 0);
        let reply = answer(&handler, "sequence.music.example.com.", RecordType::TXT).await;
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(reply.answers[0].ttl, 10);
        let RData::TXT(txt) = &reply.answers[0].data else {
            panic!("not TXT")
        };
        assert_eq!(&*txt.txt_data[0], b"q:yEDjaKjAlBYEtp");
        assert_eq!(
            reply.authorities.len(),
            1,
            "SOA in authority as the reference"
        );

        let soa = answer(&handler, "music.example.com.", RecordType::SOA).await;
        assert_eq!(soa.answers.len(), 1);
        assert!(soa.authorities.is_empty());
        assert!(soa.metadata.authoritative);
        let any = answer(&handler, "seq_2.music.example.com.", RecordType::ANY).await;
        assert_eq!(any.answers.len(), 3, "ANY gets the TXT RRset");
    }

    #[tokio::test]
    async fn in_zone_misses_are_nodata_with_the_soa_and_others_refused() {
        let (zones, _) = sheet_zone();
        let handler = handler(&zones, 0, 0);
        for (name, qtype) in [
            ("seq_99.music.example.com.", RecordType::TXT),
            ("seq_01.music.example.com.", RecordType::TXT),
            ("SEQ_01.music.example.com.", RecordType::TXT),
            ("sequence.music.example.com.", RecordType::A),
            ("seq_1.music.example.com.", RecordType::AAAA),
            ("music.example.com.", RecordType::TXT),
            ("deep.seq_1.music.example.com.", RecordType::TXT),
        ] {
            let reply = answer(&handler, name, qtype).await;
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NoError,
                "{name}"
            );
            assert!(reply.answers.is_empty(), "{name} {qtype}");
            assert_eq!(reply.authorities.len(), 1, "{name}");
            assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
            assert!(reply.metadata.authoritative);
        }
        for name in ["example.com.", "seq_1.music.example.org.", "."] {
            let reply = answer(&handler, name, RecordType::TXT).await;
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::Refused,
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn large_udp_replies_are_truncated_empty_and_served_whole_over_tcp() {
        let root = ZoneRoot::parse("big.example").unwrap();
        let zone = Arc::new(Zone::new(root.clone(), &Name::root()).unwrap());
        let mut builder = PackBuilder::new(PackLimits::REFERENCE);
        let mut closed = Pack::new();
        // 13 frames of 150 bytes: a 2.5 kB reply, like a real pack (aodns.md §3.1).
        while builder.push(&[0x5a; 150], &mut closed).unwrap() == Pushed::Appended {}
        let mut packs = BTreeMap::new();
        packs.insert(
            7,
            Arc::new(PackRecords::build(&root, 7, &closed, 23).unwrap()),
        );
        zone.publish(ZoneSnapshot {
            sequence: None,
            listed: Some((7, 7)),
            packs,
        });
        let zones = Arc::new(Zones::new());
        zones.insert(zone.clone()).unwrap();
        let handler = handler(&zones, 0, 0);
        let name = "seq_7.big.example.";
        for edns in [None, Some((1232, 0)), Some((4096, 0))] {
            let udp = ask(&handler, &query(name, RecordType::TXT, edns), Protocol::Udp)
                .await
                .unwrap();
            let reply = Message::from_vec(&udp).unwrap();
            assert!(reply.metadata.truncation, "{edns:?}");
            assert!(reply.answers.is_empty(), "no partial pack");
            assert_eq!(reply.edns.is_some(), edns.is_some(), "OPT echoed");
            // 4096 offered, 1232 configured: the server's limit wins.
            if edns.is_some() {
                assert_eq!(reply.max_payload(), 1232);
            }
        }
        let tcp = ask(&handler, &query(name, RecordType::TXT, None), Protocol::Tcp)
            .await
            .unwrap();
        let reply = Message::from_vec(&tcp).unwrap();
        assert!(!reply.metadata.truncation);
        assert_eq!(reply.answers.len(), closed.frame_count());
        assert!(tcp.len() > 2000, "{} bytes", tcp.len());
        assert_eq!(zone.counters.truncated.load(Ordering::Relaxed), 3);
        assert_eq!(zone.counters.tcp.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn edns_versions_and_odd_messages_get_the_right_errors() {
        let (zones, _) = sheet_zone();
        let handler = handler(&zones, 0, 0);
        let name = "sequence.music.example.com.";
        let reply = ask(
            &handler,
            &query(name, RecordType::TXT, Some((1232, 1))),
            Protocol::Udp,
        )
        .await
        .unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        // RCODE 16 (its high bits in the OPT record): hickory names it BADSIG when
        // parsing, as the two share the number (RFC 6891, RFC 8945).
        assert_eq!(u16::from(reply.metadata.response_code), 16);
        assert_eq!(reply.edns.map(|e| e.version()), Some(0));
        let reply = ask(
            &handler,
            &query(name, RecordType::TXT, Some((1232, 0))),
            Protocol::Udp,
        )
        .await
        .unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(reply.edns.map(|e| e.version()), Some(0));

        // Two questions: FORMERR.
        let mut two = Message::query();
        two.metadata.id = 7;
        for n in ["seq_0", "seq_1"] {
            let name = Name::from_ascii(format!("{n}.music.example.com.")).unwrap();
            two.add_query(Query::query(name, RecordType::TXT));
        }
        let reply = ask(&handler, &two.to_vec().unwrap(), Protocol::Udp)
            .await
            .unwrap();
        assert_eq!(
            Message::from_vec(&reply).unwrap().metadata.response_code,
            ResponseCode::FormErr
        );
        // A NOTIFY: not implemented.
        let mut notify = Message::query();
        notify.metadata.op_code = OpCode::Notify;
        notify.add_query(Query::query(
            Name::from_ascii("music.example.com.").unwrap(),
            RecordType::SOA,
        ));
        let reply = ask(&handler, &notify.to_vec().unwrap(), Protocol::Udp)
            .await
            .unwrap();
        assert_eq!(
            Message::from_vec(&reply).unwrap().metadata.response_code,
            ResponseCode::NotImp
        );
        // Class CH: refused.
        let mut chaos = Query::query(Name::from_ascii(name).unwrap(), RecordType::TXT);
        chaos.set_query_class(DNSClass::CH);
        let mut message = Message::query();
        message.add_query(chaos);
        let reply = ask(&handler, &message.to_vec().unwrap(), Protocol::Udp)
            .await
            .unwrap();
        assert_eq!(
            Message::from_vec(&reply).unwrap().metadata.response_code,
            ResponseCode::Refused
        );
    }

    #[tokio::test]
    async fn over_the_rate_queries_are_dropped_and_every_second_udp_one_truncated() {
        let (zones, zone) = sheet_zone();
        let handler = handler(&zones, 1, 3);
        let q = query("sequence.music.example.com.", RecordType::TXT, None);
        let mut outcomes = Vec::new();
        for _ in 0..7 {
            outcomes.push(match ask(&handler, &q, Protocol::Udp).await {
                None => "dropped",
                Some(bytes) if Message::from_vec(&bytes).unwrap().metadata.truncation => "tc",
                Some(_) => "answer",
            });
        }
        assert_eq!(
            outcomes,
            [
                "answer", "answer", "answer", "dropped", "tc", "dropped", "tc"
            ]
        );
        assert_eq!(zone.counters.rate_limited.load(Ordering::Relaxed), 4);
        // TCP over the rate: dropped, never REFUSED (which crashes the real client).
        assert_eq!(ask(&handler, &q, Protocol::Tcp).await, None);
    }

    #[tokio::test]
    async fn names_match_in_any_case_and_answers_are_spelled_as_asked() {
        // Resolvers that randomise the query's case (0x20) compare the reply's names
        // with what they sent.
        let (zones, zone) = sheet_zone();
        let handler = handler(&zones, 0, 0);
        for (qname, answers) in [
            ("SeQuEnCe.MuSiC.eXaMpLe.CoM.", 1),
            ("SEQUENCE.MUSIC.EXAMPLE.COM.", 1),
            ("sEq_1.music.Example.com.", 3),
            ("SEQ_2.MUSIC.EXAMPLE.COM.", 3),
        ] {
            let bytes = ask(
                &handler,
                &query(qname, RecordType::TXT, None),
                Protocol::Udp,
            )
            .await
            .unwrap();
            let reply = Message::from_vec(&bytes).unwrap();
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NoError,
                "{qname}"
            );
            assert_eq!(reply.answers.len(), answers, "{qname}");
            let asked = Name::from_ascii(qname).unwrap();
            assert!(reply.queries[0].name().eq_case(&asked), "question echoed");
            for record in &reply.answers {
                assert!(
                    record.name.eq_case(&asked),
                    "{qname}: owner {}",
                    record.name
                );
                assert_eq!(record.record_type(), RecordType::TXT);
            }
            // The SOA's owner is the zone spelled as in the question.
            let apex = asked.trim_to(3);
            assert!(
                reply.authorities[0].name.eq_case(&apex),
                "{}",
                reply.authorities[0].name
            );
            // And on the wire the spelling is the query's, byte for byte.
            let wire =
                hickory_server::proto::serialize::binary::BinEncodable::to_bytes(&asked).unwrap();
            assert!(bytes.windows(wire.len()).any(|w| w == wire.as_slice()));
        }
        // Same records as the lower-case query.
        let lower = answer(&handler, "seq_1.music.example.com.", RecordType::TXT).await;
        let upper = answer(&handler, "SEQ_1.MUSIC.EXAMPLE.COM.", RecordType::TXT).await;
        for (a, b) in lower.answers.iter().zip(&upper.answers) {
            assert_eq!((a.ttl, &a.data), (b.ttl, &b.data));
        }
        assert_eq!(zone.counters.nodata.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn the_apex_has_ns_and_soa_naming_the_configured_name_server() {
        let root = ZoneRoot::parse("music.example.com").unwrap();
        let nameserver = Name::from_ascii("ns1.example.net.").unwrap();
        let zone = Arc::new(Zone::new(root, &nameserver).unwrap());
        let zones = Arc::new(Zones::new());
        zones.insert(Arc::clone(&zone)).unwrap();
        let handler = handler(&zones, 0, 0);
        let ns = answer(&handler, "music.example.com.", RecordType::NS).await;
        assert_eq!(ns.metadata.response_code, ResponseCode::NoError);
        assert_eq!(ns.answers.len(), 1, "{ns:?}");
        let RData::NS(target) = &ns.answers[0].data else {
            panic!("not NS: {ns:?}")
        };
        assert_eq!(target.0, nameserver);
        assert!(ns.authorities.is_empty());
        let soa = answer(&handler, "Music.Example.com.", RecordType::SOA).await;
        let RData::SOA(soa_data) = &soa.answers[0].data else {
            panic!("not SOA")
        };
        assert_eq!(soa_data.mname, nameserver, "SOA and NS agree");
        assert_eq!(soa_data.serial, SOA_SERIAL);
        let any = answer(&handler, "music.example.com.", RecordType::ANY).await;
        let mut types: Vec<RecordType> = any.answers.iter().map(Record::record_type).collect();
        types.sort();
        assert_eq!(types, [RecordType::NS, RecordType::SOA]);
        // Below the apex, NS is NODATA like any other type.
        let below = answer(&handler, "sequence.music.example.com.", RecordType::NS).await;
        assert!(below.answers.is_empty());
        assert_eq!(below.authorities[0].record_type(), RecordType::SOA);
    }

    #[tokio::test]
    async fn a_retiring_zone_answers_with_ttls_that_expire_by_its_end() {
        let (zones, zone) = sheet_zone();
        let handler = handler(&zones, 0, 0);
        // In service: the zone's own TTLs (sequence 10, pack 5, SOA 60), remembered.
        let before = Instant::now();
        let reply = answer(&handler, "sequence.music.example.com.", RecordType::TXT).await;
        assert_eq!(reply.answers[0].ttl, 10);
        assert_eq!(reply.authorities[0].ttl, 60);
        assert!(zone.handed_out_until() >= before + std::time::Duration::from_secs(60));
        // Retiring, 7.5 s left: nothing handed out lives longer.
        let end = Instant::now() + std::time::Duration::from_millis(7_500);
        zone.retire(end);
        let handed_out = zone.handed_out_until();
        let reply = answer(&handler, "sequence.music.example.com.", RecordType::TXT).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.answers.len(), 1, "still served");
        assert_eq!(reply.answers[0].ttl, 7);
        assert_eq!(reply.authorities[0].ttl, 7);
        let pack = answer(&handler, "seq_1.music.example.com.", RecordType::TXT).await;
        assert_eq!(pack.answers.len(), 3);
        assert!(
            pack.answers.iter().all(|r| r.ttl == 5),
            "below the cap: kept"
        );
        assert_eq!(pack.authorities[0].ttl, 7);
        assert_eq!(zone.handed_out_until(), handed_out, "no later expiry");
        // A successor takes the zone over: full TTLs again.
        zone.reinstate();
        let reply = answer(&handler, "sequence.music.example.com.", RecordType::TXT).await;
        assert_eq!(reply.answers[0].ttl, 10);
    }
}
