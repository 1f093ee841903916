//! The DNS server's counters (read by `/metrics` at scrape time) and a bounded, rate-limited
//! ring of failed queries (moved into the status page's event feed by the sampler).
//!
//! Counters are atomics bumped once per query; the ring takes its lock only for a failed
//! query, and at most [`FAILURES_PER_SECOND`] times a second.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Response codes counted, in the order of [`DnsStats::responses`].
pub const RCODES: [&str; 6] = [
    "noerror", "formerr", "servfail", "nxdomain", "notimp", "refused",
];

/// Why a query got no answer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// Shorter than a DNS header.
    #[error("shorter than a DNS header")]
    Runt,
    /// A response (QR set) sent to the server: never answered (no reflection loops).
    #[error("a response, not a query")]
    NotAQuery,
    /// The forwarder's in-flight table is full.
    #[error("too many forwarded queries in flight")]
    ForwardTableFull,
    /// This client already has its share of queries in flight to the forwarder.
    #[error("too many forwarded queries in flight from this client")]
    ForwardClientLimit,
    /// The forwarder did not answer in time.
    #[error("the forwarder did not answer in time")]
    ForwardTimeout,
    /// A reply from the forwarder that matches no query in flight.
    #[error("a forwarder reply that matches no query")]
    ForwardUnmatched,
    /// The TCP connection limit was reached; the connection was closed.
    #[error("too many TCP connections")]
    TcpLimit,
    /// This client already holds its share of TCP connections; the new one was closed.
    #[error("too many TCP connections from this client")]
    TcpClientLimit,
    /// A TCP client sent a length prefix and then stalled or closed.
    #[error("a TCP query was cut short")]
    TcpTruncated,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::Runt,
        DropReason::NotAQuery,
        DropReason::ForwardTableFull,
        DropReason::ForwardClientLimit,
        DropReason::ForwardTimeout,
        DropReason::ForwardUnmatched,
        DropReason::TcpLimit,
        DropReason::TcpClientLimit,
        DropReason::TcpTruncated,
    ];

    /// The label in metrics.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::NotAQuery => "not_a_query",
            DropReason::ForwardTableFull => "forward_table_full",
            DropReason::ForwardClientLimit => "forward_client_limit",
            DropReason::ForwardTimeout => "forward_timeout",
            DropReason::ForwardUnmatched => "forward_unmatched",
            DropReason::TcpLimit => "tcp_limit",
            DropReason::TcpClientLimit => "tcp_client_limit",
            DropReason::TcpTruncated => "tcp_truncated",
        }
    }
}

/// A failed query worth showing to a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Increases by one per failure kept.
    pub seq: u64,
    pub at: SystemTime,
    pub client: IpAddr,
    /// `NXDOMAIN web.shop.svc.cluster.local. A`, `dropped: ...`.
    pub message: String,
}

/// Failures kept for the sampler.
const FAILURE_RING: usize = 256;
/// Most failures kept per second; the rest are only counted (`suppressed`).
pub const FAILURES_PER_SECOND: u64 = 20;

#[derive(Debug, Default)]
pub struct DnsStats {
    /// Replies sent, by response code (index as in [`RCODES`]).
    pub responses: [AtomicU64; RCODES.len()],
    /// NOERROR replies without an answer (RFC 2308 NODATA), also counted as noerror.
    pub nodata: AtomicU64,
    /// UDP replies cut to the header and question (TC set) because they did not fit.
    pub truncated: AtomicU64,
    /// Queries sent on to `--dns-forward`.
    pub forwarded: AtomicU64,
    /// Queries not answered, by reason (index as in [`DropReason::ALL`]).
    pub dropped: [AtomicU64; DropReason::ALL.len()],
    /// Queries by transport.
    pub udp_queries: AtomicU64,
    pub tcp_queries: AtomicU64,
    /// Open TCP connections now.
    pub tcp_open: AtomicU64,
    failures: Mutex<VecDeque<Failure>>,
    window: AtomicU64,
    in_window: AtomicU64,
    /// Failures not kept in the ring (rate limit).
    pub suppressed: AtomicU64,
    /// The last failure moved into the status page's event feed (the sampler's cursor).
    pub drained: AtomicU64,
}

impl DnsStats {
    /// Counts a reply with response code `rcode` (a label of [`RCODES`]; others are
    /// counted as servfail, which the server never sends otherwise).
    pub fn response(&self, rcode: &str) {
        let i = RCODES.iter().position(|r| *r == rcode).unwrap_or(2);
        self.responses[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == reason) {
            self.dropped[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn responses_of(&self, rcode: &str) -> u64 {
        RCODES
            .iter()
            .position(|r| *r == rcode)
            .map_or(0, |i| self.responses[i].load(Ordering::Relaxed))
    }

    pub fn dropped_of(&self, reason: DropReason) -> u64 {
        DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.dropped[i].load(Ordering::Relaxed))
    }

    /// Keeps a failed query for the event feed (rate limited).
    pub fn failure(&self, client: IpAddr, message: String) {
        let now = SystemTime::now();
        let sec = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if self.window.swap(sec, Ordering::Relaxed) != sec {
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) >= FAILURES_PER_SECOND {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut ring = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let seq = ring.back().map_or(1, |f| f.seq + 1);
        if ring.len() >= FAILURE_RING {
            ring.pop_front();
        }
        ring.push_back(Failure {
            seq,
            at: now,
            client,
            message,
        });
    }

    /// Failures with a sequence number above `after`, oldest first.
    pub fn failures_since(&self, after: u64) -> Vec<Failure> {
        let ring = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().filter(|f| f.seq > after).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_code_and_reason_and_bounds_failures() {
        let s = DnsStats::default();
        s.response("nxdomain");
        s.response("nxdomain");
        s.response("refused");
        s.dropped(DropReason::NotAQuery);
        assert_eq!(s.responses_of("nxdomain"), 2);
        assert_eq!(s.responses_of("refused"), 1);
        assert_eq!(s.responses_of("noerror"), 0);
        assert_eq!(s.dropped_of(DropReason::NotAQuery), 1);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..(FAILURES_PER_SECOND * 3) {
            s.failure(ip, format!("failure {i}"));
        }
        let kept = s.failures_since(0);
        // All within (at most) two one-second windows.
        assert!(
            kept.len() as u64 <= FAILURES_PER_SECOND * 2,
            "{}",
            kept.len()
        );
        assert!(kept.len() as u64 >= FAILURES_PER_SECOND);
        assert!(s.suppressed.load(Ordering::Relaxed) > 0);
        let last = kept.last().unwrap().seq;
        assert!(s.failures_since(last).is_empty());
    }
}
