use crate::config::Tenancy;

use super::*;
use tailnet_cni_proto::selection::{ACCEPT_ROUTES_ANNOTATION, EXIT_NODE_ANNOTATION};

fn meta(annotations: &[(&str, &str)], ns_labels: &[(&str, &str)]) -> PodMeta {
    PodMeta {
        uid: Some("uid-1".into()),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        namespace_labels: Some(
            ns_labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
    }
}

/// The tests' cluster: `homelab`, whose `default` namespace may choose
/// hostnames.
fn policy(mode: Selection, allowed_tags: &[&str], tenancy: Tenancy) -> Policy {
    Policy {
        mode,
        guardrails: Guardrails::new(
            "homelab",
            allowed_tags.iter().map(|t| t.to_string()).collect(),
            Tenancy {
                hostname_namespaces: vec!["default".into()],
                ..tenancy
            },
        ),
    }
}

fn run(mode: Selection, m: &PodMeta) -> Result<Decision, SelectionError> {
    decide(
        &policy(mode, &["tag:k8s-pod", "tag:web"], Tenancy::default()),
        "default",
        "web",
        "uid-1",
        m,
    )
}

#[test]
fn annotated_mode_needs_an_annotation_and_namespace_mode_takes_the_label_too() {
    assert_eq!(
        run(Selection::Annotated, &meta(&[], &[])).unwrap(),
        Decision::Skip
    );
    assert!(matches!(
        run(Selection::Annotated, &meta(&[(ENABLED, "true")], &[])).unwrap(),
        Decision::Join { .. }
    ));
    // The shim skips unannotated pods in `annotated` mode: the daemon must
    // agree, label or not.
    assert_eq!(
        run(Selection::Annotated, &meta(&[], &[(ENABLED, "true")])).unwrap(),
        Decision::Skip
    );
    assert!(matches!(
        run(Selection::Namespace, &meta(&[], &[(ENABLED, "true")])).unwrap(),
        Decision::Join { .. }
    ));
    assert_eq!(
        run(Selection::Namespace, &meta(&[], &[])).unwrap(),
        Decision::Skip
    );
    // A pod can opt out of a labelled namespace.
    assert_eq!(
        run(
            Selection::Namespace,
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
        &policy(mode, &["tag:web"], Tenancy::default()),
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
        runtime(Selection::Namespace, &[], &[(ENABLED, "true")]).unwrap(),
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
fn namespace_labels_matter_only_for_unflagged_pods_in_namespace_mode() {
    let none = BTreeMap::new();
    let flagged = meta(&[(ENABLED, "false")], &[]).annotations;
    assert!(needs_namespace_labels(Selection::Namespace, &none));
    assert!(!needs_namespace_labels(Selection::Namespace, &flagged));
    assert!(!needs_namespace_labels(Selection::Annotated, &none));
    assert!(!needs_namespace_labels(Selection::All, &none));
}

#[tokio::test]
async fn runtime_annotations_need_no_api_client() {
    let selector = Selector::without_api(Policy::new(Selection::Annotated, vec![]));
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
    let all = Selector::without_api(Policy::new(Selection::All, vec![]));
    assert!(matches!(
        all.select("", "podman-ctr", "").await.unwrap(),
        Decision::Join { .. }
    ));
    let annotated = Selector::without_api(Policy::new(Selection::Annotated, vec![]));
    assert_eq!(
        annotated.select("", "podman-ctr", "").await.unwrap(),
        Decision::Skip
    );
    assert!(matches!(
        annotated.select("default", "web", "u").await,
        Err(SelectionError::NoClient(_))
    ));
}

/// Tenant guardrails: pods of `namespace` under `tenancy`, cluster
/// `homelab`, global allowlist `tag:k8s-pod`.
fn tenant(
    mode: Selection,
    tenancy: &Tenancy,
    namespace: &str,
    m: &PodMeta,
) -> Result<Decision, SelectionError> {
    let policy = Policy {
        mode,
        guardrails: Guardrails::new("homelab", vec!["tag:k8s-pod".into()], tenancy.clone()),
    };
    decide(&policy, namespace, "web", "uid-1", m)
}

fn listed(namespaces: &[&str]) -> Tenancy {
    Tenancy {
        namespaces: Some(namespaces.iter().map(|n| n.to_string()).collect()),
        ..Tenancy::default()
    }
}

#[test]
fn only_listed_namespaces_may_opt_in() {
    let tenancy = listed(&["team-a"]);
    let opted_in = meta(&[(ENABLED, "true")], &[]);
    assert!(matches!(
        tenant(Selection::Annotated, &tenancy, "team-a", &opted_in),
        Ok(Decision::Join { .. })
    ));
    let err = tenant(Selection::Annotated, &tenancy, "team-b", &opted_in).unwrap_err();
    assert!(
        matches!(err, SelectionError::NamespaceNotAllowed { ref namespace, .. } if namespace == "team-b"),
        "{err}"
    );
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains("tenancy.namespaces"), "{err}");
    // An empty list lets no namespace in.
    assert!(matches!(
        tenant(Selection::Annotated, &listed(&[]), "team-a", &opted_in),
        Err(SelectionError::NamespaceNotAllowed { .. })
    ));
}

#[test]
fn pods_that_only_follow_the_mode_are_skipped_outside_allowed_namespaces() {
    let tenancy = listed(&["team-a"]);
    assert_eq!(
        tenant(Selection::All, &tenancy, "kube-system", &meta(&[], &[])).unwrap(),
        Decision::Skip
    );
    assert_eq!(
        tenant(
            Selection::Namespace,
            &tenancy,
            "team-b",
            &meta(&[], &[(ENABLED, "true")])
        )
        .unwrap(),
        Decision::Skip
    );
    assert!(matches!(
        tenant(Selection::All, &tenancy, "team-a", &meta(&[], &[])),
        Ok(Decision::Join { .. })
    ));
}

#[test]
fn a_namespace_label_can_allow_a_namespace() {
    let tenancy = Tenancy {
        namespaces: Some(vec!["team-a".into()]),
        namespace_label: Some("example.com/tailnet".into()),
        ..Tenancy::default()
    };
    let labelled = meta(&[(ENABLED, "true")], &[("example.com/tailnet", "true")]);
    let unlabelled = meta(&[(ENABLED, "true")], &[("example.com/tailnet", "no")]);
    assert!(matches!(
        tenant(Selection::Annotated, &tenancy, "team-b", &labelled),
        Ok(Decision::Join { .. })
    ));
    assert!(matches!(
        tenant(Selection::Annotated, &tenancy, "team-b", &unlabelled),
        Err(SelectionError::NamespaceNotAllowed { .. })
    ));
    // Listed namespaces need no label.
    assert!(matches!(
        tenant(Selection::Annotated, &tenancy, "team-a", &unlabelled),
        Ok(Decision::Join { .. })
    ));
    // Labels that cannot be read are an outage, not a refusal.
    let mut unknown = labelled.clone();
    unknown.namespace_labels = None;
    let err = tenant(Selection::Annotated, &tenancy, "team-b", &unknown).unwrap_err();
    assert!(
        matches!(err, SelectionError::NamespaceLabelsUnknown { .. }),
        "{err}"
    );
    assert!(!err.is_permanent(), "{err}");
}

#[test]
fn requested_hostnames_stay_under_the_namespace_prefix_unless_it_may_choose() {
    let asks = meta(&[(ENABLED, "true"), (HOSTNAME, "prod-db")], &[]);
    let hostname = |tenancy: &Tenancy, namespace: &str| match tenant(
        Selection::Annotated,
        tenancy,
        namespace,
        &asks,
    ) {
        Ok(Decision::Join { hostname, .. }) => hostname,
        other => panic!("{other:?}"),
    };
    let default = Tenancy::default();
    assert_eq!(
        hostname(&default, "dev").as_deref(),
        Some("homelab-dev-prod-db")
    );
    let infra_chooses = Tenancy {
        hostname_namespaces: vec!["infra".into()],
        ..Tenancy::default()
    };
    assert_eq!(
        hostname(&infra_chooses, "infra").as_deref(),
        Some("prod-db")
    );
    assert_eq!(
        hostname(&infra_chooses, "dev").as_deref(),
        Some("homelab-dev-prod-db")
    );
    // Without a request the daemon names the pod itself.
    let plain = meta(&[(ENABLED, "true")], &[]);
    assert!(matches!(
        tenant(Selection::Annotated, &default, "dev", &plain),
        Ok(Decision::Join { hostname: None, .. })
    ));
}

#[test]
fn a_namespace_with_its_own_tag_list_may_request_only_those() {
    let tenancy = Tenancy {
        tags: [("web".to_string(), vec!["tag:web".to_string()])].into(),
        ..Tenancy::default()
    };
    let asks = |tag: &str| meta(&[(ENABLED, "true"), (TAGS, tag)], &[]);
    assert!(matches!(
        tenant(Selection::Annotated, &tenancy, "web", &asks("tag:web")),
        Ok(Decision::Join { ref tags, .. }) if tags == &["tag:web".to_string()]
    ));
    // Its own list replaces the global one.
    let err = tenant(Selection::Annotated, &tenancy, "web", &asks("tag:k8s-pod")).unwrap_err();
    assert!(
        matches!(err, SelectionError::TagNotAllowed { ref tag, .. } if tag == "tag:k8s-pod"),
        "{err}"
    );
    assert!(err.is_permanent(), "{err}");
    // Another namespace cannot borrow it and keeps the global list.
    assert!(matches!(
        tenant(Selection::Annotated, &tenancy, "dev", &asks("tag:web")),
        Err(SelectionError::TagNotAllowed { .. })
    ));
    assert!(matches!(
        tenant(Selection::Annotated, &tenancy, "dev", &asks("tag:k8s-pod")),
        Ok(Decision::Join { .. })
    ));
}

#[test]
fn labels_are_read_only_when_the_decision_depends_on_them() {
    let guarded = Policy {
        mode: Selection::Annotated,
        guardrails: Guardrails::new(
            "homelab",
            vec![],
            Tenancy {
                namespaces: Some(vec!["team-a".into()]),
                namespace_label: Some("example.com/tailnet".into()),
                ..Tenancy::default()
            },
        ),
    };
    let opted_in = meta(&[(ENABLED, "true")], &[]).annotations;
    let opted_out = meta(&[(ENABLED, "false")], &[]).annotations;
    let none = BTreeMap::new();
    assert!(labels_matter(&guarded, "team-b", &opted_in));
    assert!(!labels_matter(&guarded, "team-a", &opted_in));
    assert!(!labels_matter(&guarded, "team-b", &opted_out));
    assert!(!labels_matter(&guarded, "team-b", &none));
    let open = Policy::new(Selection::Annotated, vec![]);
    assert!(!labels_matter(&open, "team-b", &opted_in));
    let by_label = Policy::new(Selection::Namespace, vec![]);
    assert!(labels_matter(&by_label, "team-b", &none));
}

#[tokio::test]
async fn a_guardrail_label_without_an_api_is_an_outage_for_opted_in_pods_only() {
    let selector = Selector::without_api(Policy {
        mode: Selection::Annotated,
        guardrails: Guardrails::new(
            "homelab",
            vec![],
            Tenancy {
                namespace_label: Some("example.com/tailnet".into()),
                ..Tenancy::default()
            },
        ),
    });
    let opted_in = meta(&[(ENABLED, "true")], &[]).annotations;
    let err = selector
        .select_from_runtime("team-b", "web", &opted_in)
        .await
        .unwrap_err();
    assert!(!err.is_permanent(), "{err}");
    assert_eq!(
        selector
            .select_from_runtime("team-b", "web", &BTreeMap::new())
            .await
            .unwrap(),
        Decision::Skip
    );
}
