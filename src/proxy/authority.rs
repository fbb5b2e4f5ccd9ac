//! The request's authority (RFC 9110 7.2, RFC 3986 3.2.2): `host[:port]` with a
//! reg-name, an IPv4 address or a bracketed IPv6 literal. No userinfo, no
//! spaces: a value a region could read as another host is refused at the edge.

use std::net::Ipv6Addr;

/// Where a valid authority's host is, as routes match it: without brackets,
/// port or trailing dots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub start: u16,
    pub end: u16,
    /// The host has upper-case letters (routes match it lowered).
    pub upper: bool,
}

impl Host {
    /// The host inside `authority` (the value this was parsed from), lowered
    /// into `buf` when it has upper case.
    pub fn of<'b>(self, authority: &'b str, buf: &'b mut [u8; 256]) -> &'b str {
        let host = authority
            .get(usize::from(self.start)..usize::from(self.end))
            .unwrap_or("");
        if !self.upper || host.len() > buf.len() {
            return host;
        }
        let out = &mut buf[..host.len()];
        out.copy_from_slice(host.as_bytes());
        out.make_ascii_lowercase();
        std::str::from_utf8(out).unwrap_or("")
    }
}

/// A valid `host[:port]`'s host, or `None` if `v` is not one.
pub fn parse(v: &[u8]) -> Option<Host> {
    if v.first()? == &b'[' {
        return parse_literal(v);
    }
    // One pass to the port: bytes a reg-name holds as they are, and whether
    // any is upper case. Escapes (or anything else) take the careful look.
    let (mut every, mut any) = (ALLOWED, 0);
    let mut colon = v.len();
    for (i, &b) in v.iter().enumerate() {
        if b == b':' {
            colon = i;
            break;
        }
        let class = REG_NAME[usize::from(b)];
        every &= class;
        any |= class;
    }
    let (host, port) = (&v[..colon], v.get(colon + 1..));
    if host.is_empty() || host.len() > 255 || (every == 0 && !is_reg_name(host)) || !port_ok(port) {
        return None;
    }
    let trimmed = host.len() - host.iter().rev().take_while(|&&b| b == b'.').count();
    Some(Host {
        start: 0,
        end: trimmed as u16,
        upper: any & UPPER != 0,
    })
}

/// `[IPv6]` with an optional port.
fn parse_literal(v: &[u8]) -> Option<Host> {
    let end = v.iter().position(|&b| b == b']')?;
    let literal = std::str::from_utf8(&v[1..end]).ok()?;
    literal.parse::<Ipv6Addr>().ok()?;
    let port = match &v[end + 1..] {
        [] => None,
        [b':', port @ ..] => Some(port),
        _ => return None,
    };
    if !port_ok(port) {
        return None;
    }
    Some(Host {
        start: 1,
        end: end as u16,
        upper: literal.bytes().any(|b| b.is_ascii_uppercase()),
    })
}

fn port_ok(port: Option<&[u8]>) -> bool {
    port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
}

/// Bytes a reg-name may hold as they are (unreserved and sub-delims), and which
/// of them are upper case.
const ALLOWED: u8 = 1;
const UPPER: u8 = 2;
const REG_NAME: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() {
            t[b] = ALLOWED;
        }
        if c.is_ascii_uppercase() {
            t[b] |= UPPER;
        }
        b += 1;
    }
    let extra = b"-._~!$&'()*+,;=";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = ALLOWED;
        i += 1;
    }
    t
};

/// RFC 3986 reg-name (which covers IPv4 too): unreserved, sub-delims and
/// percent-escapes, at least one byte.
fn is_reg_name(h: &[u8]) -> bool {
    if h.is_empty() || h.len() > 255 {
        return false;
    }
    // The common case in one pass: a table look-up a byte, no escapes.
    if h.iter().all(|&b| REG_NAME[usize::from(b)] & ALLOWED != 0) {
        return true;
    }
    let mut i = 0;
    while i < h.len() {
        let b = h[i];
        if b == b'%' {
            let hex = |j: usize| h.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
            continue;
        }
        if REG_NAME[usize::from(b)] & ALLOWED == 0 {
            return false;
        }
        i += 1;
    }
    true
}

/// Splits a valid authority into host and port (if any).
fn split(v: &[u8]) -> (&[u8], Option<&[u8]>) {
    let at = if v.first() == Some(&b'[') {
        v.iter().position(|&b| b == b']').map(|end| end + 1)
    } else {
        v.iter().rposition(|&b| b == b':')
    };
    match at {
        Some(i) if v.get(i) == Some(&b':') => {
            (&v[..i], Some(&v[i + 1..]).filter(|p| !p.is_empty()))
        }
        _ => (v, None),
    }
}

/// Whether two authorities name the same host (case-insensitive) and port. A
/// port given on one side only is taken as the scheme's default on the other
/// (`example.com` and `example.com:80` agree; `:8080` does not).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    let ((ha, pa), (hb, pb)) = (split(a), split(b));
    if !ha.eq_ignore_ascii_case(hb) {
        return false;
    }
    let default = |p: &[u8]| p == b"80" || p == b"443";
    match (pa, pb) {
        (Some(x), Some(y)) => x == y,
        (Some(p), None) | (None, Some(p)) => default(p),
        (None, None) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_ports_and_literals_are_accepted() {
        for v in [
            "example.com",
            "Example.COM:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "a-b_c~d.example",
            "xn--bcher-kva.example",
            "host:",
        ] {
            assert!(parse(v.as_bytes()).is_some(), "{v}");
        }
    }

    #[test]
    fn the_host_is_found_without_brackets_port_or_trailing_dots() {
        let mut buf = [0u8; 256];
        for (v, host) in [
            ("example.com", "example.com"),
            ("Example.COM:8080", "example.com"),
            ("example.com.:80", "example.com"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("[2001:DB8::1]:443", "2001:db8::1"),
            ("[::1]", "::1"),
            ("host:", "host"),
        ] {
            let parsed = parse(v.as_bytes()).unwrap();
            assert_eq!(parsed.of(v, &mut buf), host, "{v}");
        }
    }

    #[test]
    fn authorities_agree_by_host_and_port() {
        assert!(same(b"Example.com", b"example.COM"));
        assert!(same(b"example.com:80", b"example.com"));
        assert!(same(b"example.com", b"example.com:443"));
        assert!(same(b"[::1]:8080", b"[::1]:8080"));
        assert!(!same(b"example.com:8080", b"example.com"));
        assert!(!same(b"example.com:8080", b"example.com:8081"));
        assert!(!same(b"a.example", b"b.example"));
        assert!(!same(b"[::1]", b"[::2]"));
    }

    #[test]
    fn what_a_region_could_read_as_another_host_is_refused() {
        for v in [
            "",
            ":80",
            "a b",
            "evil.com@127.0.0.1",
            "user:pass@host",
            "host:port",
            "host:123456",
            "[::1",
            "[not-ipv6]",
            "[::1]x",
            "exa\tmple.com",
            "bad%zz",
            "a/b",
            "a\\b",
            "a?b",
            "a#b",
        ] {
            assert!(parse(v.as_bytes()).is_none(), "{v:?}");
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn label() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9][a-zA-Z0-9-]{0,10}"
        }

        /// A valid authority and the host routes should see in it.
        fn authority() -> impl Strategy<Value = (String, String)> {
            let name = prop::collection::vec(label(), 1..4).prop_map(|l| l.join("."));
            let v4 = any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string());
            let v6 = any::<[u16; 8]>().prop_map(|s| format!("[{}]", Ipv6Addr::from(s)));
            (prop_oneof![name, v4, v6], proptest::option::of(1u16..)).prop_map(|(host, port)| {
                let seen = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_ascii_lowercase();
                let full = match port {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                };
                (full, seen)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn any_bytes_parse_without_panic(v in prop::collection::vec(any::<u8>(), 0..300)) {
                if let Some(h) = parse(&v) {
                    if let Ok(text) = std::str::from_utf8(&v) {
                        let mut buf = [0u8; 256];
                        let _ = h.of(text, &mut buf);
                    }
                }
                let _ = same(&v, b"example.com:80");
            }

            #[test]
            fn a_valid_authority_round_trips_to_its_host((full, seen) in authority()) {
                let h = parse(full.as_bytes());
                prop_assert!(h.is_some(), "{} refused", full);
                let mut buf = [0u8; 256];
                prop_assert_eq!(h.unwrap().of(&full, &mut buf), seen.as_str());
                prop_assert!(same(full.as_bytes(), full.to_ascii_uppercase().as_bytes()));
            }

            #[test]
            fn userinfo_spaces_and_slashes_never_pass(
                (full, _) in authority(),
                bad in prop::sample::select(vec!["@", " ", "/", "\\", "\t", "?", "#"]),
                at in 0usize..64,
            ) {
                let mut v = full.clone();
                let at = at % (v.len() + 1);
                v.insert_str(at, bad);
                prop_assert!(parse(v.as_bytes()).is_none(), "{:?} accepted", v);
            }
        }
    }
}
