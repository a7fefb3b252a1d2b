//! Prometheus metrics and the health endpoints (`/metrics`, `/healthz`,
//! `/readyz`).
//!
//! Counters that change per packet live in the engine (plain atomics); they
//! are read here only when Prometheus scrapes, so the data path never touches
//! a registry lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing::{info, warn};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum CniCommand {
    Add,
    Del,
    Check,
    Gc,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: CniCommand,
    /// "ok" or the CNI error code.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
    pub hostname: String,
}

/// `build_info`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub commit: String,
}

impl BuildLabels {
    /// This binary's version and the commit it was built from (`build.rs`).
    fn current() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_string(),
            commit: env!("TAILNET_CNI_COMMIT").to_string(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// "direct" or "derp".
    pub path: String,
}

/// Per-pod numbers, filled from the engine and the control session at
/// scrape time.
#[derive(Debug, Clone, Default)]
pub struct PodSample {
    pub labels: Option<PodLabels>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Inbound packets the tailnet packet filter refused.
    pub filtered_packets: u64,
    /// Seconds since the newest WireGuard handshake with any peer.
    pub handshake_age_secs: Option<f64>,
    /// Seconds since the oldest of the pod's peers' latest handshakes: the
    /// peer that has gone longest without one.
    pub oldest_handshake_age_secs: Option<f64>,
    pub peers_direct: u64,
    pub peers_derp: u64,
    /// Handshakes started to resume sessions the pod had before a restart.
    pub resume_handshakes: u64,
}

/// Something that can describe the daemon's current state for a scrape.
pub trait Snapshot: Send + Sync + 'static {
    /// Pod count per lifecycle state ("ready", "registering", ...).
    fn pods_by_state(&self) -> Vec<(String, i64)>;
    /// Control sessions per state ("connected", "reconnecting", ...).
    fn sessions_by_state(&self) -> Vec<(String, i64)>;
    fn pod_samples(&self) -> Vec<PodSample>;
    /// Ready to serve ADDs; the reason when not.
    fn readiness(&self) -> Result<(), String>;
    /// The daemon's own parts are alive (every live pod's control session
    /// and data-plane task); what is dead when not.
    fn health(&self) -> Result<(), String>;
}

/// DERP links redialled after a lost connection or a failed connect, by
/// every pod. Process-wide because the links hold no handle to [`Metrics`];
/// read only at scrape time.
pub static DERP_RECONNECTS: AtomicU64 = AtomicU64::new(0);
/// Control sessions that failed or lost their connection and retry, by
/// every pod; process-wide like [`DERP_RECONNECTS`].
pub static CONTROL_RECONNECTS: AtomicU64 = AtomicU64::new(0);

/// Counts one redial of a DERP link.
pub fn count_derp_reconnect() {
    DERP_RECONNECTS.fetch_add(1, Ordering::Relaxed);
}

/// Counts one retry of a control session.
pub fn count_control_reconnect() {
    CONTROL_RECONNECTS.fetch_add(1, Ordering::Relaxed);
}

/// Metrics updated as events happen (CNI commands); the rest is sampled.
#[derive(Debug)]
pub struct Metrics {
    pub command_latency: Family<CommandLabels, Histogram>,
    pub commands: Family<CommandLabels, Counter>,
    pub registrations_failed: Counter,
    /// Event and annotation reports dropped because the queue was full.
    pub kube_reports_dropped: Counter,
    /// Kubernetes API calls that failed or timed out.
    pub kube_api_errors: Counter,
    /// Tailnet pods on this node running without the plugin, at the last
    /// pass.
    pub pods_missing_plugin: Gauge,
    /// The CNI socket is being served; `/healthz` fails once it is not.
    pub rpc_serving: AtomicBool,
    started: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            // 5 ms .. ~80 s: an ADD includes registration with the control
            // server, which can take seconds.
            command_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 15))
            }),
            commands: Family::default(),
            registrations_failed: Counter::default(),
            kube_reports_dropped: Counter::default(),
            kube_api_errors: Counter::default(),
            pods_missing_plugin: Gauge::default(),
            rpc_serving: AtomicBool::new(false),
            started: AtomicU64::new(unix_now()),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Metrics {
    pub fn observe(&self, command: CniCommand, result: &str, elapsed: Duration) {
        let labels = CommandLabels {
            command,
            result: result.to_string(),
        };
        self.command_latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.commands.get_or_create(&labels).inc();
    }

    /// Renders everything in the OpenMetrics text format.
    pub fn render(&self, snapshot: &dyn Snapshot) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix("tailnet_cni");
        registry.register(
            "cni_command_duration_seconds",
            "Time to serve a CNI command",
            self.command_latency.clone(),
        );
        registry.register("cni_commands", "CNI commands served", self.commands.clone());
        registry.register(
            "registrations_failed",
            "Pod registrations that failed",
            self.registrations_failed.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build.get_or_create(&BuildLabels::current()).set(1);
        registry.register(
            "build_info",
            "The daemon's version and source commit; always 1",
            build,
        );
        registry.register(
            "kube_reports_dropped",
            "Pod Events and annotations dropped because the Kubernetes API lagged",
            self.kube_reports_dropped.clone(),
        );
        registry.register(
            "kube_api_errors",
            "Kubernetes API calls that failed or timed out",
            self.kube_api_errors.clone(),
        );
        registry.register(
            "pods_missing_plugin",
            "Tailnet pods on this node running without the plugin",
            self.pods_missing_plugin.clone(),
        );
        for (name, help, total) in [
            (
                "derp_reconnects",
                "DERP relay links redialled after a lost connection or a failed connect",
                &DERP_RECONNECTS,
            ),
            (
                "control_reconnects",
                "Control sessions retried after a failed or lost connection",
                &CONTROL_RECONNECTS,
            ),
        ] {
            let counter: Counter = Counter::default();
            counter.inc_by(total.load(Ordering::Relaxed));
            registry.register(name, help, counter);
        }
        let started: Gauge<i64> = Gauge::default();
        started.set(self.started.load(Ordering::Relaxed) as i64);
        registry.register(
            "start_time_seconds",
            "When the daemon started (Unix time)",
            started,
        );

        // Leak checks compare this before and after pod churn.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tasks: Gauge<i64> = Gauge::default();
            tasks.set(runtime.metrics().num_alive_tasks() as i64);
            registry.register(
                "runtime_tasks",
                "Tasks alive in the daemon's runtime",
                tasks,
            );
        }

        let pods: Family<StateLabels, Gauge> = Family::default();
        for (state, n) in snapshot.pods_by_state() {
            pods.get_or_create(&StateLabels { state }).set(n);
        }
        registry.register("pods", "Pods by lifecycle state", pods);

        let sessions: Family<StateLabels, Gauge> = Family::default();
        for (state, n) in snapshot.sessions_by_state() {
            sessions.get_or_create(&StateLabels { state }).set(n);
        }
        registry.register(
            "control_sessions",
            "Control-server sessions by state",
            sessions,
        );

        let rx_bytes: Family<PodLabels, Counter> = Family::default();
        let tx_bytes: Family<PodLabels, Counter> = Family::default();
        let rx_packets: Family<PodLabels, Counter> = Family::default();
        let tx_packets: Family<PodLabels, Counter> = Family::default();
        let filtered: Family<PodLabels, Counter> = Family::default();
        let handshake_age: Family<PodLabels, Gauge<f64, AtomicU64>> = Family::default();
        let oldest_handshake_age: Family<PodLabels, Gauge<f64, AtomicU64>> = Family::default();
        let paths: Family<PathLabels, Gauge> = Family::default();
        let (mut direct, mut derp) = (0i64, 0i64);
        let resume_handshakes = Counter::<u64>::default();
        for sample in snapshot.pod_samples() {
            direct += sample.peers_direct as i64;
            derp += sample.peers_derp as i64;
            resume_handshakes.inc_by(sample.resume_handshakes);
            let Some(labels) = sample.labels else {
                continue;
            };
            rx_bytes.get_or_create(&labels).inc_by(sample.rx_bytes);
            tx_bytes.get_or_create(&labels).inc_by(sample.tx_bytes);
            rx_packets.get_or_create(&labels).inc_by(sample.rx_packets);
            tx_packets.get_or_create(&labels).inc_by(sample.tx_packets);
            filtered
                .get_or_create(&labels)
                .inc_by(sample.filtered_packets);
            if let Some(age) = sample.handshake_age_secs {
                handshake_age.get_or_create(&labels).set(age);
            }
            if let Some(age) = sample.oldest_handshake_age_secs {
                oldest_handshake_age.get_or_create(&labels).set(age);
            }
        }
        paths
            .get_or_create(&PathLabels {
                path: "direct".into(),
            })
            .set(direct);
        paths
            .get_or_create(&PathLabels {
                path: "derp".into(),
            })
            .set(derp);
        registry.register("pod_rx_bytes", "Bytes delivered to the pod", rx_bytes);
        registry.register("pod_tx_bytes", "Bytes sent by the pod", tx_bytes);
        registry.register("pod_rx_packets", "Packets delivered to the pod", rx_packets);
        registry.register("pod_tx_packets", "Packets sent by the pod", tx_packets);
        registry.register(
            "pod_filtered_packets",
            "Inbound packets the tailnet packet filter refused",
            filtered,
        );
        registry.register(
            "pod_handshake_age_seconds",
            "Seconds since the pod's newest WireGuard handshake",
            handshake_age,
        );
        registry.register(
            "resume_handshakes",
            "Handshakes started after a restart to resume the sessions pods had",
            resume_handshakes,
        );
        registry.register(
            "pod_oldest_handshake_age_seconds",
            "Seconds since the latest handshake of the pod's peer that has gone longest without one",
            oldest_handshake_age,
        );
        registry.register(
            "peer_paths",
            "Active peer sessions by path (direct UDP or DERP relay)",
            paths,
        );

        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

#[derive(Clone)]
struct HealthState {
    metrics: Arc<Metrics>,
    snapshot: Arc<dyn Snapshot>,
}

/// The router behind `health_addr`.
pub fn router(metrics: Arc<Metrics>, snapshot: Arc<dyn Snapshot>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(HealthState { metrics, snapshot })
}

/// Alive: the CNI socket is served and the snapshot finds nothing dead.
/// A liveness probe restarts the daemon on 503, which brings every pod back
/// from its record.
async fn healthz(State(state): State<HealthState>) -> impl IntoResponse {
    let health = if state.metrics.rpc_serving.load(Ordering::Relaxed) {
        state.snapshot.health()
    } else {
        Err("the CNI socket is not served".to_string())
    };
    match health {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}\n"),
        ),
    }
}

async fn readyz(State(state): State<HealthState>) -> impl IntoResponse {
    match state.snapshot.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn render_metrics(State(state): State<HealthState>) -> impl IntoResponse {
    match state.metrics.render(state.snapshot.as_ref()) {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Serves the health router on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(%addr, "health and metrics endpoints listening");
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await;
    if let Err(error) = &result {
        warn!(%error, "health server stopped");
    }
    result
}

#[cfg(test)]
mod tests;
