//! The control plane: runs each region's health checks, reads passive failures
//! from traffic, keeps drains, reloads the policy, and publishes every change as a
//! new region-state snapshot. All of it under one mutex that the data plane never
//! touches: requests read the published snapshots.

pub mod drains;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::accounting::{Accounts, RegionAccount};
use crate::auth::{AdminAuth, AuthError};
use crate::config::{Config, HealthCheck, LoadError, RegionName};
use crate::health::check::{self, Outcome};
use crate::health::machine::{Limits, Machine, Phase, Transition};
use crate::regions::{RegionState, RegionStates};
use crate::server::Shutdown;
use crate::table::{RoutingTable, TableError};
use crate::State;
use drains::{Drain, Drains, StateFileError};

/// How often time-driven changes (ejections ending, slow-start ramps) are looked at.
const TICK: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no policy file to reload from (the router was started without one)")]
    NoFile,
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("admin tokens: {0}")]
    Auth(#[from] AuthError),
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("no region {0:?} in the policy")]
    UnknownRegion(String),
    #[error("{region} is the last serving region of jurisdiction {jurisdiction}: draining it would refuse every resident; add force=true to drain it anyway")]
    LastInJurisdiction {
        region: String,
        jurisdiction: String,
    },
}

/// What starting the control plane needs besides the state.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// The policy file, for reloads.
    pub config_path: Option<PathBuf>,
    /// A mutating admin token given on the command line (the demo's `--admin-token`).
    pub admin_token: Option<String>,
}

/// One region as the control plane tracks it.
#[derive(Debug)]
struct Record {
    machine: Machine,
    check: HealthCheck,
    account: Arc<RegionAccount>,
    /// Moving average of check round trips, in seconds.
    rtt: Option<f64>,
    /// What latency steering sees: moves only past the hysteresis margin.
    published_rtt: Option<Duration>,
    /// The weight in the snapshot in service: a ramp's last step must be published too.
    published_weight: u16,
    /// Whether the snapshot in service has it serving.
    published_serving: bool,
    checked: bool,
}

impl Record {
    fn new(check: HealthCheck, account: Arc<RegionAccount>) -> Self {
        Record {
            machine: Machine::new(),
            check,
            account,
            rtt: None,
            published_rtt: None,
            published_weight: 1000,
            published_serving: true,
            checked: false,
        }
    }
}

struct Inner {
    table: Arc<RoutingTable>,
    config: Arc<Config>,
    regions: HashMap<RegionName, Record>,
    checkers: Vec<AbortHandle>,
    drains: Drains,
}

/// The control plane of one router.
pub struct Control {
    state: Arc<State>,
    inner: Mutex<Inner>,
    options: Options,
    auth: ArcSwap<AdminAuth>,
    ready: AtomicBool,
    generation: AtomicU64,
    shutdown: Shutdown,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    StateFile(#[from] StateFileError),
    #[error("admin tokens: {0}")]
    Auth(#[from] AuthError),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn limits(config: &Config, check: &HealthCheck) -> Limits {
    Limits {
        rise: check.rise,
        fall: check.fall,
        passive: config.health.passive,
        failback: config.health.failback,
    }
}

/// What [`Control::start`] would refuse, checked without starting anything
/// (`georouter check` runs it): the admin tokens and the drain state file.
pub fn preflight(config: &Config, options: &Options) -> Result<(), StartError> {
    AdminAuth::from_settings(&config.admin, options.admin_token.as_deref())?;
    Drains::load(config.admin.state_file.as_deref())?;
    Ok(())
}

impl Control {
    /// Starts the control plane over a state whose table is in service: reapplies
    /// drains from the state file, starts health checks, the passive-detection and
    /// ramp loop, and the policy file watch. Tasks run on the current runtime
    /// until `shutdown` fires.
    pub fn start(
        state: Arc<State>,
        options: Options,
        shutdown: Shutdown,
    ) -> Result<Arc<Control>, StartError> {
        let config = state.config.load_full();
        let current = state.routing.load_full();
        let table = current.table.clone();
        let auth = AdminAuth::from_settings(&config.admin, options.admin_token.as_deref())?;
        let drains = Drains::load(config.admin.state_file.as_deref())?;
        for (region, d) in drains.iter() {
            tracing::info!(target: "georouter::audit", %region, reason = %d.reason, by = %d.by, "drain reapplied from the state file");
        }
        let regions = table
            .regions()
            .iter()
            .zip(current.accounts.all())
            .zip(&config.regions)
            .map(|((r, a), spec)| (r.name.clone(), Record::new(spec.health.clone(), a.clone())))
            .collect();
        let control = Arc::new(Control {
            inner: Mutex::new(Inner {
                table,
                config,
                regions,
                checkers: Vec::new(),
                drains,
            }),
            auth: ArcSwap::from_pointee(auth),
            ready: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            options,
            shutdown,
            state,
        });
        control.state.metrics.config_generation.set(1);
        {
            let mut inner = control.lock();
            control.publish(&mut inner);
            control.restart_checkers(&mut inner);
            control.update_ready(&inner);
        }
        tokio::spawn(control.clone().run_ticks());
        let watch = control.lock().config.reload.watch;
        if let (Some(path), true) = (control.options.config_path.clone(), watch) {
            tokio::spawn(control.clone().watch_file(path));
        }
        Ok(control)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock is a bug; the data is still consistent enough to serve.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub fn auth(&self) -> arc_swap::Guard<Arc<AdminAuth>> {
        self.auth.load()
    }

    /// Ready once every region with checks has had its first one.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn update_ready(&self, inner: &Inner) {
        let all = inner
            .regions
            .values()
            .all(|r| r.checked || !r.check.enabled);
        if all && !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!("ready: every region has been checked");
        }
    }

    /// Builds the region states for the current table and swaps both in, as one
    /// snapshot.
    fn publish(&self, inner: &mut Inner) {
        let now = Instant::now();
        let m = &self.state.metrics;
        let slow_start = inner.config.health.failback.slow_start;
        let mut states = Vec::with_capacity(inner.table.regions().len());
        let mut accounts = Vec::with_capacity(states.capacity());
        let table = inner.table.clone();
        for region in table.regions() {
            let drained = inner.drains.get(region.name.as_str()).is_some();
            let Some(rec) = inner.regions.get_mut(&region.name) else {
                continue;
            };
            rec.published_weight = rec.machine.weight(now, slow_start);
            let s = RegionState {
                healthy: rec.machine.serving(),
                drained,
                weight: rec.published_weight,
                rtt: rec.published_rtt,
            };
            if rec.published_serving && !s.serving() {
                // Requests waiting on it that can go elsewhere go now.
                rec.account.leave_service();
            }
            rec.published_serving = s.serving();
            let n = [region.name.as_str()];
            m.region_healthy
                .with_label_values(&n)
                .set(i64::from(s.healthy));
            m.region_drained
                .with_label_values(&n)
                .set(i64::from(s.drained));
            m.region_weight
                .with_label_values(&n)
                .set(f64::from(s.weight) / 1000.0);
            if let Some(rtt) = rec.rtt {
                m.region_rtt.with_label_values(&n).set(rtt);
            }
            states.push(s);
            accounts.push(rec.account.clone());
        }
        for j in inner.table.jurisdictions() {
            let serving = j
                .regions
                .iter()
                .filter(|id| states[usize::from(id.0)].serving())
                .count();
            m.jurisdiction_serving
                .with_label_values(&[&*j.name])
                .set(serving as i64);
        }
        let previous = self.state.routing.load();
        let accounts = Accounts::new(&table, accounts, Some(&previous.accounts));
        let states = RegionStates::new(&table, states);
        self.state
            .routing
            .store(Arc::new(crate::snapshot::Snapshot {
                table,
                states,
                accounts,
            }));
    }

    fn transition(&self, region: &RegionName, t: &Transition) {
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
        self.passive_ejections(&mut inner, now, &mut transitions);
        for (name, rec) in inner.regions.iter_mut() {
            let limits = limits(&config, &rec.check);
            if let Some(t) = rec.machine.tick(now, &limits) {
                transitions.push((name.clone(), t));
            }
            changed |=
                rec.machine.weight(now, config.health.failback.slow_start) != rec.published_weight;
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
        transitions: &mut Vec<(RegionName, Transition)>,
    ) {
        let tripped: Vec<(RegionName, crate::accounting::FailureKind)> = inner
            .regions
            .iter()
            .filter_map(|(name, rec)| Some((name.clone(), rec.account.take_tripped()?)))
            .collect();
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
                    tracing::warn!(target: "georouter::health", region = %name, last = kind.as_str(), why = %capped, suppressed, "passive ejection refused: too many regions failing at once points at the router or its network; serving through them");
                }
                continue;
            }
            let limits = limits(&config, &rec.check);
            if let Some(t) = rec.machine.passive_failure(now, kind.as_str(), &limits) {
                out[usize::from(region.id.0)] = true;
                transitions.push((name, t));
            }
        }
    }

    async fn run_ticks(self: Arc<Self>) {
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

    fn restart_checkers(self: &Arc<Self>, inner: &mut Inner) {
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
                    let outcome = tokio::select! {
                        o = check::run(region, &check) => o,
                        _ = shutdown.changed() => return,
                    };
                    control.report(&region.name, outcome);
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

    /// Loads the policy file again and swaps it in, or keeps the one in service
    /// and says why. Health, drains and RTT history carry over by region name.
    pub fn reload(self: &Arc<Self>, trigger: &str) -> Result<u64, ReloadError> {
        let result = self.try_reload();
        let m = &self.state.metrics;
        match &result {
            Ok(generation) => {
                m.config_reloads.with_label_values(&["success"]).inc();
                m.config_generation.set(*generation as i64);
                tracing::info!(%trigger, generation, "policy reloaded");
            }
            Err(e) => {
                m.config_reloads.with_label_values(&["failure"]).inc();
                tracing::error!(%trigger, error = %e, "policy reload rejected; the previous policy keeps serving");
            }
        }
        result
    }

    fn try_reload(self: &Arc<Self>) -> Result<u64, ReloadError> {
        let path = self
            .options
            .config_path
            .as_ref()
            .ok_or(ReloadError::NoFile)?;
        let config = Config::load(path)?;
        let table = RoutingTable::compile(&config)?;
        let auth = AdminAuth::from_settings(&config.admin, self.options.admin_token.as_deref())?;
        let mut inner = self.lock();
        for (what, old, new) in [
            (
                "listeners",
                format!("{:?}", inner.config.listeners),
                format!("{:?}", config.listeners),
            ),
            (
                "admin.address",
                inner.config.admin.address.to_string(),
                config.admin.address.to_string(),
            ),
            (
                "server",
                format!("{:?}", inner.config.server),
                format!("{:?}", config.server),
            ),
        ] {
            if old != new {
                tracing::warn!(
                    section = what,
                    "changed in the policy file; it takes effect at the next restart"
                );
            }
        }
        let mut regions = HashMap::new();
        for spec in &config.regions {
            let rec = match inner.regions.remove(&spec.name) {
                Some(mut rec) => {
                    rec.check = spec.health.clone();
                    rec
                }
                None => Record::new(
                    spec.health.clone(),
                    Arc::new(RegionAccount::new(spec.name.clone(), &self.state.metrics)),
                ),
            };
            regions.insert(spec.name.clone(), rec);
        }
        for gone in inner.regions.keys() {
            tracing::info!(region = %gone, "region left the policy");
            self.state.metrics.forget_region(gone.as_str());
        }
        let table = Arc::new(table);
        let config = Arc::new(config);
        inner.regions = regions;
        inner.table = table.clone();
        inner.config = config.clone();
        // The table and its states go out as one snapshot: no request sees the new
        // table with the old states, or the other way round.
        self.publish(&mut inner);
        self.state.config.store(config);
        self.auth.store(Arc::new(auth));
        self.restart_checkers(&mut inner);
        Ok(self.generation.fetch_add(1, Ordering::Relaxed) + 1)
    }

    async fn watch_file(self: Arc<Self>, path: PathBuf) {
        let mut shutdown = self.shutdown.clone();
        let mut seen = std::fs::read(&path).ok();
        loop {
            let every = self.lock().config.reload.watch_interval;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            let now = std::fs::read(&path).ok();
            if now.is_some() && now != seen {
                seen = now;
                let _ = self.reload("file change");
            }
        }
    }

    /// Drains a region (`Some(reason)`) or undrains it (`None`).
    pub fn set_drain(
        &self,
        region: &str,
        drain: Option<(String, String)>,
        force: bool,
    ) -> Result<Option<StateFileError>, DrainError> {
        let mut inner = self.lock();
        let table = inner.table.clone();
        let Some(r) = table.region_by_name(region) else {
            return Err(DrainError::UnknownRegion(region.to_owned()));
        };
        let snapshot = self.state.routing.load();
        let states = &snapshot.states;
        if drain.is_some() && !force {
            if let Some(j) = &r.jurisdiction {
                let serving_here = states.get(&table, r.id).serving();
                let others = table.regions().iter().any(|o| {
                    o.id != r.id
                        && o.jurisdiction.as_ref() == Some(j)
                        && states.get(&table, o.id).serving()
                });
                if serving_here && !others {
                    return Err(DrainError::LastInJurisdiction {
                        region: region.to_owned(),
                        jurisdiction: j.clone(),
                    });
                }
            }
        }
        let undrained = drain.is_none() && inner.drains.get(region).is_some();
        if undrained {
            if let Some(rec) = inner.regions.get_mut(&r.name) {
                rec.machine.begin_ramp(Instant::now());
            }
        }
        let entry = drain.map(|(reason, by)| Drain {
            reason,
            by,
            since: unix_now(),
        });
        let persisted = inner.drains.set(region, entry).err();
        self.publish(&mut inner);
        Ok(persisted)
    }

    /// What `GET /regions` shows.
    pub fn regions(&self) -> Vec<RegionView> {
        let inner = self.lock();
        let snapshot = self.state.routing.load();
        let states = &snapshot.states;
        let now = Instant::now();
        let wall = SystemTime::now();
        inner
            .table
            .regions()
            .iter()
            .map(|r| {
                let rec = &inner.regions[&r.name];
                let s = states.get(&inner.table, r.id);
                let drain = inner.drains.get(r.name.as_str());
                RegionView {
                    name: r.name.to_string(),
                    jurisdiction: r.jurisdiction.clone(),
                    phase: rec.machine.phase().name(),
                    healthy: s.healthy,
                    drained: s.drained,
                    drain_reason: drain.map(|d| d.reason.clone()),
                    drained_by: drain.map(|d| d.by.clone()),
                    serving: s.serving(),
                    weight: f64::from(s.weight) / 1000.0,
                    rtt_ms: rec.rtt.map(|v| (v * 1e5).round() / 100.0),
                    health_checks: rec.check.enabled,
                    requests: rec.account.served(),
                    upstream_errors: rec.account.errors(),
                    last_transition: rec.machine.last_transition().map(|(at, t)| {
                        let ago = now.saturating_duration_since(*at);
                        TransitionView {
                            at: (wall - ago)
                                .duration_since(UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs()),
                            seconds_ago: ago.as_secs(),
                            from: t.from.name(),
                            to: t.to.name(),
                            cause: t.cause.clone(),
                        }
                    }),
                    endpoints: r
                        .endpoints
                        .iter()
                        .map(|e| format!("{}://{}", e.scheme, e.authority))
                        .collect(),
                }
            })
            .collect()
    }
}

fn jittered(interval: Duration, jitter: f64) -> Duration {
    if jitter == 0.0 {
        return interval;
    }
    let f = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
    interval.mul_f64(f)
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
    pub serving: bool,
    pub weight: f64,
    pub rtt_ms: Option<f64>,
    pub health_checks: bool,
    /// Responses served since the region entered the policy.
    pub requests: u64,
    /// Failed attempts (connect, timeout, reset, 5xx) since then.
    pub upstream_errors: u64,
    pub last_transition: Option<TransitionView>,
    pub endpoints: Vec<String>,
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
