//! One identity's life with the control server: register, hold the map long
//! poll, publish netmaps, renew the node key, reconnect with backoff, log out.
//!
//! Shared by every identity ([`ControlClient`]): the control URL, the TLS
//! configuration, the server's Noise key (fetched once), the peer interner.
//! Owned by each identity: its keys and its connection (the protocol binds a
//! connection to one machine key).
//!
//! - this file: the configuration and the client every identity shares.
//! - `handle`: what the pod manager holds: waiting, endpoints, logout.
//! - `state`, `errors`, `mint`: what a session reports and needs.
//! - `supervisor`: the task per identity, its reconnect loop and logout.
//! - `backoff` (sans-IO): how long to wait after a failure.
//! - `register`, `rekey`, `map_poll`, `requests`: one step each.

mod backoff;
mod errors;
mod handle;
mod map_poll;
mod mint;
mod register;
mod rekey;
mod requests;
mod state;
mod supervisor;
#[cfg(test)]
mod tailnet_lock_tests;

use std::path::PathBuf;
use std::sync::Arc;

use url::Url;

use super::client::ClientError;
use super::conn::Endpoint;
use super::identity::{IdentityKeys, KeyStore};
use super::keys::MachinePublic;
use super::netmap::Interner;
use super::rotation::{RotationPolicy, Rotator};
use super::tls;

pub use errors::{ControlError, SessionError, Stall};
pub use handle::{EndpointReporter, IdentityHandle};
pub use mint::{AuthKeySource, MintError};
pub use state::SessionState;

#[derive(Clone)]
pub struct IdentityOptions {
    pub hostname: String,
    pub tags: Vec<String>,
    /// The node key is already known to the server (a restart): try to
    /// register without minting a key first.
    pub registered: bool,
    /// Where rotated keys are saved before the server sees them; without
    /// one a rotated key lives only in memory.
    pub key_store: Option<Arc<dyn KeyStore>>,
}

impl std::fmt::Debug for IdentityOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityOptions")
            .field("hostname", &self.hostname)
            .field("tags", &self.tags)
            .field("registered", &self.registered)
            .field("key_store", &self.key_store.is_some())
            .finish()
    }
}

impl IdentityOptions {
    pub fn new(hostname: &str, tags: Vec<String>) -> Self {
        Self {
            hostname: hostname.to_string(),
            tags,
            registered: false,
            key_store: None,
        }
    }

    pub fn resumed(mut self) -> Self {
        self.registered = true;
        self
    }

    /// Saves rotated keys through `store` (atomically, before use).
    pub fn key_store(mut self, store: Arc<dyn KeyStore>) -> Self {
        self.key_store = Some(store);
        self
    }
}

/// Where to find the control server.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    url: Url,
    ca_file: Option<PathBuf>,
    rotation: RotationPolicy,
}

impl ControlConfig {
    pub fn new(url: &str, ca_file: Option<PathBuf>) -> Result<Self, ControlError> {
        let parsed = Url::parse(url).map_err(|source| ControlError::InvalidUrl {
            url: url.into(),
            source,
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ControlError::UnsupportedUrl { url: url.into() });
        }
        Ok(Self {
            url: parsed,
            ca_file,
            rotation: RotationPolicy::default(),
        })
    }

    /// When node keys are renewed ahead of their expiry.
    pub fn with_rotation(mut self, rotation: RotationPolicy) -> Self {
        self.rotation = rotation;
        self
    }
}

/// What all identities share.
#[derive(Clone)]
pub struct ControlClient {
    inner: Arc<Shared>,
}

struct Shared {
    endpoint: Endpoint,
    server_key: tokio::sync::Mutex<Option<MachinePublic>>,
    interner: Interner,
    rotation: RotationPolicy,
    /// Identifies this daemon's build in Hostinfo.
    version: String,
}

impl ControlClient {
    pub fn new(config: ControlConfig) -> Result<Self, ControlError> {
        let tls = tls::client_config(config.ca_file.as_deref())?;
        Ok(Self {
            inner: Arc::new(Shared {
                endpoint: Endpoint {
                    url: config.url,
                    tls,
                    ca_file: config.ca_file,
                },
                server_key: tokio::sync::Mutex::new(None),
                interner: Interner::default(),
                rotation: config.rotation,
                version: format!("tailnet-cni-{}", env!("CARGO_PKG_VERSION")),
            }),
        })
    }

    /// The TLS configuration the control connection trusts (`ca_file`, the
    /// system's store, the webpki roots), for relays to trust the same.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.inner.endpoint.tls.clone()
    }

    /// The server's Noise key, fetched once and shared by every identity.
    async fn server_key(&self, refresh: bool) -> Result<MachinePublic, ClientError> {
        let mut slot = self.inner.server_key.lock().await;
        if let (Some(key), false) = (*slot, refresh) {
            return Ok(key);
        }
        let key = self.inner.endpoint.fetch_server_key().await?;
        *slot = Some(key);
        Ok(key)
    }

    /// Starts the session of one identity.
    pub fn spawn_identity(
        &self,
        keys: IdentityKeys,
        options: IdentityOptions,
        auth: Arc<dyn AuthKeySource>,
    ) -> IdentityHandle {
        let (published, pending) = handle::channels(keys.clone());
        let session = supervisor::Session {
            rotator: Rotator::new(self.inner.rotation),
            client: self.clone(),
            keys,
            options,
            auth,
            published,
            backend_log_id: hex::encode(rand::random::<[u8; 16]>()),
        };
        pending.run(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_urls_are_checked() {
        assert!(ControlConfig::new("ftp://x", None).is_err());
        assert!(ControlConfig::new("http://127.0.0.1:1", None).is_ok());
    }

    /// Never asked: the session fails before it registers.
    struct UnusedKeys;

    #[tonic::async_trait]
    impl AuthKeySource for UnusedKeys {
        async fn auth_key(&self) -> Result<tailnet_auth::Secret, MintError> {
            Ok(tailnet_auth::Secret::new("unused"))
        }
    }

    /// Each retry of a session that cannot reach its server counts toward
    /// `tailnet_cni_control_reconnects_total`.
    #[tokio::test]
    async fn retries_are_counted_as_reconnects() {
        use std::sync::atomic::Ordering;
        use std::time::Duration;

        use crate::metrics::CONTROL_RECONNECTS;

        // A port nothing listens on: every connect is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let config =
            ControlConfig::new(&format!("http://127.0.0.1:{port}"), None).expect("a loopback URL");
        let client = ControlClient::new(config).expect("a client");
        let before = CONTROL_RECONNECTS.load(Ordering::Relaxed);
        let handle = client.spawn_identity(
            IdentityKeys::generate(),
            IdentityOptions::new("counted", vec![]),
            Arc::new(UnusedKeys),
        );
        let mut state = handle.state();
        tokio::time::timeout(
            Duration::from_secs(10),
            state.wait_for(|s| matches!(s, SessionState::Reconnecting { .. })),
        )
        .await
        .expect("the session retries")
        .expect("state channel");
        assert!(CONTROL_RECONNECTS.load(Ordering::Relaxed) > before);
        handle.shutdown();
    }
}
