//! The authoritative DNS server of the gateway's AoDNS broadcasts: one hickory
//! [`Server`] on UDP and TCP (the same address), answering for every registered zone
//! through [`AodnsHandler`].
//!
//! It starts when the first broadcast is created (a gateway without broadcasts opens no
//! DNS port) and runs on its own small tokio runtime, so a query flood competes with
//! calls and the API only for CPU, never for their runtimes' threads. A ticker on the
//! same runtime samples every zone's query count once a second for the
//! queries-per-second figures.
//!
//! While the gateway restores its stored broadcasts the server is held
//! ([`DnsServer::hold`]): the sockets are bound but not read, so early queries wait in
//! the kernel's buffers and are answered once every restored zone is in place, instead
//! of some getting REFUSED (which crashes the reference client) for a zone not yet
//! restored.
//!
//! The server also keeps the broadcasts deleted lately ([`RetiringBroadcast`]): their
//! zones stay served for a grace period, and a broadcast created again on the same
//! domain meanwhile takes over.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_server::Server;
use hickory_server::proto::rr::Name;
use tokio_util::sync::CancellationToken;

use super::handler::{AodnsHandler, ServerCounters};
use super::retiring::RetiringBroadcast;
use super::zone::Zones;
use crate::dns::config::DnsConfig;
use codecs::aodns::ZoneRoot;

/// Responses a TCP connection may have queued (hickory's per-connection buffer).
const TCP_RESPONSE_BUFFER: usize = 32;
/// Tries to find a port free for both UDP and TCP when the configured port is 0.
const BIND_ATTEMPTS: usize = 20;
/// Socket receive buffer asked for the UDP socket, so bursts are not dropped by the
/// kernel before the server reads them.
const UDP_RECV_BUFFER: usize = 1 << 20;

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsServerError {
    /// A socket could not be bound.
    #[error("cannot listen for DNS on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server's runtime could not be built.
    #[error("cannot start the DNS server's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The server was stopped (the gateway is shutting down).
    #[error("the DNS server has been stopped")]
    Stopped,
}

struct Running {
    runtime: tokio::runtime::Runtime,
    shutdown: CancellationToken,
    addr: SocketAddr,
}

enum State {
    Idle,
    /// Bound while held: sockets open, nothing read yet.
    Bound {
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        addr: SocketAddr,
    },
    Running(Running),
    Stopped,
}

/// The DNS server. See the module documentation.
pub struct DnsServer {
    config: DnsConfig,
    zones: Arc<Zones>,
    counters: Arc<ServerCounters>,
    state: Mutex<State>,
    /// Bind, but do not serve yet (see the module documentation).
    held: std::sync::atomic::AtomicBool,
    /// Deleted broadcasts whose zones are still served.
    retiring: Mutex<Vec<RetiringBroadcast>>,
    /// The owner's token: the server's tasks stop when it is cancelled, too.
    parent: CancellationToken,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("listen", &self.config.listen)
            .field("addr", &self.addr())
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// A server for `config`, not yet listening, whose tasks also stop when `parent`
    /// is cancelled.
    pub fn new(config: DnsConfig, parent: CancellationToken) -> DnsServer {
        DnsServer {
            parent,
            config,
            zones: Arc::new(Zones::new()),
            counters: Arc::new(ServerCounters::default()),
            state: Mutex::new(State::Idle),
            held: std::sync::atomic::AtomicBool::new(false),
            retiring: Mutex::new(Vec::new()),
        }
    }

    /// The name server the zones name in their NS and SOA records.
    pub fn nameserver(&self) -> &Name {
        self.config.nameserver.name()
    }

    /// Until [`DnsServer::release`], a start binds the sockets but reads nothing.
    pub fn hold(&self) {
        self.held.store(true, Ordering::Relaxed);
    }

    /// Serves, if a start was held.
    pub fn release(&self) -> Result<(), DnsServerError> {
        self.held.store(false, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let State::Bound { .. } = &*state
            && let State::Bound { udp, tcp, addr } = std::mem::replace(&mut *state, State::Idle)
        {
            *state = State::Running(self.serve(udp, tcp, addr)?);
        }
        Ok(())
    }

    /// Keeps a deleted broadcast's zone served for its grace period (or ends it at
    /// once if the server is stopped); forgets those whose grace period is over.
    pub fn add_retiring(&self, broadcast: RetiringBroadcast) {
        let stopped = matches!(
            *self.state.lock().unwrap_or_else(PoisonError::into_inner),
            State::Stopped
        );
        if stopped {
            broadcast.stop();
            return;
        }
        let finished = {
            let mut retiring = self.retiring.lock().unwrap_or_else(PoisonError::into_inner);
            let (finished, going_on) = std::mem::take(&mut *retiring)
                .into_iter()
                .partition(RetiringBroadcast::is_finished);
            *retiring = going_on;
            retiring.push(broadcast);
            finished
        };
        for broadcast in finished {
            broadcast.stop();
        }
    }

    /// The deleted broadcast of `root` still in its grace period, if any.
    pub fn take_retiring(&self, root: &ZoneRoot) -> Option<RetiringBroadcast> {
        let mut retiring = self.retiring.lock().unwrap_or_else(PoisonError::into_inner);
        let index = retiring.iter().position(|b| b.root() == root)?;
        Some(retiring.swap_remove(index))
    }

    /// The zones it answers for.
    pub fn zones(&self) -> &Arc<Zones> {
        &self.zones
    }

    /// Server-wide counters.
    pub fn counters(&self) -> &ServerCounters {
        &self.counters
    }

    /// The bound address, once started.
    pub fn addr(&self) -> Option<SocketAddr> {
        match &*self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::Running(running) => Some(running.addr),
            State::Bound { addr, .. } => Some(*addr),
            _ => None,
        }
    }

    /// Starts the server if it is not running (only binds it while held); returns its
    /// address. Blocking (binds sockets, builds a runtime); call it off async threads.
    pub fn ensure_started(&self) -> Result<SocketAddr, DnsServerError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &*state {
            State::Running(running) => return Ok(running.addr),
            State::Bound { addr, .. } => return Ok(*addr),
            State::Stopped => return Err(DnsServerError::Stopped),
            State::Idle => {}
        }
        let (udp, tcp) = bind_pair(self.config.listen)?;
        let addr = udp.local_addr().map_err(|source| DnsServerError::Bind {
            addr: self.config.listen,
            source,
        })?;
        *state = if self.held.load(Ordering::Relaxed) {
            State::Bound { udp, tcp, addr }
        } else {
            State::Running(self.serve(udp, tcp, addr)?)
        };
        Ok(addr)
    }

    /// Starts serving on bound sockets.
    fn serve(
        &self,
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        addr: SocketAddr,
    ) -> Result<Running, DnsServerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.config.worker_threads.max(1))
            .thread_name("telepatch-dns")
            .enable_all()
            .build()
            .map_err(DnsServerError::Runtime)?;
        let shutdown = self.parent.child_token();
        let handler = AodnsHandler::new(
            Arc::clone(&self.zones),
            self.config.rate_limit_qps,
            self.config.rate_limit_burst,
            self.config.max_udp_payload,
            Arc::clone(&self.counters),
        );
        let tcp_timeout = Duration::from_millis(self.config.tcp_timeout_ms);
        let bind_error = |source| DnsServerError::Bind { addr, source };
        {
            let _context = runtime.enter();
            let udp = tokio::net::UdpSocket::from_std(udp).map_err(bind_error)?;
            let tcp = tokio::net::TcpListener::from_std(tcp).map_err(bind_error)?;
            let mut server = Server::new(handler);
            server.register_socket(udp);
            server.register_listener(tcp, tcp_timeout, TCP_RESPONSE_BUFFER);
            let stop = shutdown.clone();
            runtime.spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {
                        if let Err(e) = server.shutdown_gracefully().await {
                            tracing::debug!(error = %e, "DNS server stopped with an error");
                        }
                    }
                    result = server.block_until_done() => {
                        if let Err(e) = result {
                            tracing::error!(error = %e, "DNS server failed");
                        }
                    }
                }
            });
            runtime.spawn(rate_ticker(Arc::clone(&self.zones), shutdown.clone()));
        }
        tracing::info!(%addr, "DNS server ready");
        Ok(Running {
            runtime,
            shutdown,
            addr,
        })
    }

    /// Stops serving and releases the sockets, ending every grace period. Later
    /// starts fail. Blocking.
    pub fn stop(&self) {
        let previous = std::mem::replace(
            &mut *self.state.lock().unwrap_or_else(PoisonError::into_inner),
            State::Stopped,
        );
        let retiring =
            std::mem::take(&mut *self.retiring.lock().unwrap_or_else(PoisonError::into_inner));
        for broadcast in retiring {
            broadcast.stop();
        }
        if let State::Running(running) = previous {
            running.shutdown.cancel();
            running.runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// Publishes the server-wide counters into the current `metrics` recorder (per-broadcast
    /// ones come from each broadcast's node service).
    pub fn publish_metrics(&self) {
        if self.addr().is_none() {
            return;
        }
        let c = &self.counters;
        for (name, help, value) in [
            (
                "telepatch_dns_requests_total",
                "DNS requests that reached the AoDNS handler.",
                c.requests.load(Ordering::Relaxed),
            ),
            (
                "telepatch_dns_refused_total",
                "DNS queries refused: outside every broadcast's zone, or not class IN.",
                c.refused.load(Ordering::Relaxed),
            ),
            (
                "telepatch_dns_errors_total",
                "DNS requests answered FORMERR, NOTIMP or BADVERS.",
                c.errors.load(Ordering::Relaxed),
            ),
            (
                "telepatch_dns_rate_limited_total",
                "DNS queries dropped by the per-address rate limit.",
                c.rate_limited.load(Ordering::Relaxed),
            ),
        ] {
            metrics::describe_counter!(name, help);
            metrics::counter!(name).absolute(value);
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let state = std::mem::replace(
            self.state.get_mut().unwrap_or_else(PoisonError::into_inner),
            State::Stopped,
        );
        if let State::Running(running) = state {
            running.shutdown.cancel();
            // Dropping a runtime inside another runtime's async context would panic.
            running.runtime.shutdown_background();
        }
        for broadcast in self
            .retiring
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            broadcast.stop();
        }
    }
}

/// Binds UDP and TCP on the same address; with port 0, on the same free port.
fn bind_pair(
    listen: SocketAddr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsServerError> {
    let mut last_error = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = udp_socket(listen).map_err(|source| DnsServerError::Bind {
            addr: listen,
            source,
        })?;
        let port = udp
            .local_addr()
            .map_err(|source| DnsServerError::Bind {
                addr: listen,
                source,
            })?
            .port();
        let tcp_addr = SocketAddr::new(listen.ip(), port);
        match std::net::TcpListener::bind(tcp_addr) {
            Ok(tcp) => {
                let nonblocking = tcp.set_nonblocking(true);
                nonblocking.map_err(|source| DnsServerError::Bind {
                    addr: tcp_addr,
                    source,
                })?;
                return Ok((udp, tcp));
            }
            // Another program holds the TCP side of the port the OS gave us for UDP.
            Err(e) if listen.port() == 0 => last_error = Some(e),
            Err(source) => {
                return Err(DnsServerError::Bind {
                    addr: tcp_addr,
                    source,
                });
            }
        }
    }
    Err(DnsServerError::Bind {
        addr: listen,
        source: last_error.unwrap_or_else(|| std::io::Error::other("no free port")),
    })
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Samples every zone's query count once a second.
async fn rate_ticker(zones: Arc<Zones>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        for zone in zones.all() {
            zone.sample_rate(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::UdpSocket;

    use hickory_server::proto::op::{Message, Query};
    use hickory_server::proto::rr::RecordType;

    use super::*;
    use crate::dns::zone::{Zone, ZoneSnapshot, sequence_record};

    fn sequence_query(id: u16) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = id;
        message.add_query(Query::query(
            Name::from_ascii("sequence.a.example.").unwrap(),
            RecordType::TXT,
        ));
        message.to_vec().unwrap()
    }

    #[test]
    fn a_held_server_answers_queries_sent_while_held_once_released() {
        let server = DnsServer::new(
            DnsConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..DnsConfig::default()
            },
            CancellationToken::new(),
        );
        server.hold();
        let addr = server.ensure_started().unwrap();
        // A listener asks before its zone is restored: nothing is read yet, so it is
        // neither refused nor told NODATA.
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        client.send_to(&sequence_query(7), addr).unwrap();
        let mut buffer = [0u8; 4096];
        assert!(
            client.recv_from(&mut buffer).is_err(),
            "answered while held"
        );
        // The zone comes back (with its pack of silence listed), then the server serves.
        let root = ZoneRoot::parse("a.example").unwrap();
        let zone = Arc::new(Zone::new(root.clone(), server.nameserver()).unwrap());
        let name = Name::from_ascii(root.sequence_name()).unwrap();
        zone.publish(ZoneSnapshot {
            sequence: Some(sequence_record(&name, "q:yEDjaKjAlBYEtp")),
            listed: Some((0, 2)),
            packs: BTreeMap::new(),
        });
        server.zones().insert(zone).unwrap();
        server.release().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (len, _) = client.recv_from(&mut buffer).unwrap();
        let reply = Message::from_vec(&buffer[..len]).unwrap();
        assert_eq!(reply.metadata.id, 7, "the query sent while held");
        assert_eq!(reply.answers.len(), 1, "{reply:?}");
        server.stop();
    }
}
