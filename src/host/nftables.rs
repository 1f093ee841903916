//! The gateway's own netfilter table, for flow offload: `table inet clusterway`.
//!
//! Owns: that table and everything in it, nothing else. It holds
//! - empty NAT chains at prerouting, output and postrouting: a NAT binding that ctnetlink
//!   puts on an entry is applied only while NAT hooks are registered in the namespace;
//! - at raw priority in prerouting, `notrack` for pure TCP SYNs to the routed ranges that do
//!   not arrive from the TUN device: the kernel must not track the first packet on its way
//!   into the TUN (it would confirm an entry of its own for the tuple, and ours could not be
//!   created); later packets of the flow are tracked and meet the gateway's entry;
//! - UDP, which has no SYN to tell a first datagram from the rest: at the same place, a
//!   client's datagram to the routed ranges is tracked only when its 4-tuple is in the set
//!   `udp4`/`udp6` of flows handed over (and then refreshes its element), and `notrack`ed
//!   otherwise, so a new flow's first datagram reaches the TUN device as a first SYN does.
//!   The element is added in the kernel, by a rule at OUTPUT that sees the gateway re-inject
//!   the first datagram and meet an entry of ours (chain `handed_over`): no netlink call
//!   per flow. Why this and not "delete the kernel's null-binding entry before creating
//!   ours" (the alternative): measured under a DNS load (`bench/udp.sh`, bench/README.md
//!   "UDP through a ClusterIP"), with two queries sent back to back on each new socket (a
//!   resolver's A and AAAA), the other way lost queries in every run (5-92 per 5 s): the second
//!   datagram lands on the tuple between the delete and the create, which fails, and the
//!   client is refused; the set lost none, and costs one ctnetlink request per new flow
//!   instead of up to four. With the set, a datagram is tracked only once its entry
//!   exists. Expiry order: an element lives [`UDP_SET_TIMEOUT_S`] after the client's last
//!   datagram, below the kernel's UDP timeout that the same datagram gave the entry
//!   (`nf_conntrack_udp_timeout`, 30 s by default; replies only extend it), so a tracked
//!   datagram finds its entry. Should the entry go first anyway (an operator's lower
//!   timeout, the entry deleted because its endpoint went, `conntrack -F`), the datagram
//!   takes an entry of the kernel's own into the TUN device and the gateway replaces it
//!   with one of its own; should the element go first (expired during a pause, a restart
//!   replaced the table), the datagram arrives untracked, creating fails with "exists",
//!   and the gateway re-injects it on its entry, which adds the element again. Bounds:
//!   [`UDP_SET_SIZE`] elements per family, and the kernel's conntrack table
//!   (`nf_conntrack_max`) for the entries;
//! - a loop guard: a packet the gateway re-injected (socket mark [`INJECT_MARK`]) that would
//!   leave through the TUN device again — it found no entry, so nothing translated it — is
//!   dropped and counted, instead of circling through the gateway at full speed;
//! - counters of the packets and bytes the kernel forwards for the gateway's entries, each
//!   way (`ct mark`). They are also what makes the kernel track packets here at all: empty
//!   NAT chains register the NAT hooks but not connection tracking, which only a rule with
//!   a `ct` expression asks for; without one a re-injected SYN meets no entry at OUTPUT.
//! - bytes per Service frontend, each way: dynamic sets with a counter per element, keyed by
//!   the flow's original destination (`ct original ip daddr . meta l4proto . ct original
//!   proto-dst`: ClusterIP, protocol, Service port), one per family and direction, filled
//!   by the kernel for our entries' packets ([`BY_SERVICE_SETS`], read with
//!   [`by_service`]). No accounting sysctl (`nf_conntrack_acct`) is needed. Bounded
//!   ([`BY_SERVICE_SIZE`] elements) and expiring (an element idle for
//!   [`BY_SERVICE_TIMEOUT`] goes; a Service that is gone stops being counted).
//!
//! Desired state: [`Ruleset::render`] gives the whole table for the ranges routed now, and
//! [`apply`] replaces the table in one transaction (`nft -f -`: create, delete, create), so
//! a crashed run's table is replaced on start and the NAT hooks never go away in between.
//! [`remove`] deletes it on a graceful stop.
//!
//! Programmed with Debian's `nft` (package `nftables`), fed on stdin: the netlink crates for
//! nftables cover tables and chains but not the expressions these rules need, and the
//! ruleset as text is what an operator reads back with `nft list table inet clusterway`.
//!
//! Must not touch: any other table (the host's firewall, kube-proxy's, Docker's), the
//! conntrack sysctls.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use super::conntrack::{MARK_OWNER, MARK_OWNER_MASK};

/// Family and name of the table.
pub const TABLE: &str = "inet clusterway";

/// The socket mark (`SO_MARK`) of the raw sockets that re-inject first packets.
pub const INJECT_MARK: u32 = 0x6377_0001;

/// What the table should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The TUN device: SYNs read back from it are not the client's.
    pub tun: String,
    /// The ranges routed into the TUN device (Service CIDRs or ClusterIPs).
    pub routed: BTreeSet<IpNet>,
}

/// What went wrong programming the table.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be run (not installed: `apt-get install nftables`).
    #[error("cannot run nft (apt-get install nftables)")]
    Spawn(#[source] std::io::Error),
    /// `nft` refused the ruleset.
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
    /// `nft -j` printed something that is not the table as JSON.
    #[error("cannot read nft's JSON listing: {0}")]
    Unreadable(String),
}

impl NftError {
    /// A short, stable label for metrics and structured logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Spawn(_) => "spawn",
            Self::Refused(_) => "refused",
            Self::Unreadable(_) => "unreadable",
        }
    }
}

impl Ruleset {
    /// The `nft -f` script that replaces the table with this ruleset.
    pub fn render(&self) -> String {
        let v4: Vec<String> = self
            .routed
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)))
            .map(ToString::to_string)
            .collect();
        let v6: Vec<String> = self
            .routed
            .iter()
            .filter(|n| matches!(n, IpNet::V6(_)))
            .map(ToString::to_string)
            .collect();
        let set = |name: &str, kind: &str, elems: &[String]| {
            let elements = if elems.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", elems.join(", "))
            };
            format!("  set {name} {{ type {kind}; flags interval;{elements} }}\n")
        };
        let syn = "tcp flags & (fin | syn | rst | ack) == syn";
        let tun = quote(&self.tun);
        let mut s = String::new();
        // Create (so that the delete cannot fail), delete, create: one transaction.
        s.push_str(&format!("table {TABLE}\ndelete table {TABLE}\n"));
        s.push_str(&format!("table {TABLE} {{\n"));
        s.push_str(&set("routed4", "ipv4_addr", &v4));
        s.push_str(&set("routed6", "ipv6_addr", &v6));
        s.push_str(&udp_sets());
        // Every packet the host forwards passes this chain: one jump by protocol, so that a
        // TCP packet past its SYN (almost all of them) costs a flag test, no set lookup.
        s.push_str(&format!(
            "  chain first_packet {{\n    type filter hook prerouting priority raw; policy accept;\n    \
             iifname {tun} return\n    \
             meta l4proto vmap {{ tcp : jump first_tcp, udp : jump first_udp }}\n  }}\n  \
             chain first_tcp {{\n    \
             {syn} ip daddr @routed4 notrack\n    \
             {syn} ip6 daddr @routed6 notrack\n  }}\n  \
             chain first_udp {{\n{udp}  }}\n",
            udp = udp_first_packet()
        ));
        for (chain, hook, prio) in [
            ("nat_prerouting", "prerouting", "dstnat"),
            ("nat_output", "output", "-100"),
            ("nat_postrouting", "postrouting", "srcnat"),
        ] {
            s.push_str(&format!(
                "  chain {chain} {{\n    type nat hook {hook} priority {prio}; policy accept;\n  }}\n"
            ));
        }
        s.push_str(&format!(
            "  chain loop_guard {{\n    type filter hook postrouting priority 0; policy accept;\n    \
             meta mark {INJECT_MARK:#x} oifname {tun} counter drop\n  }}\n"
        ));
        let ours = format!("ct mark and {MARK_OWNER_MASK:#x} == {MARK_OWNER:#x}");
        s.push_str(&udp_handed_over(&ours));
        s.push_str(&format!(
            "  counter {TO_ENDPOINT} {{ }}\n  counter {TO_CLIENT} {{ }}\n  \
             chain offloaded {{\n    type filter hook forward priority 0; policy accept;\n    \
             {ours} ct direction original counter name \"{TO_ENDPOINT}\"\n    \
             {ours} ct direction reply counter name \"{TO_CLIENT}\"\n  }}\n}}\n"
        ));
        s.push_str(&render_by_service());
        s
    }

    /// The `nft -f` script that puts this ruleset's routed ranges in the table's sets,
    /// leaving the rest (and its counters) as it is.
    pub fn render_sets(&self) -> String {
        let mut s = String::new();
        for (set, v6) in [("routed4", false), ("routed6", true)] {
            s.push_str(&format!("flush set {TABLE} {set}\n"));
            let elems: Vec<String> = self
                .routed
                .iter()
                .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                .map(ToString::to_string)
                .collect();
            if !elems.is_empty() {
                s.push_str(&format!(
                    "add element {TABLE} {set} {{ {} }}\n",
                    elems.join(", ")
                ));
            }
        }
        s
    }
}

/// How long a UDP flow stays in the `udp4`/`udp6` sets after its last datagram from the
/// client: below the kernel's timeout of an entry that a client datagram refreshed
/// (`nf_conntrack_udp_timeout`, 30 s by default), so that a datagram let through as tracked
/// finds its entry still there (see [`udp_first_packet`]).
pub const UDP_SET_TIMEOUT_S: u32 = 20;
/// UDP flows each of the sets holds at most (per family). Past it the kernel adds no
/// element: such a flow still works, each of its datagrams crossing the TUN device and
/// re-injected on its entry, until elements expire.
pub const UDP_SET_SIZE: u32 = 65536;

/// The sets of UDP flows handed over, keyed by the client's 4-tuple as it sends it.
fn udp_sets() -> String {
    let mut s = String::new();
    for (name, addr) in [("udp4", "ipv4_addr"), ("udp6", "ipv6_addr")] {
        s.push_str(&format!(
            "  set {name} {{ type {addr} . inet_service . {addr} . inet_service; \
             flags timeout; timeout {UDP_SET_TIMEOUT_S}s; size {UDP_SET_SIZE}; }}\n"
        ));
    }
    s
}

/// The 4-tuple of a UDP datagram as a set key, per family.
fn udp_key(ip: &str) -> String {
    format!("{ip} saddr . udp sport . {ip} daddr . udp dport")
}

/// UDP has no SYN: a datagram to the routed ranges that does not arrive from the TUN device
/// is tracked only when its flow is in the sets (handed over: its entry exists), and then
/// refreshes its element; any other is not tracked, so it reaches the TUN device without
/// leaving an entry of the kernel's own on the tuple, as a first SYN does. The kernel's
/// defragmentation runs before this chain (it needs conntrack, which the table asks for),
/// so a fragmented datagram is matched whole.
fn udp_first_packet() -> String {
    let mut s = String::new();
    for (ip, set, routed) in [("ip", "udp4", "routed4"), ("ip6", "udp6", "routed6")] {
        let key = udp_key(ip);
        s.push_str(&format!(
            "    {ip} daddr @{routed} {key} @{set} update @{set} {{ {key} }} return\n"
        ));
    }
    for (ip, routed) in [("ip", "routed4"), ("ip6", "routed6")] {
        s.push_str(&format!(
            "    {ip} daddr @{routed} meta l4proto udp notrack\n"
        ));
    }
    s
}

/// A datagram the gateway re-injects (socket mark [`INJECT_MARK`]) that met an entry of
/// ours at OUTPUT puts its flow in the sets: from then on the client's datagrams are
/// tracked and carried by the kernel. After conntrack (priority mangle), before NAT: the
/// entry is known and the destination is still the ClusterIP. No netlink call per flow.
fn udp_handed_over(ours: &str) -> String {
    let mut s = String::from(
        "  chain handed_over {\n    type filter hook output priority mangle; policy accept;\n",
    );
    for (ip, set, routed) in [("ip", "udp4", "routed4"), ("ip6", "udp6", "routed6")] {
        let key = udp_key(ip);
        s.push_str(&format!(
            "    meta mark {INJECT_MARK:#x} {ours} {ip} daddr @{routed} update @{set} {{ {key} }}\n"
        ));
    }
    s.push_str("  }\n");
    s
}

/// The named counters of the bytes the kernel forwarded for our entries, each way.
pub const TO_ENDPOINT: &str = "offloaded_to_endpoint";
pub const TO_CLIENT: &str = "offloaded_to_client";

/// A name as an nft string literal (interface names hold no quote: see
/// `config::parse_ifname`; anything else is dropped rather than let out of the quotes).
fn quote(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .collect();
    format!("\"{clean}\"")
}

fn run_nft(script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Replace the table with `rules` (atomically).
pub fn apply(rules: &Ruleset) -> Result<(), NftError> {
    run_nft(&rules.render())
}

/// Put `rules`' routed ranges in the existing table (its counters go on).
pub fn update_sets(rules: &Ruleset) -> Result<(), NftError> {
    run_nft(&rules.render_sets())
}

/// `(packets, bytes)` of the named counter `name` of the table, when it exists.
pub fn counter(name: &str) -> Option<(u64, u64)> {
    let out = Command::new("nft")
        .args(["list", "counter", "inet", "clusterway", name])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    parse_counter(&String::from_utf8_lossy(&out.stdout))
}

/// The `packets N bytes M` of `nft list counter` output.
fn parse_counter(text: &str) -> Option<(u64, u64)> {
    let mut words = text.split_whitespace();
    let mut packets = None;
    let mut bytes = None;
    while let Some(w) = words.next() {
        match w {
            "packets" => packets = words.next().and_then(|n| n.parse().ok()),
            "bytes" => bytes = words.next().and_then(|n| n.parse().ok()),
            _ => {}
        }
    }
    Some((packets?, bytes?))
}

/// The per-Service byte sets: (name, family, direction). Elements are
/// `ClusterIP . protocol . port` of the flows' original direction.
pub const BY_SERVICE_SETS: [(&str, Family, Direction); 4] = [
    ("svc4_to_endpoint", Family::V4, Direction::ToEndpoint),
    ("svc4_to_client", Family::V4, Direction::ToClient),
    ("svc6_to_endpoint", Family::V6, Direction::ToEndpoint),
    ("svc6_to_client", Family::V6, Direction::ToClient),
];
/// Elements (Service frontends) each set holds at most; when full, packets of a new
/// frontend go uncounted per Service (the table-wide counters still have them).
pub const BY_SERVICE_SIZE: u32 = 65_536;
/// An element not updated for this long is dropped by the kernel (its Service is gone or
/// idle; counting starts again from zero when it comes back).
pub const BY_SERVICE_TIMEOUT: &str = "1h";

/// An address family of the per-Service sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

/// Which way bytes went, as the per-Service sets count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to endpoint: the entries' original direction.
    ToEndpoint,
    /// Endpoint to client: the reply direction.
    ToClient,
}

/// A Service frontend as the sets key it: ClusterIP, IP protocol number, Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Frontend {
    pub ip: std::net::IpAddr,
    pub proto: u8,
    pub port: u16,
}

/// The second block of the table script: the per-Service sets and the base chain that
/// fills them (forward hook, our entries only; TCP and UDP).
fn render_by_service() -> String {
    let mut s = format!("table {TABLE} {{\n");
    for (name, family, _) in BY_SERVICE_SETS {
        let addr = match family {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        };
        s.push_str(&format!(
            "  set {name} {{ type {addr} . inet_proto . inet_service; size {BY_SERVICE_SIZE}; \
             flags dynamic,timeout; timeout {BY_SERVICE_TIMEOUT}; counter; }}\n"
        ));
    }
    // Every forwarded packet of ours passes this chain: one jump by family, then the
    // family's four rules, instead of eight tried in turn.
    s.push_str(&format!(
        "  chain by_service {{\n    type filter hook forward priority 0; policy accept;\n    \
         ct mark and {MARK_OWNER_MASK:#x} != {MARK_OWNER:#x} return\n    \
         meta nfproto vmap {{ ipv4 : jump by_service4, ipv6 : jump by_service6 }}\n  }}\n"
    ));
    for (chain, want) in [("by_service4", Family::V4), ("by_service6", Family::V6)] {
        s.push_str(&format!("  chain {chain} {{\n"));
        for (name, family, dir) in BY_SERVICE_SETS {
            if family != want {
                continue;
            }
            let daddr = match family {
                Family::V4 => "ip daddr",
                Family::V6 => "ip6 daddr",
            };
            let way = match dir {
                Direction::ToEndpoint => "original",
                Direction::ToClient => "reply",
            };
            // `ct original proto-dst` takes its type from the protocol matched before it.
            for l4 in ["tcp", "udp"] {
                s.push_str(&format!(
                    "    meta l4proto {l4} ct direction {way} update @{name} \
                     {{ ct original {daddr} . meta l4proto . ct original proto-dst }}\n"
                ));
            }
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

/// The per-Service byte counters now: (direction, frontend, bytes) of every element of the
/// sets, from `nft -j list set inet clusterway NAME`, one set at a time. Not the whole
/// table: its `udp4`/`udp6` sets hold an element per UDP flow handed over, up to 65,536
/// each, which clients control (a spoofed UDP flood fills them), and listing them every
/// few seconds cost tens of MiB of JSON; these four hold one element per Service frontend.
pub fn by_service() -> Result<Vec<(Direction, Frontend, u64)>, NftError> {
    let mut all = Vec::new();
    for (name, _, _) in BY_SERVICE_SETS {
        let out = Command::new("nft")
            .args(["-j", "list", "set", "inet", "clusterway", name])
            .stdin(Stdio::null())
            .output()
            .map_err(NftError::Spawn)?;
        if !out.status.success() {
            return Err(NftError::Refused(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        all.extend(parse_by_service(&out.stdout)?);
    }
    Ok(all)
}

/// The per-Service sets' elements in `nft -j` output (pure). Elements that do not parse
/// (a key nft printed by name, a protocol it does not know) are skipped.
pub fn parse_by_service(json: &[u8]) -> Result<Vec<(Direction, Frontend, u64)>, NftError> {
    use serde_json::Value;
    let doc: Value =
        serde_json::from_slice(json).map_err(|e| NftError::Unreadable(e.to_string()))?;
    let items = doc["nftables"]
        .as_array()
        .ok_or_else(|| NftError::Unreadable("no \"nftables\" array".into()))?;
    let mut out = Vec::new();
    for set in items.iter().filter_map(|i| i.get("set")) {
        let Some(dir) = BY_SERVICE_SETS
            .iter()
            .find(|(name, _, _)| set["name"] == *name)
            .map(|(_, _, dir)| *dir)
        else {
            continue;
        };
        for elem in set["elem"].as_array().into_iter().flatten() {
            // `{"elem": {"val": KEY, "counter": {...}, ...}}`.
            let e = &elem["elem"];
            let Some(key) = e["val"]["concat"].as_array() else {
                continue;
            };
            let bytes = e["counter"]["bytes"].as_u64();
            if let (Some(f), Some(bytes)) = (frontend(key), bytes) {
                out.push((dir, f, bytes));
            }
        }
    }
    Ok(out)
}

/// `["10.96.0.10", "tcp", 80]` as a frontend.
fn frontend(key: &[serde_json::Value]) -> Option<Frontend> {
    let [ip, proto, port] = key else { return None };
    let ip = ip.as_str()?.parse().ok()?;
    let proto = match proto {
        serde_json::Value::String(p) if p == "tcp" => libc::IPPROTO_TCP as u8,
        serde_json::Value::String(p) if p == "udp" => libc::IPPROTO_UDP as u8,
        serde_json::Value::String(p) => p.parse().ok()?,
        other => u8::try_from(other.as_u64()?).ok()?,
    };
    let port = match port {
        serde_json::Value::String(p) => p.parse().ok()?,
        other => u16::try_from(other.as_u64()?).ok()?,
    };
    Some(Frontend { ip, proto, port })
}

/// Delete the table (nothing to do when it is not there).
pub fn remove() -> Result<(), NftError> {
    run_nft(&format!("table {TABLE}\ndelete table {TABLE}\n"))
}

/// Whether the table exists in this namespace.
pub fn exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", "clusterway"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_for_two_ranges() {
        let r = Ruleset {
            tun: "cw0".into(),
            routed: ["10.96.0.0/16", "fd00:10:96::/112", "10.97.0.10/32"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        };
        let want = "table inet clusterway
delete table inet clusterway
table inet clusterway {
  set routed4 { type ipv4_addr; flags interval; elements = { 10.96.0.0/16, 10.97.0.10/32 }; }
  set routed6 { type ipv6_addr; flags interval; elements = { fd00:10:96::/112 }; }
  set udp4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; flags timeout; timeout 20s; size 65536; }
  set udp6 { type ipv6_addr . inet_service . ipv6_addr . inet_service; flags timeout; timeout 20s; size 65536; }
  chain first_packet {
    type filter hook prerouting priority raw; policy accept;
    iifname \"cw0\" return
    meta l4proto vmap { tcp : jump first_tcp, udp : jump first_udp }
  }
  chain first_tcp {
    tcp flags & (fin | syn | rst | ack) == syn ip daddr @routed4 notrack
    tcp flags & (fin | syn | rst | ack) == syn ip6 daddr @routed6 notrack
  }
  chain first_udp {
    ip daddr @routed4 ip saddr . udp sport . ip daddr . udp dport @udp4 update @udp4 { ip saddr . udp sport . ip daddr . udp dport } return
    ip6 daddr @routed6 ip6 saddr . udp sport . ip6 daddr . udp dport @udp6 update @udp6 { ip6 saddr . udp sport . ip6 daddr . udp dport } return
    ip daddr @routed4 meta l4proto udp notrack
    ip6 daddr @routed6 meta l4proto udp notrack
  }
  chain nat_prerouting {
    type nat hook prerouting priority dstnat; policy accept;
  }
  chain nat_output {
    type nat hook output priority -100; policy accept;
  }
  chain nat_postrouting {
    type nat hook postrouting priority srcnat; policy accept;
  }
  chain loop_guard {
    type filter hook postrouting priority 0; policy accept;
    meta mark 0x63770001 oifname \"cw0\" counter drop
  }
  chain handed_over {
    type filter hook output priority mangle; policy accept;
    meta mark 0x63770001 ct mark and 0xffff0000 == 0x63770000 ip daddr @routed4 update @udp4 { ip saddr . udp sport . ip daddr . udp dport }
    meta mark 0x63770001 ct mark and 0xffff0000 == 0x63770000 ip6 daddr @routed6 update @udp6 { ip6 saddr . udp sport . ip6 daddr . udp dport }
  }
  counter offloaded_to_endpoint { }
  counter offloaded_to_client { }
  chain offloaded {
    type filter hook forward priority 0; policy accept;
    ct mark and 0xffff0000 == 0x63770000 ct direction original counter name \"offloaded_to_endpoint\"
    ct mark and 0xffff0000 == 0x63770000 ct direction reply counter name \"offloaded_to_client\"
  }
}
table inet clusterway {
  set svc4_to_endpoint { type ipv4_addr . inet_proto . inet_service; size 65536; flags dynamic,timeout; timeout 1h; counter; }
  set svc4_to_client { type ipv4_addr . inet_proto . inet_service; size 65536; flags dynamic,timeout; timeout 1h; counter; }
  set svc6_to_endpoint { type ipv6_addr . inet_proto . inet_service; size 65536; flags dynamic,timeout; timeout 1h; counter; }
  set svc6_to_client { type ipv6_addr . inet_proto . inet_service; size 65536; flags dynamic,timeout; timeout 1h; counter; }
  chain by_service {
    type filter hook forward priority 0; policy accept;
    ct mark and 0xffff0000 != 0x63770000 return
    meta nfproto vmap { ipv4 : jump by_service4, ipv6 : jump by_service6 }
  }
  chain by_service4 {
    meta l4proto tcp ct direction original update @svc4_to_endpoint { ct original ip daddr . meta l4proto . ct original proto-dst }
    meta l4proto udp ct direction original update @svc4_to_endpoint { ct original ip daddr . meta l4proto . ct original proto-dst }
    meta l4proto tcp ct direction reply update @svc4_to_client { ct original ip daddr . meta l4proto . ct original proto-dst }
    meta l4proto udp ct direction reply update @svc4_to_client { ct original ip daddr . meta l4proto . ct original proto-dst }
  }
  chain by_service6 {
    meta l4proto tcp ct direction original update @svc6_to_endpoint { ct original ip6 daddr . meta l4proto . ct original proto-dst }
    meta l4proto udp ct direction original update @svc6_to_endpoint { ct original ip6 daddr . meta l4proto . ct original proto-dst }
    meta l4proto tcp ct direction reply update @svc6_to_client { ct original ip6 daddr . meta l4proto . ct original proto-dst }
    meta l4proto udp ct direction reply update @svc6_to_client { ct original ip6 daddr . meta l4proto . ct original proto-dst }
  }
}
";
        assert_eq!(r.render(), want);
    }

    #[test]
    fn empty_sets_have_no_elements_clause_and_names_stay_quoted() {
        let r = Ruleset {
            tun: "c\"w0".into(),
            routed: BTreeSet::new(),
        };
        let s = r.render();
        assert!(s.contains("set routed4 { type ipv4_addr; flags interval; }"));
        assert!(s.contains("iifname \"cw0\" return"), "{s}");
    }

    #[test]
    fn set_updates_and_counters() {
        let r = Ruleset {
            tun: "cw0".into(),
            routed: ["10.96.0.10/32", "fd00::/112"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        };
        assert_eq!(
            r.render_sets(),
            "flush set inet clusterway routed4\n\
             add element inet clusterway routed4 { 10.96.0.10/32 }\n\
             flush set inet clusterway routed6\n\
             add element inet clusterway routed6 { fd00::/112 }\n"
        );
        let listed = "table inet clusterway {\n\tcounter offloaded_to_client {\n\t\tpackets 12 bytes 7000\n\t}\n}\n";
        assert_eq!(parse_counter(listed), Some((12, 7000)));
        assert_eq!(parse_counter("Error: No such file or directory"), None);
    }

    #[test]
    fn per_service_counters_from_nft_json() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
          {"table": {"family": "inet", "name": "clusterway", "handle": 3}},
          {"counter": {"family": "inet", "name": "offloaded_to_client", "table": "clusterway", "packets": 9, "bytes": 900}},
          {"set": {"family": "inet", "name": "routed4", "table": "clusterway", "type": "ipv4_addr",
                   "elem": [{"prefix": {"addr": "10.96.0.0", "len": 16}}]}},
          {"set": {"family": "inet", "name": "svc4_to_client", "table": "clusterway",
                   "type": ["ipv4_addr", "inet_proto", "inet_service"], "size": 65536,
                   "elem": [{"elem": {"val": {"concat": ["10.96.0.10", "tcp", 80]}, "expires": 3599,
                                      "counter": {"packets": 70, "bytes": 3000000}}},
                            {"elem": {"val": {"concat": ["10.96.0.53", "udp", 53]},
                                      "counter": {"packets": 1, "bytes": 60}}},
                            {"elem": {"val": {"concat": ["10.96.0.11", "tcp", "http"]},
                                      "counter": {"packets": 1, "bytes": 60}}},
                            {"elem": {"val": {"concat": ["10.96.0.12", "tcp", 80]}}}]}},
          {"set": {"family": "inet", "name": "svc6_to_endpoint", "table": "clusterway",
                   "elem": [{"elem": {"val": {"concat": ["fd00:10:96::10", 6, 80]},
                                      "counter": {"packets": 3, "bytes": 240}}}]}},
          {"set": {"family": "inet", "name": "svc6_to_client", "table": "clusterway"}},
          {"rule": {"family": "inet", "table": "clusterway", "chain": "by_service",
                    "expr": [{"set": {"op": "update", "set": "@svc4_to_client"}}]}}]}"#;
        let got = parse_by_service(json).unwrap();
        let fe = |ip: &str, proto: u8, port: u16| Frontend {
            ip: ip.parse().unwrap(),
            proto,
            port,
        };
        assert_eq!(
            got,
            vec![
                (Direction::ToClient, fe("10.96.0.10", 6, 80), 3_000_000),
                (Direction::ToClient, fe("10.96.0.53", 17, 53), 60),
                (Direction::ToEndpoint, fe("fd00:10:96::10", 6, 80), 240),
            ]
        );
        assert!(matches!(
            parse_by_service(b"Error: No such file or directory"),
            Err(NftError::Unreadable(_))
        ));
        assert!(matches!(
            parse_by_service(b"{\"other\": 1}"),
            Err(NftError::Unreadable(_))
        ));
    }
}
