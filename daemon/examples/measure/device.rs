//! A pod's packet device for benchmarks: one end of a datagram socketpair.

use std::os::fd::OwnedFd;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

/// The engine's end and the end the benchmark keeps (the pod's side).
pub fn packet_device() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}
