//! The manifests for running the gateway on cluster nodes (`docker/k8s/`) are Kubernetes
//! objects (k8s-openapi types, with no field the types do not know: a misspelt field would
//! be silently ignored by the API server's older versions and by `kubectl apply`), their
//! RBAC is exactly docker/rbac.yaml's read-only set, the workloads run on the host network
//! with NET_ADMIN, NET_RAW and /dev/net/tun on gateway nodes, and their arguments are flags
//! `clusterway run` accepts.

use clap::Parser;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const RBAC: &str = include_str!("../docker/rbac.yaml");
const K8S_RBAC: &str = include_str!("../docker/k8s/rbac.yaml");
const DAEMONSET: &str = include_str!("../docker/k8s/daemonset.yaml");
const DEPLOYMENT: &str = include_str!("../docker/k8s/deployment.yaml");

fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| {
            let v = serde_yaml_ng::Value::deserialize(doc).expect("YAML parses");
            serde_json::to_value(v).expect("as JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The document of `kind`, typed; panics unless the typed object serializes back to the
/// same document (no unknown or misspelt field).
fn typed<T: DeserializeOwned + Serialize>(docs: &[serde_json::Value], kind: &str) -> T {
    let doc = docs
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"));
    let t: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"));
    let back = serde_json::to_value(&t).expect("serializes");
    assert_eq!(&back, doc, "{kind}: fields the type does not know");
    t
}

#[derive(Parser)]
struct Run {
    #[command(flatten)]
    args: clusterway::config::RunArgs,
}

fn check_pod(spec: &PodSpec, what: &str) {
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("clusterway"),
        "{what}"
    );
    assert_eq!(spec.host_network, Some(true), "{what}: hostNetwork");
    let selector = spec.node_selector.as_ref().expect("nodeSelector");
    assert_eq!(
        selector.get("clusterway.io/gateway").map(String::as_str),
        Some("true")
    );
    let tolerations = spec.tolerations.as_ref().expect("tolerations");
    assert!(tolerations
        .iter()
        .any(|t| t.key.as_deref() == Some("clusterway.io/gateway")));
    let c = &spec.containers[0];
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.as_ref())
        .expect("capabilities.add");
    assert!(caps.iter().any(|c| c == "NET_ADMIN"), "{what}: NET_ADMIN");
    // The raw sockets of flow offload (re-injecting each flow's first packet).
    assert!(caps.iter().any(|c| c == "NET_RAW"), "{what}: NET_RAW");
    let tun = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| {
            v.host_path
                .as_ref()
                .is_some_and(|h| h.path == "/dev/net/tun")
        })
        .expect("/dev/net/tun hostPath");
    assert!(c
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == tun.name && m.mount_path == "/dev/net/tun"));
    // The arguments are flags `clusterway run` accepts (the node's IP filled in as the
    // kubelet would) and that validate.
    let args: Vec<String> = c
        .args
        .iter()
        .flatten()
        .map(|a| a.replace("$(NODE_IP)", "192.0.2.10"))
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    let run = Run::try_parse_from(&args).unwrap_or_else(|e| panic!("{what}: {e}"));
    run.args.validate().expect("valid flags");
    assert!(run.args.dns.enabled());
    assert!(
        run.args.from_file.is_none(),
        "in-cluster config, not a file"
    );
}

#[test]
fn manifests_parse_and_their_rbac_is_the_read_only_set() {
    let reference = documents(RBAC);
    let want: ClusterRole = typed(&reference, "ClusterRole");
    let docs = documents(K8S_RBAC);
    let role: ClusterRole = typed(&docs, "ClusterRole");
    assert_eq!(role.rules, want.rules, "the same rules as docker/rbac.yaml");
    for rule in role.rules.iter().flatten() {
        assert_eq!(rule.verbs, ["get", "list", "watch"], "read-only");
    }
    let binding: ClusterRoleBinding = typed(&docs, "ClusterRoleBinding");
    let want_binding: ClusterRoleBinding = typed(&reference, "ClusterRoleBinding");
    assert_eq!(binding.role_ref, want_binding.role_ref);
    assert_eq!(binding.subjects, want_binding.subjects);
    let sa: ServiceAccount = typed(&docs, "ServiceAccount");
    assert_eq!(sa.metadata.namespace.as_deref(), Some("clusterway"));
    let _: Namespace = typed(&docs, "Namespace");
    // No token Secret: in the cluster the pod's projected token is used.
    assert!(docs.iter().all(|d| d["kind"] != "Secret"));

    let ds: DaemonSet = typed(&documents(DAEMONSET), "DaemonSet");
    check_pod(
        ds.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec"),
        "DaemonSet",
    );
    let dep: Deployment = typed(&documents(DEPLOYMENT), "Deployment");
    check_pod(
        dep.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec"),
        "Deployment",
    );
}
