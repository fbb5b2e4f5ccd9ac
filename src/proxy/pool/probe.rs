//! A health check's request: one GET on a new connection, closed afterwards.

use http::Request;
use http_body_util::{Either, Empty};

use super::{connect, Sender};
use crate::config::{EndpointSpec, Http2Tuning};
use crate::proxy::pool::ConnectError;
use crate::routing::table::Region;

/// Why a probe (health check) failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("request failed: {0}")]
    Send(hyper::Error),
}

/// One GET on a new connection to `ep`, closed afterwards: a health check sees
/// what a new request would see, not what a pooled connection remembers.
/// Returns the status once the response head arrived.
pub async fn probe(
    region: &Region,
    ep: &EndpointSpec,
    path: &http::uri::PathAndQuery,
    tuning: &Http2Tuning,
) -> Result<http::StatusCode, ProbeError> {
    let sender = connect(region, ep, tuning).await?;
    let mut req = Request::new(Either::Right(Empty::new()));
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("georouter-health"),
    );
    let status = match sender {
        Sender::Http1(mut s) => {
            *req.uri_mut() = http::Uri::from(path.clone());
            if let Ok(host) = http::HeaderValue::from_str(ep.authority.as_str()) {
                req.headers_mut().insert(http::header::HOST, host);
            }
            req.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            s.ready().await.map_err(ProbeError::Send)?;
            s.send_request(req)
                .await
                .map_err(ProbeError::Send)?
                .status()
        }
        Sender::Http2(mut s) => {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(ep.scheme.clone());
            parts.authority = Some(ep.authority.clone());
            parts.path_and_query = Some(path.clone());
            *req.uri_mut() = http::Uri::from_parts(parts).expect("scheme, authority and path");
            *req.version_mut() = http::Version::HTTP_2;
            s.send_request(req)
                .await
                .map_err(ProbeError::Send)?
                .status()
        }
    };
    Ok(status)
}
