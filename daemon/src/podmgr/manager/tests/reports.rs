//! What ADD reports to Kubernetes (through the `JoinReports` seam): a join
//! with what was plumbed, a failure with its CNI code, nothing for a pod
//! that did not opt in.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tailnet_cni_proto::cni_code;

use super::fakes::Registration;
use super::Bed;
use crate::k8s::PodRef;
use crate::podmgr::manager::seams::JoinReports;

/// What a report said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Said {
    Joined(PodRef, String, Vec<IpAddr>),
    Failed(PodRef, u32),
}

/// Keeps every report.
#[derive(Default)]
struct Recorded(Mutex<Vec<Said>>);

impl Recorded {
    fn all(&self) -> Vec<Said> {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
    fn push(&self, said: Said) {
        if let Ok(mut all) = self.0.lock() {
            all.push(said);
        }
    }
}

impl JoinReports for Recorded {
    fn joined(&self, pod: &PodRef, hostname: &str, addresses: &[IpAddr]) {
        self.push(Said::Joined(
            pod.clone(),
            hostname.into(),
            addresses.to_vec(),
        ));
    }
    fn failed(&self, pod: &PodRef, code: u32) {
        self.push(Said::Failed(pod.clone(), code));
    }
}

const POD: &str = "a1b2c3d4e5f60101";

fn pod_ref() -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: format!("web-{POD}"),
        uid: String::new(),
    }
}

#[tokio::test]
async fn a_join_is_reported_with_the_plumbed_addresses() {
    let bed = Bed::start().await;
    let recorded = Arc::new(Recorded::default());
    bed.manager.report_to(recorded.clone());
    let response = bed.add(POD).await.expect("ADD");
    assert_eq!(
        recorded.all(),
        [Said::Joined(
            pod_ref(),
            response.hostname.clone(),
            vec![
                "100.64.0.1".parse().expect("an address"),
                "fd7a:115c:a1e0::1".parse().expect("an address"),
            ],
        )]
    );
}

#[tokio::test]
async fn a_failure_is_reported_with_its_code() {
    let bed = Bed::start().await;
    let recorded = Arc::new(Recorded::default());
    bed.manager.report_to(recorded.clone());
    *bed.control.registration.lock().expect("mode") = Registration::RegisterThenRefuse;
    let error = bed.add(POD).await.expect_err("ADD must fail");
    assert_eq!(
        recorded.all(),
        [Said::Failed(pod_ref(), cni_code::CONTROL_FAILURE)]
    );
    assert_eq!(error.code, cni_code::CONTROL_FAILURE);
}
