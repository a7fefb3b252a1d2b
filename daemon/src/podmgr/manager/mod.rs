//! Pod lifecycle: the steps of ADD, DEL, CHECK and GC, periodic reconcile,
//! and recovery after a restart, one module per verb.
//!
//! ADD for one pod: select → keys → register with control → plumb (TUN,
//! veth, addresses, rules) → attach to the engine → keep its netmap flowing
//! (`add.rs`). Every step is recorded in the pod's state file before the next
//! begins, so a crash at any point leaves enough on disk to finish or undo
//! it. A failed ADD, DEL (`del.rs`), GC (`gc.rs`), reconcile (`reconcile.rs`)
//! and recovery (`recover.rs`) all undo a pod through one release
//! (`release.rs`), which keeps going after errors and reports them all.
//!
//! The manager reaches plumbing, control, engine and disk only through the
//! traits of [`seams`]; [`live`] adapts them to the daemon's components.
//!
//! Concurrency: one lock per container ([`PodLocks`]); different pods never
//! wait for each other, except for the bounded number of registrations in
//! flight (`max_parallel_adds`).

mod add;
mod check;
mod del;
mod gc;
pub mod live;
mod mint;
mod pool;
mod reconcile;
mod recover;
mod register;
pub mod release;
pub mod seams;
mod step_clock;
mod views;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tailnet_cni_proto::cni_code;
use tailnet_cni_proto::v1::{
    AddRequest, AddResponse, CheckRequest, DelRequest, GcRequest, ListPodsResponse, StatusResponse,
};
use tokio::sync::Semaphore;
use tracing::{debug, info, info_span, warn, Instrument};

use self::live::{Live, LiveControl, LiveEngine};
use self::seams::{
    Backends, ControlPlane, DataPlane, JoinReports, PodAttachment, PodSession, Records,
};
use self::views::PodView;
use super::locks::PodLocks;
use super::magicdns::dns_settings;
use super::plumbing::Plumber;
use super::pool::IdentityPool;
use super::state::{PodRecord, StateError, StateStore};
use super::tables::TableAllocator;
use crate::config::Config;
use crate::control::{ControlClient, ControlConfig, IdentityKeys, RotationPolicy};
use crate::metrics::{CniCommand, Metrics};
use crate::rpc::{CniError, CniHandler};
use crate::selection::{Policy, Selector};
use crate::wg::derp_client::RelayTrust;
use crate::wg::{Engine, EngineConfig, WarmRelay};

pub use self::reconcile::ReconcileReport;

type SessionOf<B> = <<B as Backends>::Control as ControlPlane>::Session;
type AttachmentOf<B> = <<B as Backends>::Engine as DataPlane>::Attachment;

/// The backends of one pod manager, built by the caller.
pub struct Parts<B: Backends> {
    /// Builds and removes each pod's devices, addresses, routes and rules.
    pub plumbing: B::Plumbing,
    /// Starts identities' control sessions; removes nodes.
    pub control: B::Control,
    /// The shared data plane.
    pub engine: B::Engine,
    /// Pod records and key files.
    pub records: B::Records,
}

/// An identity an ADD gives its pod: from the pool or newly registered.
struct BoundIdentity<S> {
    keys: IdentityKeys,
    session: S,
    /// A pooled identity's connected home relay.
    relay: Option<WarmRelay>,
}

/// A pod the daemon is serving right now.
struct LivePod<B: Backends> {
    session: SessionOf<B>,
    /// Shared with status views, which read counters without the map lock.
    data: Arc<AttachmentOf<B>>,
}

/// Runs every pod of this node: the CNI verbs, reconcile, recovery and the
/// status views.
pub struct PodManager<B: Backends = Live> {
    config: Config,
    metrics: Arc<Metrics>,
    records: B::Records,
    plumbing: B::Plumbing,
    control: B::Control,
    engine: B::Engine,
    selector: Selector,
    tables: TableAllocator,
    locks: PodLocks,
    registrations: Semaphore,
    /// Identities registered ahead of demand, bound by ADD.
    pool: IdentityPool<SessionOf<B>>,
    /// Plumbing setups hold it shared, the sweep of unowned links holds it
    /// exclusively: a link being created is never judged stale.
    sweep_gate: tokio::sync::RwLock<()>,
    live: Mutex<HashMap<String, LivePod<B>>>,
    views: RwLock<BTreeMap<String, PodView>>,
    readiness: RwLock<Result<(), String>>,
    /// Where ADD reports joins and failures; nowhere until [`Self::report_to`].
    reports: OnceLock<Arc<dyn JoinReports>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PodManager<Live> {
    /// Builds every shared component, then brings back the pods a previous
    /// run left (same identities, same addresses) and removes leftovers of
    /// pods that are gone.
    pub async fn start(config: Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let records = StateStore::open(&config.state_dir)?;
        let auth = Arc::new(tailnet_auth::AuthBackend::from_config(&config.auth)?);
        let client = ControlClient::new(
            ControlConfig::new(&config.control_url, config.ca_file.clone())?.with_rotation(
                RotationPolicy {
                    renew_fraction: config.key_renew_fraction,
                    ..Default::default()
                },
            ),
        )?;
        let selector = Selector::new(Policy::from_config(&config)).await;
        let engine = Engine::new(EngineConfig {
            relay_trust: RelayTrust::shared(client.tls()),
            dns: dns_settings(&config),
            ..EngineConfig::default()
        });
        let parts = Parts {
            plumbing: Plumber::new()?,
            control: LiveControl { client, auth },
            engine: LiveEngine(engine),
            records,
        };
        Ok(Self::launch(config, metrics, selector, parts).await?)
    }
}

impl<B: Backends> PodManager<B> {
    /// Starts a manager on `parts`: resumes or releases every pod recorded
    /// on disk, then reports ready.
    pub async fn launch(
        config: Config,
        metrics: Arc<Metrics>,
        selector: Selector,
        parts: Parts<B>,
    ) -> Result<Arc<Self>, StateError> {
        let loaded = parts.records.load_all()?;
        for error in &loaded.errors {
            warn!(%error, "skipping unreadable pod record");
        }
        let tables = TableAllocator::with_default_range(
            loaded
                .records
                .iter()
                .filter_map(|r| r.pod_net.as_ref().map(|n| n.table)),
        );
        let pool = IdentityPool::open(
            &config.state_dir,
            &config.cluster_name,
            config.pool_size,
            &config.pool_tags,
        )
        .map_err(|source| StateError::Io {
            op: "creating the pool directory in",
            path: config.state_dir.clone(),
            source,
        })?;
        let manager = Arc::new(Self {
            registrations: Semaphore::new(config.max_parallel_adds),
            pool,
            sweep_gate: tokio::sync::RwLock::new(()),
            plumbing: parts.plumbing,
            control: parts.control,
            engine: parts.engine,
            records: parts.records,
            selector,
            tables,
            locks: PodLocks::default(),
            live: Mutex::new(HashMap::new()),
            views: RwLock::new(BTreeMap::new()),
            readiness: RwLock::new(Err("recovering pods from state".into())),
            reports: OnceLock::new(),
            metrics,
            config,
        });
        manager.recover(loaded.records).await;
        manager.start_pool();
        *manager
            .readiness
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Ok(());
        info!("pod manager ready");
        Ok(manager)
    }

    /// Sends every later ADD's outcome to `reports` (set once; later calls
    /// are ignored).
    pub fn report_to(&self, reports: Arc<dyn JoinReports>) {
        if self.reports.set(reports).is_err() {
            warn!("a join reporter is already set; keeping it");
        }
    }

    /// Where ADD reports: the one set, else nowhere.
    fn reports(&self) -> &dyn JoinReports {
        match self.reports.get() {
            Some(reports) => reports.as_ref(),
            None => &seams::NoReports,
        }
    }

    /// Stops every pod's data plane and control session, leaving their
    /// devices and state in place for the next start; logs out the pool.
    pub async fn shutdown(&self) {
        self.close_pool().await;
        let live: Vec<(String, LivePod<B>)> = lock(&self.live).drain().collect();
        for (container_id, pod) in live {
            if let Err(error) = pod.data.detach().await {
                debug!(container_id, %error, "detach on shutdown");
            }
            pod.session.shutdown();
        }
    }

    /// Saves `record` and shows it in the status views.
    fn save(&self, record: &PodRecord) -> Result<(), CniError> {
        self.records
            .save(record)
            .map_err(|e| CniError::new(cni_code::IO_FAILURE, format!("saving pod state: {e}")))?;
        self.set_view(record, None);
        Ok(())
    }

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

fn container_of(pod: &Option<tailnet_cni_proto::v1::PodRef>) -> &str {
    pod.as_ref().map(|p| p.container_id.as_str()).unwrap_or("")
}

#[tonic::async_trait]
impl<B: Backends> CniHandler for PodManager<B> {
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
        self.status_response()
    }

    async fn gc(&self, req: GcRequest) -> Result<Vec<String>, CniError> {
        self.timed(CniCommand::Gc, info_span!("gc"), self.do_gc(req))
            .await
    }

    async fn list_pods(&self) -> ListPodsResponse {
        self.pod_list().await
    }
}
