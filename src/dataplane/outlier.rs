//! Passive outlier ejection for offloaded flows: an endpoint whose flows fail (reset or
//! unanswered before they were established, as conntrack reports them) is left out of new
//! flows for a while. It replaces the proxy's dial retries, which offload cannot do: the
//! first flow to a dead endpoint fails, the next ones go elsewhere.
//!
//! Policy: each failure ejects the endpoint for [`BASE`], doubled for every further
//! failure while it is ejected or soon after, up to [`MAX`]; an established flow clears
//! its record. Ejection never leaves a Service without endpoints: when every candidate is
//! ejected, the first is used anyway (as Envoy's panic threshold does).
//!
//! Owns: the ejection records, at most [`CAPACITY`] endpoints (the oldest records go
//! first when it is full). Pure: every call takes `now`. Read by the engines once per new
//! offloaded flow, written by the conntrack event reader once per outcome.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::balancer::Candidates;

/// Ejection after one failure.
pub const BASE: Duration = Duration::from_secs(5);
/// Longest ejection.
pub const MAX: Duration = Duration::from_secs(120);
/// Endpoints with a record at most.
pub const CAPACITY: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Record {
    until: Instant,
    /// The current ejection's length (doubles with each failure).
    length: Duration,
}

/// The ejection records, shared by the engines and the event reader.
#[derive(Debug, Default)]
pub struct Outliers {
    records: Mutex<HashMap<SocketAddr, Record>>,
    /// Records held (read without the lock: nothing ejected, nothing to look up).
    len: AtomicUsize,
}

impl Outliers {
    pub fn new() -> Outliers {
        Outliers::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A flow to `endpoint` failed at `now`: eject it (longer when it failed again soon
    /// after an ejection). Returns how long.
    pub fn failed(&self, endpoint: SocketAddr, now: Instant) -> Duration {
        let mut map = self.lock();
        if map.len() >= CAPACITY && !map.contains_key(&endpoint) {
            map.retain(|_, r| r.until > now);
            if map.len() >= CAPACITY {
                if let Some(oldest) = map.iter().min_by_key(|(_, r)| r.until).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let length = match map.get(&endpoint) {
            // Failing again within its last ejection's length after it ended: double.
            Some(r) if now < r.until + r.length => (r.length * 2).min(MAX),
            _ => BASE,
        };
        map.insert(
            endpoint,
            Record {
                until: now + length,
                length,
            },
        );
        self.len.store(map.len(), Ordering::Relaxed);
        length
    }

    /// A flow to `endpoint` was established: forget its failures.
    pub fn succeeded(&self, endpoint: SocketAddr) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut map = self.lock();
        map.remove(&endpoint);
        self.len.store(map.len(), Ordering::Relaxed);
    }

    /// Whether `endpoint` is ejected at `now`.
    pub fn is_ejected(&self, endpoint: SocketAddr, now: Instant) -> bool {
        self.len.load(Ordering::Relaxed) > 0
            && self.lock().get(&endpoint).is_some_and(|r| r.until > now)
    }

    /// The endpoint a new flow goes to: the first candidate not ejected, else the first.
    pub fn choose(&self, candidates: &Candidates, now: Instant) -> SocketAddr {
        if self.len.load(Ordering::Relaxed) == 0 {
            return candidates.first();
        }
        let map = self.lock();
        candidates
            .as_slice()
            .iter()
            .copied()
            .find(|c| map.get(c).is_none_or(|r| r.until <= now))
            .unwrap_or(candidates.first())
    }

    /// Endpoints ejected at `now`.
    pub fn ejected(&self, now: Instant) -> usize {
        if self.len.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.lock().values().filter(|r| r.until > now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::{Protocol, ServicePort};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn candidates(eps: &[&str]) -> Candidates {
        let port = ServicePort::for_test("t", "web", Protocol::Tcp, "10.96.0.10:80", eps);
        crate::dataplane::balancer::Balancer::new()
            .pick(&port, "192.168.77.2".parse().unwrap(), Instant::now())
            .unwrap()
    }

    #[test]
    fn a_failed_endpoint_is_skipped_until_its_ejection_ends() {
        let o = Outliers::new();
        let t0 = Instant::now();
        let c = candidates(&["10.244.1.10:8080", "10.244.2.10:8080"]);
        let first = c.first();
        assert_eq!(o.choose(&c, t0), first);
        assert_eq!(o.failed(first, t0), BASE);
        assert!(o.is_ejected(first, t0));
        assert_ne!(o.choose(&c, t0), first);
        assert_eq!(o.ejected(t0), 1);
        // Over: chosen again.
        assert_eq!(o.choose(&c, t0 + BASE), first);
        assert_eq!(o.ejected(t0 + BASE), 0);
    }

    #[test]
    fn repeated_failures_double_up_to_the_cap_and_a_success_clears() {
        let o = Outliers::new();
        let ep = sa("10.244.1.10:8080");
        let mut t = Instant::now();
        let mut lengths = Vec::new();
        for _ in 0..7 {
            let d = o.failed(ep, t);
            lengths.push(d.as_secs());
            t += d; // fails again right when the ejection ends
        }
        assert_eq!(lengths, [5, 10, 20, 40, 80, 120, 120]);
        o.succeeded(ep);
        assert!(!o.is_ejected(ep, t));
        assert_eq!(o.failed(ep, t), BASE);
        // A failure long after the last ejection starts over.
        let later = t + Duration::from_secs(3600);
        assert_eq!(o.failed(ep, later), BASE);
    }

    #[test]
    fn when_every_candidate_is_ejected_the_first_is_used() {
        let o = Outliers::new();
        let t0 = Instant::now();
        let c = candidates(&["10.244.1.10:8080", "10.244.2.10:8080"]);
        for ep in c.as_slice() {
            o.failed(*ep, t0);
        }
        assert_eq!(o.choose(&c, t0), c.first());
    }

    #[test]
    fn the_records_stay_bounded() {
        let o = Outliers::new();
        let t0 = Instant::now();
        for i in 0..(CAPACITY as u32 + 100) {
            let ep = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 80));
            o.failed(ep, t0 + Duration::from_millis(u64::from(i)));
        }
        assert!(o.lock().len() <= CAPACITY);
    }
}
