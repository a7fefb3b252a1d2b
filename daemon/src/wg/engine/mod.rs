//! The shared data-plane engine: one tokio task per pod, all pods sharing
//! the runtime (no thread per pod). Each pod task owns its packet device,
//! its WireGuard sessions (one boringtun `Tunn` per peer, created lazily)
//! and its relay links, so the hot path takes no locks.
//!
//! A peer's *path* is how its datagrams travel: direct over the pod's UDP
//! socket, or through a relay (a DERP server). A *route* is only ever
//! cryptokey routing (which peer owns a destination address).
//!
//! This module is the API ([`Engine`], [`PodHandle`]); the pod's task is
//! cut by concern:
//!
//! - `pod`: the per-pod state and its event loop.
//! - `session`: peers, their WireGuard sessions and cryptokey routing.
//! - `transmit`: packet device → peer (source check, flow noted, encrypt,
//!   direct or relay).
//! - `receive`: peer → packet device (decrypt, source checks, filter).
//! - `handshake`: the gate handshakes pass before any X25519 work (mac1,
//!   cookies under load, relayed peers' allowances, the node's handshake
//!   budget); `sender_budget` counts the allowances per sender.
//! - `socket`: the pod's UDP socket and the send batch being filled.
//! - `batch_pool`: batch buffers every pod borrows while it handles a wake-up.
//! - `relay`: DERP links and the home relay.
//! - `discovery`: disco and STUN I/O, the pod's endpoints.
//! - `filter`: the tailnet packet filter as a pod applies it.
//! - `dns`: the pod's MagicDNS resolver (queries to 100.100.100.100).
//! - `stats`: counters and their snapshots.
//! - `timers`: the pod's one timer, set to its next deadline.

mod batch_pool;
mod discovery;
mod dns;
mod filter;
mod handshake;
mod pod;
mod receive;
mod relay;
mod sender_budget;
mod session;
mod socket;
mod stats;
mod timers;
mod transmit;

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tailnet_wire::filter::CompiledRules;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::info;

use super::config::{DerpRegionConfig, EngineConfig, PeerConfig, PodDataConfig, PodEndpoints};
use super::derp_client::HomeRelay;
use super::host_addresses::HostAddresses;
use super::packet_fd::PacketFd;
use super::peer_table::PeerTable;
use batch_pool::BatchPool;
use pod::{PodInputs, PodState};

pub use dns::{
    is_service_addr, Decision as DnsDecision, DnsSettings, DnsTable, RouteTarget, SERVICE_V4,
    SERVICE_V6,
};
pub use relay::{choose_home_region, WarmRelay};
pub use session::ResumePeer;
pub use stats::{PathKind, PeerStats, PodStats, STATS_PUBLISH_INTERVAL};

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

/// The node's data plane.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

/// What every pod task of an engine shares.
struct EngineInner {
    config: EngineConfig,
    pods: Mutex<HashSet<String>>,
    /// boringtun receiver indices (24 bits, shifted by Tunn) must be unique
    /// across every session the node runs.
    next_index: AtomicU32,
    /// Handshakes every pod together may hand to X25519 each second.
    handshake_budget: Arc<handshake::NodeBudget>,
    /// Timer passes every pod together has run: what idle pods cost.
    timer_wakeups: AtomicU64,
    /// Every pod's local endpoint candidates.
    host_addresses: HostAddresses,
    /// Batch buffers pods borrow while they handle a wake-up.
    batches: BatchPool,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            inner: Arc::new(EngineInner {
                config,
                pods: Mutex::new(HashSet::new()),
                next_index: AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff),
                handshake_budget: Arc::new(handshake::NodeBudget::default()),
                timer_wakeups: AtomicU64::new(0),
                host_addresses: HostAddresses::default(),
                batches: BatchPool::default(),
            }),
        }
    }

    /// Number of attached pods.
    pub fn pod_count(&self) -> usize {
        self.inner.pods.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Timer passes run by every pod since the engine started. An idle
    /// pod runs one only when a deadline of its own comes (a STUN refresh,
    /// a link to close); one with live sessions every
    /// [`EngineConfig::timer_interval`].
    pub fn timer_wakeups(&self) -> u64 {
        self.inner.timer_wakeups.load(Ordering::Relaxed)
    }

    /// Start serving a pod. Must be called inside a tokio runtime.
    pub fn attach_pod(&self, pod: PodDataConfig) -> Result<PodHandle, EngineError> {
        self.attach_pod_reusing(pod, Reused::default())
    }

    /// Connects the home relay of the identity with `node_private` before
    /// it serves a pod (see [`WarmRelay`]); `label` names it in the log.
    /// Must be called inside a tokio runtime.
    pub fn warm_relay(
        &self,
        label: &str,
        node_private: [u8; 32],
        derp_map: Arc<Vec<DerpRegionConfig>>,
    ) -> WarmRelay {
        WarmRelay::open(label, node_private, derp_map, &self.inner.config)
    }

    /// [`Self::attach_pod`], taking over what `reused` holds.
    pub fn attach_pod_reusing(
        &self,
        pod: PodDataConfig,
        reused: Reused,
    ) -> Result<PodHandle, EngineError> {
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
        let (state, watches, inbound) = PodState::new(
            self.inner.clone(),
            pod_id.clone(),
            node_private,
            disco_private,
            addresses,
            reused,
        );
        let engine = self.clone();
        let id = pod_id.clone();
        let inputs = PodInputs {
            device,
            commands: command_rx,
            relayed: inbound.relayed,
            dns_replies: inbound.dns_replies,
        };
        // Boxed: the task's future would otherwise hold the state three
        // times over (captured, passed, bound), 1.6 KiB each.
        let state = Box::new(state);
        tokio::spawn(async move {
            pod::run(state, inputs).await;
            engine.forget(&id);
        });
        info!(pod = %pod_id, "pod attached to data plane");
        Ok(PodHandle {
            pod_id,
            commands,
            endpoints: watches.endpoints,
            stats: watches.stats,
            home_relay: watches.home_relay,
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

/// What a pod's attachment takes over instead of making anew.
#[derive(Default)]
pub struct Reused {
    /// The port of the pod's UDP socket before a restart, used when it is
    /// free: the pod's peers still send to it, so their answers to its
    /// handshakes arrive.
    pub udp_port: Option<u16>,
    /// Relay links the pod's identity opened while it waited in the pool;
    /// ignored if they were opened with another node key.
    pub relay: Option<WarmRelay>,
}

/// A request from a [`PodHandle`] to its pod task.
enum Command {
    SetPeers(Arc<PeerTable>),
    SetDerpMap(Arc<Vec<DerpRegionConfig>>),
    SetFilter(Arc<CompiledRules>),
    SetRememberedFilter(Arc<CompiledRules>, Instant),
    InitiateHandshakes(Vec<ResumePeer>),
    SetDns(Arc<DnsTable>),
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

    /// Whether the pod's task in the engine still runs (it owns the other
    /// end of the command channel).
    pub fn is_running(&self) -> bool {
        !self.commands.is_closed()
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
        self.set_peer_table(Arc::new(PeerTable::new(peers))).await
    }

    /// [`Self::set_peers`] with a table built (or a delta applied) by the
    /// caller, shared with other pods.
    pub async fn set_peer_table(&self, table: Arc<PeerTable>) -> Result<(), EngineError> {
        self.send(Command::SetPeers(table)).await
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

    /// Enforce rules remembered from before a restart, until control's
    /// first [`Self::set_filter`] replaces them or `until` passes, whichever
    /// comes first; past `until` the pod is closed inbound (deny-all).
    pub async fn set_remembered_filter(
        &self,
        rules: Arc<CompiledRules>,
        until: Instant,
    ) -> Result<(), EngineError> {
        self.send(Command::SetRememberedFilter(rules, until)).await
    }

    /// Start a WireGuard handshake with each of `peers` now rather than when
    /// traffic asks for one: after a restart the peers still hold sessions
    /// this process has lost, and would only notice at their rekey timeout.
    /// A peer not in the pod's peer set yet gets its handshake when a
    /// netmap brings it, if that happens within 30 s.
    pub async fn initiate_handshakes(&self, peers: Vec<ResumePeer>) -> Result<(), EngineError> {
        self.send(Command::InitiateHandshakes(peers)).await
    }

    /// Answer the pod's MagicDNS queries from `table` from now on. Until
    /// the first call every query goes to the upstream.
    pub async fn set_dns(&self, table: Arc<DnsTable>) -> Result<(), EngineError> {
        self.send(Command::SetDns(table)).await
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
        // On a timeout, or once the engine stops, the answer is the state as it is.
        tokio::time::timeout(timeout, state.wait_for(settled))
            .await
            .ok();
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

#[cfg(test)]
mod tests;
