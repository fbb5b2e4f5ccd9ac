//! The per-request service: one request through its stages (at the door, the
//! decision chain identity -> geo -> policy -> select, the upstream request,
//! forwarding, the response), every error mapped to a response in one place.

mod access_log;
pub(crate) mod admit;
pub(crate) mod authority;
pub(crate) mod budget;
pub(crate) mod client_body;
mod context;
pub(crate) mod deadline;
mod error;
pub(crate) mod forward;
pub(crate) mod headers;
pub mod pool;
pub(crate) mod request_id;
mod respond;
mod upstream;

use context::Context;
pub use error::ProxyError;

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::config::RegionName;
use crate::edge::activity::{Activity, Streaming};
use crate::edge::h3::body::H3Body;
use crate::edge::head_guard::Flaw;
use crate::edge::server::{self, Opened};
use crate::path::{self, Ambiguity, PathError};
use crate::proxy::admit::{Admitted, Refused};
use crate::proxy::authority::Host;
use crate::proxy::client_body::Source;
use crate::proxy::deadline::TimerSlot;
use crate::proxy::forward::ForwardError;
use crate::proxy::pool::PooledBody;
use crate::proxy::request_id::RequestId;
use crate::routing::facts::{RequestFacts, Sources};
use crate::routing::identity::{self, ClientIp, PeerAddr};
use crate::routing::policy::{self, Candidates, Refusal};
use crate::routing::snapshot::Snapshot;
use crate::routing::table::RequestSettings;
use crate::routing::State;

/// What a proxied response carries: the upstream's body, streamed, or a short
/// text the router wrote itself.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

/// One accepted connection, shared by its requests.
#[derive(Debug)]
pub struct Connection {
    pub state: Arc<State>,
    pub peer: PeerAddr,
    /// The peer IP as a header value, rendered once per connection.
    pub peer_header: HeaderValue,
    pub tls: bool,
    pub activity: Arc<Activity>,
    /// What the HTTP/1.1 framing guard found, per request.
    pub verdicts: Arc<crate::edge::head_guard::Verdicts>,
    /// The response deadline its requests reuse.
    pub timer: TimerSlot,
    /// TLS: the names the certificate this connection was given covers.
    pub cert_names: Option<Arc<[Box<str>]>>,
    /// `Alt-Svc` for responses: the listener also serves HTTP/3.
    pub alt_svc: Option<HeaderValue>,
}

impl Connection {
    /// The proxy's side of a connection the edge opened.
    pub fn new(state: Arc<State>, opened: Opened) -> Self {
        let peer = PeerAddr(opened.peer);
        Self {
            state,
            peer,
            peer_header: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP is a header value"),
            tls: opened.tls,
            activity: opened.activity,
            verdicts: opened.verdicts,
            timer: TimerSlot::default(),
            cert_names: opened.cert_names,
            alt_svc: opened.alt_svc,
        }
    }

    fn proto(&self) -> HeaderValue {
        HeaderValue::from_static(if self.tls { "https" } else { "http" })
    }
}

/// The proxy as the edge serves it: a [`Service`] per connection, and each
/// worker's pool reaper and allocator purge beside the listeners.
#[derive(Debug, Clone)]
pub struct App {
    pub state: Arc<State>,
}

impl server::App for App {
    type Body = ProxyBody;
    type Service = Service;

    fn service(&self, opened: Opened) -> Service {
        Service(Arc::new(Connection::new(self.state.clone(), opened)))
    }

    fn worker_tasks(&self, shutdown: &server::Shutdown) -> Vec<server::WorkerTask> {
        vec![
            // This worker's upstream pool: idle connections closed on time.
            Box::pin(crate::proxy::pool::reap(shutdown.clone())),
            // This worker's allocator heap: freed pages back to the system.
            Box::pin(crate::memory::purge_loop(shutdown.clone())),
        ]
    }
}

/// The requests of one connection, each through [`handle`].
#[derive(Debug, Clone)]
pub struct Service(Arc<Connection>);

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    // Boxed: hyper keeps a slot of the service future's size for every
    // connection, idle ones too (HTTP/1.1); a box makes that slot a pointer, and
    // the request's whole future (a few KiB) exists only while it runs. HTTP/2
    // moves a stream's future several times while spawning its task: a box
    // moves as a pointer.
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        Box::pin(handle(self.0.clone(), req.map(Source::Hyper)))
    }
}

/// HTTP/3 requests take the same path; only their body comes from elsewhere.
impl hyper::service::Service<Request<H3Body>> for Service {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>,
    >;

    fn call(&self, req: Request<H3Body>) -> Self::Future {
        Box::pin(handle(self.0.clone(), req.map(Source::from)))
    }
}

/// The hyper service entry point for one request.
pub async fn handle(
    conn: Arc<Connection>,
    req: Request<Source>,
) -> Result<Response<ProxyBody>, Infallible> {
    let active = conn.activity.begin();
    if req.version() == Version::HTTP_2 {
        conn.activity.saw_http2();
    }
    conn.state.metrics.protocol_requests[crate::metrics::protocol_of(req.version())].inc();
    let started = Instant::now();
    let http1 = req.version() < Version::HTTP_2;
    let snapshot = conn.state.routing.load_full();
    let mut ctx = Context::new(&conn, &snapshot, &req, started);
    let flaw = conn.verdicts.of(active.index());
    let scan = admit::scan(req.headers());
    let request_id = request_id::of(scan.request_id);
    // The Host header as the scan found it: no second lookup for the route or
    // the upstream request.
    let host_header = scan.host().cloned();
    let admitted = admit::check(
        &scan,
        req.method(),
        req.version(),
        req.uri(),
        snapshot.table.settings.allow_trace,
    );
    let made = match request_id {
        RequestId::Made(n) => Some(n),
        RequestId::Given(_) => None,
    };
    let mut resp = match proxy(
        &conn,
        &snapshot,
        req,
        started,
        Door {
            flaw,
            admitted,
            host_header,
        },
        made,
        &mut ctx,
    )
    .await
    {
        Ok((resp, served)) => {
            ctx.served(served);
            resp
        }
        Err(e) => {
            conn.state.unrouted.inc(e.status());
            // The router's own faults are logged where they happen, rate-limited.
            if !ctx.logging()
                && e.status().is_server_error()
                && !matches!(e, ProxyError::Local { .. })
            {
                // Clients can cause these at will: at most one line a second.
                static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
                if let Some(suppressed) = LOG.allow() {
                    tracing::warn!(peer = %conn.peer.0, %request_id, error = %e, suppressed, "request failed");
                }
            }
            ctx.failed(&e);
            e.into_response(http1, &request_id)
        }
    };
    if let Some(alt_svc) = &conn.alt_svc {
        resp.headers_mut()
            .insert(http::header::ALT_SVC, alt_svc.clone());
    }
    ctx.log(&conn, &snapshot, &mut resp, &request_id);
    Ok(resp)
}

/// Replaces a request target's path, keeping its query (and, in absolute form,
/// scheme and authority).
fn set_path(uri: &mut http::Uri, path: &str) -> Result<(), ProxyError> {
    let with_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(
        with_query
            .parse()
            .map_err(|_| ProxyError::BadPath(PathError::NotAbsolute))?,
    );
    *uri = http::Uri::from_parts(parts).map_err(|_| ProxyError::BadPath(PathError::NotAbsolute))?;
    Ok(())
}

/// The request's host, lower case and without port, in `buf` when it had to be
/// lowered (no allocation either way). `host` is where admission found it,
/// `header` the Host header.
fn request_host<'b>(
    req: &'b Request<Source>,
    host: Option<Host>,
    header: Option<&'b HeaderValue>,
    buf: &'b mut [u8; 256],
) -> &'b str {
    let Some(host) = host else { return "" };
    // The target's authority (absolute form, HTTP/2 `:authority`) wins, as in
    // admission, which made sure that Host agrees with it.
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => header.and_then(|h| h.to_str().ok()).unwrap_or(""),
    };
    host.of(raw, buf)
}

/// What was found at the door, before anything was decided.
struct Door {
    /// The HTTP/1.1 framing guard's verdict.
    flaw: Option<Flaw>,
    admitted: Result<Admitted, Refused>,
    /// The request's Host header, if it has one.
    host_header: Option<HeaderValue>,
}

/// One request through its stages, each with one job: at the door ([`check`]),
/// the decision ([`decide`]), the upstream request ([`upstream::build`]),
/// forwarding ([`forward::forward`], its failure read by [`forward_error`]) and
/// the response ([`respond`]). Every stage returns a
/// [`ProxyError`]; [`handle`] maps it to the answer, once.
async fn proxy<'s>(
    conn: &Arc<Connection>,
    snapshot: &'s Snapshot,
    mut req: Request<Source>,
    started: Instant,
    door: Door,
    made_id: Option<u64>,
    ctx: &mut Context<'s>,
) -> Result<(Response<ProxyBody>, Served), ProxyError> {
    let settings = &snapshot.table.settings;
    budget::deposit(&settings.retry, started);
    let (admitted, ambiguity) = check(&mut req, settings, door.flaw, door.admitted)?;
    let host_header = door.host_header;
    let plan = decide(
        conn,
        snapshot,
        &req,
        &admitted,
        host_header.as_ref(),
        ambiguity,
        ctx,
    )?;
    let upstream = upstream::build(conn, snapshot, req, &admitted, host_header, &plan, made_id);
    let attempt = forward::Attempt {
        table: &snapshot.table,
        accounts: &snapshot.accounts,
        state: &conn.state,
        timer: &conn.timer,
        body: upstream.progress.as_deref(),
        client: plan.client,
    };
    if ctx.logging() {
        ctx.body_in = upstream.progress.clone();
    }
    let forwarded = forward::forward(
        &attempt,
        &plan.regions,
        upstream.request,
        upstream.replayable,
        &mut ctx.trail,
    )
    .await
    .map_err(|e| forward_error(conn, snapshot, &plan, e))?;
    let region = forwarded.region;
    if let Some(account) = snapshot.accounts.account(&snapshot.table, region.id) {
        account.response(forwarded.response.status(), started.elapsed());
    }
    respond::count_failover(
        conn,
        snapshot,
        &plan.decision,
        region,
        forwarded.first_failure,
    );
    let mut response = respond::respond(
        forwarded.response,
        region,
        settings.region_header,
        upstream.client_upgrade,
        Streaming::new(conn.activity.clone()),
    )?;
    respond::pin_resident(snapshot, &plan.decision, plan.https, &mut response);
    Ok((
        response,
        Served {
            region: region.name.clone(),
            endpoint: forwarded.endpoint,
            client: plan.client.0,
            reason: plan.reason,
        },
    ))
}

/// At the door: the framing guard's verdict and admission's, the path read
/// once (the route matcher, the fence and the region see only that reading),
/// the size limits. Nothing is decided yet; an ambiguous spelling that the
/// reading decoded is returned for the route to accept or refuse.
fn check(
    req: &mut Request<Source>,
    settings: &RequestSettings,
    flaw: Option<Flaw>,
    admitted: Result<Admitted, Refused>,
) -> Result<(Admitted, Option<Ambiguity>), ProxyError> {
    if let Some(flaw) = flaw {
        return Err(ProxyError::Refused(match flaw {
            Flaw::LengthAndChunked => Refused::LengthAndChunked,
            Flaw::RepeatedLength => Refused::RepeatedLength,
            Flaw::BareLineFeed => Refused::BareLineFeed,
        }));
    }
    let admitted = admitted?;
    // RFC 8470 5.1: early data may be replayed; only what is safe to repeat.
    if req.body().is_early() && !req.method().is_safe() {
        return Err(ProxyError::TooEarly);
    }
    let reading = path::read(req.uri().path())?;
    let ambiguity = reading.ambiguity;
    if let Cow::Owned(normal) = reading.path {
        set_path(req.uri_mut(), &normal)?;
    }
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > settings.max_uri_bytes {
        return Err(ProxyError::UriTooLong {
            limit: settings.max_uri_bytes,
        });
    }
    if req.body().size_hint().lower() > settings.max_body_bytes {
        return Err(ProxyError::BodyTooLarge {
            limit: settings.max_body_bytes,
        });
    }
    Ok((admitted, ambiguity))
}

/// What the decision stage settled: the policy's decision and the regions to
/// try, in order.
struct Plan<'t> {
    decision: policy::Decision<'t>,
    regions: Candidates,
    client: ClientIp,
    /// The peer is a trusted proxy.
    peer_trusted: bool,
    /// The client reached us over TLS (this listener's, or a trusted proxy's).
    https: bool,
    /// Why this region (route, rule, pin); only when the access log is on.
    reason: Option<String>,
}

/// The decision: the request's facts, the policy, the selection over the region
/// states; pure, over the snapshot this request started with. Refusals (no
/// route, no serving region, residency) end here.
fn decide<'t>(
    conn: &Connection,
    snapshot: &'t Snapshot,
    req: &Request<Source>,
    admitted: &Admitted,
    host_header: Option<&HeaderValue>,
    ambiguity: Option<Ambiguity>,
    ctx: &mut Context<'t>,
) -> Result<Plan<'t>, ProxyError> {
    let (table, states) = (&*snapshot.table, &snapshot.states);
    let settings = &table.settings;
    let peer_trusted = settings.trusted_proxies.contains(conn.peer.ip());
    let client = identity::client_ip(conn.peer, req.headers(), &settings.trusted_proxies);
    let mut host_buf = [0u8; 256];
    let host = request_host(req, admitted.host, host_header, &mut host_buf);
    // A connection's certificate vouches for its names only (RFC 9110 7.4).
    if let Some(names) = &conn.cert_names {
        if !host.is_empty() && !crate::tls::covers(names, host) {
            return Err(ProxyError::Misdirected);
        }
    }
    let facts = RequestFacts::from_request(
        table,
        Sources {
            client,
            host,
            path: req.uri().path(),
            ambiguity,
            method: req.method(),
            headers: req.headers(),
            peer_trusted,
        },
    );
    if facts.geo.error {
        conn.state.metrics.geo_lookup_errors.inc();
    }
    if facts.cookie_conflict {
        conn.state.metrics.cookie_conflicts.inc();
    }
    let planned = crate::routing::plan::plan(table, states, &facts).map_err(|r| match r {
        Refusal::NoRoute => ProxyError::NoRoute,
        Refusal::GeoUnreadable => ProxyError::GeoUnreadable,
        Refusal::AmbiguousPath(a) => ProxyError::BadPath(PathError::Ambiguous(a)),
    })?;
    let crate::routing::plan::Plan {
        decision,
        regions,
        panicked,
    } = planned;
    let route = decision.route;
    ctx.route = Some(&route.name);
    let reason = settings
        .access_log
        .then(|| crate::routing::explain::short_reason(table, &decision));
    if panicked {
        // Every request of the route while it lasts: at most a line a second.
        static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
        if let Some(suppressed) = LOG.allow() {
            tracing::warn!(route = %route.name, suppressed, "panic mode: no candidate is healthy, sending to unhealthy ones");
        }
    }
    if regions.is_empty() {
        return Err(match decision.pin {
            Some(pin) if decision.fenced => refuse_resident(
                conn,
                snapshot,
                pin,
                client,
                "no serving region inside the jurisdiction",
            ),
            _ => ProxyError::NoServingRegion {
                route: route.name.clone(),
            },
        });
    }
    // Over TLS, here or (a trusted proxy says) in front: cookies are Secure.
    let https = conn.tls
        || (peer_trusted
            && req
                .headers()
                .get(crate::proxy::headers::X_FORWARDED_PROTO)
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https")));
    Ok(Plan {
        decision,
        regions,
        client,
        peer_trusted,
        https,
        reason,
    })
}

/// What forwarding's failure is for the client: a fenced resident refused
/// when every region of the jurisdiction is unreachable, the client's own body
/// (no region blamed), or the region's failure.
fn forward_error(
    conn: &Connection,
    snapshot: &Snapshot,
    plan: &Plan<'_>,
    e: ForwardError,
) -> ProxyError {
    let decision = &plan.decision;
    match (e, decision.pin.filter(|_| decision.fenced)) {
        (ForwardError::Connect { .. }, Some(pin)) => refuse_resident(
            conn,
            snapshot,
            pin,
            plan.client,
            "every region inside the jurisdiction is unreachable",
        ),
        (ForwardError::Shed { reason }, _) => {
            snapshot.accounts.counters().shed(
                &conn.state.metrics,
                &snapshot.table,
                plan.decision.route,
                reason,
            );
            ProxyError::Shed { reason }
        }
        (ForwardError::Client { fault }, _) => {
            conn.state.metrics.client_errors[fault as usize].inc();
            tracing::debug!(client = %plan.client.0, fault = fault.as_str(), "the client's request body failed; no region is blamed");
            ProxyError::ClientBody { fault }
        }
        (e, _) => e.into(),
    }
}

/// A resident refused: counted, logged (rate-limited), and the error to answer.
fn refuse_resident(
    conn: &Connection,
    snapshot: &Snapshot,
    pin: policy::Pin,
    client: ClientIp,
    why: &'static str,
) -> ProxyError {
    let table = &snapshot.table;
    let jurisdiction = table.jurisdiction(pin.jurisdiction).name.clone();
    log_refusal(&jurisdiction, client.0, why);
    snapshot
        .accounts
        .counters()
        .refusal(&conn.state.metrics, table, pin.jurisdiction);
    ProxyError::ResidencyRefused { jurisdiction }
}

/// A residency refusal, at most one line a second (each is counted in
/// `georouter_residency_refusals_total`): a client can cause them at will.
fn log_refusal(jurisdiction: &str, client: std::net::IpAddr, why: &'static str) {
    static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
    if let Some(suppressed) = LOG.allow() {
        tracing::warn!(%jurisdiction, %client, why, suppressed, "residency refusal");
    }
}

/// What the access log says of a proxied request.
struct Served {
    region: RegionName,
    /// The endpoint of `region` that answered.
    endpoint: usize,
    client: std::net::IpAddr,
    /// Why this region (route, rule, pin); only when the access log is on.
    reason: Option<String>,
}
