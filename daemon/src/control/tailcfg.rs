//! The control protocol's wire types (Go's `tailcfg`), reduced to what a
//! node needs.
//!
//! Requests are encoded with Go's exact field names. Responses are decoded
//! through [`super::json::from_slice`], which lowercases field names first:
//! that is why response fields are named in lowercase here, every one
//! optional (`#[serde(default)]`), unknown ones ignored.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use tailnet_auth::Secret;

use super::json::null_as_default;

/// What each capability version promises, and how it is kept: `capver`.
pub use super::capver::CAPABILITY_VERSION;

/// Endpoint types reported with MapRequest.Endpoints.
pub const ENDPOINT_LOCAL: i32 = 1;
pub const ENDPOINT_STUN: i32 = 2;

// ---- requests --------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct Hostinfo {
    #[serde(rename = "IPNVersion")]
    pub ipn_version: String,
    #[serde(rename = "BackendLogID")]
    pub backend_log_id: String,
    #[serde(rename = "OS")]
    pub os: String,
    #[serde(rename = "Hostname")]
    pub hostname: String,
    #[serde(rename = "App")]
    pub app: String,
    #[serde(rename = "RequestTags", skip_serializing_if = "Vec::is_empty")]
    pub request_tags: Vec<String>,
    #[serde(rename = "NetInfo", skip_serializing_if = "Option::is_none")]
    pub net_info: Option<NetInfo>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NetInfo {
    #[serde(rename = "PreferredDERP")]
    pub preferred_derp: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthInfo {
    /// Redacted in `Debug`; sent as is.
    #[serde(rename = "AuthKey", serialize_with = "expose_secret")]
    pub auth_key: Secret,
}

fn expose_secret<S: serde::Serializer>(secret: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose())
}

#[derive(Debug, Clone, Serialize)]
pub struct RegisterRequest {
    #[serde(rename = "Version")]
    pub version: u16,
    #[serde(rename = "NodeKey")]
    pub node_key: String,
    #[serde(rename = "OldNodeKey")]
    pub old_node_key: String,
    #[serde(rename = "Auth", skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthInfo>,
    /// Zero time, except on logout (a time in the past expires the key).
    #[serde(rename = "Expiry")]
    pub expiry: String,
    #[serde(rename = "Followup")]
    pub followup: String,
    #[serde(rename = "Hostinfo")]
    pub hostinfo: Hostinfo,
    #[serde(rename = "Ephemeral", skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
    /// The node key's tailnet-lock signature, CBOR in standard base64;
    /// only on a tailnet with tailnet lock.
    #[serde(rename = "NodeKeySignature")]
    pub node_key_signature: Option<String>,
    /// The public key that signs this node's key rotations (`nlpub:` hex).
    #[serde(rename = "NLKey", skip_serializing_if = "Option::is_none")]
    pub nl_key: Option<String>,
}

pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
/// What Go's client sends to log out: Unix time 123.
pub const LOGOUT_EXPIRY: &str = "1970-01-01T00:02:03Z";

#[derive(Debug, Clone, Serialize)]
pub struct MapRequest {
    #[serde(rename = "Version")]
    pub version: u16,
    #[serde(rename = "Compress", skip_serializing_if = "String::is_empty")]
    pub compress: String,
    #[serde(rename = "KeepAlive")]
    pub keep_alive: bool,
    #[serde(rename = "NodeKey")]
    pub node_key: String,
    #[serde(rename = "DiscoKey")]
    pub disco_key: String,
    #[serde(rename = "Endpoints", skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    #[serde(rename = "EndpointTypes", skip_serializing_if = "Vec::is_empty")]
    pub endpoint_types: Vec<i32>,
    #[serde(rename = "Stream")]
    pub stream: bool,
    #[serde(rename = "Hostinfo")]
    pub hostinfo: Hostinfo,
    #[serde(rename = "OmitPeers", skip_serializing_if = "std::ops::Not::not")]
    pub omit_peers: bool,
}

// ---- responses -------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct KeyResponse {
    pub publickey: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RegisterResponse {
    pub machineauthorized: bool,
    pub nodekeyexpired: bool,
    pub authurl: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Node {
    pub id: i64,
    pub stableid: String,
    pub name: String,
    pub key: String,
    pub keyexpiry: String,
    pub discokey: String,
    #[serde(deserialize_with = "null_as_default")]
    pub addresses: Vec<String>,
    /// `None` (null or absent) means the same as `addresses`. Control puts
    /// the node's addresses here, then its approved primary routes: subnet
    /// routes and, for an exit node, `0.0.0.0/0` and `::/0`.
    pub allowedips: Option<Vec<String>>,
    /// The routes this node is the primary router for (a subset of
    /// `allowedips`); informational, the prefixes installed come from
    /// `allowedips`, as in the Go client.
    #[serde(deserialize_with = "null_as_default")]
    pub primaryroutes: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub endpoints: Vec<String>,
    pub homederp: i64,
    /// Legacy "127.3.3.40:<region>", used when `homederp` is 0.
    pub derp: String,
    pub online: Option<bool>,
    #[serde(deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    pub expired: bool,
    /// Whether the node key carries a tailnet-lock signature
    /// (`KeySignature`); the signature itself is not kept.
    #[serde(rename = "keysignature", deserialize_with = "non_empty")]
    pub key_signed: bool,
}

/// A string field only tested for presence: null, absent and "" are false.
fn non_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<String>::deserialize(d)?.is_some_and(|text| !text.is_empty()))
}

/// The tailnet's lock state (`MapResponse.TKAInfo`); absent: unchanged.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TkaInfo {
    /// Hash of the newest authority update; empty without tailnet lock.
    pub head: String,
    pub disabled: bool,
}

impl TkaInfo {
    /// Whether the tailnet has tailnet lock on: unsigned node keys are
    /// locked out.
    pub fn enabled(&self) -> bool {
        !self.disabled && !self.head.is_empty()
    }
}

/// Tailscale's "magic" DERP address; its port is the region id.
const DERP_MAGIC_IP: &str = "127.3.3.40";

impl Node {
    /// The region the node is reachable through, if any.
    pub fn home_derp(&self) -> Option<u16> {
        if self.homederp > 0 {
            return u16::try_from(self.homederp).ok();
        }
        let (ip, port) = self.derp.rsplit_once(':')?;
        (ip == DERP_MAGIC_IP).then(|| port.parse().ok()).flatten()
    }

    /// AllowedIPs, or Addresses when the server left it null.
    pub fn allowed_prefixes(&self) -> Vec<(IpAddr, u8)> {
        self.allowedips
            .as_ref()
            .unwrap_or(&self.addresses)
            .iter()
            .filter_map(|p| parse_prefix(p))
            .collect()
    }

    /// The node's own addresses as prefixes.
    pub fn address_prefixes(&self) -> Vec<(IpAddr, u8)> {
        self.addresses
            .iter()
            .filter_map(|p| parse_prefix(p))
            .collect()
    }

    pub fn endpoint_addrs(&self) -> Vec<SocketAddr> {
        self.endpoints
            .iter()
            .filter_map(|e| e.parse().ok())
            .collect()
    }
}

/// "100.64.0.1/32" -> (addr, 32); a bare address gets its full length.
pub fn parse_prefix(text: &str) -> Option<(IpAddr, u8)> {
    match text.split_once('/') {
        Some((ip, len)) => {
            let ip: IpAddr = ip.parse().ok()?;
            let len: u8 = len.parse().ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            (len <= max).then_some((ip, len))
        }
        None => {
            let ip: IpAddr = text.parse().ok()?;
            Some((ip, if ip.is_ipv4() { 32 } else { 128 }))
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PeerChange {
    pub nodeid: i64,
    pub derpregion: i64,
    pub endpoints: Option<Vec<String>>,
    pub key: Option<String>,
    pub discokey: Option<String>,
    pub online: Option<bool>,
    pub keyexpiry: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct DerpMap {
    pub regions: BTreeMap<String, DerpRegion>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct DerpRegion {
    pub regionid: i64,
    pub regioncode: String,
    pub regionname: String,
    pub avoid: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub nodes: Vec<DerpNode>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct DerpNode {
    pub name: String,
    pub regionid: i64,
    pub hostname: String,
    pub ipv4: String,
    pub ipv6: String,
    /// 0 means 3478; -1 disables STUN.
    pub stunport: i64,
    pub stunonly: bool,
    /// 0 means 443.
    pub derpport: i64,
    pub insecurefortests: bool,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct NetPortRange {
    pub ip: String,
    pub ports: PortRange,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct FilterRule {
    #[serde(deserialize_with = "null_as_default")]
    pub srcips: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub dstports: Vec<NetPortRange>,
    #[serde(deserialize_with = "null_as_default")]
    pub ipproto: Vec<i64>,
}

/// The DNS settings control sends (Go's `tailcfg.DNSConfig`), reduced to
/// what a pod's MagicDNS resolver uses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(default)]
pub struct DnsConfig {
    /// Global nameservers. A pod keeps the cluster DNS as its default
    /// upstream so cluster names resolve; these are not used.
    #[serde(deserialize_with = "null_as_default")]
    pub resolvers: Vec<DnsResolver>,
    /// Split DNS: a domain suffix and the resolvers that answer below it.
    /// An empty or null list means MagicDNS answers the suffix itself
    /// (capability 23).
    #[serde(deserialize_with = "null_as_default")]
    pub routes: BTreeMap<String, Option<Vec<DnsResolver>>>,
    /// Search domains, for the pod's own resolver configuration.
    #[serde(deserialize_with = "null_as_default")]
    pub domains: Vec<String>,
    /// MagicDNS is on: nodes' names resolve through 100.100.100.100.
    pub proxied: bool,
    /// Names control wants answered that are not nodes (capability 22).
    #[serde(deserialize_with = "null_as_default")]
    pub extrarecords: Vec<DnsRecord>,
}

/// One resolver of [`DnsConfig`]: "ip", "ip:port", or a DoH/DoT URL.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(default)]
pub struct DnsResolver {
    pub addr: String,
}

/// One of [`DnsConfig::extrarecords`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(default)]
pub struct DnsRecord {
    /// Fully qualified, the final dot optional.
    pub name: String,
    /// "A", "AAAA", or empty (meaning whichever the value is).
    #[serde(rename = "type")]
    pub record_type: String,
    /// The address.
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MapResponse {
    pub keepalive: bool,
    pub node: Option<Node>,
    pub peers: Option<Vec<Node>>,
    pub peerschanged: Option<Vec<Node>>,
    pub peersremoved: Option<Vec<i64>>,
    pub peerschangedpatch: Option<Vec<PeerChange>>,
    pub onlinechange: Option<BTreeMap<String, bool>>,
    pub derpmap: Option<DerpMap>,
    /// Absent: unchanged. `[]`: deny everything.
    pub packetfilter: Option<Vec<FilterRule>>,
    /// Named filters; a null value deletes that name, "*": null clears all.
    pub packetfilters: Option<BTreeMap<String, Option<Vec<FilterRule>>>>,
    /// The tailnet's DNS domain; absent or empty: unchanged (capability 17).
    pub domain: Option<String>,
    /// Absent or null: unchanged (capability 15).
    pub dnsconfig: Option<DnsConfig>,
    /// Absent or null: unchanged.
    pub tkainfo: Option<TkaInfo>,
}

impl MapResponse {
    /// Only a keep-alive: nothing to apply.
    pub fn is_keep_alive_only(&self) -> bool {
        self.keepalive
            && self.node.is_none()
            && self.peers.is_none()
            && self.peerschanged.is_none()
            && self.peersremoved.is_none()
            && self.peerschangedpatch.is_none()
            && self.derpmap.is_none()
            && self.packetfilter.is_none()
            && self.packetfilters.is_none()
            && self.dnsconfig.is_none()
            && self.tkainfo.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::json::from_slice;

    /// A map response shaped like rscale's: `Id` casing, omitted zero fields,
    /// legacy DERP string, null AllowedIPs.
    const RSCALE_STYLE: &[u8] = br#"{
      "Node": {"Id": 3, "StableId": "n3", "Name": "e2e-web.", "Key": "nodekey:0303030303030303030303030303030303030303030303030303030303030303",
               "Addresses": ["100.64.0.3/32", "fd7a:115c:a1e0::3/128"], "AllowedIPs": null, "HomeDERP": 900},
      "Peers": [{"ID": 1, "StableID": "n1", "Key": "nodekey:0101010101010101010101010101010101010101010101010101010101010101",
                 "DiscoKey": "discokey:0202020202020202020202020202020202020202020202020202020202020202",
                 "Addresses": ["100.64.0.1/32"], "Endpoints": ["127.0.0.1:41641", "bogus"], "DERP": "127.3.3.40:900"}],
      "DERPMap": {"Regions": {"900": {"RegionID": 900, "RegionCode": "loop",
                  "Nodes": [{"Name": "900a", "RegionID": 900, "HostName": "localhost", "IPv4": "127.0.0.1", "IPv6": "none",
                             "STUNPort": 3478, "DERPPort": 18080, "InsecureForTests": true}]}}},
      "PacketFilter": [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}]
    }"#;

    #[test]
    fn decodes_rscale_style_map_responses() {
        let map: MapResponse = from_slice(RSCALE_STYLE).unwrap();
        let node = map.node.unwrap();
        assert_eq!(node.id, 3);
        assert_eq!(node.stableid, "n3");
        assert_eq!(node.home_derp(), Some(900));
        assert_eq!(
            node.allowed_prefixes().len(),
            2,
            "null AllowedIPs = Addresses"
        );
        let peer = &map.peers.unwrap()[0];
        assert_eq!(peer.home_derp(), Some(900), "legacy DERP string");
        assert_eq!(
            peer.endpoint_addrs(),
            vec!["127.0.0.1:41641".parse().unwrap()]
        );
        let region = &map.derpmap.unwrap().regions["900"];
        assert_eq!(region.nodes[0].derpport, 18080);
        assert!(region.nodes[0].insecurefortests);
        assert_eq!(map.packetfilter.unwrap()[0].dstports[0].ports.last, 65535);
    }

    #[test]
    fn requests_use_go_field_names() {
        let req = RegisterRequest {
            version: CAPABILITY_VERSION,
            node_key: "nodekey:00".into(),
            old_node_key: "nodekey:00".into(),
            auth: Some(AuthInfo {
                auth_key: Secret::new("k"),
            }),
            expiry: ZERO_TIME.into(),
            followup: String::new(),
            hostinfo: Hostinfo {
                ipn_version: "x".into(),
                backend_log_id: "y".into(),
                os: "linux".into(),
                hostname: "h".into(),
                app: "tailnet-cni".into(),
                request_tags: vec![],
                net_info: None,
            },
            ephemeral: false,
            node_key_signature: None,
            nl_key: None,
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(json["Auth"]["AuthKey"], "k");
        let shown = format!("{req:?}");
        assert!(
            !shown.contains("\"k\""),
            "the auth key leaked into Debug: {shown}"
        );
        assert_eq!(json["Hostinfo"]["OS"], "linux");
        assert!(json["NodeKeySignature"].is_null());
        assert!(json.get("NLKey").is_none());
        assert!(json.get("Ephemeral").is_none());
    }

    #[test]
    fn decodes_dns_config_with_routes_and_extra_records() {
        let map: MapResponse = from_slice(
            br#"{"Domain": "tailnet.test",
                 "DNSConfig": {"Resolvers": [{"Addr": "10.43.0.10"}], "Domains": ["tailnet.test"],
                               "Proxied": true,
                               "Routes": {"Corp.Example.": [{"Addr": "10.0.0.53:5353"}], "ts.local.": null},
                               "ExtraRecords": [{"Name": "db.tailnet.test.", "Type": "A", "Value": "100.64.9.9"}],
                               "CertDomains": ["x"]}}"#,
        )
        .unwrap();
        assert_eq!(map.domain.as_deref(), Some("tailnet.test"));
        let dns = map.dnsconfig.unwrap();
        assert!(dns.proxied);
        assert_eq!(dns.domains, vec!["tailnet.test"]);
        assert_eq!(dns.resolvers[0].addr, "10.43.0.10");
        // Route keys are data: their case is kept.
        assert_eq!(
            dns.routes["Corp.Example."].as_ref().unwrap()[0].addr,
            "10.0.0.53:5353"
        );
        assert_eq!(dns.routes["ts.local."], None);
        assert_eq!(dns.extrarecords[0].record_type, "A");
        assert_eq!(dns.extrarecords[0].value, "100.64.9.9");
        // A null DNSConfig is "unchanged", like an absent one.
        let null: MapResponse = from_slice(br#"{"DNSConfig": null}"#).unwrap();
        assert!(null.dnsconfig.is_none());
    }

    #[test]
    fn decodes_tailnet_lock_state_and_self_signatures() {
        let map: MapResponse = from_slice(
            br#"{"TKAInfo": {"Head": "AUMHASH"},
                 "Node": {"ID": 1, "KeySignature": "pAEC"}, "Peers": [{"ID": 2, "KeySignature": null}]}"#,
        )
        .unwrap();
        assert!(map.tkainfo.unwrap().enabled());
        assert!(map.node.unwrap().key_signed);
        assert!(!map.peers.unwrap()[0].key_signed);
        let disabled: MapResponse =
            from_slice(br#"{"TKAInfo": {"Head": "AUMHASH", "Disabled": true}, "Node": {"ID": 1}}"#)
                .unwrap();
        assert!(!disabled.tkainfo.unwrap().enabled());
        assert!(!disabled.node.unwrap().key_signed);
        let unchanged: MapResponse = from_slice(br#"{"KeepAlive": true}"#).unwrap();
        assert!(unchanged.tkainfo.is_none());
        let lock_only: MapResponse =
            from_slice(br#"{"KeepAlive": true, "TKAInfo": {"Head": "X"}}"#).unwrap();
        assert!(!lock_only.is_keep_alive_only());
    }

    #[test]
    fn keep_alive_only_is_recognised() {
        let ka: MapResponse = from_slice(br#"{"KeepAlive": true}"#).unwrap();
        assert!(ka.is_keep_alive_only());
        let not: MapResponse = from_slice(br#"{"KeepAlive": true, "PeersRemoved": [4]}"#).unwrap();
        assert!(!not.is_keep_alive_only());
    }

    #[test]
    fn prefixes_parse_strictly() {
        assert_eq!(
            parse_prefix("100.64.0.1/32"),
            Some(("100.64.0.1".parse().unwrap(), 32))
        );
        assert_eq!(
            parse_prefix("fd7a::1"),
            Some(("fd7a::1".parse().unwrap(), 128))
        );
        assert_eq!(parse_prefix("100.64.0.1/33"), None);
        assert_eq!(parse_prefix("nope"), None);
    }
}
