//! In-place rewrites: the redirect-NAT address/port rewrite, the translation of inbound
//! ICMP errors, and echo request → echo reply. Checksums are updated incrementally
//! (RFC 1624): only the changed 16-bit words are folded in, never the payload.

use std::net::{IpAddr, SocketAddr};

use super::checksum::{get16, put16, Delta};
use super::parse::quoted;
use super::{Checksum, Packet, Transport, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// Offsets of the source and destination address in the IP header, and their length.
fn addr_fields(v6: bool) -> (usize, usize, usize) {
    if v6 {
        (8, 24, 16)
    } else {
        (12, 16, 4)
    }
}

/// The bytes of an address, in a fixed array so that no allocation is needed.
fn octets(ip: IpAddr) -> ([u8; 16], usize) {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(a) => {
            b[..4].copy_from_slice(&a.octets());
            (b, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

/// True when `pkt`'s offsets fit `buf` (they do for a `pkt` parsed from `buf`); keeps all
/// offset arithmetic below far from overflow.
fn fits(buf: &[u8], pkt: &Packet) -> bool {
    pkt.len <= buf.len() && pkt.l4_offset <= pkt.len && pkt.l4_offset >= 20
}

/// Overwrite `buf[at..at + new.len()]` with `new`, recording the change in `d`. Returns
/// false (nothing written) when the range is outside `buf`.
fn set(buf: &mut [u8], at: usize, new: &[u8], d: &mut Delta) -> bool {
    match buf.get_mut(at..at + new.len()) {
        Some(field) => {
            d.replace(field, new);
            field.copy_from_slice(new);
            true
        }
        None => false,
    }
}

fn set_addr(buf: &mut [u8], at: usize, ip: IpAddr, d: &mut Delta) -> bool {
    let (b, n) = octets(ip);
    set(buf, at, &b[..n], d)
}

/// Update the 16-bit checksum at `at` with `d`, recording its own change in `outer` (for a
/// checksum that sits inside a region another checksum covers).
fn update_full(buf: &mut [u8], at: usize, d: Delta, udp: bool, outer: &mut Delta) {
    let Some(old) = get16(buf, at) else { return };
    let mut new = d.apply_full(old);
    if udp && new == 0 {
        new = 0xffff;
    }
    outer.replace(&old.to_be_bytes(), &new.to_be_bytes());
    put16(buf, at, new);
}

/// Rewrite a TCP or UDP packet's source and destination address+port in place, updating the
/// IPv4 header checksum and the L4 checksum incrementally (never a full recompute).
/// Addresses must be of the packet's family (the caller guarantees it; checked in debug
/// builds, a no-op otherwise). UDP over IPv4 with checksum 0 stays 0; a computed 0 becomes
/// 0xffff for UDP. With [`Checksum::Partial`] only the address change is folded into the
/// L4 field (see there).
pub fn rewrite(buf: &mut [u8], pkt: &Packet, src: SocketAddr, dst: SocketAddr, csum: Checksum) {
    let (csum_rel, udp) = match pkt.transport {
        Transport::Tcp { .. } => (16, false),
        Transport::Udp { .. } => (6, true),
        _ => {
            debug_assert!(false, "rewrite of a packet that is neither TCP nor UDP");
            return;
        }
    };
    let v6 = pkt.is_v6();
    debug_assert!(
        src.is_ipv6() == v6 && dst.is_ipv6() == v6,
        "rewrite across address families"
    );
    let l4 = pkt.l4_offset;
    let csum_at = l4 + csum_rel;
    if src.is_ipv6() != v6 || dst.is_ipv6() != v6 || !fits(buf, pkt) || csum_at + 2 > pkt.len {
        return;
    }
    let (src_at, dst_at, _) = addr_fields(v6);
    let mut addrs = Delta::default();
    set_addr(buf, src_at, src.ip(), &mut addrs);
    set_addr(buf, dst_at, dst.ip(), &mut addrs);
    let mut ports = Delta::default();
    let mut new_ports = [0u8; 4];
    new_ports[..2].copy_from_slice(&src.port().to_be_bytes());
    new_ports[2..].copy_from_slice(&dst.port().to_be_bytes());
    set(buf, l4, &new_ports, &mut ports);

    if !v6 {
        update_full(buf, 10, addrs, false, &mut Delta::default());
    }
    let Some(old) = get16(buf, csum_at) else {
        return;
    };
    let new = match csum {
        Checksum::Full if udp && !v6 && old == 0 => 0,
        Checksum::Full => {
            let mut d = addrs;
            d.add(ports);
            let c = d.apply_full(old);
            if udp && c == 0 {
                0xffff
            } else {
                c
            }
        }
        Checksum::Partial => addrs.apply_partial(old),
    };
    put16(buf, csum_at, new);
}

/// Translate an inbound ICMP error in place: the outer destination becomes `outer_dst`, and
/// the quoted packet's source/destination become `inner_src`/`inner_dst` (ports too; for a
/// quoted echo, `inner_src`'s port is the echo id). Fixes the quoted IPv4 header checksum,
/// the quoted L4 checksum when its field is inside the quote (incrementally), the outer IPv4
/// header checksum and the ICMP checksum (ICMPv6 includes the pseudo-header). Returns false,
/// leaving the buffer untouched, when the packet is not an ICMP error, the quote is too
/// short to rewrite ports, or an address is of the other family.
pub fn rewrite_icmp_error(
    buf: &mut [u8],
    pkt: &Packet,
    outer_dst: IpAddr,
    inner_src: SocketAddr,
    inner_dst: SocketAddr,
) -> bool {
    let Transport::IcmpError { .. } = pkt.transport else {
        return false;
    };
    let v6 = pkt.is_v6();
    if outer_dst.is_ipv6() != v6
        || inner_src.is_ipv6() != v6
        || inner_dst.is_ipv6() != v6
        || !fits(buf, pkt)
    {
        return false;
    }
    let l4 = pkt.l4_offset;
    let q = l4 + 8;
    let Some(quote) = buf.get(q..pkt.len) else {
        return false;
    };
    // `quoted` checks the quoted IP header and that the ports (echo id) are present, so all
    // writes below are in bounds.
    let Ok((inner, inner_l4)) = quoted(quote, v6) else {
        return false;
    };
    let il4 = q + inner_l4;
    let quote_end = pkt.len;
    let (src_at, dst_at, _) = addr_fields(v6);

    // Changes inside the ICMP message (its checksum covers them) and in the outer header.
    let mut icmp = Delta::default();
    let mut outer = Delta::default();
    set_addr(buf, dst_at, outer_dst, &mut outer);
    if v6 {
        // The ICMPv6 checksum covers the pseudo-header with the outer addresses.
        icmp.add(outer);
    } else {
        update_full(buf, 10, outer, false, &mut Delta::default());
    }

    let mut inner_addrs = Delta::default();
    set_addr(buf, q + src_at, inner_src.ip(), &mut inner_addrs);
    set_addr(buf, q + dst_at, inner_dst.ip(), &mut inner_addrs);
    icmp.add(inner_addrs);
    if !v6 {
        update_full(buf, q + 10, inner_addrs, false, &mut icmp);
    }

    let mut inner_ports = Delta::default();
    let csum_rel = match inner.protocol {
        PROTO_TCP | PROTO_UDP => {
            let mut p = [0u8; 4];
            p[..2].copy_from_slice(&inner_src.port().to_be_bytes());
            p[2..].copy_from_slice(&inner_dst.port().to_be_bytes());
            set(buf, il4, &p, &mut inner_ports);
            if inner.protocol == PROTO_TCP {
                16
            } else {
                6
            }
        }
        // A quoted echo: the id is its "port".
        _ => {
            set(
                buf,
                il4 + 4,
                &inner_src.port().to_be_bytes(),
                &mut inner_ports,
            );
            2
        }
    };
    icmp.add(inner_ports);

    // The quoted L4 checksum, when its field was quoted.
    let csum_at = il4 + csum_rel;
    if csum_at + 2 <= quote_end {
        let mut d = inner_ports;
        // ICMPv4 has no pseudo-header; TCP, UDP and ICMPv6 do.
        if inner.protocol != PROTO_ICMP {
            d.add(inner_addrs);
        }
        let udp = inner.protocol == PROTO_UDP;
        let keep_zero = udp && !v6 && get16(buf, csum_at) == Some(0);
        if !keep_zero {
            update_full(buf, csum_at, d, udp, &mut icmp);
        }
    }
    debug_assert!(matches!(
        inner.protocol,
        PROTO_TCP | PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6
    ));

    update_full(buf, l4 + 2, icmp, false, &mut Delta::default());
    true
}

/// Turn an echo request into the echo reply in place: swap the addresses, set the type
/// (0 / 129), reset TTL / hop limit to 64, and update the checksums incrementally (the
/// ICMPv6 pseudo-header sum does not change with a swap). Returns the reply length (the
/// packet's `len`), or 0 when `pkt` is not an echo request of `buf`.
pub fn echo_reply_in_place(buf: &mut [u8], pkt: &Packet) -> usize {
    let Transport::EchoRequest { .. } = pkt.transport else {
        return 0;
    };
    let v6 = pkt.is_v6();
    let l4 = pkt.l4_offset;
    if !fits(buf, pkt) || pkt.len < l4 + 8 {
        return 0;
    }
    let (src_at, dst_at, n) = addr_fields(v6);
    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    a[..n].copy_from_slice(&buf[src_at..src_at + n]);
    b[..n].copy_from_slice(&buf[dst_at..dst_at + n]);
    buf[src_at..src_at + n].copy_from_slice(&b[..n]);
    buf[dst_at..dst_at + n].copy_from_slice(&a[..n]);

    if v6 {
        buf[7] = 64;
    } else {
        let mut ip = Delta::default();
        let proto = buf[9];
        set(buf, 8, &[64, proto], &mut ip);
        update_full(buf, 10, ip, false, &mut Delta::default());
    }
    let reply = if v6 { 129 } else { 0 };
    let code = buf[l4 + 1];
    let mut icmp = Delta::default();
    set(buf, l4, &[reply, code], &mut icmp);
    update_full(buf, l4 + 2, icmp, false, &mut Delta::default());
    debug_assert!(!v6 || pkt.protocol() == PROTO_ICMPV6);
    pkt.len
}
