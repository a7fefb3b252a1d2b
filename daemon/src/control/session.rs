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
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use url::Url;

use super::client::{ClientError, ControlConn};
use super::conn::Endpoint;
use super::identity::{IdentityKeys, KeyStore};
use super::keys::{DiscoPublic, MachinePublic};
use super::netmap::{Interner, NetMap, SelfNode};
use super::rotation::{self, KeyState, Reason, RotationPolicy, Rotator, Verdict};
use super::tailcfg::{
    AuthInfo, Hostinfo, MapRequest, NetInfo, RegisterRequest, RegisterResponse, CAPABILITY_VERSION,
    ENDPOINT_LOCAL, LOGOUT_EXPIRY, ZERO_TIME,
};
use super::tls::{self, TlsSetupError};

/// The Go client gives up on a silent map poll after two minutes; servers
/// send keep-alives well within that.
const WATCHDOG: Duration = Duration::from_secs(120);
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control URL {url:?}: {reason}")]
    Config { url: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
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
    rotation: RotationPolicy,
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
        let (keys_tx, keys_rx) = watch::channel(keys.clone());
        let endpoints = Arc::new(Mutex::new(Reported::default()));
        let session = Session {
            rotator: Rotator::new(self.inner.rotation),
            client: self.clone(),
            keys,
            keys_tx,
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
            keys: keys_rx,
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
    keys: watch::Receiver<IdentityKeys>,
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

    /// The identity's keys as the server last confirmed them: changes when
    /// the node key is rotated, so the data plane can follow.
    pub fn keys(&self) -> watch::Receiver<IdentityKeys> {
        self.keys.clone()
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
    /// The keys in use, possibly with a rotation pending.
    keys: IdentityKeys,
    /// The keys the server confirmed, for the data plane.
    keys_tx: watch::Sender<IdentityKeys>,
    rotator: Rotator,
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

/// Why a map poll ended without an error.
enum Polled {
    LoggedOut,
    Rotate(Reason),
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

/// The server's answer to one registration.
#[derive(Debug)]
enum Answer {
    Response(RegisterResponse),
    /// HTTP 401/403: rscale answers a bad or expired auth key, or a node key
    /// it does not know, this way rather than with `RegisterResponse.Error`.
    Denied {
        status: u16,
        body: String,
    },
}

/// What a registration does next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Accepted,
    /// Present a new node key (`OldNodeKey` = the current one).
    NewNodeKey,
    /// Register again with a fresh auth key.
    SendAuthKey,
    Refused(String),
}

/// The registration protocol's decisions, as Go's client makes them:
/// `sent_key` says whether this attempt carried an auth key, `regenerated`
/// whether a new node key was already tried.
fn next_step(answer: Answer, sent_key: bool, regenerated: bool) -> Step {
    let response = match answer {
        Answer::Denied { status, body } if sent_key => {
            return Step::Refused(format!("HTTP {status}: {body}"))
        }
        Answer::Denied { .. } => return Step::SendAuthKey,
        Answer::Response(response) => response,
    };
    if response.error.is_empty() && response.nodekeyexpired {
        // The key presented is expired: present a new one, once; a new key
        // reported expired too means the server will take none.
        return if regenerated {
            Step::Refused("the control server reports even a new node key as expired".into())
        } else {
            Step::NewNodeKey
        };
    }
    if response.error.is_empty() && response.machineauthorized && response.authurl.is_empty() {
        return Step::Accepted;
    }
    if !sent_key {
        // The server does not know (or no longer trusts) this node key.
        return Step::SendAuthKey;
    }
    Step::Refused(if !response.error.is_empty() {
        response.error
    } else if !response.authurl.is_empty() {
        "the auth key was not accepted (server asks for interactive login)".into()
    } else {
        "machine not authorized".into()
    })
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
            old_node_key: self.keys.old_node_public().to_string(),
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

    async fn mint(&self) -> Result<String, Failure> {
        self.auth
            .auth_key()
            .await
            .map_err(|e| Failure::Refused(format!("minting an auth key: {e}")))
    }

    /// `RegisterRequest.Expiry` for a normal registration.
    fn expiry(&self) -> String {
        match self.rotator.requested_expiry(SystemTime::now()) {
            Some(at) => rotation::format_time(at),
            None => ZERO_TIME.to_string(),
        }
    }

    /// Phase one of a rotation: the new key is on disk before any server
    /// sees it.
    fn begin_rotation(&mut self, reason: &Reason) -> Result<(), Failure> {
        let Some(rotated) = self.keys.begin_rotation() else {
            return Err(Failure::Refused(format!(
                "{reason} while a key rotation is still unconfirmed"
            )));
        };
        if let Some(store) = &self.options.key_store {
            store
                .save(&rotated)
                .map_err(|e| Failure::Transient(format!("saving the rotated node key: {e}")))?;
        }
        info!(
            hostname = %self.options.hostname,
            %reason,
            old = ?self.keys.node_public(),
            new = ?rotated.node_public(),
            "rotating the node key"
        );
        self.keys = rotated;
        Ok(())
    }

    /// The server accepted `self.keys.node`: forget the old key and hand
    /// the new one to the data plane.
    fn confirm_keys(&mut self) {
        self.rotator.registered(SystemTime::now());
        if self.keys.finish_rotation() {
            info!(hostname = %self.options.hostname, node = ?self.keys.node_public(), "node key rotated");
            if let Some(store) = &self.options.key_store {
                // Not fatal: a file that still names the old key makes the
                // next start send it as OldNodeKey, which servers accept.
                if let Err(error) = store.save(&self.keys) {
                    warn!(hostname = %self.options.hostname, %error, "could not drop the old node key from disk");
                }
            }
        }
        let stale = {
            let published = self.keys_tx.borrow();
            published.node_public() != self.keys.node_public() || published.old_node.is_some()
        };
        if stale {
            self.keys_tx.send_replace(self.keys.clone());
        }
    }

    async fn register(&mut self, conn: &mut ControlConn) -> Result<(), Failure> {
        let mut sent_key = false;
        let mut auth_key = None;
        let mut regenerated = false;
        if !self.options.registered {
            auth_key = Some(self.mint().await?);
            sent_key = true;
        }
        loop {
            let request = self.register_request(auth_key.take(), &self.expiry());
            let answer = match conn.register(&request).await {
                Ok(response) => Answer::Response(response),
                Err(ClientError::Status {
                    status: status @ (401 | 403),
                    body,
                    ..
                }) => Answer::Denied { status, body },
                Err(e) => return Err(e.into()),
            };
            match next_step(answer, sent_key, regenerated) {
                Step::Accepted => {
                    self.options.registered = true;
                    self.confirm_keys();
                    return Ok(());
                }
                Step::NewNodeKey => {
                    self.begin_rotation(&Reason::ServerSaysExpired)?;
                    regenerated = true;
                }
                Step::SendAuthKey => {
                    debug!(hostname = %self.options.hostname, "server wants an auth key");
                    auth_key = Some(self.mint().await?);
                    sent_key = true;
                }
                Step::Refused(reason) => return Err(Failure::Refused(reason)),
            }
        }
    }

    async fn connect_and_poll(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        attempt: &mut u32,
    ) -> Result<Exit, Failure> {
        let mut conn = self.open().await?;
        loop {
            self.register(&mut conn).await?;
            match self.poll(&mut conn, commands, attempt).await? {
                Polled::LoggedOut => return Ok(Exit::LoggedOut),
                // Same connection: it is bound to the machine key, which
                // a rotation keeps.
                Polled::Rotate(reason) => self.begin_rotation(&reason)?,
            }
        }
    }

    /// What the rotation policy says about the self node of `netmap`.
    fn assess(&self, netmap: &NetMap) -> Verdict {
        match &netmap.self_node {
            Some(node) => self.rotator.assess(
                &KeyState {
                    key: &node.key,
                    expired: node.expired,
                    key_expiry: &node.keyexpiry,
                },
                &self.keys.node_public().to_string(),
                SystemTime::now(),
            ),
            None => Verdict::Keep { recheck_in: None },
        }
    }

    async fn poll(
        &mut self,
        conn: &mut ControlConn,
        commands: &mut mpsc::Receiver<Command>,
        attempt: &mut u32,
    ) -> Result<Polled, Failure> {
        let mut stream = conn.map_stream(&self.map_request(true)).await?;
        let mut netmap = NetMap::default();
        // When the key enters its renewal window, if it has an expiry.
        let mut renew_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let renew_due = async {
                match renew_timer.as_mut() {
                    Some(timer) => timer.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            let mut check_key = false;
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
                    check_key = change.self_node;
                }
                () = renew_due => check_key = true,
                command = commands.recv() => match command {
                    None => return Err(Failure::Transient("handle dropped".into())),
                    Some(Command::EndpointsChanged) => {
                        // The new set is recorded already and would not be
                        // reported again: reconnect, and the next poll
                        // carries it.
                        if let Err(error) = conn.update(&self.map_request(false)).await {
                            return Err(Failure::Transient(format!(
                                "endpoint update failed: {error}"
                            )));
                        }
                    }
                    Some(Command::Logout(reply)) => {
                        let result = conn
                            .register(&self.register_request(None, LOGOUT_EXPIRY))
                            .await
                            .map(|_| ())
                            .map_err(ControlError::from);
                        let _ = reply.send(result);
                        return Ok(Polled::LoggedOut);
                    }
                },
            }
            if !check_key {
                continue;
            }
            match self.assess(&netmap) {
                Verdict::Keep { recheck_in } => {
                    renew_timer = recheck_in.map(|wait| Box::pin(tokio::time::sleep(wait)));
                }
                Verdict::Rotate(reason) => {
                    if let Some(node) = &netmap.self_node {
                        self.rotator.rotating(node.expired, &node.keyexpiry);
                    }
                    return Ok(Polled::Rotate(reason));
                }
                Verdict::Stuck(error) => return Err(Failure::Refused(error)),
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

    fn response(json: &str) -> Answer {
        Answer::Response(crate::control::json::from_slice(json.as_bytes()).unwrap())
    }

    #[test]
    fn registration_steps_follow_the_protocol() {
        let ok = r#"{"MachineAuthorized": true}"#;
        assert_eq!(next_step(response(ok), false, false), Step::Accepted);
        assert_eq!(next_step(response(ok), true, true), Step::Accepted);

        // An expired key is replaced once, with or without an auth key.
        let expired = r#"{"NodeKeyExpired": true}"#;
        assert_eq!(next_step(response(expired), false, false), Step::NewNodeKey);
        assert_eq!(next_step(response(expired), true, false), Step::NewNodeKey);
        assert!(matches!(
            next_step(response(expired), false, true),
            Step::Refused(r) if r.contains("even a new node key")
        ));

        // Unknown key without an auth key: send one; with one: refused.
        let denied = || Answer::Denied {
            status: 401,
            body: "unauthorized: invalid or expired auth key".into(),
        };
        assert_eq!(next_step(denied(), false, false), Step::SendAuthKey);
        assert_eq!(
            next_step(denied(), true, false),
            Step::Refused("HTTP 401: unauthorized: invalid or expired auth key".into())
        );

        // Interactive login or an unauthorized machine.
        let url = r#"{"AuthURL": "https://login.example/a"}"#;
        assert_eq!(next_step(response(url), false, false), Step::SendAuthKey);
        assert!(matches!(
            next_step(response(url), true, false),
            Step::Refused(r) if r.contains("interactive login")
        ));
        let pending = r#"{"MachineAuthorized": false}"#;
        assert!(matches!(
            next_step(response(pending), true, false),
            Step::Refused(r) if r.contains("not authorized")
        ));

        // The server's own error wins over everything else.
        let error = r#"{"Error": "node limit reached", "NodeKeyExpired": true}"#;
        assert_eq!(
            next_step(response(error), true, false),
            Step::Refused("node limit reached".into())
        );
    }

    #[test]
    fn control_urls_are_checked() {
        assert!(ControlConfig::new("ftp://x", None).is_err());
        assert!(ControlConfig::new("http://127.0.0.1:1", None).is_ok());
    }
}
