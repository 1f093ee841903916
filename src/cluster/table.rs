//! The `ServiceTable`: the one immutable snapshot the control plane publishes and the
//! dataplane reads. It owns nothing mutable and does no I/O; the dataplane looks packets
//! up in it, the status page (later) lists it.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

/// Transport protocols a Service port can be exposed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// EndpointSlice conditions, with `null` already resolved as Kubernetes defines it
/// (`ready: null` means ready; `serving: null` means the value of `ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// One backend of one Service port, target port already resolved for its slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub conditions: Conditions,
    /// `targetRef.name` when it is a Pod.
    pub pod: Option<String>,
    pub node: Option<String>,
}

/// One exposed `ClusterIP:port/protocol`. A dual-stack Service yields one per family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub service: Arc<ServiceId>,
    /// The Service port's name ("" when unnamed).
    pub name: String,
    pub protocol: Protocol,
    pub cluster_ip: IpAddr,
    pub port: u16,
    /// Every endpoint of the matching address family and port, for display.
    pub endpoints: Vec<Endpoint>,
    /// Where traffic goes: ready endpoints, or when none is ready the serving+terminating
    /// ones (kube-proxy's fallback). Sorted and deduplicated. Empty means reject.
    pub usable: Vec<SocketAddr>,
    /// `sessionAffinity: ClientIP` with its timeout.
    pub affinity: Option<Duration>,
    /// Client sources allowed to open new flows (`--allow-source` and the Service's
    /// `clusterway.io/allow-sources`); `None` means any. An empty list refuses everyone.
    pub allow: Option<Arc<[IpNet]>>,
}

#[cfg(test)]
impl ServicePort {
    /// A port for tests: `ns/name`, port name `name`, on `cluster_ip:port`, with `usable`
    /// endpoints (listed as such, nothing else set).
    pub fn for_test(
        ns: &str,
        name: &str,
        protocol: Protocol,
        frontend: &str,
        usable: &[&str],
    ) -> ServicePort {
        let frontend: std::net::SocketAddr = frontend.parse().unwrap();
        ServicePort {
            service: Arc::new(ServiceId {
                namespace: ns.into(),
                name: name.into(),
            }),
            name: name.into(),
            protocol,
            cluster_ip: frontend.ip(),
            port: frontend.port(),
            endpoints: vec![],
            usable: usable.iter().map(|s| s.parse().unwrap()).collect(),
            affinity: None,
            allow: None,
        }
    }
}

impl ServicePort {
    pub fn frontend(&self) -> SocketAddr {
        SocketAddr::new(self.cluster_ip, self.port)
    }

    /// Whether a client at `src` may open a new flow to this port.
    pub fn allows(&self, src: IpAddr) -> bool {
        match &self.allow {
            None => true,
            Some(nets) => nets.iter().any(|n| n.contains(&src)),
        }
    }
}

/// Why a Service from the source is not exposed (shown on the status page, counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotExposed {
    Headless,
    ExternalName,
    /// `service.kubernetes.io/service-proxy-name` names another proxy.
    OtherProxy(String),
    /// Excluded by the operator's policy (namespace, selector, annotation).
    Policy(String),
    /// The object could not be used; the message names the field.
    Invalid(String),
}

/// A Service as the source saw it, exposed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub id: Arc<ServiceId>,
    pub cluster_ips: Vec<IpAddr>,
    pub type_: String,
    /// Exposed ports (all families), or why the Service is not exposed.
    pub ports: Vec<Arc<ServicePort>>,
    pub not_exposed: Option<NotExposed>,
    /// Ports present on the Service but not served (e.g. SCTP), with the reason.
    pub unsupported_ports: Vec<String>,
}

/// Result of looking a packet's destination up.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    /// An exposed Service port.
    Port(&'a Arc<ServicePort>),
    /// The address is an exposed ClusterIP, but not with this port/protocol.
    UnknownPort,
    /// Not a ClusterIP of any exposed Service.
    NotService,
}

type PortKey = (IpAddr, u16, Protocol);

/// The immutable snapshot. Build it with [`ServiceTable::new`]; never mutate a published one.
#[derive(Debug, Default, Clone)]
pub struct ServiceTable {
    /// Increases with every published table.
    pub generation: u64,
    ports: HashMap<PortKey, Arc<ServicePort>>,
    cluster_ips: HashMap<IpAddr, Arc<ServiceId>>,
    /// Every Service the source holds, sorted by id (exposed or not).
    pub services: Vec<ServiceEntry>,
    /// Objects of other kinds that the source held and ignored, by kind.
    pub ignored_kinds: Vec<(String, usize)>,
    /// The cluster's Service CIDRs from `networking.k8s.io/v1` ServiceCIDR objects, when
    /// the source knows them (the API serves them); `None` otherwise (file source, older
    /// clusters), and then `--service-cidr` or per-IP routes apply.
    pub service_cidrs: Option<Vec<IpNet>>,
    /// What the DNS server answers and which pod IPs may be reached directly (headless
    /// Services), policy applied; built next to the entries by the same builder.
    pub names: Arc<super::names::NameTable>,
    /// Ports of pods that back exposed headless Services (see [`ServiceTable::set_names`]):
    /// traffic to `podIP:port` is forwarded to that pod as to a one-endpoint Service.
    pod_ports: HashMap<PortKey, Arc<ServicePort>>,
    /// Pod ranges routed to the gateway (`--pod-cidr`): an address in them that backs no
    /// exposed headless Service port is refused ([`Lookup::UnknownPort`]), not dropped.
    pub pod_cidrs: Arc<[IpNet]>,
}

impl ServiceTable {
    /// Index `services`. Only exposed entries (`not_exposed == None`) are routed.
    pub fn new(
        generation: u64,
        mut services: Vec<ServiceEntry>,
        ignored_kinds: Vec<(String, usize)>,
    ) -> Self {
        services.sort_by(|a, b| a.id.cmp(&b.id));
        let mut ports = HashMap::new();
        let mut cluster_ips = HashMap::new();
        for svc in services.iter().filter(|s| s.not_exposed.is_none()) {
            for ip in &svc.cluster_ips {
                cluster_ips.insert(*ip, svc.id.clone());
            }
            for p in &svc.ports {
                ports.insert((p.cluster_ip, p.port, p.protocol), p.clone());
            }
        }
        ServiceTable {
            generation,
            ports,
            cluster_ips,
            services,
            ignored_kinds,
            service_cidrs: None,
            names: Arc::default(),
            pod_ports: HashMap::new(),
            pod_cidrs: Arc::default(),
        }
    }

    /// Sets the names of this snapshot and indexes the ports of headless Services' pods:
    /// each usable endpoint of an exposed headless Service becomes reachable on its
    /// EndpointSlice ports, for the clients that Service allows.
    pub fn set_names(&mut self, names: Arc<super::names::NameTable>) {
        self.pod_ports.clear();
        for svc in names.iter() {
            for ep in svc.endpoints() {
                for p in &ep.ports {
                    let addr = SocketAddr::new(ep.ip, p.port);
                    let key = (ep.ip, p.port, p.protocol);
                    // A ClusterIP never equals a pod IP in a sane cluster; if one did, the
                    // Service keeps it.
                    if self.ports.contains_key(&key) || self.pod_ports.contains_key(&key) {
                        continue;
                    }
                    self.pod_ports.insert(
                        key,
                        Arc::new(ServicePort {
                            service: svc.id.clone(),
                            name: p.name.clone(),
                            protocol: p.protocol,
                            cluster_ip: ep.ip,
                            port: p.port,
                            endpoints: vec![Endpoint {
                                addr,
                                conditions: Conditions {
                                    ready: true,
                                    serving: true,
                                    terminating: false,
                                },
                                pod: ep.pod.clone(),
                                node: None,
                            }],
                            usable: vec![addr],
                            affinity: None,
                            allow: svc.allow.clone(),
                        }),
                    );
                }
            }
        }
        self.names = names;
    }

    pub fn lookup(&self, ip: IpAddr, port: u16, protocol: Protocol) -> Lookup<'_> {
        match self.ports.get(&(ip, port, protocol)) {
            Some(p) => Lookup::Port(p),
            None if self.cluster_ips.contains_key(&ip) => Lookup::UnknownPort,
            None => self.lookup_pod(ip, port, protocol),
        }
    }

    /// A headless Service's pod port, or a refusal for any other address of a pod range.
    fn lookup_pod(&self, ip: IpAddr, port: u16, protocol: Protocol) -> Lookup<'_> {
        match self.pod_ports.get(&(ip, port, protocol)) {
            Some(p) => Lookup::Port(p),
            None if self.pod_cidrs.iter().any(|n| n.contains(&ip)) => Lookup::UnknownPort,
            None if self.names.headless_backend(ip).next().is_some() => Lookup::UnknownPort,
            None => Lookup::NotService,
        }
    }

    /// The Service that owns an exposed ClusterIP.
    pub fn service_of(&self, ip: IpAddr) -> Option<&Arc<ServiceId>> {
        self.cluster_ips.get(&ip)
    }

    /// All exposed ClusterIPs (for per-IP host routes when no Service CIDR is given).
    pub fn cluster_ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.cluster_ips.keys().copied()
    }

    /// The entry of a Service (exposed or not) by namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceEntry> {
        self.services
            .binary_search_by(|e| {
                (e.id.namespace.as_str(), e.id.name.as_str()).cmp(&(namespace, name))
            })
            .ok()
            .and_then(|i| self.services.get(i))
    }

    /// All exposed ports, in no particular order.
    pub fn ports(&self) -> impl Iterator<Item = &Arc<ServicePort>> {
        self.ports.values()
    }
}
