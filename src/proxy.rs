//! The per-request service: checks the request, runs the decision chain
//! (identity -> geo -> policy -> select), forwards, and maps every error to a
//! response in one place.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::accounting::{FailoverReason, FailureKind};
use crate::activity::{Activity, Streaming};
use crate::admit::{self, Admitted, Refused};
use crate::authority::Host;
use crate::blame::{ClientFault, LocalFault};
use crate::budget;
use crate::client_body::ClientBody;
use crate::config::RegionName;
use crate::deadline::TimerSlot;
use crate::facts::{PinSource, RequestFacts, Sources};
use crate::forward::{self, ForwardError};
use crate::head_guard::Flaw;
use crate::headers;
use crate::identity::{self, PeerAddr};
use crate::path::{self, PathError};
use crate::policy::{self, Refusal};
use crate::pool::PooledBody;
use crate::request_id::{self, RequestId};
use crate::select;
use crate::snapshot::Snapshot;
use crate::table::RegionId;
use crate::State;

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
    pub verdicts: Arc<crate::head_guard::Verdicts>,
    /// The response deadline its requests reuse.
    pub timer: TimerSlot,
}

impl Connection {
    pub fn new(state: Arc<State>, peer: PeerAddr, tls: bool) -> Self {
        let ip = peer.ip();
        Self {
            state,
            peer,
            peer_header: HeaderValue::from_str(&ip.to_string()).expect("an IP is a header value"),
            tls,
            activity: Arc::new(Activity::new()),
            verdicts: Arc::default(),
            timer: TimerSlot::default(),
        }
    }

    fn proto(&self) -> HeaderValue {
        HeaderValue::from_static(if self.tls { "https" } else { "http" })
    }
}

/// Everything the router itself answers instead of an upstream. Each is a fact.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("bad request: {0}")]
    BadPath(#[from] PathError),
    #[error("request URI longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("no route for this host and path")]
    NoRoute,
    #[error("the client's location could not be determined; data residency forbids guessing (try again later)")]
    GeoUnreadable,
    #[error("no serving region for route {route}")]
    NoServingRegion { route: Box<str> },
    #[error("no serving region in jurisdiction {jurisdiction}; data residency forbids serving this request from another region")]
    ResidencyRefused { jurisdiction: Box<str> },
    #[error("region {region} unreachable: {detail}")]
    UpstreamConnect { region: RegionName, detail: String },
    #[error("region {region} did not answer within {timeout:?}")]
    UpstreamTimeout {
        region: RegionName,
        timeout: std::time::Duration,
    },
    #[error("region {region} failed before answering: {detail}")]
    UpstreamFailed { region: RegionName, detail: String },
    #[error("{}", client_fault_text(*.fault))]
    ClientBody { fault: ClientFault },
    #[error("the router is short of its own resources ({}); try again shortly", .fault.as_str())]
    Local { fault: LocalFault },
}

fn client_fault_text(fault: ClientFault) -> &'static str {
    match fault {
        ClientFault::MalformedBody => "bad request: the request body is malformed",
        ClientFault::Gone => "bad request: the request body ended early",
        ClientFault::BodyTimeout => "request timeout: the request body stalled",
    }
}

impl ProxyError {
    /// The one mapping from router error to HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Refused(r) => r.status(),
            ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoServingRegion { .. }
            | ProxyError::ResidencyRefused { .. }
            | ProxyError::GeoUnreadable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientBody { fault } => match fault {
                ClientFault::MalformedBody | ClientFault::Gone => StatusCode::BAD_REQUEST,
                ClientFault::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            },
            ProxyError::Local { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Seconds a client should wait before retrying, where waiting helps.
    fn retry_after(&self) -> Option<&'static str> {
        match self {
            ProxyError::NoServingRegion { .. }
            | ProxyError::ResidencyRefused { .. }
            | ProxyError::GeoUnreadable => Some("5"),
            ProxyError::Local { .. } => Some("1"),
            _ => None,
        }
    }

    /// Whether the client connection must close after this answer: the request
    /// body's framing or state is in doubt.
    fn closes(&self) -> bool {
        match self {
            ProxyError::Refused(r) => r.closes(),
            ProxyError::ClientBody { .. } => true,
            _ => false,
        }
    }

    /// What the client is told: what happened, never an internal address or
    /// an upstream's error text (those go to the log).
    fn public_text(&self) -> String {
        match self {
            ProxyError::UpstreamConnect { region, .. } => format!("region {region} is unreachable"),
            ProxyError::UpstreamFailed { region, .. } => {
                format!("region {region} failed before answering")
            }
            other => other.to_string(),
        }
    }

    /// The response; `http1` says the client speaks HTTP/1.x (where a refusal
    /// that puts the framing in doubt closes the connection).
    pub fn into_response(self, http1: bool, request_id: &RequestId) -> Response<ProxyBody> {
        let text = format!("{}\nrequest id: {request_id}\n", self.public_text());
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(text))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(secs) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        h.insert(request_id::X_REQUEST_ID, request_id.header());
        if http1 && self.closes() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// The hyper service entry point for one request.
pub async fn handle(
    conn: Arc<Connection>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let active = conn.activity.begin();
    if req.version() == Version::HTTP_2 {
        conn.activity.saw_http2();
    }
    let started = Instant::now();
    let http1 = req.version() != Version::HTTP_2;
    let snapshot = conn.state.routing.load_full();
    let log = snapshot.table.settings.access_log.then(|| {
        let head = (req.method().clone(), req.uri().clone(), req.version());
        (started, head)
    });
    // Boxed: the proxying future is a few KiB, and HTTP/2 moves a stream's whole
    // future several times while spawning its task; a box is moved as a pointer.
    let flaw = conn.verdicts.of(active.index());
    let scan = admit::scan(req.headers());
    let request_id = request_id::of(scan.request_id);
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
    let (resp, served, error) = match Box::pin(proxy(
        &conn,
        &snapshot,
        req,
        started,
        (flaw, admitted),
        made,
    ))
    .await
    {
        Ok((resp, served)) => (resp, Some(served), None),
        Err(e) => {
            conn.state.unrouted.inc(e.status());
            // The router's own faults are logged where they happen, rate-limited.
            if log.is_none()
                && e.status().is_server_error()
                && !matches!(e, ProxyError::Local { .. })
            {
                // Clients can cause these at will: at most one line a second.
                static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
                if let Some(suppressed) = LOG.allow() {
                    tracing::warn!(peer = %conn.peer.0, %request_id, error = %e, suppressed, "request failed");
                }
            }
            let text = log.is_some().then(|| e.to_string());
            (e.into_response(http1, &request_id), None, text)
        }
    };
    if let Some((started, (method, uri, version))) = log {
        let (region, why) = match &served {
            Some(s) => (s.region.as_str(), s.reason.as_deref().unwrap_or("")),
            None => ("-", error.as_deref().unwrap_or("")),
        };
        tracing::info!(
            target: "georouter::access",
            peer = %conn.peer.0,
            client = %served.as_ref().map_or(conn.peer.ip(), |s| s.client),
            method = %method,
            uri = %uri,
            version = ?version,
            status = resp.status().as_u16(),
            region,
            why,
            %request_id,
            micros = started.elapsed().as_micros() as u64,
        );
    }
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

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The request's host, lower case and without port, in `buf` when it had to be
/// lowered (no allocation either way). `host` is where admission found it.
fn request_host<'b>(
    req: &'b Request<Incoming>,
    host: Option<Host>,
    buf: &'b mut [u8; 256],
) -> &'b str {
    let Some(host) = host else { return "" };
    // The target's authority (absolute form, HTTP/2 `:authority`) wins, as in
    // admission, which made sure that Host agrees with it.
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    };
    host.of(raw, buf)
}

async fn proxy(
    conn: &Arc<Connection>,
    snapshot: &Snapshot,
    mut req: Request<Incoming>,
    started: Instant,
    (flaw, admitted): (Option<Flaw>, Result<Admitted, Refused>),
    made_id: Option<u64>,
) -> Result<(Response<ProxyBody>, Served), ProxyError> {
    let (table, states, accounts) = (&*snapshot.table, &snapshot.states, &snapshot.accounts);
    let settings = &table.settings;
    budget::deposit(&settings.retry);
    if let Some(flaw) = flaw {
        return Err(ProxyError::Refused(match flaw {
            Flaw::LengthAndChunked => Refused::LengthAndChunked,
            Flaw::RepeatedLength => Refused::RepeatedLength,
            Flaw::BareLineFeed => Refused::BareLineFeed,
        }));
    }
    let admitted = admitted?;
    if let Cow::Owned(normal) = path::normalize(req.uri().path(), settings.reject_encoded_slashes)?
    {
        // The route matcher and the region see the normalised path only.
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

    // The decision: pure, over the snapshots this request started with.
    let peer_trusted = settings.trusted_proxies.contains(conn.peer.ip());
    let client = identity::client_ip(conn.peer, req.headers(), &settings.trusted_proxies);
    let mut host_buf = [0u8; 256];
    let facts = RequestFacts::from_request(
        table,
        Sources {
            client,
            host: request_host(&req, admitted.host, &mut host_buf),
            path: req.uri().path(),
            method: req.method(),
            headers: req.headers(),
            peer_trusted,
        },
    );
    if facts.geo.error {
        conn.state.metrics.geo_lookup_errors.inc();
    }
    let decision = policy::decide(table, &facts).map_err(|r| match r {
        Refusal::NoRoute => ProxyError::NoRoute,
        Refusal::GeoUnreadable => ProxyError::GeoUnreadable,
    })?;
    let route = decision.route;
    let reason = settings
        .access_log
        .then(|| crate::explain::short_reason(table, &decision));
    // A ramp admits clients by a stable hash, so each moves back once.
    let mut regions = select::serving(table, states, route.steering, &decision.candidates, |r| {
        select::client_place(policy::client_hash(client), r)
    });
    if regions.is_empty() && route.panic_mode && !decision.fenced {
        regions = select::panic(table, states, &decision.candidates);
        if !regions.is_empty() {
            // Every request of the route while it lasts: at most a line a second.
            static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
            if let Some(suppressed) = LOG.allow() {
                tracing::warn!(route = %route.name, suppressed, "panic mode: no candidate is healthy, sending to unhealthy ones");
            }
        }
    }
    if regions.is_empty() {
        return Err(match decision.pin {
            Some(pin) if decision.fenced => {
                let jurisdiction = table.jurisdiction(pin.jurisdiction).name.clone();
                log_refusal(
                    &jurisdiction,
                    client.0,
                    "no serving region inside the jurisdiction",
                );
                accounts
                    .counters()
                    .refusal(&conn.state.metrics, table, pin.jurisdiction);
                ProxyError::ResidencyRefused { jurisdiction }
            }
            _ => ProxyError::NoServingRegion {
                route: route.name.clone(),
            },
        });
    }
    if admitted.owned {
        // x-georouter-* is the router's to set, never a client's.
        admit::strip_owned(req.headers_mut());
    }
    if !peer_trusted && settings.replace_forwarded {
        // What an untrusted client says of earlier hops is not passed on.
        headers::strip_forwarded(req.headers_mut());
    }
    if !peer_trusted {
        if let Some(name) = &table.residency_header {
            // A client may not choose its own jurisdiction.
            req.headers_mut().remove(name);
        }
    }

    // The upstream request head, built once.
    // Only the protocols the route allows pass; h2c and the rest are stripped
    // with the hop-by-hop headers, never tunnelled.
    let upgrade = if admitted.upgrade && req.version() == Version::HTTP_11 {
        headers::upgrade_protocol(req.headers()).filter(|p| route.allows_upgrade(p.as_bytes()))
    } else {
        None
    };
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // HTTP/1.1 carries Host; HTTP/2 carries :authority instead.
    let host_header = parts.headers.get(header::HOST).cloned();
    let host_in_map = host_header.is_some();
    let original_host = host_header.or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    headers::strip_hop_by_hop(&mut parts.headers);
    // Room for what the router adds (X-Forwarded-*, x-request-id, Upgrade): one
    // growth of the map at most, not one per insert.
    parts.headers.reserve(5);
    if let Some(proto) = upgrade.clone() {
        headers::set_upgrade(&mut parts.headers, proto);
    }
    if let Some(n) = made_id {
        parts
            .headers
            .insert(request_id::X_REQUEST_ID, RequestId::Made(n).header());
    }
    headers::set_forwarded(
        &mut parts.headers,
        &conn.peer_header,
        &conn.proto(),
        original_host.as_ref(),
    );
    match (original_host, settings.preserve_host) {
        (Some(h), true) if !host_in_map => {
            parts.headers.insert(header::HOST, h);
        }
        (_, false) if host_in_map => {
            parts.headers.remove(header::HOST);
        }
        _ => {}
    }
    // A request without a body can be sent again as long as nothing came back.
    let replayable = body.is_end_stream() && is_idempotent(&parts.method);
    let (body, progress) = if body.is_end_stream() {
        (Either::Right(Empty::new()), None)
    } else {
        let limit = usize::try_from(settings.max_body_bytes).unwrap_or(usize::MAX);
        let (body, progress) = ClientBody::new(body, settings.upstream.request_body_timeout);
        (Either::Left(Limited::new(body, limit)), Some(progress))
    };
    let req = Request::from_parts(parts, body);
    let attempt = forward::Attempt {
        table,
        accounts,
        state: &conn.state,
        timer: &conn.timer,
        body: progress.as_deref(),
    };
    let forwarded = forward::forward(&attempt, &regions, req, replayable)
        .await
        .map_err(|e| match (e, decision.pin.filter(|_| decision.fenced)) {
            // Every region of the jurisdiction is unreachable: say so, and that
            // the request was not sent anywhere else.
            (ForwardError::Connect { .. }, Some(pin)) => {
                let jurisdiction = table.jurisdiction(pin.jurisdiction).name.clone();
                log_refusal(&jurisdiction, client.0, "every region inside the jurisdiction is unreachable");
                accounts
                    .counters()
                    .refusal(&conn.state.metrics, table, pin.jurisdiction);
                ProxyError::ResidencyRefused { jurisdiction }
            }
            (ForwardError::Client { fault }, _) => {
                conn.state.metrics.client_errors[fault as usize].inc();
                tracing::debug!(client = %client.0, fault = fault.as_str(), "the client's request body failed; no region is blamed");
                ProxyError::ClientBody { fault }
            }
            (e, _) => e.into(),
        })?;
    let region = forwarded.region;
    let mut forwarded = forwarded;
    forwarded
        .response
        .body_mut()
        .hold(Streaming::new(conn.activity.clone()));
    if let Some(account) = accounts.account(table, region.id) {
        account.response(forwarded.response.status(), started.elapsed());
    }
    count_failover(conn, snapshot, &decision, region, forwarded.first_failure);
    let mut response = respond(
        forwarded.response,
        region,
        settings.region_header,
        client_upgrade,
    );
    // Pin a resident who has no valid cookie yet, so travel does not move them.
    if let (Some(signer), Some(pin)) = (&table.cookie, decision.pin) {
        if pin.source != PinSource::Cookie {
            let name = &table.jurisdiction(pin.jurisdiction).name;
            response
                .headers_mut()
                .append(header::SET_COOKIE, signer.set_cookie(name, conn.tls));
        }
    }
    Ok((
        response,
        Served {
            region: region.name.clone(),
            client: client.0,
            reason,
        },
    ))
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
    client: std::net::IpAddr,
    /// Why this region (route, rule, pin); only when the access log is on.
    reason: Option<String>,
}

/// Counts a request served elsewhere than the policy's first choice: because an
/// attempt failed, or because that region was drained or unhealthy.
fn count_failover(
    conn: &Connection,
    snapshot: &Snapshot,
    decision: &policy::Decision<'_>,
    served: &crate::table::Region,
    first_failure: Option<(RegionId, FailureKind)>,
) {
    let (from, reason) = match first_failure {
        Some((from, kind)) => (from, FailoverReason::Failed(kind)),
        None => {
            let Some(&first) = decision.candidates.first() else {
                return;
            };
            if first == served.id {
                return;
            }
            let s = snapshot.states.get(&snapshot.table, first);
            let reason = if s.drained {
                FailoverReason::Drained
            } else if !s.healthy {
                FailoverReason::Unhealthy
            } else {
                // Slow start or latency order: a choice, not a failover.
                return;
            };
            (first, reason)
        }
    };
    snapshot.accounts.counters().failover(
        &conn.state.metrics,
        &snapshot.table,
        from,
        served.id,
        reason,
    );
}

impl From<ForwardError> for ProxyError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Connect { region, source } => ProxyError::UpstreamConnect {
                region,
                detail: source.to_string(),
            },
            ForwardError::Timeout { region, timeout } => {
                ProxyError::UpstreamTimeout { region, timeout }
            }
            ForwardError::Failed { region, source } => ProxyError::UpstreamFailed {
                region,
                detail: error_chain(&source),
            },
            ForwardError::BodyTooLarge { limit } => ProxyError::BodyTooLarge { limit },
            ForwardError::Client { fault } => ProxyError::ClientBody { fault },
            ForwardError::Local { fault, .. } => ProxyError::Local { fault },
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The client's response from the upstream's: hop-by-hop headers out, region in,
/// and for a `101 Switching Protocols` the two upgraded connections spliced.
fn respond(
    mut resp: Response<PooledBody>,
    region: &crate::table::Region,
    region_header: bool,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    let switched = match client_upgrade {
        Some(client_side) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            tunnel(client_side, hyper::upgrade::on(&mut resp));
            resp.headers().get(header::UPGRADE).cloned()
        }
        _ => None,
    };
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = switched {
        headers::set_upgrade(&mut parts.headers, protocol);
    }
    if region_header {
        parts
            .headers
            .insert(headers::X_GEOROUTER_REGION, region.header_value.clone());
    }
    Response::from_parts(parts, Either::Left(body))
}

/// Splices an upgraded client connection to the upgraded upstream connection.
fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (c, u) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}
