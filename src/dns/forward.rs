//! Queries forwarded upstream (`--dns-forward`): a bounded table from the ID used towards
//! the forwarder to the client that asked, with expiry. Pure: the shell passes `now`.
//!
//! IDs towards the forwarder are drawn unpredictably (a keyed hash of a counter), so an
//! off-path sender cannot guess them; a reply must also come from the forwarder's address
//! (the shell checks that) and match an entry still in flight.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Queries in flight to the forwarder at most; past it new ones are dropped (counted).
pub const MAX_IN_FLIGHT: usize = 1024;
/// A forwarded query unanswered for this long is forgotten (the client retries).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Who asked a forwarded query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub client: SocketAddr,
    /// The ID the client used.
    pub client_id: u16,
    /// Which listener socket the query came in on (the reply leaves from it).
    pub listener: usize,
    pub deadline: Instant,
}

#[derive(Debug)]
pub struct InFlight {
    entries: HashMap<u16, Pending>,
    cap: usize,
    timeout: Duration,
    keys: RandomState,
    counter: u64,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight::new(MAX_IN_FLIGHT, FORWARD_TIMEOUT)
    }
}

impl InFlight {
    pub fn new(cap: usize, timeout: Duration) -> Self {
        InFlight {
            entries: HashMap::new(),
            // At most the ID space.
            cap: cap.min(usize::from(u16::MAX)),
            timeout,
            keys: RandomState::new(),
            counter: 0,
        }
    }

    /// Records a query and returns the ID to send it with, or `None` when the table is
    /// full (after expiring what is due).
    pub fn insert(
        &mut self,
        client: SocketAddr,
        client_id: u16,
        listener: usize,
        now: Instant,
    ) -> Option<u16> {
        if self.entries.len() >= self.cap {
            self.expire(now);
            if self.entries.len() >= self.cap {
                return None;
            }
        }
        // The table is less than full, so a free ID turns up quickly.
        loop {
            self.counter = self.counter.wrapping_add(1);
            let id = (self.keys.hash_one(self.counter) & 0xffff) as u16;
            if let std::collections::hash_map::Entry::Vacant(v) = self.entries.entry(id) {
                v.insert(Pending {
                    client,
                    client_id,
                    listener,
                    deadline: now + self.timeout,
                });
                return Some(id);
            }
        }
    }

    /// The query a reply with this ID answers (removed), if still in flight.
    pub fn take(&mut self, id: u16, now: Instant) -> Option<Pending> {
        let p = self.entries.remove(&id)?;
        (p.deadline > now).then_some(p)
    }

    /// Forgets queries past their deadline; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, p| p.deadline > now);
        before - self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn bounded_with_expiry_and_single_use() {
        let t0 = Instant::now();
        let mut f = InFlight::new(3, Duration::from_secs(5));
        let a = f.insert(client(1), 11, 0, t0).unwrap();
        let b = f.insert(client(2), 22, 1, t0).unwrap();
        let _c = f.insert(client(3), 33, 0, t0).unwrap();
        assert_ne!(a, b);
        // Full.
        assert_eq!(f.insert(client(4), 44, 0, t0), None);
        // A reply is taken once.
        let p = f.take(b, t0).unwrap();
        assert_eq!((p.client, p.client_id, p.listener), (client(2), 22, 1));
        assert_eq!(f.take(b, t0), None);
        assert!(f.insert(client(4), 44, 0, t0).is_some());
        // After the timeout everything is gone, and a late reply matches nothing.
        let later = t0 + Duration::from_secs(6);
        assert_eq!(f.take(a, later), None);
        assert_eq!(f.expire(later), 2);
        assert!(f.is_empty());
        // A full table expires what is due before it refuses.
        for i in 0..3 {
            f.insert(client(10 + i), i, 0, t0).unwrap();
        }
        assert!(f.insert(client(5), 55, 0, later).is_some());
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn ids_are_unique_among_those_in_flight() {
        let t0 = Instant::now();
        let mut f = InFlight::new(1000, Duration::from_secs(5));
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000u16 {
            let id = f.insert(client(i), i, 0, t0).unwrap();
            assert!(seen.insert(id));
        }
        assert_eq!(f.len(), 1000);
        assert_eq!(f.insert(client(1), 1, 0, t0), None);
    }
}
