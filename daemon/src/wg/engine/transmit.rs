//! Packet device → peer: source check, MagicDNS queries handed to the
//! pod's resolver, the flow noted for the filter, cryptokey routing,
//! encryption, then the peer's direct path (batched into `sendmmsg`, UDP
//! GSO where the kernel has it) or its relay.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use boringtun::noise::TunnResult;
use tokio::io::Interest;
use tracing::{debug, trace};

use super::pod::PodState;
use super::session::NodeKey;
use super::socket::OutBatch;
use crate::wg::batch;
use crate::wg::path::Path;
use crate::wg::routing::packet_addrs;

impl PodState {
    /// One packet the pod sent into its device.
    pub(super) fn handle_outbound_packet(&mut self, packet: &[u8]) {
        let Some((src, dst)) = packet_addrs(packet) else {
            self.counters.drop_packets(1);
            return;
        };
        if !self.identity.addresses.contains(&src) {
            trace!(pod = %self.identity.pod_id, %src, "dropping packet with foreign source");
            self.counters.drop_packets(1);
            return;
        }
        // MagicDNS is served here, never through the tunnel.
        if super::dns::is_service_addr(dst) {
            if self.dns.handle(packet) == super::dns::Handled::Dropped {
                self.counters.drop_packets(1);
            }
            return;
        }
        // Remember the flows the pod opens so the filter lets their replies in.
        self.filter.note_outbound(packet);
        // A tailnet address no peer owns is dropped, never sent to an exit node.
        let Some(peer_key) = self.peers.table.owner(dst).copied() else {
            trace!(pod = %self.identity.pod_id, %dst, "no peer for destination");
            self.counters.drop_packets(1);
            return;
        };
        self.counters.totals.tx_packets += 1;
        self.counters.totals.tx_bytes += packet.len() as u64;
        if let Some(addr) = self.direct_addr(&peer_key) {
            self.encapsulate_direct(peer_key, addr, packet);
            return;
        }
        let mut out = self.take_packet_buffer();
        if let Some(tunn) = self.tunn_for(&peer_key) {
            match tunn.encapsulate(packet, &mut out) {
                TunnResult::WriteToNetwork(wire) => {
                    if let Some(p) = self.peers.get_mut(&peer_key) {
                        p.tx_bytes += packet.len() as u64;
                    }
                    self.send_to_peer(&peer_key, wire);
                }
                TunnResult::Err(e) => {
                    debug!(pod = %self.identity.pod_id, error = ?e, "encapsulate failed")
                }
                _ => {}
            }
        }
        self.give_packet_buffer(out);
    }

    /// The peer's validated direct endpoint, if the pod has a socket to
    /// reach it; counts as path activity like any send.
    fn direct_addr(&mut self, peer_key: &NodeKey) -> Option<SocketAddr> {
        self.socket.udp()?;
        let state = self.peers.get_mut(peer_key)?.path_state_mut();
        let now = std::time::Instant::now();
        state.note_activity(now);
        match state.current(now) {
            Path::Direct(addr) => Some(addr),
            Path::Relay => None,
        }
    }

    /// Encrypt `packet` straight into the next slot of the send batch,
    /// flushing the batch when it fills.
    fn encapsulate_direct(&mut self, peer_key: NodeKey, addr: SocketAddr, packet: &[u8]) {
        let mut batch = self.socket.take_tx_batch(&self.engine.batches);
        if batch.datagrams.is_full() {
            self.send_out_batch(&mut batch);
        }
        let mut copied = None;
        if let (Some(tunn), Some(slot)) = (self.tunn_for(&peer_key), batch.datagrams.next_slot()) {
            let slot_start = slot.as_ptr();
            match tunn.encapsulate(packet, slot) {
                // boringtun writes from the start of the buffer it is given.
                TunnResult::WriteToNetwork(wire) if wire.as_ptr() == slot_start => {
                    let len = wire.len();
                    batch.datagrams.commit(len, addr);
                    batch.peers.push(peer_key);
                }
                TunnResult::WriteToNetwork(wire) => copied = Some(wire.to_vec()),
                TunnResult::Err(e) => {
                    debug!(pod = %self.identity.pod_id, error = ?e, "encapsulate failed")
                }
                _ => {}
            }
        }
        if let Some(p) = self.peers.get_mut(&peer_key) {
            p.tx_bytes += packet.len() as u64;
            p.sent_direct();
        }
        if let Some(wire) = copied {
            self.send_to_peer(&peer_key, &wire);
        }
        if batch.datagrams.is_full() {
            self.send_out_batch(&mut batch);
        }
        self.socket.put_tx_batch(batch);
    }

    /// Send what the device drain batched.
    pub(super) fn flush_tx(&mut self) {
        if let Some(mut batch) = self.socket.take_pending_tx_batch() {
            self.send_out_batch(&mut batch);
            self.engine.batches.give_send(batch);
        }
    }

    /// Send a batch with as few system calls as the kernel allows, then
    /// empty it. A full socket buffer drops the rest, as a full link would;
    /// a datagram the kernel refuses outright goes to the peer's relay.
    fn send_out_batch(&mut self, batch: &mut OutBatch) {
        let out = &batch.datagrams;
        let mut next = 0;
        while next < out.len() {
            let Some(sock) = self.socket.shared_udp() else {
                self.counters.drop_packets((out.len() - next) as u64);
                break;
            };
            let gso = self.socket.gso;
            let sent = sock.try_io(Interest::WRITABLE, || {
                batch::send_batch(sock.as_fd(), out, next, gso)
            });
            match sent {
                Ok(0) => break,
                Ok(n) => next += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.counters.drop_packets((out.len() - next) as u64);
                    break;
                }
                // The kernel or the outgoing device lacks UDP GSO: send
                // datagram by datagram from now on.
                Err(e) if gso && out.gso_run(next) > 1 => {
                    debug!(pod = %self.identity.pod_id, error = %e, "UDP GSO refused; sending datagrams singly");
                    self.socket.gso = false;
                }
                Err(e) => {
                    if let (Some((wire, addr)), Some(peer_key)) =
                        (out.get(next), batch.peers.get(next))
                    {
                        debug!(pod = %self.identity.pod_id, %addr, error = %e, "direct send failed; relaying");
                        self.relay_datagram(peer_key, wire.to_vec());
                    }
                    next += 1;
                }
            }
        }
        batch.datagrams.clear();
        batch.peers.clear();
    }

    /// Send one WireGuard datagram: straight over UDP when the peer's direct
    /// path is validated (no copy), else through a relay.
    pub(super) fn send_to_peer(&mut self, peer_key: &NodeKey, wire: &[u8]) {
        let Some(peer) = self.peers.get_mut(peer_key) else {
            return;
        };
        let now = std::time::Instant::now();
        let state = peer.path_state_mut();
        state.note_activity(now);
        if let (Path::Direct(addr), Some(sock)) = (state.current(now), self.socket.udp()) {
            match sock.try_send_to(wire, addr) {
                Ok(_) => {
                    peer.sent_direct();
                    return;
                }
                // A full socket buffer drops the datagram like a full link would.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.counters.drop_packets(1);
                    return;
                }
                Err(e) => {
                    debug!(pod = %self.identity.pod_id, %addr, error = %e, "direct send failed; relaying")
                }
            }
        }
        self.relay_datagram(peer_key, wire.to_vec());
    }

    /// Send a WireGuard datagram through the peer's relay, counting it as
    /// dropped when no relay takes it.
    fn relay_datagram(&mut self, peer_key: &NodeKey, wire: Vec<u8>) {
        match self.relay_to_peer(peer_key, wire) {
            Some(region) => {
                if let Some(peer) = self.peers.get_mut(peer_key) {
                    peer.sent_relayed(region);
                }
            }
            None => self.counters.drop_packets(1),
        }
    }
}
