//! `check --from-file`: the snapshot file loads and builds exactly as `run --from-file`
//! would load it at start (any bad object is an error naming the object and field).

use std::path::Path;

use super::reach::Target;
use super::report::{Check, PortSummary};
use crate::cluster::build::BuildOptions;
use crate::cluster::file::load;
use crate::cluster::table::{Protocol, ServiceTable};

pub const NAME: &str = "snapshot file loads";

/// Loads the file; on success also returns the table.
pub fn check_file(path: &Path, opts: &BuildOptions) -> (Check, Option<ServiceTable>) {
    match load(path, opts, 1) {
        Ok(table) => (Check::pass(NAME, summary(path, &table)), Some(table)),
        Err(e) => (
            Check::fail(
                NAME,
                e.to_string(),
                format!(
                    "correct the object named above in {} (the gateway refuses to start on \
                     a file with a bad object); `kubectl get svc,endpointslices -A -o yaml` \
                     writes a valid one",
                    path.display()
                ),
            ),
            None,
        ),
    }
}

fn summary(path: &Path, table: &ServiceTable) -> String {
    let exposed = table
        .services
        .iter()
        .filter(|s| s.not_exposed.is_none())
        .count();
    let ports = table.ports().count();
    let mut text = format!(
        "{}: {} Services ({exposed} exposed), {ports} ClusterIP ports",
        path.display(),
        table.services.len()
    );
    if !table.ignored_kinds.is_empty() {
        let kinds: Vec<String> = table
            .ignored_kinds
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        text.push_str(&format!(", ignored {}", kinds.join(", ")));
    }
    text
}

/// The table's exposed ports, sorted by Service then frontend.
pub fn ports(table: &ServiceTable) -> Vec<PortSummary> {
    let mut out: Vec<PortSummary> = table
        .ports()
        .map(|p| PortSummary {
            service: p.service.to_string(),
            frontend: p.frontend().to_string(),
            protocol: p.protocol.label().to_string(),
            usable_endpoints: p.usable.len(),
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.service, &a.frontend, &a.protocol).cmp(&(&b.service, &b.frontend, &b.protocol))
    });
    out
}

/// Ready TCP endpoints of the table, in Service order, for the reachability check.
pub fn targets(table: &ServiceTable) -> Vec<Target> {
    let mut out: Vec<Target> = table
        .ports()
        .filter(|p| p.protocol == Protocol::Tcp)
        .flat_map(|p| {
            p.endpoints
                .iter()
                .filter(|e| e.conditions.ready)
                .map(|e| Target {
                    addr: e.addr,
                    owner: p.service.to_string(),
                })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
