//! The sans-IO core of webhook delivery: which event to send next, when to retry,
//! what to give up on. No tokio, no clock reads: every call takes `now`.
//!
//! - **In order per call.** Each call has a line of pending events. Only a line's head
//!   is ever attempted, and the next event of that call becomes due only once the head
//!   was delivered or given up. Lines of different calls proceed independently: one
//!   call's failing event never holds up another call's.
//! - **Retries with backoff.** A failed attempt makes the head due again after
//!   `initial · 2^(attempt-1)`, capped at `max`, less up to a quarter of it at random
//!   (jitter, so that the lines of many calls do not retry in step).
//! - **Bounded.** At most `queue_limit` events are held; beyond it the oldest one not
//!   being attempted right now is dropped. An event older than `max_age`, or whose
//!   `max_attempts` failed, is given up (expired).
//!
//! Memory is bounded by the limit: the lines hold at most `queue_limit` events, the
//! oldest-first index is compacted when it holds more than twice that, and a line's
//! sequence counter is forgotten with its call's last event.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// When to retry and when to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts of one event before it is given up (at least 1).
    pub max_attempts: u32,
    /// Wait after the first failed attempt.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// Events older than this are given up, attempted or not.
    pub max_age: Duration,
    /// Events held at most; beyond, the oldest is dropped.
    pub queue_limit: usize,
}

impl RetryPolicy {
    /// The wait after `failed_attempts` attempts failed, before jitter: `initial`
    /// doubling each time, at most `max`.
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        let doublings = failed_attempts.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// What the queue has counted since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Events the endpoint accepted.
    pub delivered: u64,
    /// Failed attempts that will be tried again.
    pub retried: u64,
    /// Events dropped unattempted or between attempts because the queue was full.
    pub dropped: u64,
    /// Events given up: older than `max_age`, or `max_attempts` failed.
    pub expired: u64,
}

/// One attempt to make: the driver sends `payload` and reports back with `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt<T> {
    /// Identifies the event in [`WebhookQueue::delivered`] and [`WebhookQueue::failed`].
    pub key: u64,
    /// The call.
    pub call: Uuid,
    /// The event's number among its call's events, from 1.
    pub seq: u64,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// What to send.
    pub payload: T,
}

/// What became of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Tried again at this time.
    RetryAt(Instant),
    /// Given up (too old or too many attempts); the call's next event is due.
    GivenUp,
    /// No such attempt was under way (reported twice, or never made).
    Unknown,
}

/// What [`WebhookQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// The new event's number among its call's events.
    pub seq: u64,
    /// Older events dropped to make room.
    pub dropped: u64,
}

#[derive(Debug)]
struct Pending<T> {
    key: u64,
    seq: u64,
    created: Instant,
    failed_attempts: u32,
    not_before: Instant,
    payload: T,
}

#[derive(Debug)]
struct Line<T> {
    events: VecDeque<Pending<T>>,
    /// The head's key while it is being attempted.
    in_flight: Option<u64>,
}

impl<T> Line<T> {
    fn new() -> Line<T> {
        Line {
            events: VecDeque::new(),
            in_flight: None,
        }
    }
}

/// Pending webhook deliveries of every call, in order per call (module docs).
#[derive(Debug)]
pub struct WebhookQueue<T> {
    policy: RetryPolicy,
    lines: HashMap<Uuid, Line<T>>,
    /// The next `seq` of each call that has had an event and has not ended.
    next_seq: HashMap<Uuid, u64>,
    /// Idle heads by the time they are due (then by age): what [`Self::poll_due`] takes.
    due: BTreeSet<(Instant, u64)>,
    /// Events by age (keys grow with time); keys of events no longer held are skipped
    /// and compacted away.
    oldest_first: VecDeque<u64>,
    /// The call of each held event.
    held: HashMap<u64, Uuid>,
    next_key: u64,
    jitter_state: u64,
    counts: DeliveryCounts,
}

impl<T: Clone> WebhookQueue<T> {
    /// An empty queue; `seed` drives the jitter (any value; fixed in tests).
    pub fn new(policy: RetryPolicy, seed: u64) -> WebhookQueue<T> {
        WebhookQueue {
            policy,
            lines: HashMap::new(),
            next_seq: HashMap::new(),
            due: BTreeSet::new(),
            oldest_first: VecDeque::new(),
            held: HashMap::new(),
            next_key: 0,
            // xorshift must not start at zero.
            jitter_state: seed | 1,
            counts: DeliveryCounts::default(),
        }
    }

    /// Events held (pending or being attempted).
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The counts so far.
    pub fn counts(&self) -> DeliveryCounts {
        self.counts
    }

    /// Adds an event of `call`, built by `build` from its sequence number. `last` says
    /// it is the call's last event (`call_ended`): the call's numbering ends with it.
    /// When the queue is over its limit, the oldest events not being attempted are
    /// dropped.
    pub fn push(
        &mut self,
        call: Uuid,
        last: bool,
        now: Instant,
        build: impl FnOnce(u64) -> T,
    ) -> Pushed {
        let seq = if last {
            self.next_seq.remove(&call).unwrap_or(1)
        } else {
            let next = self.next_seq.entry(call).or_insert(1);
            let seq = *next;
            *next += 1;
            seq
        };
        let key = self.next_key;
        self.next_key += 1;
        let line = self.lines.entry(call).or_insert_with(Line::new);
        let becomes_head = line.events.is_empty() && line.in_flight.is_none();
        line.events.push_back(Pending {
            key,
            seq,
            created: now,
            failed_attempts: 0,
            not_before: now,
            payload: build(seq),
        });
        if becomes_head {
            self.due.insert((now, key));
        }
        self.held.insert(key, call);
        self.oldest_first.push_back(key);
        let mut dropped = 0;
        while self.held.len() > self.policy.queue_limit {
            if !self.drop_oldest_idle(now) {
                break;
            }
            dropped += 1;
        }
        self.counts.dropped += dropped;
        self.compact();
        Pushed { seq, dropped }
    }

    /// The next attempt due at `now`, if any; its call's line is busy until
    /// [`Self::delivered`] or [`Self::failed`] is told about it. Gives up first on
    /// events past `max_age`.
    pub fn poll_due(&mut self, now: Instant) -> Option<Attempt<T>> {
        self.expire(now);
        let &(at, key) = self.due.first()?;
        if at > now {
            return None;
        }
        self.due.remove(&(at, key));
        let call = *self.held.get(&key)?;
        let line = self.lines.get_mut(&call)?;
        let head = line.events.front()?;
        debug_assert_eq!(head.key, key);
        line.in_flight = Some(key);
        Some(Attempt {
            key,
            call,
            seq: head.seq,
            attempt: head.failed_attempts + 1,
            payload: head.payload.clone(),
        })
    }

    /// When the next attempt falls due (it may be now), if any is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.first().map(|&(at, _)| at)
    }

    /// The attempt `key` was accepted: its call's next event is due at once.
    pub fn delivered(&mut self, key: u64, now: Instant) {
        let Some(call) = self.finish_attempt(key) else {
            return;
        };
        if self.remove_head(call, key) {
            self.counts.delivered += 1;
        }
        self.schedule_head(call, now);
    }

    /// The attempt `key` failed: it is tried again after the backoff, or given up.
    pub fn failed(&mut self, key: u64, now: Instant) -> FailureOutcome {
        let Some(call) = self.finish_attempt(key) else {
            return FailureOutcome::Unknown;
        };
        let policy = self.policy;
        let jitter = self.next_jitter();
        let outcome = match self.lines.get_mut(&call).and_then(|l| l.events.front_mut()) {
            Some(head) if head.key == key => {
                head.failed_attempts += 1;
                let too_old = now.saturating_duration_since(head.created) >= policy.max_age;
                if too_old || head.failed_attempts >= policy.max_attempts {
                    FailureOutcome::GivenUp
                } else {
                    let wait = policy.backoff(head.failed_attempts);
                    // Up to a quarter less, so lines that failed together spread out.
                    head.not_before = now + wait.mul_f64(1.0 - 0.25 * jitter);
                    FailureOutcome::RetryAt(head.not_before)
                }
            }
            _ => FailureOutcome::Unknown,
        };
        match outcome {
            FailureOutcome::RetryAt(at) => {
                self.counts.retried += 1;
                self.due.insert((at, key));
            }
            FailureOutcome::GivenUp => {
                self.remove_head(call, key);
                self.counts.expired += 1;
                self.schedule_head(call, now);
            }
            FailureOutcome::Unknown => self.schedule_head(call, now),
        }
        outcome
    }

    /// Makes every waiting head due at `now`, whatever its backoff (a last attempt at
    /// shutdown).
    pub fn hurry(&mut self, now: Instant) {
        let waiting: Vec<(Instant, u64)> = self.due.iter().copied().collect();
        self.due.clear();
        for (_, key) in waiting {
            if let Some(head) = self
                .held
                .get(&key)
                .and_then(|call| self.lines.get_mut(call))
                .and_then(|line| line.events.front_mut())
            {
                head.not_before = now;
            }
            self.due.insert((now, key));
        }
    }

    /// Gives up on events past `max_age` that are not being attempted, oldest first.
    fn expire(&mut self, now: Instant) {
        let max_age = self.policy.max_age;
        let mut index = 0;
        while let Some(&key) = self.oldest_first.get(index) {
            let Some(&call) = self.held.get(&key) else {
                // No longer held: forget it if it is at the front.
                if index == 0 {
                    self.oldest_first.pop_front();
                } else {
                    index += 1;
                }
                continue;
            };
            let Some(line) = self.lines.get(&call) else {
                index += 1;
                continue;
            };
            let Some(event) = line.events.iter().find(|e| e.key == key) else {
                index += 1;
                continue;
            };
            if now.saturating_duration_since(event.created) < max_age {
                break;
            }
            if line.in_flight == Some(key) {
                // Its attempt's outcome decides.
                index += 1;
                continue;
            }
            let not_before = self.remove_event(call, key);
            self.counts.expired += 1;
            self.schedule_head(call, not_before.map_or(now, |at| at.max(now)));
        }
    }

    /// Drops the oldest event not being attempted; false if every held event is.
    fn drop_oldest_idle(&mut self, now: Instant) -> bool {
        let victim = self.oldest_first.iter().find_map(|key| {
            let call = self.held.get(key)?;
            let line = self.lines.get(call)?;
            (line.in_flight != Some(*key)).then_some((*call, *key))
        });
        let Some((call, key)) = victim else {
            return false;
        };
        let not_before = self.remove_event(call, key);
        self.schedule_head(call, not_before.map_or(now, |at| at.max(now)));
        true
    }

    /// Takes event `key` out of its line (and out of `due` if it was an idle head);
    /// returns when it was to be attempted next, which its successor inherits (an
    /// endpoint that is failing is not tried again sooner because an event was dropped).
    fn remove_event(&mut self, call: Uuid, key: u64) -> Option<Instant> {
        self.held.remove(&key);
        let line = self.lines.get_mut(&call)?;
        let at = line.events.iter().position(|e| e.key == key)?;
        let event = line.events.remove(at)?;
        self.due
            .remove(&(event.not_before, key))
            .then_some(event.not_before)
    }

    /// Removes the head `key` of `call`'s line; whether it was there.
    fn remove_head(&mut self, call: Uuid, key: u64) -> bool {
        let Some(line) = self.lines.get_mut(&call) else {
            return false;
        };
        if line.events.front().is_some_and(|head| head.key == key) {
            line.events.pop_front();
            self.held.remove(&key);
            true
        } else {
            false
        }
    }

    /// Ends the attempt `key`: its line is no longer busy. The call, if it was one.
    /// (An event being attempted is never dropped or expired, so it is still held.)
    fn finish_attempt(&mut self, key: u64) -> Option<Uuid> {
        let call = *self.held.get(&key)?;
        let line = self.lines.get_mut(&call)?;
        if line.in_flight != Some(key) {
            return None;
        }
        line.in_flight = None;
        Some(call)
    }

    /// Makes the new head of `call`'s idle line due at `at` (a head that already
    /// failed keeps its backoff), or forgets the line when it is empty. Only called
    /// when the line's previous head left, so the new head has no entry in `due` yet.
    fn schedule_head(&mut self, call: Uuid, at: Instant) {
        let Some(line) = self.lines.get_mut(&call) else {
            return;
        };
        if line.in_flight.is_some() {
            return;
        }
        match line.events.front_mut() {
            None => {
                self.lines.remove(&call);
            }
            Some(head) => {
                if head.failed_attempts == 0 {
                    head.not_before = at;
                }
                self.due.insert((head.not_before, head.key));
            }
        }
    }

    /// Forgets keys of events no longer held once they are most of the index.
    fn compact(&mut self) {
        while self
            .oldest_first
            .front()
            .is_some_and(|key| !self.held.contains_key(key))
        {
            self.oldest_first.pop_front();
        }
        if self.oldest_first.len() > 2 * self.held.len() + 64 {
            let held = &self.held;
            self.oldest_first.retain(|key| held.contains_key(key));
        }
    }

    /// A number in [0, 1) (xorshift64*).
    fn next_jitter(&mut self) -> f64 {
        let mut x = self.jitter_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.jitter_state = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            max_age: Duration::from_secs(3600),
            queue_limit: 100,
        }
    }

    /// Virtual time: `ms` after a fixed start.
    struct Clock(Instant);

    impl Clock {
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    fn call(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// Pushes `(call, label)` events at `now`; the payload is the label.
    fn push(
        queue: &mut WebhookQueue<&'static str>,
        call: Uuid,
        label: &'static str,
        now: Instant,
    ) -> Pushed {
        queue.push(call, label.starts_with("end"), now, |_| label)
    }

    #[test]
    fn a_calls_events_go_one_at_a_time_in_order_and_are_numbered_from_one() {
        let clock = Clock(Instant::now());
        let mut queue = WebhookQueue::new(policy(), 7);
        let a = call(1);
        for label in ["start", "dtmf", "end"] {
            push(&mut queue, a, label, clock.at(0));
        }
        let first = queue.poll_due(clock.at(0)).unwrap();
        assert_eq!((first.payload, first.seq, first.attempt), ("start", 1, 1));
        // The next one waits for the first.
        assert_eq!(queue.poll_due(clock.at(0)), None);
        queue.delivered(first.key, clock.at(5));
        let second = queue.poll_due(clock.at(5)).unwrap();
        assert_eq!((second.payload, second.seq), ("dtmf", 2));
        queue.delivered(second.key, clock.at(6));
        let third = queue.poll_due(clock.at(6)).unwrap();
        assert_eq!((third.payload, third.seq), ("end", 3));
        queue.delivered(third.key, clock.at(7));
        assert!(queue.is_empty());
        assert_eq!(queue.counts().delivered, 3);
        // The call's numbering ended with its last event.
        assert_eq!(push(&mut queue, a, "start", clock.at(8)).seq, 1);
    }

    #[test]
    fn a_failing_event_holds_up_its_call_and_not_the_others() {
        let clock = Clock(Instant::now());
        let mut queue = WebhookQueue::new(policy(), 7);
        let (a, b) = (call(1), call(2));
        push(&mut queue, a, "a1", clock.at(0));
        push(&mut queue, a, "a2", clock.at(0));
        push(&mut queue, b, "b1", clock.at(1));
        push(&mut queue, b, "b2", clock.at(1));
        let a1 = queue.poll_due(clock.at(1)).unwrap();
        let b1 = queue.poll_due(clock.at(1)).unwrap();
        assert_eq!((a1.payload, b1.payload), ("a1", "b1"));
        let FailureOutcome::RetryAt(retry) = queue.failed(a1.key, clock.at(2)) else {
            panic!("retried");
        };
        queue.delivered(b1.key, clock.at(2));
        // b goes on; a waits for its retry and sends nothing else meanwhile.
        let b2 = queue.poll_due(clock.at(2)).unwrap();
        assert_eq!(b2.payload, "b2");
        assert_eq!(queue.poll_due(clock.at(2)), None);
        assert_eq!(queue.next_due(), Some(retry));
        let again = queue.poll_due(retry).unwrap();
        assert_eq!((again.payload, again.attempt, again.key), ("a1", 2, a1.key));
        queue.delivered(again.key, retry);
        assert_eq!(queue.poll_due(retry).unwrap().payload, "a2");
        assert_eq!(queue.counts().retried, 1);
    }

    #[test]
    fn retries_back_off_doubling_with_jitter_up_to_the_cap_then_give_up() {
        let clock = Clock(Instant::now());
        let policy = RetryPolicy {
            max_attempts: 10,
            max_backoff: Duration::from_secs(2),
            ..policy()
        };
        let mut queue = WebhookQueue::new(policy, 42);
        push(&mut queue, call(1), "x", clock.at(0));
        push(&mut queue, call(1), "y", clock.at(0));
        let mut now = clock.at(0);
        let mut waits = Vec::new();
        for attempt in 1..=10 {
            let due = queue.poll_due(now).unwrap();
            assert_eq!((due.payload, due.attempt), ("x", attempt));
            match queue.failed(due.key, now) {
                FailureOutcome::RetryAt(at) => {
                    waits.push(at - now);
                    // Not due a moment before.
                    assert_eq!(queue.poll_due(at - Duration::from_millis(1)), None);
                    now = at;
                }
                FailureOutcome::GivenUp => assert_eq!(attempt, 10),
                FailureOutcome::Unknown => panic!("unknown"),
            }
        }
        let nominal_ms = [250, 500, 1000, 2000, 2000, 2000, 2000, 2000, 2000];
        assert_eq!(waits.len(), nominal_ms.len());
        for (wait, nominal) in waits.iter().zip(nominal_ms) {
            let nominal = Duration::from_millis(nominal);
            assert!(
                *wait <= nominal && *wait >= nominal.mul_f64(0.75),
                "{wait:?} for {nominal:?}"
            );
        }
        // Jittered: not all the capped waits are equal.
        assert!(waits[4..].windows(2).any(|w| w[0] != w[1]), "{waits:?}");
        // Given up, the call's next event is due at once.
        assert_eq!(queue.poll_due(now).unwrap().payload, "y");
        assert_eq!(queue.counts().expired, 1);
        assert_eq!(queue.counts().retried, 9);
    }

    #[test]
    fn beyond_the_limit_the_oldest_idle_events_are_dropped_and_counted() {
        let clock = Clock(Instant::now());
        let mut queue = WebhookQueue::new(
            RetryPolicy {
                queue_limit: 3,
                ..policy()
            },
            7,
        );
        let (a, b) = (call(1), call(2));
        push(&mut queue, a, "a1", clock.at(0));
        let a1 = queue.poll_due(clock.at(0)).unwrap();
        push(&mut queue, a, "a2", clock.at(1));
        push(&mut queue, b, "b1", clock.at(2));
        assert_eq!(push(&mut queue, b, "b2", clock.at(3)).dropped, 1);
        // a1 is being attempted, so a2 (the oldest idle one) went.
        assert_eq!(queue.len(), 3);
        let pushed = push(&mut queue, a, "a3", clock.at(4));
        assert_eq!((pushed.dropped, pushed.seq), (1, 3));
        assert_eq!(queue.counts().dropped, 2);
        // b1 went; b2 is b's head now.
        let b2 = queue.poll_due(clock.at(4)).unwrap();
        assert_eq!((b2.payload, b2.seq), ("b2", 2));
        queue.delivered(a1.key, clock.at(5));
        let a3 = queue.poll_due(clock.at(5)).unwrap();
        assert_eq!((a3.payload, a3.seq), ("a3", 3));
        // Thousands more never hold more than the limit.
        for i in 0..5_000u128 {
            queue.push(call(100 + i % 50), false, clock.at(6), |_| "more");
            assert!(queue.len() <= 3);
        }
        assert!(queue.oldest_first.len() <= 2 * 3 + 64 + 1);
        assert!(queue.lines.len() <= 3);
    }

    #[test]
    fn events_older_than_max_age_are_given_up() {
        let clock = Clock(Instant::now());
        let mut queue = WebhookQueue::new(
            RetryPolicy {
                max_age: Duration::from_secs(10),
                max_attempts: 100,
                ..policy()
            },
            7,
        );
        let (a, b) = (call(1), call(2));
        push(&mut queue, a, "a1", clock.at(0));
        push(&mut queue, a, "a2", clock.at(0));
        push(&mut queue, b, "b1", clock.at(9_000));
        // a1 fails until it is too old; a2, never attempted, expires with it.
        let mut now = clock.at(0);
        let mut a1_attempts = 0;
        while queue.counts().expired < 2 {
            match queue.poll_due(now) {
                Some(due) => {
                    assert_ne!(due.payload, "a2");
                    if due.payload == "a1" {
                        a1_attempts += 1;
                    }
                    queue.failed(due.key, now);
                }
                None => now = queue.next_due().unwrap(),
            }
        }
        assert!(a1_attempts >= 5, "{a1_attempts}");
        assert!(
            now >= clock.at(10_000) && now < clock.at(19_000),
            "{:?}",
            now - clock.at(0)
        );
        // b1 is younger and still held.
        assert_eq!(queue.len(), 1);
        let b1 = queue.poll_due(queue.next_due().unwrap()).unwrap();
        assert_eq!(b1.payload, "b1");
    }

    #[test]
    fn hurry_makes_every_waiting_retry_due_now() {
        let clock = Clock(Instant::now());
        let mut queue = WebhookQueue::new(policy(), 7);
        push(&mut queue, call(1), "a1", clock.at(0));
        let a1 = queue.poll_due(clock.at(0)).unwrap();
        queue.failed(a1.key, clock.at(0));
        assert_eq!(queue.poll_due(clock.at(1)), None);
        queue.hurry(clock.at(1));
        assert_eq!(queue.poll_due(clock.at(1)).unwrap().payload, "a1");
    }
}
