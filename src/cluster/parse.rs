//! File text → Kubernetes objects: the parsing half of the `file` source.
//!
//! Accepts what `kubectl get svc,endpointslices -A -o yaml|json` writes (a `kind: List`),
//! multi-document YAML, one JSON object or several concatenated ones, and a top-level JSON
//! array. Every document is first read into a generic `serde_json::Value`, dispatched on
//! `apiVersion`/`kind`, and only then deserialized into the `k8s-openapi` type, so that
//! objects of other kinds can be counted and skipped without knowing their schema.
//!
//! This module is pure: no I/O, no semantics (that is `build`), no tokio.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::error::{ObjectError, SourceError};

/// The objects a source holds, exactly as the API server would return them.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// Objects of any other kind (or API version), counted by kind.
    pub ignored_kinds: BTreeMap<String, usize>,
}

/// Namespace assumed for an object that names none (as `kubectl apply` would).
pub const DEFAULT_NAMESPACE: &str = "default";

const SERVICE_API: &str = "v1";
const SLICE_API: &str = "discovery.k8s.io/v1";

/// Parses `text` (the content of the file called `path_label`) into Services and
/// EndpointSlices. The first problem found is returned, naming the file, the object and the
/// field. A missing `metadata.namespace` is filled in as `default`.
pub fn parse_objects(path_label: &str, text: &str) -> Result<Objects, SourceError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let docs = if looks_like_json(text) {
        json_documents(path_label, text)?
    } else {
        yaml_documents(path_label, text)?
    };
    let several = docs.len() > 1;

    let mut objs = Objects::default();
    // Where each (kind, namespace/name) was first seen, to reject duplicates.
    let mut seen: BTreeMap<(&'static str, String), String> = BTreeMap::new();
    for (index, doc) in docs.into_iter().enumerate() {
        let doc_label = if several {
            format!("document {}", index + 1)
        } else {
            "document".to_string()
        };
        for (label, value) in expand_lists(path_label, &doc_label, several, doc)? {
            match classify(path_label, &label, &value)? {
                Class::Service => {
                    let mut svc: Service = typed(path_label, "Service", &label, value)?;
                    let key = fill_identity(path_label, "Service", &label, &mut svc.metadata)?;
                    check_unique(path_label, &mut seen, "Service", key, &label)?;
                    objs.services.push(svc);
                }
                Class::Slice => {
                    let mut slice: EndpointSlice =
                        typed(path_label, "EndpointSlice", &label, value)?;
                    let key =
                        fill_identity(path_label, "EndpointSlice", &label, &mut slice.metadata)?;
                    check_unique(path_label, &mut seen, "EndpointSlice", key, &label)?;
                    objs.slices.push(slice);
                }
                Class::Other(kind) => *objs.ignored_kinds.entry(kind).or_insert(0) += 1,
            }
        }
    }
    Ok(objs)
}

fn looks_like_json(text: &str) -> bool {
    matches!(text.trim_start().chars().next(), Some('{') | Some('['))
}

fn json_documents(file: &str, text: &str) -> Result<Vec<Value>, SourceError> {
    let mut docs = Vec::new();
    for doc in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        let doc = doc.map_err(|e| SourceError::Syntax {
            file: file.to_string(),
            line: e.line(),
            column: e.column(),
            message: strip_position(&e.to_string()),
        })?;
        match doc {
            // A top-level array is a list of objects.
            Value::Array(items) => docs.extend(items),
            other => docs.push(other),
        }
    }
    Ok(docs)
}

fn yaml_documents(file: &str, text: &str) -> Result<Vec<Value>, SourceError> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            SourceError::Syntax {
                file: file.to_string(),
                line,
                column,
                message: strip_position(&e.to_string()),
            }
        })?;
        // `---` with nothing after it, or a file of comments only.
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// serde_json and serde_yaml_ng put " at line N column M" into their messages; the position
/// is reported separately, so it is cut out of the message.
fn strip_position(msg: &str) -> String {
    let mut out = msg.to_string();
    while let Some(start) = out.find(" at line ") {
        let rest = &out[start + " at line ".len()..];
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let line_len = digits(rest);
        let after_line = &rest[line_len..];
        let Some(col) = after_line.strip_prefix(" column ") else {
            break;
        };
        let col_len = digits(col);
        if line_len == 0 || col_len == 0 {
            break;
        }
        let end = start + " at line ".len() + line_len + " column ".len() + col_len;
        out.replace_range(start..end, "");
    }
    out
}

/// Replaces a `kind: List` (or `ServiceList`, as the raw API returns it) by its items.
fn expand_lists(
    file: &str,
    doc_label: &str,
    several: bool,
    doc: Value,
) -> Result<Vec<(String, Value)>, SourceError> {
    let Value::Object(mut map) = doc else {
        return Ok(vec![(doc_label.to_string(), doc)]);
    };
    let kind = map
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !kind.ends_with("List") || !map.contains_key("items") {
        return Ok(vec![(doc_label.to_string(), Value::Object(map))]);
    }
    // A typed list (`ServiceList`) leaves kind/apiVersion out of its items.
    let item_kind = kind.strip_suffix("List").unwrap_or_default().to_string();
    let api_version = map.get("apiVersion").cloned();
    let items = match map.remove("items") {
        Some(Value::Array(items)) => items,
        Some(Value::Null) => Vec::new(),
        Some(_) => {
            return Err(SourceError::Document {
                file: file.to_string(),
                document: doc_label.to_string(),
                problem: format!("items: a {kind} must hold a sequence of objects"),
            })
        }
        None => Vec::new(),
    };
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            if let (Value::Object(obj), false) = (&mut item, item_kind.is_empty()) {
                if !obj.contains_key("kind") {
                    obj.insert("kind".into(), Value::String(item_kind.clone()));
                    if let Some(v) = &api_version {
                        obj.entry("apiVersion").or_insert_with(|| v.clone());
                    }
                }
            }
            let label = if several {
                format!("{doc_label}, items[{i}]")
            } else {
                format!("items[{i}]")
            };
            (label, item)
        })
        .collect())
}

enum Class {
    Service,
    Slice,
    Other(String),
}

fn classify(file: &str, label: &str, value: &Value) -> Result<Class, SourceError> {
    let doc_err = |problem: String| SourceError::Document {
        file: file.to_string(),
        document: label.to_string(),
        problem,
    };
    let Value::Object(map) = value else {
        return Err(doc_err(format!(
            "expected a Kubernetes object (a mapping), found {}",
            value_kind(value)
        )));
    };
    let kind = match map.get("kind") {
        Some(Value::String(k)) if !k.is_empty() => k.as_str(),
        _ => return Err(doc_err("kind: missing".to_string())),
    };
    let api = match map.get("apiVersion") {
        Some(Value::String(a)) if !a.is_empty() => a.as_str(),
        _ => return Err(doc_err(format!("{kind}: apiVersion: missing"))),
    };
    Ok(match (api, kind) {
        (SERVICE_API, "Service") => Class::Service,
        (SLICE_API, "EndpointSlice") => Class::Slice,
        // e.g. discovery.k8s.io/v1beta1 EndpointSlice: a different schema, not read.
        (_, "Service") | (_, "EndpointSlice") => Class::Other(format!("{kind} ({api})")),
        _ => Class::Other(kind.to_string()),
    })
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// `namespace/name` from an untyped object, for error messages before it is typed.
fn untyped_identity(value: &Value) -> Option<String> {
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str().filter(|n| !n.is_empty())?;
    let ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    Some(format!("{ns}/{name}"))
}

fn typed<T: DeserializeOwned>(
    file: &str,
    kind: &str,
    label: &str,
    value: Value,
) -> Result<T, SourceError> {
    match serde_json::from_value::<T>(value.clone()) {
        Ok(t) => Ok(t),
        Err(e) => {
            let object = untyped_identity(&value).unwrap_or_else(|| label.to_string());
            let field = locate_error::<T>(&value, &e.to_string());
            Err(SourceError::Object {
                file: file.to_string(),
                error: Box::new(ObjectError::new(kind, object, field, e.to_string())),
                more: 0,
            })
        }
    }
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Finds the field a deserialization error is about. Errors from a `Value` carry no
/// position, so the field is found by elimination: descend into the child whose removal
/// changes the outcome, as long as there is one. Only runs on the error path; objects are
/// small, so the repeated attempts cost nothing that matters.
fn locate_error<T: DeserializeOwned>(value: &Value, message: &str) -> String {
    let mut path: Vec<Seg> = Vec::new();
    while let Some(node) = get(value, &path) {
        let children: Vec<Seg> = match node {
            Value::Object(m) => m.keys().map(|k| Seg::Key(k.clone())).collect(),
            Value::Array(a) => (0..a.len()).map(Seg::Index).collect(),
            _ => Vec::new(),
        };
        let culprit = children.into_iter().find(|child| {
            let mut trial = value.clone();
            if let Some(parent) = get_mut(&mut trial, &path) {
                match (parent, child) {
                    (Value::Object(m), Seg::Key(k)) => {
                        m.remove(k);
                    }
                    (Value::Array(a), Seg::Index(i)) if *i < a.len() => {
                        a.remove(*i);
                    }
                    _ => return false,
                }
            }
            match serde_json::from_value::<T>(trial) {
                Ok(_) => true,
                Err(e) => e.to_string() != message,
            }
        });
        match culprit {
            Some(seg) => path.push(seg),
            None => break,
        }
    }
    render_path(&path)
}

fn get<'a>(mut value: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    for seg in path {
        value = match seg {
            Seg::Key(k) => value.get(k.as_str())?,
            Seg::Index(i) => value.get(*i)?,
        };
    }
    Some(value)
}

fn get_mut<'a>(mut value: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    for seg in path {
        value = match seg {
            Seg::Key(k) => value.get_mut(k.as_str())?,
            Seg::Index(i) => value.get_mut(*i)?,
        };
    }
    Some(value)
}

/// `spec.ports[1].port`; keys that are not plain identifiers are quoted:
/// `metadata.labels["kubernetes.io/service-name"]`.
fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
            Seg::Key(k)
                if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Key(k) => out.push_str(&format!("[{k:?}]")),
        }
    }
    out
}

/// Checks the name, fills in a missing namespace, and returns `namespace/name`.
fn fill_identity(
    file: &str,
    kind: &str,
    label: &str,
    meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<String, SourceError> {
    let name = match meta.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => {
            return Err(SourceError::Object {
                file: file.to_string(),
                error: Box::new(ObjectError::new(kind, label, "metadata.name", "missing")),
                more: 0,
            })
        }
    };
    let ns = match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => ns.to_string(),
        _ => {
            meta.namespace = Some(DEFAULT_NAMESPACE.to_string());
            DEFAULT_NAMESPACE.to_string()
        }
    };
    Ok(format!("{ns}/{name}"))
}

fn check_unique(
    file: &str,
    seen: &mut BTreeMap<(&'static str, String), String>,
    kind: &'static str,
    id: String,
    label: &str,
) -> Result<(), SourceError> {
    match seen.entry((kind, id.clone())) {
        Entry::Vacant(v) => {
            v.insert(label.to_string());
            Ok(())
        }
        Entry::Occupied(o) => Err(SourceError::Object {
            file: file.to_string(),
            error: Box::new(ObjectError::new(
                kind,
                id,
                "metadata.name",
                format!("defined twice ({} and {label})", o.get()),
            )),
            more: 0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC_YAML: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.20
  ports:
  - name: http
    port: 80
";

    const SLICE_YAML: &str = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
endpoints:
- addresses: [10.244.0.1]
ports:
- name: http
  port: 8080
";

    fn names(objs: &Objects) -> (Vec<String>, Vec<String>) {
        (
            objs.services
                .iter()
                .filter_map(|s| s.metadata.name.clone())
                .collect(),
            objs.slices
                .iter()
                .filter_map(|s| s.metadata.name.clone())
                .collect(),
        )
    }

    #[test]
    fn yaml_multi_document() {
        let text = format!("---\n{SVC_YAML}---\n{SLICE_YAML}---\n# only a comment\n");
        let objs = parse_objects("c.yaml", &text).expect("parses");
        assert_eq!(
            names(&objs),
            (vec!["web".to_string()], vec!["web-abc".to_string()])
        );
        assert!(objs.ignored_kinds.is_empty());
    }

    #[test]
    fn json_single_several_and_array() {
        let svc = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"x"},"spec":{"clusterIP":"10.96.0.1"}}"#;
        let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#;
        let one = parse_objects("c.json", svc).expect("single object");
        assert_eq!(one.services.len(), 1);

        let two = parse_objects("c.json", &format!("{svc}\n{cm}\n")).expect("stream");
        assert_eq!(two.services.len(), 1);
        assert_eq!(two.ignored_kinds.get("ConfigMap"), Some(&1));

        let arr = parse_objects("c.json", &format!("[{svc}, {cm}]")).expect("array");
        assert_eq!(arr.services.len(), 1);
        assert_eq!(arr.ignored_kinds.get("ConfigMap"), Some(&1));
    }

    #[test]
    fn kind_list_and_typed_list() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"x"},"spec":{"clusterIP":"10.96.0.1"}},
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"x"}},
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"q","namespace":"x"}}
        ],"metadata":{"resourceVersion":""}}"#;
        let objs = parse_objects("l.json", text).expect("list");
        assert_eq!(objs.services.len(), 1);
        assert_eq!(objs.ignored_kinds.get("Pod"), Some(&2));

        // The raw API's ServiceList leaves kind/apiVersion out of the items.
        let typed = "apiVersion: v1\nkind: ServiceList\nitems:\n- metadata: {name: a, namespace: x}\n  spec: {clusterIP: 10.96.0.1}\n";
        let objs = parse_objects("l.yaml", typed).expect("typed list");
        assert_eq!(objs.services.len(), 1);
    }

    #[test]
    fn other_kinds_and_versions_are_counted() {
        let text = format!(
            "{SVC_YAML}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a}}\n---\n\
             apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {{name: b}}\n"
        );
        let objs = parse_objects("c.yaml", &text).expect("parses");
        assert_eq!(objs.services.len(), 1);
        assert_eq!(objs.ignored_kinds.get("ConfigMap"), Some(&1));
        assert_eq!(
            objs.ignored_kinds
                .get("EndpointSlice (discovery.k8s.io/v1beta1)"),
            Some(&1)
        );
    }

    #[test]
    fn missing_namespace_defaults() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1}\n";
        let objs = parse_objects("c.yaml", text).expect("parses");
        assert_eq!(
            objs.services[0].metadata.namespace.as_deref(),
            Some("default")
        );
    }

    #[test]
    fn yaml_syntax_error_names_file_and_line() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: [a\n";
        let err = parse_objects("bad.yaml", text).expect_err("syntax error");
        let SourceError::Syntax { file, line, .. } = &err else {
            panic!("expected a syntax error, got {err:?}");
        };
        assert_eq!(file, "bad.yaml");
        assert!(*line >= 4, "line {line}");
        assert!(err.to_string().starts_with("bad.yaml: line "), "{err}");
    }

    #[test]
    fn json_syntax_error_names_line() {
        let text = "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Service\",\n  oops\n}\n";
        let err = parse_objects("bad.json", text).expect_err("syntax error");
        assert!(
            matches!(err, SourceError::Syntax { line: 4, .. }),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("bad.json: line 4,"), "{err}");
    }

    #[test]
    fn bad_field_names_object_and_field() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
                    spec:\n  clusterIP: 10.96.0.1\n  ports:\n  - {name: a, port: 80}\n  - {name: b, port: eighty}\n";
        let err = parse_objects("cluster.yaml", text).expect_err("bad port");
        let SourceError::Object { error, .. } = &err else {
            panic!("expected an object error, got {err:?}");
        };
        assert_eq!(error.kind, "Service");
        assert_eq!(error.object, "shop/web");
        assert_eq!(error.field, "spec.ports[1].port");
        assert!(
            err.to_string()
                .starts_with("cluster.yaml: Service shop/web: spec.ports[1].port: "),
            "{err}"
        );
    }

    #[test]
    fn bad_field_in_unnamed_list_item_names_item() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"namespace":"x"},
             "addressType":"IPv4","endpoints":[{"addresses":"10.0.0.1"}]}]}"#;
        let err = parse_objects("l.json", text).expect_err("bad addresses");
        let SourceError::Object { error, .. } = &err else {
            panic!("expected an object error, got {err:?}");
        };
        assert_eq!(error.object, "items[0]");
        assert_eq!(error.field, "endpoints[0].addresses");
    }

    #[test]
    fn missing_name_and_kind_are_errors() {
        let err = parse_objects("c.yaml", "apiVersion: v1\nkind: Service\nspec: {}\n")
            .expect_err("no name");
        assert_eq!(
            err.to_string(),
            "c.yaml: Service document: metadata.name: missing"
        );
        let err =
            parse_objects("c.yaml", &format!("{SVC_YAML}---\nfoo: bar\n")).expect_err("no kind");
        assert_eq!(err.to_string(), "c.yaml: document 2: kind: missing");
        let err = parse_objects("c.yaml", "just a string\n").expect_err("scalar");
        assert!(matches!(err, SourceError::Document { .. }), "{err:?}");
    }

    #[test]
    fn duplicate_object_is_an_error() {
        let text = format!("{SVC_YAML}---\n{SVC_YAML}");
        let err = parse_objects("c.yaml", &text).expect_err("duplicate");
        assert_eq!(
            err.to_string(),
            "c.yaml: Service shop/web: metadata.name: defined twice (document 1 and document 2)"
        );
    }

    #[test]
    fn empty_file_is_empty() {
        let objs = parse_objects("c.yaml", "").expect("empty");
        assert!(objs.services.is_empty() && objs.slices.is_empty());
        let objs = parse_objects("c.yaml", "# nothing\n").expect("comments");
        assert!(objs.services.is_empty());
    }

    #[test]
    fn position_is_cut_from_messages() {
        assert_eq!(
            strip_position("did not find ',' at line 5 column 1, while parsing"),
            "did not find ',', while parsing"
        );
        assert_eq!(
            strip_position("key must be a string at line 3 column 2"),
            "key must be a string"
        );
        assert_eq!(strip_position("at line x"), "at line x");
    }

    #[test]
    fn path_rendering_quotes_odd_keys() {
        let p = vec![
            Seg::Key("metadata".into()),
            Seg::Key("labels".into()),
            Seg::Key("kubernetes.io/service-name".into()),
        ];
        assert_eq!(
            render_path(&p),
            "metadata.labels[\"kubernetes.io/service-name\"]"
        );
    }
}
