//! One access-log line: what the request's context gathered, written once its
//! response is done (the body's last byte handed over, or the client gone), so
//! that it says how many bytes went out and how long the whole exchange took.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Uri, Version};
use tokio::time::Instant;

use crate::config::RegionName;
use crate::logging::Quoted;
use crate::proxy::client_body::Progress;
use crate::proxy::request_id::RequestId;

/// An access-log line waiting for its response to end.
#[derive(Debug)]
pub struct Line {
    pub(super) peer: std::net::SocketAddr,
    pub(super) client: IpAddr,
    pub(super) method: Method,
    /// The request's host as the client wrote it (authority or Host).
    pub(super) host: String,
    pub(super) uri: Uri,
    pub(super) version: Version,
    pub(super) user_agent: String,
    pub(super) status: u16,
    pub(super) route: String,
    pub(super) region: Option<RegionName>,
    /// The endpoint that answered (`host:port`), or `-`.
    pub(super) endpoint: String,
    /// The tries left before, in order: `region/host:port:why` each.
    pub(super) tried: String,
    pub(super) why: String,
    pub(super) request_id: RequestId,
    pub(super) started: Instant,
    /// From the request's start to the response head.
    pub(super) head: Duration,
    /// The request body's count, when it had one.
    pub(super) body_in: Option<Arc<Progress>>,
    pub(super) bytes_out: u64,
}

impl Line {
    /// Counts response body bytes handed over.
    pub fn sent(&mut self, n: usize) {
        self.bytes_out = self.bytes_out.saturating_add(n as u64);
    }

    /// Writes the line (target `georouter::access`). Every field a client
    /// chose is quoted and escaped in text logs.
    pub fn write(self) {
        let bytes_in = self.body_in.as_ref().map_or(0, |p| p.received());
        tracing::info!(
            target: "georouter::access",
            peer = %self.peer,
            client = %self.client,
            method = %self.method,
            host = ?Quoted(&self.host),
            uri = ?Quoted(&self.uri),
            version = ?self.version,
            status = self.status,
            route = self.route.as_str(),
            region = self.region.as_ref().map_or("-", |r| r.as_str()),
            endpoint = self.endpoint.as_str(),
            tried = self.tried.as_str(),
            why = self.why.as_str(),
            bytes_in,
            bytes_out = self.bytes_out,
            user_agent = ?Quoted(&self.user_agent),
            request_id = ?Quoted(&self.request_id),
            head_micros = self.head.as_micros() as u64,
            micros = self.started.elapsed().as_micros() as u64,
        );
    }
}
