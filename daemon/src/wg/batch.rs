//! Batched datagram I/O for a pod's UDP socket: one `recvmmsg` or
//! `sendmmsg` moves a burst of WireGuard datagrams where plain
//! `recvfrom`/`sendto` would make one system call each (the per-packet
//! system call, not crypto, is what limits a userspace tunnel).
//!
//! [`DatagramBatch`] is plain memory (fixed-size slots with a length and an
//! address each) and is tested without sockets; [`recv_batch`] and
//! [`send_batch`] are the thin I/O edge. Batches are big (tens of KiB), so
//! the engine only holds one while a pod is busy.
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

/// A fixed number of equal-size datagram slots, filled front to back.
pub struct DatagramBatch {
    buf: Box<[u8]>,
    slot_len: usize,
    lens: Vec<usize>,
    addrs: Vec<SocketAddr>,
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
        }
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
        if self.is_full() {
            return false;
        }
        self.lens.push(len.min(self.slot_len));
        self.addrs.push(addr);
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
}

/// Receive up to a batch of datagrams without blocking, replacing the
/// batch's contents. Truncated datagrams (longer than a slot) are kept as
/// empty entries, which no protocol accepts. `WouldBlock` when none wait.
pub fn recv_batch(fd: BorrowedFd<'_>, batch: &mut DatagramBatch) -> io::Result<usize> {
    batch.clear();
    let n = batch.capacity().min(BATCH_SLOTS);
    let mut names = [unspecified(); BATCH_SLOTS];
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut iovs: [libc::iovec; BATCH_SLOTS] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH_SLOTS] = unsafe { zeroed() };
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
        batch.commit(len, addr);
    }
    Ok(got)
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
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn slots_fill_in_order_until_full() {
        let mut batch = DatagramBatch::new(2, 8);
        assert!(batch.is_empty());
        batch.next_slot().unwrap()[..3].copy_from_slice(b"one");
        assert!(batch.commit(3, addr("10.0.0.1:1")));
        batch.next_slot().unwrap()[..5].copy_from_slice(b"two!!");
        assert!(batch.commit(5, addr("[fd00::2]:2")));
        assert!(batch.is_full());
        assert!(batch.next_slot().is_none());
        assert!(!batch.commit(1, addr("10.0.0.3:3")));
        assert_eq!(batch.get(0), Some((&b"one"[..], addr("10.0.0.1:1"))));
        assert_eq!(batch.get(1), Some((&b"two!!"[..], addr("[fd00::2]:2"))));
        assert_eq!(batch.get(2), None);
        batch.clear();
        assert!(batch.is_empty());
        assert_eq!(batch.next_slot().unwrap().len(), 8);
    }

    #[test]
    fn commit_clamps_lengths_to_the_slot() {
        let mut batch = DatagramBatch::new(1, 4);
        assert!(batch.commit(100, addr("10.0.0.1:1")));
        assert_eq!(batch.get(0).unwrap().0.len(), 4);
    }

    #[test]
    fn sockaddrs_round_trip() {
        for a in [
            addr("192.0.2.7:41641"),
            addr("[2001:db8::1]:9"),
            addr("[::ffff:10.1.2.3]:5"),
        ] {
            let raw = SockaddrStorage::from(a);
            let len = sockaddr_len(a);
            assert_eq!(from_sockaddr(&raw, len), Some(a));
            assert_eq!(from_sockaddr(&raw, len - 1), None, "short length");
        }
        // SAFETY: all-zero is a valid SockaddrStorage (a union of plain C
        // structs); its family is AF_UNSPEC.
        let raw: SockaddrStorage = unsafe { zeroed() };
        assert_eq!(from_sockaddr(&raw, 128), None, "AF_UNSPEC");
    }

    #[test]
    fn a_batch_crosses_loopback_in_order_with_sources() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut out = DatagramBatch::new(BATCH_SLOTS + 3, 64);
        for i in 0..out.capacity() {
            let slot = out.next_slot().unwrap();
            slot[..2].copy_from_slice(&(i as u16).to_be_bytes());
            assert!(out.commit(2 + i % 7, to));
        }
        // One call sends at most BATCH_SLOTS; the caller resumes after them.
        let mut sent = 0;
        while sent < out.len() {
            sent += send_batch(tx.as_fd(), &out, sent, false).unwrap();
        }
        assert_eq!(sent, BATCH_SLOTS + 3);
        assert_eq!(send_batch(tx.as_fd(), &out, sent, false).unwrap(), 0);

        let mut inb = DatagramBatch::new(BATCH_SLOTS, 64);
        let mut seen = 0;
        while seen < sent {
            let n = recv_batch(rx.as_fd(), &mut inb).unwrap();
            assert_eq!(n, inb.len());
            for i in 0..n {
                let (data, from) = inb.get(i).unwrap();
                assert_eq!(from, tx.local_addr().unwrap());
                assert_eq!(data.len(), 2 + seen % 7);
                assert_eq!(data[..2], (seen as u16).to_be_bytes());
                seen += 1;
            }
        }
        let err = recv_batch(rx.as_fd(), &mut inb).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(inb.is_empty());
    }

    #[test]
    fn gso_runs_group_equal_datagrams_to_one_destination() {
        let (a, b) = (addr("10.0.0.1:1"), addr("10.0.0.2:2"));
        let mut batch = DatagramBatch::new(8, 64);
        for (len, to) in [
            (40, a),
            (40, a),
            (40, a),
            (12, a),
            (40, a),
            (40, b),
            (50, b),
            (0, b),
        ] {
            batch.next_slot().unwrap();
            batch.commit(len, to);
        }
        // Three full segments and a shorter tail.
        assert_eq!(batch.gso_run(0), 4);
        // A new destination ends a run.
        assert_eq!(batch.gso_run(4), 1);
        // A longer datagram cannot follow a shorter segment size.
        assert_eq!(batch.gso_run(5), 1);
        assert_eq!(batch.gso_run(6), 1, "an empty tail would be lost");
        assert_eq!(batch.gso_run(7), 1);
        assert_eq!(batch.gso_run(8), 0);
    }

    #[test]
    fn gso_runs_stay_under_the_ip_packet_limit() {
        let to = addr("10.0.0.1:1");
        let mut batch = DatagramBatch::new(BATCH_SLOTS, 3000);
        while batch.next_slot().is_some() {
            batch.commit(3000, to);
        }
        assert_eq!(batch.gso_run(0), GSO_MAX_BYTES / 3000);
    }

    /// Whatever the kernel offers: with GSO the peer sees the same
    /// datagrams, in order, as without (or the send fails and the caller
    /// falls back).
    #[test]
    fn gso_sends_arrive_as_separate_datagrams() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut out = DatagramBatch::new(BATCH_SLOTS, 1400);
        let lens: Vec<usize> = (0..BATCH_SLOTS)
            .map(|i| if i % 10 == 9 { 300 } else { 1300 })
            .collect();
        for (i, len) in lens.iter().enumerate() {
            out.next_slot().unwrap()[..*len].fill(i as u8);
            out.commit(*len, to);
        }
        let mut sent = 0;
        while sent < out.len() {
            sent += match send_batch(tx.as_fd(), &out, sent, true) {
                Ok(n) => n,
                Err(_) => send_batch(tx.as_fd(), &out, sent, false).unwrap(),
            };
        }
        let mut inb = DatagramBatch::new(BATCH_SLOTS, 1400);
        let mut got = Vec::new();
        while got.len() < lens.len() {
            let n = recv_batch(rx.as_fd(), &mut inb).unwrap();
            got.extend((0..n).map(|i| inb.get(i).unwrap().0.to_vec()));
        }
        for (i, (data, len)) in got.iter().zip(&lens).enumerate() {
            assert_eq!(data.len(), *len, "datagram {i}");
            assert!(data.iter().all(|b| *b == i as u8), "datagram {i}");
        }
    }

    #[test]
    fn oversized_datagrams_arrive_empty() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[7u8; 100], rx.local_addr().unwrap()).unwrap();
        tx.send_to(&[8u8; 10], rx.local_addr().unwrap()).unwrap();
        let mut inb = DatagramBatch::new(4, 16);
        let mut lens = Vec::new();
        while lens.len() < 2 {
            match recv_batch(rx.as_fd(), &mut inb) {
                Ok(n) => lens.extend((0..n).map(|i| inb.get(i).unwrap().0.to_vec())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(lens, vec![Vec::new(), vec![8u8; 10]]);
    }
}
