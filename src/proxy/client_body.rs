//! The client's request body on its way to a region: its errors say they are the
//! client's, it gives up when the client stalls for `request_body_timeout`, and it
//! tells the forwarder whose turn it is, so the region's response clock runs
//! only while the region, not the client, holds things up.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::blame::ClientFault;
use crate::edge::h3::body::H3Body;

/// The client's body failed: its framing, its connection or its pace.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {}", .fault.as_str())]
pub struct ClientBodyError {
    pub fault: ClientFault,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Where a client's request body comes from: hyper's connection (HTTP/1.1,
/// HTTP/2) or an HTTP/3 stream.
#[derive(Debug)]
pub enum Source {
    Hyper(Incoming),
    H3(Box<H3Body>),
}

impl Source {
    /// The request came in TLS early data (HTTP/3 0-RTT): it may be a replay.
    pub fn is_early(&self) -> bool {
        matches!(self, Source::H3(b) if b.is_early())
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self {
            Source::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(|e| ClientBodyError {
                fault: ClientFault::of_body_error(&e),
                source: Some(e.into()),
            }),
            Source::H3(b) => Pin::new(&mut **b)
                .poll_frame(cx)
                .map_err(|e| ClientBodyError {
                    fault: if e.is_malformed() {
                        ClientFault::MalformedBody
                    } else {
                        ClientFault::Gone
                    },
                    source: Some(e.into()),
                }),
        }
    }
}

impl From<Incoming> for Source {
    fn from(b: Incoming) -> Self {
        Source::Hyper(b)
    }
}

impl From<H3Body> for Source {
    fn from(b: H3Body) -> Self {
        Source::H3(Box::new(b))
    }
}

impl Body for Source {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.get_mut().poll(cx)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Hyper(b) => b.is_end_stream(),
            Source::H3(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Hyper(b) => b.size_hint(),
            Source::H3(b) => b.size_hint(),
        }
    }
}

impl ClientBodyError {
    /// The client fault somewhere in an error's chain of causes, if any.
    pub fn in_chain(e: &(dyn std::error::Error + 'static)) -> Option<ClientFault> {
        let mut cur = Some(e);
        while let Some(c) = cur {
            if let Some(b) = c.downcast_ref::<ClientBodyError>() {
                return Some(b.fault);
            }
            cur = c.source();
        }
        None
    }
}

/// Whose turn it is in a body's upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Waiting for the client's next bytes.
    Client,
    /// The region has had what the client sent since this instant.
    Region { since: Instant },
    /// The whole body was handed over at this instant.
    Done { at: Instant },
}

/// An upload's progress, shared between the body, the forwarder and the
/// access log: whose turn it is, and the bytes received so far.
#[derive(Debug)]
pub struct Progress(Mutex<Turn>, AtomicU64);

impl Progress {
    fn set(&self, turn: Turn) {
        if let Ok(mut t) = self.0.lock() {
            *t = turn;
        }
    }

    /// Body bytes received from the client so far.
    pub fn received(&self) -> u64 {
        self.1.load(Ordering::Relaxed)
    }

    /// Since when the region has been the one holding things up (it has every byte
    /// the client sent), or `None` while the router waits for the client.
    pub fn region_clock(&self) -> Option<Instant> {
        match self.0.lock().map(|t| *t) {
            Ok(Turn::Region { since }) => Some(since),
            Ok(Turn::Done { at }) => Some(at),
            Ok(Turn::Client) | Err(_) => None,
        }
    }
}

/// A client request body with blame and a stall deadline. Boxed: the request
/// type that every request moves several times is as large as its largest body
/// variant, and most requests have no body.
#[derive(Debug)]
pub struct ClientBody(Box<Upload>);

#[derive(Debug)]
struct Upload {
    inner: Source,
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    progress: Arc<Progress>,
}

impl ClientBody {
    /// Wraps `inner`; the client may stall at most `idle` between two pieces.
    pub fn new(inner: Source, idle: Duration) -> (ClientBody, Arc<Progress>) {
        let progress = Arc::new(Progress(
            Mutex::new(Turn::Region {
                since: Instant::now(),
            }),
            AtomicU64::new(0),
        ));
        let body = ClientBody(Box::new(Upload {
            inner,
            idle,
            sleep: None,
            armed: false,
            progress: progress.clone(),
        }));
        (body, progress)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self.0;
        match this.inner.poll(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.armed = false;
                if let Some(data) = frame.data_ref() {
                    this.progress
                        .1
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                let now = Instant::now();
                this.progress.set(if this.inner.is_end_stream() {
                    Turn::Done { at: now }
                } else {
                    Turn::Region { since: now }
                });
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                this.progress.set(Turn::Done { at: Instant::now() });
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !this.armed {
                    this.armed = true;
                    this.progress.set(Turn::Client);
                    let deadline = Instant::now() + this.idle;
                    match &mut this.sleep {
                        Some(s) => s.as_mut().reset(deadline),
                        None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let sleep = this.sleep.as_mut().expect("armed above");
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(ClientBodyError {
                        fault: ClientFault::BodyTimeout,
                        source: None,
                    }))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_upstream_body_is_no_larger_than_a_bare_incoming_one() {
        use http_body_util::{Either, Empty, Limited};
        type Bare = Either<Limited<hyper::body::Incoming>, Empty<bytes::Bytes>>;
        assert!(
            std::mem::size_of::<crate::proxy::pool::UpstreamBody>() <= std::mem::size_of::<Bare>(),
            "{} > {}",
            std::mem::size_of::<crate::proxy::pool::UpstreamBody>(),
            std::mem::size_of::<Bare>()
        );
    }
}
