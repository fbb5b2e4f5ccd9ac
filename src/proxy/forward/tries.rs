//! One request's tries: the next region with room, and what each kind of
//! failed try means for the next one (a sibling endpoint, the next region, or
//! the end).

use super::*;

/// What one request's attempts carry from try to try and region to region.
pub(super) struct Tries {
    /// The request, in hand between tries (a copy once one was sent).
    pub(super) req: Option<Request<UpstreamBody>>,
    pub(super) last_error: Option<ForwardError>,
    pub(super) first_failure: Option<(RegionId, FailureKind)>,
    /// The next candidate to look at.
    pub(super) next: usize,
    /// Candidates found full, a bit per index; the queue is tried once.
    pub(super) full: u64,
    pub(super) queued: bool,
    /// Every try left, in order, for the access log.
    pub(super) trail: Trail,
}

impl Tries {
    pub(super) fn new(req: Request<UpstreamBody>) -> Tries {
        Tries {
            req: Some(req),
            last_error: None,
            first_failure: None,
            next: 0,
            full: 0,
            queued: false,
            trail: Trail::default(),
        }
    }

    /// The request for the next try (a copy, after one was sent), pointed at
    /// `endpoint`.
    #[inline]
    pub(super) fn request_for(
        &mut self,
        endpoint: &EndpointSpec,
        preserve_host: bool,
    ) -> Request<UpstreamBody> {
        let mut req = self
            .req
            .take()
            .expect("a request is in hand for every attempt");
        retarget(&mut req, endpoint, preserve_host);
        req
    }

    /// No head within the response timeout, nowhere else to go: the region's
    /// failure, and the request's end.
    pub(super) fn timed_out(
        &mut self,
        ctx: &Attempt<'_>,
        id: RegionId,
        held: InFlight,
    ) -> ForwardError {
        let region = ctx.table.region(id);
        failed(ctx, id, FailureKind::Timeout, &mut self.first_failure);
        self.trail
            .push(id, held.endpoint(), Why::Failed(FailureKind::Timeout));
        endpoint_failed(
            ctx,
            region,
            &account_of(ctx, id).load,
            held.endpoint(),
            true,
        );
        ForwardError::Timeout {
            region: region.name.clone(),
            timeout: ctx.table.settings.upstream.response_timeout,
        }
    }
    pub(super) fn more_regions(&self, candidates: &[RegionId]) -> bool {
        self.next < candidates.len()
    }

    /// The next candidate with room, and a slot on one of its endpoints; a
    /// full one is noted for the queue. `None`: no candidate is left.
    #[inline]
    pub(super) fn next_free(
        &mut self,
        ctx: &Attempt<'_>,
        candidates: &[RegionId],
    ) -> Option<(RegionId, InFlight)> {
        while self.next < candidates.len() {
            let id = candidates[self.next];
            self.next += 1;
            match account_of(ctx, id).load.acquire(0) {
                Some(slot) => return Some((id, slot)),
                None => self.full |= 1 << (self.next - 1).min(63),
            }
        }
        None
    }

    /// Every candidate was looked at, some were full, and the queue was not
    /// tried yet (it is tried once).
    pub(super) fn may_queue(&mut self) -> bool {
        let may = self.full != 0 && !self.queued;
        self.queued |= may;
        may
    }

    /// A request that spilled from a full region to `id` is counted.
    #[inline]
    pub(super) fn count_spill(&self, ctx: &Attempt<'_>, candidates: &[RegionId], id: RegionId) {
        if self.full != 0 {
            let from = candidates[self.full.trailing_zeros() as usize];
            if from != id {
                ctx.accounts
                    .counters()
                    .spillover(&ctx.state.metrics, ctx.table, from, id);
            }
        }
    }

    /// No connection to the endpoint could be had (nothing was sent): the
    /// router's own fault ends the request (another region would fail the
    /// same way); else the region's next endpoint (`Some`), then the next
    /// region (`None`).
    pub(super) fn connect_failed(
        &mut self,
        ctx: &Attempt<'_>,
        id: RegionId,
        held: InFlight,
        tried: u64,
        source: ConnectError,
        more_regions: bool,
    ) -> Result<Option<InFlight>, ForwardError> {
        let endpoint = held.endpoint();
        let region = ctx.table.region(id);
        let account = account_of(ctx, id);
        let local = match &source {
            ConnectError::ServerName { .. } => Some(LocalFault::Config),
            other => LocalFault::in_chain(other),
        };
        if let Some(fault) = local {
            // Our own descriptors or ports: no region is to blame.
            ctx.state.metrics.local_errors[fault as usize].inc();
            crate::log_limit::warn_local(fault, &source);
            return Err(ForwardError::Local { fault, source });
        }
        tracing::debug!(region = %region.name, error = %source, "connect failed");
        self.trail
            .push(id, endpoint, Why::Failed(FailureKind::Connect));
        endpoint_failed(ctx, region, &account.load, endpoint, false);
        drop(held);
        // The region's next endpoint first: nothing was sent.
        if let Some(slot) = account.load.acquire(tried) {
            let passive = ctx.table.settings.passive_failures;
            if account.failure(FailureKind::Connect, passive, None, 1) {
                ctx.state.wake.notify_one();
            }
            return Ok(Some(slot));
        }
        failed(ctx, id, FailureKind::Connect, &mut self.first_failure);
        if more_regions {
            ctx.state.metrics.retries_by_kind[FailureKind::Connect as usize].inc();
        }
        self.last_error = Some(ForwardError::Connect {
            region: region.name.clone(),
            source,
        });
        Ok(None)
    }

    /// A response head. A gateway failure (502, 503, 504) is the region's and
    /// a replayable request goes on to the next region within the retry budget
    /// (`None`); any other answer is the response.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) fn answered<'t>(
        &mut self,
        ctx: &Attempt<'t>,
        id: RegionId,
        endpoint: usize,
        mut response: Response<PooledBody>,
        held: InFlight,
        copy: Option<Request<UpstreamBody>>,
        more_regions: bool,
    ) -> Option<Forwarded<'t>> {
        let table = ctx.table;
        let region = table.region(id);
        let account = account_of(ctx, id);
        let load = &account.load;
        let status = response.status();
        // A gateway failure (502, 503, 504) is the region's; another 5xx is
        // the application's answer unless the policy counts it.
        let gateway = retriable_status(status);
        if gateway || (status.is_server_error() && table.settings.count_all_5xx) {
            failed(ctx, id, FailureKind::Status5xx, &mut self.first_failure);
            if gateway {
                endpoint_failed(ctx, region, load, endpoint, true);
            }
            if let Some(copy) = copy.filter(|_| gateway && more_regions) {
                if may_retry(ctx, FailureKind::Status5xx) {
                    tracing::debug!(region = %region.name, %status, "retrying on the next region");
                    self.trail
                        .push(id, endpoint, Why::Failed(FailureKind::Status5xx));
                    self.req = Some(copy);
                    self.last_error = None;
                    return None;
                }
            }
        } else {
            account.success();
            if load.endpoints.len() > 1 {
                load.record(endpoint, Attempted::Ok, None, &Passive::OFF);
            }
        }
        // An upgrade is a tunnel, not a request: its slot is free now.
        if status != StatusCode::SWITCHING_PROTOCOLS {
            response.body_mut().hold_slot(held);
        }
        Some(Forwarded {
            response,
            region,
            endpoint,
            first_failure: self.first_failure,
        })
    }

    /// A reset after sending, before any response: the client's own body, or
    /// the router's body limit, end it; else a replayable request is replayed
    /// within the retry budget, on a sibling endpoint first (`Some`), a lone
    /// endpoint getting one more connection, then the next region (`None`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reset(
        &mut self,
        ctx: &Attempt<'_>,
        id: RegionId,
        held: InFlight,
        tried: u64,
        error: hyper::Error,
        copy: Option<Request<UpstreamBody>>,
        reset_retry: &mut bool,
    ) -> Result<Option<InFlight>, ForwardError> {
        let endpoint = held.endpoint();
        let region = ctx.table.region(id);
        let load = &account_of(ctx, id).load;
        if is_body_limit(&error) {
            return Err(ForwardError::BodyTooLarge {
                limit: ctx.table.settings.max_body_bytes,
            });
        }
        if let Some(fault) = ClientBodyError::in_chain(&error) {
            return Err(ForwardError::Client { fault });
        }
        failed(ctx, id, FailureKind::Reset, &mut self.first_failure);
        self.trail
            .push(id, endpoint, Why::Failed(FailureKind::Reset));
        endpoint_failed(ctx, region, load, endpoint, true);
        load.reset_seen();
        let failure = ForwardError::Failed {
            region: region.name.clone(),
            source: error,
        };
        let Some(copy) = copy else {
            return Err(failure);
        };
        if !may_retry(ctx, FailureKind::Reset) {
            return Err(failure);
        }
        self.req = Some(copy);
        self.last_error = Some(failure);
        drop(held);
        // A sibling endpoint first; a lone endpoint gets one more connection;
        // then the next region.
        let mut slot = load.acquire(tried);
        if slot.is_none() && load.endpoints.len() == 1 && *reset_retry {
            *reset_retry = false;
            slot = load.acquire(0);
        }
        tracing::debug!(region = %region.name, here = slot.is_some(), "replaying a reset request");
        Ok(slot)
    }

    /// No head in time but somewhere else to go (`try_timeout`), or the
    /// region left service while the request waited: the copy goes on, to a
    /// sibling endpoint after a timeout, else to the next region.
    pub(super) fn moved_on(
        &mut self,
        ctx: &Attempt<'_>,
        id: RegionId,
        held: InFlight,
        tried: u64,
        copy: Option<Request<UpstreamBody>>,
        timed_out: bool,
    ) -> Option<InFlight> {
        let endpoint = held.endpoint();
        let region = ctx.table.region(id);
        let load = &account_of(ctx, id).load;
        self.req = copy;
        self.last_error = Some(ForwardError::Timeout {
            region: region.name.clone(),
            timeout: ctx.table.settings.upstream.response_timeout,
        });
        drop(held);
        if !timed_out {
            tracing::debug!(region = %region.name, "region left service; sending on to the next region");
            self.trail.push(id, endpoint, Why::LeftService);
            return None;
        }
        failed(ctx, id, FailureKind::Timeout, &mut self.first_failure);
        self.trail
            .push(id, endpoint, Why::Failed(FailureKind::Timeout));
        endpoint_failed(ctx, region, load, endpoint, true);
        let slot = load.acquire(tried);
        tracing::debug!(region = %region.name, sibling = slot.is_some(), "no answer within try_timeout; sending on");
        slot
    }

    /// The request could not be sent on the connection (it came back
    /// unsent): nothing reached the region, so its next endpoint freely.
    pub(super) fn unsent(
        &mut self,
        ctx: &Attempt<'_>,
        id: RegionId,
        held: InFlight,
        tried: u64,
        error: hyper::Error,
    ) -> Option<InFlight> {
        let endpoint = held.endpoint();
        let region = ctx.table.region(id);
        let load = &account_of(ctx, id).load;
        failed(ctx, id, FailureKind::Connect, &mut self.first_failure);
        self.trail
            .push(id, endpoint, Why::Failed(FailureKind::Connect));
        endpoint_failed(ctx, region, load, endpoint, false);
        drop(held);
        let slot = load.acquire(tried);
        self.last_error = Some(ForwardError::Failed {
            region: region.name.clone(),
            source: error,
        });
        slot
    }
}
