//! What the dataplane workers share: the TCP redirect NAT and the balancer.
//!
//! With one TUN queue per worker, the kernel picks the queue of each packet by its flow
//! hash, and the two directions of one proxied flow (`C:cp → S:sp` and `L:lp → V:vp`) are
//! different flows to it: they may land on different workers. Both must find the same NAT
//! entry, so the NAT is shared — but not behind one lock. It is split into [`SHARDS`]
//! tables, each behind its own mutex and each owning a disjoint part of the virtual tuple
//! space ([`Partition`]): a new flow goes to the shard of its key's hash and takes a tuple
//! of that shard, so the reply direction finds the shard from the tuple alone. Two workers
//! meet on a lock only when their packets fall in the same shard at the same moment.
//!
//! Each worker also runs the proxy of the flows it maps (the acceptor of a listener port
//! of its own, see `Worker::run`), so a flow is best handled start to end by one thread.
//! The shards are therefore dealt out to the workers (shard `s` belongs to worker
//! `s % owners`): a worker maps a new flow into one of its own shards, picked by the key's
//! hash among that worker's, so the tuple names the worker whose listener takes the
//! connection ([`SharedFlows::owner_of`]). A key is looked for in the `owners` shards its
//! hash allows, the reader's own first: the kernel keeps both directions of a flow on the
//! queue that last wrote them, which is the owner's, so that first look is almost always
//! the one that finds it. (With a worker count that does not divide [`SHARDS`], the last
//! `SHARDS % owners` shards take no new flows; their share of the tuple space goes unused.)
//!
//! The active-flow bound is global (an atomic count next to the shards). The balancer
//! (round-robin position, ClientIP affinity) is shared too, behind one mutex, but it is
//! taken once per new flow, never per packet of an existing one.
//!
//! Owns: the shards and the balancer. Must not touch: packets, sockets, the table.

use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::balancer::{Balancer, Candidates};
use super::nat::{virtual_index, FlowKey, FlowState, NatConfig, NatError, NatTable, Partition};
use crate::cluster::table::ServicePort;

/// NAT shards: a power of two well above the worker count, so that workers rarely meet.
pub const SHARDS: usize = 16;

pub struct SharedFlows {
    config: NatConfig,
    shards: Box<[Mutex<NatTable>]>,
    /// Active flows over all shards (each shard's own bound is the whole capacity).
    active: AtomicUsize,
    /// Picks a key's shard: seeded at random, so clients cannot aim at one shard.
    hasher: std::hash::RandomState,
    balancer: Mutex<Balancer>,
    /// UDP flows over all workers (each worker holds its own and reports changes).
    udp_active: AtomicUsize,
    /// Workers the shards are dealt out to (1 to [`SHARDS`]).
    owners: usize,
}

/// A poisoned lock means a thread panicked mid-update; the dataplane's shared state is
/// plain values (tables, lists), still usable, and forwarding must go on. Every dataplane
/// mutex is taken through this.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Carry a part's change from `before` to `after` into the total `counter`.
fn carry(counter: &AtomicUsize, before: usize, after: usize) {
    if after > before {
        counter.fetch_add(after - before, Ordering::Relaxed);
    } else if before > after {
        counter.fetch_sub(before - after, Ordering::Relaxed);
    }
}

impl SharedFlows {
    /// The NAT of a single worker.
    pub fn new(config: NatConfig, now: Instant) -> Self {
        Self::with_owners(config, 1, now)
    }

    /// The NAT shared by `owners` workers (clamped to 1..=[`SHARDS`]).
    pub fn with_owners(config: NatConfig, owners: usize, now: Instant) -> Self {
        let shards = (0..SHARDS)
            .map(|index| {
                let part = Partition {
                    index,
                    count: SHARDS,
                };
                Mutex::new(NatTable::partition(config.clone(), part, now))
            })
            .collect();
        SharedFlows {
            config,
            shards,
            active: AtomicUsize::new(0),
            hasher: std::hash::RandomState::new(),
            balancer: Mutex::new(Balancer::new()),
            udp_active: AtomicUsize::new(0),
            owners: owners.clamp(1, SHARDS),
        }
    }

    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// The shards `key` may live in, one per owner, owner `from`'s first.
    fn shards_of_key(&self, key: &FlowKey, from: usize) -> impl Iterator<Item = usize> {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        let h = std::hash::Hasher::finish(&h);
        // Fold the high bits in (all of the hash counts).
        let owners = self.owners;
        let base = ((h >> 32) ^ h) as usize % (SHARDS / owners) * owners;
        (0..owners).map(move |i| base + (from + i) % owners)
    }

    fn shard_of_virt(&self, virt: &SocketAddr) -> Option<&Mutex<NatTable>> {
        virtual_index(&self.config, *virt).map(|i| &self.shards[i % SHARDS])
    }

    /// The worker whose listener takes the connection of the flow mapped to `virt`.
    pub fn owner_of(&self, virt: &SocketAddr) -> Option<usize> {
        virtual_index(&self.config, *virt).map(|i| i % SHARDS % self.owners)
    }

    /// How many workers the shards are dealt out to.
    pub fn owners(&self) -> usize {
        self.owners
    }

    /// Run `f` on a shard and carry the change of its active count into the global one.
    fn counted<R>(&self, shard: &Mutex<NatTable>, f: impl FnOnce(&mut NatTable) -> R) -> R {
        let mut t = lock(shard);
        let before = t.active();
        let r = f(&mut t);
        let after = t.active();
        drop(t);
        carry(&self.active, before, after);
        r
    }

    /// The virtual tuple of a known flow, and its state; `from` is the asking worker.
    pub fn get(&self, key: &FlowKey, from: usize) -> Option<(SocketAddr, FlowState)> {
        self.shards_of_key(key, from)
            .find_map(|s| lock(&self.shards[s]).get(key))
    }

    /// The original flow behind a virtual tuple.
    pub fn reverse(&self, virt: &SocketAddr) -> Option<(FlowKey, FlowState)> {
        lock(self.shard_of_virt(virt)?).reverse(virt)
    }

    /// Map a new flow for worker `owner` (see [`NatTable::insert`]): in the shard that
    /// already maps its key, else in one of `owner`'s. When all shards together hold the
    /// configured capacity of active flows, the oldest unanswered flow of that shard (or,
    /// when it has none, of the next one that has) makes room ([`NatTable::early_drop`]);
    /// refused when every active flow completed its handshake.
    pub fn insert(&self, key: FlowKey, owner: usize, now: Instant) -> Result<SocketAddr, NatError> {
        let mut shards = self.shards_of_key(&key, owner);
        let own = shards.next().unwrap_or(0);
        let index = shards
            .find(|&s| lock(&self.shards[s]).get(&key).is_some())
            .unwrap_or(own);
        let shard = &self.shards[index];
        // A still-mapped flow of the same key is replaced and frees its place.
        let live = |t: &NatTable| {
            t.get(&key)
                .is_some_and(|(_, s)| !matches!(s, FlowState::Closed { .. }))
        };
        // Full: the oldest unanswered flow of this shard makes room, or when it has none,
        // that of the next shard that has one (one shard locked at a time).
        if self.active.load(Ordering::Relaxed) >= self.config.capacity && !live(&lock(shard)) {
            for i in (0..SHARDS).map(|k| (index + k) % SHARDS) {
                if self.counted(&self.shards[i], |t| t.early_drop(now)) {
                    break;
                }
            }
        }
        self.counted(shard, |t| {
            let limit = self.config.capacity + usize::from(live(t));
            if self.active.load(Ordering::Relaxed) >= limit {
                return Err(NatError::TableFull);
            }
            t.insert(key, now)
        })
    }

    /// The listener answered the SYN of the flow mapped to `virt` ([`NatTable::syn_ack`]).
    pub fn syn_ack(&self, virt: SocketAddr, isn: u32) {
        if let Some(shard) = self.shard_of_virt(&virt) {
            lock(shard).syn_ack(virt, isn);
        }
    }

    /// The client of the flow mapped to `virt` acknowledged `ack` ([`NatTable::client_ack`]).
    pub fn client_ack(&self, virt: SocketAddr, ack: u32) -> bool {
        self.shard_of_virt(&virt)
            .is_some_and(|shard| lock(shard).client_ack(virt, ack))
    }

    /// The proxy accepted the connection from `virt`. False when no flow is mapped to it
    /// any more (unanswered too long: expired, or dropped to make room).
    pub fn accepted(&self, virt: SocketAddr) -> bool {
        self.shard_of_virt(&virt)
            .is_some_and(|shard| lock(shard).accepted(virt))
    }

    /// Unanswered flows dropped so far to make room for new ones, over all shards.
    pub fn early_drops(&self) -> u64 {
        self.shards.iter().map(|s| lock(s).early_drops()).sum()
    }

    /// Flows waiting for their handshake to complete, over all shards.
    pub fn pending(&self) -> usize {
        self.shards.iter().map(|s| lock(s).pending_count()).sum()
    }

    /// The proxy is done with the connection from `virt`.
    pub fn closed(&self, virt: SocketAddr, now: Instant) {
        if let Some(shard) = self.shard_of_virt(&virt) {
            self.counted(shard, |t| t.closed(virt, now));
        }
    }

    /// Expire the shards whose number is `part.index` modulo `part.count` (each worker
    /// sweeps its own share), and with part 0 the balancer's old affinities.
    pub fn expire(&self, now: Instant, part: Partition) {
        for shard in self
            .shards
            .iter()
            .skip(part.index)
            .step_by(part.count.max(1))
        {
            self.counted(shard, |t| t.expire(now));
        }
        if part.index == 0 {
            lock(&self.balancer).expire(now);
        }
    }

    /// Flows holding (or about to hold) a proxied connection, over all shards.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// All mapped flows, closed ones still lingering included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// UDP flows over all workers.
    pub fn udp_active(&self) -> usize {
        self.udp_active.load(Ordering::Relaxed)
    }

    /// A worker's UDP flow count went from `before` to `after`.
    pub fn udp_changed(&self, before: usize, after: usize) {
        carry(&self.udp_active, before, after);
    }

    /// Choose endpoints for a new flow (see [`Balancer::pick`]).
    pub fn pick(&self, port: &ServicePort, client: IpAddr, now: Instant) -> Option<Candidates> {
        lock(&self.balancer).pick(port, client, now)
    }

    /// A flow from `client` was served by `endpoint`: affinity follows it.
    pub fn served(&self, port: &ServicePort, client: IpAddr, endpoint: SocketAddr, now: Instant) {
        lock(&self.balancer).served(port, client, endpoint, now);
    }

    /// ClientIP affinities held now.
    pub fn affinities(&self) -> usize {
        lock(&self.balancer).affinities()
    }

    /// ClientIP affinities held now, and those not recorded because the table was full.
    pub fn affinity_counts(&self) -> (usize, u64) {
        let b = lock(&self.balancer);
        (b.affinities(), b.affinities_refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn config(capacity: usize) -> NatConfig {
        NatConfig::new(
            "198.18.0.0/16".parse().unwrap(),
            "fdc7:7779::/64".parse().unwrap(),
            capacity,
        )
    }

    fn key(n: u16) -> FlowKey {
        FlowKey {
            client: SocketAddr::new("192.168.7.1".parse().unwrap(), n),
            service: "10.96.0.10:80".parse().unwrap(),
        }
    }

    #[test]
    fn both_directions_find_the_flow_whatever_its_shard() {
        let now = Instant::now();
        let s = SharedFlows::new(config(1000), now);
        let mut virts = std::collections::HashSet::new();
        for n in 1..=200 {
            let v = s.insert(key(n), 0, now).unwrap();
            assert!(virts.insert(v), "{v} handed out twice");
            assert_eq!(s.get(&key(n), 0).unwrap().0, v);
            assert_eq!(s.reverse(&v).unwrap().0, key(n));
        }
        // The keys spread over the shards (none holds more than a third of them).
        let most = s.shards.iter().map(|t| lock(t).len()).max().unwrap();
        assert!(most < 70, "one shard holds {most} of 200 flows");
        assert_eq!(s.active(), 200);
        assert_eq!(s.len(), 200);
        assert!(s.reverse(&"198.18.0.1:1024".parse().unwrap()).is_none());
    }

    #[test]
    fn the_capacity_is_global_and_closing_makes_room() {
        let now = Instant::now();
        let s = SharedFlows::new(config(3), now);
        // Three answered flows fill it: a fourth is refused.
        let v: Vec<_> = (1..=3)
            .map(|n| {
                let v = s.insert(key(n), 0, now).unwrap();
                assert!(s.accepted(v));
                v
            })
            .collect();
        assert_eq!(s.insert(key(4), 0, now), Err(NatError::TableFull));
        // A SYN reusing a live key replaces its flow instead of being refused.
        let again = s.insert(key(2), 0, now).unwrap();
        assert_eq!(s.active(), 3);
        s.closed(v[0], now);
        s.closed(v[2], now);
        assert_eq!(s.active(), 1);
        assert!(s.insert(key(4), 0, now).is_ok());
        // Closed flows go after their grace; unaccepted ones after the pending timeout.
        let later = now + Duration::from_secs(31);
        for index in 0..2 {
            s.expire(later, Partition { index, count: 2 });
        }
        assert_eq!(s.active(), 0);
        assert!(s.reverse(&again).is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn workers_on_several_threads_share_it() {
        let now = Instant::now();
        let s = Arc::new(SharedFlows::new(config(10_000), now));
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for n in 0..1000u16 {
                        let k = key(t * 1000 + n + 1);
                        let v = s.insert(k, 0, now).unwrap();
                        assert_eq!(s.reverse(&v).unwrap().0, k);
                        s.accepted(v);
                        s.closed(v, now);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.active(), 0);
        assert_eq!(s.len(), 4000);
    }

    #[test]
    fn each_worker_maps_flows_its_listener_takes_and_every_worker_finds_them() {
        let now = Instant::now();
        let s = SharedFlows::with_owners(config(1000), 3, now);
        assert_eq!(s.owners(), 3);
        for n in 1..=300u16 {
            let owner = usize::from(n % 3);
            let v = s.insert(key(n), owner, now).unwrap();
            assert_eq!(
                s.owner_of(&v),
                Some(owner),
                "flow {n} mapped by worker {owner}"
            );
            for from in 0..3 {
                assert_eq!(s.get(&key(n), from).unwrap().0, v);
            }
            assert_eq!(s.reverse(&v).unwrap().0, key(n));
        }
        assert_eq!(s.active(), 300);
        // A SYN of a live key read by another worker replaces the flow where it is: one
        // entry per key, and the owner stays the first mapper's.
        let first = s.get(&key(1), 1).unwrap().0;
        let again = s.insert(key(1), 2, now).unwrap();
        assert_eq!(s.owner_of(&again), s.owner_of(&first));
        assert_eq!(s.active(), 300);
        assert_eq!(s.len(), 300);
        // Owners past the shard count are clamped: every shard still has one.
        assert_eq!(
            SharedFlows::with_owners(config(10), 99, now).owners(),
            SHARDS
        );
        assert_eq!(SharedFlows::with_owners(config(10), 0, now).owners(), 1);
    }

    #[test]
    fn a_full_table_drops_the_oldest_unanswered_flow_never_an_answered_one() {
        let t0 = Instant::now();
        let s = SharedFlows::new(config(32), t0);
        // 16 legitimate flows, answered (accepted by the proxy).
        for n in 1..=16 {
            let v = s.insert(key(n), 0, t0).unwrap();
            assert!(s.accepted(v));
        }
        // A flood of SYNs nobody answers, far more than the table holds.
        let spoofed = |n: u16| FlowKey {
            client: SocketAddr::new(IpAddr::from([172, 16, (n >> 8) as u8, n as u8]), 1000 + n),
            service: "10.96.0.10:80".parse().unwrap(),
        };
        let mut refused = 0;
        for n in 0..2000 {
            if s.insert(spoofed(n), 0, t0 + Duration::from_millis(u64::from(n)))
                .is_err()
            {
                refused += 1;
            }
        }
        assert_eq!(s.active(), 32);
        // The answered flows are all still there.
        for n in 1..=16 {
            assert!(matches!(
                s.get(&key(n), 0),
                Some((_, FlowState::Established))
            ));
        }
        // The flood got in by dropping older unanswered SYNs, and a new legitimate SYN
        // still finds room.
        assert_eq!(refused, 0);
        assert_eq!(s.early_drops(), 2000 - 16);
        let v = s.insert(key(100), 0, t0 + Duration::from_secs(3)).unwrap();
        assert!(s.accepted(v));
        // Unanswered flows expire after the pending timeout; answered ones stay.
        let later = t0 + Duration::from_secs(3) + crate::dataplane::nat::PENDING_TIMEOUT;
        s.expire(later, Partition::WHOLE);
        assert_eq!(s.pending(), 0);
        assert_eq!(s.active(), 17);
        // A proxy accepting a flow that was dropped learns so.
        let gone = s.insert(spoofed(9999), 0, later).unwrap();
        s.expire(later + Duration::from_secs(11), Partition::WHOLE);
        assert!(!s.accepted(gone));
    }
}
