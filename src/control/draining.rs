//! Operator drains through the control plane: the last-serving-region guard of
//! a jurisdiction, the ramp back after an undrain, and the store that keeps them.

use tokio::time::Instant;

use super::drains::{Drain, StoreError};
use super::{unix_now, Control};

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

impl Control {
    /// Drains a region (`Some(reason)`) or undrains it (`None`).
    pub fn set_drain(
        &self,
        region: &str,
        drain: Option<(String, String)>,
        force: bool,
    ) -> Result<Option<StoreError>, DrainError> {
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
}
