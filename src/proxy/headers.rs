//! Header hygiene at the proxy boundary: hop-by-hop headers out (RFC 9110 7.6.1),
//! `X-Forwarded-*` in (or, for untrusted peers, replaced).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message (plus the legacy
/// `proxy-connection` that some clients still send).
const HOP_COUNT: usize = 8;
const HOP_BY_HOP: [HeaderName; HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_GEOROUTER_REGION: HeaderName = HeaderName::from_static("x-georouter-region");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// RFC 8470 5.2: the request came in TLS early data.
pub const EARLY_DATA: HeaderName = HeaderName::from_static("early-data");

/// What clients claim about who they are or where the request came from, that
/// frameworks read as the truth (Rails, Spring, IIS, Cloudflare, Akamai): the
/// `X-Forwarded-*` family and these, dropped from untrusted peers under
/// `client.forwarded = "replace"`.
const IDENTITY: [&str; 12] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-originating-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-forwarded-for",
];

/// Removes hop-by-hop headers and every header the `Connection` header names.
/// `TE: trailers` survives (gRPC needs it end to end); other `TE` values do not.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names notes which are there, a bit each: most messages
    // carry none of them or only `Connection`, and a removal costs a hash and a
    // probe. The same pass reads `Connection`'s values: most name no header,
    // only `keep-alive` or `close`, and then nothing is looked up again.
    const TE_BIT: u16 = 1 << HOP_COUNT;
    let mut present = 0u16;
    let mut names_headers = false;
    for (name, value) in headers.iter() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
            // HOP_BY_HOP[0] is `Connection`.
            if i == 0 && !names_headers {
                names_headers = connection_names(value).next().is_some();
            }
        } else if name == header::TE {
            present |= TE_BIT;
        }
    }
    if present == 0 {
        return;
    }
    if names_headers {
        remove_connection_named(headers);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if present & TE_BIT != 0 {
        let keep = headers
            .get(header::TE)
            .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !keep {
            headers.remove(header::TE);
        }
    }
}

/// The tokens of a `Connection` value that name headers (RFC 9110 7.6.1):
/// `keep-alive`, `close` and `upgrade` name nothing extra.
fn connection_names(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !is_connection_option(t))
}

/// Headers a `Connection` list may not remove: the router owes them to the
/// region (the host it routed by, the request id it logged, the forwarding
/// chain it read the client from).
fn owed(name: &HeaderName) -> bool {
    *name == header::TE
        || *name == header::HOST
        || *name == header::FORWARDED
        || *name == X_FORWARDED_FOR
        || *name == X_FORWARDED_PROTO
        || *name == X_FORWARDED_HOST
        || name.as_str() == crate::proxy::request_id::NAME
}

/// Removes the headers that `Connection` names, but not the ones the router owes.
fn remove_connection_named(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(connection_names)
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    for name in named {
        if !owed(&name) {
            headers.remove(name);
        }
    }
}

/// Connection options that are not header names (or name one removed anyway).
fn is_connection_option(token: &[u8]) -> bool {
    token.is_empty()
        || token.eq_ignore_ascii_case(b"keep-alive")
        || token.eq_ignore_ascii_case(b"close")
        || token.eq_ignore_ascii_case(b"upgrade")
}

/// The protocol a request asks to switch to (`Connection: upgrade` + `Upgrade: x`).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    // Two `Upgrade` lines are two readings of one list: no upgrade.
    let mut values = headers.get_all(header::UPGRADE).iter();
    match (asks, values.next(), values.next()) {
        (true, Some(v), None) => Some(v.clone()),
        _ => None,
    }
}

/// Whether a `101`'s `Upgrade` names a protocol the request asked for and was
/// allowed (`asked`): anything else is not spliced.
pub fn switched_as_asked(response: &HeaderMap, asked: &HeaderValue) -> bool {
    let Some(got) = response.get(header::UPGRADE) else {
        return false;
    };
    let got = got.as_bytes().trim_ascii();
    !got.contains(&b',')
        && asked
            .as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|t| t.eq_ignore_ascii_case(got))
}

/// Puts back what an upgrade needs after [`strip_hop_by_hop`].
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Appends the peer to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host`. `peer` is the peer IP already rendered (once per connection).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    proto: &HeaderValue,
    host: Option<&HeaderValue>,
) {
    match headers.entry(X_FORWARDED_FOR) {
        header::Entry::Vacant(e) => {
            e.insert(peer.clone());
        }
        header::Entry::Occupied(mut e) => {
            // Fold every earlier hop into one comma-separated value, then append.
            let mut joined = Vec::with_capacity(64);
            for v in e.iter() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(peer.as_bytes());
            match HeaderValue::from_bytes(&joined) {
                Ok(v) => {
                    e.insert(v);
                }
                Err(_) => {
                    e.insert(peer.clone());
                }
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO, proto.clone());
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST, h.clone());
    }
}

/// Removes what a client may claim about earlier hops or itself: `Forwarded`,
/// every `X-Forwarded-*` (`-Port`, `-Prefix`, `-Ssl`, `-Scheme`, `-Server`,
/// `-Uri`...) and the [`IDENTITY`] family (`client.forwarded = "replace"` for
/// untrusted peers).
pub fn strip_forwarded(headers: &mut HeaderMap) {
    let claims: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let n = n.as_str();
            n.starts_with("x-forwarded-") || n == "x-forwarded" || IDENTITY.contains(&n)
        })
        .cloned()
        .collect();
    for name in claims {
        headers.remove(name);
    }
}

/// More than one `Cookie` field, joined into one with "; " (RFC 9113 8.2.3,
/// RFC 9114 4.2.1: HTTP/2 and HTTP/3 split cookies into fields that must be
/// joined before an HTTP/1.1 hop). An HTTP/1.1 application may read only the
/// first `Cookie` line; the router reads them all, so the region gets them
/// as the router read them.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut joined = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// `Forwarded` and `X-Real-IP` that came with a request, written anew: the
/// peer appended to `Forwarded` (RFC 7239 `for=`, as to `X-Forwarded-For`),
/// and `X-Real-IP` set to the client as the router identified it.
pub fn rewrite_identity(headers: &mut HeaderMap, peer: std::net::IpAddr, client: std::net::IpAddr) {
    if let header::Entry::Occupied(mut e) = headers.entry(header::FORWARDED) {
        let mut joined = Vec::with_capacity(64);
        for v in e.iter() {
            joined.extend_from_slice(v.as_bytes());
            joined.extend_from_slice(b", ");
        }
        let node = match peer {
            std::net::IpAddr::V4(ip) => format!("for={ip}"),
            std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
        };
        joined.extend_from_slice(node.as_bytes());
        let value = HeaderValue::from_bytes(&joined).unwrap_or_else(|_| {
            HeaderValue::from_str(&node).expect("an address is a header value")
        });
        e.insert(value);
    }
    if headers.contains_key(X_REAL_IP) {
        headers.insert(
            X_REAL_IP,
            HeaderValue::from_str(&client.to_string()).expect("an address is a header value"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn headers_named_in_connection_are_removed() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
        // A name in a later `Connection` line counts as much as in the first.
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", " , x-later"),
            ("x-later", "1"),
            ("x-kept", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn te_trailers_survives_other_te_does_not() {
        let mut h = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key("te"));
        let mut h = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key("te"));
    }

    #[test]
    fn upgrade_needs_connection_upgrade() {
        let h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
        let h = map(&[("upgrade", "websocket")]);
        assert_eq!(upgrade_protocol(&h), None);
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let peer = HeaderValue::from_static("192.0.2.9");
        let proto = HeaderValue::from_static("https");
        let host = HeaderValue::from_static("api.example.com");
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        set_forwarded(&mut h, &peer, &proto, Some(&host));
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 10.0.0.1, 192.0.2.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example.com");

        let mut h = HeaderMap::new();
        set_forwarded(&mut h, &peer, &proto, None);
        assert_eq!(h["x-forwarded-for"], "192.0.2.9");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn split_cookies_are_joined_in_order() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        h.append(header::HOST, HeaderValue::from_static("x"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
        assert_eq!(h.len(), 2);
    }
}
