//! libFuzzer target `qmp`: the checks are `vmove_fuzzcheck::qmp` (shared with the corpus
//! replay of the default test suite).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vmove_fuzzcheck::qmp(data));
