//! Peer → packet device: datagrams from the UDP socket (demultiplexed into
//! WireGuard, disco and STUN) and from relays, decrypted with the peer's
//! session, then checked (inner source within the peer's allowed IPs,
//! destination one of the pod's addresses, the tailnet packet filter)
//! before they reach the pod.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

use boringtun::noise::TunnResult;
use tailnet_wire::demux::{self, PacketKind};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::{debug, trace};

use super::handshake::{Sender, Verdict};
use super::pod::PodState;
use super::session::NodeKey;
use crate::wg::batch;
use crate::wg::derp_client::DerpInbound;
use crate::wg::disco::Via;
use crate::wg::packet_fd::PacketFd;
use crate::wg::routing::packet_addrs;
use crate::wg::udp;

/// UDP receive batches drained per wake-up before serving other events.
const UDP_ROUNDS: usize = 2;
/// The same for a flooded socket, whose reads are deferred: enough for
/// what a flood queues meanwhile, still bounded.
const FLOODED_UDP_ROUNDS: usize = 8;

/// What became of one datagram from the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    /// Went on to a session, disco or STUN.
    Handled,
    /// Dropped before any of them: not for the pod, or refused at the
    /// handshake gate.
    Refused,
}

impl PodState {
    /// Receive and handle what waits on the UDP socket, a batch per system
    /// call, bounded so other events still get served.
    pub(super) async fn drain_udp(&mut self, device: &PacketFd, sock: &UdpSocket) {
        let mut batch = self.socket.take_rx_batch(&self.engine.batches);
        let rounds = if self.socket.pacing.is_deferring() {
            FLOODED_UDP_ROUNDS
        } else {
            UDP_ROUNDS
        };
        let (mut received, mut refused) = (0, 0);
        for _ in 0..rounds {
            let result = sock.try_io(Interest::READABLE, || {
                batch::recv_batch(sock.as_fd(), &mut batch)
            });
            let n = match result {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(pod = %self.identity.pod_id, error = %e, "UDP receive failed");
                    break;
                }
            };
            for i in 0..n {
                let Some((_, from)) = batch.get(i) else {
                    continue;
                };
                let from = udp::canonical(from);
                for datagram in batch.datagrams(i) {
                    received += 1;
                    if self.handle_udp(device, datagram, from).await == Received::Refused {
                        refused += 1;
                    }
                }
            }
            if n < batch.capacity() {
                break;
            }
        }
        self.engine.batches.give_receive(batch);
        self.socket
            .pacing
            .after_drain(received, refused, tokio::time::Instant::now());
        self.flush_device(device).await;
    }

    /// Write the TCP segments joined while handling a burst, and free the
    /// buffer they were joined in: a quiet pod holds none.
    async fn flush_device(&mut self, device: &PacketFd) {
        if let Err(e) = device.flush().await {
            debug!(pod = %self.identity.pod_id, error = %e, "writing to packet device failed");
            self.counters.drop_packets(1);
        }
        device.release();
    }

    /// A datagram on the pod's UDP socket: WireGuard, disco or STUN.
    async fn handle_udp(
        &mut self,
        device: &PacketFd,
        datagram: &[u8],
        from: SocketAddr,
    ) -> Received {
        match demux::classify(datagram) {
            PacketKind::WireGuard => {}
            PacketKind::Disco => {
                self.handle_disco(datagram, Via::Udp(from));
                return Received::Handled;
            }
            PacketKind::Stun => {
                self.handle_stun(datagram, from);
                return Received::Handled;
            }
            PacketKind::Other => {
                trace!(pod = %self.identity.pod_id, %from, "ignoring unknown datagram");
                return Received::Refused;
            }
        }
        if !self.admit_wireguard(Sender::Address(from.ip()), Some(from), datagram) {
            return Received::Refused;
        }
        let Some(peer_key) = self.peers.peer_for_datagram(&self.identity, datagram) else {
            trace!(pod = %self.identity.pod_id, %from, "WireGuard datagram for no known session");
            self.counters.drop_packets(1);
            return Received::Refused;
        };
        if let Some(peer) = self.peers.get_mut(&peer_key) {
            peer.path_state_mut()
                .note_activity(std::time::Instant::now());
        }
        self.decapsulate_from(device, peer_key, Some(from.ip()), datagram)
            .await;
        Received::Handled
    }

    /// A packet one of the pod's relay links delivered: disco or WireGuard.
    pub(super) async fn handle_relayed(&mut self, device: &PacketFd, msg: DerpInbound) {
        if tailnet_wire::disco::looks_like_disco(&msg.packet) {
            self.relay.touch(msg.region);
            let via = Via::Relay {
                src: msg.src,
                region: msg.region,
            };
            self.handle_disco(&msg.packet, via);
            return;
        }
        if !demux::looks_like_wireguard(&msg.packet) {
            trace!(pod = %self.identity.pod_id, "ignoring non-WireGuard relay packet");
            return;
        }
        if !self.peers.contains(&msg.src) {
            trace!(pod = %self.identity.pod_id, "relay packet from unknown peer");
            self.counters.drop_packets(1);
            return;
        }
        if !self.admit_wireguard(Sender::Relayed(msg.src), None, &msg.packet) {
            return;
        }
        let Some(peer) = self.peers.get_mut(&msg.src) else {
            return;
        };
        peer.relayed_from = Some(msg.region);
        self.relay.touch(msg.region);
        self.decapsulate_from(device, msg.src, None, &msg.packet)
            .await;
        self.flush_device(device).await;
    }

    /// The handshake gate: whether a WireGuard datagram may go on to the
    /// sessions. Under load a direct sender is answered with a cookie, at
    /// `reply_to`, within its budget. Refusals are counted, never logged one
    /// by one: a flood would turn each into a log line.
    fn admit_wireguard(
        &mut self,
        from: Sender,
        reply_to: Option<SocketAddr>,
        datagram: &[u8],
    ) -> bool {
        let now = std::time::Instant::now();
        match self.handshakes.check(from, datagram, now) {
            Verdict::Pass => return true,
            Verdict::Cookie(reply) => {
                if let (Some(sock), Some(to)) = (self.socket.udp(), reply_to) {
                    if let Err(e) = sock.try_send_to(&reply, to) {
                        trace!(pod = %self.identity.pod_id, %to, error = %e, "cookie reply not sent");
                    }
                }
            }
            Verdict::Drop(_) => {}
        }
        self.counters.drop_packets(1);
        false
    }

    /// Feed one datagram from `peer_key` to its session and act on the results.
    async fn decapsulate_from(
        &mut self,
        device: &PacketFd,
        peer_key: NodeKey,
        src_addr: Option<IpAddr>,
        datagram: &[u8],
    ) {
        let mut out = self.take_packet_buffer();
        // Handshake traffic only: boringtun writes it into `out`, which the
        // next call reuses, so it is copied out.
        let mut to_network = Vec::new();
        let mut to_device: Option<(usize, IpAddr)> = None;
        if let Some(tunn) = self.tunn_for(&peer_key) {
            match tunn.decapsulate(src_addr, datagram, &mut out) {
                TunnResult::WriteToNetwork(wire) => {
                    to_network.push(wire.to_vec());
                    // boringtun may hold queued packets released by the handshake.
                    while let TunnResult::WriteToNetwork(wire) =
                        tunn.decapsulate(None, &[], &mut out)
                    {
                        to_network.push(wire.to_vec());
                    }
                }
                TunnResult::WriteToTunnelV4(p, src) => to_device = Some((p.len(), IpAddr::V4(src))),
                TunnResult::WriteToTunnelV6(p, src) => to_device = Some((p.len(), IpAddr::V6(src))),
                TunnResult::Err(e) => {
                    debug!(pod = %self.identity.pod_id, error = ?e, "decapsulate failed")
                }
                TunnResult::Done => {}
            }
        }
        for wire in to_network {
            self.send_to_peer(&peer_key, &wire);
        }
        if let Some((len, src)) = to_device {
            // An empty payload is a keepalive.
            if len > 0 {
                self.deliver(device, peer_key, &out[..len], src).await;
            }
        }
        self.give_packet_buffer(out);
    }

    /// Write a decrypted packet into the pod, if it passes the checks.
    async fn deliver(&mut self, device: &PacketFd, peer_key: NodeKey, packet: &[u8], src: IpAddr) {
        // Cryptokey routing, inbound half: the peer may only send from
        // addresses the pod would route to it, as installed for this pod. So
        // an exit node cannot speak for another peer's address, nor for a
        // tailnet address no peer owns.
        if self.peers.table.owner(src) != Some(&peer_key) {
            debug!(pod = %self.identity.pod_id, %src, "dropping packet outside the peer's allowed IPs");
            self.counters.drop_packets(1);
            return;
        }
        let Some(peer) = self.peers.get_mut(&peer_key) else {
            return;
        };
        // Only the pod's own addresses are reachable through its identity;
        // anything else would be injected into the pod's network.
        let to_us =
            packet_addrs(packet).is_some_and(|(_, dst)| self.identity.addresses.contains(&dst));
        if !to_us {
            debug!(pod = %self.identity.pod_id, %src, "dropping packet not addressed to the pod");
            self.counters.drop_packets(1);
            return;
        }
        // The tailnet packet filter: control's rules, plus replies to flows
        // the pod opened.
        if let Err(reason) = self.filter.check_inbound(packet) {
            trace!(pod = %self.identity.pod_id, %src, ?reason, "packet filter dropped inbound packet");
            self.counters.totals.filtered_packets += 1;
            return;
        }
        peer.rx_bytes += packet.len() as u64;
        self.counters.totals.rx_packets += 1;
        self.counters.totals.rx_bytes += packet.len() as u64;
        // Held to be joined with the next segments of its TCP flow; the
        // burst's end writes it.
        if let Err(e) = device.send_joined(packet).await {
            debug!(pod = %self.identity.pod_id, error = %e, "writing to packet device failed");
            self.counters.drop_packets(1);
        }
    }
}
