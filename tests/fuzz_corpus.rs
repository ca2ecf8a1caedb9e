//! Replays the fuzzers' seed corpus (`fuzz/corpus/<target>/`) through the same invariant
//! checks the `cargo fuzz` targets run (`rocketchat_shim::fuzzing`), on stable Rust and
//! without libFuzzer, so CI checks every seed (and every finding added to the corpus) on
//! each run.

use std::path::{Path, PathBuf};

use rocketchat_shim::fuzzing;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    // A corpus that went missing must not make the test pass vacuously.
    assert!(
        files.len() >= 10,
        "{}: only {} seed files",
        dir.display(),
        files.len()
    );
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    for path in corpus(target) {
        let data = std::fs::read(&path).expect("read seed");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{target}: {} broke an invariant",
            path.display()
        );
    }
}

#[test]
fn route_corpus_keeps_the_invariants() {
    replay("route", fuzzing::fuzz_check_route);
}

#[test]
fn route_spellings_corpus_keeps_the_invariants() {
    replay("route_spellings", fuzzing::fuzz_check_route_spellings);
}

#[test]
fn params_corpus_keeps_the_invariants() {
    replay("params", fuzzing::fuzz_check_params);
}

#[test]
fn config_corpus_keeps_the_invariants() {
    replay("config", fuzzing::fuzz_check_config);
}

/// Spellings of the endpoint are classified as it (so a classifier that let one through
/// would trip the bypass assertion on that seed), and binary input is read, not panicked on.
#[test]
fn known_spellings_are_classified_and_binary_input_is_handled() {
    // The seeds that route to the endpoint really are classified as it, so a classifier
    // that let them through would trip the bypass assertion.
    for raw in [
        "/api/v1/im%2Emessages%2Eothers",
        "/API/V1/DM.MESSAGES.OTHERS/",
        "/api/v1/im.messages.others/..%20/..",
    ] {
        assert_eq!(
            rocketchat_shim::route::classify(raw, "", false),
            rocketchat_shim::route::Route::Intercepted,
            "{raw}"
        );
    }
    // Invalid UTF-8 and binary input are handled (lossily), not panicked on.
    fuzzing::fuzz_check_route(b"/api/\xff\xfe/v1/im.messages.others");
    fuzzing::fuzz_check_params(b"roomId=\xff&count=\x00");
    fuzzing::fuzz_check_config(b"[server]\n\xff = 1\n");
}
