//! The cluster file loader: TOML parsing and validation (`Cluster::parse`, what
//! `Cluster::load` runs on the file's text). Errors are fine; they must be one line. What
//! loads must save to a file that loads again, unchanged.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmove_model::Cluster;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/fuzz/cluster.toml");
    match Cluster::parse(text, path) {
        Ok(c) => {
            let saved = c.to_toml();
            let again = Cluster::parse(&saved, path).unwrap_or_else(|e| panic!("the saved file does not load: {e}\n{saved}"));
            assert_eq!(again.to_toml(), saved, "saving is not stable");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "error on more than one line: {msg:?}");
        }
    }
});
