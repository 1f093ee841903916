//! `clusterway check`: the preflight a platform engineer runs before anything else.
//!
//! Each check is a small function returning a [`Check`] (✔ ok, ! warning, ✘ error, - skipped,
//! with the fix for anything not ok); [`checks`] runs them in order and [`run`] prints the
//! [`Report`] for people or as JSON. The exit status is non-zero when a check blocks running.
//!
//! - `api`: kubeconfig, API server version, permissions (SelfSubjectAccessReview), and the
//!   endpoints to try;
//! - `host`: TUN device creation, forwarding sysctls;
//! - `dataplane`: flow offload or the proxy, and why;
//! - `reach`: TCP connections to a sample of ready endpoints (is the pod network routed?);
//! - `file`: with `--from-file`, the snapshot file instead of the API;
//! - `routed`: with `--service-cidr`, whether every exposed ClusterIP is inside the ranges;
//! - `daemon`: whether a BIRD or FRR on this host announces the gateway's routes (a warning,
//!   never an error);
//! - `report`: the result types and their rendering.
//!
//! Must not change the host: the only thing created is a TUN device under a temporary name,
//! removed at once, and a probe conntrack entry, deleted at once; sysctls are read, never
//! written.

pub mod api;
pub mod daemon;
pub mod dataplane;
pub mod file;
pub mod host;
#[cfg(test)]
mod rbac;
pub mod reach;
pub mod report;
pub mod routed;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use crate::cluster::build::BuildOptions;
use crate::config::parse_duration;
pub use report::{Check, PortSummary, Report, Severity};

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Kubeconfig file (default as kubectl: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Context of the kubeconfig to use (default: its current-context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,

    /// Check a snapshot file (as `run --from-file` reads it) instead of a cluster; the API
    /// checks are skipped.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kubeconfig", "context"])]
    pub from_file: Option<PathBuf>,

    /// The temporary TUN device is named PREFIX plus 7 hex digits.
    #[arg(long, default_value = "cwchk", value_parser = host::parse_tun_prefix)]
    pub tun_name_prefix: String,

    /// Deadline of each request to the API server (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Deadline of each TCP connection to a sampled endpoint.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// With --from-file: this gateway's `service-proxy-name`, as `run --proxy-name`.
    #[arg(long, value_name = "NAME")]
    pub proxy_name: Option<String>,

    /// Print the report as JSON (each check: name, ok, severity, detail, fix).
    #[arg(long)]
    pub json: bool,

    /// A Service CIDR the gateway will route (repeatable, as `run --service-cidr`): every
    /// exposed ClusterIP is checked to be inside one of its family.
    #[arg(long = "service-cidr", value_name = "CIDR", value_parser = crate::config::parse_cidr)]
    pub service_cidrs: Vec<ipnet::IpNet>,

    // --- The routing daemon (src/check/daemon.rs) ---
    /// BIRD's control socket, to ask whether it has the gateway's routes (default
    /// /run/bird/bird.ctl). The check is listed when a BIRD or FRR socket is found, or when
    /// this or --frr-vty-dir is given.
    #[arg(long, value_name = "PATH")]
    pub bird_socket: Option<PathBuf>,

    /// FRR's vty socket directory (vtysh --vty_socket; default /run/frr), to ask whether
    /// BGP has the gateway's routes.
    #[arg(long, value_name = "DIR")]
    pub frr_vty_dir: Option<PathBuf>,

    /// The dataplane `run` would be asked for: say whether it can be used here.
    #[arg(long, env = "CLUSTERWAY_DATAPLANE", value_enum, default_value_t = crate::config::Dataplane::Offload)]
    pub dataplane: crate::config::Dataplane,
}

/// Whether this host can install IPv6 routes (as the gateway decides at start).
fn ipv6_enabled() -> bool {
    matches!(
        crate::host::sysctl::read("net.ipv6.conf.all.disable_ipv6")
            .as_deref()
            .map(str::trim),
        Ok("0")
    )
}

/// The not-routed check on the cluster's Services (only with `--service-cidr`).
async fn routed_in_cluster(args: &CheckArgs, client: &kube::Client) -> Check {
    match api::services(client, args.timeout).await {
        Ok(services) => {
            let objs = crate::cluster::Objects {
                services,
                ..Default::default()
            };
            let opts = BuildOptions {
                proxy_name: args.proxy_name.clone(),
            };
            let (table, _) = crate::cluster::build_table(1, &objs, &opts);
            routed::judge(&table, &args.service_cidrs, ipv6_enabled())
        }
        Err(f) => Check::warn(
            routed::NAME,
            format!("cannot list Services: {f}"),
            "grant list on services (docker/rbac.yaml) and run the check again",
        ),
    }
}

/// Runs every check and returns the report (never fails: failures are checks).
pub async fn checks(args: &CheckArgs) -> Report {
    let mut out = Vec::new();
    let mut services = None;
    // Endpoints for the reachability check, or why it cannot run.
    let targets: Result<Vec<reach::Target>, Check>;

    if let Some(path) = &args.from_file {
        let opts = BuildOptions {
            proxy_name: args.proxy_name.clone(),
        };
        let (check, table) = file::check_file(path, &opts);
        out.push(check);
        if !args.service_cidrs.is_empty() {
            out.push(match &table {
                Some(t) => routed::judge(t, &args.service_cidrs, ipv6_enabled()),
                None => Check::skip(routed::NAME, "the file did not load"),
            });
        }
        targets = match table {
            Some(table) => {
                services = Some(file::ports(&table));
                Ok(file::targets(&table))
            }
            None => Err(Check::skip(reach::NAME, "the file did not load")),
        };
    } else {
        targets = cluster_checks(args, &mut out).await;
    }

    out.push(host::tun(&args.tun_name_prefix));
    out.push(host::forwarding());
    out.push(dataplane::check(args.dataplane));

    let asked = args.bird_socket.is_some() || args.frr_vty_dir.is_some();
    let bird = (args.bird_socket.clone()).unwrap_or_else(|| "/run/bird/bird.ctl".into());
    let frr = (args.frr_vty_dir.clone()).unwrap_or_else(|| "/run/frr".into());
    if asked || bird.exists() || frr.join("bgpd.vty").exists() {
        out.push(
            tokio::task::spawn_blocking(move || daemon::check(&bird, &frr))
                .await
                .unwrap_or_else(|e| {
                    Check::warn(
                        daemon::NAME,
                        format!("the check stopped: {e}"),
                        "run it again",
                    )
                }),
        );
    }
    out.push(match targets {
        Ok(all) => {
            let sample = reach::pick(&all, reach::SAMPLE);
            let probes = reach::probe_all(&sample, args.connect_timeout).await;
            reach::judge(&sample, &probes)
        }
        Err(skipped) => skipped,
    });
    Report::new(out, services)
}

/// The API checks, in order, each skipped when an earlier one it needs failed. Returns the
/// endpoints to try, or the reachability check's result when there are none to try.
async fn cluster_checks(
    args: &CheckArgs,
    out: &mut Vec<Check>,
) -> Result<Vec<reach::Target>, Check> {
    let (check, client) = api::load(
        args.kubeconfig.as_deref(),
        args.context.as_deref(),
        args.timeout,
    )
    .await;
    out.push(check);
    let Some(client) = client else {
        out.push(Check::skip(api::API, "no kubeconfig"));
        for needed in &api::NEEDED {
            out.push(Check::skip(needed.check_name(), "no kubeconfig"));
        }
        if !args.service_cidrs.is_empty() {
            out.push(Check::skip(routed::NAME, "no kubeconfig"));
        }
        return Err(Check::skip(reach::NAME, "no kubeconfig"));
    };

    let version = api::version(&client, args.timeout).await;
    let reachable = version.ok;
    out.push(version);
    if !reachable {
        for needed in &api::NEEDED {
            out.push(Check::skip(needed.check_name(), "API not reachable"));
        }
        if !args.service_cidrs.is_empty() {
            out.push(Check::skip(routed::NAME, "API not reachable"));
        }
        return Err(Check::skip(reach::NAME, "API not reachable"));
    }

    let permissions = futures::future::join_all(
        api::NEEDED
            .iter()
            .map(|n| api::permission(&client, n, args.timeout)),
    )
    .await;
    out.extend(permissions);
    if !args.service_cidrs.is_empty() {
        out.push(routed_in_cluster(args, &client).await);
    }

    match api::endpoint_targets(&client, args.timeout).await {
        Ok(targets) => Ok(targets),
        Err(f) if f.status() == Some(403) => Err(Check::skip(
            reach::NAME,
            "not allowed to list EndpointSlices (see above)",
        )),
        Err(f) if f.status() == Some(401) => Err(Check::skip(
            reach::NAME,
            "the server rejects the credentials (see above)",
        )),
        Err(f) => Err(Check::warn(
            reach::NAME,
            format!("cannot list EndpointSlices: {f}"),
            "run the check again; if it persists, see the API checks above",
        )),
    }
}

/// `clusterway check`: prints the report; an error (non-zero exit) when a check blocks.
pub async fn run(args: CheckArgs) -> Result<()> {
    let report = checks(&args).await;
    if args.json {
        println!("{}", report.to_json());
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", report.to_human(colour));
    }
    match report.blockers() {
        0 => Ok(()),
        1 => bail!("1 check failed"),
        n => bail!("{n} checks failed"),
    }
}
