//! The TOML policy file as serde reads it: every key, its default, nothing validated.
//! Only `config.rs` looks at these types; the rest of the crate sees `Config`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
mod health;

pub use health::*;

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
    /// HTTP/3 over QUIC beside this TLS listener.
    #[serde(default)]
    pub http3: Option<RawHttp3>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp3 {
    /// The UDP address (default: the listener's address, over UDP).
    pub address: Option<String>,
    /// How long clients may remember the `Alt-Svc` advertisement.
    #[serde(with = "humantime_serde")]
    pub alt_svc_max_age: Duration,
    /// Accept 0-RTT early data (safe methods only; the rest get 425).
    pub early_data: bool,
    /// Handshakes in progress past which a new client must prove its address
    /// with a Retry round trip first; 0: every client.
    pub retry_threshold: usize,
}

impl Default for RawHttp3 {
    fn default() -> Self {
        Self {
            address: None,
            alt_svc_max_age: Duration::from_secs(24 * 3600),
            early_data: false,
            retry_threshold: 64,
        }
    }
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
    /// Named tokens (`[[admin.tokens]]`): the name is the actor of what the
    /// token does, in the audit log, drains and the journal.
    pub tokens: Vec<RawToken>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: String,
    pub file: Option<PathBuf>,
    pub env: Option<String>,
    /// "write" (the default: every call) or "read" (read-only calls).
    #[serde(default)]
    pub access: Option<String>,
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
            tokens: Vec::new(),
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
