//! The local time base of the PTP follower, and kernel receive timestamps.
//!
//! The follower measures the grandmaster against `CLOCK_MONOTONIC`: it never steps, so an
//! operator or NTP stepping the system clock cannot break the estimate, and reading it
//! through the vDSO costs tens of nanoseconds, cheap enough for a media thread.
//!
//! The kernel stamps every received datagram when asked (`SO_TIMESTAMPNS`, aes67.md §5:
//! "SO_TIMESTAMPNS gives kernel RX stamps"), at the moment the packet entered the
//! stack rather than when our thread got round to reading it, which keeps scheduling
//! delays on a busy host out of the estimate. Those stamps are `CLOCK_REALTIME`;
//! [`realtime_to_monotonic`] moves them onto the monotonic base with the offset
//! between the two clocks read right after the datagram ([`ClockPair::now`]). That
//! offset changes only when the realtime clock is stepped: slewing moves both clocks
//! alike. (The kernel turns receive stamping on for the whole stack from a work queue
//! when the first socket asks; the first datagrams after start-up may be stamped when
//! read instead, which the follower's outlier filter and lock criteria absorb.)

use std::io::IoSliceMut;
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;

fn read(clock: rustix::time::ClockId) -> u64 {
    let t = rustix::time::clock_gettime(clock);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the follower's local clock.
pub fn monotonic_ns() -> u64 {
    read(rustix::time::ClockId::Monotonic)
}

/// `CLOCK_REALTIME` in nanoseconds since 1970 (UTC on a normal host).
pub fn realtime_ns() -> u64 {
    read(rustix::time::ClockId::Realtime)
}

/// The monotonic and realtime clocks read at (nearly) the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockPair {
    /// `CLOCK_MONOTONIC`, ns.
    pub monotonic_ns: u64,
    /// `CLOCK_REALTIME`, ns.
    pub realtime_ns: u64,
}

impl ClockPair {
    /// Reads monotonic, realtime, monotonic and pairs the realtime reading with the
    /// midpoint of the two monotonic ones, so the pair is off by at most half the
    /// (sub-microsecond) time between the reads.
    pub fn now() -> ClockPair {
        let before = monotonic_ns();
        let realtime_ns = realtime_ns();
        let after = monotonic_ns();
        ClockPair {
            monotonic_ns: before + (after.saturating_sub(before)) / 2,
            realtime_ns,
        }
    }
}

/// A `CLOCK_REALTIME` stamp moved onto `CLOCK_MONOTONIC` through `pair`; `None` if it
/// would fall before the monotonic epoch (a stamp from before boot: garbage).
pub fn realtime_to_monotonic(stamp_realtime_ns: u64, pair: ClockPair) -> Option<u64> {
    let monotonic = i128::from(stamp_realtime_ns) - i128::from(pair.realtime_ns)
        + i128::from(pair.monotonic_ns);
    u64::try_from(monotonic).ok()
}

fn timespec_ns(ts: &TimeSpec) -> Option<u64> {
    let seconds = u64::try_from(ts.tv_sec()).ok()?;
    let nanos = u64::try_from(ts.tv_nsec()).ok()?;
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// One datagram read by [`StampedSocket::recv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes written into the caller's buffer.
    pub len: usize,
    /// The datagram was longer than the buffer and was cut.
    pub truncated: bool,
    /// Who sent it.
    pub from: Option<SocketAddrV4>,
    /// Receive time on the monotonic clock: the kernel's stamp when it came with the
    /// datagram, else the time of the read.
    pub local_ns: u64,
    /// Whether `local_ns` is the kernel's stamp.
    pub kernel_stamp: bool,
}

/// A non-blocking UDP socket whose datagrams carry kernel receive timestamps.
#[derive(Debug)]
pub struct StampedSocket {
    socket: UdpSocket,
    control: Vec<u8>,
}

impl StampedSocket {
    /// Turns on `SO_TIMESTAMPNS` and non-blocking reads for `socket`.
    pub fn new(socket: UdpSocket) -> std::io::Result<StampedSocket> {
        setsockopt(&socket, sockopt::ReceiveTimestampns, &true)?;
        socket.set_nonblocking(true)?;
        Ok(StampedSocket {
            socket,
            control: nix::cmsg_space!(TimeSpec),
        })
    }

    /// The socket (for sending and polling).
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Reads one datagram into `buf`; `Ok(None)` when none is waiting. Allocates
    /// nothing: the control-message buffer is reused.
    pub fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<Received>> {
        let capacity = buf.len();
        let mut iov = [IoSliceMut::new(buf)];
        let message = match recvmsg::<SockaddrIn>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(self.control.as_mut_slice()),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
        ) {
            Ok(message) => message,
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let pair = ClockPair::now();
        let mut stamp = None;
        // A truncated control buffer (ENOBUFS) only costs us the kernel stamp.
        if let Ok(cmsgs) = message.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmTimestampns(ts) = cmsg {
                    stamp = timespec_ns(&ts).and_then(|rt| realtime_to_monotonic(rt, pair));
                }
            }
        }
        Ok(Some(Received {
            len: message.bytes.min(capacity),
            truncated: message.bytes > capacity,
            from: message.address.map(SocketAddrV4::from),
            local_ns: stamp.unwrap_or(pair.monotonic_ns),
            kernel_stamp: stamp.is_some(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_stamps_move_onto_the_monotonic_base() {
        let pair = ClockPair {
            monotonic_ns: 5_000_000_000,
            realtime_ns: 1_700_000_000_000_000_000,
        };
        // A stamp 250 µs before the pair was read.
        assert_eq!(
            realtime_to_monotonic(1_700_000_000_000_000_000 - 250_000, pair),
            Some(5_000_000_000 - 250_000)
        );
        // Stamps after the reads map forward just the same.
        assert_eq!(
            realtime_to_monotonic(1_700_000_000_000_000_007, pair),
            Some(5_000_000_007)
        );
        // A stamp from before boot is garbage, not a wrapped huge number.
        assert_eq!(realtime_to_monotonic(1_000, pair), None);
    }

    #[test]
    fn a_pair_reads_both_clocks_at_one_instant() {
        let pair = ClockPair::now();
        let realtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(realtime >= pair.realtime_ns && realtime - pair.realtime_ns < 50_000_000);
        let mono = monotonic_ns();
        assert!(mono >= pair.monotonic_ns && mono - pair.monotonic_ns < 50_000_000);
    }

    #[test]
    fn kernel_stamps_fall_between_send_and_read() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut stamped = StampedSocket::new(receiver).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(stamped.recv(&mut buf).unwrap(), None, "nothing waiting");
        // The kernel switches receive stamping on for the whole stack from a work queue
        // (net_enable_timestamp); until that ran, a datagram is stamped when read.
        std::thread::sleep(std::time::Duration::from_millis(100));

        let before = monotonic_ns();
        sender
            .send_to(b"sync", stamped.socket().local_addr().unwrap())
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let got = stamped.recv(&mut buf).unwrap().expect("a datagram");
        let read_at = monotonic_ns();
        assert_eq!(&buf[..got.len], b"sync");
        assert!(!got.truncated);
        assert_eq!(
            got.from.map(|a| a.port()),
            Some(sender.local_addr().unwrap().port())
        );
        assert!(got.kernel_stamp, "SO_TIMESTAMPNS gave no stamp");
        // The stamp is the arrival, not the read 20 ms later.
        assert!(
            got.local_ns >= before.saturating_sub(100_000) && got.local_ns < before + 10_000_000,
            "stamp {} vs send {before}",
            got.local_ns
        );
        assert!(read_at - got.local_ns >= 15_000_000);

        // A datagram longer than the buffer is reported as cut.
        sender
            .send_to(&[7u8; 100], stamped.socket().local_addr().unwrap())
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let got = stamped.recv(&mut buf).unwrap().expect("a datagram");
        assert!(got.truncated);
        assert_eq!(got.len, 64);
    }
}
