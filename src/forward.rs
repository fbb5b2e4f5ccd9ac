//! Forwarding one request over its serving candidates: the next region when a
//! connection cannot be had (nothing was sent), or when a replayable request
//! failed before any response; one fresh connection when a pooled one was stale.

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty};

use crate::accounting::FailureKind;
use crate::budget;
use crate::config::{EndpointSpec, Protocol, RegionName};
use crate::deadline::TimerSlot;
use crate::pool::{self, ConnectError, PooledBody, SendError, UpstreamBody};
use crate::regions::RegionStates;
use crate::table::{Region, RegionId, RoutingTable};
use crate::State;

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
}

/// The response and the region that gave it.
pub struct Forwarded<'t> {
    pub response: Response<PooledBody>,
    pub region: &'t Region,
    /// The first attempt that failed on the way, and how.
    pub first_failure: Option<(RegionId, FailureKind)>,
}

/// Points a request at an endpoint: origin-form URI for HTTP/1.1 (with the
/// endpoint as `Host` unless the client's is preserved), absolute URI
/// (`:scheme`, `:authority`) for HTTP/2.
fn retarget(req: &mut Request<UpstreamBody>, ep: &EndpointSpec, preserve_host: bool) {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match ep.protocol {
        Protocol::Http1 => {
            *req.uri_mut() = Uri::from(path);
            *req.version_mut() = Version::HTTP_11;
            if !preserve_host || !req.headers().contains_key(header::HOST) {
                if let Ok(host) = HeaderValue::from_str(ep.authority.as_str()) {
                    req.headers_mut().insert(header::HOST, host);
                }
            }
        }
        Protocol::Http2 => {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(ep.scheme.clone());
            parts.authority = Some(ep.authority.clone());
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
    if let Some(a) = ctx.states.account(ctx.table, id) {
        if a.failure(kind, ctx.table.settings.passive_failures) {
            ctx.state.wake.notify_one();
        }
    }
    first.get_or_insert((id, kind));
}

/// What an attempt needs besides the request.
pub struct Attempt<'a> {
    pub table: &'a RoutingTable,
    pub states: &'a RegionStates,
    pub state: &'a State,
    /// The connection's reusable response deadline.
    pub timer: &'a TimerSlot,
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

/// Sends `req` to the first candidate that answers. `replayable` says the request
/// may be sent again after it was sent once (idempotent, no body): after a reset
/// before any response, or a 502/503/504, within the retry budget. A request that
/// could not be sent (no connection) moves on freely: nothing reached the region.
pub async fn forward<'t>(
    ctx: &Attempt<'t>,
    candidates: &[RegionId],
    req: Request<UpstreamBody>,
    replayable: bool,
) -> Result<Forwarded<'t>, ForwardError> {
    let table = ctx.table;
    let timeout = table.settings.upstream.response_timeout;
    let mut candidates = candidates.iter().copied().peekable();
    let mut req = Some(req);
    let mut last_error = None;
    let mut first_failure = None;
    let mut timer = ctx.timer.lend();
    while let Some(id) = candidates.next() {
        let region = table.region(id);
        let mut endpoint = pool::pick_endpoint(table, region);
        let mut endpoints_tried = 0;
        let mut stale_retry = true;
        loop {
            let mut current = req.take().expect("a request is in hand for every attempt");
            retarget(
                &mut current,
                &region.endpoints[endpoint],
                table.settings.preserve_host,
            );
            let lease = match pool::checkout(table, region, endpoint).await {
                Ok(lease) => lease,
                Err(source) => {
                    tracing::debug!(region = %region.name, error = %source, "connect failed");
                    endpoints_tried += 1;
                    if endpoints_tried < region.endpoints.len() {
                        // The region's next endpoint first: nothing was sent.
                        if let Some(a) = ctx.states.account(table, id) {
                            if a.failure(FailureKind::Connect, table.settings.passive_failures) {
                                ctx.state.wake.notify_one();
                            }
                        }
                        endpoint = (endpoint + 1) % region.endpoints.len();
                        req = Some(current);
                        continue;
                    }
                    failed(ctx, id, FailureKind::Connect, &mut first_failure);
                    if candidates.peek().is_some() {
                        ctx.state.metrics.retries_by_kind[FailureKind::Connect as usize].inc();
                    }
                    req = Some(current);
                    last_error = Some(ForwardError::Connect {
                        region: region.name.clone(),
                        source,
                    });
                    break;
                }
            };
            let reused = lease.reused;
            let copy = (replayable && candidates.peek().is_some()).then(|| replay_copy(&current));
            let deadline = tokio::time::Instant::now() + timeout;
            let send = std::pin::pin!(lease.send(current));
            match timer.within(deadline, send).await {
                Some(Ok(response)) => {
                    let status = response.status();
                    if status.is_server_error() {
                        failed(ctx, id, FailureKind::Status5xx, &mut first_failure);
                        if let Some(copy) = copy.filter(|_| retriable_status(status)) {
                            if may_retry(ctx, FailureKind::Status5xx) {
                                tracing::debug!(region = %region.name, %status, "retrying on the next region");
                                req = Some(copy);
                                last_error = None;
                                break;
                            }
                        }
                    } else if let Some(a) = ctx.states.account(table, id) {
                        a.success();
                    }
                    return Ok(Forwarded {
                        response,
                        region,
                        first_failure,
                    });
                }
                None => {
                    failed(ctx, id, FailureKind::Timeout, &mut first_failure);
                    return Err(ForwardError::Timeout {
                        region: region.name.clone(),
                        timeout,
                    });
                }
                Some(Err(SendError {
                    error,
                    unsent: Some(back),
                })) => {
                    req = Some(back);
                    if reused && stale_retry {
                        // A pooled connection that died idle: one new connection.
                        stale_retry = false;
                        continue;
                    }
                    failed(ctx, id, FailureKind::Connect, &mut first_failure);
                    last_error = Some(ForwardError::Failed {
                        region: region.name.clone(),
                        source: error,
                    });
                    break;
                }
                Some(Err(SendError {
                    error,
                    unsent: None,
                })) => {
                    if is_body_limit(&error) {
                        return Err(ForwardError::BodyTooLarge {
                            limit: table.settings.max_body_bytes,
                        });
                    }
                    failed(ctx, id, FailureKind::Reset, &mut first_failure);
                    let failure = ForwardError::Failed {
                        region: region.name.clone(),
                        source: error,
                    };
                    match copy {
                        Some(copy) if may_retry(ctx, FailureKind::Reset) => {
                            tracing::debug!(error = %failure, "replaying on the next region");
                            req = Some(copy);
                            last_error = Some(failure);
                            break;
                        }
                        _ => return Err(failure),
                    }
                }
            }
        }
    }
    Err(last_error.expect("forward is called with at least one candidate"))
}
