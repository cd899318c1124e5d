//! One stream per client_id where the network cannot tell senders apart.
//!
//! In a joined room every packet comes from the room server, which relays whatever any
//! of its members sends (rtjam.md §4): a second sender using a jammer's client_id
//! arrives interleaved with the jammer, from the same address. Jammers are keyed by
//! client_id on the receiving side (§10), so two streams in one jitter buffer silence
//! both. [`StreamGuard`] follows the established stream of one client_id by its
//! sequence numbers and client_times, and refuses what does not continue it:
//!
//! * a packet continues a stream when its sequence is at most 64 behind the newest
//!   (reordering, duplicates, the copy each seat receives) or ahead by no more than 64
//!   plus what the time since allows (a sender that counts through lost or unsent
//!   packets), and, when both carry a client_time, its client_time is not earlier than
//!   its sequence implies, less 20 ms;
//! * packets that do not continue it build a *candidate* stream. The candidate replaces
//!   the established stream once it has continued itself for 4 packets while the
//!   established stream has been silent for 250 ms (the jammer restarted, e.g. rejoined
//!   from sequence 0), unless the two were seen *interleaved*: then it is an intruder,
//!   and the established stream keeps the client_id until it has been silent for the
//!   expiry (1 s, rtjam.md §3), as if its jammer had left;
//! * after that silence the next packet starts a new stream.
//!
//! A second sender that copies the established stream's sequence numbers and timing
//! cannot be told apart without the room server's help: RTJam has no authentication
//! (rtjam.md §7). Nothing allocates.

use super::packet::{SAMPLE_RATE, STANDARD_FRAMES};

/// Settings of a [`StreamGuard`]. `Default` suits rtjam streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardConfig {
    /// Silence after which the client_id is free for a new stream (default 1 s).
    pub expiry_us: u64,
    /// Silence of the established stream after which a candidate that never
    /// interleaved with it may take over (default 250 ms).
    pub switch_after_us: u64,
    /// Packets a candidate must continue itself for before it may take over (default 4).
    pub switch_packets: u32,
    /// Sequence numbers a packet may be behind the newest, or ahead of it besides what
    /// the elapsed time allows (default 64, a jitter buffer's ring).
    pub sequence_window: u32,
    /// How much earlier than its sequence implies a packet's client_time may be
    /// (default 20 ms: packets sent in a burst after the sender stalled).
    pub client_time_slack_us: u64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            expiry_us: 1_000_000,
            switch_after_us: 250_000,
            switch_packets: 4,
            sequence_window: 64,
            client_time_slack_us: 20_000,
        }
    }
}

/// What [`StreamGuard::check`] decided about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// It continues the established stream.
    Continues,
    /// It starts a new stream: the first packet, or the first after the expiry.
    NewStream,
    /// The sender restarted: its new stream replaced the established one.
    Restarted,
    /// It is not the established stream's: drop it.
    Refused {
        /// Whether its stream was seen interleaved with the established one (a second
        /// sender under the same client_id, not a restart).
        interleaved: bool,
    },
}

impl Verdict {
    /// Whether the packet is to be used.
    pub fn accepted(self) -> bool {
        !matches!(self, Verdict::Refused { .. })
    }
}

/// Counters of a [`StreamGuard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GuardStats {
    /// Packets accepted.
    pub accepted: u64,
    /// Packets refused while their stream interleaved with the established one.
    pub intruder: u64,
    /// Packets refused that never interleaved (held back while the sender may be
    /// restarting).
    pub discontinuous: u64,
    /// Times a restarted stream took over.
    pub restarts: u64,
}

/// One packet's place in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPoint {
    /// Arrival, µs.
    pub arrival_us: u64,
    /// Wire sequence number.
    pub sequence: u32,
    /// The sender's client_time, µs (0 when the sender does not set it).
    pub client_time: u64,
    /// Frames per channel (0 for a header-only packet).
    pub frames: usize,
}

#[derive(Debug, Clone, Copy)]
struct Track {
    /// Newest sequence, its client_time and frames per packet.
    sequence: u32,
    client_time: u64,
    frames: usize,
    /// Latest arrival of any of its packets.
    last_arrival_us: u64,
    /// Arrival of its newest sequence.
    newest_arrival_us: u64,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    track: Track,
    /// Packets that moved it forward.
    packets: u32,
    interleaved: bool,
}

/// Follows the established stream of one client_id. See the module documentation.
#[derive(Debug, Clone)]
pub struct StreamGuard {
    config: GuardConfig,
    established: Option<Track>,
    candidate: Option<Candidate>,
    stats: GuardStats,
}

impl Default for StreamGuard {
    fn default() -> Self {
        StreamGuard::new(GuardConfig::default())
    }
}

impl Track {
    fn new(p: &StreamPoint) -> Track {
        Track {
            sequence: p.sequence,
            client_time: p.client_time,
            frames: p.frames,
            last_arrival_us: p.arrival_us,
            newest_arrival_us: p.arrival_us,
        }
    }

    /// Whether `p` continues this stream (see the module documentation).
    fn continued_by(&self, p: &StreamPoint, config: &GuardConfig) -> bool {
        // Distance on the 32-bit circle, signed.
        let ahead = p.sequence.wrapping_sub(self.sequence) as i32;
        if ahead <= 0 {
            return ahead.unsigned_abs() <= config.sequence_window;
        }
        let ahead = u64::from(ahead.unsigned_abs());
        // Up to 750 packets per second (64-frame senders) may have been counted since.
        let elapsed = p.arrival_us.saturating_sub(self.newest_arrival_us);
        if ahead > u64::from(config.sequence_window) + elapsed / 1_333 {
            return false;
        }
        if p.client_time == 0 || self.client_time == 0 {
            return true;
        }
        let frames = match (p.frames, self.frames) {
            (0, 0) => STANDARD_FRAMES,
            (0, f) | (f, _) => f,
        };
        let implied = ahead * frames as u64 * 1_000_000 / u64::from(SAMPLE_RATE.hz());
        p.client_time.saturating_add(config.client_time_slack_us)
            >= self.client_time.saturating_add(implied)
    }

    fn advance(&mut self, p: &StreamPoint) {
        let ahead = p.sequence.wrapping_sub(self.sequence) as i32;
        if ahead > 0 {
            self.sequence = p.sequence;
            self.client_time = p.client_time;
            if p.frames > 0 {
                self.frames = p.frames;
            }
            self.newest_arrival_us = self.newest_arrival_us.max(p.arrival_us);
        }
        self.last_arrival_us = self.last_arrival_us.max(p.arrival_us);
    }
}

impl StreamGuard {
    /// A guard with no stream yet.
    pub fn new(config: GuardConfig) -> StreamGuard {
        StreamGuard {
            config,
            established: None,
            candidate: None,
            stats: GuardStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &GuardStats {
        &self.stats
    }

    /// Arrival of the established stream's latest packet, if there is one.
    pub fn last_arrival_us(&self) -> Option<u64> {
        self.established.map(|t| t.last_arrival_us)
    }

    /// Decides about one packet (arrivals in order, µs).
    pub fn check(&mut self, p: &StreamPoint) -> Verdict {
        let config = self.config;
        let expired =
            |t: &Track| p.arrival_us.saturating_sub(t.last_arrival_us) >= config.expiry_us;
        let verdict = match self.established.as_mut() {
            None => {
                self.established = Some(Track::new(p));
                self.candidate = None;
                Verdict::NewStream
            }
            Some(t) if expired(t) => {
                *t = Track::new(p);
                self.candidate = None;
                Verdict::NewStream
            }
            Some(t) if t.continued_by(p, &config) => {
                t.advance(p);
                if let Some(c) = self.candidate.as_mut() {
                    if p.arrival_us.saturating_sub(c.track.last_arrival_us) < config.switch_after_us
                    {
                        // Both alive at once: a second sender, not a restart.
                        c.interleaved = true;
                    } else {
                        self.candidate = None;
                    }
                }
                Verdict::Continues
            }
            Some(t) => {
                let silent = p.arrival_us.saturating_sub(t.last_arrival_us);
                let candidate = match self.candidate.as_mut() {
                    Some(c) if c.track.continued_by(p, &config) => {
                        if (p.sequence.wrapping_sub(c.track.sequence) as i32) > 0 {
                            c.packets += 1;
                        }
                        c.track.advance(p);
                        *c
                    }
                    Some(c)
                        if p.arrival_us.saturating_sub(c.track.last_arrival_us)
                            < config.switch_after_us =>
                    {
                        // Neither stream's: keep the candidate being built.
                        *c
                    }
                    _ => {
                        let c = Candidate {
                            track: Track::new(p),
                            packets: 1,
                            interleaved: false,
                        };
                        self.candidate = Some(c);
                        c
                    }
                };
                if !candidate.interleaved
                    && silent >= config.switch_after_us
                    && candidate.packets >= config.switch_packets
                {
                    *t = candidate.track;
                    self.candidate = None;
                    self.stats.restarts += 1;
                    Verdict::Restarted
                } else {
                    Verdict::Refused {
                        interleaved: candidate.interleaved,
                    }
                }
            }
        };
        match verdict {
            Verdict::Refused { interleaved: true } => self.stats.intruder += 1,
            Verdict::Refused { .. } => self.stats.discontinuous += 1,
            _ => self.stats.accepted += 1,
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000_000;
    const PACKET_US: u64 = 2_667;

    /// Packet `k` of a stream that started at `start` with sequence `first`; sent (and
    /// stamped) on time, arriving `late` µs after.
    fn point(start: u64, first: u32, k: u32, late: u64) -> StreamPoint {
        let sent = start + u64::from(k) * PACKET_US;
        StreamPoint {
            arrival_us: sent + late,
            sequence: first.wrapping_add(k),
            client_time: sent,
            frames: 128,
        }
    }

    /// Deterministic jitter, 0..3 ms.
    fn jitter(k: u32) -> u64 {
        u64::from(k.wrapping_mul(2_654_435_761) >> 20) % 3_000
    }

    #[test]
    fn a_second_stream_under_the_same_client_id_is_refused_while_the_first_plays() {
        let mut guard = StreamGuard::default();
        // The jammer has played for 2 s when the intruder starts from sequence 0 at the
        // same rate; both arrive jittered and interleaved for 3 s.
        let mut events: Vec<(StreamPoint, bool)> = (0..1_875u32)
            .map(|k| (point(T0, 1_000, k, jitter(k)), true))
            .collect();
        let start = T0 + 2_000_000 + 1_000;
        events.extend((0..1_125u32).map(|k| (point(start, 0, k, jitter(k + 7)), false)));
        events.sort_by_key(|(p, _)| p.arrival_us);
        let mut first_refusals = 0;
        for (p, jammer) in &events {
            let verdict = guard.check(p);
            if *jammer {
                assert!(verdict.accepted(), "the jammer's {p:?} was refused");
            } else {
                assert!(!verdict.accepted(), "the intruder's {p:?} was accepted");
                first_refusals += usize::from(verdict == Verdict::Refused { interleaved: false });
            }
        }
        // Seen interleaved from the jammer's next packet on.
        assert!(first_refusals <= 2, "{first_refusals}");
        let s = guard.stats();
        assert_eq!(s.accepted, 1_875);
        assert_eq!(s.intruder + s.discontinuous, 1_125);
        assert_eq!(s.restarts, 0);
    }

    #[test]
    fn an_intruder_takes_the_client_id_only_once_the_jammer_has_left() {
        let mut guard = StreamGuard::default();
        // The intruder starts while the jammer plays, and goes on after it left.
        let start = T0 + 300 * PACKET_US + 100;
        let mut events: Vec<(StreamPoint, bool)> =
            (0..400).map(|k| (point(T0, 50, k, 0), true)).collect();
        events.extend((0..800).map(|k| (point(start, 9_000, k, 0), false)));
        events.sort_by_key(|(p, _)| p.arrival_us);
        let jammer_last = T0 + 399 * PACKET_US;
        let mut taken = None;
        for (p, jammer) in &events {
            let verdict = guard.check(p);
            if *jammer {
                assert!(verdict.accepted());
            } else if verdict.accepted() {
                taken.get_or_insert((p.arrival_us, verdict));
            }
        }
        let (at, verdict) = taken.expect("the client_id is taken over once free");
        assert_eq!(verdict, Verdict::NewStream);
        assert!(
            at >= jammer_last + 1_000_000,
            "taken {} µs after",
            at - jammer_last
        );
        assert!(at < jammer_last + 1_000_000 + PACKET_US);
    }

    #[test]
    fn a_jammer_restarting_its_sequence_is_followed() {
        for gap_us in [300_000u64, 20_000] {
            let mut guard = StreamGuard::default();
            for k in 0..400 {
                assert!(guard.check(&point(T0, 70_000, k, 0)).accepted());
            }
            // Rejoined from sequence 0 after `gap_us`.
            let start = T0 + 400 * PACKET_US + gap_us;
            let verdicts: Vec<Verdict> = (0..300)
                .map(|k| guard.check(&point(start, 0, k, 0)))
                .collect();
            let first = verdicts.iter().position(|v| v.accepted()).unwrap();
            assert_eq!(verdicts[first], Verdict::Restarted, "{gap_us}");
            assert!(verdicts[first..].iter().all(|v| v.accepted()), "{gap_us}");
            // Held back until 250 ms after the old stream's last packet, and for 4 packets.
            let waited = 400 * PACKET_US + gap_us + first as u64 * PACKET_US - 399 * PACKET_US;
            assert!(waited >= 250_000 || first == 3, "{gap_us}: {first}");
            assert!(
                first == 3 || waited < 250_000 + PACKET_US,
                "{gap_us}: {first}"
            );
            let s = guard.stats();
            assert_eq!((s.restarts, s.intruder), (1, 0), "{gap_us}");
        }
    }

    #[test]
    fn losses_reordering_duplicates_stalls_and_counting_through_silence_are_one_stream() {
        let mut guard = StreamGuard::default();
        let mut check = |p: StreamPoint| assert!(guard.check(&p).accepted(), "{p:?}");
        for k in 0..100 {
            check(point(T0, 0, k, 0));
            // The copy another seat receives.
            check(point(T0, 0, k, 5));
        }
        // 20 lost, then 3 reordered and a duplicate.
        check(point(T0, 0, 120, 0));
        check(point(T0, 0, 123, 0));
        check(point(T0, 0, 121, 0));
        check(point(T0, 0, 122, 0));
        check(point(T0, 0, 122, 0));
        // The sender stalls for 80 ms, then sends what it owes in a burst, stamped late.
        let stall = T0 + 124 * PACKET_US + 80_000;
        for k in 124..155u32 {
            check(StreamPoint {
                arrival_us: stall + u64::from(k),
                sequence: k,
                client_time: stall,
                frames: 128,
            });
        }
        // Silent for 590 ms, counting its sequence all along (a sender that suppresses
        // silence but keeps counting).
        for (k, sequence) in [(0u64, 155 + 221), (1, 155 + 222)] {
            let at = T0 + 1_000_000 + k * PACKET_US;
            check(StreamPoint {
                arrival_us: at,
                sequence,
                client_time: at,
                frames: 128,
            });
        }
        // Without client_time: the sequence alone.
        let mut guard = StreamGuard::default();
        for k in 0..50 {
            let mut p = point(T0, 0, k, 0);
            p.client_time = 0;
            assert!(guard.check(&p).accepted());
        }
        assert_eq!(guard.stats().accepted, 50);
    }

    #[test]
    fn an_intruder_close_behind_or_ahead_in_sequence_is_told_apart_by_its_client_time() {
        let mut guard = StreamGuard::default();
        for k in 0..200 {
            guard.check(&point(T0, 0, k, 0));
        }
        // The intruder numbers its packets 30 ahead of the jammer, sending at the same
        // time: its client_times are 80 ms early for those sequence numbers.
        let mut refused = 0;
        for k in 200..400u32 {
            assert!(guard.check(&point(T0, 0, k, 0)).accepted(), "{k}");
            let mut p = point(T0, 30, k, 100);
            p.client_time += 100;
            refused += usize::from(!guard.check(&p).accepted());
        }
        assert_eq!(refused, 200);
        assert!(guard.stats().intruder >= 199);
    }
}
