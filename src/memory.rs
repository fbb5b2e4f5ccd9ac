//! Giving memory back: the binary registers how its allocator returns freed
//! pages to the system, and each worker thread calls it every second, so that
//! resident memory falls back after a burst of connections closes (an idle
//! thread's allocator would otherwise keep its freed pages indefinitely).
//!
//! Measured against mimalloc's own option (`bench/idle.sh`, 8,000 idle
//! connections, RSS 30 s after they closed): this timer 48 MB; no timer
//! 192 MB; no timer with `MIMALLOC_PURGE_DELAY=0` 49 MB, but that purges on
//! the request path: 1,410 to 3,193 `madvise` calls in 8 s of load against 135
//! to 179 with the timer (strace -c, 200k requests by h2load). The timer stays.

use std::sync::OnceLock;
use std::time::Duration;

/// How often each worker thread gives freed pages back.
pub const PURGE_EVERY: Duration = Duration::from_secs(1);

static PURGE: OnceLock<fn()> = OnceLock::new();

/// Registers the allocator's purge for the calling thread's heap (the binary
/// does, once, at start). Later calls are ignored.
pub fn set_purge(purge: fn()) {
    let _ = PURGE.set(purge);
}

/// Gives the calling thread's freed pages back, if a purge is registered.
pub fn purge() {
    if let Some(purge) = PURGE.get() {
        purge();
    }
}

/// Purges on this thread every [`PURGE_EVERY`] until `shutdown`.
pub async fn purge_loop(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    if PURGE.get().is_none() {
        return;
    }
    let mut tick = tokio::time::interval(PURGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => purge(),
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        // Per thread: the purge is process-wide, and only this test's calls count.
        static CALLS: Cell<usize> = const { Cell::new(0) };
    }

    fn count() {
        CALLS.with(|c| c.set(c.get() + 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_purges_every_second_until_shutdown() {
        set_purge(count);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(purge_loop(shutdown));
        // The paused clock jumps: 3.5 s pass without waiting for them.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(CALLS.with(Cell::get), 4, "at 0, 1, 2 and 3 s");
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
