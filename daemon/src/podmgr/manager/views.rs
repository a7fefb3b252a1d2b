//! What `tailnet-cnid status`, CNI STATUS and `/metrics` show, read without
//! waiting for any pod operation.

use std::collections::BTreeMap;
use std::sync::PoisonError;

use tailnet_cni_proto::v1::{ListPodsResponse, PodStatus, StatusResponse};

use super::seams::{Backends, PodAttachment, PodSession};
use super::{lock, PodManager};
use crate::metrics::{PodLabels, PodSample, Snapshot};
use crate::podmgr::dataplane::DataPlaneDown;
use crate::podmgr::state::PodRecord;
use crate::wg::PathKind;

/// A pod as the status views show it.
#[derive(Debug, Clone)]
pub(super) struct PodView {
    record: PodRecord,
    error: Option<String>,
}

impl<B: Backends> PodManager<B> {
    /// Shows `record` in the views, with the error that stops it, if any.
    pub(super) fn set_view(&self, record: &PodRecord, error: Option<String>) {
        self.views
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                record.container_id.clone(),
                PodView {
                    record: record.clone(),
                    error,
                },
            );
    }

    pub(super) fn drop_view(&self, container_id: &str) {
        self.views
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(container_id);
    }

    /// CNI STATUS: ready once restart recovery is over.
    pub(super) fn status_response(&self) -> StatusResponse {
        let readiness = self.readiness();
        StatusResponse {
            api_version: 0,
            ready: readiness.is_ok(),
            reason: readiness.err().unwrap_or_default(),
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Every known pod with its counters and control-session state.
    pub(super) async fn pod_list(&self) -> ListPodsResponse {
        let views: Vec<PodView> = self
            .views
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut pods = Vec::with_capacity(views.len());
        for view in views {
            let handle = lock(&self.live)
                .get(&view.record.container_id)
                .map(|p| (p.data.clone(), p.session.state().borrow().name()));
            let mut status = pod_status(&view);
            if let Some((data, session)) = handle {
                if let Ok(stats) = data.stats().await {
                    status.rx_bytes = stats.rx_bytes;
                    status.tx_bytes = stats.tx_bytes;
                    status.filtered_packets = stats.filtered_packets;
                    for peer in &stats.peers {
                        match peer.path {
                            PathKind::Direct => status.peers_direct += 1,
                            PathKind::Relay => status.peers_derp += 1,
                            PathKind::None => {}
                        }
                    }
                }
                if session != "connected" {
                    status.state = format!("{} (control: {session})", status.state);
                }
            }
            pods.push(status);
        }
        ListPodsResponse {
            api_version: 0,
            pods,
        }
    }
}

fn phase_name(record: &PodRecord) -> String {
    format!("{:?}", record.state).to_lowercase()
}

fn pod_status(view: &PodView) -> PodStatus {
    let r = &view.record;
    PodStatus {
        container_id: r.container_id.clone(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        hostname: r.hostname.clone(),
        ipv4: r.ipv4.map(|a| a.to_string()).unwrap_or_default(),
        ipv6: r.ipv6.map(|a| a.to_string()).unwrap_or_default(),
        state: phase_name(r),
        peers_direct: 0,
        peers_derp: 0,
        error: view.error.clone().unwrap_or_default(),
        netns: r.netns.display().to_string(),
        tun: r
            .pod_net
            .as_ref()
            .map(|n| n.tun_name.clone())
            .unwrap_or_default(),
        rx_bytes: 0,
        tx_bytes: 0,
        filtered_packets: 0,
    }
}

impl<B: Backends> Snapshot for PodManager<B> {
    fn pods_by_state(&self) -> Vec<(String, i64)> {
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for view in self
            .views
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            *counts.entry(phase_name(&view.record)).or_default() += 1;
        }
        counts.into_iter().collect()
    }

    fn sessions_by_state(&self) -> Vec<(String, i64)> {
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for pod in lock(&self.live).values() {
            *counts
                .entry(pod.session.state().borrow().name().to_string())
                .or_default() += 1;
        }
        counts.into_iter().collect()
    }

    fn pod_samples(&self) -> Vec<PodSample> {
        let live = lock(&self.live);
        self.views
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(|view| {
                let pod = live.get(&view.record.container_id)?;
                let stats = pod.data.stats_now();
                let handshake_ages = || stats.peers.iter().filter_map(|p| p.last_handshake);
                Some(PodSample {
                    labels: Some(PodLabels {
                        namespace: view.record.namespace.clone(),
                        pod: view.record.name.clone(),
                        hostname: view.record.hostname.clone(),
                    }),
                    rx_bytes: stats.rx_bytes,
                    tx_bytes: stats.tx_bytes,
                    rx_packets: stats.rx_packets,
                    tx_packets: stats.tx_packets,
                    filtered_packets: stats.filtered_packets,
                    handshake_age_secs: handshake_ages().min().map(|d| d.as_secs_f64()),
                    oldest_handshake_age_secs: handshake_ages().max().map(|d| d.as_secs_f64()),
                    peers_direct: stats
                        .peers
                        .iter()
                        .filter(|p| p.path == PathKind::Direct)
                        .count() as u64,
                    peers_derp: stats
                        .peers
                        .iter()
                        .filter(|p| p.path == PathKind::Relay)
                        .count() as u64,
                    resume_handshakes: stats.resume_handshakes,
                })
            })
            .collect()
    }

    fn health(&self) -> Result<(), String> {
        // A session's task owns its state's sender: a closed channel means
        // the task ended while its pod still needs it.
        let live = lock(&self.live);
        let dead: Vec<String> = live
            .iter()
            .filter(|(_, pod)| pod.session.state().has_changed().is_err())
            .map(|(container_id, _)| container_id.clone())
            .collect();
        if !dead.is_empty() {
            return Err(format!(
                "the control session of {} live pod(s) has ended: {}",
                dead.len(),
                dead.join(", ")
            ));
        }
        // A stale key is a rotation in progress, which the supervisor
        // repairs; a stopped task is never restarted.
        let stopped: Vec<String> = live
            .iter()
            .filter(|(_, pod)| {
                matches!(
                    pod.data.liveness(),
                    Err(DataPlaneDown::SupervisorStopped | DataPlaneDown::EngineTaskStopped)
                )
            })
            .map(|(container_id, _)| container_id.clone())
            .collect();
        if stopped.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the data plane of {} live pod(s) has stopped: {}",
                stopped.len(),
                stopped.join(", ")
            ))
        }
    }

    fn readiness(&self) -> Result<(), String> {
        self.readiness
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
