//! Names end to end, in network namespaces: the gateway with `--dns-listen`, Debian's `dig`
//! over UDP and TCP for each record type, Debian's `unbound` in front as a company resolver
//! would be (a stub zone for cluster.local), `curl` by name through it, a StatefulSet-style
//! pod reached by name, and refusals for what the policy does not expose.
//!
//! Needs root, `dig` (bind9-dnsutils), `unbound`, `curl` and `unshare` (util-linux). Every
//! daemon runs inside the test's namespaces with its files under a temporary directory and
//! is killed at the end; nothing of the host (no /etc file, no route) is changed: curl
//! reads a resolv.conf from the temporary directory, bind-mounted over /etc/resolv.conf in
//! a mount namespace of its own (`unshare -m`).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

const GW: &str = "192.168.77.1";
const ZONE: &str = "svc.cluster.local";

/// The Services of the test, for a topology with 3 pods: `web` (ClusterIP, dual-stack,
/// pods 1 and 2), `db` (headless, a StatefulSet's db-0 and db-1 on pods 1 and 2),
/// `legacy` (ExternalName), `hidden` (opted out), `inner` (allows only 10.99.0.0/16,
/// not the client), `big` (headless, 60 endpoints that
/// exist only as names, for truncation). Pod 3 backs no headless Service. `extra` adds
/// more items.
fn snapshot(topo: &Topology, extra: &str) -> String {
    let p = |k: usize, v6: bool| topo.pod_ip(k, v6).to_string();
    let mut big = String::new();
    for i in 0..60 {
        big.push_str(&format!("    - addresses: [10.245.0.{}]\n", i + 1));
    }
    format!(
        r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {{name: web, namespace: t}}
  spec:
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10, "fd00:10:96::10"]
    ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: web-v4, namespace: t, labels: {{kubernetes.io/service-name: web}}}}
  addressType: IPv4
  ports: [{{name: http, port: 8080, protocol: TCP}}]
  endpoints:
  - addresses: ["{p1}"]
  - addresses: ["{p2}"]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: web-v6, namespace: t, labels: {{kubernetes.io/service-name: web}}}}
  addressType: IPv6
  ports: [{{name: http, port: 8080, protocol: TCP}}]
  endpoints:
  - addresses: ["{p1v6}"]
- apiVersion: v1
  kind: Service
  metadata: {{name: db, namespace: t}}
  spec:
    clusterIP: None
    ports: [{{name: http, port: 8080, protocol: TCP}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: db-v4, namespace: t, labels: {{kubernetes.io/service-name: db}}}}
  addressType: IPv4
  ports: [{{name: http, port: 8080, protocol: TCP}}]
  endpoints:
  - addresses: ["{p1}"]
    hostname: db-0
    targetRef: {{kind: Pod, name: db-0, namespace: t}}
  - addresses: ["{p2}"]
    hostname: db-1
    targetRef: {{kind: Pod, name: db-1, namespace: t}}
- apiVersion: v1
  kind: Service
  metadata: {{name: legacy, namespace: t}}
  spec: {{type: ExternalName, externalName: legacy.example.com}}
- apiVersion: v1
  kind: Service
  metadata: {{name: hidden, namespace: t, annotations: {{clusterway.io/expose: "false"}}}}
  spec:
    clusterIP: 10.96.0.11
    ports: [{{name: http, port: 80, protocol: TCP}}]
- apiVersion: v1
  kind: Service
  metadata: {{name: inner, namespace: t, annotations: {{clusterway.io/allow-sources: "10.99.0.0/16"}}}}
  spec:
    clusterIP: 10.96.0.13
    ports: [{{name: http, port: 80, protocol: TCP}}]
- apiVersion: v1
  kind: Service
  metadata: {{name: big, namespace: t}}
  spec: {{clusterIP: None}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: big-v4, namespace: t, labels: {{kubernetes.io/service-name: big}}}}
  addressType: IPv4
  endpoints:
{big}{extra}"#,
        p1 = p(1, false),
        p2 = p(2, false),
        p1v6 = p(1, true),
    )
}

/// `dig @SERVER ARGS` from the client namespace; its stdout.
fn dig(topo: &Topology, server: &str, args: &str) -> String {
    topo.client()
        .sh(&format!("dig @{server} +time=2 +tries=2 {args}"))
        .unwrap_or_else(|e| panic!("dig {args}: {e:#}"))
}

/// `+short` answers, sorted.
fn short(topo: &Topology, server: &str, args: &str) -> Vec<String> {
    let mut v: Vec<String> = dig(topo, server, &format!("+short {args}"))
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Whether `+short ARGS` answers exactly `want` (false also when dig gets no reply yet:
/// for polling a server that is still starting).
fn answers(topo: &Topology, server: &str, args: &str, want: &[&str]) -> bool {
    let cmd = format!("dig @{server} +time=1 +tries=1 +short {args}");
    topo.client().sh(&cmd).is_ok_and(|out| {
        let mut got: Vec<&str> = out.lines().collect();
        got.sort();
        got == want
    })
}

/// The `status:` of a reply (NOERROR, NXDOMAIN, REFUSED, ...).
fn status(topo: &Topology, server: &str, args: &str) -> String {
    let out = dig(topo, server, &format!("+noall +comments {args}"));
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in {out}"))
        .to_string()
}

/// A daemon of the test, killed when dropped.
struct Daemon(Child, &'static str);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tools_present() -> bool {
    for tool in ["dig", "unbound", "curl", "unshare"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} is missing: apt-get install bind9-dnsutils unbound curl util-linux (scripts/test.sh does)"
        );
    }
    true
}

#[test]
fn dig_every_record_type_over_udp_and_tcp_and_names_follow_the_file() {
    assert!(tools_present());
    let topo = topology(3);
    let gw = Gateway::start(
        &topo,
        &snapshot(&topo, ""),
        &["--dns-listen", &format!("{GW}:53"), "--dns-ttl", "7s"],
    );
    assert!(
        wait_for(
            || answers(&topo, GW, &format!("web.t.{ZONE} A"), &["10.96.0.10"]),
            Duration::from_secs(15)
        ),
        "the DNS server never answered; log:\n{}",
        gw.logs()
    );
    let (p1, p2) = (topo.pod_ip(1, false), topo.pod_ip(2, false));
    for transport in ["+notcp", "+tcp"] {
        let q = |args: &str| short(&topo, GW, &format!("{transport} {args}"));
        assert_eq!(q(&format!("web.t.{ZONE} A")), ["10.96.0.10"]);
        assert_eq!(q(&format!("web.t.{ZONE} AAAA")), ["fd00:10:96::10"]);
        assert_eq!(
            q(&format!("_http._tcp.web.t.{ZONE} SRV")),
            [format!("0 100 80 web.t.{ZONE}.")]
        );
        assert_eq!(
            q(&format!("legacy.t.{ZONE} CNAME")),
            ["legacy.example.com."]
        );
        let mut pods = vec![p1.to_string(), p2.to_string()];
        pods.sort();
        assert_eq!(q(&format!("db.t.{ZONE} A")), pods);
        assert_eq!(q(&format!("db-0.db.t.{ZONE} A")), [p1.to_string()]);
        assert_eq!(q(&format!("db-1.db.t.{ZONE} A")), [p2.to_string()]);
        let mut srv = vec![
            format!("0 100 8080 db-0.db.t.{ZONE}."),
            format!("0 100 8080 db-1.db.t.{ZONE}."),
        ];
        srv.sort();
        assert_eq!(q(&format!("_http._tcp.db.t.{ZONE} SRV")), srv);
        assert_eq!(q("-x 10.96.0.10"), [format!("web.t.{ZONE}.")]);
        assert_eq!(q(&format!("-x {p1}")), [format!("db-0.db.t.{ZONE}.")]);
        let soa = q("cluster.local SOA");
        assert_eq!(soa.len(), 1);
        assert!(
            soa[0].starts_with("ns.dns.cluster.local. hostmaster.cluster.local. "),
            "{soa:?}"
        );
        assert!(soa[0].ends_with(" 7"), "negative TTL is --dns-ttl: {soa:?}");
        assert_eq!(q("cluster.local NS"), ["ns.dns.cluster.local."]);
        assert_eq!(q("ns.dns.cluster.local A"), [GW]);

        let st = |args: &str| status(&topo, GW, &format!("{transport} {args}"));
        assert_eq!(st(&format!("hidden.t.{ZONE} A")), "NXDOMAIN");
        assert_eq!(st(&format!("nosuch.t.{ZONE} A")), "NXDOMAIN");
        // A Service whose allowed sources leave this client out does not exist for it.
        assert_eq!(st(&format!("inner.t.{ZONE} A")), "NXDOMAIN");
        assert_eq!(st(&format!("web.t.{ZONE} MX")), "NOERROR");
        assert!(q(&format!("web.t.{ZONE} MX")).is_empty(), "NODATA");
        // An empty non-terminal exists: NODATA, not NXDOMAIN (RFC 2308, RFC 8020).
        assert_eq!(st(&format!("t.{ZONE} A")), "NOERROR");
        // RFC 2308: NXDOMAIN and NODATA both carry the zone's SOA in the authority
        // section, its TTL the SOA minimum (--dns-ttl).
        for name in [
            format!("nosuch.t.{ZONE} A"),
            format!("web.t.{ZONE} MX"),
            format!("t.{ZONE} A"),
        ] {
            let auth = dig(&topo, GW, &format!("{transport} +noall +authority {name}"));
            let fields: Vec<&str> = auth.split_whitespace().collect();
            assert!(
                fields.len() >= 5
                    && fields[0] == "cluster.local."
                    && fields[1] == "7"
                    && fields[3] == "SOA"
                    && fields[4] == "ns.dns.cluster.local.",
                "{name}: {auth}"
            );
        }
        assert_eq!(st("example.com A"), "REFUSED");
    }
    // The TTL is --dns-ttl.
    let ttl = dig(&topo, GW, &format!("+noall +answer web.t.{ZONE} A"));
    assert!(ttl.split_whitespace().nth(1) == Some("7"), "{ttl}");

    // 60 addresses do not fit in 512 bytes: TC over UDP, all of them over TCP (dig retries
    // over TCP by itself without +ignore).
    let cut = dig(&topo, GW, &format!("+noedns +ignore +notcp big.t.{ZONE} A"));
    assert!(cut.contains("flags: qr aa tc"), "{cut}");
    assert_eq!(
        short(&topo, GW, &format!("+noedns big.t.{ZONE} A")).len(),
        60
    );
    let retried = dig(&topo, GW, &format!("+noedns big.t.{ZONE} A"));
    assert!(
        retried.contains("Truncated, retrying in TCP mode") && retried.contains("ANSWER: 60"),
        "{retried}"
    );

    // A Service added to the file appears in DNS (the file source reloads on change).
    let added = r#"- apiVersion: v1
  kind: Service
  metadata: {name: fresh, namespace: t}
  spec:
    clusterIP: 10.96.0.12
    ports: [{name: http, port: 80, protocol: TCP}]
"#;
    let server: SocketAddr = format!("{GW}:53").parse().unwrap();
    let fresh = format!("fresh.t.{ZONE}.");
    assert_eq!(
        resolve_a(&topo, server, &fresh),
        Some(vec![]),
        "not there yet"
    );
    let start = Instant::now();
    gw.update_snapshot(&snapshot(&topo, added));
    assert!(
        wait_for(
            || resolve_a(&topo, server, &fresh).is_some_and(|a| a == ["10.96.0.12"]),
            Duration::from_secs(10)
        ),
        "the new Service never resolved; log:\n{}",
        gw.logs()
    );
    let took = start.elapsed();
    eprintln!("a Service added to the file resolved after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "a Service added to the file must resolve within a second, took {took:?}"
    );

    // Failed queries are counted by response code in /metrics.
    let metrics = gw_metrics(&topo);
    let nx = metric(
        &metrics,
        "clusterway_dns_responses_total{result=\"nxdomain\"}",
    );
    let refused = metric(
        &metrics,
        "clusterway_dns_responses_total{result=\"refused\"}",
    );
    assert!(
        nx >= 4.0 && refused >= 2.0,
        "nxdomain {nx}, refused {refused}"
    );
    assert!(metric(&metrics, "clusterway_dns_truncated_total") >= 1.0);
    // Failed queries are events on the status page's feed.
    let events = http_get(
        topo.gateway(),
        "127.0.0.1:9310".parse().unwrap(),
        "/api/v1/events?limit=500",
    )
    .expect("GET /api/v1/events")
    .text();
    assert!(
        events.contains("dns_failed") && events.contains(&format!("NXDOMAIN hidden.t.{ZONE}.")),
        "{events}"
    );
}

/// The A records of `name` asked once over UDP from the client namespace, in this
/// process (no dig started, a 300 ms wait): `Some(vec![])` for a negative answer, `None`
/// without a reply.
fn resolve_a(topo: &Topology, server: SocketAddr, name: &str) -> Option<Vec<String>> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::new();
    m.set_id(7);
    m.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    let query = m.to_vec().ok()?;
    topo.client().run(move || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .ok()?;
        sock.send_to(&query, server).ok()?;
        let mut buf = [0u8; 1232];
        let n = sock.recv(&mut buf).ok()?;
        let reply = Message::from_vec(&buf[..n]).ok()?;
        Some(
            reply
                .answers()
                .iter()
                .map(|r| r.data().to_string())
                .collect(),
        )
    })
}

fn gw_metrics(topo: &Topology) -> String {
    let r = http_get(
        topo.gateway(),
        "127.0.0.1:9310".parse().unwrap(),
        "/metrics",
    )
    .expect("GET /metrics");
    r.text()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .map(|v| v.trim().parse().unwrap_or(-1.0))
        })
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// unbound in the client namespace on 127.0.0.1:53, forwarding cluster.local to the
/// gateway (a stub zone), everything under `dir`.
fn start_unbound(topo: &Topology, dir: &std::path::Path) -> Daemon {
    let conf = dir.join("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            r#"server:
  interface: 127.0.0.1
  port: 53
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{d}"
  pidfile: "{d}/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 0
  num-threads: 1
  module-config: "iterator"
  qname-minimisation: no
  access-control: 127.0.0.0/8 allow
  domain-insecure: "cluster.local"
  local-zone: "10.in-addr.arpa." nodefault
remote-control:
  control-enable: no
stub-zone:
  name: "cluster.local"
  stub-addr: {GW}
stub-zone:
  name: "10.in-addr.arpa"
  stub-addr: {GW}
"#,
            d = dir.display()
        ),
    )
    .expect("writing unbound.conf");
    let log = std::fs::File::create(dir.join("unbound.log")).expect("unbound log");
    let child = topo
        .client()
        .exec("unbound", ["-d", "-c", &conf.display().to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("starting unbound");
    Daemon(child, "unbound")
}

/// `curl URL` in the client namespace with `resolv.conf` from `dir` (nameserver
/// 127.0.0.1) bind-mounted over /etc/resolv.conf in a private mount namespace.
fn curl_by_name(topo: &Topology, dir: &std::path::Path, url: &str) -> Result<String, String> {
    let resolv = dir.join("resolv.conf");
    let cmd = format!(
        "unshare -m sh -c 'mount --bind {r} /etc/resolv.conf && exec curl -sS --max-time 5 {url}'",
        r = resolv.display()
    );
    let out = topo
        .client()
        .exec("sh", ["-c", &cmd])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[test]
fn a_resolver_in_front_curl_by_name_and_statefulset_pods_reached() {
    assert!(tools_present());
    let topo = topology(3);
    let _backends = start_backends(&topo);
    let gw = Gateway::start(
        &topo,
        &snapshot(&topo, ""),
        &[
            "--dns-listen",
            &format!("{GW}:53"),
            "--pod-cidr",
            "10.244.0.0/16",
        ],
    );
    // --pod-cidr: the gateway routes the pod range into its device with its own route
    // protocol (75), the routes a routing daemon announces, as it does the Service CIDR.
    assert!(
        wait_for(
            || {
                topo.gateway()
                    .sh("ip -4 route show proto 75 10.244.0.0/16")
                    .is_ok_and(|o| o.contains("dev cw0"))
            },
            Duration::from_secs(15)
        ),
        "no route for --pod-cidr; routes:\n{}\ngateway log:\n{}",
        topo.gateway()
            .sh("ip route show proto 75")
            .unwrap_or_default(),
        gw.logs()
    );
    // Traffic from the client to pod addresses enters the TUN device, as it would from a
    // router that sends the pod CIDR to the gateway; the gateway itself still reaches the
    // pods over its own links (their /24s are more specific than the /16 it routes).
    topo.gateway()
        .sh("ip route add 10.244.0.0/16 dev cw0 table 200 && ip rule add iif veth-cl to 10.244.0.0/16 lookup 200")
        .expect("policy routing for the pod CIDR");
    let dir = tempfile::Builder::new()
        .prefix("clusterway-dns-")
        .tempdir()
        .expect("temporary directory");
    std::fs::write(dir.path().join("resolv.conf"), "nameserver 127.0.0.1\n")
        .expect("writing resolv.conf");
    let unbound = start_unbound(&topo, dir.path());
    let through = "127.0.0.1";
    assert!(
        wait_for(
            || answers(&topo, through, &format!("web.t.{ZONE} A"), &["10.96.0.10"]),
            Duration::from_secs(15)
        ),
        "unbound never answered web through the gateway; unbound log:\n{}\ngateway log:\n{}",
        std::fs::read_to_string(dir.path().join("unbound.log")).unwrap_or_default(),
        gw.logs()
    );
    assert_eq!(unbound.1, "unbound");
    // Through the resolver: the headless names, PTR, and the policy's NXDOMAIN.
    assert_eq!(
        short(&topo, through, &format!("db-0.db.t.{ZONE} A")),
        [topo.pod_ip(1, false).to_string()]
    );
    assert_eq!(
        short(&topo, through, "-x 10.96.0.10"),
        [format!("web.t.{ZONE}.")]
    );
    assert_eq!(
        status(&topo, through, &format!("hidden.t.{ZONE} A")),
        "NXDOMAIN"
    );

    // curl by name: the Service, through its ClusterIP.
    let body = curl_by_name(&topo, dir.path(), &format!("http://web.t.{ZONE}/"))
        .unwrap_or_else(|e| panic!("curl web by name: {e}\ngateway log:\n{}", gw.logs()));
    assert!(body == "pod-1\n" || body == "pod-2\n", "{body:?}");
    // A StatefulSet-style pod by its own name, straight to that pod.
    for (name, pod) in [("db-0", "pod-1\n"), ("db-1", "pod-2\n")] {
        let body = curl_by_name(
            &topo,
            dir.path(),
            &format!("http://{name}.db.t.{ZONE}:8080/"),
        )
        .unwrap_or_else(|e| panic!("curl {name} by name: {e}\ngateway log:\n{}", gw.logs()));
        assert_eq!(body, pod, "{name}");
    }
    // Masqueraded like Service traffic: the pod sees the gateway's address on its link,
    // not the client's, so its answer comes back through the gateway.
    let seen = curl_by_name(
        &topo,
        dir.path(),
        &format!("http://db-0.db.t.{ZONE}:8080/ip"),
    )
    .unwrap_or_else(|e| panic!("curl db-0/ip: {e}\ngateway log:\n{}", gw.logs()));
    assert_eq!(seen.trim(), "10.244.1.1", "the source db-0 saw");
    // A non-exposed Service's name does not resolve.
    let err = curl_by_name(&topo, dir.path(), &format!("http://hidden.t.{ZONE}/"))
        .expect_err("hidden must not resolve");
    assert!(err.contains("resolve"), "{err}");
    // An unrelated pod (pod 3 backs no headless Service) is refused, and so is another
    // port of a headless pod.
    for target in [
        SocketAddr::new(topo.pod_ip(3, false), 8080),
        SocketAddr::new(topo.pod_ip(1, false), 9999),
    ] {
        let r = topo
            .client()
            .run(move || TcpStream::connect_timeout(&target, Duration::from_secs(3)));
        let e = r.expect_err("must be refused");
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{target}: {e}"
        );
    }
    // The gateway's own TUN device stays; the daemons are stopped by their guards.
    drop(unbound);
}

#[test]
fn out_of_zone_queries_are_forwarded_only_when_asked() {
    assert!(tools_present());
    let topo = topology(1);
    let dir = tempfile::Builder::new()
        .prefix("clusterway-dns-fwd-")
        .tempdir()
        .expect("temporary directory");
    // The upstream resolver, in the gateway's namespace on its loopback: a static root zone,
    // so it answers from its own data and never recurses anywhere.
    let conf = dir.path().join("upstream.conf");
    std::fs::write(
        &conf,
        format!(
            r#"server:
  interface: 127.0.0.1
  port: 5300
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{d}"
  pidfile: "{d}/upstream.pid"
  use-syslog: no
  logfile: ""
  num-threads: 1
  module-config: "iterator"
  access-control: 127.0.0.0/8 allow
  local-zone: "." static
  local-data: "www.example.test. 60 IN A 192.0.2.80"
remote-control:
  control-enable: no
"#,
            d = dir.path().display()
        ),
    )
    .expect("writing upstream.conf");
    let log = std::fs::File::create(dir.path().join("upstream.log")).expect("log");
    let upstream = Daemon(
        topo.gateway()
            .exec("unbound", ["-d", "-c", &conf.display().to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting the upstream unbound"),
        "unbound",
    );
    let gw = Gateway::start(
        &topo,
        &snapshot(&topo, ""),
        &[
            "--dns-listen",
            &format!("{GW}:53"),
            "--dns-forward",
            "127.0.0.1:5300",
            "--allow-source",
            "192.168.77.2/32",
        ],
    );
    assert!(
        wait_for(
            || answers(&topo, GW, "www.example.test A", &["192.0.2.80"]),
            Duration::from_secs(15)
        ),
        "never forwarded; upstream log:\n{}\ngateway log:\n{}",
        std::fs::read_to_string(dir.path().join("upstream.log")).unwrap_or_default(),
        gw.logs()
    );
    assert_eq!(short(&topo, GW, "+tcp www.example.test A"), ["192.0.2.80"]);
    assert_eq!(status(&topo, GW, "nosuch.example.test A"), "NXDOMAIN");
    // The zone itself is still answered by the gateway.
    assert_eq!(short(&topo, GW, &format!("web.t.{ZONE} A")), ["10.96.0.10"]);
    let metrics = gw_metrics(&topo);
    let forwarded = metric(&metrics, "clusterway_dns_forwarded_total");
    assert!(forwarded >= 3.0, "{forwarded}");
    // --allow-source applies to queries as to traffic: from the gateway's own address
    // (192.168.77.1, outside 192.168.77.2/32) every query is REFUSED, the zone's and the
    // forwarder's alike, and nothing more is forwarded.
    for name in [format!("web.t.{ZONE} A"), "www.example.test A".to_string()] {
        let out = topo
            .gateway()
            .sh(&format!(
                "dig @{GW} -b {GW} +time=2 +tries=1 +noall +comments {name}"
            ))
            .expect("dig from the gateway's address");
        assert!(out.contains("status: REFUSED"), "{name}: {out}");
    }
    let metrics = gw_metrics(&topo);
    assert_eq!(
        metric(&metrics, "clusterway_dns_forwarded_total"),
        forwarded
    );
    drop(upstream);
}
