//! Smoke test of the lab topology and the demo backends, without the gateway: the client
//! reaches pod IPs by plain routing through the gateway namespace (HTTP and UDP, IPv4 and
//! IPv6), and every namespace is gone after the topology is dropped. Needs root.

mod common;

use std::net::SocketAddr;

use clusterway::lab::{BACKEND_HTTP_PORT, BACKEND_UDP_PORT};
use common::*;

fn check_routing(topo: &Topology) {
    for k in 1..=topo.pod_count() {
        for v6 in [false, true] {
            let ip = topo.pod_ip(k, v6);
            let body = tcp_get(topo.client(), SocketAddr::new(ip, BACKEND_HTTP_PORT))
                .unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(body, format!("pod-{k}\n"));

            // The pod sees the client's own address: routing, no NAT.
            let seen = http_get(topo.client(), SocketAddr::new(ip, BACKEND_HTTP_PORT), "/ip")
                .unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(seen.text(), format!("{}\n", topo.client_ip(v6)));
            assert_eq!(seen.header("X-Backend"), Some(format!("pod-{k}").as_str()));

            let big = http_get(
                topo.client(),
                SocketAddr::new(ip, BACKEND_HTTP_PORT),
                "/bytes/1000000",
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(big.body.len(), 1_000_000);

            let echo = udp_roundtrip(topo.client(), SocketAddr::new(ip, BACKEND_UDP_PORT), b"hi")
                .unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(echo, format!("pod-{k} hi"));

            ping(topo.client(), ip).unwrap_or_else(|e| panic!("{e:#}"));
        }
    }
}

#[test]
fn client_reaches_pods_by_routing_and_everything_is_removed() {
    let topo = topology(2);
    let prefix = topo.prefix().to_owned();
    assert_eq!(namespaces_with_prefix(&prefix).len(), 4);
    {
        let _backends = start_backends_in_process(&topo);
        check_routing(&topo);
    }
    drop(topo);
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
}

/// The same through `clusterway demo-backend` processes, as the lab and the gateway tests
/// run them. Skipped (passes with a note) while the binary has no `demo-backend` subcommand.
#[test]
fn demo_backend_processes_serve_v4_and_v6() {
    let has_subcommand = std::process::Command::new(BIN)
        .args(["demo-backend", "--help"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--http"));
    if !has_subcommand {
        eprintln!("skipped: {BIN} has no demo-backend subcommand yet");
        return;
    }
    let topo = topology(3);
    let prefix = topo.prefix().to_owned();
    let backends = start_backends(&topo);
    check_routing(&topo);
    drop(backends);
    drop(topo);
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
}

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    let prefix = std::sync::Mutex::new(String::new());
    let sleeper = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let topo = topology(1);
        *prefix.lock().unwrap() = topo.prefix().to_owned();
        // Something inside the namespace keeps running; Drop must kill it.
        *sleeper.lock().unwrap() = Some(topo.pod(1).exec("sleep", ["60"]).spawn().unwrap());
        panic!("deliberate");
    });
    assert!(result.is_err());
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
    let status = sleeper.into_inner().unwrap().unwrap().wait().unwrap();
    assert!(!status.success(), "the process in the namespace was killed");
}
