//! CNI GC: releases every pod the runtime no longer lists, then sweeps what
//! no record owns.

use std::collections::HashSet;

use tailnet_cni_proto::cni_code;
use tailnet_cni_proto::v1::GcRequest;
use tracing::info;

use super::release::ReleaseBy;
use super::seams::{Backends, Records};
use super::PodManager;
use crate::rpc::CniError;

impl<B: Backends> PodManager<B> {
    /// Returns the container ids whose pods were released completely.
    pub(super) async fn do_gc(&self, req: GcRequest) -> Result<Vec<String>, CniError> {
        let valid: HashSet<String> = req
            .valid_attachments
            .iter()
            .map(|a| a.container_id.clone())
            .collect();
        let loaded = self
            .records
            .load_all()
            .map_err(|e| CniError::new(cni_code::IO_FAILURE, e.to_string()))?;
        let mut released = Vec::new();
        for record in loaded.records {
            if valid.contains(&record.container_id) {
                continue;
            }
            let _guard = self.locks.lock(&record.container_id).await;
            // Re-read under the lock: an ADD may have just replaced it.
            let Ok(Some(current)) = self.records.load(&record.container_id) else {
                continue;
            };
            info!(container_id = %current.container_id, "GC releases a pod the runtime no longer has");
            let id = current.container_id.clone();
            if self.release(current, ReleaseBy::Daemon).await.is_ok() {
                released.push(id);
            }
        }
        // Devices, rules and files with no record at all (a crash between
        // creating and recording them) go too.
        self.sweep_unowned().await;
        self.locks.prune();
        Ok(released)
    }
}
