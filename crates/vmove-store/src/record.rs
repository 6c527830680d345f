//! Typed records on top of the byte store.
//!
//! A record is stored as a JSON envelope naming its kind and format version:
//!
//! ```json
//! {"kind":"migration","version":1,"data":{"guest":"web1", "...": "..."}}
//! ```
//!
//! Loading checks both: another kind is [`StoreError::Kind`]; a version newer than the
//! code's [`Record::VERSION`] is [`StoreError::Version`] (an old binary never misreads a
//! newer record); an older version goes through [`Record::upgrade`], which by default
//! refuses it (also [`StoreError::Version`]).
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Precondition, Result, StateStore, StoreError};

/// A typed value kept in the store.
pub trait Record: Serialize + DeserializeOwned + Send + Sync {
    /// The kind, stored in the envelope (e.g. `"job"`).
    const KIND: &'static str;
    /// The format version this code writes and reads.
    const VERSION: u32;

    /// Turns the data of an older `version` (< [`Self::VERSION`]) into the current format,
    /// or `None` if that version is not supported. The default supports none.
    fn upgrade(version: u32, data: serde_json::Value) -> Option<serde_json::Value> {
        let _ = (version, data);
        None
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    kind: &'a str,
    version: u32,
    data: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    kind: String,
    version: u32,
    data: serde_json::Value,
}

/// The stored bytes of a record.
pub fn encode_record<T: Record>(key: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(&EnvelopeOut { kind: T::KIND, version: T::VERSION, data: value })
        .map_err(|source| StoreError::Encode { key: key.into(), source })
}

/// A record from its stored bytes, checking kind and version.
pub fn decode_record<T: Record>(key: &str, bytes: &[u8]) -> Result<T> {
    let decode = |source| StoreError::Decode { key: key.into(), source };
    let env: EnvelopeIn = serde_json::from_slice(bytes).map_err(decode)?;
    if env.kind != T::KIND {
        return Err(StoreError::Kind { key: key.into(), expected: T::KIND, found: env.kind });
    }
    let unsupported =
        || StoreError::Version { key: key.into(), kind: T::KIND, found: env.version, supported: T::VERSION };
    let data = match env.version {
        v if v == T::VERSION => env.data,
        v if v < T::VERSION => T::upgrade(v, env.data).ok_or_else(unsupported)?,
        _ => return Err(unsupported()),
    };
    serde_json::from_value(data).map_err(decode)
}

/// The record at `key` and its revision.
pub async fn get_record<T: Record>(store: &dyn StateStore, key: &str) -> Result<Option<(T, u64)>> {
    match store.get(key).await? {
        Some(e) => Ok(Some((decode_record(key, &e.value)?, e.revision))),
        None => Ok(None),
    }
}

/// Writes a record if `cond` holds; returns the new revision.
pub async fn put_record<T: Record>(store: &dyn StateStore, key: &str, value: &T, cond: Precondition) -> Result<u64> {
    store.put(key, encode_record(key, value)?, cond).await
}

/// Every record under `prefix` as `(key, record, revision)`, sorted by key. One record of
/// another kind or version fails the whole list (keep one kind per prefix).
pub async fn list_records<T: Record>(store: &dyn StateStore, prefix: &str) -> Result<Vec<(String, T, u64)>> {
    store
        .list(prefix)
        .await?
        .into_iter()
        .map(|e| Ok((decode_record(&e.key, &e.value)?, e)))
        .map(|r| r.map(|(t, e)| (e.key, t, e.revision)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V2 {
        name: String,
        size: u64,
    }

    impl Record for V2 {
        const KIND: &'static str = "thing";
        const VERSION: u32 = 2;

        fn upgrade(version: u32, mut data: serde_json::Value) -> Option<serde_json::Value> {
            (version == 1).then(|| {
                data["size"] = 0.into();
                data
            })
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Strict {
        name: String,
    }

    impl Record for Strict {
        const KIND: &'static str = "thing";
        const VERSION: u32 = 1;
    }

    #[test]
    fn envelope() {
        let b = encode_record("k", &V2 { name: "a".into(), size: 3 }).unwrap();
        assert_eq!(std::str::from_utf8(&b).unwrap(), r#"{"kind":"thing","version":2,"data":{"name":"a","size":3}}"#);
        assert_eq!(decode_record::<V2>("k", &b).unwrap(), V2 { name: "a".into(), size: 3 });
        // Newer than Strict reads.
        assert!(matches!(decode_record::<Strict>("k", &b), Err(StoreError::Version { found: 2, supported: 1, .. })));
        // Older, upgraded.
        let old = br#"{"kind":"thing","version":1,"data":{"name":"a"}}"#;
        assert_eq!(decode_record::<V2>("k", old).unwrap(), V2 { name: "a".into(), size: 0 });
        let older = br#"{"kind":"thing","version":0,"data":{"name":"a"}}"#;
        assert!(matches!(decode_record::<V2>("k", older), Err(StoreError::Version { found: 0, .. })));
        assert!(matches!(decode_record::<Strict>("k", older), Err(StoreError::Version { found: 0, .. })));
        let other = br#"{"kind":"other","version":1,"data":{"name":"a"}}"#;
        assert!(matches!(decode_record::<Strict>("k", other), Err(StoreError::Kind { found, .. }) if found == "other"));
        assert!(matches!(decode_record::<Strict>("k", b"{\"name\":\"a\"}"), Err(StoreError::Decode { .. })));
    }
}
