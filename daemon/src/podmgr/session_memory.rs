//! A pod's WireGuard sessions across daemon restarts.
//!
//! Sessions live only in the engine's memory, while the peers keep theirs:
//! after a restart a peer goes on encrypting to a session nobody holds and
//! only starts a new handshake at its rekey timeout (15 s without
//! answers). So while the pod runs, the peers it has live sessions with
//! are remembered on disk (only when that set changes), and when the pod
//! is attached again the remembered peers get a handshake at once; a peer
//! answering one moves its traffic to the new session.

use std::time::Duration;

use tracing::{debug, info, warn};

use super::state::{RememberedSessions, SessionPeersFile};
use crate::wg::engine::ResumePeer;
use crate::wg::{PodHandle, PodStats};

/// How often the set of live sessions is compared with the one on disk.
const REMEMBER_EVERY: Duration = Duration::from_secs(5);
/// WireGuard rejects a session this long after its handshake: older ones
/// are not worth resuming.
const SESSION_LIFETIME: Duration = Duration::from_secs(180);
/// Peers answer a handshake through the pod's home relay; a response sent
/// before the relay link is up is lost, and is only retried after 5 s.
const HOME_RELAY_WAIT: Duration = Duration::from_secs(5);

/// What `file` remembers; nothing if it cannot be read (the pod then
/// waits for its peers' rekey, as without it).
pub fn recall(file: &SessionPeersFile) -> RememberedSessions {
    file.load().unwrap_or_else(|error| {
        warn!(%error, "remembered sessions unreadable; peers reconnect at their rekey");
        RememberedSessions::default()
    })
}

/// Re-handshakes with the peers `file` remembers, then keeps `file` in step
/// with the pod's live sessions and UDP port; `current` gives the attachment
/// in use (it changes when the node key rotates). Runs until dropped.
pub async fn carry_over(current: impl Fn() -> PodHandle, file: SessionPeersFile) {
    let remembered = recall(&file);
    if !remembered.peers.is_empty() {
        let handle = current();
        let relay = handle.wait_home_relay(HOME_RELAY_WAIT).await;
        debug!(?relay, "home relay before resuming sessions");
        match handle.initiate_handshakes(remembered.peers.clone()).await {
            Ok(()) => info!(
                peers = remembered.peers.len(),
                "re-handshaking with the peers the pod had sessions with"
            ),
            Err(error) => debug!(%error, "data plane gone before resuming sessions"),
        }
    }
    let mut saved = remembered;
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + REMEMBER_EVERY, REMEMBER_EVERY);
    loop {
        tick.tick().await;
        let handle = current();
        let live = RememberedSessions {
            udp_port: handle.endpoints().borrow().udp_port,
            peers: live_sessions(&handle.stats_now(), &saved.peers),
        };
        if live == saved {
            continue;
        }
        match file.save(&live) {
            Ok(()) => saved = live,
            Err(error) => warn!(%error, "cannot remember the pod's sessions"),
        }
    }
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
