//! The control plane's side of a fleet: the watch that applies the fleet's
//! drains (from a full read, then change by change; a full read again after a
//! compaction or a lost link), the reconciliation of intents held while etcd
//! was unreachable, and the heartbeat that keeps this instance's lease and
//! acknowledgement. Fail static: losing etcd never undrains anything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::Control;
use crate::drains::{Drain, DrainStore, Intent};
use crate::fleet::etcd::EtcdError;
use crate::fleet::keys::{FleetDrain, FleetScale, InstanceRecord};
use crate::fleet::store::{Changes, Event, Kv, WatchStream};
use crate::fleet::{now_ms, Fleet};

mod heartbeat;
mod policy;
mod scales;

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

    async fn fleet_watch(self: Arc<Self>, fleet: Arc<Fleet>) {
        let mut shutdown = self.shutdown.clone();
        let backoff = Backoff::default();
        loop {
            let outcome = tokio::select! {
                r = self.sync_and_watch(&fleet, &backoff) => r,
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
            if !backoff.wait(&mut shutdown).await {
                return;
            }
        }
    }

    /// Reads every drain, reconciles what was held, then follows the changes
    /// until the link breaks.
    async fn sync_and_watch(&self, fleet: &Fleet, backoff: &Backoff) -> Result<(), EtcdError> {
        // The same etcd history, or nothing from it is applied.
        fleet.check_epoch().await?;
        // The instance's record names the epoch from now on.
        fleet.applied_changed.notify_one();
        if let ((), Some(e)) = self.drains.change(|d| d.set_fleet_epoch(fleet.epoch())) {
            tracing::warn!(target: "georouter::fleet", error = %e, "the fleet's epoch could not be kept in the state file");
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
        backoff.reset();
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
                                by: "(key deleted in etcd)".to_owned(),
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

    /// The fleet's intents from a full read; the regions in `keep` (their
    /// value unreadable) keep the intent they had.
    fn replace_fleet_drains(&self, mut intents: BTreeMap<String, Intent>, keep: &[String]) {
        let actors: BTreeMap<String, String> = intents
            .iter()
            .map(|(r, i)| (r.clone(), i.by.clone()))
            .collect();
        self.change_fleet_book(
            |book| {
                for region in keep {
                    if let Some(last) = book.intent(region) {
                        intents.insert(region.clone(), last);
                    }
                }
                book.replace(intents);
            },
            |region, _| actors.get(region).cloned().unwrap_or_default(),
        );
    }

    /// The fleet's book follows this instance's health (`down`: the regions
    /// that fail its own checks): a drain held back for want of a serving
    /// region applies once one is back. A drain in force stays.
    pub(super) fn book_follows_health(&self, down: std::collections::BTreeSet<String>) {
        self.change_fleet_book(
            |book| book.set_down(down),
            |_, drain| drain.map_or_else(String::new, |d| d.by.clone()),
        );
    }

    /// A change to the fleet's side of the drains, through the one path:
    /// each region whose drain changed is journalled (`actor` names who) and
    /// published; refusals alone make one snapshot, journalled too.
    fn change_fleet_book(
        &self,
        change: impl FnOnce(&mut crate::fleet::book::FleetBook),
        actor: impl Fn(&str, Option<&Drain>) -> String,
    ) {
        let drained = |book: &crate::fleet::book::FleetBook| -> BTreeMap<String, Drain> {
            book.iter().map(|(r, d)| (r.clone(), d.clone())).collect()
        };
        let changed = self.drains.change_fleet(|book| {
            let before = drained(book);
            change(book);
            (before, drained(book))
        });
        let Some(((before, after), _)) = changed else {
            return;
        };
        let regions: std::collections::BTreeSet<&String> =
            before.keys().chain(after.keys()).collect();
        let mut published = false;
        for region in regions {
            let (b, a) = (before.get(region), after.get(region));
            if b != a {
                self.after_drain_change(region, b, a, &actor(region, a.or(b)));
                published |= b.is_some() != a.is_some();
            }
        }
        if !published {
            self.after_refusals();
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
        let held = self
            .drains
            .change_fleet(|book| book.held())
            .map(|(held, _)| held)
            .unwrap_or_default();
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
                    Err(
                        e @ (crate::fleet::FleetError::LastInJurisdiction { .. }
                        | crate::fleet::FleetError::LastOnInstance { .. }),
                    ) => {
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
            self.drains.change_fleet(|book| book.release(&region));
        }
        Ok(())
    }
}

/// A follower's failures in a row, and the wait they earn before the next
/// attempt. A follower resets it once its link to etcd is up again.
#[derive(Debug, Default)]
struct Backoff(std::sync::atomic::AtomicUsize);

impl Backoff {
    /// The link is up: the next failure waits the shortest time again.
    fn reset(&self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits out the backoff after one more failure; false when the router
    /// shuts down first.
    async fn wait(&self, shutdown: &mut crate::edge::server::Shutdown) -> bool {
        let failures = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wait = BACKOFF[failures.min(BACKOFF.len() - 1)];
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = shutdown.changed() => false,
        }
    }
}

impl Control {
    /// Keeps a follower going until shutdown: `follow` runs until its link to
    /// etcd breaks; the break is logged (`interrupted`, at most once a second
    /// by `log`), then the backoff, then it runs again.
    async fn keep_following<Fut>(
        &self,
        interrupted: &'static str,
        log: &'static crate::log_limit::Limiter,
        backoff: &Backoff,
        follow: impl Fn() -> Fut,
    ) where
        Fut: std::future::Future<Output = Result<(), EtcdError>>,
    {
        let mut shutdown = self.shutdown.clone();
        loop {
            let outcome = tokio::select! {
                r = follow() => r,
                _ = shutdown.changed() => return,
            };
            if let Err(e) = outcome {
                if let Some(suppressed) = log.allow() {
                    tracing::warn!(target: "georouter::fleet", error = %e, suppressed, "{interrupted}");
                }
            }
            if !backoff.wait(&mut shutdown).await {
                return;
            }
        }
    }
}

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

/// The watch's next changes, or an error as soon as the heartbeat finds etcd
/// gone (a partition can leave the watch's connection silent, not closed).
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
