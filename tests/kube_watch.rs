//! The Kubernetes source end to end: the test API server (`tests/apiserver`) runs inside
//! the gateway's namespace (the gateway cannot reach the host's loopback), `clusterway run
//! --kubeconfig` watches it with the unmodified kube-rs watcher, and a client namespace
//! checks that forwarding follows Services and EndpointSlices, survives outages, resyncs
//! after them and after a 410, skips bad objects, and applies the exposure policy.

mod apiserver;
mod common;

use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use apiserver::{ApiServer, Res};
use common::*;
use serde_json::{json, Value};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A Service `ns/name` on `cluster_ip`, port `port` (named `http`, TCP unless `proto`).
fn service(ns: &str, name: &str, cluster_ip: &str, port: i64, proto: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ports": [{"name": "http", "port": port, "protocol": proto, "targetPort": "http"}]}
    })
}

/// An IPv4 EndpointSlice for `service` with ready endpoints on `target`.
fn slice(ns: &str, name: &str, service: &str, target: i64, proto: &str, ips: &[IpAddr]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                     "managedFields": [{"manager": "kube-controller-manager", "operation": "Update"}]},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": target, "protocol": proto}],
        "endpoints": endpoints
    })
}

fn pod(topo: &Topology, k: usize) -> IpAddr {
    topo.pod_ip(k, false)
}

fn start_gateway(topo: &Topology, api: &ApiServer, extra: &[&str]) -> Gateway {
    let kubeconfig = api.kubeconfig();
    let mut args = vec![
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--watch-timeout",
        "5s",
    ];
    args.extend_from_slice(extra);
    Gateway::start_with_args(topo, &args)
}

/// GET / through the gateway; the pod's name, or the error.
fn get(topo: &Topology, addr: &str) -> Result<String, String> {
    tcp_get(topo.client(), sa(addr))
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{e:#}"))
}

fn wait_get(topo: &Topology, addr: &str, want: &str, timeout: Duration) -> bool {
    wait_for(|| get(topo, addr).as_deref() == Ok(want), timeout)
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn kube_source_follows_services_and_endpointslices() {
    let topo = topology(2);
    let _b = start_backends_in_process(&topo);
    let api = ApiServer::start_in(topo.gateway());
    // Real list output first: the fixtures' Services and slices (none of them routes to
    // this topology's pods, which checks that the real objects are accepted as they are).
    api.load_list(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cluster-snapshot.json"
        ))
        .unwrap(),
    );
    api.apply(service("t", "web", "10.96.200.10", 80, "TCP"));
    api.apply(slice("t", "web-a", "web", 8080, "TCP", &[pod(&topo, 1)]));

    let gw = start_gateway(&topo, &api, &[]);
    // Per-IP routes (no --service-cidr): the route appears with the first table.
    assert!(
        gw.wait_routed(ip("10.96.200.10"), Duration::from_secs(10)),
        "{}",
        gw.logs()
    );
    assert!(gw.routes_via_tun(ip("10.96.62.173")), "fixture shop/web");
    assert!(
        !gw.routes_via_tun(ip("10.96.31.88")),
        "shop/payments: other proxy"
    );
    assert_eq!(get(&topo, "10.96.200.10:80").as_deref(), Ok("pod-1"));
    assert!(gw.logged("first complete table from the API server"));
    // The status API (what the dashboard's header shows) names the API server it watches.
    let status = topo
        .gateway()
        .run(|| {
            http_get_here(
                sa("127.0.0.1:9310"),
                "/api/v1/status",
                Duration::from_secs(3),
            )
        })
        .expect("GET /api/v1/status")
        .text();
    let want = format!("\"detail\":\"https://{}/\"", api.addr);
    assert!(
        status.contains("\"kind\":\"cluster\"") && status.contains(&want),
        "{status}"
    );

    // A second endpoint in a second slice: round-robin over both.
    api.apply(slice("t", "web-b", "web", 8080, "TCP", &[pod(&topo, 2)]));
    assert!(wait_get(
        &topo,
        "10.96.200.10:80",
        "pod-2",
        Duration::from_secs(5)
    ));
    let answers: Vec<String> = (0..4)
        .filter_map(|_| get(&topo, "10.96.200.10:80").ok())
        .collect();
    assert_eq!(
        answers.iter().filter(|a| *a == "pod-1").count(),
        2,
        "{answers:?}"
    );

    // The first slice loses its endpoint: only pod-2 is left.
    api.apply(slice("t", "web-a", "web", 8080, "TCP", &[]));
    assert!(wait_for(
        || (0..3).all(|_| get(&topo, "10.96.200.10:80").as_deref() == Ok("pod-2")),
        Duration::from_secs(5)
    ));

    // A new Service, and a UDP one.
    api.apply(service("t", "api", "10.96.200.20", 8000, "TCP"));
    api.apply(slice("t", "api-a", "api", 8080, "TCP", &[pod(&topo, 1)]));
    api.apply(service("t", "dns", "10.96.200.53", 53, "UDP"));
    api.apply(slice("t", "dns-a", "dns", 5353, "UDP", &[pod(&topo, 2)]));
    assert!(wait_get(
        &topo,
        "10.96.200.20:8000",
        "pod-1",
        Duration::from_secs(5)
    ));
    assert!(gw.wait_routed(ip("10.96.200.53"), Duration::from_secs(5)));
    let reply = udp_roundtrip(topo.client(), sa("10.96.200.53:53"), b"hi").unwrap();
    assert!(reply.starts_with("pod-2"), "{reply}");

    // Deleting the slice: no endpoints, refused at once; deleting the Service: unrouted.
    assert!(api.delete(Res::Slices, "t", "api-a"));
    assert!(wait_for(
        || {
            let a = sa("10.96.200.20:8000");
            topo.client()
                .run(move || TcpStream::connect_timeout(&a, Duration::from_secs(1)))
                .is_err_and(|e| e.kind() != std::io::ErrorKind::TimedOut)
        },
        Duration::from_secs(5)
    ));
    assert!(api.delete(Res::Services, "t", "api"));
    assert!(wait_for(
        || !gw.routes_via_tun(ip("10.96.200.20")),
        Duration::from_secs(5)
    ));
    assert_eq!(get(&topo, "10.96.200.10:80").as_deref(), Ok("pod-2"));
}

#[test]
fn kube_outage_keeps_forwarding_then_resyncs_and_410_relists() {
    let topo = topology(2);
    let _b = start_backends_in_process(&topo);
    let api = ApiServer::start_in(topo.gateway());
    api.set_bookmark_interval(Duration::from_millis(200));
    api.apply(service("t", "web", "10.96.201.10", 80, "TCP"));
    api.apply(slice("t", "web-a", "web", 8080, "TCP", &[pod(&topo, 1)]));
    let gw = start_gateway(&topo, &api, &["--service-cidr", "10.96.0.0/16"]);
    assert!(gw.wait_routed(ip("10.96.201.10"), Duration::from_secs(10)));
    assert!(
        wait_get(&topo, "10.96.201.10:80", "pod-1", Duration::from_secs(10)),
        "{}",
        gw.logs()
    );

    // 410 Gone mid-stream: the watcher re-lists; a change made meanwhile arrives, and it
    // is not an outage.
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| {
            r.starts_with("/apis/discovery.k8s.io/v1/endpointslices") && !r.contains("watch")
        })
        .count();
    api.expire_watches();
    api.apply(slice("t", "web-a", "web", 8080, "TCP", &[pod(&topo, 2)]));
    assert!(
        wait_get(&topo, "10.96.201.10:80", "pod-2", Duration::from_secs(5)),
        "{}",
        gw.logs()
    );
    assert!(wait_for(
        || gw.logged("watch expired (410 Gone); re-listing"),
        Duration::from_secs(3)
    ));
    // (after kube's backoff: the 410 arrives as an error of the watch stream)
    let lists_after = || {
        api.requests()
            .iter()
            .filter(|r| {
                r.starts_with("/apis/discovery.k8s.io/v1/endpointslices") && !r.contains("watch")
            })
            .count()
    };
    assert!(
        wait_for(|| lists_after() > lists_before, Duration::from_secs(5)),
        "a 410 makes the watcher re-list"
    );
    assert!(!gw.logged("lost the API server"));
    // Each failure is counted by its reason.
    let errors = |reason: &str| {
        metric_value(
            &gateway_metrics(&topo),
            &format!("clusterway_api_watch_errors_total{{reason=\"{reason}\"}}"),
        )
    };
    assert!(
        wait_for(|| errors("gone") >= 1.0, Duration::from_secs(3)),
        "{}",
        gateway_metrics(&topo)
    );
    assert_eq!(errors("server_error"), 0.0);

    // Dropped connections: the watch is re-established (from its resourceVersion).
    api.drop_connections();
    api.apply(slice("t", "web-a", "web", 8080, "TCP", &[pod(&topo, 1)]));
    assert!(
        wait_get(&topo, "10.96.201.10:80", "pod-1", Duration::from_secs(10)),
        "{}",
        gw.logs()
    );

    // The API server goes away: forwarding goes on with the last table (stale), and the
    // outage is logged once, not once per retry.
    api.stop();
    assert!(
        wait_for(|| gw.logged("lost the API server"), Duration::from_secs(10)),
        "{}",
        gw.logs()
    );
    for _ in 0..5 {
        assert_eq!(get(&topo, "10.96.201.10:80").as_deref(), Ok("pod-1"));
        // A stale table keeps the routes, so a routing daemon keeps announcing them
        // (withdrawing on every gateway of a fleet at once would be an outage).
        assert!(
            gw.routes_via_tun(ip("10.96.201.10")),
            "the route went with the API server"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(count(&gw.logs(), "lost the API server"), 1, "{}", gw.logs());
    assert!(
        errors("unreachable") + errors("stream_broken") >= 1.0,
        "{}",
        gateway_metrics(&topo)
    );
    // Changes made while the gateway cannot see them...
    api.apply(slice("t", "web-a", "web", 8080, "TCP", &[pod(&topo, 2)]));
    api.apply(service("t", "new", "10.96.201.20", 80, "TCP"));
    api.apply(slice("t", "new-a", "new", 8080, "TCP", &[pod(&topo, 1)]));
    assert_eq!(get(&topo, "10.96.201.10:80").as_deref(), Ok("pod-1"));
    // ... arrive with the resync after the restart (same port).
    api.restart();
    assert!(
        wait_get(&topo, "10.96.201.10:80", "pod-2", Duration::from_secs(15)),
        "{}",
        gw.logs()
    );
    assert!(wait_get(
        &topo,
        "10.96.201.20:80",
        "pod-1",
        Duration::from_secs(5)
    ));
    assert!(
        wait_for(
            || gw.logged("API server back; resynced"),
            Duration::from_secs(5)
        ),
        "{}",
        gw.logs()
    );

    // 5xx answers are an outage too; the table stays. (500: kube-client retries 503 and
    // 429 itself for several seconds before the watcher sees an error.)
    api.fail_with(Some(500));
    assert!(
        wait_for(
            || count(&gw.logs(), "lost the API server") == 2,
            Duration::from_secs(15)
        ),
        "{}",
        gw.logs()
    );
    assert_eq!(get(&topo, "10.96.201.10:80").as_deref(), Ok("pod-2"));
    assert!(errors("server_error") >= 1.0, "{}", gateway_metrics(&topo));
    api.fail_with(None);
    assert!(
        wait_for(
            || count(&gw.logs(), "API server back; resynced") == 2,
            Duration::from_secs(15)
        ),
        "{}",
        gw.logs()
    );
    assert!(!gw.logged("panicked"));
}

#[test]
fn kube_bad_objects_are_skipped_with_one_warning_each() {
    let topo = topology(1);
    let _b = start_backends_in_process(&topo);
    let api = ApiServer::start_in(topo.gateway());
    let p1 = pod(&topo, 1);
    api.apply(service("t", "good", "10.96.202.10", 80, "TCP"));
    api.apply(slice("t", "good-a", "good", 8080, "TCP", &[p1]));
    // Services: an invalid IP, a port out of range, an unknown protocol, a duplicate
    // ClusterIP (the second by name loses).
    api.apply(service("t", "bad-ip", "10.96.202.300", 80, "TCP"));
    api.apply(service("t", "bad-port", "10.96.202.11", 70000, "TCP"));
    api.apply(service("t", "bad-proto", "10.96.202.12", 80, "QUIC"));
    api.apply(service("t", "zz-dup", "10.96.202.10", 80, "TCP"));
    // Slices: no service-name label, an invalid endpoint IP, a port out of range, an
    // unknown protocol. The good Service gets all of them; only the good slice counts.
    let mut unlabelled = slice("t", "nolabel", "good", 8080, "TCP", &[ip("10.244.99.1")]);
    unlabelled["metadata"]["labels"] = json!({});
    api.apply(unlabelled);
    let mut bad_ep = slice("t", "bad-ep", "good", 8080, "TCP", &[]);
    bad_ep["endpoints"] = json!([{"addresses": ["10.244.1.999"]}]);
    api.apply(bad_ep);
    api.apply(slice(
        "t",
        "bad-slice-port",
        "good",
        70000,
        "TCP",
        &[ip("10.244.99.2")],
    ));
    api.apply(slice(
        "t",
        "bad-slice-proto",
        "good",
        8080,
        "ICMP",
        &[ip("10.244.99.3")],
    ));

    let gw = start_gateway(&topo, &api, &[]);
    assert!(
        gw.wait_routed(ip("10.96.202.10"), Duration::from_secs(10)),
        "{}",
        gw.logs()
    );
    // Every answer comes from the good endpoint only.
    for _ in 0..3 {
        assert_eq!(get(&topo, "10.96.202.10:80").as_deref(), Ok("pod-1"));
    }
    for unrouted in ["10.96.202.11", "10.96.202.12"] {
        assert!(!gw.routes_via_tun(ip(unrouted)), "{unrouted}");
    }
    let expected = [
        ("Service t/bad-ip", "spec.clusterIPs[0]"),
        ("Service t/bad-port", "spec.ports[0].port"),
        ("Service t/bad-proto", "spec.ports[0].protocol"),
        ("Service t/zz-dup", "spec.clusterIPs[0]"),
        (
            "EndpointSlice t/nolabel",
            "metadata.labels[kubernetes.io/service-name]",
        ),
        ("EndpointSlice t/bad-ep", "endpoints[0].addresses[0]"),
        ("EndpointSlice t/bad-slice-port", "ports[0].port"),
        ("EndpointSlice t/bad-slice-proto", "ports[0].protocol"),
    ];
    // Rebuilding the good Service (its slice changes) does not repeat the warnings.
    api.apply(slice(
        "t",
        "good-a",
        "good",
        8080,
        "TCP",
        &[p1, ip("10.244.1.10")],
    ));
    std::thread::sleep(Duration::from_millis(500));
    let logs = gw.logs();
    for (object, field) in expected {
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| {
                l.contains(&format!("object={object} ")) && l.contains("bad object skipped")
            })
            .collect();
        assert_eq!(lines.len(), 1, "{object}: {lines:?}\n{logs}");
        assert!(
            lines[0].contains(&format!("field={field}")),
            "{object}: {}",
            lines[0]
        );
    }
    // Bookmarks (an EndpointSlice with addressType "" and endpoints null) are not objects.
    assert!(!logs.contains("addressType: \"\""), "{logs}");
}

#[test]
fn kube_policy_rules_and_service_cidrs() {
    let topo = topology(1);
    let _b = start_backends_in_process(&topo);
    let api = ApiServer::start_in(topo.gateway());
    let p1 = pod(&topo, 1);
    let with = |mut v: Value, labels: Value, annotations: Value| {
        v["metadata"]["labels"] = labels;
        v["metadata"]["annotations"] = annotations;
        v
    };
    let add = |ns: &str, name: &str, cip: &str, labels: Value, annotations: Value| {
        api.apply(with(service(ns, name, cip, 80, "TCP"), labels, annotations));
        api.apply(slice(ns, &format!("{name}-a"), name, 8080, "TCP", &[p1]));
    };
    add("shop", "open", "10.96.203.1", json!({}), json!({}));
    add("hidden", "x", "10.96.203.2", json!({}), json!({}));
    add(
        "shop",
        "internal",
        "10.96.203.3",
        json!({"tier": "internal"}),
        json!({}),
    );
    add(
        "shop",
        "optout",
        "10.96.203.4",
        json!({}),
        json!({"clusterway.io/expose": "false"}),
    );
    add(
        "shop",
        "restricted",
        "10.96.203.5",
        json!({}),
        json!({"clusterway.io/allow-sources": "10.0.0.0/8"}),
    );
    add(
        "shop",
        "mine",
        "10.96.203.6",
        json!({}),
        json!({"clusterway.io/allow-sources": "192.168.77.0/24, 10.0.0.0/8"}),
    );
    add(
        "shop",
        "badsrc",
        "10.96.203.7",
        json!({}),
        json!({"clusterway.io/allow-sources": "banana"}),
    );
    add(
        "shop",
        "badexpose",
        "10.96.203.8",
        json!({}),
        json!({"clusterway.io/expose": "maybe"}),
    );
    api.apply(with(
        service("shop", "udp-restricted", "10.96.203.53", 53, "UDP"),
        json!({}),
        json!({"clusterway.io/allow-sources": "10.0.0.0/8"}),
    ));
    api.apply(slice(
        "shop",
        "udp-restricted-a",
        "udp-restricted",
        5353,
        "UDP",
        &[p1],
    ));

    let gw = start_gateway(
        &topo,
        &api,
        &[
            "--exclude-namespace",
            "hidden",
            "--service-selector",
            "tier notin (internal)",
            "--allow-source",
            "192.168.0.0/16",
            "--service-cidr-recheck",
            "1s",
        ],
    );
    assert!(
        gw.wait_routed(ip("10.96.203.1"), Duration::from_secs(10)),
        "{}",
        gw.logs()
    );
    assert_eq!(get(&topo, "10.96.203.1:80").as_deref(), Ok("pod-1"));
    assert_eq!(
        get(&topo, "10.96.203.6:80").as_deref(),
        Ok("pod-1"),
        "annotation within the flag"
    );
    for (cip, why) in [
        ("10.96.203.2", "excluded namespace"),
        ("10.96.203.3", "selector"),
        ("10.96.203.4", "opt-out annotation"),
        ("10.96.203.8", "malformed expose"),
    ] {
        assert!(!gw.routes_via_tun(ip(cip)), "{cip}: {why}");
    }
    // Refused sources: TCP gets a RST (connection refused at once), UDP an ICMP
    // administratively prohibited (an error at once, not a timeout).
    for cip in ["10.96.203.5:80", "10.96.203.7:80"] {
        let a = sa(cip);
        let r = topo
            .client()
            .run(move || TcpStream::connect_timeout(&a, Duration::from_secs(2)));
        assert_eq!(
            r.map(|_| ()).unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{cip}"
        );
    }
    let udp_err = topo.client().run(|| -> std::io::Result<()> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect("10.96.203.53:53")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send(b"q")?;
        let mut buf = [0u8; 512];
        s.recv(&mut buf).map(|_| ())
    });
    let kind = udp_err.unwrap_err().kind();
    assert!(
        !matches!(
            kind,
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{kind:?}"
    );
    let logs = gw.logs();
    assert_eq!(count(&logs, "malformed annotation"), 2, "{logs}");
    assert!(logs.contains("field=metadata.annotations[clusterway.io/allow-sources]"));

    // ServiceCIDR was not served (404) when this gateway started, so it routes per IP. Once
    // the cluster serves it, the re-check (every second here) picks it up: the routes
    // follow the ServiceCIDR without a restart.
    assert!(!gw.routes_via_tun(ip("10.96.250.250")));
    api.serve_service_cidrs(true);
    api.apply(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16"]}}),
    );
    assert!(
        wait_for(
            || gw.routes_via_tun(ip("10.96.250.250")),
            Duration::from_secs(10)
        ),
        "{}",
        gw.logs()
    );
    assert_eq!(
        count(
            &gw.logs(),
            "does not serve networking.k8s.io/v1 ServiceCIDR"
        ),
        1,
        "the re-checks that found nothing stay quiet"
    );
    drop(gw);

    // Opt-in mode and --namespace, with routes from the cluster's ServiceCIDRs.
    api.serve_service_cidrs(true);
    api.apply(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16"]}}),
    );
    add(
        "shop",
        "optin",
        "10.96.203.9",
        json!({}),
        json!({"clusterway.io/expose": "true"}),
    );
    add(
        "hidden",
        "optin",
        "10.96.203.10",
        json!({}),
        json!({"clusterway.io/expose": "true"}),
    );
    let gw = start_gateway(
        &topo,
        &api,
        &["--namespace", "shop", "--expose-by-default=false"],
    );
    assert!(
        wait_get(&topo, "10.96.203.9:80", "pod-1", Duration::from_secs(10)),
        "{}",
        gw.logs()
    );
    // The whole ServiceCIDR is routed (not per-IP), and only opted-in Services in `shop`
    // answer: an exposed-by-default one is not a Service now (dropped, so it times out).
    assert!(gw.routes_via_tun(ip("10.96.250.250")));
    let a = sa("10.96.203.1:80");
    let r = topo
        .client()
        .run(move || TcpStream::connect_timeout(&a, Duration::from_millis(500)));
    assert!(r.is_err());
    let a = sa("10.96.203.10:80");
    let r = topo
        .client()
        .run(move || TcpStream::connect_timeout(&a, Duration::from_millis(500)));
    assert!(r.is_err());
    // Routes follow the ServiceCIDR object live.
    api.apply(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.203.0/24"]}}),
    );
    assert!(
        wait_for(
            || !gw.routes_via_tun(ip("10.96.250.250")),
            Duration::from_secs(5)
        ),
        "{}",
        gw.logs()
    );
    assert!(gw.routes_via_tun(ip("10.96.203.9")));
}

#[test]
fn kube_stalled_watch_is_detected_and_restarted() {
    let topo = topology(2);
    let _b = start_backends_in_process(&topo);
    let api = ApiServer::start_in(topo.gateway());
    api.apply(service("t", "web", "10.96.202.10", 80, "TCP"));
    api.apply(slice("t", "web-a", "web", 8080, "TCP", &[pod(&topo, 1)]));
    let kubeconfig = api.kubeconfig();
    let gw = Gateway::start_with_args(
        &topo,
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--watch-timeout",
            "2s",
        ],
    );
    assert!(
        gw.wait_routed(ip("10.96.202.10"), Duration::from_secs(10)),
        "{}",
        gw.logs()
    );
    assert!(
        wait_get(&topo, "10.96.202.10:80", "pod-1", Duration::from_secs(10)),
        "{}",
        gw.logs()
    );

    // Every watch goes silent with its connection open (no event, no bookmark, no close);
    // news comes through only once the gateway notices, drops the watch and resumes it
    // from its resourceVersion (no new list).
    let lists = |api: &ApiServer| {
        api.requests()
            .iter()
            .filter(|r| !r.contains("watch="))
            .count()
    };
    let lists_before = lists(&api);
    api.freeze_watches();
    let t = Instant::now();
    api.apply(slice("t", "web-a", "web", 8080, "TCP", &[pod(&topo, 2)]));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        get(&topo, "10.96.202.10:80").as_deref(),
        Ok("pod-1"),
        "the stall let news through"
    );
    assert!(
        wait_get(&topo, "10.96.202.10:80", "pod-2", Duration::from_secs(20)),
        "stalled watch not restarted: {}",
        gw.logs()
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "restarted before the watch timeout: {took:?}"
    );
    // Forwarding went on meanwhile (the last table), and the resync is complete.
    assert_eq!(get(&topo, "10.96.202.10:80").as_deref(), Ok("pod-2"));
    assert_eq!(lists(&api), lists_before, "a stalled watch was re-listed");
}

/// More objects than kube-rs's watcher asks for in one page (500): it lists page by page
/// with `continue` tokens, and a Service on every page (and its slice) is forwarded.
#[test]
fn kube_lists_are_read_page_by_page() {
    let topo = topology(2);
    let _b = start_backends_in_process(&topo);
    let api = ApiServer::start_in(topo.gateway());
    let n = 1100;
    let addr = |i: usize| format!("10.98.{}.{}", (i + 1) / 256, (i + 1) % 256);
    for i in 0..n {
        let name = format!("svc-{i:04}");
        api.apply(service("bulk", &name, &addr(i), 80, "TCP"));
        let k = 1 + i % 2;
        let slice_name = format!("{name}-a");
        api.apply(slice(
            "bulk",
            &slice_name,
            &name,
            8080,
            "TCP",
            &[pod(&topo, k)],
        ));
    }
    let gw = start_gateway(&topo, &api, &["--service-cidr", "10.98.0.0/16"]);
    // One Service from each page (sorted by namespace and name, as the server pages).
    for i in [0, 499, 500, 999, 1000, n - 1] {
        let want = format!("pod-{}", 1 + i % 2);
        assert!(
            wait_get(
                &topo,
                &format!("{}:80", addr(i)),
                &want,
                Duration::from_secs(15)
            ),
            "svc-{i:04}: {:?}\n{}",
            get(&topo, &format!("{}:80", addr(i))),
            gw.logs()
        );
    }
    let requests = api.requests();
    for path in [
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ] {
        let pages: Vec<&String> = requests
            .iter()
            .filter(|r| r.starts_with(&format!("{path}?")) && !r.contains("watch="))
            .collect();
        assert!(pages.iter().all(|r| r.contains("limit=500")), "{pages:?}");
        // 1,100 objects: a first page and two more, each asked for with its token.
        assert_eq!(
            pages.iter().filter(|r| r.contains("continue=")).count(),
            2,
            "{pages:?}"
        );
    }
}

/// A watch that breaks resumes from the last resourceVersion the gateway saw, with no new
/// list; only a 410 Gone makes it list again.
#[test]
fn kube_watch_resumes_from_its_resource_version_and_relists_only_on_410() {
    let topo = topology(2);
    let _b = start_backends_in_process(&topo);
    let api = ApiServer::start_in(topo.gateway());
    api.apply(service("t", "web", "10.96.203.10", 80, "TCP"));
    api.apply(slice("t", "web-a", "web", 8080, "TCP", &[pod(&topo, 1)]));
    let gw = start_gateway(&topo, &api, &["--service-cidr", "10.96.0.0/16"]);
    assert!(
        wait_get(&topo, "10.96.203.10:80", "pod-1", Duration::from_secs(10)),
        "{}",
        gw.logs()
    );
    const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices?";
    let lists = |api: &ApiServer| {
        api.requests()
            .iter()
            .filter(|r| {
                (r.starts_with(SLICES) || r.starts_with("/api/v1/services?"))
                    && !r.contains("watch=")
            })
            .count()
    };
    let slice_watches = |api: &ApiServer| -> Vec<String> {
        api.requests()
            .into_iter()
            .filter(|r| r.starts_with(SLICES) && r.contains("watch=true"))
            .collect()
    };

    // A change the gateway sees on its watch, then the connections drop.
    api.apply(slice("t", "web-a", "web", 8080, "TCP", &[pod(&topo, 2)]));
    assert!(wait_get(
        &topo,
        "10.96.203.10:80",
        "pod-2",
        Duration::from_secs(10)
    ));
    let seen = api.resource_version();
    let lists_before = lists(&api);
    let watches_before = slice_watches(&api).len();
    api.drop_connections();
    // A change made while no watch is open arrives through the resumed watch.
    api.apply(slice("t", "web-a", "web", 8080, "TCP", &[pod(&topo, 1)]));
    assert!(
        wait_get(&topo, "10.96.203.10:80", "pod-1", Duration::from_secs(15)),
        "{}",
        gw.logs()
    );
    let watches = slice_watches(&api);
    let resumed = watches
        .get(watches_before)
        .unwrap_or_else(|| panic!("no watch after the drop: {watches:?}"));
    // From what it had seen (the change made after the drop may still have reached the
    // old watch), never from scratch.
    let from: u64 = resumed
        .split('&')
        .find_map(|kv| kv.strip_prefix("resourceVersion="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {resumed}"));
    assert!(
        from >= seen,
        "the watch did not resume from the last resourceVersion ({seen}): {resumed}"
    );
    assert_eq!(lists(&api), lists_before, "a dropped watch was re-listed");
    assert!(!gw.logged("lost the API server"), "{}", gw.logs());

    // 410 Gone: now, and only now, the watcher lists again.
    api.expire_watches();
    api.apply(slice("t", "web-a", "web", 8080, "TCP", &[pod(&topo, 2)]));
    assert!(
        wait_get(&topo, "10.96.203.10:80", "pod-2", Duration::from_secs(15)),
        "{}",
        gw.logs()
    );
    assert!(
        wait_for(|| lists(&api) > lists_before, Duration::from_secs(5)),
        "a 410 did not make the watcher list again: {:?}",
        api.requests()
    );
}
