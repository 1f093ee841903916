//! Dataplane counters: packets, drops by reason, connections by result. Plain atomics
//! (relaxed), written by the workers and read by whoever reports them; no lock.

use std::sync::atomic::{AtomicU64, Ordering};

use super::packet::DropReason;

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

const OTHER_REASONS: usize = 8;

#[derive(Debug, Default)]
pub struct Stats {
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub replies_built: AtomicU64,
    malformed: [AtomicU64; 32],
    other: [AtomicU64; OTHER_REASONS],
    tcp: [AtomicU64; 5],
    udp: [AtomicU64; 5],
    pub tcp_active: AtomicU64,
    pub udp_active: AtomicU64,
    pub bytes_to_endpoint: AtomicU64,
    pub bytes_to_client: AtomicU64,
}

fn other_index(r: Reason) -> usize {
    match r {
        Reason::Malformed(_) => unreachable!("malformed reasons have their own counters"),
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
    pub fn count_drop(&self, reason: Reason) {
        let c = match reason {
            Reason::Malformed(r) => {
                let i = DropReason::ALL.iter().position(|x| *x == r).unwrap_or(0);
                &self.malformed[i.min(31)]
            }
            other => &self.other[other_index(other)],
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tcp_conn(&self, r: ConnResult) {
        self.tcp[result_index(r)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn udp_flow(&self, r: ConnResult) {
        self.udp[result_index(r)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn tcp_count(&self, r: ConnResult) -> u64 {
        self.tcp[result_index(r)].load(Ordering::Relaxed)
    }

    pub fn udp_count(&self, r: ConnResult) -> u64 {
        self.udp[result_index(r)].load(Ordering::Relaxed)
    }

    /// Every drop counter that is not zero, by label.
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
            Reason::FragmentQueued,
        ] {
            let v = self.other[other_index(r)].load(Ordering::Relaxed);
            if v > 0 {
                out.push((r.label(), v));
            }
        }
        out
    }
}
