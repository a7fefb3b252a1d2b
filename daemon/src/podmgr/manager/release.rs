//! The one release behind a failed ADD, DEL, GC, reconcile and recovery:
//! undoes everything a pod's record says was done, keeps going after each
//! error, and returns every error it met, typed, for the caller to decide
//! on.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tailnet_cni_proto::budget;
use tokio::time::Instant;

use tailnet_auth::{AuthError, NodeRef};
use tracing::{debug, error, warn};

use super::seams::{Backends, ControlPlane, Plumbing, PodAttachment, PodSession, Records};
use super::{lock, PodManager};
use crate::podmgr::faults;
use crate::podmgr::plumbing::TeardownErrors;
use crate::podmgr::state::{PodRecord, StateError};

/// Who asked for a release: DEL has crash points of its own and must be
/// done by its deadline (the start of the call plus its budget, so that the
/// shim gets an answer); the daemon's own clean-ups (a failed ADD, GC,
/// reconcile, recovery) have neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReleaseBy {
    Del { deadline: Instant },
    Daemon,
}

/// One thing a release could not undo.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Some of the pod's devices, addresses, routes or rules are left; the
    /// record is kept so that a later DEL, GC or reconcile retries.
    #[error(transparent)]
    Teardown(#[from] TeardownErrors),
    /// The node's removal did not finish within the verb's budget; it is
    /// still in the tailnet unless the logout took it out.
    #[error("removing node {node_id}: no answer within {}s", after.as_secs_f32())]
    NodeRemovalTimedOut { node_id: i64, after: Duration },
    /// The node is still in the tailnet.
    #[error("removing node {node_id}: {source}")]
    NodeRemoval {
        node_id: i64,
        #[source]
        source: AuthError,
    },
    /// The pod's key file is left.
    #[error("removing {}: {source}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pod's record is left.
    #[error("removing pod state: {0}")]
    Record(#[source] StateError),
}

/// Every error one release met, in the order it met them.
#[derive(Debug, Default)]
pub struct ReleaseErrors(Vec<ReleaseError>);

impl ReleaseErrors {
    /// Notes one more error; the release goes on.
    pub fn push(&mut self, error: ReleaseError) {
        self.0.push(error);
    }

    /// Whether the release met no error.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether part of the pod's plumbing is left behind.
    pub fn left_plumbing(&self) -> bool {
        self.0
            .iter()
            .any(|e| matches!(e, ReleaseError::Teardown(_)))
    }

    /// `Ok` when no error was met.
    pub fn into_result(self) -> Result<(), Self> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ReleaseErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ReleaseErrors {}

impl ReleaseBy {
    fn deadline(self) -> Option<Instant> {
        match self {
            Self::Del { deadline } => Some(deadline),
            Self::Daemon => None,
        }
    }
}

impl<B: Backends> PodManager<B> {
    /// Undoes everything `record` says was done, best effort, logging every
    /// failure; removes the record last so nothing is forgotten on a crash.
    /// While plumbing is left over the record stays, for GC or the next
    /// DEL to retry from.
    pub(super) async fn release(
        &self,
        record: PodRecord,
        by: ReleaseBy,
    ) -> Result<(), ReleaseErrors> {
        let crash_point = |step| {
            if matches!(by, ReleaseBy::Del { .. }) {
                faults::point(step);
            }
        };
        let deadline = by.deadline();
        let mut errors = ReleaseErrors::default();
        let live = lock(&self.live).remove(&record.container_id);
        if let Some(pod) = live {
            if let Err(e) = pod.data.detach().await {
                debug!(error = %e, "data plane already gone");
            }
            // Best effort, and bounded: the teardown after it is what DEL
            // must finish.
            match tokio::time::timeout(budget::DEL_LOGOUT, pod.session.logout()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "logout failed; removing the node through the API")
                }
                Err(_) => warn!(
                    after_secs = budget::DEL_LOGOUT.as_secs_f32(),
                    "no logout answer; removing the node through the API"
                ),
            }
        }
        crash_point("del:detached");
        if let Some(pod_net) = &record.pod_net {
            let netns = (!record.netns.as_os_str().is_empty()).then_some(record.netns.as_path());
            match self.plumbing.teardown(pod_net, netns).await {
                Ok(()) => {
                    self.tables.release(pod_net.table);
                }
                Err(e) => {
                    error!(error = %e, "teardown incomplete");
                    errors.push(e.into());
                }
            }
        }
        crash_point("del:torn-down");
        if let Some(node_id) = record.node_id {
            let node = NodeRef {
                node_id,
                stable_id: record.stable_id.clone().unwrap_or_default(),
                node_key: String::new(),
            };
            let removal = self.control.remove_node(&node);
            let removed = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, removal)
                    .await
                    .map_err(|_| ReleaseError::NodeRemovalTimedOut {
                        node_id,
                        after: budget::DEL.daemon,
                    }),
                None => Ok(removal.await),
            };
            match removed {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    warn!(error = %source, node_id, "removing the node from the tailnet failed");
                    errors.push(ReleaseError::NodeRemoval { node_id, source });
                }
                Err(timed_out) => {
                    warn!(error = %timed_out, "removing the node from the tailnet");
                    errors.push(timed_out);
                }
            }
        }
        crash_point("del:node-removed");
        if let Some(path) = &record.identity_file {
            if let Err(source) = std::fs::remove_file(path) {
                if source.kind() != std::io::ErrorKind::NotFound {
                    errors.push(ReleaseError::KeyFile {
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        if errors.left_plumbing() {
            self.set_view(&record, Some(errors.to_string()));
        } else {
            if let Err(e) = self.records.remove(&record.container_id) {
                errors.push(ReleaseError::Record(e));
            }
            self.drop_view(&record.container_id);
        }
        errors.into_result()
    }
}
