//! georouter: a geo-aware global traffic router, one L7 reverse proxy in front of
//! several regional clusters.
//!
//! One request, end to end:
//!
//! ```text
//! server        accept TCP (PROXY protocol) or TLS, HTTP/1.1 or HTTP/2; limits, deadlines
//!   head_guard  HTTP/1.1 framing hyper folds away (CL with TE, repeated CL, bare LF)
//!   h2_guard    HTTP/2 control-frame floods, broken prefaces -> GOAWAY
//!   proxy       admit (framing, authority, TRACE), path normalised, URI and body size
//!     identity  peer + trusted proxies -> client IP
//!     residency trusted header or signed cookie -> home-jurisdiction claim
//!     geo       client IP -> country, continent, subdivision, location
//!     policy    facts + RoutingTable -> route, rule, pin, candidates (fenced)
//!     select    candidates + RegionStates -> regions to try, in order
//!   forward     a slot on an endpoint with room (capacity: power of two choices
//!               over in-flight; a full region spills to the next candidate; all
//!               full: a short queue, then 503 + Retry-After); pooled upstream
//!               connection; a reset retried on a sibling endpoint, then the next
//!               candidate; every failure blamed once: region, client or local
//!   proxy       hop-by-hop headers out, x-georouter-region in; stream the body back
//! ```
//!
//! The decision (identity, geo, policy, select) is pure: it reads one immutable
//! snapshot behind `ArcSwap` ([`State::routing`]: the table and the region states
//! made for it), does no I/O and allocates nothing.
//!
//! Modules: [`config`] TOML -> validated `Config`; [`table`] the compiled routing
//! table; [`regions`] the region states; [`snapshot`] the two as one published
//! value; [`identity`], [`residency`],
//! [`geo`], [`policy`], [`select`] the decision; [`explain`] why a request goes
//! where it goes; [`admit`], [`authority`], [`path`], [`head_guard`],
//! [`h2_guard`] what the edge refuses; [`headers`] header hygiene;
//! [`request_id`] `x-request-id`; [`forward`] attempts over the candidates;
//! [`capacity`] requests in flight per endpoint, endpoint standing, the queue;
//! [`blame`] region, client and local faults; [`client_body`] the upload and
//! its clock; [`pool`] upstream connections; [`proxy`] the per-request service;
//! [`activity`] what a connection is doing; [`pressure`] which connections make
//! room when every slot is taken; [`descriptors`] the descriptor
//! budget; [`log_limit`] rate-limited log lines; [`memory`] freed pages back; [`auth`] admin tokens;
//! [`server`] accept loops and shutdown; [`proxy_protocol`] PROXY v1/v2;
//! [`launch`] worker threads and the admin listener; [`secret`] secret files'
//! permissions; [`tls`] rustls configs;
//! [`admin`] the admin API; [`metrics`] the Prometheus registry; [`sim`]
//! simulated regions for the demo and the tests; [`demo`] the embedded default.

// One audited exception: the geo database is memory-mapped (src/geo.rs).
#![deny(unsafe_code)]

pub mod accounting;
pub mod activity;
pub mod admin;
pub mod admit;
pub mod auth;
pub mod authority;
pub mod blame;
pub mod budget;
pub mod capacity;
pub mod check;
pub mod client_body;
pub mod config;
pub mod control;
pub mod deadline;
pub mod demo;
pub mod descriptors;
pub mod drains;
pub mod drill;
pub mod explain;
pub mod facts;
pub mod fleet;
pub mod forward;
pub mod geo;
pub mod h2_guard;
pub mod head_guard;
pub mod headers;
pub mod health;
pub mod http_conn;
pub mod identity;
mod io_delegate;
pub mod launch;
pub mod log_limit;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod path;
pub mod policy;
pub mod pool;
pub mod pressure;
pub mod proxy;
pub mod proxy_protocol;
pub mod regions;
pub mod request_id;
pub mod residency;
pub mod secret;
pub mod select;
pub mod server;
pub mod signing;
pub mod sim;
pub mod snapshot;
pub mod table;
pub mod tls;

use arc_swap::ArcSwap;

/// The commit this binary was built from (`git rev-parse`, when the build had
/// a repository), for `--version` and `georouter_build_info`.
pub const COMMIT: &str = env!("GEOROUTER_COMMIT");

use config::Config;
use regions::RegionStates;
use snapshot::Snapshot;
use table::{RoutingTable, TableError};

/// What the data plane shares: immutable snapshots, swapped whole.
#[derive(Debug)]
pub struct State {
    pub metrics: metrics::Metrics,
    pub config: ArcSwap<Config>,
    /// The routing table and its region states, one generation at a time.
    pub routing: ArcSwap<Snapshot>,
    /// Wakes the controller when traffic trips a region's passive detection.
    pub wake: tokio::sync::Notify,
    /// `requests_total{region="none"}`: answers the router gave itself.
    pub unrouted: accounting::CodeCounters,
}

impl State {
    pub fn new(config: Config) -> Result<State, TableError> {
        let table = RoutingTable::compile(&config)?;
        let metrics = metrics::Metrics::new();
        let states = RegionStates::all_serving(&table);
        let accounts = accounting::Accounts::fresh(&table, &metrics);
        Ok(State {
            config: ArcSwap::from_pointee(config),
            routing: ArcSwap::from_pointee(Snapshot {
                table: std::sync::Arc::new(table),
                states,
                accounts,
            }),
            wake: tokio::sync::Notify::new(),
            unrouted: accounting::CodeCounters::new(
                &metrics.requests,
                config::RegionName::new("none"),
            ),
            metrics,
        })
    }
}
