//! Async packet I/O on a file descriptor that carries one IP packet per
//! read/write: a TUN opened with IFF_TUN|IFF_NO_PI, or a datagram socketpair.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub struct PacketFd {
    fd: AsyncFd<OwnedFd>,
}

impl PacketFd {
    /// Wrap `fd`, switching it to non-blocking mode. Must run inside a tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        // SAFETY: the AsyncFd owns the descriptor, so it stays open for as
        // long as it is registered with the reactor.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    /// Read one packet. Cancel-safe: nothing is consumed unless it returns.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd
            .async_io(Interest::READABLE, |fd| {
                nix::unistd::read(fd.as_fd(), buf).map_err(io::Error::from)
            })
            .await
    }

    /// Read one packet if one is waiting, without waiting.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd.try_io(Interest::READABLE, |fd| {
            nix::unistd::read(fd.as_fd(), buf).map_err(io::Error::from)
        })
    }

    /// Write one packet.
    pub async fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                nix::unistd::write(fd, packet).map_err(io::Error::from)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    #[tokio::test]
    async fn socketpair_keeps_packet_boundaries() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let a = PacketFd::new(a).unwrap();
        let b = PacketFd::new(b).unwrap();
        a.send(b"first").await.unwrap();
        a.send(b"second packet").await.unwrap();
        let mut buf = [0u8; 64];
        let n = b.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"first");
        let n = b.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"second packet");
        assert_eq!(
            b.try_recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
