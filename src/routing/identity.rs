//! Who the client is: the peer address of the connection, or, when the peer is a
//! trusted proxy, the first untrusted hop of `X-Forwarded-For` / `Forwarded`
//! walked from the right. Newtypes keep peer and client from being confused.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// The address at the other end of the TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl PeerAddr {
    /// The peer's IP, IPv4-mapped IPv6 shown as IPv4.
    pub fn ip(&self) -> IpAddr {
        canonical(self.0.ip())
    }
}

/// The address the policy routes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Networks whose hops are believed when they say who they forwarded for.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The client of a request. The peer, unless the peer is a trusted proxy: then
/// the rightmost hop that is not trusted (`X-Forwarded-For`, else `Forwarded`).
/// A hop that is not an address (garbage, `unknown`, an obfuscated name) ends
/// the walk at the peer: it cannot be routed on, and guessing past it would let
/// the client choose.
pub fn client_ip(peer: PeerAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> ClientIp {
    let peer_ip = peer.ip();
    if trusted.is_empty() || !trusted.contains(peer_ip) {
        return ClientIp(peer_ip);
    }
    let walked = if headers.contains_key(X_FORWARDED_FOR) {
        walk(
            headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .rev()
                .flat_map(|v| v.as_bytes().rsplit(|&b| b == b','))
                .map(parse_hop),
            trusted,
        )
    } else if headers.contains_key(FORWARDED) {
        walk(
            headers
                .get_all(FORWARDED)
                .iter()
                .rev()
                .flat_map(|v| v.as_bytes().rsplit(|&b| b == b','))
                .map(forwarded_for),
            trusted,
        )
    } else {
        None
    };
    ClientIp(walked.unwrap_or(peer_ip))
}

/// Right to left: the first hop outside the trusted networks; the leftmost hop
/// when all are trusted; `None` on garbage or no hop at all.
fn walk(hops: impl Iterator<Item = Option<IpAddr>>, trusted: &TrustedProxies) -> Option<IpAddr> {
    let mut last = None;
    for hop in hops {
        let ip = hop?;
        if !trusted.contains(ip) {
            return Some(ip);
        }
        last = Some(ip);
    }
    last
}

/// One `X-Forwarded-For` element: `a.b.c.d`, `a.b.c.d:port`, `v6`, `[v6]:port`.
fn parse_hop(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    parse_node(s)
}

fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let v6 = rest.split(']').next()?;
        return v6.parse().ok().map(canonical);
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The `for=` node of one `Forwarded` element (RFC 7239), if it is an address.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(element).ok()?;
    let node = s.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })?;
    parse_node(node)
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, from dual-stack sockets) are IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn client(peer: &str, pairs: &[(&str, &str)], nets: &[&str]) -> String {
        let peer = PeerAddr(peer.parse().unwrap());
        client_ip(peer, &headers(pairs), &trusted(nets))
            .0
            .to_string()
    }

    const LB: &[&str] = &["10.0.0.0/8", "fd00::/8"];

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let c = client("192.0.2.7:5555", &[("x-forwarded-for", "80.128.0.1")], LB);
        assert_eq!(c, "192.0.2.7");
    }

    #[test]
    fn no_trusted_proxies_means_the_peer() {
        let c = client("10.0.0.1:5555", &[("x-forwarded-for", "80.128.0.1")], &[]);
        assert_eq!(c, "10.0.0.1");
    }

    #[test]
    fn trusted_proxy_stops_at_the_first_untrusted_hop_from_the_right() {
        // Client-supplied 1.1.1.1 is left of the real client 80.128.0.1.
        let c = client(
            "10.0.0.1:5555",
            &[("x-forwarded-for", "1.1.1.1, 80.128.0.1, 10.0.0.9")],
            LB,
        );
        assert_eq!(c, "80.128.0.1");
    }

    #[test]
    fn several_header_lines_are_one_list() {
        let c = client(
            "10.0.0.1:5555",
            &[
                ("x-forwarded-for", "1.1.1.1, 80.128.0.1"),
                ("x-forwarded-for", "10.2.3.4"),
            ],
            LB,
        );
        assert_eq!(c, "80.128.0.1");
    }

    #[test]
    fn all_hops_trusted_gives_the_leftmost() {
        let c = client(
            "10.0.0.1:1",
            &[("x-forwarded-for", "10.9.9.9, 10.0.0.5")],
            LB,
        );
        assert_eq!(c, "10.9.9.9");
    }

    #[test]
    fn garbage_falls_back_to_the_peer() {
        for xff in ["not-an-ip", "80.128.0.1, bogus", "", "unknown"] {
            let c = client("10.0.0.1:1", &[("x-forwarded-for", xff)], LB);
            assert_eq!(c, "10.0.0.1", "X-Forwarded-For: {xff:?}");
        }
    }

    #[test]
    fn ports_and_ipv6_forms_are_understood() {
        let c = client("10.0.0.1:1", &[("x-forwarded-for", "80.128.0.1:443")], LB);
        assert_eq!(c, "80.128.0.1");
        let c = client(
            "[fd00::1]:1",
            &[("x-forwarded-for", "2001:db8::7, fd00::2")],
            LB,
        );
        assert_eq!(c, "2001:db8::7");
        let c = client(
            "10.0.0.1:1",
            &[("x-forwarded-for", "[2001:db8::7]:8443")],
            LB,
        );
        assert_eq!(c, "2001:db8::7");
    }

    #[test]
    fn forwarded_header_is_used_without_x_forwarded_for() {
        let c = client(
            "10.0.0.1:1",
            &[(
                "forwarded",
                "for=1.1.1.1, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.3",
            )],
            LB,
        );
        assert_eq!(c, "2001:db8:cafe::17");
        let c = client(
            "10.0.0.1:1",
            &[("forwarded", "for=_hidden, for=10.0.0.3")],
            LB,
        );
        assert_eq!(c, "10.0.0.1");
    }

    #[test]
    fn ipv4_mapped_peer_is_seen_as_ipv4() {
        let c = client("[::ffff:192.0.2.7]:5555", &[], &[]);
        assert_eq!(c, "192.0.2.7");
        let c = client(
            "[::ffff:10.0.0.1]:5555",
            &[("x-forwarded-for", "80.128.0.1")],
            LB,
        );
        assert_eq!(c, "80.128.0.1");
    }
}
