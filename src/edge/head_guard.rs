//! Watches the bytes of an HTTP/1.1 connection as hyper reads them and notes,
//! per request, what hyper tolerates but a hardened edge refuses (RFC 9112 6.1,
//! 6.3, 2.2): Content-Length together with Transfer-Encoding, Content-Length
//! more than once, and line ends without CR. hyper folds these away before the
//! service sees the head (it drops the second length, or the length beside a
//! coding), so the guard reads the framing itself: heads, lengths and chunk
//! sizes, never body bytes. The service asks for its request's verdict by index.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// What the guard found wrong with a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    LengthAndChunked = 1,
    RepeatedLength = 2,
    BareLineFeed = 3,
}

impl Flaw {
    fn from_u8(v: u8) -> Option<Flaw> {
        match v {
            1 => Some(Flaw::LengthAndChunked),
            2 => Some(Flaw::RepeatedLength),
            3 => Some(Flaw::BareLineFeed),
            _ => None,
        }
    }
}

/// The verdicts of one connection, shared by the guard and the service.
#[derive(Debug)]
pub struct Verdicts {
    /// Index of the first flawed request; `u32::MAX` while there is none.
    first: AtomicU32,
    flaw: AtomicU8,
}

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts {
            first: AtomicU32::new(u32::MAX),
            flaw: AtomicU8::new(0),
        }
    }
}

impl Verdicts {
    /// The flaw of request `index` (0 for the connection's first), if any.
    pub fn of(&self, index: u64) -> Option<Flaw> {
        let first = self.first.load(Ordering::Acquire);
        if u64::from(first) != index {
            return None;
        }
        Flaw::from_u8(self.flaw.load(Ordering::Relaxed))
    }

    fn record(&self, index: u32, flaw: Flaw) {
        self.flaw.store(flaw as u8, Ordering::Relaxed);
        self.first.store(index, Ordering::Release);
    }
}

/// Longest head line the guard follows; past it hyper refuses the head (431).
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a head's lines.
    Head,
    /// Skipping this many body bytes.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    ChunkEnd,
    /// Reading trailer lines after the last chunk.
    Trailers,
    /// Done watching: HTTP/2, a flaw found, or bytes the guard cannot follow.
    Off,
}

/// Whether `bytes` is exactly one whole request head that the guard has
/// nothing to note about: CRLF line ends only, no header line that could be
/// Content-Length or Transfer-Encoding (none starts with `c` or `t`), and one
/// empty line, ending the read. Most reads of a keep-alive connection are such
/// a head; a pass over it sixteen byte pairs at a time (the compiler
/// vectorises the inner loop) costs less than a search per line.
fn plain_head(bytes: &[u8]) -> bool {
    let n = bytes.len();
    if n < 20 || !bytes.ends_with(b"\r\n\r\n") || matches!(bytes[0], b'\r' | b'\n') {
        return false;
    }
    // The pairs (previous, this) up to the final CRLF CRLF, whose own empty
    // line is the one allowed.
    let head = &bytes[..n - 2];
    let pairs = head.len() - 1;
    let mut odd = [0u8; 16];
    let mut sixteen = |at: usize| {
        let prev: &[u8; 16] = head[at..at + 16].try_into().expect("sixteen bytes");
        let this: &[u8; 16] = head[at + 1..at + 17].try_into().expect("sixteen bytes");
        for k in 0..16 {
            odd[k] |= pair_flag(prev[k], this[k]);
        }
    };
    let mut at = 0;
    while at + 16 <= pairs {
        sixteen(at);
        at += 16;
    }
    if at < pairs {
        // The last sixteen pairs, overlapping ones already seen.
        sixteen(pairs - 16);
    }
    odd.iter().all(|&f| f == 0)
}

/// 1 when `this` after `prev` is a line end without CR, or a line that starts
/// with `c`, `t` or CR (an empty line).
#[inline(always)]
fn pair_flag(prev: u8, this: u8) -> u8 {
    let lower = this | 0x20;
    let bare_lf = (this == b'\n') & (prev != b'\r');
    let line_start = (prev == b'\n') & ((lower == b'c') | (lower == b't') | (this == b'\r'));
    u8::from(bare_lf | line_start)
}

/// The framing reader.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    line: Vec<u8>,
    /// Requests whose heads began so far.
    heads: u32,
    first_line: bool,
    lengths: u32,
    length: Option<u64>,
    chunked: bool,
    coded: bool,
    bare_lf: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            state: State::Head,
            line: Vec::new(),
            heads: 0,
            first_line: true,
            lengths: 0,
            length: None,
            chunked: false,
            coded: false,
            bare_lf: false,
        }
    }
}

fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    if line.len() <= name.len()
        || line[0].to_ascii_lowercase() != name[0]
        || !line[..name.len()].eq_ignore_ascii_case(name)
    {
        return None;
    }
    line[name.len()..]
        .strip_prefix(b":")
        .map(<[u8]>::trim_ascii)
}

impl Scanner {
    /// Feeds bytes as they were read; records flaws in `verdicts`.
    pub fn feed(&mut self, mut bytes: &[u8], verdicts: &Verdicts) {
        while !bytes.is_empty() {
            match self.state {
                State::Off => return,
                State::Body(n) => {
                    let take = n.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = if n == take {
                        State::Head
                    } else {
                        State::Body(n - take)
                    };
                }
                State::ChunkData(n) => {
                    let take = n.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = if n == take {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                State::Head if self.first_line && self.line.is_empty() && plain_head(bytes) => {
                    self.heads += 1;
                    return;
                }
                State::Head if self.line.is_empty() => {
                    // The common case: whole head lines in this read, taken in
                    // place. Lines that cannot be Content-Length or
                    // Transfer-Encoding and end in CRLF need no closer look.
                    let mut start = 0;
                    let mut left_head = false;
                    for nl in memchr::memchr_iter(b'\n', bytes) {
                        let crlf = nl > start && bytes[nl - 1] == b'\r';
                        let line = &bytes[start..if crlf { nl - 1 } else { nl }];
                        start = nl + 1;
                        if crlf && !self.first_line {
                            if let Some(&first) = line.first() {
                                let first = first | 0x20;
                                if first != b'c' && first != b't' {
                                    continue;
                                }
                            }
                        }
                        self.head_line(line, crlf, verdicts);
                        if self.state != State::Head {
                            left_head = true;
                            break;
                        }
                    }
                    bytes = &bytes[start..];
                    if !left_head {
                        if bytes.len() > MAX_LINE {
                            self.state = State::Off;
                        } else {
                            self.line.extend_from_slice(bytes);
                        }
                        return;
                    }
                }
                State::Head | State::Trailers | State::ChunkSize | State::ChunkEnd => {
                    let Some(at) = memchr::memchr(b'\n', bytes) else {
                        if self.line.len() + bytes.len() > MAX_LINE {
                            self.state = State::Off;
                        } else {
                            self.line.extend_from_slice(bytes);
                        }
                        return;
                    };
                    if self.line.is_empty() {
                        // The whole line is in this read: no copy.
                        let line = &bytes[..at];
                        bytes = &bytes[at + 1..];
                        let (line, crlf) = match line.strip_suffix(b"\r") {
                            Some(l) => (l, true),
                            None => (line, false),
                        };
                        self.line_done(line, crlf, verdicts);
                        continue;
                    }
                    let mut line = std::mem::take(&mut self.line);
                    line.extend_from_slice(&bytes[..at]);
                    bytes = &bytes[at + 1..];
                    let crlf = line.last() == Some(&b'\r');
                    if crlf {
                        line.pop();
                    }
                    self.line_done(&line, crlf, verdicts);
                    line.clear();
                    self.line = line;
                }
            }
        }
    }

    fn off(&mut self, verdicts: &Verdicts, flaw: Flaw) {
        verdicts.record(self.heads.saturating_sub(1), flaw);
        self.state = State::Off;
    }

    fn line_done(&mut self, line: &[u8], crlf: bool, verdicts: &Verdicts) {
        match self.state {
            State::Head => self.head_line(line, crlf, verdicts),
            State::ChunkSize => self.chunk_size_line(line, crlf, verdicts),
            State::ChunkEnd => {
                self.state = if line.is_empty() {
                    State::ChunkSize
                } else {
                    State::Off
                };
            }
            State::Trailers => {
                if line.is_empty() {
                    self.state = State::Head;
                }
            }
            State::Body(_) | State::ChunkData(_) | State::Off => {}
        }
    }

    fn head_line(&mut self, line: &[u8], crlf: bool, verdicts: &Verdicts) {
        if self.first_line {
            // RFC 9112 2.2: empty lines before a request line are ignored.
            if line.is_empty() {
                return;
            }
            if line.starts_with(b"PRI * HTTP/2") {
                self.state = State::Off;
                return;
            }
            self.heads += 1;
            self.first_line = false;
            self.lengths = 0;
            self.length = None;
            self.chunked = false;
            self.coded = false;
            self.bare_lf = !crlf;
            return;
        }
        self.bare_lf |= !crlf;
        if !line.is_empty() {
            if let Some(v) = header_value(line, b"content-length") {
                self.lengths += 1;
                self.length = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
            } else if let Some(v) = header_value(line, b"transfer-encoding") {
                self.coded = true;
                let last = v.rsplit(|&b| b == b',').next().unwrap_or(b"").trim_ascii();
                self.chunked = last.eq_ignore_ascii_case(b"chunked");
            }
            return;
        }
        // The end of the head.
        self.first_line = true;
        if self.bare_lf {
            return self.off(verdicts, Flaw::BareLineFeed);
        }
        if self.coded && self.lengths > 0 {
            return self.off(verdicts, Flaw::LengthAndChunked);
        }
        if self.lengths > 1 {
            return self.off(verdicts, Flaw::RepeatedLength);
        }
        self.state = match (self.coded, self.chunked, self.length) {
            (true, true, _) => State::ChunkSize,
            // A coding hyper refuses, or a length it cannot read: it answers 400.
            (true, false, _) => State::Off,
            (false, _, Some(0)) | (false, _, None) if self.lengths == 0 => State::Head,
            (false, _, Some(n)) => State::Body(n),
            (false, _, _) => State::Off,
        };
        if self.state == State::Body(0) {
            self.state = State::Head;
        }
    }

    fn chunk_size_line(&mut self, line: &[u8], crlf: bool, verdicts: &Verdicts) {
        if !crlf {
            return self.off(verdicts, Flaw::BareLineFeed);
        }
        let size = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or(b"")
            .trim_ascii_end();
        let parsed = std::str::from_utf8(size)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 16)
            .and_then(|s| u64::from_str_radix(s, 16).ok());
        self.state = match parsed {
            Some(0) => State::Trailers,
            Some(n) => State::ChunkData(n),
            // hyper refuses it too; nothing after it is a request.
            None => State::Off,
        };
    }
}

/// An HTTP/1 connection's byte stream with the guard reading along.
#[derive(Debug)]
pub struct Guarded<IO> {
    io: IO,
    scanner: Scanner,
    verdicts: Arc<Verdicts>,
}

impl<IO> Guarded<IO> {
    pub fn new(io: IO, verdicts: Arc<Verdicts>) -> Self {
        Guarded {
            io,
            scanner: Scanner::default(),
            verdicts,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.scanner.state != State::Off {
            this.scanner.feed(&buf.filled()[before..], &this.verdicts);
        }
        polled
    }
}

crate::edge::io_delegate::delegate_async_write!(Guarded, io);

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step` and returns the verdict per request.
    fn verdicts(bytes: &[u8], step: usize) -> Vec<Option<Flaw>> {
        let v = Verdicts::default();
        let mut s = Scanner::default();
        for piece in bytes.chunks(step) {
            s.feed(piece, &v);
        }
        (0..4).map(|i| v.of(i)).collect()
    }

    #[test]
    fn well_framed_pipelines_have_no_flaw_whatever_the_reads() {
        let pipeline = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
            POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
            GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for step in [1, 3, 7, 64, 4096] {
            assert_eq!(verdicts(pipeline, step), [None; 4], "step {step}");
        }
    }

    #[test]
    fn flaws_hyper_folds_away_are_noted_for_their_request() {
        let second = |head: &[u8]| {
            let mut b = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
            b.extend_from_slice(head);
            verdicts(&b, 5)[1]
        };
        assert_eq!(
            second(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            Some(Flaw::LengthAndChunked)
        );
        assert_eq!(
            second(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n"),
            Some(Flaw::LengthAndChunked)
        );
        assert_eq!(
            second(b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            Some(Flaw::RepeatedLength)
        );
        assert_eq!(
            second(b"GET / HTTP/1.1\nHost: a\n\n"),
            Some(Flaw::BareLineFeed)
        );
        assert_eq!(
            second(b"GET / HTTP/1.1\r\nHost: a\n\r\n"),
            Some(Flaw::BareLineFeed)
        );
    }

    #[test]
    fn a_bare_lf_in_a_chunk_size_line_is_a_flaw_of_its_request() {
        let b = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nhello\r\n0\r\n\r\n";
        assert_eq!(verdicts(b, 4)[0], Some(Flaw::BareLineFeed));
    }

    #[test]
    fn plain_heads_read_whole_are_counted_and_the_rest_looked_at() {
        let v = Verdicts::default();
        let mut s = Scanner::default();
        let reads: [&[u8]; 5] = [
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
            b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 1\r\nContent-Length: 1\r\n\r\nx",
        ];
        assert!(plain_head(reads[0]) && plain_head(reads[1]));
        assert!(!plain_head(reads[2]) && !plain_head(reads[4]));
        assert!(!plain_head(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
        ));
        assert!(!plain_head(
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!plain_head(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        for read in &reads[..3] {
            s.feed(read, &v);
        }
        assert_eq!(
            (0..3).map(|i| v.of(i)).collect::<Vec<_>>(),
            [None, None, Some(Flaw::BareLineFeed)]
        );
        // A fresh guard: the flaw of the fifth request, after four plain ones.
        let (v, mut s) = (Verdicts::default(), Scanner::default());
        for read in [reads[0], reads[1], reads[3], reads[1], reads[4]] {
            s.feed(read, &v);
        }
        assert_eq!(v.of(4), Some(Flaw::RepeatedLength));
        assert_eq!(v.of(3), None);
    }

    #[test]
    fn the_plain_head_pass_agrees_with_a_line_by_line_reading() {
        // Line by line, the obvious way.
        fn reference(b: &[u8]) -> bool {
            let Some(head) = b.strip_suffix(b"\r\n\r\n") else {
                return false;
            };
            let bare_lf = b.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') || b[0] == b'\n';
            let mut lines = Vec::new();
            let mut rest = head;
            while let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
                lines.push(&rest[..at]);
                rest = &rest[at + 2..];
            }
            lines.push(rest);
            b.len() >= 20
                && !bare_lf
                && b[0] != b'\r'
                && lines.iter().skip(1).all(|line| {
                    let first = line.first().copied();
                    !matches!(first, None | Some(b'\r'))
                        && !matches!(first.map(|c| c | 0x20), Some(b'c' | b't'))
                })
        }
        let mut rng = fastrand::Rng::with_seed(11);
        let pieces: [&[u8]; 9] = [
            b"\r\n", b"\n", b"\r", b"c", b"T", b"ab:", b"-x", b" x", b"Host: a",
        ];
        for _ in 0..20_000 {
            let mut b = if rng.bool() {
                b"GET / HTTP/1.1".to_vec()
            } else {
                Vec::new()
            };
            for _ in 0..rng.usize(0..12) {
                b.extend_from_slice(pieces[rng.usize(..pieces.len())]);
            }
            b.extend_from_slice(b"\r\n\r\n");
            assert_eq!(
                plain_head(&b),
                reference(&b),
                "{:?}",
                String::from_utf8_lossy(&b)
            );
        }
    }

    #[test]
    fn http2_is_not_watched() {
        let b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        assert_eq!(verdicts(b, 3), [None; 4]);
    }

    mod properties {
        use super::super::*;
        use super::verdicts;
        use proptest::prelude::*;

        /// A request head: (header lines, which end in a bare LF, how many
        /// Content-Length lines, chunked or not).
        fn head() -> impl Strategy<Value = (Vec<(String, bool)>, usize, bool)> {
            (
                prop::collection::vec(
                    ("[A-Z][a-z]{1,8}: [a-z0-9]{1,8}", prop::bool::weighted(0.1)),
                    0..5,
                ),
                0usize..3,
                any::<bool>(),
                prop::collection::vec(any::<bool>(), 4),
            )
                .prop_map(|(mut lines, lengths, chunked, lf)| {
                    for bare in lf.iter().take(lengths) {
                        lines.push(("Content-Length: 5".to_owned(), *bare));
                    }
                    if chunked {
                        lines.push(("Transfer-Encoding: chunked".to_owned(), lf[3]));
                    }
                    (lines, lengths, chunked)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// The guard's verdict agrees with a plain reading of the same
            /// bytes, however the reads split them.
            #[test]
            fn the_verdict_agrees_with_a_reference_reading(
                (lines, lengths, chunked) in head(),
                step in 1usize..64,
            ) {
                let mut bytes = b"POST / HTTP/1.1\r\nHost: a\r\n".to_vec();
                for (line, bare) in &lines {
                    bytes.extend_from_slice(line.as_bytes());
                    bytes.extend_from_slice(if *bare { b"\n" } else { b"\r\n" });
                }
                bytes.extend_from_slice(b"\r\n");
                if chunked {
                    bytes.extend_from_slice(b"0\r\n\r\n");
                } else if lengths > 0 {
                    bytes.extend_from_slice(b"hello");
                }
                let mut flaws = Vec::new();
                if lines.iter().any(|(_, bare)| *bare) {
                    flaws.push(Flaw::BareLineFeed);
                }
                if lengths >= 2 {
                    flaws.push(Flaw::RepeatedLength);
                }
                if lengths >= 1 && chunked {
                    flaws.push(Flaw::LengthAndChunked);
                }
                let got = verdicts(&bytes, step)[0];
                match got {
                    None => prop_assert!(flaws.is_empty(), "missed {:?} in {:?}", flaws, String::from_utf8_lossy(&bytes)),
                    Some(f) => prop_assert!(flaws.contains(&f), "{:?} not in {:?}", f, flaws),
                }
            }
        }
    }
}
