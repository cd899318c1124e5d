//! The AES67 media thread: every flow's packets, on the PTP media clock.
//!
//! One thread serves all flows (rather than one per flow) so that N flows cost one
//! wake-up per packet time, not N: flows with the same packet time share their due
//! times, because every schedule starts on a packet boundary of the same media clock.
//! Each turn it reads the media clock once, drains the receive sockets into their jitter
//! buffers, plays the receive chunks that are due, sends the transmit packets that are
//! due (catching up if it woke late), then sleeps until the earliest next due time, at
//! most 1 ms. It asks for `SCHED_FIFO` like the engine thread when allowed, because its
//! wake-up latency is the packets' send jitter.
//!
//! Flows come and go as [`Command`]s from the control side; whatever the thread lets go
//! of goes back over a channel to a reaper thread, so nothing is freed here.

use std::io;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use super::rx::{RxCore, Subscription};
use super::tx::{TxCore, TxPoll};
use crate::media_clock::MediaClock;
use crate::threads::{OwnedThread, Priority, StopSignal};

/// Longest sleep between turns (commands and receive sockets are looked at every turn).
const MAX_SLEEP_NS: u64 = 1_000_000;
/// Datagrams read from one socket per turn at most (a flood cannot starve the others).
const MAX_DATAGRAMS_PER_TURN: usize = 256;
/// `SCHED_FIFO` priority asked for (the engine thread's).
const FIFO_PRIORITY: u8 = 40;

/// A transmit flow as the media thread runs it.
pub struct TxEndpoint {
    /// Flow id.
    pub id: u64,
    /// The sans-IO core.
    pub core: TxCore,
    /// Connected to the flow's group and port.
    pub socket: UdpSocket,
    /// One packet, reused.
    pub buffer: Vec<u8>,
}

/// A receive flow as the media thread runs it.
pub struct RxEndpoint {
    /// Flow id.
    pub id: u64,
    /// The sans-IO core.
    pub core: RxCore,
    /// The subscribed stream's socket, if subscribed.
    pub socket: Option<UdpSocket>,
}

/// A stream for a receive flow: its socket and jitter buffer.
pub struct RxSource {
    /// Joined to the stream's group.
    pub socket: UdpSocket,
    /// Its jitter buffer.
    pub subscription: Box<Subscription>,
}

/// A change sent to the media thread.
pub enum Command {
    /// Start sending a flow.
    AddTx(Box<TxEndpoint>),
    /// Start playing a receive flow.
    AddRx(Box<RxEndpoint>),
    /// Replace a receive flow's stream (`None`: unsubscribe).
    Subscribe {
        /// Flow id.
        id: u64,
        /// The new stream.
        source: Option<Box<RxSource>>,
    },
    /// Remove a flow; `done` hears when it is gone (its socket closed).
    Remove {
        /// Flow id.
        id: u64,
        /// Acknowledgement.
        done: mpsc::Sender<()>,
    },
}

/// What the thread lets go of, dropped by the reaper.
enum Retired {
    Tx(#[allow(dead_code)] Box<TxEndpoint>),
    Rx(#[allow(dead_code)] Box<RxEndpoint>),
    Socket(#[allow(dead_code)] UdpSocket),
    Subscription(#[allow(dead_code)] Box<Subscription>),
}

/// The running media thread, and the reaper that frees what it lets go of.
pub struct MediaThread {
    commands: mpsc::Sender<Command>,
    thread: OwnedThread,
    /// Ends when the media thread is gone (its sender with it); joined after it.
    reaper: OwnedThread,
}

impl MediaThread {
    /// Starts the thread on `clock`; `realtime` asks for `SCHED_FIFO`.
    pub fn start(clock: Arc<dyn MediaClock>, realtime: bool) -> io::Result<MediaThread> {
        let (commands, receiver) = mpsc::channel();
        let (retired_tx, retired_rx) = mpsc::channel::<Retired>();
        let reaper = OwnedThread::spawn(
            "aes67-reaper",
            Priority::Normal,
            move |_stop| {
                for _ in retired_rx {}
            },
        )?;
        let priority = Priority::realtime_if(realtime, FIFO_PRIORITY);
        let thread = OwnedThread::spawn("telepatch-aes67", priority, move |stop| {
            run(&receiver, clock.as_ref(), &stop, &retired_tx);
        })?;
        Ok(MediaThread {
            commands,
            thread,
            reaper,
        })
    }

    /// Sends a command; false if the thread has stopped.
    pub fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }

    /// Removes a flow and waits (up to a second) until the thread let go of it.
    pub fn remove(&self, id: u64) {
        let (done, wait) = mpsc::channel();
        if self.send(Command::Remove { id, done }) {
            let _ = wait.recv_timeout(Duration::from_secs(1));
        }
    }

    /// Stops the thread and waits for it, then for the reaper (which ends once the
    /// media thread's sender is gone).
    pub fn stop(&self) {
        let _ = self.thread.stop();
        let _ = self.reaper.join();
    }
}

impl Drop for MediaThread {
    fn drop(&mut self) {
        self.stop();
    }
}

// Endpoints stay boxed: they arrive boxed in commands and leave boxed for the reaper, so
// the media thread never moves them into or out of a fresh allocation.
#[allow(clippy::vec_box)]
fn run(
    commands: &mpsc::Receiver<Command>,
    clock: &dyn MediaClock,
    stop: &StopSignal,
    retired: &mpsc::Sender<Retired>,
) {
    let mut txs: Vec<Box<TxEndpoint>> = Vec::with_capacity(64);
    let mut rxs: Vec<Box<RxEndpoint>> = Vec::with_capacity(64);
    let mut datagram = vec![0u8; 2048];
    let mut waiting = false;
    while !stop.is_stopped() {
        while let Ok(command) = commands.try_recv() {
            apply(command, &mut txs, &mut rxs, retired);
        }
        let Some(now) = clock.ptp_now_ns() else {
            if !waiting {
                waiting = true;
                set_waiting(&txs, &rxs, true);
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        if waiting {
            waiting = false;
            set_waiting(&txs, &rxs, false);
        }
        let mut wake = now + MAX_SLEEP_NS;
        for rx in &mut rxs {
            if let Some(socket) = &rx.socket {
                for _ in 0..MAX_DATAGRAMS_PER_TURN {
                    match socket.recv(&mut datagram) {
                        Ok(n) => rx.core.push(&datagram[..n], now),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            rx.core.count_recv_error();
                            break;
                        }
                    }
                }
            }
            wake = wake.min(rx.core.play(now));
        }
        for tx in &mut txs {
            loop {
                match tx.core.poll(now, &mut tx.buffer) {
                    TxPoll::Packet(n) => match tx.socket.send(&tx.buffer[..n]) {
                        Ok(sent) => {
                            tx.core
                                .stats()
                                .bytes
                                .fetch_add(sent as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            tx.core.stats().send_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    TxPoll::WaitUntil(at) => {
                        wake = wake.min(at);
                        break;
                    }
                }
            }
        }
        if let Some(after) = clock.ptp_now_ns()
            && wake > after
        {
            std::thread::sleep(Duration::from_nanos((wake - after).min(MAX_SLEEP_NS)));
        }
    }
}

#[allow(clippy::vec_box)]
fn set_waiting(txs: &[Box<TxEndpoint>], rxs: &[Box<RxEndpoint>], waiting: bool) {
    for tx in txs {
        tx.core
            .stats()
            .waiting_for_clock
            .store(waiting, Ordering::Relaxed);
    }
    for rx in rxs {
        rx.core.set_waiting_for_clock(waiting);
    }
}

#[allow(clippy::vec_box)]
fn apply(
    command: Command,
    txs: &mut Vec<Box<TxEndpoint>>,
    rxs: &mut Vec<Box<RxEndpoint>>,
    retired: &mpsc::Sender<Retired>,
) {
    // Send failures mean the reaper is gone (shutdown): the value is dropped here then.
    match command {
        Command::AddTx(tx) => txs.push(tx),
        Command::AddRx(rx) => rxs.push(rx),
        Command::Subscribe { id, source } => {
            if let Some(rx) = rxs.iter_mut().find(|rx| rx.id == id) {
                let (socket, subscription) = match source {
                    Some(source) => {
                        let RxSource {
                            socket,
                            subscription,
                        } = *source;
                        (Some(socket), Some(subscription))
                    }
                    None => (None, None),
                };
                if let Some(old) = std::mem::replace(&mut rx.socket, socket) {
                    let _ = retired.send(Retired::Socket(old));
                }
                if let Some(old) = rx.core.replace(subscription) {
                    let _ = retired.send(Retired::Subscription(old));
                }
            }
        }
        Command::Remove { id, done } => {
            if let Some(index) = txs.iter().position(|tx| tx.id == id) {
                let _ = retired.send(Retired::Tx(txs.swap_remove(index)));
            }
            if let Some(index) = rxs.iter().position(|rx| rx.id == id) {
                let _ = retired.send(Retired::Rx(rxs.swap_remove(index)));
            }
            let _ = done.send(());
        }
    }
}
