//! In-memory stand-ins for the manager's seams: they keep what a pod holds
//! (plumbing, sessions, nodes, engine attachments) so a test can see what
//! was left behind, and fail on request at any step.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tailnet_auth::{AuthError, NodeRef};
use tokio::sync::watch;

use crate::control::{ControlError, IdentityKeys, SelfNode, SessionError, SessionState};
use crate::podmgr::dataplane::{AttachError, DataPlaneDown};
use crate::podmgr::manager::seams::{
    AttachSpec, Backends, ControlPlane, DataPlane, Plumbing, PodAttachment, PodSession, Records,
    SessionSpec,
};
use crate::podmgr::naming::{host_veth_name, tun_name};
use crate::podmgr::plumbing::{
    Ipv6Unavailable, Place, PlumbError, PodNet, PodNetSpec, StaleCleanup, TeardownErrors,
};
use crate::podmgr::state::{LoadedRecords, PodPhase, PodRecord, StateError, StateStore};
use crate::wg::{Engine, EngineConfig, EngineError, HomeRelay, PodStats, WarmRelay};

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fakes as one set of backends.
pub struct Fakes;

impl Backends for Fakes {
    type Plumbing = Arc<FakePlumbing>;
    type Control = Arc<FakeControl>;
    type Engine = Arc<FakeEngine>;
    type Records = Arc<FakeRecords>;
}

/// Plumbing that exists only as entries in a map, keyed by container id.
#[derive(Default)]
pub struct FakePlumbing {
    built: Mutex<HashMap<String, PodNet>>,
    pub fail_setup_with_existing_interface: AtomicBool,
    pub fail_setup: AtomicBool,
    pub fail_teardown: AtomicBool,
    /// Plumb as on a node whose kernel has no IPv6.
    pub without_ipv6: AtomicBool,
    /// Checks find the plumbing drifted.
    pub fail_check: AtomicBool,
    /// Checks wait for [`FakePlumbing::release_checks`].
    pub hold_checks: AtomicBool,
    checks_released: tokio::sync::Notify,
}

impl FakePlumbing {
    /// Container ids whose plumbing exists.
    pub fn built(&self) -> HashSet<String> {
        guard(&self.built).keys().cloned().collect()
    }

    /// Lets every held check, now and later, go on.
    pub fn release_checks(&self) {
        self.hold_checks.store(false, Ordering::SeqCst);
        self.checks_released.notify_waiters();
    }

    /// Plumbing left by an earlier run of the daemon.
    pub fn build(&self, pod_net: PodNet) {
        guard(&self.built).insert(pod_net.container_id.clone(), pod_net);
    }
}

/// What plumbing `setup` would build for `container_id` in `table`.
pub fn pod_net_of(container_id: &str, table: u32, mtu: u32) -> PodNet {
    PodNet {
        container_id: container_id.to_string(),
        tun_name: tun_name(container_id),
        host_veth: host_veth_name(container_id),
        pod_if_name: "ts0".into(),
        pod_mac: "02:00:00:00:00:01".into(),
        host_veth_mac: "02:00:00:00:00:02".into(),
        table,
        rule_priority: 5100,
        mtu,
        ipv4: None,
        ipv6: None,
        ipv6_omitted: None,
    }
}

#[tonic::async_trait]
impl Plumbing for Arc<FakePlumbing> {
    async fn setup(&self, spec: &PodNetSpec, table: u32) -> Result<PodNet, PlumbError> {
        if self
            .fail_setup_with_existing_interface
            .load(Ordering::SeqCst)
        {
            return Err(PlumbError::InterfaceExists {
                if_name: spec.if_name.clone(),
                netns: spec.netns_path.clone(),
            });
        }
        if self.fail_setup.load(Ordering::SeqCst) {
            return Err(PlumbError::Missing("fake: no veth support".into()));
        }
        let mut pod_net = pod_net_of(&spec.container_id, table, spec.mtu);
        pod_net.ipv4 = spec.ipv4;
        pod_net.ipv6 = spec.ipv6;
        if self.without_ipv6.load(Ordering::SeqCst) && spec.ipv6.is_some() {
            pod_net.ipv6 = None;
            pod_net.ipv6_omitted = Some(Ipv6Unavailable::NoStack { place: Place::Node });
        }
        self.build(pod_net.clone());
        Ok(pod_net)
    }

    async fn check(&self, pod_net: &PodNet, _spec: &PodNetSpec) -> Result<(), PlumbError> {
        loop {
            let released = self.checks_released.notified();
            tokio::pin!(released);
            // Registered before the flag is read: a release in between wakes it.
            released.as_mut().enable();
            if !self.hold_checks.load(Ordering::SeqCst) {
                break;
            }
            released.await;
        }
        if self.fail_check.load(Ordering::SeqCst) {
            return Err(PlumbError::Drift("fake: a route is missing".into()));
        }
        if guard(&self.built).get(&pod_net.container_id) == Some(pod_net) {
            Ok(())
        } else {
            Err(PlumbError::Missing(format!("fake: {}", pod_net.tun_name)))
        }
    }

    async fn teardown(
        &self,
        pod_net: &PodNet,
        _netns: Option<&Path>,
    ) -> Result<(), TeardownErrors> {
        if self.fail_teardown.load(Ordering::SeqCst) {
            return Err(TeardownErrors(vec![PlumbError::Drift(
                "fake: rule busy".into(),
            )]));
        }
        guard(&self.built).remove(&pod_net.container_id);
        Ok(())
    }

    async fn remove_stale(&self, keep: &HashSet<String>) -> StaleCleanup {
        let mut cleanup = StaleCleanup::default();
        guard(&self.built).retain(|_, net| {
            let owned = net.host_links().iter().any(|link| keep.contains(*link));
            if !owned {
                cleanup.removed_links.push(net.tun_name.clone());
            }
            owned
        });
        cleanup
    }
}

/// How the fake control server answers a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Registers the node with a 100.x and an fd7a:: address.
    Accept,
    /// Registers the node, assigns no address.
    AcceptWithoutAddress,
    /// Registers the node, then refuses the session (an expired key).
    RegisterThenRefuse,
    /// Registers the node on a tailnet with tailnet lock, unsigned.
    LockedOut,
}

/// A control server that registers nodes in memory.
pub struct FakeControl {
    pub registration: Mutex<Registration>,
    next_node: AtomicI64,
    /// Nodes in the tailnet.
    nodes: Mutex<HashSet<i64>>,
    /// The node each registered node key belongs to, for resumed sessions.
    by_key: Mutex<HashMap<String, SelfNode>>,
    next_session: AtomicU64,
    /// Sessions started and not yet ended: their id and current hostname.
    running: Arc<Mutex<Vec<(u64, String)>>>,
    /// Every session started, in order.
    started: Mutex<Vec<SessionSpec>>,
    pub fail_remove_node: AtomicBool,
    /// The admin API never answers a removal.
    pub hang_remove_node: AtomicBool,
    /// Sessions' logouts never get an answer.
    pub hang_logout: Arc<AtomicBool>,
}

impl Default for FakeControl {
    fn default() -> Self {
        Self {
            registration: Mutex::new(Registration::Accept),
            next_node: AtomicI64::new(1),
            nodes: Mutex::default(),
            by_key: Mutex::default(),
            next_session: AtomicU64::new(1),
            running: Arc::default(),
            started: Mutex::default(),
            fail_remove_node: AtomicBool::new(false),
            hang_remove_node: AtomicBool::new(false),
            hang_logout: Arc::default(),
        }
    }
}

impl FakeControl {
    pub fn nodes(&self) -> HashSet<i64> {
        guard(&self.nodes).clone()
    }

    /// A node registered by an earlier run of the daemon.
    pub fn register_node(&self) -> i64 {
        let id = self.next_node.fetch_add(1, Ordering::SeqCst);
        guard(&self.nodes).insert(id);
        id
    }

    /// Hostnames of the sessions still running.
    pub fn running_sessions(&self) -> Vec<String> {
        guard(&self.running)
            .iter()
            .map(|(_, hostname)| hostname.clone())
            .collect()
    }

    /// What every session was started for, in order.
    pub fn started_sessions(&self) -> Vec<SessionSpec> {
        guard(&self.started).clone()
    }
}

#[tonic::async_trait]
impl ControlPlane for Arc<FakeControl> {
    type Session = FakeSession;

    fn start_session(&self, keys: IdentityKeys, spec: SessionSpec) -> FakeSession {
        let registration = *guard(&self.registration);
        let node_key = keys.node_public().to_string();
        let node = if spec.resumed {
            // A node key the server knows, of a node still in the tailnet.
            guard(&self.by_key)
                .get(&node_key)
                .filter(|node| guard(&self.nodes).contains(&node.id))
                .cloned()
        } else {
            let id = self.register_node();
            let with_address = registration != Registration::AcceptWithoutAddress;
            let node = SelfNode {
                id,
                stable_id: format!("n{id}"),
                ipv4: with_address.then(|| Ipv4Addr::new(100, 64, 0, id as u8)),
                ipv6: with_address
                    .then(|| Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, id as u16)),
            };
            guard(&self.by_key).insert(node_key, node.clone());
            Some(node)
        };
        let id = self.next_session.fetch_add(1, Ordering::SeqCst);
        let state = match registration {
            Registration::RegisterThenRefuse => SessionState::NeedsAuth {
                error: std::sync::Arc::new(SessionError::KeyStillExpired {
                    key_expiry: "fake".into(),
                }),
            },
            Registration::LockedOut => SessionState::NeedsAuth {
                error: std::sync::Arc::new(SessionError::LockedOut),
            },
            _ => SessionState::Connected,
        };
        guard(&self.running).push((id, spec.hostname.clone()));
        guard(&self.started).push(spec.clone());
        FakeSession {
            id,
            node,
            state: watch::channel(state),
            running: self.running.clone(),
            hang_logout: self.hang_logout.clone(),
        }
    }

    async fn remove_node(&self, node: &NodeRef) -> Result<(), AuthError> {
        if self.hang_remove_node.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.fail_remove_node.load(Ordering::SeqCst) {
            return Err(AuthError::Unreachable {
                backend: "fake",
                url: "http://127.0.0.1/".into(),
                reason: "fake: admin API down".into(),
            });
        }
        guard(&self.nodes).remove(&node.node_id);
        Ok(())
    }
}

/// One fake session; it counts as running until it is shut down or logged
/// out.
pub struct FakeSession {
    id: u64,
    node: Option<SelfNode>,
    /// The sender is held as the session's task holds it: a live session.
    state: (watch::Sender<SessionState>, watch::Receiver<SessionState>),
    running: Arc<Mutex<Vec<(u64, String)>>>,
    hang_logout: Arc<AtomicBool>,
}

impl FakeSession {
    fn end(&self) {
        guard(&self.running).retain(|(id, _)| *id != self.id);
    }
}

#[tonic::async_trait]
impl PodSession for FakeSession {
    async fn wait_ready(&self, _timeout: Duration) -> Result<(), ControlError> {
        match &*self.state.1.borrow() {
            SessionState::NeedsAuth { error } => Err(ControlError::Refused(error.clone())),
            _ => Ok(()),
        }
    }

    fn state(&self) -> watch::Receiver<SessionState> {
        self.state.1.clone()
    }

    fn self_node(&self) -> Option<SelfNode> {
        self.node.clone()
    }

    fn set_hostname(&self, hostname: &str) {
        for (id, current) in guard(&self.running).iter_mut() {
            if *id == self.id {
                *current = hostname.to_string();
            }
        }
    }

    async fn logout(self) -> Result<(), ControlError> {
        if self.hang_logout.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.end();
        Ok(())
    }

    fn shutdown(self) {
        self.end();
    }
}

/// An engine that records which pods are attached.
#[derive(Default)]
pub struct FakeEngine {
    attached: Arc<Mutex<HashSet<String>>>,
    /// Pods whose data plane stopped serving them, and why.
    down: Arc<Mutex<HashMap<String, DataPlaneDown>>>,
    pub fail_attach: AtomicBool,
    /// Pods attached with a warm relay.
    attached_warm: Arc<Mutex<HashSet<String>>>,
}

impl FakeEngine {
    pub fn attached(&self) -> HashSet<String> {
        guard(&self.attached).clone()
    }

    /// Pods that were given their identity's warm relay at attach.
    pub fn attached_warm(&self) -> HashSet<String> {
        guard(&self.attached_warm).clone()
    }

    /// The pod stays attached, but its data plane no longer serves it.
    pub fn fail_data_plane(&self, pod_id: &str, reason: DataPlaneDown) {
        guard(&self.down).insert(pod_id.into(), reason);
    }
}

impl DataPlane for Arc<FakeEngine> {
    type Session = FakeSession;
    type Attachment = FakeAttachment;

    /// Real links, from an empty DERP map: nothing to connect to.
    fn warm_relay(
        &self,
        label: &str,
        keys: &IdentityKeys,
        _session: &FakeSession,
    ) -> Option<WarmRelay> {
        let engine = Engine::new(EngineConfig::default());
        Some(engine.warm_relay(label, keys.node_private_bytes(), Arc::new(Vec::new())))
    }

    fn attach(
        &self,
        spec: AttachSpec,
        _keys: &IdentityKeys,
        _session: &FakeSession,
        relay: Option<WarmRelay>,
    ) -> Result<FakeAttachment, AttachError> {
        if self.fail_attach.load(Ordering::SeqCst) {
            return Err(AttachError::OpenTun {
                tun: spec.tun_name,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        guard(&self.attached).insert(spec.pod_id.clone());
        if relay.is_some() {
            guard(&self.attached_warm).insert(spec.pod_id.clone());
        }
        Ok(FakeAttachment {
            pod_id: spec.pod_id,
            attached: self.attached.clone(),
            down: self.down.clone(),
        })
    }
}

pub struct FakeAttachment {
    pod_id: String,
    attached: Arc<Mutex<HashSet<String>>>,
    down: Arc<Mutex<HashMap<String, DataPlaneDown>>>,
}

#[tonic::async_trait]
impl PodAttachment for FakeAttachment {
    async fn wait_home_relay(&self, _timeout: Duration) -> HomeRelay {
        HomeRelay::Connected
    }

    async fn wait_netmap_applied(&self, _timeout: Duration) -> bool {
        true
    }

    async fn stats(&self) -> Result<PodStats, EngineError> {
        Ok(PodStats::default())
    }

    fn stats_now(&self) -> PodStats {
        PodStats::default()
    }

    async fn detach(&self) -> Result<(), EngineError> {
        guard(&self.attached).remove(&self.pod_id);
        Ok(())
    }

    fn liveness(&self) -> Result<(), DataPlaneDown> {
        guard(&self.down)
            .get(&self.pod_id)
            .map_or(Ok(()), |reason| Err(*reason))
    }
}

/// The real state store in a temporary directory; saving a record in a
/// chosen phase, or writing keys, can be made to fail.
pub struct FakeRecords {
    store: StateStore,
    pub fail_save_in: Mutex<Option<PodPhase>>,
    pub fail_key_file: AtomicBool,
}

impl FakeRecords {
    pub fn new(store: StateStore) -> Self {
        Self {
            store,
            fail_save_in: Mutex::new(None),
            fail_key_file: AtomicBool::new(false),
        }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }
}

impl Records for Arc<FakeRecords> {
    fn save(&self, record: &PodRecord) -> Result<(), StateError> {
        if *guard(&self.fail_save_in) == Some(record.state) {
            return Err(StateError::Io {
                op: "writing",
                path: self.store.record_path(&record.container_id)?,
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        self.store.save(record)
    }

    fn load(&self, container_id: &str) -> Result<Option<PodRecord>, StateError> {
        self.store.load(container_id)
    }

    fn load_all(&self) -> Result<LoadedRecords, StateError> {
        self.store.load_all()
    }

    fn remove(&self, container_id: &str) -> Result<bool, StateError> {
        self.store.remove(container_id)
    }

    fn identity_path(&self, container_id: &str) -> Result<PathBuf, StateError> {
        let path = self.store.identity_path(container_id)?;
        if self.fail_key_file.load(Ordering::SeqCst) {
            // A directory that does not exist: the key file cannot be written.
            let name = path.file_name().unwrap_or_default();
            return Ok(self.store.state_dir().join("gone").join(name));
        }
        Ok(path)
    }

    fn container_ids(&self) -> Result<HashSet<String>, StateError> {
        self.store.container_ids()
    }

    fn identity_ids(&self) -> Result<HashSet<String>, StateError> {
        self.store.identity_ids()
    }

    fn remove_identity(&self, container_id: &str) -> Result<(), StateError> {
        self.store.remove_identity(container_id)
    }

    fn remove_stray_temp_files(&self) -> Result<usize, StateError> {
        self.store.remove_stray_temp_files()
    }
}
