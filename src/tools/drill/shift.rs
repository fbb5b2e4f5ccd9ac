//! `georouter drill --shift 10%`: a game day that moves a share of a region's
//! clients (a partial drain) before moving them all. Many clients are played;
//! the report says which share moved, whether the same ones stayed moved, and
//! whether anything failed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use super::report::{share_line, shares, Sample};
use super::{DrillError, DrillOptions};

#[derive(Debug, Serialize)]
pub struct ShiftReport {
    pub region: String,
    /// The share of the region's clients asked to move (0 to 1).
    pub shift: f64,
    pub rate: u32,
    pub requests: usize,
    pub errors: usize,
    /// Clients played, and those the region served before the shift.
    pub clients: usize,
    pub region_clients: usize,
    /// Of the region's clients, those served elsewhere during the shift.
    pub moved: usize,
    /// Clients answered by more than one region during the shift (should be 0:
    /// a moved client stays moved).
    pub unstable: usize,
    /// Of the moved clients, those the region serves again after the shift ends.
    pub returned: usize,
    pub share_before: BTreeMap<String, f64>,
    pub share_during: BTreeMap<String, f64>,
    pub share_after: BTreeMap<String, f64>,
}

impl ShiftReport {
    /// The share of the region's clients that moved.
    pub fn moved_share(&self) -> f64 {
        self.moved as f64 / self.region_clients.max(1) as f64
    }
}

impl std::fmt::Display for ShiftReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let share = share_line;
        writeln!(
            f,
            "drill: shift {:.0}% of {} at {} req/s",
            self.shift * 100.0,
            self.region,
            self.rate
        )?;
        writeln!(
            f,
            "  requests        {} ({} failed)",
            self.requests, self.errors
        )?;
        writeln!(
            f,
            "  clients         {} played, {} served by {} before",
            self.clients, self.region_clients, self.region
        )?;
        writeln!(
            f,
            "  moved           {} ({:.1}% of its clients; asked {:.0}%)",
            self.moved,
            self.moved_share() * 100.0,
            self.shift * 100.0
        )?;
        writeln!(
            f,
            "  unstable        {} (clients answered by two regions during the shift)",
            self.unstable
        )?;
        writeln!(
            f,
            "  returned        {} of {} after the shift ended",
            self.returned, self.moved
        )?;
        writeln!(f, "  share before    {}", share(&self.share_before))?;
        writeln!(f, "  share during    {}", share(&self.share_during))?;
        writeln!(f, "  share after     {}", share(&self.share_after))
    }
}

/// Sets the region's capacity scale through the admin API.
async fn set_scale(o: &DrillOptions, token: &str, keep: f64) -> Result<(), DrillError> {
    let path = format!("/regions/{}/capacity?scale={keep:.3}", o.region);
    super::post(o, &path, token, "capacity").await
}

/// Moves `shift` (0 to 1) of the region's clients for one phase, then gives
/// them back and watches them return.
pub async fn shift(
    o: &DrillOptions,
    token: &str,
    shift: f64,
    say: impl Fn(&str),
) -> Result<ShiftReport, DrillError> {
    let super::Steady {
        started,
        samples,
        stop,
        load,
    } = super::steady(o, &say, &format!(" over {} clients", o.clients)).await?;
    let snapshot = || samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let shifted_at = started.elapsed();
    say(&format!(
        "shifting {:.0}% of {}'s clients",
        shift * 100.0,
        o.region
    ));
    if let Err(e) = set_scale(o, token, 1.0 - shift).await {
        let _ = stop.send(true);
        return Err(e);
    }
    tokio::time::sleep(o.phase).await;
    let ended_at = started.elapsed();
    say(&format!("giving {} its clients back", o.region));
    let restored = set_scale(o, token, 1.0).await;
    tokio::time::sleep(o.phase).await;
    let _ = stop.send(true);
    for t in load {
        let _ = t.await;
    }
    restored?;
    let all = snapshot();
    Ok(summarize(
        o,
        shift,
        &all,
        shifted_at,
        ended_at,
        // Answers in flight when the scale changed belong to neither phase.
        Duration::from_millis(200),
    ))
}

fn summarize(
    o: &DrillOptions,
    shift: f64,
    all: &[Sample],
    shifted_at: Duration,
    ended_at: Duration,
    settle: Duration,
) -> ShiftReport {
    let before: Vec<&Sample> = all.iter().filter(|s| s.at < shifted_at).collect();
    let during: Vec<&Sample> = all
        .iter()
        .filter(|s| s.at >= shifted_at + settle && s.at < ended_at)
        .collect();
    let after: Vec<&Sample> = all.iter().filter(|s| s.at >= ended_at + settle).collect();
    let region_clients: BTreeSet<u32> = before
        .iter()
        .filter(|s| s.served_by(&o.region))
        .map(|s| s.client)
        .collect();
    let mut regions_during: BTreeMap<u32, BTreeSet<&str>> = BTreeMap::new();
    for s in during.iter().filter(|s| !s.failed()) {
        regions_during
            .entry(s.client)
            .or_default()
            .insert(s.region.as_deref().unwrap_or("-"));
    }
    let moved: BTreeSet<u32> = region_clients
        .iter()
        .copied()
        .filter(|c| {
            regions_during
                .get(c)
                .is_some_and(|r| !r.contains(o.region.as_str()))
        })
        .collect();
    let returned = after
        .iter()
        .filter(|s| s.served_by(&o.region) && moved.contains(&s.client))
        .map(|s| s.client)
        .collect::<BTreeSet<u32>>()
        .len();
    let clients: BTreeSet<u32> = all.iter().map(|s| s.client).collect();
    ShiftReport {
        region: o.region.clone(),
        shift,
        rate: o.rate,
        requests: all.len(),
        errors: all.iter().filter(|s| s.failed()).count(),
        clients: clients.len(),
        region_clients: region_clients.len(),
        moved: moved.len(),
        unstable: regions_during.values().filter(|r| r.len() > 1).count(),
        returned,
        share_before: shares(before.iter().copied()),
        share_during: shares(during.iter().copied()),
        share_after: shares(after.iter().copied()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::drill::fixtures::{options, sample};

    #[test]
    fn counts_the_moved_clients_and_the_unstable_ones() {
        let o = options(4);
        let mut all: Vec<Sample> = (0..4).map(|c| sample(10, c, "a")).collect();
        // During: client 0 moved, client 1 flaps, 2 and 3 stay.
        all.extend([
            sample(150, 0, "b"),
            sample(160, 0, "b"),
            sample(150, 1, "a"),
            sample(160, 1, "b"),
            sample(150, 2, "a"),
            sample(150, 3, "a"),
        ]);
        all.extend((0..4).map(|c| sample(250, c, "a")));
        let r = summarize(
            &o,
            0.25,
            &all,
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(20),
        );
        assert_eq!(
            (r.region_clients, r.moved, r.unstable, r.returned),
            (4, 1, 1, 1),
            "{r}"
        );
        assert_eq!(r.moved_share(), 0.25);
    }
}
