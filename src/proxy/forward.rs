//! Forwarding one request over its serving candidates: the next region when a
//! connection cannot be had (nothing was sent), or when a replayable request
//! failed before any response; one fresh connection when a pooled one was stale.

use std::future::Future as _;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty};

use std::sync::Arc;

use crate::blame::{ClientFault, LocalFault};
use crate::config::{EndpointSpec, Protocol, RegionName};
use crate::proxy::budget;
use crate::proxy::client_body::{ClientBodyError, Progress};
use crate::proxy::deadline::{Lent, TimerSlot};
use crate::proxy::pool::{self, ConnectError, PooledBody, SendError, UpstreamBody};
use crate::routing::accounting::{Accounts, FailureKind, RegionAccount};
pub use crate::routing::capacity::ShedReason;
pub mod trail;
mod tries;

use crate::routing::capacity::{Attempted, InFlight, Passive, Queued, RegionLoad};
use crate::routing::table::{Region, RegionId, RoutingTable};
use crate::routing::State;
use trail::{Trail, Why};
use tries::Tries;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("region {region} unreachable: {source}")]
    Connect {
        region: RegionName,
        source: ConnectError,
    },
    #[error("region {region} did not answer within {timeout:?}")]
    Timeout {
        region: RegionName,
        timeout: std::time::Duration,
    },
    #[error("region {region} failed before answering: {source}")]
    Failed {
        region: RegionName,
        source: hyper::Error,
    },
    #[error("request body over {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The client's request body failed: the client's fault, not the region's.
    #[error("the request body failed: {}", .fault.as_str())]
    Client { fault: ClientFault },
    /// Every candidate was at capacity: refused fast, nobody's fault.
    #[error("every candidate region is at capacity ({})", .reason.as_str())]
    Shed { reason: ShedReason },
    /// The router's own resources ran out: nobody's fault but the router's.
    #[error("the router is out of {}: {source}", .fault.as_str())]
    Local {
        fault: LocalFault,
        source: ConnectError,
    },
}

/// The response and the region that gave it.
pub struct Forwarded<'t> {
    pub response: Response<PooledBody>,
    pub region: &'t Region,
    /// The endpoint of `region` that answered.
    pub endpoint: usize,
    /// The first attempt that failed on the way, and how.
    pub first_failure: Option<(RegionId, FailureKind)>,
}

/// Points a request at an endpoint (again, on a retry elsewhere): origin-form
/// URI for HTTP/1.1 (with the endpoint as `Host` unless the client's is
/// preserved), absolute URI
/// (`:scheme`, `:authority`) for HTTP/2, where the preserved host is
/// `:authority` and no `Host` goes along: RFC 9113 8.3.1 makes a request whose
/// `Host` differs from its `:authority` malformed.
fn retarget(req: &mut Request<UpstreamBody>, ep: &EndpointSpec, preserve_host: bool) {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match ep.protocol {
        Protocol::Http1 => {
            if !preserve_host {
                // `insert` replaces the client's Host in place: one probe.
                req.headers_mut().insert(header::HOST, ep.host.clone());
            } else if !req.headers().contains_key(header::HOST) {
                // A try at an HTTP/2 endpoint moved the host to `:authority`.
                let host = req
                    .uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                    .unwrap_or_else(|| ep.host.clone());
                req.headers_mut().insert(header::HOST, host);
            }
            *req.uri_mut() = Uri::from(path);
            *req.version_mut() = Version::HTTP_11;
        }
        Protocol::Http2 => {
            let host = req.headers_mut().remove(header::HOST);
            let authority = host
                .filter(|_| preserve_host)
                .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| ep.authority.clone());
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(ep.scheme.clone());
            parts.authority = Some(authority);
            parts.path_and_query = Some(path);
            *req.uri_mut() =
                Uri::from_parts(parts).expect("scheme, authority and path are all set");
            *req.version_mut() = Version::HTTP_2;
        }
    }
}

/// A bodiless copy of a request head, to replay it elsewhere.
fn replay_copy(req: &Request<UpstreamBody>) -> Request<UpstreamBody> {
    let mut copy = Request::new(Either::Right(Empty::new()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

fn is_body_limit(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Counts a failed attempt against its region (waking the controller when the run
/// of failures reaches the passive threshold) and remembers the first one.
fn failed(
    ctx: &Attempt<'_>,
    id: RegionId,
    kind: FailureKind,
    first: &mut Option<(RegionId, FailureKind)>,
) {
    if let Some(a) = ctx.accounts.account(ctx.table, id) {
        let s = &ctx.table.settings;
        // Nothing reached the region on a connect failure: no client caused it.
        let client =
            (kind != FailureKind::Connect).then(|| crate::routing::policy::client_hash(ctx.client));
        if a.failure(kind, s.passive_failures, client, s.min_distinct_clients) {
            ctx.state.wake.notify_one();
        }
    }
    first.get_or_insert((id, kind));
}

/// What an attempt needs besides the request.
pub struct Attempt<'a> {
    pub table: &'a RoutingTable,
    pub accounts: &'a Accounts,
    pub state: &'a State,
    /// The connection's reusable response deadline.
    pub timer: &'a TimerSlot,
    /// The request body's progress, when it has one: the region's response clock
    /// starts when the body has been handed over.
    pub body: Option<&'a Progress>,
    /// The client, for the passive detection's quorum of clients.
    pub client: crate::routing::identity::ClientIp,
}

/// Whether a response status says "this region cannot serve it right now".
fn retriable_status(s: StatusCode) -> bool {
    matches!(
        s,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// A retry of a request that a region already received: within the budget only.
fn may_retry(ctx: &Attempt<'_>, reason: FailureKind) -> bool {
    if budget::try_spend(&ctx.table.settings.retry) {
        ctx.state.metrics.retries_by_kind[reason as usize].inc();
        true
    } else {
        ctx.state.metrics.retries_refused.inc();
        false
    }
}

/// Why a try ended without a response head.
enum NoHead {
    /// None within `response_timeout` (after the body was handed over).
    Timeout,
    /// Given up on a replayable request: no head within `try_timeout` (within
    /// the retry budget), or its region left service while it waited.
    MovedOn { timed_out: bool },
}

/// Waits for the response head of one try. A request with a body is on the
/// region's clock only while the region has all the client sent (its pauses are
/// the client's, bounded by `request_body_timeout` in the body itself). A
/// replayable request (`may_move_on`) is given up after `try_timeout`, or at once
/// when its region leaves service, if the retry budget allows.
async fn response_head<F: std::future::Future>(
    ctx: &Attempt<'_>,
    timer: &mut Lent<'_>,
    mut send: std::pin::Pin<&mut F>,
    id: RegionId,
    may_move_on: bool,
    now: tokio::time::Instant,
) -> Result<F::Output, NoHead> {
    let upstream = &ctx.table.settings.upstream;
    let timeout = upstream.response_timeout;
    if let Some(progress) = ctx.body {
        loop {
            let now = tokio::time::Instant::now();
            let deadline = progress
                .region_clock()
                .map_or(now + timeout, |t| t + timeout);
            if deadline <= now {
                return Err(NoHead::Timeout);
            }
            if let Some(out) = timer.within(deadline, send.as_mut()).await {
                return Ok(out);
            }
        }
    }
    let deadline = now + timeout;
    let account = ctx.accounts.account(ctx.table, id).filter(|_| may_move_on);
    let Some(account) = account else {
        return timer.within(deadline, send).await.ok_or(NoHead::Timeout);
    };
    let try_timeout = upstream.try_timeout;
    let mut try_deadline = match try_timeout.is_zero() {
        true => deadline,
        false => (now + try_timeout).min(deadline),
    };
    let mut left = std::pin::pin!(account.left_service());
    let mut watching = true;
    loop {
        // The head, or the region leaving service; whichever comes first.
        let either = std::pin::pin!(std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(out) = send.as_mut().poll(cx) {
                return std::task::Poll::Ready(Some(out));
            }
            if watching && left.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(None);
            }
            std::task::Poll::Pending
        }));
        let timed_out = match timer.within(try_deadline, either).await {
            Some(Some(out)) => return Ok(out),
            Some(None) => false,
            None if try_deadline >= deadline => return Err(NoHead::Timeout),
            None => true,
        };
        if !timed_out {
            // Its region left service: every waiting request moves, bounded by
            // the next region's capacity, not by the retry budget.
            ctx.state.metrics.retries_by_kind[FailureKind::Timeout as usize].inc();
            return Err(NoHead::MovedOn { timed_out });
        }
        if may_retry(ctx, FailureKind::Timeout) {
            return Err(NoHead::MovedOn { timed_out });
        }
        // No budget to send it elsewhere: wait the whole response timeout here.
        watching = false;
        try_deadline = deadline;
    }
}

/// Waits in the queue of the first full candidate (`full`: a bit per candidate
/// index) until any full candidate gives a slot back, up to its queue timeout.
async fn wait_for_room(
    ctx: &Attempt<'_>,
    candidates: &[RegionId],
    full: u64,
) -> Result<(RegionId, InFlight), ShedReason> {
    let loads: Vec<(RegionId, &Arc<RegionLoad>)> = candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| full & (1 << (*i).min(63)) != 0)
        .filter_map(|(_, &id)| Some((id, &ctx.accounts.account(ctx.table, id)?.load)))
        .collect();
    let Some(first) = loads.first() else {
        return Err(ShedReason::QueueFull);
    };
    // A place in every full candidate's queue, so that each one's freed slots
    // wake this request; the first one's bounds the queue.
    let Some(_place) = first.1.enqueue() else {
        return Err(ShedReason::QueueFull);
    };
    let _others: Vec<Queued> = loads[1..].iter().filter_map(|(_, l)| l.enqueue()).collect();
    let deadline = tokio::time::Instant::now() + first.1.queue_timeout();
    loop {
        let mut waits: Vec<_> = loads.iter().map(|(_, l)| Box::pin(l.room())).collect();
        for w in &mut waits {
            w.as_mut().enable();
        }
        for (id, l) in &loads {
            if let Some(slot) = l.acquire(0) {
                return Ok((*id, slot));
            }
        }
        let woke = std::future::poll_fn(|cx| {
            for (i, w) in waits.iter_mut().enumerate() {
                if w.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(i);
                }
            }
            std::task::Poll::Pending
        });
        let Ok(i) = tokio::time::timeout_at(deadline, woke).await else {
            return Err(ShedReason::QueueTimeout);
        };
        if let Some(slot) = loads[i].1.acquire(0) {
            return Ok((loads[i].0, slot));
        }
        for (j, (id, l)) in loads.iter().enumerate() {
            if j != i {
                if let Some(slot) = l.acquire(0) {
                    // The wake-up was for another waiter of region i.
                    loads[i].1.pass_on();
                    return Ok((*id, slot));
                }
            }
        }
    }
}

/// Sends `req` to the first candidate with room that answers. A full region
/// (every endpoint at `max_in_flight`) spills over to the next candidate; when
/// every candidate is full the request waits in a short queue, then is shed
/// (never a region's fault). Within a region, endpoints are chosen by the power
/// of two choices over requests in flight. `replayable` says the request may be
/// sent again after it was sent once (idempotent, no body): after a reset before
/// any response (on a sibling endpoint, or a new connection, first), a
/// 502/503/504, `try_timeout` without a head, within the retry budget; or when
/// its region leaves service, bounded by the next region's capacity alone. A
/// request that could not be sent (no connection) moves on freely: nothing
/// reached the region. Only region faults count against a region: a client's
/// broken body and the router's own exhausted resources are returned as such.
pub async fn forward<'t>(
    ctx: &Attempt<'t>,
    candidates: &[RegionId],
    req: Request<UpstreamBody>,
    replayable: bool,
    trail: &mut Trail,
) -> Result<Forwarded<'t>, ForwardError> {
    let mut tries = Tries::new(req);
    let result = attempts(ctx, candidates, &mut tries, replayable).await;
    *trail = tries.trail;
    result
}

/// The tries of [`forward`], until one answers or none is left.
async fn attempts<'t>(
    ctx: &Attempt<'t>,
    candidates: &[RegionId],
    tries: &mut Tries,
    replayable: bool,
) -> Result<Forwarded<'t>, ForwardError> {
    let table = ctx.table;
    let timeout = table.settings.upstream.response_timeout;
    let mut timer = ctx.timer.lend();
    loop {
        let (id, acquired) = match tries.next_free(ctx, candidates) {
            Some(found) => found,
            // Every candidate left is full: once, the queue over them.
            None if tries.may_queue() => match wait_for_room(ctx, candidates, tries.full).await {
                Ok(found) => found,
                Err(reason) => return Err(ForwardError::Shed { reason }),
            },
            None => break,
        };
        tries.count_spill(ctx, candidates, id);
        let region = table.region(id);
        let account = account_of(ctx, id);
        let load = &account.load;
        let mut slot = Some(acquired);
        // Endpoints of this region already tried, a bit each.
        let mut tried: u64 = 0;
        let mut stale_retry = true;
        let mut reset_retry = true;
        while let Some(held) = slot.take() {
            let endpoint = held.endpoint();
            let bit = 1u64 << endpoint.min(63);
            let current =
                tries.request_for(&region.endpoints[endpoint], table.settings.preserve_host);
            let lease = match pool::checkout(table, region, endpoint).await {
                Ok(lease) => lease,
                Err(source) => {
                    tries.req = Some(current);
                    tried |= bit;
                    let more = tries.more_regions(candidates);
                    // The region's next endpoint, or (none) the next region.
                    slot = tries.connect_failed(ctx, id, held, tried, source, more)?;
                    continue;
                }
            };
            let reused = lease.reused;
            // A replayable request is copied before it is sent, so that a
            // reset after sending can be replayed on a sibling endpoint or
            // another region; and, while this region has reset requests in
            // the last minute, even with nowhere else to go (a lone endpoint of
            // a jurisdiction's last region during a failover), on one new
            // connection. The copy costs ~4% of a request: not paid for a
            // region that does not reset. It may move on from a hung try only
            // with somewhere else to go.
            let elsewhere = tries.more_regions(candidates) || load.endpoints.len() > 1;
            let copy =
                (replayable && (elsewhere || load.resetting())).then(|| replay_copy(&current));
            let may_move_on = copy.is_some() && elsewhere;
            let send = std::pin::pin!(lease.send(current));
            let sent_at = tokio::time::Instant::now();
            let head = if ctx.body.is_none() && !may_move_on {
                // The common case, without the extra layer: one deadline.
                timer
                    .within(sent_at + timeout, send)
                    .await
                    .ok_or(NoHead::Timeout)
            } else {
                response_head(ctx, &mut timer, send, id, may_move_on, sent_at).await
            };
            match head {
                Ok(Ok(response)) => {
                    load.answered(endpoint, sent_at.elapsed());
                    let more = tries.more_regions(candidates);
                    match tries.answered(ctx, id, endpoint, response, held, copy, more) {
                        Some(forwarded) => return Ok(forwarded),
                        None => break,
                    }
                }
                Err(NoHead::Timeout) => return Err(tries.timed_out(ctx, id, held)),
                Err(NoHead::MovedOn { timed_out }) => {
                    tried |= bit;
                    let copy = copy.filter(|_| may_move_on);
                    slot = tries.moved_on(ctx, id, held, tried, copy, timed_out);
                }
                Ok(Err(SendError {
                    error,
                    unsent: Some(back),
                })) => {
                    tries.req = Some(back);
                    if reused && stale_retry {
                        // A pooled connection that died idle: one new connection.
                        stale_retry = false;
                        slot = Some(held);
                        continue;
                    }
                    tried |= bit;
                    slot = tries.unsent(ctx, id, held, tried, error);
                }
                Ok(Err(SendError {
                    error,
                    unsent: None,
                })) => {
                    tried |= bit;
                    slot = tries.reset(ctx, id, held, tried, error, copy, &mut reset_retry)?;
                }
            }
        }
    }
    Err(tries
        .last_error
        .take()
        .expect("forward is called with at least one candidate"))
}

/// The account of a region of this attempt's table: published with it.
fn account_of<'a>(ctx: &Attempt<'a>, id: RegionId) -> &'a RegionAccount {
    ctx.accounts
        .account(ctx.table, id)
        .expect("a snapshot's accounts cover its table's regions")
}

/// A failed attempt on one endpoint: a run of them (after sending, from a
/// quorum of clients) takes it out of rotation while a sibling serves
/// (logged and counted). `sent`: the request reached the endpoint.
fn endpoint_failed(
    ctx: &Attempt<'_>,
    region: &Region,
    load: &RegionLoad,
    endpoint: usize,
    sent: bool,
) {
    if load.endpoints.len() < 2 {
        return;
    }
    let s = &ctx.table.settings;
    let passive = Passive {
        threshold: s.passive_failures,
        min_clients: s.min_distinct_clients,
        ejection: s.endpoint_ejection,
        max_ejection: s.endpoint_max_ejection,
    };
    let client = sent.then(|| crate::routing::policy::client_hash(ctx.client));
    if load.record(endpoint, Attempted::Failed, client, &passive) {
        let key = &load.endpoints[endpoint].key;
        tracing::warn!(target: "georouter::health", region = %region.name, endpoint = %key, "endpoint out of rotation: a run of failed requests while a sibling serves");
        ctx.state
            .metrics
            .regions
            .endpoint_ejections
            .with_label_values(&[region.name.as_str(), key])
            .inc();
    }
}
