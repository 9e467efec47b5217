//! Request path normalisation, done before routing so that `//admin`,
//! `/x/../admin` and `/%61dmin` all reach the `/admin` route's policy.

/// A path that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the request path must start with /")]
    NotAbsolute,
    /// `..` would climb above `/`.
    #[error("the request path climbs above /")]
    Escapes,
    /// A `%` not followed by two hex digits.
    #[error("the request path has a bad percent-encoding")]
    BadEncoding,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hexval(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Normalises a raw request path (without the query): percent-decodes the
/// unreserved characters (RFC 3986 section 6.2.2.2), upper-cases the remaining
/// escapes, collapses repeated slashes, resolves `.` and `..` segments (a `..`
/// above `/` is an error). A trailing slash is kept.
pub fn normalise_path(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(raw) {
        return Ok(raw.to_string());
    }
    decode_and_resolve(raw)
}

/// [`normalise_path`] the long way, for paths that are not already normal.
fn decode_and_resolve(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) =
                (bytes.get(i + 1).copied().and_then(hexval), bytes.get(i + 2).copied().and_then(hexval))
            else {
                return Err(PathError::BadEncoding);
            };
            let v = h * 16 + l;
            if unreserved(v) {
                decoded.push(v as char);
            } else {
                decoded.push('%');
                decoded.push(bytes[i + 1].to_ascii_uppercase() as char);
                decoded.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            // Non-ASCII cannot appear in a valid request target (http::Uri
            // refuses it), so pushing bytes as chars keeps ASCII as is.
            decoded.push(b as char);
            i += 1;
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::Escapes);
                }
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || trailing {
        path.push('/');
    }
    Ok(path)
}

/// Whether `raw` (starting with `/`) is already what [`normalise_path`]
/// makes of it: no `%`, no empty, `.` or `..` segment but a trailing slash.
/// Most paths are; they skip the decoding.
fn is_normal(raw: &str) -> bool {
    if raw.contains('%') {
        return false;
    }
    let mut segments = raw[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (seg.is_empty() && !last) || seg == "." || seg == ".." {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut never changes an answer.
    #[test]
    fn the_shortcut_agrees_with_the_long_way() {
        let parts = ["", "a", ".", "..", "%61", "%2e", "b.c", "...", "%2F"];
        let mut paths = vec!["/".to_string()];
        for a in parts {
            for b in parts {
                for c in ["", "/"] {
                    paths.push(format!("/{a}/{b}{c}"));
                    paths.push(format!("/{a}{c}{b}"));
                    paths.push(format!("/{a}//{b}{c}"));
                }
            }
        }
        let mut short = 0;
        for p in &paths {
            let long = decode_and_resolve(p);
            assert_eq!(normalise_path(p), long, "{p}");
            if is_normal(p) {
                short += 1;
                assert_eq!(long.as_deref(), Ok(p.as_str()), "{p}");
            }
        }
        assert!(short > 20, "the shortcut was taken {short} times");
    }

    #[test]
    fn normalises() {
        let cases = [
            ("/", "/"),
            ("/admin", "/admin"),
            ("//admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/./admin/.", "/admin/"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/x", "ERR"),
            ("/a/%2E%2E/admin", "/admin"),
            ("/a/%2fadmin", "/a/%2Fadmin"),
            ("/a/b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "ERR"),
            ("/a/../..", "ERR"),
            ("/%zz", "ERR"),
            ("/%4", "ERR"),
            ("/a%20b", "/a%20b"),
            ("/~user/%7Euser", "/~user/~user"),
        ];
        for (raw, want) in cases {
            let got = normalise_path(raw).unwrap_or_else(|_| "ERR".into());
            assert_eq!(got, want, "{raw}");
        }
        assert_eq!(normalise_path("admin"), Err(PathError::NotAbsolute));
    }
}
