//! Fuzzing harnesses beyond the packet parser (that one is
//! [`crate::dataplane::packet::fuzz::exercise`]): the engine's per-packet decision and the
//! snapshot-file path. The fuzz targets in `fuzz/` call them with what libFuzzer generates
//! (`scripts/fuzz.sh`); `tests/fuzz_corpus.rs` replays the committed seeds and every
//! regression input through them in ordinary `cargo test`. Each panics on a violated
//! property (the fuzzer's finding), and only then. Not part of the gateway's API.
//!
//! The DNS message path ([`dns`]): arbitrary bytes as a query to the gateway's DNS server,
//! answered from a small name table.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::cluster::build::{build_table, BuildOptions};
use crate::cluster::parse::parse_objects;
use crate::cluster::table::{Lookup, ServiceTable};
use crate::dataplane::engine::{Engine, EngineConfig, Verdict};
use crate::dataplane::nat::{NatConfig, Partition};
use crate::dataplane::packet::{parse, Checksum, MAX_PACKET};
use crate::dataplane::stats::{ConnResult, Stats};

const TABLE: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: f}
  spec:
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10, "fd00:10:96::10"]
    ipFamilies: [IPv4, IPv6]
    sessionAffinity: ClientIP
    ports: [{name: http, port: 80, protocol: TCP, targetPort: http}]
- apiVersion: v1
  kind: Service
  metadata: {name: dns, namespace: f}
  spec:
    clusterIP: 10.96.0.53
    ports: [{name: dns, port: 53, protocol: UDP}]
- apiVersion: v1
  kind: Service
  metadata: {name: empty, namespace: f}
  spec:
    clusterIP: 10.96.0.99
    ports: [{name: http, port: 80, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-4, namespace: f, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.10]}, {addresses: [10.244.2.10]}]
  ports: [{name: http, port: 8080, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-6, namespace: f, labels: {kubernetes.io/service-name: web}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:10:244:1::a"]}]
  ports: [{name: http, port: 8080, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: dns-4, namespace: f, labels: {kubernetes.io/service-name: dns}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.10]}]
  ports: [{name: dns, port: 5353, protocol: UDP}]
"#;

/// The small table the engine harness decides against: a dual-stack TCP Service with
/// ClientIP affinity and endpoints, a UDP Service, a TCP Service without endpoints.
pub fn engine_table() -> &'static ServiceTable {
    static TABLE_ONCE: OnceLock<ServiceTable> = OnceLock::new();
    TABLE_ONCE.get_or_init(|| {
        let objs = parse_objects("fuzz.yaml", TABLE).expect("the table parses");
        let (table, errors) = build_table(1, &objs, &BuildOptions::default());
        assert!(errors.is_empty(), "{errors:?}");
        table
    })
}

/// The engine's per-packet decision (`Engine::handle`) on arbitrary packets against
/// [`engine_table`]. `data` is split into up to 16 packets (each a 2-byte big-endian length
/// and its bytes), handled in order by one engine with the clock advancing 700 ms a packet,
/// so that flows carry state from one packet to the next (new UDP flows are inserted as the
/// worker would); then everything expires. What must hold for any input: no panic; every
/// packet a verdict says to write fits its buffer and parses.
pub fn engine(data: &[u8]) {
    let table = engine_table();
    let t0 = Instant::now();
    let nat = NatConfig::new(
        "198.18.0.0/16".parse().unwrap(),
        "fdc7:7779::/64".parse().unwrap(),
        4,
    );
    let mut config = EngineConfig::new(nat, 4);
    // Both dataplanes' decisions: an odd-length input runs the engine as flow offload does,
    // half of those with TCP affinities left to the conntrack events (as the gateway runs
    // when it reads them).
    config.offload = data.len() % 2 == 1;
    config.affinity_from_events = data.len() % 4 == 3;
    let mut engine: Engine<u32> = Engine::new(config, 4000, Arc::new(Stats::default()), t0);
    let mut buf = vec![0u8; MAX_PACKET];
    let mut scratch = vec![0u8; 2048];
    let mut rest = data;
    let mut handle_id = 0u32;
    for step in 0..16u64 {
        if rest.len() < 2 {
            break;
        }
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let packet = &rest[2..2 + n];
        rest = &rest[2 + n..];
        buf[..n].copy_from_slice(packet);
        let now = t0 + Duration::from_millis(step * 700);
        match engine.handle(table, &mut buf, n, Checksum::Full, now, &mut scratch) {
            Verdict::Forward { len, .. } | Verdict::NewTcp { len, .. } => {
                assert!(len <= MAX_PACKET);
                if let Err(e) = parse(&buf[..len]) {
                    panic!("a forwarded packet does not parse: {e}");
                }
            }
            Verdict::Reply { len } => {
                assert!(len <= scratch.len());
                if let Err(e) = parse(&scratch[..len]) {
                    panic!("a reply the gateway built does not parse: {e}");
                }
            }
            Verdict::UdpSend { payload, .. } => assert!(payload.end <= MAX_PACKET),
            Verdict::UdpNew {
                key,
                port,
                endpoint,
                payload,
            } => {
                assert!(payload.end <= MAX_PACKET);
                handle_id += 1;
                engine.udp_insert(key, port, endpoint, handle_id, now);
            }
            Verdict::Offload {
                len,
                key,
                port,
                endpoint,
            } => {
                assert!(len <= MAX_PACKET);
                if let Err(e) = parse(&buf[..len]) {
                    panic!("a packet to re-inject does not parse: {e}");
                }
                // The kernel takes the flow, or refuses it (its table full): both paths.
                if step % 2 == 0 {
                    engine.offloaded(key, &port, endpoint, now);
                } else {
                    let refuse = if port.protocol == crate::cluster::table::Protocol::Udp {
                        Engine::refuse_udp
                    } else {
                        Engine::refuse_tcp
                    };
                    let rst = refuse(
                        &mut engine,
                        &buf,
                        len,
                        &port,
                        ConnResult::TableFull,
                        now,
                        &mut scratch,
                    );
                    if rst > 0 {
                        if let Err(e) = parse(&scratch[..rst]) {
                            panic!("a RST the gateway built does not parse: {e}");
                        }
                    }
                }
            }
            Verdict::Drop(_) => {}
        }
    }
    engine.expire(t0 + Duration::from_secs(3600), Partition::WHOLE, |_| None);
}

/// The snapshot-file path (`clusterway run --from-file`): arbitrary text is parsed as
/// YAML/JSON Kubernetes objects (`parse_objects`) and, when that succeeds, built into a
/// table with kube-proxy's semantics (`build_table`). What must hold for any input: no
/// panic (a bad object is an error naming it); every exposed port is found by the table's
/// lookup; usable endpoints are among the port's endpoints.
pub fn snapshot(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(objs) = parse_objects("fuzz.yaml", text) else {
        return;
    };
    let opts = BuildOptions {
        proxy_name: Some("clusterway".into()),
    };
    let (table, _errors) = build_table(1, &objs, &opts);
    for p in table.ports() {
        match table.lookup(p.cluster_ip, p.port, p.protocol) {
            Lookup::Port(found) => assert_eq!(found.frontend(), p.frontend()),
            other => panic!("an exposed port is not found by lookup: {other:?}"),
        }
        assert!(p
            .usable
            .iter()
            .all(|u| p.endpoints.iter().any(|e| e.addr == *u)));
    }
}

/// The names the DNS harness answers from: a ClusterIP Service with a named port, a
/// StatefulSet-style headless Service with two named pods (one dual-stack), an
/// ExternalName, and a Service that allows only one client range.
const DNS_TABLE: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: f}
  spec:
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10, "fd00:10:96::10"]
    ipFamilies: [IPv4, IPv6]
    ports: [{name: http, port: 80, protocol: TCP}, {name: dns, port: 53, protocol: UDP}]
- apiVersion: v1
  kind: Service
  metadata: {name: db, namespace: f}
  spec:
    clusterIP: None
    ports: [{name: sql, port: 5432}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: db-4, namespace: f, labels: {kubernetes.io/service-name: db}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.10], hostname: db-0}, {addresses: [10.244.2.10], hostname: db-1}]
  ports: [{name: sql, port: 5432, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: db-6, namespace: f, labels: {kubernetes.io/service-name: db}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:10:244:1::a"], hostname: db-0}]
  ports: [{name: sql, port: 5432, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: legacy, namespace: f}
  spec: {type: ExternalName, externalName: legacy.example.com}
- apiVersion: v1
  kind: Service
  metadata:
    name: private
    namespace: f
    annotations: {clusterway.io/allow-sources: "192.168.0.0/16"}
  spec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 80}]}
"#;

/// The gateway's DNS answer (`dns::answer::handle`) for arbitrary bytes, as a query over
/// UDP and over TCP, from an allowed client and from one outside a Service's allowed range,
/// with and without forwarding. What must hold for any input: no panic; a reply parses as a
/// DNS message, is a response, carries the query's ID, has TC set exactly when it is counted
/// as truncated, and over UDP fits in 512 bytes or
/// the payload size the query's EDNS record offers (at most 1,232).
pub fn dns(data: &[u8]) {
    use crate::dns::answer::{
        handle, DnsConfig, Outcome, Transport, CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD,
    };
    use hickory_proto::op::{Message, MessageType};

    static NAMES: OnceLock<Arc<crate::cluster::names::NameTable>> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        let objs = parse_objects("fuzz-dns.yaml", DNS_TABLE).expect("the names parse");
        let (table, errors) = build_table(1, &objs, &BuildOptions::default());
        assert!(errors.is_empty(), "{errors:?}");
        table.names
    });
    let zone = crate::dns::parse_zone("cluster.local").expect("the zone parses");
    let query = Message::from_vec(data).ok();
    let offered = query
        .as_ref()
        .and_then(|q| q.extensions().as_ref().map(|e| e.max_payload()))
        .map_or(CLASSIC_UDP_PAYLOAD, |p| {
            usize::from(p.clamp(512, MAX_UDP_PAYLOAD))
        });
    for (forward, source) in [(false, "192.168.1.50"), (true, "10.9.9.9")] {
        let mut cfg = DnsConfig::new(zone.clone(), 5);
        cfg.forward = forward;
        let source = source.parse().expect("an address");
        for transport in [Transport::Udp, Transport::Tcp] {
            let out = handle(data, names, 1, &cfg, source, None, transport);
            let Outcome::Reply(reply) = out else {
                continue;
            };
            let msg = match Message::from_vec(&reply.bytes) {
                Ok(m) => m,
                Err(e) => panic!("a reply does not parse: {e}"),
            };
            assert_eq!(msg.message_type(), MessageType::Response);
            assert_eq!(msg.id(), u16::from_be_bytes([data[0], data[1]]));
            // What the truncation counter counts is what the client sees.
            assert_eq!(reply.truncated, msg.truncated(), "{msg:?}");
            if transport == Transport::Udp {
                assert!(
                    reply.bytes.len() <= offered,
                    "a UDP reply of {} bytes where {offered} were offered",
                    reply.bytes.len()
                );
            }
        }
    }
}
