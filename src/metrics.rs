//! Metrics the router exports, in a registry it owns (no global state). Names
//! follow Prometheus conventions with the `georouter_` prefix; the data plane
//! increments handles resolved ahead of time (see `accounting.rs`).

use crate::blame::{ClientFault, FailureKind, LocalFault};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The commit this binary was built from (`git rev-parse`, when the build had
/// a repository), for `--version` and `georouter_build_info`.
pub const COMMIT: &str = env!("GEOROUTER_COMMIT");

pub const RESIDENCY_REFUSALS: &str = "georouter_residency_refusals_total";

/// Every metric family the router exports under its prefix (dashboards and alert
/// rules are checked against this list).
pub const NAMES: &[&str] = &[
    "georouter_requests_total",
    "georouter_request_duration_seconds",
    "georouter_region_healthy",
    "georouter_region_drained",
    "georouter_drain_refused",
    "georouter_region_weight",
    "georouter_region_rtt_seconds",
    "georouter_jurisdiction_serving_regions",
    "georouter_health_transitions_total",
    "georouter_failovers_total",
    "georouter_retries_total",
    "georouter_retry_budget_exhausted_total",
    RESIDENCY_REFUSALS,
    "georouter_config_reloads_total",
    "georouter_config_generation",
    "georouter_upstream_errors_total",
    "georouter_admin_requests_total",
    "georouter_client_errors_total",
    "georouter_local_errors_total",
    "georouter_geo_lookup_errors_total",
    "georouter_ejections_capped_total",
    "georouter_shed_total",
    "georouter_spillover_total",
    "georouter_region_in_flight",
    "georouter_region_queue_depth",
    "georouter_endpoint_healthy",
    "georouter_endpoint_ejections_total",
    "georouter_latency_outliers_total",
    "georouter_residency_cookie_conflicts_total",
    "georouter_protocol_requests_total",
    "georouter_build_info",
];

/// The client protocols `protocol_requests_total` counts, by ALPN name.
pub const PROTOCOLS: [&str; 3] = ["http/1.1", "h2", "h3"];

/// A request's place in [`PROTOCOLS`] (and `Metrics::protocol_requests`).
pub fn protocol_of(version: http::Version) -> usize {
    match version {
        http::Version::HTTP_2 => 1,
        http::Version::HTTP_3 => 2,
        _ => 0,
    }
}

/// The families a router in a fleet exports besides [`NAMES`] (`[fleet]`).
pub const FLEET_NAMES: &[&str] = &[
    "georouter_fleet_connected",
    "georouter_fleet_instances",
    "georouter_fleet_applied_revision",
    "georouter_fleet_lag_seconds",
    "georouter_fleet_leases_lost_total",
    "georouter_fleet_history_changed",
];

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Responses by the region that served them (`none` when the router answered itself).
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub failovers: IntCounterVec,
    pub retries: IntCounterVec,
    /// `retries_total{reason}`, resolved once per failure kind.
    pub retries_by_kind: [IntCounter; 4],
    pub retries_refused: IntCounter,
    /// Requests refused because no region inside their jurisdiction could serve.
    pub residency_refusals: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    /// `client_errors_total{kind}`: requests that failed through their client's
    /// fault (never a region's), one handle per kind, at 0 from the start.
    pub client_errors: [IntCounter; 3],
    /// `local_errors_total{kind}`: the router's own resources ran out (never a
    /// region's fault), one handle per kind.
    pub local_errors: [IntCounter; LocalFault::COUNT],
    /// Lookups the geo database failed to decode (not "not in the database").
    pub geo_lookup_errors: IntCounter,
    /// Requests refused fast because every candidate was full: never a region's fault.
    pub shed: IntCounterVec,
    /// Requests served by a later candidate because an earlier one was full.
    pub spillover: IntCounterVec,
    /// Requests whose valid residency cookies named different jurisdictions.
    pub cookie_conflicts: IntCounter,
    /// `protocol_requests_total{protocol}`: requests by the client's protocol,
    /// one handle per [`PROTOCOLS`] entry.
    pub protocol_requests: [IntCounter; 3],
    /// Each region's standing: health, drains, weight, load, endpoints.
    pub regions: RegionMetrics,
    /// The control plane's own doings: reloads, admin calls, capped ejections.
    pub control: ControlMetrics,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric options are valid");
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric options are valid");
    r.register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

fn float_gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("metric options are valid");
    r.register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

/// Each region's standing, as the control plane and the capacity gauges set it.
#[derive(Debug, Clone)]
pub struct RegionMetrics {
    pub healthy: IntGaugeVec,
    pub drained: IntGaugeVec,
    pub drain_refused: IntGaugeVec,
    /// Share of its traffic a region gets, 0..1 (below 1 while it ramps up).
    pub weight: GaugeVec,
    pub rtt: GaugeVec,
    /// Regions of a jurisdiction that can serve (healthy, undrained); 0 means its
    /// strict residents are refused.
    pub jurisdiction_serving: IntGaugeVec,
    pub health_transitions: IntCounterVec,
    pub in_flight: IntGaugeVec,
    pub queue_depth: IntGaugeVec,
    pub endpoint_healthy: IntGaugeVec,
    pub endpoint_ejections: IntCounterVec,
    /// Regions found far slower than their peers on real requests.
    pub latency_outliers: IntCounterVec,
}

impl RegionMetrics {
    fn register(r: &Registry) -> Self {
        RegionMetrics {
            healthy: gauge(
                r,
                "georouter_region_healthy",
                "1 when the region passes its health checks and is not ejected.",
                &["region"],
            ),
            drained: gauge(
                r,
                "georouter_region_drained",
                "1 when an operator drained the region.",
                &["region"],
            ),
            drain_refused: gauge(
                r,
                "georouter_drain_refused",
                "1 when a drain of the region is not applied here: it would leave a strict jurisdiction with no serving region, undrained and up here (a fleet intent or a direct write to etcd).",
                &["region"],
            ),
            weight: float_gauge(
                r,
                "georouter_region_weight",
                "Share of its traffic the region gets, 0 to 1; below 1 during slow start.",
                &["region"],
            ),
            rtt: float_gauge(
                r,
                "georouter_region_rtt_seconds",
                "Moving average of the health check round-trip time.",
                &["region"],
            ),
            jurisdiction_serving: gauge(
                r,
                "georouter_jurisdiction_serving_regions",
                "Regions of the jurisdiction that are healthy and not drained.",
                &["jurisdiction"],
            ),
            health_transitions: counter(
                r,
                "georouter_health_transitions_total",
                "Changes of a region's health phase (up, down, ejected, held_down).",
                &["region", "from", "to"],
            ),
            in_flight: gauge(
                r,
                "georouter_region_in_flight",
                "Requests in flight to the region's endpoints (bounded by max_in_flight per endpoint).",
                &["region"],
            ),
            queue_depth: gauge(
                r,
                "georouter_region_queue_depth",
                "Requests waiting for room in the region (bounded by max_queue).",
                &["region"],
            ),
            endpoint_healthy: gauge(
                r,
                "georouter_endpoint_healthy",
                "1 when the endpoint passes its checks and is not ejected.",
                &["region", "endpoint"],
            ),
            endpoint_ejections: counter(
                r,
                "georouter_endpoint_ejections_total",
                "Endpoints taken out of rotation by a run of failed requests while a sibling served.",
                &["region", "endpoint"],
            ),
            latency_outliers: counter(
                r,
                "georouter_latency_outliers_total",
                "Times a region's real request latency stayed over health.passive.slow_factor times its peers' median (it is ejected like a failing region, within the cap).",
                &["region"],
            ),
                }
    }
}
/// The control plane's own doings.
#[derive(Debug, Clone)]
pub struct ControlMetrics {
    pub config_reloads: IntCounterVec,
    pub config_generation: IntGauge,
    pub admin_requests: IntCounterVec,
    /// Passive ejections refused by the cap (`max_ejected_percent`, the last
    /// serving region of a jurisdiction): the router suspects itself or its network.
    pub ejections_capped: IntCounter,
}
impl ControlMetrics {
    fn register(r: &Registry) -> Self {
        let config_generation = IntGauge::new(
            "georouter_config_generation",
            "Generation of the routing table in service; it grows by one per successful load.",
        )
        .expect("metric options are valid");
        r.register(Box::new(config_generation.clone()))
            .expect("metric names are unique");
        let ejections_capped = int_counter(
            r,
            "georouter_ejections_capped_total",
            "Passive ejections refused by the cap (max_ejected_percent, last serving region of a jurisdiction).",
        );
        ControlMetrics {
            config_reloads: counter(
                r,
                "georouter_config_reloads_total",
                "Policy reloads, by result (success, failure).",
                &["result"],
            ),
            admin_requests: counter(
                r,
                "georouter_admin_requests_total",
                "Admin API calls, by action and result.",
                &["action", "result"],
            ),
            config_generation,
            ejections_capped,
        }
    }
}

fn request_duration(r: &Registry) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(
            "georouter_request_duration_seconds",
            "Time from request head to response head, by the region that served it.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ]),
        &["region"],
    )
    .expect("metric options are valid");
    r.register(Box::new(h.clone()))
        .expect("metric names are unique");
    h
}

/// The process's own metrics (Linux) and `georouter_build_info`.
fn register_process_and_build(r: &Registry) {
    #[cfg(target_os = "linux")]
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .expect("process metrics register once");
    let build_info = IntGaugeVec::new(
        Opts::new(
            "georouter_build_info",
            "1, labelled with the version and the commit of this build.",
        ),
        &["version", "commit"],
    )
    .expect("metric options are valid");
    r.register(Box::new(build_info.clone()))
        .expect("metric names are unique");
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), COMMIT])
        .set(1);
}

fn int_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric options are valid");
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        register_process_and_build(&r);
        let retries_refused = int_counter(
            &r,
            "georouter_retry_budget_exhausted_total",
            "Retries not made because the retry budget was spent.",
        );
        let retries = counter(
            &r,
            "georouter_retries_total",
            "Requests sent again to another region after one failed them.",
            &["reason"],
        );
        let client_errors = counter(
            &r,
            "georouter_client_errors_total",
            "Requests that failed through their client (malformed or truncated body, client gone, body too slow); never a region's fault.",
            &["kind"],
        );
        let local_errors = counter(
            &r,
            "georouter_local_errors_total",
            "Attempts and health checks that failed on the router's own resources (descriptors, memory, local ports); never a region's fault.",
            &["kind"],
        );
        let geo_lookup_errors = int_counter(
            &r,
            "georouter_geo_lookup_errors_total",
            "Geo lookups that failed to decode a database record; residency routes answer them 503.",
        );
        let cookie_conflicts = int_counter(
            &r,
            "georouter_residency_cookie_conflicts_total",
            "Requests with valid residency cookies naming different jurisdictions (a planted cookie beside the router's): neither was believed.",
        );
        let protocol_requests = counter(
            &r,
            "georouter_protocol_requests_total",
            "Requests by the protocol the client spoke (http/1.1 includes HTTP/1.0; h2; h3 over QUIC).",
            &["protocol"],
        );
        let m = Metrics {
            protocol_requests: PROTOCOLS.map(|p| protocol_requests.with_label_values(&[p])),
            client_errors: ClientFault::ALL.map(|k| client_errors.with_label_values(&[k.as_str()])),
            local_errors: LocalFault::ALL.map(|k| local_errors.with_label_values(&[k.as_str()])),
            geo_lookup_errors,
            cookie_conflicts,
            requests: counter(
                &r,
                "georouter_requests_total",
                "Responses sent, by serving region (none: answered by the router) and status code.",
                &["region", "code"],
            ),
            request_duration: request_duration(&r),
            failovers: counter(
                &r,
                "georouter_failovers_total",
                "Requests served by another region than the policy's first choice, and why.",
                &["from", "to", "reason"],
            ),
            retries_by_kind: FailureKind::ALL
                .map(|k| retries.with_label_values(&[k.as_str()])),
            retries,
            retries_refused,
            residency_refusals: counter(
                &r,
                RESIDENCY_REFUSALS,
                "Requests refused (503) because no region inside the resident's jurisdiction could serve them.",
                &["jurisdiction"],
            ),
            upstream_errors: counter(
                &r,
                "georouter_upstream_errors_total",
                "Failed attempts to a region, by kind (connect, timeout, reset, status_5xx).",
                &["region", "kind"],
            ),
            shed: counter(
                &r,
                "georouter_shed_total",
                "Requests answered 503 + Retry-After because every candidate region was at capacity (queue_full: no place in the queue; queue_timeout: no room within queue_timeout).",
                &["route", "reason"],
            ),
            spillover: counter(
                &r,
                "georouter_spillover_total",
                "Requests served by the next candidate region because the earlier one was at capacity.",
                &["from", "to"],
            ),
            regions: RegionMetrics::register(&r),
            control: ControlMetrics::register(&r),
            registry: r,
        };
        m.export_zeros();
        m
    }

    /// Series exported at 0 from the start: an increase over a series that
    /// appears only at its first event misses that event (the reload alert
    /// would).
    fn export_zeros(&self) {
        let m = self;
        for result in ["success", "failure"] {
            m.control.config_reloads.with_label_values(&[result]);
        }
        for action in ["drain", "undrain", "capacity", "reload", "log"] {
            for result in ["ok", "denied", "rejected", "failed"] {
                m.control
                    .admin_requests
                    .with_label_values(&[action, result]);
            }
        }
    }

    /// The registry, for families registered later (the fleet's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("writing to a Vec cannot fail");
        out
    }

    /// Forgets the per-region series of a region that left the policy.
    pub fn forget_region(&self, region: &str) {
        let g = &self.regions;
        let _ = g.healthy.remove_label_values(&[region]);
        let _ = g.drained.remove_label_values(&[region]);
        let _ = g.drain_refused.remove_label_values(&[region]);
        let _ = g.weight.remove_label_values(&[region]);
        let _ = g.rtt.remove_label_values(&[region]);
        let _ = g.in_flight.remove_label_values(&[region]);
        let _ = g.queue_depth.remove_label_values(&[region]);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_of_names_is_what_is_exported() {
        let m = Metrics::new();
        let one = &["x"];
        m.requests.with_label_values(&["x", "200"]).inc();
        m.request_duration.with_label_values(one).observe(0.1);
        m.regions.healthy.with_label_values(one).set(1);
        m.regions.drained.with_label_values(one).set(0);
        m.regions.drain_refused.with_label_values(one).set(0);
        m.regions.weight.with_label_values(one).set(1.0);
        m.regions.rtt.with_label_values(one).set(0.01);
        m.regions.jurisdiction_serving.with_label_values(one).set(1);
        m.regions
            .health_transitions
            .with_label_values(&["x", "up", "down"])
            .inc();
        m.failovers.with_label_values(&["x", "y", "connect"]).inc();
        m.retries.with_label_values(one).inc();
        m.retries_refused.inc();
        m.residency_refusals.with_label_values(one).inc();
        m.control.config_reloads.with_label_values(one).inc();
        m.control.config_generation.set(1);
        m.upstream_errors.with_label_values(&["x", "connect"]).inc();
        m.control
            .admin_requests
            .with_label_values(&["drain", "ok"])
            .inc();
        m.shed.with_label_values(&["r", "queue_full"]).inc();
        m.spillover.with_label_values(&["x", "y"]).inc();
        m.regions.in_flight.with_label_values(one).set(1);
        m.regions.queue_depth.with_label_values(one).set(0);
        m.regions
            .endpoint_healthy
            .with_label_values(&["x", "http://a:1"])
            .set(1);
        m.regions
            .endpoint_ejections
            .with_label_values(&["x", "http://a:1"])
            .inc();
        m.regions.latency_outliers.with_label_values(one).inc();
        let text = String::from_utf8(m.render()).unwrap();
        let mut exported: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .filter(|n| n.starts_with("georouter_"))
            .collect();
        exported.sort_unstable();
        let mut names = NAMES.to_vec();
        names.sort_unstable();
        assert_eq!(exported, names);
    }
}
