//! The peers a pod had live WireGuard sessions with, one small file per pod
//! (`<state_dir>/sessions/<container_id>.json`), so a restarted daemon can
//! re-handshake with them at once. Written only when the set changes.
//!
//! Besides each peer's key and last direct endpoint, the file keeps what
//! the engine needs to reach those peers before control answers: their
//! records as the engine had them (addresses, disco key, endpoints, home
//! relay) and the DERP map. Version 1 files, without them, still load.
//! Version 3 adds the pod's last packet filter and when control last sent
//! it, for the pod to enforce until control's first netmap after a restart.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{check_id, write_private_atomic, StateError, RECORD_SUFFIX, SESSIONS_DIR};
use crate::control::tailcfg::{FilterRule, NetPortRange, PortRange};
use crate::wg::engine::ResumePeer;
use crate::wg::{DerpNodeConfig, DerpRegionConfig, PeerConfig};

/// Format of the file; a newer one is read as far as it is understood.
const SESSIONS_VERSION: u32 = 3;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    /// The pod's UDP port: peers keep sending to it after a restart.
    #[serde(default)]
    udp_port: Option<u16>,
    peers: Vec<PeerOnDisk>,
    /// The DERP map the sessions were relayed with (version 2).
    #[serde(default)]
    derp_map: Vec<RegionOnDisk>,
    /// The pod's last packet filter (version 3).
    #[serde(default)]
    filter: Option<FilterOnDisk>,
}

/// What a pod's sessions need to resume after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RememberedSessions {
    /// The local UDP port the sessions used.
    pub udp_port: Option<u16>,
    /// The peers with live sessions.
    pub peers: Vec<ResumePeer>,
    /// Those peers as the engine had them from the netmap, for each one
    /// whose record was known: enough to handshake before control answers.
    pub peer_configs: Vec<PeerConfig>,
    /// The DERP map the pod had, so its home relay comes up at once.
    pub derp_map: Vec<DerpRegionConfig>,
    /// The packet filter the pod had.
    pub filter: Option<RememberedFilter>,
}

/// A pod's packet filter as control last sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RememberedFilter {
    /// The rules, as in the netmap.
    pub rules: Vec<FilterRule>,
    /// When the pod last had these rules from control (kept to the second).
    pub received: SystemTime,
}

#[derive(Serialize, Deserialize)]
struct FilterOnDisk {
    received_unix_secs: u64,
    rules: Vec<RuleOnDisk>,
}

#[derive(Serialize, Deserialize)]
struct RuleOnDisk {
    srcips: Vec<String>,
    /// (destination, first port, last port).
    dstports: Vec<(String, u16, u16)>,
    ipproto: Vec<i64>,
}

impl From<&RememberedFilter> for FilterOnDisk {
    fn from(filter: &RememberedFilter) -> Self {
        let received_unix_secs = filter
            .received
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        Self {
            received_unix_secs,
            rules: filter
                .rules
                .iter()
                .map(|rule| RuleOnDisk {
                    srcips: rule.srcips.clone(),
                    dstports: rule
                        .dstports
                        .iter()
                        .map(|dst| (dst.ip.clone(), dst.ports.first, dst.ports.last))
                        .collect(),
                    ipproto: rule.ipproto.clone(),
                })
                .collect(),
        }
    }
}

impl From<FilterOnDisk> for RememberedFilter {
    fn from(filter: FilterOnDisk) -> Self {
        Self {
            received: UNIX_EPOCH + Duration::from_secs(filter.received_unix_secs),
            rules: filter
                .rules
                .into_iter()
                .map(|rule| FilterRule {
                    srcips: rule.srcips,
                    dstports: rule
                        .dstports
                        .into_iter()
                        .map(|(ip, first, last)| NetPortRange {
                            ip,
                            ports: PortRange { first, last },
                        })
                        .collect(),
                    ipproto: rule.ipproto,
                })
                .collect(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct PeerOnDisk {
    /// The peer's node key, hex.
    node_key: String,
    /// The direct endpoint the session last used.
    #[serde(default)]
    direct: Option<SocketAddr>,
    /// The peer's netmap record as the engine had it (version 2).
    #[serde(default)]
    record: Option<PeerRecordOnDisk>,
}

#[derive(Serialize, Deserialize)]
struct PeerRecordOnDisk {
    /// Hex.
    #[serde(default)]
    disco_key: Option<String>,
    allowed_ips: Vec<(IpAddr, u8)>,
    endpoints: Vec<SocketAddr>,
    #[serde(default)]
    home_derp: Option<u16>,
}

#[derive(Serialize, Deserialize)]
struct RegionOnDisk {
    region_id: u16,
    nodes: Vec<RelayOnDisk>,
}

/// One relay server, field for field as the engine has it.
#[derive(Serialize, Deserialize)]
struct RelayOnDisk(#[serde(with = "RelayFields")] DerpNodeConfig);

#[derive(Serialize, Deserialize)]
#[serde(remote = "DerpNodeConfig")]
struct RelayFields {
    name: String,
    host_name: String,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    derp_port: u16,
    stun_port: u16,
    insecure_for_tests: bool,
    stun_only: bool,
    plain_http: bool,
}

fn parse_key(hex_key: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut key).ok()?;
    Some(key)
}

impl PeerRecordOnDisk {
    fn of(config: &PeerConfig) -> Self {
        Self {
            disco_key: config.disco_key.map(hex::encode),
            allowed_ips: config.allowed_ips.clone(),
            endpoints: config.endpoints.clone(),
            home_derp: config.home_derp,
        }
    }

    /// The engine's view of peer `node_key`; `None` if the disco key is
    /// damaged (the peer then waits for its netmap record).
    fn config(self, node_key: [u8; 32]) -> Option<PeerConfig> {
        let disco_key = match self.disco_key {
            Some(hex_key) => Some(parse_key(&hex_key)?),
            None => None,
        };
        Some(PeerConfig {
            node_key,
            disco_key,
            allowed_ips: self.allowed_ips,
            endpoints: self.endpoints,
            home_derp: self.home_derp,
        })
    }
}

impl From<&DerpRegionConfig> for RegionOnDisk {
    fn from(region: &DerpRegionConfig) -> Self {
        Self {
            region_id: region.region_id,
            nodes: region.nodes.iter().cloned().map(RelayOnDisk).collect(),
        }
    }
}

impl From<RegionOnDisk> for DerpRegionConfig {
    fn from(region: RegionOnDisk) -> Self {
        Self {
            region_id: region.region_id,
            nodes: region
                .nodes
                .into_iter()
                .map(|RelayOnDisk(node)| node)
                .collect(),
        }
    }
}

/// One pod's remembered session peers.
#[derive(Debug, Clone)]
pub struct SessionPeersFile {
    container_id: String,
    path: PathBuf,
}

impl SessionPeersFile {
    /// The file of `container_id` under `state_dir`, after validating the id.
    pub fn of(state_dir: &Path, container_id: &str) -> Result<Self, StateError> {
        check_id(container_id)?;
        Ok(Self {
            container_id: container_id.to_string(),
            path: state_dir
                .join(SESSIONS_DIR)
                .join(format!("{container_id}{RECORD_SUFFIX}")),
        })
    }

    /// The pod the file belongs to.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The remembered sessions; none when the file is absent. Entries whose
    /// key does not parse are skipped: a peer missed costs one rekey
    /// timeout, not the pod.
    pub fn load(&self) -> Result<RememberedSessions, StateError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(RememberedSessions::default())
            }
            Err(source) => {
                return Err(StateError::Io {
                    op: "reading",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let on_disk: OnDisk =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        let mut remembered = RememberedSessions {
            udp_port: on_disk.udp_port,
            derp_map: on_disk.derp_map.into_iter().map(Into::into).collect(),
            filter: on_disk.filter.map(Into::into),
            ..RememberedSessions::default()
        };
        for peer in on_disk.peers {
            let Some(node_key) = parse_key(&peer.node_key) else {
                continue;
            };
            remembered.peers.push(ResumePeer {
                node_key,
                direct: peer.direct,
            });
            if let Some(config) = peer.record.and_then(|record| record.config(node_key)) {
                remembered.peer_configs.push(config);
            }
        }
        Ok(remembered)
    }

    /// Replaces what is remembered atomically.
    pub fn save(&self, sessions: &RememberedSessions) -> Result<(), StateError> {
        let on_disk = OnDisk {
            version: SESSIONS_VERSION,
            udp_port: sessions.udp_port,
            peers: sessions
                .peers
                .iter()
                .map(|peer| PeerOnDisk {
                    node_key: hex::encode(peer.node_key),
                    direct: peer.direct,
                    record: sessions
                        .peer_configs
                        .iter()
                        .find(|config| config.node_key == peer.node_key)
                        .map(PeerRecordOnDisk::of),
                })
                .collect(),
            derp_map: sessions.derp_map.iter().map(RegionOnDisk::from).collect(),
            filter: sessions.filter.as_ref().map(FilterOnDisk::from),
        };
        let bytes = serde_json::to_vec(&on_disk).map_err(|source| StateError::Encode {
            container_id: self.container_id.clone(),
            source,
        })?;
        write_private_atomic(&self.path, &bytes)
    }

    /// Deletes the file; absent is fine.
    pub fn remove(&self) -> Result<(), StateError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                op: "removing",
                path: self.path.clone(),
                source,
            }),
        }
    }
}
