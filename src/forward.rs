//! Upstream clients: one pooled hyper-util client pair (HTTP/1.1, HTTP/2) per region,
//! per worker thread, rebuilt when the routing table changes generation.
//!
//! Workers run one single-threaded runtime each, so a per-thread pool keeps every
//! upstream connection on the thread that uses it: no cross-thread wake-ups and an
//! uncontended pool lock.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Uri, Version};
use http_body_util::{Either, Empty, Limited};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{EndpointSpec, Protocol, UpstreamSettings};
use crate::table::{Region, RoutingTable};

/// A request body on its way upstream: the client's (with the size limit), or none.
pub type UpstreamBody = Either<Limited<Incoming>, Empty<Bytes>>;

type Connector = HttpsConnector<HttpConnector>;

struct RegionClients {
    http1: Client<Connector, UpstreamBody>,
    http2: Client<Connector, UpstreamBody>,
    /// Round-robin position over the region's endpoints (uncontended: one thread).
    next: AtomicUsize,
}

/// The clients of one thread for one routing table generation.
pub struct Upstreams {
    generation: u64,
    regions: Box<[RegionClients]>,
}

thread_local! {
    static UPSTREAMS: RefCell<Option<Arc<Upstreams>>> = const { RefCell::new(None) };
}

impl Upstreams {
    /// This thread's clients for `table`, built on first use of a new generation.
    /// Connections of the old generation close as their pools are dropped.
    pub fn for_table(table: &RoutingTable) -> Arc<Upstreams> {
        UPSTREAMS.with(|cell| {
            let mut slot = cell.borrow_mut();
            match &*slot {
                Some(u) if u.generation == table.generation() => u.clone(),
                _ => {
                    let u = Arc::new(Upstreams::build(table));
                    *slot = Some(u.clone());
                    u
                }
            }
        })
    }

    fn build(table: &RoutingTable) -> Upstreams {
        let settings = &table.settings.upstream;
        Upstreams {
            generation: table.generation(),
            regions: table
                .regions()
                .iter()
                .map(|r| RegionClients {
                    http1: client(r, settings, Protocol::Http1),
                    http2: client(r, settings, Protocol::Http2),
                    next: AtomicUsize::new(0),
                })
                .collect(),
        }
    }

    /// The next endpoint of a region, round-robin.
    pub fn endpoint<'t>(&self, region: &'t Region) -> &'t EndpointSpec {
        let c = &self.regions[usize::from(region.id.0)];
        let i = c.next.fetch_add(1, Ordering::Relaxed);
        &region.endpoints[i % region.endpoints.len()]
    }

    /// Sends a request to an endpoint of `region`; the request's URI and version
    /// must already point at that endpoint (see [`target`]).
    pub fn send(
        &self,
        region: &Region,
        protocol: Protocol,
        req: Request<UpstreamBody>,
    ) -> ResponseFuture {
        let c = &self.regions[usize::from(region.id.0)];
        match protocol {
            Protocol::Http1 => c.http1.request(req),
            Protocol::Http2 => c.http2.request(req),
        }
    }
}

/// The absolute URI and HTTP version of a request to `ep`.
pub fn target(ep: &EndpointSpec, path: Option<&PathAndQuery>) -> (Uri, Version) {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(ep.scheme.clone());
    parts.authority = Some(ep.authority.clone());
    parts.path_and_query = Some(
        path.cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    let uri = Uri::from_parts(parts).expect("scheme, authority and path are all set");
    let version = match ep.protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 => Version::HTTP_2,
    };
    (uri, version)
}

fn default_tls() -> rustls::ClientConfig {
    static DEFAULT: OnceLock<rustls::ClientConfig> = OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            crate::tls::client_config(&Default::default())
                .expect("the built-in root store is valid")
        })
        .clone()
}

fn client(
    region: &Region,
    settings: &UpstreamSettings,
    protocol: Protocol,
) -> Client<Connector, UpstreamBody> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    let tls = region.tls.as_deref().cloned().unwrap_or_else(default_tls);
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = match protocol {
        Protocol::Http1 => builder.enable_http1().wrap_connector(http),
        Protocol::Http2 => builder.enable_http2().wrap_connector(http),
    };
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_endpoint)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(protocol == Protocol::Http2);
    b.build(connector)
}
