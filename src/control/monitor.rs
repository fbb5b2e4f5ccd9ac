//! Health monitoring: each region's checker task, passive trips read from
//! traffic (within the ejection cap), the clock that ends ejections and ramps,
//! and the transitions they make, logged and counted.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::record::Real;
use super::{limits, Control};
use crate::config::RegionName;
use crate::control::health::check::{self, Outcome};
use crate::control::health::machine::{Phase, Transition};
use crate::control::health::Health;

/// How often time-driven changes (ejections ending, slow-start ramps) are looked at.
const TICK: Duration = Duration::from_millis(200);

impl Control {
    pub(super) fn transition(&self, region: &RegionName, t: &Transition) {
        let serving = |p: Phase| p == Phase::Up;
        if serving(t.to) {
            tracing::info!(target: "georouter::health", %region, from = t.from.name(), to = t.to.name(), cause = %t.cause, "region back in service");
        } else {
            tracing::warn!(target: "georouter::health", %region, from = t.from.name(), to = t.to.name(), cause = %t.cause, "region out of service");
        }
        // The fleet reads each instance's view of its regions (the drain
        // guard): the record goes out again now, not at the next change.
        if let Some(f) = &self.fleet {
            f.applied_changed.notify_one();
        }
        self.state
            .metrics
            .regions
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
    fn endpoints_checked(&self, region: &crate::routing::table::Region, results: &[Option<bool>]) {
        let account = {
            match self.health().regions.get(&region.name) {
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
        let config = self.config();
        let mut health = self.health();
        let Some(rec) = health.regions.get_mut(region) else {
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
                changed |= rec.republish_latency(now, &config.health);
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
            // A jurisdiction this left empty takes back a held-down region in
            // the same snapshot, not a tick later.
            let mut waived = Vec::new();
            waive_last_of_jurisdictions(&mut health, |r| self.drained(r), now, &mut waived);
            for (name, t) in &waived {
                self.transition(name, t);
            }
        }
        if first {
            self.update_ready(&health);
        }
        let down = t
            .as_ref()
            .and(self.fleet.as_ref())
            .map(|_| down_here(&health));
        drop(health);
        if let Some(down) = down {
            self.book_follows_health(down);
        }
        if changed {
            self.publish();
        }
    }

    /// Passive detections and the clock: ejections, their ends, ramps.
    fn tick(&self) {
        let config = self.config();
        let mut health = self.health();
        let now = Instant::now();
        let mut changed = false;
        let mut transitions = Vec::new();
        let slow = self.latency_outliers(&mut health, &config, now);
        self.passive_ejections(&mut health, &config, now, slow, &mut transitions);
        for (name, rec) in health.regions.iter_mut() {
            let limits = limits(&config, &rec.check);
            if let Some(t) = rec.machine.tick(now, &limits) {
                transitions.push((name.clone(), t));
            }
            changed |= rec.weight(now, config.health.failback.slow_start) != rec.published_weight;
            changed |= rec.republish_latency(now, &config.health);
        }
        waive_last_of_jurisdictions(&mut health, |r| self.drained(r), now, &mut transitions);
        let down = (!transitions.is_empty() && self.fleet.is_some()).then(|| down_here(&health));
        drop(health);
        for (name, t) in &transitions {
            self.transition(name, t);
        }
        if let Some(down) = down {
            self.book_follows_health(down);
        }
        if changed || !transitions.is_empty() {
            self.publish();
        }
    }

    /// Regions whose run of failures in traffic reached the threshold are ejected,
    /// one at a time, within the cap (`health::cap`); the rest are counted and
    /// logged as what they are: the router suspecting itself or its network.
    fn passive_ejections(
        &self,
        health: &mut Health,
        config: &crate::config::Config,
        now: Instant,
        slow: Vec<(RegionName, String)>,
        transitions: &mut Vec<(RegionName, Transition)>,
    ) {
        let mut tripped: Vec<(RegionName, String)> = health
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
            if !tripped.iter().any(|(n, _)| *n == name) {
                tripped.push((name, why));
            }
        }
        if tripped.is_empty() {
            return;
        }
        let table = health.table.clone();
        // Out of service by health. A region held down for flapping passes its
        // checks and comes back when its jurisdiction needs it
        // (`waive_last_of_jurisdictions`): it does not count as out, so the
        // last region serving beside it may still be ejected.
        let mut out: Vec<bool> = table
            .regions()
            .iter()
            .map(|r| {
                health.regions.get(&r.name).is_some_and(|rec| {
                    !rec.machine.serving() && !matches!(rec.machine.phase(), Phase::HeldDown { .. })
                })
            })
            .collect();
        let drained: Vec<bool> = table
            .regions()
            .iter()
            .map(|r| self.drained(r.name.as_str()))
            .collect();
        let percent = config.health.passive.max_ejected_percent;
        for (name, kind) in tripped {
            let (Some(region), Some(rec)) = (
                table.region_by_name(name.as_str()),
                health.regions.get_mut(&name),
            ) else {
                continue;
            };
            if !rec.machine.serving() {
                continue;
            }
            if let Err(capped) =
                crate::control::health::cap::may_eject(&table, region.id, &out, &drained, percent)
            {
                self.state.metrics.control.ejections_capped.inc();
                static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
                if let Some(suppressed) = LOG.allow() {
                    tracing::warn!(target: "georouter::health", region = %name, last = %kind, why = %capped, suppressed, "passive ejection refused: too many regions failing at once points at the router or its network; serving through them");
                }
                continue;
            }
            let limits = limits(config, &rec.check);
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

    pub(super) fn restart_checkers(self: &Arc<Self>, health: &mut Health) {
        for h in health.checkers.drain(..) {
            h.abort();
        }
        for region in health.table.regions() {
            let check = health.regions[&region.name].check.clone();
            if !check.enabled {
                continue;
            }
            let control = self.clone();
            let table = health.table.clone();
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
            health.checkers.push(task.abort_handle());
        }
    }
}

impl Control {
    /// Real request latency (send to response head, queueing in the router
    /// left out) per region and endpoint, read from their totals since the
    /// last tick. An endpoint whose average stays `slow_factor` times its
    /// siblings' median (and above `slow_min`, over `slow_min_requests`) leaves
    /// the rotation as a failing one would; the serving regions far slower than
    /// their peers are returned, with why, for passive ejection. Each is logged
    /// and counted once when it turns slow.
    fn latency_outliers(
        &self,
        health: &mut Health,
        config: &crate::config::Config,
        now: Instant,
    ) -> Vec<(RegionName, String)> {
        let p = config.health.passive;
        let factor = f64::from(p.slow_factor_percent) / 100.0;
        let floor = p.slow_min.as_secs_f64();
        let passive = crate::routing::capacity::Passive {
            threshold: p.consecutive_failures,
            min_clients: p.min_distinct_clients,
            ejection: p.ejection,
            max_ejection: p.max_ejection,
        };
        let mut known = Vec::new();
        for (name, rec) in health.regions.iter_mut() {
            let load = rec.account.load.clone();
            rec.real.read(load.head_totals(), now);
            if rec.endpoints_real.len() != load.endpoints.len() {
                rec.endpoints_real = vec![Real::default(); load.endpoints.len()];
            }
            let mut siblings = Vec::new();
            for (i, (e, real)) in load
                .endpoints
                .iter()
                .zip(&mut rec.endpoints_real)
                .enumerate()
            {
                real.read(e.head_totals(), now);
                if !e.available() {
                    real.reset();
                } else if let Some(avg) = real.known(p.slow_min_requests) {
                    siblings.push((i, avg));
                }
            }
            if factor > 0.0 && siblings.len() >= 2 {
                for (i, avg, median) in outliers(&siblings, factor, floor) {
                    if load.eject(i, &passive) {
                        rec.endpoints_real[i].reset();
                        let endpoint = &*load.endpoints[i].key;
                        tracing::warn!(target: "georouter::health", region = %name, endpoint, real_ms = (avg * 1000.0).round(), siblings_ms = (median * 1000.0).round(), "endpoint out of rotation: far slower than its siblings on real requests");
                        self.state
                            .metrics
                            .regions
                            .endpoint_ejections
                            .with_label_values(&[name.as_str(), endpoint])
                            .inc();
                    }
                }
            }
            if !rec.machine.serving() {
                // Measured afresh when it is back.
                rec.real.reset();
                rec.slow = false;
                continue;
            }
            if let Some(real) = rec.real.known(p.slow_min_requests) {
                known.push((name.clone(), real));
            }
        }
        let slow = if factor > 0.0 && known.len() >= 2 {
            outliers(&known, factor, floor)
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        for (name, rec) in health.regions.iter_mut() {
            let found = slow.iter().find(|(n, ..)| n == name);
            match (found, rec.slow) {
                (Some((_, real, median)), was) => {
                    let why = format!(
                        "slow: real requests take {:.0} ms, {:.1} times its peers' median of {:.0} ms",
                        real * 1000.0,
                        real / median.max(1e-6),
                        median * 1000.0
                    );
                    if !was {
                        rec.slow = true;
                        tracing::warn!(target: "georouter::health", region = %name, %why, "region far slower than its peers on real requests");
                        self.state
                            .metrics
                            .regions
                            .latency_outliers
                            .with_label_values(&[name.as_str()])
                            .inc();
                    }
                    out.push((name.clone(), why));
                }
                (None, true) => {
                    rec.slow = false;
                    tracing::info!(target: "georouter::health", region = %name, "region no longer far slower than its peers on real requests");
                }
                (None, false) => {}
            }
        }
        out
    }
}

/// The regions out of service here by health: the fleet's drain guard counts
/// none of them as serving.
fn down_here(health: &Health) -> std::collections::BTreeSet<String> {
    health
        .regions
        .iter()
        .filter(|(_, r)| !r.machine.serving())
        .map(|(name, _)| name.to_string())
        .collect()
}

/// A jurisdiction left with no serving region (by health and drains) gets
/// back those of its regions that only the router's damping keeps out (held
/// down for flapping, ejected): refusing every resident is worse than serving
/// them through a region that flapped. Regions down by their checks stay down.
fn waive_last_of_jurisdictions(
    health: &mut Health,
    drained: impl Fn(&str) -> bool,
    now: Instant,
    transitions: &mut Vec<(RegionName, Transition)>,
) {
    let table = health.table.clone();
    for j in table.jurisdictions() {
        let undrained: Vec<&RegionName> = j
            .regions
            .iter()
            .map(|&id| &table.region(id).name)
            .filter(|name| !drained(name.as_str()))
            .collect();
        let serving = undrained.iter().any(|name| {
            health
                .regions
                .get(*name)
                .is_some_and(|r| r.machine.serving())
        });
        if serving {
            continue;
        }
        // Those held down for flapping first (their checks pass); ejected ones
        // only when none is.
        let held = |name: &&RegionName| {
            health
                .regions
                .get(*name)
                .is_some_and(|r| matches!(r.machine.phase(), Phase::HeldDown { .. }))
        };
        let any_held = undrained.iter().any(held);
        let chosen: Vec<RegionName> = undrained
            .into_iter()
            .filter(|name| !any_held || held(name))
            .cloned()
            .collect();
        for name in chosen {
            let Some(rec) = health.regions.get_mut(&name) else {
                continue;
            };
            let why = format!(
                "back early: the only region of jurisdiction {} that can serve (the rest are down or drained)",
                j.name
            );
            if let Some(t) = rec.machine.waive(now, why) {
                transitions.push((name, t));
            }
        }
    }
}

/// The members of `known` (name, average) whose average is above `floor`
/// and `factor` times the median of the others', with that median.
fn outliers<T: Clone + PartialEq>(
    known: &[(T, f64)],
    factor: f64,
    floor: f64,
) -> Vec<(T, f64, f64)> {
    let mut out = Vec::new();
    for (name, real) in known {
        let mut peers: Vec<f64> = known
            .iter()
            .filter(|(n, _)| n != name)
            .map(|(_, r)| *r)
            .collect();
        peers.sort_by(f64::total_cmp);
        let median = peers[peers.len() / 2];
        if *real > floor && *real > factor * median {
            out.push((name.clone(), *real, median));
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
