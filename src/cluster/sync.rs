//! How far a source is with the cluster, for the status page, `/readyz` and metrics.
//!
//! [`SyncState`] is published through a `tokio::sync::watch` channel by the source
//! ([`SyncStatus::state`]); [`SourceCounters`] are plain atomics anyone may read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

/// The source's relation to the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncState {
    /// No complete table yet: nothing is exposed, no route is installed, not ready.
    Syncing,
    /// The table follows the cluster; `at` is when the last complete (re)list was applied.
    Synced { at: SystemTime },
    /// The API server cannot be reached (or answered with an error) since `since`; the last
    /// good table keeps serving. `error` is the first error of this outage.
    Stale { since: SystemTime, error: String },
}

impl SyncState {
    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            SyncState::Syncing => "syncing",
            SyncState::Synced { .. } => "synced",
            SyncState::Stale { .. } => "stale",
        }
    }

    /// Whether a complete table has been applied (synced now, or stale since).
    pub fn has_table(&self) -> bool {
        !matches!(self, SyncState::Syncing)
    }
}

/// Counters of the control plane (monotonic).
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Services and EndpointSlices skipped or marked invalid for a bad field (counted once
    /// per bad version of an object).
    pub bad_objects: AtomicU64,
    /// Malformed `clusterway.io/*` annotations (read in the most restrictive way).
    pub bad_annotations: AtomicU64,
    /// ServiceCIDR objects with an unusable CIDR.
    pub bad_service_cidrs: AtomicU64,
    /// Watch or list errors (each failed attempt).
    pub watch_errors: AtomicU64,
    /// The same by failure mode, indexed as [`super::watch_error::WatchError::LABELS`].
    pub watch_errors_by_reason: [AtomicU64; 10],
    /// Watches resumed from their last resourceVersion after an error (no re-list).
    pub watch_resumed: AtomicU64,
    /// Watches answered 410 Gone (history compacted), each followed by a re-list.
    pub watch_expired: AtomicU64,
    /// Outages: transitions from synced to stale.
    pub outages: AtomicU64,
    /// Complete lists applied (first sync and every resync).
    pub relists: AtomicU64,
    /// Add/modify/delete events received from watches.
    pub events: AtomicU64,
    /// Tables published.
    pub tables_published: AtomicU64,
    /// Services (re)built incrementally, in total.
    pub services_rebuilt: AtomicU64,
}

impl SourceCounters {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What a source exposes about itself: its state (watchable) and counters.
#[derive(Debug, Clone)]
pub struct SyncStatus {
    pub state: watch::Receiver<SyncState>,
    pub counters: Arc<SourceCounters>,
}

impl SyncStatus {
    /// A status that is synced from the start (the file source: its first table is loaded
    /// before the gateway starts).
    pub fn synced_now() -> (watch::Sender<SyncState>, SyncStatus) {
        let (tx, rx) = watch::channel(SyncState::Synced {
            at: SystemTime::now(),
        });
        (
            tx,
            SyncStatus {
                state: rx,
                counters: Arc::default(),
            },
        )
    }
}
