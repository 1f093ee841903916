//! Host checks: can this process create the TUN device, and can it turn forwarding on?
//!
//! The TUN check creates a device under a temporary unique name and drops it at once (the
//! kernel removes a non-persistent TUN device when its last queue closes). The forwarding
//! check only reads: it opens the sysctl files for writing to learn whether a write would be
//! allowed, and never writes. Nothing else on the host is touched.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::report::Check;
use crate::dataplane::tun::{TunDevice, TunError};
use crate::host::sysctl;

pub const TUN: &str = "TUN device can be created";
pub const FORWARDING: &str = "forwarding can be enabled";

/// Longest `--tun-name-prefix`: the prefix plus 7 hex digits must fit `IFNAMSIZ` (15).
pub const MAX_TUN_PREFIX: usize = 8;

const DEV_NET_TUN: &str = "/dev/net/tun";
/// Bit of `CAP_NET_ADMIN` in the capability sets of `/proc/self/status`.
const CAP_NET_ADMIN_BIT: u32 = 12;

const TUN_FIX: &str = "the gateway needs CAP_NET_ADMIN and the /dev/net/tun device:\n\
    as root: `modprobe tun` if /dev/net/tun is missing;\n\
    in Docker/Podman: --cap-add NET_ADMIN --device /dev/net/tun;\n\
    under systemd: AmbientCapabilities=CAP_NET_ADMIN and DeviceAllow=/dev/net/tun rw;\n\
    in Kubernetes: securityContext.capabilities.add [NET_ADMIN] and a hostPath /dev/net/tun";

/// `--tun-name-prefix` parser: a short interface-name prefix.
pub fn parse_tun_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_TUN_PREFIX {
        return Err(format!(
            "the prefix must be 1 to {MAX_TUN_PREFIX} characters (7 more are added)"
        ));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("the prefix may hold letters, digits, '-' and '_' only".into());
    }
    Ok(s.to_string())
}

/// A device name `{prefix}{7 hex digits}` that no link in this namespace has yet.
fn unused_tun_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mix = (std::process::id() << 4) ^ n ^ nanos();
        let name = format!("{prefix}{:07x}", mix & 0x0fff_ffff);
        // Opening an existing TUN device by name would attach to it (a running gateway's
        // `cw0`, say): never pick a name that exists.
        if !Path::new("/sys/class/net").join(&name).exists() {
            return name;
        }
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// Creates a TUN device with a temporary name, with the offloads the gateway uses, and
/// removes it again.
pub fn tun(prefix: &str) -> Check {
    if !Path::new(DEV_NET_TUN).exists() {
        return Check::fail(
            TUN,
            format!("{DEV_NET_TUN} does not exist"),
            TUN_FIX.to_string(),
        );
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open(DEV_NET_TUN) {
        return Check::fail(
            TUN,
            format!("cannot open {DEV_NET_TUN}: {e}"),
            TUN_FIX.to_string(),
        );
    }
    let name = unused_tun_name(prefix);
    match TunDevice::open(&name, 1, true) {
        Ok(device) => {
            let offloads = device.offload.map(|o| o.to_string()).unwrap_or_default();
            drop(device);
            Check::pass(
                TUN,
                format!("created and removed {name} (offloads: {offloads})"),
            )
        }
        Err(TunError::Offload { error, .. }) => match TunDevice::open(&name, 1, false) {
            Ok(device) => {
                drop(device);
                Check::warn(
                    TUN,
                    format!("created {name}, but the kernel refused its offloads: {error}"),
                    "run the gateway with --no-offload; without offloads a TUN path moves \
                     far fewer bytes per second"
                        .to_string(),
                )
            }
            Err(e) => Check::fail(TUN, e.to_string(), TUN_FIX.to_string()),
        },
        Err(e) => {
            let caps = match has_cap_net_admin() {
                Some(true) => "; this process has CAP_NET_ADMIN",
                Some(false) => "; this process lacks CAP_NET_ADMIN",
                None => "",
            };
            Check::fail(TUN, format!("{e}{caps}"), TUN_FIX.to_string())
        }
    }
}

/// Whether `CAP_NET_ADMIN` is in this process's effective set (`None`: cannot tell).
fn has_cap_net_admin() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    cap_eff_has(&status, CAP_NET_ADMIN_BIT)
}

fn cap_eff_has(status: &str, bit: u32) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1 << bit) != 0)
}

/// What a forwarding sysctl looks like to the check.
#[derive(Debug)]
pub enum Sysctl {
    /// Already `1`: the gateway will not write it.
    On,
    /// Off, and opening it for writing works: the gateway can turn it on.
    OffWritable,
    /// Off, and it cannot be written (read-only `/proc/sys`, or no privilege).
    OffReadOnly { path: PathBuf, error: io::Error },
    /// Cannot be read at all.
    Unreadable(String),
}

/// Looks at one sysctl without changing it.
pub fn probe_sysctl(name: &str) -> Sysctl {
    match sysctl::read(name) {
        Ok(v) if v.trim() == "1" => Sysctl::On,
        Ok(_) => {
            let path = Path::new("/proc/sys").join(name.replace('.', "/"));
            // Opening for writing (without writing) asks the kernel the same permission
            // question a write would: EROFS for a read-only mount, EACCES without privilege.
            match OpenOptions::new().write(true).open(&path) {
                Ok(_) => Sysctl::OffWritable,
                Err(error) => Sysctl::OffReadOnly { path, error },
            }
        }
        Err(e) => Sysctl::Unreadable(error_chain(&e)),
    }
}

/// Whether IPv6 is usable, as the gateway decides it (`disable_ipv6` reads 0).
pub fn ipv6_enabled() -> bool {
    matches!(
        sysctl::read("net.ipv6.conf.all.disable_ipv6")
            .as_deref()
            .map(str::trim),
        Ok("0")
    )
}

/// The forwarding check on the live host.
pub fn forwarding() -> Check {
    let v4 = probe_sysctl(sysctl::FORWARDING[0]);
    let v6 = ipv6_enabled().then(|| probe_sysctl(sysctl::FORWARDING[1]));
    judge_forwarding(&v4, v6.as_ref())
}

/// The forwarding verdict from what was found; `v6` is `None` when IPv6 is disabled.
pub fn judge_forwarding(v4: &Sysctl, v6: Option<&Sysctl>) -> Check {
    let mut parts = Vec::new();
    let mut blocked = Vec::new();
    let families = [
        ("net.ipv4.ip_forward", Some(v4)),
        ("net.ipv6.conf.all.forwarding", v6),
    ];
    for (name, state) in families {
        match state {
            None => parts.push(format!(
                "{name}: IPv6 disabled, the gateway serves IPv4 only"
            )),
            Some(Sysctl::On) => parts.push(format!("{name} = 1")),
            Some(Sysctl::OffWritable) => {
                parts.push(format!("{name} = 0, writable (the gateway sets it to 1)"))
            }
            Some(Sysctl::OffReadOnly { path, error }) => {
                let what = format!("{name} = 0 and {} is not writable: {error}", path.display());
                parts.push(what.clone());
                blocked.push(what);
            }
            Some(Sysctl::Unreadable(e)) => {
                parts.push(e.clone());
                blocked.push(e.clone());
            }
        }
    }
    let detail = parts.join("; ");
    if blocked.is_empty() {
        Check::pass(FORWARDING, detail)
    } else {
        Check::fail(
            FORWARDING,
            detail,
            "turn forwarding on outside the gateway (`sysctl -w net.ipv4.ip_forward=1 \
             net.ipv6.conf.all.forwarding=1` on the host, persisted in /etc/sysctl.d/),\n\
             or let the gateway do it: run it as root in the host network namespace \
             (Docker: --network host --cap-add NET_ADMIN; /proc/sys is read-only in a \
             container otherwise),\n\
             or with its own network namespace: docker run --sysctl net.ipv4.ip_forward=1 \
             --sysctl net.ipv6.conf.all.forwarding=1",
        )
    }
}

pub use crate::cluster::kubeconfig::error_chain;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::report::Severity;

    #[test]
    fn prefixes() {
        assert!(parse_tun_prefix("cwchk").is_ok());
        assert!(parse_tun_prefix("").is_err());
        assert!(parse_tun_prefix("toolongxx").is_err());
        assert!(parse_tun_prefix("a/b").is_err());
        let name = unused_tun_name("cwchk");
        assert!(name.len() <= 15 && name.starts_with("cwchk"), "{name}");
        assert_ne!(unused_tun_name("x"), unused_tun_name("x"));
    }

    #[test]
    fn capabilities_from_status() {
        let status = "Name:\tx\nCapEff:\t0000000000001000\n";
        assert_eq!(cap_eff_has(status, CAP_NET_ADMIN_BIT), Some(true));
        let status = "CapEff:\t0000000000000000\n";
        assert_eq!(cap_eff_has(status, CAP_NET_ADMIN_BIT), Some(false));
        assert_eq!(cap_eff_has("nothing", CAP_NET_ADMIN_BIT), None);
    }

    #[test]
    fn forwarding_verdicts() {
        let ok = judge_forwarding(&Sysctl::On, Some(&Sysctl::OffWritable));
        assert_eq!(ok.severity, Severity::Ok, "{ok:?}");
        assert!(ok.detail.contains("net.ipv4.ip_forward = 1"), "{ok:?}");

        let v4_only = judge_forwarding(&Sysctl::OffWritable, None);
        assert_eq!(v4_only.severity, Severity::Ok);
        assert!(v4_only.detail.contains("IPv4 only"));

        let ro = Sysctl::OffReadOnly {
            path: "/proc/sys/net/ipv4/ip_forward".into(),
            error: io::Error::from_raw_os_error(libc::EROFS),
        };
        let bad = judge_forwarding(&ro, Some(&Sysctl::On));
        assert_eq!(bad.severity, Severity::Error);
        assert!(
            bad.detail.contains("/proc/sys/net/ipv4/ip_forward"),
            "{bad:?}"
        );
        assert!(bad.fix.as_deref().unwrap().contains("--sysctl"));

        let v6_ro = Sysctl::OffReadOnly {
            path: "/proc/sys/net/ipv6/conf/all/forwarding".into(),
            error: io::Error::from_raw_os_error(libc::EACCES),
        };
        let bad6 = judge_forwarding(&Sysctl::On, Some(&v6_ro));
        assert!(bad6.blocks(), "{bad6:?}");
    }
}
