//! The status server: the dashboard (assets from `web/`, embedded at build time), the JSON
//! API it uses, live updates over server-sent events, `/metrics` in Prometheus text format,
//! `/healthz` and `/readyz`.
//!
//! It only reads: the published `ServiceTable`, the dataplane's atomics
//! ([`crate::dataplane::stats`], [`crate::dataplane::flows`]), the source's sync state and
//! the host state the gateway reports into [`health::Health`]. Its own state is the event
//! ring and the one-second samples behind the charts and rates, kept by one task
//! ([`observe`]).
//!
//! - `server`: the axum router, token check, handlers;
//! - `api`: the JSON views (services with filtering, sorting and paging; one service;
//!   flows; events; status);
//! - `metrics`: the Prometheus exposition;
//! - `events`: the recent-events ring and the table diff that feeds it;
//! - `health`: readiness (table synced and fresh, TUN up, routes installed);
//! - `observe`: the sampler (rates, chart history, notices → events, SSE ticks);
//! - `assets`: the embedded dashboard.

pub mod api;
pub mod assets;
pub mod events;
pub mod health;
pub mod metrics;
pub mod observe;
pub mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::broadcast;

use crate::cluster::sync::SyncStatus;
use crate::cluster::table::ServiceTable;
use crate::dataplane::stats::Stats;

pub use server::serve;

/// Where the table comes from, for the header and metrics.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// `--from-file`: the path.
    File(String),
    /// The Kubernetes API: the server URL.
    Cluster(String),
}

impl SourceKind {
    pub fn label(&self) -> &'static str {
        match self {
            SourceKind::File(_) => "file",
            SourceKind::Cluster(_) => "cluster",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            SourceKind::File(s) | SourceKind::Cluster(s) => s,
        }
    }
}

/// Live updates to SSE clients. Bounded: a client that lags this far behind skips ahead
/// (it refetches on the next tick anyway).
const UPDATES_CAPACITY: usize = 64;

/// Everything the status server reads, shared by its handlers and its sampler.
pub struct Status {
    pub table: Arc<ArcSwap<ServiceTable>>,
    pub stats: Arc<Stats>,
    pub sync: SyncStatus,
    pub source: SourceKind,
    pub health: Arc<health::Health>,
    pub events: events::EventLog,
    /// Sequence number of the last dataplane notice moved into `events`.
    pub notices_seen: Mutex<u64>,
    /// One-second samples and per-Service rates, written by [`observe::run`].
    pub samples: Mutex<observe::Samples>,
    /// `(event name, JSON)` for SSE clients.
    pub updates: broadcast::Sender<(&'static str, Arc<str>)>,
    pub token: Option<String>,
    pub started: SystemTime,
    pub started_at: Instant,
    /// Flow table bounds (shown on the page).
    pub max_tcp_flows: u64,
    pub max_udp_flows: u64,
}

impl Status {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        table: Arc<ArcSwap<ServiceTable>>,
        stats: Arc<Stats>,
        sync: SyncStatus,
        source: SourceKind,
        health: Arc<health::Health>,
        token: Option<String>,
        max_tcp_flows: u64,
        max_udp_flows: u64,
    ) -> Arc<Status> {
        let (updates, _) = broadcast::channel(UPDATES_CAPACITY);
        Arc::new(Status {
            table,
            stats,
            sync,
            source,
            health,
            events: events::EventLog::default(),
            notices_seen: Mutex::new(0),
            samples: Mutex::new(observe::Samples::default()),
            updates,
            token: token.filter(|t| !t.is_empty()),
            started: SystemTime::now(),
            started_at: Instant::now(),
            max_tcp_flows,
            max_udp_flows,
        })
    }

    pub fn uptime(&self) -> Duration {
        self.started_at.elapsed()
    }

    /// New connections per second of each Service (all ports), from the sampler.
    pub fn rates(&self) -> HashMap<(String, String), f64> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .service_rates
            .clone()
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
