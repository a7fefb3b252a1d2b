//! CNI DEL: releases a pod; idempotent (an unknown container is already
//! deleted) and a failure only while plumbing is left behind.

use tailnet_cni_proto::v1::DelRequest;
use tailnet_cni_proto::{budget, cni_code};
use tokio::time::Instant;
use tracing::warn;

use super::release::ReleaseBy;
use super::seams::{Backends, Records};
use super::PodManager;
use crate::podmgr::faults;
use crate::podmgr::naming::validate_container_id;
use crate::podmgr::state::PodPhase;
use crate::rpc::CniError;

impl<B: Backends> PodManager<B> {
    pub(super) async fn do_del(&self, req: DelRequest) -> Result<(), CniError> {
        let deadline = Instant::now() + budget::DEL.daemon;
        let pod = req
            .pod
            .ok_or_else(|| CniError::new(cni_code::INVALID_CONFIG, "request names no pod"))?;
        if validate_container_id(&pod.container_id).is_err() {
            // Nothing of ours can exist under an invalid id.
            return Ok(());
        }
        let _guard = self.locks.lock(&pod.container_id).await;
        let mut record = match self.records.load(&pod.container_id) {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(CniError::new(
                    cni_code::IO_FAILURE,
                    format!("reading pod state: {e}"),
                ))
            }
        };
        record.state = PodPhase::Deleting;
        if let Err(error) = self.records.save(&record) {
            warn!(%error, "could not record that DEL began; releasing anyway");
        }
        faults::point("del:deleting-saved");
        match self.release(record, ReleaseBy::Del { deadline }).await {
            // A node or file left behind is reported in the logs and the
            // status view; only leftover plumbing keeps the runtime retrying.
            Err(errors) if errors.left_plumbing() => Err(CniError::new(
                cni_code::PLUMBING_FAILURE,
                format!("DEL could not remove everything: {errors}"),
            )),
            Ok(()) | Err(_) => Ok(()),
        }
    }
}
