use std::time::Duration;

use super::*;
use crate::wg::{PathKind, PeerStats};

fn peer(key: u8, handshake_age: Option<u64>, direct: Option<&str>) -> PeerStats {
    PeerStats {
        node_key: [key; 32],
        path: if direct.is_some() {
            PathKind::Direct
        } else {
            PathKind::Relay
        },
        relay_region: Some(900),
        direct_endpoint: direct.map(|d| d.parse().unwrap()),
        last_handshake: handshake_age.map(Duration::from_secs),
        tx_bytes: 1,
        rx_bytes: 1,
    }
}

fn stats(peers: Vec<PeerStats>) -> PodStats {
    PodStats {
        peers,
        ..PodStats::default()
    }
}

#[test]
fn only_sessions_young_enough_to_resume_are_remembered_in_key_order() {
    let live = live_sessions(
        &stats(vec![
            peer(3, Some(10), Some("192.0.2.3:41641")),
            peer(1, Some(179), None),
            peer(2, Some(181), None),
            peer(4, None, None),
        ]),
        &[],
    );
    assert_eq!(
        live,
        vec![
            ResumePeer {
                node_key: [1; 32],
                direct: None
            },
            ResumePeer {
                node_key: [3; 32],
                direct: Some("192.0.2.3:41641".parse().unwrap())
            },
        ]
    );
}

#[test]
fn a_path_idle_on_the_relay_keeps_its_remembered_direct_endpoint() {
    let saved = vec![ResumePeer {
        node_key: [7; 32],
        direct: Some("192.0.2.7:41641".parse().unwrap()),
    }];
    let live = live_sessions(&stats(vec![peer(7, Some(30), None)]), &saved);
    assert_eq!(live, saved, "no write for a path that merely went idle");
}

#[test]
fn the_sessions_file_round_trips_and_is_private() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let store = crate::podmgr::state::StateStore::open(dir.path()).unwrap();
    let file = SessionPeersFile::of(store.state_dir(), "pod1").unwrap();
    assert_eq!(
        file.load().unwrap(),
        RememberedSessions::default(),
        "absent reads as none"
    );
    let peers = vec![
        ResumePeer {
            node_key: [0xab; 32],
            direct: Some("[2001:db8::1]:41641".parse().unwrap()),
        },
        ResumePeer {
            node_key: [0x01; 32],
            direct: None,
        },
    ];
    let sessions = RememberedSessions {
        udp_port: Some(41641),
        peers,
        ..RememberedSessions::default()
    };
    file.save(&sessions).unwrap();
    assert_eq!(file.load().unwrap(), sessions);
    let mode = std::fs::metadata(file.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The record's removal takes the remembered sessions with it.
    assert!(!store.remove("pod1").unwrap());
    assert!(!file.path().exists());
    assert!(SessionPeersFile::of(store.state_dir(), "../x").is_err());
}

#[test]
fn a_corrupt_sessions_file_is_an_error_and_bad_keys_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::podmgr::state::StateStore::open(dir.path()).unwrap();
    let file = SessionPeersFile::of(store.state_dir(), "pod2").unwrap();
    std::fs::write(file.path(), b"{").unwrap();
    assert!(matches!(
        file.load(),
        Err(crate::podmgr::state::StateError::Corrupt { .. })
    ));
    let good = "11".repeat(32);
    std::fs::write(
        file.path(),
        format!(r#"{{"version":1,"peers":[{{"node_key":"zz"}},{{"node_key":"{good}"}}]}}"#),
    )
    .unwrap();
    assert_eq!(
        file.load().unwrap(),
        RememberedSessions {
            udp_port: None,
            peers: vec![ResumePeer {
                node_key: [0x11; 32],
                direct: None
            }],
            ..RememberedSessions::default()
        }
    );
}

fn record(key: u8) -> PeerConfig {
    PeerConfig {
        node_key: [key; 32],
        disco_key: Some([key ^ 0xff; 32]),
        allowed_ips: vec![
            ("100.64.0.9".parse().unwrap(), 32),
            ("10.9.0.0".parse().unwrap(), 24),
        ],
        endpoints: vec!["192.0.2.9:41641".parse().unwrap()],
        home_derp: Some(900),
    }
}

#[test]
fn peer_records_and_the_derp_map_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::podmgr::state::StateStore::open(dir.path()).unwrap();
    let file = SessionPeersFile::of(store.state_dir(), "pod3").unwrap();
    let sessions = RememberedSessions {
        udp_port: Some(41642),
        peers: vec![
            ResumePeer {
                node_key: [0x02; 32],
                direct: Some("192.0.2.2:41641".parse().unwrap()),
            },
            ResumePeer {
                node_key: [0x09; 32],
                direct: None,
            },
        ],
        // Only 0x09's netmap record was known.
        peer_configs: vec![record(0x09)],
        derp_map: vec![crate::wg::DerpRegionConfig {
            region_id: 900,
            nodes: vec![crate::wg::DerpNodeConfig {
                name: "900a".into(),
                host_name: "derp.test".into(),
                ipv4: Some("127.0.0.1".parse().unwrap()),
                ipv6: None,
                derp_port: 3340,
                stun_port: 0,
                insecure_for_tests: true,
                stun_only: false,
                plain_http: true,
            }],
        }],
        filter: None,
    };
    file.save(&sessions).unwrap();
    assert_eq!(file.load().unwrap(), sessions);
}

#[test]
fn records_follow_the_live_peers_and_skip_unknown_ones() {
    let live = vec![
        ResumePeer {
            node_key: [0x03; 32],
            direct: None,
        },
        ResumePeer {
            node_key: [0x01; 32],
            direct: None,
        },
        ResumePeer {
            node_key: [0x05; 32],
            direct: None,
        },
    ];
    let known: Vec<Arc<PeerConfig>> = [0x01, 0x02, 0x03].map(record).map(Arc::new).to_vec();
    assert_eq!(records_of(&live, &known), vec![record(0x03), record(0x01)]);
}

fn filter_rule(port: u16) -> FilterRule {
    use crate::control::tailcfg::{NetPortRange, PortRange};
    FilterRule {
        srcips: vec!["100.64.0.0/10".into()],
        dstports: vec![NetPortRange {
            ip: "*".into(),
            ports: PortRange {
                first: port,
                last: port,
            },
        }],
        ipproto: vec![6, 17],
    }
}

fn map_with_filter(ports: &[u16]) -> NetMap {
    let mut map = NetMap::default();
    map.filters.insert(
        "base".into(),
        ports
            .iter()
            .copied()
            .map(filter_rule)
            .collect::<Vec<_>>()
            .into(),
    );
    map
}

fn at(unix_secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_secs)
}

#[test]
fn the_filter_and_when_it_was_received_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::podmgr::state::StateStore::open(dir.path()).unwrap();
    let file = SessionPeersFile::of(store.state_dir(), "pod4").unwrap();
    let sessions = RememberedSessions {
        peers: vec![ResumePeer {
            node_key: [0x04; 32],
            direct: None,
        }],
        peer_configs: vec![record(0x04)],
        filter: Some(RememberedFilter {
            rules: vec![filter_rule(80), filter_rule(8081)],
            received: at(1_800_000_000),
        }),
        ..RememberedSessions::default()
    };
    file.save(&sessions).unwrap();
    assert_eq!(file.load().unwrap(), sessions);
}

#[test]
fn a_remembered_filter_is_enforced_only_while_young_enough() {
    let filter = RememberedFilter {
        rules: vec![filter_rule(80)],
        received: at(1_800_000_000),
    };
    let now = filter.received + REMEMBERED_FILTER_MAX_AGE;
    assert_eq!(enforceable(Some(&filter), now), Some(&filter));
    let later = now + Duration::from_secs(1);
    assert_eq!(enforceable(Some(&filter), later), None, "too old");
    let earlier = filter.received - Duration::from_secs(1);
    assert_eq!(enforceable(Some(&filter), earlier), None, "from the future");
    assert_eq!(enforceable(None, now), None);
}

#[test]
fn an_unchanged_filter_is_rewritten_once_per_refresh_and_a_changed_one_at_once() {
    let saved = RememberedFilter {
        rules: vec![filter_rule(80)],
        received: at(1_800_000_000),
    };
    let soon = saved.received + FILTER_REFRESH - Duration::from_secs(1);
    assert_eq!(
        filter_of(&map_with_filter(&[80]), Some(&saved), soon),
        saved
    );

    let refreshed = filter_of(
        &map_with_filter(&[80]),
        Some(&saved),
        saved.received + FILTER_REFRESH + Duration::from_millis(1500),
    );
    assert_eq!(refreshed.rules, saved.rules);
    assert_eq!(
        refreshed.received,
        saved.received + FILTER_REFRESH + Duration::from_secs(1)
    );

    let changed = filter_of(&map_with_filter(&[8081]), Some(&saved), soon);
    assert_eq!(changed.rules, vec![filter_rule(8081)]);
    assert_eq!(changed.received, whole_seconds(soon));
}

#[test]
fn records_are_taken_from_the_netmap_only_for_live_peers() {
    use crate::control::json::from_slice;
    use crate::control::netmap::Interner;
    use crate::control::tailcfg::MapResponse;
    let peers: MapResponse = from_slice(
        br#"{"Peers": [{"ID": 1, "Key": "nodekey:0101010101010101010101010101010101010101010101010101010101010101",
                        "Addresses": ["100.64.0.1/32"], "Endpoints": ["10.0.0.1:41641"]},
                       {"ID": 2, "Key": "nodekey:0202020202020202020202020202020202020202020202020202020202020202",
                        "Addresses": ["100.64.0.2/32"]}]}"#,
    )
    .unwrap();
    let mut map = NetMap::default();
    map.apply(peers, &Interner::default());
    let prefs = RoutePrefs::default();
    let live = |key: u8| ResumePeer {
        node_key: [key; 32],
        direct: None,
    };

    let records = records_in(&map, &prefs, &[live(0x02), live(0x07)]);
    assert_eq!(records.len(), 1, "only the live peer the netmap names");
    assert_eq!(records[0].node_key, [0x02; 32]);
    assert_eq!(records[0].allowed_ips.len(), 1);
    assert!(records_in(&map, &prefs, &[]).is_empty());
}
