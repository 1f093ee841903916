//! The Kubernetes source: kube-rs watchers on `v1` Services, `discovery.k8s.io/v1`
//! EndpointSlices and (where served) `networking.k8s.io/v1` ServiceCIDRs, feeding the same
//! table semantics as the file source through [`Incremental`].
//!
//! Owns: the API client, one task per watched resource, and the aggregator that publishes
//! tables. It never touches the host or packets; its output is the `publish` callback and
//! the [`SyncStatus`].
//!
//! - **First table.** Nothing is published until Services and EndpointSlices have each been
//!   listed completely and the ServiceCIDR API has answered (served, or 404/403). Until
//!   then the state is [`SyncState::Syncing`].
//! - **Resync without blinking.** A (re)list (`Init` … `InitApply` … `InitDone`) is buffered
//!   and replaces that resource's objects only when complete.
//! - **Incremental.** Events are coalesced for [`KubeOptions::coalesce`]; only the Services
//!   they touch are rebuilt, then a snapshot is assembled from the built entries.
//! - **Resume, don't re-list.** A watch that breaks (connection dropped, API server
//!   restarted or unreachable, an error status) is resumed by kube-runtime's watcher from
//!   the last resourceVersion it saw, after kube's [`StreamBackoff`] with our capped,
//!   jittered exponential delays; the changes made meanwhile arrive as ordinary events.
//!   Only a `410 Gone` (history compacted) or a failed list makes the watcher list again,
//!   page by page ([`LIST_PAGE_SIZE`]); a (re)list is buffered as below. A watch that stalls
//!   (no event, no bookmark, no close) is dropped after the watch timeout plus a margin and
//!   resumed the same way.
//! - **Outages.** One broken watch is not an outage; a second failure in a row marks the
//!   source [`SyncState::Stale`] (the last table keeps serving) and is logged once per
//!   outage. The outage ends when the API server accepts the resumed watch (seen by
//!   [`WatchStarts`], since a resumed watch with nothing new is silent) or a re-list
//!   completes. Each failure is counted by [`WatchError`] reason.
//! - **ServiceCIDR not served** (404) or not allowed (403): routes come from
//!   `--service-cidr` or per IP, and the API is asked again every
//!   [`KubeOptions::service_cidr_recheck`], so an upgrade or a granted permission takes
//!   effect without a restart.
//! - **Trimmed cache.** `managedFields`, `status` and annotations the gateway does not read
//!   are dropped as objects arrive; EndpointSlices are kept only as what they contribute.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ::kube::api::Api;
use ::kube::config::KubeConfigOptions;
use ::kube::runtime::utils::StreamBackoff;
use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::WatchStreamExt;
use ::kube::{Client, Config};
use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::{mpsc, watch};

use super::build::BuildOptions;
use super::error::ObjectError;
use super::incremental::Incremental;
use super::policy::{Policy, READ_ANNOTATIONS};
use super::sync::{SourceCounters, SyncState, SyncStatus};
use super::table::ServiceTable;
use super::watch_error::WatchError;
use super::watch_start::WatchStarts;

/// Events from the watcher tasks to the aggregator. A full channel makes the watchers wait
/// (the API server's stream then waits in the socket buffer): the aggregator applies events
/// much faster than the API server sends them, and 4096 holds a burst of a whole list page
/// without a context switch per object.
const EVENTS_CAPACITY: usize = 4096;

/// How the source connects and paces itself.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// `--kubeconfig`: read only this file.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`: a context of the kubeconfig other than the current one.
    pub context: Option<String>,
    /// Server-side watch timeout; a watch silent for this plus 5 s is considered stalled
    /// and re-established.
    pub watch_timeout: Duration,
    /// Events arriving within this window are applied as one table.
    pub coalesce: Duration,
    /// Retry backoff after a failed list/watch: first delay and cap (jittered).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// After ServiceCIDR answered 404 or 403, how long until it is asked again.
    pub service_cidr_recheck: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            kubeconfig: None,
            context: None,
            watch_timeout: Duration::from_secs(60),
            coalesce: Duration::from_millis(10),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            service_cidr_recheck: Duration::from_secs(300),
        }
    }
}

/// Loads the client configuration as kubectl does (`cluster::kubeconfig`, the resolver
/// `clusterway check` uses too): `--kubeconfig` (that file only), otherwise `KUBECONFIG`
/// (several files, merged) or `~/.kube/config`, otherwise the in-cluster service account;
/// `--context` picks a context. Exec plugins, tokens and client certificates are kube-rs's.
pub async fn load_config(opts: &KubeOptions) -> anyhow::Result<Config> {
    use anyhow::Context;
    let kc_opts = KubeConfigOptions {
        context: opts.context.clone(),
        cluster: None,
        user: None,
    };
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let found = super::kubeconfig::read_kubeconfig(
        opts.kubeconfig.as_deref(),
        std::env::var_os("KUBECONFIG"),
        home,
    )
    .map_err(|e| anyhow::anyhow!("{} ({})", e.detail, e.fix))?;
    let mut config = match found {
        Some((kc, origin)) => Config::from_custom_kubeconfig(kc, &kc_opts)
            .await
            .with_context(|| format!("kubeconfig {origin}"))?,
        None => {
            if let Some(context) = &opts.context {
                anyhow::bail!(
                    "--context {context} given, but there is no kubeconfig (no --kubeconfig, \
                     KUBECONFIG unset, no ~/.kube/config)"
                );
            }
            Config::incluster().context(
                "no Kubernetes configuration: give --kubeconfig, set KUBECONFIG, create \
                 ~/.kube/config, or run in a cluster",
            )?
        }
    };
    // A watch ends server-side after --watch-timeout and carries bookmarks meanwhile; a
    // connection silent for longer than that plus a margin has stalled (a proxy or load
    // balancer lost the stream), and the read timeout ends it so the watcher re-lists.
    config.read_timeout = Some(opts.watch_timeout + STALL_MARGIN);
    config.reset_reader_on_write = true;
    Ok(config)
}

/// How long past the server-side watch timeout a silent connection is given.
const STALL_MARGIN: Duration = Duration::from_secs(5);

/// Capped exponential backoff with full jitter in the upper half.
#[derive(Debug, Clone)]
struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let exp = self.min.saturating_mul(1u32 << self.attempt.min(16));
        let base = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // Jitter: 50–100 % of the delay, so many gateways do not retry in step.
        let jitter = jitter_fraction();
        base.mul_f64(0.5 + 0.5 * jitter)
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// kube's [`StreamBackoff`] drives it: a delay after each error, reset by any event.
impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Backoff::next(self))
    }
}

impl ::kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        Backoff::reset(self);
    }
}

/// Objects per list request when the watcher (re)lists: a real API server pages, and a
/// bounded page bounds the memory of one response.
pub const LIST_PAGE_SIZE: u32 = 500;

/// A number in [0, 1) from the clock and a per-process counter (jitter needs no quality).
fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Resource {
    Services,
    Slices,
    Cidrs,
}

impl Resource {
    fn label(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::Slices => "endpointslices",
            Resource::Cidrs => "servicecidrs",
        }
    }

    /// Its index in [`super::watch_start::WATCHED`].
    fn watch_index(self) -> usize {
        match self {
            Resource::Services => 0,
            Resource::Slices => 1,
            Resource::Cidrs => 2,
        }
    }
}

/// Events are boxed: a queued message is then a pointer, not the largest object type.
enum Msg {
    Services(Box<Event<Service>>),
    Slices(Box<Event<EndpointSlice>>),
    Cidrs(Box<Event<ServiceCIDR>>),
    /// The cluster does not serve ServiceCIDR (404), or we may not read it (403).
    CidrsUnavailable(String),
    Failed(Resource, WatchError),
    /// A watch was answered 410 Gone; the watcher re-lists.
    Expired(Resource, WatchError),
    /// After a failure, the API server accepted the resumed watch (no re-list).
    Resumed(Resource),
}

/// Drops what the gateway never reads from an object's metadata.
fn trim_meta(meta: &mut ObjectMeta, keep_annotations: bool) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    meta.generate_name = None;
    if keep_annotations {
        if let Some(a) = meta.annotations.as_mut() {
            a.retain(|k, _| READ_ANNOTATIONS.contains(&k.as_str()));
        }
        if meta.annotations.as_ref().is_some_and(BTreeMap::is_empty) {
            meta.annotations = None;
        }
    } else {
        meta.annotations = None;
    }
}

fn trim_service(s: &mut Service) {
    trim_meta(&mut s.metadata, true);
    s.status = None;
}

fn trim_slice(s: &mut EndpointSlice) {
    trim_meta(&mut s.metadata, false);
}

fn trim_cidr(s: &mut ServiceCIDR) {
    trim_meta(&mut s.metadata, false);
    s.status = None;
}

/// When a watcher asks again: after a failure (backoff), or after ServiceCIDR was not
/// served or not allowed (a fixed, long interval).
#[derive(Debug, Clone)]
struct Retry {
    backoff: Backoff,
    recheck_unavailable: Duration,
}

/// Runs one resource's watcher forever. Errors do not end it: kube-runtime's watcher
/// resumes from the last resourceVersion (re-listing only after a 410 or a failed list),
/// paced by kube's [`StreamBackoff`]. Only a ServiceCIDR API that is not served or not
/// allowed ends a watcher; it is asked again after `recheck_unavailable`.
#[allow(clippy::too_many_arguments)]
async fn watch_resource<K>(
    api: Api<K>,
    config: watcher::Config,
    resource: Resource,
    trim: fn(&mut K),
    wrap: fn(Event<K>) -> Msg,
    tx: mpsc::Sender<Msg>,
    retry: Retry,
    mut accepted: watch::Receiver<u64>,
) where
    K: ::kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let Retry {
        backoff,
        recheck_unavailable,
    } = retry;
    loop {
        let stream = watcher::watcher(api.clone(), config.clone()).modify(trim);
        let mut stream = std::pin::pin!(StreamBackoff::new(stream, backoff.clone()));
        // Since the last error: nothing has shown that the watch works again.
        let mut failing = false;
        accepted.borrow_and_update();
        let unavailable = loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(ev)) => {
                        if std::mem::take(&mut failing) && tx.send(Msg::Resumed(resource)).await.is_err() {
                            return;
                        }
                        if tx.send(wrap(ev)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        // A watch accepted before this error is superseded by it.
                        accepted.borrow_and_update();
                        let error = WatchError::from_watcher(&e);
                        match error.status() {
                            // 410 Gone: the history was compacted; the watcher re-lists
                            // and the complete list replaces the objects. Not an outage.
                            Some(410) => {
                                if tx.send(Msg::Expired(resource, error)).await.is_err() {
                                    return;
                                }
                            }
                            Some(403 | 404) if resource == Resource::Cidrs => break error,
                            _ => {
                                failing = true;
                                if tx.send(Msg::Failed(resource, error)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    None => return,
                },
                // The API server accepted a watch after the error: resumed.
                Ok(()) = accepted.changed(), if failing => {
                    failing = false;
                    if tx.send(Msg::Resumed(resource)).await.is_err() {
                        return;
                    }
                }
            }
        };
        // Not served, or not allowed: not an outage. Ask again later (an upgraded cluster
        // or a granted permission then takes effect without a restart).
        if tx
            .send(Msg::CidrsUnavailable(unavailable.to_string()))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(recheck_unavailable).await;
    }
}

/// Objects of one resource during a (re)list.
struct Listing<K> {
    pending: Option<Vec<K>>,
    synced: bool,
}

impl<K> Default for Listing<K> {
    fn default() -> Self {
        Listing {
            pending: None,
            synced: false,
        }
    }
}

impl<K> Listing<K> {
    /// Handles Init/InitApply; returns the complete list on InitDone, or the event back.
    fn feed(&mut self, ev: Event<K>) -> Result<Option<Vec<K>>, Event<K>> {
        match ev {
            Event::Init => {
                self.pending = Some(Vec::new());
                Ok(None)
            }
            Event::InitApply(o) => {
                self.pending.get_or_insert_with(Vec::new).push(o);
                Ok(None)
            }
            Event::InitDone => {
                self.synced = true;
                Ok(Some(self.pending.take().unwrap_or_default()))
            }
            other => Err(other),
        }
    }
}

fn meta_key(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The Kubernetes source, ready to run.
pub struct KubeSource {
    client: Client,
    /// Accepted watch requests per resource (the client's layer keeps them).
    starts: WatchStarts,
    opts: KubeOptions,
    inc: Incremental,
    counters: Arc<SourceCounters>,
    state: watch::Sender<SyncState>,
}

impl KubeSource {
    /// The source on a client built from `config`, with the layer that tells when a
    /// resumed watch is accepted ([`WatchStarts`]).
    pub fn new(
        config: Config,
        build: BuildOptions,
        policy: Policy,
        opts: KubeOptions,
    ) -> Result<(KubeSource, SyncStatus), ::kube::Error> {
        let starts = WatchStarts::default();
        let client = ::kube::client::ClientBuilder::try_from(config)?
            .with_layer(&starts)
            .build();
        Ok(Self::with_client(client, starts, build, policy, opts))
    }

    fn with_client(
        client: Client,
        starts: WatchStarts,
        build: BuildOptions,
        policy: Policy,
        opts: KubeOptions,
    ) -> (KubeSource, SyncStatus) {
        let (state, rx) = watch::channel(SyncState::Syncing);
        let counters = Arc::new(SourceCounters::default());
        let status = SyncStatus {
            state: rx,
            counters: counters.clone(),
        };
        let source = KubeSource {
            client,
            starts,
            opts,
            inc: Incremental::new(build, policy),
            counters,
            state,
        };
        (source, status)
    }

    /// Watches forever, calling `publish` with each new table (generation 1 is the first
    /// complete one). Cancel by aborting the task.
    pub async fn run(mut self, mut publish: impl FnMut(ServiceTable) + Send + 'static) {
        let (tx, mut rx) = mpsc::channel(EVENTS_CAPACITY);
        let config = watcher::Config::default()
            .timeout(u32::try_from(self.opts.watch_timeout.as_secs().max(1)).unwrap_or(290))
            .page_size(LIST_PAGE_SIZE);
        let retry = Retry {
            backoff: Backoff {
                min: self.opts.backoff_min,
                max: self.opts.backoff_max,
                attempt: 0,
            },
            recheck_unavailable: self.opts.service_cidr_recheck,
        };
        let tasks = [
            tokio::spawn(watch_resource(
                Api::<Service>::all(self.client.clone()),
                config.clone(),
                Resource::Services,
                trim_service,
                |e| Msg::Services(Box::new(e)),
                tx.clone(),
                retry.clone(),
                self.starts.subscribe(Resource::Services.watch_index()),
            )),
            tokio::spawn(watch_resource(
                Api::<EndpointSlice>::all(self.client.clone()),
                config.clone(),
                Resource::Slices,
                trim_slice,
                |e| Msg::Slices(Box::new(e)),
                tx.clone(),
                retry.clone(),
                self.starts.subscribe(Resource::Slices.watch_index()),
            )),
            tokio::spawn(watch_resource(
                Api::<ServiceCIDR>::all(self.client.clone()),
                config,
                Resource::Cidrs,
                trim_cidr,
                |e| Msg::Cidrs(Box::new(e)),
                tx,
                retry,
                self.starts.subscribe(Resource::Cidrs.watch_index()),
            )),
        ];
        struct AbortOnDrop<const N: usize>([tokio::task::JoinHandle<()>; N]);
        impl<const N: usize> Drop for AbortOnDrop<N> {
            fn drop(&mut self) {
                for t in &self.0 {
                    t.abort();
                }
            }
        }
        let _tasks = AbortOnDrop(tasks);

        let mut agg = Aggregator {
            services: Listing::default(),
            slices: Listing::default(),
            cidrs: Listing::default(),
            cidr_objects: BTreeMap::new(),
            cidrs_decided: false,
            cidrs_changed: false,
            generation: 0,
            failing: BTreeMap::new(),
            outage_logged: false,
        };
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { return };
                    self.handle(&mut agg, msg);
                    // Drain what is already queued before deciding.
                    while let Ok(msg) = rx.try_recv() {
                        self.handle(&mut agg, msg);
                    }
                    let ready = agg.services.synced && agg.slices.synced && agg.cidrs_decided;
                    let pending = self.inc.is_dirty() || agg.cidrs_changed || agg.generation == 0;
                    if ready && pending && deadline.is_none() {
                        deadline = Some(tokio::time::Instant::now() + self.opts.coalesce);
                    }
                }
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                    deadline = None;
                    self.publish(&mut agg, &mut publish);
                }
            }
        }
    }

    fn handle(&mut self, agg: &mut Aggregator, msg: Msg) {
        match msg {
            Msg::Services(ev) => match agg.services.feed(*ev) {
                Ok(None) => {}
                Ok(Some(list)) => {
                    self.inc.replace_services(list);
                    self.list_done(agg, Resource::Services);
                }
                Err(Event::Apply(s)) => {
                    SourceCounters::inc(&self.counters.events);
                    self.inc.apply_service(s);
                }
                Err(Event::Delete(s)) => {
                    SourceCounters::inc(&self.counters.events);
                    let (ns, name) = meta_key(&s.metadata);
                    self.inc.delete_service(&ns, &name);
                }
                Err(_) => {}
            },
            Msg::Slices(ev) => match agg.slices.feed(*ev) {
                Ok(None) => {}
                Ok(Some(list)) => {
                    self.inc.replace_slices(list);
                    self.list_done(agg, Resource::Slices);
                }
                Err(Event::Apply(s)) => {
                    SourceCounters::inc(&self.counters.events);
                    self.inc.apply_slice(&s);
                }
                Err(Event::Delete(s)) => {
                    SourceCounters::inc(&self.counters.events);
                    let (ns, name) = meta_key(&s.metadata);
                    self.inc.delete_slice(&ns, &name);
                }
                Err(_) => {}
            },
            Msg::Cidrs(ev) => {
                match agg.cidrs.feed(*ev) {
                    Ok(None) => return,
                    Ok(Some(list)) => {
                        agg.cidr_objects.clear();
                        for c in list {
                            self.cidr_object(agg, c);
                        }
                        if !agg.cidrs_decided {
                            tracing::info!(
                                objects = agg.cidr_objects.len(),
                                "the cluster serves ServiceCIDR; routes follow it"
                            );
                        }
                        agg.cidrs_decided = true;
                        self.list_done(agg, Resource::Cidrs);
                    }
                    Err(Event::Apply(c)) => self.cidr_object(agg, c),
                    Err(Event::Delete(c)) => {
                        agg.cidr_objects
                            .remove(&c.metadata.name.unwrap_or_default());
                    }
                    Err(_) => {}
                }
                let all: Vec<IpNet> = agg.cidr_objects.values().flatten().copied().collect();
                if self.inc.set_service_cidrs(Some(all)) {
                    agg.cidrs_changed = true;
                }
            }
            Msg::CidrsUnavailable(why) => {
                let changed = self.inc.set_service_cidrs(None);
                // Once at the start and on each change; the periodic re-checks stay quiet.
                if !agg.cidrs_decided || changed {
                    tracing::info!(reason = %why,
                        "the cluster does not serve networking.k8s.io/v1 ServiceCIDR; using --service-cidr or per-IP routes");
                } else {
                    tracing::debug!(reason = %why, "ServiceCIDR still not served");
                }
                agg.cidrs_decided = true;
                agg.failing.remove(&Resource::Cidrs);
                if changed {
                    agg.cidrs_changed = true;
                }
                self.maybe_recovered(agg);
            }
            Msg::Failed(resource, error) => self.failed(agg, resource, error),
            Msg::Resumed(resource) => {
                SourceCounters::inc(&self.counters.watch_resumed);
                tracing::debug!(
                    resource = resource.label(),
                    "watch resumed from its resourceVersion"
                );
                agg.failing.remove(&resource);
                self.maybe_recovered(agg);
            }
            Msg::Expired(resource, error) => {
                // A failed watch like any other for the error counters (reason `gone`),
                // but not an outage: the watcher re-lists at once.
                SourceCounters::inc(&self.counters.watch_expired);
                SourceCounters::inc(&self.counters.watch_errors);
                SourceCounters::inc(&self.counters.watch_errors_by_reason[error.index()]);
                tracing::info!(
                    resource = resource.label(),
                    "watch expired (410 Gone); re-listing"
                );
            }
        }
    }

    fn cidr_object(&mut self, agg: &mut Aggregator, c: ServiceCIDR) {
        let name = c.metadata.name.clone().unwrap_or_default();
        let mut nets = Vec::new();
        let cidrs = c.spec.as_ref().and_then(|s| s.cidrs.as_ref());
        for (i, text) in cidrs.into_iter().flatten().enumerate() {
            match text.parse::<IpNet>() {
                Ok(n) => nets.push(n.trunc()),
                Err(_) => {
                    SourceCounters::inc(&self.counters.bad_service_cidrs);
                    tracing::warn!(object = %format!("ServiceCIDR {name}"), field = %format!("spec.cidrs[{i}]"),
                        value = %text, "not a CIDR; skipped");
                }
            }
        }
        agg.cidr_objects.insert(name, nets);
    }

    fn list_done(&mut self, agg: &mut Aggregator, resource: Resource) {
        SourceCounters::inc(&self.counters.relists);
        agg.failing.remove(&resource);
        self.maybe_recovered(agg);
    }

    fn maybe_recovered(&mut self, agg: &mut Aggregator) {
        if !agg.failing.is_empty() {
            return;
        }
        let since = match &*self.state.borrow() {
            SyncState::Stale { since, .. } => Some(*since),
            _ => None,
        };
        if let Some(since) = since {
            let outage = SystemTime::now().duration_since(since).unwrap_or_default();
            tracing::info!(
                outage_secs = outage.as_secs_f64(),
                "API server back; resynced"
            );
            self.state.send_replace(SyncState::Synced {
                at: SystemTime::now(),
            });
        }
        agg.outage_logged = false;
    }

    fn failed(&mut self, agg: &mut Aggregator, resource: Resource, error: WatchError) {
        SourceCounters::inc(&self.counters.watch_errors);
        SourceCounters::inc(&self.counters.watch_errors_by_reason[error.index()]);
        let reason = error.label();
        let failures = agg.failing.entry(resource).or_insert(0);
        *failures += 1;
        if *failures == 1 && agg.generation > 0 {
            // One broken watch (a dropped connection, an API server restart behind a load
            // balancer) is resumed at once; only a second failure in a row is an outage.
            tracing::debug!(resource = resource.label(), reason, %error, "watch failed; resuming");
            return;
        }
        let first_for_resource = *failures <= 2;
        let synced = matches!(*self.state.borrow(), SyncState::Synced { .. });
        if synced {
            SourceCounters::inc(&self.counters.outages);
            self.state.send_replace(SyncState::Stale {
                since: SystemTime::now(),
                error: format!("{}: {error}", resource.label()),
            });
        }
        if !agg.outage_logged {
            agg.outage_logged = true;
            if agg.generation == 0 {
                tracing::warn!(resource = resource.label(), reason, %error,
                    "cannot list from the API server; retrying with backoff (nothing is exposed until the first complete list)");
            } else {
                tracing::warn!(resource = resource.label(), reason, %error,
                    "lost the API server; forwarding goes on with the last table, retrying with backoff");
            }
        } else if first_for_resource {
            tracing::debug!(resource = resource.label(), reason, %error, "watch failed");
        } else {
            tracing::debug!(resource = resource.label(), reason, %error, "retry failed");
        }
    }

    fn publish(&mut self, agg: &mut Aggregator, publish: &mut impl FnMut(ServiceTable)) {
        let started = Instant::now();
        let (problems, rebuilt) = self.inc.flush();
        self.report(&problems);
        agg.cidrs_changed = false;
        agg.generation += 1;
        let table = self.inc.snapshot(agg.generation);
        self.counters
            .services_rebuilt
            .fetch_add(rebuilt as u64, std::sync::atomic::Ordering::Relaxed);
        SourceCounters::inc(&self.counters.tables_published);
        let elapsed = started.elapsed();
        if agg.generation == 1 {
            tracing::info!(
                services = table.services.len(),
                ports = table.ports().count(),
                build_ms = elapsed.as_secs_f64() * 1e3,
                "first complete table from the API server"
            );
            if agg.failing.is_empty() {
                self.state.send_replace(SyncState::Synced {
                    at: SystemTime::now(),
                });
            }
        } else {
            tracing::debug!(
                generation = agg.generation,
                rebuilt,
                build_ms = elapsed.as_secs_f64() * 1e3,
                "table updated"
            );
        }
        publish(table);
    }

    fn report(&self, problems: &[ObjectError]) {
        for p in problems {
            if p.field.starts_with("metadata.annotations[") {
                SourceCounters::inc(&self.counters.bad_annotations);
                tracing::warn!(object = %format!("{} {}", p.kind, p.object), field = %p.field,
                    problem = %p.problem, "malformed annotation; read in the most restrictive way");
            } else {
                SourceCounters::inc(&self.counters.bad_objects);
                tracing::warn!(object = %format!("{} {}", p.kind, p.object), field = %p.field,
                    problem = %p.problem, "bad object skipped");
            }
        }
    }
}

struct Aggregator {
    services: Listing<Service>,
    slices: Listing<EndpointSlice>,
    cidrs: Listing<ServiceCIDR>,
    cidr_objects: BTreeMap<String, Vec<IpNet>>,
    cidrs_decided: bool,
    cidrs_changed: bool,
    generation: u64,
    /// Resources whose last list/watch failed and that have not re-listed since, with the
    /// number of failures in a row.
    failing: BTreeMap<Resource, u32>,
    outage_logged: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
            attempt: 0,
        };
        let d: Vec<Duration> = (0..8).map(|_| b.next()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[3] >= Duration::from_millis(400) && d[3] <= Duration::from_millis(800));
        for x in &d[5..] {
            assert!(
                *x >= Duration::from_secs(1) && *x <= Duration::from_secs(2),
                "{x:?}"
            );
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }

    #[test]
    fn trimming_keeps_only_what_is_read() {
        let mut s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "b", "uid": "x",
                "managedFields": [{"manager": "kubectl"}],
                "annotations": {"clusterway.io/expose": "true",
                    "kubectl.kubernetes.io/last-applied-configuration": "{...}"}},
            "spec": {"clusterIP": "10.96.0.1"},
            "status": {"loadBalancer": {}}
        }))
        .unwrap();
        trim_service(&mut s);
        assert!(s.metadata.managed_fields.is_none());
        assert!(s.status.is_none());
        assert_eq!(
            s.metadata.annotations.unwrap().keys().collect::<Vec<_>>(),
            ["clusterway.io/expose"]
        );
    }
}
