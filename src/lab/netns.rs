//! Named network namespaces (`ip netns`) owned by one process, for the lab, tests and benches.
//!
//! Owns: namespaces it creates with `ip netns add` and everything inside them (processes are
//! killed and the namespace deleted on `Drop`). Must not touch: the host namespace — nothing
//! here configures a link, address, route or sysctl outside a namespace it created.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A network namespace created by this process and deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` (`ip netns add`) and brings its `lo` up.
    ///
    /// Fails if a namespace of that name already exists: it belongs to someone else (or to a
    /// crashed run, see [`remove_with_prefix`]).
    pub fn create(name: &str) -> Result<Netns> {
        if name.is_empty() || name.contains('/') || name.contains(char::is_whitespace) {
            bail!("invalid network namespace name {name:?}");
        }
        run_checked(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        // From here on the namespace exists and Drop removes it, even if the next step fails.
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.sh("ip link set lo up")
            .with_context(|| format!("bringing lo up in {name}"))?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace's bind mount, usable with `setns(2)` or `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command running `program args..` inside the namespace (`ip netns exec NAME ...`).
    ///
    /// `ip netns exec` execs the program in place, so the child's pid is the program's pid.
    pub fn exec<I, S>(&self, program: impl AsRef<std::ffi::OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        cmd.arg(program);
        cmd.args(args);
        cmd
    }

    /// Runs the shell command `cmd` (`sh -c`) inside the namespace and returns its stdout.
    /// A non-zero exit is an error carrying the command and its stderr.
    pub fn sh(&self, cmd: &str) -> Result<String> {
        let out = run_checked(&mut self.exec("sh", ["-c", cmd]))
            .with_context(|| format!("in netns {}: `{cmd}`", self.name))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a fresh thread that has first entered this namespace with `setns(2)`, and
    /// returns its result. Sockets opened by `f` live in the namespace. A panic in `f` is
    /// propagated to the caller.
    ///
    /// # Panics
    /// If the thread cannot enter the namespace (it was deleted, or the process lacks
    /// CAP_SYS_ADMIN); use [`Netns::try_run`] to get that as an error.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self.try_run(f) {
            Ok(r) => r,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Like [`Netns::run`], but failing to enter the namespace is an error.
    pub fn try_run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        let file = self.open()?;
        let name = &self.name;
        std::thread::scope(|scope| {
            let handle = scope.spawn(move || -> Result<R> {
                enter(&file).with_context(|| format!("entering netns {name}"))?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Spawns a long-lived thread that enters this namespace and then runs `f`. The thread
    /// keeps running after `self` is dropped if `f` does not return; callers stop it.
    pub fn spawn<R, F>(&self, f: F) -> Result<std::thread::JoinHandle<Result<R>>>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let file = self.open()?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                enter(&file).with_context(|| format!("entering netns {name}"))?;
                Ok(f())
            })
            .context("spawning a thread")
    }

    /// Pids of the processes running inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .stderr(Stdio::null())
            .output()
        else {
            return Vec::new();
        };
        let me = std::process::id() as i32;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            // A thread of ours that entered the namespace shows our pid; never kill ourselves.
            .filter(|&p| p != me)
            .collect()
    }

    fn open(&self) -> Result<File> {
        File::open(self.path())
            .with_context(|| format!("opening {} (netns {})", self.path().display(), self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            eprintln!("warning: removing netns {}: {e:#}", self.name);
        }
    }
}

/// A namespace-name prefix unique to this process and call, short enough that
/// `{prefix}-xx` names stay readable (e.g. `cw41234x3`).
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("cw{}x{n}", std::process::id())
}

/// Names of the existing namespaces (`ip netns list`).
pub fn list() -> Result<Vec<String>> {
    let out = run_checked(Command::new("ip").args(["netns", "list"]))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        // Lines look like `name (id: 3)` or just `name`.
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// Removes namespaces named `{prefix}-*`, left behind by a run that crashed. Returns the
/// names removed.
pub fn remove_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let stale: Vec<String> = list()?
        .into_iter()
        .filter(|n| {
            n.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('-'))
        })
        .collect();
    for name in &stale {
        delete(name)?;
    }
    Ok(stale)
}

/// Kills the processes inside namespace `name` (SIGTERM, then SIGKILL after a grace period)
/// and deletes it.
fn delete(name: &str) -> Result<()> {
    let ns = std::mem::ManuallyDrop::new(Netns {
        name: name.to_owned(),
    });
    let pids = ns.pids();
    if !pids.is_empty() {
        for &pid in &pids {
            // SAFETY: kill(2) with a pid and a signal number has no memory effects.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !ns.pids().is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in ns.pids() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // `ip netns del` can fail with EBUSY for a moment while a killed process exits.
    let mut last = None;
    for _ in 0..50 {
        match run_checked(Command::new("ip").args(["netns", "del", name])) {
            Ok(_) => return Ok(()),
            Err(e) => {
                if !std::path::Path::new("/run/netns").join(name).exists() {
                    return Ok(());
                }
                last = Some(e);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("ip netns del {name} failed")))
}

/// Moves the calling thread into the network namespace open as `file`.
fn enter(file: &File) -> Result<()> {
    // SAFETY: setns(2) on a valid open fd; it only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
    }
    Ok(())
}

/// Runs `cmd` to completion; a spawn failure or non-zero exit is an error with its stderr.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_prefixes_differ_and_are_short() {
        let a = unique_prefix();
        let b = unique_prefix();
        assert_ne!(a, b);
        assert!(a.len() <= 12, "{a}");
    }
}
