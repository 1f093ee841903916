//! The control plane: sources of Service/EndpointSlice objects and the table builder.
//! It never touches packets; its only output is a published `ServiceTable`.
//!
//! - `parse`: file text → `Objects` (Services, EndpointSlices, ignored kinds);
//! - `build`: `Objects` → `ServiceTable`, with kube-proxy's semantics;
//! - `names`: what the DNS server answers (headless endpoints, ExternalName, named ports);
//! - `policy`: which Services are exposed, and to which clients;
//! - `incremental`: the same semantics kept up to date object by object (the watch);
//! - `file`: the file source (load at start-up, reload on change);
//! - `kube`: the Kubernetes source (watches, resync, outages);
//! - `sync`: the source's state (syncing / synced / stale) and counters;
//! - `error`: `ObjectError` (one bad object + field) and `SourceError`;
//! - `routed`: which exposed ClusterIPs the gateway's routes cannot carry;
//! - `watch_error`: a failed list or watch, typed by failure mode (the metric's reason);
//! - `watch_start`: the client layer that tells when a (resumed) watch was accepted.

pub mod build;
pub mod error;
pub mod file;
pub mod incremental;
pub mod kube;
pub mod kubeconfig;
pub mod names;
pub mod parse;
pub mod policy;
pub mod routed;
pub mod sync;
pub mod table;
pub mod watch_error;
pub mod watch_start;

pub use build::{build_table, build_table_with, BuildOptions};
pub use error::{ObjectError, SourceError};
pub use file::{load, watch_file, FileSource};
pub use parse::{parse_objects, Objects};
pub use policy::Policy;
pub use sync::{SourceCounters, SyncState, SyncStatus};
