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

pub(super) const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

pub(super) fn sorted(names: &HashSet<&str>) -> String {
    let mut v: Vec<&str> = names.iter().copied().collect();
    v.sort_unstable();
    v.join(", ")
}

/// Checks a candidate list: known regions, each once, not too many.
pub(super) fn region_list(path: &str, names: &[String], known: &HashSet<&str>, errs: &mut Invalid) {
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
pub(super) const ALIASES: [(&str, &str); 2] = [
    // The United Kingdom's ISO code is GB (UK is exceptionally reserved).
    ("UK", "GB"),
    // The EU's own code for Greece; ISO 3166-1 says GR.
    ("EL", "GR"),
];

pub(super) fn codes(path: &str, values: &[String], what: &str, errs: &mut Invalid) -> Vec<Code> {
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
        vec![default_route(regions)]
    } else {
        raw
    };
    let mut seen = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| route(i, r, &known, &mut seen, errs))
        .collect()
}

/// No route: every request goes to the regions in the order they are declared.
fn default_route(regions: &[RegionSpec]) -> raw::RawRoute {
    let mut names: Vec<String> = Vec::new();
    for r in regions {
        if !names.iter().any(|n| n == r.name.as_str()) {
            names.push(r.name.as_str().to_owned());
        }
    }
    raw::RawRoute {
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
    }
}

/// What one route matches, and where it sends; `seen`: the (host, prefix,
/// methods) of the routes before it.
fn route(
    i: usize,
    r: raw::RawRoute,
    known: &HashSet<&str>,
    seen: &mut HashSet<(Option<String>, String, Methods)>,
    errs: &mut Invalid,
) -> RouteSpec {
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
        errs.push(
            format!("{path}.path_prefix"),
            format!("{path_prefix:?} {problem}"),
        );
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
    region_list(&path, &r.regions, known, errs);
    let steering = steering(&path, r.steering.as_deref(), errs);
    let rules = r
        .rules
        .iter()
        .enumerate()
        .map(|(j, raw)| rule(&format!("{path}.rules[{j}]"), raw, known, errs))
        .collect::<Vec<_>>();
    overlapping_rules(&path, &rules, errs);
    let methods = methods(&path, r.methods.as_deref(), errs);
    if !seen.insert((host.clone(), path_prefix.clone(), methods)) {
        errs.push(
            path.clone(),
            format!(
                "another route already matches host {} and path prefix {path_prefix:?} for these methods",
                host.as_deref().unwrap_or("*")
            ),
        );
    }
    let weights = weights(&path, &r.weights, known, steering, errs);
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
        upgrades: r
            .upgrades
            .iter()
            .map(|u| u.trim().to_ascii_lowercase())
            .collect(),
        path_escapes,
    }
}

/// One of a route's geography rules.
fn rule(rpath: &str, rule: &raw::RawRule, known: &HashSet<&str>, errs: &mut Invalid) -> RuleSpec {
    region_list(rpath, &rule.regions, known, errs);
    if rule.countries.is_empty()
        && rule.continents.is_empty()
        && rule.subdivisions.is_empty()
        && rule.cidrs.is_empty()
    {
        errs.push(
            rpath,
            "a rule needs countries, continents, subdivisions or cidrs to match",
        );
    }
    let subdivisions = rule
        .subdivisions
        .iter()
        .enumerate()
        .filter_map(|(k, v)| {
            let parsed = v
                .split_once('-')
                .and_then(|(c, s)| Some((Code::parse(c)?, crate::geo::Code3::parse(s)?)));
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
                errs.push(
                    format!("{rpath}.cidrs[{k}]"),
                    format!("{c:?} is not a CIDR (e.g. \"198.51.100.0/24\")"),
                );
                None
            }
        })
        .collect();
    RuleSpec {
        subdivisions,
        countries: codes(
            &format!("{rpath}.countries"),
            &rule.countries,
            "country",
            errs,
        ),
        continents: codes(
            &format!("{rpath}.continents"),
            &rule.continents,
            "continent",
            errs,
        ),
        cidrs,
        regions: rule.regions.iter().map(|n| RegionName::new(n)).collect(),
    }
}

/// Two rules of a route that match the same country, continent, CIDR or
/// subdivision: the second would never be reached.
fn overlapping_rules(path: &str, rules: &[RuleSpec], errs: &mut Invalid) {
    let mut claimed: HashMap<String, usize> = HashMap::new();
    for (j, rule) in rules.iter().enumerate() {
        let keys = rule
            .countries
            .iter()
            .map(|c| format!("country {c}"))
            .chain(rule.continents.iter().map(|c| format!("continent {c}")))
            .chain(rule.cidrs.iter().map(|c| format!("cidr {c}")))
            .chain(
                rule.subdivisions
                    .iter()
                    .map(|(c, s)| format!("subdivision {c}-{}", s.as_str())),
            );
        for key in keys {
            if let Some(first) = claimed.insert(key.clone(), j) {
                errs.push(
                    format!("{path}.rules[{j}]"),
                    format!("{key} is already matched by {path}.rules[{first}]"),
                );
            }
        }
    }
}

/// `methods`: a route for some methods only.
fn methods(path: &str, list: Option<&[String]>, errs: &mut Invalid) -> Methods {
    match list {
        None => Methods::ANY,
        Some(list) => {
            if list.is_empty() {
                errs.push(
                    format!("{path}.methods"),
                    "an empty list matches nothing: leave it out for every method",
                );
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
    }
}

fn steering(path: &str, mode: Option<&str>, errs: &mut Invalid) -> Steering {
    match mode {
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
    }
}

/// `weights`, for `steering = "weighted"`.
fn weights(
    path: &str,
    raw: &std::collections::BTreeMap<String, u32>,
    known: &HashSet<&str>,
    steering: Steering,
    errs: &mut Invalid,
) -> Vec<(RegionName, u32)> {
    let mut weights = Vec::new();
    for (name, w) in raw {
        if !known.contains(name.as_str()) {
            errs.push(
                format!("{path}.weights.{name}"),
                format!("no region named {name:?}"),
            );
        } else if *w == 0 || *w > 1_000_000 {
            errs.push(
                format!("{path}.weights.{name}"),
                format!("{w} is not a weight: use 1..=1000000"),
            );
        } else {
            weights.push((RegionName::new(name), *w));
        }
    }
    if !raw.is_empty() && steering != Steering::Weighted {
        errs.push(
            format!("{path}.weights"),
            "weights apply to steering = \"weighted\" only",
        );
    }
    weights
}
