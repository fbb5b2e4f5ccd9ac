//! Validation of data residency: jurisdictions (whose residents, which
//! regions), the residency claim's settings, and the fence checked at load (a
//! strict jurisdiction's residents are sent nowhere else).

use std::collections::{HashMap, HashSet};

use super::routing::*;
use super::{raw, Invalid, RegionName, RegionSpec, RouteSpec};
use crate::geo::{continent_of, Code};

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
/// `implicit`: the policy has no `[[routes]]` and `routes` is the default one,
/// so an error names the missing section, not a `routes[0]` nobody wrote.
pub(super) fn check_fences(
    routes: &[RouteSpec],
    regions: &[RegionSpec],
    jurisdictions: &[JurisdictionSpec],
    implicit: bool,
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
                        if implicit {
                            errs.push(
                                "routes",
                                format!(
                                    "none: the default route sends everyone to every region in order, {region} (outside jurisdiction {:?}) included, and strict residency allows only its regions for its residents (e.g. {country}); add [[routes]] whose list (or a rule for its countries) names only its regions",
                                    j.name
                                ),
                            );
                            continue;
                        }
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
