//! A fleet of routers sharing drains through etcd: writing a drain (with the
//! last-serving-region guard as one etcd transaction), reading the fleet's
//! intents, each instance's acknowledgement on its lease, and the fleet's
//! status. The control plane runs the watch and the heartbeat
//! (`control/fleet.rs`); the CLI talks to etcd through this module directly.

mod accepted;
pub(crate) mod book;
pub mod cli;
pub(crate) mod etcd;
pub(crate) mod keys;
mod metrics;
mod status;
pub mod store;

pub use accepted::{accepted_policy_path, keep_accepted_policy, last_accepted_policy};
pub use metrics::FleetMetrics;
pub use status::{FleetStatus, InstanceView};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    #[error("{region} is the last serving region of jurisdiction {jurisdiction} on instance {instance} (its other regions are down there, by its own checks): draining it would refuse that instance's residents; fix what that instance sees, or add force=true to drain it anyway")]
    LastOnInstance {
        region: String,
        jurisdiction: String,
        instance: String,
    },
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
    /// Wakes the heartbeat to publish this instance's record again (a change
    /// applied, a region's health changed).
    pub applied_changed: tokio::sync::Notify,
    /// Wakes the watch to start again (the heartbeat lost etcd).
    pub reset: tokio::sync::Notify,
    /// Instances seen alive, with when (for "gone").
    seen: Mutex<BTreeMap<String, u64>>,
    /// The last status read for a view polled by anyone who can reach it
    /// (the status page), and when: one etcd read a second at most.
    #[allow(clippy::type_complexity)]
    recent: tokio::sync::Mutex<Option<(tokio::time::Instant, bool, Result<FleetStatus, String>)>>,
    /// The fleet policy in service here, and the last one refused.
    policy: Mutex<(i64, Option<Rejection>)>,
    /// The fleet's epoch in the etcd history this instance follows.
    epoch: Mutex<Option<String>>,
    /// The epoch is gone or changed: nothing read from etcd is applied.
    history_changed: AtomicBool,
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
            recent: tokio::sync::Mutex::new(None),
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
            let views = self.views_of(guard).await?;
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
            // Every live instance's own view too: a drain that leaves one of
            // them with no serving region of the jurisdiction is refused.
            for (instance, down) in &views {
                let serves = |r: &str| !down.iter().any(|d| d == r) && !drained(r);
                let now = guard.regions.iter().any(|(r, _)| serves(r));
                let after = guard.regions.iter().any(|(r, _)| r != region && serves(r));
                if now && !after {
                    return Err(FleetError::LastOnInstance {
                        region: region.to_owned(),
                        jurisdiction: guard.jurisdiction.clone(),
                        instance: instance.clone(),
                    });
                }
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

    /// The other live instances' views of the guard's regions: each instance,
    /// and the regions that fail its checks there (a region an instance does
    /// not report is taken as healthy: it cannot block a drain).
    async fn views_of(&self, guard: &Guard) -> Result<Vec<(String, Vec<String>)>, EtcdError> {
        let (_, kvs) = self.store.range_prefix(&self.keys.instances()).await?;
        let epoch = self.epoch();
        let mut views = Vec::new();
        for kv in kvs {
            // Members only (a record on a lease), of this history, not this
            // instance (its own view is the guard's).
            if kv.lease == 0 {
                continue;
            }
            let Ok(record) = serde_json::from_slice::<InstanceRecord>(&kv.value) else {
                continue;
            };
            if record.instance == self.instance()
                || record.history_changed
                || (record.epoch.is_some() && record.epoch != epoch)
            {
                continue;
            }
            let down = guard
                .regions
                .iter()
                .filter(|(r, _)| {
                    record
                        .regions
                        .get(r.as_str())
                        .is_some_and(|v| !v.starts_with("up"))
                })
                .map(|(r, _)| r.clone())
                .collect();
            views.push((record.instance, down));
        }
        Ok(views)
    }

    /// Publishes this instance's acknowledgement on its lease.
    pub async fn report(&self, lease: i64, record: &InstanceRecord) -> Result<(), EtcdError> {
        let value = serde_json::to_vec(record).expect("a record serialises");
        self.store
            .put(&self.keys.instance(self.instance()), &value, Some(lease))
            .await
            .map(|_| ())
    }

    /// Counts the fleet's members for `georouter_fleet_instances`: one small
    /// call, whatever the fleet's size (a record written without a lease would
    /// count here, never as an acknowledgement: see [`Fleet::status`]).
    pub async fn count_members(&self) -> Result<i64, EtcdError> {
        let n = self.store.count_prefix(&self.keys.instances()).await?;
        if let Some(m) = &self.metrics {
            m.instances.set(n);
        }
        Ok(n)
    }

    /// [`Fleet::status`] (or why it failed) at most `max_age` old and read
    /// while this instance's link was as it is now: callers arriving together
    /// share one read, so a view polled at any rate costs etcd one read per
    /// `max_age`.
    pub async fn recent_status(&self, max_age: Duration) -> Result<FleetStatus, String> {
        let mut recent = self.recent.lock().await;
        let connected = self.connected();
        if let Some((at, was, status)) = recent.as_ref() {
            if at.elapsed() < max_age && *was == connected {
                return status.clone();
            }
        }
        let status = self.status().await.map_err(|e| e.to_string());
        *recent = Some((tokio::time::Instant::now(), connected, status.clone()));
        status
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
