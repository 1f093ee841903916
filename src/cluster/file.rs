//! The `file` source: Services and EndpointSlices from a YAML/JSON file, reloaded on change.
//!
//! Start-up and reload are deliberately different:
//! - [`load`] (or [`FileSource::open`]) is for start-up: any problem — unreadable file,
//!   syntax error, one bad object — is an error, so the gateway exits before touching the
//!   host.
//! - [`FileSource::run`] watches the file and publishes a new table (next generation) each
//!   time its content changes. A bad file on reload is logged and the last good table keeps
//!   serving.
//!
//! Change detection: `notify` watches the file's *parent directory* (editors and
//! `kubectl ... > file.tmp && mv` replace the file by rename, and Kubernetes ConfigMap
//! volumes swap a `..data` symlink; a watch on the file itself would lose track of it).
//! Events are debounced for [`DEBOUNCE`]. As a fallback (notify unavailable, network file
//! systems) the file's mtime and size are polled every [`POLL_INTERVAL`]. Either way the
//! content is hashed and a table is only published when it actually changed.
//!
//! Typical wiring:
//! ```no_run
//! # async fn f() -> Result<(), clusterway::cluster::error::SourceError> {
//! use std::sync::Arc;
//! use arc_swap::ArcSwap;
//! use clusterway::cluster::{build::BuildOptions, file::{publish_to, FileSource}};
//! let (source, table) = FileSource::open("cluster.yaml", BuildOptions::default(), 1)?;
//! let live = Arc::new(ArcSwap::from_pointee(table));
//! tokio::spawn(source.run(publish_to(live.clone())));
//! # Ok(()) }
//! ```

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::build::{build_table_with, BuildOptions};
use super::error::SourceError;
use super::parse::parse_objects;
use super::policy::Policy;
use super::table::ServiceTable;

/// How long to wait after a change event for more events before reloading (editors write
/// a file in several steps).
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the file's mtime and size are checked when no event arrives.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Reads, parses and builds the file into a table of the given generation. Any bad object
/// is an error (the first is reported in full, the rest counted).
pub fn load(
    path: &Path,
    opts: &BuildOptions,
    generation: u64,
) -> Result<ServiceTable, SourceError> {
    let label = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| SourceError::Read {
        file: label.clone(),
        error,
    })?;
    load_bytes(&label, &bytes, opts, &Policy::default(), generation)
}

fn load_bytes(
    label: &str,
    bytes: &[u8],
    opts: &BuildOptions,
    policy: &Policy,
    generation: u64,
) -> Result<ServiceTable, SourceError> {
    let text = std::str::from_utf8(bytes).map_err(|e| SourceError::Read {
        file: label.to_string(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let objs = parse_objects(label, text)?;
    let (table, errors) = build_table_with(generation, &objs, opts, policy);
    match SourceError::from_object_errors(label, errors) {
        Some(err) => Err(err),
        None => Ok(table),
    }
}

/// A `publish` callback that swaps each new table into `live`.
pub fn publish_to(live: Arc<ArcSwap<ServiceTable>>) -> impl FnMut(ServiceTable) + Send + 'static {
    move |table| live.store(Arc::new(table))
}

/// Loads the file once (start-up, errors are fatal), then [`FileSource::run`].
/// Returns only when the first load fails.
pub async fn watch_file(
    path: PathBuf,
    opts: BuildOptions,
    mut publish: impl FnMut(ServiceTable) + Send + 'static,
) -> Result<(), SourceError> {
    let (source, table) = FileSource::open(path, opts, 1)?;
    publish(table);
    source.run(publish).await;
    Ok(())
}

/// What was last seen of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        mtime: meta.modified().ok(),
        len: meta.len(),
    })
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// A loaded file, ready to be watched for changes.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    label: String,
    opts: BuildOptions,
    policy: Policy,
    /// Generation of the last published table.
    generation: u64,
    /// Hash of the content last tried (good or bad): unchanged content is not reloaded.
    content: u64,
    stamp: Option<Stamp>,
    /// Where reload outcomes are reported (status page, `/readyz`), when someone listens.
    sync: Option<tokio::sync::watch::Sender<super::sync::SyncState>>,
}

impl FileSource {
    /// Loads the file as table `generation`. Any problem is an error.
    pub fn open(
        path: impl Into<PathBuf>,
        opts: BuildOptions,
        generation: u64,
    ) -> Result<(FileSource, ServiceTable), SourceError> {
        Self::open_with(path, opts, Policy::default(), generation)
    }

    /// [`FileSource::open`] under an exposure policy (a malformed policy annotation is an
    /// error like any bad field).
    pub fn open_with(
        path: impl Into<PathBuf>,
        opts: BuildOptions,
        policy: Policy,
        generation: u64,
    ) -> Result<(FileSource, ServiceTable), SourceError> {
        let path = path.into();
        let label = path.display().to_string();
        // Stamp before reading: a write racing with the read shows up as a new stamp.
        let stamp = stamp(&path);
        let bytes = std::fs::read(&path).map_err(|error| SourceError::Read {
            file: label.clone(),
            error,
        })?;
        let table = load_bytes(&label, &bytes, &opts, &policy, generation)?;
        let source = FileSource {
            path,
            label,
            opts,
            policy,
            generation,
            content: hash_bytes(&bytes),
            stamp,
            sync: None,
        };
        Ok((source, table))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Report reloads to `sync`: a bad file makes the source [`SyncState::Stale`] (since
    /// the first bad version, with its error) while the last good table keeps serving; the
    /// next good file makes it `Synced` again.
    ///
    /// [`SyncState::Stale`]: super::sync::SyncState::Stale
    pub fn report_sync(&mut self, sync: tokio::sync::watch::Sender<super::sync::SyncState>) {
        self.sync = Some(sync);
    }

    fn set_sync(&self, error: Option<String>) {
        use super::sync::SyncState;
        let Some(tx) = &self.sync else { return };
        let now = SystemTime::now();
        tx.send_modify(|state| {
            *state = match (error, &*state) {
                (None, _) => SyncState::Synced { at: now },
                (Some(error), SyncState::Stale { since, .. }) => SyncState::Stale {
                    since: *since,
                    error,
                },
                (Some(error), _) => SyncState::Stale { since: now, error },
            }
        });
    }

    /// Watches the file forever, calling `publish` with each new good table. Cancel by
    /// dropping/aborting the task.
    pub async fn run(mut self, mut publish: impl FnMut(ServiceTable) + Send + 'static) {
        // Capacity 1 is enough: an event only means "look again"; when one is already
        // queued, further ones carry no information and are dropped.
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let _watcher = self.start_watcher(tx);
        let mut events_open = _watcher.is_some();
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = rx.recv(), if events_open => {
                    if ev.is_none() {
                        events_open = false;
                        continue;
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    self.reload(&mut publish).await;
                }
                _ = poll.tick() => {
                    if stamp(&self.path) != self.stamp {
                        self.reload(&mut publish).await;
                    }
                }
            }
        }
    }

    fn start_watcher(&self, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let handler = move |res: notify::Result<notify::Event>| {
            // Any event in the directory may concern the file (renames, symlink swaps);
            // reload compares content, so a spurious wake-up costs one read.
            if res.is_ok_and(|ev| !ev.kind.is_access()) {
                let _ = tx.try_send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(error) => {
                tracing::warn!(file = %self.label, %error, "file watch unavailable; polling only");
                return None;
            }
        };
        if let Err(error) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::warn!(file = %self.label, dir = %dir.display(), %error,
                "cannot watch directory; polling only");
            return None;
        }
        Some(watcher)
    }

    /// Re-reads the file; publishes a new generation if the content changed and is good.
    async fn reload(&mut self, publish: &mut (impl FnMut(ServiceTable) + Send)) {
        let path = self.path.clone();
        let label = self.label.clone();
        let opts = self.opts.clone();
        let policy = self.policy.clone();
        let previous = self.content;
        let next_generation = self.generation + 1;
        let stamp_before = stamp(&path);
        // Reading and parsing a large file is blocking work: keep it off the runtime.
        let outcome = tokio::task::spawn_blocking(move || -> Result<_, SourceError> {
            let bytes = std::fs::read(&path).map_err(|error| SourceError::Read {
                file: label.clone(),
                error,
            })?;
            let hash = hash_bytes(&bytes);
            if hash == previous {
                return Ok((hash, None));
            }
            match load_bytes(&label, &bytes, &opts, &policy, next_generation) {
                Ok(table) => Ok((hash, Some(Ok(table)))),
                Err(e) => Ok((hash, Some(Err(e)))),
            }
        })
        .await;
        self.stamp = stamp_before;
        match outcome {
            Err(join_error) => {
                tracing::error!(file = %self.label, error = %join_error, "reload task failed");
            }
            Ok(Err(error)) => {
                // Missing for a moment (rename in progress) or unreadable: the next event,
                // or a changed stamp at the next poll, tries again.
                tracing::warn!(file = %self.label, reason = error.label(), %error,
                    "cannot reload; keeping the last good table");
            }
            Ok(Ok((_, None))) => {}
            Ok(Ok((hash, Some(Err(error))))) => {
                self.content = hash;
                tracing::error!(file = %self.label, reason = error.label(), %error,
                    generation = self.generation, "bad file; keeping the last good table");
                self.set_sync(Some(error.to_string()));
            }
            Ok(Ok((hash, Some(Ok(table))))) => {
                self.content = hash;
                self.generation = table.generation;
                tracing::info!(
                    file = %self.label,
                    generation = table.generation,
                    services = table.services.len(),
                    ports = table.ports().count(),
                    "service table reloaded"
                );
                publish(table);
                self.set_sync(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::{Lookup, Protocol};
    use std::net::IpAddr;

    /// The cause of a read error is printed once, also through an error chain (`{:#}`, as
    /// the binary prints a failed start).
    #[test]
    fn a_missing_file_names_its_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.yaml");
        let e = load(&path, &BuildOptions::default(), 1).unwrap_err();
        let cause = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
        let text = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(text.matches(&cause).count(), 1, "{text}");
        assert!(text.contains("missing.yaml: cannot read: "), "{text}");
    }

    fn svc_yaml(ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\n\
             spec:\n  clusterIP: {ip}\n  ports:\n  - {{name: http, port: 80}}\n"
        )
    }

    fn exposes(table: &ServiceTable, ip: &str) -> bool {
        let ip: IpAddr = ip.parse().expect("test ip");
        matches!(table.lookup(ip, 80, Protocol::Tcp), Lookup::Port(_))
    }

    #[test]
    fn load_reports_read_and_object_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster.yaml");
        let err = load(&path, &BuildOptions::default(), 1).expect_err("missing file");
        assert_eq!(err.label(), "read");

        std::fs::write(&path, svc_yaml("10.96.0.300")).expect("write");
        let err = load(&path, &BuildOptions::default(), 1).expect_err("bad ip");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: Service shop/web: spec.clusterIP: \"10.96.0.300\" is not an IP address",
                path.display()
            )
        );

        std::fs::write(&path, svc_yaml("10.96.0.20")).expect("write");
        let table = load(&path, &BuildOptions::default(), 5).expect("good file");
        assert_eq!(table.generation, 5);
        assert!(exposes(&table, "10.96.0.20"));
    }

    async fn next_table(rx: &mut mpsc::UnboundedReceiver<ServiceTable>) -> ServiceTable {
        tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .expect("a table within 3 s")
            .expect("channel open")
    }

    #[tokio::test]
    async fn reloads_on_write_and_rename_and_keeps_last_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster.yaml");
        std::fs::write(&path, svc_yaml("10.96.0.20")).expect("write");
        let (source, first) =
            FileSource::open(&path, BuildOptions::default(), 1).expect("initial load");
        assert_eq!(first.generation, 1);

        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(source.run(move |t| {
            let _ = tx.send(t);
        }));

        // In-place write.
        std::fs::write(&path, svc_yaml("10.96.0.21")).expect("write");
        let t = next_table(&mut rx).await;
        assert_eq!(t.generation, 2);
        assert!(exposes(&t, "10.96.0.21"));

        // A bad file is not published.
        std::fs::write(&path, "kind: [\n").expect("write");
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(rx.try_recv().is_err());

        // Replace by rename, as editors do.
        let tmp = dir.path().join(".cluster.yaml.tmp");
        std::fs::write(&tmp, svc_yaml("10.96.0.22")).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        let t = next_table(&mut rx).await;
        assert_eq!(t.generation, 3);
        assert!(exposes(&t, "10.96.0.22"));

        task.abort();
    }

    #[tokio::test]
    async fn publish_to_swaps_table() {
        let live = Arc::new(ArcSwap::from_pointee(ServiceTable::default()));
        let mut publish = publish_to(live.clone());
        publish(ServiceTable::new(9, Vec::new(), Vec::new()));
        assert_eq!(live.load().generation, 9);
    }
}
