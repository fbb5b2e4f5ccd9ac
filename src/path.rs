//! Request paths read once: the form the route matcher, the residency fence and
//! the region all see. Escapes of unreserved characters are decoded, dot-segments
//! resolved and repeated slashes folded (RFC 3986 6.2.2, 5.2.4); a spelling that
//! another reader could split into other segments is flagged, never guessed.

use std::borrow::Cow;

/// Why a path is refused whatever the route says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("the path has a '%' that is not followed by two hex digits")]
    BadEscape,
    #[error("the path encodes a control character (%00-%1F, %7F)")]
    ControlByte,
    #[error("the path's escapes do not decode to UTF-8 (overlong or broken sequences)")]
    NotUtf8,
    #[error("the path is encoded twice (%25 followed by an escape)")]
    DoubleEncoded,
    #[error("{0}; this route refuses paths that another reader could split differently")]
    Ambiguous(Ambiguity),
}

/// A spelling that some readers split into other segments than others do. The
/// reading decodes it; a route with `path_escapes = "reject"` refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ambiguity {
    #[error("the path has an encoded slash (%2F)")]
    EncodedSlash,
    #[error("the path has a backslash (\\ or %5C)")]
    Backslash,
    #[error("the path has ';' parameters")]
    Parameters,
    #[error("the path has an encoded dot-segment (%2E)")]
    EncodedDotSegment,
}

/// What a route does with an ambiguous path: refuse it (400) or forward the
/// decoded reading it was routed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathEscapes {
    #[default]
    Reject,
    Decode,
}

impl PathEscapes {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reject" => Some(Self::Reject),
            "decode" => Some(Self::Decode),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Decode => "decode",
        }
    }
}

/// A path as read: the form to match and forward, and the ambiguity (if any)
/// that decoding resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading<'a> {
    pub path: Cow<'a, str>,
    pub ambiguity: Option<Ambiguity>,
}

/// Whether a byte needs a look: an escape, a backslash, a parameter, or a
/// slash that may start a dot-segment or an empty one.
fn may_change(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in path {
        if matches!(b, b'%' | b'\\' | b';') || (prev == b'/' && (b == b'.' || b == b'/')) {
            return true;
        }
        prev = b;
    }
    false
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// One segment being read.
#[derive(Default)]
struct Segment {
    text: String,
    /// A `.` in it came from `%2E`.
    encoded_dot: bool,
    /// Escaped bytes of 0x80 and above not yet checked as UTF-8.
    pending: Vec<u8>,
}

/// The reader: segments so far, and what made the path ambiguous.
struct Reader {
    out: Vec<String>,
    seg: Segment,
    ambiguity: Option<Ambiguity>,
    /// The last segment was empty or a dot-segment: the path ends in `/`.
    trailing_slash: bool,
}

impl Reader {
    fn flag(&mut self, a: Ambiguity) {
        self.ambiguity.get_or_insert(a);
    }

    /// Checks the run of escaped high bytes that just ended.
    fn end_run(&mut self) -> Result<(), PathError> {
        if !self.seg.pending.is_empty() {
            std::str::from_utf8(&self.seg.pending).map_err(|_| PathError::NotUtf8)?;
            self.seg.pending.clear();
        }
        Ok(())
    }

    fn push(&mut self, c: char) -> Result<(), PathError> {
        self.end_run()?;
        self.seg.text.push(c);
        Ok(())
    }

    fn end_segment(&mut self) -> Result<(), PathError> {
        self.end_run()?;
        let seg = std::mem::take(&mut self.seg);
        // `%25` then two hex digits, as read (`%25%41B` too): a second decoding
        // would make it another character.
        let t = seg.text.as_bytes();
        if t.windows(5)
            .any(|w| w[..3] == *b"%25" && hex(w[3]).is_some() && hex(w[4]).is_some())
        {
            return Err(PathError::DoubleEncoded);
        }
        let dots = seg.text == "." || seg.text == "..";
        if dots && seg.encoded_dot {
            self.flag(Ambiguity::EncodedDotSegment);
        }
        self.trailing_slash = true;
        match seg.text.as_str() {
            "" | "." => {}
            ".." => {
                if self.out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            _ => {
                self.out.push(seg.text);
                self.trailing_slash = false;
            }
        }
        Ok(())
    }
}

/// Reads an origin-form path (no query). Most paths need nothing and come
/// back borrowed; the rest are decoded and rebuilt once.
pub fn read(path: &str) -> Result<Reading<'_>, PathError> {
    if !path.starts_with('/') {
        // `*` (OPTIONS) and authority-form (CONNECT) have no path to read.
        return if path == "*" || path.is_empty() {
            Ok(Reading {
                path: Cow::Borrowed(path),
                ambiguity: None,
            })
        } else {
            Err(PathError::NotAbsolute)
        };
    }
    if !may_change(path.as_bytes()) {
        return Ok(Reading {
            path: Cow::Borrowed(path),
            ambiguity: None,
        });
    }
    let b = path.as_bytes();
    let mut r = Reader {
        out: Vec::new(),
        seg: Segment::default(),
        ambiguity: None,
        trailing_slash: false,
    };
    let mut i = 1;
    while i < b.len() {
        let c = b[i];
        match c {
            b'/' => r.end_segment()?,
            b'\\' => {
                r.flag(Ambiguity::Backslash);
                r.end_segment()?;
            }
            b';' => {
                // Servlet containers drop `;...` up to the next slash.
                r.flag(Ambiguity::Parameters);
                while i + 1 < b.len() && b[i + 1] != b'/' && b[i + 1] != b'\\' {
                    i += 1;
                }
            }
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi << 4 | lo;
                i += 2;
                match v {
                    0x00..=0x1F | 0x7F => return Err(PathError::ControlByte),
                    b'/' => {
                        r.flag(Ambiguity::EncodedSlash);
                        r.end_segment()?;
                    }
                    b'\\' => {
                        r.flag(Ambiguity::Backslash);
                        r.end_segment()?;
                    }
                    v if unreserved(v) => {
                        r.seg.encoded_dot |= v == b'.';
                        r.push(char::from(v))?;
                    }
                    v => {
                        if v >= 0x80 {
                            r.seg.pending.push(v);
                        } else {
                            r.end_run()?;
                        }
                        push_escape(&mut r.seg.text, v);
                    }
                }
            }
            _ => {
                // Raw bytes of a multi-byte character are copied whole.
                let len = utf8_len(c);
                r.end_run()?;
                r.seg.text.push_str(&path[i..i + len]);
                i += len - 1;
            }
        }
        i += 1;
    }
    r.end_segment()?;
    let mut joined = String::with_capacity(path.len());
    for s in &r.out {
        joined.push('/');
        joined.push_str(s);
    }
    if joined.is_empty() || (r.trailing_slash && !r.out.is_empty()) {
        joined.push('/');
    }
    let path = if joined == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(joined)
    };
    Ok(Reading {
        path,
        ambiguity: r.ambiguity,
    })
}

fn push_escape(out: &mut String, v: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(v >> 4)]));
    out.push(char::from(HEX[usize::from(v & 15)]));
}

/// Length of the UTF-8 sequence a lead byte starts (the path is a `str`).
fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

/// Why a route's `path_prefix` cannot be matched against read paths.
pub fn prefix_problem(prefix: &str) -> Option<&'static str> {
    if !prefix.starts_with('/') {
        return Some("must start with '/'");
    }
    if prefix.bytes().any(|b| !(unreserved(b) || b == b'/')) {
        return Some(
            "may hold only letters, digits, '-', '.', '_', '~' and '/' (paths are matched decoded; a reserved character could be spelled two ways)",
        );
    }
    match read(prefix) {
        Ok(r) if r.path == prefix => None,
        _ => Some("must be a normalised path: no '.' or '..' segments and no '//'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        let r = read(p)?;
        match r.ambiguity {
            Some(a) => Err(PathError::Ambiguous(a)),
            None => Ok(r.path.into_owned()),
        }
    }

    fn decoded(p: &str) -> Result<String, PathError> {
        read(p).map(|r| r.path.into_owned())
    }

    #[test]
    fn plain_paths_pass_unchanged_and_borrowed() {
        for p in [
            "/",
            "/api/x",
            "/a/b/",
            "/a.b/c..d/.e",
            "/x%20y",
            "/caf%C3%A9",
        ] {
            let r = read(p).unwrap();
            assert!(matches!(r.path, Cow::Borrowed(q) if q == p), "{p}");
            assert_eq!(r.ambiguity, None, "{p}");
        }
    }

    #[test]
    fn dot_segments_are_resolved_before_matching() {
        for (raw, want) in [
            ("/static/../api/x", "/api/x"),
            ("/static/./x", "/static/x"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a//b///c", "/a/b/c"),
            ("//api", "/api"),
            ("/..a/b", "/..a/b"),
        ] {
            assert_eq!(n(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        for (raw, want) in [
            ("/%61pi/me", "/api/me"),
            ("/a%2eb", "/a.b"),
            ("/%7euser", "/~user"),
            ("/a%20b%3f", "/a%20b%3F"),
            ("/caf%c3%a9", "/caf%C3%A9"),
        ] {
            assert_eq!(n(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn a_path_above_the_root_is_refused() {
        for raw in ["/..", "/../etc/passwd", "/a/../../b", "/%2e%2e/x"] {
            assert_eq!(decoded(raw), Err(PathError::AboveRoot), "{raw}");
        }
    }

    #[test]
    fn spellings_that_split_differently_are_flagged_and_decoded() {
        for (raw, want, why) in [
            ("/static/..%2fapi/me", "/api/me", Ambiguity::EncodedSlash),
            ("/static/..%2Fapi/me", "/api/me", Ambiguity::EncodedSlash),
            ("/a%2Fb", "/a/b", Ambiguity::EncodedSlash),
            ("/static/..%5capi/me", "/api/me", Ambiguity::Backslash),
            ("/static/..\\api/me", "/api/me", Ambiguity::Backslash),
            ("/static/..;/api/me", "/api/me", Ambiguity::Parameters),
            ("/api;jsessionid=1/me", "/api/me", Ambiguity::Parameters),
            ("/static/%2e%2e/api", "/api", Ambiguity::EncodedDotSegment),
            ("/static/.%2e/api", "/api", Ambiguity::EncodedDotSegment),
            ("/a/%2e/b", "/a/b", Ambiguity::EncodedDotSegment),
        ] {
            let r = read(raw).unwrap();
            assert_eq!((r.path.as_ref(), r.ambiguity), (want, Some(why)), "{raw}");
            assert_eq!(n(raw), Err(PathError::Ambiguous(why)), "{raw}");
        }
    }

    #[test]
    fn malformed_escapes_are_refused_whatever_the_route() {
        for (raw, why) in [
            ("/a%2", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a%00b", PathError::ControlByte),
            ("/a%0d%0ab", PathError::ControlByte),
            ("/a%7f", PathError::ControlByte),
            ("/a%c0%afb", PathError::NotUtf8),
            ("/a%c0%ae%c0%ae/b", PathError::NotUtf8),
            ("/a%e0%80%af", PathError::NotUtf8),
            ("/a%c3", PathError::NotUtf8),
            ("/a%c3x", PathError::NotUtf8),
            ("/a%252fb", PathError::DoubleEncoded),
            ("/a%252e%252e/b", PathError::DoubleEncoded),
            ("/a%25%41B", PathError::DoubleEncoded),
        ] {
            assert_eq!(decoded(raw), Err(why), "{raw}");
        }
        assert_eq!(n("/100%25").as_deref(), Ok("/100%25"));
    }

    #[test]
    fn asterisk_and_relative_forms() {
        assert_eq!(n("*").as_deref(), Ok("*"));
        assert_eq!(n("a/b"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn route_prefixes_must_be_plain_and_normal() {
        for ok in ["/", "/api/", "/v2", "/a-b_c.d~e/"] {
            assert_eq!(prefix_problem(ok), None, "{ok}");
        }
        for bad in [
            "api/", "/a%2Fb/", "/a;b", "/a b", "/a/../b", "/a//b", "/a!b", "/café",
        ] {
            assert!(prefix_problem(bad).is_some(), "{bad}");
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Pieces that make hard paths: separators, dots and escapes of every kind.
        fn piece() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "/", "//", ".", "..", "a", "B", "%2e", "%2E", "%2f", "%5c", "\\", ";", ";x", "%25",
                "%252e", "%41", "%7e", "%20", "%c3%a9", "%c0%af", "%", "%0a", "~", "-", "\u{e9}",
            ])
        }

        fn hard_path() -> impl Strategy<Value = String> {
            prop::collection::vec(piece(), 0..12).prop_map(|v| format!("/{}", v.concat()))
        }

        /// A plain path of lower-case segments, as (segments, trailing slash).
        fn plain() -> impl Strategy<Value = (Vec<String>, bool)> {
            (
                prop::collection::vec("[a-z0-9_~-]{1,6}", 0..5),
                any::<bool>(),
            )
        }

        fn join((segs, trailing): &(Vec<String>, bool)) -> String {
            let mut p = String::new();
            for s in segs {
                p.push('/');
                p.push_str(s);
            }
            if p.is_empty() || *trailing {
                p.push('/');
            }
            p
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn a_reading_is_normal_and_reads_again_as_itself(raw in hard_path()) {
                if let Ok(r) = read(&raw) {
                    let p = r.path.as_ref();
                    prop_assert!(p.starts_with('/'));
                    prop_assert!(!p.contains("//"), "{raw} -> {p}");
                    prop_assert!(!p.contains('\\') && !p.contains(';'), "{raw} -> {p}");
                    for seg in p.split('/') {
                        prop_assert!(seg != "." && seg != "..", "{raw} -> {p}");
                    }
                    let again = read(p).unwrap();
                    prop_assert_eq!(again.path.as_ref(), p);
                    prop_assert_eq!(again.ambiguity, None);
                }
            }

            #[test]
            fn equivalent_spellings_read_alike(
                path in plain(),
                encode in prop::collection::vec(any::<(bool, bool)>(), 64),
                detour in any::<Option<u8>>(),
            ) {
                let want = join(&path);
                // Escape some characters, in either case of hex.
                let mut spelled = String::new();
                for (i, c) in want.chars().enumerate() {
                    match encode.get(i) {
                        Some((true, upper)) if c != '/' => {
                            let e = format!("%{:02x}", c as u32);
                            spelled.push_str(&if *upper { e.to_uppercase() } else { e });
                        }
                        _ => spelled.push(c),
                    }
                }
                // A detour (`x/..`, `.`, an extra slash) that leads back.
                if let Some(at) = detour {
                    let cuts: Vec<usize> = spelled.match_indices('/').map(|(i, _)| i).collect();
                    let cut = cuts[usize::from(at) % cuts.len()];
                    let extra = ["/x/..", "/.", "/"][usize::from(at) % 3];
                    spelled.insert_str(cut, extra);
                }
                let r = read(&spelled).unwrap();
                prop_assert_eq!(r.path.as_ref(), want.as_str(), "{}", spelled);
                prop_assert_eq!(r.ambiguity, None);
            }
        }
    }
}
