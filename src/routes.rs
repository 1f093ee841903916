//! `clusterway routes`: the static routes a router needs to send Service traffic to this
//! gateway, written out for Linux, Cisco IOS, Juniper Junos, FRR and BIRD 2.
//!
//! The routes are the ones the gateway itself installs on its TUN device
//! ([`crate::gateway::desired_routes`]): the `--service-cidr` ranges, or one host route per
//! exposed ClusterIP of a snapshot file. The next hop is this gateway's address, given with
//! `--gateway-address` or, by default, the host's primary address per family: the source
//! address the kernel picks towards the default route.
//!
//! Owns: nothing on the host. It reads the snapshot file and asks the kernel for a source
//! address by connecting a UDP socket (no packet is sent); it never changes a link, address
//! or route.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ipnet::IpNet;

use crate::cluster::build::BuildOptions;
use crate::cluster::table::ServiceTable;
use crate::config::parse_cidr;
use crate::gateway::desired_routes;

/// Options of `clusterway routes`.
#[derive(clap::Args, Debug, Clone)]
pub struct RoutesArgs {
    /// A Service CIDR routed to the gateway (repeatable, IPv4 and IPv6), as given to
    /// `clusterway run`.
    #[arg(long = "service-cidr", value_name = "CIDR", value_parser = parse_cidr)]
    pub service_cidrs: Vec<IpNet>,

    /// Without --service-cidr: one host route per exposed ClusterIP of this snapshot file,
    /// as `clusterway run --from-file` installs them.
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,

    /// This gateway's name for `service.kubernetes.io/service-proxy-name` (with --from-file).
    #[arg(long, value_name = "NAME")]
    pub proxy_name: Option<String>,

    /// The next hop routers use: this gateway's address (repeatable: one IPv4, one IPv6).
    /// Default: the host's primary address per family (the source of its default route).
    /// When given, only the families given are routed; the others are listed as not routed.
    #[arg(long = "gateway-address", value_name = "IP")]
    pub gateway_addresses: Vec<IpAddr>,

    /// Print only this configuration (default: all of them). `bird-bgp` and `frr-bgp` print
    /// the configuration of the *gateway host's* routing daemon instead, which announces the
    /// gateway's routes over BGP (with --peer, --peer-as, --local-as).
    #[arg(long, value_enum)]
    pub format: Option<Format>,

    // --- The gateway host's BGP daemon (--format bird-bgp|frr-bgp; src/bgp_config.rs) ---
    /// A router to peer with (repeatable).
    #[arg(long = "peer", value_name = "ADDRESS", value_parser = crate::bgp_config::parse_peer)]
    pub peers: Vec<IpAddr>,

    /// The routers' AS number.
    #[arg(long, value_name = "N", value_parser = crate::bgp_config::parse_asn)]
    pub peer_as: Option<u32>,

    /// This gateway's AS number (the same on every gateway of a fleet).
    #[arg(long, value_name = "N", value_parser = crate::bgp_config::parse_asn)]
    pub local_as: Option<u32>,

    /// The daemon's router ID (default: this host's primary IPv4 address).
    #[arg(long, value_name = "IPV4")]
    pub router_id: Option<Ipv4Addr>,

    /// The table the gateway puts its routes in (`clusterway run --route-table`).
    #[arg(long, default_value = "main", value_parser = crate::host::announce::parse_route_table, value_name = "TABLE")]
    pub route_table: u32,

    /// Run BFD with each peer (the daemon's BFD; routers then drop a dead gateway within
    /// interval × multiplier).
    #[arg(long)]
    pub bfd: bool,

    /// BFD transmit and receive interval.
    #[arg(long, default_value = "300ms", value_parser = crate::bgp_config::parse_bfd_interval, value_name = "DURATION")]
    pub bfd_interval: std::time::Duration,

    /// BFD detection multiplier.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=50), value_name = "N")]
    pub bfd_multiplier: u8,

    /// BGP hold time in seconds (keepalive a third of it); without BFD, how long a router
    /// waits for a gateway whose link died.
    #[arg(long, default_value_t = 9, value_name = "SECONDS")]
    pub hold_time: u16,

    /// The gateway's TUN device (`clusterway run --tun-name`): FRR announces the kernel
    /// routes through it.
    #[arg(long, default_value = "cw0", value_parser = crate::config::parse_ifname)]
    pub tun_name: String,
}

/// A router configuration dialect.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Linux iproute2 (`ip route add … via …`).
    Linux,
    /// Cisco IOS / IOS XE (`ip route NET MASK NEXTHOP`, `ipv6 route …`).
    Ios,
    /// Juniper Junos (`set routing-options static route …`).
    Junos,
    /// FRRouting (`vtysh`: `ip route …`, `ipv6 route …`).
    Frr,
    /// BIRD 2 (`protocol static { ipv4; route … via …; }`).
    Bird,
    /// The gateway host's BIRD 2: learn the gateway's routes, announce them over BGP.
    BirdBgp,
    /// The gateway host's FRR: import the gateway's table, announce it over BGP.
    FrrBgp,
}

impl Format {
    /// All formats, in the order they are printed.
    pub const ALL: [Format; 5] = [
        Format::Linux,
        Format::Ios,
        Format::Junos,
        Format::Frr,
        Format::Bird,
    ];

    fn title(self) -> &'static str {
        match self {
            Format::Linux => "Linux (iproute2, as root)",
            Format::Ios => "Cisco IOS (configure terminal)",
            Format::Junos => "Juniper Junos (configure)",
            Format::Frr => "FRR (vtysh, configure terminal)",
            Format::Bird => "BIRD 2 (bird.conf)",
            Format::BirdBgp => "BIRD 2 on the gateway host (bird.conf)",
            Format::FrrBgp => "FRR on the gateway host (frr.conf)",
        }
    }

    /// The comment leader of the dialect.
    fn comment(self) -> &'static str {
        match self {
            Format::Ios | Format::Frr | Format::FrrBgp => "!",
            Format::Linux | Format::Junos | Format::Bird | Format::BirdBgp => "#",
        }
    }
}

/// The next hops, at most one per family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NextHops {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl NextHops {
    /// From `--gateway-address` values: one per family, usable as a next hop.
    pub fn from_addresses(addrs: &[IpAddr]) -> Result<NextHops, String> {
        let mut hops = NextHops::default();
        for &addr in addrs {
            if !usable_next_hop(addr) {
                return Err(format!(
                    "--gateway-address {addr} cannot be a next hop (use a unicast address \
                     other hosts reach; link-local IPv6 needs an interface name)"
                ));
            }
            let dup = match addr {
                IpAddr::V4(a) => hops.v4.replace(a).is_some(),
                IpAddr::V6(a) => hops.v6.replace(a).is_some(),
            };
            if dup {
                return Err(format!(
                    "--gateway-address given twice for IPv{}: give one IPv4 and one IPv6 address",
                    if addr.is_ipv4() { 4 } else { 6 }
                ));
            }
        }
        Ok(hops)
    }

    /// The host's primary addresses: for each family, the source address the kernel would
    /// use towards a documentation address (RFC 5737 / RFC 3849), which follows the default
    /// route. Connecting a UDP socket only selects the route; nothing is sent.
    pub fn detect() -> NextHops {
        let v4 = source_towards(SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 9)));
        let v6 = source_towards(SocketAddr::from((
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            9,
        )));
        NextHops {
            v4: match v4 {
                Some(IpAddr::V4(a)) => Some(a),
                _ => None,
            },
            v6: match v6 {
                Some(IpAddr::V6(a)) => Some(a),
                _ => None,
            },
        }
    }
}

fn usable_next_hop(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            // fe80::/10: link-local, only meaningful with an interface.
            let link_local = (a.segments()[0] & 0xffc0) == 0xfe80;
            !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || link_local)
        }
    }
}

fn source_towards(dest: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if dest.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.connect(dest).ok()?;
    let ip = sock.local_addr().ok()?.ip();
    usable_next_hop(ip).then_some(ip)
}

/// The routes to print: what the gateway would install for these flags.
pub fn routes_for(args: &RoutesArgs) -> Result<BTreeSet<IpNet>> {
    let table = match (&args.from_file, args.service_cidrs.is_empty()) {
        (Some(path), true) => {
            let opts = BuildOptions {
                proxy_name: args.proxy_name.clone(),
            };
            crate::cluster::file::load(path, &opts, 1)?
        }
        (None, true) => {
            bail!("give the Service CIDRs (--service-cidr) or a snapshot (--from-file)")
        }
        // With Service CIDRs the gateway routes those and nothing else; the file is not read.
        (_, false) => ServiceTable::default(),
    };
    let routes = desired_routes(&args.service_cidrs, &table);
    if routes.is_empty() {
        bail!("the snapshot exposes no ClusterIP, so there is nothing to route");
    }
    Ok(routes)
}

/// Writes the configuration of `format` for `routes` via `hops`. Routes of a family without
/// a next hop are listed in a comment instead.
pub fn render(format: Format, routes: &BTreeSet<IpNet>, hops: NextHops) -> String {
    let mut out = String::new();
    let v4: Vec<_> = routes
        .iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
        .collect();
    let v6: Vec<_> = routes
        .iter()
        .filter_map(|n| match n {
            IpNet::V6(n) => Some(*n),
            IpNet::V4(_) => None,
        })
        .collect();
    let c = format.comment();
    if matches!(format, Format::BirdBgp | Format::FrrBgp) {
        // Not a list of static routes: the daemon learns the routes from the kernel.
        let _ = writeln!(
            out,
            "{c} the gateway host's daemon announces these: see `clusterway routes --format {} --peer …`",
            if format == Format::BirdBgp { "bird-bgp" } else { "frr-bgp" }
        );
        return out;
    }
    let missing = |out: &mut String, family: u8, nets: &[String]| {
        let _ = writeln!(
            out,
            "{c} no IPv{family} address for this gateway (pass --gateway-address): {} not routed",
            nets.join(", ")
        );
    };

    if format == Format::Bird {
        if !v4.is_empty() {
            match hops.v4 {
                Some(gw) => {
                    let _ = writeln!(out, "protocol static clusterway4 {{\n  ipv4;");
                    for n in &v4 {
                        let _ = writeln!(out, "  route {n} via {gw};");
                    }
                    out.push_str("}\n");
                }
                None => missing(&mut out, 4, &strings(&v4)),
            }
        }
        if !v6.is_empty() {
            match hops.v6 {
                Some(gw) => {
                    let _ = writeln!(out, "protocol static clusterway6 {{\n  ipv6;");
                    for n in &v6 {
                        let _ = writeln!(out, "  route {n} via {gw};");
                    }
                    out.push_str("}\n");
                }
                None => missing(&mut out, 6, &strings(&v6)),
            }
        }
        return out;
    }

    if !v4.is_empty() {
        match hops.v4 {
            Some(gw) => {
                for n in &v4 {
                    let _ = match format {
                        Format::Linux => writeln!(out, "ip route add {n} via {gw}"),
                        Format::Ios => {
                            writeln!(out, "ip route {} {} {gw}", n.network(), n.netmask())
                        }
                        Format::Junos => {
                            writeln!(out, "set routing-options static route {n} next-hop {gw}")
                        }
                        Format::Frr => writeln!(out, "ip route {n} {gw}"),
                        Format::Bird | Format::BirdBgp | Format::FrrBgp => {
                            unreachable!("handled above")
                        }
                    };
                }
            }
            None => missing(&mut out, 4, &strings(&v4)),
        }
    }
    if !v6.is_empty() {
        match hops.v6 {
            Some(gw) => {
                for n in &v6 {
                    let _ = match format {
                        Format::Linux => writeln!(out, "ip -6 route add {n} via {gw}"),
                        Format::Ios | Format::Frr => writeln!(out, "ipv6 route {n} {gw}"),
                        Format::Junos => writeln!(
                            out,
                            "set routing-options rib inet6.0 static route {n} next-hop {gw}"
                        ),
                        Format::Bird | Format::BirdBgp | Format::FrrBgp => {
                            unreachable!("handled above")
                        }
                    };
                }
            }
            None => missing(&mut out, 6, &strings(&v6)),
        }
    }
    out
}

fn strings<T: ToString>(v: &[T]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

/// Everything `clusterway routes` prints: one format, or all of them under titles.
pub fn render_all(format: Option<Format>, routes: &BTreeSet<IpNet>, hops: NextHops) -> String {
    match format {
        Some(f) => render(f, routes, hops),
        None => Format::ALL
            .iter()
            .map(|&f| format!("{} {}\n{}", f.comment(), f.title(), render(f, routes, hops)))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// The BGP options from the flags, checked (the error names the flag).
pub fn bgp_options(args: &RoutesArgs, frr: bool) -> Result<crate::bgp_config::BgpOptions> {
    let peer_as = args
        .peer_as
        .context("the BGP formats need --peer-as N (the routers' AS number)")?;
    let local_as = args
        .local_as
        .context("the BGP formats need --local-as N (this gateway's AS number)")?;
    let router_id = match args.router_id.or(NextHops::detect().v4) {
        Some(id) => id,
        None => bail!("no IPv4 address on this host to use as router ID: pass --router-id"),
    };
    let opts = crate::bgp_config::BgpOptions {
        peers: args.peers.clone(),
        peer_as,
        local_as,
        router_id,
        route_table: args.route_table,
        bfd: args.bfd.then_some(crate::bgp_config::Bfd {
            interval: args.bfd_interval,
            multiplier: args.bfd_multiplier,
        }),
        hold_time: args.hold_time,
    };
    crate::bgp_config::check(&opts, frr).map_err(anyhow::Error::msg)?;
    Ok(opts)
}

/// `clusterway routes`.
pub fn run(args: RoutesArgs) -> Result<()> {
    if let Some(f @ (Format::BirdBgp | Format::FrrBgp)) = args.format {
        let frr = f == Format::FrrBgp;
        let opts = bgp_options(&args, frr)?;
        if opts.route_table != crate::host::netlink::MAIN_TABLE {
            if frr {
                // Seen with FRR 8.4.4: `ip import-table` keeps the imported route after the
                // TUN device vanished, and BGP goes on announcing it.
                tracing::warn!(
                    table = opts.route_table,
                    "FRR keeps announcing an imported table's routes after the gateway \
                     crashes (its TUN device gone); the main table (the default) is withdrawn"
                );
            } else {
                tracing::warn!(
                    table = opts.route_table,
                    "BIRD only reads this table: the host forwards by its main table, so add \
                     a policy rule (ip rule add to <Service CIDR> lookup <table>) or keep main"
                );
            }
        }
        let text = if frr {
            crate::bgp_config::frr(&opts, &args.tun_name)
        } else {
            crate::bgp_config::bird(&opts)
        };
        print!("{text}");
        return Ok(());
    }
    // Flags first (STYLE 4): a bad address is an error before any file is read.
    let given = NextHops::from_addresses(&args.gateway_addresses).map_err(anyhow::Error::msg)?;
    let routes = routes_for(&args).context("cannot work out the routes")?;
    // Addresses given are the whole answer: a family without one is listed as not routed,
    // never sent via an address detected on this host (perhaps not the one routers reach).
    let hops = if args.gateway_addresses.is_empty() {
        NextHops::detect()
    } else {
        given
    };
    let needs_v4 = routes.iter().any(|n| matches!(n, IpNet::V4(_)));
    let needs_v6 = routes.iter().any(|n| matches!(n, IpNet::V6(_)));
    if (needs_v4 && hops.v4.is_none()) || (needs_v6 && hops.v6.is_none()) {
        tracing::warn!(
            "no address of this gateway for some routes' family (no default route?); \
             pass --gateway-address"
        );
    }
    print!("{}", render_all(args.format, &routes, hops));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> BTreeSet<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ios_writes_netmasks() {
        let hops = NextHops {
            v4: Some(Ipv4Addr::new(192, 168, 1, 10)),
            v6: None,
        };
        assert_eq!(
            render(Format::Ios, &nets(&["10.96.0.0/12", "10.96.0.10/32"]), hops),
            "ip route 10.96.0.0 255.240.0.0 192.168.1.10\n\
             ip route 10.96.0.10 255.255.255.255 192.168.1.10\n"
        );
    }

    #[test]
    fn a_family_without_next_hop_is_a_comment() {
        let hops = NextHops {
            v4: Some(Ipv4Addr::new(192, 168, 1, 10)),
            v6: None,
        };
        let out = render(
            Format::Frr,
            &nets(&["10.96.0.0/12", "fd00:10:96::/112"]),
            hops,
        );
        assert_eq!(
            out,
            "ip route 10.96.0.0/12 192.168.1.10\n\
             ! no IPv6 address for this gateway (pass --gateway-address): fd00:10:96::/112 not routed\n"
        );
    }

    #[test]
    fn next_hops_one_per_family_and_routable() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        let h = NextHops::from_addresses(&[a("192.0.2.7"), a("2001:db8::7")]).unwrap();
        assert_eq!(h.v4, Some(Ipv4Addr::new(192, 0, 2, 7)));
        assert!(NextHops::from_addresses(&[a("192.0.2.7"), a("192.0.2.8")])
            .unwrap_err()
            .contains("twice"));
        assert!(NextHops::from_addresses(&[a("fe80::1")]).is_err());
        assert!(NextHops::from_addresses(&[a("127.0.0.1")]).is_err());
        assert!(NextHops::from_addresses(&[a("0.0.0.0")]).is_err());
        assert_eq!(h.v6, Some("2001:db8::7".parse().unwrap()));
    }
}
