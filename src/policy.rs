//! The policy step of the decision: request facts + routing table -> the route, the
//! rule that matched, the residency pin, and the candidate regions in order.
//! Pure: no I/O, no lock, no allocation (candidates are kept inline).

use crate::config::routing_limits::MAX_CANDIDATES;
use crate::config::Steering;
use crate::geo::{distance_km, GeoFacts};
use crate::identity::ClientIp;
use crate::table::{JurisdictionId, Matched, RegionId, Route, RoutingTable};

/// What the policy knows about one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub client: ClientIp,
    pub geo: GeoFacts,
    /// Lower-case host without port; empty when the request named none.
    pub host: &'a str,
    pub path: &'a str,
    /// The home jurisdiction a trusted gateway claimed for the user, if any.
    pub home: Option<&'a str>,
}

/// Where a request's jurisdiction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinSource {
    /// The residency header, from a trusted proxy.
    Header,
    /// The client's country.
    Country,
}

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
    fn from_slice(ids: &[RegionId]) -> Self {
        let mut c = Candidates {
            ids: [RegionId(0); MAX_CANDIDATES],
            len: 0,
        };
        for &id in ids.iter().take(MAX_CANDIDATES) {
            c.push(id);
        }
        c
    }

    fn push(&mut self, id: RegionId) {
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
}

pub fn decide<'t>(
    table: &'t RoutingTable,
    facts: &RequestFacts<'_>,
) -> Result<Decision<'t>, Refusal> {
    let route = table
        .route(facts.host, facts.path)
        .ok_or(Refusal::NoRoute)?;
    let (matched, list) = route.candidates_for(facts.client.0, &facts.geo);
    let pin = facts
        .home
        .and_then(|h| table.jurisdiction_by_name(h))
        .map(|jurisdiction| Pin {
            jurisdiction,
            source: PinSource::Header,
        })
        .or_else(|| {
            let jurisdiction = table.resident_of(facts.geo.country?)?;
            Some(Pin {
                jurisdiction,
                source: PinSource::Country,
            })
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::geo::{centroid, continent_of, Code};

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
        }
    }

    struct Ask<'a> {
        host: &'a str,
        path: &'a str,
        ip: &'a str,
        geo: GeoFacts,
        home: Option<&'a str>,
    }

    impl Default for Ask<'_> {
        fn default() -> Self {
            Ask {
                host: "",
                path: "/",
                ip: "192.0.2.1",
                geo: GeoFacts::default(),
                home: None,
            }
        }
    }

    fn decide_for<'t>(t: &'t RoutingTable, ask: Ask<'_>) -> Option<Decision<'t>> {
        let facts = RequestFacts {
            client: ClientIp(ask.ip.parse().unwrap()),
            geo: ask.geo,
            host: ask.host,
            path: ask.path,
            home: ask.home,
        };
        decide(t, &facts).ok()
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
    fn an_eu_resident_travelling_in_the_us_stays_in_the_eu() {
        // The CIDR rule and US geography both say us-east; the pin says EU.
        let (r, m, pin, fenced) = world(Ask {
            ip: "198.51.100.7",
            geo: from("US"),
            home: Some("eu"),
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
            home: Some("atlantis"),
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
        use crate::regions::{RegionState, RegionStates};
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
                    drained: false,
                },
            );
        }
        assert!(d.fenced);
        assert_eq!(
            crate::select::serving(&t, &states, &d.candidates).next(),
            None
        );
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
