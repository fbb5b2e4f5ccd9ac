//! georouter: a geo-aware global traffic router, one L7 reverse proxy in front of
//! several regional clusters.
//!
//! One request, end to end:
//!
//! ```text
//! server    accept TCP/TLS, HTTP/1.1 or HTTP/2; limits and deadlines
//!   proxy   check the request (Host, URI, body size)
//!     identity  peer address -> client IP
//!     geo       client IP -> country, continent, location (GeoLookup)
//!     policy    facts + RoutingTable -> route and candidate regions, or refusal
//!     select    candidates + RegionStates -> regions to try, in order
//!   forward pooled upstream client per region; next candidate on connect failure
//!   proxy   hop-by-hop headers out, x-georouter-region in; stream the body back
//! ```
//!
//! The decision (identity, geo, policy, select) is pure: it reads two immutable
//! snapshots behind `ArcSwap` ([`State::table`], [`State::states`]) and does no I/O.
//!
//! Modules: [`config`] TOML -> validated `Config`; [`table`] compiled routing
//! table; [`regions`] region state snapshot; [`identity`], [`geo`], [`policy`],
//! [`select`] the decision; [`headers`] header hygiene; [`forward`] upstream
//! clients; [`proxy`] the per-request service; [`server`] accept loops and
//! shutdown; [`launch`] worker threads and the admin listener; [`tls`] rustls configs; [`admin`] the admin API; [`sim`] simulated
//! regional backends for the demo and the tests; [`demo`] the embedded default;
//! [`explain`] why a request goes where it goes; [`pool`] upstream connections.

// One audited exception: the geo database is memory-mapped (src/geo.rs).
#![deny(unsafe_code)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod explain;
pub mod forward;
pub mod geo;
pub mod headers;
pub mod identity;
pub mod launch;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod regions;
pub mod residency;
pub mod select;
pub mod server;
pub mod sim;
pub mod table;
pub mod tls;

use arc_swap::ArcSwap;

use config::Config;
use regions::RegionStates;
use table::{RoutingTable, TableError};

/// What the data plane shares: immutable snapshots, swapped whole.
#[derive(Debug)]
pub struct State {
    pub metrics: metrics::Metrics,
    pub config: ArcSwap<Config>,
    pub table: ArcSwap<RoutingTable>,
    pub states: ArcSwap<RegionStates>,
}

impl State {
    pub fn new(config: Config) -> Result<State, TableError> {
        let table = RoutingTable::compile(&config)?;
        let states = RegionStates::all_serving(&table);
        Ok(State {
            metrics: metrics::Metrics::new(),
            config: ArcSwap::from_pointee(config),
            table: ArcSwap::from_pointee(table),
            states: ArcSwap::from_pointee(states),
        })
    }
}
