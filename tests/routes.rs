//! `clusterway routes`: the router configurations it prints, its errors, and the default
//! next hop found inside a network namespace of the test's own.

mod common;

use std::process::{Command, Output};

use common::{Netns, BIN};

fn routes(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("routes")
        .args(args)
        .output()
        .expect("running clusterway routes")
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "clusterway routes failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

const DUAL: [&str; 8] = [
    "--service-cidr",
    "10.96.0.0/12",
    "--service-cidr",
    "fd00:10:96::/112",
    "--gateway-address",
    "192.168.1.10",
    "--gateway-address",
    "2001:db8:1::10",
];

#[test]
fn every_format_for_a_dual_stack_cidr_pair() {
    let out = stdout_ok(&routes(&DUAL));
    assert_eq!(
        out,
        "\
# Linux (iproute2, as root)
ip route add 10.96.0.0/12 via 192.168.1.10
ip -6 route add fd00:10:96::/112 via 2001:db8:1::10

! Cisco IOS (configure terminal)
ip route 10.96.0.0 255.240.0.0 192.168.1.10
ipv6 route fd00:10:96::/112 2001:db8:1::10

# Juniper Junos (configure)
set routing-options static route 10.96.0.0/12 next-hop 192.168.1.10
set routing-options rib inet6.0 static route fd00:10:96::/112 next-hop 2001:db8:1::10

! FRR (vtysh, configure terminal)
ip route 10.96.0.0/12 192.168.1.10
ipv6 route fd00:10:96::/112 2001:db8:1::10

# BIRD 2 (bird.conf)
protocol static clusterway4 {
  ipv4;
  route 10.96.0.0/12 via 192.168.1.10;
}
protocol static clusterway6 {
  ipv6;
  route fd00:10:96::/112 via 2001:db8:1::10;
}
"
    );
}

#[test]
fn one_format_prints_only_its_lines() {
    let mut args = DUAL.to_vec();
    args.extend(["--format", "ios"]);
    assert_eq!(
        stdout_ok(&routes(&args)),
        "ip route 10.96.0.0 255.240.0.0 192.168.1.10\nipv6 route fd00:10:96::/112 2001:db8:1::10\n"
    );
    let out = stdout_ok(&routes(&[
        "--service-cidr",
        "172.20.0.0/16",
        "--gateway-address",
        "10.0.0.5",
        "--format",
        "junos",
    ]));
    assert_eq!(
        out,
        "set routing-options static route 172.20.0.0/16 next-hop 10.0.0.5\n"
    );
}

#[test]
fn from_file_gives_one_host_route_per_cluster_ip() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("cluster.yaml");
    let pods = [(
        "10.244.1.10".parse().unwrap(),
        "fd00:10:244:1::a".parse().unwrap(),
    )];
    std::fs::write(&snapshot, clusterway::lab::demo_snapshot(&pods)).unwrap();
    let file = snapshot.to_str().unwrap();
    let out = stdout_ok(&routes(&[
        "--from-file",
        file,
        "--gateway-address",
        "192.168.77.1",
        "--gateway-address",
        "fd77::1",
        "--format",
        "linux",
    ]));
    assert_eq!(
        out,
        "\
ip route add 10.96.0.10/32 via 192.168.77.1
ip route add 10.96.0.20/32 via 192.168.77.1
ip route add 10.96.0.53/32 via 192.168.77.1
ip route add 10.96.0.99/32 via 192.168.77.1
ip -6 route add fd00:10:96::10/128 via fd77::1
ip -6 route add fd00:10:96::53/128 via fd77::1
"
    );
    // With Service CIDRs the file does not matter, as for `clusterway run`.
    let out = stdout_ok(&routes(&[
        "--from-file",
        file,
        "--service-cidr",
        "10.96.0.0/16",
        "--gateway-address",
        "192.168.77.1",
        "--format",
        "frr",
    ]));
    assert_eq!(out, "ip route 10.96.0.0/16 192.168.77.1\n");
}

#[test]
fn bad_input_is_an_error_before_anything_is_printed() {
    let cases: [(&[&str], &str); 6] = [
        (&["--service-cidr", "10.96.0.0/33"], "not a CIDR"),
        (&["--service-cidr", "10.96.0.1/12"], "host bits"),
        (&[], "--service-cidr"),
        (
            &[
                "--service-cidr",
                "10.96.0.0/12",
                "--gateway-address",
                "fe80::1",
            ],
            "cannot be a next hop",
        ),
        (
            &[
                "--service-cidr",
                "10.96.0.0/12",
                "--gateway-address",
                "10.0.0.1",
                "--gateway-address",
                "10.0.0.2",
            ],
            "twice",
        ),
        (
            &["--from-file", "/nonexistent/cluster.yaml"],
            "/nonexistent/cluster.yaml",
        ),
    ];
    for (args, why) in cases {
        let out = routes(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}

/// Inside a namespace whose default routes leave from 10.1.2.3 and 2001:db8:5::3, those
/// are the next hops; without default routes the routes are commented out, with a warning.
#[test]
fn default_next_hop_is_the_source_of_the_default_route() {
    let prefix = clusterway::lab::netns::unique_prefix();
    let ns = Netns::create(&format!("{prefix}-rt")).expect("creating a namespace");
    ns.sh(
        "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 && \
         ip link add up0 type veth peer name up1 && ip link set up1 up && ip link set up0 up && \
         ip addr add 10.1.2.3/24 dev up0 && ip -6 addr add 2001:db8:5::3/64 dev up0 nodad",
    )
    .unwrap();
    let run = |ns: &Netns| {
        ns.exec(BIN, ["routes", "--service-cidr", "10.96.0.0/12"])
            .args(["--service-cidr", "fd00:10:96::/112", "--format", "linux"])
            .output()
            .expect("running clusterway routes in the namespace")
    };

    let out = run(&ns);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "# no IPv4 address for this gateway (pass --gateway-address): 10.96.0.0/12 not routed\n\
         # no IPv6 address for this gateway (pass --gateway-address): fd00:10:96::/112 not routed\n"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--gateway-address"));

    ns.sh("ip route add default via 10.1.2.1 && ip -6 route add default via 2001:db8:5::1")
        .unwrap();
    assert_eq!(
        stdout_ok(&run(&ns)),
        "ip route add 10.96.0.0/12 via 10.1.2.3\nip -6 route add fd00:10:96::/112 via 2001:db8:5::3\n"
    );

    // Given addresses are the whole answer: the other family is not routed via an address
    // detected here (it may not be the one the routers reach).
    let out = ns
        .exec(BIN, ["routes", "--service-cidr", "10.96.0.0/12"])
        .args(["--service-cidr", "fd00:10:96::/112", "--format", "bird"])
        .args(["--gateway-address", "192.0.2.44"])
        .output()
        .unwrap();
    assert_eq!(
        stdout_ok(&out),
        "protocol static clusterway4 {\n  ipv4;\n  route 10.96.0.0/12 via 192.0.2.44;\n}\n\
         # no IPv6 address for this gateway (pass --gateway-address): fd00:10:96::/112 not routed\n"
    );
}
