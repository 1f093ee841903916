//! Kernel settings under `/proc/sys`: turning IP forwarding on.
//!
//! Owns `net.ipv4.ip_forward` and `net.ipv6.conf.all.forwarding`, which the gateway needs
//! on (replies are forwarded from `cw0` out to clients). Values are read first and written
//! only when different, so running again changes nothing.
//!
//! Must not touch: rp_filter (the packet path works with strict rp_filter, see DESIGN.md),
//! or any other setting. Settings are never reset on exit: other software may rely on
//! forwarding, and turning it off is the administrator's choice.
//!
//! Namespaces: `/proc/sys/net` shows the network namespace of the thread that opens the
//! file, so these functions act on the calling thread's namespace. Call them directly on the
//! thread that owns the namespace (not through `spawn_blocking`, whose threads may be in
//! another one).

use std::path::{Path, PathBuf};

use tracing::info;

/// The settings [`enable_forwarding`] turns on.
pub const FORWARDING: [&str; 2] = ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"];

/// What went wrong with a sysctl, naming its file.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    /// The name is empty, or would leave `/proc/sys`.
    #[error("{name:?} is not a sysctl name")]
    InvalidName { name: String },
    /// The file cannot be read (missing: the kernel lacks the feature, for example IPv6).
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file cannot be written (EACCES/EROFS: no CAP_NET_ADMIN, or `/proc/sys` is
    /// mounted read-only, as in an unprivileged container).
    #[error("cannot write {value:?} to {}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel accepted the write but reads back another value.
    #[error("{} reads {actual:?} after writing {wanted:?}", path.display())]
    NotApplied {
        path: PathBuf,
        wanted: String,
        actual: String,
    },
}

impl SysctlError {
    /// A short, stable label for metrics and structured logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::InvalidName { .. } => "invalid_name",
            Self::Read { .. } => "read",
            Self::Write { .. } => "write",
            Self::NotApplied { .. } => "not_applied",
        }
    }
}

/// Turns IPv4 and IPv6 forwarding on in the calling thread's network namespace.
///
/// Writing `net.ipv6.conf.all.forwarding` also sets `forwarding` on every link (the kernel
/// copies it), which is what a router wants.
pub fn enable_forwarding() -> Result<(), SysctlError> {
    for name in FORWARDING {
        if ensure(name, "1")? {
            info!(sysctl = name, value = "1", "sysctl changed");
        }
    }
    Ok(())
}

/// Reads a sysctl, trimmed of its trailing newline.
///
/// `name` is dotted (`net.ipv4.ip_forward`), or a path below `/proc/sys` with slashes
/// (`net/ipv4/conf/eth0.100/rp_filter`) when a component contains a dot.
pub fn read(name: &str) -> Result<String, SysctlError> {
    read_path(&path_of(name)?)
}

/// Sets a sysctl to `value` unless it already has it. Returns whether it was written.
pub fn ensure(name: &str, value: &str) -> Result<bool, SysctlError> {
    let path = path_of(name)?;
    if read_path(&path)? == value {
        return Ok(false);
    }
    std::fs::write(&path, value).map_err(|source| SysctlError::Write {
        path: path.clone(),
        value: value.to_owned(),
        source,
    })?;
    let actual = read_path(&path)?;
    if actual != value {
        return Err(SysctlError::NotApplied {
            path,
            wanted: value.to_owned(),
            actual,
        });
    }
    Ok(true)
}

fn read_path(path: &Path) -> Result<String, SysctlError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end().to_owned())
        .map_err(|source| SysctlError::Read {
            path: path.to_owned(),
            source,
        })
}

fn path_of(name: &str) -> Result<PathBuf, SysctlError> {
    let relative = if name.contains('/') {
        name.to_owned()
    } else {
        name.replace('.', "/")
    };
    let valid = !relative.is_empty()
        && relative
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !valid {
        return Err(SysctlError::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(Path::new("/proc/sys").join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_and_slashed_names() {
        assert_eq!(
            path_of("net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path_of("net/ipv4/conf/eth0.100/rp_filter").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
    }

    #[test]
    fn names_cannot_leave_proc_sys() {
        for bad in [
            "",
            "net/../../etc/passwd",
            "/net/ipv4",
            "net..ipv4",
            "net/./x",
        ] {
            assert!(path_of(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn read_names_the_file() {
        let err = read("net.clusterway.does_not_exist").unwrap_err();
        assert!(
            err.to_string()
                .contains("/proc/sys/net/clusterway/does_not_exist"),
            "{err}"
        );
    }
}
