//! The daemon's run loop: recover pods, serve the shim, serve health and
//! metrics, report to Kubernetes, reconcile periodically, stop cleanly on
//! SIGTERM.
//!
//! Stopping the daemon does not tear pods down: their TUN devices are
//! persistent and their state is on disk, so a restarted daemon (an upgrade,
//! a crash) re-attaches every pod with the same identity and addresses.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::k8s::client::KubeApi;
use crate::k8s::reporter::{Posting, Reporter};
use crate::k8s::watchdog::{Watchdog, WatchdogConfig};
use crate::metrics::{self, Metrics};
use crate::podmgr::manager::PodManager;
use crate::podmgr::state::StateStore;
use crate::rpc;
use crate::selection::Policy;

pub async fn run(config: Config) -> anyhow::Result<()> {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        control_url = %config.control_url,
        state_dir = %config.state_dir.display(),
        "tailnet-cnid starting"
    );
    if config.insecure_control() {
        warn!(
            control_url = %config.control_url,
            "allow_insecure_http: the control connection is not encrypted or authenticated"
        );
    }
    let metrics = Arc::new(Metrics::default());
    let manager = PodManager::start(config.clone(), metrics.clone())
        .await
        .context("starting the pod manager")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        // A dropped sender means the daemon is going away: stop as well.
        rx.wait_for(|stop| *stop).await.ok();
    };

    // Loopback for the probes and the installer; `metrics_addr` for
    // Prometheus in the cluster.
    let endpoints: Vec<_> = [config.health_addr, config.metrics_addr]
        .into_iter()
        .flatten()
        .map(|addr| {
            let router = metrics::router(metrics.clone(), manager.clone());
            tokio::spawn(metrics::serve(addr, router, stopped(stop_rx.clone())))
        })
        .collect();

    let watchdog = start_kubernetes(&config, &manager, &metrics, stopped(stop_rx.clone())).await;

    let reconcile = (config.reconcile_interval_secs > 0).then(|| {
        let manager = manager.clone();
        let period = Duration::from_secs(config.reconcile_interval_secs);
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { manager.reconcile_every(period, stop).await })
    });

    let listener = rpc::bind_socket(&config.socket)?;
    let serving = rpc::serve(
        listener,
        manager.clone(),
        config.allowed_uids.clone(),
        stopped(stop_rx.clone()),
    );
    metrics.rpc_serving.store(true, Ordering::Relaxed);
    let server = tokio::spawn({
        let metrics = metrics.clone();
        async move {
            let result = serving.await;
            metrics.rpc_serving.store(false, Ordering::Relaxed);
            result
        }
    });

    wait_for_signal().await;
    info!("shutting down; pods keep their interfaces and come back on restart");
    // Fails only when every service has already stopped.
    stop_tx.send(true).ok();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "CNI service stopped with an error"),
        Err(e) => error!(error = %e, "CNI service task failed"),
    }
    for endpoint in endpoints {
        // The server logs its own error when it stops with one.
        if let Err(error) = endpoint.await {
            error!(%error, "health server task failed");
        }
    }
    if let Some(watchdog) = watchdog {
        if let Err(error) = watchdog.await {
            error!(%error, "missing-plugin watch task failed");
        }
    }
    if let Some(reconcile) = reconcile {
        // A pass in progress runs to its end; no new one starts.
        if let Err(error) = reconcile.await {
            error!(%error, "reconcile task failed");
        }
    }
    manager.shutdown().await;
    // Best effort: the next start replaces a stale socket anyway.
    if let Err(error) = std::fs::remove_file(&config.socket) {
        debug!(%error, socket = %config.socket.display(), "cannot remove the CNI socket");
    }
    Ok(())
}

/// Events and annotations for ADD's outcomes, and the watch for tailnet
/// pods running without the plugin: only in Kubernetes, on a known node.
/// Returns the watch's task, if it runs.
async fn start_kubernetes(
    config: &Config,
    manager: &Arc<PodManager>,
    metrics: &Arc<Metrics>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Option<JoinHandle<()>> {
    let settings = &config.kubernetes;
    let Some(node) = settings.node_name() else {
        info!("no node name (kubernetes.node_name or NODE_NAME): no pod Events, annotations or missing-plugin watch");
        return None;
    };
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(error) => {
            info!(%error, "no Kubernetes API: no pod Events, annotations or missing-plugin watch");
            return None;
        }
    };
    let api = KubeApi::new(client);
    if settings.events || settings.annotate {
        let posting = Posting {
            events: settings.events,
            annotate: settings.annotate,
        };
        let reporter = Reporter::spawn(
            api.clone(),
            node.clone(),
            posting,
            settings.queue_capacity,
            metrics.clone(),
        );
        manager.report_to(Arc::new(reporter));
    }
    if settings.missing_plugin_interval_secs == 0 {
        return None;
    }
    let records = match StateStore::open(&config.state_dir) {
        Ok(records) => records,
        Err(error) => {
            warn!(%error, "cannot open the pod records: no missing-plugin watch");
            return None;
        }
    };
    let watchdog = Watchdog::new(
        api,
        records,
        WatchdogConfig {
            node,
            policy: Policy::from_config(config),
            events: settings.events,
            evict: settings.evict_missing_plugin,
        },
        metrics.clone(),
    );
    let period = Duration::from_secs(settings.missing_plugin_interval_secs);
    Some(tokio::spawn(watchdog.run_every(period, stop)))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            if let Err(error) = tokio::signal::ctrl_c().await {
                error!(%error, "cannot watch Ctrl-C either; stopping now");
            }
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
