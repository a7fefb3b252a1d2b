//! The CNI error object and the codes the shim reports.

use serde_json::{json, Value};

pub use tailnet_cni_proto::cni_code::*;

/// Catch-all code for failures no spec code describes (the reference
/// plugins' "internal error").
pub const INTERNAL: u32 = 999;

/// A failure reported to the runtime as the spec's error object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    /// CNI error code: 1-99 from the spec, 100+ plugin-specific.
    pub code: u32,
    /// What went wrong, naming the variable, field or socket at fault.
    pub msg: String,
    /// Optional longer explanation; empty when there is none.
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// A missing or malformed environment variable (code 4).
    pub fn invalid_env(variable: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(INVALID_ENV, format!("{variable}: {problem}"))
    }

    /// A malformed network configuration field (code 7).
    pub fn invalid_config(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(
            INVALID_CONFIG,
            format!("network config `{field}`: {problem}"),
        )
    }

    /// The error object as the spec prints it on stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut object = json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            object["details"] = Value::String(self.details.clone());
        }
        object
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_has_spec_shape() {
        let err = CniError::new(INVALID_CONFIG, "bad").with_details("more");
        assert_eq!(
            err.to_json("1.1.0"),
            json!({"cniVersion": "1.1.0", "code": 7, "msg": "bad", "details": "more"})
        );
        let bare = CniError::invalid_env("CNI_NETNS", "missing");
        assert_eq!(
            bare.to_json("0.4.0"),
            json!({"cniVersion": "0.4.0", "code": 4, "msg": "CNI_NETNS: missing"})
        );
    }
}
