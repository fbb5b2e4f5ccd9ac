//! The request's authority (RFC 9110 7.2, RFC 3986 3.2.2): `host[:port]` with a
//! reg-name, an IPv4 address or a bracketed IPv6 literal. No userinfo, no
//! spaces: a value a region could read as another host is refused at the edge.

use std::net::Ipv6Addr;

/// Whether `v` is a valid `host[:port]`.
pub fn is_valid(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        None => return false,
        Some(b'[') => {
            let Some(end) = v.iter().position(|&b| b == b']') else {
                return false;
            };
            let literal = std::str::from_utf8(&v[1..end]).ok();
            if literal.and_then(|s| s.parse::<Ipv6Addr>().ok()).is_none() {
                return false;
            }
            match &v[end + 1..] {
                [] => (&v[..=end], None),
                [b':', port @ ..] => (&v[..=end], Some(port)),
                _ => return false,
            }
        }
        Some(_) => match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        },
    };
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    if !port_ok {
        return false;
    }
    let host_ok = host.first() == Some(&b'[') || is_reg_name(host);
    port_ok && host_ok
}

/// Bytes a reg-name may hold as they are: unreserved and sub-delims.
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~!$&'()*+,;=";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
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
    if h.iter().all(|&b| REG_NAME[usize::from(b)]) {
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
        if !REG_NAME[usize::from(b)] {
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
            assert!(is_valid(v.as_bytes()), "{v}");
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
            assert!(!is_valid(v.as_bytes()), "{v:?}");
        }
    }
}
