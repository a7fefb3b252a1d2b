//! DEL: complete, idempotent, and failing only while plumbing is left.

use std::sync::atomic::Ordering;

use tailnet_cni_proto::{budget, cni_code};

use super::Bed;
use crate::podmgr::state::PodPhase;

const POD: &str = "d1d2d3d4d5d60001";

#[tokio::test]
async fn del_releases_everything_and_is_idempotent() {
    let bed = Bed::start().await;
    bed.add(POD).await.expect("ADD");
    bed.del(POD).await.expect("DEL");
    bed.assert_gone(POD);
    assert!(bed.manager.tables.in_use().is_empty());
    bed.del(POD).await.expect("second DEL");
    bed.assert_gone(POD);
}

#[tokio::test]
async fn del_of_an_unknown_container_succeeds() {
    let bed = Bed::start().await;
    bed.del(POD).await.expect("DEL of a container never added");
    bed.assert_gone(POD);
}

#[tokio::test]
async fn del_after_a_failed_add_succeeds() {
    let bed = Bed::start().await;
    bed.engine.fail_attach.store(true, Ordering::SeqCst);
    bed.add(POD).await.expect_err("ADD must fail");
    bed.del(POD).await.expect("DEL after a failed ADD");
    bed.assert_gone(POD);
}

#[tokio::test]
async fn del_fails_and_keeps_the_record_while_plumbing_is_left() {
    let bed = Bed::start().await;
    bed.add(POD).await.expect("ADD");
    bed.plumbing.fail_teardown.store(true, Ordering::SeqCst);
    let error = bed.del(POD).await.expect_err("DEL must fail");
    assert_eq!(error.code, cni_code::PLUMBING_FAILURE, "{error}");
    let record = bed.record(POD).expect("record kept for the retry");
    assert_eq!(record.state, PodPhase::Deleting);
    assert!(bed.plumbing.built().contains(POD));
    assert!(bed.is_listed(POD), "status shows the pod and its error");

    bed.plumbing.fail_teardown.store(false, Ordering::SeqCst);
    bed.del(POD).await.expect("DEL retried");
    bed.assert_gone(POD);
}

#[tokio::test]
async fn del_succeeds_when_only_the_node_removal_fails() {
    let bed = Bed::start().await;
    bed.add(POD).await.expect("ADD");
    bed.control.fail_remove_node.store(true, Ordering::SeqCst);
    bed.del(POD).await.expect("DEL");
    assert!(!bed.has_record(POD));
    assert!(!bed.plumbing.built().contains(POD));
    assert_eq!(bed.control.nodes().len(), 1, "the node is left to control");
}

/// Takes DEL's daemon budget (8 s) in real time.
#[tokio::test]
async fn del_answers_within_its_budget_when_control_never_answers() {
    let bed = Bed::start().await;
    bed.add(POD).await.expect("ADD");
    bed.control.hang_logout.store(true, Ordering::SeqCst);
    bed.control.hang_remove_node.store(true, Ordering::SeqCst);
    // The shim's wait: a DEL still running after it has failed the pod.
    tokio::time::timeout(budget::DEL.shim, bed.del(POD))
        .await
        .expect("DEL answered within the shim's wait")
        .expect("DEL succeeds: the plumbing is gone");
    assert!(!bed.has_record(POD));
    assert!(!bed.plumbing.built().contains(POD));
    assert!(!bed.engine.attached().contains(POD));
}
