//! A pod's data plane for as long as it is served: its engine attachment,
//! made again when the control session rotates the node key, and the netmap
//! sync that feeds it.
//!
//! WireGuard sessions and DERP connections are bound to the node key, so a
//! new key means a new engine attachment: the pod is detached and attached
//! again on the same persistent TUN with the new key, and its netmap sync
//! starts over (it sends peers, DERP map and filter afresh). Packets the
//! pod sends in that instant are dropped, as on any re-handshake.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::session_memory;
use super::state::{SessionPeersFile, StateError};
use super::tun::open_tun;
use crate::control::keys::NodePublic;
use crate::control::{EndpointReporter, IdentityKeys, NetMap};
use crate::wg::{Engine, EngineError, PodDataConfig, PodHandle, PodStats};

/// How long a re-attach waits for the engine to release the old one.
const REATTACH_PATIENCE: Duration = Duration::from_secs(5);
const REATTACH_STEP: Duration = Duration::from_millis(20);

/// Why a pod could not be attached to the engine.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("opening TUN {tun}: {source}")]
    OpenTun {
        tun: String,
        #[source]
        source: io::Error,
    },
    #[error("starting data plane: {0}")]
    Engine(#[from] EngineError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// The pod's current engine attachment; replaced when the key rotates.
#[derive(Clone)]
pub struct PodDataPlane {
    current: watch::Receiver<PodHandle>,
}

impl PodDataPlane {
    /// The attachment in use right now.
    pub fn current(&self) -> PodHandle {
        self.current.borrow().clone()
    }

    /// Detaches the current attachment from the engine.
    pub async fn detach(self) -> Result<(), EngineError> {
        self.current().detach().await
    }

    /// The current attachment's counters and peers.
    pub async fn stats(&self) -> Result<PodStats, EngineError> {
        self.current().stats().await
    }

    /// The counters without waiting for the pod's task.
    pub fn stats_now(&self) -> PodStats {
        self.current().stats_now()
    }
}

/// Where and how a pod is attached: enough to attach it again with
/// another key.
#[derive(Clone)]
pub struct AttachTarget {
    pub engine: Engine,
    pub pod_id: String,
    pub tun_name: String,
    pub addresses: Vec<IpAddr>,
}

impl AttachTarget {
    /// Opens the pod's TUN and attaches it to the engine with `keys`.
    pub fn attach(&self, keys: &IdentityKeys) -> Result<PodHandle, AttachError> {
        self.attach_on(keys, None)
    }

    /// [`Self::attach`] with the pod's UDP socket on `udp_port` if it is
    /// free (the port its sessions used before a restart).
    pub fn attach_on(
        &self,
        keys: &IdentityKeys,
        udp_port: Option<u16>,
    ) -> Result<PodHandle, AttachError> {
        let tun_fd = open_tun(&self.tun_name).map_err(|source| AttachError::OpenTun {
            tun: self.tun_name.clone(),
            source,
        })?;
        let handle = self.engine.attach_pod_on(
            PodDataConfig {
                pod_id: self.pod_id.clone(),
                tun_fd,
                node_private: keys.node_private_bytes(),
                disco_private: keys.disco_private_bytes(),
                addresses: self.addresses.clone(),
            },
            udp_port,
        )?;
        Ok(handle)
    }

    /// Attaches with `keys`, waiting for the engine to let go of the
    /// previous attachment (its task releases the id and the TUN just after
    /// acknowledging the detach).
    async fn reattach(&self, keys: &IdentityKeys) -> Result<PodHandle, AttachError> {
        let deadline = tokio::time::Instant::now() + REATTACH_PATIENCE;
        loop {
            match self.attach(keys) {
                Ok(handle) => return Ok(handle),
                Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
                Err(_) => tokio::time::sleep(REATTACH_STEP).await,
            }
        }
    }
}

/// Wraps the first attachment; the returned future keeps the data plane on
/// the session's current key and its netmap in sync, and resumes and
/// remembers its WireGuard sessions through `sessions` (if given: without
/// it sessions end with the process), until the session or the data plane
/// ends.
pub fn supervise(
    first: PodHandle,
    attached_key: NodePublic,
    target: AttachTarget,
    keys: watch::Receiver<IdentityKeys>,
    netmap: watch::Receiver<Option<Arc<NetMap>>>,
    reporter: EndpointReporter,
    sessions: Option<SessionPeersFile>,
) -> (
    PodDataPlane,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (slot, current) = watch::channel(first);
    let memory = sessions.map(|file| session_memory::carry_over(current.clone(), file));
    let follow = follow(slot, attached_key, target, keys, netmap, reporter);
    let task = async move {
        match memory {
            Some(memory) => tokio::select! {
                () = follow => {}
                () = memory => {}
            },
            None => follow.await,
        }
    };
    (PodDataPlane { current }, task)
}

async fn follow(
    slot: watch::Sender<PodHandle>,
    mut attached_key: NodePublic,
    target: AttachTarget,
    mut keys: watch::Receiver<IdentityKeys>,
    netmap: watch::Receiver<Option<Arc<NetMap>>>,
    reporter: EndpointReporter,
) {
    loop {
        let wanted = keys.borrow_and_update().clone();
        if wanted.node_public() != attached_key {
            let old = slot.borrow().clone();
            if let Err(error) = old.detach().await {
                warn!(%error, "old data-plane attachment already gone");
            }
            match target.reattach(&wanted).await {
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
