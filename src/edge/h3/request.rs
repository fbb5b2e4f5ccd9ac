//! One HTTP/3 request stream: its head checked as RFC 9114 4.2 and 4.3 say
//! (the field section as encoded, then as decoded), its body, the App's answer
//! streamed back.

use std::net::SocketAddr;

use http::{HeaderMap, Method, Request};

use h3::proto::frame::Frame;

use super::body::H3Body;
use super::fields;
use super::respond;
use crate::edge::server::ConnLimits;

pub(super) type Resolver = h3::server::RequestResolver<h3_quinn::Connection, bytes::Bytes>;
type Stream = h3::server::RequestStream<h3_quinn::BidiStream<bytes::Bytes>, bytes::Bytes>;

/// One request stream: its head (within the header deadline), checked as
/// RFC 9114 4.2 and 4.3 say, its body, the App's answer streamed back.
pub(super) async fn serve<S, B>(
    resolver: Resolver,
    service: &S,
    early: bool,
    quic: &quinn::Connection,
    peer: SocketAddr,
    limits: &ConnLimits,
) where
    S: hyper::service::Service<
        Request<H3Body>,
        Response = http::Response<B>,
        Error = std::convert::Infallible,
    >,
    B: http_body::Body,
{
    let (req, stream, flaw) =
        match tokio::time::timeout(limits.header_read_timeout, head(resolver)).await {
            Ok(Ok(head)) => head,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "HTTP/3 request head refused");
                return;
            }
            Err(_) => return,
        };
    let now = quic.remote_address();
    if now != peer {
        // A client can move at will (a new source port per packet): one line
        // a second at most.
        static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
        if let Some(suppressed) = LOG.allow() {
            tracing::info!(%peer, moved_to = %now, suppressed, "HTTP/3 connection migrated; its first address stays the client");
        }
    }
    let checked = match flaw {
        Err(flaw) => Err(flaw.as_str()),
        Ok(()) => malformed(req.headers()),
    };
    let declared = match checked {
        Ok(declared) => declared,
        Err(why) => {
            // RFC 9114 4.1.2: a malformed request is a stream error.
            tracing::debug!(%peer, why, "malformed HTTP/3 request");
            let mut stream = stream;
            stream.stop_stream(h3::error::Code::H3_MESSAGE_ERROR);
            stream.stop_sending(h3::error::Code::H3_MESSAGE_ERROR);
            return;
        }
    };
    let (mut send, recv) = stream.split();
    let mut body = H3Body::new(recv, declared, early);
    // A GET's or HEAD's body is learnt before it is routed: one that the client
    // ended with its head goes bodiless (and may be retried elsewhere).
    let wait = declared.is_none() && matches!(*req.method(), Method::GET | Method::HEAD);
    match tokio::time::timeout(limits.header_read_timeout, body.settle(wait)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            // Reset, never ended as if answered: a body past its
            // content-length is malformed; anything else left it unfinished.
            tracing::debug!(%peer, error = %e, "HTTP/3 request body");
            send.stop_stream(if e.is_malformed() {
                h3::error::Code::H3_MESSAGE_ERROR
            } else {
                h3::error::Code::H3_REQUEST_INCOMPLETE
            });
            return;
        }
        Err(_) => {
            send.stop_stream(h3::error::Code::H3_REQUEST_INCOMPLETE);
            return;
        }
    }
    let Ok(response) = service.call(req.map(|()| body)).await;
    if let Err(e) = respond::send(send, response).await {
        tracing::debug!(%peer, error = %e, "HTTP/3 response not sent whole");
    }
}

/// A request's head as h3 resolves it, and what its field section says that
/// h3 folds away: the HEADERS frame is read here, checked as the client
/// encoded it ([`fields::check`]), then handed to h3 to decode.
async fn head(
    mut resolver: Resolver,
) -> Result<(Request<()>, Stream, Result<(), fields::Flaw>), h3::error::StreamError> {
    let frame = std::future::poll_fn(|cx| resolver.frame_stream.poll_next(cx)).await;
    let flaw = match &frame {
        Ok(Some(Frame::Headers(section))) => fields::check(section),
        _ => Ok(()),
    };
    let (req, stream) = resolver.accept_with_frame(frame)?.resolve().await?;
    Ok((req, stream, flaw))
}

/// RFC 9114 4.2: connection-specific fields make a request malformed, and
/// `te` may only say `trailers`; a `content-length` must be one number. The
/// declared length, when there is one.
fn malformed(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    for name in respond::CONNECTION_SPECIFIC {
        if headers.contains_key(name) {
            return Err("connection-specific header field");
        }
    }
    for te in headers.get_all(http::header::TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            return Err("te other than trailers");
        }
    }
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let declared = match lengths.next() {
        None => None,
        Some(v) => {
            let v = v.to_str().map_err(|_| "content-length is not a number")?;
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err("content-length is not a number");
            }
            Some(
                v.parse::<u64>()
                    .map_err(|_| "content-length is not a number")?,
            )
        }
    };
    if lengths.next().is_some() {
        return Err("more than one content-length");
    }
    Ok(declared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn connection_specific_fields_make_a_request_malformed() {
        for name in respond::CONNECTION_SPECIFIC {
            assert!(malformed(&headers(&[(name, "x")])).is_err(), "{name}");
        }
        assert!(malformed(&headers(&[("te", "gzip")])).is_err());
        assert_eq!(malformed(&headers(&[("te", "trailers")])), Ok(None));
    }

    #[test]
    fn a_content_length_is_one_number() {
        assert_eq!(
            malformed(&headers(&[("content-length", "12")])),
            Ok(Some(12))
        );
        for bad in ["", "+1", "1,1", " 1", "0x10", "99999999999999999999999"] {
            assert!(
                malformed(&headers(&[("content-length", bad)])).is_err(),
                "{bad:?}"
            );
        }
        assert!(malformed(&headers(&[
            ("content-length", "1"),
            ("content-length", "1")
        ]))
        .is_err());
    }
}
