//! The retry budget: retries of requests a region already received are limited
//! to a fraction of requests, so a failing region cannot double the load on the
//! others. One token bucket per worker thread: no shared counter per request.

use std::cell::Cell;

use crate::config::RetrySettings;

thread_local! {
    /// Tokens; NaN until the thread's first request fills the bucket.
    static TOKENS: Cell<f32> = const { Cell::new(f32::NAN) };
}

fn cap(s: &RetrySettings) -> f32 {
    s.min_retries.max(1) as f32
}

/// A request arrived: it earns `budget` of a retry.
pub fn deposit(s: &RetrySettings) {
    TOKENS.with(|t| {
        let v = t.get();
        let v = if v.is_nan() {
            cap(s)
        } else {
            v + s.budget as f32
        };
        t.set(v.min(cap(s)));
    });
}

/// Takes one retry from the budget, if there is one.
pub fn try_spend(s: &RetrySettings) -> bool {
    TOKENS.with(|t| {
        let v = t.get();
        let v = if v.is_nan() { cap(s) } else { v };
        if v >= 1.0 {
            t.set(v - 1.0);
            true
        } else {
            t.set(v);
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_fraction_of_requests_after_the_burst() {
        // Each test runs on its own thread: a fresh bucket.
        let s = RetrySettings {
            budget: 0.2,
            min_retries: 3,
        };
        let mut allowed = 0;
        for _ in 0..100 {
            deposit(&s);
            if try_spend(&s) {
                allowed += 1;
            }
        }
        // The burst of 3, then one retry per five requests.
        assert!(
            (20..=23).contains(&allowed),
            "{allowed} retries for 100 requests"
        );
    }

    #[test]
    fn a_zero_budget_allows_only_the_burst() {
        let s = RetrySettings {
            budget: 0.0,
            min_retries: 2,
        };
        let allowed = (0..50)
            .filter(|_| {
                deposit(&s);
                try_spend(&s)
            })
            .count();
        assert_eq!(allowed, 2);
    }
}
