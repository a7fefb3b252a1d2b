//! Disco and STUN I/O for one pod: pings and call-me-maybe out, the
//! reaction to each authenticated disco packet, STUN rounds, and the pod's
//! endpoints (host candidates plus reflexive addresses) kept current. The
//! decisions are `wg::disco`, `wg::path` and `wg::stun`'s; this does the I/O.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, trace};

use super::pod::PodState;
use super::session::NodeKey;
use crate::wg::config::PodEndpoints;
use crate::wg::disco::{DiscoState, Reaction, Via};
use crate::wg::host_addresses::HostAddresses;
use crate::wg::path::{Path, PathState};
use crate::wg::stun::StunProber;

/// How often a pod takes the host's addresses (read for the whole node at
/// most every `HOST_ADDRESSES_MAX_AGE`) for its local endpoint candidates.
const LOCAL_ENDPOINTS_REFRESH: Duration = Duration::from_secs(20);

/// The socket on `udp_port` at each of the host's addresses; none without
/// a socket.
fn local_candidates(udp_port: Option<u16>, host: &HostAddresses) -> Vec<SocketAddr> {
    udp_port
        .map(|port| host.endpoints(port))
        .unwrap_or_default()
}

/// What the pod knows for finding direct paths: disco keys, STUN state
/// and its own endpoints.
pub(super) struct Discovery {
    /// Disco keys of the pod and its peers.
    pub(super) disco: DiscoState,
    /// Reflexive-address discovery on the pod's socket.
    pub(super) stun: StunProber,
    /// The socket's port, which every local candidate carries.
    udp_port: Option<u16>,
    /// Candidates from the host's interfaces (STUN adds the reflexive ones).
    local_endpoints: Vec<SocketAddr>,
    local_endpoints_at: Instant,
    /// What the pod reports to control, and announces in call-me-maybe.
    endpoints: watch::Sender<PodEndpoints>,
}

impl Discovery {
    /// Starts with the host's candidates for `udp_port` published.
    pub(super) fn new(
        disco_private: [u8; 32],
        udp_port: Option<u16>,
        host: &HostAddresses,
    ) -> (Self, watch::Receiver<PodEndpoints>) {
        let local_endpoints = local_candidates(udp_port, host);
        let (endpoints, endpoints_rx) = watch::channel(PodEndpoints::default());
        // Sent rather than made the initial value, so the first report to
        // control sees it as a change.
        endpoints.send_replace(PodEndpoints {
            endpoints: local_endpoints.clone(),
            preferred_derp: None,
            udp_port,
        });
        let discovery = Self {
            disco: DiscoState::new(disco_private),
            stun: StunProber::default(),
            udp_port,
            local_endpoints,
            local_endpoints_at: Instant::now(),
            endpoints,
        };
        (discovery, endpoints_rx)
    }

    /// When the pod's STUN rounds or its re-read of the host's interfaces
    /// next need the timer; nothing without a socket.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.udp_port?;
        let now = Instant::now();
        let stun = self
            .stun
            .next_deadline(now.into_std())
            .map(Instant::from_std);
        let local = self.local_endpoints_at + LOCAL_ENDPOINTS_REFRESH;
        Some(stun.map_or(local, |stun| stun.min(local)))
    }

    /// Report `region` as the pod's home relay.
    pub(super) fn set_preferred_relay(&mut self, region: Option<u16>) {
        self.endpoints.send_modify(|e| e.preferred_derp = region);
    }

    /// Re-read the host's candidates when due; returns whether they changed.
    fn refresh_local_endpoints(&mut self, host: &HostAddresses) -> bool {
        if self.local_endpoints_at.elapsed() < LOCAL_ENDPOINTS_REFRESH {
            return false;
        }
        self.local_endpoints_at = Instant::now();
        let fresh = local_candidates(self.udp_port, host);
        if fresh == self.local_endpoints {
            return false;
        }
        self.local_endpoints = fresh;
        true
    }

    /// Local candidates plus reflexive addresses, for control and call-me-maybe.
    fn publish_endpoints(&mut self, pod_id: &str) {
        let mut endpoints = self.local_endpoints.clone();
        endpoints.extend(self.stun.endpoints());
        endpoints.sort();
        endpoints.dedup();
        self.endpoints.send_if_modified(|e| {
            if e.endpoints == endpoints {
                return false;
            }
            info!(pod = %pod_id, ?endpoints, "pod endpoints changed");
            e.endpoints = endpoints;
            true
        });
    }
}

impl PodState {
    /// Act on one disco packet (from UDP or a relay). Anything that fails
    /// authentication is dropped here, before it can touch path state.
    pub(super) fn handle_disco(&mut self, packet: &[u8], via: Via) {
        let reaction = match self.discovery.disco.receive(packet, via) {
            Ok(reaction) => reaction,
            Err(error) => {
                debug!(pod = %self.identity.pod_id, ?via, %error, "disco packet rejected");
                return;
            }
        };
        let now = std::time::Instant::now();
        match reaction {
            Reaction::AnswerPing { peer, via, pong } => match via {
                Via::Udp(addr) => {
                    if let Some(sock) = self.socket.udp() {
                        if let Err(e) = sock.try_send_to(&pong, addr) {
                            trace!(pod = %self.identity.pod_id, %addr, error = %e, "disco pong not sent");
                        }
                    }
                    // The peer reaches us from `addr`: try that path from our side too.
                    if let Some(session) = self.peers.get_mut(&peer) {
                        let state = session.path_state_mut();
                        if state.current(now) != Path::Direct(addr) {
                            state.add_endpoints(&[addr], now);
                            state.request_probe();
                            self.ping_peer(&peer, now);
                        }
                    }
                }
                Via::Relay { region, .. } => {
                    self.relay.send_via(region, &peer, pong);
                }
            },
            Reaction::Pong {
                peer,
                tx_id,
                from,
                observed,
            } => {
                // Without path state no ping of ours is outstanding.
                let Some(state) = self
                    .peers
                    .get_mut(&peer)
                    .and_then(|s| s.existing_path_state())
                else {
                    return;
                };
                let before = state.current(now);
                if state.on_pong(tx_id, from, now) && state.current(now) != before {
                    info!(pod = %self.identity.pod_id, peer = %hex::encode(&peer[..4]), endpoint = %from, %observed, "direct path validated");
                }
            }
            Reaction::CallMeMaybe { peer, endpoints } => {
                if let Some(session) = self.peers.get_mut(&peer) {
                    debug!(pod = %self.identity.pod_id, endpoints = endpoints.len(), "call-me-maybe received");
                    let state = session.path_state_mut();
                    state.add_endpoints(&endpoints, now);
                    state.request_probe();
                    // Ping now, while the peer's pings hold its firewall open.
                    self.ping_peer(&peer, now);
                }
            }
        }
    }

    /// Send the disco pings due to one peer now.
    fn ping_peer(&mut self, peer_key: &NodeKey, now: std::time::Instant) {
        let Some(session) = self.peers.get_mut(peer_key) else {
            return;
        };
        send_due_pings(
            &self.discovery.disco,
            self.socket.udp(),
            peer_key,
            session.path_state_mut(),
            now,
            self.identity.node_public.to_bytes(),
        );
    }

    /// Announce our endpoints to the peer through its relay, so a peer
    /// behind NAT pings back.
    fn send_call_me_maybe(&mut self, peer_key: &NodeKey) {
        let ours = self.discovery.endpoints.borrow().endpoints.clone();
        if ours.is_empty() {
            return;
        }
        if let Some(cmm) = self.discovery.disco.call_me_maybe(peer_key, &ours) {
            self.relay_to_peer(peer_key, cmm);
        }
    }

    /// Timer: pings, heartbeats and discovery rounds for every peer. A
    /// round that starts discovery (no trusted direct path) is also
    /// announced with a call-me-maybe.
    pub(super) fn poll_disco(&mut self, now: std::time::Instant) {
        let Some(sock) = self.socket.udp() else {
            return;
        };
        let our_node = self.identity.node_public.to_bytes();
        // Allocated only when some peer starts a discovery round.
        let mut announce = Vec::new();
        // Only a peer with a WireGuard session carries data, and discovery
        // runs for active sessions only: skip the rest (most of a large
        // tailnet) without touching their path state.
        for (key, session) in self
            .peers
            .sessions
            .iter_mut()
            .filter(|(_, p)| p.tunn.is_some())
        {
            if send_due_pings(
                &self.discovery.disco,
                Some(sock),
                key,
                session.path_state_mut(),
                now,
                our_node,
            ) {
                announce.push(*key);
            }
        }
        for key in announce {
            self.send_call_me_maybe(&key);
        }
    }

    /// Timer: STUN rounds, and the pod's endpoints kept current.
    pub(super) fn poll_stun(&mut self, now: std::time::Instant) {
        let Some(sock) = self.socket.udp() else {
            return;
        };
        let busy = self.peers.has_live_session();
        self.discovery.stun.set_busy(busy, now);
        for (server, request) in self.discovery.stun.poll(now, rand::random) {
            if let Err(e) = sock.try_send_to(&request, server) {
                trace!(pod = %self.identity.pod_id, %server, error = %e, "STUN request not sent");
            }
        }
        let stun_changed = self.discovery.stun.take_changed();
        let local_changed = self
            .discovery
            .refresh_local_endpoints(&self.engine.host_addresses);
        if stun_changed || local_changed {
            self.discovery.publish_endpoints(&self.identity.pod_id);
        }
    }

    /// A STUN answer on the pod's socket.
    pub(super) fn handle_stun(&mut self, datagram: &[u8], from: SocketAddr) {
        let pod_id = &self.identity.pod_id;
        match self
            .discovery
            .stun
            .on_response(datagram, from, std::time::Instant::now())
        {
            Ok(observed) => {
                trace!(pod = %pod_id, %from, %observed, "STUN answer");
                if self.discovery.stun.take_changed() {
                    self.discovery.publish_endpoints(pod_id);
                }
            }
            Err(error) => debug!(pod = %pod_id, %from, %error, "STUN datagram ignored"),
        }
    }
}

/// Seal and send the disco pings `state` says are due. Returns whether the
/// round started discovery (pings went out while no direct path is trusted),
/// which is when a call-me-maybe should follow.
fn send_due_pings(
    disco: &DiscoState,
    sock: Option<&UdpSocket>,
    peer_key: &NodeKey,
    state: &mut PathState,
    now: std::time::Instant,
    our_node: [u8; 32],
) -> bool {
    let Some(sock) = sock else {
        return false;
    };
    if !disco.knows(peer_key) {
        return false;
    }
    let trusted = matches!(state.current(now), Path::Direct(_));
    let due = state.poll_pings(now, rand::random);
    for (addr, tx_id) in &due {
        let Some(ping) = disco.ping(peer_key, *tx_id, our_node) else {
            continue;
        };
        if let Err(e) = sock.try_send_to(&ping, *addr) {
            trace!(%addr, error = %e, "disco ping not sent");
        }
    }
    !due.is_empty() && !trusted
}
