//! Recent events for people: endpoints added and removed (a diff of consecutive tables),
//! Services added and removed, table reloads, sync state changes and watch reconnects, and
//! the dataplane's notices (dial failures, refused flows). A bounded ring; the sampler and
//! the handlers take its lock, the dataplane never does.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use serde::Serialize;

use crate::cluster::table::{ServiceEntry, ServiceTable};

/// Events kept.
pub const RING: usize = 2000;
/// Most events one table change produces; the rest is summarised in one line.
const MAX_PER_DIFF: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: u64,
    /// Unix milliseconds.
    pub at: u64,
    pub level: Level,
    /// `endpoint_added`, `endpoint_removed`, `endpoint_changed`, `service_added`,
    /// `service_removed`, `reload`, `sync`, `watch_reconnect`, `dial_failed`,
    /// `no_endpoints`, `rejected_policy`, `table_full`, `dns_failed`, `route` (a prefix
    /// announced, withdrawn or draining).
    pub kind: &'static str,
    /// `namespace/name` when the event concerns one Service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct EventLog {
    ring: Mutex<VecDeque<Event>>,
}

impl EventLog {
    /// Append an event; returns it with its sequence number.
    pub fn push(
        &self,
        at: u64,
        level: Level,
        kind: &'static str,
        service: Option<String>,
        message: String,
    ) -> Event {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let seq = ring.back().map_or(1, |e| e.seq + 1);
        if ring.len() >= RING {
            ring.pop_front();
        }
        let ev = Event {
            seq,
            at,
            level,
            kind,
            service,
            message,
        };
        ring.push_back(ev.clone());
        ev
    }

    /// The newest events first, optionally of one Service, at most `limit`.
    pub fn recent(&self, service: Option<&str>, limit: usize) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .rev()
            .filter(|e| service.is_none() || e.service.as_deref() == service)
            .take(limit)
            .cloned()
            .collect()
    }
}

/// An endpoint as the diff sees it: address and condition summary.
fn endpoint_states(svc: &ServiceEntry) -> BTreeMap<IpAddr, (bool, bool, bool, Option<String>)> {
    let mut out = BTreeMap::new();
    for p in &svc.ports {
        for e in &p.endpoints {
            let c = e.conditions;
            out.insert(
                e.addr.ip(),
                (c.ready, c.serving, c.terminating, e.pod.clone()),
            );
        }
    }
    out
}

fn describe(ip: IpAddr, pod: &Option<String>) -> String {
    match pod {
        Some(p) => format!("{ip} ({p})"),
        None => ip.to_string(),
    }
}

fn conditions(ready: bool, serving: bool, terminating: bool) -> String {
    let mut parts = vec![if ready { "ready" } else { "not ready" }];
    if serving && !ready {
        parts.push("serving");
    }
    if terminating {
        parts.push("terminating");
    }
    parts.join(", ")
}

/// What changed between two tables, as `(level, kind, service, message)`.
pub fn diff(
    old: &ServiceTable,
    new: &ServiceTable,
) -> Vec<(Level, &'static str, Option<String>, String)> {
    let mut out = Vec::new();
    let old_ids: BTreeSet<_> = old.services.iter().map(|s| s.id.clone()).collect();
    let new_ids: BTreeSet<_> = new.services.iter().map(|s| s.id.clone()).collect();
    let mut skipped = 0usize;
    let mut emit = |out: &mut Vec<_>, item| {
        if out.len() < MAX_PER_DIFF {
            out.push(item);
        } else {
            skipped += 1;
        }
    };
    for svc in &new.services {
        let name = svc.id.to_string();
        let Some(before) = old.service(&svc.id.namespace, &svc.id.name) else {
            let n = endpoint_states(svc).len();
            emit(
                &mut out,
                (
                    Level::Info,
                    "service_added",
                    Some(name),
                    format!("Service added with {n} endpoint(s)"),
                ),
            );
            continue;
        };
        let a = endpoint_states(before);
        let b = endpoint_states(svc);
        for (ip, st) in &b {
            match a.get(ip) {
                None => emit(
                    &mut out,
                    (
                        Level::Info,
                        "endpoint_added",
                        Some(name.clone()),
                        format!(
                            "endpoint {} added ({})",
                            describe(*ip, &st.3),
                            conditions(st.0, st.1, st.2)
                        ),
                    ),
                ),
                Some(prev) if (prev.0, prev.1, prev.2) != (st.0, st.1, st.2) => emit(
                    &mut out,
                    (
                        if st.0 { Level::Info } else { Level::Warn },
                        "endpoint_changed",
                        Some(name.clone()),
                        format!(
                            "endpoint {}: {} → {}",
                            describe(*ip, &st.3),
                            conditions(prev.0, prev.1, prev.2),
                            conditions(st.0, st.1, st.2)
                        ),
                    ),
                ),
                Some(_) => {}
            }
        }
        for (ip, st) in &a {
            if !b.contains_key(ip) {
                emit(
                    &mut out,
                    (
                        Level::Warn,
                        "endpoint_removed",
                        Some(name.clone()),
                        format!("endpoint {} removed", describe(*ip, &st.3)),
                    ),
                );
            }
        }
    }
    for id in old_ids.difference(&new_ids) {
        emit(
            &mut out,
            (
                Level::Warn,
                "service_removed",
                Some(id.to_string()),
                "Service removed".to_string(),
            ),
        );
    }
    if skipped > 0 {
        out.push((
            Level::Info,
            "reload",
            None,
            format!("… and {skipped} more changes in this table"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::{Conditions, Endpoint, Protocol, ServiceId, ServicePort};
    use std::sync::Arc;

    fn table(generation: u64, services: &[(&str, &[(&str, bool)])]) -> ServiceTable {
        let entries = services
            .iter()
            .map(|(name, eps)| {
                let id = Arc::new(ServiceId {
                    namespace: "ns".into(),
                    name: (*name).into(),
                });
                let endpoints: Vec<Endpoint> = eps
                    .iter()
                    .map(|(a, ready)| Endpoint {
                        addr: format!("{a}:80").parse().unwrap(),
                        conditions: Conditions {
                            ready: *ready,
                            serving: *ready,
                            terminating: false,
                        },
                        pod: None,
                        node: None,
                    })
                    .collect();
                ServiceEntry {
                    id: id.clone(),
                    cluster_ips: vec!["10.96.0.1".parse().unwrap()],
                    type_: "ClusterIP".into(),
                    ports: vec![Arc::new(ServicePort {
                        service: id,
                        name: String::new(),
                        protocol: Protocol::Tcp,
                        cluster_ip: "10.96.0.1".parse().unwrap(),
                        port: 80,
                        endpoints,
                        usable: vec![],
                        affinity: None,
                        allow: None,
                    })],
                    not_exposed: None,
                    unsupported_ports: vec![],
                }
            })
            .collect();
        ServiceTable::new(generation, entries, vec![])
    }

    #[test]
    fn diff_reports_endpoint_and_service_changes() {
        let a = table(
            1,
            &[
                ("web", &[("10.0.0.1", true), ("10.0.0.2", true)]),
                ("old", &[]),
            ],
        );
        let b = table(
            2,
            &[
                ("web", &[("10.0.0.2", false), ("10.0.0.3", true)]),
                ("new", &[]),
            ],
        );
        let d = diff(&a, &b);
        let kinds: Vec<(&str, String)> = d
            .iter()
            .map(|(_, k, s, _)| (*k, s.clone().unwrap_or_default()))
            .collect();
        assert!(kinds.contains(&("service_added", "ns/new".into())));
        assert!(kinds.contains(&("service_removed", "ns/old".into())));
        assert!(kinds.contains(&("endpoint_added", "ns/web".into())));
        assert!(kinds.contains(&("endpoint_removed", "ns/web".into())));
        let changed = d.iter().find(|e| e.1 == "endpoint_changed").unwrap();
        assert_eq!(changed.3, "endpoint 10.0.0.2: ready → not ready");
        assert_eq!(d.len(), 5);
        assert!(diff(&b, &b).is_empty());
    }

    #[test]
    fn ring_is_bounded_and_filters_by_service() {
        let log = EventLog::default();
        for i in 0..RING + 10 {
            let svc = (i % 2 == 0).then(|| "ns/a".to_string());
            log.push(i as u64, Level::Info, "reload", svc, format!("{i}"));
        }
        assert_eq!(log.recent(None, usize::MAX).len(), RING);
        let a = log.recent(Some("ns/a"), 3);
        assert_eq!(a.len(), 3);
        assert!(a[0].seq > a[1].seq);
        assert!(a.iter().all(|e| e.service.as_deref() == Some("ns/a")));
    }
}
