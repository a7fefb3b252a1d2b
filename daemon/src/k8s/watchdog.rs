//! The periodic pass that finds tailnet pods running without the plugin on
//! this node: an Event on each (once), the `pods_missing_plugin` gauge, and,
//! when configured, an eviction so the pod is created again with the plugin.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tracing::{info, warn};

use super::client::{ApiError, KubeApi};
use super::detect::{missing_plugin, namespaces_to_read, unrecorded, ListedPod};
use super::events::{event_for, PodEvent};
use super::PodRef;
use crate::metrics::Metrics;
use crate::podmgr::state::StateStore;
use crate::selection::Policy;

/// The longest a pass may wait for the API before it is abandoned.
const PASS_TIMEOUT: Duration = Duration::from_secs(60);

/// What a pass does with the pods it finds.
#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    pub node: String,
    /// The same selection and guardrails ADD applies.
    pub policy: Policy,
    /// Post an Event on each pod found.
    pub events: bool,
    /// Evict each pod found.
    pub evict: bool,
}

/// Why a pass could not decide.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("reading the pod records: {0}")]
    Records(#[from] crate::podmgr::state::StateError),
    #[error("{0} pod records cannot be read; not judging pods by them")]
    UnreadableRecords(usize),
}

/// The watch over this node's pods.
pub struct Watchdog {
    api: KubeApi,
    records: StateStore,
    config: WatchdogConfig,
    metrics: Arc<Metrics>,
    /// Pods already reported, so each gets one Event while it stays missing
    /// (an evicted pod is being deleted, so it is no longer missing).
    reported: BTreeSet<PodRef>,
}

impl Watchdog {
    pub fn new(
        api: KubeApi,
        records: StateStore,
        config: WatchdogConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            api,
            records,
            config,
            metrics,
            reported: BTreeSet::new(),
        }
    }

    /// Runs a pass every `period` until `stop` resolves.
    pub async fn run_every(
        mut self,
        period: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = ticks.tick() => {}
            }
            match tokio::time::timeout(PASS_TIMEOUT, self.pass()).await {
                Ok(Ok(_missing)) => {}
                Ok(Err(error)) => {
                    self.metrics.kube_api_errors.inc();
                    warn!(%error, "cannot look for pods running without the plugin");
                }
                Err(_elapsed) => {
                    self.metrics.kube_api_errors.inc();
                    warn!(timeout = ?PASS_TIMEOUT, "the Kubernetes API did not answer; the pass is abandoned");
                }
            }
        }
    }

    /// One pass: the pods found missing the plugin, after acting on them.
    pub async fn pass(&mut self) -> Result<Vec<PodRef>, PassError> {
        let listed: Vec<ListedPod> = self
            .api
            .pods_on_node(&self.config.node)
            .await?
            .iter()
            .filter_map(ListedPod::from_api)
            .collect();
        let loaded = self.records.load_all()?;
        if !loaded.errors.is_empty() {
            return Err(PassError::UnreadableRecords(loaded.errors.len()));
        }
        let known: Vec<PodRef> = loaded
            .records
            .into_iter()
            .map(|r| PodRef {
                namespace: r.namespace,
                name: r.name,
                uid: r.uid,
            })
            .collect();
        let candidates = unrecorded(&listed, &known);
        let mut labels = BTreeMap::new();
        for namespace in namespaces_to_read(&self.config.policy, &candidates) {
            let read = self.api.namespace_labels(&namespace).await?;
            labels.insert(namespace, read);
        }
        let missing = missing_plugin(&self.config.policy, &candidates, &labels);
        self.metrics.pods_missing_plugin.set(missing.len() as i64);
        self.reported.retain(|pod| missing.contains(pod));
        for pod in &missing {
            let first_seen = self.reported.insert(pod.clone());
            self.act_on(pod, first_seen).await;
        }
        Ok(missing)
    }

    /// Evicts `pod` when configured (again on each pass while a disruption
    /// budget refuses it) and posts its Event: once when found, and once
    /// when evicted.
    async fn act_on(&self, pod: &PodRef, first_seen: bool) {
        if first_seen {
            warn!(namespace = %pod.namespace, pod = %pod.name, "tailnet pod is running without the plugin");
        }
        let evicted = self.config.evict && self.evict(pod).await;
        let event = match (evicted, first_seen) {
            (true, _) => PodEvent::EvictedMissingPlugin,
            (false, true) => PodEvent::MissingPlugin,
            (false, false) => return,
        };
        if self.config.events {
            let body = event_for(pod, &event, &self.config.node, Timestamp::now());
            if let Err(error) = self.api.create_event(&body).await {
                self.metrics.kube_api_errors.inc();
                warn!(%error, namespace = %pod.namespace, pod = %pod.name, "cannot post the Event");
            }
        }
    }

    /// Whether the API accepted the eviction.
    async fn evict(&self, pod: &PodRef) -> bool {
        match self.api.evict_pod(&pod.namespace, &pod.name).await {
            Ok(()) => {
                info!(namespace = %pod.namespace, pod = %pod.name, "evicted: it comes back with the plugin");
                true
            }
            Err(error) => {
                self.metrics.kube_api_errors.inc();
                warn!(%error, namespace = %pod.namespace, pod = %pod.name, "cannot evict; retrying on the next pass");
                false
            }
        }
    }
}
