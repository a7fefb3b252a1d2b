//! Batch buffers shared by every pod of the engine.
//!
//! A receive batch is up to 1 MiB (16 GRO slots of 64 KiB) and a send batch
//! about 50 KiB, but a pod needs one only while it handles what woke it. So
//! pods borrow them and give them back: a pod that wakes for one STUN answer
//! neither allocates nor clears a megabyte, and the node holds about as many
//! batches as pods run at once, not one per pod. The same holds for the
//! single-packet buffer a pod seals or opens one packet into (9 KiB).

use std::sync::{Mutex, PoisonError};

use crate::wg::batch::{receive_shape, DatagramBatch, BATCH_SLOTS};
use crate::wg::engine::socket::OutBatch;

/// Batches of each kind kept for the next borrower; more are freed. Pods
/// run on a few worker threads, so few are ever out at once.
const KEPT: usize = 8;

/// Free batches, by kind. They stay boxed: pods hold them boxed, and a
/// batch lent and given back must not cost an allocation.
#[derive(Default)]
#[expect(
    clippy::vec_box,
    reason = "batches move between pods and the pool as boxes"
)]
pub(super) struct BatchPool {
    receive: Mutex<Vec<Box<DatagramBatch>>>,
    send: Mutex<Vec<Box<OutBatch>>>,
    packets: Mutex<Vec<Vec<u8>>>,
}

impl BatchPool {
    /// An empty receive batch for a socket with or without UDP GRO.
    pub(super) fn take_receive(&self, gro: bool, slot_len: usize) -> Box<DatagramBatch> {
        let (slots, len) = receive_shape(gro, slot_len);
        take_matching(&self.receive, |batch| {
            batch.capacity() == slots && batch.slot_len() == len
        })
        .unwrap_or_else(|| Box::new(DatagramBatch::for_receive(gro, slot_len)))
    }

    pub(super) fn give_receive(&self, mut batch: Box<DatagramBatch>) {
        batch.clear();
        keep(&self.receive, batch);
    }

    /// An empty send batch with slots of `slot_len`.
    pub(super) fn take_send(&self, slot_len: usize) -> Box<OutBatch> {
        take_matching(&self.send, |batch| batch.datagrams.slot_len() == slot_len).unwrap_or_else(
            || {
                Box::new(OutBatch {
                    datagrams: DatagramBatch::new(BATCH_SLOTS, slot_len),
                    peers: Vec::with_capacity(BATCH_SLOTS),
                })
            },
        )
    }

    pub(super) fn give_send(&self, mut batch: Box<OutBatch>) {
        batch.datagrams.clear();
        batch.peers.clear();
        keep(&self.send, batch);
    }

    /// A buffer of `len` bytes for one packet (its contents are whatever
    /// the last borrower left).
    pub(super) fn take_packet(&self, len: usize) -> Vec<u8> {
        take_matching(&self.packets, |buffer| buffer.len() == len).unwrap_or_else(|| vec![0; len])
    }

    pub(super) fn give_packet(&self, buffer: Vec<u8>) {
        keep(&self.packets, buffer);
    }

    #[cfg(test)]
    fn free(&self) -> (usize, usize) {
        (free_count(&self.receive), free_count(&self.send))
    }
}

#[cfg(test)]
fn free_count<T>(pool: &Mutex<Vec<T>>) -> usize {
    pool.lock().map_or(0, |free| free.len())
}

fn take_matching<T>(pool: &Mutex<Vec<T>>, fits: impl Fn(&T) -> bool) -> Option<T> {
    let mut free = pool.lock().unwrap_or_else(PoisonError::into_inner);
    let at = free.iter().rposition(fits)?;
    Some(free.swap_remove(at))
}

fn keep<T>(pool: &Mutex<Vec<T>>, batch: T) {
    let mut free = pool.lock().unwrap_or_else(PoisonError::into_inner);
    if free.len() < KEPT {
        free.push(batch);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::wg::batch::{GRO_SLOTS, GRO_SLOT_LEN};

    const SLOT: usize = 1500;

    #[test]
    fn a_returned_batch_is_lent_again_empty() {
        let pool = BatchPool::default();
        let mut batch = pool.take_receive(false, SLOT);
        let first = std::ptr::from_ref::<DatagramBatch>(&batch);
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("address");
        batch.commit(10, addr);
        pool.give_receive(batch);
        let again = pool.take_receive(false, SLOT);
        assert_eq!(std::ptr::from_ref::<DatagramBatch>(&again), first);
        assert!(again.is_empty());
        assert_eq!(pool.free(), (0, 0));
    }

    #[test]
    fn batches_of_another_shape_are_not_lent() {
        let pool = BatchPool::default();
        pool.give_receive(pool.take_receive(true, SLOT));
        let plain = pool.take_receive(false, SLOT);
        assert_eq!((plain.capacity(), plain.slot_len()), (BATCH_SLOTS, SLOT));
        assert_eq!(pool.free(), (1, 0), "the GRO batch stays for a GRO socket");
        let gro = pool.take_receive(true, SLOT);
        assert_eq!((gro.capacity(), gro.slot_len()), (GRO_SLOTS, GRO_SLOT_LEN));
        assert_eq!(pool.free(), (0, 0));

        pool.give_send(pool.take_send(SLOT));
        let wider = pool.take_send(SLOT + 100);
        assert_eq!(wider.datagrams.slot_len(), SLOT + 100);
        assert_eq!(pool.free(), (0, 1));
    }

    #[test]
    fn a_returned_send_batch_is_empty() {
        let pool = BatchPool::default();
        let mut batch = pool.take_send(SLOT);
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("address");
        batch.datagrams.commit(10, addr);
        pool.give_send(batch);
        let again = pool.take_send(SLOT);
        assert!(again.datagrams.is_empty());
        assert!(again.peers.is_empty());
    }

    #[test]
    fn packet_buffers_are_lent_again_by_length() {
        let pool = BatchPool::default();
        let mut buffer = pool.take_packet(SLOT);
        assert_eq!(buffer.len(), SLOT);
        buffer[0] = 7;
        let first = buffer.as_ptr();
        pool.give_packet(buffer);
        assert_eq!(pool.take_packet(SLOT + 1).len(), SLOT + 1);
        let again = pool.take_packet(SLOT);
        assert_eq!(again.as_ptr(), first);
        assert_eq!(free_count(&pool.packets), 0);
    }

    #[test]
    fn the_pool_keeps_a_bounded_number() {
        let pool = BatchPool::default();
        let out: Vec<_> = (0..KEPT + 5)
            .map(|_| pool.take_receive(false, SLOT))
            .collect();
        for batch in out {
            pool.give_receive(batch);
        }
        assert_eq!(pool.free(), (KEPT, 0));
    }
}
