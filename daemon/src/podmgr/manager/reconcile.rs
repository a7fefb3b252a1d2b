//! The periodic cleanup: pods whose network namespace is gone, releases
//! that failed half-way, and the sweep of links, rules and files no record
//! owns (also run by GC and after recovery).

use std::collections::HashSet;
use std::time::Duration;

use tracing::{info, info_span, warn, Instrument};

use super::release::ReleaseBy;
use super::seams::{Backends, Plumbing, Records};
use super::{lock, PodManager};
use crate::podmgr::naming::{host_veth_name, tun_name};
use crate::podmgr::netns;
use crate::podmgr::state::PodPhase;

/// What one reconcile pass released.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    /// Pods whose records were released.
    pub released: Vec<String>,
    /// Host links no record owns that were deleted.
    pub removed_links: Vec<String>,
}

impl<B: Backends> PodManager<B> {
    /// Releases pods whose network namespace is gone (the runtime removed
    /// the pod without a DEL reaching us), retries releases that failed
    /// half-way, and sweeps links, rules and files no record owns. Pods
    /// with an operation in progress are left for the next pass.
    pub async fn reconcile(&self) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let loaded = match self.records.load_all() {
            Ok(loaded) => loaded,
            Err(error) => {
                warn!(%error, "reconcile cannot list pod state; skipped");
                return report;
            }
        };
        for record in loaded.records {
            let id = record.container_id.clone();
            let Some(_guard) = self.locks.try_lock(&id) else {
                continue;
            };
            let Ok(Some(current)) = self.records.load(&id) else {
                continue;
            };
            let live = lock(&self.live).contains_key(&id);
            let netns_exists = match netns::still_exists(&current.netns) {
                Ok(exists) => exists,
                Err(error) => {
                    warn!(
                        container_id = %id,
                        netns = %current.netns.display(),
                        %error,
                        "cannot tell whether the pod's network namespace exists; kept"
                    );
                    continue;
                }
            };
            let reason = if !netns_exists {
                "its network namespace is gone"
            } else if current.state != PodPhase::Running && !live {
                // No operation holds the lock, so no ADD is still building
                // this pod: what is left is an earlier release that failed.
                "an earlier release did not finish"
            } else {
                continue;
            };
            info!(container_id = %id, state = ?current.state, reason, "reconcile releases a pod");
            let released = self
                .release(current, ReleaseBy::Daemon)
                .instrument(info_span!("reconcile", container_id = %id))
                .await;
            if released.is_ok() {
                report.released.push(id);
            }
        }
        report.removed_links = self.sweep_unowned().await;
        self.locks.prune();
        report
    }

    /// Runs [`reconcile`](Self::reconcile) every `period` until `stop`
    /// resolves.
    pub async fn reconcile_every(
        &self,
        period: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once; start-up recovery has just run.
        ticks.tick().await;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = ticks.tick() => {}
            }
            let report = self.reconcile().await;
            if !report.released.is_empty() || !report.removed_links.is_empty() {
                info!(
                    released = ?report.released,
                    links = ?report.removed_links,
                    "reconcile cleaned up"
                );
            }
        }
    }

    /// Deletes host links and rules of ours that no record accounts for,
    /// identity files without a record, and temporary files of interrupted
    /// writes. Returns the links it removed.
    pub(super) async fn sweep_unowned(&self) -> Vec<String> {
        // No ADD creates devices while the sweep decides what is unowned
        // (see `plumb`).
        let _gate = self.sweep_gate.write().await;
        let Some(keep) = self.owned_links() else {
            return Vec::new();
        };
        let cleanup = self.plumbing.remove_stale(&keep).await;
        for error in &cleanup.errors {
            warn!(%error, "removing stale plumbing");
        }
        let recorded: HashSet<String> = self.records.container_ids().unwrap_or_default();
        match self.records.identity_ids() {
            Ok(ids) => {
                for id in ids.into_iter().filter(|id| !recorded.contains(id)) {
                    // An ADD holds the lock from before its keys exist until
                    // its record names them.
                    let Some(_guard) = self.locks.try_lock(&id) else {
                        continue;
                    };
                    if matches!(self.records.load(&id), Ok(None)) {
                        match self.records.remove_identity(&id) {
                            Ok(()) => info!(container_id = %id, "removed keys no pod record names"),
                            Err(error) => warn!(%error, "removing orphaned keys"),
                        }
                    }
                }
            }
            Err(error) => warn!(%error, "listing identity files"),
        }
        if let Err(error) = self.records.remove_stray_temp_files() {
            warn!(%error, "removing temporary files of interrupted writes");
        }
        cleanup.removed_links
    }

    /// Host links every record (readable or not) may own. `None` when the
    /// state cannot be listed: then nothing may be judged stale.
    fn owned_links(&self) -> Option<HashSet<String>> {
        let ids = match self.records.container_ids() {
            Ok(ids) => ids,
            Err(error) => {
                warn!(%error, "cannot list pod state; not sweeping links");
                return None;
            }
        };
        // Names follow from the container id, so a record saved before its
        // plumbing (or one that no longer parses) still protects its links.
        let mut keep: HashSet<String> = ids
            .iter()
            .flat_map(|id| [tun_name(id), host_veth_name(id)])
            .collect();
        if let Ok(loaded) = self.records.load_all() {
            for record in loaded.records {
                if let Some(net) = record.pod_net {
                    keep.extend(net.host_links().iter().map(|s| s.to_string()));
                }
            }
        }
        Some(keep)
    }
}
