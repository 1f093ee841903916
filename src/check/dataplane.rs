//! Which dataplane `clusterway run` will use here, and why: flow offload needs raw sockets
//! (CAP_NET_RAW), conntrack entries with NAT through ctnetlink and the `nft` program;
//! without any of them the gateway falls back to the proxy.
//!
//! Changes nothing that stays: a raw socket is opened and closed; the probe is the one `run` makes (a conntrack entry between
//! TEST-NET addresses, with the gateway's mark, deleted at once); `nft` is only asked for
//! its version; the conntrack table size is read.

use std::process::{Command, Stdio};

use super::report::Check;
use crate::config::Dataplane;
use crate::host::{conntrack, offload};

pub const NAME: &str = "dataplane";

/// Whether `nft` runs (its version), or why not.
fn nft_version() -> Result<String, String> {
    match Command::new("nft")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(e) => Err(format!("cannot run nft: {e}")),
    }
}

/// The dataplane `run --dataplane requested` would use.
pub fn check(requested: Dataplane) -> Check {
    if requested == Dataplane::Proxy {
        return Check::pass(NAME, "proxy (asked for with --dataplane proxy)");
    }
    let fix = "offload needs conntrack with NAT in the kernel (nf_conntrack, nf_nat), \
               CAP_NET_ADMIN, CAP_NET_RAW (raw sockets), and nft (apt-get install nftables); the \
               proxy works without them";
    if let Err(e) = offload::raw_probe() {
        let reason = offload::Unavailable::RawSocket(e).reason();
        return Check::warn(NAME, format!("proxy will be used: {reason}"), fix);
    }
    if let Err(e) = offload::probe() {
        let reason = offload::Unavailable::from(e).reason();
        return Check::warn(NAME, format!("proxy will be used: {reason}"), fix);
    }
    match nft_version() {
        Ok(version) => {
            let ceiling = conntrack::table_size()
                .map(|n| format!("{n} flows (nf_conntrack_max)"))
                .unwrap_or_else(|| "unknown".into());
            Check::pass(
                NAME,
                format!("offload: conntrack takes NAT entries, {version}; flow ceiling {ceiling}"),
            )
        }
        Err(e) => Check::warn(NAME, format!("proxy will be used: {e}"), fix),
    }
}
