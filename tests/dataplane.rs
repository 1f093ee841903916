//! The dataplane end to end: a client namespace, the gateway (`clusterway run` on a real
//! TUN device) in its own namespace, and pod namespaces running the demo backend. Needs
//! root; every namespace is the test's own and is removed on drop, also on failure.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Route both test Service CIDRs into the gateway.
const BOTH_CIDRS: [&str; 4] = [
    "--service-cidr",
    "10.96.0.0/16",
    "--service-cidr",
    "fd00:10:96::/112",
];

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Send `len` bytes to `addr` in one `send` with `UDP_SEGMENT` = `segment` and collect
/// the echoes: (pod name, payload bytes echoed) per reply, in arrival order.
fn udp_segmented_roundtrip(
    ns: &Netns,
    addr: SocketAddr,
    segment: u16,
    len: usize,
) -> Vec<(String, usize)> {
    ns.run(|| {
        let bind = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let s = std::net::UdpSocket::bind(bind).unwrap();
        s.connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let seg = libc::c_int::from(segment);
        // SAFETY: UDP_SEGMENT takes an int.
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                (&seg as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
        let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        assert_eq!(s.send(&payload).unwrap(), len);
        let mut buf = [0u8; 4096];
        let expected = len.div_ceil(usize::from(segment));
        (0..expected)
            .map(|k| {
                let n = s
                    .recv(&mut buf)
                    .unwrap_or_else(|e| panic!("echo {k} of {expected} from {addr}: {e}"));
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let (pod, echoed) = text.split_once(' ').unwrap_or((&text, ""));
                (pod.to_string(), echoed.len())
            })
            .collect()
    })
}

/// One Service with one EndpointSlice per family given, as the API server writes them.
/// `endpoints`: (address, ready, serving, terminating).
fn service_yaml(
    name: &str,
    cluster_ips: &[&str],
    proto: &str,
    port: u16,
    target: u16,
    endpoints: &[(&str, bool, bool, bool)],
    extra_spec: &str,
) -> String {
    let families: Vec<&str> = cluster_ips
        .iter()
        .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
        .collect();
    let mut y = format!(
        r#"- apiVersion: v1
  kind: Service
  metadata: {{name: {name}, namespace: t}}
  spec:
    clusterIP: "{first}"
    clusterIPs: [{ips}]
    ipFamilies: [{fams}]
    ports: [{{name: p, port: {port}, protocol: {proto}, targetPort: {target}}}]
{extra_spec}"#,
        first = cluster_ips[0],
        ips = cluster_ips
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", "),
        fams = families.join(", "),
    );
    for fam in ["IPv4", "IPv6"] {
        let eps: Vec<_> = endpoints
            .iter()
            .filter(|(a, ..)| a.contains(':') == (fam == "IPv6"))
            .collect();
        if eps.is_empty() {
            continue;
        }
        y.push_str(&format!(
            r#"- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: {name}-{fam}, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}
  addressType: {fam}
  ports: [{{name: p, port: {target}, protocol: {proto}}}]
  endpoints:
"#
        ));
        for (addr, ready, serving, terminating) in eps {
            y.push_str(&format!(
                "  - addresses: [\"{addr}\"]\n    conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}\n"
            ));
        }
    }
    y
}

fn list(items: &[String]) -> String {
    format!("apiVersion: v1\nkind: List\nitems:\n{}", items.concat())
}

fn pod(topo: &Topology, k: usize, v6: bool) -> String {
    topo.pod_ip(k, v6).to_string()
}

/// Both pods ready, TCP 80 → 8080 dual-stack, UDP 53 → 5353, and an empty service.
fn basic(topo: &Topology) -> String {
    let (p1, p2, p1v6, p2v6) = (
        pod(topo, 1, false),
        pod(topo, 2, false),
        pod(topo, 1, true),
        pod(topo, 2, true),
    );
    let ready = |a: &str| (a.to_string(), true, true, false);
    let eps: Vec<(String, bool, bool, bool)> =
        vec![ready(&p1), ready(&p2), ready(&p1v6), ready(&p2v6)];
    let eps: Vec<(&str, bool, bool, bool)> = eps
        .iter()
        .map(|(a, r, s, t)| (a.as_str(), *r, *s, *t))
        .collect();
    list(&[
        service_yaml(
            "web",
            &["10.96.0.10", "fd00:10:96::10"],
            "TCP",
            80,
            8080,
            &eps,
            "",
        ),
        service_yaml(
            "dns",
            &["10.96.0.53", "fd00:10:96::53"],
            "UDP",
            53,
            5353,
            &eps,
            "",
        ),
        service_yaml("empty", &["10.96.0.99"], "TCP", 80, 8080, &[], ""),
    ])
}

fn get(topo: &Topology, addr: &str) -> String {
    tcp_get(topo.client(), sa(addr)).unwrap_or_else(|e| panic!("GET {addr}: {e:#}"))
}

/// Connect from the client namespace; the error kind tells RST (refused) from timeout.
fn connect(topo: &Topology, addr: &str) -> std::io::Result<TcpStream> {
    let addr = sa(addr);
    topo.client()
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
}

#[test]
fn tcp_round_robin_udp_ping_and_ipv6() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    let gw = Gateway::start(&topo, &basic(&topo), &BOTH_CIDRS);
    assert!(gw.wait_routed("10.96.0.10".parse().unwrap(), Duration::from_secs(5)));

    // TCP, round-robin across the two pods, IPv4 and IPv6.
    for addr in ["10.96.0.10:80", "[fd00:10:96::10]:80"] {
        let answers: Vec<String> = (0..4)
            .map(|_| get(&topo, addr).trim().to_string())
            .collect();
        assert_eq!(
            answers.iter().filter(|a| *a == "pod-1").count(),
            2,
            "{addr}: {answers:?}"
        );
        assert_eq!(
            answers.iter().filter(|a| *a == "pod-2").count(),
            2,
            "{addr}: {answers:?}"
        );
    }
    // A larger body (several hundred KiB) arrives whole.
    let big = http_get(topo.client(), sa("10.96.0.10:80"), "/bytes/700000").unwrap();
    assert_eq!(big.body.len(), 700_000);

    // UDP echo through the gateway, both families; flows round-robin too.
    let mut seen = Vec::new();
    for addr in ["10.96.0.53:53", "10.96.0.53:53", "[fd00:10:96::53]:53"] {
        let reply = udp_roundtrip(topo.client(), sa(addr), b"hello").unwrap();
        assert!(reply.ends_with("hello"), "{reply}");
        seen.push(reply.split_whitespace().next().unwrap().to_string());
    }
    assert_ne!(
        seen[0], seen[1],
        "two UDP flows should go to two pods: {seen:?}"
    );

    // A datagram larger than the MTU: the client's kernel fragments it, the gateway
    // reassembles it (the forwarding path does not), the pod echoes it, and the reply
    // (built with DF clear) is fragmented again on the way to the client.
    let big: Vec<u8> = (0..4000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let reply = udp_roundtrip(topo.client(), sa("10.96.0.53:53"), &big).unwrap();
    assert!(
        reply.ends_with(std::str::from_utf8(&big).unwrap()),
        "reply of {} bytes",
        reply.len()
    );
    // Over IPv6 the gateway fragments the large reply itself (routers may not).
    let reply = udp_roundtrip(topo.client(), sa("[fd00:10:96::53]:53"), &big).unwrap();
    assert!(
        reply.ends_with(std::str::from_utf8(&big).unwrap()),
        "IPv6 reply of {} bytes",
        reply.len()
    );

    // One send with UDP_SEGMENT (GSO) is three datagrams: with offloads they reach the
    // gateway as one USO super-packet, which it splits as the kernel would; all three are
    // echoed, in order, from one flow.
    for addr in ["10.96.0.53:53", "[fd00:10:96::53]:53"] {
        let replies = udp_segmented_roundtrip(topo.client(), sa(addr), 500, 1200);
        let sizes: Vec<usize> = replies.iter().map(|(_, n)| *n).collect();
        assert_eq!(sizes, [500, 500, 200], "{addr}");
        assert!(
            replies.iter().all(|(pod, _)| *pod == replies[0].0),
            "{addr}: {replies:?}"
        );
    }

    // The gateway answers pings for ClusterIPs.
    ping(topo.client(), "10.96.0.10".parse().unwrap()).unwrap();
    ping(topo.client(), "fd00:10:96::10".parse().unwrap()).unwrap();
}

#[test]
fn unknown_port_gets_rst_and_no_endpoints_is_rejected_fast() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    let gw = Gateway::start(&topo, &basic(&topo), &[]);
    // Without --service-cidr: one host route per exposed ClusterIP.
    assert!(gw.wait_routed("10.96.0.99".parse().unwrap(), Duration::from_secs(5)));
    assert!(gw.routes_via_tun("fd00:10:96::10".parse().unwrap()));

    // Fresh links finish IPv6 duplicate address detection and neighbour discovery first;
    // the timing below is about the gateway, not about the topology warming up.
    assert!(wait_for(
        || ping(topo.client(), topo.gateway_ip(true)).is_ok(),
        Duration::from_secs(5)
    ));
    // Each reject arrives at once (a RST or an ICMP error), not after a timeout.
    let timed = |addr: &str| {
        let t = Instant::now();
        let e = connect(&topo, addr).unwrap_err();
        (e, t.elapsed())
    };
    for addr in ["10.96.0.10:81", "[fd00:10:96::10]:81"] {
        let (e, took) = timed(addr);
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{addr}: RST expected: {e}"
        );
        assert!(
            took < Duration::from_millis(500),
            "{addr}: RST took {took:?}"
        );
    }
    // No usable endpoint: ICMP port unreachable, which the client's kernel reports at once.
    let (e, took) = timed("10.96.0.99:80");
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "reject expected: {e}"
    );
    assert!(took < Duration::from_millis(500), "reject took {took:?}");
    // UDP to an unknown port: port unreachable, seen as a refused recv.
    let err = udp_roundtrip(topo.client(), sa("10.96.0.53:54"), b"x").unwrap_err();
    assert!(format!("{err:#}").contains("refused"), "{err:#}");
    // An address that is no ClusterIP is not routed to the gateway at all.
    assert!(!gw.routes_via_tun("10.96.0.77".parse().unwrap()));
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    let (p1, p2) = (pod(&topo, 1, false), pod(&topo, 2, false));
    // pod-1 ready, pod-2 terminating (still serving): only pod-1.
    let mixed = list(&[service_yaml(
        "web",
        &["10.96.0.10"],
        "TCP",
        80,
        8080,
        &[(&p1, true, true, false), (&p2, false, true, true)],
        "",
    )]);
    let gw = Gateway::start(&topo, &mixed, &[]);
    assert!(gw.wait_routed("10.96.0.10".parse().unwrap(), Duration::from_secs(5)));
    for _ in 0..4 {
        assert_eq!(get(&topo, "10.96.0.10:80").trim(), "pod-1");
    }
    // Both terminating and serving: traffic falls back to them (as kube-proxy does).
    let fallback = list(&[service_yaml(
        "web",
        &["10.96.0.10"],
        "TCP",
        80,
        8080,
        &[(&p1, false, true, true), (&p2, false, true, true)],
        "",
    )]);
    gw.update_snapshot(&fallback);
    assert!(
        wait_for(
            || tcp_get(topo.client(), sa("10.96.0.10:80")).is_ok_and(|a| a.trim() == "pod-2"),
            Duration::from_secs(3)
        ),
        "terminating endpoints not used: {}",
        gw.logs()
    );
    // Neither ready nor serving: rejected.
    let none = list(&[service_yaml(
        "web",
        &["10.96.0.10"],
        "TCP",
        80,
        8080,
        &[(&p1, false, false, true)],
        "",
    )]);
    gw.update_snapshot(&none);
    assert!(wait_for(
        || connect(&topo, "10.96.0.10:80").is_err(),
        Duration::from_secs(3)
    ));
}

#[test]
fn dial_retries_the_next_endpoint_when_one_refuses() {
    let topo = topology(2);
    let mut b = start_backends(&topo);
    b.stop_pod(1);
    let gw = Gateway::start(&topo, &basic(&topo), &[]);
    assert!(gw.wait_routed("10.96.0.10".parse().unwrap(), Duration::from_secs(5)));
    if offload_under_test() {
        // Offload hands the SYN to one endpoint and has no dial to retry (README, "What
        // differs between the dataplanes"): the flows sent to pod-1 are refused by pod-1's
        // kernel at once, through the entry; the others reach pod-2.
        let answers: Vec<Option<String>> = (0..6)
            .map(|_| tcp_get(topo.client(), sa("10.96.0.10:80")).ok())
            .collect();
        assert!(
            answers.iter().flatten().all(|a| a.trim() == "pod-2")
                && answers.iter().flatten().count() >= 3,
            "{answers:?}"
        );
    } else {
        // Every request succeeds: the dial to pod-1 is refused and pod-2 is tried next.
        for _ in 0..6 {
            assert_eq!(get(&topo, "10.96.0.10:80").trim(), "pod-2");
        }
    }
    // With no endpoint answering, the client sees a reset, not a hang.
    b.stop_pod(2);
    let t = Instant::now();
    let err = tcp_get(topo.client(), sa("10.96.0.10:80")).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}: {err:#}",
        t.elapsed()
    );
    drop(gw);
}

#[test]
fn file_reload_goes_live_and_a_bad_file_keeps_the_last_table() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    let gw = Gateway::start(&topo, &basic(&topo), &["--service-cidr", "10.96.0.0/16"]);
    assert!(gw.wait_routed("10.96.0.10".parse().unwrap(), Duration::from_secs(5)));
    // Only pod-2 left: live within a second.
    let p2 = pod(&topo, 2, false);
    let only2 = list(&[service_yaml(
        "web",
        &["10.96.0.10"],
        "TCP",
        80,
        8080,
        &[(&p2, true, true, false)],
        "",
    )]);
    let t = Instant::now();
    gw.update_snapshot(&only2);
    assert!(
        wait_for(
            || (0..3)
                .all(|_| tcp_get(topo.client(), sa("10.96.0.10:80"))
                    .is_ok_and(|a| a.trim() == "pod-2")),
            Duration::from_secs(2)
        ),
        "reload not applied: {}",
        gw.logs()
    );
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "reload took {:?}",
        t.elapsed()
    );
    // A broken file: logged, the last good table keeps serving.
    gw.update_snapshot("apiVersion: v1\nkind: List\nitems:\n- kind: Service\n  apiVersion: v1\n  metadata: {name: x, namespace: t}\n  spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n");
    assert!(
        wait_for(|| gw.logged("10.96.0.300"), Duration::from_secs(3)),
        "bad file not reported: {}",
        gw.logs()
    );
    for _ in 0..3 {
        assert_eq!(get(&topo, "10.96.0.10:80").trim(), "pod-2");
    }
}

#[test]
fn full_tables_refuse_new_flows_and_keep_existing_ones() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    // One queue: the bounds are the process's, but a full UDP table makes room only from
    // the flows of the worker that reads the new one (engine.rs), and with several queues
    // the kernel may hash the two flows below to two workers.
    let gw = Gateway::start(
        &topo,
        &basic(&topo),
        &[
            "--max-tcp-flows",
            "2",
            "--max-udp-flows",
            "1",
            "--queues",
            "1",
        ],
    );
    assert!(gw.wait_routed("10.96.0.10".parse().unwrap(), Duration::from_secs(5)));
    assert!(
        gw.logged("max_tcp_flows=2"),
        "limits not shown at start: {}",
        gw.logs()
    );

    // Two kept-alive connections (answered: the proxy took them) fill the table; a third
    // is reset. Offload: TCP flows live in the kernel's conntrack table, whose size bounds
    // them (tests/offload.rs); --max-tcp-flows bounds the proxy's descriptors, so there all
    // three connections are taken. UDP below is bounded either way.
    let tcp_bounded = !offload_under_test();
    let mut held: Vec<TcpStream> = (0..if tcp_bounded { 2 } else { 3 })
        .map(|_| connect(&topo, "10.96.0.10:80").unwrap())
        .collect();
    let exchange = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    };
    held.iter_mut().for_each(exchange);
    if tcp_bounded {
        let e = connect(&topo, "10.96.0.10:80").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    }
    // The existing connections still work.
    held.iter_mut().for_each(exchange);
    // Closing one makes room.
    held.pop();
    assert!(wait_for(
        || connect(&topo, "10.96.0.10:80").is_ok(),
        Duration::from_secs(3)
    ));

    // UDP: one flow fits; a second client flow takes the place of the one whose client was
    // quiet longest (the first), which is closed, and counted. Offload: UDP flows live in
    // the kernel's conntrack table too (--max-udp-flows bounds the proxy's sockets), so
    // both are answered and none is evicted.
    let (a, b) = topo
        .client()
        .run(|| -> std::io::Result<(String, std::io::Result<usize>)> {
            let s1 = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s1.connect("10.96.0.53:53")?;
            s1.set_read_timeout(Some(Duration::from_secs(2)))?;
            s1.send(b"one")?;
            let mut buf = [0u8; 256];
            let n = s1.recv(&mut buf)?;
            let first = String::from_utf8_lossy(&buf[..n]).into_owned();
            let s2 = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s2.connect("10.96.0.53:53")?;
            s2.set_read_timeout(Some(Duration::from_secs(2)))?;
            s2.send(b"two")?;
            let r2 = s2.recv(&mut buf);
            Ok((first, r2))
        })
        .unwrap();
    assert!(a.ends_with("one"), "{a}");
    assert!(b.is_ok(), "the second flow was refused: {b:?}");
    if !tcp_bounded {
        return;
    }
    assert!(
        wait_for(
            || metric_value(
                &gateway_metrics(&topo),
                "clusterway_flow_evictions_total{table=\"udp\"}"
            ) >= 1.0,
            Duration::from_secs(3)
        ),
        "{}",
        gateway_metrics(&topo)
    );
}

#[test]
fn sigterm_removes_device_and_routes() {
    let topo = topology(1);
    let mut gw = Gateway::start(&topo, &basic(&topo), &["--tun-name", "cwtest0"]);
    assert!(gw.wait_routed("10.96.0.10".parse().unwrap(), Duration::from_secs(5)));
    assert!(gw.tun_exists());
    let status = gw.stop_sigterm();
    assert!(status.success(), "exit status {status}: {}", gw.logs());
    assert!(!gw.tun_exists(), "device left behind");
    let routes = topo
        .gateway()
        .sh("ip -4 route show proto 75; ip -6 route show proto 75")
        .unwrap();
    assert!(routes.trim().is_empty(), "routes left behind: {routes}");
    assert!(!gw.routes_via_tun(IpAddr::from([10, 96, 0, 10])));
}

#[test]
fn a_crashed_run_is_cleaned_up_by_the_next_start() {
    let topo = topology(1);
    let mut gw = Gateway::start(&topo, &basic(&topo), &[]);
    assert!(gw.wait_routed("10.96.0.10".parse().unwrap(), Duration::from_secs(5)));
    // A stale route of ours, as a run killed mid-reconcile could leave on another link.
    topo.gateway()
        .sh("ip route add 10.123.0.0/16 dev lo proto 75")
        .unwrap();
    let pid = gw.pid().unwrap() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_for(|| gw.has_exited(), Duration::from_secs(3)));
    let gw2 = Gateway::start(&topo, &basic(&topo), &[]);
    assert!(gw2.wait_routed("10.96.0.10".parse().unwrap(), Duration::from_secs(5)));
    let routes = topo.gateway().sh("ip route show proto 75").unwrap();
    assert!(!routes.contains("10.123.0.0"), "stale route kept: {routes}");
    assert!(
        tcp_get(topo.client(), sa("10.96.0.10:80")).is_err(),
        "no backends were started"
    );
}

#[test]
fn bad_input_at_start_is_a_clear_error_before_the_host_is_touched() {
    let topo = topology(1);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 70000, protocol: TCP}]\n",
    )
    .unwrap();
    let out = topo
        .gateway()
        .exec(BIN, ["run", "--from-file", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.yaml") && err.contains("shop/web") && err.contains("port"),
        "{err}"
    );
    let links = topo.gateway().sh("ip -o link show").unwrap();
    assert!(
        !links.contains("cw0"),
        "device created despite a bad file: {links}"
    );

    for (flags, needle) in [
        (vec!["--service-cidr", "10.96.0.1/12"], "host bits"),
        (vec!["--inner-v4", "198.18.0.0/30"], "too small"),
        (vec!["--tun-name", "this-name-is-too-long"], "1 to 15"),
    ] {
        let mut args = vec!["run", "--from-file", bad.to_str().unwrap()];
        args.extend(flags);
        let out = topo.gateway().exec(BIN, &args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_host_without_ipv6_serves_ipv4_only() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    topo.gateway()
        .sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
        .unwrap();
    let gw = Gateway::start(&topo, &basic(&topo), &BOTH_CIDRS);
    assert!(
        gw.wait_routed("10.96.0.10".parse().unwrap(), Duration::from_secs(5)),
        "{}",
        gw.logs()
    );
    assert!(gw.logged("serving IPv4 only"), "{}", gw.logs());
    let a = get(&topo, "10.96.0.10:80");
    let b = get(&topo, "10.96.0.10:80");
    assert_ne!(a, b, "round-robin over IPv4");
    assert!(udp_roundtrip(topo.client(), sa("10.96.0.53:53"), b"v4")
        .unwrap()
        .ends_with("v4"));
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_pod() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    let (p1, p2) = (pod(&topo, 1, false), pod(&topo, 2, false));
    let eps = [
        (p1.as_str(), true, true, false),
        (p2.as_str(), true, true, false),
    ];
    let sticky = "    sessionAffinity: ClientIP\n    sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n";
    let snap = list(&[
        service_yaml("sticky", &["10.96.0.20"], "TCP", 80, 8080, &eps, sticky),
        service_yaml("plain", &["10.96.0.21"], "TCP", 80, 8080, &eps, ""),
    ]);
    let gw = Gateway::start(&topo, &snap, &[]);
    assert!(gw.wait_routed("10.96.0.20".parse().unwrap(), Duration::from_secs(5)));
    let sticky: Vec<String> = (0..6).map(|_| get(&topo, "10.96.0.20:80")).collect();
    assert!(
        sticky.iter().all(|a| *a == sticky[0]),
        "affinity broken: {sticky:?}"
    );
    let plain: Vec<String> = (0..6).map(|_| get(&topo, "10.96.0.21:80")).collect();
    assert!(
        plain.iter().any(|a| *a != plain[0]),
        "no round-robin without affinity: {plain:?}"
    );
}

#[test]
fn a_deleted_services_cluster_ip_is_refused_at_once_for_ping_tcp_and_udp() {
    let topo = topology(2);
    let _b = start_backends(&topo);
    let gw = Gateway::start(&topo, &basic(&topo), &BOTH_CIDRS);
    assert!(gw.wait_routed("10.96.0.10".parse().unwrap(), Duration::from_secs(5)));
    assert!(wait_for(
        || ping(topo.client(), topo.gateway_ip(true)).is_ok(),
        Duration::from_secs(5)
    ));
    get(&topo, "10.96.0.10:80");
    // The Service "web" is deleted (only dns and empty remain); its ClusterIPs stay inside
    // the routed ranges.
    let (p1, p1v6) = (pod(&topo, 1, false), pod(&topo, 1, true));
    let eps = [
        (p1.as_str(), true, true, false),
        (p1v6.as_str(), true, true, false),
    ];
    gw.update_snapshot(&list(&[
        service_yaml(
            "dns",
            &["10.96.0.53", "fd00:10:96::53"],
            "UDP",
            53,
            5353,
            &eps,
            "",
        ),
        service_yaml("empty", &["10.96.0.99"], "TCP", 80, 8080, &[], ""),
    ]));
    let refused = |e: &std::io::Error| e.kind() == std::io::ErrorKind::HostUnreachable;
    assert!(
        wait_for(
            || connect(&topo, "10.96.0.10:80").is_err_and(|e| refused(&e)),
            Duration::from_secs(5)
        ),
        "the deleted Service is not refused: {}",
        gw.logs()
    );
    for addr in [
        "10.96.0.10:80",
        "[fd00:10:96::10]:80",
        "10.96.0.77:80",
        "[fd00:10:96::77]:443",
    ] {
        // TCP: the connect fails at once ("No route to host"), not after its time-out.
        let t = Instant::now();
        let e = connect(&topo, addr).unwrap_err();
        assert!(
            e.kind() == std::io::ErrorKind::HostUnreachable
                || (addr.starts_with('[') && e.kind() == std::io::ErrorKind::PermissionDenied),
            "{addr}: {e}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{addr}: took {:?}",
            t.elapsed()
        );
        // UDP: the error reaches a connected socket at once.
        let t = Instant::now();
        let err = udp_roundtrip(topo.client(), sa(addr), b"x").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("No route to host") || text.contains("Permission denied"),
            "{addr}: {text}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{addr}: took {:?}",
            t.elapsed()
        );
        // ping: answered by the gateway with the same refusal.
        let ip = sa(addr).ip();
        let out = topo
            .client()
            .exec("ping", ["-n", "-c1", "-W2", &ip.to_string()])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(!out.status.success(), "{addr}: {text}");
        assert!(
            text.contains("filtered") || text.contains("prohibited"),
            "{addr}: {text}"
        );
    }
    // Counted by reason.
    let metrics = gateway_metrics(&topo);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("clusterway_refusals_total{reason=\"no_service\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    // The other Services go on.
    assert!(udp_roundtrip(topo.client(), sa("10.96.0.53:53"), b"hi")
        .unwrap()
        .ends_with("hi"));
}
