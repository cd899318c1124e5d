//! The follower's sockets and thread (aes67.md §11): UDP 319 (event: Sync, Delay_Req)
//! and 320 (general: Follow_Up, Delay_Resp, Announce), both bound to 224.0.1.129 and
//! joined on the configured interface only; Delay_Req leaves through that interface
//! (`IP_MULTICAST_IF`, TTL 1, no loopback), never any other.
//!
//! One thread, `telepatch-ptp`, owns both sockets and the [`Tracker`]: it waits in
//! `poll(2)` for either socket or the next Delay_Req, drains what arrived (kernel
//! receive stamps, [`StampedSocket`]), sends the Delay_Req when due, then publishes.
//! It checks its stop flag at least every 100 ms.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use codecs::ptp::{EVENT_PORT, PRIMARY_MULTICAST, SYNC_LEN};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use socket2::{Domain, Protocol, Socket, Type};

use super::local_clock::{StampedSocket, monotonic_ns};
use super::tracker::{Change, Tracker};
use super::{FollowError, Shared};
use crate::threads::StopSignal;

/// Longest wait in `poll` before the stop flag and the timeouts are checked again.
const MAX_WAIT_MS: u64 = 100;

/// Opens one PTP socket: bound to the PTP group on `port`, joined on `interface` only
/// (`IP_MULTICAST_ALL` off, so groups joined elsewhere in the process do not leak in),
/// sending through `interface` with TTL 1 and no loopback, DSCP `dscp`.
pub fn open_socket(port: u16, interface: Ipv4Addr, dscp: u8) -> Result<UdpSocket, FollowError> {
    let context = |what: &'static str| {
        move |source: std::io::Error| FollowError::Socket {
            what,
            port,
            interface,
            source,
        }
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(context("create a socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(context("set SO_REUSEADDR"))?;
    socket
        .bind(&SocketAddrV4::new(PRIMARY_MULTICAST, port).into())
        .map_err(context(
            "bind (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
        ))?;
    socket
        .join_multicast_v4(&PRIMARY_MULTICAST, &interface)
        .map_err(context(
            "join 224.0.1.129 (is the address on a local interface?)",
        ))?;
    socket
        .set_multicast_all_v4(false)
        .map_err(context("clear IP_MULTICAST_ALL"))?;
    socket
        .set_multicast_if_v4(&interface)
        .map_err(context("set IP_MULTICAST_IF"))?;
    socket
        .set_multicast_ttl_v4(1)
        .map_err(context("set the multicast TTL"))?;
    socket
        .set_multicast_loop_v4(false)
        .map_err(context("clear IP_MULTICAST_LOOP"))?;
    socket
        .set_tos_v4(u32::from(dscp) << 2)
        .map_err(context("set the DSCP"))?;
    Ok(socket.into())
}

/// The driver thread's state.
pub struct Driver {
    pub(super) event: StampedSocket,
    pub(super) general: StampedSocket,
    pub(super) tracker: Tracker,
    pub(super) shared: Arc<Shared>,
}

impl Driver {
    /// Runs until `stop` is raised.
    pub fn run(mut self, stop: &StopSignal) {
        let mut datagram = [0u8; 1_500];
        let mut request = [0u8; SYNC_LEN];
        let delay_req_to = SocketAddrV4::new(PRIMARY_MULTICAST, EVENT_PORT);
        let mut send_failing = false;
        let mut poll_failing = false;
        while !stop.is_stopped() {
            let now = monotonic_ns();
            let wait_ms = match self.tracker.poll_timeout() {
                Some(due) => due.saturating_sub(now).div_ceil(1_000_000).min(MAX_WAIT_MS),
                None => MAX_WAIT_MS,
            };
            let timeout = PollTimeout::from(u16::try_from(wait_ms).unwrap_or(u16::MAX));
            let polled = {
                let mut fds = [
                    PollFd::new(self.event.socket().as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.general.socket().as_fd(), PollFlags::POLLIN),
                ];
                poll(&mut fds, timeout)
            };
            match polled {
                Ok(_) | Err(nix::errno::Errno::EINTR) => poll_failing = false,
                Err(e) => {
                    if !poll_failing {
                        tracing::error!(error = %e, "PTP: poll failed");
                    }
                    poll_failing = true;
                    std::thread::sleep(Duration::from_millis(MAX_WAIT_MS));
                    continue;
                }
            }
            // Drain both sockets whatever poll said: a non-blocking read of an empty
            // socket costs less than tracking which one woke us.
            for socket in [&mut self.general, &mut self.event] {
                loop {
                    match socket.recv(&mut datagram) {
                        Ok(Some(received)) if !received.truncated => self.tracker.on_datagram(
                            &datagram[..received.len],
                            received.local_ns,
                            received.kernel_stamp,
                        ),
                        // Longer than any PTP message we decode plus TLVs: not for us.
                        Ok(Some(_)) => self.tracker.count_bad_message(),
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "PTP: receive error");
                            break;
                        }
                    }
                }
            }
            if let Some(len) = self.tracker.poll_transmit(monotonic_ns(), &mut request) {
                let sequence_id = u16::from_be_bytes([request[30], request[31]]);
                // t3 is read just before the send: the packet leaves a few µs into the
                // call, while the call itself can last much longer (on a veth it runs
                // the receiver's stack too), so the start is the closer reading.
                let t3 = monotonic_ns();
                match self.event.socket().send_to(&request[..len], delay_req_to) {
                    Ok(_) => {
                        self.tracker.delay_req_sent(sequence_id, t3);
                        send_failing = false;
                    }
                    Err(e) => {
                        self.tracker.send_failed();
                        if !send_failing {
                            tracing::warn!(error = %e, "PTP: cannot send Delay_Req");
                        }
                        send_failing = true;
                    }
                }
            }
            let domain = self.shared.settings.domain;
            self.tracker.update(
                monotonic_ns(),
                &self.shared.published,
                &self.shared.snapshot,
                |change| log_change(change, domain),
            );
        }
    }
}

fn log_change(change: Change, domain: u8) {
    match change {
        Change::GrandmasterSelected(gm) => tracing::info!(
            grandmaster = %gm.identity,
            domain,
            master_port = %format!("{}/{}", gm.master_port.clock, gm.master_port.port),
            priority1 = gm.announce.priority1,
            clock_class = gm.announce.clock_class,
            ptp_timescale = gm.ptp_timescale,
            utc_offset = gm.current_utc_offset,
            "PTP grandmaster selected"
        ),
        Change::GrandmasterChanged { from, to } => tracing::warn!(
            from = %from,
            grandmaster = %to.identity,
            domain,
            ptp_timescale = to.ptp_timescale,
            "PTP grandmaster changed"
        ),
        Change::GrandmasterLost(gm) => tracing::warn!(
            grandmaster = %gm,
            domain,
            "PTP grandmaster lost: no Announce within the receipt timeout"
        ),
        Change::Locked {
            grandmaster,
            mean_path_delay_ns,
            rate_ratio_ppm,
        } => tracing::info!(
            grandmaster = %grandmaster,
            domain,
            mean_path_delay_ns,
            rate_ppm = rate_ratio_ppm,
            "PTP locked"
        ),
        Change::Unlocked { state } => tracing::warn!(
            state = ?state,
            holdover_s = super::tracker::HOLDOVER_NS / 1_000_000_000,
            "PTP lock lost; holding over on the last estimate"
        ),
        Change::HoldoverEnded => {
            tracing::warn!("PTP holdover over: the media clock is unusable until lock returns")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_refuse_an_address_that_is_not_local() {
        // 192.0.2.1 (TEST-NET-1) is on no interface of a test machine: joining there must
        // fail with a message naming the address, not fall back to another interface.
        let err = open_socket(40_320, Ipv4Addr::new(192, 0, 2, 1), 56).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("192.0.2.1"), "{text}");
        assert!(text.contains("224.0.1.129"), "{text}");
    }

    #[test]
    fn sockets_send_through_the_configured_interface_only() {
        // An unprivileged port stands in for 319: the options are what matter.
        let socket = open_socket(40_319, Ipv4Addr::LOCALHOST, 56).unwrap();
        let socket = Socket::from(socket);
        assert_eq!(socket.multicast_if_v4().unwrap(), Ipv4Addr::LOCALHOST);
        assert_eq!(socket.multicast_ttl_v4().unwrap(), 1);
        assert!(!socket.multicast_all_v4().unwrap());
        assert!(!socket.multicast_loop_v4().unwrap());
        assert_eq!(socket.tos_v4().unwrap(), 56 << 2);
        assert_eq!(
            socket.local_addr().unwrap().as_socket_ipv4().unwrap(),
            SocketAddrV4::new(PRIMARY_MULTICAST, 40_319)
        );
    }
}
