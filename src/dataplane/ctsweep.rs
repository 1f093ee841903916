//! Flow offload: offloaded TCP flows the endpoint never answers end after
//! [`UNREPLIED_AFTER`], as an unanswered flow of the proxy dataplane does
//! (`nat::PENDING_TIMEOUT`), instead of living the kernel's SYN_SENT timeout (two minutes,
//! refreshed by every retransmitted SYN).
//!
//! No sysctl is changed and no timeout policy is attached: the kernel applies `ct timeout`
//! policies only to entries it creates itself (unconfirmed, from a rule), not to the ones
//! ctnetlink creates, and `nf_conntrack_tcp_timeout_syn_sent` is the operator's. Instead the
//! events thread sweeps every [`SWEEP_EVERY`]: it dumps the gateway's entries that have seen
//! no reply (the kernel filters by mark and status), remembers when it first saw each, and
//! deletes the SYN_SENT ones that have waited [`UNREPLIED_AFTER`] (by id: an entry that
//! took the tuple since stays). Each deletion is a dial failure right away, through the
//! same path as the kernel's DESTROY event of an unreplied entry (per Service port, a
//! notice on the status page, the endpoint ejected); the DESTROY event the deletion itself
//! causes is then recognised ([`Sweeper::consumed`]) and not counted again.
//!
//! Bounded: at most [`PER_SWEEP`] entries are read and deleted per sweep (a SYN flood can
//! create many; the kernel's own timeout still ends the rest), first sightings are kept for
//! at most [`TRACKED`] entries (beyond that, an entry's remaining timeout tells its wait),
//! and deleted ids for [`SWEPT_KEPT`].
//!
//! Owns: its ctnetlink socket and the two bounded maps. Must not touch: entries that are not
//! ours, entries that have seen a reply.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::ctevents::{is_flow, Accounting};
use crate::cluster::kubeconfig::error_chain;
use crate::host::conntrack::{
    status, tcp_state, Conntrack, ConntrackError, Entry, EventKind, Tuple,
};

/// How long an offloaded flow may wait for its endpoint's first answer.
pub const UNREPLIED_AFTER: Duration = Duration::from_secs(10);
/// How often the entries are swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Entries read (and at most deleted) per sweep.
pub const PER_SWEEP: usize = 4096;
/// Unreplied entries whose first sighting is remembered.
pub const TRACKED: usize = 65_536;
/// How long the id of a deleted entry is kept to recognise its DESTROY event.
pub const SWEPT_KEPT: Duration = Duration::from_secs(30);
/// The kernel's SYN_SENT timeout when its sysctl cannot be read.
const SYN_SENT_DEFAULT: u32 = 120;

/// An entry: its original tuple and its kernel id.
type Key = (Tuple, u32);

/// Whether an unreplied entry has waited long enough to end (pure). `first_seen` is when a
/// sweep first saw it (None when it is not tracked); `syn_sent` the kernel's SYN_SENT
/// timeout, from which an untracked entry's remaining timeout tells how long ago its last
/// SYN passed.
pub fn overdue(
    e: &Entry,
    first_seen: Option<Instant>,
    syn_sent: u32,
    now: Instant,
    after: Duration,
) -> bool {
    let candidate = is_flow(e)
        && e.status & status::SEEN_REPLY == 0
        && e.tcp_state == Some(tcp_state::SYN_SENT);
    if !candidate {
        return false;
    }
    match (first_seen, e.timeout) {
        (Some(at), _) => now.saturating_duration_since(at) >= after,
        (None, Some(left)) => {
            Duration::from_secs(u64::from(syn_sent.saturating_sub(left))) >= after
        }
        (None, None) => false,
    }
}

/// The sweep's state: when each unreplied entry was first seen, and what it deleted.
pub struct Sweeper {
    syn_sent: u32,
    first_seen: HashMap<Key, Instant>,
    swept: HashMap<Key, Instant>,
    deleter: Option<Conntrack>,
}

impl Sweeper {
    /// `syn_sent`: the kernel's SYN_SENT timeout in seconds (see [`syn_sent_timeout`]).
    pub fn new(syn_sent: u32) -> Sweeper {
        Sweeper {
            syn_sent,
            first_seen: HashMap::new(),
            swept: HashMap::new(),
            deleter: None,
        }
    }

    /// Entries whose first sighting is remembered now.
    pub fn tracked(&self) -> usize {
        self.first_seen.len()
    }

    /// Take a dump of unreplied entries (`complete`: all of them) and return the ones to
    /// end now, at most [`PER_SWEEP`] (pure but for the maps).
    pub fn decide(&mut self, entries: &[Entry], complete: bool, now: Instant) -> Vec<Entry> {
        let syn_sent = self.syn_sent;
        if complete {
            let alive: std::collections::HashSet<Key> = entries.iter().filter_map(key).collect();
            self.first_seen.retain(|k, _| alive.contains(k));
        }
        // Entries not seen for long (a cut dump does not prune) are gone by now.
        let horizon = Duration::from_secs(u64::from(syn_sent.max(SYN_SENT_DEFAULT)) * 2);
        self.first_seen
            .retain(|_, at| now.saturating_duration_since(*at) < horizon);
        let mut due = Vec::new();
        for e in entries {
            let Some(k) = key(e) else { continue };
            let first = match self.first_seen.get(&k) {
                Some(at) => Some(*at),
                None if self.first_seen.len() < TRACKED => {
                    self.first_seen.insert(k, now);
                    Some(now)
                }
                None => None,
            };
            if due.len() < PER_SWEEP && overdue(e, first, syn_sent, now, UNREPLIED_AFTER) {
                due.push(e.clone());
            }
        }
        due
    }

    /// `e` was deleted by the sweep: its DESTROY event is expected.
    pub fn deleted(&mut self, e: &Entry, now: Instant) {
        let Some(k) = key(e) else { return };
        self.first_seen.remove(&k);
        self.swept
            .retain(|_, at| now.saturating_duration_since(*at) < SWEPT_KEPT);
        if self.swept.len() < TRACKED {
            self.swept.insert(k, now);
        }
    }

    /// Whether an event is the DESTROY of an entry the sweep deleted (already counted).
    pub fn consumed(&mut self, kind: EventKind, e: &Entry) -> bool {
        if kind != EventKind::Destroy || self.swept.is_empty() {
            return false;
        }
        key(e).is_some_and(|k| self.swept.remove(&k).is_some())
    }

    /// One sweep: dump, decide, delete, count. Errors are logged; the next sweep retries.
    pub fn sweep(&mut self, accounting: &mut Accounting, now: Instant) {
        let dump = Conntrack::open().and_then(|ct| ct.dump_ours_unreplied(PER_SWEEP));
        let (entries, complete) = match dump {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), reason = e.label(), "sweeping unanswered offloaded flows failed");
                return;
            }
        };
        let due = self.decide(&entries, complete, now);
        for e in &due {
            match self.delete(e) {
                Ok(true) => {
                    self.deleted(e, now);
                    // Counted as the kernel's DESTROY of an unreplied entry would be.
                    accounting.apply(EventKind::Destroy, e, now);
                }
                // Gone meanwhile, or the tuple is another entry's now.
                Ok(false) => {
                    if let Some(k) = key(e) {
                        self.first_seen.remove(&k);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %error_chain(&err), reason = err.label(), "deleting an unanswered offloaded flow failed");
                    self.deleter = None;
                    return;
                }
            }
        }
        if !due.is_empty() {
            tracing::debug!(
                ended = due.len(),
                unreplied = entries.len(),
                "unanswered offloaded flows ended"
            );
        }
    }

    fn delete(&mut self, e: &Entry) -> Result<bool, ConntrackError> {
        let (Some(orig), Some(id)) = (e.orig, e.id) else {
            return Ok(false);
        };
        let ct = match &mut self.deleter {
            Some(ct) => ct,
            None => self.deleter.insert(Conntrack::open()?),
        };
        ct.delete_entry(&orig, id)
    }
}

fn key(e: &Entry) -> Option<Key> {
    Some((e.orig?, e.id.unwrap_or(0)))
}

/// The kernel's SYN_SENT timeout in this namespace (read, never written).
pub fn syn_sent_timeout() -> u32 {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_syn_sent")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(SYN_SENT_DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::conntrack::MARK_OWNER;
    use std::net::SocketAddr;

    fn unreplied(port: u16, id: u32, timeout: u32) -> Entry {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        Entry {
            orig: Some(Tuple::tcp(
                SocketAddr::new(sa("192.168.77.2:1").ip(), port),
                sa("10.96.0.10:80"),
            )),
            reply: Some(Tuple::tcp(sa("10.244.1.10:8080"), sa("10.244.1.1:40000"))),
            status: 0,
            mark: MARK_OWNER,
            tcp_state: Some(tcp_state::SYN_SENT),
            timeout: Some(timeout),
            id: Some(id),
            ..Entry::default()
        }
    }

    #[test]
    fn only_our_unreplied_syn_sent_flows_that_waited_are_overdue() {
        let t0 = Instant::now();
        let ten = UNREPLIED_AFTER;
        let e = unreplied(40000, 1, 119);
        assert!(!overdue(
            &e,
            Some(t0),
            120,
            t0 + Duration::from_secs(9),
            ten
        ));
        assert!(overdue(&e, Some(t0), 120, t0 + ten, ten));
        // Untracked: the remaining timeout tells (a retransmitted SYN refreshes it).
        assert!(!overdue(&e, None, 120, t0, ten));
        assert!(overdue(&unreplied(40000, 1, 110), None, 120, t0, ten));
        assert!(!overdue(&unreplied(40000, 1, 200), None, 120, t0, ten));
        let mut no_timeout = e.clone();
        no_timeout.timeout = None;
        assert!(!overdue(&no_timeout, None, 120, t0, ten));
        // A reply, another state, another owner, the probe: never.
        let later = t0 + Duration::from_secs(60);
        let mut replied = e.clone();
        replied.status = status::SEEN_REPLY;
        let mut closing = e.clone();
        closing.tcp_state = Some(tcp_state::CLOSE);
        let mut foreign = e.clone();
        foreign.mark = 0;
        let mut probe = e.clone();
        probe.mark = MARK_OWNER | 0xffff;
        for x in [replied, closing, foreign, probe] {
            assert!(!overdue(&x, Some(t0), 120, later, ten), "{x:?}");
        }
    }

    #[test]
    fn first_sightings_decide_and_are_pruned_and_bounded() {
        let mut s = Sweeper::new(120);
        let t0 = Instant::now();
        let a = unreplied(40000, 1, 120);
        let b = unreplied(40001, 2, 120);
        assert!(s.decide(std::slice::from_ref(&a), true, t0).is_empty());
        // Retransmitted SYNs keep the timeout high; the first sighting still counts.
        let t5 = t0 + Duration::from_secs(5);
        assert!(s.decide(&[a.clone(), b.clone()], true, t5).is_empty());
        let due = s.decide(&[a.clone(), b.clone()], true, t0 + UNREPLIED_AFTER);
        assert_eq!(due, vec![a.clone()]);
        // A complete dump without `b` forgets it; a cut one does not.
        s.decide(std::slice::from_ref(&a), false, t5);
        assert_eq!(s.tracked(), 2);
        s.decide(std::slice::from_ref(&a), true, t5);
        assert_eq!(s.tracked(), 1);
        // Same tuple, new entry (another id): a new wait.
        let a2 = unreplied(40000, 9, 120);
        assert!(s.decide(&[a2], true, t0 + UNREPLIED_AFTER * 2).is_empty());

        let mut s = Sweeper::new(120);
        let many: Vec<Entry> = (0..(TRACKED + 10))
            .map(|i| unreplied((i % 60000) as u16 + 1, i as u32, 120))
            .collect();
        s.decide(&many, false, t0);
        assert_eq!(s.tracked(), TRACKED);
        // Every entry overdue: at most PER_SWEEP per sweep.
        let due = s.decide(&many, false, t0 + UNREPLIED_AFTER);
        assert_eq!(due.len(), PER_SWEEP);
    }

    #[test]
    fn a_deleted_entry_s_destroy_event_is_consumed_once() {
        let mut s = Sweeper::new(120);
        let t0 = Instant::now();
        let a = unreplied(40000, 1, 120);
        assert!(!s.consumed(EventKind::Destroy, &a));
        s.decide(std::slice::from_ref(&a), true, t0);
        s.deleted(&a, t0);
        assert_eq!(s.tracked(), 0);
        assert!(!s.consumed(EventKind::NewOrUpdate, &a));
        // Another entry on the same tuple is not the deleted one.
        assert!(!s.consumed(EventKind::Destroy, &unreplied(40000, 2, 120)));
        assert!(s.consumed(EventKind::Destroy, &a));
        assert!(!s.consumed(EventKind::Destroy, &a), "once");
        // Kept for a while only.
        s.deleted(&a, t0);
        s.deleted(&unreplied(40001, 3, 120), t0 + SWEPT_KEPT);
        assert!(!s.consumed(EventKind::Destroy, &a));
    }

    fn accounting() -> Accounting {
        use crate::cluster::table::{Protocol, ServiceEntry, ServicePort, ServiceTable};
        use std::sync::Arc;
        let port = Arc::new(ServicePort::for_test(
            "t",
            "web",
            Protocol::Tcp,
            "10.96.0.10:80",
            &["10.244.1.10:8080"],
        ));
        let service = ServiceEntry {
            id: port.service.clone(),
            cluster_ips: vec![port.cluster_ip],
            type_: "ClusterIP".into(),
            ports: vec![port],
            not_exposed: None,
            unsupported_ports: vec![],
        };
        Accounting::new(
            Arc::new(arc_swap::ArcSwap::from_pointee(ServiceTable::new(
                1,
                vec![service],
                vec![],
            ))),
            Arc::new(crate::dataplane::stats::Stats::default()),
            Arc::new(crate::dataplane::outlier::Outliers::new()),
        )
    }

    #[test]
    fn a_sweep_counts_a_dial_failure_through_the_accounting() {
        // The counting half of `sweep`, without a socket: what it does for a deleted entry.
        use crate::dataplane::stats::ConnResult;
        let mut acct = accounting();
        let mut s = Sweeper::new(120);
        let t0 = Instant::now();
        let a = unreplied(40000, 1, 120);
        acct.apply(EventKind::NewOrUpdate, &a, t0);
        assert_eq!(acct.listed(), 1);
        let due = s.decide(std::slice::from_ref(&a), true, t0 + UNREPLIED_AFTER);
        assert!(due.is_empty(), "first seen only now");
        let due = s.decide(std::slice::from_ref(&a), true, t0 + UNREPLIED_AFTER * 2);
        assert_eq!(due.len(), 1);
        s.deleted(&a, t0);
        acct.apply(EventKind::Destroy, &due[0], t0);
        assert_eq!(acct.stats.tcp_count(ConnResult::DialFailed), 1);
        assert_eq!(acct.listed(), 0);
        // The kernel's DESTROY of the deleted entry follows: consumed, not counted again.
        assert!(s.consumed(EventKind::Destroy, &a));
        assert_eq!(acct.stats.tcp_count(ConnResult::DialFailed), 1);
    }
}
