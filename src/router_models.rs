//! Independent models of the routers that may stand behind the shim, for the differential
//! tests of the path classification (`src/route.rs`).
//!
//! Nothing in the shim calls this module: the property tests (`tests/route_differential.rs`),
//! the fuzz target (`fuzz/fuzz_targets/route.rs`, through `crate::fuzzing`) and the replay of
//! its corpus do. It shares no code with `route.rs` on purpose, so a mistake in one is not
//! repeated in the other.
//!
//! A router is modelled as a sequence of the steps real routers take, each optional or in one
//! of several orders ([`Router`]): strip tab/CR/LF (the WHATWG URL parser); resolve dot
//! segments on the raw path (WHATWG, before Hono decodes), after decoding (nginx,
//! `path.normalize`), both or never (connect-route); percent-decode never, once
//! (`decodeURIComponent`), once keeping reserved characters (`decodeURI`, Express and Hono),
//! twice, or until nothing changes; treat a decoded `/` (and `\`) as a separator or not; cut
//! `;` parameters; trim whitespace; merge repeated slashes. [`Router::all`] is every
//! combination (1,280 routers), [`chains`] a lenient front router (nginx with a `proxy_pass`
//! URI, which re-escapes what it decoded) followed by each of Rocket.Chat's own routers.
//! [`reaches_guarded`] asks all of them whether a path reaches a guarded name.

/// How a router percent-decodes the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    /// Matches the raw bytes (Express's router).
    Never,
    /// Every `%XX` once (`decodeURIComponent`, nginx).
    Once,
    /// Every `%XX` once except reserved characters (`decodeURI`: `;/?:@&=+$,#` stay encoded).
    UriOnce,
    /// Twice (a decoding proxy in front of a decoding router).
    Twice,
    /// Until nothing changes.
    UntilStable,
}

/// When a router resolves `.` and `..` segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dots {
    /// Never (connect-route matches the segments as they are).
    Never,
    /// On the raw segments, `%2e` counted as a dot (the WHATWG URL parser).
    RawFirst,
    /// On the decoded segments (nginx, `path.normalize`).
    AfterDecoding,
    /// Both.
    Both,
}

/// One router: the steps it takes, in this order (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Router {
    pub strip_tab_cr_lf: bool,
    pub dots: Dots,
    pub decode: Decode,
    /// A `/` (or `\`) that decoding produced separates segments.
    pub split_decoded: bool,
    /// `\` separates segments as `/` does.
    pub backslash: bool,
    /// `;` starts a path parameter that is cut from its segment.
    pub cut_params: bool,
    /// Whitespace (JavaScript's `\s`) is trimmed from both ends of each segment.
    pub trim: bool,
    /// Empty segments are dropped before dot segments are resolved.
    pub merge_slashes: bool,
}

impl Router {
    /// Every combination of the steps.
    pub fn all() -> Vec<Router> {
        let mut out = Vec::with_capacity(1280);
        let flags = [false, true];
        for decode in [
            Decode::Never,
            Decode::Once,
            Decode::UriOnce,
            Decode::Twice,
            Decode::UntilStable,
        ] {
            for dots in [Dots::Never, Dots::RawFirst, Dots::AfterDecoding, Dots::Both] {
                for strip_tab_cr_lf in flags {
                    for split_decoded in flags {
                        for backslash in flags {
                            for cut_params in flags {
                                for trim in flags {
                                    for merge_slashes in flags {
                                        out.push(Router {
                                            strip_tab_cr_lf,
                                            dots,
                                            decode,
                                            split_decoded,
                                            backslash,
                                            cut_params,
                                            trim,
                                            merge_slashes,
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// The routers of [`Router::all`] that can differ on `path`: a step is varied only when
    /// the path holds what it acts on at some decoding depth (a character that decoding
    /// produces is never consumed by a later decoding, as escapes consume only `%` and hex
    /// digits, so the fully decoded path, with and without tab/CR/LF, holds every character
    /// any depth produces). Equivalent routers give equal segments, so routing one of each
    /// kind decides the same as routing them all, far faster.
    pub fn variants_for(path: &str) -> Vec<Router> {
        let plain = decode(path.as_bytes(), Decode::UntilStable);
        let stripped: Vec<u8> = path
            .bytes()
            .filter(|b| !matches!(b, b'\t' | b'\n' | b'\r'))
            .collect();
        let stripped = decode(&stripped, Decode::UntilStable);
        let has = |pred: &dyn Fn(u8) -> bool| plain.iter().chain(&stripped).any(|&b| pred(b));
        let raw = path.as_bytes();
        let count = |bytes: &[u8], c: u8| bytes.iter().filter(|&&b| b == c).count();
        let strip_matters = raw.iter().any(|b| matches!(b, b'\t' | b'\n' | b'\r'));
        let backslash_matters = has(&|b| b == b'\\');
        let cut_matters = has(&|b| b == b';');
        let trim_matters = String::from_utf8_lossy(&plain)
            .chars()
            .chain(String::from_utf8_lossy(&stripped).chars())
            .any(is_js_space);
        let decode_matters = raw.contains(&b'%');
        let split_matters = [&plain, &stripped]
            .iter()
            .any(|d| count(d, b'/') != count(raw, b'/') || count(d, b'\\') != count(raw, b'\\'));
        let dots_matter =
            has(&|b| b == b'.') || raw.windows(3).any(|w| w.eq_ignore_ascii_case(b"%2e"));
        Router::all()
            .into_iter()
            .filter(|r| {
                (strip_matters || !r.strip_tab_cr_lf)
                    && (backslash_matters || !r.backslash)
                    && (cut_matters || !r.cut_params)
                    && (trim_matters || !r.trim)
                    && (decode_matters || r.decode == Decode::Never)
                    && (split_matters || !r.split_decoded)
                    && (dots_matter || r.dots == Dots::Never)
            })
            .collect()
    }

    /// nginx normalising a path for a `proxy_pass` with a URI (`ngx_http_parse_complex_uri`).
    pub fn nginx() -> Router {
        Router {
            strip_tab_cr_lf: false,
            dots: Dots::AfterDecoding,
            decode: Decode::Once,
            split_decoded: true,
            backslash: false,
            cut_params: false,
            trim: false,
            merge_slashes: true,
        }
    }

    /// Rocket.Chat before 7 (Restivus on connect-route 0.1.5): `decodeURI`, then leading and
    /// trailing `/` and whitespace trimmed, segments compared as they are.
    pub fn connect_route() -> Router {
        Router {
            strip_tab_cr_lf: false,
            dots: Dots::Never,
            decode: Decode::UriOnce,
            split_decoded: false,
            backslash: false,
            cut_params: false,
            trim: true,
            merge_slashes: false,
        }
    }

    /// Rocket.Chat 7's Express router: the raw path, case-insensitively.
    pub fn express() -> Router {
        Router {
            strip_tab_cr_lf: false,
            dots: Dots::Never,
            decode: Decode::Never,
            split_decoded: false,
            backslash: false,
            cut_params: false,
            trim: false,
            merge_slashes: false,
        }
    }

    /// Rocket.Chat 7+'s Hono router behind `new Request(url)`: WHATWG parsing (tab/CR/LF
    /// removed, `\` a separator, dot segments resolved on the raw path), then `decodeURI`.
    pub fn hono() -> Router {
        Router {
            strip_tab_cr_lf: true,
            dots: Dots::RawFirst,
            decode: Decode::UriOnce,
            split_decoded: false,
            backslash: true,
            cut_params: false,
            trim: false,
            merge_slashes: false,
        }
    }

    /// The segments this router routes on.
    pub fn route(&self, path: &str) -> Vec<String> {
        let mut p: Vec<u8> = path.as_bytes().to_vec();
        if self.strip_tab_cr_lf {
            p.retain(|b| !matches!(b, b'\t' | b'\n' | b'\r'));
        }
        let backslash = self.backslash;
        let is_sep = move |b: u8| b == b'/' || (backslash && b == b'\\');
        if matches!(self.dots, Dots::RawFirst | Dots::Both) {
            p = resolve_raw_dots(&p, is_sep);
        }
        let pieces: Vec<Vec<u8>> = if self.split_decoded {
            split(&decode(&p, self.decode), is_sep)
        } else {
            split(&p, is_sep)
                .into_iter()
                .map(|s| decode(&s, self.decode))
                .collect()
        };
        let mut segments: Vec<String> = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let mut s = String::from_utf8_lossy(&piece).into_owned();
            if self.cut_params {
                if let Some(at) = s.find(';') {
                    s.truncate(at);
                }
            }
            if self.trim {
                s = s.trim_matches(is_js_space).to_string();
            }
            if self.merge_slashes && s.is_empty() {
                continue;
            }
            segments.push(s);
        }
        if matches!(self.dots, Dots::AfterDecoding | Dots::Both) {
            let mut out: Vec<String> = Vec::with_capacity(segments.len());
            for s in segments {
                match s.as_str() {
                    "." => {}
                    ".." => {
                        out.pop();
                    }
                    _ => out.push(s),
                }
            }
            segments = out;
        }
        segments
    }
}

/// A router in front of another: the front one's result, joined, is what the back one sees.
/// With `reescape`, the front re-escapes as nginx does for a `proxy_pass` URI (`%`, space,
/// `#`, `?`, controls and non-ASCII bytes); without, it forwards the decoded bytes as they are
/// (nginx `proxy_pass http://up$uri;`), and the back end, a Node HTTP parser, ends the request
/// target at the first space, CR or LF (the rest of the line becomes a header).
#[derive(Debug, Clone, Copy)]
pub struct Chain {
    pub front: Router,
    pub reescape: bool,
    pub back: Router,
}

impl Chain {
    /// The segments the back router routes on.
    pub fn route(&self, path: &str) -> Vec<String> {
        let mut passed = String::new();
        for s in self.front.route(path) {
            passed.push('/');
            if !self.reescape {
                passed.push_str(&s);
                continue;
            }
            for &b in s.as_bytes() {
                if b <= b' ' || b >= 0x7f || matches!(b, b'%' | b'#' | b'?') {
                    passed.push_str(&format!("%{b:02X}"));
                } else {
                    passed.push(b as char);
                }
            }
        }
        if !self.reescape {
            if let Some(end) = passed.find([' ', '\r', '\n']) {
                passed.truncate(end);
            }
        }
        self.back.route(&passed)
    }
}

/// nginx in front of each of Rocket.Chat's routers and of the most lenient model, once
/// re-escaping what it decoded and once forwarding it raw.
pub fn chains() -> Vec<Chain> {
    let lenient = Router {
        strip_tab_cr_lf: true,
        dots: Dots::Both,
        decode: Decode::UntilStable,
        split_decoded: true,
        backslash: true,
        cut_params: true,
        trim: true,
        merge_slashes: true,
    };
    [
        Router::connect_route(),
        Router::express(),
        Router::hono(),
        Router::nginx(),
        lenient,
    ]
    .into_iter()
    .flat_map(|back| {
        [true, false].map(|reescape| Chain {
            front: Router::nginx(),
            reescape,
            back,
        })
    })
    .collect()
}

/// The guarded names, and whether each is one of the related endpoints.
pub const GUARDED_NAMES: [(&str, bool); 6] = [
    ("im.messages.others", false),
    ("dm.messages.others", false),
    ("im.list.everyone", true),
    ("dm.list.everyone", true),
    ("im.counters", true),
    ("dm.counters", true),
];

/// BudgetKind guarded name (if any) routed `segments` are: `api`, `v1`, the name, optionally after
/// the segments of `prefix`, empty segments ignored, letters compared case-insensitively
/// (both JavaScript's upper-case canonicalisation and Unicode lower-casing).
pub fn guarded_name(segments: &[String], prefix: &str) -> Option<&'static str> {
    let segs: Vec<&str> = segments
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    let prefix: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
    let rest: &[&str] = if segs.len() == prefix.len() + 3
        && segs.iter().zip(&prefix).all(|(a, b)| same_letters(a, b))
    {
        &segs[prefix.len()..]
    } else if segs.len() == 3 {
        &segs[..]
    } else {
        return None;
    };
    if !same_letters(rest[0], "api") || !same_letters(rest[1], "v1") {
        return None;
    }
    GUARDED_NAMES
        .iter()
        .map(|(n, _)| *n)
        .find(|n| same_letters(rest[2], n))
}

/// One model router: a single [`Router`] or a [`Chain`].
#[derive(Debug, Clone, Copy)]
pub enum Model {
    Single(Router),
    Chain(Chain),
}

/// Every model's segments for `path`, computed once (a check for several prefixes or
/// `guard_related` values reuses them). Router variants that differ only in a step that
/// cannot change this path's result are routed once (see [`Router::variants_for`]).
pub fn route_everywhere(path: &str) -> Vec<(Model, Vec<String>)> {
    let mut out = Vec::new();
    for router in Router::variants_for(path) {
        out.push((Model::Single(router), router.route(path)));
    }
    for chain in chains() {
        out.push((Model::Chain(chain), chain.route(path)));
    }
    out
}

/// The first model of `routed` that reaches a guarded name, with the name. The related names
/// count only when `guard_related`.
pub fn first_guarded(
    routed: &[(Model, Vec<String>)],
    prefix: &str,
    guard_related: bool,
) -> Option<(Model, &'static str)> {
    let counts = |name: &str| {
        guard_related
            || GUARDED_NAMES
                .iter()
                .any(|(n, related)| *n == name && !related)
    };
    routed.iter().find_map(|(model, segments)| {
        guarded_name(segments, prefix)
            .filter(|n| counts(n))
            .map(|n| (*model, n))
    })
}

/// A model router that routes `path` to a guarded name, with the name: every [`Router::all`]
/// and every [`chains`] member is asked. The related names count only when `guard_related`.
pub fn reaches_guarded(
    path: &str,
    prefix: &str,
    guard_related: bool,
) -> Option<(Model, &'static str)> {
    first_guarded(&route_everywhere(path), prefix, guard_related)
}

/// Case-insensitive comparison as a JavaScript `/i` regular expression (upper-case
/// canonicalisation: `ſ` matches `s`) or a Unicode lower-casing matcher does it.
fn same_letters(a: &str, b: &str) -> bool {
    a.to_uppercase() == b.to_uppercase() || a.to_lowercase() == b.to_lowercase()
}

/// JavaScript's `\s`.
fn is_js_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\n' | '\u{0b}' | '\u{0c}' | '\r' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

/// Splits on separator bytes.
fn split(p: &[u8], is_sep: impl Fn(u8) -> bool) -> Vec<Vec<u8>> {
    p.split(|&b| is_sep(b)).map(<[u8]>::to_vec).collect()
}

/// Percent-decodes `p` as `how` says.
fn decode(p: &[u8], how: Decode) -> Vec<u8> {
    match how {
        Decode::Never => p.to_vec(),
        Decode::Once => decode_once(p, false),
        Decode::UriOnce => decode_once(p, true),
        Decode::Twice => decode_once(&decode_once(p, false), false),
        Decode::UntilStable => {
            let mut cur = p.to_vec();
            loop {
                let next = decode_once(&cur, false);
                if next == cur {
                    return cur;
                }
                cur = next;
            }
        }
    }
}

/// One pass of percent-decoding; with `keep_reserved`, escapes of `;/?:@&=+$,#` stay.
fn decode_once(p: &[u8], keep_reserved: bool) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'%' && i + 2 < p.len() {
            if let (Some(h), Some(l)) = (hex(p[i + 1]), hex(p[i + 2])) {
                let v = h << 4 | l;
                if !(keep_reserved && b";/?:@&=+$,#".contains(&v)) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(p[i]);
        i += 1;
    }
    out
}

/// WHATWG dot-segment resolution on the raw path: `.`/`%2e` and `..`/`.%2e`/`%2e.`/`%2e%2e`
/// (any case) are dot segments; a trailing one leaves an empty last segment.
fn resolve_raw_dots(p: &[u8], is_sep: impl Fn(u8) -> bool) -> Vec<u8> {
    let lower = |s: &[u8]| s.to_ascii_lowercase();
    let parts: Vec<&[u8]> = p.split(|&b| is_sep(b)).collect();
    let start = usize::from(parts.first().is_some_and(|s| s.is_empty()));
    let mut stack: Vec<&[u8]> = Vec::new();
    for (i, seg) in parts.iter().enumerate().skip(start) {
        let last = i + 1 == parts.len();
        let l = lower(seg);
        let double = matches!(l.as_slice(), b".." | b".%2e" | b"%2e." | b"%2e%2e");
        let single = matches!(l.as_slice(), b"." | b"%2e");
        if double {
            stack.pop();
        }
        if double || single {
            if last {
                stack.push(b"");
            }
        } else {
            stack.push(seg);
        }
    }
    let mut out = Vec::with_capacity(p.len() + 1);
    for s in stack {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reaches(path: &str) -> Option<&'static str> {
        reaches_guarded(path, "", true).map(|(_, n)| n)
    }

    #[test]
    fn the_models_reach_what_the_review_found() {
        assert_eq!(
            guarded_name(
                &Router::nginx().route("/api/v1/%252e%252e%2f../im.messages.others"),
                ""
            ),
            Some("im.messages.others")
        );
        assert_eq!(
            reaches("/api/v1/;%2f../im.messages.others"),
            Some("im.messages.others")
        );
        assert_eq!(
            reaches("/api/v1/%20%2F%2e%2e/dm.messages.others"),
            Some("dm.messages.others")
        );
        assert_eq!(
            guarded_name(
                &Router::hono().route("/api/v1/im.messages.others/..%20/.."),
                ""
            ),
            Some("im.messages.others")
        );
        assert_eq!(reaches("/API/V1/Im.Counters/"), Some("im.counters"));
        assert_eq!(reaches("/chat/api/v1/im.counters"), None);
        assert_eq!(
            reaches_guarded("/chat/api/v1/im.counters", "/chat", true).map(|(_, n)| n),
            Some("im.counters")
        );
        assert!(reaches_guarded("/api/v1/im.counters", "", false).is_none());
    }

    #[test]
    fn a_raw_line_break_ends_the_target_at_a_node_upstream() {
        assert_eq!(
            reaches("/api/v1/im.list.everyone%0Ax:1"),
            Some("im.list.everyone")
        );
    }

    #[test]
    fn the_models_leave_other_paths_alone() {
        for path in [
            "/",
            "/api/v1/me",
            "/file-upload/abc/im.messages.others.png",
            "/api/v1/im.messages",
            "/api/v1/x/im.messages.others",
            "/api/v1/im.messages.others/x",
        ] {
            assert_eq!(reaches(path), None, "{path}");
        }
    }
}
