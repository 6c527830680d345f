//! The file store after crashes and damage: torn log tails, leftover temp files, truncated
//! value files, a lost revision counter update, failing writes.
use std::io::Write;
use std::path::Path;

use vmove_store::{FileStore, Precondition, StateStore, StoreError};

const ANY: Precondition = Precondition::Any;

fn open(dir: &Path) -> FileStore {
    FileStore::open_unshared(dir).unwrap()
}

fn append_raw(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
}

async fn records(s: &FileStore, log: &str) -> Vec<Vec<u8>> {
    s.read_log(log, 0).await.unwrap().into_iter().map(|(_, r)| r).collect()
}

#[tokio::test]
async fn torn_log_tail_is_ignored_then_cut() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for r in ["a", "b", "c"] {
        s.append("jobs/j1", r.into()).await.unwrap();
    }
    let path = s.log_path("jobs/j1").unwrap();
    let good_len = std::fs::metadata(&path).unwrap().len();
    // A crash mid-append: a frame header promising 100 bytes, then 10 of them.
    let mut torn = 100u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0; 4]);
    torn.extend_from_slice(b"0123456789");
    append_raw(&path, &torn);
    assert_eq!(records(&s, "jobs/j1").await, [b"a", b"b", b"c"], "the torn tail is ignored");
    assert_eq!(s.read_log("jobs/j1", 2).await.unwrap(), vec![(2, b"c".to_vec())]);
    // The writer of this handle notices the file changed under it; a reopened one too.
    assert_eq!(s.append("jobs/j1", b"d".to_vec()).await.unwrap(), 3);
    assert_eq!(records(&s, "jobs/j1").await, [b"a", b"b", b"c", b"d"]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len + 9, "the torn bytes are cut off");
    drop(s);
    append_raw(&path, &[1, 0]);
    let s = open(dir.path());
    assert_eq!(records(&s, "jobs/j1").await.len(), 4);
    assert_eq!(s.append("jobs/j1", b"e".to_vec()).await.unwrap(), 4);
    assert_eq!(records(&s, "jobs/j1").await, [b"a", b"b", b"c", b"d", b"e"]);
}

#[tokio::test]
async fn log_with_a_bad_checksum_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for r in ["one", "two"] {
        s.append("l", r.into()).await.unwrap();
    }
    drop(s);
    let path = dir.path().join("l.log");
    let mut bytes = std::fs::read(&path).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let s = open(dir.path());
    assert_eq!(records(&s, "l").await, [b"one"]);
    assert_eq!(s.append("l", b"three".to_vec()).await.unwrap(), 1);
    assert_eq!(records(&s, "l").await, [b"one".to_vec(), b"three".to_vec()]);
}

#[tokio::test]
async fn log_torn_in_its_magic_or_foreign() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("torn.log"), b"vmv").unwrap();
    std::fs::write(dir.path().join("foreign.log"), b"hello, world\n").unwrap();
    let s = open(dir.path());
    assert!(s.read_log("torn", 0).await.unwrap().is_empty(), "a partial magic is an empty log");
    assert_eq!(s.append("torn", b"x".to_vec()).await.unwrap(), 0);
    assert_eq!(records(&s, "torn").await, [b"x"]);
    let r = s.read_log("foreign", 0).await;
    assert!(matches!(&r, Err(StoreError::Corrupt { key, .. }) if key == "foreign"), "{r:?}");
    let r = s.append("foreign", b"x".to_vec()).await;
    assert!(matches!(&r, Err(StoreError::Corrupt { key, .. }) if key == "foreign"), "{r:?}");
    assert_eq!(std::fs::read(dir.path().join("foreign.log")).unwrap(), b"hello, world\n", "not overwritten");
}

#[tokio::test]
async fn leftover_temp_files_are_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let rev = s.put("jobs/host2-3", b"{\"ok\":true}".to_vec(), ANY).await.unwrap();
    drop(s);
    // A crash between writing the temp file and renaming it, in two directories.
    let jobs = dir.path().join("jobs");
    std::fs::write(jobs.join(".host2-3.json.tmp.4242.0"), b"vmove-store 1 revision=99 len").unwrap();
    std::fs::write(jobs.join(".host2-4.json.tmp.4242.1"), b"").unwrap();
    std::fs::write(dir.path().join(".top.json.tmp.4242.2"), b"garbage").unwrap();
    let s = open(dir.path());
    let e = s.get("jobs/host2-3").await.unwrap().unwrap();
    assert_eq!((e.value.as_slice(), e.revision), (b"{\"ok\":true}".as_slice(), rev));
    assert_eq!(s.list("").await.unwrap().len(), 1);
    let left: Vec<_> = std::fs::read_dir(&jobs).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["host2-3.json"], "temp files removed at open");
    assert!(!dir.path().join(".top.json.tmp.4242.2").exists());
    // One left after open (another process crashed meanwhile) is ignored too.
    std::fs::write(jobs.join(".x.json.tmp.1.1"), b"vmove").unwrap();
    assert_eq!(s.list("jobs/").await.unwrap().len(), 1);
}

#[tokio::test]
async fn truncated_value_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let rev = s.put("guests/web1", br#"{"kind":"guest","version":1,"data":{}}"#.to_vec(), ANY).await.unwrap();
    s.put("guests/web2", b"ok".to_vec(), ANY).await.unwrap();
    let path = s.value_path("guests/web1").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(&format!("vmove-store 1 revision={rev} length=38 crc32=")), "{text}");
    for cut in [text.len() - 5, 20, 0] {
        std::fs::write(&path, &text.as_bytes()[..cut]).unwrap();
        let r = s.get("guests/web1").await;
        assert!(matches!(&r, Err(StoreError::Corrupt { key, .. }) if key == "guests/web1"), "cut at {cut}: {r:?}");
        let r = s.list("guests/").await;
        assert!(matches!(&r, Err(StoreError::Corrupt { key, .. }) if key == "guests/web1"), "{r:?}");
    }
    // Reopening works (the damaged file's revision is not counted, nothing else breaks).
    let s = open(dir.path());
    let r = s.put("guests/web1", b"x".to_vec(), Precondition::Revision(rev)).await;
    assert!(matches!(r, Err(StoreError::Corrupt { .. })), "a precondition cannot be checked: {r:?}");
    let r = s.put("guests/web1", b"x".to_vec(), Precondition::Absent).await;
    assert!(matches!(r, Err(StoreError::Corrupt { .. })), "{r:?}");
    // Overwriting (or deleting) without a precondition repairs it.
    let r2 = s.put("guests/web1", b"fixed".to_vec(), ANY).await.unwrap();
    assert!(r2 > rev);
    assert_eq!(s.get("guests/web1").await.unwrap().unwrap().value, b"fixed");
    std::fs::write(&path, b"junk").unwrap();
    assert!(s.delete("guests/web1", ANY).await.unwrap());
    assert_eq!(s.list("guests/").await.unwrap().len(), 1);
}

#[tokio::test]
async fn lost_counter_update_never_reuses_a_revision() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.put("a", b"1".to_vec(), ANY).await.unwrap();
    let rev = s.put("b", b"1".to_vec(), ANY).await.unwrap();
    drop(s);
    // Puts do not sync the counter: after a power loss it may be behind the value files.
    std::fs::write(dir.path().join(".revision"), b"00000000000000000001\n").unwrap();
    let s = open(dir.path());
    let next = s.put("c", b"1".to_vec(), ANY).await.unwrap();
    assert!(next > rev, "{next} after {rev}");
    drop(s);
    // Counter missing altogether.
    std::fs::remove_file(dir.path().join(".revision")).unwrap();
    let s = open(dir.path());
    assert!(s.put("d", b"1".to_vec(), ANY).await.unwrap() > next);
    drop(s);
    // Counter damaged: refuse to open rather than risk handing out old revisions.
    std::fs::write(dir.path().join(".revision"), b"x").unwrap();
    let r = FileStore::open_unshared(dir.path());
    assert!(matches!(&r, Err(StoreError::Corrupt { key, .. }) if key == ".revision"), "{r:?}");
}

#[tokio::test]
async fn foreign_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README"), b"hi").unwrap();
    std::fs::write(dir.path().join("bad name.json"), b"hi").unwrap();
    std::fs::create_dir(dir.path().join("x.json")).unwrap();
    std::fs::write(dir.path().join("x.json/y.json"), b"not ours").unwrap();
    let s = open(dir.path());
    s.put("k", b"v".to_vec(), ANY).await.unwrap();
    let keys: Vec<String> = s.list("").await.unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["k"]);
}

#[tokio::test]
async fn failed_writes_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // A file where a directory must go.
    std::fs::write(dir.path().join("jobs"), b"").unwrap();
    let r = s.put("jobs/x", b"v".to_vec(), ANY).await;
    assert!(matches!(r, Err(StoreError::Io { .. })), "{r:?}");
    let r = s.append("jobs/x", b"v".to_vec()).await;
    assert!(matches!(r, Err(StoreError::Io { .. })), "{r:?}");
    // A directory where the log file must go.
    std::fs::create_dir(dir.path().join("l.log")).unwrap();
    let r = s.append("l", b"v".to_vec()).await;
    assert!(matches!(r, Err(StoreError::Io { .. })), "{r:?}");
    // The store goes on working for the rest.
    assert_eq!(s.append("m", b"v".to_vec()).await.unwrap(), 0);
    assert!(s.put("k", b"v".to_vec(), ANY).await.is_ok());
}
