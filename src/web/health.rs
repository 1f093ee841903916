//! Readiness: what `/readyz` and the dashboard header report.
//!
//! The gateway is ready when all of these hold:
//! - **table**: the source has applied a complete table and it is fresh — synced, or stale
//!   (API server unreachable, or a broken file on reload) for less than `--ready-max-stale`.
//!   A stale table keeps serving either way; readiness only tells the operator (and a
//!   container health check) that it has been stale for too long;
//! - **tun**: the TUN device exists in this namespace and is up (asked from the kernel at
//!   each check);
//! - **routes**: the last route reconcile succeeded and installed what the table asks for.
//!   ClusterIPs those routes cannot carry ([`crate::cluster::routed`]) are named in its
//!   detail; they do not make the gateway unready (the other Services are served).
//! - **drain**: no graceful stop has begun (SIGTERM: `/readyz` answers 503 `draining` while
//!   the routes are withdrawn and flows drain).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::cluster::routed::{self, NotRouted};
use crate::cluster::sync::SyncState;

/// Host state the gateway reports (routes) or that is asked for (the TUN device's flags).
#[derive(Debug)]
pub struct Health {
    pub tun_name: String,
    pub max_stale: Duration,
    routes_ok: AtomicBool,
    routes_installed: AtomicUsize,
    route_error: Mutex<Option<String>>,
    /// Exposed ClusterIPs the routes do not carry (set with every reconcile).
    not_routed: Mutex<Vec<NotRouted>>,
    /// A graceful stop has begun.
    draining: AtomicBool,
    /// Per-prefix announcement state (written by the gateway's loop).
    pub announce: crate::host::announce::Board,
    /// The dataplane in use and why (`--dataplane`, and the reason of a fallback).
    dataplane: Mutex<Option<DataplaneInfo>>,
}

/// Which dataplane carries the flows, as the status page and `/api/v1/status` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DataplaneInfo {
    /// `offload` or `proxy`.
    pub name: &'static str,
    /// What was asked for (`--dataplane`).
    pub requested: &'static str,
    /// Why this one: empty when it is the one asked for, else the fallback's reason.
    pub reason: String,
    /// The most flows it can carry (the conntrack table's size for offload).
    pub flow_ceiling: Option<u64>,
}

/// One part of readiness.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// The readiness verdict with each part's reason.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<Check>,
}

impl Readiness {
    /// The `/readyz` body: `ready`, `draining`, or `not ready: table, routes`, then one line
    /// per check.
    pub fn text(&self) -> String {
        let mut out = if self.ready {
            "ready\n".to_string()
        } else if self.checks.iter().any(|c| c.name == "drain" && !c.ok) {
            "draining\n".to_string()
        } else {
            let failing: Vec<&str> = self
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.name)
                .collect();
            format!("not ready: {}\n", failing.join(", "))
        };
        for c in &self.checks {
            let mark = if c.ok { "ok" } else { "FAIL" };
            out.push_str(&format!("{}: {mark} ({})\n", c.name, c.detail));
        }
        out
    }
}

impl Health {
    pub fn new(tun_name: &str, max_stale: Duration) -> Health {
        Health {
            tun_name: tun_name.to_string(),
            max_stale,
            routes_ok: AtomicBool::new(false),
            routes_installed: AtomicUsize::new(0),
            route_error: Mutex::new(Some("not reconciled yet".into())),
            not_routed: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
            announce: Default::default(),
            dataplane: Mutex::new(None),
        }
    }

    /// Record the dataplane in use (once, at start).
    pub fn set_dataplane(&self, info: DataplaneInfo) {
        *self.dataplane.lock().unwrap_or_else(|e| e.into_inner()) = Some(info);
    }

    /// The dataplane in use (None before start-up chose it).
    pub fn dataplane(&self) -> Option<DataplaneInfo> {
        self.dataplane
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The exposed ClusterIPs the routes cannot carry; returns whether the list changed.
    pub fn set_not_routed(&self, list: Vec<NotRouted>) -> bool {
        let mut cur = self.not_routed.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *cur != list;
        *cur = list;
        changed
    }

    pub fn not_routed(&self) -> Vec<NotRouted> {
        self.not_routed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The gateway's route reconcile result: `Ok(installed)` or the error.
    pub fn set_routes(&self, result: Result<usize, String>) {
        let mut err = self.route_error.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(n) => {
                self.routes_installed.store(n, Ordering::Relaxed);
                self.routes_ok.store(true, Ordering::Relaxed);
                *err = None;
            }
            Err(e) => {
                self.routes_ok.store(false, Ordering::Relaxed);
                *err = Some(e);
            }
        }
    }

    pub fn routes(&self) -> (bool, usize, Option<String>) {
        let err = self
            .route_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (
            self.routes_ok.load(Ordering::Relaxed),
            self.routes_installed.load(Ordering::Relaxed),
            err,
        )
    }

    /// Marks the start of a graceful stop (never undone: the process is on its way out).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the TUN device exists and is up, or why not.
    pub fn tun(&self) -> Result<(), String> {
        match link_flags(&self.tun_name) {
            Ok(flags) if flags & libc::IFF_UP as u32 != 0 => Ok(()),
            Ok(_) => Err(format!("{} is down", self.tun_name)),
            Err(e) => Err(format!("{}: {e}", self.tun_name)),
        }
    }

    pub fn readiness(&self, sync: &SyncState, generation: u64, now: SystemTime) -> Readiness {
        let table = table_check(sync, generation, self.max_stale, now);
        let tun = match self.tun() {
            Ok(()) => Check {
                name: "tun",
                ok: true,
                detail: format!("{} up", self.tun_name),
            },
            Err(e) => Check {
                name: "tun",
                ok: false,
                detail: e,
            },
        };
        let (ok, n, err) = self.routes();
        let mut routes = Check {
            name: "routes",
            ok,
            detail: match err {
                Some(e) => e,
                None => format!("{n} installed"),
            },
        };
        let not_routed = self.not_routed();
        if !not_routed.is_empty() {
            routes.detail.push_str("; ");
            routes.detail.push_str(&routed::summary(&not_routed, 5));
        }
        let mut checks = vec![table, tun, routes];
        if self.draining() {
            checks.push(Check {
                name: "drain",
                ok: false,
                detail: "draining: routes withdrawn, flows finishing before the stop".into(),
            });
        }
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}

/// The table part of readiness (pure, for tests).
pub fn table_check(
    sync: &SyncState,
    generation: u64,
    max_stale: Duration,
    now: SystemTime,
) -> Check {
    let (ok, detail) = match sync {
        SyncState::Syncing => (false, "no complete table yet (syncing)".to_string()),
        SyncState::Synced { .. } => (true, format!("synced, generation {generation}")),
        SyncState::Stale { since, error } => {
            let age = now.duration_since(*since).unwrap_or_default();
            let ok = age < max_stale;
            (
                ok,
                format!(
                    "stale for {}s (limit {}s), generation {generation} serving: {error}",
                    age.as_secs(),
                    max_stale.as_secs()
                ),
            )
        }
    };
    Check {
        name: "table",
        ok,
        detail,
    }
}

/// `SIOCGIFFLAGS` on a throwaway socket in this process's network namespace.
fn link_flags(name: &str) -> std::io::Result<u32> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: plain socket(2)/ioctl(2)/close(2) on a descriptor we own, with a zeroed ifreq
    // whose name is NUL-terminated (checked length above).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in name.bytes().enumerate() {
            req.ifr_name[i] = b as libc::c_char;
        }
        let r = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if r < 0 {
            return Err(err);
        }
        Ok(req.ifr_ifru.ifru_flags as u16 as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_ready_when_synced_or_briefly_stale() {
        let now = SystemTime::now();
        let max = Duration::from_secs(60);
        assert!(!table_check(&SyncState::Syncing, 0, max, now).ok);
        assert!(table_check(&SyncState::Synced { at: now }, 3, max, now).ok);
        let stale = |secs| SyncState::Stale {
            since: now - Duration::from_secs(secs),
            error: "bad file".into(),
        };
        assert!(table_check(&stale(10), 3, max, now).ok);
        let c = table_check(&stale(61), 3, max, now);
        assert!(!c.ok);
        assert!(c.detail.contains("bad file"), "{}", c.detail);
    }

    #[test]
    fn a_missing_device_is_not_ready_and_says_so() {
        let h = Health::new("cw-no-such0", Duration::from_secs(60));
        h.set_routes(Ok(2));
        let r = h.readiness(
            &SyncState::Synced {
                at: SystemTime::now(),
            },
            1,
            SystemTime::now(),
        );
        assert!(!r.ready);
        assert!(r.text().starts_with("not ready: tun\n"), "{}", r.text());
        assert!(r.text().contains("routes: ok (2 installed)"));
        // ClusterIPs the routes cannot carry are named, but do not make it unready.
        let web = std::sync::Arc::new(crate::cluster::table::ServiceId {
            namespace: "shop".into(),
            name: "web".into(),
        });
        assert!(h.set_not_routed(vec![NotRouted {
            ip: "10.112.0.7".parse().unwrap(),
            service: web,
            reason: routed::NotRoutedReason::OutsideRanges,
        }]));
        let r = h.readiness(
            &SyncState::Synced {
                at: SystemTime::now(),
            },
            1,
            SystemTime::now(),
        );
        assert!(
            r.text().contains(
                "routes: ok (2 installed; 1 ClusterIP not routed: 10.112.0.7 (shop/web): \
                 outside every routed Service CIDR)"
            ),
            "{}",
            r.text()
        );
        // A drain makes it unready, and says so first.
        let lo = Health::new("lo", Duration::from_secs(60));
        lo.set_routes(Ok(1));
        let synced = SyncState::Synced {
            at: SystemTime::now(),
        };
        assert!(lo.readiness(&synced, 1, SystemTime::now()).ready);
        lo.set_draining();
        let r = lo.readiness(&synced, 1, SystemTime::now());
        assert!(!r.ready);
        assert!(r.text().starts_with("draining\n"), "{}", r.text());
        // The loopback device exists and is up in any namespace.
        let lo = Health::new("lo", Duration::from_secs(60));
        assert!(lo.tun().is_ok());
    }
}
