//! Policy text for tests: listeners on port 0, simulated regions, two-region health setups.

use super::*;

/// `[[listeners]]` on port 0, `[[regions]]` one per simulated region (HTTP/1.1),
/// then `extra` (routes, settings).
pub fn policy(regions: &[&SimRegion], extra: &str) -> String {
    let mut s = String::from("[[listeners]]\naddress = \"127.0.0.1:0\"\n\n");
    for r in regions {
        s.push_str(&format!(
            "[[regions]]\nname = \"{}\"\nendpoints = [{{ url = \"{}\" }}]\n\n",
            r.name(),
            r.url()
        ));
    }
    s.push_str(extra);
    s
}

/// `[[regions]]` blocks for simulated regions, each with its jurisdiction if any.
pub fn regions_toml(regions: &[(&SimRegion, Option<&str>)]) -> String {
    let mut s = String::new();
    for (r, jurisdiction) in regions {
        s.push_str(&format!("[[regions]]\nname = \"{}\"\n", r.name()));
        if let Some(j) = jurisdiction {
            s.push_str(&format!("jurisdiction = \"{j}\"\n"));
        }
        s.push_str(&format!("endpoints = [{{ url = \"{}\" }}]\n", r.url()));
    }
    s
}

pub async fn region(name: &str) -> SimRegion {
    SimRegion::spawn(name)
        .await
        .expect("start simulated region")
}

/// Regions `a` and `b`, `a` preferred, with checks every 50 ms (two failures take
/// a region out, two passes bring it back), no jitter, no access log; `extra` goes
/// inside `[health]` and may open further tables.
pub fn two_regions(a: &SimRegion, b: &SimRegion, extra: &str) -> String {
    policy(
        &[a, b],
        &format!(
            r#"
            [server]
            access_log = false
            [health]
            interval = "50ms"
            timeout = "200ms"
            fall = 2
            rise = 2
            jitter = 0.0
            {extra}
            [[routes]]
            regions = ["a", "b"]
            "#
        ),
    )
}

/// Policy text from parts, instead of `format!` and `.replace()` on TOML:
/// a listener on port 0, then regions (simulated, each with its jurisdiction
/// if any), jurisdictions, routes, and whole sections as given.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    regions: Vec<String>,
    jurisdictions: Vec<String>,
    routes: Vec<String>,
    sections: Vec<String>,
}

impl Policy {
    pub fn new() -> Policy {
        Policy::default()
    }

    /// A simulated region, outside any jurisdiction.
    pub fn region(self, r: &SimRegion) -> Policy {
        self.region_at(r.name(), &r.url(), None)
    }

    /// A simulated region inside `jurisdiction`.
    pub fn region_in(self, r: &SimRegion, jurisdiction: &str) -> Policy {
        self.region_at(r.name(), &r.url(), Some(jurisdiction))
    }

    /// A region with one endpoint at `url`.
    pub fn region_at(mut self, name: &str, url: &str, jurisdiction: Option<&str>) -> Policy {
        let j = jurisdiction.map_or(String::new(), |j| format!("jurisdiction = {j:?}\n"));
        self.regions.push(format!(
            "[[regions]]\nname = {name:?}\n{j}endpoints = [{{ url = {url:?} }}]\n"
        ));
        self
    }

    pub fn jurisdiction(mut self, name: &str, strict: bool, countries: &[&str]) -> Policy {
        self.jurisdictions.push(format!(
            "[[jurisdictions]]\nname = {name:?}\nstrict = {strict}\ncountries = {countries:?}\n"
        ));
        self
    }

    /// Another builder's regions, jurisdictions, routes and sections added.
    pub fn merge(mut self, other: Policy) -> Policy {
        self.regions.extend(other.regions);
        self.jurisdictions.extend(other.jurisdictions);
        self.routes.extend(other.routes);
        self.sections.extend(other.sections);
        self
    }

    /// A route over `regions`, in order of preference.
    pub fn route(mut self, regions: &[&str]) -> Policy {
        self.routes
            .push(format!("[[routes]]\nregions = {regions:?}\n"));
        self
    }

    /// A whole section (or several), as TOML text: `[health]\ninterval = "50ms"`.
    pub fn section(mut self, toml: &str) -> Policy {
        self.sections.push(format!("{toml}\n"));
        self
    }

    pub fn toml(&self) -> String {
        let mut s = String::from("[[listeners]]\naddress = \"127.0.0.1:0\"\n");
        for part in [
            &self.sections,
            &self.regions,
            &self.jurisdictions,
            &self.routes,
        ] {
            for p in part {
                s.push('\n');
                s.push_str(p);
            }
        }
        s
    }
}
