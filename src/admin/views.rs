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
    let counts = Counts::of(&control.state().metrics);
    control
        .region_reports()
        .into_iter()
        .map(|r| RegionView::new(r, &counts, now, wall))
        .collect()
}

/// What the counters say, summed by region and jurisdiction, read once per view.
#[derive(Debug, Default)]
struct Counts {
    /// (from, to) -> failovers.
    failovers: Vec<(String, String, u64)>,
    /// (region, code) -> responses; region "none": answered by the router.
    responses: Vec<(String, String, u64)>,
    /// jurisdiction -> residents refused.
    refused: Vec<(String, u64)>,
}

impl Counts {
    fn of(m: &crate::metrics::Metrics) -> Counts {
        let pairs = |vec: &prometheus::IntCounterVec, a: &str, b: &str| {
            series(vec)
                .into_iter()
                .map(|(labels, v)| (label(&labels, a), label(&labels, b), v))
                .collect()
        };
        Counts {
            failovers: pairs(&m.failovers, "from", "to"),
            responses: pairs(&m.requests, "region", "code"),
            refused: series(&m.residency_refusals)
                .into_iter()
                .map(|(labels, v)| (label(&labels, "jurisdiction"), v))
                .collect(),
        }
    }

    fn failovers_in(&self, region: &str) -> u64 {
        self.failovers
            .iter()
            .filter(|(_, to, _)| to == region)
            .map(|f| f.2)
            .sum()
    }

    fn failovers_out(&self, region: &str) -> u64 {
        self.failovers
            .iter()
            .filter(|(from, _, _)| from == region)
            .map(|f| f.2)
            .sum()
    }

    /// Responses for `region` ("none": the router's own), all or only 5xx.
    fn responses(&self, region: &str, only_5xx: bool) -> u64 {
        self.responses
            .iter()
            .filter(|(r, code, _)| r == region && (!only_5xx || code.starts_with('5')))
            .map(|r| r.2)
            .sum()
    }

    fn refused(&self, jurisdiction: &str) -> u64 {
        self.refused
            .iter()
            .filter(|(j, _)| j == jurisdiction)
            .map(|r| r.1)
            .sum()
    }
}

/// Every series of a counter family: its labels and value.
fn series(vec: &prometheus::IntCounterVec) -> Vec<(Vec<(String, String)>, u64)> {
    use prometheus::core::Collector;
    vec.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_owned(), l.value().to_owned()))
                .collect();
            (labels, m.get_counter().get_value() as u64)
        })
        .collect()
}

fn label(labels: &[(String, String)], name: &str) -> String {
    labels
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

impl RegionView {
    fn new(r: RegionReport, counts: &Counts, now: Instant, wall: SystemTime) -> Self {
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
            // A region out of service by health has no current RTT to show.
            rtt_ms: r.rtt.filter(|_| r.state.healthy).map(millis),
            real_latency_ms: r.real_latency.map(millis),
            steering_latency_ms: r.steering_latency.map(millis),
            slow: r.slow,
            health_checks: r.health_checks,
            requests: r.served,
            upstream_errors: r.errors,
            failovers_in: counts.failovers_in(r.name.as_str()),
            failovers_out: counts.failovers_out(r.name.as_str()),
            responses_5xx: counts.responses(r.name.as_str(), true),
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
    /// Moving average of the health checks' round trips; none while the
    /// region is down by health.
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
    /// Requests it served that the policy first meant for another region.
    pub failovers_in: u64,
    /// Requests first meant for it that another region served.
    pub failovers_out: u64,
    /// 5xx responses sent for it (its own, or the router's when it failed).
    pub responses_5xx: u64,
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

/// `GET /status`: everything the status page shows, in one read (in a fleet,
/// with the members as etcd has them, waiting at most a second for it).
pub async fn status(control: &Control) -> StatusView {
    let regions = regions(control);
    let metrics = &control.state().metrics;
    let counts = Counts::of(metrics);
    let table = control.state().routing.load().table.clone();
    let jurisdictions: Vec<JurisdictionView> = table
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
                served: names
                    .iter()
                    .map(|n| counts.responses(n, false) - counts.responses(n, true))
                    .sum(),
                refused: counts.refused(&j.name),
                name: j.name.to_string(),
                strict: j.strict,
                serving,
                regions: names,
            }
        })
        .collect();
    let fleet = match control.fleet() {
        Some(f) => Some(fleet_view(f).await),
        None => None,
    };
    let ready = control.ready();
    StatusView {
        alerts: alerts(ready, &jurisdictions, fleet.as_ref()),
        shed: total(&metrics.shed),
        spilled_over: total(&metrics.spillover),
        failovers: total(&metrics.failovers),
        router_5xx: counts.responses("none", true),
        version: env!("CARGO_PKG_VERSION"),
        commit: crate::metrics::COMMIT,
        generation: control.generation(),
        ready,
        writes_enabled: control.auth().writes_enabled(),
        fleet,
        regions,
        jurisdictions,
        events: control.events(),
    }
}

async fn fleet_view(f: &crate::fleet::Fleet) -> FleetView {
    // Polled by every open page: one etcd read a second, however many poll.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        f.recent_status(std::time::Duration::from_secs(1)),
    )
    .await;
    let (members, error) = match read {
        Ok(Ok(status)) => (
            Some(
                status
                    .instances
                    .into_iter()
                    .map(|i| MemberView {
                        in_step: i.in_step,
                        applied_revision: i.applied_revision,
                        seconds_since_report: i.seconds_since_report,
                        history_changed: i.history_changed,
                        instance: i.instance,
                    })
                    .collect(),
            ),
            None,
        ),
        Ok(Err(e)) => (None, Some(e)),
        Err(_) => (None, Some("etcd did not answer within 1s".to_owned())),
    };
    FleetView {
        instance: f.instance().to_string(),
        connected: f.connected(),
        applied_revision: f.applied(),
        history_changed: f.history_changed(),
        members,
        error,
    }
}

/// What must be seen at once (the page's red banner): not ready, a strict
/// jurisdiction refusing its residents, the fleet's store out of reach.
fn alerts(
    ready: bool,
    jurisdictions: &[JurisdictionView],
    fleet: Option<&FleetView>,
) -> Vec<String> {
    let mut out = Vec::new();
    if !ready {
        out.push("Not ready: the first health checks are still pending.".to_owned());
    }
    for j in jurisdictions.iter().filter(|j| j.strict && j.serving == 0) {
        out.push(format!(
            "Jurisdiction {} has no serving region: its residents get 503 ({} refused so far).",
            j.name, j.refused
        ));
    }
    if let Some(f) = fleet {
        if f.history_changed {
            out.push("etcd's history changed under the fleet: drains and policy are held as last applied until `georouter fleet restore`.".to_owned());
        } else if !f.connected {
            out.push("The fleet's etcd is unreachable: this instance serves with the drains it last applied.".to_owned());
        }
    }
    out
}

#[derive(Debug, Serialize)]
pub struct StatusView {
    pub version: &'static str,
    pub commit: &'static str,
    /// The policy's generation in service.
    pub generation: u64,
    pub ready: bool,
    /// What must be seen at once, worst first (the page's red banner).
    pub alerts: Vec<String>,
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
    /// Requests served by another region than the policy's first choice.
    pub failovers: u64,
    /// 5xx responses the router answered itself (no region served them).
    pub router_5xx: u64,
}

/// The sum of every series of a counter family.
fn total(vec: &prometheus::IntCounterVec) -> u64 {
    series(vec).iter().map(|(_, v)| v).sum()
}

#[derive(Debug, Serialize)]
pub struct JurisdictionView {
    pub name: String,
    /// Residents fail closed (503) rather than leave it.
    pub strict: bool,
    pub regions: Vec<String>,
    /// How many of its regions serve now.
    pub serving: usize,
    /// Responses its regions sent, 5xx left out, since start.
    pub served: u64,
    /// Residents refused (503) because none of its regions could serve, since start.
    pub refused: u64,
}

#[derive(Debug, Serialize)]
pub struct FleetView {
    pub instance: String,
    pub connected: bool,
    pub applied_revision: i64,
    pub history_changed: bool,
    /// Every live member as etcd has it; none when etcd could not be read.
    pub members: Option<Vec<MemberView>>,
    /// Why the members could not be read.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub instance: String,
    /// It applied the fleet's latest drain change.
    pub in_step: bool,
    pub applied_revision: i64,
    pub seconds_since_report: f64,
    pub history_changed: bool,
}
