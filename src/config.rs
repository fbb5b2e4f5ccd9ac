//! The routing policy: TOML in, validated `Config` out, with every error at once,
//! each with its dotted path (`regions[2].endpoints[0].url: ...`) and what to change.

mod edge;
mod fence;
mod fleet;
mod health;
pub(crate) mod raw;
mod read;
mod regions;
mod routing;

pub use fleet::FleetSettings;
pub use health::{
    FailbackSpec, HealthCheck, HealthSettings, PassiveSpec, ReloadSettings, RetrySettings,
};

pub use fence::ResidencySpec;
pub use routing::{
    JurisdictionSpec, Methods, RuleSpec, Steering, MAX_CANDIDATES, STANDARD_METHODS,
};

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};

use raw::RawConfig;

/// Why a policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    // (Not `source` fields: the message already holds them, and an error
    // chain would print them a second time.)
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {error}")]
    Parse {
        path: PathBuf,
        error: toml::de::Error,
    },
    #[error("{path}: {errors}")]
    Invalid { path: PathBuf, errors: Invalid },
}

/// Every validation error of one file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Invalid(pub Vec<FieldError>);

/// One bad value: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} error{} in policy", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

impl Invalid {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// A validated policy. Built only by [`Config::from_toml`] / [`Config::load`].
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub client: ClientSettings,
    /// The geo database, if any.
    pub geo_database: Option<PathBuf>,
    pub listeners: Vec<ListenerSpec>,
    pub admin: AdminSettings,
    pub upstream: UpstreamSettings,
    pub regions: Vec<RegionSpec>,
    pub jurisdictions: Vec<JurisdictionSpec>,
    /// How a user's home jurisdiction may be claimed (trusted header, signed cookie).
    pub residency: ResidencySpec,
    pub routes: Vec<RouteSpec>,
    pub health: HealthSettings,
    pub retry: RetrySettings,
    pub reload: ReloadSettings,
    /// Shared drains (and policy) through etcd; `None`: this router stands alone.
    pub fleet: Option<FleetSettings>,
    /// The policy as read, defaults filled in, secrets redacted (`GET /config`).
    pub effective: Arc<str>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Worker threads, each with its own single-threaded runtime; 0 = one per core.
    pub workers: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_control_frames: u32,
    pub http2: Http2Tuning,
    pub shutdown_grace: Duration,
    pub preserve_host: bool,
    pub region_header: bool,
    pub allow_trace: bool,
    /// What routes do with ambiguous paths unless they say otherwise.
    pub path_escapes: crate::path::PathEscapes,
    pub access_log: bool,
    /// The log as JSON, one object per line (else key=value text).
    pub log_json: bool,
}

/// HTTP/2 flow control and framing of one side: the clients' (`[server]`) or
/// the regions' (`[upstream]`). Defaults by measurement: README, "Performance".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Tuning {
    /// What a peer may send on one stream before it must wait for us to read.
    pub stream_window: u32,
    /// The same, over all the connection's streams.
    pub connection_window: u32,
    /// The largest DATA frame we accept (SETTINGS_MAX_FRAME_SIZE).
    pub max_frame_size: u32,
    /// Windows sized by the measured bandwidth-delay product, not fixed.
    pub adaptive_window: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Drop `X-Forwarded-*` and `Forwarded` from untrusted peers instead of
    /// appending to them.
    pub replace_forwarded: bool,
    /// Connections one TCP peer address may hold open (0: no cap); read at start.
    pub max_connections_per_ip: u32,
}

#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    pub tls: Option<TlsSpec>,
    pub proxy_protocol: bool,
    /// HTTP/3 over QUIC beside the TLS listener, with the same certificates.
    pub http3: Option<Http3Spec>,
}

/// An HTTP/3 (QUIC) endpoint beside a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http3Spec {
    /// The UDP address.
    pub address: SocketAddr,
    /// `ma` of the `Alt-Svc` header TCP responses carry.
    pub alt_svc_max_age: Duration,
    /// 0-RTT accepted: safe methods only, the rest answered 425.
    pub early_data: bool,
    /// Handshakes in progress past which new clients are sent a Retry first.
    pub retry_threshold: usize,
}

/// A TLS listener: its certificates and how clients may resume sessions.
#[derive(Debug, Clone)]
pub struct TlsSpec {
    pub certificates: Vec<CertificateSpec>,
    pub resumption: Resumption,
}

/// Session resumption on one TLS listener. Resumed handshakes are cheap; the
/// price is forward secrecy bounded by how long a cache entry or ticket key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumption {
    /// Entries of the in-process session cache; 0: off.
    pub session_cache: usize,
    pub tickets: bool,
    /// Shared ticket keys (absent: keys made here, rotated every `ticket_rotation`).
    pub ticket_keys: Option<PathBuf>,
    pub ticket_rotation: Duration,
}

#[derive(Debug, Clone)]
pub struct CertificateSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub address: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub read_token_file: Option<PathBuf>,
    pub read_token_env: Option<String>,
    pub state_file: Option<PathBuf>,
    /// Lower-case host names answered besides IP literals and localhost.
    pub hosts: Vec<String>,
    /// Named tokens: who is acting, for the audit log, drains and the journal.
    pub tokens: Vec<TokenSpec>,
}

/// A named admin token (`[[admin.tokens]]`): where its secret is, and whether
/// it may change things or only read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub name: String,
    pub file: Option<PathBuf>,
    pub env: Option<String>,
    pub write: bool,
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Per try, for idempotent bodiless requests; zero = off.
    pub try_timeout: Duration,
    pub request_body_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_endpoint: usize,
    pub http2: Http2Tuning,
    /// Defaults for regions that do not set their own capacity.
    pub capacity: Capacity,
}

/// What a region can take: requests in flight per endpoint, then a short queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Per endpoint (an endpoint may set its own).
    pub max_in_flight: u32,
    pub max_queue: u32,
    pub queue_timeout: Duration,
}

/// A region name: cheap to clone, compared by value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionName(Arc<str>);

impl RegionName {
    pub fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct RegionSpec {
    pub name: RegionName,
    pub jurisdiction: Option<String>,
    pub location: Option<Location>,
    pub endpoints: Vec<EndpointSpec>,
    pub tls: RegionTls,
    pub health: HealthCheck,
    pub capacity: Capacity,
}

pub use crate::geo::Location;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

#[derive(Debug, Clone)]
pub struct EndpointSpec {
    pub scheme: Scheme,
    pub authority: Authority,
    pub protocol: Protocol,
    /// The authority as a `Host` value, rendered once.
    pub host: http::HeaderValue,
    /// Requests in flight at most.
    pub max_in_flight: u32,
}

#[derive(Debug, Clone, Default)]
pub struct RegionTls {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    /// Lower-case host (`api.example.com`, `*.example.com`), or `None` for any host.
    pub host: Option<String>,
    pub path_prefix: String,
    /// Candidate regions in priority order, when no rule matches.
    pub regions: Vec<RegionName>,
    pub methods: Methods,
    /// Whether jurisdictions fence this route's residents.
    pub residency: bool,
    /// Route to undrained candidates when none is serving, rather than 503.
    pub panic_mode: bool,
    pub steering: Steering,
    /// Weights for weighted steering (regions not listed weigh 1).
    pub weights: Vec<(RegionName, u32)>,
    pub rules: Vec<RuleSpec>,
    /// Lower-case protocol tokens an `Upgrade` may switch to (`websocket`).
    pub upgrades: Vec<String>,
    /// This route's answer to ambiguous paths; `None`: the server's.
    pub path_escapes: Option<crate::path::PathEscapes>,
}

/// What the command line sets over the policy file, validated with it (and
/// again at every reload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `admin.address` (`--admin-address`, `GEOROUTER_ADMIN_ADDRESS`).
    pub admin_address: Option<String>,
}

impl Overrides {
    /// Errors at a key the command line set say so: the policy file is not
    /// where to look.
    fn said(&self, mut errors: Invalid) -> Invalid {
        if self.admin_address.is_some() {
            for e in errors.0.iter_mut().filter(|e| e.path == "admin.address") {
                e.message
                    .push_str(" (admin.address set by --admin-address or GEOROUTER_ADMIN_ADDRESS, over the policy file)");
            }
        }
        errors
    }

    fn apply(&self, table: &mut toml::Table) {
        if let Some(address) = &self.admin_address {
            if let toml::Value::Table(admin) = table
                .entry("admin")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                admin.insert("address".to_owned(), toml::Value::String(address.clone()));
            }
        }
    }
}

impl Config {
    /// Reads, parses and validates a policy file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        Self::load_with(path, &Overrides::default())
    }

    /// Reads a policy file, sets `overrides` over it, and validates the whole.
    pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut config = Self::from_toml_with(&text, overrides).map_err(|e| match e {
            FromTomlError::Parse(error) => LoadError::Parse {
                path: path.to_owned(),
                error,
            },
            FromTomlError::Invalid(errors) => LoadError::Invalid {
                path: path.to_owned(),
                errors,
            },
        })?;
        // Paths in a policy file are relative to the file, not to wherever the
        // router was started.
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        Ok(config)
    }

    /// Makes every relative file path of the policy relative to `dir`.
    pub fn resolve_paths(&mut self, dir: &Path) {
        let at = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        let maybe = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                at(p);
            }
        };
        maybe(&mut self.geo_database);
        for l in &mut self.listeners {
            if let Some(t) = &mut l.tls {
                for c in &mut t.certificates {
                    at(&mut c.cert);
                    at(&mut c.key);
                }
                maybe(&mut t.resumption.ticket_keys);
            }
        }
        maybe(&mut self.admin.token_file);
        maybe(&mut self.admin.read_token_file);
        maybe(&mut self.admin.state_file);
        let tls = |t: &mut RegionTls| {
            maybe(&mut t.ca);
            maybe(&mut t.client_cert);
            maybe(&mut t.client_key);
        };
        for r in &mut self.regions {
            tls(&mut r.tls);
        }
        if let Some((_, key, _)) = &mut self.residency.cookie {
            at(key);
        }
        if let Some(f) = &mut self.fleet {
            tls(&mut f.tls);
            maybe(&mut f.password_file);
        }
    }

    /// Parses and validates policy text; file paths inside it are taken as they are.
    pub fn from_toml(text: &str) -> Result<Config, FromTomlError> {
        Self::from_toml_with(text, &Overrides::default())
    }

    fn from_toml_with(text: &str, overrides: &Overrides) -> Result<Config, FromTomlError> {
        // Syntax first (line and column, with the line); then every section's
        // errors at their dotted paths, all at once.
        let mut table: toml::Table = text.parse().map_err(FromTomlError::Parse)?;
        overrides.apply(&mut table);
        let said = |e| FromTomlError::Invalid(overrides.said(e));
        let raw: RawConfig = read::read(table).map_err(said)?;
        let effective = effective(&raw);
        let mut config = Config::try_from(raw).map_err(said)?;
        config.effective = effective;
        Ok(config)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FromTomlError {
    #[error("{0}")]
    Parse(toml::de::Error),
    #[error("{0}")]
    Invalid(Invalid),
}

impl TryFrom<RawConfig> for Config {
    type Error = Invalid;

    fn try_from(raw: RawConfig) -> Result<Config, Invalid> {
        let mut errs = Invalid::default();
        let server = edge::server(raw.server, &mut errs);
        let client = edge::client(raw.client, &mut errs);
        let listeners = edge::listeners(raw.listeners, &mut errs);
        let admin = edge::admin(raw.admin, &mut errs);
        edge::admin_clashes(&admin, &listeners, &mut errs);
        let upstream = edge::upstream(raw.upstream, &mut errs);
        let checks = health::defaults(&raw.health, &mut errs);
        let health = health::settings(&raw.health, &raw.failback, &mut errs);
        let retry = health::retry(&raw.retry, &mut errs);
        let reload = health::reload(&raw.reload, &mut errs);
        let fleet = raw.fleet.map(|f| fleet::fleet(f, &mut errs));
        let regions = regions::regions(raw.regions, &checks, &upstream.capacity, &mut errs);
        let jurisdictions = fence::jurisdictions(raw.jurisdictions, &regions, &mut errs);
        let residency = fence::residency(raw.residency, &mut errs);
        let implicit = raw.routes.is_empty();
        let routes = routing::routes(raw.routes, &regions, &mut errs);
        fence::check_fences(&routes, &regions, &jurisdictions, implicit, &mut errs);
        if errs.0.is_empty() {
            Ok(Config {
                server,
                client,
                geo_database: raw.geo.database,
                listeners,
                admin,
                upstream,
                regions,
                jurisdictions,
                residency,
                routes,
                health,
                retry,
                reload,
                fleet,
                effective: Arc::from(""),
            })
        } else {
            Err(errs)
        }
    }
}

/// The policy as TOML with every default filled in; values of keys that name
/// tokens or keys are replaced, so the text can be shown to any admin reader.
fn effective(raw: &RawConfig) -> Arc<str> {
    fn redact(v: &mut toml::Value) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t.iter_mut() {
                    if k.contains("token") || k.contains("key") || k.contains("secret") {
                        *v = toml::Value::String("<redacted>".to_owned());
                    } else {
                        redact(v);
                    }
                }
            }
            toml::Value::Array(a) => a.iter_mut().for_each(redact),
            _ => {}
        }
    }
    let mut value = match toml::Value::try_from(raw) {
        Ok(v) => v,
        Err(e) => return Arc::from(format!("# cannot render the policy: {e}\n")),
    };
    redact(&mut value);
    Arc::from(toml::to_string_pretty(&value).unwrap_or_default())
}
