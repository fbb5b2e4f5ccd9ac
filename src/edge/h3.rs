//! HTTP/3 over QUIC beside a TLS listener: one quinn endpoint per listener on
//! its own UDP socket, the listener's certificates, and each request handed to
//! the [`App`]'s service exactly as a TCP one is (same pipeline, same regions).

pub(crate) mod body;
mod connection;
mod fields;
mod request;
mod respond;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;
use tokio_util::task::TaskTracker;

use crate::config::{Http3Spec, ListenerSpec};
use crate::edge::server::{App, ConnLimits, Shutdown};

/// RFC 9114 8.1: closing with nothing wrong.
pub(crate) const H3_NO_ERROR: u32 = 0x100;

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
    #[error("HTTP/3 needs the listener's certificates: add [listeners.tls]")]
    NoTls,
}

/// The `Alt-Svc` value that points clients at a listener's HTTP/3 port
/// (RFC 7838; `ma` in seconds).
pub fn alt_svc(port: u16, max_age: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("h3=\":{port}\"; ma={}", max_age.as_secs()))
        .expect("digits and quotes make a header value")
}

/// Binds a listener's UDP socket and builds its QUIC configuration: the
/// endpoint, waiting for the worker that serves it, and the `Alt-Svc` value
/// naming its port. `tcp` is where its TCP socket was bound: an HTTP/3
/// address that is the listener's own with port 0 takes the TCP socket's
/// port, so `Alt-Svc` names one port.
pub fn bind(
    spec: &ListenerSpec,
    h3: &Http3Spec,
    tcp: SocketAddr,
    cert_names: Option<Arc<crate::tls::CertNames>>,
    limits: &crate::config::ServerSettings,
) -> Result<(QuicSlot, HeaderValue), QuicError> {
    let tls = spec.tls.as_ref().ok_or(QuicError::NoTls)?;
    let mut address = h3.address;
    if address == spec.address && address.port() == 0 {
        address.set_port(tcp.port());
    }
    let bound = std::net::UdpSocket::bind(address)
        .and_then(|socket| Ok((socket.local_addr()?.port(), socket)));
    let (port, socket) = bound.map_err(|source| QuicError::Bind { address, source })?;
    let crypto = crate::tls::quic_server_config(tls, h3.early_data)?;
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|_| QuicError::Suite)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport(limits)));
    let listener = QuicListener {
        name: spec.name.clone(),
        socket,
        config,
        spec: h3.clone(),
        cert_names,
    };
    Ok((
        Arc::new(Mutex::new(Some(listener))),
        alt_svc(port, h3.alt_svc_max_age),
    ))
}

/// QUIC's limits from the server's: streams, idle timeout, and the HTTP/2
/// windows bounding what a connection buffers each way (quinn's defaults
/// would let one connection hold 1.25 MB per stream received, with no
/// connection-wide cap, and 10 MB unacknowledged sent).
fn transport(limits: &crate::config::ServerSettings) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    let window = limits.http2.connection_window;
    transport
        .stream_receive_window(limits.http2.stream_window.into())
        .receive_window(window.into())
        .send_window(u64::from(window))
        .max_concurrent_bidi_streams(limits.http2_max_concurrent_streams.into())
        // The client's control stream, its QPACK encoder and decoder streams,
        // and a few reserved (grease) ones.
        .max_concurrent_uni_streams(8u32.into())
        .max_idle_timeout(quinn::IdleTimeout::try_from(limits.idle_timeout).ok());
    transport
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
        // Counted from here, not from when its task first runs: a burst of
        // Initials is seen as one at once.
        let handshaking = Handshaking::new(&shared);
        let (app, shared, shutdown) = (app.clone(), shared.clone(), shutdown.clone());
        connections.spawn(async move {
            connection::serve(incoming, handshaking, app, shared, registration, shutdown).await;
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
    endpoint.close(H3_NO_ERROR.into(), b"shutting down");
    endpoint.wait_idle().await;
}

/// What every connection of one endpoint reads.
pub(crate) struct Shared {
    spec: Http3Spec,
    cert_names: Option<Arc<crate::tls::CertNames>>,
    /// Connections whose handshake is not done yet.
    handshaking: AtomicUsize,
    pub(crate) limits: ConnLimits,
}

/// Counts a handshake in progress until dropped.
pub(crate) struct Handshaking(Arc<Shared>);

impl Handshaking {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.handshaking.fetch_add(1, Ordering::Relaxed);
        Self(shared.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_svc_names_the_port_and_max_age() {
        assert_eq!(
            alt_svc(8443, Duration::from_secs(86400)),
            "h3=\":8443\"; ma=86400"
        );
    }
}
