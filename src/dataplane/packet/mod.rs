//! IP packet bytes in, decisions and rewritten bytes out.
//!
//! This module owns everything that reads or writes the bytes of an IPv4/IPv6 packet:
//! parsing ([`parse`]), the redirect-NAT rewrite with incremental checksums ([`rewrite`],
//! [`rewrite_icmp_error`]), the packets the gateway answers with itself
//! ([`echo_reply_in_place`], [`build_tcp_rst`], [`build_unreachable`],
//! [`build_udp_headers`]), the `virtio_net_hdr` that precedes packets on a TUN opened with
//! `IFF_VNET_HDR` ([`VirtioNetHdr`]), and fragment reassembly ([`Reassembler`]).
//!
//! It must not touch anything else: no I/O, no tokio, no clock (callers pass `now`), no
//! service table, and no allocation per packet (only the reassembler allocates, per partial
//! datagram). Every function is panic-free for any input bytes; `fuzz/` proves it for the
//! parser and everything downstream of it.
//!
//! What parsing does NOT do: verify checksums. Packets come from the local kernel through the
//! TUN device (already verified or still to be completed by offload); a wrong checksum stays
//! wrong through an incremental update and the receiving stack drops the packet.

mod build;
mod checksum;
mod frag;
mod fragment;
mod parse;
mod rewrite;
mod vnet;

#[cfg(test)]
mod tests;

#[doc(hidden)]
pub mod fuzz;

use std::net::{IpAddr, SocketAddr};

pub use build::{
    build_tcp_rst, build_udp_headers, build_udp_headers_with_id, build_unreachable,
    udp_payload_offset,
};
pub use frag::Reassembler;
pub use fragment::{V6Fragments, IPV6_MIN_MTU};
pub use parse::parse;
pub use rewrite::{echo_reply_in_place, rewrite, rewrite_icmp_error};
pub use vnet::VirtioNetHdr;

/// Largest packet handled: 64 KiB IP packets (TUN offloads deliver GSO super-packets).
pub const MAX_PACKET: usize = 65536;

/// IP protocol numbers used here.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Why a packet was dropped. Every variant has a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DropReason {
    /// The buffer is shorter than a header or than the length the header declares.
    #[error("packet truncated")]
    Truncated,
    /// The IP version nibble is neither 4 nor 6.
    #[error("bad IP version")]
    BadVersion,
    /// IPv4 IHL below 5 or beyond the total length.
    #[error("bad IPv4 header length")]
    BadHeaderLength,
    /// IPv4 total length below the header length.
    #[error("bad IP total length")]
    BadTotalLength,
    /// IPv6 extension header malformed, misplaced, beyond the payload, or too many of them.
    #[error("bad IPv6 extension header")]
    BadExtensionHeader,
    /// Not TCP, UDP or ICMP (or an IPv6 header that cannot be walked: AH, ESP, no-next-header).
    #[error("unsupported protocol")]
    UnsupportedProtocol,
    /// TCP segment shorter than its header, or data offset < 5 or beyond the segment.
    #[error("bad TCP header")]
    BadTcpHeader,
    /// UDP length field below 8 or beyond the IP payload.
    #[error("bad UDP header")]
    BadUdpHeader,
    /// ICMP message too short, or an ICMP error whose quote cannot be parsed.
    #[error("bad ICMP message")]
    BadIcmp,
    /// A fragment that cannot be part of a valid datagram (empty, length not a multiple of
    /// 8 before the end, data beyond the end set by the last fragment, two different ends).
    #[error("bad fragment")]
    BadFragment,
    /// Fragments overlap (RFC 5722); the whole datagram is dropped.
    #[error("overlapping fragments")]
    FragmentOverlap,
    /// The reassembled datagram would exceed 65535 bytes (or the output buffer).
    #[error("reassembled datagram too large")]
    FragmentTooLarge,
    /// A partial datagram was not completed within the reassembly timeout.
    #[error("fragment reassembly timed out")]
    FragmentTimeout,
    /// The reassembler is at its datagram or memory bound.
    #[error("fragment table full")]
    FragmentTableFull,
    /// virtio_net_hdr shorter than 10 bytes or with an unknown GSO type.
    #[error("bad virtio-net header")]
    BadVnetHeader,
}

impl DropReason {
    pub const ALL: &'static [DropReason] = &[
        DropReason::Truncated,
        DropReason::BadVersion,
        DropReason::BadHeaderLength,
        DropReason::BadTotalLength,
        DropReason::BadExtensionHeader,
        DropReason::UnsupportedProtocol,
        DropReason::BadTcpHeader,
        DropReason::BadUdpHeader,
        DropReason::BadIcmp,
        DropReason::BadFragment,
        DropReason::FragmentOverlap,
        DropReason::FragmentTooLarge,
        DropReason::FragmentTimeout,
        DropReason::FragmentTableFull,
        DropReason::BadVnetHeader,
    ];

    /// snake_case label for the `reason` label of drop counters.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadVersion => "bad_version",
            DropReason::BadHeaderLength => "bad_header_length",
            DropReason::BadTotalLength => "bad_total_length",
            DropReason::BadExtensionHeader => "bad_extension_header",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::BadTcpHeader => "bad_tcp_header",
            DropReason::BadUdpHeader => "bad_udp_header",
            DropReason::BadIcmp => "bad_icmp",
            DropReason::BadFragment => "bad_fragment",
            DropReason::FragmentOverlap => "fragment_overlap",
            DropReason::FragmentTooLarge => "fragment_too_large",
            DropReason::FragmentTimeout => "fragment_timeout",
            DropReason::FragmentTableFull => "fragment_table_full",
            DropReason::BadVnetHeader => "bad_vnet_header",
        }
    }
}

/// True when `buf` is an IPv4 packet carrying ICMP or an IPv6 packet whose first next
/// header is ICMPv6 (a cheap look ahead of parsing, for offload handling).
pub fn is_icmp(buf: &[u8]) -> bool {
    match buf.first().map(|b| b >> 4) {
        Some(4) => buf.get(9) == Some(&PROTO_ICMP),
        Some(6) => buf.get(6) == Some(&PROTO_ICMPV6),
        _ => false,
    }
}

/// TCP header flags (byte 13 of the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const PSH: TcpFlags = TcpFlags(0x08);
    pub const ACK: TcpFlags = TcpFlags(0x10);
    pub const URG: TcpFlags = TcpFlags(0x20);
    pub const ECE: TcpFlags = TcpFlags(0x40);
    pub const CWR: TcpFlags = TcpFlags(0x80);

    /// True when every bit of `f` is set.
    pub fn has(self, f: TcpFlags) -> bool {
        self.0 & f.0 == f.0
    }
}

/// What the packet carries above IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        flags: TcpFlags,
        /// Segment data after the TCP header (options excluded).
        payload_len: usize,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
        /// Offset of the UDP payload in the buffer.
        payload_offset: usize,
        /// From the UDP length field.
        payload_len: usize,
    },
    EchoRequest {
        id: u16,
        seq: u16,
    },
    /// ICMP/ICMPv6 error (dest unreachable, packet too big, time exceeded, parameter problem)
    /// quoting a packet; `inner` is the quoted packet's addresses/ports/protocol.
    IcmpError {
        icmp_type: u8,
        code: u8,
        inner: Inner,
    },
    /// Any other ICMP message (echo reply, router solicitation, ...): the caller drops it.
    OtherIcmp {
        icmp_type: u8,
    },
    /// A fragment (IPv4 MF/offset, or IPv6 Fragment header); feed it to [`Reassembler`].
    /// `offset` is in bytes; `protocol` is the IPv4 protocol or the Fragment header's next
    /// header. For IPv6, the Fragment header is at `l4_offset - 8`, and `l4_offset` is where
    /// the fragment's data starts (for IPv4 too).
    Fragment {
        id: u32,
        offset: usize,
        more: bool,
        protocol: u8,
    },
}

/// The packet quoted by an ICMP error: it is one the gateway sent, so `src` is the
/// gateway-side address and `dst` the peer that could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inner {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// 6, 17, or ICMP echo as 1/58 with the echo id in both ports.
    pub protocol: u8,
}

/// A parsed packet. Offsets index the buffer that was parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Where the transport header starts (after IPv4 options / IPv6 extension headers).
    pub l4_offset: usize,
    /// Total IP packet length from the header; `<= buf.len()`, trailing bytes are ignored.
    pub len: usize,
    pub transport: Transport,
}

impl Packet {
    pub fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }

    /// The IP protocol of the transport (for a fragment, of the fragmented datagram).
    pub fn protocol(&self) -> u8 {
        match self.transport {
            Transport::Tcp { .. } => PROTO_TCP,
            Transport::Udp { .. } => PROTO_UDP,
            Transport::EchoRequest { .. }
            | Transport::IcmpError { .. }
            | Transport::OtherIcmp { .. } => {
                if self.is_v6() {
                    PROTO_ICMPV6
                } else {
                    PROTO_ICMP
                }
            }
            Transport::Fragment { protocol, .. } => protocol,
        }
    }
}

/// How the L4 checksum field is to be kept consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// The field holds a complete checksum: update it incrementally (RFC 1624).
    Full,
    /// virtio-net NEEDS_CSUM / CHECKSUM_PARTIAL: the field holds only the pseudo-header sum
    /// (not complemented); the device sums from csum_start later. Only address changes
    /// (pseudo-header) are folded in; port changes are NOT (they are in the summed region).
    Partial,
}

/// Which destination-unreachable [`build_unreachable`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// ICMP type 3 code 3 / ICMPv6 type 1 code 4: nothing listens on that port.
    Port,
    /// ICMP type 3 code 13 / ICMPv6 type 1 code 1: refused by policy.
    AdminProhibited,
}
