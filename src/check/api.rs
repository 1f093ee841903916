//! Cluster checks: the kubeconfig loads, the API server answers, the gateway's permissions
//! are granted, and which endpoints to try for the reachability check.
//!
//! Kubeconfig resolution is `cluster::kubeconfig`'s, the one `clusterway run` uses (kubectl's
//! order, then the in-cluster service account); this module says which files were used and
//! what to do when they fail.
//!
//! Read-only: the only write is `SelfSubjectAccessReview`, which stores nothing.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, KubeconfigError};
use kube::{Api, Client, Config};

use super::host::error_chain;
use super::reach::Target;
use super::report::Check;
use crate::cluster::build::SERVICE_NAME_LABEL;
pub use crate::cluster::kubeconfig::{read_kubeconfig, Origin, ReadError};

pub const KUBECONFIG: &str = "kubeconfig loads";
pub const API: &str = "API reachable";

/// The README section people are sent to for a working kubeconfig.
const RBAC_README: &str = "README: \"RBAC and a kubeconfig for the gateway\"";

/// One permission the gateway needs: `verbs` on `resource` in API `group` (cluster-wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needed {
    /// `""` for the core group.
    pub group: &'static str,
    pub resource: &'static str,
    /// Without it the gateway cannot run (false: it falls back to something else).
    pub required: bool,
}

impl Needed {
    /// `services`, `endpointslices.discovery.k8s.io` (as kubectl names resources).
    pub fn display(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    pub fn check_name(&self) -> String {
        format!("list/watch {}", self.display())
    }
}

/// What the gateway reads from the API, and the verbs it uses on each. `docker/rbac.yaml`
/// grants exactly these (plus `get`); a unit test holds the two together.
pub const NEEDED: [Needed; 3] = [
    Needed {
        group: "",
        resource: "services",
        required: true,
    },
    Needed {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        required: true,
    },
    Needed {
        group: "networking.k8s.io",
        resource: "servicecidrs",
        required: false,
    },
];

/// Verbs the check asks about (what reflectors use).
pub const VERBS: [&str; 2] = ["list", "watch"];

/// The kubeconfig check. On success also returns a client for the other API checks.
pub async fn load(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    timeout: Duration,
) -> (Check, Option<Client>) {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let found = read_kubeconfig(kubeconfig, std::env::var_os("KUBECONFIG"), home.clone());
    let (mut config, used) = match found {
        Err(e) => return (Check::fail(KUBECONFIG, e.detail, e.fix), None),
        Ok(Some((kc, origin))) => {
            let ctx = context.map(str::to_string).or(kc.current_context.clone());
            let options = KubeConfigOptions {
                context: context.map(str::to_string),
                ..Default::default()
            };
            match Config::from_custom_kubeconfig(kc, &options).await {
                Ok(config) => {
                    let ctx = ctx.unwrap_or_default();
                    (config, format!("{origin}, context {ctx}"))
                }
                Err(e) => {
                    let fix = match (&e, context) {
                        (KubeconfigError::CurrentContextNotSet, _) => {
                            "pass --context NAME, or `kubectl config use-context NAME`".to_string()
                        }
                        (KubeconfigError::LoadContext(_), Some(c)) => format!(
                            "no context {c:?}: `kubectl config get-contexts` lists the contexts"
                        ),
                        _ => format!(
                            "`kubectl config view --minify` shows the entry kubectl would use; \
                             or mint a kubeconfig for the gateway ({RBAC_README})"
                        ),
                    };
                    return (
                        Check::fail(KUBECONFIG, format!("{origin}: {}", error_chain(&e)), fix),
                        None,
                    );
                }
            }
        }
        Ok(None) if context.is_some() => {
            return (
                Check::fail(
                    KUBECONFIG,
                    format!(
                        "--context {} given, but there is no kubeconfig (no --kubeconfig, \
                         KUBECONFIG unset, no ~/.kube/config)",
                        context.unwrap_or_default()
                    ),
                    format!("pass --kubeconfig FILE, or leave out --context ({RBAC_README})"),
                ),
                None,
            );
        }
        Ok(None) => match Config::incluster() {
            Ok(config) => (config, "in-cluster service account".to_string()),
            Err(e) => {
                let home_config = home
                    .map(|h| h.join(".kube/config").display().to_string())
                    .unwrap_or_else(|| "~/.kube/config ($HOME unset)".into());
                return (
                    Check::fail(
                        KUBECONFIG,
                        format!(
                            "no kubeconfig: no --kubeconfig, KUBECONFIG unset, {home_config} \
                             missing, and not in a cluster ({})",
                            error_chain(&e)
                        ),
                        format!("pass --kubeconfig FILE ({RBAC_README})"),
                    ),
                    None,
                );
            }
        },
    };
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    let detail = format!("{used}, server {}", config.cluster_url);
    match Client::try_from(config) {
        Ok(client) => (Check::pass(KUBECONFIG, detail), Some(client)),
        Err(e) => (
            Check::fail(
                KUBECONFIG,
                format!("{detail}: cannot build a client: {}", error_chain(&e)),
                "the certificates or credentials in the kubeconfig are not usable; embed \
                 them again (`kubectl config set-cluster --embed-certs`)",
            ),
            None,
        ),
    }
}

/// Runs `fut` with a deadline; a timeout is reported like an error.
async fn within<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Kube(Box::new(e))),
        Err(_) => Err(Failure::Timeout(timeout)),
    }
}

/// Why a request to the API server did not succeed.
#[derive(Debug)]
pub enum Failure {
    Timeout(Duration),
    Kube(Box<kube::Error>),
}

impl Failure {
    /// The HTTP status when the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Failure::Kube(e) => match e.as_ref() {
                kube::Error::Api(s) => Some(s.code),
                _ => None,
            },
            Failure::Timeout(_) => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout(t) => write!(f, "no answer within {t:?}"),
            Failure::Kube(e) => match e.as_ref() {
                kube::Error::Api(s) => write!(f, "HTTP {} {}: {}", s.code, s.reason, s.message),
                other => f.write_str(&error_chain(other)),
            },
        }
    }
}

/// The fix for a request that failed, from how it failed.
fn api_fix(failure: &Failure) -> String {
    let text = failure.to_string().to_ascii_lowercase();
    match failure.status() {
        Some(401) => {
            return format!(
                "the server rejects the credentials (expired or revoked token?): mint a new \
                 token and kubeconfig ({RBAC_README})"
            )
        }
        Some(403) => {
            return "the server refuses this user: check the user in the kubeconfig".into()
        }
        Some(_) => {
            return "the server answered with an error: is this URL the Kubernetes API server \
                    (not a proxy or load balancer in front of something else)?"
                .into()
        }
        None => {}
    }
    if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
        "TLS failed: the kubeconfig's certificate-authority-data must be the cluster's CA and \
         the server name must be in the API server's certificate (`kubectl config set-cluster \
         --embed-certs --certificate-authority=ca.crt`)"
            .into()
    } else if text.contains("refused") {
        "nothing listens at the server address: check `server:` in the kubeconfig and that the \
         API server is up (`kubectl version` from this host)"
            .into()
    } else if text.contains("auth") || text.contains("exec") {
        "the credential plugin or token in the kubeconfig failed: run the same kubectl command \
         on this host to see its error"
            .into()
    } else {
        "this host cannot reach the API server: check `server:` in the kubeconfig, DNS, the \
         route and firewalls/VPN towards it (`curl -k <server>/version` from this host)"
            .into()
    }
}

/// `GET /version`.
pub async fn version(client: &Client, timeout: Duration) -> Check {
    let started = std::time::Instant::now();
    match within(timeout, client.apiserver_version()).await {
        Ok(info) => Check::pass(
            API,
            format!(
                "Kubernetes {} ({} ms)",
                info.git_version,
                started.elapsed().as_millis()
            ),
        ),
        Err(f) => Check::fail(API, f.to_string(), api_fix(&f)),
    }
}

/// Asks the server (SelfSubjectAccessReview) whether this user may `verb` `needed`.
async fn may(
    client: &Client,
    needed: &Needed,
    verb: &str,
    timeout: Duration,
) -> Result<(bool, String), Failure> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(needed.group.to_string()),
                resource: Some(needed.resource.to_string()),
                verb: Some(verb.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = within(timeout, api.create(&PostParams::default(), &review)).await?;
    let status = answer.status.unwrap_or_default();
    let why = status
        .reason
        .or(status.evaluation_error)
        .unwrap_or_default();
    Ok((status.allowed, why))
}

/// The permission check for one resource: list and watch, asked concurrently.
pub async fn permission(client: &Client, needed: &Needed, timeout: Duration) -> Check {
    let name = needed.check_name();
    let answers =
        futures::future::join_all(VERBS.iter().map(|verb| may(client, needed, verb, timeout)))
            .await;
    let mut denied = Vec::new();
    let mut reasons = Vec::new();
    for (verb, answer) in VERBS.iter().zip(answers) {
        match answer {
            Ok((true, _)) => {}
            Ok((false, why)) => {
                denied.push(*verb);
                if !why.is_empty() {
                    reasons.push(why);
                }
            }
            // `/version` is open to anyone on most clusters: this is where a rejected
            // token shows first, and the gateway cannot run with it.
            Err(f) if f.status() == Some(401) => {
                return Check::fail(name, f.to_string(), api_fix(&f));
            }
            Err(f) => {
                return Check::warn(
                    name,
                    format!("cannot ask the server (SelfSubjectAccessReview): {f}"),
                    format!(
                        "check by hand: `kubectl auth can-i {verb} {}`",
                        needed.display()
                    ),
                )
            }
        }
    }
    if denied.is_empty() {
        return Check::pass(name, "granted");
    }
    let mut detail = format!("{} denied", denied.join(" and "));
    if !reasons.is_empty() {
        detail.push_str(&format!(" ({})", reasons.join("; ")));
    }
    let grant = format!(
        "grant get/list/watch on {} cluster-wide: `kubectl apply -f docker/rbac.yaml` and use \
         the clusterway ServiceAccount's kubeconfig ({RBAC_README})",
        needed.display()
    );
    if needed.required {
        Check::fail(name, detail, grant)
    } else {
        Check::warn(
            name,
            format!("{detail}; the gateway falls back to --service-cidr"),
            format!(
                "{grant};\nor leave it and pass --service-cidr (clusters before Kubernetes \
                 1.33 serve no ServiceCIDR objects anyway)"
            ),
        )
    }
}

/// Ready TCP endpoints from up to one page of EndpointSlices, or why there are none.
pub async fn endpoint_targets(client: &Client, timeout: Duration) -> Result<Vec<Target>, Failure> {
    let api: Api<EndpointSlice> = Api::all(client.clone());
    let list = within(timeout, api.list(&ListParams::default().limit(500))).await?;
    Ok(targets_from_slices(&list.items))
}

/// Every Service of the cluster, a page of 500 at a time (for the not-routed check).
pub async fn services(
    client: &Client,
    timeout: Duration,
) -> Result<Vec<k8s_openapi::api::core::v1::Service>, Failure> {
    let api: Api<k8s_openapi::api::core::v1::Service> = Api::all(client.clone());
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = within(timeout, api.list(&params)).await?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// Ready endpoint addresses × TCP ports of the slices. The `default/kubernetes` Service is
/// left out: its endpoints are API server addresses, which say nothing about pod routing.
pub fn targets_from_slices(slices: &[EndpointSlice]) -> Vec<Target> {
    let mut out = Vec::new();
    for slice in slices {
        let ns = slice.metadata.namespace.as_deref().unwrap_or("");
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .or(slice.metadata.name.as_ref())
            .map(String::as_str)
            .unwrap_or("");
        if ns == "default" && service == "kubernetes" {
            continue;
        }
        let ports: Vec<u16> = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| p.port.and_then(|n| u16::try_from(n).ok()))
            .filter(|&p| p != 0)
            .collect();
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                for &port in &ports {
                    out.push(Target {
                        addr: SocketAddr::new(ip, port),
                        owner: format!("{ns}/{service}"),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_the_fixture() {
        let text = include_str!("../../tests/fixtures/cluster-snapshot.json");
        let list: serde_json::Value = serde_json::from_str(text).unwrap();
        let slices: Vec<EndpointSlice> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["kind"] == "EndpointSlice")
            .map(|o| serde_json::from_value(o.clone()).unwrap())
            .collect();
        let targets = targets_from_slices(&slices);
        let addrs: Vec<String> = targets.iter().map(|t| t.addr.to_string()).collect();
        // Ready pods on TCP ports are in; the terminating endpoint, UDP ports and the
        // API server's own endpoints are not.
        assert!(addrs.contains(&"10.244.1.11:8080".to_string()), "{addrs:?}");
        assert!(addrs.contains(&"10.244.0.5:53".to_string()), "{addrs:?}");
        assert!(
            !addrs.iter().any(|a| a.starts_with("10.244.2.13:")),
            "{addrs:?}"
        );
        assert!(!addrs.iter().any(|a| a.ends_with(":6443")), "{addrs:?}");
        let web = targets
            .iter()
            .find(|t| t.addr.to_string() == "10.244.1.11:8080")
            .unwrap();
        assert_eq!(web.owner, "shop/web");
    }

    #[test]
    fn fixes_follow_the_failure() {
        assert!(api_fix(&Failure::Timeout(Duration::from_secs(1))).contains("cannot reach"));
    }
}
