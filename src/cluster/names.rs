//! Names: what the DNS server may answer and which pod addresses may be reached directly,
//! computed by the control plane into the snapshot ([`super::table::ServiceTable::names`]).
//!
//! Owns the [`NameTable`], built from the same Services, EndpointSlices and policy as the
//! dataplane's entries, by the file build and the watch alike:
//! - a Service the policy exposes with a ClusterIP: its ClusterIPs and ports;
//! - a headless Service (`clusterIP: None`) the policy exposes: its endpoints — the ready
//!   ones, or when none is ready the serving + terminating ones, as for traffic — each with
//!   its DNS label (the endpoint's `hostname`, as StatefulSet pods have, else its address
//!   with dots or colons as dashes) and its slice's ports;
//! - an ExternalName Service the policy exposes: its target name;
//! - nothing for a Service that is not exposed (policy, another proxy, invalid): it has no
//!   name, exactly as it has no route.
//!
//! It knows nothing of the DNS zone or the wire format (that is `crate::dns`), and nothing
//! here changes the dataplane's view of Services that have a ClusterIP.
//!
//! Pure: no I/O, no tokio.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;

use super::build::SliceInfo;
use super::policy::Policy;
use super::table::{Conditions, NotExposed, Protocol, ServiceEntry, ServiceId};

/// A port of a Service (ClusterIP) or of an endpoint (headless), as SRV records show it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    /// "" when unnamed (then it has no SRV record).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint of a headless Service that names resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadlessEndpoint {
    pub ip: IpAddr,
    /// Its DNS label under the Service: `hostname` when the endpoint has a valid one, else
    /// the address with `.`/`:` written as `-` (`10-244-1-5`).
    pub label: String,
    /// Whether `label` is the endpoint's own hostname (a StatefulSet pod).
    pub has_hostname: bool,
    pub pod: Option<String>,
    /// The ports of its EndpointSlice (target ports), sorted.
    pub ports: Vec<NamedPort>,
}

/// What a Service's name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameKind {
    /// `svc.ns.svc.ZONE` → the ClusterIPs; ports are the Service's (deduplicated across
    /// families, sorted).
    ClusterIp {
        ips: Vec<IpAddr>,
        ports: Vec<NamedPort>,
    },
    /// `svc.ns.svc.ZONE` → the usable endpoints, sorted by address.
    Headless { endpoints: Vec<HeadlessEndpoint> },
    /// `svc.ns.svc.ZONE` → CNAME to this name (checked to be a valid DNS name, no
    /// trailing dot).
    ExternalName { target: String },
}

/// The names of one exposed Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNames {
    pub id: Arc<ServiceId>,
    pub kind: NameKind,
    /// Clients allowed to resolve (and reach) it, as for its traffic; `None`: any.
    pub allow: Option<Arc<[IpNet]>>,
}

impl ServiceNames {
    /// Whether a client at `src` may see this Service's names.
    pub fn allows(&self, src: IpAddr) -> bool {
        match &self.allow {
            None => true,
            Some(nets) => nets.iter().any(|n| n.contains(&src)),
        }
    }

    /// The headless endpoints (empty for other kinds).
    pub fn endpoints(&self) -> &[HeadlessEndpoint] {
        match &self.kind {
            NameKind::Headless { endpoints } => endpoints,
            _ => &[],
        }
    }
}

/// What an address maps back to (PTR): a Service's ClusterIP, or an endpoint of a
/// headless Service (with its label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reverse {
    pub service: Arc<ServiceNames>,
    /// `Some(label)` for a headless endpoint, `None` for a ClusterIP.
    pub label: Option<String>,
}

/// Every exposed name of a snapshot, indexed for the DNS server and the dataplane.
#[derive(Debug, Default)]
pub struct NameTable {
    services: HashMap<(String, String), Arc<ServiceNames>>,
    namespaces: HashMap<String, Vec<Arc<ServiceNames>>>,
    by_ip: HashMap<IpAddr, Vec<Reverse>>,
}

impl NameTable {
    /// Indexes the names of exposed Services (the first of two with one id wins).
    pub fn from_services(list: Vec<Arc<ServiceNames>>) -> NameTable {
        let mut table = NameTable::default();
        for names in list {
            let key = (names.id.namespace.clone(), names.id.name.clone());
            if table.services.contains_key(&key) {
                continue;
            }
            match &names.kind {
                NameKind::ClusterIp { ips, .. } => {
                    for ip in ips {
                        table.by_ip.entry(*ip).or_default().push(Reverse {
                            service: names.clone(),
                            label: None,
                        });
                    }
                }
                NameKind::Headless { endpoints } => {
                    for ep in endpoints {
                        table.by_ip.entry(ep.ip).or_default().push(Reverse {
                            service: names.clone(),
                            label: Some(ep.label.clone()),
                        });
                    }
                }
                NameKind::ExternalName { .. } => {}
            }
            table
                .namespaces
                .entry(key.0.clone())
                .or_default()
                .push(names.clone());
            table.services.insert(key, names);
        }
        for list in table.by_ip.values_mut() {
            list.sort_by(|a, b| a.service.id.cmp(&b.service.id).then(a.label.cmp(&b.label)));
        }
        table
    }

    /// The names of an exposed Service.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceNames>> {
        // Kubernetes names are lowercase DNS labels; the caller lowercases the query.
        self.services
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// The exposed Services of a namespace (empty when it has none).
    pub fn namespace(&self, namespace: &str) -> &[Arc<ServiceNames>] {
        self.namespaces.get(namespace).map_or(&[], Vec::as_slice)
    }

    /// What `ip` maps back to, sorted by Service.
    pub fn reverse(&self, ip: IpAddr) -> &[Reverse] {
        self.by_ip.get(&ip).map_or(&[], Vec::as_slice)
    }

    /// The exposed headless Services that `ip` is a usable endpoint of: the dataplane
    /// forwards traffic to such a pod address (to clients any of them allows).
    pub fn headless_backend(&self, ip: IpAddr) -> impl Iterator<Item = &Arc<ServiceNames>> {
        self.reverse(ip)
            .iter()
            .filter(|r| r.label.is_some())
            .map(|r| &r.service)
    }

    /// Every exposed Service's names, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ServiceNames>> {
        self.services.values()
    }

    /// Number of exposed Services with names.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// The names of one Service from its object, its built entry (which says whether and how
/// it is exposed) and its slices. `None` when it has no name: not exposed, or an
/// ExternalName without a valid target.
pub(crate) fn service_names(
    svc: &Service,
    entry: &ServiceEntry,
    slices: &[&SliceInfo],
    policy: &Policy,
) -> Option<ServiceNames> {
    let kind = match &entry.not_exposed {
        None => {
            let mut ports: Vec<NamedPort> = entry
                .ports
                .iter()
                .map(|p| NamedPort {
                    name: p.name.clone(),
                    protocol: p.protocol,
                    port: p.port,
                })
                .collect();
            ports.sort();
            ports.dedup();
            NameKind::ClusterIp {
                ips: entry.cluster_ips.clone(),
                ports,
            }
        }
        Some(NotExposed::Headless) => NameKind::Headless {
            endpoints: headless_endpoints(slices),
        },
        Some(NotExposed::ExternalName) => {
            let target = svc.spec.as_ref()?.external_name.as_deref()?;
            let target = target.strip_suffix('.').unwrap_or(target);
            if !valid_dns_name(target) {
                return None;
            }
            NameKind::ExternalName {
                target: target.to_ascii_lowercase(),
            }
        }
        // Not exposed by policy, another proxy's, or invalid: no name.
        Some(_) => return None,
    };
    // The same decision `build` took; only the allowed sources are read here.
    let allow = policy
        .evaluate(
            &entry.id.namespace,
            svc.metadata.labels.as_ref(),
            svc.metadata.annotations.as_ref(),
        )
        .allow;
    Some(ServiceNames {
        id: entry.id.clone(),
        kind,
        allow,
    })
}

/// Endpoints merged across slices (an address listed twice keeps its best conditions and
/// all its ports), then kube-proxy's choice: the ready ones, or when none is ready the
/// serving + terminating ones.
fn headless_endpoints(slices: &[&SliceInfo]) -> Vec<HeadlessEndpoint> {
    let mut merged: HashMap<IpAddr, (Conditions, HeadlessEndpoint)> = HashMap::new();
    for slice in slices {
        let ports: Vec<NamedPort> = slice
            .name_ports()
            .map(|(name, protocol, port)| NamedPort {
                name: name.to_string(),
                protocol,
                port,
            })
            .collect();
        for (ip, conditions, hostname, pod) in slice.name_endpoints() {
            let (label, has_hostname) = match hostname.filter(|h| valid_label(h)) {
                Some(h) => (h.to_ascii_lowercase(), true),
                None => (dashed(ip), false),
            };
            let slot = merged.entry(ip).or_insert_with(|| {
                (
                    conditions,
                    HeadlessEndpoint {
                        ip,
                        label: label.clone(),
                        has_hostname,
                        pod: pod.map(str::to_string),
                        ports: Vec::new(),
                    },
                )
            });
            if rank(conditions) < rank(slot.0) {
                slot.0 = conditions;
                slot.1.label = label;
                slot.1.has_hostname = has_hostname;
            }
            slot.1.ports.extend(ports.iter().cloned());
        }
    }
    let mut all: Vec<(Conditions, HeadlessEndpoint)> = merged.into_values().collect();
    for (_, ep) in &mut all {
        ep.ports.sort();
        ep.ports.dedup();
    }
    all.sort_by_key(|(_, ep)| ep.ip);
    let any_ready = all.iter().any(|(c, _)| c.ready);
    all.into_iter()
        .filter(|(c, _)| {
            if any_ready {
                c.ready
            } else {
                c.serving && c.terminating
            }
        })
        .map(|(_, ep)| ep)
        .collect()
}

/// Lower is better: ready, then serving, then not terminating.
fn rank(c: Conditions) -> (bool, bool, bool) {
    (!c.ready, !c.serving, c.terminating)
}

/// `10.244.1.5` → `10-244-1-5`; `fd00::5` → `fd00--5` (as cluster DNS writes them).
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// An RFC 1123 label: 1–63 of `a-z`, `0-9`, `-`, starting and ending alphanumeric.
pub fn valid_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A host name fit for a CNAME target: at most 253 characters of labels of 1–63 letters,
/// digits, `-` or `_`.
pub fn valid_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::build::{build_table, build_table_with, BuildOptions};
    use crate::cluster::parse::parse_objects;

    const FIXTURE: &str = include_str!("../../tests/fixtures/cluster-snapshot.yaml");

    /// A StatefulSet-style headless Service `shop/pg` with two named pods (one not ready),
    /// a third pod only serving + terminating, and an IPv6 slice for pg-0.
    pub(crate) const STATEFUL: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: pg, namespace: shop}
spec:
  clusterIP: None
  ports: [{name: sql, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: pg-v4
  namespace: shop
  labels: {kubernetes.io/service-name: pg}
addressType: IPv4
ports: [{name: sql, port: 5432, protocol: TCP}]
endpoints:
- addresses: [10.244.2.10]
  hostname: pg-0
  conditions: {ready: true}
  targetRef: {kind: Pod, name: pg-0, namespace: shop}
- addresses: [10.244.2.11]
  hostname: pg-1
  conditions: {ready: false, serving: false}
  targetRef: {kind: Pod, name: pg-1, namespace: shop}
- addresses: [10.244.2.12]
  hostname: "Not_A_Label"
  conditions: {ready: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: pg-v6
  namespace: shop
  labels: {kubernetes.io/service-name: pg}
addressType: IPv6
ports: [{name: sql, port: 5432, protocol: TCP}]
endpoints:
- addresses: ["fd00:10:244::10"]
  hostname: pg-0
"#;

    fn names_of(text: &str, policy: &Policy) -> Arc<NameTable> {
        let objs = parse_objects("t.yaml", text).expect("parses");
        build_table_with(1, &objs, &BuildOptions::default(), policy)
            .0
            .names
    }

    #[test]
    fn fixture_clusterip_headless_and_externalname() {
        let t = names_of(FIXTURE, &Policy::default());
        let web = t.service("shop", "web").expect("web has a name");
        let NameKind::ClusterIp { ips, ports } = &web.kind else {
            panic!("web is a ClusterIP Service: {web:?}");
        };
        // Dual-stack: both families.
        let want: Vec<IpAddr> = vec![
            "10.96.62.173".parse().unwrap(),
            "fd00:10:96::992d".parse().unwrap(),
        ];
        assert_eq!(ips, &want);
        assert!(ports.iter().any(|p| p.name == "http" && p.port == 80));

        let db = t.service("shop", "db").expect("headless db has a name");
        let eps = db.endpoints();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].ip, "10.244.1.51".parse::<IpAddr>().unwrap());
        assert_eq!(eps[0].label, "10-244-1-51");
        assert!(!eps[0].has_hostname);
        assert_eq!(eps[0].ports[0].name, "pg");

        let legacy = t
            .service("shop", "legacy")
            .expect("ExternalName has a name");
        assert_eq!(
            legacy.kind,
            NameKind::ExternalName {
                target: "legacy.example.com".into()
            }
        );
        // Reverse: a ClusterIP and a headless endpoint.
        let r = t.reverse("10.96.62.173".parse().unwrap());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].label, None);
        let r = t.reverse("10.244.1.51".parse().unwrap());
        assert_eq!(r[0].label.as_deref(), Some("10-244-1-51"));
        assert_eq!(
            t.headless_backend("10.244.1.51".parse().unwrap()).count(),
            1
        );
        // A pod of a ClusterIP Service is not a headless backend.
        assert_eq!(
            t.headless_backend("10.96.62.173".parse().unwrap()).count(),
            0
        );
        assert!(!t.namespace("shop").is_empty());
        assert!(t.namespace("nowhere").is_empty());
    }

    #[test]
    fn statefulset_hostnames_ready_first_and_both_families() {
        let t = names_of(&format!("{FIXTURE}{STATEFUL}"), &Policy::default());
        let pg = t.service("shop", "pg").expect("pg");
        let got: Vec<(String, String)> = pg
            .endpoints()
            .iter()
            .map(|e| (e.label.clone(), e.ip.to_string()))
            .collect();
        // pg-1 is not ready (and not serving): left out while others are ready; an invalid
        // hostname falls back to the dashed address.
        assert_eq!(
            got,
            vec![
                ("pg-0".to_string(), "10.244.2.10".to_string()),
                ("10-244-2-12".to_string(), "10.244.2.12".to_string()),
                ("pg-0".to_string(), "fd00:10:244::10".to_string()),
            ]
        );
        assert!(pg.endpoints()[0].has_hostname);
        assert_eq!(pg.endpoints()[0].pod.as_deref(), Some("pg-0"));
    }

    #[test]
    fn serving_terminating_fallback_when_none_is_ready() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: h, namespace: a}
spec: {clusterIP: None}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: h-1, namespace: a, labels: {kubernetes.io/service-name: h}}
addressType: IPv4
endpoints:
- addresses: [10.1.0.1]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.1.0.2]
  conditions: {ready: false, serving: false, terminating: true}
"#;
        let t = names_of(text, &Policy::default());
        let ips: Vec<String> = t
            .service("a", "h")
            .unwrap()
            .endpoints()
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(ips, vec!["10.1.0.1"]);
    }

    #[test]
    fn policy_applies_to_names() {
        let mut policy = Policy::default();
        policy.exclude_namespaces.insert("monitoring".into());
        policy.allow_sources = Some(vec!["192.168.0.0/16".parse().unwrap()]);
        let t = names_of(&format!("{FIXTURE}{STATEFUL}"), &policy);
        assert!(t.service("monitoring", "grafana").is_none());
        let pg = t.service("shop", "pg").unwrap();
        assert!(pg.allows("192.168.1.50".parse().unwrap()));
        assert!(!pg.allows("10.9.9.9".parse().unwrap()));
        // An opted-out headless Service has no name and its pods are no backends.
        let opted_out = STATEFUL.replace(
            "metadata: {name: pg, namespace: shop}",
            "metadata: {name: pg, namespace: shop, annotations: {clusterway.io/expose: \"false\"}}",
        );
        let t = names_of(&opted_out, &Policy::default());
        assert!(t.service("shop", "pg").is_none());
        assert_eq!(
            t.headless_backend("10.244.2.10".parse().unwrap()).count(),
            0
        );
    }

    #[test]
    fn other_proxy_and_bad_external_name_have_no_name() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: x, namespace: a, labels: {service.kubernetes.io/service-proxy-name: other}}
spec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: a}
spec: {type: ExternalName, externalName: "bad name..example"}
"#;
        let objs = parse_objects("t.yaml", text).unwrap();
        let t = build_table(1, &objs, &BuildOptions::default()).0.names;
        assert!(t.service("a", "x").is_none());
        assert!(t.service("a", "ext").is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn the_watch_builds_the_same_names_as_the_file() {
        use crate::cluster::incremental::Incremental;
        let objs = parse_objects("t.yaml", &format!("{FIXTURE}{STATEFUL}")).unwrap();
        let whole = build_table(1, &objs, &BuildOptions::default()).0.names;
        let mut inc = Incremental::new(BuildOptions::default(), Policy::default());
        inc.replace_services(objs.services.clone());
        inc.replace_slices(objs.slices.clone());
        inc.flush();
        let t = inc.snapshot(1).names.clone();
        assert_eq!(t.len(), whole.len());
        for n in whole.iter() {
            assert_eq!(t.service(&n.id.namespace, &n.id.name), Some(n), "{}", n.id);
        }
        // A slice going away takes the endpoint's name with it.
        inc.delete_slice("shop", "pg-v6");
        inc.flush();
        let t = inc.snapshot(2).names.clone();
        assert_eq!(t.service("shop", "pg").unwrap().endpoints().len(), 2);
        inc.delete_service("shop", "pg");
        inc.flush();
        assert!(inc.snapshot(3).names.service("shop", "pg").is_none());
    }

    #[test]
    fn headless_pods_are_reachable_on_their_ports_and_other_pods_refused() {
        use crate::cluster::table::{Lookup, Protocol};
        let objs = parse_objects("t.yaml", &format!("{FIXTURE}{STATEFUL}")).unwrap();
        let mut t = build_table(1, &objs, &BuildOptions::default()).0;
        let pod0: IpAddr = "10.244.2.10".parse().unwrap();
        match t.lookup(pod0, 5432, Protocol::Tcp) {
            Lookup::Port(p) => {
                assert_eq!(p.usable, vec!["10.244.2.10:5432".parse().unwrap()]);
                assert_eq!(p.service.name, "pg");
                assert_eq!(p.name, "sql");
            }
            other => panic!("{other:?}"),
        }
        // The IPv6 endpoint too; the not-ready pod-1 is not a backend.
        assert!(matches!(
            t.lookup("fd00:10:244::10".parse().unwrap(), 5432, Protocol::Tcp),
            Lookup::Port(_)
        ));
        // Another port of a backend pod: refused; the not-ready pod: unknown.
        assert!(matches!(
            t.lookup(pod0, 22, Protocol::Tcp),
            Lookup::UnknownPort
        ));
        let pod1: IpAddr = "10.244.2.11".parse().unwrap();
        assert!(matches!(
            t.lookup(pod1, 5432, Protocol::Tcp),
            Lookup::NotService
        ));
        // With the pod range routed here, any other pod address is refused.
        t.pod_cidrs = vec!["10.244.0.0/16".parse().unwrap()].into();
        assert!(matches!(
            t.lookup(pod1, 5432, Protocol::Tcp),
            Lookup::UnknownPort
        ));
        // A pod of a ClusterIP Service (web's 10.244.1.x) is not reachable directly.
        assert!(matches!(
            t.lookup("10.244.1.21".parse().unwrap(), 8080, Protocol::Tcp),
            Lookup::UnknownPort
        ));
        assert!(matches!(
            t.lookup("192.0.2.1".parse().unwrap(), 80, Protocol::Tcp),
            Lookup::NotService
        ));
        // Pod ports do not show up as Service ports.
        assert!(t.ports().all(|p| p.service.name != "pg"));
    }

    #[test]
    fn label_and_name_checks() {
        assert!(valid_label("pg-0"));
        assert!(!valid_label("-a"));
        assert!(!valid_label("a_b"));
        assert!(!valid_label(&"a".repeat(64)));
        assert!(valid_dns_name("legacy.example.com"));
        assert!(!valid_dns_name("a..b"));
        assert_eq!(dashed("fd00::5".parse().unwrap()), "fd00--5");
    }
}
