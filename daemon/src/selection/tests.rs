use super::*;
use tailnet_cni_proto::selection::{ACCEPT_ROUTES_ANNOTATION, EXIT_NODE_ANNOTATION};

fn meta(annotations: &[(&str, &str)], ns_labels: &[(&str, &str)]) -> PodMeta {
    PodMeta {
        uid: Some("uid-1".into()),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        namespace_labels: ns_labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn run(mode: Selection, m: &PodMeta) -> Result<Decision, SelectionError> {
    decide(
        mode,
        &["tag:k8s-pod".into(), "tag:web".into()],
        "default",
        "web",
        "uid-1",
        m,
    )
}

#[test]
fn annotated_mode_needs_an_annotation_or_namespace_label() {
    assert_eq!(
        run(Selection::Annotated, &meta(&[], &[])).unwrap(),
        Decision::Skip
    );
    assert!(matches!(
        run(Selection::Annotated, &meta(&[(ENABLED, "true")], &[])).unwrap(),
        Decision::Join { .. }
    ));
    assert!(matches!(
        run(Selection::Annotated, &meta(&[], &[(ENABLED, "true")])).unwrap(),
        Decision::Join { .. }
    ));
    // A pod can opt out of a labelled namespace.
    assert_eq!(
        run(
            Selection::Annotated,
            &meta(&[(ENABLED, "false")], &[(ENABLED, "true")])
        )
        .unwrap(),
        Decision::Skip
    );
}

#[test]
fn all_mode_takes_every_pod_but_the_opted_out() {
    assert!(matches!(
        run(Selection::All, &meta(&[], &[])).unwrap(),
        Decision::Join { .. }
    ));
    assert_eq!(
        run(Selection::All, &meta(&[(ENABLED, "false")], &[])).unwrap(),
        Decision::Skip
    );
}

#[test]
fn hostname_and_allowed_tags_come_from_annotations() {
    let m = meta(
        &[
            (ENABLED, "true"),
            (HOSTNAME, " nginx "),
            (TAGS, "tag:web, tag:k8s-pod"),
        ],
        &[],
    );
    assert_eq!(
        run(Selection::Annotated, &m).unwrap(),
        Decision::Join {
            hostname: Some("nginx".into()),
            tags: vec!["tag:web".into(), "tag:k8s-pod".into()],
            routes: RouteRequest::default(),
        }
    );
}

#[test]
fn tags_outside_the_allowlist_are_refused_by_name() {
    let m = meta(&[(ENABLED, "true"), (TAGS, "tag:admin")], &[]);
    let err = run(Selection::Annotated, &m).unwrap_err();
    assert!(err.to_string().contains("tag:admin"), "{err}");
}

#[test]
fn a_replaced_pod_is_detected_by_uid() {
    let mut m = meta(&[(ENABLED, "true")], &[]);
    m.uid = Some("uid-2".into());
    let err = run(Selection::Annotated, &m).unwrap_err();
    assert!(matches!(err, SelectionError::UidMismatch { .. }));
}

#[test]
fn hostnames_must_be_dns_labels() {
    for bad in ["web_1", "-web", "web-", "a.b", &"a".repeat(64)] {
        let m = meta(&[(ENABLED, "true"), (HOSTNAME, bad)], &[]);
        let err = run(Selection::Annotated, &m).unwrap_err();
        assert!(
            matches!(err, SelectionError::InvalidHostname { ref hostname, .. } if hostname == bad),
            "{bad}: {err}"
        );
    }
    for good in ["web-1", "Nginx", &"a".repeat(63)] {
        let m = meta(&[(ENABLED, "true"), (HOSTNAME, good)], &[]);
        assert!(
            matches!(run(Selection::Annotated, &m), Ok(Decision::Join { .. })),
            "{good}"
        );
    }
}

#[test]
fn refusals_of_the_pod_are_permanent_and_outages_are_not() {
    let tag = run(
        Selection::Annotated,
        &meta(&[(ENABLED, "true"), (TAGS, "tag:admin")], &[]),
    )
    .unwrap_err();
    let hostname = run(
        Selection::Annotated,
        &meta(&[(ENABLED, "true"), (HOSTNAME, "a b")], &[]),
    )
    .unwrap_err();
    let mut replaced = meta(&[(ENABLED, "true")], &[]);
    replaced.uid = Some("uid-2".into());
    let replaced = run(Selection::Annotated, &replaced).unwrap_err();
    for err in [tag, hostname, replaced] {
        assert!(err.is_permanent(), "{err}");
    }
    assert!(!SelectionError::NoClient("none".into()).is_permanent());
    let api = SelectionError::Api {
        namespace: "default".into(),
        name: "web".into(),
        source: Box::new(kube::Error::LinesCodecMaxLineLengthExceeded),
    };
    assert!(!api.is_permanent());
}

fn runtime(
    mode: Selection,
    annotations: &[(&str, &str)],
    ns_labels: &[(&str, &str)],
) -> Result<Decision, SelectionError> {
    let m = meta(annotations, ns_labels);
    decide_from_runtime(
        mode,
        &["tag:web".into()],
        "default",
        "web",
        &m.annotations,
        m.namespace_labels,
    )
}

#[test]
fn runtime_annotations_decide_without_a_uid() {
    assert_eq!(
        runtime(
            Selection::Annotated,
            &[
                (ENABLED, "true"),
                (HOSTNAME, "web"),
                (TAGS, "tag:web"),
                (ACCEPT_ROUTES_ANNOTATION, "true"),
                (EXIT_NODE_ANNOTATION, "edge-router")
            ],
            &[]
        )
        .unwrap(),
        Decision::Join {
            hostname: Some("web".into()),
            tags: vec!["tag:web".into()],
            routes: RouteRequest {
                accept_routes: Some(true),
                exit_node: Some("edge-router".into()),
            },
        }
    );
    assert_eq!(
        runtime(Selection::All, &[(ENABLED, "false")], &[]).unwrap(),
        Decision::Skip
    );
    assert_eq!(
        runtime(Selection::Annotated, &[], &[]).unwrap(),
        Decision::Skip
    );
    assert!(matches!(
        runtime(Selection::Annotated, &[], &[(ENABLED, "true")]).unwrap(),
        Decision::Join { .. }
    ));
    assert!(matches!(
        runtime(Selection::All, &[], &[]).unwrap(),
        Decision::Join { .. }
    ));
    assert!(matches!(
        runtime(
            Selection::Annotated,
            &[(ENABLED, "true"), (TAGS, "tag:admin")],
            &[]
        ),
        Err(SelectionError::TagNotAllowed { .. })
    ));
}

#[test]
fn namespace_labels_matter_only_for_unflagged_pods_in_annotated_mode() {
    let none = BTreeMap::new();
    let flagged = meta(&[(ENABLED, "false")], &[]).annotations;
    assert!(needs_namespace_labels(Selection::Annotated, &none));
    assert!(!needs_namespace_labels(Selection::Annotated, &flagged));
    assert!(!needs_namespace_labels(Selection::All, &none));
}

#[tokio::test]
async fn runtime_annotations_need_no_api_client() {
    let selector = Selector::without_api(Selection::Annotated, vec![]);
    let opted_in = meta(&[(ENABLED, "true")], &[]).annotations;
    assert!(matches!(
        selector
            .select_from_runtime("default", "web", &opted_in)
            .await
            .unwrap(),
        Decision::Join { .. }
    ));
    assert_eq!(
        selector
            .select_from_runtime("default", "web", &BTreeMap::new())
            .await
            .unwrap(),
        Decision::Skip
    );
}

#[tokio::test]
async fn pods_outside_kubernetes_follow_the_mode() {
    let all = Selector::without_api(Selection::All, vec![]);
    assert!(matches!(
        all.select("", "podman-ctr", "").await.unwrap(),
        Decision::Join { .. }
    ));
    let annotated = Selector::without_api(Selection::Annotated, vec![]);
    assert_eq!(
        annotated.select("", "podman-ctr", "").await.unwrap(),
        Decision::Skip
    );
    assert!(matches!(
        annotated.select("default", "web", "u").await,
        Err(SelectionError::NoClient(_))
    ));
}
