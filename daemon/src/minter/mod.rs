//! `tailnet-cnid minter`: the one place in the cluster that holds the
//! control server's credentials (a Tailscale OAuth client, a Headscale API
//! key, rscale's admin token). Node daemons (`[auth] kind = "minter"`) ask it
//! for one single-use, pre-authorized, tagged key per pod, authenticated by
//! their projected service account token, which the minter has the API
//! server review (`review`); `policy` decides who may mint which tags;
//! `server` is the endpoint, `tls` its HTTPS.

mod config;
mod policy;
mod review;
mod server;
mod tls;

use std::sync::Arc;

use anyhow::Context;
use tailnet_auth::AuthBackend;

pub use config::{CallerConfig, MinterConfig, MinterConfigError, DEFAULT_AUDIENCE};
pub use policy::{Policy, Refusal};
pub use review::{ReviewError, Reviewed, TokenReviewer};
pub use server::{router, Minter};
pub use tls::{acceptor, TlsError, TlsListener};

/// Serves the minter until SIGTERM or SIGINT.
pub async fn run(config: MinterConfig) -> anyhow::Result<()> {
    let backend = AuthBackend::from_config(&config.auth).context("the minter's [auth]")?;
    let client = kube::Client::try_default()
        .await
        .context("the minter needs the Kubernetes API to review tokens")?;
    let minter = Arc::new(Minter {
        reviewer: TokenReviewer::new(client, config.audience.clone()),
        policy: Policy::new(&config.callers),
        backend,
    });
    let app = router(minter);
    let tcp = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    let shutdown = shutdown_signal();
    match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => {
            let listener = TlsListener::new(tcp, acceptor(cert, key)?)?;
            tracing::info!(addr = %config.listen_addr, backend = config.auth.backend.kind(), "minter serving HTTPS");
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        _ => {
            tracing::warn!(addr = %config.listen_addr, backend = config.auth.backend.kind(), "minter serving plain HTTP (allow_insecure_http)");
            axum::serve(tcp, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the process ends the default way.
        _ => std::future::pending().await,
    }
}
