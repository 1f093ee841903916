//! `struct virtio_net_hdr` (linux/virtio_net.h), the header in front of every packet on a
//! TUN device opened with `IFF_VNET_HDR`. It carries the offload state: a partial checksum
//! to complete (`NEEDS_CSUM`) and GSO segmentation of super-packets.
//!
//! Fields are little-endian: that is the legacy virtio byte order on x86 and arm64, and a
//! big-endian host must set `TUNSETVNETLE` on the device to get the same layout.

use super::checksum::{finish, sum};
use super::{Checksum, DropReason};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers (for GSO: of the headers to replicate per segment).
    pub hdr_len: u16,
    /// GSO segment size (payload bytes per segment).
    pub gso_size: u16,
    /// Offset of the region the device checksums (the L4 header), with NEEDS_CSUM.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`, with NEEDS_CSUM.
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// Length of `struct virtio_net_hdr`.
    pub const LEN: usize = 10;
    /// Length of `struct virtio_net_hdr_mrg_rxbuf` (adds `num_buffers`).
    pub const LEN_MRG_RXBUF: usize = 12;

    /// VIRTIO_NET_HDR_F_NEEDS_CSUM: the L4 checksum field holds only the pseudo-header sum.
    pub const NEEDS_CSUM: u8 = 1;
    /// VIRTIO_NET_HDR_F_DATA_VALID: the checksum was verified.
    pub const DATA_VALID: u8 = 2;
    /// VIRTIO_NET_HDR_F_RSC_INFO.
    pub const RSC_INFO: u8 = 4;

    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_UDP: u8 = 3;
    pub const GSO_TCPV6: u8 = 4;
    pub const GSO_UDP_L4: u8 = 5;
    /// Flag bit on `gso_type`: the TCP segments carry ECN (CWR set on the first one).
    pub const GSO_ECN: u8 = 0x80;

    /// For a packet the gateway builds itself: no GSO, no partial checksum.
    pub const NONE: Self = VirtioNetHdr {
        flags: 0,
        gso_type: Self::GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Parse the first [`Self::LEN`] bytes of `b`. Unknown GSO types are rejected, since a
    /// packet that needs segmentation the gateway does not understand cannot be rewritten.
    pub fn parse(b: &[u8]) -> Result<Self, DropReason> {
        let b: &[u8; Self::LEN] = b
            .get(..Self::LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(DropReason::BadVnetHeader)?;
        let h = VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_le_bytes([b[2], b[3]]),
            gso_size: u16::from_le_bytes([b[4], b[5]]),
            csum_start: u16::from_le_bytes([b[6], b[7]]),
            csum_offset: u16::from_le_bytes([b[8], b[9]]),
        };
        match h.gso_type & !Self::GSO_ECN {
            Self::GSO_NONE
            | Self::GSO_TCPV4
            | Self::GSO_UDP
            | Self::GSO_TCPV6
            | Self::GSO_UDP_L4 => Ok(h),
            _ => Err(DropReason::BadVnetHeader),
        }
    }

    /// Write the header into the first [`Self::LEN`] bytes of `b` (nothing if shorter).
    pub fn write(&self, b: &mut [u8]) {
        let Some(b) = b.get_mut(..Self::LEN) else {
            debug_assert!(false, "virtio_net_hdr buffer shorter than 10 bytes");
            return;
        };
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & Self::NEEDS_CSUM != 0
    }

    /// How a rewrite must treat the L4 checksum of the packet behind this header.
    pub fn checksum_mode(&self) -> Checksum {
        if self.needs_csum() {
            Checksum::Partial
        } else {
            Checksum::Full
        }
    }

    /// Complete a partial checksum (`NEEDS_CSUM`) in software, as the device would: sum
    /// `packet[csum_start..]`, whose checksum field holds the pseudo-header sum, and store
    /// the result in the field. Errs when the offsets do not fit the packet.
    pub fn complete_checksum(&self, packet: &mut [u8]) -> Result<(), DropReason> {
        let start = usize::from(self.csum_start);
        let at = start + usize::from(self.csum_offset);
        if at + 2 > packet.len() {
            return Err(DropReason::BadVnetHeader);
        }
        let csum = finish(sum(&packet[start..]));
        packet[at..at + 2].copy_from_slice(&csum.to_be_bytes());
        Ok(())
    }

    /// True when the packet is a GSO super-packet the device will segment.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !Self::GSO_ECN != Self::GSO_NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_layout() {
        let h = VirtioNetHdr {
            flags: VirtioNetHdr::NEEDS_CSUM,
            gso_type: VirtioNetHdr::GSO_TCPV4 | VirtioNetHdr::GSO_ECN,
            hdr_len: 0x0142,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; 12];
        h.write(&mut b);
        assert_eq!(&b[..10], &[1, 0x81, 0x42, 0x01, 0xa8, 0x05, 20, 0, 16, 0]);
        assert_eq!(VirtioNetHdr::parse(&b), Ok(h));
        assert!(h.needs_csum());
        assert!(h.is_gso());
        assert_eq!(h.checksum_mode(), Checksum::Partial);
    }

    #[test]
    fn completing_a_partial_checksum_gives_the_full_one() {
        // An ICMP echo request whose checksum field holds 0 (the partial sum of ICMP,
        // which has no pseudo-header), behind a 20-byte IPv4 header.
        let mut pkt = vec![0u8; 20];
        pkt.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 1, b'h', b'i', b'!']);
        let h = VirtioNetHdr {
            flags: VirtioNetHdr::NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 2,
            ..VirtioNetHdr::NONE
        };
        h.complete_checksum(&mut pkt).unwrap();
        // A region with a correct checksum sums to 0xffff.
        assert_eq!(super::super::checksum::fold(sum(&pkt[20..])), 0xffff);
        let far = VirtioNetHdr {
            csum_offset: 40,
            ..h
        };
        assert_eq!(
            far.complete_checksum(&mut pkt),
            Err(DropReason::BadVnetHeader)
        );
    }

    #[test]
    fn none_and_errors() {
        let mut b = [0xffu8; 10];
        VirtioNetHdr::NONE.write(&mut b);
        assert_eq!(b, [0u8; 10]);
        let h = VirtioNetHdr::parse(&b).unwrap();
        assert_eq!(h, VirtioNetHdr::default());
        assert_eq!(h.checksum_mode(), Checksum::Full);
        assert!(!h.is_gso());
        assert_eq!(VirtioNetHdr::parse(&b[..9]), Err(DropReason::BadVnetHeader));
        b[1] = 2; // not a GSO type
        assert_eq!(VirtioNetHdr::parse(&b), Err(DropReason::BadVnetHeader));
    }
}
