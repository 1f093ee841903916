//! The UDP flow table: one flow per (client, Service frontend), each bound to one endpoint
//! and to a handle the worker owns (its connected socket and reply task). Bounded; a flow
//! ends when idle in both directions for the idle timeout, or when its endpoint leaves
//! the table. When it is full, the flow whose client has been quiet longest makes room for
//! a new one ([`UdpFlows::evict_quietest`]): a flood of datagrams from spoofed sources
//! (each a flow of its own, and answered by the endpoint, so "unanswered" tells nothing)
//! then pushes out its own oldest flows instead of locking new clients out. Pure: `now`
//! in, handles out; the worker drops the handles it gets back. The map is keyed by packet
//! fields and uses std's randomly seeded SipHash.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::nat::FlowKey;
use crate::cluster::table::{Lookup, Protocol, ServicePort, ServiceTable};

#[derive(Debug)]
pub struct UdpFlow<T> {
    pub handle: T,
    pub port: Arc<ServicePort>,
    pub endpoint: SocketAddr,
    pub created: Instant,
    last_seen: Instant,
}

#[derive(Debug)]
pub struct UdpFlows<T> {
    flows: HashMap<FlowKey, UdpFlow<T>>,
    capacity: usize,
    idle: Duration,
    /// Flows by the client's last datagram as it was when queued, oldest first (lazily:
    /// a flow touched since is queued again when met; entries of removed flows skipped).
    order: VecDeque<(FlowKey, Instant)>,
}

impl<T> UdpFlows<T> {
    pub fn new(capacity: usize, idle: Duration) -> Self {
        UdpFlows {
            flows: HashMap::new(),
            capacity,
            idle,
            order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_full(&self) -> bool {
        self.flows.len() >= self.capacity
    }

    pub fn contains(&self, key: &FlowKey) -> bool {
        self.flows.contains_key(key)
    }

    /// A datagram from the client: refresh the flow and return its handle.
    pub fn touch(&mut self, key: &FlowKey, now: Instant) -> Option<&T> {
        let f = self.flows.get_mut(key)?;
        f.last_seen = now;
        Some(&f.handle)
    }

    /// Insert a flow; replaces (and drops) an existing one for the same key. The caller
    /// checked [`is_full`](Self::is_full) first; an insert past capacity is refused and
    /// the handle given back.
    pub fn insert(
        &mut self,
        key: FlowKey,
        handle: T,
        port: Arc<ServicePort>,
        endpoint: SocketAddr,
        now: Instant,
    ) -> Option<T> {
        if self.flows.len() >= self.capacity && !self.flows.contains_key(&key) {
            return Some(handle);
        }
        self.flows.insert(
            key,
            UdpFlow {
                handle,
                port,
                endpoint,
                created: now,
                last_seen: now,
            },
        );
        self.order.push_back((key, now));
        if self.order.len() > 2 * self.flows.len() + 64 {
            let flows = &self.flows;
            self.order.retain(|(k, _)| flows.contains_key(k));
        }
        None
    }

    /// Remove the flow whose client sent its last datagram longest ago, to make room for a
    /// new one; its handle is given back (None: the table is empty).
    pub fn evict_quietest(&mut self) -> Option<T> {
        while let Some((key, queued)) = self.order.pop_front() {
            let Some(f) = self.flows.get(&key) else {
                continue;
            };
            if f.last_seen > queued {
                // Heard from since it was queued: its turn comes later.
                self.order.push_back((key, f.last_seen));
                continue;
            }
            return self.flows.remove(&key).map(|f| f.handle);
        }
        None
    }

    /// Remove flows idle in both directions for the idle timeout. `last_reply` reads the
    /// last time the flow's socket received a reply (kept by the reply task).
    pub fn expire(&mut self, now: Instant, last_reply: impl Fn(&T) -> Option<Instant>) -> Vec<T> {
        let idle = self.idle;
        let expired: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, f)| {
                let last = match last_reply(&f.handle) {
                    Some(r) if r > f.last_seen => r,
                    _ => f.last_seen,
                };
                now.saturating_duration_since(last) >= idle
            })
            .map(|(k, _)| *k)
            .collect();
        expired
            .iter()
            .filter_map(|k| self.flows.remove(k))
            .map(|f| f.handle)
            .collect()
    }

    /// Keep only flows whose endpoint is still usable for their frontend in `table`.
    pub fn retain_usable(&mut self, table: &ServiceTable) {
        self.flows.retain(|k, f| {
            match table.lookup(k.service.ip(), k.service.port(), Protocol::Udp) {
                Lookup::Port(p) => p.usable.contains(&f.endpoint),
                _ => false,
            }
        });
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &UdpFlow<T>)> {
        self.flows.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::ServiceEntry;

    fn port(usable: &[&str]) -> Arc<ServicePort> {
        Arc::new(ServicePort::for_test(
            "kube-system",
            "dns",
            Protocol::Udp,
            "10.96.0.10:53",
            usable,
        ))
    }

    fn key(p: u16) -> FlowKey {
        FlowKey {
            client: SocketAddr::new("192.168.1.5".parse().unwrap(), p),
            service: "10.96.0.10:53".parse().unwrap(),
        }
    }

    #[test]
    fn bounded_and_idle_in_both_directions() {
        let t0 = Instant::now();
        let mut f: UdpFlows<u32> = UdpFlows::new(2, Duration::from_secs(30));
        let p = port(&["10.244.0.5:53"]);
        assert!(f.insert(key(1), 1, p.clone(), p.usable[0], t0).is_none());
        assert!(f.insert(key(2), 2, p.clone(), p.usable[0], t0).is_none());
        assert!(f.is_full());
        assert_eq!(f.insert(key(3), 3, p.clone(), p.usable[0], t0), Some(3));
        // Flow 1 got a reply at t0+20: not idle at t0+31; flow 2 is.
        let gone = f.expire(t0 + Duration::from_secs(31), |h| {
            (*h == 1).then(|| t0 + Duration::from_secs(20))
        });
        assert_eq!(gone, vec![2]);
        assert_eq!(f.touch(&key(1), t0 + Duration::from_secs(40)), Some(&1));
        assert!(f.expire(t0 + Duration::from_secs(60), |_| None).is_empty());
        assert_eq!(f.expire(t0 + Duration::from_secs(71), |_| None), vec![1]);
    }

    #[test]
    fn flows_to_removed_endpoints_end_with_the_table() {
        let t0 = Instant::now();
        let mut f: UdpFlows<u32> = UdpFlows::new(8, Duration::from_secs(30));
        let p = port(&["10.244.0.5:53", "10.244.1.7:53"]);
        f.insert(key(1), 1, p.clone(), p.usable[0], t0);
        f.insert(key(2), 2, p.clone(), p.usable[1], t0);
        let id = p.service.clone();
        let entry = ServiceEntry {
            id,
            cluster_ips: vec![p.cluster_ip],
            type_: "ClusterIP".into(),
            ports: vec![port(&["10.244.1.7:53"])],
            not_exposed: None,
            unsupported_ports: vec![],
        };
        let table = ServiceTable::new(2, vec![entry], vec![]);
        f.retain_usable(&table);
        assert!(!f.contains(&key(1)));
        assert!(f.contains(&key(2)));
        f.retain_usable(&ServiceTable::default());
        assert!(f.is_empty());
    }

    #[test]
    fn a_full_table_makes_room_by_dropping_the_flow_quiet_longest() {
        let t0 = Instant::now();
        let mut f: UdpFlows<u32> = UdpFlows::new(3, Duration::from_secs(30));
        let p = port(&["10.244.0.5:53"]);
        for n in 1..=3u16 {
            f.insert(
                key(n),
                u32::from(n),
                p.clone(),
                p.usable[0],
                t0 + Duration::from_secs(u64::from(n)),
            );
        }
        // Flow 1 is the oldest, but its client spoke last.
        f.touch(&key(1), t0 + Duration::from_secs(10));
        assert_eq!(f.evict_quietest(), Some(2));
        assert_eq!(f.evict_quietest(), Some(3));
        assert_eq!(f.evict_quietest(), Some(1));
        assert_eq!(f.evict_quietest(), None);
    }

    use proptest::prelude::*;

    proptest! {
        /// Any mix of new one-datagram flows (a flood, evicting when full as the engine
        /// does), removals by the table and expiry keeps the table within its capacity and
        /// its eviction queue within a small multiple of it, and a client that speaks
        /// between any two new flows is never the one evicted (the queue is a "second
        /// chance" clock: the flood pushes out its own flows).
        #[test]
        fn bounded_and_a_speaking_client_is_never_evicted(ops in prop::collection::vec((0u8..4, 0u16..200, 0u64..5), 1..500)) {
            let cap = 8;
            let t0 = Instant::now();
            let mut now = t0;
            let mut f: UdpFlows<u16> = UdpFlows::new(cap, Duration::from_secs(30));
            let p = port(&["10.244.0.5:53"]);
            // Client port 999 speaks between any two operations.
            let chatty = key(999);
            f.insert(chatty, 999, p.clone(), p.usable[0], now);
            for (kind, n, secs) in ops {
                now += Duration::from_millis(secs * 100 + 1);
                if f.touch(&chatty, now).is_none() {
                    // The table or expiry removed it (not an eviction): it comes back.
                    f.insert(chatty, 999, p.clone(), p.usable[0], now);
                }
                match kind {
                    0 | 1 => {
                        // The others are a flood: one datagram per flow, never another.
                        if !f.contains(&key(n)) {
                            if f.is_full() {
                                let gone = f.evict_quietest().unwrap();
                                prop_assert_ne!(gone, 999, "the speaking client was evicted");
                                prop_assert!(!f.contains(&key(gone)));
                            }
                            prop_assert!(f.insert(key(n), n, p.clone(), p.usable[0], now).is_none());
                        }
                    }
                    2 => { f.expire(now, |_| None); }
                    _ => { f.flows.remove(&key(n % 200)); }
                }
                prop_assert!(f.len() <= cap);
                prop_assert!(f.order.len() <= 2 * f.len() + 65);
            }
        }
    }
}
