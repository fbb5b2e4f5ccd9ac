//! Health monitoring: each region's checker task, passive trips read from
//! traffic (within the ejection cap), the clock that ends ejections and ramps,
//! and the transitions they make, logged and counted.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{limits, Control, Inner};
use crate::accounting::RegionAccount;
use crate::config::{HealthCheck, RegionName};
use crate::health::check::{self, Outcome};
use crate::health::machine::{Machine, Phase, Transition};

/// How often time-driven changes (ejections ending, slow-start ramps) are looked at.
const TICK: Duration = Duration::from_millis(200);

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
    pub(super) scaled_by: Option<String>,
    /// Real request latency: a moving average (seconds), the requests it has
    /// seen since the region last entered service, and the totals last read.
    pub(super) real: Option<f64>,
    pub(super) real_requests: u64,
    pub(super) real_seen: (u64, f64),
}

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
            scaled_by: None,
            real: None,
            real_requests: 0,
            real_seen: (0, 0.0),
        }
    }

    /// The share of its clients the region gets now: its slow-start ramp,
    /// capped by a partial drain.
    pub(super) fn weight(&self, now: Instant, slow_start: Duration) -> u16 {
        self.machine
            .weight(now, slow_start)
            .min(self.capacity_scale)
    }
}

impl Control {
    pub(super) fn transition(&self, region: &RegionName, t: &Transition) {
        let serving = |p: Phase| p == Phase::Up;
        if serving(t.to) {
            tracing::info!(target: "georouter::health", %region, from = t.from.name(), to = t.to.name(), cause = %t.cause, "region back in service");
        } else {
            tracing::warn!(target: "georouter::health", %region, from = t.from.name(), to = t.to.name(), cause = %t.cause, "region out of service");
        }
        self.state
            .metrics
            .health_transitions
            .with_label_values(&[region.as_str(), t.from.name(), t.to.name()])
            .inc();
        self.journal.record(
            region.as_str(),
            "health",
            format!("{} -> {}", t.from.name(), t.to.name()),
            t.cause.clone(),
        );
    }

    /// Each endpoint's check result: in or out of rotation, logged when it changes.
    fn endpoints_checked(&self, region: &crate::table::Region, results: &[Option<bool>]) {
        let account = {
            let inner = self.lock();
            match inner.regions.get(&region.name) {
                Some(rec) => rec.account.clone(),
                None => return,
            }
        };
        if !account.load.tracks(&region.endpoints) {
            return;
        }
        for (i, ok) in results.iter().enumerate() {
            let Some(ok) = *ok else { continue };
            // A lone endpoint's standing is the region's, told by its machine.
            if account.load.checked(i, ok) && results.len() > 1 {
                let endpoint = &*account.load.endpoints[i].key;
                if ok {
                    tracing::info!(target: "georouter::health", region = %region.name, endpoint, "endpoint passes its checks: back in rotation");
                } else {
                    tracing::warn!(target: "georouter::health", region = %region.name, endpoint, "endpoint fails its checks: out of rotation");
                }
                self.journal.record(
                    region.name.as_str(),
                    "endpoint",
                    format!("{endpoint} {}", if ok { "up" } else { "down" }),
                    String::new(),
                );
            }
        }
    }

    /// Feeds one check outcome into a region's machine.
    fn report(&self, region: &RegionName, outcome: Outcome) {
        let mut inner = self.lock();
        let config = inner.config.clone();
        let Some(rec) = inner.regions.get_mut(region) else {
            return;
        };
        let now = Instant::now();
        let first = !rec.checked;
        rec.checked = true;
        let limits = limits(&config, &rec.check);
        let mut changed = first;
        let t = match &outcome {
            Outcome::Passed { rtt } => {
                let sample = rtt.as_secs_f64();
                let w = config.health.ewma_weight;
                let avg = rec.rtt.map_or(sample, |old| old + w * (sample - old));
                rec.rtt = Some(avg);
                let avg = Duration::from_secs_f64(avg);
                let moved = rec
                    .published_rtt
                    .is_none_or(|p| avg.abs_diff(p) > config.health.hysteresis);
                if moved {
                    rec.published_rtt = Some(avg);
                    changed = true;
                }
                rec.machine.check(now, Ok(()), &limits)
            }
            Outcome::Failed { why } => {
                tracing::debug!(%region, %why, "health check failed");
                rec.machine.check(now, Err(why), &limits)
            }
            Outcome::Local { fault, why } => {
                self.state.metrics.local_errors[*fault as usize].inc();
                tracing::warn!(%region, kind = fault.as_str(), %why, "health check not made: the router is out of its own resources; the region's health is unchanged");
                None
            }
        };
        if let Some(t) = &t {
            self.transition(region, t);
            changed = true;
        }
        if changed {
            self.publish(&mut inner);
        }
        if first {
            self.update_ready(&inner);
        }
    }

    /// Passive detections and the clock: ejections, their ends, ramps.
    fn tick(&self) {
        let mut inner = self.lock();
        let config = inner.config.clone();
        let now = Instant::now();
        let mut changed = false;
        let mut transitions = Vec::new();
        let slow = latency_outliers(&mut inner);
        self.passive_ejections(&mut inner, now, slow, &mut transitions);
        for (name, rec) in inner.regions.iter_mut() {
            let limits = limits(&config, &rec.check);
            if let Some(t) = rec.machine.tick(now, &limits) {
                transitions.push((name.clone(), t));
            }
            changed |= rec.weight(now, config.health.failback.slow_start) != rec.published_weight;
        }
        for (name, t) in &transitions {
            self.transition(name, t);
        }
        if changed || !transitions.is_empty() {
            self.publish(&mut inner);
        }
    }

    /// Regions whose run of failures in traffic reached the threshold are ejected,
    /// one at a time, within the cap (`health::cap`); the rest are counted and
    /// logged as what they are: the router suspecting itself or its network.
    fn passive_ejections(
        &self,
        inner: &mut Inner,
        now: Instant,
        slow: Vec<(RegionName, String)>,
        transitions: &mut Vec<(RegionName, Transition)>,
    ) {
        let mut tripped: Vec<(RegionName, String)> = inner
            .regions
            .iter()
            .filter_map(|(name, rec)| {
                Some((
                    name.clone(),
                    rec.account.take_tripped()?.as_str().to_owned(),
                ))
            })
            .collect();
        for (name, why) in slow {
            tracing::warn!(target: "georouter::health", region = %name, %why, "region far slower than its peers on real requests");
            self.state
                .metrics
                .latency_outliers
                .with_label_values(&[name.as_str()])
                .inc();
            if !tripped.iter().any(|(n, _)| *n == name) {
                tripped.push((name, why));
            }
        }
        if tripped.is_empty() {
            return;
        }
        let table = inner.table.clone();
        let config = inner.config.clone();
        let mut out: Vec<bool> = table
            .regions()
            .iter()
            .map(|r| {
                inner
                    .regions
                    .get(&r.name)
                    .is_some_and(|rec| !rec.machine.serving())
            })
            .collect();
        let drained: Vec<bool> = table
            .regions()
            .iter()
            .map(|r| inner.drains.get(r.name.as_str()).is_some())
            .collect();
        let percent = config.health.passive.max_ejected_percent;
        for (name, kind) in tripped {
            let (Some(region), Some(rec)) = (
                table.region_by_name(name.as_str()),
                inner.regions.get_mut(&name),
            ) else {
                continue;
            };
            if !rec.machine.serving() {
                continue;
            }
            if let Err(capped) =
                crate::health::cap::may_eject(&table, region.id, &out, &drained, percent)
            {
                self.state.metrics.ejections_capped.inc();
                static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
                if let Some(suppressed) = LOG.allow() {
                    tracing::warn!(target: "georouter::health", region = %name, last = %kind, why = %capped, suppressed, "passive ejection refused: too many regions failing at once points at the router or its network; serving through them");
                }
                continue;
            }
            let limits = limits(&config, &rec.check);
            if let Some(t) = rec.machine.passive_failure(now, &kind, &limits) {
                out[usize::from(region.id.0)] = true;
                transitions.push((name, t));
            }
        }
    }

    pub(super) async fn run_ticks(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = self.state.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            self.tick();
        }
    }

    pub(super) fn restart_checkers(self: &Arc<Self>, inner: &mut Inner) {
        for h in inner.checkers.drain(..) {
            h.abort();
        }
        for region in inner.table.regions() {
            let check = inner.regions[&region.name].check.clone();
            if !check.enabled {
                continue;
            }
            let control = self.clone();
            let table = inner.table.clone();
            let id = region.id;
            let mut shutdown = self.shutdown.clone();
            let task = tokio::spawn(async move {
                let region = table.region(id);
                loop {
                    let report = tokio::select! {
                        o = check::run(region, &check, &table.settings.upstream.http2) => o,
                        _ = shutdown.changed() => return,
                    };
                    control.endpoints_checked(region, &report.endpoints);
                    control.report(&region.name, report.outcome);
                    let wait = jittered(check.interval, check.jitter);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            });
            inner.checkers.push(task.abort_handle());
        }
    }
}

/// Real request latency per region, read from the request histogram's totals
/// since the last tick (nothing on the request path); the serving regions whose
/// average stays `slow_factor` times their peers' median and above `slow_min`,
/// over `slow_min_requests` at least, with why.
fn latency_outliers(inner: &mut Inner) -> Vec<(RegionName, String)> {
    let p = inner.config.health.passive;
    let mut known = Vec::new();
    for (name, rec) in inner.regions.iter_mut() {
        let (n, sum) = rec.account.latency_totals();
        let (dn, ds) = (n.saturating_sub(rec.real_seen.0), sum - rec.real_seen.1);
        rec.real_seen = (n, sum);
        if !rec.machine.serving() {
            // Measured afresh when it is back.
            rec.real = None;
            rec.real_requests = 0;
            continue;
        }
        if dn > 0 {
            let sample = (ds / dn as f64).max(0.0);
            rec.real = Some(rec.real.map_or(sample, |old| old + 0.3 * (sample - old)));
            rec.real_requests += dn;
        }
        if let Some(real) = rec
            .real
            .filter(|_| rec.real_requests >= u64::from(p.slow_min_requests))
        {
            known.push((name.clone(), real));
        }
    }
    if p.slow_factor_percent == 0 || known.len() < 2 {
        return Vec::new();
    }
    let factor = f64::from(p.slow_factor_percent) / 100.0;
    let floor = p.slow_min.as_secs_f64();
    let mut out = Vec::new();
    for (name, real) in &known {
        let mut peers: Vec<f64> = known
            .iter()
            .filter(|(n, _)| n != name)
            .map(|(_, r)| *r)
            .collect();
        peers.sort_by(f64::total_cmp);
        let median = peers[peers.len() / 2];
        if *real > floor && *real > factor * median {
            out.push((
                name.clone(),
                format!(
                    "slow: real requests take {:.0} ms, {:.1} times its peers' median of {:.0} ms",
                    real * 1000.0,
                    real / median.max(1e-6),
                    median * 1000.0
                ),
            ));
        }
    }
    out
}

fn jittered(interval: Duration, jitter: f64) -> Duration {
    if jitter == 0.0 {
        return interval;
    }
    let f = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
    interval.mul_f64(f)
}
