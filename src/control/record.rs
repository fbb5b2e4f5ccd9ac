//! One region as the control plane tracks it: its state machine, check, counters,
//! probe and real-request latency, partial drain, and what was last published.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{HealthCheck, HealthSettings};
use crate::control::health::machine::Machine;
use crate::routing::accounting::RegionAccount;

/// One region as the control plane tracks it.
#[derive(Debug)]
pub(super) struct Record {
    pub(super) machine: Machine,
    pub(super) check: HealthCheck,
    pub(super) account: Arc<RegionAccount>,
    /// Moving average of check round trips, in seconds.
    pub(super) rtt: Option<f64>,
    /// What latency steering sees: moves only past the hysteresis margin.
    pub(super) published_rtt: Option<Duration>,
    /// The weight in the snapshot in service: a ramp's last step must be published too.
    pub(super) published_weight: u16,
    /// Whether the snapshot in service has it serving.
    pub(super) published_serving: bool,
    pub(super) checked: bool,
    /// A partial drain: the share of its clients the region keeps, 0..=1000
    /// (`POST /regions/{name}/capacity?scale=`), and who set it.
    pub(super) capacity_scale: u16,
    pub(super) scale: Option<crate::drains::Scale>,
    /// Real request latency (send to response head), the region's and each
    /// endpoint's, and whether the region is now far slower than its peers.
    pub(super) real: Real,
    pub(super) endpoints_real: Vec<Real>,
    pub(super) slow: bool,
}

/// Real request latency of a region or an endpoint, read from its totals of
/// response heads at each tick (nothing on the request path but two counters).
#[derive(Debug, Default, Clone)]
pub(crate) struct Real {
    /// The totals last read.
    seen: (u64, f64),
    /// Moving average, in seconds.
    average: Option<f64>,
    /// Requests seen since it was last reset (entering service, an ejection).
    requests: u64,
    /// When the last of them was seen: an average nobody refreshes goes stale.
    at: Option<Instant>,
}

impl Real {
    /// Reads `totals` (heads, seconds) and folds what is new into the average.
    pub(super) fn read(&mut self, totals: (u64, f64), now: Instant) {
        let (n, sum) = totals;
        let (dn, ds) = (n.saturating_sub(self.seen.0), sum - self.seen.1);
        self.seen = totals;
        if dn > 0 {
            let sample = (ds / dn as f64).max(0.0);
            self.average = Some(
                self.average
                    .map_or(sample, |old| old + 0.3 * (sample - old)),
            );
            self.requests += dn;
            self.at = Some(now);
        }
    }

    /// Measured afresh from now on.
    pub(super) fn reset(&mut self) {
        self.average = None;
        self.requests = 0;
        self.at = None;
    }

    /// The average once `min_requests` were seen.
    pub(super) fn known(&self, min_requests: u32) -> Option<f64> {
        self.average
            .filter(|_| self.requests >= u64::from(min_requests.max(1)))
    }

    pub(crate) fn average(&self) -> Option<f64> {
        self.average
    }

    /// The average if it was refreshed within `fresh`.
    pub(super) fn recent(&self, now: Instant, fresh: Duration) -> Option<f64> {
        self.average.filter(|_| {
            self.at
                .is_some_and(|at| now.saturating_duration_since(at) < fresh)
        })
    }
}

/// How long real latency counts for latency steering without new requests.
const REAL_FRESH: Duration = Duration::from_secs(30);

impl Record {
    pub(super) fn new(check: HealthCheck, account: Arc<RegionAccount>) -> Self {
        Record {
            machine: Machine::new(),
            check,
            account,
            rtt: None,
            published_rtt: None,
            published_weight: 1000,
            published_serving: true,
            checked: false,
            capacity_scale: 1000,
            scale: None,
            real: Real::default(),
            endpoints_real: Vec::new(),
            slow: false,
        }
    }

    /// A partial drain kept from before (the state file), applied.
    pub(super) fn with_scale(mut self, scale: Option<crate::drains::Scale>) -> Self {
        if let Some(scale) = scale {
            self.capacity_scale = (scale.keep.clamp(0.0, 1.0) * 1000.0).round() as u16;
            self.scale = Some(scale);
        }
        self
    }

    /// The latency steering sees: the probes' moving average blended with
    /// real requests' (`real_weight` of it) while they are recent.
    pub(super) fn steering_latency(&self, now: Instant, real_weight: f64) -> Option<f64> {
        match (self.rtt, self.real.recent(now, REAL_FRESH)) {
            (Some(probe), Some(real)) => Some(probe + real_weight * (real - probe)),
            (Some(probe), None) => Some(probe),
            (None, real) => real.filter(|_| real_weight > 0.0),
        }
    }

    /// Publishes the steering latency when it moved past `hysteresis`.
    pub(super) fn republish_latency(&mut self, now: Instant, h: &HealthSettings) -> bool {
        let Some(avg) = self.steering_latency(now, h.real_weight) else {
            return false;
        };
        let avg = Duration::from_secs_f64(avg);
        let moved = self
            .published_rtt
            .is_none_or(|p| avg.abs_diff(p) > h.hysteresis);
        if moved {
            self.published_rtt = Some(avg);
        }
        moved
    }

    /// The share of its clients the region gets now: its slow-start ramp,
    /// capped by a partial drain.
    pub(super) fn weight(&self, now: Instant, slow_start: Duration) -> u16 {
        self.machine
            .weight(now, slow_start)
            .min(self.capacity_scale)
    }
}
