//! Command-line flags and their validation. Everything here is checked before the gateway
//! touches the host (no device, no route, no sysctl until the configuration is good).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::dataplane::nat::NatConfig;

/// Descriptors kept back for everything that is not a proxied flow (listeners, netlink,
/// the file watcher, logs, the status server).
const RESERVED_FDS: u64 = 256;

/// One pooled splice pipe (two descriptors) per this many descriptors of the budget, up to
/// `splice::MAX_POOL_PIPES`: at RLIMIT_NOFILE 20,000 that is 256 pipes (512 descriptors),
/// which leaves 8,382 TCP flows.
const FDS_PER_PIPE: u64 = 64;

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Read Services and EndpointSlices from this file (YAML or JSON, multi-document or a
    /// `kind: List`, as `kubectl get svc,endpointslices -A -o yaml` writes it); reloaded
    /// when it changes. Without it, the gateway watches the cluster's API server.
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,

    /// Kubeconfig file (only this one). Default as kubectl: KUBECONFIG (several files),
    /// ~/.kube/config, then the in-cluster service account.
    #[arg(long, value_name = "FILE", conflicts_with = "from_file")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use instead of the current one.
    #[arg(long, value_name = "NAME", conflicts_with = "from_file")]
    pub context: Option<String>,

    /// Server-side timeout of each watch; a watch silent for this long plus 5 s is taken
    /// as stalled and re-established.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub watch_timeout: Duration,

    /// When the cluster does not serve `networking.k8s.io/v1` ServiceCIDR (404) or the
    /// gateway may not read it (403), ask again this often: a cluster upgraded to serve it,
    /// or RBAC granted later, is picked up without a restart.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION", conflicts_with = "from_file")]
    pub service_cidr_recheck: Duration,

    /// Expose only Services in this namespace (repeatable; default: all namespaces).
    #[arg(long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,

    /// Never expose Services in this namespace (repeatable).
    #[arg(long = "exclude-namespace", value_name = "NS")]
    pub exclude_namespaces: Vec<String>,

    /// Expose only Services whose labels match this selector (kubectl syntax: `a=b`,
    /// `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, comma-separated).
    #[arg(long, value_name = "SELECTOR", value_parser = crate::cluster::policy::LabelSelector::parse)]
    pub service_selector: Option<crate::cluster::policy::LabelSelector>,

    /// Expose Services that carry no `clusterway.io/expose` annotation. With
    /// `--expose-by-default=false` only Services annotated `clusterway.io/expose: "true"`
    /// are exposed; `"false"` always opts a Service out.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub expose_by_default: bool,

    /// Only clients in this CIDR may open flows to any Service (repeatable; default: any).
    /// A Service's `clusterway.io/allow-sources` annotation narrows it further. Others get
    /// a TCP RST or ICMP administratively prohibited.
    #[arg(long = "allow-source", value_name = "CIDR", value_parser = parse_cidr)]
    pub allow_sources: Vec<IpNet>,

    /// A Service CIDR to route into the gateway (repeatable, IPv4 and IPv6). Without any,
    /// one host route per exposed ClusterIP is installed and kept in step with the table.
    #[arg(long = "service-cidr", value_name = "CIDR", value_parser = parse_cidr)]
    pub service_cidrs: Vec<IpNet>,

    /// Name of the TUN device.
    #[arg(long, default_value = "cw0", value_parser = parse_ifname)]
    pub tun_name: String,

    /// Open the TUN device without offloads (no virtio-net header, no checksum or
    /// segmentation offload), for kernels that refuse them. Much slower for bulk transfer.
    #[arg(long, env = "CLUSTERWAY_NO_OFFLOAD", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_offload: bool,

    /// TUN queues, each read by a dataplane thread of its own (1 to 16). Default: half the
    /// cores (at least one), the proxy's runtime getting the other cores; with
    /// `--proxy-on-workers`, all cores but one (at least one).
    #[arg(long, env = "CLUSTERWAY_QUEUES", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=16))]
    pub queues: Option<u16>,

    /// Run each flow's proxy on the dataplane thread that reads its packets, instead of on
    /// a runtime of its own (the default). A packet and the socket it wakes are then handled
    /// by one thread: about a quarter less CPU per Gbit/s and a shorter round trip, but one
    /// thread's share of the CPU for connection set-up, which makes new connections about a
    /// fifth slower where load shares the gateway's cores (see the README's performance
    /// section).
    #[arg(long, env = "CLUSTERWAY_PROXY_ON_WORKERS", value_parser = clap::builder::BoolishValueParser::new())]
    pub proxy_on_workers: bool,

    /// After a burst of packets, a dataplane thread keeps reading its queue this long
    /// before it sleeps (e.g. 50us; 0 turns it off), yielding the core to any other runnable
    /// thread in between: the reply to what it just forwarded then skips a thread wake-up
    /// (round trips about 40 % shorter on an idle 2-core VM), for CPU nobody else wanted.
    #[arg(long, env = "CLUSTERWAY_BUSY_POLL", default_value = "50us", value_parser = parse_busy_poll, value_name = "DURATION")]
    pub busy_poll: Duration,

    /// Inner IPv4 prefix on the TUN device: the listener takes its first address, virtual
    /// client addresses the following ones. Must not overlap any routed network.
    #[arg(long, default_value = "198.18.0.0/16", value_name = "CIDR")]
    pub inner_v4: Ipv4Net,

    /// Inner IPv6 prefix on the TUN device (as --inner-v4).
    #[arg(long, default_value = "fdc7:7779::/64", value_name = "CIDR")]
    pub inner_v6: Ipv6Net,

    /// Virtual client addresses per family (each gives 64,512 NAT ports).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub virtual_addrs: u32,

    /// This gateway's name: Services labelled `service.kubernetes.io/service-proxy-name`
    /// are exposed only when the label has this value.
    #[arg(long, value_name = "NAME")]
    pub proxy_name: Option<String>,

    /// Most concurrent proxied TCP connections (default: from RLIMIT_NOFILE, two
    /// descriptors each).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tcp_flows: Option<u64>,

    /// Most concurrent UDP flows proxied in user space (default: from RLIMIT_NOFILE, one
    /// descriptor each). With `--dataplane offload` the kernel's conntrack table bounds UDP
    /// flows; this bounds only those the kernel path cannot carry.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_udp_flows: Option<u64>,

    /// A UDP flow idle this long in both directions ends (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub udp_idle_timeout: Duration,

    /// Address of the status page, JSON API, `/metrics`, `/healthz` and `/readyz`.
    /// Loopback by default; a non-loopback address without --status-token is allowed but
    /// logged as a warning.
    #[arg(long, default_value = "127.0.0.1:9310", value_name = "ADDR")]
    pub status_addr: std::net::SocketAddr,

    /// Bearer token required for the status page, the API and `/metrics` (not for
    /// `/healthz` and `/readyz`).
    #[arg(
        long,
        env = "CLUSTERWAY_STATUS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub status_token: Option<String>,

    /// `/readyz` fails once the table has been stale (API server unreachable, broken file)
    /// for this long; forwarding goes on with the last good table either way.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub ready_max_stale: Duration,

    /// The DNS server for the cluster zone (`--dns-listen`, `--dns-zone`, `--dns-ttl`,
    /// `--dns-forward`; see `crate::dns`).
    #[command(flatten)]
    pub dns: crate::dns::DnsArgs,

    /// A pod CIDR to route into the gateway too (repeatable), announced like the Service
    /// CIDRs: pods that back an exposed headless Service (StatefulSets) are reached on
    /// their ports, any other address in it is refused (TCP RST, ICMP unreachable).
    #[arg(long = "pod-cidr", value_name = "CIDR", value_parser = parse_cidr)]
    pub pod_cidrs: Vec<IpNet>,
    // --- Advertising and the fleet (src/host/announce.rs) ---
    /// Routing table of the gateway's routes (protocol 75): `main`, or a table of their own
    /// (e.g. 100) for a routing daemon that imports it (FRR's `ip import-table` also copies
    /// them into the main table). Traffic is forwarded by what the main table (or your
    /// policy rules) say, so with another table something must bring them there.
    #[arg(long, default_value = "main", value_parser = crate::host::announce::parse_route_table, value_name = "TABLE")]
    pub route_table: u32,

    /// What the routes announce: `aggregated` (the Service CIDRs) or `per-service` (a host
    /// route per ClusterIP with at least one usable endpoint, withdrawn when it has none).
    #[arg(long, value_enum, default_value = "aggregated", value_name = "MODE")]
    pub announce: crate::host::announce::AnnounceMode,

    /// On SIGTERM, withdraw the routes, answer `/readyz` with 503 `draining` and keep
    /// forwarding this long before stopping (0: stop at once). A second SIGTERM or SIGINT
    /// stops at once.
    #[arg(long, env = "CLUSTERWAY_DRAIN_TIMEOUT", default_value = "5s", value_parser = crate::host::announce::parse_drain_timeout, value_name = "DURATION")]
    pub drain_timeout: Duration,
    /// Which dataplane carries TCP and UDP flows. `offload`: the gateway decides each flow on its
    /// first packet and hands it to the kernel's connection tracking with the NAT decided
    /// (kernel-DNAT speed, no descriptor per flow, flows outlive the process); falls back
    /// to `proxy`, saying why, where the kernel cannot. `proxy`: the gateway's kernel
    /// terminates each connection and a userspace proxy dials the endpoint (retries the next
    /// endpoint on a failed dial).
    #[arg(long, env = "CLUSTERWAY_DATAPLANE", value_enum, default_value_t = Dataplane::Offload)]
    pub dataplane: Dataplane,
}

/// `--dataplane`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataplane {
    Offload,
    Proxy,
}

impl Dataplane {
    pub fn label(self) -> &'static str {
        match self {
            Dataplane::Offload => "offload",
            Dataplane::Proxy => "proxy",
        }
    }
}

/// Limits derived from the descriptor limit and the flags, shown at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub nofile: u64,
    pub tcp_flows: u64,
    pub udp_flows: u64,
    /// Pipes in the splice pool (two descriptors each).
    pub pipes: u64,
}

/// Usable cores (1 when unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl RunArgs {
    /// TUN queues and dataplane threads: `--queues`, else half the cores (all but one with
    /// `--proxy-on-workers`), at least one.
    pub fn queue_count(&self) -> usize {
        let default = if self.proxy_on_workers {
            cores().saturating_sub(1)
        } else {
            cores() / 2
        };
        self.queues.map_or(default.max(1), usize::from)
    }

    /// Threads of the shared async runtime: the cores the dataplane threads leave (at least
    /// one) when it runs the proxy, one when the workers do (then it only serves the status
    /// page and the control plane).
    pub fn runtime_threads(&self) -> usize {
        if self.proxy_on_workers {
            1
        } else {
            cores().saturating_sub(self.queue_count()).max(1)
        }
    }

    /// Where the proxy runs, as the start-up log says it.
    pub fn proxy_threads(&self) -> &'static str {
        if self.proxy_on_workers {
            "workers"
        } else {
            "runtime"
        }
    }

    /// The exposure policy the flags describe.
    pub fn policy(&self) -> crate::cluster::policy::Policy {
        crate::cluster::policy::Policy {
            namespaces: self.namespaces.iter().cloned().collect(),
            exclude_namespaces: self.exclude_namespaces.iter().cloned().collect(),
            selector: self.service_selector.clone(),
            expose_by_default: self.expose_by_default,
            allow_sources: (!self.allow_sources.is_empty()).then(|| self.allow_sources.clone()),
        }
    }

    /// How the Kubernetes source connects.
    pub fn kube_options(&self) -> crate::cluster::kube::KubeOptions {
        crate::cluster::kube::KubeOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            watch_timeout: self.watch_timeout,
            service_cidr_recheck: self.service_cidr_recheck,
            ..Default::default()
        }
    }

    /// Check what clap cannot: prefixes that overlap, sizes that do not fit.
    pub fn validate(&self) -> Result<(), String> {
        let mut nat = NatConfig::new(self.inner_v4, self.inner_v6, 1);
        nat.virtual_addrs = self.virtual_addrs;
        nat.validate()?;
        let inner = [IpNet::V4(self.inner_v4), IpNet::V6(self.inner_v6)];
        for cidr in &self.service_cidrs {
            for i in &inner {
                if cidr.contains(i) || i.contains(cidr) {
                    return Err(format!(
                        "--service-cidr {cidr} overlaps the inner prefix {i}"
                    ));
                }
            }
        }
        for cidr in &self.pod_cidrs {
            for i in &inner {
                if cidr.contains(i) || i.contains(cidr) {
                    return Err(format!("--pod-cidr {cidr} overlaps the inner prefix {i}"));
                }
            }
        }
        self.dns.validate()
    }

    /// Table sizes from `RLIMIT_NOFILE` unless given: a TCP flow holds two descriptors
    /// (client and endpoint socket), a UDP flow one, a pooled splice pipe two. UDP gets an
    /// eighth by default. The pipe pool only speeds bytes up (without pipes they are
    /// copied), so with flow counts given it takes what they leave, up to its share.
    pub fn limits(&self, nofile: u64) -> Result<Limits, String> {
        let budget = nofile.saturating_sub(RESERVED_FDS);
        let pipes = (budget / FDS_PER_PIPE).min(crate::dataplane::splice::MAX_POOL_PIPES);
        let udp = self.max_udp_flows.unwrap_or((budget / 8).max(1));
        let tcp = self
            .max_tcp_flows
            .unwrap_or((budget.saturating_sub(udp + pipes * 2) / 2).max(1));
        let need = tcp * 2 + udp + RESERVED_FDS;
        if need > nofile {
            return Err(format!(
                "{tcp} TCP flows (2 descriptors each) and {udp} UDP flows need {need} open files, \
                 but RLIMIT_NOFILE is {nofile}: lower --max-tcp-flows/--max-udp-flows or raise the limit"
            ));
        }
        Ok(Limits {
            nofile,
            tcp_flows: tcp,
            udp_flows: udp,
            pipes: pipes.min((nofile - need) / 2),
        })
    }
}

/// The soft descriptor limit, raised to the hard limit first when allowed.
pub fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("`{s}` is not a CIDR (like 10.96.0.0/12 or fd00:10:96::/112)"))?;
    if net.trunc() != net {
        return Err(format!(
            "`{s}` has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

pub fn parse_ifname(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!("interface name `{s}` must be 1 to 15 characters"));
    }
    if s == "." || s == ".." || s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(format!(
            "interface name `{s}` may not contain '/', ':' or spaces"
        ));
    }
    Ok(s.to_string())
}

/// `30s`, `2m`, `1h`, `500ms`, or a number of seconds.
/// `--busy-poll`: `0`, or microseconds (`50us`) or milliseconds (`1ms`), at most 10 ms.
pub fn parse_busy_poll(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("`{s}` is not a busy-poll time (like 50us, 1ms, or 0 for none)");
    let d = if let Some(n) = s.strip_suffix("us") {
        Duration::from_micros(n.parse().map_err(|_| bad())?)
    } else if let Some(n) = s.strip_suffix("ms") {
        Duration::from_millis(n.parse().map_err(|_| bad())?)
    } else {
        return Err(bad());
    };
    if d > Duration::from_millis(10) {
        return Err(format!("`{s}` is too long a busy-poll time (at most 10ms)"));
    }
    Ok(d)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (like 30s, 2m, 500ms)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => {
            return Err(format!(
                "`{s}` has an unknown unit `{unit}` (use ms, s, m or h)"
            ))
        }
    };
    if d.is_zero() {
        return Err("a duration must be more than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod busy_poll_tests {
    use super::*;

    #[test]
    fn busy_poll_times() {
        assert_eq!(parse_busy_poll("0"), Ok(Duration::ZERO));
        assert_eq!(parse_busy_poll("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_busy_poll("2ms"), Ok(Duration::from_millis(2)));
        assert!(parse_busy_poll("50").unwrap_err().contains("like 50us"));
        assert!(parse_busy_poll("xus").is_err());
        assert!(parse_busy_poll("11ms")
            .unwrap_err()
            .contains("at most 10ms"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(extra: &[&str]) -> Result<RunArgs, String> {
        let mut v = vec!["t", "--from-file", "x.yaml"];
        v.extend_from_slice(extra);
        T::try_parse_from(v)
            .map(|t| t.run)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        assert!(args(&["--service-cidr", "10.96.0.1/12"])
            .unwrap_err()
            .contains("host bits"));
        assert!(args(&["--service-cidr", "banana"])
            .unwrap_err()
            .contains("not a CIDR"));
        assert!(args(&["--tun-name", "a-very-long-name-indeed"])
            .unwrap_err()
            .contains("1 to 15"));
        assert!(args(&["--udp-idle-timeout", "5x"])
            .unwrap_err()
            .contains("unknown unit"));
        assert!(args(&["--max-tcp-flows", "0"]).is_err());
        let e = args(&["--route-table", "255"]).unwrap_err();
        assert!(e.contains("--route-table") && e.contains("local"), "{e}");
        assert!(args(&["--announce", "everything"])
            .unwrap_err()
            .contains("--announce"));
        assert!(args(&["--drain-timeout", "later"])
            .unwrap_err()
            .contains("--drain-timeout"));
        let a = args(&["--route-table", "100", "--announce", "per-service"]).unwrap();
        assert_eq!(a.route_table, 100);
        assert_eq!(a.drain_timeout, Duration::from_secs(5));
        let a = args(&["--service-cidr", "198.18.0.0/15"]).unwrap();
        assert!(a.validate().unwrap_err().contains("overlaps"));
    }

    #[test]
    fn limits_follow_the_descriptor_limit() {
        let a = args(&[]).unwrap();
        let l = a.limits(20_000).unwrap();
        assert_eq!(l.udp_flows, (20_000 - 256) / 8);
        assert!(l.tcp_flows >= 8_000, "{l:?}");
        assert_eq!(l.pipes, 256);
        assert!(l.tcp_flows * 2 + l.udp_flows + l.pipes * 2 + 256 <= 20_000);
        // Flow counts given: the pool takes what they leave.
        let a = args(&["--max-tcp-flows", "8600"]).unwrap();
        let l = a.limits(20_000).unwrap();
        assert_eq!(l.pipes, (20_000 - 8600 * 2 - l.udp_flows - 256) / 2);
        let a = args(&["--max-tcp-flows", "10000"]).unwrap();
        assert!(a.limits(20_000).unwrap_err().contains("RLIMIT_NOFILE"));
    }

    #[test]
    fn queues_and_runtime_threads_follow_where_the_proxy_runs() {
        let n = cores();
        let a = args(&[]).unwrap();
        assert_eq!(a.proxy_threads(), "runtime");
        assert_eq!(a.queue_count(), (n / 2).max(1));
        assert_eq!(
            a.runtime_threads(),
            n.saturating_sub(a.queue_count()).max(1)
        );
        let a = args(&["--proxy-on-workers"]).unwrap();
        assert_eq!(a.proxy_threads(), "workers");
        assert_eq!(a.queue_count(), n.saturating_sub(1).max(1));
        assert_eq!(
            a.runtime_threads(),
            1,
            "the shared runtime only serves the control plane"
        );
        let a = args(&["--proxy-on-workers", "--queues", "3"]).unwrap();
        assert_eq!((a.queue_count(), a.runtime_threads()), (3, 1));
        assert!(args(&["--proxy-on-workers=maybe"]).is_err());
        assert!(args(&["--queues", "0"]).unwrap_err().contains("1..=16"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("0s").is_err());
    }
}
