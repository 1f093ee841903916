//! `/metrics`: the gateway's state in Prometheus text format, built at scrape time from
//! the table, the dataplane's atomics and the source's sync state (nothing is kept twice).
//!
//! Label sets are bounded by the table: namespace, Service, port, protocol, result,
//! direction, reason, state — never a client or endpoint address.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use super::Status;
use crate::cluster::sync::{SourceCounters, SyncState};
use crate::dataplane::stats::{ConnResult, LATENCY_BUCKETS};

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, t: MetricType) -> Family {
        let mut f = MetricFamily::default();
        f.set_name(format!("clusterway_{name}"));
        f.set_help(help.to_string());
        f.set_field_type(t);
        Family(f)
    }

    fn counter(mut self, pairs: &[(&str, &str)], v: f64) -> Self {
        let mut c = Counter::default();
        c.set_value(v);
        let mut m = Metric::from_label(labels(pairs));
        m.set_counter(c);
        self.0.mut_metric().push(m);
        self
    }

    fn gauge(mut self, pairs: &[(&str, &str)], v: f64) -> Self {
        let mut g = Gauge::default();
        g.set_value(v);
        let mut m = Metric::from_label(labels(pairs));
        m.set_gauge(g);
        self.0.mut_metric().push(m);
        self
    }

    fn push_counter(&mut self, pairs: &[(&str, &str)], v: f64) {
        let mut c = Counter::default();
        c.set_value(v);
        let mut m = Metric::from_label(labels(pairs));
        m.set_counter(c);
        self.0.mut_metric().push(m);
    }
}

/// Every metric family, in a stable order.
pub fn gather(status: &Status) -> Vec<MetricFamily> {
    let table = status.table.load();
    let stats = &status.stats;
    let mut out = Vec::new();

    // Services and endpoints by state.
    let (mut serving, mut no_endpoints, mut not_exposed) = (0u64, 0u64, 0u64);
    let (mut ready, mut serving_only, mut terminating, mut total_eps) = (0u64, 0u64, 0u64, 0u64);
    for s in &table.services {
        if s.not_exposed.is_some() {
            not_exposed += 1;
            continue;
        }
        if s.ports.iter().any(|p| !p.usable.is_empty()) {
            serving += 1;
        } else {
            no_endpoints += 1;
        }
        for p in &s.ports {
            for e in &p.endpoints {
                total_eps += 1;
                let c = e.conditions;
                if c.ready {
                    ready += 1;
                } else if c.serving {
                    serving_only += 1;
                }
                if c.terminating {
                    terminating += 1;
                }
            }
        }
    }
    out.push(
        Family::new(
            "services",
            "Services in the table by state (serving: at least one port has usable endpoints).",
            MetricType::GAUGE,
        )
        .gauge(&[("state", "serving")], serving as f64)
        .gauge(&[("state", "no_endpoints")], no_endpoints as f64)
        .gauge(&[("state", "not_exposed")], not_exposed as f64)
        .0,
    );
    out.push(
        Family::new(
            "endpoints",
            "Endpoints of exposed Service ports (per port and family) by condition.",
            MetricType::GAUGE,
        )
        .gauge(&[("state", "ready")], ready as f64)
        .gauge(&[("state", "serving_not_ready")], serving_only as f64)
        .gauge(&[("state", "terminating")], terminating as f64)
        .gauge(&[("state", "total")], total_eps as f64)
        .0,
    );

    // Connections, bytes and active flows per Service port.
    let mut per = stats.services.snapshot();
    per.sort_by(|a, b| a.0.cmp(&b.0));
    let mut conns = Family::new(
        "connections_total",
        "TCP connections and UDP flows attempted, by Service port and result.",
        MetricType::COUNTER,
    );
    let mut bytes = Family::new(
        "bytes_total",
        "Payload bytes proxied, by Service and direction (TCP counted as read, UDP per datagram).",
        MetricType::COUNTER,
    );
    let mut bytes_by_service: std::collections::BTreeMap<(String, String), (u64, u64)> =
        Default::default();
    for (k, s) in &per {
        let port = k.port.to_string();
        for r in ConnResult::ALL {
            conns.push_counter(
                &[
                    ("namespace", &k.service.namespace),
                    ("service", &k.service.name),
                    ("port", &port),
                    ("protocol", k.protocol.label()),
                    ("result", r.label()),
                ],
                s.count(r) as f64,
            );
        }
        let e = bytes_by_service
            .entry((k.service.namespace.clone(), k.service.name.clone()))
            .or_default();
        e.0 += s.bytes_to_endpoint.load(Ordering::Relaxed);
        e.1 += s.bytes_to_client.load(Ordering::Relaxed);
    }
    for ((ns, name), (to_ep, to_cl)) in &bytes_by_service {
        bytes.push_counter(
            &[
                ("namespace", ns),
                ("service", name),
                ("direction", "to_endpoint"),
            ],
            *to_ep as f64,
        );
        bytes.push_counter(
            &[
                ("namespace", ns),
                ("service", name),
                ("direction", "to_client"),
            ],
            *to_cl as f64,
        );
    }
    out.push(conns.0);
    out.push(bytes.0);
    out.push(
        Family::new(
            "active_flows",
            "TCP connections and UDP flows open now, proxied or carried by the kernel (offload).",
            MetricType::GAUGE,
        )
        .gauge(
            &[("protocol", "TCP")],
            stats.tcp_active.load(Ordering::Relaxed) as f64,
        )
        .gauge(&[("protocol", "UDP")], stats.udp_active_now() as f64)
        .0,
    );

    // The proxy's byte path: splice or copy, and the pipe pool.
    let splice = &stats.splice;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
    out.push(
        Family::new(
            "proxy_moved_bytes_total",
            "Bytes the TCP proxy wrote to sockets, by how: spliced kernel to kernel through a pipe, or copied through a buffer (short bursts, or no pipe free).",
            MetricType::COUNTER,
        )
        .counter(&[("method", "splice")], load(&splice.bytes_spliced))
        .counter(&[("method", "copy")], load(&splice.bytes_copied))
        .0,
    );
    out.push(
        Family::new(
            "splice_pipes",
            "Splice pipes lent to connections now, and the pool's capacity (from RLIMIT_NOFILE).",
            MetricType::GAUGE,
        )
        .gauge(&[("state", "lent")], load(&splice.pipes_lent))
        .gauge(&[("state", "capacity")], load(&splice.pipes_capacity))
        .0,
    );
    out.push(
        Family::new(
            "splice_pool_exhausted_total",
            "Bursts large enough to splice that found every pipe lent and were copied instead (raise the file limit for more pipes).",
            MetricType::COUNTER,
        )
        .counter(&[], load(&splice.pool_exhausted))
        .0,
    );
    out.push(
        Family::new(
            "splice_refused_total",
            "Connection directions for which the kernel refused splice(2); their bytes are copied.",
            MetricType::COUNTER,
        )
        .counter(&[], load(&splice.refused))
        .0,
    );

    // Dial latency.
    let (cumulative, count, sum) = stats.dial_latency.read();
    let mut h = Histogram::default();
    h.set_sample_count(count);
    h.set_sample_sum(sum);
    for (bound, c) in LATENCY_BUCKETS.iter().zip(cumulative) {
        let mut b = Bucket::default();
        b.set_upper_bound(*bound);
        b.set_cumulative_count(c);
        h.bucket.push(b);
    }
    let mut m = Metric::default();
    m.set_histogram(h);
    let mut f = Family::new(
        "dial_duration_seconds",
        "Time from accepting a client connection to a connected endpoint (retries included).",
        MetricType::HISTOGRAM,
    );
    f.0.mut_metric().push(m);
    out.push(f.0);

    // Table and source.
    out.push(
        Family::new(
            "table_generation",
            "Generation of the table serving now.",
            MetricType::GAUGE,
        )
        .gauge(&[], table.generation as f64)
        .0,
    );
    let state = status.sync.state.borrow().clone();
    let last_sync = match &state {
        SyncState::Synced { at } => Some(*at),
        _ => None,
    };
    let mut sync = Family::new(
        "sync_state",
        "The source's state (1 for the current one).",
        MetricType::GAUGE,
    );
    for s in ["syncing", "synced", "stale"] {
        sync = sync.gauge(
            &[("source", status.source.label()), ("state", s)],
            f64::from(u8::from(state.label() == s)),
        );
    }
    out.push(sync.0);
    if let Some(at) = last_sync {
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        out.push(
            Family::new(
                "last_sync_timestamp_seconds",
                "When the source last applied a complete table (Unix time).",
                MetricType::GAUGE,
            )
            .gauge(&[], secs)
            .0,
        );
    }
    if matches!(status.source, super::SourceKind::Cluster(_)) {
        let c = &status.sync.counters;
        out.push(
            Family::new(
                "api_watch_up",
                "1 while the watches on the API server are established and synced.",
                MetricType::GAUGE,
            )
            .gauge(&[], f64::from(u8::from(state.label() == "synced")))
            .0,
        );
        out.push(
            Family::new(
                "api_watch_reconnects_total",
                "Times the watches were lost and re-established (outages).",
                MetricType::COUNTER,
            )
            .counter(&[], SourceCounters::get(&c.outages) as f64)
            .0,
        );
        let mut errors = Family::new(
            "api_watch_errors_total",
            "Failed list or watch attempts, by reason (unreachable, stream_broken, \
             unauthorized, forbidden, not_found, gone, throttled, server_error, http_error, \
             protocol).",
            MetricType::COUNTER,
        );
        for (i, reason) in crate::cluster::watch_error::WatchError::LABELS
            .iter()
            .enumerate()
        {
            let n = SourceCounters::get(&c.watch_errors_by_reason[i]);
            errors = errors.counter(&[("reason", reason)], n as f64);
        }
        out.push(errors.0);
        out.push(
            Family::new(
                "api_watch_resumed_total",
                "Watches resumed from their last resourceVersion after an error, without a \
                 re-list.",
                MetricType::COUNTER,
            )
            .counter(&[], SourceCounters::get(&c.watch_resumed) as f64)
            .0,
        );
    }

    // TUN packets and drops.
    out.push(
        Family::new(
            "tun_packets_total",
            "Packets read from and written to the TUN device.",
            MetricType::COUNTER,
        )
        .counter(
            &[("direction", "in")],
            stats.packets_in.load(Ordering::Relaxed) as f64,
        )
        .counter(
            &[("direction", "out")],
            stats.packets_out.load(Ordering::Relaxed) as f64,
        )
        .0,
    );
    let mut drops = Family::new(
        "tun_drops_total",
        "Packets not forwarded, by reason (reasons seen so far).",
        MetricType::COUNTER,
    );
    for (reason, n) in stats.drops() {
        drops.push_counter(&[("reason", reason)], n as f64);
    }
    out.push(drops.0);
    out.push(
        Family::new(
            "tun_fragments_queued_total",
            "Fragments held for reassembly until the rest of their datagram arrives (not drops; \
             a datagram that never completes is counted as the drop reason fragment_timeout).",
            MetricType::COUNTER,
        )
        .counter(&[], stats.fragments_queued() as f64)
        .0,
    );
    let not_routed = status.health.not_routed();
    let mut family = Family::new(
        "cluster_ips_not_routed",
        "Exposed ClusterIPs that no route of the gateway carries, by reason \
         (outside_service_cidrs: outside every routed Service CIDR of their family; \
         ipv6_disabled: the host has IPv6 off).",
        MetricType::GAUGE,
    );
    for reason in [
        crate::cluster::routed::NotRoutedReason::OutsideRanges,
        crate::cluster::routed::NotRoutedReason::Ipv6Disabled,
    ] {
        let n = not_routed.iter().filter(|x| x.reason == reason).count();
        family = family.gauge(&[("reason", reason.label())], n as f64);
    }
    out.push(family.0);
    out.push(
        Family::new(
            "tun_packets_off_owner_total",
            "Packets of a flow read by a dataplane worker other than the one running its proxy \
             (--proxy-on-workers with several queues); each is written back through the \
             owner's queue, which steers the flow to it again.",
            MetricType::COUNTER,
        )
        .counter(&[], stats.packets_off_owner.load(Ordering::Relaxed) as f64)
        .0,
    );
    out.push(
        Family::new(
            "replies_built_total",
            "Packets the gateway built itself (RST, ICMP unreachable).",
            MetricType::COUNTER,
        )
        .counter(&[], stats.replies_built.load(Ordering::Relaxed) as f64)
        .0,
    );
    let mut refusals = Family::new(
        "refusals_total",
        "Packets the gateway answered with a RST or an ICMP error of its own, by reason \
         (no_service: an address of a routed range that is no ClusterIP).",
        MetricType::COUNTER,
    );
    for (reason, n) in stats.refusals() {
        refusals.push_counter(&[("reason", reason)], n as f64);
    }
    out.push(refusals.0);
    out.push(
        Family::new(
            "flow_evictions_total",
            "Flows dropped to make room for a new one when their table was full: UDP flows \
             whose client was quiet longest, TCP flows whose handshake never completed \
             (spoofed SYNs).",
            MetricType::COUNTER,
        )
        .counter(
            &[("table", "udp")],
            stats.udp_evictions.load(Ordering::Relaxed) as f64,
        )
        .counter(
            &[("table", "tcp_unanswered")],
            stats.tcp_early_drops.load(Ordering::Relaxed) as f64,
        )
        .0,
    );
    out.push(
        Family::new(
            "tcp_pending_flows",
            "TCP flows whose SYN went to the listener and whose handshake has not completed.",
            MetricType::GAUGE,
        )
        .gauge(&[], stats.tcp_pending.load(Ordering::Relaxed) as f64)
        .0,
    );
    out.push(
        Family::new(
            "client_affinities",
            "ClientIP affinities held: one per client and Service port, recorded once a flow \
             was served, expiring with the Service's timeoutSeconds, at most 65,536.",
            MetricType::GAUGE,
        )
        .gauge(&[], stats.affinities.load(Ordering::Relaxed) as f64)
        .0,
    );
    out.push(
        Family::new(
            "client_affinities_refused_total",
            "ClientIP affinities not recorded because the table was full of live ones (the \
             client was balanced without one).",
            MetricType::COUNTER,
        )
        .counter(&[], stats.affinities_refused.load(Ordering::Relaxed) as f64)
        .0,
    );
    // --- The announcement (src/host/announce.rs) ---
    let mut announced = Family::new(
        "route_announced",
        "1 while the gateway's route for this prefix is announced; 0 when withdrawn or draining.",
        MetricType::GAUGE,
    );
    for v in status.health.announce.prefixes() {
        let prefix = v.prefix.to_string();
        announced = announced.gauge(
            &[("prefix", &prefix)],
            f64::from(u8::from(
                v.state == crate::host::announce::PrefixState::Announced,
            )),
        );
    }
    out.push(announced.0);
    out.push(
        Family::new(
            "route_changes_total",
            "Changes of the announcement (a prefix announced, withdrawn or set draining).",
            MetricType::COUNTER,
        )
        .counter(&[], status.health.announce.changes_total() as f64)
        .0,
    );

    out.push(
        Family::new(
            "uptime_seconds",
            "Seconds since the gateway started.",
            MetricType::GAUGE,
        )
        .gauge(&[], status.uptime().as_secs_f64())
        .0,
    );
    dns_families(&stats.dns, table.names.len(), &mut out);
    offload_families(status, &mut out);
    out
}

/// The DNS server's counters (`crate::dns`); zeros while it is off.
fn dns_families(dns: &crate::dns::stats::DnsStats, names: usize, out: &mut Vec<MetricFamily>) {
    use crate::dns::stats::{DropReason, RCODES};
    let mut codes = Family::new(
        "dns_responses_total",
        "DNS replies sent, by response code (forwarded replies by the forwarder's code).",
        MetricType::COUNTER,
    );
    for code in RCODES {
        codes.push_counter(&[("result", code)], dns.responses_of(code) as f64);
    }
    out.push(codes.0);
    let mut drops = Family::new(
        "dns_dropped_total",
        "DNS queries that got no reply, by reason.",
        MetricType::COUNTER,
    );
    for reason in DropReason::ALL {
        drops.push_counter(&[("reason", reason.label())], dns.dropped_of(reason) as f64);
    }
    out.push(drops.0);
    out.push(
        Family::new(
            "dns_queries_total",
            "DNS queries received, by transport protocol.",
            MetricType::COUNTER,
        )
        .counter(
            &[("protocol", "udp")],
            dns.udp_queries.load(Ordering::Relaxed) as f64,
        )
        .counter(
            &[("protocol", "tcp")],
            dns.tcp_queries.load(Ordering::Relaxed) as f64,
        )
        .0,
    );
    for (name, help, v) in [
        (
            "dns_nodata_total",
            "NOERROR replies without an answer (the name exists, the type does not).",
            &dns.nodata,
        ),
        (
            "dns_truncated_total",
            "UDP replies cut to the question with TC set (the client retries over TCP).",
            &dns.truncated,
        ),
        (
            "dns_forwarded_total",
            "Out-of-zone queries sent on to --dns-forward.",
            &dns.forwarded,
        ),
        (
            "dns_failures_suppressed_total",
            "Failed DNS queries not shown as events (rate limit).",
            &dns.suppressed,
        ),
    ] {
        out.push(
            Family::new(name, help, MetricType::COUNTER)
                .counter(&[], v.load(Ordering::Relaxed) as f64)
                .0,
        );
    }
    out.push(
        Family::new(
            "dns_tcp_connections",
            "Open DNS TCP connections.",
            MetricType::GAUGE,
        )
        .gauge(&[], dns.tcp_open.load(Ordering::Relaxed) as f64)
        .0,
    );
    out.push(
        Family::new(
            "dns_services",
            "Exposed Services that have DNS names in the current table.",
            MetricType::GAUGE,
        )
        .gauge(&[], names as f64)
        .0,
    );
}

/// Flow offload (`--dataplane offload`): flows handed to the kernel, retransmitted SYNs
/// re-injected, hand-overs that failed by reason, and the dataplane in use.
fn offload_families(status: &Status, out: &mut Vec<MetricFamily>) {
    let off = &status.stats.offload;
    out.push(
        Family::new(
            "offload_flows_total",
            "TCP and UDP flows handed to the kernel's connection tracking (entry created, first \
             packet re-injected).",
            MetricType::COUNTER,
        )
        .counter(&[], off.flows.load(Ordering::Relaxed) as f64)
        .0,
    );
    out.push(
        Family::new(
            "offload_retransmits_total",
            "First packets of flows already handed over (a retransmitted SYN, a UDP datagram \
             whose flow had left the set), re-injected on their entry.",
            MetricType::COUNTER,
        )
        .counter(&[], off.retransmits.load(Ordering::Relaxed) as f64)
        .0,
    );
    let mut failed = Family::new(
        "offload_failures_total",
        "New flows the kernel would not take (the client is reset), by reason.",
        MetricType::COUNTER,
    );
    for (reason, n) in off.failures() {
        failed.push_counter(&[("reason", reason)], n as f64);
    }
    out.push(failed.0);
    out.push(
        Family::new(
            "offload_bytes_total",
            "Bytes the kernel forwarded for offloaded flows (the netfilter table's counters, \
             read every 5 s).",
            MetricType::COUNTER,
        )
        .counter(
            &[("direction", "to_endpoint")],
            off.bytes_to_endpoint.load(Ordering::Relaxed) as f64,
        )
        .counter(
            &[("direction", "to_client")],
            off.bytes_to_client.load(Ordering::Relaxed) as f64,
        )
        .0,
    );
    out.push(
        Family::new(
            "offload_ejections_total",
            "Endpoints ejected for a while because an offloaded flow to them failed before \
             it was established (passive outlier detection).",
            MetricType::COUNTER,
        )
        .counter(&[], off.ejections.load(Ordering::Relaxed) as f64)
        .0,
    );
    out.push(
        Family::new(
            "offload_events_lost_total",
            "Times conntrack events were lost (the reader resynced from a dump).",
            MetricType::COUNTER,
        )
        .counter(&[], off.events_lost.load(Ordering::Relaxed) as f64)
        .0,
    );
    out.push(
        Family::new(
            "offload_udp_proxied_total",
            "UDP flows proxied in user space with the offload dataplane: the kernel path \
             could not carry them (a first datagram larger than the route to the endpoint \
             carries, a segmentation super-packet, IPv6 extension headers).",
            MetricType::COUNTER,
        )
        .counter(&[], off.udp_proxied.load(Ordering::Relaxed) as f64)
        .0,
    );
    if let Some(d) = status.health.dataplane() {
        out.push(
            Family::new(
                "dataplane",
                "The dataplane carrying TCP and UDP flows (1), and the one asked for.",
                MetricType::GAUGE,
            )
            .gauge(&[("dataplane", d.name), ("requested", d.requested)], 1.0)
            .0,
        );
    }
}

/// The text exposition.
pub fn render(status: &Status) -> String {
    let mut buf = Vec::new();
    let mut families = gather(status);
    // The encoder refuses a family without samples (no Service has counters yet).
    families.retain(|f| !f.get_metric().is_empty());
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}
