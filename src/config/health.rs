//! Validation of the control-plane settings: active checks (global defaults and
//! per-region overrides), passive ejection, latency probes, failback, retries, reload.

use std::ops::RangeInclusive;
use std::time::Duration;

use super::raw::{RawFailback, RawHealth, RawRegionHealth, RawReload, RawRetry};
use super::Invalid;

/// One region's active check.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub enabled: bool,
    pub path: http::uri::PathAndQuery,
    pub expected_status: RangeInclusive<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Fraction of the interval by which each wait varies at random.
    pub jitter: f64,
}

/// Process-wide health settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    pub passive: PassiveSpec,
    pub ewma_weight: f64,
    pub hysteresis: Duration,
    /// The share of real request latency in what latency steering sees.
    pub real_weight: f64,
    pub failback: FailbackSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveSpec {
    /// 0 turns passive ejection off.
    pub consecutive_failures: u32,
    pub ejection: Duration,
    pub max_ejection: Duration,
    /// The most of a route's regions passive ejection may hold out at once, in percent.
    pub max_ejected_percent: u32,
    /// Real latency over the peers' median that ejects a region, in percent
    /// (500: five times); 0 = off.
    pub slow_factor_percent: u32,
    pub slow_min: Duration,
    pub slow_min_requests: u32,
    /// Every 5xx counts as a failure (else only 502, 503, 504).
    pub count_all_5xx: bool,
    pub min_distinct_clients: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailbackSpec {
    pub slow_start: Duration,
    pub flap_threshold: u32,
    pub flap_window: Duration,
    pub hold_down: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySettings {
    /// Retries as a fraction of the window's requests.
    pub budget: f64,
    /// Retries always allowed per window (per worker thread).
    pub min_retries: u32,
    /// The sliding window (1 s to 60 s).
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadSettings {
    pub watch: bool,
    pub watch_interval: Duration,
}

fn status_range(path: &str, s: &str, errs: &mut Invalid) -> RangeInclusive<u16> {
    let parse = |v: &str| {
        v.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
    };
    let range = match s.split_once('-') {
        Some((lo, hi)) => parse(lo).zip(parse(hi)).filter(|(lo, hi)| lo <= hi),
        None => parse(s).map(|c| (c, c)),
    };
    range.map_or_else(
        || {
            errs.push(
                path,
                format!("{s:?} is not a status or a range of statuses (e.g. \"200-399\", \"204\")"),
            );
            200..=399
        },
        |(lo, hi)| lo..=hi,
    )
}

fn check_path(path: &str, s: &str, errs: &mut Invalid) -> http::uri::PathAndQuery {
    match s.parse::<http::uri::PathAndQuery>() {
        Ok(p) if s.starts_with('/') => p,
        _ => {
            errs.push(
                path,
                format!("{s:?} is not a request path (e.g. \"/health\")"),
            );
            http::uri::PathAndQuery::from_static("/health")
        }
    }
}

fn at_least_one(path: &str, v: u32, errs: &mut Invalid) {
    if v == 0 {
        errs.push(path, "must be at least 1");
    }
}

fn positive(path: &str, d: Duration, errs: &mut Invalid) {
    if d.is_zero() {
        errs.push(path, "must be longer than 0s");
    }
}

/// The `[health]` defaults, validated.
pub(super) fn defaults(h: &RawHealth, errs: &mut Invalid) -> HealthCheck {
    at_least_one("health.rise", h.rise, errs);
    at_least_one("health.fall", h.fall, errs);
    positive("health.interval", h.interval, errs);
    positive("health.timeout", h.timeout, errs);
    if !(0.0..=0.5).contains(&h.jitter) {
        errs.push(
            "health.jitter",
            format!("{} is outside 0.0..=0.5", h.jitter),
        );
    }
    HealthCheck {
        enabled: h.enabled,
        path: check_path("health.path", &h.path, errs),
        expected_status: status_range("health.expected_status", &h.expected_status, errs),
        interval: h.interval,
        timeout: h.timeout,
        rise: h.rise,
        fall: h.fall,
        jitter: h.jitter,
    }
}

/// A region's check: its overrides over the defaults.
pub(super) fn region(
    path: &str,
    o: &RawRegionHealth,
    d: &HealthCheck,
    errs: &mut Invalid,
) -> HealthCheck {
    let mut c = d.clone();
    if let Some(v) = o.enabled {
        c.enabled = v;
    }
    if let Some(p) = &o.path {
        c.path = check_path(&format!("{path}.path"), p, errs);
    }
    if let Some(s) = &o.expected_status {
        c.expected_status = status_range(&format!("{path}.expected_status"), s, errs);
    }
    if let Some(v) = o.interval {
        positive(&format!("{path}.interval"), v, errs);
        c.interval = v;
    }
    if let Some(v) = o.timeout {
        positive(&format!("{path}.timeout"), v, errs);
        c.timeout = v;
    }
    if let Some(v) = o.rise {
        at_least_one(&format!("{path}.rise"), v, errs);
        c.rise = v;
    }
    if let Some(v) = o.fall {
        at_least_one(&format!("{path}.fall"), v, errs);
        c.fall = v;
    }
    c
}

pub(super) fn settings(h: &RawHealth, f: &RawFailback, errs: &mut Invalid) -> HealthSettings {
    let p = &h.passive;
    if p.consecutive_failures > 0 {
        positive("health.passive.ejection", p.ejection, errs);
        if p.max_ejection < p.ejection {
            errs.push(
                "health.passive.max_ejection",
                format!(
                    "{} is shorter than health.passive.ejection ({})",
                    humantime::format_duration(p.max_ejection),
                    humantime::format_duration(p.ejection)
                ),
            );
        }
    }
    if p.max_ejected_percent > 100 {
        errs.push(
            "health.passive.max_ejected_percent",
            format!("{} is over 100", p.max_ejected_percent),
        );
    }
    if p.count_5xx != "gateway" && p.count_5xx != "all" {
        errs.push(
            "health.passive.count_5xx",
            format!(
                "{:?} is not a choice: use \"gateway\" (502, 503, 504 count) or \"all\" (every 5xx counts)",
                p.count_5xx
            ),
        );
    }
    if p.min_distinct_clients > 8 {
        errs.push(
            "health.passive.min_distinct_clients",
            format!("{} is over 8", p.min_distinct_clients),
        );
    }
    if !(p.slow_factor == 0.0 || (1.5..=1000.0).contains(&p.slow_factor)) {
        errs.push(
            "health.passive.slow_factor",
            format!(
                "{} is not a factor: use 1.5 to 1000 times the peers' median latency, or 0 to turn it off",
                p.slow_factor
            ),
        );
    }
    let w = h.latency.ewma_weight;
    if !(w > 0.0 && w <= 1.0) {
        errs.push(
            "health.latency.ewma_weight",
            format!("{w} is outside 0 < w <= 1"),
        );
    }
    let real = h.latency.real_weight;
    if !(0.0..=1.0).contains(&real) {
        errs.push(
            "health.latency.real_weight",
            format!("{real} is outside 0 to 1 (0: probes only, 1: real requests only)"),
        );
    }
    at_least_one("failback.flap_threshold", f.flap_threshold, errs);
    HealthSettings {
        passive: PassiveSpec {
            consecutive_failures: p.consecutive_failures,
            ejection: p.ejection,
            max_ejection: p.max_ejection,
            max_ejected_percent: p.max_ejected_percent.min(100),
            slow_factor_percent: (p.slow_factor * 100.0).round() as u32,
            slow_min: p.slow_min,
            slow_min_requests: p.slow_min_requests,
            count_all_5xx: p.count_5xx == "all",
            min_distinct_clients: p.min_distinct_clients.max(1),
        },
        ewma_weight: w,
        hysteresis: h.latency.hysteresis,
        real_weight: real.clamp(0.0, 1.0),
        failback: FailbackSpec {
            slow_start: f.slow_start,
            flap_threshold: f.flap_threshold,
            flap_window: f.flap_window,
            hold_down: f.hold_down,
        },
    }
}

pub(super) fn retry(r: &RawRetry, errs: &mut Invalid) -> RetrySettings {
    if !(0.0..=1.0).contains(&r.budget) {
        errs.push("retry.budget", format!("{} is outside 0.0..=1.0", r.budget));
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&r.window) {
        errs.push(
            "retry.window",
            format!(
                "{} is outside 1s..=60s",
                humantime::format_duration(r.window)
            ),
        );
    }
    RetrySettings {
        budget: r.budget,
        min_retries: r.min_retries,
        window: r.window,
    }
}

pub(super) fn reload(r: &RawReload, errs: &mut Invalid) -> ReloadSettings {
    if r.watch {
        positive("reload.watch_interval", r.watch_interval, errs);
    }
    ReloadSettings {
        watch: r.watch,
        watch_interval: r.watch_interval,
    }
}
