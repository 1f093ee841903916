//! `clusterway run`: wires the source, the host setup and the dataplane together, and
//! takes everything down again on SIGINT/SIGTERM.
//!
//! Order matters: flags and the source file are checked before anything on the host is
//! touched; a crashed run's leftovers are removed before the new device is made; routes go
//! last (traffic arrives only when everything that handles it is running) and first on the
//! way out.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::cluster::build::BuildOptions;
use crate::cluster::file::FileSource;
use crate::cluster::kube::{load_config, KubeSource};
use crate::cluster::routed;
use crate::cluster::sync::SyncStatus;
use crate::cluster::table::ServiceTable;
use crate::config::{nofile_limit, Dataplane, RunArgs};
use crate::dataplane::ctevents::{Accounting, Reader as EventReader};
use crate::dataplane::engine::{Engine, EngineConfig};
use crate::dataplane::nat::{NatConfig, Partition};
use crate::dataplane::offload::Offloader;
use crate::dataplane::shared::SharedFlows;
use crate::dataplane::splice::{PipePool, PIPE_SIZE};
use crate::dataplane::stats::Stats;
use crate::dataplane::tcp::{bind_listener, Acceptor, PendingFlows};
use crate::dataplane::tun::{TunDevice, TunQueue};
use crate::dataplane::worker::Worker;
use crate::host::announce::{Announcer, Gate};
use crate::host::netlink::Host;
use crate::host::offload::OffloadHost;
use crate::host::sysctl;
use crate::web::health::DataplaneInfo;
use crate::web::{self, health::Health};

/// Where the table comes from.
// Made once at start-up and moved twice: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Source {
    /// `--from-file`, with its first table (loaded before the host is touched).
    File(FileSource, ServiceTable),
    /// The API server (its URL); tables come once the first complete list is in.
    Kube(Box<KubeSource>, SyncStatus, String),
}

/// The routes the table asks for: the cluster's ServiceCIDRs where the API serves them,
/// else the `--service-cidr` ranges, else one host route per ClusterIP.
pub fn desired_routes(cidrs: &[IpNet], table: &ServiceTable) -> BTreeSet<IpNet> {
    if let Some(served) = table.service_cidrs.as_ref().filter(|c| !c.is_empty()) {
        return served.iter().copied().collect();
    }
    if !cidrs.is_empty() {
        return cidrs.iter().copied().collect();
    }
    table.cluster_ips().map(IpNet::from).collect()
}

/// Records which exposed ClusterIPs `routes` cannot carry ([`routed::not_routed`]) for the
/// status page, the API and `/readyz`, and warns when the list changed (at start and on a
/// reload or watch update that changes it), naming up to 20 of them.
fn report_not_routed(health: &Health, routes: &BTreeSet<IpNet>, ipv6: bool, table: &ServiceTable) {
    if table.generation == 0 {
        return;
    }
    let list = routed::not_routed(routes, ipv6, table);
    let count = list.len();
    let text = routed::summary(&list, 20);
    let outside = list
        .iter()
        .any(|n| n.reason == routed::NotRoutedReason::OutsideRanges);
    if health.set_not_routed(list) {
        if count == 0 {
            tracing::info!("every exposed ClusterIP is inside the routed ranges again");
        } else {
            let ranges: Vec<String> = routes.iter().map(ToString::to_string).collect();
            let fix = if outside {
                "add the cluster's Service CIDR with --service-cidr (kubectl get \
                 servicecidrs, or the API server's --service-cluster-ip-range)"
            } else {
                "enable IPv6 on this host (net.ipv6.conf.all.disable_ipv6 = 0)"
            };
            tracing::warn!(
                count,
                routes = %ranges.join(", "),
                "{text}; no client reaches these addresses through this gateway: {fix}"
            );
        }
    }
}

/// Whether the kernel lets this namespace use IPv6 (it may be compiled out, or disabled
/// with `net.ipv6.conf.all.disable_ipv6`).
fn ipv6_enabled() -> bool {
    matches!(
        sysctl::read("net.ipv6.conf.all.disable_ipv6")
            .as_deref()
            .map(str::trim),
        Ok("0")
    )
}

pub async fn run(args: RunArgs) -> Result<()> {
    args.validate()
        .map_err(anyhow::Error::msg)
        .context("invalid flags")?;
    let limits = args.limits(nofile_limit()).map_err(anyhow::Error::msg)?;
    let opts = BuildOptions {
        proxy_name: args.proxy_name.clone(),
    };
    let source = match &args.from_file {
        Some(path) => {
            let (source, first) = FileSource::open_with(path, opts, args.policy(), 1)?;
            tracing::info!(
                file = %path.display(),
                services = first.services.len(),
                ports = first.ports().count(),
                "snapshot loaded"
            );
            Source::File(source, first)
        }
        None => {
            let kube_opts = args.kube_options();
            let config = load_config(&kube_opts).await?;
            tracing::info!(server = %config.cluster_url, "watching the cluster");
            let server = config.cluster_url.to_string();
            let (source, status) = KubeSource::new(config, opts, args.policy(), kube_opts)
                .context("cannot build the Kubernetes client")?;
            Source::Kube(Box::new(source), status, server)
        }
    };
    tracing::info!(
        nofile = limits.nofile,
        max_tcp_flows = limits.tcp_flows,
        max_udp_flows = limits.udp_flows,
        splice_pipes = limits.pipes,
        pipe_size = PIPE_SIZE,
        "flow limits (each TCP flow holds 2 descriptors, each UDP flow 1, each splice pipe 2; \
         a TCP flow takes a pipe only while its bytes are in flight)"
    );

    let host = Host::connect().context("cannot open a netlink socket")?;
    // A crashed run may have left its device (if persistent) and routes behind.
    if host.delete_link(&args.tun_name).await? {
        tracing::info!(device = %args.tun_name, "removed a device left by an earlier run");
    }
    let stale = host.remove_owned(None).await?;
    if !stale.is_empty() {
        tracing::info!(routes = ?stale, "removed routes left by an earlier run");
    }

    // Flow offload: probe the kernel, put the netfilter table in place, adopt what a
    // previous run left; else the proxy, saying why.
    let offload = choose_dataplane(&args);

    let queues = args.queue_count();
    let device = TunDevice::open(&args.tun_name, queues, !args.no_offload)?;
    let threads = args.runtime_threads();
    let proxy = args.proxy_threads();
    match device.offload {
        Some(o) => {
            tracing::info!(device = %device.name, queues, runtime_threads = threads, proxy, offloads = %o, "TUN device created")
        }
        None => {
            tracing::info!(device = %device.name, queues, runtime_threads = threads, proxy, "TUN device created without offloads")
        }
    }
    let result = serve(&args, limits, &host, &device, source, &offload).await;
    // Routes first, then the device (closing its queues removes it).
    if let Err(e) = host.remove_owned(Some(device.index)).await {
        tracing::warn!(error = %e, "could not remove routes on shutdown");
    }
    if let Ok(off) = &offload.host {
        off.stop();
    }
    let name = device.name.clone();
    drop(device);
    if let Err(e) = host.delete_link(&name).await {
        tracing::warn!(error = %e, "could not remove the device on shutdown");
    }
    tracing::info!("stopped; device and routes removed");
    result
}

/// Bind the listeners of one port on L: IPv4 on a port the kernel picks, IPv6 (when enabled)
/// on the same port.
fn bind_listeners(
    listener_v4: Ipv4Addr,
    listener_v6: Ipv6Addr,
    ipv6: bool,
) -> Result<(Vec<TcpListener>, u16)> {
    let l4 = bind_listener(SocketAddr::new(listener_v4.into(), 0))
        .context("cannot bind the IPv4 listener")?;
    let port = l4.local_addr()?.port();
    let mut listeners = vec![l4];
    if ipv6 {
        let l6 = bind_listener(SocketAddr::new(listener_v6.into(), port))
            .with_context(|| format!("cannot bind the IPv6 listener on port {port}"))?;
        listeners.push(l6);
    }
    Ok((listeners, port))
}

/// The dataplane chosen at start: the offload host state, or why there is none.
struct Chosen {
    host: std::result::Result<OffloadHost, String>,
    info: DataplaneInfo,
}

/// `--dataplane offload` when the kernel can (probe, table, adoption), else `proxy` with
/// the reason, logged once.
fn choose_dataplane(args: &RunArgs) -> Chosen {
    let requested = args.dataplane.label();
    let host = match args.dataplane {
        Dataplane::Proxy => Err(String::new()),
        Dataplane::Offload => OffloadHost::start(&args.tun_name).map_err(|e| {
            let reason = e.reason();
            tracing::warn!(reason = %reason, label = e.label(), "flow offload unavailable; falling back to the proxy dataplane");
            reason
        }),
    };
    let info = match &host {
        Ok(h) => {
            let ceiling = crate::host::conntrack::table_size();
            tracing::info!(dataplane = "offload", flow_ceiling = ?ceiling, adopted = h.adopted, "dataplane: offload (TCP and UDP flows carried by the kernel's connection tracking; the ceiling is its table size)");
            DataplaneInfo {
                name: "offload",
                requested,
                reason: String::new(),
                flow_ceiling: ceiling,
            }
        }
        Err(reason) => {
            tracing::info!(dataplane = "proxy", requested, reason = %reason, "dataplane: proxy");
            DataplaneInfo {
                name: "proxy",
                requested,
                reason: reason.clone(),
                flow_ceiling: None,
            }
        }
    };
    Chosen { host, info }
}

async fn serve(
    args: &RunArgs,
    limits: crate::config::Limits,
    host: &Host,
    device: &TunDevice,
    source: Source,
    offload: &Chosen,
) -> Result<()> {
    // The Kubernetes source starts empty (generation 0): nothing is routed until its first
    // complete table.
    let (source, first, sync_status) = match source {
        Source::File(mut source, first) => {
            // Synced after the first load; a bad file on reload marks it stale.
            let (tx, status) = SyncStatus::synced_now();
            source.report_sync(tx);
            (Source::File(source, ServiceTable::default()), first, status)
        }
        Source::Kube(source, status, server) => (
            Source::Kube(source, status.clone(), server),
            ServiceTable::default(),
            status,
        ),
    };
    let mut nat = NatConfig::new(args.inner_v4, args.inner_v6, limits.tcp_flows as usize);
    nat.virtual_addrs = args.virtual_addrs;
    let listener_v4 = nat.listener_v4();
    let listener_v6 = nat.listener_v6();
    let ipv6 = ipv6_enabled();
    if !ipv6 {
        tracing::warn!(
            "IPv6 is disabled on this host (net.ipv6.conf.all.disable_ipv6 = 1); serving IPv4 only"
        );
    }
    let mut addrs = vec![IpNet::new(
        IpAddr::V4(listener_v4),
        args.inner_v4.prefix_len(),
    )?];
    if ipv6 {
        addrs.push(IpNet::new(
            IpAddr::V6(listener_v6),
            args.inner_v6.prefix_len(),
        )?);
    }
    host.configure_link(device.index, &addrs, None).await?;
    sysctl::ensure("net.ipv4.ip_forward", "1")?;
    if ipv6 {
        sysctl::ensure("net.ipv6.conf.all.forwarding", "1")?;
    }

    // The listeners: one port for the proxy on the shared runtime, or one per worker when
    // the workers run it (a flow's tuple names its worker, see dataplane::shared).
    let owners = if args.proxy_on_workers {
        device.queues.len()
    } else {
        1
    };
    let mut listener_sets = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..owners {
        let (listeners, port) = bind_listeners(listener_v4, listener_v6, ipv6)?;
        listener_sets.push(listeners);
        ports.push(port);
    }
    let ports: Arc<[u16]> = ports.into();

    let stats = Arc::new(Stats::default());
    // Pod ranges (--pod-cidr) go with every table the dataplane reads.
    let pod_cidrs: Arc<[IpNet]> = args.pod_cidrs.iter().copied().collect();
    let mut first = first;
    first.pod_cidrs = pod_cidrs.clone();
    let table = Arc::new(ArcSwap::from_pointee(first));
    let (changed_tx, mut changed_rx) = watch::channel(0u64);
    // The status page, API and metrics: read-only views of the table, counters and state.
    let health = Arc::new(Health::new(&device.name, args.ready_max_stale));
    health.set_dataplane(offload.info.clone());
    let web_task = {
        let listener = web::server::bind(args.status_addr, args.status_token.is_some()).await?;
        let kind = match &source {
            Source::File(file, _) => web::SourceKind::File(file.path().display().to_string()),
            Source::Kube(_, _, server) => web::SourceKind::Cluster(server.clone()),
        };
        let status = web::Status::new(
            table.clone(),
            stats.clone(),
            sync_status,
            kind,
            health.clone(),
            args.status_token.clone(),
            // Offload: TCP flows are bounded by the conntrack table, not by descriptors.
            match (&offload.host, offload.info.flow_ceiling) {
                (Ok(_), Some(ceiling)) => ceiling,
                _ => limits.tcp_flows,
            },
            limits.udp_flows,
        );
        web::server::spawn(listener, status, changed_tx.subscribe())
    };
    // The DNS server (names): bound here, serving from the same table the dataplane reads.
    let dns_task = if args.dns.enabled() {
        let policy = args.policy();
        if let (Some(fwd), None) = (args.dns.dns_forward, &policy.allow_sources) {
            // The operator asked for forwarding; without --allow-source every client that
            // reaches the listener can use the forwarder (an open resolver if that is the
            // Internet).
            tracing::warn!(forward = %fwd, "--dns-forward without --allow-source: any client that reaches --dns-listen may resolve any name through the forwarder");
        }
        let dns = crate::dns::server::DnsServer::bind(&args.dns, policy.allow_sources).await?;
        tracing::info!(listen = ?dns.local_addrs(), zone = %args.dns.dns_zone, forward = ?args.dns.dns_forward, "DNS server listening");
        Some(tokio::spawn(dns.run(table.clone(), stats.dns.clone())))
    } else {
        None
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    // New TCP flows waiting for the listener to accept them. Each also holds a NAT entry,
    // so the NAT's bound (table full: RST, counted) is the one that acts under a SYN flood;
    // this one only guards against entries whose NAT side already expired.
    let pending = Arc::new(PendingFlows::new(limits.tcp_flows as usize));
    let shared = Arc::new(SharedFlows::with_owners(
        nat.clone(),
        owners,
        Instant::now(),
    ));
    let mut config = EngineConfig::new(nat, limits.udp_flows as usize);
    config.udp_idle = args.udp_idle_timeout;
    config.service_cidrs = args.service_cidrs.clone();
    config.offload = offload.host.is_ok();
    // Offload: the accounting of the kernel's flows (conntrack events) on a thread of its
    // own, subscribed before the first entry is made; it adopts an earlier run's entries.
    let mut events_thread = None;
    if offload.host.is_ok() {
        let outliers = Arc::new(crate::dataplane::outlier::Outliers::new());
        config.outliers = Some(outliers.clone());
        let mut accounting = Accounting::new(table.clone(), stats.clone(), outliers);
        // An established entry records its client's ClientIP affinity (not the hand-over
        // of its SYN: a spoofed one never gets there).
        accounting.affinity = Some(shared.clone());
        match EventReader::open(accounting) {
            Ok(reader) => {
                config.affinity_from_events = true;
                tracing::info!(
                    active = stats.tcp_active.load(Ordering::Relaxed),
                    listed = reader.accounting.listed(),
                    "reading conntrack events; earlier entries adopted"
                );
                let stop = shutdown.clone();
                events_thread = Some(
                    std::thread::Builder::new()
                        .name("cw-ctevents".into())
                        .spawn(move || reader.run(stop))
                        .context("cannot start the conntrack event thread")?,
                );
            }
            Err(e) => {
                tracing::warn!(error = %crate::cluster::kubeconfig::error_chain(&e), "cannot read conntrack events: offloaded flows are carried but not counted or listed")
            }
        }
    }
    // One worker per queue, each on a thread of its own reading its queue directly (see
    // dataplane::tun); the first that stops ends the gateway.
    let (worker_done_tx, mut worker_done) = mpsc::channel(device.queues.len());
    let runtime = tokio::runtime::Handle::current();
    let mut worker_threads = Vec::new();
    let pipes = Arc::new(PipePool::with_stats(
        limits.pipes as usize,
        PIPE_SIZE,
        stats.splice.clone(),
    ));
    let mut listener_sets = listener_sets.into_iter();
    let all_queues: Arc<[Arc<TunQueue>]> = device.queues.iter().cloned().collect();
    for index in 0..device.queues.len() {
        let engine = Engine::with_shared(
            config.clone(),
            shared.clone(),
            ports.clone(),
            index % owners,
            stats.clone(),
            Instant::now(),
        );
        let worker = Worker {
            queues: all_queues.clone(),
            table: table.clone(),
            engine,
            pending: pending.clone(),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
            part: Partition {
                index,
                count: device.queues.len(),
            },
            busy_poll: args.busy_poll,
            offload: match offload.host {
                Ok(_) => {
                    Some(Offloader::open(ipv6).context("cannot open the sockets of flow offload")?)
                }
                Err(_) => None,
            },
        };
        let done = worker_done_tx.clone();
        let runtime = runtime.clone();
        let local = args.proxy_on_workers.then(|| Acceptor {
            listeners: listener_sets.next().unwrap_or_default(),
            pending: pending.clone(),
            shared: shared.clone(),
            stats: stats.clone(),
            pipes: pipes.clone(),
        });
        let thread = std::thread::Builder::new()
            .name(format!("cw-dataplane-{index}"))
            .spawn(move || {
                let r =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || match local {
                        Some(acceptor) => worker.run_with_proxy(acceptor),
                        None => worker.run(runtime),
                    }));
                // One message per worker, and room for each: never full.
                let _ = done.try_send(r.map_err(|_| ()));
            })
            .context("cannot start a dataplane thread")?;
        worker_threads.push(thread);
    }
    drop(worker_done_tx);
    // The shared runtime's acceptor: with the proxy on the workers no listener is left for
    // it, and it returns at once.
    let acceptor = Acceptor {
        listeners: listener_sets.next().unwrap_or_default(),
        pending,
        shared,
        stats: stats.clone(),
        pipes,
    };
    let acceptor_task = tokio::spawn(acceptor.run());
    let trim_task = tokio::spawn(crate::dataplane::memory::trim_after_flows_close(
        stats.clone(),
    ));

    let live = table.clone();
    let publish = move |mut t: ServiceTable| {
        t.pod_cidrs = pod_cidrs.clone();
        let generation = t.generation;
        live.store(Arc::new(t));
        let _ = changed_tx.send(generation);
    };
    let source_task = match source {
        Source::File(source, _) => tokio::spawn(source.run(publish)),
        Source::Kube(source, ..) => tokio::spawn((*source).run(publish)),
    };

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // The announcement (src/host/announce.rs): routes exist exactly while this gateway can
    // forward; the TUN device's state is looked at on each of its link events and every
    // `TUN_CHECK`, and the kernel is reconciled in full on a change of it and every
    // `FULL_RECONCILE` checks.
    const TUN_CHECK: std::time::Duration = std::time::Duration::from_millis(250);
    const FULL_RECONCILE: u32 = 40;
    let mut announcer = Announcer::new(
        host,
        device.index,
        args.route_table,
        args.announce,
        &args.service_cidrs,
        ipv6,
        &health.announce,
    );
    let mut link_events = crate::host::netlink::watch_links()?;
    let mut tun_check = tokio::time::interval(TUN_CHECK);
    tun_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    let mut tun_up = health.tun().is_ok();
    let mut drain_until: Option<tokio::time::Instant> = None;
    let mut seen_generation = None;
    let mut force = true;
    let result: Result<()> = loop {
        let generation = table.load().generation;
        let gate = Gate {
            table: generation > 0,
            tun_up,
            draining: drain_until.is_some(),
        };
        if generation == 0 && seen_generation.is_none() {
            tracing::info!(
                "waiting for the first complete table from the API server; nothing routed yet"
            );
        }
        // Offload: the netfilter table's first-packet rule follows the routed ranges, before
        // the routes bring traffic.
        if let Ok(off) = &offload.host {
            if seen_generation != Some(generation) || force {
                let want = crate::host::announce::wanted(
                    args.announce,
                    &args.service_cidrs,
                    &table.load(),
                    ipv6,
                );
                if let Err(e) = off.set_routed(&want) {
                    tracing::warn!(error = %e, "cannot update the netfilter table's routed ranges");
                }
            }
        }
        match announcer.apply(&table.load(), gate, force).await {
            Ok(n) => {
                health.set_routes(Ok(n));
                force = false;
            }
            Err(e) => {
                health.set_routes(Err(format!("reconcile failed: {e}")));
                tracing::warn!(error = %e, label = e.label(), "route reconcile failed; retrying");
                force = true;
            }
        }
        if seen_generation != Some(generation) {
            // ClusterIPs the aggregated routes cannot carry: a warning at start and on each
            // change (IPv6 ones are judged against the host's IPv6 by `report_not_routed`).
            let wanted = crate::host::announce::wanted(
                crate::host::announce::AnnounceMode::Aggregated,
                &args.service_cidrs,
                &table.load(),
                true,
            );
            report_not_routed(&health, &wanted, ipv6, &table.load());
            match generation {
                0 => {}
                1 => {
                    tracing::info!(device = %device.name, listener_ports = ?ports, generation, "gateway ready")
                }
                _ => tracing::info!(generation, "table applied"),
            }
            seen_generation = Some(generation);
        }
        let drain_deadline = drain_until.unwrap_or_else(tokio::time::Instant::now);
        // The TUN device's state as the periodic check or a link event saw it.
        let mut link_seen = None;
        tokio::select! {
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => {
                if drain_until.is_some() || args.drain_timeout.is_zero() {
                    break Ok(());
                }
                // Withdraw first (the next apply, with the gate closed), then keep forwarding
                // what still arrives while the routers converge.
                health.set_draining();
                drain_until = Some(tokio::time::Instant::now() + args.drain_timeout);
                tracing::info!(drain_timeout = ?args.drain_timeout, "SIGTERM: withdrawing the routes and draining (a second SIGTERM or SIGINT stops at once)");
            }
            _ = tokio::time::sleep_until(drain_deadline), if drain_until.is_some() => {
                tracing::info!("drain time over");
                break Ok(());
            }
            _ = tun_check.tick() => {
                ticks = ticks.wrapping_add(1);
                link_seen = Some(health.tun().is_ok());
                if ticks % FULL_RECONCILE == 0 {
                    force = true;
                }
            }
            Some((index, now_up)) = link_events.recv() => {
                // The kernel drops a link's routes when it goes down, silently; a flap shorter
                // than TUN_CHECK is seen only here.
                if index == device.index {
                    link_seen = Some(now_up);
                }
            }
            r = changed_rx.changed() => {
                if r.is_err() { break Err(anyhow::anyhow!("the file source stopped")); }
            }
            r = worker_done.recv() => {
                break match r {
                    Some(Ok(Ok(()))) => Err(anyhow::anyhow!("a dataplane worker stopped")),
                    Some(Ok(Err(e))) => Err(anyhow::Error::new(e).context("a dataplane worker failed")),
                    Some(Err(())) | None => Err(anyhow::anyhow!("a dataplane worker panicked")),
                };
            }
        }
        if let Some(now_up) = link_seen.filter(|&up| up != tun_up) {
            if now_up {
                tracing::info!(device = %device.name, "TUN device up again");
                // The kernel drops IPv6 addresses of a link that goes down.
                if let Err(e) = host.configure_link(device.index, &addrs, None).await {
                    tracing::warn!(error = %e, label = e.label(), "could not restore the TUN device's addresses");
                }
            } else {
                tracing::warn!(device = %device.name, "TUN device down: withdrawing the routes");
            }
            tun_up = now_up;
            force = true;
        }
    };
    // Routes go first: the daemon withdraws them while the rest stops.
    let reason = if result.is_err() {
        "worker_gone"
    } else {
        "stop"
    };
    announcer.withdraw(false, reason).await;
    tracing::info!("shutting down");
    shutdown.store(true, Ordering::Relaxed);
    source_task.abort();
    acceptor_task.abort();
    trim_task.abort();
    web_task.abort();
    if let Some(t) = dns_task {
        t.abort();
    }
    // The workers notice within their idle poll interval.
    let _ = tokio::task::spawn_blocking(move || {
        for t in worker_threads.into_iter().chain(events_thread) {
            let _ = t.join();
        }
    })
    .await;
    result
}
