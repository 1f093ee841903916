//! The repository is self-contained: no file in it refers to a path outside it.
//!
//! A fresh clone on a new machine has nothing beside it, so a test or a build step that
//! reads `../something` next to the checkout works on the machine that wrote it and
//! fails everywhere else. This test reads every text file of the repository (what git
//! tracks, and what it would track: build output, `node_modules` and fuzz corpora are
//! skipped) and fails on
//! - a relative path (`../x`) that, taken from the file's own folder, leaves the repository
//!   (how `include_str!`, `#[path]`, scripts and Markdown links resolve);
//! - a path glued to `CARGO_MANIFEST_DIR` that climbs out of it (`"/../x"`);
//! - an absolute path into the folders that surround checkouts on the machines where this
//!   project is developed (`/work/...`).

use std::path::{Component, Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What is not source: git's own data, build output, installed packages, generated corpora.
const SKIP_DIRS: &[&str] = &[
    ".git",
    "target",
    "node_modules",
    "test-output",
    "corpus",
    "artifacts",
];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        // `.git` is a folder in a clone and a file pointing elsewhere in a worktree.
        if SKIP_DIRS.iter().any(|s| name == *s) {
            continue;
        }
        if kind.is_dir() {
            files(&path, out);
        } else if kind.is_file() {
            out.push(path);
        }
    }
}

/// The path-like token that contains byte offset `at`: letters, digits and `_ . / - ~ $ {}`.
fn token_around(line: &str, at: usize) -> &str {
    let is_path = |c: char| c.is_ascii_alphanumeric() || "_./-~".contains(c);
    let start = line[..at]
        .char_indices()
        .rev()
        .find(|&(_, c)| !is_path(c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let end = line[at..]
        .char_indices()
        .find(|&(_, c)| !is_path(c))
        .map_or(line.len(), |(i, _)| at + i);
    &line[start..end]
}

/// Does `rel`, taken from `base` (inside the repository), climb above the repository root?
fn escapes(root: &Path, base: &Path, rel: &str) -> bool {
    let mut depth = base
        .strip_prefix(root)
        .map(|p| p.components().count() as i64)
        .unwrap_or(0);
    for part in Path::new(rel).components() {
        match part {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    false
}

/// What is wrong with one line of `file`, if anything.
fn findings(root: &Path, file: &Path, line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let dir = file.parent().unwrap_or(root);
    for (at, _) in line.match_indices("../") {
        let token = token_around(line, at);
        let relative = token.starts_with("../") || token.starts_with("./../");
        let from_manifest = token.starts_with("/../") && line.contains("CARGO_MANIFEST_DIR");
        if relative && escapes(root, dir, token) {
            found.push(format!(
                "`{token}` leaves the repository from {}",
                dir.display()
            ));
        } else if from_manifest && escapes(root, root, &token[1..]) {
            found.push(format!("`{token}` climbs out of CARGO_MANIFEST_DIR"));
        }
    }
    // The folder beside the checkout that the project's design notes live in, spelled so
    // that this file does not name it itself.
    let beside = ["..", "shared"].join("/");
    for marker in ["/work/", beside.as_str()] {
        if line.contains(marker) {
            found.push(format!("refers to `{marker}` outside the repository"));
        }
    }
    found
}

#[test]
fn no_file_refers_to_a_path_outside_the_repository() {
    let root = Path::new(ROOT);
    let mut all = Vec::new();
    files(root, &mut all);
    assert!(
        all.len() > 50,
        "walked only {} files under {ROOT}: is this the repository?",
        all.len()
    );
    let me = Path::new(file!()).file_name().unwrap();
    let mut problems = Vec::new();
    let mut read = 0;
    for file in &all {
        // This file names the patterns it looks for.
        if file.file_name() == Some(me) {
            continue;
        }
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        let Ok(text) = String::from_utf8(bytes) else {
            continue; // binary
        };
        read += 1;
        for (n, line) in text.lines().enumerate() {
            for why in findings(root, file, line) {
                let rel = file.strip_prefix(root).unwrap_or(file);
                problems.push(format!(
                    "{}:{}: {why}\n    {}",
                    rel.display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(read > 50, "read only {read} text files");
    assert!(
        problems.is_empty(),
        "{} reference(s) to paths outside the repository (a fresh clone has nothing beside it):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_scanner_finds_what_it_must() {
    let root = Path::new("/r");
    let src = Path::new("/r/src/check/api.rs");
    let bad = [
        r#"include_str!("../../../{S}/fixtures/cluster-snapshot.json")"#,
        r#"concat!(env!("CARGO_MANIFEST_DIR"), "/../{S}/fixtures")"#,
        r#"std::fs::read_to_string("/work/{S}/fixtures/x.json")"#,
        "see ../{S}/DESIGN.md",
    ];
    for line in bad.map(|l| l.replace("{S}", "shared")) {
        assert!(!findings(root, src, &line).is_empty(), "missed: {line}");
    }
    let good = [
        r#"include_str!("../../tests/fixtures/cluster-snapshot.json")"#,
        r#"concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")"#,
        r#"cd "$(dirname "$0")/..""#,
        r#""net/../../etc/passwd","#,
        "a/b/../c",
    ];
    for line in good {
        assert!(findings(root, src, line).is_empty(), "flagged: {line}");
    }
    // From the repository root, one level up is already outside.
    assert!(!findings(root, Path::new("/r/README.md"), "[x](../other/README.md)").is_empty());
    assert!(findings(root, Path::new("/r/README.md"), "[x](./docker/README.md)").is_empty());
}
