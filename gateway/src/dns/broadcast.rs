//! The `dns` node: an AoDNS broadcast of whatever is patched into its input.
//!
//! ```text
//! engine thread                     encoder thread (one per broadcast)            DNS server
//! DnsInputNode::consume ─ring─►  48 kHz → 8/12/16 kHz (StreamResampler) → Opus 60 ms →
//!  (copies the block, nothing     PackBuilder (`%03d'''<base91>`, 2000-byte packs)
//!   else)                         → on each closed pack: number from the ledger,
//!                                   TXT RRs, `sequence` list, new ZoneSnapshot ──► Zone
//! ```
//!
//! The engine side only copies its input block into a lock-free ring (no encoding,
//! no allocation; a full ring drops the block and counts it). The encoder thread does
//! all the work and, for each closed pack, publishes a complete new snapshot of the
//! zone (aodns.md §3, §5-§7):
//!
//! - the newest `window` packs are listed in `sequence` (shortened from the oldest end
//!   if the list would exceed 255 characters; never empty, never published before the
//!   first pack);
//! - packs that leave the list stay served for [`DELISTED_RETENTION`], so a client
//!   working from a `sequence` it fetched a little earlier (the reference client reuses
//!   one for 4 s; its TTL is 10 s) still finds them;
//! - `seq_<n>` TTLs follow the configured rule ([`TtlRule`]).
//!
//! Silence: by default digital silence is broadcast like any audio (a listener keeps
//! hearing the stream, never stalls). With `silence = "pause"`, after `pause_after_ms`
//! of digital silence the open pack is published and no packs are made until sound
//! returns; the last window stays served. A pack of nothing but silence is not
//! published on pausing.
//!
//! Lifecycle (a listener's client crashes on REFUSED, NXDOMAIN or SERVFAIL for its
//! zone and loops without pause on NODATA for `sequence`, aodns.md §10):
//!
//! - start (creation, restart, on demand): before the zone is served, one pack of
//!   encoded digital silence (76 frames, 4.56 s, as the reference packs silence) is
//!   published, so `sequence` has an answer from the first query;
//! - delete: the zone stays served for a grace period ([`grace_deadline`]): the open
//!   pack is published, then the broadcast goes on with silence; answers carry TTLs
//!   cut to the time left; when every TTL handed out has expired and listeners had time
//!   to play the last window, the zone is removed;
//! - a broadcast created on the same domain during the grace period (a `PUT` of the
//!   node is a delete and a create) takes over the zone, its window and its numbering:
//!   `sequence` never changes to NODATA and the window is never emptied.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use api::control::{DnsSilence, DnsTtl, NodeConfig};
use api::model::NodeRef;
use codecs::aodns::{
    Pack, PackBuilder, PackLimits, Pushed, SEQUENCE_TTL_SECS, SequenceListEncoder, TtlRule,
    ZoneRoot, seq_ttl,
};
use codecs::opus::{
    AodnsOpusEncoder, Channels, OpusEncoderConfig, OpusError, OpusFormat, OpusRate,
};
use codecs::rate::SampleRate;
use codecs::resample::{Quality, ResampleError, StreamResampler};
use hickory_server::proto::rr::Name;

use super::ledger::{SequenceLedger, SequenceStore};
use super::retiring::{Command, EncoderControl, Handover, RetiringBroadcast};
use super::server::{DnsServer, DnsServerError};
use super::zone::{PackRecords, Zone, ZoneError, ZoneSnapshot, Zones, dns_name, sequence_record};
use crate::engine::{BUS_RATE, Node};
use crate::node_service::{MetricFamilies, MetricKind, NodeService};
use crate::threads::{OwnedThread, Priority};

/// How long a pack stays served after it leaves the `sequence` list: the `sequence`
/// TTL plus the reference client's 4 s reuse and some slack.
pub const DELISTED_RETENTION: Duration = Duration::from_secs(SEQUENCE_TTL_SECS as u64 + 5);
/// At most this many delisted packs are kept (bounds memory for very short packs).
const MAX_DELISTED: usize = 255;
/// Seconds of 48 kHz input the ring holds before the engine must drop blocks.
const RING_SECONDS: usize = 2;
/// Input the encoder thread takes per step: 20 ms at 48 kHz (per channel).
const CHUNK_FRAMES: usize = 960;
/// How long the encoder thread sleeps when the ring holds less than a chunk.
const IDLE_WAIT: Duration = Duration::from_millis(10);
/// A frame whose peak stays below one 16-bit step is digital silence.
const SILENCE_PEAK: f32 = 1.0 / 32_768.0;
/// Opus frame duration (aodns.md §8).
const FRAME: Duration = Duration::from_millis(60);
/// Input duration of one chunk.
const CHUNK: Duration = Duration::from_millis(20);

/// When a deleted broadcast's zone stops being served, deleted at `now`: once every TTL
/// handed out has expired (`handed_out_until`; answers meanwhile carry TTLs cut to the
/// time left, so none outlives it), and not before listeners had time to learn of and
/// play the last window (`listed_audio`, plus the time a delisted pack stays served).
pub fn grace_deadline(now: Instant, handed_out_until: Instant, listed_audio: Duration) -> Instant {
    handed_out_until.max(now + listed_audio + DELISTED_RETENTION)
}

/// A broadcast's settings, validated from its [`NodeConfig::Dns`].
#[derive(Debug, Clone)]
pub struct BroadcastSettings {
    /// The zone.
    pub root: ZoneRoot,
    /// Packs listed in `sequence`.
    pub window: usize,
    /// Opus settings.
    pub opus: OpusEncoderConfig,
    /// Silence handling.
    pub silence: DnsSilence,
    /// Digital silence this long pauses a `pause` broadcast.
    pub pause_after: Duration,
    /// `seq_<n>` TTL rule.
    pub ttl: TtlRule,
}

impl BroadcastSettings {
    /// Builds the settings of a `dns` node; `Err((field, why))` for a bad value.
    pub fn from_config(config: &NodeConfig) -> Result<Self, (&'static str, String)> {
        let NodeConfig::Dns {
            domain,
            window,
            sample_rate,
            channels,
            bitrate_bps,
            silence,
            pause_after_ms,
            ttl,
        } = config
        else {
            return Err(("kind", "not a dns node".into()));
        };
        config.validate()?;
        let root = ZoneRoot::parse(domain).map_err(|e| ("domain", e.to_string()))?;
        let rate = OpusRate::try_from(*sample_rate).map_err(|e| ("sample_rate", e.to_string()))?;
        let channels = match channels {
            1 => Channels::Mono,
            2 => Channels::Stereo,
            other => return Err(("channels", format!("{other} must be 1 or 2"))),
        };
        let opus = OpusEncoderConfig {
            format: OpusFormat { rate, channels },
            bitrate_bps: *bitrate_bps,
            ..OpusEncoderConfig::default()
        };
        // Rejects what the encoder would (nothing validate() lets through, today).
        AodnsOpusEncoder::new(opus).map_err(|e| ("bitrate_bps", e.to_string()))?;
        Ok(BroadcastSettings {
            root,
            window: usize::from(*window),
            opus,
            silence: *silence,
            pause_after: Duration::from_millis(u64::from(*pause_after_ms)),
            ttl: match ttl {
                DnsTtl::Reference => TtlRule::Reference,
                DnsTtl::Accurate => TtlRule::AccurateDuration,
            },
        })
    }

    /// The node's input ports: `in`, or `in1`, `in2` in stereo.
    pub fn inputs(&self) -> Vec<String> {
        match self.opus.format.channels {
            Channels::Mono => vec!["in".into()],
            Channels::Stereo => vec!["in1".into(), "in2".into()],
        }
    }

    fn channels(&self) -> usize {
        self.opus.format.channels.count()
    }
}

/// Why a broadcast could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BroadcastError {
    /// The DNS server could not start.
    #[error(transparent)]
    Server(#[from] DnsServerError),
    /// The zone could not be built or is served already.
    #[error(transparent)]
    Zone(#[from] ZoneError),
    /// The first block of sequence numbers could not be reserved.
    #[error("cannot reserve sequence numbers for {domain}: {reason}")]
    Sequence {
        /// The zone.
        domain: String,
        /// Why.
        reason: super::ledger::SequenceError,
    },
    /// The Opus encoder refused the settings.
    #[error(transparent)]
    Opus(#[from] OpusError),
    /// The resampler could not be built.
    #[error(transparent)]
    Resample(#[from] ResampleError),
    /// The encoder thread could not be spawned.
    #[error("cannot start the encoder thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Counters and state shared by the engine node, the encoder thread and the API.
#[derive(Debug, Default)]
pub struct BroadcastStats {
    /// Engine blocks dropped because the encoder thread fell behind.
    pub input_overruns: AtomicU64,
    /// 60 ms frames encoded.
    pub frames_encoded: AtomicU64,
    /// Frames lost to an encoder error (never observed).
    pub encode_errors: AtomicU64,
    /// Packs published.
    pub packs_published: AtomicU64,
    /// Newest listed number + 1 (0: nothing published yet).
    pub newest_plus_one: AtomicU64,
    /// Oldest listed number.
    pub oldest_listed: AtomicU64,
    /// Frames in the newest pack.
    pub last_pack_frames: AtomicU64,
    /// 1 while paused on silence.
    pub paused: AtomicBool,
    /// The next number the ledger hands out.
    pub next_sequence: AtomicU64,
    /// End of the numbers reserved in the database.
    pub reserved_until: AtomicU64,
    /// Numbers used beyond any reservation (database unreachable).
    pub unreserved: AtomicU64,
}

/// The engine half: copies each block into the encoder's ring.
struct DnsInputNode {
    producer: rtrb::Producer<f32>,
    channels: usize,
    stats: Arc<BroadcastStats>,
}

impl Node for DnsInputNode {
    fn produce(&mut self, _outputs: &mut [f32], _block: usize) {}

    fn consume(&mut self, inputs: &[f32], block: usize) {
        let n = block * self.channels;
        let pushed = if self.channels == 1 {
            self.producer.push_entire_slice(&inputs[..block]).is_ok()
        } else {
            match self.producer.write_chunk_uninit(n) {
                Ok(chunk) => {
                    let channels = self.channels;
                    // Interleave: frame i, channel c is port c's sample i.
                    chunk.fill_from_iter(
                        (0..n).map(|k| inputs[(k % channels) * block + k / channels]),
                    );
                    true
                }
                Err(_) => false,
            }
        };
        if !pushed {
            self.stats.input_overruns.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts a broadcast: takes over the zone of a deleted broadcast of the same domain
/// still in its grace period, or builds the zone, reserves its first sequence numbers
/// and publishes a pack of silence; then registers the zone with the DNS server
/// (starting the server if needed) and spawns the encoder thread. Returns the engine
/// node and the service to register with the gateway. Blocking.
pub fn start(
    node: &NodeRef,
    settings: BroadcastSettings,
    server: &Arc<DnsServer>,
    store: Option<Arc<dyn SequenceStore>>,
) -> Result<(Box<dyn Node>, Arc<BroadcastService>), BroadcastError> {
    let opus = AodnsOpusEncoder::new(settings.opus)?;
    let bitrate_bps = opus.bitrate_bps();
    let out_rate = SampleRate::new(settings.opus.format.rate.hz()).map_err(|_| {
        OpusError::UnsupportedRate {
            hz: settings.opus.format.rate.hz(),
        }
    })?;
    let resamplers = (0..settings.channels())
        .map(|_| StreamResampler::new(BUS_RATE, out_rate, Quality::Voice))
        .collect::<Result<Vec<_>, _>>()?;
    let zones = Arc::clone(server.zones());
    let previous = server
        .take_retiring(&settings.root)
        .and_then(RetiringBroadcast::take_over);
    let taken_over = previous.is_some();
    let (zone, ledger, history) = match previous {
        Some(handover) => (
            handover.zone,
            handover.ledger,
            Some((handover.listed, handover.delisted)),
        ),
        None => {
            if zones.contains(&settings.root) {
                return Err(ZoneError::Exists {
                    root: settings.root.to_string(),
                }
                .into());
            }
            let zone = Arc::new(Zone::new(settings.root.clone(), server.nameserver())?);
            let ledger = SequenceLedger::open(settings.root.as_str(), store).map_err(|reason| {
                BroadcastError::Sequence {
                    domain: settings.root.to_string(),
                    reason,
                }
            })?;
            (zone, ledger, None)
        }
    };
    let stats = Arc::new(BroadcastStats::default());
    let channels = settings.channels();
    let capacity = BUS_RATE.hz() as usize * RING_SECONDS * channels;
    let (producer, consumer) = rtrb::RingBuffer::new(capacity);
    let mut encoder = Encoder::new(
        consumer,
        settings.clone(),
        opus,
        resamplers,
        ledger,
        ServedZone {
            zone: Arc::clone(&zone),
            zones: Arc::clone(&zones),
        },
        Arc::clone(&stats),
    );
    if let Some((listed, delisted)) = history {
        encoder.resume(listed, delisted);
        zone.reinstate();
    } else {
        // `sequence` answers from the first query (NODATA makes clients spin).
        encoder.publish_silence_pack(Instant::now());
        zones.insert(Arc::clone(&zone))?;
    }
    let dns_addr = match server.ensure_started() {
        Ok(addr) => addr,
        Err(e) => {
            zones.remove(&zone);
            return Err(e.into());
        }
    };
    let control = Arc::new(EncoderControl::default());
    let thread = {
        let (control, wake) = (Arc::clone(&control), Arc::clone(&control));
        // The encoder ends on its own commands; an owner that drops it unstopped ends it
        // now, grace period or not.
        OwnedThread::spawn(
            format!("aodns-{}", node.name()),
            Priority::Normal,
            move |_| encoder.run(&control),
        )
        .map_err(|e| {
            zones.remove(&zone);
            BroadcastError::Thread(e)
        })?
        .with_wake(move || wake.set(Command::Stop))
    };
    tracing::info!(node = %node, domain = %settings.root, dns = %dns_addr, window = settings.window, taken_over, "AoDNS broadcast started");
    let service = Arc::new(BroadcastService {
        settings,
        bitrate_bps,
        dns_addr,
        zone,
        server: Arc::clone(server),
        stats: Arc::clone(&stats),
        control,
        thread: Mutex::new(Some(thread)),
    });
    let node = DnsInputNode {
        producer,
        channels,
        stats,
    };
    Ok((Box::new(node), service))
}

/// The encoder thread's state. See the module documentation.
struct Encoder {
    consumer: rtrb::Consumer<f32>,
    settings: BroadcastSettings,
    channels: usize,
    /// One 20 ms chunk as read from the ring (interleaved).
    chunk: Vec<f32>,
    /// The chunk split per channel, and resampled per channel.
    split: Vec<Vec<f32>>,
    resampled: Vec<Vec<f32>>,
    resamplers: Vec<StreamResampler>,
    /// Interleaved samples at the Opus rate waiting to fill a frame.
    frame: Vec<f32>,
    frame_len: usize,
    opus: AodnsOpusEncoder,
    packet: [u8; 256],
    builder: PackBuilder,
    closed: Pack,
    ledger: SequenceLedger,
    sequence_list: SequenceListEncoder,
    sequence_name: Option<Name>,
    listed: VecDeque<Arc<PackRecords>>,
    delisted: VecDeque<(Instant, Arc<PackRecords>)>,
    silent_for: Duration,
    paused: bool,
    /// The open pack holds a frame that is not digital silence.
    open_has_sound: bool,
    zone: Arc<Zone>,
    zones: Arc<Zones>,
    stats: Arc<BroadcastStats>,
}

/// The zone an encoder publishes into, and the registry it leaves when it ends.
struct ServedZone {
    zone: Arc<Zone>,
    zones: Arc<Zones>,
}

/// A deleted broadcast's grace period, as its encoder thread runs it.
#[derive(Debug, Clone, Copy)]
struct Grace {
    /// The zone is served until then.
    until: Instant,
    /// When the next chunk of silence is due.
    next_chunk: Instant,
}

impl Encoder {
    fn new(
        consumer: rtrb::Consumer<f32>,
        settings: BroadcastSettings,
        opus: AodnsOpusEncoder,
        resamplers: Vec<StreamResampler>,
        ledger: SequenceLedger,
        served: ServedZone,
        stats: Arc<BroadcastStats>,
    ) -> Encoder {
        let ServedZone { zone, zones } = served;
        let channels = settings.channels();
        let out_len = resamplers
            .first()
            .map_or(CHUNK_FRAMES, |r| r.max_output_len(CHUNK_FRAMES));
        let frame_len = settings.opus.format.frame_len();
        let sequence_name = dns_name(&settings.root.sequence_name()).ok();
        let encoder = Encoder {
            consumer,
            channels,
            chunk: vec![0.0; CHUNK_FRAMES * channels],
            split: vec![vec![0.0; CHUNK_FRAMES]; channels],
            resampled: vec![vec![0.0; out_len]; channels],
            resamplers,
            frame: Vec::with_capacity(frame_len + out_len * channels),
            frame_len,
            opus,
            packet: [0; 256],
            builder: PackBuilder::new(PackLimits::REFERENCE),
            closed: Pack::with_capacity(PackLimits::REFERENCE),
            ledger,
            sequence_list: SequenceListEncoder::new(),
            sequence_name,
            listed: VecDeque::with_capacity(settings.window + 1),
            delisted: VecDeque::new(),
            silent_for: Duration::ZERO,
            paused: false,
            open_has_sound: false,
            zone,
            zones,
            stats,
            settings,
        };
        encoder.note_ledger();
        encoder
    }

    fn run(mut self, control: &EncoderControl) -> Option<Handover> {
        let mut grace = None;
        loop {
            match control.get() {
                Command::Run => {}
                Command::Retire => {
                    if grace.is_none() {
                        grace = Some(self.begin_grace(Instant::now()));
                    }
                }
                Command::HandOver => return Some(self.hand_over(Instant::now())),
                Command::Stop => break,
            }
            if let Some(grace) = &mut grace {
                match self.grace_step(grace, Instant::now()) {
                    Some(wait) => std::thread::park_timeout(wait),
                    None => break,
                }
                continue;
            }
            if self.consumer.slots() < self.chunk.len() {
                std::thread::park_timeout(IDLE_WAIT);
                continue;
            }
            if self.consumer.pop_entire_slice(&mut self.chunk).is_err() {
                continue;
            }
            self.process_chunk();
        }
        self.zones.remove(&self.zone);
        tracing::info!(domain = %self.settings.root, "AoDNS zone no longer served");
        None
    }

    /// Continues the window and numbering of a deleted broadcast of the same zone.
    fn resume(
        &mut self,
        listed: VecDeque<Arc<PackRecords>>,
        delisted: VecDeque<(Instant, Arc<PackRecords>)>,
    ) {
        if let (Some(first), Some(last)) = (listed.front(), listed.back()) {
            self.stats
                .oldest_listed
                .store(first.number, Ordering::Relaxed);
            self.stats
                .newest_plus_one
                .store(last.number + 1, Ordering::Relaxed);
            if let Ok(frames) = last.records.len().try_into() {
                self.stats.last_pack_frames.store(frames, Ordering::Relaxed);
            }
        }
        self.listed = listed;
        self.delisted = delisted;
        self.note_ledger();
    }

    /// Encodes digital silence into one full pack and publishes it (at start, so that
    /// `sequence` answers at once). Its last frame opens the next pack.
    fn publish_silence_pack(&mut self, now: Instant) {
        self.frame.clear();
        self.frame.resize(self.frame_len, 0.0);
        for _ in 0..=codecs::aodns::MAX_FRAMES_PER_PACK {
            let len = match self
                .opus
                .encode_f32(&self.frame[..self.frame_len], &mut self.packet)
            {
                Ok(len) => len,
                Err(_) => break,
            };
            self.stats.frames_encoded.fetch_add(1, Ordering::Relaxed);
            match self.builder.push(&self.packet[..len], &mut self.closed) {
                Ok(Pushed::Appended) => {}
                Ok(Pushed::ClosedPrevious) => {
                    self.publish(now);
                    break;
                }
                Err(_) => break,
            }
        }
        self.frame.clear();
        if self.stats.packs_published.load(Ordering::Relaxed) == 0 {
            self.stats.encode_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Encodes what the engine delivered before the node went and publishes the open
    /// pack if it holds sound: listeners hear the broadcast to its end.
    fn flush(&mut self, now: Instant) {
        while self.consumer.slots() >= self.chunk.len() {
            if self.consumer.pop_entire_slice(&mut self.chunk).is_err() {
                break;
            }
            self.process_chunk();
        }
        if self.open_has_sound {
            self.builder.take_open(&mut self.closed);
            self.publish(now);
            self.open_has_sound = false;
        }
    }

    /// The broadcast was deleted at `now`: flush, and serve the zone until
    /// [`grace_deadline`].
    fn begin_grace(&mut self, now: Instant) -> Grace {
        self.flush(now);
        let listed_audio = FRAME
            * u32::try_from(self.listed.iter().map(|p| p.records.len()).sum::<usize>())
                .unwrap_or(u32::MAX);
        let until = grace_deadline(now, self.zone.handed_out_until(), listed_audio);
        self.zone.retire(until);
        tracing::info!(
            domain = %self.settings.root,
            grace_s = until.saturating_duration_since(now).as_secs(),
            "AoDNS broadcast deleted; its zone stays served with silence for the grace period"
        );
        Grace {
            until,
            next_chunk: now,
        }
    }

    /// Runs the grace period up to `now`: silence in real time, as if nothing were
    /// patched. Returns how long to wait for the next step, or `None` once it is over.
    fn grace_step(&mut self, grace: &mut Grace, now: Instant) -> Option<Duration> {
        if now >= grace.until {
            return None;
        }
        while grace.next_chunk <= now {
            self.chunk.fill(0.0);
            self.process_chunk();
            grace.next_chunk += CHUNK;
        }
        Some(grace.next_chunk.min(grace.until) - now)
    }

    /// Flushes and returns what a new broadcast of the zone continues from.
    fn hand_over(mut self, now: Instant) -> Handover {
        self.flush(now);
        Handover {
            zone: self.zone,
            ledger: self.ledger,
            listed: self.listed,
            delisted: self.delisted,
        }
    }

    fn note_ledger(&self) {
        let s = &self.stats;
        s.next_sequence.store(self.ledger.peek(), Ordering::Relaxed);
        s.reserved_until
            .store(self.ledger.reserved_until(), Ordering::Relaxed);
        s.unreserved
            .store(self.ledger.unreserved(), Ordering::Relaxed);
    }

    /// Resamples one 20 ms chunk into the frame buffer and encodes every full frame.
    fn process_chunk(&mut self) {
        for (c, split) in self.split.iter_mut().enumerate() {
            for (i, sample) in split.iter_mut().enumerate() {
                *sample = self.chunk[i * self.channels + c];
            }
        }
        let mut produced = usize::MAX;
        for ((resampler, input), output) in self
            .resamplers
            .iter_mut()
            .zip(&self.split)
            .zip(&mut self.resampled)
        {
            // Identical resamplers fed identical lengths produce identical lengths.
            produced = produced.min(resampler.process(input, output));
        }
        for i in 0..produced {
            for c in 0..self.channels {
                self.frame.push(self.resampled[c][i]);
            }
        }
        while self.frame.len() >= self.frame_len {
            self.process_frame();
            self.frame.drain(..self.frame_len);
        }
    }

    fn process_frame(&mut self) {
        let pcm = &self.frame[..self.frame_len];
        let silent = pcm.iter().all(|s| s.abs() < SILENCE_PEAK);
        if self.settings.silence == DnsSilence::Pause {
            if silent {
                self.silent_for += FRAME;
            } else {
                self.silent_for = Duration::ZERO;
                if self.paused {
                    self.paused = false;
                    self.stats.paused.store(false, Ordering::Relaxed);
                }
            }
            if self.paused {
                return;
            }
            if self.silent_for >= self.settings.pause_after {
                // Publish what the listeners have not heard yet (unless it is nothing
                // but silence), then stop making packs.
                self.paused = true;
                self.stats.paused.store(true, Ordering::Relaxed);
                self.builder.take_open(&mut self.closed);
                if self.open_has_sound {
                    self.publish(Instant::now());
                }
                self.open_has_sound = false;
                return;
            }
        }
        let len = match self.opus.encode_f32(pcm, &mut self.packet) {
            Ok(len) => len,
            Err(_) => {
                self.stats.encode_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        self.stats.frames_encoded.fetch_add(1, Ordering::Relaxed);
        match self.builder.push(&self.packet[..len], &mut self.closed) {
            Ok(Pushed::Appended) => self.open_has_sound |= !silent,
            Ok(Pushed::ClosedPrevious) => {
                self.publish(Instant::now());
                self.open_has_sound = !silent;
            }
            // The encoder's packet ceiling makes every packet fit (codecs::opus).
            Err(_) => {
                self.stats.encode_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Publishes `self.closed` as the next pack and a new snapshot of the zone.
    fn publish(&mut self, now: Instant) {
        let n = self.ledger.take();
        let frames = self.closed.frame_count();
        let ttl = seq_ttl(
            self.settings.ttl,
            frames,
            self.settings.opus.format,
            self.settings.window,
        );
        let Ok(pack) = PackRecords::build(&self.settings.root, n, &self.closed, ttl) else {
            self.stats.encode_errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // The list must be consecutive numbers: after a jump (another gateway took
        // numbers of this domain in between), start listing afresh.
        if self.listed.back().is_some_and(|last| last.number + 1 != n) {
            while let Some(pack) = self.listed.pop_front() {
                self.delisted.push_back((now, pack));
            }
        }
        self.listed.push_back(Arc::new(pack));
        while self.listed.len() > self.settings.window {
            if let Some(pack) = self.listed.pop_front() {
                self.delisted.push_back((now, pack));
            }
        }
        let (oldest, newest) = match (self.listed.front(), self.listed.back()) {
            (Some(first), Some(last)) => (first.number, last.number),
            _ => return,
        };
        let sequence = match self.sequence_list.encode_window(oldest, newest) {
            Ok(list) => {
                // Shortened if 255 characters cannot hold the whole window.
                let kept_oldest = list.oldest;
                let record = self
                    .sequence_name
                    .as_ref()
                    .map(|name| sequence_record(name, list.text));
                while self.listed.front().is_some_and(|p| p.number < kept_oldest) {
                    if let Some(pack) = self.listed.pop_front() {
                        self.delisted.push_back((now, pack));
                    }
                }
                record
            }
            Err(_) => None,
        };
        while self.delisted.len() > MAX_DELISTED
            || self
                .delisted
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > DELISTED_RETENTION)
        {
            self.delisted.pop_front();
        }
        let mut packs = BTreeMap::new();
        for pack in self.delisted.iter().map(|(_, p)| p).chain(&self.listed) {
            packs.insert(pack.number, Arc::clone(pack));
        }
        let listed = self
            .listed
            .front()
            .zip(self.listed.back())
            .map(|(a, b)| (a.number, b.number));
        self.zone.publish(ZoneSnapshot {
            sequence,
            listed,
            packs,
        });
        let s = &self.stats;
        s.packs_published.fetch_add(1, Ordering::Relaxed);
        s.last_pack_frames.store(frames as u64, Ordering::Relaxed);
        if let Some((oldest, newest)) = listed {
            s.oldest_listed.store(oldest, Ordering::Relaxed);
            s.newest_plus_one.store(newest + 1, Ordering::Relaxed);
        }
        self.note_ledger();
    }
}

/// The broadcast's I/O side, registered with the gateway: status, metrics, stop.
pub struct BroadcastService {
    settings: BroadcastSettings,
    bitrate_bps: u32,
    dns_addr: std::net::SocketAddr,
    zone: Arc<Zone>,
    server: Arc<DnsServer>,
    stats: Arc<BroadcastStats>,
    control: Arc<EncoderControl>,
    thread: Mutex<Option<OwnedThread<Option<Handover>>>>,
}

impl BroadcastService {
    /// The zone root it serves.
    pub fn root(&self) -> &ZoneRoot {
        &self.settings.root
    }

    /// Counters.
    pub fn stats(&self) -> &BroadcastStats {
        &self.stats
    }

    /// (oldest, newest) listed, once a pack was published.
    fn listed(&self) -> Option<(u64, u64)> {
        let newest_plus_one = self.stats.newest_plus_one.load(Ordering::Relaxed);
        (newest_plus_one > 0).then(|| {
            (
                self.stats.oldest_listed.load(Ordering::Relaxed),
                newest_plus_one - 1,
            )
        })
    }

    fn pack_duration(&self) -> Duration {
        FRAME * u32::try_from(self.stats.last_pack_frames.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

impl NodeService for BroadcastService {
    fn status(&self) -> serde_json::Value {
        let s = &self.stats;
        let c = &self.zone.counters;
        let listed = self.listed();
        let (listeners, capped) = self.zone.distinct_listeners();
        let format = self.settings.opus.format;
        serde_json::json!({
            "domain": self.settings.root.as_str(),
            "dns_server": self.dns_addr.to_string(),
            "window": self.settings.window,
            "sample_rate": format.rate.hz(),
            "channels": format.channels.count(),
            "bitrate_bps": self.bitrate_bps,
            "current_sequence": listed.map(|(_, newest)| newest),
            "oldest_listed": listed.map(|(oldest, _)| oldest),
            "listed_packs": listed.map_or(0, |(oldest, newest)| newest - oldest + 1),
            "pack_duration_ms": self.pack_duration().as_millis() as u64,
            "frames_per_pack": s.last_pack_frames.load(Ordering::Relaxed),
            "packs_published": s.packs_published.load(Ordering::Relaxed),
            "frames_encoded": s.frames_encoded.load(Ordering::Relaxed),
            "paused": s.paused.load(Ordering::Relaxed),
            "next_sequence": s.next_sequence.load(Ordering::Relaxed),
            "sequence_reserved_until": s.reserved_until.load(Ordering::Relaxed),
            "sequence_unreserved": s.unreserved.load(Ordering::Relaxed),
            "queries_total": c.queries.load(Ordering::Relaxed),
            "queries_per_second": self.zone.queries_per_second(),
            "distinct_listeners": listeners,
            "distinct_listeners_capped": capped,
            "answers": c.answers.load(Ordering::Relaxed),
            "nodata": c.nodata.load(Ordering::Relaxed),
            "truncated": c.truncated.load(Ordering::Relaxed),
            "tcp_queries": c.tcp.load(Ordering::Relaxed),
            "rate_limited": c.rate_limited.load(Ordering::Relaxed),
            "input_overruns": s.input_overruns.load(Ordering::Relaxed),
            "encode_errors": s.encode_errors.load(Ordering::Relaxed),
        })
    }

    fn publish_metrics(&self, node: &NodeRef, families: &mut MetricFamilies) {
        let s = &self.stats;
        let c = &self.zone.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        if let Some((oldest, newest)) = self.listed() {
            families.sample(
                "telepatch_dns_sequence",
                MetricKind::Gauge,
                "Newest sequence number listed by an AoDNS broadcast.",
                node,
                &[],
                newest as f64,
            );
            families.sample(
                "telepatch_dns_listed_packs",
                MetricKind::Gauge,
                "Packs an AoDNS broadcast lists in its sequence record.",
                node,
                &[],
                (newest - oldest + 1) as f64,
            );
        }
        families.sample(
            "telepatch_dns_window_packs",
            MetricKind::Gauge,
            "Configured window of an AoDNS broadcast, in packs.",
            node,
            &[],
            self.settings.window as f64,
        );
        families.sample(
            "telepatch_dns_pack_duration_seconds",
            MetricKind::Gauge,
            "Audio in the newest pack of an AoDNS broadcast.",
            node,
            &[],
            self.pack_duration().as_secs_f64(),
        );
        families.sample(
            "telepatch_dns_packs_published_total",
            MetricKind::Counter,
            "Packs an AoDNS broadcast has published.",
            node,
            &[],
            load(&s.packs_published),
        );
        for (outcome, counter) in [
            ("answer", &c.answers),
            ("nodata", &c.nodata),
            ("truncated", &c.truncated),
            ("rate_limited", &c.rate_limited),
        ] {
            families.sample(
                "telepatch_dns_queries_total",
                MetricKind::Counter,
                "DNS queries for an AoDNS broadcast's zone, by outcome.",
                node,
                &[("outcome", outcome)],
                load(counter),
            );
        }
        families.sample(
            "telepatch_dns_queries_per_second",
            MetricKind::Gauge,
            "DNS queries per second for an AoDNS broadcast's zone (last 5 s).",
            node,
            &[],
            self.zone.queries_per_second(),
        );
        families.sample(
            "telepatch_dns_listeners",
            MetricKind::Gauge,
            "Distinct client addresses that queried an AoDNS broadcast's zone.",
            node,
            &[],
            self.zone.distinct_listeners().0 as f64,
        );
        families.sample(
            "telepatch_dns_input_overruns_total",
            MetricKind::Counter,
            "Engine blocks an AoDNS broadcast dropped because its encoder fell behind.",
            node,
            &[],
            load(&s.input_overruns),
        );
        families.sample(
            "telepatch_dns_encode_errors_total",
            MetricKind::Counter,
            "Frames an AoDNS broadcast lost to encoder errors.",
            node,
            &[],
            load(&s.encode_errors),
        );
    }

    fn stop(&self) {
        // The zone stays served for the grace period; the encoder thread ends it.
        self.control.set(Command::Retire);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            thread.unpark();
            self.server.add_retiring(RetiringBroadcast {
                root: self.settings.root.clone(),
                control: Arc::clone(&self.control),
                thread,
                zone: Arc::clone(&self.zone),
                zones: Arc::clone(self.server.zones()),
            });
        }
        tracing::info!(domain = %self.settings.root, "AoDNS broadcast stopped");
    }
}

#[cfg(test)]
mod tests {
    //! The encoder thread's work, driven synchronously: what reaches its ring becomes
    //! packs within the reference limits (aodns.md §3), windows of consecutive numbers
    //! listed in a `sequence` record that decodes to them (§5), delisted packs served a
    //! while longer, and silence paused on request.
    use codecs::aodns::{PackReader, SequenceListDecoder};
    use hickory_server::proto::rr::RData;

    use super::*;

    fn settings(config: serde_json::Value) -> BroadcastSettings {
        let config: NodeConfig = serde_json::from_value(config).unwrap();
        BroadcastSettings::from_config(&config).unwrap()
    }

    /// An encoder fed by hand, and the producer side of its ring.
    fn make_encoder(settings: BroadcastSettings) -> (Encoder, rtrb::Producer<f32>, Arc<Zone>) {
        let nameserver = Name::from_ascii("localhost.").unwrap();
        let zone = Arc::new(Zone::new(settings.root.clone(), &nameserver).unwrap());
        let zones = Arc::new(Zones::new());
        zones.insert(Arc::clone(&zone)).unwrap();
        let ledger = SequenceLedger::open(settings.root.as_str(), None).unwrap();
        let (encoder, producer) = encoder_on(settings, Arc::clone(&zone), zones, ledger);
        (encoder, producer, zone)
    }

    /// An encoder fed by hand serving `zone` with numbers from `ledger`.
    fn encoder_on(
        settings: BroadcastSettings,
        zone: Arc<Zone>,
        zones: Arc<Zones>,
        ledger: SequenceLedger,
    ) -> (Encoder, rtrb::Producer<f32>) {
        let opus = AodnsOpusEncoder::new(settings.opus).unwrap();
        let rate = SampleRate::new(settings.opus.format.rate.hz()).unwrap();
        let resamplers = (0..settings.channels())
            .map(|_| StreamResampler::new(BUS_RATE, rate, Quality::Voice).unwrap())
            .collect();
        let (producer, consumer) = rtrb::RingBuffer::new(48_000 * 4);
        let stats = Arc::new(BroadcastStats::default());
        let encoder = Encoder::new(
            consumer,
            settings,
            opus,
            resamplers,
            ledger,
            ServedZone { zone, zones },
            stats,
        );
        (encoder, producer)
    }

    fn tone(seconds: usize, hz: f32) -> Vec<f32> {
        (0..48_000 * seconds)
            .map(|i| 0.5 * (std::f32::consts::TAU * hz * i as f32 / 48_000.0).sin())
            .collect()
    }

    /// The numbers `sequence` lists (it must be there).
    fn listed_numbers(zone: &Zone) -> Vec<u64> {
        let snapshot = zone.snapshot();
        let Some(RData::TXT(txt)) = snapshot.sequence.as_ref().map(|r| &r.data) else {
            panic!("no sequence record")
        };
        let mut listed = Vec::new();
        SequenceListDecoder::new()
            .decode(&txt.txt_data[0], &mut listed)
            .unwrap();
        listed
    }

    /// Pushes 48 kHz samples through the encoder, a second at a time.
    fn feed(encoder: &mut Encoder, producer: &mut rtrb::Producer<f32>, samples: &[f32]) {
        for second in samples.chunks(48_000) {
            producer.push_entire_slice(second).unwrap();
            while encoder.consumer.slots() >= encoder.chunk.len() {
                encoder
                    .consumer
                    .pop_entire_slice(&mut encoder.chunk)
                    .unwrap();
                encoder.process_chunk();
            }
        }
    }

    fn noise(len: usize, mut seed: u32) -> Vec<f32> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every TXT string the zone serves, and the packs' frame counts.
    fn served(zone: &Zone) -> (Vec<Vec<u8>>, Vec<usize>) {
        let snapshot = zone.snapshot();
        let mut strings = Vec::new();
        let mut frames = Vec::new();
        for pack in snapshot.packs.values() {
            frames.push(pack.records.len());
            for record in pack.records.iter() {
                let RData::TXT(txt) = &record.data else {
                    panic!("not TXT")
                };
                assert_eq!(txt.txt_data.len(), 1, "one string per RR");
                strings.push(txt.txt_data[0].to_vec());
            }
        }
        (strings, frames)
    }

    #[test]
    fn hostile_signals_never_break_the_string_limit() {
        // What crashes the reference server (aodns.md §3): noise bursts, tone steps,
        // full-scale squares; and speech. 48 kHz on the bus, as the engine delivers.
        let rate = 48_000usize;
        let white = noise(rate * 4, 0x9e37_79b9);
        let bursts: Vec<f32> = white
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if (i / (rate / 5)).is_multiple_of(2) {
                    x
                } else {
                    0.0
                }
            })
            .collect();
        let mut phase = 0.0f32;
        let steps: Vec<f32> = (0..rate * 4)
            .map(|i| {
                let hz = 440.0 + 330.0 * ((i / (rate / 10)) % 8) as f32;
                phase = (phase + std::f32::consts::TAU * hz / rate as f32) % std::f32::consts::TAU;
                0.95 * phase.sin()
            })
            .collect();
        let square: Vec<f32> = (0..rate * 4)
            .map(|i| {
                if (i * 2900 / rate).is_multiple_of(2) {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        let speech_16k: Vec<f32> = hound::WavReader::open(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/data/speech-16k.wav"
        ))
        .unwrap()
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32_768.0)
        .collect();
        let speech = codecs::resample::resample_offline(
            &speech_16k,
            SampleRate::new(16_000).unwrap(),
            BUS_RATE,
        )
        .unwrap();
        for config in [
            serde_json::json!({"kind": "dns", "domain": "a.b", "window": 255}),
            serde_json::json!({"kind": "dns", "domain": "a.b", "window": 255, "sample_rate": 8000}),
            serde_json::json!({"kind": "dns", "domain": "a.b", "window": 255, "bitrate_bps": 64000}),
        ] {
            let (mut encoder, mut producer, zone) = make_encoder(settings(config.clone()));
            for signal in [&white, &bursts, &steps, &square, &speech] {
                feed(&mut encoder, &mut producer, signal);
            }
            let (strings, frames) = served(&zone);
            let longest = strings.iter().map(Vec::len).max().unwrap();
            println!(
                "{config}: {} packs, longest string {longest} bytes",
                frames.len()
            );
            assert!(longest <= 250, "{config}: {longest}-byte string");
            // Every frame was packed and served but those of the pack still open.
            let fed_s = (16 * 48_000 + speech.len()) as f64 / 48_000.0;
            let expected = (fed_s / 0.06) as usize;
            let served_frames: usize = frames.iter().sum();
            assert!(
                served_frames <= expected && served_frames + 80 >= expected,
                "{config}: {served_frames} of {expected} frames: {frames:?}"
            );
            assert_eq!(encoder.stats.encode_errors.load(Ordering::Relaxed), 0);
            // And every string is a frame the listener side reads back.
            let mut reader = PackReader::new();
            for s in &strings {
                reader.push_txt(s).unwrap();
            }
        }
    }

    #[test]
    fn publishes_consecutive_windows_and_keeps_delisted_packs_a_while() {
        let (mut encoder, mut producer, zone) = make_encoder(settings(
            serde_json::json!({"kind": "dns", "domain": "a.b", "window": 4}),
        ));
        let tone: Vec<f32> = (0..48_000 * 12)
            .map(|i| 0.5 * (std::f32::consts::TAU * 440.0 * i as f32 / 48_000.0).sin())
            .collect();
        feed(&mut encoder, &mut producer, &tone);
        let snapshot = zone.snapshot();
        let (oldest, newest) = snapshot.listed.unwrap();
        assert_eq!(newest - oldest + 1, 4, "the window");
        let Some(RData::TXT(txt)) = snapshot.sequence.as_ref().map(|r| &r.data) else {
            panic!("no sequence record")
        };
        let mut listed = Vec::new();
        SequenceListDecoder::new()
            .decode(&txt.txt_data[0], &mut listed)
            .unwrap();
        assert_eq!(listed, (oldest..=newest).collect::<Vec<_>>());
        // 12 s of tone is about 15 packs: all of them were published just now, so the
        // delisted ones are still served (numbers from 0, no database here).
        assert!(newest >= 10, "{newest}");
        let served: Vec<u64> = snapshot.packs.keys().copied().collect();
        assert_eq!(served, (0..=newest).collect::<Vec<_>>());
        // The TTL follows the reference rule with this window.
        let pack = snapshot.pack(newest).unwrap();
        assert_eq!(
            pack[0].ttl,
            seq_ttl(TtlRule::Reference, pack.len(), OpusFormat::default(), 4)
        );
        assert_eq!(
            encoder.stats.newest_plus_one.load(Ordering::Relaxed),
            newest + 1
        );
    }

    #[test]
    fn pause_mode_makes_no_packs_of_silence_and_flushes_the_last_sound() {
        let (mut encoder, mut producer, zone) = make_encoder(settings(serde_json::json!({
            "kind": "dns", "domain": "a.b", "silence": "pause", "pause_after_ms": 300
        })));
        feed(&mut encoder, &mut producer, &vec![0.0; 48_000 * 3]);
        assert!(encoder.stats.paused.load(Ordering::Relaxed));
        assert_eq!(encoder.stats.packs_published.load(Ordering::Relaxed), 0);
        let tone: Vec<f32> = (0..48_000 * 2)
            .map(|i| 0.5 * (std::f32::consts::TAU * 700.0 * i as f32 / 48_000.0).sin())
            .collect();
        feed(&mut encoder, &mut producer, &tone);
        assert!(!encoder.stats.paused.load(Ordering::Relaxed));
        feed(&mut encoder, &mut producer, &vec![0.0; 48_000 * 2]);
        assert!(encoder.stats.paused.load(Ordering::Relaxed));
        // 2 s of tone and 0.3 s of silence: every frame of it is served.
        let (_, frames) = served(&zone);
        let total: usize = frames.iter().sum();
        assert!(
            (2_300 / 60 - 2..=2_300 / 60 + 2).contains(&total),
            "{frames:?}"
        );
        // Continue mode, by contrast, keeps making packs of silence.
        let (mut encoder, mut producer, _) = make_encoder(settings(
            serde_json::json!({"kind": "dns", "domain": "a.b"}),
        ));
        feed(&mut encoder, &mut producer, &vec![0.0; 48_000 * 10]);
        assert_eq!(encoder.stats.packs_published.load(Ordering::Relaxed), 2);
        assert_eq!(encoder.stats.last_pack_frames.load(Ordering::Relaxed), 76);
    }

    #[test]
    fn a_new_broadcast_lists_a_pack_of_silence_before_any_input() {
        for config in [
            serde_json::json!({"kind": "dns", "domain": "a.b"}),
            serde_json::json!({"kind": "dns", "domain": "a.b", "silence": "pause"}),
        ] {
            let (mut encoder, _producer, zone) = make_encoder(settings(config.clone()));
            encoder.publish_silence_pack(Instant::now());
            assert_eq!(listed_numbers(&zone), [0], "{config}");
            let snapshot = zone.snapshot();
            let pack = snapshot.pack(0).unwrap();
            // 76 frames, 4.56 s: what the reference packs silence into (aodns.md §3.1).
            assert_eq!(pack.len(), 76, "{config}");
            assert_eq!(
                pack[0].ttl,
                seq_ttl(TtlRule::Reference, 76, OpusFormat::default(), 75)
            );
            let mut reader = PackReader::new();
            for record in pack {
                let RData::TXT(txt) = &record.data else {
                    panic!("not TXT")
                };
                reader.push_txt(&txt.txt_data[0]).unwrap();
            }
            let mut decoder = codecs::opus::AodnsOpusDecoder::new(OpusFormat::default()).unwrap();
            let mut pcm = vec![0.0f32; 960];
            let mut frames = 0;
            for (_, packet) in reader.sorted_frames() {
                assert_eq!(decoder.decode_f32(packet, &mut pcm).unwrap(), 960);
                assert!(pcm.iter().all(|s| s.abs() < 1e-3), "silence");
                frames += 1;
            }
            assert_eq!(frames, 76);
            assert_eq!(encoder.stats.packs_published.load(Ordering::Relaxed), 1);
            assert_eq!(encoder.stats.encode_errors.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn the_grace_period_outlasts_every_ttl_handed_out_and_the_last_window() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // A resolver was handed a 60 s SOA 5 s ago: until t0 + 55 s.
        assert_eq!(grace_deadline(t0, t0 + s(55), s(20)), t0 + s(55));
        // A 56 s window outlasts it: listeners play it, then the delisted margin.
        assert_eq!(
            grace_deadline(t0, t0 + s(55), s(56)),
            t0 + s(56) + DELISTED_RETENTION
        );
        // Nobody ever asked: the window and the margin.
        assert_eq!(
            grace_deadline(t0, t0, Duration::ZERO),
            t0 + DELISTED_RETENTION
        );
    }

    #[test]
    fn a_deleted_broadcast_serves_its_window_then_silence_until_its_grace_period_ends() {
        let (mut encoder, mut producer, zone) = make_encoder(settings(
            serde_json::json!({"kind": "dns", "domain": "a.b", "window": 6}),
        ));
        encoder.publish_silence_pack(Instant::now());
        feed(&mut encoder, &mut producer, &tone(5, 440.0));
        let before = listed_numbers(&zone);
        let t0 = Instant::now();
        // A listener was answered just now (SOA TTL 60 in the authority section).
        zone.note_ttl_handed_out(t0, 60);
        let mut grace = encoder.begin_grace(t0);
        assert_eq!(zone.retiring_until(), Some(grace.until));
        assert!(
            grace.until >= t0 + Duration::from_secs(60),
            "every TTL expires first"
        );
        assert!(grace.until <= t0 + Duration::from_secs(61));
        // The open pack of tone was published: listeners hear the broadcast to its end.
        let flushed = listed_numbers(&zone);
        assert_eq!(*flushed.last().unwrap(), before.last().unwrap() + 1);
        // Then silence in real time (stepped here on virtual time): `sequence` always
        // lists consecutive numbers of served packs, new packs are 76 frames of silence.
        let mut now = t0;
        let mut last = flushed.clone();
        while let Some(wait) = encoder.grace_step(&mut grace, now) {
            assert!(wait <= CHUNK, "{wait:?}");
            let listed = listed_numbers(&zone);
            assert!(listed.windows(2).all(|w| w[1] == w[0] + 1), "{listed:?}");
            assert!(listed.last() >= last.last());
            let snapshot = zone.snapshot();
            assert!(listed.iter().all(|n| snapshot.pack(*n).is_some()));
            last = listed;
            now += Duration::from_millis(500);
        }
        assert!(now >= grace.until && now < grace.until + Duration::from_millis(500));
        let silence_packs = last.last().unwrap() - flushed.last().unwrap();
        // About 61 s of silence at 4.56 s a pack.
        assert!(
            (12..=14).contains(&silence_packs),
            "{silence_packs}: {last:?}"
        );
        let snapshot = zone.snapshot();
        assert_eq!(snapshot.pack(*last.last().unwrap()).unwrap().len(), 76);
    }

    #[test]
    fn a_broadcast_created_during_the_grace_period_continues_its_window_and_numbers() {
        let (mut old, mut producer, zone) = make_encoder(settings(
            serde_json::json!({"kind": "dns", "domain": "a.b", "window": 8}),
        ));
        old.publish_silence_pack(Instant::now());
        feed(&mut old, &mut producer, &tone(4, 440.0));
        let zones = Arc::clone(&old.zones);
        let _grace = old.begin_grace(Instant::now());
        let before = listed_numbers(&zone);
        assert!(zone.retiring_until().is_some());
        let handover = old.hand_over(Instant::now());
        assert!(
            Arc::ptr_eq(&handover.zone, &zone),
            "the same zone, still registered"
        );
        // The successor, with a smaller window (a PUT may change it).
        let (mut new, mut producer) = encoder_on(
            settings(serde_json::json!({"kind": "dns", "domain": "a.b", "window": 3})),
            handover.zone,
            zones,
            handover.ledger,
        );
        new.resume(handover.listed, handover.delisted);
        zone.reinstate();
        assert_eq!(
            listed_numbers(&zone),
            before,
            "nothing changed for listeners"
        );
        assert_eq!(
            new.stats.newest_plus_one.load(Ordering::Relaxed),
            before.last().unwrap() + 1
        );
        feed(&mut new, &mut producer, &tone(3, 660.0));
        let after = listed_numbers(&zone);
        assert_eq!(after.len(), 3, "the new window: {after:?}");
        assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "{after:?}");
        let snapshot = zone.snapshot();
        // Numbering went on without a jump: every number since the start is served or
        // was delisted just now.
        let served: Vec<u64> = snapshot.packs.keys().copied().collect();
        assert_eq!(served, (0..=*after.last().unwrap()).collect::<Vec<_>>());
        assert!(*after.last().unwrap() > *before.last().unwrap());
    }
}
