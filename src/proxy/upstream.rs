//! The upstream request, built once from the client's: what the router owns or
//! distrusts stripped, hop-by-hop headers out, split cookies joined, an allowed
//! upgrade kept, `X-Forwarded-*`, Host and the request id set, the body wrapped
//! so its faults are the client's.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty, Limited};

use super::{Connection, Plan};
use crate::proxy::admit::{self, Admitted};
use crate::proxy::client_body::{ClientBody, Progress, Source};
use crate::proxy::headers;
use crate::proxy::pool::UpstreamBody;
use crate::proxy::request_id::{self, RequestId};
use crate::routing::snapshot::Snapshot;

/// The request on its way to a region, and what forwarding needs to know of it.
pub(super) struct Upstream {
    pub request: Request<UpstreamBody>,
    /// The client side of an upgrade the route allows, and what it asked for.
    pub client_upgrade: Option<(hyper::upgrade::OnUpgrade, HeaderValue)>,
    /// Without a body and idempotent: it can be sent again while nothing came back.
    pub replayable: bool,
    /// The client's upload, when there is one: whose clock is running.
    pub progress: Option<Arc<Progress>>,
}

/// Builds the upstream request from the client's; `host_header` is its Host
/// header as admission found it.
pub(super) fn build(
    conn: &Connection,
    snapshot: &Snapshot,
    mut req: Request<Source>,
    admitted: &Admitted,
    host_header: Option<HeaderValue>,
    plan: &Plan<'_>,
    made_id: Option<u64>,
) -> Upstream {
    let table = &snapshot.table;
    let settings = &table.settings;
    if admitted.owned {
        // x-georouter-* is the router's to set, never a client's.
        admit::strip_owned(req.headers_mut());
    }
    if !plan.peer_trusted && settings.replace_forwarded {
        // What an untrusted client says of earlier hops is not passed on.
        headers::strip_forwarded(req.headers_mut());
    }
    if !plan.peer_trusted {
        if let Some(name) = &table.residency_header {
            // A client may not choose its own jurisdiction.
            req.headers_mut().remove(name);
        }
    }
    // Only the protocols the route allows pass; h2c and the rest are stripped
    // with the hop-by-hop headers, never tunnelled.
    let upgrade = if admitted.upgrade && req.version() == Version::HTTP_11 {
        headers::upgrade_protocol(req.headers())
            .filter(|p| plan.decision.route.allows_upgrade(p.as_bytes()))
    } else {
        None
    };
    let client_upgrade = upgrade
        .as_ref()
        .map(|asked| (hyper::upgrade::on(&mut req), asked.clone()));
    let (mut parts, body) = req.into_parts();
    // HTTP/1.1 carries Host; HTTP/2 carries :authority instead.
    let host_in_map = host_header.is_some();
    let original_host = host_header.or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    headers::strip_hop_by_hop(&mut parts.headers);
    if admitted.split_cookies {
        headers::join_cookies(&mut parts.headers);
    }
    // Room for what the router adds (X-Forwarded-*, x-request-id, Upgrade): one
    // growth of the map at most, not one per insert.
    parts.headers.reserve(5);
    if let Some(proto) = upgrade {
        headers::set_upgrade(&mut parts.headers, proto);
    }
    if body.is_early() {
        // RFC 8470 5.2: the region learns the request came in early data.
        parts
            .headers
            .insert(headers::EARLY_DATA, HeaderValue::from_static("1"));
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
    if admitted.identity {
        headers::rewrite_identity(&mut parts.headers, conn.peer.ip(), plan.client.0);
    }
    // Without `preserve_host` the client's Host stays for `forward::retarget`
    // to replace in place (HTTP/1.1) or take out (HTTP/2).
    if let (Some(h), true, false) = (original_host, settings.preserve_host, host_in_map) {
        parts.headers.insert(header::HOST, h);
    }
    let replayable = body.is_end_stream() && is_idempotent(&parts.method);
    let (body, progress) = if body.is_end_stream() {
        (Either::Right(Empty::new()), None)
    } else {
        let limit = usize::try_from(settings.max_body_bytes).unwrap_or(usize::MAX);
        let (body, progress) = ClientBody::new(body, settings.upstream.request_body_timeout);
        (Either::Left(Limited::new(body, limit)), Some(progress))
    };
    Upstream {
        request: Request::from_parts(parts, body),
        client_upgrade,
        replayable,
        progress,
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}
