//! Restart recovery.

use tailnet_cni_proto::v1::CheckRequest;

use super::Bed;
use crate::podmgr::state::PodPhase;
use crate::rpc::CniHandler;

const POD: &str = "7e7e7e7e00000001";

#[tokio::test]
async fn a_running_pod_is_resumed_after_a_restart() {
    let bed = Bed::start().await;
    bed.add(POD).await.expect("ADD");
    let world = bed.stop().await;
    assert!(world.control.running_sessions().is_empty());
    assert_eq!(world.control.nodes().len(), 1, "shutdown keeps the node");

    let bed = Bed::start_in(world).await;
    assert!(bed.engine.attached().contains(POD), "re-attached");
    assert_eq!(bed.control.running_sessions().len(), 1, "session resumed");
    assert_eq!(bed.control.nodes().len(), 1, "no new node");
    let record = bed.record(POD).expect("record kept");
    assert_eq!(record.state, PodPhase::Running);
    bed.manager
        .check(CheckRequest {
            pod: Some(bed.pod(POD)),
            ..CheckRequest::default()
        })
        .await
        .expect("CHECK after resuming");

    bed.del(POD).await.expect("DEL of a resumed pod");
    bed.assert_gone(POD);
}

#[tokio::test]
async fn a_pod_whose_netns_is_gone_is_released_at_start() {
    let bed = Bed::start().await;
    bed.add(POD).await.expect("ADD");
    let netns = bed.netns(POD);
    let world = bed.stop().await;
    std::fs::remove_file(netns).expect("netns removed");

    let bed = Bed::start_in(world).await;
    bed.assert_gone(POD);
    assert!(bed.manager.tables.in_use().is_empty());
}

/// A resumed session re-registers with the tags and hostname ADD chose if
/// its node key needs a new auth key, so it must get them, not defaults.
#[tokio::test]
async fn a_resumed_pod_keeps_its_tags_and_hostname() {
    use std::collections::HashMap;
    use tailnet_cni_proto::selection::{HOSTNAME_ANNOTATION, TAGS_ANNOTATION};
    use tailnet_cni_proto::v1::{AddRequest, PodAnnotations};

    let bed = Bed::start().await;
    bed.manager
        .add(AddRequest {
            pod: Some(bed.pod(POD)),
            annotations: Some(PodAnnotations {
                entries: HashMap::from([
                    (HOSTNAME_ANNOTATION.to_string(), "chosen-name".to_string()),
                    (TAGS_ANNOTATION.to_string(), super::ALLOWED_TAG.to_string()),
                ]),
            }),
            ..AddRequest::default()
        })
        .await
        .expect("ADD");
    let world = bed.stop().await;

    let bed = Bed::start_in(world).await;
    let started = bed.control.started_sessions();
    assert_eq!(started.len(), 2, "ADD's session and the resumed one");
    let resumed = &started[1];
    assert!(resumed.resumed);
    // The tenancy guardrails put it under `{cluster}-{namespace}-`.
    assert!(
        resumed.hostname.ends_with("-chosen-name"),
        "{}",
        resumed.hostname
    );
    assert_eq!(started[0].hostname, resumed.hostname);
    assert_eq!(resumed.tags, vec![super::ALLOWED_TAG.to_string()]);
    assert_eq!(started[0].tags, resumed.tags);
    let record = bed.record(POD).expect("record kept");
    assert_eq!(record.tags, vec![super::ALLOWED_TAG.to_string()]);
    bed.del(POD).await.expect("DEL");
}

#[tokio::test]
async fn a_failed_attach_at_recovery_ends_the_resumed_session() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    let bed = Bed::start().await;
    bed.add(POD).await.expect("ADD");
    let world = bed.stop().await;

    let engine = Arc::new(super::fakes::FakeEngine::default());
    engine.fail_attach.store(true, Ordering::SeqCst);
    let bed = Bed::start_with_engine(world, engine).await;
    assert!(!bed.engine.attached().contains(POD));
    assert!(
        bed.control.running_sessions().is_empty(),
        "the session started for the pod must not outlive its failed attach"
    );
}

/// Neither the pod's sessions nor control's answer wait for the plumbing
/// check: the session starts and the engine attaches while it runs.
#[tokio::test]
async fn a_resumed_pod_is_served_while_its_plumbing_is_checked() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    let bed = Bed::start().await;
    bed.add(POD).await.expect("ADD");
    let world = bed.stop().await;
    world.plumbing.hold_checks.store(true, Ordering::SeqCst);
    let plumbing = world.plumbing.clone();
    let control = world.control.clone();
    let engine = Arc::new(super::fakes::FakeEngine::default());
    let starting = tokio::spawn(Bed::start_with_engine(world, engine.clone()));

    let served = tokio::time::timeout(Duration::from_secs(10), async {
        while !(engine.attached().contains(POD) && control.running_sessions().len() == 1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "session and attachment must not wait for the check"
    );
    assert!(!starting.is_finished(), "the check is still held");

    plumbing.release_checks();
    let bed = starting.await.expect("daemon starts");
    assert_eq!(bed.record(POD).expect("record").state, PodPhase::Running);
    bed.del(POD).await.expect("DEL");
    bed.assert_gone(POD);
}

#[tokio::test]
async fn drifted_plumbing_at_recovery_ends_the_session_and_the_attachment() {
    use std::sync::atomic::Ordering;

    let bed = Bed::start().await;
    bed.add(POD).await.expect("ADD");
    let world = bed.stop().await;
    world.plumbing.fail_check.store(true, Ordering::SeqCst);

    let bed = Bed::start_in(world).await;
    assert!(!bed.engine.attached().contains(POD), "detached again");
    assert!(
        bed.control.running_sessions().is_empty(),
        "the session started for the pod must not outlive the failed check"
    );
    assert!(bed.record(POD).is_some(), "kept for DEL or GC");
}
