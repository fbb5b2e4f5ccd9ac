//! An HTTP/3 request body as an [`http_body::Body`]: the data frames of its
//! stream, then its trailers; a body that breaks its `content-length` is
//! malformed (RFC 9114 4.1.2), never passed on cut or padded.

use std::fmt;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::server::RequestStream;
use http_body::{Body, Frame, SizeHint};

/// The receiving half of one request stream.
pub type Recv = RequestStream<h3_quinn::RecvStream, Bytes>;

/// What went wrong with an HTTP/3 request body.
#[derive(Debug, thiserror::Error)]
pub enum H3BodyError {
    /// More or fewer bytes than the request's `content-length` said.
    #[error("HTTP/3 request body: {got} bytes against a content-length of {declared}")]
    Length { declared: u64, got: u64 },
    /// The stream failed: reset by the client, or its connection gone.
    #[error("HTTP/3 request stream: {0}")]
    Stream(#[from] h3::error::StreamError),
}

impl H3BodyError {
    /// The body broke its framing (as against: the client went away).
    pub fn is_malformed(&self) -> bool {
        matches!(self, H3BodyError::Length { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Data,
    Trailers,
    Done,
}

/// A request body read from its HTTP/3 stream.
pub struct H3Body {
    recv: Recv,
    phase: Phase,
    /// A frame read ahead (to learn whether a body follows at all).
    ahead: Option<Frame<Bytes>>,
    declared: Option<u64>,
    got: u64,
    /// The request arrived in 0-RTT early data, before the handshake finished.
    early: bool,
}

impl fmt::Debug for H3Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H3Body")
            .field("phase", &self.phase)
            .field("declared", &self.declared)
            .field("got", &self.got)
            .field("early", &self.early)
            .finish()
    }
}

impl H3Body {
    /// The body of a request whose `content-length` said `declared`.
    pub fn new(recv: Recv, declared: Option<u64>, early: bool) -> Self {
        Self {
            recv,
            phase: Phase::Data,
            ahead: None,
            declared,
            got: 0,
            early,
        }
    }

    /// Whether the request came in early data (RFC 8470: it may be a replay).
    pub fn is_early(&self) -> bool {
        self.early
    }

    /// Reads ahead to learn whether a body follows at all: a client that
    /// ended its stream with the head sent none, and the request then goes
    /// bodiless (and replayable). Without `wait`, only what already arrived.
    pub async fn settle(&mut self, wait: bool) -> Result<(), H3BodyError> {
        if self.declared == Some(0) || self.ahead.is_some() {
            return Ok(());
        }
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *self).poll_frame(cx) {
            Poll::Pending if wait => Poll::Pending,
            Poll::Pending | Poll::Ready(None) => Poll::Ready(Ok(())),
            Poll::Ready(Some(Ok(frame))) => {
                self.ahead = Some(frame);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e)),
        })
        .await
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, H3BodyError>> {
        match self.recv.poll_recv_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Ready(Ok(Some(mut buf))) => {
                let piece = buf.copy_to_bytes(buf.remaining());
                self.got += piece.len() as u64;
                match self.declared {
                    Some(declared) if self.got > declared => {
                        Poll::Ready(Err(H3BodyError::Length {
                            declared,
                            got: self.got,
                        }))
                    }
                    _ => Poll::Ready(Ok(Some(piece))),
                }
            }
            Poll::Ready(Ok(None)) => match self.declared {
                Some(declared) if self.got != declared => Poll::Ready(Err(H3BodyError::Length {
                    declared,
                    got: self.got,
                })),
                _ => Poll::Ready(Ok(None)),
            },
        }
    }
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = H3BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H3BodyError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.ahead.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        loop {
            match this.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Data => match this.poll_data(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Some(piece))) => {
                        return Poll::Ready(Some(Ok(Frame::data(piece))))
                    }
                    Poll::Ready(Ok(None)) => this.phase = Phase::Trailers,
                    Poll::Ready(Err(e)) => {
                        this.phase = Phase::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                Phase::Trailers => {
                    let trailers = std::task::ready!(this.recv.poll_recv_trailers(cx));
                    this.phase = Phase::Done;
                    return Poll::Ready(match trailers {
                        Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
                        Ok(None) => None,
                        Err(e) => Some(Err(e.into())),
                    });
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_none() && (self.phase == Phase::Done || self.declared == Some(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.declared {
            Some(n) => {
                let ahead = self.ahead.as_ref().and_then(Frame::data_ref);
                SizeHint::with_exact(
                    n.saturating_sub(self.got) + ahead.map_or(0, |a| a.len() as u64),
                )
            }
            None => SizeHint::default(),
        }
    }
}
