//! Why a request goes where it goes: the decision for a (real or hypothetical)
//! request, with the reason each region was chosen or passed over. Serves
//! `GET /explain` and the short reason in the access log.

use serde::Serialize;

use crate::routing::policy::{Decision, PinSource, RequestFacts};
use crate::routing::regions::RegionStates;
use crate::routing::table::{Matched, RoutingTable};

/// The short form for access logs: which list matched and where the pin came from.
pub fn short_reason(table: &RoutingTable, d: &Decision<'_>) -> String {
    let matched = match d.matched {
        Matched::Cidr(k) => format!("cidr rule {k}"),
        Matched::Subdivision(k) => format!("subdivision rule {k}"),
        Matched::Country(k) => format!("country rule {k}"),
        Matched::Continent(k) => format!("continent rule {k}"),
        Matched::Default => "default".to_owned(),
    };
    match d.pin {
        Some(p) => format!(
            "route={} match={matched} pin={}:{}{}",
            d.route.name,
            table.jurisdiction(p.jurisdiction).name,
            source(p.source),
            if d.fenced { ":strict" } else { "" }
        ),
        None => format!("route={} match={matched}", d.route.name),
    }
}

fn source(s: PinSource) -> &'static str {
    match s {
        PinSource::Header => "header",
        PinSource::Cookie => "cookie",
        PinSource::Country => "country",
    }
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub client_ip: String,
    pub geo: GeoView,
    pub database: String,
    pub route: Option<String>,
    pub matched: Option<String>,
    pub pin: Option<PinView>,
    pub fenced: bool,
    pub candidates: Vec<String>,
    pub chosen: Option<String>,
    pub outcome: String,
    pub regions: Vec<RegionVerdict>,
}

#[derive(Debug, Serialize)]
pub struct GeoView {
    pub country: Option<String>,
    pub continent: Option<String>,
    pub subdivision: Option<String>,
    pub location: Option<[f64; 2]>,
    /// The database has a record for the address that could not be read.
    pub lookup_error: bool,
}

#[derive(Debug, Serialize)]
pub struct PinView {
    pub jurisdiction: String,
    pub source: &'static str,
    pub strict: bool,
}

#[derive(Debug, Serialize)]
pub struct RegionVerdict {
    pub region: String,
    pub verdict: String,
}

/// The whole story of one decision.
pub fn explain(
    table: &RoutingTable,
    states: &RegionStates,
    facts: &RequestFacts<'_>,
) -> Explanation {
    let g = &facts.geo;
    let geo = GeoView {
        country: g.country.map(|c| c.to_string()),
        continent: g.continent.map(|c| c.to_string()),
        subdivision: g.subdivision.map(|s| s.as_str().to_owned()),
        location: g.location.map(|l| [l.lat, l.lon]),
        lookup_error: g.error,
    };
    let mut e = Explanation {
        client_ip: facts.client.0.to_string(),
        geo,
        database: table.geo().describe(),
        route: None,
        matched: None,
        pin: None,
        fenced: false,
        candidates: Vec::new(),
        chosen: None,
        outcome: String::new(),
        regions: Vec::new(),
    };
    // The data path's own plan for the same facts.
    let plan = match crate::routing::plan::plan(table, states, facts) {
        Ok(p) => p,
        Err(refusal) => {
            e.outcome = refusal.to_string();
            return e;
        }
    };
    let (d, order, panicked) = (plan.decision, plan.regions, plan.panicked);
    e.route = Some(d.route.name.to_string());
    e.matched = Some(match d.matched {
        Matched::Cidr(k) => format!("rules[{k}] (client CIDR)"),
        Matched::Subdivision(k) => format!("rules[{k}] (subdivision)"),
        Matched::Country(k) => format!("rules[{k}] (country)"),
        Matched::Continent(k) => format!("rules[{k}] (continent)"),
        Matched::Default => "the route's regions (no rule matched)".to_owned(),
    });
    e.pin = d.pin.map(|p| {
        let j = table.jurisdiction(p.jurisdiction);
        PinView {
            jurisdiction: j.name.to_string(),
            source: source(p.source),
            strict: j.strict,
        }
    });
    e.fenced = d.fenced;
    e.candidates = d
        .candidates
        .iter()
        .map(|&id| table.region(id).name.to_string())
        .collect();
    let chosen = order.first().copied();
    e.chosen = chosen.map(|id| table.region(id).name.to_string());
    e.outcome = match (chosen, d.fenced) {
        (Some(id), _) if panicked => format!(
            "routed to {} in panic mode: no candidate is healthy, so the undrained ones are tried anyway",
            table.region(id).name
        ),
        (Some(id), _) => format!("routed to {}", table.region(id).name),
        (None, true) => "refused: no serving region inside the jurisdiction (503)".to_owned(),
        (None, false) => "refused: no serving region (503)".to_owned(),
    };
    let fence = d
        .pin
        .filter(|_| d.fenced)
        .map(|p| table.jurisdiction(p.jurisdiction));
    for r in table.regions() {
        let verdict = verdict(table, states, r.id, &d, &order, chosen, panicked, fence);
        e.regions.push(RegionVerdict {
            region: r.name.to_string(),
            verdict,
        });
    }
    e
}

/// What became of one region for this decision: chosen, a fallback, passed
/// over (and why), fenced out, or not a candidate.
#[allow(clippy::too_many_arguments)]
fn verdict(
    table: &RoutingTable,
    states: &RegionStates,
    id: crate::routing::table::RegionId,
    d: &crate::routing::policy::Decision<'_>,
    order: &[crate::routing::table::RegionId],
    chosen: Option<crate::routing::table::RegionId>,
    panicked: bool,
    fence: Option<&crate::routing::table::Jurisdiction>,
) -> String {
    let s = states.get(table, id);
    if Some(id) == chosen {
        if panicked {
            "chosen: first undrained candidate (panic mode)".to_owned()
        } else if s.weight < 1000 {
            format!(
                "chosen: first serving candidate (slow start: {}% of its traffic)",
                s.weight / 10
            )
        } else {
            "chosen: first serving candidate".to_owned()
        }
    } else if let Some(pos) = order.iter().position(|&c| c == id) {
        format!("fallback #{pos} if the chosen region fails")
    } else if let Some(pos) = d.candidates.iter().position(|&c| c == id) {
        let before_chosen = chosen.is_none_or(|c| {
            d.candidates
                .iter()
                .position(|&x| x == c)
                .is_some_and(|cp| pos < cp)
        });
        match (before_chosen, s.healthy, s.drained) {
            (true, _, true) => "passed over: drained".to_owned(),
            (true, false, _) => "passed over: unhealthy".to_owned(),
            _ => format!("fallback #{} if the chosen region fails", pos + 1),
        }
    } else if let Some(j) = fence.filter(|j| !j.regions.contains(&id)) {
        format!("excluded: outside jurisdiction {} (strict)", j.name)
    } else {
        "not a candidate for this rule".to_owned()
    }
}
