//! Path normalisation and the three-way classification of every request.
//!
//! The shim owns `GET /api/v1/{im,dm}.messages.others` and must not be bypassed by any spelling
//! that a Rocket.Chat router (or a normalising proxy between the shim and Rocket.Chat) might
//! route to it (`spec/shim.md` §1, `spec/rocketchat-reference.md` §7). The rule is
//! conservative: a false positive on a nonsense path is fine, a false negative is a bypass.
//!
//! A raw path is read in two ways, because the routers disagree about the order of
//! percent-decoding and dot-segment resolution, and a single order misses paths that the other
//! order routes to the endpoint:
//!
//! * the **decoded reading** ([`normalize`]): percent-decode to a fixed point, then split on `/`
//!   and `\`, trim, cut `;` parameters, lower-case and resolve `.`/`..` (what nginx-style
//!   normalisers and the connect-route/Express generations amount to);
//! * the **WHATWG reading** ([`normalize_whatwg`]): first resolve dot segments on the *raw*
//!   segments as the WHATWG URL parser does (Rocket.Chat 7+ re-parses every request with
//!   `new Request('http://localhost' + originalUrl)` before Hono decodes it), then apply the
//!   decoded reading to what is left. For example `/api/v1/im.messages.others/..%20/..`
//!   is the endpoint in this reading (`..%20` is an ordinary segment that the final `..`
//!   removes) but not in the decoded one (`..%20` decodes and trims to `..`).
//!
//! [`classify`] intercepts a path when either reading names an endpoint.

use std::borrow::Cow;

/// Which endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Anything else: forwarded untouched.
    Passthrough,
    /// `im.messages.others` or `dm.messages.others`.
    DmHistory,
    /// `im.list.everyone`, `dm.list.everyone`, `im.counters`, `dm.counters` (only when
    /// `policy.guard_related_endpoints` is true).
    Guarded(Guarded),
}

/// The related endpoints that expose other people's direct messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    /// `im.list.everyone` / `dm.list.everyone`.
    ListEveryone,
    /// `im.counters` / `dm.counters`.
    Counters,
}

/// The path every endpoint below lives under, normalised.
const API_V1: &str = "/api/v1/";

/// Endpoint names (the last segment) and where they route, in the order they are tried.
const ENDPOINTS: [(&str, Route); 6] = [
    ("im.messages.others", Route::DmHistory),
    ("dm.messages.others", Route::DmHistory),
    ("im.list.everyone", Route::Guarded(Guarded::ListEveryone)),
    ("dm.list.everyone", Route::Guarded(Guarded::ListEveryone)),
    ("im.counters", Route::Guarded(Guarded::Counters)),
    ("dm.counters", Route::Guarded(Guarded::Counters)),
];

/// Normalises a request path (without the query) in the decoded reading.
///
/// Steps: percent-decode until no escape is left (`%252E` becomes `.`), dropping tab, CR and LF
/// wherever they appear (the WHATWG parser removes them); decode the bytes as UTF-8, lossily;
/// split on `/` and `\`; in each segment cut at the first `;` (path parameters), trim
/// whitespace, control and zero-width characters at both ends, and lower-case; drop empty and
/// `.` segments and let `..` remove the previous one (never above the root). The result starts
/// with `/`, has no empty segment and no trailing slash, and `normalize` is idempotent.
///
/// Decoding to a fixed point is done in one linear pass: escapes never overlap, so decoding
/// is confluent, and a stack that re-checks its last three bytes after every push finds the
/// same fixed point as repeated whole-string passes, without their quadratic worst case.
pub fn normalize(raw_path: &str) -> String {
    let decoded = decode_fully(raw_path.as_bytes());
    let text = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<String> = Vec::new();
    for segment in text.split(['/', '\\']) {
        let cut = segment.split(';').next().unwrap_or("");
        let trimmed = cut.trim_matches(is_trim_char);
        match trimmed {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(fold_case(s)),
        }
    }
    join(&segments)
}

/// Normalises a request path in the WHATWG reading: dot segments (`.`, `..` and their `%2e`
/// spellings) are resolved on the raw segments first, as the WHATWG URL parser does, and the
/// result then goes through [`normalize`]. Idempotent, like [`normalize`].
pub fn normalize_whatwg(raw_path: &str) -> String {
    normalize(&whatwg_resolve(raw_path))
}

/// Classifies a raw request path.
///
/// `path_prefix` is `""` or a validated prefix such as `"/chat"` (no trailing slash). A path
/// whose decoded or WHATWG reading is `/api/v1/<name>` or `<prefix>/api/v1/<name>` is that
/// endpoint; the guarded names count only when `guard_related` is true. When the readings
/// disagree, `DmHistory` wins over `Guarded`, so the stricter handling applies.
///
/// Fast path: a path of printable ASCII with no `%` (and no tab, CR or LF) can only normalise
/// to an endpoint if it contains the endpoint's last word (`others`, `everyone`, `counters`)
/// in some letter case, because without escapes and non-ASCII characters both readings only
/// remove characters at segment ends, remove whole segments, turn `\` into `/` and lower-case
/// ASCII letters: the final segment is a substring of the raw path up to ASCII case.
pub fn classify(raw_path: &str, path_prefix: &str, guard_related: bool) -> Route {
    if !might_match(raw_path.as_bytes(), guard_related) {
        return Route::Passthrough;
    }
    let prefix = if path_prefix.is_empty() {
        String::new()
    } else {
        let p = normalize(path_prefix);
        if p == "/" {
            String::new()
        } else {
            p
        }
    };
    let decoded = match_endpoint(&normalize(raw_path), &prefix, guard_related);
    if decoded == Route::DmHistory {
        return Route::DmHistory;
    }
    let whatwg = match_endpoint(&normalize_whatwg(raw_path), &prefix, guard_related);
    if whatwg == Route::DmHistory || decoded == Route::Passthrough {
        whatwg
    } else {
        decoded
    }
}

/// The cheap, sound pre-check of [`classify`]: false means "cannot be an endpoint".
fn might_match(raw: &[u8], guard_related: bool) -> bool {
    if raw
        .iter()
        .any(|&b| b == b'%' || b == b'\t' || b == b'\n' || b == b'\r' || !b.is_ascii())
    {
        return true;
    }
    contains_ignore_ascii_case(raw, b"others")
        || (guard_related
            && (contains_ignore_ascii_case(raw, b"everyone")
                || contains_ignore_ascii_case(raw, b"counters")))
}

/// Whether `hay` contains `needle` (lower-case ASCII) in any ASCII letter case.
fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Which endpoint a normalised path names, with or without the normalised `prefix`.
fn match_endpoint(normalized: &str, prefix: &str, guard_related: bool) -> Route {
    let rest = match normalized.strip_prefix(API_V1) {
        Some(rest) => rest,
        None => match normalized
            .strip_prefix(prefix)
            .filter(|_| !prefix.is_empty())
            .and_then(|r| r.strip_prefix(API_V1))
        {
            Some(rest) => rest,
            None => return Route::Passthrough,
        },
    };
    for (name, route) in ENDPOINTS {
        if rest == name && (route == Route::DmHistory || guard_related) {
            return route;
        }
    }
    Route::Passthrough
}

/// Percent-decodes `input` to a fixed point (no `%XX` escape left, whatever the nesting),
/// dropping tab, CR and LF bytes, raw or decoded.
fn decode_fully(input: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(input.len());
    for &b in input {
        push_decoding(&mut out, b);
    }
    out
}

/// Pushes one byte and collapses any escape that now ends `out` (a decoded byte can complete
/// an enclosing escape, as in `%%34%31` -> `%41` -> `A`).
fn push_decoding(out: &mut Vec<u8>, b: u8) {
    if matches!(b, b'\t' | b'\n' | b'\r') {
        return;
    }
    out.push(b);
    while let [.., b'%', hi, lo] = out.as_slice() {
        match (hex_value(*hi), hex_value(*lo)) {
            (Some(h), Some(l)) => {
                out.truncate(out.len() - 3);
                let decoded = (h << 4) | l;
                if matches!(decoded, b'\t' | b'\n' | b'\r') {
                    return;
                }
                out.push(decoded);
            }
            _ => return,
        }
    }
}

/// The value of one hexadecimal digit.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Characters trimmed at both ends of each segment: everything JavaScript's `\s` matches
/// (connect-route strips `[\s/]+`), all control characters, and zero-width characters.
fn is_trim_char(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '\u{feff}' | '\u{180e}' | '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{2060}'
        )
}

/// Lower-cases a segment, also folding the two non-ASCII letters that case-insensitive
/// matchers may equate with ASCII ones (`ſ` ~ `s`, `ı` ~ `i`; the Kelvin sign already
/// lower-cases to `k`).
fn fold_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            'ſ' => out.push('s'),
            'ı' => out.push('i'),
            c if c.is_ascii() => out.push(c.to_ascii_lowercase()),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// `/` followed by the segments joined with `/`.
fn join(segments: &[String]) -> String {
    let mut out = String::with_capacity(segments.iter().map(|s| s.len() + 1).sum::<usize>() + 1);
    if segments.is_empty() {
        out.push('/');
    }
    for s in segments {
        out.push('/');
        out.push_str(s);
    }
    out
}

/// Resolves dot segments on the raw segments as the WHATWG URL parser does for a special
/// scheme (URL Standard, "path state"): leading and trailing C0 controls and spaces are
/// stripped, tab, CR and LF removed, `\` is a separator, `.`/`%2e` is a single-dot segment,
/// `..`/`.%2e`/`%2e.`/`%2e%2e` (any case) a double-dot one. Empty segments are kept, as the
/// parser keeps them, because a later `..` may remove one.
fn whatwg_resolve(raw: &str) -> String {
    let trimmed = raw.trim_matches(|c: char| c <= ' ');
    let cleaned: Cow<'_, str> = if trimmed.contains(['\t', '\n', '\r']) {
        Cow::Owned(
            trimmed
                .chars()
                .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
                .collect(),
        )
    } else {
        Cow::Borrowed(trimmed)
    };
    let mut parts = cleaned.split(['/', '\\']).peekable();
    if parts.peek() == Some(&"") {
        parts.next();
    }
    let mut stack: Vec<&str> = Vec::new();
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        if is_double_dot(seg) {
            stack.pop();
            if last {
                stack.push("");
            }
        } else if is_single_dot(seg) {
            if last {
                stack.push("");
            }
        } else {
            stack.push(seg);
        }
    }
    let mut out = String::with_capacity(cleaned.len() + 1);
    for s in &stack {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// `.` or `%2e` (any case).
fn is_single_dot(seg: &str) -> bool {
    seg == "." || seg.eq_ignore_ascii_case("%2e")
}

/// `..`, `.%2e`, `%2e.` or `%2e%2e` (any case).
fn is_double_dot(seg: &str) -> bool {
    seg == ".."
        || seg.eq_ignore_ascii_case(".%2e")
        || seg.eq_ignore_ascii_case("%2e.")
        || seg.eq_ignore_ascii_case("%2e%2e")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DM: Route = Route::DmHistory;
    const PASS: Route = Route::Passthrough;
    const LIST: Route = Route::Guarded(Guarded::ListEveryone);
    const COUNTERS: Route = Route::Guarded(Guarded::Counters);

    /// (raw path, prefix, guard_related, expected)
    const TABLE: &[(&str, &str, bool, Route)] = &[
        ("/api/v1/im.messages.others", "", false, DM),
        ("/api/v1/dm.messages.others", "", false, DM),
        ("/api/v1/im%2Emessages%2Eothers", "", false, DM),
        ("/api/v1/im%2emessages%2eothers", "", false, DM),
        ("/api/v1/%69m.messages.others", "", false, DM),
        ("/api/v1/%64m.messages.others", "", false, DM),
        (
            "/%61%70%69/%76%31/%69%6d%2e%6d%65%73%73%61%67%65%73%2e%6f%74%68%65%72%73",
            "",
            false,
            DM,
        ),
        ("/api/v1/im%252Emessages%252Eothers", "", false, DM),
        ("/api/v1/im%25252Emessages.others", "", false, DM),
        ("/api/v1/im.messages.others/", "", false, DM),
        ("/api/v1/im.messages.others//", "", false, DM),
        ("//api/v1/im.messages.others", "", false, DM),
        ("/api//v1/im.messages.others", "", false, DM),
        ("/api/v1//im.messages.others", "", false, DM),
        ("/api/v1/im.messages.others%20", "", false, DM),
        ("/api/v1/im.messages.others%09", "", false, DM),
        ("/api/v1/im.messages.others%00", "", false, DM),
        ("/api/v1/im.messages.others%0A", "", false, DM),
        ("/api/v1/im.messages.others%20/", "", false, DM),
        ("/api/v1%20/im.messages.others", "", false, DM),
        ("%20/api/v1/im.messages.others", "", false, DM),
        ("/api/v1/im.messages.others%E2%80%8B", "", false, DM),
        ("/api/v1/im.messages.others;jsessionid=1", "", false, DM),
        ("/api;x/v1/im.messages.others", "", false, DM),
        ("/API/V1/IM.MESSAGES.OTHERS", "", false, DM),
        ("/Api/V1/Dm.Messages.OtHeRs", "", false, DM),
        ("/api/v1/im.me%C5%BFsages.others", "", false, DM),
        ("/api/./v1/im.messages.others", "", false, DM),
        ("/api/v1/./im.messages.others", "", false, DM),
        ("/api/v1/x/../im.messages.others", "", false, DM),
        ("/api/v1/foo/../../v1/im.messages.others", "", false, DM),
        ("/../../api/v1/im.messages.others", "", false, DM),
        ("/api/v1/x/%2E%2E/im.messages.others", "", false, DM),
        ("/api/v1/x/%252E%252E/im.messages.others", "", false, DM),
        ("/api/v1\\im.messages.others", "", false, DM),
        ("\\api\\v1\\im.messages.others", "", false, DM),
        ("/api/v1%5Cim.messages.others", "", false, DM),
        ("/api/v1%2Fim.messages.others", "", false, DM),
        ("/api/v1/im.messages.others/..%20/..", "", false, DM),
        ("/api/v1/im.messages.others/..;/..", "", false, DM),
        ("/api/v1/im.messages.others/x%2F../..", "", false, DM),
        ("/api/v1/im.messages.others/%252e%252e/..", "", false, DM),
        ("/chat/api/v1/im.messages.others", "/chat", false, DM),
        ("/api/v1/im.messages.others", "/chat", false, DM),
        ("/CHAT/api/v1/im.messages.others", "/chat", false, DM),
        ("/chat/../api/v1/im.messages.others", "/chat", false, DM),
        ("/Chat//API/v1/dm.messages.others/", "/chat", false, DM),
        ("/%63hat/api/v1/im.messages.others", "/chat", false, DM),
        (
            "/chat/..%20/../z%2Fw/../api/v1/im.messages.others",
            "/chat",
            false,
            DM,
        ),
        ("/api/v1/im.list.everyone", "", true, LIST),
        ("/api/v1/DM.LIST.EVERYONE/", "", true, LIST),
        ("/api/v1/im%2Ecounters", "", true, COUNTERS),
        ("/chat/api/v1/dm.counters", "/chat", true, COUNTERS),
        // The readings disagree (decoded: im.counters; WHATWG: the endpoint): DmHistory wins.
        (
            "/api/v1/im.messages.others/..%2Fim.counters%2Fy/..",
            "",
            true,
            DM,
        ),
        (
            "/api/v1/im.messages.others/..%2Fim.counters%2Fy/..",
            "",
            false,
            DM,
        ),
        // Near misses.
        ("/api/v1/im.list.everyone", "", false, PASS),
        ("/api/v1/im.counters", "", false, PASS),
        ("/api/v1/im.messages", "", false, PASS),
        ("/api/v1/im.messages.othersx", "", false, PASS),
        ("/api/v1/im.messages.other", "", false, PASS),
        ("/api/v2/im.messages.others", "", false, PASS),
        ("/api/v1/channels.messages", "", false, PASS),
        ("/api/v1/im.messages.others/x", "", false, PASS),
        ("/api/v1/im.messages.others/..", "", false, PASS),
        ("/api/im.messages.others", "", false, PASS),
        ("/v1/im.messages.others", "", false, PASS),
        ("/other/api/v1/im.messages.others", "/chat", false, PASS),
        ("/api/v1/im.messages.others", "", true, DM),
        ("/", "", true, PASS),
        ("", "", false, PASS),
        ("/websocket", "", false, PASS),
        ("/api/v1/others", "", true, PASS),
    ];

    #[test]
    fn spellings_table() {
        assert!(TABLE.len() >= 40);
        for &(raw, prefix, guard, want) in TABLE {
            assert_eq!(
                classify(raw, prefix, guard),
                want,
                "{raw:?} (prefix {prefix:?}, guard {guard}); normalised {:?} / {:?}",
                normalize(raw),
                normalize_whatwg(raw)
            );
        }
    }

    #[test]
    fn normalised_forms() {
        assert_eq!(
            normalize("/API//v1/./x/../Im%2EMessages%2Eothers/"),
            "/api/v1/im.messages.others"
        );
        assert_eq!(normalize("/../.."), "/");
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("%%34%31"), "/a");
        assert_eq!(normalize("/a%ZZ/b%"), "/a%zz/b%");
        assert_eq!(normalize("/%FF"), "/\u{fffd}");
        assert_eq!(normalize_whatwg("/a/..%20/../b"), "/a/b");
        assert_eq!(normalize("/a/..%20/../b"), "/b");
        assert_eq!(whatwg_resolve("/a//b/%2E%2e/c/."), "/a//c/");
    }

    /// Strings biased toward the characters that matter to normalisation.
    fn arb_path() -> impl Strategy<Value = String> {
        let atom = prop_oneof![
            Just("/".to_string()),
            Just("\\".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%".to_string()),
            Just("%2e".to_string()),
            Just("%2E".to_string()),
            Just("%25".to_string()),
            Just("%2f".to_string()),
            Just("%5c".to_string()),
            Just("%20".to_string()),
            Just("%09".to_string()),
            Just(";".to_string()),
            Just(" ".to_string()),
            Just("\t".to_string()),
            Just("api".to_string()),
            Just("v1".to_string()),
            Just("im.messages.others".to_string()),
            Just("ſ".to_string()),
            Just("İ".to_string()),
            Just("Σ".to_string()),
            "[0-9a-fA-F]",
            any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(atom, 0..24).prop_map(|v| v.concat())
    }

    /// One way to spell a byte of the endpoint path.
    fn spell_byte(b: u8, how: u8) -> String {
        match how % 6 {
            0 | 1 => (b as char).to_string(),
            2 => (b as char).to_ascii_uppercase().to_string(),
            3 => format!("%{b:02X}"),
            4 => format!("%{b:02x}"),
            _ => format!("%25{b:02X}"),
        }
    }

    /// A random decoration of `/api/v1/<name>` that any reading must still see as `name`.
    fn arb_decorated() -> impl Strategy<Value = String> {
        let name = prop_oneof![Just("im.messages.others"), Just("dm.messages.others")];
        (
            name,
            prop::collection::vec(any::<u8>(), 64),
            prop::collection::vec(0u8..8, 3),
            0usize..4,
            prop::sample::select(vec![
                "", "/", "//", "%20", "%09", "/%20/", " ", "%00", ";x=1",
            ]),
        )
            .prop_map(|(name, hows, decos, lead, tail)| {
                let mut out = String::new();
                for _ in 0..lead {
                    out.push('/');
                }
                let segments = ["api", "v1", name];
                let mut k = 0;
                for (i, seg) in segments.iter().enumerate() {
                    let sep = match decos[i] % 4 {
                        0 => "/",
                        1 => "\\",
                        2 => "//",
                        _ => "%2F",
                    };
                    out.push_str(if i == 0 { "/" } else { sep });
                    match decos[i] {
                        4 => out.push_str("./"),
                        5 => out.push_str("x/../"),
                        6 => out.push_str("%2e/"),
                        7 => out.push_str("zz/%2E%2e/"),
                        _ => {}
                    }
                    for b in seg.bytes() {
                        out.push_str(&spell_byte(b, hows[k % hows.len()]));
                        k += 1;
                    }
                }
                out.push_str(tail);
                out
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn normalize_is_idempotent(p in arb_path()) {
            let n = normalize(&p);
            prop_assert_eq!(normalize(&n), n.clone());
            let w = normalize_whatwg(&p);
            prop_assert_eq!(normalize_whatwg(&w), w);
        }

        #[test]
        fn normalize_is_idempotent_on_any_string(p in any::<String>()) {
            let n = normalize(&p);
            prop_assert_eq!(normalize(&n), n.clone());
        }

        #[test]
        fn decorated_endpoint_is_always_intercepted(p in arb_decorated(), guard in any::<bool>()) {
            prop_assert_eq!(classify(&p, "", guard), Route::DmHistory, "{:?} -> {:?}", p, normalize(&p));
            prop_assert_eq!(classify(&p, "/chat", guard), Route::DmHistory);
            let prefixed = format!("/ChAt{p}");
            prop_assert_eq!(classify(&prefixed, "/chat", guard), Route::DmHistory);
        }

        #[test]
        fn classify_agrees_with_the_readings(p in arb_path(), guard in any::<bool>(), with_prefix in any::<bool>()) {
            let prefix = if with_prefix { "/chat" } else { "" };
            let names = ["/api/v1/im.messages.others", "/api/v1/dm.messages.others"];
            let is_dm = |n: &str| {
                names.iter().any(|name| n == *name || (with_prefix && n.strip_prefix("/chat") == Some(name)))
            };
            let expected = is_dm(&normalize(&p)) || is_dm(&normalize_whatwg(&p));
            prop_assert_eq!(classify(&p, prefix, guard) == Route::DmHistory, expected);
            let pp = format!("/api/v1/{p}");
            let expected = is_dm(&normalize(&pp)) || is_dm(&normalize_whatwg(&pp));
            prop_assert_eq!(classify(&pp, prefix, guard) == Route::DmHistory, expected);
        }

        #[test]
        fn fast_path_is_sound(p in prop_oneof![arb_path(), "[ -~]{0,40}".prop_map(String::from)], guard in any::<bool>()) {
            // Whenever the slow path finds an endpoint, the fast pre-check must let it through.
            let slow = match_endpoint(&normalize(&p), "", guard) != Route::Passthrough
                || match_endpoint(&normalize_whatwg(&p), "", guard) != Route::Passthrough;
            if slow {
                prop_assert!(might_match(p.as_bytes(), guard));
            }
        }
    }
}
