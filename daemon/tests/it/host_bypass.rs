//! A pod cannot get around the engine through the host: what it sends to an
//! address of the node (here a node-local tailscaled's 100.x and fd7a
//! addresses on a link of their own, with something listening on them) lands on
//! its TUN, never on the host's sockets. Same requirements and throwaway
//! namespaces as `plumbing`.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use serde_json::Value;
use tailnet_cnid::podmgr::plumbing::{PlumbError, Plumber, DEFAULT_RULE_PRIORITY};
use tailnet_cnid::podmgr::tables::TableAllocator;

use crate::common::require;
use crate::plumbing::{
    in_host_netns, is_udp_to_v4, is_udp_to_v6, nonblocking_tun, requirements, send_until_seen,
    spec, udp_in, NamedNetns,
};

const HOST_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 50, 1);
const HOST_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x50);
const PORT: u16 = 4343;

/// The unconditional `lookup local` rules of one family, by priority.
fn local_rule_priorities(host: &NamedNetns, family: &str) -> Vec<u64> {
    let out = host.run(&["-j", family, "rule", "show"]).unwrap();
    let rules: Value = serde_json::from_str(&out).unwrap();
    rules
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| rule["table"] == "local" && rule["src"] == "all" && rule["dst"].is_null())
        .filter_map(|rule| rule["priority"].as_u64())
        .collect()
}

/// Whatever arrives on `sock` within a second.
fn received(sock: &UdpSocket) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 256];
    match sock.recv(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("receiving on the host listener: {e}"),
    }
}

#[test]
fn pod_traffic_to_host_addresses_goes_to_the_tun_only() {
    require!(requirements());
    let host = NamedNetns::new("bypass-host");
    let pod = NamedNetns::new("bypass-pod");
    host.run(&["link", "set", "lo", "up"]).unwrap();
    // One end of a veth pair stands in for tailscale0 (a dummy link needs a
    // module not every kernel has).
    host.run(&[
        "link", "add", "tsdummy0", "type", "veth", "peer", "name", "tsdummy1",
    ])
    .unwrap();
    host.run(&["addr", "add", &format!("{HOST_V4}/32"), "dev", "tsdummy0"])
        .unwrap();
    host.run(&[
        "addr",
        "add",
        &format!("{HOST_V6}/128"),
        "dev",
        "tsdummy0",
        "nodad",
    ])
    .unwrap();
    for link in ["tsdummy0", "tsdummy1"] {
        host.run(&["link", "set", link, "up"]).unwrap();
    }
    let listen_v4 = udp_in(&host, SocketAddr::from((HOST_V4, PORT)));
    let listen_v6 = udp_in(&host, SocketAddr::from((HOST_V6, PORT)));
    assert_eq!(local_rule_priorities(&host, "-4"), vec![0]);
    assert_eq!(local_rule_priorities(&host, "-6"), vec![0]);

    let spec_a = spec("bypass-a-0123456789abcdef", &pod, 31);
    let (net_tx, net_rx) = std::sync::mpsc::channel();
    {
        let spec_a = spec_a.clone();
        in_host_netns(&host, move || async move {
            let plumber = Plumber::new().unwrap();
            let tables = TableAllocator::with_default_range([]);
            let net = plumber
                .setup(&spec_a, tables.allocate().unwrap())
                .await
                .unwrap();
            plumber.check(&net, &spec_a).await.unwrap();
            net_tx.send(net).unwrap();
        });
    }
    let net_a = net_rx.recv().unwrap();
    let moved = vec![u64::from(DEFAULT_RULE_PRIORITY) + 1];
    assert_eq!(local_rule_priorities(&host, "-4"), moved);
    assert_eq!(local_rule_priorities(&host, "-6"), moved);

    // The pod's packets to the host's addresses: on the TUN, not delivered.
    {
        let (spec_a, net_a, pod) = (spec_a.clone(), net_a.clone(), pod.view());
        in_host_netns(&host, move || async move {
            let tun = nonblocking_tun(&net_a.tun_name);
            let sock = udp_in(&pod, SocketAddr::from((spec_a.ipv4.unwrap(), 0)));
            send_until_seen(&sock, b"to-host-v4", (HOST_V4, PORT).into(), &tun, |p| {
                is_udp_to_v4(p, HOST_V4, PORT)
            })
            .expect("the pod's packet to the host's 100.x address on its TUN");
            let sock6 = udp_in(&pod, SocketAddr::from((spec_a.ipv6.unwrap(), 0)));
            send_until_seen(&sock6, b"to-host-v6", (HOST_V6, PORT).into(), &tun, |p| {
                is_udp_to_v6(p, HOST_V6, PORT)
            })
            .expect("the pod's packet to the host's fd7a address on its TUN");
        });
    }
    assert_eq!(received(&listen_v4), None, "delivered to the host (IPv4)");
    assert_eq!(received(&listen_v6), None, "delivered to the host (IPv6)");

    // A second pod finds the rule already moved: nothing is added twice.
    // Should the local rule come back in front, CHECK reports it.
    let pod_b = NamedNetns::new("bypass-pod-b");
    let spec_b = spec("bypass-b-0123456789abcdef", &pod_b, 32);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    {
        let host_view = host.view();
        in_host_netns(&host, move || async move {
            let plumber = Plumber::new().unwrap();
            let tables = TableAllocator::with_default_range([net_a.table]);
            let net_b = plumber
                .setup(&spec_b, tables.allocate().unwrap())
                .await
                .unwrap();
            assert_eq!(local_rule_priorities(&host_view, "-4"), moved);
            assert_eq!(local_rule_priorities(&host_view, "-6"), moved);

            host_view
                .run(&["-6", "rule", "add", "pref", "0", "lookup", "local"])
                .unwrap();
            let err = plumber.check(&net_b, &spec_b).await.unwrap_err();
            assert!(matches!(err, PlumbError::Drift(_)), "{err}");
            done_tx.send(()).unwrap();
        });
    }
    done_rx.recv().unwrap();
}
