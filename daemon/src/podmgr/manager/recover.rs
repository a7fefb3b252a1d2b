//! Restart recovery: every pod recorded as running whose network namespace
//! still exists is resumed with the same keys; every other record is
//! released.

use std::sync::Arc;

use tracing::{debug, info, info_span, warn, Instrument};

use super::add::spec_of;
use super::release::ReleaseBy;
use super::seams::{Backends, ControlPlane, Plumbing, PodAttachment, PodSession, SessionSpec};
use super::{lock, LivePod, PodManager};
use crate::podmgr::dataplane::AttachError;
use crate::podmgr::keyfile::{read_keys, KeyFileError};
use crate::podmgr::plumbing::PlumbError;
use crate::podmgr::session_memory::RECOVERY_TIMELINE;
use crate::podmgr::state::{PodPhase, PodRecord};

/// Why a recorded pod could not be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("no identity file recorded")]
    NoKeyFile,
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error("no interfaces recorded")]
    NoInterfaces,
    #[error("interfaces drifted while the daemon was down: {0}")]
    Drift(#[source] PlumbError),
    #[error(transparent)]
    Attach(#[from] AttachError),
}

impl<B: Backends> PodManager<B> {
    /// Resumes or releases every recorded pod, each under its lock, then
    /// sweeps what no record owns.
    pub(super) async fn recover(&self, records: Vec<PodRecord>) {
        let mut tasks = Vec::new();
        for record in records {
            tasks.push(async move {
                let id = record.container_id.clone();
                let _guard = self.locks.lock(&id).await;
                self.recover_one(record)
                    .instrument(info_span!("recover", container_id = %id))
                    .await;
            });
        }
        futures::future::join_all(tasks).await;
        for link in self.sweep_unowned().await {
            info!(link, "removed a link no pod owns");
        }
    }

    async fn recover_one(&self, record: PodRecord) {
        let resumable =
            record.state == PodPhase::Running && record.pod_net.is_some() && record.netns.exists();
        if !resumable {
            info!(state = ?record.state, "pod did not survive the restart; cleaning up");
            if let Err(errors) = self.release(record, ReleaseBy::Daemon).await {
                warn!(%errors, "cleanup incomplete; reconcile retries");
            }
            return;
        }
        debug!(target: RECOVERY_TIMELINE, "record loaded");
        if let Err(reason) = self.resume(&record).await {
            warn!(%reason, "cannot resume pod; it stays recorded for DEL or GC");
            self.set_view(&record, Some(reason.to_string()));
        }
    }

    /// Brings a running pod back with the same keys: the control server
    /// recognises the node key, so no new node appears and the addresses stay.
    ///
    /// The control session and the engine attachment start at once and the
    /// plumbing is checked meanwhile, so the pod's sessions and control's
    /// answer do not wait for it; if the plumbing drifted, both are undone.
    async fn resume(&self, record: &PodRecord) -> Result<(), ResumeError> {
        let key_file = record
            .identity_file
            .as_ref()
            .ok_or(ResumeError::NoKeyFile)?;
        let keys = read_keys(key_file)?;
        let pod_net = record.pod_net.as_ref().ok_or(ResumeError::NoInterfaces)?;
        let spec = spec_of(record, pod_net.mtu);
        let session = self.control.start_session(
            keys.clone(),
            SessionSpec {
                hostname: record.hostname.clone(),
                tags: record.tags.clone(),
                key_file: key_file.clone(),
                resumed: true,
            },
        );
        debug!(target: RECOVERY_TIMELINE, "control session started");
        let attached = self.attach(record, pod_net, &keys, &session, None);
        if attached.is_ok() {
            debug!(target: RECOVERY_TIMELINE, "engine attached");
        }
        let checked = self.plumbing.check(pod_net, &spec).await;
        debug!(target: RECOVERY_TIMELINE, "plumbing checked");
        // A drift explains a failed attach too (a missing TUN, say).
        if let Err(drift) = checked {
            if let Ok(data) = attached {
                if let Err(error) = data.detach().await {
                    debug!(%error, "detaching a pod whose plumbing drifted");
                }
            }
            session.shutdown();
            return Err(ResumeError::Drift(drift));
        }
        let data = match attached {
            Ok(data) => data,
            Err(e) => {
                session.shutdown();
                return Err(e.into());
            }
        };
        lock(&self.live).insert(
            record.container_id.clone(),
            LivePod {
                session,
                data: Arc::new(data),
            },
        );
        self.set_view(record, None);
        info!(hostname = %record.hostname, "pod resumed");
        Ok(())
    }
}
