//! Smoke test of the lab topology and the demo backends, without the gateway: the client
//! reaches pod IPs by plain routing through the gateway namespace (HTTP and UDP, IPv4 and
//! IPv6), and every namespace is gone after the topology is dropped. Then `clusterway lab`
//! itself: the name commands it prints (dig against its DNS server, curl by name) work as
//! printed. Needs root (and dig, curl for the last).

mod common;

use std::net::SocketAddr;

use clusterway::lab::{BACKEND_HTTP_PORT, BACKEND_UDP_PORT};
use common::*;

fn check_routing(topo: &Topology) {
    for k in 1..=topo.pod_count() {
        for v6 in [false, true] {
            let ip = topo.pod_ip(k, v6);
            let body = tcp_get(topo.client(), SocketAddr::new(ip, BACKEND_HTTP_PORT))
                .unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(body, format!("pod-{k}\n"));

            // The pod sees the client's own address: routing, no NAT.
            let seen = http_get(topo.client(), SocketAddr::new(ip, BACKEND_HTTP_PORT), "/ip")
                .unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(seen.text(), format!("{}\n", topo.client_ip(v6)));
            assert_eq!(seen.header("X-Backend"), Some(format!("pod-{k}").as_str()));

            let big = http_get(
                topo.client(),
                SocketAddr::new(ip, BACKEND_HTTP_PORT),
                "/bytes/1000000",
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(big.body.len(), 1_000_000);

            let echo = udp_roundtrip(topo.client(), SocketAddr::new(ip, BACKEND_UDP_PORT), b"hi")
                .unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(echo, format!("pod-{k} hi"));

            ping(topo.client(), ip).unwrap_or_else(|e| panic!("{e:#}"));
        }
    }
}

#[test]
fn client_reaches_pods_by_routing_and_everything_is_removed() {
    let topo = topology(2);
    let prefix = topo.prefix().to_owned();
    assert_eq!(namespaces_with_prefix(&prefix).len(), 4);
    {
        let _backends = start_backends_in_process(&topo);
        check_routing(&topo);
    }
    drop(topo);
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
}

/// The same through `clusterway demo-backend` processes, as the lab and the gateway tests
/// run them. Skipped (passes with a note) while the binary has no `demo-backend` subcommand.
#[test]
fn demo_backend_processes_serve_v4_and_v6() {
    let has_subcommand = std::process::Command::new(BIN)
        .args(["demo-backend", "--help"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--http"));
    if !has_subcommand {
        eprintln!("skipped: {BIN} has no demo-backend subcommand yet");
        return;
    }
    let topo = topology(3);
    let prefix = topo.prefix().to_owned();
    let backends = start_backends(&topo);
    check_routing(&topo);
    drop(backends);
    drop(topo);
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
}

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    let prefix = std::sync::Mutex::new(String::new());
    let sleeper = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let topo = topology(1);
        *prefix.lock().unwrap() = topo.prefix().to_owned();
        // Something inside the namespace keeps running; Drop must kill it.
        *sleeper.lock().unwrap() = Some(topo.pod(1).exec("sleep", ["60"]).spawn().unwrap());
        panic!("deliberate");
    });
    assert!(result.is_err());
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
    let status = sleeper.into_inner().unwrap().unwrap().wait().unwrap();
    assert!(!status.success(), "the process in the namespace was killed");
}

/// `clusterway lab`, stopped with SIGINT (its own cleanup) when dropped.
/// The lab shows names: `clusterway lab` starts the DNS server, and every `dig` command it
/// prints (and the `curl --resolve` by name) works as printed, answering what the demo
/// snapshot says; no tool is reported missing here (they are installed).
#[test]
fn the_lab_s_printed_name_commands_work() {
    use std::process::Command;
    use std::time::{Duration, Instant};

    let prefix = clusterway::lab::netns::unique_prefix();
    let mut lab = LabProcess::start(&prefix, false);
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        assert!(
            Instant::now() < deadline,
            "the lab never printed its instructions:\n{}",
            printed.join("\n")
        );
        let Ok(line) = lab.lines.recv_timeout(Duration::from_millis(200)) else {
            assert!(
                !lab.exited(),
                "the lab exited during start:\n{}",
                printed.join("\n")
            );
            continue;
        };
        let done = line.contains("Ctrl-C stops everything");
        printed.push(line);
        if done {
            break;
        }
    }
    let text = printed.join("\n");
    assert!(!text.contains("is not installed here"), "{text}");
    let dns_ip = clusterway::lab::LAB_DNS.split(':').next().unwrap();
    // The printed command without `sudo ` and without its comment.
    let command = |line: &str| {
        let cmd = line.trim().strip_prefix("sudo ").unwrap_or(line.trim());
        cmd.split("  #").next().unwrap().trim().to_string()
    };
    let run = |cmd: &str| {
        let out = Command::new("sh")
            .args(["-c", cmd])
            .output()
            .expect("running a printed command");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{cmd}: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let digs: Vec<String> = printed
        .iter()
        .filter(|l| l.contains(&format!("dig @{dns_ip} ")))
        .map(|l| command(l))
        .collect();
    assert!(digs.len() >= 6, "{text}");
    let pod1 = "10.244.1.10";
    for cmd in &digs {
        let out = run(cmd);
        assert!(out.contains("status: NOERROR"), "{cmd}:\n{out}");
        let answers: usize = out
            .split("ANSWER: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(answers >= 1, "{cmd}: no answer\n{out}");
        let want = if cmd.ends_with(" web.demo.svc.cluster.local A") {
            clusterway::lab::WEB_V4.to_string()
        } else if cmd.ends_with(" web.demo.svc.cluster.local AAAA") {
            clusterway::lab::WEB_V6.to_string()
        } else if cmd.contains("db-0.db.demo") {
            pod1.to_string()
        } else if cmd.contains(" -x ") || cmd.contains(" SRV") {
            // PTR of the ClusterIP, and the SRV target.
            "web.demo.svc.cluster.local.".to_string()
        } else {
            String::new()
        };
        assert!(out.contains(&want), "{cmd}: want {want}\n{out}");
    }
    // By name through the gateway (curl --resolve, as printed).
    let curl = printed
        .iter()
        .find(|l| l.contains("curl --resolve web.demo.svc.cluster.local"))
        .map(|l| command(l))
        .unwrap_or_else(|| panic!("no curl by name in:\n{text}"));
    let body = run(&format!("{curl} -sS --max-time 5"));
    assert!(body.starts_with("pod-"), "{curl}: {body:?}");
    drop(lab);
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
}
