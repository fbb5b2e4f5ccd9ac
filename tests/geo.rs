//! Geo lookups against tiny MaxMind DB files the test writes itself, in both
//! record schemas, plus the files a database must be refused for.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

mod support;

use georouter::geo::{Code, GeoError, GeoLookup, MmdbGeo};
use serde_json::json;
use support::{mmdb_dir as dir, write_mmdb as write_db};

fn country_db() -> PathBuf {
    write_db(
        "country.mmdb",
        "ip-location-db country",
        &[
            ("80.128.0.0/16", json!({ "country_code": "DE" })),
            ("3.0.0.0/8", json!({ "country_code": "US" })),
        ],
    )
}

fn city_db() -> PathBuf {
    write_db(
        "city.mmdb",
        "GeoLite2-City",
        &[(
            "80.128.0.0/16",
            json!({
                "city": { "names": { "en": "Munich" } },
                "continent": { "code": "EU", "names": { "en": "Europe" } },
                "country": { "iso_code": "DE", "names": { "en": "Germany" } },
                "location": { "latitude": 48.1374, "longitude": 11.5755, "time_zone": "Europe/Berlin" },
                "subdivisions": [{ "iso_code": "BY", "names": { "en": "Bavaria" } }]
            }),
        )],
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn country_schema_gets_continent_and_centre_from_the_built_in_table() {
    let geo = MmdbGeo::open(&country_db()).unwrap();
    let f = geo.lookup(ip("80.128.7.1"));
    assert_eq!(f.country, Code::parse("DE"));
    assert_eq!(f.continent, Code::parse("EU"));
    assert_eq!(f.subdivision, None);
    let loc = f.location.expect("country centre");
    assert!(
        (loc.lat - 51.0).abs() < 1.0 && (loc.lon - 9.0).abs() < 1.0,
        "{loc:?}"
    );
    assert_eq!(geo.lookup(ip("3.3.3.3")).continent, Code::parse("NA"));
}

#[test]
fn city_schema_gets_everything_from_the_record() {
    let geo = MmdbGeo::open(&city_db()).unwrap();
    let f = geo.lookup(ip("80.128.0.9"));
    assert_eq!(f.country, Code::parse("DE"));
    assert_eq!(f.continent, Code::parse("EU"));
    assert_eq!(
        f.subdivision.map(|s| s.as_str().to_owned()).as_deref(),
        Some("BY")
    );
    let loc = f.location.unwrap();
    assert!((loc.lat - 48.1374).abs() < 1e-9 && (loc.lon - 11.5755).abs() < 1e-9);
    assert!(
        geo.describe().contains("GeoLite2-City, built 2025-11-22"),
        "{}",
        geo.describe()
    );
}

#[test]
fn unknown_private_and_other_family_addresses_have_no_facts() {
    let geo = MmdbGeo::open(&country_db()).unwrap();
    for addr in ["192.0.2.1", "10.1.2.3", "127.0.0.1", "2001:db8::1"] {
        assert_eq!(geo.lookup(ip(addr)), Default::default(), "{addr}");
    }
}

fn refused(path: &Path) -> GeoError {
    MmdbGeo::open(path).expect_err("database should be refused")
}

#[test]
fn corrupt_truncated_and_empty_files_are_refused() {
    let d = dir();
    let garbage = d.join("garbage.mmdb");
    std::fs::write(&garbage, b"this is not a maxmind database at all").unwrap();
    assert!(matches!(refused(&garbage), GeoError::Open { .. }));

    let good = std::fs::read(country_db()).unwrap();
    let truncated = d.join("truncated.mmdb");
    std::fs::write(&truncated, &good[..good.len() / 3]).unwrap();
    let e = refused(&truncated);
    assert!(e.to_string().contains("truncated.mmdb"), "{e}");

    let empty = d.join("empty.mmdb");
    std::fs::write(&empty, b"").unwrap();
    refused(&empty);

    let nodes_only = write_db("no-records.mmdb", "empty", &[]);
    refused(&nodes_only);
}

#[test]
fn geo_lookup_command_prints_the_facts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_georouter"))
        .args(["geo", "lookup", "80.128.0.1", "--db"])
        .arg(city_db())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("country      DE"), "{text}");
    assert!(text.contains("subdivision  BY"), "{text}");
    assert!(text.contains("location     48.1374, 11.5755"), "{text}");
}

#[test]
fn the_shipped_database_opens() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(georouter::geo::DEFAULT_DATABASE);
    let geo = MmdbGeo::open(&path).unwrap();
    // No assertion on its contents: only that it is a usable database.
    let _ = geo.lookup(ip("80.128.0.1"));
}

#[test]
fn a_database_with_one_unreadable_record_is_refused_with_its_path() {
    let good = write_db(
        "one-bad-record.src.mmdb",
        "ip-location-db country",
        &[
            ("80.128.0.0/16", json!({ "country_code": "DE" })),
            ("90.0.0.0/8", json!({ "country_code": "FR" })),
            ("3.0.0.0/8", json!({ "country_code": "US" })),
        ],
    );
    assert!(MmdbGeo::open(&good).is_ok());
    // France's record: its string is no longer UTF-8. Lookups elsewhere (the
    // probes of a quick check) still read fine.
    let mut bytes = std::fs::read(&good).unwrap();
    let at = bytes
        .windows(3)
        .position(|w| w == b"\x42FR")
        .expect("the record's string is in the data section");
    bytes[at + 1..at + 3].copy_from_slice(b"\xff\xfe");
    let bad = dir().join("one-bad-record.mmdb");
    std::fs::write(&bad, &bytes).unwrap();
    let e = refused(&bad);
    assert!(matches!(e, GeoError::CorruptRecord { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("one-bad-record.mmdb") && text.contains("90.0.0.0/8"),
        "{text}"
    );
}
