//! The daemon's run loop: recover pods, serve the shim, serve health,
//! reconcile periodically, stop cleanly on SIGTERM.
//!
//! Stopping the daemon does not tear pods down: their TUN devices are
//! persistent and their state is on disk, so a restarted daemon (an upgrade,
//! a crash) re-attaches every pod with the same identity and addresses.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::metrics::{self, Metrics};
use crate::podmgr::manager::PodManager;
use crate::rpc;

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

    let health = config.health_addr.map(|addr| {
        let router = metrics::router(metrics.clone(), manager.clone());
        tokio::spawn(metrics::serve(addr, router, stopped(stop_rx.clone())))
    });

    let reconcile = (config.reconcile_interval_secs > 0).then(|| {
        let manager = manager.clone();
        let period = Duration::from_secs(config.reconcile_interval_secs);
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { manager.reconcile_every(period, stop).await })
    });

    let listener = rpc::bind_socket(&config.socket)?;
    let server = tokio::spawn(rpc::serve(
        listener,
        manager.clone(),
        config.allowed_uids.clone(),
        stopped(stop_rx.clone()),
    ));

    wait_for_signal().await;
    info!("shutting down; pods keep their interfaces and come back on restart");
    // Fails only when every service has already stopped.
    stop_tx.send(true).ok();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "CNI service stopped with an error"),
        Err(e) => error!(error = %e, "CNI service task failed"),
    }
    if let Some(health) = health {
        // The server logs its own error when it stops with one.
        if let Err(error) = health.await {
            error!(%error, "health server task failed");
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
