//! The deployment files under `docker/`, checked for what they promise, and the container
//! image run for real.
//!
//! - `compose.yaml`, the `Dockerfile`, the systemd unit and the Grafana dashboard are parsed
//!   and checked (no root needed).
//! - `container_gateway_serves_the_lab` (root, podman) builds the Dockerfile's final stage
//!   from the binary this test run has just built (`--build-context build=DIR` replaces the
//!   `build` stage), on a `debian:bookworm-slim` made locally with debootstrap
//!   (`tests/container/base-image.sh`, cached in podman's storage), and runs it the way
//!   compose.yaml describes — host network, only NET_ADMIN and NET_RAW, /dev/net/tun,
//!   read-only root — inside the lab's gateway namespace. It must run the offload dataplane
//!   (the image carries `nft`), traffic from the client namespace must reach the pods
//!   through it, its health check must pass, and `podman stop` must leave no device and no
//!   netfilter table behind.
//!
//! Nothing outside the test's namespaces and podman's storage changes; the container and the
//! test image are removed on drop.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_yaml_ng::Value;

use common::{tcp_get, udp_roundtrip, wait_for, Netns, Topology, BIN};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn docker_file(name: &str) -> PathBuf {
    Path::new(MANIFEST_DIR).join("docker").join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn compose() -> Value {
    serde_yaml_ng::from_str(&read(&docker_file("compose.yaml"))).expect("compose.yaml parses")
}

/// The one service of compose.yaml.
fn compose_service(doc: &Value) -> &Value {
    let services = doc["services"]
        .as_mapping()
        .expect("compose.yaml has services");
    assert_eq!(services.len(), 1, "compose.yaml runs one service");
    services.values().next().unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => serde_yaml_ng::to_string(other).unwrap().trim().to_owned(),
            })
            .collect(),
        Value::String(s) => vec![s.clone()],
        Value::Null => Vec::new(),
        other => panic!("expected a list, found {other:?}"),
    }
}

/// `clusterway <sub> --help`, for checking that deployment files use real flags.
fn help(sub: &str) -> String {
    let out = Command::new(BIN)
        .args([sub, "--help"])
        .output()
        .expect("running clusterway --help");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the gateway has its status server (`--status-addr`) yet.
fn has_status_server() -> bool {
    help("run").contains("--status-addr")
}

#[test]
fn compose_file_describes_a_jump_host() {
    let doc = compose();
    let svc = compose_service(&doc);
    assert_eq!(svc["network_mode"].as_str(), Some("host"));
    assert_eq!(strings(&svc["cap_drop"]), ["ALL"]);
    assert_eq!(strings(&svc["cap_add"]), ["NET_ADMIN", "NET_RAW"]);
    assert!(
        strings(&svc["devices"])
            .iter()
            .any(|d| d == "/dev/net/tun" || d.starts_with("/dev/net/tun:")),
        "devices: {:?}",
        svc["devices"]
    );
    assert_eq!(svc["read_only"].as_bool(), Some(true));
    assert!(strings(&svc["security_opt"]).contains(&"no-new-privileges:true".to_owned()));
    assert_eq!(svc["restart"].as_str(), Some("unless-stopped"));

    // The kubeconfig is mounted read-only where the command looks for it.
    let volumes = strings(&svc["volumes"]);
    let kube = volumes
        .iter()
        .find(|v| v.contains("kubeconfig"))
        .expect("a kubeconfig volume");
    assert_eq!(kube, "./kubeconfig:/etc/clusterway/kubeconfig:ro");
    let command = strings(&svc["command"]);
    assert_eq!(command[0], "run");
    let at = command
        .iter()
        .position(|a| a == "--kubeconfig")
        .expect("--kubeconfig in the command");
    assert_eq!(command[at + 1], "/etc/clusterway/kubeconfig");

    // Every flag of the command is one `clusterway run` has.
    let run_help = help("run");
    for flag in command.iter().filter(|a| a.starts_with("--")) {
        assert!(
            run_help.contains(&format!("{flag} ")) || run_help.contains(&format!("{flag}\n")),
            "compose.yaml uses {flag}, which `clusterway run` does not have"
        );
    }

    // The health check is the binary's own probe of /readyz on the default status address.
    let test = strings(&svc["healthcheck"]["test"]);
    assert_eq!(test[0], "CMD");
    assert_eq!(test[1], "/usr/local/bin/clusterway");
    assert_eq!(test[2], "probe");
    assert_eq!(test[3], clusterway::probe::DEFAULT_URL);
    assert!(test[3].ends_with("/readyz"));

    // `docker compose build` finds the Dockerfile from the context.
    let context = Path::new(MANIFEST_DIR)
        .join("docker")
        .join(svc["build"]["context"].as_str().unwrap());
    assert!(context
        .join(svc["build"]["dockerfile"].as_str().unwrap())
        .is_file());
}

/// The Dockerfile's stages, as (name, base, lines).
fn dockerfile_stages() -> Vec<(String, String, Vec<String>)> {
    let text = read(&docker_file("Dockerfile"));
    // Join continuation lines, drop comments.
    let mut lines = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            lines.push(std::mem::take(&mut cur));
        }
    }
    let mut stages: Vec<(String, String, Vec<String>)> = Vec::new();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words[0].eq_ignore_ascii_case("FROM") {
            assert_eq!(words.len(), 4, "FROM IMAGE AS NAME: {line}");
            stages.push((words[3].to_owned(), words[1].to_owned(), Vec::new()));
        } else {
            stages.last_mut().expect("FROM first").2.push(line);
        }
    }
    stages
}

/// Where the final stage takes the binary from, relative to the `build` stage's root.
const BUILD_OUT: &str = "out";

#[test]
fn dockerfile_has_a_build_stage_and_a_slim_final_stage() {
    let stages = dockerfile_stages();
    assert_eq!(stages.len(), 2);
    let (build, build_base, build_lines) = &stages[0];
    assert_eq!(build, "build");
    assert!(build_base.contains("rust:") && build_base.ends_with("bookworm"));
    assert!(build_lines
        .iter()
        .any(|l| l.contains("cargo build --release --locked")));
    // `nft` (flow offload) is laid out by the same script the container test runs.
    assert!(build_lines.iter().any(|l| l.contains("apt-get install")
        && l.contains("nftables")
        && l.contains(&format!("sh docker/nft-files.sh /{BUILD_OUT}"))));
    let (runtime, base, lines) = &stages[1];
    assert_eq!(runtime, "runtime");
    assert_eq!(base, "docker.io/library/debian:bookworm-slim");
    // The final stage takes exactly the build stage's /out, which the container test lays
    // out from the binary it built.
    let copies: Vec<_> = lines.iter().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(copies, [&format!("COPY --from=build /{BUILD_OUT}/ /")]);
    assert!(
        !lines.iter().any(|l| l.starts_with("RUN")),
        "no RUN: {lines:?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("USER")));
    assert!(lines.contains(&r#"ENTRYPOINT ["/usr/local/bin/clusterway"]"#.to_owned()));
    assert!(lines.contains(&r#"CMD ["run"]"#.to_owned()));
    let health = lines
        .iter()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    assert!(health.contains(&format!(
        r#"CMD ["/usr/local/bin/clusterway", "probe", "{}"]"#,
        clusterway::probe::DEFAULT_URL
    )));
}

/// Metric names the dashboard queries (histogram series reduced to their family).
fn dashboard_metrics(dash: &serde_json::Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        exprs.push(var["definition"].as_str().unwrap().to_owned());
    }
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(i) = rest.find("clusterway_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(family.to_owned());
            rest = &tail[end..];
        }
    }
    names
}

/// The metric families the issue asks for, by the names the status server exports them
/// (`src/web/metrics.rs`); the container test compares them with a running gateway's
/// `/metrics`.
const METRICS: [&str; 12] = [
    "clusterway_active_flows",
    "clusterway_api_watch_reconnects_total",
    "clusterway_api_watch_up",
    "clusterway_bytes_total",
    "clusterway_connections_total",
    "clusterway_dial_duration_seconds",
    "clusterway_endpoints",
    "clusterway_last_sync_timestamp_seconds",
    "clusterway_services",
    "clusterway_table_generation",
    "clusterway_tun_drops_total",
    "clusterway_tun_packets_total",
];

/// Families the gateway exports only in some states, so a file-source gateway without
/// drops does not show them.
const CONDITIONAL_METRICS: [(&str, &str); 3] = [
    ("clusterway_api_watch_up", "Kubernetes source only"),
    (
        "clusterway_api_watch_reconnects_total",
        "Kubernetes source only",
    ),
    ("clusterway_tun_drops_total", "after the first drop"),
];

/// One sample of the Prometheus text format: name, labels, value.
type Sample = (String, std::collections::BTreeMap<String, String>, f64);

/// Parses the sample lines of a Prometheus text exposition (label values without escapes
/// other than `\"`, which is what the gateway writes).
fn parse_exposition(text: &str) -> (BTreeSet<String>, Vec<Sample>) {
    let mut families = BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split_whitespace().next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = std::collections::BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                    labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), Default::default()),
        };
        samples.push((name, labels, value));
    }
    (families, samples)
}

#[test]
fn grafana_dashboard_is_importable() {
    let dash: serde_json::Value =
        serde_json::from_str(&read(&docker_file("grafana-dashboard.json")))
            .expect("grafana-dashboard.json parses");
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    assert_eq!(dash["uid"], "clusterway");
    let inputs = dash["__inputs"].as_array().unwrap();
    assert!(inputs
        .iter()
        .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"));

    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id: {p}");
        titles.push(p["title"].as_str().unwrap().to_owned());
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}");
        let grid = &p["gridPos"];
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}");
            let expr = t["expr"].as_str().unwrap();
            assert!(expr.contains("clusterway_"), "{expr}");
            // Balanced brackets: a typo in a hand-edited query shows up here.
            for (open, close) in [('(', ')'), ('{', '}'), ('[', ']')] {
                assert_eq!(
                    expr.matches(open).count(),
                    expr.matches(close).count(),
                    "{expr}"
                );
            }
        }
    }
    // The panels an operator looks for first.
    for want in [
        "Connections/s by result",
        "Top services by new connections/s",
        "Bytes/s by direction",
        "Dial latency to endpoints",
        "Drops by reason",
        "Table sync age",
    ] {
        assert!(titles.iter().any(|t| t == want), "no panel {want:?}");
    }
    let used = dashboard_metrics(&dash);
    let known: BTreeSet<String> = METRICS.iter().map(|s| s.to_string()).collect();
    assert_eq!(used, known, "metrics the dashboard uses vs the list");
    for (name, _) in CONDITIONAL_METRICS {
        assert!(known.contains(name));
    }
}

#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let unit = read(&docker_file("clusterway.service"));
    for line in [
        "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
        "DeviceAllow=/dev/net/tun rw",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX",
        "SystemCallFilter=@system-service",
        "ReadWritePaths=/proc/sys/net/ipv4/ip_forward -/proc/sys/net/ipv6/conf/all/forwarding",
        "KillSignal=SIGTERM",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "clusterway.service lacks {line}"
        );
    }
    // scripts/test.sh installs it (Debian: systemd); without it the unit is not verified,
    // and that is a failure, not a pass.
    let analyze = which("systemd-analyze").expect(
        "systemd-analyze is needed to verify docker/clusterway.service (apt-get install systemd)",
    );
    // Verify a copy whose ExecStart is the binary under test (verify checks it exists).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("clusterway.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/clusterway", BIN)).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown or misspelled directives are only warnings; treat any output as a failure.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

fn which(program: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}

// ---------------------------------------------------------------------------------------
// The container, for real.

/// podman with the options these VMs need: runc, cgroupfs, and no rlimit changes
/// (`default_ulimits = []`: raising rlimits is forbidden here).
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        which("podman").expect("podman is not installed (scripts/test.sh installs it)");
        let dir = tempfile::Builder::new()
            .prefix("clusterway-podman-")
            .tempdir()
            .unwrap();
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .unwrap();
        Podman { dir }
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("containers.conf")
    }

    /// `podman ...` in the test's own network namespace.
    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.conf()).args([
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
        ]);
        c
    }

    /// `podman ...` with its network namespace set to `ns` (only the network: `ip netns exec`
    /// would also remount /sys and hide the cgroup mounts runc needs). With `--network host`
    /// the container shares this namespace, as it shares the host's on a jump host.
    fn in_netns(&self, ns: &Netns) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", ns.path().display()))
            .arg("podman")
            .env("CONTAINERS_CONF", self.conf())
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
        c
    }
}

/// Runs `cmd`, panicking with its output unless it succeeds.
fn checked(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// An image tag removed on drop (its layers stay cached).
struct Image<'a> {
    podman: &'a Podman,
    tag: String,
}

impl Drop for Image<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .cmd()
            .args(["rmi", "-f", &self.tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A container removed (killed if still running) on drop.
struct Container<'a> {
    podman: &'a Podman,
    name: String,
}

impl Container<'_> {
    fn logs(&self) -> String {
        let out = self
            .podman
            .cmd()
            .args(["logs", &self.name])
            .output()
            .expect("podman logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn inspect(&self, format: &str) -> String {
        let out = self
            .podman
            .cmd()
            .args(["inspect", "--format", format, &self.name])
            .output()
            .expect("podman inspect");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- logs of container {}:\n{}", self.name, self.logs());
        }
        let _ = self
            .podman
            .cmd()
            .args(["rm", "-f", "-t", "2", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Makes `docker.io/library/debian:bookworm-slim` exist locally (debootstrap once, then
/// cached in podman's storage).
fn base_image(podman: &Podman) {
    which("debootstrap").expect("debootstrap is not installed (scripts/test.sh installs it)");
    let script = Path::new(MANIFEST_DIR).join("tests/container/base-image.sh");
    checked(
        Command::new("bash")
            .arg(script)
            .env("CONTAINERS_CONF", podman.conf()),
        "tests/container/base-image.sh",
    );
}

/// Builds the Dockerfile's final stage from the binary under test: DIR/out/ is laid out as
/// the `build` stage leaves /out/, and `--build-context build=DIR` stands in for that stage.
fn build_image<'a>(podman: &'a Podman, tag: &str) -> Image<'a> {
    let ctx = tempfile::Builder::new()
        .prefix("clusterway-image-")
        .tempdir()
        .unwrap();
    let out = ctx.path().join(BUILD_OUT);
    let bin_dir = out.join("usr/local/bin");
    let certs = out.join("etc/ssl/certs");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::create_dir_all(&certs).unwrap();
    let bin = bin_dir.join("clusterway");
    if std::fs::hard_link(BIN, &bin).is_err() {
        std::fs::copy(BIN, &bin).expect("copying the binary into the build context");
    }
    // `nft` and its libraries, as the build stage lays them out (from this Debian 12 host's
    // installed packages instead of the build stage's).
    checked(
        Command::new("sh")
            .arg(docker_file("nft-files.sh"))
            .arg(&out),
        "docker/nft-files.sh (apt-get install nftables)",
    );
    let host_certs = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if host_certs.is_file() {
        std::fs::copy(host_certs, certs.join("ca-certificates.crt")).unwrap();
    } else {
        std::fs::write(certs.join("ca-certificates.crt"), "").unwrap();
    }
    // The main context: empty (the final stage copies only from `build`).
    let main_ctx = ctx.path().join("context");
    std::fs::create_dir(&main_ctx).unwrap();
    let image = Image {
        podman,
        tag: tag.to_owned(),
    };
    checked(
        podman
            .cmd()
            .args(["build", "--pull=never", "--format", "docker", "--quiet"])
            .arg(format!("--build-context=build={}", ctx.path().display()))
            .args(["--target", "runtime", "--tag", tag, "--file"])
            .arg(docker_file("Dockerfile"))
            .arg(&main_ctx),
        "podman build",
    );
    image
}

/// `podman run` flags for the security-relevant settings of compose.yaml's service, so the
/// test runs the container as the compose file does. Left out: `volumes` and `command`
/// (the test mounts a snapshot instead of a kubeconfig), `ulimits` (raising rlimits is not
/// allowed on the test VMs), and settings without a security or network effect.
fn compose_run_flags(svc: &Value) -> Vec<String> {
    let mut flags = Vec::new();
    let network = svc["network_mode"].as_str().expect("network_mode");
    flags.push(format!("--network={network}"));
    for cap in strings(&svc["cap_drop"]) {
        flags.push(format!("--cap-drop={cap}"));
    }
    for cap in strings(&svc["cap_add"]) {
        flags.push(format!("--cap-add={cap}"));
    }
    for dev in strings(&svc["devices"]) {
        flags.push(format!("--device={dev}"));
    }
    for opt in strings(&svc["security_opt"]) {
        // compose writes `no-new-privileges:true`, podman `no-new-privileges`.
        flags.push(format!(
            "--security-opt={}",
            opt.strip_suffix(":true").unwrap_or(&opt)
        ));
    }
    if svc["read_only"].as_bool() == Some(true) {
        flags.push("--read-only".into());
        flags.push("--read-only-tmpfs=false".into());
    }
    for t in strings(&svc["tmpfs"]) {
        flags.push(format!("--tmpfs={t}"));
    }
    if let Some(env) = svc["environment"].as_mapping() {
        for (k, v) in env {
            flags.push(format!(
                "--env={}={}",
                k.as_str().unwrap(),
                v.as_str().unwrap()
            ));
        }
    }
    if let Some(sig) = svc["stop_signal"].as_str() {
        flags.push(format!("--stop-signal={sig}"));
    }
    flags
}

/// The gateway in a container, run as compose.yaml describes, inside the lab's gateway
/// namespace: ClusterIP traffic from the client reaches the pods, the image's health check
/// passes, and SIGTERM (podman stop) removes the TUN device again.
#[test]
fn container_gateway_serves_the_lab() {
    let started = Instant::now();
    let podman = Podman::new();
    base_image(&podman);
    let base_ready = started.elapsed();

    let unique = clusterway::lab::netns::unique_prefix();
    let tag = format!("localhost/clusterway-test:{unique}");
    let _image = build_image(&podman, &tag);
    let image_ready = started.elapsed();

    let topo = Topology::new(2).expect("building the lab topology");
    let _backends = common::start_backends(&topo);
    let snapshot_dir = tempfile::Builder::new()
        .prefix("clusterway-snapshot-")
        .tempdir()
        .unwrap();
    topo.write_demo_snapshot(&snapshot_dir.path().join("cluster.yaml"))
        .unwrap();

    let svc_doc = compose();
    let svc = compose_service(&svc_doc);
    let name = format!("clusterway-test-{unique}");
    let container = Container {
        podman: &podman,
        name: name.clone(),
    };
    let mut run = podman.in_netns(topo.gateway());
    run.args(["run", "--detach", "--name", &name])
        .args(compose_run_flags(svc))
        .arg(format!(
            "--volume={}:/etc/clusterway:ro",
            snapshot_dir.path().display()
        ))
        .arg(&tag)
        .args(["run", "--from-file", "/etc/clusterway/cluster.yaml"])
        .args(
            clusterway::lab::SERVICE_CIDRS
                .iter()
                .flat_map(|c| ["--service-cidr", c]),
        );
    checked(&mut run, "podman run");

    // Up: the TUN device exists in the gateway namespace and ClusterIPs answer.
    let gw = topo.gateway();
    let tun_up = wait_for(
        || {
            gw.sh("ip -o link show cw0 up")
                .is_ok_and(|s| s.contains("cw0"))
                || container.inspect("{{.State.Running}}") == "false"
        },
        Duration::from_secs(20),
    );
    assert!(
        tun_up && container.inspect("{{.State.Running}}") == "true",
        "the containerised gateway did not bring cw0 up; logs:\n{}",
        container.logs()
    );
    let web = SocketAddr::new(IpAddr::V4(clusterway::lab::WEB_V4), 80);
    assert!(
        wait_for(
            || tcp_get(topo.client(), web).is_ok(),
            Duration::from_secs(10)
        ),
        "{web} never answered through the container; logs:\n{}",
        container.logs()
    );
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        seen.insert(tcp_get(topo.client(), web).unwrap().trim().to_owned());
    }
    assert_eq!(
        seen,
        BTreeSet::from(["pod-1".to_owned(), "pod-2".to_owned()])
    );
    let web6 = SocketAddr::new(IpAddr::V6(clusterway::lab::WEB_V6), 80);
    assert!(tcp_get(topo.client(), web6)
        .unwrap()
        .trim()
        .starts_with("pod-"));
    let dns = SocketAddr::new(IpAddr::V4(clusterway::lab::DNS_ECHO_V4), 53);
    assert!(udp_roundtrip(topo.client(), dns, b"hi")
        .unwrap()
        .contains("hi"));
    let traffic_ok = started.elapsed();

    // The gateway runs the offload dataplane: the image has `nft`, the container NET_RAW.
    let logs = container.logs();
    assert!(
        logs.contains("dataplane: offload"),
        "the containerised gateway does not run the offload dataplane; logs:\n{logs}"
    );

    // Only NET_ADMIN and NET_RAW are effective inside, and the root file system is
    // read-only.
    let status = checked(
        podman.cmd().args(["exec", &name, "cat", "/proc/1/status"]),
        "podman exec cat /proc/1/status",
    );
    let status = String::from_utf8_lossy(&status.stdout);
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .expect("CapEff in /proc/1/status");
    assert_eq!(
        u64::from_str_radix(cap_eff, 16).unwrap(),
        // CAP_NET_ADMIN (12) and CAP_NET_RAW (13) of linux/capability.h (libc has no
        // capability numbers).
        (1 << 12) | (1 << 13),
        "CapEff {cap_eff} is not CAP_NET_ADMIN and CAP_NET_RAW alone"
    );
    let touch = podman
        .cmd()
        .args(["exec", &name, "/usr/local/bin/clusterway", "--version"])
        .output()
        .unwrap();
    assert!(touch.status.success());
    let write = podman
        .cmd()
        .args(["exec", &name, "sh", "-c", "echo x > /usr/local/bin/x"])
        .output()
        .unwrap();
    assert!(!write.status.success(), "the root file system is writable");

    // The image's own probe (no curl in the image) reaches a pod over the host network.
    let pod = SocketAddr::new(topo.pod_ip(1, false), clusterway::lab::BACKEND_HTTP_PORT);
    checked(
        podman.in_netns(gw).args([
            "exec",
            &name,
            "/usr/local/bin/clusterway",
            "probe",
            &format!("http://{pod}/"),
        ]),
        "clusterway probe of a pod inside the container",
    );
    if has_status_server() {
        // The image's HEALTHCHECK: /readyz on the default status address.
        let healthy = wait_for(
            || {
                podman
                    .in_netns(gw)
                    .args(["healthcheck", "run", &name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            },
            Duration::from_secs(15),
        );
        assert!(
            healthy,
            "podman healthcheck (GET /readyz) never passed; logs:\n{}",
            container.logs()
        );
        let status_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 9310));
        let ready = common::http_get(gw, status_addr, "/readyz").unwrap();
        assert_eq!(ready.status, 200, "{}", ready.text());
        let status = common::http_get(gw, status_addr, "/api/v1/status").unwrap();
        let status: serde_json::Value = serde_json::from_str(&status.text()).unwrap();
        assert_eq!(status["dataplane"]["name"], "offload", "{status}");
        // Every family the Grafana dashboard reads is exported (except the conditional
        // ones), and the connection counter moved by the requests made above.
        let metrics = common::http_get(gw, status_addr, "/metrics").unwrap();
        assert_eq!(metrics.status, 200);
        let text = metrics.text();
        let (families, samples) = parse_exposition(&text);
        for name in METRICS {
            let conditional = CONDITIONAL_METRICS.iter().any(|(n, _)| *n == name);
            assert!(
                conditional || families.contains(name),
                "the dashboard reads {name}, which /metrics does not export:\n{text}"
            );
        }
        let web_ok: f64 = samples
            .iter()
            .filter(|(name, l, _)| {
                name == "clusterway_connections_total"
                    && l.get("namespace").map(String::as_str) == Some("demo")
                    && l.get("service").map(String::as_str) == Some("web")
                    && l.get("port").map(String::as_str) == Some("80")
                    && l.get("result").map(String::as_str) == Some("ok")
            })
            .map(|(_, _, v)| v)
            .sum();
        assert!(
            web_ok >= 5.0,
            "demo/web ok connections: {web_ok} after 5 requests:\n{text}"
        );
        // The TCP flows above were handed to the kernel.
        let offloaded: f64 = samples
            .iter()
            .filter(|(name, _, _)| name == "clusterway_offload_flows_total")
            .map(|(_, _, v)| v)
            .sum();
        assert!(offloaded >= 5.0, "offloaded flows: {offloaded}:\n{text}");
    } else {
        eprintln!("the gateway has no status server yet: /readyz not checked");
    }

    // SIGTERM through podman: the gateway removes its routes and device, and exits 0.
    checked(
        podman.in_netns(gw).args(["stop", "--time", "15", &name]),
        "podman stop",
    );
    assert_eq!(
        container.inspect("{{.State.ExitCode}}"),
        "0",
        "logs:\n{}",
        container.logs()
    );
    let links = gw.sh("ip -o link show").unwrap();
    assert!(!links.contains("cw0"), "cw0 left behind: {links}");
    let routes = gw.sh("ip route show proto 75").unwrap();
    assert!(routes.trim().is_empty(), "routes left behind: {routes}");
    let tables = gw.sh("nft list tables").unwrap();
    assert!(
        !tables.contains("clusterway"),
        "netfilter table left behind: {tables}"
    );
    eprintln!(
        "container test: base image {:.1?}, image built {:.1?}, traffic through it {:.1?}, \
         total {:.1?}",
        base_ready,
        image_ready - base_ready,
        traffic_ok - image_ready,
        started.elapsed()
    );
}

/// Seconds of a compose duration (`15s`, `1m30s`) or a systemd time span (`15s`, `1min`).
fn seconds(s: &str) -> u64 {
    let mut total = 0;
    let mut num = String::new();
    let mut unit = String::new();
    let mut flush = |num: &mut String, unit: &mut String| {
        if num.is_empty() {
            return;
        }
        let n: u64 = num.parse().unwrap();
        total += match unit.as_str() {
            "" | "s" | "sec" => n,
            "m" | "min" => n * 60,
            "h" => n * 3600,
            other => panic!("unit {other} in {s}"),
        };
        num.clear();
        unit.clear();
    };
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            if !unit.is_empty() {
                flush(&mut num, &mut unit);
            }
            num.push(c);
        } else {
            unit.push(c);
        }
    }
    flush(&mut num, &mut unit);
    total
}

/// The container and the systemd unit leave the SIGTERM drain its time (`--drain-timeout`,
/// 5 s by default, then the routes and the device go), and with BIRD announcing the routes
/// both start BIRD first and stop the gateway first, so the drain's withdrawal reaches the
/// routers through a BIRD that still runs.
#[test]
fn deployment_files_give_the_drain_its_time_and_order_bird() {
    let drain = help("run");
    assert!(
        drain.contains("--drain-timeout") && drain.contains("[default: 5s]"),
        "run --help: {drain}"
    );
    let doc = compose();
    let svc = compose_service(&doc);
    assert_eq!(svc["stop_signal"].as_str(), Some("SIGTERM"));
    let grace = seconds(
        svc["stop_grace_period"]
            .as_str()
            .expect("stop_grace_period"),
    );
    assert!(
        grace >= 10,
        "stop_grace_period {grace}s: 5s of drain and the stop"
    );

    let unit = read(&docker_file("clusterway.service"));
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("clusterway.service sets TimeoutStopSec");
    assert!(seconds(stop) >= 10, "TimeoutStopSec={stop}");
    assert!(unit.contains("KillSignal=SIGTERM"));

    // The BIRD sidecar: an override file on top of compose.yaml.
    let bird: Value =
        serde_yaml_ng::from_str(&read(&docker_file("compose.bird.yaml"))).expect("parses");
    let sidecar = &bird["services"]["bird"];
    assert_eq!(sidecar["network_mode"].as_str(), Some("host"));
    assert!(strings(&sidecar["volumes"])
        .iter()
        .any(|v| v.starts_with("./bird.conf:/etc/bird/bird.conf")));
    assert!(sidecar["build"]["dockerfile_inline"]
        .as_str()
        .is_some_and(|d| d.contains("bird2")));
    // compose stops a service before the ones it depends on: the gateway must depend on
    // BIRD, never BIRD on the gateway.
    assert!(
        strings(&sidecar["depends_on"]).is_empty(),
        "BIRD must not depend on the gateway (it would stop first)"
    );
    let overlay = &bird["services"]["clusterway"];
    assert_eq!(strings(&overlay["depends_on"]), ["bird"]);
    assert!(
        doc["services"]
            .as_mapping()
            .unwrap()
            .contains_key("clusterway"),
        "compose.bird.yaml extends compose.yaml's `clusterway` service"
    );

    let dropin = read(&docker_file("clusterway-bird.conf"));
    let lines: Vec<&str> = dropin.lines().map(str::trim).collect();
    assert!(lines.contains(&"[Unit]"));
    assert!(lines.contains(&"After=bird.service"), "{dropin}");
    assert!(lines.contains(&"Wants=bird.service"), "{dropin}");
}
