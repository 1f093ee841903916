//! The TCP redirect NAT: maps a client's flow `(C:cp → S:sp)` to a virtual source `V:vp`
//! from the inner prefix, so that the rewritten packet `(V:vp → L:lp)` reaches the
//! gateway's own listener and the kernel terminates the client's TCP connection.
//!
//! Pure state: every method takes `now`; no sockets, no tasks, no locks. The workers share
//! the NAT as [`super::shared::SharedFlows`]: [`super::shared::SHARDS`] tables, each one
//! shard of the virtual tuple space behind a mutex of its own. What a table guarantees (and
//! the property tests check):
//! - a virtual tuple `V:vp` is never handed out while it is mapped to another flow;
//! - a virtual tuple is not handed out again within `linger` of its release, so the
//!   gateway's accepted socket for the old flow can sit in TIME_WAIT without a new SYN
//!   landing on it;
//! - active flows never exceed `capacity`; closed flows linger briefly (so the last
//!   FIN/ACK exchange still translates) in a separately bounded set;
//! - a SYN nobody answers (a spoofed source) cannot hold a place for long: unanswered
//!   (pending) flows expire after `pending_timeout`, and when the table is full the oldest
//!   unanswered flow makes room for the new one ("early drop", as conntrack does), so a
//!   SYN flood cannot lock legitimate clients out; flows whose handshake completed are
//!   never dropped for a new one.
//!
//! Its maps are keyed by packet fields and use std's randomly seeded SipHash.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};

/// How long a flow whose SYN went to the listener may wait for the handshake to complete
/// (the proxy to accept it): the listener's SYN-ACK retransmissions at 1, 3 and 7 s fit in;
/// a spoofed SYN's place is free again after it.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(10);

/// First port handed out on a virtual address (below it: well-known ports, left alone).
pub const FIRST_PORT: u16 = 1024;
const PORTS_PER_ADDR: usize = 65536 - FIRST_PORT as usize;

/// A client's flow as it arrives: client address and the Service frontend it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub service: SocketAddr,
}

/// Why a new flow could not be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NatError {
    #[error("the NAT table holds its maximum of active flows")]
    TableFull,
    #[error("every virtual address and port is in use or cooling down")]
    PortsExhausted,
}

impl NatError {
    pub fn label(self) -> &'static str {
        match self {
            NatError::TableFull => "table_full",
            NatError::PortsExhausted => "ports_exhausted",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NatConfig {
    pub inner_v4: Ipv4Net,
    pub inner_v6: Ipv6Net,
    /// Virtual client addresses per family (each gives 64,512 ports).
    pub virtual_addrs: u32,
    /// Active (not yet closed) flows at most.
    pub capacity: usize,
    /// How long a released virtual tuple is not reused (≥ the kernel's TIME_WAIT, 60 s).
    pub linger: Duration,
    /// How long a closed flow keeps translating packets (its last FIN/ACK exchange).
    pub close_grace: Duration,
    /// A flow whose SYN was never accepted by the listener is dropped after this long.
    pub pending_timeout: Duration,
}

impl NatConfig {
    pub fn new(inner_v4: Ipv4Net, inner_v6: Ipv6Net, capacity: usize) -> Self {
        NatConfig {
            inner_v4,
            inner_v6,
            virtual_addrs: 16,
            capacity,
            linger: Duration::from_secs(65),
            close_grace: Duration::from_secs(10),
            pending_timeout: PENDING_TIMEOUT,
        }
    }

    /// The listener address L of each family: the first host address of the inner prefix.
    pub fn listener_v4(&self) -> Ipv4Addr {
        nth_v4(self.inner_v4, 1)
    }

    pub fn listener_v6(&self) -> Ipv6Addr {
        nth_v6(self.inner_v6, 1)
    }

    /// How many virtual addresses fit in the prefixes (L and the network address excluded).
    pub fn validate(&self) -> Result<(), String> {
        let v4_hosts = 1u64 << (32 - self.inner_v4.prefix_len()).min(32);
        let need = u64::from(self.virtual_addrs) + 3;
        if v4_hosts < need {
            return Err(format!(
                "inner IPv4 prefix {} is too small for {} virtual addresses (needs at least /{})",
                self.inner_v4,
                self.virtual_addrs,
                32 - (64 - (need - 1).leading_zeros())
            ));
        }
        if self.inner_v6.prefix_len() > 120 {
            return Err(format!(
                "inner IPv6 prefix {} is too small (at most /120)",
                self.inner_v6
            ));
        }
        if self.virtual_addrs == 0 || self.virtual_addrs > 1024 {
            return Err(format!(
                "virtual addresses must be 1..=1024, not {}",
                self.virtual_addrs
            ));
        }
        Ok(())
    }
}

fn nth_v4(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(n))
}

fn nth_v6(net: Ipv6Net, n: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()).wrapping_add(u128::from(n)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    /// SYN seen, the client has not completed the handshake yet; `syn_ack` is the
    /// listener's initial sequence number once its SYN-ACK went back through the gateway.
    Pending {
        since: Instant,
        syn_ack: Option<u32>,
    },
    /// The client acknowledged the listener's SYN-ACK (it saw it, so the source address is
    /// its own): a real client whose connection waits for the proxy to accept it. Never
    /// dropped to make room for a new flow (a busy proxy may take a while to accept);
    /// still expires with the pending timeout when it is never accepted.
    Answered { since: Instant },
    /// The proxy accepted it and owns the connection.
    Established,
    /// The proxy closed it; translating the last packets until `at + close_grace`.
    Closed { at: Instant },
}

#[derive(Debug, Clone)]
struct Entry {
    key: FlowKey,
    virt: SocketAddr,
    state: FlowState,
}

/// Which part of the virtual tuple space a table allocates from: the tuples whose global
/// index (address number × 64,512 + port − 1,024) is `index` modulo `count`. A table that
/// is one shard of several ([`super::shared::SharedFlows`]) thereby owns its tuples alone,
/// and the shard of a tuple is known from the tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub index: usize,
    pub count: usize,
}

impl Partition {
    pub const WHOLE: Partition = Partition { index: 0, count: 1 };
}

/// The global index of a virtual tuple of `config` (None: not a virtual tuple).
pub fn virtual_index(config: &NatConfig, virt: SocketAddr) -> Option<usize> {
    let offset = match virt.ip() {
        IpAddr::V4(a) if config.inner_v4.contains(&a) => {
            u128::from(u32::from(a).wrapping_sub(u32::from(config.inner_v4.network())))
        }
        IpAddr::V6(a) if config.inner_v6.contains(&a) => {
            u128::from(a).wrapping_sub(u128::from(config.inner_v6.network()))
        }
        _ => return None,
    };
    let addr = usize::try_from(offset.checked_sub(2)?).ok()?;
    if addr >= config.virtual_addrs as usize {
        return None;
    }
    let port = virt.port().checked_sub(FIRST_PORT)? as usize;
    Some(addr * PORTS_PER_ADDR + port)
}

/// Sequential allocator over one family's virtual tuples (those of its partition), with
/// per-tuple release times. Local index `j` is global index `j × count + index`.
#[derive(Debug)]
struct PortSpace {
    addrs: Vec<IpAddr>,
    part: Partition,
    cursor: usize,
    /// Release time of each tuple, in seconds since `epoch` + 1 (0: never released),
    /// wrapping at u16: a wrapped value can only delay reuse, never allow it early.
    released: Vec<u16>,
}

impl PortSpace {
    fn new(addrs: Vec<IpAddr>, part: Partition) -> Self {
        let total = addrs.len() * PORTS_PER_ADDR;
        let n = total.saturating_sub(part.index).div_ceil(part.count.max(1));
        PortSpace {
            addrs,
            part,
            cursor: 0,
            released: vec![0; n],
        }
    }

    fn tuple(&self, local: usize) -> SocketAddr {
        let index = local * self.part.count + self.part.index;
        let addr = self.addrs[index / PORTS_PER_ADDR];
        SocketAddr::new(addr, FIRST_PORT + (index % PORTS_PER_ADDR) as u16)
    }

    fn index_of(&self, virt: SocketAddr) -> Option<usize> {
        let a = self.addrs.iter().position(|a| *a == virt.ip())?;
        let port = virt.port().checked_sub(FIRST_PORT)? as usize;
        let index = a * PORTS_PER_ADDR + port;
        (index % self.part.count == self.part.index).then_some(index / self.part.count)
    }
}

/// A NAT table: all of it for one worker, or one shard of [`super::shared::SharedFlows`].
#[derive(Debug)]
pub struct NatTable {
    config: NatConfig,
    epoch: Instant,
    slots: Vec<Option<Entry>>,
    free_slots: Vec<u32>,
    forward: HashMap<FlowKey, u32>,
    reverse: HashMap<SocketAddr, u32>,
    v4: PortSpace,
    v6: PortSpace,
    active: usize,
    /// Closed flows in the order they closed (slot, generation check by virt).
    closing: VecDeque<(Instant, u32, SocketAddr)>,
    /// Flows in the order they were mapped, while they may still be pending (entries of
    /// flows accepted or gone since are skipped when met; see [`NatTable::compact`]).
    pending: VecDeque<(Instant, u32, SocketAddr)>,
    /// Answered flows not accepted yet that [`NatTable::early_drop`] took off `pending`
    /// (in mapping order too), for the pending timeout.
    answered: VecDeque<(Instant, u32, SocketAddr)>,
    /// Unanswered flows dropped to make room for a new one.
    early_drops: u64,
}

impl NatTable {
    pub fn new(config: NatConfig, now: Instant) -> Self {
        Self::partition(config, Partition::WHOLE, now)
    }

    /// A table that hands out only the virtual tuples of `part`.
    pub fn partition(config: NatConfig, part: Partition, now: Instant) -> Self {
        let n = config.virtual_addrs;
        let v4 = (0..n)
            .map(|i| IpAddr::V4(nth_v4(config.inner_v4, 2 + i)))
            .collect();
        let v6 = (0..n)
            .map(|i| IpAddr::V6(nth_v6(config.inner_v6, 2 + i)))
            .collect();
        NatTable {
            config,
            epoch: now,
            slots: Vec::new(),
            free_slots: Vec::new(),
            forward: HashMap::new(),
            reverse: HashMap::new(),
            v4: PortSpace::new(v4, part),
            v6: PortSpace::new(v6, part),
            active: 0,
            closing: VecDeque::new(),
            pending: VecDeque::new(),
            answered: VecDeque::new(),
            early_drops: 0,
        }
    }

    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// Flows holding (or about to hold) a proxied connection.
    pub fn active(&self) -> usize {
        self.active
    }

    /// All mapped flows, closed ones still lingering included.
    pub fn len(&self) -> usize {
        self.forward.len()
    }

    pub fn is_empty(&self) -> bool {
        self.forward.is_empty()
    }

    /// The virtual tuple of a known flow, and its state.
    pub fn get(&self, key: &FlowKey) -> Option<(SocketAddr, FlowState)> {
        let e = self.entry(*self.forward.get(key)?)?;
        Some((e.virt, e.state))
    }

    /// The original flow behind a virtual tuple (reply direction, and at accept).
    pub fn reverse(&self, virt: &SocketAddr) -> Option<(FlowKey, FlowState)> {
        let e = self.entry(*self.reverse.get(virt)?)?;
        Some((e.key, e.state))
    }

    fn entry(&self, slot: u32) -> Option<&Entry> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// Map a new flow (its SYN was just seen). A flow that is still mapped is replaced
    /// (the client reused its port after closing).
    pub fn insert(&mut self, key: FlowKey, now: Instant) -> Result<SocketAddr, NatError> {
        if let Some(&slot) = self.forward.get(&key) {
            self.remove_slot(slot, now);
        }
        if self.active >= self.config.capacity && !self.early_drop(now) {
            return Err(NatError::TableFull);
        }
        let now_s = self.stamp(now);
        let linger = self.config.linger.as_secs().min(u64::from(u16::MAX) - 1) as u16 + 1;
        let space = if key.client.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        let total = space.released.len();
        let mut found = None;
        for step in 0..total {
            let index = (space.cursor + step) % total;
            let released = space.released[index];
            if released != 0 && now_s.wrapping_sub(released) < linger {
                continue;
            }
            let virt = space.tuple(index);
            if self.reverse.contains_key(&virt) {
                continue;
            }
            space.cursor = (index + 1) % total;
            found = Some(virt);
            break;
        }
        let virt = found.ok_or(NatError::PortsExhausted)?;
        let entry = Entry {
            key,
            virt,
            state: FlowState::Pending {
                since: now,
                syn_ack: None,
            },
        };
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(entry);
                s
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        self.forward.insert(key, slot);
        self.reverse.insert(virt, slot);
        self.active += 1;
        self.pending.push_back((now, slot, virt));
        self.compact();
        Ok(virt)
    }

    /// The state of the flow mapped to `virt` if `slot` still holds it.
    fn state_at(&self, slot: u32, virt: SocketAddr) -> Option<FlowState> {
        self.entry(slot).filter(|e| e.virt == virt).map(|e| e.state)
    }

    /// Whether `slot` still holds the flow mapped to `virt`, unanswered.
    fn is_pending(&self, slot: u32, virt: SocketAddr) -> bool {
        matches!(self.state_at(slot, virt), Some(FlowState::Pending { .. }))
    }

    /// Whether `slot` still holds the flow mapped to `virt`, not accepted yet (unanswered
    /// or answered): one the pending timeout expires.
    fn is_waiting(&self, slot: u32, virt: SocketAddr) -> bool {
        matches!(
            self.state_at(slot, virt),
            Some(FlowState::Pending { .. } | FlowState::Answered { .. })
        )
    }

    /// The listener answered the SYN of the flow mapped to `virt` with initial sequence
    /// number `isn`.
    pub fn syn_ack(&mut self, virt: SocketAddr, isn: u32) {
        if let Some(e) = self.entry_mut(virt) {
            if let FlowState::Pending { syn_ack, .. } = &mut e.state {
                *syn_ack = Some(isn);
            }
        }
    }

    /// The client of the flow mapped to `virt` sent a segment acknowledging `ack`. When
    /// that acknowledges the listener's SYN-ACK the client completed the handshake, and
    /// the flow is answered (see [`FlowState::Answered`]). True when it did.
    pub fn client_ack(&mut self, virt: SocketAddr, ack: u32) -> bool {
        let Some(e) = self.entry_mut(virt) else {
            return false;
        };
        match e.state {
            FlowState::Pending {
                since,
                syn_ack: Some(isn),
            } if ack == isn.wrapping_add(1) => {
                e.state = FlowState::Answered { since };
                true
            }
            _ => false,
        }
    }

    fn entry_mut(&mut self, virt: SocketAddr) -> Option<&mut Entry> {
        let slot = *self.reverse.get(&virt)?;
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Drop the oldest flow still waiting for its handshake, to make room for a new one.
    /// False when every active flow was answered. Answered flows met on the way move to
    /// their own queue, where the pending timeout still finds them.
    pub fn early_drop(&mut self, now: Instant) -> bool {
        while let Some((since, slot, virt)) = self.pending.pop_front() {
            match self.state_at(slot, virt) {
                Some(FlowState::Pending { .. }) => {
                    self.remove_slot(slot, now);
                    self.early_drops += 1;
                    return true;
                }
                Some(FlowState::Answered { .. }) => self.answered.push_back((since, slot, virt)),
                _ => {}
            }
        }
        false
    }

    /// Keep the queues of waiting flows within a small multiple of the mapped flows:
    /// entries of flows accepted or removed since are dropped once they outnumber the
    /// live ones.
    fn compact(&mut self) {
        let bound = 2 * self.forward.len() + 64;
        for queue in [&mut self.pending, &mut self.answered] {
            if queue.len() > bound {
                let slots = &self.slots;
                queue.retain(|&(_, slot, virt)| {
                    slots
                        .get(slot as usize)
                        .and_then(Option::as_ref)
                        .is_some_and(|e| {
                            e.virt == virt
                                && matches!(
                                    e.state,
                                    FlowState::Pending { .. } | FlowState::Answered { .. }
                                )
                        })
                });
            }
        }
    }

    /// Unanswered flows dropped so far to make room for new ones.
    pub fn early_drops(&self) -> u64 {
        self.early_drops
    }

    /// Flows waiting for their handshake to complete.
    pub fn pending_count(&self) -> usize {
        self.pending
            .iter()
            .filter(|&&(_, slot, virt)| self.is_pending(slot, virt))
            .count()
    }

    /// The proxy accepted the connection from `virt`. False when no flow is mapped to it
    /// (its SYN went unanswered so long that it expired or was dropped for a new flow).
    pub fn accepted(&mut self, virt: SocketAddr) -> bool {
        let Some(&slot) = self.reverse.get(&virt) else {
            return false;
        };
        match self.slots[slot as usize].as_mut() {
            Some(e) => {
                if matches!(
                    e.state,
                    FlowState::Pending { .. } | FlowState::Answered { .. }
                ) {
                    e.state = FlowState::Established;
                }
                true
            }
            None => false,
        }
    }

    /// The proxy is done with the connection from `virt`: keep translating for the
    /// close grace, then release.
    pub fn closed(&mut self, virt: SocketAddr, now: Instant) {
        if let Some(&slot) = self.reverse.get(&virt) {
            if let Some(e) = self.slots[slot as usize].as_mut() {
                if !matches!(e.state, FlowState::Closed { .. }) {
                    e.state = FlowState::Closed { at: now };
                    self.active -= 1;
                    self.closing.push_back((now, slot, virt));
                }
            }
        }
        // Bound lingering flows: at most four times the active capacity.
        while self.closing.len() > self.config.capacity.saturating_mul(4).max(64) {
            if let Some((_, slot, v)) = self.closing.pop_front() {
                self.remove_if(slot, v, now);
            }
        }
    }

    /// Drop pending flows that were never accepted and closed flows past their grace.
    /// Returns how many flows were removed.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut removed = 0;
        while let Some(&(at, slot, virt)) = self.closing.front() {
            if now.saturating_duration_since(at) < self.config.close_grace {
                break;
            }
            self.closing.pop_front();
            removed += usize::from(self.remove_if(slot, virt, now));
        }
        // The queues of waiting flows are in mapping order: the expired ones are at their
        // fronts.
        let timeout = self.config.pending_timeout;
        for answered in [false, true] {
            loop {
                let queue = if answered {
                    &mut self.answered
                } else {
                    &mut self.pending
                };
                let Some(&(since, slot, virt)) = queue.front() else {
                    break;
                };
                if now.saturating_duration_since(since) < timeout {
                    break;
                }
                queue.pop_front();
                if self.is_waiting(slot, virt) {
                    self.remove_slot(slot, now);
                    removed += 1;
                }
            }
        }
        removed
    }

    fn remove_if(&mut self, slot: u32, virt: SocketAddr, now: Instant) -> bool {
        match self.entry(slot) {
            Some(e) if e.virt == virt && matches!(e.state, FlowState::Closed { .. }) => {
                self.remove_slot(slot, now);
                true
            }
            _ => false,
        }
    }

    fn remove_slot(&mut self, slot: u32, now: Instant) {
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.forward.remove(&entry.key);
        self.reverse.remove(&entry.virt);
        self.free_slots.push(slot);
        // TIME_WAIT on the gateway's side starts when the proxy closed the socket.
        let released_at = match entry.state {
            FlowState::Closed { at } => at,
            FlowState::Pending { .. } | FlowState::Answered { .. } | FlowState::Established => {
                self.active -= 1;
                now
            }
        };
        let stamp = self.stamp(released_at);
        let space = if entry.virt.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        if let Some(i) = space.index_of(entry.virt) {
            space.released[i] = stamp;
        }
    }

    /// Seconds since the table's epoch + 1, wrapping; never 0.
    fn stamp(&self, t: Instant) -> u16 {
        let s = t.saturating_duration_since(self.epoch).as_secs();
        ((s % (u64::from(u16::MAX))) + 1) as u16
    }

    /// Every mapped flow (for the status page): key, virtual tuple, state.
    pub fn iter(&self) -> impl Iterator<Item = (FlowKey, SocketAddr, FlowState)> + '_ {
        self.slots
            .iter()
            .flatten()
            .map(|e| (e.key, e.virt, e.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn cfg(capacity: usize, addrs: u32) -> NatConfig {
        let mut c = NatConfig::new(
            "198.18.0.0/16".parse().unwrap(),
            "fdc7:7779::/64".parse().unwrap(),
            capacity,
        );
        c.virtual_addrs = addrs;
        c
    }

    fn key(n: u32, v6: bool) -> FlowKey {
        let client = if v6 {
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(
                    0xfd77_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(n >> 16),
                )),
                n as u16,
            )
        } else {
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 + (n >> 16))),
                n as u16,
            )
        };
        let service = if v6 {
            "[fd00:10:96::10]:80".parse().unwrap()
        } else {
            "10.96.0.10:80".parse().unwrap()
        };
        FlowKey { client, service }
    }

    #[test]
    fn listener_and_virtual_addresses_come_from_the_inner_prefix() {
        let c = cfg(10, 4);
        assert_eq!(c.listener_v4(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(c.listener_v6(), "fdc7:7779::1".parse::<Ipv6Addr>().unwrap());
        let t0 = Instant::now();
        let mut t = NatTable::new(c, t0);
        let v = t.insert(key(1, false), t0).unwrap();
        assert_eq!(v, "198.18.0.2:1024".parse().unwrap());
        let v6 = t.insert(key(1, true), t0).unwrap();
        assert_eq!(v6, "[fdc7:7779::2]:1024".parse().unwrap());
        assert_eq!(t.reverse(&v).unwrap().0, key(1, false));
        assert_eq!(t.get(&key(1, true)).unwrap().0, v6);
    }

    #[test]
    fn partitions_hand_out_disjoint_tuples_that_name_their_partition() {
        let c = cfg(100, 2);
        let t0 = Instant::now();
        let mut seen = HashSet::new();
        for index in 0..3 {
            let part = Partition { index, count: 3 };
            let mut t = NatTable::partition(c.clone(), part, t0);
            for n in 0..50 {
                for v6 in [false, true] {
                    let v = t.insert(key(n + 1000 * index as u32, v6), t0).unwrap();
                    assert_eq!(virtual_index(&c, v).unwrap() % 3, index, "{v}");
                    assert!(seen.insert(v), "{v} handed out twice");
                    assert!(t.reverse(&v).is_some());
                }
            }
        }
        assert_eq!(
            virtual_index(&c, "198.18.0.2:1024".parse().unwrap()),
            Some(0)
        );
        assert_eq!(
            virtual_index(&c, "198.18.0.3:1025".parse().unwrap()),
            Some(64_513)
        );
        assert_eq!(virtual_index(&c, "198.18.0.4:1024".parse().unwrap()), None);
        assert_eq!(virtual_index(&c, "198.18.0.1:1024".parse().unwrap()), None);
        assert_eq!(virtual_index(&c, "198.18.0.2:80".parse().unwrap()), None);
        assert_eq!(virtual_index(&c, "10.0.0.2:1024".parse().unwrap()), None);
    }

    #[test]
    fn too_small_inner_prefix_is_refused() {
        let mut c = cfg(10, 16);
        c.inner_v4 = "198.18.0.0/29".parse().unwrap();
        assert!(c.validate().unwrap_err().contains("too small"));
        c.inner_v4 = "198.18.0.0/27".parse().unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn full_table_refuses_new_flows_and_keeps_existing_ones() {
        let t0 = Instant::now();
        let mut t = NatTable::new(cfg(2, 1), t0);
        let a = t.insert(key(1, false), t0).unwrap();
        let b = t.insert(key(2, false), t0).unwrap();
        t.accepted(a);
        t.accepted(b);
        assert_eq!(t.insert(key(3, false), t0), Err(NatError::TableFull));
        assert_eq!(t.get(&key(1, false)).unwrap().0, a);
        // Closing one frees a place for a new flow at once.
        t.accepted(a);
        t.closed(a, t0);
        assert_eq!(t.active(), 1);
        assert!(t.insert(key(3, false), t0).is_ok());
    }

    #[test]
    fn closed_flow_translates_during_grace_then_goes() {
        let t0 = Instant::now();
        let mut t = NatTable::new(cfg(8, 1), t0);
        let v = t.insert(key(1, false), t0).unwrap();
        t.accepted(v);
        t.closed(v, t0);
        t.expire(t0 + Duration::from_secs(5));
        assert!(matches!(t.reverse(&v), Some((_, FlowState::Closed { .. }))));
        t.expire(t0 + Duration::from_secs(11));
        assert!(t.reverse(&v).is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn unaccepted_flows_expire() {
        let t0 = Instant::now();
        let mut t = NatTable::new(cfg(8, 1), t0);
        let v = t.insert(key(1, false), t0).unwrap();
        assert_eq!(t.expire(t0 + Duration::from_secs(9)), 0);
        assert_eq!(t.expire(t0 + Duration::from_secs(11)), 1);
        assert!(t.reverse(&v).is_none());
        assert_eq!(t.active(), 0);
    }

    #[test]
    fn released_tuple_is_not_reused_within_linger() {
        // One virtual address: 64,512 tuples. Fill all but one, release one, and check the
        // released one is skipped until the linger has passed.
        let t0 = Instant::now();
        let mut t = NatTable::new(cfg(70_000, 1), t0);
        let first = t.insert(key(0, false), t0).unwrap();
        for n in 1..PORTS_PER_ADDR as u32 {
            t.insert(key(n, false), t0).unwrap();
        }
        assert_eq!(
            t.insert(key(999_999, false), t0),
            Err(NatError::PortsExhausted)
        );
        t.accepted(first);
        t.closed(first, t0);
        let t1 = t0 + Duration::from_secs(11);
        t.expire(t1);
        assert_eq!(
            t.insert(key(999_999, false), t1),
            Err(NatError::PortsExhausted)
        );
        let t2 = t0 + Duration::from_secs(66);
        assert_eq!(t.insert(key(999_999, false), t2), Ok(first));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Syn(u32, bool),
        Accept(usize),
        Close(usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..64, any::<bool>()).prop_map(|(n, v6)| Op::Syn(n, v6)),
            2 => (0usize..64).prop_map(Op::Accept),
            2 => (0usize..64).prop_map(Op::Close),
            1 => (0u64..40).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// The NAT never hands out a virtual tuple that is in use, nor one released less
        /// than `linger` ago; the maps stay consistent and the active count bounded.
        #[test]
        fn never_hands_out_a_tuple_in_use(ops in prop::collection::vec(op(), 1..300), addrs in 1u32..3) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut t = NatTable::new(cfg(24, addrs), t0);
            let mut handed: Vec<SocketAddr> = Vec::new();
            let mut released: Vec<(SocketAddr, Instant)> = Vec::new();
            for op in ops {
                match op {
                    Op::Syn(n, v6) => {
                        let in_use: HashSet<SocketAddr> = t.iter().map(|(_, v, _)| v).collect();
                        let k = key(n, v6);
                        // A replaced flow that was not closed yet is released now.
                        let old = t.get(&k).filter(|(_, st)| !matches!(st, FlowState::Closed { .. })).map(|(v, _)| v);
                        if let Ok(v) = t.insert(k, now) {
                            prop_assert!(!in_use.contains(&v), "tuple {v} handed out while in use");
                            for (r, at) in &released {
                                prop_assert!(!(*r == v && now.duration_since(*at) < Duration::from_secs(65)), "tuple {v} reused within linger");
                            }
                            handed.push(v);
                        }
                        if let Some(o) = old { released.push((o, now)); }
                    }
                    Op::Accept(i) => if let Some(v) = handed.get(i) { t.accepted(*v); },
                    Op::Close(i) => if let Some(v) = handed.get(i) {
                        if let Some((_, st)) = t.reverse(v) {
                            if !matches!(st, FlowState::Closed { .. }) { released.push((*v, now)); }
                        }
                        t.closed(*v, now)
                    },
                    Op::Advance(s) => {
                        now += Duration::from_secs(s);
                        let before: HashSet<SocketAddr> = t.iter().map(|(_, v, _)| v).collect();
                        t.expire(now);
                        let after: HashSet<SocketAddr> = t.iter().map(|(_, v, _)| v).collect();
                        for gone in before.difference(&after) {
                            if !released.iter().any(|(r, _)| r == gone) { released.push((*gone, now)); }
                        }
                    }
                }
                prop_assert!(t.active() <= 24);
                prop_assert_eq!(t.forward.len(), t.reverse.len());
                for (k, v, _) in t.iter() {
                    prop_assert_eq!(t.reverse(&v).map(|(k2, _)| k2), Some(k));
                    prop_assert_eq!(k.client.is_ipv4(), v.is_ipv4());
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Flood {
        /// A SYN nobody answers (spoofed source); with `Some(ack)`, followed by an ACK
        /// that guesses the listener's sequence number.
        Spoofed(u32, Option<u32>),
        /// A legitimate client: SYN, the listener's SYN-ACK, the client's ACK; accepted by
        /// the proxy at once, or (false) later by [`Flood::Accept`].
        Legit(u32, bool),
        /// The proxy accepts the i-th legitimate flow still waiting.
        Accept(usize),
        Close(usize),
        Advance(u64),
    }

    fn flood_op() -> impl Strategy<Value = Flood> {
        prop_oneof![
            8 => (0u32..100_000, prop::option::of(any::<u32>())).prop_map(|(n, a)| Flood::Spoofed(n, a)),
            2 => (100_000u32..100_050, any::<bool>()).prop_map(|(n, now)| Flood::Legit(n, now)),
            1 => (0usize..8).prop_map(Flood::Accept),
            1 => (0usize..50).prop_map(Flood::Close),
            1 => (0u64..12).prop_map(Flood::Advance),
        ]
    }

    /// The listener's initial sequence number for `virt` (any number the client cannot
    /// know without seeing the SYN-ACK).
    fn isn(virt: SocketAddr) -> u32 {
        0x9e37_79b9u32.wrapping_mul(u32::from(virt.port()) + 1)
    }

    proptest! {
        /// Under any mix of spoofed SYNs (some followed by guessed ACKs), legitimate flows,
        /// late accepts, closes and time: the table stays within its bounds (active ≤
        /// capacity, lingering closed flows ≤ 4 × capacity, the queues of waiting flows
        /// within a small multiple of the mapped flows); a legitimate SYN is refused only
        /// when every active flow completed its handshake; a client that completed its
        /// handshake keeps its flow until the proxy accepts it (within the pending
        /// timeout), however many SYNs arrive meanwhile; no flow waits past the pending
        /// timeout by more than the sweep.
        #[test]
        fn a_syn_flood_never_locks_legitimate_clients_out(ops in prop::collection::vec(flood_op(), 1..600)) {
            let cap = 16;
            let t0 = Instant::now();
            let mut now = t0;
            let mut t = NatTable::new(cfg(cap, 1), t0);
            let mut legit: Vec<SocketAddr> = Vec::new();
            let mut waiting: Vec<(u32, SocketAddr, Instant)> = Vec::new();
            for op in ops {
                match op {
                    Flood::Spoofed(n, ack) => {
                        if let Ok(v) = t.insert(key(n, n % 3 == 0), now) {
                            t.syn_ack(v, isn(v));
                            if let Some(a) = ack.filter(|&a| a != isn(v).wrapping_add(1)) {
                                prop_assert!(!t.client_ack(v, a), "a guessed ACK answered the flow");
                            }
                        }
                    }
                    Flood::Legit(n, accept) => {
                        let answered = t.iter().filter(|(_, _, s)| matches!(s, FlowState::Established | FlowState::Answered { .. })).count();
                        match t.insert(key(n, false), now) {
                            Ok(v) => {
                                // A reused key replaced the flow that waited under it.
                                waiting.retain(|&(m, _, _)| m != n);
                                t.syn_ack(v, isn(v));
                                prop_assert!(t.client_ack(v, isn(v).wrapping_add(1)));
                                if accept {
                                    prop_assert!(t.accepted(v));
                                    legit.push(v);
                                } else {
                                    waiting.push((n, v, now));
                                }
                            }
                            Err(e) => prop_assert!(answered >= cap, "{e} with {answered} answered flows"),
                        }
                    }
                    Flood::Accept(i) => if i < waiting.len() {
                        let (_, v, since) = waiting.remove(i);
                        // Gone only when it waited for the pending timeout.
                        let kept = t.accepted(v);
                        prop_assert!(kept || now.duration_since(since) >= PENDING_TIMEOUT, "answered flow {v} dropped");
                        if kept { legit.push(v); }
                    },
                    Flood::Close(i) => if let Some(v) = legit.get(i) { t.closed(*v, now) },
                    Flood::Advance(s) => {
                        now += Duration::from_secs(s);
                        t.expire(now);
                        for (_, _, st) in t.iter() {
                            if let FlowState::Pending { since, .. } | FlowState::Answered { since } = st {
                                prop_assert!(now.duration_since(since) < PENDING_TIMEOUT);
                            }
                        }
                    }
                }
                // A waiting legitimate flow younger than the timeout is still mapped.
                for (_, v, since) in &waiting {
                    if now.duration_since(*since) < PENDING_TIMEOUT {
                        prop_assert!(matches!(t.reverse(v), Some((_, FlowState::Answered { .. }))), "answered flow {v} dropped");
                    }
                }
                prop_assert!(t.active() <= cap);
                prop_assert!(t.closing.len() <= (cap * 4).max(64));
                prop_assert!(t.pending.len() <= 2 * t.forward.len() + 65);
                prop_assert!(t.answered.len() <= 2 * t.forward.len() + 65);
                prop_assert_eq!(t.forward.len(), t.reverse.len());
            }
        }
    }
}
