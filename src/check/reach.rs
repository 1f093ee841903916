//! "Is the pod network routed here?": TCP connections to a sample of ready endpoints.
//!
//! The gateway forwards every flow to a pod address, so this host must reach pods the way a
//! node does. A connection that is accepted, or refused with a RST, proves a route to the
//! pod (a RST comes from the pod's host); a timeout or "no route" does not.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::report::Check;

pub const NAME: &str = "endpoints reachable";

/// How many endpoints are tried.
pub const SAMPLE: usize = 5;

/// One endpoint to try, with what it belongs to (for the report).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub addr: SocketAddr,
    /// `namespace/service`, or the slice name when the service is unknown.
    pub owner: String,
}

/// What one connection attempt found.
#[derive(Debug)]
pub enum Probe {
    Connected,
    /// RST: routed, nothing listening (or a firewall rejecting).
    Refused,
    TimedOut,
    /// No route, host unreachable, or another error.
    Failed(io::Error),
}

impl Probe {
    fn routed(&self) -> bool {
        matches!(self, Probe::Connected | Probe::Refused)
    }

    fn describe(&self) -> String {
        match self {
            Probe::Connected => "connected".into(),
            Probe::Refused => "refused (routed)".into(),
            Probe::TimedOut => "timed out".into(),
            Probe::Failed(e) => e.to_string(),
        }
    }
}

/// Up to `n` targets from `candidates` (in order), spread as widely as they allow: first
/// one per owner and address, then one per address, then any other port.
pub fn pick(candidates: &[Target], n: usize) -> Vec<Target> {
    let mut chosen: Vec<Target> = Vec::new();
    let mut addrs = BTreeSet::new();
    let mut ips = BTreeSet::new();
    let mut owners = BTreeSet::new();
    for pass in 0..3 {
        for t in candidates {
            if chosen.len() == n {
                return chosen;
            }
            let new_ip = !ips.contains(&t.addr.ip());
            let new_owner = !owners.contains(&t.owner);
            let wanted = match pass {
                0 => new_ip && new_owner,
                1 => new_ip,
                _ => true,
            };
            if !wanted || addrs.contains(&t.addr) {
                continue;
            }
            addrs.insert(t.addr);
            ips.insert(t.addr.ip());
            owners.insert(t.owner.clone());
            chosen.push(t.clone());
        }
    }
    chosen
}

/// Connects to every target concurrently, each with `timeout`.
pub async fn probe_all(targets: &[Target], timeout: Duration) -> Vec<Probe> {
    futures::future::join_all(targets.iter().map(|t| probe(t.addr, timeout))).await
}

async fn probe(addr: SocketAddr, timeout: Duration) -> Probe {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Probe::Connected,
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Probe::Refused,
        Ok(Err(e)) => Probe::Failed(e),
        Err(_) => Probe::TimedOut,
    }
}

/// The verdict: passes when at least one endpoint is routed.
pub fn judge(targets: &[Target], probes: &[Probe]) -> Check {
    if targets.is_empty() {
        return Check::warn(
            NAME,
            "no ready TCP endpoint to try",
            "nothing to test yet: run the check again once a Service has ready pods",
        );
    }
    let routed = probes.iter().filter(|p| p.routed()).count();
    let detail = targets
        .iter()
        .zip(probes)
        .map(|(t, p)| format!("{} ({}) {}", t.addr, t.owner, p.describe()))
        .collect::<Vec<_>>()
        .join("; ");
    let detail = format!("{routed}/{} routed: {detail}", targets.len());
    if routed > 0 {
        Check::pass(NAME, detail)
    } else {
        Check::fail(
            NAME,
            detail,
            "this host does not reach the pod network, so the gateway cannot forward to pods:\n\
             route the pod CIDR to a node (e.g. `ip route add 10.244.1.0/24 via <node-1>` per \
             node's pod range, or the routes your CNI announces over BGP),\n\
             or run the gateway on a host next to the nodes (same L2 network / VPC, with \
             the cloud's routes for pod ranges), and check that firewalls let it through",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::report::Severity;

    fn t(addr: &str, owner: &str) -> Target {
        Target {
            addr: addr.parse().unwrap(),
            owner: owner.into(),
        }
    }

    #[test]
    fn pick_spreads_over_owners_then_addresses() {
        let c = [
            t("10.0.0.1:80", "a/web"),
            t("10.0.0.2:80", "a/web"),
            t("10.0.0.1:80", "a/web"),
            t("10.0.1.1:53", "kube-system/dns"),
            t("10.0.1.1:9153", "kube-system/dns"),
            t("10.0.2.1:80", "b/api"),
        ];
        let got: Vec<String> = pick(&c, 3).iter().map(|t| t.addr.to_string()).collect();
        assert_eq!(got, ["10.0.0.1:80", "10.0.1.1:53", "10.0.2.1:80"]);
        let got: Vec<String> = pick(&c, 4).iter().map(|t| t.addr.to_string()).collect();
        assert_eq!(
            got[3], "10.0.0.2:80",
            "a new address before a new port: {got:?}"
        );
        let all = pick(&c, 10);
        assert_eq!(all.len(), 5, "duplicates removed: {all:?}");
        assert_eq!(all[4].addr.to_string(), "10.0.1.1:9153");
    }

    #[test]
    fn refused_counts_as_routed() {
        let targets = [t("10.0.0.1:80", "a/web"), t("10.0.0.2:80", "a/web")];
        let c = judge(&targets, &[Probe::TimedOut, Probe::Refused]);
        assert_eq!(c.severity, Severity::Ok, "{c:?}");
        assert!(c.detail.starts_with("1/2 routed"), "{c:?}");
        let c = judge(
            &targets,
            &[
                Probe::TimedOut,
                Probe::Failed(io::Error::from_raw_os_error(libc::ENETUNREACH)),
            ],
        );
        assert!(c.blocks(), "{c:?}");
        assert!(c.fix.unwrap().contains("pod CIDR"));
        assert_eq!(judge(&[], &[]).severity, Severity::Warning);
    }

    #[tokio::test]
    async fn probes_a_listener_and_a_closed_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let targets = [
            Target {
                addr: open,
                owner: "x/open".into(),
            },
            Target {
                addr: closed,
                owner: "x/closed".into(),
            },
        ];
        let probes = probe_all(&targets, Duration::from_secs(1)).await;
        assert!(matches!(probes[0], Probe::Connected), "{probes:?}");
        assert!(matches!(probes[1], Probe::Refused), "{probes:?}");
    }
}
