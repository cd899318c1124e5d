//! The records of each AoDNS zone, published as immutable snapshots, and the registry
//! of zones the DNS server answers for.
//!
//! A broadcast's encoder thread builds a whole new [`ZoneSnapshot`] (the `sequence`
//! record and every `seq_<n>` RRset it serves) each time a pack closes and swaps it in
//! with [`Zone::publish`]; the server takes an `Arc` of the current snapshot per
//! query. A query therefore sees either the previous or the next state, never a name
//! missing half-way through an update (the reference server clears and refills its
//! zone, so it briefly answers NODATA for names it lists; aodns.md §6).
//!
//! A zone also remembers how long the TTLs it has handed out last
//! ([`Zone::note_ttl_handed_out`]) and, once its broadcast is deleted, until when it
//! is still served ([`Zone::retire`]): the handler then caps every TTL at the time
//! left, so when the zone goes away no cache holds any of its records.
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use codecs::aodns::{
    Pack, QueryTarget, SEQUENCE_TTL_SECS, SOA_EXPIRE_SECS, SOA_MINIMUM_SECS, SOA_REFRESH_SECS,
    SOA_RETRY_SECS, SOA_SERIAL, SOA_TTL_SECS, ZoneRoot,
};
use hickory_server::proto::rr::rdata::{NS, SOA, TXT};
use hickory_server::proto::rr::{Name, RData, Record};

/// Client addresses remembered per zone for the "distinct listeners" figure; beyond
/// this the count stops growing (and says so with `distinct_listeners_capped`).
const MAX_TRACKED_LISTENERS: usize = 100_000;

/// Seconds of history behind the queries-per-second figure.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// One pack as served: its number and its TXT RRs, one per frame, in index order.
#[derive(Debug)]
pub struct PackRecords {
    /// The pack's sequence number.
    pub number: u64,
    /// `seq_<n>.<root>` TXT records, one string each (aodns.md §3).
    pub records: Box<[Record]>,
}

impl PackRecords {
    /// The records of `pack` published as number `number` with `ttl`: one TXT RR per
    /// frame, each holding exactly one string, in index order (aodns.md §3, §13).
    pub fn build(root: &ZoneRoot, number: u64, pack: &Pack, ttl: u32) -> Result<Self, ZoneError> {
        let name = dns_name(&root.seq_name(number))?;
        let records = pack
            .txt_strings()
            .map(|s| {
                Record::from_rdata(name.clone(), ttl, RData::TXT(TXT::new(vec![s.to_owned()])))
            })
            .collect();
        Ok(PackRecords { number, records })
    }
}

/// The `sequence.<root>` record holding the encoded list `text` (aodns.md §5), TTL 10.
pub fn sequence_record(name: &Name, text: &str) -> Record {
    Record::from_rdata(
        name.clone(),
        SEQUENCE_TTL_SECS,
        RData::TXT(TXT::new(vec![text.to_owned()])),
    )
}

/// Everything a zone serves at one moment. Immutable once published.
#[derive(Debug, Default)]
pub struct ZoneSnapshot {
    /// The `sequence` TXT record; `None` only in a zone not yet served (a broadcast
    /// publishes a pack of silence first: an empty list would crash clients, and a
    /// missing `sequence` makes them spin).
    pub sequence: Option<Record>,
    /// Numbers listed in `sequence`, oldest and newest.
    pub listed: Option<(u64, u64)>,
    /// Packs served: the listed ones and those delisted a short while ago, so a client
    /// working from a `sequence` it fetched a few seconds earlier still gets them.
    pub packs: BTreeMap<u64, Arc<PackRecords>>,
}

impl ZoneSnapshot {
    /// The TXT RRs of `seq_<n>`, if served.
    pub fn pack(&self, n: u64) -> Option<&[Record]> {
        self.packs.get(&n).map(|p| &p.records[..])
    }
}

/// Query counters of one zone.
#[derive(Debug, Default)]
pub struct ZoneCounters {
    /// Queries for names in the zone (answered or not).
    pub queries: AtomicU64,
    /// Answered with records.
    pub answers: AtomicU64,
    /// Answered NOERROR without records (NODATA; aodns.md §13: never NXDOMAIN).
    pub nodata: AtomicU64,
    /// Replies too large for the client's UDP size, sent truncated (TC) and empty.
    pub truncated: AtomicU64,
    /// Queries over TCP.
    pub tcp: AtomicU64,
    /// Queries dropped or refused by the per-address rate limit.
    pub rate_limited: AtomicU64,
}

/// A zone served by the DNS server: one broadcast's records.
#[derive(Debug)]
pub struct Zone {
    root: ZoneRoot,
    origin: Name,
    /// The SOA, then the NS record: the apex's records, in that order.
    apex: [Record; 2],
    snapshot: RwLock<Arc<ZoneSnapshot>>,
    /// Origin of the millisecond clocks below.
    epoch: Instant,
    /// When the last TTL handed out expires, in ms since `epoch`.
    handed_out_until_ms: AtomicU64,
    /// While retiring: when the zone stops being served, in ms since `epoch`
    /// ([`NOT_RETIRING`] otherwise).
    retire_at_ms: AtomicU64,
    /// Query counters.
    pub counters: ZoneCounters,
    listeners: Mutex<HashSet<IpAddr>>,
    rate: Mutex<VecDeque<(Instant, u64)>>,
}

/// `retire_at_ms` of a zone that is not retiring.
const NOT_RETIRING: u64 = u64::MAX;

/// Why a zone could not be built or registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneError {
    /// hickory refused a name we built (cannot happen for a valid [`ZoneRoot`]).
    #[error("invalid DNS name {name}: {reason}")]
    Name {
        /// The name.
        name: String,
        /// hickory's reason.
        reason: String,
    },
    /// Another broadcast already serves this zone.
    #[error("a broadcast already serves {root}")]
    Exists {
        /// The zone.
        root: String,
    },
}

/// Parses a name we built ourselves into hickory's form.
pub fn dns_name(text: &str) -> Result<Name, ZoneError> {
    Name::from_ascii(text).map_err(|e| ZoneError::Name {
        name: text.to_owned(),
        reason: e.to_string(),
    })
}

impl Zone {
    /// An empty zone for `root` whose name server is `nameserver`: its NS record, and
    /// its SOA (aodns.md §2: serial 201307231, timers `3600 10800 86400 3600`, TTL
    /// 60, RNAME the root label as in the reference; MNAME the name server, where the
    /// reference puts the root label, so that SOA and NS agree).
    pub fn new(root: ZoneRoot, nameserver: &Name) -> Result<Zone, ZoneError> {
        let origin = dns_name(root.as_str())?;
        let soa = Record::from_rdata(
            origin.clone(),
            SOA_TTL_SECS,
            RData::SOA(SOA::new(
                nameserver.clone(),
                Name::root(),
                SOA_SERIAL,
                // The reference's timers are small constants: they fit an i32.
                i32::try_from(SOA_REFRESH_SECS).unwrap_or(i32::MAX),
                i32::try_from(SOA_RETRY_SECS).unwrap_or(i32::MAX),
                i32::try_from(SOA_EXPIRE_SECS).unwrap_or(i32::MAX),
                SOA_MINIMUM_SECS,
            )),
        );
        let ns = Record::from_rdata(
            origin.clone(),
            SOA_TTL_SECS,
            RData::NS(NS(nameserver.clone())),
        );
        Ok(Zone {
            root,
            origin,
            apex: [soa, ns],
            snapshot: RwLock::new(Arc::new(ZoneSnapshot::default())),
            epoch: Instant::now(),
            handed_out_until_ms: AtomicU64::new(0),
            retire_at_ms: AtomicU64::new(NOT_RETIRING),
            counters: ZoneCounters::default(),
            listeners: Mutex::new(HashSet::new()),
            rate: Mutex::new(VecDeque::new()),
        })
    }

    /// The zone root.
    pub fn root(&self) -> &ZoneRoot {
        &self.root
    }

    /// The zone root as a hickory name.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The zone's SOA record.
    pub fn soa(&self) -> &Record {
        &self.apex[0]
    }

    /// The zone's NS record.
    pub fn ns(&self) -> &Record {
        &self.apex[1]
    }

    /// The SOA and the NS record (what `ANY` at the apex gets).
    pub fn apex_records(&self) -> &[Record] {
        &self.apex
    }

    fn millis_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn instant_at(&self, millis: u64) -> Instant {
        self.epoch + Duration::from_millis(millis)
    }

    /// Remembers that an answer sent at `now` carried a record with `ttl` seconds.
    pub fn note_ttl_handed_out(&self, now: Instant, ttl: u32) {
        // Rounded up: the moment remembered is never before the real expiry.
        let since_epoch = now.saturating_duration_since(self.epoch).as_nanos();
        let until = u64::try_from(since_epoch.div_ceil(1_000_000))
            .unwrap_or(u64::MAX)
            .saturating_add(u64::from(ttl) * 1000);
        self.handed_out_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// When every TTL handed out so far has expired.
    pub fn handed_out_until(&self) -> Instant {
        self.instant_at(self.handed_out_until_ms.load(Ordering::Relaxed))
    }

    /// From now on the zone is served only until `until`; answers carry TTLs that
    /// expire by then.
    pub fn retire(&self, until: Instant) {
        let at = self.millis_since_epoch(until).min(NOT_RETIRING - 1);
        self.retire_at_ms.store(at, Ordering::Relaxed);
    }

    /// The zone is served again without an end (a new broadcast took it over).
    pub fn reinstate(&self) {
        self.retire_at_ms.store(NOT_RETIRING, Ordering::Relaxed);
    }

    /// When a retiring zone stops being served.
    pub fn retiring_until(&self) -> Option<Instant> {
        match self.retire_at_ms.load(Ordering::Relaxed) {
            NOT_RETIRING => None,
            at => Some(self.instant_at(at)),
        }
    }

    /// The longest TTL an answer sent at `now` may carry: none for a zone in service;
    /// for a retiring one, the whole seconds left until it stops being served.
    pub fn ttl_cap(&self, now: Instant) -> Option<u32> {
        self.retiring_until().map(|until| {
            u32::try_from(until.saturating_duration_since(now).as_secs()).unwrap_or(u32::MAX)
        })
    }

    /// What the zone serves right now.
    pub fn snapshot(&self) -> Arc<ZoneSnapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces everything the zone serves at once.
    pub fn publish(&self, snapshot: ZoneSnapshot) {
        let snapshot = Arc::new(snapshot);
        let old = std::mem::replace(
            &mut *self
                .snapshot
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            snapshot,
        );
        // The old snapshot is freed here, outside the lock (or by the last query using it).
        drop(old);
    }

    /// Remembers a client address for the distinct-listeners figure.
    pub fn note_client(&self, ip: IpAddr) {
        let mut listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if listeners.len() < MAX_TRACKED_LISTENERS {
            listeners.insert(ip);
        }
    }

    /// Distinct client addresses seen (at most [`MAX_TRACKED_LISTENERS`]), and whether
    /// the count has reached that cap.
    pub fn distinct_listeners(&self) -> (usize, bool) {
        let count = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        (count, count >= MAX_TRACKED_LISTENERS)
    }

    /// Records the query total at `now` (the server calls this every second).
    pub fn sample_rate(&self, now: Instant) {
        let total = self.counters.queries.load(Ordering::Relaxed);
        let mut samples = self.rate.lock().unwrap_or_else(PoisonError::into_inner);
        samples.push_back((now, total));
        while samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            samples.pop_front();
        }
    }

    /// Queries per second over the last few seconds.
    pub fn queries_per_second(&self) -> f64 {
        let samples = self.rate.lock().unwrap_or_else(PoisonError::into_inner);
        match (samples.front(), samples.back()) {
            (Some((t0, q0)), Some((t1, q1))) if t1 > t0 => {
                q1.saturating_sub(*q0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// Every zone the server answers for. Lookups walk the (few) zones and take the most
/// specific one containing the name, so `a.b` and `x.a.b` can be separate broadcasts.
#[derive(Debug, Default)]
pub struct Zones {
    zones: RwLock<Vec<Arc<Zone>>>,
}

impl Zones {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a zone; fails if one with the same root exists.
    pub fn insert(&self, zone: Arc<Zone>) -> Result<(), ZoneError> {
        let mut zones = self.zones.write().unwrap_or_else(PoisonError::into_inner);
        if zones.iter().any(|z| z.root == zone.root) {
            return Err(ZoneError::Exists {
                root: zone.root.to_string(),
            });
        }
        zones.push(zone);
        Ok(())
    }

    /// Whether a zone with this root is registered.
    pub fn contains(&self, root: &ZoneRoot) -> bool {
        self.zones
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|z| &z.root == root)
    }

    /// Removes the zone `zone` (the very object, not just one with the same root).
    pub fn remove(&self, zone: &Arc<Zone>) {
        self.zones
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|z| !Arc::ptr_eq(z, zone));
    }

    /// Every zone.
    pub fn all(&self) -> Vec<Arc<Zone>> {
        self.zones
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The most specific zone containing the name given as wire labels (left to right,
    /// without the root label), with what the name designates in it.
    pub fn find<L: AsRef<[u8]>>(&self, labels: &[L]) -> Option<(Arc<Zone>, QueryTarget)> {
        let zones = self.zones.read().unwrap_or_else(PoisonError::into_inner);
        zones
            .iter()
            .filter_map(|zone| match zone.root.classify_labels(labels) {
                QueryTarget::OutOfZone => None,
                target => Some((zone, target)),
            })
            .max_by_key(|(zone, _)| zone.root.label_count())
            .map(|(zone, target)| (Arc::clone(zone), target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(root: &str) -> Arc<Zone> {
        let nameserver = Name::from_ascii("ns1.example.net.").unwrap();
        Arc::new(Zone::new(ZoneRoot::parse(root).unwrap(), &nameserver).unwrap())
    }

    #[test]
    fn finds_the_most_specific_zone() {
        let zones = Zones::new();
        let outer = zone("example.com");
        let inner = zone("music.example.com");
        zones.insert(Arc::clone(&outer)).unwrap();
        zones.insert(Arc::clone(&inner)).unwrap();
        assert!(matches!(
            zones.insert(zone("Example.COM.")),
            Err(ZoneError::Exists { .. })
        ));
        let (z, target) = zones.find(&["seq_3", "music", "example", "com"]).unwrap();
        assert!(Arc::ptr_eq(&z, &inner));
        assert_eq!(target, QueryTarget::Seq(3));
        let (z, target) = zones.find(&["music", "example", "com"]).unwrap();
        assert!(Arc::ptr_eq(&z, &inner));
        assert_eq!(target, QueryTarget::Apex);
        let (z, target) = zones.find(&["sequence", "example", "com"]).unwrap();
        assert!(Arc::ptr_eq(&z, &outer));
        assert_eq!(target, QueryTarget::Sequence);
        assert!(zones.find(&["example", "org"]).is_none());
        zones.remove(&inner);
        let (z, target) = zones.find(&["seq_3", "music", "example", "com"]).unwrap();
        assert!(Arc::ptr_eq(&z, &outer));
        assert_eq!(target, QueryTarget::OtherInZone);
    }

    #[test]
    fn snapshots_swap_whole() {
        let z = zone("a.b");
        let before = z.snapshot();
        assert!(before.sequence.is_none() && before.packs.is_empty());
        let mut packs = BTreeMap::new();
        packs.insert(
            4,
            Arc::new(PackRecords {
                number: 4,
                records: Box::new([]),
            }),
        );
        z.publish(ZoneSnapshot {
            sequence: None,
            listed: Some((4, 4)),
            packs,
        });
        // A reader holding the old snapshot keeps it intact.
        assert!(before.packs.is_empty());
        assert_eq!(z.snapshot().listed, Some((4, 4)));
        assert!(z.snapshot().pack(4).is_some());
    }

    #[test]
    fn counts_distinct_listeners_and_query_rate() {
        let z = zone("a.b");
        for last in [1, 2, 2, 3] {
            z.note_client(IpAddr::from([127, 0, 0, last]));
        }
        assert_eq!(z.distinct_listeners(), (3, false));
        let t0 = Instant::now();
        z.sample_rate(t0);
        z.counters.queries.store(300, Ordering::Relaxed);
        z.sample_rate(t0 + Duration::from_secs(2));
        assert!((z.queries_per_second() - 150.0).abs() < 1e-9);
        // Old samples fall out of the window.
        z.sample_rate(t0 + Duration::from_secs(9));
        assert!((z.queries_per_second() - 0.0).abs() < 1e-9);
    }

    #[test]
    fn apex_has_an_ns_record_that_the_soa_agrees_with() {
        let z = zone("Music.Example.com");
        let RData::NS(ns) = &z.ns().data else {
            panic!("not NS: {:?}", z.ns())
        };
        assert_eq!(ns.0, Name::from_ascii("ns1.example.net.").unwrap());
        assert_eq!(z.ns().name, Name::from_ascii("music.example.com.").unwrap());
        let RData::SOA(soa) = &z.soa().data else {
            panic!("not SOA")
        };
        assert_eq!(soa.mname, ns.0, "MNAME is the zone's name server");
        assert_eq!(soa.serial, SOA_SERIAL);
        assert_eq!(z.soa().name, z.ns().name);
        assert_eq!(z.apex_records().len(), 2);
    }

    #[test]
    fn a_retiring_zone_caps_ttls_at_the_time_left_and_remembers_ttls_handed_out() {
        let z = zone("a.b");
        let t0 = Instant::now();
        assert_eq!(z.ttl_cap(t0), None, "in service: no cap");
        assert!(z.handed_out_until() <= t0);
        z.note_ttl_handed_out(t0 + Duration::from_secs(3), 60);
        z.note_ttl_handed_out(t0 + Duration::from_secs(4), 10);
        let until = z.handed_out_until();
        assert!(
            until >= t0 + Duration::from_secs(63) && until <= t0 + Duration::from_millis(63_100)
        );
        z.retire(t0 + Duration::from_secs(30));
        assert_eq!(z.ttl_cap(t0 + Duration::from_millis(500)), Some(29));
        assert_eq!(z.ttl_cap(t0 + Duration::from_millis(28_500)), Some(1));
        assert_eq!(z.ttl_cap(t0 + Duration::from_secs(31)), Some(0));
        z.reinstate();
        assert_eq!(z.ttl_cap(t0 + Duration::from_secs(31)), None);
    }
}
