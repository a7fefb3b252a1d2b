use super::*;
use crate::config::Selection;
use crate::selection::{ENABLED, TAGS};

fn pod(namespace: &str, name: &str, uid: &str) -> PodRef {
    PodRef {
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
    }
}

fn listed(namespace: &str, name: &str, uid: &str, annotations: &[(&str, &str)]) -> ListedPod {
    ListedPod {
        pod: pod(namespace, name, uid),
        running: true,
        host_network: false,
        terminating: false,
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn labels(entries: &[(&str, &str)]) -> BTreeMap<String, BTreeMap<String, String>> {
    entries
        .iter()
        .map(|(ns, value)| {
            (
                ns.to_string(),
                BTreeMap::from([(ENABLED.to_string(), value.to_string())]),
            )
        })
        .collect()
}

fn detect(
    mode: Selection,
    listed: &[ListedPod],
    known: &[PodRef],
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<PodRef> {
    let candidates = unrecorded(listed, known);
    missing_plugin(
        &Policy::new(mode, vec!["tag:web".to_string()]),
        &candidates,
        namespace_labels,
    )
}

#[test]
fn annotated_running_pod_without_a_record_is_missing() {
    let pods = [
        listed("apps", "web", "u1", &[(ENABLED, "true")]),
        listed("apps", "plain", "u2", &[]),
    ];
    assert_eq!(
        detect(Selection::Annotated, &pods, &[], &BTreeMap::new()),
        vec![pod("apps", "web", "u1")]
    );
}

#[test]
fn a_record_with_the_same_uid_or_name_accounts_for_the_pod() {
    let pods = [
        listed("apps", "web", "u1", &[(ENABLED, "true")]),
        listed("apps", "db", "u3", &[(ENABLED, "true")]),
    ];
    // The runtime passed no UID for db's record: its name decides.
    let known = [pod("apps", "web", "u1"), pod("apps", "db", "")];
    assert!(detect(Selection::Annotated, &pods, &known, &BTreeMap::new()).is_empty());
}

#[test]
fn a_record_of_a_replaced_pod_does_not_count() {
    // Same name, new UID: the record is the old pod's.
    let pods = [listed("apps", "web", "u9", &[(ENABLED, "true")])];
    let known = [pod("apps", "web", "u1")];
    assert_eq!(
        detect(Selection::Annotated, &pods, &known, &BTreeMap::new()),
        vec![pod("apps", "web", "u9")]
    );
}

#[test]
fn pending_host_network_and_terminating_pods_are_not_missing() {
    let mut pending = listed("apps", "web", "u1", &[(ENABLED, "true")]);
    pending.running = false;
    let mut host = listed("apps", "agent", "u2", &[(ENABLED, "true")]);
    host.host_network = true;
    let mut evicted = listed("apps", "old", "u3", &[(ENABLED, "true")]);
    evicted.terminating = true;
    let pods = [pending, host, evicted];
    assert!(detect(Selection::Annotated, &pods, &[], &BTreeMap::new()).is_empty());
}

#[test]
fn namespace_label_opts_in_unless_the_pod_opts_out() {
    let pods = [
        listed("team", "api", "u1", &[]),
        listed("team", "batch", "u2", &[(ENABLED, "false")]),
        listed("other", "api", "u3", &[]),
    ];
    let candidates = unrecorded(&pods, &[]);
    assert_eq!(
        namespaces_to_read(&Policy::new(Selection::Namespace, Vec::new()), &candidates),
        BTreeSet::from(["team".to_string(), "other".to_string()])
    );
    assert_eq!(
        detect(
            Selection::Namespace,
            &pods,
            &[],
            &labels(&[("team", "true")])
        ),
        vec![pod("team", "api", "u1")]
    );
}

#[test]
fn all_mode_counts_every_pod_that_does_not_opt_out() {
    let pods = [
        listed("apps", "web", "u1", &[]),
        listed("apps", "batch", "u2", &[(ENABLED, "false")]),
    ];
    let candidates = unrecorded(&pods, &[]);
    assert!(namespaces_to_read(&Policy::new(Selection::All, Vec::new()), &candidates).is_empty());
    assert_eq!(
        detect(Selection::All, &pods, &[], &BTreeMap::new()),
        vec![pod("apps", "web", "u1")]
    );
}

#[test]
fn a_pod_the_plugin_would_refuse_is_not_counted() {
    let pods = [
        listed("apps", "ok", "u1", &[(ENABLED, "true"), (TAGS, "tag:web")]),
        listed(
            "apps",
            "refused",
            "u2",
            &[(ENABLED, "true"), (TAGS, "tag:admin")],
        ),
    ];
    assert_eq!(
        detect(Selection::Annotated, &pods, &[], &BTreeMap::new()),
        vec![pod("apps", "ok", "u1")]
    );
}

#[test]
fn from_api_reads_phase_host_network_and_uid() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "apps", "name": "web", "uid": "u1",
                     "annotations": {ENABLED: "true"},
                     "deletionTimestamp": "2026-01-02T03:04:05Z"},
        "spec": {"containers": [], "hostNetwork": true, "nodeName": "node-a"},
        "status": {"phase": "Running"},
    }))
    .expect("a valid pod");
    let listed = ListedPod::from_api(&pod).expect("the pod has a name");
    assert_eq!(
        listed.pod,
        super::PodRef {
            namespace: "apps".into(),
            name: "web".into(),
            uid: "u1".into()
        }
    );
    assert!(listed.running);
    assert!(listed.host_network);
    assert!(listed.terminating);
    assert_eq!(
        listed.annotations.get(ENABLED).map(String::as_str),
        Some("true")
    );
}
