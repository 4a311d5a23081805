//! Request path normalisation, before route match: the gateway and the
//! backend must read a path the same way, or a rule on `/admin` is
//! bypassed with `//admin`, `/x/../admin`, `/%61dmin` or `/./admin`.
//!
//! In order: percent-encoded unreserved characters are decoded and the
//! other escapes upper-cased (RFC 3986 §6.2.2.1–2), encoded slashes handled
//! by policy, runs of slashes merged (as nginx's `merge_slashes`), then dot
//! segments removed (RFC 3986 §5.2.4). Envoy's `normalize_path`,
//! `merge_slashes` and `path_with_escaped_slashes_action` are the model.

use std::borrow::Cow;

/// What to do with `%2F` and `%5C` (an encoded `/` or `\`) in a path: a
/// backend that decodes them before routing sees segments the gateway
/// did not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Forward them encoded (upper-cased); routing sees one segment.
    Keep,
    /// Answer 400.
    Reject,
    /// Decode them, then normalise, and forward the result.
    Decode,
    /// Decode them, normalise, and send the client there (307) so that
    /// client, gateway and backend all use one path. Clients that cannot
    /// follow a redirect (gRPC) get 400.
    #[default]
    Redirect,
}

/// How paths are normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathPolicy {
    /// Decode unreserved escapes and remove dot segments.
    pub normalize: bool,
    /// Merge runs of `/` into one.
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self {
            normalize: true,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::default(),
        }
    }
}

/// The outcome for one path.
#[derive(Debug, PartialEq, Eq)]
pub enum PathVerdict<'a> {
    /// Route and forward this path (borrowed when nothing changed).
    Serve(Cow<'a, str>),
    /// Redirect the client to this path (escaped slashes decoded).
    Redirect(String),
    /// Answer 400: an invalid escape, or an escaped slash under `Reject`.
    Reject,
}

/// `path` (no query) as `policy` normalises it. A path that does not
/// start with `/` (`*`) is served as it is.
pub fn normalize(path: &str, policy: PathPolicy) -> PathVerdict<'_> {
    let bytes = path.as_bytes();
    if !bytes.starts_with(b"/") || is_canonical(bytes, policy) {
        return PathVerdict::Serve(Cow::Borrowed(path));
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut unescaped_slash = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            decoded.push(b);
            i += 1;
            continue;
        }
        let (Some(high), Some(low)) = (
            bytes.get(i + 1).and_then(|&h| hex(h)),
            bytes.get(i + 2).and_then(|&l| hex(l)),
        ) else {
            return PathVerdict::Reject;
        };
        let value = high << 4 | low;
        i += 3;
        if value == b'/' || value == b'\\' {
            match policy.escaped_slashes {
                EscapedSlashes::Reject => return PathVerdict::Reject,
                EscapedSlashes::Decode | EscapedSlashes::Redirect => {
                    decoded.push(value);
                    unescaped_slash = true;
                    continue;
                }
                EscapedSlashes::Keep => {}
            }
        } else if policy.normalize && is_unreserved(value) {
            decoded.push(value);
            continue;
        }
        decoded.extend_from_slice(&[
            b'%',
            HEX_DIGITS[usize::from(high)],
            HEX_DIGITS[usize::from(low)],
        ]);
    }
    if policy.merge_slashes {
        decoded.dedup_by(|b, a| *a == b'/' && *b == b'/');
    }
    if policy.normalize {
        decoded = remove_dot_segments(&decoded);
    }
    // Only ASCII went in, and escapes decode to ASCII alone here.
    let Ok(normal) = String::from_utf8(decoded) else {
        return PathVerdict::Reject;
    };
    if unescaped_slash && policy.escaped_slashes == EscapedSlashes::Redirect {
        return PathVerdict::Redirect(normal);
    }
    PathVerdict::Serve(Cow::Owned(normal))
}

/// Whether `path` needs no work: no escape, and (as the policy asks) no
/// `//` and no `.` segment. Most paths are; this keeps them uncopied.
fn is_canonical(path: &[u8], policy: PathPolicy) -> bool {
    if path.contains(&b'%') {
        return false;
    }
    let mut previous = 0u8;
    for (i, &b) in path.iter().enumerate() {
        if previous == b'/' {
            if b == b'/' && policy.merge_slashes {
                return false;
            }
            if b == b'.' && policy.normalize {
                let rest = &path[i..];
                let segment = rest.split(|&c| c == b'/').next().unwrap_or_default();
                if segment == b"." || segment == b".." {
                    return false;
                }
            }
        }
        previous = b;
    }
    true
}

const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §5.2.4 for an absolute path: `.` segments go, `..` removes
/// the segment before it (never past the root); a path ending in either
/// keeps its trailing slash.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut ends_in_dot = false;
    // The leading `/` is not a segment boundary of its own.
    for segment in path[1..].split(|&b| b == b'/') {
        ends_in_dot = true;
        match segment {
            b"." => {}
            b".." => {
                kept.pop();
            }
            other => {
                kept.push(other);
                ends_in_dot = false;
            }
        }
    }
    if ends_in_dot {
        kept.push(b"");
    }
    let mut out = Vec::with_capacity(path.len());
    for segment in kept {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(path: &str, policy: PathPolicy) -> String {
        match normalize(path, policy) {
            PathVerdict::Serve(p) => p.into_owned(),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn every_spelling_of_a_path_becomes_one() {
        let policy = PathPolicy::default();
        for (sent, normal) in [
            ("/admin", "/admin"),
            ("//admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/./admin", "/admin"),
            ("/%2e%2E/admin", "/admin"),
            ("/a/b/./c/../d", "/a/b/d"),
            ("/../../admin", "/admin"),
            ("/a/..", "/"),
            ("/a/b/.", "/a/b/"),
            ("/a/.../b", "/a/.../b"),
            ("/a/.b/..c", "/a/.b/..c"),
            ("/a%7e%2d", "/a~-"),
            ("/a%3fb%c3%a9", "/a%3Fb%C3%A9"),
            ("/", "/"),
            ("*", "*"),
        ] {
            assert_eq!(served(sent, policy), normal, "{sent}");
        }
        // The usual path is not copied.
        assert!(matches!(
            normalize("/api/v1/items.json", policy),
            PathVerdict::Serve(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn without_merging_an_empty_segment_is_a_segment() {
        let policy = PathPolicy {
            merge_slashes: false,
            ..PathPolicy::default()
        };
        assert_eq!(served("//admin", policy), "//admin");
        assert_eq!(served("/a//../b", policy), "/a/b");
        let off = PathPolicy {
            normalize: false,
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Keep,
        };
        assert_eq!(served("/x/../%61dmin", off), "/x/../%61dmin");
    }

    #[test]
    fn escaped_slashes_follow_the_policy() {
        let with = |escaped_slashes| PathPolicy {
            escaped_slashes,
            ..PathPolicy::default()
        };
        assert_eq!(
            normalize("/a%2fb", with(EscapedSlashes::Keep)),
            PathVerdict::Serve(Cow::Owned("/a%2Fb".into()))
        );
        assert_eq!(
            normalize("/a%2Fb", with(EscapedSlashes::Reject)),
            PathVerdict::Reject
        );
        assert_eq!(
            served("/x%2F..%2Fadmin", with(EscapedSlashes::Decode)),
            "/admin"
        );
        assert_eq!(
            normalize("/a%5Cb%2F%2Fc", with(EscapedSlashes::Redirect)),
            PathVerdict::Redirect("/a\\b/c".into())
        );
    }

    #[test]
    fn a_broken_escape_is_refused() {
        for path in ["/a%", "/a%2", "/a%zz", "/%%41"] {
            assert_eq!(
                normalize(path, PathPolicy::default()),
                PathVerdict::Reject,
                "{path}"
            );
        }
    }
}
