//! Waiting for an event by polling its condition, with a time limit: no sleep stands in for an event.

use super::*;

/// Polls `cond` every few milliseconds until it holds, for at most 10 s.
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(Duration::from_secs(10), what, cond).await
}

/// Polls an async condition until it holds, for at most 10 s.
pub async fn eventually_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`eventually`] with its own time limit.
pub async fn eventually_within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
