//! The JSON views of `/api/v1/...`: pure functions of the [`Status`] and the query, so
//! the handlers stay thin. Filtering, sorting and paging of Services happen here, on the
//! server: the page asks for one screenful of a 10,000-Service table at a time.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{unix_ms, Status};
use crate::cluster::names::NameTable;
use crate::cluster::sync::SyncState;
use crate::cluster::table::{NotExposed, ServiceEntry};
use crate::dataplane::flows::FlowInfo;
use crate::dataplane::stats::{ConnResult, ServiceStats};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// `?q=&state=&sort=&order=&limit=&offset=` of `/api/v1/services`.
#[derive(Debug, Default, Deserialize)]
pub struct ServicesQuery {
    /// Substring (case-insensitive) of `namespace/name`, a ClusterIP or `ip:port`.
    pub q: Option<String>,
    /// `serving`, `unservable` (no usable endpoint, or not exposed), `not_exposed`.
    pub state: Option<String>,
    /// `name` (default), `endpoints`, `flows`, `rate`, `bytes`, `failure`, `state`.
    pub sort: Option<String>,
    /// `asc` (default) or `desc`.
    pub order: Option<String>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
}

/// Endpoint counts of a Service: unique addresses over its ports.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct EndpointCounts {
    pub ready: usize,
    pub serving: usize,
    pub terminating: usize,
    pub total: usize,
}

/// One row of the services table.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceRow {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub cluster_ips: Vec<IpAddr>,
    /// `80/TCP`, `53/UDP`, … (plus unsupported ones, marked).
    pub ports: Vec<String>,
    /// `serving`, `no_endpoints`, `not_exposed`.
    pub state: &'static str,
    /// Why it is not exposed or cannot serve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub endpoints: EndpointCounts,
    pub active_flows: u64,
    pub conn_rate: f64,
    pub connections: u64,
    pub bytes_to_endpoint: u64,
    pub bytes_to_client: u64,
    /// `{at, result}` of the last failed set-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Value>,
    /// Its ClusterIPs that no route of the gateway carries (`crate::cluster::routed`), as
    /// `{ip, reason, detail}`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_routed: Vec<Value>,
}

/// The not-routed ClusterIPs by Service (see [`ServiceRow::not_routed`]).
fn not_routed_by_service(status: &Status) -> HashMap<(String, String), Vec<Value>> {
    let mut out: HashMap<(String, String), Vec<Value>> = HashMap::new();
    for n in status.health.not_routed() {
        out.entry((n.service.namespace.clone(), n.service.name.clone()))
            .or_default()
            .push(json!({"ip": n.ip, "reason": n.reason.label(), "detail": n.to_string()}));
    }
    out
}

fn not_exposed_reason(n: &NotExposed) -> String {
    match n {
        NotExposed::Headless => "headless (no ClusterIP)".into(),
        NotExposed::ExternalName => "ExternalName".into(),
        NotExposed::OtherProxy(p) => format!("service-proxy-name {p}"),
        NotExposed::Policy(p) => format!("excluded by policy: {p}"),
        NotExposed::Invalid(e) => format!("invalid: {e}"),
    }
}

fn endpoint_counts(s: &ServiceEntry) -> EndpointCounts {
    let mut all = BTreeSet::new();
    let mut ready = BTreeSet::new();
    let mut serving = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for p in &s.ports {
        for e in &p.endpoints {
            let ip = e.addr.ip();
            all.insert(ip);
            if e.conditions.ready {
                ready.insert(ip);
            }
            if e.conditions.serving {
                serving.insert(ip);
            }
            if e.conditions.terminating {
                terminating.insert(ip);
            }
        }
    }
    EndpointCounts {
        ready: ready.len(),
        serving: serving.len(),
        terminating: terminating.len(),
        total: all.len(),
    }
}

/// Per-Service aggregates of the per-port counters.
#[derive(Debug, Default, Clone)]
struct Agg {
    active: u64,
    connections: u64,
    to_ep: u64,
    to_cl: u64,
    last_failure: Option<(SystemTime, ConnResult)>,
}

fn aggregates(status: &Status) -> HashMap<(String, String), Agg> {
    let mut out: HashMap<(String, String), Agg> = HashMap::new();
    for (k, s) in status.stats.services.snapshot() {
        let a = out
            .entry((k.service.namespace.clone(), k.service.name.clone()))
            .or_default();
        add(a, &s);
    }
    out
}

fn add(a: &mut Agg, s: &ServiceStats) {
    a.active += s.active.load(Ordering::Relaxed);
    a.connections += s.attempts();
    a.to_ep += s.bytes_to_endpoint.load(Ordering::Relaxed);
    a.to_cl += s.bytes_to_client.load(Ordering::Relaxed);
    if let Some(f) = s.last_failure() {
        if a.last_failure.is_none_or(|old| old.0 < f.0) {
            a.last_failure = Some(f);
        }
    }
}

/// An exposed headless Service: reached by its pods' names and addresses, not a ClusterIP.
/// How many pods it has (by name), counted as the DNS server answers them (ready, else
/// serving); `None` for any other Service.
fn headless_pods(s: &ServiceEntry, names: &NameTable) -> Option<usize> {
    if s.not_exposed != Some(NotExposed::Headless) {
        return None;
    }
    names.service(&s.id.namespace, &s.id.name).map(|n| {
        // A dual-stack pod has an address of each family under one name.
        let pods: BTreeSet<&str> = n.endpoints().iter().map(|e| e.label.as_str()).collect();
        pods.len()
    })
}

fn row(s: &ServiceEntry, names: &NameTable, agg: Option<&Agg>, rate: f64) -> ServiceRow {
    let mut ports: Vec<String> = Vec::new();
    for p in &s.ports {
        let label = format!("{}/{}", p.port, p.protocol);
        if !ports.contains(&label) {
            ports.push(label);
        }
    }
    ports.extend(
        s.unsupported_ports
            .iter()
            .map(|u| format!("{u} (unsupported)")),
    );
    let (state, reason) = match (&s.not_exposed, headless_pods(s, names)) {
        (_, Some(0)) => (
            "no_endpoints",
            Some(
                "headless: no ready or serving pod, so no name answers and nothing to reach".into(),
            ),
        ),
        (_, Some(pods)) => (
            "headless",
            Some(format!(
                "headless: its {pods} pods are reached by their names and addresses (DNS, --pod-cidr)"
            )),
        ),
        (Some(n), None) => ("not_exposed", Some(not_exposed_reason(n))),
        (None, _) if s.ports.is_empty() => ("no_endpoints", Some("no supported port".into())),
        (None, _) if s.ports.iter().all(|p| p.usable.is_empty()) => (
            "no_endpoints",
            Some("no ready or serving endpoint: connections are refused".into()),
        ),
        (None, _) => ("serving", None),
    };
    let a = agg.cloned().unwrap_or_default();
    ServiceRow {
        namespace: s.id.namespace.clone(),
        name: s.id.name.clone(),
        type_: s.type_.clone(),
        cluster_ips: s.cluster_ips.clone(),
        ports,
        state,
        reason,
        endpoints: endpoint_counts(s),
        active_flows: a.active,
        conn_rate: (rate * 100.0).round() / 100.0,
        connections: a.connections,
        bytes_to_endpoint: a.to_ep,
        bytes_to_client: a.to_cl,
        last_failure: a
            .last_failure
            .map(|(at, r)| json!({"at": unix_ms(at), "result": r.label()})),
        not_routed: Vec::new(),
    }
}

fn matches(s: &ServiceEntry, q: &str) -> bool {
    if q.is_empty() {
        return true;
    }
    let id = format!("{}/{}", s.id.namespace, s.id.name).to_lowercase();
    if id.contains(q) {
        return true;
    }
    s.cluster_ips.iter().any(|ip| {
        ip.to_string().contains(q)
            || s.ports
                .iter()
                .any(|p| format!("{ip}:{}", p.port).contains(q))
    })
}

/// `/api/v1/services`.
pub fn services(status: &Status, query: &ServicesQuery) -> Value {
    let table = status.table.load();
    let q = query.q.as_deref().unwrap_or("").trim().to_lowercase();
    let aggs = aggregates(status);
    let rates = status.rates();
    let mut not_routed = not_routed_by_service(status);
    let mut rows: Vec<ServiceRow> = table
        .services
        .iter()
        .filter(|s| matches(s, &q))
        .map(|s| {
            let key = (s.id.namespace.clone(), s.id.name.clone());
            let mut r = row(
                s,
                &table.names,
                aggs.get(&key),
                rates.get(&key).copied().unwrap_or_default(),
            );
            r.not_routed = not_routed.remove(&key).unwrap_or_default();
            r
        })
        .filter(|r| match query.state.as_deref() {
            Some("not_routed") => !r.not_routed.is_empty(),
            Some("serving") => r.state == "serving",
            Some("headless") => r.state == "headless",
            Some("unservable") => r.state != "serving" && r.state != "headless",
            Some("not_exposed") => r.state == "not_exposed",
            Some("no_endpoints") => r.state == "no_endpoints",
            _ => true,
        })
        .collect();
    let desc = query.order.as_deref() == Some("desc");
    let key = query.sort.as_deref().unwrap_or("name");
    // The table is sorted by name already; a stable sort keeps that as the tie-break.
    match key {
        "endpoints" => rows.sort_by_key(|r| (r.endpoints.ready, r.endpoints.total)),
        "flows" => rows.sort_by_key(|r| r.active_flows),
        "rate" => rows.sort_by(|a, b| a.conn_rate.total_cmp(&b.conn_rate)),
        "connections" => rows.sort_by_key(|r| r.connections),
        "bytes" => rows.sort_by_key(|r| r.bytes_to_endpoint + r.bytes_to_client),
        "failure" => rows.sort_by_key(|r| {
            r.last_failure
                .as_ref()
                .and_then(|f| f["at"].as_u64())
                .unwrap_or(0)
        }),
        "state" => rows.sort_by_key(|r| match r.state {
            "no_endpoints" => 0,
            "not_exposed" => 1,
            "headless" => 2,
            _ => 3,
        }),
        _ => {}
    }
    if desc {
        rows.reverse();
    }
    let matched = rows.len();
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let offset = query.offset.unwrap_or(0).min(matched);
    let items: Vec<ServiceRow> = rows.into_iter().skip(offset).take(limit).collect();
    let unservable = table
        .services
        .iter()
        .filter(|s| {
            let headless = headless_pods(s, &table.names).is_some_and(|n| n > 0);
            !headless && (s.not_exposed.is_some() || s.ports.iter().all(|p| p.usable.is_empty()))
        })
        .count();
    json!({
        "generation": table.generation,
        "total": table.services.len(),
        "unservable": unservable,
        "matched": matched,
        "offset": offset,
        "limit": limit,
        "items": items,
    })
}

fn flow_json(f: &FlowInfo, now: SystemTime) -> Value {
    json!({
        "id": f.id,
        "protocol": f.protocol.label(),
        "client": f.client.to_string(),
        "frontend": f.frontend.to_string(),
        "service": f.service.to_string(),
        "endpoint": f.endpoint.to_string(),
        "started": unix_ms(f.started),
        "age_s": now.duration_since(f.started).map_or(0.0, |d| d.as_secs_f64()),
        "to_endpoint": f.to_endpoint.load(Ordering::Relaxed),
        "to_client": f.to_client.load(Ordering::Relaxed),
    })
}

/// Live flows, newest first, optionally of one Service (`namespace/name`).
pub fn flows(status: &Status, service: Option<&str>, limit: usize) -> Value {
    let mut all: Vec<Arc<FlowInfo>> = status.stats.flows.snapshot();
    if let Some(s) = service {
        all.retain(|f| f.service.to_string() == s);
    }
    all.sort_by(|a, b| b.started.cmp(&a.started).then(b.id.cmp(&a.id)));
    let now = SystemTime::now();
    let total = all.len();
    let items: Vec<Value> = all
        .iter()
        .take(limit.clamp(1, MAX_LIMIT))
        .map(|f| flow_json(f, now))
        .collect();
    json!({"total": total, "items": items})
}

/// `/api/v1/services/{ns}/{name}`, or `None` when the table has no such Service.
pub fn service(status: &Status, ns: &str, name: &str) -> Option<Value> {
    let table = status.table.load();
    let s = table.service(ns, name)?;
    let key = (ns.to_string(), name.to_string());
    let mut agg = Agg::default();
    let mut per_port = Vec::new();
    for (k, st) in status.stats.services.snapshot() {
        if k.service.namespace == ns && k.service.name == name {
            add(&mut agg, &st);
            let results: serde_json::Map<String, Value> = ConnResult::ALL
                .iter()
                .map(|r| (r.label().to_string(), json!(st.count(*r))))
                .collect();
            per_port.push(json!({
                "port": k.port, "protocol": k.protocol.label(),
                "connections": results,
                "active": st.active.load(Ordering::Relaxed),
                "bytes_to_endpoint": st.bytes_to_endpoint.load(Ordering::Relaxed),
                "bytes_to_client": st.bytes_to_client.load(Ordering::Relaxed),
            }));
        }
    }
    let rate = status.rates().get(&key).copied().unwrap_or_default();
    let mut summary = row(s, &table.names, Some(&agg), rate);
    summary.not_routed = not_routed_by_service(status)
        .remove(&key)
        .unwrap_or_default();
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|p| {
            let endpoints: Vec<Value> = p
                .endpoints
                .iter()
                .map(|e| {
                    json!({
                        "address": e.addr.to_string(),
                        "pod": e.pod, "node": e.node,
                        "ready": e.conditions.ready,
                        "serving": e.conditions.serving,
                        "terminating": e.conditions.terminating,
                        "usable": p.usable.contains(&e.addr),
                    })
                })
                .collect();
            json!({
                "name": p.name,
                "frontend": p.frontend().to_string(),
                "protocol": p.protocol.label(),
                "affinity_timeout_s": p.affinity.map(|d| d.as_secs()),
                "allow_sources": p.allow.as_ref().map(|a| a.iter().map(|n| n.to_string()).collect::<Vec<_>>()),
                "endpoints": endpoints,
                "usable": p.usable.len(),
            })
        })
        .collect();
    let id = format!("{ns}/{name}");
    super::observe::drain_notices(status);
    super::observe::drain_announcements(status);
    let failures: Vec<_> = status
        .events
        .recent(Some(&id), 500)
        .into_iter()
        .filter(|e| {
            matches!(
                e.kind,
                "dial_failed" | "no_endpoints" | "rejected_policy" | "table_full"
            )
        })
        .take(50)
        .collect();
    let events = status.events.recent(Some(&id), 50);
    // A headless Service's pods, as its names resolve to them (reached directly).
    let pods: Vec<Value> = match table.names.service(ns, name) {
        Some(n) if s.not_exposed == Some(NotExposed::Headless) => n
            .endpoints()
            .iter()
            .map(|e| {
                json!({
                    "address": e.ip,
                    "name": e.label,
                    "hostname": e.has_hostname,
                    "pod": e.pod,
                    "ports": e.ports.iter().map(|p| match p.name.as_str() {
                        "" => format!("{}/{}", p.port, p.protocol.label()),
                        named => format!("{}/{} ({named})", p.port, p.protocol.label()),
                    }).collect::<Vec<_>>(),
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(json!({
        "service": summary,
        "ports": ports,
        "pods": pods,
        "counters": per_port,
        "flows": flows(status, Some(&id), 200),
        "failures": failures,
        "events": events,
    }))
}

/// `/api/v1/events`.
pub fn events(status: &Status, service: Option<&str>, limit: usize) -> Value {
    super::observe::drain_notices(status);
    super::observe::drain_announcements(status);
    let items = status.events.recent(service, limit.clamp(1, MAX_LIMIT));
    json!({"items": items})
}

fn sync_json(state: &SyncState) -> Value {
    match state {
        SyncState::Syncing => json!({"state": "syncing"}),
        SyncState::Synced { at } => json!({"state": "synced", "at": unix_ms(*at)}),
        SyncState::Stale { since, error } => {
            json!({"state": "stale", "since": unix_ms(*since), "error": error})
        }
    }
}

/// `/api/v1/status`: the header, totals and chart history.
pub fn status(status: &Status, with_history: bool) -> Value {
    let table = status.table.load();
    let state = status.sync.state.borrow().clone();
    let readiness = status
        .health
        .readiness(&state, table.generation, SystemTime::now());
    let (routes_ok, routes, route_error) = status.health.routes();
    let stats = &status.stats;
    let results = |tcp: bool| -> serde_json::Map<String, Value> {
        ConnResult::ALL
            .iter()
            .map(|r| {
                let n = if tcp {
                    stats.tcp_count(*r)
                } else {
                    stats.udp_count(*r)
                };
                (r.label().to_string(), json!(n))
            })
            .collect()
    };
    let (history, latest) = {
        let s = status.samples.lock().unwrap_or_else(|e| e.into_inner());
        let history = with_history.then(|| s.history.iter().copied().collect::<Vec<_>>());
        (history, s.latest())
    };
    let api = match status.source {
        super::SourceKind::Cluster(_) => json!({
            "up": state.label() == "synced",
            "reconnects": crate::cluster::sync::SourceCounters::get(&status.sync.counters.outages),
            "errors": crate::cluster::sync::SourceCounters::get(&status.sync.counters.watch_errors),
        }),
        super::SourceKind::File(_) => Value::Null,
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started": unix_ms(status.started),
        "uptime_s": status.uptime().as_secs(),
        "auth": status.token.is_some(),
        "source": {"kind": status.source.label(), "detail": status.source.detail()},
        "sync": sync_json(&state),
        "api": api,
        "tun": {"name": status.health.tun_name, "up": status.health.tun().is_ok()},
        "dataplane": status.health.dataplane(),
        "routes": {
            "ok": routes_ok, "installed": routes, "error": route_error,
            "not_routed": status.health.not_routed().iter()
                .map(|n| json!({"ip": n.ip, "service": n.service.to_string(),
                                "reason": n.reason.label(), "detail": n.to_string()}))
                .collect::<Vec<_>>(),
        },
        "announce": {
            "draining": status.health.draining(),
            "changes": status.health.announce.changes_total(),
            "prefixes": status.health.announce.prefixes(),
        },
        "ready": readiness,
        "table": {
            "generation": table.generation,
            "services": table.services.len(),
            "exposed": table.services.iter().filter(|s| s.not_exposed.is_none()).count(),
            "ports": table.ports().count(),
        },
        "totals": {
            "active_tcp": stats.tcp_active.load(Ordering::Relaxed),
            "active_udp": stats.udp_active_now(),
            "max_tcp": status.max_tcp_flows,
            "max_udp": status.max_udp_flows,
            "tcp": results(true),
            "udp": results(false),
            "packets_in": stats.packets_in.load(Ordering::Relaxed),
            "packets_out": stats.packets_out.load(Ordering::Relaxed),
        },
        "latest": latest,
        "history": history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::sync::SyncStatus;
    use crate::cluster::table::{
        Conditions, Endpoint, Protocol, ServiceId, ServicePort, ServiceTable,
    };
    use crate::dataplane::stats::Stats;
    use crate::web::health::Health;
    use arc_swap::ArcSwap;
    use std::time::{Duration, Instant};

    /// `n` Services `ns-{i % 50}/svc-{i}`; every tenth has no endpoint.
    fn status_with(n: usize) -> Arc<Status> {
        let services = (0..n)
            .map(|i| {
                let id = Arc::new(ServiceId {
                    namespace: format!("ns-{}", i % 50),
                    name: format!("svc-{i:05}"),
                });
                let ip: IpAddr = format!("10.96.{}.{}", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap();
                let endpoints: Vec<Endpoint> = if i % 10 == 0 {
                    vec![]
                } else {
                    vec![Endpoint {
                        addr: format!("10.244.{}.{}:8080", i / 250, i % 250 + 1)
                            .parse()
                            .unwrap(),
                        conditions: Conditions {
                            ready: true,
                            serving: true,
                            terminating: false,
                        },
                        pod: Some(format!("pod-{i}")),
                        node: None,
                    }]
                };
                let usable = endpoints.iter().map(|e| e.addr).collect();
                ServiceEntry {
                    id: id.clone(),
                    cluster_ips: vec![ip],
                    type_: "ClusterIP".into(),
                    ports: vec![Arc::new(ServicePort {
                        service: id,
                        name: "http".into(),
                        protocol: Protocol::Tcp,
                        cluster_ip: ip,
                        port: 80,
                        endpoints,
                        usable,
                        affinity: None,
                        allow: None,
                    })],
                    not_exposed: None,
                    unsupported_ports: vec![],
                }
            })
            .collect();
        let table = ServiceTable::new(1, services, vec![]);
        Status::new(
            Arc::new(ArcSwap::from_pointee(table)),
            Arc::new(Stats::default()),
            SyncStatus::synced_now().1,
            super::super::SourceKind::File("t.yaml".into()),
            Arc::new(Health::new("lo", Duration::from_secs(60))),
            None,
            1,
            1,
        )
    }

    fn query(q: &str, state: Option<&str>, sort: &str, order: &str) -> ServicesQuery {
        ServicesQuery {
            q: Some(q.into()),
            state: state.map(Into::into),
            sort: Some(sort.into()),
            order: Some(order.into()),
            limit: Some(50),
            offset: Some(0),
        }
    }

    #[test]
    fn ten_thousand_services_are_filtered_sorted_and_paged_on_the_server() {
        let status = status_with(10_000);
        let start = Instant::now();
        let all = services(&status, &query("", None, "name", "asc"));
        assert_eq!(all["total"], 10_000);
        assert_eq!(all["matched"], 10_000);
        assert_eq!(all["unservable"], 1_000);
        assert_eq!(all["items"].as_array().unwrap().len(), 50);
        assert_eq!(all["items"][0]["name"], "svc-00000");
        let page = services(
            &status,
            &ServicesQuery {
                offset: Some(9_990),
                ..query("", None, "name", "asc")
            },
        );
        assert_eq!(page["items"].as_array().unwrap().len(), 10);
        let one = services(&status, &query("ns-7/svc-0100", None, "name", "asc"));
        assert_eq!(one["matched"], 1);
        assert_eq!(one["items"][0]["name"], "svc-01007");
        let by_ip = services(&status, &query("10.96.4.11:80", None, "name", "asc"));
        assert_eq!(by_ip["items"][0]["name"], "svc-01010");
        let bad = services(&status, &query("", Some("unservable"), "name", "desc"));
        assert_eq!(bad["matched"], 1_000);
        assert_eq!(bad["items"][0]["name"], "svc-09990");
        assert_eq!(bad["items"][0]["state"], "no_endpoints");
        let took = start.elapsed();
        // Five full passes over 10,000 Services; generous for an unoptimised build.
        assert!(took < Duration::from_secs(5), "{took:?}");
        eprintln!("5 queries over 10,000 Services: {took:?}");
    }
}
