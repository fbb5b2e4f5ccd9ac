//! The per-try response deadline, as one timer per connection that its requests
//! reuse: moving a registered tokio timer later is an atomic store, while a new
//! timer per request costs a timer-wheel insert and a removal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;

use tokio::time::{Instant, Sleep};

/// A connection's spare timers. HTTP/1.1 requests take turns with one;
/// concurrent HTTP/2 streams take one each, and as many come back as were in
/// use at once (up to [`MAX_SPARES`]), so a busy connection makes none.
#[derive(Debug, Default)]
pub struct TimerSlot(Mutex<Spares>);

/// The first spare inline: an HTTP/1.1 connection never allocates the list.
#[derive(Debug, Default)]
struct Spares {
    first: Option<Pin<Box<Sleep>>>,
    more: Vec<Pin<Box<Sleep>>>,
}

/// Spare timers kept per connection (a timer is about 100 bytes).
pub const MAX_SPARES: usize = 32;

impl TimerSlot {
    /// Lends a spare timer, or none when other requests hold them all.
    pub fn lend(&self) -> Lent<'_> {
        let sleep = self
            .0
            .lock()
            .ok()
            .and_then(|mut s| s.first.take().or_else(|| s.more.pop()));
        Lent { slot: self, sleep }
    }

    #[cfg(test)]
    fn spares(&self) -> usize {
        let s = self.0.lock().unwrap();
        usize::from(s.first.is_some()) + s.more.len()
    }
}

/// A timer on loan from a [`TimerSlot`]; it goes back when dropped.
pub struct Lent<'a> {
    slot: &'a TimerSlot,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Lent<'_> {
    /// Runs `fut` until `deadline`: `None` if the deadline came first. `fut` is
    /// pinned by the caller, where it was made, so that it is not moved again.
    pub async fn within<F: Future>(
        &mut self,
        deadline: Instant,
        mut fut: Pin<&mut F>,
    ) -> Option<F::Output> {
        let sleep = match &mut self.sleep {
            Some(s) => {
                s.as_mut().reset(deadline);
                s
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            sleep.as_mut().poll(cx).map(|()| None)
        })
        .await
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            if let Ok(mut spares) = self.slot.0.lock() {
                if spares.first.is_none() {
                    spares.first = Some(sleep);
                } else if spares.more.len() + 1 < MAX_SPARES {
                    spares.more.push(sleep);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_holds_on_a_reused_timer() {
        let slot = TimerSlot::default();
        let far = Instant::now() + Duration::from_secs(60);
        assert_eq!(slot.lend().within(far, pin!(async { 1 })).await, Some(1));
        // The same timer, now with a deadline before the future can finish.
        let mut lent = slot.lend();
        assert!(lent.sleep.is_some(), "the timer came back to the slot");
        let soon = Instant::now() + Duration::from_secs(1);
        let never = std::future::pending::<()>();
        assert_eq!(lent.within(soon, pin!(never)).await, None);
        // The paused clock moved straight to the new deadline, not the old one.
        assert_eq!(Instant::now(), soon);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_on_a_fired_timer_waits_again() {
        let slot = TimerSlot::default();
        let mut lent = slot.lend();
        let t0 = Instant::now();
        let never = || std::future::pending::<()>();
        assert_eq!(
            lent.within(t0 + Duration::from_secs(1), pin!(never()))
                .await,
            None
        );
        let answer = pin!(async {
            tokio::time::sleep_until(t0 + Duration::from_secs(5)).await;
            "answered"
        });
        let done = lent.within(t0 + Duration::from_secs(10), answer);
        assert_eq!(done.await, Some("answered"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_borrower_gets_its_own_timer() {
        let slot = TimerSlot::default();
        let far = Instant::now() + Duration::from_secs(60);
        let mut first = slot.lend();
        first.within(far, pin!(async {})).await;
        let mut second = slot.lend();
        assert!(second.sleep.is_none(), "the first still holds the spare");
        second.within(far, pin!(async {})).await;
        drop(first);
        drop(second);
        assert_eq!(slot.spares(), 2, "both timers kept as spares");
        // Concurrent borrowers (HTTP/2 streams) now find a timer each.
        let (a, b, c) = (slot.lend(), slot.lend(), slot.lend());
        assert!(a.sleep.is_some() && b.sleep.is_some() && c.sleep.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn spares_are_capped() {
        let slot = TimerSlot::default();
        let far = Instant::now() + Duration::from_secs(60);
        let mut lent: Vec<Lent<'_>> = (0..MAX_SPARES + 8).map(|_| slot.lend()).collect();
        for l in &mut lent {
            l.within(far, pin!(async {})).await;
        }
        drop(lent);
        assert_eq!(slot.spares(), MAX_SPARES);
    }
}
