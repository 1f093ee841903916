//! Dataplane counters: packets, drops by reason, connections by result. Plain atomics
//! (relaxed), written by the workers and read by whoever reports them; no lock on the
//! per-packet path.
//!
//! Per connection (never per packet) the dataplane also touches: the per-Service counters
//! ([`ServiceStats`], found in a registry once per new flow), the live flow list
//! ([`super::flows::FlowRegistry`]), the dial latency histogram and the notice ring
//! ([`Notices`]: dial failures and refused flows, for the status page's events).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::flows::FlowRegistry;
use super::packet::DropReason;
use crate::cluster::table::{Protocol, ServiceId, ServicePort};

/// Why the engine dropped (or answered instead of forwarding) a packet, beyond a
/// malformed packet's own [`DropReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Malformed(DropReason),
    /// Destination is not an exposed ClusterIP (and not the gateway's inner prefix).
    NotService,
    /// A TCP segment of no known flow (answered with a RST unless it was one).
    NoFlow,
    /// A reply from the listener to a virtual address no flow owns.
    NoReverseFlow,
    /// ICMP that is not an echo request to a ClusterIP nor an error about a known flow.
    IcmpIgnored,
    /// An error the gateway would have sent was suppressed by the rate limit.
    RateLimited,
    /// A datagram could not be sent on its flow's socket (buffer full, refused).
    UdpSendFailed,
    /// A fragment was stored, waiting for the rest (not a drop; counted apart).
    FragmentQueued,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Malformed(r) => r.label(),
            Reason::NotService => "not_a_service",
            Reason::NoFlow => "no_flow",
            Reason::NoReverseFlow => "no_reverse_flow",
            Reason::IcmpIgnored => "icmp_ignored",
            Reason::RateLimited => "rate_limited",
            Reason::UdpSendFailed => "udp_send_failed",
            Reason::FragmentQueued => "fragment_queued",
        }
    }
}

/// The result of a new TCP connection or UDP flow (the `result` label of
/// `clusterway_connections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnResult {
    Ok,
    NoEndpoints,
    DialFailed,
    RejectedPolicy,
    TableFull,
}

impl ConnResult {
    pub const ALL: [ConnResult; 5] = [
        ConnResult::Ok,
        ConnResult::NoEndpoints,
        ConnResult::DialFailed,
        ConnResult::RejectedPolicy,
        ConnResult::TableFull,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ConnResult::Ok => "ok",
            ConnResult::NoEndpoints => "no_endpoints",
            ConnResult::DialFailed => "dial_failed",
            ConnResult::RejectedPolicy => "rejected_policy",
            ConnResult::TableFull => "table_full",
        }
    }
}

/// Why the gateway answered a packet with a RST or an ICMP error of its own instead of
/// forwarding it (the `reason` label of `clusterway_refusals_total`). Each counts a reply
/// actually built; one the error budget suppressed is a `rate_limited` drop instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// An address of a routed range that is no exposed ClusterIP (a deleted Service, a
    /// typo): ICMP administratively prohibited.
    NoService,
    /// A ClusterIP, but no Service port with this number and protocol.
    UnknownPort,
    /// A TCP segment of no known flow (RST).
    NoFlow,
    /// The Service has no usable endpoint (ICMP port unreachable).
    NoEndpoints,
    /// The client's address is not allowed by policy.
    Policy,
    /// The flow table is full.
    TableFull,
    /// The flow's socket could not be opened.
    DialFailed,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::NoService,
        Refusal::UnknownPort,
        Refusal::NoFlow,
        Refusal::NoEndpoints,
        Refusal::Policy,
        Refusal::TableFull,
        Refusal::DialFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoService => "no_service",
            Refusal::UnknownPort => "unknown_port",
            Refusal::NoFlow => "no_flow",
            Refusal::NoEndpoints => "no_endpoints",
            Refusal::Policy => "policy",
            Refusal::TableFull => "table_full",
            Refusal::DialFailed => "dial_failed",
        }
    }
}

const OTHER_REASONS: usize = 8;

#[derive(Debug, Default)]
pub struct Stats {
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    /// Packets of a flow read by a worker other than its owner (proxy on the workers).
    pub packets_off_owner: AtomicU64,
    pub replies_built: AtomicU64,
    /// Replies built, by [`Refusal`] (index in `Refusal::ALL`).
    refusals: [AtomicU64; 7],
    /// UDP flows closed to make room for a new one (the table was full).
    pub udp_evictions: AtomicU64,
    /// TCP flows whose handshake never completed, dropped to make room for a new one
    /// (copied from the shared NAT by worker 0).
    pub tcp_early_drops: AtomicU64,
    /// TCP flows waiting for their handshake now (copied like `tcp_early_drops`).
    pub tcp_pending: AtomicU64,
    /// ClientIP affinities held now, and those not recorded because the table was full
    /// (copied from the shared balancer like `tcp_early_drops`).
    pub affinities: AtomicU64,
    pub affinities_refused: AtomicU64,
    malformed: [AtomicU64; 32],
    other: [AtomicU64; OTHER_REASONS],
    tcp: [AtomicU64; 5],
    udp: [AtomicU64; 5],
    pub tcp_active: AtomicU64,
    pub udp_active: AtomicU64,
    pub bytes_to_endpoint: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// Counters per Service port, looked up once per new flow.
    pub services: ServiceRegistry,
    /// Live proxied connections and UDP flows (registered at set-up, removed at close).
    pub flows: Arc<FlowRegistry>,
    /// Time from accept to a connected endpoint socket (successful TCP set-ups).
    pub dial_latency: LatencyHistogram,
    /// Recent failures, for the status page.
    pub notices: Notices,
    /// How proxied bytes moved (splice or copy) and how the pipe pool fared.
    pub splice: Arc<SpliceStats>,
    /// The DNS server's counters and failed queries (`crate::dns`).
    pub dns: Arc<crate::dns::stats::DnsStats>,
    /// Flows handed to the kernel (`--dataplane offload`).
    pub offload: super::offload::OffloadStats,
}

/// Counters of the proxy's byte path (`dataplane::splice`): which way bytes went, pipes
/// lent now, and the two reasons a burst that should splice is copied instead.
#[derive(Debug, Default)]
pub struct SpliceStats {
    /// Bytes written to a socket out of a pipe.
    pub bytes_spliced: AtomicU64,
    /// Bytes written to a socket from a copy buffer.
    pub bytes_copied: AtomicU64,
    /// Pipes lent to a connection direction now.
    pub pipes_lent: AtomicU64,
    /// The pool's capacity (set when the pool is made).
    pub pipes_capacity: AtomicU64,
    /// Bursts that filled the copy buffer (so would splice) but found no free pipe.
    pub pool_exhausted: AtomicU64,
    /// Connection directions for which the kernel refused splice (copied from then on).
    pub refused: AtomicU64,
}

fn other_index(r: Reason) -> usize {
    match r {
        // Malformed packets are counted by their own reason; this slot only keeps the
        // mapping total (no panic on the packet path).
        Reason::Malformed(_) => OTHER_REASONS - 1,
        Reason::NotService => 0,
        Reason::NoFlow => 1,
        Reason::NoReverseFlow => 2,
        Reason::IcmpIgnored => 3,
        Reason::RateLimited => 4,
        Reason::UdpSendFailed => 5,
        Reason::FragmentQueued => 6,
    }
}

fn result_index(r: ConnResult) -> usize {
    ConnResult::ALL.iter().position(|x| *x == r).unwrap_or(0)
}

impl Stats {
    /// UDP flows open now: those in user space and those the kernel carries (offload).
    pub fn udp_active_now(&self) -> u64 {
        self.udp_active.load(Ordering::Relaxed) + self.offload.udp_active.load(Ordering::Relaxed)
    }

    pub fn count_drop(&self, reason: Reason) {
        self.count_drops(reason, 1);
    }

    /// `n` packets dropped for `reason` at once (fragments of datagrams that timed out).
    pub fn count_drops(&self, reason: Reason, n: u64) {
        if n == 0 {
            return;
        }
        let c = match reason {
            Reason::Malformed(r) => {
                let i = DropReason::ALL.iter().position(|x| *x == r).unwrap_or(0);
                &self.malformed[i.min(31)]
            }
            other => &self.other[other_index(other)],
        };
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// A new TCP connection to `port` from `client` ended its set-up with `r`. Counted in
    /// total and for the Service port (whose counters are returned); failures are noted.
    pub fn tcp_conn(
        &self,
        port: &ServicePort,
        client: SocketAddr,
        r: ConnResult,
    ) -> Arc<ServiceStats> {
        self.tcp[result_index(r)].fetch_add(1, Ordering::Relaxed);
        self.per_service(port, client, r)
    }

    /// A new UDP flow to `port` from `client` was attempted with result `r` (as
    /// [`Stats::tcp_conn`]).
    pub fn udp_flow(
        &self,
        port: &ServicePort,
        client: SocketAddr,
        r: ConnResult,
    ) -> Arc<ServiceStats> {
        self.udp[result_index(r)].fetch_add(1, Ordering::Relaxed);
        self.per_service(port, client, r)
    }

    fn per_service(
        &self,
        port: &ServicePort,
        client: SocketAddr,
        r: ConnResult,
    ) -> Arc<ServiceStats> {
        let svc = self.services.get(port);
        svc.conns[result_index(r)].fetch_add(1, Ordering::Relaxed);
        if r != ConnResult::Ok {
            svc.last_failure_ms.store(unix_ms(), Ordering::Relaxed);
            svc.last_failure
                .store(result_index(r) as u64, Ordering::Relaxed);
            self.notices.push(port, client, NoticeKind::Refused(r));
        }
        svc
    }

    /// A reply (RST, ICMP error) was built for `r`.
    pub fn count_refusal(&self, r: Refusal) {
        self.replies_built.fetch_add(1, Ordering::Relaxed);
        let i = Refusal::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.refusals[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Replies built, by refusal reason (every reason, zero included).
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .zip(&self.refusals)
            .map(|(r, c)| (r.label(), c.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn tcp_count(&self, r: ConnResult) -> u64 {
        self.tcp[result_index(r)].load(Ordering::Relaxed)
    }

    pub fn udp_count(&self, r: ConnResult) -> u64 {
        self.udp[result_index(r)].load(Ordering::Relaxed)
    }

    /// Fragments stored to wait for the rest of their datagram: not drops, so not in
    /// [`Stats::drops`] (exported as `clusterway_tun_fragments_queued_total`).
    pub fn fragments_queued(&self) -> u64 {
        self.other[other_index(Reason::FragmentQueued)].load(Ordering::Relaxed)
    }

    /// Every drop counter that is not zero, by label (a queued fragment is not a drop).
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        for (i, r) in DropReason::ALL.iter().enumerate().take(32) {
            let v = self.malformed[i].load(Ordering::Relaxed);
            if v > 0 {
                out.push((r.label(), v));
            }
        }
        for r in [
            Reason::NotService,
            Reason::NoFlow,
            Reason::NoReverseFlow,
            Reason::IcmpIgnored,
            Reason::RateLimited,
            Reason::UdpSendFailed,
        ] {
            let v = self.other[other_index(r)].load(Ordering::Relaxed);
            if v > 0 {
                out.push((r.label(), v));
            }
        }
        out
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Identity of a Service port in the counters: the labels of
/// `clusterway_connections_total` (both families of a dual-stack Service share it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub service: Arc<ServiceId>,
    pub port: u16,
    pub protocol: Protocol,
}

impl ServiceKey {
    pub fn of(port: &ServicePort) -> Self {
        ServiceKey {
            service: port.service.clone(),
            port: port.port,
            protocol: port.protocol,
        }
    }
}

/// Counters of one Service port, shared by its flows.
#[derive(Debug, Default)]
pub struct ServiceStats {
    conns: [AtomicU64; 5],
    /// Proxied TCP connections and UDP flows open now.
    pub active: AtomicU64,
    pub bytes_to_endpoint: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// Unix time (ms) of the last failed set-up (0: none) and its [`ConnResult`] index.
    last_failure_ms: AtomicU64,
    last_failure: AtomicU64,
}

impl ServiceStats {
    pub fn count(&self, r: ConnResult) -> u64 {
        self.conns[result_index(r)].load(Ordering::Relaxed)
    }

    /// All attempts, whatever their result.
    pub fn attempts(&self) -> u64 {
        self.conns.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// When the last set-up failed and how.
    pub fn last_failure(&self) -> Option<(SystemTime, ConnResult)> {
        let ms = self.last_failure_ms.load(Ordering::Relaxed);
        if ms == 0 {
            return None;
        }
        let r = ConnResult::ALL
            .get(self.last_failure.load(Ordering::Relaxed) as usize)
            .copied()
            .unwrap_or(ConnResult::DialFailed);
        Some((UNIX_EPOCH + Duration::from_millis(ms), r))
    }
}

/// Per-Service-port counters by [`ServiceKey`]. Read-locked once per new flow; entries are
/// added on first use and dropped by [`ServiceRegistry::retain`] when their Service leaves
/// the table (flows still open keep their `Arc`).
#[derive(Debug, Default)]
pub struct ServiceRegistry {
    map: RwLock<HashMap<ServiceKey, Arc<ServiceStats>>>,
}

impl ServiceRegistry {
    pub fn get(&self, port: &ServicePort) -> Arc<ServiceStats> {
        let key = ServiceKey::of(port);
        if let Some(s) = self.map.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return s.clone();
        }
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }

    /// Every entry (for the status page and metrics).
    pub fn snapshot(&self) -> Vec<(ServiceKey, Arc<ServiceStats>)> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Keep the entries `keep` says yes to (called on a table change, not per flow).
    pub fn retain(&self, mut keep: impl FnMut(&ServiceKey) -> bool) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep(k));
    }
}

/// Upper bounds (seconds) of the dial latency buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket histogram of atomics (exported as `clusterway_dial_duration_seconds`).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Cumulative counts per bound of [`LATENCY_BUCKETS`], the total count and the sum in
    /// seconds.
    pub fn read(&self) -> (Vec<u64>, u64, f64) {
        let mut acc = 0;
        let mut cumulative = Vec::with_capacity(LATENCY_BUCKETS.len());
        for b in &self.buckets[..LATENCY_BUCKETS.len()] {
            acc += b.load(Ordering::Relaxed);
            cumulative.push(acc);
        }
        let total = acc + self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, total, sum)
    }
}

/// What a [`Notice`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeKind {
    /// A flow was refused or failed (`no_endpoints`, `dial_failed`, `table_full`,
    /// `rejected_policy`).
    Refused(ConnResult),
    /// One dial attempt to `endpoint` failed (the next candidate may still answer).
    DialAttempt { endpoint: SocketAddr, error: String },
}

/// A failure worth showing to a person.
#[derive(Debug, Clone)]
pub struct Notice {
    /// Increases by one per notice kept.
    pub seq: u64,
    pub at: SystemTime,
    pub service: Arc<ServiceId>,
    pub port: u16,
    pub protocol: Protocol,
    pub client: SocketAddr,
    pub kind: NoticeKind,
}

/// Notices kept for readers that poll now and then.
const NOTICE_RING: usize = 1024;
/// Most notices kept per second; past it they are only counted (a flood of refused SYNs
/// must not turn into a flood of ring writes).
const NOTICES_PER_SECOND: u64 = 50;

/// A bounded ring of recent [`Notice`]s, rate limited. Written per failed connection,
/// never per packet.
#[derive(Debug, Default)]
pub struct Notices {
    ring: Mutex<VecDeque<Notice>>,
    /// Unix second of the current window and notices kept in it.
    window: AtomicU64,
    in_window: AtomicU64,
    pub suppressed: AtomicU64,
}

impl Notices {
    pub fn push(&self, port: &ServicePort, client: SocketAddr, kind: NoticeKind) {
        let now = SystemTime::now();
        let sec = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if self.window.swap(sec, Ordering::Relaxed) != sec {
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) >= NOTICES_PER_SECOND {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let seq = ring.back().map_or(1, |n| n.seq + 1);
        if ring.len() >= NOTICE_RING {
            ring.pop_front();
        }
        ring.push_back(Notice {
            seq,
            at: now,
            service: port.service.clone(),
            port: port.port,
            protocol: port.protocol,
            client,
            kind,
        });
    }

    /// Notices with a sequence number above `after`, oldest first.
    pub fn since(&self, after: u64) -> Vec<Notice> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().filter(|n| n.seq > after).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, p: u16) -> ServicePort {
        ServicePort {
            service: Arc::new(ServiceId {
                namespace: "ns".into(),
                name: name.into(),
            }),
            name: String::new(),
            protocol: Protocol::Tcp,
            cluster_ip: "10.96.0.1".parse().unwrap(),
            port: p,
            endpoints: vec![],
            usable: vec![],
            affinity: None,
            allow: None,
        }
    }

    #[test]
    fn per_service_counters_are_shared_by_both_families_and_note_failures() {
        let stats = Stats::default();
        let client: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let mut v6 = port("web", 80);
        v6.cluster_ip = "fd00::1".parse().unwrap();
        let a = stats.tcp_conn(&port("web", 80), client, ConnResult::Ok);
        let b = stats.tcp_conn(&v6, client, ConnResult::NoEndpoints);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.count(ConnResult::Ok), 1);
        assert_eq!(a.attempts(), 2);
        assert_eq!(a.last_failure().unwrap().1, ConnResult::NoEndpoints);
        assert_eq!(stats.tcp_count(ConnResult::NoEndpoints), 1);
        let other = stats.udp_flow(&port("dns", 53), client, ConnResult::TableFull);
        assert!(!Arc::ptr_eq(&a, &other));
        let notes = stats.notices.since(0);
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[1].kind, NoticeKind::Refused(ConnResult::TableFull));
        assert!(stats.notices.since(notes[1].seq).is_empty());
        stats.services.retain(|k| k.service.name == "web");
        assert_eq!(stats.services.snapshot().len(), 1);
    }

    #[test]
    fn notices_are_rate_limited_and_bounded() {
        let n = Notices::default();
        let client: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        for _ in 0..200 {
            n.push(
                &port("a", 1),
                client,
                NoticeKind::Refused(ConnResult::DialFailed),
            );
        }
        let kept = n.since(0).len() as u64;
        assert!(
            (NOTICES_PER_SECOND..=2 * NOTICES_PER_SECOND).contains(&kept),
            "{kept}"
        );
        assert_eq!(kept + n.suppressed.load(Ordering::Relaxed), 200);
    }

    #[test]
    fn histogram_is_cumulative() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(10));
        let (cum, total, sum) = h.read();
        assert_eq!(cum[0], 1);
        assert_eq!(cum[5], 2);
        assert_eq!(*cum.last().unwrap(), 2);
        assert_eq!(total, 3);
        assert!((sum - 10.0203).abs() < 1e-6);
    }
}
