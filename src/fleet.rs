//! A fleet of routers sharing drains through etcd: writing a drain (with the
//! last-serving-region guard as one etcd transaction), reading the fleet's
//! intents, each instance's acknowledgement on its lease, and the fleet's
//! status. The control plane runs the watch and the heartbeat
//! (`control/fleet.rs`); the CLI talks to etcd through this module directly.

pub(crate) mod book;
pub mod cli;
pub(crate) mod etcd;
pub(crate) mod keys;
pub mod store;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{Gauge, IntGauge};
use serde::Serialize;

use crate::config::FleetSettings;
use crate::drains::Intent;
use crate::metrics::Metrics;
use etcd::{Etcd, EtcdError};
use keys::{FleetDrain, FleetScale, InstanceRecord, Keys, Rejection};
use store::{FleetStore, Op, Unchanged};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("{region} is the last serving region of jurisdiction {jurisdiction} across the fleet: draining it would refuse every resident; add force=true to drain it anyway")]
    LastInJurisdiction {
        region: String,
        jurisdiction: String,
    },
    #[error("the drains of jurisdiction {0} kept changing under this call; try again")]
    Contended(String),
}

/// What the fleet-wide guard needs to know of a region: its jurisdiction's
/// regions (the keys the transaction guards) and which of them this router
/// sees healthy.
#[derive(Debug, Clone)]
pub struct Guard {
    pub jurisdiction: String,
    /// Every region of the jurisdiction, with whether it is healthy here.
    pub regions: Vec<(String, bool)>,
}

/// The fleet's gauges (registered only when `[fleet]` is set).
#[derive(Debug, Clone)]
pub struct FleetMetrics {
    pub connected: IntGauge,
    pub instances: IntGauge,
    pub applied_revision: IntGauge,
    pub lag_seconds: Gauge,
    pub leases_lost: prometheus::IntCounter,
    pub history_changed: IntGauge,
}

impl FleetMetrics {
    fn register(metrics: &Metrics) -> Self {
        let int = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric options are valid");
            metrics
                .registry()
                .register(Box::new(g.clone()))
                .expect("metric names are unique");
            g
        };
        let lag = Gauge::new(
            "georouter_fleet_lag_seconds",
            "Seconds since this instance last knew it had every drain of the fleet (0 while connected).",
        )
        .expect("metric options are valid");
        metrics
            .registry()
            .register(Box::new(lag.clone()))
            .expect("metric names are unique");
        FleetMetrics {
            connected: int(
                "georouter_fleet_connected",
                "1 while this instance reads the fleet's drains from etcd live.",
            ),
            instances: int(
                "georouter_fleet_instances",
                "Instances of the fleet alive in etcd (their leases renewed).",
            ),
            applied_revision: int(
                "georouter_fleet_applied_revision",
                "The etcd revision of the last fleet drain change this instance applied.",
            ),
            lag_seconds: lag,
            history_changed: int(
                "georouter_fleet_history_changed",
                "1 when the fleet's epoch in etcd is gone or changed (data loss, a restore from backup): nothing from etcd is applied until `georouter fleet restore`.",
            ),
            leases_lost: {
                let c = prometheus::IntCounter::new(
                    "georouter_fleet_leases_lost_total",
                    "Times this instance's lease expired or was refused and it registered again (its record vanished meanwhile).",
                )
                .expect("metric options are valid");
                metrics
                    .registry()
                    .register(Box::new(c.clone()))
                    .expect("metric names are unique");
                c
            },
        }
    }
}

/// The drain keys of a fleet as one read found them.
#[derive(Debug, Clone, Default)]
pub struct DrainRead {
    pub revision: i64,
    /// Readable records, with their revision.
    pub good: BTreeMap<String, (FleetDrain, i64)>,
    /// Unreadable values: revision and why. Their regions keep the drain
    /// last applied, on a watching instance and a restarted one alike.
    pub bad: BTreeMap<String, (i64, String)>,
}

/// One router's membership of a fleet.
#[derive(Debug)]
pub struct Fleet {
    /// Where the fleet's state lives: etcd, or memory in unit tests.
    pub store: std::sync::Arc<dyn FleetStore>,
    pub keys: Keys,
    pub settings: FleetSettings,
    pub metrics: Option<FleetMetrics>,
    connected: AtomicBool,
    applied: AtomicI64,
    /// When this instance last knew it was in step with the fleet.
    in_step_at: Mutex<std::time::Instant>,
    /// Wakes the heartbeat to publish a new acknowledgement.
    pub applied_changed: tokio::sync::Notify,
    /// Wakes the watch to start again (the heartbeat lost etcd).
    pub reset: tokio::sync::Notify,
    /// Instances seen alive, with when (for "gone").
    seen: Mutex<BTreeMap<String, u64>>,
    /// The fleet policy in service here, and the last one refused.
    policy: Mutex<(i64, Option<Rejection>)>,
    /// The fleet's epoch in the etcd history this instance follows.
    epoch: Mutex<Option<String>>,
    /// The epoch is gone or changed: nothing read from etcd is applied.
    history_changed: AtomicBool,
}

/// An instance as `GET /fleet` and `georouter fleet status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub instance: String,
    /// The fleet policy it serves (etcd revision; 0: its own file's).
    pub policy_revision: i64,
    pub policy_rejected: Option<Rejection>,
    pub applied_revision: i64,
    /// It has applied the fleet's latest drain change.
    pub in_step: bool,
    /// It follows another etcd history: not in step whatever its revisions.
    pub history_changed: bool,
    pub policy_generation: u64,
    pub seconds_since_report: f64,
    pub regions: BTreeMap<String, String>,
}

/// The fleet as etcd shows it now.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    pub prefix: String,
    /// The revision of the latest drain change (0: none yet).
    pub latest_drain_revision: i64,
    pub instances: Vec<InstanceView>,
    /// Instances this router saw alive before whose lease has since expired.
    pub gone: Vec<String>,
    /// The fleet's drain intents, by region.
    pub drains: BTreeMap<String, FleetDrain>,
    /// Drain keys whose value is not a readable record, and why: their
    /// regions keep the drain each instance last applied.
    pub malformed: BTreeMap<String, String>,
    /// The revision of the fleet's policy (0: none pushed).
    pub policy_revision: i64,
}

impl FleetStatus {
    /// What became of the fleet policy at `revision`: (applied, rejected with
    /// why, not yet) by instance.
    pub fn policy_outcome(
        &self,
        revision: i64,
    ) -> (Vec<String>, Vec<(String, String)>, Vec<String>) {
        let (mut applied, mut rejected, mut pending) = (Vec::new(), Vec::new(), Vec::new());
        for i in &self.instances {
            match &i.policy_rejected {
                Some(r) if r.revision >= revision => {
                    rejected.push((i.instance.clone(), r.errors.clone()))
                }
                _ if i.policy_revision >= revision => applied.push(i.instance.clone()),
                _ => pending.push(i.instance.clone()),
            }
        }
        (applied, rejected, pending)
    }

    /// Live instances that have not applied the latest drain change.
    pub fn lagging(&self) -> Vec<String> {
        self.instances
            .iter()
            .filter(|i| !i.in_step)
            .map(|i| i.instance.clone())
            .collect()
    }
}

impl Fleet {
    /// A fleet membership from `[fleet]`; `metrics`: the router's registry (a
    /// CLI call has none).
    pub fn new(settings: &FleetSettings, metrics: Option<&Metrics>) -> Result<Fleet, EtcdError> {
        let etcd = std::sync::Arc::new(Etcd::new(settings)?);
        Ok(Fleet::with_store(settings, metrics, etcd))
    }

    /// A fleet membership over `store` (an in-memory one in unit tests).
    pub fn with_store(
        settings: &FleetSettings,
        metrics: Option<&Metrics>,
        store: std::sync::Arc<dyn FleetStore>,
    ) -> Fleet {
        Fleet {
            store,
            keys: Keys::new(&settings.prefix),
            settings: settings.clone(),
            metrics: metrics.map(FleetMetrics::register),
            connected: AtomicBool::new(false),
            applied: AtomicI64::new(0),
            in_step_at: Mutex::new(std::time::Instant::now()),
            applied_changed: tokio::sync::Notify::new(),
            reset: tokio::sync::Notify::new(),
            seen: Mutex::new(BTreeMap::new()),
            policy: Mutex::new((0, None)),
            epoch: Mutex::new(None),
            history_changed: AtomicBool::new(false),
        }
    }

    /// The epoch this instance knew before (its state file).
    pub fn remember_epoch(&self, epoch: Option<String>) {
        if let Ok(mut e) = self.epoch.lock() {
            *e = epoch;
        }
    }

    pub fn epoch(&self) -> Option<String> {
        self.epoch.lock().ok().and_then(|e| e.clone())
    }

    /// etcd's history changed under this instance: it serves what it last
    /// applied and applies nothing from etcd until `georouter fleet restore`.
    pub fn history_changed(&self) -> bool {
        self.history_changed.load(Ordering::Acquire)
    }

    /// Checks the fleet's identity in etcd: a fleet without an epoch gets
    /// one (once, by a transaction); an instance that knew an epoch and finds
    /// it gone or changed stops applying etcd's state (and forgets the
    /// revisions of the old history).
    pub async fn check_epoch(&self) -> Result<(), EtcdError> {
        let key = self.keys.epoch();
        let read = |kvs: Vec<store::Kv>| {
            kvs.into_iter()
                .find(|kv| kv.key == key)
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        };
        let (_, kvs) = self.store.range_prefix(&key).await?;
        let mut found = read(kvs);
        let remembered = self.epoch();
        if remembered.is_none() && found.is_none() {
            let mine = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
            let op = Op::Put {
                key: key.clone(),
                value: mine.into_bytes(),
                lease: None,
            };
            let absent = Unchanged {
                key: key.clone(),
                mod_revision: 0,
            };
            self.store.txn(&[absent], &[op]).await?;
            let (_, kvs) = self.store.range_prefix(&key).await?;
            found = read(kvs);
        }
        match (remembered, found) {
            (None, Some(found)) => {
                self.remember_epoch(Some(found));
                Ok(())
            }
            (Some(r), Some(f)) if r == f => {
                if self.history_changed.swap(false, Ordering::AcqRel) {
                    tracing::info!(target: "georouter::fleet", epoch = %f, "the fleet's epoch is back in etcd: following it again");
                }
                self.set_history_gauge(false);
                Ok(())
            }
            (Some(remembered), found) => {
                if !self.history_changed.swap(true, Ordering::AcqRel) {
                    // Revisions of the old history compare with nothing now.
                    self.applied.store(0, Ordering::Release);
                    if let Ok(mut p) = self.policy.lock() {
                        *p = (0, None);
                    }
                    // Its record says so at once.
                    self.applied_changed.notify_one();
                }
                self.set_history_gauge(true);
                Err(EtcdError::HistoryChanged {
                    remembered,
                    found: found.map_or("gone".to_owned(), |f| format!("now {f}")),
                })
            }
            (None, None) => Err(EtcdError::Refused {
                call: "epoch",
                message: format!(
                    "{key} is absent and this instance could not write it; the operator writes it once (etcdctl put {key} \"$(openssl rand -hex 16)\"), see docs/fleet.md, etcd roles"
                ),
            }),
        }
    }

    fn set_history_gauge(&self, changed: bool) {
        if let Some(m) = &self.metrics {
            m.history_changed.set(i64::from(changed));
        }
    }

    pub fn instance(&self) -> &str {
        &self.settings.instance
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Marks the link to etcd up or down (and the gauges with it).
    pub fn set_connected(&self, up: bool) {
        let was = self.connected.swap(up, Ordering::AcqRel);
        if let Ok(mut at) = self.in_step_at.lock() {
            if up || was {
                *at = std::time::Instant::now();
            }
        }
        self.refresh_gauges();
        if was != up {
            if up {
                tracing::info!(target: "georouter::fleet", "connected to the fleet's etcd; drains are shared again");
            } else {
                tracing::warn!(target: "georouter::fleet", "lost the fleet's etcd: serving with the drains last applied; drains made now are held locally and reconciled when it is back");
            }
        }
    }

    /// The fleet policy in service here (its etcd revision; 0: the file's) and
    /// the last one refused.
    pub fn policy_state(&self) -> (i64, Option<Rejection>) {
        self.policy.lock().map(|p| p.clone()).unwrap_or((0, None))
    }

    /// Records what became of the fleet policy at `revision`.
    pub fn set_policy(&self, revision: i64, result: Result<(), String>) {
        if let Ok(mut p) = self.policy.lock() {
            match result {
                Ok(()) => p.0 = revision,
                Err(errors) => p.1 = Some(Rejection { revision, errors }),
            }
        }
        self.applied_changed.notify_one();
    }

    /// Writes a policy (already validated by the caller) for the fleet; its revision.
    pub async fn push_policy(&self, text: &str) -> Result<i64, EtcdError> {
        self.store
            .put(&self.keys.policy(), text.as_bytes(), None)
            .await
    }

    /// The revision of the last drain change applied here.
    pub fn applied(&self) -> i64 {
        self.applied.load(Ordering::Acquire)
    }

    pub fn set_applied(&self, revision: i64) {
        if self.applied.fetch_max(revision, Ordering::AcqRel) < revision {
            self.applied_changed.notify_one();
        }
        self.refresh_gauges();
    }

    /// Brings the gauges up to date (the lag grows while disconnected).
    pub fn refresh_gauges(&self) {
        let Some(m) = &self.metrics else { return };
        let up = self.connected();
        m.connected.set(i64::from(up));
        m.applied_revision.set(self.applied());
        let lag = match (up, self.in_step_at.lock()) {
            (false, Ok(at)) => at.elapsed().as_secs_f64(),
            _ => 0.0,
        };
        m.lag_seconds.set(lag);
    }

    /// Every drain intent of the fleet, and the revision it was read at.
    pub async fn drains(&self) -> Result<(i64, BTreeMap<String, (FleetDrain, i64)>), EtcdError> {
        let read = self.read_drains().await?;
        Ok((read.revision, read.good))
    }

    /// Every drain key of the fleet, read once: the good records and the
    /// unreadable ones (with their revision, so that a guarded write can
    /// still compare them, and why).
    pub async fn read_drains(&self) -> Result<DrainRead, EtcdError> {
        let dir = self.keys.drains();
        let (revision, kvs) = self.store.range_prefix(&dir).await?;
        let mut read = DrainRead {
            revision,
            good: BTreeMap::new(),
            bad: BTreeMap::new(),
        };
        for kv in kvs {
            let Some(region) = self.keys.name_in(&dir, &kv.key) else {
                continue;
            };
            match FleetDrain::read(&kv.value) {
                Ok(d) => {
                    read.good.insert(region.to_owned(), (d, kv.mod_revision));
                }
                Err(why) => {
                    tracing::warn!(target: "georouter::fleet", key = %kv.key, error = %why, "a drain in etcd is not readable; its region keeps the drain last applied");
                    read.bad.insert(region.to_owned(), (kv.mod_revision, why));
                }
            }
        }
        Ok(read)
    }

    /// Writes a drain intent for `region` to the fleet. With a `guard` (a drain
    /// that is not forced), the transaction holds only if no drain of the
    /// jurisdiction changed since it was read and a region of it still serves
    /// afterwards: two instances draining the last two regions at once cannot
    /// both succeed. Returns the revision of the change.
    pub async fn write_drain(
        &self,
        region: &str,
        intent: &Intent,
        guard: Option<&Guard>,
    ) -> Result<i64, FleetError> {
        let value = serde_json::to_vec(&FleetDrain::of(intent, self.instance()))
            .expect("a drain serialises");
        let op = Op::Put {
            key: self.keys.drain(region),
            value,
            lease: None,
        };
        let Some(guard) = guard.filter(|_| intent.drain.is_some()) else {
            let (_, revision) = self.store.txn(&[], &[op]).await?;
            return Ok(revision);
        };
        for _ in 0..8 {
            let read = self.read_drains().await?;
            let fleet = &read.good;
            // An unreadable value counts as drained: instances keep the drain
            // they last applied, which may be one.
            let drained =
                |r: &str| fleet.get(r).is_some_and(|(d, _)| d.drained) || read.bad.contains_key(r);
            let serving_after = guard
                .regions
                .iter()
                .any(|(r, healthy)| r != region && *healthy && !drained(r));
            let serving_now = guard
                .regions
                .iter()
                .any(|(r, healthy)| *healthy && !drained(r));
            if serving_now && !serving_after {
                return Err(FleetError::LastInJurisdiction {
                    region: region.to_owned(),
                    jurisdiction: guard.jurisdiction.clone(),
                });
            }
            let unchanged: Vec<Unchanged> = guard
                .regions
                .iter()
                .map(|(r, _)| Unchanged {
                    key: self.keys.drain(r),
                    // An unreadable value has a revision too: compared as it
                    // is, it cannot block every guarded drain of the region's
                    // jurisdiction.
                    mod_revision: fleet
                        .get(r.as_str())
                        .map(|(_, rev)| *rev)
                        .or_else(|| read.bad.get(r.as_str()).map(|(rev, _)| *rev))
                        .unwrap_or(0),
                })
                .collect();
            let (done, revision) = self
                .store
                .txn(&unchanged, std::slice::from_ref(&op))
                .await?;
            if done {
                return Ok(revision);
            }
        }
        Err(FleetError::Contended(guard.jurisdiction.clone()))
    }

    /// Writes a partial drain of `region` for the fleet; its revision.
    pub async fn write_scale(&self, region: &str, scale: &FleetScale) -> Result<i64, EtcdError> {
        let value = serde_json::to_vec(scale).expect("a scale serialises");
        self.store.put(&self.keys.scale(region), &value, None).await
    }

    /// Publishes this instance's acknowledgement on its lease.
    pub async fn report(&self, lease: i64, record: &InstanceRecord) -> Result<(), EtcdError> {
        let value = serde_json::to_vec(record).expect("a record serialises");
        self.store
            .put(&self.keys.instance(self.instance()), &value, Some(lease))
            .await
            .map(|_| ())
    }

    /// The fleet now: its instances (and whether each has applied the latest
    /// drain change), the ones gone since this router last looked, its drains.
    pub async fn status(&self) -> Result<FleetStatus, EtcdError> {
        let read = self.read_drains().await?;
        let drains = read.good;
        let malformed: BTreeMap<String, String> =
            read.bad.into_iter().map(|(r, (_, why))| (r, why)).collect();
        let latest = drains.values().map(|(_, rev)| *rev).max().unwrap_or(0);
        let (_, policy) = self.store.range_prefix(&self.keys.policy()).await?;
        let policy_revision = policy.iter().map(|kv| kv.mod_revision).max().unwrap_or(0);
        let dir = self.keys.instances();
        let (_, kvs) = self.store.range_prefix(&dir).await?;
        // Acknowledgements count within one history: a record's revisions
        // belong to the epoch it names.
        let epoch_key = self.keys.epoch();
        let (_, epoch) = self.store.range_prefix(&epoch_key).await?;
        let epoch = epoch
            .into_iter()
            .find(|kv| kv.key == epoch_key)
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        let now = now_ms();
        let mut instances = Vec::new();
        for kv in kvs {
            // Only a record on a lease is a member: one written without (by
            // hand, or forged) would count as an acknowledgement forever.
            if kv.lease == 0 {
                continue;
            }
            let Ok(r) = serde_json::from_slice::<InstanceRecord>(&kv.value) else {
                continue;
            };
            instances.push(InstanceView {
                policy_revision: r.policy_revision,
                policy_rejected: r.policy_rejected,
                in_step: !r.history_changed && r.epoch == epoch && r.applied_revision >= latest,
                history_changed: r.history_changed,
                applied_revision: r.applied_revision,
                policy_generation: r.policy_generation,
                seconds_since_report: now.saturating_sub(r.at_ms) as f64 / 1000.0,
                regions: r.regions,
                instance: r.instance,
            });
        }
        let gone = match self.seen.lock() {
            Ok(mut seen) => {
                for i in &instances {
                    seen.insert(i.instance.clone(), now);
                }
                seen.iter()
                    .filter(|(id, _)| !instances.iter().any(|i| &i.instance == *id))
                    .map(|(id, _)| id.clone())
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        if let Some(m) = &self.metrics {
            m.instances.set(instances.len() as i64);
        }
        Ok(FleetStatus {
            prefix: self.settings.prefix.clone(),
            latest_drain_revision: latest,
            instances,
            gone,
            drains: drains.into_iter().map(|(r, (d, _))| (r, d)).collect(),
            malformed,
            policy_revision,
        })
    }

    /// Waits until every live instance has applied `revision`, or `within`
    /// passes; the status at the end.
    pub async fn wait_for(
        &self,
        revision: i64,
        within: Duration,
    ) -> Result<FleetStatus, EtcdError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut status = self.status().await?;
            for i in &mut status.instances {
                i.in_step = i.applied_revision >= revision;
            }
            if status.lagging().is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(status);
            }
            // Each instance rewrites its record as soon as it applies a change;
            // looking again every 20 ms keeps the wait close to the slowest.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Where an instance keeps the last fleet policy it accepted: beside its
/// state file (`state.json` -> `state.policy.toml`). None without a state file
/// or without `fleet.policy`.
pub fn accepted_policy_path(config: &crate::config::Config) -> Option<std::path::PathBuf> {
    config.fleet.as_ref().filter(|f| f.policy)?;
    Some(
        config
            .admin
            .state_file
            .as_ref()?
            .with_extension("policy.toml"),
    )
}

/// Keeps a fleet policy just accepted (its etcd revision in the first line)
/// beside the instance's own state file, written aside, flushed and renamed
/// over, so that a restart serves it.
pub fn keep_accepted_policy(state_file: Option<&std::path::Path>, text: &str, revision: i64) {
    let Some(path) = state_file.map(|f| f.with_extension("policy.toml")) else {
        return;
    };
    let body = format!("# georouter: fleet policy accepted at etcd revision {revision}\n{text}");
    let tmp = path.with_extension("tmp");
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        std::io::Write::write_all(&mut f, body.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
        tracing::warn!(target: "georouter::fleet", path = %path.display(), error = %e, "the fleet policy applies but could not be kept for a restart");
    }
}

/// At start, with `fleet.policy`: the last fleet policy this instance
/// accepted, and its revision, instead of the bootstrap file (its own
/// `[fleet]` section, the instance's identity and credentials, kept from the
/// bootstrap). None when there is none, or it no longer loads (then the
/// bootstrap serves, with a warning).
pub fn last_accepted_policy(
    bootstrap: &crate::config::Config,
) -> Option<(crate::config::Config, i64)> {
    let path = accepted_policy_path(bootstrap)?;
    let text = std::fs::read_to_string(&path).ok()?;
    let revision = text
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|r| r.parse::<i64>().ok())
        .unwrap_or(0);
    match crate::config::Config::from_toml(&text) {
        Ok(mut config) => {
            config.fleet.clone_from(&bootstrap.fleet);
            config
                .admin
                .state_file
                .clone_from(&bootstrap.admin.state_file);
            Some((config, revision))
        }
        Err(e) => {
            tracing::warn!(target: "georouter::fleet", path = %path.display(), error = %e, "the fleet policy kept from before does not load; serving the bootstrap file");
            None
        }
    }
}
