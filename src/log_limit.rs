//! Log lines that traffic can cause, at most one a second per kind, each saying
//! how many were held back: no client and no storm fills the disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::blame::LocalFault;

/// One kind of line's allowance: one a second.
#[derive(Debug, Default)]
pub struct Limiter {
    /// The second (since the process's first limited line) of the last line, +1.
    last: AtomicU64,
    suppressed: AtomicU64,
}

fn now_secs() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs() + 1
}

impl Limiter {
    pub const fn new() -> Self {
        Limiter {
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were held
    /// back since the last one; `None` when this one is to be held back.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(now_secs())
    }

    fn allow_at(&self, second: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        if last != second
            && self
                .last
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The router ran out of its own resources on a request's way to a region.
pub fn warn_local(fault: LocalFault, error: &dyn std::error::Error) {
    static LIMIT: [Limiter; LocalFault::COUNT] = [const { Limiter::new() }; LocalFault::COUNT];
    if let Some(suppressed) = LIMIT[fault as usize].allow() {
        tracing::warn!(
            kind = fault.as_str(),
            %error,
            suppressed,
            "the router is out of its own resources; no region is blamed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_and_the_count_of_the_rest() {
        let l = Limiter::new();
        assert_eq!(l.allow_at(1), Some(0));
        for _ in 0..999 {
            assert_eq!(l.allow_at(1), None);
        }
        assert_eq!(l.allow_at(2), Some(999));
        assert_eq!(l.allow_at(2), None);
        assert_eq!(l.allow_at(3), Some(1));
    }
}
