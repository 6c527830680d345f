//! The properties the fuzz targets check on one input. Each function panics on a finding
//! (a panic inside the parser, or a broken property) and returns quietly otherwise; errors
//! from bad input are fine. The cargo-fuzz targets in `fuzz/` call these on what libFuzzer
//! generates; `tests/corpus.rs` replays the committed seed corpora (and the crash inputs
//! kept there) through them in the default test suite.
use std::path::Path;

use serde_json::Value;
use vmove_api::{decode_request, Role};
use vmove_cli::oedacli_parse::{parse, Command};
use vmove_model::Cluster;
use vmove_qmp::{
    AddFdInfo, CpuInfoFast, DirtyRateInfo, Message, MigrationCapabilityStatus, MigrationInfo, MigrationParameters,
    StatusInfo, VersionInfo,
};

/// The agent's request decoder: a request that decodes encodes and decodes again to itself.
pub fn agent_request(data: &[u8]) {
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
}

/// The cluster file loader: errors are one line; what loads saves to a file that loads
/// again, unchanged.
pub fn cluster_file(data: &[u8]) {
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
}

/// oedacli, line by line as the script driver feeds it: errors are one line; a `MIGRATE
/// GUEST` action written back parses to the same action.
pub fn oedacli(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for line in text.lines() {
        match parse(line) {
            Ok(Command::MigrateGuest(m)) => {
                let written = m.to_string();
                match parse(&written) {
                    Ok(again) => assert_eq!(again, Command::MigrateGuest(m), "{written}"),
                    Err(e) => panic!("{written:?} does not parse back: {e}"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "error on more than one line: {msg:?}");
            }
        }
    }
}

fn decode<T: serde::de::DeserializeOwned + std::fmt::Debug>(v: &Value) {
    if let Ok(t) = serde_json::from_value::<T>(v.clone()) {
        let _ = format!("{t:?}");
    }
}

/// One line from QEMU's monitor: classification, then every typed decoding the client
/// applies to a reply or an event.
pub fn qmp(data: &[u8]) {
    match vmove_qmp::parse_line(data) {
        Ok(Some(Message::Reply { result: Ok(v), .. })) => {
            decode::<StatusInfo>(&v);
            decode::<VersionInfo>(&v);
            decode::<Vec<CpuInfoFast>>(&v);
            decode::<Vec<MigrationCapabilityStatus>>(&v);
            decode::<MigrationParameters>(&v);
            decode::<DirtyRateInfo>(&v);
            decode::<AddFdInfo>(&v);
            if let Ok(info) = serde_json::from_value::<MigrationInfo>(v) {
                let st = info.status_or_none();
                let _ = (st.is_finished(), st.is_in_progress(), st.to_string());
            }
        }
        Ok(Some(Message::Reply { result: Err(e), .. })) => {
            let _ = e.to_string();
        }
        Ok(Some(Message::Event(e))) => {
            let _ = (e.migration_status(), e.migration_pass());
            decode::<Value>(&e.data);
        }
        Ok(Some(Message::Greeting(g))) => {
            let _ = (g.version.to_string(), g.version.at_least(7, 2));
        }
        Ok(Some(Message::Unknown(_)) | None) | Err(_) => {}
    }
}

/// One target's checks.
pub type Check = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/` and `fuzz/corpus/` name them.
pub const TARGETS: [(&str, Check); 4] =
    [("agent_request", agent_request), ("cluster_file", cluster_file), ("oedacli", oedacli), ("qmp", qmp)];
