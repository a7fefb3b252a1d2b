//! A pod's WireGuard sessions across daemon restarts.
//!
//! Sessions live only in the engine's memory, while the peers keep theirs:
//! after a restart a peer goes on encrypting to a session nobody holds and
//! only starts a new handshake at its rekey timeout (15 s without
//! answers). So while the pod runs, the peers it has live sessions with
//! are remembered on disk (only when that set changes), with their netmap
//! records and the DERP map, and when the pod is attached again it
//! handshakes with them at once, before its control session has answered:
//! a peer answering moves its traffic to the new session.
//!
//! Until the first netmap the remembered peers are all the pod has; the
//! netmap then replaces them, so a peer control has removed in the
//! meantime loses its session right there. The packet filter is not
//! remembered: the pod stays deny-all inbound until control's filter
//! arrives, because an ACL tightened while the daemon was down must not be
//! enforced late. Peers' traffic passes from the first netmap on.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, debug_span, info, warn, Instrument};

use super::filters::FilterCache;
use super::peer_routes::RoutePrefs;
use super::state::{RememberedSessions, SessionPeersFile};
use super::sync::SharedConversions;
use crate::control::NetMap;
use crate::wg::engine::ResumePeer;
use crate::wg::{EngineError, PeerConfig, PodHandle, PodStats};

/// Log target of each recovered pod's milestones (record loaded, plumbing
/// checked, control session started, engine attached, resume handshakes
/// sent, first netmap, sessions back), for finding where a restart's time
/// goes: `TAILNET_CNID_LOG=info,tailnet_cnid::recovery=debug`.
pub const RECOVERY_TIMELINE: &str = "tailnet_cnid::recovery";

/// How often the set of live sessions is compared with the one on disk.
const REMEMBER_EVERY: Duration = Duration::from_secs(5);
/// WireGuard rejects a session this long after its handshake: older ones
/// are not worth resuming.
const SESSION_LIFETIME: Duration = Duration::from_secs(180);
/// Peers remembered without their record (files of version 1) are only
/// reachable once the netmap names them; their answers come through the
/// pod's home relay, and one sent before the relay link is up is lost
/// (and only retried after 5 s).
const HOME_RELAY_WAIT: Duration = Duration::from_secs(5);
/// How long recovery watches for resumed sessions (for its log only).
const SESSIONS_BACK_WITHIN: Duration = Duration::from_secs(20);
const SESSIONS_BACK_POLL: Duration = Duration::from_millis(10);

/// What `file` remembers; nothing if it cannot be read (the pod then
/// waits for its peers' rekey, as without it).
pub fn recall(file: &SessionPeersFile) -> RememberedSessions {
    file.load().unwrap_or_else(|error| {
        warn!(%error, "remembered sessions unreadable; peers reconnect at their rekey");
        RememberedSessions::default()
    })
}

/// Brings back, on a freshly attached pod that has no netmap yet, what its
/// remembered sessions need (deny-all filter first, then the DERP map and
/// the remembered peers) and handshakes with those peers. Must run before
/// the netmap sync starts, which then replaces all of it.
pub async fn resume_before_netmap(
    handle: &PodHandle,
    remembered: &RememberedSessions,
) -> Result<(), EngineError> {
    if remembered.peer_configs.is_empty() {
        return Ok(());
    }
    // The engine filters nothing until told to: close it before any peer.
    handle
        .set_filter(FilterCache::global().compile(&[]))
        .await?;
    if !remembered.derp_map.is_empty() {
        handle
            .set_derp_map(Arc::new(remembered.derp_map.clone()))
            .await?;
    }
    handle.set_peers(remembered.peer_configs.clone()).await?;
    let peers: Vec<ResumePeer> = remembered
        .peers
        .iter()
        .filter(|peer| has_record(remembered, peer))
        .cloned()
        .collect();
    handle.initiate_handshakes(peers.clone()).await?;
    info!(
        target: RECOVERY_TIMELINE,
        peers = peers.len(),
        "resume handshakes sent before the netmap"
    );
    Ok(())
}

/// Handshakes with the remembered peers [`resume_before_netmap`] could not
/// reach (no record), then keeps `file` in step with the pod's live
/// sessions; `current` gives the attachment in use (it changes when the
/// node key rotates), `prefs` the routes the pod installs. Runs until
/// dropped.
pub async fn carry_over(
    current: impl Fn() -> PodHandle,
    file: SessionPeersFile,
    remembered: RememberedSessions,
    mut netmap: watch::Receiver<Option<Arc<NetMap>>>,
    prefs: RoutePrefs,
) {
    if !remembered.peers.is_empty() {
        let span =
            debug_span!(target: RECOVERY_TIMELINE, "resume", container_id = %file.container_id());
        let started = Instant::now();
        let first_netmap = first_netmap(netmap.clone());
        let late = resume_without_records(current(), &remembered);
        let back = log_sessions_back(current(), &remembered.peers, started);
        async { tokio::join!(first_netmap, late, back) }
            .instrument(span)
            .await;
    }
    let mut saved = remembered;
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + REMEMBER_EVERY, REMEMBER_EVERY);
    loop {
        tick.tick().await;
        let handle = current();
        let map = netmap.borrow_and_update().clone();
        let live = remember(&handle, map.as_deref(), &prefs, &saved);
        if live == saved {
            continue;
        }
        match file.save(&live) {
            Ok(()) => saved = live,
            Err(error) => warn!(%error, "cannot remember the pod's sessions"),
        }
    }
}

/// Whether the file kept `peer`'s netmap record.
fn has_record(remembered: &RememberedSessions, peer: &ResumePeer) -> bool {
    remembered
        .peer_configs
        .iter()
        .any(|config| config.node_key == peer.node_key)
}

/// The remembered peers without a record get their handshake once the
/// netmap names them and the home relay is up.
async fn resume_without_records(handle: PodHandle, remembered: &RememberedSessions) {
    let peers: Vec<ResumePeer> = remembered
        .peers
        .iter()
        .filter(|peer| !has_record(remembered, peer))
        .cloned()
        .collect();
    if peers.is_empty() {
        return;
    }
    let relay = handle.wait_home_relay(HOME_RELAY_WAIT).await;
    debug!(?relay, "home relay before resuming sessions");
    match handle.initiate_handshakes(peers.clone()).await {
        Ok(()) => info!(
            target: RECOVERY_TIMELINE,
            peers = peers.len(),
            "resume handshakes sent to peers without a record"
        ),
        Err(error) => debug!(%error, "data plane gone before resuming sessions"),
    }
}

/// Logs when every peer of `peers` has completed a handshake since
/// `started` (a recovery milestone), if that happens soon.
async fn log_sessions_back(handle: PodHandle, peers: &[ResumePeer], started: Instant) {
    let back = tokio::time::timeout(SESSIONS_BACK_WITHIN, sessions_back(&handle, peers, started));
    if matches!(back.await, Ok(true)) {
        debug!(target: RECOVERY_TIMELINE, "sessions back");
    }
}

/// Whether every peer of `peers` completed a handshake since `since`
/// (false: the pod was detached first).
async fn sessions_back(handle: &PodHandle, peers: &[ResumePeer], since: Instant) -> bool {
    loop {
        let Ok(stats) = handle.stats().await else {
            return false;
        };
        let elapsed = since.elapsed();
        let back = peers.iter().all(|peer| {
            stats.peers.iter().any(|live| {
                live.node_key == peer.node_key
                    && live.last_handshake.is_some_and(|age| age <= elapsed)
            })
        });
        if back {
            return true;
        }
        tokio::time::sleep(SESSIONS_BACK_POLL).await;
    }
}

/// Logs the pod's first netmap, a recovery milestone.
async fn first_netmap(mut netmap: watch::Receiver<Option<Arc<NetMap>>>) {
    if netmap.wait_for(Option::is_some).await.is_ok() {
        debug!(target: RECOVERY_TIMELINE, "first netmap");
    }
}

/// What to remember now: the live sessions with their peers' records and
/// the DERP map from `map`, or as `saved` has them while there is no
/// netmap (just after a restart).
fn remember(
    handle: &PodHandle,
    map: Option<&NetMap>,
    prefs: &RoutePrefs,
    saved: &RememberedSessions,
) -> RememberedSessions {
    let peers = live_sessions(&handle.stats_now(), &saved.peers);
    let (known, derp_map) = match map {
        Some(map) => {
            let shared = SharedConversions::global();
            let known = shared.peers_of(map, prefs);
            let derp_map = map
                .derp_map
                .as_ref()
                .map(|derp| shared.derp_map(derp).to_vec())
                .unwrap_or_default();
            (known, derp_map)
        }
        None => (
            saved.peer_configs.iter().cloned().map(Arc::new).collect(),
            saved.derp_map.clone(),
        ),
    };
    RememberedSessions {
        udp_port: handle.endpoints().borrow().udp_port,
        peer_configs: records_of(&peers, &known),
        peers,
        derp_map,
    }
}

/// The records of `peers` among `known`, in the order of `peers`.
fn records_of(peers: &[ResumePeer], known: &[Arc<PeerConfig>]) -> Vec<PeerConfig> {
    peers
        .iter()
        .filter_map(|peer| known.iter().find(|config| config.node_key == peer.node_key))
        .map(|config| PeerConfig::clone(config))
        .collect()
}

/// The peers with a session young enough to resume, in key order, each with
/// its direct endpoint: the current one, else the one `saved` holds (an
/// idle path falls back to the relay between heartbeats; that alone is no
/// reason to write).
fn live_sessions(stats: &PodStats, saved: &[ResumePeer]) -> Vec<ResumePeer> {
    let mut live: Vec<ResumePeer> = stats
        .peers
        .iter()
        .filter(|peer| {
            peer.last_handshake
                .is_some_and(|age| age < SESSION_LIFETIME)
        })
        .map(|peer| ResumePeer {
            node_key: peer.node_key,
            direct: peer.direct_endpoint.or_else(|| {
                saved
                    .iter()
                    .find(|known| known.node_key == peer.node_key)
                    .and_then(|known| known.direct)
            }),
        })
        .collect();
    live.sort_by_key(|peer| peer.node_key);
    live
}

#[cfg(test)]
mod tests;
