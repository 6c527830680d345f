//! One line from QEMU's monitor: classification into greeting, event or reply
//! (`vmove_qmp::parse_line`), then every typed decoding the client applies to a reply's
//! value or an event. Errors are fine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vmove_qmp::{
    AddFdInfo, CpuInfoFast, DirtyRateInfo, Message, MigrationCapabilityStatus, MigrationInfo, MigrationParameters,
    StatusInfo, VersionInfo,
};

fn decode<T: serde::de::DeserializeOwned + std::fmt::Debug>(v: &Value) {
    if let Ok(t) = serde_json::from_value::<T>(v.clone()) {
        let _ = format!("{t:?}");
    }
}

fuzz_target!(|data: &[u8]| {
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
});
