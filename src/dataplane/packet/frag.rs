//! Bounded reassembly of IPv4 and IPv6 fragments (any protocol).
//!
//! The only part of the packet module that allocates: one entry per partial datagram,
//! holding its unfragmentable header (from the offset-0 fragment) and the data received so
//! far. Memory is bounded by a byte budget over all entries and a datagram count; entries
//! expire after a timeout. Overlapping fragments drop the whole datagram (RFC 5722 for IPv6,
//! the same for IPv4: overlaps only serve to evade inspection). A fragment that repeats
//! bytes already received, identically, is a harmless duplicate and is ignored.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::checksum::{finish, sum};
use super::parse::{walk_v6, V6End};
use super::{DropReason, Packet, Transport};

/// Most disjoint received ranges kept per datagram. A real datagram of 64 KiB over a
/// 576-byte path has ~120 fragments that arrive mostly in order (so ranges merge); this
/// bounds the work an adversary can cause with many tiny holes.
const MAX_RANGES: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    id: u32,
    /// IPv4 protocol (part of the IPv4 key, RFC 791); 0 for IPv6 (RFC 8200 keys on
    /// addresses and id only).
    proto: u8,
}

#[derive(Debug)]
struct Partial {
    started: Instant,
    /// The unfragmentable part from the offset-0 fragment (IPv4: the header with options;
    /// IPv6: everything before the Fragment header); empty until that fragment arrives.
    header: Vec<u8>,
    /// IPv6: offset in `header` of the byte that named the Fragment header.
    nh_at: usize,
    /// The protocol / next header of the reassembled payload (from the offset-0 fragment).
    next_header: u8,
    /// The fragmentable part, indexed by fragment offset.
    data: Vec<u8>,
    /// Received byte ranges of `data`: sorted, disjoint, adjacent ranges merged.
    ranges: Vec<(usize, usize)>,
    /// Length of the fragmentable part, known once the last fragment (no MF) arrived.
    end: Option<usize>,
}

impl Partial {
    /// Bytes charged against the memory budget.
    fn cost(&self) -> usize {
        self.header.len() + self.data.len()
    }

    fn complete(&self) -> Option<usize> {
        let end = self.end?;
        (!self.header.is_empty() && self.ranges == [(0, end)]).then_some(end)
    }
}

/// Bounded reassembly of IPv4 and IPv6 fragments. Memory is bounded by `max_bytes` over all
/// partial datagrams (header plus the extent of data received) and by `max_datagrams`; a
/// partial datagram older than `timeout` is dropped. When a bound is reached, a fragment of
/// a datagram that would need more is refused with [`DropReason::FragmentTableFull`] (after
/// expiring old entries): what is already collected keeps its chance to complete.
#[derive(Debug)]
pub struct Reassembler {
    max_bytes: usize,
    max_datagrams: usize,
    timeout: Duration,
    table: HashMap<Key, Partial>,
    bytes: usize,
}

impl Reassembler {
    pub fn new(max_bytes: usize, max_datagrams: usize, timeout: Duration) -> Self {
        Reassembler {
            max_bytes,
            max_datagrams,
            timeout,
            table: HashMap::new(),
            bytes: 0,
        }
    }

    /// Partial datagrams held.
    pub fn pending(&self) -> usize {
        self.table.len()
    }

    /// Bytes held by partial datagrams (what `max_bytes` bounds).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drop partial datagrams older than the timeout; returns how many were dropped (the
    /// caller counts them as [`DropReason::FragmentTimeout`]).
    pub fn expire(&mut self, now: Instant) -> usize {
        let timeout = self.timeout;
        let before = self.table.len();
        let mut freed = 0;
        self.table.retain(|_, p| {
            let keep = now.saturating_duration_since(p.started) < timeout;
            if !keep {
                freed += p.cost();
            }
            keep
        });
        self.bytes -= freed;
        before - self.table.len()
    }

    fn remove(&mut self, key: &Key) {
        if let Some(p) = self.table.remove(key) {
            self.bytes -= p.cost();
        }
    }

    /// Drop the datagram `key` and return `reason`.
    fn fail(&mut self, key: &Key, reason: DropReason) -> Result<Option<usize>, DropReason> {
        self.remove(key);
        Err(reason)
    }

    /// Add the fragment `pkt` (parsed from `buf`). Returns `Ok(Some(len))` when the datagram
    /// is complete: the packet is then in `out[..len]` (`out` should have `MAX_PACKET`
    /// bytes), unfragmented and ready for `parse`. `Ok(None)`: stored, waiting for more
    /// (or an identical duplicate, ignored). On `Err` the fragment is dropped, and for
    /// overlaps, inconsistent or oversized datagrams the whole datagram with it.
    pub fn push(
        &mut self,
        buf: &[u8],
        pkt: &Packet,
        now: Instant,
        out: &mut [u8],
    ) -> Result<Option<usize>, DropReason> {
        let Transport::Fragment {
            id,
            offset,
            more,
            protocol,
        } = pkt.transport
        else {
            return Err(DropReason::BadFragment);
        };
        let v6 = pkt.is_v6();
        let bytes = buf.get(..pkt.len).ok_or(DropReason::Truncated)?;
        let data = bytes.get(pkt.l4_offset..).ok_or(DropReason::Truncated)?;
        // The unfragmentable part of this fragment, and (IPv6) where its next header is.
        let (unfrag, nh_at) = if v6 {
            match walk_v6(bytes, false) {
                Ok(V6End::Fragment { frag_at, nh_at, .. }) if frag_at + 8 == pkt.l4_offset => {
                    (frag_at, nh_at)
                }
                _ => return Err(DropReason::BadFragment),
            }
        } else {
            (pkt.l4_offset, 0)
        };
        if data.is_empty() || (more && data.len() % 8 != 0) || unfrag < 20 {
            return Err(DropReason::BadFragment);
        }
        let end = offset + data.len();
        let key = Key {
            src: pkt.src,
            dst: pkt.dst,
            id,
            proto: if v6 { 0 } else { protocol },
        };
        // The reassembled length field counts the unfragmentable part (minus the fixed IPv6
        // header) plus all data.
        let counted = if v6 { unfrag - 40 } else { unfrag };
        if counted + end > 65535 {
            return self.fail(&key, DropReason::FragmentTooLarge);
        }

        if let Some(p) = self.table.get(&key) {
            if now.saturating_duration_since(p.started) >= self.timeout {
                self.remove(&key);
            }
        }
        if !self.table.contains_key(&key) {
            if self.table.len() >= self.max_datagrams {
                self.expire(now);
            }
            if self.table.len() >= self.max_datagrams {
                return Err(DropReason::FragmentTableFull);
            }
            self.table.insert(
                key,
                Partial {
                    started: now,
                    header: Vec::new(),
                    nh_at: 0,
                    next_header: 0,
                    data: Vec::new(),
                    ranges: Vec::new(),
                    end: None,
                },
            );
        }
        let Some(p) = self.table.get(&key) else {
            return Err(DropReason::FragmentTableFull);
        };

        // Overlaps (or identical duplicates).
        if let Some(&(s, e)) = p.ranges.iter().find(|&&(s, e)| offset < e && s < end) {
            let same = s <= offset && end <= e && p.data.get(offset..end) == Some(data);
            if same && (more || p.end == Some(end)) {
                return Ok(None);
            }
            return self.fail(&key, DropReason::FragmentOverlap);
        }
        // The end of the datagram: one value, and no data beyond it.
        let beyond = |limit: usize| p.ranges.last().is_some_and(|&(_, e)| e > limit);
        let conflict = match (more, p.end) {
            (false, Some(known)) => known != end,
            (false, None) => beyond(end),
            (true, Some(known)) => end > known,
            (true, None) => false,
        };
        if conflict {
            return self.fail(&key, DropReason::BadFragment);
        }
        // Memory: the header (first fragment) and any growth of the data extent.
        let header_growth = if offset == 0 { unfrag } else { 0 };
        let growth = header_growth + end.saturating_sub(p.data.len());
        if self.bytes + growth > self.max_bytes {
            self.expire(now);
            if self.bytes + growth > self.max_bytes || !self.table.contains_key(&key) {
                if self.table.get(&key).is_some_and(|p| p.ranges.is_empty()) {
                    self.remove(&key);
                }
                return Err(DropReason::FragmentTableFull);
            }
        }
        let Some(p) = self.table.get_mut(&key) else {
            return Err(DropReason::FragmentTableFull);
        };
        if p.ranges.len() >= MAX_RANGES {
            return self.fail(&key, DropReason::FragmentTableFull);
        }

        let before = p.cost();
        if p.data.len() < end {
            p.data.resize(end, 0);
        }
        p.data[offset..end].copy_from_slice(data);
        insert_range(&mut p.ranges, offset, end);
        if !more {
            p.end = Some(end);
        }
        if offset == 0 {
            p.header.clear();
            p.header.extend_from_slice(&bytes[..unfrag]);
            p.nh_at = nh_at;
            p.next_header = protocol;
        }
        self.bytes = self.bytes - before + p.cost();

        let Some(total) = p.complete() else {
            return Ok(None);
        };
        let Some(p) = self.table.remove(&key) else {
            return Ok(None);
        };
        self.bytes -= p.cost();
        assemble(&p, total, v6, out).map(Some)
    }
}

/// Insert the range `[s, e)` (disjoint from all) into the sorted list, merging neighbours.
fn insert_range(ranges: &mut Vec<(usize, usize)>, s: usize, e: usize) {
    let i = ranges.partition_point(|&(rs, _)| rs < s);
    ranges.insert(i, (s, e));
    if i + 1 < ranges.len() && ranges[i + 1].0 == e {
        ranges[i].1 = ranges[i + 1].1;
        ranges.remove(i + 1);
    }
    if i > 0 && ranges[i - 1].1 == s {
        ranges[i - 1].1 = ranges[i].1;
        ranges.remove(i);
    }
}

/// Write the reassembled datagram into `out`.
fn assemble(p: &Partial, total: usize, v6: bool, out: &mut [u8]) -> Result<usize, DropReason> {
    let hl = p.header.len();
    let len = hl + total;
    let data = p.data.get(..total).ok_or(DropReason::BadFragment)?;
    let dst = out.get_mut(..len).ok_or(DropReason::FragmentTooLarge)?;
    let (head, body) = dst.split_at_mut(hl);
    head.copy_from_slice(&p.header);
    body.copy_from_slice(data);
    if v6 {
        let payload = u16::try_from(len - 40).map_err(|_| DropReason::FragmentTooLarge)?;
        head[4..6].copy_from_slice(&payload.to_be_bytes());
        *head.get_mut(p.nh_at).ok_or(DropReason::BadFragment)? = p.next_header;
    } else {
        let total_len = u16::try_from(len).map_err(|_| DropReason::FragmentTooLarge)?;
        head[2..4].copy_from_slice(&total_len.to_be_bytes());
        // Keep DF and the reserved bit; clear MF and the offset.
        head[6] &= 0xc0;
        head[7] = 0;
        head[10..12].copy_from_slice(&[0, 0]);
        let c = finish(sum(head));
        head[10..12].copy_from_slice(&c.to_be_bytes());
    }
    Ok(len)
}
