//! Invariant checks for the parsers that read untrusted input, shared by the `cargo fuzz`
//! targets in `fuzz/` and by `tests/fuzz_corpus.rs`, which replays the seed corpus on stable
//! Rust without libFuzzer (so CI checks the same properties on every run).
//!
//! Each `fuzz_check_*` function takes arbitrary bytes and panics when an invariant is broken;
//! a panic is a bug in the shim, never in the input. They are ordinary public functions, not
//! behind a feature, so the fuzz crate and the tests call exactly this code; nothing in the
//! shim calls them.
//!
//! * [`fuzz_check_route`]: path normalisation is idempotent (both readings), and
//!   classification agrees with normalisation: a path classified as the endpoint normalises
//!   to an endpoint name, and no path that normalises to an endpoint name is pass-through
//!   (that would be a bypass of the shim's policy).
//!   Every path any model router (`crate::router_models`) routes to a guarded name is the
//!   endpoint's or refused as ambiguous, never pass-through.
//! * [`fuzz_check_route_spellings`]: the same, on paths spelled from router-relevant atoms
//!   (one input byte, one atom), which reach the guarded names far more often than raw bytes.
//! * [`fuzz_check_params`]: the query parser and the canonicaliser never panic, and a
//!   canonical query string parses back to the same canonical query (one logical query, one
//!   spelling upstream and one cache key).
//! * [`fuzz_check_config`]: the config parser never panics on any text, and a configuration
//!   it accepts is accepted again, identically, when parsed a second time.

use std::path::Path;

use crate::config::{Config, ParamsConfig, QueryAndFields};
use crate::dm_history::params::{encode_component, CanonicalQuery, RawQuery};
use crate::route::{self, Guarded, Route};
use crate::router_models;

/// The endpoint names under `/api/v1/`, split by the route they must take.
const DM_HISTORY: [&str; 2] = ["im.messages.others", "dm.messages.others"];
const GUARDED: [&str; 4] = [
    "im.list.everyone",
    "dm.list.everyone",
    "im.counters",
    "dm.counters",
];

/// The path prefixes the route checks run with (`""` and a typical `upstream.path_prefix`).
const PREFIXES: [&str; 2] = ["", "/chat"];

/// BudgetKind endpoint name (if any) a normalised path is, with or without `prefix`.
fn endpoint_of<'a>(normalized: &str, prefix: &str, names: &[&'a str]) -> Option<&'a str> {
    let rest = normalized.strip_prefix("/api/v1/").or_else(|| {
        if prefix.is_empty() {
            None
        } else {
            normalized
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix("/api/v1/"))
        }
    })?;
    names.iter().copied().find(|n| *n == rest)
}

/// Path normalisation and classification (see the module comment). The input is read as
/// UTF-8, lossily.
pub fn fuzz_check_route(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let raw = raw.as_ref();
    let decoded = route::normalize(raw);
    let whatwg = route::normalize_whatwg(raw);
    assert_eq!(
        route::normalize(&decoded),
        decoded,
        "normalize is not idempotent for {raw:?}"
    );
    assert_eq!(
        route::normalize_whatwg(&whatwg),
        whatwg,
        "normalize_whatwg is not idempotent for {raw:?}"
    );
    assert!(
        decoded.starts_with('/') && !decoded.contains("//"),
        "normalize({raw:?}) = {decoded:?} is not a clean absolute path"
    );
    let routed = router_models::route_everywhere(raw);
    for prefix in PREFIXES {
        for guard in [false, true] {
            let class = route::classify(raw, prefix, guard);
            let dm_name = endpoint_of(&decoded, prefix, &DM_HISTORY)
                .or_else(|| endpoint_of(&whatwg, prefix, &DM_HISTORY));
            let guarded_name = endpoint_of(&decoded, prefix, &GUARDED)
                .or_else(|| endpoint_of(&whatwg, prefix, &GUARDED));
            match class {
                Route::Intercepted => assert!(
                    dm_name.is_some(),
                    "{raw:?} (prefix {prefix:?}) is DmHistory but normalises to {decoded:?} / {whatwg:?}"
                ),
                Route::Guarded(_) => {
                    assert!(guard, "{raw:?} is Guarded with guard_related off");
                    assert!(
                        guarded_name.is_some() && dm_name.is_none(),
                        "{raw:?} (prefix {prefix:?}) is Guarded but normalises to {decoded:?} / {whatwg:?}"
                    );
                }
                Route::Ambiguous => assert!(
                    !route::guarded_names(raw, guard).is_empty(),
                    "{raw:?} is Ambiguous but names no guarded endpoint"
                ),
                Route::Passthrough => {
                    assert!(
                        dm_name.is_none(),
                        "bypass: {raw:?} (prefix {prefix:?}) normalises to {decoded:?} / {whatwg:?} but passes through"
                    );
                    assert!(
                        !guard || guarded_name.is_none(),
                        "bypass: {raw:?} (prefix {prefix:?}) normalises to guarded {decoded:?} / {whatwg:?} but passes through"
                    );
                }
            }
            if dm_name.is_some() {
                assert_eq!(class, Route::Intercepted, "{raw:?} (prefix {prefix:?})");
            }
            check_against_router_models(raw, &routed, prefix, guard, class);
        }
    }
}

/// The pieces [`fuzz_check_route_spellings`] builds paths from: separators, dot segments,
/// encodings at one and two levels, `;` parameters, whitespace, case and the guarded names'
/// words, so that random input is rich in the spellings routers disagree about.
pub const SPELLING_ATOMS: [&str; 56] = [
    "/",
    "\\",
    ".",
    "..",
    "%2e",
    "%2E",
    "%252e",
    "%2f",
    "%2F",
    "%252f",
    "%5c",
    "%255c",
    ";",
    ";x=1",
    " ",
    "%20",
    "%09",
    "\t",
    "%0a",
    "%00",
    "%e2%80%8b",
    "api",
    "API",
    "v1",
    "V1",
    "chat",
    "x",
    "im.messages.others",
    "dm.messages.others",
    "im.list.everyone",
    "dm.counters",
    "im",
    "dm",
    "messages",
    "others",
    "counters",
    "everyone",
    "list",
    "%69",
    "%6d",
    "%2569",
    "%c0%ae",
    "%c0%af",
    "%u002e",
    "\u{17f}",
    "%3f",
    "%23",
    "%25",
    "%2e%2e",
    ".%2e",
    "%25%32%65",
    "/api/v1/",
    "%2fapi%2fv1%2f",
    "IM.Messages.Others",
    "%3b",
    "//",
];

/// Route checks on a path spelled from [`SPELLING_ATOMS`]: each input byte picks one atom.
/// The same invariants as [`fuzz_check_route`], including the router models.
pub fn fuzz_check_route_spellings(data: &[u8]) {
    let path: String = data
        .iter()
        .take(64)
        .map(|&b| SPELLING_ATOMS[b as usize % SPELLING_ATOMS.len()])
        .collect();
    fuzz_check_route(path.as_bytes());
}

/// The differential half of [`fuzz_check_route`]: no model router
/// ([`crate::router_models`]) routes a path to a guarded name that the classification lets
/// through, or sends to the other related endpoint's checks.
pub fn check_against_router_models(
    raw: &str,
    routed: &[(router_models::Model, Vec<String>)],
    prefix: &str,
    guard: bool,
    class: Route,
) {
    let Some((router, name)) = router_models::first_guarded(routed, prefix, guard) else {
        return;
    };
    let related = |n: &str| match n {
        "im.list.everyone" | "dm.list.everyone" => Some(Guarded::ListEveryone),
        "im.counters" | "dm.counters" => Some(Guarded::Counters),
        _ => None,
    };
    let fine = match (class, related(name)) {
        (Route::Passthrough, _) => false,
        (Route::Intercepted | Route::Ambiguous, _) => true,
        (Route::Guarded(_), None) => false,
        (Route::Guarded(g), Some(want)) => g == want,
    };
    assert!(
        fine,
        "bypass: {router:?} routes {raw:?} (prefix {prefix:?}, guard {guard}) to {name}, but it is classified {class:?}"
    );
}

/// The `[policy.params]` variants the params check runs with.
fn params_configs() -> [ParamsConfig; 4] {
    let base = ParamsConfig::default();
    [
        base.clone(),
        ParamsConfig {
            allow_unlimited_count: true,
            max_count: 1000,
            ..base.clone()
        },
        ParamsConfig {
            query_and_fields: QueryAndFields::Reject,
            ..base.clone()
        },
        ParamsConfig {
            query_and_fields: QueryAndFields::Strip,
            ..base
        },
    ]
}

/// Query parsing and canonicalisation (see the module comment). The input is read as UTF-8,
/// lossily (a request target reaches the parser as `&str`).
pub fn fuzz_check_params(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let Ok(parsed) = RawQuery::parse(Some(&raw)) else {
        return;
    };
    for cfg in params_configs() {
        let Ok(canonical) = CanonicalQuery::from_raw(&parsed, &cfg) else {
            continue;
        };
        let spelled = canonical.to_query_string();
        let reparsed = RawQuery::parse(Some(&spelled)).unwrap_or_else(|e| {
            panic!("canonical {spelled:?} (from {raw:?}) does not parse back: {e:?}")
        });
        let again = CanonicalQuery::from_raw(&reparsed, &cfg).unwrap_or_else(|e| {
            panic!("canonical {spelled:?} (from {raw:?}) is refused when read back: {e:?}")
        });
        assert_eq!(
            again, canonical,
            "canonical {spelled:?} (from {raw:?}) reads back differently"
        );
        assert_eq!(again.to_query_string(), spelled);
        // The cache key is the canonical query without the credential, and only without it.
        let key = canonical.cache_key();
        let expected = match &canonical.access_token {
            Some(t) => format!("{key}&access_token={}", encode_component(t)),
            None => key,
        };
        assert_eq!(
            spelled, expected,
            "cache key and canonical query of {raw:?} disagree"
        );
    }
}

/// Config parsing (see the module comment). The input is read as UTF-8, lossily.
pub fn fuzz_check_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.toml");
    let first = Config::parse(&text, path);
    let second = Config::parse(&text, path);
    match (first, second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "parsing {text:?} twice differs"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("parsing {text:?} twice gives different outcomes"),
    }
}
