//! The retry budget, Linkerd's shape: over a sliding window (10 s by default),
//! retries of requests a region already received may reach `budget` times the
//! requests of the window plus a floor of `min_retries` per window, so a failing
//! region cannot multiply the load on the others, yet a quiet router can still
//! retry. One window per worker thread: no shared counter per request.

use std::cell::RefCell;

use tokio::time::Instant;

use crate::config::RetrySettings;

/// One second a slot, up to a minute.
const SLOTS: usize = 60;

struct Window {
    base: Instant,
    /// The second (since `base`) the newest slot holds.
    second: u64,
    /// When that second ends: a request before it needs no clock arithmetic.
    second_ends: Instant,
    requests: [u32; SLOTS],
    retries: [u32; SLOTS],
}

thread_local! {
    static WINDOW: RefCell<Option<Window>> = const { RefCell::new(None) };
}

fn seconds(s: &RetrySettings) -> u64 {
    s.window.as_secs().clamp(1, SLOTS as u64)
}

impl Window {
    fn new(now: Instant) -> Self {
        Window {
            base: now,
            second: 0,
            second_ends: now + std::time::Duration::from_secs(1),
            requests: [0; SLOTS],
            retries: [0; SLOTS],
        }
    }

    /// Moves the window to `now`, emptying the seconds it left behind.
    fn advance(&mut self, now: Instant, span: u64) -> usize {
        if now < self.second_ends {
            return (self.second % span) as usize;
        }
        let sec = now.saturating_duration_since(self.base).as_secs();
        self.second_ends = self.base + std::time::Duration::from_secs(sec + 1);
        if sec > self.second {
            for k in 1..=(sec - self.second).min(span) {
                let i = ((self.second + k) % span) as usize;
                self.requests[i] = 0;
                self.retries[i] = 0;
            }
            self.second = sec;
        }
        (self.second % span) as usize
    }
}

fn with<R>(now: Instant, f: impl FnOnce(&mut Window) -> R) -> R {
    WINDOW.with(|w| {
        let mut w = w.borrow_mut();
        f(w.get_or_insert_with(|| Window::new(now)))
    })
}

/// A request arrived at `now`: it adds to what the window may retry.
pub fn deposit(s: &RetrySettings, now: Instant) {
    let span = seconds(s);
    with(now, |w| {
        let i = w.advance(now, span);
        w.requests[i] = w.requests[i].saturating_add(1);
    });
}

/// Takes one retry from the budget, if the window has one left.
pub fn try_spend(s: &RetrySettings) -> bool {
    let now = Instant::now();
    let span = seconds(s);
    with(now, |w| {
        let i = w.advance(now, span);
        let n = span as usize;
        let requests: u64 = w.requests[..n].iter().map(|&r| u64::from(r)).sum();
        let retries: u64 = w.retries[..n].iter().map(|&r| u64::from(r)).sum();
        let allowed = f64::from(s.min_retries) + s.budget * requests as f64;
        if (retries + 1) as f64 <= allowed {
            w.retries[i] = w.retries[i].saturating_add(1);
            true
        } else {
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(budget: f64, min_retries: u32) -> RetrySettings {
        RetrySettings {
            budget,
            min_retries,
            window: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_the_floor_plus_a_fraction_of_the_windows_requests() {
        let s = settings(0.2, 3);
        let mut allowed = 0;
        for _ in 0..100 {
            deposit(&s, Instant::now());
            if try_spend(&s) {
                allowed += 1;
            }
        }
        // The floor of 3, then one retry per five requests.
        assert_eq!(allowed, 23, "{allowed} retries for 100 requests");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_budget_allows_only_the_floor_until_the_window_moves_on() {
        let s = settings(0.0, 2);
        let spend = || {
            (0..50)
                .filter(|_| {
                    deposit(&s, Instant::now());
                    try_spend(&s)
                })
                .count()
        };
        assert_eq!(spend(), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(spend(), 0, "still inside the window");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(spend(), 2, "the first retries left the window");
    }
}
