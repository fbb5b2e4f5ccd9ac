//! The fleet's key layout under its prefix, and the records kept there. One
//! fleet per prefix; every value is JSON.
//!
//! ```text
//! {prefix}/drains/{region}      a drain intent (FleetDrain), newest wins
//! {prefix}/capacity/{region}    a partial drain (FleetScale): the share of clients kept
//! {prefix}/instances/{id}       an instance's acknowledgement (InstanceRecord), on its lease
//! {prefix}/policy               the fleet's policy, TOML (with fleet.policy = true)
//! {prefix}/epoch                the fleet's identity in this etcd history (random, written once)
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::drains::{Drain, Intent, Scope};

/// The keys of one fleet.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn drains(&self) -> String {
        format!("{}/drains/", self.prefix)
    }

    pub fn drain(&self, region: &str) -> String {
        format!("{}/drains/{region}", self.prefix)
    }

    pub fn scales(&self) -> String {
        format!("{}/capacity/", self.prefix)
    }

    pub fn scale(&self, region: &str) -> String {
        format!("{}/capacity/{region}", self.prefix)
    }

    pub fn epoch(&self) -> String {
        format!("{}/epoch", self.prefix)
    }

    pub fn policy(&self) -> String {
        format!("{}/policy", self.prefix)
    }

    pub fn instances(&self) -> String {
        format!("{}/instances/", self.prefix)
    }

    pub fn instance(&self, id: &str) -> String {
        format!("{}/instances/{id}", self.prefix)
    }

    /// The last part of a key under `dir` (`drains/` or `instances/`).
    pub fn name_in<'k>(&self, dir: &str, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(dir)
            .filter(|n| !n.is_empty() && !n.contains('/'))
    }
}

/// A region's drain as the fleet keeps it: an undrain is kept too (drained =
/// false), so that every intent has a time and the newer one wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetDrain {
    pub drained: bool,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub by: String,
    /// The instance the call reached.
    #[serde(default)]
    pub instance: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Made with `force=true`: may drain a jurisdiction's last region.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// The largest drain value read, in bytes: a record is a few hundred.
pub const MAX_DRAIN_VALUE: usize = 4096;

impl FleetDrain {
    /// One reading of a stored value, for the watch and a full read alike:
    /// the record, or why it is not one (too large, not JSON of this shape).
    pub fn read(value: &[u8]) -> Result<FleetDrain, String> {
        if value.len() > MAX_DRAIN_VALUE {
            return Err(format!(
                "{} bytes, over the {MAX_DRAIN_VALUE}-byte limit",
                value.len()
            ));
        }
        serde_json::from_slice(value).map_err(|e| e.to_string())
    }

    pub fn intent(&self) -> Intent {
        Intent {
            drain: self.drained.then(|| Drain {
                reason: self.reason.clone(),
                by: self.by.clone(),
                since: self.at_ms / 1000,
                scope: Scope::Fleet,
                force: self.force,
            }),
            by: self.by.clone(),
            at_ms: self.at_ms,
        }
    }

    pub fn of(intent: &Intent, instance: &str) -> Self {
        FleetDrain {
            drained: intent.drain.is_some(),
            reason: intent
                .drain
                .as_ref()
                .map(|d| d.reason.clone())
                .unwrap_or_default(),
            by: intent.by.clone(),
            instance: instance.to_owned(),
            at_ms: intent.at_ms,
            force: intent.drain.as_ref().is_some_and(|d| d.force),
        }
    }
}

/// A region's partial drain as the fleet keeps it: the share of its clients
/// it keeps (1: all, the end of a partial drain).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetScale {
    pub keep: f64,
    #[serde(default)]
    pub by: String,
    /// The instance the call reached.
    #[serde(default)]
    pub instance: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl FleetScale {
    /// One reading of a stored value, under the same size limit as a drain's.
    pub fn read(value: &[u8]) -> Result<FleetScale, String> {
        if value.len() > MAX_DRAIN_VALUE {
            return Err(format!(
                "{} bytes, over the {MAX_DRAIN_VALUE}-byte limit",
                value.len()
            ));
        }
        serde_json::from_slice(value).map_err(|e| e.to_string())
    }

    /// The share kept, within 0 to 1 whatever was written.
    pub fn keep(&self) -> f64 {
        if self.keep.is_finite() {
            self.keep.clamp(0.0, 1.0)
        } else {
            1.0
        }
    }
}

/// What an instance says of itself, on its lease: gone when it stops renewing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance: String,
    /// The etcd revision of the last drain change it applied.
    pub applied_revision: i64,
    /// Its policy generation (reloads since its start, 1 at start).
    pub policy_generation: u64,
    /// Its view of each region: up, down, ejected, held_down (and drained).
    #[serde(default)]
    pub regions: BTreeMap<String, String>,
    /// The etcd revision of the fleet policy it serves (0: its own file's).
    #[serde(default)]
    pub policy_revision: i64,
    /// The last fleet policy it refused, and why.
    #[serde(default)]
    pub policy_rejected: Option<Rejection>,
    /// When it wrote this, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// It follows another etcd history (the fleet's epoch changed): its
    /// revisions mean nothing here.
    #[serde(default)]
    pub history_changed: bool,
    /// The fleet epoch of the history its revisions belong to.
    #[serde(default)]
    pub epoch: Option<String>,
}

/// A fleet policy an instance refused: it keeps serving the one before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub revision: i64,
    pub errors: String,
}
