//! `docker/rbac.yaml` grants exactly what the gateway uses ([`super::api::NEEDED`], with
//! get/list/watch) and nothing else. Test only.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;

use super::api::NEEDED;

const RBAC: &str = include_str!("../../docker/rbac.yaml");
const GRANTED_VERBS: [&str; 3] = ["get", "list", "watch"];

fn documents() -> Vec<serde_yaml_ng::Value> {
    serde_yaml_ng::Deserializer::from_str(RBAC)
        .map(|doc| serde_yaml_ng::Value::deserialize(doc).expect("docker/rbac.yaml parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(v: &serde_yaml_ng::Value) -> &str {
    v.get("kind").and_then(|k| k.as_str()).unwrap_or("")
}

fn one<T: for<'de> Deserialize<'de>>(docs: &[serde_yaml_ng::Value], wanted: &str) -> T {
    let found: Vec<&serde_yaml_ng::Value> = docs.iter().filter(|d| kind(d) == wanted).collect();
    assert_eq!(found.len(), 1, "exactly one {wanted}");
    serde_yaml_ng::from_value(found[0].clone()).expect(wanted)
}

#[test]
fn objects_are_the_expected_ones() {
    let docs = documents();
    let kinds: Vec<&str> = docs.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Secret"
        ]
    );
    let ns = &docs[0];
    assert_eq!(ns["metadata"]["name"].as_str(), Some("clusterway"));

    let sa: ServiceAccount = one(&docs, "ServiceAccount");
    assert_eq!(sa.metadata.name.as_deref(), Some("clusterway"));
    assert_eq!(sa.metadata.namespace.as_deref(), Some("clusterway"));

    let binding: ClusterRoleBinding = one(&docs, "ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(binding.role_ref.name, "clusterway");
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, "clusterway");
    assert_eq!(subjects[0].namespace.as_deref(), Some("clusterway"));

    let secret: Secret = one(&docs, "Secret");
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/service-account-token")
    );
    assert_eq!(secret.metadata.namespace.as_deref(), Some("clusterway"));
    let annotations = secret.metadata.annotations.expect("annotations");
    assert_eq!(
        annotations
            .get("kubernetes.io/service-account.name")
            .map(String::as_str),
        Some("clusterway")
    );
}

#[test]
fn cluster_role_grants_exactly_what_the_gateway_uses() {
    let role: ClusterRole = one(&documents(), "ClusterRole");
    assert_eq!(role.metadata.name.as_deref(), Some("clusterway"));
    assert!(role.aggregation_rule.is_none());
    let mut granted = BTreeSet::new();
    for rule in role.rules.expect("rules") {
        assert!(rule.resource_names.is_none(), "{rule:?}");
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    let new = granted.insert((group.clone(), resource.clone(), verb.clone()));
                    assert!(new, "granted twice: {group} {resource} {verb}");
                }
            }
        }
    }
    let wanted: BTreeSet<(String, String, String)> = NEEDED
        .iter()
        .flat_map(|n| {
            GRANTED_VERBS
                .iter()
                .map(|v| (n.group.to_string(), n.resource.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(granted, wanted);
    // The verbs the check asks about are among those granted.
    for verb in super::api::VERBS {
        assert!(GRANTED_VERBS.contains(&verb));
    }
}
