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
use tracing::{debug_span, info, warn, Instrument};

use super::session_memory::{self, FilterBeforeNetmap};
use super::state::{RememberedSessions, SessionPeersFile, StateError};
use super::sync::PodRouting;
use super::tun::open_tun;
use crate::control::keys::NodePublic;
use crate::control::{EndpointReporter, IdentityKeys, NetMap};
use crate::wg::{Engine, EngineError, PodDataConfig, PodHandle, PodStats, Reused};

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

/// Why a pod's data plane is not serving it (what CHECK reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataPlaneDown {
    /// The supervisor ended: a re-attach with a rotated key failed, or the
    /// netmap sync stopped.
    #[error("the data plane's supervisor has stopped")]
    SupervisorStopped,
    /// The pod's task in the engine has ended.
    #[error("the pod's engine task has stopped")]
    EngineTaskStopped,
    /// The engine still serves the pod with a node key control replaced.
    #[error("the data plane is attached with a replaced node key")]
    StaleKey,
}

/// One engine attachment and the node key it was made with.
#[derive(Clone)]
struct Attached {
    handle: PodHandle,
    key: NodePublic,
}

/// The pod's current engine attachment; replaced when the key rotates.
#[derive(Clone)]
pub struct PodDataPlane {
    current: watch::Receiver<Attached>,
    /// The session's current keys, to tell a stale attachment.
    keys: watch::Receiver<IdentityKeys>,
    /// Whether a netmap has been handed to the data plane.
    netmap_applied: watch::Receiver<bool>,
}

impl PodDataPlane {
    /// The attachment in use right now.
    pub fn current(&self) -> PodHandle {
        self.current.borrow().handle.clone()
    }

    /// Whether the pod is served: its supervisor runs, its engine task runs
    /// and it is attached with the session's current node key.
    pub fn liveness(&self) -> Result<(), DataPlaneDown> {
        // The supervisor owns the sender; it is gone once the task ended.
        if self.current.has_changed().is_err() {
            return Err(DataPlaneDown::SupervisorStopped);
        }
        let attached = self.current.borrow();
        if !attached.handle.is_running() {
            return Err(DataPlaneDown::EngineTaskStopped);
        }
        if attached.key != self.keys.borrow().node_public() {
            return Err(DataPlaneDown::StaleKey);
        }
        Ok(())
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

    /// Waits (at most `timeout`) until the pod's task has taken its first
    /// netmap: until then it knows no peer, and drops what they send.
    /// Whether it has.
    pub async fn wait_netmap_applied(&self, timeout: Duration) -> bool {
        let mut applied = self.netmap_applied.clone();
        let taken = async {
            // The pod's task takes commands in order: its answer to this
            // one comes after it took the netmap's.
            applied.wait_for(|done| *done).await.is_ok() && self.stats().await.is_ok()
        };
        matches!(tokio::time::timeout(timeout, taken).await, Ok(true))
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
    /// The pod's route opt-ins and where its subnet routes go.
    pub routing: PodRouting,
}

impl AttachTarget {
    /// Opens the pod's TUN and attaches it to the engine with `keys`.
    pub fn attach(&self, keys: &IdentityKeys) -> Result<PodHandle, AttachError> {
        self.attach_reusing(keys, Reused::default())
    }

    /// [`Self::attach`], taking over what `reused` holds: the UDP port its
    /// sessions used before a restart, its identity's warm relay links.
    pub fn attach_reusing(
        &self,
        keys: &IdentityKeys,
        reused: Reused,
    ) -> Result<PodHandle, AttachError> {
        let tun_fd = open_tun(&self.tun_name).map_err(|source| AttachError::OpenTun {
            tun: self.tun_name.clone(),
            source,
        })?;
        let handle = self.engine.attach_pod_reusing(
            PodDataConfig {
                pod_id: self.pod_id.clone(),
                tun_fd,
                node_private: keys.node_private_bytes(),
                disco_private: keys.disco_private_bytes(),
                addresses: self.addresses.clone(),
            },
            reused,
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
    let (slot, current) = watch::channel(Attached {
        handle: first,
        key: attached_key,
    });
    let remembered = sessions.as_ref().map(session_memory::recall);
    let memory = sessions.zip(remembered.clone()).map(|(file, remembered)| {
        let current = current.clone();
        session_memory::carry_over(
            move || current.borrow().handle.clone(),
            file,
            remembered,
            netmap.clone(),
            target.routing.prefs.clone(),
        )
    });
    let (netmap_applied, netmap_applied_rx) = watch::channel(false);
    let data = PodDataPlane {
        current,
        keys: keys.clone(),
        netmap_applied: netmap_applied_rx,
    };
    let follow = follow(
        slot,
        target,
        keys,
        netmap,
        reporter,
        remembered,
        netmap_applied,
    );
    // Boxed: `select!` would otherwise hold a second copy of both futures
    // (7 KiB a pod) beside the ones the task captured.
    let follow = Box::pin(follow);
    let memory = memory.map(Box::pin);
    let task = async move {
        match memory {
            Some(memory) => tokio::select! {
                () = follow => {}
                () = memory => {}
            },
            None => follow.await,
        }
    };
    (data, task)
}

async fn follow(
    slot: watch::Sender<Attached>,
    target: AttachTarget,
    mut keys: watch::Receiver<IdentityKeys>,
    netmap: watch::Receiver<Option<Arc<NetMap>>>,
    reporter: EndpointReporter,
    mut remembered: Option<RememberedSessions>,
    netmap_applied: watch::Sender<bool>,
) {
    let mut attached_key = slot.borrow().key;
    loop {
        let wanted = keys.borrow_and_update().clone();
        if wanted.node_public() != attached_key {
            // The remembered sessions were made with the replaced key.
            remembered = None;
            let old = slot.borrow().handle.clone();
            if let Err(error) = old.detach().await {
                warn!(%error, "old data-plane attachment already gone");
            }
            match target.reattach(&wanted).await {
                Ok(handle) => {
                    attached_key = wanted.node_public();
                    slot.send_replace(Attached {
                        handle,
                        key: attached_key,
                    });
                    info!(node = ?attached_key, "data plane follows the rotated node key");
                }
                Err(error) => {
                    warn!(%error, "cannot attach the data plane with the rotated node key");
                    return;
                }
            }
        }
        let handle = slot.borrow().handle.clone();
        let mut filter = FilterBeforeNetmap::Closed;
        // Only the first attachment: a rotated key's peers have no session.
        if let Some(remembered) = remembered.take() {
            let span = debug_span!(target: session_memory::RECOVERY_TIMELINE, "resume", container_id = %target.pod_id);
            match session_memory::resume_before_netmap(&handle, &remembered)
                .instrument(span)
                .await
            {
                Ok(held) => filter = held,
                Err(error) => warn!(%error, "cannot resume sessions before the netmap"),
            }
        }
        let routing = target.routing.clone();
        let sync = super::sync::run_from(
            netmap.clone(),
            reporter.clone(),
            handle,
            routing,
            filter,
            &netmap_applied,
        );
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
