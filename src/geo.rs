//! Geography of a client address: a MaxMind DB (GeoIP2/GeoLite2 Country and City
//! records, or the flat `country_code` records of free country databases), read
//! memory-mapped, with the continent and centroid of a country filled in when the
//! database has only the country.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod countries;

pub use countries::{centroid, continent_of};

/// The free country database shipped in `data/` (see `data/README.md`).
pub const DEFAULT_DATABASE: &str = "data/geo-whois-asn-country.mmdb";

/// Where the shipped database is when no `--db` names one, whatever the
/// working directory: `$GEOROUTER_GEO_DB`, then `data/` here, beside the
/// binary (`../share/georouter/data/` too), in the repository the binary was
/// built in. The first that exists; else the plain relative path (whose
/// absence the caller reports).
pub fn default_database() -> std::path::PathBuf {
    use std::path::{Path, PathBuf};
    if let Some(p) = std::env::var_os("GEOROUTER_GEO_DB") {
        return PathBuf::from(p);
    }
    let name = Path::new(DEFAULT_DATABASE);
    let mut candidates = vec![name.to_path_buf()];
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(name));
        candidates.push(dir.join("../share/georouter").join(name));
        // target/{debug,release}/georouter in the repository.
        candidates.push(dir.join("../..").join(name));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(name));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.to_path_buf())
}

/// What the router knows about where an address is. All optional: a private or
/// unknown address has none of it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GeoFacts {
    /// ISO 3166-1 alpha-2, upper case.
    pub country: Option<Code>,
    /// Two-letter continent code (AF, AN, AS, EU, NA, OC, SA).
    pub continent: Option<Code>,
    /// First-level subdivision, ISO 3166-2 without the country (`BY` for DE-BY).
    pub subdivision: Option<Code3>,
    pub location: Option<Location>,
    /// The database holds a record for the address but it could not be read:
    /// unlike "not in the database", residency cannot be ruled out.
    pub error: bool,
}

impl GeoFacts {
    /// What a lookup that failed to read its record knows: nothing, and that.
    pub const ERROR: GeoFacts = GeoFacts {
        country: None,
        continent: None,
        subdivision: None,
        location: None,
        error: true,
    };
}

/// A point on Earth, in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

/// A two-letter upper-case code, stored inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub [u8; 2]);

impl Code {
    /// Parses two ASCII letters, any case.
    pub fn parse(s: &str) -> Option<Code> {
        match s.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Code([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// A dense index (0..676) for per-code lookup tables.
    pub fn index(&self) -> usize {
        usize::from(self.0[0] - b'A') * 26 + usize::from(self.0[1] - b'A')
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A subdivision code of one to three ASCII alphanumerics, stored inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code3 {
    bytes: [u8; 3],
    len: u8,
}

impl Code3 {
    pub fn parse(s: &str) -> Option<Code3> {
        let b = s.as_bytes();
        if b.is_empty() || b.len() > 3 || !b.iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        let mut bytes = [0u8; 3];
        for (d, s) in bytes.iter_mut().zip(b) {
            *d = s.to_ascii_uppercase();
        }
        Some(Code3 {
            bytes,
            len: b.len() as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

/// Great-circle distance in kilometres (haversine, mean Earth radius).
pub fn distance_km(a: Location, b: Location) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = la2 - la1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

pub trait GeoLookup: std::fmt::Debug + Send + Sync + 'static {
    fn lookup(&self, ip: IpAddr) -> GeoFacts;

    /// What the database is, for `explain` and logs.
    fn describe(&self) -> String {
        "no geo database".to_owned()
    }
}

/// The lookup used when no database is configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoGeo;

impl GeoLookup for NoGeo {
    fn lookup(&self, _ip: IpAddr) -> GeoFacts {
        GeoFacts::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("{path}: cannot open the geo database: {source}")]
    Open {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
    #[error("{path}: the geo database is empty")]
    Empty { path: PathBuf },
    #[error("{path}: the geo database is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
    #[error("{path}: the geo database is corrupt: the record of {network} cannot be read ({source}); replace the file with a good copy")]
    CorruptRecord {
        path: PathBuf,
        network: String,
        source: maxminddb::MaxMindDbError,
    },
}

/// A MaxMind DB file, memory-mapped.
pub struct MmdbGeo {
    reader: maxminddb::Reader<maxminddb::Mmap>,
    path: PathBuf,
}

impl std::fmt::Debug for MmdbGeo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmdbGeo").field("path", &self.path).finish()
    }
}

/// The fields georouter reads from either record schema; everything else in a
/// record is skipped.
#[derive(Deserialize, Default)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    continent: Option<ContinentCode<'a>>,
    #[serde(borrow, default)]
    subdivisions: Option<Vec<IsoCode<'a>>>,
    #[serde(default)]
    location: Option<RecordLocation>,
    /// The flat schema of free country databases.
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct ContinentCode<'a> {
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct RecordLocation {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

impl MmdbGeo {
    /// Opens and checks a database: a file that is not a MaxMind DB, is
    /// truncated, or holds no record is refused here, not at the first request.
    pub fn open(path: &Path) -> Result<MmdbGeo, GeoError> {
        // SAFETY: the map is read-only; it is undefined behaviour only if the file is
        // changed in place while mapped. Databases are replaced by renaming a new
        // file over the old one (as geoipupdate does), which leaves this map intact;
        // the configuration reference says so.
        #[allow(unsafe_code)]
        let opened = unsafe { maxminddb::Reader::open_mmap(path) };
        let reader = opened.map_err(|source| GeoError::Open {
            path: path.to_owned(),
            source,
        })?;
        if reader.metadata().node_count == 0 {
            return Err(GeoError::Empty {
                path: path.to_owned(),
            });
        }
        // A full `verify()` also rejects real databases over cosmetic metadata
        // (an empty description map). Instead every network of the tree is
        // walked and every distinct record decoded as a lookup would: a database
        // with one unreadable record is refused whole, never served.
        let geo = MmdbGeo {
            reader,
            path: path.to_owned(),
        };
        geo.check_every_record()?;
        Ok(geo)
    }

    /// Walks the whole search tree and decodes each distinct record once.
    fn check_every_record(&self) -> Result<(), GeoError> {
        let corrupt = |source| GeoError::Corrupt {
            path: self.path.clone(),
            source,
        };
        let mut seen = std::collections::HashSet::new();
        for found in self.reader.networks(Default::default()).map_err(corrupt)? {
            let found = found.map_err(corrupt)?;
            let Some(offset) = found.offset() else {
                continue;
            };
            if !seen.insert(offset) {
                continue;
            }
            if let Err(source) = found.decode::<Record<'_>>() {
                return Err(GeoError::CorruptRecord {
                    path: self.path.clone(),
                    network: found
                        .network()
                        .map_or_else(|_| "a network".to_owned(), |n| n.to_string()),
                    source,
                });
            }
        }
        Ok(())
    }

    /// The database's type and build time, as its metadata says.
    pub fn build(&self) -> (String, u64) {
        let m = self.reader.metadata();
        (m.database_type.clone(), m.build_epoch)
    }

    /// `Ok(None)` when the address is not in the database, `Err` when its record
    /// cannot be read.
    fn record(&self, ip: IpAddr) -> Result<Option<GeoFacts>, maxminddb::MaxMindDbError> {
        if ip.is_ipv6() && self.reader.metadata().ip_version == 4 {
            // An IPv4-only database knows nothing of IPv6: not an error.
            return Ok(None);
        }
        let Some(r) = self.reader.lookup(ip)?.decode::<Record<'_>>()? else {
            return Ok(None);
        };
        let country = r
            .country
            .and_then(|c| c.iso_code)
            .or(r.country_code)
            .or(r.registered_country.and_then(|c| c.iso_code))
            .and_then(Code::parse);
        let continent = r
            .continent
            .and_then(|c| c.code)
            .and_then(Code::parse)
            .or_else(|| country.and_then(continent_of));
        let subdivision = r
            .subdivisions
            .as_ref()
            .and_then(|s| s.first())
            .and_then(|s| s.iso_code)
            .and_then(Code3::parse);
        let location = match r.location {
            Some(RecordLocation {
                latitude: Some(lat),
                longitude: Some(lon),
            }) => Some(Location { lat, lon }),
            _ => country.and_then(centroid),
        };
        Ok(Some(GeoFacts {
            country,
            continent,
            subdivision,
            location,
            error: false,
        }))
    }
}

impl GeoLookup for MmdbGeo {
    fn lookup(&self, ip: IpAddr) -> GeoFacts {
        match self.record(ip) {
            Ok(facts) => facts.unwrap_or_default(),
            Err(e) => {
                static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
                if let Some(suppressed) = LOG.allow() {
                    tracing::error!(path = %self.path.display(), %ip, error = %e, suppressed, "geo lookup failed: the record cannot be read; residency routes refuse (503) such requests");
                }
                GeoFacts::ERROR
            }
        }
    }

    fn describe(&self) -> String {
        let (kind, epoch) = self.build();
        let built = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch),
        );
        format!("{} ({kind}, built {built})", self.path.display())
    }
}
