//! Internet checksum arithmetic: full sums (RFC 1071) for packets the gateway builds, and
//! incremental updates (RFC 1624, eqn. 3) for packets it rewrites.

use std::net::IpAddr;

/// Unfolded one's-complement sum of big-endian 16-bit words; an odd last byte is padded
/// with zero. A u64 accumulator cannot overflow for any packet size handled here.
pub(crate) fn sum(data: &[u8]) -> u64 {
    let mut acc = 0u64;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [b] = pairs.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// Fold a sum to 16 bits with end-around carry.
pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for a region whose sum is `acc`.
pub(crate) fn finish(acc: u64) -> u16 {
    !fold(acc)
}

fn ip_sum(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => sum(&a.octets()),
        IpAddr::V6(a) => sum(&a.octets()),
    }
}

/// Sum of the TCP/UDP/ICMPv6 pseudo-header (RFC 793 / RFC 8200 §8.1). `len` is the upper
/// layer length.
pub(crate) fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> u64 {
    ip_sum(src) + ip_sum(dst) + u64::from(protocol) + len as u64
}

/// The change of a set of 16-bit-aligned fields, to be folded into checksums that cover them.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Delta(u64);

impl Delta {
    /// Record that the words `old` are replaced by `new` (same, even length).
    pub(crate) fn replace(&mut self, old: &[u8], new: &[u8]) {
        debug_assert_eq!(old.len(), new.len());
        debug_assert_eq!(old.len() % 2, 0);
        // ~m, summed word by word, is congruent (mod 0xffff) to the complement of m's
        // folded sum. `sum` adds 32-bit words, so it is not bounded by 0xffff per word:
        // fold before complementing.
        self.0 += u64::from(!fold(sum(old))) + sum(new);
    }

    pub(crate) fn add(&mut self, other: Delta) {
        self.0 += other.0;
    }

    /// Apply to a field holding a complete checksum: HC' = ~(~HC + ~m + m').
    pub(crate) fn apply_full(self, csum: u16) -> u16 {
        !fold(u64::from(!csum) + self.0)
    }

    /// Apply to a field holding a non-complemented partial sum (CHECKSUM_PARTIAL).
    pub(crate) fn apply_partial(self, partial: u16) -> u16 {
        fold(u64::from(partial) + self.0)
    }
}

/// Read the big-endian u16 at `off`, if it is inside `buf`.
pub(crate) fn get16(buf: &[u8], off: usize) -> Option<u16> {
    let b = buf.get(off..off.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Write the big-endian u16 at `off`; false (nothing written) if it is not inside `buf`.
pub(crate) fn put16(buf: &mut [u8], off: usize, v: u16) -> bool {
    match off.checked_add(2).and_then(|end| buf.get_mut(off..end)) {
        Some(b) => {
            b.copy_from_slice(&v.to_be_bytes());
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward RFC 1071 reference: 16-bit words, u32 accumulator, fold at the end.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        let mut i = 0;
        while i < data.len() {
            let hi = u32::from(data[i]) << 8;
            let lo = data.get(i + 1).map_or(0, |b| u32::from(*b));
            acc += hi | lo;
            i += 2;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn sum_matches_reference_for_all_lengths() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 151 + 7) as u8).collect();
        for n in 0..data.len() {
            assert_eq!(fold(sum(&data[..n])), reference(&data[..n]), "length {n}");
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d)), 0xddf2);
        assert_eq!(finish(sum(&d)), 0x220d);
    }

    #[test]
    fn incremental_equals_recompute() {
        let mut data: Vec<u8> = (0..64u32).map(|i| (i * 37 + 1) as u8).collect();
        let before = finish(sum(&data));
        let old = [data[10], data[11], data[12], data[13]];
        let new = [0xff, 0x00, 0x12, 0x34];
        data[10..14].copy_from_slice(&new);
        let mut d = Delta::default();
        d.replace(&old, &new);
        let after = d.apply_full(before);
        // Equal as one's-complement numbers (0 and 0xffff are the same value).
        let recomputed = finish(sum(&data));
        assert!(after == recomputed || matches!((after, recomputed), (0, 0xffff) | (0xffff, 0)));
        // And the packet verifies with the updated value.
        let mut with = data.clone();
        with.extend_from_slice(&after.to_be_bytes());
        assert_eq!(fold(sum(&with)), 0xffff);
    }

    #[test]
    fn get_put_bounds() {
        let mut b = [0u8; 3];
        assert!(put16(&mut b, 1, 0xabcd));
        assert_eq!(get16(&b, 1), Some(0xabcd));
        assert!(!put16(&mut b, 2, 1));
        assert_eq!(get16(&b, 2), None);
        assert_eq!(get16(&b, usize::MAX), None);
        assert!(!put16(&mut b, usize::MAX, 1));
    }
}
