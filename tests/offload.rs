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

/// One request on a kept-alive connection; the answer's body (the pod's name).
fn request(s: &mut TcpStream) -> std::io::Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
        if let Ok(r) = parse_response(&got) {
            return Ok(r.text().trim().to_owned());
        }
    }
}

#[test]
fn strict_rp_filter_in_the_gateway_namespace() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    // Strict reverse-path filtering everywhere, the TUN device included (it takes the
    // default when it is made).
    topo.gateway()
        .sh("for k in $(sysctl -aN 2>/dev/null | grep '^net.ipv4.conf.*.rp_filter$'); do sysctl -qw $k=1; done; \
             sysctl -qw net.ipv4.conf.default.rp_filter=1 net.ipv4.conf.all.rp_filter=1")
        .unwrap();
    let gw = start(&topo, &[]);
    let rp = topo
        .gateway()
        .sh("sysctl -n net.ipv4.conf.all.rp_filter net.ipv4.conf.cw0.rp_filter net.ipv4.conf.veth-cl.rp_filter")
        .unwrap();
    assert_eq!(rp.split_whitespace().collect::<Vec<_>>(), ["1", "1", "1"]);
    let answers: Vec<String> = (0..4).map(|_| get(&topo, WEB)).collect();
    assert!(answers.contains(&"pod-1".into()) && answers.contains(&"pod-2".into()));
    let big = http_get(topo.client(), sa(WEB), "/bytes/2000000").unwrap();
    assert_eq!(big.body.len(), 2_000_000);
    assert!(gw.logged("dataplane: offload"));
}

#[test]
fn established_flows_survive_sigkill_and_the_restarted_gateway_adopts_them() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    let mut gw = start(&topo, &[]);
    let mut held = topo
        .client()
        .run(|| TcpStream::connect_timeout(&sa(WEB), Duration::from_secs(2)))
        .unwrap();
    let pod = request(&mut held).unwrap();
    assert!(pod.starts_with("pod-"), "{pod}");

    // Killed: no cleanup runs. The device (and the routes through it) go with the process;
    // the table and the entries stay, and the kernel keeps carrying the flow.
    let pid = gw.pid().unwrap() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_for(|| gw.has_exited(), Duration::from_secs(5)));
    // The kernel unregisters the device shortly after its last descriptor closes.
    assert!(wait_for(
        || !gw.routes_via_tun("10.96.0.10".parse().unwrap()),
        Duration::from_secs(10)
    ));
    let table = topo.gateway().sh("nft list table inet clusterway").unwrap();
    assert!(table.contains("first_packet"), "{table}");
    assert!(!our_entries(&topo).is_empty());
    for _ in 0..3 {
        assert_eq!(request(&mut held).unwrap(), pod, "while no gateway runs");
    }

    // A new gateway (an upgrade, a restart after a crash): replaces the table, adopts the
    // entries, and the flow goes on.
    let gw2 = start(&topo, &[]);
    assert!(
        wait_for(|| gw2.logged("adopted="), Duration::from_secs(5)),
        "{}",
        gw2.logs()
    );
    assert!(!gw2.logged("adopted=0"), "{}", gw2.logs());
    // The adopted flow is on the status page again.
    let port = held.local_addr().unwrap().port();
    let flows = http_get(topo.gateway(), sa(GATEWAY_STATUS), "/api/v1/flows")
        .unwrap()
        .text();
    assert!(
        flows.contains(&format!("192.168.77.2:{port}")),
        "held flow not listed after the restart: {flows}"
    );
    let tables = topo.gateway().sh("nft list tables").unwrap();
    assert_eq!(tables.matches("inet clusterway").count(), 1, "{tables}");
    assert_eq!(request(&mut held).unwrap(), pod);
    // New flows are offloaded by the new gateway; the probe left no entry behind.
    assert!(get(&topo, WEB).starts_with("pod-"));
    let entries = our_entries(&topo);
    assert!(
        entries.iter().all(|e| !e.contains("192.0.2.")),
        "{entries:?}"
    );
}

#[test]
fn a_failing_endpoint_is_counted_and_ejected_and_flows_are_listed_with_their_bytes() {
    let topo = topology(2);
    let mut b = start_backends(&topo);
    b.stop_pod(1);
    let gw = start(&topo, &[]);
    // pod-1 refuses (its kernel resets the SYN): the first flow sent there fails, the
    // endpoint is ejected, and the next flows all go to pod-2.
    let answers: Vec<Option<String>> = (0..8)
        .map(|_| {
            tcp_get(topo.client(), sa(WEB))
                .ok()
                .map(|a| a.trim().to_owned())
        })
        .collect();
    let failed = answers.iter().filter(|a| a.is_none()).count();
    assert!(failed <= 1, "{answers:?}");
    assert!(
        answers.iter().flatten().all(|a| a == "pod-2"),
        "{answers:?}"
    );
    let counted = |m: &str, result: &str| {
        m.lines()
            .filter(|l| {
                l.starts_with("clusterway_connections_total{")
                    && l.contains(r#"service="web""#)
                    && l.contains(&format!(r#"result="{result}""#))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(
        wait_for(
            || {
                let m = metrics(&topo);
                counted(&m, "ok") >= (8 - failed) as f64
                    && counted(&m, "dial_failed") >= failed as f64
            },
            Duration::from_secs(10)
        ),
        "{}",
        metrics(&topo)
    );
    if failed == 1 {
        let m = metrics(&topo);
        assert_eq!(
            sample(&m, "clusterway_offload_ejections_total", ""),
            1.0,
            "{m}"
        );
        let events = http_get(topo.gateway(), sa(GATEWAY_STATUS), "/api/v1/events")
            .unwrap()
            .text();
        assert!(events.contains("ejected"), "{events}");
    }
    // A held flow is listed live, with the endpoint it went to.
    let held = topo
        .client()
        .run(|| TcpStream::connect_timeout(&sa(WEB), Duration::from_secs(2)))
        .unwrap();
    let port = held.local_addr().unwrap().port();
    assert!(
        wait_for(
            || http_get(topo.gateway(), sa(GATEWAY_STATUS), "/api/v1/flows")
                .is_ok_and(|r| r.text().contains(&format!("192.168.77.2:{port}"))
                    && r.text().contains("10.244.2.10:8080")),
            Duration::from_secs(5)
        ),
        "{}",
        http_get(topo.gateway(), sa(GATEWAY_STATUS), "/api/v1/flows")
            .unwrap()
            .text()
    );
    // Bytes of offloaded flows, from the table's counters.
    let big = http_get(topo.client(), sa(WEB), "/bytes/3000000").unwrap();
    assert_eq!(big.body.len(), 3_000_000);
    assert!(
        wait_for(
            || sample(
                &metrics(&topo),
                "clusterway_offload_bytes_total",
                r#"direction="to_client""#
            ) >= 3_000_000.0,
            Duration::from_secs(15)
        ),
        "{}",
        metrics(&topo)
    );
    drop(gw);
}

#[test]
fn a_graceful_stop_removes_the_table_and_the_entries() {
    let topo = topology(1);
    let _b = start_backends(&topo);
    let mut gw = start(&topo, &[]);
    assert_eq!(get(&topo, WEB), "pod-1");
    assert!(!our_entries(&topo).is_empty());
    let status = gw.stop_sigterm();
    assert!(status.success(), "{status}: {}", gw.logs());
    let tables = topo.gateway().sh("nft list tables").unwrap();
    assert!(!tables.contains("clusterway"), "{tables}");
    assert_eq!(our_entries(&topo), Vec::<String>::new());
}

#[test]
fn several_thousand_concurrent_flows_are_offloaded_and_counted() {
    const FLOWS: usize = 3000;
    let topo = topology(2);
    let _b = start_backends(&topo);
    let _gw = start(&topo, &[]);
    let before = sample(&metrics(&topo), "clusterway_offload_flows_total", "");
    let mut held: Vec<TcpStream> = topo.client().run(|| {
        (0..FLOWS)
            .map(|i| {
                TcpStream::connect_timeout(&sa(WEB), Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"))
            })
            .collect()
    });
    let m = metrics(&topo);
    let handed = sample(&m, "clusterway_offload_flows_total", "") - before;
    assert!(handed >= FLOWS as f64, "{handed} handed over: {m}");
    // Counted as connections when conntrack reports them established (events).
    let ok = |m: &str| {
        m.lines()
            .filter(|l| {
                l.starts_with("clusterway_connections_total{")
                    && l.contains(r#"service="web""#)
                    && l.contains(r#"result="ok""#)
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(
        wait_for(
            || ok(&metrics(&topo)) >= FLOWS as f64,
            Duration::from_secs(20)
        ),
        "{} counted: {}",
        ok(&metrics(&topo)),
        metrics(&topo)
    );
    let m = metrics(&topo);
    assert!(
        sample(&m, "clusterway_active_flows", r#"protocol="TCP""#) >= FLOWS as f64,
        "{m}"
    );
    let established = our_entries(&topo)
        .iter()
        .filter(|e| e.contains("ESTABLISHED"))
        .count();
    assert!(established >= FLOWS, "{established} established entries");
    // Every tenth connection still answers.
    for s in held.iter_mut().step_by(10) {
        assert!(request(s).unwrap().starts_with("pod-"));
    }
}

/// The gateway process of the fallback test, stopped on drop.
struct Refused(std::process::Child, std::path::PathBuf);

impl Drop for Refused {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        if !wait_for(
            || matches!(self.0.try_wait(), Ok(Some(_))),
            Duration::from_secs(10),
        ) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", std::fs::read_to_string(&self.1).unwrap_or_default());
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn refused_ctnetlink_falls_back_to_the_proxy_with_the_reason_shown() {
    use std::os::unix::process::CommandExt;
    let topo = topology(2);
    let _b = start_backends(&topo);
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshot.yaml");
    std::fs::write(&snapshot, demo_snapshot(&topo.pod_addrs())).unwrap();
    let log = dir.path().join("gateway.log");
    let mut args = vec!["run", "--from-file", snapshot.to_str().unwrap()];
    args.extend(offload_args());
    let mut cmd = topo.gateway().exec(BIN, &args);
    cmd.env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    unsafe { cmd.pre_exec(refuse_netfilter_netlink) };
    let child = cmd.spawn().unwrap();
    let _gw = Refused(child, log.clone());
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_for(|| logs().contains("gateway ready"), Duration::from_secs(15)),
        "{}",
        logs()
    );
    let text = logs();
    assert!(
        text.contains("flow offload unavailable; falling back to the proxy dataplane")
            && text.contains("Operation not permitted")
            && text.contains("dataplane: proxy"),
        "{text}"
    );
    // The proxy carries the flows.
    let answers: Vec<String> = (0..2).map(|_| get(&topo, WEB)).collect();
    assert!(answers.iter().all(|a| a.starts_with("pod-")), "{answers:?}");
    let api = http_get(topo.gateway(), sa(GATEWAY_STATUS), "/api/v1/status")
        .unwrap()
        .text();
    assert!(
        api.contains(r#""name":"proxy""#)
            && api.contains(r#""requested":"offload""#)
            && api.contains("Operation not permitted"),
        "{api}"
    );
    assert!(
        metrics(&topo).contains(r#"clusterway_dataplane{dataplane="proxy",requested="offload"} 1"#)
    );
    // Nothing of offload's was left on the host.
    let tables = topo.gateway().sh("nft list tables").unwrap();
    assert!(!tables.contains("clusterway"), "{tables}");
}

/// One request from the client's port `port` (bound with SO_REUSEADDR, so that the same
/// tuple can be opened again), read to the end; the server closes first.
fn get_from_port(topo: &Topology, port: u16) -> std::io::Result<String> {
    use socket2::{Domain, Socket, Type};
    topo.client().run(move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
        s.connect_timeout(&sa(WEB).into(), Duration::from_secs(3))?;
        let mut s: TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

#[test]
fn a_new_connection_on_the_tuple_of_a_closed_flow_replaces_its_entry() {
    let topo = topology(1);
    let _b = start_backends(&topo);
    let gw = start(&topo, &[]);
    let port = 43210;
    let ours = |state: &str| {
        our_entries(&topo)
            .iter()
            .filter(|l| l.contains(&format!("sport={port} ")) && l.contains(state))
            .count()
    };
    let first = get_from_port(&topo, port).unwrap();
    assert!(first.contains("pod-1"), "{first}");
    // Closed: the gateway's entry for the tuple stays (TIME_WAIT) after the flow.
    assert!(
        wait_for(|| ours("TIME_WAIT") == 1, Duration::from_secs(5)),
        "{:?}",
        our_entries(&topo)
    );
    // The same tuple again: the old entry is deleted and a new one created (one datagram),
    // and the flow goes through.
    let second = get_from_port(&topo, port).unwrap();
    assert!(second.contains("pod-1"), "{second}\n{}", gw.logs());
    let m = metrics(&topo);
    assert_eq!(
        sample(&m, "clusterway_offload_flows_total", ""),
        2.0,
        "two entries created\n{m}"
    );
    assert_eq!(
        sample(&m, "clusterway_offload_retransmits_total", ""),
        0.0,
        "{m}"
    );
    // Both connections counted ok, none failed (the replaced entry had been established).
    let counted = |m: &str, result: &str| {
        m.lines()
            .filter(|l| {
                l.starts_with("clusterway_connections_total{")
                    && l.contains(r#"service="web""#)
                    && l.contains(&format!(r#"result="{result}""#))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(
        wait_for(
            || counted(&metrics(&topo), "ok") == 2.0,
            Duration::from_secs(5)
        ),
        "{}",
        metrics(&topo)
    );
    assert_eq!(counted(&metrics(&topo), "dial_failed"), 0.0);
    assert!(
        wait_for(|| ours("TIME_WAIT") == 1, Duration::from_secs(5)),
        "one entry for the tuple: {:?}",
        our_entries(&topo)
    );
}
