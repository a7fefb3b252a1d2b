use super::*;
use crate::podmgr::peer_routes::RouteRequest;

fn record(id: &str) -> PodRecord {
    PodRecord {
        version: RECORD_VERSION,
        container_id: id.to_string(),
        netns: PathBuf::from("/var/run/netns/cni-1234"),
        if_name: "ts0".into(),
        namespace: "default".into(),
        name: "web-0".into(),
        uid: "0b8e7f4a-1111-2222-3333-444455556666".into(),
        hostname: "prod-default-web-0".into(),
        tags: vec!["tag:web".into(), "tag:k8s-pod".into()],
        ipv4: Some(Ipv4Addr::new(100, 64, 0, 7)),
        ipv6: Some("fd7a:115c:a1e0::7".parse().unwrap()),
        pod_net: None,
        identity_file: Some(PathBuf::from("/var/lib/tailnet-cni/identities/x.json")),
        node_id: Some(42),
        stable_id: Some("nStable42".into()),
        routes: RouteRequest {
            accept_routes: Some(true),
            exit_node: Some("edge-router".into()),
        },
        state: PodPhase::Plumbed,
        created_at: 1_790_000_000,
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn save_then_load_round_trips_with_private_mode() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let rec = record("abc123");
    store.save(&rec).unwrap();
    assert_eq!(store.load("abc123").unwrap(), Some(rec.clone()));
    let path = store.record_path("abc123").unwrap();
    assert_eq!(path, dir.path().join("pods/abc123.json"));
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("pods")), 0o700);
    assert_eq!(store.load("other").unwrap(), None);
}

#[test]
fn open_narrows_existing_wide_directories() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods");
    fs::create_dir(&pods).unwrap();
    fs::set_permissions(&pods, fs::Permissions::from_mode(0o755)).unwrap();
    StateStore::open(dir.path()).unwrap();
    assert_eq!(mode(&pods), 0o700);
    assert_eq!(mode(&dir.path().join("identities")), 0o700);
}

#[test]
fn save_replaces_and_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let mut rec = record("abc");
    store.save(&rec).unwrap();
    rec.state = PodPhase::Running;
    store.save(&rec).unwrap();
    assert_eq!(store.load("abc").unwrap().unwrap().state, PodPhase::Running);
    let names: Vec<String> = fs::read_dir(dir.path().join("pods"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["abc.json".to_string()]);
}

#[test]
fn stray_temp_files_of_other_processes_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.save(&record("a")).unwrap();
    let pods = dir.path().join("pods");
    let ids = dir.path().join("identities");
    fs::write(pods.join(".a.json.tmp.1.0"), b"partial").unwrap();
    fs::write(ids.join(".a.json.tmp.2.7"), b"partial").unwrap();
    let own = format!(".b.json.tmp.{}.3", std::process::id());
    fs::write(pods.join(&own), b"in flight").unwrap();
    fs::write(ids.join("a.json"), b"{}").unwrap();
    assert_eq!(store.remove_stray_temp_files().unwrap(), 2);
    assert!(pods.join(&own).exists());
    assert!(pods.join("a.json").exists());
    assert!(!pods.join(".a.json.tmp.1.0").exists());
    assert_eq!(
        store.identity_ids().unwrap(),
        HashSet::from(["a".to_string()])
    );
    store.remove_identity("a").unwrap();
    store.remove_identity("a").unwrap();
    assert!(store.identity_ids().unwrap().is_empty());
}

#[test]
fn a_previous_daemons_temp_files_are_removed_even_with_our_pid() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods");
    fs::create_dir_all(&pods).unwrap();
    // Same pid as ours: a daemon that is PID 1 in its container on every start.
    let previous = pods.join(format!(".a.json.tmp.{}.0", std::process::id()));
    fs::write(&previous, b"partial").unwrap();
    File::options()
        .write(true)
        .open(&previous)
        .unwrap()
        .set_modified(SystemTime::now() - std::time::Duration::from_secs(60))
        .unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let in_flight = pods.join(format!(".b.json.tmp.{}.1", std::process::id()));
    fs::write(&in_flight, b"in flight").unwrap();
    assert_eq!(store.remove_stray_temp_files().unwrap(), 1);
    assert!(!previous.exists());
    assert!(in_flight.exists());
}

#[test]
fn container_ids_include_unparsable_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.save(&record("good")).unwrap();
    fs::write(dir.path().join("pods/broken.json"), b"{").unwrap();
    fs::write(dir.path().join("pods/.x.json.tmp.1.0"), b"{").unwrap();
    let ids = store.container_ids().unwrap();
    assert_eq!(
        ids,
        HashSet::from(["good".to_string(), "broken".to_string()])
    );
}

#[test]
fn write_private_atomic_tightens_mode_of_replaced_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.json");
    fs::write(&path, b"old").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    write_private_atomic(&path, b"new").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"new");
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn write_private_atomic_fails_cleanly_without_parent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing/key.json");
    let err = write_private_atomic(&path, b"x").unwrap_err();
    assert!(matches!(err, StateError::Io { .. }), "{err}");
    assert!(!path.exists());
}

#[test]
fn load_all_reports_corrupt_files_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.save(&record("b")).unwrap();
    store.save(&record("a")).unwrap();
    let pods = dir.path().join("pods");
    fs::write(pods.join("broken.json"), b"{ not json").unwrap();
    // A record under the wrong name is reported, not trusted.
    fs::write(
        pods.join("c.json"),
        serde_json::to_vec(&record("d")).unwrap(),
    )
    .unwrap();
    // Leftovers of interrupted writes and foreign files are ignored.
    fs::write(pods.join(".a.json.tmp.1.0"), b"partial").unwrap();
    fs::write(pods.join("README"), b"hi").unwrap();

    let loaded = store.load_all().unwrap();
    let ids: Vec<&str> = loaded
        .records
        .iter()
        .map(|r| r.container_id.as_str())
        .collect();
    assert_eq!(ids, vec!["a", "b"]);
    assert_eq!(loaded.errors.len(), 2, "{:?}", loaded.errors);
    assert!(loaded
        .errors
        .iter()
        .any(|e| matches!(e, StateError::Corrupt { path, .. } if path.ends_with("broken.json"))));
    assert!(loaded
        .errors
        .iter()
        .any(|e| matches!(e, StateError::Mismatch { found, .. } if found == "d")));
    assert!(matches!(
        store.load("broken"),
        Err(StateError::Corrupt { .. })
    ));
}

#[test]
fn remove_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.save(&record("abc")).unwrap();
    assert!(store.remove("abc").unwrap());
    assert!(!store.remove("abc").unwrap());
    assert_eq!(store.load("abc").unwrap(), None);
}

#[test]
fn invalid_container_ids_never_reach_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    for bad in ["../escape", "a/b", "", ".hidden"] {
        assert!(matches!(
            store.load(bad),
            Err(StateError::InvalidContainerId { .. })
        ));
        assert!(store.identity_path(bad).is_err());
        assert!(store.remove(bad).is_err());
    }
    let mut rec = record("ok");
    rec.container_id = "../../etc/x".into();
    assert!(store.save(&rec).is_err());
    assert!(!dir.path().join("etc").exists());
    assert_eq!(
        store.identity_path("ok").unwrap(),
        dir.path().join("identities/ok.json")
    );
}

#[test]
fn records_with_missing_optional_fields_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let minimal = r#"{"container_id":"m","netns":"/proc/1/ns/net","if_name":"ts0",
        "namespace":"ns","name":"p","uid":"u","hostname":"h","state":"pending","created_at":1}"#;
    fs::write(dir.path().join("pods/m.json"), minimal).unwrap();
    let rec = store.load("m").unwrap().unwrap();
    assert_eq!(rec.state, PodPhase::Pending);
    assert_eq!(rec.pod_net, None);
    assert_eq!(rec.ipv4, None);
}

#[test]
fn tags_and_hostname_survive_a_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let rec = record("tagged");
    store.save(&rec).unwrap();
    let loaded = store.load("tagged").unwrap().unwrap();
    assert_eq!(loaded.tags, vec!["tag:web", "tag:k8s-pod"]);
    assert_eq!(loaded.hostname, "prod-default-web-0");
    assert_eq!(loaded.version, RECORD_VERSION);
}

#[test]
fn a_version_1_record_reads_without_tags_and_is_saved_as_current() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    // As written before records carried a version and tags.
    let v1 = r#"{"container_id":"old","netns":"/var/run/netns/cni-1","if_name":"ts0",
        "namespace":"ns","name":"p","uid":"u","hostname":"unit-ns-p","node_id":7,
        "state":"running","created_at":1}"#;
    fs::write(dir.path().join("pods/old.json"), v1).unwrap();
    let mut rec = store.load("old").unwrap().unwrap();
    assert_eq!(rec.version, 1);
    assert!(rec.tags.is_empty());
    assert_eq!(rec.hostname, "unit-ns-p");
    assert_eq!(rec.state, PodPhase::Running);

    rec.tags = vec!["tag:web".into()];
    store.save(&rec).unwrap();
    let raw: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("pods/old.json")).unwrap()).unwrap();
    assert_eq!(raw["version"], serde_json::json!(RECORD_VERSION));
    assert_eq!(raw["tags"], serde_json::json!(["tag:web"]));
}
