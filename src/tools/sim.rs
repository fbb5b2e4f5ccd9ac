//! Simulated regional backends: in-process HTTP/1.1 + HTTP/2 servers that say which
//! region they are and can be told to fail, hang, reset, slow down or die. The demo
//! and the integration tests use the same code.
//!
//! Paths: `/echo` answers with the request head it received (one `name: value` a
//! line); `/mirror` streams the request body back; `/bytes/N` streams N bytes; `/count`
//! reads the whole body and answers its length; `/status/N` answers status N;
//! `/health` answers 200 (or 503 after `set_health(false)`; health checks are
//! not counted as requests). Anything else answers the region name. A request with
//! `Upgrade` gets `101` and an echo of every byte over the upgraded connection.
//! Gray failures: a concurrency cap (requests past it wait, as in a full
//! server), slow requests whose health checks stay fast, a reset every Nth request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How a simulated region answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Answers normally.
    Normal = 0,
    /// Answers every request with 503.
    Fail = 1,
    /// Reads requests and never answers.
    Hang = 2,
    /// Closes the connection on every request, before any response byte.
    Reset = 3,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Fail,
            2 => Mode::Hang,
            3 => Mode::Reset,
            _ => Mode::Normal,
        }
    }
}

#[derive(Debug)]
struct Control {
    name: String,
    mode: AtomicU8,
    latency_us: AtomicU64,
    requests: AtomicU64,
    connections: AtomicU64,
    /// When false, health checks get 503 while traffic is served as usual.
    health_ok: AtomicBool,
    /// Bumped to close every open connection while still accepting.
    sever: watch::Sender<u64>,
    /// Requests served at once at most (0: no cap); the rest wait.
    max_concurrency: AtomicU64,
    busy: AtomicU64,
    peak: AtomicU64,
    freed: tokio::sync::Notify,
    /// Added to every request but health checks.
    slow_us: AtomicU64,
    /// Every Nth request is reset (0: none).
    reset_every: AtomicU64,
}

type SimBody = BoxBody<Bytes, std::io::Error>;

/// A running simulated region on 127.0.0.1. Dropping it kills it.
#[derive(Debug)]
pub struct SimRegion {
    addr: SocketAddr,
    tls: bool,
    control: Arc<Control>,
    kill: watch::Sender<bool>,
}

impl SimRegion {
    /// Starts a region on an ephemeral loopback port.
    pub async fn spawn(name: &str) -> std::io::Result<SimRegion> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Ok(Self::serve(name, listener))
    }

    /// Starts a region that speaks TLS (ALPN h2 and http/1.1) with `tls`.
    pub async fn spawn_tls(
        name: &str,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<SimRegion> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Ok(Self::start(name, listener, Some(TlsAcceptor::from(tls))))
    }

    /// Starts a region on a listener the caller bound.
    pub fn serve(name: &str, listener: TcpListener) -> SimRegion {
        Self::start(name, listener, None)
    }

    fn start(name: &str, listener: TcpListener, tls: Option<TlsAcceptor>) -> SimRegion {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let control = Arc::new(Control {
            name: name.to_owned(),
            mode: AtomicU8::new(Mode::Normal as u8),
            latency_us: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            health_ok: AtomicBool::new(true),
            sever: watch::channel(0).0,
            max_concurrency: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            freed: tokio::sync::Notify::new(),
            slow_us: AtomicU64::new(0),
            reset_every: AtomicU64::new(0),
        });
        let (kill, killed) = watch::channel(false);
        let is_tls = tls.is_some();
        tokio::spawn(accept_loop(listener, tls, control.clone(), killed));
        SimRegion {
            addr,
            tls: is_tls,
            control,
            kill,
        }
    }

    pub fn name(&self) -> &str {
        &self.control.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://localhost:PORT` for a TLS region), for an
    /// endpoint `url`.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.control.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Artificial latency added before every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.control
            .latency_us
            .store(latency.as_micros() as u64, Ordering::SeqCst);
    }

    /// The artificial latency in force.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.control.latency_us.load(Ordering::SeqCst))
    }

    /// Requests received so far (including failed and hung ones), health checks aside.
    pub fn requests(&self) -> u64 {
        self.control.requests.load(Ordering::SeqCst)
    }

    /// Serves at most `n` requests at once (0: no cap); the others wait their
    /// turn, as in a server whose workers are all busy. Health checks pass by.
    pub fn set_max_concurrency(&self, n: u64) {
        self.control.max_concurrency.store(n, Ordering::SeqCst);
        self.control.freed.notify_waiters();
    }

    /// The most requests this region has served at once (health checks aside).
    pub fn peak_concurrency(&self) -> u64 {
        self.control.peak.load(Ordering::SeqCst)
    }

    /// Requests being served now (health checks aside).
    pub fn in_flight(&self) -> u64 {
        self.control.busy.load(Ordering::SeqCst)
    }

    /// Every request but health checks takes `d` longer: slow while its checks
    /// stay fast.
    pub fn set_slow_requests(&self, d: Duration) {
        self.control
            .slow_us
            .store(d.as_micros() as u64, Ordering::SeqCst);
    }

    /// Resets the connection of every `n`th request (0: none).
    pub fn set_reset_every(&self, n: u64) {
        self.control.reset_every.store(n, Ordering::SeqCst);
    }

    /// Makes health checks fail (503) or pass, whatever the mode for traffic.
    pub fn set_health(&self, ok: bool) {
        self.control.health_ok.store(ok, Ordering::SeqCst);
    }

    /// Connections that carried a request other than a health check.
    pub fn connections(&self) -> u64 {
        self.control.connections.load(Ordering::SeqCst)
    }

    /// Closes every open connection (as an idle timeout on the far side would) and
    /// keeps accepting new ones.
    pub fn sever(&self) {
        self.control.sever.send_modify(|n| *n += 1);
    }

    /// Stops accepting and closes every open connection at once, like a dead host.
    pub fn kill(&self) {
        let _ = self.kill.send(true);
    }
}

impl Drop for SimRegion {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    control: Arc<Control>,
    mut killed: watch::Receiver<bool>,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = killed.changed() => return,
        };
        let mut severed = control.sever.subscribe();
        let control = control.clone();
        let builder = builder.clone();
        let mut killed = killed.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let counted = Arc::new(AtomicBool::new(false));
            let svc = service_fn(move |req| answer(control.clone(), counted.clone(), req));
            match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.changed() => {}
                        _ = severed.changed() => {}
                    }
                }
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.changed() => {}
                        _ = severed.changed() => {}
                    }
                }
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<SimBody> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

/// A body of `n` bytes, produced 64 KiB at a time as the reader asks for it
/// (downloads here, uploads in the streaming test).
pub struct Generated {
    left: u64,
    chunk: Bytes,
}

impl Generated {
    pub fn new(n: u64) -> Self {
        Generated {
            left: n,
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
        }
    }
}

impl http_body::Body for Generated {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let take = self.left.min(self.chunk.len() as u64);
        self.left -= take;
        let data = self.chunk.slice(..take as usize);
        std::task::Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

fn generated(n: u64) -> SimBody {
    Generated::new(n).boxed()
}

/// Whether a request is the router's health check.
fn is_health_check(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::USER_AGENT)
        .is_some_and(|v| v == "georouter-health")
}

async fn answer(
    control: Arc<Control>,
    counted: Arc<AtomicBool>,
    mut req: Request<Incoming>,
) -> Result<Response<SimBody>, std::io::Error> {
    let check = is_health_check(&req);
    let mut nth = 0;
    if !check {
        nth = control.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if !counted.swap(true, Ordering::SeqCst) {
            control.connections.fetch_add(1, Ordering::SeqCst);
        }
    }
    let _turn = if check {
        None
    } else {
        Some(Turn::take(&control).await)
    };
    if !check {
        let slow = control.slow_us.load(Ordering::SeqCst);
        if slow > 0 {
            tokio::time::sleep(Duration::from_micros(slow)).await;
        }
        let every = control.reset_every.load(Ordering::SeqCst);
        if every > 0 && nth % every == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated reset",
            ));
        }
    }
    if check && !control.health_ok.load(Ordering::SeqCst) {
        return Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} fails its health check\n", control.name),
        ));
    }
    let latency = control.latency_us.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_micros(latency)).await;
    }
    match Mode::from_u8(control.mode.load(Ordering::SeqCst)) {
        Mode::Normal => {}
        Mode::Fail => {
            return Ok(text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} is failing\n", control.name),
            ))
        }
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Reset => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated reset",
            ))
        }
    }
    let name = control.name.clone();
    // The path as this region read it, for tests that compare readings.
    let seen_path = http::HeaderValue::from_str(req.uri().path()).ok();
    let mut resp = if req.headers().contains_key(header::UPGRADE) {
        upgrade_echo(&mut req)
    } else {
        route(&name, req).await?
    };
    if let Some(p) = seen_path {
        resp.headers_mut().insert("x-sim-path", p);
    }
    resp.headers_mut().insert(
        "x-sim-region",
        http::HeaderValue::from_str(&name).unwrap_or(http::HeaderValue::from_static("?")),
    );
    Ok(resp)
}

/// What a simulated region answers on each path: `/echo` (the head it got),
/// `/mirror` (the body back), `/bytes/N`, `/count` (the body's length),
/// `/status/CODE`, else its name.
async fn route(name: &str, req: Request<Incoming>) -> Result<Response<SimBody>, std::io::Error> {
    let path = req.uri().path().to_owned();
    let resp = if path == "/echo" {
        let mut head = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (k, v) in req.headers() {
            head.push_str(&format!(
                "{}: {}\n",
                k,
                String::from_utf8_lossy(v.as_bytes())
            ));
        }
        text(StatusCode::OK, head)
    } else if path == "/mirror" {
        Response::new(req.into_body().map_err(std::io::Error::other).boxed())
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        match n.parse() {
            Ok(n) => Response::new(generated(n)),
            Err(_) => text(StatusCode::BAD_REQUEST, "bad length\n"),
        }
    } else if path == "/count" {
        let mut body = req.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(std::io::Error::other)?;
            if let Some(d) = frame.data_ref() {
                total += d.len() as u64;
            }
        }
        text(StatusCode::OK, format!("{total}\n"))
    } else if let Some(code) = path.strip_prefix("/status/") {
        match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(s) => text(s, format!("{name}\n")),
            None => text(StatusCode::BAD_REQUEST, "bad status\n"),
        }
    } else {
        text(StatusCode::OK, format!("{name}\n"))
    };
    Ok(resp)
}

/// A request's turn under the concurrency cap, given back when it is answered.
struct Turn(Arc<Control>);

impl Turn {
    async fn take(control: &Arc<Control>) -> Turn {
        loop {
            let freed = control.freed.notified();
            let cap = control.max_concurrency.load(Ordering::SeqCst);
            let busy = control.busy.load(Ordering::SeqCst);
            if (cap == 0 || busy < cap)
                && control
                    .busy
                    .compare_exchange(busy, busy + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                control.peak.fetch_max(busy + 1, Ordering::SeqCst);
                return Turn(control.clone());
            }
            if cap != 0 && busy >= cap {
                freed.await;
            }
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
        self.0.freed.notify_one();
    }
}

fn upgrade_echo(req: &mut Request<Incoming>) -> Response<SimBody> {
    let protocol = req.headers()[header::UPGRADE].clone();
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on.await {
            let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    r.headers_mut().insert(header::UPGRADE, protocol);
    r.headers_mut().insert(
        header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    r
}
