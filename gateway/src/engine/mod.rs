//! The patchbay engine: the sans-IO heart of the media plane (ARCHITECTURE §2).
//!
//! Every source or sink of audio is a [`Node`] with numbered output and input ports,
//! all mono at the 48 kHz bus rate, processed in fixed blocks (48 samples = 1 ms by
//! default). A patch connects one output port to one input port with a gain; an input
//! hears the saturated sum of everything patched into it.
//!
//! One call of [`Engine::process_block`] runs one block in three phases:
//!
//! 1. every node *produces* its outputs (a call's voice from its uplink ring, a player's
//!    next samples, a conference's mix-minus of the previous block);
//! 2. every input is summed from the patches that feed it and clamped to ±1.0;
//! 3. every node *consumes* its inputs (a call's ear into its downlink ring, a recorder
//!    into its disk queue).
//!
//! Nodes that are both sink and source (a conference) therefore add one block (1 ms) of
//! delay, and the order in which nodes are stored never changes what anyone hears.
//!
//! The engine never allocates, locks or blocks per block. Topology changes arrive as
//! [`Command`]s over a channel, built and allocated by the control side
//! ([`crate::patchbay::Patchbay`]); whatever the engine lets go of (removed nodes, old
//! patch tables) goes back over the `retired` channel so it is freed off the media
//! thread. The engine reads no clock: [`driver`] paces it in production and tests call
//! `process_block` directly on virtual time.

pub mod call;
pub mod conference;
pub mod drift;
pub mod driver;
pub mod player;
pub mod recorder;
pub mod recording_journal;
pub mod stats;
pub mod vad;
pub mod wav_header;

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

use codecs::rate::SampleRate;

pub use stats::EngineStats;

/// The rate of the patchbay bus: every port carries 48 kHz mono.
pub const BUS_RATE: SampleRate = SampleRate::HZ_48000;

/// Default block length: 1 ms at 48 kHz.
pub const DEFAULT_BLOCK_SAMPLES: usize = 48;

/// Something that makes or takes audio, driven once per block by the engine.
///
/// Implementations own everything they need per block (rings, scratch, clip data),
/// allocated when they are built on the control side; `produce` and `consume` must not
/// allocate, lock a contended lock, log or block.
pub trait Node: Send {
    /// Writes this block's outputs. `outputs` holds `output_count * block` samples, port
    /// `k` at `outputs[k * block..(k + 1) * block]`. Nodes without outputs ignore it.
    fn produce(&mut self, outputs: &mut [f32], block: usize);

    /// Takes this block's summed inputs, laid out like `outputs` in [`Node::produce`].
    fn consume(&mut self, inputs: &[f32], block: usize);
}

/// Index of a node's slot in the engine, assigned by the control side.
pub type Slot = u32;

/// One patch as the engine sees it: resolved to slots and port numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnginePatch {
    /// Slot of the node whose output feeds this patch.
    pub source_slot: Slot,
    /// Output port number on the source node.
    pub source_port: u16,
    /// Slot of the node whose input this patch feeds.
    pub sink_slot: Slot,
    /// Input port number on the sink node.
    pub sink_port: u16,
    /// Linear gain applied to the source before summing.
    pub gain: f32,
}

/// A node ready to be installed, with its port buffers already allocated (on the
/// control side, so installing it costs the engine nothing but a move).
pub struct NodeInstall {
    slot: Slot,
    node: Box<dyn Node>,
    outputs: Vec<f32>,
    inputs: Vec<f32>,
}

impl NodeInstall {
    /// Prepares `node` for `slot` with `outputs` output and `inputs` input ports of
    /// `block` samples each.
    pub fn new(slot: Slot, node: Box<dyn Node>, outputs: u16, inputs: u16, block: usize) -> Self {
        NodeInstall {
            slot,
            node,
            outputs: vec![0.0; usize::from(outputs) * block],
            inputs: vec![0.0; usize::from(inputs) * block],
        }
    }
}

/// A topology change sent from the control side to the engine.
pub enum Command {
    /// Put a node into its slot (the slot must be free).
    Insert(NodeInstall),
    /// Take the node out of its slot; the node goes back over the retired channel.
    Remove(Slot),
    /// Replace the whole patch table; the old table goes back over the retired channel.
    SetPatches(Vec<EnginePatch>),
}

/// Something the engine no longer needs, returned so it is dropped off the media thread.
pub enum Retired {
    /// A removed node (dropping it may close files, free rings).
    Node(Box<dyn Node>),
    /// The buffers of a removed node.
    Buffers(Vec<f32>, Vec<f32>),
    /// A replaced patch table.
    Patches(Vec<EnginePatch>),
}

struct SlotState {
    node: Box<dyn Node>,
    outputs: Vec<f32>,
    inputs: Vec<f32>,
}

/// The sans-IO patchbay engine. See the module documentation.
pub struct Engine {
    block: usize,
    slots: Vec<Option<SlotState>>,
    patches: Vec<EnginePatch>,
    commands: Receiver<Command>,
    retired: Sender<Retired>,
    stats: Arc<EngineStats>,
}

impl Engine {
    /// Builds an engine processing `block` samples per block, with room for
    /// `slot_capacity` nodes before its slot table has to grow.
    pub fn new(
        block: usize,
        slot_capacity: usize,
        commands: Receiver<Command>,
        retired: Sender<Retired>,
    ) -> Engine {
        let mut slots = Vec::with_capacity(slot_capacity);
        slots.resize_with(slot_capacity, || None);
        Engine {
            block,
            slots,
            patches: Vec::new(),
            commands,
            retired,
            stats: Arc::new(EngineStats::default()),
        }
    }

    /// Samples per block.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Counters shared with the control plane.
    pub fn stats(&self) -> Arc<EngineStats> {
        Arc::clone(&self.stats)
    }

    /// Applies pending topology commands, then runs one block for every node and patch.
    pub fn process_block(&mut self) {
        self.apply_commands();
        let block = self.block;

        for state in self.slots.iter_mut().flatten() {
            state.node.produce(&mut state.outputs, block);
        }

        for state in self.slots.iter_mut().flatten() {
            state.inputs.fill(0.0);
        }
        for patch in &self.patches {
            mix_patch(&mut self.slots, patch, block);
        }
        for state in self.slots.iter_mut().flatten() {
            for sample in &mut state.inputs {
                // Saturate the sum (ARCHITECTURE §2): a hot mix clips at full scale
                // instead of wrapping or growing without bound downstream.
                *sample = sample.clamp(-1.0, 1.0);
            }
            state.node.consume(&state.inputs, block);
        }
        self.stats.count_block();
    }

    fn apply_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Insert(install) => self.insert(install),
                Command::Remove(slot) => {
                    if let Some(state) = self.slots.get_mut(slot as usize).and_then(Option::take) {
                        // Send failures mean the control side is gone (shutdown): the
                        // value is then simply dropped here.
                        let _ = self.retired.send(Retired::Node(state.node));
                        let _ = self
                            .retired
                            .send(Retired::Buffers(state.outputs, state.inputs));
                    }
                }
                Command::SetPatches(table) => {
                    let old = std::mem::replace(&mut self.patches, table);
                    let _ = self.retired.send(Retired::Patches(old));
                }
            }
        }
    }

    fn insert(&mut self, install: NodeInstall) {
        let index = install.slot as usize;
        if index >= self.slots.len() {
            // Growth happens only on a topology change, never per block; the control side
            // sizes the table for the configured call cap so this is rare.
            self.slots.resize_with(index + 1, || None);
        }
        let state = SlotState {
            node: install.node,
            outputs: install.outputs,
            inputs: install.inputs,
        };
        if let Some(previous) = self.slots[index].replace(state) {
            let _ = self.retired.send(Retired::Node(previous.node));
        }
    }
}

/// Adds one patch's source block, times its gain, into its sink's input block.
fn mix_patch(slots: &mut [Option<SlotState>], patch: &EnginePatch, block: usize) {
    let source_range =
        usize::from(patch.source_port) * block..(usize::from(patch.source_port) + 1) * block;
    let sink_range =
        usize::from(patch.sink_port) * block..(usize::from(patch.sink_port) + 1) * block;
    let source_index = patch.source_slot as usize;
    let sink_index = patch.sink_slot as usize;
    if source_index >= slots.len() || sink_index >= slots.len() {
        return;
    }

    if source_index == sink_index {
        // A node patched into itself (a feedback loop through a conference, say):
        // outputs and inputs are separate buffers of the same slot.
        if let Some(Some(state)) = slots.get_mut(source_index) {
            let SlotState {
                outputs, inputs, ..
            } = state;
            if let (Some(src), Some(dst)) = (outputs.get(source_range), inputs.get_mut(sink_range))
            {
                add_scaled(dst, src, patch.gain);
            }
        }
        return;
    }

    // Borrow the two slots disjointly.
    let (source, sink) = if source_index < sink_index {
        let (low, high) = slots.split_at_mut(sink_index);
        (low.get(source_index), high.first_mut())
    } else {
        let (low, high) = slots.split_at_mut(source_index);
        (high.first(), low.get_mut(sink_index))
    };
    if let (Some(Some(source)), Some(Some(sink))) = (source, sink)
        && let (Some(src), Some(dst)) = (
            source.outputs.get(source_range),
            sink.inputs.get_mut(sink_range),
        )
    {
        add_scaled(dst, src, patch.gain);
    }
}

#[inline]
fn add_scaled(dst: &mut [f32], src: &[f32], gain: f32) {
    if gain == 1.0 {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += *s;
        }
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += *s * gain;
        }
    }
}

/// Converts a gain in decibels to a linear factor.
pub fn db_to_gain(db: f32) -> f32 {
    10f32.powf(db / 20.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};

    /// Emits a constant value on each output port (port k emits `value * (k + 1)`).
    struct Constant(f32, u16);
    impl Node for Constant {
        fn produce(&mut self, outputs: &mut [f32], block: usize) {
            for port in 0..usize::from(self.1) {
                outputs[port * block..(port + 1) * block].fill(self.0 * (port as f32 + 1.0));
            }
        }
        fn consume(&mut self, _inputs: &[f32], _block: usize) {}
    }

    /// Records every block it consumes.
    struct Probe(Arc<Mutex<Vec<f32>>>);
    impl Node for Probe {
        fn produce(&mut self, _outputs: &mut [f32], _block: usize) {}
        fn consume(&mut self, inputs: &[f32], _block: usize) {
            self.0.lock().unwrap().extend_from_slice(inputs);
        }
    }

    fn engine() -> (Engine, mpsc::Sender<Command>, mpsc::Receiver<Retired>) {
        let (tx, rx) = mpsc::channel();
        let (rtx, rrx) = mpsc::channel();
        (Engine::new(4, 2, rx, rtx), tx, rrx)
    }

    fn insert(
        tx: &mpsc::Sender<Command>,
        slot: Slot,
        node: Box<dyn Node>,
        outputs: u16,
        inputs: u16,
    ) {
        tx.send(Command::Insert(NodeInstall::new(
            slot, node, outputs, inputs, 4,
        )))
        .unwrap();
    }

    fn patch(
        source_slot: Slot,
        source_port: u16,
        sink_slot: Slot,
        sink_port: u16,
        gain: f32,
    ) -> EnginePatch {
        EnginePatch {
            source_slot,
            source_port,
            sink_slot,
            sink_port,
            gain,
        }
    }

    #[test]
    fn inputs_hear_the_gained_sum_of_their_patches() {
        let (mut engine, tx, _retired) = engine();
        let heard = Arc::new(Mutex::new(Vec::new()));
        insert(&tx, 0, Box::new(Constant(0.25, 2)), 2, 0);
        insert(&tx, 5, Box::new(Probe(Arc::clone(&heard))), 0, 2);
        tx.send(Command::SetPatches(vec![
            patch(0, 0, 5, 0, 1.0),
            patch(0, 1, 5, 0, 0.5),
            patch(0, 1, 5, 1, 2.0),
        ]))
        .unwrap();
        engine.process_block();
        let heard = heard.lock().unwrap().clone();
        // Port 0: 0.25 + 0.5 * 0.5; port 1: 0.5 * 2.0 = 1.0.
        assert_eq!(heard, vec![0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn sums_saturate_at_full_scale() {
        let (mut engine, tx, _retired) = engine();
        let heard = Arc::new(Mutex::new(Vec::new()));
        insert(&tx, 0, Box::new(Constant(0.75, 1)), 1, 0);
        insert(&tx, 1, Box::new(Constant(-0.75, 1)), 1, 0);
        insert(&tx, 2, Box::new(Probe(Arc::clone(&heard))), 0, 2);
        tx.send(Command::SetPatches(vec![
            patch(0, 0, 2, 0, 1.0),
            patch(0, 0, 2, 0, 1.0),
            patch(1, 0, 2, 1, 2.0),
        ]))
        .unwrap();
        engine.process_block();
        assert_eq!(
            *heard.lock().unwrap(),
            vec![1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0]
        );
    }

    #[test]
    fn removed_nodes_and_old_tables_are_retired_not_dropped_in_the_engine() {
        let (mut engine, tx, retired) = engine();
        insert(&tx, 0, Box::new(Constant(0.1, 1)), 1, 0);
        tx.send(Command::SetPatches(vec![])).unwrap();
        engine.process_block();
        tx.send(Command::Remove(0)).unwrap();
        tx.send(Command::SetPatches(vec![])).unwrap();
        engine.process_block();
        let kinds: Vec<&str> = retired
            .try_iter()
            .map(|r| match r {
                Retired::Node(_) => "node",
                Retired::Buffers(..) => "buffers",
                Retired::Patches(_) => "patches",
            })
            .collect();
        assert_eq!(kinds, vec!["patches", "node", "buffers", "patches"]);
    }

    #[test]
    fn patches_to_missing_slots_are_ignored() {
        let (mut engine, tx, _retired) = engine();
        let heard = Arc::new(Mutex::new(Vec::new()));
        insert(&tx, 1, Box::new(Probe(Arc::clone(&heard))), 0, 1);
        tx.send(Command::SetPatches(vec![
            patch(9, 0, 1, 0, 1.0),
            patch(1, 3, 1, 0, 1.0),
        ]))
        .unwrap();
        engine.process_block();
        assert_eq!(*heard.lock().unwrap(), vec![0.0; 4]);
    }

    #[test]
    fn self_patch_reads_the_nodes_own_output() {
        struct Loop(Arc<Mutex<Vec<f32>>>);
        impl Node for Loop {
            fn produce(&mut self, outputs: &mut [f32], _block: usize) {
                outputs.fill(0.3);
            }
            fn consume(&mut self, inputs: &[f32], _block: usize) {
                self.0.lock().unwrap().extend_from_slice(inputs);
            }
        }
        let (mut engine, tx, _retired) = engine();
        let heard = Arc::new(Mutex::new(Vec::new()));
        insert(&tx, 0, Box::new(Loop(Arc::clone(&heard))), 1, 1);
        tx.send(Command::SetPatches(vec![patch(0, 0, 0, 0, 1.0)]))
            .unwrap();
        engine.process_block();
        assert_eq!(*heard.lock().unwrap(), vec![0.3; 4]);
    }

    #[test]
    fn db_conversion() {
        assert!((db_to_gain(0.0) - 1.0).abs() < 1e-6);
        assert!((db_to_gain(-6.0206) - 0.5).abs() < 1e-4);
        assert!((db_to_gain(20.0) - 10.0).abs() < 1e-4);
    }
}
