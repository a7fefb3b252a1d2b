//! Pod lifecycle: the steps of ADD, DEL, CHECK and GC, and recovery after a
//! restart.
//!
//! ADD for one pod: select → keys → register with control → plumb (TUN,
//! veth, addresses, rules) → attach to the engine → keep its netmap flowing.
//! Every step is recorded in the pod's state file before the next begins, so
//! a crash at any point leaves enough on disk to finish or undo it. A failed
//! ADD undoes what it did; DEL keeps going after errors and reports them all.
//!
//! Concurrency: one lock per container ([`PodLocks`]); different pods never
//! wait for each other, except for the bounded number of registrations in
//! flight (`max_parallel_adds`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::control::{
    AuthKeySource, ControlClient, ControlConfig, IdentityHandle, IdentityKeys, IdentityOptions,
    MintError, SessionState,
};
use tailnet_auth::{AuthBackend, KeyRequest, NodeRef, Secret};
use tailnet_cni_proto::cni_code;
use tailnet_cni_proto::v1::{
    AddRequest, AddResponse, CheckRequest, DelRequest, GcRequest, IpConfig, ListPodsResponse,
    PodStatus, Route, StatusResponse,
};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::faults;
use super::hostname::pod_hostname;
use super::locks::PodLocks;
use super::naming::{host_veth_name, tun_name, validate_container_id, validate_if_name};
use super::plumbing::{Plumber, PodNet, PodNetSpec};
use super::state::{write_private_atomic, PodPhase, PodRecord, StateStore};
use super::tables::TableAllocator;
use super::tun::open_tun;
use crate::config::Config;
use crate::metrics::{CniCommand, Metrics, PodLabels, PodSample, Snapshot};
use crate::rpc::{CniError, CniHandler};
use crate::selection::{Decision, Selector};
use crate::wg::{Engine, EngineConfig, HomeRelay, PathKind, PodDataConfig};

/// How long an ADD waits for the control server to register the pod and
/// send its first netmap.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(45);

/// How long an ADD keeps trying a control server it cannot reach before it
/// answers "try again later" (CNI code 11): the runtime retries the pod,
/// which is cheaper than holding its sandbox for the full registration
/// timeout.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(10);
/// How long an ADD waits for the pod's home relay connection. Peers learn
/// of a new pod from control at once and send their first handshake through
/// its home relay, which drops it if the pod is not connected yet; WireGuard
/// retries only after 5 s. A relay slower than this is not fatal: the ADD
/// succeeds and the pod becomes reachable when the link comes up.
const HOME_RELAY_WAIT: Duration = Duration::from_secs(3);

/// Why pod state is being released: DEL has crash points of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    Del,
    Other,
}

/// What one reconcile pass (periodic, or CNI GC) released.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    /// Pods whose records were released.
    pub released: Vec<String>,
    /// Host links no record owns that were deleted.
    pub removed_links: Vec<String>,
}

/// A pod the daemon is serving right now.
struct LivePod {
    identity: IdentityHandle,
    data: super::rekey::PodData,
    sync: JoinHandle<()>,
}

/// What `status` and `/metrics` show for a pod, readable without awaiting.
#[derive(Debug, Clone)]
struct PodView {
    record: PodRecord,
    error: Option<String>,
}

pub struct PodManager {
    config: Config,
    metrics: Arc<Metrics>,
    store: StateStore,
    plumber: Plumber,
    auth: Arc<AuthBackend>,
    control: ControlClient,
    engine: Engine,
    selector: Selector,
    tables: TableAllocator,
    locks: PodLocks,
    registrations: Semaphore,
    /// Plumbing setups hold it shared, the sweep of unowned links holds it
    /// exclusively: a link being created is never judged stale.
    sweep_gate: tokio::sync::RwLock<()>,
    live: Mutex<HashMap<String, LivePod>>,
    views: RwLock<BTreeMap<String, PodView>>,
    readiness: RwLock<Result<(), String>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PodManager {
    /// Builds every shared component, then brings back the pods a previous
    /// run left (same identities, same addresses) and removes leftovers of
    /// pods that are gone.
    pub async fn start(config: Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let store = StateStore::open(&config.state_dir)?;
        let loaded = store.load_all()?;
        for error in &loaded.errors {
            warn!(%error, "skipping unreadable pod record");
        }
        let tables = TableAllocator::with_default_range(
            loaded
                .records
                .iter()
                .filter_map(|r| r.pod_net.as_ref().map(|n| n.table)),
        );
        let auth = Arc::new(AuthBackend::from_config(&config.auth)?);
        let control = ControlClient::new(
            ControlConfig::new(&config.control_url, config.ca_file.clone())?.with_rotation(
                crate::control::RotationPolicy {
                    renew_fraction: config.key_renew_fraction,
                    ..Default::default()
                },
            ),
        )?;
        let selector = Selector::new(config.selection, config.allowed_tags.clone()).await;
        let manager = Arc::new(Self {
            registrations: Semaphore::new(config.max_parallel_adds),
            sweep_gate: tokio::sync::RwLock::new(()),
            plumber: Plumber::new()?,
            engine: Engine::new(EngineConfig::default()),
            store,
            auth,
            control,
            selector,
            tables,
            locks: PodLocks::default(),
            live: Mutex::new(HashMap::new()),
            views: RwLock::new(BTreeMap::new()),
            readiness: RwLock::new(Err("recovering pods from state".into())),
            metrics,
            config,
        });
        manager.recover(loaded.records).await;
        *manager
            .readiness
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Ok(());
        info!("pod manager ready");
        Ok(manager)
    }

    /// Stops every pod's data plane and control session, leaving their
    /// devices and state in place for the next start.
    pub async fn shutdown(&self) {
        let live: Vec<(String, LivePod)> = lock(&self.live).drain().collect();
        for (container_id, pod) in live {
            pod.sync.abort();
            if let Err(error) = pod.data.detach().await {
                debug!(container_id, %error, "detach on shutdown");
            }
            pod.identity.shutdown();
        }
    }

    fn set_view(&self, record: &PodRecord, error: Option<String>) {
        self.views
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                record.container_id.clone(),
                PodView {
                    record: record.clone(),
                    error,
                },
            );
    }

    fn drop_view(&self, container_id: &str) {
        self.views
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(container_id);
    }

    fn save(&self, record: &PodRecord) -> Result<(), CniError> {
        self.store
            .save(record)
            .map_err(|e| CniError::new(cni_code::IO_FAILURE, format!("saving pod state: {e}")))?;
        self.set_view(record, None);
        Ok(())
    }

    // ---- ADD -------------------------------------------------------------

    async fn do_add(&self, req: AddRequest) -> Result<AddResponse, CniError> {
        let pod = req
            .pod
            .ok_or_else(|| CniError::new(cni_code::INVALID_CONFIG, "request names no pod"))?;
        validate_container_id(&pod.container_id)
            .map_err(|e| CniError::new(cni_code::INVALID_ENV, format!("CNI_CONTAINERID: {e}")))?;
        validate_if_name(&pod.if_name)
            .map_err(|e| CniError::new(cni_code::INVALID_CONFIG, format!("ifName: {e}")))?;
        if pod.netns.is_empty() {
            return Err(CniError::new(cni_code::INVALID_ENV, "CNI_NETNS is empty"));
        }
        let decision = self
            .selector
            .select(&pod.namespace, &pod.name, &pod.uid)
            .await
            .map_err(|e| CniError::new(cni_code::TRY_AGAIN_LATER, e.to_string()))?;
        let Decision::Join { hostname, tags } = decision else {
            debug!("pod not selected for the tailnet");
            return Ok(AddResponse::default());
        };

        let _guard = self.locks.lock(&pod.container_id).await;
        // A runtime never ADDs a container twice without a DEL; a record here
        // is what a failed or interrupted earlier attempt left: clear it.
        if let Ok(Some(stale)) = self.store.load(&pod.container_id) {
            warn!("clearing state of an earlier attempt for this container");
            self.release(stale, Release::Other).await;
        }

        let hostname = hostname.unwrap_or_else(|| {
            let name = if pod.name.is_empty() {
                pod.container_id.chars().take(12).collect()
            } else {
                pod.name.clone()
            };
            pod_hostname(&self.config.cluster_name, &pod.namespace, &name)
        });
        let mtu = if req.mtu == 0 {
            self.config.mtu
        } else {
            req.mtu
        };
        let mut record = PodRecord {
            container_id: pod.container_id.clone(),
            netns: PathBuf::from(&pod.netns),
            if_name: pod.if_name.clone(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            hostname: hostname.clone(),
            ipv4: None,
            ipv6: None,
            pod_net: None,
            identity_file: None,
            node_id: None,
            stable_id: None,
            state: PodPhase::Pending,
            created_at: now_secs(),
        };
        self.save(&record)?;
        faults::point("add:pending-saved");

        match self.bring_up(&mut record, tags, mtu).await {
            Ok(response) => Ok(response),
            Err(error) => {
                warn!(%error, "ADD failed; undoing what it did");
                self.metrics.registrations_failed.inc();
                self.release(record, Release::Other).await;
                Err(error)
            }
        }
    }

    /// The ADD steps after the record exists. On error the caller releases
    /// whatever the record says was done.
    async fn bring_up(
        &self,
        record: &mut PodRecord,
        tags: Vec<String>,
        mtu: u32,
    ) -> Result<AddResponse, CniError> {
        // 1. Keys, on disk before anything can register them.
        let keys = IdentityKeys::generate();
        let identity_path = self
            .store
            .identity_path(&record.container_id)
            .map_err(|e| CniError::new(cni_code::IO_FAILURE, e.to_string()))?;
        self.write_identity(&identity_path, &keys)?;
        record.identity_file = Some(identity_path.clone());
        self.save(record)?;
        faults::point("add:keys-saved");

        // 2. Registration and the first netmap.
        let identity = {
            let _permit = self
                .registrations
                .acquire()
                .await
                .map_err(|_| CniError::new(cni_code::TRY_AGAIN_LATER, "daemon is stopping"))?;
            let request = KeyRequest {
                hostname: record.hostname.clone(),
                tags: tags.clone(),
                ..KeyRequest::for_hostname(record.hostname.clone())
            };
            let identity = self.control.spawn_identity(
                keys.clone(),
                IdentityOptions::new(&record.hostname, tags)
                    .key_store(Arc::new(super::rekey::IdentityFile(identity_path.clone()))),
                Arc::new(MintKey {
                    auth: self.auth.clone(),
                    request,
                }),
            );
            match wait_registered(&identity, &record.hostname).await {
                Ok(()) => identity,
                Err(error) => {
                    // Pass on the node identity so release() can remove it.
                    if let Some(node) = identity.self_node() {
                        record.node_id = Some(node.id);
                        record.stable_id = Some(node.stable_id.clone());
                    }
                    identity.shutdown();
                    return Err(error);
                }
            }
        };
        let node = match identity.self_node() {
            Some(node) => node,
            None => {
                identity.shutdown();
                return Err(CniError::new(
                    cni_code::CONTROL_FAILURE,
                    "control server sent no self node",
                ));
            }
        };
        record.node_id = Some(node.id);
        record.stable_id = Some(node.stable_id.clone());
        record.ipv4 = node.ipv4;
        record.ipv6 = node.ipv6;
        record.state = PodPhase::Registered;
        if let Err(e) = self.save(record) {
            identity.shutdown();
            return Err(e);
        }
        faults::point("add:registered");
        if record.ipv4.is_none() && record.ipv6.is_none() {
            identity.shutdown();
            return Err(CniError::new(
                cni_code::CONTROL_FAILURE,
                "control server assigned no tailnet address",
            ));
        }

        // 3. Devices, addresses, routes, rules.
        let pod_net = match self.plumb(record, mtu).await {
            Ok(pod_net) => pod_net,
            Err(e) => {
                identity.shutdown();
                return Err(e);
            }
        };

        // 4. Data plane.
        let (data, sync) = match self.attach(record, &pod_net, &keys, &identity) {
            Ok(attached) => attached,
            Err(e) => {
                identity.shutdown();
                return Err(e);
            }
        };
        faults::point("add:attached");
        record.state = PodPhase::Running;
        if let Err(e) = self.save(record) {
            sync.abort();
            let _ = data.detach().await;
            identity.shutdown();
            return Err(e);
        }
        faults::point("add:running-saved");
        let data_handle = data.current();
        lock(&self.live).insert(
            record.container_id.clone(),
            LivePod {
                identity,
                data,
                sync,
            },
        );
        let relay = data_handle.wait_home_relay(HOME_RELAY_WAIT).await;
        if !matches!(relay, HomeRelay::Connected | HomeRelay::Absent) {
            warn!(
                hostname = %record.hostname,
                state = ?relay,
                "home relay not connected yet; peers' first packets may be lost until it is"
            );
        }
        info!(
            hostname = %record.hostname,
            ipv4 = ?record.ipv4,
            ipv6 = ?record.ipv6,
            tun = %pod_net.tun_name,
            "pod is on the tailnet"
        );
        Ok(add_response(record, &pod_net))
    }

    fn write_identity(&self, path: &Path, keys: &IdentityKeys) -> Result<(), CniError> {
        let bytes = serde_json::to_vec(keys)
            .map_err(|e| CniError::new(cni_code::IO_FAILURE, format!("encoding keys: {e}")))?;
        write_private_atomic(path, &bytes)
            .map_err(|e| CniError::new(cni_code::IO_FAILURE, format!("saving keys: {e}")))
    }

    fn read_identity(&self, path: &Path) -> Result<IdentityKeys, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("decoding {}: {e}", path.display()))
    }

    async fn plumb(&self, record: &mut PodRecord, mtu: u32) -> Result<PodNet, CniError> {
        let table = self
            .tables
            .allocate()
            .map_err(|e| CniError::new(cni_code::PLUMBING_FAILURE, e.to_string()))?;
        let spec = spec_of(record, mtu);
        let _gate = self.sweep_gate.read().await;
        match self.plumber.setup(&spec, table).await {
            Ok(pod_net) => {
                record.pod_net = Some(pod_net.clone());
                record.state = PodPhase::Plumbed;
                self.save(record)?;
                faults::point("add:plumbed");
                Ok(pod_net)
            }
            Err(e) => {
                self.tables.release(table);
                let code = match e {
                    super::plumbing::PlumbError::InterfaceExists { .. } => cni_code::INVALID_CONFIG,
                    _ => cni_code::PLUMBING_FAILURE,
                };
                Err(CniError::new(
                    code,
                    format!("setting up the pod's interfaces: {e}"),
                ))
            }
        }
    }

    fn attach(
        &self,
        record: &PodRecord,
        pod_net: &PodNet,
        keys: &IdentityKeys,
        identity: &IdentityHandle,
    ) -> Result<(super::rekey::PodData, JoinHandle<()>), CniError> {
        let tun_fd = open_tun(&pod_net.tun_name).map_err(|e| {
            CniError::new(
                cni_code::PLUMBING_FAILURE,
                format!("opening TUN {}: {e}", pod_net.tun_name),
            )
        })?;
        let addresses: Vec<IpAddr> = record
            .ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(record.ipv6.map(IpAddr::V6))
            .collect();
        let data = self
            .engine
            .attach_pod(PodDataConfig {
                pod_id: record.container_id.clone(),
                tun_fd,
                node_private: keys.node_private_bytes(),
                disco_private: keys.disco_private_bytes(),
                addresses: addresses.clone(),
            })
            .map_err(|e| {
                CniError::new(
                    cni_code::PLUMBING_FAILURE,
                    format!("starting data plane: {e}"),
                )
            })?;
        // Sync plus re-attach when the session rotates the node key.
        let (data, sync) = super::rekey::start(
            data,
            keys.node_public(),
            super::rekey::Reattach {
                engine: self.engine.clone(),
                pod_id: record.container_id.clone(),
                tun_name: pod_net.tun_name.clone(),
                addresses,
            },
            identity.keys(),
            identity.netmap(),
            identity.reporter(),
        );
        let sync = sync.instrument(info_span!("netmap_sync", pod = %record.hostname));
        Ok((data, tokio::spawn(sync)))
    }

    /// Undoes everything `record` says was done, best effort, logging every
    /// failure; removes the record last so nothing is forgotten on a crash.
    async fn release(&self, record: PodRecord, why: Release) -> Vec<String> {
        let crash_point = |step| {
            if why == Release::Del {
                faults::point(step);
            }
        };
        let mut errors = Vec::new();
        let live = lock(&self.live).remove(&record.container_id);
        if let Some(pod) = live {
            pod.sync.abort();
            if let Err(e) = pod.data.detach().await {
                debug!(error = %e, "data plane already gone");
            }
            if let Err(e) = pod.identity.logout().await {
                warn!(error = %e, "logout failed; removing the node through the API");
            }
        }
        crash_point("del:detached");
        if let Some(pod_net) = &record.pod_net {
            let netns = (!record.netns.as_os_str().is_empty()).then_some(record.netns.as_path());
            match self.plumber.teardown(pod_net, netns).await {
                Ok(()) => {
                    self.tables.release(pod_net.table);
                }
                Err(e) => {
                    error!(error = %e, "teardown incomplete");
                    errors.push(e.to_string());
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
            if let Err(e) = self.auth.remove_node(&node).await {
                warn!(error = %e, node_id, "removing the node from the tailnet failed");
                errors.push(format!("removing node {node_id}: {e}"));
            }
        }
        crash_point("del:node-removed");
        if let Some(path) = &record.identity_file {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    errors.push(format!("removing {}: {e}", path.display()));
                }
            }
        }
        // Keep the record while plumbing is left over: GC or the next DEL
        // retries from it.
        if errors.iter().all(|e| !e.starts_with("teardown")) {
            if let Err(e) = self.store.remove(&record.container_id) {
                errors.push(format!("removing pod state: {e}"));
            }
            self.drop_view(&record.container_id);
        } else {
            self.set_view(&record, Some(errors.join("; ")));
        }
        errors
    }

    // ---- DEL, CHECK, GC --------------------------------------------------

    async fn do_del(&self, req: DelRequest) -> Result<(), CniError> {
        let pod = req
            .pod
            .ok_or_else(|| CniError::new(cni_code::INVALID_CONFIG, "request names no pod"))?;
        if validate_container_id(&pod.container_id).is_err() {
            // Nothing of ours can exist under an invalid id.
            return Ok(());
        }
        let _guard = self.locks.lock(&pod.container_id).await;
        let record = match self.store.load(&pod.container_id) {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(CniError::new(
                    cni_code::IO_FAILURE,
                    format!("reading pod state: {e}"),
                ))
            }
        };
        let mut record = record;
        record.state = PodPhase::Deleting;
        if let Err(error) = self.store.save(&record) {
            warn!(%error, "could not record that DEL began; releasing anyway");
        }
        faults::point("del:deleting-saved");
        let errors = self.release(record, Release::Del).await;
        let teardown_failed: Vec<&String> = errors
            .iter()
            .filter(|e| e.starts_with("teardown"))
            .collect();
        if teardown_failed.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                cni_code::PLUMBING_FAILURE,
                format!("DEL could not remove everything: {}", errors.join("; ")),
            ))
        }
    }

    async fn do_check(&self, req: CheckRequest) -> Result<(), CniError> {
        let pod = req
            .pod
            .ok_or_else(|| CniError::new(cni_code::INVALID_CONFIG, "request names no pod"))?;
        let _guard = self.locks.lock(&pod.container_id).await;
        let record = self
            .store
            .load(&pod.container_id)
            .map_err(|e| CniError::new(cni_code::IO_FAILURE, e.to_string()))?
            .ok_or_else(|| {
                CniError::new(
                    cni_code::UNKNOWN_CONTAINER,
                    format!("no tailnet state for container {}", pod.container_id),
                )
            })?;
        if record.state != PodPhase::Running {
            return Err(CniError::new(
                cni_code::CHECK_FAILED,
                format!("pod is {:?}, not running", record.state),
            ));
        }
        let pod_net = record.pod_net.as_ref().ok_or_else(|| {
            CniError::new(cni_code::CHECK_FAILED, "pod has no interfaces recorded")
        })?;
        let ours: HashSet<String> = record_ips(&record).into_iter().collect();
        for expected in &req.expected_ips {
            if !ours.contains(&expected.address) {
                return Err(CniError::new(
                    cni_code::CHECK_FAILED,
                    format!(
                        "runtime expects {} on {}, the daemon assigned {:?}",
                        expected.address, record.if_name, ours
                    ),
                ));
            }
        }
        let spec = spec_of(&record, pod_net.mtu);
        self.plumber
            .check(pod_net, &spec)
            .await
            .map_err(|e| CniError::new(cni_code::CHECK_FAILED, e.to_string()))?;
        if !lock(&self.live).contains_key(&record.container_id) {
            return Err(CniError::new(
                cni_code::CHECK_FAILED,
                "pod's data plane is not running",
            ));
        }
        Ok(())
    }

    async fn do_gc(&self, req: GcRequest) -> Result<Vec<String>, CniError> {
        let valid: HashSet<String> = req
            .valid_attachments
            .iter()
            .map(|a| a.container_id.clone())
            .collect();
        let loaded = self
            .store
            .load_all()
            .map_err(|e| CniError::new(cni_code::IO_FAILURE, e.to_string()))?;
        let mut released = Vec::new();
        for record in loaded.records {
            if valid.contains(&record.container_id) {
                continue;
            }
            let _guard = self.locks.lock(&record.container_id).await;
            // Re-read under the lock: an ADD may have just replaced it.
            let Ok(Some(current)) = self.store.load(&record.container_id) else {
                continue;
            };
            info!(container_id = %current.container_id, "GC releases a pod the runtime no longer has");
            let id = current.container_id.clone();
            let errors = self.release(current, Release::Other).await;
            if errors.is_empty() {
                released.push(id);
            }
        }
        // Devices, rules and files with no record at all (a crash between
        // creating and recording them) go too.
        self.sweep_unowned().await;
        self.locks.prune();
        Ok(released)
    }

    /// The periodic cleanup: releases pods whose network namespace is gone
    /// (the runtime removed the pod without a DEL reaching us), retries
    /// releases that failed half-way, and sweeps links, rules and files no
    /// record owns. Pods with an operation in progress are left for the
    /// next pass.
    pub async fn reconcile(&self) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let loaded = match self.store.load_all() {
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
            let Ok(Some(current)) = self.store.load(&id) else {
                continue;
            };
            let live = lock(&self.live).contains_key(&id);
            let reason = if !current.netns.exists() {
                "its network namespace is gone"
            } else if current.state != PodPhase::Running && !live {
                // No operation holds the lock, so no ADD is still building
                // this pod: what is left is an earlier release that failed.
                "an earlier release did not finish"
            } else {
                continue;
            };
            info!(container_id = %id, state = ?current.state, reason, "reconcile releases a pod");
            if self
                .release(current, Release::Other)
                .instrument(info_span!("reconcile", container_id = %id))
                .await
                .is_empty()
            {
                report.released.push(id);
            }
        }
        report.removed_links = self.sweep_unowned().await;
        self.locks.prune();
        report
    }

    /// Deletes host links and rules of ours that no record accounts for,
    /// identity files without a record, and temporary files of interrupted
    /// writes. Returns the links it removed.
    async fn sweep_unowned(&self) -> Vec<String> {
        // No ADD creates devices while the sweep decides what is unowned
        // (see `plumb`).
        let _gate = self.sweep_gate.write().await;
        let Some(keep) = self.owned_links() else {
            return Vec::new();
        };
        let cleanup = self.plumber.remove_stale(&keep).await;
        for error in &cleanup.errors {
            warn!(%error, "removing stale plumbing");
        }
        let recorded: HashSet<String> = self.store.container_ids().unwrap_or_default();
        match self.store.identity_ids() {
            Ok(ids) => {
                for id in ids.into_iter().filter(|id| !recorded.contains(id)) {
                    // An ADD holds the lock from before its keys exist until
                    // its record names them.
                    let Some(_guard) = self.locks.try_lock(&id) else {
                        continue;
                    };
                    if matches!(self.store.load(&id), Ok(None)) {
                        match self.store.remove_identity(&id) {
                            Ok(()) => info!(container_id = %id, "removed keys no pod record names"),
                            Err(error) => warn!(%error, "removing orphaned keys"),
                        }
                    }
                }
            }
            Err(error) => warn!(%error, "listing identity files"),
        }
        if let Err(error) = self.store.remove_stray_temp_files() {
            warn!(%error, "removing temporary files of interrupted writes");
        }
        cleanup.removed_links
    }

    /// Host links every record (readable or not) may own. `None` when the
    /// state cannot be listed: then nothing may be judged stale.
    fn owned_links(&self) -> Option<HashSet<String>> {
        let ids = match self.store.container_ids() {
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
        if let Ok(loaded) = self.store.load_all() {
            for record in loaded.records {
                if let Some(net) = record.pod_net {
                    keep.extend(net.host_links().iter().map(|s| s.to_string()));
                }
            }
        }
        Some(keep)
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

    // ---- restart recovery --------------------------------------------------

    async fn recover(&self, records: Vec<PodRecord>) {
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
            self.release(record, Release::Other).await;
            return;
        }
        if let Err(reason) = self.resume(&record).await {
            warn!(%reason, "cannot resume pod; it stays recorded for DEL or GC");
            self.set_view(&record, Some(reason));
        }
    }

    /// Brings a running pod back with the same keys: the control server
    /// recognises the node key, so no new node appears and the addresses stay.
    async fn resume(&self, record: &PodRecord) -> Result<(), String> {
        let identity_path = record
            .identity_file
            .as_ref()
            .ok_or("no identity file recorded")?;
        let keys = self.read_identity(identity_path)?;
        let pod_net = record.pod_net.as_ref().ok_or("no interfaces recorded")?;
        let spec = spec_of(record, pod_net.mtu);
        self.plumber
            .check(pod_net, &spec)
            .await
            .map_err(|e| format!("interfaces drifted while the daemon was down: {e}"))?;
        let request = KeyRequest::for_hostname(record.hostname.clone());
        let identity = self.control.spawn_identity(
            keys.clone(),
            IdentityOptions::new(&record.hostname, Vec::new())
                .resumed()
                .key_store(Arc::new(super::rekey::IdentityFile(identity_path.clone()))),
            Arc::new(MintKey {
                auth: self.auth.clone(),
                request,
            }),
        );
        let (data, sync) = self
            .attach(record, pod_net, &keys, &identity)
            .map_err(|e| e.msg)?;
        lock(&self.live).insert(
            record.container_id.clone(),
            LivePod {
                identity,
                data,
                sync,
            },
        );
        self.set_view(record, None);
        info!(hostname = %record.hostname, "pod resumed");
        Ok(())
    }
}

/// Waits for a new identity's registration and first netmap. A control
/// server that cannot be reached for [`UNREACHABLE_GRACE`] is "try again
/// later" (code 11), as is running out of time while still reconnecting; a
/// server that answers and refuses is a control failure.
async fn wait_registered(identity: &IdentityHandle, hostname: &str) -> Result<(), CniError> {
    let unreachable = |error: &dyn std::fmt::Display| {
        CniError::new(
            cni_code::TRY_AGAIN_LATER,
            format!("control server unreachable while registering {hostname}: {error}"),
        )
    };
    let started = Instant::now();
    let watch_unreachable = async {
        let mut state = identity.state();
        loop {
            if let SessionState::Reconnecting { error, .. } = &*state.borrow_and_update() {
                let waited = started.elapsed();
                if waited >= UNREACHABLE_GRACE {
                    return unreachable(error);
                }
            }
            // Wake on a state change, or when the grace period may be over.
            if let Ok(Err(_)) =
                tokio::time::timeout(Duration::from_millis(500), state.changed()).await
            {
                // The session is gone; wait_ready reports that.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    tokio::select! {
        ready = identity.wait_ready(REGISTER_TIMEOUT) => match ready {
            Ok(_) => Ok(()),
            Err(e) => {
                if matches!(identity.state().borrow().clone(), SessionState::Reconnecting { .. }) {
                    Err(unreachable(&e.to_string()))
                } else {
                    Err(CniError::new(
                        cni_code::CONTROL_FAILURE,
                        format!("registering {hostname} with the control server: {e}"),
                    ))
                }
            }
        },
        error = watch_unreachable => Err(error),
    }
}

/// Mints a fresh auth key when the control session needs one.
struct MintKey {
    auth: Arc<AuthBackend>,
    request: KeyRequest,
}

#[tonic::async_trait]
impl AuthKeySource for MintKey {
    async fn auth_key(&self) -> Result<Secret, MintError> {
        self.auth
            .mint_key(&self.request)
            .await
            .map(|key| key.key)
            .map_err(MintError::new)
    }
}

fn spec_of(record: &PodRecord, mtu: u32) -> PodNetSpec {
    PodNetSpec {
        container_id: record.container_id.clone(),
        netns_path: record.netns.clone(),
        if_name: record.if_name.clone(),
        mtu,
        ipv4: record.ipv4,
        ipv6: record.ipv6,
    }
}

fn record_ips(record: &PodRecord) -> Vec<String> {
    record
        .ipv4
        .map(|a| format!("{a}/32"))
        .into_iter()
        .chain(record.ipv6.map(|a| format!("{a}/128")))
        .collect()
}

/// Routes the pod gets for the tailnet ranges, as reported to the runtime.
const TAILNET_ROUTES: [&str; 2] = ["100.64.0.0/10", "fd7a:115c:a1e0::/48"];

fn add_response(record: &PodRecord, pod_net: &PodNet) -> AddResponse {
    let ips = record_ips(record)
        .into_iter()
        .map(|address| IpConfig {
            address,
            gateway: String::new(),
        })
        .collect();
    let routes = TAILNET_ROUTES
        .iter()
        .filter(|dst| {
            if dst.contains(':') {
                record.ipv6.is_some()
            } else {
                record.ipv4.is_some()
            }
        })
        .map(|dst| Route {
            dst: dst.to_string(),
            gw: String::new(),
        })
        .collect();
    AddResponse {
        api_version: 0,
        attached: true,
        if_name: pod_net.pod_if_name.clone(),
        mac: pod_net.pod_mac.clone(),
        mtu: pod_net.mtu,
        ips,
        routes,
        hostname: record.hostname.clone(),
    }
}

fn container_of(pod: &Option<tailnet_cni_proto::v1::PodRef>) -> &str {
    pod.as_ref().map(|p| p.container_id.as_str()).unwrap_or("")
}

impl PodManager {
    /// Runs one CNI command in its span and records its latency and outcome.
    async fn timed<T>(
        &self,
        command: CniCommand,
        span: tracing::Span,
        work: impl std::future::Future<Output = Result<T, CniError>>,
    ) -> Result<T, CniError> {
        let started = Instant::now();
        let result = work.instrument(span).await;
        self.metrics
            .observe(command, &result_label(&result), started.elapsed());
        result
    }
}

fn result_label(result: &Result<impl Sized, CniError>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e.code.to_string(),
    }
}

#[tonic::async_trait]
impl CniHandler for PodManager {
    async fn add(&self, req: AddRequest) -> Result<AddResponse, CniError> {
        let span = info_span!(
            "add",
            container_id = %container_of(&req.pod),
            pod = %req.pod.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)).unwrap_or_default(),
        );
        self.timed(CniCommand::Add, span, self.do_add(req)).await
    }

    async fn del(&self, req: DelRequest) -> Result<(), CniError> {
        let span = info_span!("del", container_id = %container_of(&req.pod));
        self.timed(CniCommand::Del, span, self.do_del(req)).await
    }

    async fn check(&self, req: CheckRequest) -> Result<(), CniError> {
        let span = info_span!("check", container_id = %container_of(&req.pod));
        self.timed(CniCommand::Check, span, self.do_check(req))
            .await
    }

    async fn status(&self) -> StatusResponse {
        let readiness = self
            .readiness
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        StatusResponse {
            api_version: 0,
            ready: readiness.is_ok(),
            reason: readiness.err().unwrap_or_default(),
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    async fn gc(&self, req: GcRequest) -> Result<Vec<String>, CniError> {
        self.timed(CniCommand::Gc, info_span!("gc"), self.do_gc(req))
            .await
    }

    async fn list_pods(&self) -> ListPodsResponse {
        let views: Vec<PodView> = self
            .views
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut pods = Vec::with_capacity(views.len());
        for view in views {
            let handle = lock(&self.live)
                .get(&view.record.container_id)
                .map(|p| (p.data.clone(), p.identity.state_name()));
            let mut status = pod_status(&view);
            if let Some((data, session)) = handle {
                if let Ok(stats) = data.stats().await {
                    status.rx_bytes = stats.rx_bytes;
                    status.tx_bytes = stats.tx_bytes;
                    status.filtered_packets = stats.filtered_packets;
                    for peer in &stats.peers {
                        match peer.path {
                            PathKind::Direct => status.peers_direct += 1,
                            PathKind::Relay => status.peers_derp += 1,
                            PathKind::None => {}
                        }
                    }
                }
                if session != "connected" {
                    status.state = format!("{} (control: {session})", status.state);
                }
            }
            pods.push(status);
        }
        ListPodsResponse {
            api_version: 0,
            pods,
        }
    }
}

fn pod_status(view: &PodView) -> PodStatus {
    let r = &view.record;
    PodStatus {
        container_id: r.container_id.clone(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        hostname: r.hostname.clone(),
        ipv4: r.ipv4.map(|a| a.to_string()).unwrap_or_default(),
        ipv6: r.ipv6.map(|a| a.to_string()).unwrap_or_default(),
        state: format!("{:?}", r.state).to_lowercase(),
        peers_direct: 0,
        peers_derp: 0,
        error: view.error.clone().unwrap_or_default(),
        netns: r.netns.display().to_string(),
        tun: r
            .pod_net
            .as_ref()
            .map(|n| n.tun_name.clone())
            .unwrap_or_default(),
        rx_bytes: 0,
        tx_bytes: 0,
        filtered_packets: 0,
    }
}

impl Snapshot for PodManager {
    fn pods_by_state(&self) -> Vec<(String, i64)> {
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for view in self
            .views
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            *counts
                .entry(format!("{:?}", view.record.state).to_lowercase())
                .or_default() += 1;
        }
        counts.into_iter().collect()
    }

    fn sessions_by_state(&self) -> Vec<(String, i64)> {
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for pod in lock(&self.live).values() {
            *counts
                .entry(pod.identity.state_name().to_string())
                .or_default() += 1;
        }
        counts.into_iter().collect()
    }

    fn pod_samples(&self) -> Vec<PodSample> {
        let live = lock(&self.live);
        self.views
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(|view| {
                let pod = live.get(&view.record.container_id)?;
                let stats = pod.data.stats_now();
                Some(PodSample {
                    labels: Some(PodLabels {
                        namespace: view.record.namespace.clone(),
                        pod: view.record.name.clone(),
                        hostname: view.record.hostname.clone(),
                    }),
                    rx_bytes: stats.rx_bytes,
                    tx_bytes: stats.tx_bytes,
                    rx_packets: stats.rx_packets,
                    tx_packets: stats.tx_packets,
                    filtered_packets: stats.filtered_packets,
                    handshake_age_secs: stats
                        .peers
                        .iter()
                        .filter_map(|p| p.last_handshake)
                        .min()
                        .map(|d| d.as_secs_f64()),
                    peers_direct: stats
                        .peers
                        .iter()
                        .filter(|p| p.path == PathKind::Direct)
                        .count() as u64,
                    peers_derp: stats
                        .peers
                        .iter()
                        .filter(|p| p.path == PathKind::Relay)
                        .count() as u64,
                })
            })
            .collect()
    }

    fn readiness(&self) -> Result<(), String> {
        self.readiness
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
