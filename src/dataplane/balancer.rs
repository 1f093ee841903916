//! Endpoint selection: round-robin per Service port, `sessionAffinity: ClientIP` with its
//! timeout, and the ordered list of endpoints a TCP dial tries (the chosen one first, then
//! the next ones in rotation, as kube-proxy's userspace mode retried).
//!
//! Pure state, shared by the workers behind one mutex (`shared`), taken once per new flow;
//! survives table swaps (keyed by frontend, and an affinity only holds while its endpoint
//! is still usable).
//!
//! Affinities are keyed by what a client controls (its address), so they are bounded: one
//! is recorded only when a flow was served (a TCP dial that succeeded, a UDP flow opened),
//! never for a flow that was refused or whose handshake never completed (a spoofed SYN);
//! each expires after its own Service's `timeoutSeconds`; at most [`AFFINITY_CAPACITY`]
//! are kept, and past that a new client is balanced without one (counted). The maps use
//! std's randomly seeded SipHash: a client cannot aim its addresses at one bucket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::cluster::table::{Protocol, ServicePort};

/// Most endpoints one new connection tries before the client sees a failure.
pub const MAX_ATTEMPTS: usize = 4;

/// Endpoints to try, best first. Fixed size: no allocation per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidates {
    list: [SocketAddr; MAX_ATTEMPTS],
    len: u8,
}

impl Candidates {
    pub fn one(addr: SocketAddr) -> Self {
        Candidates {
            list: [addr; MAX_ATTEMPTS],
            len: 1,
        }
    }

    pub fn as_slice(&self) -> &[SocketAddr] {
        &self.list[..usize::from(self.len)]
    }

    pub fn first(&self) -> SocketAddr {
        self.list[0]
    }
}

type Frontend = (SocketAddr, Protocol);

/// ClientIP affinities kept at most (a few MiB).
pub const AFFINITY_CAPACITY: usize = 65_536;

/// A client's endpoint, when it last served, and its Service's timeout then.
#[derive(Debug, Clone, Copy)]
struct Affinity {
    endpoint: SocketAddr,
    last: Instant,
    timeout: Duration,
}

impl Affinity {
    fn live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) < self.timeout
    }
}

#[derive(Debug)]
pub struct Balancer {
    next: HashMap<Frontend, usize>,
    affinity: HashMap<(Frontend, IpAddr), Affinity>,
    capacity: usize,
    /// Affinities not recorded because the table was full of live ones.
    refused: u64,
    /// When a full table was last swept for expired entries (at most once a second).
    last_sweep: Option<Instant>,
}

impl Default for Balancer {
    fn default() -> Self {
        Self::with_capacity(AFFINITY_CAPACITY)
    }
}

impl Balancer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A balancer keeping at most `capacity` affinities.
    pub fn with_capacity(capacity: usize) -> Self {
        Balancer {
            next: HashMap::new(),
            affinity: HashMap::new(),
            capacity,
            refused: 0,
            last_sweep: None,
        }
    }

    /// Choose endpoints for a new flow from `client` to `port`. `None` when the port has no
    /// usable endpoint.
    pub fn pick(&mut self, port: &ServicePort, client: IpAddr, now: Instant) -> Option<Candidates> {
        let usable = &port.usable;
        if usable.is_empty() {
            return None;
        }
        let frontend = (port.frontend(), port.protocol);
        let start = match port.affinity {
            Some(timeout) => match self.affinity.get(&(frontend, client)) {
                Some(a) if a.live(now) && now.saturating_duration_since(a.last) < timeout => {
                    usable.iter().position(|u| *u == a.endpoint)
                }
                _ => None,
            },
            None => None,
        };
        let start = match start {
            Some(i) => i,
            None => {
                let n = self.next.entry(frontend).or_insert(0);
                let i = *n % usable.len();
                *n = n.wrapping_add(1);
                i
            }
        };
        let len = usable.len().min(MAX_ATTEMPTS);
        let mut list = [usable[start]; MAX_ATTEMPTS];
        for (k, slot) in list.iter_mut().enumerate().take(len) {
            *slot = usable[(start + k) % usable.len()];
        }
        Some(Candidates {
            list,
            len: len as u8,
        })
    }

    /// A flow from `client` was served by `endpoint` (the dial that succeeded, or a UDP
    /// datagram): refresh the affinity so the next flow goes there too.
    pub fn served(
        &mut self,
        port: &ServicePort,
        client: IpAddr,
        endpoint: SocketAddr,
        now: Instant,
    ) {
        let Some(timeout) = port.affinity else {
            return;
        };
        let key = ((port.frontend(), port.protocol), client);
        let entry = Affinity {
            endpoint,
            last: now,
            timeout,
        };
        if let Some(a) = self.affinity.get_mut(&key) {
            *a = entry;
            return;
        }
        if self.affinity.len() >= self.capacity {
            let swept_lately = self
                .last_sweep
                .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
            if !swept_lately {
                self.last_sweep = Some(now);
                self.expire(now);
            }
            if self.affinity.len() >= self.capacity {
                self.refused += 1;
                return;
            }
        }
        self.affinity.insert(key, entry);
    }

    /// Forget affinities past their own Service's timeout.
    pub fn expire(&mut self, now: Instant) {
        self.affinity.retain(|_, a| a.live(now));
    }

    pub fn affinities(&self) -> usize {
        self.affinity.len()
    }

    /// Affinities not recorded because the table was full.
    pub fn affinities_refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(usable: &[&str], affinity: Option<u64>) -> ServicePort {
        ServicePort {
            affinity: affinity.map(Duration::from_secs),
            ..ServicePort::for_test("shop", "web", Protocol::Tcp, "10.96.0.10:80", usable)
        }
    }

    #[test]
    fn round_robin_rotates_and_lists_the_next_endpoints() {
        let p = port(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], None);
        let mut b = Balancer::new();
        let now = Instant::now();
        let c = "1.1.1.1".parse().unwrap();
        let firsts: Vec<String> = (0..6)
            .map(|_| b.pick(&p, c, now).unwrap().first().to_string())
            .collect();
        assert_eq!(
            firsts,
            [
                "10.0.0.1:80",
                "10.0.0.2:80",
                "10.0.0.3:80",
                "10.0.0.1:80",
                "10.0.0.2:80",
                "10.0.0.3:80"
            ]
        );
        let c2 = b.pick(&p, c, now).unwrap();
        let all: Vec<String> = c2.as_slice().iter().map(|a| a.to_string()).collect();
        assert_eq!(all, ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
    }

    #[test]
    fn at_most_four_attempts() {
        let eps: Vec<String> = (1..=9).map(|i| format!("10.0.0.{i}:80")).collect();
        let refs: Vec<&str> = eps.iter().map(String::as_str).collect();
        let p = port(&refs, None);
        let c = Balancer::new()
            .pick(&p, "1.1.1.1".parse().unwrap(), Instant::now())
            .unwrap();
        assert_eq!(c.as_slice().len(), MAX_ATTEMPTS);
    }

    #[test]
    fn no_usable_endpoint_is_none() {
        assert!(Balancer::new()
            .pick(&port(&[], None), "1.1.1.1".parse().unwrap(), Instant::now())
            .is_none());
    }

    #[test]
    fn client_ip_affinity_sticks_until_timeout_and_follows_the_served_endpoint() {
        let p = port(&["10.0.0.1:80", "10.0.0.2:80"], Some(600));
        let mut b = Balancer::new();
        let t0 = Instant::now();
        let a: IpAddr = "1.1.1.1".parse().unwrap();
        let other: IpAddr = "2.2.2.2".parse().unwrap();
        let first = b.pick(&p, a, t0).unwrap().first();
        // Nothing is recorded until the flow is served.
        assert_eq!(b.affinities(), 0);
        b.served(&p, a, first, t0);
        for _ in 0..5 {
            b.pick(&p, other, t0);
            assert_eq!(
                b.pick(&p, a, t0 + Duration::from_secs(10)).unwrap().first(),
                first
            );
        }
        // The dial to `first` failed and the other endpoint served: stick to that one.
        let second = "10.0.0.2:80".parse().unwrap();
        b.served(&p, a, second, t0);
        assert_eq!(
            b.pick(&p, a, t0 + Duration::from_secs(1)).unwrap().first(),
            second
        );
        // After the timeout, round-robin decides again and the affinity is renewed.
        b.expire(t0 + Duration::from_secs(700));
        assert_eq!(b.affinities(), 0);
    }

    #[test]
    fn affinity_to_a_removed_endpoint_is_dropped() {
        let mut b = Balancer::new();
        let t0 = Instant::now();
        let a: IpAddr = "1.1.1.1".parse().unwrap();
        let p = port(&["10.0.0.1:80"], Some(600));
        let first = b.pick(&p, a, t0).unwrap().first();
        b.served(&p, a, first, t0);
        let p2 = port(&["10.0.0.2:80"], Some(600));
        assert_eq!(
            b.pick(&p2, a, t0).unwrap().first(),
            "10.0.0.2:80".parse().unwrap()
        );
    }

    #[test]
    fn each_affinity_expires_with_its_own_services_timeout() {
        let mut b = Balancer::new();
        let t0 = Instant::now();
        let a: IpAddr = "1.1.1.1".parse().unwrap();
        let short = port(&["10.0.0.1:80", "10.0.0.2:80"], Some(10));
        let mut long = port(&["10.0.0.1:80", "10.0.0.2:80"], Some(3600));
        long.cluster_ip = "10.96.0.11".parse().unwrap();
        b.served(&short, a, "10.0.0.2:80".parse().unwrap(), t0);
        b.served(&long, a, "10.0.0.2:80".parse().unwrap(), t0);
        b.expire(t0 + Duration::from_secs(11));
        assert_eq!(b.affinities(), 1);
        b.expire(t0 + Duration::from_secs(3601));
        assert_eq!(b.affinities(), 0);
    }

    #[test]
    fn a_full_affinity_table_makes_room_from_expired_entries_or_refuses() {
        let mut b = Balancer::with_capacity(2);
        let t0 = Instant::now();
        let p = port(&["10.0.0.1:80"], Some(10));
        let ep = "10.0.0.1:80".parse().unwrap();
        let c = |n: u8| IpAddr::from([10, 0, 9, n]);
        b.served(&p, c(1), ep, t0);
        b.served(&p, c(2), ep, t0);
        b.served(&p, c(3), ep, t0 + Duration::from_secs(1));
        assert_eq!(b.affinities(), 2);
        assert_eq!(b.affinities_refused(), 1);
        // Refreshing a known client is always possible.
        b.served(&p, c(1), ep, t0 + Duration::from_secs(5));
        // Once the others expired, a full table makes room for a new client.
        b.served(&p, c(4), ep, t0 + Duration::from_secs(12));
        assert_eq!(b.affinities(), 2);
        assert_eq!(b.affinities_refused(), 1);
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever clients do (picks that are never served, as a spoofed SYN's; served
        /// flows; time passing), the affinities stay within the bound, only served clients
        /// hold one, and none outlives its timeout.
        #[test]
        fn affinities_stay_bounded_and_only_served_clients_hold_one(
            ops in prop::collection::vec((0u8..3, 0u16..64, 0u64..20), 1..400),
        ) {
            let cap = 16;
            let mut b = Balancer::with_capacity(cap);
            let p = port(&["10.0.0.1:80", "10.0.0.2:80"], Some(30));
            let t0 = Instant::now();
            let mut now = t0;
            let mut served: HashMap<IpAddr, Instant> = HashMap::new();
            for (kind, n, secs) in ops {
                let client = IpAddr::from([10, 1, (n >> 8) as u8, n as u8]);
                match kind {
                    0 => { b.pick(&p, client, now); }
                    1 => {
                        let ep = b.pick(&p, client, now).unwrap().first();
                        b.served(&p, client, ep, now);
                        served.insert(client, now);
                    }
                    _ => { now += Duration::from_secs(secs); b.expire(now); }
                }
                prop_assert!(b.affinities() <= cap);
                for ((_, ip), a) in &b.affinity {
                    prop_assert!(served.contains_key(ip), "{ip} holds an affinity it was never served");
                    prop_assert!(now.saturating_duration_since(a.last) < Duration::from_secs(30) || kind != 2);
                }
            }
        }
    }
}
