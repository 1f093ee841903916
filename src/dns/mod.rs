//! The authoritative DNS server for the cluster zone: outside hosts resolve
//! `svc.ns.svc.cluster.local` (and headless / StatefulSet pod names) from the gateway, from
//! the same snapshot the dataplane uses, with the exposure policy applied to names as to
//! packets.
//!
//! - `answer`: the pure core — query bytes, the snapshot's [`crate::cluster::names::NameTable`],
//!   the client's address → reply bytes, "forward this", or a counted drop. No sockets.
//! - `forward`: the bounded table of queries forwarded upstream (`--dns-forward`), with
//!   expiry. Pure.
//! - `server`: the I/O shell — UDP and TCP listeners (bounded connections, idle timeouts),
//!   the forwarder socket.
//! - `stats`: counters per response code and drop reason (`/metrics`), and a bounded ring of
//!   failed queries (the status page's event feed).
//!
//! It owns its sockets and counters; it must not touch the table (read-only snapshots) or
//! anything of the host beyond the addresses it was told to listen on.

pub mod answer;
pub mod forward;
pub mod server;
pub mod stats;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Args;
use hickory_proto::rr::Name;

/// The DNS server's flags (flattened into `clusterway run`).
#[derive(Debug, Clone, Args)]
pub struct DnsArgs {
    /// Serve the cluster zone over UDP and TCP on this address (repeatable; off by
    /// default), e.g. `0.0.0.0:53` or `[::]:53`.
    #[arg(long = "dns-listen", value_name = "ADDR:PORT")]
    pub dns_listen: Vec<SocketAddr>,

    /// The cluster's DNS zone.
    #[arg(long, default_value = "cluster.local", value_name = "ZONE", value_parser = parse_zone)]
    pub dns_zone: Name,

    /// TTL of answers (and of the SOA's negative-caching minimum), e.g. 5s, 1m.
    #[arg(long, default_value = "5s", value_parser = parse_ttl, value_name = "DURATION")]
    pub dns_ttl: u32,

    /// Forward queries outside the zone to this resolver (`ADDR` or `ADDR:PORT`) instead
    /// of answering REFUSED. Only clients allowed by `--allow-source` may use it.
    #[arg(long, value_name = "ADDR", value_parser = parse_forward)]
    pub dns_forward: Option<SocketAddr>,
}

impl DnsArgs {
    /// Whether the DNS server runs at all.
    pub fn enabled(&self) -> bool {
        !self.dns_listen.is_empty()
    }

    /// What clap cannot check: `--dns-forward` needs a server to forward for, and must not
    /// be one of its own listeners (every out-of-zone query would go round until the
    /// in-flight table is full).
    pub fn validate(&self) -> Result<(), String> {
        let Some(fwd) = self.dns_forward else {
            return Ok(());
        };
        if self.dns_listen.is_empty() {
            return Err(format!(
                "--dns-forward {fwd} without --dns-listen: there is no DNS server to forward for"
            ));
        }
        for listen in &self.dns_listen {
            let same_port = listen.port() == fwd.port();
            let same_ip =
                listen.ip() == fwd.ip() || (listen.ip().is_unspecified() && fwd.ip().is_loopback());
            if same_port && same_ip {
                return Err(format!(
                    "--dns-forward {fwd} is this server's own --dns-listen {listen}: queries \
                     would be forwarded to itself"
                ));
            }
        }
        Ok(())
    }
}

/// How many of a bounded resource (TCP connections, forwarded queries) each client address
/// holds, each at most its cap. Only addresses holding one are kept, so the map is no
/// larger than the resource's own bound.
#[derive(Debug, Default)]
pub struct PerClient {
    held: HashMap<IpAddr, usize>,
}

impl PerClient {
    /// What `client` holds now.
    pub fn held(&self, client: IpAddr) -> usize {
        self.held.get(&client).copied().unwrap_or(0)
    }

    /// One more for `client`, unless it holds `cap` already.
    pub fn take(&mut self, client: IpAddr, cap: usize) -> bool {
        if self.held(client) >= cap {
            return false;
        }
        *self.held.entry(client).or_insert(0) += 1;
        true
    }

    /// One given back by `client`.
    pub fn release(&mut self, client: IpAddr) {
        if let Some(n) = self.held.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&client);
            }
        }
    }

    /// Whether no address holds any.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// `cluster.local` or `cluster.local.` → the lowercase FQDN.
pub fn parse_zone(s: &str) -> Result<Name, String> {
    let trimmed = s.trim().trim_end_matches('.');
    if trimmed.is_empty() {
        return Err("the DNS zone must not be empty (nor the root)".into());
    }
    if !crate::cluster::names::valid_dns_name(trimmed) {
        return Err(format!("`{s}` is not a DNS name like cluster.local"));
    }
    let mut name = Name::from_ascii(trimmed).map_err(|e| format!("`{s}`: {e}"))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

/// A TTL as a duration (`5s`, `1m`) or seconds, from one second to one day.
pub fn parse_ttl(s: &str) -> Result<u32, String> {
    let d: Duration = crate::config::parse_duration(s)?;
    if d > Duration::from_secs(86_400) {
        return Err(format!("--dns-ttl {s} is longer than a day"));
    }
    if d.subsec_nanos() != 0 {
        return Err(format!("--dns-ttl {s}: TTLs are whole seconds"));
    }
    u32::try_from(d.as_secs()).map_err(|_| format!("--dns-ttl {s} is too long"))
}

/// `10.0.0.53` (port 53) or `10.0.0.53:5353` or `[fd00::53]:53`.
pub fn parse_forward(s: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("`{s}` is not an address like 10.0.0.53 or 10.0.0.53:53"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        dns: DnsArgs,
    }

    #[test]
    fn flags_parse_and_reject_clearly() {
        assert_eq!(
            parse_zone("Cluster.Local.").unwrap().to_ascii(),
            "cluster.local."
        );
        assert!(parse_zone(".").is_err());
        assert!(parse_zone("a..b").is_err());
        assert_eq!(parse_ttl("5s"), Ok(5));
        assert_eq!(parse_ttl("1m"), Ok(60));
        assert!(parse_ttl("500ms").is_err());
        assert!(parse_ttl("2d").is_err());
        assert_eq!(
            parse_forward("10.0.0.53"),
            Ok("10.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            parse_forward("[fd00::1]:5353"),
            Ok("[fd00::1]:5353".parse().unwrap())
        );
        assert!(parse_forward("resolver").is_err());
    }

    #[test]
    fn a_forwarder_needs_a_listener_other_than_itself() {
        let args = |v: &[&str]| {
            let mut all = vec!["x"];
            all.extend_from_slice(v);
            Cli::parse_from(all).dns
        };
        assert_eq!(args(&[]).validate(), Ok(()));
        assert_eq!(
            args(&["--dns-listen", "10.0.0.1:53", "--dns-forward", "10.0.0.53"]).validate(),
            Ok(())
        );
        let e = args(&["--dns-forward", "10.0.0.53"])
            .validate()
            .unwrap_err();
        assert!(e.contains("without --dns-listen"), "{e}");
        let e = args(&["--dns-listen", "10.0.0.1:53", "--dns-forward", "10.0.0.1"])
            .validate()
            .unwrap_err();
        assert!(e.contains("to itself"), "{e}");
        let e = args(&[
            "--dns-listen",
            "0.0.0.0:53",
            "--dns-forward",
            "127.0.0.1:53",
        ])
        .validate()
        .unwrap_err();
        assert!(e.contains("to itself"), "{e}");
        // Another port of the same host is another server.
        assert_eq!(
            args(&[
                "--dns-listen",
                "0.0.0.0:53",
                "--dns-forward",
                "127.0.0.1:5300"
            ])
            .validate(),
            Ok(())
        );
    }
}
