//! The CNI result: the previous plugin's result, extended with the tailnet
//! interface, then rendered in the requested spec version.
//!
//! Every level keeps the keys it does not know (`dns`, plugin-specific keys,
//! 1.1.0 route attributes, ...) in `extra`, so a result passes through the
//! shim without losing anything.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CniError, DECODE_FAILURE, INTERNAL};
use crate::version::CniVersion;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cni_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<Interface>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<IpConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<Route>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" or "6"; only in results before 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// CIDR notation.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// IP family of a CIDR string: `Some("4")`, `Some("6")`, or `None` when it
/// is not `address/prefix` with a prefix that fits the family.
pub fn cidr_family(cidr: &str) -> Option<&'static str> {
    let (address, prefix) = cidr.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    match address.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) if prefix <= 32 => Some("4"),
        IpAddr::V6(_) if prefix <= 128 => Some("6"),
        _ => None,
    }
}

impl CniResult {
    /// Reads a `prevResult` (code 7 when its shape is wrong).
    pub fn from_prev_result(prev_result: &Value) -> Result<Self, CniError> {
        serde_json::from_value(prev_result.clone())
            .map_err(|err| CniError::invalid_config("prevResult", err))
    }

    /// Our interface: named `name`, in `sandbox` or reported without one
    /// (see the ADD handling of an interface without MAC).
    fn interface_index(&self, name: &str, sandbox: &str) -> Option<usize> {
        self.interfaces.as_ref()?.iter().position(|interface| {
            interface.name == name
                && interface
                    .sandbox
                    .as_deref()
                    .is_none_or(|their_sandbox| sandbox.is_empty() || their_sandbox == sandbox)
        })
    }

    /// Whether an interface named `name` already lives in `sandbox`.
    pub fn has_interface(&self, name: &str, sandbox: &str) -> bool {
        self.interfaces.iter().flatten().any(|interface| {
            interface.name == name && interface.sandbox.as_deref() == Some(sandbox)
        })
    }

    /// Whether any interface is called `name`, in a sandbox or host-side.
    pub fn names_interface(&self, name: &str) -> bool {
        self.interfaces
            .iter()
            .flatten()
            .any(|interface| interface.name == name)
    }

    /// The addresses recorded for the interface `name` in `sandbox`; `None`
    /// when the result does not list that interface at all.
    pub fn addresses_of(&self, name: &str, sandbox: &str) -> Option<Vec<&IpConfig>> {
        let index = self.interface_index(name, sandbox)?;
        Some(
            self.ips
                .iter()
                .flatten()
                .filter(|ip| ip.interface == Some(index))
                .collect(),
        )
    }

    /// Appends `interface` after every existing one, its addresses (pointed
    /// at it) after the existing addresses, and `routes` not already listed.
    /// What the previous plugins put in stays first and unchanged, so the
    /// runtime keeps reading the primary address as the pod's address.
    pub fn append_interface(
        &mut self,
        interface: Interface,
        addresses: Vec<IpConfig>,
        routes: Vec<Route>,
    ) -> Result<(), CniError> {
        if let Some(bad) = addresses
            .iter()
            .find(|ip| cidr_family(&ip.address).is_none())
        {
            return Err(CniError::new(
                DECODE_FAILURE,
                format!(
                    "daemon returned an address that is not CIDR: {:?}",
                    bad.address
                ),
            ));
        }
        let interfaces = self.interfaces.get_or_insert_with(Vec::new);
        let index = interfaces.len();
        interfaces.push(interface);
        let ips = self.ips.get_or_insert_with(Vec::new);
        ips.extend(addresses.into_iter().map(|ip| IpConfig {
            interface: Some(index),
            ..ip
        }));
        if !routes.is_empty() {
            let existing = self.routes.get_or_insert_with(Vec::new);
            for route in routes {
                if !existing.contains(&route) {
                    existing.push(route);
                }
            }
        }
        Ok(())
    }

    /// Renders the result in `version`: stamps `cniVersion`, adds the IP
    /// `version` tags results before 1.0.0 require, and drops them from later
    /// ones.
    pub fn into_version(mut self, version: CniVersion) -> Result<Value, CniError> {
        self.cni_version = Some(version.as_str().to_owned());
        for ip in self.ips.iter_mut().flatten() {
            if version.ips_carry_version() {
                if ip.version.is_none() {
                    ip.version = cidr_family(&ip.address).map(str::to_owned);
                }
            } else {
                ip.version = None;
            }
        }
        serde_json::to_value(self).map_err(|err| {
            CniError::new(
                INTERNAL,
                format!("result cannot be rendered as JSON: {err}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::INVALID_CONFIG;

    fn primary() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "eth0", "mac": "11:22:33:44:55:66", "sandbox": "/run/netns/p", "custom": true}
            ],
            "ips": [{"address": "10.42.0.5/24", "gateway": "10.42.0.1", "interface": 1, "x-note": "keep"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.42.0.1", "table": 5}],
            "dns": {"nameservers": ["10.43.0.10"], "search": ["svc.cluster.local"]},
            "x-vendor": {"anything": [1, 2, 3]}
        })
    }

    fn tailnet_interface() -> (Interface, Vec<IpConfig>, Vec<Route>) {
        let interface = Interface {
            name: "ts0".into(),
            mac: None,
            mtu: Some(1280),
            sandbox: Some("/run/netns/p".into()),
            extra: Map::new(),
        };
        let ip = |address: &str| IpConfig {
            version: None,
            address: address.into(),
            gateway: None,
            interface: None,
            extra: Map::new(),
        };
        let route = Route {
            dst: "100.64.0.0/10".into(),
            gw: None,
            extra: Map::new(),
        };
        (
            interface,
            vec![ip("100.64.0.7/32"), ip("fd7a:115c:a1e0::7/128")],
            vec![route],
        )
    }

    #[test]
    fn round_trip_keeps_every_unknown_key() {
        let parsed = CniResult::from_prev_result(&primary()).unwrap();
        assert_eq!(parsed.into_version(CniVersion::V1_0_0).unwrap(), primary());
    }

    #[test]
    fn appending_keeps_primary_entries_first_and_intact() {
        let mut result = CniResult::from_prev_result(&primary()).unwrap();
        let (interface, ips, routes) = tailnet_interface();
        result.append_interface(interface, ips, routes).unwrap();
        let out = result.into_version(CniVersion::V1_0_0).unwrap();
        let before = primary();
        assert_eq!(out["interfaces"][0], before["interfaces"][0]);
        assert_eq!(out["interfaces"][1], before["interfaces"][1]);
        assert_eq!(
            out["interfaces"][2],
            json!({"name": "ts0", "mtu": 1280, "sandbox": "/run/netns/p"})
        );
        assert_eq!(out["ips"][0], before["ips"][0]);
        assert_eq!(
            out["ips"][1],
            json!({"address": "100.64.0.7/32", "interface": 2})
        );
        assert_eq!(
            out["ips"][2],
            json!({"address": "fd7a:115c:a1e0::7/128", "interface": 2})
        );
        assert_eq!(
            out["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.42.0.1", "table": 5}, {"dst": "100.64.0.0/10"}])
        );
        assert_eq!(out["dns"], before["dns"]);
        assert_eq!(out["x-vendor"], before["x-vendor"]);
    }

    #[test]
    fn old_versions_tag_ips_and_new_ones_do_not() {
        let prev =
            json!({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.2/24"}]});
        let mut result = CniResult::from_prev_result(&prev).unwrap();
        let (interface, ips, routes) = tailnet_interface();
        result.append_interface(interface, ips, routes).unwrap();
        let old = result.clone().into_version(CniVersion::V0_4_0).unwrap();
        let versions: Vec<_> = old["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| ip["version"].clone())
            .collect();
        assert_eq!(versions, vec![json!("4"), json!("4"), json!("6")]);
        let new = result.into_version(CniVersion::V1_1_0).unwrap();
        assert!(new["ips"]
            .as_array()
            .unwrap()
            .iter()
            .all(|ip| ip.get("version").is_none()));
        assert_eq!(new["cniVersion"], "1.1.0");
    }

    #[test]
    fn empty_prev_result_gains_only_our_entries() {
        let mut result = CniResult::from_prev_result(&json!({"cniVersion": "1.1.0"})).unwrap();
        let (interface, ips, _) = tailnet_interface();
        result.append_interface(interface, ips, vec![]).unwrap();
        let out = result.into_version(CniVersion::V1_1_0).unwrap();
        assert_eq!(out["interfaces"].as_array().unwrap().len(), 1);
        assert_eq!(out["ips"][0]["interface"], 0);
        assert!(out.get("routes").is_none());
    }

    #[test]
    fn daemon_addresses_must_be_cidr() {
        let mut result = CniResult::from_prev_result(&json!({})).unwrap();
        let (interface, mut ips, routes) = tailnet_interface();
        ips[0].address = "100.64.0.7".into();
        let err = result.append_interface(interface, ips, routes).unwrap_err();
        assert!(err.msg.contains("100.64.0.7"), "{}", err.msg);
    }

    #[test]
    fn finds_addresses_of_our_interface() {
        let mut result = CniResult::from_prev_result(&primary()).unwrap();
        let (interface, ips, routes) = tailnet_interface();
        result.append_interface(interface, ips, routes).unwrap();
        let ours: Vec<_> = result
            .addresses_of("ts0", "/run/netns/p")
            .unwrap()
            .into_iter()
            .map(|ip| ip.address.clone())
            .collect();
        assert_eq!(ours, vec!["100.64.0.7/32", "fd7a:115c:a1e0::7/128"]);
        assert!(result.addresses_of("ts0", "/run/netns/other").is_none());
        assert!(result.addresses_of("ts1", "/run/netns/p").is_none());
        assert!(result.has_interface("eth0", "/run/netns/p"));
        assert!(!result.has_interface("cni0", "/run/netns/p"));
    }

    #[test]
    fn malformed_prev_result_is_a_config_error() {
        for bad in [
            json!({"ips": {}}),
            json!({"interfaces": [{"mac": "x"}]}),
            json!({"ips": [{"address": "a", "interface": -1}]}),
        ] {
            let err = CniResult::from_prev_result(&bad).unwrap_err();
            assert_eq!(err.code, INVALID_CONFIG);
            assert!(err.msg.contains("prevResult"), "{}", err.msg);
        }
    }

    #[test]
    fn cidr_family_checks_prefix_length() {
        assert_eq!(cidr_family("10.0.0.1/32"), Some("4"));
        assert_eq!(cidr_family("fd7a::1/128"), Some("6"));
        assert_eq!(cidr_family("10.0.0.1/33"), None);
        assert_eq!(cidr_family("10.0.0.1"), None);
        assert_eq!(cidr_family("x/1"), None);
    }
}
