//! HTTP/2 abuse the h2 crate does not bound (h2 0.4 bounds rapid reset,
//! CONTINUATION floods and empty DATA itself, and keeps one PING and one
//! SETTINGS acknowledgement owed at a time, but does not limit their rate;
//! tests/h2_abuse.rs checks each): floods of SETTINGS, PING, WINDOW_UPDATE and PRIORITY
//! frames, each cheap to send and each costing the server work (CVE-2019-9512,
//! -9515, -9516 class). The guard reads frame headers from the client's bytes,
//! never payloads; past `limit` such frames in a second it answers
//! GOAWAY(ENHANCE_YOUR_CALM) at a frame boundary of what the server writes, then
//! ends the connection. An invalid connection preface gets GOAWAY(PROTOCOL_ERROR)
//! (RFC 9113 3.4); so does a first line that is neither that preface nor an
//! HTTP/1.x request line, empty lines before it skipped (RFC 9112 2.2).
//! HTTP/1 connections pass untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PROTOCOL_ERROR: u32 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A GOAWAY frame (RFC 9113 6.8).
fn goaway(last_stream: u32, code: u32) -> [u8; 17] {
    let mut f = [0u8; 17];
    f[2] = 8; // length
    f[3] = 0x7; // type GOAWAY
    f[9..13].copy_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    f[13..17].copy_from_slice(&code.to_be_bytes());
    f
}

/// Follows frame boundaries in a byte stream: 9-byte headers, payloads skipped.
#[derive(Debug, Default)]
struct Frames {
    head: [u8; 9],
    have: usize,
    skip: usize,
}

impl Frames {
    /// At a frame boundary (no header or payload half-way).
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }

    /// Feeds bytes; calls `on_frame(type, flags, stream)` for each header.
    fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(u8, u8, u32)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                let h = self.head;
                self.have = 0;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                on_frame(h[3], h[4], stream);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Comparing the first bytes with the HTTP/2 preface.
    Preface(usize),
    /// Not HTTP/2: reading the first line, which must end in ` HTTP/1.x`
    /// (the bytes read so far, the current line's length, and its last ten
    /// bytes). Empty lines before it are skipped (RFC 9112 2.2).
    FirstLine(usize, usize, [u8; 10]),
    Http2,
    /// HTTP/1: nothing to watch.
    Http1,
    /// A GOAWAY is owed or sent; the connection ends.
    Closing,
}

/// A connection's bytes with the HTTP/2 guard reading along.
#[derive(Debug)]
pub struct FrameGuard<IO> {
    io: IO,
    mode: Mode,
    /// Control frames allowed per second (0 = no limit).
    limit: u32,
    window_start: Option<Instant>,
    in_window: u32,
    incoming: Frames,
    outgoing: Frames,
    last_stream: u32,
    goaway: Option<([u8; 17], usize)>,
    reader: Option<Waker>,
}

impl<IO> FrameGuard<IO> {
    pub fn new(io: IO, limit: u32) -> Self {
        FrameGuard {
            io,
            mode: Mode::Preface(0),
            limit,
            window_start: None,
            in_window: 0,
            incoming: Frames::default(),
            outgoing: Frames::default(),
            last_stream: 0,
            goaway: None,
            reader: None,
        }
    }

    /// Reads `bytes` (just read from the client); returns the error code of a
    /// GOAWAY to send, if the client earned one.
    fn inspect(&mut self, mut bytes: &[u8]) -> Option<u32> {
        if let Mode::Preface(seen) = self.mode {
            let n = (PREFACE.len() - seen).min(bytes.len());
            if bytes[..n] != PREFACE[seen..seen + n] {
                // The PRI method exists only to start HTTP/2 (RFC 9113 11.6): a
                // client that sends it with a broken preface gets a
                // PROTOCOL_ERROR; anything else is HTTP/1 if its first line
                // says so.
                let began_pri = seen >= 4 || bytes.starts_with(&PREFACE[seen..4]);
                if began_pri {
                    self.mode = Mode::Http1;
                    return Some(PROTOCOL_ERROR);
                }
                self.mode = Mode::FirstLine(seen, seen, [0; 10]);
            } else if seen + n < PREFACE.len() {
                self.mode = Mode::Preface(seen + n);
                return None;
            } else {
                self.mode = Mode::Http2;
                bytes = &bytes[n..];
            }
        }
        if let Mode::FirstLine(len, line_len, tail) = &mut self.mode {
            for &b in bytes {
                *len += 1;
                if b == b'\n' && (*line_len == 0 || (*line_len == 1 && tail[9] == b'\r')) {
                    // RFC 9112 2.2: a server SHOULD ignore at least one empty
                    // line before the request line (hyper's parser does).
                    *line_len = 0;
                    *tail = [0; 10];
                    continue;
                }
                if b == b'\n' {
                    // A line that does not end in ` HTTP/1.x` is neither
                    // protocol: a broken HTTP/2 preface as much as a bad
                    // HTTP/1 request line (h2spec 3.5 sends one).
                    let line = if tail[9] == b'\r' {
                        &tail[..9]
                    } else {
                        &tail[1..]
                    };
                    // Any HTTP/1 minor version is hyper's to answer (400
                    // for one it does not speak), not a broken preface.
                    let http1 = line.starts_with(b" HTTP/1.") && line[8].is_ascii_digit();
                    self.mode = Mode::Http1;
                    return (!http1).then_some(PROTOCOL_ERROR);
                }
                tail.copy_within(1.., 0);
                tail[9] = b;
                *line_len += 1;
                if *len > 64 * 1024 {
                    // hyper refuses a line this long on its own.
                    self.mode = Mode::Http1;
                    return None;
                }
            }
            return None;
        }
        if self.mode != Mode::Http2 {
            return None;
        }
        let mut control = 0u32;
        let mut last_stream = self.last_stream;
        self.incoming.feed(bytes, |kind, flags, stream| {
            match kind {
                // HEADERS: a stream the server may have processed.
                0x1 => last_stream = last_stream.max(stream),
                // PRIORITY, WINDOW_UPDATE; SETTINGS and PING unless acks.
                0x2 | 0x8 => control += 1,
                0x4 | 0x6 if flags & 0x1 == 0 => control += 1,
                _ => {}
            }
        });
        self.last_stream = last_stream;
        if control == 0 || self.limit == 0 {
            return None;
        }
        let now = Instant::now();
        match self.window_start {
            Some(start) if now.duration_since(start) < std::time::Duration::from_secs(1) => {
                self.in_window = self.in_window.saturating_add(control);
            }
            _ => {
                self.window_start = Some(now);
                self.in_window = control;
            }
        }
        (self.in_window > self.limit).then_some(ENHANCE_YOUR_CALM)
    }
}

impl<IO: AsyncWrite + Unpin> FrameGuard<IO> {
    /// Writes what is left of the owed GOAWAY, at a frame boundary of the
    /// server's own output. Ready(Ok) once it is all out.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((frame, written)) = &mut self.goaway else {
            return Poll::Ready(Ok(()));
        };
        if *written == 0 && !self.outgoing.at_boundary() {
            // The server is half-way through a frame: its writes finish it first.
            return Poll::Pending;
        }
        while *written < frame.len() {
            match Pin::new(&mut self.io).poll_write(cx, &frame[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let _ = Pin::new(&mut self.io).poll_flush(cx);
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }

    fn sent(&self) -> bool {
        self.goaway.is_some_and(|(f, w)| w == f.len())
    }
}

fn ended() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "HTTP/2 connection ended by the guard",
    )
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for FrameGuard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.mode == Mode::Closing {
            return match this.poll_goaway(cx) {
                Poll::Ready(_) if this.sent() => Poll::Ready(Err(ended())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => {
                    this.reader = Some(cx.waker().clone());
                    Poll::Pending
                }
            };
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(this.mode, Mode::Http1) {
            return polled;
        }
        let Some(code) = this.inspect(&buf.filled()[before..]) else {
            return polled;
        };
        // Nothing of what came with the offence is handed on.
        buf.set_filled(before);
        this.mode = Mode::Closing;
        this.goaway = Some((goaway(this.last_stream, code), 0));
        tracing::debug!(code, "HTTP/2 guard: GOAWAY");
        match this.poll_goaway(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Err(ended())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FrameGuard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.goaway.is_some() && this.outgoing.at_boundary() {
            // The server's frame is done: the GOAWAY goes next, then nothing.
            return match this.poll_goaway(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Err(ended())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        let polled = Pin::new(&mut this.io).poll_write(cx, b);
        if let (Poll::Ready(Ok(n)), Mode::Http2 | Mode::Closing) = (&polled, this.mode) {
            this.outgoing.feed(&b[..*n], |_, _, _| {});
            if this.goaway.is_some() && this.outgoing.at_boundary() {
                if let Some(w) = this.reader.take() {
                    w.wake();
                }
            }
        }
        polled
    }

    // Vectored writes pass through: hyper flattens (copies) its buffers for an
    // IO that is not vectored.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if matches!(this.mode, Mode::Http1 | Mode::FirstLine(..)) {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        if this.goaway.is_some() && this.outgoing.at_boundary() {
            return match this.poll_goaway(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Err(ended())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Mode::Http2 | Mode::Closing) = (&polled, this.mode) {
            let mut left = *n;
            for b in bufs {
                if left == 0 {
                    break;
                }
                let take = left.min(b.len());
                this.outgoing.feed(&b[..take], |_, _, _| {});
                left -= take;
            }
            if this.goaway.is_some() && this.outgoing.at_boundary() {
                if let Some(w) = this.reader.take() {
                    w.wake();
                }
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.goaway.is_some() && !this.sent() && this.poll_goaway(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_flood_earns_enhance_your_calm_and_ordinary_use_does_not() {
        let mut g = FrameGuard::new((), 100);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[]));
        bytes.extend(frame(0x1, 0x4, 3, b"hdrs"));
        assert_eq!(g.inspect(&bytes), None);
        // The client's SETTINGS counts: 99 PINGs make 100 control frames.
        for _ in 0..99 {
            assert_eq!(g.inspect(&frame(0x6, 0, 0, &[0; 8])), None);
        }
        // Acks do not count; the 101st control frame in the second does.
        assert_eq!(g.inspect(&frame(0x6, 0x1, 0, &[0; 8])), None);
        assert_eq!(
            g.inspect(&frame(0x6, 0, 0, &[0; 8])),
            Some(ENHANCE_YOUR_CALM)
        );
        assert_eq!(g.last_stream, 3);
        // A new second, a new allowance.
        let mut g = FrameGuard::new((), 100);
        assert_eq!(g.inspect(PREFACE), None);
        for _ in 0..10 {
            for _ in 0..100 {
                assert_eq!(g.inspect(&frame(0x8, 0, 0, &[0, 0, 0, 1])), None);
            }
            tokio::time::advance(std::time::Duration::from_secs(1)).await;
        }
    }

    #[test]
    fn frames_split_across_reads_are_followed() {
        let mut g = FrameGuard::new((), 2);
        let mut bytes = PREFACE.to_vec();
        for _ in 0..3 {
            bytes.extend(frame(0x2, 0, 1, &[0, 0, 0, 0, 16]));
        }
        let mut got = None;
        for b in bytes.chunks(5) {
            got = got.or(g.inspect(b));
        }
        assert_eq!(got, Some(ENHANCE_YOUR_CALM));
    }

    #[test]
    fn an_invalid_preface_is_a_protocol_error_and_http1_is_not_watched() {
        // Each case: the reads a connection starts with, and what the last
        // one earns; `None` cases end as HTTP/1, not watched.
        let cases: [(&[&[u8]], Option<u32>); 10] = [
            (&[b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"], Some(PROTOCOL_ERROR)),
            (
                &[b"PRI * HTTP/2.0\r\n\r\n", b"SX\r\n\r\n"],
                Some(PROTOCOL_ERROR),
            ),
            (&[b"GET / HTTP/1.1\r\n\r\n"], None),
            (&[b"POST / HTTP/1.1\r\n"], None),
            (&[b"GET /x HT", b"TP/1.0\r", b"\nHost: x\r\n"], None),
            // Empty lines before the request line are skipped (RFC 9112
            // 2.2), in one read or across reads.
            (&[b"\r\n\nGET / HTTP/1.1\r\n"], None),
            (&[b"\r", b"\nGET / HTTP/1.0\r", b"\n"], None),
            // Another HTTP/1 minor version is HTTP/1's to refuse.
            (&[b"GET / HTTP/1.2\r\n"], None),
            // A line that is only a space is not empty.
            (&[b" \r\nGET / HTTP/1.1\r\n"], Some(PROTOCOL_ERROR)),
            // Neither protocol (h2spec 3.5's invalid preface): GOAWAY.
            (
                &[b"INVALID CONNECTION PREFACE\r\n\r\n"],
                Some(PROTOCOL_ERROR),
            ),
        ];
        for (reads, earned) in cases {
            let mut g = FrameGuard::new((), 10);
            let (last, first) = reads.split_last().unwrap();
            for r in first {
                assert_eq!(g.inspect(r), None, "{reads:?}");
            }
            assert_eq!(g.inspect(last), earned, "{reads:?}");
            if earned.is_none() {
                assert_eq!(g.mode, Mode::Http1, "{reads:?}");
            }
        }
    }

    /// A writer that takes vectored writes, as a TCP socket does.
    struct Vectored;
    impl AsyncWrite for Vectored {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
    }

    #[test]
    fn vectored_writes_pass_through_so_hyper_need_not_copy() {
        assert!(FrameGuard::new(Vectored, 10).is_write_vectored());
        let guarded = crate::edge::head_guard::Guarded::new(Vectored, Default::default());
        assert!(FrameGuard::new(guarded, 10).is_write_vectored());
    }

    #[test]
    fn goaway_names_the_last_stream_and_the_reason() {
        let f = goaway(7, ENHANCE_YOUR_CALM);
        assert_eq!(&f[..9], &[0, 0, 8, 7, 0, 0, 0, 0, 0]);
        assert_eq!(&f[9..13], &7u32.to_be_bytes());
        assert_eq!(&f[13..], &11u32.to_be_bytes());
    }
}
