//! Deleted broadcasts whose zones are still served ([`RetiringBroadcast`]), and how
//! the owner of a broadcast talks to its encoder thread ([`EncoderControl`]). Apart from
//! the broadcasts themselves so that the DNS server, which keeps the retiring ones, does
//! not depend on the broadcast module.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use codecs::aodns::ZoneRoot;

use super::ledger::SequenceLedger;
use super::zone::{PackRecords, Zone, Zones};
use crate::threads::{Joined, OwnedThread};

/// What the owner of a broadcast asks of its encoder thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Command {
    /// Encode the input.
    Run = 0,
    /// The broadcast was deleted: go on with silence until the grace period ends.
    Retire = 1,
    /// A new broadcast takes the zone over: return the state.
    HandOver = 2,
    /// End now and remove the zone (the gateway is stopping).
    Stop = 3,
}

/// The command, shared between the owner and the encoder thread.
#[derive(Debug, Default)]
pub(crate) struct EncoderControl(AtomicU8);

impl EncoderControl {
    pub(crate) fn get(&self) -> Command {
        match self.0.load(Ordering::Acquire) {
            0 => Command::Run,
            1 => Command::Retire,
            2 => Command::HandOver,
            _ => Command::Stop,
        }
    }

    pub(crate) fn set(&self, command: Command) {
        self.0.store(command as u8, Ordering::Release);
    }
}

/// What a retiring broadcast hands to its successor on the same domain.
pub(crate) struct Handover {
    pub(crate) zone: Arc<Zone>,
    pub(crate) ledger: SequenceLedger,
    pub(crate) listed: VecDeque<Arc<PackRecords>>,
    pub(crate) delisted: VecDeque<(Instant, Arc<PackRecords>)>,
}

/// A deleted broadcast whose zone is still served: its encoder thread goes on with
/// silence until the grace period ends, then removes the zone. Kept by the DNS server.
pub struct RetiringBroadcast {
    pub(crate) root: ZoneRoot,
    pub(crate) control: Arc<EncoderControl>,
    pub(crate) thread: OwnedThread<Option<Handover>>,
    /// Removed here if the encoder thread panicked instead of removing it.
    pub(crate) zone: Arc<Zone>,
    pub(crate) zones: Arc<Zones>,
}

impl std::fmt::Debug for RetiringBroadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetiringBroadcast")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl RetiringBroadcast {
    /// The zone.
    pub fn root(&self) -> &ZoneRoot {
        &self.root
    }

    /// The grace period is over and the zone removed.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Ends the grace period now, removing the zone; waits for the encoder thread.
    pub fn stop(self) {
        self.control.set(Command::Stop);
        self.thread.unpark();
        if let Joined::Panicked(_) = self.thread.join() {
            // The thread did not get to remove the zone (the panic is logged by the join).
            self.zones.remove(&self.zone);
        }
    }

    /// The zone and state for a new broadcast of the same domain; `None` if the grace
    /// period ended first (the zone is gone).
    pub(crate) fn take_over(self) -> Option<Handover> {
        self.control.set(Command::HandOver);
        self.thread.unpark();
        match self.thread.join() {
            Joined::Finished(handover) => handover,
            Joined::Panicked(_) | Joined::AlreadyJoined => {
                self.zones.remove(&self.zone);
                None
            }
        }
    }
}
