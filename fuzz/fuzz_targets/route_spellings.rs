//! Fuzz target `route_spellings`: `rocketchat_shim::fuzzing::fuzz_check_route_spellings`, the
//! route invariants and the router models on paths spelled from router-relevant atoms.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rocketchat_shim::fuzzing::fuzz_check_route_spellings(data);
});
