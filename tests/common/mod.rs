//! Helpers for integration tests on real network namespaces (`mod common;`).
//!
//! Every helper works inside namespaces of a [`Topology`]; nothing changes the host namespace.
//! Guards (`Gateway`, `Backends`, the `Topology` itself) clean up on `Drop`, also when a test
//! panics. Tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN for `setns`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
pub use clusterway::lab::netns::Netns;
pub use clusterway::lab::topology::Topology;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_clusterway");

/// The gateway binary the tests start: [`BIN`], or `CW_TEST_GATEWAY_BIN` when set (for
/// benchmarks that compare two builds on the same scenarios, e.g. `bench/flood.sh`).
pub fn gateway_bin() -> String {
    std::env::var("CW_TEST_GATEWAY_BIN").unwrap_or_else(|_| BIN.to_owned())
}

/// Default timeout of network helpers.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Builds a topology with `pods` pods under a unique prefix, panicking with context on failure.
pub fn topology(pods: usize) -> Topology {
    match Topology::new(pods) {
        Ok(t) => t,
        Err(e) => panic!("building the test topology: {e:#}"),
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
/// False when this test run asks the gateway for a TUN device without offloads
/// (`CLUSTERWAY_NO_OFFLOAD` set to a true value, which the gateway reads itself).
pub fn offload_expected() -> bool {
    !matches!(
        std::env::var("CLUSTERWAY_NO_OFFLOAD").as_deref(),
        Ok("1" | "true" | "yes" | "on")
    )
}

/// The dataplane the gateways of this test run use unless a test passes `--dataplane`:
/// `CLUSTERWAY_DATAPLANE` (scripts/test.sh runs the dataplane suite with `offload`), else
/// `proxy`, which the tests of the proxy's own behaviour (its flow list and byte counters,
/// dial retries, descriptor bounds) were written for.
pub fn dataplane_under_test() -> String {
    std::env::var("CLUSTERWAY_DATAPLANE").unwrap_or_else(|_| "proxy".into())
}

/// Whether this run's gateways offload flows (see [`dataplane_under_test`]).
pub fn offload_under_test() -> bool {
    dataplane_under_test() == "offload"
}

pub fn wait_for(mut cond: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM to `child`, waits up to `grace`, then SIGKILLs it. Returns its exit status.
fn terminate(child: &mut Child, grace: Duration) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child, no memory effects.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()
}

/// `clusterway run --from-file SNAPSHOT ...` running in the topology's gateway namespace.
/// Its stderr (and stdout) go to a log file, printed when the guard is dropped during a panic
/// (or always with `CW_TEST_LOGS=1`). Dropping the guard stops the gateway.
pub struct Gateway {
    child: Option<Child>,
    dir: tempfile::TempDir,
    snapshot: PathBuf,
    log: PathBuf,
    ns: String,
    tun: String,
    status: Option<ExitStatus>,
}

impl Gateway {
    /// Writes `snapshot_text` to a file and starts the gateway on it with `extra_args`, then
    /// waits (up to 10 s) until its TUN device (`--tun-name`, default `cw0`) is up.
    ///
    /// # Panics
    /// If the gateway cannot be started, exits, or its TUN device does not come up; the
    /// message includes its log.
    pub fn start(topo: &Topology, snapshot_text: &str, extra_args: &[&str]) -> Gateway {
        Self::launch(topo, Some(snapshot_text), extra_args)
    }

    /// `clusterway run ARGS` (no `--from-file`: the caller gives the source, e.g.
    /// `--kubeconfig`), waiting for the TUN device as [`Gateway::start`] does.
    pub fn start_with_args(topo: &Topology, args: &[&str]) -> Gateway {
        Self::launch(topo, None, args)
    }

    fn launch(topo: &Topology, snapshot_text: Option<&str>, extra_args: &[&str]) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("clusterway-test-")
            .tempdir()
            .expect("creating a temporary directory");
        let snapshot = dir.path().join("snapshot.yaml");
        if let Some(text) = snapshot_text {
            std::fs::write(&snapshot, text).expect("writing the snapshot");
        }
        let log = dir.path().join("gateway.log");
        let log_file = std::fs::File::create(&log).expect("creating the gateway log");
        let log_out = log_file
            .try_clone()
            .expect("duplicating the log descriptor");
        let tun = extra_args
            .windows(2)
            .find(|w| w[0] == "--tun-name")
            .map_or("cw0", |w| w[1])
            .to_owned();

        let mut args: Vec<&str> = vec!["run"];
        let snap_str = snapshot.to_str().expect("temporary paths are UTF-8");
        if snapshot_text.is_some() {
            args.extend(["--from-file", snap_str]);
        }
        args.extend_from_slice(extra_args);
        let child = topo
            .gateway()
            .exec(gateway_bin(), &args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // One gateway, no routing daemon: SIGTERM stops at once unless a test asks for a
            // drain (tests/fleet.rs).
            .env(
                "CLUSTERWAY_DRAIN_TIMEOUT",
                std::env::var("CLUSTERWAY_DRAIN_TIMEOUT").unwrap_or_else(|_| "0".into()),
            )
            .env("CLUSTERWAY_DATAPLANE", dataplane_under_test())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_out))
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", gateway_bin()));
        let mut gw = Gateway {
            child: Some(child),
            dir,
            snapshot,
            log,
            ns: topo.gateway().name().to_owned(),
            tun,
            status: None,
        };
        let up = wait_for(
            || gw.has_exited() || gw.tun_is_up(),
            Duration::from_secs(10),
        );
        if gw.has_exited() {
            panic!(
                "the gateway exited during start ({:?}); log:\n{}",
                gw.status,
                gw.logs()
            );
        }
        if !up {
            panic!(
                "the gateway's {} did not come up in 10 s; log:\n{}",
                gw.tun,
                gw.logs()
            );
        }
        // The suite runs with offloads (the default) and again with CLUSTERWAY_NO_OFFLOAD=1
        // and/or CLUSTERWAY_QUEUES (scripts/test.sh): make sure the device really is in the
        // mode the run claims.
        let want = if offload_expected() {
            "offloads="
        } else {
            "TUN device created without offloads"
        };
        assert!(
            wait_for(|| gw.logged(want), Duration::from_secs(5)),
            "the gateway did not log {want:?}; log:\n{}",
            gw.logs()
        );
        // Likewise for the number of TUN queues (CLUSTERWAY_QUEUES, read by the gateway; a
        // `--queues` flag overrides it).
        if let Some(n) = std::env::var("CLUSTERWAY_QUEUES")
            .ok()
            .filter(|_| !extra_args.contains(&"--queues"))
        {
            let want = format!("queues={n} ");
            assert!(
                gw.logged(&want),
                "the gateway did not log {want:?}; log:\n{}",
                gw.logs()
            );
        }
        // And for the dataplane (CLUSTERWAY_DATAPLANE; a `--dataplane` flag overrides it).
        if !extra_args.contains(&"--dataplane") {
            let want = format!("dataplane: {}", dataplane_under_test());
            assert!(
                wait_for(|| gw.logged(&want), Duration::from_secs(5)),
                "the gateway did not log {want:?}; log:\n{}",
                gw.logs()
            );
        }
        // And for where the proxy runs (CLUSTERWAY_PROXY_ON_WORKERS, read by the gateway).
        if let Ok(v) = std::env::var("CLUSTERWAY_PROXY_ON_WORKERS") {
            let want = if v == "1" {
                "proxy=\"workers\""
            } else {
                "proxy=\"runtime\""
            };
            assert!(
                gw.logged(want),
                "the gateway did not log {want:?}; log:\n{}",
                gw.logs()
            );
        }
        gw
    }

    /// The snapshot file the gateway reads.
    pub fn snapshot_path(&self) -> &Path {
        &self.snapshot
    }

    /// The gateway's temporary directory (snapshot and log live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the snapshot atomically (write a sibling file, then rename over it), as
    /// Kubernetes does with mounted ConfigMaps.
    pub fn update_snapshot(&self, text: &str) {
        let tmp = self.dir.path().join(".snapshot.yaml.new");
        std::fs::write(&tmp, text).expect("writing the new snapshot");
        std::fs::rename(&tmp, &self.snapshot).expect("renaming the new snapshot");
    }

    /// Overwrites the snapshot in place (truncate + write), as an editor may do.
    pub fn write_snapshot_in_place(&self, text: &str) {
        std::fs::write(&self.snapshot, text).expect("writing the snapshot");
    }

    /// Everything the gateway has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the gateway's log contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs().contains(needle)
    }

    /// Whether the gateway process has exited (and records its status).
    pub fn has_exited(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                self.status = Some(status);
                return true;
            }
        }
        false
    }

    /// The gateway's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the TUN device exists and is administratively up.
    pub fn tun_is_up(&self) -> bool {
        Command::new("ip")
            .args(["-n", &self.ns, "-o", "link", "show", "dev", &self.tun])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| {
                let text = String::from_utf8_lossy(&o.stdout);
                o.status.success() && flags_of(&text).contains(&"UP")
            })
    }

    /// Whether the TUN device exists at all.
    pub fn tun_exists(&self) -> bool {
        Command::new("ip")
            .args(["-n", &self.ns, "link", "show", "dev", &self.tun])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Whether the gateway namespace routes `ip` via the TUN device.
    pub fn routes_via_tun(&self, ip: std::net::IpAddr) -> bool {
        Command::new("ip")
            .args(["-n", &self.ns, "route", "get", &ip.to_string()])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout).contains(&format!(" dev {} ", self.tun))
            })
    }

    /// Waits up to `timeout` for `ip` to be routed via the TUN device.
    pub fn wait_routed(&self, ip: std::net::IpAddr, timeout: Duration) -> bool {
        wait_for(|| self.routes_via_tun(ip), timeout)
    }

    /// Sends SIGTERM and waits (up to 10 s, then SIGKILL) for the gateway to exit.
    pub fn stop_sigterm(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends SIGINT and waits (up to 10 s, then SIGKILL) for the gateway to exit.
    pub fn stop_sigint(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGINT)
    }

    fn stop_with(&mut self, signal: libc::c_int) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let mut child = self.child.take().expect("the gateway is running");
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on our own child, no memory effects.
            unsafe { libc::kill(pid, signal) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    eprintln!("gateway did not exit within 10 s of signal {signal}; killing it");
                    let _ = child.kill();
                    break child.wait().expect("waiting for the gateway");
                }
            }
        };
        self.status = Some(status);
        status
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child, Duration::from_secs(5));
        }
        if std::thread::panicking() || std::env::var_os("CW_TEST_LOGS").is_some() {
            eprintln!(
                "----- gateway log ({}) -----\n{}----- end of gateway log -----",
                self.log.display(),
                self.logs()
            );
        }
    }
}

fn flags_of(link_line: &str) -> Vec<&str> {
    // `3: cw0: <POINTOPOINT,MULTICAST,NOARP,UP,LOWER_UP> mtu ...`
    link_line
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(flags, _)| flags.split(',').collect())
        .unwrap_or_default()
}

/// Demo backends (`clusterway demo-backend`) running in every pod namespace, as the lab runs
/// them: HTTP on 8080 and UDP echo on 5353, v4 and v6, named `pod-K`. Stopped on `Drop`.
pub struct Backends {
    children: Vec<Child>,
}

impl Backends {
    /// Stops all backends now.
    pub fn stop(&mut self) {
        for child in &mut self.children {
            let _ = terminate(child, Duration::from_secs(2));
        }
        self.children.clear();
    }

    /// Stops pod `k`'s backend (1-based), e.g. to test a dead endpoint.
    pub fn stop_pod(&mut self, k: usize) {
        if let Some(child) = self.children.get_mut(k - 1) {
            let _ = terminate(child, Duration::from_secs(2));
        }
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `clusterway demo-backend` in every pod of `topo` and waits until each answers
/// HTTP on its pod IP (v4 and v6).
///
/// # Panics
/// If a backend cannot be started or does not answer within 10 s.
pub fn start_backends(topo: &Topology) -> Backends {
    let mut backends = Backends {
        children: Vec::new(),
    };
    for k in 1..=topo.pod_count() {
        let child = topo
            .pod(k)
            .exec(BIN, clusterway::lab::backend_args(k))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the demo backend in pod {k}: {e}"));
        backends.children.push(child);
    }
    for (i, child) in backends.children.iter_mut().enumerate() {
        // A backend that cannot start (bad binary, port taken) exits at once.
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the demo backend in pod {} exited at start: {status}",
                i + 1
            );
        }
    }
    wait_backends_listening(topo);
    backends
}

/// Demo backends running as threads of the test process (in-process `backend::serve`), one
/// per pod, for tests that must not depend on the `demo-backend` subcommand. Stopped on
/// `Drop`.
pub struct InProcessBackends {
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<Result<Result<()>>>>,
}

impl Drop for InProcessBackends {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e)) | Err(e)) => eprintln!("in-process backend failed: {e:#}"),
                Err(_) => eprintln!("in-process backend panicked"),
            }
        }
    }
}

/// Starts [`clusterway::lab::backend::serve_until`] on a thread inside each pod namespace,
/// with the same addresses and names as [`start_backends`].
pub fn start_backends_in_process(topo: &Topology) -> InProcessBackends {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(clap::Subcommand)]
    enum Cmd {
        DemoBackend(clusterway::lab::backend::BackendArgs),
    }

    let mut out = InProcessBackends {
        stops: Vec::new(),
        threads: Vec::new(),
    };
    for k in 1..=topo.pod_count() {
        let argv = std::iter::once("test".to_owned()).chain(clusterway::lab::backend_args(k));
        let Cmd::DemoBackend(args) = Cli::parse_from(argv).cmd;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = topo
            .pod(k)
            .spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building a tokio runtime")?;
                rt.block_on(clusterway::lab::backend::serve_until(args, async {
                    let _ = rx.await;
                }))
            })
            .unwrap_or_else(|e| panic!("starting the in-process backend in pod {k}: {e:#}"));
        out.stops.push(tx);
        out.threads.push(thread);
    }
    wait_backends_listening(topo);
    out
}

fn wait_backends_listening(topo: &Topology) {
    for k in 1..=topo.pod_count() {
        for v6 in [false, true] {
            let addr = SocketAddr::new(topo.pod_ip(k, v6), clusterway::lab::BACKEND_HTTP_PORT);
            let pod = topo.pod(k);
            let ok = wait_for(
                || pod.run(|| TcpStream::connect_timeout(&addr, IO_TIMEOUT).is_ok()),
                Duration::from_secs(10),
            );
            assert!(ok, "the demo backend in pod {k} does not listen on {addr}");
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header lines as (name, value), names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` to `addr` over a new TCP connection opened inside `ns` (in-process, via
/// [`Netns::run`]), with `Connection: close`; reads the whole response.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    ns.try_run(|| http_get_here(addr, path, IO_TIMEOUT))?
        .with_context(|| format!("GET http://{addr}{path} from {}", ns.name()))
}

/// `GET /` to `addr` from inside `ns`; returns the body of a `200` answer (for a demo
/// backend: `pod-K\n`), an error for anything else.
pub fn tcp_get(ns: &Netns, addr: SocketAddr) -> Result<String> {
    let resp = http_get(ns, addr, "/")?;
    if resp.status != 200 {
        bail!(
            "GET http://{addr}/ answered {}: {}",
            resp.status,
            resp.text()
        );
    }
    Ok(resp.text())
}

/// HTTP GET on the calling thread's namespace (use inside [`Netns::run`]).
pub fn http_get_here(addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).context("connect")?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let host = match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .context("sending the request")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("reading the response")?;
    parse_response(&raw)
}

/// Parses one complete HTTP/1.x response with a Content-Length (or read to EOF).
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| {
            format!(
                "no complete response head in {} bytes: {:?}",
                raw.len(),
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            )
        })?;
    let head = std::str::from_utf8(&raw[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[head_end + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if body.len() < len {
            bail!("truncated body: {} of {len} bytes", body.len());
        }
        body.truncate(len);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Sends `payload` to `addr` over UDP from inside `ns` and returns the first answer (lossy
/// UTF-8); errors after [`IO_TIMEOUT`] without one.
pub fn udp_roundtrip(ns: &Netns, addr: SocketAddr, payload: &[u8]) -> Result<String> {
    ns.try_run(|| -> Result<String> {
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let s = UdpSocket::bind(bind).context("bind")?;
        s.connect(addr).context("connect")?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.send(payload).context("send")?;
        let mut buf = vec![0u8; 65536];
        let n = s.recv(&mut buf).context("no answer")?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })?
    .with_context(|| format!("UDP round trip to {addr} from {}", ns.name()))
}

/// Whether `addr` answers one ping from inside `ns` (`ping -c1 -W1`; needs iputils-ping).
pub fn ping(ns: &Netns, addr: std::net::IpAddr) -> Result<()> {
    let out = ns
        .exec("ping", ["-n", "-c1", "-W1", &addr.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running ping (apt-get install iputils-ping)")?;
    if !out.status.success() {
        bail!(
            "ping {addr} from {} failed: {}{}",
            ns.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Names of the existing network namespaces named `{prefix}-*`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    clusterway::lab::netns::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.strip_prefix(prefix).is_some_and(|r| r.starts_with('-')))
        .collect()
}

/// The value of the sample `series` in a Prometheus text exposition, 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// The gateway's `/metrics` text, read from its default status address (127.0.0.1:9310 in
/// the topology's gateway namespace); empty when it cannot be read.
pub fn gateway_metrics(topo: &Topology) -> String {
    let addr: SocketAddr = "127.0.0.1:9310".parse().expect("a socket address");
    http_get(topo.gateway(), addr, "/metrics").map_or_else(|_| String::new(), |r| r.text())
}

/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`; not in libc).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// A seccomp filter that refuses `socket(AF_NETLINK, _, NETLINK_NETFILTER)` with EPERM:
/// a kernel where ctnetlink is not available, as far as the process can tell.
#[cfg(target_arch = "x86_64")]
pub fn refuse_netfilter_netlink() -> std::io::Result<()> {
    use libc::{sock_filter, sock_fprog, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let ld = |k: u32| sock_filter {
        code: (BPF_LD | BPF_W | BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    // Equal: go on; else jump to the final ALLOW (`skip` instructions ahead).
    let jeq = |k: u32, skip: u8| sock_filter {
        code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
        jt: 0,
        jf: skip,
        k,
    };
    let ret = |k: u32| sock_filter {
        code: (BPF_RET | BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    // struct seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (low half first).
    let prog = [
        ld(4),
        jeq(AUDIT_ARCH_X86_64, 7),
        ld(0),
        jeq(libc::SYS_socket as u32, 5),
        ld(16),
        jeq(libc::AF_NETLINK as u32, 3),
        ld(32),
        jeq(libc::NETLINK_NETFILTER as u32, 1),
        ret(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        ret(libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut sock_filter,
    };
    // SAFETY: prctl with a filter program that lives across the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `clusterway lab` under `prefix` (its namespaces `{prefix}-*`), its standard error read
/// line by line into `lines` (and echoed as `lab| …` when `echo`). Dropped: SIGINT, and
/// SIGKILL if it has not exited 15 s later.
pub struct LabProcess {
    pub child: Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl LabProcess {
    pub fn start(prefix: &str, echo: bool) -> LabProcess {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(BIN)
            .args(["lab", "--prefix", prefix, "--status-addr", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting clusterway lab");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("lab| {line}");
                }
                let _ = tx.send(line);
            }
        });
        LabProcess { child, lines }
    }

    /// Whether the lab has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child, no memory effects.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
