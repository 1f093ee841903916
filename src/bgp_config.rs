//! `clusterway routes --format bird-bgp|frr-bgp`: the configuration of the routing daemon on
//! the *gateway host*, which announces the gateway's routes over BGP (DESIGN, "Advertising
//! and the fleet"). clusterway speaks no BGP itself; BIRD 2 or FRR do.
//!
//! The gateway's kernel routes of protocol 75 are the announcement: they exist exactly while
//! the gateway can forward. The daemon picks exactly those up and announces them:
//! - BIRD 2: a `kernel` protocol with `learn`, importing routes whose `krt_source` is 75 (from
//!   `--route-table` when it is not main), and a `bgp` protocol per peer exporting exactly
//!   what that kernel protocol learned; `bfd on` with a `bfd` protocol when `--bfd`.
//! - FRR: zebra folds unknown route protocols into `kernel`, so it redistributes the kernel
//!   routes through the gateway's TUN device (main table), or imports a table of their own
//!   (`--route-table`, 1–252, `ip import-table`); `router bgp` announces them to each peer,
//!   with route-maps and BFD.
//!
//! Pure text generation: owns nothing, touches nothing on the host.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::host::announce::ANNOUNCED_METRIC;
use crate::host::netlink::MAIN_TABLE;

/// The flags of the BGP formats (checked by clap and [`check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpOptions {
    pub peers: Vec<IpAddr>,
    pub peer_as: u32,
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub route_table: u32,
    pub bfd: Option<Bfd>,
    /// BGP hold time in seconds (keepalive a third of it).
    pub hold_time: u16,
}

/// BFD timers: both intervals and the detection multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bfd {
    pub interval: Duration,
    pub multiplier: u8,
}

/// `--peer-as`, `--local-as`: a public or private AS number, 2 or 4 bytes. 0, 23456
/// (AS_TRANS) and 4294967295 are reserved (RFC 7607, RFC 6793, RFC 7300).
pub fn parse_asn(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let s = s
        .strip_prefix("AS")
        .or_else(|| s.strip_prefix("as"))
        .unwrap_or(s);
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not an AS number (1 to 4294967294)"))?;
    match n {
        0 => Err("AS 0 is reserved (RFC 7607)".into()),
        23456 => Err("AS 23456 is AS_TRANS, reserved (RFC 6793)".into()),
        u32::MAX => Err("AS 4294967295 is reserved (RFC 7300)".into()),
        n => Ok(n),
    }
}

/// `--peer`: a unicast address the daemon can open a session to (link-local IPv6 would need
/// an interface; give the peer's global or ULA address).
pub fn parse_peer(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an IP address (like 192.0.2.1 or 2001:db8::1)"))?;
    let bad = match ip {
        IpAddr::V4(a) => {
            a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast()
        }
        IpAddr::V6(a) => {
            a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    if bad {
        return Err(format!(
            "{ip} cannot be a BGP peer (use a unicast address; link-local IPv6 needs an interface)"
        ));
    }
    Ok(ip)
}

/// `--bfd-interval`: 10 ms to 60 s, in milliseconds or seconds.
pub fn parse_bfd_interval(s: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(s)?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(60) {
        return Err(format!("`{s}` is outside 10ms..60s"));
    }
    Ok(d)
}

/// Checks that the flags make a configuration for `frr` (or BIRD); the error names the flag.
pub fn check(opts: &BgpOptions, frr: bool) -> Result<(), String> {
    if opts.peers.is_empty() {
        return Err("the BGP formats need at least one --peer ADDRESS (the router)".into());
    }
    for (i, p) in opts.peers.iter().enumerate() {
        if opts.peers[..i].contains(p) {
            return Err(format!("--peer {p} is given twice"));
        }
    }
    if frr && opts.route_table != MAIN_TABLE && !(1..=252).contains(&opts.route_table) {
        return Err(format!(
            "--route-table {} cannot be imported by FRR (`ip import-table` takes 1-252); \
             use main (the default) or a table of 1-252",
            opts.route_table
        ));
    }
    if opts.hold_time != 0 && opts.hold_time < 3 {
        return Err("--hold-time is 0 (no keepalives) or at least 3 seconds".into());
    }
    Ok(())
}

fn table_name(t: u32) -> String {
    if t == MAIN_TABLE {
        "main".into()
    } else {
        t.to_string()
    }
}

fn header(out: &mut String, c: &str, format: &str, opts: &BgpOptions) {
    let _ = writeln!(
        out,
        "{c} The clusterway gateway host's {format}: announce the gateway's routes (kernel\n\
         {c} routes of protocol 75 and metric {ANNOUNCED_METRIC}, `ip route show proto 75 table {}`) over\n\
         {c} BGP. They exist exactly while the gateway can forward, so a stopped or crashed\n\
         {c} gateway is withdrawn; while it drains they carry another metric, not announced.\n\
         {c} Generated by `clusterway routes`; routers: maximum-paths (ECMP) over the gateways.",
        table_name(opts.route_table)
    );
}

/// A BIRD 2 configuration (`bird.conf`).
pub fn bird(opts: &BgpOptions) -> String {
    let mut out = String::new();
    header(&mut out, "#", "BIRD 2 configuration", opts);
    let _ = writeln!(out, "\nrouter id {};\n", opts.router_id);
    out.push_str(
        "# Interfaces: a link going down makes the kernel protocols rescan at once (the kernel\n\
         # drops routes through a vanished TUN device without telling anyone).\n\
         protocol device {\n}\n\n",
    );
    let table = if opts.route_table == MAIN_TABLE {
        String::new()
    } else {
        format!("  kernel table {};\n", opts.route_table)
    };
    for (v, name) in [("4", "clusterway4"), ("6", "clusterway6")] {
        let _ = writeln!(
            out,
            "# The gateway's IPv{v} routes, learned from the kernel, never written back. BIRD\n\
             # follows the kernel's notifications; the scan is a safety net.\n\
             protocol kernel {name} {{\n  ipv{v} {{\n    import where krt_source = 75 && krt_metric = {ANNOUNCED_METRIC};\n    export none;\n  }};\n  learn;\n  scan time 10;\n{table}}}\n"
        );
    }
    if let Some(bfd) = opts.bfd {
        let ms = bfd.interval.as_millis();
        let _ = writeln!(
            out,
            "# BFD towards the routers: a dead link or host is detected in {} ms.\n\
             protocol bfd clusterway_bfd {{\n  interface \"*\" {{\n    min rx interval {ms} ms;\n    min tx interval {ms} ms;\n    multiplier {};\n  }};\n}}\n",
            ms * u128::from(bfd.multiplier),
            bfd.multiplier
        );
    }
    for peer in &opts.peers {
        let (v, kernel) = if peer.is_ipv4() {
            ("4", "clusterway4")
        } else {
            ("6", "clusterway6")
        };
        let name = peer.to_string().replace(['.', ':'], "_");
        let _ = writeln!(
            out,
            "protocol bgp peer_{name} {{\n  local as {};\n  neighbor {peer} as {};\n  hold time {};\n  keepalive time {};\n  # Come back within seconds after a flap (BIRD's defaults wait minutes).\n  connect retry time 5;\n  error wait time 1, 10;\n{}  ipv{v} {{\n    import none;\n    export where proto = \"{kernel}\";\n    next hop self;\n  }};\n}}\n",
            opts.local_as,
            opts.peer_as,
            opts.hold_time,
            opts.hold_time / 3,
            if opts.bfd.is_some() { "  bfd on;\n" } else { "" },
        );
    }
    out
}

/// An FRR configuration (`frr.conf`; zebra, bgpd and, with `--bfd`, bfdd).
///
/// zebra takes kernel routes of an unknown protocol as `kernel`. In the main table (the
/// default) the routes are redistributed as `kernel` routes through the gateway's TUN device
/// (`match interface`): every route through that device is the gateway's. With a table of
/// their own (`--route-table N`) zebra imports the table (`ip import-table N`, IPv4 only in
/// FRR 8.4) and copies the routes into the main table. Measured with FRR 8.4: when the TUN
/// device vanishes (a crash) zebra drops the main-table kernel routes at once, but keeps the
/// imported copy of a table route; so the main table is the default.
pub fn frr(opts: &BgpOptions, tun: &str) -> String {
    let mut out = String::new();
    header(&mut out, "!", "FRR configuration", opts);
    let t = opts.route_table;
    let main = t == MAIN_TABLE;
    if main {
        let _ = writeln!(
            out,
            "!\n\
             ! zebra sees the gateway's routes as `kernel` routes; the ones through its TUN\n\
             ! device {tun} are exactly the gateway's. When the device goes (a crash), zebra drops\n\
             ! them at once and BGP withdraws them.\n\
             route-map clusterway-routes permit 10\n match interface {tun}\n match metric {ANNOUNCED_METRIC}\n!"
        );
    } else {
        let _ = writeln!(
            out,
            "!\n\
             ! The gateway's routes are in table {t} (`clusterway run --route-table {t}`); zebra\n\
             ! imports that table and copies the routes into the main table, which forwards.\n\
             ! FRR 8.4 keeps the imported copy when the TUN device vanishes (a crash): prefer the\n\
             ! main table. IPv6: FRR 10 and later also have `ipv6 import-table {t}`.\n\
             ip import-table {t}\n!\n\
             route-map clusterway-routes permit 10\n match metric {ANNOUNCED_METRIC}\n!"
        );
    }
    if let Some(bfd) = opts.bfd {
        let ms = bfd.interval.as_millis();
        let _ = writeln!(
            out,
            "bfd\n profile clusterway\n  detect-multiplier {}\n  receive-interval {ms}\n  transmit-interval {ms}\n !\n!",
            bfd.multiplier
        );
    }
    out.push_str(
        "! Learn nothing from the routers; announce only the gateway's routes.\n\
         route-map clusterway-in deny 10\n!\n\
         ! Origin IGP and no MED, as BIRD sends them: routers compare both before they spread\n\
         ! flows over gateways (ECMP), so every gateway must send the same (the kernel metric\n\
         ! would otherwise become the MED).\n\
         route-map clusterway-out permit 10\n set origin igp\n set metric 0\n!\n",
    );
    let _ = writeln!(
        out,
        "router bgp {}\n bgp router-id {}\n no bgp default ipv4-unicast",
        opts.local_as, opts.router_id
    );
    for peer in &opts.peers {
        let _ = writeln!(out, " neighbor {peer} remote-as {}", opts.peer_as);
        let _ = writeln!(
            out,
            " neighbor {peer} timers {} {}\n neighbor {peer} timers connect 5",
            opts.hold_time / 3,
            opts.hold_time
        );
        if opts.bfd.is_some() {
            let _ = writeln!(out, " neighbor {peer} bfd profile clusterway");
        }
    }
    for (af, v4) in [("ipv4", true), ("ipv6", false)] {
        let peers: Vec<_> = opts.peers.iter().filter(|p| p.is_ipv4() == v4).collect();
        if peers.is_empty() {
            continue;
        }
        let _ = writeln!(out, " !\n address-family {af} unicast");
        if main {
            let _ = writeln!(out, "  redistribute kernel route-map clusterway-routes");
        } else if v4 {
            let _ = writeln!(out, "  redistribute table {t} route-map clusterway-routes");
        } else {
            let _ = writeln!(
                out,
                "  ! FRR 10 and later, with `ipv6 import-table {t}` above:\n  ! redistribute table {t}"
            );
        }
        for peer in peers {
            let _ = writeln!(
                out,
                "  neighbor {peer} activate\n  neighbor {peer} route-map clusterway-in in\n  neighbor {peer} route-map clusterway-out out"
            );
        }
        out.push_str(" exit-address-family\n");
    }
    out.push_str("!\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BgpOptions {
        BgpOptions {
            peers: vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()],
            peer_as: 65000,
            local_as: 65010,
            router_id: Ipv4Addr::new(192, 0, 2, 10),
            route_table: 100,
            bfd: Some(Bfd {
                interval: Duration::from_millis(100),
                multiplier: 3,
            }),
            hold_time: 9,
        }
    }

    #[test]
    fn as_numbers_and_peers_are_checked() {
        assert_eq!(parse_asn("65000"), Ok(65000));
        assert_eq!(parse_asn("AS4200000000"), Ok(4_200_000_000));
        assert!(parse_asn("0").unwrap_err().contains("reserved"));
        assert!(parse_asn("23456").unwrap_err().contains("AS_TRANS"));
        assert!(parse_asn("4294967295").unwrap_err().contains("reserved"));
        assert!(parse_asn("4294967296").unwrap_err().contains("not an AS"));
        assert!(parse_asn("-1").is_err());
        assert!(parse_peer("192.0.2.1").is_ok());
        assert!(parse_peer("2001:db8::1").is_ok());
        assert!(parse_peer("fe80::1").unwrap_err().contains("link-local"));
        assert!(parse_peer("127.0.0.1").is_err());
        assert!(parse_peer("router1").unwrap_err().contains("not an IP"));
        assert!(parse_bfd_interval("100ms").is_ok());
        assert!(parse_bfd_interval("5ms").is_err());
    }

    #[test]
    fn flags_that_cannot_make_a_config_are_refused() {
        let mut o = opts();
        assert!(check(&o, true).is_ok());
        o.route_table = MAIN_TABLE;
        assert!(check(&o, false).is_ok());
        assert!(check(&o, true).is_ok());
        o.route_table = 1000;
        assert!(check(&o, false).is_ok(), "BIRD reads any table");
        assert!(check(&o, true).unwrap_err().contains("1-252"));
        let mut o = opts();
        o.peers.clear();
        assert!(check(&o, false).unwrap_err().contains("--peer"));
        let mut o = opts();
        o.peers.push(o.peers[0]);
        assert!(check(&o, false).unwrap_err().contains("twice"));
        let mut o = opts();
        o.hold_time = 2;
        assert!(check(&o, false).unwrap_err().contains("--hold-time"));
    }

    #[test]
    fn bird_learns_protocol_75_and_exports_exactly_that() {
        let text = bird(&opts());
        assert!(text.contains("router id 192.0.2.10;"));
        assert!(text.contains("import where krt_source = 75 && krt_metric = 75;"));
        assert!(text.contains("  learn;\n"));
        assert!(text.contains("kernel table 100;"));
        assert!(text.contains("protocol bgp peer_192_0_2_1 {"));
        assert!(text.contains("neighbor 192.0.2.2 as 65000;"));
        assert!(text.contains("local as 65010;"));
        assert!(text.contains("export where proto = \"clusterway4\";"));
        assert!(text.contains("bfd on;"));
        assert!(text.contains("error wait time 1, 10;"));
        assert!(text.contains("min rx interval 100 ms;"));
        assert!(text.contains("multiplier 3;"));
        // Main table: no `kernel table`; no BFD without --bfd.
        let mut o = opts();
        o.route_table = MAIN_TABLE;
        o.bfd = None;
        let text = bird(&o);
        assert!(!text.contains("kernel table"));
        assert!(!text.contains("bfd"));
        // An IPv6 peer gets the IPv6 routes.
        o.peers = vec!["2001:db8::1".parse().unwrap()];
        let text = bird(&o);
        assert!(text.contains("protocol bgp peer_2001_db8__1 {"));
        assert!(text.contains("export where proto = \"clusterway6\";"));
    }

    #[test]
    fn frr_imports_the_table_and_redistributes_it_with_bfd() {
        let text = frr(&opts(), "cw0");
        assert!(text.contains("\nip import-table 100\n"));
        assert!(text.contains("router bgp 65010\n bgp router-id 192.0.2.10\n"));
        assert!(text.contains(" neighbor 192.0.2.1 remote-as 65000\n"));
        assert!(text.contains(" neighbor 192.0.2.1 timers 3 9\n"));
        assert!(text.contains(" neighbor 192.0.2.2 bfd profile clusterway\n"));
        assert!(text.contains("  redistribute table 100 route-map clusterway-routes\n"));
        assert!(text.contains("  neighbor 192.0.2.2 route-map clusterway-out out\n"));
        assert!(text.contains("  receive-interval 100\n"));
        assert!(!text.contains("address-family ipv6"));
        // Main table: the kernel routes through the TUN device, both families.
        let mut o = opts();
        o.route_table = MAIN_TABLE;
        o.peers.push("2001:db8::1".parse().unwrap());
        let text = frr(&o, "gw0");
        assert!(!text.contains("import-table 254"));
        assert!(text.contains(
            "route-map clusterway-routes permit 10\n match interface gw0\n match metric 75\n"
        ));
        assert!(text.contains("  redistribute kernel route-map clusterway-routes\n"));
        assert!(text.contains(" address-family ipv6 unicast\n  redistribute kernel"));
        assert!(text.contains("  neighbor 2001:db8::1 activate\n"));
    }
}
