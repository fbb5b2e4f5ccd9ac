//! One QUIC connection: its handshake, then its HTTP/3 requests, until the
//! client goes, it is idle, pressure closes it, or the router shuts down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::task::TaskTracker;

use super::{request, Handshaking, Shared, H3_NO_ERROR};
use crate::edge::activity::{Activity, Quiet};
use crate::edge::server::{App, Opened, Shutdown};

/// How often a connection done at shutdown looks for acknowledgements.
const LINGER_STEP: std::time::Duration = std::time::Duration::from_millis(200);

/// Waits, at shutdown, until what the connection sent is acknowledged: the
/// last answers may still be in flight, and closing discards what the client
/// has not acknowledged. Done when the client closes (GOAWAY asked it to), or
/// when a step passes with no acknowledgement (it has everything, or is gone);
/// the listener's shutdown grace bounds it all.
async fn linger(quic: &quinn::Connection) {
    let mut acks = quic.stats().frame_rx.acks;
    loop {
        tokio::select! {
            _ = quic.closed() => return,
            _ = tokio::time::sleep(LINGER_STEP) => {}
        }
        let now = quic.stats().frame_rx.acks;
        if now == acks {
            return;
        }
        acks = now;
    }
}

/// One QUIC connection: its handshake (within the header deadline), then its
/// requests, each on a task of its own, until the client goes, the connection
/// is silent for `idle_timeout`, pressure chooses it to make room, or shutdown.
pub(super) async fn serve<A: App>(
    incoming: quinn::Incoming,
    handshaking: Handshaking,
    app: A,
    shared: Arc<Shared>,
    registration: crate::edge::pressure::Registration,
    mut shutdown: Shutdown,
) {
    let peer = incoming.remote_address();
    let Some((conn, done)) = handshake(incoming, handshaking, &shared).await else {
        return;
    };
    let activity = Arc::new(Activity::new());
    registration.tracked.opened(activity.clone());
    let service = Arc::new(app.service(opened(&conn, &shared, peer, &activity)));
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
    let mut idle = Idle::new(shared.limits.idle_timeout, &activity);
    let tracked = registration.tracked.clone();
    loop {
        let accepted = tokio::select! {
            a = h3.accept() => a,
            _ = shutdown.changed(), if !draining => {
                draining = true;
                // GOAWAY: requests already open finish, no new ones; then the
                // connection closes (below) without waiting for the client.
                let _ = goaway(&mut h3).await;
                requests.close();
                continue;
            }
            _ = requests.wait(), if draining => {
                linger(&quic).await;
                quic.close(H3_NO_ERROR.into(), b"shutting down");
                break;
            }
            _ = idle.tick.tick(), if !draining => {
                if idle.silent(&activity) {
                    // GOAWAY, then closed: nothing is in flight to finish.
                    let _ = goaway(&mut h3).await;
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
                let (service, quic, shared) = (service.clone(), quic.clone(), shared.clone());
                requests.spawn(async move {
                    request::serve(resolver, &*service, early, &quic, peer, &shared.limits).await;
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

/// Sends GOAWAY naming the first request stream not accepted: RFC 9114 5.2
/// says those from its identifier on were not processed, so it lies past every
/// request accepted (h3's `shutdown(n)` names the last accepted plus `n`; with
/// 0 it would disown the last request, which a client may then send again
/// elsewhere while the router still answers it).
async fn goaway(
    h3: &mut h3::server::Connection<h3_quinn::Connection, bytes::Bytes>,
) -> Result<(), h3::error::ConnectionError> {
    h3.shutdown(1).await
}

/// What the App learns of an HTTP/3 connection.
fn opened(
    conn: &quinn::Connection,
    shared: &Shared,
    peer: std::net::SocketAddr,
    activity: &Arc<Activity>,
) -> Opened {
    let sni = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.server_name);
    Opened {
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
    }
}

/// The idle rule, as on TCP: a check every half `idle_timeout`; two checks
/// in a row that found the connection quiet (nothing started, nothing in
/// flight) mean it was silent for `idle_timeout` at least.
struct Idle {
    tick: tokio::time::Interval,
    quiet: Quiet,
}

impl Idle {
    fn new(idle_timeout: std::time::Duration, activity: &Activity) -> Self {
        let period = idle_timeout / 2;
        Self {
            tick: tokio::time::interval_at(tokio::time::Instant::now() + period, period),
            quiet: Quiet::new(activity),
        }
    }

    fn silent(&mut self, activity: &Activity) -> bool {
        self.quiet.check(activity) >= 2
    }
}

/// The QUIC handshake, within the header deadline; with 0-RTT allowed, the
/// connection is returned at once and `done` turns true when the handshake
/// completes (until then its requests are early data).
async fn handshake(
    incoming: quinn::Incoming,
    handshaking: Handshaking,
    shared: &Shared,
) -> Option<(quinn::Connection, Arc<AtomicBool>)> {
    let peer = incoming.remote_address();
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
                        Err(_) => quic.close(H3_NO_ERROR.into(), b"handshake timed out"),
                    }
                    // In progress until here, requests served meanwhile or not.
                    drop(handshaking);
                });
                return Some((conn, done));
            }
            Err(connecting) => connecting,
        }
    } else {
        connecting
    };
    let done = tokio::time::timeout(deadline, connecting).await;
    drop(handshaking);
    match done {
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
