//! The pure core of the DNS server: one query (bytes), the snapshot's names and the
//! client's address in, one [`Outcome`] out. No sockets, no clock, no tokio.
//!
//! The records, for the zone `ZONE` (default `cluster.local.`):
//! - `svc.ns.svc.ZONE` A/AAAA → the ClusterIPs; for a headless Service the usable endpoints;
//!   for an ExternalName a CNAME to its target (whatever the type asked);
//! - `label.svc.ns.svc.ZONE` A/AAAA → the headless endpoints with that label (a
//!   StatefulSet pod's hostname, or the dashed address);
//! - `_port._proto.svc.ns.svc.ZONE` SRV → the named port (priority 0, weight 100, the
//!   Service's name as target; for headless Services one per endpoint, with its own port),
//!   the addresses of the targets in the additional section;
//! - PTR for ClusterIPs and headless endpoints (`in-addr.arpa`, `ip6.arpa`);
//! - SOA and NS at the apex (`ns.dns.ZONE`, whose address is the one the query came to).
//!
//! RFC 2308: a name that does not exist is NXDOMAIN; a name that exists (including empty
//! non-terminals such as `svc.ZONE`, `ns.svc.ZONE`, `_tcp.svc.ns.svc.ZONE`) without the
//! type asked is NOERROR with no answer (NODATA); both carry the SOA in the authority
//! section, with the TTL of the SOA's minimum. A Service the policy does not expose, or one
//! whose allowed sources do not include the client, does not exist for that client.
//!
//! Outside the zone: REFUSED (never an open resolver), or [`Outcome::Forward`] when a
//! forwarder is configured. A malformed query is FORMERR (or dropped when not even its
//! header can be read, or when it is a response); nothing here panics on input.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::IpNet;

use super::stats::DropReason;
use crate::cluster::names::{NameKind, NameTable, ServiceNames};
use crate::cluster::table::Protocol;

/// Largest UDP reply sent to an EDNS client (the DNS flag day 2020 value: no IP
/// fragmentation on common paths). Clients without EDNS get 512 bytes.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Largest reply without EDNS (RFC 1035).
pub const CLASSIC_UDP_PAYLOAD: usize = 512;

/// SOA timers (seconds): refresh, retry, expire. Nothing transfers this zone; they are
/// the values cluster DNS uses.
const SOA_REFRESH: i32 = 7200;
const SOA_RETRY: i32 = 1800;
const SOA_EXPIRE: i32 = 86400;

/// What the answer function needs besides the query.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Lowercase FQDN of the zone.
    pub zone: Name,
    pub ttl: u32,
    /// Whether out-of-zone queries are forwarded (`--dns-forward`).
    pub forward: bool,
    /// The operator's `--allow-source` (`None`: any). A client outside it is REFUSED for
    /// everything, including forwarding.
    pub allow: Option<Vec<IpNet>>,
}

impl DnsConfig {
    pub fn new(zone: Name, ttl: u32) -> Self {
        DnsConfig {
            zone,
            ttl,
            forward: false,
            allow: None,
        }
    }
}

/// How the query arrived (decides truncation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The decision for one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Reply),
    /// Out of zone with a forwarder configured: send the query on unchanged (the shell
    /// rewrites its ID). `id` is the client's ID.
    Forward { id: u16 },
    /// Send nothing (counted with this reason).
    Drop(DropReason),
}

/// A reply, encoded, with what the counters and the event feed need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    /// Lowercase label of the response code (`noerror`, `nxdomain`, ...).
    pub rcode: &'static str,
    /// NOERROR without an answer.
    pub nodata: bool,
    /// Cut to the header and question (TC) because it did not fit in UDP.
    pub truncated: bool,
    /// `NXDOMAIN web.shop.svc.cluster.local. A` for failed queries (not NOERROR), for the
    /// event feed.
    pub failure: Option<String>,
}

fn rcode_label(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "noerror",
        ResponseCode::FormErr => "formerr",
        ResponseCode::ServFail => "servfail",
        ResponseCode::NXDomain => "nxdomain",
        ResponseCode::NotImp => "notimp",
        ResponseCode::Refused => "refused",
        _ => "servfail",
    }
}

/// Answers one query. `local` is the address the query arrived on (the NS's address), if
/// known.
pub fn handle(
    bytes: &[u8],
    names: &NameTable,
    serial: u64,
    cfg: &DnsConfig,
    source: IpAddr,
    local: Option<IpAddr>,
    transport: Transport,
) -> Outcome {
    if bytes.len() < 12 {
        return Outcome::Drop(DropReason::Runt);
    }
    // QR set: a response. Never answer it (two servers would bounce errors forever).
    if bytes[2] & 0x80 != 0 {
        return Outcome::Drop(DropReason::NotAQuery);
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let request = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(e) => {
            let op = OpCode::from_u8((bytes[2] >> 3) & 0x0f);
            let mut m = Message::error_msg(id, op, ResponseCode::FormErr);
            m.set_recursion_desired(bytes[2] & 0x01 != 0);
            return encode(
                m,
                false,
                (transport == Transport::Udp).then_some(CLASSIC_UDP_PAYLOAD),
                Some(format!("FORMERR malformed query: {e}")),
            );
        }
    };
    let max_udp = match request.extensions() {
        Some(edns) => usize::from(edns.max_payload().clamp(512, MAX_UDP_PAYLOAD)),
        None => CLASSIC_UDP_PAYLOAD,
    };
    let (response, nodata, failure) = respond(&request, names, serial, cfg, source, local);
    match response {
        Respond::Forward => Outcome::Forward { id },
        Respond::Message(m) => encode(
            m,
            nodata,
            (transport == Transport::Udp).then_some(max_udp),
            failure,
        ),
    }
}

enum Respond {
    Message(Message),
    Forward,
}

/// Encodes `m`; over UDP (`limit`) a reply that does not fit is cut to the question, TC set;
/// over TCP the encoder keeps what fits in 65,535 bytes, TC set.
fn encode(m: Message, nodata: bool, limit: Option<usize>, failure: Option<String>) -> Outcome {
    let rcode = rcode_label(m.response_code());
    let bytes = match m.to_vec() {
        Ok(b) => b,
        // Records built here always encode; if one did not, say so rather than drop.
        Err(e) => {
            let mut err = Message::error_msg(m.id(), m.op_code(), ResponseCode::ServFail);
            err.add_queries(m.queries().iter().cloned());
            return Outcome::Reply(Reply {
                bytes: err.to_vec().unwrap_or_default(),
                rcode: "servfail",
                nodata: false,
                truncated: false,
                failure: Some(format!("SERVFAIL cannot encode the answer: {e}")),
            });
        }
    };
    match limit {
        Some(limit) if bytes.len() > limit => {
            let mut cut = m.truncate();
            let mut bytes = cut.to_vec().unwrap_or_default();
            // Questions alone can exceed the limit (a query may carry many, each up to 255
            // bytes): then the header alone, TC set, tells the client to ask over TCP.
            if bytes.len() > limit {
                cut.take_queries();
                bytes = cut.to_vec().unwrap_or_default();
            }
            Outcome::Reply(Reply {
                bytes,
                rcode,
                nodata,
                truncated: true,
                failure,
            })
        }
        // Over TCP the encoder itself stops at 65,535 bytes (a message's length is 16
        // bits): it keeps the records that fit and sets TC (a headless Service of some
        // 4,000 endpoints). Counted as truncated like a cut UDP reply.
        _ => Outcome::Reply(Reply {
            truncated: bytes.get(2).is_some_and(|flags| flags & 0x02 != 0),
            bytes,
            rcode,
            nodata,
            failure,
        }),
    }
}

/// The reply header for `request`.
fn reply_to(request: &Message) -> Message {
    let mut m = Message::new();
    m.set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_checking_disabled(request.checking_disabled());
    m.add_queries(request.queries().iter().cloned());
    if request.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        m.set_edns(edns);
    }
    m
}

fn describe(code: &str, q: &Query) -> String {
    format!("{code} {} {}", q.name(), q.query_type())
}

fn respond(
    request: &Message,
    names: &NameTable,
    serial: u64,
    cfg: &DnsConfig,
    source: IpAddr,
    local: Option<IpAddr>,
) -> (Respond, bool, Option<String>) {
    let mut m = reply_to(request);
    let fail = |mut m: Message, code: ResponseCode, why: String| {
        m.set_response_code(code);
        (Respond::Message(m), false, Some(why))
    };
    if request.message_type() != MessageType::Query {
        return fail(m, ResponseCode::FormErr, "FORMERR not a query".into());
    }
    if request.op_code() != OpCode::Query {
        return fail(
            m,
            ResponseCode::NotImp,
            format!("NOTIMP opcode {:?}", request.op_code()),
        );
    }
    let [q] = request.queries() else {
        return fail(
            m,
            ResponseCode::FormErr,
            format!(
                "FORMERR {} questions (one is allowed)",
                request.queries().len()
            ),
        );
    };
    if request.answer_count() > 0 {
        return fail(m, ResponseCode::FormErr, describe("FORMERR", q));
    }
    if let Some(allow) = &cfg.allow {
        if !allow.iter().any(|n| n.contains(&source)) {
            return fail(m, ResponseCode::Refused, describe("REFUSED (source)", q));
        }
    }
    if q.query_class() != DNSClass::IN {
        return fail(m, ResponseCode::Refused, describe("REFUSED (class)", q));
    }
    let qname = q.name().to_lowercase();
    let qtype = q.query_type();
    let ttl = cfg.ttl;

    // Reverse names: answered for addresses we know, like a zone of their own.
    if let Some(ip) = reverse_ip(&qname) {
        let visible: Vec<_> = names
            .reverse(ip)
            .iter()
            .filter(|r| r.service.allows(source))
            .collect();
        if !visible.is_empty() {
            m.set_authoritative(true);
            if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                for r in visible {
                    let target = match &r.label {
                        Some(label) => service_name(&r.service, Some(label), &cfg.zone),
                        None => service_name(&r.service, None, &cfg.zone),
                    };
                    if let Some(target) = target {
                        m.add_answer(Record::from_rdata(
                            q.name().clone(),
                            ttl,
                            RData::PTR(PTR(target)),
                        ));
                    }
                }
            }
            let nodata = m.answers().is_empty();
            return (Respond::Message(m), nodata, None);
        }
    }

    if !cfg.zone.zone_of(&qname) {
        if cfg.forward {
            return (Respond::Forward, false, None);
        }
        return fail(
            m,
            ResponseCode::Refused,
            describe("REFUSED (not in zone)", q),
        );
    }
    m.set_authoritative(true);

    // Labels below the apex, leftmost first: `web.shop.svc` → ["web", "shop", "svc"].
    // Counted with `iter` (`num_labels` leaves a leading `*` out).
    let depth = qname.iter().count().saturating_sub(cfg.zone.iter().count());
    let labels: Vec<String> = qname
        .iter()
        .take(depth)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let found = lookup(&labels, names, source);
    let owner = q.name().clone();
    match found {
        Node::Missing => {
            m.set_response_code(ResponseCode::NXDomain);
            m.add_name_server(soa(&cfg.zone, serial, ttl));
            (Respond::Message(m), false, Some(describe("NXDOMAIN", q)))
        }
        Node::Apex => {
            let want = |t: RecordType| qtype == t || qtype == RecordType::ANY;
            if want(RecordType::SOA) {
                m.add_answer(soa(&cfg.zone, serial, ttl));
            }
            if want(RecordType::NS) {
                if let Some(ns) = ns_name(&cfg.zone) {
                    m.add_answer(Record::from_rdata(owner, ttl, RData::NS(NS(ns))));
                }
            }
            finish(m, &cfg.zone, serial, ttl)
        }
        Node::NameServer => {
            if let Some(ip) = local {
                add_addresses(&mut m, &owner, &[ip], qtype, ttl);
            }
            finish(m, &cfg.zone, serial, ttl)
        }
        Node::Empty => finish(m, &cfg.zone, serial, ttl),
        Node::Service(svc) => {
            match &svc.kind {
                NameKind::ClusterIp { ips, .. } => add_addresses(&mut m, &owner, ips, qtype, ttl),
                NameKind::Headless { endpoints } => {
                    let ips: Vec<IpAddr> = endpoints.iter().map(|e| e.ip).collect();
                    add_addresses(&mut m, &owner, &ips, qtype, ttl);
                }
                NameKind::ExternalName { target } => {
                    if let Ok(mut target) = Name::from_ascii(target) {
                        target.set_fqdn(true);
                        m.add_answer(Record::from_rdata(owner, ttl, RData::CNAME(CNAME(target))));
                    }
                }
            }
            finish(m, &cfg.zone, serial, ttl)
        }
        Node::Endpoint(svc, label) => {
            let ips: Vec<IpAddr> = svc
                .endpoints()
                .iter()
                .filter(|e| e.label == label)
                .map(|e| e.ip)
                .collect();
            add_addresses(&mut m, &owner, &ips, qtype, ttl);
            finish(m, &cfg.zone, serial, ttl)
        }
        Node::Srv(svc, port, protocol) => {
            if matches!(qtype, RecordType::SRV | RecordType::ANY) {
                add_srv(&mut m, &owner, svc, &port, protocol, &cfg.zone, ttl);
            }
            finish(m, &cfg.zone, serial, ttl)
        }
    }
}

/// NOERROR: with answers as they are, or NODATA (SOA in the authority section).
fn finish(mut m: Message, zone: &Name, serial: u64, ttl: u32) -> (Respond, bool, Option<String>) {
    let nodata = m.answers().is_empty();
    if nodata {
        m.add_name_server(soa(zone, serial, ttl));
    }
    (Respond::Message(m), nodata, None)
}

/// What a name in the zone is.
enum Node<'a> {
    Missing,
    Apex,
    /// `ns.dns.ZONE`, the name server's own name.
    NameServer,
    /// An empty non-terminal (exists, has no records).
    Empty,
    Service(&'a ServiceNames),
    Endpoint(&'a ServiceNames, String),
    Srv(&'a ServiceNames, String, Protocol),
}

fn proto_label(l: &str) -> Option<Protocol> {
    match l {
        "_tcp" => Some(Protocol::Tcp),
        "_udp" => Some(Protocol::Udp),
        _ => None,
    }
}

fn lookup<'a>(labels: &[String], names: &'a NameTable, source: IpAddr) -> Node<'a> {
    let visible = |ns: &str, svc: &str| {
        names
            .service(ns, svc)
            .map(|s| s.as_ref())
            .filter(|s| s.allows(source))
    };
    match labels {
        [] => Node::Apex,
        [d] if d == "dns" => Node::Empty,
        [n, d] if n == "ns" && d == "dns" => Node::NameServer,
        [s] if s == "svc" => Node::Empty,
        [ns, s] if s == "svc" => {
            if names.namespace(ns).iter().any(|svc| svc.allows(source)) {
                Node::Empty
            } else {
                Node::Missing
            }
        }
        [svc, ns, s] if s == "svc" => visible(ns, svc).map_or(Node::Missing, Node::Service),
        [first, svc, ns, s] if s == "svc" => {
            let Some(service) = visible(ns, svc) else {
                return Node::Missing;
            };
            if let Some(protocol) = proto_label(first) {
                // `_tcp.svc.ns.svc.ZONE` exists when a named port of that protocol does.
                if ports_of(service)
                    .iter()
                    .any(|(n, p, _)| !n.is_empty() && *p == protocol)
                {
                    return Node::Empty;
                }
                return Node::Missing;
            }
            if service.endpoints().iter().any(|e| e.label == *first) {
                Node::Endpoint(service, first.clone())
            } else {
                Node::Missing
            }
        }
        [port, proto, svc, ns, s] if s == "svc" => {
            let Some(service) = visible(ns, svc) else {
                return Node::Missing;
            };
            let (Some(protocol), Some(port_name)) = (proto_label(proto), port.strip_prefix('_'))
            else {
                return Node::Missing;
            };
            if ports_of(service)
                .iter()
                .any(|(n, p, _)| n == port_name && *p == protocol)
            {
                Node::Srv(service, port_name.to_string(), protocol)
            } else {
                Node::Missing
            }
        }
        _ => Node::Missing,
    }
}

/// Every (name, protocol, port) of a Service: its own ports, or its endpoints' for a
/// headless Service.
fn ports_of(svc: &ServiceNames) -> Vec<(String, Protocol, u16)> {
    match &svc.kind {
        NameKind::ClusterIp { ports, .. } => ports
            .iter()
            .map(|p| (p.name.clone(), p.protocol, p.port))
            .collect(),
        NameKind::Headless { endpoints } => endpoints
            .iter()
            .flat_map(|e| e.ports.iter().map(|p| (p.name.clone(), p.protocol, p.port)))
            .collect(),
        NameKind::ExternalName { .. } => Vec::new(),
    }
}

fn add_addresses(m: &mut Message, owner: &Name, ips: &[IpAddr], qtype: RecordType, ttl: u32) {
    for ip in ips {
        let rdata = match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(*v4)),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        m.add_answer(Record::from_rdata(owner.clone(), ttl, rdata));
    }
}

fn add_srv(
    m: &mut Message,
    owner: &Name,
    svc: &ServiceNames,
    port_name: &str,
    protocol: Protocol,
    zone: &Name,
    ttl: u32,
) {
    let matches =
        |p: &crate::cluster::names::NamedPort| p.name == port_name && p.protocol == protocol;
    match &svc.kind {
        NameKind::ClusterIp { ips, ports } => {
            let Some(target) = service_name(svc, None, zone) else {
                return;
            };
            for p in ports.iter().filter(|p| matches(p)) {
                m.add_answer(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::SRV(SRV::new(0, 100, p.port, target.clone())),
                ));
            }
            for ip in ips {
                add_additional_address(m, &target, *ip, ttl);
            }
        }
        NameKind::Headless { endpoints } => {
            for e in endpoints {
                let Some(target) = service_name(svc, Some(&e.label), zone) else {
                    continue;
                };
                for p in e.ports.iter().filter(|p| matches(p)) {
                    m.add_answer(Record::from_rdata(
                        owner.clone(),
                        ttl,
                        RData::SRV(SRV::new(0, 100, p.port, target.clone())),
                    ));
                }
                add_additional_address(m, &target, e.ip, ttl);
            }
        }
        NameKind::ExternalName { .. } => {}
    }
}

fn add_additional_address(m: &mut Message, name: &Name, ip: IpAddr, ttl: u32) {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    m.add_additional(Record::from_rdata(name.clone(), ttl, rdata));
}

/// `svc.ns.svc.ZONE`, or `label.svc.ns.svc.ZONE`.
fn service_name(svc: &ServiceNames, label: Option<&str>, zone: &Name) -> Option<Name> {
    let mut parts: Vec<&str> = Vec::with_capacity(4);
    if let Some(l) = label {
        parts.push(l);
    }
    parts.extend([svc.id.name.as_str(), svc.id.namespace.as_str(), "svc"]);
    Name::from_labels(parts).ok()?.append_domain(zone).ok()
}

fn ns_name(zone: &Name) -> Option<Name> {
    Name::from_labels(["ns", "dns"])
        .ok()?
        .append_domain(zone)
        .ok()
}

/// The zone's SOA record; its TTL is the minimum, as RFC 2308 asks of negative answers.
fn soa(zone: &Name, serial: u64, ttl: u32) -> Record {
    let mname = ns_name(zone).unwrap_or_else(|| zone.clone());
    let rname = Name::from_labels(["hostmaster"])
        .ok()
        .and_then(|n| n.append_domain(zone).ok())
        .unwrap_or_else(|| zone.clone());
    let serial = u32::try_from(serial % (1 << 32)).unwrap_or(0);
    let minimum = ttl;
    Record::from_rdata(
        zone.clone(),
        ttl.min(minimum),
        RData::SOA(SOA::new(
            mname,
            rname,
            serial,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            minimum,
        )),
    )
}

/// The address of a full reverse name (`4.3.2.1.in-addr.arpa.`), if it is one.
fn reverse_ip(name: &Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

#[cfg(test)]
mod tests;
