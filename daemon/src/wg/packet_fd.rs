//! Async packet I/O on a file descriptor that carries one IP packet per
//! read/write: a TUN opened with IFF_TUN|IFF_NO_PI, or a datagram socketpair.
//!
//! A TUN opened with IFF_VNET_HDR as well (see `podmgr::tun`) puts a
//! virtio-net header in front of every packet; then the engine's writes
//! may be queued with [`PacketFd::send_joined`], which joins consecutive
//! TCP segments into one write ([`crate::wg::offload`]). Such a TUN is
//! also offered TSO (and USO where the kernel has it): the pod's stack
//! then hands over one large segment per read, which [`PacketFd::recv`]
//! cuts into wire-sized packets ([`crate::wg::offload::Splitter`]).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::uio::{readv, writev};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use tracing::debug;

use super::offload::{
    complete_checksum, Splitter, TcpCoalescer, VnetHdr, PLAIN_VNET_HDR, VNET_HDR_LEN,
};

/// Offloads offered to a TUN, best first: checksums, TSO and USO; without
/// USO (kernels before 6.2); none.
const OFFLOAD_CHOICES: [libc::c_uint; 3] = [
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_USO4 | libc::TUN_F_USO6,
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6,
    0,
];

pub struct PacketFd {
    fd: AsyncFd<OwnedFd>,
    /// Every read and write starts with a virtio-net header.
    vnet_hdr: bool,
    /// Off once the device refused a joined segment.
    joining: AtomicBool,
    /// Segments queued by [`Self::send_joined`]; one task uses the device,
    /// so the lock is never contended.
    coalescer: Mutex<TcpCoalescer>,
    /// Reads may hand over large segments (the device took TSO).
    segmenting: bool,
    /// The large segment being handed out packet by packet.
    splitter: Mutex<Splitter>,
}

impl PacketFd {
    /// Wrap `fd`, switching it to non-blocking mode. Must run inside a tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        let vnet_hdr = tun_flags(fd.as_fd()).is_some_and(|f| f & libc::IFF_VNET_HDR != 0);
        let segmenting = vnet_hdr && offer_offloads(fd.as_fd()) != 0;
        // SAFETY: the AsyncFd owns the descriptor, so it stays open for as
        // long as it is registered with the reactor.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(io::Error::from)?;
        Ok(Self {
            fd,
            vnet_hdr,
            joining: AtomicBool::new(vnet_hdr),
            coalescer: Mutex::new(TcpCoalescer::new()),
            segmenting,
            splitter: Mutex::new(Splitter::new()),
        })
    }

    /// Whether reads may hand over large segments, cut here.
    pub fn is_segmenting(&self) -> bool {
        self.segmenting
    }

    /// Large segments read and cut into packets so far.
    pub fn frames_cut(&self) -> u64 {
        self.splitter().frames_cut()
    }

    /// Whether packets carry a virtio-net header on this device.
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Read one packet. Cancel-safe: nothing is consumed unless it returns.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // The rest of a large segment is ready without the device.
        if let Some(n) = self.splitter().next_into(buf) {
            return Ok(n);
        }
        self.fd
            .async_io(Interest::READABLE, |fd| self.read_packet(fd.as_fd(), buf))
            .await
    }

    /// Waits until [`Self::try_recv`] has a packet to give, reading
    /// nothing: a pod waits without holding a buffer. Cancel-safe.
    pub async fn readable(&self) -> io::Result<()> {
        if self.splitter().has_pending() {
            return Ok(());
        }
        let mut ready = self.fd.readable().await?;
        // The read that follows clears readiness once it would block.
        ready.retain_ready();
        Ok(())
    }

    /// Read one packet if one is waiting, without waiting.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd
            .try_io(Interest::READABLE, |fd| self.read_packet(fd.as_fd(), buf))
    }

    /// Write one packet.
    pub async fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                self.write_packet(fd.as_fd(), packet)
            })
            .await
    }

    /// Write `packet`, or hold it to join the TCP segments that follow it;
    /// [`Self::flush`] writes what is held. Without offloads it is
    /// [`Self::send`].
    pub async fn send_joined(&self, packet: &[u8]) -> io::Result<()> {
        if !self.joining.load(Ordering::Relaxed) {
            return self.send(packet).await.map(drop);
        }
        if self.lock().push(packet) {
            return Ok(());
        }
        let flushed = self.flush().await;
        if !self.lock().push(packet) {
            self.send(packet).await?;
        }
        flushed
    }

    /// Write the segment [`Self::send_joined`] holds, if any. A device
    /// that refuses a joined segment gets plain packets from then on (the
    /// segments of that one are lost, and TCP sends them again).
    pub async fn flush(&self) -> io::Result<()> {
        if self.lock().is_empty() {
            return Ok(());
        }
        let written = self
            .fd
            .async_io(Interest::WRITABLE, |fd| {
                let mut coalescer = self.lock();
                let Some(frame) = coalescer.frame() else {
                    return Ok(0);
                };
                nix::unistd::write(fd, frame).map_err(io::Error::from)
            })
            .await;
        let mut coalescer = self.lock();
        coalescer.clear();
        if written
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
        {
            self.joining.store(false, Ordering::Relaxed);
            coalescer.release();
        }
        written.map(drop)
    }

    /// Free the buffer joined segments are built in (a quiet device
    /// should not hold it).
    pub fn release(&self) {
        self.lock().release();
    }

    fn lock(&self) -> MutexGuard<'_, TcpCoalescer> {
        self.coalescer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn splitter(&self) -> MutexGuard<'_, Splitter> {
        self.splitter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One packet: the next of a large segment read before, or one read
    /// now. With a virtio-net header, a packet whose checksum is left to
    /// compute gets it; a large segment is cut, its first packet returned
    /// and the rest kept. What cannot be made whole (or does not fit
    /// `buf`) is skipped, as the device would drop it.
    fn read_packet(&self, fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        if !self.vnet_hdr {
            return nix::unistd::read(fd, buf).map_err(io::Error::from);
        }
        let mut splitter = self.splitter();
        if let Some(n) = splitter.next_into(buf) {
            return Ok(n);
        }
        loop {
            let mut hdr = PLAIN_VNET_HDR;
            let read = if self.segmenting {
                let room = splitter.read_room(buf.len());
                let (spill_len, head_len) = (room.len(), buf.len());
                readv(
                    fd,
                    &mut [
                        IoSliceMut::new(&mut hdr),
                        IoSliceMut::new(buf),
                        IoSliceMut::new(room),
                    ],
                )
                .map(|n| (n, head_len + spill_len))
            } else {
                readv(fd, &mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)])
                    .map(|n| (n, buf.len()))
            };
            let (n, room) = match read {
                Ok(read) => read,
                Err(e) => {
                    // Between bursts a device holds no frame buffer.
                    splitter.release();
                    return Err(e.into());
                }
            };
            let (Some(parsed), Some(len)) = (VnetHdr::parse(&hdr), n.checked_sub(VNET_HDR_LEN))
            else {
                continue;
            };
            // The kernel reports the full length of what it cut short.
            if len > room {
                continue;
            }
            if !parsed.is_segmented() {
                let Some(packet) = buf.get_mut(..len) else {
                    continue;
                };
                match complete_checksum(&parsed, packet) {
                    Ok(()) => return Ok(len),
                    Err(e) => {
                        debug!(error = %e, "dropping a packet read from the device");
                        continue;
                    }
                }
            }
            let head = buf.len().min(len);
            if let Err(e) = splitter.load(&parsed, &buf[..head], len) {
                debug!(error = %e, "dropping a segment read from the device");
                continue;
            }
            if let Some(n) = splitter.next_into(buf) {
                return Ok(n);
            }
        }
    }

    fn write_packet(&self, fd: BorrowedFd<'_>, packet: &[u8]) -> io::Result<usize> {
        if !self.vnet_hdr {
            return nix::unistd::write(fd, packet).map_err(io::Error::from);
        }
        let n = writev(fd, &[IoSlice::new(&PLAIN_VNET_HDR), IoSlice::new(packet)])
            .map_err(io::Error::from)?;
        Ok(n.saturating_sub(VNET_HDR_LEN))
    }
}

/// `struct ifreq` as the TUN ioctls use it: the name and the flags member
/// of the union, padded to the full size of the kernel struct (40 bytes).
#[repr(C)]
pub(crate) struct TunIfReq {
    pub(crate) name: [libc::c_char; TUN_IFNAMSIZ],
    pub(crate) flags: libc::c_short,
    _pad: [u8; 22],
}

/// Bytes of an interface name, with its terminating NUL.
pub(crate) const TUN_IFNAMSIZ: usize = 16;

impl TunIfReq {
    pub(crate) fn new(flags: libc::c_int) -> Self {
        Self {
            name: [0; TUN_IFNAMSIZ],
            flags: flags as libc::c_short,
            _pad: [0; 22],
        }
    }
}

/// Offer the TUN behind `fd` the best offloads it takes (see
/// [`OFFLOAD_CHOICES`]); what it took, 0 for none. A TUN only hands
/// over large segments after this.
fn offer_offloads(fd: BorrowedFd<'_>) -> libc::c_uint {
    for offloads in OFFLOAD_CHOICES {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETOFFLOAD as _,
                libc::c_ulong::from(offloads),
            )
        };
        if rc == 0 {
            return offloads;
        }
        debug!(offloads, error = %io::Error::last_os_error(), "TUN refused offloads");
    }
    0
}

/// The flags of the TUN behind `fd`; `None` when it is no TUN.
fn tun_flags(fd: BorrowedFd<'_>) -> Option<libc::c_int> {
    let mut req = TunIfReq::new(0);
    // SAFETY: `req` is a live ifreq of the kernel's size for the whole
    // call; TUNGETIFF only writes into it, and other descriptors fail it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF as _, &mut req) };
    // The kernel stores the flags as an unsigned short.
    (rc == 0).then_some(libc::c_int::from(req.flags as u16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::time::Duration;

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

    /// Runs `cmd` (in the calling thread's network namespace).
    fn run(cmd: &[&str]) {
        let status = std::process::Command::new(cmd[0]).args(&cmd[1..]).status();
        assert!(status.is_ok_and(|s| s.success()), "{cmd:?}");
    }

    /// Moves the calling thread into a fresh network namespace with a TUN
    /// opened as the pods' are, forwarding back out of itself what is
    /// written to it for 100.64.0.0/10.
    fn tun_in_private_netns() -> Result<OwnedFd, tailnet_testbed::Missing> {
        if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            return Err(tailnet_testbed::Missing::new(
                "no privilege to make a private network namespace",
                "run as root (CAP_SYS_ADMIN)",
            ));
        }
        let fd = crate::podmgr::tun::open_tun("tvnet0").map_err(|_| {
            tailnet_testbed::Missing::new("no TUN device", "load the tun module (/dev/net/tun)")
        })?;
        run(&["ip", "link", "set", "tvnet0", "up"]);
        run(&["ip", "addr", "add", "10.77.0.1/24", "dev", "tvnet0"]);
        run(&["ip", "route", "add", "100.64.0.0/10", "dev", "tvnet0"]);
        run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        run(&["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"]);
        run(&["sysctl", "-qw", "net.ipv4.conf.tvnet0.send_redirects=0"]);
        Ok(fd)
    }

    fn current_thread_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A UDP GSO send from the pod's stack reaches the device as one large
    /// segment (the device took USO) and is read back as the datagrams the
    /// wire would carry, checksums complete.
    #[test]
    fn a_large_segment_from_the_stack_is_read_as_wire_packets() {
        use crate::wg::offload::segment::tests::checksums_verify;
        use nix::sys::socket::{setsockopt, sockopt::UdpGsoSegment};
        let fd = tailnet_testbed::require!(tun_in_private_netns());
        current_thread_runtime().block_on(async {
            let device = PacketFd::new(fd).unwrap();
            assert!(device.is_segmenting(), "the TUN takes TSO");
            let socket = std::net::UdpSocket::bind("10.77.0.1:0").unwrap();
            setsockopt(&socket, UdpGsoSegment, &1000).unwrap();
            let sent: Vec<u8> = (0..3500u32).map(|i| (i * 7) as u8).collect();
            socket.send_to(&sent, "100.64.0.2:9999").unwrap();
            let mut buf = [0u8; 1500];
            let mut got = Vec::new();
            while got.len() < 4 {
                let n = tokio::time::timeout(Duration::from_secs(5), device.recv(&mut buf))
                    .await
                    .expect("the datagrams")
                    .unwrap();
                let packet = &buf[..n];
                if packet[0] >> 4 == 4 && packet[9] == 17 && packet[22..24] == 9999u16.to_be_bytes()
                {
                    assert!(checksums_verify(packet), "datagram {}", got.len());
                    got.push(packet.to_vec());
                }
            }
            let sizes: Vec<usize> = got.iter().map(Vec::len).collect();
            assert_eq!(sizes, [1028, 1028, 1028, 528]);
            let payload: Vec<u8> = got.iter().flat_map(|p| p[28..].to_vec()).collect();
            assert_eq!(payload, sent);
            assert_eq!(device.frames_cut(), 1, "one large segment was read and cut");
        });
    }

    /// A joined segment is taken by the kernel: forwarded back out of the
    /// TUN, it is read back as the original segments with correct
    /// checksums (cut by the reader, as the TUN takes TSO).
    #[test]
    fn the_kernel_takes_joined_segments_and_cuts_them_back() {
        use crate::wg::offload::tests::{payload, tcp4};
        let fd = tailnet_testbed::require!(tun_in_private_netns());
        current_thread_runtime().block_on(async {
            let device = PacketFd::new(fd).unwrap();
            assert!(device.has_vnet_hdr());
            let mut sent = Vec::new();
            let mut seq = 4000;
            for (i, len) in [1000, 1000, 1000, 300].into_iter().enumerate() {
                let packet = tcp4(seq, 0x10, &payload(len, i as u8));
                seq += len as u32;
                device.send_joined(&packet).await.unwrap();
                sent.push(packet);
            }
            device.flush().await.unwrap();
            let mut buf = [0u8; 2048];
            let mut got = Vec::new();
            while got.len() < sent.len() {
                let n = tokio::time::timeout(Duration::from_secs(5), device.recv(&mut buf))
                    .await
                    .expect("forwarded segments")
                    .unwrap();
                // Only the forwarded TCP segments (not, say, IPv6 router
                // solicitations).
                if buf[0] >> 4 == 4 && buf[9] == 6 {
                    got.push(buf[..n].to_vec());
                }
            }
            for (got, sent) in got.iter().zip(&sent) {
                assert_eq!(got.len(), sent.len());
                assert_eq!(got[8], sent[8] - 1, "forwarded: TTL one less");
                assert_eq!(got[12..20], sent[12..20], "addresses");
                assert_eq!(got[20..], sent[20..], "TCP header, checksum and payload");
            }
        });
    }
}
