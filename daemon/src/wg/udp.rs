//! The per-pod UDP socket for direct paths (WireGuard, disco and STUN
//! share it, as peers and STUN servers must see one source port).
//!
//! One socket per pod keeps demultiplexing trivial (the socket says which
//! identity a datagram is for) at the cost of one descriptor and one set of
//! kernel buffers per pod; a single shared socket would need a receiver
//! index → pod map and could not give each identity its own STUN-mapped port.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6};
use tracing::debug;

/// Socket buffer size asked for; the perf notes show default buffers
/// overflow under a single TCP stream.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Bind a dual-stack UDP socket on `port` (0 for any), falling back to
/// IPv4-only where IPv6 is disabled, with large buffers. Must be called
/// inside a tokio runtime.
pub fn bind_pod_socket(port: u16) -> io::Result<tokio::net::UdpSocket> {
    let fd = match socket::socket(
        AddressFamily::Inet6,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    ) {
        Ok(fd) => {
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &false).map_err(io::Error::from)?;
            let addr = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
            socket::bind(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
            fd
        }
        Err(e) => {
            debug!(error = %e, "no IPv6 UDP socket; using IPv4 only");
            let fd = socket::socket(
                AddressFamily::Inet,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )
            .map_err(io::Error::from)?;
            let addr = SockaddrIn::new(0, 0, 0, 0, port);
            socket::bind(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
            fd
        }
    };
    size_buffers(&fd);
    enable_gro(&fd);
    tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// Ask for big buffers: the FORCE variants (root, ignore rmem_max) first,
/// then the plain ones (capped by the sysctls). Failure is not an error:
/// the socket still works, only slower under load.
fn size_buffers(fd: &impl AsFd) {
    if socket::setsockopt(fd, sockopt::RcvBufForce, &SOCKET_BUFFER_BYTES).is_err() {
        if let Err(error) = socket::setsockopt(fd, sockopt::RcvBuf, &SOCKET_BUFFER_BYTES) {
            debug!(%error, "cannot enlarge the UDP receive buffer");
        }
    }
    if socket::setsockopt(fd, sockopt::SndBufForce, &SOCKET_BUFFER_BYTES).is_err() {
        if let Err(error) = socket::setsockopt(fd, sockopt::SndBuf, &SOCKET_BUFFER_BYTES) {
            debug!(%error, "cannot enlarge the UDP send buffer");
        }
    }
}

/// Let the kernel hand over a burst of datagrams from one sender as one
/// (UDP GRO, split again by [`crate::wg::batch`]): a peer sending with
/// GSO then costs one receive per burst. Kernels without it (before 5.0)
/// refuse, and the socket receives datagram by datagram.
fn enable_gro(fd: &impl AsFd) {
    if let Err(error) = socket::setsockopt(fd, sockopt::UdpGroSegment, &true) {
        debug!(%error, "no UDP GRO on the pod socket");
    }
}

/// Whether the socket coalesces bursts (UDP GRO), which receive batches
/// must be sized for.
pub fn gro_enabled(fd: &impl AsFd) -> bool {
    socket::getsockopt(fd, sockopt::UdpGroSegment).unwrap_or(false)
}

/// Map IPv4-mapped IPv6 source addresses (from the dual-stack socket) back
/// to plain IPv4, so they compare equal to endpoints from control.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dual_stack_socket_talks_v4_loopback_with_big_buffers() {
        let a = bind_pod_socket(0).unwrap();
        let b = bind_pod_socket(0).unwrap();
        let b_port = b.local_addr().unwrap().port();
        a.send_to(b"hi", SocketAddr::from(([127, 0, 0, 1], b_port)))
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = b.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hi");
        let from = canonical(from);
        assert_eq!(
            from,
            SocketAddr::from(([127, 0, 0, 1], a.local_addr().unwrap().port()))
        );
        // The kernel reports double the requested size when the request took
        // effect; unprivileged runs may be capped, so only check it is set.
        let rcv = socket::getsockopt(&a, sockopt::RcvBuf).unwrap();
        assert!(rcv > 0);
        if nix::unistd::geteuid().is_root() {
            assert!(
                rcv >= SOCKET_BUFFER_BYTES,
                "root can force {SOCKET_BUFFER_BYTES}, got {rcv}"
            );
        }
    }

    #[test]
    fn mapped_addresses_become_v4() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:41641".parse().unwrap();
        assert_eq!(
            canonical(mapped),
            "10.1.2.3:41641".parse::<SocketAddr>().unwrap()
        );
        let v6: SocketAddr = "[fd00::1]:5".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
