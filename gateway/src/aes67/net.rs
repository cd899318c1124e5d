//! The sockets of AES67 flows and SAP, set up once (socket2) and then used as plain
//! non-blocking `std` sockets by the media and SAP threads.
//!
//! Network safety (ARCHITECTURE §7): every sender binds the flow's interface address (never
//! the wildcard) and sets `IP_MULTICAST_IF` to it, so multicast leaves exactly where the
//! operator said, 127.0.0.1 by default. Multicast loopback stays on: receivers on the same
//! host (a second gateway, ffmpeg, our own receive flows) hear the flow.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// The SAP group and port AES67 devices and Dante use (aes67.md §7).
pub const SAP_GROUP: SocketAddrV4 = SocketAddrV4::new(codecs::sap::AES67_GROUP, codecs::sap::PORT);
/// TTL of SAP packets (RFC 2974 says 255; aes67.md §7).
pub const SAP_TTL: u32 = 255;
/// Receive buffer of a flow's socket: about 0.5 s of 8-channel L24 at 125 µs packets.
const RX_BUFFER_BYTES: usize = 1 << 20;

fn udp() -> io::Result<Socket> {
    Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
}

/// A sender bound to `interface`, multicasting through it with `ttl` and `dscp`,
/// connected to `destination`; non-blocking.
pub fn flow_sender(
    interface: Ipv4Addr,
    destination: SocketAddrV4,
    ttl: u8,
    dscp: u8,
) -> io::Result<UdpSocket> {
    let socket = udp()?;
    socket.bind(&SocketAddrV4::new(interface, 0).into())?;
    socket.set_multicast_if_v4(&interface)?;
    socket.set_multicast_ttl_v4(u32::from(ttl))?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_tos_v4(u32::from(dscp) << 2)?;
    socket.connect(&destination.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A SAP announcer's socket: bound to `interface`, multicasting through it, TTL 255.
pub fn sap_sender(interface: Ipv4Addr) -> io::Result<UdpSocket> {
    let socket = udp()?;
    socket.bind(&SocketAddrV4::new(interface, 0).into())?;
    socket.set_multicast_if_v4(&interface)?;
    socket.set_multicast_ttl_v4(SAP_TTL)?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_write_timeout(Some(Duration::from_millis(100)))?;
    Ok(socket.into())
}

/// A receiver of `group:port`, joined on `interface` when `group` is multicast (a unicast
/// address must then be this host's). Address reuse lets several receivers (flows, other
/// programs) share a group and port. Non-blocking.
pub fn flow_receiver(group: IpAddr, port: u16, interface: Ipv4Addr) -> io::Result<UdpSocket> {
    let IpAddr::V4(group) = group else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "only IPv4 flows are supported",
        ));
    };
    let socket = udp()?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(RX_BUFFER_BYTES);
    socket.bind(&SocketAddr::from((group, port)).into())?;
    if group.is_multicast() {
        socket.join_multicast_v4(&group, &interface)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The SAP listener: bound to the SAP group and port, joined on `interface`, reads
/// time out after `timeout` so the thread can do its other work.
pub fn sap_listener(interface: Ipv4Addr, timeout: Duration) -> io::Result<UdpSocket> {
    let socket = udp()?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddr::from(SAP_GROUP).into())?;
    socket.join_multicast_v4(SAP_GROUP.ip(), &interface)?;
    socket.set_read_timeout(Some(timeout))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_sender_reaches_a_receiver_on_loopback() {
        // A group no other test uses.
        let group = Ipv4Addr::new(239, 69, 254, 17);
        let receiver = flow_receiver(IpAddr::V4(group), 45_917, Ipv4Addr::LOCALHOST).unwrap();
        let sender = flow_sender(
            Ipv4Addr::LOCALHOST,
            SocketAddrV4::new(group, 45_917),
            15,
            46,
        )
        .unwrap();
        assert_eq!(
            sender.local_addr().unwrap().ip(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        sender.send(b"aes67").unwrap();
        receiver.set_nonblocking(false).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"aes67");
        assert_eq!(from.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}
