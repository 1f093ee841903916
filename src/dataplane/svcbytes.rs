//! Flow offload: exact bytes per Service port, each way, from the netfilter table's
//! per-Service counters (`host::nftables::by_service`: a counter per Service frontend that
//! the kernel keeps for our entries' packets), so no accounting sysctl is needed.
//!
//! Every read (by the events thread, with the table-wide counters) gives each frontend's
//! total since its set element was made; [`ByService::deltas`] turns totals into what was
//! added since the last read. A total lower than the last (the element expired and came
//! back, or the table was replaced) counts from zero, so a delta is never negative; a
//! frontend missing from a read is forgotten (the map holds at most what the sets hold).
//! The deltas go to the Service port the frontend is in the current table — the same
//! per-port counters (`ServiceStats::bytes_to_*`) the proxy dataplane fills — and to the
//! gateway-wide byte counters. A frontend whose Service is gone is not counted per port
//! (the table-wide offload counters still have its bytes).
//!
//! Owns: the last totals. Must not touch: the table (only read).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use crate::cluster::table::{Lookup, Protocol, ServiceTable};
use crate::host::nftables::{self, Direction, Frontend, NftError};

use super::stats::Stats;

/// The last totals read, per direction and frontend.
#[derive(Debug, Default)]
pub struct ByService {
    last: HashMap<(Direction, Frontend), u64>,
}

impl ByService {
    pub fn new() -> ByService {
        ByService::default()
    }

    /// Frontends whose last total is remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Totals now → bytes added since the last read (pure; zero deltas left out).
    pub fn deltas(
        &mut self,
        totals: &[(Direction, Frontend, u64)],
    ) -> Vec<(Direction, Frontend, u64)> {
        let mut next = HashMap::with_capacity(totals.len());
        let mut out = Vec::new();
        for &(dir, fe, total) in totals {
            let delta = match self.last.get(&(dir, fe)) {
                Some(&prev) if total >= prev => total - prev,
                // Reset (element made again, table replaced) or new: all of it is new.
                _ => total,
            };
            next.insert((dir, fe), total);
            if delta > 0 {
                out.push((dir, fe, delta));
            }
        }
        self.last = next;
        out
    }

    /// Add `totals`' deltas to the Service ports of `table` and to the gateway-wide bytes.
    pub fn count(
        &mut self,
        totals: &[(Direction, Frontend, u64)],
        table: &ServiceTable,
        stats: &Stats,
    ) {
        for (dir, fe, n) in self.deltas(totals) {
            let (per_gateway, proto) = (
                match dir {
                    Direction::ToEndpoint => &stats.bytes_to_endpoint,
                    Direction::ToClient => &stats.bytes_to_client,
                },
                match i32::from(fe.proto) {
                    libc::IPPROTO_TCP => Protocol::Tcp,
                    libc::IPPROTO_UDP => Protocol::Udp,
                    _ => continue,
                },
            );
            per_gateway.fetch_add(n, Ordering::Relaxed);
            let Lookup::Port(port) = table.lookup(fe.ip, fe.port, proto) else {
                continue;
            };
            let svc = stats.services.get(port);
            let counter = match dir {
                Direction::ToEndpoint => &svc.bytes_to_endpoint,
                Direction::ToClient => &svc.bytes_to_client,
            };
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Read the table's per-Service counters and count what they added.
    pub fn read(&mut self, table: &ServiceTable, stats: &Stats) -> Result<(), NftError> {
        let totals = nftables::by_service()?;
        self.count(&totals, table, stats);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::{ServiceEntry, ServicePort};
    use std::sync::Arc;

    fn fe(ip: &str, proto: u8, port: u16) -> Frontend {
        Frontend {
            ip: ip.parse().unwrap(),
            proto,
            port,
        }
    }

    #[test]
    fn totals_become_deltas_that_are_never_negative() {
        let mut b = ByService::new();
        let web = fe("10.96.0.10", 6, 80);
        let to_cl = Direction::ToClient;
        assert_eq!(b.deltas(&[(to_cl, web, 1000)]), vec![(to_cl, web, 1000)]);
        assert_eq!(b.deltas(&[(to_cl, web, 1500)]), vec![(to_cl, web, 500)]);
        // Unchanged: nothing.
        assert_eq!(b.deltas(&[(to_cl, web, 1500)]), vec![]);
        // Reset (the element expired and came back, or a new table): from zero.
        assert_eq!(b.deltas(&[(to_cl, web, 200)]), vec![(to_cl, web, 200)]);
        // Directions and frontends are apart; one missing from a read is forgotten.
        let dns = fe("10.96.0.53", 17, 53);
        let d = b.deltas(&[(Direction::ToEndpoint, web, 40), (to_cl, dns, 60)]);
        assert_eq!(d, vec![(Direction::ToEndpoint, web, 40), (to_cl, dns, 60)]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.deltas(&[(to_cl, web, 300)]), vec![(to_cl, web, 300)]);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn deltas_go_to_the_service_port_of_the_table() {
        let ports: Vec<Arc<ServicePort>> = [("web", "10.96.0.10:80"), ("sticky", "10.96.0.12:80")]
            .iter()
            .map(|(name, fe)| {
                Arc::new(ServicePort::for_test(
                    "demo",
                    name,
                    Protocol::Tcp,
                    fe,
                    &["10.244.1.10:8080"],
                ))
            })
            .collect();
        let services = ports
            .iter()
            .map(|p| ServiceEntry {
                id: p.service.clone(),
                cluster_ips: vec![p.cluster_ip],
                type_: "ClusterIP".into(),
                ports: vec![p.clone()],
                not_exposed: None,
                unsupported_ports: vec![],
            })
            .collect();
        let table = ServiceTable::new(1, services, vec![]);
        let stats = Stats::default();
        let mut b = ByService::new();
        let web = fe("10.96.0.10", 6, 80);
        let gone = fe("10.96.0.99", 6, 80);
        let totals = [
            (Direction::ToClient, web, 3_000_000),
            (Direction::ToEndpoint, web, 120),
            (Direction::ToClient, gone, 7),
            // The right address and port, another protocol: not web's.
            (Direction::ToClient, fe("10.96.0.10", 17, 80), 11),
        ];
        b.count(&totals, &table, &stats);
        let web_stats = stats.services.get(&ports[0]);
        assert_eq!(web_stats.bytes_to_client.load(Ordering::Relaxed), 3_000_000);
        assert_eq!(web_stats.bytes_to_endpoint.load(Ordering::Relaxed), 120);
        let sticky = stats.services.get(&ports[1]);
        assert_eq!(sticky.bytes_to_client.load(Ordering::Relaxed), 0);
        // Gateway-wide: every byte, the gone Service's too.
        assert_eq!(
            stats.bytes_to_client.load(Ordering::Relaxed),
            3_000_000 + 7 + 11
        );
        // A second read adds only what is new.
        let totals = [(Direction::ToClient, web, 3_000_500)];
        b.count(&totals, &table, &stats);
        assert_eq!(web_stats.bytes_to_client.load(Ordering::Relaxed), 3_000_500);
    }
}
