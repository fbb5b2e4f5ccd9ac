//! Who the client is: the peer address of the connection, turned into the client
//! IP the policy routes on. Newtypes keep the two from being confused.

use std::net::{IpAddr, SocketAddr};

/// The address at the other end of the TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The address the policy routes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The client of a request. Until trusted proxies are configurable, it is the peer.
pub fn client_ip(peer: PeerAddr) -> ClientIp {
    ClientIp(canonical(peer.0.ip()))
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

    #[test]
    fn client_is_the_peer() {
        let peer = PeerAddr("192.0.2.7:5555".parse().unwrap());
        assert_eq!(client_ip(peer).0, "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ipv4_mapped_peer_is_seen_as_ipv4() {
        let peer = PeerAddr("[::ffff:192.0.2.7]:5555".parse().unwrap());
        assert_eq!(client_ip(peer).0, "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn plain_ipv6_peer_stays_ipv6() {
        let peer = PeerAddr("[2001:db8::1]:5555".parse().unwrap());
        assert_eq!(client_ip(peer).0, "2001:db8::1".parse::<IpAddr>().unwrap());
    }
}
