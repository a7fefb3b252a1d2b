//! One pod's disco state (sans-IO): who may speak disco to it, and what
//! to do with each message.
//!
//! Senders are known only by the disco keys the netmap gives their peers;
//! a packet from any other key, or whose box does not open, is rejected
//! before it can touch path state. The shared box key of a peer is
//! computed when the peer first exchanges disco messages and then cached,
//! so answering pings costs only the cipher, and the many peers of a large
//! tailnet a pod never talks to cost no key agreement and no key memory.
//!
//! A ping whose transaction id the sender already used is a replay (a
//! captured packet sent again, perhaps from another address to make the pod
//! probe there) and is dropped.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tailnet_wire::disco::{
    self, CallMeMaybe, DiscoError, DiscoPublic, Message, Ping, Pong, SharedKey, TxId,
};

use super::peer_table::PeerTable;

pub use super::peer_table::NodeKey;

/// The address a pong names when the ping came through a relay: Tailscale's
/// "DERP magic" IP, with the region id as the port.
pub const DERP_MAGIC_IP: Ipv4Addr = Ipv4Addr::new(127, 3, 3, 40);

/// Ping transaction ids remembered per sender. A peer pings each of our
/// endpoints at most every few seconds with a fresh id, so this spans
/// minutes of its pings.
pub const PINGS_REMEMBERED: usize = 64;

/// How a disco packet reached the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// On the pod's UDP socket, from this (canonical) address.
    Udp(SocketAddr),
    /// Through a relay, which vouches for the sender's node key.
    Relay { src: NodeKey, region: u16 },
}

impl Via {
    /// The source a pong reports back for a ping that came this way.
    pub fn observed(self) -> SocketAddr {
        match self {
            Via::Udp(addr) => addr,
            Via::Relay { region, .. } => SocketAddr::new(IpAddr::V4(DERP_MAGIC_IP), region),
        }
    }
}

/// Why a disco packet was not acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoRejected {
    #[error("not a disco packet")]
    NotDisco,
    #[error("disco packet from a key no peer of this pod has")]
    UnknownSender,
    #[error("disco packet relayed from a node key other than its disco key's peer")]
    RelaySenderMismatch,
    #[error("disco message did not open or decode: {0}")]
    Open(#[from] DiscoError),
    #[error("disco pong through a relay (only direct paths are probed)")]
    PongViaRelay,
    #[error("disco call-me-maybe over UDP (only accepted through a relay)")]
    CallMeMaybeOverUdp,
    #[error("disco ping replayed (its transaction id was seen before)")]
    ReplayedPing,
}

/// What the engine must do about an accepted disco message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reaction {
    /// Send `pong` (a sealed packet) back the way the ping came.
    AnswerPing {
        peer: NodeKey,
        via: Via,
        pong: Vec<u8>,
    },
    /// One of our pings was answered from `from`.
    Pong {
        peer: NodeKey,
        tx_id: TxId,
        from: SocketAddr,
        /// Where the peer saw our ping come from.
        observed: SocketAddr,
    },
    /// The peer asks us to ping these endpoints of its.
    CallMeMaybe {
        peer: NodeKey,
        endpoints: Vec<SocketAddr>,
    },
}

/// Per-pod disco keys and peer table.
pub struct DiscoState {
    private: [u8; 32],
    public: DiscoPublic,
    /// The pod's peers, shared with its sessions: disco key → node key
    /// and back.
    peers: Arc<PeerTable>,
    /// Box keys of the peers disco messages went to or came from.
    shared: RefCell<HashMap<DiscoPublic, SharedKey>>,
    /// Transaction ids of the last pings of each peer that pinged us.
    recent_pings: RefCell<HashMap<DiscoPublic, RecentPings>>,
}

/// The last [`PINGS_REMEMBERED`] ping ids of one sender, oldest first.
#[derive(Debug, Default)]
struct RecentPings(VecDeque<TxId>);

impl RecentPings {
    /// Remembers `tx_id`; `false` when it was seen before.
    fn first_time(&mut self, tx_id: TxId) -> bool {
        if self.0.contains(&tx_id) {
            return false;
        }
        if self.0.len() >= PINGS_REMEMBERED {
            self.0.pop_front();
        }
        self.0.push_back(tx_id);
        true
    }
}

impl std::fmt::Debug for DiscoState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoState")
            .field("public", &hex::encode(self.public))
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl DiscoState {
    pub fn new(private: [u8; 32]) -> Self {
        Self {
            private,
            public: disco::public_key(&private),
            peers: Arc::default(),
            shared: RefCell::new(HashMap::new()),
            recent_pings: RefCell::new(HashMap::new()),
        }
    }

    pub fn public(&self) -> &DiscoPublic {
        &self.public
    }

    /// Replace the peer table (the pod's own, shared). Box keys and ping
    /// ids of peers whose disco key stays are kept.
    pub fn set_peers(&mut self, peers: Arc<PeerTable>) {
        let known = |disco_key: &DiscoPublic| peers.by_disco(disco_key).is_some();
        self.shared
            .get_mut()
            .retain(|disco_key, _| known(disco_key));
        self.recent_pings
            .get_mut()
            .retain(|disco_key, _| known(disco_key));
        self.peers = peers;
    }

    /// The disco key of `peer`, unless it has none (or ours: a peer's echo
    /// must never pass for a message).
    fn disco_key_of(&self, peer: &NodeKey) -> Option<DiscoPublic> {
        self.peers
            .get(peer)?
            .disco_key
            .filter(|key| *key != self.public)
    }

    /// The peer whose disco key is `sender`.
    fn peer_of(&self, sender: &DiscoPublic) -> Option<NodeKey> {
        if *sender == self.public {
            return None;
        }
        self.peers.by_disco(sender).map(|p| p.node_key)
    }

    /// Runs `f` with the box key shared with `disco_key`, computed on first use.
    fn with_shared<T>(&self, disco_key: &DiscoPublic, f: impl FnOnce(&SharedKey) -> T) -> T {
        let mut shared = self.shared.borrow_mut();
        let key = shared
            .entry(*disco_key)
            .or_insert_with(|| SharedKey::new(&self.private, disco_key));
        f(key)
    }

    /// Whether the peer can be spoken to (it has a disco key).
    pub fn knows(&self, peer: &NodeKey) -> bool {
        self.disco_key_of(peer).is_some()
    }

    /// Seal `message` for `peer`; `None` when the peer has no disco key.
    pub fn seal(&self, peer: &NodeKey, message: &Message) -> Option<Vec<u8>> {
        let disco_key = self.disco_key_of(peer)?;
        Some(self.with_shared(&disco_key, |shared| shared.seal(message)))
    }

    /// A ping for `peer` carrying our node key.
    pub fn ping(&self, peer: &NodeKey, tx_id: TxId, our_node_key: NodeKey) -> Option<Vec<u8>> {
        self.seal(
            peer,
            &Message::Ping(Ping {
                tx_id,
                node_key: our_node_key,
                padding: 0,
            }),
        )
    }

    /// A call-me-maybe for `peer` listing our endpoints.
    pub fn call_me_maybe(&self, peer: &NodeKey, endpoints: &[SocketAddr]) -> Option<Vec<u8>> {
        self.seal(
            peer,
            &Message::CallMeMaybe(CallMeMaybe {
                endpoints: endpoints.to_vec(),
            }),
        )
    }

    /// Authenticate and interpret one disco packet.
    pub fn receive(&self, packet: &[u8], via: Via) -> Result<Reaction, DiscoRejected> {
        let sender = disco::sender_key(packet).ok_or(DiscoRejected::NotDisco)?;
        let peer_key = self.peer_of(&sender).ok_or(DiscoRejected::UnknownSender)?;
        if let Via::Relay { src, .. } = via {
            if src != peer_key {
                return Err(DiscoRejected::RelaySenderMismatch);
            }
        }
        let message = self.with_shared(&sender, |shared| shared.open(packet))?;
        match message {
            Message::Ping(ping) => {
                let fresh = self
                    .recent_pings
                    .borrow_mut()
                    .entry(sender)
                    .or_default()
                    .first_time(ping.tx_id);
                if !fresh {
                    return Err(DiscoRejected::ReplayedPing);
                }
                let pong = self.with_shared(&sender, |shared| {
                    shared.seal(&Message::Pong(Pong {
                        tx_id: ping.tx_id,
                        src: via.observed(),
                    }))
                });
                Ok(Reaction::AnswerPing {
                    peer: peer_key,
                    via,
                    pong,
                })
            }
            Message::Pong(pong) => match via {
                Via::Udp(from) => Ok(Reaction::Pong {
                    peer: peer_key,
                    tx_id: pong.tx_id,
                    from,
                    observed: pong.src,
                }),
                Via::Relay { .. } => Err(DiscoRejected::PongViaRelay),
            },
            Message::CallMeMaybe(cmm) => match via {
                Via::Relay { .. } => Ok(Reaction::CallMeMaybe {
                    peer: peer_key,
                    // A relay's magic address or an unspecified one is no path.
                    endpoints: cmm
                        .endpoints
                        .into_iter()
                        .filter(|e| usable_endpoint(*e))
                        .collect(),
                }),
                Via::Udp(_) => Err(DiscoRejected::CallMeMaybeOverUdp),
            },
        }
    }
}

/// An address worth pinging: a real unicast IP with a port.
fn usable_endpoint(addr: SocketAddr) -> bool {
    addr.port() != 0
        && !addr.ip().is_unspecified()
        && !addr.ip().is_multicast()
        && addr.ip() != IpAddr::V4(DERP_MAGIC_IP)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_DISCO: [u8; 32] = [0x10; 32];
    const PEER_DISCO: [u8; 32] = [0x20; 32];
    const STRANGER_DISCO: [u8; 32] = [0x30; 32];
    const PEER_NODE: NodeKey = [0xaa; 32];
    const OTHER_NODE: NodeKey = [0xbb; 32];

    /// A pod's peer table of (node key, disco key) pairs.
    fn table(peers: &[(NodeKey, DiscoPublic)]) -> Arc<PeerTable> {
        let records = peers
            .iter()
            .map(|(node_key, disco_key)| {
                Arc::new(crate::wg::config::PeerConfig {
                    node_key: *node_key,
                    disco_key: Some(*disco_key),
                    allowed_ips: vec![],
                    endpoints: vec![],
                    home_derp: None,
                })
            })
            .collect();
        Arc::new(PeerTable::new(records))
    }

    fn pod() -> DiscoState {
        let mut state = DiscoState::new(POD_DISCO);
        let peer_public = disco::public_key(&PEER_DISCO);
        state.set_peers(table(&[(PEER_NODE, peer_public)]));
        state
    }

    /// A packet as the peer would send it to the pod.
    fn from_peer(message: &Message) -> Vec<u8> {
        disco::seal(&PEER_DISCO, &disco::public_key(&POD_DISCO), message)
    }

    fn ping(tx: u8) -> Message {
        Message::Ping(Ping {
            tx_id: [tx; 12],
            node_key: PEER_NODE,
            padding: 0,
        })
    }

    #[test]
    fn udp_ping_is_answered_with_the_observed_source() {
        let state = pod();
        let from: SocketAddr = "10.203.0.1:41641".parse().unwrap();
        let reaction = state.receive(&from_peer(&ping(7)), Via::Udp(from));
        let Ok(Reaction::AnswerPing { peer, via, pong }) = reaction else {
            panic!("{reaction:?}")
        };
        assert_eq!((peer, via), (PEER_NODE, Via::Udp(from)));
        // The peer opens the pong with its own key and sees its address.
        let (sender, message) = disco::open(&PEER_DISCO, &pong).unwrap();
        assert_eq!(sender, *state.public());
        assert_eq!(
            message,
            Message::Pong(Pong {
                tx_id: [7; 12],
                src: from
            })
        );
    }

    #[test]
    fn relayed_ping_is_answered_with_the_derp_magic_address() {
        let state = pod();
        let via = Via::Relay {
            src: PEER_NODE,
            region: 900,
        };
        let Ok(Reaction::AnswerPing { pong, .. }) = state.receive(&from_peer(&ping(1)), via) else {
            panic!("ping not answered")
        };
        let (_, message) = disco::open(&PEER_DISCO, &pong).unwrap();
        assert_eq!(
            message,
            Message::Pong(Pong {
                tx_id: [1; 12],
                src: "127.3.3.40:900".parse().unwrap()
            })
        );
    }

    #[test]
    fn pongs_count_only_over_udp_and_call_me_maybe_only_via_relay() {
        let state = pod();
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let observed: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        let pong = from_peer(&Message::Pong(Pong {
            tx_id: [4; 12],
            src: observed,
        }));
        assert_eq!(
            state.receive(&pong, Via::Udp(from)),
            Ok(Reaction::Pong {
                peer: PEER_NODE,
                tx_id: [4; 12],
                from,
                observed
            })
        );
        let relay = Via::Relay {
            src: PEER_NODE,
            region: 1,
        };
        assert_eq!(
            state.receive(&pong, relay),
            Err(DiscoRejected::PongViaRelay)
        );

        let cmm = from_peer(&Message::CallMeMaybe(CallMeMaybe {
            endpoints: vec![
                "127.0.0.1:41641".parse().unwrap(),
                "0.0.0.0:1".parse().unwrap(),
                "127.3.3.40:900".parse().unwrap(),
                "[fd00::1]:0".parse().unwrap(),
                "[fd00::1]:7".parse().unwrap(),
            ],
        }));
        assert_eq!(
            state.receive(&cmm, relay),
            Ok(Reaction::CallMeMaybe {
                peer: PEER_NODE,
                endpoints: vec![
                    "127.0.0.1:41641".parse().unwrap(),
                    "[fd00::1]:7".parse().unwrap()
                ],
            })
        );
        assert_eq!(
            state.receive(&cmm, Via::Udp(from)),
            Err(DiscoRejected::CallMeMaybeOverUdp)
        );
    }

    #[test]
    fn strangers_forgeries_and_impostors_are_rejected() {
        let state = pod();
        let via = Via::Udp("127.0.0.1:1".parse().unwrap());
        // A well-formed packet from a key the netmap does not list.
        let stranger = disco::seal(&STRANGER_DISCO, &disco::public_key(&POD_DISCO), &ping(1));
        assert_eq!(
            state.receive(&stranger, via),
            Err(DiscoRejected::UnknownSender)
        );
        // The peer's key in the header but a box sealed by someone else.
        let mut forged = stranger.clone();
        forged[disco::MAGIC.len()..disco::MAGIC.len() + 32]
            .copy_from_slice(&disco::public_key(&PEER_DISCO));
        assert_eq!(
            state.receive(&forged, via),
            Err(DiscoRejected::Open(DiscoError::Decrypt))
        );
        // Tampered ciphertext.
        let mut tampered = from_peer(&ping(2));
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            state.receive(&tampered, via),
            Err(DiscoRejected::Open(DiscoError::Decrypt))
        );
        // The peer's disco packet relayed on behalf of another node key.
        let relayed = Via::Relay {
            src: OTHER_NODE,
            region: 900,
        };
        assert_eq!(
            state.receive(&from_peer(&ping(3)), relayed),
            Err(DiscoRejected::RelaySenderMismatch)
        );
        assert_eq!(
            state.receive(b"not disco", via),
            Err(DiscoRejected::NotDisco)
        );
    }

    #[test]
    fn a_replayed_ping_is_dropped_even_from_another_address() {
        let state = pod();
        let packet = from_peer(&ping(5));
        let first: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let other: SocketAddr = "127.0.0.9:9".parse().unwrap();
        assert!(state.receive(&packet, Via::Udp(first)).is_ok());
        assert_eq!(
            state.receive(&packet, Via::Udp(other)),
            Err(DiscoRejected::ReplayedPing)
        );
        let relay = Via::Relay {
            src: PEER_NODE,
            region: 900,
        };
        assert_eq!(
            state.receive(&packet, relay),
            Err(DiscoRejected::ReplayedPing)
        );
        // A fresh id is answered.
        assert!(state.receive(&from_peer(&ping(6)), Via::Udp(other)).is_ok());
    }

    #[test]
    fn remembered_ping_ids_are_bounded_per_sender() {
        let state = pod();
        let via = Via::Udp("127.0.0.1:1".parse().unwrap());
        let ids = PINGS_REMEMBERED + 10;
        for n in 0..ids {
            let mut tx_id = [0u8; 12];
            tx_id[..8].copy_from_slice(&(n as u64).to_le_bytes());
            let packet = from_peer(&Message::Ping(Ping {
                tx_id,
                node_key: PEER_NODE,
                padding: 0,
            }));
            assert!(state.receive(&packet, via).is_ok());
        }
        let remembered = state.recent_pings.borrow();
        assert_eq!(remembered.len(), 1);
        assert!(remembered.values().all(|r| r.0.len() == PINGS_REMEMBERED));
    }

    #[test]
    fn peer_table_follows_the_netmap() {
        let mut state = pod();
        assert!(state.knows(&PEER_NODE));
        let packet = from_peer(&ping(1));
        let via = Via::Udp("127.0.0.1:1".parse().unwrap());
        // The peer rotates its disco key: old packets no longer pass.
        let rotated = disco::public_key(&STRANGER_DISCO);
        state.set_peers(table(&[(PEER_NODE, rotated)]));
        assert_eq!(
            state.receive(&packet, via),
            Err(DiscoRejected::UnknownSender)
        );
        // A peer may not claim our own disco key.
        let ours = *state.public();
        state.set_peers(table(&[(OTHER_NODE, ours)]));
        assert!(!state.knows(&OTHER_NODE));
        state.set_peers(table(&[]));
        assert!(!state.knows(&PEER_NODE));
        assert_eq!(state.seal(&PEER_NODE, &ping(1)), None);
    }

    #[test]
    fn box_keys_exist_only_for_peers_that_exchange_disco() {
        let mut state = DiscoState::new(POD_DISCO);
        let peer_public = disco::public_key(&PEER_DISCO);
        let other_public = disco::public_key(&STRANGER_DISCO);
        state.set_peers(table(&[
            (PEER_NODE, peer_public),
            (OTHER_NODE, other_public),
        ]));
        assert!(state.shared.borrow().is_empty());
        let via = Via::Udp("127.0.0.1:1".parse().unwrap());
        assert!(state.receive(&from_peer(&ping(1)), via).is_ok());
        assert_eq!(
            state.shared.borrow().keys().collect::<Vec<_>>(),
            vec![&peer_public]
        );
        // A peer that leaves the netmap takes its key along.
        state.set_peers(table(&[(OTHER_NODE, other_public)]));
        assert!(state.shared.borrow().is_empty());
    }

    #[test]
    fn outgoing_ping_and_call_me_maybe_open_at_the_peer() {
        let state = pod();
        let ping = state.ping(&PEER_NODE, [9; 12], [0xcc; 32]).unwrap();
        let (sender, message) = disco::open(&PEER_DISCO, &ping).unwrap();
        assert_eq!(sender, disco::public_key(&POD_DISCO));
        assert_eq!(
            message,
            Message::Ping(Ping {
                tx_id: [9; 12],
                node_key: [0xcc; 32],
                padding: 0
            })
        );
        let eps: Vec<SocketAddr> = vec!["127.0.0.1:4000".parse().unwrap()];
        let cmm = state.call_me_maybe(&PEER_NODE, &eps).unwrap();
        assert_eq!(
            disco::open(&PEER_DISCO, &cmm).unwrap().1,
            Message::CallMeMaybe(CallMeMaybe { endpoints: eps })
        );
        assert!(state.ping(&OTHER_NODE, [1; 12], [0; 32]).is_none());
    }
}
