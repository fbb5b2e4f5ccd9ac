//! `georouter fleet status|drain|undrain`: the fleet through etcd directly, for
//! when no instance is reachable. The same guard as the admin API: a drain
//! that would leave a jurisdiction without a serving region (as the live
//! instances report their regions) is refused unless forced.

use std::fmt::Write as _;
use std::time::Duration;

use super::keys::FleetDrain;
use super::{now_ms, Fleet, FleetError, FleetStatus, Guard};
use crate::config::Config;
use crate::drains::{Drain, Intent, Scope};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}: fleet.policy is not true: the instances would not take a pushed policy")]
    PolicyOff(String),
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{path}: no [fleet] section: this policy's router is not in a fleet")]
    NoFleet { path: String },
    #[error("no region {0:?} in the policy")]
    UnknownRegion(String),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Etcd(#[from] super::etcd::EtcdError),
    #[error(transparent)]
    StateFile(#[from] crate::drains::StateFileError),
    #[error(transparent)]
    Signing(#[from] crate::signing::SigningError),
    #[error("the canary stage (revision {revision}, on {canaries}) failed, so the policy went no further: {why}")]
    CanaryFailed {
        revision: i64,
        canaries: String,
        why: String,
    },
    #[error("{0}: no fleet epoch in this state file: it was not written by an instance of a fleet (use the admin.state_file of one)")]
    NoEpoch(String),
    #[error("--canary {0}: not a live instance of the fleet (live: {1}); name live instances, or give a count")]
    UnknownCanary(String, String),
}

/// The fleet of a policy file.
pub fn fleet_of(config: &Config, path: &str) -> Result<Fleet, CliError> {
    let settings = config.fleet.as_ref().ok_or_else(|| CliError::NoFleet {
        path: path.to_owned(),
    })?;
    Ok(Fleet::new(settings, None).map_err(FleetError::from)?)
}

/// Drains (`reason: Some`) or undrains a region fleet-wide; the status after
/// waiting up to `wait` for every live instance to apply it.
pub async fn set_drain(
    fleet: &Fleet,
    config: &Config,
    region: &str,
    reason: Option<String>,
    force: bool,
    wait: Duration,
) -> Result<(i64, FleetStatus), CliError> {
    let spec = config
        .regions
        .iter()
        .find(|r| r.name.as_str() == region)
        .ok_or_else(|| CliError::UnknownRegion(region.to_owned()))?;
    let status = fleet.status().await?;
    // Healthy as the live instances see it: up somewhere, or not reported.
    let healthy = |name: &str| {
        let views: Vec<&String> = status
            .instances
            .iter()
            .filter_map(|i| i.regions.get(name))
            .collect();
        views.is_empty() || views.iter().any(|v| v.starts_with("up"))
    };
    let guard = match (&spec.jurisdiction, force) {
        (Some(j), false) => Some(Guard {
            jurisdiction: j.clone(),
            regions: config
                .regions
                .iter()
                .filter(|r| r.jurisdiction.as_ref() == Some(j))
                .map(|r| (r.name.to_string(), healthy(r.name.as_str())))
                .collect(),
        }),
        _ => None,
    };
    let by = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned())
    );
    let intent = Intent {
        drain: reason.map(|reason| Drain {
            reason,
            by: by.clone(),
            since: now_ms() / 1000,
            scope: Scope::Fleet,
            force,
        }),
        by,
        at_ms: now_ms(),
    };
    let revision = fleet.write_drain(region, &intent, guard.as_ref()).await?;
    let status = fleet.wait_for(revision, wait).await?;
    Ok((revision, status))
}

/// Where a staged push goes first: nowhere (no stage), the first `n` live
/// instances by name, or the instances named.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Canary {
    #[default]
    None,
    First(usize),
    Named(Vec<String>),
}

impl std::str::FromStr for Canary {
    type Err = String;

    /// `3` (a count; 0: no stage) or `fra-1,ams-2` (instances).
    fn from_str(s: &str) -> Result<Canary, String> {
        if let Ok(n) = s.trim().parse::<usize>() {
            return Ok(if n == 0 {
                Canary::None
            } else {
                Canary::First(n)
            });
        }
        let names: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            return Err("a count of instances or their names, comma separated".to_owned());
        }
        Ok(Canary::Named(names))
    }
}

/// Pushes the policy at `path` to the fleet (the caller ran `georouter
/// check`'s checks on it first); the revision and the status after waiting up
/// to `wait` for every live instance to apply or refuse it.
pub async fn push(
    fleet: &Fleet,
    path: &std::path::Path,
    key: &std::path::Path,
    canary: &Canary,
    wait: Duration,
) -> Result<(i64, FleetStatus), CliError> {
    let shown = path.display().to_string();
    if !fleet.settings.policy {
        return Err(CliError::PolicyOff(shown));
    }
    let text = std::fs::read_to_string(path).map_err(|e| CliError::Read(shown, e))?;
    push_text(fleet, &text, key, canary, wait).await
}

/// Pushes a policy text, signed with `key`: with a canary stage, first to
/// those live instances (the first `n` by name, or the ones named), waiting
/// for each to apply it; any refusal (or silence within `wait`) halts the
/// push there (`CliError::CanaryFailed`); then to every instance.
pub async fn push_text(
    fleet: &Fleet,
    text: &str,
    key: &std::path::Path,
    canary: &Canary,
    wait: Duration,
) -> Result<(i64, FleetStatus), CliError> {
    if *canary != Canary::None {
        let mut live: Vec<String> = fleet
            .status()
            .await?
            .instances
            .into_iter()
            .map(|i| i.instance)
            .collect();
        live.sort();
        match canary {
            Canary::First(n) => live.truncate(*n),
            Canary::Named(names) => {
                if let Some(missing) = names.iter().find(|n| !live.contains(n)) {
                    return Err(CliError::UnknownCanary(missing.clone(), live.join(", ")));
                }
                live = names.clone();
            }
            Canary::None => {}
        }
        let stage = crate::signing::staged(text, &live);
        let signed = crate::signing::sign_with(key, &stage)?;
        let revision = fleet.push_policy(&signed).await?;
        let status = wait_for_policy(fleet, revision, &live, wait).await?;
        let (applied, rejected, _) = status.policy_outcome(revision);
        let applied: Vec<&String> = applied.iter().filter(|i| live.contains(i)).collect();
        if applied.len() < live.len() {
            let why = if rejected.is_empty() {
                "not applied within the wait".to_owned()
            } else {
                rejected
                    .iter()
                    .map(|(i, e)| format!("{i}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            return Err(CliError::CanaryFailed {
                revision,
                canaries: live.join(", "),
                why,
            });
        }
    }
    let signed = crate::signing::sign_with(key, text)?;
    let revision = fleet.push_policy(&signed).await?;
    let everyone: Vec<String> = Vec::new();
    let status = wait_for_policy(fleet, revision, &everyone, wait).await?;
    Ok((revision, status))
}

/// The status once every instance of `of` (every live one when empty) has
/// applied or refused the policy at `revision`, or `wait` passed.
async fn wait_for_policy(
    fleet: &Fleet,
    revision: i64,
    of: &[String],
    wait: Duration,
) -> Result<FleetStatus, CliError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let status = fleet.status().await?;
        let (_, _, pending) = status.policy_outcome(revision);
        let waiting = pending.iter().any(|i| of.is_empty() || of.contains(i));
        if !waiting || tokio::time::Instant::now() >= deadline {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What became of a pushed policy, for people: "4 applied, 1 rejected: ...".
pub fn policy_summary(revision: i64, status: &FleetStatus) -> String {
    let (applied, rejected, pending) = status.policy_outcome(revision);
    let mut out = format!(
        "policy pushed at revision {revision}: {} applied, {} rejected",
        applied.len(),
        rejected.len()
    );
    if !pending.is_empty() {
        let _ = write!(out, ", {} not yet ({})", pending.len(), pending.join(", "));
    }
    out.push('\n');
    for (instance, errors) in rejected {
        let _ = writeln!(
            out,
            "  {instance} rejected it (and serves the policy before): {errors}"
        );
    }
    out
}

/// What a drain call did, for people.
pub fn summary(revision: i64, status: &FleetStatus) -> String {
    let lagging = status.lagging();
    format!(
        "written at revision {revision}; {} of {} live instance(s) applied it{}\n",
        status.instances.len() - lagging.len(),
        status.instances.len(),
        if lagging.is_empty() {
            String::new()
        } else {
            format!(" (not yet: {})", lagging.join(", "))
        }
    )
}

/// The status as a table for people.
pub fn render(status: &FleetStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fleet {}: {} live instance(s); latest drain change at revision {}",
        status.prefix,
        status.instances.len(),
        status.latest_drain_revision
    );
    for i in &status.instances {
        let _ = writeln!(
            out,
            "  {:<24} {:<11} applied {:<8} policy generation {:<4} reported {:.1}s ago",
            i.instance,
            if i.history_changed {
                "HISTORY CHANGED"
            } else if i.in_step {
                "in step"
            } else {
                "LAGGING"
            },
            i.applied_revision,
            i.policy_generation,
            i.seconds_since_report
        );
    }
    if status.policy_revision > 0 {
        let (applied, rejected, pending) = status.policy_outcome(status.policy_revision);
        let _ = writeln!(
            out,
            "policy at revision {}: {} applied, {} rejected{}",
            status.policy_revision,
            applied.len(),
            rejected.len(),
            if pending.is_empty() {
                String::new()
            } else {
                format!(", {} not yet", pending.len())
            }
        );
        for (instance, errors) in rejected {
            let _ = writeln!(out, "  {instance} rejected it: {errors}");
        }
    }
    for g in &status.gone {
        let _ = writeln!(out, "  {g:<24} gone (its lease expired)");
    }
    let drained: Vec<(&String, &FleetDrain)> =
        status.drains.iter().filter(|(_, d)| d.drained).collect();
    if drained.is_empty() {
        let _ = writeln!(out, "no fleet drain");
    }
    for (region, d) in drained {
        let _ = writeln!(
            out,
            "  drained: {region} ({}; by {} through {})",
            d.reason, d.by, d.instance
        );
    }
    for (region, why) in &status.malformed {
        let _ = writeln!(
            out,
            "  UNREADABLE drain of {region}: {why} (instances keep the drain last applied; drain or undrain it again)"
        );
    }
    out
}

/// `georouter fleet restore --from STATE_FILE`: writes the fleet's epoch and
/// the fleet drains an instance last applied (its state file) back to etcd,
/// after etcd lost its data. Instances that kept that epoch follow etcd again.
pub async fn restore(fleet: &Fleet, state_file: &std::path::Path) -> Result<String, CliError> {
    use crate::drains::DrainStore;
    let shown = state_file.display().to_string();
    if !state_file.exists() {
        return Err(CliError::Read(
            shown,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let saved = crate::drains::Drains::load(Some(state_file))?;
    let epoch = saved.fleet_epoch().ok_or(CliError::NoEpoch(shown))?;
    let mut out = String::new();
    for (region, d) in saved.iter() {
        if d.scope != Scope::Fleet {
            continue;
        }
        let intent = Intent::drained(d.clone());
        fleet.write_drain(region, &intent, None).await?;
        let _ = writeln!(
            out,
            "restored: {region} drained ({}; by {})",
            d.reason, d.by
        );
    }
    fleet
        .store
        .put(&fleet.keys.epoch(), epoch.as_bytes(), None)
        .await?;
    let _ = writeln!(
        out,
        "fleet epoch {epoch} written back: instances that kept it follow etcd again"
    );
    Ok(out)
}
