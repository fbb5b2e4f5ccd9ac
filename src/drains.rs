//! Operator drains: which regions are drained (or keep only a share of their
//! clients), why, by whom and since when. The control plane keeps them in a
//! [`DrainStore`]; [`Drains`] is the local one, a small JSON state file
//! (a [`StateWrite`]: written aside, fsynced and renamed) so a restart
//! reapplies them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub reason: String,
    /// Who asked (the admin caller's address).
    pub by: String,
    /// Unix time, seconds.
    pub since: u64,
    /// Where the drain holds: this router only, the whole fleet, or this
    /// router until the fleet's store is back.
    #[serde(default)]
    pub scope: Scope,
    /// Made with `force=true`: it may drain a jurisdiction's last region.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// A partial drain: the share of its clients a region keeps
/// (`POST /regions/{name}/capacity?scale=`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    /// 0 to 1 (1: every client; it is then forgotten).
    pub keep: f64,
    pub by: String,
    /// Unix time, seconds.
    pub since: u64,
    #[serde(default)]
    pub scope: Scope,
}

/// Where a drain holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// This router only (a standalone router's drains, or `scope=local`).
    #[default]
    Local,
    /// Every router of the fleet (kept in etcd).
    Fleet,
    /// Made while etcd was unreachable: this router only, written to the fleet
    /// when etcd is back (unless the fleet's intent is newer).
    Pending,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Fleet => "fleet",
            Scope::Pending => "pending",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write state file {path}: {source} (admin.state_file: its directory must exist and be writable by this user)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the control plane keeps drains: the seam between it and a store (the
/// local state file of a standalone router, or a fleet's book over etcd).
/// Changes are made in memory; what must reach the disk is taken out with
/// [`DrainStore::take_write`] and written by the caller, outside its lock.
pub trait DrainStore: Send + std::fmt::Debug {
    /// The drain of `region`, if it is drained.
    fn get(&self, region: &str) -> Option<&Drain>;
    /// Every drain, by region name.
    fn iter(&self) -> Box<dyn Iterator<Item = (&String, &Drain)> + '_>;
    /// Sets (`Some`) or clears (`None`) a drain of this router.
    fn set(&mut self, region: &str, drain: Option<Drain>);
    /// The state file as it must now be written, when a change since the
    /// last call touched it (and there is a file).
    fn take_write(&mut self) -> Option<StateWrite>;
    /// The strict jurisdictions' regions, for a store that guards what it
    /// applies (a fleet's): set at start and on every reload.
    fn set_fences(&mut self, _fences: Fences) {}
    /// Drains the store does not apply because each would leave a strict
    /// jurisdiction without an undrained region: (region, jurisdiction).
    fn refused(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// The fleet's epoch kept from the etcd history last followed.
    fn fleet_epoch(&self) -> Option<String> {
        None
    }
    /// Keeps the fleet's epoch.
    fn set_fleet_epoch(&mut self, _epoch: Option<String>) {}
    /// Every partial drain kept, by region name.
    fn scales(&self) -> Vec<(String, Scale)>;
    /// Keeps (`Some`) or forgets (`None`) a region's partial drain.
    fn set_scale(&mut self, region: &str, scale: Option<Scale>);
}

/// An intent about one region's drain: drained (`Some`) or not, who said so,
/// and when it was made (milliseconds since the Unix epoch): the newer intent
/// wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub drain: Option<Drain>,
    /// Who made it (a drain's `by`; for an undrain, its own actor).
    pub by: String,
    pub at_ms: u64,
}

impl Intent {
    /// A drain, made by its `by`, at its `since` (seconds).
    pub fn drained(drain: Drain) -> Intent {
        Intent {
            by: drain.by.clone(),
            at_ms: drain.since.saturating_mul(1000),
            drain: Some(drain),
        }
    }
}

/// Each strict jurisdiction's name and regions.
pub type Fences = Vec<(String, Vec<String>)>;

/// The apply-side guard, one deterministic function of the drains wanted
/// (region, drain, when in ms since the Unix epoch), the fences, the regions
/// this instance sees down by its own checks, and the drains in force: a drain
/// in force stays (a region failing later never undoes an operator's drain);
/// the others are taken in the order they were made (then by region name), and
/// one that would leave a strict jurisdiction with no serving region (up here,
/// not drained) is not applied unless it was forced, until that changes. Same
/// intents and view, same result on every instance, whatever was written to
/// the store and in whichever order it arrived. Returns the drains applied and
/// those refused (region -> jurisdiction).
pub fn guard(
    wanted: Vec<(String, Drain, u64)>,
    fences: &Fences,
    down: &std::collections::BTreeSet<String>,
    in_force: &BTreeMap<String, Drain>,
) -> (BTreeMap<String, Drain>, BTreeMap<String, String>) {
    let (mut applied, mut rest): (BTreeMap<String, Drain>, Vec<_>) = (BTreeMap::new(), Vec::new());
    for (region, drain, at) in wanted {
        if in_force.get(&region) == Some(&drain) {
            applied.insert(region, drain);
        } else {
            rest.push((region, drain, at));
        }
    }
    rest.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
    let mut refused = BTreeMap::new();
    for (region, drain, _) in rest {
        let emptied = fences.iter().find(|(_, regions)| {
            regions.contains(&region)
                && regions
                    .iter()
                    .all(|r| *r == region || applied.contains_key(r) || down.contains(r))
        });
        match emptied {
            Some((jurisdiction, _)) if !drain.force => {
                refused.insert(region, jurisdiction.clone());
            }
            _ => {
                applied.insert(region, drain);
            }
        }
    }
    (applied, refused)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    drains: BTreeMap<String, Drain>,
    /// Partial drains (absent in files written before they existed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    capacity: BTreeMap<String, Scale>,
    /// The fleet's epoch in the etcd history last followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fleet_epoch: Option<String>,
    /// Drains and undrains made while etcd was unreachable, with their exact
    /// time, still to be written to the fleet.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    held: BTreeMap<String, HeldIntent>,
}

/// An intent held while etcd was unreachable, as the state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HeldIntent {
    drain: Option<Drain>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    by: String,
    at_ms: u64,
}

/// Drains by region name; regions that left the policy keep theirs, so a region
/// removed and added back is still drained.
#[derive(Debug, Default)]
pub struct Drains {
    by_region: BTreeMap<String, Drain>,
    scales: BTreeMap<String, Scale>,
    fleet_epoch: Option<String>,
    held: BTreeMap<String, HeldIntent>,
    file: Option<PathBuf>,
    /// Changed since the state file was last taken out to be written.
    dirty: bool,
}

/// The state file's next content, to be written outside the store's lock.
#[derive(Debug)]
pub struct StateWrite {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

impl StateWrite {
    /// Writes aside, flushes to disk, renames over, and makes the rename
    /// durable: a crash or power loss leaves the old file or the new one.
    pub fn commit(&self) -> Result<(), StateFileError> {
        let path = &self.path;
        let failed = |source| StateFileError::Write {
            path: path.clone(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).map_err(failed)?;
        std::io::Write::write_all(&mut file, &self.bytes).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(failed)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // A directory cannot be opened for syncing everywhere; the file
            // itself is safe either way.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drains {
    /// Reads the state file; a missing file is an empty one.
    pub fn load(file: Option<&Path>) -> Result<Drains, StateFileError> {
        let Some(path) = file else {
            return Ok(Drains::default());
        };
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<StateFile>(&bytes).map_err(|source| {
                StateFileError::Parse {
                    path: path.to_owned(),
                    source,
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(source) => {
                return Err(StateFileError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Ok(Drains {
            by_region: state.drains,
            scales: state.capacity,
            fleet_epoch: state.fleet_epoch,
            held: state.held,
            file: Some(path.to_owned()),
            dirty: false,
        })
    }

    /// Whether the state file can be written where it is (a probe file of
    /// this process is made beside it and removed, never the side file a
    /// running router saves through): a drain that cannot be kept is found at
    /// start, not at the first drain.
    pub fn check_writable(file: Option<&Path>) -> Result<(), StateFileError> {
        let Some(path) = file else {
            return Ok(());
        };
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".probe-{}", std::process::id()));
        let tmp = path.with_file_name(name);
        let probe = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&tmp)
            .and_then(|f| {
                drop(f);
                std::fs::remove_file(&tmp)
            });
        probe.map_err(|source| StateFileError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// Replaces every drain.
    pub fn replace(&mut self, all: BTreeMap<String, Drain>) {
        self.by_region = all;
        self.dirty = true;
    }

    /// The intents held while etcd was unreachable, as last kept.
    pub fn held(&self) -> BTreeMap<String, Intent> {
        self.held
            .iter()
            .map(|(r, h)| {
                (
                    r.clone(),
                    Intent {
                        drain: h.drain.clone(),
                        by: h.by.clone(),
                        at_ms: h.at_ms,
                    },
                )
            })
            .collect()
    }

    /// Keeps the held intents (undrains too) with their exact time.
    pub fn set_held(&mut self, held: &BTreeMap<String, Intent>) {
        let next: BTreeMap<String, HeldIntent> = held
            .iter()
            .map(|(r, i)| {
                (
                    r.clone(),
                    HeldIntent {
                        drain: i.drain.clone(),
                        by: i.by.clone(),
                        at_ms: i.at_ms,
                    },
                )
            })
            .collect();
        if next != self.held {
            self.held = next;
            self.dirty = true;
        }
    }
}

impl DrainStore for Drains {
    fn get(&self, region: &str) -> Option<&Drain> {
        self.by_region.get(region)
    }

    fn iter(&self) -> Box<dyn Iterator<Item = (&String, &Drain)> + '_> {
        Box::new(self.by_region.iter())
    }

    fn set(&mut self, region: &str, drain: Option<Drain>) {
        match drain {
            Some(d) => self.by_region.insert(region.to_owned(), d),
            None => self.by_region.remove(region),
        };
        self.dirty = true;
    }

    fn take_write(&mut self) -> Option<StateWrite> {
        let path = self.file.as_ref().filter(|_| self.dirty)?;
        self.dirty = false;
        let state = StateFile {
            drains: self.by_region.clone(),
            capacity: self.scales.clone(),
            fleet_epoch: self.fleet_epoch.clone(),
            held: self.held.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&state).expect("drains serialise");
        bytes.push(b'\n');
        Some(StateWrite {
            path: path.clone(),
            bytes,
        })
    }

    fn fleet_epoch(&self) -> Option<String> {
        self.fleet_epoch.clone()
    }

    fn set_fleet_epoch(&mut self, epoch: Option<String>) {
        if self.fleet_epoch != epoch {
            self.fleet_epoch = epoch;
            self.dirty = true;
        }
    }

    fn scales(&self) -> Vec<(String, Scale)> {
        self.scales
            .iter()
            .map(|(r, s)| (r.clone(), s.clone()))
            .collect()
    }

    fn set_scale(&mut self, region: &str, scale: Option<Scale>) {
        let before = self.scales.get(region).cloned();
        match scale.filter(|s| s.keep < 1.0) {
            Some(s) => self.scales.insert(region.to_owned(), s),
            None => self.scales.remove(region),
        };
        if self.scales.get(region) != before.as_ref() {
            self.dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_survive_a_restart_through_the_file() {
        let dir = std::env::temp_dir().join(format!("georouter-drains-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.json");
        let _ = std::fs::remove_file(&file);
        let mut d = Drains::load(Some(&file)).unwrap();
        assert!(d.get("eu-west").is_none());
        let drain = Drain {
            reason: "DR drill".to_owned(),
            by: "127.0.0.1".to_owned(),
            since: 1,
            scope: Scope::Local,
            force: false,
        };
        d.set("eu-west", Some(drain.clone()));
        d.set("us-east", Some(drain.clone()));
        d.set("us-east", None);
        d.take_write().expect("a change to write").commit().unwrap();
        assert!(d.take_write().is_none(), "written once");
        let again = Drains::load(Some(&file)).unwrap();
        assert_eq!(again.get("eu-west"), Some(&drain));
        assert!(again.get("us-east").is_none());
    }

    #[test]
    fn partial_drains_survive_a_restart_and_files_without_them_still_load() {
        let dir = std::env::temp_dir().join(format!("georouter-scales-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.json");
        std::fs::write(&file, br#"{"drains": {}}"#).unwrap();
        let mut d = Drains::load(Some(&file)).unwrap();
        assert!(d.scales().is_empty());
        let scale = Scale {
            keep: 0.25,
            by: "127.0.0.1".to_owned(),
            since: 1,
            scope: Scope::Local,
        };
        d.set_scale("eu-west", Some(scale.clone()));
        d.set_scale("us-east", Some(scale.clone()));
        // Keeping every client is no partial drain.
        d.set_scale(
            "us-east",
            Some(Scale {
                keep: 1.0,
                ..scale.clone()
            }),
        );
        d.take_write().expect("a change to write").commit().unwrap();
        let again = Drains::load(Some(&file)).unwrap();
        assert_eq!(again.scales(), vec![("eu-west".to_owned(), scale)]);
    }

    fn d(force: bool) -> Drain {
        Drain {
            reason: String::new(),
            by: String::new(),
            since: 0,
            scope: Scope::Fleet,
            force,
        }
    }

    fn eu() -> Fences {
        vec![("eu".to_owned(), vec!["eu1".to_owned(), "eu2".to_owned()])]
    }

    #[test]
    fn the_guard_keeps_a_region_of_each_jurisdiction_whatever_the_order_of_arrival() {
        let wanted = |order: [usize; 3]| {
            let all = [("eu2", 20), ("us", 5), ("eu1", 10)];
            order
                .iter()
                .map(|&i| (all[i].0.to_owned(), d(false), all[i].1))
                .collect::<Vec<_>>()
        };
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2]] {
            let (applied, refused) = guard(
                wanted(order),
                &eu(),
                &Default::default(),
                &Default::default(),
            );
            // The older drain holds; the one that would empty eu does not.
            assert_eq!(
                applied.keys().collect::<Vec<_>>(),
                ["eu1", "us"],
                "{order:?}"
            );
            assert_eq!(refused.get("eu2").map(String::as_str), Some("eu"));
        }
    }

    #[test]
    fn a_forced_drain_may_empty_a_jurisdiction_and_ties_break_by_name() {
        let (applied, refused) = guard(
            vec![("eu1".into(), d(false), 10), ("eu2".into(), d(true), 20)],
            &eu(),
            &Default::default(),
            &Default::default(),
        );
        assert_eq!(applied.len(), 2);
        assert!(refused.is_empty());
        let (applied, refused) = guard(
            vec![("eu2".into(), d(false), 10), ("eu1".into(), d(false), 10)],
            &eu(),
            &Default::default(),
            &Default::default(),
        );
        assert_eq!(applied.keys().collect::<Vec<_>>(), ["eu1"]);
        assert_eq!(refused.keys().collect::<Vec<_>>(), ["eu2"]);
    }

    #[test]
    fn a_new_drain_counts_the_regions_down_here_and_a_drain_in_force_stays() {
        let down = std::collections::BTreeSet::from(["eu2".to_owned()]);
        // eu2 fails its checks here: draining eu1 would leave no EU region.
        let (applied, refused) = guard(
            vec![("eu1".into(), d(false), 10)],
            &eu(),
            &down,
            &Default::default(),
        );
        assert!(applied.is_empty());
        assert_eq!(refused.get("eu1").map(String::as_str), Some("eu"));
        // Drained while eu2 served, it stays drained when eu2 fails later.
        let in_force = BTreeMap::from([("eu1".to_owned(), d(false))]);
        let (applied, refused) = guard(vec![("eu1".into(), d(false), 10)], &eu(), &down, &in_force);
        assert!(applied.contains_key("eu1") && refused.is_empty());
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_with_its_path() {
        let dir = std::env::temp_dir().join(format!("georouter-drains-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.json");
        std::fs::write(&file, b"{ not json").unwrap();
        let e = Drains::load(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("state.json"), "{e}");
    }
}
