//! Services + EndpointSlices → [`ServiceTable`]: every kube-proxy semantic rule lives here.
//!
//! Pure and deterministic: the same objects always give the same table. No I/O, no tokio.
//! A bad object does not stop the build: it becomes an [`ObjectError`] (a bad Service is
//! kept in the table as `NotExposed::Invalid`, a bad EndpointSlice contributes nothing), so
//! a long-running watch can skip it with a warning while the file source treats any error
//! as fatal.
//!
//! The rules, as kube-proxy applies them:
//! - a Service labelled `service.kubernetes.io/service-proxy-name` is left alone unless the
//!   label names this gateway ([`BuildOptions::proxy_name`]);
//! - ExternalName and headless (`clusterIP: None`) Services are not exposed; NodePort and
//!   LoadBalancer Services are exposed through their ClusterIP;
//! - every family in `clusterIPs` is exposed (falling back to `clusterIP`);
//! - TCP and UDP ports are exposed; SCTP is listed as unsupported;
//! - EndpointSlices join their Service by the `kubernetes.io/service-name` label in the same
//!   namespace; `addressType` IPv4/IPv6 feeds the ClusterIP of that family, FQDN is ignored;
//! - a slice port matches a Service port by name (and protocol), which is how a named
//!   `targetPort` resolves, per slice;
//! - an endpoint uses its first address; `ready: null` is ready, `serving: null` is the value
//!   of ready, `terminating: null` is false; traffic goes to the ready endpoints, or when none
//!   is ready to the serving + terminating ones;
//! - `sessionAffinity: ClientIP` uses `timeoutSeconds`, default 10800 s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::error::ObjectError;
use super::parse::{Objects, DEFAULT_NAMESPACE};
use super::policy::Policy;
use super::table::{
    Conditions, Endpoint, NotExposed, Protocol, ServiceEntry, ServiceId, ServicePort, ServiceTable,
};

/// Label that hands a Service to a specific proxy implementation.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label that joins an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10800);
/// Largest `timeoutSeconds` the API server accepts (1 day).
const MAX_AFFINITY_TIMEOUT_SECS: i32 = 86400;

/// Options that change which Services are exposed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// This gateway's name for `service.kubernetes.io/service-proxy-name`. A Service with
    /// that label is exposed only when the value equals this name.
    pub proxy_name: Option<String>,
}

/// Builds the table with the default policy (every Service exposed, to any client). Bad
/// objects are reported in the returned list (in a stable order: slices first, then
/// Services, each sorted by namespace/name) and otherwise skipped.
pub fn build_table(
    generation: u64,
    objs: &Objects,
    opts: &BuildOptions,
) -> (ServiceTable, Vec<ObjectError>) {
    build_table_with(generation, objs, opts, &Policy::default())
}

/// [`build_table`] under an exposure [`Policy`]. A malformed policy annotation is reported
/// in the list too (field `metadata.annotations[...]`); its Service stays in the table,
/// read in the most restrictive way.
pub fn build_table_with(
    generation: u64,
    objs: &Objects,
    opts: &BuildOptions,
    policy: &Policy,
) -> (ServiceTable, Vec<ObjectError>) {
    let mut errors = Vec::new();
    let slices = index_slices(&objs.slices, &mut errors);

    let mut services: Vec<&Service> = objs.services.iter().collect();
    services.sort_by_key(|s| identity(&s.metadata));

    let mut entries: Vec<ServiceEntry> = Vec::with_capacity(services.len());
    let mut seen_ids: HashSet<(String, String)> = HashSet::new();
    // Which exposed Service owns each ClusterIP (first by namespace/name wins).
    let mut owners: HashMap<IpAddr, Arc<ServiceId>> = HashMap::new();
    for svc in services {
        let (ns, name) = identity(&svc.metadata);
        let who = format!("{ns}/{name}");
        if name.is_empty() {
            errors.push(ObjectError::new("Service", who, "metadata.name", "missing"));
            continue;
        }
        if !seen_ids.insert((ns.clone(), name.clone())) {
            errors.push(ObjectError::new(
                "Service",
                who,
                "metadata.name",
                "defined twice",
            ));
            continue;
        }
        let id = Arc::new(ServiceId {
            namespace: ns,
            name,
        });
        let svc_slices: Vec<&SliceInfo> = slices
            .get(&(id.namespace.clone(), id.name.clone()))
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        let (mut entry, problems) = candidate_entry(svc, &id, &svc_slices, opts, policy);
        errors.extend(problems);
        if entry.not_exposed.is_none() {
            if let Some(err) = claim_cluster_ips(svc, &entry, &mut owners) {
                entry = invalid_entry(svc, &id, err.to_string());
                errors.push(err);
            }
        }
        entries.push(entry);
    }

    let ignored = objs
        .ignored_kinds
        .iter()
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    let names = super::names::NameTable::from_services(
        objs.services
            .iter()
            .filter_map(|svc| {
                let key = identity(&svc.metadata);
                let entry = entries
                    .binary_search_by(|e| {
                        (e.id.namespace.as_str(), e.id.name.as_str())
                            .cmp(&(key.0.as_str(), key.1.as_str()))
                    })
                    .ok()
                    .and_then(|i| entries.get(i))?;
                let svc_slices: Vec<&SliceInfo> = slices
                    .get(&key)
                    .map(|v| v.iter().collect())
                    .unwrap_or_default();
                super::names::service_names(svc, entry, &svc_slices, policy).map(Arc::new)
            })
            .collect(),
    );
    let mut table = ServiceTable::new(generation, entries, ignored);
    table.set_names(Arc::new(names));
    (table, errors)
}

/// `(namespace, name)`, namespace defaulted, name possibly empty.
pub(crate) fn identity(meta: &ObjectMeta) -> (String, String) {
    let ns = meta
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    (ns.to_string(), meta.name.clone().unwrap_or_default())
}

type FieldError = (String, String);

fn field_err(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
    (field.into(), problem.into())
}

// ---------------------------------------------------------------------------------------
// EndpointSlices

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    V4,
    V6,
}

fn family(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// A protocol as Kubernetes spells it; SCTP is valid but not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KubeProtocol {
    Served(Protocol),
    Sctp,
}

fn kube_protocol(p: Option<&str>) -> Option<KubeProtocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(KubeProtocol::Served(Protocol::Tcp)),
        "UDP" => Some(KubeProtocol::Served(Protocol::Udp)),
        "SCTP" => Some(KubeProtocol::Sctp),
        _ => None,
    }
}

fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// One usable EndpointSlice, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SliceInfo {
    family: Family,
    /// (port name, protocol, port number).
    ports: Vec<(String, KubeProtocol, u16)>,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SliceEndpoint {
    ip: IpAddr,
    conditions: Conditions,
    pod: Option<String>,
    node: Option<String>,
    /// `hostname` (StatefulSet pods), for names; not validated here.
    hostname: Option<String>,
}

/// Slices by the Service they belong to: (namespace, service name).
type SliceIndex = HashMap<(String, String), Vec<SliceInfo>>;

fn index_slices(slices: &[EndpointSlice], errors: &mut Vec<ObjectError>) -> SliceIndex {
    let mut sorted: Vec<&EndpointSlice> = slices.iter().collect();
    sorted.sort_by_key(|s| identity(&s.metadata));
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut index = SliceIndex::new();
    for slice in sorted {
        let (ns, name) = identity(&slice.metadata);
        let who = format!("{ns}/{name}");
        if name.is_empty() {
            errors.push(ObjectError::new(
                "EndpointSlice",
                who,
                "metadata.name",
                "missing",
            ));
            continue;
        }
        if !seen.insert((ns.clone(), name)) {
            errors.push(ObjectError::new(
                "EndpointSlice",
                who,
                "metadata.name",
                "defined twice",
            ));
            continue;
        }
        // Not managed for a Service (custom slices without the label): kube-proxy skips
        // it, and so does a file (the watch reports it once, see `incremental`).
        let labelled = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .is_some_and(|s| !s.is_empty());
        if !labelled {
            continue;
        }
        match check_slice(slice, &who) {
            Ok(Some((service, info))) => index.entry((ns, service)).or_default().push(info),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    index
}

/// The Service a slice belongs to and what it holds; `Ok(None)` for an FQDN slice, which
/// has nothing for a ClusterIP. A slice without the `kubernetes.io/service-name` label is
/// reported (kube-proxy ignores it: it belongs to no Service). `who` is `namespace/name`.
pub(crate) fn check_slice(
    slice: &EndpointSlice,
    who: &str,
) -> Result<Option<(String, SliceInfo)>, ObjectError> {
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty());
    let Some(service) = service else {
        return Err(ObjectError::new(
            "EndpointSlice",
            who,
            format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            "missing: the slice belongs to no Service",
        ));
    };
    match slice_info(slice) {
        Ok(info) => Ok(info.map(|i| (service.clone(), i))),
        Err((field, problem)) => Err(ObjectError::new("EndpointSlice", who, field, problem)),
    }
}

/// `Ok(None)` for an FQDN slice, which has nothing for a ClusterIP.
fn slice_info(slice: &EndpointSlice) -> Result<Option<SliceInfo>, FieldError> {
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        "FQDN" => return Ok(None),
        other => {
            return Err(field_err(
                "addressType",
                format!("{other:?} is not IPv4, IPv6 or FQDN"),
            ))
        }
    };
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let protocol = kube_protocol(p.protocol.as_deref()).ok_or_else(|| {
            field_err(
                format!("ports[{i}].protocol"),
                format!(
                    "{:?} is not a known protocol",
                    p.protocol.as_deref().unwrap_or_default()
                ),
            )
        })?;
        // A port without a number is skipped, as kube-proxy does.
        let Some(number) = p.port else { continue };
        let number = valid_port(number).ok_or_else(|| {
            field_err(
                format!("ports[{i}].port"),
                format!("{number} is not a valid port"),
            )
        })?;
        ports.push((p.name.clone().unwrap_or_default(), protocol, number));
    }
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, ep) in slice.endpoints.iter().enumerate() {
        // kube-proxy uses the first address only (all are the same Pod).
        let Some(addr) = ep.addresses.first() else {
            return Err(field_err(format!("endpoints[{i}].addresses"), "no address"));
        };
        let field = format!("endpoints[{i}].addresses[0]");
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| field_err(&field, format!("{addr:?} is not an IP address")))?;
        if self::family(ip) != family {
            return Err(field_err(
                field,
                format!("{addr} does not match addressType {}", slice.address_type),
            ));
        }
        let c = ep.conditions.as_ref();
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let conditions = Conditions {
            ready,
            serving: c.and_then(|c| c.serving).unwrap_or(ready),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
        };
        let pod = ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.name.clone());
        endpoints.push(SliceEndpoint {
            ip,
            conditions,
            pod,
            node: ep.node_name.clone(),
            hostname: ep.hostname.clone(),
        });
    }
    Ok(Some(SliceInfo {
        family,
        ports,
        endpoints,
    }))
}

/// What `names` reads of a slice: its family's endpoints and its ports.
impl SliceInfo {
    /// Each endpoint: (address, conditions, hostname, pod name).
    pub(crate) fn name_endpoints(
        &self,
    ) -> impl Iterator<Item = (IpAddr, Conditions, Option<&str>, Option<&str>)> + '_ {
        self.endpoints
            .iter()
            .map(|e| (e.ip, e.conditions, e.hostname.as_deref(), e.pod.as_deref()))
    }

    /// The slice's served ports: (name, protocol, number); SCTP left out.
    pub(crate) fn name_ports(&self) -> impl Iterator<Item = (&str, Protocol, u16)> + '_ {
        self.ports.iter().filter_map(|(n, p, num)| match p {
            KubeProtocol::Served(p) => Some((n.as_str(), *p, *num)),
            KubeProtocol::Sctp => None,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Services

pub(crate) fn invalid_entry(svc: &Service, id: &Arc<ServiceId>, message: String) -> ServiceEntry {
    ServiceEntry {
        id: id.clone(),
        cluster_ips: lenient_cluster_ips(svc),
        type_: service_type(svc).to_string(),
        ports: Vec::new(),
        not_exposed: Some(NotExposed::Invalid(message)),
        unsupported_ports: Vec::new(),
    }
}

fn not_exposed_entry(svc: &Service, id: &Arc<ServiceId>, why: NotExposed) -> ServiceEntry {
    ServiceEntry {
        id: id.clone(),
        cluster_ips: lenient_cluster_ips(svc),
        type_: service_type(svc).to_string(),
        ports: Vec::new(),
        not_exposed: Some(why),
        unsupported_ports: Vec::new(),
    }
}

fn service_type(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .filter(|t| !t.is_empty())
        .unwrap_or("ClusterIP")
}

/// The raw ClusterIP strings: `clusterIPs`, or `clusterIP` when that is empty.
fn raw_cluster_ips(svc: &Service) -> Vec<(String, &str)> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
            .collect(),
        _ => spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty())
            .map(|ip| vec![("spec.clusterIP".to_string(), ip)])
            .unwrap_or_default(),
    }
}

/// Whatever ClusterIPs parse, for display of Services that are not exposed.
fn lenient_cluster_ips(svc: &Service) -> Vec<IpAddr> {
    raw_cluster_ips(svc)
        .into_iter()
        .filter_map(|(_, ip)| ip.parse().ok())
        .collect()
}

/// A Service's entry before ClusterIP conflicts with other Services are settled, with the
/// problems found in it (a bad field makes it `NotExposed::Invalid`; a malformed policy
/// annotation restricts it).
pub(crate) fn candidate_entry(
    svc: &Service,
    id: &Arc<ServiceId>,
    slices: &[&SliceInfo],
    opts: &BuildOptions,
    policy: &Policy,
) -> (ServiceEntry, Vec<ObjectError>) {
    let mut problems = Vec::new();
    let entry = match service_entry(svc, id, slices, opts, policy, &mut problems) {
        Ok(entry) => entry,
        Err((field, problem)) => {
            let err = ObjectError::new("Service", id.to_string(), field, problem);
            let entry = invalid_entry(svc, id, err.to_string());
            problems.push(err);
            entry
        }
    };
    (entry, problems)
}

fn service_entry(
    svc: &Service,
    id: &Arc<ServiceId>,
    svc_slices: &[&SliceInfo],
    opts: &BuildOptions,
    policy: &Policy,
    problems: &mut Vec<ObjectError>,
) -> Result<ServiceEntry, FieldError> {
    let proxy_label = svc
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL));
    if let Some(proxy) = proxy_label {
        if opts.proxy_name.as_deref() != Some(proxy.as_str()) {
            return Ok(not_exposed_entry(
                svc,
                id,
                NotExposed::OtherProxy(proxy.clone()),
            ));
        }
    }
    let decision = policy.evaluate(
        &id.namespace,
        svc.metadata.labels.as_ref(),
        svc.metadata.annotations.as_ref(),
    );
    for p in decision.problems {
        problems.push(ObjectError::new(
            "Service",
            id.to_string(),
            p.field,
            p.problem,
        ));
    }
    if let Err(reason) = decision.exposed {
        return Ok(not_exposed_entry(svc, id, NotExposed::Policy(reason)));
    }
    let allow = decision.allow;
    let Some(spec) = svc.spec.as_ref() else {
        return Err(field_err("spec", "missing"));
    };
    let type_ = service_type(svc);
    match type_ {
        "ExternalName" => return Ok(not_exposed_entry(svc, id, NotExposed::ExternalName)),
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        other => {
            return Err(field_err(
                "spec.type",
                format!("{other:?} is not a known Service type"),
            ))
        }
    }

    let raw_ips = raw_cluster_ips(svc);
    match raw_ips.first() {
        None => {
            return Err(field_err(
                "spec.clusterIP",
                "missing (no ClusterIP allocated)",
            ))
        }
        Some((_, "None")) => return Ok(not_exposed_entry(svc, id, NotExposed::Headless)),
        Some(_) => {}
    }
    let cluster_ips = parse_cluster_ips(&raw_ips)?;
    if let (Some(primary), Some(first)) = (
        spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty()),
        raw_ips.first(),
    ) {
        if primary != first.1 {
            return Err(field_err(
                "spec.clusterIP",
                format!("{primary} differs from spec.clusterIPs[0] {}", first.1),
            ));
        }
    }

    let affinity = match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" | "" => None,
        "ClientIP" => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(t) if (1..=MAX_AFFINITY_TIMEOUT_SECS).contains(&t) => {
                    Some(Duration::from_secs(u64::from(t.unsigned_abs())))
                }
                Some(t) => {
                    return Err(field_err(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{t} is not between 1 and {MAX_AFFINITY_TIMEOUT_SECS}"),
                    ))
                }
            }
        }
        other => {
            return Err(field_err(
                "spec.sessionAffinity",
                format!("{other:?} is not ClientIP or None"),
            ))
        }
    };

    // Validate every port first, then expand per family.
    let mut served: Vec<(String, Protocol, u16)> = Vec::new();
    let mut unsupported_ports = Vec::new();
    let mut by_number: BTreeMap<(u16, &str), usize> = BTreeMap::new();
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    let ports = spec.ports.as_deref().unwrap_or_default();
    for (i, p) in ports.iter().enumerate() {
        let proto_name = p.protocol.as_deref().unwrap_or("TCP");
        let protocol = kube_protocol(Some(proto_name)).ok_or_else(|| {
            field_err(
                format!("spec.ports[{i}].protocol"),
                format!("{proto_name:?} is not a known protocol"),
            )
        })?;
        let number = valid_port(p.port).ok_or_else(|| {
            field_err(
                format!("spec.ports[{i}].port"),
                format!("{} is not a valid port", p.port),
            )
        })?;
        if let Some(j) = by_number.insert((number, proto_name), i) {
            return Err(field_err(
                format!("spec.ports[{i}]"),
                format!("{number}/{proto_name} is already spec.ports[{j}]"),
            ));
        }
        let name = p.name.as_deref().unwrap_or_default();
        if let Some(j) = by_name.insert(name, i) {
            return Err(field_err(
                format!("spec.ports[{i}].name"),
                format!("{name:?} is already the name of spec.ports[{j}]"),
            ));
        }
        match protocol {
            KubeProtocol::Served(protocol) => served.push((name.to_string(), protocol, number)),
            KubeProtocol::Sctp => {
                let label = if name.is_empty() {
                    format!("{number}/SCTP")
                } else {
                    format!("{number}/SCTP ({name})")
                };
                unsupported_ports.push(format!("{label}: SCTP is not supported"));
            }
        }
    }

    let mut out_ports = Vec::with_capacity(cluster_ips.len() * served.len());
    for &ip in &cluster_ips {
        for (name, protocol, number) in &served {
            let endpoints = port_endpoints(svc_slices, family(ip), name, *protocol);
            let usable = usable(&endpoints);
            out_ports.push(Arc::new(ServicePort {
                service: id.clone(),
                name: name.clone(),
                protocol: *protocol,
                cluster_ip: ip,
                port: *number,
                endpoints,
                usable,
                affinity,
                allow: allow.clone(),
            }));
        }
    }

    Ok(ServiceEntry {
        id: id.clone(),
        cluster_ips,
        type_: type_.to_string(),
        ports: out_ports,
        not_exposed: None,
        unsupported_ports,
    })
}

fn parse_cluster_ips(raw: &[(String, &str)]) -> Result<Vec<IpAddr>, FieldError> {
    let mut ips: Vec<IpAddr> = Vec::with_capacity(raw.len());
    for (field, s) in raw {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| field_err(field, format!("{s:?} is not an IP address")))?;
        let unusable = ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if unusable {
            return Err(field_err(field, format!("{ip} is not a usable ClusterIP")));
        }
        if ips.iter().any(|other| family(*other) == family(ip)) {
            return Err(field_err(
                field,
                format!("{ip}: a Service has at most one ClusterIP per address family"),
            ));
        }
        ips.push(ip);
    }
    Ok(ips)
}

/// All endpoints for one Service port of one family, merged across slices, sorted by
/// address; an address listed twice keeps its best conditions (ready first).
fn port_endpoints(
    slices: &[&SliceInfo],
    fam: Family,
    name: &str,
    protocol: Protocol,
) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    for slice in slices.iter().filter(|s| s.family == fam) {
        let Some(&(_, _, target)) = slice
            .ports
            .iter()
            .find(|(n, p, _)| n == name && *p == KubeProtocol::Served(protocol))
        else {
            continue;
        };
        out.extend(slice.endpoints.iter().map(|ep| Endpoint {
            addr: SocketAddr::new(ep.ip, target),
            conditions: ep.conditions,
            pod: ep.pod.clone(),
            node: ep.node.clone(),
        }));
    }
    out.sort_by_key(|e| {
        (
            e.addr,
            !e.conditions.ready,
            !e.conditions.serving,
            e.conditions.terminating,
        )
    });
    out.dedup_by_key(|e| e.addr);
    out
}

/// kube-proxy's choice: the ready endpoints, or when none is ready the serving and
/// terminating ones. Input is sorted and deduplicated, so the output is too.
fn usable(endpoints: &[Endpoint]) -> Vec<SocketAddr> {
    let ready: Vec<SocketAddr> = endpoints
        .iter()
        .filter(|e| e.conditions.ready)
        .map(|e| e.addr)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(|e| e.conditions.serving && e.conditions.terminating)
        .map(|e| e.addr)
        .collect()
}

/// Records `entry`'s ClusterIPs as owned by it, or reports the first one already owned by
/// another exposed Service (naming both).
pub(crate) fn claim_cluster_ips(
    svc: &Service,
    entry: &ServiceEntry,
    owners: &mut HashMap<IpAddr, Arc<ServiceId>>,
) -> Option<ObjectError> {
    let raw = raw_cluster_ips(svc);
    for (i, ip) in entry.cluster_ips.iter().enumerate() {
        if let Some(owner) = owners.get(ip) {
            let field = raw
                .get(i)
                .map(|(f, _)| f.clone())
                .unwrap_or_else(|| "spec.clusterIPs".to_string());
            return Some(ObjectError::new(
                "Service",
                entry.id.to_string(),
                field,
                format!("{ip} is already the ClusterIP of Service {owner}"),
            ));
        }
    }
    for ip in &entry.cluster_ips {
        owners.insert(*ip, entry.id.clone());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::Lookup;
    use serde_json::json;

    fn svc(value: serde_json::Value) -> Service {
        serde_json::from_value(value).expect("test Service")
    }

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).expect("test EndpointSlice")
    }

    /// A ClusterIP Service `shop/<name>` with the given spec fields merged in.
    fn service(name: &str, spec: serde_json::Value) -> Service {
        let mut v = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.20", "type": "ClusterIP",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        });
        if let (Some(dst), Some(src)) = (v["spec"].as_object_mut(), spec.as_object()) {
            for (k, val) in src {
                dst.insert(k.clone(), val.clone());
            }
        }
        svc(v)
    }

    fn endpoint_slice(
        name: &str,
        service: &str,
        address_type: &str,
        ports: serde_json::Value,
        endpoints: serde_json::Value,
    ) -> EndpointSlice {
        slice(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": address_type, "ports": ports, "endpoints": endpoints
        }))
    }

    fn build(
        services: Vec<Service>,
        slices: Vec<EndpointSlice>,
    ) -> (ServiceTable, Vec<ObjectError>) {
        build_with(services, slices, &BuildOptions::default())
    }

    fn build_with(
        services: Vec<Service>,
        slices: Vec<EndpointSlice>,
        opts: &BuildOptions,
    ) -> (ServiceTable, Vec<ObjectError>) {
        let objs = Objects {
            services,
            slices,
            ignored_kinds: BTreeMap::new(),
        };
        build_table(7, &objs, opts)
    }

    fn build_ok(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ServiceTable {
        let (table, errors) = build(services, slices);
        assert!(errors.is_empty(), "unexpected errors: {errors:?}");
        table
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test socket address")
    }

    fn port<'a>(t: &'a ServiceTable, addr: &str, port: u16, proto: Protocol) -> &'a ServicePort {
        match t.lookup(ip(addr), port, proto) {
            Lookup::Port(p) => p,
            other => panic!("{addr}:{port}/{proto} not a port: {other:?}"),
        }
    }

    fn entry<'a>(t: &'a ServiceTable, name: &str) -> &'a ServiceEntry {
        t.services
            .iter()
            .find(|e| e.id.name == name)
            .unwrap_or_else(|| panic!("no entry {name}"))
    }

    fn ready_ep(ip: &str) -> serde_json::Value {
        json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}})
    }

    fn http_port(n: u16) -> serde_json::Value {
        json!([{"name": "http", "port": n, "protocol": "TCP"}])
    }

    #[test]
    fn cluster_ip_service_forwards_to_ready_endpoints() {
        let t = build_ok(
            vec![service("web", json!({}))],
            vec![endpoint_slice(
                "web-a",
                "web",
                "IPv4",
                http_port(8080),
                json!([ready_ep("10.244.0.2"), ready_ep("10.244.0.1")]),
            )],
        );
        assert_eq!(t.generation, 7);
        let p = port(&t, "10.96.0.20", 80, Protocol::Tcp);
        assert_eq!(p.usable, vec![sa("10.244.0.1:8080"), sa("10.244.0.2:8080")]);
        assert_eq!(p.affinity, None);
        assert!(matches!(
            t.lookup(ip("10.96.0.20"), 81, Protocol::Tcp),
            Lookup::UnknownPort
        ));
        assert!(matches!(
            t.lookup(ip("10.96.0.20"), 80, Protocol::Udp),
            Lookup::UnknownPort
        ));
        assert!(matches!(
            t.lookup(ip("10.96.0.21"), 80, Protocol::Tcp),
            Lookup::NotService
        ));
    }

    #[test]
    fn headless_and_external_name_are_not_exposed() {
        let t = build_ok(
            vec![
                service("db", json!({"clusterIP": "None", "clusterIPs": ["None"]})),
                svc(json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "legacy", "namespace": "shop"},
                    "spec": {"type": "ExternalName", "externalName": "legacy.example.com"}})),
            ],
            vec![endpoint_slice(
                "db-a",
                "db",
                "IPv4",
                http_port(5432),
                json!([ready_ep("10.244.0.9")]),
            )],
        );
        assert_eq!(entry(&t, "db").not_exposed, Some(NotExposed::Headless));
        assert_eq!(
            entry(&t, "legacy").not_exposed,
            Some(NotExposed::ExternalName)
        );
        assert_eq!(t.ports().count(), 0);
        assert_eq!(t.cluster_ips().count(), 0);
    }

    #[test]
    fn dual_stack_each_family_gets_its_slices() {
        let t = build_ok(
            vec![service(
                "web",
                json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00::20"]}),
            )],
            vec![
                endpoint_slice(
                    "web-4",
                    "web",
                    "IPv4",
                    http_port(8080),
                    json!([ready_ep("10.244.0.1")]),
                ),
                endpoint_slice(
                    "web-6",
                    "web",
                    "IPv6",
                    http_port(8080),
                    json!([ready_ep("fd00:244::1")]),
                ),
                endpoint_slice(
                    "web-f",
                    "web",
                    "FQDN",
                    http_port(8080),
                    json!([{"addresses": ["a.example"]}]),
                ),
            ],
        );
        assert_eq!(
            entry(&t, "web").cluster_ips,
            vec![ip("10.96.0.20"), ip("fd00::20")]
        );
        assert_eq!(
            port(&t, "10.96.0.20", 80, Protocol::Tcp).usable,
            vec![sa("10.244.0.1:8080")]
        );
        assert_eq!(
            port(&t, "fd00::20", 80, Protocol::Tcp).usable,
            vec![sa("[fd00:244::1]:8080")]
        );
    }

    #[test]
    fn cluster_ip_is_fallback_when_cluster_ips_absent() {
        let t = build_ok(
            vec![service("web", json!({"clusterIP": "10.96.0.30"}))],
            vec![],
        );
        assert_eq!(entry(&t, "web").cluster_ips, vec![ip("10.96.0.30")]);
        // No slice: exposed, but nothing to forward to (reject).
        assert!(port(&t, "10.96.0.30", 80, Protocol::Tcp).usable.is_empty());
    }

    #[test]
    fn ports_by_protocol_and_sctp_unsupported() {
        let t = build_ok(
            vec![service(
                "dns",
                json!({"ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                    {"name": "sig", "port": 9999, "protocol": "SCTP"},
                    {"name": "dflt", "port": 8000}
                ]}),
            )],
            vec![endpoint_slice(
                "dns-a",
                "dns",
                "IPv4",
                json!([
                    {"name": "dns", "port": 1053, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 2053, "protocol": "TCP"},
                    {"name": "sig", "port": 9999, "protocol": "SCTP"},
                    {"name": "dflt", "port": 8001}
                ]),
                json!([ready_ep("10.244.0.5")]),
            )],
        );
        assert_eq!(
            port(&t, "10.96.0.20", 53, Protocol::Udp).usable,
            vec![sa("10.244.0.5:1053")]
        );
        assert_eq!(
            port(&t, "10.96.0.20", 53, Protocol::Tcp).usable,
            vec![sa("10.244.0.5:2053")]
        );
        assert_eq!(
            port(&t, "10.96.0.20", 8000, Protocol::Tcp).usable,
            vec![sa("10.244.0.5:8001")]
        );
        assert!(matches!(
            t.lookup(ip("10.96.0.20"), 9999, Protocol::Tcp),
            Lookup::UnknownPort
        ));
        assert_eq!(
            entry(&t, "dns").unsupported_ports,
            vec!["9999/SCTP (sig): SCTP is not supported".to_string()]
        );
    }

    #[test]
    fn slice_ports_match_by_name_per_slice() {
        let t = build_ok(
            vec![service(
                "multi",
                json!({"ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                    {"name": "grpc", "port": 9090, "protocol": "TCP", "targetPort": "grpc"}
                ]}),
            )],
            vec![
                endpoint_slice(
                    "multi-a",
                    "multi",
                    "IPv4",
                    json!([{"name": "http", "port": 8080}, {"name": "grpc", "port": 9090}]),
                    json!([ready_ep("10.244.1.31")]),
                ),
                endpoint_slice(
                    "multi-b",
                    "multi",
                    "IPv4",
                    // Listed in the other order: matching is by name, not position.
                    json!([{"name": "grpc", "port": 9091}, {"name": "http", "port": 8080}]),
                    json!([ready_ep("10.244.2.32")]),
                ),
            ],
        );
        assert_eq!(
            port(&t, "10.96.0.20", 80, Protocol::Tcp).usable,
            vec![sa("10.244.1.31:8080"), sa("10.244.2.32:8080")]
        );
        assert_eq!(
            port(&t, "10.96.0.20", 9090, Protocol::Tcp).usable,
            vec![sa("10.244.1.31:9090"), sa("10.244.2.32:9091")]
        );
    }

    #[test]
    fn unnamed_port_matches_empty_or_absent_slice_port_name() {
        let mut s = service("cart", json!({"ports": [{"port": 8080}]}));
        s.metadata.name = Some("cart".into());
        let t = build_ok(
            vec![s],
            vec![
                endpoint_slice(
                    "cart-a",
                    "cart",
                    "IPv4",
                    json!([{"name": "", "port": 8080}]),
                    json!([ready_ep("10.244.1.21")]),
                ),
                endpoint_slice(
                    "cart-b",
                    "cart",
                    "IPv4",
                    json!([{"port": 8081}]),
                    json!([ready_ep("10.244.2.22")]),
                ),
            ],
        );
        assert_eq!(
            port(&t, "10.96.0.20", 8080, Protocol::Tcp).usable,
            vec![sa("10.244.1.21:8080"), sa("10.244.2.22:8081")]
        );
    }

    #[test]
    fn slice_port_with_other_name_or_protocol_does_not_match() {
        let t = build_ok(
            vec![service("web", json!({}))],
            vec![
                endpoint_slice(
                    "web-a",
                    "web",
                    "IPv4",
                    json!([{"name": "other", "port": 8080}]),
                    json!([ready_ep("10.244.0.1")]),
                ),
                endpoint_slice(
                    "web-b",
                    "web",
                    "IPv4",
                    json!([{"name": "http", "port": 8080, "protocol": "UDP"}]),
                    json!([ready_ep("10.244.0.2")]),
                ),
                endpoint_slice(
                    "web-c",
                    "web",
                    "IPv4",
                    json!([{"name": "http"}]),
                    json!([ready_ep("10.244.0.3")]),
                ),
            ],
        );
        assert!(port(&t, "10.96.0.20", 80, Protocol::Tcp)
            .endpoints
            .is_empty());
    }

    #[test]
    fn slices_join_by_label_in_same_namespace() {
        let mut other_ns = endpoint_slice(
            "web-x",
            "web",
            "IPv4",
            http_port(8080),
            json!([ready_ep("10.244.9.9")]),
        );
        other_ns.metadata.namespace = Some("elsewhere".into());
        let mut unlabelled = endpoint_slice(
            "web",
            "web",
            "IPv4",
            http_port(8080),
            json!([ready_ep("10.244.9.8")]),
        );
        unlabelled.metadata.labels = None;
        let t = build_ok(
            vec![service("web", json!({}))],
            vec![
                other_ns,
                unlabelled,
                endpoint_slice(
                    "zzz",
                    "web",
                    "IPv4",
                    http_port(8080),
                    json!([ready_ep("10.244.0.1")]),
                ),
            ],
        );
        assert_eq!(
            port(&t, "10.96.0.20", 80, Protocol::Tcp).usable,
            vec![sa("10.244.0.1:8080")]
        );
    }

    #[test]
    fn endpoints_merge_across_slices_sorted_and_deduped() {
        let t = build_ok(
            vec![service("web", json!({}))],
            vec![
                endpoint_slice(
                    "web-a",
                    "web",
                    "IPv4",
                    http_port(8080),
                    json!([ready_ep("10.244.0.3"), {"addresses": ["10.244.0.1"], "conditions": {"ready": false}}]),
                ),
                endpoint_slice(
                    "web-b",
                    "web",
                    "IPv4",
                    http_port(8080),
                    json!([ready_ep("10.244.0.1"), ready_ep("10.244.0.2")]),
                ),
            ],
        );
        let p = port(&t, "10.96.0.20", 80, Protocol::Tcp);
        assert_eq!(
            p.usable,
            vec![
                sa("10.244.0.1:8080"),
                sa("10.244.0.2:8080"),
                sa("10.244.0.3:8080")
            ]
        );
        assert_eq!(p.endpoints.len(), 3);
        assert!(p.endpoints.iter().all(|e| e.conditions.ready));
    }

    #[test]
    fn null_conditions_resolve_as_kubernetes_defines() {
        let t = build_ok(
            vec![service("web", json!({}))],
            vec![endpoint_slice(
                "web-a",
                "web",
                "IPv4",
                http_port(8080),
                json!([
                    {"addresses": ["10.244.0.1"], "conditions": {}},
                    {"addresses": ["10.244.0.2"]},
                    {"addresses": ["10.244.0.3"], "conditions": {"ready": false}},
                    {"addresses": ["10.244.0.4"], "conditions": {"ready": false, "terminating": true}}
                ]),
            )],
        );
        let p = port(&t, "10.96.0.20", 80, Protocol::Tcp);
        let cond: Vec<Conditions> = p.endpoints.iter().map(|e| e.conditions).collect();
        let c = |ready, serving, terminating| Conditions {
            ready,
            serving,
            terminating,
        };
        assert_eq!(
            cond,
            vec![
                c(true, true, false),
                c(true, true, false),
                c(false, false, false),
                c(false, false, true)
            ]
        );
        assert_eq!(p.usable, vec![sa("10.244.0.1:8080"), sa("10.244.0.2:8080")]);
    }

    #[test]
    fn terminating_used_only_when_none_ready() {
        let terminating = json!({"addresses": ["10.244.0.9"], "conditions": {"ready": false, "serving": true, "terminating": true}});
        let not_serving = json!({"addresses": ["10.244.0.8"], "conditions": {"ready": false, "serving": false, "terminating": true}});
        let starting = json!({"addresses": ["10.244.0.7"], "conditions": {"ready": false, "serving": false, "terminating": false}});

        let t = build_ok(
            vec![service("web", json!({}))],
            vec![endpoint_slice(
                "web-a",
                "web",
                "IPv4",
                http_port(8080),
                json!([ready_ep("10.244.0.1"), terminating.clone()]),
            )],
        );
        assert_eq!(
            port(&t, "10.96.0.20", 80, Protocol::Tcp).usable,
            vec![sa("10.244.0.1:8080")]
        );

        let t = build_ok(
            vec![service("web", json!({}))],
            vec![endpoint_slice(
                "web-a",
                "web",
                "IPv4",
                http_port(8080),
                json!([terminating, not_serving, starting.clone()]),
            )],
        );
        let p = port(&t, "10.96.0.20", 80, Protocol::Tcp);
        assert_eq!(p.usable, vec![sa("10.244.0.9:8080")]);
        assert_eq!(p.endpoints.len(), 3);

        let t = build_ok(
            vec![service("web", json!({}))],
            vec![endpoint_slice(
                "web-a",
                "web",
                "IPv4",
                http_port(8080),
                json!([starting]),
            )],
        );
        assert!(port(&t, "10.96.0.20", 80, Protocol::Tcp).usable.is_empty());
    }

    #[test]
    fn endpoint_uses_first_address_and_keeps_pod_and_node() {
        let t = build_ok(
            vec![service("web", json!({}))],
            vec![endpoint_slice(
                "web-a",
                "web",
                "IPv4",
                http_port(8080),
                json!([
                    {"addresses": ["10.244.0.1", "10.244.0.99"], "nodeName": "node-a",
                     "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"}}
                ]),
            )],
        );
        let p = port(&t, "10.96.0.20", 80, Protocol::Tcp);
        assert_eq!(p.usable, vec![sa("10.244.0.1:8080")]);
        assert_eq!(p.endpoints[0].pod.as_deref(), Some("web-1"));
        assert_eq!(p.endpoints[0].node.as_deref(), Some("node-a"));
    }

    #[test]
    fn session_affinity_client_ip() {
        let t = build_ok(
            vec![
                service(
                    "a",
                    json!({"clusterIP": "10.96.0.1", "sessionAffinity": "ClientIP",
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}),
                ),
                service(
                    "b",
                    json!({"clusterIP": "10.96.0.2", "sessionAffinity": "ClientIP"}),
                ),
                service(
                    "c",
                    json!({"clusterIP": "10.96.0.3", "sessionAffinity": "None"}),
                ),
            ],
            vec![],
        );
        assert_eq!(
            port(&t, "10.96.0.1", 80, Protocol::Tcp).affinity,
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            port(&t, "10.96.0.2", 80, Protocol::Tcp).affinity,
            Some(Duration::from_secs(10800))
        );
        assert_eq!(port(&t, "10.96.0.3", 80, Protocol::Tcp).affinity, None);
    }

    #[test]
    fn service_proxy_name_label() {
        let labelled = |name: &str, ip: &str, proxy: &str| {
            let mut s = service(name, json!({"clusterIP": ip}));
            s.metadata.labels = Some(
                [(SERVICE_PROXY_NAME_LABEL.to_string(), proxy.to_string())]
                    .into_iter()
                    .collect(),
            );
            s
        };
        let objs = || {
            vec![
                labelled("a", "10.96.0.1", "other-proxy"),
                labelled("b", "10.96.0.2", "clusterway"),
            ]
        };

        let (t, errors) = build(objs(), vec![]);
        assert!(errors.is_empty());
        assert_eq!(
            entry(&t, "a").not_exposed,
            Some(NotExposed::OtherProxy("other-proxy".into()))
        );
        assert_eq!(
            entry(&t, "b").not_exposed,
            Some(NotExposed::OtherProxy("clusterway".into()))
        );
        assert_eq!(entry(&t, "a").cluster_ips, vec![ip("10.96.0.1")]);

        let opts = BuildOptions {
            proxy_name: Some("clusterway".into()),
        };
        let (t, errors) = build_with(objs(), vec![], &opts);
        assert!(errors.is_empty());
        assert_eq!(
            entry(&t, "a").not_exposed,
            Some(NotExposed::OtherProxy("other-proxy".into()))
        );
        assert_eq!(entry(&t, "b").not_exposed, None);
        assert!(matches!(
            t.lookup(ip("10.96.0.2"), 80, Protocol::Tcp),
            Lookup::Port(_)
        ));
        assert!(matches!(
            t.lookup(ip("10.96.0.1"), 80, Protocol::Tcp),
            Lookup::NotService
        ));
    }

    #[test]
    fn node_port_and_load_balancer_exposed_via_cluster_ip() {
        let t = build_ok(
            vec![
                service(
                    "np",
                    json!({"clusterIP": "10.96.0.1", "type": "NodePort",
                    "ports": [{"port": 80, "nodePort": 30080}]}),
                ),
                service(
                    "lb",
                    json!({"clusterIP": "10.96.0.2", "type": "LoadBalancer"}),
                ),
            ],
            vec![],
        );
        assert_eq!(entry(&t, "np").type_, "NodePort");
        assert!(matches!(
            t.lookup(ip("10.96.0.1"), 80, Protocol::Tcp),
            Lookup::Port(_)
        ));
        assert!(matches!(
            t.lookup(ip("10.96.0.1"), 30080, Protocol::Tcp),
            Lookup::UnknownPort
        ));
        assert!(matches!(
            t.lookup(ip("10.96.0.2"), 80, Protocol::Tcp),
            Lookup::Port(_)
        ));
    }

    fn only_error(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ObjectError {
        let (_, mut errors) = build(services, slices);
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.remove(0)
    }

    #[test]
    fn bad_service_fields_name_object_and_field() {
        let cases = [
            (json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 70000}]}),
             "Service shop/web: spec.ports[1].port: 70000 is not a valid port"),
            (json!({"ports": [{"port": 0}]}), "Service shop/web: spec.ports[0].port: 0 is not a valid port"),
            (json!({"ports": [{"port": 80, "protocol": "QUIC"}]}),
             "Service shop/web: spec.ports[0].protocol: \"QUIC\" is not a known protocol"),
            (json!({"clusterIP": "10.96.0.300"}),
             "Service shop/web: spec.clusterIP: \"10.96.0.300\" is not an IP address"),
            (json!({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "bogus"]}),
             "Service shop/web: spec.clusterIPs[1]: \"bogus\" is not an IP address"),
            (json!({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "10.96.0.2"]}),
             "Service shop/web: spec.clusterIPs[1]: 10.96.0.2: a Service has at most one ClusterIP per address family"),
            (json!({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.2"]}),
             "Service shop/web: spec.clusterIP: 10.96.0.1 differs from spec.clusterIPs[0] 10.96.0.2"),
            (json!({"clusterIP": ""}), "Service shop/web: spec.clusterIP: missing (no ClusterIP allocated)"),
            (json!({"clusterIP": "0.0.0.0"}), "Service shop/web: spec.clusterIP: 0.0.0.0 is not a usable ClusterIP"),
            (json!({"type": "Weird"}), "Service shop/web: spec.type: \"Weird\" is not a known Service type"),
            (json!({"sessionAffinity": "Cookie"}),
             "Service shop/web: spec.sessionAffinity: \"Cookie\" is not ClientIP or None"),
            (json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
             "Service shop/web: spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is not between 1 and 86400"),
            (json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}),
             "Service shop/web: spec.ports[1]: 80/TCP is already spec.ports[0]"),
            (json!({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}),
             "Service shop/web: spec.ports[1].name: \"a\" is already the name of spec.ports[0]"),
        ];
        for (spec, want) in cases {
            let (t, errors) = build(vec![service("web", spec)], vec![]);
            assert_eq!(errors.len(), 1, "{want}: {errors:?}");
            assert_eq!(errors[0].to_string(), want);
            // Kept in the table for display, never routed.
            assert!(matches!(
                entry(&t, "web").not_exposed,
                Some(NotExposed::Invalid(_))
            ));
            assert_eq!(t.ports().count(), 0);
        }
        let mut no_spec = service("web", json!({}));
        no_spec.spec = None;
        assert_eq!(
            only_error(vec![no_spec], vec![]).to_string(),
            "Service shop/web: spec: missing"
        );
    }

    #[test]
    fn bad_slice_fields_name_object_and_field() {
        let cases = [
            (endpoint_slice("s", "web", "IPv5", http_port(80), json!([])),
             "EndpointSlice shop/s: addressType: \"IPv5\" is not IPv4, IPv6 or FQDN"),
            (endpoint_slice("s", "web", "IPv4", json!([{"name": "http", "port": 65536}]), json!([])),
             "EndpointSlice shop/s: ports[0].port: 65536 is not a valid port"),
            (endpoint_slice("s", "web", "IPv4", json!([{"name": "http", "port": 80, "protocol": "ICMP"}]), json!([])),
             "EndpointSlice shop/s: ports[0].protocol: \"ICMP\" is not a known protocol"),
            (endpoint_slice("s", "web", "IPv4", http_port(80), json!([ready_ep("10.244.0.1"), {"addresses": ["nope"]}])),
             "EndpointSlice shop/s: endpoints[1].addresses[0]: \"nope\" is not an IP address"),
            (endpoint_slice("s", "web", "IPv4", http_port(80), json!([{"addresses": ["fd00::1"]}])),
             "EndpointSlice shop/s: endpoints[0].addresses[0]: fd00::1 does not match addressType IPv4"),
            (endpoint_slice("s", "web", "IPv4", http_port(80), json!([{"addresses": []}])),
             "EndpointSlice shop/s: endpoints[0].addresses: no address"),
        ];
        for (bad, want) in cases {
            let good = endpoint_slice(
                "t",
                "web",
                "IPv4",
                http_port(8080),
                json!([ready_ep("10.244.0.7")]),
            );
            let (t, errors) = build(vec![service("web", json!({}))], vec![bad, good]);
            assert_eq!(errors.len(), 1, "{want}: {errors:?}");
            assert_eq!(errors[0].to_string(), want);
            // The bad slice is skipped; the Service and its good slice still work.
            assert_eq!(
                port(&t, "10.96.0.20", 80, Protocol::Tcp).usable,
                vec![sa("10.244.0.7:8080")]
            );
        }
    }

    #[test]
    fn duplicate_cluster_ip_names_both_services() {
        let (t, errors) = build(
            vec![
                service("b", json!({"clusterIP": "10.96.0.5"})),
                service("a", json!({"clusterIP": "10.96.0.5"})),
            ],
            vec![],
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            "Service shop/b: spec.clusterIP: 10.96.0.5 is already the ClusterIP of Service shop/a"
        );
        assert_eq!(entry(&t, "a").not_exposed, None);
        assert!(matches!(
            entry(&t, "b").not_exposed,
            Some(NotExposed::Invalid(_))
        ));
        assert_eq!(
            t.service_of(ip("10.96.0.5")).map(|id| id.name.as_str()),
            Some("a")
        );
    }

    #[test]
    fn duplicate_objects_are_reported() {
        let (_, errors) = build(
            vec![service("a", json!({})), service("a", json!({}))],
            vec![],
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            "Service shop/a: metadata.name: defined twice"
        );
    }

    #[test]
    fn ignored_kinds_carried_into_table() {
        let mut ignored_kinds = BTreeMap::new();
        ignored_kinds.insert("ConfigMap".to_string(), 2);
        let objs = Objects {
            services: vec![],
            slices: vec![],
            ignored_kinds,
        };
        let (t, _) = build_table(1, &objs, &BuildOptions::default());
        assert_eq!(t.ignored_kinds, vec![("ConfigMap".to_string(), 2)]);
    }

    #[test]
    fn build_is_deterministic() {
        let objs = || {
            vec![
                endpoint_slice(
                    "b",
                    "web",
                    "IPv4",
                    http_port(8080),
                    json!([ready_ep("10.244.0.2")]),
                ),
                endpoint_slice(
                    "a",
                    "web",
                    "IPv4",
                    http_port(8080),
                    json!([ready_ep("10.244.0.1")]),
                ),
            ]
        };
        let (t1, _) = build(vec![service("web", json!({}))], objs());
        let mut rev = objs();
        rev.reverse();
        let (t2, _) = build(vec![service("web", json!({}))], rev);
        assert_eq!(t1.services, t2.services);
    }
}
