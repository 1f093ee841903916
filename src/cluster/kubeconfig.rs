//! Which kubeconfig to use, decided the way kubectl decides: `--kubeconfig FILE` (that file
//! only), else the files in `KUBECONFIG` (merged, first wins; a missing one is an error, as
//! in kube-rs), else `~/.kube/config`, else none (the caller goes on with the in-cluster
//! service account). `clusterway run` and `clusterway check` both resolve with it, so the
//! check tests the configuration the gateway will use. kube-rs does the loading (exec
//! plugins, client certificates, tokens); this module only picks the files and names them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use kube::config::{Kubeconfig, KubeconfigError};

/// `e` and its sources, each once (`a: b: c`), for messages that must say why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

/// Where the kubeconfig came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--kubeconfig FILE`.
    Flag(PathBuf),
    /// The files of `KUBECONFIG`, merged in this order.
    Env(Vec<PathBuf>),
    /// `~/.kube/config`.
    Home(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(p) => write!(f, "{} (--kubeconfig)", p.display()),
            Origin::Home(p) => write!(f, "{}", p.display()),
            Origin::Env(files) => {
                let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
                write!(f, "{} (KUBECONFIG)", files.join(":"))
            }
        }
    }
}

/// A kubeconfig that could not be used; the text names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    pub detail: String,
    pub fix: String,
}

fn read_file(path: &Path) -> Result<Kubeconfig, ReadError> {
    Kubeconfig::read_from(path).map_err(|e| {
        let detail = match &e {
            KubeconfigError::ReadConfig(source, _) => {
                format!("cannot read {}: {source}", path.display())
            }
            other => format!("{}: {}", path.display(), error_chain(other)),
        };
        let fix = match &e {
            KubeconfigError::ReadConfig(..) => format!(
                "check that {} exists and this user can read it (in a container, mount it \
                 read-only and pass --kubeconfig with the path inside the container)",
                path.display()
            ),
            _ => format!(
                "{} is not a valid kubeconfig: `kubectl config view --kubeconfig {}` shows \
                 what kubectl makes of it",
                path.display(),
                path.display()
            ),
        };
        ReadError { detail, fix }
    })
}

/// Picks and reads the kubeconfig the way kubectl does. `Ok(None)`: there is none, so the
/// in-cluster service account is next. `env` is `KUBECONFIG`, `home` is `$HOME`.
pub fn read_kubeconfig(
    flag: Option<&Path>,
    env: Option<OsString>,
    home: Option<PathBuf>,
) -> Result<Option<(Kubeconfig, Origin)>, ReadError> {
    if let Some(path) = flag {
        return read_file(path).map(|kc| Some((kc, Origin::Flag(path.to_path_buf()))));
    }
    let listed: Vec<PathBuf> = env
        .as_ref()
        .map(|v| {
            std::env::split_paths(v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !listed.is_empty() {
        // kubectl skips missing files here, but kube-rs (and so the gateway) fails on them:
        // report that, rather than pass a check that `run` would then fail.
        let missing: Vec<String> = listed
            .iter()
            .filter(|p| !p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            return Err(ReadError {
                detail: format!("KUBECONFIG lists missing files: {}", missing.join(", ")),
                fix: "remove them from KUBECONFIG (kubectl skips missing files, the gateway \
                      does not), or pass --kubeconfig FILE"
                    .into(),
            });
        }
        let files = listed;
        let mut merged = Kubeconfig::default();
        for path in &files {
            let next = read_file(path)?;
            merged = merged.merge(next).map_err(|e| ReadError {
                detail: format!("merging {}: {e}", path.display()),
                fix: "the KUBECONFIG files disagree on kind/apiVersion; list fewer files".into(),
            })?;
        }
        return Ok(Some((merged, Origin::Env(files))));
    }
    if let Some(home) = home {
        let path = home.join(".kube").join("config");
        if path.exists() {
            return read_file(&path).map(|kc| Some((kc, Origin::Home(path))));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, server: &str, ctx: &str) -> PathBuf {
        let path = dir.join(name);
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: {ctx}\nclusters:\n- name: {ctx}\n  \
             cluster:\n    server: {server}\ncontexts:\n- name: {ctx}\n  context:\n    \
             cluster: {ctx}\n    user: {ctx}\nusers:\n- name: {ctx}\n  user:\n    token: t\n"
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn resolution_order_is_kubectls() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a", "https://a:6443", "ca");
        let b = write(dir.path(), "b", "https://b:6443", "cb");
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".kube")).unwrap();
        write(&home.join(".kube"), "config", "https://h:6443", "ch");

        // --kubeconfig wins over everything.
        let env = std::env::join_paths([&b, &a]).unwrap();
        let (kc, origin) = read_kubeconfig(Some(&a), Some(env.clone()), Some(home.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(origin, Origin::Flag(a.clone()));
        assert_eq!(kc.current_context.as_deref(), Some("ca"));

        // KUBECONFIG: merged, first file wins.
        let env = std::env::join_paths([&b, &a]).unwrap();
        let (kc, origin) = read_kubeconfig(None, Some(env), Some(home.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("cb"));
        assert_eq!(kc.contexts.len(), 2);
        assert_eq!(origin, Origin::Env(vec![b.clone(), a.clone()]));

        // A missing file in KUBECONFIG is named (kube-rs would fail on it at run time).
        let gone = dir.path().join("gone");
        let env = std::env::join_paths([&b, &gone]).unwrap();
        let err = read_kubeconfig(None, Some(env), Some(home.clone())).unwrap_err();
        assert!(err.detail.contains(&gone.display().to_string()), "{err:?}");

        // Then ~/.kube/config; then nothing (in-cluster is next).
        let (_, origin) = read_kubeconfig(None, Some(OsString::new()), Some(home.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(origin, Origin::Home(home.join(".kube/config")));
        assert!(read_kubeconfig(None, None, Some(dir.path().join("nohome")))
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.kubeconfig");
        let err = read_kubeconfig(Some(&missing), None, None).unwrap_err();
        assert!(err.detail.starts_with("cannot read "), "{err:?}");
        assert!(err.detail.contains("nope.kubeconfig"), "{err:?}");
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, "clusters: [ {").unwrap();
        let err = read_kubeconfig(Some(&garbage), None, None).unwrap_err();
        assert!(err.detail.contains("garbage"), "{err:?}");
        assert!(err.fix.contains("kubectl config view"), "{err:?}");
    }
}
