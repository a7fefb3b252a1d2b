//! The daemon's backends: thin adapters from the pod manager's seams to the
//! netlink plumber, the control client, the auth backend, the shared engine
//! and the state store.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tailnet_auth::{AuthBackend, AuthError, KeyRequest, NodeRef};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info_span, Instrument};

use super::mint::MintKey;
use super::seams::{
    AttachSpec, Backends, ControlPlane, DataPlane, Plumbing, PodAttachment, PodSession, Records,
    SessionSpec,
};
use crate::control::{
    ControlClient, ControlError, IdentityHandle, IdentityKeys, IdentityOptions, SelfNode,
    SessionState,
};
use crate::podmgr::dataplane::{self, AttachError, AttachTarget, DataPlaneDown, PodDataPlane};
use crate::podmgr::keyfile::IdentityFile;
use crate::podmgr::plumbing::{
    PlumbError, Plumber, PodNet, PodNetSpec, StaleCleanup, TeardownErrors,
};
use crate::podmgr::session_memory;
use crate::podmgr::state::{LoadedRecords, PodRecord, StateError, StateStore};
use crate::podmgr::sync::SharedConversions;
use crate::wg::{Engine, EngineError, HomeRelay, PodStats, Reused, WarmRelay};

/// The backends `tailnet-cnid` runs on.
pub struct Live;

impl Backends for Live {
    type Plumbing = Plumber;
    type Control = LiveControl;
    type Engine = LiveEngine;
    type Records = StateStore;
}

#[tonic::async_trait]
impl Plumbing for Plumber {
    async fn setup(&self, spec: &PodNetSpec, table: u32) -> Result<PodNet, PlumbError> {
        Plumber::setup(self, spec, table).await
    }

    async fn check(&self, pod_net: &PodNet, spec: &PodNetSpec) -> Result<(), PlumbError> {
        Plumber::check(self, pod_net, spec).await
    }

    async fn teardown(&self, pod_net: &PodNet, netns: Option<&Path>) -> Result<(), TeardownErrors> {
        Plumber::teardown(self, pod_net, netns).await
    }

    async fn remove_stale(&self, keep: &HashSet<String>) -> StaleCleanup {
        Plumber::remove_stale(self, keep).await
    }
}

/// Sessions through the shared control client; auth keys and node removal
/// through the auth backend.
pub struct LiveControl {
    pub client: ControlClient,
    pub auth: Arc<AuthBackend>,
}

#[tonic::async_trait]
impl ControlPlane for LiveControl {
    type Session = IdentityHandle;

    fn start_session(&self, keys: IdentityKeys, spec: SessionSpec) -> IdentityHandle {
        let request = KeyRequest {
            hostname: spec.hostname.clone(),
            tags: spec.tags.clone(),
            ..KeyRequest::for_hostname(spec.hostname.clone())
        };
        let mut options = IdentityOptions::new(&spec.hostname, spec.tags)
            .key_store(Arc::new(IdentityFile(spec.key_file)));
        if spec.resumed {
            options = options.resumed();
        }
        self.client.spawn_identity(
            keys,
            options,
            Arc::new(MintKey::new(self.auth.clone(), request)),
        )
    }

    async fn remove_node(&self, node: &NodeRef) -> Result<(), AuthError> {
        self.auth.remove_node(node).await
    }
}

#[tonic::async_trait]
impl PodSession for IdentityHandle {
    async fn wait_ready(&self, timeout: Duration) -> Result<(), ControlError> {
        IdentityHandle::wait_ready(self, timeout).await.map(drop)
    }

    fn state(&self) -> watch::Receiver<SessionState> {
        IdentityHandle::state(self)
    }

    fn self_node(&self) -> Option<SelfNode> {
        IdentityHandle::self_node(self)
    }

    fn set_hostname(&self, hostname: &str) {
        IdentityHandle::set_hostname(self, hostname)
    }

    async fn logout(self) -> Result<(), ControlError> {
        IdentityHandle::logout(self).await
    }

    fn shutdown(self) {
        IdentityHandle::shutdown(self)
    }
}

/// The shared engine; every attached pod gets a task that follows its
/// session (netmap sync, rotated node keys).
pub struct LiveEngine(pub Engine);

impl DataPlane for LiveEngine {
    type Session = IdentityHandle;
    type Attachment = LiveAttachment;

    fn warm_relay(
        &self,
        label: &str,
        keys: &IdentityKeys,
        session: &IdentityHandle,
    ) -> Option<WarmRelay> {
        let netmap = session.netmap().borrow().clone()?;
        let derp = SharedConversions::global().derp_map(netmap.derp_map.as_ref()?);
        let relay = self.0.warm_relay(label, keys.node_private_bytes(), derp);
        // Peers learn where to find the identity while it waits, so the pod
        // it is bound to is reachable through the relay once attached, with
        // no word from control in between.
        session.set_endpoints(Vec::new(), relay.home_region());
        Some(relay)
    }

    fn attach(
        &self,
        spec: AttachSpec,
        keys: &IdentityKeys,
        session: &IdentityHandle,
        relay: Option<WarmRelay>,
    ) -> Result<LiveAttachment, AttachError> {
        let target = AttachTarget {
            engine: self.0.clone(),
            pod_id: spec.pod_id,
            tun_name: spec.tun_name,
            addresses: spec.addresses,
            routing: spec.routing,
        };
        let reused = Reused {
            udp_port: session_memory::recall(&spec.session_peers).udp_port,
            relay,
        };
        let first = target.attach_reusing(keys, reused)?;
        let (data, supervisor) = dataplane::supervise(
            first,
            keys.node_public(),
            target,
            session.keys(),
            session.netmap(),
            session.reporter(),
            Some(spec.session_peers),
        );
        let supervisor = supervisor.instrument(info_span!("netmap_sync", pod = %spec.hostname));
        Ok(LiveAttachment {
            data,
            supervisor: tokio::spawn(supervisor),
        })
    }
}

/// A pod on the engine and the task that keeps it current.
pub struct LiveAttachment {
    data: PodDataPlane,
    supervisor: JoinHandle<()>,
}

#[tonic::async_trait]
impl PodAttachment for LiveAttachment {
    async fn wait_home_relay(&self, timeout: Duration) -> HomeRelay {
        self.data.current().wait_home_relay(timeout).await
    }

    async fn wait_netmap_applied(&self, timeout: Duration) -> bool {
        self.data.wait_netmap_applied(timeout).await
    }

    async fn stats(&self) -> Result<PodStats, EngineError> {
        self.data.stats().await
    }

    fn stats_now(&self) -> PodStats {
        self.data.stats_now()
    }

    async fn detach(&self) -> Result<(), EngineError> {
        self.supervisor.abort();
        self.data.clone().detach().await
    }

    fn liveness(&self) -> Result<(), DataPlaneDown> {
        self.data.liveness()
    }
}

impl Records for StateStore {
    fn save(&self, record: &PodRecord) -> Result<(), StateError> {
        StateStore::save(self, record)
    }

    fn load(&self, container_id: &str) -> Result<Option<PodRecord>, StateError> {
        StateStore::load(self, container_id)
    }

    fn load_all(&self) -> Result<LoadedRecords, StateError> {
        StateStore::load_all(self)
    }

    fn remove(&self, container_id: &str) -> Result<bool, StateError> {
        StateStore::remove(self, container_id)
    }

    fn identity_path(&self, container_id: &str) -> Result<PathBuf, StateError> {
        StateStore::identity_path(self, container_id)
    }

    fn container_ids(&self) -> Result<HashSet<String>, StateError> {
        StateStore::container_ids(self)
    }

    fn identity_ids(&self) -> Result<HashSet<String>, StateError> {
        StateStore::identity_ids(self)
    }

    fn remove_identity(&self, container_id: &str) -> Result<(), StateError> {
        StateStore::remove_identity(self, container_id)
    }

    fn remove_stray_temp_files(&self) -> Result<usize, StateError> {
        StateStore::remove_stray_temp_files(self)
    }
}
