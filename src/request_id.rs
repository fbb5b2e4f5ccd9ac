//! `x-request-id`: the client's (or its gateway's) when it is a sane token,
//! else one the router makes; passed to the region, logged, and put on every
//! answer the router writes itself, so a client's report finds its log line.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id: the one it carries when that is 1 to 128 visible ASCII
/// characters, else a new random one (16 hex digits).
pub fn of(headers: &HeaderMap) -> (HeaderValue, bool) {
    if let Some(v) = headers.get(X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return (v.clone(), false);
        }
    }
    (new(), true)
}

/// A fresh id: 64 random bits in hex.
pub fn new() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u64(..);
    let mut out = [0u8; 16];
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&out).expect("hex digits are a header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_id_is_kept_and_anything_else_replaced() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(of(&h), (HeaderValue::from_static("abc-123"), false));
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        let (id, made) = of(&h);
        assert!(made && id.len() == 16, "{id:?}");
        let long = "x".repeat(129);
        h.insert(X_REQUEST_ID, HeaderValue::from_str(&long).unwrap());
        assert!(of(&h).1);
        assert!(of(&HeaderMap::new()).1);
        assert_ne!(new(), new());
    }
}
