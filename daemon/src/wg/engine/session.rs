//! A pod's peers: the shared records of its peer set (a [`PeerTable`]:
//! cryptokey routing, lookups by key), the state of the few it talks to
//! (WireGuard session, path state, counters; created on first contact),
//! and which session a direct datagram is for.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use tracing::{debug, trace};

use super::pod::{Identity, PodState};
use super::stats::PathKind;
use crate::wg::config::PeerConfig;
use crate::wg::path::{Path, PathState};
use crate::wg::peer_table::PeerTable;

/// A peer's node key.
pub(super) type NodeKey = [u8; 32];

/// How long a remembered peer waits for a netmap that names it.
const PENDING_INITIATION_TTL: Duration = Duration::from_secs(30);

/// A peer the pod had a session with before the daemon restarted, and the
/// direct endpoint that session last used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePeer {
    pub node_key: [u8; 32],
    pub direct: Option<SocketAddr>,
}

/// Remembered peers the pod's netmap has not named yet.
struct PendingInitiations {
    peers: Vec<ResumePeer>,
    until: Instant,
}

/// A peer the pod has talked to.
pub(super) struct PeerSession {
    /// Shared with every other pod that has this peer.
    pub(super) config: Arc<PeerConfig>,
    pub(super) tunn: Option<Box<Tunn>>,
    /// Direct-path validation state, only while the peer has a session or
    /// disco traffic: most peers of a large tailnet never do.
    path_state: Option<Box<PathState>>,
    /// Receiver index of `tunn`, for demultiplexing direct datagrams.
    local_index: Option<u32>,
    /// Path of the last send (`None` until the first).
    pub(super) last_sent_via: PathKind,
    /// Region of the last relayed send.
    pub(super) relayed_to: Option<u16>,
    /// Region the peer last reached us through; used when it has no home.
    pub(super) relayed_from: Option<u16>,
    pub(super) tx_bytes: u64,
    pub(super) rx_bytes: u64,
}

impl PeerSession {
    fn new(config: Arc<PeerConfig>) -> Self {
        Self {
            config,
            tunn: None,
            path_state: None,
            local_index: None,
            last_sent_via: PathKind::None,
            relayed_to: None,
            relayed_from: None,
            tx_bytes: 0,
            rx_bytes: 0,
        }
    }

    /// The peer's path state, created (with the endpoints control gave)
    /// when the peer first needs one.
    pub(super) fn path_state_mut(&mut self) -> &mut PathState {
        let endpoints = &self.config.endpoints;
        self.path_state.get_or_insert_with(|| {
            let mut state = PathState::default();
            state.set_endpoints(endpoints);
            Box::new(state)
        })
    }

    /// The path state if the peer has one: without it no ping is outstanding.
    pub(super) fn existing_path_state(&mut self) -> Option<&mut PathState> {
        self.path_state.as_deref_mut()
    }

    /// Where packets to the peer go now; the relay until a path is known.
    pub(super) fn path(&self, now: std::time::Instant) -> Path {
        self.path_state
            .as_ref()
            .map_or(Path::Relay, |p| p.current(now))
    }

    /// A send went out directly.
    pub(super) fn sent_direct(&mut self) {
        self.last_sent_via = PathKind::Direct;
    }

    /// A send was queued on the relay of `region`.
    pub(super) fn sent_relayed(&mut self, region: u16) {
        self.last_sent_via = PathKind::Relay;
        self.relayed_to = Some(region);
    }
}

/// How the maps looked up for every packet hash their keys: seeded per
/// process, and several times cheaper than the standard SipHash on a
/// 32-byte key (which was a seventh of a packet's instructions). Their
/// entries come from control's peer list, not from what arrives.
type PacketHash = foldhash::fast::RandomState;

/// The session of the peer with `key` in `sessions`, created on first
/// contact; `None` for a key not in `table`. One hash per lookup.
fn session_of<'a>(
    sessions: &'a mut HashMap<NodeKey, PeerSession, PacketHash>,
    table: &PeerTable,
    key: &NodeKey,
) -> Option<&'a mut PeerSession> {
    match sessions.entry(*key) {
        Entry::Occupied(session) => Some(session.into_mut()),
        Entry::Vacant(slot) => {
            let config = table.get(key)?.clone();
            Some(slot.insert(PeerSession::new(config)))
        }
    }
}

/// The pod's peer set and the state of the peers it talks to.
#[derive(Default)]
pub(super) struct Peers {
    /// Every peer: shared records, routes, lookups by key. Shared with the
    /// pod's disco state.
    pub(super) table: Arc<PeerTable>,
    /// Peers the pod exchanged packets or disco with: in a large tailnet
    /// a small part of the table.
    pub(super) sessions: HashMap<NodeKey, PeerSession, PacketHash>,
    /// Receiver index (as given to `Tunn::new`) → peer.
    index_to_peer: HashMap<u32, NodeKey, PacketHash>,
    pending_initiations: Option<PendingInitiations>,
}

impl Peers {
    /// The peer's state, created on first contact; `None` for a key not
    /// in the peer set.
    pub(super) fn get_mut(&mut self, key: &NodeKey) -> Option<&mut PeerSession> {
        session_of(&mut self.sessions, &self.table, key)
    }

    /// Whether `key` is in the peer set.
    pub(super) fn contains(&self, key: &NodeKey) -> bool {
        self.table.contains(key)
    }

    /// The peer's record.
    pub(super) fn config(&self, key: &NodeKey) -> Option<&Arc<PeerConfig>> {
        self.table.get(key)
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Replace the peer set: state of peers that stay survives, with
    /// their path state following changed endpoints. Returns how many
    /// peers the old set had.
    fn replace(&mut self, table: Arc<PeerTable>) -> usize {
        let removed = self.table.len();
        self.table = table;
        let table = &self.table;
        let index_to_peer = &mut self.index_to_peer;
        self.sessions.retain(|key, session| {
            let Some(config) = table.get(key) else {
                if let Some(index) = session.local_index {
                    index_to_peer.remove(&index);
                }
                return false;
            };
            if !Arc::ptr_eq(&session.config, config) {
                if let Some(state) = session.path_state.as_deref_mut() {
                    if session.config.endpoints != config.endpoints {
                        state.set_endpoints(&config.endpoints);
                    }
                }
                session.config = config.clone();
            }
            true
        });
        removed
    }

    /// The peer's session, creating its `Tunn` on first use with a
    /// receiver index unique across the engine and the pod's session
    /// limiter (mac1 only: the gate judged the load).
    pub(super) fn tunn_for(
        &mut self,
        peer_key: &NodeKey,
        secret: &x25519::StaticSecret,
        next_index: &AtomicU32,
        limiter: impl FnOnce() -> Arc<RateLimiter>,
    ) -> Option<&mut Tunn> {
        let peer = session_of(&mut self.sessions, &self.table, peer_key)?;
        if peer.tunn.is_none() {
            let index = next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
            self.index_to_peer.insert(index, *peer_key);
            peer.local_index = Some(index);
            peer.path_state_mut();
            peer.tunn = Some(Box::new(Tunn::new(
                secret.clone(),
                x25519::PublicKey::from(*peer_key),
                None,
                None,
                index,
                Some(limiter()),
            )));
        }
        peer.tunn.as_deref_mut()
    }

    /// Which peer a direct WireGuard datagram belongs to: initiations name
    /// their sender inside the (decryptable by us) handshake, everything
    /// else carries our receiver index. Opening an initiation costs X25519:
    /// only datagrams the handshake gate passed may come here.
    pub(super) fn peer_for_datagram(
        &self,
        identity: &Identity,
        datagram: &[u8],
    ) -> Option<NodeKey> {
        let receiver_idx = match Tunn::parse_incoming_packet(datagram).ok()? {
            Packet::HandshakeInit(init) => {
                let half =
                    parse_handshake_anon(&identity.node_secret, &identity.node_public, &init)
                        .ok()?;
                return self
                    .contains(&half.peer_static_public)
                    .then_some(half.peer_static_public);
            }
            Packet::HandshakeResponse(p) => p.receiver_idx,
            Packet::PacketCookieReply(p) => p.receiver_idx,
            Packet::PacketData(p) => p.receiver_idx,
        };
        self.index_to_peer.get(&(receiver_idx >> 8)).copied()
    }

    /// Splits `peers` into those in the peer set, returned, and the rest,
    /// kept pending until `until`.
    fn take_known(&mut self, peers: Vec<ResumePeer>, until: Instant) -> Vec<ResumePeer> {
        let (known, unknown): (Vec<_>, Vec<_>) = peers
            .into_iter()
            .partition(|peer| self.table.contains(&peer.node_key));
        self.pending_initiations = (!unknown.is_empty()).then_some(PendingInitiations {
            peers: unknown,
            until,
        });
        known
    }

    /// Whether any peer has a WireGuard session, whose timers must run.
    pub(super) fn has_live_session(&self) -> bool {
        self.sessions.values().any(|p| p.tunn.is_some())
    }

    /// When remembered peers no netmap named are forgotten, if any wait.
    pub(super) fn pending_initiations_deadline(&self) -> Option<tokio::time::Instant> {
        self.pending_initiations
            .as_ref()
            .map(|pending| tokio::time::Instant::from_std(pending.until))
    }

    /// Timer: forgets remembered peers no netmap named in time.
    pub(super) fn expire_pending_initiations(&mut self) {
        if self
            .pending_initiations
            .as_ref()
            .is_some_and(|pending| pending.until <= Instant::now())
        {
            self.pending_initiations = None;
        }
    }

    /// Run every session's timers: returns the datagrams they want sent
    /// (keepalives, handshake retries) and frees sessions that expired.
    fn update_timers(&mut self, out: &mut [u8], pod_id: &str) -> Vec<(NodeKey, Vec<u8>)> {
        let mut to_send = Vec::new();
        for (key, peer) in self.sessions.iter_mut() {
            let Some(tunn) = peer.tunn.as_deref_mut() else {
                continue;
            };
            match tunn.update_timers(out) {
                TunnResult::WriteToNetwork(wire) => to_send.push((*key, wire.to_vec())),
                TunnResult::Err(WireGuardError::ConnectionExpired) => {
                    // Session fully expired: free it; a new one is made on demand.
                    peer.tunn = None;
                    // Path state goes with it; discovery starts afresh
                    // with the next session.
                    peer.path_state = None;
                    if let Some(index) = peer.local_index.take() {
                        self.index_to_peer.remove(&index);
                    }
                }
                TunnResult::Err(e) => trace!(pod = %pod_id, error = ?e, "timer"),
                _ => {}
            }
        }
        to_send
    }
}

impl PodState {
    pub(super) fn set_peers(&mut self, table: Arc<PeerTable>) {
        let removed = self.peers.replace(table);
        self.discovery.disco.set_peers(self.peers.table.clone());
        debug!(pod = %self.identity.pod_id, peers = self.peers.len(), removed, routes = self.peers.table.route_count(), "peers updated");
        if let Some(pending) = self.peers.pending_initiations.take() {
            for peer in self.peers.take_known(pending.peers, pending.until) {
                self.initiate_handshake(&peer);
            }
        }
    }

    /// Handshakes with the peers a restarted daemon remembers, now for
    /// those in the peer set, when a netmap names them for the others.
    pub(super) fn initiate_handshakes(&mut self, peers: Vec<ResumePeer>) {
        let until = Instant::now() + PENDING_INITIATION_TTL;
        for peer in self.peers.take_known(peers, until) {
            self.initiate_handshake(&peer);
        }
    }

    /// Sends a fresh handshake initiation over the peer's last direct path
    /// (likely still open) and through the relay (which always reaches it):
    /// the peer answers the first to arrive and drops the other as a
    /// replay, then moves its traffic to the new session.
    fn initiate_handshake(&mut self, peer: &ResumePeer) {
        let mut out = self.take_packet_buffer();
        let wire = match self.tunn_for(&peer.node_key) {
            Some(tunn) => match tunn.format_handshake_initiation(&mut out, false) {
                TunnResult::WriteToNetwork(wire) => Some(wire.to_vec()),
                // Traffic already started one.
                TunnResult::Done => None,
                TunnResult::Err(e) => {
                    debug!(pod = %self.identity.pod_id, error = ?e, "cannot start a handshake");
                    None
                }
                _ => None,
            },
            None => None,
        };
        self.give_packet_buffer(out);
        let Some(wire) = wire else {
            return;
        };
        self.counters.totals.resume_handshakes += 1;
        if let (Some(addr), Some(sock)) = (peer.direct, self.socket.udp()) {
            if let Err(e) = sock.try_send_to(&wire, addr) {
                debug!(pod = %self.identity.pod_id, %addr, error = %e, "direct handshake not sent");
            }
        }
        if self.relay_to_peer(&peer.node_key, wire).is_none() {
            debug!(pod = %self.identity.pod_id, "no relay to reach a remembered peer");
        }
    }

    /// The peer's session, creating it on first use.
    pub(super) fn tunn_for(&mut self, peer_key: &NodeKey) -> Option<&mut Tunn> {
        self.peers.tunn_for(
            peer_key,
            &self.identity.node_secret,
            &self.engine.next_index,
            || self.handshakes.session_limiter(),
        )
    }

    /// Timer: WireGuard timers of every session, their output sent.
    pub(super) fn update_session_timers(&mut self) {
        let mut out = self.take_packet_buffer();
        let to_send = self.peers.update_timers(&mut out, &self.identity.pod_id);
        self.give_packet_buffer(out);
        for (key, wire) in to_send {
            self.send_to_peer(&key, &wire);
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
