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

/// A batch of datagrams for `to` that GSO can group (every tenth one
/// shorter), each filled with its index, and their lengths.
fn gso_burst(to: SocketAddr) -> (DatagramBatch, Vec<usize>) {
    let mut out = DatagramBatch::new(BATCH_SLOTS, 1400);
    let lens: Vec<usize> = (0..BATCH_SLOTS)
        .map(|i| if i % 10 == 9 { 300 } else { 1300 })
        .collect();
    for (i, len) in lens.iter().enumerate() {
        out.next_slot().unwrap()[..*len].fill(i as u8);
        out.commit(*len, to);
    }
    (out, lens)
}

/// Send all of `out`, with GSO until the kernel refuses it; whether GSO
/// was used throughout.
fn send_all(tx: &std::net::UdpSocket, out: &DatagramBatch) -> bool {
    let mut sent = 0;
    let mut gso = true;
    while sent < out.len() {
        sent += match send_batch(tx.as_fd(), out, sent, gso) {
            Ok(n) => n,
            Err(_) => {
                gso = false;
                send_batch(tx.as_fd(), out, sent, false).unwrap()
            }
        };
    }
    gso
}

/// Whatever the kernel offers: with GSO the peer sees the same
/// datagrams, in order, as without (or the send fails and the caller
/// falls back).
#[test]
fn gso_sends_arrive_as_separate_datagrams() {
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    let (out, lens) = gso_burst(to);
    send_all(&tx, &out);
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

#[test]
fn bursts_split_into_their_segments() {
    let from = addr("10.0.0.1:1");
    let mut batch = DatagramBatch::new(4, 64);
    for (i, (len, segment)) in [(25, 10), (7, 0), (0, 0), (20, 10)].into_iter().enumerate() {
        let slot = batch.next_slot().unwrap();
        for (j, byte) in slot[..len].iter_mut().enumerate() {
            *byte = (i * 100 + j) as u8;
        }
        assert!(batch.commit_burst(len, from, segment));
    }
    let lens = |i| batch.datagrams(i).map(<[u8]>::len).collect::<Vec<_>>();
    assert_eq!(lens(0), [10, 10, 5], "equal segments and a shorter tail");
    assert_eq!(lens(1), [7], "not coalesced");
    assert_eq!(
        lens(2),
        [0],
        "a truncated datagram stays one (empty) datagram"
    );
    assert_eq!(lens(3), [10, 10]);
    assert_eq!(lens(4), Vec::<usize>::new(), "past the end");
    let second: Vec<u8> = batch.datagrams(0).nth(1).unwrap().to_vec();
    assert_eq!(second, (10..20).map(|j| j as u8).collect::<Vec<_>>());
}

/// A receiver with UDP GRO gets the same datagrams, in order, as one
/// without, whether or not the kernel coalesced the GSO bursts.
#[test]
fn gro_receive_splits_gso_bursts_back_into_datagrams() {
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let gro =
        nix::sys::socket::setsockopt(&rx, nix::sys::socket::sockopt::UdpGroSegment, &true).is_ok();
    assert_eq!(gro, crate::wg::udp::gro_enabled(&rx));
    let to = rx.local_addr().unwrap();
    let (out, lens) = gso_burst(to);
    let gso = send_all(&tx, &out);
    let mut inb = DatagramBatch::for_receive(gro, 1400);
    let mut got = Vec::new();
    let mut slots = 0;
    while got.len() < lens.len() {
        let n = recv_batch(rx.as_fd(), &mut inb).unwrap();
        slots += n;
        for i in 0..n {
            assert_eq!(inb.get(i).unwrap().1, tx.local_addr().unwrap());
            got.extend(inb.datagrams(i).map(<[u8]>::to_vec));
        }
    }
    assert_eq!(got.len(), lens.len());
    for (i, (data, len)) in got.iter().zip(&lens).enumerate() {
        assert_eq!(data.len(), *len, "datagram {i}");
        assert!(data.iter().all(|b| *b == i as u8), "datagram {i}");
    }
    if gro && gso {
        // Loopback hands a GSO send to a GRO socket whole.
        assert!(
            slots < lens.len(),
            "{slots} slots for {} datagrams",
            lens.len()
        );
    }
}
