//! The warm identity pool: filled ahead of demand, bound by ADD and renamed
//! to the pod, refilled, logged out on stop, and what a killed daemon left
//! logged out on the next start.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::fakes::FakeEngine;
use super::{Bed, World};
use crate::podmgr::pool::TagSet;
use crate::podmgr::state::PodPhase;

const POD: &str = "a1b2c3d4e5f60001";
const OTHER: &str = "a1b2c3d4e5f60002";

/// A daemon whose pool keeps `size` identities of the pods' default tags,
/// filled from the start.
async fn start_pooled(world: World, size: usize) -> Bed {
    Bed::start_configured(world, Arc::new(FakeEngine::default()), |config| {
        config.pool_size = size;
        config.pool_tags = vec![Vec::new()];
    })
    .await
}

fn default_tags() -> TagSet {
    TagSet::of(&[])
}

impl Bed {
    fn pool_dir(&self) -> PathBuf {
        self.dir.path().join("state").join("pool")
    }

    /// Key files in the pool directory.
    fn pool_files(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.pool_dir()) {
            Ok(entries) => entries
                .map(|entry| entry.expect("pool entry").path())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Waits (bounded) until `done` holds.
    async fn eventually(&self, what: &str, done: impl Fn(&Self) -> bool) {
        for _ in 0..500 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: not within 5 s");
    }

    async fn pool_filled(&self, size: usize) {
        self.eventually("the pool fills", |bed| {
            bed.manager.pool.ready(&default_tags()) == size
        })
        .await;
    }
}

#[tokio::test]
async fn the_pool_registers_its_identities_ahead_of_demand() {
    let bed = start_pooled(World::new(), 2).await;
    bed.pool_filled(2).await;

    assert_eq!(bed.control.nodes().len(), 2);
    let started = bed.control.started_sessions();
    assert_eq!(started.len(), 2);
    for spec in &started {
        assert!(spec.hostname.starts_with("unit-pool-"), "{}", spec.hostname);
        assert!(!spec.resumed);
        assert!(spec.key_file.starts_with(bed.pool_dir()));
        let mode = std::fs::metadata(&spec.key_file)
            .expect("pooled key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", spec.key_file.display());
    }
    let mode = std::fs::metadata(bed.pool_dir())
        .expect("pool directory")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test]
async fn add_binds_a_pooled_identity_renames_it_and_the_pool_refills() {
    let bed = start_pooled(World::new(), 1).await;
    bed.pool_filled(1).await;
    let pooled = bed.control.started_sessions()[0].clone();

    let response = bed.add(POD).await.expect("ADD");
    let record = bed.record(POD).expect("record saved");
    assert_eq!(record.state, PodPhase::Running);
    // The pooled node, its key file and its addresses are the pod's now.
    assert_eq!(record.node_id, Some(1));
    assert_eq!(record.identity_file.as_ref(), Some(&pooled.key_file));
    let ips: Vec<&str> = response.ips.iter().map(|ip| ip.address.as_str()).collect();
    assert_eq!(ips, ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]);
    assert!(bed.engine.attached().contains(POD));
    // With the home relay it kept connected while pooled.
    assert!(bed.engine.attached_warm().contains(POD));
    // Its session now carries the pod's hostname.
    assert!(bed.control.running_sessions().contains(&response.hostname));
    assert!(!bed.control.running_sessions().contains(&pooled.hostname));

    bed.pool_filled(1).await;
    assert_eq!(bed.control.nodes().len(), 2);

    // DEL undoes the pod as today: its node and key file go, the pool's stay.
    bed.del(POD).await.expect("DEL");
    assert!(!bed.has_record(POD));
    assert!(!pooled.key_file.exists(), "bound key file left");
    assert_eq!(bed.control.nodes().len(), 1);
    assert_eq!(bed.pool_files().len(), 1);
}

#[tokio::test]
async fn without_a_pooled_identity_add_registers_and_the_set_is_filled_after() {
    let bed = Bed::start_configured(World::new(), Arc::new(FakeEngine::default()), |config| {
        config.pool_size = 1;
    })
    .await;
    bed.add(POD).await.expect("ADD without a pool");
    let first = bed.record(POD).expect("record");
    assert!(bed.has_key_file(POD), "registered as before the pool");
    assert_eq!(first.node_id, Some(1));
    assert!(
        !bed.engine.attached_warm().contains(POD),
        "a new identity has no warm relay"
    );

    // That ADD's tag set is now kept warm: the next pod binds from it.
    bed.pool_filled(1).await;
    bed.add(OTHER).await.expect("ADD from the pool");
    let second = bed.record(OTHER).expect("record");
    assert!(!bed.has_key_file(OTHER), "bound, not registered anew");
    assert_eq!(second.node_id, Some(2));
}

#[tokio::test]
async fn stop_logs_out_the_pool_and_keeps_the_pods() {
    let bed = start_pooled(World::new(), 2).await;
    bed.pool_filled(2).await;
    bed.add(POD).await.expect("ADD");
    bed.pool_filled(2).await;
    let pod_node = bed.record(POD).and_then(|r| r.node_id).expect("node");

    let world = bed.stop().await;
    assert_eq!(
        world.control.nodes().into_iter().collect::<Vec<_>>(),
        [pod_node]
    );
    assert!(world.control.running_sessions().is_empty());
    let bed = Bed::start_in(world).await;
    assert!(bed
        .pool_files()
        .iter()
        .all(|file| { bed.record(POD).and_then(|r| r.identity_file).as_ref() == Some(file) }));
    assert_eq!(bed.pool_files().len(), 1, "only the pod's key file stays");
}

#[tokio::test]
async fn a_restart_logs_out_what_a_killed_daemon_left_in_the_pool() {
    let bed = start_pooled(World::new(), 2).await;
    bed.pool_filled(2).await;
    bed.add(POD).await.expect("ADD");
    bed.pool_filled(2).await;
    let pod_node = bed.record(POD).and_then(|r| r.node_id).expect("node");
    assert_eq!(bed.control.nodes().len(), 3);

    // Killed: no shutdown runs.
    let world = World {
        plumbing: bed.plumbing.clone(),
        control: bed.control.clone(),
        dir: bed.dir,
    };
    drop(bed.manager);

    // Restarted with the pool off: what it held is still logged out.
    let bed = Bed::start_in(world).await;
    bed.eventually("the leftover pooled nodes are removed", |bed| {
        bed.control.nodes().len() == 1
    })
    .await;
    assert!(bed.control.nodes().contains(&pod_node));
    bed.eventually("only the pod's key file stays", |bed| {
        bed.pool_files().len() == 1
    })
    .await;
    // The pod bound from the pool resumed with its keys.
    assert!(bed.engine.attached().contains(POD));
    let resumed = bed.control.started_sessions();
    let pod = bed.record(POD).expect("record");
    assert!(resumed.iter().any(|spec| spec.resumed
        && spec.hostname == pod.hostname
        && Some(&spec.key_file) == pod.identity_file.as_ref()));
}
