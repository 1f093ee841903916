//! Tests of the packet module against independent references: packets are built here by
//! hand, checksums are verified with etherparse's `Sum16BitWords` and parsing is compared
//! with etherparse's slicer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use etherparse::checksum::Sum16BitWords;
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------
// Reference checksums (etherparse) and a hand-written packet builder.

/// Note: `Sum16BitWords` sums in native byte order, so its results are written back with
/// `to_ne_bytes`.
fn ones(data: &[u8]) -> Sum16BitWords {
    Sum16BitWords::new().add_slice(data)
}

fn ip_octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Sum16BitWords {
    Sum16BitWords::new()
        .add_slice(&ip_octets(src))
        .add_slice(&ip_octets(dst))
        .add_2bytes([0, proto])
        .add_slice(&(len as u32).to_be_bytes())
}

/// The IPv4 header checksum of `pkt` verifies.
fn ipv4_header_ok(pkt: &[u8]) -> bool {
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    ones(&pkt[..ihl]).ones_complement() == 0
}

/// The L4 checksum (TCP, UDP, ICMPv6 with pseudo-header; ICMPv4 without) of the segment
/// `pkt[l4..len]` verifies.
fn l4_ok(pkt: &[u8], src: IpAddr, dst: IpAddr, proto: u8, l4: usize, len: usize) -> bool {
    let seg = &pkt[l4..len];
    let mut s = ones(seg);
    if proto != PROTO_ICMP {
        s = pseudo(src, dst, proto, seg.len()).add_slice(seg);
    }
    s.ones_complement() == 0
}

fn parsed_l4_ok(pkt: &[u8]) -> bool {
    let p = parse(pkt).unwrap();
    l4_ok(pkt, p.src, p.dst, p.protocol(), p.l4_offset, p.len)
}

#[derive(Debug, Clone)]
struct Spec {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    tcp_opt_words: usize,
    payload: Vec<u8>,
    ip_opt_words: usize,
    /// IPv6 extension headers: (type, 8-octet units beyond the first).
    exts: Vec<(u8, u8)>,
    zero_udp_csum: bool,
    trailing: Vec<u8>,
    ip_id: u16,
}

impl Spec {
    fn src_ip(&self) -> IpAddr {
        addr(self.v6, self.src)
    }
    fn dst_ip(&self) -> IpAddr {
        addr(self.v6, self.dst)
    }
    /// Offset of the L4 header in the built packet.
    fn l4(&self) -> usize {
        if self.v6 {
            40 + self
                .exts
                .iter()
                .map(|&(_, n)| (usize::from(n) + 1) * 8)
                .sum::<usize>()
        } else {
            20 + self.ip_opt_words * 4
        }
    }
}

fn addr(v6: bool, b: [u8; 16]) -> IpAddr {
    if v6 {
        Ipv6Addr::from(b).into()
    } else {
        Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()
    }
}

/// IP header (+ options / extension headers) for `l4` bytes of `proto`; returns the packet
/// with the L4 bytes appended.
fn ip_packet(s: &Spec, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    if !s.v6 {
        let ihl = 20 + s.ip_opt_words * 4;
        let total = (ihl + l4.len()) as u16;
        p.push(0x40 | (ihl / 4) as u8);
        p.push(0);
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&s.ip_id.to_be_bytes());
        p.extend_from_slice(&[0, 0, 64, proto, 0, 0]);
        p.extend_from_slice(&s.src[..4]);
        p.extend_from_slice(&s.dst[..4]);
        p.extend(std::iter::repeat_n(1u8, s.ip_opt_words * 4)); // NOP options
        let c = ones(&p).ones_complement();
        p[10..12].copy_from_slice(&c.to_ne_bytes());
    } else {
        let exts_len = s.l4() - 40;
        let first = s.exts.first().map_or(proto, |e| e.0);
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&((exts_len + l4.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[first, 64]);
        p.extend_from_slice(&s.src);
        p.extend_from_slice(&s.dst);
        for (i, &(_, n)) in s.exts.iter().enumerate() {
            let next = s.exts.get(i + 1).map_or(proto, |e| e.0);
            p.extend_from_slice(&[next, n]);
            // Pad1 options / a type-0 routing header with no segments left.
            p.extend(std::iter::repeat_n(0u8, usize::from(n) * 8 + 6));
        }
    }
    p.extend_from_slice(l4);
    p
}

/// A TCP or UDP packet with valid checksums, then the trailing bytes.
fn build(s: &Spec) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&s.sport.to_be_bytes());
    l4.extend_from_slice(&s.dport.to_be_bytes());
    if s.proto == PROTO_TCP {
        l4.extend_from_slice(&s.seq.to_be_bytes());
        l4.extend_from_slice(&s.ack.to_be_bytes());
        l4.push(((5 + s.tcp_opt_words) << 4) as u8);
        l4.push(s.flags);
        l4.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        l4.extend(std::iter::repeat_n(1u8, s.tcp_opt_words * 4)); // NOP options
    } else {
        l4.extend_from_slice(&((8 + s.payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(&s.payload);
    let sum = pseudo(s.src_ip(), s.dst_ip(), s.proto, l4.len()).add_slice(&l4);
    let c = if s.proto == PROTO_TCP {
        sum.ones_complement()
    } else if s.zero_udp_csum && !s.v6 {
        0
    } else {
        sum.to_ones_complement_with_no_zero()
    };
    let at = if s.proto == PROTO_TCP { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&c.to_ne_bytes());
    let mut p = ip_packet(s, s.proto, &l4);
    p.extend_from_slice(&s.trailing);
    p
}

/// An ICMP / ICMPv6 message (type, code, rest-of-header, body) in an IP packet, valid
/// checksums.
fn build_icmp(s: &Spec, icmp_type: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let proto = if s.v6 { PROTO_ICMPV6 } else { PROTO_ICMP };
    let mut m = vec![icmp_type, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let sum = if s.v6 {
        pseudo(s.src_ip(), s.dst_ip(), proto, m.len()).add_slice(&m)
    } else {
        ones(&m)
    };
    m[2..4].copy_from_slice(&sum.ones_complement().to_ne_bytes());
    let mut p = ip_packet(s, proto, &m);
    p.extend_from_slice(&s.trailing);
    p
}

fn arb_exts() -> impl Strategy<Value = Vec<(u8, u8)>> {
    vec((prop_oneof![Just(0u8), Just(43), Just(60)], 0u8..3), 0..4).prop_map(|mut v| {
        // Hop-by-hop only first.
        for e in v.iter_mut().skip(1) {
            if e.0 == 0 {
                e.0 = 60;
            }
        }
        v
    })
}

fn arb_spec_with(payload_max: usize) -> impl Strategy<Value = Spec> {
    (
        (
            any::<bool>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP)],
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
        ),
        (
            any::<u8>(),
            0usize..=10,
            vec(any::<u8>(), 0..payload_max),
            0usize..=10,
            arb_exts(),
            any::<bool>(),
            vec(any::<u8>(), 0..4),
            any::<u16>(),
        ),
    )
        .prop_map(
            |(
                (v6, src, dst, proto, sport, dport, seq, ack),
                (flags, tcp_opt_words, payload, ip_opt_words, exts, zero, trailing, ip_id),
            )| Spec {
                v6,
                src,
                dst,
                proto,
                sport,
                dport,
                seq,
                ack,
                flags,
                tcp_opt_words,
                payload,
                ip_opt_words,
                exts,
                zero_udp_csum: zero,
                trailing,
                ip_id,
            },
        )
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    arb_spec_with(400)
}

fn arb_sock(v6: bool) -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 16]>(), any::<u16>()).prop_map(move |(b, p)| SocketAddr::new(addr(v6, b), p))
}

/// A spec plus two new endpoints of its family.
fn arb_spec_and_socks() -> impl Strategy<Value = (Spec, SocketAddr, SocketAddr)> {
    arb_spec().prop_flat_map(|s| {
        let v6 = s.v6;
        (Just(s), arb_sock(v6), arb_sock(v6))
    })
}

fn check_parsed(s: &Spec, buf: &[u8], p: &Packet) {
    let len = buf.len() - s.trailing.len();
    assert_eq!(p.src, s.src_ip());
    assert_eq!(p.dst, s.dst_ip());
    assert_eq!(p.len, len);
    assert_eq!(p.l4_offset, s.l4());
    match p.transport {
        Transport::Tcp {
            src_port,
            dst_port,
            seq,
            ack,
            flags,
            payload_len,
        } => {
            assert_eq!(s.proto, PROTO_TCP);
            assert_eq!((src_port, dst_port), (s.sport, s.dport));
            assert_eq!((seq, ack, flags), (s.seq, s.ack, TcpFlags(s.flags)));
            assert_eq!(payload_len, s.payload.len());
        }
        Transport::Udp {
            src_port,
            dst_port,
            payload_offset,
            payload_len,
        } => {
            assert_eq!(s.proto, PROTO_UDP);
            assert_eq!((src_port, dst_port), (s.sport, s.dport));
            assert_eq!(
                &buf[payload_offset..payload_offset + payload_len],
                &s.payload[..]
            );
        }
        t => panic!("unexpected {t:?}"),
    }
    // etherparse agrees on the transport.
    let sliced = etherparse::SlicedPacket::from_ip(&buf[..len]).expect("etherparse slices it");
    match sliced.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => {
            assert_eq!((t.source_port(), t.destination_port()), (s.sport, s.dport));
            assert_eq!(t.payload(), &s.payload[..]);
        }
        Some(etherparse::TransportSlice::Udp(u)) => {
            assert_eq!((u.source_port(), u.destination_port()), (s.sport, s.dport));
            assert_eq!(u.payload(), &s.payload[..]);
        }
        other => panic!("etherparse saw {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Property tests.

proptest! {
    #[test]
    fn built_packets_parse_like_etherparse(s in arb_spec()) {
        let buf = build(&s);
        let p = parse(&buf).unwrap();
        check_parsed(&s, &buf, &p);
        let len = p.len;
        prop_assert!(l4_ok(&buf, p.src, p.dst, s.proto, p.l4_offset, len) || s.zero_udp_csum);
        if !s.v6 {
            prop_assert!(ipv4_header_ok(&buf));
        }
    }

    #[test]
    fn rewrite_full_keeps_checksums_valid((s, a, b) in arb_spec_and_socks()) {
        let mut buf = build(&s);
        let before = buf.clone();
        let p = parse(&buf).unwrap();
        rewrite(&mut buf, &p, a, b, Checksum::Full);
        let q = parse(&buf).unwrap();
        prop_assert_eq!((q.src, q.dst), (a.ip(), b.ip()));
        match q.transport {
            Transport::Tcp { src_port, dst_port, .. } | Transport::Udp { src_port, dst_port, .. } => {
                prop_assert_eq!((src_port, dst_port), (a.port(), b.port()));
            }
            t => prop_assert!(false, "{:?}", t),
        }
        if !s.v6 {
            prop_assert!(ipv4_header_ok(&buf));
        }
        let csum_at = p.l4_offset + if s.proto == PROTO_TCP { 16 } else { 6 };
        if s.proto == PROTO_UDP && !s.v6 && s.zero_udp_csum {
            prop_assert_eq!(&buf[csum_at..csum_at + 2], &[0, 0]);
        } else {
            prop_assert!(l4_ok(&buf, a.ip(), b.ip(), s.proto, p.l4_offset, p.len));
            if s.proto == PROTO_UDP {
                prop_assert_ne!(&buf[csum_at..csum_at + 2], &[0, 0]);
            }
        }
        // Nothing else changed: only addresses, ports and checksums differ.
        let (sa, da, n) = if s.v6 { (8, 24, 16) } else { (12, 16, 4) };
        for (i, (x, y)) in before.iter().zip(&buf).enumerate() {
            let allowed = (sa..sa + n).contains(&i)
                || (da..da + n).contains(&i)
                || (!s.v6 && (10..12).contains(&i))
                || (p.l4_offset..p.l4_offset + 4).contains(&i)
                || (csum_at..csum_at + 2).contains(&i);
            prop_assert!(allowed || x == y, "byte {} changed", i);
        }
    }

    #[test]
    fn rewrite_partial_then_nic_completion_is_valid((s, a, b) in arb_spec_and_socks()) {
        let mut buf = build(&s);
        let p = parse(&buf).unwrap();
        let csum_at = p.l4_offset + if s.proto == PROTO_TCP { 16 } else { 6 };
        // CHECKSUM_PARTIAL: the field holds the folded, non-complemented pseudo-header sum.
        let seg_len = p.len - p.l4_offset;
        let partial = !pseudo(p.src, p.dst, s.proto, seg_len).ones_complement();
        buf[csum_at..csum_at + 2].copy_from_slice(&partial.to_ne_bytes());
        rewrite(&mut buf, &p, a, b, Checksum::Partial);
        if !s.v6 {
            prop_assert!(ipv4_header_ok(&buf));
        }
        // The NIC: sum from csum_start (with the field as it is) to the end, complement.
        let c = ones(&buf[p.l4_offset..p.len]).ones_complement();
        buf[csum_at..csum_at + 2].copy_from_slice(&c.to_ne_bytes());
        prop_assert!(l4_ok(&buf, a.ip(), b.ip(), s.proto, p.l4_offset, p.len));
        let q = parse(&buf).unwrap();
        prop_assert_eq!((q.src, q.dst), (a.ip(), b.ip()));
    }

    #[test]
    fn echo_reply_is_valid(
        s in arb_spec(),
        id in any::<u16>(),
        seq in any::<u16>(),
        body in vec(any::<u8>(), 0..300),
    ) {
        let t = if s.v6 { 128 } else { 8 };
        let mut rest = [0u8; 4];
        rest[..2].copy_from_slice(&id.to_be_bytes());
        rest[2..].copy_from_slice(&seq.to_be_bytes());
        let mut buf = build_icmp(&s, t, 0, rest, &body);
        let p = parse(&buf).unwrap();
        prop_assert_eq!(p.transport, Transport::EchoRequest { id, seq });
        let n = echo_reply_in_place(&mut buf, &p);
        prop_assert_eq!(n, p.len);
        let r = parse(&buf[..n]).unwrap();
        prop_assert_eq!((r.src, r.dst), (s.dst_ip(), s.src_ip()));
        prop_assert_eq!(r.transport, Transport::OtherIcmp { icmp_type: if s.v6 { 129 } else { 0 } });
        prop_assert!(l4_ok(&buf, r.src, r.dst, r.protocol(), r.l4_offset, r.len));
        if !s.v6 {
            prop_assert!(ipv4_header_ok(&buf));
        }
        prop_assert_eq!(&buf[r.l4_offset + 4..n], &rest.iter().chain(&body).copied().collect::<Vec<_>>()[..]);
    }

    #[test]
    fn tcp_rst_answers_the_segment(mut s in arb_spec()) {
        s.proto = PROTO_TCP;
        s.flags &= !TcpFlags::RST.0;
        let buf = build(&s);
        let p = parse(&buf).unwrap();
        let mut out = [0u8; 128];
        let n = build_tcp_rst(&mut out, &p);
        prop_assert_eq!(n, if s.v6 { 60 } else { 40 });
        let r = parse(&out[..n]).unwrap();
        prop_assert_eq!((r.src, r.dst), (s.dst_ip(), s.src_ip()));
        let Transport::Tcp { src_port, dst_port, seq, ack, flags, payload_len } = r.transport else {
            panic!("not TCP");
        };
        prop_assert_eq!((src_port, dst_port, payload_len), (s.dport, s.sport, 0));
        let f = TcpFlags(s.flags);
        if f.has(TcpFlags::ACK) {
            prop_assert_eq!((seq, flags), (s.ack, TcpFlags::RST));
        } else {
            let expect = s.seq
                .wrapping_add(s.payload.len() as u32)
                .wrapping_add(u32::from(f.has(TcpFlags::SYN)))
                .wrapping_add(u32::from(f.has(TcpFlags::FIN)));
            prop_assert_eq!((seq, ack), (0, expect));
            prop_assert_eq!(flags, TcpFlags(TcpFlags::RST.0 | TcpFlags::ACK.0));
        }
        prop_assert!(parsed_l4_ok(&out[..n]));
        if !s.v6 {
            prop_assert!(ipv4_header_ok(&out));
        }
    }

    #[test]
    fn unreachable_quotes_the_packet(
        s in arb_spec_with(2000),
        from in any::<[u8; 16]>(),
        admin in any::<bool>(),
    ) {
        let buf = build(&s);
        let p = parse(&buf).unwrap();
        let from = addr(s.v6, from);
        let kind = if admin { Unreachable::AdminProhibited } else { Unreachable::Port };
        let mut out = vec![0u8; 1280];
        let n = build_unreachable(&mut out, &buf, &p, from, kind);
        if p.src.is_multicast() || p.dst.is_multicast() || p.src.is_unspecified()
            || p.src == IpAddr::V4(Ipv4Addr::BROADCAST) || p.dst == IpAddr::V4(Ipv4Addr::BROADCAST)
        {
            prop_assert_eq!(n, 0);
            return Ok(());
        }
        let max = if s.v6 { 1280 } else { 576 };
        let hl = if s.v6 { 48 } else { 28 };
        prop_assert_eq!(n, (hl + p.len).min(max));
        let e = parse(&out[..n]).unwrap();
        prop_assert_eq!((e.src, e.dst), (from, p.src));
        let Transport::IcmpError { icmp_type, code, inner } = e.transport else {
            panic!("not an ICMP error: {:?}", e.transport);
        };
        let expect = match (s.v6, admin) {
            (false, false) => (3, 3),
            (false, true) => (3, 13),
            (true, false) => (1, 4),
            (true, true) => (1, 1),
        };
        prop_assert_eq!((icmp_type, code), expect);
        prop_assert_eq!(inner.src, SocketAddr::new(p.src, s.sport));
        prop_assert_eq!(inner.dst, SocketAddr::new(p.dst, s.dport));
        prop_assert_eq!(inner.protocol, s.proto);
        prop_assert_eq!(&out[hl..n], &buf[..n - hl]);
        prop_assert!(parsed_l4_ok(&out[..n]));
        if !s.v6 {
            prop_assert!(ipv4_header_ok(&out));
        }
        // Never an error about an error.
        let mut again = vec![0u8; 1280];
        prop_assert_eq!(build_unreachable(&mut again, &out[..n], &e, from, kind), 0);
    }

    #[test]
    fn udp_reply_headers_are_valid(
        v6 in any::<bool>(),
        a in any::<[u8; 16]>(), b in any::<[u8; 16]>(),
        ap in any::<u16>(), bp in any::<u16>(),
        payload in vec(any::<u8>(), 0..1500),
        id in any::<u16>(),
    ) {
        let (src, dst) = (SocketAddr::new(addr(v6, a), ap), SocketAddr::new(addr(v6, b), bp));
        let off = udp_payload_offset(v6);
        prop_assert_eq!(off, if v6 { 48 } else { 28 });
        let mut buf = vec![0xeeu8; off + payload.len() + 7];
        buf[off..off + payload.len()].copy_from_slice(&payload);
        let n = build_udp_headers_with_id(&mut buf, src, dst, payload.len(), id).unwrap();
        prop_assert_eq!(n, off + payload.len());
        let p = parse(&buf[..n]).unwrap();
        prop_assert_eq!((p.src, p.dst), (src.ip(), dst.ip()));
        prop_assert_eq!(p.transport, Transport::Udp {
            src_port: ap, dst_port: bp, payload_offset: off, payload_len: payload.len(),
        });
        prop_assert!(parsed_l4_ok(&buf[..n]));
        prop_assert_ne!(&buf[off - 2..off], &[0, 0]);
        if !v6 {
            prop_assert!(ipv4_header_ok(&buf));
            prop_assert_eq!(&buf[4..10], &[(id >> 8) as u8, id as u8, 0, 0, 64, PROTO_UDP]);
        } else {
            prop_assert_eq!(buf[7], 64);
        }
        // The counter variant writes the same packet apart from the IPv4 identification.
        let mut other = buf.clone();
        prop_assert_eq!(build_udp_headers(&mut other, src, dst, payload.len()), Some(n));
        prop_assert!(parsed_l4_ok(&other[..n]));
    }

    #[test]
    fn icmp_error_translation(
        inner in arb_spec(),
        router in any::<[u8; 16]>(),
        cut in any::<prop::sample::Index>(),
        time_exceeded in any::<bool>(),
        outer_dst in any::<[u8; 16]>(),
        isrc in any::<(u16, [u8; 16], u16, [u8; 16])>(),
    ) {
        let mut inner = inner;
        inner.trailing.clear();
        let v6 = inner.v6;
        let quoted = build(&inner);
        // The quote: whole, or cut anywhere after the ports.
        let min = inner.l4() + 4;
        let max_quote = if v6 { 1232 } else { 548 };
        let full = quoted.len() <= max_quote && cut.index(2) == 0;
        let qlen = if full { quoted.len() } else { min + cut.index(quoted.len().min(max_quote) - min + 1) };
        // The ICMP error, from a router to the quoted packet's source.
        let outer = Spec { src: router, dst: inner.src, exts: vec![], ip_opt_words: 0, trailing: vec![], ..inner.clone() };
        let (t, c) = match (v6, time_exceeded) {
            (false, false) => (3, 3),
            (false, true) => (11, 0),
            (true, false) => (1, 4),
            (true, true) => (3, 0),
        };
        let mut buf = build_icmp(&outer, t, c, [0; 4], &quoted[..qlen]);
        let p = parse(&buf).unwrap();
        let Transport::IcmpError { inner: found, .. } = p.transport else { panic!("{:?}", p.transport) };
        prop_assert_eq!(found, Inner {
            src: SocketAddr::new(inner.src_ip(), inner.sport),
            dst: SocketAddr::new(inner.dst_ip(), inner.dport),
            protocol: inner.proto,
        });

        let new_outer_dst = addr(v6, outer_dst);
        let (sp, sa, dp, da) = isrc;
        let new_src = SocketAddr::new(addr(v6, sa), sp);
        let new_dst = SocketAddr::new(addr(v6, da), dp);
        prop_assert!(rewrite_icmp_error(&mut buf, &p, new_outer_dst, new_src, new_dst));
        let q = parse(&buf).unwrap();
        prop_assert_eq!(q.dst, new_outer_dst);
        let Transport::IcmpError { inner: now, .. } = q.transport else { panic!("{:?}", q.transport) };
        prop_assert_eq!(now, Inner { src: new_src, dst: new_dst, protocol: inner.proto });
        // Outer IPv4 header and the ICMP checksum (ICMPv6: with the new pseudo-header).
        if !v6 {
            prop_assert!(ipv4_header_ok(&buf));
        }
        prop_assert!(parsed_l4_ok(&buf));
        let qstart = q.l4_offset + 8;
        let quote = &buf[qstart..q.len];
        if !v6 {
            prop_assert!(ipv4_header_ok(quote));
        }
        // A whole quote: the quoted L4 checksum is valid for the new quoted addresses.
        if full && !(inner.proto == PROTO_UDP && !v6 && inner.zero_udp_csum) {
            prop_assert!(l4_ok(quote, new_src.ip(), new_dst.ip(), inner.proto, inner.l4(), quote.len()));
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(data in vec(any::<u8>(), 0..200), v in 0u8..16) {
        let _ = parse(&data);
        // And with a plausible version nibble, to get further in.
        let mut d = data;
        if let Some(b) = d.first_mut() {
            *b = (v << 4) | (*b & 0x0f);
        }
        let _ = parse(&d);
        fuzz::exercise(&d);
    }

    #[test]
    fn truncations_are_errors(s in arb_spec()) {
        let buf = build(&s);
        let len = buf.len() - s.trailing.len();
        for cut in 0..len {
            prop_assert_eq!(parse(&buf[..cut]), Err(DropReason::Truncated), "cut {}", cut);
        }
        prop_assert!(parse(&buf[..len]).is_ok());
    }

    #[test]
    fn mutated_packets_survive_everything(
        s in arb_spec(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut buf = build(&s);
        for (i, v) in edits {
            let at = i.index(buf.len());
            buf[at] = v;
        }
        fuzz::exercise(&buf);
    }
}

// ---------------------------------------------------------------------------------------
// Reassembly.

/// Fragment `pkt` (built from `s`, no trailing bytes) into pieces of `size` bytes (a
/// multiple of 8) of fragmentable data, with identification `id`. IPv6: the Fragment
/// header goes after the first `k` extension headers.
fn fragment(s: &Spec, pkt: &[u8], size: usize, id: u32, k: usize) -> Vec<Vec<u8>> {
    let (unfrag, nh_at) = if s.v6 {
        let mut off = 40;
        let mut nh_at = 6;
        for &(_, n) in &s.exts[..k] {
            nh_at = off;
            off += (usize::from(n) + 1) * 8;
        }
        (off, nh_at)
    } else {
        (s.l4(), 0)
    };
    let data = &pkt[unfrag..];
    data.chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let off = i * size;
            let more = off + chunk.len() < data.len();
            let mut f = pkt[..unfrag].to_vec();
            if s.v6 {
                let next = f[nh_at];
                f[nh_at] = 44;
                let plen = (unfrag - 40 + 8 + chunk.len()) as u16;
                f[4..6].copy_from_slice(&plen.to_be_bytes());
                f.extend_from_slice(&[next, 0]);
                f.extend_from_slice(&((off as u16) | u16::from(more)).to_be_bytes());
                f.extend_from_slice(&id.to_be_bytes());
            } else {
                f[2..4].copy_from_slice(&((unfrag + chunk.len()) as u16).to_be_bytes());
                f[4..6].copy_from_slice(&(id as u16).to_be_bytes());
                let field = (if more { 0x2000u16 } else { 0 }) | (off / 8) as u16;
                f[6..8].copy_from_slice(&field.to_be_bytes());
                f[10..12].copy_from_slice(&[0, 0]);
                let c = ones(&f[..unfrag]).ones_complement();
                f[10..12].copy_from_slice(&c.to_ne_bytes());
            }
            f.extend_from_slice(chunk);
            f
        })
        .collect()
}

fn fixed_spec(v6: bool, payload_len: usize) -> Spec {
    Spec {
        v6,
        src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        dst: [10, 96, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        proto: PROTO_UDP,
        sport: 5353,
        dport: 53,
        seq: 0,
        ack: 0,
        flags: 0,
        tcp_opt_words: 0,
        payload: (0..payload_len).map(|i| (i * 7) as u8).collect(),
        ip_opt_words: 0,
        exts: vec![],
        zero_udp_csum: false,
        trailing: vec![],
        ip_id: 0x1234,
    }
}

/// Fragments of a UDP datagram with `payload_len` bytes, `size` bytes each.
fn fixed_frags(v6: bool, payload_len: usize, size: usize, id: u32) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut s = fixed_spec(v6, payload_len);
    s.ip_id = id as u16;
    let pkt = build(&s);
    let frags = fragment(&s, &pkt, size, id, 0);
    (pkt, frags)
}

fn push(
    r: &mut Reassembler,
    f: &[u8],
    now: Instant,
    out: &mut [u8],
) -> Result<Option<usize>, DropReason> {
    let p = parse(f).unwrap();
    assert!(matches!(p.transport, Transport::Fragment { .. }), "{p:?}");
    r.push(f, &p, now, out)
}

fn reassembler() -> Reassembler {
    Reassembler::new(1 << 20, 16, Duration::from_secs(30))
}

/// A deterministic shuffle (Fisher-Yates with a small LCG) for a proptest-chosen seed.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % (i + 1);
        v.swap(i, j);
    }
}

proptest! {
    #[test]
    fn reassembly_restores_the_datagram(
        mut s in arb_spec_with(3000),
        units in 1usize..200,
        seed in any::<u64>(),
        k in any::<prop::sample::Index>(),
        dup in any::<bool>(),
        id in any::<u32>(),
    ) {
        s.trailing.clear();
        let pkt = build(&s);
        let id = if s.v6 { id } else { u32::from(s.ip_id) };
        let min_k = usize::from(s.exts.first().is_some_and(|e| e.0 == 0));
        let k = min_k + k.index(s.exts.len() - min_k + 1);
        let mut frags = fragment(&s, &pkt, units * 8, id, k);
        prop_assume!(frags.len() >= 2);
        shuffle(&mut frags, seed);
        if dup {
            let again = frags[0].clone();
            frags.insert(1, again);
        }
        let mut r = reassembler();
        let mut out = vec![0u8; MAX_PACKET];
        let now = Instant::now();
        let last = frags.len() - 1;
        for (i, f) in frags.iter().enumerate() {
            let got = push(&mut r, f, now, &mut out);
            if i < last {
                prop_assert_eq!(got, Ok(None));
                prop_assert_eq!(r.pending(), 1);
            } else {
                prop_assert_eq!(got, Ok(Some(pkt.len())));
            }
        }
        prop_assert_eq!(&out[..pkt.len()], &pkt[..]);
        prop_assert_eq!((r.pending(), r.bytes()), (0, 0));
        let p = parse(&out[..pkt.len()]).unwrap();
        check_parsed(&s, &pkt, &p);
    }
}

#[test]
fn reassembly_in_order_and_reverse_v4_v6() {
    for v6 in [false, true] {
        let (pkt, frags) = fixed_frags(v6, 3000, 1232, 7);
        assert_eq!(frags.len(), 3);
        for reverse in [false, true] {
            let mut order: Vec<&Vec<u8>> = frags.iter().collect();
            if reverse {
                order.reverse();
            }
            let mut r = reassembler();
            let mut out = vec![0u8; MAX_PACKET];
            let now = Instant::now();
            assert_eq!(push(&mut r, order[0], now, &mut out), Ok(None));
            assert_eq!(push(&mut r, order[1], now, &mut out), Ok(None));
            assert_eq!(push(&mut r, order[2], now, &mut out), Ok(Some(pkt.len())));
            assert_eq!(&out[..pkt.len()], &pkt[..]);
            assert_eq!(r.pending(), 0);
        }
    }
}

#[test]
fn reassembly_duplicate_is_ignored() {
    for v6 in [false, true] {
        let (pkt, frags) = fixed_frags(v6, 1100, 504, 9);
        let mut r = reassembler();
        let mut out = vec![0u8; MAX_PACKET];
        let now = Instant::now();
        assert_eq!(push(&mut r, &frags[1], now, &mut out), Ok(None));
        assert_eq!(push(&mut r, &frags[1], now, &mut out), Ok(None));
        assert_eq!(push(&mut r, &frags[0], now, &mut out), Ok(None));
        assert_eq!(push(&mut r, &frags[0], now, &mut out), Ok(None));
        assert_eq!(push(&mut r, &frags[2], now, &mut out), Ok(Some(pkt.len())));
        assert_eq!(&out[..pkt.len()], &pkt[..]);
    }
}

#[test]
fn reassembly_overlap_drops_the_datagram() {
    for v6 in [false, true] {
        let (_, frags) = fixed_frags(v6, 1100, 504, 11);
        // Fragments of 248 bytes of the same datagram (same id) but different data overlap
        // the 504-byte ones.
        let mut s = fixed_spec(v6, 1100);
        s.ip_id = 11;
        s.payload.iter_mut().for_each(|b| *b ^= 0x55);
        let other = build(&s);
        let small = fragment(&s, &other, 248, 11, 0);
        let mut r = reassembler();
        let mut out = vec![0u8; MAX_PACKET];
        let now = Instant::now();
        assert_eq!(push(&mut r, &frags[0], now, &mut out), Ok(None));
        assert_eq!(
            push(&mut r, &small[1], now, &mut out),
            Err(DropReason::FragmentOverlap)
        );
        assert_eq!((r.pending(), r.bytes()), (0, 0));
        // What remains cannot complete the dropped datagram.
        assert_eq!(push(&mut r, &frags[1], now, &mut out), Ok(None));
        assert_eq!(push(&mut r, &frags[2], now, &mut out), Ok(None));
        assert_eq!(r.pending(), 1);
    }
}

#[test]
fn reassembly_too_large_and_bad_fragments() {
    for v6 in [false, true] {
        let (_, frags) = fixed_frags(v6, 1100, 504, 13);
        let mut r = reassembler();
        let mut out = vec![0u8; MAX_PACKET];
        let now = Instant::now();
        // Move the last fragment to offset 65528: the datagram would exceed 65535 bytes.
        let mut far = frags[2].clone();
        let at = if v6 { 42 } else { 6 };
        far[at..at + 2].copy_from_slice(&(if v6 { 65528u16 } else { 65528 / 8 }).to_be_bytes());
        if !v6 {
            far[10..12].copy_from_slice(&[0, 0]);
            let c = ones(&far[..20]).ones_complement();
            far[10..12].copy_from_slice(&c.to_ne_bytes());
        }
        assert_eq!(push(&mut r, &frags[0], now, &mut out), Ok(None));
        assert_eq!(
            push(&mut r, &far, now, &mut out),
            Err(DropReason::FragmentTooLarge)
        );
        assert_eq!(r.pending(), 0);

        // A non-last fragment whose length is not a multiple of 8.
        let mut odd = frags[0].clone();
        odd.pop();
        if v6 {
            let plen = u16::from_be_bytes([odd[4], odd[5]]) - 1;
            odd[4..6].copy_from_slice(&plen.to_be_bytes());
        } else {
            let tl = u16::from_be_bytes([odd[2], odd[3]]) - 1;
            odd[2..4].copy_from_slice(&tl.to_be_bytes());
        }
        assert_eq!(
            push(&mut r, &odd, now, &mut out),
            Err(DropReason::BadFragment)
        );

        // Two different ends.
        let (_, shorter) = fixed_frags(v6, 900, 504, 13);
        assert_eq!(push(&mut r, &frags[2], now, &mut out), Ok(None));
        assert_eq!(
            push(&mut r, &shorter[1], now, &mut out),
            Err(DropReason::BadFragment)
        );
        assert_eq!((r.pending(), r.bytes()), (0, 0));
    }
}

#[test]
fn reassembly_timeout() {
    for v6 in [false, true] {
        let (pkt, frags) = fixed_frags(v6, 1100, 504, 17);
        let mut r = reassembler();
        let mut out = vec![0u8; MAX_PACKET];
        let t0 = Instant::now();
        assert_eq!(push(&mut r, &frags[0], t0, &mut out), Ok(None));
        assert_eq!(r.expire(t0 + Duration::from_secs(29)), 0);
        assert_eq!(r.pending(), 1);
        assert_eq!(r.expire(t0 + Duration::from_secs(30)), 1);
        assert_eq!((r.pending(), r.bytes()), (0, 0));

        // A stale entry is not completed by late fragments, even without `expire`.
        assert_eq!(push(&mut r, &frags[0], t0, &mut out), Ok(None));
        let late = t0 + Duration::from_secs(31);
        assert_eq!(push(&mut r, &frags[1], late, &mut out), Ok(None));
        assert_eq!(push(&mut r, &frags[2], late, &mut out), Ok(None));
        assert_eq!(r.pending(), 1);
        // The fresh entry started at `late` completes.
        assert_eq!(push(&mut r, &frags[0], late, &mut out), Ok(Some(pkt.len())));
        assert_eq!(&out[..pkt.len()], &pkt[..]);
    }
}

#[test]
fn reassembly_memory_and_count_bounds() {
    for v6 in [false, true] {
        let now = Instant::now();
        let mut out = vec![0u8; MAX_PACKET];
        // Memory: each first fragment costs its header plus 504 bytes.
        let mut r = Reassembler::new(1200, 16, Duration::from_secs(30));
        let (_, a) = fixed_frags(v6, 1100, 504, 1);
        let (_, b) = fixed_frags(v6, 1100, 504, 2);
        let (_, c) = fixed_frags(v6, 1100, 504, 3);
        assert_eq!(push(&mut r, &a[0], now, &mut out), Ok(None));
        assert_eq!(push(&mut r, &b[0], now, &mut out), Ok(None));
        assert_eq!(
            push(&mut r, &c[0], now, &mut out),
            Err(DropReason::FragmentTableFull)
        );
        // Growing an existing datagram is refused too, and refusal leaves it intact.
        assert_eq!(
            push(&mut r, &a[1], now, &mut out),
            Err(DropReason::FragmentTableFull)
        );
        assert_eq!(r.pending(), 2);
        assert!(r.bytes() <= 1200);
        // Expiry frees the budget.
        let later = now + Duration::from_secs(30);
        assert_eq!(push(&mut r, &c[0], later, &mut out), Ok(None));
        assert_eq!(r.pending(), 1);

        // Count.
        let mut r = Reassembler::new(1 << 20, 2, Duration::from_secs(30));
        assert_eq!(push(&mut r, &a[0], now, &mut out), Ok(None));
        assert_eq!(push(&mut r, &b[0], now, &mut out), Ok(None));
        assert_eq!(
            push(&mut r, &c[0], now, &mut out),
            Err(DropReason::FragmentTableFull)
        );
        assert_eq!(r.pending(), 2);
        // Fragments of held datagrams are still accepted.
        assert_eq!(push(&mut r, &a[1], now, &mut out), Ok(None));
    }
}

#[test]
fn reassembly_rejects_non_fragments() {
    let s = fixed_spec(false, 10);
    let pkt = build(&s);
    let p = parse(&pkt).unwrap();
    let mut out = vec![0u8; MAX_PACKET];
    assert_eq!(
        reassembler().push(&pkt, &p, Instant::now(), &mut out),
        Err(DropReason::BadFragment)
    );
}

// ---------------------------------------------------------------------------------------
// Parser edge cases, one reason each.

fn v4_udp() -> Vec<u8> {
    build(&fixed_spec(false, 12))
}

fn v6_udp() -> Vec<u8> {
    build(&fixed_spec(true, 12))
}

#[test]
fn parse_rejects_with_specific_reasons() {
    assert_eq!(parse(&[]), Err(DropReason::Truncated));
    let mut b = v4_udp();
    b[0] = 0x55;
    assert_eq!(parse(&b), Err(DropReason::BadVersion));
    let mut b = v4_udp();
    b[0] = 0x44; // IHL 16 bytes
    assert_eq!(parse(&b), Err(DropReason::BadHeaderLength));
    let mut b = v4_udp();
    b[2..4].copy_from_slice(&19u16.to_be_bytes());
    assert_eq!(parse(&b), Err(DropReason::BadTotalLength));
    let mut b = v4_udp();
    b[0] = 0x4f; // IHL 60 > total length 40
    assert_eq!(parse(&b), Err(DropReason::BadHeaderLength));
    let mut b = v4_udp();
    b[2..4].copy_from_slice(&41u16.to_be_bytes());
    assert_eq!(parse(&b), Err(DropReason::Truncated));
    let mut b = v4_udp();
    b[9] = 47; // GRE
    assert_eq!(parse(&b), Err(DropReason::UnsupportedProtocol));
    let mut b = v4_udp();
    b[24..26].copy_from_slice(&7u16.to_be_bytes()); // UDP length < 8
    assert_eq!(parse(&b), Err(DropReason::BadUdpHeader));
    let mut b = v4_udp();
    b[24..26].copy_from_slice(&21u16.to_be_bytes()); // beyond the IP payload
    assert_eq!(parse(&b), Err(DropReason::BadUdpHeader));

    let mut t = fixed_spec(false, 0);
    t.proto = PROTO_TCP;
    let tcp = build(&t);
    let mut b = tcp.clone();
    b[32] = 4 << 4; // data offset 4
    assert_eq!(parse(&b), Err(DropReason::BadTcpHeader));
    let mut b = tcp.clone();
    b[32] = 6 << 4; // 24 bytes > 20-byte segment
    assert_eq!(parse(&b), Err(DropReason::BadTcpHeader));

    let mut b = v6_udp();
    b[6] = 50; // ESP
    assert_eq!(parse(&b), Err(DropReason::UnsupportedProtocol));
    let mut b = v6_udp();
    b[4..6].copy_from_slice(&100u16.to_be_bytes());
    assert_eq!(parse(&b), Err(DropReason::Truncated));
    let mut b = v6_udp();
    b[6] = 58; // ICMPv6, 20 bytes of garbage: a type-0x14 message, not an error
    assert!(matches!(
        parse(&b),
        Ok(Packet {
            transport: Transport::OtherIcmp { .. },
            ..
        })
    ));
}

#[test]
fn parse_ipv6_extension_headers() {
    let mut s = fixed_spec(true, 12);
    s.exts = vec![(0, 0), (60, 1), (43, 0)];
    let b = build(&s);
    let p = parse(&b).unwrap();
    assert_eq!(p.l4_offset, 40 + 8 + 16 + 8);
    assert!(matches!(p.transport, Transport::Udp { src_port: 5353, .. }));

    // Hop-by-hop not first.
    s.exts = vec![(60, 0), (0, 0)];
    assert_eq!(parse(&build(&s)), Err(DropReason::BadExtensionHeader));
    // Too many.
    s.exts = vec![(60, 0); 9];
    assert_eq!(parse(&build(&s)), Err(DropReason::BadExtensionHeader));
    s.exts = vec![(60, 0); 8];
    assert!(parse(&build(&s)).is_ok());
    // An extension header running past the payload.
    s.exts = vec![(60, 0)];
    let mut b = build(&s);
    b[41] = 200;
    assert_eq!(parse(&b), Err(DropReason::BadExtensionHeader));

    // An atomic fragment (offset 0, no MF) is walked through.
    let plain = build(&fixed_spec(true, 12));
    let mut atomic = plain[..40].to_vec();
    atomic[6] = 44;
    atomic[4..6].copy_from_slice(&((plain.len() - 40 + 8) as u16).to_be_bytes());
    atomic.extend_from_slice(&[PROTO_UDP, 0, 0, 0, 1, 2, 3, 4]);
    atomic.extend_from_slice(&plain[40..]);
    let p = parse(&atomic).unwrap();
    assert_eq!(p.l4_offset, 48);
    assert!(matches!(p.transport, Transport::Udp { dst_port: 53, .. }));
}

#[test]
fn parse_fragments_and_trailing_bytes() {
    let (_, frags) = fixed_frags(false, 1100, 504, 0x4242);
    assert_eq!(
        parse(&frags[0]).unwrap().transport,
        Transport::Fragment {
            id: 0x4242,
            offset: 0,
            more: true,
            protocol: PROTO_UDP
        }
    );
    assert_eq!(
        parse(&frags[2]).unwrap().transport,
        Transport::Fragment {
            id: 0x4242,
            offset: 1008,
            more: false,
            protocol: PROTO_UDP
        }
    );
    let (_, frags) = fixed_frags(true, 1100, 504, 0xdead_beef);
    let p = parse(&frags[1]).unwrap();
    assert_eq!(
        p.transport,
        Transport::Fragment {
            id: 0xdead_beef,
            offset: 504,
            more: true,
            protocol: PROTO_UDP
        }
    );
    assert_eq!(p.l4_offset, 48);

    // Ethernet padding after the packet is ignored.
    let mut b = v4_udp();
    let len = b.len();
    b.extend_from_slice(&[0; 6]);
    assert_eq!(parse(&b).unwrap().len, len);
}

#[test]
fn parse_icmp_errors_quoting_echo_and_short_quotes() {
    let s = fixed_spec(false, 0);
    // An echo request the gateway sent, quoted in a time exceeded.
    let echo = build_icmp(&s, 8, 0, [0, 77, 0, 1], &[]);
    let outer = Spec {
        src: [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ..s.clone()
    };
    let err = build_icmp(&outer, 11, 0, [0; 4], &echo);
    let p = parse(&err).unwrap();
    let Transport::IcmpError {
        icmp_type: 11,
        inner,
        ..
    } = p.transport
    else {
        panic!("{:?}", p.transport);
    };
    assert_eq!(inner.protocol, PROTO_ICMP);
    assert_eq!((inner.src.port(), inner.dst.port()), (77, 77));

    // A quote cut before the ports is unusable.
    let udp = v4_udp();
    let short = build_icmp(&outer, 3, 3, [0; 4], &udp[..22]);
    assert_eq!(parse(&short), Err(DropReason::BadIcmp));
    let mut buf = short.clone();
    let fake = Packet {
        transport: Transport::IcmpError {
            icmp_type: 3,
            code: 3,
            inner,
        },
        ..p
    };
    assert!(!rewrite_icmp_error(
        &mut buf,
        &fake,
        inner.dst.ip(),
        inner.src,
        inner.dst
    ));
    assert_eq!(buf, short);
    // An ICMP message shorter than 8 bytes.
    let mut tiny = build_icmp(&outer, 0, 0, [0; 4], &[]);
    tiny.truncate(24);
    tiny[2..4].copy_from_slice(&24u16.to_be_bytes());
    assert_eq!(parse(&tiny), Err(DropReason::BadIcmp));
}

#[test]
fn unreachable_is_capped_at_576_for_ipv4() {
    let s = fixed_spec(false, 1400);
    let b = build(&s);
    let p = parse(&b).unwrap();
    let mut out = vec![0u8; 1280];
    let n = build_unreachable(
        &mut out,
        &b,
        &p,
        "10.96.0.10".parse().unwrap(),
        Unreachable::Port,
    );
    assert_eq!(n, 576);
    // Not for a non-first fragment.
    let (_, frags) = fixed_frags(false, 1100, 504, 3);
    let f = parse(&frags[1]).unwrap();
    assert_eq!(
        build_unreachable(&mut out, &frags[1], &f, p.dst, Unreachable::Port),
        0
    );
    // Not across families.
    assert_eq!(
        build_unreachable(
            &mut out,
            &b,
            &p,
            "fd00::1".parse().unwrap(),
            Unreachable::Port
        ),
        0
    );
}

#[test]
fn rst_is_not_answered_and_udp_headers_bound_the_size() {
    let mut s = fixed_spec(false, 0);
    s.proto = PROTO_TCP;
    s.flags = TcpFlags::RST.0 | TcpFlags::ACK.0;
    let b = build(&s);
    let mut out = [0u8; 128];
    assert_eq!(build_tcp_rst(&mut out, &parse(&b).unwrap()), 0);

    let a: SocketAddr = "10.96.0.10:53".parse().unwrap();
    let c: SocketAddr = "192.168.1.50:41000".parse().unwrap();
    let mut big = vec![0u8; 70000];
    assert_eq!(build_udp_headers(&mut big, a, c, 65535 - 28), Some(65535));
    assert_eq!(build_udp_headers(&mut big, a, c, 65535 - 27), None);
    let v6: SocketAddr = "[fd00::1]:53".parse().unwrap();
    assert_eq!(build_udp_headers(&mut big, a, v6, 10), None);
    assert_eq!(build_udp_headers(&mut big[..40], a, c, 20), None);
}

#[test]
fn drop_reason_labels_are_unique_snake_case() {
    let mut seen = std::collections::HashSet::new();
    for r in DropReason::ALL {
        let l = r.label();
        assert!(l.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{l}");
        assert!(seen.insert(l), "duplicate label {l}");
        assert!(!r.to_string().is_empty());
    }
    assert_eq!(seen.len(), 15);
}

#[test]
fn tcp_flags_has() {
    let f = TcpFlags(TcpFlags::SYN.0 | TcpFlags::ACK.0);
    assert!(f.has(TcpFlags::SYN) && f.has(TcpFlags::ACK) && f.has(f));
    assert!(!f.has(TcpFlags::RST) && !f.has(TcpFlags(TcpFlags::SYN.0 | TcpFlags::FIN.0)));
}
