//! Giving memory back after many flows closed. Each open flow holds a few KiB of heap (its
//! sockets' task, buffers while bytes move, its entry on the status page); glibc keeps what
//! they freed in its arenas, so after 8,000 idle flows closed the gateway's RSS stayed at
//! 44 MiB instead of going back to 13 (bench/README.md). Once a second the watcher compares
//! the open flows with their peak since the last trim; when at least [`TRIM_AFTER_CLOSED`]
//! have closed, `malloc_trim(0)` returns the free pages (every arena, not only the top of
//! the heap) off the runtime's threads.
//!
//! Owns: nothing but its peak. Reads the flow gauges in `Stats`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::stats::Stats;

/// Flows that must have closed since the peak before memory is trimmed: a few MiB' worth.
pub const TRIM_AFTER_CLOSED: u64 = 1000;
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// When to trim: after the open flows fell [`TRIM_AFTER_CLOSED`] below their peak.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    peak: u64,
}

impl TrimPolicy {
    /// Open flows now; `true` when memory should be trimmed (the peak starts again here).
    pub fn observe(&mut self, open: u64) -> bool {
        self.peak = self.peak.max(open);
        if self.peak - open >= TRIM_AFTER_CLOSED {
            self.peak = open;
            return true;
        }
        false
    }
}

/// Run until aborted: trim after flows closed in numbers.
pub async fn trim_after_flows_close(stats: Arc<Stats>) {
    let mut policy = TrimPolicy::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let open =
            stats.tcp_active.load(Ordering::Relaxed) + stats.udp_active.load(Ordering::Relaxed);
        if policy.observe(open) {
            let trimmed = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(
                open,
                trimmed,
                "flows closed; free memory returned to the system"
            );
        }
    }
}

/// Return free heap pages to the system; `true` if any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim only releases memory the allocator holds free; it takes the
    // arenas' locks itself and is safe to call from any thread.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries (musl) return freed memory by themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_enough_flows_closed_since_the_peak() {
        let mut p = TrimPolicy::default();
        // Growing, and small dips: nothing to give back.
        for open in [0, 500, 3000, 8000, 7500, 7999] {
            assert!(!p.observe(open), "{open}");
        }
        // 8,000 → 6,000: 2,000 closed since the peak.
        assert!(p.observe(6000));
        // The peak starts again from 6,000: 5,500 is not enough, 5,000 is.
        assert!(!p.observe(5500));
        assert!(p.observe(5000));
        // A quiet gateway never trims.
        assert!(!p.observe(5000));
    }

    #[test]
    fn a_trim_runs_and_reports() {
        // Allocate 8 MiB in small chunks (as flows do), keep one allocation after them so
        // free() cannot give them back itself by shrinking the heap's top, free them: on
        // glibc they stay in the arena until the trim returns them.
        let chunks: Vec<Vec<u8>> = (0..2000).map(|i| vec![i as u8; 4096]).collect();
        let fence = vec![1u8; 64];
        drop(chunks);
        let returned = trim();
        drop(fence);
        assert_eq!(returned, cfg!(all(target_os = "linux", target_env = "gnu")));
    }
}
