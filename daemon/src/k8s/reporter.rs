//! Join and failure reports, posted off the CNI path.
//!
//! [`Reporter::report`] only `try_send`s into a bounded queue: a full queue
//! (the API server down or slow) drops the report and counts it, so a CNI
//! call never waits for the API. One worker drains the queue, each call
//! bounded by [`CALL_TIMEOUT`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::annotate::tailnet_annotations;
use super::client::{ApiError, KubeApi};
use super::events::{event_for, PodEvent};
use super::PodRef;
use crate::metrics::Metrics;
use crate::podmgr::manager::seams::JoinReports;

/// The longest one API call may take before the worker moves on.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One report waiting for the API.
#[derive(Debug)]
struct Report {
    pod: PodRef,
    event: PodEvent,
}

/// What the worker posts for each report.
#[derive(Debug, Clone, Copy)]
pub struct Posting {
    /// Post an Event on the pod.
    pub events: bool,
    /// Merge-patch the tailnet annotations onto a pod that joined.
    pub annotate: bool,
}

/// The producer side, held by the pod manager.
pub struct Reporter {
    queue: mpsc::Sender<Report>,
    metrics: Arc<Metrics>,
}

impl Reporter {
    /// Starts the worker on the current runtime; it stops when the
    /// reporter is dropped.
    pub fn spawn(
        api: KubeApi,
        node: String,
        posting: Posting,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (queue, reports) = mpsc::channel(capacity.max(1));
        tokio::spawn(drain(reports, api, node, posting, metrics.clone()));
        Self { queue, metrics }
    }

    /// Queues a report for `pod`, or drops and counts it when the queue is
    /// full. Pods without a Kubernetes identity are ignored.
    pub fn report(&self, pod: &PodRef, event: PodEvent) {
        if !pod.is_kubernetes() {
            return;
        }
        let report = Report {
            pod: pod.clone(),
            event,
        };
        if self.queue.try_send(report).is_err() {
            self.metrics.kube_reports_dropped.inc();
        }
    }
}

impl JoinReports for Reporter {
    fn joined(&self, pod: &PodRef, hostname: &str, addresses: &[IpAddr]) {
        self.report(
            pod,
            PodEvent::Joined {
                hostname: hostname.to_string(),
                addresses: addresses.to_vec(),
            },
        );
    }

    fn failed(&self, pod: &PodRef, code: u32) {
        self.report(pod, PodEvent::JoinFailed { code });
    }
}

async fn drain(
    mut reports: mpsc::Receiver<Report>,
    api: KubeApi,
    node: String,
    posting: Posting,
    metrics: Arc<Metrics>,
) {
    while let Some(Report { pod, event }) = reports.recv().await {
        if posting.annotate {
            if let PodEvent::Joined {
                hostname,
                addresses,
            } = &event
            {
                let patch = tailnet_annotations(hostname, addresses);
                let patched = bounded(api.merge_patch_pod(&pod.namespace, &pod.name, &patch));
                count_failure(&metrics, &pod, patched.await);
            }
        }
        if posting.events {
            let body = event_for(&pod, &event, &node, Timestamp::now());
            count_failure(&metrics, &pod, bounded(api.create_event(&body)).await);
        }
    }
    debug!("reporter stopped");
}

/// Why a report did not reach the API.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("the Kubernetes API did not answer within {0:?}")]
    Timeout(Duration),
}

/// A call that gives up after [`CALL_TIMEOUT`].
async fn bounded(
    call: impl std::future::Future<Output = Result<(), ApiError>>,
) -> Result<(), PostError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_elapsed) => Err(PostError::Timeout(CALL_TIMEOUT)),
    }
}

fn count_failure(metrics: &Metrics, pod: &PodRef, result: Result<(), PostError>) {
    if let Err(error) = result {
        metrics.kube_api_errors.inc();
        warn!(%error, namespace = %pod.namespace, pod = %pod.name, "cannot report to the Kubernetes API");
    }
}
