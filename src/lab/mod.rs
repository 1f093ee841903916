//! `clusterway lab`: a demo topology in network namespaces it owns.
//!
//! Builds client, gateway and pod namespaces ([`topology`]), runs a demo backend in every pod
//! ([`backend`]), writes a snapshot of demo Services and EndpointSlices ([`demo_snapshot`]) and
//! runs `clusterway run` on it inside the gateway namespace, until Ctrl-C.
//!
//! Owns: the `{prefix}-*` namespaces, the processes it starts, a temporary directory. Must not
//! touch: the host namespace (no link, address, route or sysctl changes outside its
//! namespaces).

pub mod backend;
pub mod netns;
pub mod relay;
pub mod topology;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use self::topology::Topology;

/// Options of `clusterway lab`.
#[derive(clap::Args, Debug, Clone)]
pub struct LabArgs {
    /// Prefix of the namespace names (`{prefix}-cl`, `{prefix}-gw`, `{prefix}-p1`, ..).
    #[arg(long, default_value = "cwlab")]
    pub prefix: String,
    /// Number of pod namespaces.
    #[arg(long, default_value_t = 2)]
    pub pods: usize,
    /// Where the status page is served on the host (relayed to the gateway's status
    /// server inside its namespace). When the port is taken, a free one is used.
    #[arg(long, default_value = "127.0.0.1:9310", value_name = "ADDR")]
    pub status_addr: std::net::SocketAddr,
}

/// The gateway's status server address inside the gateway namespace.
pub const GATEWAY_STATUS: &str = "127.0.0.1:9310";

/// The demo Services' IPv4 ClusterIPs and ports, as [`demo_snapshot`] writes them.
pub const WEB_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// `demo/web`'s IPv6 ClusterIP.
pub const WEB_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x10);
/// `demo/dns-echo`'s IPv4 ClusterIP (UDP 53 → pods' 5353).
pub const DNS_ECHO_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
/// `demo/dns-echo`'s IPv6 ClusterIP.
pub const DNS_ECHO_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x53);
/// `demo/sticky`'s ClusterIP (sessionAffinity: ClientIP).
pub const STICKY_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// `demo/empty`'s ClusterIP (no endpoints).
pub const EMPTY_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
/// Port the demo backends serve HTTP on in every pod.
pub const BACKEND_HTTP_PORT: u16 = 8080;
/// Port the demo backends echo UDP on in every pod.
pub const BACKEND_UDP_PORT: u16 = 5353;
/// Service CIDRs the lab routes to the gateway.
pub const SERVICE_CIDRS: [&str; 2] = ["10.96.0.0/16", "fd00:10:96::/112"];

/// The arguments of `clusterway demo-backend` for pod `k` as the lab runs it.
pub fn backend_args(k: usize) -> Vec<String> {
    let (h, u) = (BACKEND_HTTP_PORT, BACKEND_UDP_PORT);
    [
        "demo-backend".to_owned(),
        "--name".to_owned(),
        format!("pod-{k}"),
        "--http".to_owned(),
        format!("0.0.0.0:{h}"),
        "--http".to_owned(),
        format!("[::]:{h}"),
        "--udp".to_owned(),
        format!("0.0.0.0:{u}"),
        "--udp".to_owned(),
        format!("[::]:{u}"),
    ]
    .into()
}

/// A snapshot of demo Services and EndpointSlices (Kubernetes API objects, a `kind: List`
/// as `kubectl get svc,endpointslices -n demo -o yaml` writes it), with `pods` as endpoints:
///
/// - `demo/web`: dual-stack 10.96.0.10 + fd00:10:96::10, TCP 80 (name `http`) → targetPort
///   `http` = 8080 on the pods; one IPv4 and one IPv6 EndpointSlice;
/// - `demo/dns-echo`: 10.96.0.53 + fd00:10:96::53, UDP 53 → 5353;
/// - `demo/sticky`: 10.96.0.20, TCP 80 → 8080, `sessionAffinity: ClientIP`;
/// - `demo/empty`: 10.96.0.99, TCP 80 → 8080, an EndpointSlice without endpoints;
/// - `demo/db`: headless, a StatefulSet's pods `db-0`, `db-1`, .. (hostnames) on the pods,
///   port `http` 8080 (see [`headless_demo`]).
pub fn demo_snapshot(pods: &[(Ipv4Addr, Ipv6Addr)]) -> String {
    let v4: Vec<String> = pods.iter().map(|(a, _)| a.to_string()).collect();
    let v6: Vec<String> = pods.iter().map(|(_, a)| a.to_string()).collect();
    let mut items = vec![
        service(
            "web",
            &[&WEB_V4.to_string(), &WEB_V6.to_string()],
            json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]),
            None,
        ),
        service(
            "dns-echo",
            &[&DNS_ECHO_V4.to_string(), &DNS_ECHO_V6.to_string()],
            json!([{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]),
            None,
        ),
        service(
            "sticky",
            &[&STICKY_V4.to_string()],
            json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]),
            Some(10800),
        ),
        service(
            "empty",
            &[&EMPTY_V4.to_string()],
            json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]),
            None,
        ),
        slice("web", "IPv4", &v4, "http", BACKEND_HTTP_PORT, "TCP"),
        slice("web", "IPv6", &v6, "http", BACKEND_HTTP_PORT, "TCP"),
        slice("dns-echo", "IPv4", &v4, "dns", BACKEND_UDP_PORT, "UDP"),
        slice("dns-echo", "IPv6", &v6, "dns", BACKEND_UDP_PORT, "UDP"),
        slice("sticky", "IPv4", &v4, "http", BACKEND_HTTP_PORT, "TCP"),
        slice("empty", "IPv4", &[], "http", BACKEND_HTTP_PORT, "TCP"),
    ];
    items.extend(headless_demo(&v4));
    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": items,
    });
    let yaml = serde_yaml_ng::to_string(&list).unwrap_or_else(|e| {
        // Serialising a serde_json::Value to YAML cannot fail; fall back to JSON (valid YAML).
        tracing::warn!(error = %e, "YAML serialisation failed, writing JSON");
        list.to_string()
    });
    format!(
        "# clusterway lab demo snapshot. Edit and save: the gateway reloads it.\n\
         # Services: demo/web (TCP, dual-stack), demo/dns-echo (UDP), demo/sticky (ClientIP\n\
         # affinity), demo/empty (no endpoints), demo/db (headless: db-0, db-1 by name).\n{yaml}"
    )
}

fn service(name: &str, cluster_ips: &[&str], ports: Value, affinity_timeout: Option<u32>) -> Value {
    let families: Vec<&str> = cluster_ips
        .iter()
        .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
        .collect();
    let mut spec = json!({
        "type": "ClusterIP",
        "clusterIP": cluster_ips[0],
        "clusterIPs": cluster_ips,
        "ipFamilies": families,
        "ipFamilyPolicy": if cluster_ips.len() > 1 { "RequireDualStack" } else { "SingleStack" },
        "internalTrafficPolicy": "Cluster",
        "ports": ports,
        "selector": {"app": name},
        "sessionAffinity": "None",
    });
    if let Some(timeout) = affinity_timeout {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout}});
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "demo", "labels": {"app": name}},
        "spec": spec,
        "status": {"loadBalancer": {}},
    })
}

fn slice(
    service: &str,
    family: &str,
    addrs: &[String],
    port_name: &str,
    port: u16,
    protocol: &str,
) -> Value {
    let endpoints: Vec<Value> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            json!({
                "addresses": [a],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "lab",
                "targetRef": {"kind": "Pod", "namespace": "demo", "name": format!("pod-{}", i + 1)},
            })
        })
        .collect();
    let suffix = if family == "IPv6" { "v6" } else { "v4" };
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "addressType": family,
        "metadata": {
            "name": format!("{service}-{suffix}"),
            "namespace": "demo",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "clusterway-lab",
            },
        },
        // The API server returns `endpoints: null` for a slice without endpoints.
        "endpoints": if endpoints.is_empty() { Value::Null } else { Value::Array(endpoints) },
        "ports": [{"name": port_name, "port": port, "protocol": protocol}],
    })
}

/// The headless demo Service `demo/db` and its EndpointSlice: pod K is `db-(K-1)`, as a
/// StatefulSet names its pods, resolvable as `db-0.db.demo.svc.cluster.local`.
fn headless_demo(v4: &[String]) -> Vec<Value> {
    let endpoints: Vec<Value> = v4
        .iter()
        .enumerate()
        .map(|(i, a)| {
            json!({
                "addresses": [a],
                "hostname": format!("db-{i}"),
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "lab",
                "targetRef": {"kind": "Pod", "namespace": "demo", "name": format!("db-{i}")},
            })
        })
        .collect();
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db", "namespace": "demo", "labels": {"app": "db"}},
            "spec": {
                "clusterIP": "None",
                "clusterIPs": ["None"],
                "type": "ClusterIP",
                "ports": [{"name": "http", "port": BACKEND_HTTP_PORT, "protocol": "TCP"}],
                "selector": {"app": "db"},
            },
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "addressType": "IPv4",
            "metadata": {
                "name": "db-v4",
                "namespace": "demo",
                "labels": {
                    "kubernetes.io/service-name": "db",
                    "service.kubernetes.io/headless": "",
                    "endpointslice.kubernetes.io/managed-by": "clusterway-lab",
                },
            },
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": BACKEND_HTTP_PORT, "protocol": "TCP"}],
        }),
    ]
}

/// Where the lab's gateway answers DNS (its address on the client's link).
pub const LAB_DNS: &str = "192.168.77.1:53";

/// Programs the printed commands use, with the Debian package that has each.
const LAB_TOOLS: [(&str, &str); 5] = [
    ("curl", "curl"),
    ("socat", "socat"),
    ("dig", "bind9-dnsutils"),
    ("ping", "iputils-ping"),
    ("ip", "iproute2"),
];

/// The printed commands' programs that are not on `PATH`: (program, Debian package).
pub fn missing_tools(path: Option<&std::ffi::OsStr>) -> Vec<(&'static str, &'static str)> {
    let dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    LAB_TOOLS
        .iter()
        .filter(|(tool, _)| !dirs.iter().any(|d| d.join(tool).is_file()))
        .copied()
        .collect()
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
struct Guarded {
    what: String,
    child: Child,
}

impl Guarded {
    fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid, no memory effects.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("lab: {} did not stop in {grace:?}, killing it", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("clusterway-{prefix}-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `clusterway lab`: runs the demo until SIGINT/SIGTERM or until the gateway exits, then
/// removes everything it created.
pub async fn run(args: LabArgs) -> Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "clusterway lab needs root (it creates network namespaces with `ip netns`); \
             run it with sudo"
        );
    }
    if args.pods == 0 || args.pods > topology::MAX_PODS {
        bail!("--pods must be 1..={}", topology::MAX_PODS);
    }
    let exe = std::env::current_exe().context("finding the clusterway binary")?;

    // Signals are caught from the start, so Ctrl-C during setup still cleans up.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;

    let prefix = args.prefix.clone();
    let pods = args.pods;
    let topo = tokio::task::spawn_blocking(move || Topology::with_prefix(&prefix, pods))
        .await
        .context("topology task")??;
    let dir = TempDir::new(&args.prefix)?;
    let snapshot = dir.0.join("snapshot.yaml");
    topo.write_demo_snapshot(&snapshot)?;

    // Declared after `topo`, so they are dropped (stopped) before the namespaces go.
    let mut children: Vec<Guarded> = Vec::new();
    for k in 1..=topo.pod_count() {
        let child = topo
            .pod(k)
            .exec(&exe, backend_args(k))
            // The backends' start-up lines would drown the gateway's; warnings still show.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting the demo backend in {}", topo.pod(k).name()))?;
        children.push(Guarded {
            what: format!("demo backend pod-{k}"),
            child,
        });
    }
    let mut gw_args: Vec<String> = vec![
        "run".into(),
        "--from-file".into(),
        snapshot.display().to_string(),
    ];
    for cidr in SERVICE_CIDRS {
        gw_args.push("--service-cidr".into());
        gw_args.push(cidr.into());
    }
    gw_args.push("--status-addr".into());
    gw_args.push(GATEWAY_STATUS.into());
    // Names: the gateway answers the cluster zone on its address towards the client.
    gw_args.push("--dns-listen".into());
    gw_args.push(LAB_DNS.into());
    // One gateway and no routing daemon: nothing to drain towards, stop at once.
    gw_args.push("--drain-timeout".into());
    gw_args.push("0".into());
    let gateway = topo
        .gateway()
        .exec(&exe, &gw_args)
        .stdin(Stdio::null())
        .spawn()
        .context("starting the gateway")?;
    let mut gateway = Guarded {
        what: "gateway".into(),
        child: gateway,
    };

    let ready = tokio::select! {
        r = wait_gateway_ready(&topo, &mut gateway, Duration::from_secs(15)) => r,
        _ = sigint.recv() => Err(anyhow::anyhow!("interrupted")),
        _ = sigterm.recv() => Err(anyhow::anyhow!("terminated")),
    };
    // The status page on the host's loopback, relayed into the gateway namespace.
    let ready = match ready {
        Ok(()) => relay::start(
            topo.gateway(),
            args.status_addr,
            GATEWAY_STATUS.parse().expect("a socket address"),
        )
        .await
        .map(Some),
        Err(e) => Err(e),
    };
    let relay = match ready {
        Ok(relay) => {
            let url = relay.as_ref().map(|r| format!("http://{}/", r.addr));
            print_instructions(&topo, &snapshot, url.as_deref().unwrap_or("-"));
            relay
        }
        Err(e) => {
            eprintln!("lab: {e:#}; cleaning up");
            gateway.stop(Duration::from_secs(3));
            drop(children);
            drop(topo);
            return Err(e);
        }
    };

    let outcome = loop {
        tokio::select! {
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                match gateway.child.try_wait() {
                    Ok(Some(status)) => break Err(anyhow::anyhow!("the gateway exited: {status}")),
                    Ok(None) => {}
                    Err(e) => break Err(e).context("waiting for the gateway"),
                }
            }
        }
    };
    eprintln!("lab: stopping the gateway and the backends, removing the namespaces");
    drop(relay);
    gateway.stop(Duration::from_secs(5));
    drop(children);
    let gw_name = topo.gateway().name().to_owned();
    tokio::task::spawn_blocking(move || drop(topo))
        .await
        .context("cleanup task")?;
    drop(dir);
    eprintln!("lab: removed {}-* ({gw_name} and the others)", args.prefix);
    outcome
}

/// Waits until the gateway's TUN device is up in the gateway namespace and the Service CIDR
/// routes through it, or fails if the gateway exits first.
async fn wait_gateway_ready(
    topo: &Topology,
    gateway: &mut Guarded,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let probe = format!("ip route get {WEB_V4}");
    loop {
        if let Some(status) = gateway
            .child
            .try_wait()
            .context("waiting for the gateway")?
        {
            bail!("the gateway exited during start: {status}");
        }
        if topo
            .gateway()
            .sh(&probe)
            .is_ok_and(|out| out.contains(" dev cw0"))
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the gateway did not route {WEB_V4} via cw0 within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_instructions(topo: &Topology, snapshot: &Path, status_url: &str) {
    let cl = topo.client().name();
    let gw = topo.gateway().name();
    let pods: Vec<&str> = (1..=topo.pod_count()).map(|k| topo.pod(k).name()).collect();
    eprintln!(
        "
clusterway lab is up.
  namespaces: client {cl} (192.168.77.2, fd77::2), gateway {gw}, pods {pods}
  snapshot:   {snap}   (edit and save it: the gateway reloads it)
  status page: {status_url}   (services, flows, events; /metrics, /readyz)

Try, in another terminal:
  sudo ip netns exec {cl} curl http://{WEB_V4}/                 # demo/web, answers pod-1 or pod-2
  sudo ip netns exec {cl} curl -g 'http://[{WEB_V6}]/'     # the same over IPv6
  sudo ip netns exec {cl} curl http://{STICKY_V4}/                 # demo/sticky: always the same pod
  sudo ip netns exec {cl} curl -m 2 http://{EMPTY_V4}/          # demo/empty: refused at once
  echo hi | sudo ip netns exec {cl} socat -t1 - UDP:{DNS_ECHO_V4}:53  # demo/dns-echo (UDP)
  echo hi | sudo ip netns exec {cl} socat -t1 - 'UDP6:[{DNS_ECHO_V6}]:53'
  sudo ip netns exec {cl} dig +tries=1 +timeout=1 @{DNS_ECHO_V4} example.org  # dig sends a DNS query;
                                        # the echo server returns it prefixed, so dig reports garbage
  sudo ip netns exec {cl} ping -c3 {WEB_V4}                       # answered by the gateway
  sudo ip netns exec {gw} ip route                                # routes via cw0
  sudo ip netns exec {cl} curl http://{pod1}:8080/            # straight to a pod, no gateway

Names (the gateway's DNS server, {dns}):
  sudo ip netns exec {cl} dig @{dns_ip} web.demo.svc.cluster.local A      # the ClusterIP
  sudo ip netns exec {cl} dig @{dns_ip} +tcp web.demo.svc.cluster.local AAAA
  sudo ip netns exec {cl} dig @{dns_ip} _http._tcp.web.demo.svc.cluster.local SRV
  sudo ip netns exec {cl} dig @{dns_ip} db.demo.svc.cluster.local         # headless: the pods
  sudo ip netns exec {cl} dig @{dns_ip} db-0.db.demo.svc.cluster.local    # a StatefulSet pod
  sudo ip netns exec {cl} dig @{dns_ip} -x {WEB_V4}                        # PTR
  sudo ip netns exec {cl} curl --resolve web.demo.svc.cluster.local:80:{WEB_V4} http://web.demo.svc.cluster.local/
{missing}
Ctrl-C stops everything and removes the namespaces.
",
        pods = pods.join(" "),
        snap = snapshot.display(),
        pod1 = topo.pod_ip(1, false),
        dns = LAB_DNS,
        dns_ip = LAB_DNS.split(':').next().unwrap_or(LAB_DNS),
        missing = missing_note(&missing_tools(std::env::var_os("PATH").as_deref())),
    );
}

/// A line per missing program, naming its package (empty when all are there).
fn missing_note(missing: &[(&str, &str)]) -> String {
    missing
        .iter()
        .map(|(tool, pkg)| {
            format!("  note: `{tool}` is not installed here: sudo apt-get install {pkg}\n")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_snapshot_is_a_kubernetes_list() {
        let pods = [
            (
                Ipv4Addr::new(10, 244, 1, 10),
                "fd00:10:244:1::a".parse().unwrap(),
            ),
            (
                Ipv4Addr::new(10, 244, 2, 10),
                "fd00:10:244:2::a".parse().unwrap(),
            ),
        ];
        let text = demo_snapshot(&pods);
        let v: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(v["kind"], "List");
        let items = v["items"].as_array().unwrap();
        let web = items
            .iter()
            .find(|i| i["kind"] == "Service" && i["metadata"]["name"] == "web")
            .unwrap();
        assert_eq!(
            web["spec"]["clusterIPs"],
            json!(["10.96.0.10", "fd00:10:96::10"])
        );
        assert_eq!(web["spec"]["ports"][0]["targetPort"], "http");
        let web_v6 = items
            .iter()
            .find(|i| i["metadata"]["name"] == "web-v6")
            .unwrap();
        assert_eq!(web_v6["addressType"], "IPv6");
        assert_eq!(web_v6["endpoints"][1]["addresses"][0], "fd00:10:244:2::a");
        assert_eq!(
            web_v6["metadata"]["labels"]["kubernetes.io/service-name"],
            "web"
        );
        let sticky = items
            .iter()
            .find(|i| i["kind"] == "Service" && i["metadata"]["name"] == "sticky")
            .unwrap();
        assert_eq!(sticky["spec"]["sessionAffinity"], "ClientIP");
        let empty = items
            .iter()
            .find(|i| i["metadata"]["name"] == "empty-v4")
            .unwrap();
        assert!(empty["endpoints"].is_null());
        // The headless demo Service: db-0 and db-1, by hostname, on the pods.
        let db = items
            .iter()
            .find(|i| i["metadata"]["name"] == "db-v4")
            .unwrap();
        assert_eq!(db["endpoints"][1]["hostname"], "db-1");
        assert_eq!(db["endpoints"][1]["addresses"][0], "10.244.2.10");
        let objs = crate::cluster::parse_objects("lab.yaml", &text).unwrap();
        let (table, errors) = crate::cluster::build_table(1, &objs, &Default::default());
        assert!(errors.is_empty(), "{errors:?}");
        let db = table.names.service("demo", "db").expect("db has names");
        assert_eq!(db.endpoints()[0].label, "db-0");
    }

    #[test]
    fn missing_tools_name_their_packages() {
        let dir = tempfile::tempdir().unwrap();
        for tool in ["curl", "ping", "ip"] {
            std::fs::write(dir.path().join(tool), "").unwrap();
        }
        let missing = missing_tools(Some(dir.path().as_os_str()));
        assert_eq!(missing, [("socat", "socat"), ("dig", "bind9-dnsutils")]);
        assert!(missing_note(&missing).contains("apt-get install bind9-dnsutils"));
        assert_eq!(missing_tools(None).len(), LAB_TOOLS.len());
        assert_eq!(missing_note(&[]), "");
    }
}
