//! Flow offload end to end (`--dataplane offload`): the gateway decides each TCP flow on its
//! first packet, hands it to the kernel's connection tracking, and the kernel carries the
//! rest. On the lab topology (client, gateway, pods in namespaces of the test's own), with
//! the gateway's netfilter table and conntrack entries looked at from inside its namespace.
//! Needs root; nothing outside the test's namespaces is changed.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use clusterway::lab::{demo_snapshot, GATEWAY_STATUS, SERVICE_CIDRS};
use common::*;

const WEB: &str = "10.96.0.10:80";
const WEB6: &str = "[fd00:10:96::10]:80";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn offload_args() -> Vec<&'static str> {
    vec![
        "--dataplane",
        "offload",
        "--service-cidr",
        SERVICE_CIDRS[0],
        "--service-cidr",
        SERVICE_CIDRS[1],
    ]
}

fn start(topo: &Topology, extra: &[&str]) -> Gateway {
    let mut args = offload_args();
    args.extend_from_slice(extra);
    let gw = Gateway::start(topo, &demo_snapshot(&topo.pod_addrs()), &args);
    assert!(
        gw.wait_routed("10.96.0.10".parse().unwrap(), Duration::from_secs(10)),
        "{}",
        gw.logs()
    );
    gw
}

/// The gateway's `/metrics`, read from inside its namespace.
fn metrics(topo: &Topology) -> String {
    http_get(topo.gateway(), sa(GATEWAY_STATUS), "/metrics")
        .map(|r| r.text())
        .unwrap_or_default()
}

/// The value of the sample `name{labels}` (labels as written, e.g. `direction="in"`).
fn sample(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let matches = if labels.is_empty() {
                key == name
            } else {
                key.starts_with(&format!("{name}{{")) && key.contains(labels)
            };
            matches.then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(f64::NAN)
}

/// Our conntrack entries in the gateway namespace, as `conntrack -L` prints them.
fn our_entries(topo: &Topology) -> Vec<String> {
    let out = topo
        .gateway()
        .exec("conntrack", ["-L", "-m", "0x63770000/0xffff0000"])
        .stderr(std::process::Stdio::null())
        .output()
        .expect("running conntrack (apt-get install conntrack)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn get(topo: &Topology, addr: &str) -> String {
    tcp_get(topo.client(), sa(addr))
        .unwrap_or_else(|e| panic!("GET {addr}: {e:#}"))
        .trim()
        .to_owned()
}

/// One request on a kept-alive connection; the answer's body (the pod's name).
fn request(s: &mut TcpStream) -> std::io::Result<String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    while !got.ends_with(b"\n") || !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    Ok(text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned())
}

#[test]
fn offloaded_flows_round_robin_both_families_and_bulk_bytes_skip_the_tun() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    let gw = start(&topo, &[]);
    assert!(gw.logged("dataplane: offload"), "{}", gw.logs());
    let api = http_get(topo.gateway(), sa(GATEWAY_STATUS), "/api/v1/status")
        .unwrap()
        .text();
    assert!(api.contains(r#""name":"offload""#), "{api}");

    for addr in [WEB, WEB6] {
        let answers: Vec<String> = (0..4).map(|_| get(&topo, addr)).collect();
        for pod in ["pod-1", "pod-2"] {
            assert_eq!(
                answers.iter().filter(|a| *a == pod).count(),
                2,
                "{addr}: {answers:?}"
            );
        }
    }
    let before = sample(
        &metrics(&topo),
        "clusterway_tun_packets_total",
        r#"direction="in""#,
    );
    // 8 MB each way of bulk data over three connections.
    for _ in 0..3 {
        let big = http_get(topo.client(), sa(WEB), "/bytes/8000000").unwrap();
        assert_eq!(big.body.len(), 8_000_000);
    }
    let m = metrics(&topo);
    let after = sample(&m, "clusterway_tun_packets_total", r#"direction="in""#);
    // Only the SYNs (and a retransmission or two) cross the TUN device: a handful per
    // flow, where the proxy reads thousands of packets for these bytes.
    assert!(
        after - before <= 3.0 * 3.0,
        "{} packets crossed the TUN for 3 bulk flows",
        after - before
    );
    assert!(
        sample(&m, "clusterway_offload_flows_total", "") >= 11.0,
        "{m}"
    );
    // The kernel holds our entries, NATed to the pods from the gateway's address.
    let entries = our_entries(&topo);
    assert!(entries.len() >= 11, "{entries:?}");
    assert!(
        entries.iter().any(|e| e.contains("dst=10.96.0.10")
            && e.contains("src=10.244.")
            && e.contains("mark=1668743168")),
        "{entries:?}"
    );
    // Pings and rejects are answered from the TUN as before.
    ping(topo.client(), "10.96.0.10".parse().unwrap()).unwrap();
    let e = topo
        .client()
        .run(|| TcpStream::connect_timeout(&sa("10.96.0.10:81"), Duration::from_secs(2)))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    let e = topo
        .client()
        .run(|| TcpStream::connect_timeout(&sa("10.96.0.99:80"), Duration::from_secs(2)))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}
