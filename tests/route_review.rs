//! Hostile review of `route::classify` (findings as failing tests).
//!
//! Each test names the path, the router behaviour that routes it to a guarded endpoint (or,
//! for the false positives, why it is legitimate traffic), and asserts what `classify` should
//! return. They failed against the first version of the word-based classifier and are kept
//! as regression tests.

use rocketchat_shim::route::{classify, Route};
use rocketchat_shim::router_models::reaches_guarded;

fn not_passthrough(path: &str, prefix: &str, guard: bool) {
    let got = classify(path, prefix, guard);
    assert_ne!(
        got,
        Route::Passthrough,
        "{path:?} (prefix {prefix:?}, guard_related {guard}) passes through"
    );
}

/// Finding 1: a decoded CR/LF (or a bare LF) right after a guarded name.
///
/// The widest view *drops* tab/CR/LF (as the WHATWG parser does), so `others` + LF + `x`
/// reads as `othersx` and the name is no word. But a hop that decodes the path and sends it on
/// as is (nginx `proxy_pass http://rc$uri;`, or `proxy_pass http://rc$1;` with a regex
/// capture: "when variables are used in proxy_pass ... it is passed to the server as is";
/// gixy's `http_splitting` check) puts a raw LF in the request line, and Node's HTTP parser
/// (checked on Node 20: `GET /api/v1/im.list.everyone\nX: y HTTP/1.1\r\n...`) ends the
/// request-target at the LF, accepts the line as HTTP/0.9 with the following lines as headers
/// (nginx's own `X-Auth-Token`/`X-User-Id` included), and routes `req.url` =
/// `/api/v1/im.list.everyone`. The related endpoint needs no query, so its data comes back.
#[test]
fn decoded_line_break_after_name_ends_the_target_upstream() {
    not_passthrough("/api/v1/im.list.everyone%0Ax:1", "", true);
    not_passthrough("/api/v1/dm.list.everyone%0D%0AX-A:%20b", "", true);
    not_passthrough("/chat/api/v1/im.list.everyone%0Ax:1", "/chat", true);
    // The endpoint itself is reached too (without its query, so Rocket.Chat answers 400 for
    // the missing roomId, but the shim's invariant "reached => never pass-through" breaks).
    not_passthrough("/api/v1/im.messages.others%0Ax:1", "", false);
    not_passthrough("/api/v1/dm.messages.others%0D%0AX-A:%20b", "", false);
}

/// Finding 1b: the same trick hides the name a request is really routed to behind a related
/// one the readings agree on, so it is checked (and logged) as the wrong guarded endpoint.
/// Upstream (nginx `$uri`, which decodes once and leaves `%2e%2e`), Node cuts at the LF (the rest of
/// the line is a header `x: /%2e%2e/...`) and routes `/api/v1/im.list.everyone`; the shim reads
/// `/api/v1/im.counters` and classifies `Guarded(Counters)`.
#[test]
fn decoded_line_break_hides_the_other_related_name() {
    let p = "/api/v1/im.list.everyone%0Ax:/%252e%252e/%252e%252e/v1/im.counters";
    let got = classify(p, "", true);
    assert_eq!(got, Route::Ambiguous, "{p:?} -> {got:?}");
}

/// Finding 2: full case folding / full upper-casing. `ß` upper-cases to `SS` and case-folds to
/// `ss`; `ﬅ`/`ﬆ` (U+FB05/U+FB06) to `ST`/`st`, and `list` holds `st`. The shim's own router
/// models (`router_models::same_letters`, which compares `to_uppercase()`) say these reach the
/// guarded names, yet `classify` passes them through: the invariant the fuzz target checks
/// ("every path a model routes to a guarded name is never pass-through") is broken.
#[test]
fn full_case_folding_spellings() {
    for (p, guard) in [
        ("/api/v1/im.me%C3%9Fages.others", false),
        ("/api/v1/dm.me%C3%9Fages.others", false),
        ("/api/v1/im.me%E1%BA%9Eages.others", false), // ẞ, capital sharp s
        ("/api/v1/im.li%EF%AC%86.everyone", true),    // ﬆ
        ("/api/v1/dm.li%EF%AC%85.everyone", true),    // ﬅ
    ] {
        not_passthrough(p, "", guard);
    }
    // The repository's own model agrees that these are routed:
    assert!(reaches_guarded("/api/v1/im.me%C3%9Fages.others", "", false).is_some());
    assert!(reaches_guarded("/api/v1/im.li%EF%AC%86.everyone", "", true).is_some());
}

/// Finding 2, as the repository's own fuzz invariant: `fuzz_check_route` (run by
/// `tests/fuzz_corpus.rs` and the `route` fuzz target) panics with "bypass: ... routes ... to
/// im.messages.others" on these inputs, so a corpus entry like this would fail CI.
#[test]
fn fuzz_invariant_holds_for_sharp_s_and_st_ligature() {
    rocketchat_shim::fuzzing::fuzz_check_route(b"/api/v1/im.me%C3%9Fages.others");
    rocketchat_shim::fuzzing::fuzz_check_route("/api/v1/im.li\u{fb06}.everyone".as_bytes());
}

/// Finding 3: the widest view is not a fixed point over all the decoders it applies. `%u0025`
/// and the overlong `%C0%A5` both decode to `%`, but they are decoded after the percent pass,
/// so the `%69` they form is never decoded again. A `%u`/overlong-decoding hop (IIS http.sys
/// with PercentUAllowed, an old lenient UTF-8 decoder) followed by a percent-decoding router
/// (Hono's `decodeURI`, connect-route) reads `im.messages.others`.
#[test]
fn escape_built_by_u_or_overlong_decoding() {
    not_passthrough("/api/v1/%u002569m.messages.others", "", false);
    not_passthrough("/api/v1/%C0%A569m.messages.others", "", false);
    not_passthrough("/api/v1/%25u0025%36%39m.messages.others", "", false);
    // `%u` decoding twice (the IIS double-decode class).
    not_passthrough("/api/v1/%u0025u0069m.messages.others", "", false);
}

/// False positives (legitimate traffic refused with 400). Rocket.Chat's default user and
/// channel name validation is `[0-9a-zA-Z-_.]+`, so `im.counters`, `dm.list.everyone` or
/// `dm.messages.others` are valid usernames and channel names; file names are free text.
/// None of these paths holds `api` and `v1`, so no router (no dot segment, no decoding) can
/// route them under `/api/v1/`; yet any user can make others' avatar, DM, channel and file
/// requests fail by choosing such a name.
#[test]
fn names_outside_the_api_are_not_refused() {
    for (p, guard) in [
        ("/avatar/im.counters", true),
        ("/avatar/dm.messages.others", false),
        ("/direct/dm.list.everyone", true),
        ("/channel/im.counters", true),
        ("/file-upload/6XYZ/report_dm.counters.xlsx", true),
        ("/file-upload/6XYZ/im.messages.others.png", false),
    ] {
        let got = classify(p, "", guard);
        assert_eq!(
            got,
            Route::Passthrough,
            "{p:?} (guard_related {guard}) -> {got:?}"
        );
    }
}
