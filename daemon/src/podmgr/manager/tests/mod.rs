//! The pod manager on fakes: no root, no network. Each test drives the CNI
//! verbs (or a restart) and then looks at what every backend still holds.

mod add;
mod check;
mod del;
mod fakes;
mod gc;
mod pool;
mod recover;
mod reports;

use std::path::PathBuf;
use std::sync::Arc;

use tailnet_cni_proto::v1::{AddRequest, AddResponse, DelRequest, GcRequest, PodRef};
use tempfile::TempDir;

use self::fakes::{FakeControl, FakeEngine, FakePlumbing, FakeRecords, Fakes};
use super::{Parts, PodManager};
use crate::config::{Config, Selection};
use crate::metrics::Metrics;
use crate::podmgr::state::{PodRecord, StateStore};
use crate::rpc::{CniError, CniHandler};
use crate::selection::{Policy, Selector};

/// The one tag the test daemon's selection allows.
const ALLOWED_TAG: &str = "tag:web";

/// A pod manager on fakes, and the fakes, to look into.
struct Bed {
    manager: Arc<PodManager<Fakes>>,
    plumbing: Arc<FakePlumbing>,
    control: Arc<FakeControl>,
    engine: Arc<FakeEngine>,
    records: Arc<FakeRecords>,
    dir: TempDir,
}

/// The fakes' state that outlives one daemon run.
struct World {
    plumbing: Arc<FakePlumbing>,
    control: Arc<FakeControl>,
    dir: TempDir,
}

impl World {
    fn new() -> Self {
        Self {
            plumbing: Arc::default(),
            control: Arc::default(),
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn store(&self) -> StateStore {
        StateStore::open(self.dir.path().join("state")).expect("state store")
    }
}

fn config(state_dir: PathBuf) -> Config {
    let mut config: Config = toml::from_str(
        r#"
        cluster_name = "unit"
        control_url = "http://127.0.0.1:9"
        allow_insecure_http = true
        [auth]
        kind = "static"
        key_file = "/nonexistent/auth-key"
        "#,
    )
    .expect("test configuration");
    config.state_dir = state_dir;
    // These tests describe ADD without the pool; `pool.rs` turns it on.
    config.pool_size = 0;
    config
}

impl Bed {
    async fn start() -> Self {
        Self::start_in(World::new()).await
    }

    /// Starts a daemon on what `world` holds (as after a restart).
    async fn start_in(world: World) -> Self {
        Self::start_with_engine(world, Arc::new(FakeEngine::default())).await
    }

    /// [`Self::start_in`] on a given engine (one set to fail, say).
    async fn start_with_engine(world: World, engine: Arc<FakeEngine>) -> Self {
        Self::start_configured(world, engine, |_| {}).await
    }

    /// [`Self::start_with_engine`] with the test configuration changed by
    /// `adjust`.
    async fn start_configured(
        world: World,
        engine: Arc<FakeEngine>,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = config(world.dir.path().join("state"));
        adjust(&mut config);
        let records = Arc::new(FakeRecords::new(world.store()));
        let parts = Parts::<Fakes> {
            plumbing: world.plumbing.clone(),
            control: world.control.clone(),
            engine: engine.clone(),
            records: records.clone(),
        };
        let manager = PodManager::launch(
            config,
            Arc::new(Metrics::default()),
            Selector::without_api(Policy::new(Selection::All, vec![ALLOWED_TAG.into()])),
            parts,
        )
        .await
        .expect("manager starts");
        Self {
            manager,
            plumbing: world.plumbing,
            control: world.control,
            engine,
            records,
            dir: world.dir,
        }
    }

    /// Stops the daemon the way SIGTERM does and hands back what outlives it.
    async fn stop(self) -> World {
        self.manager.shutdown().await;
        World {
            plumbing: self.plumbing,
            control: self.control,
            dir: self.dir,
        }
    }

    /// A network namespace path that exists.
    fn netns(&self, container_id: &str) -> PathBuf {
        let dir = self.dir.path().join("netns");
        std::fs::create_dir_all(&dir).expect("netns directory");
        let path = dir.join(container_id);
        std::fs::write(&path, b"").expect("netns file");
        path
    }

    fn pod(&self, container_id: &str) -> PodRef {
        PodRef {
            container_id: container_id.into(),
            netns: self.netns(container_id).display().to_string(),
            if_name: "eth1".into(),
            namespace: "default".into(),
            name: format!("web-{container_id}"),
            ..PodRef::default()
        }
    }

    async fn add(&self, container_id: &str) -> Result<AddResponse, CniError> {
        self.manager
            .add(AddRequest {
                pod: Some(self.pod(container_id)),
                ..AddRequest::default()
            })
            .await
    }

    async fn del(&self, container_id: &str) -> Result<(), CniError> {
        self.manager
            .del(DelRequest {
                pod: Some(self.pod(container_id)),
                ..DelRequest::default()
            })
            .await
    }

    async fn gc(&self, valid: &[&str]) -> Result<Vec<String>, CniError> {
        self.manager
            .gc(GcRequest {
                valid_attachments: valid
                    .iter()
                    .map(|id| tailnet_cni_proto::v1::Attachment {
                        container_id: id.to_string(),
                        if_name: "eth1".into(),
                    })
                    .collect(),
                ..GcRequest::default()
            })
            .await
    }

    fn record(&self, container_id: &str) -> Option<PodRecord> {
        self.records
            .store()
            .load(container_id)
            .expect("record readable")
    }

    fn has_record(&self, container_id: &str) -> bool {
        self.record(container_id).is_some()
    }

    fn has_key_file(&self, container_id: &str) -> bool {
        self.records
            .store()
            .identity_ids()
            .expect("identity files listed")
            .contains(container_id)
    }

    fn is_listed(&self, container_id: &str) -> bool {
        self.manager
            .views
            .read()
            .expect("views")
            .contains_key(container_id)
    }

    /// Asserts that nothing of `container_id` is left anywhere.
    fn assert_gone(&self, container_id: &str) {
        assert!(!self.has_record(container_id), "record left");
        assert!(!self.has_key_file(container_id), "key file left");
        assert!(
            !self.plumbing.built().contains(container_id),
            "plumbing left"
        );
        assert!(
            !self.engine.attached().contains(container_id),
            "engine attachment left"
        );
        assert!(!self.is_listed(container_id), "status view left");
        assert!(
            self.control.running_sessions().is_empty(),
            "control sessions left: {:?}",
            self.control.running_sessions()
        );
        assert!(
            self.control.nodes().is_empty(),
            "tailnet nodes left: {:?}",
            self.control.nodes()
        );
    }
}
