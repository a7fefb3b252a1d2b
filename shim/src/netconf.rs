//! The network configuration the runtime streams on stdin.
//!
//! Fields are read one by one from the JSON object rather than through a
//! derived struct, so every error names the field at fault.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};
use tailnet_cni_proto::validate::mtu as validate_mtu;

use crate::env::validate_interface_name;
use crate::error::{CniError, DECODE_FAILURE, INCOMPATIBLE_VERSION};
use crate::selection::{pod_annotations, SelectionMode};
use crate::version::CniVersion;

pub const DEFAULT_DAEMON_SOCKET: &str = "/run/tailnet-cni/daemon.sock";
pub const DEFAULT_IF_NAME: &str = "ts0";
/// Longest call timeout `timeoutSeconds` may ask for.
pub const MAX_TIMEOUT_SECONDS: u64 = 600;

const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
/// The name an earlier draft of spec 1.1.0 used; libcni sends both.
const LEGACY_ATTACHMENTS_KEY: &str = "cni.dev/attachments";

/// One attachment the runtime still uses (GC input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub if_name: String,
}

/// The plugin's configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    pub plugin_type: String,
    /// Unix socket of `tailnet-cnid`.
    pub daemon_socket: PathBuf,
    /// The tailnet interface created inside the pod.
    pub if_name: String,
    /// Interface MTU; `None` lets the daemon choose.
    pub mtu: Option<u32>,
    /// Overrides the per-command call timeout.
    pub timeout: Option<Duration>,
    /// The previous plugin's result, kept as JSON so nothing in it is lost.
    pub prev_result: Option<Value>,
    pub runtime_config: Option<Map<String, Value>>,
    /// How the daemon selects pods (`selection`); `None` forwards every pod.
    pub selection: Option<SelectionMode>,
    /// The pod's annotations from runtimeConfig; `None` when the runtime
    /// passed none.
    pub pod_annotations: Option<BTreeMap<String, String>>,
    pub args: Option<Map<String, Value>>,
    /// GC's list of attachments to keep; `None` when the key is absent.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Parses stdin as a JSON object (code 6 when it is not one).
pub fn parse_json(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::new(
            DECODE_FAILURE,
            "no network configuration on stdin",
        ));
    }
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(CniError::new(
            DECODE_FAILURE,
            "network configuration on stdin is not a JSON object",
        )),
        Err(err) => Err(CniError::new(
            DECODE_FAILURE,
            format!("network configuration on stdin is not valid JSON: {err}"),
        )),
    }
}

/// The config's `cniVersion` if it is one this plugin speaks.
pub fn peek_version(config: &Map<String, Value>) -> Option<CniVersion> {
    config
        .get("cniVersion")
        .and_then(Value::as_str)
        .and_then(CniVersion::parse)
}

impl NetConf {
    pub fn from_json(config: &Map<String, Value>) -> Result<Self, CniError> {
        let version_text = string_field(config, "cniVersion")?
            .ok_or_else(|| CniError::invalid_config("cniVersion", "required but missing"))?;
        let cni_version = CniVersion::parse(version_text).ok_or_else(|| {
            CniError::new(
                INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {version_text:?} is not supported (supported: {})",
                    CniVersion::supported_list()
                ),
            )
        })?;

        // The runtime validates the network name when it loads the list.
        let name = non_empty_string(config, "name")?;
        let plugin_type = non_empty_string(config, "type")?;

        let daemon_socket = match string_field(config, "daemonSocket")? {
            None => PathBuf::from(DEFAULT_DAEMON_SOCKET),
            Some(path) if path.starts_with('/') => PathBuf::from(path),
            Some(path) => {
                return Err(CniError::invalid_config(
                    "daemonSocket",
                    format!("{path:?} is not an absolute path"),
                ))
            }
        };
        let if_name = string_field(config, "ifName")?
            .unwrap_or(DEFAULT_IF_NAME)
            .to_owned();
        validate_interface_name(&if_name)
            .map_err(|problem| CniError::invalid_config("ifName", problem))?;

        let mtu = match integer_field(config, "mtu")? {
            None => None,
            Some(mtu) => Some(
                validate_mtu(mtu).map_err(|invalid| CniError::invalid_config("mtu", invalid))?,
            ),
        };
        let timeout = match integer_field(config, "timeoutSeconds")? {
            None => None,
            Some(seconds) if (1..=MAX_TIMEOUT_SECONDS).contains(&seconds) => {
                Some(Duration::from_secs(seconds))
            }
            Some(seconds) => {
                return Err(CniError::invalid_config(
                    "timeoutSeconds",
                    format!("{seconds} is outside 1..={MAX_TIMEOUT_SECONDS}"),
                ))
            }
        };

        let prev_result = match config.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(value @ Value::Object(_)) => Some(value.clone()),
            Some(_) => {
                return Err(CniError::invalid_config(
                    "prevResult",
                    "must be a JSON object",
                ))
            }
        };
        let runtime_config = object_field(config, "runtimeConfig")?;
        let selection = match string_field(config, "selection")? {
            None => None,
            Some(text) => Some(SelectionMode::parse(text).ok_or_else(|| {
                CniError::invalid_config(
                    "selection",
                    format!("{text:?} is not one of \"annotated\", \"namespace\", \"all\""),
                )
            })?),
        };
        let pod_annotations = pod_annotations(runtime_config.as_ref())?;
        let args = object_field(config, "args")?;
        let valid_attachments = match attachments_field(config, VALID_ATTACHMENTS_KEY)? {
            Some(list) => Some(list),
            None => attachments_field(config, LEGACY_ATTACHMENTS_KEY)?,
        };

        Ok(Self {
            cni_version,
            name,
            plugin_type,
            daemon_socket,
            if_name,
            mtu,
            timeout,
            prev_result,
            runtime_config,
            selection,
            pod_annotations,
            args,
            valid_attachments,
        })
    }
}

fn string_field<'a>(
    config: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, CniError> {
    match config.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(CniError::invalid_config(field, "must be a string")),
    }
}

fn non_empty_string(config: &Map<String, Value>, field: &str) -> Result<String, CniError> {
    match string_field(config, field)? {
        Some(text) if !text.is_empty() => Ok(text.to_owned()),
        _ => Err(CniError::invalid_config(field, "required but missing")),
    }
}

fn integer_field(config: &Map<String, Value>, field: &str) -> Result<Option<u64>, CniError> {
    match config.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| CniError::invalid_config(field, "must be a non-negative integer")),
    }
}

fn object_field(
    config: &Map<String, Value>,
    field: &str,
) -> Result<Option<Map<String, Value>>, CniError> {
    match config.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map.clone())),
        Some(_) => Err(CniError::invalid_config(field, "must be a JSON object")),
    }
}

fn attachments_field(
    config: &Map<String, Value>,
    field: &str,
) -> Result<Option<Vec<Attachment>>, CniError> {
    let items = match config.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(CniError::invalid_config(field, "must be an array")),
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let text = |key: &str| {
                item.get(key).and_then(Value::as_str).ok_or_else(|| {
                    CniError::invalid_config(field, format!("entry {index} lacks a string `{key}`"))
                })
            };
            Ok(Attachment {
                container_id: text("containerID")?.to_owned(),
                if_name: text("ifname")?.to_owned(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::INVALID_CONFIG;

    fn parse(value: Value) -> Result<NetConf, CniError> {
        let Value::Object(map) = value else {
            panic!("test config must be an object")
        };
        NetConf::from_json(&map)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let conf =
            parse(json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "tailnet-cni"}))
                .unwrap();
        assert_eq!(conf.cni_version, CniVersion::V1_0_0);
        assert_eq!(conf.daemon_socket, PathBuf::from(DEFAULT_DAEMON_SOCKET));
        assert_eq!(conf.if_name, "ts0");
        assert_eq!(conf.mtu, None);
        assert_eq!(conf.timeout, None);
        assert_eq!(conf.prev_result, None);
        assert_eq!(conf.valid_attachments, None);
        assert_eq!(conf.selection, None);
        assert_eq!(conf.pod_annotations, None);
    }

    #[test]
    fn selection_and_pod_annotations_are_read() {
        let conf = parse(json!({
            "cniVersion": "1.0.0", "name": "net", "type": "tailnet-cni",
            "selection": "annotated",
            "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"tailnet-cni.io/enabled": "true"}}
        }))
        .unwrap();
        assert_eq!(conf.selection, Some(SelectionMode::Annotated));
        assert_eq!(
            conf.pod_annotations,
            Some(BTreeMap::from([(
                "tailnet-cni.io/enabled".to_string(),
                "true".to_string()
            )]))
        );
    }

    #[test]
    fn plugin_keys_are_read() {
        let conf = parse(json!({
            "cniVersion": "1.1.0", "name": "net", "type": "tailnet-cni",
            "daemonSocket": "/tmp/d.sock", "ifName": "tail0", "mtu": 1280, "timeoutSeconds": 5,
            "prevResult": {"cniVersion": "1.1.0"},
            "runtimeConfig": {"x": 1}, "args": {"cni": {"a": "b"}},
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]
        }))
        .unwrap();
        assert_eq!(conf.daemon_socket, PathBuf::from("/tmp/d.sock"));
        assert_eq!(conf.if_name, "tail0");
        assert_eq!(conf.mtu, Some(1280));
        assert_eq!(conf.timeout, Some(Duration::from_secs(5)));
        assert_eq!(conf.prev_result, Some(json!({"cniVersion": "1.1.0"})));
        assert_eq!(conf.args.unwrap()["cni"], json!({"a": "b"}));
        assert_eq!(
            conf.valid_attachments,
            Some(vec![Attachment {
                container_id: "c1".into(),
                if_name: "eth0".into()
            }])
        );
    }

    #[test]
    fn legacy_attachments_key_is_accepted() {
        let conf = parse(json!({
            "cniVersion": "1.1.0", "name": "net", "type": "t",
            "cni.dev/attachments": [{"containerID": "c2", "ifname": "eth1"}]
        }))
        .unwrap();
        assert_eq!(conf.valid_attachments.unwrap()[0].container_id, "c2");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let base = json!({"cniVersion": "1.1.0", "name": "net", "type": "t"});
        let cases: Vec<(Value, u32, &str)> = vec![
            (
                json!({"name": "net", "type": "t"}),
                INVALID_CONFIG,
                "cniVersion",
            ),
            (
                json!({"cniVersion": 1, "name": "net", "type": "t"}),
                INVALID_CONFIG,
                "cniVersion",
            ),
            (
                json!({"cniVersion": "0.2.0", "name": "net", "type": "t"}),
                INCOMPATIBLE_VERSION,
                "0.2.0",
            ),
            (
                json!({"cniVersion": "9.9.9", "name": "net", "type": "t"}),
                INCOMPATIBLE_VERSION,
                "9.9.9",
            ),
            (
                json!({"cniVersion": "1.1.0", "type": "t"}),
                INVALID_CONFIG,
                "`name`",
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "", "type": "t"}),
                INVALID_CONFIG,
                "`name`",
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "net"}),
                INVALID_CONFIG,
                "`type`",
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "net", "type": ""}),
                INVALID_CONFIG,
                "`type`",
            ),
        ];
        let mut cases = cases;
        for (field, value, needle) in [
            ("mtu", json!(100), "`mtu`"),
            ("mtu", json!(70000), "`mtu`"),
            // Above the engine's buffers: packets would be cut.
            ("mtu", json!(9001), "`mtu`"),
            ("mtu", json!("1500"), "`mtu`"),
            ("mtu", json!(-1), "`mtu`"),
            ("ifName", json!("way-too-long-name0"), "`ifName`"),
            ("ifName", json!(7), "`ifName`"),
            ("daemonSocket", json!("relative.sock"), "`daemonSocket`"),
            ("timeoutSeconds", json!(0), "`timeoutSeconds`"),
            ("timeoutSeconds", json!(1.5), "`timeoutSeconds`"),
            ("prevResult", json!([]), "`prevResult`"),
            ("runtimeConfig", json!("x"), "`runtimeConfig`"),
            (
                "runtimeConfig",
                json!({"io.kubernetes.cri.pod-annotations": ["x"]}),
                "io.kubernetes.cri.pod-annotations",
            ),
            ("selection", json!("namespaces"), "`selection`"),
            ("selection", json!(true), "`selection`"),
            ("args", json!(1), "`args`"),
            (
                "cni.dev/valid-attachments",
                json!([{"containerID": "c"}]),
                "ifname",
            ),
        ] {
            let mut config = base.clone();
            config[field] = value;
            cases.push((config, INVALID_CONFIG, needle));
        }
        for (config, code, needle) in cases {
            let err = parse(config.clone()).unwrap_err();
            assert_eq!(err.code, code, "{config}: {}", err.msg);
            assert!(err.msg.contains(needle), "{config}: {}", err.msg);
        }
    }

    #[test]
    fn stdin_that_is_not_a_json_object_is_a_decode_failure() {
        for input in [
            &b""[..],
            b"  \n",
            b"{",
            b"[1]",
            b"\"x\"",
            b"{\"a\":1}garbage",
        ] {
            let err = parse_json(input).unwrap_err();
            assert_eq!(err.code, DECODE_FAILURE, "{input:?}");
        }
        assert!(parse_json(br#"{"cniVersion":"1.0.0"}"#).is_ok());
    }

    #[test]
    fn peek_version_only_reports_supported_versions() {
        let map = parse_json(br#"{"cniVersion":"0.4.0"}"#).unwrap();
        assert_eq!(peek_version(&map), Some(CniVersion::V0_4_0));
        let map = parse_json(br#"{"cniVersion":"0.2.0"}"#).unwrap();
        assert_eq!(peek_version(&map), None);
    }
}
