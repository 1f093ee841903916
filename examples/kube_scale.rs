//! Scale run of the Kubernetes source against the test API server (not a test):
//! `cargo run --release --example kube_scale [-- SERVICES ENDPOINTS WRITES]`.
//!
//! Loads SERVICES Services (default 10,000) with one EndpointSlice of ENDPOINTS endpoints
//! each (default 10) into the test API server (HTTPS on loopback), starts the same
//! `KubeSource` `clusterway run` uses, and reports:
//! - the time from start to the first complete table (and to the per-IP route set computed
//!   from it, as the gateway's reconciler would install it);
//! - p50/p99 from an EndpointSlice write to the published table carrying the new endpoint
//!   (the table the dataplane reads through its `ArcSwap`), over WRITES writes (default 300);
//! - resident memory of the process after sync, and the part the source added (the API
//!   server's own copy of the objects lives in the same process).

#[path = "../tests/apiserver/mod.rs"]
mod apiserver;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use clusterway::cluster::build::BuildOptions;
use clusterway::cluster::kube::{load_config, KubeOptions, KubeSource};
use clusterway::cluster::policy::Policy;
use clusterway::cluster::table::{Lookup, Protocol, ServiceTable};
use serde_json::json;

/// Resident memory after returning freed heap pages to the kernel (the API server's
/// transient list buffers would otherwise count).
fn rss_kib() -> u64 {
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe { libc::malloc_trim(0) };
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn cluster_ip(i: usize) -> String {
    format!("10.96.{}.{}", (i / 250) % 256, i % 250 + 1)
}

fn slice(i: usize, endpoints: usize, gen: usize) -> serde_json::Value {
    let eps: Vec<serde_json::Value> = (0..endpoints)
        .map(|j| json!({"addresses": [endpoint_ip(i, j, gen).to_string()],
                        "conditions": {"ready": true, "serving": true, "terminating": false},
                        "nodeName": format!("node-{}", j % 7),
                        "targetRef": {"kind": "Pod", "name": format!("svc-{i}-{j}"), "namespace": "bench"}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("svc-{i}-abcde"), "namespace": "bench",
                        "labels": {"kubernetes.io/service-name": format!("svc-{i}"),
                                   "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                                           "fieldsV1": {"f:endpoints": {}}}]},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": eps})
}

/// Endpoint `j` of Service `i` in write generation `gen` (distinct per generation).
fn endpoint_ip(i: usize, j: usize, gen: usize) -> IpAddr {
    let n = (i * 16 + j) as u32;
    IpAddr::from([10, 128 + (gen % 64) as u8, (n >> 8) as u8, n as u8])
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let services = args.first().copied().unwrap_or(10_000);
    let endpoints = args.get(1).copied().unwrap_or(10);
    let writes = args.get(2).copied().unwrap_or(300);

    let api = apiserver::ApiServer::start();
    for i in 0..services {
        api.apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": "bench",
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"a\":\"long string the gateway trims\"}"}},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip(i), "clusterIPs": [cluster_ip(i)],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]}}));
        api.apply(slice(i, endpoints, 0));
    }
    let kubeconfig = api.kubeconfig();
    let rss_before = rss_kib();
    println!(
        "loaded {services} Services x {endpoints} endpoints into the test API server; RSS {} MiB",
        rss_before / 1024
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let opts = KubeOptions {
            kubeconfig: Some(kubeconfig),
            ..KubeOptions::default()
        };
        let started = Instant::now();
        let config = load_config(&opts).await.expect("kubeconfig");
        let (source, _status) =
            KubeSource::new(config, BuildOptions::default(), Policy::default(), opts).expect("client");
        let live = Arc::new(ArcSwap::from_pointee(ServiceTable::default()));
        let (tx, mut rx) = tokio::sync::watch::channel(0u64);
        let l2 = live.clone();
        tokio::spawn(source.run(move |t: ServiceTable| {
            let g = t.generation;
            l2.store(Arc::new(t));
            let _ = tx.send(g);
        }));
        rx.changed().await.unwrap();
        let first = started.elapsed();
        let table = live.load_full();
        let routes = clusterway::gateway::desired_routes(&[], &table);
        let with_routes = started.elapsed();
        println!(
            "first complete table: {:.2} s ({} services, {} ports); per-IP route set ({} routes) computed at {:.2} s",
            first.as_secs_f64(),
            table.services.len(),
            table.ports().count(),
            routes.len(),
            with_routes.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_after = rss_kib();
        println!(
            "RSS after sync: {} MiB (process), {} MiB added by the source (the API server's copy of the objects is the rest)",
            rss_after / 1024,
            rss_after.saturating_sub(rss_before) / 1024
        );

        let mut lat = Vec::with_capacity(writes);
        for w in 0..writes {
            let i = (w * 7919) % services;
            let gen = w + 1;
            let want = std::net::SocketAddr::new(endpoint_ip(i, 0, gen), 8080);
            let vip: IpAddr = cluster_ip(i).parse().unwrap();
            let t0 = Instant::now();
            api.apply(slice(i, endpoints, gen));
            loop {
                let t = live.load();
                if let Lookup::Port(p) = t.lookup(vip, 80, Protocol::Tcp) {
                    if p.usable.contains(&want) {
                        break;
                    }
                }
                drop(t);
                if tokio::time::timeout(Duration::from_secs(5), rx.changed()).await.is_err() {
                    panic!("write {w} not applied within 5 s");
                }
            }
            lat.push(t0.elapsed());
            // Writes spaced out a little, as a controller's would be.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "EndpointSlice write -> table in use ({} writes): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lat.len(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            lat.last().unwrap().as_secs_f64() * 1e3
        );
    });
}
