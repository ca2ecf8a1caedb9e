//! Differential property tests of the path classification (spec/shim.md §1): random spellings
//! of the guarded paths, built from encodings, separators, dot segments, `;` parameters,
//! whitespace and case, are routed by every model router (`rocketchat_shim::router_models`:
//! 1,280 combinations of decoding, splitting, trimming, cutting and dot resolution, plus nginx
//! in front of Rocket.Chat's own routers). Whenever any model reaches a guarded name, the
//! shim's `classify` must not pass the path through (nor send it to the other related
//! endpoint's checks). Legitimate pass-through paths with percent-encoding must stay
//! pass-through.

use proptest::prelude::*;
use rocketchat_shim::fuzzing::check_against_router_models;
use rocketchat_shim::route::{classify, Route};
use rocketchat_shim::router_models::{reaches_guarded, route_everywhere, Router};

const NAMES: [&str; 6] = [
    "im.messages.others",
    "dm.messages.others",
    "im.list.everyone",
    "dm.list.everyone",
    "im.counters",
    "dm.counters",
];

/// Noise some router removes, put before a segment.
const NOISE: &[&str] = &[
    "",
    "",
    "",
    "x/../",
    "x%2f..%2f",
    ";%2f../",
    "%20%2F%2e%2e/",
    "%252e%252e%2f../",
    "%2e%2e%2f",
    "..%2f",
    "./",
    "%2e/",
    "%252e/",
    ";x/",
    "%3b/",
    "%20/",
    "%09/",
    "\t/",
    "a%2F..%2F",
    "a%5c..%5c",
    "a\\..\\",
    "%2f",
    "%252f",
    "//",
    "q;%2f%2e%2e/",
    "%c0%ae%c0%ae/",
    "%25%32%65%25%32%65%2f",
    ".%2e/",
    "%2e./",
    "x/%2e%2e/",
    "x%252f..%252f",
    "..;/",
    "%20;%2f..%2f",
    "x/..%20/../",
];

/// Separators between segments.
const SEP: &[&str] = &[
    "/", "/", "/", "%2f", "%2F", "%252f", "\\", "%5c", "%255C", "//", "/./", "/%2e/", "/;x=1/",
];

/// Decorations at the end of the path.
const TAIL: &[&str] = &[
    "",
    "",
    "/",
    "%20",
    "%09",
    "\t",
    "%0a",
    "%e2%80%8b",
    ";x",
    ";%2f..",
    "/.",
    "/x/..",
    "%2fx%2f..",
    "/..%20/..",
    "%00",
    "%3f",
    "%23frag",
];

/// One spelling of a byte of a name.
fn spell(b: u8, how: u8) -> String {
    match how % 12 {
        0 => format!("%{b:02x}"),
        1 => format!("%{b:02X}"),
        2 => format!("%25{b:02X}"),
        3 => format!("%2525{b:02x}"),
        4 => (b as char).to_ascii_uppercase().to_string(),
        5 if b == b'.' => "%c0%ae".to_string(),
        6 if b == b's' => "ſ".to_string(),
        _ => (b as char).to_string(),
    }
}

/// A random spelling of `[prefix]/api/v1/<name>` (see the module comment).
fn arb_spelling() -> impl Strategy<Value = (String, &'static str)> {
    (
        prop::sample::select(NAMES.to_vec()),
        prop::collection::vec(any::<u8>(), 32),
        prop::collection::vec(0..NOISE.len(), 3),
        prop::collection::vec(0..SEP.len(), 3),
        0..TAIL.len(),
        any::<bool>(),
    )
        .prop_map(|(name, hows, noise, seps, tail, prefixed)| {
            let mut out = String::new();
            if prefixed {
                out.push_str("/chat");
            }
            for (i, seg) in ["api", "v1", name].iter().enumerate() {
                out.push_str(if i == 0 { "/" } else { SEP[seps[i]] });
                out.push_str(NOISE[noise[i]]);
                for (k, b) in seg.bytes().enumerate() {
                    // Most bytes plain, so that many spellings stay routable somewhere.
                    let how = hows[(k + i * 7) % hows.len()];
                    out.push_str(&if how < 160 {
                        (b as char).to_string()
                    } else {
                        spell(b, how)
                    });
                }
            }
            out.push_str(TAIL[tail]);
            (out, name)
        })
}

/// Random strings over the characters and escapes that matter to routers.
fn arb_noise_path() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("/"),
        Just("\\"),
        Just("."),
        Just(".."),
        Just("%"),
        Just("%2e"),
        Just("%2E"),
        Just("%25"),
        Just("%2f"),
        Just("%5c"),
        Just("%20"),
        Just(";"),
        Just(" "),
        Just("\t"),
        Just("api"),
        Just("v1"),
        Just("API"),
        Just("im.messages.others"),
        Just("dm.counters"),
        Just("im.list.everyone"),
        Just("chat"),
    ];
    prop::collection::vec(atom, 0..20).prop_map(|v| v.concat())
}

fn check_all(path: &str) {
    let routed = route_everywhere(path);
    for prefix in ["", "/chat"] {
        for guard in [false, true] {
            check_against_router_models(
                path,
                &routed,
                prefix,
                guard,
                classify(path, prefix, guard),
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The shortcut the fuzz target relies on: routing only the variants that can differ on a
    /// path reaches exactly the segment lists that routing every router reaches.
    #[test]
    fn pruned_router_variants_route_like_all_of_them(path in prop_oneof![arb_noise_path(), arb_spelling().prop_map(|(p, _)| p)]) {
        // Compared as the matcher sees them: empty segments do not count.
        let seen = |r: &Router| -> Vec<String> {
            r.route(&path).into_iter().filter(|s| !s.is_empty()).collect()
        };
        let all: std::collections::BTreeSet<Vec<String>> = Router::all().iter().map(seen).collect();
        let pruned: std::collections::BTreeSet<Vec<String>> =
            Router::variants_for(&path).iter().map(seen).collect();
        prop_assert_eq!(all, pruned, "{}", path);
    }

    #[test]
    fn no_model_router_reaches_a_guarded_name_through_a_pass_through_path((path, _) in arb_spelling()) {
        check_all(&path);
    }

    #[test]
    fn random_router_noise_never_bypasses(path in arb_noise_path()) {
        check_all(&path);
    }

    #[test]
    fn percent_encoded_file_names_pass_through(
        id in "[A-Za-z0-9]{17}",
        name in "[ -~\u{e9}\u{4e2d}\u{1F600}]{1,24}",
        dir in prop::sample::select(vec!["/file-upload", "/avatar", "/ufs/GridFS:Uploads", "/direct", "/api/v1/users.info"]),
    ) {
        let encoded: String = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC).collect();
        let path = format!("{dir}/{id}/{encoded}");
        for guard in [false, true] {
            prop_assert_eq!(classify(&path, "", guard), Route::Passthrough, "{}", path);
        }
    }
}

/// The generator is not vacuous: a fixed sample of spellings reaches a guarded name in some
/// model for most draws, and none of those passes through.
#[test]
fn most_generated_spellings_reach_a_guarded_name_in_some_model() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = arb_spelling();
    let (mut reached, mut total) = (0, 0);
    for _ in 0..300 {
        let (path, _) = strategy.new_tree(&mut runner).expect("tree").current();
        total += 1;
        let prefix = if path.starts_with("/chat") {
            "/chat"
        } else {
            ""
        };
        if reaches_guarded(&path, prefix, true).is_some() {
            reached += 1;
            assert_ne!(classify(&path, prefix, true), Route::Passthrough, "{path}");
        }
    }
    assert!(
        reached * 4 >= total,
        "only {reached} of {total} generated spellings reach a guarded name in any model"
    );
}
