//! Operator drains through the control plane: the last-serving-region guard of
//! a jurisdiction, the ramp back after an undrain, and the store that keeps them.

use super::{unix_now, Control};
use crate::config::RegionName;
use crate::drains::{Drain, DrainStore, Intent, Scale, Scope, StateFileError};
use crate::fleet::keys::FleetScale;
use crate::fleet::{now_ms, FleetError, Guard};

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("no region {0:?} in the policy")]
    UnknownRegion(String),
    #[error("{region} is the last serving region of jurisdiction {jurisdiction}: draining it would refuse every resident; add force=true to drain it anyway")]
    LastInJurisdiction {
        region: String,
        jurisdiction: String,
    },
    /// Another live instance of the fleet would be left with no serving
    /// region of the jurisdiction, by its own checks.
    #[error(transparent)]
    LastOnInstance(FleetError),
    #[error(transparent)]
    Fleet(FleetError),
}

/// What a drain call did.
#[derive(Debug, Default)]
pub struct Drained {
    /// The etcd revision of the fleet-wide change (a fleet drain).
    pub revision: Option<i64>,
    /// Held here because etcd was unreachable; written to the fleet when it is back.
    pub held: bool,
    /// The change holds but could not be kept (the state file).
    pub persist_warning: Option<String>,
}

impl Control {
    /// Drains a region (`Some(reason)`) or undrains it (`None`), for `by`. In
    /// a fleet (and unless `local`), the change goes to etcd for every
    /// instance, guarded fleet-wide; when etcd is unreachable it is held here
    /// and reconciled later.
    pub async fn drain(
        &self,
        region: &str,
        drain: Option<String>,
        by: &str,
        force: bool,
        local: bool,
    ) -> Result<Drained, DrainError> {
        let Some(fleet) = self.fleet.clone().filter(|_| !local) else {
            return self.set_drain(region, drain, by, force).map(|e| Drained {
                persist_warning: e.map(|e| e.to_string()),
                ..Drained::default()
            });
        };
        let guard = self.guard_of(region)?;
        let intent = Intent {
            drain: drain.map(|reason| Drain {
                reason,
                by: by.to_owned(),
                since: unix_now(),
                scope: Scope::Fleet,
                force,
            }),
            by: by.to_owned(),
            at_ms: now_ms(),
        };
        let guard = guard.filter(|_| !force);
        match fleet.write_drain(region, &intent, guard.as_ref()).await {
            Ok(revision) => {
                self.apply_fleet_intent(region, intent, revision);
                Ok(Drained {
                    revision: Some(revision),
                    ..Drained::default()
                })
            }
            Err(FleetError::Etcd(e)) if e.is_unreachable() => {
                // Fail static: the intent holds here at once, guarded by what
                // this router sees, and goes to the fleet when etcd is back.
                self.hold_intent(region, intent, !force)?;
                tracing::warn!(target: "georouter::fleet", %region, error = %e, "etcd unreachable: the drain change holds on this instance only until etcd is back");
                Ok(Drained {
                    held: true,
                    ..Drained::default()
                })
            }
            Err(FleetError::LastInJurisdiction {
                region,
                jurisdiction,
            }) => Err(DrainError::LastInJurisdiction {
                region,
                jurisdiction,
            }),
            Err(e @ FleetError::LastOnInstance { .. }) => Err(DrainError::LastOnInstance(e)),
            Err(e) => Err(DrainError::Fleet(e)),
        }
    }

    /// The guard for writing a held intent to the fleet: a drain that was not
    /// forced is guarded as a new one would be.
    pub(super) fn held_guard(&self, region: &str, intent: &Intent) -> Option<Guard> {
        let forced = intent.drain.as_ref().is_none_or(|d| d.force);
        if forced {
            return None;
        }
        self.guard_of(region).ok().flatten()
    }

    /// The jurisdiction of `region` as the fleet-wide guard needs it (`None`
    /// for a region outside any jurisdiction), read from the snapshot in
    /// service like the local guard's.
    fn guard_of(&self, region: &str) -> Result<Option<Guard>, DrainError> {
        let snapshot = self.state.routing.load();
        let table = &snapshot.table;
        let Some(r) = table.region_by_name(region) else {
            return Err(DrainError::UnknownRegion(region.to_owned()));
        };
        Ok(jurisdiction_of(table, &snapshot.states, r))
    }

    /// The local guard: refuses to drain the last region of its jurisdiction
    /// that this router sees serving, by its health in service and `drains`
    /// as they stand. Called under the drains' lock with the change it
    /// guards: two drains cannot both pass on one reading.
    fn check_last_serving(&self, region: &str, drains: &dyn DrainStore) -> Result<(), DrainError> {
        let snapshot = self.state.routing.load();
        let table = &snapshot.table;
        let Some(r) = table.region_by_name(region) else {
            return Err(DrainError::UnknownRegion(region.to_owned()));
        };
        last_serving_guard(table, &snapshot.states, r, |name| {
            drains.get(name).is_some()
        })
    }

    /// Applies a fleet intent here (from this call or the watch).
    pub(super) fn apply_fleet_intent(&self, region: &str, intent: Intent, revision: i64) {
        let by = intent.by.clone();
        let changed = self.drains.change_fleet(|book| {
            let before = book.get(region).cloned();
            book.apply(region, intent);
            (before, book.get(region).cloned())
        });
        if let Some(((before, now), _)) = changed {
            self.after_drain_change(region, before.as_ref(), now.as_ref(), &by);
        }
        if let Some(f) = &self.fleet {
            f.set_applied(revision);
        }
    }

    /// Holds an intent made while etcd is unreachable (a drain guarded by
    /// what this router sees, unless `guarded` is false).
    fn hold_intent(&self, region: &str, intent: Intent, guarded: bool) -> Result<(), DrainError> {
        let by = intent.by.clone();
        let changed = self.drains.change_fleet(|book| {
            if guarded && intent.drain.is_some() {
                self.check_last_serving(region, &*book)?;
            }
            let before = book.get(region).cloned();
            book.hold(region, intent);
            Ok((before, book.get(region).cloned()))
        });
        if let Some((changed, _)) = changed {
            let (before, now) = changed?;
            self.after_drain_change(region, before.as_ref(), now.as_ref(), &by);
        }
        Ok(())
    }

    /// The one path after every drain change (made by `by`): the journal,
    /// then a new snapshot (whose publisher ramps an undrained region back).
    pub(super) fn after_drain_change(
        &self,
        region: &str,
        before: Option<&Drain>,
        now: Option<&Drain>,
        by: &str,
    ) {
        let refused = self.journal_refusals();
        if before != now {
            // Drained, undrained, or drained again for another reason.
            self.journal_drain(region, now, by);
        }
        if before.is_some() != now.is_some() || refused {
            self.publish();
        }
    }

    /// When the drains the guard holds back changed: journalled, published.
    pub(super) fn after_refusals(&self) {
        if self.journal_refusals() {
            self.publish();
        }
    }

    /// Journals the drains newly held back by the guard; whether the
    /// refusals changed at all.
    fn journal_refusals(&self) -> bool {
        let Some(new) = self.drains.refused_changed() else {
            return false;
        };
        for (r, j) in &new {
            self.journal.record(
                r,
                "drain",
                "drain refused".to_owned(),
                format!("it would leave jurisdiction {j} with no serving region"),
            );
        }
        true
    }
}

impl Control {
    /// Drains a region (`Some(reason)`) or undrains it (`None`) for `by`, on
    /// this router only (a standalone router's drains, or a fleet member's
    /// local ones).
    pub fn set_drain(
        &self,
        region: &str,
        drain: Option<String>,
        by: &str,
        force: bool,
    ) -> Result<Option<StateFileError>, DrainError> {
        if !self.knows_region(region) {
            return Err(DrainError::UnknownRegion(region.to_owned()));
        }
        let guarded = drain.is_some() && !force;
        let entry = drain.map(|reason| Drain {
            reason,
            by: by.to_owned(),
            since: unix_now(),
            scope: crate::drains::Scope::Local,
            force,
        });
        let (changed, persisted) = self.drains.change(|d| {
            if guarded {
                self.check_last_serving(region, &*d)?;
            }
            let before = d.get(region).cloned();
            d.set(region, entry);
            Ok((before, d.get(region).cloned()))
        });
        let (before, now) = changed?;
        self.after_drain_change(region, before.as_ref(), now.as_ref(), by);
        Ok(persisted)
    }

    /// The drain (or undrain) just made, in the journal.
    fn journal_drain(&self, region: &str, drain: Option<&Drain>, by: &str) {
        match drain {
            Some(d) => self.journal.record(
                region,
                "drain",
                format!("drained ({})", d.scope.as_str()),
                format!("{} (by {})", d.reason, d.by),
            ),
            None => self.journal.record(
                region,
                "undrain",
                "undrained".to_owned(),
                if by.is_empty() {
                    String::new()
                } else {
                    format!("by {by}")
                },
            ),
        }
    }
}

/// `r`'s jurisdiction as `states` see it: its regions and which are healthy;
/// `None` outside any jurisdiction. The one reading both guards start from:
/// the local one adds this router's drains, the fleet's adds the fleet's (in
/// one etcd transaction).
fn jurisdiction_of(
    table: &crate::routing::table::RoutingTable,
    states: &crate::routing::regions::RegionStates,
    r: &crate::routing::table::Region,
) -> Option<Guard> {
    let j = r.jurisdiction.as_ref()?;
    Some(Guard {
        jurisdiction: j.clone(),
        regions: table
            .regions()
            .iter()
            .filter(|o| o.jurisdiction.as_ref() == Some(j))
            .map(|o| (o.name.to_string(), states.get(table, o.id).healthy))
            .collect(),
    })
}

/// Refuses to drain `r` when it is the last region of its jurisdiction that
/// serves (healthy in `states`, not `drained`): its residents would get 503.
fn last_serving_guard(
    table: &crate::routing::table::RoutingTable,
    states: &crate::routing::regions::RegionStates,
    r: &crate::routing::table::Region,
    drained: impl Fn(&str) -> bool,
) -> Result<(), DrainError> {
    let Some(guard) = jurisdiction_of(table, states, r) else {
        return Ok(());
    };
    let serving = |name: &str| {
        !drained(name)
            && table
                .region_by_name(name)
                .is_some_and(|o| states.get(table, o.id).healthy)
    };
    let others = guard
        .regions
        .iter()
        .any(|(name, _)| name != r.name.as_str() && serving(name));
    if serving(r.name.as_str()) && !others {
        return Err(DrainError::LastInJurisdiction {
            region: r.name.to_string(),
            jurisdiction: guard.jurisdiction,
        });
    }
    Ok(())
}

/// What a partial-drain call did.
#[derive(Debug, Default)]
pub struct Scaled {
    /// The etcd revision of the fleet-wide change (a fleet call).
    pub revision: Option<i64>,
    /// Applied here only: etcd was unreachable (written to the fleet when it
    /// is back, unless the fleet's is newer).
    pub held: bool,
    /// The change holds but could not be kept (the state file).
    pub persist_warning: Option<String>,
}

impl Control {
    /// A partial drain: `region` keeps `keep` (0 to 1) of its clients, the
    /// same ones each time (the slow-start hash), and the rest go to their next
    /// candidate; 1 gives all of them back. Where a region is a client's only
    /// serving candidate, it keeps that client. In a fleet (unless `local`) it
    /// goes to etcd for every instance; kept in the state file either way.
    pub async fn scale(
        &self,
        region: &str,
        keep: f64,
        by: &str,
        local: bool,
    ) -> Result<Scaled, DrainError> {
        if !self.knows_region(region) {
            return Err(DrainError::UnknownRegion(region.to_owned()));
        }
        let keep = keep.clamp(0.0, 1.0);
        let Some(fleet) = self.fleet.clone().filter(|_| !local) else {
            return Ok(Scaled {
                persist_warning: self.apply_scale(region, keep, by, Scope::Local, unix_now()),
                ..Scaled::default()
            });
        };
        let record = FleetScale {
            keep,
            by: by.to_owned(),
            instance: fleet.instance().to_owned(),
            at_ms: now_ms(),
        };
        match fleet.write_scale(region, &record).await {
            Ok(revision) => Ok(Scaled {
                revision: Some(revision),
                persist_warning: self.apply_scale(
                    region,
                    keep,
                    by,
                    Scope::Fleet,
                    record.at_ms / 1000,
                ),
                ..Scaled::default()
            }),
            Err(e) if e.is_unreachable() => {
                tracing::warn!(target: "georouter::fleet", %region, error = %e, "etcd unreachable: the partial drain holds on this instance only until etcd is back");
                Ok(Scaled {
                    held: true,
                    persist_warning: self.apply_scale(
                        region,
                        keep,
                        by,
                        Scope::Pending,
                        record.at_ms / 1000,
                    ),
                    ..Scaled::default()
                })
            }
            Err(e) => Err(DrainError::Fleet(FleetError::Etcd(e))),
        }
    }

    /// Applies a partial drain here (logged, in the journal, in the state
    /// file) unless it is the one in force. A persistence failure is returned.
    pub(super) fn apply_scale(
        &self,
        region: &str,
        keep: f64,
        by: &str,
        scope: Scope,
        since: u64,
    ) -> Option<String> {
        let mut health = self.health();
        let rec = health.regions.get_mut(&RegionName::new(region))?;
        let permille = (keep.clamp(0.0, 1.0) * 1000.0).round() as u16;
        let before = rec.capacity_scale;
        let scale = (permille < 1000).then(|| Scale {
            keep: f64::from(permille) / 1000.0,
            by: by.to_owned(),
            since,
            scope,
        });
        let same = before == permille
            && rec.scale.as_ref().map(|s| s.scope) == scale.as_ref().map(|s| s.scope);
        if same {
            return None;
        }
        rec.capacity_scale = permille;
        rec.scale = scale.clone();
        tracing::info!(target: "georouter::audit", %region, keep, by, scope = scope.as_str(), "capacity scale set");
        self.journal.record(
            region,
            "capacity",
            format!(
                "scale {:.3} -> {:.3} ({})",
                f64::from(before) / 1000.0,
                f64::from(permille) / 1000.0,
                scope.as_str()
            ),
            format!("by {by}"),
        );
        drop(health);
        let ((), kept) = self.drains.change(|d| d.set_scale(region, scale));
        self.publish();
        kept.map(|e| e.to_string())
    }

    /// The partial drain in force for `region`, if any.
    pub(super) fn scale_of(&self, region: &str) -> Option<Scale> {
        self.health()
            .regions
            .get(&RegionName::new(region))?
            .scale
            .clone()
    }
}
