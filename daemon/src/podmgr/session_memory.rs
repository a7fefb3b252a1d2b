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
//! meantime loses its session right there.
//!
//! The packet filter is remembered too, with the time control last sent
//! it, and enforced until the first netmap replaces it, as a client with a
//! netmap cache does: peers' traffic passes again as soon as the sessions
//! are back, without waiting for control's register and first map. A rule
//! control removed while the daemon was down is thus enforced late, which
//! is bounded twice: a filter older than [`REMEMBERED_FILTER_MAX_AGE`] is
//! not used (the pod stays deny-all inbound until control's filter), and
//! the remembered one closes by itself [`REMEMBERED_FILTER_WINDOW`] after
//! the restart if control has not answered by then.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, debug_span, info, warn, Instrument};

use super::filters::FilterCache;
use super::peer_routes::RoutePrefs;
use super::state::{RememberedFilter, RememberedSessions, SessionPeersFile};
use super::sync::SharedConversions;
use crate::control::keys::NodePublic;
use crate::control::tailcfg::FilterRule;
use crate::control::NetMap;
use crate::wg::engine::ResumePeer;
use crate::wg::{EngineError, PeerConfig, PodHandle, PodStats};

/// How long a resumed pod waits for its home relay before it sends its
/// resume handshakes anyway (they also go straight to the peer's last
/// direct address).
const RESUME_RELAY_WAIT: Duration = Duration::from_secs(1);

/// Log target of each recovered pod's milestones (record loaded, plumbing
/// checked, control session started, engine attached, resume handshakes
/// sent, first netmap, sessions back), for finding where a restart's time
/// goes: `TAILNET_CNID_LOG=info,tailnet_cnid::recovery=debug`.
pub const RECOVERY_TIMELINE: &str = "tailnet_cnid::recovery";

/// How long after a restart a pod enforces its remembered packet filter at
/// most while it waits for control's; past it the pod is closed inbound
/// until control answers.
pub const REMEMBERED_FILTER_WINDOW: Duration = Duration::from_secs(10);
/// A remembered filter control last sent longer ago than this is not
/// enforced at all: the pod stays closed inbound until control's filter.
pub const REMEMBERED_FILTER_MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// How often an unchanged filter's time is written again while the pod
/// keeps getting it from control.
const FILTER_REFRESH: Duration = Duration::from_secs(60);
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

/// What a resumed pod's inbound filter is until its first netmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterBeforeNetmap {
    /// Deny-all; replies to the pod's own flows pass.
    Closed,
    /// The remembered filter, for [`REMEMBERED_FILTER_WINDOW`] at most.
    Remembered,
}

/// Brings back, on a freshly attached pod that has no netmap yet, what its
/// remembered sessions need (the filter first, then the DERP map and the
/// remembered peers) and handshakes with those peers. Must run before the
/// netmap sync starts, which then replaces all of it.
pub async fn resume_before_netmap(
    handle: &PodHandle,
    remembered: &RememberedSessions,
) -> Result<FilterBeforeNetmap, EngineError> {
    if remembered.peer_configs.is_empty() {
        return Ok(FilterBeforeNetmap::Closed);
    }
    // The engine filters nothing until told to: set a filter before any peer.
    let filter = match enforceable(remembered.filter.as_ref(), SystemTime::now()) {
        Some(filter) => {
            let rules: Vec<&FilterRule> = filter.rules.iter().collect();
            let until = Instant::now() + REMEMBERED_FILTER_WINDOW;
            handle
                .set_remembered_filter(FilterCache::global().compile(&rules), until)
                .await?;
            FilterBeforeNetmap::Remembered
        }
        None => {
            handle
                .set_filter(FilterCache::global().compile(&[]))
                .await?;
            FilterBeforeNetmap::Closed
        }
    };
    if !remembered.derp_map.is_empty() {
        handle
            .set_derp_map(Arc::new(remembered.derp_map.clone()))
            .await?;
    }
    handle.set_peers(remembered.peer_configs.clone()).await?;
    if !remembered.derp_map.is_empty() {
        // A peer answers over the path it last used, often the pod's home
        // relay, which drops what arrives before the pod is connected:
        // the handshake would then only come back at WireGuard's 5 s retry.
        handle.wait_home_relay(RESUME_RELAY_WAIT).await;
    }
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
        ?filter,
        "resume handshakes sent before the netmap"
    );
    Ok(filter)
}

/// `filter` if control sent it recently enough, as of `now`, to be enforced
/// before control confirms it. A time ahead of `now` (the clock went back)
/// proves nothing: not enforced.
fn enforceable(filter: Option<&RememberedFilter>, now: SystemTime) -> Option<&RememberedFilter> {
    filter.filter(|filter| {
        now.duration_since(filter.received)
            .is_ok_and(|age| age <= REMEMBERED_FILTER_MAX_AGE)
    })
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
    let (peer_configs, derp_map) = match map {
        Some(map) => {
            let derp_map = map
                .derp_map
                .as_ref()
                .map(|derp| SharedConversions::global().derp_map(derp).to_vec())
                .unwrap_or_default();
            (records_in(map, prefs, &peers), derp_map)
        }
        None => {
            let known: Vec<Arc<PeerConfig>> =
                saved.peer_configs.iter().cloned().map(Arc::new).collect();
            (records_of(&peers, &known), saved.derp_map.clone())
        }
    };
    // Only worth keeping with sessions to resume.
    let filter = if peers.is_empty() {
        None
    } else {
        match map {
            Some(map) => Some(filter_of(map, saved.filter.as_ref(), SystemTime::now())),
            None => saved.filter.clone(),
        }
    };
    RememberedSessions {
        udp_port: handle.endpoints().borrow().udp_port,
        peer_configs,
        peers,
        derp_map,
        filter,
    }
}

/// `map`'s filter, received `now`; `saved` as it is while it holds the same
/// rules and is younger than [`FILTER_REFRESH`], so that an unchanged
/// filter costs one write per refresh.
fn filter_of(map: &NetMap, saved: Option<&RememberedFilter>, now: SystemTime) -> RememberedFilter {
    let rules: Vec<FilterRule> = map.filter_rules().cloned().collect();
    match saved {
        Some(saved)
            if saved.rules == rules
                && now
                    .duration_since(saved.received)
                    .is_ok_and(|age| age < FILTER_REFRESH) =>
        {
            saved.clone()
        }
        _ => RememberedFilter {
            rules,
            received: whole_seconds(now),
        },
    }
}

/// `time` to the second, as the file keeps it.
fn whole_seconds(time: SystemTime) -> SystemTime {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// `map`'s records of `peers`, as the pod installs them. Only those
/// peers' records are looked at: every pod runs this every
/// [`REMEMBER_EVERY`], and most pods talk to few of their peers.
fn records_in(map: &NetMap, prefs: &RoutePrefs, peers: &[ResumePeer]) -> Vec<PeerConfig> {
    if peers.is_empty() {
        return Vec::new();
    }
    let wanted: HashSet<[u8; 32]> = peers.iter().map(|peer| peer.node_key).collect();
    let shared = SharedConversions::global();
    let known: Vec<Arc<PeerConfig>> = map
        .peers
        .values()
        .filter(|node| NodePublic::parse(&node.key).is_ok_and(|key| wanted.contains(&key.0)))
        .filter_map(|node| shared.peer(node, prefs.grant_for(node)))
        .collect();
    records_of(peers, &known)
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
