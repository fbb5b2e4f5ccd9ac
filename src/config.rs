//! The routing policy: TOML in, validated `Config` out, with every error at once,
//! each with its dotted path (`regions[2].endpoints[0].url: ...`) and what to change.

mod health;
pub mod raw;
mod routing;

pub use health::{
    FailbackSpec, HealthCheck, HealthSettings, PassiveSpec, ReloadSettings, RetrySettings,
};

pub use routing::{JurisdictionSpec, Methods, ResidencySpec, RuleSpec, Steering, MAX_CANDIDATES};

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;

use raw::RawConfig;

/// Why a policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
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
    pub shutdown_grace: Duration,
    pub preserve_host: bool,
    pub region_header: bool,
    pub allow_trace: bool,
    pub reject_encoded_slashes: bool,
    pub access_log: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Drop `X-Forwarded-*` and `Forwarded` from untrusted peers instead of
    /// appending to them.
    pub replace_forwarded: bool,
}

#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    pub tls: Option<Vec<CertificateSpec>>,
    pub proxy_protocol: bool,
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
}

impl Config {
    /// Reads, parses and validates a policy file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            FromTomlError::Parse(source) => LoadError::Parse {
                path: path.to_owned(),
                source,
            },
            FromTomlError::Invalid(errors) => LoadError::Invalid {
                path: path.to_owned(),
                errors,
            },
        })
    }

    /// Parses and validates policy text; file paths inside it are taken as they are.
    pub fn from_toml(text: &str) -> Result<Config, FromTomlError> {
        let raw: RawConfig = toml::from_str(text).map_err(FromTomlError::Parse)?;
        let effective = effective(&raw);
        let mut config = Config::try_from(raw).map_err(FromTomlError::Invalid)?;
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
        let server = server(raw.server, &mut errs);
        let client = client(raw.client, &mut errs);
        let listeners = listeners(raw.listeners, &mut errs);
        let admin = admin(raw.admin, &mut errs);
        let upstream = upstream(raw.upstream, &mut errs);
        let checks = health::defaults(&raw.health, &mut errs);
        let health = health::settings(&raw.health, &raw.failback, &mut errs);
        let retry = health::retry(&raw.retry, &mut errs);
        let reload = health::reload(&raw.reload, &mut errs);
        let regions = regions(raw.regions, &checks, &mut errs);
        let jurisdictions = routing::jurisdictions(raw.jurisdictions, &regions, &mut errs);
        let residency = routing::residency(raw.residency, &mut errs);
        let routes = routing::routes(raw.routes, &regions, &mut errs);
        routing::check_fences(&routes, &regions, &jurisdictions, &mut errs);
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
                effective: Arc::from(""),
            })
        } else {
            Err(errs)
        }
    }
}

fn server(s: raw::RawServer, errs: &mut Invalid) -> ServerSettings {
    if s.max_connections == 0 {
        errs.push("server.max_connections", "must be at least 1");
    }
    if s.max_header_bytes < 8192 {
        errs.push(
            "server.max_header_bytes",
            format!("{} is below the minimum of 8192", s.max_header_bytes),
        );
    }
    if s.max_headers == 0 {
        errs.push("server.max_headers", "must be at least 1");
    }
    if s.max_uri_bytes < 64 {
        errs.push(
            "server.max_uri_bytes",
            format!("{} is below the minimum of 64", s.max_uri_bytes),
        );
    }
    if s.http2_max_concurrent_streams == 0 {
        errs.push("server.http2_max_concurrent_streams", "must be at least 1");
    }
    for (name, d) in [
        ("server.header_read_timeout", s.header_read_timeout),
        ("server.idle_timeout", s.idle_timeout),
    ] {
        if d.is_zero() {
            errs.push(name, "must be longer than 0s");
        }
    }
    ServerSettings {
        workers: s.workers,
        max_connections: s.max_connections,
        header_read_timeout: s.header_read_timeout,
        idle_timeout: s.idle_timeout,
        max_header_bytes: s.max_header_bytes,
        max_headers: s.max_headers,
        max_uri_bytes: s.max_uri_bytes,
        max_body_bytes: s.max_body_bytes,
        http2_max_concurrent_streams: s.http2_max_concurrent_streams,
        http2_max_control_frames: s.http2_max_control_frames,
        shutdown_grace: s.shutdown_grace,
        preserve_host: s.preserve_host,
        region_header: s.region_header,
        allow_trace: s.allow_trace,
        reject_encoded_slashes: s.reject_encoded_slashes,
        access_log: s.access_log,
    }
}

fn client(c: raw::RawClient, errs: &mut Invalid) -> ClientSettings {
    let trusted_proxies = c
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let parsed = s
                .parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => Some(net.trunc()),
                Err(_) => {
                    errs.push(
                        format!("client.trusted_proxies[{i}]"),
                        format!(
                            "{s:?} is not a CIDR or an IP address (e.g. \"10.0.0.0/8\", \"::1\")"
                        ),
                    );
                    None
                }
            }
        })
        .collect();
    let replace_forwarded = match c.forwarded.as_deref() {
        None | Some("append") => false,
        Some("replace") => true,
        Some(other) => {
            errs.push(
                "client.forwarded",
                format!("{other:?} is not \"append\" or \"replace\""),
            );
            false
        }
    };
    ClientSettings {
        trusted_proxies,
        replace_forwarded,
    }
}

fn socket_addr(path: &str, value: &str, errs: &mut Invalid) -> SocketAddr {
    value.parse().unwrap_or_else(|_| {
        errs.push(
            path,
            format!("{value:?} is not an IP:port address (e.g. \"0.0.0.0:8080\", \"[::]:443\")"),
        );
        SocketAddr::from(([0, 0, 0, 0], 0))
    })
}

fn listeners(raw: Vec<raw::RawListener>, errs: &mut Invalid) -> Vec<ListenerSpec> {
    if raw.is_empty() {
        errs.push(
            "listeners",
            "no listener: add [[listeners]] with address = \"0.0.0.0:8080\"",
        );
    }
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, l)| {
            let path = format!("listeners[{i}]");
            let address = socket_addr(&format!("{path}.address"), &l.address, errs);
            if !addrs.insert(address) {
                errs.push(
                    format!("{path}.address"),
                    format!("{address} is used by another listener"),
                );
            }
            let name = l.name.unwrap_or_else(|| l.address.clone());
            if !names.insert(name.clone()) {
                errs.push(
                    format!("{path}.name"),
                    format!("{name:?} is used by another listener"),
                );
            }
            let tls = l.tls.map(|t| {
                if t.certificates.is_empty() {
                    errs.push(
                        format!("{path}.tls.certificates"),
                        "a TLS listener needs at least one certificate",
                    );
                }
                t.certificates
                    .into_iter()
                    .enumerate()
                    .map(|(j, c)| {
                        let names = c
                            .server_names
                            .iter()
                            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                            .collect();
                        for (k, n) in c.server_names.iter().enumerate() {
                            if n.is_empty() || n.contains(['/', ':', ' ']) {
                                errs.push(
                                    format!("{path}.tls.certificates[{j}].server_names[{k}]"),
                                    format!("{n:?} is not a DNS name"),
                                );
                            }
                        }
                        CertificateSpec {
                            cert: c.cert,
                            key: c.key,
                            server_names: names,
                        }
                    })
                    .collect()
            });
            ListenerSpec {
                name,
                address,
                tls,
                proxy_protocol: l.proxy_protocol,
            }
        })
        .collect()
}

fn admin(a: raw::RawAdmin, errs: &mut Invalid) -> AdminSettings {
    AdminSettings {
        address: socket_addr("admin.address", &a.address, errs),
        token_file: a.token_file,
        token_env: a.token_env,
        read_token_file: a.read_token_file,
        read_token_env: a.read_token_env,
        state_file: a.state_file,
    }
}

fn upstream(u: raw::RawUpstream, errs: &mut Invalid) -> UpstreamSettings {
    for (name, d) in [
        ("upstream.connect_timeout", u.connect_timeout),
        ("upstream.response_timeout", u.response_timeout),
        ("upstream.request_body_timeout", u.request_body_timeout),
    ] {
        if d.is_zero() {
            errs.push(name, "must be longer than 0s");
        }
    }
    const TRY_TIMEOUT: Duration = Duration::from_secs(5);
    let try_timeout = u
        .try_timeout
        .unwrap_or(if u.response_timeout > TRY_TIMEOUT {
            TRY_TIMEOUT
        } else {
            Duration::ZERO
        });
    if !try_timeout.is_zero() && try_timeout >= u.response_timeout {
        errs.push(
            "upstream.try_timeout",
            format!(
                "{} is not below upstream.response_timeout ({}): make it shorter, or \"0s\" to turn it off",
                humantime::format_duration(try_timeout),
                humantime::format_duration(u.response_timeout)
            ),
        );
    }
    UpstreamSettings {
        connect_timeout: u.connect_timeout,
        response_timeout: u.response_timeout,
        try_timeout,
        request_body_timeout: u.request_body_timeout,
        pool_idle_timeout: u.pool_idle_timeout,
        pool_max_idle_per_endpoint: u.pool_max_idle_per_endpoint,
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn regions(raw: Vec<raw::RawRegion>, checks: &HealthCheck, errs: &mut Invalid) -> Vec<RegionSpec> {
    if raw.is_empty() {
        errs.push(
            "regions",
            "no region: add [[regions]] with a name and endpoints",
        );
    }
    let mut seen = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let path = format!("regions[{i}]");
            if !is_valid_name(&r.name) {
                errs.push(
                    format!("{path}.name"),
                    format!(
                        "{:?} is not a region name: use 1-63 of a-z, 0-9, '-', '_'",
                        r.name
                    ),
                );
            } else if !seen.insert(r.name.clone()) {
                errs.push(
                    format!("{path}.name"),
                    format!("region {:?} is defined twice", r.name),
                );
            }
            if let Some(j) = &r.jurisdiction {
                if !is_valid_name(j) {
                    errs.push(
                        format!("{path}.jurisdiction"),
                        format!("{j:?} is not a jurisdiction name: use 1-63 of a-z, 0-9, '-', '_'"),
                    );
                }
            }
            let location = r.location.map(|l| {
                if !(-90.0..=90.0).contains(&l.lat) {
                    errs.push(
                        format!("{path}.location.lat"),
                        format!("{} is outside -90..=90", l.lat),
                    );
                }
                if !(-180.0..=180.0).contains(&l.lon) {
                    errs.push(
                        format!("{path}.location.lon"),
                        format!("{} is outside -180..=180", l.lon),
                    );
                }
                Location {
                    lat: l.lat,
                    lon: l.lon,
                }
            });
            if r.endpoints.is_empty() {
                errs.push(
                    format!("{path}.endpoints"),
                    "a region needs at least one endpoint",
                );
            }
            let endpoints = r
                .endpoints
                .iter()
                .enumerate()
                .filter_map(|(j, e)| endpoint(&format!("{path}.endpoints[{j}]"), e, errs))
                .collect();
            if r.tls.client_cert.is_some() != r.tls.client_key.is_some() {
                errs.push(
                    format!("{path}.tls"),
                    "client_cert and client_key go together: set both or neither",
                );
            }
            let health = health::region(&format!("{path}.health"), &r.health, checks, errs);
            RegionSpec {
                health,
                name: RegionName::new(&r.name),
                jurisdiction: r.jurisdiction,
                location,
                endpoints,
                tls: RegionTls {
                    ca: r.tls.ca,
                    client_cert: r.tls.client_cert,
                    client_key: r.tls.client_key,
                },
            }
        })
        .collect()
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

fn endpoint(path: &str, e: &raw::RawEndpoint, errs: &mut Invalid) -> Option<EndpointSpec> {
    let protocol = match e.protocol.as_deref() {
        None | Some("http1") => Protocol::Http1,
        Some("http2") => Protocol::Http2,
        Some(other) => {
            errs.push(
                format!("{path}.protocol"),
                format!("{other:?} is not a protocol: use \"http1\" or \"http2\""),
            );
            Protocol::Http1
        }
    };
    let uri: Uri = match e.url.parse() {
        Ok(u) => u,
        Err(_) => {
            errs.push(
                format!("{path}.url"),
                format!("{:?} is not a URL (e.g. \"http://10.0.0.1:8080\")", e.url),
            );
            return None;
        }
    };
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        errs.push(
            format!("{path}.url"),
            format!(
                "{:?} needs a scheme and a host (e.g. \"https://eu-west.internal:443\")",
                e.url
            ),
        );
        return None;
    };
    if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
        errs.push(
            format!("{path}.url"),
            format!("{:?}: the scheme must be http or https", e.url),
        );
        return None;
    }
    if uri.path() != "/" || uri.query().is_some() {
        errs.push(
            format!("{path}.url"),
            format!(
                "{:?}: an endpoint is scheme://host:port, without a path",
                e.url
            ),
        );
    }
    Some(EndpointSpec {
        scheme: scheme.clone(),
        authority: authority.clone(),
        protocol,
    })
}
