//! The conformance suite: every [`StateStore`] implementation must pass it.
//!
//! Test support code (feature `conformance`): the checks panic with the rule that failed.
//! [`run_all`] takes a store that is empty under `ct/` (each check uses its own prefix
//! below it); [`run_two_handles`] takes two handles on one store (two processes, two
//! connections) and checks that compare-and-swap is atomic between them. [`lease`] checks
//! a [`LeaseStore`](crate::LeaseStore)'s leases.
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn conformance() {
//!     let store = MyStore::connect(..).await?;
//!     vmove_store::conformance::run_all(&store).await;
//! }
//! ```
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::Duration;

use futures::future::join_all;
use serde::{Deserialize, Serialize};

use crate::{
    get_record, list_records, put_record, Precondition, Record, Result, StateStore, StoreError, WatchEvent,
    MAX_VALUE_BYTES,
};

pub mod lease;
mod log_watch;

pub use log_watch::log_watch;

const ANY: Precondition = Precondition::Any;

#[track_caller]
fn ok<T>(r: Result<T>, what: &str) -> T {
    match r {
        Ok(t) => t,
        Err(e) => panic!("{what}: unexpected error: {e} ({e:?})"),
    }
}

#[track_caller]
fn conflict<T: Debug>(r: Result<T>, key: &str, expected: Precondition, actual: Option<u64>) {
    match r {
        Err(StoreError::Conflict { key: k, expected: e, actual: a }) => {
            assert_eq!((k.as_str(), e, a), (key, expected, actual), "conflict details")
        }
        other => panic!("{key}: expected a conflict ({expected} vs {actual:?}), got {other:?}"),
    }
}

#[track_caller]
fn invalid<T: Debug>(r: Result<T>, what: &str) {
    assert!(matches!(r, Err(StoreError::InvalidKey { .. })), "{what}: expected InvalidKey, got {r:?}");
}

async fn value(s: &dyn StateStore, key: &str) -> Option<(Vec<u8>, u64)> {
    ok(s.get(key).await, "get").map(|e| {
        assert_eq!(e.key, key, "entry key");
        assert!(e.revision > 0, "revision > 0");
        (e.value, e.revision)
    })
}

/// Runs every single-handle check.
pub async fn run_all(store: &dyn StateStore) {
    invalid_keys(store).await;
    put_get(store).await;
    compare_and_swap(store).await;
    delete(store).await;
    revisions(store).await;
    list_order(store).await;
    path_like_keys(store).await;
    watch(store).await;
    logs(store).await;
    log_watch(store).await;
    concurrent_appends(store).await;
    records(store).await;
}

/// Runs the checks of two handles on one store.
pub async fn run_two_handles(a: &dyn StateStore, b: &dyn StateStore) {
    two_handles(a, b).await;
    concurrent_cas(a, b).await;
}

/// Keys, log names and prefixes that break the rules are refused by every operation.
pub async fn invalid_keys(s: &dyn StateStore) {
    let long = format!("ct/{}/k", vec!["k".repeat(200); 3].join("/"));
    let long_segment = format!("ct/{}", "k".repeat(201));
    let bad = ["", "/ct", "ct/", "ct//a", ".ct", "ct/.a", "ct/..", "ct/a b", "ct/é", "ct\\a", "ct/a:b", &long, &long_segment];
    for k in bad {
        invalid(s.get(k).await, k);
        invalid(s.put(k, vec![], ANY).await, k);
        invalid(s.delete(k, ANY).await, k);
        invalid(s.append(k, vec![]).await, k);
        invalid(s.read_log(k, 0).await, k);
        invalid(s.delete_log(k).await, k);
    }
    for p in ["/", "/ct", "ct//", "ct/.x", "ct/a b"] {
        invalid(s.list(p).await, p);
        invalid(s.watch(p).await.map(|_| ()), p);
    }
    let max = format!("ct/{}/{}", "k".repeat(200), ["k".repeat(200), "k".repeat(107)].join("/"));
    assert_eq!(max.len(), crate::MAX_KEY_BYTES);
    ok(s.put(&max, b"x".to_vec(), ANY).await, "a 512-byte key");
    assert_eq!(value(s, &max).await.map(|v| v.0), Some(b"x".to_vec()));
    ok(s.delete(&max, ANY).await, "delete the 512-byte key");
}

/// Values round-trip byte for byte; each write takes a higher revision.
pub async fn put_get(s: &dyn StateStore) {
    let k = "ct/put/a";
    assert_eq!(value(s, k).await, None, "missing key");
    let r1 = ok(s.put(k, b"one".to_vec(), ANY).await, "put");
    assert!(r1 > 0);
    assert_eq!(value(s, k).await, Some((b"one".to_vec(), r1)));
    let r2 = ok(s.put(k, b"two".to_vec(), ANY).await, "overwrite");
    assert!(r2 > r1, "overwrite takes a higher revision ({r2} <= {r1})");
    assert_eq!(value(s, k).await, Some((b"two".to_vec(), r2)));
    let bin: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    for v in [vec![], b"\n\n".to_vec(), bin] {
        let r = ok(s.put(k, v.clone(), ANY).await, "put");
        assert_eq!(value(s, k).await, Some((v, r)));
    }
    let big = vec![7u8; MAX_VALUE_BYTES];
    let r = ok(s.put(k, big.clone(), ANY).await, "largest value");
    assert_eq!(value(s, k).await, Some((big, r)));
    let r = s.put(k, vec![0; MAX_VALUE_BYTES + 1], ANY).await;
    assert!(matches!(r, Err(StoreError::TooLarge { .. })), "too large: {r:?}");
}

/// Preconditions: `Absent`, `Revision(n)`; a failed one is a `Conflict` and changes nothing.
pub async fn compare_and_swap(s: &dyn StateStore) {
    let k = "ct/cas/a";
    conflict(s.put(k, b"x".to_vec(), Precondition::Revision(1)).await, k, Precondition::Revision(1), None);
    assert_eq!(value(s, k).await, None, "a failed put creates nothing");
    let r1 = ok(s.put(k, b"1".to_vec(), Precondition::Absent).await, "create if absent");
    conflict(s.put(k, b"x".to_vec(), Precondition::Absent).await, k, Precondition::Absent, Some(r1));
    let r2 = ok(s.put(k, b"2".to_vec(), Precondition::Revision(r1)).await, "swap at the current revision");
    conflict(s.put(k, b"x".to_vec(), Precondition::Revision(r1)).await, k, Precondition::Revision(r1), Some(r2));
    assert_eq!(value(s, k).await, Some((b"2".to_vec(), r2)), "a failed swap changes nothing");
    let r3 = ok(s.put(k, b"3".to_vec(), Precondition::Revision(r2)).await, "swap again");
    assert!(r3 > r2);
}

/// Deletes, with and without preconditions.
pub async fn delete(s: &dyn StateStore) {
    let k = "ct/del/a";
    assert!(!ok(s.delete(k, ANY).await, "delete a missing key"));
    assert!(!ok(s.delete(k, Precondition::Absent).await, "delete a missing key, if absent"));
    conflict(s.delete(k, Precondition::Revision(5)).await, k, Precondition::Revision(5), None);
    let r = ok(s.put(k, b"v".to_vec(), ANY).await, "put");
    conflict(s.delete(k, Precondition::Absent).await, k, Precondition::Absent, Some(r));
    conflict(s.delete(k, Precondition::Revision(r + 1)).await, k, Precondition::Revision(r + 1), Some(r));
    assert!(value(s, k).await.is_some(), "a failed delete changes nothing");
    assert!(ok(s.delete(k, Precondition::Revision(r)).await, "delete at the revision"));
    assert_eq!(value(s, k).await, None);
    ok(s.put(k, b"v".to_vec(), ANY).await, "put");
    assert!(ok(s.delete(k, ANY).await, "delete"));
    assert!(ok(s.list("ct/del/").await, "list").is_empty(), "deleted keys are not listed");
}

/// Revisions only go up, across keys, deletes and re-creation (no ABA).
pub async fn revisions(s: &dyn StateStore) {
    let mut last = 0;
    let mut seen = |r: u64, what: &str| {
        assert!(r > last, "{what}: revision {r} after {last}");
        last = r;
    };
    let (a, b) = ("ct/rev/a", "ct/rev/b");
    let ra = ok(s.put(a, b"1".to_vec(), ANY).await, "put");
    seen(ra, "put a");
    seen(ok(s.put(b, b"1".to_vec(), ANY).await, "put"), "put b");
    let mut w = ok(s.watch("ct/rev/").await, "watch");
    ok(s.delete(a, ANY).await, "delete");
    let del = next_event(&mut w).await;
    assert!(matches!(&del, WatchEvent::Delete { key, .. } if key == a), "{del:?}");
    seen(del.revision(), "delete a");
    let ra2 = ok(s.put(a, b"1".to_vec(), Precondition::Absent).await, "re-create");
    seen(ra2, "re-create a");
    conflict(s.put(a, b"x".to_vec(), Precondition::Revision(ra)).await, a, Precondition::Revision(ra), Some(ra2));
    ok(s.delete(b, ANY).await, "delete");
    seen(ok(s.put(b, b"2".to_vec(), ANY).await, "put"), "re-create b");
}

/// `list` is sorted by key and matches a raw string prefix.
pub async fn list_order(s: &dyn StateStore) {
    let keys = ["ct/list/b", "ct/list/a/x", "ct/list/a", "ct/list/B", "ct/list/ab", "ct/list/a-1", "ct/list/a/y/z", "ct/listx"];
    let mut revs = std::collections::HashMap::new();
    for k in keys {
        revs.insert(k, ok(s.put(k, k.as_bytes().to_vec(), ANY).await, "put"));
    }
    let revs = &revs;
    let listed = |p: &'static str| async move {
        let l = ok(s.list(p).await, "list");
        for e in l.iter().filter(|e| revs.contains_key(e.key.as_str())) {
            assert_eq!(e.value, e.key.as_bytes(), "listed value");
            assert_eq!(Some(&e.revision), revs.get(e.key.as_str()), "listed revision");
        }
        l.into_iter().map(|e| e.key).collect::<Vec<_>>()
    };
    let all = ["ct/list/B", "ct/list/a", "ct/list/a-1", "ct/list/a/x", "ct/list/a/y/z", "ct/list/ab", "ct/list/b"];
    assert_eq!(listed("ct/list/").await, all);
    assert_eq!(listed("ct/list").await, [&all[..], &["ct/listx"]].concat());
    assert_eq!(listed("ct/list/a").await, ["ct/list/a", "ct/list/a-1", "ct/list/a/x", "ct/list/a/y/z", "ct/list/ab"]);
    assert_eq!(listed("ct/list/a/").await, ["ct/list/a/x", "ct/list/a/y/z"]);
    assert_eq!(listed("ct/list/a/y/z").await, ["ct/list/a/y/z"]);
    assert!(listed("ct/list/c").await.is_empty());
    assert!(listed("ct/nothing/").await.is_empty());
    let everything = listed("").await;
    assert!(keys.iter().all(|k| everything.iter().any(|e| e == k)), "the empty prefix lists everything");
    assert!(everything.windows(2).all(|w| w[0] < w[1]), "sorted");
}

/// Segments that look like file names or suffixes stay distinct keys.
pub async fn path_like_keys(s: &dyn StateStore) {
    let keys = ["ct/path/a", "ct/path/a.json", "ct/path/a.json/b", "ct/path/a.json.d/c", "ct/path/a.d", "ct/path/a.d/e"];
    let more = ["ct/path/a.log", "ct/path/a.log/f", "ct/path/a/g", "ct/path/a..b", "ct/path/-", "ct/path/_.x"];
    for k in keys.iter().chain(&more) {
        ok(s.put(k, k.as_bytes().to_vec(), ANY).await, "put");
    }
    for k in keys.iter().chain(&more) {
        assert_eq!(value(s, k).await.map(|v| v.0), Some(k.as_bytes().to_vec()), "{k}");
    }
    let mut want: Vec<&str> = keys.iter().chain(&more).copied().collect();
    want.sort();
    let got: Vec<String> = ok(s.list("ct/path/").await, "list").into_iter().map(|e| e.key).collect();
    assert_eq!(got, want);
    ok(s.append("ct/path/a", b"log".to_vec()).await, "a log named like a key");
    assert_eq!(ok(s.list("ct/path/").await, "list").len(), want.len(), "logs are not keys");
    assert_eq!(value(s, "ct/path/a").await.map(|v| v.0), Some(b"ct/path/a".to_vec()));
}

async fn next_event(w: &mut crate::Watch) -> WatchEvent {
    match tokio::time::timeout(Duration::from_secs(10), w.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("the watch ended"),
        Err(_) => panic!("no watch event within 10 s"),
    }
}

/// Watches deliver the puts and deletes under their prefix made after they start, in
/// revision order.
pub async fn watch(s: &dyn StateStore) {
    ok(s.put("ct/watch/before", b"0".to_vec(), ANY).await, "put");
    let mut all = ok(s.watch("ct/watch/").await, "watch");
    let mut only_a = ok(s.watch("ct/watch/a").await, "watch");
    let dropped = ok(s.watch("ct/watch/").await, "watch");
    drop(dropped);
    let ra = ok(s.put("ct/watch/a", b"1".to_vec(), ANY).await, "put");
    let rb = ok(s.put("ct/watch/b/c", b"2".to_vec(), ANY).await, "put");
    ok(s.put("ct/other", b"x".to_vec(), ANY).await, "put");
    assert!(s.put("ct/watch/b/c", b"x".to_vec(), Precondition::Absent).await.is_err(), "a failed put");
    assert!(ok(s.delete("ct/watch/a", ANY).await, "delete"));
    ok(s.append("ct/watch/log", b"x".to_vec()).await, "append");
    let rs = ok(s.put("ct/watch/end", b"".to_vec(), ANY).await, "put");
    let entry = |k: &str, v: &[u8], r| WatchEvent::Put(crate::Entry { key: k.into(), value: v.to_vec(), revision: r });
    assert_eq!(next_event(&mut all).await, entry("ct/watch/a", b"1", ra));
    assert_eq!(next_event(&mut all).await, entry("ct/watch/b/c", b"2", rb));
    let del = next_event(&mut all).await;
    assert!(matches!(&del, WatchEvent::Delete { key, revision } if key == "ct/watch/a" && *revision > rb), "{del:?}");
    assert_eq!(next_event(&mut all).await, entry("ct/watch/end", b"", rs), "nothing else (logs are not watched)");
    assert_eq!(next_event(&mut only_a).await, entry("ct/watch/a", b"1", ra));
    assert_eq!(next_event(&mut only_a).await, del);
    assert_eq!(only_a.try_recv(), None);
}

/// Logs: sequence numbers from 0, reads from a sequence number, delete and restart.
pub async fn logs(s: &dyn StateStore) {
    let l = "ct/log/a";
    assert!(ok(s.read_log(l, 0).await, "read a missing log").is_empty());
    for (i, r) in [b"zero".to_vec(), vec![], (0..=255u8).collect()].into_iter().enumerate() {
        assert_eq!(ok(s.append(l, r).await, "append"), i as u64, "sequence numbers from 0");
    }
    let got = ok(s.read_log(l, 0).await, "read");
    assert_eq!(got, vec![(0, b"zero".to_vec()), (1, vec![]), (2, (0..=255u8).collect())]);
    assert_eq!(ok(s.read_log(l, 2).await, "read from 2"), got[2..].to_vec());
    assert!(ok(s.read_log(l, 3).await, "read past the end").is_empty());
    assert!(ok(s.read_log(l, u64::MAX).await, "read far past the end").is_empty());
    assert_eq!(ok(s.append("ct/log/b", b"b".to_vec()).await, "another log"), 0);
    let big = vec![1u8; MAX_VALUE_BYTES];
    assert_eq!(ok(s.append("ct/log/b", big.clone()).await, "largest record"), 1);
    let r = s.append("ct/log/b", vec![0; MAX_VALUE_BYTES + 1]).await;
    assert!(matches!(r, Err(StoreError::TooLarge { .. })), "too large: {r:?}");
    assert_eq!(ok(s.read_log("ct/log/b", 1).await, "read"), vec![(1, big)]);
    assert!(ok(s.list("ct/log/").await, "list").is_empty(), "logs are not keys");
    ok(s.delete_log(l).await, "delete a log");
    assert!(ok(s.read_log(l, 0).await, "read a deleted log").is_empty());
    assert_eq!(ok(s.append(l, b"again".to_vec()).await, "append after delete"), 0);
    assert_eq!(ok(s.read_log(l, 0).await, "read"), vec![(0, b"again".to_vec())]);
    assert_eq!(ok(s.read_log("ct/log/b", 0).await, "read").len(), 2, "other logs untouched");
    ok(s.delete_log("ct/log/missing").await, "delete a missing log");
    ok(s.delete_log(l).await, "delete");
    ok(s.delete_log("ct/log/b").await, "delete");
}

/// Concurrent appends get distinct, gap-free sequence numbers matching the records.
pub async fn concurrent_appends(s: &dyn StateStore) {
    let l = "ct/log/concurrent";
    let seqs = join_all((0..200u32).map(|i| s.append(l, i.to_le_bytes().to_vec()))).await;
    let seqs: Vec<u64> = seqs.into_iter().map(|r| ok(r, "append")).collect();
    assert_eq!(seqs.iter().copied().collect::<BTreeSet<_>>(), (0..200).collect(), "sequence numbers 0..200");
    let got = ok(s.read_log(l, 0).await, "read");
    assert_eq!(got.len(), 200);
    for (i, seq) in seqs.iter().enumerate() {
        assert_eq!(got[*seq as usize], (*seq, (i as u32).to_le_bytes().to_vec()), "record at its sequence number");
    }
}

/// A test record, version 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestRecord {
    /// A name.
    pub name: String,
    /// Added in version 2.
    pub size: u64,
}

impl Record for TestRecord {
    const KIND: &'static str = "ct-test";
    const VERSION: u32 = 2;

    fn upgrade(version: u32, mut data: serde_json::Value) -> Option<serde_json::Value> {
        (version == 1).then(|| {
            data["size"] = 0.into();
            data
        })
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct OtherRecord {
    name: String,
}

impl Record for OtherRecord {
    const KIND: &'static str = "ct-other";
    const VERSION: u32 = 1;
}

/// Typed records: round trip, kind and version checked on load.
pub async fn records(s: &dyn StateStore) {
    let rec = TestRecord { name: "web1".into(), size: 42 };
    let r = ok(put_record(s, "ct/rec/a", &rec, Precondition::Absent).await, "put_record");
    assert_eq!(ok(get_record::<TestRecord>(s, "ct/rec/a").await, "get_record"), Some((rec.clone(), r)));
    assert_eq!(ok(get_record::<TestRecord>(s, "ct/rec/none").await, "get_record"), None);
    let raw = |v: &str| v.as_bytes().to_vec();
    ok(s.put("ct/rec/v1", raw(r#"{"kind":"ct-test","version":1,"data":{"name":"old"}}"#), ANY).await, "put");
    let (old, _) = ok(get_record::<TestRecord>(s, "ct/rec/v1").await, "upgrade").unwrap_or_else(|| panic!("missing"));
    assert_eq!(old, TestRecord { name: "old".into(), size: 0 });
    ok(s.put("ct/rec/v3", raw(r#"{"kind":"ct-test","version":3,"data":{"name":"new"}}"#), ANY).await, "put");
    let r = get_record::<TestRecord>(s, "ct/rec/v3").await;
    assert!(matches!(&r, Err(StoreError::Version { key, found: 3, supported: 2, .. }) if key == "ct/rec/v3"), "{r:?}");
    ok(s.put("ct/rec/v0", raw(r#"{"kind":"ct-test","version":0,"data":{"name":"older"}}"#), ANY).await, "put");
    let r = get_record::<TestRecord>(s, "ct/rec/v0").await;
    assert!(matches!(r, Err(StoreError::Version { found: 0, .. })), "{r:?}");
    let r = get_record::<OtherRecord>(s, "ct/rec/a").await;
    assert!(matches!(&r, Err(StoreError::Kind { found, expected: "ct-other", .. }) if found == "ct-test"), "{r:?}");
    ok(s.put("ct/rec/raw", raw("not json"), ANY).await, "put");
    let r = get_record::<TestRecord>(s, "ct/rec/raw").await;
    assert!(matches!(r, Err(StoreError::Decode { .. })), "{r:?}");
    ok(s.delete("ct/rec/raw", ANY).await, "delete");
    ok(s.delete("ct/rec/v0", ANY).await, "delete");
    ok(s.delete("ct/rec/v3", ANY).await, "delete");
    let all = ok(list_records::<TestRecord>(s, "ct/rec/").await, "list_records");
    let keys: Vec<&str> = all.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(keys, ["ct/rec/a", "ct/rec/v1"]);
}

/// Two handles on one store see each other's writes; compare-and-swap is decided once.
pub async fn two_handles(a: &dyn StateStore, b: &dyn StateStore) {
    let k = "ct/two/a";
    let r = ok(a.put(k, b"a".to_vec(), Precondition::Absent).await, "put via a");
    conflict(b.put(k, b"b".to_vec(), Precondition::Absent).await, k, Precondition::Absent, Some(r));
    assert_eq!(value(b, k).await, Some((b"a".to_vec(), r)), "b sees a's write");
    let (ra, rb) = (a.put(k, b"a2".to_vec(), Precondition::Revision(r)), b.put(k, b"b2".to_vec(), Precondition::Revision(r)));
    let (ra, rb) = futures::join!(ra, rb);
    assert!(ra.is_ok() != rb.is_ok(), "exactly one swap wins: {ra:?} {rb:?}");
    let r2 = ok(b.put(k, b"b3".to_vec(), ANY).await, "put via b");
    assert!(r2 > r && r2 > ra.unwrap_or(0) && r2 > rb.unwrap_or(0), "revisions are shared");
    assert_eq!(ok(a.append("ct/two/log", b"a".to_vec()).await, "append via a"), 0);
    assert_eq!(ok(b.append("ct/two/log", b"b".to_vec()).await, "append via b"), 1);
    assert_eq!(ok(a.read_log("ct/two/log", 0).await, "read via a").len(), 2);
    ok(b.delete_log("ct/two/log").await, "delete via b");
    assert_eq!(ok(a.append("ct/two/log", b"a".to_vec()).await, "append via a after b deleted the log"), 0);
    assert_eq!(ok(b.read_log("ct/two/log", 0).await, "read via b"), vec![(0, b"a".to_vec())]);
}

async fn increments(h: &dyn StateStore, k: &str, times: usize) -> Vec<u64> {
    let mut revs = Vec::new();
    for _ in 0..times {
        loop {
            let (v, r) = value(h, k).await.unwrap_or_else(|| panic!("counter missing"));
            let n: u64 = String::from_utf8_lossy(&v).parse().unwrap_or_else(|_| panic!("counter value {v:?}"));
            match h.put(k, (n + 1).to_string().into_bytes(), Precondition::Revision(r)).await {
                Ok(r) => break revs.push(r),
                Err(e) if e.is_conflict() => continue,
                Err(e) => panic!("increment: {e}"),
            }
        }
    }
    revs
}

/// Counters incremented with compare-and-swap from both handles at once lose no update.
pub async fn concurrent_cas(a: &dyn StateStore, b: &dyn StateStore) {
    let k = "ct/two/counter";
    ok(a.put(k, b"0".to_vec(), ANY).await, "put");
    let runs = join_all([increments(a, k, 20), increments(b, k, 20), increments(a, k, 20), increments(b, k, 20)]).await;
    let (v, _) = value(b, k).await.unwrap_or_else(|| panic!("counter missing"));
    assert_eq!(v, b"80", "every increment counted");
    let revs: BTreeSet<u64> = runs.into_iter().flatten().collect();
    assert_eq!(revs.len(), 80, "every revision handed out once");
}
