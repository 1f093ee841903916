//! The host side of flow offload: whether this kernel can carry the gateway's flows, and the
//! state the gateway keeps there while it does.
//!
//! At start ([`OffloadHost::start`]): a raw socket is opened and closed (without
//! CAP_NET_RAW — a container that drops it — the first packets could not be re-injected),
//! and a probe entry with both NATs is created and deleted through ctnetlink (a kernel
//! without conntrack NAT, or a namespace where ctnetlink is refused); either failing, the
//! gateway falls back to the proxy dataplane, saying why; the
//! netfilter table is put in place (replacing a crashed run's); the entries a previous run
//! left (killed, or upgraded) are counted and adopted: they keep carrying their flows.
//! While running: [`OffloadHost::set_routed`] keeps the table's routed ranges in step with
//! the routes. On a graceful stop ([`OffloadHost::stop`]): the table and every entry of
//! ours are removed, so a stop leaves nothing behind (flows end with the routes anyway).
//!
//! Owns: the table (`host::nftables`) and the entries with our mark (`host::conntrack`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Mutex;

use ipnet::IpNet;

use super::conntrack::{self, Conntrack, ConntrackError, NatEntry, Tuple};
use super::nftables::{self, NftError, Ruleset};
use crate::cluster::kubeconfig::error_chain;

/// The probe's entry: TEST-NET-1 addresses (RFC 5737), never seen on a real network, with
/// a mark of ours the data path never uses.
fn probe_entry() -> NatEntry {
    let sa = |s: &str| {
        s.parse::<SocketAddr>()
            .unwrap_or(SocketAddr::from(([0; 4], 0)))
    };
    NatEntry {
        orig: Tuple::tcp(sa("192.0.2.1:9"), sa("192.0.2.2:9")),
        endpoint: sa("192.0.2.3:9"),
        source: sa("192.0.2.4:0").ip(),
        source_ports: (1024, 65535),
        mark: conntrack::MARK_OWNER | PROBE_MARK,
        timeout: 1,
        tcp_state: Some(conntrack::tcp_state::SYN_SENT),
        be_liberal: false,
    }
}

/// The low half of the probe entry's mark.
const PROBE_MARK: u32 = 0xffff;

/// Why offload is not available.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// ctnetlink refused the probe (no conntrack NAT in this kernel, no permission).
    /// (The cause is the error's `source()`, not in its text: a chain printed with `{:#}`
    /// or [`Unavailable::reason`] would name it twice.)
    #[error("conntrack cannot create NAT entries here")]
    Conntrack(#[from] ConntrackError),
    /// The netfilter table could not be installed.
    #[error("the netfilter table could not be installed")]
    Table(#[from] NftError),
    /// No raw socket for re-injecting first packets (no CAP_NET_RAW).
    #[error("cannot open a raw socket to re-inject first packets (CAP_NET_RAW is needed)")]
    RawSocket(#[source] std::io::Error),
}

impl Unavailable {
    /// A short, stable label for metrics and structured logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Conntrack(_) => "conntrack",
            Self::Table(_) => "nftables",
            Self::RawSocket(_) => "raw_socket",
        }
    }

    /// The whole chain of causes on one line, each once (the reason the status page shows).
    pub fn reason(&self) -> String {
        error_chain(self)
    }
}

/// Create and delete the probe entry: can this kernel, here, hold an entry with NAT?
pub fn probe() -> Result<(), ConntrackError> {
    let mut ct = Conntrack::open()?;
    let e = probe_entry();
    match ct.create(&e) {
        Ok(()) => {}
        // A probe left by a run killed between create and delete.
        Err(err) if err.errno() == Some(libc::EEXIST) => {
            ct.delete(&e.orig)?;
            ct.create(&e)?;
        }
        Err(err) => return Err(err),
    }
    ct.delete(&e.orig)?;
    Ok(())
}

/// Open and close a raw IPv4 socket of the kind the workers re-inject first packets
/// through: can this process (CAP_NET_RAW)?
pub fn raw_probe() -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .map(drop)
}

/// The kernel's timeout of a UDP entry after a client datagram
/// (`net.netfilter.nf_conntrack_udp_timeout`), read at most, never changed.
fn udp_timeout() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_udp_timeout")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// A UDP flow's element in the netfilter table's set must expire before its entry (see
/// `host::nftables`, [`nftables::UDP_SET_TIMEOUT_S`]). With a shorter kernel timeout the
/// flows still work: a datagram that finds its entry gone takes one of the kernel's own
/// into the TUN device and is handed over again, at the cost of a trip through the gateway
/// after every pause. Said once at start.
fn warn_if_udp_timeout_short() {
    if let Some(t) = udp_timeout() {
        if t <= nftables::UDP_SET_TIMEOUT_S {
            tracing::warn!(
                nf_conntrack_udp_timeout = t,
                set_timeout = nftables::UDP_SET_TIMEOUT_S,
                "the kernel's UDP timeout is not above the gateway's UDP set timeout: a UDP flow quiet for that long crosses the gateway again"
            );
        }
    }
}

/// The offload state the gateway keeps on the host while it runs.
pub struct OffloadHost {
    tun: String,
    routed: Mutex<BTreeSet<IpNet>>,
    /// Entries of ours found at start (a previous run's flows, adopted).
    pub adopted: usize,
}

impl OffloadHost {
    /// Probe, install the table (no routed range yet), count the entries a previous run
    /// left.
    pub fn start(tun: &str) -> Result<OffloadHost, Unavailable> {
        raw_probe().map_err(Unavailable::RawSocket)?;
        probe()?;
        nftables::apply(&Ruleset {
            tun: tun.to_string(),
            routed: BTreeSet::new(),
        })?;
        warn_if_udp_timeout_short();
        let adopted = Conntrack::open()
            .and_then(|mut ct| ct.dump_ours())
            .map(|v| v.len())
            .unwrap_or_else(|e| {
                tracing::warn!(error = %error_chain(&e), "cannot list the conntrack entries of an earlier run");
                0
            });
        Ok(OffloadHost {
            tun: tun.to_string(),
            routed: Mutex::new(BTreeSet::new()),
            adopted,
        })
    }

    /// The ranges routed into the TUN device changed: put them in the table (only when
    /// they differ from what it holds).
    pub fn set_routed(&self, routed: &BTreeSet<IpNet>) -> Result<(), NftError> {
        let mut have = self.routed.lock().unwrap_or_else(|e| e.into_inner());
        if *have == *routed {
            return Ok(());
        }
        nftables::update_sets(&Ruleset {
            tun: self.tun.clone(),
            routed: routed.clone(),
        })?;
        *have = routed.clone();
        Ok(())
    }

    /// Remove the table and every entry of ours.
    pub fn stop(&self) {
        if let Err(e) = nftables::remove() {
            tracing::warn!(error = %error_chain(&e), "could not remove the netfilter table");
        }
        match Conntrack::open().and_then(|mut ct| ct.flush_ours()) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "could not remove the conntrack entries")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why offload is unavailable names each cause once, in its reason and in an error
    /// chain (`{:#}`, as `main` prints errors).
    #[test]
    fn the_cause_of_unavailable_is_named_once() {
        let e = Unavailable::from(NftError::Refused("syntax error".into()));
        assert_eq!(
            e.reason(),
            "the netfilter table could not be installed: nft refused the ruleset: syntax error"
        );
        let chained = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(chained.matches("syntax error").count(), 1, "{chained}");

        let denied = std::io::Error::from_raw_os_error(libc::EPERM);
        let text = denied.to_string();
        let e = Unavailable::from(ConntrackError::Socket(denied));
        assert_eq!(e.reason().matches(&text).count(), 1, "{}", e.reason());
        assert!(e
            .reason()
            .starts_with("conntrack cannot create NAT entries here: "));
        let chained = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(chained.matches(&text).count(), 1, "{chained}");
    }
}
