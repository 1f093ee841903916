//! Queries forwarded upstream (`--dns-forward`): a bounded table from the ID used towards
//! the forwarder to the client that asked, with expiry. Pure: the shell passes `now`.
//!
//! IDs towards the forwarder are drawn unpredictably (a keyed hash of a counter), so an
//! off-path sender cannot guess them; a reply must also come from the forwarder's address
//! (the shell checks that) and match an entry still in flight.
//!
//! One client address holds at most [`MAX_IN_FLIGHT_PER_CLIENT`] entries, so a client that
//! asks for names the forwarder is slow to resolve cannot take every entry from the others.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::stats::DropReason;
use super::PerClient;

/// Queries in flight to the forwarder at most; past it new ones are dropped (counted).
pub const MAX_IN_FLIGHT: usize = 1024;
/// Queries in flight from one client address at most; past it its new ones are dropped
/// (counted).
pub const MAX_IN_FLIGHT_PER_CLIENT: usize = 128;
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
    /// Entries per client address.
    per_client: PerClient,
    cap: usize,
    per_client_cap: usize,
    timeout: Duration,
    keys: RandomState,
    counter: u64,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight::new(MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_CLIENT, FORWARD_TIMEOUT)
    }
}

impl InFlight {
    pub fn new(cap: usize, per_client_cap: usize, timeout: Duration) -> Self {
        InFlight {
            entries: HashMap::new(),
            per_client: PerClient::default(),
            // At most the ID space.
            cap: cap.min(usize::from(u16::MAX)),
            per_client_cap,
            timeout,
            keys: RandomState::new(),
            counter: 0,
        }
    }

    /// Records a query and returns the ID to send it with, or why not: the table is full,
    /// or this client holds its share (after expiring what is due).
    pub fn insert(
        &mut self,
        client: SocketAddr,
        client_id: u16,
        listener: usize,
        now: Instant,
    ) -> Result<u16, DropReason> {
        let ip = client.ip().to_canonical();
        let full = |f: &Self| {
            if f.entries.len() >= f.cap {
                Some(DropReason::ForwardTableFull)
            } else if f.per_client.held(ip) >= f.per_client_cap {
                Some(DropReason::ForwardClientLimit)
            } else {
                None
            }
        };
        if full(self).is_some() {
            self.expire(now);
            if let Some(why) = full(self) {
                return Err(why);
            }
        }
        self.per_client.take(ip, self.per_client_cap);
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
                return Ok(id);
            }
        }
    }

    /// The query a reply with this ID answers (removed), if still in flight.
    pub fn take(&mut self, id: u16, now: Instant) -> Option<Pending> {
        let p = self.entries.remove(&id)?;
        self.release(p.client);
        (p.deadline > now).then_some(p)
    }

    /// Forgets queries past their deadline; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut gone = Vec::new();
        self.entries.retain(|_, p| {
            let keep = p.deadline > now;
            if !keep {
                gone.push(p.client);
            }
            keep
        });
        for client in &gone {
            self.release(*client);
        }
        gone.len()
    }

    fn release(&mut self, client: SocketAddr) {
        self.per_client.release(client.ip().to_canonical());
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

    fn from(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], port))
    }

    #[test]
    fn bounded_with_expiry_and_single_use() {
        let t0 = Instant::now();
        let mut f = InFlight::new(3, 3, Duration::from_secs(5));
        let a = f.insert(client(1), 11, 0, t0).unwrap();
        let b = f.insert(client(2), 22, 1, t0).unwrap();
        let _c = f.insert(client(3), 33, 0, t0).unwrap();
        assert_ne!(a, b);
        // Full.
        assert_eq!(
            f.insert(client(4), 44, 0, t0),
            Err(DropReason::ForwardTableFull)
        );
        // A reply is taken once.
        let p = f.take(b, t0).unwrap();
        assert_eq!((p.client, p.client_id, p.listener), (client(2), 22, 1));
        assert_eq!(f.take(b, t0), None);
        assert!(f.insert(client(4), 44, 0, t0).is_ok());
        // After the timeout everything is gone, and a late reply matches nothing.
        let later = t0 + Duration::from_secs(6);
        assert_eq!(f.take(a, later), None);
        assert_eq!(f.expire(later), 2);
        assert!(f.is_empty());
        assert!(f.per_client.is_empty(), "{:?}", f.per_client);
        // A full table expires what is due before it refuses.
        for i in 0..3 {
            f.insert(client(10 + i), i, 0, t0).unwrap();
        }
        assert!(f.insert(client(5), 55, 0, later).is_ok());
        assert_eq!(f.len(), 1);
    }

    /// One address holds its share, not the table: others still get entries; a reply or
    /// an expiry gives the share back.
    #[test]
    fn one_client_cannot_take_every_entry() {
        let t0 = Instant::now();
        let mut f = InFlight::new(10, 4, Duration::from_secs(5));
        let mut ids = Vec::new();
        for port in 0..4 {
            ids.push(f.insert(from(1, port), port, 0, t0).unwrap());
        }
        // Another port of the same address is the same client.
        assert_eq!(
            f.insert(from(1, 99), 99, 0, t0),
            Err(DropReason::ForwardClientLimit)
        );
        for port in 0..4 {
            f.insert(from(2, port), port, 0, t0).unwrap();
        }
        let p = f.take(ids[0], t0).unwrap();
        assert_eq!(p.client, from(1, 0));
        assert!(f.insert(from(1, 99), 99, 0, t0).is_ok());
        // Past the timeout the client's entries are gone and it may ask again.
        let later = t0 + Duration::from_secs(6);
        for port in 10..14 {
            f.insert(from(1, port), port, 0, later).unwrap();
        }
        assert_eq!(f.per_client.held(from(1, 0).ip()), 4);
        assert_eq!(f.len(), 4);
    }

    #[test]
    fn ids_are_unique_among_those_in_flight() {
        let t0 = Instant::now();
        let mut f = InFlight::new(1000, 1000, Duration::from_secs(5));
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000u16 {
            let id = f.insert(client(i), i, 0, t0).unwrap();
            assert!(seen.insert(id));
        }
        assert_eq!(f.len(), 1000);
        assert_eq!(
            f.insert(client(1), 1, 0, t0),
            Err(DropReason::ForwardTableFull)
        );
    }
}
