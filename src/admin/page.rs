//! The status page on the admin listener's `/`: three files embedded in the
//! binary (no CDN), served under a policy that lets them load nothing else.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// Only the page's own script, styles and API; never framed (clickjacking a
/// drain button), never a form posted elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The embedded file at `path`, if it is one of the page's.
pub fn asset(path: &str) -> Option<Response<Full<Bytes>>> {
    let (content_type, body): (&str, &'static str) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", include_str!("page/index.html")),
        "/status.css" => ("text/css; charset=utf-8", include_str!("page/status.css")),
        "/status.js" => (
            "text/javascript; charset=utf-8",
            include_str!("page/status.js"),
        ),
        _ => return None,
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The binary's own files: revalidated, so an upgrade shows its page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}
