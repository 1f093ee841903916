//! Parsing: IPv4/IPv6 header, IPv6 extension-header walk, TCP/UDP/ICMP headers and the
//! packet quoted inside ICMP errors. Every read is bounds-checked; nothing here can panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::checksum::get16;
use super::{
    DropReason, Inner, Packet, TcpFlags, Transport, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

/// IPv6 extension headers walked before giving up (RFC 8200 allows any number; real
/// traffic carries at most a few, and a bound keeps the walk O(1)).
const MAX_EXT_HEADERS: usize = 8;

const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_DEST_OPTS: u8 = 60;

/// Parse an IPv4 or IPv6 packet (no link header). IPv6 extension headers (hop-by-hop,
/// routing, destination options, fragment) are walked, bounded; anything malformed is an
/// `Err` naming what was wrong. Checksums are not verified.
pub fn parse(buf: &[u8]) -> Result<Packet, DropReason> {
    let first = *buf.first().ok_or(DropReason::Truncated)?;
    match first >> 4 {
        4 => parse_v4(buf),
        6 => parse_v6(buf),
        _ => Err(DropReason::BadVersion),
    }
}

pub(crate) fn v4_addr(buf: &[u8], off: usize) -> Option<Ipv4Addr> {
    let b: [u8; 4] = buf.get(off..off + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

pub(crate) fn v6_addr(buf: &[u8], off: usize) -> Option<Ipv6Addr> {
    let b: [u8; 16] = buf.get(off..off + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(b))
}

/// The fixed IPv4 header fields, validated against each other and the buffer.
struct V4Header {
    ihl: usize,
    total: usize,
    frag: u16,
    protocol: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
}

fn v4_header(buf: &[u8]) -> Result<V4Header, DropReason> {
    if buf.len() < 20 {
        return Err(DropReason::Truncated);
    }
    let ihl = usize::from(buf[0] & 0x0f) * 4;
    let total = usize::from(get16(buf, 2).ok_or(DropReason::Truncated)?);
    if ihl < 20 {
        return Err(DropReason::BadHeaderLength);
    }
    if total < 20 {
        return Err(DropReason::BadTotalLength);
    }
    if ihl > total {
        return Err(DropReason::BadHeaderLength);
    }
    if total > buf.len() {
        return Err(DropReason::Truncated);
    }
    Ok(V4Header {
        ihl,
        total,
        frag: get16(buf, 6).ok_or(DropReason::Truncated)?,
        protocol: buf[9],
        src: v4_addr(buf, 12).ok_or(DropReason::Truncated)?,
        dst: v4_addr(buf, 16).ok_or(DropReason::Truncated)?,
    })
}

fn parse_v4(buf: &[u8]) -> Result<Packet, DropReason> {
    let h = v4_header(buf)?;
    let more = h.frag & 0x2000 != 0;
    let offset = usize::from(h.frag & 0x1fff) * 8;
    let transport = if more || offset != 0 {
        Transport::Fragment {
            id: u32::from(get16(buf, 4).ok_or(DropReason::Truncated)?),
            offset,
            more,
            protocol: h.protocol,
        }
    } else {
        let pkt = buf.get(..h.total).ok_or(DropReason::Truncated)?;
        transport(pkt, h.ihl, h.protocol, false)?
    };
    Ok(Packet {
        src: IpAddr::V4(h.src),
        dst: IpAddr::V4(h.dst),
        l4_offset: h.ihl,
        len: h.total,
        transport,
    })
}

/// Where an IPv6 extension-header walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum V6End {
    /// An upper-layer header `proto` at `l4`.
    Upper { proto: u8, l4: usize },
    /// A (non-atomic) Fragment header at `frag_at`; `nh_at` is the offset of the byte that
    /// holds the Fragment header's type (6 for the fixed header).
    Fragment {
        frag_at: usize,
        nh_at: usize,
        id: u32,
        offset: usize,
        more: bool,
        proto: u8,
    },
}

/// Walk the extension-header chain of the IPv6 packet `pkt` (already cut to its length).
/// Atomic fragments (offset 0, no MF; RFC 6946) are walked through, and so are first
/// fragments when `through_first_fragment` (used for quoted packets, whose ports follow).
pub(crate) fn walk_v6(pkt: &[u8], through_first_fragment: bool) -> Result<V6End, DropReason> {
    let bad = DropReason::BadExtensionHeader;
    let mut next = *pkt.get(6).ok_or(DropReason::Truncated)?;
    let mut nh_at = 6;
    let mut off = 40;
    for _ in 0..=MAX_EXT_HEADERS {
        match next {
            EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS => {
                // Hop-by-hop must come first (RFC 8200 §4.1).
                if next == EXT_HOP_BY_HOP && off != 40 {
                    return Err(bad);
                }
                let hdr = pkt.get(off..off + 2).ok_or(bad)?;
                let len = (usize::from(hdr[1]) + 1) * 8;
                if off + len > pkt.len() {
                    return Err(bad);
                }
                nh_at = off;
                next = hdr[0];
                off += len;
            }
            EXT_FRAGMENT => {
                let hdr = pkt.get(off..off + 8).ok_or(bad)?;
                let field = u16::from_be_bytes([hdr[2], hdr[3]]);
                let offset = usize::from(field & 0xfff8);
                let more = field & 1 != 0;
                if offset == 0 && (!more || through_first_fragment) {
                    nh_at = off;
                    next = hdr[0];
                    off += 8;
                } else {
                    return Ok(V6End::Fragment {
                        frag_at: off,
                        nh_at,
                        id: u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
                        offset,
                        more,
                        proto: hdr[0],
                    });
                }
            }
            proto => return Ok(V6End::Upper { proto, l4: off }),
        }
    }
    Err(bad)
}

fn parse_v6(buf: &[u8]) -> Result<Packet, DropReason> {
    if buf.len() < 40 {
        return Err(DropReason::Truncated);
    }
    let payload = usize::from(get16(buf, 4).ok_or(DropReason::Truncated)?);
    let len = 40 + payload;
    let pkt = buf.get(..len).ok_or(DropReason::Truncated)?;
    let src = v6_addr(pkt, 8).ok_or(DropReason::Truncated)?;
    let dst = v6_addr(pkt, 24).ok_or(DropReason::Truncated)?;
    let (l4_offset, transport) = match walk_v6(pkt, false)? {
        V6End::Upper { proto, l4 } => (l4, transport(pkt, l4, proto, true)?),
        V6End::Fragment {
            frag_at,
            id,
            offset,
            more,
            proto,
            ..
        } => (
            frag_at + 8,
            Transport::Fragment {
                id,
                offset,
                more,
                protocol: proto,
            },
        ),
    };
    Ok(Packet {
        src: IpAddr::V6(src),
        dst: IpAddr::V6(dst),
        l4_offset,
        len,
        transport,
    })
}

/// Parse the transport header at `l4` of `pkt` (cut to the IP length).
fn transport(pkt: &[u8], l4: usize, protocol: u8, v6: bool) -> Result<Transport, DropReason> {
    let seg = pkt.get(l4..).ok_or(DropReason::Truncated)?;
    match protocol {
        PROTO_TCP => {
            if seg.len() < 20 {
                return Err(DropReason::BadTcpHeader);
            }
            let data_off = usize::from(seg[12] >> 4) * 4;
            if data_off < 20 || data_off > seg.len() {
                return Err(DropReason::BadTcpHeader);
            }
            Ok(Transport::Tcp {
                src_port: u16::from_be_bytes([seg[0], seg[1]]),
                dst_port: u16::from_be_bytes([seg[2], seg[3]]),
                seq: u32::from_be_bytes([seg[4], seg[5], seg[6], seg[7]]),
                ack: u32::from_be_bytes([seg[8], seg[9], seg[10], seg[11]]),
                flags: TcpFlags(seg[13]),
                payload_len: seg.len() - data_off,
            })
        }
        PROTO_UDP => {
            if seg.len() < 8 {
                return Err(DropReason::BadUdpHeader);
            }
            let ulen = usize::from(u16::from_be_bytes([seg[4], seg[5]]));
            if ulen < 8 || ulen > seg.len() {
                return Err(DropReason::BadUdpHeader);
            }
            Ok(Transport::Udp {
                src_port: u16::from_be_bytes([seg[0], seg[1]]),
                dst_port: u16::from_be_bytes([seg[2], seg[3]]),
                payload_offset: l4 + 8,
                payload_len: ulen - 8,
            })
        }
        PROTO_ICMP if !v6 => icmp(seg, false),
        PROTO_ICMPV6 if v6 => icmp(seg, true),
        _ => Err(DropReason::UnsupportedProtocol),
    }
}

fn icmp(seg: &[u8], v6: bool) -> Result<Transport, DropReason> {
    if seg.len() < 8 {
        return Err(DropReason::BadIcmp);
    }
    let (icmp_type, code) = (seg[0], seg[1]);
    let echo_request = if v6 { 128 } else { 8 };
    if icmp_type == echo_request {
        return Ok(Transport::EchoRequest {
            id: u16::from_be_bytes([seg[4], seg[5]]),
            seq: u16::from_be_bytes([seg[6], seg[7]]),
        });
    }
    if is_translated_error(icmp_type, v6) {
        let quote = seg.get(8..).ok_or(DropReason::BadIcmp)?;
        let inner = quoted(quote, v6).map(|(inner, _)| inner)?;
        return Ok(Transport::IcmpError {
            icmp_type,
            code,
            inner,
        });
    }
    Ok(Transport::OtherIcmp { icmp_type })
}

/// Error types whose quote is parsed (and translated by the NAT): destination unreachable,
/// time exceeded, parameter problem, and for ICMPv6 packet too big.
pub(crate) fn is_translated_error(icmp_type: u8, v6: bool) -> bool {
    if v6 {
        matches!(icmp_type, 1..=4)
    } else {
        matches!(icmp_type, 3 | 11 | 12)
    }
}

/// Parse the packet quoted by an ICMP error; also returns the offset of its transport
/// header inside `quote`. The quote is usually cut short, so lengths in the quoted header
/// are not checked against it; only what is read must be present.
pub(crate) fn quoted(quote: &[u8], v6: bool) -> Result<(Inner, usize), DropReason> {
    let bad = DropReason::BadIcmp;
    let version = quote.first().ok_or(bad)? >> 4;
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, usize) = if !v6 {
        if version != 4 || quote.len() < 20 {
            return Err(bad);
        }
        let ihl = usize::from(quote[0] & 0x0f) * 4;
        let frag = get16(quote, 6).ok_or(bad)?;
        if ihl < 20 || frag & 0x1fff != 0 {
            return Err(bad);
        }
        let src = v4_addr(quote, 12).ok_or(bad)?;
        let dst = v4_addr(quote, 16).ok_or(bad)?;
        (src.into(), dst.into(), quote[9], ihl)
    } else {
        if version != 6 || quote.len() < 40 {
            return Err(bad);
        }
        let src = v6_addr(quote, 8).ok_or(bad)?;
        let dst = v6_addr(quote, 24).ok_or(bad)?;
        match walk_v6(quote, true).map_err(|_| bad)? {
            V6End::Upper { proto, l4 } => (src.into(), dst.into(), proto, l4),
            V6End::Fragment { .. } => return Err(bad),
        }
    };
    let l4h = quote.get(l4..).ok_or(bad)?;
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP if l4h.len() >= 4 => (
            u16::from_be_bytes([l4h[0], l4h[1]]),
            u16::from_be_bytes([l4h[2], l4h[3]]),
        ),
        PROTO_ICMP if !v6 && l4h.len() >= 8 && matches!(l4h[0], 0 | 8) => {
            let id = u16::from_be_bytes([l4h[4], l4h[5]]);
            (id, id)
        }
        PROTO_ICMPV6 if v6 && l4h.len() >= 8 && matches!(l4h[0], 128 | 129) => {
            let id = u16::from_be_bytes([l4h[4], l4h[5]]);
            (id, id)
        }
        _ => return Err(bad),
    };
    Ok((
        Inner {
            src: SocketAddr::new(src, sport),
            dst: SocketAddr::new(dst, dport),
            protocol: proto,
        },
        l4,
    ))
}
