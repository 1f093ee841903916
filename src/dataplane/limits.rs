//! Budgets for what a packet can make the gateway do beyond forwarding it: build an error
//! (RST, ICMP unreachable) or write a warning to the log. Both are one for the process,
//! shared by every worker, so adding workers does not multiply what a flood can draw out.
//!
//! Owns: its token buckets. Pure apart from a mutex: time comes in as `now`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::shared::lock;

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        if now > self.last {
            self.last = now;
        }
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The errors (ICMP unreachable, RST) the gateway may build, per second and in a burst,
/// over all workers. Taken once per error built, never per forwarded packet.
#[derive(Debug)]
pub struct ErrorBudget {
    bucket: Mutex<Bucket>,
}

impl ErrorBudget {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        ErrorBudget {
            bucket: Mutex::new(Bucket {
                rate: f64::from(rate),
                burst: f64::from(burst),
                tokens: f64::from(burst),
                last: now,
            }),
        }
    }

    /// Whether one more error may be sent now.
    pub fn take(&self, now: Instant) -> bool {
        lock(&self.bucket).take(now)
    }
}

/// At most one log line per `every` for a warning that packets can trigger (a socket that
/// cannot be opened, an accept that fails); the lines left out are counted and the next
/// line kept says how many.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    /// Milliseconds since `epoch` of the last line kept, plus one (0: none yet).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
    epoch: Instant,
}

impl LogLimit {
    pub fn new(every: Duration) -> Self {
        LogLimit {
            every,
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// `Some(n)` when a line may be written now (`n` lines were left out since the last
    /// one), `None` when this one is to be left out.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= self.every.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_error_budget_is_one_for_all_threads() {
        let t0 = Instant::now();
        let budget = Arc::new(ErrorBudget::new(10, 100, t0));
        // Four threads ask 100 times each at the same instant: 100 in all, not 400.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = budget.clone();
                std::thread::spawn(move || (0..100).filter(|_| b.take(t0)).count())
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(granted, 100);
        // It refills at its rate: 10 per second.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..100).filter(|_| budget.take(t1)).count(), 5);
        // A clock read late on another thread does not take time back.
        assert!(!budget.take(t0));
    }

    #[test]
    fn log_lines_are_limited_and_count_what_was_left_out() {
        let l = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        for i in 0..99 {
            assert_eq!(l.allow(t0 + Duration::from_millis(i * 50)), None);
        }
        assert_eq!(l.allow(t0 + Duration::from_secs(11)), Some(99));
        assert_eq!(l.allow(t0 + Duration::from_secs(12)), None);
    }
}
