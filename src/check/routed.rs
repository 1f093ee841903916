//! `check --service-cidr …`: are the exposed ClusterIPs inside the ranges the gateway will
//! route? A ClusterIP outside every range of its family never reaches the gateway, so its
//! Service looks exposed but no client can open it (a typo in a range, a second
//! ServiceCIDR not passed). The same judgement as the running gateway's
//! ([`crate::cluster::routed`]), on the table built from the file or from the cluster's
//! Services.
//!
//! Only run when `--service-cidr` is given: without it the gateway routes each exposed
//! ClusterIP itself (or the cluster's ServiceCIDR objects), which carries every address.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::report::Check;
use crate::cluster::routed::{self, NotRoutedReason};
use crate::cluster::table::ServiceTable;

pub const NAME: &str = "ClusterIPs routed";

/// Judges `table` against the `--service-cidr` ranges; `ipv6` tells whether this host can
/// install IPv6 routes.
pub fn judge(table: &ServiceTable, cidrs: &[IpNet], ipv6: bool) -> Check {
    let ranges: BTreeSet<IpNet> = cidrs.iter().copied().collect();
    let list = routed::not_routed(&ranges, ipv6, table);
    let shown: Vec<String> = ranges.iter().map(ToString::to_string).collect();
    let shown = shown.join(", ");
    let exposed: usize = table
        .services
        .iter()
        .filter(|s| s.not_exposed.is_none())
        .map(|s| s.cluster_ips.len())
        .sum();
    if list.is_empty() {
        return Check::pass(
            NAME,
            format!("{exposed} exposed ClusterIPs, each inside the routed ranges ({shown})"),
        );
    }
    let mut fixes = Vec::new();
    if list
        .iter()
        .any(|n| n.reason == NotRoutedReason::OutsideRanges)
    {
        fixes.push(format!(
            "pass every Service CIDR of the cluster with --service-cidr (now: {shown}); \
             `kubectl get servicecidrs` lists them (Kubernetes ≥ 1.33), else the API \
             server's --service-cluster-ip-range"
        ));
    }
    if list
        .iter()
        .any(|n| n.reason == NotRoutedReason::Ipv6Disabled)
    {
        fixes.push(
            "enable IPv6 on the gateway host (net.ipv6.conf.all.disable_ipv6 = 0), or leave \
             the IPv6 ClusterIPs unrouted"
                .to_string(),
        );
    }
    Check::warn(
        NAME,
        format!(
            "{}; no client reaches them through the gateway",
            routed::summary(&list, 5)
        ),
        fixes.join("; "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::report::Severity;
    use crate::cluster::build::{build_table, BuildOptions};
    use crate::cluster::parse::parse_objects;

    fn table() -> ServiceTable {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
                    spec:\n  clusterIP: 10.96.0.20\n  ports: [{port: 80}]\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: typo, namespace: shop}\n\
                    spec:\n  clusterIP: 10.112.0.20\n  ports: [{port: 80}]\n";
        build_table(
            1,
            &parse_objects("t.yaml", text).unwrap(),
            &BuildOptions::default(),
        )
        .0
    }

    #[test]
    fn inside_passes_and_outside_warns_with_the_fix() {
        let t = table();
        let wide: Vec<IpNet> = vec!["10.96.0.0/11".parse().unwrap()];
        let c = judge(&t, &wide, true);
        assert_eq!(c.severity, Severity::Ok, "{c:?}");
        assert!(c.detail.starts_with("2 exposed ClusterIPs"), "{c:?}");
        let narrow: Vec<IpNet> = vec!["10.96.0.0/12".parse().unwrap()];
        let c = judge(&t, &narrow, true);
        assert_eq!(c.severity, Severity::Warning, "{c:?}");
        assert!(
            c.detail.starts_with(
                "1 ClusterIP not routed: 10.112.0.20 (shop/typo): outside every routed \
                 Service CIDR"
            ),
            "{c:?}"
        );
        assert!(c
            .fix
            .unwrap()
            .contains("--service-cidr (now: 10.96.0.0/12)"));
    }
}
