use serde_json::json;

use super::*;
use crate::error::INVALID_CONFIG;

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// Every `selection` an entry can have, none included.
const MODES: [Option<SelectionMode>; 4] = [
    None,
    Some(SelectionMode::Annotated),
    Some(SelectionMode::Namespace),
    Some(SelectionMode::All),
];

#[test]
fn an_explicit_flag_decides_in_every_mode() {
    for mode in MODES {
        let opted_in = annotations(&[(ENABLED_ANNOTATION, " True ")]);
        assert_eq!(
            decide_locally(mode, Some(&opted_in)),
            LocalDecision::Forward,
            "{mode:?}"
        );
        for value in ["false", "no", ""] {
            let opted_out = annotations(&[(ENABLED_ANNOTATION, value)]);
            assert_eq!(
                decide_locally(mode, Some(&opted_out)),
                LocalDecision::Skip,
                "{mode:?} {value:?}"
            );
        }
    }
}

#[test]
fn without_the_flag_only_annotated_mode_skips() {
    let unannotated = annotations(&[("other.io/x", "true")]);
    assert_eq!(
        decide_locally(Some(SelectionMode::Annotated), Some(&unannotated)),
        LocalDecision::Skip
    );
    for mode in [
        None,
        Some(SelectionMode::Namespace),
        Some(SelectionMode::All),
    ] {
        assert_eq!(
            decide_locally(mode, Some(&unannotated)),
            LocalDecision::Forward,
            "{mode:?}"
        );
    }
}

#[test]
fn without_annotations_everything_is_forwarded() {
    for mode in MODES {
        assert_eq!(
            decide_locally(mode, None),
            LocalDecision::Forward,
            "{mode:?}"
        );
    }
}

#[test]
fn selection_values_parse_exactly() {
    assert_eq!(
        SelectionMode::parse("annotated"),
        Some(SelectionMode::Annotated)
    );
    assert_eq!(
        SelectionMode::parse("namespace"),
        Some(SelectionMode::Namespace)
    );
    assert_eq!(SelectionMode::parse("all"), Some(SelectionMode::All));
    assert_eq!(SelectionMode::parse("All"), None);
    assert_eq!(SelectionMode::parse(""), None);
}

#[test]
fn annotations_are_read_from_runtime_config() {
    let Value::Object(config) = json!({
        POD_ANNOTATIONS_CAPABILITY: {ENABLED_ANNOTATION: "true", "kubernetes.io/config.seen": "x"},
        "portMappings": []
    }) else {
        unreachable!()
    };
    assert_eq!(
        pod_annotations(Some(&config)).unwrap(),
        Some(annotations(&[
            (ENABLED_ANNOTATION, "true"),
            ("kubernetes.io/config.seen", "x")
        ]))
    );
    let Value::Object(without) = json!({"portMappings": [], POD_ANNOTATIONS_CAPABILITY: null})
    else {
        unreachable!()
    };
    assert_eq!(pod_annotations(Some(&without)).unwrap(), None);
    assert_eq!(pod_annotations(None).unwrap(), None);
}

#[test]
fn malformed_annotations_name_the_field() {
    for value in [json!("enabled"), json!([]), json!({"a": 1})] {
        let Value::Object(config) = json!({ POD_ANNOTATIONS_CAPABILITY: value }) else {
            unreachable!()
        };
        let err = pod_annotations(Some(&config)).unwrap_err();
        assert_eq!(err.code, INVALID_CONFIG, "{value}");
        assert!(err.msg.contains(POD_ANNOTATIONS_CAPABILITY), "{}", err.msg);
    }
}

#[test]
fn only_our_annotations_are_forwarded() {
    let all = annotations(&[
        (ENABLED_ANNOTATION, "true"),
        ("tailnet-cni.io/tags", "tag:web"),
        ("kubectl.kubernetes.io/last-applied-configuration", "{...}"),
    ]);
    assert_eq!(
        forwarded_annotations(&all),
        annotations(&[
            (ENABLED_ANNOTATION, "true"),
            ("tailnet-cni.io/tags", "tag:web")
        ])
    );
}
