//! What a region can take, as every worker sees it: requests in flight per
//! endpoint against its bound, endpoints out of rotation (failed checks, passive
//! ejection), the region's short queue, and the slot a request holds until its
//! response ends. Endpoints are chosen by the power of two choices over in-flight.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::time::Instant;

use crate::config::{Capacity, EndpointSpec};

/// The clock endpoint ejections are measured on.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    Instant::now()
        .saturating_duration_since(epoch())
        .as_millis() as u64
        + 1
}

/// One endpoint's load and standing.
#[derive(Debug)]
pub struct EndpointLoad {
    /// The endpoint's `scheme://authority`, to tell a changed policy apart.
    pub key: Box<str>,
    in_flight: AtomicU32,
    limit: AtomicU32,
    /// Consecutive failed attempts (passive detection per endpoint), and the
    /// clients they came from.
    failures: AtomicU32,
    quorum: Quorum,
    /// Out of rotation until this many ms past the epoch (0: in rotation).
    ejected_until: AtomicU64,
    /// How many ejections in a row (the next one lasts longer).
    ejections: AtomicU32,
    /// The last active check passed.
    check_ok: AtomicBool,
    healthy: IntGauge,
    /// Response heads received and the microseconds they took from sending:
    /// the endpoint's own latency, queueing in the router left out.
    heads: AtomicU64,
    head_us: AtomicU64,
}

impl EndpointLoad {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// In rotation: its checks pass and it is not ejected.
    pub fn available(&self) -> bool {
        self.check_ok.load(Ordering::Relaxed) && !self.ejected()
    }

    pub fn ejected(&self) -> bool {
        self.ejected_at(&mut None)
    }

    /// Whether it is ejected, reading the clock (into `now`, once) only when
    /// it has been.
    fn ejected_at(&self, now: &mut Option<u64>) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && *now.get_or_insert_with(now_ms) < until
    }

    pub fn check_passed(&self) -> bool {
        self.check_ok.load(Ordering::Relaxed)
    }

    /// Response heads so far, and the seconds they took in all.
    pub fn head_totals(&self) -> (u64, f64) {
        (
            self.heads.load(Ordering::Relaxed),
            self.head_us.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }

    fn refresh_gauge(&self) {
        self.healthy.set(i64::from(self.available()));
    }
}

/// Adds one to `counter` unless that would reach past `max`.
fn increment_below(counter: &AtomicU32, max: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |c| {
            (c < max).then_some(c + 1)
        })
        .is_ok()
}

/// The clients (hashed; 0 is empty) whose requests failed after they were
/// sent in one run of failures, up to eight: passive detection counts a run
/// only when enough distinct clients had it, so one client cannot take a
/// region or an endpoint out with requests it crafts.
#[derive(Debug, Default)]
pub struct Quorum {
    clients: [AtomicU64; 8],
    distinct: AtomicU32,
}

impl Quorum {
    /// Notes `client`; the number of distinct clients so far.
    pub fn note(&self, client: u64) -> u32 {
        let client = client.max(1);
        for c in &self.clients {
            match c.compare_exchange(0, client, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return self.distinct.fetch_add(1, Ordering::AcqRel) + 1,
                Err(seen) if seen == client => break,
                Err(_) => {}
            }
        }
        self.distinct.load(Ordering::Acquire)
    }

    /// The run ended: forgets its clients (reads first, so a healthy run
    /// writes nothing).
    pub fn forget(&self) {
        if self.distinct.load(Ordering::Relaxed) != 0 {
            for c in &self.clients {
                c.store(0, Ordering::Relaxed);
            }
            self.distinct.store(0, Ordering::Relaxed);
        }
    }

    /// Whether a failure for `client` (`None`: nothing was sent, so no
    /// client could have caused it) makes the run's clients enough.
    pub fn reached(&self, client: Option<u64>, min_clients: u32) -> bool {
        match client {
            None => true,
            Some(c) => self.note(c) >= min_clients,
        }
    }
}

/// What passive detection of an endpoint needs from the policy.
#[derive(Debug, Clone, Copy)]
pub struct Passive {
    /// Failures in a row that take an endpoint out (0: off).
    pub threshold: u32,
    /// Distinct clients those failures must come from, after sending.
    pub min_clients: u32,
    pub ejection: Duration,
    pub max_ejection: Duration,
}

impl Passive {
    /// For a success, which reads none of it.
    pub const OFF: Passive = Passive {
        threshold: 0,
        min_clients: 1,
        ejection: Duration::ZERO,
        max_ejection: Duration::ZERO,
    };
}

/// How an endpoint did on one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempted {
    Ok,
    Failed,
}

/// A region's endpoints and queue, shared by every worker.
#[derive(Debug)]
pub struct RegionLoad {
    pub endpoints: Box<[EndpointLoad]>,
    queued: AtomicU32,
    max_queue: AtomicU32,
    queue_timeout_ms: AtomicU64,
    room: tokio::sync::Notify,
    in_flight: IntGauge,
    queue_depth: IntGauge,
    /// When a request to it was last reset after it was sent (ms past the
    /// epoch; 0: never).
    last_reset: AtomicU64,
}

/// How long a reset keeps the router copying replayable requests to a
/// region it could not otherwise replay them to.
const RESET_MEMORY_MS: u64 = 60_000;

/// Where the gauges of a region's load are resolved.
pub struct Gauges<'a> {
    pub in_flight: IntGauge,
    pub queue_depth: IntGauge,
    pub endpoint_healthy: &'a dyn Fn(&str) -> IntGauge,
}

impl RegionLoad {
    pub fn new(endpoints: &[EndpointSpec], capacity: &Capacity, gauges: Gauges<'_>) -> Self {
        let load = Self {
            endpoints: endpoints
                .iter()
                .map(|e| {
                    let key: Box<str> = format!("{}://{}", e.scheme, e.authority).into();
                    let healthy = (gauges.endpoint_healthy)(&key);
                    healthy.set(1);
                    EndpointLoad {
                        healthy,
                        key,
                        in_flight: AtomicU32::new(0),
                        limit: AtomicU32::new(e.max_in_flight.max(1)),
                        failures: AtomicU32::new(0),
                        quorum: Quorum::default(),
                        ejected_until: AtomicU64::new(0),
                        ejections: AtomicU32::new(0),
                        check_ok: AtomicBool::new(true),
                        heads: AtomicU64::new(0),
                        head_us: AtomicU64::new(0),
                    }
                })
                .collect(),
            queued: AtomicU32::new(0),
            max_queue: AtomicU32::new(0),
            queue_timeout_ms: AtomicU64::new(0),
            room: tokio::sync::Notify::new(),
            in_flight: gauges.in_flight,
            queue_depth: gauges.queue_depth,
            last_reset: AtomicU64::new(0),
        };
        load.set_capacity(endpoints, capacity);
        load
    }

    /// Whether this load tracks exactly `endpoints` (same order and addresses).
    pub fn tracks(&self, endpoints: &[EndpointSpec]) -> bool {
        self.endpoints.len() == endpoints.len()
            && self
                .endpoints
                .iter()
                .zip(endpoints)
                .all(|(l, e)| *l.key == *format!("{}://{}", e.scheme, e.authority))
    }

    /// A reload's bounds, for the same endpoints.
    pub fn set_capacity(&self, endpoints: &[EndpointSpec], capacity: &Capacity) {
        for (l, e) in self.endpoints.iter().zip(endpoints) {
            l.limit.store(e.max_in_flight.max(1), Ordering::Relaxed);
        }
        self.max_queue.store(capacity.max_queue, Ordering::Relaxed);
        self.queue_timeout_ms
            .store(capacity.queue_timeout.as_millis() as u64, Ordering::Relaxed);
        self.room.notify_waiters();
    }

    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms.load(Ordering::Relaxed))
    }

    /// Requests in flight to every endpoint.
    pub fn in_flight(&self) -> u32 {
        self.endpoints.iter().map(EndpointLoad::in_flight).sum()
    }

    /// Requests in flight at most, over every endpoint.
    pub fn limit(&self) -> u32 {
        self.endpoints.iter().map(EndpointLoad::limit).sum()
    }

    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Relaxed)
    }

    /// A slot on an endpoint with room, not in `tried` (a bit per endpoint),
    /// chosen by the power of two choices over requests in flight; endpoints
    /// out of rotation only when none is in it. `None`: the region is full
    /// (or every endpoint was tried).
    pub fn acquire(self: &Arc<Self>, tried: u64) -> Option<InFlight> {
        if self.endpoints.len() == 1 {
            // A lone endpoint: its own health is the region's.
            return if tried & 1 == 0 { self.take(0) } else { None };
        }
        // The clock is read only when some endpoint has been ejected.
        let mut now = None;
        let mut in_rotation =
            |e: &EndpointLoad| e.check_ok.load(Ordering::Relaxed) && !e.ejected_at(&mut now);
        // Two rounds in case another worker took the last room meanwhile.
        for _ in 0..2 {
            if let Some(slot) = self.pick(tried, &mut in_rotation) {
                return Some(slot);
            }
        }
        if self.open(tried).any(|(_, e)| in_rotation(e)) {
            return None;
        }
        // Nothing in rotation: the region's own health decides whether it
        // serves, so try what there is.
        self.pick(tried, &mut |_| true)
    }

    /// The endpoints not in `tried` (at most 64, the bits of `tried`).
    fn open(&self, tried: u64) -> impl Iterator<Item = (usize, &EndpointLoad)> {
        self.endpoints
            .iter()
            .enumerate()
            .take(64)
            .filter(move |(i, _)| tried & (1 << i) == 0)
    }

    /// The less loaded of two endpoints drawn at random among those that are
    /// open, `eligible` and have room.
    fn pick(
        self: &Arc<Self>,
        tried: u64,
        eligible: &mut impl FnMut(&EndpointLoad) -> bool,
    ) -> Option<InFlight> {
        let mut fit = [0u8; 64];
        let mut count = 0;
        for (i, e) in self.open(tried) {
            if e.in_flight() < e.limit() && eligible(e) {
                fit[count] = i as u8;
                count += 1;
            }
        }
        let best = match count {
            0 => return None,
            1 => usize::from(fit[0]),
            _ => {
                let a = fastrand::usize(..count);
                // A second draw among the others.
                let b = (a + 1 + fastrand::usize(..count - 1)) % count;
                let (a, b) = (usize::from(fit[a]), usize::from(fit[b]));
                if self.endpoints[b].in_flight() < self.endpoints[a].in_flight() {
                    b
                } else {
                    a
                }
            }
        };
        self.take(best)
    }

    fn take(self: &Arc<Self>, i: usize) -> Option<InFlight> {
        let e = &self.endpoints[i];
        if !increment_below(&e.in_flight, e.limit()) {
            return None;
        }
        self.in_flight.inc();
        Some(InFlight {
            region: self.clone(),
            endpoint: i,
        })
    }

    /// Joins the queue; `None` when it is full.
    pub fn enqueue(self: &Arc<Self>) -> Option<Queued> {
        if !increment_below(&self.queued, self.max_queue.load(Ordering::Relaxed)) {
            return None;
        }
        self.queue_depth.inc();
        Some(Queued(self.clone()))
    }

    /// Resolves when a slot of this region is given back (or its bounds change).
    pub fn room(&self) -> tokio::sync::futures::Notified<'_> {
        self.room.notified()
    }

    /// Passes a wake-up on: a woken waiter that took no slot here.
    pub fn pass_on(&self) {
        self.room.notify_one();
    }

    /// A request to it was reset after it was sent.
    pub fn reset_seen(&self) {
        self.last_reset.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether a request to it was reset in the last minute (the clock is
    /// read only when one ever was).
    pub fn resetting(&self) -> bool {
        let at = self.last_reset.load(Ordering::Relaxed);
        at != 0 && now_ms().saturating_sub(at) < RESET_MEMORY_MS
    }

    /// Endpoint `i` sent a response head `elapsed` after the request was sent.
    pub fn answered(&self, i: usize, elapsed: Duration) {
        if let Some(e) = self.endpoints.get(i) {
            e.heads.fetch_add(1, Ordering::Relaxed);
            e.head_us
                .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// The region's response heads so far and the seconds they took, over
    /// every endpoint.
    pub fn head_totals(&self) -> (u64, f64) {
        self.endpoints
            .iter()
            .map(EndpointLoad::head_totals)
            .fold((0, 0.0), |(n, s), (m, t)| (n + m, s + t))
    }

    /// An attempt on endpoint `i` ended. A run of `threshold` failures (0: off),
    /// those after sending from `min_clients` distinct clients, takes it out
    /// of rotation for `ejection`, doubling with each ejection in a row up to
    /// `max_ejection`, while another endpoint is in rotation. `client` is the
    /// failed request's (hashed), `None` when nothing was sent. Returns true
    /// when this attempt ejected it.
    pub fn record(&self, i: usize, outcome: Attempted, client: Option<u64>, p: &Passive) -> bool {
        let Some(e) = self.endpoints.get(i) else {
            return false;
        };
        match outcome {
            Attempted::Ok => {
                if e.failures.load(Ordering::Relaxed) != 0 {
                    e.failures.store(0, Ordering::Relaxed);
                }
                e.quorum.forget();
                if e.ejected_until.load(Ordering::Relaxed) != 0 && !e.ejected() {
                    e.ejected_until.store(0, Ordering::Relaxed);
                    e.ejections.store(0, Ordering::Relaxed);
                    e.refresh_gauge();
                }
                false
            }
            Attempted::Failed => {
                if p.threshold == 0 || self.endpoints.len() < 2 {
                    return false;
                }
                let run = e.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if !e.quorum.reached(client, p.min_clients) || run < p.threshold {
                    return false;
                }
                self.eject(i, p)
            }
        }
    }

    /// Takes endpoint `i` out of rotation for `ejection`, doubling with each
    /// ejection in a row up to `max_ejection`, while another endpoint is in
    /// rotation. Returns true when it did.
    pub fn eject(&self, i: usize, p: &Passive) -> bool {
        let Some(e) = self.endpoints.get(i) else {
            return false;
        };
        let others = self
            .endpoints
            .iter()
            .enumerate()
            .any(|(j, o)| j != i && o.available());
        if !others || e.ejected() {
            return false;
        }
        let k = e.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let span = p
            .ejection
            .saturating_mul(1 << k)
            .min(p.max_ejection.max(p.ejection));
        e.ejected_until
            .store(now_ms() + span.as_millis() as u64, Ordering::Relaxed);
        e.failures.store(0, Ordering::Relaxed);
        e.quorum.forget();
        e.refresh_gauge();
        true
    }

    /// An active check of endpoint `i` passed or failed.
    pub fn checked(&self, i: usize, ok: bool) -> bool {
        let Some(e) = self.endpoints.get(i) else {
            return false;
        };
        let was = e.check_ok.swap(ok, Ordering::Relaxed);
        e.refresh_gauge();
        was != ok
    }

    /// Gauges brought up to date (an ejection may have ended by the clock).
    pub fn refresh(&self) {
        for e in self.endpoints.iter() {
            e.refresh_gauge();
        }
    }
}

/// Why a request was refused fast instead of sent: every candidate was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The first full candidate's queue had no place.
    QueueFull = 0,
    /// No room came within the queue timeout.
    QueueTimeout = 1,
}

impl ShedReason {
    pub const ALL: [ShedReason; 2] = [ShedReason::QueueFull, ShedReason::QueueTimeout];

    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "queue_full",
            ShedReason::QueueTimeout => "queue_timeout",
        }
    }
}

/// A request's place in a region's queue, left when dropped.
#[derive(Debug)]
pub struct Queued(Arc<RegionLoad>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
        self.0.queue_depth.dec();
    }
}

/// A request in flight to an endpoint; the slot is given back when dropped
/// (its response ended, or the attempt failed).
#[derive(Debug)]
pub struct InFlight {
    region: Arc<RegionLoad>,
    endpoint: usize,
}

impl InFlight {
    pub fn endpoint(&self) -> usize {
        self.endpoint
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let r = &self.region;
        r.endpoints[self.endpoint]
            .in_flight
            .fetch_sub(1, Ordering::AcqRel);
        r.in_flight.dec();
        if r.queued.load(Ordering::Acquire) > 0 {
            r.room.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(limits: &[u32]) -> Arc<RegionLoad> {
        let endpoints: Vec<EndpointSpec> = limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let a: http::uri::Authority = format!("127.0.0.1:{}", i + 1).parse().unwrap();
                EndpointSpec {
                    scheme: http::uri::Scheme::HTTP,
                    host: http::HeaderValue::from_str(a.as_str()).unwrap(),
                    authority: a,
                    protocol: crate::config::Protocol::Http1,
                    max_in_flight: *l,
                }
            })
            .collect();
        let cap = Capacity {
            max_in_flight: 1,
            max_queue: 2,
            queue_timeout: Duration::from_secs(1),
        };
        Arc::new(RegionLoad::new(
            &endpoints,
            &cap,
            Gauges {
                in_flight: IntGauge::new("f", "f").unwrap(),
                queue_depth: IntGauge::new("q", "q").unwrap(),
                endpoint_healthy: &|_| IntGauge::new("h", "h").unwrap(),
            },
        ))
    }

    #[test]
    fn slots_stop_at_each_endpoints_bound_and_come_back_when_dropped() {
        let r = load(&[2, 1]);
        let slots: Vec<_> = (0..3).map(|_| r.acquire(0).expect("room")).collect();
        assert!(r.acquire(0).is_none(), "full at 3");
        assert_eq!(r.in_flight(), 3);
        drop(slots);
        assert_eq!(r.in_flight(), 0);
        assert!(r.acquire(0).is_some());
    }

    #[test]
    fn the_less_loaded_of_two_endpoints_is_chosen() {
        let r = load(&[100, 100]);
        let _busy: Vec<_> = (0..10).map(|_| r.take(0).unwrap()).collect();
        for _ in 0..20 {
            assert_eq!(r.acquire(0).unwrap().endpoint(), 1);
        }
    }

    #[test]
    fn a_tried_endpoint_is_skipped() {
        let r = load(&[5, 5]);
        for _ in 0..10 {
            assert_eq!(r.acquire(0b01).unwrap().endpoint(), 1);
        }
        assert!(r.acquire(0b11).is_none());
    }

    fn passive(min_clients: u32) -> Passive {
        let d = Duration::from_secs(10);
        Passive {
            threshold: 3,
            min_clients,
            ejection: d,
            max_ejection: d,
        }
    }

    #[test]
    fn a_failing_endpoint_is_ejected_while_its_sibling_serves() {
        let r = load(&[5, 5]);
        let p = passive(1);
        assert!(!r.record(0, Attempted::Failed, None, &p));
        assert!(!r.record(0, Attempted::Failed, None, &p));
        // The sibling's success does not end endpoint 0's run.
        r.record(1, Attempted::Ok, None, &p);
        assert!(r.record(0, Attempted::Failed, None, &p));
        assert!(!r.endpoints[0].available());
        for _ in 0..10 {
            assert_eq!(r.acquire(0).unwrap().endpoint(), 1);
        }
        // The last endpoint in rotation is never ejected.
        for _ in 0..5 {
            assert!(!r.record(1, Attempted::Failed, None, &p));
        }
        assert!(r.endpoints[1].available());
    }

    #[test]
    fn one_client_cannot_eject_an_endpoint_with_failures_after_sending() {
        let r = load(&[5, 5]);
        let p = passive(3);
        for _ in 0..20 {
            assert!(!r.record(0, Attempted::Failed, Some(7), &p));
        }
        assert!(!r.record(0, Attempted::Failed, Some(8), &p));
        assert!(r.record(0, Attempted::Failed, Some(9), &p), "three clients");
    }

    #[test]
    fn the_queue_is_bounded() {
        let r = load(&[1]);
        let a = r.enqueue().unwrap();
        let _b = r.enqueue().unwrap();
        assert!(r.enqueue().is_none());
        drop(a);
        assert!(r.enqueue().is_some());
    }
}
