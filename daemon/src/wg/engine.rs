//! The shared data-plane engine: one tokio task per pod, all pods sharing
//! the runtime (no thread per pod). Each pod task owns its packet device,
//! its WireGuard sessions (one boringtun `Tunn` per peer, created lazily)
//! and its relay links, so the hot path takes no locks.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use tailnet_wire::filter::{CompiledRules, ConntrackConfig, DropReason, Filter, Verdict};
use tailnet_wire::packet::Packet as IpPacket;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, trace, warn};

use super::batch::{self, DatagramBatch, BATCH_SLOTS};
use super::config::{DerpRegionConfig, EngineConfig, PeerConfig, PodDataConfig, PodEndpoints};
use super::derp_client::{DerpInbound, DerpLink, HomeRelay};
use super::disco::{DiscoState, Reaction, Via};
use super::packet_fd::PacketFd;
use super::path::{PathState, Route};
use super::routing::{packet_addrs, prefix_contains, AllowedIps};
use super::stun::{self as stun_probe, StunProber};
use super::udp;

/// boringtun needs room for its header and tag, and at least 148 bytes for handshakes.
const WG_OVERHEAD: usize = 32;
const MIN_WG_BUFFER: usize = 148;
/// Packets drained from the device (or UDP socket) per wake-up before
/// serving other events.
const TUN_BATCH: usize = 64;
/// UDP receive batches drained per wake-up before serving other events.
const UDP_ROUNDS: usize = 2;
/// Timer ticks without traffic after which a pod frees its batch buffers,
/// so idle pods do not pay for them.
const BATCH_IDLE_TICKS: u8 = 4;
/// How often a pod publishes the snapshot behind [`PodHandle::stats_now`].
pub const STATS_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// How often expired flows are swept from a pod's connection-tracking table
/// (lookups ignore expired flows anyway; this only reclaims memory).
const FILTER_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often a pod re-reads the host's interface addresses for its
/// local endpoint candidates.
const LOCAL_ENDPOINTS_REFRESH: Duration = Duration::from_secs(20);
/// WireGuard message types 1-4 with three zero bytes: anything else from a
/// relay (disco) is not for boringtun.
pub fn looks_like_wireguard(packet: &[u8]) -> bool {
    packet.len() >= 4 && (1..=4).contains(&packet[0]) && packet[1..4] == [0, 0, 0]
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("pod {0} is already attached")]
    AlreadyAttached(String),
    #[error("pod {pod_id}: packet device unusable: {source}")]
    Device {
        pod_id: String,
        #[source]
        source: io::Error,
    },
    #[error("pod {0} is no longer attached")]
    Detached(String),
}

/// How the next packet to a peer travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// No packet sent yet and no direct path validated.
    None,
    /// Relayed through DERP (see [`PeerStats::derp_region`]).
    Derp,
    /// Straight over UDP (see [`PeerStats::direct_endpoint`]).
    Direct,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    pub node_key: [u8; 32],
    pub path: PathKind,
    /// Region of the last relayed send.
    pub derp_region: Option<u16>,
    /// The validated direct endpoint, while the path is [`PathKind::Direct`].
    pub direct_endpoint: Option<SocketAddr>,
    /// Time since the last completed handshake, if any.
    pub last_handshake: Option<Duration>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodStats {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Packets dropped: spoofed source, no route, full queue, bad inner source.
    pub dropped_packets: u64,
    /// Inbound packets the tailnet packet filter refused (no rule accepts
    /// them and they answer no flow the pod opened); not in `dropped_packets`.
    pub filtered_packets: u64,
    pub peers: Vec<PeerStats>,
}

/// Which peers a statistics snapshot lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerSelection {
    All,
    /// Peers with a session or any packet sent.
    InUse,
}

/// The node's data plane.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    config: EngineConfig,
    pods: Mutex<HashSet<String>>,
    /// boringtun receiver indices (24 bits, shifted by Tunn) must be unique
    /// across every session the node runs.
    next_index: AtomicU32,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            inner: Arc::new(EngineInner {
                config,
                pods: Mutex::new(HashSet::new()),
                next_index: AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff),
            }),
        }
    }

    /// Number of attached pods.
    pub fn pod_count(&self) -> usize {
        self.inner.pods.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Start serving a pod. Must be called inside a tokio runtime.
    pub fn attach_pod(&self, pod: PodDataConfig) -> Result<PodHandle, EngineError> {
        let PodDataConfig {
            pod_id,
            tun_fd,
            node_private,
            disco_private,
            addresses,
        } = pod;
        {
            let mut pods = self.inner.pods.lock().unwrap_or_else(|e| e.into_inner());
            if !pods.insert(pod_id.clone()) {
                return Err(EngineError::AlreadyAttached(pod_id));
            }
        }
        let device = match PacketFd::new(tun_fd) {
            Ok(d) => d,
            Err(source) => {
                self.forget(&pod_id);
                return Err(EngineError::Device { pod_id, source });
            }
        };
        let (commands, command_rx) = mpsc::channel(16);
        let (endpoints_tx, endpoints_rx) = watch::channel(PodEndpoints::default());
        let (stats_tx, stats_rx) = watch::channel(PodStats::default());
        let (home_relay_tx, home_relay_rx) = watch::channel(HomeRelay::Unknown);
        let (inbound_tx, inbound_rx) = mpsc::channel(self.inner.config.inbound_queue.max(1));
        let secret = x25519::StaticSecret::from(node_private);
        let udp = match udp::bind_pod_socket(0) {
            Ok(sock) => Some(Arc::new(sock)),
            Err(e) => {
                warn!(pod = %pod_id, error = %e, "no UDP socket; relay only");
                None
            }
        };
        let udp_port = udp
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .map(|a| a.port());
        let local_endpoints = udp_port.map(udp::local_endpoints).unwrap_or_default();
        let _ = endpoints_tx.send(PodEndpoints {
            endpoints: local_endpoints.clone(),
            preferred_derp: None,
            udp_port,
        });
        let state = PodState {
            pod_id: pod_id.clone(),
            node_private,
            node_public: x25519::PublicKey::from(&secret),
            node_secret: secret,
            udp: udp.clone(),
            udp_port,
            local_endpoints,
            local_endpoints_at: Instant::now(),
            disco: DiscoState::new(disco_private),
            stun: StunProber::default(),
            index_to_peer: HashMap::new(),
            addresses,
            peers: HashMap::new(),
            routes: AllowedIps::default(),
            derp_map: Arc::new(Vec::new()),
            filter: None,
            last_filter_sweep: Instant::now(),
            home_region: None,
            home_relay: Arc::new(home_relay_tx),
            links: HashMap::new(),
            inbound_tx,
            endpoints_tx,
            stats_tx,
            last_stats_publish: None,
            stats: PodStats::default(),
            engine: self.inner.clone(),
            tx_batch: None,
            rx_batch: None,
            batch_idle_ticks: 0,
            udp_gso: true,
            out_buf: vec![
                0u8;
                (self.inner.config.max_packet_size + WG_OVERHEAD).max(MIN_WG_BUFFER)
            ],
        };
        let engine = self.clone();
        let id = pod_id.clone();
        tokio::spawn(async move {
            run_pod(state, device, udp, command_rx, inbound_rx).await;
            engine.forget(&id);
        });
        info!(pod = %pod_id, "pod attached to data plane");
        Ok(PodHandle {
            pod_id,
            commands,
            endpoints: endpoints_rx,
            stats: stats_rx,
            home_relay: home_relay_rx,
        })
    }

    fn forget(&self, pod_id: &str) {
        self.inner
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(pod_id);
    }
}

enum Command {
    SetPeers(Vec<Arc<PeerConfig>>),
    SetDerpMap(Arc<Vec<DerpRegionConfig>>),
    SetFilter(Arc<CompiledRules>),
    Stats(oneshot::Sender<PodStats>),
    Detach(oneshot::Sender<()>),
}

/// Control of one attached pod. Dropping every handle detaches the pod.
#[derive(Clone)]
pub struct PodHandle {
    pod_id: String,
    commands: mpsc::Sender<Command>,
    endpoints: watch::Receiver<PodEndpoints>,
    stats: watch::Receiver<PodStats>,
    home_relay: watch::Receiver<HomeRelay>,
}

impl PodHandle {
    pub fn pod_id(&self) -> &str {
        &self.pod_id
    }

    async fn send(&self, cmd: Command) -> Result<(), EngineError> {
        self.commands
            .send(cmd)
            .await
            .map_err(|_| EngineError::Detached(self.pod_id.clone()))
    }

    /// Replace the peer set: new peers are added, changed ones updated in
    /// place (sessions survive), missing ones removed.
    pub async fn set_peers(&self, peers: Vec<PeerConfig>) -> Result<(), EngineError> {
        self.set_shared_peers(peers.into_iter().map(Arc::new).collect())
            .await
    }

    /// [`Self::set_peers`] with configs shared between pods: every pod of
    /// a tailnet sees the same peers, so each holds pointers, not copies.
    pub async fn set_shared_peers(&self, peers: Vec<Arc<PeerConfig>>) -> Result<(), EngineError> {
        self.send(Command::SetPeers(peers)).await
    }

    pub async fn set_derp_map(&self, map: Arc<Vec<DerpRegionConfig>>) -> Result<(), EngineError> {
        self.send(Command::SetDerpMap(map)).await
    }

    /// Enforce these packet-filter rules on traffic from peers. Until the
    /// first call nothing is filtered (the daemon sets a deny-all filter
    /// before a pod has peers); later calls swap the rules and keep tracked
    /// flows, so replies to the pod's own connections keep flowing.
    pub async fn set_filter(&self, rules: Arc<CompiledRules>) -> Result<(), EngineError> {
        self.send(Command::SetFilter(rules)).await
    }

    pub async fn stats(&self) -> Result<PodStats, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Stats(tx)).await?;
        rx.await
            .map_err(|_| EngineError::Detached(self.pod_id.clone()))
    }

    /// The latest published statistics without waiting on the pod task:
    /// at most [`STATS_PUBLISH_INTERVAL`] old. For metrics scrapes. Lists
    /// only the peers the pod has exchanged packets with: in a tailnet of
    /// thousands a pod talks to few, and every pod republishing every peer
    /// each second would cost memory and time in the square of the pods.
    pub fn stats_now(&self) -> PodStats {
        self.stats.borrow().clone()
    }

    /// Waits, at most `timeout`, until peers can reach the pod through its
    /// home relay (or the DERP map has none); returns the state then. A pod
    /// announced before that loses its peers' first handshakes, which
    /// WireGuard only retries after 5 s.
    pub async fn wait_home_relay(&self, timeout: Duration) -> HomeRelay {
        let mut state = self.home_relay.clone();
        let settled = |s: &HomeRelay| matches!(s, HomeRelay::Connected | HomeRelay::Absent);
        let _ = tokio::time::timeout(timeout, state.wait_for(settled)).await;
        let now = *state.borrow();
        now
    }

    /// Where the pod can be reached, for reporting to control.
    pub fn endpoints(&self) -> watch::Receiver<PodEndpoints> {
        self.endpoints.clone()
    }

    /// Stop serving the pod and release its device, sessions and links.
    pub async fn detach(self) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Detach(tx)).await?;
        rx.await
            .map_err(|_| EngineError::Detached(self.pod_id.clone()))
    }
}

struct PeerSession {
    /// Shared with every other pod that has this peer.
    config: Arc<PeerConfig>,
    tunn: Option<Box<Tunn>>,
    /// Region the peer last reached us through; used when it has no home.
    last_derp_region: Option<u16>,
    /// Direct-path validation state, only while the peer has a session or
    /// disco traffic: most peers of a large tailnet never do.
    paths: Option<Box<PathState>>,
    /// Receiver index of `tunn`, for demultiplexing direct datagrams.
    local_index: Option<u32>,
    /// Path of the last send (`None` until the first).
    path: PathKind,
    derp_region: Option<u16>,
    tx_bytes: u64,
    rx_bytes: u64,
}

impl PeerSession {
    fn new(config: Arc<PeerConfig>) -> Self {
        Self {
            config,
            tunn: None,
            last_derp_region: None,
            paths: None,
            local_index: None,
            path: PathKind::None,
            derp_region: None,
            tx_bytes: 0,
            rx_bytes: 0,
        }
    }

    /// The peer's path state, created (with the endpoints control gave)
    /// when the peer first needs one.
    fn paths_mut(&mut self) -> &mut PathState {
        let endpoints = &self.config.endpoints;
        self.paths.get_or_insert_with(|| {
            let mut paths = PathState::default();
            paths.set_endpoints(endpoints);
            Box::new(paths)
        })
    }

    /// Where packets to the peer go now; the relay until a path is known.
    fn route(&self, now: std::time::Instant) -> Route {
        self.paths.as_ref().map_or(Route::Relay, |p| p.route(now))
    }
}

struct LinkEntry {
    link: DerpLink,
    /// The region as the link was opened, to notice DERP map changes.
    config: DerpRegionConfig,
    last_used: Instant,
}

struct PodState {
    pod_id: String,
    node_private: [u8; 32],
    node_secret: x25519::StaticSecret,
    node_public: x25519::PublicKey,
    udp: Option<Arc<tokio::net::UdpSocket>>,
    udp_port: Option<u16>,
    /// Candidates from the host's interfaces (STUN adds the reflexive ones).
    local_endpoints: Vec<SocketAddr>,
    local_endpoints_at: Instant,
    /// Disco keys of the pod and its peers.
    disco: DiscoState,
    /// Reflexive-address discovery on the pod's socket.
    stun: StunProber,
    /// Receiver index (as given to `Tunn::new`) → peer.
    index_to_peer: HashMap<u32, [u8; 32]>,
    addresses: Vec<IpAddr>,
    peers: HashMap<[u8; 32], PeerSession>,
    routes: AllowedIps<[u8; 32]>,
    derp_map: Arc<Vec<DerpRegionConfig>>,
    /// The tailnet packet filter; `None` until one is set.
    filter: Option<Filter>,
    last_filter_sweep: Instant,
    home_region: Option<u16>,
    /// Connection state of the home region's link, for [`PodHandle::wait_home_relay`].
    home_relay: Arc<watch::Sender<HomeRelay>>,
    links: HashMap<u16, LinkEntry>,
    inbound_tx: mpsc::Sender<DerpInbound>,
    endpoints_tx: watch::Sender<PodEndpoints>,
    stats_tx: watch::Sender<PodStats>,
    last_stats_publish: Option<Instant>,
    stats: PodStats,
    engine: Arc<EngineInner>,
    /// Encrypted datagrams for direct paths, sent together after the
    /// device is drained; allocated while the pod is busy.
    tx_batch: Option<Box<OutBatch>>,
    /// Datagrams from the UDP socket; allocated while the pod is busy.
    rx_batch: Option<Box<DatagramBatch>>,
    /// Timer ticks since a batch was last used.
    batch_idle_ticks: u8,
    /// Whether sends still try UDP GSO (off after the first refusal).
    udp_gso: bool,
    /// Reused for every encapsulation/decapsulation.
    out_buf: Vec<u8>,
}

/// Encrypted datagrams waiting for one `sendmmsg`, with the peer each is
/// for (a datagram the kernel refuses falls back to that peer's relay).
struct OutBatch {
    datagrams: DatagramBatch,
    peers: Vec<[u8; 32]>,
}

async fn run_pod(
    mut state: PodState,
    device: PacketFd,
    udp: Option<Arc<tokio::net::UdpSocket>>,
    mut commands: mpsc::Receiver<Command>,
    mut inbound: mpsc::Receiver<DerpInbound>,
) {
    let mut timer = tokio::time::interval(state.engine.config.timer_interval);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Sized to the device MTU, not 64 KiB: per-pod memory matters.
    let mut tun_buf = vec![0u8; state.engine.config.max_packet_size];
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Detach(done)) => {
                    let _ = done.send(());
                    break;
                }
                Some(cmd) => state.handle_command(cmd),
                None => break,
            },
            msg = inbound.recv() => {
                // The pod holds a sender itself, so this never yields None.
                if let Some(msg) = msg {
                    state.handle_derp_inbound(&device, msg).await;
                }
            }
            read = device.recv(&mut tun_buf) => {
                match read {
                    Ok(n) => {
                        state.handle_outbound_packet(&tun_buf[..n]);
                        // Drain what else is waiting, bounded so events still get served.
                        for _ in 1..TUN_BATCH {
                            match device.try_recv(&mut tun_buf) {
                                Ok(n) => state.handle_outbound_packet(&tun_buf[..n]),
                                Err(_) => break,
                            }
                        }
                        state.flush_tx();
                    }
                    Err(e) => {
                        warn!(pod = %state.pod_id, error = %e, "packet device failed; detaching");
                        break;
                    }
                }
            }
            ready = udp_readable(udp.as_deref()) => match (ready, udp.as_deref()) {
                (Ok(()), Some(sock)) => state.drain_udp(&device, sock).await,
                (Ok(()), None) => {}
                (Err(e), _) => debug!(pod = %state.pod_id, error = %e, "UDP socket failed"),
            },
            _ = timer.tick() => state.on_timer(),
        }
    }
    info!(pod = %state.pod_id, "pod detached from data plane");
}

/// Wait until the pod's socket has datagrams (forever without a socket).
/// Only readiness is awaited: the buffers are taken after the wake-up, so
/// an idle pod holds none.
async fn udp_readable(sock: Option<&tokio::net::UdpSocket>) -> io::Result<()> {
    match sock {
        Some(sock) => sock.readable().await,
        None => std::future::pending().await,
    }
}

impl PodState {
    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::SetPeers(peers) => self.set_peers(peers),
            Command::SetDerpMap(map) => self.set_derp_map(map),
            Command::SetFilter(rules) => self.set_filter(rules),
            Command::Stats(reply) => {
                let _ = reply.send(self.snapshot_stats(PeerSelection::All));
            }
            Command::Detach(_) => {}
        }
    }

    fn set_peers(&mut self, peers: Vec<Arc<PeerConfig>>) {
        let mut next = HashMap::with_capacity(peers.len());
        for config in peers {
            let key = config.node_key;
            let session = match self.peers.remove(&key) {
                Some(mut existing) => {
                    if !Arc::ptr_eq(&existing.config, &config) {
                        if let Some(paths) = existing.paths.as_deref_mut() {
                            if existing.config.endpoints != config.endpoints {
                                paths.set_endpoints(&config.endpoints);
                            }
                        }
                        existing.config = config;
                    }
                    existing
                }
                None => PeerSession::new(config),
            };
            next.insert(key, session);
        }
        let removed = self.peers.len();
        for gone in self.peers.values() {
            if let Some(index) = gone.local_index {
                self.index_to_peer.remove(&index);
            }
        }
        self.peers = next;
        self.disco.set_peers(
            self.peers
                .values()
                .filter_map(|p| p.config.disco_key.as_ref().map(|d| (p.config.node_key, d))),
        );
        self.routes = AllowedIps::from_entries(self.peers.values().flat_map(|p| {
            p.config
                .allowed_ips
                .iter()
                .map(|(ip, len)| (*ip, *len, p.config.node_key))
        }));
        debug!(pod = %self.pod_id, peers = self.peers.len(), removed, routes = self.routes.len(), "peers updated");
    }

    fn set_filter(&mut self, rules: Arc<CompiledRules>) {
        match &mut self.filter {
            Some(filter) => filter.set_rules(rules),
            None => {
                self.filter = Some(Filter::new(
                    rules,
                    self.addresses.iter().copied(),
                    ConntrackConfig::default(),
                ))
            }
        }
        debug!(pod = %self.pod_id, "packet filter updated");
    }

    fn set_derp_map(&mut self, map: Arc<Vec<DerpRegionConfig>>) {
        self.derp_map = map;
        // Links to regions that vanished or changed are rebuilt on demand.
        let map = self.derp_map.clone();
        // An unchanged map (every netmap repeats it) keeps its connections.
        self.links.retain(|_, entry| map.contains(&entry.config));
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
            info!(pod = %self.pod_id, home_region = ?home, "home DERP region chosen");
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
        self.endpoints_tx
            .send_modify(|e| e.preferred_derp = self.home_region);
        // New STUN servers (or the first ones): learn our reflexive address now.
        self.stun
            .set_servers(stun_probe::servers_from(&self.derp_map));
    }

    /// The link to `region`, opened on demand.
    fn link(&mut self, region: u16) -> Option<&mut LinkEntry> {
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
                self.inbound_tx.clone(),
                self.engine.config.derp_queue,
            );
            self.links.insert(
                region,
                LinkEntry {
                    link,
                    config,
                    last_used: Instant::now(),
                },
            );
        }
        self.links.get_mut(&region)
    }

    fn handle_outbound_packet(&mut self, packet: &[u8]) {
        let Some((src, dst)) = packet_addrs(packet) else {
            self.stats.dropped_packets += 1;
            return;
        };
        if !self.addresses.contains(&src) {
            trace!(pod = %self.pod_id, %src, "dropping packet with foreign source");
            self.stats.dropped_packets += 1;
            return;
        }
        // Remember the flows the pod opens so the filter lets their replies in.
        if let Some(filter) = &mut self.filter {
            if let Ok(parsed) = IpPacket::parse(packet) {
                filter.note_outbound(&parsed, std::time::Instant::now());
            }
        }
        let Some(peer_key) = self.routes.lookup(dst).copied() else {
            trace!(pod = %self.pod_id, %dst, "no peer for destination");
            self.stats.dropped_packets += 1;
            return;
        };
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += packet.len() as u64;
        if let Some(addr) = self.direct_addr(&peer_key) {
            self.encapsulate_direct(peer_key, addr, packet);
            return;
        }
        let mut out = std::mem::take(&mut self.out_buf);
        if let Some(tunn) = self.tunn_for(&peer_key) {
            match tunn.encapsulate(packet, &mut out) {
                TunnResult::WriteToNetwork(wire) => {
                    if let Some(p) = self.peers.get_mut(&peer_key) {
                        p.tx_bytes += packet.len() as u64;
                    }
                    self.send_to_peer(&peer_key, wire);
                }
                TunnResult::Err(e) => debug!(pod = %self.pod_id, error = ?e, "encapsulate failed"),
                _ => {}
            }
        }
        self.out_buf = out;
    }

    /// The peer's validated direct endpoint, if the pod has a socket to
    /// reach it; counts as path activity like any send.
    fn direct_addr(&mut self, peer_key: &[u8; 32]) -> Option<SocketAddr> {
        self.udp.as_ref()?;
        let paths = self.peers.get_mut(peer_key)?.paths_mut();
        let now = std::time::Instant::now();
        paths.note_activity(now);
        match paths.route(now) {
            Route::Direct(addr) => Some(addr),
            Route::Relay => None,
        }
    }

    /// Encrypt `packet` straight into the next slot of the send batch,
    /// flushing the batch when it fills.
    fn encapsulate_direct(&mut self, peer_key: [u8; 32], addr: SocketAddr, packet: &[u8]) {
        let slot_len = self.batch_slot_len();
        let mut batch = self.tx_batch.take().unwrap_or_else(|| {
            Box::new(OutBatch {
                datagrams: DatagramBatch::new(BATCH_SLOTS, slot_len),
                peers: Vec::with_capacity(BATCH_SLOTS),
            })
        });
        self.batch_idle_ticks = 0;
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
                TunnResult::Err(e) => debug!(pod = %self.pod_id, error = ?e, "encapsulate failed"),
                _ => {}
            }
        }
        if let Some(p) = self.peers.get_mut(&peer_key) {
            p.tx_bytes += packet.len() as u64;
            p.path = PathKind::Direct;
        }
        if let Some(wire) = copied {
            self.send_to_peer(&peer_key, &wire);
        }
        if batch.datagrams.is_full() {
            self.send_out_batch(&mut batch);
        }
        self.tx_batch = Some(batch);
    }

    /// Send what the device drain batched.
    fn flush_tx(&mut self) {
        if let Some(mut batch) = self.tx_batch.take() {
            self.send_out_batch(&mut batch);
            self.tx_batch = Some(batch);
        }
    }

    /// Send a batch with as few system calls as the kernel allows, then
    /// empty it. A full socket buffer drops the rest, as a full link would;
    /// a datagram the kernel refuses outright goes to the peer's relay.
    fn send_out_batch(&mut self, batch: &mut OutBatch) {
        let out = &batch.datagrams;
        let mut next = 0;
        while next < out.len() {
            let Some(sock) = self.udp.clone() else {
                self.stats.dropped_packets += (out.len() - next) as u64;
                break;
            };
            let gso = self.udp_gso;
            let sent = sock.try_io(Interest::WRITABLE, || {
                batch::send_batch(std::os::fd::AsFd::as_fd(&*sock), out, next, gso)
            });
            match sent {
                Ok(0) => break,
                Ok(n) => next += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.dropped_packets += (out.len() - next) as u64;
                    break;
                }
                // The kernel or the outgoing device lacks UDP GSO: send
                // datagram by datagram from now on.
                Err(e) if gso && out.gso_run(next) > 1 => {
                    debug!(pod = %self.pod_id, error = %e, "UDP GSO refused; sending datagrams singly");
                    self.udp_gso = false;
                }
                Err(e) => {
                    if let (Some((wire, addr)), Some(peer_key)) =
                        (out.get(next), batch.peers.get(next))
                    {
                        debug!(pod = %self.pod_id, %addr, error = %e, "direct send failed; relaying");
                        let peer_key = *peer_key;
                        match self.relay_to_peer(&peer_key, wire.to_vec()) {
                            Some(region) => {
                                if let Some(peer) = self.peers.get_mut(&peer_key) {
                                    peer.path = PathKind::Derp;
                                    peer.derp_region = Some(region);
                                }
                            }
                            None => self.stats.dropped_packets += 1,
                        }
                    }
                    next += 1;
                }
            }
        }
        batch.datagrams.clear();
        batch.peers.clear();
    }

    /// Receive and handle what waits on the UDP socket, a batch per system
    /// call, bounded so other events still get served.
    async fn drain_udp(&mut self, device: &PacketFd, sock: &tokio::net::UdpSocket) {
        let slot_len = self.batch_slot_len();
        let mut batch = self
            .rx_batch
            .take()
            .unwrap_or_else(|| Box::new(DatagramBatch::new(BATCH_SLOTS, slot_len)));
        self.batch_idle_ticks = 0;
        for _ in 0..UDP_ROUNDS {
            let received = sock.try_io(Interest::READABLE, || {
                batch::recv_batch(std::os::fd::AsFd::as_fd(sock), &mut batch)
            });
            let n = match received {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(pod = %self.pod_id, error = %e, "UDP receive failed");
                    break;
                }
            };
            for i in 0..n {
                if let Some((datagram, from)) = batch.get(i) {
                    self.handle_udp(device, datagram, udp::canonical(from))
                        .await;
                }
            }
            if n < batch.capacity() {
                break;
            }
        }
        self.rx_batch = Some(batch);
    }

    /// One slot holds the largest datagram: a full packet plus WireGuard's
    /// header and tag (and room for handshakes).
    fn batch_slot_len(&self) -> usize {
        (self.engine.config.max_packet_size + WG_OVERHEAD + 64).max(MIN_WG_BUFFER)
    }

    /// Timer: free the batch buffers of a pod that has gone quiet.
    fn release_idle_batches(&mut self) {
        if self.tx_batch.is_none() && self.rx_batch.is_none() {
            return;
        }
        self.batch_idle_ticks = self.batch_idle_ticks.saturating_add(1);
        if self.batch_idle_ticks >= BATCH_IDLE_TICKS {
            self.tx_batch = None;
            self.rx_batch = None;
        }
    }

    /// The peer's session, creating its `Tunn` on first use.
    fn tunn_for(&mut self, peer_key: &[u8; 32]) -> Option<&mut Tunn> {
        let secret = &self.node_secret;
        let peer = self.peers.get_mut(peer_key)?;
        if peer.tunn.is_none() {
            let index = self.engine.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
            self.index_to_peer.insert(index, *peer_key);
            peer.local_index = Some(index);
            peer.paths_mut();
            peer.tunn = Some(Box::new(Tunn::new(
                secret.clone(),
                x25519::PublicKey::from(*peer_key),
                None,
                None,
                index,
                None,
            )));
        }
        peer.tunn.as_deref_mut()
    }

    /// Send one WireGuard datagram: straight over UDP when the peer's direct
    /// path is validated (no copy), else through a relay.
    fn send_to_peer(&mut self, peer_key: &[u8; 32], wire: &[u8]) {
        let Some(peer) = self.peers.get_mut(peer_key) else {
            return;
        };
        let now = std::time::Instant::now();
        let paths = peer.paths_mut();
        paths.note_activity(now);
        if let (Route::Direct(addr), Some(sock)) = (paths.route(now), self.udp.as_ref()) {
            match sock.try_send_to(wire, addr) {
                Ok(_) => {
                    peer.path = PathKind::Direct;
                    return;
                }
                // A full socket buffer drops the datagram like a full link would.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.dropped_packets += 1;
                    return;
                }
                Err(e) => {
                    debug!(pod = %self.pod_id, %addr, error = %e, "direct send failed; relaying")
                }
            }
        }
        match self.relay_to_peer(peer_key, wire.to_vec()) {
            Some(region) => {
                if let Some(peer) = self.peers.get_mut(peer_key) {
                    peer.path = PathKind::Derp;
                    peer.derp_region = Some(region);
                }
            }
            None => self.stats.dropped_packets += 1,
        }
    }

    /// Queue `packet` for the peer on a relay: the peer's home region if we
    /// know it, else where it last reached us from, else ours. Returns the
    /// region used, or `None` if the packet was dropped.
    fn relay_to_peer(&mut self, peer_key: &[u8; 32], packet: Vec<u8>) -> Option<u16> {
        let peer = self.peers.get(peer_key)?;
        let known = |r: &u16| self.derp_map.iter().any(|region| region.region_id == *r);
        let Some(region) = peer
            .config
            .home_derp
            .filter(known)
            .or(peer.last_derp_region.filter(known))
            .or(self.home_region)
        else {
            trace!(pod = %self.pod_id, "no DERP region to reach peer");
            return None;
        };
        self.relay_via(region, peer_key, packet).then_some(region)
    }

    /// Queue `packet` for `peer_key` on the link to `region`.
    fn relay_via(&mut self, region: u16, peer_key: &[u8; 32], packet: Vec<u8>) -> bool {
        match self.link(region) {
            Some(entry) => {
                entry.last_used = Instant::now();
                entry.link.try_send(*peer_key, packet)
            }
            None => false,
        }
    }

    async fn handle_derp_inbound(&mut self, device: &PacketFd, msg: DerpInbound) {
        if tailnet_wire::disco::looks_like_disco(&msg.packet) {
            if let Some(link) = self.links.get_mut(&msg.region) {
                link.last_used = Instant::now();
            }
            let via = Via::Derp {
                src: msg.src,
                region: msg.region,
            };
            self.handle_disco(&msg.packet, via);
            return;
        }
        if !looks_like_wireguard(&msg.packet) {
            trace!(pod = %self.pod_id, "ignoring non-WireGuard relay packet");
            return;
        }
        let Some(peer) = self.peers.get_mut(&msg.src) else {
            trace!(pod = %self.pod_id, "relay packet from unknown peer");
            self.stats.dropped_packets += 1;
            return;
        };
        peer.last_derp_region = Some(msg.region);
        if let Some(link) = self.links.get_mut(&msg.region) {
            link.last_used = Instant::now();
        }
        self.decapsulate_from(device, msg.src, None, &msg.packet)
            .await;
    }

    /// A datagram on the pod's UDP socket: WireGuard, disco or STUN.
    async fn handle_udp(&mut self, device: &PacketFd, datagram: &[u8], from: SocketAddr) {
        match tailnet_wire::stun::classify(datagram) {
            tailnet_wire::stun::PacketKind::WireGuard => {}
            tailnet_wire::stun::PacketKind::Disco => {
                self.handle_disco(datagram, Via::Udp(from));
                return;
            }
            tailnet_wire::stun::PacketKind::Stun => {
                self.handle_stun(datagram, from);
                return;
            }
            tailnet_wire::stun::PacketKind::Other => {
                trace!(pod = %self.pod_id, %from, "ignoring unknown datagram");
                return;
            }
        }
        let Some(peer_key) = self.peer_for_datagram(datagram) else {
            trace!(pod = %self.pod_id, %from, "WireGuard datagram for no known session");
            self.stats.dropped_packets += 1;
            return;
        };
        if let Some(peer) = self.peers.get_mut(&peer_key) {
            peer.paths_mut().note_activity(std::time::Instant::now());
        }
        self.decapsulate_from(device, peer_key, Some(from.ip()), datagram)
            .await;
    }

    /// Which peer a direct WireGuard datagram belongs to: initiations name
    /// their sender inside the (decryptable by us) handshake, everything
    /// else carries our receiver index.
    fn peer_for_datagram(&self, datagram: &[u8]) -> Option<[u8; 32]> {
        let receiver_idx = match Tunn::parse_incoming_packet(datagram).ok()? {
            Packet::HandshakeInit(init) => {
                let half =
                    parse_handshake_anon(&self.node_secret, &self.node_public, &init).ok()?;
                return self
                    .peers
                    .contains_key(&half.peer_static_public)
                    .then_some(half.peer_static_public);
            }
            Packet::HandshakeResponse(p) => p.receiver_idx,
            Packet::PacketCookieReply(p) => p.receiver_idx,
            Packet::PacketData(p) => p.receiver_idx,
        };
        self.index_to_peer.get(&(receiver_idx >> 8)).copied()
    }

    /// Feed one datagram from `peer_key` to its session and act on the results.
    async fn decapsulate_from(
        &mut self,
        device: &PacketFd,
        peer_key: [u8; 32],
        src_addr: Option<IpAddr>,
        datagram: &[u8],
    ) {
        let mut out = std::mem::take(&mut self.out_buf);
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
                TunnResult::Err(e) => debug!(pod = %self.pod_id, error = ?e, "decapsulate failed"),
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
        self.out_buf = out;
    }

    async fn deliver(&mut self, device: &PacketFd, peer_key: [u8; 32], packet: &[u8], src: IpAddr) {
        let Some(peer) = self.peers.get_mut(&peer_key) else {
            return;
        };
        // Cryptokey routing, inbound half: the peer may only send from its prefixes.
        if !peer
            .config
            .allowed_ips
            .iter()
            .any(|(p, len)| prefix_contains(*p, *len, src))
        {
            debug!(pod = %self.pod_id, %src, "dropping packet outside the peer's allowed IPs");
            self.stats.dropped_packets += 1;
            return;
        }
        // Only the pod's own addresses are reachable through its identity;
        // anything else would be injected into the pod's network.
        let to_us = packet_addrs(packet).is_some_and(|(_, dst)| self.addresses.contains(&dst));
        if !to_us {
            debug!(pod = %self.pod_id, %src, "dropping packet not addressed to the pod");
            self.stats.dropped_packets += 1;
            return;
        }
        // The tailnet packet filter: control's rules, plus replies to flows
        // the pod opened.
        if let Some(filter) = &mut self.filter {
            let verdict = match IpPacket::parse(packet) {
                Ok(parsed) => filter.check_inbound(&parsed, std::time::Instant::now()),
                // Unparseable headers cannot be judged: refuse them.
                Err(_) => Verdict::Drop(DropReason::NoRuleMatched),
            };
            if let Verdict::Drop(reason) = verdict {
                trace!(pod = %self.pod_id, %src, ?reason, "packet filter dropped inbound packet");
                self.stats.filtered_packets += 1;
                return;
            }
        }
        peer.rx_bytes += packet.len() as u64;
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += packet.len() as u64;
        if let Err(e) = device.send(packet).await {
            debug!(pod = %self.pod_id, error = %e, "writing to packet device failed");
            self.stats.dropped_packets += 1;
        }
    }

    fn on_timer(&mut self) {
        let mut out = std::mem::take(&mut self.out_buf);
        let mut to_send = Vec::new();
        for (key, peer) in self.peers.iter_mut() {
            let Some(tunn) = peer.tunn.as_deref_mut() else {
                continue;
            };
            match tunn.update_timers(&mut out) {
                TunnResult::WriteToNetwork(wire) => to_send.push((*key, wire.to_vec())),
                TunnResult::Err(boringtun::noise::errors::WireGuardError::ConnectionExpired) => {
                    // Session fully expired: free it; a new one is made on demand.
                    peer.tunn = None;
                    // Path state goes with it; discovery starts afresh
                    // with the next session.
                    peer.paths = None;
                    if let Some(index) = peer.local_index.take() {
                        self.index_to_peer.remove(&index);
                    }
                }
                TunnResult::Err(e) => trace!(pod = %self.pod_id, error = ?e, "timer"),
                _ => {}
            }
        }
        self.out_buf = out;
        for (key, wire) in to_send {
            self.send_to_peer(&key, &wire);
        }
        let now = std::time::Instant::now();
        self.poll_disco(now);
        self.poll_stun(now);
        if self
            .last_stats_publish
            .is_none_or(|t| t.elapsed() >= STATS_PUBLISH_INTERVAL)
        {
            self.last_stats_publish = Some(Instant::now());
            let snapshot = self.snapshot_stats(PeerSelection::InUse);
            self.stats_tx.send_replace(snapshot);
        }
        if let Some(filter) = &mut self.filter {
            if self.last_filter_sweep.elapsed() >= FILTER_SWEEP_INTERVAL {
                self.last_filter_sweep = Instant::now();
                filter.state_mut().sweep_expired(std::time::Instant::now());
            }
        }
        self.release_idle_batches();
        let idle = self.engine.config.derp_idle_timeout;
        let home = self.home_region;
        self.links
            .retain(|region, entry| Some(*region) == home || entry.last_used.elapsed() < idle);
    }

    /// Act on one disco packet (from UDP or a relay). Anything that fails
    /// authentication is dropped here, before it can touch path state.
    fn handle_disco(&mut self, packet: &[u8], via: Via) {
        let reaction = match self.disco.receive(packet, via) {
            Ok(reaction) => reaction,
            Err(error) => {
                debug!(pod = %self.pod_id, ?via, %error, "disco packet rejected");
                return;
            }
        };
        let now = std::time::Instant::now();
        match reaction {
            Reaction::AnswerPing { peer, via, pong } => match via {
                Via::Udp(addr) => {
                    if let Some(sock) = &self.udp {
                        if let Err(e) = sock.try_send_to(&pong, addr) {
                            trace!(pod = %self.pod_id, %addr, error = %e, "disco pong not sent");
                        }
                    }
                    // The peer reaches us from `addr`: try that path from our side too.
                    if let Some(session) = self.peers.get_mut(&peer) {
                        let paths = session.paths_mut();
                        if paths.route(now) != Route::Direct(addr) {
                            paths.add_endpoints(&[addr]);
                            paths.request_probe();
                            self.ping_peer(&peer, now, false);
                        }
                    }
                }
                Via::Derp { region, .. } => {
                    self.relay_via(region, &peer, pong);
                }
            },
            Reaction::Pong {
                peer,
                tx_id,
                from,
                observed,
            } => {
                // Without path state no ping of ours is outstanding.
                let Some(paths) = self
                    .peers
                    .get_mut(&peer)
                    .and_then(|s| s.paths.as_deref_mut())
                else {
                    return;
                };
                let before = paths.route(now);
                if paths.on_pong(tx_id, from, now) {
                    let after = paths.route(now);
                    if after != before {
                        info!(pod = %self.pod_id, peer = %hex::encode(&peer[..4]), endpoint = %from, %observed, "direct path validated");
                    }
                }
            }
            Reaction::CallMeMaybe { peer, endpoints } => {
                if let Some(session) = self.peers.get_mut(&peer) {
                    debug!(pod = %self.pod_id, endpoints = endpoints.len(), "call-me-maybe received");
                    let paths = session.paths_mut();
                    paths.add_endpoints(&endpoints);
                    paths.request_probe();
                    // Ping now, while the peer's pings hold its firewall open.
                    self.ping_peer(&peer, now, false);
                }
            }
        }
    }

    /// Send the disco pings due to one peer. With `call_me_maybe`, a round
    /// that starts discovery (no trusted direct path) is also announced
    /// through the relay, so a peer behind NAT pings back.
    fn ping_peer(&mut self, peer_key: &[u8; 32], now: std::time::Instant, call_me_maybe: bool) {
        let Some(session) = self.peers.get_mut(peer_key) else {
            return;
        };
        let our_node = self.node_public.to_bytes();
        let announce = send_due_pings(
            &self.disco,
            self.udp.as_deref(),
            peer_key,
            session.paths_mut(),
            now,
            our_node,
        );
        if announce && call_me_maybe {
            self.send_call_me_maybe(peer_key);
        }
    }

    fn send_call_me_maybe(&mut self, peer_key: &[u8; 32]) {
        let ours = self.endpoints_tx.borrow().endpoints.clone();
        if ours.is_empty() {
            return;
        }
        if let Some(cmm) = self.disco.call_me_maybe(peer_key, &ours) {
            self.relay_to_peer(peer_key, cmm);
        }
    }

    /// Timer: pings, heartbeats and discovery rounds for every peer.
    fn poll_disco(&mut self, now: std::time::Instant) {
        let Some(sock) = self.udp.as_deref() else {
            return;
        };
        let our_node = self.node_public.to_bytes();
        // Allocated only when some peer starts a discovery round.
        let mut announce = Vec::new();
        // Only a peer with a WireGuard session carries data, and discovery
        // runs for active sessions only: skip the rest (most of a large
        // tailnet) without touching their path state.
        for (key, session) in self.peers.iter_mut().filter(|(_, p)| p.tunn.is_some()) {
            if send_due_pings(
                &self.disco,
                Some(sock),
                key,
                session.paths_mut(),
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
    fn poll_stun(&mut self, now: std::time::Instant) {
        let Some(sock) = self.udp.clone() else {
            return;
        };
        for (server, request) in self.stun.poll(now, rand::random) {
            if let Err(e) = sock.try_send_to(&request, server) {
                trace!(pod = %self.pod_id, %server, error = %e, "STUN request not sent");
            }
        }
        let mut changed = self.stun.take_changed();
        if self.local_endpoints_at.elapsed() >= LOCAL_ENDPOINTS_REFRESH {
            self.local_endpoints_at = Instant::now();
            let fresh = self.udp_port.map(udp::local_endpoints).unwrap_or_default();
            if fresh != self.local_endpoints {
                self.local_endpoints = fresh;
                changed = true;
            }
        }
        if changed {
            self.publish_endpoints();
        }
    }

    fn handle_stun(&mut self, datagram: &[u8], from: SocketAddr) {
        match self
            .stun
            .on_response(datagram, from, std::time::Instant::now())
        {
            Ok(observed) => {
                trace!(pod = %self.pod_id, %from, %observed, "STUN answer");
                if self.stun.take_changed() {
                    self.publish_endpoints();
                }
            }
            Err(error) => debug!(pod = %self.pod_id, %from, %error, "STUN datagram ignored"),
        }
    }

    /// Local candidates plus reflexive addresses, for control and call-me-maybe.
    fn publish_endpoints(&mut self) {
        let mut endpoints = self.local_endpoints.clone();
        endpoints.extend(self.stun.endpoints());
        endpoints.sort();
        endpoints.dedup();
        let pod_id = &self.pod_id;
        self.endpoints_tx.send_if_modified(|e| {
            if e.endpoints == endpoints {
                return false;
            }
            info!(pod = %pod_id, ?endpoints, "pod endpoints changed");
            e.endpoints = endpoints;
            true
        });
    }

    fn snapshot_stats(&self, selection: PeerSelection) -> PodStats {
        let now = std::time::Instant::now();
        let mut stats = self.stats.clone();
        stats.peers = self
            .peers
            .iter()
            .filter(|(_, p)| {
                selection == PeerSelection::All || p.tunn.is_some() || p.path != PathKind::None
            })
            .map(|(key, p)| PeerStats {
                node_key: *key,
                // The path the next packet takes: a validated direct
                // endpoint, else the relay once anything was relayed.
                path: match p.route(now) {
                    Route::Direct(_) => PathKind::Direct,
                    Route::Relay if p.path == PathKind::None => PathKind::None,
                    Route::Relay => PathKind::Derp,
                },
                derp_region: p.derp_region,
                direct_endpoint: match p.route(now) {
                    Route::Direct(addr) => Some(addr),
                    Route::Relay => None,
                },
                last_handshake: p.tunn.as_ref().and_then(|t| t.time_since_last_handshake()),
                tx_bytes: p.tx_bytes,
                rx_bytes: p.rx_bytes,
            })
            .collect();
        stats
    }
}

/// Seal and send the disco pings `paths` says are due. Returns whether the
/// round started discovery (pings went out while no direct path is trusted),
/// which is when a call-me-maybe should follow.
fn send_due_pings(
    disco: &DiscoState,
    sock: Option<&tokio::net::UdpSocket>,
    peer_key: &[u8; 32],
    paths: &mut PathState,
    now: std::time::Instant,
    our_node: [u8; 32],
) -> bool {
    let Some(sock) = sock else {
        return false;
    };
    if !disco.knows(peer_key) {
        return false;
    }
    let trusted = matches!(paths.route(now), Route::Direct(_));
    let due = paths.poll_pings(now, rand::random);
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

/// Home region without UDP measurements: the lowest region id that has a
/// relay node. (With STUN latencies the lowest-latency region wins.)
pub fn choose_home_region(map: &[DerpRegionConfig]) -> Option<u16> {
    map.iter()
        .filter(|r| r.nodes.iter().any(|n| !n.stun_only))
        .map(|r| r.region_id)
        .min()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_filter;
