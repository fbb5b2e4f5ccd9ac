//! The control plane: its owners (health: a record per region and the
//! checkers; drains: the store and its writer; the policy in service: config,
//! admin tokens, generation) and how a change goes out, as one new snapshot of
//! table, region states and accounts built by a pure function. Each owner has
//! its own lock, which the data plane never touches and no `.await` holds;
//! where two are taken, in this order: publishing, health, drains.

pub(crate) mod auth;
mod drain_keeper;
mod draining;
mod fleet;
pub(crate) mod health;
mod journal;
mod monitor;
pub(crate) mod publish;
mod record;
mod reload;
mod report;

pub use draining::{DrainError, Drained};
pub use journal::Event;
pub use reload::{restart_only_changes, ReloadError};
pub use report::{EndpointReport, LoadReport, RegionReport};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::config::{Config, HealthCheck, RegionName};
use crate::control::auth::{AdminAuth, AuthError};
use crate::control::health::machine::{Limits, Phase};
use crate::control::health::Health;
use crate::drains::{DrainStore, Drains, StateFileError};
use crate::edge::server::Shutdown;
use crate::routing::table::RoutingTable;
use crate::routing::State;
use drain_keeper::{Book, DrainKeeper};
use record::Record;

/// What starting the control plane needs besides the state.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// The policy file, for reloads.
    pub config_path: Option<PathBuf>,
    /// What the command line set over the policy file (kept at reloads).
    pub overrides: crate::config::Overrides,
    /// A mutating admin token given on the command line (the demo's `--admin-token`).
    pub admin_token: Option<String>,
    /// The config is the fleet policy accepted at this etcd revision (kept
    /// from before a restart); 0: the bootstrap file.
    pub fleet_policy_revision: i64,
    /// Where `[fleet]` keeps its state instead of its etcd endpoints (an
    /// in-memory store in tests); `None`: etcd.
    pub fleet_store: Option<Arc<dyn crate::fleet::store::FleetStore>>,
}

/// The control plane of one router.
pub struct Control {
    /// What requests read; its `config` is the policy in service.
    state: Arc<State>,
    /// Region health, owned by the monitor (and replaced by reloads).
    health: Mutex<Health>,
    /// Drains, owned by the drain paths and the fleet's follower.
    drains: DrainKeeper,
    /// Held while a snapshot is built and swapped in: one publisher at a
    /// time, each reading every owner's newest state.
    publishing: Mutex<()>,
    options: Options,
    auth: ArcSwap<AdminAuth>,
    ready: AtomicBool,
    generation: AtomicU64,
    shutdown: Shutdown,
    /// This router's membership of a fleet (`[fleet]`).
    fleet: Option<Arc<crate::fleet::Fleet>>,
    /// What the policy file says of the sections read only at start, when it
    /// differs from what is in service (TOML; empty: nothing waits).
    pending_restart: Mutex<String>,
    /// This instance's own state file (its start policy's), where a fleet
    /// policy it accepts is kept too.
    state_file: Option<PathBuf>,
    /// Recent health transitions, drains and reloads, for the status page.
    journal: journal::Journal,
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
    #[error("fleet: {0}")]
    Fleet(#[from] crate::fleet::etcd::EtcdError),
}

/// Whether `region` is drained in `snapshot` (by name: the table may be older).
fn was_drained(snapshot: &crate::routing::snapshot::Snapshot, region: &str) -> bool {
    let table = &snapshot.table;
    table
        .region_by_name(region)
        .is_some_and(|r| snapshot.states.get(table, r.id).drained)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic under a lock is a bug; the data is still consistent enough to serve.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn limits(config: &Config, check: &HealthCheck) -> Limits {
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
    Drains::check_writable(config.admin.state_file.as_deref())?;
    Ok(())
}

/// Each strict jurisdiction's name and regions, for the apply-side drain guard.
pub(crate) fn fences(table: &RoutingTable) -> crate::drains::Fences {
    table
        .jurisdictions()
        .iter()
        .filter(|j| j.strict)
        .map(|j| {
            (
                j.name.to_string(),
                j.regions
                    .iter()
                    .map(|&id| table.region(id).name.to_string())
                    .collect(),
            )
        })
        .collect()
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
        let state_file = config.admin.state_file.clone();
        let current = state.routing.load_full();
        let table = current.table.clone();
        let auth = AdminAuth::from_settings(&config.admin, options.admin_token.as_deref())?;
        let file = Drains::load(config.admin.state_file.as_deref())?;
        Drains::check_writable(config.admin.state_file.as_deref())?;
        let fleet = match &config.fleet {
            Some(settings) => Some(Arc::new(match &options.fleet_store {
                Some(store) => {
                    crate::fleet::Fleet::with_store(settings, Some(&state.metrics), store.clone())
                }
                None => crate::fleet::Fleet::new(settings, Some(&state.metrics))?,
            })),
            None => None,
        };
        let mut book = match fleet {
            Some(_) => Book::Fleet(crate::fleet::book::FleetBook::new(file)),
            None => Book::Local(file),
        };
        let drains: &mut dyn DrainStore = match &mut book {
            Book::Fleet(b) => b,
            Book::Local(d) => d,
        };
        for (region, d) in drains.iter() {
            tracing::info!(target: "georouter::audit", %region, reason = %d.reason, by = %d.by, "drain reapplied from the state file");
        }
        drains.set_fences(fences(&table));
        if let Some(f) = &fleet {
            f.remember_epoch(drains.fleet_epoch());
            if options.fleet_policy_revision > 0 {
                f.set_policy(options.fleet_policy_revision, Ok(()));
            }
        }
        let mut regions: HashMap<RegionName, Record> = table
            .regions()
            .iter()
            .zip(current.accounts.all())
            .zip(&config.regions)
            .map(|((r, a), spec)| (r.name.clone(), Record::new(spec.health.clone(), a.clone())))
            .collect();
        for (region, scale) in drains.scales() {
            let name = RegionName::new(&region);
            if let Some(rec) = regions.remove(&name) {
                tracing::info!(target: "georouter::audit", %region, keep = scale.keep, by = %scale.by, scope = scale.scope.as_str(), "partial drain reapplied from the state file");
                regions.insert(name, rec.with_scale(Some(scale)));
            }
        }
        let control = Arc::new(Control {
            health: Mutex::new(Health {
                table,
                regions,
                checkers: Vec::new(),
            }),
            drains: DrainKeeper::new(book),
            publishing: Mutex::new(()),
            auth: ArcSwap::from_pointee(auth),
            ready: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            options,
            shutdown,
            state,
            fleet,
            pending_restart: Mutex::new(String::new()),
            state_file,
            journal: journal::Journal::default(),
        });
        control.state.metrics.control.config_generation.set(1);
        crate::routing::accounting::export_known_series(
            &control.state.metrics,
            &control.health().table,
        );
        control.publish();
        control.restart_checkers(&mut control.health());
        control.update_ready(&control.health());
        tokio::spawn(control.clone().run_ticks());
        if let Some(fleet) = control.fleet.clone() {
            control.start_fleet(&fleet);
        }
        let from_fleet = control.fleet.as_ref().is_some_and(|f| f.settings.policy);
        let watch = config.reload.watch && !from_fleet;
        if let (Some(path), true) = (control.options.config_path.clone(), watch) {
            tokio::spawn(control.clone().watch_file(path));
        }
        Ok(control)
    }

    /// Region health (taken before the drains' lock, never after it).
    pub(crate) fn health(&self) -> MutexGuard<'_, Health> {
        lock(&self.health)
    }

    /// The policy in service.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.state.config.load_full()
    }

    /// Whether `region` is in the policy in service: a drain of any other
    /// name is neither applied nor written to the state file.
    pub(crate) fn knows_region(&self, region: &str) -> bool {
        self.state
            .routing
            .load()
            .table
            .region_by_name(region)
            .is_some()
    }

    /// Whether `region` is drained here (by the drains' owner, now).
    pub(crate) fn drained(&self, region: &str) -> bool {
        self.drains.read(|d| d.get(region).is_some())
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// What a restart would change (TOML of the policy file's restart-only
    /// sections that differ from what is in service; empty: nothing).
    pub fn pending_restart(&self) -> String {
        self.pending_restart
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// This router's fleet, when it is in one.
    pub fn fleet(&self) -> Option<&Arc<crate::fleet::Fleet>> {
        self.fleet.as_ref()
    }

    pub fn auth(&self) -> arc_swap::Guard<Arc<AdminAuth>> {
        self.auth.load()
    }

    /// Recent health transitions, drains and reloads, newest first.
    pub fn events(&self) -> Vec<Event> {
        self.journal.recent()
    }

    /// The policy's generation in service (1 at start, +1 a reload).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Ready once every region with checks has had its first one.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn update_ready(&self, health: &Health) {
        let all = health
            .regions
            .values()
            .all(|r| r.checked || !r.check.enabled);
        if all && !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!("ready: every region has been checked");
        }
    }

    /// Builds the region states for the current table and swaps both in, as one
    /// snapshot. The caller holds no owner's lock.
    pub(crate) fn publish(&self) {
        let publishing = lock(&self.publishing);
        self.publish_while(&publishing);
    }

    /// [`Control::publish`] for a caller that holds the publishing lock (a
    /// reload, which swaps the table and its records first).
    fn publish_while(&self, _publishing: &MutexGuard<'_, ()>) {
        let now = Instant::now();
        let slow_start = self.state.config.load().health.failback.slow_start;
        let mut records = self.health();
        let table = records.table.clone();
        let (drained, refused) = self.drains.read(|d| {
            let drained: Vec<bool> = table
                .regions()
                .iter()
                .map(|r| d.get(r.name.as_str()).is_some())
                .collect();
            (drained, d.refused())
        });
        let previous = self.state.routing.load();
        let health: Vec<publish::Health> = table
            .regions()
            .iter()
            .zip(&drained)
            .filter_map(|(region, &drained)| {
                let rec = records.regions.get_mut(&region.name)?;
                if !drained && was_drained(&previous, region.name.as_str()) {
                    // Undrained, by whichever path: it ramps back.
                    rec.machine.begin_ramp(now);
                }
                rec.published_weight = rec.weight(now, slow_start);
                Some(publish::Health {
                    serving: rec.machine.serving(),
                    held_down: matches!(rec.machine.phase(), Phase::HeldDown { .. }),
                    weight: rec.published_weight,
                    rtt: rec.published_rtt,
                    account: rec.account.clone(),
                })
            })
            .collect();
        if health.len() != table.regions().len() {
            // Records are made with the table they serve; never published half.
            tracing::error!("a region of the table in service has no health record; not published");
            return;
        }
        let next = publish::snapshot(
            table.clone(),
            &health,
            |r| {
                table
                    .region_by_name(r)
                    .is_some_and(|r| drained[usize::from(r.id.0)])
            },
            Some(&previous.accounts),
        );
        self.published(&mut records, &next, &refused);
        drop(records);
        self.state.routing.store(Arc::new(next));
    }

    /// What a new snapshot changes besides the requests: waiting requests of a
    /// region that left service go elsewhere; the gauges.
    fn published(
        &self,
        health: &mut Health,
        next: &crate::routing::snapshot::Snapshot,
        refused: &[(String, String)],
    ) {
        let m = &self.state.metrics;
        for region in next.table.regions() {
            let s = next.states.get(&next.table, region.id);
            let Some(rec) = health.regions.get_mut(&region.name) else {
                continue;
            };
            if rec.published_serving && !s.serving() {
                // Requests waiting on it that can go elsewhere go now.
                rec.account.leave_service();
            }
            rec.published_serving = s.serving();
            let n = [region.name.as_str()];
            m.regions
                .healthy
                .with_label_values(&n)
                .set(i64::from(s.healthy));
            m.regions
                .drained
                .with_label_values(&n)
                .set(i64::from(s.drained));
            m.regions.drain_refused.with_label_values(&n).set(i64::from(
                refused.iter().any(|(r, _)| *r == region.name.as_str()),
            ));
            m.regions
                .weight
                .with_label_values(&n)
                .set(f64::from(s.weight) / 1000.0);
            if let Some(rtt) = rec.rtt {
                m.regions.rtt.with_label_values(&n).set(rtt);
            }
        }
        let serving = publish::serving_by_jurisdiction(next);
        for (j, n) in next.table.jurisdictions().iter().zip(serving) {
            m.regions
                .jurisdiction_serving
                .with_label_values(&[&*j.name])
                .set(n as i64);
        }
    }

    /// Whether the admin API answers a request with this `Host`: an IP
    /// literal, localhost, or a name in `admin.hosts`, with any port.
    pub fn admin_host_allowed(&self, host: &[u8]) -> bool {
        let Ok(host) = std::str::from_utf8(host) else {
            return false;
        };
        let host = host.trim();
        if host.starts_with('[') {
            return host
                .split_once(']')
                .is_some_and(|(ip, _)| ip[1..].parse::<std::net::Ipv6Addr>().is_ok());
        }
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        let name = name.trim_end_matches('.');
        name.parse::<std::net::IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self
                .state
                .config
                .load()
                .admin
                .hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
    }
}
