//! The live flow list for the status page: proxied TCP connections and UDP flows register
//! here when they are set up and leave when they end (a [`FlowGuard`] removes its entry on
//! drop). One lock per set-up and per close, on one of [`SHARDS`] shards; nothing per
//! packet. Bytes are counted by the flow's own tasks in its entry's atomics
//! ([`FlowInfo::sent`], [`FlowInfo::received`]).
//!
//! Owns: the list. Must not touch: the NAT, the table, sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustc_hash::FxHashMap;

use super::stats::ServiceStats;
use crate::cluster::table::{Protocol, ServiceId, ServicePort};

/// Shards of the flow list: set-ups on different cores rarely meet on one lock.
pub const SHARDS: usize = 16;

/// One live flow.
#[derive(Debug)]
pub struct FlowInfo {
    pub id: u64,
    pub protocol: Protocol,
    pub client: SocketAddr,
    /// `ClusterIP:port` the client addressed.
    pub frontend: SocketAddr,
    pub service: Arc<ServiceId>,
    pub endpoint: SocketAddr,
    pub started: SystemTime,
    pub to_endpoint: AtomicU64,
    pub to_client: AtomicU64,
    /// The Service port's counters (bytes go to both).
    pub service_stats: Arc<ServiceStats>,
}

impl FlowInfo {
    /// Count `n` bytes from the client to the endpoint.
    pub fn sent(&self, n: u64) {
        self.to_endpoint.fetch_add(n, Ordering::Relaxed);
        self.service_stats
            .bytes_to_endpoint
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Count `n` bytes from the endpoint to the client.
    pub fn received(&self, n: u64) {
        self.to_client.fetch_add(n, Ordering::Relaxed);
        self.service_stats
            .bytes_to_client
            .fetch_add(n, Ordering::Relaxed);
    }
}

type Shard = Mutex<FxHashMap<u64, Arc<FlowInfo>>>;

#[derive(Debug)]
pub struct FlowRegistry {
    shards: Box<[Shard]>,
    next: AtomicU64,
}

impl Default for FlowRegistry {
    fn default() -> Self {
        FlowRegistry {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next: AtomicU64::new(1),
        }
    }
}

impl FlowRegistry {
    fn shard(&self, id: u64) -> &Shard {
        &self.shards[(id as usize) % self.shards.len()]
    }

    /// Register a flow set up to `endpoint`; it stays listed (and counted as active for its
    /// Service) until the guard is dropped.
    pub fn register(
        self: &Arc<Self>,
        port: &ServicePort,
        client: SocketAddr,
        endpoint: SocketAddr,
        service_stats: Arc<ServiceStats>,
    ) -> FlowGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        service_stats.active.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(FlowInfo {
            id,
            protocol: port.protocol,
            client,
            frontend: port.frontend(),
            service: port.service.clone(),
            endpoint,
            started: SystemTime::now(),
            to_endpoint: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            service_stats,
        });
        self.shard(id)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, info.clone());
        FlowGuard {
            registry: self.clone(),
            info,
        }
    }

    /// Every live flow (a copy of the list; the byte counters stay live).
    pub fn snapshot(&self) -> Vec<Arc<FlowInfo>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let s = shard.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(s.values().cloned());
        }
        out
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A registered flow; dropping it removes the flow from the list.
#[derive(Debug)]
pub struct FlowGuard {
    registry: Arc<FlowRegistry>,
    info: Arc<FlowInfo>,
}

impl FlowGuard {
    pub fn info(&self) -> &Arc<FlowInfo> {
        &self.info
    }
}

impl Drop for FlowGuard {
    fn drop(&mut self) {
        self.info
            .service_stats
            .active
            .fetch_sub(1, Ordering::Relaxed);
        self.registry
            .shard(self.info.id)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.info.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::ServiceId;

    fn port() -> ServicePort {
        ServicePort {
            service: Arc::new(ServiceId {
                namespace: "ns".into(),
                name: "web".into(),
            }),
            name: String::new(),
            protocol: Protocol::Tcp,
            cluster_ip: "10.96.0.1".parse().unwrap(),
            port: 80,
            endpoints: vec![],
            usable: vec![],
            affinity: None,
            allow: None,
        }
    }

    #[test]
    fn flows_are_listed_while_open_and_count_bytes() {
        let reg = Arc::new(FlowRegistry::default());
        let svc = Arc::new(ServiceStats::default());
        let client: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let ep: SocketAddr = "10.244.0.5:8080".parse().unwrap();
        let guards: Vec<FlowGuard> = (0..40)
            .map(|_| reg.register(&port(), client, ep, svc.clone()))
            .collect();
        assert_eq!(reg.len(), 40);
        assert_eq!(svc.active.load(Ordering::Relaxed), 40);

        guards[0].info().sent(11);
        guards[1].info().received(5);
        assert_eq!(guards[0].info().to_endpoint.load(Ordering::Relaxed), 11);
        assert_eq!(guards[1].info().to_client.load(Ordering::Relaxed), 5);
        assert_eq!(svc.bytes_to_endpoint.load(Ordering::Relaxed), 11);
        assert_eq!(svc.bytes_to_client.load(Ordering::Relaxed), 5);

        drop(guards);
        assert!(reg.is_empty());
        assert_eq!(svc.active.load(Ordering::Relaxed), 0);
    }
}
