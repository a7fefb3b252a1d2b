//! Benchmark: registration latency against the test bed's rscale, and the
//! daemon-side memory of registered identities.
//!
//! For 1 and then 50 identities started at once: the time from spawning an
//! identity to its first netmap (mint key, Noise handshake, register, map
//! poll), p50 and p99. Then 250 identities held connected at once: resident
//! memory growth per identity.
//!
//!     source <(scripts/testbed.sh env)
//!     cargo run --release -p tailnet-cnid --example register_latency [-- OUT.json]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tailnet_auth::{AuthBackend, AuthConfig, KeyRequest, Secret};
use tailnet_cnid::control::{
    AuthKeySource, ControlClient, ControlConfig, IdentityHandle, IdentityKeys, IdentityOptions,
    MintError,
};

struct Mint(Arc<AuthBackend>);

#[tonic::async_trait]
impl AuthKeySource for Mint {
    async fn auth_key(&self) -> Result<Secret, MintError> {
        self.0
            .mint_key(&KeyRequest::for_hostname("bench"))
            .await
            .map(|k| k.key)
            .map_err(MintError::new)
    }
}

fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<usize>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

async fn register_batch(
    client: &ControlClient,
    source: Arc<dyn AuthKeySource>,
    n: usize,
    tag: &str,
) -> Result<(Vec<Duration>, Vec<IdentityHandle>), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let handles: Vec<IdentityHandle> = (0..n)
        .map(|i| {
            client.spawn_identity(
                IdentityKeys::generate(),
                IdentityOptions::new(&format!("bench-{tag}-{i}"), vec![]),
                source.clone(),
            )
        })
        .collect();
    let waits = handles.iter().map(|h| async {
        h.wait_ready(Duration::from_secs(120)).await?;
        Ok::<_, tailnet_cnid::control::ControlError>(started.elapsed())
    });
    let mut times = Vec::with_capacity(n);
    for t in futures::future::join_all(waits).await {
        times.push(t?);
    }
    times.sort();
    Ok((times, handles))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1);
    let url = std::env::var("TAILNET_TEST_CONTROL_URL")?;
    let token_file = std::env::var("TAILNET_TEST_ADMIN_TOKEN_FILE")?;
    let auth: AuthConfig = toml::from_str(&format!(
        "kind = \"rscale\"\napi_url = \"{url}\"\ntoken_file = \"{token_file}\"\n"
    ))?;
    let source: Arc<dyn AuthKeySource> = Arc::new(Mint(Arc::new(AuthBackend::from_config(&auth)?)));
    let client = ControlClient::new(ControlConfig::new(&url, None)?)?;

    let mut report = serde_json::Map::new();
    for n in [1usize, 50] {
        let (times, handles) = register_batch(&client, source.clone(), n, &format!("c{n}")).await?;
        let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
        println!("{n:>3} concurrent: registration p50 {p50:.1} ms, p99 {p99:.1} ms");
        report.insert(
            format!("register_{n}"),
            serde_json::json!({"p50_ms": p50, "p99_ms": p99}),
        );
        futures::future::join_all(handles.into_iter().map(|h| h.logout())).await;
    }

    let before = resident_bytes();
    let (_, handles) = register_batch(&client, source.clone(), 250, "mem").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = resident_bytes().saturating_sub(before);
    let per = grown / 250;
    println!("250 identities connected: resident growth {grown} bytes, {per} bytes per identity");
    report.insert(
        "identities_250".into(),
        serde_json::json!({"resident_growth_bytes": grown, "bytes_per_identity": per}),
    );
    if let Some(path) = out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    futures::future::join_all(handles.into_iter().map(|h| h.logout())).await;
    Ok(())
}
