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
//! - `report`: the result types and their rendering.
//!
//! Must not change the host: the only thing created is a TUN device under a temporary name,
//! removed at once, and a probe conntrack entry, deleted at once; sysctls are read, never
//! written.

pub mod api;
pub mod dataplane;
pub mod file;
pub mod host;
#[cfg(test)]
mod rbac;
pub mod reach;
pub mod report;

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

    /// The dataplane `run` would be asked for: say whether it can be used here.
    #[arg(long, env = "CLUSTERWAY_DATAPLANE", value_enum, default_value_t = crate::config::Dataplane::Offload)]
    pub dataplane: crate::config::Dataplane,
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
        return Err(Check::skip(reach::NAME, "no kubeconfig"));
    };

    let version = api::version(&client, args.timeout).await;
    let reachable = version.ok;
    out.push(version);
    if !reachable {
        for needed in &api::NEEDED {
            out.push(Check::skip(needed.check_name(), "API not reachable"));
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
