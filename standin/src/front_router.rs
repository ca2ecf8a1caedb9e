//! A model of a lenient router in front of Rocket.Chat, for the shim's bypass tests.
//!
//! An nginx whose `proxy_pass` carries a URI (and several ingress controllers) normalises the
//! path before passing it on: it percent-decodes it once, treats a decoded `%2F` as a
//! separator, merges slashes, resolves `.` and `..`, and re-escapes only `%`, space, `#`, `?`,
//! controls and non-ASCII bytes. Rocket.Chat then routes what it receives. A shim that reads a
//! path differently from such a router can be walked around: `/api/v1/%252e%252e%2f../x` is
//! `/api/v1/x` behind it. [`rewrite`] is that normalisation; the stand-in applies it to every
//! path when [`crate::Standin::set_front_router`] turned it on.

/// The path a lenient front router passes on for `raw_path`.
pub fn rewrite(raw_path: &str) -> String {
    let decoded = decode_once(raw_path.as_bytes());
    let mut segments: Vec<&[u8]> = Vec::new();
    let parts: Vec<&[u8]> = decoded.split(|&b| b == b'/').collect();
    let last = parts.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in parts.into_iter().enumerate() {
        match seg {
            b"" => trailing_slash = i == last && i > 0,
            b"." => trailing_slash = i == last,
            b".." => {
                segments.pop();
                trailing_slash = i == last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len() + 8);
    for s in &segments {
        out.push('/');
        escape_into(&mut out, s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

/// Decodes every `%XX` escape once; a `%` not followed by two hex digits stays as it is.
fn decode_once(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Escapes what nginx's `ngx_escape_uri(NGX_ESCAPE_URI)` escapes.
fn escape_into(out: &mut String, seg: &[u8]) {
    for &c in seg {
        if c <= b' ' || c >= 0x7f || matches!(c, b'%' | b'#' | b'?') {
            out.push_str(&format!("%{c:02X}"));
        } else {
            out.push(c as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn the_review_spellings_reach_the_endpoint() {
        assert_eq!(
            rewrite("/api/v1/%252e%252e%2f../im.messages.others"),
            "/api/v1/im.messages.others"
        );
        assert_eq!(
            rewrite("/api/v1/;%2f../im.messages.others"),
            "/api/v1/im.messages.others"
        );
        assert_eq!(
            rewrite("/api/v1/%20%2F%2e%2e/dm.messages.others"),
            "/api/v1/dm.messages.others"
        );
    }

    #[test]
    fn ordinary_paths_are_kept() {
        assert_eq!(rewrite("/"), "/");
        assert_eq!(rewrite("/api/v1/me"), "/api/v1/me");
        assert_eq!(rewrite("//a//b/"), "/a/b/");
        assert_eq!(
            rewrite("/file-upload/x/a%20b.png"),
            "/file-upload/x/a%20b.png"
        );
        assert_eq!(rewrite("/a/%ZZ"), "/a/%25ZZ");
    }
}
