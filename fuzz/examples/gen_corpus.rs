//! Writes the seed corpus under fuzz/corpus/<target>/: small valid inputs
//! built with the project's own encoders and the shapes its unit tests use,
//! laid out the way each target reads its input.
//!
//!   cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus
//!
//! Regenerating replaces the generated files (named `seed-*`); inputs kept
//! from fuzzing runs (other names) are left alone.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tailnet_cni_fuzz::Writer;
use tailnet_cnid::control::keys::{MachinePublic, PrivateKey};
use tailnet_cnid::control::noise::Initiator;
use tailnet_wire::{derp, disco, dns, stun};

fn corpus_dir(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    for entry in fs::read_dir(&dir).expect("corpus directory").flatten() {
        if entry.file_name().to_string_lossy().starts_with("seed-") {
            fs::remove_file(entry.path()).expect("old seed");
        }
    }
    dir
}

fn write(target: &str, seeds: Vec<(&str, Vec<u8>)>) {
    let dir = corpus_dir(target);
    for (name, bytes) in &seeds {
        fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed file");
    }
    println!("{target}: {} seeds", seeds.len());
}

fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON")
}

fn primary_result() -> Value {
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

fn after_add() -> Value {
    let mut result = primary_result();
    result["interfaces"]
        .as_array_mut()
        .expect("array")
        .push(json!({"name": "ts0", "mac": "ee:ee:64:40:00:07", "sandbox": "/run/netns/p"}));
    result["ips"]
        .as_array_mut()
        .expect("array")
        .push(json!({"address": "100.64.0.7/32", "interface": 2}));
    result
}

fn cni_configs() -> Vec<(&'static str, Value)> {
    vec![
        (
            "minimal",
            json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "tailnet-cni"}),
        ),
        (
            "full",
            json!({
                "cniVersion": "1.1.0", "name": "net", "type": "tailnet-cni",
                "daemonSocket": "/tmp/d.sock", "ifName": "tail0", "mtu": 1280, "timeoutSeconds": 5,
                "prevResult": primary_result(),
                "runtimeConfig": {"x": 1}, "args": {"cni": {"a": "b"}},
                "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]
            }),
        ),
        (
            "legacy-attachments",
            json!({"cniVersion": "1.1.0", "name": "net", "type": "t",
                   "cni.dev/attachments": [{"containerID": "c2", "ifname": "eth1"}]}),
        ),
        (
            "v040-tagged",
            json!({"cniVersion": "0.4.0", "name": "net", "type": "tailnet-cni",
                   "prevResult": {"cniVersion": "0.4.0",
                                  "ips": [{"version": "4", "address": "10.0.0.2/24"}]}}),
        ),
        (
            "v030-after-add",
            json!({"cniVersion": "0.3.0", "name": "net", "type": "tailnet-cni",
                   "prevResult": after_add()}),
        ),
        (
            "bad-version",
            json!({"cniVersion": "0.2.0", "name": "net", "type": "t"}),
        ),
    ]
}

fn cni_config() {
    write(
        "cni_config",
        cni_configs()
            .into_iter()
            .map(|(name, value)| (name, bytes(&value)))
            .collect(),
    );
}

fn cni_env() {
    const K8S: &str = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=u1;IgnoreUnknown=1";
    let env = |command: &str, extra: &str| {
        format!(
            "CNI_COMMAND={command}\nCNI_CONTAINERID=abc123\nCNI_NETNS=/run/netns/p\n\
             CNI_IFNAME=eth0\nCNI_ARGS={K8S}\nCNI_PATH=/opt/cni/bin\n{extra}"
        )
    };
    let config = |version: &str, prev: Option<Value>| {
        let mut conf = json!({"cniVersion": version, "name": "podman", "type": "tailnet-cni"});
        if let Some(prev) = prev {
            conf["prevResult"] = prev;
        }
        conf
    };
    let seed = |env: String, stdin: Value, reply: Value| {
        let mut out = env.into_bytes();
        out.push(0);
        out.extend_from_slice(&bytes(&stdin));
        out.push(0);
        out.extend_from_slice(&bytes(&reply));
        out
    };
    let attached = json!({
        "attached": true, "ifName": "ts0", "mac": "ee:ee:64:40:00:07", "mtu": 1280,
        "ips": [["100.64.0.7/32", ""], ["fd7a:115c:a1e0::7/128", ""]],
        "routes": [["100.64.0.0/10", ""], ["fd7a:115c:a1e0::/48", ""]]
    });
    let mut attachments = config("1.1.0", None);
    attachments["cni.dev/valid-attachments"] = json!([{"containerID": "abc123", "ifname": "eth0"}]);
    write(
        "cni_env",
        vec![
            (
                "add",
                seed(
                    env("ADD", ""),
                    config("1.1.0", Some(primary_result())),
                    attached.clone(),
                ),
            ),
            (
                "add-030-no-mac",
                seed(
                    env("ADD", ""),
                    config("0.3.0", Some(primary_result())),
                    json!({"attached": true, "ips": [["100.64.0.7/32", ""]]}),
                ),
            ),
            (
                "add-rpc-failure",
                seed(
                    env("ADD", ""),
                    config("1.0.0", Some(primary_result())),
                    json!({"fail": {"code": 9, "cniCode": "102", "message": "no TUN"}}),
                ),
            ),
            (
                "del-not-running",
                seed(
                    env("DEL", ""),
                    config("1.1.0", None),
                    json!({"fail": "NotRunning"}),
                ),
            ),
            (
                "check",
                seed(
                    env("CHECK", ""),
                    config("1.1.0", Some(after_add())),
                    json!({}),
                ),
            ),
            (
                "version",
                seed(env("VERSION", ""), config("1.1.0", None), json!({})),
            ),
            (
                "status-degraded",
                seed(
                    env("STATUS", ""),
                    config("1.1.0", None),
                    json!({"ready": true, "reason": "relay down"}),
                ),
            ),
            ("gc", seed(env("GC", ""), attachments, json!({}))),
        ],
    );
}

/// The map response shape rscale sends (from the tailcfg unit tests).
const RSCALE_STYLE: &str = r#"{
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

fn map_messages() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("rscale-full", RSCALE_STYLE.as_bytes().to_vec()),
        (
            "delta",
            bytes(&json!({
                "PeersChanged": [{"ID": 2, "Key": "b", "Addresses": ["100.64.0.2/32"]}],
                "PeersRemoved": [1],
                "PeersChangedPatch": [{"NodeID": 2, "DERPRegion": 901, "Endpoints": ["10.0.0.2:41641"], "Online": true}],
                "OnlineChange": {"2": false},
                "PacketFilters": {"*": null, "extra": [{"SrcIPs": ["100.64.0.0/10"], "DstPorts": [{"IP": "100.64.0.3", "Ports": {"First": 80, "Last": 80}}], "IPProto": [6]}]},
                "Domain": "example.ts.net"
            })),
        ),
        ("keepalive", bytes(&json!({"KeepAlive": true}))),
        (
            "register",
            bytes(
                &json!({"MachineAuthorized": true, "NodeKeyExpired": false, "AuthURL": "", "Error": ""}),
            ),
        ),
        (
            "key",
            bytes(&json!({"publicKey": format!("mkey:{}", hex(&[0x22; 32]))})),
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn control_json() {
    let mut seeds = map_messages();
    let mut sequence = Vec::new();
    for (_, message) in map_messages() {
        sequence.extend_from_slice(&message);
        sequence.push(0xff);
    }
    seeds.push(("sequence", sequence));
    write("control_json", seeds);
}

fn control_noise() {
    const RECORD: u8 = 0;
    const RAW: u8 = 1;
    const TAMPERED: u8 = 2;
    const ERROR: u8 = 3;
    const CLIENT_SENDS: u8 = 4;
    let start = |w: &mut Writer, cuts: &[u8]| {
        w.u16(130).u8(0).counted(cuts);
    };
    let mut clean = Writer::default();
    start(&mut clean, &[1, 7, 200]);
    clean
        .u8(RECORD)
        .counted(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .u8(CLIENT_SENDS)
        .counted(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .u8(RECORD)
        .counted(&[0x5a; 4077])
        .u8(RECORD)
        .counted(b"");
    let mut tampered = Writer::default();
    start(&mut tampered, &[3]);
    tampered
        .u8(RECORD)
        .counted(b"first")
        .u8(TAMPERED)
        .u16(9)
        .u8(0x80)
        .counted(b"second")
        .u8(RECORD)
        .counted(b"third");
    let mut hostile = Writer::default();
    start(&mut hostile, &[]);
    hostile
        .u8(RAW)
        .counted(&[0x04, 0xff, 0xff])
        .u8(ERROR)
        .counted(b"server says no");
    let mut forged = Writer::default();
    forged.u16(130).u8(1).counted(&{
        let mut frame = vec![0x02, 0, 48];
        frame.extend_from_slice(&[0x11; 48]);
        frame
    });
    let mut refused = Writer::default();
    refused.u16(130).u8(1).counted(b"\x03\x00\x04nope");
    // The genuine initiation, as a starting point for byte-level mutation.
    let machine = PrivateKey::from_bytes([0x11; 32]);
    let server = MachinePublic(PrivateKey::from_bytes([0x22; 32]).public());
    let (_, initiation) = Initiator::start(&machine, &server, 130).expect("initiation");
    let mut raw_initiation = Writer::default();
    start(&mut raw_initiation, &[]);
    raw_initiation.u8(RAW).counted(&initiation);
    write(
        "control_noise",
        vec![
            ("records", clean.out),
            ("tampered", tampered.out),
            ("hostile", hostile.out),
            ("forged-response", forged.out),
            ("error-response", refused.out),
            ("initiation-as-record", raw_initiation.out),
        ],
    );
}

fn control_map_stream() {
    let frame = |messages: &[Vec<u8>]| {
        let mut wire = Vec::new();
        for message in messages {
            wire.extend_from_slice(&(message.len() as u32).to_le_bytes());
            wire.extend_from_slice(message);
        }
        wire
    };
    let plain: Vec<Vec<u8>> = map_messages().into_iter().map(|(_, m)| m).collect();
    let packed: Vec<Vec<u8>> = plain
        .iter()
        .map(|m| zstd::stream::encode_all(&m[..], 3).expect("zstd"))
        .collect();
    // 64 MiB of zeros packs into a few KiB: a decompression bomb.
    let bomb = {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd");
        let block = vec![b' '; 1 << 20];
        for _ in 0..64 {
            encoder.write_all(&block).expect("zstd");
        }
        encoder.finish().expect("zstd")
    };
    // The /key answer in chunked transfer encoding, cut in two chunks.
    let key_json = map_messages()
        .into_iter()
        .find(|(name, _)| *name == "key")
        .map(|(_, json)| json)
        .expect("key seed");
    let mut key_body = Vec::new();
    for part in key_json.chunks(key_json.len() / 2 + 1) {
        key_body.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        key_body.extend_from_slice(part);
        key_body.extend_from_slice(b"\r\n");
    }
    key_body.extend_from_slice(b"0\r\n\r\n");
    let seed = |flags: u8, cuts: &[u8], chunked: &[u8], wire: Vec<u8>| {
        let mut w = Writer::default();
        w.u8(flags).counted(cuts).counted(chunked).bytes(&wire);
        w.out
    };
    write(
        "control_map_stream",
        vec![
            ("plain", seed(0, &[5, 1, 64], &key_body, frame(&plain))),
            (
                "zstd",
                seed(1 | (3 << 1), &[9], b"0\r\n\r\n", frame(&packed)),
            ),
            ("zstd-bomb", seed(1, &[], b"", frame(&[bomb]))),
            (
                "absurd-length",
                seed(0, &[], b"zz\r\n", u32::MAX.to_le_bytes().to_vec()),
            ),
        ],
    );
}

const CLIENT: [u8; 32] = [0x33; 32];
const SERVER: [u8; 32] = [0x44; 32];

fn derp_frames() {
    let server_public = derp::public_key(&SERVER);
    let client_public = derp::public_key(&CLIENT);
    let mut stream = Vec::new();
    derp::encode_server_key(&mut stream, &server_public);
    let info = derp::ServerInfo {
        version: 2,
        token_bucket_bytes_per_second: 1 << 20,
        token_bucket_bytes_burst: 1 << 21,
    };
    derp::encode_server_info(&mut stream, &SERVER, &client_public, &info).expect("seal");
    derp::encode_client_info(&mut stream, &CLIENT, &server_public).expect("seal");
    derp::encode_send_packet(&mut stream, &[7; 32], b"\x04\x00\x00\x00wireguard").expect("fits");
    derp::encode_recv_packet(&mut stream, &[8; 32], b"TS\xf0\x9f\x92\xacdisco").expect("fits");
    derp::encode_frame(&mut stream, derp::FrameType::KeepAlive, &[]);
    derp::encode_note_preferred(&mut stream, true);
    derp::encode_peer_gone(&mut stream, &[9; 32], derp::PeerGoneReason::NotHere);
    derp::encode_frame(&mut stream, derp::FrameType::PeerGone, &[9; 32]);
    derp::encode_frame(&mut stream, derp::FrameType::PeerPresent, &[10; 32 + 18]);
    derp::encode_ping(&mut stream, &[1; 8]);
    derp::encode_pong(&mut stream, &[2; 8]);
    derp::encode_frame(&mut stream, derp::FrameType::Health, b"duplicate client");
    let mut restarting = 1500u32.to_be_bytes().to_vec();
    restarting.extend_from_slice(&30_000u32.to_be_bytes());
    derp::encode_frame(&mut stream, derp::FrameType::Restarting, &restarting);
    derp::encode_frame(&mut stream, derp::FrameType::Health, &[]);
    // Mesh frames (not handled): forward-packet 0x0a.
    stream.extend_from_slice(&[0x0a, 0, 0, 0, 2, 0xab, 0xcd]);
    let seed = |cuts: &[u8], stream: &[u8]| {
        let mut w = Writer::default();
        w.counted(cuts)
            .u8(1)
            .bytes(&2u32.to_be_bytes())
            .bytes(&(1u64 << 20).to_be_bytes())
            .bytes(&0u64.to_be_bytes())
            .bytes(stream);
        w.out
    };
    let mut oversized = vec![0x05];
    oversized.extend_from_slice(&((1u32 << 20) + 1).to_be_bytes());
    write(
        "derp_frames",
        vec![
            ("every-frame", seed(&[1, 13, 100], &stream)),
            ("every-frame-whole", seed(&[], &stream)),
            ("oversized", seed(&[], &oversized)),
        ],
    );
}

fn disco_seeds() {
    const ALICE: [u8; 32] = [0x55; 32];
    const BOB: [u8; 32] = [0x66; 32];
    let key = disco::SharedKey::new(&ALICE, &disco::public_key(&BOB));
    let endpoint: SocketAddr = "192.0.2.10:41641".parse().expect("address");
    let endpoint6: SocketAddr = "[2001:db8::1]:41641".parse().expect("address");
    let ping = disco::Message::Ping(disco::Ping {
        tx_id: [1; 12],
        node_key: [2; 32],
        padding: 0,
    });
    let pong = disco::Message::Pong(disco::Pong {
        tx_id: [3; 12],
        src: endpoint,
    });
    let cmm = disco::Message::CallMeMaybe(disco::CallMeMaybe {
        endpoints: vec![endpoint, endpoint6],
    });
    let seed = |packet: &[u8], tail: &[u8]| {
        let mut w = Writer::default();
        w.counted(packet)
            .bytes(&[9; 24])
            .u16(40)
            .u8(1)
            .u8(1)
            .bytes(tail);
        w.out
    };
    let mut plaintext = Vec::new();
    ping.encode(&mut plaintext);
    // Message fields as the target reads them: type, then fields.
    let mut ping_fields = vec![0];
    ping_fields.extend_from_slice(&[1; 12]);
    ping_fields.extend_from_slice(&[2; 32]);
    ping_fields.extend_from_slice(&100u16.to_be_bytes());
    let mut pong_fields = vec![1];
    pong_fields.extend_from_slice(&[3; 12]);
    pong_fields.extend_from_slice(
        &std::net::Ipv4Addr::new(192, 0, 2, 10)
            .to_ipv6_mapped()
            .octets(),
    );
    pong_fields.extend_from_slice(&41641u16.to_be_bytes());
    write(
        "disco",
        vec![
            (
                "sealed-ping",
                seed(&key.seal_with_nonce(&ping, &[4; 24]), &ping_fields),
            ),
            (
                "sealed-pong",
                seed(&key.seal_with_nonce(&pong, &[5; 24]), &pong_fields),
            ),
            (
                "sealed-call-me-maybe",
                seed(&key.seal_with_nonce(&cmm, &[6; 24]), &[2]),
            ),
            ("plaintext-ping", seed(&plaintext, &[2])),
        ],
    );
}

fn stun_seeds() {
    let seed = |tx: [u8; 12], ip: std::net::Ipv6Addr, datagram: &[u8]| {
        let mut w = Writer::default();
        w.bytes(&tx)
            .bytes(&ip.octets())
            .u16(3478)
            .u8(5)
            .u8(0x10)
            .bytes(datagram);
        w.out
    };
    let v4: SocketAddr = "198.51.100.7:41641".parse().expect("address");
    let v6: SocketAddr = "[2001:db8::7]:41641".parse().expect("address");
    let mapped = std::net::Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped();
    // A response with only the classic MAPPED-ADDRESS attribute.
    let mut classic = vec![0x01, 0x01, 0, 12, 0x21, 0x12, 0xa4, 0x42];
    classic.extend_from_slice(&[7; 12]);
    classic.extend_from_slice(&[0, 1, 0, 8, 0, 1, 0x0d, 0x96, 203, 0, 113, 9]);
    write(
        "stun",
        vec![
            (
                "request",
                seed([1; 12], mapped, &stun::binding_request_with_tx_id([1; 12])),
            ),
            (
                "response-v4",
                seed([2; 12], mapped, &stun::binding_response([2; 12], v4)),
            ),
            (
                "response-v6",
                seed(
                    [3; 12],
                    "2001:db8::7".parse().expect("address"),
                    &stun::binding_response([3; 12], v6),
                ),
            ),
            ("response-mapped-address", seed([7; 12], mapped, &classic)),
        ],
    );
}

fn dns_seeds() {
    let seed = |limit: u16, message: &[u8]| {
        let mut w = Writer::default();
        w.u16(limit).u8(4).bytes(&[100; 16]).bytes(message);
        w.out
    };
    let query = |name: &str, qtype: u16, edns: Option<u16>| {
        dns::encode_query(7, name, qtype, edns).expect("a valid name")
    };
    let a = query("peer.tailnet.test", dns::TYPE_A, None);
    let answer = dns::Query::parse(&a)
        .expect("a query")
        .answer(&["100.64.0.7".parse().expect("address")], 60, 512);
    write(
        "dns",
        vec![
            ("query-a", seed(512, &a)),
            (
                "query-aaaa-edns",
                seed(1232, &query("peer", dns::TYPE_AAAA, Some(1232))),
            ),
            ("response", seed(20, &answer)),
        ],
    );
}

fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, transport: &[u8]) -> Vec<u8> {
    let total = (20 + transport.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(transport);
    p
}

fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(body.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(body);
    p
}

fn packet_path() {
    let tcp_syn = {
        let mut t = vec![
            0xc3, 0x50, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
        ];
        t.resize(20, 0);
        t
    };
    let v6src: [u8; 16] = "fd7a:115c:a1e0::1"
        .parse::<std::net::Ipv6Addr>()
        .expect("v6")
        .octets();
    let v6dst: [u8; 16] = "fd7a:115c:a1e0::2"
        .parse::<std::net::Ipv6Addr>()
        .expect("v6")
        .octets();
    let mut hop_by_hop_udp = vec![17, 0, 1, 4, 0, 0, 0, 0];
    hop_by_hop_udp.extend_from_slice(&[0x30, 0x39, 0, 53, 0, 8, 0, 0]);

    let node = boringtun::x25519::StaticSecret::from([0x88; 32]);
    let node_public = boringtun::x25519::PublicKey::from(&node);
    let peer = boringtun::x25519::StaticSecret::from([0x99; 32]);
    let mut tunn = boringtun::noise::Tunn::new(peer, node_public, None, None, 1 << 8, None);
    let mut buf = vec![0u8; 256];
    let initiation = match tunn.format_handshake_initiation(&mut buf, true) {
        boringtun::noise::TunnResult::WriteToNetwork(wire) => wire.to_vec(),
        _ => panic!("no handshake initiation"),
    };

    let seed = |datagram: &[u8]| {
        let mut w = Writer::default();
        // Routes: a /10, a /32 inside it, a v6 /48 and default routes.
        w.u8(5);
        for (v6, addr, len) in [
            (false, [100, 64, 0, 0], 10u8),
            (false, [100, 64, 0, 2], 32),
            (false, [0, 0, 0, 0], 0),
        ] {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&addr);
            w.u8(u8::from(v6)).bytes(&bytes).u8(len);
        }
        w.u8(1).bytes(&v6dst).u8(48);
        w.u8(1).bytes(&[0; 16]).u8(0);
        // Lookups: one v4, one v6.
        w.u8(2);
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[100, 64, 0, 2]);
        w.u8(0).bytes(&v4).u8(1).bytes(&v6src);
        w.bytes(datagram);
        w.out
    };
    let mut data = vec![4, 0, 0, 0];
    data.extend_from_slice(&(1u32 << 8).to_le_bytes());
    data.extend_from_slice(&[0; 8 + 32]);
    write(
        "packet_path",
        vec![
            (
                "tcp-syn-v4",
                seed(&ipv4([100, 64, 0, 1], [100, 64, 0, 2], 6, &tcp_syn)),
            ),
            (
                "udp-v6-hop-by-hop",
                seed(&ipv6(v6src, v6dst, 0, &hop_by_hop_udp)),
            ),
            ("wireguard-initiation", seed(&initiation)),
            ("wireguard-data", seed(&data)),
            (
                "stun-request",
                seed(&stun::binding_request_with_tx_id([1; 12])),
            ),
        ],
    );
}

fn main() {
    cni_config();
    cni_env();
    control_json();
    control_noise();
    control_map_stream();
    derp_frames();
    disco_seeds();
    stun_seeds();
    dns_seeds();
    packet_path();
}
