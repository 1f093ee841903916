//! Flow offload's accounting: what happened to the flows the kernel carries, from its
//! conntrack events (update, destroy) of the gateway's entries.
//!
//! - a flow whose entry reaches ESTABLISHED (ASSURED) is a connection `ok` for its Service
//!   port, and clears its endpoint's failures; then, and only then, its client's ClientIP
//!   affinity follows the endpoint ([`Accounting::affinity`]): a spoofed SYN, whose
//!   handshake never completes, leaves none (as with the proxy, where it is the dial that
//!   succeeded);
//! - one reset by the endpoint before it was established, or whose entry ends without any
//!   reply (the endpoint never answered: the sweep of [`super::ctsweep`] deletes such an
//!   entry after 10 s and counts it at once; its own DESTROY event is not counted again),
//!   is a `dial_failed` connection, a notice on the status page, and an ejection of the
//!   endpoint (`outlier`);
//! - a UDP flow (no handshake) is a connection `ok` when its entry first sees a reply, and
//!   `dial_failed` when it ends without any (no ejection: see `classify_udp`); UDP entries
//!   are listed once answered; when a UDP Service port's endpoints change
//!   ([`udp_fingerprint`]), entries whose endpoint is no longer usable are deleted
//!   ([`stale_udp`]);
//! - active TCP flows are the established entries alive, active UDP flows the answered
//!   ones; at start the entries of an earlier run are adopted (counted active, listed, not
//!   counted again as connections);
//! - bytes: per Service port (and gateway-wide) from the netfilter table's per-Service
//!   counters, read with the table-wide ones (`super::svcbytes`; no sysctl needed); per
//!   flow from the entry's counters when it ends, if the namespace keeps them
//!   (`net.netfilter.nf_conntrack_acct`, the operator's choice; the gateway does not change
//!   it) — and per port from those too only when the table's counters cannot be read; for
//!   all offloaded flows together from the table's counters (`host::nftables`), always.
//! - the status page's live flows: up to [`LISTED`] entries alive and not closed, the oldest
//!   first taken.
//!
//! The per-flow state kept here is only that bounded list: the kernel owns the flows.
//! [`classify`] is the pure core; [`Reader`] is the thread that reads the events socket and
//! applies them. The socket carries a filter (`host::conntrack::filter`): the kernel drops
//! events of entries not ours and updates to states nothing here counts
//! ([`COUNTED_STATES`]) before they wake the reader. Losing events (the reader fell behind: ENOBUFS) is counted and answered with
//! a dump of the entries, from which the list and the active count are rebuilt.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::ctsweep::{self, Sweeper};
use super::flows::FlowGuard;
use super::limits::LogLimit;
use super::outlier::Outliers;
use super::shared::SharedFlows;
use super::stats::{ConnResult, NoticeKind, Stats};
use super::svcbytes::ByService;
use crate::cluster::kubeconfig::error_chain;
use crate::cluster::table::{Lookup, Protocol, ServicePort, ServiceTable};
use crate::host::conntrack::{
    self, status, tcp_state, Conntrack, ConntrackError, Entry, EventKind, Events, Tuple,
};
use crate::host::nftables;

/// Live offloaded flows listed on the status page at most.
pub const LISTED: usize = 4096;
/// How often the table's byte counters are read.
const COUNTERS_EVERY: Duration = Duration::from_secs(5);
/// How long one wait for events lasts (the shutdown flag is checked in between).
const WAIT: Duration = Duration::from_millis(500);
/// After taking every queued event, the reader lets the next ones gather this long: one
/// wake-up per batch instead of one per event (at most ~500 a second under load), for a
/// few milliseconds more before a counter moves.
const GATHER: Duration = Duration::from_millis(2);
/// Events taken at most per batch (bounds the batch's memory).
const BATCH: usize = 4096;
/// The events socket's receive buffer: what may gather meanwhile, with room for a burst
/// (the kernel expiring many entries at once).
const EVENTS_BUFFER: usize = 8 << 20;

/// What one event of ours means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The flow was established: a connection `ok`.
    Established,
    /// The flow failed before it was established (`reset`, `unreplied`).
    Failed(&'static str),
    /// The entry is gone (`assured`: it had been established, so it was active).
    Ended { assured: bool },
    /// A UDP flow whose entry ended without any reply: `dial_failed`, no ejection.
    Unanswered,
}

/// The outcome an event of a UDP entry reports, if any (pure). UDP has no handshake: a
/// flow is a connection `ok` once its endpoint answered. The kernel reports the entry's
/// first reply once, as an update that sets SEEN_REPLY alone (events are delivered per
/// packet); ASSURED comes with a later packet (seen on Linux 6.18: the client's next
/// datagram), in an update that is not counted again. A flow whose entry ends without
/// any reply is `dial_failed` ([`Outcome::Unanswered`]) but ejects no endpoint: a UDP
/// service may never answer (syslog, metrics), and the endpoint's ICMP errors (port
/// unreachable) are the kernel's to forward to the client (RELATED), unseen here.
fn classify_udp(kind: EventKind, e: &Entry) -> Option<Outcome> {
    let replied = e.status & status::SEEN_REPLY != 0;
    let assured = e.status & status::ASSURED != 0;
    match kind {
        EventKind::NewOrUpdate if replied && !assured => Some(Outcome::Established),
        EventKind::NewOrUpdate => None,
        EventKind::Destroy if !replied => Some(Outcome::Unanswered),
        EventKind::Destroy => Some(Outcome::Ended { assured: false }),
    }
}

/// Whether an entry is a UDP flow's.
fn is_udp(e: &Entry) -> bool {
    e.orig.is_some_and(|t| t.proto == libc::IPPROTO_UDP as u8)
}

/// The outcome an event reports, if any (pure).
pub fn classify(kind: EventKind, e: &Entry) -> Option<Outcome> {
    if is_udp(e) {
        return classify_udp(kind, e);
    }
    let assured = e.status & status::ASSURED != 0;
    let replied = e.status & status::SEEN_REPLY != 0;
    match kind {
        EventKind::NewOrUpdate => match e.tcp_state {
            Some(tcp_state::ESTABLISHED) if assured => Some(Outcome::Established),
            // A RST from the endpoint while the handshake was on.
            Some(tcp_state::CLOSE) if !assured && replied => Some(Outcome::Failed("reset")),
            _ => None,
        },
        EventKind::Destroy if !replied => Some(Outcome::Failed("unreplied")),
        EventKind::Destroy => Some(Outcome::Ended { assured }),
    }
}

/// The TCP states whose update events [`classify`] and the live list act on: established
/// (a connection `ok`), closed (a reset, or off the list) and time-wait (off the list).
/// The kernel drops the other updates before they reach the reader (`Events::keep_only`):
/// they would wake it some four times per connection for nothing. A flow is therefore
/// listed once established, not while its handshake is on.
pub const COUNTED_STATES: [u8; 3] = [
    tcp_state::ESTABLISHED,
    tcp_state::CLOSE,
    tcp_state::TIME_WAIT,
];

/// Whether an entry is one of the gateway's flows (ours, TCP or UDP, not the start-up
/// probe).
pub(crate) fn is_flow(e: &Entry) -> bool {
    e.is_ours()
        && e.mark & !conntrack::MARK_OWNER_MASK == 0
        && e.orig.is_some_and(|t| {
            t.proto == libc::IPPROTO_TCP as u8 || t.proto == libc::IPPROTO_UDP as u8
        })
}

/// The Service port a flow's original destination is (None once the Service is gone).
fn port_of(table: &ServiceTable, orig: &Tuple) -> Option<Arc<ServicePort>> {
    let protocol = if orig.proto == libc::IPPROTO_UDP as u8 {
        Protocol::Udp
    } else {
        Protocol::Tcp
    };
    match table.lookup(orig.dst.ip(), orig.dst.port(), protocol) {
        Lookup::Port(p) => Some(p.clone()),
        _ => None,
    }
}

/// Applies events to the counters, the outliers and the listed flows.
pub struct Accounting {
    pub table: Arc<ArcSwap<ServiceTable>>,
    pub stats: Arc<Stats>,
    pub outliers: Arc<Outliers>,
    listed: HashMap<Tuple, FlowGuard>,
    /// Bytes per Service port come from the table's per-Service counters
    /// (`super::svcbytes`): an ended entry's counters then go to its flow only.
    pub per_port_from_table: bool,
    /// The workers' balancer: an established TCP flow records its client's ClientIP
    /// affinity here (the engine then does not at hand-over; see
    /// `EngineConfig::affinity_from_events`).
    pub affinity: Option<Arc<SharedFlows>>,
}

impl Accounting {
    pub fn new(
        table: Arc<ArcSwap<ServiceTable>>,
        stats: Arc<Stats>,
        outliers: Arc<Outliers>,
    ) -> Accounting {
        Accounting {
            table,
            stats,
            outliers,
            listed: HashMap::new(),
            per_port_from_table: false,
            affinity: None,
        }
    }

    /// Flows listed now.
    pub fn listed(&self) -> usize {
        self.listed.len()
    }

    fn list(&mut self, orig: Tuple, e: &Entry, table: &ServiceTable) {
        if self.listed.len() >= LISTED || self.listed.contains_key(&orig) {
            return;
        }
        if matches!(e.tcp_state, Some(tcp_state::CLOSE | tcp_state::TIME_WAIT)) {
            return;
        }
        let (Some(port), Some(endpoint)) = (port_of(table, &orig), e.endpoint()) else {
            return;
        };
        let svc = self.stats.services.get(&port);
        let guard = self.stats.flows.register(&port, orig.src, endpoint, svc);
        self.listed.insert(orig, guard);
    }

    /// One event.
    pub fn apply(&mut self, kind: EventKind, e: &Entry, now: Instant) {
        if !is_flow(e) {
            return;
        }
        let Some(orig) = e.orig else { return };
        let table = self.table.load();
        let port = port_of(&table, &orig);
        let endpoint = e.endpoint();
        let udp = is_udp(e);
        match classify(kind, e) {
            Some(Outcome::Established) if udp => {
                if let Some(p) = &port {
                    self.stats.udp_flow(p, orig.src, ConnResult::Ok);
                }
                self.stats
                    .offload
                    .udp_active
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(ep) = endpoint {
                    self.outliers.succeeded(ep);
                }
            }
            Some(Outcome::Unanswered) => {
                if let Some(p) = &port {
                    self.stats.udp_flow(p, orig.src, ConnResult::DialFailed);
                }
            }
            Some(Outcome::Established) => {
                if let Some(p) = &port {
                    self.stats.tcp_conn(p, orig.src, ConnResult::Ok);
                }
                self.stats.tcp_active.fetch_add(1, Ordering::Relaxed);
                if let Some(ep) = endpoint {
                    self.outliers.succeeded(ep);
                    // The handshake completed: the client is real, and its affinity
                    // follows the endpoint that answered.
                    if let (Some(p), Some(shared)) = (&port, &self.affinity) {
                        shared.served(p, orig.src.ip(), ep, now);
                    }
                }
            }
            Some(Outcome::Failed(why)) => {
                if let Some(p) = &port {
                    self.stats.tcp_conn(p, orig.src, ConnResult::DialFailed);
                }
                if let Some(ep) = endpoint {
                    let ejected = self.outliers.failed(ep, now);
                    self.stats.offload.ejections.fetch_add(1, Ordering::Relaxed);
                    if let Some(p) = &port {
                        let kind = NoticeKind::DialAttempt {
                            endpoint: ep,
                            error: format!("{why}; endpoint ejected for {}s", ejected.as_secs()),
                        };
                        self.stats.notices.push(p, orig.src, kind);
                    }
                    tracing::info!(endpoint = %ep, why, ejected_s = ejected.as_secs(), "offloaded flow failed before it was established; endpoint ejected");
                }
            }
            // An answered UDP flow's entry is gone (its Established was counted active).
            Some(Outcome::Ended { .. }) if udp => {
                decrement(&self.stats.offload.udp_active);
            }
            Some(Outcome::Ended { assured: true }) => decrement(&self.stats.tcp_active),
            Some(Outcome::Ended { assured: false }) | None => {}
        }
        match kind {
            // Closed (or closing for good): off the live list; its bytes come at the end.
            EventKind::NewOrUpdate
                if matches!(e.tcp_state, Some(tcp_state::CLOSE | tcp_state::TIME_WAIT)) =>
            {
                self.listed.remove(&orig);
            }
            EventKind::NewOrUpdate => self.list(orig, e, &table),
            EventKind::Destroy => {
                let guard = self.listed.remove(&orig);
                self.count_bytes(e, port.as_deref(), guard.as_ref());
            }
        }
    }

    /// An ended entry's counters (present when the namespace keeps them).
    fn count_bytes(&self, e: &Entry, port: Option<&ServicePort>, guard: Option<&FlowGuard>) {
        let (Some((_, to_ep)), Some((_, to_cl))) = (e.counters_orig, e.counters_reply) else {
            return;
        };
        if self.per_port_from_table {
            // The Service port and the gateway-wide bytes are counted by `svcbytes`.
            if let Some(g) = guard {
                g.info().to_endpoint.fetch_add(to_ep, Ordering::Relaxed);
                g.info().to_client.fetch_add(to_cl, Ordering::Relaxed);
            }
            return;
        }
        self.stats
            .bytes_to_endpoint
            .fetch_add(to_ep, Ordering::Relaxed);
        self.stats
            .bytes_to_client
            .fetch_add(to_cl, Ordering::Relaxed);
        match (guard, port) {
            (Some(g), _) => {
                g.info().sent(to_ep);
                g.info().received(to_cl);
            }
            (None, Some(p)) => {
                let svc = self.stats.services.get(p);
                svc.bytes_to_endpoint.fetch_add(to_ep, Ordering::Relaxed);
                svc.bytes_to_client.fetch_add(to_cl, Ordering::Relaxed);
            }
            (None, None) => {}
        }
    }

    /// Rebuild from a dump of our entries (at start: an earlier run's flows, adopted; after
    /// lost events: what is alive now). The active count becomes the established entries.
    pub fn resync(&mut self, entries: &[Entry]) {
        let table = self.table.load();
        let alive: std::collections::HashSet<Tuple> =
            entries.iter().filter_map(|e| e.orig).collect();
        self.listed.retain(|t, _| alive.contains(t));
        let (mut active, mut udp_active) = (0, 0);
        for e in entries.iter().filter(|e| is_flow(e)) {
            if is_udp(e) && e.status & status::SEEN_REPLY != 0 {
                udp_active += 1;
            } else if !is_udp(e)
                && e.status & status::ASSURED != 0
                && !matches!(e.tcp_state, Some(tcp_state::CLOSE | tcp_state::TIME_WAIT))
            {
                active += 1;
            }
            if let Some(orig) = e.orig {
                self.list(orig, e, &table);
            }
        }
        self.stats.tcp_active.store(active, Ordering::Relaxed);
        self.stats
            .offload
            .udp_active
            .store(udp_active, Ordering::Relaxed);
    }
}

/// One less, never below zero (an entry adopted before its events were seen).
fn decrement(n: &std::sync::atomic::AtomicU64) {
    let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(1))
    });
}

/// The UDP entries of ours whose endpoint is no longer a usable endpoint of their Service
/// port (or whose Service port is gone): the flows to delete when the table changes, as
/// kube-proxy clears the conntrack entries of a removed UDP endpoint. A UDP flow has no end
/// the kernel sees, so a client that keeps sending would otherwise keep its entry, and
/// its datagrams going to the gone endpoint, for good. (Pure.) A deleted flow's next
/// datagram, still tracked while its element of the netfilter table's set lives, finds no
/// entry, takes an entry of the kernel's own into the TUN device, and is handed over anew
/// (that entry replaced: `offload::existing`). TCP flows run until they close.
pub fn stale_udp(table: &ServiceTable, entries: &[Entry]) -> Vec<Tuple> {
    entries
        .iter()
        .filter(|e| is_flow(e) && is_udp(e))
        .filter_map(|e| {
            let orig = e.orig?;
            let usable = match (port_of(table, &orig), e.endpoint()) {
                (Some(p), Some(ep)) => p.usable.contains(&ep),
                _ => false,
            };
            (!usable).then_some(orig)
        })
        .collect()
}

/// What [`stale_udp`] depends on in a table: the usable endpoints of every UDP Service port,
/// as a hash. The sweep dumps all of the gateway's entries (a DNS load keeps many), so it
/// runs only when this changes, not on every table (most changes are other Services').
/// Headless Services' pod ports are left out: their flows go to the pod address itself,
/// with nowhere else to move.
pub fn udp_fingerprint(table: &ServiceTable) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut ports: Vec<(std::net::IpAddr, u16, &[std::net::SocketAddr])> = table
        .ports()
        .filter(|p| p.protocol == Protocol::Udp)
        .map(|p| (p.cluster_ip, p.port, p.usable.as_slice()))
        .collect();
    ports.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ports.hash(&mut h);
    h.finish()
}

/// The thread that reads conntrack events and applies them.
pub struct Reader {
    events: Events,
    dump: Conntrack,
    pub accounting: Accounting,
    /// Ends the flows no endpoint answered (`ctsweep`).
    sweep: Sweeper,
    /// Bytes per Service port from the table's counters (`svcbytes`).
    by_service: ByService,
}

impl Reader {
    /// Subscribe (in the calling thread's namespace) and adopt the entries alive now. The
    /// subscription comes first: an entry is created with events only while someone
    /// listens (`nf_conntrack_events` = 2).
    pub fn open(accounting: Accounting) -> Result<Reader, ConntrackError> {
        let events = Events::open(WAIT)?;
        events.keep_only(&COUNTED_STATES)?;
        if let Err(e) = events.force_buffer(EVENTS_BUFFER) {
            tracing::debug!(error = %error_chain(&e), "events buffer left at the rmem_max sysctl");
        }
        let dump = Conntrack::open()?;
        let mut r = Reader {
            events,
            dump,
            accounting,
            sweep: Sweeper::new(ctsweep::syn_sent_timeout()),
            by_service: ByService::new(),
        };
        match nftables::by_service() {
            Ok(_) => r.accounting.per_port_from_table = true,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), reason = e.label(), "cannot read the per-Service byte counters; bytes per Service come from conntrack accounting when it is on")
            }
        }
        let entries = r.dump.dump_ours()?;
        r.accounting.resync(&entries);
        Ok(r)
    }

    /// Read and apply events until `shutdown` is set.
    pub fn run(mut self, shutdown: Arc<AtomicBool>) {
        let mut last_counters = Instant::now() - COUNTERS_EVERY;
        let mut generation = self.accounting.table.load().generation;
        let mut last_sweep = Instant::now();
        let mut udp_endpoints = udp_fingerprint(&self.accounting.table.load());
        let lost_log = LogLimit::new(Duration::from_secs(10));
        while !shutdown.load(Ordering::Relaxed) {
            let table = self.accounting.table.load_full();
            if table.generation != generation {
                generation = table.generation;
                let now = udp_fingerprint(&table);
                if now != udp_endpoints {
                    udp_endpoints = now;
                    self.end_stale_udp(&table);
                }
            }
            match self.events.recv_all(BATCH) {
                Ok(events) => {
                    let now = Instant::now();
                    for (kind, e) in &events {
                        // The end of an entry the sweep deleted: already counted.
                        if self.sweep.consumed(*kind, e) {
                            continue;
                        }
                        self.accounting.apply(*kind, e, now);
                    }
                    if !events.is_empty() {
                        std::thread::sleep(GATHER);
                    }
                }
                Err(ConntrackError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    self.accounting
                        .stats
                        .offload
                        .events_lost
                        .fetch_add(1, Ordering::Relaxed);
                    // A flood can make this happen again and again: one line per 10 s.
                    if let Some(suppressed) = lost_log.allow(Instant::now()) {
                        tracing::warn!(
                            suppressed,
                            "conntrack events were lost (reader behind); resyncing from a dump"
                        );
                    }
                    match self.dump.dump_ours() {
                        Ok(entries) => self.accounting.resync(&entries),
                        Err(e) => tracing::warn!(error = %error_chain(&e), "conntrack dump failed"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), reason = e.label(), "reading conntrack events failed");
                    std::thread::sleep(WAIT);
                }
            }
            if last_sweep.elapsed() >= ctsweep::SWEEP_EVERY {
                last_sweep = Instant::now();
                self.sweep.sweep(&mut self.accounting, last_sweep);
            }
            if last_counters.elapsed() >= COUNTERS_EVERY {
                last_counters = Instant::now();
                let off = &self.accounting.stats.offload;
                if let Some((_, b)) = nftables::counter(nftables::TO_ENDPOINT) {
                    off.bytes_to_endpoint.store(b, Ordering::Relaxed);
                }
                if let Some((_, b)) = nftables::counter(nftables::TO_CLIENT) {
                    off.bytes_to_client.store(b, Ordering::Relaxed);
                }
                if self.accounting.per_port_from_table {
                    let table = self.accounting.table.load();
                    if let Err(e) = self.by_service.read(&table, &self.accounting.stats) {
                        tracing::warn!(error = %error_chain(&e), reason = e.label(), "reading the per-Service byte counters failed");
                    }
                }
            }
        }
    }

    /// The UDP endpoints changed: delete the UDP entries whose endpoint went (see
    /// [`stale_udp`]).
    fn end_stale_udp(&mut self, table: &ServiceTable) {
        let entries = match self.dump.dump_ours() {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "conntrack dump failed; UDP flows to removed endpoints go on until they idle out");
                return;
            }
        };
        let stale = stale_udp(table, &entries);
        let mut deleted = 0usize;
        for t in &stale {
            match self.dump.delete(t) {
                Ok(_) => deleted += 1,
                Err(e) => {
                    tracing::debug!(client = %t.src, error = %error_chain(&e), "cannot delete a stale UDP entry")
                }
            }
        }
        if deleted > 0 {
            tracing::info!(
                flows = deleted,
                "UDP flows to endpoints no longer usable ended (their next datagram picks anew)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::conntrack::MARK_OWNER;
    use std::net::SocketAddr;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn entry(state: u8, st: u32) -> Entry {
        Entry {
            orig: Some(Tuple::tcp(sa("192.168.77.2:40000"), sa("10.96.0.10:80"))),
            reply: Some(Tuple::tcp(sa("10.244.1.10:8080"), sa("10.244.1.1:40000"))),
            status: st,
            mark: MARK_OWNER,
            tcp_state: Some(state),
            ..Entry::default()
        }
    }

    const A: u32 = status::ASSURED | status::SEEN_REPLY;

    #[test]
    fn outcomes_of_events() {
        use EventKind::*;
        let c = |k, s, st| classify(k, &entry(s, st));
        assert_eq!(c(NewOrUpdate, tcp_state::SYN_SENT, 0), None);
        assert_eq!(
            c(NewOrUpdate, tcp_state::SYN_RECV, status::SEEN_REPLY),
            None
        );
        assert_eq!(
            c(NewOrUpdate, tcp_state::ESTABLISHED, A),
            Some(Outcome::Established)
        );
        assert_eq!(
            c(NewOrUpdate, tcp_state::CLOSE, status::SEEN_REPLY),
            Some(Outcome::Failed("reset"))
        );
        // A client giving up before any reply: counted when the entry ends.
        assert_eq!(c(NewOrUpdate, tcp_state::CLOSE, 0), None);
        assert_eq!(
            c(Destroy, tcp_state::SYN_SENT, 0),
            Some(Outcome::Failed("unreplied"))
        );
        // An established flow closing is not a failure.
        assert_eq!(c(NewOrUpdate, tcp_state::CLOSE, A), None);
        assert_eq!(
            c(Destroy, tcp_state::TIME_WAIT, A),
            Some(Outcome::Ended { assured: true })
        );
        assert_eq!(
            c(Destroy, tcp_state::CLOSE, status::SEEN_REPLY),
            Some(Outcome::Ended { assured: false })
        );
    }

    fn accounting() -> Accounting {
        accounting_with(None)
    }

    /// The accounting of one TCP Service port (`10.96.0.10:80` → `10.244.1.10:8080`), with
    /// ClientIP affinity of `affinity` when given.
    fn accounting_with(affinity: Option<Duration>) -> Accounting {
        let eps = ["10.244.1.10:8080"];
        let mut port = ServicePort::for_test("t", "web", Protocol::Tcp, "10.96.0.10:80", &eps);
        port.affinity = affinity;
        let port = Arc::new(port);
        let service = crate::cluster::table::ServiceEntry {
            id: port.service.clone(),
            cluster_ips: vec![port.cluster_ip],
            type_: "ClusterIP".into(),
            ports: vec![port],
            not_exposed: None,
            unsupported_ports: vec![],
        };
        let table = ServiceTable::new(1, vec![service], vec![]);
        Accounting::new(
            Arc::new(ArcSwap::from_pointee(table)),
            Arc::new(Stats::default()),
            Arc::new(Outliers::new()),
        )
    }

    #[test]
    fn a_flow_is_listed_counted_once_and_unlisted_when_it_ends() {
        let mut a = accounting();
        let now = Instant::now();
        a.apply(EventKind::NewOrUpdate, &entry(tcp_state::SYN_SENT, 0), now);
        assert_eq!(a.listed(), 1);
        assert_eq!(a.stats.tcp_count(ConnResult::Ok), 0);
        a.apply(
            EventKind::NewOrUpdate,
            &entry(tcp_state::ESTABLISHED, A),
            now,
        );
        assert_eq!(a.stats.tcp_count(ConnResult::Ok), 1);
        assert_eq!(a.stats.tcp_active.load(Ordering::Relaxed), 1);
        assert_eq!(a.listed(), 1);
        // Closed: no longer live; its bytes still count when the entry ends.
        a.apply(EventKind::NewOrUpdate, &entry(tcp_state::TIME_WAIT, A), now);
        assert_eq!(a.listed(), 0);
        let mut end = entry(tcp_state::TIME_WAIT, A);
        end.counters_orig = Some((10, 1000));
        end.counters_reply = Some((12, 70_000));
        a.apply(EventKind::Destroy, &end, now);
        assert_eq!(a.listed(), 0);
        assert_eq!(a.stats.tcp_active.load(Ordering::Relaxed), 0);
        assert_eq!(a.stats.bytes_to_client.load(Ordering::Relaxed), 70_000);
        assert_eq!(a.stats.tcp_count(ConnResult::Ok), 1);
        assert_eq!(a.stats.tcp_count(ConnResult::DialFailed), 0);
    }

    /// A spoofed SYN (handed over, answered by the pod, never acknowledged) or a refused
    /// one leaves no ClientIP affinity; an established flow records it.
    #[test]
    fn affinity_is_recorded_only_when_the_handshake_completed() {
        let mut a = accounting_with(Some(Duration::from_secs(600)));
        let shared = Arc::new(SharedFlows::new(
            crate::dataplane::nat::NatConfig::new(
                "198.18.0.0/16".parse().unwrap(),
                "fdc7:7779::/64".parse().unwrap(),
                16,
            ),
            Instant::now(),
        ));
        a.affinity = Some(shared.clone());
        let now = Instant::now();
        let syn_recv = || entry(tcp_state::SYN_RECV, status::SEEN_REPLY);
        for (kind, e) in [
            (EventKind::NewOrUpdate, entry(tcp_state::SYN_SENT, 0)),
            (EventKind::NewOrUpdate, syn_recv()),
            (EventKind::Destroy, syn_recv()),
            (
                EventKind::NewOrUpdate,
                entry(tcp_state::CLOSE, status::SEEN_REPLY),
            ),
        ] {
            a.apply(kind, &e, now);
            assert_eq!(shared.affinities(), 0, "{kind:?} {:?}", e.tcp_state);
        }
        a.apply(
            EventKind::NewOrUpdate,
            &entry(tcp_state::ESTABLISHED, A),
            now,
        );
        assert_eq!(shared.affinities(), 1);
        // The client's next flow goes to the endpoint that served it.
        let table = a.table.load();
        let port = port_of(
            &table,
            &Tuple::tcp(sa("192.168.77.2:1"), sa("10.96.0.10:80")),
        )
        .expect("the port");
        let next = shared
            .pick(&port, "192.168.77.2".parse().unwrap(), now)
            .expect("candidates");
        assert_eq!(next.first(), sa("10.244.1.10:8080"));
    }

    #[test]
    fn a_reset_before_established_is_a_dial_failure_and_ejects_the_endpoint() {
        let mut a = accounting();
        let now = Instant::now();
        a.apply(EventKind::NewOrUpdate, &entry(tcp_state::SYN_SENT, 0), now);
        a.apply(
            EventKind::NewOrUpdate,
            &entry(tcp_state::CLOSE, status::SEEN_REPLY),
            now,
        );
        assert_eq!(a.stats.tcp_count(ConnResult::DialFailed), 1);
        assert!(a.outliers.is_ejected(sa("10.244.1.10:8080"), now));
        a.apply(
            EventKind::Destroy,
            &entry(tcp_state::CLOSE, status::SEEN_REPLY),
            now,
        );
        assert_eq!(a.stats.tcp_count(ConnResult::DialFailed), 1, "counted once");
        assert_eq!(a.listed(), 0);
    }

    #[test]
    fn foreign_and_probe_entries_are_ignored_and_the_list_is_bounded() {
        let mut a = accounting();
        let now = Instant::now();
        let mut foreign = entry(tcp_state::ESTABLISHED, A);
        foreign.mark = 0;
        a.apply(EventKind::NewOrUpdate, &foreign, now);
        let mut probe = entry(tcp_state::ESTABLISHED, A);
        probe.mark = MARK_OWNER | 0xffff;
        a.apply(EventKind::NewOrUpdate, &probe, now);
        assert_eq!(a.stats.tcp_count(ConnResult::Ok), 0);
        assert_eq!(a.listed(), 0);
        for i in 0..(LISTED + 10) {
            let mut e = entry(tcp_state::SYN_SENT, 0);
            e.orig = Some(Tuple::tcp(
                SocketAddr::from(([192, 168, (i / 60000) as u8, 2], (i % 60000) as u16 + 1)),
                sa("10.96.0.10:80"),
            ));
            a.apply(EventKind::NewOrUpdate, &e, now);
        }
        assert_eq!(a.listed(), LISTED);
    }

    #[test]
    fn resync_adopts_alive_entries_and_drops_gone_ones() {
        let mut a = accounting();
        let now = Instant::now();
        a.apply(EventKind::NewOrUpdate, &entry(tcp_state::SYN_SENT, 0), now);
        let mut other = entry(tcp_state::ESTABLISHED, A);
        other.orig = Some(Tuple::tcp(sa("192.168.77.2:40001"), sa("10.96.0.10:80")));
        a.resync(&[other.clone()]);
        assert_eq!(a.listed(), 1);
        assert_eq!(a.stats.tcp_active.load(Ordering::Relaxed), 1);
        // Adopted flows are not counted again as connections.
        assert_eq!(a.stats.tcp_count(ConnResult::Ok), 0);
    }

    fn udp_entry(st: u32) -> Entry {
        Entry {
            orig: Some(Tuple::udp(sa("192.168.77.2:40000"), sa("10.96.0.53:53"))),
            reply: Some(Tuple::udp(sa("10.244.1.10:5353"), sa("10.244.1.1:40000"))),
            status: st,
            mark: MARK_OWNER,
            tcp_state: None,
            ..Entry::default()
        }
    }

    fn udp_accounting() -> Accounting {
        let port = Arc::new(ServicePort::for_test(
            "t",
            "dns",
            Protocol::Udp,
            "10.96.0.53:53",
            &["10.244.1.10:5353"],
        ));
        let service = crate::cluster::table::ServiceEntry {
            id: port.service.clone(),
            cluster_ips: vec![port.cluster_ip],
            type_: "ClusterIP".into(),
            ports: vec![port],
            not_exposed: None,
            unsupported_ports: vec![],
        };
        Accounting::new(
            Arc::new(ArcSwap::from_pointee(ServiceTable::new(
                1,
                vec![service],
                vec![],
            ))),
            Arc::new(Stats::default()),
            Arc::new(Outliers::new()),
        )
    }

    #[test]
    fn a_udp_flow_is_ok_once_answered_and_dial_failed_when_it_ends_unanswered() {
        use EventKind::*;
        let c = |k, st| classify(k, &udp_entry(st));
        assert_eq!(c(NewOrUpdate, 0), None);
        assert_eq!(
            c(NewOrUpdate, status::SEEN_REPLY),
            Some(Outcome::Established)
        );
        // The later ASSURED update of the same flow is not counted again.
        assert_eq!(c(NewOrUpdate, A), None);
        assert_eq!(c(Destroy, 0), Some(Outcome::Unanswered));
        assert_eq!(c(Destroy, A), Some(Outcome::Ended { assured: false }));

        let mut a = udp_accounting();
        let now = Instant::now();
        a.apply(NewOrUpdate, &udp_entry(status::SEEN_REPLY), now);
        a.apply(NewOrUpdate, &udp_entry(A), now);
        assert_eq!(a.stats.udp_count(ConnResult::Ok), 1);
        assert_eq!(a.listed(), 1, "listed once answered");
        // UDP flows are not TCP connections.
        assert_eq!(a.stats.tcp_count(ConnResult::Ok), 0);
        assert_eq!(a.stats.tcp_active.load(Ordering::Relaxed), 0);
        assert_eq!(
            a.stats.udp_active_now(),
            1,
            "an answered UDP flow is active"
        );
        let mut end = udp_entry(A);
        end.counters_orig = Some((3, 300));
        end.counters_reply = Some((3, 900));
        a.apply(Destroy, &end, now);
        assert_eq!(a.listed(), 0);
        assert_eq!(a.stats.bytes_to_client.load(Ordering::Relaxed), 900);
        assert_eq!(a.stats.tcp_active.load(Ordering::Relaxed), 0);
        assert_eq!(a.stats.udp_active_now(), 0, "its entry is gone");
        // Unanswered: dial_failed, and the endpoint stays in.
        let mut quiet = udp_entry(0);
        quiet.orig = Some(Tuple::udp(sa("192.168.77.2:40001"), sa("10.96.0.53:53")));
        a.apply(Destroy, &quiet, now);
        assert_eq!(a.stats.udp_count(ConnResult::DialFailed), 1);
        assert!(!a.outliers.is_ejected(sa("10.244.1.10:5353"), now));
        assert_eq!(
            a.stats.udp_active_now(),
            0,
            "an unanswered flow was never active"
        );
        // Resync adopts UDP entries as active UDP flows (the answered ones), not as TCP
        // connections.
        a.resync(&[udp_entry(A), quiet]);
        assert_eq!(a.stats.tcp_active.load(Ordering::Relaxed), 0);
        assert_eq!(a.stats.udp_active_now(), 1);
    }

    #[test]
    fn udp_entries_to_an_endpoint_no_longer_usable_are_stale() {
        let a = udp_accounting();
        let table = a.table.load();
        let alive = udp_entry(A);
        let mut gone = udp_entry(A);
        gone.orig = Some(Tuple::udp(sa("192.168.77.2:40002"), sa("10.96.0.53:53")));
        gone.reply = Some(Tuple::udp(sa("10.244.9.9:5353"), sa("10.244.9.1:40002")));
        let mut no_port = udp_entry(0);
        no_port.orig = Some(Tuple::udp(sa("192.168.77.2:40003"), sa("10.96.0.99:53")));
        // TCP entries and entries not ours are never touched.
        let mut tcp = entry(tcp_state::ESTABLISHED, A);
        tcp.reply = Some(Tuple::tcp(sa("10.244.9.9:8080"), sa("10.244.9.1:40000")));
        let mut foreign = gone.clone();
        foreign.mark = 0;
        let stale = stale_udp(
            &table,
            &[alive, gone.clone(), no_port.clone(), tcp, foreign],
        );
        assert_eq!(stale, vec![gone.orig.unwrap(), no_port.orig.unwrap()]);
    }

    #[test]
    fn with_the_table_s_per_service_counters_entry_counters_go_to_the_flow_only() {
        let mut a = accounting();
        a.per_port_from_table = true;
        let now = Instant::now();
        a.apply(EventKind::NewOrUpdate, &entry(tcp_state::SYN_SENT, 0), now);
        let flows = a.stats.flows.snapshot();
        assert_eq!(flows.len(), 1);
        let mut end = entry(tcp_state::TIME_WAIT, A);
        end.counters_orig = Some((10, 1000));
        end.counters_reply = Some((12, 70_000));
        a.apply(EventKind::Destroy, &end, now);
        // The flow's own totals, but not the Service port's nor the gateway's: the table's
        // counters (svcbytes) have those bytes already.
        assert_eq!(flows[0].to_client.load(Ordering::Relaxed), 70_000);
        assert_eq!(
            flows[0]
                .service_stats
                .bytes_to_client
                .load(Ordering::Relaxed),
            0
        );
        assert_eq!(a.stats.bytes_to_client.load(Ordering::Relaxed), 0);
    }
    #[test]
    fn updates_the_kernel_filters_out_would_count_nothing() {
        // The events socket keeps only COUNTED_STATES: every other state must be one that
        // classify ignores and that does not take a flow off the list.
        for state in 0..=tcp_state::SYN_SENT2 {
            if COUNTED_STATES.contains(&state) {
                continue;
            }
            for st in [0, status::SEEN_REPLY, A] {
                assert_eq!(
                    classify(EventKind::NewOrUpdate, &entry(state, st)),
                    None,
                    "{}",
                    tcp_state::name(state)
                );
            }
            let mut a = accounting();
            let now = Instant::now();
            a.apply(
                EventKind::NewOrUpdate,
                &entry(tcp_state::ESTABLISHED, A),
                now,
            );
            a.apply(EventKind::NewOrUpdate, &entry(state, A), now);
            assert_eq!(a.listed(), 1, "{}", tcp_state::name(state));
        }
    }

    #[test]
    fn the_udp_fingerprint_changes_with_udp_endpoints_only() {
        let udp = udp_accounting();
        let tcp = accounting();
        let fp = udp_fingerprint(&udp.table.load());
        assert_eq!(
            fp,
            udp_fingerprint(&udp_accounting().table.load()),
            "stable"
        );
        // A table without UDP ports, and one whose UDP port has another endpoint.
        assert_ne!(fp, udp_fingerprint(&tcp.table.load()));
        let moved = Arc::new(ServicePort::for_test(
            "t",
            "dns",
            Protocol::Udp,
            "10.96.0.53:53",
            &["10.244.2.10:5353"],
        ));
        let service = crate::cluster::table::ServiceEntry {
            id: moved.service.clone(),
            cluster_ips: vec![moved.cluster_ip],
            type_: "ClusterIP".into(),
            ports: vec![moved],
            not_exposed: None,
            unsupported_ports: vec![],
        };
        let t = ServiceTable::new(2, vec![service], vec![]);
        assert_ne!(fp, udp_fingerprint(&t));
    }
}
