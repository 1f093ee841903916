//! Endpoint selection: round-robin per Service port, `sessionAffinity: ClientIP` with its
//! timeout, and the ordered list of endpoints a TCP dial tries (the chosen one first, then
//! the next ones in rotation, as kube-proxy's userspace mode retried).
//!
//! Pure state (no locks, no I/O). One instance is shared by all dataplane workers, behind
//! one mutex in [`super::shared::SharedFlows`], taken once per new flow; it survives table
//! swaps (keyed by frontend, and an affinity only holds while its endpoint is still usable).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

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

#[derive(Debug, Default)]
pub struct Balancer {
    next: FxHashMap<Frontend, usize>,
    affinity: FxHashMap<(Frontend, IpAddr), (SocketAddr, Instant)>,
}

impl Balancer {
    pub fn new() -> Self {
        Self::default()
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
                Some(&(ep, last)) if now.saturating_duration_since(last) < timeout => {
                    usable.iter().position(|u| *u == ep)
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
        if port.affinity.is_some() {
            self.affinity.insert((frontend, client), (list[0], now));
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
        if port.affinity.is_some() {
            self.affinity
                .insert(((port.frontend(), port.protocol), client), (endpoint, now));
        }
    }

    /// Forget affinities older than `max_timeout` (the largest timeout any Service uses is
    /// fine; an affinity is also checked against its own Service's timeout on use).
    pub fn expire(&mut self, now: Instant, max_timeout: Duration) {
        self.affinity
            .retain(|_, (_, last)| now.saturating_duration_since(*last) < max_timeout);
    }

    pub fn affinities(&self) -> usize {
        self.affinity.len()
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
        b.expire(t0 + Duration::from_secs(700), Duration::from_secs(600));
        assert_eq!(b.affinities(), 0);
    }

    #[test]
    fn affinity_to_a_removed_endpoint_is_dropped() {
        let mut b = Balancer::new();
        let t0 = Instant::now();
        let a: IpAddr = "1.1.1.1".parse().unwrap();
        let p = port(&["10.0.0.1:80"], Some(600));
        b.pick(&p, a, t0);
        let p2 = port(&["10.0.0.2:80"], Some(600));
        assert_eq!(
            b.pick(&p2, a, t0).unwrap().first(),
            "10.0.0.2:80".parse().unwrap()
        );
    }
}
