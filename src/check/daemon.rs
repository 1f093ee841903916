//! The routing daemon check: is a BIRD or FRR on this host announcing the gateway's routes?
//!
//! The gateway's routes (protocol 75, metric [`ANNOUNCED_METRIC`]) are read from the kernel
//! (`ip -j route show table all proto 75`); BIRD is asked through its control socket
//! (`birdc -s SOCKET show route protocol clusterway4|clusterway6`, the protocol names
//! `clusterway routes --format bird-bgp` writes), FRR through vtysh (`show bgp ipv[46] unicast
//! json`). A daemon that is not running is not the gateway's failure: every outcome here is
//! a pass or a warning, never an error.
//!
//! Reads only: no daemon command here changes anything.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use ipnet::IpNet;

use super::report::Check;
use crate::host::announce::ANNOUNCED_METRIC;

pub const NAME: &str = "routing daemon announces";

/// What one daemon said: the prefixes it has, or why it could not be asked.
pub type Seen = Result<BTreeSet<IpNet>, String>;

/// The prefixes of `ip -j route show` output whose metric is the announced one.
pub fn parse_ip_json(text: &str) -> BTreeSet<IpNet> {
    let Ok(serde_json::Value::Array(routes)) = serde_json::from_str(text) else {
        return BTreeSet::new();
    };
    routes
        .iter()
        .filter(|r| r["metric"].as_u64() == Some(u64::from(ANNOUNCED_METRIC)))
        .filter_map(|r| prefix(r["dst"].as_str()?))
        .collect()
}

fn prefix(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The prefixes `birdc show route` lists (a line starting with a prefix).
pub fn parse_birdc(text: &str) -> BTreeSet<IpNet> {
    text.lines()
        .filter_map(|l| prefix(l.split_whitespace().next()?))
        .collect()
}

/// The prefixes of `show bgp ipvX unicast json` (FRR): the keys of `routes`.
pub fn parse_frr_json(text: &str) -> BTreeSet<IpNet> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return BTreeSet::new();
    };
    v["routes"]
        .as_object()
        .map(|m| m.keys().filter_map(|k| prefix(k)).collect())
        .unwrap_or_default()
}

/// The verdict: `kernel` are the gateway's announced routes; `bird`/`frr` what a daemon has
/// (`None`: no control socket found).
pub fn judge(kernel: &BTreeSet<IpNet>, bird: Option<Seen>, frr: Option<Seen>) -> Check {
    let fix_none = "run BIRD 2 or FRR on this host with the configuration `clusterway routes \
                    --format bird-bgp|frr-bgp --peer ROUTER --peer-as N --local-as N` prints \
                    (README: \"Several gateways\"), or point --bird-socket / --frr-vty-dir at it";
    if bird.is_none() && frr.is_none() {
        return Check::warn(
            NAME,
            "no BIRD or FRR control socket found: nothing announces the gateway's routes \
             (fine with static routes on the router)",
            fix_none,
        );
    }
    let mut details = Vec::new();
    let mut missing_any = false;
    for (name, seen) in [("BIRD", bird), ("FRR", frr)] {
        let Some(seen) = seen else { continue };
        match seen {
            Err(e) => {
                missing_any = true;
                details.push(format!("{name}: cannot ask it: {e}"));
            }
            Ok(has) => {
                let missing: Vec<String> = kernel
                    .iter()
                    .filter(|p| !has.contains(p))
                    .map(ToString::to_string)
                    .collect();
                if missing.is_empty() {
                    details.push(format!(
                        "{name} has all {} of the gateway's routes",
                        kernel.len()
                    ));
                } else {
                    missing_any = true;
                    details.push(format!("{name} lacks {}", missing.join(", ")));
                }
            }
        }
    }
    let detail = if kernel.is_empty() {
        format!(
            "the gateway announces no route now (not running, not ready, or draining); {}",
            details.join("; ")
        )
    } else {
        details.join("; ")
    };
    if missing_any {
        Check::warn(
            NAME,
            detail,
            "check the daemon's configuration against `clusterway routes --format \
             bird-bgp|frr-bgp` and its logs (BIRD: `birdc show protocols all`; FRR: \
             `vtysh -c 'show bgp summary'`)",
        )
    } else {
        Check::pass(NAME, detail)
    }
}

fn output(cmd: &mut Command) -> Result<String, String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Asks the kernel and the daemons (blocking; a few short commands).
pub fn check(bird_socket: &Path, frr_vty_dir: &Path) -> Check {
    let mut kernel = BTreeSet::new();
    for family in ["-4", "-6"] {
        if let Ok(text) = output(
            Command::new("ip").args([family, "-j", "route", "show", "table", "all", "proto", "75"]),
        ) {
            kernel.extend(parse_ip_json(&text));
        }
    }
    let bird = bird_socket.exists().then(|| {
        let mut has = BTreeSet::new();
        for proto in ["clusterway4", "clusterway6"] {
            let text = output(
                Command::new("birdc")
                    .arg("-s")
                    .arg(bird_socket)
                    .args(["show", "route", "protocol", proto]),
            )?;
            has.extend(parse_birdc(&text));
        }
        Ok(has)
    });
    let frr = frr_vty_dir.join("bgpd.vty").exists().then(|| {
        let mut has = BTreeSet::new();
        for af in ["ipv4", "ipv6"] {
            let text = output(
                Command::new("vtysh")
                    .arg("--vty_socket")
                    .arg(frr_vty_dir)
                    .args(["-c", &format!("show bgp {af} unicast json")]),
            )?;
            has.extend(parse_frr_json(&text));
        }
        Ok(has)
    });
    judge(&kernel, bird, frr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Severity;

    fn nets(v: &[&str]) -> BTreeSet<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn parses_what_ip_birdc_and_vtysh_print() {
        let ip = r#"[{"dst":"10.96.0.0/16","dev":"cw0","scope":"link","metric":75,"flags":[]},
                     {"dst":"10.96.0.10","dev":"cw0","metric":75,"flags":[]},
                     {"dst":"10.97.0.0/16","dev":"cw0","metric":4075,"flags":[]}]"#;
        assert_eq!(
            parse_ip_json(ip),
            nets(&["10.96.0.0/16", "10.96.0.10/32"]),
            "draining routes (another metric) are not announced"
        );
        let birdc = "BIRD 2.0.12 ready.\nTable master4:\n10.96.0.0/16         unicast [clusterway4 03:18:44.363] * (10)\n\tdev cw0\n";
        assert_eq!(parse_birdc(birdc), nets(&["10.96.0.0/16"]));
        let frr = r#"{"vrfId": 0, "routes": { "10.96.0.0/16": [{"valid":true}] } }"#;
        assert_eq!(parse_frr_json(frr), nets(&["10.96.0.0/16"]));
        assert!(parse_frr_json("% BGP instance not found").is_empty());
    }

    #[test]
    fn never_an_error_and_names_what_is_missing() {
        let k = nets(&["10.96.0.0/16", "10.96.0.10/32"]);
        let c = judge(&k, None, None);
        assert_eq!(c.severity, Severity::Warning);
        assert!(c.detail.contains("no BIRD or FRR"), "{}", c.detail);
        let c = judge(&k, Some(Ok(k.clone())), None);
        assert_eq!(c.severity, Severity::Ok, "{}", c.detail);
        let c = judge(&k, None, Some(Ok(nets(&["10.96.0.0/16"]))));
        assert_eq!(c.severity, Severity::Warning);
        assert!(c.detail.contains("FRR lacks 10.96.0.10/32"), "{}", c.detail);
        let c = judge(&k, Some(Err("connection refused".into())), None);
        assert_eq!(c.severity, Severity::Warning);
        assert!(c.detail.contains("connection refused"));
    }
}
