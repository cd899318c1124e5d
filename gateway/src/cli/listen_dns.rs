//! `telepatch listen-dns`: plays an AoDNS broadcast from any DNS server to a WAV file
//! or to stdout, following the reference client's protocol (aodns.md §10), so a
//! broadcast can be checked without the Python client.
//!
//! Like the reference it polls `sequence` (reusing a list for 4 s), fetches every
//! listed pack it lacks, crawls every 0.5 s, plays from the oldest listed pack in real
//! time, and treats a UDP reply with TC set by asking again over TCP. Queries time out
//! after 100 ms and are retried after 0.25 s, ten times. Unlike the reference it never
//! floods a server that has no `sequence` yet (it waits for the next crawl), and it
//! counts what it skips. The bookkeeping is the sans-IO
//! [`ListenerState`](codecs::aodns::ListenerState); this module is its blocking driver.
//!
//! Playback is paced by the clock as a sound card would: each 60 ms frame starts when
//! the previous one ends, or when it arrives if the player ran dry (an underrun). The
//! player thread asks for real-time priority and the process locks its memory (both
//! best effort), so other work on the machine does not make it run dry. At
//! the end a JSON report goes to stderr: packs played and skipped, and the wall-clock
//! time the first sample was played, from which (with no underrun) sample `k` played
//! at `playout_start_unix_ms + k / rate`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use clap::Args;
use codecs::aodns::{HeldPack, ListenerState, PackReader, SequenceListDecoder, ZoneRoot};
use codecs::opus::{AodnsOpusDecoder, Channels, OpusFormat, OpusRate};
use hickory_server::proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RData, RecordType};

use crate::threads::{OwnedThread, Priority, set_realtime_fifo};

/// How long a `sequence` list is reused (the reference's cache, aodns.md §10).
const SEQUENCE_REUSE: Duration = Duration::from_secs(4);
/// Pause between crawls.
const CRAWL_INTERVAL: Duration = Duration::from_millis(500);
/// Pause before retrying a query that timed out, and how many retries.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
const RETRIES: usize = 10;
/// Opus frame duration.
const FRAME: Duration = Duration::from_millis(60);
/// A frame starting this much after the previous one ended is an underrun (the rest is
/// the scheduler's jitter).
const UNDERRUN_SLACK: Duration = Duration::from_millis(30);

/// Real-time priority of the player thread, when allowed (below the gateway engine's).
const PLAYER_FIFO_PRIORITY: u8 = 30;

/// `telepatch listen-dns`
#[derive(Args, Debug, Clone)]
pub struct ListenDnsArgs {
    /// The broadcast's zone, e.g. `music.example.com`.
    pub domain: String,
    /// The DNS server to ask: the gateway's `dns.listen`, or a resolver.
    #[arg(long, default_value = "127.0.0.1:5053")]
    pub server: SocketAddr,
    /// Where the audio goes: a WAV file, or `-` for raw signed 16-bit little-endian
    /// PCM on stdout (for example `| aplay -f S16_LE -r 16000 -c 1`).
    #[arg(long, short)]
    pub out: String,
    /// Opus rate of the broadcast (8000, 12000 or 16000; AoDNS does not announce it).
    #[arg(long, default_value_t = 16_000)]
    pub sample_rate: u32,
    /// Channels of the broadcast (1 or 2).
    #[arg(long, default_value_t = 1)]
    pub channels: u16,
    /// Stop after playing this many seconds of audio (default: until interrupted).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Give up on a query after this many milliseconds and retry (the reference: 100).
    #[arg(long, default_value_t = 100)]
    pub timeout_ms: u64,
}

/// What a listening session did (printed as JSON on stderr at the end).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ListenReport {
    /// Packs played.
    pub played_packs: u64,
    /// Sequence numbers jumped over between played packs.
    pub skipped_sequences: u64,
    /// Packs that arrived after a later one had been played.
    pub late_packs: u64,
    /// First and last pack played.
    pub first_sequence: Option<u64>,
    /// Last pack played.
    pub last_sequence: Option<u64>,
    /// Frames played (60 ms each).
    pub frames: u64,
    /// Frames of each of the first packs played (up to 256), in order: the first
    /// `window` of them are what the server listed when the listener joined, so their
    /// sum is the delay the listener starts with (aodns.md §10).
    pub first_pack_frames: Vec<usize>,
    /// Frames whose Opus packet did not decode (concealed).
    pub decode_errors: u64,
    /// Times the player ran dry after it started.
    pub underruns: u64,
    /// Wall-clock time the first sample was played (Unix epoch, ms).
    pub playout_start_unix_ms: Option<f64>,
    /// DNS queries sent (UDP and TCP).
    pub queries: u64,
    /// UDP replies with TC set, repeated over TCP.
    pub tcp_fallbacks: u64,
    /// Queries that timed out (and were retried).
    pub timeouts: u64,
    /// Queries that got an answer without records.
    pub nodata: u64,
}

/// Why one DNS query failed.
#[derive(Debug, thiserror::Error)]
enum QueryError {
    #[error("no reply")]
    Timeout,
    #[error("the server answered {0}")]
    Rcode(ResponseCode),
    #[error("no records")]
    NoData,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed reply: {0}")]
    Malformed(String),
}

/// Counters shared by the crawler and the player.
#[derive(Debug, Default)]
struct Counters {
    queries: AtomicU64,
    tcp_fallbacks: AtomicU64,
    timeouts: AtomicU64,
    nodata: AtomicU64,
}

/// A minimal stub resolver talking to one server, as dnspython does for the client.
struct Resolver {
    server: SocketAddr,
    socket: UdpSocket,
    timeout: Duration,
    next_id: u16,
    buffer: Vec<u8>,
    counters: Arc<Counters>,
}

impl Resolver {
    fn new(server: SocketAddr, timeout: Duration, counters: Arc<Counters>) -> anyhow::Result<Self> {
        let local: SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).context("cannot open a UDP socket")?;
        socket.connect(server)?;
        socket.set_read_timeout(Some(timeout))?;
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos());
        Ok(Resolver {
            server,
            socket,
            timeout,
            next_id: (seed as u16) | 1,
            buffer: vec![0; 65_535],
            counters,
        })
    }

    fn id(&mut self) -> u16 {
        // xorshift16: IDs need to differ between queries, not to be secret.
        let mut x = self.next_id;
        x ^= x << 7;
        x ^= x >> 9;
        x ^= x << 8;
        self.next_id = x;
        x
    }

    /// The first string of every TXT record of `name` (what the reference reads).
    fn txt(&mut self, name: &Name) -> Result<Vec<Vec<u8>>, QueryError> {
        let id = self.id();
        let mut query = Message::query();
        query.metadata.id = id;
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name.clone(), RecordType::TXT));
        let bytes = query
            .to_vec()
            .map_err(|e| QueryError::Malformed(e.to_string()))?;
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        self.socket.send(&bytes)?;
        let until = Instant::now() + self.timeout;
        let reply = loop {
            let len = match self.socket.recv(&mut self.buffer) {
                Ok(len) => len,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(QueryError::Timeout);
                }
                Err(e) => return Err(e.into()),
            };
            // Stray replies to earlier (timed-out) queries are skipped.
            match Message::from_vec(&self.buffer[..len]) {
                Ok(reply) if reply.metadata.id == id => break reply,
                _ if Instant::now() >= until => return Err(QueryError::Timeout),
                _ => continue,
            }
        };
        let reply = if reply.metadata.truncation {
            self.counters.tcp_fallbacks.fetch_add(1, Ordering::Relaxed);
            self.over_tcp(&bytes, id)?
        } else {
            reply
        };
        answer_strings(&reply, name, &self.counters)
    }

    fn over_tcp(&mut self, query: &[u8], id: u16) -> Result<Message, QueryError> {
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        let mut stream = TcpStream::connect_timeout(&self.server, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let len = u16::try_from(query.len()).map_err(|e| QueryError::Malformed(e.to_string()))?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed)?;
        let mut prefix = [0u8; 2];
        read_exact(&mut stream, &mut prefix)?;
        let len = usize::from(u16::from_be_bytes(prefix));
        read_exact(&mut stream, &mut self.buffer[..len])?;
        let reply = Message::from_vec(&self.buffer[..len])
            .map_err(|e| QueryError::Malformed(e.to_string()))?;
        if reply.metadata.id != id {
            return Err(QueryError::Malformed("reply to another query".into()));
        }
        Ok(reply)
    }
}

fn read_exact(stream: &mut TcpStream, buffer: &mut [u8]) -> Result<(), QueryError> {
    stream.read_exact(buffer).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => QueryError::Timeout,
        _ => QueryError::Io(e),
    })
}

/// The first string of each TXT answer for `name`.
fn answer_strings(
    reply: &Message,
    name: &Name,
    counters: &Counters,
) -> Result<Vec<Vec<u8>>, QueryError> {
    if reply.metadata.message_type != MessageType::Response {
        return Err(QueryError::Malformed("not a response".into()));
    }
    if reply.metadata.response_code != ResponseCode::NoError {
        return Err(QueryError::Rcode(reply.metadata.response_code));
    }
    let strings: Vec<Vec<u8>> = reply
        .answers
        .iter()
        // hickory compares names case-insensitively (RFC 4343).
        .filter(|r| r.name == *name)
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => txt.txt_data.first().map(|s| s.to_vec()),
            _ => None,
        })
        .collect();
    if strings.is_empty() {
        counters.nodata.fetch_add(1, Ordering::Relaxed);
        return Err(QueryError::NoData);
    }
    Ok(strings)
}

/// Queries with the reference's retry policy: timeouts are retried after 0.25 s, ten
/// times; any other outcome is final.
fn txt_with_retries(
    resolver: &mut Resolver,
    name: &Name,
    stop: &AtomicBool,
) -> Result<Vec<Vec<u8>>, QueryError> {
    let mut attempt = 0;
    loop {
        match resolver.txt(name) {
            Err(QueryError::Timeout) if attempt < RETRIES && !stop.load(Ordering::Relaxed) => {
                resolver.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                std::thread::sleep(RETRY_PAUSE);
            }
            other => return other,
        }
    }
}

/// Where the decoded audio goes.
enum Sink {
    Wav(hound::WavWriter<std::io::BufWriter<std::fs::File>>),
    Stdout(std::io::BufWriter<std::io::Stdout>),
}

impl Sink {
    fn open(out: &str, format: OpusFormat) -> anyhow::Result<Sink> {
        if out == "-" {
            return Ok(Sink::Stdout(std::io::BufWriter::new(std::io::stdout())));
        }
        let spec = hound::WavSpec {
            channels: format.channels.count() as u16,
            sample_rate: format.rate.hz(),
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer =
            hound::WavWriter::create(out, spec).with_context(|| format!("cannot create {out}"))?;
        Ok(Sink::Wav(writer))
    }

    fn write(&mut self, pcm: &[f32]) -> anyhow::Result<()> {
        for &sample in pcm {
            let s = (sample * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16;
            match self {
                Sink::Wav(writer) => writer.write_sample(s)?,
                Sink::Stdout(out) => out.write_all(&s.to_le_bytes())?,
            }
        }
        match self {
            // Keeps the header current, so an interrupted session leaves a valid file.
            Sink::Wav(writer) => writer.flush()?,
            Sink::Stdout(out) => out.flush()?,
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Wav(writer) => writer.finalize()?,
            Sink::Stdout(mut out) => out.flush()?,
        }
        Ok(())
    }
}

/// Runs `telepatch listen-dns`.
pub fn listen_dns(args: ListenDnsArgs) -> anyhow::Result<()> {
    let root = ZoneRoot::parse(&args.domain).context("invalid domain")?;
    let rate = OpusRate::try_from(args.sample_rate)?;
    let channels = match args.channels {
        1 => Channels::Mono,
        2 => Channels::Stereo,
        other => anyhow::bail!("--channels {other}: must be 1 or 2"),
    };
    let format = OpusFormat { rate, channels };
    let sink = Sink::open(&args.out, format)?;
    let counters = Arc::new(Counters::default());
    let mut resolver = Resolver::new(
        args.server,
        Duration::from_millis(args.timeout_ms.max(1)),
        Arc::clone(&counters),
    )?;
    let state = Arc::new(Mutex::new(ListenerState::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let max_frames = args
        .duration
        .map(|seconds| (seconds / FRAME.as_secs_f64()).ceil() as u64);

    // Playback keeps time like a sound card: like the gateway's media threads, the player
    // asks for real-time priority and the process locks its memory, both best effort.
    if let Err(e) = crate::engine::driver::lock_process_memory() {
        tracing::debug!(error = %e, "memory not locked");
    }
    // The flag goes both ways: the player raises it when it is done, and a stop of the
    // player's owner (an early return here) raises it for the player.
    let player = {
        let (state, playing_stop) = (Arc::clone(&state), Arc::clone(&stop));
        OwnedThread::spawn("listen-dns-player", Priority::Normal, move |_| {
            if let Err(e) = set_realtime_fifo(PLAYER_FIFO_PRIORITY) {
                tracing::debug!(error = %e, "player runs at normal priority");
            }
            play(&state, &playing_stop, sink, format, max_frames)
        })?
        .with_wake({
            let stop = Arc::clone(&stop);
            move || stop.store(true, Ordering::Relaxed)
        })
    };

    let sequence_name = Name::from_ascii(root.sequence_name())?;
    let mut decoder = SequenceListDecoder::new();
    let mut listed = Vec::new();
    let mut fetched_at: Option<Instant> = None;
    let mut to_fetch = Vec::new();
    let mut reader = PackReader::new();
    while !stop.load(Ordering::Relaxed) {
        if fetched_at.is_none_or(|t| t.elapsed() >= SEQUENCE_REUSE) {
            match txt_with_retries(&mut resolver, &sequence_name, &stop) {
                Ok(strings) => {
                    // The list is the first string of the first RR (aodns.md §10).
                    match strings.first().map(|s| decoder.decode(s, &mut listed)) {
                        Some(Ok(())) => fetched_at = Some(Instant::now()),
                        Some(Err(e)) => tracing::warn!(error = %e, "unreadable sequence list"),
                        None => {}
                    }
                }
                Err(e) => tracing::debug!(error = %e, "no sequence list yet"),
            }
        }
        lock(&state).on_sequence_list(&listed, &mut to_fetch);
        for &n in &to_fetch {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let name = Name::from_ascii(root.seq_name(n))?;
            match txt_with_retries(&mut resolver, &name, &stop) {
                Ok(strings) => {
                    reader.clear();
                    for s in &strings {
                        if let Err(e) = reader.push_txt(s) {
                            tracing::warn!(sequence = n, error = %e, "unreadable frame");
                        }
                    }
                    let frames = reader.sorted_frames().map(|(_, f)| f.to_vec()).collect();
                    lock(&state).on_pack(n, HeldPack { frames });
                }
                Err(e) => tracing::debug!(sequence = n, error = %e, "pack not fetched"),
            }
        }
        std::thread::sleep(CRAWL_INTERVAL);
    }
    let mut report = player
        .join()
        .finished()
        .ok_or_else(|| anyhow::anyhow!("the player thread panicked"))??;
    let stats = lock(&state).stats();
    report.played_packs = stats.played;
    report.skipped_sequences = stats.skipped;
    report.late_packs = stats.late;
    report.frames = stats.frames;
    report.queries = counters.queries.load(Ordering::Relaxed);
    report.tcp_fallbacks = counters.tcp_fallbacks.load(Ordering::Relaxed);
    report.timeouts = counters.timeouts.load(Ordering::Relaxed);
    report.nodata = counters.nodata.load(Ordering::Relaxed);
    eprintln!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn lock(state: &Mutex<ListenerState>) -> std::sync::MutexGuard<'_, ListenerState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The player: always the lowest pack held, paced like a sound card.
fn play(
    state: &Mutex<ListenerState>,
    stop: &AtomicBool,
    mut sink: Sink,
    format: OpusFormat,
    max_frames: Option<u64>,
) -> anyhow::Result<ListenReport> {
    let mut decoder = AodnsOpusDecoder::new(format)?;
    let mut pcm = vec![0.0f32; format.frame_len()];
    let mut report = ListenReport::default();
    let mut clock: Option<Instant> = None;
    let mut played_frames = 0u64;
    'playing: while !stop.load(Ordering::Relaxed) {
        let Some((n, pack)) = lock(state).next_to_play() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        report.first_sequence.get_or_insert(n);
        report.last_sequence = Some(n);
        if report.first_pack_frames.len() < 256 {
            report.first_pack_frames.push(pack.frames.len());
        }
        for frame in &pack.frames {
            if decoder.decode_f32(frame, &mut pcm).is_err() {
                report.decode_errors += 1;
                // Conceal the lost frame rather than leave a hole in the timeline.
                let _ = decoder.decode_f32(&[], &mut pcm);
            }
            let now = Instant::now();
            let start = match clock {
                None => {
                    report.playout_start_unix_ms = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_secs_f64() * 1000.0);
                    now
                }
                Some(due) if now > due + UNDERRUN_SLACK => {
                    report.underruns += 1;
                    now
                }
                Some(due) => due,
            };
            sink.write(&pcm)?;
            let end = start + FRAME;
            clock = Some(end);
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
            played_frames += 1;
            if max_frames.is_some_and(|max| played_frames >= max) {
                break 'playing;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    sink.finish()?;
    Ok(report)
}
