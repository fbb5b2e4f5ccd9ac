//! What the data plane records per region, without locks or label lookups: metric
//! handles resolved ahead of time, and the run of consecutive failures that
//! passive health detection reads.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::StatusCode;
use prometheus::{Histogram, IntCounter, IntCounterVec};

pub use crate::blame::FailureKind;
use crate::config::{Capacity, EndpointSpec, RegionName};
use crate::metrics::Metrics;
use crate::routing::capacity::{Gauges, Quorum, RegionLoad, ShedReason};
use crate::routing::table::{JurisdictionId, RegionId, Route, RoutingTable};

/// `requests_total{region, code}` for one region, each code resolved on first use.
#[derive(Debug)]
pub struct CodeCounters {
    vec: IntCounterVec,
    region: RegionName,
    by_code: Box<[OnceLock<IntCounter>]>,
}

impl CodeCounters {
    pub fn new(vec: &IntCounterVec, region: RegionName) -> Self {
        Self {
            vec: vec.clone(),
            region,
            by_code: (100..=599).map(|_| OnceLock::new()).collect(),
        }
    }

    pub fn inc(&self, status: StatusCode) {
        let code = status.as_u16();
        match self.by_code.get(usize::from(code.wrapping_sub(100))) {
            Some(cell) => cell
                .get_or_init(|| {
                    self.vec
                        .with_label_values(&[self.region.as_str(), status.as_str()])
                })
                .inc(),
            None => self
                .vec
                .with_label_values(&[self.region.as_str(), status.as_str()])
                .inc(),
        }
    }
}

/// Why a request was served by another region than the policy's first choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverReason {
    Failed(FailureKind),
    Drained,
    Unhealthy,
}

impl FailoverReason {
    const COUNT: usize = FailureKind::ALL.len() + 2;

    /// Every reason, for series exported at 0 from the start.
    pub fn all() -> impl Iterator<Item = FailoverReason> {
        FailureKind::ALL
            .into_iter()
            .map(FailoverReason::Failed)
            .chain([FailoverReason::Drained, FailoverReason::Unhealthy])
    }

    fn index(self) -> usize {
        match self {
            FailoverReason::Failed(k) => k as usize,
            FailoverReason::Drained => FailureKind::ALL.len(),
            FailoverReason::Unhealthy => FailureKind::ALL.len() + 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailoverReason::Failed(k) => k.as_str(),
            FailoverReason::Drained => "drained",
            FailoverReason::Unhealthy => "unhealthy",
        }
    }
}

/// `failovers_total{from,to,reason}` and `residency_refusals_total{jurisdiction}`
/// for one routing table's regions and jurisdictions, each resolved on first use:
/// while a region is out, every request it would have had is counted.
#[derive(Debug)]
pub struct TableCounters {
    generation: u64,
    regions: usize,
    failovers: Box<[OnceLock<IntCounter>]>,
    refusals: Box<[OnceLock<IntCounter>]>,
    /// `spillover_total{from,to}` by region pair, `shed_total{route,reason}`
    /// by route and reason: resolved once, as the overload path needs them.
    spillovers: Box<[OnceLock<IntCounter>]>,
    sheds: Box<[OnceLock<IntCounter>]>,
}

/// Exports at 0, from the start, the series of `table` that alerts and the
/// dashboard read (failovers between any two regions for any reason, residency
/// refusals, health transitions): a rate or an increase over a series that
/// appears only at its first event misses that event.
pub fn export_known_series(metrics: &Metrics, table: &RoutingTable) {
    let regions = table.regions();
    for from in regions {
        for to in regions.iter().filter(|to| to.id != from.id) {
            for reason in FailoverReason::all() {
                metrics.failovers.with_label_values(&[
                    from.name.as_str(),
                    to.name.as_str(),
                    reason.as_str(),
                ]);
            }
        }
        for (a, b) in KNOWN_TRANSITIONS {
            metrics
                .regions
                .health_transitions
                .with_label_values(&[from.name.as_str(), a, b]);
        }
    }
    for j in table.jurisdictions() {
        metrics.residency_refusals.with_label_values(&[&*j.name]);
    }
    for from in regions {
        for to in regions.iter().filter(|to| to.id != from.id) {
            metrics
                .spillover
                .with_label_values(&[from.name.as_str(), to.name.as_str()]);
        }
        for ep in from.endpoints.iter() {
            let key = format!("{}://{}", ep.scheme, ep.authority);
            metrics
                .regions
                .endpoint_ejections
                .with_label_values(&[from.name.as_str(), &key]);
        }
    }
    for r in regions {
        metrics
            .regions
            .latency_outliers
            .with_label_values(&[r.name.as_str()]);
    }
    for route in table.routes() {
        for reason in ShedReason::ALL {
            metrics
                .shed
                .with_label_values(&[&route.name, reason.as_str()]);
        }
    }
}

/// The phase changes exported at 0 for every region.
const KNOWN_TRANSITIONS: [(&str, &str); 6] = [
    ("up", "down"),
    ("down", "up"),
    ("up", "ejected"),
    ("ejected", "up"),
    ("ejected", "held_down"),
    ("held_down", "up"),
];

/// Removes the series of a region that left the policy, `others` being every
/// region it could have failed over to or from: a departed region is not
/// exported at 0 for ever.
pub fn forget_region(metrics: &Metrics, region: &str, others: &[&str]) {
    metrics.forget_region(region);
    for other in others.iter().filter(|o| **o != region) {
        for reason in FailoverReason::all() {
            for (from, to) in [(region, *other), (*other, region)] {
                let _ = metrics
                    .failovers
                    .remove_label_values(&[from, to, reason.as_str()]);
            }
        }
        for (from, to) in [(region, *other), (*other, region)] {
            let _ = metrics.spillover.remove_label_values(&[from, to]);
        }
    }
    for (a, b) in KNOWN_TRANSITIONS {
        let _ = metrics
            .regions
            .health_transitions
            .remove_label_values(&[region, a, b]);
    }
}

impl TableCounters {
    pub fn new(table: &RoutingTable) -> Self {
        let regions = table.regions().len();
        let cells = |n: usize| (0..n).map(|_| OnceLock::new()).collect();
        Self {
            generation: table.generation(),
            regions,
            failovers: cells(regions * regions * FailoverReason::COUNT),
            refusals: cells(table.jurisdictions().len()),
            spillovers: cells(regions * regions),
            sheds: cells(table.routes().len() * ShedReason::ALL.len()),
        }
    }

    /// A request served by `to` because `from`, an earlier candidate, was full.
    pub fn spillover(&self, metrics: &Metrics, table: &RoutingTable, from: RegionId, to: RegionId) {
        let resolve = || {
            metrics.spillover.with_label_values(&[
                table.region(from).name.as_str(),
                table.region(to).name.as_str(),
            ])
        };
        let at = usize::from(from.0) * self.regions + usize::from(to.0);
        match self.spillovers.get(at) {
            Some(cell) if self.generation == table.generation() => cell.get_or_init(resolve).inc(),
            _ => resolve().inc(),
        }
    }

    /// A request of `route` shed because every candidate was full.
    pub fn shed(&self, metrics: &Metrics, table: &RoutingTable, route: &Route, reason: ShedReason) {
        let resolve = || {
            metrics
                .shed
                .with_label_values(&[&route.name, reason.as_str()])
        };
        let at = table
            .routes()
            .iter()
            .position(|r| std::ptr::eq(r, route))
            .map(|i| i * ShedReason::ALL.len() + reason as usize);
        match at.and_then(|at| self.sheds.get(at)) {
            Some(cell) if self.generation == table.generation() => cell.get_or_init(resolve).inc(),
            _ => resolve().inc(),
        }
    }

    /// These counters if they were made for `table`, else new ones.
    pub fn for_table(self: &Arc<Self>, table: &RoutingTable) -> Arc<Self> {
        if self.generation == table.generation() {
            self.clone()
        } else {
            Arc::new(Self::new(table))
        }
    }

    pub fn failover(
        &self,
        metrics: &Metrics,
        table: &RoutingTable,
        from: RegionId,
        to: RegionId,
        reason: FailoverReason,
    ) {
        let resolve = || {
            metrics.failovers.with_label_values(&[
                table.region(from).name.as_str(),
                table.region(to).name.as_str(),
                reason.as_str(),
            ])
        };
        let at = (usize::from(from.0) * self.regions + usize::from(to.0)) * FailoverReason::COUNT
            + reason.index();
        match self.failovers.get(at) {
            Some(cell) if self.generation == table.generation() => cell.get_or_init(resolve).inc(),
            _ => resolve().inc(),
        }
    }

    pub fn refusal(&self, metrics: &Metrics, table: &RoutingTable, jurisdiction: JurisdictionId) {
        let resolve = || {
            metrics
                .residency_refusals
                .with_label_values(&[&*table.jurisdiction(jurisdiction).name])
        };
        match self.refusals.get(usize::from(jurisdiction.0)) {
            Some(cell) if self.generation == table.generation() => cell.get_or_init(resolve).inc(),
            _ => resolve().inc(),
        }
    }
}

/// The counters of one table's regions, in table order, and the table's
/// failover and refusal counters; published beside the region states.
#[derive(Debug)]
pub struct Accounts {
    table_generation: u64,
    accounts: Box<[Arc<RegionAccount>]>,
    /// Kept from one snapshot to the next while the table stays.
    counters: Arc<TableCounters>,
}

impl Accounts {
    /// `accounts` for `table`, in its order; `previous`'s table counters if they
    /// were made for the same table.
    pub fn new(
        table: &RoutingTable,
        accounts: Vec<Arc<RegionAccount>>,
        previous: Option<&Accounts>,
    ) -> Self {
        debug_assert_eq!(accounts.len(), table.regions().len());
        Self {
            table_generation: table.generation(),
            accounts: accounts.into_boxed_slice(),
            counters: match previous {
                Some(p) => p.counters.for_table(table),
                None => Arc::new(TableCounters::new(table)),
            },
        }
    }

    /// New accounts for every region of `table`.
    pub fn fresh(table: &RoutingTable, metrics: &Metrics) -> Self {
        let accounts = table
            .regions()
            .iter()
            .map(|r| {
                Arc::new(RegionAccount::new(
                    r.name.clone(),
                    metrics,
                    &r.endpoints,
                    &r.capacity,
                ))
            })
            .collect();
        Self::new(table, accounts, None)
    }

    /// The counters of a region of `table`; found by name for another table.
    pub fn account(&self, table: &RoutingTable, id: RegionId) -> Option<&RegionAccount> {
        if self.table_generation == table.generation() {
            return self.accounts.get(usize::from(id.0)).map(|a| &**a);
        }
        let name = &table.region(id).name;
        self.accounts.iter().find(|a| a.name == *name).map(|a| &**a)
    }

    /// The table's failover and refusal counters.
    pub fn counters(&self) -> &TableCounters {
        &self.counters
    }

    /// Every account, in table order.
    pub fn all(&self) -> &[Arc<RegionAccount>] {
        &self.accounts
    }
}

/// One region's data-plane counters. Shared by every snapshot of the region
/// states, across reloads, for as long as the region is in the policy.
#[derive(Debug)]
pub struct RegionAccount {
    pub name: RegionName,
    codes: CodeCounters,
    duration: Histogram,
    errors: [IntCounter; 4],
    failures: AtomicU32,
    /// The clients whose requests failed in this run after they were sent.
    quorum: Quorum,
    tripped: AtomicBool,
    last_failure: AtomicU8,
    /// Wakes the replayable requests waiting on this region when it leaves service.
    left: tokio::sync::Notify,
    /// Requests in flight per endpoint, endpoint standing, the queue.
    pub load: Arc<RegionLoad>,
}

impl RegionAccount {
    pub fn new(
        name: RegionName,
        metrics: &Metrics,
        endpoints: &[EndpointSpec],
        capacity: &Capacity,
    ) -> Self {
        let n = name.as_str();
        let healthy = |e: &str| metrics.regions.endpoint_healthy.with_label_values(&[n, e]);
        let load = Arc::new(RegionLoad::new(
            endpoints,
            capacity,
            Gauges {
                in_flight: metrics.regions.in_flight.with_label_values(&[n]),
                queue_depth: metrics.regions.queue_depth.with_label_values(&[n]),
                endpoint_healthy: &healthy,
            },
        ));
        Self {
            load,
            codes: CodeCounters::new(&metrics.requests, name.clone()),
            duration: metrics.request_duration.with_label_values(&[n]),
            errors: FailureKind::ALL
                .map(|k| metrics.upstream_errors.with_label_values(&[n, k.as_str()])),
            failures: AtomicU32::new(0),
            quorum: Quorum::default(),
            tripped: AtomicBool::new(false),
            last_failure: AtomicU8::new(0),
            left: tokio::sync::Notify::new(),
            name,
        }
    }

    /// A response from this region reached the client.
    pub fn response(&self, status: StatusCode, elapsed: Duration) {
        self.codes.inc(status);
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// The region answered well: the run of failures ends.
    pub fn success(&self) {
        // Read first: a healthy region's counter stays 0 and its cache line shared.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        self.quorum.forget();
    }

    /// An attempt failed, for `client` (hashed; `None`: nothing was sent, so
    /// no client could have caused it). Returns true when this failure made
    /// the run reach `threshold` (0 = passive detection off) with failures from
    /// `min_clients` distinct clients: the caller wakes the controller.
    pub fn failure(
        &self,
        kind: FailureKind,
        threshold: u32,
        client: Option<u64>,
        min_clients: u32,
    ) -> bool {
        self.errors[kind as usize].inc();
        if threshold == 0 {
            return false;
        }
        let run = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let clients_ok = self.quorum.reached(client, min_clients);
        if run >= threshold && clients_ok && !self.tripped.load(Ordering::Acquire) {
            self.last_failure.store(kind as u8, Ordering::Relaxed);
            return !self.tripped.swap(true, Ordering::AcqRel);
        }
        false
    }

    /// Resolves when the region next leaves service (health, ejection or drain).
    pub fn left_service(&self) -> tokio::sync::futures::Notified<'_> {
        self.left.notified()
    }

    /// The region left service: requests waiting on it may go elsewhere.
    pub fn leave_service(&self) {
        self.left.notify_waiters();
    }

    /// Responses this region served (the histogram's count).
    pub fn served(&self) -> u64 {
        self.duration.get_sample_count()
    }

    /// Failed attempts to this region, every kind.
    pub fn errors(&self) -> u64 {
        self.errors.iter().map(IntCounter::get).sum()
    }

    /// Whether the run of failures reached the threshold since the last call, and
    /// the kind of the failure that did it.
    pub fn take_tripped(&self) -> Option<FailureKind> {
        if self.tripped.swap(false, Ordering::Acquire) {
            self.failures.store(0, Ordering::Relaxed);
            self.quorum.forget();
            Some(FailureKind::from_u8(
                self.last_failure.load(Ordering::Relaxed),
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(m: &Metrics) -> RegionAccount {
        let cap = Capacity {
            max_in_flight: 1,
            max_queue: 1,
            queue_timeout: Duration::from_secs(1),
        };
        RegionAccount::new(RegionName::new("a"), m, &[], &cap)
    }

    #[test]
    fn a_run_of_failures_trips_once_and_a_success_ends_the_run() {
        let m = Metrics::new();
        let a = account(&m);
        assert!(!a.failure(FailureKind::Connect, 3, None, 1));
        assert!(!a.failure(FailureKind::Reset, 3, None, 1));
        a.success();
        assert!(!a.failure(FailureKind::Connect, 3, None, 1));
        assert!(!a.failure(FailureKind::Connect, 3, None, 1));
        assert!(a.failure(FailureKind::Timeout, 3, None, 1));
        assert!(
            !a.failure(FailureKind::Timeout, 3, None, 1),
            "trips once per run"
        );
        assert_eq!(a.take_tripped(), Some(FailureKind::Timeout));
        assert_eq!(a.take_tripped(), None);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"georouter_upstream_errors_total{kind="connect",region="a"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn one_client_cannot_eject_a_region_with_failures_after_sending() {
        let m = Metrics::new();
        let a = account(&m);
        for _ in 0..20 {
            assert!(!a.failure(FailureKind::Status5xx, 3, Some(7), 3));
        }
        assert!(!a.failure(FailureKind::Reset, 3, Some(8), 3));
        assert!(
            a.failure(FailureKind::Timeout, 3, Some(9), 3),
            "three clients"
        );
        assert_eq!(a.take_tripped(), Some(FailureKind::Timeout));
        for _ in 0..12 {
            assert!(!a.failure(FailureKind::Status5xx, 3, Some(7), 3));
        }
        a.success();
        let mut tripped = false;
        for c in [4, 4, 5, 5, 6] {
            tripped |= a.failure(FailureKind::Status5xx, 3, Some(c), 3);
        }
        assert!(tripped, "a run after a success, from three clients");
        assert!(a.take_tripped().is_some());
        // Connect failures reach no client's request: they need no quorum.
        for _ in 0..2 {
            assert!(!a.failure(FailureKind::Connect, 3, None, 3));
        }
        assert!(a.failure(FailureKind::Connect, 3, None, 3));
    }

    #[test]
    fn responses_are_counted_by_code() {
        let m = Metrics::new();
        let a = account(&m);
        a.response(StatusCode::OK, Duration::from_millis(3));
        a.response(StatusCode::OK, Duration::from_millis(3));
        a.response(StatusCode::BAD_GATEWAY, Duration::from_millis(3));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"georouter_requests_total{code="200",region="a"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"georouter_requests_total{code="502",region="a"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"georouter_request_duration_seconds_count{region="a"} 3"#),
            "{text}"
        );
    }

    fn table(regions: &[&str]) -> RoutingTable {
        let mut toml = String::from("[[listeners]]\naddress = \"127.0.0.1:0\"\n");
        for (i, r) in regions.iter().enumerate() {
            toml += &format!(
                "[[regions]]\nname = \"{r}\"\njurisdiction = \"eu\"\n\
                 endpoints = [{{ url = \"http://127.0.0.1:{}\" }}]\n",
                i + 1
            );
        }
        toml += "[[jurisdictions]]\nname = \"eu\"\ncountries = [\"DE\"]\n";
        RoutingTable::compile(&crate::config::Config::from_toml(&toml).unwrap()).unwrap()
    }

    #[test]
    fn failovers_and_refusals_land_on_their_own_labels() {
        let m = Metrics::new();
        let t = table(&["a", "b", "c"]);
        let c = TableCounters::new(&t);
        let (a, b, cc) = (RegionId(0), RegionId(1), RegionId(2));
        c.failover(&m, &t, a, b, FailoverReason::Drained);
        c.failover(&m, &t, a, b, FailoverReason::Drained);
        c.failover(
            &m,
            &t,
            b,
            cc,
            FailoverReason::Failed(FailureKind::Status5xx),
        );
        c.failover(&m, &t, cc, a, FailoverReason::Unhealthy);
        c.refusal(&m, &t, JurisdictionId(0));
        let text = String::from_utf8(m.render()).unwrap();
        for line in [
            r#"georouter_failovers_total{from="a",reason="drained",to="b"} 2"#,
            r#"georouter_failovers_total{from="b",reason="status_5xx",to="c"} 1"#,
            r#"georouter_failovers_total{from="c",reason="unhealthy",to="a"} 1"#,
            r#"georouter_residency_refusals_total{jurisdiction="eu"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn counters_of_an_older_table_count_under_the_names_of_the_current_one() {
        let m = Metrics::new();
        let old = table(&["a", "b"]);
        let new = table(&["b", "a"]);
        let c = Arc::new(TableCounters::new(&old));
        assert!(
            Arc::ptr_eq(&c.for_table(&old), &c),
            "kept for its own table"
        );
        assert!(
            !Arc::ptr_eq(&c.for_table(&new), &c),
            "made anew for another"
        );
        c.failover(&m, &old, RegionId(0), RegionId(1), FailoverReason::Drained);
        // In the new table, id 0 is "b": the cell resolved for the old one must
        // not be used.
        c.failover(&m, &new, RegionId(0), RegionId(1), FailoverReason::Drained);
        let text = String::from_utf8(m.render()).unwrap();
        for line in [
            r#"georouter_failovers_total{from="a",reason="drained",to="b"} 1"#,
            r#"georouter_failovers_total{from="b",reason="drained",to="a"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
