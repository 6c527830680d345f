//! libFuzzer target `oedacli`: the checks are `vmove_fuzzcheck::oedacli` (shared with the corpus
//! replay of the default test suite).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vmove_fuzzcheck::oedacli(data));
