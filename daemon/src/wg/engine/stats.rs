//! A pod's counters and the statistics snapshots built from them.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::pod::PodState;
use super::session::PeerSession;
use crate::wg::path::Path;

/// How often, at most, a pod publishes the snapshot behind
/// [`super::PodHandle::stats_now`]: only after its counters or sessions
/// changed, so an idle pod publishes nothing.
pub const STATS_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// How the next packet to a peer travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// No packet sent yet and no direct path validated.
    None,
    /// Through a relay (see [`PeerStats::relay_region`]).
    Relay,
    /// Straight over UDP (see [`PeerStats::direct_endpoint`]).
    Direct,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    pub node_key: [u8; 32],
    /// The path the next packet takes.
    pub path: PathKind,
    /// DERP region of the last relayed send.
    pub relay_region: Option<u16>,
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
    /// Handshakes started because a restarted daemon remembered a session
    /// with the peer ([`super::PodHandle::initiate_handshakes`]).
    pub resume_handshakes: u64,
    pub peers: Vec<PeerStats>,
}

/// Which peers a statistics snapshot lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerSelection {
    All,
    /// Peers with a session or any packet sent.
    InUse,
}

/// The pod's totals and where their snapshots are published.
pub(super) struct Counters {
    /// Pod-wide totals; `peers` stays empty (snapshots fill it).
    pub(super) totals: PodStats,
    published: watch::Sender<PodStats>,
    last_published: Option<Instant>,
    /// Something the snapshot shows may have changed since it was published.
    changed: bool,
}

impl Counters {
    pub(super) fn new() -> (Self, watch::Receiver<PodStats>) {
        let (published, receiver) = watch::channel(PodStats::default());
        let counters = Self {
            totals: PodStats::default(),
            published,
            last_published: None,
            changed: false,
        };
        (counters, receiver)
    }

    pub(super) fn drop_packets(&mut self, n: u64) {
        self.totals.dropped_packets += n;
    }

    /// Traffic or a command may have changed what a snapshot shows.
    pub(super) fn mark_changed(&mut self) {
        self.changed = true;
    }

    /// When the next snapshot is due: a publish interval after the last,
    /// and only once something changed.
    fn publish_deadline(&self) -> Option<Instant> {
        if !self.changed {
            return None;
        }
        Some(
            self.last_published
                .map_or_else(Instant::now, |t| t + STATS_PUBLISH_INTERVAL),
        )
    }
}

impl PodState {
    /// Timer: publish a snapshot of the peers in use, at most every
    /// [`STATS_PUBLISH_INTERVAL`] and only after a change; watchers are
    /// woken only when it differs from the last.
    pub(super) fn publish_stats_if_due(&mut self) {
        if self
            .counters
            .publish_deadline()
            .is_some_and(|due| due <= Instant::now())
        {
            self.counters.last_published = Some(Instant::now());
            self.counters.changed = false;
            let snapshot = self.snapshot_stats(PeerSelection::InUse);
            self.counters.published.send_if_modified(|published| {
                let modified = *published != snapshot;
                *published = snapshot;
                modified
            });
        }
    }

    /// When the timer must run for the next snapshot, if one is owed.
    pub(super) fn stats_deadline(&self) -> Option<Instant> {
        self.counters.publish_deadline()
    }

    pub(super) fn snapshot_stats(&self, selection: PeerSelection) -> PodStats {
        let now = std::time::Instant::now();
        let mut stats = self.counters.totals.clone();
        let sessions = &self.peers.sessions;
        stats.peers = match selection {
            PeerSelection::All => self
                .peers
                .table
                .iter()
                .map(|config| match sessions.get(&config.node_key) {
                    Some(session) => peer_stats(&config.node_key, session, now),
                    None => PeerStats::untouched(config.node_key),
                })
                .collect(),
            PeerSelection::InUse => sessions
                .iter()
                .filter(|(_, p)| p.tunn.is_some() || p.last_sent_via != PathKind::None)
                .map(|(key, p)| peer_stats(key, p, now))
                .collect(),
        };
        stats
    }
}

impl PeerStats {
    /// A peer the pod has exchanged nothing with.
    fn untouched(node_key: [u8; 32]) -> Self {
        Self {
            node_key,
            path: PathKind::None,
            relay_region: None,
            direct_endpoint: None,
            last_handshake: None,
            tx_bytes: 0,
            rx_bytes: 0,
        }
    }
}

fn peer_stats(key: &[u8; 32], p: &PeerSession, now: std::time::Instant) -> PeerStats {
    let path = p.path(now);
    PeerStats {
        node_key: *key,
        // The path the next packet takes: a validated direct
        // endpoint, else the relay once anything was relayed.
        path: match path {
            Path::Direct(_) => PathKind::Direct,
            Path::Relay if p.last_sent_via == PathKind::None => PathKind::None,
            Path::Relay => PathKind::Relay,
        },
        relay_region: p.relayed_to,
        direct_endpoint: match path {
            Path::Direct(addr) => Some(addr),
            Path::Relay => None,
        },
        last_handshake: p.tunn.as_ref().and_then(|t| t.time_since_last_handshake()),
        tx_bytes: p.tx_bytes,
        rx_bytes: p.rx_bytes,
    }
}
