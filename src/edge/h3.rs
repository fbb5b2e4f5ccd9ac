//! HTTP/3 over QUIC beside a TLS listener: one quinn endpoint per listener on
//! its own UDP socket, the listener's certificates, and each request handed to
//! the [`App`]'s service exactly as a TCP one is (same pipeline, same regions).

pub(crate) mod body;
mod respond;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request};
use tokio_util::task::TaskTracker;

use crate::config::{Http3Spec, ListenerSpec};
use crate::edge::activity::Activity;
use crate::edge::server::{App, ConnLimits, Opened, Shutdown};
use body::H3Body;

/// RFC 9114 8.1: closing with nothing wrong.
const H3_NO_ERROR: u32 = 0x100;

/// A bound QUIC endpoint, waiting for the worker that serves it.
pub struct QuicListener {
    pub name: String,
    socket: std::net::UdpSocket,
    config: quinn::ServerConfig,
    spec: Http3Spec,
    cert_names: Option<Arc<crate::tls::CertNames>>,
}

/// One listener's QUIC endpoint, shared by every worker's copy of the listener:
/// the first worker to start takes it (a QUIC endpoint is one socket's state).
pub type QuicSlot = Arc<Mutex<Option<QuicListener>>>;

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("cannot listen on {address} (UDP): {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the TLS provider has no cipher suite QUIC can start with (TLS_AES_128_GCM_SHA256)")]
    Suite,
}

/// The `Alt-Svc` value that points clients at a listener's HTTP/3 port
/// (RFC 7838; `ma` in seconds).
pub fn alt_svc(port: u16, max_age: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("h3=\":{port}\"; ma={}", max_age.as_secs()))
        .expect("digits and quotes make a header value")
}

/// Binds a listener's UDP socket and builds its QUIC configuration. `tcp` is
/// where its TCP socket was bound: an HTTP/3 address that is the listener's
/// own with port 0 takes the TCP socket's port, so `Alt-Svc` names one port.
pub fn bind(
    spec: &ListenerSpec,
    h3: &Http3Spec,
    tcp: SocketAddr,
    limits: &crate::config::ServerSettings,
) -> Result<QuicListener, QuicError> {
    let tls = spec.tls.as_ref().ok_or(QuicError::Suite)?;
    let mut address = h3.address;
    if address == spec.address && address.port() == 0 {
        address.set_port(tcp.port());
    }
    let socket =
        std::net::UdpSocket::bind(address).map_err(|source| QuicError::Bind { address, source })?;
    let crypto = crate::tls::quic_server_config(tls, h3.early_data)?;
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|_| QuicError::Suite)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.http2_max_concurrent_streams.into())
        // The client's control stream, its QPACK encoder and decoder streams,
        // and a few reserved (grease) ones.
        .max_concurrent_uni_streams(8u32.into())
        .max_idle_timeout(quinn::IdleTimeout::try_from(limits.idle_timeout).ok());
    config.transport_config(Arc::new(transport));
    Ok(QuicListener {
        name: spec.name.clone(),
        socket,
        config,
        spec: h3.clone(),
        cert_names: Some(Arc::new(crate::tls::CertNames::of(tls))),
    })
}

impl QuicListener {
    /// The UDP address it is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Serves HTTP/3 on one endpoint until `shutdown`, then lets open requests
/// finish within the grace period.
pub async fn serve<A: App>(
    listener: QuicListener,
    app: A,
    limits: ConnLimits,
    mut shutdown: Shutdown,
) {
    let name = listener.name;
    let endpoint = match quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(listener.config),
        listener.socket,
        Arc::new(quinn::TokioRuntime),
    ) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot start the QUIC endpoint");
            return;
        }
    };
    let shared = Arc::new(Shared {
        spec: listener.spec,
        cert_names: listener.cert_names,
        handshaking: AtomicUsize::new(0),
        limits,
    });
    let connections = TaskTracker::new();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            _ = shutdown.changed() => break,
        };
        // Under a flood of Initials (spoofed sources, amplification), new
        // clients first prove their address with a Retry round trip.
        if !incoming.remote_address_validated()
            && incoming.may_retry()
            && shared.handshaking.load(Ordering::Relaxed) >= shared.spec.retry_threshold
        {
            let _ = incoming.retry();
            continue;
        }
        let Ok(permit) = shared.limits.max_connections.clone().try_acquire_owned() else {
            // Every connection slot is taken: one that does nothing is closed
            // to make room, and this one is refused at once (the client falls
            // back to TCP or tries again), not queued.
            shared.limits.pressure.reclaim();
            incoming.refuse();
            continue;
        };
        // Over the per-address cap: refused, as on TCP.
        let Some(registration) = shared
            .limits
            .pressure
            .register(incoming.remote_address().ip())
        else {
            incoming.refuse();
            continue;
        };
        let (app, shared, shutdown) = (app.clone(), shared.clone(), shutdown.clone());
        connections.spawn(async move {
            connection(incoming, app, &shared, registration, shutdown).await;
            drop(permit);
        });
    }
    connections.close();
    let grace = shared.limits.shutdown_grace;
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(listener = %name, left = connections.len(), "shutdown grace expired; closing HTTP/3 connections");
    }
    endpoint.close(0u32.into(), b"shutting down");
    endpoint.wait_idle().await;
}

/// What every connection of one endpoint reads.
struct Shared {
    spec: Http3Spec,
    cert_names: Option<Arc<crate::tls::CertNames>>,
    /// Connections whose handshake is not done yet.
    handshaking: AtomicUsize,
    limits: ConnLimits,
}

/// Counts a handshake in progress until dropped.
struct Handshaking<'a>(&'a AtomicUsize);

impl<'a> Handshaking<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One QUIC connection: its handshake (within the header deadline), then its
/// requests, each on a task of its own, until the client goes, the connection
/// is silent for `idle_timeout`, pressure chooses it to make room, or shutdown.
async fn connection<A: App>(
    incoming: quinn::Incoming,
    app: A,
    shared: &Shared,
    registration: crate::edge::pressure::Registration,
    mut shutdown: Shutdown,
) {
    let peer = incoming.remote_address();
    let Some((conn, done)) = handshake(incoming, shared).await else {
        return;
    };
    let sni = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.server_name);
    let activity = Arc::new(Activity::new());
    activity.saw_http2();
    registration.tracked.opened(activity.clone());
    let opened = Opened {
        // The address the connection was established from is the client's,
        // for this connection's every request (a migrated connection keeps it).
        peer,
        tls: true,
        activity: activity.clone(),
        verdicts: Arc::default(),
        cert_names: shared
            .cert_names
            .as_ref()
            .and_then(|n| n.for_sni(sni.as_deref())),
        alt_svc: None,
    };
    let service = Arc::new(app.service(opened));
    let quic = conn.clone();
    let built = h3::server::builder()
        .max_field_section_size(shared.limits.max_header_bytes as u64)
        .build::<_, bytes::Bytes>(h3_quinn::Connection::new(conn))
        .await;
    let mut h3 = match built {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP/3 connection did not start");
            return;
        }
    };
    let requests = TaskTracker::new();
    let mut draining = false;
    // Silent for idle_timeout (no request started, none in flight): closed
    // gracefully, as on TCP. QUIC's own idle timeout only sees packets, and a
    // client's PINGs would keep a connection open forever.
    let period = shared.limits.idle_timeout / 2;
    let mut idle = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let (mut last_mark, mut quiet_checks) = (None, 0u32);
    let tracked = registration.tracked.clone();
    loop {
        let accepted = tokio::select! {
            a = h3.accept() => a,
            _ = shutdown.changed(), if !draining => {
                draining = true;
                // GOAWAY: requests already open finish, no new ones; then the
                // connection closes (below) without waiting for the client.
                let _ = h3.shutdown(0).await;
                requests.close();
                continue;
            }
            _ = requests.wait(), if draining => {
                quic.close(H3_NO_ERROR.into(), b"shutting down");
                break;
            }
            _ = idle.tick(), if !draining => {
                // Unchanged over two periods: silent for idle_timeout at least.
                let mark = activity.quiet_mark();
                quiet_checks = if mark.is_some() && mark == last_mark { quiet_checks + 1 } else { 0 };
                last_mark = mark;
                if quiet_checks >= 2 {
                    // GOAWAY, then closed: nothing is in flight to finish.
                    let _ = h3.shutdown(0).await;
                    quic.close(H3_NO_ERROR.into(), b"idle");
                    break;
                }
                continue;
            }
            _ = std::future::poll_fn(|cx| tracked.poll_closed(cx)) => {
                // Chosen to make room: it had nothing in flight.
                quic.close(H3_NO_ERROR.into(), b"");
                break;
            }
        };
        match accepted {
            Ok(Some(resolver)) => {
                // Opened before the handshake finished: the request is early
                // data, whenever its head is read.
                let early = !done.load(Ordering::Relaxed);
                let (service, quic) = (service.clone(), quic.clone());
                let limits = shared.limits.clone();
                requests.spawn(async move {
                    request(resolver, &*service, early, &quic, peer, &limits).await;
                });
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "HTTP/3 connection ended");
                break;
            }
        }
    }
    requests.close();
    requests.wait().await;
    drop(registration);
}

/// The QUIC handshake, within the header deadline; with 0-RTT allowed, the
/// connection is returned at once and `done` turns true when the handshake
/// completes (until then its requests are early data).
async fn handshake(
    incoming: quinn::Incoming,
    shared: &Shared,
) -> Option<(quinn::Connection, Arc<AtomicBool>)> {
    let peer = incoming.remote_address();
    let _handshaking = Handshaking::new(&shared.handshaking);
    let connecting = incoming.accept().ok()?;
    let deadline = shared.limits.header_read_timeout;
    let connecting = if shared.spec.early_data {
        match connecting.into_0rtt() {
            Ok((conn, accepted)) => {
                let done = Arc::new(AtomicBool::new(false));
                let (flag, quic) = (done.clone(), conn.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(deadline, accepted).await {
                        Ok(_) => flag.store(true, Ordering::Relaxed),
                        Err(_) => quic.close(0u32.into(), b"handshake timed out"),
                    }
                });
                return Some((conn, done));
            }
            Err(connecting) => connecting,
        }
    } else {
        connecting
    };
    match tokio::time::timeout(deadline, connecting).await {
        Ok(Ok(conn)) => Some((conn, Arc::new(AtomicBool::new(true)))),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "QUIC handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "QUIC handshake timed out");
            None
        }
    }
}

type Resolver = h3::server::RequestResolver<h3_quinn::Connection, bytes::Bytes>;

/// One request stream: its head (within the header deadline), checked as
/// RFC 9114 4.2 says, its body, the App's answer streamed back.
async fn request<S, B>(
    resolver: Resolver,
    service: &S,
    early: bool,
    quic: &quinn::Connection,
    peer: SocketAddr,
    limits: &ConnLimits,
) where
    S: hyper::service::Service<
        Request<H3Body>,
        Response = http::Response<B>,
        Error = std::convert::Infallible,
    >,
    B: http_body::Body,
{
    let (req, stream) =
        match tokio::time::timeout(limits.header_read_timeout, resolver.resolve_request()).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "HTTP/3 request head refused");
                return;
            }
            Err(_) => return,
        };
    let now = quic.remote_address();
    if now != peer {
        // A client can move at will (a new source port per packet): one line
        // a second at most.
        static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
        if let Some(suppressed) = LOG.allow() {
            tracing::info!(%peer, moved_to = %now, suppressed, "HTTP/3 connection migrated; its first address stays the client");
        }
    }
    let declared = match malformed(req.headers()) {
        Ok(declared) => declared,
        Err(why) => {
            // RFC 9114 4.1.2: a malformed request is a stream error.
            tracing::debug!(%peer, why, "malformed HTTP/3 request");
            let mut stream = stream;
            stream.stop_stream(h3::error::Code::H3_MESSAGE_ERROR);
            stream.stop_sending(h3::error::Code::H3_MESSAGE_ERROR);
            return;
        }
    };
    let (send, recv) = stream.split();
    let mut body = H3Body::new(recv, declared, early);
    // A GET's or HEAD's body is learnt before it is routed: one that the client
    // ended with its head goes bodiless (and may be retried elsewhere).
    let wait = declared.is_none() && matches!(*req.method(), Method::GET | Method::HEAD);
    let mut send = send;
    match tokio::time::timeout(limits.header_read_timeout, body.settle(wait)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            // Reset, never ended as if answered: a body past its
            // content-length is malformed; anything else left it unfinished.
            tracing::debug!(%peer, error = %e, "HTTP/3 request body");
            send.stop_stream(if e.is_malformed() {
                h3::error::Code::H3_MESSAGE_ERROR
            } else {
                h3::error::Code::H3_REQUEST_INCOMPLETE
            });
            return;
        }
        Err(_) => {
            send.stop_stream(h3::error::Code::H3_REQUEST_INCOMPLETE);
            return;
        }
    }
    let Ok(response) = service.call(req.map(|()| body)).await;
    if let Err(e) = respond::send(send, response).await {
        tracing::debug!(%peer, error = %e, "HTTP/3 response not sent whole");
    }
}

/// RFC 9114 4.2: connection-specific fields make a request malformed, and
/// `te` may only say `trailers`; a `content-length` must be one number. The
/// declared length, when there is one.
fn malformed(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    for name in respond::CONNECTION_SPECIFIC {
        if headers.contains_key(name) {
            return Err("connection-specific header field");
        }
    }
    for te in headers.get_all(http::header::TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            return Err("te other than trailers");
        }
    }
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let declared = match lengths.next() {
        None => None,
        Some(v) => {
            let v = v.to_str().map_err(|_| "content-length is not a number")?;
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err("content-length is not a number");
            }
            Some(
                v.parse::<u64>()
                    .map_err(|_| "content-length is not a number")?,
            )
        }
    };
    if lengths.next().is_some() {
        return Err("more than one content-length");
    }
    Ok(declared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn connection_specific_fields_make_a_request_malformed() {
        for name in respond::CONNECTION_SPECIFIC {
            assert!(malformed(&headers(&[(name, "x")])).is_err(), "{name}");
        }
        assert!(malformed(&headers(&[("te", "gzip")])).is_err());
        assert_eq!(malformed(&headers(&[("te", "trailers")])), Ok(None));
    }

    #[test]
    fn a_content_length_is_one_number() {
        assert_eq!(
            malformed(&headers(&[("content-length", "12")])),
            Ok(Some(12))
        );
        for bad in ["", "+1", "1,1", " 1", "0x10", "99999999999999999999999"] {
            assert!(
                malformed(&headers(&[("content-length", bad)])).is_err(),
                "{bad:?}"
            );
        }
        assert!(malformed(&headers(&[
            ("content-length", "1"),
            ("content-length", "1")
        ]))
        .is_err());
    }

    #[test]
    fn alt_svc_names_the_port_and_max_age() {
        assert_eq!(
            alt_svc(8443, Duration::from_secs(86400)),
            "h3=\":8443\"; ma=86400"
        );
    }
}
