//! Exposure policy: which Services the gateway exposes off-cluster, and to which clients.
//!
//! Off-cluster exposure of a ClusterIP is a security decision, so it is explicit:
//! - which Services: `--namespace` / `--exclude-namespace`, `--service-selector` (label
//!   selector syntax: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a`, `!a`), and
//!   the annotation `clusterway.io/expose` (`"false"` opts a Service out; with
//!   `--expose-by-default=false` only Services annotated `"true"` are exposed);
//! - from where: `--allow-source CIDR` and the annotation
//!   `clusterway.io/allow-sources: "10.0.0.0/8,192.168.1.0/24"`. When both are given a client
//!   must be inside both (the operator's list is a ceiling a Service cannot widen).
//!
//! A malformed annotation is reported as a problem on that Service and read in the most
//! restrictive way: a bad `expose` value means not exposed, a bad `allow-sources` value
//! means no client is allowed. Never "open to all".
//!
//! Pure: no I/O. The table builder ([`super::build`]) calls [`Policy::evaluate`] for every
//! Service, for the file and the Kubernetes source alike.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;

/// Annotation that opts a Service out (`"false"`) or, with `--expose-by-default=false`,
/// in (`"true"`).
pub const EXPOSE_ANNOTATION: &str = "clusterway.io/expose";
/// Annotation listing the client CIDRs allowed to reach a Service (comma-separated).
pub const ALLOW_SOURCES_ANNOTATION: &str = "clusterway.io/allow-sources";

/// The annotations the gateway reads (everything else is trimmed from cached objects).
pub const READ_ANNOTATIONS: [&str; 2] = [EXPOSE_ANNOTATION, ALLOW_SOURCES_ANNOTATION];

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equal(String, String),
    NotEqual(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k));
        match self {
            Requirement::Equal(k, v) => get(k) == Some(v),
            Requirement::NotEqual(k, v) => get(k) != Some(v),
            Requirement::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => !get(k).is_some_and(|v| set.contains(v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        }
    }
}

/// A label selector in the syntax of `kubectl get -l`; all requirements must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    text: String,
    requirements: Vec<Requirement>,
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl LabelSelector {
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Parses `app=web,tier in (a,b),!legacy`. The message of an error names the part.
    pub fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text)? {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("empty requirement in selector {text:?}"));
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(LabelSelector {
            text: text.trim().to_string(),
            requirements,
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unbalanced ')' in selector {text:?}"))?
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in selector {text:?}"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// A label key: an optional DNS prefix and `/`, then a name of alphanumerics, `-`, `_`, `.`.
fn valid_key(k: &str) -> bool {
    let name = k.rsplit_once('/').map_or(k, |(prefix, name)| {
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            ""
        } else {
            name
        }
    });
    !name.is_empty() && name.len() <= 63 && name.chars().all(label_char)
}

fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63 && v.chars().all(label_char)
}

fn key(k: &str, part: &str) -> Result<String, String> {
    let k = k.trim();
    if valid_key(k) {
        Ok(k.to_string())
    } else {
        Err(format!("{k:?} is not a valid label key (in {part:?})"))
    }
}

fn value(v: &str, part: &str) -> Result<String, String> {
    let v = v.trim();
    if valid_value(v) {
        Ok(v.to_string())
    } else {
        Err(format!("{v:?} is not a valid label value (in {part:?})"))
    }
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(k) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key(k, part)?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEqual(key(k, part)?, value(v, part)?));
    }
    if let Some((k, v)) = part.split_once("==") {
        return Ok(Requirement::Equal(key(k, part)?, value(v, part)?));
    }
    if let Some((k, v)) = part.split_once('=') {
        return Ok(Requirement::Equal(key(k, part)?, value(v, part)?));
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if let [k, rest] = words[..] {
        let rest = rest.trim_start();
        let (negate, list) = if let Some(l) = rest.strip_prefix("notin") {
            (true, l)
        } else if let Some(l) = rest.strip_prefix("in") {
            (false, l)
        } else {
            return Err(format!(
                "expected `in` or `notin` after {k:?} (in {part:?})"
            ));
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| format!("expected a list like (a,b) (in {part:?})"))?;
        let values = inner
            .split(',')
            .map(|v| value(v, part))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let k = key(k, part)?;
        return Ok(if negate {
            Requirement::NotIn(k, values)
        } else {
            Requirement::In(k, values)
        });
    }
    Ok(Requirement::Exists(key(part, part)?))
}

/// The operator's policy (from the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Only these namespaces (empty: all).
    pub namespaces: BTreeSet<String>,
    /// Never these namespaces.
    pub exclude_namespaces: BTreeSet<String>,
    /// Only Services whose labels match.
    pub selector: Option<LabelSelector>,
    /// Expose Services without a `clusterway.io/expose` annotation.
    pub expose_by_default: bool,
    /// Clients allowed to reach any Service (`None`: any).
    pub allow_sources: Option<Vec<IpNet>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            namespaces: BTreeSet::new(),
            exclude_namespaces: BTreeSet::new(),
            selector: None,
            expose_by_default: true,
            allow_sources: None,
        }
    }
}

/// A malformed annotation: the field (`metadata.annotations[clusterway.io/expose]`) and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationProblem {
    pub field: String,
    pub problem: String,
}

/// What the policy says about one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `Err(reason)` when the Service is not exposed.
    pub exposed: Result<(), String>,
    /// Allowed client sources for its ports (`None`: any).
    pub allow: Option<Arc<[IpNet]>>,
    /// Malformed annotations (already read in the most restrictive way).
    pub problems: Vec<AnnotationProblem>,
}

fn annotation_field(name: &str) -> String {
    format!("metadata.annotations[{name}]")
}

impl Policy {
    /// Decides for a Service in `namespace` with these labels and annotations.
    pub fn evaluate(
        &self,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Decision {
        let mut problems = Vec::new();
        let exposed = self.exposed(namespace, labels, annotations, &mut problems);
        let allow = if exposed.is_ok() {
            self.allow(annotations, &mut problems)
        } else {
            None
        };
        Decision {
            exposed,
            allow,
            problems,
        }
    }

    fn exposed(
        &self,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
        annotations: Option<&BTreeMap<String, String>>,
        problems: &mut Vec<AnnotationProblem>,
    ) -> Result<(), String> {
        if !self.namespaces.is_empty() && !self.namespaces.contains(namespace) {
            return Err(format!(
                "namespace {namespace} is not selected by --namespace"
            ));
        }
        if self.exclude_namespaces.contains(namespace) {
            return Err(format!(
                "namespace {namespace} is excluded by --exclude-namespace"
            ));
        }
        if let Some(sel) = &self.selector {
            if !sel.matches(labels) {
                return Err(format!("labels do not match --service-selector {sel}"));
            }
        }
        match annotations.and_then(|a| a.get(EXPOSE_ANNOTATION)) {
            None if self.expose_by_default => Ok(()),
            None => Err(format!(
                "not opted in (--expose-by-default=false and no {EXPOSE_ANNOTATION}: \"true\")"
            )),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(()),
                "false" => Err(format!("opted out by {EXPOSE_ANNOTATION}: \"false\"")),
                _ => {
                    problems.push(AnnotationProblem {
                        field: annotation_field(EXPOSE_ANNOTATION),
                        problem: format!("{v:?} is not \"true\" or \"false\"; not exposed"),
                    });
                    Err(format!("malformed {EXPOSE_ANNOTATION} annotation {v:?}"))
                }
            },
        }
    }

    fn allow(
        &self,
        annotations: Option<&BTreeMap<String, String>>,
        problems: &mut Vec<AnnotationProblem>,
    ) -> Option<Arc<[IpNet]>> {
        let own = match annotations.and_then(|a| a.get(ALLOW_SOURCES_ANNOTATION)) {
            None => None,
            Some(v) => match parse_sources(v) {
                Ok(nets) => Some(nets),
                Err(problem) => {
                    problems.push(AnnotationProblem {
                        field: annotation_field(ALLOW_SOURCES_ANNOTATION),
                        problem: format!("{problem}; no client is allowed"),
                    });
                    Some(Vec::new())
                }
            },
        };
        let nets = match (&self.allow_sources, own) {
            (None, None) => return None,
            (Some(global), None) => global.clone(),
            (None, Some(own)) => own,
            (Some(global), Some(own)) => intersect(global, &own),
        };
        Some(nets.into())
    }
}

/// `10.0.0.0/8, 192.168.1.0/24, 2001:db8::/32, 10.1.2.3` (a bare address is one host).
pub fn parse_sources(text: &str) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("{text:?} has an empty entry"));
        }
        let net = match item.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => match item.parse::<std::net::IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => return Err(format!("{item:?} is not a CIDR or IP address")),
            },
        };
        if net.trunc() != net {
            return Err(format!("{item:?} has host bits set"));
        }
        out.push(net);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The CIDRs inside both lists (two CIDRs are nested or disjoint, so pairwise is exact).
fn intersect(a: &[IpNet], b: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            if x.contains(y) {
                out.push(*y);
            } else if y.contains(x) {
                out.push(*x);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn selector_syntax() {
        let s = LabelSelector::parse("app=web, tier==front,env!=dev,zone in (a, b),team notin (x),exposed,!legacy,example.com/owner").unwrap();
        assert_eq!(s.requirements().len(), 8);
        let good = labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("zone", "b"),
            ("exposed", ""),
            ("example.com/owner", "me"),
        ]);
        assert!(s.matches(Some(&good)));
        let mut bad = good.clone();
        bad.insert("legacy".into(), "1".into());
        assert!(!s.matches(Some(&bad)));
        let mut bad = good.clone();
        bad.insert("zone".into(), "c".into());
        assert!(!s.matches(Some(&bad)));
        let mut bad = good.clone();
        bad.insert("env".into(), "dev".into());
        assert!(!s.matches(Some(&bad)));
        let mut bad = good.clone();
        bad.insert("team".into(), "x".into());
        assert!(!s.matches(Some(&bad)));
        assert!(!s.matches(None));
        // != and notin hold for a missing key.
        let s = LabelSelector::parse("env!=dev,team notin (x)").unwrap();
        assert!(s.matches(None));

        for bad in [
            "a in b", "a in (b", "a=b)", "=b", "a=b c", "a,,b", "a is (b)", "a=b=c",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespaces_selector_and_annotations() {
        let p = Policy {
            namespaces: ["shop".to_string(), "web".to_string()].into(),
            exclude_namespaces: ["web".to_string()].into(),
            selector: Some(LabelSelector::parse("public=yes").unwrap()),
            ..Policy::default()
        };
        let yes = labels(&[("public", "yes")]);
        assert_eq!(p.evaluate("shop", Some(&yes), None).exposed, Ok(()));
        assert!(p
            .evaluate("other", Some(&yes), None)
            .exposed
            .unwrap_err()
            .contains("--namespace"));
        assert!(p
            .evaluate("web", Some(&yes), None)
            .exposed
            .unwrap_err()
            .contains("--exclude-namespace"));
        assert!(p
            .evaluate("shop", None, None)
            .exposed
            .unwrap_err()
            .contains("--service-selector"));
        let off = labels(&[(EXPOSE_ANNOTATION, "false")]);
        assert!(p.evaluate("shop", Some(&yes), Some(&off)).exposed.is_err());

        let opt_in = Policy {
            expose_by_default: false,
            ..Policy::default()
        };
        assert!(opt_in.evaluate("a", None, None).exposed.is_err());
        let on = labels(&[(EXPOSE_ANNOTATION, "true")]);
        assert_eq!(opt_in.evaluate("a", None, Some(&on)).exposed, Ok(()));

        let bad = labels(&[(EXPOSE_ANNOTATION, "yes please")]);
        let d = Policy::default().evaluate("a", None, Some(&bad));
        assert!(
            d.exposed.is_err(),
            "a malformed expose annotation never exposes"
        );
        assert_eq!(d.problems.len(), 1);
        assert_eq!(
            d.problems[0].field,
            "metadata.annotations[clusterway.io/expose]"
        );
    }

    #[test]
    fn allowed_sources() {
        let p = Policy::default();
        assert_eq!(p.evaluate("a", None, None).allow, None);
        let ann = labels(&[(
            ALLOW_SOURCES_ANNOTATION,
            "10.0.0.0/8, 192.168.1.0/24,2001:db8::1",
        )]);
        let d = p.evaluate("a", None, Some(&ann));
        assert_eq!(
            d.allow.as_deref(),
            Some(
                &[
                    net("10.0.0.0/8"),
                    net("192.168.1.0/24"),
                    net("2001:db8::1/128")
                ][..]
            )
        );

        for bad in ["10.0.0.0/33", "", "10.0.0.1/8", "banana", "10.0.0.0/8,,"] {
            let ann = labels(&[(ALLOW_SOURCES_ANNOTATION, bad)]);
            let d = p.evaluate("a", None, Some(&ann));
            assert_eq!(d.allow.as_deref(), Some(&[][..]), "{bad:?} allows nobody");
            assert_eq!(d.problems.len(), 1, "{bad:?}");
            assert_eq!(d.exposed, Ok(()));
        }

        let global = Policy {
            allow_sources: Some(vec![net("10.0.0.0/8"), net("172.16.0.0/12")]),
            ..Policy::default()
        };
        assert_eq!(
            global
                .evaluate("a", None, None)
                .allow
                .as_deref()
                .map(<[_]>::len),
            Some(2)
        );
        let ann = labels(&[(
            ALLOW_SOURCES_ANNOTATION,
            "10.1.0.0/16,192.168.0.0/16,0.0.0.0/0",
        )]);
        // A Service cannot widen the operator's list.
        assert_eq!(
            global.evaluate("a", None, Some(&ann)).allow.as_deref(),
            Some(&[net("10.0.0.0/8"), net("10.1.0.0/16"), net("172.16.0.0/12")][..])
        );
    }
}
