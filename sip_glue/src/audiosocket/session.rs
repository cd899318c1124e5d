//! Session-level rules of the protocol, sans-IO: the ID handshake (§4, §10.5,
//! §10.6). Time is a parameter, so the rules are tested without sockets or sleeps.

use super::frame::Message;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Guards the first message of a session: it must be the ID, once.
///
/// Feed it every decoded message with [`on_message`](IdGate::on_message) and the end
/// of the stream with [`on_eof`](IdGate::on_eof); until the ID has arrived, wait at
/// most until [`deadline`](IdGate::deadline) and then call
/// [`check_deadline`](IdGate::check_deadline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdGate {
    state: GateState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GateState {
    AwaitingId {
        deadline: Instant,
        timeout: Duration,
    },
    Identified(Uuid),
}

/// What the session should do with a message that passed the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GateOutcome {
    /// The ID arrived: the session is now keyed by this UUID (it need not be unique,
    /// and may be nil, §4).
    Identified(Uuid),
    /// A message after the ID: process it.
    Pass,
    /// A second ID: a protocol violation to report; it is ignored and the session
    /// keeps its first UUID (§10.6).
    SecondIdIgnored(Uuid),
    /// An unknown kind before the ID: skipped and reported (§10.4); still waiting
    /// for the ID.
    SkippedBeforeId {
        /// The unknown kind byte.
        kind: u8,
    },
}

/// A fatal handshake failure: close the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A known message other than the ID came first (§10.5: audio before the ID is a
    /// protocol violation).
    #[error("message of kind 0x{kind:02x} arrived before the ID")]
    MessageBeforeId {
        /// Its kind byte.
        kind: u8,
    },
    /// No ID within the configured time.
    #[error("no ID message within {timeout:?}")]
    IdTimeout {
        /// The configured timeout.
        timeout: Duration,
    },
}

/// How a stream that ended (EOF) ended, as far as the handshake is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EofOutcome {
    /// EOF before any ID: typically the dialplan app on an unanswered channel, which
    /// connects and closes without a byte (§4). Not an error worth shouting about.
    Unanswered,
    /// EOF after the ID: the normal end of a call, a hangup on Asterisk's side (§8).
    Ended(Uuid),
}

impl IdGate {
    /// A gate for a connection accepted at `now` that must deliver its ID within
    /// `timeout` (the fact sheet suggests about 2 s, §10.5; Asterisk sends it within
    /// 10 ms of connecting, §4).
    pub fn new(now: Instant, timeout: Duration) -> IdGate {
        let deadline = now.checked_add(timeout).unwrap_or(now);
        IdGate {
            state: GateState::AwaitingId { deadline, timeout },
        }
    }

    /// The session's UUID, once the ID has arrived.
    pub fn id(&self) -> Option<Uuid> {
        match self.state {
            GateState::Identified(id) => Some(id),
            GateState::AwaitingId { .. } => None,
        }
    }

    /// When to give up waiting for the ID; `None` once it has arrived.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            GateState::AwaitingId { deadline, .. } => Some(deadline),
            GateState::Identified(_) => None,
        }
    }

    /// Fails with [`HandshakeError::IdTimeout`] if the ID is still missing at `now`
    /// and the deadline has passed.
    pub fn check_deadline(&self, now: Instant) -> Result<(), HandshakeError> {
        match self.state {
            GateState::AwaitingId { deadline, timeout } if now >= deadline => {
                Err(HandshakeError::IdTimeout { timeout })
            }
            _ => Ok(()),
        }
    }

    /// Applies the ID rules to one decoded message.
    pub fn on_message(&mut self, msg: &Message) -> Result<GateOutcome, HandshakeError> {
        match (self.state, msg) {
            (GateState::AwaitingId { .. }, Message::Id(id)) => {
                self.state = GateState::Identified(*id);
                Ok(GateOutcome::Identified(*id))
            }
            (GateState::AwaitingId { .. }, Message::Unknown { kind, .. }) => {
                Ok(GateOutcome::SkippedBeforeId { kind: *kind })
            }
            (GateState::AwaitingId { .. }, other) => Err(HandshakeError::MessageBeforeId {
                kind: other.kind_byte(),
            }),
            (GateState::Identified(_), Message::Id(second)) => {
                Ok(GateOutcome::SecondIdIgnored(*second))
            }
            (GateState::Identified(_), _) => Ok(GateOutcome::Pass),
        }
    }

    /// Classifies an EOF (a clean one or [`CodecError::TruncatedAtEof`](super::CodecError)).
    pub fn on_eof(&self) -> EofOutcome {
        match self.state {
            GateState::AwaitingId { .. } => EofOutcome::Unanswered,
            GateState::Identified(id) => EofOutcome::Ended(id),
        }
    }
}
