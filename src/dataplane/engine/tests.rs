//! Engine decisions on packets built by etherparse (an independent encoder), against a
//! table built from real Service/EndpointSlice YAML.

use super::*;
use crate::cluster::build::{build_table, BuildOptions};
use crate::cluster::parse::parse_objects;
use etherparse::PacketBuilder;

const SNAPSHOT: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: demo}
  spec:
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10, "fd00:10:96::10"]
    ipFamilies: [IPv4, IPv6]
    ports: [{name: http, port: 80, protocol: TCP, targetPort: http}]
- apiVersion: v1
  kind: Service
  metadata: {name: dns, namespace: demo}
  spec:
    clusterIP: 10.96.0.53
    clusterIPs: [10.96.0.53]
    ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353}]
- apiVersion: v1
  kind: Service
  metadata: {name: empty, namespace: demo}
  spec:
    clusterIP: 10.96.0.99
    clusterIPs: [10.96.0.99]
    ports: [{name: http, port: 80, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-a, namespace: demo, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints:
  - addresses: [10.244.1.10]
    conditions: {ready: true}
  - addresses: [10.244.2.10]
    conditions: {ready: true}
  ports: [{name: http, port: 8080, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-b, namespace: demo, labels: {kubernetes.io/service-name: web}}
  addressType: IPv6
  endpoints:
  - addresses: ["fd00:10:244:1::a"]
    conditions: {}
  ports: [{name: http, port: 8080, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: dns-a, namespace: demo, labels: {kubernetes.io/service-name: dns}}
  addressType: IPv4
  endpoints:
  - addresses: [10.244.1.10]
  ports: [{name: dns, port: 5353, protocol: UDP}]
"#;

fn table() -> ServiceTable {
    let objs = parse_objects("test.yaml", SNAPSHOT).unwrap();
    let (t, errors) = build_table(1, &objs, &BuildOptions::default());
    assert!(errors.is_empty(), "{errors:?}");
    t
}

fn engine(now: Instant) -> Engine<u32> {
    let nat = NatConfig::new(
        "198.18.0.0/16".parse().unwrap(),
        "fdc7:7779::/64".parse().unwrap(),
        4,
    );
    let mut cfg = EngineConfig::new(nat, 2);
    cfg.errors = Arc::new(ErrorBudget::new(1000, 1000, now));
    cfg.service_cidrs = vec!["10.96.0.0/16".parse().unwrap()];
    Engine::new(cfg, 4000, Arc::new(Stats::default()), now)
}

fn v4(src: [u8; 4], dst: [u8; 4]) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    // etherparse builds the IP layer from the builder; TTL 64.
    PacketBuilder::ipv4(src, dst, 64)
}

fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool, ack: bool) -> Vec<u8> {
    let mut b = v4(src, dst).tcp(sport, dport, 1000, 64240);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(5000);
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    v4(src, dst)
        .udp(sport, dport)
        .write(&mut out, payload)
        .unwrap();
    out
}

struct Run {
    buf: Vec<u8>,
    scratch: Vec<u8>,
}

impl Run {
    /// The engine's verdict on the packet in `buf[..len]`.
    fn handle<'e>(
        &mut self,
        e: &'e mut Engine<u32>,
        table: &ServiceTable,
        len: usize,
        now: Instant,
    ) -> Verdict<'e, u32> {
        e.handle(
            table,
            &mut self.buf,
            len,
            Checksum::Full,
            now,
            &mut self.scratch,
        )
    }

    fn new(pkt: &[u8]) -> Self {
        let mut buf = vec![0u8; packet::MAX_PACKET];
        buf[..pkt.len()].copy_from_slice(pkt);
        Run {
            buf,
            scratch: vec![0u8; 2048],
        }
    }
}

const CLIENT: [u8; 4] = [192, 168, 77, 2];
const WEB: [u8; 4] = [10, 96, 0, 10];

fn parsed(b: &[u8]) -> etherparse::SlicedPacket<'_> {
    etherparse::SlicedPacket::from_ip(b).unwrap()
}

#[test]
fn syn_to_a_service_is_redirected_to_the_listener_and_replies_come_back() {
    let t0 = Instant::now();
    let table = table();
    let mut e = engine(t0);
    let syn = tcp(CLIENT, 40000, WEB, 80, true, false);
    let mut r = Run::new(&syn);
    let flow = match r.handle(&mut e, &table, syn.len(), t0) {
        Verdict::NewTcp { len, flow } => {
            assert_eq!(len, syn.len());
            flow
        }
        v => panic!("expected NewTcp, got {v:?}"),
    };
    assert_eq!(flow.key.client, "192.168.77.2:40000".parse().unwrap());
    assert_eq!(flow.key.service, "10.96.0.10:80".parse().unwrap());
    assert_eq!(flow.candidates.as_slice().len(), 2);
    let p = parsed(&r.buf[..syn.len()]);
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!()
    };
    assert_eq!(
        ip.header().source_addr(),
        "198.18.0.2".parse::<std::net::Ipv4Addr>().unwrap()
    );
    assert_eq!(
        ip.header().destination_addr(),
        "198.18.0.1".parse::<std::net::Ipv4Addr>().unwrap()
    );
    let Some(etherparse::TransportSlice::Tcp(th)) = p.transport else {
        panic!()
    };
    assert_eq!(th.destination_port(), 4000);
    assert_eq!(th.source_port(), flow.virt.port());
    // A retransmitted SYN keeps the same mapping (and, with one worker, any queue will do).
    let mut r2 = Run::new(&syn);
    assert!(matches!(
        r2.handle(&mut e, &table, syn.len(), t0),
        Verdict::Forward { owner: None, .. }
    ));
    assert_eq!(r2.buf[..syn.len()], r.buf[..syn.len()]);

    // SYN-ACK from the listener to the virtual client goes back as the service.
    let IpAddr::V4(vip) = flow.virt.ip() else {
        panic!()
    };
    let synack = tcp(
        [198, 18, 0, 1],
        4000,
        vip.octets(),
        flow.virt.port(),
        true,
        true,
    );
    let mut r3 = Run::new(&synack);
    assert!(matches!(
        r3.handle(&mut e, &table, synack.len(), t0),
        Verdict::Forward { .. }
    ));
    let p = parsed(&r3.buf[..synack.len()]);
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!()
    };
    assert_eq!(ip.header().source_addr().octets(), WEB);
    assert_eq!(ip.header().destination_addr().octets(), CLIENT);
    let Some(etherparse::TransportSlice::Tcp(th)) = p.transport else {
        panic!()
    };
    assert_eq!((th.source_port(), th.destination_port()), (80, 40000));
    let expected = th
        .to_header()
        .calc_checksum_ipv4(&ip.header().to_header(), th.payload())
        .unwrap();
    assert_eq!(th.checksum(), expected, "TCP checksum after reverse NAT");
}

#[test]
fn syn_to_an_unknown_port_gets_a_rst_and_no_endpoints_an_icmp_unreachable() {
    let t0 = Instant::now();
    let table = table();
    let mut e = engine(t0);
    let syn = tcp(CLIENT, 40000, WEB, 81, true, false);
    let mut r = Run::new(&syn);
    let Verdict::Reply { len } = r.handle(&mut e, &table, syn.len(), t0) else {
        panic!()
    };
    let p = parsed(&r.scratch[..len]);
    let Some(etherparse::TransportSlice::Tcp(th)) = p.transport else {
        panic!("not TCP")
    };
    assert!(th.rst());
    assert_eq!(th.acknowledgment_number(), 1001);

    let syn = tcp(CLIENT, 40001, [10, 96, 0, 99], 80, true, false);
    let mut r = Run::new(&syn);
    let Verdict::Reply { len } = r.handle(&mut e, &table, syn.len(), t0) else {
        panic!()
    };
    let p = parsed(&r.scratch[..len]);
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (3, 3));
    assert_eq!(e.stats.tcp_count(ConnResult::NoEndpoints), 1);
}

#[test]
fn non_syn_of_no_flow_gets_a_rst_and_outside_the_routed_ranges_is_dropped() {
    let t0 = Instant::now();
    let table = table();
    let mut e = engine(t0);
    let ack = tcp(CLIENT, 40000, WEB, 80, false, true);
    let mut r = Run::new(&ack);
    assert!(matches!(
        r.handle(&mut e, &table, ack.len(), t0),
        Verdict::Reply { .. }
    ));
    let other = tcp(CLIENT, 40000, [10, 97, 5, 5], 80, true, false);
    let mut r = Run::new(&other);
    assert!(matches!(
        r.handle(&mut e, &table, other.len(), t0),
        Verdict::Drop(Reason::NotService)
    ));
}

#[test]
fn udp_new_flow_then_send_then_a_full_table_drops_its_quietest_flow() {
    let t0 = Instant::now();
    let t1 = t0 + Duration::from_secs(1);
    let table = table();
    let mut e = engine(t0);
    let dns = [10, 96, 0, 53];
    let d = udp(CLIENT, 5000, dns, 53, b"hello");
    let mut r = Run::new(&d);
    let (key, port, endpoint, payload) = match r.handle(&mut e, &table, d.len(), t0) {
        Verdict::UdpNew {
            key,
            port,
            endpoint,
            payload,
        } => (key, port, endpoint, payload),
        v => panic!("expected UdpNew, got {v:?}"),
    };
    assert_eq!(&r.buf[payload.clone()], b"hello");
    assert_eq!(endpoint, "10.244.1.10:5353".parse().unwrap());
    e.udp_insert(key, port, endpoint, 7, t0);
    let mut r = Run::new(&d);
    match r.handle(&mut e, &table, d.len(), t1) {
        Verdict::UdpSend { flow, payload } => {
            assert_eq!(*flow, 7);
            assert_eq!(&r.buf[payload], b"hello");
        }
        v => panic!("expected UdpSend, got {v:?}"),
    }
    // Capacity 2: a second flow fits; for a third, the flow whose client was quiet
    // longest (the second: the first spoke at t1) is closed to make room.
    for (sport, handle) in [(5001u16, 8), (5002, 9)] {
        let d = udp(CLIENT, sport, dns, 53, b"x");
        let mut r = Run::new(&d);
        match r.handle(&mut e, &table, d.len(), t1) {
            Verdict::UdpNew {
                key,
                port,
                endpoint,
                ..
            } => e.udp_insert(key, port, endpoint, handle, t1),
            v => panic!("unexpected {v:?} for flow {sport}"),
        }
    }
    let mut left: Vec<u32> = e.udp().iter().map(|(_, f)| f.handle).collect();
    left.sort();
    assert_eq!(left, [7, 9]);
    assert_eq!(
        e.stats
            .udp_evictions
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(e.stats.udp_count(ConnResult::TableFull), 0);
    // Unknown UDP port: port unreachable.
    let d = udp(CLIENT, 5003, dns, 54, b"x");
    let mut r = Run::new(&d);
    assert!(matches!(
        r.handle(&mut e, &table, d.len(), t0),
        Verdict::Reply { .. }
    ));
}

#[test]
fn echo_requests_to_cluster_ips_are_answered() {
    let t0 = Instant::now();
    let table = table();
    let mut e = engine(t0);
    let mut ping = Vec::new();
    v4(CLIENT, WEB)
        .icmpv4_echo_request(9, 1)
        .write(&mut ping, b"abcdefgh")
        .unwrap();
    let mut r = Run::new(&ping);
    let Verdict::Forward { len, .. } = r.handle(&mut e, &table, ping.len(), t0) else {
        panic!()
    };
    let p = parsed(&r.buf[..len]);
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!()
    };
    assert_eq!(ip.header().source_addr().octets(), WEB);
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!()
    };
    assert_eq!(icmp.type_u8(), 0);
    let mut ping = Vec::new();
    v4(CLIENT, [10, 97, 7, 7])
        .icmpv4_echo_request(9, 1)
        .write(&mut ping, b"x")
        .unwrap();
    let mut r = Run::new(&ping);
    assert!(matches!(
        r.handle(&mut e, &table, ping.len(), t0),
        Verdict::Drop(Reason::NotService)
    ));
}

#[test]
fn ipv6_syn_is_redirected_to_the_ipv6_listener() {
    let t0 = Instant::now();
    let table = table();
    let mut e = engine(t0);
    let client: std::net::Ipv6Addr = "fd77::2".parse().unwrap();
    let svc: std::net::Ipv6Addr = "fd00:10:96::10".parse().unwrap();
    let mut syn = Vec::new();
    PacketBuilder::ipv6(client.octets(), svc.octets(), 64)
        .tcp(40000, 80, 1, 64240)
        .syn()
        .write(&mut syn, &[])
        .unwrap();
    let mut r = Run::new(&syn);
    let Verdict::NewTcp { flow, len } = r.handle(&mut e, &table, syn.len(), t0) else {
        panic!()
    };
    assert_eq!(
        flow.candidates.first(),
        "[fd00:10:244:1::a]:8080".parse().unwrap()
    );
    let p = parsed(&r.buf[..len]);
    let Some(etherparse::NetSlice::Ipv6(ip)) = p.net else {
        panic!()
    };
    assert_eq!(
        ip.header().destination_addr(),
        "fdc7:7779::1".parse::<std::net::Ipv6Addr>().unwrap()
    );
    let Some(etherparse::TransportSlice::Tcp(th)) = p.transport else {
        panic!()
    };
    let expected = th
        .to_header()
        .calc_checksum_ipv6(&ip.header().to_header(), th.payload())
        .unwrap();
    assert_eq!(th.checksum(), expected);
}

#[test]
fn full_nat_table_refuses_with_rst_and_keeps_existing_flows() {
    let t0 = Instant::now();
    let table = table();
    let mut e = engine(t0);
    // Four flows whose handshake completed (the proxy accepted them) fill the table.
    for p in 0..4u16 {
        let syn = tcp(CLIENT, 30000 + p, WEB, 80, true, false);
        let mut r = Run::new(&syn);
        let Verdict::NewTcp { flow, .. } = r.handle(&mut e, &table, syn.len(), t0) else {
            panic!()
        };
        assert!(e.nat().accepted(flow.virt));
    }
    let syn = tcp(CLIENT, 30009, WEB, 80, true, false);
    let mut r = Run::new(&syn);
    let Verdict::Reply { len } = r.handle(&mut e, &table, syn.len(), t0) else {
        panic!()
    };
    let p = parsed(&r.scratch[..len]);
    let Some(etherparse::TransportSlice::Tcp(th)) = p.transport else {
        panic!()
    };
    assert!(th.rst());
    assert_eq!(e.stats.tcp_count(ConnResult::TableFull), 1);
    let ack = tcp(CLIENT, 30000, WEB, 80, false, true);
    let mut r = Run::new(&ack);
    assert!(matches!(
        r.handle(&mut e, &table, ack.len(), t0),
        Verdict::Forward { .. }
    ));
}

/// A segment from the gateway's listener to the virtual tuple `virt`.
fn from_listener(e: &Engine<u32>, virt: SocketAddr, seq: u32, syn: bool) -> Vec<u8> {
    let l = e.listener(&virt);
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (l.ip(), virt.ip()) else {
        panic!("IPv4 expected")
    };
    let mut b = v4(src.octets(), dst.octets()).tcp(l.port(), virt.port(), seq, 64240);
    if syn {
        b = b.syn();
    }
    b = b.ack(1001);
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

/// A segment from `CLIENT:sport` to web acknowledging `ack`.
fn client_ack(sport: u16, ack: u32) -> Vec<u8> {
    let mut out = Vec::new();
    v4(CLIENT, WEB)
        .tcp(sport, 80, 1001, 64240)
        .ack(ack)
        .write(&mut out, &[])
        .unwrap();
    out
}

#[test]
fn a_client_that_completed_its_handshake_is_not_pushed_out_by_a_syn_flood() {
    let t0 = Instant::now();
    let table = table();
    let mut e = engine(t0);
    // Two clients send a SYN; the listener answers both (ISN 7000 and 9000).
    let mut flows = Vec::new();
    for (sport, isn) in [(31000u16, 7000u32), (31001, 9000)] {
        let syn = tcp(CLIENT, sport, WEB, 80, true, false);
        let mut r = Run::new(&syn);
        let Verdict::NewTcp { flow, .. } = r.handle(&mut e, &table, syn.len(), t0) else {
            panic!()
        };
        let syn_ack = from_listener(&e, flow.virt, isn, true);
        let mut r = Run::new(&syn_ack);
        assert!(matches!(
            r.handle(&mut e, &table, syn_ack.len(), t0),
            Verdict::Forward { .. }
        ));
        flows.push((sport, isn, flow.virt));
    }
    // The first acknowledges the SYN-ACK; the second sends an ACK that does not (what a
    // spoofer guessing the sequence number sends).
    let (sport, isn, real) = flows[0];
    let ack = client_ack(sport, isn + 1);
    let mut r = Run::new(&ack);
    assert!(matches!(
        r.handle(&mut e, &table, ack.len(), t0),
        Verdict::Forward { .. }
    ));
    let (sport, isn, guessed) = flows[1];
    let ack = client_ack(sport, isn + 2);
    let mut r = Run::new(&ack);
    assert!(matches!(
        r.handle(&mut e, &table, ack.len(), t0),
        Verdict::Forward { .. }
    ));
    assert!(matches!(
        e.nat().reverse(&real),
        Some((_, FlowState::Answered { .. }))
    ));
    assert!(matches!(
        e.nat().reverse(&guessed),
        Some((_, FlowState::Pending { .. }))
    ));
    // A flood of SYNs from spoofed sources, far more than the table holds (4): each one
    // makes room by dropping the oldest unanswered flow, never the answered one.
    for n in 0..40u8 {
        let syn = tcp([203, 0, 113, n], 40000, WEB, 80, true, false);
        let mut r = Run::new(&syn);
        assert!(matches!(
            r.handle(&mut e, &table, syn.len(), t0),
            Verdict::NewTcp { .. }
        ));
    }
    assert!(
        e.nat().reverse(&guessed).is_none(),
        "the unanswered flow was dropped"
    );
    // The proxy accepts the answered client's connection late, and it is still there.
    assert!(e.nat().accepted(real));
    assert!(e.nat().early_drops() >= 37);
}

#[test]
fn malformed_packets_are_counted_drops() {
    let t0 = Instant::now();
    let table = table();
    let mut e = engine(t0);
    let mut r = Run::new(&[0x45, 0, 0, 99, 0, 0]);
    assert!(matches!(
        r.handle(&mut e, &table, 6, t0),
        Verdict::Drop(Reason::Malformed(_))
    ));
    let mut r = Run::new(&[0x10; 40]);
    assert!(matches!(
        r.handle(&mut e, &table, 40, t0),
        Verdict::Drop(Reason::Malformed(_))
    ));
}

fn policy_table(allow: &str) -> ServiceTable {
    let objs = parse_objects("test.yaml", SNAPSHOT).unwrap();
    let policy = crate::cluster::policy::Policy {
        allow_sources: Some(vec![allow.parse().unwrap()]),
        ..Default::default()
    };
    let (t, errors) =
        crate::cluster::build::build_table_with(1, &objs, &BuildOptions::default(), &policy);
    assert!(errors.is_empty(), "{errors:?}");
    t
}

#[test]
fn a_source_outside_the_allowed_cidrs_gets_a_rst_or_admin_prohibited() {
    let t0 = Instant::now();
    let table = policy_table("10.0.0.0/8");
    let mut e = engine(t0);

    // TCP: refused with a RST, before any NAT entry is made.
    let syn = tcp(CLIENT, 40000, WEB, 80, true, false);
    let mut r = Run::new(&syn);
    let Verdict::Reply { len } = r.handle(&mut e, &table, syn.len(), t0) else {
        panic!("expected a RST")
    };
    let p = parsed(&r.scratch[..len]);
    let Some(etherparse::TransportSlice::Tcp(th)) = p.transport else {
        panic!("not TCP")
    };
    assert!(th.rst());
    assert_eq!(e.nat().len(), 0);

    // An allowed source goes through.
    let syn = tcp([10, 1, 2, 3], 40000, WEB, 80, true, false);
    let mut r = Run::new(&syn);
    assert!(matches!(
        r.handle(&mut e, &table, syn.len(), t0),
        Verdict::NewTcp { .. }
    ));

    // UDP: ICMP destination unreachable, administratively prohibited (type 3, code 13).
    let dg = udp(CLIENT, 5000, [10, 96, 0, 53], 53, b"q");
    let mut r = Run::new(&dg);
    let Verdict::Reply { len } = r.handle(&mut e, &table, dg.len(), t0) else {
        panic!("expected ICMP")
    };
    let icmp = &r.scratch[20..len];
    assert_eq!((icmp[0], icmp[1]), (3, 13));
    let dg = udp([10, 9, 9, 9], 5000, [10, 96, 0, 53], 53, b"q");
    let mut r = Run::new(&dg);
    assert!(matches!(
        r.handle(&mut e, &table, dg.len(), t0),
        Verdict::UdpNew { .. }
    ));
}

/// The listener port a packet the engine forwarded to L is addressed to, and its source.
fn to_listener(b: &[u8]) -> (u16, SocketAddr) {
    let p = parsed(b);
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4")
    };
    let Some(etherparse::TransportSlice::Tcp(th)) = p.transport else {
        panic!("not TCP")
    };
    assert_eq!(ip.header().destination_addr().octets(), [198, 18, 0, 1]);
    let src = SocketAddr::new(ip.header().source_addr().into(), th.source_port());
    (th.destination_port(), src)
}

#[test]
fn with_the_proxy_on_workers_a_flow_goes_to_the_listener_of_the_worker_that_mapped_it() {
    let t0 = Instant::now();
    let table = table();
    let nat = NatConfig::new(
        "198.18.0.0/16".parse().unwrap(),
        "fdc7:7779::/64".parse().unwrap(),
        100,
    );
    let shared = Arc::new(SharedFlows::with_owners(nat.clone(), 2, t0));
    let ports: Arc<[u16]> = Arc::new([4000, 4001]);
    let stats = Arc::new(Stats::default());
    let mut workers: Vec<Engine<u32>> = (0..2)
        .map(|w| {
            let cfg = EngineConfig::new(nat.clone(), 2);
            Engine::with_shared(cfg, shared.clone(), ports.clone(), w, stats.clone(), t0)
        })
        .collect();
    for (sport, mapper) in [(41000u16, 1usize), (41001, 0), (41002, 1)] {
        let syn = tcp(CLIENT, sport, WEB, 80, true, false);
        let mut r = Run::new(&syn);
        let flow = match r.handle(&mut workers[mapper], &table, syn.len(), t0) {
            Verdict::NewTcp { flow, .. } => flow,
            v => panic!("expected NewTcp, got {v:?}"),
        };
        let (port, virt) = to_listener(&r.buf[..syn.len()]);
        assert_eq!(port, ports[mapper], "the SYN goes to the mapper's listener");
        assert_eq!(virt, flow.virt);
        // Whichever worker reads the flow's next packets sends them to that listener too.
        // and through the mapper's queue, so the kernel steers the flow back to it.
        for reader in workers.iter_mut() {
            let ack = tcp(CLIENT, sport, WEB, 80, false, true);
            let mut r = Run::new(&ack);
            let v = r.handle(reader, &table, ack.len(), t0);
            assert!(
                matches!(v, Verdict::Forward { owner: Some(o), .. } if o == mapper),
                "{v:?}"
            );
            assert_eq!(to_listener(&r.buf[..ack.len()]), (port, virt));
        }
        // Replies are taken from that listener only, by either worker.
        let IpAddr::V4(vip) = virt.ip() else { panic!() };
        for reader in workers.iter_mut() {
            for (from, taken) in [(ports[mapper], true), (ports[1 - mapper], false)] {
                let reply = tcp(
                    [198, 18, 0, 1],
                    from,
                    vip.octets(),
                    virt.port(),
                    false,
                    true,
                );
                let mut r = Run::new(&reply);
                let v = r.handle(reader, &table, reply.len(), t0);
                if taken {
                    assert!(
                        matches!(v, Verdict::Forward { owner: Some(o), .. } if o == mapper),
                        "{v:?}"
                    );
                } else {
                    assert!(
                        matches!(v, Verdict::Drop(Reason::NoReverseFlow)),
                        "a reply from another worker's port: {v:?}"
                    );
                }
            }
        }
    }
}

/// The ICMP type and code of a reply the engine built, and the destination it quotes.
fn icmp_reply(r: &Run, v: &Verdict<'_, u32>) -> (u8, u8, IpAddr) {
    let Verdict::Reply { len } = v else {
        panic!("a reply expected, not {v:?}")
    };
    let p = parsed(&r.scratch[..*len]);
    match (p.net, p.transport) {
        (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Icmpv4(i))) => {
            let quoted = etherparse::Ipv4HeaderSlice::from_slice(i.payload()).unwrap();
            assert_eq!(ip.header().source_addr(), quoted.destination_addr());
            (i.type_u8(), i.code_u8(), quoted.destination_addr().into())
        }
        (Some(etherparse::NetSlice::Ipv6(ip)), Some(etherparse::TransportSlice::Icmpv6(i))) => {
            let quoted = etherparse::Ipv6HeaderSlice::from_slice(i.payload()).unwrap();
            assert_eq!(ip.header().source_addr(), quoted.destination_addr());
            (i.type_u8(), i.code_u8(), quoted.destination_addr().into())
        }
        other => panic!("not ICMP: {other:?}"),
    }
}

#[test]
fn an_address_of_a_routed_range_that_is_no_service_is_refused_for_every_protocol() {
    let t0 = Instant::now();
    let table = table();
    let mut e = engine(t0);
    let gone = [10, 96, 0, 77];
    let mut ping = Vec::new();
    v4(CLIENT, gone)
        .icmpv4_echo_request(9, 1)
        .write(&mut ping, b"x")
        .unwrap();
    let packets = [
        tcp(CLIENT, 40000, gone, 80, true, false),
        tcp(CLIENT, 40001, gone, 80, false, true),
        udp(CLIENT, 40002, gone, 53, b"q"),
        ping,
    ];
    for pkt in &packets {
        let mut r = Run::new(pkt);
        let v = r.handle(&mut e, &table, pkt.len(), t0);
        // Destination unreachable, communication administratively prohibited, from the
        // address asked for, quoting the packet.
        assert_eq!(icmp_reply(&r, &v), (3, 13, IpAddr::from(gone)));
    }
    // It leaves no state: no flow mapped, none to open, and it is counted by reason.
    assert_eq!(e.nat().len(), 0);
    assert_eq!(e.udp().len(), 0);
    assert!(e
        .stats
        .refusals()
        .contains(&(Refusal::NoService.label(), 4)));
    // A RST to it is not answered.
    let mut rst = Vec::new();
    v4(CLIENT, gone)
        .tcp(40003, 80, 1, 0)
        .rst()
        .write(&mut rst, &[])
        .unwrap();
    let mut r = Run::new(&rst);
    assert!(matches!(
        r.handle(&mut e, &table, rst.len(), t0),
        Verdict::Drop(Reason::NotService)
    ));
}

#[test]
fn ipv6_no_service_and_the_tables_service_cidrs_decide_what_is_routed() {
    let t0 = Instant::now();
    let mut table = table();
    let mut e = engine(t0);
    let gone6: std::net::Ipv6Addr = "fd00:10:96::77".parse().unwrap();
    let syn6 = |dst: std::net::Ipv6Addr| {
        let mut out = Vec::new();
        PacketBuilder::ipv6(
            "fd00:77::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            dst.octets(),
            64,
        )
        .tcp(40000, 80, 1, 64240)
        .syn()
        .write(&mut out, &[])
        .unwrap();
        out
    };
    // The engine's --service-cidr is IPv4 only: an IPv6 address is not in a routed range.
    let pkt = syn6(gone6);
    let mut r = Run::new(&pkt);
    assert!(matches!(
        r.handle(&mut e, &table, pkt.len(), t0),
        Verdict::Drop(Reason::NotService)
    ));
    // The cluster's ServiceCIDRs, when the API serves them, replace --service-cidr.
    table.service_cidrs = Some(vec!["fd00:10:96::/112".parse().unwrap()]);
    let mut r = Run::new(&pkt);
    let v = r.handle(&mut e, &table, pkt.len(), t0);
    // ICMPv6 destination unreachable, administratively prohibited.
    assert_eq!(icmp_reply(&r, &v), (1, 1, IpAddr::V6(gone6)));
    let v4pkt = tcp(CLIENT, 40000, [10, 96, 0, 77], 80, true, false);
    let mut r = Run::new(&v4pkt);
    assert!(matches!(
        r.handle(&mut e, &table, v4pkt.len(), t0),
        Verdict::Drop(Reason::NotService)
    ));
    // With no range at all (one host route per ClusterIP), unicast addresses are refused
    // (a deleted Service's route on its way out) but the kernel's own multicast is not.
    table.service_cidrs = None;
    e.service_cidrs.clear();
    let mut r = Run::new(&v4pkt);
    let v = r.handle(&mut e, &table, v4pkt.len(), t0);
    assert_eq!(icmp_reply(&r, &v).1, 13);
    let mld = syn6("ff02::16".parse().unwrap());
    let mut r = Run::new(&mld);
    assert!(matches!(
        r.handle(&mut e, &table, mld.len(), t0),
        Verdict::Drop(Reason::NotService)
    ));
}

#[test]
fn refusals_are_rate_limited_by_one_budget_for_all_workers() {
    let t0 = Instant::now();
    let table = table();
    let nat = NatConfig::new(
        "198.18.0.0/16".parse().unwrap(),
        "fdc7:7779::/64".parse().unwrap(),
        4,
    );
    let mut cfg = EngineConfig::new(nat.clone(), 2);
    cfg.errors = Arc::new(ErrorBudget::new(1, 10, t0));
    cfg.service_cidrs = vec!["10.96.0.0/16".parse().unwrap()];
    let shared = Arc::new(crate::dataplane::shared::SharedFlows::with_owners(
        nat, 2, t0,
    ));
    let ports: Arc<[u16]> = Arc::new([4000, 4001]);
    let stats = Arc::new(Stats::default());
    let mut engines: Vec<Engine<u32>> = (0..2)
        .map(|w| {
            Engine::with_shared(
                cfg.clone(),
                shared.clone(),
                ports.clone(),
                w,
                stats.clone(),
                t0,
            )
        })
        .collect();
    let mut replies = 0;
    for n in 0..40u16 {
        let pkt = tcp(CLIENT, 1000 + n, [10, 96, 0, 77], 80, true, false);
        let mut r = Run::new(&pkt);
        match r.handle(&mut engines[usize::from(n % 2)], &table, pkt.len(), t0) {
            Verdict::Reply { .. } => replies += 1,
            Verdict::Drop(Reason::RateLimited) => {}
            v => panic!("{v:?}"),
        }
    }
    // A burst of 10 for the process, not 10 per worker.
    assert_eq!(replies, 10);
    assert!(stats.refusals().contains(&("no_service", 10)));
}

#[test]
fn a_full_table_of_unanswered_syns_makes_room_for_a_new_one() {
    let t0 = Instant::now();
    let table = table();
    let mut e = engine(t0);
    let mut virts = Vec::new();
    // Spoofed SYNs: nobody completes their handshake.
    for p in 0..4u8 {
        let syn = tcp([172, 16, 0, p], 40000, WEB, 80, true, false);
        let mut r = Run::new(&syn);
        let Verdict::NewTcp { flow, .. } = r.handle(&mut e, &table, syn.len(), t0) else {
            panic!()
        };
        virts.push(flow.virt);
    }
    // A legitimate client's SYN still gets in; the oldest unanswered flow made room.
    let syn = tcp(CLIENT, 30000, WEB, 80, true, false);
    let mut r = Run::new(&syn);
    let Verdict::NewTcp { flow, .. } = r.handle(&mut e, &table, syn.len(), t0) else {
        panic!()
    };
    assert!(e.nat().accepted(flow.virt));
    assert_eq!(e.nat().early_drops(), 1);
    assert_eq!(e.nat().active(), 4);
    assert_eq!(e.stats.tcp_count(ConnResult::TableFull), 0);
}

/// A fragment waiting for the rest of its datagram is counted apart, not as a drop; when
/// the datagram times out, its fragments are counted as `fragment_timeout` drops.
#[test]
fn a_queued_fragment_is_not_a_drop_and_a_timed_out_one_is() {
    let t0 = Instant::now();
    let table = table();
    let stats = Arc::new(Stats::default());
    let nat = NatConfig::new(
        "198.18.0.0/16".parse().unwrap(),
        "fdc7:7779::/64".parse().unwrap(),
        4,
    );
    let cfg = EngineConfig::new(nat, 2);
    let timeout = cfg.reassembly_timeout;
    let mut e: Engine<u32> = Engine::new(cfg, 4000, stats.clone(), t0);

    // The first fragment (more fragments set, offset 0) of a UDP datagram to dns.
    let whole = udp(CLIENT, 40000, [10, 96, 0, 53], 53, &[7u8; 64]);
    let mut frag = whole[..20 + 32].to_vec();
    frag[2..4].copy_from_slice(&52u16.to_be_bytes());
    frag[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    frag[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
    let mut r = Run::new(&frag);
    let len = frag.len();
    let v = r.handle(&mut e, &table, len, t0);
    let Verdict::Drop(reason) = v else {
        panic!("a first fragment is held, not forwarded");
    };
    assert_eq!(reason, Reason::FragmentQueued);
    stats.count_drop(reason);
    assert_eq!(stats.fragments_queued(), 1);
    assert!(stats.drops().is_empty(), "{:?}", stats.drops());

    e.expire(t0 + timeout / 2, Partition::WHOLE, |_| None);
    assert!(stats.drops().is_empty(), "{:?}", stats.drops());
    e.expire(t0 + timeout, Partition::WHOLE, |_| None);
    assert_eq!(stats.drops(), vec![("fragment_timeout", 1)]);
}

fn offload_engine(now: Instant) -> Engine<u32> {
    offload_engine_with(now, false)
}

/// The offload engine, recording TCP affinities at hand-over or leaving them to the
/// conntrack events (`affinity_from_events`).
fn offload_engine_with(now: Instant, affinity_from_events: bool) -> Engine<u32> {
    let nat = NatConfig::new(
        "198.18.0.0/16".parse().unwrap(),
        "fdc7:7779::/64".parse().unwrap(),
        4,
    );
    // A UDP capacity of 1: offloaded flows are not bounded by it.
    let mut cfg = EngineConfig::new(nat, 1);
    cfg.errors = Arc::new(ErrorBudget::new(1000, 1000, now));
    cfg.service_cidrs = vec!["10.96.0.0/16".parse().unwrap()];
    cfg.offload = true;
    cfg.affinity_from_events = affinity_from_events;
    Engine::new(cfg, 4000, Arc::new(Stats::default()), now)
}

/// The flow `pkt` starts, which the engine hands over to the kernel.
fn handed_over(
    e: &mut Engine<u32>,
    table: &ServiceTable,
    pkt: &[u8],
    now: Instant,
) -> (FlowKey, Arc<ServicePort>, SocketAddr) {
    let mut r = Run::new(pkt);
    match r.handle(e, table, pkt.len(), now) {
        Verdict::Offload {
            key,
            port,
            endpoint,
            ..
        } => (key, port, endpoint),
        v => panic!("expected Offload, got {v:?}"),
    }
}

#[test]
fn with_offload_new_udp_flows_are_offloaded_and_refusals_stay_the_engines() {
    let t0 = Instant::now();
    let table = table();
    let mut e = offload_engine(t0);
    let dns = [10, 96, 0, 53];
    // Every new flow (many more than the user-space capacity) is handed to the kernel,
    // its datagram unchanged.
    for sport in 5000..5010u16 {
        let d = udp(CLIENT, sport, dns, 53, b"query");
        let mut r = Run::new(&d);
        match r.handle(&mut e, &table, d.len(), t0) {
            Verdict::Offload {
                len,
                key,
                port,
                endpoint,
            } => {
                assert_eq!(&r.buf[..len], &d[..]);
                assert_eq!(key.client.port(), sport);
                assert_eq!(port.protocol, Protocol::Udp);
                assert_eq!(endpoint, "10.244.1.10:5353".parse().unwrap());
                e.offloaded(key, &port, endpoint, t0);
            }
            v => panic!("expected Offload, got {v:?}"),
        }
    }
    assert_eq!(e.udp().len(), 0, "no user-space flow");
    // A port the Service does not have: ICMP port unreachable from the engine, as before.
    let d = udp(CLIENT, 6000, dns, 54, b"query");
    let mut r = Run::new(&d);
    let v = r.handle(&mut e, &table, d.len(), t0);
    assert!(matches!(v, Verdict::Reply { .. }), "{v:?}");
    // The kernel refuses a flow: counted for the Service port, answered with ICMP port
    // unreachable.
    let d = udp(CLIENT, 6001, dns, 53, b"query");
    let mut r = Run::new(&d);
    let (len, port) = match r.handle(&mut e, &table, d.len(), t0) {
        Verdict::Offload { len, port, .. } => (len, port),
        v => panic!("expected Offload, got {v:?}"),
    };
    let n = e.refuse_udp(
        &r.buf,
        len,
        &port,
        ConnResult::TableFull,
        t0,
        &mut r.scratch,
    );
    assert!(n > 0);
    let is_icmp = matches!(
        parsed(&r.scratch[..n]).transport,
        Some(etherparse::TransportSlice::Icmpv4(_))
    );
    assert!(is_icmp);
    assert_eq!(e.stats.udp_count(ConnResult::TableFull), 1);
    // refuse_udp is for UDP only.
    let s = tcp(CLIENT, 7000, WEB, 80, true, false);
    assert_eq!(
        e.refuse_udp(
            &s,
            s.len(),
            &port,
            ConnResult::TableFull,
            t0,
            &mut r.scratch
        ),
        0
    );
}

/// With offload and the conntrack events read, handing a TCP SYN to the kernel records no
/// ClientIP affinity (the events do once the flow is established: a spoofed SYN's never
/// is); without the events the hand-over is all there is. A UDP flow is served from its
/// first datagram, so its affinity is recorded at hand-over either way.
#[test]
fn with_offload_a_handed_over_syn_leaves_no_affinity_when_the_events_record_it() {
    let t0 = Instant::now();
    let table = table();
    let sticky = |port: &ServicePort| {
        let mut p = port.clone();
        p.affinity = Some(Duration::from_secs(600));
        p
    };
    for from_events in [true, false] {
        let mut e = offload_engine_with(t0, from_events);
        let syn = tcp(CLIENT, 7000, WEB, 80, true, false);
        let (key, port, endpoint) = handed_over(&mut e, &table, &syn, t0);
        assert_eq!(port.protocol, Protocol::Tcp);
        e.offloaded(key, &sticky(&port), endpoint, t0);
        assert_eq!(
            e.nat().affinities(),
            usize::from(!from_events),
            "affinity_from_events = {from_events}"
        );
        let d = udp(CLIENT, 5000, [10, 96, 0, 53], 53, b"query");
        let (key, port, endpoint) = handed_over(&mut e, &table, &d, t0);
        e.offloaded(key, &sticky(&port), endpoint, t0);
        assert_eq!(e.nat().affinities(), 1 + usize::from(!from_events));
    }
}
