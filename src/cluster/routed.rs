//! Which exposed ClusterIPs the gateway's routes cannot carry.
//!
//! The gateway routes whole ranges into its TUN device (`--service-cidr`, or the cluster's
//! ServiceCIDR objects), so a ClusterIP outside all of them never reaches it: a typo in a
//! range, a second ServiceCIDR the operator did not pass, or an IPv6 range on a host with
//! IPv6 turned off. Such a Service looks exposed in the table but no client can reach it;
//! this module names those addresses so that the gateway warns at start and on reload, the
//! status page and API mark them "not routed", `/readyz` says so and `clusterway check`
//! reports them.
//!
//! Only the families the routes ask for are judged ("in the requested family"): with only
//! IPv4 ranges, the IPv6 ClusterIPs of dual-stack Services are left out on purpose and not
//! reported. Per-ClusterIP host routes (no range at all) carry every exposed address.
//!
//! Pure: a set of routes and a table in, a list out. Owns nothing; touches no host state.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::table::{ServiceId, ServiceTable};

/// One exposed ClusterIP that no route of the gateway carries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NotRouted {
    pub ip: IpAddr,
    pub service: Arc<ServiceId>,
    pub reason: NotRoutedReason,
}

/// Why a ClusterIP is not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotRoutedReason {
    /// Ranges of its family are routed, but none contains it.
    OutsideRanges,
    /// An IPv6 range would carry it, but IPv6 is disabled on this host, so the gateway
    /// installs no IPv6 route.
    Ipv6Disabled,
}

impl NotRoutedReason {
    /// Short label (API, metrics).
    pub fn label(self) -> &'static str {
        match self {
            NotRoutedReason::OutsideRanges => "outside_service_cidrs",
            NotRoutedReason::Ipv6Disabled => "ipv6_disabled",
        }
    }
}

impl fmt::Display for NotRouted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            NotRoutedReason::OutsideRanges => "outside every routed Service CIDR",
            NotRoutedReason::Ipv6Disabled => "IPv6 is disabled on this host",
        };
        write!(f, "{} ({}): {why}", self.ip, self.service)
    }
}

/// The exposed ClusterIPs that `routes` (what the gateway asks to route, before dropping
/// IPv6 on a host without it) do not carry. `ipv6` tells whether IPv6 routes can be
/// installed. Sorted by address.
pub fn not_routed(routes: &BTreeSet<IpNet>, ipv6: bool, table: &ServiceTable) -> Vec<NotRouted> {
    let has_v4 = routes.iter().any(|n| matches!(n, IpNet::V4(_)));
    let has_v6 = routes.iter().any(|n| matches!(n, IpNet::V6(_)));
    let mut out = Vec::new();
    for svc in table.services.iter().filter(|s| s.not_exposed.is_none()) {
        for &ip in &svc.cluster_ips {
            let requested = if ip.is_ipv4() { has_v4 } else { has_v6 };
            if !requested {
                continue;
            }
            let reason = if !routes.iter().any(|n| n.contains(&ip)) {
                NotRoutedReason::OutsideRanges
            } else if ip.is_ipv6() && !ipv6 {
                NotRoutedReason::Ipv6Disabled
            } else {
                continue;
            };
            out.push(NotRouted {
                ip,
                service: svc.id.clone(),
                reason,
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// One line for logs and `/readyz`: the count and the first `limit` addresses.
pub fn summary(list: &[NotRouted], limit: usize) -> String {
    let mut s = format!(
        "{} ClusterIP{} not routed: ",
        list.len(),
        if list.len() == 1 { "" } else { "s" }
    );
    let shown: Vec<String> = list.iter().take(limit).map(ToString::to_string).collect();
    s.push_str(&shown.join("; "));
    if list.len() > limit {
        s.push_str(&format!("; and {} more", list.len() - limit));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::build::{build_table, BuildOptions};
    use crate::cluster::parse::parse_objects;

    const SNAPSHOT: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec:
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10, "fd00:10:96::10"]
    ipFamilies: [IPv4, IPv6]
    ports: [{port: 80}]
- apiVersion: v1
  kind: Service
  metadata: {name: typo, namespace: shop}
  spec:
    clusterIP: 10.112.0.7
    ports: [{port: 80}]
- apiVersion: v1
  kind: Service
  metadata: {name: other-range, namespace: shop}
  spec:
    clusterIP: "fd00:20::7"
    clusterIPs: ["fd00:20::7"]
    ipFamilies: [IPv6]
    ports: [{port: 80}]
- apiVersion: v1
  kind: Service
  metadata: {name: headless, namespace: shop}
  spec:
    clusterIP: None
    ports: [{port: 80}]
"#;

    fn table() -> ServiceTable {
        let objs = parse_objects("t.yaml", SNAPSHOT).unwrap();
        build_table(1, &objs, &BuildOptions::default()).0
    }

    fn routes(v: &[&str]) -> BTreeSet<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ips(list: &[NotRouted]) -> Vec<(String, &'static str)> {
        list.iter()
            .map(|n| (format!("{} {}", n.ip, n.service), n.reason.label()))
            .collect()
    }

    #[test]
    fn a_cluster_ip_outside_the_ranges_of_its_family_is_not_routed() {
        let t = table();
        let got = not_routed(&routes(&["10.96.0.0/12", "fd00:10:96::/112"]), true, &t);
        assert_eq!(
            ips(&got),
            vec![
                ("10.112.0.7 shop/typo".into(), "outside_service_cidrs"),
                (
                    "fd00:20::7 shop/other-range".into(),
                    "outside_service_cidrs"
                ),
            ]
        );
        assert_eq!(
            summary(&got, 1),
            "2 ClusterIPs not routed: 10.112.0.7 (shop/typo): outside every routed Service \
             CIDR; and 1 more"
        );
    }

    #[test]
    fn a_family_without_ranges_is_not_judged() {
        let t = table();
        let got = not_routed(&routes(&["10.96.0.0/12"]), true, &t);
        assert_eq!(
            ips(&got),
            vec![("10.112.0.7 shop/typo".into(), "outside_service_cidrs")]
        );
        // Both ranges given and every address inside: nothing to report.
        let all = routes(&["10.96.0.0/11", "fd00::/16"]);
        assert!(not_routed(&all, true, &t).is_empty());
    }

    #[test]
    fn ipv6_addresses_are_not_routed_when_the_host_has_no_ipv6() {
        let t = table();
        let got = not_routed(&routes(&["10.96.0.0/11", "fd00::/16"]), false, &t);
        assert_eq!(
            ips(&got),
            vec![
                ("fd00:10:96::10 shop/web".into(), "ipv6_disabled"),
                ("fd00:20::7 shop/other-range".into(), "ipv6_disabled"),
            ]
        );
    }

    #[test]
    fn host_routes_per_cluster_ip_carry_every_address() {
        let t = table();
        let per_ip: BTreeSet<IpNet> = t.cluster_ips().map(IpNet::from).collect();
        assert!(not_routed(&per_ip, true, &t).is_empty());
    }
}
