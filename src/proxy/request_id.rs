//! `x-request-id`: the client's (or its gateway's) when it is a sane token,
//! else one the router makes; passed to the region, logged, and put on every
//! answer the router writes itself, so a client's report finds its log line.

use http::header::{HeaderName, HeaderValue};

pub const NAME: &str = "x-request-id";
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static(NAME);

/// A request's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestId {
    /// The client's (or its gateway's), passed on as it came.
    Given(HeaderValue),
    /// Made here: 64 random bits, rendered as 16 hex digits only when needed.
    Made(u64),
}

impl RequestId {
    /// The id as a header value.
    pub fn header(&self) -> HeaderValue {
        match self {
            RequestId::Given(v) => v.clone(),
            RequestId::Made(n) => {
                HeaderValue::from_bytes(&hex(*n)).expect("hex digits are a header value")
            }
        }
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestId::Given(v) => f.write_str(v.to_str().unwrap_or("-")),
            RequestId::Made(n) => f.write_str(std::str::from_utf8(&hex(*n)).unwrap_or("-")),
        }
    }
}

fn hex(mut n: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    out
}

/// The request's id: the one it carries (`given`, its `x-request-id`) when that
/// is 1 to 128 visible ASCII characters, else a new random one.
pub fn of(given: Option<&HeaderValue>) -> RequestId {
    if let Some(v) = given {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return RequestId::Given(v.clone());
        }
    }
    RequestId::Made(fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_id_is_kept_and_anything_else_replaced() {
        let given = HeaderValue::from_static("abc-123");
        assert_eq!(of(Some(&given)), RequestId::Given(given.clone()));
        let id = of(Some(&HeaderValue::from_static("has space")));
        assert!(matches!(id, RequestId::Made(_)), "{id:?}");
        assert_eq!(id.header().len(), 16);
        assert_eq!(id.to_string(), id.header().to_str().unwrap());
        let long = "x".repeat(129);
        let long = HeaderValue::from_str(&long).unwrap();
        assert!(matches!(of(Some(&long)), RequestId::Made(_)));
        assert!(matches!(of(None), RequestId::Made(_)));
        assert_eq!(RequestId::Made(0xab).to_string(), "00000000000000ab");
    }
}
