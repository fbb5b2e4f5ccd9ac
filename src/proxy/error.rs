//! Everything the router answers itself instead of a region, and the one
//! mapping from each to a status, a public text and the response.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use super::ProxyBody;
use crate::blame::{ClientFault, LocalFault};
use crate::config::RegionName;
use crate::path::PathError;
use crate::proxy::admit::Refused;
use crate::proxy::forward::{ForwardError, ShedReason};
use crate::proxy::request_id::{self, RequestId};

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
    /// RFC 8470: a request in 0-RTT early data that is not safe to replay.
    #[error("too early: this request may not be sent in TLS early data (0-RTT); send it again once the handshake is complete")]
    TooEarly,
    #[error("misdirected request: this connection's certificate does not cover the request's host; open a connection to that host")]
    Misdirected,
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
    #[error("every region that may serve this request is at capacity ({}); try again shortly", .reason.as_str())]
    Shed { reason: ShedReason },
    /// A `101` to a protocol the client did not ask for, or the route does
    /// not allow: nothing is spliced.
    #[error("region {region} switched to a protocol that was not asked for")]
    UnaskedUpgrade { region: RegionName },
}

fn client_fault_text(fault: ClientFault) -> &'static str {
    match fault {
        ClientFault::MalformedBody => "bad request: the request body is malformed",
        ClientFault::Gone => "bad request: the request body ended early",
        ClientFault::BodyTimeout => "request timeout: the request body stalled",
    }
}

impl ProxyError {
    /// The region the router tried before answering itself, if it got that far.
    pub fn region(&self) -> Option<&RegionName> {
        match self {
            ProxyError::UpstreamConnect { region, .. }
            | ProxyError::UpstreamTimeout { region, .. }
            | ProxyError::UpstreamFailed { region, .. }
            | ProxyError::UnaskedUpgrade { region } => Some(region),
            _ => None,
        }
    }

    /// The one mapping from router error to HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Refused(r) => r.status(),
            ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::TooEarly => StatusCode::TOO_EARLY,
            ProxyError::NoServingRegion { .. }
            | ProxyError::ResidencyRefused { .. }
            | ProxyError::GeoUnreadable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamFailed { .. }
            | ProxyError::UnaskedUpgrade { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientBody { fault } => match fault {
                ClientFault::MalformedBody | ClientFault::Gone => StatusCode::BAD_REQUEST,
                ClientFault::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            },
            ProxyError::Local { .. } | ProxyError::Shed { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Seconds a client should wait before retrying, where waiting helps.
    fn retry_after(&self) -> Option<&'static str> {
        match self {
            ProxyError::NoServingRegion { .. }
            | ProxyError::ResidencyRefused { .. }
            | ProxyError::GeoUnreadable => Some("5"),
            ProxyError::Local { .. } | ProxyError::Shed { .. } => Some("1"),
            _ => None,
        }
    }

    /// Whether the client connection must close after this answer: the request
    /// body's framing or state is in doubt.
    fn closes(&self) -> bool {
        match self {
            ProxyError::Refused(r) => r.closes(),
            ProxyError::ClientBody { .. } | ProxyError::UnaskedUpgrade { .. } => true,
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
            ForwardError::Shed { reason } => ProxyError::Shed { reason },
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
