//! Record-level tests of every rule, from the fixture snapshot (no sockets).

use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use proptest::prelude::*;

use super::*;
use crate::cluster::build::{build_table_with, BuildOptions};
use crate::cluster::names::NameTable;
use crate::cluster::parse::parse_objects;
use crate::cluster::policy::Policy;

const FIXTURE: &str = include_str!("../../../tests/fixtures/cluster-snapshot.yaml");

/// A StatefulSet-style headless Service with two named pods (pg-0 dual-stack), a Service
/// that allows only 192.168.0.0/16, and a non-exposed Service.
const EXTRA: &str = r#"
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
metadata: {name: pg-v4, namespace: shop, labels: {kubernetes.io/service-name: pg}}
addressType: IPv4
ports: [{name: sql, port: 5432, protocol: TCP}]
endpoints:
- addresses: [10.244.2.10]
  hostname: pg-0
- addresses: [10.244.2.11]
  hostname: pg-1
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: pg-v6, namespace: shop, labels: {kubernetes.io/service-name: pg}}
addressType: IPv6
ports: [{name: sql, port: 5432, protocol: TCP}]
endpoints:
- addresses: ["fd00:10:244::10"]
  hostname: pg-0
---
apiVersion: v1
kind: Service
metadata:
  name: private
  namespace: shop
  annotations: {clusterway.io/allow-sources: "192.168.0.0/16"}
spec: {clusterIP: 10.96.50.50, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata:
  name: hidden
  namespace: shop
  annotations: {clusterway.io/expose: "false"}
spec: {clusterIP: 10.96.50.51, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: secret, namespace: vault}
spec: {clusterIP: 10.96.50.52, ports: [{name: http, port: 80}]}
"#;

const CLIENT: &str = "192.168.1.50";
const OUTSIDER: &str = "10.9.9.9";

fn names() -> Arc<NameTable> {
    static NAMES: std::sync::OnceLock<Arc<NameTable>> = std::sync::OnceLock::new();
    NAMES.get_or_init(build_names).clone()
}

fn build_names() -> Arc<NameTable> {
    let mut policy = Policy::default();
    policy.exclude_namespaces.insert("vault".into());
    let objs = parse_objects("t.yaml", &format!("{FIXTURE}{EXTRA}")).expect("parses");
    build_table_with(3, &objs, &BuildOptions::default(), &policy)
        .0
        .names
}

fn cfg() -> DnsConfig {
    DnsConfig::new(crate::dns::parse_zone("cluster.local").unwrap(), 5)
}

fn query_bytes(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(0x1234)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn ask_full(
    names: &NameTable,
    cfg: &DnsConfig,
    name: &str,
    t: RecordType,
    from: &str,
    transport: Transport,
) -> (Message, Reply) {
    let bytes = query_bytes(name, t, false);
    match handle(
        &bytes,
        names,
        3,
        cfg,
        from.parse().unwrap(),
        Some("10.0.0.53".parse().unwrap()),
        transport,
    ) {
        Outcome::Reply(r) => (Message::from_vec(&r.bytes).expect("reply parses"), r),
        other => panic!("{name} {t}: {other:?}"),
    }
}

fn ask(name: &str, t: RecordType) -> Message {
    ask_full(&names(), &cfg(), name, t, CLIENT, Transport::Udp).0
}

fn data(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m.answers().iter().map(|r| r.data().to_string()).collect();
    v.sort();
    v
}

fn assert_nxdomain(m: &Message) {
    assert_eq!(m.response_code(), ResponseCode::NXDomain, "{m:?}");
    assert!(m.answers().is_empty());
    assert_negative_soa(m);
}

fn assert_nodata(m: &Message) {
    assert_eq!(m.response_code(), ResponseCode::NoError, "{m:?}");
    assert!(m.answers().is_empty(), "{m:?}");
    assert_negative_soa(m);
}

/// RFC 2308: the SOA of the zone in the authority section, TTL = the SOA minimum.
fn assert_negative_soa(m: &Message) {
    assert!(m.authoritative());
    let [soa] = m.name_servers() else {
        panic!("one SOA in authority: {m:?}")
    };
    assert_eq!(soa.name().to_ascii(), "cluster.local.");
    let RData::SOA(s) = soa.data() else {
        panic!("{soa:?}")
    };
    assert_eq!(soa.ttl(), s.minimum());
    assert_eq!(s.minimum(), 5);
    assert_eq!(s.serial(), 3);
}

#[test]
fn clusterip_a_and_aaaa() {
    let m = ask("web.shop.svc.cluster.local.", RecordType::A);
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.authoritative());
    assert!(!m.recursion_available());
    assert_eq!(m.id(), 0x1234);
    assert_eq!(data(&m), ["10.96.62.173"]);
    assert_eq!(m.answers()[0].ttl(), 5);
    let m = ask("web.shop.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(data(&m), ["fd00:10:96::992d"]);
    // Names are case-insensitive; the question's case is kept.
    let m = ask("WEB.Shop.SVC.Cluster.Local.", RecordType::A);
    assert_eq!(data(&m), ["10.96.62.173"]);
    assert_eq!(
        m.answers()[0].name().to_ascii(),
        "WEB.Shop.SVC.Cluster.Local."
    );
    // A single-stack Service has no AAAA: NODATA.
    assert_nodata(&ask(
        "kube-dns.kube-system.svc.cluster.local.",
        RecordType::AAAA,
    ));
}

#[test]
fn headless_service_and_statefulset_pods() {
    let m = ask("pg.shop.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&m), ["10.244.2.10", "10.244.2.11"]);
    let m = ask("pg.shop.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(data(&m), ["fd00:10:244::10"]);
    let m = ask("pg-0.pg.shop.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&m), ["10.244.2.10"]);
    let m = ask("pg-0.pg.shop.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(data(&m), ["fd00:10:244::10"]);
    let m = ask("pg-1.pg.shop.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&m), ["10.244.2.11"]);
    assert_nxdomain(&ask("pg-2.pg.shop.svc.cluster.local.", RecordType::A));
    // The fixture's headless db: its endpoint has no hostname, so the dashed address.
    let m = ask("db.shop.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&m), ["10.244.1.51"]);
    let m = ask("10-244-1-51.db.shop.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&m), ["10.244.1.51"]);
}

#[test]
fn srv_for_named_ports() {
    let m = ask("_http._tcp.web.shop.svc.cluster.local.", RecordType::SRV);
    assert_eq!(data(&m), ["0 100 80 web.shop.svc.cluster.local."]);
    // The target's addresses come along.
    let mut extra: Vec<String> = m
        .additionals()
        .iter()
        .map(|r| r.data().to_string())
        .collect();
    extra.sort();
    assert_eq!(extra, ["10.96.62.173", "fd00:10:96::992d"]);
    // Headless: one per endpoint, each with its pod's name.
    let m = ask("_sql._tcp.pg.shop.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        data(&m),
        [
            "0 100 5432 pg-0.pg.shop.svc.cluster.local.",
            "0 100 5432 pg-0.pg.shop.svc.cluster.local.",
            "0 100 5432 pg-1.pg.shop.svc.cluster.local.",
        ]
    );
    // UDP port of kube-dns.
    let m = ask(
        "_dns._udp.kube-dns.kube-system.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        data(&m),
        ["0 100 53 kube-dns.kube-system.svc.cluster.local."]
    );
    // Wrong protocol or port name: no such name; the protocol node exists (NODATA).
    assert_nxdomain(&ask(
        "_http._udp.web.shop.svc.cluster.local.",
        RecordType::SRV,
    ));
    assert_nxdomain(&ask(
        "_nope._tcp.web.shop.svc.cluster.local.",
        RecordType::SRV,
    ));
    assert_nodata(&ask("_tcp.web.shop.svc.cluster.local.", RecordType::SRV));
    // An SRV name asked for A: NODATA.
    assert_nodata(&ask(
        "_http._tcp.web.shop.svc.cluster.local.",
        RecordType::A,
    ));
}

#[test]
fn external_name_is_a_cname() {
    for t in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
        let m = ask("legacy.shop.svc.cluster.local.", t);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(data(&m), ["legacy.example.com."], "{t}");
        assert_eq!(m.answers()[0].record_type(), RecordType::CNAME);
    }
}

#[test]
fn ptr_for_clusterips_and_headless_endpoints() {
    let m = ask("173.62.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&m), ["web.shop.svc.cluster.local."]);
    assert!(m.authoritative());
    let m = ask("10.2.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&m), ["pg-0.pg.shop.svc.cluster.local."]);
    let v6 = "d.2.9.9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.";
    let m = ask(v6, RecordType::PTR);
    assert_eq!(data(&m), ["web.shop.svc.cluster.local."]);
    // An address nobody has is outside what we answer: REFUSED without a forwarder.
    let m = ask("1.1.1.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(m.response_code(), ResponseCode::Refused);
    // The non-exposed Service's ClusterIP has no PTR either.
    let m = ask("51.50.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(m.response_code(), ResponseCode::Refused);
}

#[test]
fn soa_and_ns_at_the_apex() {
    let m = ask("cluster.local.", RecordType::SOA);
    assert_eq!(m.answers().len(), 1);
    let RData::SOA(soa) = m.answers()[0].data() else {
        panic!("{m:?}")
    };
    assert_eq!(soa.mname().to_ascii(), "ns.dns.cluster.local.");
    assert_eq!(soa.serial(), 3);
    let m = ask("cluster.local.", RecordType::NS);
    assert_eq!(data(&m), ["ns.dns.cluster.local."]);
    // The name server's own address is the one the query came to.
    let m = ask("ns.dns.cluster.local.", RecordType::A);
    assert_eq!(data(&m), ["10.0.0.53"]);
    assert_nodata(&ask("cluster.local.", RecordType::A));
}

#[test]
fn nxdomain_versus_nodata() {
    assert_nxdomain(&ask("nosuch.shop.svc.cluster.local.", RecordType::A));
    assert_nxdomain(&ask("web.nosuch.svc.cluster.local.", RecordType::A));
    assert_nxdomain(&ask("nosuch.svc.cluster.local.", RecordType::A));
    assert_nxdomain(&ask("a.b.c.d.e.f.cluster.local.", RecordType::A));
    assert_nxdomain(&ask("x.web.shop.svc.cluster.local.", RecordType::A));
    // A wildcard label is a label like any other here (no wildcard records).
    assert_nxdomain(&ask("*.cluster.local.", RecordType::SOA));
    assert_nxdomain(&ask("*.shop.svc.cluster.local.", RecordType::A));
    // Empty non-terminals exist: NODATA.
    assert_nodata(&ask("svc.cluster.local.", RecordType::A));
    assert_nodata(&ask("shop.svc.cluster.local.", RecordType::A));
    // An existing name without the type: NODATA.
    assert_nodata(&ask("web.shop.svc.cluster.local.", RecordType::MX));
    assert_nodata(&ask("web.shop.svc.cluster.local.", RecordType::TXT));
}

#[test]
fn policy_applies_to_names() {
    // Opted out by annotation, and a namespace the policy excludes: no such names.
    assert_nxdomain(&ask("hidden.shop.svc.cluster.local.", RecordType::A));
    assert_nxdomain(&ask("secret.vault.svc.cluster.local.", RecordType::A));
    assert_nxdomain(&ask("vault.svc.cluster.local.", RecordType::A));
    // A Service that allows only some sources exists only for them.
    let (names, cfg) = (names(), cfg());
    let (m, _) = ask_full(
        &names,
        &cfg,
        "private.shop.svc.cluster.local.",
        RecordType::A,
        CLIENT,
        Transport::Udp,
    );
    assert_eq!(data(&m), ["10.96.50.50"]);
    let (m, r) = ask_full(
        &names,
        &cfg,
        "private.shop.svc.cluster.local.",
        RecordType::A,
        OUTSIDER,
        Transport::Udp,
    );
    assert_nxdomain(&m);
    assert_eq!(r.rcode, "nxdomain");
    assert!(r
        .failure
        .as_deref()
        .unwrap()
        .starts_with("NXDOMAIN private.shop"));
    let (m, _) = ask_full(
        &names,
        &cfg,
        "50.50.96.10.in-addr.arpa.",
        RecordType::PTR,
        OUTSIDER,
        Transport::Udp,
    );
    assert_eq!(m.response_code(), ResponseCode::Refused);
    // --allow-source: a client outside it is refused everything.
    let mut limited = cfg.clone();
    limited.allow = Some(vec!["192.168.0.0/16".parse().unwrap()]);
    let (m, _) = ask_full(
        &names,
        &limited,
        "web.shop.svc.cluster.local.",
        RecordType::A,
        OUTSIDER,
        Transport::Udp,
    );
    assert_eq!(m.response_code(), ResponseCode::Refused);
    let (m, _) = ask_full(
        &names,
        &limited,
        "web.shop.svc.cluster.local.",
        RecordType::A,
        CLIENT,
        Transport::Udp,
    );
    assert_eq!(data(&m), ["10.96.62.173"]);
}

#[test]
fn out_of_zone_is_refused_or_forwarded() {
    let m = ask("example.com.", RecordType::A);
    assert_eq!(m.response_code(), ResponseCode::Refused);
    assert!(!m.authoritative());
    assert!(m.answers().is_empty());
    let m = ask("local.", RecordType::A);
    assert_eq!(m.response_code(), ResponseCode::Refused);
    let mut fwd = cfg();
    fwd.forward = true;
    let bytes = query_bytes("example.com.", RecordType::A, false);
    let out = handle(
        &bytes,
        &names(),
        3,
        &fwd,
        CLIENT.parse().unwrap(),
        None,
        Transport::Udp,
    );
    assert_eq!(out, Outcome::Forward { id: 0x1234 });
    // A client outside --allow-source cannot use the forwarder.
    fwd.allow = Some(vec!["192.168.0.0/16".parse().unwrap()]);
    let out = handle(
        &bytes,
        &names(),
        3,
        &fwd,
        OUTSIDER.parse().unwrap(),
        None,
        Transport::Udp,
    );
    assert!(
        matches!(
            out,
            Outcome::Reply(Reply {
                rcode: "refused",
                ..
            })
        ),
        "{out:?}"
    );
}

/// A headless Service with `n` endpoints.
fn big(n: usize) -> Arc<NameTable> {
    let mut eps = String::new();
    for i in 0..n {
        eps.push_str(&format!(
            "- addresses: [10.245.{}.{}]\n",
            i / 200,
            i % 200 + 1
        ));
    }
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: a}}\nspec: {{clusterIP: None}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: big-1, namespace: a, labels: {{kubernetes.io/service-name: big}}}}\n\
         addressType: IPv4\nendpoints:\n{eps}"
    );
    let objs = parse_objects("t.yaml", &text).unwrap();
    build_table_with(1, &objs, &BuildOptions::default(), &Policy::default())
        .0
        .names
}

#[test]
fn large_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let names = big(100);
    let (m, r) = ask_full(
        &names,
        &cfg(),
        "big.a.svc.cluster.local.",
        RecordType::A,
        CLIENT,
        Transport::Udp,
    );
    assert!(m.truncated());
    assert!(r.truncated);
    assert!(m.answers().is_empty());
    assert_eq!(m.queries().len(), 1);
    assert!(r.bytes.len() <= CLASSIC_UDP_PAYLOAD);
    let (m, r) = ask_full(
        &names,
        &cfg(),
        "big.a.svc.cluster.local.",
        RecordType::A,
        CLIENT,
        Transport::Tcp,
    );
    assert!(!m.truncated());
    assert_eq!(m.answers().len(), 100);
    assert!(r.bytes.len() > CLASSIC_UDP_PAYLOAD);
    // With EDNS a UDP client gets up to 1232 bytes: 60 A records (16 bytes each plus the
    // header and question) fit, 100 do not.
    let fits = big(60);
    let bytes = query_bytes("big.a.svc.cluster.local.", RecordType::A, true);
    let Outcome::Reply(r) = handle(
        &bytes,
        &fits,
        1,
        &cfg(),
        CLIENT.parse().unwrap(),
        None,
        Transport::Udp,
    ) else {
        panic!()
    };
    let m = Message::from_vec(&r.bytes).unwrap();
    assert!(!m.truncated());
    assert_eq!(m.answers().len(), 60);
    assert!(m.extensions().is_some(), "EDNS answered with EDNS");
    assert!(r.bytes.len() > CLASSIC_UDP_PAYLOAD && r.bytes.len() <= MAX_UDP_PAYLOAD as usize);
}

/// Over TCP a message is at most 65,535 bytes: 5,000 A records (16 bytes each) are not.
/// The client gets as many as fit, TC set, counted as truncated, not a SERVFAIL or nothing.
#[test]
fn an_answer_past_the_tcp_limit_keeps_what_fits() {
    let names = big(5000);
    let (m, r) = ask_full(
        &names,
        &cfg(),
        "big.a.svc.cluster.local.",
        RecordType::A,
        CLIENT,
        Transport::Tcp,
    );
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(r.rcode, "noerror");
    assert!(
        m.truncated() && r.truncated,
        "{} answers, {} bytes",
        m.answers().len(),
        r.bytes.len()
    );
    assert!(!r.nodata);
    assert!(r.bytes.len() <= usize::from(u16::MAX), "{}", r.bytes.len());
    // As many as fit: one more would not.
    let n = m.answers().len();
    assert!(
        n < 5000 && r.bytes.len() + 16 > usize::from(u16::MAX),
        "{n} answers"
    );
    assert!(n > 4000, "{n} answers");
    assert_eq!(m.queries().len(), 1);
    // Over UDP the same answer is the header and question.
    let (m, r) = ask_full(
        &names,
        &cfg(),
        "big.a.svc.cluster.local.",
        RecordType::A,
        CLIENT,
        Transport::Udp,
    );
    assert!(m.truncated() && r.truncated && m.answers().is_empty());
}

fn outcome(bytes: &[u8]) -> Outcome {
    handle(
        bytes,
        &names(),
        1,
        &cfg(),
        CLIENT.parse().unwrap(),
        None,
        Transport::Udp,
    )
}

#[test]
fn malformed_queries_are_formerr_or_dropped() {
    assert_eq!(outcome(&[0u8; 5]), Outcome::Drop(DropReason::Runt));
    // A response is never answered.
    let mut resp = query_bytes("web.shop.svc.cluster.local.", RecordType::A, false);
    resp[2] |= 0x80;
    assert_eq!(outcome(&resp), Outcome::Drop(DropReason::NotAQuery));
    // A header claiming a question that is not there: FORMERR with the same ID.
    let mut cut = query_bytes("web.shop.svc.cluster.local.", RecordType::A, false);
    cut.truncate(16);
    let Outcome::Reply(r) = outcome(&cut) else {
        panic!()
    };
    assert_eq!(r.rcode, "formerr");
    let m = Message::from_vec(&r.bytes).unwrap();
    assert_eq!(m.id(), 0x1234);
    assert_eq!(m.response_code(), ResponseCode::FormErr);
    assert!(r.failure.is_some());
    // Two questions.
    let mut two = Message::new();
    two.set_id(7);
    two.add_query(Query::query(
        Name::from_ascii("a.cluster.local.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("b.cluster.local.").unwrap(),
        RecordType::A,
    ));
    let Outcome::Reply(r) = outcome(&two.to_vec().unwrap()) else {
        panic!()
    };
    assert_eq!(r.rcode, "formerr");
    // Many long questions: even the FORMERR's question section exceeds 512 bytes over UDP,
    // so the reply is the header alone, TC set (found by fuzzing).
    let mut many = Message::new();
    many.set_id(11);
    for i in 0..9 {
        let name = format!("{}.{}.cluster.local.", "x".repeat(60), "y".repeat(i + 1));
        many.add_query(Query::query(
            Name::from_ascii(&name).unwrap(),
            RecordType::A,
        ));
    }
    let Outcome::Reply(r) = outcome(&many.to_vec().unwrap()) else {
        panic!()
    };
    assert_eq!(r.rcode, "formerr");
    assert!(r.truncated);
    assert!(
        r.bytes.len() <= CLASSIC_UDP_PAYLOAD,
        "{} bytes",
        r.bytes.len()
    );
    let m = Message::from_vec(&r.bytes).unwrap();
    assert_eq!(m.id(), 11);
    assert!(m.truncated() && m.queries().is_empty());
    // No question at all.
    let mut none = Message::new();
    none.set_id(8);
    let Outcome::Reply(r) = outcome(&none.to_vec().unwrap()) else {
        panic!()
    };
    assert_eq!(r.rcode, "formerr");
    // Another opcode: NOTIMP.
    let mut notify = Message::new();
    notify.set_id(9).set_op_code(OpCode::Notify);
    notify.add_query(Query::query(
        Name::from_ascii("cluster.local.").unwrap(),
        RecordType::SOA,
    ));
    let Outcome::Reply(r) = outcome(&notify.to_vec().unwrap()) else {
        panic!()
    };
    assert_eq!(r.rcode, "notimp");
    // Another class (CHAOS version.bind): REFUSED.
    let mut chaos = Message::new();
    chaos.set_id(10);
    let mut q = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
    q.set_query_class(DNSClass::CH);
    chaos.add_query(q);
    let Outcome::Reply(r) = outcome(&chaos.to_vec().unwrap()) else {
        panic!()
    };
    assert_eq!(r.rcode, "refused");
}

proptest! {
    /// Any bytes: an outcome, never a panic; a reply always parses and keeps the ID.
    #[test]
    fn any_bytes_get_an_outcome(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let names = names();
        if let Outcome::Reply(r) = handle(&bytes, &names, 1, &cfg(), CLIENT.parse().unwrap(), None, Transport::Udp) {
            let m = Message::from_vec(&r.bytes).expect("our reply parses");
            prop_assert_eq!(m.id(), u16::from_be_bytes([bytes[0], bytes[1]]));
            prop_assert_eq!(m.message_type(), MessageType::Response);
            prop_assert!(r.bytes.len() <= MAX_UDP_PAYLOAD as usize);
        }
    }

    /// A valid query with a mangled tail still gets an outcome.
    #[test]
    fn mangled_queries_get_an_outcome(cut in 12usize..60, flip in any::<u8>(), at in 12usize..60) {
        let mut q = query_bytes("_http._tcp.web.shop.svc.cluster.local.", RecordType::SRV, true);
        if at < q.len() { q[at] ^= flip; }
        q.truncate(cut.min(q.len()));
        let _ = handle(&q, &names(), 1, &cfg(), CLIENT.parse().unwrap(), None, Transport::Udp);
    }
}
