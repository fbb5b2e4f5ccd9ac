//! What a client connection is doing, for its idle and header deadlines: requests
//! started and in flight, response bodies still streaming. A leaf both the accept
//! loop and the upstream pool use. Counters only: a request costs no clock read.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Activity of one connection, for the idle deadline: requests started and in
/// flight. Counters only, so a request costs no clock read.
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicU64,
    in_flight: AtomicU32,
    /// The connection speaks HTTP/2: its idle limit is `idle_timeout` only.
    http2: AtomicBool,
}

impl Activity {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks a request as started; the guard marks it finished when dropped.
    pub fn begin(&self) -> ActiveRequest<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let index = self.started.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self, index)
    }

    /// Whether the connection carries HTTP/2.
    pub fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// Notes that the connection carries HTTP/2.
    pub fn saw_http2(&self) {
        if !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Relaxed);
        }
    }

    /// Requests started so far, or `None` while one is in flight.
    pub fn quiet_mark(&self) -> Option<u64> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.started.load(Ordering::Relaxed))
    }
}

/// A watchdog's count of its checks in a row that found a connection quiet:
/// nothing started since the last check and nothing in flight.
#[derive(Debug)]
pub struct Quiet {
    last_mark: Option<u64>,
    checks: u32,
}

impl Quiet {
    /// Counting from the connection's state now.
    pub fn new(activity: &Activity) -> Self {
        Self {
            last_mark: activity.quiet_mark(),
            checks: 0,
        }
    }

    /// One check: how many checks in a row, this one included, found the
    /// connection quiet since the one before.
    pub fn check(&mut self, activity: &Activity) -> u32 {
        let mark = activity.quiet_mark();
        self.checks = if mark.is_some() && mark == self.last_mark {
            self.checks + 1
        } else {
            0
        };
        self.last_mark = mark;
        self.checks
    }
}

pub struct ActiveRequest<'a>(&'a Activity, u64);

impl ActiveRequest<'_> {
    /// The request's place on its connection: 0 for the first.
    pub fn index(&self) -> u64 {
        self.1
    }
}

impl Drop for ActiveRequest<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request still streaming its response body: counted in flight until the body
/// is done, so a slow download is not taken for a silent connection.
#[derive(Debug)]
pub struct Streaming(Arc<Activity>);

impl Streaming {
    pub fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Streaming(activity)
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
