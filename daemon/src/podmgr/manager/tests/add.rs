//! ADD, and its undo when any step fails.

use std::sync::atomic::Ordering;

use tailnet_cni_proto::cni_code;
use tailnet_cni_proto::v1::{CheckRequest, IpConfig};

use super::fakes::Registration;
use super::Bed;
use crate::podmgr::state::PodPhase;
use crate::rpc::CniHandler;

const POD: &str = "a1b2c3d4e5f60001";

/// Runs an ADD that must fail with `code`, then asserts that everything it
/// did is undone and that the same container can then be added.
async fn assert_add_undone(bed: &Bed, code: u32) {
    let error = bed.add(POD).await.expect_err("ADD must fail");
    assert_eq!(error.code, code, "{error}");
    bed.assert_gone(POD);
    assert!(
        bed.manager.tables.in_use().is_empty(),
        "routing table left allocated"
    );
}

#[tokio::test]
async fn add_brings_the_pod_up() {
    let bed = Bed::start().await;
    let response = bed.add(POD).await.expect("ADD");
    assert!(response.attached);
    assert_eq!(response.if_name, "ts0");
    let ips: Vec<&str> = response.ips.iter().map(|ip| ip.address.as_str()).collect();
    assert_eq!(ips, ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]);
    let routes: Vec<&str> = response.routes.iter().map(|r| r.dst.as_str()).collect();
    assert_eq!(routes, ["100.64.0.0/10", "fd7a:115c:a1e0::/48"]);

    let record = bed.record(POD).expect("record saved");
    assert_eq!(record.state, PodPhase::Running);
    assert_eq!(record.node_id, Some(1));
    assert!(bed.has_key_file(POD));
    assert!(bed.plumbing.built().contains(POD));
    assert!(bed.engine.attached().contains(POD));
    assert_eq!(bed.control.running_sessions(), [response.hostname.as_str()]);

    bed.manager
        .check(CheckRequest {
            pod: Some(bed.pod(POD)),
            expected_ips: response
                .ips
                .iter()
                .map(|ip| IpConfig {
                    address: ip.address.clone(),
                    gateway: String::new(),
                })
                .collect(),
            ..CheckRequest::default()
        })
        .await
        .expect("CHECK of a pod just added");
}

#[tokio::test]
async fn add_on_a_node_without_ipv6_reports_only_what_was_plumbed() {
    let bed = Bed::start().await;
    bed.plumbing.without_ipv6.store(true, Ordering::SeqCst);
    let response = bed.add(POD).await.expect("ADD");
    let ips: Vec<&str> = response.ips.iter().map(|ip| ip.address.as_str()).collect();
    assert_eq!(ips, ["100.64.0.1/32"]);
    let routes: Vec<&str> = response.routes.iter().map(|r| r.dst.as_str()).collect();
    assert_eq!(routes, ["100.64.0.0/10"]);
    bed.manager
        .check(CheckRequest {
            pod: Some(bed.pod(POD)),
            expected_ips: vec![IpConfig {
                address: "100.64.0.1/32".into(),
                gateway: String::new(),
            }],
            ..CheckRequest::default()
        })
        .await
        .expect("CHECK of an IPv4-only pod");
}

#[tokio::test]
async fn add_undoes_everything_when_the_first_record_cannot_be_saved() {
    let bed = Bed::start().await;
    *bed.records.fail_save_in.lock().expect("flag") = Some(PodPhase::Pending);
    assert_add_undone(&bed, cni_code::IO_FAILURE).await;
}

#[tokio::test]
async fn add_undoes_everything_when_the_keys_cannot_be_saved() {
    let bed = Bed::start().await;
    bed.records.fail_key_file.store(true, Ordering::SeqCst);
    assert_add_undone(&bed, cni_code::IO_FAILURE).await;
    bed.records.fail_key_file.store(false, Ordering::SeqCst);
    bed.add(POD).await.expect("ADD once keys can be saved");
}

#[tokio::test]
async fn add_undoes_everything_when_control_refuses_the_node() {
    let bed = Bed::start().await;
    *bed.control.registration.lock().expect("mode") = Registration::RegisterThenRefuse;
    // The node control registered before refusing is removed again.
    assert_add_undone(&bed, cni_code::CONTROL_FAILURE).await;
}

#[tokio::test]
async fn an_unsigned_node_on_a_locked_tailnet_is_a_configuration_error() {
    let bed = Bed::start().await;
    *bed.control.registration.lock().expect("mode") = Registration::LockedOut;
    // Permanent, and the auth key to fix: not "try again later".
    assert_add_undone(&bed, cni_code::INVALID_CONFIG).await;
}

#[tokio::test]
async fn add_undoes_everything_when_control_assigns_no_address() {
    let bed = Bed::start().await;
    *bed.control.registration.lock().expect("mode") = Registration::AcceptWithoutAddress;
    assert_add_undone(&bed, cni_code::CONTROL_FAILURE).await;
}

#[tokio::test]
async fn add_undoes_everything_when_the_registration_cannot_be_saved() {
    let bed = Bed::start().await;
    *bed.records.fail_save_in.lock().expect("flag") = Some(PodPhase::Registered);
    assert_add_undone(&bed, cni_code::IO_FAILURE).await;
}

#[tokio::test]
async fn add_undoes_everything_when_plumbing_fails() {
    let bed = Bed::start().await;
    bed.plumbing.fail_setup.store(true, Ordering::SeqCst);
    assert_add_undone(&bed, cni_code::PLUMBING_FAILURE).await;
}

#[tokio::test]
async fn add_reports_an_interface_already_in_the_pod_as_invalid_config() {
    let bed = Bed::start().await;
    bed.plumbing
        .fail_setup_with_existing_interface
        .store(true, Ordering::SeqCst);
    assert_add_undone(&bed, cni_code::INVALID_CONFIG).await;
}

#[tokio::test]
async fn add_undoes_everything_when_the_plumbing_cannot_be_recorded() {
    let bed = Bed::start().await;
    *bed.records.fail_save_in.lock().expect("flag") = Some(PodPhase::Plumbed);
    assert_add_undone(&bed, cni_code::IO_FAILURE).await;
}

#[tokio::test]
async fn add_undoes_everything_when_the_engine_refuses_the_pod() {
    let bed = Bed::start().await;
    bed.engine.fail_attach.store(true, Ordering::SeqCst);
    assert_add_undone(&bed, cni_code::PLUMBING_FAILURE).await;
}

#[tokio::test]
async fn add_undoes_everything_when_running_cannot_be_recorded() {
    let bed = Bed::start().await;
    *bed.records.fail_save_in.lock().expect("flag") = Some(PodPhase::Running);
    assert_add_undone(&bed, cni_code::IO_FAILURE).await;
}

#[tokio::test]
async fn add_clears_what_an_interrupted_attempt_left() {
    let bed = Bed::start().await;
    bed.add(POD).await.expect("first ADD");
    // The runtime lost track of the first attempt and adds again.
    bed.add(POD).await.expect("second ADD");
    assert_eq!(bed.control.nodes().len(), 1, "the first node is removed");
    assert_eq!(bed.control.running_sessions().len(), 1);
    assert_eq!(bed.manager.tables.in_use().len(), 1);
}
