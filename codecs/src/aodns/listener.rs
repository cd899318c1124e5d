//! The listener's bookkeeping, sans-IO: which packs to fetch and which to play next,
//! following the reference client (aodns.md §10).
//!
//! Each crawl hands [`ListenerState::on_sequence_list`] the numbers of the latest
//! `sequence` record and gets back the numbers to fetch; each fetched pack goes to
//! [`ListenerState::on_pack`]; the player repeatedly takes
//! [`ListenerState::next_to_play`]. As in the reference:
//!
//! - a listed number lower than the last one played is remembered as played (a
//!   placeholder) and never fetched;
//! - the player always takes the lowest-numbered pack held and not yet played, and a
//!   pack that arrives after a higher one was played is dropped;
//! - played numbers are forgotten once the server stops listing them.
//!
//! Unlike the reference it counts what it skips (numbers jumped over between two
//! played packs) and what it drops, so a listener can report gaps.

use std::collections::{BTreeMap, BTreeSet};

/// One fetched pack: its Opus packets in index order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldPack {
    /// The packets, sorted by frame index.
    pub frames: Vec<Vec<u8>>,
}

/// Counters of a listening session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Packs handed to the player.
    pub played: u64,
    /// Numbers jumped over between two consecutive played packs ("Skipping sequences").
    pub skipped: u64,
    /// Packs that arrived after a higher-numbered pack had been played.
    pub late: u64,
    /// Frames in the played packs.
    pub frames: u64,
}

/// What the listener knows about the broadcast. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct ListenerState {
    held: BTreeMap<u64, HeldPack>,
    /// Played numbers (and placeholders) the server still lists.
    played: BTreeSet<u64>,
    last_played: Option<u64>,
    stats: ListenerStats,
}

impl ListenerState {
    /// A listener that has heard nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the numbers of a `sequence` record; writes into `to_fetch` (cleared
    /// first) the ones to query as `seq_<n>`, in the order listed.
    pub fn on_sequence_list(&mut self, listed: &[u64], to_fetch: &mut Vec<u64>) {
        to_fetch.clear();
        for &n in listed {
            if self.last_played.is_some_and(|last| n < last) {
                self.played.insert(n);
            } else if !self.held.contains_key(&n) && !self.played.contains(&n) {
                to_fetch.push(n);
            }
        }
        self.played.retain(|n| listed.contains(n));
    }

    /// Stores a fetched pack. Returns false (and drops it) when it is too late: a
    /// pack numbered at or below the last one played.
    pub fn on_pack(&mut self, n: u64, pack: HeldPack) -> bool {
        if self.last_played.is_some_and(|last| n <= last) || self.played.contains(&n) {
            self.stats.late += 1;
            return false;
        }
        self.held.insert(n, pack);
        true
    }

    /// The lowest-numbered pack held, now marked as played.
    pub fn next_to_play(&mut self) -> Option<(u64, HeldPack)> {
        let (n, pack) = self.held.pop_first()?;
        if let Some(last) = self.last_played {
            self.stats.skipped += n.saturating_sub(last).saturating_sub(1);
        }
        self.last_played = Some(n);
        self.played.insert(n);
        self.stats.played += 1;
        self.stats.frames += pack.frames.len() as u64;
        Some((n, pack))
    }

    /// Packs fetched and waiting to be played.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The number of the last pack played.
    pub fn last_played(&self) -> Option<u64> {
        self.last_played
    }

    /// Counters so far.
    pub fn stats(&self) -> ListenerStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(frames: usize) -> HeldPack {
        HeldPack {
            frames: (0..frames).map(|i| vec![i as u8]).collect(),
        }
    }

    #[test]
    fn a_new_listener_fetches_the_whole_window_and_plays_it_in_order() {
        let mut state = ListenerState::new();
        let mut fetch = Vec::new();
        state.on_sequence_list(&[10, 11, 12], &mut fetch);
        assert_eq!(fetch, [10, 11, 12]);
        // Replies arrive out of order.
        assert!(state.on_pack(12, pack(3)));
        assert!(state.on_pack(10, pack(1)));
        assert_eq!(
            state.next_to_play().map(|(n, p)| (n, p.frames.len())),
            Some((10, 1))
        );
        // 11 is still missing: the player takes 12 and counts 11 as skipped.
        assert_eq!(state.next_to_play().map(|(n, _)| n), Some(12));
        assert_eq!(state.stats().skipped, 1);
        // 11 arrives late and is dropped.
        assert!(!state.on_pack(11, pack(2)));
        assert_eq!(state.stats().late, 1);
        assert_eq!(state.next_to_play(), None);
        assert_eq!(
            state.stats(),
            ListenerStats {
                played: 2,
                skipped: 1,
                late: 1,
                frames: 4
            }
        );
    }

    #[test]
    fn held_and_played_numbers_are_not_fetched_again() {
        let mut state = ListenerState::new();
        let mut fetch = Vec::new();
        state.on_sequence_list(&[1, 2], &mut fetch);
        assert!(state.on_pack(1, pack(1)));
        assert!(state.on_pack(2, pack(1)));
        let _ = state.next_to_play();
        state.on_sequence_list(&[1, 2, 3], &mut fetch);
        assert_eq!(fetch, [3], "1 played, 2 held");
        assert_eq!(state.held(), 1);
        let _ = state.next_to_play();
        assert!(state.on_pack(3, pack(1)));
        let _ = state.next_to_play();
        assert_eq!(state.last_played(), Some(3));
        assert_eq!(state.stats().skipped, 0);
    }

    #[test]
    fn lower_numbers_after_a_restart_become_placeholders() {
        // aodns.md §6: a server restarting at 0 stalls a running client, which takes
        // the new, lower numbers for played ones.
        let mut state = ListenerState::new();
        let mut fetch = Vec::new();
        state.on_sequence_list(&[500], &mut fetch);
        assert!(state.on_pack(500, pack(1)));
        let _ = state.next_to_play();
        state.on_sequence_list(&[0, 1, 2], &mut fetch);
        assert!(fetch.is_empty());
        assert!(!state.on_pack(1, pack(1)));
        // Placeholders are forgotten once the server stops listing them.
        state.on_sequence_list(&[501], &mut fetch);
        assert_eq!(fetch, [501]);
        assert_eq!(
            state.played.iter().copied().collect::<Vec<_>>(),
            Vec::<u64>::new()
        );
    }
}
