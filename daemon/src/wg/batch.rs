//! Batched datagram I/O for a pod's UDP socket: one `recvmmsg` or
//! `sendmmsg` moves a burst of WireGuard datagrams where plain
//! `recvfrom`/`sendto` would make one system call each (the per-packet
//! system call, not crypto, is what limits a userspace tunnel).
//!
//! [`DatagramBatch`] is plain memory (fixed-size slots with a length and an
//! address each) and is tested without sockets; [`recv_batch`] and
//! [`send_batch`] are the thin I/O edge. Batches are big (tens of KiB to
//! 1 MiB), so pods borrow them from the engine's pool while they use them.
//!
//! The two system calls stay raw `libc`: nix's `sendmmsg` gives every
//! message the same control messages (a GSO run needs its own segment
//! size) and its `MultiHeaders` allocate per call and are not `Send`.
//! Addresses go through nix's safe `SockaddrStorage`.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{SockaddrLike, SockaddrStorage};

/// Datagrams per system call. 32 × ~1.6 KiB slots keeps one batch near
/// 50 KiB while cutting system calls thirtyfold under load.
pub const BATCH_SLOTS: usize = 32;

/// `UDP_SEGMENT` (linux/udp.h): the cmsg asking the kernel to cut one send
/// into equal datagrams (UDP GSO), so the stack handles the burst once.
const UDP_SEGMENT: libc::c_int = 103;
/// Payload bound of one GSO send (an IP packet holds at most 64 KiB).
const GSO_MAX_BYTES: usize = 65_000;
/// `UDP_GRO` (linux/udp.h): the cmsg giving the segment size of a
/// datagram the kernel coalesced from a burst (UDP GRO).
const UDP_GRO: libc::c_int = 104;

/// Slots of a receive batch on a socket with UDP GRO: each holds one
/// coalesced burst of up to 64 KiB, so fewer slots move more datagrams.
pub const GRO_SLOTS: usize = 16;
/// A coalesced burst never exceeds one IP packet's payload.
pub const GRO_SLOT_LEN: usize = 1 << 16;

/// The slots and slot length of a receive batch: few big slots when the
/// socket coalesces bursts (`gro`), else [`BATCH_SLOTS`] of `slot_len`.
pub fn receive_shape(gro: bool, slot_len: usize) -> (usize, usize) {
    if gro {
        (GRO_SLOTS, GRO_SLOT_LEN.max(slot_len))
    } else {
        (BATCH_SLOTS, slot_len)
    }
}

/// A fixed number of equal-size datagram slots, filled front to back.
pub struct DatagramBatch {
    buf: Box<[u8]>,
    slot_len: usize,
    lens: Vec<usize>,
    addrs: Vec<SocketAddr>,
    /// Segment size of each slot that holds a GRO burst, 0 for a single
    /// datagram.
    segments: Vec<usize>,
}

impl DatagramBatch {
    /// `slots` slots of `slot_len` bytes each (both at least 1).
    pub fn new(slots: usize, slot_len: usize) -> Self {
        let slots = slots.max(1);
        let slot_len = slot_len.max(1);
        Self {
            buf: vec![0u8; slots * slot_len].into_boxed_slice(),
            slot_len,
            lens: Vec::with_capacity(slots),
            addrs: Vec::with_capacity(slots),
            segments: Vec::with_capacity(slots),
        }
    }

    /// A batch to receive into, of [`receive_shape`].
    pub fn for_receive(gro: bool, slot_len: usize) -> Self {
        let (slots, slot_len) = receive_shape(gro, slot_len);
        Self::new(slots, slot_len)
    }

    pub fn capacity(&self) -> usize {
        self.buf.len() / self.slot_len
    }

    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// Datagrams held.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity()
    }

    pub fn clear(&mut self) {
        self.lens.clear();
        self.addrs.clear();
        self.segments.clear();
    }

    /// The next free slot, to be filled and then [`commit`](Self::commit)ted;
    /// `None` when the batch is full.
    pub fn next_slot(&mut self) -> Option<&mut [u8]> {
        let start = self.len() * self.slot_len;
        self.buf.get_mut(start..start + self.slot_len)
    }

    /// Record the next free slot as holding `len` bytes for `addr`.
    /// Returns false (and records nothing) when the batch is full.
    pub fn commit(&mut self, len: usize, addr: SocketAddr) -> bool {
        self.commit_burst(len, addr, 0)
    }

    /// Record the next free slot as `len` bytes of datagrams from `addr`,
    /// each `segment` bytes long but the last (0: one datagram).
    pub fn commit_burst(&mut self, len: usize, addr: SocketAddr, segment: usize) -> bool {
        if self.is_full() {
            return false;
        }
        self.lens.push(len.min(self.slot_len));
        self.addrs.push(addr);
        self.segments.push(segment);
        true
    }

    /// How many datagrams from `start` on can leave as one GSO send: same
    /// destination and length, except that a shorter last one may end the
    /// run (the kernel cuts a GSO send into equal segments plus a remainder).
    pub fn gso_run(&self, start: usize) -> usize {
        let Some((first, addr)) = self.get(start) else {
            return 0;
        };
        let seg = first.len();
        if seg == 0 {
            return 1;
        }
        let mut n = 1;
        let mut total = seg;
        while let Some((next, to)) = self.get(start + n) {
            // An empty tail would vanish: a GSO send no longer than one
            // segment goes out as that single datagram.
            if to != addr
                || next.is_empty()
                || next.len() > seg
                || total + next.len() > GSO_MAX_BYTES
            {
                break;
            }
            n += 1;
            total += next.len();
            if next.len() < seg {
                break;
            }
        }
        n
    }

    /// Datagram `i` and its address (destination when sending, source when
    /// received).
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let len = *self.lens.get(i)?;
        let start = i * self.slot_len;
        Some((&self.buf[start..start + len], self.addrs[i]))
    }

    /// The datagrams slot `i` holds, in arrival order: one, or the
    /// segments of a coalesced burst.
    pub fn datagrams(&self, i: usize) -> impl Iterator<Item = &[u8]> {
        let data = self.get(i).map_or(&[][..], |(data, _)| data);
        let segment = match self.segments.get(i) {
            Some(&segment) if segment > 0 => segment,
            _ => data.len().max(1),
        };
        // An empty slot (a truncated datagram) still stands for one
        // datagram, which `chunks` would skip.
        let truncated = (i < self.len() && data.is_empty()).then_some(data);
        data.chunks(segment).chain(truncated)
    }
}

/// Receive up to a batch of datagrams without blocking, replacing the
/// batch's contents. Truncated datagrams (longer than a slot) are kept as
/// empty entries, which no protocol accepts. A slot may hold a burst the
/// kernel coalesced (UDP GRO), read back with [`DatagramBatch::datagrams`].
/// Returns the slots filled; `WouldBlock` when none wait.
pub fn recv_batch(fd: BorrowedFd<'_>, batch: &mut DatagramBatch) -> io::Result<usize> {
    batch.clear();
    let n = batch.capacity().min(BATCH_SLOTS);
    let mut names = [unspecified(); BATCH_SLOTS];
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut iovs: [libc::iovec; BATCH_SLOTS] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH_SLOTS] = unsafe { zeroed() };
    let mut cmsgs = [CmsgBuf([0; 32]); BATCH_SLOTS];
    let slot_len = batch.slot_len;
    let base = batch.buf.as_mut_ptr();
    for i in 0..n {
        // SAFETY: slot i lies inside `buf` as n <= capacity.
        iovs[i].iov_base = unsafe { base.add(i * slot_len) }.cast();
        iovs[i].iov_len = slot_len;
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut SockaddrStorage).cast();
        hdrs[i].msg_hdr.msg_namelen = size_of::<SockaddrStorage>() as libc::socklen_t;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        hdrs[i].msg_hdr.msg_control = cmsgs[i].0.as_mut_ptr().cast();
        hdrs[i].msg_hdr.msg_controllen = cmsgs[i].0.len();
    }
    // SAFETY: every header points at live buffers of the sizes given, which
    // outlive the call; the kernel writes at most those sizes.
    let got = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = got as usize;
    for (hdr, name) in hdrs.iter().zip(names.iter()).take(got) {
        let truncated = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let len = if truncated { 0 } else { hdr.msg_len as usize };
        let addr =
            from_sockaddr(name, hdr.msg_hdr.msg_namelen).unwrap_or(SocketAddr::from(UNSPECIFIED));
        batch.commit_burst(len, addr, gro_segment(&hdr.msg_hdr));
    }
    Ok(got)
}

/// The segment size the kernel reported for a coalesced datagram, 0 when
/// it holds one datagram.
fn gro_segment(hdr: &libc::msghdr) -> usize {
    // SAFETY: `hdr` is a header recvmmsg filled: msg_control points at its
    // live CmsgBuf and msg_controllen says how much the kernel wrote, so
    // the CMSG_* walk stays inside it; the data is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                return usize::try_from(size).unwrap_or(0);
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    0
}

/// Room for one cmsg carrying a u16, aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; 32]);

/// Send the batch's datagrams from index `start` on without blocking, in
/// one `sendmmsg`. With `gso`, each run of equal datagrams to one peer
/// (see [`DatagramBatch::gso_run`]) goes as a single UDP GSO message.
/// Returns how many datagrams left; the caller resumes after them. An
/// error is about the message holding datagram `start`, none of which was
/// sent; a kernel or device without UDP GSO fails it (EIO, EINVAL, ...),
/// after which the caller retries without `gso`.
pub fn send_batch(
    fd: BorrowedFd<'_>,
    batch: &DatagramBatch,
    start: usize,
    gso: bool,
) -> io::Result<usize> {
    let total = batch.len().saturating_sub(start).min(BATCH_SLOTS);
    if total == 0 {
        return Ok(0);
    }
    let mut names = [unspecified(); BATCH_SLOTS];
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut iovs: [libc::iovec; BATCH_SLOTS] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH_SLOTS] = unsafe { zeroed() };
    let mut cmsgs = [CmsgBuf([0; 32]); BATCH_SLOTS];
    // Datagrams per message, to count what a partial send covered.
    let mut runs = [0usize; BATCH_SLOTS];
    let mut msgs = 0;
    let mut next = 0;
    while next < total {
        let run = if gso {
            batch.gso_run(start + next).min(total - next).max(1)
        } else {
            1
        };
        let mut addr = None;
        for j in 0..run {
            let Some((data, to)) = batch.get(start + next + j) else {
                break;
            };
            // The kernel only reads through iov_base on send.
            iovs[next + j].iov_base = data.as_ptr() as *mut libc::c_void;
            iovs[next + j].iov_len = data.len();
            addr = Some(to);
        }
        let Some(addr) = addr else {
            break;
        };
        // IPv4 goes as `sockaddr_in`, which a dual-stack IPv6 socket accepts too.
        names[msgs] = SockaddrStorage::from(addr);
        let hdr = &mut hdrs[msgs].msg_hdr;
        // The kernel only reads through msg_name on send.
        hdr.msg_name = names[msgs].as_ptr().cast_mut().cast();
        hdr.msg_namelen = sockaddr_len(addr);
        hdr.msg_iov = &mut iovs[next];
        hdr.msg_iovlen = run;
        if run > 1 {
            let seg = batch.get(start + next).map_or(0, |(d, _)| d.len()) as u16;
            hdr.msg_control = cmsgs[msgs].0.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE(2) fits the 32 aligned bytes behind
            // msg_control, so the first header and its data are in bounds.
            unsafe {
                hdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                let cmsg = libc::CMSG_FIRSTHDR(hdr);
                (*cmsg).cmsg_level = libc::IPPROTO_UDP;
                (*cmsg).cmsg_type = UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), seg);
            }
        }
        runs[msgs] = run;
        msgs += 1;
        next += run;
    }
    // SAFETY: every header points at live buffers of the sizes given, which
    // outlive the call.
    let sent = unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            hdrs.as_mut_ptr(),
            msgs as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(runs[..(sent as usize).min(msgs)].iter().sum())
}

/// A source address for datagrams whose sender the kernel did not name.
const UNSPECIFIED: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);

/// Room the kernel fills with a source address (any family fits).
fn unspecified() -> SockaddrStorage {
    SockaddrStorage::from(UNSPECIFIED)
}

/// The length of `addr` as a C socket address (`SockaddrStorage::len` is
/// that of the whole storage).
fn sockaddr_len(addr: SocketAddr) -> libc::socklen_t {
    let len = match addr {
        SocketAddr::V4(_) => size_of::<libc::sockaddr_in>(),
        SocketAddr::V6(_) => size_of::<libc::sockaddr_in6>(),
    };
    len as libc::socklen_t
}

/// Decode a source address the kernel filled in; `None` for other families
/// or lengths short of the family's address.
fn from_sockaddr(raw: &SockaddrStorage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    if let Some(sin) = raw.as_sockaddr_in() {
        return (len >= size_of::<libc::sockaddr_in>()).then(|| SocketAddrV4::from(*sin).into());
    }
    if let Some(sin6) = raw.as_sockaddr_in6() {
        return (len >= size_of::<libc::sockaddr_in6>()).then(|| SocketAddrV6::from(*sin6).into());
    }
    None
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
