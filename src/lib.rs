//! georouter: a geo-aware global traffic router, one L7 reverse proxy in front of
//! several regional clusters.
//!
//! One request, end to end:
//!
//! ```text
//! edge::server      accept TCP (PROXY protocol) or TLS, HTTP/1.1 or HTTP/2; limits, deadlines
//!   head_guard      HTTP/1.1 framing hyper folds away (CL with TE, repeated CL, bare LF)
//!   h2_guard        HTTP/2 control-frame floods, broken prefaces -> GOAWAY
//! proxy             admit (framing, authority, TRACE), path read once, URI and body size
//!   routing::facts  identity (client IP), residency claim, geo
//!   routing::plan   policy (route, rule, pin, fenced candidates) + select (regions
//!                   to try, in order; panic mode) over one snapshot
//!   proxy::forward  a slot on an endpoint with room (routing::capacity); pooled
//!                   upstream connection; retries; every failure blamed once
//! proxy             hop-by-hop headers out, x-georouter-region in; stream the body back
//! ```
//!
//! The decision is pure: it reads one immutable snapshot behind `ArcSwap`
//! ([`State::routing`]: the table, the region states and accounts made for it),
//! does no I/O and allocates nothing.
//!
//! Planes, each importing only those below it (`tests/layering.rs` holds them
//! to it):
//!
//! ```text
//! tools     check, the demo, drills, simulated regions
//! launch    composes the rest: worker threads, the edge serving the proxy, the
//!           control plane, the admin listener
//! admin     the admin API and status page
//! control   the control plane: health, drains, reloads, admin tokens, the fleet's
//!           loops; publishes each change as one snapshot
//! fleet     routers sharing drains and policy through a store (etcd)
//! proxy     the per-request service: admission, forwarding, upstream pool, retry
//!           budget, header hygiene
//! routing   what requests read and how they are decided: snapshot, table, region
//!           states, capacity, accounts, facts, policy, select, plan, explain
//! edge      listeners, TLS, PROXY protocol, framing and HTTP/2 guards, connection
//!           pressure; serves the App launch hands it, knows no proxy
//! leaves    config, geo, tls, metrics, path, drains, signing, secret, blame,
//!           log_limit, logging, memory
//! ```

// One audited exception: the geo database is memory-mapped (src/geo.rs).
#![deny(unsafe_code)]

pub mod admin;
pub mod blame;
pub mod config;
pub mod control;
pub(crate) mod drains;
pub mod edge;
pub mod fleet;
pub mod geo;
pub mod launch;
pub(crate) mod log_limit;
pub mod logging;
pub mod memory;
pub mod metrics;
pub(crate) mod path;
pub mod proxy;
pub mod routing;
pub(crate) mod secret;
pub mod signing;
pub(crate) mod tls;
pub mod tools;

/// The data plane's shared state ([`routing::State`]), for the binary and tests.
pub use routing::State;

/// The commit this binary was built from ([`metrics::COMMIT`]).
pub use metrics::COMMIT;
