//! SAP (RFC 2974, aes67.md §7): announcing our transmit flows and listening for
//! everyone's, on one thread.
//!
//! Announcer: each announced flow sends its SDP to 239.255.255.255:9875 (TTL 255) from
//! its own interface when it starts, then every `sap_interval_s` (30 s by default, as
//! AES67 devices do), and at once when its SDP changes (the media clock's grandmaster or
//! domain, hence `a=ts-refclk`, changed): first a deletion of the old version, then the
//! new SDP with a bumped `o=` version and a new message id hash. Removing a flow (or
//! shutting down) sends its deletion three times, 5 ms apart, as aes67-linux-daemon does.
//!
//! Nothing is announced before [`SapService::release`]: the gateway releases the
//! announcements only once every listener it needs is bound and start-up has succeeded,
//! so a gateway that fails to start leaves no session in anyone's directory. A flow
//! withdrawn before the release sends no deletion (nobody heard of it).
//!
//! Listener: a socket joined to the SAP group on `sap_interface` feeds a
//! [`SapDirectory`] (sans-IO: deletions, modifications, expiry after `max(10 × interval,
//! 1 hour)`). Receive flows that subscribed by session name are told whenever the session
//! they follow appears, changes or goes away.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use api::control::SapSessionInfo;
use codecs::sap::{DirectoryEvent, SapDirectory, SapPacket, SapSession};

use super::TxFlow;
use super::net;
use crate::threads::{OwnedThread, Priority, StopSignal};

/// Deletions sent for a removed flow (aes67-linux-daemon's `max_deletions`).
const DELETION_REPEATS: u32 = codecs::sap::DELETION_REPEATS;
/// Pause between repeated deletions.
const DELETION_SPACING: Duration = Duration::from_millis(5);
/// How long the listener waits for a packet before doing its other work.
const TURN: Duration = Duration::from_millis(50);

/// A receive flow following a SAP session by name.
pub trait SapSubscriber: Send + Sync {
    /// The session's current SDP, or `None` when it was deleted or expired.
    fn session_changed(&self, sdp: Option<&str>);
}

/// SAP counters (for `/metrics`).
#[derive(Debug, Default)]
pub struct SapStats {
    /// Announcements sent.
    pub announcements: AtomicU64,
    /// Deletions sent.
    pub deletions: AtomicU64,
    /// Sends that failed.
    pub send_errors: AtomicU64,
    /// Packets heard on the SAP group.
    pub received: AtomicU64,
    /// Packets heard that were not SAP.
    pub malformed: AtomicU64,
}

struct Announced {
    flow: Arc<TxFlow>,
    socket: UdpSocket,
    next_due: Instant,
    /// Whether an announcement went out (so a deletion is owed).
    sent: bool,
}

struct Watcher {
    id: u64,
    session: String,
    target: Weak<dyn SapSubscriber>,
    /// (origin, hash) of the session last reported, if any.
    current: Option<(IpAddr, u16)>,
}

struct State {
    announced: Vec<Announced>,
    directory: SapDirectory,
    watchers: Vec<Watcher>,
    listener_error: Option<String>,
}

struct Shared {
    interval: Duration,
    listen_on: Option<Ipv4Addr>,
    started: Instant,
    /// Announcements may go out (see [`SapService::release`]).
    released: AtomicBool,
    state: Mutex<State>,
    wake: Condvar,
    stats: SapStats,
    next_watcher: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The SAP thread and its state.
pub struct SapService {
    shared: Arc<Shared>,
    thread: OwnedThread,
}

/// The `s=` of an SDP.
pub fn session_name(sdp: &str) -> Option<&str> {
    sdp.split('\n')
        .map(str::trim)
        .find_map(|line| line.strip_prefix("s="))
}

fn attribute<'a>(sdp: &'a str, name: &str) -> Option<&'a str> {
    sdp.split('\n').map(str::trim).find_map(|line| {
        line.strip_prefix("a=")?
            .strip_prefix(name)?
            .strip_prefix(':')
    })
}

impl SapService {
    /// Starts the SAP thread: announcing every `interval`, listening on `listen_on` (if
    /// given) with room for `max_sessions`.
    pub fn start(
        interval: Duration,
        listen_on: Option<Ipv4Addr>,
        max_sessions: usize,
    ) -> std::io::Result<SapService> {
        let shared = Arc::new(Shared {
            interval,
            listen_on,
            started: Instant::now(),
            released: AtomicBool::new(false),
            state: Mutex::new(State {
                announced: Vec::new(),
                directory: SapDirectory::new(max_sessions),
                watchers: Vec::new(),
                listener_error: None,
            }),
            wake: Condvar::new(),
            stats: SapStats::default(),
            next_watcher: AtomicU64::new(1),
        });
        let thread_shared = Arc::clone(&shared);
        let waking = Arc::clone(&shared);
        let thread = OwnedThread::spawn("telepatch-sap", Priority::Normal, move |stop| {
            run(&thread_shared, &stop)
        })?
        .with_wake(move || waking.wake.notify_all());
        Ok(SapService { shared, thread })
    }

    /// The counters.
    pub fn stats(&self) -> &SapStats {
        &self.shared.stats
    }

    /// Why the listener is not running, if it failed to start.
    pub fn listener_error(&self) -> Option<String> {
        self.shared.state().listener_error.clone()
    }

    /// Lets announcements go out: every flow announced so far is announced at once, and
    /// later ones as they come.
    pub fn release(&self) {
        self.shared.released.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
    }

    /// Starts announcing `flow`: its first announcement leaves now (or at the release).
    pub fn announce(&self, flow: Arc<TxFlow>) -> std::io::Result<()> {
        let socket = net::sap_sender(flow.settings.interface)?;
        let mut state = self.shared.state();
        let hash = unique_hash(&state.announced, &flow, flow.msg_id_hash());
        flow.set_msg_id_hash(hash);
        let released = self.shared.released.load(Ordering::Relaxed);
        let now = Instant::now();
        if released {
            send_announcement(&self.shared.stats, &socket, &flow);
        }
        state.announced.push(Announced {
            flow,
            socket,
            next_due: if released {
                now + self.shared.interval
            } else {
                now
            },
            sent: released,
        });
        Ok(())
    }

    /// Stops announcing flow `id` and sends its deletion (three times).
    pub fn withdraw(&self, id: u64) {
        let removed = {
            let mut state = self.shared.state();
            state
                .announced
                .iter()
                .position(|a| a.flow.id == id)
                .map(|index| state.announced.swap_remove(index))
        };
        if let Some(announced) = removed {
            withdrawn(&self.shared.stats, &announced);
        }
    }

    /// Follows the session named `session` for `target`; reports it at once if heard.
    /// Returns a key for [`unwatch`](Self::unwatch).
    pub fn watch(&self, session: &str, target: Weak<dyn SapSubscriber>) -> u64 {
        let id = self.shared.next_watcher.fetch_add(1, Ordering::Relaxed);
        let mut state = self.shared.state();
        state.watchers.push(Watcher {
            id,
            session: session.to_owned(),
            target,
            current: None,
        });
        notify_watchers(&mut state);
        id
    }

    /// Stops following.
    pub fn unwatch(&self, id: u64) {
        self.shared.state().watchers.retain(|w| w.id != id);
    }

    /// The current SDP of the session named `session`, if heard.
    pub fn session_sdp(&self, session: &str) -> Option<String> {
        self.shared
            .state()
            .directory
            .sessions()
            .iter()
            .find(|s| session_name(&s.sdp) == Some(session))
            .map(|s| s.sdp.clone())
    }

    /// Every session heard, oldest first, for the API.
    pub fn sessions(&self) -> Vec<SapSessionInfo> {
        let now = self.shared.started.elapsed();
        let wall = SystemTime::now();
        self.shared
            .state()
            .directory
            .sessions()
            .iter()
            .map(|s| session_info(s, now, wall))
            .collect()
    }

    /// Stops the thread, and deletes any flow still announced (they are normally
    /// withdrawn one by one before; this covers every other way out).
    pub fn stop(&self) {
        let _ = self.thread.stop();
        let left = std::mem::take(&mut self.shared.state().announced);
        for announced in &left {
            withdrawn(&self.shared.stats, announced);
        }
    }
}

impl Drop for SapService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends the deletion of a flow no longer announced (three times), if it was announced.
fn withdrawn(stats: &SapStats, announced: &Announced) {
    if !announced.sent {
        return;
    }
    let (hash, origin_line) = announced.flow.deletion();
    for repeat in 0..DELETION_REPEATS {
        if repeat > 0 {
            std::thread::sleep(DELETION_SPACING);
        }
        send_deletion(
            stats,
            &announced.socket,
            hash,
            announced.flow.settings.interface,
            &origin_line,
        );
    }
}

/// A message id hash for `flow` that no other announced flow from the same origin uses.
fn unique_hash(announced: &[Announced], flow: &TxFlow, mut hash: u16) -> u16 {
    let taken = |h: u16| {
        announced.iter().any(|a| {
            a.flow.id != flow.id
                && a.flow.settings.interface == flow.settings.interface
                && a.flow.msg_id_hash() == h
        })
    };
    while hash == 0 || taken(hash) {
        hash = hash.wrapping_add(1);
    }
    hash
}

fn send_announcement(stats: &SapStats, socket: &UdpSocket, flow: &TxFlow) {
    let (hash, sdp) = flow.announcement();
    let packet = SapPacket::announce(hash, flow.settings.interface, sdp.as_bytes());
    send(stats, socket, &packet, &stats.announcements);
}

fn send_deletion(
    stats: &SapStats,
    socket: &UdpSocket,
    hash: u16,
    origin: Ipv4Addr,
    origin_line: &str,
) {
    let packet = SapPacket::deletion(hash, origin, origin_line.as_bytes());
    send(stats, socket, &packet, &stats.deletions);
}

fn send(stats: &SapStats, socket: &UdpSocket, packet: &SapPacket<'_>, counter: &AtomicU64) {
    let mut buffer = vec![0u8; packet.encoded_len()];
    let sent = packet
        .write_to(&mut buffer)
        .ok()
        .map(|n| socket.send_to(&buffer[..n], net::SAP_GROUP));
    match sent {
        Some(Ok(_)) => {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            stats.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Tells every watcher whose session appeared, changed or went away.
fn notify_watchers(state: &mut State) {
    let State {
        watchers,
        directory,
        ..
    } = state;
    watchers.retain(|w| w.target.strong_count() > 0);
    for watcher in watchers.iter_mut() {
        let found = directory
            .sessions()
            .iter()
            .find(|s| session_name(&s.sdp) == Some(watcher.session.as_str()));
        let key = found.map(|s| (s.origin, s.msg_id_hash));
        if key != watcher.current {
            watcher.current = key;
            if let Some(target) = watcher.target.upgrade() {
                target.session_changed(found.map(|s| s.sdp.as_str()));
            }
        }
    }
}

fn run(shared: &Shared, stop: &StopSignal) {
    let listener = match shared.listen_on {
        None => None,
        Some(interface) => match net::sap_listener(interface, TURN) {
            Ok(socket) => {
                tracing::info!(%interface, "SAP listener joined 239.255.255.255:9875");
                Some(socket)
            }
            Err(e) => {
                tracing::warn!(%interface, error = %e, "cannot listen for SAP announcements");
                shared.state().listener_error = Some(e.to_string());
                None
            }
        },
    };
    let mut datagram = vec![0u8; 65_536];
    let mut last_expiry = Instant::now();
    while !stop.is_stopped() {
        match &listener {
            Some(socket) => {
                if let Ok((n, _from)) = socket.recv_from(&mut datagram) {
                    handle(shared, &datagram[..n]);
                }
            }
            None => {
                let state = shared.state();
                let _ = shared.wake.wait_timeout(state, TURN);
            }
        }
        let mut state = shared.state();
        let now = Instant::now();
        let released = shared.released.load(Ordering::Relaxed);
        for index in (0..state.announced.len()).filter(|_| released) {
            let flow = Arc::clone(&state.announced[index].flow);
            if let Some((old_hash, old_origin_line)) = flow.refresh() {
                // A changed SDP: the old version's deletion, then the new one at once.
                let hash = unique_hash(&state.announced, &flow, flow.msg_id_hash());
                flow.set_msg_id_hash(hash);
                if state.announced[index].sent {
                    send_deletion(
                        &shared.stats,
                        &state.announced[index].socket,
                        old_hash,
                        flow.settings.interface,
                        &old_origin_line,
                    );
                }
                state.announced[index].next_due = now;
            }
            let announced = &mut state.announced[index];
            if now >= announced.next_due {
                send_announcement(&shared.stats, &announced.socket, &flow);
                announced.next_due = now + shared.interval;
                announced.sent = true;
            }
        }
        if now.duration_since(last_expiry) >= Duration::from_secs(1) {
            last_expiry = now;
            let elapsed = shared.started.elapsed();
            if state.directory.expire(elapsed) > 0 {
                notify_watchers(&mut state);
            }
        }
    }
}

fn handle(shared: &Shared, datagram: &[u8]) {
    shared.stats.received.fetch_add(1, Ordering::Relaxed);
    let now = shared.started.elapsed();
    let mut state = shared.state();
    match state.directory.handle(datagram, now) {
        Ok(DirectoryEvent::Added | DirectoryEvent::Updated { .. } | DirectoryEvent::Deleted) => {
            notify_watchers(&mut state);
        }
        Ok(DirectoryEvent::Refreshed | DirectoryEvent::Ignored(_)) => {}
        Err(_) => {
            shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The API's view of a heard session.
fn session_info(session: &SapSession, now: Duration, wall: SystemTime) -> SapSessionInfo {
    let parsed = session.info();
    let age = now.saturating_sub(session.last_heard);
    let last_heard = wall.checked_sub(age).unwrap_or(wall);
    let (group, port, channels, format, unusable) = match &parsed {
        Ok(info) => {
            let packet_time = match (info.packet_time(), info.ptime_us) {
                (Some(p), _) => format!(", {} ms", p.sdp_ptime()),
                (None, Some(us)) => format!(", {} ms", f64::from(us) / 1000.0),
                (None, None) => String::new(),
            };
            (
                Some(info.group.to_string()),
                Some(info.port),
                Some(info.channels),
                Some(format!(
                    "{}/{}/{}{packet_time}",
                    info.encoding, info.sample_rate, info.channels
                )),
                info.stream_format().err().map(|e| e.to_string()),
            )
        }
        Err(e) => (None, None, None, None, Some(e.to_string())),
    };
    let sdp_version = parsed
        .as_ref()
        .ok()
        .and_then(|info| info.origin.as_ref())
        .map(|o| format!("{} {}", o.session_id, o.session_version));
    SapSessionInfo {
        name: session_name(&session.sdp).map(str::to_owned),
        origin: session.origin.to_string(),
        msg_id_hash: session.msg_id_hash,
        sdp_version,
        group,
        port,
        channels,
        format,
        ts_refclk: attribute(&session.sdp, "ts-refclk").map(str::to_owned),
        unusable,
        last_heard: chrono::DateTime::<chrono::Utc>::from(last_heard),
        age_s: age.as_secs_f64(),
        expires_in_s: session.expires_at().saturating_sub(now).as_secs_f64(),
        announcements: session.announcements,
        sdp: session.sdp.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_fields_for_the_listing() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=Studio A\r\nc=IN IP4 239.69.1.1/15\r\nt=0 0\r\nm=audio 5004 RTP/AVP 98\r\na=rtpmap:98 L24/48000/4\r\na=ptime:0.25\r\na=ts-refclk:ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0\r\n";
        assert_eq!(session_name(sdp), Some("Studio A"));
        assert_eq!(
            attribute(sdp, "ts-refclk"),
            Some("ptp=IEEE1588-2008:00-1D-C1-FF-FE-12-34-56:0")
        );
        let session = SapSession {
            origin: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            msg_id_hash: 0x1234,
            sdp: sdp.into(),
            first_heard: Duration::from_secs(5),
            last_heard: Duration::from_secs(40),
            announcements: 2,
            interval: Some(Duration::from_secs(35)),
        };
        let info = session_info(&session, Duration::from_secs(100), SystemTime::now());
        assert_eq!(info.name.as_deref(), Some("Studio A"));
        assert_eq!(info.group.as_deref(), Some("239.69.1.1"));
        assert_eq!(info.format.as_deref(), Some("L24/48000/4, 0.25 ms"));
        assert_eq!(info.sdp_version.as_deref(), Some("1 2"));
        assert_eq!(info.unusable, None);
        assert_eq!(info.age_s, 60.0);
        // max(10 × 35 s, 1 h) after it was last heard.
        assert_eq!(info.expires_in_s, 3600.0 - 60.0);
        let l16 = sdp.replace("L24/48000/4", "L16/44100/2");
        let session = SapSession {
            sdp: l16,
            ..session
        };
        let info = session_info(&session, Duration::from_secs(100), SystemTime::now());
        assert!(info.unusable.unwrap().contains("44100"));
    }
}
