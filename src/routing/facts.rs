//! The facts of one request that the decision reads: client, geography, host,
//! path, method and a checked home-jurisdiction claim. Built the same way for a
//! proxied request and for `/explain`, so the two cannot disagree.

use http::HeaderMap;

use crate::geo::GeoFacts;
use crate::path::Ambiguity;
use crate::routing::identity::ClientIp;
use crate::routing::residency::CookieClaim;
use crate::routing::table::RoutingTable;

/// What the policy knows about one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub client: ClientIp,
    pub geo: GeoFacts,
    /// Lower-case host without port; empty when the request named none.
    pub host: &'a str,
    pub path: &'a str,
    /// What the path's reading decoded that readers could split differently.
    pub ambiguity: Option<Ambiguity>,
    pub method: &'a http::Method,
    /// A home-jurisdiction claim already checked (trusted header or signed cookie).
    pub home: Option<(&'a str, PinSource)>,
    /// Valid residency cookies named different jurisdictions: none was believed.
    pub cookie_conflict: bool,
}

/// Where a request's jurisdiction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinSource {
    /// The residency header, from a trusted proxy.
    Header,
    /// The cookie the router signed earlier.
    Cookie,
    /// The client's country.
    Country,
}

/// What a request's facts are made from.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// The client, as identity found it (the peer, or what trusted proxies said).
    pub client: ClientIp,
    /// Lower-case host without port.
    pub host: &'a str,
    /// The path as read ([`crate::path::read`]).
    pub path: &'a str,
    pub ambiguity: Option<Ambiguity>,
    pub method: &'a http::Method,
    /// Where the residency header and the residency cookie are read from.
    pub headers: &'a HeaderMap,
    /// The peer is a trusted proxy: its residency header counts.
    pub peer_trusted: bool,
}

impl<'a> RequestFacts<'a> {
    /// The facts of a request: its client's geography looked up, and its home
    /// jurisdiction from the residency header (trusted peers only) or else the
    /// router's signed cookie.
    pub fn from_request(table: &RoutingTable, s: Sources<'a>) -> Self {
        let from_header = match &table.residency_header {
            Some(name) if s.peer_trusted => s.headers.get(name).and_then(|v| v.to_str().ok()),
            _ => None,
        };
        let mut cookie_conflict = false;
        let home = from_header.map(|h| (h, PinSource::Header)).or_else(|| {
            let signer = table.cookie.as_ref()?;
            match signer.from_request(s.headers) {
                CookieClaim::One(j) => Some((j, PinSource::Cookie)),
                CookieClaim::None => None,
                CookieClaim::Conflict => {
                    cookie_conflict = true;
                    None
                }
            }
        });
        RequestFacts {
            client: s.client,
            geo: table.geo().lookup(s.client.0),
            host: s.host,
            path: s.path,
            ambiguity: s.ambiguity,
            method: s.method,
            home,
            cookie_conflict,
        }
    }
}
