//! What `GET /regions` (and the drain calls' answers) and `GET /status` (the
//! status page's data) show: the control plane's reports as JSON-friendly views.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::time::Instant;

use crate::control::{Control, Event, RegionReport};

/// `GET /regions`: every region of the policy in service.
pub fn regions(control: &Control) -> Vec<RegionView> {
    let now = Instant::now();
    let wall = SystemTime::now();
    control
        .region_reports()
        .into_iter()
        .map(|r| RegionView::new(r, now, wall))
        .collect()
}

impl RegionView {
    fn new(r: RegionReport, now: Instant, wall: SystemTime) -> Self {
        let (drain_reason, drained_by, drain_scope) = match r.drain {
            Some(d) => (Some(d.reason), Some(d.by), Some(d.scope.as_str())),
            None => (None, None, None),
        };
        RegionView {
            name: r.name.to_string(),
            jurisdiction: r.jurisdiction,
            phase: r.phase.name(),
            healthy: r.state.healthy,
            drained: r.state.drained,
            drain_reason,
            drained_by,
            drain_scope,
            drain_refused: r.drain_refused,
            serving: r.state.serving(),
            weight: f64::from(r.state.weight) / 1000.0,
            rtt_ms: r.rtt.map(millis),
            real_latency_ms: r.real_latency.map(millis),
            steering_latency_ms: r.steering_latency.map(millis),
            slow: r.slow,
            health_checks: r.health_checks,
            requests: r.served,
            upstream_errors: r.errors,
            last_transition: r.last_transition.map(|(at, t)| {
                let ago = now.saturating_duration_since(at);
                TransitionView {
                    at: (wall - ago)
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    seconds_ago: ago.as_secs(),
                    from: t.from.name(),
                    to: t.to.name(),
                    cause: t.cause,
                }
            }),
            endpoints: r.endpoints,
            load: r.load,
            capacity_scale: r.capacity_scale,
            scaled_by: r.scaled_by,
            scale_scope: r.scale_scope,
        }
    }
}

/// Milliseconds, two decimals.
fn millis(v: Duration) -> f64 {
    (v.as_secs_f64() * 1e5).round() / 100.0
}

#[derive(Debug, Serialize)]
pub struct RegionView {
    pub name: String,
    pub jurisdiction: Option<String>,
    /// up, down, ejected or held_down.
    pub phase: &'static str,
    pub healthy: bool,
    pub drained: bool,
    pub drain_reason: Option<String>,
    pub drained_by: Option<String>,
    /// Where the drain holds: local (this router), fleet, or pending (held
    /// here while etcd is unreachable).
    pub drain_scope: Option<&'static str>,
    /// The jurisdiction a drain of the fleet would have left with no undrained
    /// region: not applied here (the fleet guard where drains apply).
    pub drain_refused: Option<String>,
    pub serving: bool,
    pub weight: f64,
    /// Moving average of the health checks' round trips.
    pub rtt_ms: Option<f64>,
    /// Moving average of real requests, from sending to the response head
    /// (queueing in the router left out); none until enough were seen.
    pub real_latency_ms: Option<f64>,
    /// What latency steering sees: the checks' RTT blended with real
    /// requests' latency (`health.latency.real_weight`).
    pub steering_latency_ms: Option<f64>,
    /// Far slower than its peers on real requests (`health.passive.slow_factor`).
    pub slow: bool,
    pub health_checks: bool,
    /// Responses served since the region entered the policy.
    pub requests: u64,
    /// Failed attempts (connect, timeout, reset, 5xx) since then.
    pub upstream_errors: u64,
    pub last_transition: Option<TransitionView>,
    pub endpoints: Vec<String>,
    /// Requests in flight against the region's bound, the queue, and each
    /// endpoint's standing.
    pub load: crate::control::LoadReport,
    /// A partial drain: the share of its clients the region keeps (1: all).
    pub capacity_scale: f64,
    pub scaled_by: Option<String>,
    /// Where the partial drain holds: local (this router), fleet, or pending
    /// (held here while etcd is unreachable).
    pub scale_scope: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct TransitionView {
    /// Unix time, seconds.
    pub at: u64,
    pub seconds_ago: u64,
    pub from: &'static str,
    pub to: &'static str,
    pub cause: String,
}

/// `GET /status`: everything the status page shows, in one read.
pub fn status(control: &Control) -> StatusView {
    let regions = regions(control);
    let table = control.state().routing.load().table.clone();
    let jurisdictions = table
        .jurisdictions()
        .iter()
        .map(|j| {
            let names: Vec<String> = j
                .regions
                .iter()
                .map(|id| table.region(*id).name.to_string())
                .collect();
            let serving = regions
                .iter()
                .filter(|r| r.serving && names.contains(&r.name))
                .count();
            JurisdictionView {
                name: j.name.to_string(),
                strict: j.strict,
                serving,
                regions: names,
            }
        })
        .collect();
    let metrics = &control.state().metrics;
    StatusView {
        shed: total(&metrics.shed),
        spilled_over: total(&metrics.spillover),
        version: env!("CARGO_PKG_VERSION"),
        commit: crate::metrics::COMMIT,
        generation: control.generation(),
        ready: control.ready(),
        writes_enabled: control.auth().writes_enabled(),
        fleet: control.fleet().map(|f| FleetView {
            instance: f.instance().to_string(),
            connected: f.connected(),
            applied_revision: f.applied(),
        }),
        regions,
        jurisdictions,
        events: control.events(),
    }
}

#[derive(Debug, Serialize)]
pub struct StatusView {
    pub version: &'static str,
    pub commit: &'static str,
    /// The policy's generation in service.
    pub generation: u64,
    pub ready: bool,
    /// Drain and undrain are possible (a mutating token is set).
    pub writes_enabled: bool,
    pub fleet: Option<FleetView>,
    pub regions: Vec<RegionView>,
    pub jurisdictions: Vec<JurisdictionView>,
    /// Recent health transitions, drains and reloads, newest first.
    pub events: Vec<Event>,
    /// Requests refused fast because every candidate was at capacity, and
    /// requests served by a later candidate because an earlier one was full,
    /// since start.
    pub shed: u64,
    pub spilled_over: u64,
}

/// The sum of every series of a counter family.
fn total(vec: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    vec.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[derive(Debug, Serialize)]
pub struct JurisdictionView {
    pub name: String,
    /// Residents fail closed (503) rather than leave it.
    pub strict: bool,
    pub regions: Vec<String>,
    /// How many of its regions serve now.
    pub serving: usize,
}

#[derive(Debug, Serialize)]
pub struct FleetView {
    pub instance: String,
    pub connected: bool,
    pub applied_revision: i64,
}
