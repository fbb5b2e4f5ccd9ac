//! Geography of a client address. This issue ships the seam only: a lookup that
//! knows nothing; the mmdb reader plugs in behind the same trait.

use std::net::IpAddr;

use crate::config::Location;

/// What the router knows about where an address is. All optional: a private or
/// unknown address has none of it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GeoFacts {
    /// ISO 3166-1 alpha-2, upper case.
    pub country: Option<[u8; 2]>,
    /// Two-letter continent code (EU, NA, SA, AS, AF, OC, AN).
    pub continent: Option<[u8; 2]>,
    pub location: Option<Location>,
}

pub trait GeoLookup: std::fmt::Debug + Send + Sync + 'static {
    fn lookup(&self, ip: IpAddr) -> GeoFacts;
}

/// The lookup used when no database is configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoGeo;

impl GeoLookup for NoGeo {
    fn lookup(&self, _ip: IpAddr) -> GeoFacts {
        GeoFacts::default()
    }
}
