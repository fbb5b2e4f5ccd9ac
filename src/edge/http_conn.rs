//! One client connection's HTTP: hyper's own HTTP/1.1 or HTTP/2 connection,
//! chosen by ALPN or, in cleartext, by the HTTP/2 preface, and boxed, so that
//! an idle connection holds only the one it speaks.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::config::Http2Tuning;
use crate::edge::proxy_protocol::Prefixed;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

/// Reads until the first bytes either differ from the HTTP/2 preface (HTTP/1)
/// or are the whole of it; the bytes read, to be read again. End of stream
/// before that: `None`.
pub async fn sniff<I: AsyncRead + Unpin>(
    io: &mut I,
) -> std::io::Result<Option<(Version, Vec<u8>)>> {
    let mut seen = [0u8; PREFACE.len()];
    let mut n = 0;
    loop {
        let read = io.read(&mut seen[n..]).await?;
        if read == 0 {
            return Ok(None);
        }
        n += read;
        if seen[..n] != PREFACE[..n] {
            return Ok(Some((Version::Http1, seen[..n].to_vec())));
        }
        if n == PREFACE.len() {
            return Ok(Some((Version::Http2, seen.to_vec())));
        }
    }
}

/// Both protocols' settings, made once per listener.
#[derive(Clone)]
pub struct Builders {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

impl std::fmt::Debug for Builders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Builders")
    }
}

impl Builders {
    pub fn new(
        max_header_bytes: usize,
        max_headers: usize,
        max_concurrent_streams: u32,
        idle_timeout: Duration,
        tuning: &Http2Tuning,
    ) -> Builders {
        let mut h1 = http1::Builder::new();
        // No hyper timer for HTTP/1.1: the header deadline is the connection
        // watchdog's (server::serve_connection), which costs no timer per request.
        h1.max_buf_size(max_header_bytes.max(8192))
            .max_headers(max_headers);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(max_concurrent_streams)
            .initial_stream_window_size(tuning.stream_window)
            .initial_connection_window_size(tuning.connection_window)
            .max_frame_size(tuning.max_frame_size)
            .adaptive_window(tuning.adaptive_window)
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(idle_timeout / 2))
            .keep_alive_timeout(Duration::from_secs(20));
        Builders {
            http1: h1,
            http2: h2,
        }
    }

    /// Serves `io` (whose first bytes, already read, are in its prefix) in
    /// `version` with `service`.
    pub fn serve<I, S, B>(&self, version: Version, io: Prefixed<I>, service: S) -> Served
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService<Incoming, ResBody = B> + Send + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let io = TokioIo::new(io);
        match version {
            Version::Http1 => Box::pin(self.http1.serve_connection(io, service).with_upgrades()),
            Version::Http2 => Box::pin(self.http2.serve_connection(io, service)),
        }
    }
}

/// A connection being served, whatever its stream and protocol: boxed, so
/// that the task serving it holds a pointer, not the largest of them.
pub type Served = Pin<Box<dyn Serving>>;

/// What the connection watchdog needs of a served connection.
pub trait Serving: Future<Output = hyper::Result<()>> + Send {
    /// HTTP/1.1: ends after the response in flight; HTTP/2: GOAWAY, and the
    /// open streams finish.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Serving for http1::UpgradeableConnection<TokioIo<Prefixed<I>>, S>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B> + Send,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, B> Serving for http2::Connection<TokioIo<Prefixed<I>>, S, TokioExecutor>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B> + Send,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_preface_means_http2_anything_else_http1() {
        let mut h2: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00";
        let (v, seen) = sniff(&mut h2).await.unwrap().unwrap();
        assert_eq!((v, seen.as_slice()), (Version::Http2, &PREFACE[..]));
        assert_eq!(h2, b"\x00\x00", "nothing past the preface is read");
        let mut h1: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        let (v, seen) = sniff(&mut h1).await.unwrap().unwrap();
        assert_eq!(v, Version::Http1);
        let mut all = seen;
        all.extend_from_slice(h1);
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
        // A PRI request that is not the preface is HTTP/1 (and refused there).
        let mut pri: &[u8] = b"PRI * HTTP/1.1\r\n";
        assert_eq!(sniff(&mut pri).await.unwrap().unwrap().0, Version::Http1);
        let mut empty: &[u8] = b"";
        assert!(sniff(&mut empty).await.unwrap().is_none());
    }
}
