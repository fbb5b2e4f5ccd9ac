//! The per-request decision: geo lookup, then policy and selection, with 10 and
//! 1,000 rules. `cargo bench --bench decision`.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use georouter::config::Config;
use georouter::geo::{GeoLookup, MmdbGeo};
use georouter::routing::identity::ClientIp;
use georouter::routing::policy::{self, RequestFacts};
use georouter::routing::regions::RegionStates;
use georouter::routing::select;
use georouter::routing::table::RoutingTable;

const COUNTRIES: &str =
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE \
    US CA MX BR AR CL CO PE JP KR CN IN SG AU NZ ZA EG NG KE MA TR IL SA AE";

/// A policy with four regions, a strict EU jurisdiction and `rules` rules: a few
/// continent rules, country rules, and the rest /24 CIDR rules.
fn policy(rules: usize) -> String {
    let mut s = String::from(
        r#"
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
countries = ["AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
             "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"]
[[routes]]
steering = "proximity"
regions = ["us-east", "eu-west", "ap-southeast"]
[[routes.rules]]
continents = ["EU"]
regions = ["eu-west", "eu-central"]
[[routes.rules]]
continents = ["AS", "OC"]
regions = ["ap-southeast", "us-east"]
"#,
    );
    let mut n = 2;
    for c in COUNTRIES.split_whitespace().skip(27) {
        if n == rules.min(8) {
            break;
        }
        s.push_str(&format!(
            "[[routes.rules]]\ncountries = [\"{c}\"]\nregions = [\"us-east\", \"eu-west\"]\n"
        ));
        n += 1;
    }
    let mut i = 0u32;
    while n < rules {
        let net = std::net::Ipv4Addr::from(0x0A00_0000 + (i << 8));
        s.push_str(&format!(
            "[[routes.rules]]\ncidrs = [\"{net}/24\"]\nregions = [\"us-east\"]\n"
        ));
        n += 1;
        i += 1;
    }
    s
}

fn bench(c: &mut Criterion) {
    let db =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(georouter::geo::DEFAULT_DATABASE);
    let geo = MmdbGeo::open(&db).expect("the shipped database");
    let german: IpAddr = "80.128.0.1".parse().unwrap();
    let american: IpAddr = "8.8.8.8".parse().unwrap();
    c.bench_function("geo lookup (shipped country db)", |b| {
        b.iter(|| black_box(geo.lookup(black_box(german))))
    });
    for rules in [10, 1000] {
        let mut cfg = Config::from_toml(&policy(rules)).unwrap();
        cfg.geo_database = Some(db.clone());
        let table = RoutingTable::compile(&cfg).unwrap();
        assert_eq!(table.routes()[0].rules.len(), rules);
        let states = RegionStates::all_serving(&table);
        // Everything a request brings, with its geo lookup.
        let facts_for = |ip: IpAddr| RequestFacts {
            client: ClientIp(ip),
            geo: table.geo().lookup(ip),
            host: "api.example.com",
            path: "/v1/orders",
            ambiguity: None,
            method: &http::Method::GET,
            home: None,
            cookie_conflict: false,
        };
        let decide = |facts: &RequestFacts<'_>| {
            let d = policy::decide(&table, facts).unwrap();
            let first = select::serving(&table, &states, d.route.steering, &d.candidates, |_| 0)
                .first()
                .copied();
            first
        };
        for (who, ip) in [("eu resident", german), ("us client", american)] {
            let facts = facts_for(ip);
            c.bench_function(
                &format!("decision, {rules} rules, {who} (no lookup)"),
                |b| b.iter(|| black_box(decide(black_box(&facts)))),
            );
        }
        c.bench_function(&format!("lookup + decision, {rules} rules"), |b| {
            b.iter(|| black_box(decide(&facts_for(black_box(german)))))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
