//! `clusterway check` end to end: the binary runs in a fresh network namespace (so the TUN
//! device it creates, and every socket, stay there), against snapshot files, broken
//! kubeconfigs, and a small HTTPS stub of the Kubernetes API (`/version`,
//! SelfSubjectAccessReview, EndpointSlice list) served from inside the namespace.
//!
//! Needs root (network namespaces, TUN). Nothing in the host namespace is changed.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use clusterway::lab::netns::{unique_prefix, Netns};
use serde_json::{json, Value};

/// The watch path's test API server (read-only: it serves no SelfSubjectAccessReview, so
/// the permission checks are tested against the stub below).
mod apiserver;
mod common;

const BIN: &str = env!("CARGO_BIN_EXE_clusterway");
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/cluster-snapshot.yaml"
);

/// A fresh namespace and a scratch directory (which is also `$HOME` for the check, so no
/// kubeconfig of the machine running the tests is picked up).
struct Env {
    ns: Netns,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let ns = Netns::create(&format!("{}-chk", unique_prefix())).expect("create netns");
        Env {
            ns,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// `clusterway check ARGS` inside the namespace.
    fn check(&self, args: &[&str]) -> Output {
        self.command("check", args)
    }

    /// `clusterway COMMAND ARGS` inside the namespace, with `$HOME` the scratch directory
    /// and no Kubernetes environment.
    fn command(&self, command: &str, args: &[&str]) -> Output {
        self.ns
            .exec(BIN, std::iter::once(command).chain(args.iter().copied()))
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("HOME", self.dir.path())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "warn")
            .output()
            .expect("run clusterway")
    }

    /// `clusterway check ARGS --json`, parsed; with the exit status.
    fn check_json(&self, args: &[&str]) -> (bool, Report) {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.check(&all);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "check --json printed no JSON ({e}):\n{text}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), Report(json))
    }

    /// Adds `addr`/32 to the namespace's `lo`: a "pod" address routed here.
    fn add_local_address(&self, addr: &str) {
        self.ns
            .sh(&format!("ip addr add {addr}/32 dev lo"))
            .expect("pod address");
    }

    /// A listening socket inside the namespace.
    fn listen(&self, addr: &str) -> TcpListener {
        let addr = addr.to_string();
        self.ns
            .run(move || TcpListener::bind(addr))
            .expect("listen in netns")
    }
}

/// The parsed JSON report, with lookups that fail the test with the whole report.
struct Report(Value);

impl Report {
    fn check(&self, name: &str) -> &Value {
        self.0["checks"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no check {name:?} in {:#}", self.0))
    }

    fn severity(&self, name: &str) -> &str {
        self.check(name)["severity"].as_str().unwrap_or("")
    }

    fn detail(&self, name: &str) -> &str {
        self.check(name)["detail"].as_str().unwrap_or("")
    }

    fn fix(&self, name: &str) -> &str {
        self.check(name)["fix"].as_str().unwrap_or("")
    }

    /// Names of the checks that block running.
    fn errors(&self) -> Vec<&str> {
        self.0["checks"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter(|c| c["severity"] == "error")
                    .filter_map(|c| c["name"].as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of the human report that starts with `mark name`.
fn line<'a>(text: &'a str, mark: &str, name: &str) -> &'a str {
    let prefix = format!("{mark} {name}");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{text}"))
}

#[test]
fn from_file_fixture_passes_the_file_and_host_checks() {
    let env = Env::new();
    let (ok, report) = env.check_json(&["--from-file", FIXTURE, "--tun-name-prefix", "cwt"]);

    assert_eq!(
        report.severity("snapshot file loads"),
        "ok",
        "{:#}",
        report.0
    );
    let detail = report.detail("snapshot file loads");
    assert!(detail.contains("cluster-snapshot.yaml"), "{detail}");
    assert!(
        detail.contains("10 Services (7 exposed), 11 ClusterIP ports"),
        "{detail}"
    );

    // The ports the file exposes are listed, with their usable endpoints.
    let services = report.0["services"].as_array().expect("services");
    let dns_udp = services
        .iter()
        .find(|s| s["frontend"] == "10.96.0.10:53" && s["protocol"] == "UDP")
        .expect("kube-dns UDP port");
    assert_eq!(dns_udp["service"], "kube-system/kube-dns");
    assert_eq!(dns_udp["usable_endpoints"], 2);
    assert!(services
        .iter()
        .any(|s| s["frontend"] == "[fd00:10:96::992d]:80" && s["usable_endpoints"] == 2));
    assert!(
        !services.iter().any(|s| s["service"] == "shop/payments"),
        "other proxy's Service listed"
    );

    // Host checks in a fresh namespace as root: both possible.
    assert_eq!(report.severity("TUN device can be created"), "ok");
    assert!(report
        .detail("TUN device can be created")
        .starts_with("created and removed cwt"));
    assert_eq!(report.severity("forwarding can be enabled"), "ok");
    // No API checks with a file.
    for c in report.0["checks"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        assert!(
            !name.starts_with("list/watch") && name != "API reachable",
            "{name}"
        );
    }

    // The fixture's pods are not routed into an empty namespace: that, and only that, fails.
    assert_eq!(report.errors(), ["endpoints reachable"]);
    assert!(report.fix("endpoints reachable").contains("pod CIDR"));
    assert!(!ok, "a blocking check must give a non-zero exit");
}

#[test]
fn tun_check_creates_and_removes_its_device_in_a_fresh_namespace() {
    let env = Env::new();
    let (_, report) = env.check_json(&["--from-file", FIXTURE, "--tun-name-prefix", "cwtun"]);
    assert_eq!(report.severity("TUN device can be created"), "ok");
    let detail = report.detail("TUN device can be created");
    let (name, offloads) = detail
        .trim_start_matches("created and removed ")
        .split_once(" (offloads: ")
        .unwrap_or_else(|| panic!("no offloads in {detail:?}"));
    assert!(name.starts_with("cwtun") && name.len() <= 15, "{detail}");
    assert!(offloads.starts_with("csum tso4 tso6"), "{detail}");
    let links = env.ns.sh("ip -o link show").unwrap();
    assert!(!links.contains(name), "{name} left behind: {links}");
    let host_links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    assert!(
        !stdout(&host_links).contains(name),
        "{name} in the host namespace"
    );
}

#[test]
fn all_green_when_the_file_s_pods_are_routed_here() {
    let env = Env::new();
    env.add_local_address("10.77.0.2");
    let pod = env.listen("10.77.0.2:0");
    let port = pod.local_addr().unwrap().port();
    let file = env.write(
        "one.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\n\
             spec:\n  clusterIP: 10.96.0.20\n  clusterIPs: [10.96.0.20]\n  ports:\n  \
             - {{name: http, port: 80, protocol: TCP, targetPort: http}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata:\n  name: web-abc\n  namespace: shop\n  labels: {{kubernetes.io/service-name: web}}\n\
             addressType: IPv4\nports:\n- {{name: http, port: {port}, protocol: TCP}}\n\
             endpoints:\n- addresses: [10.77.0.2]\n  conditions: {{ready: true}}\n"
        ),
    );
    let out = env.check(&["--from-file", file.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains('\x1b'), "colour without a terminal: {text}");
    line(&text, "✔", "snapshot file loads");
    line(&text, "✔", "TUN device can be created");
    line(&text, "✔", "forwarding can be enabled");
    // Flow offload: the namespace's conntrack takes NAT entries (the probe's is gone).
    let dataplane = line(&text, "✔", "dataplane");
    assert!(
        dataplane.contains("offload: conntrack takes NAT entries"),
        "{dataplane}"
    );
    assert!(
        !env.ns
            .sh("conntrack -L 2>/dev/null")
            .unwrap()
            .contains("192.0.2."),
        "the probe's entry was left"
    );
    let reach = line(&text, "✔", "endpoints reachable");
    assert!(
        reach.contains(&format!(
            "1/1 routed: 10.77.0.2:{port} (shop/web) connected"
        )),
        "{reach}"
    );
    assert!(text.contains("10.96.0.20:80"), "ports listed: {text}");
    assert!(
        text.contains("ready: 5 passed, 0 warnings, 0 failed"),
        "{text}"
    );
}

/// `clusterway check --from-file FIXTURE --json` in the namespace, with `/proc/sys` bound
/// read-only in a private mount namespace (as in a container without `--privileged`).
fn check_with_read_only_proc_sys(env: &Env) -> Report {
    let script = format!(
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && \
         exec {BIN} check --from-file {FIXTURE} --json"
    );
    let out = env
        .ns
        .exec("unshare", ["-m", "sh", "-c", &script])
        .env("NO_COLOR", "1")
        .output()
        .expect("unshare");
    let text = stdout(&out);
    Report(serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    }))
}

#[test]
fn forwarding_off_behind_a_read_only_proc_sys_blocks_and_is_left_alone() {
    let env = Env::new();
    let report = check_with_read_only_proc_sys(&env);
    let name = "forwarding can be enabled";
    assert_eq!(report.severity(name), "error", "{:#}", report.0);
    assert!(
        report
            .detail(name)
            .contains("/proc/sys/net/ipv4/ip_forward is not writable"),
        "{:#}",
        report.0
    );
    assert!(report.fix(name).contains("--sysctl"));
    assert!(report.fix(name).contains("--network host"));
    // The check only looked: forwarding is still off in the namespace.
    assert_eq!(
        env.ns
            .sh("cat /proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "0"
    );

    // Already on (as `docker run --sysctl` leaves it): nothing to write, so it passes.
    env.ns
        .sh("echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")
        .unwrap();
    let report = check_with_read_only_proc_sys(&env);
    assert_eq!(report.severity(name), "ok", "{:#}", report.0);
    assert!(report.detail(name).contains("net.ipv4.ip_forward = 1"));
}

#[test]
fn a_bad_file_fails_naming_the_object() {
    let env = Env::new();
    let file = env.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: shop}\n\
         spec:\n  clusterIP: 10.96.0.30\n  ports:\n  - {port: 70000, protocol: TCP}\n",
    );
    let out = env.check(&["--from-file", file.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    let l = line(&text, "✘", "snapshot file loads");
    assert!(l.contains("bad.yaml"), "{l}");
    assert!(l.contains("Service shop/broken"), "{l}");
    assert!(l.contains("spec.ports[0].port"), "{l}");
    line(&text, "-", "endpoints reachable");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("check failed"),
        "stderr says why the exit status is non-zero"
    );
}

#[test]
fn a_missing_or_broken_kubeconfig_is_named() {
    let env = Env::new();
    let missing = env.path("no-such.kubeconfig");
    let out = env.check(&["--kubeconfig", missing.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(!out.status.success());
    let l = line(&text, "✘", "kubeconfig loads");
    assert!(l.contains(&missing.display().to_string()), "{l}");
    assert!(text.contains("this user can read it"), "{text}");
    line(&text, "-", "API reachable");
    line(&text, "-", "list/watch services");

    // A directory cannot be read as a file either.
    let (ok, report) = env.check_json(&["--kubeconfig", env.dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(report
        .detail("kubeconfig loads")
        .contains(&env.dir.path().display().to_string()));

    let garbage = env.write("garbage.kubeconfig", "clusters: [ {");
    let (ok, report) = env.check_json(&["--kubeconfig", garbage.to_str().unwrap()]);
    assert!(!ok);
    assert!(report
        .detail("kubeconfig loads")
        .contains("garbage.kubeconfig"));

    // Nothing at all: no flag, no KUBECONFIG, no ~/.kube/config, not in a cluster.
    let (ok, report) = env.check_json(&[]);
    assert!(!ok);
    let detail = report.detail("kubeconfig loads");
    assert!(detail.starts_with("no kubeconfig"), "{detail}");
    assert!(report.fix("kubeconfig loads").contains("--kubeconfig"));

    // A context but no kubeconfig to take it from: the check and the gateway resolve alike
    // (the gateway stops before it touches the host), neither falls back to in-cluster.
    let (ok, report) = env.check_json(&["--context", "staging"]);
    assert!(!ok);
    let detail = report.detail("kubeconfig loads");
    assert!(
        detail.contains("--context staging given, but there is no kubeconfig"),
        "{detail}"
    );
    let run = env.command("run", &["--context", "staging"]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("--context staging given, but there is no kubeconfig"),
        "{stderr}"
    );
    assert!(
        !env.ns
            .exec("ip", ["link", "show", "cw0"])
            .output()
            .unwrap()
            .status
            .success(),
        "run created its device before failing"
    );
}

/// A kubeconfig with a context per `(name, server)`, the first current, trusting `ca`.
fn kubeconfig(contexts: &[(&str, String)], ca: &Path, token: &str) -> String {
    let mut clusters = String::new();
    let mut ctxs = String::new();
    for (name, server) in contexts {
        clusters.push_str(&format!(
            "- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority: {}\n",
            ca.display()
        ));
        ctxs.push_str(&format!(
            "- name: {name}\n  context:\n    cluster: {name}\n    user: gw\n"
        ));
    }
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: {}\nclusters:\n{clusters}\
         contexts:\n{ctxs}users:\n- name: gw\n  user:\n    token: {token}\n",
        contexts[0].0
    )
}

#[test]
fn an_api_server_on_a_closed_port_is_not_reachable() {
    let env = Env::new();
    // A port that was just free inside the namespace, now closed.
    let closed = env.listen("127.0.0.1:0").local_addr().unwrap();
    let ca = env.write(
        "ca.pem",
        &rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
            .unwrap()
            .cert
            .pem(),
    );
    let kc = env.write(
        "closed.kubeconfig",
        &kubeconfig(&[("closed", format!("https://{closed}"))], &ca, "t"),
    );
    let out = env.check(&["--kubeconfig", kc.to_str().unwrap(), "--timeout", "2s"]);
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    let ok_line = line(&text, "✔", "kubeconfig loads");
    assert!(ok_line.contains("closed.kubeconfig"), "{ok_line}");
    assert!(ok_line.contains("context closed"), "{ok_line}");
    assert!(
        ok_line.contains(&format!("server https://{closed}")),
        "{ok_line}"
    );
    let l = line(&text, "✘", "API reachable");
    assert!(l.to_lowercase().contains("refused"), "{l}");
    assert!(
        text.contains("nothing listens at the server address"),
        "{text}"
    );
    line(&text, "-", "list/watch endpointslices.discovery.k8s.io");
}

// ---------------------------------------------------------------------------------------
// A stub API server: just enough of the Kubernetes API for `check`.

/// What the stub answers; shared with the test to change and inspect.
#[derive(Default)]
struct StubState {
    /// `(resource, verb)` pairs SelfSubjectAccessReview allows.
    allow: HashSet<(String, String)>,
    /// Items of the EndpointSlice list.
    slices: Vec<Value>,
    token: String,
    /// Every SelfSubjectAccessReview asked: `(group, resource, verb)`.
    reviews: Vec<(String, String, String)>,
}

struct Stub {
    /// Serves the stub; dropping it stops the server.
    _rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    ca: PathBuf,
    state: Arc<Mutex<StubState>>,
}

impl Stub {
    /// Serves HTTPS on a loopback port of `env`'s namespace.
    fn start(env: &Env, state: StubState) -> Stub {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let ca = env.write("stub-ca.pem", &cert.cert.pem());
        let chain = vec![cert.cert.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let std_listener = env.listen("127.0.0.1:0");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = shared.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve_connection(tls, state).await;
                    }
                });
            }
        });
        Stub {
            _rt: rt,
            addr,
            ca,
            state,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// HTTP/1.1 with keep-alive: one request after another on the connection.
async fn serve_connection<S>(mut conn: S, state: Arc<Mutex<StubState>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Read the head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.lines();
        let request_line = lines.next().unwrap_or_default().to_string();
        let mut content_length = 0usize;
        let mut authorization = String::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => content_length = v.trim().parse().unwrap_or(0),
                    "authorization" => authorization = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        while buf.len() < head_end + content_length {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf[head_end..head_end + content_length].to_vec();
        buf.drain(..head_end + content_length);

        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let (status, json) = respond(&state, &method, &target, &authorization, &body);
        let text = json.to_string();
        let reply = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if conn.write_all(reply.as_bytes()).await.is_err() || conn.flush().await.is_err() {
            return;
        }
    }
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(
    state: &Mutex<StubState>,
    method: &str,
    target: &str,
    authorization: &str,
    body: &[u8],
) -> (u16, Value) {
    let mut st = state.lock().unwrap();
    let path = target.split('?').next().unwrap_or_default();
    // As on most clusters, `/version` is open to anyone (system:public-info-viewer).
    if path != "/version" && authorization != format!("Bearer {}", st.token) {
        return (401, status_json(401, "Unauthorized", "Unauthorized"));
    }
    match (method, path) {
        ("GET", "/version") => (
            200,
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-stub",
                   "gitCommit": "0", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                   "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
        ),
        ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews") => {
            let Ok(mut review) = serde_json::from_slice::<Value>(body) else {
                return (400, status_json(400, "BadRequest", "not JSON"));
            };
            let attrs = &review["spec"]["resourceAttributes"];
            let field = |k: &str| attrs[k].as_str().unwrap_or_default().to_string();
            let (group, resource, verb) = (field("group"), field("resource"), field("verb"));
            let allowed = st.allow.contains(&(resource.clone(), verb.clone()));
            st.reviews.push((group, resource, verb));
            review["status"] = if allowed {
                json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"clusterway\""})
            } else {
                json!({"allowed": false})
            };
            (201, review)
        }
        ("GET", "/apis/discovery.k8s.io/v1/endpointslices") => {
            if !st
                .allow
                .contains(&("endpointslices".to_string(), "list".to_string()))
            {
                return (
                    403,
                    status_json(403, "Forbidden", "endpointslices is forbidden"),
                );
            }
            (
                200,
                json!({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                       "metadata": {"resourceVersion": "7"}, "items": st.slices}),
            )
        }
        _ => (
            404,
            status_json(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        ),
    }
}

fn slice(name: &str, service: &str, port: u16, endpoints: Value) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "shop",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
           "endpoints": endpoints})
}

fn allow(pairs: &[(&str, &str)]) -> HashSet<(String, String)> {
    pairs
        .iter()
        .map(|(r, v)| (r.to_string(), v.to_string()))
        .collect()
}

#[test]
fn against_an_api_server_permissions_and_endpoints_are_checked_for_real() {
    let env = Env::new();
    env.add_local_address("10.77.0.2");
    let pod = env.listen("10.77.0.2:0");
    let port = pod.local_addr().unwrap().port();
    let stub = Stub::start(
        &env,
        StubState {
            allow: allow(&[
                ("services", "list"),
                ("services", "watch"),
                ("endpointslices", "list"),
                ("endpointslices", "watch"),
            ]),
            slices: vec![
                slice(
                    "web-a",
                    "web",
                    port,
                    json!([{"addresses": ["10.77.0.2"], "conditions": {"ready": true}},
                           {"addresses": ["10.77.0.3"], "conditions": {"ready": false}}]),
                ),
                // A pod this namespace has no route to.
                slice(
                    "api-b",
                    "api",
                    8443,
                    json!([{"addresses": ["10.99.0.1"], "conditions": {}}]),
                ),
            ],
            token: "s3cret".into(),
            ..Default::default()
        },
    );
    let kc = env.write(
        "gw.kubeconfig",
        &kubeconfig(&[("stub", stub.url())], &stub.ca, "s3cret"),
    );
    let (ok, report) = env.check_json(&["--kubeconfig", kc.to_str().unwrap()]);
    let dump = format!("{:#}", report.0);

    let loaded = report.detail("kubeconfig loads");
    assert!(loaded.contains("gw.kubeconfig"), "{loaded}");
    assert!(loaded.contains("context stub"), "{loaded}");
    assert!(loaded.contains(&stub.url()), "{loaded}");
    assert_eq!(report.severity("API reachable"), "ok", "{dump}");
    assert!(report.detail("API reachable").contains("v1.33.0-stub"));
    assert_eq!(report.severity("list/watch services"), "ok", "{dump}");
    assert_eq!(
        report.severity("list/watch endpointslices.discovery.k8s.io"),
        "ok"
    );
    // ServiceCIDRs denied: a warning, not a blocker.
    let cidrs = "list/watch servicecidrs.networking.k8s.io";
    assert_eq!(report.severity(cidrs), "warning", "{dump}");
    assert!(
        report.detail(cidrs).contains("list and watch denied"),
        "{dump}"
    );
    assert!(report.fix(cidrs).contains("--service-cidr"));

    // One routed pod (connected), one unrouted; the not-ready endpoint is not tried.
    let reach = report.detail("endpoints reachable");
    assert_eq!(report.severity("endpoints reachable"), "ok", "{dump}");
    assert!(reach.starts_with("1/2 routed"), "{reach}");
    assert!(
        reach.contains(&format!("10.77.0.2:{port} (shop/web) connected")),
        "{reach}"
    );
    assert!(reach.contains("10.99.0.1:8443 (shop/api)"), "{reach}");
    assert!(!reach.contains("10.77.0.3"), "{reach}");
    assert!(ok, "warnings do not block: {dump}");

    // The server was asked exactly list and watch on each resource, with its group.
    let mut asked = stub.state.lock().unwrap().reviews.clone();
    asked.sort();
    let mut wanted: Vec<(String, String, String)> = [
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.k8s.io", "servicecidrs"),
    ]
    .iter()
    .flat_map(|(g, r)| ["list", "watch"].map(|v| (g.to_string(), r.to_string(), v.to_string())))
    .collect();
    wanted.sort();
    assert_eq!(asked, wanted);
}

#[test]
fn against_an_api_server_a_denied_permission_and_unrouted_pods_block() {
    let env = Env::new();
    let stub = Stub::start(
        &env,
        StubState {
            allow: allow(&[
                ("services", "list"),
                ("services", "watch"),
                ("endpointslices", "list"),
                ("servicecidrs", "list"),
                ("servicecidrs", "watch"),
            ]),
            slices: vec![slice(
                "web-a",
                "web",
                8080,
                json!([{"addresses": ["10.99.0.1", "10.99.0.2"]}]),
            )],
            token: "s3cret".into(),
            ..Default::default()
        },
    );
    // Two contexts: the current one reaches the stub, `--context wrong` uses a bad token.
    let closed = env.listen("127.0.0.1:0").local_addr().unwrap();
    let kc = env.write(
        "two.kubeconfig",
        &kubeconfig(
            &[("stub", stub.url()), ("gone", format!("https://{closed}"))],
            &stub.ca,
            "s3cret",
        ),
    );
    let out = env.check(&["--kubeconfig", kc.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    line(&text, "✔", "API reachable");
    line(&text, "✔", "list/watch services");
    line(&text, "✔", "list/watch servicecidrs.networking.k8s.io");
    let denied = line(&text, "✘", "list/watch endpointslices.discovery.k8s.io");
    assert!(denied.contains("watch denied"), "{denied}");
    assert!(text.contains("kubectl apply -f docker/rbac.yaml"), "{text}");
    let reach = line(&text, "✘", "endpoints reachable");
    assert!(reach.contains("0/2 routed"), "{reach}");
    // Pods not reachable at all: an overlay network is one cause; its way out is named.
    assert!(
        text.contains("run the gateway on a node of the cluster") && text.contains("docker/k8s/"),
        "{text}"
    );
    assert!(text.contains("not ready: "), "{text}");

    // --context picks the other entry of the same file.
    let (ok, report) = env.check_json(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--context",
        "gone",
        "--timeout",
        "2s",
    ]);
    assert!(!ok);
    assert!(report.detail("kubeconfig loads").contains("context gone"));
    assert_eq!(report.severity("API reachable"), "error");

    // A context that does not exist is a kubeconfig error that says so.
    let (ok, report) = env.check_json(&["--kubeconfig", kc.to_str().unwrap(), "--context", "nope"]);
    assert!(!ok);
    assert_eq!(report.severity("kubeconfig loads"), "error");
    assert!(
        report.fix("kubeconfig loads").contains("get-contexts"),
        "{:#}",
        report.0
    );
}

#[test]
fn against_an_api_server_rejected_credentials_are_explained() {
    let env = Env::new();
    let stub = Stub::start(
        &env,
        StubState {
            token: "right".into(),
            ..Default::default()
        },
    );
    let kc = env.write(
        "old.kubeconfig",
        &kubeconfig(&[("stub", stub.url())], &stub.ca, "expired"),
    );
    // KUBECONFIG (not the flag) is honoured too.
    let out = env
        .ns
        .exec(BIN, ["check", "--json"])
        .env("KUBECONFIG", &kc)
        .env("HOME", env.dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let report = Report(serde_json::from_slice(&out.stdout).expect("JSON"));
    let dump = format!("{:#}", report.0);
    assert!(report
        .detail("kubeconfig loads")
        .contains("old.kubeconfig (KUBECONFIG)"));
    // `/version` needs no credentials; the first authenticated request shows the 401.
    assert_eq!(report.severity("API reachable"), "ok", "{dump}");
    for name in [
        "list/watch services",
        "list/watch endpointslices.discovery.k8s.io",
        "list/watch servicecidrs.networking.k8s.io",
    ] {
        assert_eq!(report.severity(name), "error", "{dump}");
        assert!(report.detail(name).contains("HTTP 401"), "{dump}");
        assert!(report.fix(name).contains("credentials"), "{dump}");
    }
    assert_eq!(report.severity("endpoints reachable"), "skipped", "{dump}");
}

#[test]
fn against_the_watch_test_api_server() {
    let env = Env::new();
    env.add_local_address("10.77.0.2");
    let pod = env.listen("10.77.0.2:0");
    let port = pod.local_addr().unwrap().port();
    let api = apiserver::ApiServer::start_in(&env.ns);
    api.apply(slice(
        "web-a",
        "web",
        port,
        json!([{"addresses": ["10.77.0.2"], "conditions": {"ready": true}}]),
    ));
    let kc = api.kubeconfig();
    let (ok, report) = env.check_json(&["--kubeconfig", kc.to_str().unwrap()]);
    let dump = format!("{:#}", report.0);

    let loaded = report.detail("kubeconfig loads");
    assert!(loaded.contains("context test"), "{loaded}");
    assert!(
        loaded.contains(&format!("https://{}", api.addr)),
        "{loaded}"
    );
    assert_eq!(report.severity("API reachable"), "ok", "{dump}");
    assert!(report
        .detail("API reachable")
        .contains("v1.33.0-clusterway-test"));
    // This server is read-only (405 for the POST): the permissions cannot be told, which
    // is a warning, not a blocker.
    let services = "list/watch services";
    assert_eq!(report.severity(services), "warning", "{dump}");
    assert!(report.detail(services).contains("405"), "{dump}");
    assert!(
        report.fix(services).contains("kubectl auth can-i"),
        "{dump}"
    );
    let reach = report.detail("endpoints reachable");
    assert!(
        reach.contains(&format!("10.77.0.2:{port} (shop/web) connected")),
        "{dump}"
    );
    assert!(ok, "{dump}");
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("/apis/discovery.k8s.io/v1/endpointslices")),
        "{:?}",
        api.requests()
    );
}

#[test]
fn json_output_has_every_field_for_every_check() {
    let env = Env::new();
    let (_, report) = env.check_json(&["--from-file", FIXTURE]);
    assert!(report.0["ok"].is_boolean());
    let checks = report.0["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 5, "{:#}", report.0);
    for c in checks {
        assert!(c["name"].is_string(), "{c}");
        assert!(c["ok"].is_boolean(), "{c}");
        assert!(c["detail"].is_string(), "{c}");
        let severity = c["severity"].as_str().expect("severity");
        assert!(
            ["ok", "warning", "error", "skipped"].contains(&severity),
            "{c}"
        );
        assert_eq!(c["ok"].as_bool(), Some(severity == "ok"), "{c}");
        // A fix exactly for what is not ok (skipped checks say why in `detail`).
        assert_eq!(
            c["fix"].is_string(),
            severity == "warning" || severity == "error",
            "{c}"
        );
    }
}

/// A Service whose ClusterIP is outside every `--service-cidr` of its family cannot be
/// reached through the gateway: with `--service-cidr`, the check warns and names it, from
/// a file and from a cluster (paged list of Services); all inside is ✔.
#[test]
fn cluster_ips_outside_the_service_cidrs_are_a_warning() {
    let env = Env::new();
    let service = |name: &str, ip: &str| {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "shop"},
               "spec": {"clusterIP": ip, "clusterIPs": [ip],
                        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
    };
    let file = env.write(
        "two.json",
        &json!({"apiVersion": "v1", "kind": "List",
                "items": [service("web", "10.96.0.20"), service("typo", "10.112.0.20")]})
        .to_string(),
    );
    let name = "ClusterIPs routed";
    let (_, report) = env.check_json(&[
        "--from-file",
        file.to_str().unwrap(),
        "--service-cidr",
        "10.96.0.0/12",
        "--service-cidr",
        "fd00:10:96::/112",
    ]);
    let dump = format!("{:#}", report.0);
    assert_eq!(report.severity(name), "warning", "{dump}");
    assert!(
        report.detail(name).starts_with(
            "1 ClusterIP not routed: 10.112.0.20 (shop/typo): outside every routed Service CIDR"
        ),
        "{dump}"
    );
    assert!(report.fix(name).contains("--service-cidr"), "{dump}");
    let (_, report) = env.check_json(&[
        "--from-file",
        file.to_str().unwrap(),
        "--service-cidr",
        "10.96.0.0/11",
    ]);
    assert_eq!(report.severity(name), "ok", "{:#}", report.0);
    // Without --service-cidr the gateway routes each ClusterIP itself: no such check.
    let (_, report) = env.check_json(&["--from-file", file.to_str().unwrap()]);
    assert!(
        !report.0["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == name),
        "{:#}",
        report.0
    );

    // The same from a cluster: the check lists its Services.
    let api = apiserver::ApiServer::start_in(&env.ns);
    api.apply(service("web", "10.96.0.20"));
    api.apply(service("typo", "10.112.0.20"));
    let kc = api.kubeconfig();
    let (_, report) = env.check_json(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--service-cidr",
        "10.96.0.0/12",
    ]);
    let dump = format!("{:#}", report.0);
    assert_eq!(report.severity(name), "warning", "{dump}");
    assert!(
        report.detail(name).contains("10.112.0.20 (shop/typo)"),
        "{dump}"
    );
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("/api/v1/services")),
        "{:?}",
        api.requests()
    );
}

/// A pod address that only the namespace's default route covers is not dialled: it is a
/// warning, "no route to the pod network", with the fix (and the overlay-network advice);
/// not one packet leaves through the default route's link. A pod on a specific route is
/// still dialled and connects.
#[test]
fn a_pod_behind_only_the_default_route_is_not_dialled() {
    let env = Env::new();
    // A link with a default route; IPv6 off on it, so only a probe could make it send.
    env.ns
        .sh("ip link add cwd0 type veth peer name cwd1 && \
             sysctl -qw net.ipv6.conf.cwd0.disable_ipv6=1 net.ipv6.conf.cwd1.disable_ipv6=1 && \
             ip addr add 10.50.0.2/24 dev cwd0 && ip link set cwd0 up && ip link set cwd1 up && \
             ip route add default via 10.50.0.1")
        .expect("default route in the namespace");
    env.add_local_address("10.77.0.2");
    let pod = env.listen("10.77.0.2:0");
    let port = pod.local_addr().unwrap().port();
    let slice_yaml = |name: &str, service: &str, addr: &str, port: u16| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata:\n  name: {name}\n  namespace: shop\n  labels: {{kubernetes.io/service-name: {service}}}\n\
             addressType: IPv4\nports:\n- {{name: http, port: {port}, protocol: TCP}}\n\
             endpoints:\n- addresses: [{addr}]\n  conditions: {{ready: true}}\n"
        )
    };
    let service_yaml = |name: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec:\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  ports:\n  \
             - {{name: http, port: 80, protocol: TCP, targetPort: http}}\n"
        )
    };
    let file = env.write(
        "two.yaml",
        &[
            service_yaml("web", "10.96.0.20"),
            slice_yaml("web-a", "web", "10.77.0.2", port),
            service_yaml("api", "10.96.0.21"),
            slice_yaml("api-a", "api", "10.99.0.1", 8443),
        ]
        .join("---\n"),
    );
    let tx = || {
        env.ns
            .sh("cat /sys/class/net/cwd0/statistics/tx_packets")
            .expect("tx counter")
            .trim()
            .parse::<u64>()
            .expect("a number")
    };
    let before = tx();
    let (ok, report) = env.check_json(&["--from-file", file.to_str().unwrap()]);
    let dump = format!("{:#}", report.0);
    let name = "endpoints reachable";
    assert_eq!(report.severity(name), "warning", "{dump}");
    let detail = report.detail(name);
    assert!(detail.starts_with("1/2 routed"), "{dump}");
    assert!(
        detail.contains(&format!("10.77.0.2:{port} (shop/web) connected")),
        "{dump}"
    );
    assert!(
        detail.contains(
            "10.99.0.1:8443 (shop/api) no route to the pod network (only the default route, \
             via 10.50.0.1; not dialled)"
        ),
        "{dump}"
    );
    let fix = report.fix(name);
    assert!(fix.contains("pod CIDR"), "{fix}");
    assert!(
        fix.contains("run the gateway on a node of the cluster") && fix.contains("docker/k8s/"),
        "{fix}"
    );
    assert!(ok, "a warning does not block: {dump}");
    assert_eq!(tx(), before, "a probe left through the default route");

    // Only the default-routed pod: still a warning (not seen), never a pass.
    let only = env.write(
        "one.yaml",
        &[
            service_yaml("api", "10.96.0.21"),
            slice_yaml("api-a", "api", "10.99.0.1", 8443),
        ]
        .join("---\n"),
    );
    let (_, report) = env.check_json(&["--from-file", only.to_str().unwrap()]);
    assert_eq!(report.severity(name), "warning", "{:#}", report.0);
    assert!(
        report.detail(name).starts_with("0/1 routed"),
        "{:#}",
        report.0
    );
    assert_eq!(tx(), before, "a probe left through the default route");
}

/// `clusterway check` says which dataplane `run` would use and why: the proxy, with the
/// reason, where ctnetlink is refused (a seccomp filter on the check process); the proxy
/// as asked for with `--dataplane proxy`.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_dataplane_line_names_the_proxy_and_why_when_ctnetlink_is_refused() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let mut cmd = env
        .ns
        .exec(BIN, ["check", "--from-file", FIXTURE, "--json"]);
    cmd.env("NO_COLOR", "1").env("RUST_LOG", "warn");
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    unsafe { cmd.pre_exec(common::refuse_netfilter_netlink) };
    let out = cmd.output().unwrap();
    let report = Report(serde_json::from_slice(&out.stdout).expect("JSON report"));
    assert_eq!(report.severity("dataplane"), "warning", "{:#}", report.0);
    let detail = report.detail("dataplane");
    assert!(
        detail.contains("proxy will be used") && detail.contains("Operation not permitted"),
        "{detail}"
    );
    assert!(report.fix("dataplane").contains("nf_nat"), "{:#}", report.0);

    let (_, report) = env.check_json(&["--from-file", FIXTURE, "--dataplane", "proxy"]);
    assert_eq!(report.severity("dataplane"), "ok");
    assert!(report.detail("dataplane").contains("asked for"));
}

/// Without CAP_NET_RAW (a container that drops it) the dataplane line says the proxy will be
/// used and names the capability, as `run` falls back for the same reason.
#[test]
fn the_dataplane_line_names_cap_net_raw_when_raw_sockets_are_refused() {
    let env = Env::new();
    let mut cmd = env.ns.exec(
        "setpriv",
        [
            "--bounding-set",
            "-net_raw",
            BIN,
            "check",
            "--from-file",
            FIXTURE,
            "--json",
        ],
    );
    cmd.env("NO_COLOR", "1").env("RUST_LOG", "warn");
    let out = cmd.output().unwrap();
    let report = Report(serde_json::from_slice(&out.stdout).expect("JSON report"));
    assert_eq!(report.severity("dataplane"), "warning", "{:#}", report.0);
    let detail = report.detail("dataplane");
    assert!(
        detail.contains("proxy will be used") && detail.contains("CAP_NET_RAW"),
        "{detail}"
    );
    assert!(
        report.fix("dataplane").contains("CAP_NET_RAW"),
        "{:#}",
        report.0
    );
}
