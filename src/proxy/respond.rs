//! The last stage: the client's response from the region's (hop-by-hop
//! headers out, the region named, upgrades spliced, a resident pinned by cookie)
//! and what the request is counted as (served, failed over).

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Either;
use hyper_util::rt::TokioIo;

use super::{Connection, ProxyBody, ProxyError};
use crate::edge::activity::Streaming;
use crate::proxy::headers;
use crate::proxy::pool::PooledBody;
use crate::routing::accounting::{FailoverReason, FailureKind};
use crate::routing::facts::PinSource;
use crate::routing::policy;
use crate::routing::snapshot::Snapshot;
use crate::routing::table::RegionId;

/// Pins a resident who has no valid cookie yet, so travel does not move them.
pub(super) fn pin_resident(
    snapshot: &Snapshot,
    decision: &policy::Decision<'_>,
    https: bool,
    response: &mut Response<ProxyBody>,
) {
    let table = &snapshot.table;
    if let (Some(signer), Some(pin)) = (&table.cookie, decision.pin) {
        if pin.source != PinSource::Cookie {
            let name = &table.jurisdiction(pin.jurisdiction).name;
            response
                .headers_mut()
                .append(header::SET_COOKIE, signer.set_cookie(name, https));
        }
    }
}

/// Counts a request served elsewhere than the policy's first choice: because an
/// attempt failed, or because that region was drained or unhealthy.
pub(super) fn count_failover(
    conn: &Connection,
    snapshot: &Snapshot,
    decision: &policy::Decision<'_>,
    served: &crate::routing::table::Region,
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

/// The client's response from the upstream's: hop-by-hop headers out, region in,
/// and for a `101 Switching Protocols` the two upgraded connections spliced.
pub(super) fn respond(
    mut resp: Response<PooledBody>,
    region: &crate::routing::table::Region,
    region_header: bool,
    client_upgrade: Option<(hyper::upgrade::OnUpgrade, HeaderValue)>,
    streaming: Streaming,
) -> Result<Response<ProxyBody>, ProxyError> {
    // The client connection counts as busy until the body is done.
    resp.body_mut().hold(streaming);
    let switched = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Spliced only to what the client asked for and the route allows.
        match client_upgrade {
            Some((client_side, asked)) if headers::switched_as_asked(resp.headers(), &asked) => {
                tunnel(client_side, hyper::upgrade::on(&mut resp));
                resp.headers().get(header::UPGRADE).cloned()
            }
            _ => {
                return Err(ProxyError::UnaskedUpgrade {
                    region: region.name.clone(),
                })
            }
        }
    } else {
        None
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
    Ok(Response::from_parts(parts, Either::Left(body)))
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
