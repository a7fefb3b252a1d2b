//! A pod's relay links: one DERP connection per region in use, the home
//! region kept connected (peers find the pod there), and which region a
//! packet to a peer is relayed through.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, trace};

use super::pod::{PodState, MIN_WG_BUFFER, WG_OVERHEAD};
use super::session::NodeKey;
use crate::wg::config::{DerpRegionConfig, EngineConfig};
use crate::wg::derp_client::{DerpInbound, DerpLink, HomeRelay, LinkSettings};
use crate::wg::stun;

/// An open link to one region.
struct RelayLink {
    link: DerpLink,
    /// The region as the link was opened, to notice DERP map changes.
    config: DerpRegionConfig,
    last_used: Instant,
}

/// The pod's open relay links and its home region.
pub(super) struct RelayLinks {
    /// The node key's private half, which each link authenticates with.
    node_private: [u8; 32],
    derp_map: Arc<Vec<DerpRegionConfig>>,
    home_region: Option<u16>,
    /// Connection state of the home region's link, for
    /// [`super::PodHandle::wait_home_relay`].
    home_relay: Arc<watch::Sender<HomeRelay>>,
    links: HashMap<u16, RelayLink>,
    /// Where every link delivers the packets it receives.
    inbound: mpsc::Sender<DerpInbound>,
    /// What every link is opened with.
    settings: LinkSettings,
}

/// An identity's relay links opened before it serves a pod: a pooled
/// identity keeps its home relay connected, so the ADD that binds it need
/// not wait for one. Handed to the pod at attach; dropping it closes the
/// links.
pub struct WarmRelay {
    links: RelayLinks,
    home_relay: watch::Receiver<HomeRelay>,
    /// What the links received before the pod was attached.
    inbound: mpsc::Receiver<DerpInbound>,
}

impl WarmRelay {
    /// Opens the home region's link of `map` for the identity with
    /// `node_private`; `label` names it in the log. Must be called inside a
    /// tokio runtime.
    pub(super) fn open(
        label: &str,
        node_private: [u8; 32],
        map: Arc<Vec<DerpRegionConfig>>,
        config: &EngineConfig,
    ) -> Self {
        let (mut links, home_relay, inbound) = RelayLinks::new(node_private, config);
        links.set_map(map, label);
        Self {
            links,
            home_relay,
            inbound,
        }
    }

    /// The home relay's connection state now.
    pub fn home_relay(&self) -> HomeRelay {
        *self.home_relay.borrow()
    }

    /// The region the identity's peers are to find it in.
    pub fn home_region(&self) -> Option<u16> {
        self.links.home_region()
    }

    /// The links, if they were opened for `node_private` (a pooled
    /// identity's key may have rotated since).
    pub(super) fn into_parts_for(
        self,
        node_private: &[u8; 32],
    ) -> Option<(
        RelayLinks,
        watch::Receiver<HomeRelay>,
        mpsc::Receiver<DerpInbound>,
    )> {
        (self.links.node_private == *node_private).then_some((
            self.links,
            self.home_relay,
            self.inbound,
        ))
    }
}

impl RelayLinks {
    /// No links yet; returns the home relay's state and the receiving end
    /// of every link's inbound packets.
    pub(super) fn new(
        node_private: [u8; 32],
        config: &EngineConfig,
    ) -> (
        Self,
        watch::Receiver<HomeRelay>,
        mpsc::Receiver<DerpInbound>,
    ) {
        let (home_relay, home_relay_rx) = watch::channel(HomeRelay::Unknown);
        let (inbound, inbound_rx) = mpsc::channel(config.inbound_queue.max(1));
        let links = Self {
            node_private,
            derp_map: Arc::new(Vec::new()),
            home_region: None,
            home_relay: Arc::new(home_relay),
            links: HashMap::new(),
            inbound,
            settings: LinkSettings {
                queue: config.derp_queue,
                max_datagram: (config.max_packet_size + WG_OVERHEAD).max(MIN_WG_BUFFER),
                trust: config.relay_trust.clone(),
            },
        };
        (links, home_relay_rx, inbound_rx)
    }

    pub(super) fn home_region(&self) -> Option<u16> {
        self.home_region
    }

    pub(super) fn derp_map(&self) -> &[DerpRegionConfig] {
        &self.derp_map
    }

    /// Take a new DERP map: links to regions that vanished or changed are
    /// closed (and rebuilt on demand), the home region is chosen again and
    /// kept connected. An unchanged map (every netmap repeats it) keeps its
    /// connections.
    fn set_map(&mut self, map: Arc<Vec<DerpRegionConfig>>, pod_id: &str) {
        self.links.retain(|_, link| map.contains(&link.config));
        self.derp_map = map;
        let home = choose_home_region(&self.derp_map);
        if home != self.home_region {
            // The preferred flag is sent at connect time: reconnect both ends.
            if let Some(old) = self.home_region {
                self.links.remove(&old);
            }
            if let Some(new) = home {
                self.links.remove(&new);
            }
            self.home_region = home;
            if home.is_some() {
                self.home_relay.send_replace(HomeRelay::Connecting);
            }
            info!(pod = %pod_id, home_region = ?home, "home DERP region chosen");
        }
        match self.home_region {
            // Peers find us through our home region: keep it connected.
            Some(home) => {
                self.link(home);
            }
            None => {
                self.home_relay.send_replace(HomeRelay::Absent);
            }
        }
    }

    /// The link to `region`, opened on demand.
    fn link(&mut self, region: u16) -> Option<&mut RelayLink> {
        if !self.links.contains_key(&region) {
            let config = self
                .derp_map
                .iter()
                .find(|r| r.region_id == region)?
                .clone();
            let home = (Some(region) == self.home_region).then(|| self.home_relay.clone());
            let link = DerpLink::spawn(
                config.clone(),
                self.node_private,
                home,
                self.inbound.clone(),
                self.settings.clone(),
            );
            self.links.insert(
                region,
                RelayLink {
                    link,
                    config,
                    last_used: Instant::now(),
                },
            );
        }
        self.links.get_mut(&region)
    }

    /// Queue `packet` for `peer_key` on the link to `region`.
    pub(super) fn send_via(&mut self, region: u16, peer_key: &NodeKey, packet: Vec<u8>) -> bool {
        match self.link(region) {
            Some(link) => {
                link.last_used = Instant::now();
                link.link.try_send(*peer_key, packet)
            }
            None => false,
        }
    }

    /// Traffic arrived through `region`: its link is in use.
    pub(super) fn touch(&mut self, region: u16) {
        if let Some(link) = self.links.get_mut(&region) {
            link.last_used = Instant::now();
        }
    }

    /// Timer: close links unused for `idle`, except the home region's.
    pub(super) fn close_idle(&mut self, idle: Duration) {
        let home = self.home_region;
        self.links
            .retain(|region, link| Some(*region) == home || link.last_used.elapsed() < idle);
    }

    /// When the first link other than the home region's has been unused
    /// for `idle`, if any such link is open.
    pub(super) fn next_idle_close(&self, idle: Duration) -> Option<Instant> {
        let home = self.home_region;
        self.links
            .iter()
            .filter(|(region, _)| Some(**region) != home)
            .map(|(_, link)| link.last_used + idle)
            .min()
    }

    fn in_map(&self, region: u16) -> bool {
        self.derp_map.iter().any(|r| r.region_id == region)
    }
}

impl PodState {
    pub(super) fn set_derp_map(&mut self, map: Arc<Vec<DerpRegionConfig>>) {
        self.relay.set_map(map, &self.identity.pod_id);
        let home = self.relay.home_region();
        self.discovery.set_preferred_relay(home);
        // New STUN servers (or the first ones): learn our reflexive address now.
        self.discovery
            .stun
            .set_servers(stun::servers_from(self.relay.derp_map()));
    }

    /// Queue `packet` for the peer on a relay: the peer's home region if we
    /// know it, else where it last reached us from, else ours. Returns the
    /// region used, or `None` if the packet was dropped.
    pub(super) fn relay_to_peer(&mut self, peer_key: &NodeKey, packet: Vec<u8>) -> Option<u16> {
        let home_derp = self.peers.config(peer_key)?.home_derp;
        let relayed_from = self
            .peers
            .sessions
            .get(peer_key)
            .and_then(|p| p.relayed_from);
        let known = |r: &u16| self.relay.in_map(*r);
        let Some(region) = home_derp
            .filter(known)
            .or(relayed_from.filter(known))
            .or(self.relay.home_region())
        else {
            trace!(pod = %self.identity.pod_id, "no DERP region to reach peer");
            return None;
        };
        self.relay
            .send_via(region, peer_key, packet)
            .then_some(region)
    }
}

/// Home region without UDP measurements: the lowest region id that has a
/// relay node. (With STUN latencies the lowest-latency region wins.)
pub fn choose_home_region(map: &[DerpRegionConfig]) -> Option<u16> {
    map.iter()
        .filter(|r| r.nodes.iter().any(|n| !n.stun_only))
        .map(|r| r.region_id)
        .min()
}
