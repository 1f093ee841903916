//! One check's result, the whole report, and how both are shown: a ✔/✘ list for people
//! (colour only on a terminal) or JSON for machines.
//!
//! Owns formatting only; nothing here runs a check.

use std::fmt::Write as _;

use serde::Serialize;

/// How a check ended. Only [`Severity::Error`] blocks running the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The check passed.
    Ok,
    /// Something is missing, but the gateway runs without it (degraded).
    Warning,
    /// The gateway cannot run (or cannot do its job) until this is fixed.
    Error,
    /// Not run: an earlier check it depends on failed, or it does not apply.
    Skipped,
}

/// The result of one check: one line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable, short name (`API reachable`), also the JSON key people grep for.
    pub name: String,
    /// True when the check passed.
    pub ok: bool,
    pub severity: Severity,
    /// What was found: which file, which server, which endpoint answered, the error.
    pub detail: String,
    /// How to fix it, for anything that is not [`Severity::Ok`].
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, Severity::Ok, detail, None)
    }

    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(name, Severity::Warning, detail, Some(fix.into()))
    }

    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(name, Severity::Error, detail, Some(fix.into()))
    }

    pub fn skip(name: impl Into<String>, why: impl Into<String>) -> Check {
        Check::new(name, Severity::Skipped, why, None)
    }

    fn new(
        name: impl Into<String>,
        severity: Severity,
        detail: impl Into<String>,
        fix: Option<String>,
    ) -> Check {
        Check {
            name: name.into(),
            ok: severity == Severity::Ok,
            severity,
            detail: detail.into(),
            fix,
        }
    }

    /// True when this result keeps the gateway from running.
    pub fn blocks(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// One exposed `ClusterIP:port/protocol` of a snapshot file, listed by `check --from-file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortSummary {
    /// `namespace/name`.
    pub service: String,
    /// `10.96.0.10:53` or `[fd00::1]:80`.
    pub frontend: String,
    pub protocol: String,
    /// Endpoints traffic would go to (ready, or the serving+terminating fallback).
    pub usable_endpoints: usize,
}

/// Everything `clusterway check` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// True when nothing blocks running (warnings allowed).
    pub ok: bool,
    pub checks: Vec<Check>,
    /// With `--from-file`: the ports the file exposes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<PortSummary>>,
}

impl Report {
    pub fn new(checks: Vec<Check>, services: Option<Vec<PortSummary>>) -> Report {
        Report {
            ok: !checks.iter().any(Check::blocks),
            checks,
            services,
        }
    }

    /// Checks that block running.
    pub fn blockers(&self) -> usize {
        self.checks.iter().filter(|c| c.blocks()).count()
    }

    pub fn to_json(&self) -> String {
        // Serializing plain strings, bools and enums cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report for people: one line per check, its fix indented below it.
    pub fn to_human(&self, colour: bool) -> String {
        let paint = Paint { on: colour };
        let width = self
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for check in &self.checks {
            let (mark, style) = match check.severity {
                Severity::Ok => ("✔", GREEN),
                Severity::Warning => ("!", YELLOW),
                Severity::Error => ("✘", RED),
                Severity::Skipped => ("-", DIM),
            };
            let pad = width - check.name.chars().count();
            let _ = writeln!(
                out,
                "{} {}{}  {}",
                paint.style(style, mark),
                paint.style(BOLD, &check.name),
                " ".repeat(pad),
                check.detail
            );
            if let Some(fix) = &check.fix {
                let indent = " ".repeat(width + 4);
                for (i, line) in fix.lines().enumerate() {
                    let label = if i == 0 { "fix: " } else { "     " };
                    let _ = writeln!(out, "{indent}{}{line}", paint.style(style, label));
                }
            }
        }
        if let Some(services) = &self.services {
            let _ = writeln!(out);
            for s in services {
                let _ = writeln!(
                    out,
                    "    {:<28} {:<5} {:<24} {} endpoint{}",
                    s.frontend,
                    s.protocol,
                    s.service,
                    s.usable_endpoints,
                    if s.usable_endpoints == 1 { "" } else { "s" }
                );
            }
        }
        let warnings = self
            .checks
            .iter()
            .filter(|c| c.severity == Severity::Warning)
            .count();
        let passed = self.checks.iter().filter(|c| c.ok).count();
        let _ = writeln!(out);
        let summary = format!(
            "{passed} passed, {warnings} warning{}, {} failed",
            if warnings == 1 { "" } else { "s" },
            self.blockers()
        );
        if self.ok {
            let _ = writeln!(out, "{}", paint.style(GREEN, &format!("ready: {summary}")));
        } else {
            let _ = writeln!(
                out,
                "{}",
                paint.style(RED, &format!("not ready: {summary}"))
            );
        }
        out
    }
}

const GREEN: &str = "32";
const YELLOW: &str = "33";
const RED: &str = "31";
const DIM: &str = "2";
const BOLD: &str = "1";

/// ANSI styling that is a no-op when the output is not a terminal.
struct Paint {
    on: bool,
}

impl Paint {
    fn style(&self, sgr: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report::new(
            vec![
                Check::pass("API reachable", "Kubernetes v1.33.1"),
                Check::warn(
                    "list/watch servicecidrs",
                    "denied",
                    "grant it\nor pass --service-cidr",
                ),
                Check::fail("TUN device", "EPERM", "add CAP_NET_ADMIN"),
                Check::skip("endpoints reachable", "API not reachable"),
            ],
            None,
        )
    }

    #[test]
    fn blockers_decide_ok() {
        let r = sample();
        assert!(!r.ok);
        assert_eq!(r.blockers(), 1);
        let only_warning = Report::new(vec![Check::warn("a", "b", "c")], None);
        assert!(only_warning.ok);
        assert!(!only_warning.checks[0].ok);
    }

    #[test]
    fn human_lines_and_fixes() {
        let text = sample().to_human(false);
        assert!(!text.contains('\x1b'), "no colour when asked: {text}");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("✔ API reachable"), "{text}");
        assert!(lines[1].starts_with("! list/watch servicecidrs"), "{text}");
        assert!(lines[2].trim_start().starts_with("fix: grant it"), "{text}");
        assert!(lines[3].trim_start().starts_with("or pass --service-cidr"));
        assert!(lines[4].starts_with("✘ TUN device"), "{text}");
        assert!(lines[5].trim_start().starts_with("fix: add CAP_NET_ADMIN"));
        assert!(lines[6].starts_with("- endpoints reachable"), "{text}");
        assert!(
            text.contains("not ready: 1 passed, 1 warning, 1 failed"),
            "{text}"
        );
        assert!(sample().to_human(true).contains("\x1b[31m✘\x1b[0m"));
    }

    #[test]
    fn json_fields() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(v["ok"], false);
        let c = &v["checks"][2];
        assert_eq!(c["name"], "TUN device");
        assert_eq!(c["ok"], false);
        assert_eq!(c["severity"], "error");
        assert_eq!(c["detail"], "EPERM");
        assert_eq!(c["fix"], "add CAP_NET_ADMIN");
        assert_eq!(v["checks"][0]["fix"], serde_json::Value::Null);
        assert_eq!(v["checks"][3]["severity"], "skipped");
        assert!(v.get("services").is_none());
    }
}
