//! Follows a pod identity's node key when the control session rotates it:
//! on disk (the identity file, written before the server sees the key) and
//! in the data plane.
//!
//! WireGuard sessions and DERP connections are bound to the node key, so a
//! new key means a new engine attachment: the pod is detached and attached
//! again on the same persistent TUN with the new key, and its netmap sync
//! starts over (it sends peers, DERP map and filter afresh). Packets the
//! pod sends in that instant are dropped, as on any re-handshake.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::state::write_private_atomic;
use super::tun::open_tun;
use crate::control::keys::NodePublic;
use crate::control::{EndpointReporter, IdentityKeys, KeyStore, KeyStoreError, NetMap};
use crate::wg::{Engine, EngineError, PodDataConfig, PodHandle, PodStats};

/// How long a re-attach waits for the engine to release the old one.
const REATTACH_PATIENCE: Duration = Duration::from_secs(5);
const REATTACH_STEP: Duration = Duration::from_millis(20);

/// The pod's identity file as the session's key store.
pub struct IdentityFile(pub PathBuf);

impl KeyStore for IdentityFile {
    fn save(&self, keys: &IdentityKeys) -> Result<(), KeyStoreError> {
        let bytes = serde_json::to_vec(keys).map_err(KeyStoreError::new)?;
        write_private_atomic(&self.0, &bytes).map_err(KeyStoreError::new)
    }
}

/// The pod's current engine attachment; replaced when the key rotates.
#[derive(Clone)]
pub struct PodData {
    current: watch::Receiver<PodHandle>,
}

impl PodData {
    pub fn current(&self) -> PodHandle {
        self.current.borrow().clone()
    }

    pub async fn detach(self) -> Result<(), EngineError> {
        self.current().detach().await
    }

    pub async fn stats(&self) -> Result<PodStats, EngineError> {
        self.current().stats().await
    }

    pub fn stats_now(&self) -> PodStats {
        self.current().stats_now()
    }
}

/// What it takes to attach the pod again with another key.
pub struct Reattach {
    pub engine: Engine,
    pub pod_id: String,
    pub tun_name: String,
    pub addresses: Vec<IpAddr>,
}

impl Reattach {
    /// Attaches with `keys`, waiting for the engine to let go of the
    /// previous attachment (its task releases the id and the TUN just after
    /// acknowledging the detach).
    async fn attach(&self, keys: &IdentityKeys) -> Result<PodHandle, String> {
        let deadline = tokio::time::Instant::now() + REATTACH_PATIENCE;
        loop {
            let attempt = open_tun(&self.tun_name)
                .map_err(|e| format!("opening TUN {}: {e}", self.tun_name))
                .and_then(|tun_fd| {
                    self.engine
                        .attach_pod(PodDataConfig {
                            pod_id: self.pod_id.clone(),
                            tun_fd,
                            node_private: keys.node_private_bytes(),
                            disco_private: keys.disco_private_bytes(),
                            addresses: self.addresses.clone(),
                        })
                        .map_err(|e| e.to_string())
                });
            match attempt {
                Ok(handle) => return Ok(handle),
                Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
                Err(_) => tokio::time::sleep(REATTACH_STEP).await,
            }
        }
    }
}

/// Wraps the first attachment; the returned future keeps the data plane on
/// the session's current key and its netmap in sync, until the session or
/// the data plane ends.
pub fn start(
    first: PodHandle,
    attached_key: NodePublic,
    reattach: Reattach,
    keys: watch::Receiver<IdentityKeys>,
    netmap: watch::Receiver<Option<std::sync::Arc<NetMap>>>,
    reporter: EndpointReporter,
) -> (
    PodData,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (slot, current) = watch::channel(first);
    let task = follow(slot, attached_key, reattach, keys, netmap, reporter);
    (PodData { current }, task)
}

async fn follow(
    slot: watch::Sender<PodHandle>,
    mut attached_key: NodePublic,
    reattach: Reattach,
    mut keys: watch::Receiver<IdentityKeys>,
    netmap: watch::Receiver<Option<std::sync::Arc<NetMap>>>,
    reporter: EndpointReporter,
) {
    loop {
        let wanted = keys.borrow_and_update().clone();
        if wanted.node_public() != attached_key {
            let old = slot.borrow().clone();
            if let Err(error) = old.detach().await {
                warn!(%error, "old data-plane attachment already gone");
            }
            match reattach.attach(&wanted).await {
                Ok(handle) => {
                    slot.send_replace(handle);
                    attached_key = wanted.node_public();
                    info!(node = ?attached_key, "data plane follows the rotated node key");
                }
                Err(error) => {
                    warn!(%error, "cannot attach the data plane with the rotated node key");
                    return;
                }
            }
        }
        let handle = slot.borrow().clone();
        let sync = super::sync::run(netmap.clone(), reporter.clone(), handle);
        tokio::pin!(sync);
        loop {
            tokio::select! {
                () = &mut sync => return,
                changed = keys.changed() => {
                    if changed.is_err() {
                        // The session is gone; the key can no longer change.
                        sync.await;
                        return;
                    }
                    if keys.borrow().node_public() != attached_key {
                        break;
                    }
                }
            }
        }
    }
}
