//! The socket side of a jam node: one thread per node moving datagrams between its UDP
//! sockets and the engine node's rings (rtjam.md §1, §4, §5).
//!
//! ```text
//!  engine node ──send ring──► socket thread ──UDP──► room server / members
//!  engine node ◄─recv ring─── socket thread ◄─UDP─── room server / members
//! ```
//!
//! The thread is thin: it stamps times, validates, forwards and counts; the audio work
//! (jitter buffers, mixing, encoding) happens in the engine node. It sleeps in `poll(2)`
//! on its sockets and an eventfd the engine node writes after queuing packets, so a
//! packet leaves within microseconds of the block that completed it.
//!
//! * **join**: one socket per seat (the room keys members by source address, rtjam.md
//!   §3). Each outgoing packet gets the send time as client_time and the newest
//!   server_time the seat received (the room's latency loop, §5). Datagrams from anyone
//!   but the room server are dropped. A server given by name is looked up only once a
//!   seat is in use ([`RoomServer`]). The room's header-only echo of our own packet
//!   carries our client_time back, which gives the round trip on our own clock. The
//!   room relays whatever its members send, so a second sender using a jammer's
//!   client_id arrives from the room server too: a [`StreamGuard`] per client_id keeps
//!   the established stream and drops the other (counted as `intruder`).
//! * **host**: one socket; [`RoomCore`] forwards every valid datagram to the other
//!   members and echoes its header to the sender (§4), within each member's packet rate,
//!   refusing a client_id another member holds. Every forwarded audio packet also goes
//!   to the engine node tagged with its member's stream (the seats hear the members),
//!   and the seats' packets go to every member stamped like forwarded ones ("packets
//!   from the room").
//!
//! Intruders and rate-limited members are counted per datagram and logged at most once
//! per [`LOG_INTERVAL_US`] per kind.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::control::Event;
use api::model::NodeRef;
use codecs::jam::packet::{HEADER_LEN, MAX_DATAGRAM_LEN, stamp_server_fields};
use codecs::jam::{
    Departure, DropReason, JamHeader, JamPacket, RoomCore, RoomOutcome, StreamGuard, StreamPoint,
    Verdict,
};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};

use super::shared::JamShared;
use crate::threads::{OwnedThread, Priority, StopSignal};

/// Silence after which a remote jammer is forgotten (rtjam.md §3).
pub const JAMMER_TIMEOUT_US: u64 = 1_000_000;
/// Longest the socket thread sleeps without a datagram or a wake-up (expiry checks,
/// stop requests).
const POLL_TIMEOUT: Duration = Duration::from_millis(20);
/// Receive buffer: larger than any valid datagram, so an oversized one is seen as such
/// instead of being silently truncated to a valid length.
const RECEIVE_BUFFER: usize = 2048;
/// Weight of a new round-trip sample: 1/16, about 43 ms of echoes at 375 per second
/// (4 s with keepalives only).
const RTT_SMOOTHING: f64 = 1.0 / 16.0;
/// Round trips above this are not the room's (a stale or foreign echo).
const MAX_ROUND_TRIP_US: u64 = 5_000_000;
/// IP TOS "low delay", as rtjam sets on its sockets (rtjam.md §1).
const TOS_LOW_DELAY: u32 = 0x10;
/// Socket buffer sizes: a hosted room receives from every member at once.
const SOCKET_BUFFER_BYTES: usize = 1 << 20;
/// Least time between two log lines about intruders (or about rate-limited members) of
/// one node; the lines say how many were not logged.
pub const LOG_INTERVAL_US: u64 = 10_000_000;

/// At most one log line per interval for one kind of event.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    interval_us: u64,
    next_us: u64,
    suppressed: u64,
}

impl LogLimiter {
    /// One line per `interval_us`.
    pub fn new(interval_us: u64) -> LogLimiter {
        LogLimiter {
            interval_us,
            next_us: 0,
            suppressed: 0,
        }
    }

    /// Whether to log an event at `now_us`: `Some(events not logged since the last
    /// line)`, or `None` (counted as not logged).
    pub fn check(&mut self, now_us: u64) -> Option<u64> {
        if now_us < self.next_us {
            self.suppressed += 1;
            return None;
        }
        self.next_us = now_us.saturating_add(self.interval_us);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The current time in µs since the Unix epoch: the clock of rtjam's server_time and
/// client_time (rtjam.md §2). Injected so the engine node runs on virtual time in tests.
pub trait JamClock: Send + Sync {
    /// Now, µs since the Unix epoch.
    fn now_us(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl JamClock for SystemClock {
    fn now_us(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// One datagram in a ring between the engine node and the socket thread: fixed size,
/// so the rings are allocated once and nothing allocates per packet.
#[derive(Clone)]
pub struct Datagram {
    /// Bytes used in `bytes`.
    pub len: u16,
    /// The local seat that sends it (engine to socket thread).
    pub seat: u16,
    /// The member stream it belongs to (socket thread to engine): a hosted room's member
    /// or a joined room's stream of one client_id, numbered by the socket thread.
    pub source: u64,
    /// Arrival time (socket thread to engine), µs since the Unix epoch.
    pub time_us: u64,
    /// The datagram.
    pub bytes: [u8; MAX_DATAGRAM_LEN],
}

impl Datagram {
    /// An empty datagram.
    pub fn empty() -> Datagram {
        Datagram {
            len: 0,
            seat: 0,
            source: 0,
            time_us: 0,
            bytes: [0; MAX_DATAGRAM_LEN],
        }
    }

    /// A copy of `bytes` (at most [`MAX_DATAGRAM_LEN`]; callers pass valid packets).
    pub fn copy_of(bytes: &[u8], time_us: u64) -> Datagram {
        let mut d = Datagram::empty();
        let n = bytes.len().min(MAX_DATAGRAM_LEN);
        d.bytes[..n].copy_from_slice(&bytes[..n]);
        // n ≤ 1024 fits.
        d.len = n as u16;
        d.time_us = time_us;
        d
    }

    /// A copy of `bytes` from member stream `source`.
    pub fn from_source(bytes: &[u8], time_us: u64, source: u64) -> Datagram {
        let mut d = Datagram::copy_of(bytes, time_us);
        d.source = source;
        d
    }

    /// The used bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(MAX_DATAGRAM_LEN)]
    }
}

impl std::fmt::Debug for Datagram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datagram")
            .field("len", &self.len)
            .field("seat", &self.seat)
            .field("source", &self.source)
            .field("time_us", &self.time_us)
            .finish()
    }
}

/// Capacity of a joined seat's rings, in datagrams: 128 is 340 ms of the seat's own
/// packets, or 31 ms of an 11-jammer room arriving at its receiver (an engine stall that
/// long is a glitch anyway).
pub const SEAT_RING_DATAGRAMS: usize = 128;
/// Capacity of a hosted room's rings: every member's packets go through one, 512 is
/// 85 ms of a 16-member room.
pub const ROOM_RING_DATAGRAMS: usize = 512;

/// The eventfd through which the engine node wakes the socket thread.
#[derive(Debug)]
pub struct Wake(OwnedFd);

impl Wake {
    /// A non-blocking eventfd.
    pub fn new() -> io::Result<Wake> {
        let fd = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(Wake(fd))
    }

    /// Wakes the socket thread. Never blocks: the eventfd is non-blocking and its
    /// counter cannot realistically overflow (it is reset on every wake-up).
    pub fn notify(&self) {
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    fn reset(&self) {
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut counter);
    }
}

/// Receives an event for the API's stream (join and leave of members).
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// A remote jammer a joined room's sockets hear from.
#[derive(Debug, Clone)]
pub struct RemoteJammer {
    /// Its client_id.
    pub client_id: u32,
    /// One of the node's own seats, heard through the room.
    pub local: bool,
    /// Its stream, numbered by the tracker: a client_id that leaves and comes back is
    /// a new stream.
    pub stream: u64,
    /// When it was first heard, µs.
    pub joined_us: u64,
    /// When it was last heard, µs.
    pub last_heard_us: u64,
    /// Audio packets received from it (counted once, however many seats hear it).
    pub packets: u64,
    /// Times its sequence was not the previous + 1.
    pub sequence_gaps: u64,
    last_sequence: u32,
    guard: StreamGuard,
}

/// What [`RemoteTracker::heard`] made of an audio packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A jammer's stream starts with it.
    Joined {
        /// The stream.
        stream: u64,
    },
    /// It continues the jammer's stream.
    Continues {
        /// The stream.
        stream: u64,
    },
    /// Not the jammer's stream (see [`StreamGuard`]): drop it.
    Refused {
        /// A second stream seen interleaved with the jammer's: an intruder.
        interleaved: bool,
    },
}

/// The remote jammers of a joined room, keyed by client_id (rtjam.md §3: the client
/// side keys jammers by client_id and forgets them after 1 s), one stream each.
#[derive(Debug, Default)]
pub struct RemoteTracker {
    jammers: Vec<RemoteJammer>,
    next_stream: u64,
}

impl RemoteTracker {
    /// Notes an audio packet carrying `frames` frames (`local`: from one of the node's
    /// own seats), and says whether it belongs to its jammer's stream.
    pub fn heard(&mut self, now_us: u64, header: &JamHeader, frames: usize, local: bool) -> Heard {
        let point = StreamPoint {
            arrival_us: now_us,
            sequence: header.sequence,
            client_time: header.client_time,
            frames,
        };
        let Some(j) = self
            .jammers
            .iter_mut()
            .find(|j| j.client_id == header.client_id)
        else {
            self.next_stream += 1;
            let mut guard = StreamGuard::default();
            guard.check(&point);
            self.jammers.push(RemoteJammer {
                client_id: header.client_id,
                local,
                stream: self.next_stream,
                joined_us: now_us,
                last_heard_us: now_us,
                packets: 1,
                sequence_gaps: 0,
                last_sequence: header.sequence,
                guard,
            });
            return Heard::Joined {
                stream: self.next_stream,
            };
        };
        match j.guard.check(&point) {
            Verdict::Refused { interleaved } => return Heard::Refused { interleaved },
            Verdict::NewStream => {
                // Silent for the expiry, back before `expire` saw it: a new stream.
                self.next_stream += 1;
                j.stream = self.next_stream;
                j.joined_us = now_us;
                j.last_heard_us = now_us;
                j.packets = 1;
                j.sequence_gaps = 0;
                j.last_sequence = header.sequence;
                return Heard::Joined { stream: j.stream };
            }
            _ => {}
        }
        j.last_heard_us = j.last_heard_us.max(now_us);
        // Every seat gets a copy of the same packet: count it once.
        if header.sequence != j.last_sequence {
            if header.sequence != j.last_sequence.wrapping_add(1) {
                j.sequence_gaps += 1;
            }
            j.packets += 1;
            j.last_sequence = header.sequence;
        }
        Heard::Continues { stream: j.stream }
    }

    /// Removes the jammers silent for [`JAMMER_TIMEOUT_US`] and hands them to `gone`.
    pub fn expire(&mut self, now_us: u64, mut gone: impl FnMut(RemoteJammer)) {
        while let Some(i) = self
            .jammers
            .iter()
            .position(|j| j.last_heard_us.saturating_add(JAMMER_TIMEOUT_US) <= now_us)
        {
            gone(self.jammers.remove(i));
        }
    }

    /// The remote jammers (not the node's own seats), in the order they joined.
    pub fn jammers(&self) -> impl Iterator<Item = &RemoteJammer> {
        self.jammers.iter().filter(|j| !j.local)
    }
}

/// How long a failed name lookup of the room server waits before the next try.
const RESOLVE_RETRY_US: u64 = 5_000_000;

#[derive(Debug, Default)]
struct ServerState {
    addr: Option<SocketAddr>,
    error: Option<String>,
    next_attempt_us: u64,
}

/// Where a joined room's server is. An address is known at once; a host name is looked
/// up only when a seat is first in use (and retried every 5 s while it fails), so a room
/// nobody sits in never touches the network, not even DNS. Once found, the address is
/// kept for the life of the node.
#[derive(Debug)]
pub struct RoomServer {
    host: String,
    port: u16,
    want_v4: bool,
    state: Mutex<ServerState>,
}

impl RoomServer {
    /// The server `host:port`, for seats bound on IPv4 (`want_v4`) or IPv6. An address
    /// literal of the other family is refused with why.
    pub fn new(host: &str, port: u16, want_v4: bool) -> Result<RoomServer, String> {
        let mut state = ServerState::default();
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            let ip = ip.to_canonical();
            if ip.is_ipv4() != want_v4 {
                return Err(format!(
                    "{host} is an {} address but the seats bind {}",
                    if ip.is_ipv4() { "IPv4" } else { "IPv6" },
                    if want_v4 { "IPv4" } else { "IPv6" }
                ));
            }
            state.addr = Some(SocketAddr::new(ip, port));
        }
        Ok(RoomServer {
            host: host.to_owned(),
            port,
            want_v4,
            state: Mutex::new(state),
        })
    }

    /// The server's address, once known.
    pub fn addr(&self) -> Option<SocketAddr> {
        lock(&self.state).addr
    }

    /// Why the last lookup failed, while the address is unknown.
    pub fn error(&self) -> Option<String> {
        lock(&self.state).error.clone()
    }

    /// `host:port` as configured.
    pub fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The address, looking the name up (blocking) if it is unknown and a try is due.
    fn resolve(&self, now_us: u64) -> Option<SocketAddr> {
        use std::net::ToSocketAddrs;
        {
            let state = lock(&self.state);
            if state.addr.is_some() || now_us < state.next_attempt_us {
                return state.addr;
            }
        }
        let found = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| e.to_string())
            .and_then(|mut addrs| {
                addrs.find(|a| a.is_ipv4() == self.want_v4).ok_or_else(|| {
                    format!("no {} address", if self.want_v4 { "IPv4" } else { "IPv6" })
                })
            });
        let mut state = lock(&self.state);
        match found {
            Ok(addr) => {
                state.addr = Some(addr);
                state.error = None;
            }
            Err(e) => {
                state.error = Some(format!("cannot resolve {}: {e}", self.name()));
                state.next_attempt_us = now_us.saturating_add(RESOLVE_RETRY_US);
            }
        }
        state.addr
    }
}

/// The engine's side of the rings of one seat (join) or of the room (host).
pub struct EngineLink {
    /// Packets to send.
    pub send: rtrb::Producer<Datagram>,
    /// Packets received.
    pub recv: rtrb::Consumer<Datagram>,
}

/// The socket thread's side of the same rings.
pub struct SocketLink {
    send: rtrb::Consumer<Datagram>,
    recv: rtrb::Producer<Datagram>,
}

/// A pair of rings of `capacity` datagrams between the engine node and the socket thread.
pub fn link(capacity: usize) -> (EngineLink, SocketLink) {
    let (send_tx, send_rx) = rtrb::RingBuffer::new(capacity);
    let (recv_tx, recv_rx) = rtrb::RingBuffer::new(capacity);
    (
        EngineLink {
            send: send_tx,
            recv: recv_rx,
        },
        SocketLink {
            send: send_rx,
            recv: recv_tx,
        },
    )
}

/// Opens a UDP socket on `addr` the way rtjam does (TOS low delay), non-blocking, with
/// room for bursts.
pub fn open_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv4() {
        // Best effort: some environments refuse TOS changes; audio works without.
        let _ = socket.set_tos_v4(TOS_LOW_DELAY);
    }
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// What the socket thread serves.
pub enum IoPlan {
    /// Each seat a jammer of a remote room.
    Join {
        /// The room server.
        server: Arc<RoomServer>,
        /// One socket per seat.
        sockets: Vec<UdpSocket>,
        /// One link per seat.
        links: Vec<SocketLink>,
        /// The remote jammers (shared with the service for the API).
        tracker: Arc<Mutex<RemoteTracker>>,
    },
    /// The room itself.
    Host {
        /// The room's socket.
        socket: UdpSocket,
        /// The link to the engine node (all seats).
        link: SocketLink,
        /// The room (shared with the service for the API and live settings).
        room: Arc<Mutex<RoomCore>>,
    },
}

/// A running socket thread (woken through the engine's eventfd to stop).
pub struct IoThread {
    thread: OwnedThread,
}

/// What the thread needs besides its plan.
pub struct IoContext {
    /// The node (for events and the thread's name).
    pub node: NodeRef,
    /// Shared counters and seat state.
    pub shared: Arc<JamShared>,
    /// The engine's wake-up.
    pub wake: Arc<Wake>,
    /// Wall clock.
    pub clock: Arc<dyn JamClock>,
    /// Where join/leave events go.
    pub events: EventSink,
}

impl IoThread {
    /// Starts the thread.
    pub fn spawn(plan: IoPlan, context: IoContext) -> io::Result<IoThread> {
        let wake = Arc::clone(&context.wake);
        let name: String = format!("jam-{}", context.node.name())
            .chars()
            .take(15)
            .collect();
        let thread = OwnedThread::spawn(name, Priority::Normal, move |stop| {
            let mut worker = Worker {
                context,
                stop,
                buf: [0; RECEIVE_BUFFER],
                intruder_log: LogLimiter::new(LOG_INTERVAL_US),
                rate_log: LogLimiter::new(LOG_INTERVAL_US),
            };
            match plan {
                IoPlan::Join {
                    server,
                    sockets,
                    links,
                    tracker,
                } => worker.run_join(&server, &sockets, links, &tracker),
                IoPlan::Host { socket, link, room } => worker.run_host(&socket, link, &room),
            }
        })?
        .with_wake(move || wake.notify());
        Ok(IoThread { thread })
    }

    /// Stops the thread and waits for it (the sockets close with it).
    pub fn stop(&self) {
        let _ = self.thread.stop();
    }
}

struct Worker {
    context: IoContext,
    stop: StopSignal,
    buf: [u8; RECEIVE_BUFFER],
    intruder_log: LogLimiter,
    rate_log: LogLimiter,
}

fn timeout() -> Timespec {
    Timespec {
        tv_sec: 0,
        tv_nsec: i64::from(POLL_TIMEOUT.subsec_nanos()),
    }
}

/// The poll set: the wake-up eventfd first, then the sockets. Built once per thread.
fn poll_set<'a>(wake: &'a Wake, sockets: &[&'a UdpSocket]) -> Vec<PollFd<'a>> {
    let mut fds = Vec::with_capacity(sockets.len() + 1);
    fds.push(PollFd::new(&wake.0, PollFlags::IN));
    for socket in sockets {
        fds.push(PollFd::new(*socket, PollFlags::IN));
    }
    fds
}

/// Waits for readable sockets or a wake-up; marks which sockets are readable.
fn wait(fds: &mut [PollFd<'_>], wake: &Wake, readable: &mut [bool]) {
    let ready = rustix::event::poll(fds, Some(&timeout())).unwrap_or(0);
    readable.fill(false);
    if ready == 0 {
        return;
    }
    if !fds[0].revents().is_empty() {
        wake.reset();
    }
    for (flag, fd) in readable.iter_mut().zip(&fds[1..]) {
        *flag = !fd.revents().is_empty();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Worker {
    fn count(&self, counter: impl Fn(&super::shared::IoCounters) -> &std::sync::atomic::AtomicU64) {
        counter(&self.context.shared.io).fetch_add(1, Ordering::Relaxed);
    }

    /// Logs (rate-limited) a datagram of a second stream under `client_id`.
    fn log_intruder(&mut self, now_us: u64, client_id: u32, from: SocketAddr) {
        if let Some(suppressed) = self.intruder_log.check(now_us) {
            tracing::warn!(
                node = %self.context.node,
                client_id,
                address = %from,
                not_logged = suppressed,
                "jam intruder: a second stream under an established client_id, dropped"
            );
        }
    }

    // ------------------------------------------------------------------------ join

    fn run_join(
        &mut self,
        room_server: &RoomServer,
        sockets: &[UdpSocket],
        mut links: Vec<SocketLink>,
        tracker: &Mutex<RemoteTracker>,
    ) {
        let seats = sockets.len();
        let mut last_server_time = vec![0u64; seats];
        let mut readable = vec![false; seats];
        let wake = Arc::clone(&self.context.wake);
        let refs: Vec<&UdpSocket> = sockets.iter().collect();
        let mut fds = poll_set(&wake, &refs);
        while !self.stop.is_stopped() {
            let in_use = self
                .context
                .shared
                .seats
                .iter()
                .any(|s| s.active.load(Ordering::Relaxed));
            let server = if in_use {
                room_server.resolve(self.context.clock.now_us())
            } else {
                room_server.addr()
            };
            for (k, link) in links.iter_mut().enumerate() {
                while let Ok(mut d) = link.send.pop() {
                    let len = usize::from(d.len);
                    let Some(server) = server.filter(|_| len >= HEADER_LEN) else {
                        // Nowhere to send it yet (the name does not resolve).
                        self.count(|c| &c.send_errors);
                        continue;
                    };
                    // Stamped at the last moment: the echo then measures the room's
                    // round trip, not our queueing (rtjam.md §5).
                    let now = self.context.clock.now_us();
                    d.bytes[4..12].copy_from_slice(&last_server_time[k].to_be_bytes());
                    d.bytes[12..20].copy_from_slice(&now.to_be_bytes());
                    match sockets[k].send_to(d.as_bytes(), server) {
                        Ok(_) => {
                            self.count(|c| &c.sent);
                            self.context.shared.seats[k]
                                .packets_sent
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => self.count(|c| &c.send_errors),
                    }
                }
            }
            wait(&mut fds, &wake, &mut readable);
            for k in 0..seats {
                if !readable[k] {
                    continue;
                }
                loop {
                    let (n, from) = match sockets[k].recv_from(&mut self.buf) {
                        Ok(received) => received,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            // ICMP errors surface here on some kernels; keep serving.
                            self.count(|c| &c.send_errors);
                            break;
                        }
                    };
                    let now = self.context.clock.now_us();
                    self.count(|c| &c.datagrams);
                    let Some(server) = server.filter(|s| *s == from) else {
                        self.count(|c| &c.not_allowed);
                        continue;
                    };
                    let datagram = &self.buf[..n];
                    let packet = match JamPacket::parse(datagram) {
                        Ok(p) => p,
                        Err(e) => {
                            self.context.shared.io.count_malformed(&e);
                            continue;
                        }
                    };
                    let header = *packet.header();
                    last_server_time[k] = header.server_time;
                    let seat = &self.context.shared.seats[k];
                    if header.client_id == seat.client_id {
                        if packet.is_header_only() {
                            note_round_trip(seat, now, header.client_time);
                        }
                        continue;
                    }
                    if packet.is_header_only() {
                        continue;
                    }
                    // Another seat of ours, heard through the room, is in the seat's
                    // mix but not a remote jammer of the node.
                    let local = self.context.shared.is_own(header.client_id);
                    let heard = lock(tracker).heard(now, &header, packet.frames(), local);
                    let stream = match heard {
                        Heard::Joined { stream } => {
                            if !local {
                                (self.context.events)(Event::JamMemberJoined {
                                    node: self.context.node.clone(),
                                    client_id: header.client_id,
                                    address: server.to_string(),
                                });
                            }
                            stream
                        }
                        Heard::Continues { stream } => stream,
                        Heard::Refused { interleaved: true } => {
                            self.count(|c| &c.intruder);
                            self.log_intruder(now, header.client_id, server);
                            continue;
                        }
                        Heard::Refused { interleaved: false } => {
                            self.count(|c| &c.out_of_stream);
                            continue;
                        }
                    };
                    if links[k]
                        .recv
                        .push(Datagram::from_source(datagram, now, stream))
                        .is_err()
                    {
                        self.count(|c| &c.receive_ring_full);
                    }
                }
            }
            let now = self.context.clock.now_us();
            let mut gone = Vec::new();
            lock(tracker).expire(now, |j| gone.push(j));
            for jammer in gone.into_iter().filter(|j| !j.local) {
                (self.context.events)(Event::JamMemberLeft {
                    node: self.context.node.clone(),
                    client_id: jammer.client_id,
                    address: server.map_or_else(|| room_server.name(), |s| s.to_string()),
                    reason: "timeout".into(),
                });
            }
        }
    }

    // ------------------------------------------------------------------------ host

    fn run_host(&mut self, socket: &UdpSocket, mut link: SocketLink, room: &Mutex<RoomCore>) {
        let mut readable = [false];
        let mut events: Vec<Event> = Vec::new();
        let wake = Arc::clone(&self.context.wake);
        let mut fds = poll_set(&wake, &[socket]);
        while !self.stop.is_stopped() {
            while let Ok(mut d) = link.send.pop() {
                let len = usize::from(d.len);
                let now = self.context.clock.now_us();
                let room = lock(room);
                if stamp_server_fields(&mut d.bytes[..len], now, room.beat_at(now)).is_err() {
                    continue;
                }
                for member in room.members() {
                    match socket.send_to(d.as_bytes(), member.addr) {
                        Ok(_) => self.count(|c| &c.sent),
                        Err(_) => self.count(|c| &c.send_errors),
                    }
                }
                if let Some(seat) = self.context.shared.seats.get(usize::from(d.seat)) {
                    seat.packets_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            wait(&mut fds, &wake, &mut readable);
            if readable[0] {
                loop {
                    let (n, from) = match socket.recv_from(&mut self.buf) {
                        Ok(received) => received,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            self.count(|c| &c.send_errors);
                            break;
                        }
                    };
                    self.count(|c| &c.datagrams);
                    let now = self.context.clock.now_us();
                    let mut room = lock(room);
                    let (sent, errors) = (
                        &self.context.shared.io.sent,
                        &self.context.shared.io.send_errors,
                    );
                    let datagram = &mut self.buf[..n];
                    let outcome = room.handle_datagram(now, from, datagram, |to, bytes| {
                        match socket.send_to(bytes, to) {
                            Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    });
                    match outcome {
                        RoomOutcome::Forwarded { joined, .. } => {
                            self.count(|c| &c.forwarded);
                            if joined {
                                events.push(Event::JamMemberJoined {
                                    node: self.context.node.clone(),
                                    client_id: room.member(from).map_or(0, |m| m.client_id),
                                    address: from.to_string(),
                                });
                            }
                            let stream = room.member(from).map_or(0, |m| m.stream);
                            if n > HEADER_LEN
                                && link
                                    .recv
                                    .push(Datagram::from_source(&self.buf[..n], now, stream))
                                    .is_err()
                            {
                                self.count(|c| &c.receive_ring_full);
                            }
                        }
                        RoomOutcome::Dropped(DropReason::Malformed(e)) => {
                            self.context.shared.io.count_malformed(&e);
                        }
                        RoomOutcome::Dropped(DropReason::NotAllowed) => {
                            self.count(|c| &c.not_allowed);
                        }
                        RoomOutcome::Dropped(DropReason::RoomFull) => self.count(|c| &c.room_full),
                        RoomOutcome::Dropped(DropReason::RateLimited) => {
                            self.count(|c| &c.rate_limited);
                            if let Some(suppressed) = self.rate_log.check(now) {
                                tracing::warn!(
                                    node = %self.context.node,
                                    address = %from,
                                    client_id = room.member(from).map_or(0, |m| m.client_id),
                                    rate = room.config().max_packet_rate.map_or(0, |r| r.get()),
                                    not_logged = suppressed,
                                    "jam member over its packet rate: excess dropped"
                                );
                            }
                        }
                        RoomOutcome::Dropped(DropReason::Intruder { client_id }) => {
                            self.count(|c| &c.intruder);
                            self.log_intruder(now, client_id, from);
                        }
                        _ => {}
                    }
                    self.departures(&mut room, &mut events);
                }
            }
            {
                let mut room = lock(room);
                room.expire(self.context.clock.now_us());
                self.departures(&mut room, &mut events);
            }
            for event in events.drain(..) {
                (self.context.events)(event);
            }
        }
    }

    fn departures(&self, room: &mut RoomCore, events: &mut Vec<Event>) {
        for (member, why) in room.drain_departed() {
            events.push(Event::JamMemberLeft {
                node: self.context.node.clone(),
                client_id: member.client_id,
                address: member.addr.to_string(),
                reason: match why {
                    Departure::Expired => "timeout",
                    _ => "removed",
                }
                .into(),
            });
        }
    }
}

/// Feeds one echo of our own packet into the seat's smoothed round trip.
fn note_round_trip(seat: &super::shared::SeatShared, now_us: u64, client_time: u64) {
    seat.echoes.fetch_add(1, Ordering::Relaxed);
    if client_time == 0 || client_time > now_us || now_us - client_time > MAX_ROUND_TRIP_US {
        return;
    }
    let sample = (now_us - client_time) as f64;
    let smoothed = match seat.round_trip() {
        Some(avg) => avg as f64 + (sample - avg as f64) * RTT_SMOOTHING,
        None => sample,
    };
    seat.round_trip_us
        .store(smoothed.round() as u64, Ordering::Relaxed);
}

/// Remote jammer by client_id, for the service's status.
pub fn remote_jammers(tracker: &Mutex<RemoteTracker>) -> HashMap<u32, RemoteJammer> {
    lock(tracker)
        .jammers()
        .map(|j| (j.client_id, j.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(client_id: u32, sequence: u32) -> JamHeader {
        JamHeader {
            client_id,
            sequence,
            ..JamHeader::default()
        }
    }

    #[test]
    fn tracker_counts_each_packet_once_and_expires_after_a_second() {
        let mut t = RemoteTracker::default();
        assert_eq!(
            t.heard(0, &header(7, 0), 128, false),
            Heard::Joined { stream: 1 }
        );
        assert_eq!(
            t.heard(10, &header(7, 0), 128, false),
            Heard::Continues { stream: 1 },
            "second seat's copy"
        );
        assert_eq!(
            t.heard(2_667, &header(7, 1), 128, false),
            Heard::Continues { stream: 1 }
        );
        assert_eq!(
            t.heard(8_000, &header(7, 3), 128, false),
            Heard::Continues { stream: 1 }
        );
        let j = t.jammers().next().unwrap();
        assert_eq!((j.packets, j.sequence_gaps), (3, 1));
        let mut gone = Vec::new();
        t.expire(1_007_999, |j| gone.push(j.client_id));
        assert!(gone.is_empty());
        t.expire(1_008_000, |j| gone.push(j.client_id));
        assert_eq!(gone, [7]);
        assert!(t.jammers().next().is_none());
        // Back: a new stream.
        assert_eq!(
            t.heard(1_010_000, &header(7, 0), 128, false),
            Heard::Joined { stream: 2 }
        );
    }

    #[test]
    fn tracker_keeps_a_jammers_stream_and_refuses_a_second_one_under_its_client_id() {
        let mut t = RemoteTracker::default();
        let packet = |client_id: u32, sequence: u32, at: u64| JamHeader {
            client_id,
            sequence,
            client_time: at,
            ..JamHeader::default()
        };
        // The jammer plays for a second, then an intruder joins in at the same rate.
        for k in 0..375u32 {
            let at = 1_000_000 + u64::from(k) * 2_667;
            t.heard(at, &packet(7, 5_000 + k, at), 128, false);
        }
        let mut refused = [0u32; 2];
        for k in 375..750u32 {
            let at = 1_000_000 + u64::from(k) * 2_667;
            assert_eq!(
                t.heard(at, &packet(7, 5_000 + k, at), 128, false),
                Heard::Continues { stream: 1 }
            );
            match t.heard(at + 1_000, &packet(7, k - 375, at + 1_000), 128, false) {
                Heard::Refused { interleaved } => refused[usize::from(interleaved)] += 1,
                other => panic!("the intruder's packet was taken: {other:?}"),
            }
        }
        assert_eq!(
            refused,
            [1, 374],
            "interleaved from the jammer's next packet"
        );
        let j = t.jammers().next().unwrap();
        assert_eq!((j.packets, j.sequence_gaps, j.stream), (750, 0, 1));
        // The node's own seats heard through the room are tracked, not listed.
        t.heard(3_000_000, &packet(501, 0, 3_000_000), 128, true);
        assert_eq!(t.jammers().count(), 1);
    }

    #[test]
    fn log_limiter_lets_one_line_through_per_interval_and_counts_the_rest() {
        let mut l = LogLimiter::new(10_000_000);
        assert_eq!(l.check(5), Some(0));
        assert_eq!(l.check(6), None);
        assert_eq!(l.check(10_000_004), None);
        assert_eq!(l.check(10_000_005), Some(2));
        assert_eq!(l.check(20_000_005), Some(0));
    }

    #[test]
    fn round_trips_are_smoothed_and_implausible_ones_ignored() {
        let shared = JamShared::new(1, 1, 1, 1);
        let seat = &shared.seats[0];
        note_round_trip(seat, 10_000, 8_000);
        assert_eq!(seat.round_trip(), Some(2_000));
        note_round_trip(seat, 20_000, 17_000);
        assert_eq!(seat.round_trip(), Some(2_063));
        note_round_trip(seat, 20_000, 30_000);
        note_round_trip(seat, 20_000_000, 1);
        assert_eq!(seat.round_trip(), Some(2_063));
        assert_eq!(seat.echoes.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn room_servers_given_as_addresses_need_no_lookup() {
        let v4 = RoomServer::new("127.0.0.1", 7891, true).unwrap();
        assert_eq!(v4.addr(), Some("127.0.0.1:7891".parse().unwrap()));
        assert_eq!(v4.resolve(0), v4.addr());
        assert!(
            RoomServer::new("::1", 7891, true).is_err(),
            "family mismatch"
        );
        let named = RoomServer::new("jam.invalid", 7891, true).unwrap();
        assert_eq!(named.addr(), None, "not looked up before a seat is used");
        assert_eq!(named.name(), "jam.invalid:7891");
        assert_eq!(named.error(), None);
    }

    #[test]
    fn datagrams_copy_at_most_the_ring_slot() {
        let d = Datagram::copy_of(&[1, 2, 3], 9);
        assert_eq!(d.as_bytes(), &[1, 2, 3]);
        assert_eq!(d.time_us, 9);
        let big = vec![5u8; 3000];
        assert_eq!(
            Datagram::copy_of(&big, 0).as_bytes().len(),
            MAX_DATAGRAM_LEN
        );
    }
}
