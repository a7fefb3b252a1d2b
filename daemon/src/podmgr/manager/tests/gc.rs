//! GC and the periodic reconcile.

use super::fakes::pod_net_of;
use super::Bed;

const KEEP_A: &str = "6c6c6c6c00000001";
const GONE: &str = "6c6c6c6c00000002";
const KEEP_B: &str = "6c6c6c6c00000003";
const UNRECORDED: &str = "6c6c6c6c00000004";

#[tokio::test]
async fn gc_releases_only_pods_the_runtime_no_longer_has() {
    let bed = Bed::start().await;
    for id in [KEEP_A, GONE, KEEP_B] {
        bed.add(id).await.expect("ADD");
    }
    let released = bed.gc(&[KEEP_A, KEEP_B]).await.expect("GC");
    assert_eq!(released, [GONE]);
    for id in [KEEP_A, KEEP_B] {
        assert!(bed.has_record(id), "{id} kept");
        assert!(bed.plumbing.built().contains(id), "{id} keeps its plumbing");
        assert!(bed.engine.attached().contains(id), "{id} stays attached");
    }
    assert!(!bed.has_record(GONE));
    assert!(!bed.has_key_file(GONE));
    assert!(!bed.plumbing.built().contains(GONE));
    assert!(!bed.engine.attached().contains(GONE));
    assert_eq!(bed.control.nodes().len(), 2);
    assert_eq!(bed.control.running_sessions().len(), 2);
}

#[tokio::test]
async fn gc_sweeps_plumbing_no_record_owns() {
    let bed = Bed::start().await;
    bed.add(KEEP_A).await.expect("ADD");
    bed.plumbing.build(pod_net_of(UNRECORDED, 20_000, 1280));
    let released = bed.gc(&[KEEP_A]).await.expect("GC");
    assert!(released.is_empty());
    assert!(!bed.plumbing.built().contains(UNRECORDED));
    assert!(bed.plumbing.built().contains(KEEP_A));
}

#[tokio::test]
async fn reconcile_releases_a_pod_whose_netns_is_gone() {
    let bed = Bed::start().await;
    bed.add(KEEP_A).await.expect("ADD");
    bed.add(GONE).await.expect("ADD");
    std::fs::remove_file(bed.netns(GONE)).expect("netns removed");
    let report = bed.manager.reconcile().await;
    assert_eq!(report.released, [GONE]);
    assert!(!bed.has_record(GONE));
    assert!(!bed.plumbing.built().contains(GONE));
    assert!(bed.has_record(KEEP_A));
    assert!(bed.engine.attached().contains(KEEP_A));
}

#[tokio::test]
async fn reconcile_keeps_a_pod_whose_netns_cannot_be_checked() {
    let bed = Bed::start().await;
    bed.add(KEEP_A).await.expect("ADD");
    // A symlink loop: looking fails with ELOOP, which says nothing about
    // whether the namespace is gone.
    let path = bed.netns(KEEP_A);
    std::fs::remove_file(&path).expect("netns file replaced");
    std::os::unix::fs::symlink(&path, &path).expect("symlink loop");
    let report = bed.manager.reconcile().await;
    assert!(report.released.is_empty(), "{:?}", report.released);
    assert!(bed.has_record(KEEP_A));
    assert!(bed.plumbing.built().contains(KEEP_A));
    assert!(bed.engine.attached().contains(KEEP_A));
}
