//! The TOML policy file as serde reads it: every key, its default, nothing validated.
//! Only `config.rs` looks at these types; the rest of the crate sees `Config`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub client: RawClient,
    #[serde(default)]
    pub geo: RawGeo,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub regions: Vec<RawRegion>,
    #[serde(default)]
    pub jurisdictions: Vec<RawJurisdiction>,
    #[serde(default)]
    pub residency: RawResidency,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub failback: RawFailback,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub reload: RawReload,
    /// Drains (and optionally the policy) shared by many routers through etcd.
    pub fleet: Option<RawFleet>,
}

/// `[fleet]`: the etcd cluster a fleet of routers shares, and this router's
/// place in it.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    /// etcd client URLs (`http://` or `https://`), tried in order.
    pub endpoints: Vec<String>,
    /// One fleet per prefix.
    #[serde(default = "fleet_prefix")]
    pub prefix: String,
    /// This instance's id; default: the host name.
    pub instance: Option<String>,
    /// TLS to etcd: its CA, and a client certificate for mTLS.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd authentication: a user, and its password from a file or a variable.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// How long an instance that stopped renewing stays listed.
    #[serde(with = "humantime_serde", default = "ten_seconds")]
    pub lease_ttl: Duration,
    /// Longest wait for one etcd call.
    #[serde(with = "humantime_serde", default = "two_seconds")]
    pub timeout: Duration,
    /// The policy itself lives in etcd (`georouter fleet push`).
    #[serde(default)]
    pub policy: bool,
    /// Ed25519 public keys (base64) whose signatures a pushed policy needs.
    #[serde(default)]
    pub policy_keys: Vec<String>,
}

fn fleet_prefix() -> String {
    "/georouter".to_owned()
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

fn two_seconds() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawJurisdiction {
    pub name: String,
    /// Strict: residents are served only by this jurisdiction's regions, or refused.
    #[serde(default = "yes")]
    pub strict: bool,
    /// ISO country codes whose residents belong to this jurisdiction.
    pub countries: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawResidency {
    /// A header, set by a trusted gateway, naming the user's home jurisdiction.
    pub header: Option<String>,
    /// Name of the cookie the router signs to pin a user to their jurisdiction.
    pub cookie: Option<String>,
    /// File with the HMAC key for that cookie (at least 32 random bytes).
    pub cookie_key_file: Option<PathBuf>,
    #[serde(with = "humantime_serde", default = "thirty_days")]
    pub cookie_max_age: Duration,
    /// Prefix the cookie's name with `__Host-`, so that a sibling subdomain
    /// cannot plant one.
    #[serde(default = "yes")]
    pub cookie_host_prefix: bool,
}

impl Default for RawResidency {
    fn default() -> Self {
        Self {
            header: None,
            cookie: None,
            cookie_key_file: None,
            cookie_max_age: thirty_days(),
            cookie_host_prefix: true,
        }
    }
}

fn thirty_days() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub workers: usize,
    pub max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    pub http2_max_concurrent_streams: u32,
    /// SETTINGS, PING, WINDOW_UPDATE and PRIORITY frames a client may send per
    /// second before GOAWAY(ENHANCE_YOUR_CALM); 0 = no limit.
    pub http2_max_control_frames: u32,
    pub http2_stream_window: u32,
    pub http2_connection_window: u32,
    pub http2_max_frame_size: u32,
    pub http2_adaptive_window: bool,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub preserve_host: bool,
    pub region_header: bool,
    pub access_log: bool,
    /// TRACE reaches regions only when true (405 otherwise).
    pub allow_trace: bool,
    /// What a route does with a path that readers could split differently
    /// (`%2F`, `\\`, `;`, `%2E` segments): "reject" (400) or "decode"; routes may
    /// say otherwise.
    pub path_escapes: String,
    /// Replaced by `path_escapes`; accepted and ignored, with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reject_encoded_slashes: Option<bool>,
    /// The log's format: "text" or "json" (`--log-format` wins); read at start.
    pub log_format: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            workers: 0,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            http2_max_concurrent_streams: 256,
            http2_max_control_frames: 1000,
            http2_stream_window: SERVER_HTTP2_STREAM_WINDOW,
            http2_connection_window: SERVER_HTTP2_CONNECTION_WINDOW,
            http2_max_frame_size: HTTP2_MAX_FRAME_SIZE,
            http2_adaptive_window: false,
            shutdown_grace: Duration::from_secs(30),
            preserve_host: true,
            region_header: true,
            access_log: true,
            allow_trace: false,
            path_escapes: "reject".to_owned(),
            reject_encoded_slashes: None,
            log_format: "text".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    #[serde(default)]
    pub name: Option<String>,
    pub address: String,
    #[serde(default)]
    pub tls: Option<RawListenerTls>,
    /// Expect a PROXY protocol (v1 or v2) header on every connection.
    #[serde(default)]
    pub proxy_protocol: bool,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub certificates: Vec<RawCertificate>,
    /// Session resumption: a cache, tickets, their keys.
    #[serde(default)]
    pub resumption: RawResumption,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawResumption {
    /// Sessions kept in this process (TLS 1.2 session IDs, TLS 1.3 stateful
    /// tickets); 0 turns the cache off.
    pub session_cache: usize,
    /// Stateless session tickets.
    pub tickets: bool,
    /// A file of ticket keys shared by several instances, re-read every minute.
    pub ticket_keys: Option<PathBuf>,
    /// Generated keys: a new one this often (a ticket lives twice as long).
    /// With `ticket_keys`: how long a ticket is good for, told to clients.
    #[serde(with = "humantime_serde")]
    pub ticket_rotation: Duration,
}

impl Default for RawResumption {
    fn default() -> Self {
        Self {
            session_cache: 10_240,
            tickets: true,
            ticket_keys: None,
            ticket_rotation: Duration::from_secs(6 * 3600),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SNI names this certificate answers; `*.example.com` matches one label.
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClient {
    /// CIDRs (or addresses) of proxies whose X-Forwarded-For / Forwarded is believed.
    pub trusted_proxies: Vec<String>,
    /// "append" (default) adds the peer to what an untrusted client sent;
    /// "replace" drops what it sent (X-Forwarded-*, Forwarded) first.
    pub forwarded: Option<String>,
    /// Connections one client address may hold open at once (0: no cap).
    pub max_connections_per_ip: u32,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGeo {
    /// A MaxMind DB file (GeoIP2/GeoLite2 Country or City, or a `country_code` database).
    pub database: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub address: String,
    /// Bearer token for mutating calls: a file holding it, or an environment variable.
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    /// Bearer token for read-only calls (the mutating token is accepted too);
    /// without one, read-only calls are open.
    pub read_token_file: Option<PathBuf>,
    pub read_token_env: Option<String>,
    /// Where drains are kept across restarts.
    pub state_file: Option<PathBuf>,
    /// Host names the admin API answers besides its address and localhost
    /// (421 for any other: a DNS-rebinding page cannot read it).
    pub hosts: Vec<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:9901".to_owned(),
            token_file: None,
            token_env: None,
            read_token_file: None,
            read_token_env: None,
            state_file: None,
            hosts: Vec::new(),
        }
    }
}

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

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Per try, for idempotent requests without a body: past it, the next
    /// candidate. Unset: 5s when `response_timeout` is longer, else off.
    #[serde(with = "humantime_serde")]
    pub try_timeout: Option<Duration>,
    /// The longest a client may pause its request body (408 beyond it).
    #[serde(with = "humantime_serde")]
    pub request_body_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_endpoint: usize,
    /// Requests in flight per endpoint at most: past it, the next candidate
    /// with room, then a short queue, then 503.
    pub max_in_flight: u32,
    /// Requests waiting for room per region at most.
    pub max_queue: u32,
    /// The longest a request waits for room before 503 + Retry-After.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    pub http2_stream_window: u32,
    pub http2_connection_window: u32,
    pub http2_max_frame_size: u32,
    pub http2_adaptive_window: bool,
}

// HTTP/2 defaults, by measurement (bench/h2settings.sh): README, "Performance".
const SERVER_HTTP2_STREAM_WINDOW: u32 = 1024 * 1024;
const SERVER_HTTP2_CONNECTION_WINDOW: u32 = 1024 * 1024;
const UPSTREAM_HTTP2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const UPSTREAM_HTTP2_CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const HTTP2_MAX_FRAME_SIZE: u32 = 16 * 1024;

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            try_timeout: None,
            request_body_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_endpoint: 256,
            max_in_flight: 1024,
            max_queue: 1024,
            queue_timeout: Duration::from_secs(1),
            http2_stream_window: UPSTREAM_HTTP2_STREAM_WINDOW,
            http2_connection_window: UPSTREAM_HTTP2_CONNECTION_WINDOW,
            http2_max_frame_size: HTTP2_MAX_FRAME_SIZE,
            http2_adaptive_window: false,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    pub name: String,
    #[serde(default)]
    pub jurisdiction: Option<String>,
    #[serde(default)]
    pub location: Option<RawLocation>,
    pub endpoints: Vec<RawEndpoint>,
    /// Requests in flight per endpoint at most (default: `upstream.max_in_flight`).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Requests waiting for room at most (default: `upstream.max_queue`).
    #[serde(default)]
    pub max_queue: Option<u32>,
    /// The longest a request waits for room (default: `upstream.queue_timeout`).
    #[serde(default, with = "humantime_serde")]
    pub queue_timeout: Option<Duration>,
    #[serde(default)]
    pub tls: RawRegionTls,
    #[serde(default)]
    pub health: RawRegionHealth,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocation {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub url: String,
    #[serde(default)]
    pub protocol: Option<String>,
    /// This endpoint's own bound on requests in flight.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegionTls {
    /// PEM bundle of CAs that sign the region's certificates; the Mozilla roots when unset.
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    pub regions: Vec<String>,
    /// Whether jurisdictions apply to this route (false for data that may be
    /// served from anywhere, such as public assets).
    #[serde(default = "yes")]
    pub residency: bool,
    /// When no candidate is serving, send to the undrained ones anyway instead of
    /// 503 (never for a strict jurisdiction's residents).
    #[serde(default)]
    pub panic_mode: bool,
    /// Only these methods take this route (e.g. writes to the primary region).
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub steering: Option<String>,
    /// Weights for `steering = "weighted"`, by region name (default 1).
    #[serde(default)]
    pub weights: std::collections::BTreeMap<String, u32>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// Protocols an `Upgrade` may switch to on this route; others are stripped.
    #[serde(default = "websocket_only")]
    pub upgrades: Vec<String>,
    /// "reject" or "decode" for this route's ambiguous paths (default: the
    /// server's `path_escapes`).
    #[serde(default)]
    pub path_escapes: Option<String>,
}

pub fn websocket_only() -> Vec<String> {
    vec!["websocket".to_owned()]
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(default)]
    pub countries: Vec<String>,
    #[serde(default)]
    pub continents: Vec<String>,
    /// ISO 3166-2 codes such as "US-CA" (needs a database with subdivisions).
    #[serde(default)]
    pub subdivisions: Vec<String>,
    #[serde(default)]
    pub cidrs: Vec<String>,
    pub regions: Vec<String>,
}

/// Reads every section of a parsed policy, reporting every type error, unknown
/// key and missing field at its dotted path (one per section: serde stops at
/// the first in each), with the closest known key for a misspelt one and an
/// example for a bad duration.
pub fn read(table: toml::Table) -> Result<RawConfig, super::Invalid> {
    let whole = toml::Value::Table(table.clone());
    if let Ok(raw) = RawConfig::deserialize(whole) {
        return Ok(raw);
    }
    let mut errs = super::Invalid::default();
    /// Every mistake of one section: serde stops at the first, so the key at
    /// fault is taken out and the section read again, until it reads or the
    /// mistake is one that taking a key out cannot pass (a missing key).
    fn section<T: serde::de::DeserializeOwned>(
        name: &str,
        mut value: toml::Value,
        errs: &mut super::Invalid,
    ) {
        // Keys meant by a misspelt one: their "missing" would say it twice.
        let mut meant: Vec<String> = Vec::new();
        for _ in 0..64 {
            let Err(e) = serde_path_to_error::deserialize::<_, T>(value.clone()) else {
                return;
            };
            let inner = e.path().to_string();
            let path = match inner.as_str() {
                "." | "" => name.to_owned(),
                p if p.starts_with('[') => format!("{name}{p}"),
                p => format!("{name}.{p}"),
            };
            let (path, message) = explain(path, &e.into_inner().to_string());
            if meant.contains(&path) {
                return;
            }
            if let Some(key) = message
                .strip_prefix("unknown key; did you mean `")
                .and_then(|m| m.split('`').next())
            {
                let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
                meant.push(format!("{parent}.{key}"));
            }
            let within = path.strip_prefix(name).unwrap_or("").to_owned();
            errs.push(path, message);
            if !remove_at(&mut value, &within) {
                return;
            }
        }
    }
    for (key, value) in table {
        match key.as_str() {
            "server" => section::<RawServer>(&key, value, &mut errs),
            "listeners" => section::<Vec<RawListener>>(&key, value, &mut errs),
            "client" => section::<RawClient>(&key, value, &mut errs),
            "geo" => section::<RawGeo>(&key, value, &mut errs),
            "admin" => section::<RawAdmin>(&key, value, &mut errs),
            "upstream" => section::<RawUpstream>(&key, value, &mut errs),
            "regions" => section::<Vec<RawRegion>>(&key, value, &mut errs),
            "jurisdictions" => section::<Vec<RawJurisdiction>>(&key, value, &mut errs),
            "residency" => section::<RawResidency>(&key, value, &mut errs),
            "routes" => section::<Vec<RawRoute>>(&key, value, &mut errs),
            "health" => section::<RawHealth>(&key, value, &mut errs),
            "failback" => section::<RawFailback>(&key, value, &mut errs),
            "retry" => section::<RawRetry>(&key, value, &mut errs),
            "reload" => section::<RawReload>(&key, value, &mut errs),
            "fleet" => section::<RawFleet>(&key, value, &mut errs),
            other => errs.push(
                other.to_owned(),
                match closest(other, SECTIONS) {
                    Some(s) => format!("unknown section; did you mean [{s}]?"),
                    None => format!("unknown section; the sections are {}", SECTIONS.join(", ")),
                },
            ),
        }
    }
    if errs.0.is_empty() {
        errs.push("(policy)", "the policy could not be read as a whole");
    }
    Err(errs)
}

/// Takes the key at `path` (`.a.b[2].c`, relative to `value`) out of its
/// table; false when there is no such key or it is an array's element.
fn remove_at(value: &mut toml::Value, path: &str) -> bool {
    enum Seg<'p> {
        Key(&'p str),
        Index(usize),
    }
    // `.a[2].c` -> Key("a"), Index(2), Key("c").
    let mut segments = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
            segments.push(Seg::Key(key));
        }
        for index in pieces {
            match index
                .strip_suffix(']')
                .and_then(|i| i.parse::<usize>().ok())
            {
                Some(i) => segments.push(Seg::Index(i)),
                None => return false,
            }
        }
    }
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = value;
    for seg in parents {
        let next = match (seg, at) {
            (Seg::Key(k), toml::Value::Table(t)) => t.get_mut(*k),
            (Seg::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (last, at) {
        (Seg::Key(k), toml::Value::Table(t)) => t.remove(*k).is_some(),
        _ => false,
    }
}

const SECTIONS: &[&str] = &[
    "server",
    "listeners",
    "client",
    "geo",
    "admin",
    "upstream",
    "regions",
    "jurisdictions",
    "residency",
    "routes",
    "health",
    "failback",
    "retry",
    "reload",
    "fleet",
];

/// serde's message made useful: the closest key for an unknown one, an example
/// for a duration, the path of a missing field.
fn explain(path: String, message: &str) -> (String, String) {
    // toml adds "in `key`" lines: the path says it already.
    let message = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("in `"))
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.as_str();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        // The path ends at the unknown key already, or at its table.
        let path = if path.ends_with(field) {
            path
        } else {
            format!("{path}.{field}")
        };
        let hint = match closest(field, &known) {
            Some(k) => format!("unknown key; did you mean `{k}`?"),
            None if known.is_empty() => "unknown key".to_owned(),
            None => format!("unknown key; the keys here are {}", known.join(", ")),
        };
        return (path, hint);
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        return (
            format!("{path}.{field}"),
            "missing: this key is required".to_owned(),
        );
    }
    if message.contains("duration") || message.contains("time unit") {
        return (
            path,
            format!(
                "{message}; a duration is a number and a unit, e.g. \"250ms\", \"10s\", \"5m\""
            ),
        );
    }
    (path, message.to_owned())
}

/// The known name closest to `word` (edit distance at most 2, or a prefix).
fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(word, k), *k))
        .filter(|(d, k)| *d <= 2 || k.starts_with(word) || word.starts_with(k))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}
