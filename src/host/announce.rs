//! The announcement: which prefixes this gateway routes into its TUN device, and therefore
//! which prefixes the routing daemon on its host (BIRD, FRR) announces to the routers.
//!
//! The kernel routes of protocol 75 are the announcement (DESIGN, "Advertising and the
//! fleet"): a route exists exactly while this gateway can forward its prefix. [`Gate`] says
//! whether it can (a first complete table, the TUN device up, not draining; a dead worker ends
//! the gateway, which withdraws on the way out); [`wanted`] says which prefixes the table asks
//! for in the `--announce` mode; [`Board`] remembers, per prefix, announced / withdrawn /
//! draining and since when, for the status page, the metrics and the event log.
//!
//! A stale table (API server unreachable) keeps the routes: every gateway of a fleet loses
//! the same API server at the same moment, and withdrawing everywhere would be an outage.
//!
//! Pure: no netlink and no clock here (the caller passes `now`); [`Announcer`] is the thin
//! shell that applies the decision through [`super::netlink::Host`]. Owns the routes of
//! protocol 75 in the `--route-table` table (through `Host`), nothing else.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde::Serialize;

use super::netlink::{Host, HostError, MAIN_TABLE};

/// The route metric of an announced route. The daemons announce exactly the routes of
/// protocol 75 with this metric (BIRD: `krt_metric`; FRR: `match metric`).
pub const ANNOUNCED_METRIC: u32 = 75;
/// The route metric while draining: the same routes keep forwarding what still arrives,
/// but no daemon announces them.
pub const DRAINING_METRIC: u32 = 4075;
use crate::cluster::table::ServiceTable;

/// What the gateway announces (`--announce`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnnounceMode {
    /// The Service CIDRs (the cluster's ServiceCIDRs, else `--service-cidr`, else one host
    /// route per exposed ClusterIP), whether or not a Service has endpoints.
    #[default]
    Aggregated,
    /// One /32 or /128 per exposed ClusterIP with at least one usable endpoint, withdrawn
    /// when it has none, so routers stop sending traffic for an empty Service.
    PerService,
}

impl AnnounceMode {
    pub fn label(self) -> &'static str {
        match self {
            AnnounceMode::Aggregated => "aggregated",
            AnnounceMode::PerService => "per-service",
        }
    }
}

/// Whether this gateway can forward now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    /// The source has applied a complete table (stale still counts: it keeps serving).
    pub table: bool,
    /// The TUN device exists and is up.
    pub tun_up: bool,
    /// A graceful stop has begun: routes are withdrawn while flows drain.
    pub draining: bool,
}

impl Gate {
    pub fn open(self) -> bool {
        self.table && self.tun_up && !self.draining
    }

    /// Why the gate is closed, for logs and events (`None` when open).
    pub fn reason(self) -> Option<&'static str> {
        if self.draining {
            Some("draining")
        } else if !self.tun_up {
            Some("tun_down")
        } else if !self.table {
            Some("no_table")
        } else {
            None
        }
    }
}

/// The prefixes the table asks for in `mode` (IPv4 only when the host has no IPv6), before
/// the gate is applied.
pub fn wanted(
    mode: AnnounceMode,
    cidrs: &[IpNet],
    table: &ServiceTable,
    ipv6: bool,
) -> BTreeSet<IpNet> {
    let mut want = match mode {
        AnnounceMode::Aggregated => crate::gateway::desired_routes(cidrs, table),
        AnnounceMode::PerService => {
            let mut ips = BTreeSet::new();
            for port in table.ports() {
                if !port.usable.is_empty() {
                    ips.insert(IpNet::from(port.cluster_ip));
                }
            }
            ips
        }
    };
    // Pod ranges (--pod-cidr, set on every published table) are routed and announced like
    // the Service CIDRs: pods of exposed headless Services are reached through them.
    want.extend(table.pod_cidrs.iter().copied());
    if !ipv6 {
        want.retain(|net| matches!(net, IpNet::V4(_)));
    }
    want
}

/// `--route-table`: `main` or a table number. 0 (unspecified), 253 (default) and 255
/// (local) are the kernel's and refused.
pub fn parse_route_table(s: &str) -> Result<u32, String> {
    let s = s.trim();
    if s == "main" {
        return Ok(MAIN_TABLE);
    }
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a routing table (`main` or a number like 100)"))?;
    match n {
        0 => Err("table 0 is not a table (it means \"unspecified\")".into()),
        253 | 255 => Err(format!(
            "table {n} is the kernel's {} table; use main or a table of its own (1-252, 256 and above)",
            if n == 253 { "default" } else { "local" }
        )),
        n => Ok(n),
    }
}

/// `--drain-timeout`: like other durations, but `0` (no drain) is allowed.
pub fn parse_drain_timeout(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if matches!(t, "0" | "0s" | "0ms") {
        return Ok(Duration::ZERO);
    }
    crate::config::parse_duration(t)
}

/// A prefix's state on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixState {
    /// The route is in the kernel: the daemon announces it.
    Announced,
    /// Withdrawn because a graceful stop began; flows still drain through the gateway.
    Draining,
    /// Withdrawn: no endpoint (per-service), not in the table any more, TUN down, stopped.
    Withdrawn,
}

impl PrefixState {
    pub fn label(self) -> &'static str {
        match self {
            PrefixState::Announced => "announced",
            PrefixState::Draining => "draining",
            PrefixState::Withdrawn => "withdrawn",
        }
    }
}

/// One prefix on the board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrefixView {
    #[serde(serialize_with = "display")]
    pub prefix: IpNet,
    pub state: PrefixState,
    /// Unix milliseconds of the last change.
    pub since: u64,
    /// Why it changed last: `table`, `ready`, `no_endpoints`, `tun_down`, `draining`, `stop`.
    pub reason: &'static str,
}

/// One change, for the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub view: PrefixView,
}

/// Changes kept for the event log (the sampler moves them every second).
const CHANGES_KEPT: usize = 512;
/// Withdrawn prefixes stay on the board this long, so the page can say when they went.
const WITHDRAWN_KEPT: Duration = Duration::from_secs(600);
/// At most this many withdrawn prefixes are remembered (per-service mode follows the table,
/// which clients do not grow, but a cluster can churn many ClusterIPs).
const WITHDRAWN_MAX: usize = 1024;

#[derive(Debug, Default)]
struct BoardInner {
    prefixes: BTreeMap<IpNet, PrefixView>,
    changes: VecDeque<Change>,
    seq: u64,
    total: u64,
    /// The last change handed to the event log ([`Board::take_new`]).
    logged: u64,
}

/// Per-prefix announcement state and the recent changes. One writer (the gateway's loop);
/// the status server reads it.
#[derive(Debug, Default)]
pub struct Board {
    inner: Mutex<BoardInner>,
}

fn display<S: serde::Serializer>(net: &IpNet, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(net)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Board {
    /// Records that exactly `announced` is in the kernel now. Prefixes announced before and
    /// not now become `Draining` (when `draining`) or `Withdrawn`, with `reason`. Returns the
    /// changes.
    pub fn record(
        &self,
        announced: &BTreeSet<IpNet>,
        draining: bool,
        reason: &'static str,
        now: SystemTime,
    ) -> Vec<Change> {
        let mut b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let at = unix_ms(now);
        let mut out = Vec::new();
        let mut set = |b: &mut BoardInner, prefix: IpNet, state: PrefixState, why: &'static str| {
            b.seq += 1;
            b.total += 1;
            let view = PrefixView {
                prefix,
                state,
                since: at,
                reason: why,
            };
            b.prefixes.insert(prefix, view.clone());
            let change = Change { seq: b.seq, view };
            if b.changes.len() >= CHANGES_KEPT {
                b.changes.pop_front();
            }
            b.changes.push_back(change.clone());
            out.push(change);
        };
        for prefix in announced {
            let is_announced = b
                .prefixes
                .get(prefix)
                .is_some_and(|v| v.state == PrefixState::Announced);
            if !is_announced {
                set(&mut b, *prefix, PrefixState::Announced, reason);
            }
        }
        let gone: Vec<IpNet> = b
            .prefixes
            .values()
            .filter(|v| v.state == PrefixState::Announced && !announced.contains(&v.prefix))
            .map(|v| v.prefix)
            .collect();
        let state = if draining {
            PrefixState::Draining
        } else {
            PrefixState::Withdrawn
        };
        for prefix in gone {
            set(&mut b, prefix, state, reason);
        }
        // A stop after a drain keeps the draining mark (only announced prefixes change).
        // Withdrawn entries expire, and their number is bounded.
        let keep_after = at.saturating_sub(WITHDRAWN_KEPT.as_millis() as u64);
        b.prefixes
            .retain(|_, v| v.state != PrefixState::Withdrawn || v.since >= keep_after);
        let withdrawn = b
            .prefixes
            .values()
            .filter(|v| v.state == PrefixState::Withdrawn)
            .count();
        if withdrawn > WITHDRAWN_MAX {
            let mut old: Vec<(u64, IpNet)> = b
                .prefixes
                .values()
                .filter(|v| v.state == PrefixState::Withdrawn)
                .map(|v| (v.since, v.prefix))
                .collect();
            old.sort();
            for (_, p) in old.into_iter().take(withdrawn - WITHDRAWN_MAX) {
                b.prefixes.remove(&p);
            }
        }
        out
    }

    /// Every prefix on the board, sorted.
    pub fn prefixes(&self) -> Vec<PrefixView> {
        let b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        b.prefixes.values().cloned().collect()
    }

    /// Changes not yet handed out by this call before, oldest first (for the event log; the
    /// status server's sampler is its one caller).
    pub fn take_new(&self) -> Vec<Change> {
        let mut b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let since = b.logged;
        b.logged = b.seq;
        b.changes
            .iter()
            .filter(|c| c.seq > since)
            .cloned()
            .collect()
    }

    /// Changes since start (the `clusterway_route_changes_total` counter).
    pub fn changes_total(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// The shell: applies [`Gate`] and [`wanted`] to the kernel through [`Host`], records the
/// outcome on the [`Board`], and remembers what it installed.
pub struct Announcer<'a> {
    pub host: &'a Host,
    pub ifindex: u32,
    pub table_id: u32,
    pub mode: AnnounceMode,
    pub cidrs: &'a [IpNet],
    pub ipv6: bool,
    pub board: &'a Board,
    /// What this process installed last, with its metric.
    installed: Option<(BTreeSet<IpNet>, u32)>,
}

impl<'a> Announcer<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        host: &'a Host,
        ifindex: u32,
        table_id: u32,
        mode: AnnounceMode,
        cidrs: &'a [IpNet],
        ipv6: bool,
        board: &'a Board,
    ) -> Self {
        Announcer {
            host,
            ifindex,
            table_id,
            mode,
            cidrs,
            ipv6,
            board,
            installed: None,
        }
    }

    /// Makes the kernel hold what `gate` and `table` ask for. With `force`, reconciles even
    /// when nothing seems to have changed (the kernel may have dropped routes of a device that
    /// went down). Returns the number of routes installed.
    pub async fn apply(
        &mut self,
        table: &ServiceTable,
        gate: Gate,
        force: bool,
    ) -> Result<usize, HostError> {
        // While draining the routes stay, with a metric no daemon announces, so what still
        // arrives before the routers converge is forwarded.
        let forwarding = gate.table && gate.tun_up;
        let want = if forwarding {
            wanted(self.mode, self.cidrs, table, self.ipv6)
        } else {
            BTreeSet::new()
        };
        let metric = if gate.draining {
            DRAINING_METRIC
        } else {
            ANNOUNCED_METRIC
        };
        if !force && self.installed.as_ref() == Some(&(want.clone(), metric)) {
            return Ok(want.len());
        }
        let diff = self
            .host
            .reconcile_routes_in(self.ifindex, self.table_id, Some(metric), &want)
            .await?;
        let reason = match gate.reason() {
            Some(r) => r,
            None if self.mode == AnnounceMode::PerService => "endpoints",
            None => "table",
        };
        if !diff.is_empty() {
            tracing::info!(
                routes = want.len(),
                draining = gate.draining,
                added = ?diff.added,
                removed = ?diff.removed,
                metric,
                reason,
                table = self.table_id,
                "routes reconciled"
            );
        }
        let announced = if gate.draining {
            BTreeSet::new()
        } else {
            want.clone()
        };
        let changes = self
            .board
            .record(&announced, gate.draining, reason, SystemTime::now());
        for c in &changes {
            tracing::info!(prefix = %c.view.prefix, state = c.view.state.label(), reason = c.view.reason, "announcement changed");
        }
        let n = want.len();
        self.installed = Some((want, metric));
        Ok(n)
    }

    /// Withdraws everything now (a stop, or a dead worker), recording `reason`.
    pub async fn withdraw(&mut self, draining: bool, reason: &'static str) {
        let empty = BTreeSet::new();
        match self
            .host
            .reconcile_routes_in(self.ifindex, self.table_id, None, &empty)
            .await
        {
            Ok(diff) => {
                if !diff.removed.is_empty() {
                    tracing::info!(withdrawn = ?diff.removed, reason, "routes withdrawn");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, label = e.label(), "could not withdraw the routes")
            }
        }
        for c in self
            .board
            .record(&empty, draining, reason, SystemTime::now())
        {
            tracing::info!(prefix = %c.view.prefix, state = c.view.state.label(), reason = c.view.reason, "announcement changed");
        }
        self.installed = Some((empty, ANNOUNCED_METRIC));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::{Protocol, ServiceEntry, ServicePort};
    use std::net::IpAddr;
    use std::sync::Arc;

    fn nets(v: &[&str]) -> BTreeSet<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn table(ports: Vec<ServicePort>) -> ServiceTable {
        let services = ports
            .into_iter()
            .map(|p| ServiceEntry {
                id: p.service.clone(),
                cluster_ips: vec![p.cluster_ip],
                type_: "ClusterIP".into(),
                ports: vec![Arc::new(p)],
                not_exposed: None,
                unsupported_ports: vec![],
            })
            .collect();
        ServiceTable::new(3, services, vec![])
    }

    #[test]
    fn the_gate_needs_a_table_a_tun_and_no_drain() {
        let g = Gate {
            table: true,
            tun_up: true,
            draining: false,
        };
        assert!(g.open());
        assert_eq!(g.reason(), None);
        assert_eq!(
            Gate { table: false, ..g }.reason(),
            Some("no_table"),
            "no first table yet"
        );
        assert_eq!(Gate { tun_up: false, ..g }.reason(), Some("tun_down"));
        assert_eq!(
            Gate {
                draining: true,
                ..g
            }
            .reason(),
            Some("draining")
        );
        assert!(!Gate {
            draining: true,
            ..g
        }
        .open());
    }

    #[test]
    fn per_service_announces_only_clusterips_with_usable_endpoints() {
        let t = table(vec![
            ServicePort::for_test(
                "a",
                "web",
                Protocol::Tcp,
                "10.96.0.10:80",
                &["10.244.1.1:80"],
            ),
            ServicePort::for_test("a", "empty", Protocol::Tcp, "10.96.0.99:80", &[]),
            ServicePort::for_test(
                "a",
                "v6",
                Protocol::Tcp,
                "[fd00:10:96::10]:80",
                &["[fd00:10:244::1]:80"],
            ),
        ]);
        let cidrs = nets(&["10.96.0.0/12"]).into_iter().collect::<Vec<_>>();
        assert_eq!(
            wanted(AnnounceMode::PerService, &cidrs, &t, true),
            nets(&["10.96.0.10/32", "fd00:10:96::10/128"])
        );
        assert_eq!(
            wanted(AnnounceMode::PerService, &cidrs, &t, false),
            nets(&["10.96.0.10/32"])
        );
        // Aggregated: the CIDR, endpoints or not.
        assert_eq!(
            wanted(AnnounceMode::Aggregated, &cidrs, &t, true),
            nets(&["10.96.0.0/12"])
        );
    }

    /// `--pod-cidr` ranges are routed and announced like the Service CIDR, in both modes
    /// (pods of exposed headless Services are reached through them); IPv6 ones only
    /// where the host has IPv6.
    #[test]
    fn pod_cidrs_are_routed_and_announced_in_both_modes() {
        let mut t = table(vec![ServicePort::for_test(
            "a",
            "web",
            Protocol::Tcp,
            "10.96.0.10:80",
            &["10.244.1.1:80"],
        )]);
        t.pod_cidrs = nets(&["10.244.0.0/16", "fd00:10:244::/56"])
            .into_iter()
            .collect();
        let cidrs = nets(&["10.96.0.0/12"]).into_iter().collect::<Vec<_>>();
        assert_eq!(
            wanted(AnnounceMode::Aggregated, &cidrs, &t, true),
            nets(&["10.96.0.0/12", "10.244.0.0/16", "fd00:10:244::/56"])
        );
        assert_eq!(
            wanted(AnnounceMode::PerService, &cidrs, &t, true),
            nets(&["10.96.0.10/32", "10.244.0.0/16", "fd00:10:244::/56"])
        );
        assert_eq!(
            wanted(AnnounceMode::Aggregated, &cidrs, &t, false),
            nets(&["10.96.0.0/12", "10.244.0.0/16"])
        );
    }

    #[test]
    fn route_tables_are_checked() {
        assert_eq!(parse_route_table("main"), Ok(254));
        assert_eq!(parse_route_table("100"), Ok(100));
        assert_eq!(parse_route_table("1000"), Ok(1000));
        assert!(parse_route_table("0").unwrap_err().contains("unspecified"));
        assert!(parse_route_table("255").unwrap_err().contains("local"));
        assert!(parse_route_table("253").unwrap_err().contains("default"));
        assert!(parse_route_table("-1")
            .unwrap_err()
            .contains("not a routing table"));
        assert!(parse_route_table("wan")
            .unwrap_err()
            .contains("not a routing table"));
    }

    #[test]
    fn drain_timeouts_allow_zero() {
        assert_eq!(parse_drain_timeout("0"), Ok(Duration::ZERO));
        assert_eq!(parse_drain_timeout("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_drain_timeout("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_drain_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_drain_timeout("soon").is_err());
        assert!(parse_drain_timeout("").is_err());
    }

    #[test]
    fn the_board_tracks_each_prefix_and_counts_changes() {
        let b = Board::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let c = b.record(
            &nets(&["10.96.0.10/32", "10.96.0.11/32"]),
            false,
            "table",
            t0,
        );
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|c| c.view.state == PrefixState::Announced));
        // Nothing new: no change.
        assert!(b
            .record(
                &nets(&["10.96.0.10/32", "10.96.0.11/32"]),
                false,
                "table",
                t0
            )
            .is_empty());
        let t1 = t0 + Duration::from_secs(5);
        let c = b.record(&nets(&["10.96.0.10/32"]), false, "endpoints", t1);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].view.prefix, "10.96.0.11/32".parse::<IpNet>().unwrap());
        assert_eq!(c[0].view.state, PrefixState::Withdrawn);
        assert_eq!(c[0].view.since, 1_005_000);
        // A drain marks the rest draining.
        let c = b.record(&BTreeSet::new(), true, "draining", t1);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].view.state, PrefixState::Draining);
        assert_eq!(b.changes_total(), 4);
        let new = b.take_new();
        assert_eq!(new.len(), 4);
        assert_eq!(new.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(b.take_new().is_empty(), "each change is handed out once");
        let views = b.prefixes();
        assert_eq!(views.len(), 2);
        // Withdrawn prefixes expire from the board after a while.
        b.record(&BTreeSet::new(), false, "stop", t1 + WITHDRAWN_KEPT * 2);
        assert_eq!(b.prefixes().len(), 1, "{:?}", b.prefixes());
        assert_eq!(b.prefixes()[0].state, PrefixState::Draining);
    }

    #[test]
    fn withdrawn_prefixes_are_bounded() {
        let b = Board::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let many: BTreeSet<IpNet> = (0..(WITHDRAWN_MAX as u32 + 100))
            .map(|i| IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(0x0a60_0000 + i))))
            .collect();
        b.record(&many, false, "table", t0);
        b.record(&BTreeSet::new(), false, "endpoints", t0);
        assert_eq!(b.prefixes().len(), WITHDRAWN_MAX);
        assert!(
            b.take_new().len() <= CHANGES_KEPT,
            "the change log is bounded"
        );
    }
}
