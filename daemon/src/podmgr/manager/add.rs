//! CNI ADD: the steps that put a pod on the tailnet, each recorded before
//! the next begins, and the undo of all of them when one fails.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use tailnet_cni_proto::cni_code;
use tailnet_cni_proto::v1::{AddRequest, AddResponse, IpConfig, Route};
use tracing::{debug, info, warn};

use super::register::wait_registered;
use super::release::ReleaseBy;
use super::seams::{
    AttachSpec, Backends, ControlPlane, DataPlane, Plumbing, PodAttachment, PodSession, Records,
    SessionSpec,
};
use super::step_clock::{Step, StepClock};
use super::{lock, now_secs, AttachmentOf, BoundIdentity, LivePod, PodManager, SessionOf};
use crate::control::{IdentityKeys, SelfNode};
use crate::k8s::PodRef;
use crate::podmgr::dataplane::AttachError;
use crate::podmgr::faults;
use crate::podmgr::hostname::pod_hostname;
use crate::podmgr::keyfile::write_keys;
use crate::podmgr::naming::{validate_container_id, validate_if_name};
use crate::podmgr::peer_routes::RoutePrefs;
use crate::podmgr::plumbing::{PlumbError, PodNet, PodNetSpec, PodRouteTarget};
use crate::podmgr::state::{PodPhase, PodRecord, SessionPeersFile, RECORD_VERSION};
use crate::podmgr::sync::PodRouting;
use crate::rpc::CniError;
use crate::selection::Decision;
use crate::wg::{HomeRelay, WarmRelay};

/// How long an ADD waits for the pod's home relay connection. Peers learn
/// of a new pod from control at once and send their first handshake through
/// its home relay, which drops it if the pod is not connected yet; WireGuard
/// retries only after 5 s. A relay slower than this is not fatal: the ADD
/// succeeds and the pod becomes reachable when the link comes up.
const HOME_RELAY_WAIT: Duration = Duration::from_secs(3);
/// How long an ADD waits for the data plane to take the pod's first netmap
/// (which the session already has: registration waited for it).
const NETMAP_APPLIED_WAIT: Duration = Duration::from_secs(2);

/// Routes the pod gets for the tailnet ranges, as reported to the runtime.
const TAILNET_ROUTES: [&str; 2] = ["100.64.0.0/10", "fd7a:115c:a1e0::/48"];

impl<B: Backends> PodManager<B> {
    pub(super) async fn do_add(&self, req: AddRequest) -> Result<AddResponse, CniError> {
        // The pool fills only while no ADD is being served.
        let _serving = self.pool.serving();
        let mut clock = StepClock::start();
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
        // The runtime's own annotations, when it passed them, are for exactly
        // this sandbox; otherwise the Kubernetes API says (with a UID check).
        let selected = match &req.annotations {
            Some(runtime) => {
                let annotations: BTreeMap<String, String> = runtime
                    .entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                self.selector
                    .select_from_runtime(&pod.namespace, &pod.name, &annotations)
                    .await
            }
            None => {
                self.selector
                    .select(&pod.namespace, &pod.name, &pod.uid)
                    .await
            }
        };
        let decision = selected.map_err(|e| {
            let code = if e.is_permanent() {
                cni_code::INVALID_CONFIG
            } else {
                cni_code::TRY_AGAIN_LATER
            };
            CniError::new(code, e.to_string())
        })?;
        let Decision::Join {
            hostname,
            tags,
            routes,
        } = decision
        else {
            debug!("pod not selected for the tailnet");
            return Ok(AddResponse::default());
        };
        clock.lap(Step::Select);

        let _guard = self.locks.lock(&pod.container_id).await;
        // A runtime never ADDs a container twice without a DEL; a record here
        // is what a failed or interrupted earlier attempt left: clear it.
        if let Ok(Some(stale)) = self.records.load(&pod.container_id) {
            warn!("clearing state of an earlier attempt for this container");
            if let Err(errors) = self.release(stale, ReleaseBy::Daemon).await {
                warn!(%errors, "the earlier attempt is not fully undone");
            }
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
            version: RECORD_VERSION,
            container_id: pod.container_id.clone(),
            netns: PathBuf::from(&pod.netns),
            if_name: pod.if_name.clone(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            hostname,
            tags: tags.clone(),
            ipv4: None,
            ipv6: None,
            pod_net: None,
            identity_file: None,
            node_id: None,
            stable_id: None,
            routes,
            state: PodPhase::Pending,
            created_at: now_secs(),
        };
        self.save(&record)?;
        faults::point("add:pending-saved");
        clock.lap(Step::Record);

        let pod_ref = PodRef {
            namespace: record.namespace.clone(),
            name: record.name.clone(),
            uid: record.uid.clone(),
        };
        match self.bring_up(&mut record, tags, mtu, &mut clock).await {
            Ok(response) => {
                let addresses: Vec<IpAddr> = response
                    .ips
                    .iter()
                    .filter_map(|ip| ip.address.split('/').next()?.parse().ok())
                    .collect();
                self.reports()
                    .joined(&pod_ref, &response.hostname, &addresses);
                Ok(response)
            }
            Err(error) => {
                self.reports().failed(&pod_ref, error.code);
                warn!(%error, "ADD failed; undoing what it did");
                self.metrics.registrations_failed.inc();
                if let Err(errors) = self.release(record, ReleaseBy::Daemon).await {
                    warn!(%errors, "undo incomplete; reconcile retries");
                }
                Err(error)
            }
        }
    }

    /// The ADD steps after the record exists. On error the caller releases
    /// whatever the record says was done; what the record cannot say (a
    /// session, an attachment) is stopped here.
    async fn bring_up(
        &self,
        record: &mut PodRecord,
        tags: Vec<String>,
        mtu: u32,
        clock: &mut StepClock,
    ) -> Result<AddResponse, CniError> {
        // 1-2. A registered identity from the pool, else a new one.
        let BoundIdentity {
            keys,
            session,
            relay,
        } = match self.bind_pooled(record, &tags)? {
            Some(bound) => {
                clock.pooled = true;
                bound
            }
            None => self.register_new(record, tags).await?,
        };
        clock.lap(Step::Identity);

        // 3. Devices, addresses, routes, rules.
        let pod_net = match self.plumb(record, mtu).await {
            Ok(pod_net) => pod_net,
            Err(e) => {
                session.shutdown();
                return Err(e);
            }
        };

        clock.lap(Step::Plumb);

        // 4. Data plane.
        let data = match self.attach(record, &pod_net, &keys, &session, relay) {
            Ok(data) => data,
            Err(e) => {
                session.shutdown();
                return Err(CniError::new(cni_code::PLUMBING_FAILURE, e.to_string()));
            }
        };
        clock.lap(Step::Attach);
        faults::point("add:attached");
        record.state = PodPhase::Running;
        if let Err(e) = self.save(record) {
            if let Err(error) = data.detach().await {
                debug!(%error, "data plane already gone");
            }
            session.shutdown();
            return Err(e);
        }
        faults::point("add:running-saved");
        let data = std::sync::Arc::new(data);
        lock(&self.live).insert(
            record.container_id.clone(),
            LivePod {
                session,
                data: data.clone(),
            },
        );
        let relay = data.wait_home_relay(HOME_RELAY_WAIT).await;
        clock.lap(Step::HomeRelay);
        // Until the pod's task has its peers it drops their packets, and a
        // peer whose first handshake is lost waits five seconds to retry.
        let netmap_applied = data.wait_netmap_applied(NETMAP_APPLIED_WAIT).await;
        clock.lap(Step::Netmap);
        clock.report(&record.hostname);
        if !matches!(relay, HomeRelay::Connected | HomeRelay::Absent) {
            warn!(
                hostname = %record.hostname,
                state = ?relay,
                "home relay not connected yet; peers' first packets may be lost until it is"
            );
        }
        if !netmap_applied {
            warn!(
                hostname = %record.hostname,
                "the data plane has no netmap yet; peers' first packets are dropped until it has"
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

    /// A new identity: keys on disk before anything can register them,
    /// then its registration and first netmap.
    async fn register_new(
        &self,
        record: &mut PodRecord,
        tags: Vec<String>,
    ) -> Result<BoundIdentity<SessionOf<B>>, CniError> {
        let keys = IdentityKeys::generate();
        let key_file = self
            .records
            .identity_path(&record.container_id)
            .map_err(|e| CniError::new(cni_code::IO_FAILURE, e.to_string()))?;
        write_keys(&key_file, &keys)
            .map_err(|e| CniError::new(cni_code::IO_FAILURE, e.to_string()))?;
        record.identity_file = Some(key_file.clone());
        self.save(record)?;
        faults::point("add:keys-saved");
        let session = self.register(record, &keys, key_file, tags).await?;
        Ok(BoundIdentity {
            keys,
            session,
            relay: None,
        })
    }

    /// Starts the identity's session and waits for its registration; records
    /// the node and its addresses. On error the session is stopped, and the
    /// node (if control named one) is left in `record` for the release.
    async fn register(
        &self,
        record: &mut PodRecord,
        keys: &IdentityKeys,
        key_file: PathBuf,
        tags: Vec<String>,
    ) -> Result<SessionOf<B>, CniError> {
        let session = {
            let _permit = self
                .registrations
                .acquire()
                .await
                .map_err(|_| CniError::new(cni_code::TRY_AGAIN_LATER, "daemon is stopping"))?;
            let session = self.control.start_session(
                keys.clone(),
                SessionSpec {
                    hostname: record.hostname.clone(),
                    tags,
                    key_file,
                    resumed: false,
                },
            );
            if let Err(error) = wait_registered(&session, &record.hostname).await {
                if let Some(node) = session.self_node() {
                    record.node_id = Some(node.id);
                    record.stable_id = Some(node.stable_id.clone());
                }
                session.shutdown();
                return Err(error);
            }
            session
        };
        let Some(node) = session.self_node() else {
            session.shutdown();
            return Err(CniError::new(
                cni_code::CONTROL_FAILURE,
                "control server sent no self node",
            ));
        };
        self.save_registered(record, &node, session)
    }

    /// Records `node` and its addresses as the pod's (phase Registered) and
    /// hands `session` back; on error the session is stopped and the node
    /// left in `record` for the release.
    pub(super) fn save_registered(
        &self,
        record: &mut PodRecord,
        node: &SelfNode,
        session: SessionOf<B>,
    ) -> Result<SessionOf<B>, CniError> {
        record.node_id = Some(node.id);
        record.stable_id = Some(node.stable_id.clone());
        record.ipv4 = node.ipv4;
        record.ipv6 = node.ipv6;
        record.state = PodPhase::Registered;
        if let Err(e) = self.save(record) {
            session.shutdown();
            return Err(e);
        }
        faults::point("add:registered");
        if record.ipv4.is_none() && record.ipv6.is_none() {
            session.shutdown();
            return Err(CniError::new(
                cni_code::CONTROL_FAILURE,
                "control server assigned no tailnet address",
            ));
        }
        Ok(session)
    }

    /// Builds the pod's devices in a fresh routing table and records them.
    async fn plumb(&self, record: &mut PodRecord, mtu: u32) -> Result<PodNet, CniError> {
        let table = self
            .tables
            .allocate()
            .map_err(|e| CniError::new(cni_code::PLUMBING_FAILURE, e.to_string()))?;
        let spec = spec_of(record, mtu);
        let _gate = self.sweep_gate.read().await;
        match self.plumbing.setup(&spec, table).await {
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
                    PlumbError::InterfaceExists { .. } => cni_code::INVALID_CONFIG,
                    _ => cni_code::PLUMBING_FAILURE,
                };
                Err(CniError::new(
                    code,
                    format!("setting up the pod's interfaces: {e}"),
                ))
            }
        }
    }

    /// Attaches the pod to the engine, fed by `session`.
    pub(super) fn attach(
        &self,
        record: &PodRecord,
        pod_net: &PodNet,
        keys: &IdentityKeys,
        session: &SessionOf<B>,
        relay: Option<WarmRelay>,
    ) -> Result<AttachmentOf<B>, AttachError> {
        // What was plumbed: without IPv6 on the node the pod has no fd7a address.
        let addresses: Vec<IpAddr> = pod_net
            .ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(pod_net.ipv6.map(IpAddr::V6))
            .collect();
        let node_routes =
            RoutePrefs::node_default(self.config.accept_routes, self.config.exit_node.as_deref());
        let spec = AttachSpec {
            pod_id: record.container_id.clone(),
            hostname: record.hostname.clone(),
            tun_name: pod_net.tun_name.clone(),
            addresses,
            routing: PodRouting {
                prefs: record.routes.resolve(&node_routes),
                pod: Some(PodRouteTarget::of(record.netns.clone(), pod_net)),
            },
            session_peers: SessionPeersFile::of(&self.config.state_dir, &record.container_id)?,
        };
        self.engine.attach(spec, keys, session, relay)
    }
}

/// What the plumbing is asked to build (or to find) for `record`.
pub(super) fn spec_of(record: &PodRecord, mtu: u32) -> PodNetSpec {
    PodNetSpec {
        container_id: record.container_id.clone(),
        netns_path: record.netns.clone(),
        if_name: record.if_name.clone(),
        mtu,
        ipv4: record.ipv4,
        ipv6: record.ipv6,
    }
}

/// The pod's addresses as CIDR strings, as the runtime sees them.
pub(super) fn host_cidrs(ipv4: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>) -> Vec<String> {
    ipv4.map(|a| format!("{a}/32"))
        .into_iter()
        .chain(ipv6.map(|a| format!("{a}/128")))
        .collect()
}

/// The CNI result: the addresses and routes that were plumbed, so a pod on
/// a node without IPv6 is not told it has an fd7a address.
fn add_response(record: &PodRecord, pod_net: &PodNet) -> AddResponse {
    let ips = host_cidrs(pod_net.ipv4, pod_net.ipv6)
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
                pod_net.ipv6.is_some()
            } else {
                pod_net.ipv4.is_some()
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
