//! Persistent TUN devices: created once by the plumbing, reopened by name by
//! the data plane (also after a daemon restart).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::wg::packet_fd::{TunIfReq, TUN_IFNAMSIZ};

const TUN_CLONE_DEVICE: &str = "/dev/net/tun";
/// One packet per read/write, no packet-information header, single queue:
/// the engine reads with one fd per pod. The virtio-net header lets the
/// engine write a burst of one TCP flow as one segment, and read one large
/// segment once the engine's reader offers TSO (`TUNSETOFFLOAD`, see
/// `wg::packet_fd`); until then reads are plain packets.
const TUN_FLAGS: libc::c_int = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

fn attach(name: &str) -> io::Result<File> {
    if name.is_empty() || name.len() >= TUN_IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid TUN name {name:?}"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(TUN_CLONE_DEVICE)?;
    let mut req = TunIfReq::new(TUN_FLAGS);
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a live, properly sized ifreq for the duration of the
    // call; TUNSETIFF reads the name and flags and writes the name back.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

fn set_persist(file: &File, persist: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETPERSIST as _,
            libc::c_ulong::from(persist),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a TUN device that outlives the file descriptor (and the daemon).
/// Fails with `EBUSY` if a device of that name is open elsewhere.
pub fn create_persistent_tun(name: &str) -> io::Result<()> {
    let file = attach(name)?;
    set_persist(&file, true)
}

/// Opens an existing (or creates a transient) TUN device by name for packet
/// I/O. The descriptor is blocking and close-on-exec.
pub fn open_tun(name: &str) -> io::Result<OwnedFd> {
    Ok(attach(name)?.into())
}

/// Clears persistence so the device disappears once no descriptor holds it;
/// the fallback when deleting the link over netlink is refused.
pub fn release_persistent_tun(name: &str) -> io::Result<()> {
    let file = attach(name)?;
    set_persist(&file, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_would_truncate_or_reject_are_refused_up_front() {
        for bad in ["", "a234567890123456", "a\0b"] {
            let err = open_tun(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn ifreq_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<TunIfReq>(), 40);
    }
}
