use super::*;

/// k3s' flannel conflist as its agent writes it (pkg/agent/flannel).
const K3S_FLANNEL: &str = r#"{
  "name":"cbr0",
  "cniVersion":"1.0.0",
  "plugins":[
    {"type":"flannel","delegate":{"hairpinMode":true,"forceAddress":true,"isDefaultGateway":true}},
    {"type":"portmap","capabilities":{"portMappings":true}},
    {"type":"bandwidth","capabilities":{"bandwidth":true}}
  ]
}"#;

/// The upstream kube-flannel manifest's cni-conf.json.
const KUBE_FLANNEL: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;

/// A single-plugin .conf (Debian's bridge example).
const BRIDGE_CONF: &str = r#"{
  "cniVersion": "0.4.0",
  "name": "mynet",
  "type": "bridge",
  "bridge": "cni0",
  "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}
}"#;

fn entry() -> PluginEntry {
    PluginEntry {
        daemon_socket: PathBuf::from("/run/tailnet-cni/daemon.sock"),
        if_name: "ts0".into(),
        mtu: Some(1280),
        selection: None,
    }
}

fn types(text: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(text).unwrap();
    v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn appends_after_every_primary_plugin_and_keeps_them_intact() {
    let path = Path::new("10-flannel.conflist");
    for original in [K3S_FLANNEL, KUBE_FLANNEL] {
        let (out, outcome) = chain(path, original, &entry()).unwrap();
        assert_eq!(outcome, ChainOutcome::Appended);
        let mut expected = types(original);
        expected.push(PLUGIN_TYPE.to_string());
        assert_eq!(types(&out), expected);
        let before: Value = serde_json::from_str(original).unwrap();
        let after: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(before["name"], after["name"]);
        assert_eq!(before["cniVersion"], after["cniVersion"]);
        assert_eq!(before["plugins"][0], after["plugins"][0]);
        let ours = after["plugins"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(ours["daemonSocket"], "/run/tailnet-cni/daemon.sock");
        assert_eq!(ours["ifName"], "ts0");
        assert_eq!(ours["mtu"], 1280);
    }
}

#[test]
fn chaining_twice_is_a_no_op() {
    let path = Path::new("10-flannel.conflist");
    let (once, _) = chain(path, K3S_FLANNEL, &entry()).unwrap();
    let (twice, outcome) = chain(path, &once, &entry()).unwrap();
    assert_eq!(outcome, ChainOutcome::Unchanged);
    assert_eq!(once, twice);
}

#[test]
fn changed_settings_update_the_entry_in_place() {
    let path = Path::new("10-flannel.conflist");
    let (once, _) = chain(path, K3S_FLANNEL, &entry()).unwrap();
    let mut other = entry();
    other.mtu = Some(1400);
    let (out, outcome) = chain(path, &once, &other).unwrap();
    assert_eq!(outcome, ChainOutcome::Updated);
    assert_eq!(types(&out).iter().filter(|t| *t == PLUGIN_TYPE).count(), 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["plugins"][3]["mtu"], 1400);
}

#[test]
fn single_plugin_conf_becomes_a_chain() {
    let (out, outcome) = chain(Path::new("10-bridge.conf"), BRIDGE_CONF, &entry()).unwrap();
    assert_eq!(outcome, ChainOutcome::Appended);
    assert_eq!(types(&out), vec!["bridge", PLUGIN_TYPE]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "mynet");
    assert_eq!(v["plugins"][0]["ipam"]["subnet"], "10.22.0.0/16");
}

#[test]
fn unchain_restores_the_original_plugins() {
    let path = Path::new("10-flannel.conflist");
    let (chained, _) = chain(path, K3S_FLANNEL, &entry()).unwrap();
    let restored = unchain(path, &chained).unwrap().unwrap();
    let a: Value = serde_json::from_str(K3S_FLANNEL).unwrap();
    let b: Value = serde_json::from_str(&restored).unwrap();
    assert_eq!(a, b);
    assert!(unchain(path, K3S_FLANNEL).unwrap().is_none());
}

#[test]
fn broken_files_are_reported_by_name() {
    let err = chain(Path::new("/etc/cni/net.d/x.conflist"), "{", &entry()).unwrap_err();
    assert!(err.to_string().contains("/etc/cni/net.d/x.conflist"));
    let err = chain(Path::new("y.conflist"), r#"{"plugins": 3}"#, &entry()).unwrap_err();
    assert!(err.to_string().contains("not a list"));
}

#[test]
fn primary_config_is_the_first_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["20-other.conflist", "10-flannel.conflist", "05-notes.txt"] {
        std::fs::write(dir.path().join(name), "{}").unwrap();
    }
    let first = primary_config(dir.path()).unwrap().unwrap();
    assert_eq!(first.file_name().unwrap(), "10-flannel.conflist");
}

#[test]
fn unchain_gives_back_the_primary_config_byte_for_byte() {
    let path = Path::new("10-flannel.conflist");
    let compact = r#"{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
    let empty = "{ \"name\": \"x\", \"cniVersion\": \"1.0.0\", \"plugins\": [ ] }\n";
    let escaped =
        "{\"name\": \"a\\\"]}\", \"plugins\": [\n\t{\"type\": \"bridge\", \"x\": \"[{\"}\n]}";
    for original in [K3S_FLANNEL, KUBE_FLANNEL, compact, empty, escaped] {
        let (chained, outcome) = chain(path, original, &entry()).unwrap();
        assert_eq!(outcome, ChainOutcome::Appended);
        let mut expected = types(original);
        expected.push(PLUGIN_TYPE.to_string());
        assert_eq!(types(&chained), expected, "{chained}");
        let restored = unchain(path, &chained).unwrap().unwrap();
        assert_eq!(restored, original);
        assert!(unchain(path, &restored).unwrap().is_none());
    }
}

#[test]
fn appended_entry_follows_the_file_layout() {
    let (chained, _) = chain(Path::new("a.conflist"), KUBE_FLANNEL, &entry()).unwrap();
    let expected_tail =
        "{\"type\": \"portmap\", \"capabilities\": {\"portMappings\": true}},\n    {";
    assert!(chained.contains(expected_tail), "{chained}");
}

#[test]
fn entry_declares_the_pod_annotations_capability_and_selection_when_known() {
    let path = Path::new("10-flannel.conflist");
    let (out, _) = chain(path, K3S_FLANNEL, &entry()).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    let ours = v["plugins"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(ours["capabilities"][POD_ANNOTATIONS_CAPABILITY], true);
    assert_eq!(ours.get("selection"), None);
    for (selection, text) in [
        (SelectionMode::Annotated, "annotated"),
        (SelectionMode::Namespace, "namespace"),
        (SelectionMode::All, "all"),
    ] {
        let mut with_selection = entry();
        with_selection.selection = Some(selection);
        let (out, _) = chain(path, K3S_FLANNEL, &with_selection).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        let ours = v["plugins"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(ours["selection"], text);
    }
}
