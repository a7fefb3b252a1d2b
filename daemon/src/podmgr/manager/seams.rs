//! What the pod manager needs from the rest of the daemon, as traits: the
//! per-pod network plumbing, the control server (sessions and node
//! removal), the engine, and the state directory. The daemon runs on the
//! adapters in [`live`](super::live); unit tests run on fakes.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tailnet_auth::{AuthError, NodeRef};
use tokio::sync::watch;

use crate::control::{ControlError, IdentityKeys, SelfNode, SessionState};
use crate::k8s::PodRef;
use crate::podmgr::dataplane::{AttachError, DataPlaneDown};
use crate::podmgr::plumbing::{PlumbError, PodNet, PodNetSpec, StaleCleanup, TeardownErrors};
use crate::podmgr::state::{LoadedRecords, PodRecord, SessionPeersFile, StateError};
use crate::podmgr::sync::PodRouting;
use crate::wg::{EngineError, HomeRelay, PodStats, WarmRelay};

/// The backends one pod manager runs on, chosen together so that the
/// engine reads the sessions the control plane starts.
pub trait Backends: Send + Sync + 'static {
    type Plumbing: Plumbing;
    type Control: ControlPlane;
    type Engine: DataPlane<Session = <Self::Control as ControlPlane>::Session>;
    type Records: Records;
}

/// Builds, checks and removes one pod's devices, addresses, routes and
/// rules.
#[tonic::async_trait]
pub trait Plumbing: Send + Sync + 'static {
    /// Creates everything for one pod in routing table `table`; on failure
    /// nothing it created is left.
    async fn setup(&self, spec: &PodNetSpec, table: u32) -> Result<PodNet, PlumbError>;
    /// Verifies that what `setup` built is still in place.
    async fn check(&self, pod_net: &PodNet, spec: &PodNetSpec) -> Result<(), PlumbError>;
    /// Removes a pod's plumbing, keeping on after errors; `netns` is `None`
    /// when the record names none.
    async fn teardown(&self, pod_net: &PodNet, netns: Option<&Path>) -> Result<(), TeardownErrors>;
    /// Deletes host links and rules of ours whose names are not in `keep`.
    async fn remove_stale(&self, keep: &HashSet<String>) -> StaleCleanup;
}

/// What a new control session is for.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub hostname: String,
    pub tags: Vec<String>,
    /// Where the session saves rotated keys.
    pub key_file: PathBuf,
    /// The node key is already registered (a restart): no auth key first.
    pub resumed: bool,
}

/// The control server as the pod manager sees it.
#[tonic::async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    type Session: PodSession;
    /// Starts the control session of one identity.
    fn start_session(&self, keys: IdentityKeys, spec: SessionSpec) -> Self::Session;
    /// Removes a node from the tailnet through the admin API.
    async fn remove_node(&self, node: &NodeRef) -> Result<(), AuthError>;
}

/// One identity's control session.
#[tonic::async_trait]
pub trait PodSession: Send + Sync + 'static {
    /// Waits until the identity is registered and has its first netmap.
    async fn wait_ready(&self, timeout: Duration) -> Result<(), ControlError>;
    /// The session's state, as it changes.
    fn state(&self) -> watch::Receiver<SessionState>;
    /// The node control registered, once it has sent a netmap naming it.
    fn self_node(&self) -> Option<SelfNode>;
    /// Tells control the identity's new hostname (a pooled identity bound
    /// to a pod), with the endpoint report the pod's attach makes.
    fn set_hostname(&self, hostname: &str);
    /// Expires the node key at the server and ends the session.
    async fn logout(self) -> Result<(), ControlError>;
    /// Ends the session, keeping the node registered.
    fn shutdown(self);
}

/// Where a pod joins the engine.
#[derive(Debug, Clone)]
pub struct AttachSpec {
    pub pod_id: String,
    /// For the sync task's log span.
    pub hostname: String,
    pub tun_name: String,
    pub addresses: Vec<IpAddr>,
    /// The pod's route opt-ins, resolved against the node's defaults, and
    /// where its subnet routes go.
    pub routing: PodRouting,
    /// Where the pod's live WireGuard sessions are remembered for a restart.
    pub session_peers: SessionPeersFile,
}

/// The shared engine.
pub trait DataPlane: Send + Sync + 'static {
    /// The control session that feeds an attached pod its netmap.
    type Session;
    type Attachment: PodAttachment;
    /// Connects the home relay of a registered identity that serves no pod
    /// yet (a pooled one), from its session's DERP map; `None` before the
    /// session has one, and tells control that relay is the identity's
    /// home. `label` names the identity in the log.
    fn warm_relay(
        &self,
        label: &str,
        keys: &IdentityKeys,
        session: &Self::Session,
    ) -> Option<WarmRelay>;
    /// Attaches a pod with `keys` and keeps it in sync with `session`;
    /// `relay` is what [`Self::warm_relay`] opened for the identity.
    fn attach(
        &self,
        spec: AttachSpec,
        keys: &IdentityKeys,
        session: &Self::Session,
        relay: Option<WarmRelay>,
    ) -> Result<Self::Attachment, AttachError>;
}

/// One pod attached to the engine.
#[tonic::async_trait]
pub trait PodAttachment: Send + Sync + 'static {
    /// Waits (at most `timeout`) for the pod's home relay connection.
    async fn wait_home_relay(&self, timeout: Duration) -> HomeRelay;
    /// Waits (at most `timeout`) until the data plane has the pod's first
    /// netmap, and with it its peers; whether it has.
    async fn wait_netmap_applied(&self, timeout: Duration) -> bool;
    /// Counters and peers, from the pod's task.
    async fn stats(&self) -> Result<PodStats, EngineError>;
    /// Counters without waiting for the pod's task.
    fn stats_now(&self) -> PodStats;
    /// Stops the pod's sync and detaches it from the engine.
    async fn detach(&self) -> Result<(), EngineError>;
    /// Whether the data plane serves the pod with the current node key.
    fn liveness(&self) -> Result<(), DataPlaneDown>;
}

/// Pod records and identity files on disk.
pub trait Records: Send + Sync + 'static {
    /// Replaces a pod's record atomically.
    fn save(&self, record: &PodRecord) -> Result<(), StateError>;
    /// A pod's record; `None` if there is none.
    fn load(&self, container_id: &str) -> Result<Option<PodRecord>, StateError>;
    /// Every record; unreadable ones are listed apart.
    fn load_all(&self) -> Result<LoadedRecords, StateError>;
    /// Deletes a record; `false` if there was none.
    fn remove(&self, container_id: &str) -> Result<bool, StateError>;
    /// Where a pod's key file goes.
    fn identity_path(&self, container_id: &str) -> Result<PathBuf, StateError>;
    /// Ids with a record file, whether or not it parses.
    fn container_ids(&self) -> Result<HashSet<String>, StateError>;
    /// Ids with an identity file.
    fn identity_ids(&self) -> Result<HashSet<String>, StateError>;
    /// Deletes a pod's key file; absent is fine.
    fn remove_identity(&self, container_id: &str) -> Result<(), StateError>;
    /// Deletes what interrupted writes of an earlier process left.
    fn remove_stray_temp_files(&self) -> Result<usize, StateError>;
}

/// Where ADD reports that a pod joined the tailnet or failed to (Events,
/// annotations). Must return at once: a CNI call never waits for it.
pub trait JoinReports: Send + Sync + 'static {
    /// `pod` is on the tailnet as `hostname` with `addresses`.
    fn joined(&self, pod: &PodRef, hostname: &str, addresses: &[IpAddr]);
    /// ADD for `pod` failed with CNI error `code`.
    fn failed(&self, pod: &PodRef, code: u32);
}

/// Reports nowhere: outside Kubernetes, and until the daemon sets a reporter.
#[derive(Debug, Default)]
pub struct NoReports;

impl JoinReports for NoReports {
    fn joined(&self, _pod: &PodRef, _hostname: &str, _addresses: &[IpAddr]) {}
    fn failed(&self, _pod: &PodRef, _code: u32) {}
}
