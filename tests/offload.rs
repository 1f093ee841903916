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

const DNS: &str = "10.96.0.53:53";
const DNS6: &str = "[fd00:10:96::53]:53";

/// `count` request/answer exchanges over one UDP socket (one flow) from inside `ns`; the
/// answers (the demo echo's `{pod} {payload}`).
fn udp_exchanges(ns: &Netns, addr: SocketAddr, count: usize) -> std::io::Result<Vec<String>> {
    ns.run(move || -> std::io::Result<Vec<String>> {
        let bind: SocketAddr = if addr.is_ipv6() {
            sa("[::]:0")
        } else {
            sa("0.0.0.0:0")
        };
        let s = std::net::UdpSocket::bind(bind)?;
        s.connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = [0u8; 2048];
        let mut answers = Vec::with_capacity(count);
        for i in 0..count {
            s.send(format!("q{i}").as_bytes())?;
            let n = s.recv(&mut buf)?;
            answers.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        Ok(answers)
    })
}

#[test]
fn udp_flows_are_offloaded_in_both_families_and_later_datagrams_skip_the_tun() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    let gw = start(&topo, &[]);
    // Warm up (neighbour discovery toward the pods) with one flow per family.
    for addr in [DNS, DNS6] {
        udp_roundtrip(topo.client(), sa(addr), b"hi").unwrap_or_else(|e| {
            panic!("{addr}: {e:#}\n{}", gw.logs());
        });
    }
    let m = metrics(&topo);
    let before = sample(&m, "clusterway_tun_packets_total", r#"direction="in""#);
    let flows_before = sample(&m, "clusterway_offload_flows_total", "");
    // Two flows per family, 300 exchanges each: 1,200 datagrams each way.
    for addr in [DNS, DNS6, DNS, DNS6] {
        let answers = udp_exchanges(topo.client(), sa(addr), 300)
            .unwrap_or_else(|e| panic!("{addr}: {e}\n{}", gw.logs()));
        let pod = answers[0].split(' ').next().unwrap().to_owned();
        for (i, a) in answers.iter().enumerate() {
            assert_eq!(*a, format!("{pod} q{i}"), "{addr}: one flow, one endpoint");
        }
    }
    let m = metrics(&topo);
    let after = sample(&m, "clusterway_tun_packets_total", r#"direction="in""#);
    // Only each flow's first datagram crosses the TUN device (and, rarely, one more).
    assert!(
        after - before <= 4.0 * 2.0,
        "{} packets crossed the TUN for 4 UDP flows of 300 datagrams",
        after - before
    );
    assert!(
        sample(&m, "clusterway_offload_flows_total", "") - flows_before >= 4.0,
        "{m}"
    );
    assert_eq!(sample(&m, "clusterway_offload_udp_proxied_total", ""), 0.0);
    // The kernel holds UDP entries of ours, NATed to the pods from the gateway's address.
    let entries = our_entries(&topo);
    assert!(
        entries.iter().any(|e| e.starts_with("udp")
            && e.contains("dst=10.96.0.53")
            && e.contains("src=10.244.")),
        "{entries:?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e.starts_with("udp") && e.contains("dst=fd00:10:96::53")),
        "{entries:?}"
    );
    // The flows are listed and counted per Service port, once each (as connections `ok`,
    // once answered): the two warm-up flows and the four.
    let answered = || {
        metrics(&topo)
            .lines()
            .filter(|l| {
                l.starts_with("clusterway_connections_total{")
                    && l.contains(r#"service="dns-echo""#)
                    && l.contains(r#"result="ok""#)
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(
        wait_for(|| answered() >= 6.0, Duration::from_secs(10)),
        "{}",
        metrics(&topo)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(answered(), 6.0, "{}", metrics(&topo));
    // All six are open now (their entries live on): the kernel carries them, and the gauge
    // and the status API say so.
    let m = metrics(&topo);
    assert_eq!(
        sample(&m, "clusterway_active_flows", r#"protocol="UDP""#),
        6.0,
        "{m}"
    );
    let status = http_get(topo.gateway(), sa(GATEWAY_STATUS), "/api/v1/status")
        .unwrap()
        .text();
    assert!(status.contains(r#""active_udp":6"#), "{status}");
    let flows = http_get(topo.gateway(), sa(GATEWAY_STATUS), "/api/v1/flows")
        .unwrap()
        .text();
    assert!(flows.contains("dns-echo"), "{flows}");
}

#[test]
fn hundreds_of_distinct_udp_flows_are_all_answered() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    let gw = start(&topo, &[]);
    let before = sample(&metrics(&topo), "clusterway_offload_flows_total", "");
    // 400 DNS-like queries, each from a socket (a source port) of its own, all sent
    // before any answer is read.
    let answered = topo
        .client()
        .run(|| -> std::io::Result<usize> {
            let socks: Vec<std::net::UdpSocket> = (0..400)
                .map(|_| {
                    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                    s.connect(sa(DNS))?;
                    s.set_read_timeout(Some(Duration::from_secs(3)))?;
                    Ok(s)
                })
                .collect::<std::io::Result<_>>()?;
            for (i, s) in socks.iter().enumerate() {
                s.send(format!("query {i}").as_bytes())?;
            }
            let mut buf = [0u8; 512];
            let mut answered = 0;
            for (i, s) in socks.iter().enumerate() {
                // A query whose first datagram was lost is asked again, as a resolver does.
                for _ in 0..3 {
                    match s.recv(&mut buf) {
                        Ok(n) => {
                            let a = String::from_utf8_lossy(&buf[..n]);
                            if a.ends_with(&format!(" query {i}")) {
                                answered += 1;
                            }
                            break;
                        }
                        Err(_) => {
                            s.send(format!("query {i}").as_bytes())?;
                        }
                    }
                }
            }
            Ok(answered)
        })
        .unwrap();
    assert_eq!(answered, 400, "{}", gw.logs());
    let m = metrics(&topo);
    assert!(
        sample(&m, "clusterway_offload_flows_total", "") - before >= 400.0,
        "{m}"
    );
    let udp = our_entries(&topo)
        .iter()
        .filter(|e| e.starts_with("udp") && e.contains("dport=53"))
        .count();
    assert!(udp >= 400, "{udp} UDP entries of ours");
}

#[test]
fn a_udp_query_to_a_service_without_endpoints_gets_port_unreachable() {
    let topo = topology(1);
    // Every Service without endpoints.
    let gw = Gateway::start(&topo, &demo_snapshot(&[]), &offload_args());
    assert!(
        gw.wait_routed("10.96.0.53".parse().unwrap(), Duration::from_secs(10)),
        "{}",
        gw.logs()
    );
    let e = udp_roundtrip(topo.client(), sa(DNS), b"anyone?").unwrap_err();
    let refused = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    assert!(refused, "{e:#}");
    assert!(our_entries(&topo).iter().all(|e| !e.starts_with("udp")));
}

#[test]
fn a_udp_flow_whose_endpoint_is_removed_moves_to_one_still_there() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    let gw = start(&topo, &[]);
    // One flow (one socket), kept busy across the change.
    let s = topo
        .client()
        .run(|| -> std::io::Result<std::net::UdpSocket> {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.connect(sa(DNS))?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            Ok(s)
        })
        .unwrap();
    let ask = |q: &str| -> Option<String> {
        s.send(q.as_bytes()).ok()?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let first = ask("a").unwrap_or_else(|| panic!("no answer\n{}", gw.logs()));
    let pod = first.split(' ').next().unwrap().to_owned();
    assert_eq!(
        ask("b").unwrap(),
        format!("{pod} b"),
        "one flow, one endpoint"
    );
    // That pod's endpoint goes away: the flow's entry is deleted and its next datagrams go
    // to the other pod, on the same socket.
    let k: usize = pod.trim_start_matches("pod-").parse().unwrap();
    let left: Vec<_> = topo
        .pod_addrs()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i + 1 != k)
        .map(|(_, a)| a)
        .collect();
    gw.update_snapshot(&demo_snapshot(&left));
    let other = if k == 1 { "pod-2" } else { "pod-1" };
    assert!(
        wait_for(
            || ask("c").is_some_and(|a| a == format!("{other} c")),
            Duration::from_secs(10)
        ),
        "the flow still goes to {pod}: {:?}\n{}",
        ask("d"),
        gw.logs()
    );
    assert!(
        gw.logged("UDP flows to endpoints no longer usable ended"),
        "{}",
        gw.logs()
    );
    // And stays there.
    for q in ["e", "f", "g"] {
        assert_eq!(ask(q), Some(format!("{other} {q}")));
    }
}

#[test]
fn a_udp_flow_whose_first_datagram_is_fragmented_is_proxied_and_answered() {
    let topo = topology(1);
    let _b = start_backends(&topo);
    let gw = start(&topo, &[]);
    // 4,000 bytes: fragments on every link. The kernel reassembles them before the TUN
    // device (conntrack needs whole datagrams), the TUN device fragments them again, the
    // engine reassembles; a raw socket will not send more than the route's MTU, so the flow
    // is proxied in user space, and answered all the same (both families).
    let big = vec![b'x'; 4000];
    for addr in [DNS, DNS6] {
        let answer = udp_roundtrip(topo.client(), sa(addr), &big)
            .unwrap_or_else(|e| panic!("{addr}: {e:#}\n{}", gw.logs()));
        assert!(
            answer.starts_with("pod-1 xxx") && answer.len() == 4006,
            "{addr}: {} bytes",
            answer.len()
        );
    }
    let m = metrics(&topo);
    assert_eq!(
        sample(&m, "clusterway_offload_udp_proxied_total", ""),
        2.0,
        "{m}"
    );
    assert!(
        gw.logged("a UDP flow is proxied in user space"),
        "{}",
        gw.logs()
    );
    // A small first datagram is offloaded as usual.
    let small = udp_roundtrip(topo.client(), sa(DNS), b"hi").unwrap();
    assert_eq!(small, "pod-1 hi");
    assert!(our_entries(&topo).iter().any(|e| e.starts_with("udp")));
}

/// The sum of `clusterway_connections_total` of Service `web` with `result`.
fn web_connections(m: &str, result: &str) -> f64 {
    m.lines()
        .filter(|l| {
            l.starts_with("clusterway_connections_total{")
                && l.contains(r#"service="web""#)
                && l.contains(&format!(r#"result="{result}""#))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn an_endpoint_that_never_answers_is_a_dial_failure_within_seconds_and_its_entry_ends() {
    let topo = topology(1);
    let _b = start_backends(&topo);
    // The pod drops every packet to its port: no SYN-ACK, no reset, nothing.
    topo.pod(1)
        .sh("nft add table inet blackhole && \
             nft add chain inet blackhole input '{ type filter hook input priority 0; }' && \
             nft add rule inet blackhole input tcp dport 8080 drop")
        .unwrap();
    let _gw = start(&topo, &[]);
    let started = std::time::Instant::now();
    let e = topo
        .client()
        .run(|| TcpStream::connect_timeout(&sa(WEB), Duration::from_secs(3)))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    // The gateway's entry waits for a reply that never comes.
    let waiting = our_entries(&topo);
    assert!(
        waiting
            .iter()
            .any(|l| l.contains("SYN_SENT") && l.contains("UNREPLIED")),
        "{waiting:?}"
    );
    assert_eq!(web_connections(&metrics(&topo), "dial_failed"), 0.0);
    // Ended after about 10 s (not the kernel's 120 s), counted as a dial failure then.
    let deadline = Duration::from_secs(16);
    assert!(
        wait_for(
            || web_connections(&metrics(&topo), "dial_failed") >= 1.0,
            deadline.saturating_sub(started.elapsed())
        ),
        "no dial failure counted {:?} after the SYN: {}",
        started.elapsed(),
        metrics(&topo)
    );
    let left = our_entries(&topo);
    assert!(
        left.iter().all(|l| !l.contains("SYN_SENT")),
        "the unanswered entry is still there: {left:?}"
    );
    // The kernel's DESTROY event of the deleted entry is not counted a second time.
    std::thread::sleep(Duration::from_secs(2));
    let m = metrics(&topo);
    assert_eq!(web_connections(&m, "dial_failed"), 1.0, "{m}");
    assert_eq!(web_connections(&m, "ok"), 0.0, "{m}");
    let events = http_get(topo.gateway(), sa(GATEWAY_STATUS), "/api/v1/events")
        .unwrap()
        .text();
    assert!(events.contains("unreplied"), "{events}");
}

#[test]
fn a_udp_flow_goes_on_while_no_gateway_runs_and_keeps_its_endpoint_after_a_restart() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    let mut gw = start(&topo, &[]);
    let s = topo
        .client()
        .run(|| -> std::io::Result<std::net::UdpSocket> {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.connect(sa(DNS))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            Ok(s)
        })
        .unwrap();
    let ask = |q: &str| -> String {
        s.send(q.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf).unwrap_or_else(|e| panic!("{q}: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let pod = ask("a").split(' ').next().unwrap().to_owned();
    // Killed: the entry and the set (with the flow's element) stay, and carry the flow.
    let pid = gw.pid().unwrap() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_for(|| gw.has_exited(), Duration::from_secs(5)));
    for q in ["b", "c"] {
        assert_eq!(ask(q), format!("{pod} {q}"), "while no gateway runs");
    }
    // The restarted gateway replaces the table: the set starts empty, so the flow's next
    // datagram arrives untracked, finds the flow's entry (ours) and is re-injected on it,
    // to the same endpoint; the ones after it are the kernel's again.
    let _gw2 = start(&topo, &[]);
    let tun_in = || {
        sample(
            &metrics(&topo),
            "clusterway_tun_packets_total",
            r#"direction="in""#,
        )
    };
    let before = tun_in();
    for i in 0..50 {
        let q = format!("d{i}");
        assert_eq!(ask(&q), format!("{pod} {q}"), "after the restart");
    }
    assert!(
        tun_in() - before <= 3.0,
        "{} packets crossed the TUN",
        tun_in() - before
    );
    let m = metrics(&topo);
    assert!(
        sample(&m, "clusterway_offload_retransmits_total", "") >= 1.0,
        "{m}"
    );
}

#[test]
fn bytes_per_service_port_come_from_the_table_without_conntrack_accounting() {
    let topo = topology(1);
    let _b = start_backends(&topo);
    let _gw = start(&topo, &[]);
    // The namespace's default: the kernel keeps no byte counters on entries.
    let acct = topo
        .gateway()
        .sh("sysctl -n net.netfilter.nf_conntrack_acct")
        .unwrap();
    assert_eq!(acct.trim(), "0");
    const N: usize = 3_000_000;
    const N6: usize = 1_000_000;
    let big = http_get(topo.client(), sa(WEB), &format!("/bytes/{N}")).unwrap();
    assert_eq!(big.body.len(), N);
    let big6 = http_get(topo.client(), sa(WEB6), &format!("/bytes/{N6}")).unwrap();
    assert_eq!(big6.body.len(), N6);
    let web = |m: &str, dir: &str| {
        sample(
            m,
            "clusterway_bytes_total",
            &format!(r#"service="web",direction="{dir}""#),
        )
    };
    assert!(
        wait_for(
            || web(&metrics(&topo), "to_client") >= (N + N6) as f64,
            Duration::from_secs(15)
        ),
        "{}",
        metrics(&topo)
    );
    let m = metrics(&topo);
    // The requests went the other way: a few hundred bytes, not nothing.
    assert!(web(&m, "to_endpoint") > 0.0, "{m}");
    // Another Service port carried nothing and shows nothing.
    let sticky = sample(&m, "clusterway_bytes_total", r#"service="sticky""#);
    assert!(sticky.is_nan() || sticky == 0.0, "{m}");
    // The same counters on the Service's page, per port.
    let page = http_get(
        topo.gateway(),
        sa(GATEWAY_STATUS),
        "/api/v1/services/demo/web",
    )
    .unwrap()
    .text();
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    let port = page["counters"]
        .as_array()
        .and_then(|c| c.iter().find(|p| p["port"] == 80))
        .unwrap_or_else(|| panic!("no counters of port 80: {page}"));
    assert!(
        port["bytes_to_client"].as_u64().unwrap() >= (N + N6) as u64,
        "{page}"
    );
    // Kept by the kernel per Service frontend, in the gateway's table.
    let set = topo
        .gateway()
        .sh("nft list set inet clusterway svc4_to_client")
        .unwrap();
    assert!(set.contains("10.96.0.10 . tcp . 80"), "{set}");
}

#[test]
fn without_cap_net_raw_the_gateway_falls_back_to_the_proxy_and_says_why() {
    let topo = topology(1);
    let _b = start_backends(&topo);
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshot.yaml");
    std::fs::write(&snapshot, demo_snapshot(&topo.pod_addrs())).unwrap();
    let log = dir.path().join("gateway.log");
    // CAP_NET_RAW out of the bounding set: root keeps every other capability (a container
    // run with `--cap-drop ALL --cap-add NET_ADMIN` is the case this stands for).
    let mut args = vec![
        "--bounding-set",
        "-net_raw",
        BIN,
        "run",
        "--from-file",
        snapshot.to_str().unwrap(),
    ];
    args.extend(offload_args());
    let mut cmd = topo.gateway().exec("setpriv", &args);
    cmd.env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    let _gw = Refused(cmd.spawn().unwrap(), log.clone());
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_for(|| logs().contains("gateway ready"), Duration::from_secs(15)),
        "{}",
        logs()
    );
    let text = logs();
    assert!(
        text.contains("flow offload unavailable; falling back to the proxy dataplane")
            && text.contains("CAP_NET_RAW")
            && text.contains("dataplane: proxy"),
        "{text}"
    );
    assert_eq!(get(&topo, WEB), "pod-1");
    let api = http_get(topo.gateway(), sa(GATEWAY_STATUS), "/api/v1/status")
        .unwrap()
        .text();
    assert!(
        api.contains(r#""name":"proxy""#) && api.contains("CAP_NET_RAW"),
        "{api}"
    );
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

#[test]
fn with_a_kernel_udp_timeout_below_the_set_timeout_a_flow_still_works_after_a_pause() {
    let topo = topology(1);
    let _b = start_backends(&topo);
    // The operator's choice in the gateway's namespace: entries go before set elements.
    topo.gateway()
        .sh("sysctl -qw net.netfilter.nf_conntrack_udp_timeout=2 net.netfilter.nf_conntrack_udp_timeout_stream=2")
        .unwrap();
    let gw = start(&topo, &[]);
    assert!(
        gw.logged("the kernel's UDP timeout is not above the gateway's UDP set timeout"),
        "{}",
        gw.logs()
    );
    let s = topo
        .client()
        .run(|| -> std::io::Result<std::net::UdpSocket> {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.connect(sa(DNS))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            Ok(s)
        })
        .unwrap();
    let ask = |q: &str| -> String {
        s.send(q.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        let n = s
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{q}: {e}\n{}", gw.logs()));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(ask("a"), "pod-1 a");
    assert_eq!(ask("b"), "pod-1 b");
    // The entry expires; the flow's element does not. The next datagram is tracked, finds
    // no entry, takes one of the kernel's own into the TUN device, and is handed over anew
    // (that entry replaced).
    std::thread::sleep(Duration::from_secs(4));
    assert!(our_entries(&topo).iter().all(|e| !e.starts_with("udp")));
    for q in ["c", "d", "e"] {
        assert_eq!(ask(q), format!("pod-1 {q}"), "after the entry expired");
    }
    assert!(our_entries(&topo).iter().any(|e| e.starts_with("udp")));
}
