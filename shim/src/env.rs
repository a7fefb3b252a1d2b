//! The `CNI_*` environment variables: which command, which container.
//!
//! The environment is read through a lookup function so tests can supply
//! their own; values that are not UTF-8 are rejected like malformed ones.

use std::ffi::OsString;
use std::fmt;

/// The rules shared with the daemon, used here on what the runtime passes.
pub use tailnet_cni_proto::validate::{
    container_id as validate_container_id, interface_name as validate_interface_name,
};

use crate::error::CniError;

pub const CNI_COMMAND: &str = "CNI_COMMAND";
pub const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
pub const CNI_NETNS: &str = "CNI_NETNS";
pub const CNI_IFNAME: &str = "CNI_IFNAME";
pub const CNI_ARGS: &str = "CNI_ARGS";
pub const CNI_PATH: &str = "CNI_PATH";

/// Reads one environment variable; `std::env::var_os` in production.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The operation the runtime asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub const ALL: [Command; 6] = [
        Command::Add,
        Command::Del,
        Command::Check,
        Command::Version,
        Command::Status,
        Command::Gc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// Reads `CNI_COMMAND`.
    pub fn from_env(lookup: EnvLookup<'_>) -> Result<Self, CniError> {
        let text = required(lookup, CNI_COMMAND)?;
        Command::ALL
            .into_iter()
            .find(|command| command.as_str() == text)
            .ok_or_else(|| {
                CniError::invalid_env(
                    CNI_COMMAND,
                    format!(
                        "unknown command {text:?} (expected ADD, DEL, CHECK, VERSION, STATUS or GC)"
                    ),
                )
            })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kubernetes pod identity from `CNI_ARGS`; empty strings outside Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub infra_container_id: String,
}

/// The environment of a command that acts on one container (ADD, DEL, CHECK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEnv {
    pub container_id: String,
    /// Path of the container's network namespace; empty only on DEL.
    pub netns: String,
    /// The runtime's (primary) interface name.
    pub if_name: String,
    pub args: PodArgs,
}

impl ContainerEnv {
    /// Reads and validates the variables `command` needs. `CNI_NETNS` is
    /// required for ADD and CHECK; DEL may come without it (the namespace can
    /// be gone already).
    pub fn from_env(command: Command, lookup: EnvLookup<'_>) -> Result<Self, CniError> {
        let container_id = required(lookup, CNI_CONTAINERID)?;
        validate_container_id(&container_id)
            .map_err(|problem| CniError::invalid_env(CNI_CONTAINERID, problem))?;
        let netns = match command {
            Command::Del => optional(lookup, CNI_NETNS)?.unwrap_or_default(),
            _ => required(lookup, CNI_NETNS)?,
        };
        let if_name = required(lookup, CNI_IFNAME)?;
        validate_interface_name(&if_name)
            .map_err(|problem| CniError::invalid_env(CNI_IFNAME, problem))?;
        let args = match optional(lookup, CNI_ARGS)? {
            Some(text) => parse_cni_args(&text)?,
            None => PodArgs::default(),
        };
        Ok(Self {
            container_id,
            netns,
            if_name,
            args,
        })
    }
}

/// GC must be given `CNI_PATH` (spec 1.1.0), even though this plugin
/// delegates to nothing.
pub fn require_cni_path(lookup: EnvLookup<'_>) -> Result<String, CniError> {
    required(lookup, CNI_PATH)
}

fn optional(lookup: EnvLookup<'_>, variable: &str) -> Result<Option<String>, CniError> {
    match lookup(variable) {
        None => Ok(None),
        Some(value) => value
            .into_string()
            .map(Some)
            .map_err(|_| CniError::invalid_env(variable, "is not valid UTF-8")),
    }
}

fn required(lookup: EnvLookup<'_>, variable: &str) -> Result<String, CniError> {
    match optional(lookup, variable)? {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(CniError::invalid_env(variable, "required but not set")),
    }
}

/// Parses `K=V;K=V`. Unknown keys are refused unless `IgnoreUnknown` is true,
/// as the reference plugins do; runtimes set it whenever they pass extras.
pub fn parse_cni_args(text: &str) -> Result<PodArgs, CniError> {
    let mut args = PodArgs::default();
    let mut ignore_unknown = false;
    let mut unknown = Vec::new();
    for pair in text.split(';').filter(|pair| !pair.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(CniError::invalid_env(
                CNI_ARGS,
                format!("{pair:?} is not a KEY=VALUE pair"),
            ));
        };
        match key {
            "IgnoreUnknown" => {
                ignore_unknown = parse_bool(value).ok_or_else(|| {
                    CniError::invalid_env(
                        CNI_ARGS,
                        format!("IgnoreUnknown={value:?} is not a boolean"),
                    )
                })?
            }
            "K8S_POD_NAMESPACE" => args.namespace = value.to_owned(),
            "K8S_POD_NAME" => args.name = value.to_owned(),
            "K8S_POD_UID" => args.uid = value.to_owned(),
            "K8S_POD_INFRA_CONTAINER_ID" => args.infra_container_id = value.to_owned(),
            other => unknown.push(other.to_owned()),
        }
    }
    if !ignore_unknown && !unknown.is_empty() {
        return Err(CniError::invalid_env(
            CNI_ARGS,
            format!(
                "unknown keys {} (set IgnoreUnknown=1 to allow them)",
                unknown.join(", ")
            ),
        ));
    }
    Ok(args)
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::error::INVALID_ENV;

    fn lookup_from(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |key| map.get(key).cloned()
    }

    const FULL: &[(&str, &str)] = &[
        (CNI_COMMAND, "ADD"),
        (CNI_CONTAINERID, "abc123"),
        (CNI_NETNS, "/run/netns/x"),
        (CNI_IFNAME, "eth0"),
        (
            CNI_ARGS,
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_UID=u-1;K8S_POD_INFRA_CONTAINER_ID=infra;OTHER=x",
        ),
    ];

    #[test]
    fn reads_every_command() {
        for command in Command::ALL {
            let lookup = lookup_from(&[(CNI_COMMAND, command.as_str())]);
            assert_eq!(Command::from_env(&lookup), Ok(command));
        }
        let err = Command::from_env(&lookup_from(&[(CNI_COMMAND, "add")])).unwrap_err();
        assert_eq!(err.code, INVALID_ENV);
        assert!(err.msg.contains("CNI_COMMAND"), "{}", err.msg);
        let err = Command::from_env(&lookup_from(&[])).unwrap_err();
        assert_eq!(err.msg, "CNI_COMMAND: required but not set");
    }

    #[test]
    fn reads_a_full_container_env() {
        let env = ContainerEnv::from_env(Command::Add, &lookup_from(FULL)).unwrap();
        assert_eq!(
            env,
            ContainerEnv {
                container_id: "abc123".into(),
                netns: "/run/netns/x".into(),
                if_name: "eth0".into(),
                args: PodArgs {
                    namespace: "ns".into(),
                    name: "web".into(),
                    uid: "u-1".into(),
                    infra_container_id: "infra".into(),
                },
            }
        );
    }

    #[test]
    fn each_required_variable_is_named_when_missing() {
        for (command, variable) in [
            (Command::Add, CNI_CONTAINERID),
            (Command::Add, CNI_NETNS),
            (Command::Add, CNI_IFNAME),
            (Command::Check, CNI_NETNS),
            (Command::Del, CNI_CONTAINERID),
            (Command::Del, CNI_IFNAME),
        ] {
            let vars: Vec<_> = FULL
                .iter()
                .copied()
                .filter(|(k, _)| *k != variable)
                .collect();
            let err = ContainerEnv::from_env(command, &lookup_from(&vars)).unwrap_err();
            assert_eq!(err.code, INVALID_ENV);
            assert_eq!(err.msg, format!("{variable}: required but not set"));
        }
    }

    #[test]
    fn del_accepts_a_missing_netns() {
        let vars: Vec<_> = FULL
            .iter()
            .copied()
            .filter(|(k, _)| *k != CNI_NETNS)
            .collect();
        let env = ContainerEnv::from_env(Command::Del, &lookup_from(&vars)).unwrap();
        assert_eq!(env.netns, "");
    }

    #[test]
    fn container_ids_follow_the_spec_pattern() {
        for good in ["a", "0", "abc-DEF_1.2", &"f".repeat(64)] {
            assert_eq!(validate_container_id(good), Ok(()), "{good}");
        }
        for bad in ["", "-a", "_a", ".a", "a b", "a/b", "a;b", "é"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn invalid_container_id_is_code_4_naming_the_variable() {
        let mut vars = FULL.to_vec();
        vars[1] = (CNI_CONTAINERID, "../etc");
        let err = ContainerEnv::from_env(Command::Add, &lookup_from(&vars)).unwrap_err();
        assert_eq!(err.code, INVALID_ENV);
        assert!(err.msg.starts_with("CNI_CONTAINERID: "), "{}", err.msg);
    }

    #[test]
    fn interface_names_follow_linux_rules() {
        for good in ["eth0", "ts0", "a", "fifteen-chars-x"] {
            assert_eq!(validate_interface_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "sixteen-chars-xx",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            assert!(validate_interface_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cni_args_refuse_unknown_keys_unless_told_to_ignore_them() {
        let err = parse_cni_args("K8S_POD_NAME=a;FOO=1").unwrap_err();
        assert_eq!(err.code, INVALID_ENV);
        assert!(err.msg.contains("FOO"), "{}", err.msg);
        let args = parse_cni_args("FOO=1;IgnoreUnknown=true;K8S_POD_NAME=a;").unwrap();
        assert_eq!(args.name, "a");
        assert_eq!(parse_cni_args("").unwrap(), PodArgs::default());
        let err = parse_cni_args("K8S_POD_NAME").unwrap_err();
        assert!(err.msg.contains("not a KEY=VALUE"), "{}", err.msg);
        let err = parse_cni_args("IgnoreUnknown=maybe").unwrap_err();
        assert!(err.msg.contains("IgnoreUnknown"), "{}", err.msg);
    }

    #[test]
    fn non_utf8_values_are_rejected() {
        use std::os::unix::ffi::OsStringExt;
        let lookup = |key: &str| match key {
            CNI_COMMAND => Some(OsString::from_vec(vec![0xff, 0xfe])),
            _ => None,
        };
        let err = Command::from_env(&lookup).unwrap_err();
        assert_eq!(err.msg, "CNI_COMMAND: is not valid UTF-8");
    }
}
