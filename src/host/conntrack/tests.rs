//! The ctnetlink messages byte by byte, against layouts written out by hand from
//! `nfnetlink_conntrack.h` (host-order netlink headers: these run on little-endian hosts).
#![cfg(target_endian = "little")]

use super::wire::*;
use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An attribute header: length (with the header, without padding), type.
fn nla(len: u16, kind: u16) -> Vec<u8> {
    let mut v = len.to_le_bytes().to_vec();
    v.extend_from_slice(&kind.to_le_bytes());
    v
}

const NESTED: u16 = 0x8000;

fn v4_tuple(kind: u16, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut v = nla(52, kind | NESTED);
    v.extend(nla(20, CTA_TUPLE_IP | NESTED));
    v.extend(nla(8, CTA_IP_V4_SRC));
    v.extend(src);
    v.extend(nla(8, CTA_IP_V4_DST));
    v.extend(dst);
    v.extend(nla(28, CTA_TUPLE_PROTO | NESTED));
    v.extend(nla(5, CTA_PROTO_NUM));
    v.extend([6, 0, 0, 0]);
    v.extend(nla(6, CTA_PROTO_SRC_PORT));
    v.extend(sport.to_be_bytes());
    v.extend([0, 0]);
    v.extend(nla(6, CTA_PROTO_DST_PORT));
    v.extend(dport.to_be_bytes());
    v.extend([0, 0]);
    v
}

fn v4_nat(kind: u16, ip: [u8; 4], min: u16, max: u16) -> Vec<u8> {
    let mut v = nla(40, kind | NESTED);
    v.extend(nla(8, CTA_NAT_V4_MINIP));
    v.extend(ip);
    v.extend(nla(8, CTA_NAT_V4_MAXIP));
    v.extend(ip);
    v.extend(nla(20, CTA_NAT_PROTO | NESTED));
    v.extend(nla(6, CTA_PROTONAT_PORT_MIN));
    v.extend(min.to_be_bytes());
    v.extend([0, 0]);
    v.extend(nla(6, CTA_PROTONAT_PORT_MAX));
    v.extend(max.to_be_bytes());
    v.extend([0, 0]);
    v
}

fn header(len: u32, msg: u16, flags: u16, seq: u32, family: u8) -> Vec<u8> {
    let mut v = len.to_le_bytes().to_vec();
    v.extend((0x0100 | msg).to_le_bytes());
    v.extend(flags.to_le_bytes());
    v.extend(seq.to_le_bytes());
    v.extend(0u32.to_le_bytes());
    v.extend([family, 0, 0, 0]);
    v
}

fn entry_v4(liberal: bool) -> NatEntry {
    NatEntry {
        orig: Tuple::tcp(sa("192.168.77.2:41000"), sa("10.96.0.10:80")),
        endpoint: sa("10.244.1.10:8080"),
        source: "10.244.1.1".parse().unwrap(),
        source_ports: (1024, 65535),
        mark: 0x6377_0001,
        timeout: 120,
        tcp_state: Some(tcp_state::SYN_SENT),
        be_liberal: liberal,
    }
}

#[test]
fn create_ipv4_with_both_nats_mark_timeout_and_tcp_state() {
    let got = create(7, &entry_v4(false));
    let mut want = header(236, MSG_NEW, 0x0605, 7, libc::AF_INET as u8);
    want.extend(v4_tuple(
        CTA_TUPLE_ORIG,
        [192, 168, 77, 2],
        41000,
        [10, 96, 0, 10],
        80,
    ));
    want.extend(v4_tuple(
        CTA_TUPLE_REPLY,
        [10, 96, 0, 10],
        80,
        [192, 168, 77, 2],
        41000,
    ));
    want.extend(v4_nat(CTA_NAT_DST, [10, 244, 1, 10], 8080, 8080));
    want.extend(v4_nat(CTA_NAT_SRC, [10, 244, 1, 1], 1024, 65535));
    want.extend(nla(8, CTA_MARK));
    want.extend([0x63, 0x77, 0x00, 0x01]);
    want.extend(nla(8, CTA_TIMEOUT));
    want.extend([0, 0, 0, 120]);
    want.extend(nla(16, CTA_PROTOINFO | NESTED));
    want.extend(nla(12, CTA_PROTOINFO_TCP | NESTED));
    want.extend(nla(5, CTA_PROTOINFO_TCP_STATE));
    want.extend([1, 0, 0, 0]);
    assert_eq!(got.len(), 236);
    assert_eq!(got, want);
}

#[test]
fn be_liberal_sets_the_flag_and_its_mask_in_both_directions() {
    let got = create(7, &entry_v4(true));
    let tail = &got[got.len() - 32..];
    let mut want = nla(32, CTA_PROTOINFO | NESTED);
    want.extend(nla(28, CTA_PROTOINFO_TCP | NESTED));
    want.extend(nla(5, CTA_PROTOINFO_TCP_STATE));
    want.extend([1, 0, 0, 0]);
    want.extend(nla(6, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL));
    want.extend([0x08, 0x08, 0, 0]);
    want.extend(nla(6, CTA_PROTOINFO_TCP_FLAGS_REPLY));
    want.extend([0x08, 0x08, 0, 0]);
    assert_eq!(tail, &want[..]);
    assert_eq!(u32::from_le_bytes(got[..4].try_into().unwrap()), 252);
}

#[test]
fn create_ipv6_uses_the_v6_attributes() {
    let e = NatEntry {
        orig: Tuple::tcp(sa("[fd77::2]:41000"), sa("[fd00:10:96::10]:80")),
        endpoint: sa("[fd00:10:244:1::a]:8080"),
        source: "fd00:10:244:1::1".parse().unwrap(),
        source_ports: (1024, 65535),
        mark: MARK_OWNER,
        timeout: 60,
        tcp_state: None,
        be_liberal: false,
    };
    let got = create(1, &e);
    assert_eq!(got[16], libc::AF_INET6 as u8);
    // ORIG: nested tuple, nested IP with two 20-byte v6 attributes.
    assert_eq!(&got[20..24], &nla(76, CTA_TUPLE_ORIG | NESTED)[..]);
    assert_eq!(&got[24..28], &nla(44, CTA_TUPLE_IP | NESTED)[..]);
    assert_eq!(&got[28..32], &nla(20, CTA_IP_V6_SRC)[..]);
    assert_eq!(
        &got[32..48],
        &"fd77::2".parse::<std::net::Ipv6Addr>().unwrap().octets()
    );
    assert_eq!(&got[48..52], &nla(20, CTA_IP_V6_DST)[..]);
    // The NAT ranges carry v6 addresses.
    let parsed: Vec<(u16, Vec<u8>)> = attrs(&got[20..])
        .map(|a| a.map(|(k, v)| (k, v.to_vec())).unwrap())
        .collect();
    let dst = &parsed.iter().find(|(k, _)| *k == CTA_NAT_DST).unwrap().1;
    let inner: Vec<(u16, Vec<u8>)> = attrs(dst)
        .map(|a| a.map(|(k, v)| (k, v.to_vec())).unwrap())
        .collect();
    assert_eq!(inner[0].0, CTA_NAT_V6_MINIP);
    assert_eq!(
        inner[0].1,
        "fd00:10:244:1::a"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
    );
    assert_eq!(inner[1].0, CTA_NAT_V6_MAXIP);
    assert!(parsed.iter().all(|(k, _)| *k != CTA_PROTOINFO));
}

#[test]
fn get_delete_dump_and_flush_requests() {
    let t = Tuple::tcp(sa("192.168.77.2:41000"), sa("10.96.0.10:80"));
    let mut want = header(72, MSG_GET, 0x0005, 3, libc::AF_INET as u8);
    want.extend(v4_tuple(
        CTA_TUPLE_ORIG,
        [192, 168, 77, 2],
        41000,
        [10, 96, 0, 10],
        80,
    ));
    assert_eq!(get(3, &t), want);
    let del = delete(4, &t);
    assert_eq!(&del[4..6], &(0x0100 | MSG_DELETE).to_le_bytes());
    assert_eq!(&del[20..], &want[20..]);

    // NLM_F_REQUEST | NLM_F_DUMP (0x300), any family, mark and mask.
    let mut want = header(36, MSG_GET, 0x0301, 5, 0);
    want.extend(nla(8, CTA_MARK));
    want.extend([0x63, 0x77, 0, 0]);
    want.extend(nla(8, CTA_MARK_MASK));
    want.extend([0xff, 0xff, 0, 0]);
    assert_eq!(dump_by_mark(5, MARK_OWNER, MARK_OWNER_MASK), want);
    let flush = flush_by_mark(6, MARK_OWNER, MARK_OWNER_MASK);
    assert_eq!(&flush[4..8], &[0x02, 0x01, 0x05, 0x00]);
    assert_eq!(&flush[16..], &want[16..]);
}

/// A message as the kernel sends a dump line or an event.
fn kernel_entry(msg: u16, seq: u32, attrs: &[u8]) -> Vec<u8> {
    let mut v = header(20 + attrs.len() as u32, msg, 0x0002, seq, 2);
    v.extend_from_slice(attrs);
    v
}

#[test]
fn an_entry_with_nat_counters_and_state_is_read_back() {
    let mut a = v4_tuple(
        CTA_TUPLE_ORIG,
        [192, 168, 77, 2],
        41000,
        [10, 96, 0, 10],
        80,
    );
    // The reply tuple after NAT: from the endpoint to the gateway's port.
    a.extend(v4_tuple(
        CTA_TUPLE_REPLY,
        [10, 244, 1, 10],
        8080,
        [10, 244, 1, 1],
        41000,
    ));
    a.extend(nla(8, CTA_STATUS));
    a.extend(0x1beu32.to_be_bytes());
    a.extend(nla(8, CTA_MARK));
    a.extend(0x6377_0001u32.to_be_bytes());
    a.extend(nla(8, CTA_TIMEOUT));
    a.extend(431_999u32.to_be_bytes());
    for kind in [CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY] {
        a.extend(nla(28, kind | NESTED));
        a.extend(nla(12, CTA_COUNTERS_PACKETS));
        a.extend(12u64.to_be_bytes());
        a.extend(nla(12, CTA_COUNTERS_BYTES));
        a.extend(7_000_000u64.to_be_bytes());
    }
    a.extend(nla(8, CTA_ID));
    a.extend(99u32.to_be_bytes());
    a.extend(nla(24, CTA_PROTOINFO | NESTED));
    a.extend(nla(20, CTA_PROTOINFO_TCP | NESTED));
    a.extend(nla(5, CTA_PROTOINFO_TCP_STATE));
    a.extend([3, 0, 0, 0]);
    a.extend(nla(6, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL));
    a.extend([0x23, 0, 0, 0]);
    let msgs = parse(&kernel_entry(MSG_NEW, 9, &a));
    let [Ok(Message::Entry { seq, msg, entry })] = &msgs[..] else {
        panic!("{msgs:?}")
    };
    assert_eq!((*seq, *msg), (9, MSG_NEW));
    assert_eq!(
        entry.orig,
        Some(Tuple::tcp(sa("192.168.77.2:41000"), sa("10.96.0.10:80")))
    );
    assert_eq!(entry.endpoint(), Some(sa("10.244.1.10:8080")));
    assert!(entry.is_ours());
    assert_eq!(entry.status & status::ASSURED, status::ASSURED);
    assert_eq!(entry.timeout, Some(431_999));
    assert_eq!(entry.tcp_state, Some(tcp_state::ESTABLISHED));
    assert_eq!(entry.counters_orig, Some((12, 7_000_000)));
    assert_eq!(entry.counters_reply, Some((12, 7_000_000)));
    assert_eq!(entry.id, Some(99));
}

#[test]
fn acks_errors_and_done_in_one_datagram() {
    let mut d = Vec::new();
    // NLMSG_ERROR with error 0 (an ACK), then -EEXIST, then DONE.
    for (seq, code) in [(1u32, 0i32), (2, -libc::EEXIST)] {
        d.extend(36u32.to_le_bytes());
        d.extend(2u16.to_le_bytes());
        d.extend(0u16.to_le_bytes());
        d.extend(seq.to_le_bytes());
        d.extend(0u32.to_le_bytes());
        d.extend(code.to_le_bytes());
        d.extend([0u8; 16]); // the request's header, echoed
    }
    d.extend(20u32.to_le_bytes());
    d.extend(3u16.to_le_bytes());
    d.extend(2u16.to_le_bytes());
    d.extend(3u32.to_le_bytes());
    d.extend(0u32.to_le_bytes());
    d.extend(0u32.to_le_bytes());
    let got: Vec<Message> = parse(&d).into_iter().map(Result::unwrap).collect();
    assert_eq!(
        got,
        [
            Message::Ack { seq: 1, errno: 0 },
            Message::Ack {
                seq: 2,
                errno: libc::EEXIST
            },
            Message::Done { seq: 3 },
        ]
    );
}

#[test]
fn truncated_or_lying_lengths_are_errors_not_panics() {
    let good = create(1, &entry_v4(false));
    for cut in [17, 30, 100, 235] {
        let mut m = good[..cut].to_vec();
        // Claim the full length: the message runs past the datagram.
        m[..4].copy_from_slice(&236u32.to_le_bytes());
        let r = parse(&m);
        assert!(matches!(r.last(), Some(Err(_))), "cut {cut}: {r:?}");
    }
    // An attribute claiming more than its message holds.
    let mut m = kernel_entry(MSG_NEW, 1, &nla(200, CTA_MARK));
    m.extend([0u8; 4]);
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_le_bytes());
    assert!(matches!(&parse(&m)[..], [Err(_)]));
    // A tuple without addresses.
    let m = kernel_entry(MSG_NEW, 1, &nla(4, CTA_TUPLE_ORIG | NESTED));
    assert!(matches!(
        &parse(&m)[..],
        [Err(Malformed("incomplete tuple"))]
    ));
    // Every prefix of a real message parses without a panic.
    for cut in 0..good.len() {
        let _ = parse(&good[..cut]);
        let _ = entry(&good[20..cut.max(20)]);
    }
}

#[test]
fn a_created_entry_parses_back_to_what_was_asked() {
    let e = entry_v4(false);
    let m = create(1, &e);
    let back = entry(&m[20..]).unwrap();
    assert_eq!(back.orig, Some(e.orig));
    assert_eq!(back.reply, Some(e.orig.reversed()));
    assert_eq!(back.mark, e.mark);
    assert_eq!(back.timeout, Some(120));
    assert_eq!(back.tcp_state, Some(tcp_state::SYN_SENT));
    assert!(back.is_ours());
    assert!(!Entry::default().is_ours());
}

#[test]
fn unreplied_dump_and_delete_by_id_requests() {
    // Mark and mask, then status 0 under the mask SEEN_REPLY (bit 1).
    let mut want = header(52, MSG_GET, 0x0301, 7, 0);
    want.extend(nla(8, CTA_MARK));
    want.extend([0x63, 0x77, 0, 0]);
    want.extend(nla(8, CTA_MARK_MASK));
    want.extend([0xff, 0xff, 0, 0]);
    want.extend(nla(8, CTA_STATUS));
    want.extend([0, 0, 0, 0]);
    want.extend(nla(8, CTA_STATUS_MASK));
    want.extend([0, 0, 0, 2]);
    assert_eq!(dump_unreplied_by_mark(7, MARK_OWNER, MARK_OWNER_MASK), want);
    // The tuple as in a plain delete, then the id (big endian).
    let t = Tuple::tcp(sa("192.168.77.2:41000"), sa("10.96.0.10:80"));
    let plain = delete(8, &t);
    let by_id = delete_id(8, &t, 0x0102_0304);
    assert_eq!(by_id.len(), plain.len() + 8);
    assert_eq!(&by_id[4..plain.len()], &plain[4..]);
    assert_eq!(&by_id[plain.len()..plain.len() + 4], &nla(8, CTA_ID)[..]);
    assert_eq!(&by_id[plain.len() + 4..], &[1, 2, 3, 4]);
}
