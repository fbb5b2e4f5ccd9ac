//! Accept loops: TCP or TLS, HTTP/1.1 and HTTP/2 (h2c prior knowledge, ALPN h2) on
//! one listener; connection cap, header and idle deadlines; graceful shutdown.
//! What is served on a connection is the [`App`]'s: the edge knows no proxy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::HttpService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::config::{ListenerSpec, ServerSettings};
use crate::edge::activity::Activity;
use crate::edge::h3::body::H3Body;
use crate::edge::head_guard::Verdicts;
use crate::edge::http_conn::{Builders, Served, Version};

/// What the edge learnt of a connection it opened, handed to the [`App`].
#[derive(Debug)]
pub struct Opened {
    /// The client's address (the PROXY header's, when the listener takes one).
    pub peer: std::net::SocketAddr,
    pub tls: bool,
    /// What the connection is doing: the edge's deadlines and pressure read it.
    pub activity: Arc<Activity>,
    /// What the HTTP/1.1 framing guard found, per request.
    pub verdicts: Arc<Verdicts>,
    /// TLS: the names the certificate this connection was given covers.
    pub cert_names: Option<Arc<[Box<str>]>>,
    /// `Alt-Svc` for its responses, when the listener serves HTTP/3 too.
    pub alt_svc: Option<http::HeaderValue>,
}

/// A future a worker runs beside its listeners until shutdown.
pub type WorkerTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// What the edge serves on each connection, and what each worker runs beside
/// it; `launch` hands it over, so the edge names no service of its own.
pub trait App: Clone + Send + Sync + 'static {
    type Body: Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send>
        + Send
        + 'static;
    type Service: HttpService<Incoming, ResBody = Self::Body, Future: Send + 'static>
        + hyper::service::Service<
            http::Request<H3Body>,
            Response = http::Response<Self::Body>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Send
        + Sync
        + 'static;
    /// The service for the requests of one opened connection.
    fn service(&self, opened: Opened) -> Self::Service;
    /// Work each worker thread runs until `shutdown` (pools, allocator).
    fn worker_tasks(&self, shutdown: &Shutdown) -> Vec<WorkerTask>;
}

/// A bound listening socket, ready to serve; TLS when it has an acceptor.
pub struct Listener {
    pub name: String,
    pub tcp: std::net::TcpListener,
    pub tls: Option<TlsAcceptor>,
    /// The names each certificate covers (TLS listeners).
    pub cert_names: Option<Arc<crate::tls::CertNames>>,
    /// Connections start with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
    /// `Alt-Svc` its responses carry: HTTP/3 beside it.
    pub alt_svc: Option<http::HeaderValue>,
    /// Its HTTP/3 endpoint, served by the first worker that takes it.
    pub quic: Option<crate::edge::h3::QuicSlot>,
}

impl Listener {
    /// Another handle on the same socket, for another worker thread.
    pub fn try_clone(&self) -> std::io::Result<Listener> {
        Ok(Listener {
            name: self.name.clone(),
            tcp: self.tcp.try_clone()?,
            tls: self.tls.clone(),
            cert_names: self.cert_names.clone(),
            proxy_protocol: self.proxy_protocol,
            alt_svc: self.alt_svc.clone(),
            quic: self.quic.clone(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("listeners[{index}]: cannot listen on {address}: {source}")]
    Listen {
        index: usize,
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("listeners[{index}].tls: {source}")]
    Tls {
        index: usize,
        source: crate::tls::TlsError,
    },
    #[error("listeners[{index}].http3: {source}")]
    Quic {
        index: usize,
        source: crate::edge::h3::QuicError,
    },
}

/// Binds every configured listener and loads its certificates. Called at the
/// binary's edge; everything below takes already-bound listeners.
pub fn bind(specs: &[ListenerSpec], server: &ServerSettings) -> Result<Vec<Listener>, BindError> {
    specs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let tls = match &spec.tls {
                Some(tls) => Some(TlsAcceptor::from(
                    crate::tls::server_config(tls)
                        .map_err(|source| BindError::Tls { index, source })?,
                )),
                None => None,
            };
            let tcp =
                std::net::TcpListener::bind(spec.address).map_err(|source| BindError::Listen {
                    index,
                    address: spec.address,
                    source,
                })?;
            let cert_names = spec
                .tls
                .as_ref()
                .map(|t| Arc::new(crate::tls::CertNames::of(t)));
            let (quic, alt_svc) = match &spec.http3 {
                Some(h3) => {
                    let tcp = tcp.local_addr().map_err(|source| BindError::Listen {
                        index,
                        address: spec.address,
                        source,
                    })?;
                    let (quic, alt_svc) =
                        crate::edge::h3::bind(spec, h3, tcp, cert_names.clone(), server)
                            .map_err(|source| BindError::Quic { index, source })?;
                    (Some(quic), Some(alt_svc))
                }
                None => (None, None),
            };
            Ok(Listener {
                name: spec.name.clone(),
                cert_names,
                tcp,
                tls,
                proxy_protocol: spec.proxy_protocol,
                alt_svc,
                quic,
            })
        })
        .collect()
}

/// The number of worker threads for a `workers` setting (0 = one per usable core).
pub fn worker_count(setting: usize) -> usize {
    if setting > 0 {
        return setting;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Starts `count` worker threads, each with its own single-threaded runtime serving
/// every listener until `shutdown` fires. Measured against one multi-threaded
/// runtime, this layout served ~20% more requests per core (see README).
pub fn spawn_workers<A: App>(
    count: usize,
    listeners: &[Listener],
    app: &A,
    limits: &ConnLimits,
    shutdown: &Shutdown,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    (0..count)
        .map(|i| {
            let mine = listeners
                .iter()
                .map(Listener::try_clone)
                .collect::<std::io::Result<Vec<_>>>()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (app, limits, shutdown) = (app.clone(), limits.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name(format!("georouter-worker-{i}"))
                .spawn(move || rt.block_on(run(mine, app, limits, shutdown)))
        })
        .collect()
}

/// Fires once, when the process should stop accepting and drain.
pub type Shutdown = watch::Receiver<bool>;

/// Connection-level limits; fixed at start (a reload does not rebind sockets).
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: Arc<Semaphore>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub http2_max_concurrent_streams: u32,
    /// Control frames a client may send per second (see `h2_guard`).
    pub http2_max_control_frames: u32,
    pub http2: crate::config::Http2Tuning,
    pub shutdown_grace: Duration,
    /// Accept failures that were not about one connection (EMFILE, ENFILE, ...).
    pub accept_errors: Arc<AtomicU64>,
    /// Which connections make room when every slot is taken; the per-address cap.
    pub pressure: Arc<crate::edge::pressure::Pressure>,
}

impl ConnLimits {
    /// The limits of `settings`; `max_connections` is shared by every listener and
    /// worker that gets a clone.
    pub fn new(settings: &ServerSettings) -> Self {
        Self {
            max_connections: Arc::new(Semaphore::new(settings.max_connections)),
            header_read_timeout: settings.header_read_timeout,
            idle_timeout: settings.idle_timeout,
            max_header_bytes: settings.max_header_bytes,
            max_headers: settings.max_headers,
            http2_max_concurrent_streams: settings.http2_max_concurrent_streams,
            http2_max_control_frames: settings.http2_max_control_frames,
            http2: settings.http2,
            shutdown_grace: settings.shutdown_grace,
            accept_errors: Arc::new(AtomicU64::new(0)),
            pressure: Arc::new(crate::edge::pressure::Pressure::new(0)),
        }
    }

    fn builders(&self) -> Builders {
        Builders::new(
            self.max_header_bytes,
            self.max_headers,
            self.http2_max_concurrent_streams,
            self.idle_timeout,
            &self.http2,
        )
    }
}

/// Serves every listener on the current runtime until `shutdown` fires, then
/// drains for at most the grace period.
pub async fn run<A: App>(listeners: Vec<Listener>, app: A, limits: ConnLimits, shutdown: Shutdown) {
    let tasks = TaskTracker::new();
    for l in listeners {
        let quic = l.quic.as_ref().and_then(|slot| slot.lock().ok()?.take());
        if let Some(quic) = quic {
            tasks.spawn(crate::edge::h3::serve(
                quic,
                app.clone(),
                limits.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(serve(l, app.clone(), limits.clone(), shutdown.clone()));
    }
    for task in app.worker_tasks(&shutdown) {
        tasks.spawn(task);
    }
    tasks.close();
    tasks.wait().await;
}

/// One accept loop. Returns when shut down and drained (or the grace ran out).
pub async fn serve<A: App>(listener: Listener, app: A, limits: ConnLimits, mut shutdown: Shutdown) {
    let name = listener.name;
    let tcp = match listener
        .tcp
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener.tcp))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot register listener");
            return;
        }
    };
    let builder = Arc::new(limits.builders());
    let connections = TaskTracker::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let (stream, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    if is_per_connection(&e) {
                        continue;
                    }
                    // EMFILE, ENFILE, ENOBUFS...: wait for resources, never exit.
                    limits.accept_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(listener = %name, error = %e, retry_in = ?backoff, "accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        backoff = Duration::from_millis(5);
        let permit = match limits.max_connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Every slot is taken and a newcomer is here: a connection that
                // does nothing makes room (one that never sent a head, then an
                // idle keep-alive); else it waits for one to end.
                limits.pressure.reclaim();
                tokio::select! {
                    p = limits.max_connections.clone().acquire_owned() => p.expect("the connection semaphore is never closed"),
                    _ = shutdown.changed() => break,
                }
            }
        };
        // Over the per-address cap: closed at once, its slot given back.
        let Some(registration) = limits.pressure.register(peer.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            stream,
            peer,
            proxy_protocol: listener.proxy_protocol,
            tls: listener.tls.clone(),
            cert_names: listener.cert_names.clone(),
            alt_svc: listener.alt_svc.clone(),
            tracked: registration.tracked.clone(),
        };
        let (builder, limits, app) = (builder.clone(), limits.clone(), app.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let tracked = registration.tracked.clone();
            let mut serving = std::pin::pin!(accepted.serve(&builder, app, &limits, shutdown));
            std::future::poll_fn(|cx| {
                // Chosen to make room (it had nothing in flight): dropped.
                if tracked.poll_closed(cx).is_ready() {
                    return std::task::Poll::Ready(());
                }
                std::future::Future::poll(serving.as_mut(), cx)
            })
            .await;
            drop(registration);
            drop(permit);
        });
    }
    drop(tcp);
    connections.close();
    let open = connections.len();
    if open > 0 {
        tracing::info!(listener = %name, open, grace = ?limits.shutdown_grace, "draining connections");
    }
    if tokio::time::timeout(limits.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(listener = %name, left = connections.len(), "shutdown grace expired; closing the rest");
    }
}

/// One accepted TCP connection, before its PROXY header and TLS handshake.
struct Accepted {
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    proxy_protocol: bool,
    tls: Option<TlsAcceptor>,
    cert_names: Option<Arc<crate::tls::CertNames>>,
    alt_svc: Option<http::HeaderValue>,
    /// Its place in connection pressure, told when it is open.
    tracked: Arc<crate::edge::pressure::Tracked>,
}

impl Accepted {
    /// Opens the connection (PROXY header, TLS, the first bytes) and serves
    /// HTTP on it until it ends.
    async fn serve<A: App>(
        self,
        builders: &Builders,
        app: A,
        limits: &ConnLimits,
        shutdown: Shutdown,
    ) {
        // Boxed and gone once open: the handshake's state is the largest this
        // task ever holds, and an idle connection should not keep its room.
        let opened = Box::pin(self.open(builders, app, limits, shutdown.clone())).await;
        if let Some((peer, activity, served)) = opened {
            watch(served, peer, &activity, limits, shutdown).await;
        }
    }

    /// Reads the PROXY header when the listener expects one, completes TLS, and
    /// finds the HTTP version; all within the header deadline.
    async fn open<A: App>(
        mut self,
        builders: &Builders,
        app: A,
        limits: &ConnLimits,
        mut shutdown: Shutdown,
    ) -> Option<(std::net::SocketAddr, Arc<Activity>, Served)> {
        let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
        let mut peer = self.peer;
        let mut prefix = Vec::new();
        if self.proxy_protocol {
            let read = crate::edge::proxy_protocol::read_header(&mut self.stream);
            match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok((addr, rest))) => {
                    peer = addr.unwrap_or(peer);
                    prefix = rest;
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "PROXY protocol");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(peer = %self.peer, "PROXY protocol header timed out");
                    return None;
                }
            }
        }
        let io = crate::edge::proxy_protocol::Prefixed::new(prefix, self.stream);
        let activity = Arc::new(Activity::new());
        self.tracked.opened(activity.clone());
        let mut opened = Opened {
            peer,
            tls: self.tls.is_some(),
            activity: activity.clone(),
            verdicts: Arc::default(),
            cert_names: None,
            alt_svc: self.alt_svc,
        };
        let served = match self.tls {
            None => {
                start_http(
                    io,
                    None,
                    deadline,
                    builders,
                    opened,
                    &app,
                    limits,
                    &mut shutdown,
                )
                .await
            }
            Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(io)).await {
                Ok(Ok(tls)) => {
                    if let Some(index) = &self.cert_names {
                        opened.cert_names = index.for_sni(tls.get_ref().1.server_name());
                    }
                    // ALPN says which HTTP (RFC 9113 3.2); without it, the bytes do.
                    let version = match tls.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Some(Version::Http2),
                        Some(b"http/1.1") => Some(Version::Http1),
                        _ => None,
                    };
                    start_http(
                        tls,
                        version,
                        deadline,
                        builders,
                        opened,
                        &app,
                        limits,
                        &mut shutdown,
                    )
                    .await
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    None
                }
            },
        }?;
        Some((peer, activity, served))
    }
}

/// Errors that concern one failed connection, not the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

/// Starts HTTP on one connection: in `version`, or the one its first bytes
/// say (read before `deadline`). `None`: it ended first.
#[allow(clippy::too_many_arguments)]
async fn start_http<I, A: App>(
    io: I,
    version: Option<Version>,
    deadline: Instant,
    builders: &Builders,
    opened: Opened,
    app: &A,
    limits: &ConnLimits,
    shutdown: &mut Shutdown,
) -> Option<Served>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = opened.peer;
    // The guard reads HTTP/1.1 framing along with hyper (it stops at an HTTP/2
    // preface).
    let io = crate::edge::head_guard::Guarded::new(io, opened.verdicts.clone());
    // And the HTTP/2 guard: control-frame floods and broken prefaces.
    let mut io = crate::edge::h2_guard::FrameGuard::new(io, limits.http2_max_control_frames);
    let (version, seen) = match version {
        Some(v) => (v, Vec::new()),
        None => tokio::select! {
            r = tokio::time::timeout_at(deadline, crate::edge::http_conn::sniff(&mut io)) => match r {
                Ok(Ok(Some(sniffed))) => sniffed,
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "connection ended before its first request");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no request within the header deadline");
                    return None;
                }
            },
            _ = shutdown.changed() => return None,
        },
    };
    let io = crate::edge::proxy_protocol::Prefixed::new(seen, io);
    Some(builders.serve(version, io, app.service(opened)))
}

/// Serves a started connection until it ends, closing it when silent for too
/// long and gracefully at shutdown.
async fn watch(
    mut served: Served,
    peer: std::net::SocketAddr,
    activity: &Activity,
    limits: &ConnLimits,
    mut shutdown: Shutdown,
) {
    // The watchdog runs every half of the shorter deadline. A connection that
    // started no request and had none in flight (bodies included) over n checks
    // has been silent for at least (n - 1) periods. HTTP/1.1: silent for the
    // header deadline means a client that sends no (complete) request head, or
    // an idle keep-alive: closed. Silent for idle_timeout: closed gracefully
    // (HTTP/2 GOAWAY).
    let period = limits.header_read_timeout.min(limits.idle_timeout) / 2;
    let checks_for = |d: Duration| (d.as_nanos() / period.as_nanos().max(1)) as u32 + 1;
    let head_checks = checks_for(limits.header_read_timeout);
    let idle_checks = checks_for(limits.idle_timeout);
    let idle = tokio::time::sleep(period);
    tokio::pin!(idle);
    let mut quiet = crate::edge::activity::Quiet::new(activity);
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                served.as_mut().graceful_shutdown();
            }
            _ = &mut idle, if !draining => {
                let quiet_checks = quiet.check(activity);
                if quiet_checks + 1 >= head_checks && !activity.is_http2() {
                    return;
                }
                if quiet_checks + 1 >= idle_checks {
                    // Graceful: HTTP/2 sends GOAWAY and lets open streams finish.
                    draining = true;
                    served.as_mut().graceful_shutdown();
                } else {
                    idle.as_mut().reset(Instant::now() + period);
                }
            }
        }
    }
}
