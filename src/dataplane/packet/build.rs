//! Packets the gateway originates: TCP RST, ICMP/ICMPv6 destination unreachable, and the
//! IP/UDP headers of UDP replies. These are new packets, so their checksums are computed in
//! full.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};

use super::checksum::{finish, pseudo_header, sum};
use super::{
    Packet, TcpFlags, Transport, Unreachable, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

/// TTL / hop limit of every packet the gateway originates.
const TTL: u8 = 64;

/// RFC 1812 §4.3.2.3: an ICMPv4 error is at most 576 bytes.
const ICMPV4_ERROR_MAX: usize = 576;
/// RFC 4443 §2.4(c): an ICMPv6 error must not exceed the minimum IPv6 MTU.
const ICMPV6_ERROR_MAX: usize = 1280;

fn ip_header_len(v6: bool) -> usize {
    if v6 {
        40
    } else {
        20
    }
}

/// Write an IPv4 (no options) or IPv6 header for `payload_len` bytes of `proto` from `src`
/// to `dst`. Returns the header length, or None if the families differ, `out` is too short
/// or the packet would be too long.
fn write_ip_header(
    out: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    payload_len: usize,
    id: u16,
    df: bool,
) -> Option<usize> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(20 + payload_len).ok()?;
            let h = out.get_mut(..20)?;
            h[0] = 0x45;
            h[1] = 0;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[4..6].copy_from_slice(&id.to_be_bytes());
            h[6..8].copy_from_slice(&(if df { 0x4000u16 } else { 0 }).to_be_bytes());
            h[8] = TTL;
            h[9] = proto;
            h[10..12].copy_from_slice(&[0, 0]);
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = finish(sum(h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            Some(20)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let plen = u16::try_from(payload_len).ok()?;
            let h = out.get_mut(..40)?;
            h[..4].copy_from_slice(&[0x60, 0, 0, 0]);
            h[4..6].copy_from_slice(&plen.to_be_bytes());
            h[6] = proto;
            h[7] = TTL;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            Some(40)
        }
        _ => None,
    }
}

/// Build into `out` the TCP RST answering the segment `pkt` (addresses and ports swapped).
/// If the segment has ACK: seq = its ack, no ACK flag; otherwise seq 0, ACK flag,
/// ack = seq + payload_len + SYN + FIN (RFC 9293 §3.10.7.1). Full checksums. Returns its
/// length (40 / 60), or 0 when `pkt` is not TCP, is itself a RST (never answered), or `out`
/// is too short.
pub fn build_tcp_rst(out: &mut [u8], pkt: &Packet) -> usize {
    let Transport::Tcp {
        src_port,
        dst_port,
        seq,
        ack,
        flags,
        payload_len,
    } = pkt.transport
    else {
        return 0;
    };
    if flags.has(TcpFlags::RST) {
        return 0;
    }
    let (rseq, rack, rflags) = if flags.has(TcpFlags::ACK) {
        (ack, 0, TcpFlags::RST.0)
    } else {
        let syn = u32::from(flags.has(TcpFlags::SYN));
        let fin = u32::from(flags.has(TcpFlags::FIN));
        // payload_len <= 65535 for a parsed packet; truncation is the TCP modulo anyway.
        let ack = seq
            .wrapping_add(payload_len as u32)
            .wrapping_add(syn)
            .wrapping_add(fin);
        (0, ack, TcpFlags::RST.0 | TcpFlags::ACK.0)
    };
    let (src, dst) = (pkt.dst, pkt.src);
    let Some(hl) = write_ip_header(out, src, dst, PROTO_TCP, 20, 0, true) else {
        return 0;
    };
    let Some(tcp) = out.get_mut(hl..hl + 20) else {
        return 0;
    };
    tcp[0..2].copy_from_slice(&dst_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&src_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&rseq.to_be_bytes());
    tcp[8..12].copy_from_slice(&rack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = rflags;
    tcp[14..20].copy_from_slice(&[0; 6]); // window, checksum, urgent pointer
    let c = finish(pseudo_header(src, dst, PROTO_TCP, 20) + sum(tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    hl + 20
}

/// Addresses an ICMP error must never be sent to (RFC 1122 §3.2.2, RFC 4443 §2.4(e)).
fn no_error_to(src: IpAddr, dst: IpAddr) -> bool {
    let bad_src = match src {
        IpAddr::V4(a) => a.is_unspecified() || a.is_broadcast() || a.is_multicast(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
    };
    bad_src || dst.is_multicast() || matches!(dst, IpAddr::V4(a) if a.is_broadcast())
}

/// Build into `out` an ICMP (type 3 code 3 / code 13) or ICMPv6 (type 1 code 4 / code 1)
/// destination unreachable from `from` to the offending packet's source, quoting
/// `offending` (its IP length, ignoring trailing bytes) up to 576 bytes in all for IPv4 and
/// 1280 for IPv6. Returns its length; 0 when no error may be sent: the offending packet is
/// an ICMP error (or redirect / other ICMPv6 error type), a non-first fragment, from an
/// unspecified/multicast/broadcast source or to a multicast/broadcast destination, or `from`
/// is of the other family.
pub fn build_unreachable(
    out: &mut [u8],
    offending: &[u8],
    pkt: &Packet,
    from: IpAddr,
    kind: Unreachable,
) -> usize {
    let v6 = pkt.is_v6();
    let never = match pkt.transport {
        Transport::IcmpError { .. } => true,
        Transport::OtherIcmp { icmp_type } => {
            if v6 {
                icmp_type < 128
            } else {
                matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
            }
        }
        Transport::Fragment { offset, .. } => offset != 0,
        _ => false,
    };
    if never || from.is_ipv6() != v6 || no_error_to(pkt.src, pkt.dst) {
        return 0;
    }
    let (max, icmp_type, code, proto) = match (v6, kind) {
        (false, Unreachable::Port) => (ICMPV4_ERROR_MAX, 3, 3, PROTO_ICMP),
        (false, Unreachable::AdminProhibited) => (ICMPV4_ERROR_MAX, 3, 13, PROTO_ICMP),
        (true, Unreachable::Port) => (ICMPV6_ERROR_MAX, 1, 4, PROTO_ICMPV6),
        (true, Unreachable::AdminProhibited) => (ICMPV6_ERROR_MAX, 1, 1, PROTO_ICMPV6),
    };
    let hl = ip_header_len(v6);
    let room = max.min(out.len()).saturating_sub(hl + 8);
    let quote_len = pkt.len.min(offending.len()).min(room);
    let Some(quote) = offending.get(..quote_len) else {
        return 0;
    };
    let icmp_len = 8 + quote_len;
    let Some(hl) = write_ip_header(out, from, pkt.src, proto, icmp_len, 0, false) else {
        return 0;
    };
    let Some(icmp) = out.get_mut(hl..hl + icmp_len) else {
        return 0;
    };
    icmp[..8].copy_from_slice(&[icmp_type, code, 0, 0, 0, 0, 0, 0]);
    icmp[8..].copy_from_slice(quote);
    let mut acc = sum(icmp);
    if v6 {
        acc += pseudo_header(from, pkt.src, PROTO_ICMPV6, icmp_len);
    }
    icmp[2..4].copy_from_slice(&finish(acc).to_be_bytes());
    hl + icmp_len
}

/// Offset at which a UDP reply's payload must be placed for [`build_udp_headers`]
/// (IPv4: 28, IPv6: 48).
pub fn udp_payload_offset(v6: bool) -> usize {
    ip_header_len(v6) + 8
}

thread_local! {
    /// IPv4 identification for UDP replies. Per thread (each worker owns its flows, so ids
    /// of one flow come from one counter), seeded randomly so that restarts and threads do
    /// not start in step.
    static NEXT_IP_ID: Cell<u16> = Cell::new(
        std::collections::hash_map::RandomState::new().build_hasher().finish() as u16,
    );
}

/// [`build_udp_headers_with_id`] with the IPv4 identification from a per-thread counter.
pub fn build_udp_headers(
    buf: &mut [u8],
    src: SocketAddr,
    dst: SocketAddr,
    payload_len: usize,
) -> Option<usize> {
    let id = NEXT_IP_ID.with(|c| {
        let id = c.get();
        c.set(id.wrapping_add(1));
        id
    });
    build_udp_headers_with_id(buf, src, dst, payload_len, id)
}

/// Write IPv4 (DF clear so that the kernel may fragment it on the way out, TTL 64,
/// identification `ip_id`) or IPv6 (hop limit 64) + UDP headers in front of a payload
/// already in `buf[udp_payload_offset(..)..][..payload_len]`, with a full UDP checksum.
/// Returns the packet length; None if the packet would exceed 65535 bytes or `buf`, or
/// the addresses are of different families.
pub fn build_udp_headers_with_id(
    buf: &mut [u8],
    src: SocketAddr,
    dst: SocketAddr,
    payload_len: usize,
    ip_id: u16,
) -> Option<usize> {
    let v6 = src.is_ipv6();
    if dst.is_ipv6() != v6 {
        return None;
    }
    let off = udp_payload_offset(v6);
    let total = off.checked_add(payload_len)?;
    if total > 65535 || total > buf.len() {
        return None;
    }
    let udp_len = 8 + payload_len;
    let hl = write_ip_header(buf, src.ip(), dst.ip(), PROTO_UDP, udp_len, ip_id, false)?;
    let udp = buf.get_mut(hl..total)?;
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&u16::try_from(udp_len).ok()?.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    let c = match finish(pseudo_header(src.ip(), dst.ip(), PROTO_UDP, udp_len) + sum(udp)) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    Some(total)
}
