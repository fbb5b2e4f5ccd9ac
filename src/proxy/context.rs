//! One request's context, filled by the stages as they learn things (the
//! route, the region and why, the client) and read once, at the end, by the
//! access log (Pingora's per-request context and logging phase).

use std::net::IpAddr;

use http::{Method, Request, Response, Uri, Version};
use tokio::time::Instant;

use super::{Connection, ProxyBody, ProxyError, Served};
use crate::config::RegionName;
use crate::proxy::request_id::RequestId;
use crate::routing::identity;
use crate::routing::snapshot::Snapshot;

/// What the stages tell the logging step.
pub(super) struct Context<'s> {
    /// The route the decision chose, also when the router then answers itself.
    pub(super) route: Option<&'s str>,
    /// The request's head, kept only when the access log is on.
    head: Option<Head>,
    /// The region that served (or that the router tried and then answered
    /// for: 502, 504), and why it was chosen or what went wrong.
    region: Option<RegionName>,
    why: String,
}

struct Head {
    started: Instant,
    method: Method,
    uri: Uri,
    version: Version,
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
            client: identity::client_ip(conn.peer, req.headers(), &settings.trusted_proxies).0,
        });
        Context {
            route: None,
            head,
            region: None,
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

    /// The logging step: one access-log line, when the log is on.
    pub(super) fn log(
        &self,
        conn: &Connection,
        resp: &Response<ProxyBody>,
        request_id: &RequestId,
    ) {
        let Some(h) = &self.head else { return };
        tracing::info!(
            target: "georouter::access",
            peer = %conn.peer.0,
            client = %h.client,
            method = %h.method,
            uri = ?crate::logging::Quoted(&h.uri),
            version = ?h.version,
            status = resp.status().as_u16(),
            route = self.route.unwrap_or("-"),
            region = self.region.as_ref().map_or("-", |r| r.as_str()),
            why = self.why.as_str(),
            request_id = ?crate::logging::Quoted(request_id),
            micros = h.started.elapsed().as_micros() as u64,
        );
    }
}
