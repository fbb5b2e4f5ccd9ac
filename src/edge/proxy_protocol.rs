//! PROXY protocol v1 and v2 at the start of a connection (parsed by the `ppp`
//! crate), for listeners behind an L4 load balancer: the client address it
//! reports becomes the peer address.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// A v2 header with TLVs can be long; HAProxy's own bound for what it reads.
const MAX_HEADER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("connection closed before a PROXY protocol header")]
    Closed,
    #[error("no valid PROXY protocol header at the start of the connection")]
    Invalid,
    #[error("PROXY protocol header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// Reads the header. Returns the client address it carries (`None` for
/// `UNKNOWN`/`LOCAL`, e.g. the balancer's own health checks) and the bytes read
/// past the header, which belong to the connection.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Option<SocketAddr>, Vec<u8>), ProxyHeaderError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        let mut chunk = [0u8; 256];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let parsed = HeaderResult::parse(&buf);
        if parsed.is_incomplete() {
            if buf.len() >= MAX_HEADER {
                return Err(ProxyHeaderError::TooLong);
            }
            continue;
        }
        let (len, addr) = match parsed {
            HeaderResult::V1(Ok(h)) => (
                h.header.len(),
                match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Unknown => None,
                },
            ),
            HeaderResult::V2(Ok(h)) => (
                h.len(),
                match h.addresses {
                    ppp::v2::Addresses::IPv4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v2::Addresses::IPv6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
                },
            ),
            HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => {
                return Err(ProxyHeaderError::Invalid)
            }
        };
        let rest = buf.split_off(len.min(buf.len()));
        return Ok((addr, rest));
    }
}

/// A stream that first yields bytes already read from it.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos < this.prefix.len() {
                return Poll::Ready(Ok(()));
            }
            // Spent: freed, and the same read goes on into the stream, so that
            // a reader gets a whole request head in one read rather than the
            // prefix alone (hyper would grow its buffer for the rest).
            this.prefix = Vec::new();
            this.pos = 0;
            if buf.remaining() > 0 {
                // Pending or an error now is the next read's business: the
                // prefix is what this one returns.
                let _ = Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

crate::edge::io_delegate::delegate_async_write!(Prefixed, inner);

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader gets the prefix and what the stream already has in one read
    /// (hyper would otherwise grow its buffer for the rest of the head), and
    /// the spent prefix is freed.
    #[tokio::test]
    async fn a_spent_prefix_reads_on_into_the_stream_and_is_freed() {
        use tokio::io::AsyncReadExt;
        let stream: &[u8] = b"/ HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut p = Prefixed::new(b"GET ".to_vec(), stream);
        let mut buf = [0u8; 64];
        let n = p.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(p.prefix.capacity(), 0);
        // A reader smaller than the prefix gets it in pieces, nothing skipped.
        let mut p = Prefixed::new(b"GET ".to_vec(), &b"/"[..]);
        let mut small = [0u8; 3];
        let n = p.read(&mut small).await.unwrap();
        assert_eq!(&small[..n], b"GET");
        let mut rest = Vec::new();
        p.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b" /");
    }

    #[tokio::test]
    async fn v1_header_gives_the_client_and_keeps_the_rest() {
        let mut input: &[u8] = b"PROXY TCP4 80.128.0.1 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let (addr, rest) = read_header(&mut input).await.unwrap();
        assert_eq!(addr, Some("80.128.0.1:56324".parse().unwrap()));
        let mut all = rest;
        all.extend_from_slice(input);
        assert_eq!(all, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn v2_header_gives_the_client() {
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::7]:4711".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut input = header.clone();
        input.extend_from_slice(b"GET");
        let (addr, rest) = read_header(&mut input.as_slice()).await.unwrap();
        assert_eq!(addr, Some("[2001:db8::7]:4711".parse().unwrap()));
        assert_eq!(rest, b"GET");
    }

    #[tokio::test]
    async fn unknown_source_and_garbage() {
        let mut input: &[u8] = b"PROXY UNKNOWN\r\n";
        assert_eq!(read_header(&mut input).await.unwrap().0, None);
        let mut input: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(
            read_header(&mut input).await,
            Err(ProxyHeaderError::Invalid)
        ));
        let mut input: &[u8] = b"PROXY TCP4 80.128";
        assert!(matches!(
            read_header(&mut input).await,
            Err(ProxyHeaderError::Closed)
        ));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn run<F: std::future::Future>(f: F) -> F::Output {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(f)
        }

        /// The client a header gives and every byte after it, as a
        /// connection would read them.
        fn read_back(bytes: &[u8]) -> (Option<SocketAddr>, Vec<u8>) {
            let mut input = bytes;
            let (addr, mut after) = run(read_header(&mut input)).unwrap();
            after.extend_from_slice(input);
            (addr, after)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn any_bytes_are_a_header_or_an_error_never_a_panic(
                v in prop::collection::vec(any::<u8>(), 0..600)
            ) {
                let mut input = &v[..];
                let _ = run(read_header(&mut input));
            }

            #[test]
            fn a_v1_header_round_trips_and_keeps_what_follows(
                src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
                sport in any::<u16>(), dport in any::<u16>(),
                rest in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                let (s, d) = (std::net::Ipv4Addr::from(src), std::net::Ipv4Addr::from(dst));
                let mut bytes = format!("PROXY TCP4 {s} {d} {sport} {dport}\r\n").into_bytes();
                bytes.extend_from_slice(&rest);
                prop_assert_eq!(read_back(&bytes), (Some(SocketAddr::from((s, sport))), rest));
            }

            #[test]
            fn a_v2_header_round_trips(
                src in any::<[u16; 8]>(), sport in any::<u16>(),
                rest in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                let s = std::net::Ipv6Addr::from(src);
                let mut bytes = ppp::v2::Builder::with_addresses(
                    ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                    ppp::v2::Protocol::Stream,
                    (
                        SocketAddr::from((s, sport)),
                        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 443)),
                    ),
                )
                .build()
                .unwrap();
                bytes.extend_from_slice(&rest);
                prop_assert_eq!(read_back(&bytes), (Some(SocketAddr::from((s, sport))), rest));
            }
        }
    }
}
