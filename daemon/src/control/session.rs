//! One identity's life with the control server: register, hold the map long
//! poll, publish netmaps, reconnect with backoff, log out.
//!
//! Shared by every identity ([`ControlClient`]): the control URL, the TLS
//! configuration, the server's Noise key (fetched once), the peer interner.
//! Owned by each identity: its keys and its connection (the protocol binds a
//! connection to one machine key).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use url::Url;

use super::client::{ClientError, ControlConn};
use super::conn::Endpoint;
use super::keys::{DiscoPublic, MachinePublic, NodePublic, PrivateKey};
use super::netmap::{Interner, NetMap, SelfNode};
use super::tailcfg::{
    AuthInfo, Hostinfo, MapRequest, NetInfo, RegisterRequest, CAPABILITY_VERSION, ENDPOINT_LOCAL,
    LOGOUT_EXPIRY, ZERO_TIME,
};

/// The Go client gives up on a silent map poll after two minutes; servers
/// send keep-alives well within that.
const WATCHDOG: Duration = Duration::from_secs(120);
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control URL {url:?}: {reason}")]
    Config { url: String, reason: String },
    #[error("cannot read CA bundle {path}: {reason}")]
    CaBundle { path: PathBuf, reason: String },
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("control server refused registration: {0}")]
    Refused(String),
    #[error("no auth key: {0}")]
    AuthKey(String),
    #[error("timed out after {0:?}; last error: {1}")]
    Timeout(Duration, String),
    #[error("session stopped")]
    Stopped,
}

/// Mints an auth key when the control server wants one.
#[tonic::async_trait]
pub trait AuthKeySource: Send + Sync + 'static {
    /// A fresh key; the error text must not contain secrets.
    async fn auth_key(&self) -> Result<String, String>;
}

/// One identity's keys: persisted by the daemon (0600), never logged.
#[derive(Clone, Serialize, Deserialize)]
pub struct IdentityKeys {
    pub machine: PrivateKey,
    pub node: PrivateKey,
    pub disco: PrivateKey,
}

impl std::fmt::Debug for IdentityKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKeys")
            .field("node", &self.node_public())
            .finish_non_exhaustive()
    }
}

impl IdentityKeys {
    /// Fresh keys: pods never share a machine key.
    pub fn generate() -> Self {
        Self {
            machine: PrivateKey::generate(),
            node: PrivateKey::generate(),
            disco: PrivateKey::generate(),
        }
    }

    pub fn node_public(&self) -> NodePublic {
        NodePublic(self.node.public())
    }

    pub fn node_private_bytes(&self) -> [u8; 32] {
        self.node.to_bytes()
    }

    pub fn disco_private_bytes(&self) -> [u8; 32] {
        self.disco.to_bytes()
    }
}

#[derive(Debug, Clone)]
pub struct IdentityOptions {
    pub hostname: String,
    pub tags: Vec<String>,
    /// The node key is already known to the server (a restart): try to
    /// register without minting a key first.
    pub registered: bool,
}

impl IdentityOptions {
    pub fn new(hostname: &str, tags: Vec<String>) -> Self {
        Self {
            hostname: hostname.to_string(),
            tags,
            registered: false,
        }
    }

    pub fn resumed(mut self) -> Self {
        self.registered = true;
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    Registering,
    Connected,
    Reconnecting {
        attempt: u32,
        error: String,
    },
    /// The server refused the identity (bad or expired key): retried slowly.
    NeedsAuth {
        error: String,
    },
    LoggedOut,
    Stopped,
}

impl SessionState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Registering => "registering",
            Self::Connected => "connected",
            Self::Reconnecting { .. } => "reconnecting",
            Self::NeedsAuth { .. } => "needs_auth",
            Self::LoggedOut => "logged_out",
            Self::Stopped => "stopped",
        }
    }
}

/// Where to find the control server.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    url: Url,
    ca_file: Option<PathBuf>,
}

impl ControlConfig {
    pub fn new(url: &str, ca_file: Option<PathBuf>) -> Result<Self, ControlError> {
        let parsed = Url::parse(url).map_err(|e| ControlError::Config {
            url: url.into(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ControlError::Config {
                url: url.into(),
                reason: "must be http:// or https:// with a host".into(),
            });
        }
        Ok(Self {
            url: parsed,
            ca_file,
        })
    }
}

fn tls_config(ca_file: Option<&PathBuf>) -> Result<Arc<rustls::ClientConfig>, ControlError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| ControlError::CaBundle {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut reader = &pem[..];
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut reader) {
            let cert = cert.map_err(|e| ControlError::CaBundle {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| ControlError::CaBundle {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(ControlError::CaBundle {
                path: path.clone(),
                reason: "no PEM certificates".into(),
            });
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ControlError::Config {
            url: String::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
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
    /// Identifies this daemon's build in Hostinfo.
    version: String,
}

impl ControlClient {
    pub fn new(config: ControlConfig) -> Result<Self, ControlError> {
        let tls = tls_config(config.ca_file.as_ref())?;
        Ok(Self {
            inner: Arc::new(Shared {
                endpoint: Endpoint {
                    url: config.url,
                    tls,
                },
                server_key: tokio::sync::Mutex::new(None),
                interner: Interner::default(),
                version: format!("tailnet-cni-{}", env!("CARGO_PKG_VERSION")),
            }),
        })
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
        let (netmap_tx, netmap_rx) = watch::channel(None);
        let (state_tx, state_rx) = watch::channel(SessionState::Registering);
        let (commands_tx, commands_rx) = mpsc::channel(8);
        let endpoints = Arc::new(Mutex::new(Reported::default()));
        let session = Session {
            client: self.clone(),
            keys,
            options,
            auth,
            netmap_tx,
            state_tx,
            endpoints: endpoints.clone(),
            backend_log_id: hex::encode(rand::random::<[u8; 16]>()),
        };
        let task = tokio::spawn(session.run(commands_rx));
        IdentityHandle {
            netmap: netmap_rx,
            state: state_rx,
            commands: commands_tx,
            endpoints,
            task,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Reported {
    endpoints: Vec<SocketAddr>,
    preferred_derp: Option<u16>,
}

enum Command {
    EndpointsChanged,
    Logout(oneshot::Sender<Result<(), ControlError>>),
}

/// The daemon's handle on one identity's session.
pub struct IdentityHandle {
    netmap: watch::Receiver<Option<Arc<NetMap>>>,
    state: watch::Receiver<SessionState>,
    commands: mpsc::Sender<Command>,
    endpoints: Arc<Mutex<Reported>>,
    task: tokio::task::JoinHandle<()>,
}

impl IdentityHandle {
    /// Waits until the identity is registered and has its first netmap.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Arc<NetMap>, ControlError> {
        let mut netmap = self.netmap.clone();
        let mut state = self.state.clone();
        let wait = async {
            loop {
                if let Some(map) = netmap.borrow_and_update().clone() {
                    if map.self_node.is_some() {
                        return Ok(map);
                    }
                }
                match &*state.borrow_and_update() {
                    SessionState::NeedsAuth { error } => {
                        return Err(ControlError::Refused(error.clone()))
                    }
                    SessionState::Stopped | SessionState::LoggedOut => {
                        return Err(ControlError::Stopped)
                    }
                    _ => {}
                }
                tokio::select! {
                    changed = netmap.changed() => if changed.is_err() { return Err(ControlError::Stopped) },
                    changed = state.changed() => if changed.is_err() { return Err(ControlError::Stopped) },
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            Err(_) => {
                let last = match &*self.state.borrow() {
                    SessionState::Reconnecting { error, .. } => error.clone(),
                    other => format!("session {}", other.name()),
                };
                Err(ControlError::Timeout(timeout, last))
            }
        }
    }

    pub fn netmap(&self) -> watch::Receiver<Option<Arc<NetMap>>> {
        self.netmap.clone()
    }

    pub fn state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    pub fn state_name(&self) -> &'static str {
        self.state.borrow().name()
    }

    pub fn self_node(&self) -> Option<SelfNode> {
        let map = self.netmap.borrow();
        let node = map.as_ref()?.self_node.as_ref()?;
        Some(SelfNode::from_node(node))
    }

    /// Reports where the data plane can be reached; sent to the server now
    /// and with every later map request.
    pub fn set_endpoints(&self, endpoints: Vec<SocketAddr>, preferred_derp: Option<u16>) {
        self.reporter().report(endpoints, preferred_derp);
    }

    /// A cloneable way to report endpoints, for the task that watches the
    /// data plane.
    pub fn reporter(&self) -> EndpointReporter {
        EndpointReporter {
            endpoints: self.endpoints.clone(),
            commands: self.commands.clone(),
        }
    }

    /// Expires the node key at the server and ends the session.
    pub async fn logout(self) -> Result<(), ControlError> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Logout(tx)).await.is_err() {
            return Err(ControlError::Stopped);
        }
        let result = tokio::time::timeout(Duration::from_secs(15), rx)
            .await
            .map_err(|_| ControlError::Timeout(Duration::from_secs(15), "logout".into()))?
            .unwrap_or(Err(ControlError::Stopped));
        self.task.abort();
        result
    }

    /// Ends the session and keeps the node registered (daemon shutdown).
    pub fn shutdown(self) {
        self.task.abort();
    }
}

/// Sends the data plane's endpoints to the identity's session.
#[derive(Clone)]
pub struct EndpointReporter {
    endpoints: Arc<Mutex<Reported>>,
    commands: mpsc::Sender<Command>,
}

impl EndpointReporter {
    pub fn report(&self, endpoints: Vec<SocketAddr>, preferred_derp: Option<u16>) {
        let new = Reported {
            endpoints,
            preferred_derp,
        };
        {
            let mut current = self
                .endpoints
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *current == new {
                return;
            }
            *current = new;
        }
        let _ = self.commands.try_send(Command::EndpointsChanged);
    }
}

struct Session {
    client: ControlClient,
    keys: IdentityKeys,
    options: IdentityOptions,
    auth: Arc<dyn AuthKeySource>,
    netmap_tx: watch::Sender<Option<Arc<NetMap>>>,
    state_tx: watch::Sender<SessionState>,
    endpoints: Arc<Mutex<Reported>>,
    backend_log_id: String,
}

enum Exit {
    LoggedOut,
}

/// Why one connection's session ended.
enum Failure {
    /// Worth retrying soon (network, server restart).
    Transient(String),
    /// The server refused us: retried, but slowly.
    Refused(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Transient(e.to_string())
    }
}

fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(10));
    let cap = exp.min(BACKOFF_CAP);
    // Full jitter: hundreds of identities reconnecting after a control
    // server restart must not arrive in lockstep.
    let millis = rand::thread_rng().gen_range(cap.as_millis() as u64 / 4..=cap.as_millis() as u64);
    Duration::from_millis(millis)
}

impl Session {
    fn hostinfo(&self) -> Hostinfo {
        let reported = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Hostinfo {
            ipn_version: self.client.inner.version.clone(),
            backend_log_id: self.backend_log_id.clone(),
            os: "linux".into(),
            hostname: self.options.hostname.clone(),
            app: "tailnet-cni".into(),
            request_tags: self.options.tags.clone(),
            net_info: reported.preferred_derp.map(|region| NetInfo {
                preferred_derp: i64::from(region),
            }),
        }
    }

    fn map_request(&self, stream: bool) -> MapRequest {
        let reported = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        MapRequest {
            version: CAPABILITY_VERSION,
            compress: if stream { "zstd".into() } else { String::new() },
            keep_alive: stream,
            node_key: self.keys.node_public().to_string(),
            disco_key: DiscoPublic(self.keys.disco.public()).to_string(),
            endpoint_types: vec![ENDPOINT_LOCAL; reported.endpoints.len()],
            endpoints: reported.endpoints.iter().map(ToString::to_string).collect(),
            stream,
            hostinfo: self.hostinfo(),
            omit_peers: !stream,
        }
    }

    fn register_request(&self, auth_key: Option<String>, expiry: &str) -> RegisterRequest {
        RegisterRequest {
            version: CAPABILITY_VERSION,
            node_key: self.keys.node_public().to_string(),
            old_node_key: NodePublic([0; 32]).to_string(),
            auth: auth_key.map(|auth_key| AuthInfo { auth_key }),
            expiry: expiry.into(),
            followup: String::new(),
            hostinfo: self.hostinfo(),
            ephemeral: false,
            node_key_signature: None,
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut attempt: u32 = 0;
        loop {
            let result = self.connect_and_poll(&mut commands, &mut attempt).await;
            let (delay, state) = match result {
                Ok(Exit::LoggedOut) => {
                    let _ = self.state_tx.send(SessionState::LoggedOut);
                    return;
                }
                Err(Failure::Transient(error)) => {
                    attempt = attempt.saturating_add(1);
                    warn!(hostname = %self.options.hostname, attempt, %error, "control session lost; reconnecting");
                    (
                        backoff(attempt),
                        SessionState::Reconnecting { attempt, error },
                    )
                }
                Err(Failure::Refused(error)) => {
                    warn!(hostname = %self.options.hostname, %error, "control server refused the identity");
                    (BACKOFF_CAP, SessionState::NeedsAuth { error })
                }
            };
            let _ = self.state_tx.send(state);
            // Wait out the backoff, but answer a logout at once.
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    command = commands.recv() => match command {
                        None => return,
                        Some(Command::EndpointsChanged) => {}
                        Some(Command::Logout(reply)) => {
                            let result = self.logout_once().await;
                            let _ = reply.send(result);
                            let _ = self.state_tx.send(SessionState::LoggedOut);
                            return;
                        }
                    },
                }
            }
        }
    }

    async fn open(&self) -> Result<ControlConn, Failure> {
        let endpoint = &self.client.inner.endpoint;
        let server = self.client.server_key(false).await?;
        let (stream, early) = match endpoint.upgrade(&self.keys.machine, &server).await {
            Ok(ok) => ok,
            Err(e) => {
                // The server may have a new key: fetch it again next time.
                let _ = self.client.server_key(true).await;
                return Err(Failure::Transient(e.to_string()));
            }
        };
        if let Some(early) = early {
            debug!(bytes = early.len(), "control early payload");
        }
        Ok(ControlConn::handshake(endpoint, stream).await?)
    }

    async fn register(&mut self, conn: &mut ControlConn) -> Result<(), Failure> {
        let mut sent_key = false;
        let mut auth_key = None;
        if !self.options.registered {
            auth_key = Some(
                self.auth
                    .auth_key()
                    .await
                    .map_err(|e| Failure::Refused(format!("minting an auth key: {e}")))?,
            );
            sent_key = true;
        }
        loop {
            let response =
                match conn
                    .register(&self.register_request(auth_key.take(), ZERO_TIME))
                    .await
                {
                    Ok(response) => response,
                    // rscale answers a bad or expired key with 401/403 rather
                    // than a RegisterResponse.Error.
                    Err(ClientError::Status {
                        status: 401 | 403,
                        body,
                        ..
                    }) if sent_key => {
                        return Err(Failure::Refused(body));
                    }
                    Err(ClientError::Status {
                        status: 401 | 403, ..
                    }) => {
                        auth_key =
                            Some(self.auth.auth_key().await.map_err(|e| {
                                Failure::Refused(format!("minting an auth key: {e}"))
                            })?);
                        sent_key = true;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
            let authorized = response.error.is_empty()
                && response.machineauthorized
                && response.authurl.is_empty()
                && !response.nodekeyexpired;
            if authorized {
                self.options.registered = true;
                return Ok(());
            }
            if !sent_key {
                // The server does not know (or no longer trusts) this node
                // key: register again with a fresh auth key.
                debug!(hostname = %self.options.hostname, "server wants an auth key");
                auth_key = Some(
                    self.auth
                        .auth_key()
                        .await
                        .map_err(|e| Failure::Refused(format!("minting an auth key: {e}")))?,
                );
                sent_key = true;
                continue;
            }
            let reason = if !response.error.is_empty() {
                response.error
            } else if response.nodekeyexpired {
                "node key expired".into()
            } else if !response.authurl.is_empty() {
                "the auth key was not accepted (server asks for interactive login)".into()
            } else {
                "machine not authorized".into()
            };
            return Err(Failure::Refused(reason));
        }
    }

    async fn connect_and_poll(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        attempt: &mut u32,
    ) -> Result<Exit, Failure> {
        let mut conn = self.open().await?;
        self.register(&mut conn).await?;
        let mut stream = conn.map_stream(&self.map_request(true)).await?;
        let mut netmap = NetMap::default();
        loop {
            tokio::select! {
                message = tokio::time::timeout(WATCHDOG, stream.next()) => {
                    let message = message
                        .map_err(|_| Failure::Transient("map poll silent for 120 s".into()))??;
                    if message.is_keep_alive_only() {
                        continue;
                    }
                    let change = netmap.apply(message, &self.client.inner.interner);
                    if change.any() || self.netmap_tx.borrow().is_none() {
                        let first = self.netmap_tx.borrow().is_none();
                        self.netmap_tx.send_replace(Some(Arc::new(netmap.clone())));
                        if first || *attempt > 0 {
                            info!(hostname = %self.options.hostname, peers = netmap.peers.len(), "netmap received");
                        }
                    }
                    *attempt = 0;
                    if *self.state_tx.borrow() != SessionState::Connected {
                        let _ = self.state_tx.send(SessionState::Connected);
                    }
                }
                command = commands.recv() => match command {
                    None => return Err(Failure::Transient("handle dropped".into())),
                    Some(Command::EndpointsChanged) => {
                        if let Err(error) = conn.update(&self.map_request(false)).await {
                            warn!(%error, "endpoint update failed");
                        }
                    }
                    Some(Command::Logout(reply)) => {
                        let result = conn
                            .register(&self.register_request(None, LOGOUT_EXPIRY))
                            .await
                            .map(|_| ())
                            .map_err(ControlError::from);
                        let _ = reply.send(result);
                        return Ok(Exit::LoggedOut);
                    }
                },
            }
        }
    }

    async fn logout_once(&self) -> Result<(), ControlError> {
        let mut conn = match self.open().await {
            Ok(conn) => conn,
            Err(Failure::Transient(e)) | Err(Failure::Refused(e)) => {
                return Err(ControlError::Refused(e))
            }
        };
        conn.register(&self.register_request(None, LOGOUT_EXPIRY))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempt in 0..20 {
            let d = backoff(attempt);
            assert!(d <= BACKOFF_CAP);
        }
        assert!(backoff(1) <= Duration::from_secs(1));
        let late: Vec<Duration> = (0..20).map(|_| backoff(15)).collect();
        assert!(late.iter().all(|d| *d >= BACKOFF_CAP / 4));
        assert!(late.windows(2).any(|w| w[0] != w[1]), "no jitter");
    }

    #[test]
    fn keys_debug_shows_only_the_public_node_key() {
        let keys = IdentityKeys::generate();
        let shown = format!("{keys:?}");
        assert!(shown.contains("nodekey["), "{shown}");
        assert!(!shown.contains(&hex::encode(keys.node.to_bytes())));
        let json = serde_json::to_string(&keys).unwrap();
        let back: IdentityKeys = serde_json::from_str(&json).unwrap();
        assert_eq!(back.node_public(), keys.node_public());
    }

    #[test]
    fn control_urls_are_checked() {
        assert!(ControlConfig::new("ftp://x", None).is_err());
        assert!(ControlConfig::new("http://127.0.0.1:1", None).is_ok());
    }
}
