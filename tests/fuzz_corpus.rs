//! The fuzz campaign's committed inputs, replayed in ordinary `cargo test` (no
//! instrumentation, no root): every seed (`fuzz/seeds/T/`) and every input a fuzzer once
//! failed on (`fuzz/regressions/T/`, fuzz/README.md) goes through the same harness the
//! fuzz target `T` runs, which panics on a violated property. So a finding, once fixed,
//! stays fixed, and a harness that no longer builds or holds fails here first.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `harness` on every seed and regression input of `target`; returns how many seeds.
fn replay(target: &str, harness: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = inputs(&root.join("seeds").join(target));
    let regressions = inputs(&root.join("regressions").join(target));
    for file in seeds.iter().chain(&regressions) {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let result = std::panic::catch_unwind(|| harness(&data));
        assert!(
            result.is_ok(),
            "{} fails the {target} harness",
            file.display()
        );
    }
    seeds.len()
}

#[test]
fn parse_seeds_and_regressions_hold() {
    assert!(replay("parse", clusterway::dataplane::packet::fuzz::exercise) >= 10);
}

#[test]
fn engine_seeds_and_regressions_hold() {
    assert!(replay("engine", clusterway::fuzz::engine) >= 5);
}

#[test]
fn dns_seeds_and_regressions_hold() {
    assert!(replay("dns", clusterway::fuzz::dns) >= 15);
}

#[test]
fn snapshot_seeds_and_regressions_hold() {
    assert!(replay("snapshot", clusterway::fuzz::snapshot) >= 3);
}

/// The engine seeds do what they are named for: the harness's packets reach the decisions
/// they were written to reach (a seed that only ever gets dropped teaches the fuzzer
/// nothing).
#[test]
fn engine_seeds_reach_past_the_parser() {
    use clusterway::dataplane::packet::parse;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/engine");
    for file in inputs(&dir) {
        let data = std::fs::read(&file).unwrap();
        let mut rest = &data[..];
        let mut packets = 0;
        while rest.len() >= 2 {
            let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            assert!(rest.len() >= 2 + n, "{}: truncated", file.display());
            assert!(
                parse(&rest[2..2 + n]).is_ok(),
                "{}: packet {packets} does not parse",
                file.display()
            );
            rest = &rest[2 + n..];
            packets += 1;
        }
        assert!(packets >= 2, "{}", file.display());
    }
}
