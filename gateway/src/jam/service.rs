//! The control-plane side of a jam node: builds it (sockets, rings, engine node, socket
//! thread), and reports and changes it for the API (status, metrics, per-jammer mix,
//! live settings, seat activity).

use std::any::Any;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use api::control::NodeConfig;
use api::jam::{JamChannel2, JamMixEntry, JamMixSetting, JamMode, JamSpec};
use api::model::NodeRef;
use codecs::jam::{AllowList, RoomConfig, RoomCore, Tempo};
use serde_json::{Value, json};

use super::io::{
    EventSink, IoContext, IoPlan, IoThread, JamClock, ROOM_RING_DATAGRAMS, RemoteTracker,
    RoomServer, SEAT_RING_DATAGRAMS, Wake, link, open_socket, remote_jammers,
};
use super::node::{JamNode, JamNodeError, JamNodeParts, NodeMode, port_names};
use super::shared::{JamShared, JammerSlot};
use crate::engine::stats::LevelMeter;
use crate::node_service::{MetricFamilies, MetricKind, NodeService};
use crate::patchbay::NodeSpec;

/// Remote jammers a joined seat mixes: rtjam's client has 11 remote slots (rtjam.md §3).
pub const JOIN_MIX_SEATS: usize = codecs::jam::mix::DEFAULT_REMOTE_SEATS;
/// Network members a hosted room's seats can hear at once (fewer with a smaller cap).
pub const HOST_MIX_SEATS: usize = 16;

/// Why a jam node could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JamError {
    /// The room server's name did not resolve.
    #[error("cannot resolve the room server {host}:{port}: {reason}")]
    Resolve {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// Why.
        reason: String,
    },
    /// A socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The allow-list did not parse (validation should have caught it).
    #[error(transparent)]
    Allow(#[from] codecs::jam::room::InvalidNetwork),
    /// The tempo was out of range (validation should have caught it).
    #[error(transparent)]
    Tempo(#[from] codecs::jam::room::InvalidTempo),
    /// The engine node refused its settings.
    #[error(transparent)]
    Node(#[from] JamNodeError),
    /// The eventfd or the thread could not be created.
    #[error("cannot start the jam socket thread: {0}")]
    Thread(std::io::Error),
}

enum Side {
    Join {
        server: Arc<RoomServer>,
        local: Vec<SocketAddr>,
        tracker: Arc<Mutex<RemoteTracker>>,
    },
    Host {
        addr: SocketAddr,
        room: Arc<Mutex<RoomCore>>,
    },
}

/// A jam node's I/O side and control handle. See the module documentation.
pub struct JamService {
    spec: Mutex<JamSpec>,
    shared: Arc<JamShared>,
    side: Side,
    io: IoThread,
    clock: Arc<dyn JamClock>,
}

/// A built jam node, ready for the [`crate::kinds`] seam.
pub struct Built {
    /// Ports and name.
    pub spec: NodeSpec,
    /// The engine node.
    pub node: JamNode,
    /// The service.
    pub service: Arc<JamService>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn bind(addr: SocketAddr) -> Result<UdpSocket, JamError> {
    open_socket(addr).map_err(|source| JamError::Bind { addr, source })
}

fn room_config(spec: &JamSpec) -> Result<RoomConfig, JamError> {
    Ok(RoomConfig {
        tempo: Tempo::new(spec.tempo_bpm)?,
        max_members: NonZeroUsize::new(usize::from(spec.max_members)),
        allow: spec.allow.join(",").parse::<AllowList>()?,
        max_packet_rate: NonZeroU32::new(spec.max_packet_rate),
        // The seats' client_ids are the room's own: refused from the network.
        local_client_ids: (0..u32::from(spec.seats))
            .map(|k| spec.client_id.saturating_add(k))
            .collect(),
        ..RoomConfig::default()
    })
}

/// Builds a jam node: binds its sockets, starts its socket thread, and returns the
/// engine node and service to add to the patchbay.
pub fn build(
    node: &NodeRef,
    spec: &JamSpec,
    block: usize,
    events: EventSink,
    clock: Arc<dyn JamClock>,
) -> Result<Built, JamError> {
    let aux = spec.channel2 == JamChannel2::Input;
    let seats = spec.seats;
    let wake = Arc::new(Wake::new().map_err(JamError::Thread)?);
    let (mode, mix_seats, shared, engine_links, plan, side) = match spec.mode {
        JamMode::Join => {
            let (host, port) = spec.server.clone().unwrap_or_default();
            let server = Arc::new(RoomServer::new(&host, port, spec.listen.is_ipv4()).map_err(
                |reason| JamError::Resolve {
                    host: host.clone(),
                    port,
                    reason,
                },
            )?);
            let mut sockets = Vec::new();
            let mut local = Vec::new();
            for k in 0..seats {
                let mut addr = spec.listen;
                if addr.port() != 0 {
                    addr.set_port(addr.port() + k);
                }
                let socket = bind(addr)?;
                local.push(socket.local_addr().unwrap_or(addr));
                sockets.push(socket);
            }
            let shared = Arc::new(JamShared::new(
                spec.client_id,
                seats,
                usize::from(seats),
                JOIN_MIX_SEATS,
            ));
            let (engine_links, socket_links): (Vec<_>, Vec<_>) =
                (0..seats).map(|_| link(SEAT_RING_DATAGRAMS)).unzip();
            let tracker = Arc::new(Mutex::new(RemoteTracker::default()));
            let plan = IoPlan::Join {
                server: Arc::clone(&server),
                sockets,
                links: socket_links,
                tracker: Arc::clone(&tracker),
            };
            let side = Side::Join {
                server,
                local,
                tracker,
            };
            (
                NodeMode::Join,
                JOIN_MIX_SEATS,
                shared,
                engine_links,
                plan,
                side,
            )
        }
        JamMode::Host => {
            let socket = bind(spec.listen)?;
            let addr = socket.local_addr().unwrap_or(spec.listen);
            let room = Arc::new(Mutex::new(RoomCore::new(room_config(spec)?)));
            let mix_seats = usize::from(spec.max_members).min(HOST_MIX_SEATS);
            let shared = Arc::new(JamShared::new(spec.client_id, seats, 1, mix_seats));
            let (engine_link, socket_link) = link(ROOM_RING_DATAGRAMS);
            let plan = IoPlan::Host {
                socket,
                link: socket_link,
                room: Arc::clone(&room),
            };
            (
                NodeMode::Host,
                mix_seats,
                shared,
                vec![engine_link],
                plan,
                Side::Host { addr, room },
            )
        }
    };
    shared.mix.replace(&spec.mix);
    shared
        .suppress_silence
        .store(spec.suppress_silence, Ordering::Relaxed);
    let engine_node = JamNode::new(JamNodeParts {
        mode,
        block,
        aux,
        mix_seats,
        shared: Arc::clone(&shared),
        links: engine_links,
        wake: Arc::clone(&wake),
        clock: Arc::clone(&clock),
    })?;
    let io = IoThread::spawn(
        plan,
        IoContext {
            node: node.clone(),
            shared: Arc::clone(&shared),
            wake,
            clock: Arc::clone(&clock),
            events,
        },
    )
    .map_err(JamError::Thread)?;
    let (outputs, inputs) = port_names(seats, aux);
    Ok(Built {
        spec: NodeSpec {
            node: node.clone(),
            outputs,
            inputs,
            owner: None,
        },
        node: engine_node,
        service: Arc::new(JamService {
            spec: Mutex::new(spec.clone()),
            shared,
            side,
            io,
            clock,
        }),
    })
}

/// µs to ms, to the µs.
fn ms(us: f64) -> f64 {
    us.round() / 1_000.0
}

fn level_json(meter: &LevelMeter) -> Value {
    let level = meter.read();
    json!({ "peak_dbfs": level.peak_dbfs, "rms_dbfs": level.rms_dbfs })
}

/// One jammer's jitter-buffer view: the first receiver that seats it.
fn find_slot(shared: &JamShared, client_id: u32) -> Option<&JammerSlot> {
    shared
        .jammers
        .iter()
        .flatten()
        .find(|slot| slot.client() == Some(client_id))
}

impl JamService {
    /// The room's UDP address (host) or seat 1's local address (join).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.side {
            Side::Host { addr, .. } => Some(*addr),
            Side::Join { local, .. } => local.first().copied(),
        }
    }

    /// client_ids in the room now: the network members (or remote jammers) and this
    /// node's active seats.
    pub fn present(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = match &self.side {
            Side::Host { room, .. } => lock(room).members().iter().map(|m| m.client_id).collect(),
            Side::Join { tracker, .. } => remote_jammers(tracker).into_keys().collect(),
        };
        ids.extend(
            self.shared
                .seats
                .iter()
                .filter(|s| s.active.load(Ordering::Relaxed))
                .map(|s| s.client_id),
        );
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The mix: stored settings and the jammers in the room.
    pub fn mix_entries(&self) -> Vec<JamMixEntry> {
        let configured = lock(&self.spec).mix.clone();
        let present = self.present();
        let mut entries: Vec<JamMixEntry> = configured
            .iter()
            .map(|s| JamMixEntry {
                client_id: s.client_id,
                gain_db: s.gain_db,
                mute: s.mute,
                pan: s.pan,
                configured: true,
                present: present.contains(&s.client_id),
            })
            .collect();
        for id in present {
            if !entries.iter().any(|e| e.client_id == id) {
                entries.push(JamMixEntry {
                    client_id: id,
                    gain_db: 0.0,
                    mute: false,
                    pan: 0.0,
                    configured: false,
                    present: true,
                });
            }
        }
        entries.sort_by_key(|e| e.client_id);
        entries
    }

    /// Stores and applies one jammer's setting (validated by the caller).
    pub fn set_mix(&self, setting: JamMixSetting) -> Result<(), api::jam::MixError> {
        let mut spec = lock(&self.spec);
        if let Some(existing) = spec
            .mix
            .iter_mut()
            .find(|s| s.client_id == setting.client_id)
        {
            *existing = setting;
        } else if spec.mix.len() >= api::jam::MAX_MIX_SETTINGS {
            return Err(api::jam::MixError::TooManySettings);
        } else {
            spec.mix.push(setting);
        }
        if self.shared.mix.set(&setting) {
            Ok(())
        } else {
            Err(api::jam::MixError::TableFull)
        }
    }

    /// Forgets one jammer's setting.
    pub fn reset_mix(&self, client_id: u32) {
        lock(&self.spec).mix.retain(|s| s.client_id != client_id);
        self.shared.mix.remove(client_id);
    }

    /// Applies `spec` live if only live settings changed (tempo, member cap, allow-list,
    /// silence policy, mix); false if the node must be rebuilt.
    pub fn reconfigure_spec(&self, new: &JamSpec) -> bool {
        let mut spec = lock(&self.spec);
        let structural = |s: &JamSpec| {
            (
                s.mode,
                s.server.clone(),
                s.listen,
                s.client_id,
                s.seats,
                s.channel2,
            )
        };
        if structural(&spec) != structural(new) {
            return false;
        }
        if let Side::Host { room, .. } = &self.side {
            let Ok(config) = room_config(new) else {
                return false;
            };
            let mut room = lock(room);
            room.set_tempo(config.tempo);
            room.set_max_members(config.max_members);
            room.set_max_packet_rate(config.max_packet_rate);
            if spec.allow != new.allow {
                room.set_allow_list(config.allow);
            }
        }
        self.shared
            .suppress_silence
            .store(new.suppress_silence, Ordering::Relaxed);
        if spec.mix != new.mix {
            self.shared.mix.replace(&new.mix);
        }
        *spec = new.clone();
        true
    }

    fn seats_json(&self) -> Vec<Value> {
        let local = match &self.side {
            Side::Join { local, .. } => local.clone(),
            Side::Host { .. } => Vec::new(),
        };
        self.shared
            .seats
            .iter()
            .enumerate()
            .map(|(k, seat)| {
                json!({
                    "seat": k + 1,
                    "client_id": seat.client_id,
                    "active": seat.active.load(Ordering::Relaxed),
                    "local_address": local.get(k).map(ToString::to_string),
                    "round_trip_ms": seat.round_trip().map(|us| ms(us as f64)),
                    "echoes": seat.echoes.load(Ordering::Relaxed),
                    "packets_queued": seat.packets_queued.load(Ordering::Relaxed),
                    "packets_sent": seat.packets_sent.load(Ordering::Relaxed),
                    "packets_suppressed": seat.packets_suppressed.load(Ordering::Relaxed),
                    "send_ring_full": seat.send_ring_full.load(Ordering::Relaxed),
                    "input_level": level_json(&seat.input_level),
                    "output_level": level_json(&seat.output_level),
                })
            })
            .collect()
    }

    /// A member's entry: what the room knows (address, round trip, sequence gaps) plus
    /// what the engine knows (buffer, losses, levels) plus its mix.
    fn member_json(
        &self,
        client_id: u32,
        address: Option<String>,
        local_seat: Option<usize>,
        round_trip_us: Option<f64>,
        packets: Option<u64>,
        sequence_gaps: Option<u64>,
    ) -> Value {
        let gains = self.shared.mix.gains(client_id);
        let setting = lock(&self.spec)
            .mix
            .iter()
            .find(|s| s.client_id == client_id)
            .copied()
            .unwrap_or(JamMixSetting::unity(client_id));
        let mut member = json!({
            "client_id": client_id,
            "address": address,
            "local": local_seat.is_some(),
            "seat": local_seat.map(|k| k + 1),
            "round_trip_ms": round_trip_us.map(ms),
            "packets": packets,
            "sequence_gaps": sequence_gaps,
            "gain_db": setting.gain_db,
            "mute": gains.mute,
            "pan": gains.pan,
        });
        if let Some(slot) = find_slot(&self.shared, client_id) {
            let rate = f64::from(codecs::jam::packet::SAMPLE_RATE.hz());
            let lost = slot.lost.load(Ordering::Relaxed);
            let late = slot.late.load(Ordering::Relaxed);
            let buffer = json!({
                "buffer_ms": ms(f64::from(slot.depth_samples.load(Ordering::Relaxed)) * 1e6 / rate),
                "target_ms": ms(f64::from(slot.target_us.load(Ordering::Relaxed))),
                "jitter_ms": ms(f64::from(slot.jitter_us.load(Ordering::Relaxed))),
                "drops": lost + late,
                "lost": lost,
                "late": late,
                "underruns": slot.underruns.load(Ordering::Relaxed),
                "overruns": slot.overruns.load(Ordering::Relaxed),
                "reordered": slot.reordered.load(Ordering::Relaxed),
                "duplicates": slot.duplicates.load(Ordering::Relaxed),
                "level": level_json(&slot.levels[0]),
                "level_ch2": level_json(&slot.levels[1]),
            });
            if let (Some(m), Value::Object(b)) = (member.as_object_mut(), buffer) {
                m.extend(b);
            }
        } else if let (Some(m), Some(seat)) = (
            member.as_object_mut(),
            local_seat.and_then(|k| self.shared.seats.get(k)),
        ) {
            // A seat of a hosted room: no network, no jitter buffer.
            m.insert("level".into(), level_json(&seat.input_level));
        }
        member
    }

    fn members_json(&self) -> Vec<Value> {
        let mut members = Vec::new();
        match &self.side {
            Side::Host { room, .. } => {
                let snapshot: Vec<_> = lock(room)
                    .members()
                    .iter()
                    .map(|m| {
                        (
                            m.client_id,
                            m.addr,
                            m.round_trip_us,
                            m.packets,
                            m.sequence_gaps,
                            m.rate_limited,
                        )
                    })
                    .collect();
                for (id, addr, rtt, packets, gaps, rate_limited) in snapshot {
                    let mut member = self.member_json(
                        id,
                        Some(addr.to_string()),
                        None,
                        rtt,
                        Some(packets),
                        Some(gaps),
                    );
                    if let Some(m) = member.as_object_mut() {
                        m.insert("rate_limited".into(), json!(rate_limited));
                    }
                    members.push(member);
                }
                for (k, seat) in self.shared.seats.iter().enumerate() {
                    if seat.active.load(Ordering::Relaxed) {
                        members.push(self.member_json(
                            seat.client_id,
                            None,
                            Some(k),
                            None,
                            Some(seat.packets_queued.load(Ordering::Relaxed)),
                            None,
                        ));
                    }
                }
            }
            Side::Join {
                server, tracker, ..
            } => {
                let mut jammers: Vec<_> = remote_jammers(tracker).into_values().collect();
                jammers.sort_by_key(|j| j.joined_us);
                let address = server
                    .addr()
                    .map_or_else(|| server.name(), |a| a.to_string());
                for j in jammers {
                    members.push(self.member_json(
                        j.client_id,
                        Some(address.clone()),
                        None,
                        None,
                        Some(j.packets),
                        Some(j.sequence_gaps),
                    ));
                }
            }
        }
        members
    }

    fn counters_json(&self) -> Value {
        let io = &self.shared.io;
        let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "datagrams": c(&io.datagrams),
            "dropped": io.dropped(),
            "too_short": c(&io.too_short),
            "too_long": c(&io.too_long),
            "odd_length": c(&io.odd_length),
            "ragged_audio": c(&io.ragged_audio),
            "not_allowed": c(&io.not_allowed),
            "room_full": c(&io.room_full),
            "rate_limited": c(&io.rate_limited),
            "intruder": c(&io.intruder),
            "out_of_stream": c(&io.out_of_stream),
            "forwarded": c(&io.forwarded),
            "sent": c(&io.sent),
            "send_errors": c(&io.send_errors),
            "receive_ring_full": c(&io.receive_ring_full),
        })
    }
}

impl NodeService for JamService {
    fn status(&self) -> Value {
        let spec = lock(&self.spec).clone();
        let mut status = json!({
            "mode": match spec.mode { JamMode::Join => "join", JamMode::Host => "host" },
            "seats": self.seats_json(),
            "members": self.members_json(),
            "counters": self.counters_json(),
            "suppress_silence": self.shared.suppress_silence.load(Ordering::Relaxed),
        });
        let extra = match &self.side {
            Side::Host { addr, room } => {
                let room = lock(room);
                let now = self.clock.now_us();
                json!({
                    "address": addr.to_string(),
                    "tempo_bpm": room.tempo().bpm(),
                    "beat": room.beat_at(now),
                    "max_members": spec.max_members,
                    "max_packet_rate": spec.max_packet_rate,
                    "allow": spec.allow,
                })
            }
            Side::Join { server, .. } => {
                let rtts: Vec<u64> = self
                    .shared
                    .seats
                    .iter()
                    .filter_map(|s| s.round_trip())
                    .collect();
                let round_trip = (!rtts.is_empty())
                    .then(|| ms(rtts.iter().sum::<u64>() as f64 / rtts.len() as f64));
                json!({
                    "server": server.addr().map_or_else(|| server.name(), |a| a.to_string()),
                    "server_error": server.error(),
                    "round_trip_ms": round_trip,
                })
            }
        };
        if let (Some(s), Value::Object(e)) = (status.as_object_mut(), extra) {
            s.extend(e);
        }
        status
    }

    fn publish_metrics(&self, node: &NodeRef, families: &mut MetricFamilies) {
        let io = &self.shared.io;
        let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        let members = match &self.side {
            Side::Host { room, .. } => lock(room).members().len(),
            Side::Join { tracker, .. } => remote_jammers(tracker).len(),
        };
        families.sample(
            "telepatch_jam_members",
            MetricKind::Gauge,
            "Network members of a hosted room, or remote jammers heard in a joined one.",
            node,
            &[],
            members as f64,
        );
        let active = self
            .shared
            .seats
            .iter()
            .filter(|s| s.active.load(Ordering::Relaxed))
            .count();
        families.sample(
            "telepatch_jam_seats_active",
            MetricKind::Gauge,
            "Seats of a jam node with something patched to them.",
            node,
            &[],
            active as f64,
        );
        families.sample(
            "telepatch_jam_datagrams_received_total",
            MetricKind::Counter,
            "UDP datagrams a jam node received.",
            node,
            &[],
            c(&io.datagrams),
        );
        for (reason, counter) in [
            ("too_short", &io.too_short),
            ("too_long", &io.too_long),
            ("odd_length", &io.odd_length),
            ("ragged_audio", &io.ragged_audio),
            ("not_allowed", &io.not_allowed),
            ("room_full", &io.room_full),
            ("rate_limited", &io.rate_limited),
            ("intruder", &io.intruder),
            ("out_of_stream", &io.out_of_stream),
            ("receive_ring_full", &io.receive_ring_full),
        ] {
            families.sample(
                "telepatch_jam_datagrams_dropped_total",
                MetricKind::Counter,
                "Datagrams a jam node dropped, by reason.",
                node,
                &[("reason", reason)],
                c(counter),
            );
        }
        families.sample(
            "telepatch_jam_packets_forwarded_total",
            MetricKind::Counter,
            "Datagrams a hosted room forwarded to its other members.",
            node,
            &[],
            c(&io.forwarded),
        );
        families.sample(
            "telepatch_jam_datagrams_sent_total",
            MetricKind::Counter,
            "UDP datagrams a jam node sent (copies, echoes, seat packets).",
            node,
            &[],
            c(&io.sent),
        );
        families.sample(
            "telepatch_jam_send_errors_total",
            MetricKind::Counter,
            "Sends the kernel refused.",
            node,
            &[],
            c(&io.send_errors),
        );
        for seat in &self.shared.seats {
            let id = seat.client_id.to_string();
            if let Some(us) = seat.round_trip() {
                families.sample(
                    "telepatch_jam_round_trip_seconds",
                    MetricKind::Gauge,
                    "Smoothed round trip to the room: a joined seat's, from the room's echoes.",
                    node,
                    &[("client_id", &id)],
                    us as f64 / 1e6,
                );
            }
        }
        if let Side::Host { room, .. } = &self.side {
            for m in lock(room).members() {
                if let Some(us) = m.round_trip_us {
                    families.sample(
                        "telepatch_jam_round_trip_seconds",
                        MetricKind::Gauge,
                        "Smoothed round trip to the room: a joined seat's, from the room's echoes.",
                        node,
                        &[("client_id", &m.client_id.to_string())],
                        us / 1e6,
                    );
                }
            }
        }
        let rate = f64::from(codecs::jam::packet::SAMPLE_RATE.hz());
        let mut seen = HashMap::new();
        for slot in self.shared.jammers.iter().flatten() {
            let Some(id) = slot.client() else { continue };
            if seen.insert(id, ()).is_some() {
                continue;
            }
            let id = id.to_string();
            let labels = [("client_id", id.as_str())];
            families.sample(
                "telepatch_jam_buffer_seconds",
                MetricKind::Gauge,
                "Jitter-buffer depth of a remote jammer.",
                node,
                &labels,
                f64::from(slot.depth_samples.load(Ordering::Relaxed)) / rate,
            );
            families.sample(
                "telepatch_jam_lost_packets_total",
                MetricKind::Counter,
                "Packets of a remote jammer concealed with silence (lost or too late).",
                node,
                &labels,
                (slot.lost.load(Ordering::Relaxed) + slot.late.load(Ordering::Relaxed)) as f64,
            );
            families.sample(
                "telepatch_jam_underruns_total",
                MetricKind::Counter,
                "Times a remote jammer's jitter buffer ran dry.",
                node,
                &labels,
                slot.underruns.load(Ordering::Relaxed) as f64,
            );
        }
    }

    fn stop(&self) {
        self.io.stop();
    }

    fn ports_patched(&self, ports: &[String]) {
        for (k, seat) in self.shared.seats.iter().enumerate() {
            let names = [
                format!("in{}", k + 1),
                format!("out{}", k + 1),
                format!("aux{}", k + 1),
            ];
            let active = ports.iter().any(|p| names.contains(p));
            seat.active.store(active, Ordering::Relaxed);
        }
    }

    fn reconfigure(&self, node: &NodeRef, config: &NodeConfig) -> bool {
        config
            .jam_fields()
            .and_then(|fields| fields.spec(node.name()).ok())
            .is_some_and(|spec| self.reconfigure_spec(&spec))
    }

    fn seating(&self) -> Option<crate::node_service::Seating> {
        // A seat is the jammer's only while something is patched to it: the caller's
        // patches end with the call, and an operator may move a seat by hand.
        Some(crate::node_service::Seating {
            prefixes: &["in", "out", "aux"],
            held_until_hangup: false,
            removed_when_empty: false,
        })
    }

    fn into_any(self: Arc<Self>) -> Option<Arc<dyn Any + Send + Sync>> {
        Some(self)
    }
}
