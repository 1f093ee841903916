//! Two gateways behind a router, announced over BGP by real routing daemons (Debian's BIRD 2
//! and FRR), with ECMP on the router and BFD between them.
//!
//! ```text
//!  {p}-cl ── {p}-rt (FRR: BGP, maximum-paths, BFD, fib_multipath_hash_policy=1)
//!  10.10.0.2   10.10.0.1
//!              10.11.1.1 ── 10.11.1.2 {p}-g1 (clusterway + BIRD 2) 10.12.1.1 ──┐
//!              10.11.2.1 ── 10.11.2.2 {p}-g2 (clusterway + FRR)    10.12.2.1 ──┤
//!                                                   {p}-pd (demo backend 10.244.0.10:8080)
//! ```
//! The gateway hosts' daemon configurations are what `clusterway routes --format bird-bgp` and
//! `--format frr-bgp` print. Every daemon runs inside the test's namespaces, in the
//! foreground, with its config, control socket, pid file and logs in a temporary directory;
//! everything is killed and removed at the end (also on a panic). The router's routing table
//! is read with `ip route` inside its namespace; no timing is asserted beyond what the issue
//! asks (BFD within 2 s, new connections within 2 s of a crash), with polling, not sleeps.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http_get, http_get_here, wait_for, Netns, BIN};

const ROUTER_UPLINK: [&str; 2] = ["10.11.1.1", "10.11.2.1"];
const GW_UPLINK: [&str; 2] = ["10.11.1.2", "10.11.2.2"];
/// The gateways' addresses towards the pods: what the backend's `GET /ip` answers.
const GW_POD_SIDE: [&str; 2] = ["10.12.1.1", "10.12.2.1"];
const CIDR: &str = "10.96.0.0/16";
const WEB: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)), 80);
const STATUS: &str = "127.0.0.1:9310";

/// A process killed (SIGKILL) and reaped when dropped, with its output in a log file.
struct Proc {
    what: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(ns: &Netns, what: &str, log: &Path, program: &str, args: &[&str]) -> Proc {
        let file = std::fs::File::create(log).expect("creating a log file");
        let err = file.try_clone().expect("duplicating the log descriptor");
        let child = ns
            .exec(program, args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what} ({program}): {e}"));
        Proc {
            what: what.into(),
            child: Some(child),
            log: log.to_owned(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn signal(&self, sig: libc::c_int) {
        if self.pid() > 0 {
            // SAFETY: kill(2) on our own child, no memory effects.
            unsafe { libc::kill(self.pid(), sig) };
        }
    }

    fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it (SIGINT, then SIGKILL after 10 s) and waits for it.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                // SAFETY: as above.
                unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() || std::env::var_os("CW_TEST_LOGS").is_some() {
            eprintln!(
                "----- {} ({}) -----\n{}----- end -----",
                self.what,
                self.log.display(),
                self.logs()
            );
        }
    }
}

/// FRR's zebra, bfdd and bgpd in one namespace, sharing `dir` (config `frr.conf`, sockets).
fn start_frr(ns: &Netns, dir: &Path, config: &str) -> Vec<Proc> {
    std::fs::create_dir_all(dir).unwrap();
    // FRR drops privileges to the `frr` user, which must write its sockets and logs here.
    set_mode(dir, 0o777);
    let conf = dir.join("frr.conf");
    std::fs::write(&conf, config).unwrap();
    set_mode(&conf, 0o644);
    let d = dir.to_str().unwrap();
    let zserv = format!("{d}/zserv.api");
    let conf = format!("{d}/frr.conf");
    let mut procs = Vec::new();
    for daemon in ["zebra", "bfdd", "bgpd"] {
        let pid = format!("{d}/{daemon}.pid");
        let mut args = vec![
            "-f",
            &conf,
            "-i",
            &pid,
            "-z",
            &zserv,
            "--vty_socket",
            d,
            "-P",
            "0",
            "-u",
            "frr",
            "-g",
            "frr",
        ];
        let ctl = format!("{d}/bfdd.sock");
        if daemon == "bfdd" {
            args.extend(["--bfdctl", &ctl]);
        }
        let log = dir.join(format!("{daemon}.log"));
        procs.push(Proc::spawn(
            ns,
            &format!("{daemon} in {}", ns.name()),
            &log,
            &format!("/usr/lib/frr/{daemon}"),
            &args,
        ));
        if daemon == "zebra" {
            assert!(
                wait_for(|| Path::new(&zserv).exists(), Duration::from_secs(10)),
                "zebra in {} did not open {zserv}",
                ns.name()
            );
        }
    }
    procs
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `clusterway routes ARGS`: the daemon configuration it prints.
fn routes_config(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("routes")
        .args(args)
        .output()
        .expect("running clusterway routes");
    assert!(
        out.status.success(),
        "clusterway routes {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The next hops of `prefix` in the router's kernel table.
fn next_hops(rt: &Netns, prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", rt.name(), "-4", "route", "show", "exact", prefix])
        .output()
        .expect("ip route");
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut hops: Vec<String> = words
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_string())
        .collect();
    hops.sort();
    hops
}

/// Which gateway a `GET /ip` answer came through.
fn gateway_of(body: &str) -> Option<usize> {
    GW_POD_SIDE.iter().position(|a| body.trim() == *a)
}

/// One new connection of the load.
#[derive(Debug, Clone)]
struct Attempt {
    at: Instant,
    /// `Err(true)`: the connection could not be opened; `Err(false)`: it was opened, then
    /// lost (the flow was on a gateway that left); `Ok(gateway)`.
    result: Result<Option<usize>, bool>,
    /// What went wrong, for the failure message.
    why: String,
}

/// New connections from the client, one every 10 ms (100/s), until `stop`.
fn load(
    cl: &Netns,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<Vec<Attempt>>> {
    cl.spawn(move || {
        let mut out = Vec::new();
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let at = Instant::now();
            // http_get_here names a failed connect `connect`; anything later is a lost flow.
            let (result, why) = match http_get_here(WEB, "/ip", Duration::from_secs(1)) {
                Ok(r) if r.status == 200 => (Ok(gateway_of(&r.text())), String::new()),
                Ok(r) => (Err(false), format!("HTTP {}", r.status)),
                Err(e) => (Err(e.to_string() == "connect"), format!("{e:#}")),
            };
            out.push(Attempt { at, result, why });
            next += Duration::from_millis(10);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            } else {
                next = Instant::now();
            }
        }
        out
    })
    .expect("starting the load in the client namespace")
}

const SNAPSHOT: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: fleet}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: fleet
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.244.0.10]
  conditions: {ready: true}
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: fleet}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-1
  namespace: fleet
  labels: {kubernetes.io/service-name: api}
addressType: IPv4
endpoints:
- addresses: [10.244.0.10]
  conditions: {ready: true}
ports: [{name: http, port: 8080, protocol: TCP}]
";

struct Fleet {
    // Field order is drop order: processes first, then the namespaces, then the files.
    gateways: [Option<Proc>; 2],
    daemons: Vec<Proc>,
    _backend: Proc,
    cl: Netns,
    rt: Netns,
    gw: [Netns; 2],
    _pd: Netns,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn build() -> Fleet {
        for tool in ["bird", "birdc", "/usr/lib/frr/bgpd", "vtysh"] {
            let found = if tool.starts_with('/') {
                Path::new(tool).exists()
            } else {
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            assert!(
                found,
                "{tool} is missing: install Debian's bird2 and frr (scripts/test.sh does)"
            );
        }
        let p = clusterway::lab::netns::unique_prefix();
        let mk = |s: &str| Netns::create(&format!("{p}-{s}")).expect("creating a namespace");
        let (cl, rt, g1, g2, pd) = (mk("cl"), mk("rt"), mk("g1"), mk("g2"), mk("pd"));
        let dir = tempfile::Builder::new()
            .prefix("clusterway-fleet-")
            .tempdir()
            .unwrap();
        set_mode(dir.path(), 0o755);
        let link = |a: &Netns, an: &str, aa: &str, b: &Netns, bn: &str, ba: &str| {
            a.sh(&format!(
                "ip link add {an} type veth peer name {bn} netns {b} && ip addr add {aa} dev {an} \
                 && ip link set dev {an} up",
                b = b.name()
            ))
            .unwrap();
            b.sh(&format!(
                "ip addr add {ba} dev {bn} && ip link set dev {bn} up"
            ))
            .unwrap();
        };
        link(&cl, "eth0", "10.10.0.2/24", &rt, "cl", "10.10.0.1/24");
        link(&rt, "g1", "10.11.1.1/24", &g1, "uplink", "10.11.1.2/24");
        link(&rt, "g2", "10.11.2.1/24", &g2, "uplink", "10.11.2.2/24");
        link(&g1, "pd", "10.12.1.1/24", &pd, "g1", "10.12.1.2/24");
        link(&g2, "pd", "10.12.2.1/24", &pd, "g2", "10.12.2.2/24");
        cl.sh("ip route add default via 10.10.0.1").unwrap();
        for (k, g) in [&g1, &g2].into_iter().enumerate() {
            g.sh(&format!(
                "ip route add default via {} && ip route add 10.244.0.0/16 via 10.12.{}.2 \
                 && sysctl -qw net.ipv4.ip_forward=1",
                ROUTER_UPLINK[k],
                k + 1
            ))
            .unwrap();
        }
        pd.sh("ip addr add 10.244.0.10/32 dev lo").unwrap();
        // Layer-4 hashing on the router only: flows from many client ports spread.
        rt.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1")
            .unwrap();

        let backend = Proc::spawn(
            &pd,
            "demo backend",
            &dir.path().join("backend.log"),
            BIN,
            &[
                "demo-backend",
                "--name",
                "pod",
                "--http",
                "10.244.0.10:8080",
            ],
        );

        // The router: BGP with both gateways, ECMP, BFD (300 ms × 3).
        let router_conf = format!(
            "hostname router\n!\nbfd\n profile fleet\n  detect-multiplier 3\n  receive-interval 300\n  transmit-interval 300\n !\n!\n\
             router bgp 65000\n bgp router-id 10.10.0.1\n no bgp ebgp-requires-policy\n\
             {n1}{n2} address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n!\n",
            n1 = neighbor(GW_UPLINK[0]),
            n2 = neighbor(GW_UPLINK[1]),
        );
        let mut daemons = start_frr(&rt, &dir.path().join("rt"), &router_conf);

        // gw1: BIRD 2, configured by `clusterway routes --format bird-bgp`.
        let bird_conf = routes_config(&[
            "--format",
            "bird-bgp",
            "--peer",
            ROUTER_UPLINK[0],
            "--peer-as",
            "65000",
            "--local-as",
            "65010",
            "--router-id",
            GW_UPLINK[0],
            "--bfd",
        ]);
        let g1dir = dir.path().join("g1");
        std::fs::create_dir_all(&g1dir).unwrap();
        std::fs::write(g1dir.join("bird.conf"), &bird_conf).unwrap();
        let p = |f: &str| g1dir.join(f).to_str().unwrap().to_owned();
        daemons.push(Proc::spawn(
            &g1,
            "bird in g1",
            &g1dir.join("bird.log"),
            "bird",
            &[
                "-f",
                "-c",
                &p("bird.conf"),
                "-s",
                &p("bird.ctl"),
                "-P",
                &p("bird.pid"),
            ],
        ));
        // gw2: FRR, configured by `clusterway routes --format frr-bgp`.
        let frr_conf = routes_config(&[
            "--format",
            "frr-bgp",
            "--peer",
            ROUTER_UPLINK[1],
            "--peer-as",
            "65000",
            "--local-as",
            "65010",
            "--router-id",
            GW_UPLINK[1],
            "--bfd",
        ]);
        daemons.extend(start_frr(&g2, &dir.path().join("g2"), &frr_conf));

        Fleet {
            gateways: [None, None],
            daemons,
            _backend: backend,
            cl,
            rt,
            gw: [g1, g2],
            _pd: pd,
            dir,
        }
    }

    fn snapshot(&self) -> PathBuf {
        self.dir.path().join("snapshot.yaml")
    }

    fn write_snapshot(&self, text: &str) {
        let tmp = self.dir.path().join(".snapshot.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.snapshot()).unwrap();
    }

    /// `clusterway run` in gateway `k`'s namespace; waits for its TUN device.
    fn start_gateway(&mut self, k: usize, args: &[&str]) {
        let log = self
            .dir
            .path()
            .join(format!("gw{}-{}.log", k + 1, unique()));
        let mut all = vec!["run", "--service-cidr", CIDR, "--status-addr", STATUS];
        all.extend_from_slice(args);
        let mut proc = Proc::spawn(&self.gw[k], &format!("gateway {}", k + 1), &log, BIN, &all);
        let ns = self.gw[k].name().to_owned();
        let up = wait_for(
            || {
                proc.exited()
                    || Command::new("ip")
                        .args(["-n", &ns, "link", "show", "dev", "cw0", "up"])
                        .output()
                        .is_ok_and(|o| !o.stdout.is_empty())
            },
            Duration::from_secs(15),
        );
        assert!(
            up && !proc.exited(),
            "gateway {} did not start:\n{}",
            k + 1,
            proc.logs()
        );
        self.gateways[k] = Some(proc);
    }

    fn gateway(&mut self, k: usize) -> &mut Proc {
        self.gateways[k].as_mut().expect("gateway running")
    }

    /// Waits until the router's BGP sessions with both gateways are established.
    fn wait_sessions(&self, timeout: Duration) {
        let vty = self.dir.path().join("rt");
        let ok = wait_for(
            || {
                let out = Command::new("vtysh")
                    .arg("--vty_socket")
                    .arg(&vty)
                    .args(["-c", "show bgp ipv4 unicast summary json"])
                    .output();
                let Ok(out) = out else { return false };
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                    return false;
                };
                GW_UPLINK
                    .iter()
                    .all(|g| v["peers"][g]["state"] == "Established")
            },
            timeout,
        );
        assert!(ok, "the router's BGP sessions did not come up");
    }

    fn hops(&self, prefix: &str) -> Vec<String> {
        next_hops(&self.rt, prefix)
    }

    /// A `vtysh` command on the router, its JSON answer (`Null` when there is none).
    fn router_vty(&self, command: &str) -> serde_json::Value {
        let out = Command::new("vtysh")
            .arg("--vty_socket")
            .arg(self.dir.path().join("rt"))
            .args(["-c", command])
            .output()
            .expect("vtysh");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Waits until the router has both gateways again, and fails if it had gateway `k`
    /// while `k`'s `/readyz` did not yet say ready. The router's table is read before
    /// `/readyz` each time (readiness only grows while a gateway starts), so a next hop seen
    /// with `/readyz` still failing right after was announced before the gateway was ready.
    fn wait_announced_when_ready(&self, k: usize) {
        let status: SocketAddr = STATUS.parse().unwrap();
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            let announced = self.hops(CIDR).contains(&GW_UPLINK[k].to_string());
            let readyz = http_get(&self.gw[k], status, "/readyz");
            let ready = readyz.as_ref().is_ok_and(|r| r.status == 200);
            polls += 1;
            assert!(
                !announced || ready,
                "gw{} announced before it was ready: /readyz {:?}",
                k + 1,
                readyz.map(|r| (r.status, r.text()))
            );
            if announced && self.both_hops() {
                eprintln!(
                    "gw{} announced again after {:?}, ready first ({polls} polls)",
                    k + 1,
                    start.elapsed()
                );
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "gw{} was not announced again: {:?}",
                k + 1,
                self.hops(CIDR)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn both_hops(&self) -> bool {
        self.hops(CIDR) == [GW_UPLINK[0], GW_UPLINK[1]]
    }
}

fn neighbor(addr: &str) -> String {
    format!(
        " neighbor {addr} remote-as 65010\n neighbor {addr} timers 3 9\n neighbor {addr} timers connect 5\n neighbor {addr} bfd profile fleet\n"
    )
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn summary(attempts: &[Attempt]) -> String {
    let n = attempts.len();
    let refused = attempts.iter().filter(|a| a.result == Err(true)).count();
    let lost = attempts.iter().filter(|a| a.result == Err(false)).count();
    let via = |k| attempts.iter().filter(|a| a.result == Ok(Some(k))).count();
    let first = attempts.first().map(|a| a.at);
    let failed: Vec<String> = attempts
        .iter()
        .filter(|a| a.result.is_err())
        .take(10)
        .map(|a| {
            let at = first.map_or(Duration::ZERO, |f| a.at.duration_since(f));
            format!("{at:.2?}: {}", a.why)
        })
        .collect();
    format!(
        "{n} new connections: {} via gw1, {} via gw2, {refused} could not connect, {lost} lost after connecting{}",
        via(0),
        via(1),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" (from the first: {})", failed.join("; "))
        }
    )
}

#[test]
fn gateways_are_announced_spread_drained_and_failed_over() {
    let mut f = Fleet::build();
    f.write_snapshot(SNAPSHOT);
    f.wait_sessions(Duration::from_secs(40));

    // Not before a gateway's first table: a gateway whose API server never answers has its
    // TUN device up but announces nothing.
    let kubeconfig = f.dir.path().join("unreachable.kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         users: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n\
         current-context: c\n",
    )
    .unwrap();
    f.start_gateway(0, &["--kubeconfig", kubeconfig.to_str().unwrap()]);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert!(
            f.hops(CIDR).is_empty(),
            "announced before the first table: {:?}",
            f.hops(CIDR)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    f.gateway(0).stop();

    // Both gateways ready: the router has both as next hops of the prefix.
    let snap = f.snapshot().to_str().unwrap().to_owned();
    f.start_gateway(0, &["--from-file", &snap, "--drain-timeout", "3s"]);
    f.start_gateway(1, &["--from-file", &snap]);
    assert!(
        wait_for(|| f.both_hops(), Duration::from_secs(30)),
        "the router did not learn {CIDR} from both gateways: {:?}",
        f.hops(CIDR)
    );

    // Flows from many client ports reach both gateways.
    let mut seen = [0usize; 2];
    for _ in 0..40 {
        let r = http_get(&f.cl, WEB, "/ip").expect("GET through the fleet");
        if let Some(k) = gateway_of(&r.text()) {
            seen[k] += 1;
        }
    }
    eprintln!("40 connections: {} via gw1, {} via gw2", seen[0], seen[1]);
    assert!(seen[0] > 0 && seen[1] > 0, "ECMP did not spread: {seen:?}");

    // `clusterway check` asks each gateway host's daemon whether it has the routes.
    let g1dir = f.dir.path().join("g1");
    let g2dir = f.dir.path().join("g2");
    for (k, flag, path) in [
        (0, "--bird-socket", g1dir.join("bird.ctl")),
        (1, "--frr-vty-dir", g2dir),
    ] {
        let out = f.gw[k]
            .exec(BIN, ["check", "--from-file", &snap, "--json", flag])
            .arg(&path)
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "check --json: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let daemon = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "routing daemon announces")
            .unwrap_or_else(|| panic!("no daemon check: {report:#}"))
            .clone();
        assert_eq!(daemon["severity"], "ok", "gw{}: {daemon}", k + 1);
        assert!(
            daemon["detail"]
                .as_str()
                .unwrap()
                .contains("has all 1 of the gateway's routes"),
            "{daemon}"
        );
    }
    // Without a daemon it is a warning, not a failure.
    let out =
        f.cl.exec(
            BIN,
            [
                "check",
                "--from-file",
                &snap,
                "--json",
                "--bird-socket",
                "/nonexistent/bird.ctl",
            ],
        )
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "routing daemon announces"
                && c["severity"] == "warning"
                && c["detail"].as_str().unwrap().contains("no BIRD or FRR")),
        "{report:#}"
    );

    // The status API and metrics say what is announced, and since when.
    let status_addr: SocketAddr = STATUS.parse().unwrap();
    let metrics = http_get(&f.gw[0], status_addr, "/metrics").unwrap().text();
    assert!(
        metrics.contains("clusterway_route_announced{prefix=\"10.96.0.0/16\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("clusterway_route_changes_total 1"),
        "{metrics}"
    );
    let api: serde_json::Value = serde_json::from_slice(
        &http_get(&f.gw[0], status_addr, "/api/v1/status")
            .unwrap()
            .body,
    )
    .unwrap();
    let p = &api["announce"]["prefixes"][0];
    assert_eq!(p["prefix"], "10.96.0.0/16", "{api}");
    assert_eq!(p["state"], "announced", "{api}");
    assert!(p["since"].as_u64().unwrap() > 0);
    let events: serde_json::Value = serde_json::from_slice(
        &http_get(&f.gw[0], status_addr, "/api/v1/events")
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(
        events.to_string().contains("10.96.0.0/16 announced"),
        "no announcement event: {events}"
    );

    // SIGTERM under 100 new connections per second for 10 s: the routes go first, /readyz
    // says draining, the process exits after the router has dropped it, no connection fails.
    let stop = Arc::new(AtomicBool::new(false));
    let load_start = Instant::now();
    let loader = load(&f.cl, stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    f.gateway(0).signal(libc::SIGTERM);
    let mut dropped = None;
    let mut exited = None;
    let mut said_draining = false;
    while exited.is_none() && t0.elapsed() < Duration::from_secs(15) {
        if dropped.is_none() && f.hops(CIDR) == [GW_UPLINK[1]] {
            dropped = Some(t0.elapsed());
        }
        if !said_draining {
            said_draining = http_get(&f.gw[0], status_addr, "/readyz")
                .is_ok_and(|r| r.status == 503 && r.text().starts_with("draining"))
                && http_get(&f.gw[0], status_addr, "/metrics").is_ok_and(|r| {
                    r.text()
                        .contains("clusterway_route_announced{prefix=\"10.96.0.0/16\"} 0")
                })
                && http_get(&f.gw[0], status_addr, "/api/v1/status").is_ok_and(|r| {
                    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    v["announce"]["draining"] == true
                        && v["announce"]["prefixes"][0]["state"] == "draining"
                });
        }
        if f.gateway(0).exited() {
            exited = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The stream goes on past the exit, to 10 s in all.
    let end = load_start + Duration::from_secs(10);
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    let attempts = loader.join().unwrap().unwrap();
    eprintln!(
        "SIGTERM: router dropped gw1 after {dropped:?}, process exited after {exited:?}; {}",
        summary(&attempts)
    );
    // A steady stream, not a trickle: 100/s for 10 s, with room for a busy machine.
    assert!(
        attempts.len() >= 800,
        "the load did not keep up 100 new connections/s: {}",
        summary(&attempts)
    );
    let logs = f.gateway(0).logs();
    assert!(
        said_draining,
        "/readyz, /metrics and the API never all said draining; log:\n{logs}"
    );
    let (Some(dropped), Some(exited)) = (dropped, exited) else {
        panic!("SIGTERM: dropped {dropped:?}, exited {exited:?}; log:\n{logs}");
    };
    assert!(dropped < exited, "the router still had gw1 when it exited");
    assert!(
        attempts.iter().all(|a| a.result.is_ok()),
        "connections failed during the drain: {}",
        summary(&attempts)
    );
    assert!(attempts.iter().any(|a| a.result == Ok(Some(0))));

    // A restarted gateway is announced again, and only once ready.
    f.start_gateway(0, &["--from-file", &snap]);
    f.wait_announced_when_ready(0);

    // The TUN device down: the gateway cannot forward, its route goes; up again: back.
    let t0 = Instant::now();
    f.gw[0].sh("ip link set dev cw0 down").unwrap();
    assert!(
        wait_for(|| f.hops(CIDR) == [GW_UPLINK[1]], Duration::from_secs(10)),
        "gw1 stayed announced with its TUN device down: {:?}",
        f.hops(CIDR)
    );
    let down = t0.elapsed();
    let t0 = Instant::now();
    f.gw[0].sh("ip link set dev cw0 up").unwrap();
    assert!(
        wait_for(|| f.both_hops(), Duration::from_secs(30)),
        "gw1 was not announced again with its TUN device up: {:?}",
        f.hops(CIDR)
    );
    eprintln!(
        "TUN down: router dropped gw1 after {down:?}; up: announced again after {:?}",
        t0.elapsed()
    );

    // SIGKILL of gw2 (FRR): the TUN device goes with the process, the kernel drops its routes,
    // zebra and BGP withdraw them; new connections succeed again within 2 s.
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(&f.cl, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    f.gateway(1).signal(libc::SIGKILL);
    let withdrawn = wait_for(|| f.hops(CIDR) == [GW_UPLINK[0]], Duration::from_secs(10));
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let attempts = loader.join().unwrap().unwrap();
    eprintln!(
        "SIGKILL: router dropped gw2 after {took:?}; {}",
        summary(&attempts)
    );
    assert!(
        withdrawn,
        "gw2's route stayed after SIGKILL: {:?}",
        f.hops(CIDR)
    );
    // Nothing of gw2 was left on its host to announce: no TUN device, no route of protocol 75.
    let left = Command::new("ip")
        .args([
            "-n",
            f.gw[1].name(),
            "route",
            "show",
            "table",
            "all",
            "proto",
            "75",
        ])
        .output()
        .unwrap();
    assert!(
        left.status.success() && left.stdout.is_empty(),
        "routes of protocol 75 left after SIGKILL: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    let tun = Command::new("ip")
        .args(["-n", f.gw[1].name(), "link", "show", "dev", "cw0"])
        .output()
        .unwrap();
    assert!(!tun.status.success(), "cw0 outlived its process");
    let late: Vec<_> = attempts
        .iter()
        .filter(|a| a.at >= t0 + Duration::from_secs(2))
        .collect();
    assert!(!late.is_empty());
    assert!(
        late.iter().all(|a| a.result == Ok(Some(0))),
        "new connections still failed 2 s after SIGKILL: {}",
        summary(&attempts)
    );

    // gw2 back, then its link cut (the host "dies"): BFD takes it out within 2 s.
    f.gateway(1).stop();
    f.start_gateway(1, &["--from-file", &snap]);
    f.wait_announced_when_ready(1);
    let t0 = Instant::now();
    f.gw[1]
        .sh(&format!("ip addr del {}/24 dev uplink", GW_UPLINK[1]))
        .unwrap();
    let gone = wait_for(|| f.hops(CIDR) == [GW_UPLINK[0]], Duration::from_secs(2));
    eprintln!("link cut: router dropped gw2 after {:?}", t0.elapsed());
    assert!(
        gone,
        "BFD did not take gw2 out within 2 s: {:?}",
        f.hops(CIDR)
    );
    // BFD, not the BGP hold time (9 s), took it out: the router's BFD session is down.
    let bfd = f.router_vty("show bfd peers json");
    let peer = bfd
        .as_array()
        .and_then(|a| a.iter().find(|p| p["peer"] == GW_UPLINK[1]))
        .unwrap_or_else(|| panic!("no BFD session with gw2 on the router: {bfd}"));
    assert_eq!(peer["status"], "down", "{peer}");

    // Per-Service: a host route per ClusterIP with endpoints; a Service whose endpoints go
    // away is withdrawn, and comes back with them.
    f.gateway(0).stop();
    f.start_gateway(0, &["--from-file", &snap, "--announce", "per-service"]);
    let api = "10.96.0.20/32";
    assert!(
        wait_for(|| f.hops(api) == [GW_UPLINK[0]], Duration::from_secs(30)),
        "per-service: {api} not announced: {:?}",
        f.hops(api)
    );
    let without_api = SNAPSHOT.replace(
        "  name: api-1\n  namespace: fleet\n  labels: {kubernetes.io/service-name: api}\naddressType: IPv4\nendpoints:\n- addresses: [10.244.0.10]\n  conditions: {ready: true}\n",
        "  name: api-1\n  namespace: fleet\n  labels: {kubernetes.io/service-name: api}\naddressType: IPv4\nendpoints: []\n",
    );
    assert_ne!(without_api, SNAPSHOT);
    f.write_snapshot(&without_api);
    assert!(
        wait_for(|| f.hops(api).is_empty(), Duration::from_secs(20)),
        "per-service: {api} stayed without endpoints"
    );
    assert_eq!(
        f.hops("10.96.0.10/32"),
        [GW_UPLINK[0]],
        "web keeps its route"
    );
    f.write_snapshot(SNAPSHOT);
    assert!(
        wait_for(|| f.hops(api) == [GW_UPLINK[0]], Duration::from_secs(20)),
        "per-service: {api} did not come back with its endpoints"
    );
    let logs = f.gateway(0).logs();
    assert!(
        logs.contains("announcement changed prefix=10.96.0.20/32 state=\"withdrawn\""),
        "{logs}"
    );

    for g in f.gateways.iter_mut().flatten() {
        g.stop();
    }
    for d in &mut f.daemons {
        d.stop();
    }
}

/// `ip route show ARGS` in `ns`, one route a line; empty when the table does not exist (yet).
fn kernel_routes(ns: &Netns, args: &str) -> String {
    ns.sh(&format!("ip -4 route show {args} 2>/dev/null || true"))
        .unwrap()
}

/// `clusterway run --route-table 100`: the routes live in table 100, not main, with the
/// announced metric (75) and, while draining, the other one (4075); BIRD (`kernel table 100`)
/// and FRR (`ip import-table 100`), configured by `clusterway routes --route-table 100`, pick
/// up exactly the announced ones. One gateway per daemon, each in a namespace of its own;
/// the BGP peer is never there (the daemons' tables are read, not a router's).
#[test]
fn a_route_table_of_its_own_is_what_bird_and_frr_pick_up() {
    let p = clusterway::lab::netns::unique_prefix();
    let dir = tempfile::Builder::new()
        .prefix("clusterway-table-")
        .tempdir()
        .unwrap();
    set_mode(dir.path(), 0o755);
    let snap = dir.path().join("snapshot.yaml");
    std::fs::write(&snap, SNAPSHOT).unwrap();
    let snap = snap.to_str().unwrap().to_owned();
    let bgp = |format: &str| {
        routes_config(&[
            "--format",
            format,
            "--peer",
            "10.11.1.1",
            "--peer-as",
            "65000",
            "--local-as",
            "65010",
            "--router-id",
            "10.11.1.2",
            "--route-table",
            "100",
        ])
    };
    // Each format says on stderr what a table of its own costs with its daemon.
    for (format, warning) in [
        ("bird-bgp", "BIRD only reads this table"),
        ("frr-bgp", "FRR keeps announcing an imported table's routes"),
    ] {
        let out = Command::new(BIN)
            .args(["routes", "--format", format, "--peer", "10.11.1.1"])
            .args(["--peer-as", "65000", "--local-as", "65010"])
            .args(["--router-id", "10.11.1.2", "--route-table", "100"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(warning), "{format}: {stderr}");
        let main = Command::new(BIN)
            .args(["routes", "--format", format, "--peer", "10.11.1.1"])
            .args(["--peer-as", "65000", "--local-as", "65010"])
            .args(["--router-id", "10.11.1.2"])
            .output()
            .unwrap();
        assert!(main.status.success());
        assert!(
            !String::from_utf8_lossy(&main.stderr).contains(warning),
            "{format} warns about the main table"
        );
    }
    let bird_ns = Netns::create(&format!("{p}-tb")).unwrap();
    let frr_ns = Netns::create(&format!("{p}-tf")).unwrap();
    for ns in [&bird_ns, &frr_ns] {
        ns.sh("ip link add uplink type veth peer name uplink-peer \
             && ip addr add 10.11.1.2/24 dev uplink && ip link set dev uplink-peer up \
             && ip link set dev uplink up")
            .unwrap();
    }

    // BIRD, then FRR, each beside a gateway of its own.
    let bdir = dir.path().join("bird");
    std::fs::create_dir_all(&bdir).unwrap();
    std::fs::write(bdir.join("bird.conf"), bgp("bird-bgp")).unwrap();
    let ctl = bdir.join("bird.ctl").to_str().unwrap().to_owned();
    let conf = bdir.join("bird.conf").to_str().unwrap().to_owned();
    let mut daemons = vec![Proc::spawn(
        &bird_ns,
        "bird",
        &bdir.join("bird.log"),
        "bird",
        &["-f", "-c", &conf, "-s", &ctl],
    )];
    daemons.extend(start_frr(&frr_ns, &dir.path().join("frr"), &bgp("frr-bgp")));
    let mut gateways: Vec<Proc> = [&bird_ns, &frr_ns]
        .iter()
        .enumerate()
        .map(|(k, ns)| {
            Proc::spawn(
                ns,
                &format!("gateway beside {}", ["BIRD", "FRR"][k]),
                &dir.path().join(format!("gw{k}.log")),
                BIN,
                &[
                    "run",
                    "--from-file",
                    &snap,
                    "--service-cidr",
                    CIDR,
                    "--status-addr",
                    STATUS,
                    "--route-table",
                    "100",
                    "--drain-timeout",
                    "30s",
                ],
            )
        })
        .collect();

    let bird_has = || {
        let out = Command::new("birdc")
            .args(["-s", &ctl, "show", "route", "for", "10.96.0.1", "all"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(CIDR)
    };
    let vty = dir.path().join("frr");
    let frr_json = |cmd: &str| -> serde_json::Value {
        let out = Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&vty)
            .args(["-c", cmd])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    // BGP's table: the prefix is there when FRR would announce it.
    let frr_has = || {
        frr_json(&format!("show bgp ipv4 unicast {CIDR} json"))["paths"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    };

    for (k, ns) in [&bird_ns, &frr_ns].into_iter().enumerate() {
        assert!(
            wait_for(
                || kernel_routes(ns, "table 100 proto 75").contains(CIDR),
                Duration::from_secs(15)
            ),
            "gateway {k}: no route in table 100: {}",
            gateways[k].logs()
        );
        let t100 = kernel_routes(ns, "table 100 proto 75");
        assert!(
            t100.contains(&format!("{CIDR} dev cw0")) && t100.contains("metric 75"),
            "{t100}"
        );
        assert_eq!(
            kernel_routes(ns, "table main proto 75"),
            "",
            "the main table has none of the gateway's routes"
        );
    }
    assert!(
        wait_for(bird_has, Duration::from_secs(15)),
        "BIRD did not learn {CIDR} from table 100"
    );
    assert!(
        wait_for(frr_has, Duration::from_secs(15)),
        "FRR did not import {CIDR} from table 100 into BGP: {}",
        frr_json("show ip route json")
    );
    // zebra copies the imported route into the main table, which forwards.
    assert!(
        wait_for(
            || kernel_routes(&frr_ns, &format!("table main {CIDR}")).contains("dev cw0"),
            Duration::from_secs(5)
        ),
        "FRR's copy of the route is not in the main table: {}",
        kernel_routes(&frr_ns, "table main")
    );

    // SIGTERM: the routes stay in table 100 with metric 4075 (still forwarding), and
    // neither daemon has them any more.
    for g in &gateways {
        g.signal(libc::SIGTERM);
    }
    for (k, ns) in [&bird_ns, &frr_ns].into_iter().enumerate() {
        assert!(
            wait_for(
                || kernel_routes(ns, "table 100 proto 75").contains("metric 4075"),
                Duration::from_secs(5)
            ),
            "gateway {k} draining: {}",
            kernel_routes(ns, "table 100 proto 75")
        );
    }
    assert!(
        wait_for(|| !bird_has(), Duration::from_secs(5)),
        "BIRD still has {CIDR} while the gateway drains"
    );
    assert!(
        wait_for(|| !frr_has(), Duration::from_secs(5)),
        "FRR still announces {CIDR} while the gateway drains"
    );
    // Gone from the daemons' tables, not the daemons gone.
    for d in &mut daemons {
        assert!(!d.exited(), "{} stopped:\n{}", d.what, d.logs());
    }
    assert!(
        frr_json("show bgp ipv4 unicast summary json")["peers"]["10.11.1.1"].is_object(),
        "FRR's bgpd does not answer"
    );
    // The second SIGTERM stops at once (the drain had 30 s left), and nothing is left.
    for g in &gateways {
        g.signal(libc::SIGTERM);
    }
    for (k, ns) in [&bird_ns, &frr_ns].into_iter().enumerate() {
        assert!(
            wait_for(|| gateways[k].exited(), Duration::from_secs(5)),
            "gateway {k} did not stop at the second SIGTERM"
        );
        assert_eq!(kernel_routes(ns, "table 100 proto 75"), "");
    }
    for g in &mut gateways {
        g.stop();
    }
    for d in &mut daemons {
        d.stop();
    }
}
