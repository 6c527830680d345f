//! libFuzzer target `agent_request`: the checks are `vmove_fuzzcheck::agent_request` (shared with the corpus
//! replay of the default test suite).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vmove_fuzzcheck::agent_request(data));
