//! The control plane's side of a fleet: the watch that applies the fleet's
//! drains (from a full read, then change by change; a full read again after a
//! compaction or a lost link), the reconciliation of intents held while etcd
//! was unreachable, and the heartbeat that keeps this instance's lease and
//! acknowledgement. Fail static: losing etcd never undrains anything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::Control;
use crate::drains::Intent;
use crate::fleet::etcd::EtcdError;
use crate::fleet::keys::{FleetDrain, FleetScale, InstanceRecord};
use crate::fleet::store::{Changes, Event, Kv, WatchStream};
use crate::fleet::{now_ms, Fleet};

/// Waits between attempts to reach etcd again.
const BACKOFF: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
];

impl Control {
    /// Starts the fleet's watch and heartbeat on the current runtime.
    pub(super) fn start_fleet(self: &Arc<Self>, fleet: &Arc<Fleet>) {
        tokio::spawn(self.clone().fleet_watch(fleet.clone()));
        tokio::spawn(self.clone().fleet_heartbeat(fleet.clone()));
        tokio::spawn(self.clone().fleet_scales(fleet.clone()));
        if fleet.settings.policy {
            tokio::spawn(self.clone().fleet_policy(fleet.clone()));
        }
    }

    /// With `fleet.policy`: applies the fleet's policy whenever it changes
    /// (validated again here; a policy that does not load is refused, recorded
    /// in this instance's acknowledgement, and the one in service stays).
    async fn fleet_policy(self: Arc<Self>, fleet: Arc<Fleet>) {
        let mut shutdown = self.shutdown.clone();
        let mut failures = 0usize;
        loop {
            let outcome = tokio::select! {
                r = self.follow_policy(&fleet, &mut failures) => r,
                _ = shutdown.changed() => return,
            };
            if let Err(e) = outcome {
                static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
                if let Some(suppressed) = LOG.allow() {
                    tracing::warn!(target: "georouter::fleet", error = %e, suppressed, "fleet policy watch interrupted; serving the policy last applied");
                }
            }
            let wait = BACKOFF[failures.min(BACKOFF.len() - 1)];
            failures += 1;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn follow_policy(
        self: &Arc<Self>,
        fleet: &Fleet,
        failures: &mut usize,
    ) -> Result<(), EtcdError> {
        if fleet.history_changed() {
            return Err(history_changed(fleet));
        }
        let key = fleet.keys.policy();
        let (revision, kvs) = fleet.store.range_prefix(&key).await?;
        if let Some(kv) = kvs.into_iter().find(|kv| kv.key == key) {
            self.apply_fleet_policy(fleet, kv.value, kv.mod_revision)
                .await;
        }
        let mut watch = fleet.store.watch(&key, revision + 1).await?;
        *failures = 0;
        loop {
            let changes = next_changes(&mut watch, fleet).await?;
            let Some(changes) = changes else {
                return Ok(());
            };
            for event in changes.events {
                if let Event::Put(kv) = event {
                    if kv.key == key {
                        self.apply_fleet_policy(fleet, kv.value, kv.mod_revision)
                            .await;
                    }
                }
            }
        }
    }

    async fn apply_fleet_policy(self: &Arc<Self>, fleet: &Fleet, text: Vec<u8>, revision: i64) {
        let (current, rejected) = fleet.policy_state();
        if revision <= current || rejected.is_some_and(|r| r.revision == revision) {
            return;
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        // Only a policy signed by one of this instance's own keys (from its
        // start, not from any pushed policy).
        let text = match crate::signing::verify(&text, &fleet.settings.policy_keys) {
            Ok(body) => body.to_owned(),
            Err(e) => {
                tracing::error!(target: "georouter::fleet", revision, error = %e, "a fleet policy refused");
                fleet.set_policy(revision, Err(e.to_string()));
                return;
            }
        };
        if !crate::signing::for_instance(&text, fleet.instance()) {
            // A canary stage for other instances: not this one's yet.
            return;
        }
        let trigger = format!("fleet policy at revision {revision}");
        let result = self.reload_text(text.clone(), &trigger).await;
        if result.is_ok() {
            // A restart serves it, not the bootstrap file.
            crate::fleet::keep_accepted_policy(self.state_file.as_deref(), &text, revision);
        }
        fleet.set_policy(revision, result.map(|_| ()).map_err(|e| e.to_string()));
    }

    /// Applies the fleet's partial drains whenever they change. Fail static: a
    /// partial drain ends only by a newer record (keep = 1), never because a
    /// read no longer shows it.
    async fn fleet_scales(self: Arc<Self>, fleet: Arc<Fleet>) {
        let mut shutdown = self.shutdown.clone();
        let mut failures = 0usize;
        loop {
            let outcome = tokio::select! {
                r = self.follow_scales(&fleet, &mut failures) => r,
                _ = shutdown.changed() => return,
            };
            if let Err(e) = outcome {
                static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
                if let Some(suppressed) = LOG.allow() {
                    tracing::warn!(target: "georouter::fleet", error = %e, suppressed, "fleet partial-drain watch interrupted; serving with those last applied");
                }
            }
            let wait = BACKOFF[failures.min(BACKOFF.len() - 1)];
            failures += 1;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn follow_scales(&self, fleet: &Fleet, failures: &mut usize) -> Result<(), EtcdError> {
        if fleet.history_changed() {
            return Err(history_changed(fleet));
        }
        let dir = fleet.keys.scales();
        let (revision, kvs) = fleet.store.range_prefix(&dir).await?;
        let mut all = BTreeMap::new();
        for kv in &kvs {
            if let Some((region, scale)) = read_scale(fleet, &dir, kv) {
                all.insert(region.to_owned(), scale);
            }
        }
        // Partial drains made here while etcd was unreachable go to the fleet
        // unless the fleet's is newer.
        let regions: Vec<String> = self
            .lock()
            .table
            .regions()
            .iter()
            .map(|r| r.name.to_string())
            .collect();
        for region in regions {
            let Some(mine) = self.scale_of(&region) else {
                continue;
            };
            if mine.scope != crate::drains::Scope::Pending {
                continue;
            }
            match all.get(&region) {
                Some(theirs) if theirs.at_ms > mine.since * 1000 => {
                    tracing::warn!(target: "georouter::fleet", %region, "a partial drain held during the etcd outage is older than the fleet's; the fleet's wins");
                }
                _ => {
                    let record = FleetScale {
                        keep: mine.keep,
                        by: mine.by.clone(),
                        instance: fleet.instance().to_owned(),
                        at_ms: mine.since * 1000,
                    };
                    fleet.write_scale(&region, &record).await?;
                    tracing::info!(target: "georouter::fleet", %region, keep = mine.keep, "a partial drain held during the etcd outage is now the fleet's");
                    all.insert(region, record);
                }
            }
        }
        for (region, scale) in &all {
            self.apply_fleet_scale(region, scale);
        }
        let mut watch = fleet.store.watch(&dir, revision + 1).await?;
        *failures = 0;
        loop {
            let Some(changes) = next_changes(&mut watch, fleet).await? else {
                return Ok(());
            };
            for event in changes.events {
                if let Event::Put(kv) = event {
                    if let Some((region, scale)) = read_scale(fleet, &dir, &kv) {
                        self.apply_fleet_scale(region, &scale);
                    }
                }
            }
        }
    }

    fn apply_fleet_scale(&self, region: &str, scale: &FleetScale) {
        let by = if scale.instance.is_empty() {
            scale.by.clone()
        } else {
            format!("{} via {}", scale.by, scale.instance)
        };
        let kept = self.apply_scale(
            region,
            scale.keep(),
            &by,
            crate::drains::Scope::Fleet,
            scale.at_ms / 1000,
        );
        if let Some(e) = kept {
            tracing::warn!(target: "georouter::fleet", %region, error = %e, "a partial drain applies but could not be written to the state file");
        }
    }

    async fn fleet_watch(self: Arc<Self>, fleet: Arc<Fleet>) {
        let mut shutdown = self.shutdown.clone();
        let mut failures = 0usize;
        loop {
            let outcome = tokio::select! {
                r = self.sync_and_watch(&fleet, &mut failures) => r,
                _ = shutdown.changed() => return,
            };
            fleet.set_connected(false);
            match outcome {
                Err(EtcdError::Compacted(_)) => {
                    tracing::info!(target: "georouter::fleet", "the watch fell behind etcd's compaction; reading every drain again");
                }
                Err(e @ EtcdError::HistoryChanged { .. }) => {
                    static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
                    if let Some(suppressed) = LOG.allow() {
                        tracing::error!(target: "georouter::fleet", error = %e, suppressed, "etcd lost the fleet's history; serving with the drains last applied");
                    }
                }
                Err(e) => {
                    static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
                    if let Some(suppressed) = LOG.allow() {
                        tracing::warn!(target: "georouter::fleet", error = %e, suppressed, "fleet watch interrupted; serving with the drains last applied");
                    }
                }
                Ok(()) => {}
            }
            let wait = BACKOFF[failures.min(BACKOFF.len() - 1)];
            failures += 1;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Reads every drain, reconciles what was held, then follows the changes
    /// until the link breaks.
    async fn sync_and_watch(&self, fleet: &Fleet, failures: &mut usize) -> Result<(), EtcdError> {
        // The same etcd history, or nothing from it is applied.
        fleet.check_epoch().await?;
        // The instance's record names the epoch from now on.
        fleet.applied_changed.notify_one();
        {
            let mut inner = self.lock();
            if let Err(e) = inner.drains.set_fleet_epoch(fleet.epoch()) {
                tracing::warn!(target: "georouter::fleet", error = %e, "the fleet's epoch could not be kept in the state file");
            }
        }
        let (_, all) = fleet.drains().await?;
        self.reconcile(fleet, &all).await?;
        // Read again: the view then includes what was just reconciled.
        let read = fleet.read_drains().await?;
        let revision = read.revision;
        let intents: BTreeMap<String, Intent> = read
            .good
            .iter()
            .filter(|(r, _)| self.knows_region(r))
            .map(|(r, (d, _))| (r.clone(), d.intent()))
            .collect();
        // An unreadable value keeps its region's last drain, as the watch does.
        let keep: Vec<String> = read.bad.keys().cloned().collect();
        self.replace_fleet_drains(intents, &keep);
        fleet.set_applied(
            read.good
                .values()
                .map(|(_, rev)| *rev)
                .chain(read.bad.values().map(|(rev, _)| *rev))
                .max()
                .unwrap_or(0),
        );
        let mut watch = fleet
            .store
            .watch(&fleet.keys.drains(), revision + 1)
            .await?;
        fleet.set_connected(true);
        *failures = 0;
        let dir = fleet.keys.drains();
        loop {
            let changes = next_changes(&mut watch, fleet).await?;
            let Some(changes) = changes else {
                return Ok(());
            };
            for event in changes.events {
                match event {
                    Event::Put(kv) => {
                        let Some(region) = fleet.keys.name_in(&dir, &kv.key) else {
                            continue;
                        };
                        match FleetDrain::read(&kv.value) {
                            Ok(_) if !self.knows_region(region) => {
                                tracing::warn!(target: "georouter::fleet", key = %kv.key, "a drain in etcd names no region of this policy; ignored");
                            }
                            Ok(d) => self.apply_fleet_intent(region, d.intent(), kv.mod_revision),
                            Err(e) => {
                                tracing::warn!(target: "georouter::fleet", key = %kv.key, error = %e, "a drain in etcd is not readable; its region keeps the drain last applied")
                            }
                        }
                    }
                    Event::Delete { key, mod_revision } => {
                        // Someone removed the key by hand: no intent is left, so
                        // the region is undrained as of now.
                        if let Some(region) = fleet.keys.name_in(&dir, &key) {
                            let intent = Intent {
                                drain: None,
                                at_ms: now_ms(),
                            };
                            self.apply_fleet_intent(region, intent, mod_revision);
                        }
                    }
                }
            }
            fleet.set_applied(changes.revision);
        }
    }

    /// Whether `region` is in the policy in service: a drain of any other
    /// name is neither applied nor written to the state file.
    fn knows_region(&self, region: &str) -> bool {
        self.lock().table.region_by_name(region).is_some()
    }

    /// The fleet's intents from a full read; the regions in `keep` (their
    /// value unreadable) keep the intent they had.
    fn replace_fleet_drains(&self, mut intents: BTreeMap<String, Intent>, keep: &[String]) {
        let mut inner = self.lock();
        let before: Vec<String> = inner.drains.iter().map(|(r, _)| r.clone()).collect();
        if let Some(shared) = inner.drains.shared() {
            for region in keep {
                if let Some(last) = shared.intent(region) {
                    intents.insert(region.clone(), last);
                }
            }
            shared.replace(intents);
        }
        let after: Vec<String> = inner.drains.iter().map(|(r, _)| r.clone()).collect();
        for region in before.iter().filter(|r| !after.contains(r)) {
            self.after_drain_change(&mut inner, region, true);
        }
        let refused = inner.drains.refused();
        if before != after || refused != inner.refused {
            inner.refused = refused;
            self.publish(&mut inner);
        }
    }

    /// Writes the intents held while etcd was unreachable, each unless the
    /// fleet's intent for the region is newer (then the fleet's wins, and the
    /// conflict is logged).
    async fn reconcile(
        &self,
        fleet: &Fleet,
        all: &BTreeMap<String, (FleetDrain, i64)>,
    ) -> Result<(), EtcdError> {
        let held = {
            let mut inner = self.lock();
            inner.drains.shared().map(|s| s.held()).unwrap_or_default()
        };
        for (region, intent) in held {
            match all.get(&region) {
                Some((theirs, _)) if theirs.at_ms > intent.at_ms => {
                    tracing::warn!(target: "georouter::fleet", %region, held = intent.drain.is_some(), fleet = theirs.drained, by = %theirs.instance, "a drain change held during the etcd outage is older than the fleet's; the fleet's wins");
                }
                // Through the guarded transaction, as a drain made now: the
                // fleet may have drained the rest of the jurisdiction meanwhile.
                _ => match fleet
                    .write_drain(&region, &intent, self.held_guard(&region, &intent).as_ref())
                    .await
                {
                    Ok(_) => {
                        tracing::info!(target: "georouter::fleet", %region, drained = intent.drain.is_some(), "a drain change held during the etcd outage is now the fleet's");
                    }
                    Err(crate::fleet::FleetError::Etcd(e)) => return Err(e),
                    Err(e @ crate::fleet::FleetError::LastInJurisdiction { .. }) => {
                        tracing::warn!(target: "georouter::fleet", %region, error = %e, "a drain held during the etcd outage no longer passes the jurisdiction guard; dropped");
                        self.journal.record(
                            &region,
                            "drain",
                            "held drain dropped".to_owned(),
                            e.to_string(),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(target: "georouter::fleet", %region, error = %e, "a held drain change could not be written; dropped")
                    }
                },
            }
            let mut inner = self.lock();
            if let Some(shared) = inner.drains.shared() {
                shared.release(&region);
            }
        }
        Ok(())
    }

    async fn fleet_heartbeat(self: Arc<Self>, fleet: Arc<Fleet>) {
        let mut shutdown = self.shutdown.clone();
        let ttl = fleet.settings.lease_ttl;
        let every = ttl / 3;
        let mut lease: Option<i64> = None;
        let mut had_lease = false;
        let mut failures = 0usize;
        // The keepalive keeps its own schedule: acknowledgements made in
        // between (a drain change a second) never push it back.
        let mut renew_at = tokio::time::Instant::now() + every;
        loop {
            let step = async {
                let id = match lease {
                    Some(id) => id,
                    None => {
                        let id = fleet.store.lease_grant(ttl).await?;
                        if had_lease {
                            if let Some(m) = &fleet.metrics {
                                m.leases_lost.inc();
                            }
                        }
                        had_lease = true;
                        lease = Some(id);
                        renew_at = tokio::time::Instant::now() + every;
                        id
                    }
                };
                fleet.report(id, &self.instance_record(&fleet)).await?;
                fleet.status().await?;
                Ok::<i64, EtcdError>(id)
            };
            let id = tokio::select! {
                r = step => r,
                _ = shutdown.changed() => break,
            };
            let id = match id {
                Ok(id) => {
                    failures = 0;
                    id
                }
                Err(e) => {
                    lease = None;
                    fleet.set_connected(false);
                    fleet.reset.notify_waiters();
                    static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
                    if let Some(suppressed) = LOG.allow() {
                        tracing::warn!(target: "georouter::fleet", error = %e, suppressed, "fleet heartbeat failed; serving with the drains last applied");
                    }
                    let wait = BACKOFF[failures.min(BACKOFF.len() - 1)];
                    failures += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => break,
                    }
                    continue;
                }
            };
            // Renew on schedule until the lease is lost or a new
            // acknowledgement is due.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(renew_at) => {
                        renew_at = tokio::time::Instant::now() + every;
                        fleet.refresh_gauges();
                        match fleet.store.lease_keepalive(id).await {
                            Ok(true) => {
                                // Keeps georouter_fleet_instances current.
                                let _ = fleet.status().await;
                                continue;
                            }
                            Ok(false) => {
                                tracing::warn!(target: "georouter::fleet", "this instance's lease expired; registering again");
                                lease = None;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    _ = fleet.applied_changed.notified() => break,
                    _ = shutdown.changed() => {
                        let _ = fleet.store.lease_revoke(id).await;
                        return;
                    }
                }
            }
        }
        if let Some(id) = lease {
            let _ = fleet.store.lease_revoke(id).await;
        }
    }

    /// What this instance says of itself.
    fn instance_record(&self, fleet: &Fleet) -> InstanceRecord {
        let inner = self.lock();
        let refused = inner.drains.refused();
        let regions = inner
            .regions
            .iter()
            .map(|(name, rec)| {
                let drained = inner.drains.get(name.as_str()).is_some();
                let phase = rec.machine.phase().name();
                let view = if drained {
                    format!("{phase}, drained")
                } else if let Some((_, j)) = refused.iter().find(|(r, _)| *r == name.as_str()) {
                    format!("{phase}, drain refused (last of {j})")
                } else {
                    phase.to_owned()
                };
                (name.to_string(), view)
            })
            .collect();
        let (policy_revision, policy_rejected) = fleet.policy_state();
        InstanceRecord {
            history_changed: fleet.history_changed(),
            epoch: fleet.epoch(),
            policy_revision,
            policy_rejected,
            instance: fleet.instance().to_owned(),
            applied_revision: fleet.applied(),
            policy_generation: self.generation.load(std::sync::atomic::Ordering::Relaxed),
            regions,
            at_ms: now_ms(),
        }
    }
}

/// The watch's next changes, or an error as soon as the heartbeat finds etcd
/// gone (a partition can leave the watch's connection silent, not closed).
/// Why a follower applies nothing: etcd's history changed under the fleet.
fn history_changed(fleet: &Fleet) -> EtcdError {
    EtcdError::HistoryChanged {
        remembered: fleet.epoch().unwrap_or_default(),
        found: "changed".to_owned(),
    }
}

/// A partial drain read from etcd: its region and record; an unreadable one
/// is logged and ignored.
fn read_scale<'k>(fleet: &Fleet, dir: &str, kv: &'k Kv) -> Option<(&'k str, FleetScale)> {
    let region = fleet.keys.name_in(dir, &kv.key)?;
    match FleetScale::read(&kv.value) {
        Ok(s) => Some((region, s)),
        Err(e) => {
            tracing::warn!(target: "georouter::fleet", key = %kv.key, error = %e, "a partial drain in etcd is not readable; ignored");
            None
        }
    }
}

async fn next_changes(
    watch: &mut Box<dyn WatchStream>,
    fleet: &Fleet,
) -> Result<Option<Changes>, EtcdError> {
    tokio::select! {
        c = watch.next() => c,
        _ = fleet.reset.notified() => Err(EtcdError::Unreachable {
            endpoints: "the fleet's etcd".to_owned(),
            last: "the heartbeat lost etcd".to_owned(),
        }),
    }
}
