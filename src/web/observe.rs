//! The status server's one background task: once a second (and at once on a new table or
//! sync state) it samples the counters for the charts and per-Service rates, turns table
//! changes, sync changes, watch reconnects and dataplane notices into events, and pushes
//! a tick (and each new event) to the live-update clients.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

use super::events::{self, Level};
use super::{unix_ms, Status};
use crate::cluster::sync::{SourceCounters, SyncState};
use crate::dataplane::stats::{ConnResult, NoticeKind, ServiceKey};

/// Chart history: ten minutes of one-second points.
pub const HISTORY: usize = 600;
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One chart point (rates over the last sample interval).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Point {
    /// Unix milliseconds.
    pub at: u64,
    pub to_endpoint_bps: f64,
    pub to_client_bps: f64,
    pub new_per_s: f64,
    pub failed_per_s: f64,
    pub active_tcp: u64,
    pub active_udp: u64,
}

#[derive(Debug, Default)]
pub struct Samples {
    pub history: VecDeque<Point>,
    /// New connections per second by (namespace, name), all ports.
    pub service_rates: HashMap<(String, String), f64>,
    last: Option<Last>,
}

#[derive(Debug)]
struct Last {
    at: Instant,
    to_endpoint: u64,
    to_client: u64,
    attempts: u64,
    failed: u64,
    per_service: HashMap<ServiceKey, u64>,
}

impl Samples {
    pub fn latest(&self) -> Point {
        self.history.back().copied().unwrap_or_default()
    }
}

/// Counter totals: bytes (to endpoint, to client), attempts, failures, per-Service attempts.
fn totals(status: &Status) -> (u64, u64, u64, u64, HashMap<ServiceKey, u64>) {
    let mut to_ep = 0;
    let mut to_cl = 0;
    let mut per = HashMap::new();
    for (k, s) in status.stats.services.snapshot() {
        to_ep += s
            .bytes_to_endpoint
            .load(std::sync::atomic::Ordering::Relaxed);
        to_cl += s.bytes_to_client.load(std::sync::atomic::Ordering::Relaxed);
        per.insert(k, s.attempts());
    }
    let mut attempts = 0;
    let mut failed = 0;
    for r in ConnResult::ALL {
        let n = status.stats.tcp_count(r) + status.stats.udp_count(r);
        attempts += n;
        if r != ConnResult::Ok {
            failed += n;
        }
    }
    (to_ep, to_cl, attempts, failed, per)
}

fn sample(status: &Status) {
    let now = Instant::now();
    let (to_ep, to_cl, attempts, failed, per) = totals(status);
    let mut s = status.samples.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(last) = &s.last {
        let dt = now.duration_since(last.at).as_secs_f64().max(0.001);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        let point = Point {
            at: unix_ms(SystemTime::now()),
            to_endpoint_bps: rate(to_ep, last.to_endpoint),
            to_client_bps: rate(to_cl, last.to_client),
            new_per_s: rate(attempts, last.attempts),
            failed_per_s: rate(failed, last.failed),
            active_tcp: status
                .stats
                .tcp_active
                .load(std::sync::atomic::Ordering::Relaxed),
            active_udp: status.stats.udp_active_now(),
        };
        let mut rates: HashMap<(String, String), f64> = HashMap::new();
        for (k, n) in &per {
            let before = last.per_service.get(k).copied().unwrap_or(0);
            let r = rate(*n, before);
            if r > 0.0 {
                *rates
                    .entry((k.service.namespace.clone(), k.service.name.clone()))
                    .or_default() += r;
            }
        }
        s.service_rates = rates;
        if s.history.len() >= HISTORY {
            s.history.pop_front();
        }
        s.history.push_back(point);
    }
    s.last = Some(Last {
        at: now,
        to_endpoint: to_ep,
        to_client: to_cl,
        attempts,
        failed,
        per_service: per,
    });
}

fn broadcast_event(status: &Status, ev: &events::Event) {
    if let Ok(json) = serde_json::to_string(ev) {
        let _ = status.updates.send(("event", json.into()));
    }
}

fn push(
    status: &Status,
    level: Level,
    kind: &'static str,
    service: Option<String>,
    message: String,
) {
    let ev = status
        .events
        .push(unix_ms(SystemTime::now()), level, kind, service, message);
    broadcast_event(status, &ev);
}

fn sync_message(state: &SyncState) -> (Level, String) {
    match state {
        SyncState::Syncing => (Level::Info, "source syncing".into()),
        SyncState::Synced { .. } => (Level::Info, "source synced".into()),
        SyncState::Stale { error, .. } => (
            Level::Error,
            format!("source stale, last good table keeps serving: {error}"),
        ),
    }
}

/// Move the dataplane's new notices into the event ring (and to live clients). Called by
/// the sampler each second and by the API before it answers, so a failure shows at once.
pub fn drain_notices(status: &Status) {
    let mut last = status
        .notices_seen
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for n in status.stats.notices.since(*last) {
        *last = n.seq;
        let svc = Some(n.service.to_string());
        let (level, kind, msg) = match &n.kind {
            NoticeKind::Refused(r) => (
                Level::Warn,
                r.label(),
                format!(
                    "{}/{} from {} refused: {}",
                    n.port,
                    n.protocol,
                    n.client,
                    r.label().replace('_', " ")
                ),
            ),
            NoticeKind::DialAttempt { endpoint, error } => (
                Level::Warn,
                "dial_failed",
                format!(
                    "{}/{}: dial {endpoint} failed (client {}): {error}",
                    n.port, n.protocol, n.client
                ),
            ),
        };
        let ev = status.events.push(unix_ms(n.at), level, kind, svc, msg);
        broadcast_event(status, &ev);
    }
    // Under the same lock: failed DNS queries (`crate::dns`) as `dns_failed` events.
    let dns = &status.stats.dns;
    let after = dns.drained.load(std::sync::atomic::Ordering::Relaxed);
    for f in dns.failures_since(after) {
        dns.drained
            .store(f.seq, std::sync::atomic::Ordering::Relaxed);
        let msg = format!("DNS query from {}: {}", f.client, f.message);
        let ev = status
            .events
            .push(unix_ms(f.at), Level::Warn, "dns_failed", None, msg);
        broadcast_event(status, &ev);
    }
}

/// Move the announcement's changes (a prefix announced, withdrawn, draining) into the event
/// ring and to live clients.
pub fn drain_announcements(status: &Status) {
    for c in status.health.announce.take_new() {
        let v = &c.view;
        let level = match v.state {
            crate::host::announce::PrefixState::Announced => Level::Info,
            _ => Level::Warn,
        };
        let ev = status.events.push(
            v.since,
            level,
            "route",
            None,
            format!(
                "{} {} ({})",
                v.prefix,
                v.state.label(),
                v.reason.replace('_', " ")
            ),
        );
        broadcast_event(status, &ev);
    }
}

/// Run until the runtime stops. `changed` fires on each published table.
pub async fn run(status: Arc<Status>, mut changed: watch::Receiver<u64>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sync = status.sync.state.clone();
    let mut table_open = true;
    let mut sync_open = true;
    let mut last_table = status.table.load_full();
    let mut last_sync = sync.borrow().clone();
    let mut last_outages = SourceCounters::get(&status.sync.counters.outages);
    let mut last_sample = Instant::now() - SAMPLE_EVERY;
    push(
        &status,
        Level::Info,
        "reload",
        None,
        format!(
            "gateway started: table generation {} with {} Services from {} {}",
            last_table.generation,
            last_table.services.len(),
            status.source.label(),
            status.source.detail()
        ),
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = changed.changed(), if table_open => { table_open = r.is_ok(); }
            r = sync.changed(), if sync_open => { sync_open = r.is_ok(); }
        }

        let table = status.table.load_full();
        if table.generation != last_table.generation {
            for (level, kind, svc, msg) in events::diff(&last_table, &table) {
                push(&status, level, kind, svc, msg);
            }
            push(
                &status,
                Level::Info,
                "reload",
                None,
                format!(
                    "table generation {} applied: {} Services, {} ports",
                    table.generation,
                    table.services.len(),
                    table.ports().count()
                ),
            );
            // Counters of Services that left the table go with them.
            status.stats.services.retain(|k| {
                table
                    .service(&k.service.namespace, &k.service.name)
                    .is_some()
            });
            last_table = table;
            let msg = format!("{{\"generation\":{}}}", last_table.generation);
            let _ = status.updates.send(("table", msg.into()));
        }

        let state = sync.borrow_and_update().clone();
        if state != last_sync {
            if state.label() != last_sync.label() || matches!(state, SyncState::Stale { .. }) {
                let (level, msg) = sync_message(&state);
                push(&status, level, "sync", None, msg);
            }
            last_sync = state;
        }
        let outages = SourceCounters::get(&status.sync.counters.outages);
        if outages > last_outages {
            push(
                &status,
                Level::Warn,
                "watch_reconnect",
                None,
                format!("API watch lost ({outages} outage(s) so far); reconnecting"),
            );
            last_outages = outages;
        }

        drain_notices(&status);
        drain_announcements(&status);

        if last_sample.elapsed() >= SAMPLE_EVERY - Duration::from_millis(50) {
            last_sample = Instant::now();
            sample(&status);
            let point = status
                .samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .latest();
            let tick = serde_json::json!({
                "generation": last_table.generation,
                "point": point,
            });
            let _ = status.updates.send(("tick", tick.to_string().into()));
        }
    }
}
