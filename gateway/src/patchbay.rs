//! The control side of the patchbay: the authoritative model of nodes, ports and patches.
//!
//! The [`Patchbay`] validates every change (does the node exist, is the port an output,
//! is the patch a duplicate), assigns engine slots, allocates what the engine will need
//! and sends [`Command`]s to the engine. It is the only writer of the engine's topology,
//! so the engine never has to check anything or allocate. It lives behind a mutex in the
//! gateway, held only for these short synchronous operations (never across an await).

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;

use api::model::{NodeKind, NodeRef, PortRef};
use serde::Serialize;

use crate::engine::{Command, EnginePatch, Node, NodeInstall, Slot, db_to_gain};

/// Identifier of a patch, unique for the life of the process.
pub type PatchId = u64;

/// Why a patchbay change was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PatchbayError {
    /// No node has this reference.
    #[error("no node {node}")]
    UnknownNode {
        /// The reference.
        node: NodeRef,
    },
    /// The node has no port of that name.
    #[error("{node} has no port {port:?} (it has {available})")]
    UnknownPort {
        /// The node.
        node: NodeRef,
        /// The port asked for.
        port: String,
        /// The ports it has, comma-separated.
        available: String,
    },
    /// A patch's source must be an output and its sink an input.
    #[error("{port} is an {actual} port; a patch needs an {expected} port there")]
    WrongDirection {
        /// The port.
        port: PortRef,
        /// "input" or "output".
        actual: &'static str,
        /// "input" or "output".
        expected: &'static str,
    },
    /// A node with this reference exists already.
    #[error("{node} exists already")]
    NodeExists {
        /// The reference.
        node: NodeRef,
    },
    /// The same source is already patched to the same sink.
    #[error("{from} is already patched to {to} (patch {id})")]
    DuplicatePatch {
        /// The existing patch.
        id: PatchId,
        /// Its source.
        from: PortRef,
        /// Its sink.
        to: PortRef,
    },
    /// No patch has this id.
    #[error("no patch {id}")]
    UnknownPatch {
        /// The id.
        id: PatchId,
    },
    /// The gain is not a finite number in range.
    #[error("gain {gain_db} dB is out of range (-96..=+24)")]
    InvalidGain {
        /// The gain asked for.
        gain_db: f32,
    },
    /// The engine thread is gone (shutdown in progress).
    #[error("the media engine has stopped")]
    EngineStopped,
    /// The patchbay holds as many nodes as it may (`engine.max_nodes`).
    #[error(
        "the media engine already runs {limit} nodes besides calls (engine.max_nodes); delete one first"
    )]
    TooManyNodes {
        /// The limit.
        limit: usize,
    },
    /// The patchbay holds as many patches as it may (`engine.max_patches`).
    #[error("the media engine already runs {limit} patches (engine.max_patches); delete one first")]
    TooManyPatches {
        /// The limit.
        limit: usize,
    },
}

/// How much the engine may be given: every node and patch costs engine time in every
/// block, so their numbers are bounded before real time breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Nodes other than calls (calls are bounded by `max_calls`).
    pub max_nodes: usize,
    /// Patches other than lobby patches (one per call at most, bounded with the calls).
    pub max_patches: usize,
}

impl Capacity {
    /// No bound (tests of other behaviour).
    pub const UNBOUNDED: Capacity = Capacity {
        max_nodes: usize::MAX,
        max_patches: usize::MAX,
    };
}

/// Why a patch exists; decides whether it holds a call out of the lobby.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchRole {
    /// A patch someone made on purpose (route or API): takes the call out of the lobby.
    Normal,
    /// The lobby's hold-music patch.
    Lobby,
    /// A recording tap: listens without changing what anyone hears.
    Monitor,
}

/// One patch as the control plane sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PatchEntry {
    /// Its id.
    pub id: PatchId,
    /// The output port it reads.
    pub source: PortRef,
    /// The input port it feeds.
    pub sink: PortRef,
    /// Its gain in dB.
    pub gain_db: f32,
    /// Why it exists.
    pub role: PatchRole,
    /// The call whose end removes it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<NodeRef>,
    /// Whether it is stored in the database and restored at start-up.
    pub persistent: bool,
    #[serde(skip)]
    resolved: EnginePatch,
}

/// One node as the control plane sees it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeEntry {
    /// Its reference.
    pub node: NodeRef,
    /// Output port names.
    pub outputs: Vec<String>,
    /// Input port names.
    pub inputs: Vec<String>,
    /// The call whose end removes it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<NodeRef>,
    #[serde(skip)]
    slot: Slot,
}

/// Whether a node counts against [`Capacity::max_nodes`]: calls do not (`max_calls`
/// bounds them).
fn counts_against_capacity(node: &NodeRef) -> bool {
    node.kind() != NodeKind::Call
}

/// Port names and ownership of a node about to be added.
pub struct NodeSpec {
    /// Its reference.
    pub node: NodeRef,
    /// Output port names, in port-number order.
    pub outputs: Vec<String>,
    /// Input port names, in port-number order.
    pub inputs: Vec<String>,
    /// The call whose end removes it.
    pub owner: Option<NodeRef>,
}

/// The authoritative topology. See the module documentation.
pub struct Patchbay {
    block: usize,
    capacity: Capacity,
    commands: mpsc::Sender<Command>,
    nodes: HashMap<NodeRef, NodeEntry>,
    patches: BTreeMap<PatchId, PatchEntry>,
    free_slots: Vec<Slot>,
    next_slot: Slot,
    next_patch: PatchId,
}

impl Patchbay {
    /// A patchbay driving the engine behind `commands`, with `block`-sample blocks.
    pub fn new(block: usize, commands: mpsc::Sender<Command>) -> Patchbay {
        Patchbay::with_capacity(block, Capacity::UNBOUNDED, commands)
    }

    /// A patchbay that refuses nodes and patches beyond `capacity`.
    pub fn with_capacity(
        block: usize,
        capacity: Capacity,
        commands: mpsc::Sender<Command>,
    ) -> Patchbay {
        Patchbay {
            block,
            capacity,
            commands,
            nodes: HashMap::new(),
            patches: BTreeMap::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            next_patch: 1,
        }
    }

    /// Adds a node and installs it in the engine.
    pub fn add_node(&mut self, spec: NodeSpec, node: Box<dyn Node>) -> Result<(), PatchbayError> {
        if self.nodes.contains_key(&spec.node) {
            return Err(PatchbayError::NodeExists { node: spec.node });
        }
        if counts_against_capacity(&spec.node)
            && self.nodes_besides_calls() >= self.capacity.max_nodes
        {
            return Err(PatchbayError::TooManyNodes {
                limit: self.capacity.max_nodes,
            });
        }
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            let slot = self.next_slot;
            self.next_slot += 1;
            slot
        });
        let install = NodeInstall::new(
            slot,
            node,
            port_count(&spec.outputs),
            port_count(&spec.inputs),
            self.block,
        );
        if self.commands.send(Command::Insert(install)).is_err() {
            self.free_slots.push(slot);
            return Err(PatchbayError::EngineStopped);
        }
        self.nodes.insert(
            spec.node.clone(),
            NodeEntry {
                node: spec.node,
                outputs: spec.outputs,
                inputs: spec.inputs,
                owner: spec.owner,
                slot,
            },
        );
        Ok(())
    }

    /// Removes a node, every patch touching it, and returns the patches removed.
    pub fn remove_node(&mut self, node: &NodeRef) -> Result<Vec<PatchEntry>, PatchbayError> {
        let entry = self
            .nodes
            .remove(node)
            .ok_or_else(|| PatchbayError::UnknownNode { node: node.clone() })?;
        let removed = self.take_patches(|p| p.source.node() == node || p.sink.node() == node);
        self.publish_patches()?;
        // After the table no longer references the slot, take the node out.
        self.commands
            .send(Command::Remove(entry.slot))
            .map_err(|_| PatchbayError::EngineStopped)?;
        self.free_slots.push(entry.slot);
        Ok(removed)
    }

    /// Connects `source` (an output) to `sink` (an input) with `gain_db`.
    pub fn connect(
        &mut self,
        source: PortRef,
        sink: PortRef,
        gain_db: f32,
        role: PatchRole,
        owner: Option<NodeRef>,
    ) -> Result<PatchEntry, PatchbayError> {
        if !gain_db.is_finite() || !(-96.0..=24.0).contains(&gain_db) {
            return Err(PatchbayError::InvalidGain { gain_db });
        }
        let (source_slot, source_port) = self.resolve(&source, Direction::Output)?;
        let (sink_slot, sink_port) = self.resolve(&sink, Direction::Input)?;
        if let Some(existing) = self
            .patches
            .values()
            .find(|p| p.source == source && p.sink == sink)
        {
            return Err(PatchbayError::DuplicatePatch {
                id: existing.id,
                from: source,
                to: sink,
            });
        }
        if role != PatchRole::Lobby
            && self
                .patches
                .values()
                .filter(|p| p.role != PatchRole::Lobby)
                .count()
                >= self.capacity.max_patches
        {
            return Err(PatchbayError::TooManyPatches {
                limit: self.capacity.max_patches,
            });
        }
        let id = self.next_patch;
        self.next_patch += 1;
        let entry = PatchEntry {
            id,
            source,
            sink,
            gain_db,
            role,
            owner,
            persistent: false,
            resolved: EnginePatch {
                source_slot,
                source_port,
                sink_slot,
                sink_port,
                gain: db_to_gain(gain_db),
            },
        };
        self.patches.insert(id, entry.clone());
        if let Err(e) = self.publish_patches() {
            self.patches.remove(&id);
            return Err(e);
        }
        Ok(entry)
    }

    /// Changes a patch's gain.
    pub fn set_gain(&mut self, id: PatchId, gain_db: f32) -> Result<PatchEntry, PatchbayError> {
        if !gain_db.is_finite() || !(-96.0..=24.0).contains(&gain_db) {
            return Err(PatchbayError::InvalidGain { gain_db });
        }
        let entry = self
            .patches
            .get_mut(&id)
            .ok_or(PatchbayError::UnknownPatch { id })?;
        entry.gain_db = gain_db;
        entry.resolved.gain = db_to_gain(gain_db);
        let updated = entry.clone();
        self.publish_patches()?;
        Ok(updated)
    }

    /// Marks a patch as stored in the database (or not).
    pub fn set_persistent(
        &mut self,
        id: PatchId,
        persistent: bool,
    ) -> Result<PatchEntry, PatchbayError> {
        let entry = self
            .patches
            .get_mut(&id)
            .ok_or(PatchbayError::UnknownPatch { id })?;
        entry.persistent = persistent;
        Ok(entry.clone())
    }

    /// Removes one patch.
    pub fn disconnect(&mut self, id: PatchId) -> Result<PatchEntry, PatchbayError> {
        let entry = self
            .patches
            .remove(&id)
            .ok_or(PatchbayError::UnknownPatch { id })?;
        self.publish_patches()?;
        Ok(entry)
    }

    /// Removes every patch and node owned by `owner`; returns what was removed.
    pub fn remove_owned(
        &mut self,
        owner: &NodeRef,
    ) -> Result<(Vec<PatchEntry>, Vec<NodeRef>), PatchbayError> {
        let mut patches = self.take_patches(|p| p.owner.as_ref() == Some(owner));
        self.publish_patches()?;
        let owned_nodes: Vec<NodeRef> = self
            .nodes
            .values()
            .filter(|n| n.owner.as_ref() == Some(owner))
            .map(|n| n.node.clone())
            .collect();
        for node in &owned_nodes {
            patches.extend(self.remove_node(node)?);
        }
        Ok((patches, owned_nodes))
    }

    /// The node with this reference.
    pub fn node(&self, node: &NodeRef) -> Option<&NodeEntry> {
        self.nodes.get(node)
    }

    /// Every node, sorted by reference.
    pub fn nodes(&self) -> Vec<&NodeEntry> {
        let mut nodes: Vec<&NodeEntry> = self.nodes.values().collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        nodes
    }

    /// Every patch, by id.
    pub fn patches(&self) -> impl Iterator<Item = &PatchEntry> {
        self.patches.values()
    }

    /// The patch with this id.
    pub fn patch(&self, id: PatchId) -> Option<&PatchEntry> {
        self.patches.get(&id)
    }

    /// Patches that read from or feed `node`.
    pub fn patches_of<'a>(
        &'a self,
        node: &'a NodeRef,
    ) -> impl Iterator<Item = &'a PatchEntry> + 'a {
        self.patches
            .values()
            .filter(move |p| p.source.node() == node || p.sink.node() == node)
    }

    /// Number of nodes of `kind`.
    pub fn count(&self, kind: NodeKind) -> usize {
        self.nodes.keys().filter(|n| n.kind() == kind).count()
    }

    /// Nodes counted against [`Capacity::max_nodes`].
    pub fn nodes_besides_calls(&self) -> usize {
        self.nodes
            .keys()
            .filter(|n| counts_against_capacity(n))
            .count()
    }

    /// The capacity this patchbay enforces.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    fn take_patches(&mut self, mut doomed: impl FnMut(&PatchEntry) -> bool) -> Vec<PatchEntry> {
        let ids: Vec<PatchId> = self
            .patches
            .values()
            .filter(|p| doomed(p))
            .map(|p| p.id)
            .collect();
        ids.iter()
            .filter_map(|id| self.patches.remove(id))
            .collect()
    }

    fn resolve(&self, port: &PortRef, wanted: Direction) -> Result<(Slot, u16), PatchbayError> {
        let entry = self
            .nodes
            .get(port.node())
            .ok_or_else(|| PatchbayError::UnknownNode {
                node: port.node().clone(),
            })?;
        let (names, other) = match wanted {
            Direction::Output => (&entry.outputs, &entry.inputs),
            Direction::Input => (&entry.inputs, &entry.outputs),
        };
        if let Some(index) = names.iter().position(|n| n == port.port()) {
            return Ok((entry.slot, port_count_index(index)));
        }
        if other.iter().any(|n| n == port.port()) {
            return Err(PatchbayError::WrongDirection {
                port: port.clone(),
                actual: wanted.opposite().as_str(),
                expected: wanted.as_str(),
            });
        }
        let available: Vec<&str> = entry
            .outputs
            .iter()
            .chain(&entry.inputs)
            .map(String::as_str)
            .collect();
        Err(PatchbayError::UnknownPort {
            node: port.node().clone(),
            port: port.port().to_owned(),
            available: available.join(", "),
        })
    }

    fn publish_patches(&mut self) -> Result<(), PatchbayError> {
        let table: Vec<EnginePatch> = self.patches.values().map(|p| p.resolved).collect();
        self.commands
            .send(Command::SetPatches(table))
            .map_err(|_| PatchbayError::EngineStopped)
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Output,
    Input,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Output => "output",
            Direction::Input => "input",
        }
    }
    fn opposite(self) -> Direction {
        match self {
            Direction::Output => Direction::Input,
            Direction::Input => Direction::Output,
        }
    }
}

fn port_count(names: &[String]) -> u16 {
    u16::try_from(names.len()).unwrap_or(u16::MAX)
}

fn port_count_index(index: usize) -> u16 {
    u16::try_from(index).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Retired;

    struct Silent;
    impl Node for Silent {
        fn produce(&mut self, _outputs: &mut [f32], _block: usize) {}
        fn consume(&mut self, _inputs: &[f32], _block: usize) {}
    }

    fn patchbay() -> (Patchbay, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel();
        (Patchbay::new(48, tx), rx)
    }

    fn spec(text: &str, outputs: &[&str], inputs: &[&str]) -> NodeSpec {
        NodeSpec {
            node: text.parse().unwrap(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            owner: None,
        }
    }

    fn port(text: &str) -> PortRef {
        text.parse().unwrap()
    }

    #[test]
    fn nodes_and_patches_beyond_capacity_are_refused_and_calls_and_lobby_patches_are_not_counted() {
        let (tx, _rx) = mpsc::channel();
        let capacity = Capacity {
            max_nodes: 2,
            max_patches: 1,
        };
        let mut bay = Patchbay::with_capacity(48, capacity, tx);
        bay.add_node(spec("player:hold", &["out"], &[]), Box::new(Silent))
            .unwrap();
        bay.add_node(spec("recorder:show", &[], &["in"]), Box::new(Silent))
            .unwrap();
        assert_eq!(
            bay.add_node(spec("player:extra", &["out"], &[]), Box::new(Silent)),
            Err(PatchbayError::TooManyNodes { limit: 2 })
        );
        // Calls are bounded by max_calls, not by the node capacity.
        let call = "call:00000000-0000-0000-0000-000000000001";
        bay.add_node(spec(call, &["voice"], &["ear"]), Box::new(Silent))
            .unwrap();

        bay.connect(
            port("player:hold.out"),
            port("recorder:show.in"),
            0.0,
            PatchRole::Normal,
            None,
        )
        .unwrap();
        let refused = bay.connect(
            port(&format!("{call}.voice")),
            port("recorder:show.in"),
            0.0,
            PatchRole::Monitor,
            None,
        );
        assert!(
            matches!(refused, Err(PatchbayError::TooManyPatches { limit: 1 })),
            "{refused:?}"
        );
        // The lobby's hold-music patch (one per call) is not counted.
        bay.connect(
            port("player:hold.out"),
            port(&format!("{call}.ear")),
            0.0,
            PatchRole::Lobby,
            None,
        )
        .unwrap();

        // Room is made by removing: the refused node and patch now fit.
        bay.remove_node(&"recorder:show".parse().unwrap()).unwrap();
        bay.add_node(spec("player:extra", &["out"], &[]), Box::new(Silent))
            .unwrap();
        bay.add_node(spec("recorder:show", &[], &["in"]), Box::new(Silent))
            .unwrap_err();
        bay.connect(
            port(&format!("{call}.voice")),
            port(&format!("{call}.ear")),
            0.0,
            PatchRole::Normal,
            None,
        )
        .unwrap();
    }

    #[test]
    fn connects_outputs_to_inputs_and_refuses_the_rest() {
        let (mut bay, _rx) = patchbay();
        bay.add_node(spec("player:hold", &["out"], &[]), Box::new(Silent))
            .unwrap();
        bay.add_node(spec("recorder:show", &[], &["in"]), Box::new(Silent))
            .unwrap();

        let patch = bay
            .connect(
                port("player:hold.out"),
                port("recorder:show.in"),
                -6.0,
                PatchRole::Normal,
                None,
            )
            .unwrap();
        assert_eq!(patch.resolved.source_slot, 0);
        assert_eq!(patch.resolved.sink_slot, 1);
        assert!((patch.resolved.gain - 0.501).abs() < 0.001);

        assert!(matches!(
            bay.connect(
                port("player:hold.out"),
                port("recorder:show.in"),
                0.0,
                PatchRole::Normal,
                None
            ),
            Err(PatchbayError::DuplicatePatch { id: 1, .. })
        ));
        assert!(matches!(
            bay.connect(
                port("recorder:show.in"),
                port("player:hold.out"),
                0.0,
                PatchRole::Normal,
                None
            ),
            Err(PatchbayError::WrongDirection {
                actual: "input",
                expected: "output",
                ..
            })
        ));
        assert!(matches!(
            bay.connect(
                port("player:hold.left"),
                port("recorder:show.in"),
                0.0,
                PatchRole::Normal,
                None
            ),
            Err(PatchbayError::UnknownPort { .. })
        ));
        assert!(matches!(
            bay.connect(
                port("player:nope.out"),
                port("recorder:show.in"),
                0.0,
                PatchRole::Normal,
                None
            ),
            Err(PatchbayError::UnknownNode { .. })
        ));
        assert!(matches!(
            bay.connect(
                port("player:hold.out"),
                port("recorder:show.in"),
                f32::NAN,
                PatchRole::Normal,
                None
            ),
            Err(PatchbayError::InvalidGain { .. })
        ));
        assert!(matches!(
            bay.add_node(spec("player:hold", &["out"], &[]), Box::new(Silent)),
            Err(PatchbayError::NodeExists { .. })
        ));
    }

    #[test]
    fn removing_a_node_removes_its_patches_first_and_recycles_its_slot() {
        let (mut bay, rx) = patchbay();
        bay.add_node(spec("player:a", &["out"], &[]), Box::new(Silent))
            .unwrap();
        bay.add_node(spec("recorder:b", &[], &["in"]), Box::new(Silent))
            .unwrap();
        bay.connect(
            port("player:a.out"),
            port("recorder:b.in"),
            0.0,
            PatchRole::Normal,
            None,
        )
        .unwrap();
        let removed = bay.remove_node(&"player:a".parse().unwrap()).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(bay.patches().count(), 0);

        // The engine must see the new (empty) table before the removal.
        let commands: Vec<String> = rx
            .try_iter()
            .map(|c| match c {
                Command::Insert(_) => "insert".to_string(),
                Command::Remove(slot) => format!("remove {slot}"),
                Command::SetPatches(t) => format!("patches {}", t.len()),
            })
            .collect();
        assert_eq!(
            commands,
            vec!["insert", "insert", "patches 1", "patches 0", "remove 0"]
        );

        bay.add_node(spec("player:c", &["out"], &[]), Box::new(Silent))
            .unwrap();
        assert_eq!(bay.node(&"player:c".parse().unwrap()).unwrap().slot, 0);
    }

    #[test]
    fn owned_patches_and_nodes_go_with_their_owner() {
        let (mut bay, _rx) = patchbay();
        let call: NodeRef = "call:40325ec2-5efd-4bd3-805f-53576e581d13".parse().unwrap();
        bay.add_node(
            spec(&call.to_string(), &["voice", "heard"], &["ear"]),
            Box::new(Silent),
        )
        .unwrap();
        let mut rec = spec("recorder:r1", &[], &["in"]);
        rec.owner = Some(call.clone());
        bay.add_node(rec, Box::new(Silent)).unwrap();
        bay.add_node(spec("player:hold", &["out"], &[]), Box::new(Silent))
            .unwrap();
        bay.connect(
            call.port("voice"),
            port("recorder:r1.in"),
            0.0,
            PatchRole::Monitor,
            Some(call.clone()),
        )
        .unwrap();
        bay.connect(
            port("player:hold.out"),
            call.port("ear"),
            0.0,
            PatchRole::Lobby,
            Some(call.clone()),
        )
        .unwrap();
        let (patches, nodes) = bay.remove_owned(&call).unwrap();
        assert_eq!(patches.len(), 2);
        assert_eq!(nodes, vec!["recorder:r1".parse().unwrap()]);
        assert!(bay.node(&"player:hold".parse().unwrap()).is_some());
    }

    #[test]
    fn a_stopped_engine_is_reported() {
        let (mut bay, rx) = patchbay();
        drop(rx);
        assert_eq!(
            bay.add_node(spec("player:a", &["out"], &[]), Box::new(Silent))
                .err(),
            Some(PatchbayError::EngineStopped)
        );
        let _unused: Option<Retired> = None;
    }
}
