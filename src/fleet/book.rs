//! A fleet router's drain store: the fleet's intents as etcd has them, this
//! router's local-only drains, and the intents it made while etcd was
//! unreachable (held, applied here at once, written to the fleet when it is
//! back unless the fleet's intent is newer). The effective drains are kept in
//! the local state file too, so a restart without etcd still applies them.
//! What applies passes the apply-side guard ([`crate::drains::guard`]): no
//! intent, however it reached etcd, drains a strict jurisdiction's last region
//! unless it was forced.

use std::collections::BTreeMap;

use crate::drains::{Drain, DrainStore, Drains, Fences, Intent, Scale, Scope, StateWrite};

#[derive(Debug)]
pub struct FleetBook {
    /// The state file: what applies, for a restart without etcd.
    file: Drains,
    shared: BTreeMap<String, Intent>,
    local: BTreeMap<String, Drain>,
    held: BTreeMap<String, Intent>,
    /// What applies, region by region (rebuilt on every change).
    effective: BTreeMap<String, Drain>,
    /// The strict jurisdictions, for the guard.
    fences: Fences,
    /// Drains wanted but not applied by the guard: region -> jurisdiction.
    refused: BTreeMap<String, String>,
    /// Regions this instance sees down by its own checks, for the guard.
    down: std::collections::BTreeSet<String>,
}

impl FleetBook {
    /// Starts from the state file: fleet drains as the last known fleet view,
    /// local ones as local, held ones as held.
    pub fn new(file: Drains) -> Self {
        let mut book = FleetBook {
            shared: BTreeMap::new(),
            local: BTreeMap::new(),
            held: BTreeMap::new(),
            effective: BTreeMap::new(),
            fences: Fences::new(),
            refused: BTreeMap::new(),
            down: Default::default(),
            file,
        };
        let known: Vec<(String, Drain)> = book
            .file
            .iter()
            .map(|(r, d)| (r.clone(), d.clone()))
            .collect();
        // Held intents, undrains too, with their exact time; files written
        // before they were kept have only the held drains (scope pending).
        book.held = book.file.held();
        let exact = !book.held.is_empty();
        for (region, d) in known {
            match d.scope {
                Scope::Local => {
                    book.local.insert(region, d);
                }
                Scope::Fleet => {
                    book.shared.insert(region, Intent::drained(d));
                }
                Scope::Pending if exact => {}
                Scope::Pending => {
                    book.held.insert(region, Intent::drained(d));
                }
            }
        }
        book.rebuild();
        book
    }

    /// The held intents into the state file: a restart before etcd is back
    /// loses none of them, undrains included.
    fn keep_held(&mut self) {
        self.file.set_held(&self.held);
    }

    fn rebuild(&mut self) {
        // What each region's newest word says: the fleet's, a held intent
        // over it, a local drain over both; then the guard.
        let mut wanted: BTreeMap<String, (Drain, u64)> = BTreeMap::new();
        for (region, intent) in &self.shared {
            if let Some(d) = &intent.drain {
                wanted.insert(region.clone(), (d.clone(), intent.at_ms));
            }
        }
        for (region, intent) in &self.held {
            match &intent.drain {
                Some(d) => {
                    wanted.insert(region.clone(), (d.clone(), intent.at_ms));
                }
                None => {
                    wanted.remove(region);
                }
            }
        }
        for (region, d) in &self.local {
            wanted.insert(region.clone(), (d.clone(), d.since.saturating_mul(1000)));
        }
        let (effective, refused) = crate::drains::guard(
            wanted.into_iter().map(|(r, (d, at))| (r, d, at)).collect(),
            &self.fences,
            &self.down,
            &self.effective,
        );
        if refused != self.refused {
            for (region, jurisdiction) in &refused {
                if !self.refused.contains_key(region) {
                    tracing::warn!(target: "georouter::fleet", %region, %jurisdiction, "a drain of the fleet is not applied: it would leave jurisdiction {jurisdiction} with no serving region (undrained and up here)");
                }
            }
            for region in self.refused.keys() {
                if !refused.contains_key(region) {
                    tracing::info!(target: "georouter::fleet", %region, "a drain held back by the jurisdiction guard no longer is");
                }
            }
            self.refused = refused;
        }
        if effective != self.effective {
            self.effective = effective;
            self.file.replace(self.effective.clone());
        }
    }
}

impl DrainStore for FleetBook {
    fn get(&self, region: &str) -> Option<&Drain> {
        self.effective.get(region)
    }

    fn iter(&self) -> Box<dyn Iterator<Item = (&String, &Drain)> + '_> {
        Box::new(self.effective.iter())
    }

    /// A local-only drain (`scope=local`) or its end.
    fn set(&mut self, region: &str, drain: Option<Drain>) {
        match drain {
            Some(mut d) => {
                d.scope = Scope::Local;
                self.local.insert(region.to_owned(), d);
            }
            None => {
                self.local.remove(region);
            }
        }
        self.rebuild();
    }

    fn take_write(&mut self) -> Option<StateWrite> {
        self.file.take_write()
    }

    fn set_fences(&mut self, fences: Fences) {
        self.fences = fences;
        self.rebuild();
    }

    fn refused(&self) -> Vec<(String, String)> {
        self.refused
            .iter()
            .map(|(r, j)| (r.clone(), j.clone()))
            .collect()
    }

    fn fleet_epoch(&self) -> Option<String> {
        self.file.fleet_epoch()
    }

    fn set_fleet_epoch(&mut self, epoch: Option<String>) {
        self.file.set_fleet_epoch(epoch)
    }

    /// Partial drains, the fleet's and local ones alike, live in the state
    /// file: a restart without etcd still applies them.
    fn scales(&self) -> Vec<(String, Scale)> {
        self.file.scales()
    }

    fn set_scale(&mut self, region: &str, scale: Option<Scale>) {
        self.file.set_scale(region, scale)
    }
}

/// The fleet's side: what the fleet says, and what this router decided while
/// it could not reach the fleet.
impl FleetBook {
    /// The fleet's intents, all of them (a full read).
    pub fn replace(&mut self, all: BTreeMap<String, Intent>) {
        self.shared = all;
        self.rebuild();
    }

    /// One intent the fleet's store changed.
    pub fn apply(&mut self, region: &str, intent: Intent) {
        self.shared.insert(region.to_owned(), intent);
        self.rebuild();
    }

    /// The fleet's intent for `region` as last applied.
    pub fn intent(&self, region: &str) -> Option<Intent> {
        self.shared.get(region).cloned()
    }

    /// The regions this instance sees down by its own checks: a drain held
    /// back because it would have left a jurisdiction without a serving
    /// region applies once that is no longer so.
    pub fn set_down(&mut self, down: std::collections::BTreeSet<String>) {
        if down != self.down {
            self.down = down;
            self.rebuild();
        }
    }

    /// Records an intent made while the fleet was unreachable.
    pub fn hold(&mut self, region: &str, mut intent: Intent) {
        if let Some(d) = &mut intent.drain {
            d.scope = Scope::Pending;
        }
        self.held.insert(region.to_owned(), intent);
        self.keep_held();
        self.rebuild();
    }

    /// The held intents, to write to the fleet now that it is back.
    pub fn held(&self) -> Vec<(String, Intent)> {
        self.held
            .iter()
            .map(|(r, i)| (r.clone(), i.clone()))
            .collect()
    }

    /// Forgets a held intent (written, or the fleet's was newer).
    pub fn release(&mut self, region: &str) {
        self.held.remove(region);
        self.keep_held();
        self.rebuild();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(reason: &str, scope: Scope) -> Drain {
        Drain {
            force: false,
            reason: reason.to_owned(),
            by: "test".to_owned(),
            since: 1,
            scope,
        }
    }

    #[test]
    fn held_intents_override_the_fleet_until_released_and_local_drains_stay() {
        let mut b = FleetBook::new(Drains::default());
        b.replace(BTreeMap::from([(
            "eu".to_owned(),
            Intent {
                drain: Some(drain("fleet", Scope::Fleet)),
                by: "test".to_owned(),
                at_ms: 10,
            },
        )]));
        assert_eq!(b.get("eu").unwrap().scope, Scope::Fleet);
        // Undrained here while the fleet is unreachable.
        b.hold(
            "eu",
            Intent {
                drain: None,
                by: "test".to_owned(),
                at_ms: 20,
            },
        );
        assert!(b.get("eu").is_none());
        b.set("us", Some(drain("local", Scope::Local)));
        assert_eq!(b.get("us").unwrap().scope, Scope::Local);
        assert_eq!(b.held().len(), 1);
        b.release("eu");
        assert_eq!(b.get("eu").unwrap().reason, "fleet");
        // The fleet's undrain does not end a local drain.
        b.apply(
            "us",
            Intent {
                drain: None,
                by: "test".to_owned(),
                at_ms: 30,
            },
        );
        assert_eq!(b.get("us").unwrap().reason, "local");
    }
}
