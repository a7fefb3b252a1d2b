//! The pod manager's side of the warm identity pool (`podmgr/pool`):
//! filling it after ADDs are served, binding a pooled identity to a pod,
//! and logging pooled identities out when the daemon stops or finds ones an
//! earlier run left.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tailnet_auth::NodeRef;
use tailnet_cni_proto::budget;
use tracing::{debug, info, warn};

use super::register::wait_registered;
use super::seams::{Backends, ControlPlane, DataPlane, PodSession, Records, SessionSpec};
use super::{BoundIdentity, PodManager, SessionOf};
use crate::control::{IdentityKeys, SelfNode};
use crate::podmgr::keyfile::{read_keys, write_keys};
use crate::podmgr::pool::{Pooled, Slot, TagSet};
use crate::podmgr::state::PodRecord;
use crate::rpc::CniError;

/// How long a pass waits after a registration for the pool failed, so an
/// unreachable control server is not asked in a loop.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// How long a leftover identity gets to reach control before it is tried
/// again on the next start.
const LEFTOVER_WAIT: Duration = Duration::from_secs(15);

impl<B: Backends> PodManager<B> {
    /// Starts the task that fills the pool; it ends with the manager or
    /// when the pool closes. First it logs out what an earlier run left,
    /// also when the pool is now off.
    pub(super) fn start_pool(self: &Arc<Self>) {
        let manager = Arc::downgrade(self);
        tokio::spawn(fill_pool(manager));
    }

    /// Binds a ready pooled identity to the pod of `record`: records its
    /// key file, node and addresses in one save, then renames it to the
    /// pod's hostname. `None` when the pool has none for `tags`.
    pub(super) fn bind_pooled(
        &self,
        record: &mut PodRecord,
        tags: &[String],
    ) -> Result<Option<BoundIdentity<SessionOf<B>>>, CniError> {
        let Some(pooled) = self.pool.take(&TagSet::of(tags)) else {
            return Ok(None);
        };
        // `take` hands out only identities with a self node.
        let Some(node) = pooled.session.self_node() else {
            self.pool.set_aside(pooled);
            return Ok(None);
        };
        record.identity_file = Some(pooled.key_file);
        let session = self.save_registered(record, &node, pooled.session)?;
        session.set_hostname(&record.hostname);
        info!(pooled_as = %pooled.hostname, hostname = %record.hostname, "bound a pooled identity");
        Ok(Some(BoundIdentity {
            keys: pooled.keys,
            session,
            relay: pooled.relay,
        }))
    }

    /// Stops filling and logs out every pooled identity, removing its node
    /// and key file; identities bound to pods are not the pool's.
    pub(super) async fn close_pool(&self) {
        let drained = self.pool.close();
        if !drained.is_empty() {
            info!(identities = drained.len(), "logging out the pool");
        }
        futures::future::join_all(drained.into_iter().map(|pooled| self.retire(pooled))).await;
    }

    /// One pass: retire what was set aside, then register what is missing,
    /// each after the ADDs in flight are served. `false` if a registration
    /// failed.
    async fn refill(&self) -> bool {
        for pooled in self.pool.retiring() {
            self.retire(pooled).await;
        }
        let missing = self.pool.claim_missing();
        let results = futures::future::join_all(missing.into_iter().map(|tags| async move {
            self.pool.adds_served().await;
            let registered = self.register_pooled(&tags).await;
            let ok = registered.is_some();
            if let Some(extra) = self.pool.filled(&tags, registered) {
                self.retire(extra).await;
            }
            ok
        }))
        .await;
        results.into_iter().all(|ok| ok)
    }

    /// Registers one identity for `tags`, in turn with ADDs' registrations
    /// (at most `max_parallel_adds` at once). On failure nothing is left.
    async fn register_pooled(&self, tags: &TagSet) -> Option<Pooled<SessionOf<B>>> {
        let _permit = self.registrations.acquire().await.ok()?;
        if self.pool.is_closed() {
            return None;
        }
        let Slot { hostname, key_file } = self.pool.new_slot();
        let keys = IdentityKeys::generate();
        if let Err(error) = write_keys(&key_file, &keys) {
            warn!(%error, "cannot save a pooled identity's keys");
            return None;
        }
        let session = self.control.start_session(
            keys.clone(),
            SessionSpec {
                hostname: hostname.clone(),
                tags: tags.tags().to_vec(),
                key_file: key_file.clone(),
                resumed: false,
            },
        );
        if let Err(error) = wait_registered(&session, &hostname).await {
            warn!(%hostname, %error, "registering a pooled identity failed");
            let node = session.self_node();
            session.shutdown();
            self.forget(&hostname, node, key_file).await;
            return None;
        }
        let relay = self.engine.warm_relay(&hostname, &keys, &session);
        debug!(%hostname, warm_relay = relay.is_some(), "pooled identity registered");
        Some(Pooled {
            keys,
            key_file,
            hostname,
            session,
            relay,
        })
    }

    /// Logs a pooled identity out, removes its node and deletes its keys.
    async fn retire(&self, pooled: Pooled<SessionOf<B>>) {
        let node = pooled.session.self_node();
        match tokio::time::timeout(budget::DEL_LOGOUT, pooled.session.logout()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => debug!(hostname = %pooled.hostname, %error, "pooled logout"),
            Err(_) => debug!(hostname = %pooled.hostname, "no answer to a pooled logout"),
        }
        self.forget(&pooled.hostname, node, pooled.key_file).await;
    }

    /// Removes `node` (if control named one) from the tailnet, then the key
    /// file; a node that cannot be removed keeps its key file, so the next
    /// start tries again.
    async fn forget(&self, hostname: &str, node: Option<SelfNode>, key_file: PathBuf) {
        if let Some(node) = node {
            let node = NodeRef {
                node_id: node.id,
                stable_id: node.stable_id,
                node_key: String::new(),
            };
            if let Err(error) = self.control.remove_node(&node).await {
                warn!(%hostname, %error, "removing a pooled node failed; retried on the next start");
                return;
            }
        }
        if let Err(error) = std::fs::remove_file(&key_file) {
            if error.kind() != std::io::ErrorKind::NotFound {
                warn!(%hostname, %error, "removing a pooled identity's key file");
            }
        }
    }

    /// Logs out the pooled identities an earlier run left (killed before
    /// it could): each resumes its session to learn its node, then is
    /// retired. One that control does not know any more only loses its
    /// key file; one that cannot reach control is kept for the next start.
    async fn clear_leftovers(&self) {
        let owned: HashSet<PathBuf> = match self.records.load_all() {
            Ok(loaded) => loaded
                .records
                .into_iter()
                .filter_map(|record| record.identity_file)
                .collect(),
            Err(error) => {
                warn!(%error, "cannot list pod records; leftover pooled identities stay");
                return;
            }
        };
        let leftovers = match self.pool.leftovers(&owned) {
            Ok(leftovers) => leftovers,
            Err(error) => {
                warn!(%error, "cannot list the pool's key files");
                return;
            }
        };
        if !leftovers.is_empty() {
            info!(
                identities = leftovers.len(),
                "logging out pooled identities of an earlier run"
            );
        }
        futures::future::join_all(leftovers.into_iter().map(|slot| self.clear_leftover(slot)))
            .await;
    }

    async fn clear_leftover(&self, slot: Slot) {
        let Slot { hostname, key_file } = slot;
        let keys = match read_keys(&key_file) {
            Ok(keys) => keys,
            Err(error) => {
                // Never registered with these keys by anyone who could use them.
                warn!(%hostname, %error, "unreadable pooled key file; removing it");
                self.forget(&hostname, None, key_file).await;
                return;
            }
        };
        let session = self.control.start_session(
            keys.clone(),
            SessionSpec {
                hostname: hostname.clone(),
                tags: Vec::new(),
                key_file: key_file.clone(),
                resumed: true,
            },
        );
        match session.wait_ready(LEFTOVER_WAIT).await {
            Ok(()) => {
                let pooled = Pooled {
                    keys,
                    key_file,
                    hostname,
                    session,
                    relay: None,
                };
                self.retire(pooled).await;
            }
            Err(error) if error.is_temporary() => {
                warn!(%hostname, %error, "control unreachable; the pooled node is logged out on the next start");
                session.shutdown();
            }
            Err(error) => {
                debug!(%hostname, %error, "control no longer knows a pooled identity");
                session.shutdown();
                self.forget(&hostname, None, key_file).await;
            }
        }
    }
}

/// The filling task: leftovers first, then a pass whenever the pool is
/// woken (a take, the first ADD of a tag set, closing).
async fn fill_pool<B: Backends>(manager: Weak<PodManager<B>>) {
    let Some(wake) = manager.upgrade().map(|m| m.pool.wake()) else {
        return;
    };
    match manager.upgrade() {
        Some(manager) if manager.pool.is_on() => manager.clear_leftovers().await,
        Some(manager) => return manager.clear_leftovers().await,
        None => return,
    }
    loop {
        let Some(manager) = manager.upgrade() else {
            return;
        };
        if manager.pool.is_closed() {
            return;
        }
        let complete = manager.refill().await;
        drop(manager);
        if !complete {
            tokio::time::sleep(RETRY_AFTER_FAILURE).await;
            continue;
        }
        wake.notified().await;
    }
}
