//! Fuzz target `params`: the invariants of `rocketchat_shim::fuzzing::fuzz_check_params`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rocketchat_shim::fuzzing::fuzz_check_params(data);
});
