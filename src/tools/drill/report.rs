//! What a drill found: each request's sample, the marks of its steps, and the
//! report summarised from them (shares before, during and after, detection and
//! failback times), printable and JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::DrillOptions;

#[derive(Debug, Clone)]
pub(super) struct Sample {
    pub(super) at: Duration,
    /// 0: no response (connection error or the 5 s client timeout).
    pub(super) status: u16,
    pub(super) region: Option<String>,
    /// Which of the clients played sent it.
    pub(super) client: u32,
}

impl Sample {
    pub(super) fn failed(&self) -> bool {
        self.status == 0 || self.status >= 500
    }

    pub(super) fn served_by(&self, region: &str) -> bool {
        !self.failed() && self.region.as_deref() == Some(region)
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub region: String,
    pub fault: &'static str,
    pub rate: u32,
    pub requests: usize,
    pub errors: usize,
    /// Fault -> the admin API shows the region out of service.
    pub detection_ms: Option<u64>,
    /// Fault -> the last request the region served.
    pub switch_ms: u64,
    /// Fault -> the last failed request (0: no client saw a failure).
    pub rto_ms: u64,
    /// Repair -> the first request the region served again.
    pub failback_first_ms: Option<u64>,
    /// Repair -> its share back to at least 90% of what it was.
    pub failback_full_ms: Option<u64>,
    pub share_before: BTreeMap<String, f64>,
    pub share_during: BTreeMap<String, f64>,
    pub share_after: BTreeMap<String, f64>,
}

/// Each region's share, as "a 90%, b 10%".
pub(super) fn share_line(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {:.0}%", v * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |v: Option<u64>| v.map_or("not reached".to_owned(), |v| format!("{v} ms"));
        let share = share_line;
        writeln!(
            f,
            "drill: {} of {} at {} req/s",
            self.fault, self.region, self.rate
        )?;
        writeln!(
            f,
            "  requests        {} ({} failed)",
            self.requests, self.errors
        )?;
        writeln!(f, "  detection       {}", ms(self.detection_ms))?;
        writeln!(
            f,
            "  switch          {} ms (last request served by {})",
            self.switch_ms, self.region
        )?;
        writeln!(f, "  RTO (clients)   {} ms", self.rto_ms)?;
        writeln!(
            f,
            "  failback        first request {}, full share {}",
            ms(self.failback_first_ms),
            ms(self.failback_full_ms)
        )?;
        writeln!(f, "  share before    {}", share(&self.share_before))?;
        writeln!(f, "  share during    {}", share(&self.share_during))?;
        writeln!(f, "  share after     {}", share(&self.share_after))
    }
}

/// One HTTP/1.1 request on a new connection; (status, body).
pub(super) fn shares<'s>(samples: impl IntoIterator<Item = &'s Sample>) -> BTreeMap<String, f64> {
    let mut by: BTreeMap<String, f64> = BTreeMap::new();
    let ok: Vec<&Sample> = samples.into_iter().filter(|s| !s.failed()).collect();
    for s in &ok {
        *by.entry(s.region.clone().unwrap_or_else(|| "-".to_owned()))
            .or_default() += 1.0;
    }
    let n = ok.len().max(1) as f64;
    by.values_mut().for_each(|v| *v /= n);
    by
}

pub(super) fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Waits until `cond` holds, polling every 20 ms, for at most `timeout`.
/// When the drill's steps happened, from the start of the load.
pub(super) struct Marks {
    pub(super) fault_at: Duration,
    pub(super) detection: Duration,
    /// The repair began (restart, undrain, or the operator told to repair).
    pub(super) repair_started: Duration,
    /// The admin API showed the region back in service.
    pub(super) repair_at: Duration,
    pub(super) full_at: Option<Duration>,
    /// The span over which the failback share is measured.
    pub(super) window: Duration,
}

/// The report on the samples of one drill.
pub(super) fn summarize(
    o: &DrillOptions,
    fault: &'static str,
    all: &[Sample],
    before: &[Sample],
    m: &Marks,
) -> Report {
    let errors: Vec<&Sample> = all.iter().filter(|s| s.failed()).collect();
    // The outage is from the fault to the repair; answers from the region after
    // the repair began are its failback, not a late switch.
    let last_served = all
        .iter()
        .filter(|s| s.at >= m.fault_at && s.at < m.repair_started && s.served_by(&o.region))
        .map(|s| s.at)
        .max();
    let switch = last_served.map_or(Duration::ZERO, |t| t.saturating_sub(m.fault_at));
    let during = all
        .iter()
        .filter(|s| s.at > m.fault_at + switch && s.at < m.repair_started);
    let end = all.iter().map(|s| s.at).max().unwrap_or(m.repair_at);
    let after_from = m.full_at.unwrap_or(end).saturating_sub(m.window);
    let after = all.iter().filter(|s| s.at >= after_from);
    Report {
        region: o.region.clone(),
        fault,
        rate: o.rate,
        requests: all.len(),
        errors: errors.len(),
        detection_ms: Some(ms(m.detection)),
        switch_ms: ms(switch),
        rto_ms: errors
            .iter()
            .filter(|s| s.at >= m.fault_at)
            .map(|s| ms(s.at.saturating_sub(m.fault_at)))
            .max()
            .unwrap_or(0),
        failback_first_ms: all
            .iter()
            .filter(|s| s.at >= m.repair_started)
            .find(|s| s.served_by(&o.region))
            .map(|s| ms(s.at.saturating_sub(m.repair_at))),
        failback_full_ms: m.full_at.map(|t| ms(t - m.repair_at)),
        share_before: shares(before),
        share_during: shares(during),
        share_after: shares(after),
    }
}
