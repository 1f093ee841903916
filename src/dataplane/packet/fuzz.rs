//! The fuzzing harness, shared by `fuzz/fuzz_targets/parse.rs` and a proptest in `tests.rs`
//! (so that the same checks run in ordinary `cargo test`). Not part of the dataplane API.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::{
    build_tcp_rst, build_unreachable, echo_reply_in_place, parse, rewrite, rewrite_icmp_error,
    Checksum, DropReason, Reassembler, TcpFlags, Transport, Unreachable, VirtioNetHdr, MAX_PACKET,
};

/// Parse `data`; if it parses, run every function downstream of the parser on a copy and
/// check what must hold for any input. Panics (the fuzzer's finding) on a violated property.
pub fn exercise(data: &[u8]) {
    // The same bytes as a virtio-net header and the packet behind it: completing a partial
    // checksum with any offsets is an error or a write inside the packet, never a panic.
    if let Ok(h) = VirtioNetHdr::parse(data) {
        let mut packet = data[VirtioNetHdr::LEN..].to_vec();
        if h.complete_checksum(&mut packet).is_ok() {
            assert!(usize::from(h.csum_start) + usize::from(h.csum_offset) + 2 <= packet.len());
        }
    }
    let Ok(pkt) = parse(data) else { return };
    assert!(pkt.len <= data.len() && pkt.l4_offset <= pkt.len);
    let v6 = pkt.is_v6();
    // Addresses derived from the input, so that the fuzzer steers them too.
    let seed = data
        .iter()
        .fold(0u32, |a, b| a.rotate_left(5) ^ u32::from(*b));
    let ip = |n: u32| -> IpAddr {
        if v6 {
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, (n >> 16) as u16, n as u16).into()
        } else {
            Ipv4Addr::from(n).into()
        }
    };
    let a = SocketAddr::new(ip(seed), seed as u16);
    let b = SocketAddr::new(ip(!seed), (seed >> 16) as u16);
    let mut buf = data.to_vec();

    match pkt.transport {
        Transport::Tcp { .. } | Transport::Udp { .. } => {
            for mode in [Checksum::Full, Checksum::Partial] {
                buf.copy_from_slice(data);
                rewrite(&mut buf, &pkt, a, b, mode);
                let again = parse(&buf).expect("a rewritten packet parses");
                assert_eq!((again.src, again.dst), (a.ip(), b.ip()));
                assert_eq!((again.len, again.l4_offset), (pkt.len, pkt.l4_offset));
                assert_eq!(buf[pkt.len..], data[pkt.len..], "trailing bytes untouched");
            }
        }
        Transport::EchoRequest { .. } => {
            let n = echo_reply_in_place(&mut buf, &pkt);
            assert_eq!(n, pkt.len);
            let reply = parse(&buf[..n]).expect("an echo reply parses");
            assert_eq!((reply.src, reply.dst), (pkt.dst, pkt.src));
            assert!(matches!(
                reply.transport,
                Transport::OtherIcmp { icmp_type: 0 | 129 }
            ));
        }
        Transport::IcmpError { .. } => {
            if rewrite_icmp_error(&mut buf, &pkt, b.ip(), a, b) {
                let again = parse(&buf).expect("a translated ICMP error parses");
                let Transport::IcmpError { inner, .. } = again.transport else {
                    panic!("translated ICMP error parsed as {:?}", again.transport);
                };
                assert_eq!(again.dst, b.ip());
                assert_eq!((inner.src.ip(), inner.dst.ip()), (a.ip(), b.ip()));
            } else {
                assert_eq!(
                    buf, data,
                    "a refused translation leaves the buffer untouched"
                );
            }
        }
        Transport::Fragment { .. } => {
            let mut r = Reassembler::new(MAX_PACKET * 4, 4, Duration::from_secs(30));
            let mut out = vec![0u8; MAX_PACKET];
            let now = Instant::now();
            // A fragment never completes alone (parse walks through atomic fragments), and
            // the same fragment again is a duplicate or an error, never a datagram.
            assert!(matches!(
                r.push(data, &pkt, now, &mut out),
                Ok(None) | Err(_)
            ));
            assert!(matches!(
                r.push(data, &pkt, now, &mut out),
                Ok(None) | Err(_)
            ));
            assert!(r.pending() <= 1);
            r.expire(now + Duration::from_secs(31));
            assert_eq!(r.pending(), 0);
            assert_eq!(r.bytes(), 0);
        }
        Transport::OtherIcmp { .. } => {}
    }

    let mut out = vec![0u8; 1280];
    let n = build_tcp_rst(&mut out, &pkt);
    if let Transport::Tcp { flags, .. } = pkt.transport {
        if !flags.has(TcpFlags::RST) {
            let rst = parse(&out[..n]).expect("a RST parses");
            assert!(
                matches!(rst.transport, Transport::Tcp { flags, .. } if flags.has(TcpFlags::RST))
            );
        }
    } else {
        assert_eq!(n, 0);
    }
    for kind in [Unreachable::Port, Unreachable::AdminProhibited] {
        let n = build_unreachable(&mut out, data, &pkt, a.ip(), kind);
        assert!(n <= if v6 { 1280 } else { 576 });
        if n > 0 {
            // It parses unless the quote is cut before the offending packet's ports.
            match parse(&out[..n]) {
                Ok(err) => {
                    assert_eq!((err.src, err.dst), (a.ip(), pkt.src));
                    let Transport::IcmpError { inner, .. } = err.transport else {
                        panic!("unreachable parsed as {:?}", err.transport);
                    };
                    assert_eq!((inner.src.ip(), inner.dst.ip()), (pkt.src, pkt.dst));
                }
                Err(e) => assert_eq!(e, DropReason::BadIcmp),
            }
        }
    }
}
