//! `[health]`, `[failback]`, `[retry]` and `[reload]` as written.

use super::*;

/// Active checks (defaults for every region), passive ejection, latency probes.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    pub enabled: bool,
    pub path: String,
    /// Inclusive status range that counts as healthy, "200-399" or "200".
    pub expected_status: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Each interval is stretched or shrunk by up to this fraction at random.
    pub jitter: f64,
    pub passive: RawPassive,
    pub latency: RawLatency,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/health".to_owned(),
            expected_status: "200-399".to_owned(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            jitter: 0.1,
            passive: RawPassive::default(),
            latency: RawLatency::default(),
        }
    }
}

/// Per-region overrides of `[health]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRegionHealth {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub expected_status: Option<String>,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPassive {
    /// Consecutive connect errors, resets, timeouts or 5xx that eject a region; 0 = off.
    pub consecutive_failures: u32,
    /// First ejection; each repeated one doubles, up to `max_ejection`.
    #[serde(with = "humantime_serde")]
    pub ejection: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// Passive ejection never takes out more than this share of a route's regions.
    pub max_ejected_percent: u32,
    /// A region whose real request latency stays this many times its peers'
    /// median is ejected like a failing one (0 = off).
    pub slow_factor: f64,
    /// ... and only when its latency is above this.
    #[serde(with = "humantime_serde")]
    pub slow_min: Duration,
    /// ... over at least this many requests.
    pub slow_min_requests: u32,
    /// Which 5xx answers count as failures: "gateway" (502, 503, 504) or "all".
    pub count_5xx: String,
    /// Failures after a request was sent eject only when this many client
    /// addresses had them (connect failures need none).
    pub min_distinct_clients: u32,
}

impl Default for RawPassive {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
            slow_factor: 5.0,
            slow_min: Duration::from_millis(500),
            slow_min_requests: 20,
            count_5xx: "gateway".to_owned(),
            min_distinct_clients: 3,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLatency {
    /// Weight of the newest RTT sample in the moving average (0 < w <= 1).
    pub ewma_weight: f64,
    /// The RTT that latency steering sees moves only when the average drifts further.
    #[serde(with = "humantime_serde")]
    pub hysteresis: Duration,
    /// The share of real request latency (send to response head) in what
    /// latency steering sees, the probes' RTT the rest (0 to 1).
    pub real_weight: f64,
}

impl Default for RawLatency {
    fn default() -> Self {
        Self {
            ewma_weight: 0.3,
            hysteresis: Duration::from_millis(10),
            real_weight: 0.5,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFailback {
    /// A recovered region's share of its traffic ramps up over this window; 0s = at once.
    #[serde(with = "humantime_serde")]
    pub slow_start: Duration,
    /// A region that went down this many times within `flap_window` is flapping...
    pub flap_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub flap_window: Duration,
    /// ...and stays out this long after it passes its checks again.
    #[serde(with = "humantime_serde")]
    pub hold_down: Duration,
}

impl Default for RawFailback {
    fn default() -> Self {
        Self {
            slow_start: Duration::from_secs(30),
            flap_threshold: 3,
            flap_window: Duration::from_secs(300),
            hold_down: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetry {
    /// Retries of requests a region already received, as a fraction of the
    /// window's requests.
    pub budget: f64,
    /// Retries always allowed per window, per worker thread.
    pub min_retries: u32,
    /// The sliding window the budget counts over.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for RawRetry {
    fn default() -> Self {
        Self {
            budget: 0.2,
            min_retries: 100,
            window: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReload {
    /// Reload when the policy file's contents change (polled).
    pub watch: bool,
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
}

impl Default for RawReload {
    fn default() -> Self {
        Self {
            watch: true,
            watch_interval: Duration::from_secs(2),
        }
    }
}
