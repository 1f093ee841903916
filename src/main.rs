//! The `clusterway` binary: subcommands over the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use clusterway::config::RunArgs;
use clusterway::lab::backend::BackendArgs;
use clusterway::lab::LabArgs;

/// Makes Kubernetes Service ClusterIPs reachable from outside the cluster.
#[derive(Parser)]
#[command(name = "clusterway", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once; the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground.
    Run(RunArgs),
    /// Preflight: kubeconfig, API, permissions, TUN, forwarding, pod network (✔/✘ + fixes).
    Check(clusterway::check::CheckArgs),
    /// Build a demo topology in network namespaces and run the gateway in it (as root).
    Lab(LabArgs),
    /// A demo pod: HTTP and UDP echo servers (used by the lab and the tests).
    #[command(hide = true)]
    DemoBackend(BackendArgs),
    /// Print the static routes that send Service traffic to this gateway (Linux, Cisco IOS,
    /// Junos, FRR, BIRD).
    Routes(clusterway::routes::RoutesArgs),
    /// GET the status server's /readyz (or URL); exit 0 on 200. The container health check.
    Probe(clusterway::probe::ProbeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `check` reports every failure itself; library logs would only repeat them.
    let default_filter = match cli.command {
        Command::Check(_) => "off",
        // kube-client logs every failed request at ERROR (a loop during an outage); the
        // Kubernetes source reports outages itself, once.
        _ => "info,kube_client=off",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Run(args) = &cli.command {
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            // The dataplane workers have cores of their own (dedicated threads); the proxy
            // tasks get the others. More runtime threads than that only add context
            // switches (on 2 cores: +25 % keep-alive requests/s with one runtime thread
            // instead of two).
            builder.worker_threads(args.runtime_threads());
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clusterway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => clusterway::gateway::run(args).await,
            Command::Check(args) => clusterway::check::run(args).await,
            Command::Lab(args) => clusterway::lab::run(args).await,
            Command::DemoBackend(args) => clusterway::lab::backend::serve(args).await,
            Command::Routes(args) => clusterway::routes::run(args),
            Command::Probe(args) => clusterway::probe::run(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clusterway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
