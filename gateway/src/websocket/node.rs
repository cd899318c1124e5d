//! The engine half of a `websocket` node: the caller's side of two lock-free rings.
//!
//! `consume` pushes each block of input `in` into the ring the I/O thread sends to the
//! bot from, while the thread is connected (a full ring, when that thread is held up,
//! drops the block and counts it).
//! `produce` plays the bot's audio from the other ring on output `out` through the
//! [`Playout`] jitter buffer, and honours `killAudio` by discarding everything the I/O
//! thread had queued up to the moment the command arrived (`discard_through`).
//! Nothing here allocates, locks or blocks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::playout::Playout;
use crate::engine::Node;

/// Counters and positions shared by the engine node, the I/O thread and the service.
#[derive(Debug, Default)]
pub struct Shared {
    /// The I/O thread is connected and draining the caller's ring; before and after,
    /// the caller's audio is not kept (the bot hears the call from when it connects).
    pub streaming: AtomicBool,
    /// Bus samples the engine has taken from the bot's queue (played or discarded).
    pub taken: AtomicU64,
    /// Bus samples the I/O thread has accepted into the bot's queue.
    pub queued_total: AtomicU64,
    /// The engine discards the queue up to this position (`killAudio`).
    pub discard_through: AtomicU64,
    /// Times the queue ran dry while playing.
    pub underruns: AtomicU64,
    /// Blocks of the caller's audio dropped because the I/O thread was behind.
    pub caller_blocks_dropped: AtomicU64,
}

/// The engine node. See the module documentation.
pub struct WebsocketNode {
    to_bot: rtrb::Producer<f32>,
    from_bot: rtrb::Consumer<f32>,
    playout: Playout,
    shared: Arc<Shared>,
    taken: u64,
}

impl WebsocketNode {
    /// A node feeding `to_bot` and playing `from_bot`, starting to play at `prefill`
    /// queued samples.
    pub fn new(
        to_bot: rtrb::Producer<f32>,
        from_bot: rtrb::Consumer<f32>,
        prefill: usize,
        shared: Arc<Shared>,
    ) -> WebsocketNode {
        WebsocketNode {
            to_bot,
            from_bot,
            playout: Playout::new(prefill),
            shared,
            taken: 0,
        }
    }

    fn discard_killed(&mut self) {
        let through = self.shared.discard_through.load(Ordering::Acquire);
        if self.taken >= through {
            return;
        }
        let wanted = usize::try_from(through - self.taken).unwrap_or(usize::MAX);
        let n = wanted.min(self.from_bot.slots());
        if let Ok(chunk) = self.from_bot.read_chunk(n) {
            chunk.commit_all();
            self.taken += n as u64;
        }
        self.playout.stop();
    }
}

impl Node for WebsocketNode {
    fn produce(&mut self, outputs: &mut [f32], block: usize) {
        let Some(out) = outputs.get_mut(..block) else {
            return;
        };
        self.discard_killed();
        let take = self.playout.next_block(self.from_bot.slots(), block);
        let mut filled = 0;
        if take.samples > 0
            && let Ok(chunk) = self.from_bot.read_chunk(take.samples)
        {
            let (first, second) = chunk.as_slices();
            out[..first.len()].copy_from_slice(first);
            out[first.len()..first.len() + second.len()].copy_from_slice(second);
            filled = take.samples;
            chunk.commit_all();
            self.taken += filled as u64;
        }
        out[filled..].fill(0.0);
        if take.underrun {
            self.shared.underruns.fetch_add(1, Ordering::Relaxed);
        }
        self.shared.taken.store(self.taken, Ordering::Release);
    }

    fn consume(&mut self, inputs: &[f32], block: usize) {
        let Some(input) = inputs.get(..block) else {
            return;
        };
        if !self.shared.streaming.load(Ordering::Acquire) {
            return;
        }
        match self.to_bot.write_chunk(block) {
            Ok(mut chunk) => {
                let (first, second) = chunk.as_mut_slices();
                let split = first.len();
                first.copy_from_slice(&input[..split]);
                second.copy_from_slice(&input[split..]);
                chunk.commit_all();
            }
            Err(_) => {
                self.shared
                    .caller_blocks_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = 48;

    fn node() -> (
        WebsocketNode,
        rtrb::Consumer<f32>,
        rtrb::Producer<f32>,
        Arc<Shared>,
    ) {
        let (to_bot, bot_reads) = rtrb::RingBuffer::new(10 * BLOCK);
        let (bot_writes, from_bot) = rtrb::RingBuffer::new(1000 * BLOCK);
        let shared = Arc::new(Shared::default());
        (
            WebsocketNode::new(to_bot, from_bot, 40 * BLOCK, Arc::clone(&shared)),
            bot_reads,
            bot_writes,
            shared,
        )
    }

    fn push(ring: &mut rtrb::Producer<f32>, shared: &Shared, value: f32, samples: usize) {
        for _ in 0..samples {
            ring.push(value).unwrap();
        }
        shared
            .queued_total
            .fetch_add(samples as u64, Ordering::Relaxed);
    }

    #[test]
    fn the_bots_audio_plays_after_the_prefill_and_a_kill_stops_it_at_the_next_block() {
        let (mut node, _bot_reads, mut bot_writes, shared) = node();
        let mut out = vec![0.0; BLOCK];
        push(&mut bot_writes, &shared, 0.5, 500 * BLOCK);
        node.produce(&mut out, BLOCK);
        assert_eq!(out, vec![0.5; BLOCK]);
        for _ in 0..9 {
            node.produce(&mut out, BLOCK);
        }
        assert_eq!(shared.taken.load(Ordering::Relaxed), 10 * BLOCK as u64);
        // killAudio: the I/O side discards through what it had queued, then queues more.
        shared.discard_through.store(
            shared.queued_total.load(Ordering::Relaxed),
            Ordering::Release,
        );
        push(&mut bot_writes, &shared, 0.25, 40 * BLOCK);
        node.produce(&mut out, BLOCK);
        // The old audio is gone at once; the new waits for its prefill, then plays.
        assert_eq!(out, vec![0.25; BLOCK]);
        assert_eq!(shared.taken.load(Ordering::Relaxed), 501 * BLOCK as u64);
    }

    #[test]
    fn the_callers_audio_reaches_the_ring_while_streaming_and_a_full_ring_drops_blocks() {
        let (mut node, mut bot_reads, _bot_writes, shared) = node();
        let block: Vec<f32> = (0..BLOCK).map(|i| i as f32 / 100.0).collect();
        // Not connected yet: nothing is kept, nothing counted.
        node.consume(&block, BLOCK);
        assert_eq!(bot_reads.slots(), 0);
        shared.streaming.store(true, Ordering::Release);
        for _ in 0..12 {
            node.consume(&block, BLOCK);
        }
        assert_eq!(bot_reads.slots(), 10 * BLOCK);
        assert_eq!(bot_reads.pop().unwrap(), 0.0);
        assert_eq!(shared.caller_blocks_dropped.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_dry_queue_plays_silence_and_counts_one_underrun() {
        let (mut node, _bot_reads, mut bot_writes, shared) = node();
        let mut out = vec![1.0; BLOCK];
        push(&mut bot_writes, &shared, 0.5, 40 * BLOCK + BLOCK / 2);
        for _ in 0..40 {
            node.produce(&mut out, BLOCK);
        }
        node.produce(&mut out, BLOCK);
        assert_eq!(&out[..BLOCK / 2], &[0.5; BLOCK / 2]);
        assert_eq!(&out[BLOCK / 2..], &[0.0; BLOCK / 2]);
        node.produce(&mut out, BLOCK);
        assert_eq!(out, vec![0.0; BLOCK]);
        assert_eq!(shared.underruns.load(Ordering::Relaxed), 1);
    }
}
