//! Upstream connections, pooled per worker thread and per endpoint: HTTP/1.1 senders
//! reused most-recent-first, one multiplexed HTTP/2 sender, TLS by rustls.
//!
//! Why not hyper-util's legacy client: it hands the request over before it
//! connects, so a connect failure loses the request (no failover for a POST), and
//! it spawns a task per HTTP/1.1 request to return the connection. Here the
//! connection exists before the request is committed, and a sender goes back to
//! the pool when its response body ends. See docs/performance.md for numbers.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{EndpointSpec, Http2Tuning, Protocol};
use crate::proxy::client_body::ClientBody;
use crate::routing::table::{Region, RoutingTable};

mod probe;
pub use probe::{probe, ProbeError};

/// A request body on its way upstream: the client's (with the size limit), or none.
pub type UpstreamBody = Either<Limited<ClientBody>, Empty<Bytes>>;

/// Where a pooled sender belongs: table generation, region, endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    generation: u64,
    region: u16,
    endpoint: u16,
}

#[derive(Default)]
struct EndpointPool {
    /// Idle HTTP/1.1 senders, most recently returned last.
    idle: Vec<(http1::SendRequest<UpstreamBody>, Instant)>,
    http2: Option<http2::SendRequest<UpstreamBody>>,
}

#[derive(Default)]
struct ThreadPools {
    generation: u64,
    /// `[region][endpoint]`.
    endpoints: Vec<Vec<EndpointPool>>,
    /// What each pool's connections were made with (`[region][endpoint]`).
    keys: Vec<Vec<String>>,
    /// The HTTP/2 settings they were made with.
    http2: Option<crate::config::Http2Tuning>,
    max_idle: usize,
    idle_timeout: std::time::Duration,
    /// When a sender last came back: a clock reading that checkouts reuse. It can
    /// only be earlier than now, so at worst a stale connection is tried, found
    /// closed, and replaced (see `forward`).
    last_return: Option<Instant>,
}

thread_local! {
    static POOLS: RefCell<ThreadPools> = RefCell::new(ThreadPools::default());
}

fn with_pools<R>(table: &RoutingTable, f: impl FnOnce(&mut ThreadPools) -> R) -> R {
    POOLS.with(|cell| {
        let mut pools = cell.borrow_mut();
        if pools.generation != table.generation() {
            renew(&mut pools, table);
        }
        f(&mut pools)
    })
}

/// What the connections of `region`'s endpoint `ep` are made with: a
/// reload that keeps it keeps them.
fn connection_key(region: &Region, ep: &EndpointSpec) -> String {
    format!(
        "{}://{} {:?} {}",
        ep.scheme, ep.authority, ep.protocol, region.connection_key
    )
}

/// A new table on this thread: pools of endpoints whose connections would be
/// made the same way (address, protocol, TLS files, HTTP/2 settings) carry
/// over, so a reload does not reconnect to every region; the others close as
/// they drop.
fn renew(pools: &mut ThreadPools, table: &RoutingTable) {
    let http2 = table.settings.upstream.http2;
    let mut old: std::collections::HashMap<String, EndpointPool> = Default::default();
    if pools.http2 == Some(http2) {
        for (keys, eps) in pools.keys.drain(..).zip(pools.endpoints.drain(..)) {
            old.extend(keys.into_iter().zip(eps));
        }
    }
    let keys: Vec<Vec<String>> = table
        .regions()
        .iter()
        .map(|r| r.endpoints.iter().map(|e| connection_key(r, e)).collect())
        .collect();
    let endpoints = keys
        .iter()
        .map(|eps| {
            eps.iter()
                .map(|k| old.remove(k).unwrap_or_default())
                .collect()
        })
        .collect();
    *pools = ThreadPools {
        generation: table.generation(),
        endpoints,
        keys,
        http2: Some(http2),
        max_idle: table.settings.upstream.pool_max_idle_per_endpoint,
        idle_timeout: table.settings.upstream.pool_idle_timeout,
        last_return: pools.last_return,
    };
}

/// Closes this thread's idle HTTP/1.1 connections that have waited
/// `pool_idle_timeout` or longer (or were closed by the region), and forgets
/// closed HTTP/2 ones. Returns how many idle connections it closed.
pub fn reap_idle(now: Instant) -> usize {
    POOLS.with(|cell| {
        let Ok(mut p) = cell.try_borrow_mut() else {
            return 0;
        };
        let timeout = p.idle_timeout;
        let mut closed = 0;
        for ep in p.endpoints.iter_mut().flatten() {
            let before = ep.idle.len();
            ep.idle.retain(|(s, since)| {
                !s.is_closed() && now.saturating_duration_since(*since) < timeout
            });
            closed += before - ep.idle.len();
            if ep.http2.as_ref().is_some_and(|s| s.is_closed()) {
                ep.http2 = None;
            }
        }
        closed
    })
}

/// Idle HTTP/1.1 connections in this thread's pool.
pub fn idle_connections() -> usize {
    POOLS.with(|cell| {
        cell.try_borrow().map_or(0, |p| {
            p.endpoints.iter().flatten().map(|e| e.idle.len()).sum()
        })
    })
}

/// Reaps this thread's pool by a timer until `shutdown` fires: an idle
/// connection closes at most a quarter of `pool_idle_timeout` (and at most a
/// second) after its time, whether or not another request comes.
pub async fn reap(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let timeout = POOLS.with(|c| c.try_borrow().map_or(Duration::ZERO, |p| p.idle_timeout));
        let every = if timeout.is_zero() {
            Duration::from_secs(1)
        } else {
            (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        reap_idle(Instant::now());
    }
}

/// Why no connection could be had. The request was not sent.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {authority} timed out")]
    Timeout { authority: String },
    #[error("connect to {authority}: {source}")]
    Io {
        authority: String,
        source: std::io::Error,
    },
    #[error("TLS to {authority}: {source}")]
    Tls {
        authority: String,
        source: std::io::Error,
    },
    #[error("{authority} is not a valid TLS server name")]
    ServerName { authority: String },
    #[error("HTTP handshake with {authority}: {source}")]
    Handshake {
        authority: String,
        source: hyper::Error,
    },
}

/// A failed send: with the request back when none of it reached the upstream.
#[derive(Debug)]
pub struct SendError {
    pub error: hyper::Error,
    pub unsent: Option<Request<UpstreamBody>>,
}

/// A connection ready for one request.
pub struct Lease {
    sender: Sender,
    slot: Slot,
    /// Came from the pool (it may have gone stale) rather than freshly connected.
    pub reused: bool,
}

enum Sender {
    Http1(http1::SendRequest<UpstreamBody>),
    Http2(http2::SendRequest<UpstreamBody>),
}

/// A pooled connection to endpoint `endpoint` of `region`, or a new one.
pub async fn checkout(
    table: &RoutingTable,
    region: &Region,
    endpoint: usize,
) -> Result<Lease, ConnectError> {
    let slot = Slot {
        generation: table.generation(),
        region: region.id.0,
        endpoint: endpoint as u16,
    };
    let ep = &region.endpoints[endpoint];
    let pooled = with_pools(table, |p| {
        let idle_timeout = p.idle_timeout;
        let now = p.last_return;
        let pool = &mut p.endpoints[usize::from(slot.region)][endpoint];
        match ep.protocol {
            Protocol::Http1 => {
                while let Some((s, since)) = pool.idle.pop() {
                    let idle_for =
                        now.map_or(Default::default(), |n| n.saturating_duration_since(since));
                    if !s.is_closed() && idle_for < idle_timeout {
                        return Some(Sender::Http1(s));
                    }
                }
                None
            }
            Protocol::Http2 => match &pool.http2 {
                Some(s) if !s.is_closed() => Some(Sender::Http2(s.clone())),
                _ => None,
            },
        }
    });
    if let Some(sender) = pooled {
        return Ok(Lease {
            sender,
            slot,
            reused: true,
        });
    }
    let timeout = table.settings.upstream.connect_timeout;
    // Boxed: a TLS handshake's state is large, and it would otherwise make every
    // request's future (moved into each HTTP/2 stream's task) as large.
    let sender = Box::pin(tokio::time::timeout(
        timeout,
        connect(region, ep, &table.settings.upstream.http2),
    ))
    .await
    .map_err(|_| ConnectError::Timeout {
        authority: ep.authority.to_string(),
    })??;
    if let Sender::Http2(s) = &sender {
        let s = s.clone();
        with_pools(table, |p| {
            p.endpoints[usize::from(slot.region)][endpoint].http2 = Some(s);
        });
    }
    Ok(Lease {
        sender,
        slot,
        reused: false,
    })
}

impl Lease {
    /// Sends the request. An HTTP/1.1 sender returns to the pool when the response
    /// body has been read to its end.
    pub async fn send(self, req: Request<UpstreamBody>) -> Result<Response<PooledBody>, SendError> {
        match self.sender {
            Sender::Http1(mut s) => {
                if let Err(error) = s.ready().await {
                    return Err(SendError {
                        error,
                        unsent: Some(req),
                    });
                }
                match s.try_send_request(req).await {
                    Ok(resp) => {
                        // An upgraded connection is no longer HTTP: never pool it.
                        let back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
                            .then_some((s, self.slot));
                        Ok(resp.map(|body| PooledBody {
                            body,
                            back,
                            streaming: None,
                            slot: None,
                            log: None,
                        }))
                    }
                    Err(mut e) => Err(SendError {
                        unsent: e.take_message(),
                        error: e.into_error(),
                    }),
                }
            }
            Sender::Http2(mut s) => match s.try_send_request(req).await {
                Ok(resp) => Ok(resp.map(|body| PooledBody {
                    body,
                    back: None,
                    streaming: None,
                    slot: None,
                    log: None,
                })),
                Err(mut e) => Err(SendError {
                    unsent: e.take_message(),
                    error: e.into_error(),
                }),
            },
        }
    }
}

/// An upstream response body that gives its connection back when it ends.
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    back: Option<(http1::SendRequest<UpstreamBody>, Slot)>,
    streaming: Option<crate::edge::activity::Streaming>,
    /// The request's place in its endpoint's `max_in_flight`, until the body ends.
    slot: Option<crate::routing::capacity::InFlight>,
    /// The access log's line, written when the body is done (or dropped).
    log: Option<Box<crate::proxy::access_log::Line>>,
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let Some(line) = self.log.take() {
            line.write();
        }
    }
}

impl PooledBody {
    /// Writes the access log's line when this body is done, with the bytes
    /// it handed over.
    pub(crate) fn log_when_done(&mut self, line: Box<crate::proxy::access_log::Line>) {
        self.log = Some(line);
    }

    /// Keeps the request counted in flight to its endpoint until this body is done.
    pub fn hold_slot(&mut self, slot: crate::routing::capacity::InFlight) {
        if !self.body.is_end_stream() {
            self.slot = Some(slot);
        }
    }

    /// Keeps the client connection counted busy until this body is done.
    pub fn hold(&mut self, streaming: crate::edge::activity::Streaming) {
        self.streaming = Some(streaming);
    }

    fn give_back(&mut self) {
        let Some((sender, slot)) = self.back.take() else {
            return;
        };
        POOLS.with(|cell| {
            let Ok(mut p) = cell.try_borrow_mut() else {
                return;
            };
            if p.generation != slot.generation {
                return;
            }
            let max_idle = p.max_idle;
            let now = Instant::now();
            p.last_return = Some(now);
            let Some(pool) = p
                .endpoints
                .get_mut(usize::from(slot.region))
                .and_then(|r| r.get_mut(usize::from(slot.endpoint)))
            else {
                return;
            };
            if pool.idle.len() >= max_idle {
                // Full: the oldest idle connection makes room.
                pool.idle.remove(0);
            }
            pool.idle.push((sender, now));
        });
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(line)) = (&polled, &mut self.log) {
            if let Some(data) = frame.data_ref() {
                line.sent(data.len());
            }
        }
        match &polled {
            // The connection goes back before the slot, so the request the
            // slot lets in finds it idle rather than opening another.
            Poll::Ready(None) => {
                self.give_back();
                self.slot = None;
            }
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => {
                self.give_back();
                self.slot = None;
            }
            Poll::Ready(Some(Err(_))) => {
                self.slot = None;
                self.back = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

async fn connect(
    region: &Region,
    ep: &EndpointSpec,
    tuning: &Http2Tuning,
) -> Result<Sender, ConnectError> {
    let authority = || ep.authority.to_string();
    let host = ep.authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let default_port = if ep.scheme == http::uri::Scheme::HTTPS {
        443
    } else {
        80
    };
    let port = ep.authority.port_u16().unwrap_or(default_port);
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| ConnectError::Io {
            authority: authority(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    if ep.scheme != http::uri::Scheme::HTTPS {
        return handshake(tcp, ep, tuning).await;
    }
    let tls = match ep.protocol {
        Protocol::Http1 => region.tls_http1.clone(),
        Protocol::Http2 => region.tls_http2.clone(),
    }
    .expect("regions with https endpoints have TLS configs");
    let name = ServerName::try_from(host.to_owned()).map_err(|_| ConnectError::ServerName {
        authority: authority(),
    })?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|source| ConnectError::Tls {
            authority: authority(),
            source,
        })?;
    handshake(stream, ep, tuning).await
}

async fn handshake<I>(
    io: I,
    ep: &EndpointSpec,
    tuning: &Http2Tuning,
) -> Result<Sender, ConnectError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let failed = |source| ConnectError::Handshake {
        authority: ep.authority.to_string(),
        source,
    };
    match ep.protocol {
        Protocol::Http1 => {
            // Request heads are small and most requests carry no body: one flat
            // buffer costs less than building an iovec (measured: bench/instructions.sh).
            let (sender, conn) = http1::Builder::new()
                .writev(false)
                .handshake(io)
                .await
                .map_err(failed)?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
            });
            Ok(Sender::Http1(sender))
        }
        Protocol::Http2 => {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(std::time::Duration::from_secs(20))
                .initial_stream_window_size(tuning.stream_window)
                .initial_connection_window_size(tuning.connection_window)
                .max_frame_size(tuning.max_frame_size)
                .adaptive_window(tuning.adaptive_window)
                .handshake(io)
                .await
                .map_err(failed)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            Ok(Sender::Http2(sender))
        }
    }
}
