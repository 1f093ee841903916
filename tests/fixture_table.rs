//! The service table built from real API-server output (`tests/fixtures`), checked
//! row by row against the fixtures README, for both the YAML and the JSON snapshot; then
//! the recorded watch streams are applied to the snapshot objects and the result checked
//! against the README's "after the watch streams" paragraph.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use clusterway::cluster::build::{build_table, BuildOptions};
use clusterway::cluster::file::load;
use clusterway::cluster::parse::{parse_objects, Objects};
use clusterway::cluster::table::{Lookup, NotExposed, Protocol, ServicePort, ServiceTable};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

use Protocol::{Tcp, Udp};

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter()
        .map(|s| s.parse().expect("test socket address"))
        .collect()
}

fn port<'a>(t: &'a ServiceTable, addr: &str, p: u16, proto: Protocol) -> &'a ServicePort {
    match t.lookup(ip(addr), p, proto) {
        Lookup::Port(sp) => sp,
        other => panic!("{addr} {p}/{proto}: expected an exposed port, got {other:?}"),
    }
}

/// Asserts `addr:p/proto` is exposed by `service` and forwards to exactly `to`.
fn forwards(t: &ServiceTable, service: &str, addr: &str, p: u16, proto: Protocol, to: &[&str]) {
    let sp = port(t, addr, p, proto);
    assert_eq!(sp.service.to_string(), service, "{addr} {p}/{proto}");
    assert_eq!(sp.usable, addrs(to), "{service} {addr} {p}/{proto}");
}

fn not_exposed(t: &ServiceTable, ns: &str, name: &str) -> NotExposed {
    let entry = t
        .service(ns, name)
        .unwrap_or_else(|| panic!("{ns}/{name} missing from the table"));
    assert!(entry.ports.is_empty(), "{ns}/{name} has ports");
    entry
        .not_exposed
        .clone()
        .unwrap_or_else(|| panic!("{ns}/{name} is exposed"))
}

/// Every row of the README's table for `cluster-snapshot.yaml`.
fn assert_snapshot_table(t: &ServiceTable) {
    // default/kubernetes: no EndpointSlice → exposed, rejects.
    forwards(t, "default/kubernetes", "10.96.0.1", 443, Tcp, &[]);

    // kube-system/kube-dns: ports matched by name.
    let dns = ["10.244.0.5:53", "10.244.1.7:53"];
    forwards(t, "kube-system/kube-dns", "10.96.0.10", 53, Udp, &dns);
    forwards(t, "kube-system/kube-dns", "10.96.0.10", 53, Tcp, &dns);
    forwards(
        t,
        "kube-system/kube-dns",
        "10.96.0.10",
        9153,
        Tcp,
        &["10.244.0.5:9153", "10.244.1.7:9153"],
    );
    assert!(matches!(
        t.lookup(ip("10.96.0.10"), 9153, Udp),
        Lookup::UnknownPort
    ));

    // shop/web IPv4: named targetPort; the terminating endpoint is not used while ready
    // ones exist (but is listed).
    forwards(
        t,
        "shop/web",
        "10.96.62.173",
        80,
        Tcp,
        &["10.244.1.11:8080", "10.244.2.12:8080"],
    );
    let web4 = port(t, "10.96.62.173", 80, Tcp);
    let terminating = web4
        .endpoints
        .iter()
        .find(|e| e.addr == addrs(&["10.244.2.13:8080"])[0])
        .expect("terminating endpoint listed");
    assert!(!terminating.conditions.ready);
    assert!(terminating.conditions.serving && terminating.conditions.terminating);
    assert_eq!(terminating.pod.as_deref(), Some("web-6d4cf56db6-old01"));
    assert_eq!(terminating.node.as_deref(), Some("node-c"));

    // shop/web IPv6: its own slice; `conditions: {}` means ready.
    forwards(
        t,
        "shop/web",
        "fd00:10:96::992d",
        80,
        Tcp,
        &["[fd00:10:244:1::b]:8080", "[fd00:10:244:2::c]:8080"],
    );
    assert_eq!(
        t.service("shop", "web").map(|e| e.cluster_ips.clone()),
        Some(vec![ip("10.96.62.173"), ip("fd00:10:96::992d")])
    );

    // shop/cart (NodePort): via its ClusterIP, ClientIP affinity 600 s.
    forwards(
        t,
        "shop/cart",
        "10.96.89.163",
        8080,
        Tcp,
        &["10.244.1.21:8080", "10.244.2.22:8080"],
    );
    assert_eq!(
        port(t, "10.96.89.163", 8080, Tcp).affinity,
        Some(Duration::from_secs(600))
    );
    assert!(matches!(
        t.lookup(ip("10.96.89.163"), 31551, Tcp),
        Lookup::UnknownPort
    ));
    // No other Service has affinity.
    let with_affinity: Vec<String> = t
        .ports()
        .filter(|p| p.affinity.is_some())
        .map(|p| p.service.to_string())
        .collect();
    assert_eq!(with_affinity, vec!["shop/cart".to_string()]);

    // shop/multi: the named targetPort resolves per slice.
    forwards(
        t,
        "shop/multi",
        "10.96.92.77",
        80,
        Tcp,
        &["10.244.1.31:8080", "10.244.2.32:8080"],
    );
    forwards(
        t,
        "shop/multi",
        "10.96.92.77",
        9090,
        Tcp,
        &["10.244.1.31:9090", "10.244.2.32:9091"],
    );

    // shop/payments: another proxy's Service.
    assert_eq!(
        not_exposed(t, "shop", "payments"),
        NotExposed::OtherProxy("other-proxy".to_string())
    );
    assert!(matches!(
        t.lookup(ip("10.96.31.88"), 443, Tcp),
        Lookup::NotService
    ));

    // shop/db headless, shop/legacy ExternalName.
    assert_eq!(not_exposed(t, "shop", "db"), NotExposed::Headless);
    assert_eq!(not_exposed(t, "shop", "legacy"), NotExposed::ExternalName);

    // shop/empty: no EndpointSlice → rejects.
    forwards(t, "shop/empty", "10.96.96.170", 80, Tcp, &[]);

    // monitoring/grafana (LoadBalancer): its only endpoint is neither ready nor serving.
    forwards(t, "monitoring/grafana", "10.96.191.158", 3000, Tcp, &[]);
    assert_eq!(port(t, "10.96.191.158", 3000, Tcp).endpoints.len(), 1);

    // Nothing else: exactly these frontends exist.
    let mut frontends: Vec<String> = t
        .ports()
        .map(|p| format!("{} {}", p.frontend(), p.protocol))
        .collect();
    frontends.sort();
    let mut want = vec![
        "10.96.0.1:443 TCP",
        "10.96.0.10:53 UDP",
        "10.96.0.10:53 TCP",
        "10.96.0.10:9153 TCP",
        "10.96.62.173:80 TCP",
        "[fd00:10:96::992d]:80 TCP",
        "10.96.89.163:8080 TCP",
        "10.96.92.77:80 TCP",
        "10.96.92.77:9090 TCP",
        "10.96.96.170:80 TCP",
        "10.96.191.158:3000 TCP",
    ];
    want.sort();
    assert_eq!(frontends, want);

    // Every Service of the snapshot is listed, exposed or not, and nothing else was read.
    let listed: Vec<String> = t.services.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(
        listed,
        vec![
            "default/kubernetes",
            "kube-system/kube-dns",
            "monitoring/grafana",
            "shop/cart",
            "shop/db",
            "shop/empty",
            "shop/legacy",
            "shop/multi",
            "shop/payments",
            "shop/web",
        ]
    );
    assert!(t.services.iter().all(|e| e.unsupported_ports.is_empty()));
    assert!(t.ignored_kinds.is_empty());
}

#[test]
fn snapshot_yaml_table_matches_readme() {
    let t = load(
        Path::new(&fixture("cluster-snapshot.yaml")),
        &BuildOptions::default(),
        1,
    )
    .expect("the YAML snapshot loads");
    assert_eq!(t.generation, 1);
    assert_snapshot_table(&t);
}

#[test]
fn snapshot_json_table_matches_readme() {
    let t = load(
        Path::new(&fixture("cluster-snapshot.json")),
        &BuildOptions::default(),
        1,
    )
    .expect("the JSON snapshot loads");
    assert_snapshot_table(&t);
}

#[test]
fn yaml_and_json_snapshots_give_the_same_table() {
    let opts = BuildOptions::default();
    let y = load(Path::new(&fixture("cluster-snapshot.yaml")), &opts, 1).expect("yaml");
    let j = load(Path::new(&fixture("cluster-snapshot.json")), &opts, 1).expect("json");
    assert_eq!(y.services, j.services);
}

#[test]
fn payments_exposed_when_proxy_name_matches() {
    let opts = BuildOptions {
        proxy_name: Some("other-proxy".to_string()),
    };
    let t = load(Path::new(&fixture("cluster-snapshot.yaml")), &opts, 1).expect("yaml");
    forwards(
        &t,
        "shop/payments",
        "10.96.31.88",
        443,
        Tcp,
        &["10.244.1.41:8443"],
    );
}

// ---------------------------------------------------------------------------------------
// Watch streams

fn key(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Applies one watch stream (JSON lines `{"type": .., "object": ..}`) to `objs`, keyed by
/// namespace/name. BOOKMARKs carry only a resourceVersion and change nothing.
fn apply_watch(objs: &mut Objects, stream: &str) -> usize {
    let mut applied = 0;
    for (n, line) in stream.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
        let kind_of_event = event["type"].as_str().unwrap_or_default().to_string();
        let object = event["object"].clone();
        match kind_of_event.as_str() {
            "BOOKMARK" => continue,
            "ADDED" | "MODIFIED" | "DELETED" => {}
            other => panic!("line {}: unexpected event type {other}", n + 1),
        }
        let deleted = kind_of_event == "DELETED";
        match object["kind"].as_str() {
            Some("Service") => {
                let svc: Service = serde_json::from_value(object).expect("Service");
                let k = key(&svc.metadata);
                objs.services.retain(|s| key(&s.metadata) != k);
                if !deleted {
                    objs.services.push(svc);
                }
            }
            Some("EndpointSlice") => {
                let slice: EndpointSlice = serde_json::from_value(object).expect("EndpointSlice");
                let k = key(&slice.metadata);
                objs.slices.retain(|s| key(&s.metadata) != k);
                if !deleted {
                    objs.slices.push(slice);
                }
            }
            other => panic!("line {}: unexpected kind {other:?}", n + 1),
        }
        applied += 1;
    }
    applied
}

#[test]
fn watch_streams_applied_to_snapshot() {
    let text = std::fs::read_to_string(fixture("cluster-snapshot.yaml")).expect("snapshot");
    let mut objs = parse_objects("cluster-snapshot.yaml", &text).expect("parses");
    let services = std::fs::read_to_string(fixture("watch-services.jsonl")).expect("stream");
    let slices = std::fs::read_to_string(fixture("watch-endpointslices.jsonl")).expect("stream");
    assert_eq!(apply_watch(&mut objs, &services), 2);
    assert_eq!(apply_watch(&mut objs, &slices), 3);

    let (t, errors) = build_table(2, &objs, &BuildOptions::default());
    assert!(errors.is_empty(), "{errors:?}");

    // shop/web IPv4: the terminating endpoint is gone, the new one is ready.
    forwards(
        &t,
        "shop/web",
        "10.96.62.173",
        80,
        Tcp,
        &["10.244.1.11:8080", "10.244.1.14:8080", "10.244.2.12:8080"],
    );
    assert_eq!(port(&t, "10.96.62.173", 80, Tcp).endpoints.len(), 3);
    // IPv6 side untouched.
    forwards(
        &t,
        "shop/web",
        "fd00:10:96::992d",
        80,
        Tcp,
        &["[fd00:10:244:1::b]:8080", "[fd00:10:244:2::c]:8080"],
    );

    // shop/empty is gone: its ClusterIP no longer answers as a Service.
    assert!(t.service("shop", "empty").is_none());
    assert!(matches!(
        t.lookup(ip("10.96.96.170"), 80, Tcp),
        Lookup::NotService
    ));

    // shop/api exists with no endpoints (reject).
    forwards(&t, "shop/api", "10.96.26.226", 8443, Tcp, &[]);
    assert_eq!(port(&t, "10.96.26.226", 8443, Tcp).name, "8443-8443");

    // shop/payments stays unexposed.
    assert_eq!(
        not_exposed(&t, "shop", "payments"),
        NotExposed::OtherProxy("other-proxy".to_string())
    );

    // The rest of the table is as before.
    forwards(
        &t,
        "shop/multi",
        "10.96.92.77",
        9090,
        Tcp,
        &["10.244.1.31:9090", "10.244.2.32:9091"],
    );
    forwards(&t, "default/kubernetes", "10.96.0.1", 443, Tcp, &[]);
}

#[test]
fn intermediate_watch_state_new_endpoint_not_ready() {
    // After the first web-4rj8s MODIFIED only: 10.2.13 gone, 10.1.14 not ready yet.
    let text = std::fs::read_to_string(fixture("cluster-snapshot.yaml")).expect("snapshot");
    let mut objs = parse_objects("cluster-snapshot.yaml", &text).expect("parses");
    let slices = std::fs::read_to_string(fixture("watch-endpointslices.jsonl")).expect("stream");
    let first = slices.lines().next().expect("one event");
    assert_eq!(apply_watch(&mut objs, first), 1);
    let (t, errors) = build_table(2, &objs, &BuildOptions::default());
    assert!(errors.is_empty(), "{errors:?}");
    forwards(
        &t,
        "shop/web",
        "10.96.62.173",
        80,
        Tcp,
        &["10.244.1.11:8080", "10.244.2.12:8080"],
    );
    let listed: Vec<SocketAddr> = port(&t, "10.96.62.173", 80, Tcp)
        .endpoints
        .iter()
        .map(|e| e.addr)
        .collect();
    assert_eq!(
        listed,
        addrs(&["10.244.1.11:8080", "10.244.1.14:8080", "10.244.2.12:8080"])
    );
}
