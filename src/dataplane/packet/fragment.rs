//! Fragmenting IPv6 packets the gateway builds itself (UDP replies). A router may not
//! fragment IPv6, so a reply larger than the path MTU would be lost to a Packet Too Big sent
//! to the ClusterIP; the gateway instead sends replies above the IPv6 minimum MTU (1,280)
//! as fragments of at most that size, which every IPv6 link carries. No allocation: each
//! fragment is written into the caller's buffer in turn.

use super::PROTO_UDP;

/// The IPv6 minimum link MTU (RFC 8200 §5): every path carries packets of this size.
pub const IPV6_MIN_MTU: usize = 1280;

const IPV6_HEADER: usize = 40;
const FRAG_HEADER: usize = 8;
const NEXT_FRAGMENT: u8 = 44;

/// Cuts one IPv6 packet without extension headers (as `build_udp_headers` writes it) into
/// fragments of at most `mtu` bytes. Call [`next_into`](Self::next_into) until it returns None.
#[derive(Debug)]
pub struct V6Fragments<'a> {
    packet: &'a [u8],
    id: u32,
    chunk: usize,
    offset: usize,
}

impl<'a> V6Fragments<'a> {
    /// None when the packet is not a plain IPv6 packet (version 6, next header not an
    /// extension header the gateway would have written), or `mtu` leaves no room for data.
    pub fn new(packet: &'a [u8], mtu: usize, id: u32) -> Option<Self> {
        if packet.len() <= IPV6_HEADER || packet[0] >> 4 != 6 || packet[6] != PROTO_UDP {
            return None;
        }
        // Each fragment's data, except the last, is a multiple of 8 bytes.
        let chunk = mtu.checked_sub(IPV6_HEADER + FRAG_HEADER)? & !7;
        if chunk == 0 {
            return None;
        }
        Some(V6Fragments {
            packet,
            id,
            chunk,
            offset: 0,
        })
    }

    /// Write the next fragment into `out` (at least `mtu` bytes); returns its length.
    pub fn next_into(&mut self, out: &mut [u8]) -> Option<usize> {
        let payload = &self.packet[IPV6_HEADER..];
        if self.offset >= payload.len() {
            return None;
        }
        let take = self.chunk.min(payload.len() - self.offset);
        let more = self.offset + take < payload.len();
        let len = IPV6_HEADER + FRAG_HEADER + take;
        let out = out.get_mut(..len)?;
        out[..IPV6_HEADER].copy_from_slice(&self.packet[..IPV6_HEADER]);
        out[4..6].copy_from_slice(&((FRAG_HEADER + take) as u16).to_be_bytes());
        out[6] = NEXT_FRAGMENT;
        let frag = &mut out[IPV6_HEADER..IPV6_HEADER + FRAG_HEADER];
        frag[0] = self.packet[6];
        frag[1] = 0;
        let off_field = ((self.offset / 8) as u16) << 3 | u16::from(more);
        frag[2..4].copy_from_slice(&off_field.to_be_bytes());
        frag[4..8].copy_from_slice(&self.id.to_be_bytes());
        out[IPV6_HEADER + FRAG_HEADER..].copy_from_slice(&payload[self.offset..self.offset + take]);
        self.offset += take;
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        build_udp_headers, parse, udp_payload_offset, Reassembler, Transport, MAX_PACKET,
    };
    use super::*;
    use std::time::{Duration, Instant};

    fn reply(payload_len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; MAX_PACKET];
        let off = udp_payload_offset(true);
        for (i, b) in buf[off..off + payload_len].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let n = build_udp_headers(
            &mut buf,
            "[fd00:10:96::53]:53".parse().unwrap(),
            "[fd77::2]:5000".parse().unwrap(),
            payload_len,
        )
        .unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn fragments_fit_the_mtu_and_reassemble_to_the_original() {
        for payload_len in [1233, 4000, 9000, 65_000] {
            let pkt = reply(payload_len);
            let mut frags = V6Fragments::new(&pkt, IPV6_MIN_MTU, 0x1234_5678).unwrap();
            let mut out = vec![0u8; IPV6_MIN_MTU];
            let mut r = Reassembler::new(1 << 20, 8, Duration::from_secs(5));
            let mut whole = vec![0u8; MAX_PACKET];
            let now = Instant::now();
            let mut done = None;
            let mut count = 0;
            while let Some(n) = frags.next_into(&mut out) {
                count += 1;
                assert!(n <= IPV6_MIN_MTU);
                let p = parse(&out[..n]).unwrap();
                assert!(matches!(p.transport, Transport::Fragment { .. }));
                if let Some(len) = r.push(&out[..n], &p, now, &mut whole).unwrap() {
                    done = Some(len);
                }
            }
            let len = done.expect("reassembled");
            assert_eq!(&whole[..len], &pkt[..], "payload {payload_len}");
            assert_eq!(count, (payload_len + 8).div_ceil(1232));
        }
    }

    #[test]
    fn refuses_what_it_cannot_fragment() {
        assert!(V6Fragments::new(&[0x45; 100], 1280, 1).is_none());
        assert!(V6Fragments::new(&reply(10), 47, 1).is_none());
        assert!(V6Fragments::new(&[0x60; 20], 1280, 1).is_none());
    }
}
