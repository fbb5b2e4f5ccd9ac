//! The immutable routing table compiled from a validated `Config`: regions by index,
//! routes pre-sorted per host, per-request settings. Swapped whole on reload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::HeaderValue;

use crate::config::{Capacity, Config, EndpointSpec, Location, RegionName, UpstreamSettings};
use crate::config::{Methods, Steering};
use crate::geo::{Code, Code3, GeoFacts, GeoLookup, MmdbGeo, NoGeo};
use crate::path::PathEscapes;
use crate::routing::identity::TrustedProxies;
use crate::routing::residency::CookieSigner;
use crate::tls::{self, TlsError};
use ipnet::IpNet;

/// Index of a region in [`RoutingTable::regions`]; only meaningful with its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegionId(pub u16);

#[derive(Debug)]
pub struct Region {
    pub id: RegionId,
    pub name: RegionName,
    /// `x-georouter-region` value, built once.
    pub header_value: HeaderValue,
    pub jurisdiction: Option<String>,
    pub location: Option<Location>,
    pub endpoints: Box<[EndpointSpec]>,
    pub capacity: Capacity,
    /// TLS with ALPN `http/1.1` and `h2`; present when any endpoint is `https://`.
    pub tls_http1: Option<Arc<rustls::ClientConfig>>,
    pub tls_http2: Option<Arc<rustls::ClientConfig>>,
    /// What its connections were made with beyond each endpoint's address
    /// (the TLS files): a reload that keeps it keeps pooled connections.
    pub connection_key: Box<str>,
}

#[derive(Debug)]
pub struct Route {
    pub name: Box<str>,
    pub path_prefix: Box<str>,
    /// Candidate regions in priority order, when no rule matches.
    pub candidates: Box<[RegionId]>,
    pub methods: Methods,
    /// Whether jurisdictions apply to this route.
    pub residency: bool,
    pub panic_mode: bool,
    pub steering: Steering,
    /// Weight per region index, for weighted steering.
    pub weights: Box<[u32]>,
    /// Protocols an `Upgrade` may switch to (lower case).
    pub upgrades: Box<[Box<str>]>,
    /// Refuse or decode a path that readers could split differently.
    pub path_escapes: PathEscapes,
    /// Candidate lists of the route's rules, by rule index.
    pub rules: Box<[Box<[RegionId]>]>,
    /// Rule index per country (`Code::index`), `NO_RULE` for none.
    by_country: Box<[u16; COUNTRY_SLOTS]>,
    /// Rule index per continent (AF, AN, AS, EU, NA, OC, SA).
    by_continent: [u16; 7],
    /// Rule index per (country, subdivision).
    by_subdivision: HashMap<(Code, Code3), u16>,
    /// CIDR rules: the longest matching prefix wins.
    cidrs: CidrTable,
}

/// Longest-prefix match over CIDR rules: one hash map per prefix length, probed
/// from the longest length down, so the cost depends on how many distinct
/// lengths the policy uses, not on how many CIDRs it lists.
#[derive(Debug, Default)]
struct CidrTable {
    v4: Vec<(u8, HashMap<u32, u16>)>,
    v6: Vec<(u8, HashMap<u128, u16>)>,
}

impl CidrTable {
    fn insert(&mut self, net: IpNet, rule: u16) {
        fn level<K>(levels: &mut Vec<(u8, HashMap<K, u16>)>, len: u8) -> &mut HashMap<K, u16> {
            let i = match levels.iter().position(|(l, _)| *l == len) {
                Some(i) => i,
                None => {
                    levels.push((len, HashMap::new()));
                    levels.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
                    levels
                        .iter()
                        .position(|(l, _)| *l == len)
                        .expect("just inserted")
                }
            };
            &mut levels[i].1
        }
        match net {
            IpNet::V4(n) => {
                let key = u32::from(n.network());
                level(&mut self.v4, n.prefix_len())
                    .entry(key)
                    .or_insert(rule);
            }
            IpNet::V6(n) => {
                let key = u128::from(n.network());
                level(&mut self.v6, n.prefix_len())
                    .entry(key)
                    .or_insert(rule);
            }
        }
    }

    fn lookup(&self, ip: std::net::IpAddr) -> Option<u16> {
        match ip {
            std::net::IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().find_map(|(len, m)| {
                    let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                    m.get(&(a & mask)).copied()
                })
            }
            std::net::IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().find_map(|(len, m)| {
                    let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                    m.get(&(a & mask)).copied()
                })
            }
        }
    }
}

/// Which list of a route a request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    Cidr(u16),
    Subdivision(u16),
    Country(u16),
    Continent(u16),
    Default,
}

impl Matched {
    pub fn rule(self) -> Option<u16> {
        match self {
            Matched::Cidr(r)
            | Matched::Subdivision(r)
            | Matched::Country(r)
            | Matched::Continent(r) => Some(r),
            Matched::Default => None,
        }
    }
}

impl Route {
    /// Whether an `Upgrade` to `protocol` (its first token, any case) may pass.
    /// Whether every protocol an `Upgrade` value lists (`websocket`,
    /// `websocket, h2c`, `foo/2`) is one this route allows: one unlisted token
    /// and there is no upgrade at all.
    pub fn allows_upgrade(&self, protocol: &[u8]) -> bool {
        let mut tokens = protocol
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .peekable();
        tokens.peek().is_some()
            && tokens.all(|t| {
                let name = t.split(|&b| b == b'/').next().unwrap_or(b"");
                self.upgrades
                    .iter()
                    .any(|u| u.as_bytes().eq_ignore_ascii_case(name))
            })
    }

    /// The list for a client: a CIDR rule, then its subdivision, its country, its
    /// continent, then the route's own regions. Table lookups only.
    pub fn candidates_for(&self, ip: std::net::IpAddr, geo: &GeoFacts) -> (Matched, &[RegionId]) {
        if let Some(k) = self.cidrs.lookup(ip) {
            return (Matched::Cidr(k), &self.rules[usize::from(k)]);
        }
        if let (Some(c), Some(s)) = (geo.country, geo.subdivision) {
            if let Some(&k) = self.by_subdivision.get(&(c, s)) {
                return (Matched::Subdivision(k), &self.rules[usize::from(k)]);
            }
        }
        if let Some(k) = geo
            .country
            .and_then(|c| slot(&self.by_country[..], c.index()))
        {
            return (Matched::Country(k), &self.rules[usize::from(k)]);
        }
        if let Some(k) = geo
            .continent
            .and_then(|c| slot(&self.by_continent[..], continent_index(c)?))
        {
            return (Matched::Continent(k), &self.rules[usize::from(k)]);
        }
        (Matched::Default, &self.candidates)
    }
}

const NO_RULE: u16 = u16::MAX;
const COUNTRY_SLOTS: usize = 26 * 26;

fn slot(table: &[u16], index: usize) -> Option<u16> {
    table.get(index).copied().filter(|&k| k != NO_RULE)
}

fn continent_index(c: Code) -> Option<usize> {
    ["AF", "AN", "AS", "EU", "NA", "OC", "SA"]
        .iter()
        .position(|k| k.as_bytes() == c.0)
}

/// A jurisdiction as the decision sees it.
#[derive(Debug)]
pub struct Jurisdiction {
    pub name: Box<str>,
    pub strict: bool,
    /// Its regions, in declaration order.
    pub regions: Box<[RegionId]>,
}

/// Index of a jurisdiction in [`RoutingTable::jurisdictions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JurisdictionId(pub u8);

/// Settings the data plane reads per request; they change with a reload.
#[derive(Debug, Clone)]
pub struct RequestSettings {
    pub trusted_proxies: TrustedProxies,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    pub preserve_host: bool,
    pub region_header: bool,
    pub access_log: bool,
    pub allow_trace: bool,
    /// Drop `X-Forwarded-*` and `Forwarded` from untrusted peers.
    pub replace_forwarded: bool,
    pub upstream: UpstreamSettings,
    /// Consecutive failed attempts that eject a region (0 = off).
    pub passive_failures: u32,
    /// How long a failing endpoint stays out of rotation, and at most.
    pub endpoint_ejection: std::time::Duration,
    pub endpoint_max_ejection: std::time::Duration,
    /// Every 5xx counts against a region (else 502, 503, 504 only).
    pub count_all_5xx: bool,
    /// Client addresses a run of failures after sending must come from.
    pub min_distinct_clients: u32,
    pub retry: crate::config::RetrySettings,
}

#[derive(Debug)]
pub struct RoutingTable {
    generation: u64,
    regions: Box<[Region]>,
    routes: Box<[Route]>,
    /// Route indices per exact host, longest path prefix first.
    exact: HashMap<Box<str>, Box<[usize]>>,
    /// Route indices per wildcard parent (`example.com` for `*.example.com`).
    wildcard: HashMap<Box<str>, Box<[usize]>>,
    /// Routes without a host, longest path prefix first.
    any_host: Box<[usize]>,
    pub settings: RequestSettings,
    geo: Arc<dyn GeoLookup>,
    jurisdictions: Box<[Jurisdiction]>,
    /// Jurisdiction index per country (`Code::index`), `u8::MAX` for none.
    resident_of: Box<[u8; COUNTRY_SLOTS]>,
    pub residency_header: Option<http::HeaderName>,
    /// Signs and checks the home-jurisdiction cookie, when configured.
    pub cookie: Option<CookieSigner>,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("regions[{index}] ({region}): {source}")]
    RegionTls {
        index: usize,
        region: RegionName,
        source: Box<TlsError>,
    },
    #[error("more than {} regions", u16::MAX)]
    TooManyRegions,
    #[error("more than {} jurisdictions", u8::MAX - 1)]
    TooManyJurisdictions,
    #[error("geo.database: {0}")]
    Geo(#[from] crate::geo::GeoError),
    #[error(transparent)]
    CookieKey(#[from] crate::routing::residency::KeyError),
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

impl RoutingTable {
    /// Compiles a validated config; reads the regions' CA and client certificate files.
    pub fn compile(config: &Config) -> Result<RoutingTable, TableError> {
        if config.regions.len() > usize::from(u16::MAX) {
            return Err(TableError::TooManyRegions);
        }
        let regions = config
            .regions
            .iter()
            .enumerate()
            .map(|(index, r)| compile_region(index, r))
            .collect::<Result<Vec<_>, _>>()?;
        let routes: Vec<Route> = config
            .routes
            .iter()
            .map(|r| compile_route(r, &regions, config))
            .collect();
        if config.jurisdictions.len() >= usize::from(u8::MAX) {
            return Err(TableError::TooManyJurisdictions);
        }
        let mut resident_of = Box::new([u8::MAX; COUNTRY_SLOTS]);
        let jurisdictions = config
            .jurisdictions
            .iter()
            .enumerate()
            .map(|(i, j)| {
                for c in &j.countries {
                    resident_of[c.index()] = i as u8;
                }
                Jurisdiction {
                    name: j.name.as_str().into(),
                    strict: j.strict,
                    regions: regions
                        .iter()
                        .filter(|r| r.jurisdiction.as_deref() == Some(j.name.as_str()))
                        .map(|r| r.id)
                        .collect(),
                }
            })
            .collect();

        let (exact, wildcard, any_host) = host_index(config, &routes);
        let cookie = match &config.residency.cookie {
            Some((name, key, max_age)) => Some(CookieSigner::from_key_file(name, key, *max_age)?),
            None => None,
        };
        let geo: Arc<dyn GeoLookup> = match &config.geo_database {
            Some(path) => Arc::new(MmdbGeo::open(path)?),
            None => Arc::new(NoGeo),
        };
        Ok(RoutingTable {
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            regions: regions.into_boxed_slice(),
            routes: routes.into_boxed_slice(),
            exact,
            wildcard,
            any_host,
            settings: request_settings(config),
            geo,
            jurisdictions,
            resident_of,
            residency_header: config.residency.header.clone(),
            cookie,
        })
    }

    /// Unique per compiled table in this process; caches keyed by it never go stale.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    pub fn region(&self, id: RegionId) -> &Region {
        &self.regions[usize::from(id.0)]
    }

    pub fn region_by_name(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name.as_str() == name)
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for a lower-case host (without port), a path and a method: exact
    /// host, then `*.parent`, then host-less routes; within each, the longest
    /// matching prefix whose methods include the request's.
    pub fn route(&self, host: &str, path: &str, method: &http::Method) -> Option<&Route> {
        let pick = |list: &[usize]| {
            list.iter()
                .map(|&i| &self.routes[i])
                .find(|r| path.starts_with(&*r.path_prefix) && r.methods.contains(method))
        };
        // A policy without host routes (the common case) hashes nothing.
        if !host.is_empty() && !self.exact.is_empty() {
            if let Some(r) = self.exact.get(host).and_then(|l| pick(l)) {
                return Some(r);
            }
        }
        if !host.is_empty() && !self.wildcard.is_empty() {
            if let Some((_, parent)) = host.split_once('.') {
                if let Some(r) = self.wildcard.get(parent).and_then(|l| pick(l)) {
                    return Some(r);
                }
            }
        }
        pick(&self.any_host)
    }

    /// Whether any jurisdiction keeps its residents inside (strict).
    pub fn has_strict_jurisdiction(&self) -> bool {
        self.jurisdictions.iter().any(|j| j.strict)
    }

    pub fn jurisdictions(&self) -> &[Jurisdiction] {
        &self.jurisdictions
    }

    pub fn jurisdiction(&self, id: JurisdictionId) -> &Jurisdiction {
        &self.jurisdictions[usize::from(id.0)]
    }

    pub fn jurisdiction_by_name(&self, name: &str) -> Option<JurisdictionId> {
        self.jurisdictions
            .iter()
            .position(|j| j.name.eq_ignore_ascii_case(name))
            .map(|i| JurisdictionId(i as u8))
    }

    /// The jurisdiction whose residents live in `country`.
    pub fn resident_of(&self, country: Code) -> Option<JurisdictionId> {
        let j = *self.resident_of.get(country.index())?;
        (j != u8::MAX).then_some(JurisdictionId(j))
    }

    /// The geography source this table was compiled with.
    pub fn geo(&self) -> &dyn GeoLookup {
        &*self.geo
    }
}

/// One region of the table: its endpoints, and its TLS client configs (one
/// per ALPN) when an endpoint speaks HTTPS.
fn compile_region(index: usize, r: &crate::config::RegionSpec) -> Result<Region, TableError> {
    let needs_tls = r
        .endpoints
        .iter()
        .any(|e| e.scheme == http::uri::Scheme::HTTPS);
    let (tls_http1, tls_http2) = if needs_tls {
        let cfg = tls::client_config(&r.tls).map_err(|source| TableError::RegionTls {
            index,
            region: r.name.clone(),
            source: Box::new(source),
        })?;
        let (h1, h2) = crate::tls::alpn_configs(&cfg);
        (Some(h1), Some(h2))
    } else {
        (None, None)
    };
    Ok(Region {
        id: RegionId(index as u16),
        name: r.name.clone(),
        header_value: HeaderValue::from_str(r.name.as_str())
            .expect("region names are validated as header-safe"),
        jurisdiction: r.jurisdiction.clone(),
        location: r.location,
        endpoints: r.endpoints.clone().into_boxed_slice(),
        capacity: r.capacity,
        tls_http1,
        tls_http2,
        connection_key: format!(
            "{:?}|{:?}|{:?}",
            r.tls.ca, r.tls.client_cert, r.tls.client_key
        )
        .into(),
    })
}

/// One route of the table: its rules indexed by country, continent, CIDR and
/// subdivision, its candidates as region ids.
fn compile_route(r: &crate::config::RouteSpec, regions: &[Region], config: &Config) -> Route {
    let id_of = |name: &RegionName| {
        regions
            .iter()
            .find(|r| &r.name == name)
            .map(|r| r.id)
            .expect("route regions are validated against the region list")
    };
    let mut by_country = Box::new([NO_RULE; COUNTRY_SLOTS]);
    let mut by_continent = [NO_RULE; 7];
    let mut cidrs = CidrTable::default();
    let mut by_subdivision = HashMap::new();
    for (k, rule) in r.rules.iter().enumerate() {
        let k = k as u16;
        for c in &rule.countries {
            by_country[c.index()] = k;
        }
        for c in &rule.continents {
            if let Some(i) = continent_index(*c) {
                by_continent[i] = k;
            }
        }
        for net in &rule.cidrs {
            cidrs.insert(*net, k);
        }
        for sub in &rule.subdivisions {
            by_subdivision.entry(*sub).or_insert(k);
        }
    }
    Route {
        name: r.name.as_str().into(),
        path_prefix: r.path_prefix.as_str().into(),
        candidates: r.regions.iter().map(id_of).collect(),
        methods: r.methods,
        residency: r.residency,
        panic_mode: r.panic_mode,
        upgrades: r.upgrades.iter().map(|u| u.as_str().into()).collect(),
        path_escapes: r.path_escapes.unwrap_or(config.server.path_escapes),
        steering: r.steering,
        weights: regions
            .iter()
            .map(|reg| {
                r.weights
                    .iter()
                    .find(|(n, _)| *n == reg.name)
                    .map_or(1, |(_, w)| *w)
            })
            .collect(),
        rules: r
            .rules
            .iter()
            .map(|rule| rule.regions.iter().map(id_of).collect())
            .collect(),
        by_country,
        by_continent,
        by_subdivision,
        cidrs,
    }
}

/// Routes by host: exact names, wildcard parents, any host; within each,
/// longest prefix first, then routes limited to some methods before the
/// route for any method, then policy order.
#[allow(clippy::type_complexity)]
fn host_index(
    config: &Config,
    routes: &[Route],
) -> (
    HashMap<Box<str>, Box<[usize]>>,
    HashMap<Box<str>, Box<[usize]>>,
    Box<[usize]>,
) {
    let mut exact: HashMap<Box<str>, Vec<usize>> = HashMap::new();
    let mut wildcard: HashMap<Box<str>, Vec<usize>> = HashMap::new();
    let mut any_host = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        match r.host.as_deref() {
            None => any_host.push(i),
            Some(h) => match h.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.into()).or_default().push(i),
                None => exact.entry(h.into()).or_default().push(i),
            },
        }
    }
    let by_prefix = |mut v: Vec<usize>| -> Box<[usize]> {
        v.sort_by_key(|&i| {
            (
                std::cmp::Reverse(routes[i].path_prefix.len()),
                routes[i].methods.is_any(),
            )
        });
        v.into_boxed_slice()
    };
    let exact = exact.into_iter().map(|(k, v)| (k, by_prefix(v))).collect();
    let wildcard = wildcard
        .into_iter()
        .map(|(k, v)| (k, by_prefix(v)))
        .collect();
    let any_host = by_prefix(any_host);
    (exact, wildcard, any_host)
}

/// What each request reads of the policy, beside the routes.
fn request_settings(config: &Config) -> RequestSettings {
    let s = &config.server;
    RequestSettings {
        trusted_proxies: TrustedProxies::new(config.client.trusted_proxies.clone()),
        max_uri_bytes: s.max_uri_bytes,
        max_body_bytes: s.max_body_bytes,
        preserve_host: s.preserve_host,
        region_header: s.region_header,
        access_log: s.access_log,
        allow_trace: s.allow_trace,
        replace_forwarded: config.client.replace_forwarded,
        upstream: config.upstream.clone(),
        passive_failures: config.health.passive.consecutive_failures,
        endpoint_ejection: config.health.passive.ejection,
        endpoint_max_ejection: config.health.passive.max_ejection,
        count_all_5xx: config.health.passive.count_all_5xx,
        min_distinct_clients: config.health.passive.min_distinct_clients,
        retry: config.retry,
    }
}
