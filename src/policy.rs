//! The policy step of the decision: request facts + routing table -> the route and
//! its candidate regions in order, or a refusal. Pure: no I/O, no lock, no allocation.

use crate::geo::GeoFacts;
use crate::identity::ClientIp;
use crate::table::{RegionId, Route, RoutingTable};

/// What the policy knows about one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub client: ClientIp,
    pub geo: GeoFacts,
    /// Lower-case host without port; empty when the request named none.
    pub host: &'a str,
    pub path: &'a str,
}

#[derive(Debug, Clone, Copy)]
pub struct Decision<'t> {
    pub route: &'t Route,
    pub candidates: &'t [RegionId],
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
    Ok(Decision {
        route,
        candidates: &route.candidates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table(toml: &str) -> RoutingTable {
        RoutingTable::compile(&Config::from_toml(toml).unwrap()).unwrap()
    }

    const POLICY: &str = r#"
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

    fn names(t: &RoutingTable, host: &str, path: &str) -> Option<(String, Vec<String>)> {
        let facts = RequestFacts {
            client: ClientIp("192.0.2.1".parse().unwrap()),
            geo: GeoFacts::default(),
            host,
            path,
        };
        decide(t, &facts).ok().map(|d| {
            (
                d.route.name.to_string(),
                d.candidates
                    .iter()
                    .map(|&id| t.region(id).name.to_string())
                    .collect(),
            )
        })
    }

    #[test]
    fn longest_path_prefix_wins_within_a_host() {
        let t = table(POLICY);
        assert_eq!(names(&t, "api.example.com", "/v2/users").unwrap().1, ["b"]);
        assert_eq!(
            names(&t, "api.example.com", "/v1/users").unwrap().1,
            ["a", "b"]
        );
    }

    #[test]
    fn wildcard_host_matches_one_label() {
        let t = table(POLICY);
        assert_eq!(names(&t, "www.example.com", "/").unwrap().0, "routes[2]");
        assert_eq!(names(&t, "example.com", "/"), None);
    }

    #[test]
    fn unknown_host_falls_to_hostless_routes() {
        let t = table(POLICY);
        assert_eq!(names(&t, "other.org", "/static/x").unwrap().1, ["b"]);
        assert_eq!(names(&t, "other.org", "/"), None);
    }

    #[test]
    fn no_routes_means_every_region_in_declared_order() {
        let t = table(
            r#"
            [[listeners]]
            address = "127.0.0.1:0"
            [[regions]]
            name = "x"
            endpoints = [{ url = "http://127.0.0.1:1" }]
            [[regions]]
            name = "y"
            endpoints = [{ url = "http://127.0.0.1:2" }]
        "#,
        );
        assert_eq!(names(&t, "", "/anything").unwrap().1, ["x", "y"]);
    }
}
