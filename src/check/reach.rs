//! "Is the pod network routed here?": TCP connections to a sample of ready endpoints.
//!
//! The gateway forwards every flow to a pod address, so this host must reach pods the way a
//! node does. A connection that is accepted, or refused with a RST, proves a route to the
//! pod (a RST comes from the pod's host); a timeout or "no route" does not.
//!
//! A probe goes out only through a specific route: each address is first looked up in the
//! routing tables ([`crate::host::lookup`]); one that only the default route covers is not
//! dialled and is reported as "no route to the pod network" (a warning, with the fix), since
//! a connection through the default route would claim what the check did not see.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::report::Check;
use crate::host::lookup::{self, LookupError};
use crate::host::netlink::Host;

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
    /// Not dialled: only the default route (via this next hop) covers the address.
    DefaultRoute(Option<IpAddr>),
    /// Not dialled: the route could not be looked up.
    NoLookup(String),
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
            Probe::DefaultRoute(Some(gw)) => {
                format!(
                    "no route to the pod network (only the default route, via {gw}; not dialled)"
                )
            }
            Probe::DefaultRoute(None) => {
                "no route to the pod network (only the default route; not dialled)".into()
            }
            Probe::NoLookup(e) => format!("not dialled: {e}"),
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

/// Connects to every target concurrently, each with `timeout`, through a specific route
/// only (see the module doc).
pub async fn probe_all(targets: &[Target], timeout: Duration) -> Vec<Probe> {
    let host = Host::connect().map_err(|e| e.to_string());
    futures::future::join_all(
        targets
            .iter()
            .map(|t| probe(host.as_ref(), t.addr, timeout)),
    )
    .await
}

async fn probe(host: Result<&Host, &String>, addr: SocketAddr, timeout: Duration) -> Probe {
    let host = match host {
        Ok(h) => h,
        Err(e) => return Probe::NoLookup(format!("cannot read the routing table: {e}")),
    };
    match lookup::route_to(host, addr.ip()).await {
        Ok(route) if route.is_default() => return Probe::DefaultRoute(route.gateway),
        Ok(_) => {}
        Err(LookupError::NoRoute { error, .. }) => return Probe::Failed(error),
        Err(e) => return Probe::NoLookup(e.to_string()),
    }
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
    let default = probes
        .iter()
        .filter(|p| matches!(p, Probe::DefaultRoute(_)))
        .count();
    let detail = targets
        .iter()
        .zip(probes)
        .map(|(t, p)| format!("{} ({}) {}", t.addr, t.owner, p.describe()))
        .collect::<Vec<_>>()
        .join("; ");
    let detail = format!("{routed}/{} routed: {detail}", targets.len());
    if default > 0 {
        // Not seen either way: a warning, not a verdict.
        Check::warn(
            NAME,
            detail,
            "these pod addresses match only this host's default route, so they were not \
             dialled (a connection through the default route says nothing about the pod \
             network): route the pod CIDR to the nodes (e.g. `ip route add 10.244.1.0/24 via \
             <node-1>` per node's pod range, or the routes your CNI announces over BGP);\n\
             with an overlay network (VXLAN or Geneve: Flannel, Calico VXLAN, Cilium's tunnel \
             mode) pod IPs are not routable outside the cluster: run the gateway on a node of \
             the cluster instead (docker/k8s/: a DaemonSet or Deployment on the host network \
             of labelled nodes)",
        )
    } else if routed > 0 {
        Check::pass(NAME, detail)
    } else {
        Check::fail(
            NAME,
            detail,
            "this host does not reach the pod network, so the gateway cannot forward to pods:\n\
             route the pod CIDR to a node (e.g. `ip route add 10.244.1.0/24 via <node-1>` per \
             node's pod range, or the routes your CNI announces over BGP),\n\
             or run the gateway on a host next to the nodes (same L2 network / VPC, with \
             the cloud's routes for pod ranges), and check that firewalls let it through;\n\
             with an overlay network (VXLAN or Geneve: Flannel, Calico VXLAN, Cilium's tunnel \
             mode) pod IPs are not routable outside the cluster: run the gateway on a node of \
             the cluster instead (docker/k8s/: a DaemonSet or Deployment on the host network \
             of labelled nodes)",
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
        let fix = c.fix.unwrap();
        assert!(fix.contains("pod CIDR"), "{fix}");
        // Not reachable at all: the overlay case too, and its way out.
        assert!(fix.contains("run the gateway on a node"), "{fix}");
        assert!(fix.contains("docker/k8s/"), "{fix}");
        assert_eq!(judge(&[], &[]).severity, Severity::Warning);
    }

    #[test]
    fn only_the_default_route_is_a_warning_with_the_fix() {
        let targets = [t("10.0.0.1:80", "a/web"), t("10.0.0.2:80", "a/web")];
        let gw: IpAddr = "192.0.2.1".parse().unwrap();
        for other in [Probe::Connected, Probe::TimedOut] {
            let c = judge(&targets, &[other, Probe::DefaultRoute(Some(gw))]);
            assert_eq!(c.severity, Severity::Warning, "{c:?}");
            assert!(
                c.detail.contains(
                    "10.0.0.2:80 (a/web) no route to the pod network (only the default \
                     route, via 192.0.2.1; not dialled)"
                ),
                "{c:?}"
            );
            let fix = c.fix.unwrap();
            assert!(fix.contains("pod CIDR"), "{fix}");
            assert!(fix.contains("run the gateway on a node"), "{fix}");
            assert!(fix.contains("docker/k8s/"), "{fix}");
        }
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
