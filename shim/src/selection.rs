//! Deciding in the shim, from the annotations the runtime passes, which pods
//! never need the daemon.
//!
//! containerd (1.6+) and CRI-O pass the sandbox's annotations to a plugin
//! entry that declares the `io.kubernetes.cri.pod-annotations` capability, as
//! `runtimeConfig["io.kubernetes.cri.pod-annotations"]`, on ADD, CHECK and
//! DEL. A pod that did not opt in is then answered without the daemon, so a
//! daemon (or Kubernetes API) outage only affects pods that want the tailnet.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::CniError;

pub use tailnet_cni_proto::selection::{
    SelectionMode, ANNOTATION_PREFIX, ENABLED_ANNOTATION, POD_ANNOTATIONS_CAPABILITY,
};

/// Whether the shim can answer without the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalDecision {
    /// The pod does not join: answer without the daemon.
    Skip,
    /// The daemon decides (or sets the pod up).
    Forward,
}

/// Decides from the runtime's annotations when that is possible.
///
/// Without annotations, or without a configured `selection`, everything is
/// forwarded as before. The opt-in flag follows the daemon's reading: only
/// `"true"` (trimmed, any case) opts in, any other value opts out.
pub fn decide_locally(
    mode: Option<SelectionMode>,
    annotations: Option<&BTreeMap<String, String>>,
) -> LocalDecision {
    let Some(annotations) = annotations else {
        return LocalDecision::Forward;
    };
    match (annotations.get(ENABLED_ANNOTATION), mode) {
        (Some(value), _) if value.trim().eq_ignore_ascii_case("true") => LocalDecision::Forward,
        (Some(_), _) => LocalDecision::Skip,
        (None, Some(SelectionMode::Annotated)) => LocalDecision::Skip,
        (None, Some(SelectionMode::Namespace | SelectionMode::All) | None) => {
            LocalDecision::Forward
        }
    }
}

/// The pod's annotations from runtimeConfig; `None` when the runtime passed
/// none (the capability is not declared, or the runtime lacks it).
pub fn pod_annotations(
    runtime_config: Option<&Map<String, Value>>,
) -> Result<Option<BTreeMap<String, String>>, CniError> {
    let field = || format!("runtimeConfig.{POD_ANNOTATIONS_CAPABILITY}");
    let entries = match runtime_config.and_then(|config| config.get(POD_ANNOTATIONS_CAPABILITY)) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(entries)) => entries,
        Some(_) => return Err(CniError::invalid_config(&field(), "must be a JSON object")),
    };
    entries
        .iter()
        .map(|(key, value)| match value {
            Value::String(text) => Ok((key.clone(), text.clone())),
            _ => Err(CniError::invalid_config(
                &field(),
                format!("annotation {key:?} is not a string"),
            )),
        })
        .collect::<Result<BTreeMap<_, _>, _>>()
        .map(Some)
}

/// The annotations the daemon reads (`tailnet-cni.io/...`); a pod's other
/// annotations can be large and are none of the daemon's business.
pub fn forwarded_annotations(annotations: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    annotations
        .iter()
        .filter(|(key, _)| key.starts_with(ANNOTATION_PREFIX))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests;
