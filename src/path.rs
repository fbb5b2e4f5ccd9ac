//! Request paths as the route matcher and the region see them: dot-segments
//! (also percent-encoded) resolved and repeated slashes folded (RFC 3986 5.2.4),
//! so `/static/../api` cannot pick the `/static` route and reach `/api`. A path
//! that climbs above the root is refused. Pure; allocates only when it changes
//! something.

use std::borrow::Cow;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path has an encoded slash (%2F), which this router refuses")]
    EncodedSlash,
    #[error("the path does not start with /")]
    NotAbsolute,
}

/// Whether a path may need work: a dot right after a slash, two slashes in a
/// row, or any percent-escape. Most paths have none and pass borrowed.
fn may_change(path: &[u8], reject_encoded_slash: bool) -> bool {
    path.windows(2)
        .any(|w| (w[0] == b'/' && (w[1] == b'.' || w[1] == b'/')) || w[0] == b'%')
        || (reject_encoded_slash && path.contains(&b'%'))
}

/// Decodes `%2e`/`%2E` to `.` (and notes `%2f`/`%2F`); other escapes stay.
fn decode_dots(path: &str) -> (Cow<'_, str>, bool) {
    let b = path.as_bytes();
    let mut slash = false;
    let mut dots = false;
    for w in b.windows(3) {
        if w[0] == b'%' && w[1] == b'2' {
            dots |= w[2] == b'e' || w[2] == b'E';
            slash |= w[2] == b'f' || w[2] == b'F';
        }
    }
    if !dots {
        return (Cow::Borrowed(path), slash);
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && b.get(i + 1) == Some(&b'2') {
            if let Some(c) = b.get(i + 2) {
                if *c == b'e' || *c == b'E' {
                    out.push('.');
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    (Cow::Owned(out), slash)
}

/// The normalised form of an origin-form path (no query).
pub fn normalize(path: &str, reject_encoded_slash: bool) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        // `*` (OPTIONS) and authority-form (CONNECT) have no path to normalise.
        return if path == "*" || path.is_empty() {
            Ok(Cow::Borrowed(path))
        } else {
            Err(PathError::NotAbsolute)
        };
    }
    if !may_change(path.as_bytes(), reject_encoded_slash) {
        return Ok(Cow::Borrowed(path));
    }
    let (decoded, encoded_slash) = decode_dots(path);
    if encoded_slash && reject_encoded_slash {
        return Err(PathError::EncodedSlash);
    }
    // Segments after the leading slash; "." and empty ones dropped, ".." pops.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = i == last;
            }
            "" => trailing_slash = i == last && i > 0,
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut joined = String::with_capacity(decoded.len());
    for s in &out {
        joined.push('/');
        joined.push_str(s);
    }
    if joined.is_empty() || trailing_slash {
        joined.push('/');
    }
    if joined == path {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(joined))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p, false).map(Cow::into_owned)
    }

    #[test]
    fn plain_paths_pass_unchanged_and_borrowed() {
        for p in ["/", "/api/x", "/a/b/", "/a.b/c..d/.e", "/x%20y"] {
            assert!(
                matches!(normalize(p, false), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
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
            ("/static/%2e%2e/api", "/api"),
            ("/static/%2E%2e/api", "/api"),
            ("/static/.%2e/api", "/api"),
            ("/a/%2e/b", "/a/b"),
            ("/..a/b", "/..a/b"),
        ] {
            assert_eq!(n(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn a_path_above_the_root_is_refused() {
        for raw in ["/..", "/../etc/passwd", "/a/../../b", "/%2e%2e/x"] {
            assert_eq!(n(raw), Err(PathError::AboveRoot), "{raw}");
        }
    }

    #[test]
    fn encoded_slashes_are_refused_only_when_asked() {
        assert_eq!(n("/a%2Fb").as_deref(), Ok("/a%2Fb"));
        assert_eq!(normalize("/a%2fb", true), Err(PathError::EncodedSlash));
    }

    #[test]
    fn asterisk_and_relative_forms() {
        assert_eq!(n("*").as_deref(), Ok("*"));
        assert_eq!(n("a/b"), Err(PathError::NotAbsolute));
    }
}
