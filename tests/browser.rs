//! The status page in a real browser: starts `clusterway lab` (its own namespaces, the page
//! relayed to the host's loopback), sends some traffic through it, and runs
//! `node tests/browser/run.mjs URL SNAPSHOT OUTPUT_DIR` (playwright-core driving Debian's
//! Chromium, headless). Screenshots go to `test-output/browser/`.
//!
//! Needs root, `/usr/bin/chromium` and `tests/browser/node_modules` (`bash scripts/test.sh`
//! installs both); without them the test passes with a note saying what is missing.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http_get_here, namespaces_with_prefix, LabProcess};

const CHROMIUM: &str = "/usr/bin/chromium";

/// `clusterway lab`, stopped with SIGINT (its own cleanup) when dropped.
/// Requests from the lab's client namespace until `stop` is set (so the charts, flows and
/// counters have something to show).
fn traffic(client_ns: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(file) = std::fs::File::open(&client_ns) else {
            return;
        };
        // SAFETY: setns(2) on a valid fd; changes only this thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return;
        }
        let web: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let empty: SocketAddr = "10.96.0.99:80".parse().unwrap();
        // One connection held open: a live flow on the page.
        let _held = TcpStream::connect_timeout(&web, Duration::from_secs(2));
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let _ = http_get_here(web, "/bytes/200000", Duration::from_secs(2));
            if i % 10 == 0 {
                let _ = TcpStream::connect_timeout(&empty, Duration::from_millis(300));
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

#[test]
fn dashboard_in_chromium_shows_services_live_and_filters() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let missing: Vec<&str> = [
        (!Path::new(CHROMIUM).exists()).then_some("/usr/bin/chromium (apt-get install chromium)"),
        (!dir.join("node_modules/playwright-core").exists())
            .then_some("tests/browser/node_modules (npm ci in tests/browser)"),
        Command::new("node")
            .arg("--version")
            .output()
            .is_err()
            .then_some("node (apt-get install nodejs)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    // Missing tools fail the test instead of skipping it: a skipped browser test would pass
    // CI without ever opening the page.
    assert!(
        missing.is_empty(),
        "the browser test needs {}; `bash scripts/test.sh` installs them",
        missing.join(", ")
    );

    let prefix = clusterway::lab::netns::unique_prefix();
    let mut lab = LabProcess::start(&prefix, true);

    // The lab prints the status page URL and the snapshot path once it is up.
    let (mut url, mut snapshot) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(40);
    while (url.is_none() || snapshot.is_none()) && Instant::now() < deadline {
        let Ok(line) = lab.lines.recv_timeout(Duration::from_millis(200)) else {
            assert!(!lab.exited(), "the lab exited during start");
            continue;
        };
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("status page:") {
            url = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("snapshot:") {
            snapshot = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    let url = url.expect("the lab printed its status page URL");
    let snapshot = snapshot.expect("the lab printed its snapshot path");

    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(
        PathBuf::from("/run/netns").join(format!("{prefix}-cl")),
        stop.clone(),
    );

    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-output/browser");
    let result = Command::new("node")
        .arg(dir.join("run.mjs"))
        .args([url.as_str(), snapshot.as_str()])
        .arg(&out)
        .current_dir(&dir)
        .output()
        .expect("running node tests/browser/run.mjs");
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        result.status.success(),
        "the browser test failed (screenshots in {}):\n{stdout}{stderr}",
        out.display()
    );
    assert!(out.join("dashboard.png").exists());

    drop(lab);
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
}
