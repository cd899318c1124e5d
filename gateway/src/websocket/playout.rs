//! Sans-IO bookkeeping of the bot's audio on its way to the caller: when the engine
//! starts and stops playing the queue ([`Playout`], a jitter buffer), and which of the
//! bot's marks have played ([`MarkBook`]).
//!
//! Positions are counted in bus samples (48 kHz) accepted into the queue since the node
//! started, so the I/O side (which pushes) and the engine (which takes) agree on them
//! without sharing anything but two counters: a mark placed when `queued_total` samples
//! had been accepted has played once the engine has taken that many.

use std::collections::VecDeque;

use super::protocol::MarkOutcome;

/// What the engine does with the queue this block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    /// Samples to take from the queue (the rest of the block is silence).
    pub samples: usize,
    /// The queue ran dry while playing: the bot was late, or its speech ended.
    pub underrun: bool,
}

/// The jitter buffer's state machine. Playing starts once `prefill` samples are queued,
/// or once audio has waited `prefill` samples' time (the short tail of an utterance is
/// not held back for ever); it stops, counting an underrun, when the queue runs dry.
#[derive(Debug, Clone)]
pub struct Playout {
    prefill: usize,
    playing: bool,
    waited: usize,
}

impl Playout {
    /// A jitter buffer that starts playing at `prefill` samples.
    pub fn new(prefill: usize) -> Playout {
        Playout {
            prefill,
            playing: false,
            waited: 0,
        }
    }

    /// Whether it is playing.
    pub fn is_playing(&self) -> bool {
        self.playing
    }

    /// Decides this block, with `available` samples queued and blocks of `block`.
    pub fn next_block(&mut self, available: usize, block: usize) -> Take {
        if !self.playing {
            if available == 0 {
                self.waited = 0;
                return Take {
                    samples: 0,
                    underrun: false,
                };
            }
            self.waited += block;
            if available < self.prefill && self.waited < self.prefill {
                return Take {
                    samples: 0,
                    underrun: false,
                };
            }
            self.playing = true;
        }
        if available >= block {
            Take {
                samples: block,
                underrun: false,
            }
        } else {
            self.stop();
            Take {
                samples: available,
                underrun: true,
            }
        }
    }

    /// Stops playing and waits for the next prefill (after `killAudio`).
    pub fn stop(&mut self) {
        self.playing = false;
        self.waited = 0;
    }
}

/// The bot's pending marks, each at the queue position it was placed at, bounded.
#[derive(Debug)]
pub struct MarkBook {
    pending: VecDeque<(u64, String)>,
    capacity: usize,
}

impl MarkBook {
    /// A book holding at most `capacity` pending marks.
    pub fn new(capacity: usize) -> MarkBook {
        MarkBook {
            pending: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Places mark `name` at `position` (samples accepted before it). A full book
    /// refuses it: it is answered `cleared` at once (returned).
    pub fn place(&mut self, name: String, position: u64) -> Option<(String, MarkOutcome)> {
        if self.pending.len() >= self.capacity {
            return Some((name, MarkOutcome::Cleared));
        }
        self.pending.push_back((position, name));
        None
    }

    /// Takes the marks whose audio has played, now that `played` samples have been
    /// taken by the engine, in the order they were placed.
    pub fn played(&mut self, played: u64) -> impl Iterator<Item = (String, MarkOutcome)> + '_ {
        std::iter::from_fn(move || {
            if self.pending.front().is_some_and(|(at, _)| *at <= played) {
                self.pending
                    .pop_front()
                    .map(|(_, name)| (name, MarkOutcome::Playout))
            } else {
                None
            }
        })
    }

    /// Takes every pending mark as cleared (`killAudio`, `clearMarks`).
    pub fn clear(&mut self) -> impl Iterator<Item = (String, MarkOutcome)> + '_ {
        self.pending
            .drain(..)
            .map(|(_, name)| (name, MarkOutcome::Cleared))
    }

    /// Marks waiting for their audio.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = 48;

    #[test]
    fn playing_starts_at_the_prefill_and_stops_dry_with_an_underrun() {
        let mut playout = Playout::new(40 * BLOCK);
        // 20 ms queued: wait.
        assert_eq!(playout.next_block(20 * BLOCK, BLOCK).samples, 0);
        assert!(!playout.is_playing());
        // 40 ms queued: play a block at a time.
        let take = playout.next_block(40 * BLOCK, BLOCK);
        assert_eq!(
            take,
            Take {
                samples: BLOCK,
                underrun: false
            }
        );
        // Half a block left: play it, then stop and count the underrun.
        assert_eq!(
            playout.next_block(BLOCK / 2, BLOCK),
            Take {
                samples: BLOCK / 2,
                underrun: true
            }
        );
        assert!(!playout.is_playing());
        assert_eq!(playout.next_block(0, BLOCK).samples, 0);
    }

    #[test]
    fn a_short_tail_plays_after_waiting_the_prefill_time() {
        let mut playout = Playout::new(40 * BLOCK);
        // 10 ms arrive and nothing more: held for 40 blocks (40 ms), then played.
        let mut waited = 0;
        while playout.next_block(10 * BLOCK, BLOCK).samples == 0 {
            waited += 1;
            assert!(waited < 100, "never played");
        }
        assert_eq!(waited, 39);
    }

    #[test]
    fn marks_play_in_order_once_their_audio_is_taken() {
        let mut book = MarkBook::new(4);
        assert!(book.place("a".into(), 480).is_none());
        assert!(book.place("b".into(), 960).is_none());
        assert_eq!(book.played(479).count(), 0);
        let played: Vec<_> = book.played(960).collect();
        assert_eq!(
            played,
            vec![
                ("a".into(), MarkOutcome::Playout),
                ("b".into(), MarkOutcome::Playout)
            ]
        );
        assert!(book.is_empty());
    }

    #[test]
    fn killing_clears_every_pending_mark_and_a_full_book_refuses() {
        let mut book = MarkBook::new(2);
        assert!(book.place("a".into(), 10).is_none());
        assert!(book.place("b".into(), 20).is_none());
        assert_eq!(
            book.place("c".into(), 30),
            Some(("c".into(), MarkOutcome::Cleared))
        );
        let cleared: Vec<_> = book.clear().collect();
        assert_eq!(
            cleared,
            vec![
                ("a".into(), MarkOutcome::Cleared),
                ("b".into(), MarkOutcome::Cleared)
            ]
        );
        assert_eq!(book.len(), 0);
    }
}
