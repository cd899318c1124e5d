//! The switchboard: the control plane's topology rules, without I/O.
//!
//! It owns the [`Patchbay`] (the model the engine mirrors), every node's control half,
//! what the API configured, and who holds which seat, and it applies the rules that tie
//! them together: installing and removing nodes, patching, the lobby (a call with no
//! deliberate patch hears the hold music), seating callers in conferences and jam rooms
//! with one allocator, and clearing up after a call. It opens no socket or file, starts
//! no thread or task and reads no clock; what it decides that the world must hear about
//! goes into its outbox as [`Effect`]s, in order, which the gateway carries out after
//! releasing the lock (publishing events, updating call handles, stopping services).
//! Tests drive it together with an engine stepped on virtual time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use api::control::{CallState, Event, NodeConfig, PatchInfo};
use api::model::{NodeKind, NodeRef, PortRef};

use crate::engine::Node;
use crate::kinds::BuiltNode;
use crate::node_service::NodeService;
use crate::patchbay::{NodeEntry, NodeSpec, PatchEntry, PatchRole, Patchbay, PatchbayError};

/// Something the switchboard decided that the world outside it must act on.
pub enum Effect {
    /// Publish this event.
    Event(Event),
    /// The call should now show this state (the lobby rule decided it).
    CallState(NodeRef, CallState),
    /// This removed node's service must be stopped (outside the lock: it may block).
    Stop(Arc<dyn NodeService>),
}

/// Why a caller could not be seated.
#[derive(Debug, thiserror::Error)]
pub enum SeatError {
    /// There is no such node, or it does not seat callers.
    #[error("{node} does not seat callers")]
    NotSeating {
        /// The node.
        node: NodeRef,
    },
    /// Every seat is taken.
    #[error("{node} is full ({seats} seats)")]
    Full {
        /// The conference or jam room.
        node: NodeRef,
        /// Its seats.
        seats: usize,
    },
    /// The patchbay refused a seat's patch.
    #[error(transparent)]
    Patchbay(#[from] PatchbayError),
}

/// See the module documentation.
pub struct Switchboard {
    patchbay: Patchbay,
    /// Nodes created through the API: their configuration and whether it is stored.
    configured: HashMap<NodeRef, (NodeConfig, bool)>,
    /// The control half of every node that is not a call.
    services: HashMap<NodeRef, Arc<dyn NodeService>>,
    /// Seat k-1 -> the call holding it, for nodes whose seats are held until hangup.
    seat_holders: HashMap<NodeRef, Vec<Option<NodeRef>>>,
    /// The player whose `out` callers in the lobby hear.
    hold: Option<NodeRef>,
    outbox: Vec<Effect>,
}

impl Switchboard {
    /// A switchboard over `patchbay`; callers in the lobby hear `hold`'s `out` whenever
    /// that node exists.
    pub fn new(patchbay: Patchbay, hold: Option<NodeRef>) -> Switchboard {
        Switchboard {
            patchbay,
            configured: HashMap::new(),
            services: HashMap::new(),
            seat_holders: HashMap::new(),
            hold,
            outbox: Vec::new(),
        }
    }

    /// What was decided since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.outbox)
    }

    fn publish(&mut self, event: Event) {
        self.outbox.push(Effect::Event(event));
    }

    /// The topology model (read-only).
    pub fn patchbay(&self) -> &Patchbay {
        &self.patchbay
    }

    /// Adds a call's node (calls have no service: their sessions are their I/O).
    pub fn add_call(&mut self, spec: NodeSpec, node: Box<dyn Node>) -> Result<(), PatchbayError> {
        self.patchbay.add_node(spec, node)
    }

    /// Adds a built node and its control half. If the patchbay refuses the node, the
    /// service is stopped and the error returned.
    pub fn install(&mut self, built: BuiltNode) -> Result<(), PatchbayError> {
        let BuiltNode {
            spec,
            engine,
            service,
        } = built;
        let node = spec.node.clone();
        match self.patchbay.add_node(spec, engine) {
            Ok(()) => {
                self.services.insert(node, service);
                Ok(())
            }
            Err(e) => {
                self.outbox.push(Effect::Stop(service));
                Err(e)
            }
        }
    }

    /// Removes a node that is not a call, with its patches: announces both, stops its
    /// service, and brings the calls it was patched to back in line with the lobby.
    pub fn remove_node(&mut self, node: &NodeRef) -> Result<(), PatchbayError> {
        let removed = self.uninstall(node)?;
        self.publish(Event::NodeRemoved { node: node.clone() });
        self.refresh_lobby(&affected_calls(&removed));
        Ok(())
    }

    /// Takes `node` out with its patches and service (announcing the patches' removal).
    fn uninstall(&mut self, node: &NodeRef) -> Result<Vec<PatchEntry>, PatchbayError> {
        let patches = self.patchbay.remove_node(node)?;
        self.configured.remove(node);
        self.seat_holders.remove(node);
        if let Some(service) = self.services.remove(node) {
            self.outbox.push(Effect::Stop(service));
        }
        for patch in &patches {
            self.publish(Event::PatchRemoved { id: patch.id });
        }
        Ok(patches)
    }

    /// Patches `source` to `sink` and announces it. The lobby is not refreshed: callers
    /// making several patches refresh it once at the end.
    pub fn connect(
        &mut self,
        source: PortRef,
        sink: PortRef,
        gain_db: f32,
        role: PatchRole,
        owner: Option<NodeRef>,
    ) -> Result<PatchEntry, PatchbayError> {
        let patch = self.patchbay.connect(source, sink, gain_db, role, owner)?;
        self.publish(Event::PatchCreated {
            patch: patch_info(&patch),
        });
        Ok(patch)
    }

    /// Removes a patch and announces it.
    pub fn disconnect(&mut self, id: u64) -> Result<PatchEntry, PatchbayError> {
        let patch = self.patchbay.disconnect(id)?;
        self.publish(Event::PatchRemoved { id });
        Ok(patch)
    }

    /// Changes a patch's gain.
    pub fn set_patch_gain(&mut self, id: u64, gain_db: f32) -> Result<PatchEntry, PatchbayError> {
        self.patchbay.set_gain(id, gain_db)
    }

    /// Marks a patch as stored in the database.
    pub fn set_patch_persistent(
        &mut self,
        id: u64,
        persistent: bool,
    ) -> Result<PatchEntry, PatchbayError> {
        self.patchbay.set_persistent(id, persistent)
    }

    /// Seats `call` in the first free seat k of `node` (the one seat allocator of every
    /// kind that offers [`Seating`](crate::node_service::Seating)): the caller's voice
    /// to `in<k>` and `out<k>` to its ear, both owned by the call. A seat is free when
    /// nothing is patched to any of its ports and, where seats are held until hangup, no
    /// call holds it. Takes the call out of the lobby. Returns k.
    pub fn take_seat(&mut self, call: &NodeRef, node: &NodeRef) -> Result<usize, SeatError> {
        let not_seating = || SeatError::NotSeating { node: node.clone() };
        let seating = self
            .services
            .get(node)
            .and_then(|service| service.seating())
            .ok_or_else(not_seating)?;
        let seats = seat_count(&self.patchbay.node(node).ok_or_else(not_seating)?.inputs);
        let patched = patched_ports(&self.patchbay, node);
        let holders = self.seat_holders.get(node);
        // A seat held by a call that is still being seated counts as taken too.
        let held = |k: usize| {
            seating.held_until_hangup
                && holders.is_some_and(|h| h.get(k - 1).is_some_and(Option::is_some))
        };
        let k = free_seat(&patched, seats, seating.prefixes, held).ok_or(SeatError::Full {
            node: node.clone(),
            seats,
        })?;
        let (voice, ear) = seat(&mut self.patchbay, call, node, k)?;
        if seating.held_until_hangup {
            let holders = self.seat_holders.entry(node.clone()).or_default();
            if holders.len() < seats {
                holders.resize(seats, None);
            }
            holders[k - 1] = Some(call.clone());
        }
        for patch in [voice, ear] {
            self.publish(Event::PatchCreated {
                patch: patch_info(&patch),
            });
        }
        self.refresh_lobby(std::slice::from_ref(call));
        Ok(k)
    }

    /// Takes a call's node and everything it owns out, frees its seats, removes the
    /// nodes made for callers that it leaves empty, and brings the calls it was patched
    /// to back in line with the lobby.
    pub fn release_call(&mut self, call: &NodeRef) {
        let mut removed = Vec::new();
        match self.patchbay.remove_owned(call) {
            Ok((patches, nodes)) => {
                removed.extend(patches);
                for node in nodes {
                    if let Some(service) = self.services.remove(&node) {
                        self.outbox.push(Effect::Stop(service));
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot release the call's nodes"),
        }
        match self.patchbay.remove_node(call) {
            Ok(patches) => removed.extend(patches),
            Err(PatchbayError::UnknownNode { .. }) => {}
            Err(e) => tracing::error!(error = %e, "cannot remove the call node"),
        }
        for patch in &removed {
            self.publish(Event::PatchRemoved { id: patch.id });
        }
        let mut emptied = Vec::new();
        for (node, holders) in self.seat_holders.iter_mut() {
            for holder in holders.iter_mut() {
                if holder.as_ref() == Some(call) {
                    *holder = None;
                }
            }
            let removable = self
                .services
                .get(node)
                .and_then(|service| service.seating())
                .is_some_and(|seating| seating.removed_when_empty);
            if removable && holders.iter().all(Option::is_none) {
                emptied.push(node.clone());
            }
        }
        for node in &emptied {
            if let Ok(patches) = self.uninstall(node) {
                removed.extend(patches);
            }
        }
        let affected: Vec<NodeRef> = affected_calls(&removed)
            .into_iter()
            .filter(|c| c != call)
            .collect();
        self.refresh_lobby(&affected);
    }

    /// Brings each call's lobby patch in line with its other patches: a call with no
    /// deliberate patch hears the hold music; one with any loses it. Then tells every
    /// node service which of its ports are patched.
    pub fn refresh_lobby(&mut self, calls: &[NodeRef]) {
        let hold = self
            .hold
            .clone()
            .filter(|hold| self.patchbay.node(hold).is_some());
        for call in calls {
            if call.kind() != NodeKind::Call || self.patchbay.node(call).is_none() {
                continue;
            }
            let deliberate = self
                .patchbay
                .patches_of(call)
                .any(|p| p.role == PatchRole::Normal);
            let lobby_patch = self
                .patchbay
                .patches_of(call)
                .find(|p| p.role == PatchRole::Lobby)
                .map(|p| p.id);
            let state = if deliberate {
                CallState::Patched
            } else {
                CallState::Lobby
            };
            match (deliberate, lobby_patch, &hold) {
                (true, Some(id), _) => {
                    if self.patchbay.disconnect(id).is_err() {
                        continue;
                    }
                    self.publish(Event::PatchRemoved { id });
                }
                (false, None, Some(hold)) => {
                    match self.patchbay.connect(
                        hold.port("out"),
                        call.port("ear"),
                        0.0,
                        PatchRole::Lobby,
                        Some(call.clone()),
                    ) {
                        Ok(patch) => self.publish(Event::PatchCreated {
                            patch: patch_info(&patch),
                        }),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot patch hold music");
                            continue;
                        }
                    }
                }
                _ => {}
            }
            self.outbox.push(Effect::CallState(call.clone(), state));
        }
        self.sync_service_ports();
    }

    /// Tells every node service which of its ports are patched (a jam seat is in its
    /// room only while something is patched to it).
    fn sync_service_ports(&self) {
        for (node, service) in &self.services {
            let ports: Vec<String> = patched_ports(&self.patchbay, node).into_iter().collect();
            service.ports_patched(&ports);
        }
    }

    /// Ports of every node and the patches between them.
    pub fn snapshot(&self) -> (Vec<NodeEntry>, Vec<PatchEntry>) {
        (
            self.patchbay.nodes().into_iter().cloned().collect(),
            self.patchbay.patches().cloned().collect(),
        )
    }

    /// The control half of a node, if it has one.
    pub fn service(&self, node: &NodeRef) -> Option<Arc<dyn NodeService>> {
        self.services.get(node).cloned()
    }

    /// Every node's control half, in node order.
    pub fn services(&self) -> Vec<(NodeRef, Arc<dyn NodeService>)> {
        let mut services: Vec<_> = self
            .services
            .iter()
            .map(|(node, service)| (node.clone(), Arc::clone(service)))
            .collect();
        services.sort_by(|a, b| a.0.cmp(&b.0));
        services
    }

    /// Takes every service out (at shutdown).
    pub fn drain_services(&mut self) -> Vec<Arc<dyn NodeService>> {
        self.services.drain().map(|(_, service)| service).collect()
    }

    /// The calls holding seats of `node`, if its seats are held until hangup.
    pub fn seat_holders(&self, node: &NodeRef) -> Option<Vec<NodeRef>> {
        let service = self.services.get(node)?;
        if !service.seating()?.held_until_hangup {
            return None;
        }
        Some(
            self.seat_holders
                .get(node)
                .map(|holders| holders.iter().flatten().cloned().collect())
                .unwrap_or_default(),
        )
    }

    /// Records a node's API configuration and whether it is stored.
    pub fn set_configured(&mut self, node: &NodeRef, config: NodeConfig, persistent: bool) {
        self.configured.insert(node.clone(), (config, persistent));
    }

    /// A node's API configuration and whether it is stored, if it has one.
    pub fn configured(&self, node: &NodeRef) -> Option<&(NodeConfig, bool)> {
        self.configured.get(node)
    }

    /// The first configured node whose configuration satisfies `wanted`.
    pub fn find_configured(&self, wanted: impl Fn(&NodeConfig) -> bool) -> Option<NodeRef> {
        self.configured
            .iter()
            .find(|(_, (config, _))| wanted(config))
            .map(|(node, _)| node.clone())
    }
}

/// Seats of a node: one for each input `in<k>`.
fn seat_count(inputs: &[String]) -> usize {
    inputs
        .iter()
        .filter(|port| {
            port.strip_prefix("in")
                .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
        })
        .count()
}

/// The ports of `node` that anything is patched to.
fn patched_ports(patchbay: &Patchbay, node: &NodeRef) -> HashSet<String> {
    patchbay
        .patches_of(node)
        .flat_map(|p| [&p.source, &p.sink])
        .filter(|port| port.node() == node)
        .map(|port| port.port().to_owned())
        .collect()
}

/// The first free seat (1-based) of `seats`: a seat is free when `held(k)` says no call
/// holds it and nothing is patched to any of its ports (`<prefix><k>` for each prefix),
/// since a jingle or an AES67 return patched there is a member too.
fn free_seat(
    patched: &HashSet<String>,
    seats: usize,
    prefixes: &[&str],
    held: impl Fn(usize) -> bool,
) -> Option<usize> {
    (1..=seats).find(|&k| {
        !held(k)
            && prefixes
                .iter()
                .all(|prefix| !patched.contains(&format!("{prefix}{k}")))
    })
}

/// Patches `call` into seat `k` of `node`: its voice to `in<k>`, `out<k>` to its ear,
/// both owned by the call (so the seat frees itself when the call ends). Neither patch
/// is left behind if the other is refused.
fn seat(
    patchbay: &mut Patchbay,
    call: &NodeRef,
    node: &NodeRef,
    k: usize,
) -> Result<(PatchEntry, PatchEntry), PatchbayError> {
    let voice = patchbay.connect(
        call.port("voice"),
        node.port(&format!("in{k}")),
        0.0,
        PatchRole::Normal,
        Some(call.clone()),
    )?;
    match patchbay.connect(
        node.port(&format!("out{k}")),
        call.port("ear"),
        0.0,
        PatchRole::Normal,
        Some(call.clone()),
    ) {
        Ok(ear) => Ok((voice, ear)),
        Err(e) => {
            let _ = patchbay.disconnect(voice.id);
            Err(e)
        }
    }
}

/// The API's view of a patch.
pub fn patch_info(patch: &PatchEntry) -> PatchInfo {
    PatchInfo {
        id: patch.id,
        source: patch.source.clone(),
        sink: patch.sink.clone(),
        gain_db: patch.gain_db,
        role: match patch.role {
            PatchRole::Normal => api::control::PatchRole::Normal,
            PatchRole::Lobby => api::control::PatchRole::Lobby,
            PatchRole::Monitor => api::control::PatchRole::Monitor,
        },
        owner: patch.owner.clone(),
        persistent: patch.persistent,
    }
}

/// The calls among the ends of `patches`, each once.
pub fn affected_calls(patches: &[PatchEntry]) -> Vec<NodeRef> {
    let mut calls: Vec<NodeRef> = patches
        .iter()
        .flat_map(|p| [p.source.node(), p.sink.node()])
        .filter(|n| n.kind() == NodeKind::Call)
        .cloned()
        .collect();
    calls.sort();
    calls.dedup();
    calls
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::mpsc;

    use crate::engine::{Engine, Retired};

    /// Plays a constant on `out`.
    struct Constant(f32);

    impl Node for Constant {
        fn produce(&mut self, outputs: &mut [f32], block: usize) {
            outputs[..block].fill(self.0);
        }
        fn consume(&mut self, _inputs: &[f32], _block: usize) {}
    }

    /// Stands for a call: keeps the last block its `ear` received.
    struct Ear(Arc<Mutex<Vec<f32>>>);

    impl Node for Ear {
        fn produce(&mut self, _outputs: &mut [f32], _block: usize) {}
        fn consume(&mut self, inputs: &[f32], block: usize) {
            let mut last = self.0.lock().unwrap();
            last.clear();
            last.extend_from_slice(&inputs[..block]);
        }
    }

    struct Quiet;

    impl NodeService for Quiet {
        fn status(&self) -> serde_json::Value {
            serde_json::json!({})
        }
        fn stop(&self) {}
    }

    /// A switchboard and the engine it drives, both in the test's hands, with the hold
    /// player `player:hold` playing 0.25.
    fn board_and_engine() -> (Switchboard, Engine, mpsc::Receiver<Retired>) {
        let (commands, command_rx) = mpsc::channel();
        let (retired_tx, retired) = mpsc::channel();
        let engine = Engine::new(48, 64, command_rx, retired_tx);
        let hold = NodeRef::new(NodeKind::Player, "hold").unwrap();
        let mut board = Switchboard::new(Patchbay::new(48, commands), Some(hold.clone()));
        board
            .install(BuiltNode {
                spec: NodeSpec {
                    node: hold,
                    outputs: vec!["out".into()],
                    inputs: vec![],
                    owner: None,
                },
                engine: Box::new(Constant(0.25)),
                service: Arc::new(Quiet),
            })
            .unwrap();
        (board, engine, retired)
    }

    fn add_call(board: &mut Switchboard, id: u128) -> (NodeRef, Arc<Mutex<Vec<f32>>>) {
        let call = NodeRef::call(uuid::Uuid::from_u128(id));
        let ear = Arc::new(Mutex::new(Vec::new()));
        board
            .add_call(
                NodeSpec {
                    node: call.clone(),
                    outputs: vec!["voice".into(), "heard".into()],
                    inputs: vec!["ear".into()],
                    owner: None,
                },
                Box::new(Ear(Arc::clone(&ear))),
            )
            .unwrap();
        (call, ear)
    }

    fn run(engine: &mut Engine, blocks: usize) {
        for _ in 0..blocks {
            engine.process_block();
        }
    }

    fn heard(ear: &Arc<Mutex<Vec<f32>>>) -> f32 {
        let last = ear.lock().unwrap();
        assert!(last.iter().all(|&s| s == last[0]), "{last:?}");
        last[0]
    }

    /// The effects as text, for comparing sequences.
    fn describe(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|effect| match effect {
                Effect::Event(Event::PatchCreated { patch }) => {
                    format!("created {} -> {}", patch.source, patch.sink)
                }
                Effect::Event(Event::PatchRemoved { .. }) => "removed".into(),
                Effect::Event(Event::NodeRemoved { node }) => format!("node removed {node}"),
                Effect::Event(_) => "other event".into(),
                Effect::CallState(node, state) => format!("{node} {state:?}"),
                Effect::Stop(_) => "stop".into(),
            })
            .collect()
    }

    #[test]
    fn the_lobby_rule_decides_patches_and_states_in_order() {
        let (mut board, mut engine, _retired) = board_and_engine();
        let (a, ear_a) = add_call(&mut board, 1);
        board.take_effects();
        board.refresh_lobby(std::slice::from_ref(&a));
        assert_eq!(
            describe(&board.take_effects()),
            [
                format!("created player:hold.out -> {a}.ear"),
                format!("{a} Lobby")
            ]
        );
        run(&mut engine, 2);
        assert_eq!(heard(&ear_a), 0.25, "hold music");

        // A deliberate patch takes the call out of the lobby.
        let (b, _) = add_call(&mut board, 2);
        let patch = board
            .connect(b.port("voice"), a.port("ear"), 0.0, PatchRole::Normal, None)
            .unwrap();
        board.refresh_lobby(std::slice::from_ref(&a));
        assert_eq!(
            describe(&board.take_effects()),
            [
                format!("created {b}.voice -> {a}.ear"),
                "removed".to_owned(),
                format!("{a} Patched")
            ]
        );
        run(&mut engine, 2);
        assert_eq!(heard(&ear_a), 0.0, "B says nothing");

        // B hangs up: the patch goes with it and A is back on hold.
        board.release_call(&b);
        assert_eq!(
            describe(&board.take_effects()),
            [
                "removed".to_owned(),
                format!("created player:hold.out -> {a}.ear"),
                format!("{a} Lobby")
            ]
        );
        assert!(board.patchbay().patch(patch.id).is_none());
        run(&mut engine, 2);
        assert_eq!(heard(&ear_a), 0.25, "hold music again");
    }

    #[test]
    fn a_removed_node_stops_its_service_and_frees_its_callers() {
        let (mut board, mut engine, _retired) = board_and_engine();
        let (a, ear_a) = add_call(&mut board, 1);
        let jingle = NodeRef::new(NodeKind::Player, "jingle").unwrap();
        board
            .install(BuiltNode {
                spec: NodeSpec {
                    node: jingle.clone(),
                    outputs: vec!["out".into()],
                    inputs: vec![],
                    owner: None,
                },
                engine: Box::new(Constant(0.5)),
                service: Arc::new(Quiet),
            })
            .unwrap();
        board
            .connect(
                jingle.port("out"),
                a.port("ear"),
                0.0,
                PatchRole::Normal,
                None,
            )
            .unwrap();
        board.refresh_lobby(std::slice::from_ref(&a));
        run(&mut engine, 2);
        assert_eq!(heard(&ear_a), 0.5);
        board.take_effects();

        board.remove_node(&jingle).unwrap();
        assert_eq!(
            describe(&board.take_effects()),
            [
                "stop".to_owned(),
                "removed".to_owned(),
                format!("node removed {jingle}"),
                format!("created player:hold.out -> {a}.ear"),
                format!("{a} Lobby")
            ]
        );
        run(&mut engine, 2);
        assert_eq!(heard(&ear_a), 0.25);
        assert!(matches!(
            board.remove_node(&jingle),
            Err(PatchbayError::UnknownNode { .. })
        ));
    }

    #[test]
    fn a_seat_is_free_when_no_call_holds_it_and_nothing_is_patched_to_it() {
        let patched: HashSet<String> = ["in1", "out2", "aux3"]
            .iter()
            .map(|p| p.to_string())
            .collect();
        // Seats 1 and 2 have patched ports; seat 3 only its aux, which conferences lack.
        assert_eq!(free_seat(&patched, 4, &["in", "out"], |_| false), Some(3));
        assert_eq!(
            free_seat(&patched, 4, &["in", "out", "aux"], |_| false),
            Some(4)
        );
        assert_eq!(free_seat(&patched, 4, &["in", "out"], |k| k == 3), Some(4));
        assert_eq!(
            free_seat(&patched, 3, &["in", "out", "aux"], |_| false),
            None
        );
        assert_eq!(free_seat(&patched, 0, &["in"], |_| false), None);
    }

    #[test]
    fn seats_are_counted_from_the_numbered_inputs() {
        let ports = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(seat_count(&ports(&["in1", "in2", "aux1", "aux2"])), 2);
        assert_eq!(seat_count(&ports(&["in", "input", "in10"])), 1);
    }
}
