//! The policy step of the decision: request facts + routing table -> the route, the
//! rule that matched, the residency pin, and the candidate regions in order.
//! Pure: no I/O, no lock, no allocation (candidates are kept inline).

use crate::config::{Steering, MAX_CANDIDATES};
use crate::geo::distance_km;
use crate::path::{Ambiguity, PathEscapes};
use crate::routing::identity::ClientIp;
use crate::routing::table::{JurisdictionId, Matched, RegionId, Route, RoutingTable};

pub use crate::routing::facts::{PinSource, RequestFacts};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    pub jurisdiction: JurisdictionId,
    pub source: PinSource,
}

/// Candidate regions, in order, held inline.
#[derive(Clone, Copy)]
pub struct Candidates {
    ids: [RegionId; MAX_CANDIDATES],
    len: u8,
}

impl Candidates {
    pub const EMPTY: Candidates = Candidates {
        ids: [RegionId(0); MAX_CANDIDATES],
        len: 0,
    };

    pub fn from_slice(ids: &[RegionId]) -> Self {
        let mut c = Candidates {
            ids: [RegionId(0); MAX_CANDIDATES],
            len: 0,
        };
        for &id in ids.iter().take(MAX_CANDIDATES) {
            c.push(id);
        }
        c
    }

    pub fn as_mut_slice(&mut self) -> &mut [RegionId] {
        &mut self.ids[..usize::from(self.len)]
    }

    pub fn push(&mut self, id: RegionId) {
        if usize::from(self.len) < MAX_CANDIDATES {
            self.ids[usize::from(self.len)] = id;
            self.len += 1;
        }
    }
}

impl std::ops::Deref for Candidates {
    type Target = [RegionId];
    fn deref(&self) -> &[RegionId] {
        &self.ids[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Candidates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Decision<'t> {
    pub route: &'t Route,
    pub matched: Matched,
    pub pin: Option<Pin>,
    /// True when a strict jurisdiction fenced the candidates: no region outside
    /// it may serve this request, even when all of its regions are down.
    pub fenced: bool,
    pub candidates: Candidates,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no route matches this host and path")]
    NoRoute,
    /// A residency route, no home claim, and the client's geo record could not
    /// be read: its jurisdiction cannot be ruled out, so it is refused (fail
    /// closed), not sent to the default regions.
    #[error("the client's location could not be read from the geo database; data residency cannot be checked")]
    GeoUnreadable,
    /// The path was read by decoding a spelling other readers split
    /// differently, and the route it reached refuses that.
    #[error("{0}; the route refuses paths that readers could split differently (path_escapes = \"reject\")")]
    AmbiguousPath(Ambiguity),
}

pub fn decide<'t>(
    table: &'t RoutingTable,
    facts: &RequestFacts<'_>,
) -> Result<Decision<'t>, Refusal> {
    let route = table
        .route(facts.host, facts.path, facts.method)
        .ok_or(Refusal::NoRoute)?;
    if let (Some(a), PathEscapes::Reject) = (facts.ambiguity, route.path_escapes) {
        return Err(Refusal::AmbiguousPath(a));
    }
    let (matched, list) = route.candidates_for(facts.client.0, &facts.geo);
    let pin = if route.residency {
        pin_of(table, facts)
    } else {
        None
    };
    if pin.is_none() && facts.geo.error && route.residency && table.has_strict_jurisdiction() {
        return Err(Refusal::GeoUnreadable);
    }
    let mut candidates = Candidates::from_slice(list);
    let mut fenced = false;
    if let Some(p) = pin {
        let j = table.jurisdiction(p.jurisdiction);
        if j.strict {
            fenced = true;
            let mut inside = Candidates::from_slice(&[]);
            for &id in candidates.iter().filter(|id| j.regions.contains(id)) {
                inside.push(id);
            }
            // A traveller matched a rule for elsewhere: their own regions instead.
            candidates = if inside.is_empty() {
                Candidates::from_slice(&j.regions)
            } else {
                inside
            };
        }
    }
    if route.steering == Steering::Weighted {
        weighted_first(&mut candidates, &route.weights, facts.client);
    }
    if route.steering == Steering::Proximity {
        if let Some(here) = facts.geo.location {
            let dist = |id: &RegionId| {
                table
                    .region(*id)
                    .location
                    .map_or(f64::INFINITY, |l| distance_km(here, l))
            };
            let n = usize::from(candidates.len);
            candidates.ids[..n].sort_by(|a, b| dist(a).total_cmp(&dist(b)));
        }
    }
    Ok(Decision {
        route,
        matched,
        pin,
        fenced,
        candidates,
    })
}

/// The request's jurisdiction: a checked claim (header, cookie) outranks the
/// client's country, so a resident who travels stays in their jurisdiction.
fn pin_of(table: &RoutingTable, facts: &RequestFacts<'_>) -> Option<Pin> {
    if let Some((name, source)) = facts.home {
        if let Some(jurisdiction) = table.jurisdiction_by_name(name) {
            return Some(Pin {
                jurisdiction,
                source,
            });
        }
    }
    Some(Pin {
        jurisdiction: table.resident_of(facts.geo.country?)?,
        source: PinSource::Country,
    })
}

/// Moves one candidate to the front, picked by weight with a hash of the client
/// address: a client keeps its region while the weights and candidates hold.
fn weighted_first(c: &mut Candidates, weights: &[u32], client: ClientIp) {
    let n = usize::from(c.len);
    if n < 2 {
        return;
    }
    let weight = |id: RegionId| u64::from(weights.get(usize::from(id.0)).copied().unwrap_or(1));
    let total: u64 = c.ids[..n].iter().map(|&id| weight(id)).sum();
    let mut point = client_hash(client) % total;
    let mut pick = 0;
    for (i, &id) in c.ids[..n].iter().enumerate() {
        if point < weight(id) {
            pick = i;
            break;
        }
        point -= weight(id);
    }
    c.ids[..=pick].rotate_right(1);
}

/// FNV-1a over the address bytes: stable across processes and versions.
pub fn client_hash(client: ClientIp) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    match client.0 {
        std::net::IpAddr::V4(a) => eat(&a.octets()),
        std::net::IpAddr::V6(a) => eat(&a.octets()),
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::geo::{centroid, continent_of, Code, GeoFacts};

    fn table(toml: &str) -> RoutingTable {
        RoutingTable::compile(&Config::from_toml(toml).unwrap()).unwrap()
    }

    const HOSTS: &str = r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [[regions]]
        name = "a"
        endpoints = [{ url = "http://127.0.0.1:1" }]
        [[regions]]
        name = "b"
        endpoints = [{ url = "http://127.0.0.1:2" }]
        [[routes]]
        host = "api.example.com"
        path_prefix = "/v2/"
        regions = ["b"]
        [[routes]]
        host = "api.example.com"
        regions = ["a", "b"]
        [[routes]]
        host = "*.example.com"
        regions = ["b", "a"]
        [[routes]]
        path_prefix = "/static/"
        regions = ["b"]
    "#;

    /// The geography of a client in `country` (continent and centre from the table).
    fn from(country: &str) -> GeoFacts {
        let c = Code::parse(country);
        GeoFacts {
            country: c,
            continent: c.and_then(continent_of),
            subdivision: None,
            location: c.and_then(centroid),
            error: false,
        }
    }

    struct Ask<'a> {
        host: &'a str,
        path: &'a str,
        method: http::Method,
        ip: &'a str,
        geo: GeoFacts,
        home: Option<(&'a str, PinSource)>,
    }

    impl Default for Ask<'_> {
        fn default() -> Self {
            Ask {
                host: "",
                path: "/",
                method: http::Method::GET,
                ip: "192.0.2.1",
                geo: GeoFacts::default(),
                home: None,
            }
        }
    }

    fn decide_for<'t>(t: &'t RoutingTable, ask: Ask<'_>) -> Option<Decision<'t>> {
        try_decide(t, ask).ok()
    }

    fn try_decide<'t>(t: &'t RoutingTable, ask: Ask<'_>) -> Result<Decision<'t>, Refusal> {
        let facts = RequestFacts {
            client: ClientIp(ask.ip.parse().unwrap()),
            geo: ask.geo,
            host: ask.host,
            path: ask.path,
            ambiguity: None,
            method: &ask.method,
            home: ask.home,
            cookie_conflict: false,
        };
        decide(t, &facts)
    }

    fn names(t: &RoutingTable, d: &Decision<'_>) -> Vec<String> {
        d.candidates
            .iter()
            .map(|&id| t.region(id).name.to_string())
            .collect()
    }

    fn route_of(t: &RoutingTable, host: &str, path: &str) -> Option<(String, Vec<String>)> {
        decide_for(
            t,
            Ask {
                host,
                path,
                ..Ask::default()
            },
        )
        .map(|d| (d.route.name.to_string(), names(t, &d)))
    }

    #[test]
    fn longest_path_prefix_wins_within_a_host() {
        let t = table(HOSTS);
        assert_eq!(
            route_of(&t, "api.example.com", "/v2/users").unwrap().1,
            ["b"]
        );
        assert_eq!(
            route_of(&t, "api.example.com", "/v1/users").unwrap().1,
            ["a", "b"]
        );
    }

    #[test]
    fn wildcard_host_matches_one_label() {
        let t = table(HOSTS);
        assert_eq!(route_of(&t, "www.example.com", "/").unwrap().0, "routes[2]");
        assert_eq!(route_of(&t, "example.com", "/"), None);
    }

    #[test]
    fn unknown_host_falls_to_hostless_routes() {
        let t = table(HOSTS);
        assert_eq!(route_of(&t, "other.org", "/static/x").unwrap().1, ["b"]);
        assert_eq!(route_of(&t, "other.org", "/"), None);
    }

    /// Four regions on three continents, a strict EU jurisdiction, rules by
    /// continent, country and CIDR.
    const WORLD: &str = r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [[regions]]
        name = "us-east"
        location = { lat = 39.0, lon = -77.5 }
        endpoints = [{ url = "http://127.0.0.1:1" }]
        [[regions]]
        name = "eu-west"
        jurisdiction = "eu"
        location = { lat = 53.3, lon = -6.3 }
        endpoints = [{ url = "http://127.0.0.1:2" }]
        [[regions]]
        name = "eu-central"
        jurisdiction = "eu"
        location = { lat = 50.1, lon = 8.7 }
        endpoints = [{ url = "http://127.0.0.1:3" }]
        [[regions]]
        name = "ap-southeast"
        location = { lat = 1.35, lon = 103.8 }
        endpoints = [{ url = "http://127.0.0.1:4" }]
        [[jurisdictions]]
        name = "eu"
        countries = ["DE", "FR", "IE"]
        [[routes]]
        regions = ["us-east", "eu-west", "ap-southeast"]
        [[routes.rules]]
        continents = ["EU"]
        regions = ["eu-west", "eu-central"]
        [[routes.rules]]
        countries = ["FR"]
        regions = ["eu-central", "eu-west"]
        [[routes.rules]]
        continents = ["AS", "OC"]
        regions = ["ap-southeast", "us-east"]
        [[routes.rules]]
        cidrs = ["198.51.100.0/24"]
        regions = ["us-east"]
        [[routes]]
        path_prefix = "/near/"
        steering = "proximity"
        regions = ["us-east", "eu-west", "eu-central", "ap-southeast"]
        [[routes.rules]]
        continents = ["EU"]
        regions = ["eu-west", "eu-central"]
    "#;

    fn world(ask: Ask<'_>) -> (Vec<String>, Matched, Option<Pin>, bool) {
        let t = table(WORLD);
        let d = decide_for(&t, ask).unwrap();
        (names(&t, &d), d.matched, d.pin, d.fenced)
    }

    #[test]
    fn country_rule_beats_continent_rule_beats_default() {
        let (r, m, ..) = world(Ask {
            geo: from("FR"),
            ..Ask::default()
        });
        assert_eq!(
            (r, m),
            (
                vec!["eu-central".to_owned(), "eu-west".to_owned()],
                Matched::Country(1)
            )
        );
        let (r, m, ..) = world(Ask {
            geo: from("DE"),
            ..Ask::default()
        });
        assert_eq!(
            (r, m),
            (
                vec!["eu-west".to_owned(), "eu-central".to_owned()],
                Matched::Continent(0)
            )
        );
        let (r, m, ..) = world(Ask {
            geo: from("BR"),
            ..Ask::default()
        });
        assert_eq!(m, Matched::Default);
        assert_eq!(r, ["us-east", "eu-west", "ap-southeast"]);
    }

    #[test]
    fn cidr_rule_beats_geography() {
        let (r, m, ..) = world(Ask {
            ip: "198.51.100.7",
            geo: from("SG"),
            ..Ask::default()
        });
        assert_eq!((r, m), (vec!["us-east".to_owned()], Matched::Cidr(3)));
    }

    #[test]
    fn the_most_specific_cidr_wins() {
        let t = table(
            r#"
            [[listeners]]
            address = "127.0.0.1:0"
            [[regions]]
            name = "a"
            endpoints = [{ url = "http://127.0.0.1:1" }]
            [[regions]]
            name = "b"
            endpoints = [{ url = "http://127.0.0.1:2" }]
            [[routes]]
            regions = ["a", "b"]
            [[routes.rules]]
            cidrs = ["10.0.0.0/8", "2001:db8::/32"]
            regions = ["a"]
            [[routes.rules]]
            cidrs = ["10.1.0.0/16", "2001:db8:1::/48"]
            regions = ["b"]
        "#,
        );
        let got = |ip| {
            let d = decide_for(
                &t,
                Ask {
                    ip,
                    ..Ask::default()
                },
            )
            .unwrap();
            (names(&t, &d), d.matched)
        };
        assert_eq!(got("10.1.2.3"), (vec!["b".to_owned()], Matched::Cidr(1)));
        assert_eq!(got("10.2.0.1"), (vec!["a".to_owned()], Matched::Cidr(0)));
        assert_eq!(
            got("2001:db8:1::9"),
            (vec!["b".to_owned()], Matched::Cidr(1))
        );
        assert_eq!(
            got("2001:db8:2::9"),
            (vec!["a".to_owned()], Matched::Cidr(0))
        );
        assert_eq!(got("192.0.2.1").1, Matched::Default);
    }

    #[test]
    fn writes_go_to_the_primary_and_reads_to_the_nearest_replica() {
        let t = table(
            r#"
            [[listeners]]
            address = "127.0.0.1:0"
            [[regions]]
            name = "primary"
            location = { lat = 39.0, lon = -77.5 }
            endpoints = [{ url = "http://127.0.0.1:1" }]
            [[regions]]
            name = "replica-ap"
            location = { lat = 1.35, lon = 103.8 }
            endpoints = [{ url = "http://127.0.0.1:2" }]
            [[routes]]
            name = "reads"
            steering = "proximity"
            regions = ["primary", "replica-ap"]
            [[routes]]
            name = "writes"
            methods = ["POST", "PUT", "PATCH", "DELETE"]
            regions = ["primary"]
        "#,
        );
        let ask = |method: http::Method| {
            let d = decide_for(
                &t,
                Ask {
                    method,
                    geo: from("SG"),
                    ..Ask::default()
                },
            )
            .unwrap();
            (d.route.name.to_string(), names(&t, &d))
        };
        assert_eq!(
            ask(http::Method::GET),
            (
                "reads".to_owned(),
                vec!["replica-ap".to_owned(), "primary".to_owned()]
            )
        );
        assert_eq!(
            ask(http::Method::POST),
            ("writes".to_owned(), vec!["primary".to_owned()])
        );
    }

    #[test]
    fn subdivision_rule_beats_country_rule() {
        let t = table(&WORLD.replace(
            "[[routes.rules]]\n        cidrs",
            "[[routes.rules]]\n        subdivisions = [\"US-CA\"]\n        regions = [\"ap-southeast\"]\n        [[routes.rules]]\n        countries = [\"US\"]\n        regions = [\"us-east\"]\n        [[routes.rules]]\n        cidrs",
        ));
        let mut california = from("US");
        california.subdivision = crate::geo::Code3::parse("CA");
        let d = decide_for(
            &t,
            Ask {
                geo: california,
                ..Ask::default()
            },
        )
        .unwrap();
        assert_eq!(
            (names(&t, &d), d.matched),
            (vec!["ap-southeast".to_owned()], Matched::Subdivision(3))
        );
        let d = decide_for(
            &t,
            Ask {
                geo: from("US"),
                ..Ask::default()
            },
        )
        .unwrap();
        assert_eq!(d.matched, Matched::Country(4));
    }

    #[test]
    fn weighted_steering_is_sticky_per_client_and_follows_the_weights() {
        let t = table(
            r#"
            [[listeners]]
            address = "127.0.0.1:0"
            [[regions]]
            name = "a"
            endpoints = [{ url = "http://127.0.0.1:1" }]
            [[regions]]
            name = "b"
            endpoints = [{ url = "http://127.0.0.1:2" }]
            [[routes]]
            steering = "weighted"
            regions = ["a", "b"]
            weights = { a = 3, b = 1 }
        "#,
        );
        let mut first_a = 0;
        for i in 0..4000u32 {
            let ip = std::net::Ipv4Addr::from(0x0A00_0000 + i * 7919).to_string();
            let once = names(
                &t,
                &decide_for(
                    &t,
                    Ask {
                        ip: &ip,
                        ..Ask::default()
                    },
                )
                .unwrap(),
            );
            let again = names(
                &t,
                &decide_for(
                    &t,
                    Ask {
                        ip: &ip,
                        ..Ask::default()
                    },
                )
                .unwrap(),
            );
            assert_eq!(once, again, "client {ip} moved");
            assert_eq!(once.len(), 2, "the other region stays as fallback");
            if once[0] == "a" {
                first_a += 1;
            }
        }
        // 3:1 weights: about 3000 of 4000 clients start at a.
        assert!(
            (2700..3300).contains(&first_a),
            "{first_a} of 4000 clients on a"
        );
    }

    #[test]
    fn latency_steering_keeps_the_written_order_until_probes_report() {
        let t = table(&WORLD.replace("steering = \"proximity\"", "steering = \"latency\""));
        let d = decide_for(
            &t,
            Ask {
                path: "/near/x",
                geo: from("JP"),
                ..Ask::default()
            },
        )
        .unwrap();
        assert_eq!(
            names(&t, &d),
            ["us-east", "eu-west", "eu-central", "ap-southeast"]
        );
    }

    #[test]
    fn unknown_geography_takes_the_default_list() {
        let (r, m, pin, fenced) = world(Ask::default());
        assert_eq!(r, ["us-east", "eu-west", "ap-southeast"]);
        assert_eq!((m, pin, fenced), (Matched::Default, None, false));
    }

    #[test]
    fn residents_are_fenced_into_their_jurisdiction() {
        let (r, _, pin, fenced) = world(Ask {
            geo: from("IE"),
            ..Ask::default()
        });
        assert_eq!(r, ["eu-west", "eu-central"]);
        assert_eq!(pin.map(|p| p.source), Some(PinSource::Country));
        assert!(fenced);
        // Not a resident: EU rules apply, but nothing is fenced.
        let (_, _, pin, fenced) = world(Ask {
            geo: from("CH"),
            ..Ask::default()
        });
        assert_eq!((pin, fenced), (None, false));
    }

    #[test]
    fn an_unreadable_geo_record_is_refused_on_residency_routes_only() {
        let t = table(WORLD);
        let ask = || Ask {
            geo: GeoFacts::ERROR,
            ..Ask::default()
        };
        assert!(matches!(try_decide(&t, ask()), Err(Refusal::GeoUnreadable)));
        // A checked home claim says where the resident belongs: served, fenced.
        let d = try_decide(
            &t,
            Ask {
                home: Some(("eu", PinSource::Header)),
                ..ask()
            },
        )
        .unwrap();
        assert_eq!(names(&t, &d), ["eu-west"]);
        assert!(d.fenced);
    }

    #[test]
    fn an_eu_resident_travelling_in_the_us_stays_in_the_eu() {
        // The CIDR rule and US geography both say us-east; the pin says EU.
        let (r, m, pin, fenced) = world(Ask {
            ip: "198.51.100.7",
            geo: from("US"),
            home: Some(("eu", PinSource::Header)),
            ..Ask::default()
        });
        assert_eq!(m, Matched::Cidr(3));
        assert_eq!(r, ["eu-west", "eu-central"]);
        assert_eq!(pin.map(|p| p.source), Some(PinSource::Header));
        assert!(fenced);
    }

    #[test]
    fn an_unknown_home_claim_is_ignored() {
        let (r, _, pin, _) = world(Ask {
            geo: from("US"),
            home: Some(("atlantis", PinSource::Header)),
            ..Ask::default()
        });
        assert_eq!(pin, None);
        assert_eq!(r, ["us-east", "eu-west", "ap-southeast"]);
    }

    #[test]
    fn proximity_orders_by_distance_from_the_client() {
        let (r, ..) = world(Ask {
            path: "/near/x",
            geo: from("JP"),
            ..Ask::default()
        });
        assert_eq!(r, ["ap-southeast", "eu-central", "eu-west", "us-east"]);
        // A resident in Germany: the fence first, then the nearer EU region.
        let (r, ..) = world(Ask {
            path: "/near/x",
            geo: from("DE"),
            ..Ask::default()
        });
        assert_eq!(r, ["eu-central", "eu-west"]);
    }

    #[test]
    fn with_every_eu_region_down_a_resident_has_no_candidate_that_serves() {
        use crate::routing::regions::{RegionState, RegionStates};
        let t = table(WORLD);
        let d = decide_for(
            &t,
            Ask {
                geo: from("DE"),
                ..Ask::default()
            },
        )
        .unwrap();
        let mut states = RegionStates::all_serving(&t);
        for name in ["eu-west", "eu-central"] {
            let id = t.region_by_name(name).unwrap().id;
            states.set(
                id,
                RegionState {
                    healthy: false,
                    ..RegionState::SERVING
                },
            );
        }
        assert!(d.fenced);
        assert!(crate::routing::select::serving(
            &t,
            &states,
            d.route.steering,
            &d.candidates,
            |_| 0
        )
        .is_empty());
    }

    #[test]
    fn a_policy_that_leaks_residents_is_rejected_with_the_path() {
        let leaky = WORLD.replace(
            "countries = [\"FR\"]\n        regions = [\"eu-central\", \"eu-west\"]",
            "countries = [\"FR\"]\n        regions = [\"eu-central\", \"us-east\"]",
        );
        assert_ne!(leaky, WORLD);
        let err = Config::from_toml(&leaky).unwrap_err().to_string();
        assert!(
            err.contains("routes[0].rules[1].regions[1]: us-east is outside jurisdiction \"eu\""),
            "{err}"
        );

        // A resident country without a rule falls to the route's own regions.
        let leaky = WORLD.replace(
            "countries = [\"DE\", \"FR\", \"IE\"]",
            "countries = [\"DE\", \"FR\", \"IE\", \"US\"]",
        );
        let err = Config::from_toml(&leaky).unwrap_err().to_string();
        assert!(
            err.contains("routes[0].regions[0]: us-east is outside jurisdiction"),
            "{err}"
        );
    }
}
