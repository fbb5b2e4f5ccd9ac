//! One request's context, filled by the stages as they learn things (the
//! route, the region and why, the tries left, the client) and read once, at
//! the end, by the logging step (Pingora's per-request context and logging
//! phase), which hands the access log's line to the response body to write
//! when it is done.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::Either;
use tokio::time::Instant;

use super::access_log::Line;
use super::{Connection, ProxyBody, ProxyError, Served};
use crate::config::RegionName;
use crate::proxy::client_body::Progress;
use crate::proxy::forward::trail::Trail;
use crate::proxy::request_id::RequestId;
use crate::routing::identity;
use crate::routing::snapshot::Snapshot;

/// What the stages tell the logging step.
pub(super) struct Context<'s> {
    /// The route the decision chose, also when the router then answers itself.
    pub(super) route: Option<&'s str>,
    /// The tries forwarding left, in order (filled by forwarding).
    pub(super) trail: Trail,
    /// The request body's progress (its byte count), when it has one.
    pub(super) body_in: Option<Arc<Progress>>,
    /// The request's head, kept only when the access log is on.
    head: Option<Head>,
    /// The region that served (or that the router tried and then answered
    /// for: 502, 504), and why it was chosen or what went wrong.
    region: Option<RegionName>,
    /// The endpoint of `region` that answered.
    endpoint: Option<usize>,
    why: String,
}

struct Head {
    started: Instant,
    method: Method,
    uri: Uri,
    version: Version,
    host: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    /// The client as identity sees it (not the proxy in front), also for the
    /// answers the router gives itself; the decision's, once it ran.
    client: IpAddr,
}

impl<'s> Context<'s> {
    pub(super) fn new<B>(
        conn: &Connection,
        snapshot: &Snapshot,
        req: &Request<B>,
        started: Instant,
    ) -> Context<'s> {
        let settings = &snapshot.table.settings;
        let head = settings.access_log.then(|| Head {
            started,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            host: match req.uri().authority() {
                Some(a) => HeaderValue::from_str(a.as_str()).ok(),
                None => req.headers().get(header::HOST).cloned(),
            },
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            client: identity::client_ip(conn.peer, req.headers(), &settings.trusted_proxies).0,
        });
        Context {
            route: None,
            trail: Trail::default(),
            body_in: None,
            head,
            region: None,
            endpoint: None,
            why: String::new(),
        }
    }

    /// Whether the access log is on (its line is written at the end).
    pub(super) fn logging(&self) -> bool {
        self.head.is_some()
    }

    /// The request was served: by whom, for whom, why.
    pub(super) fn served(&mut self, served: Served) {
        if let Some(head) = &mut self.head {
            head.client = served.client;
            self.region = Some(served.region);
            self.endpoint = Some(served.endpoint);
            self.why = served.reason.unwrap_or_default();
        }
    }

    /// The router answered itself: the region it tried, if any, and why.
    pub(super) fn failed(&mut self, e: &ProxyError) {
        if self.head.is_some() {
            self.region = e.region().cloned();
            self.why = e.to_string();
        }
    }

    /// The logging step: the access log's line, written when `resp`'s body is
    /// done (at once for the router's own answers, whose size is known).
    pub(super) fn log(
        self,
        conn: &Connection,
        snapshot: &Snapshot,
        resp: &mut Response<ProxyBody>,
        request_id: &RequestId,
    ) {
        let Some(h) = self.head else { return };
        let table = &snapshot.table;
        let endpoint = self
            .region
            .as_ref()
            .zip(self.endpoint)
            .and_then(|(r, i)| table.region_by_name(r.as_str())?.endpoints.get(i))
            .map_or_else(|| "-".to_owned(), |e| e.authority.to_string());
        let lossy = |v: Option<HeaderValue>| {
            v.map_or_else(String::new, |v| {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            })
        };
        let line = Line {
            peer: conn.peer.0,
            client: h.client,
            method: h.method,
            host: lossy(h.host),
            uri: h.uri,
            version: h.version,
            user_agent: lossy(h.user_agent),
            status: resp.status().as_u16(),
            route: self.route.unwrap_or("-").to_owned(),
            region: self.region,
            endpoint,
            tried: self.trail.render(table),
            why: self.why,
            request_id: request_id.clone(),
            started: h.started,
            head: h.started.elapsed(),
            body_in: self.body_in,
            bytes_out: 0,
        };
        match resp.body_mut() {
            Either::Left(pooled) => pooled.log_when_done(Box::new(line)),
            Either::Right(own) => {
                let mut line = line;
                line.sent(own.size_hint().exact().unwrap_or(0) as usize);
                line.write();
            }
        }
    }
}
