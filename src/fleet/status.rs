//! The fleet as etcd shows it: each instance's acknowledgement, what became of
//! a pushed policy, who lags.

use std::collections::BTreeMap;

use serde::Serialize;

use super::keys::{FleetDrain, Rejection};

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
