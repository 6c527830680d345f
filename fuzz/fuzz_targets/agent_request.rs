//! The agent's request decoder: JSON parsing and the range checks
//! (`vmove_api::decode_request`). Errors are fine. A request that decodes must encode and
//! decode again to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmove_api::{decode_request, Role};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    match decode_request(line) {
        Ok(req) => {
            let _ = (req.op(), req.allowed_for(&Role::Host));
            let back = serde_json::to_string(&req).unwrap_or_else(|e| panic!("{req:?} does not encode: {e}"));
            match decode_request(&back) {
                Ok(again) => assert_eq!(again, req, "{back}"),
                Err(e) => panic!("{back} does not decode again: {e}"),
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
