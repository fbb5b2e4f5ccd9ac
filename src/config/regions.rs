//! `[[regions]]`: names, jurisdictions, endpoints and their health checks,
//! validated with every error at its path.

use std::collections::HashSet;

use http::uri::Scheme;
use http::Uri;

use super::{
    health, raw, Capacity, EndpointSpec, HealthCheck, Invalid, Protocol, RegionName, RegionSpec,
    RegionTls,
};
use crate::geo::Location;

pub(super) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub(super) fn regions(
    raw: Vec<raw::RawRegion>,
    checks: &HealthCheck,
    defaults: &Capacity,
    errs: &mut Invalid,
) -> Vec<RegionSpec> {
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
            let location = r.location.map(|l| location(&path, l, errs));
            if r.endpoints.is_empty() {
                errs.push(
                    format!("{path}.endpoints"),
                    "a region needs at least one endpoint",
                );
            }
            let capacity = Capacity {
                max_in_flight: r.max_in_flight.unwrap_or(defaults.max_in_flight),
                max_queue: r.max_queue.unwrap_or(defaults.max_queue),
                queue_timeout: r.queue_timeout.unwrap_or(defaults.queue_timeout),
            };
            super::edge::check_capacity(&path, &capacity, errs);
            let endpoints = r
                .endpoints
                .iter()
                .enumerate()
                .filter_map(|(j, e)| {
                    let at = format!("{path}.endpoints[{j}]");
                    if e.max_in_flight == Some(0) {
                        errs.push(format!("{at}.max_in_flight"), "must be at least 1");
                    }
                    let mut spec = endpoint(&at, e, errs)?;
                    spec.max_in_flight = e.max_in_flight.unwrap_or(capacity.max_in_flight);
                    Some(spec)
                })
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
                capacity,
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

/// A region's place, for proximity steering.
fn location(path: &str, l: raw::RawLocation, errs: &mut Invalid) -> Location {
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
    let Ok(host) = http::HeaderValue::from_str(authority.as_str()) else {
        errs.push(
            format!("{path}.url"),
            format!("{:?}: the host is not a valid Host header", e.url),
        );
        return None;
    };
    Some(EndpointSpec {
        scheme: scheme.clone(),
        authority: authority.clone(),
        protocol,
        host,
        max_in_flight: 0,
    })
}
