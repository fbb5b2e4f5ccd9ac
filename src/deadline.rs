//! The per-try response deadline, as one timer per connection that its requests
//! reuse: moving a registered tokio timer later is an atomic store, while a new
//! timer per request costs a timer-wheel insert and a removal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;

use tokio::time::{Instant, Sleep};

/// A connection's spare timer. HTTP/1.1 requests take turns with it; concurrent
/// HTTP/2 streams that find it taken make their own.
#[derive(Debug, Default)]
pub struct TimerSlot(Mutex<Option<Pin<Box<Sleep>>>>);

impl TimerSlot {
    /// Lends the spare timer, or none when another request holds it.
    pub fn lend(&self) -> Lent<'_> {
        let sleep = self.0.lock().ok().and_then(|mut s| s.take());
        Lent { slot: self, sleep }
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
            if let Ok(mut spare) = self.slot.0.lock() {
                spare.get_or_insert(sleep);
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
        assert!(
            slot.0.lock().unwrap().is_some(),
            "one timer kept as the spare"
        );
    }
}
