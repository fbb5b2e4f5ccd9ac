//! What the admin views read of the control plane: each region as it sees
//! it, as plain data (`RegionReport`), built under its owners' locks.

use std::time::Duration;

use tokio::time::Instant;

use super::health::machine::{Phase, Transition};
use super::{lock, record, Control};
use crate::config::RegionName;
use crate::drains::Drain;
use crate::routing::regions::RegionState;

impl Control {
    /// Every region of the table in service as the control plane sees it, for
    /// the admin views.
    pub fn region_reports(&self) -> Vec<RegionReport> {
        let config = self.config();
        // The snapshot in service is the one built from these records: a
        // reload swaps both under the publishing lock.
        let _publishing = lock(&self.publishing);
        let health = self.health();
        let (refused, drains): (Vec<(String, String)>, Vec<Option<Drain>>) =
            self.drains.read(|d| {
                let drains = health
                    .table
                    .regions()
                    .iter()
                    .map(|r| d.get(r.name.as_str()).cloned())
                    .collect();
                (d.refused(), drains)
            });
        let snapshot = self.state.routing.load();
        health
            .table
            .regions()
            .iter()
            .zip(drains)
            .map(|(r, drain)| {
                let rec = &health.regions[&r.name];
                RegionReport {
                    name: r.name.clone(),
                    jurisdiction: r.jurisdiction.clone(),
                    phase: rec.machine.phase(),
                    state: snapshot.states.get(&health.table, r.id),
                    drain,
                    drain_refused: refused
                        .iter()
                        .find(|(region, _)| *region == r.name.as_str())
                        .map(|(_, j)| j.clone()),
                    rtt: rec.rtt.map(Duration::from_secs_f64),
                    real_latency: rec
                        .real
                        .known(config.health.passive.slow_min_requests)
                        .map(Duration::from_secs_f64),
                    steering_latency: rec.published_rtt,
                    slow: rec.slow,
                    health_checks: rec.check.enabled,
                    served: rec.account.served(),
                    errors: rec.account.errors(),
                    last_transition: rec.machine.last_transition().cloned(),
                    endpoints: r
                        .endpoints
                        .iter()
                        .map(|e| format!("{}://{}", e.scheme, e.authority))
                        .collect(),
                    load: LoadReport::of(&rec.account.load, &rec.endpoints_real),
                    capacity_scale: f64::from(rec.capacity_scale) / 1000.0,
                    scaled_by: rec.scale.as_ref().map(|s| s.by.clone()),
                    scale_scope: rec.scale.as_ref().map(|s| s.scope.as_str()),
                }
            })
            .collect()
    }
}

/// One region as the control plane sees it: plain data, read under the lock.
#[derive(Debug, Clone)]
pub struct RegionReport {
    pub name: RegionName,
    pub jurisdiction: Option<String>,
    pub phase: Phase,
    /// As the snapshot in service has it.
    pub state: RegionState,
    pub drain: Option<Drain>,
    /// A drain of the fleet not applied here: it would leave this strict
    /// jurisdiction with no serving region (undrained and up here).
    pub drain_refused: Option<String>,
    /// Moving average of check round trips.
    pub rtt: Option<Duration>,
    /// Moving average of real requests' latency (send to response head).
    pub real_latency: Option<Duration>,
    /// What latency steering sees (the probes blended with real requests).
    pub steering_latency: Option<Duration>,
    /// Far slower than its peers on real requests.
    pub slow: bool,
    pub health_checks: bool,
    /// Responses served since the region entered the policy.
    pub served: u64,
    /// Failed attempts since then.
    pub errors: u64,
    pub last_transition: Option<(Instant, Transition)>,
    pub endpoints: Vec<String>,
    pub load: LoadReport,
    /// A partial drain: the share of its clients the region keeps (1: all).
    pub capacity_scale: f64,
    pub scaled_by: Option<String>,
    /// Where the partial drain holds: local, fleet or pending.
    pub scale_scope: Option<&'static str>,
}

/// A region's load against its capacity, and each endpoint's standing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub in_flight: u32,
    pub max_in_flight: u32,
    pub queued: u32,
    pub endpoints: Vec<EndpointReport>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointReport {
    pub url: String,
    /// In rotation: its checks pass and it is not ejected.
    pub healthy: bool,
    pub checks_pass: bool,
    pub ejected: bool,
    pub in_flight: u32,
    pub max_in_flight: u32,
    /// Moving average of its real requests' latency (send to response head).
    pub real_latency_ms: Option<f64>,
}

impl LoadReport {
    fn of(load: &crate::routing::capacity::RegionLoad, real: &[record::Real]) -> Self {
        load.refresh();
        LoadReport {
            in_flight: load.in_flight(),
            max_in_flight: load.limit(),
            queued: load.queued(),
            endpoints: load
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| EndpointReport {
                    url: e.key.to_string(),
                    healthy: e.available(),
                    checks_pass: e.check_passed(),
                    ejected: e.ejected(),
                    in_flight: e.in_flight(),
                    max_in_flight: e.limit(),
                    real_latency_ms: real
                        .get(i)
                        .and_then(|r| r.average())
                        .map(|s| (s * 1e5).round() / 100.0),
                })
                .collect(),
        }
    }
}
