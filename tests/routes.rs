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

/// The BGP formats' flags, and the fleet flags of `clusterway run`: each malformed value is
/// refused before anything is printed or set up, and the message names the flag.
#[test]
fn bad_bgp_and_fleet_flags_are_refused_naming_the_flag() {
    // One flag of a good command line replaced by a bad value at a time.
    let good = |format: &str| -> Vec<(&'static str, String)> {
        vec![
            ("--format", format.to_owned()),
            ("--peer", "192.0.2.1".into()),
            ("--peer-as", "65000".into()),
            ("--local-as", "65010".into()),
            ("--router-id", "192.0.2.10".into()),
        ]
    };
    for format in ["bird-bgp", "frr-bgp"] {
        let out = routes(
            &good(format)
                .iter()
                .flat_map(|(f, v)| [*f, v.as_str()])
                .collect::<Vec<_>>(),
        );
        assert!(stdout_ok(&out).contains("65010"), "{format}: the good line");
    }
    let cases: [(&str, &str, &str, &str); 10] = [
        ("bird-bgp", "--peer", "router1", "not an IP address"),
        ("bird-bgp", "--peer", "fe80::1", "link-local"),
        ("bird-bgp", "--peer-as", "0", "reserved"),
        ("frr-bgp", "--peer-as", "4294967296", "not an AS number"),
        ("bird-bgp", "--local-as", "23456", "AS_TRANS"),
        ("frr-bgp", "--local-as", "AS-1", "not an AS number"),
        ("bird-bgp", "--router-id", "2001:db8::1", "invalid value"),
        ("bird-bgp", "--route-table", "255", "local"),
        ("frr-bgp", "--route-table", "wan", "not a routing table"),
        ("frr-bgp", "--route-table", "300", "1-252"),
    ];
    for (format, flag, value, why) in cases {
        let mut line = good(format);
        match line.iter_mut().find(|(f, _)| *f == flag) {
            Some(slot) => slot.1 = value.into(),
            None => line.push((flag, value.into())),
        }
        let args: Vec<&str> = line.iter().flat_map(|(f, v)| [*f, v.as_str()]).collect();
        let out = routes(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} printed something");
        assert!(
            stderr.contains(flag) && stderr.contains(why),
            "{args:?}: {stderr}"
        );
    }
    // A flag left out is named too.
    for (flag, why) in [
        ("--peer", "at least one --peer"),
        ("--peer-as", "--peer-as N"),
        ("--local-as", "--local-as N"),
    ] {
        let line: Vec<(&str, String)> = good("bird-bgp")
            .into_iter()
            .filter(|(f, _)| *f != flag)
            .collect();
        let args: Vec<&str> = line.iter().flat_map(|(f, v)| [*f, v.as_str()]).collect();
        let out = routes(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // `clusterway run`: refused at start, before a device or a route exists (inside a
    // namespace of the test's own all the same).
    let ns = Netns::create(&format!("{}-run", clusterway::lab::netns::unique_prefix()))
        .expect("creating a namespace");
    for (flag, value, why) in [
        ("--route-table", "0", "unspecified"),
        ("--route-table", "253", "default"),
        ("--route-table", "wan", "not a routing table"),
        ("--announce", "everything", "per-service"),
        ("--drain-timeout", "soon", "not a duration"),
    ] {
        let out = ns
            .exec(BIN, ["run", "--service-cidr", "10.96.0.0/12"])
            .args(["--from-file", "/nonexistent/cluster.yaml", flag, value])
            .output()
            .expect("running clusterway run in the namespace");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "run {flag} {value} succeeded");
        assert!(
            stderr.contains(flag) && stderr.contains(why),
            "run {flag} {value}: {stderr}"
        );
        let links = ns.sh("ip -o link show").unwrap();
        assert!(!links.contains("cw0"), "run {flag} {value} made a device");
    }
}
