//! What the edge refuses at the door, from the request head alone and before
//! anything reaches a region: a transfer coding other than one `chunked`
//! (RFC 9112 6.1), a missing, repeated, invalid or contradicted authority
//! (RFC 9110 7.2), and TRACE unless allowed. One pass over the headers; each
//! refusal is a fact with its status, and the connection closes after an
//! HTTP/1.1 framing refusal.
//!
//! Each framing fact has one owner. hyper's parser refuses an invalid
//! Content-Length, two that differ, and any Transfer-Encoding in HTTP/1.0;
//! what it folds away before a service sees the head (Content-Length beside
//! Transfer-Encoding, a repeated equal Content-Length, a bare LF) is read off
//! the wire by `edge::head_guard`; what it passes through (repeated
//! Transfer-Encoding lines, codings other than `chunked`) is refused here.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

use crate::proxy::authority::{self, Host};

/// A request refused at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("bad request: Content-Length together with Transfer-Encoding")]
    LengthAndChunked,
    #[error("bad request: more than one Content-Length")]
    RepeatedLength,
    #[error("bad request: Transfer-Encoding must be exactly \"chunked\"")]
    BadTransferEncoding,
    #[error("not implemented: only the chunked transfer coding is supported")]
    UnknownCoding,
    #[error("bad request: no Host header")]
    MissingHost,
    #[error("bad request: more than one Host header")]
    RepeatedHost,
    #[error("bad request: the Host header is not a valid host[:port]")]
    InvalidHost,
    #[error("bad request: the Host header disagrees with the request's authority")]
    HostMismatch,
    #[error("method not allowed: TRACE is disabled at this edge")]
    Trace,
    #[error("bad request: a line ends without CR")]
    BareLineFeed,
    #[error("bad request: methods are case-sensitive; send the standard method in upper case")]
    MethodCase,
    #[error("bad request: a header field value starts or ends with whitespace")]
    FieldWhitespace,
}

impl Refused {
    pub fn status(self) -> StatusCode {
        match self {
            Refused::UnknownCoding => StatusCode::NOT_IMPLEMENTED,
            Refused::Trace => StatusCode::METHOD_NOT_ALLOWED,
            Refused::LengthAndChunked
            | Refused::RepeatedLength
            | Refused::BadTransferEncoding
            | Refused::MissingHost
            | Refused::RepeatedHost
            | Refused::InvalidHost
            | Refused::HostMismatch
            | Refused::BareLineFeed
            | Refused::MethodCase
            | Refused::FieldWhitespace => StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the connection must close: the body's framing is in doubt, so
    /// nothing after this head can be trusted to be a request.
    pub fn closes(self) -> bool {
        !matches!(
            self,
            Refused::Trace | Refused::MethodCase | Refused::FieldWhitespace
        )
    }
}

/// What the one pass over a request's headers found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scan<'a> {
    /// Headers the router owns (`x-georouter-*`) that a client sent.
    owned: bool,
    hosts: u8,
    host: Option<&'a HeaderValue>,
    codings: u8,
    coding: Option<&'a HeaderValue>,
    upgrade: bool,
    /// `Forwarded` or `X-Real-IP` came with it.
    identity: bool,
    /// The client's `x-request-id`, found on the way (no second lookup).
    pub request_id: Option<&'a HeaderValue>,
    /// A value starts or ends with SP or HTAB.
    padded: bool,
    cookies: u8,
}

impl<'a> Scan<'a> {
    /// The Host header, when the request has one (admission refuses two).
    pub fn host(&self) -> Option<&'a HeaderValue> {
        self.host
    }
}

/// A request let in, and what its scan says the router must do to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// `x-georouter-*` headers came with it: strip them ([`strip_owned`]).
    pub owned: bool,
    /// Where the host is in the request's authority: the target's when it has
    /// one (absolute form, HTTP/2 `:authority`), else the Host header's. `None`
    /// for an HTTP/1.0 request without either.
    pub host: Option<Host>,
    /// The request names an `Upgrade`.
    pub upgrade: bool,
    /// It carries `Forwarded` or `X-Real-IP`: the router writes them anew.
    pub identity: bool,
    /// More than one `Cookie` field: joined into one upstream
    /// ([`crate::proxy::headers::join_cookies`]).
    pub split_cookies: bool,
}

const OWNED_PREFIX: &str = "x-georouter-";

/// The one pass over a request's headers.
pub fn scan(headers: &HeaderMap) -> Scan<'_> {
    let mut scan = Scan::default();
    for (name, value) in headers {
        // RFC 9113 8.2.1 and RFC 9114 4.2 (by RFC 9110 5.5's grammar): a value
        // neither starts nor ends with whitespace. HTTP/1.1's parser trims it;
        // HTTP/2 and HTTP/3 carry it, and a region reading the value trimmed
        // would read another value than the router.
        let v = value.as_bytes();
        if matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t')) {
            scan.padded = true;
        }
        if name == header::COOKIE {
            scan.cookies = scan.cookies.saturating_add(1);
        } else if name == header::HOST {
            scan.hosts = scan.hosts.saturating_add(1);
            scan.host = Some(value);
        } else if name == header::TRANSFER_ENCODING {
            scan.codings = scan.codings.saturating_add(1);
            scan.coding = Some(value);
        } else if name == header::UPGRADE {
            scan.upgrade = true;
        } else if name == header::FORWARDED {
            scan.identity = true;
        } else {
            let name = name.as_str();
            if name.starts_with(OWNED_PREFIX) {
                scan.owned = true;
            } else if name == crate::proxy::request_id::NAME {
                scan.request_id = Some(value);
            } else if name == crate::proxy::headers::X_REAL_IP.as_str() {
                scan.identity = true;
            }
        }
    }
    scan
}

/// Checks a request head against its scan. `allow_trace` lets TRACE through.
pub fn check(
    scan: &Scan<'_>,
    method: &Method,
    version: Version,
    uri: &Uri,
    allow_trace: bool,
) -> Result<Admitted, Refused> {
    if *method == Method::TRACE && !allow_trace {
        return Err(Refused::Trace);
    }
    if scan.padded {
        return Err(Refused::FieldWhitespace);
    }
    if case_variant(method) {
        return Err(Refused::MethodCase);
    }
    if version == Version::HTTP_11 {
        coding(scan.codings, scan.coding)?;
    }
    let target = uri.authority().map(|a| a.as_str().as_bytes());
    let mut host = None;
    match (scan.hosts, scan.host, target) {
        (2.., _, _) => return Err(Refused::RepeatedHost),
        (1, Some(h), t) => {
            host = Some(authority::parse(h.as_bytes()).ok_or(Refused::InvalidHost)?);
            if t.is_some_and(|t| !authority::same(h.as_bytes(), t)) {
                return Err(Refused::HostMismatch);
            }
        }
        (0, _, None) if version != Version::HTTP_10 => return Err(Refused::MissingHost),
        (0, _, Some(t)) if version == Version::HTTP_11 && !t.is_empty() => {
            // RFC 9112 3.2: an HTTP/1.1 request always carries Host.
            return Err(Refused::MissingHost);
        }
        _ => {}
    }
    if let Some(t) = target {
        host = Some(authority::parse(t).ok_or(Refused::InvalidHost)?);
    }
    Ok(Admitted {
        owned: scan.owned,
        host,
        upgrade: scan.upgrade,
        identity: scan.identity,
        split_cookies: scan.cookies > 1,
    })
}

/// A case variant of a standard method (`post`, `Get`): RFC 9110 9.1 makes
/// methods case-sensitive, but frameworks that upper-case them would read a
/// `POST` that no method route saw. Refused, as nginx does.
pub fn case_variant(method: &Method) -> bool {
    // A standard method (the common case) is one comparison of its tag.
    if crate::config::STANDARD_METHODS.contains(method) {
        return false;
    }
    let m = method.as_str();
    (3..=7).contains(&m.len())
        && crate::config::STANDARD_METHODS
            .iter()
            .any(|s| s.as_str().eq_ignore_ascii_case(m))
}

/// RFC 9112 6.1: a body's transfer coding is one `chunked`, or there is none.
/// hyper lets a request through when `chunked` is the last of its codings,
/// over any number of lines; the region might read the list another way.
fn coding(codings: u8, coding: Option<&HeaderValue>) -> Result<(), Refused> {
    if codings > 1 {
        return Err(Refused::BadTransferEncoding);
    }
    if let Some(c) = coding {
        let v = c.as_bytes().trim_ascii();
        if !v.eq_ignore_ascii_case(b"chunked") {
            let list = v.split(|&b| b == b',').map(<[u8]>::trim_ascii);
            let known = list
                .clone()
                .all(|c| c.eq_ignore_ascii_case(b"chunked") || c.is_empty());
            return Err(if known {
                Refused::BadTransferEncoding
            } else {
                Refused::UnknownCoding
            });
        }
    }
    Ok(())
}

/// Removes the headers the router owns from a client's request.
pub fn strip_owned(headers: &mut HeaderMap) {
    let owned: Vec<header::HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with(OWNED_PREFIX))
        .cloned()
        .collect();
    for n in owned {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(
        method: &str,
        uri: &str,
        version: Version,
        pairs: &[(&str, &str)],
    ) -> Result<Admitted, Refused> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        check(
            &scan(&h),
            &Method::from_bytes(method.as_bytes()).unwrap(),
            version,
            &uri.parse().unwrap(),
            false,
        )
    }

    fn h11(pairs: &[(&str, &str)]) -> Result<Admitted, Refused> {
        head("POST", "/", Version::HTTP_11, pairs)
    }

    #[test]
    fn one_chunked_coding_or_none() {
        // Content-Length is hyper's and head_guard's to judge (tests/edge.rs
        // sends each way of getting it wrong on the wire).
        let host = ("host", "example.com");
        assert!(h11(&[host, ("content-length", "5")]).is_ok());
        assert!(h11(&[host, ("transfer-encoding", "chunked")]).is_ok());
        assert!(h11(&[host, ("transfer-encoding", "Chunked")]).is_ok());
        for (pairs, want) in [
            (
                vec![
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                Refused::BadTransferEncoding,
            ),
            (
                vec![("transfer-encoding", "chunked, chunked")],
                Refused::BadTransferEncoding,
            ),
            (
                vec![("transfer-encoding", "gzip, chunked")],
                Refused::UnknownCoding,
            ),
            (
                vec![("transfer-encoding", "identity")],
                Refused::UnknownCoding,
            ),
            (
                vec![("transfer-encoding", "chunked, gzip")],
                Refused::UnknownCoding,
            ),
        ] {
            let mut all = vec![host];
            all.extend(pairs.iter().copied());
            assert_eq!(h11(&all).unwrap_err(), want, "{pairs:?}");
        }
    }

    #[test]
    fn one_valid_authority() {
        assert_eq!(h11(&[]).unwrap_err(), Refused::MissingHost);
        assert_eq!(
            h11(&[("host", "a.example"), ("host", "b.example")]).unwrap_err(),
            Refused::RepeatedHost
        );
        for bad in ["a b", "evil.com@127.0.0.1", ""] {
            assert_eq!(
                h11(&[("host", bad)]).unwrap_err(),
                Refused::InvalidHost,
                "{bad:?}"
            );
        }
        // Absolute form: its authority wins and Host must agree.
        let abs = |host: &str| {
            head(
                "GET",
                "http://api.example/x",
                Version::HTTP_11,
                &[("host", host)],
            )
        };
        assert!(abs("API.example").is_ok());
        assert_eq!(abs("other.example").unwrap_err(), Refused::HostMismatch);
        // HTTP/2: :authority and host must agree; either alone is enough.
        let h2 =
            |pairs: &[(&str, &str)]| head("GET", "https://api.example/x", Version::HTTP_2, pairs);
        assert!(h2(&[]).is_ok());
        assert!(h2(&[("host", "api.example")]).is_ok());
        assert_eq!(
            h2(&[("host", "evil.example")]).unwrap_err(),
            Refused::HostMismatch
        );
        assert!(
            head("GET", "/", Version::HTTP_10, &[]).is_ok(),
            "HTTP/1.0 may omit Host"
        );
    }

    #[test]
    fn trace_is_refused_and_owned_headers_are_noticed() {
        assert_eq!(
            head("TRACE", "/", Version::HTTP_11, &[("host", "a")]).unwrap_err(),
            Refused::Trace
        );
        assert!(
            h11(&[("host", "a"), ("x-georouter-region", "eu-west")])
                .unwrap()
                .owned
        );
        let mut h = HeaderMap::new();
        h.insert("x-georouter-region", HeaderValue::from_static("x"));
        h.insert("x-other", HeaderValue::from_static("y"));
        strip_owned(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn a_value_padded_with_whitespace_is_refused() {
        let h2 =
            |pairs: &[(&str, &str)]| head("GET", "https://api.example/x", Version::HTTP_2, pairs);
        for v in [" lead", "trail ", "\tlead", "trail\t", " "] {
            assert_eq!(
                h2(&[("x-a", v)]).unwrap_err(),
                Refused::FieldWhitespace,
                "{v:?}"
            );
        }
        assert!(!Refused::FieldWhitespace.closes());
        for v in ["a b", "a\tb", ""] {
            assert!(h2(&[("x-a", v)]).is_ok(), "{v:?}");
        }
    }
}
