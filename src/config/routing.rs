//! Validation of the routing part of a policy: routes, their geo rules and
//! steering, jurisdictions, and the residency fence checked at load.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;

use super::{raw, Invalid, RegionName, RegionSpec, RouteSpec};
use crate::geo::{continent_of, Code};

/// How a route orders its candidate regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// The order written in the policy.
    Failover,
    /// Nearest region first (great-circle distance from the client).
    Proximity,
    /// Lowest measured RTT first; the written order until probes report.
    Latency,
    /// One region per client by weight, the same for a client while the weights
    /// hold (a hash of its address); the others follow in written order.
    Weighted,
}

/// A set of request methods, as a bit set over the standard ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Methods(u16);

pub const STANDARD_METHODS: [http::Method; 9] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::POST,
    http::Method::PUT,
    http::Method::DELETE,
    http::Method::PATCH,
    http::Method::OPTIONS,
    http::Method::TRACE,
    http::Method::CONNECT,
];

impl Methods {
    /// Every method (a route without `methods`).
    pub const ANY: Methods = Methods(u16::MAX);

    pub fn contains(self, m: &http::Method) -> bool {
        self == Methods::ANY
            || STANDARD_METHODS
                .iter()
                .position(|s| s == m)
                .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    pub fn is_any(self) -> bool {
        self == Methods::ANY
    }
}

/// One geo rule of a route: who it matches and where they go.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    pub countries: Vec<Code>,
    pub continents: Vec<Code>,
    /// (country, subdivision), from "US-CA".
    pub subdivisions: Vec<(Code, crate::geo::Code3)>,
    pub cidrs: Vec<IpNet>,
    pub regions: Vec<RegionName>,
}

/// A data-residency jurisdiction. Its regions are those whose `jurisdiction`
/// names it.
#[derive(Debug, Clone)]
pub struct JurisdictionSpec {
    pub name: String,
    pub strict: bool,
    pub countries: Vec<Code>,
}

/// The most regions one candidate list may hold (decisions keep them inline).
pub const MAX_CANDIDATES: usize = 16;

const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

fn sorted(names: &HashSet<&str>) -> String {
    let mut v: Vec<&str> = names.iter().copied().collect();
    v.sort_unstable();
    v.join(", ")
}

/// Checks a candidate list: known regions, each once, not too many.
fn region_list(path: &str, names: &[String], known: &HashSet<&str>, errs: &mut Invalid) {
    if names.is_empty() {
        errs.push(format!("{path}.regions"), "needs at least one region");
    }
    if names.len() > MAX_CANDIDATES {
        errs.push(
            format!("{path}.regions"),
            format!("{} regions; at most {MAX_CANDIDATES}", names.len()),
        );
    }
    let mut listed = HashSet::new();
    for (j, name) in names.iter().enumerate() {
        if !known.contains(name.as_str()) {
            errs.push(
                format!("{path}.regions[{j}]"),
                format!("no region named {name:?} (known: {})", sorted(known)),
            );
        } else if !listed.insert(name) {
            errs.push(
                format!("{path}.regions[{j}]"),
                format!("{name:?} is listed twice"),
            );
        }
    }
}

/// Codes people write for a country that ISO 3166-1 spells otherwise.
const ALIASES: [(&str, &str); 2] = [
    // The United Kingdom's ISO code is GB (UK is exceptionally reserved).
    ("UK", "GB"),
    // The EU's own code for Greece; ISO 3166-1 says GR.
    ("EL", "GR"),
];

fn codes(path: &str, values: &[String], what: &str, errs: &mut Invalid) -> Vec<Code> {
    values
        .iter()
        .enumerate()
        .filter_map(|(k, v)| {
            let code = Code::parse(v).filter(|c| match what {
                "continent" => CONTINENTS.contains(&c.as_str()),
                // A country the router knows (ISO 3166-1, and XK for Kosovo):
                // a code no client can have would protect nobody.
                _ => continent_of(*c).is_some(),
            });
            if code.is_none() {
                let upper = v.trim().to_ascii_uppercase();
                let hint = match (what, ALIASES.iter().find(|(a, _)| *a == upper)) {
                    ("continent", _) => "use one of AF, AN, AS, EU, NA, OC, SA".to_owned(),
                    (_, Some((_, iso))) => format!("did you mean {iso:?} (its ISO 3166-1 code)?"),
                    _ => "use an ISO 3166-1 alpha-2 code such as \"DE\"".to_owned(),
                };
                let what = if what == "continent" {
                    "continent"
                } else {
                    "country"
                };
                errs.push(
                    format!("{path}[{k}]"),
                    format!("{v:?} is not a {what} code: {hint}"),
                );
            }
            code
        })
        .collect()
}

pub(super) fn routes(
    raw: Vec<raw::RawRoute>,
    regions: &[RegionSpec],
    errs: &mut Invalid,
) -> Vec<RouteSpec> {
    let known: HashSet<&str> = regions.iter().map(|r| r.name.as_str()).collect();
    let raw = if raw.is_empty() {
        // No route: every request goes to the regions in the order they are declared.
        let mut names: Vec<String> = Vec::new();
        for r in regions {
            if !names.iter().any(|n| n == r.name.as_str()) {
                names.push(r.name.as_str().to_owned());
            }
        }
        vec![raw::RawRoute {
            name: Some("default".to_owned()),
            host: None,
            path_prefix: None,
            regions: names,
            residency: true,
            panic_mode: false,
            methods: None,
            steering: None,
            weights: Default::default(),
            rules: Vec::new(),
            upgrades: raw::websocket_only(),
            path_escapes: None,
        }]
    } else {
        raw
    };
    let mut seen = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let path = format!("routes[{i}]");
            let host = r.host.as_deref().and_then(|h| {
                let h = h.trim_end_matches('.').to_ascii_lowercase();
                let bare = h.strip_prefix("*.").unwrap_or(&h);
                if bare.is_empty() || bare.contains(['/', '*', ' ']) {
                    errs.push(
                        format!("{path}.host"),
                        format!("{h:?} is not a host name (e.g. \"api.example.com\", \"*.example.com\", or leave it out for any host)"),
                    );
                }
                (h != "*").then_some(h)
            });
            let path_prefix = r.path_prefix.unwrap_or_else(|| "/".to_owned());
            if let Some(problem) = crate::path::prefix_problem(&path_prefix) {
                errs.push(format!("{path}.path_prefix"), format!("{path_prefix:?} {problem}"));
            }
            let path_escapes = r.path_escapes.as_deref().and_then(|e| {
                let parsed = crate::path::PathEscapes::parse(e);
                if parsed.is_none() {
                    errs.push(
                        format!("{path}.path_escapes"),
                        format!("{e:?} is not a choice: use \"reject\" (400) or \"decode\", or leave it out for the server's"),
                    );
                }
                parsed
            });
            region_list(&path, &r.regions, &known, errs);
            let steering = match r.steering.as_deref() {
                None | Some("failover") => Steering::Failover,
                Some("proximity") => Steering::Proximity,
                Some("latency") => Steering::Latency,
                Some("weighted") => Steering::Weighted,
                Some(other) => {
                    errs.push(
                        format!("{path}.steering"),
                        format!("{other:?} is not a steering mode: use \"failover\", \"proximity\", \"latency\" or \"weighted\""),
                    );
                    Steering::Failover
                }
            };
            let rules = r
                .rules
                .iter()
                .enumerate()
                .map(|(j, rule)| {
                    let rpath = format!("{path}.rules[{j}]");
                    region_list(&rpath, &rule.regions, &known, errs);
                    if rule.countries.is_empty()
                        && rule.continents.is_empty()
                        && rule.subdivisions.is_empty()
                        && rule.cidrs.is_empty()
                    {
                        errs.push(rpath.clone(), "a rule needs countries, continents, subdivisions or cidrs to match");
                    }
                    let subdivisions = rule
                        .subdivisions
                        .iter()
                        .enumerate()
                        .filter_map(|(k, v)| {
                            let parsed = v.split_once('-').and_then(|(c, s)| {
                                Some((Code::parse(c)?, crate::geo::Code3::parse(s)?))
                            });
                            if parsed.is_none() {
                                errs.push(
                                    format!("{rpath}.subdivisions[{k}]"),
                                    format!("{v:?} is not an ISO 3166-2 code such as \"US-CA\" or \"DE-BY\""),
                                );
                            }
                            parsed
                        })
                        .collect();
                    let cidrs = rule
                        .cidrs
                        .iter()
                        .enumerate()
                        .filter_map(|(k, c)| match c.parse::<IpNet>() {
                            Ok(n) => Some(n.trunc()),
                            Err(_) => {
                                errs.push(format!("{rpath}.cidrs[{k}]"), format!("{c:?} is not a CIDR (e.g. \"198.51.100.0/24\")"));
                                None
                            }
                        })
                        .collect();
                    RuleSpec {
                        subdivisions,
                        countries: codes(&format!("{rpath}.countries"), &rule.countries, "country", errs),
                        continents: codes(&format!("{rpath}.continents"), &rule.continents, "continent", errs),
                        cidrs,
                        regions: rule.regions.iter().map(|n| RegionName::new(n)).collect(),
                    }
                })
                .collect::<Vec<_>>();
            let mut claimed: HashMap<String, usize> = HashMap::new();
            for (j, rule) in rules.iter().enumerate() {
                let keys = rule
                    .countries
                    .iter()
                    .map(|c| format!("country {c}"))
                    .chain(rule.continents.iter().map(|c| format!("continent {c}")))
                    .chain(rule.cidrs.iter().map(|c| format!("cidr {c}")))
                    .chain(rule.subdivisions.iter().map(|(c, s)| format!("subdivision {c}-{}", s.as_str())));
                for key in keys {
                    if let Some(first) = claimed.insert(key.clone(), j) {
                        errs.push(
                            format!("{path}.rules[{j}]"),
                            format!("{key} is already matched by {path}.rules[{first}]"),
                        );
                    }
                }
            }
            let methods = match &r.methods {
                None => Methods::ANY,
                Some(list) => {
                    if list.is_empty() {
                        errs.push(format!("{path}.methods"), "an empty list matches nothing: leave it out for every method");
                    }
                    let mut bits = 0u16;
                    for (k, m) in list.iter().enumerate() {
                        match STANDARD_METHODS.iter().position(|s| s.as_str().eq_ignore_ascii_case(m)) {
                            Some(b) => bits |= 1 << b,
                            None => errs.push(
                                format!("{path}.methods[{k}]"),
                                format!("{m:?} is not a standard method (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT)"),
                            ),
                        }
                    }
                    Methods(bits)
                }
            };
            if !seen.insert((host.clone(), path_prefix.clone(), methods)) {
                errs.push(
                    path.clone(),
                    format!(
                        "another route already matches host {} and path prefix {path_prefix:?} for these methods",
                        host.as_deref().unwrap_or("*")
                    ),
                );
            }
            let mut weights = Vec::new();
            for (name, w) in &r.weights {
                if !known.contains(name.as_str()) {
                    errs.push(format!("{path}.weights.{name}"), format!("no region named {name:?}"));
                } else if *w == 0 || *w > 1_000_000 {
                    errs.push(format!("{path}.weights.{name}"), format!("{w} is not a weight: use 1..=1000000"));
                } else {
                    weights.push((RegionName::new(name), *w));
                }
            }
            if !r.weights.is_empty() && steering != Steering::Weighted {
                errs.push(format!("{path}.weights"), "weights apply to steering = \"weighted\" only");
            }
            RouteSpec {
                name: r.name.unwrap_or_else(|| format!("routes[{i}]")),
                host,
                path_prefix,
                regions: r.regions.iter().map(|n| RegionName::new(n)).collect(),
                methods,
                residency: r.residency,
                panic_mode: r.panic_mode,
                steering,
                weights,
                rules,
                upgrades: r.upgrades.iter().map(|u| u.trim().to_ascii_lowercase()).collect(),
                path_escapes,
            }
        })
        .collect()
}

pub(super) fn jurisdictions(
    raw: Vec<raw::RawJurisdiction>,
    regions: &[RegionSpec],
    errs: &mut Invalid,
) -> Vec<JurisdictionSpec> {
    let mut resident_of: HashMap<Code, String> = HashMap::new();
    let specs: Vec<JurisdictionSpec> = raw
        .into_iter()
        .enumerate()
        .map(|(i, j)| {
            let path = format!("jurisdictions[{i}]");
            if !regions
                .iter()
                .any(|r| r.jurisdiction.as_deref() == Some(j.name.as_str()))
            {
                errs.push(
                    format!("{path}.name"),
                    format!(
                        "no region has jurisdiction = {:?}: its residents could go nowhere",
                        j.name
                    ),
                );
            }
            if j.countries.is_empty() {
                errs.push(
                    format!("{path}.countries"),
                    "lists no country: the jurisdiction would protect nobody (e.g. [\"DE\", \"FR\"])",
                );
            }
            let countries = codes(&format!("{path}.countries"), &j.countries, "country", errs);
            for (k, c) in countries.iter().enumerate() {
                if let Some(other) = resident_of.insert(*c, j.name.clone()) {
                    errs.push(
                        format!("{path}.countries[{k}]"),
                        format!("{c} already belongs to jurisdiction {other:?}"),
                    );
                }
            }
            JurisdictionSpec {
                name: j.name,
                strict: j.strict,
                countries,
            }
        })
        .collect();
    for (i, r) in regions.iter().enumerate() {
        if let Some(j) = &r.jurisdiction {
            if !specs.iter().any(|s| &s.name == j) {
                errs.push(
                    format!("regions[{i}].jurisdiction"),
                    format!("no jurisdiction named {j:?}: add [[jurisdictions]] with name = {j:?}"),
                );
            }
        }
    }
    specs
}

/// The residency claim settings: the trusted header and the signed cookie.
#[derive(Debug, Clone, Default)]
pub struct ResidencySpec {
    pub header: Option<http::HeaderName>,
    /// Cookie name, key file and lifetime.
    pub cookie: Option<(String, std::path::PathBuf, std::time::Duration)>,
}

pub(super) fn residency(raw: raw::RawResidency, errs: &mut Invalid) -> ResidencySpec {
    let header = raw
        .header
        .and_then(|name| match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                errs.push("residency.header", format!("{name:?} is not a header name"));
                None
            }
        });
    let cookie = match (raw.cookie, raw.cookie_key_file) {
        (None, None) => None,
        (Some(_), None) => {
            errs.push(
                "residency.cookie_key_file",
                "a signed cookie needs a key file (32+ random bytes)",
            );
            None
        }
        (None, Some(_)) => {
            errs.push(
                "residency.cookie",
                "a key file without a cookie name: set cookie = \"georouter_home\"",
            );
            None
        }
        (Some(name), Some(key)) => {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !token {
                errs.push(
                    "residency.cookie",
                    format!("{name:?} is not a cookie name: use letters, digits, '_' or '-'"),
                );
            }
            if raw.cookie_max_age.is_zero() {
                errs.push("residency.cookie_max_age", "must be longer than 0s");
            }
            // Browsers refuse a `__Host-` cookie from a sibling subdomain or
            // over plain HTTP (RFC 6265bis 4.1.3.2).
            let prefix = "__Host-";
            let name = if raw.cookie_host_prefix && !name.starts_with(prefix) {
                format!("{prefix}{name}")
            } else {
                name
            };
            Some((name, key, raw.cookie_max_age))
        }
    };
    ResidencySpec { header, cookie }
}

/// A strict jurisdiction's residents must never be routed outside it. Reject a
/// rule (or a route's default list) that would send them elsewhere: the country
/// rule that names their country, else the continent rule of their continent,
/// else the route's default regions.
pub(super) fn check_fences(
    routes: &[RouteSpec],
    regions: &[RegionSpec],
    jurisdictions: &[JurisdictionSpec],
    errs: &mut Invalid,
) {
    let jurisdiction_of = |name: &RegionName| {
        regions
            .iter()
            .find(|r| &r.name == name)
            .and_then(|r| r.jurisdiction.as_deref())
    };
    for j in jurisdictions.iter().filter(|j| j.strict) {
        for (i, route) in routes.iter().enumerate().filter(|(_, r)| r.residency) {
            let mut reported = HashSet::new();
            for country in &j.countries {
                let by_country = route
                    .rules
                    .iter()
                    .position(|r| r.countries.contains(country));
                let by_continent = || {
                    let cont = continent_of(*country)?;
                    route
                        .rules
                        .iter()
                        .position(|r| r.continents.contains(&cont))
                };
                let (path, list) = match by_country.or_else(by_continent) {
                    Some(k) => (format!("routes[{i}].rules[{k}]"), &route.rules[k].regions),
                    None => (format!("routes[{i}]"), &route.regions),
                };
                for (n, region) in list.iter().enumerate() {
                    if jurisdiction_of(region) != Some(j.name.as_str())
                        && reported.insert((path.clone(), n))
                    {
                        errs.push(
                            format!("{path}.regions[{n}]"),
                            format!(
                                "{region} is outside jurisdiction {:?}, and this list serves its residents (e.g. {country}); strict residency allows only its regions here",
                                j.name
                            ),
                        );
                    }
                }
            }
        }
    }
}
