//! The conformance suite against the file store and the in-memory store.
use std::sync::Arc;

use vmove_store::{conformance, FileStore, MemStore, Precondition, StateStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_store() {
    conformance::run_all(&MemStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_store_two_handles() {
    let a = MemStore::new();
    conformance::run_two_handles(&a, &a.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run_all(&FileStore::open(dir.path()).unwrap()).await;
}

#[tokio::test(flavor = "current_thread")]
async fn file_store_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(dir.path()).unwrap();
    conformance::compare_and_swap(&s).await;
    conformance::watch(&s).await;
    conformance::logs(&s).await;
    conformance::concurrent_appends(&s).await;
}

/// Two handles that share nothing in one process: they behave as two processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_two_unshared_handles() {
    let dir = tempfile::tempdir().unwrap();
    let a = FileStore::open_unshared(dir.path()).unwrap();
    let b = FileStore::open_unshared(dir.path()).unwrap();
    conformance::run_two_handles(&a, &b).await;
    // Watches see the changes made through their own handle (process) only.
    let mut w = a.watch("w/").await.unwrap();
    b.put("w/by-b", vec![1], Precondition::Any).await.unwrap();
    let r = a.put("w/by-a", vec![1], Precondition::Any).await.unwrap();
    let e = w.recv().await.unwrap();
    assert_eq!((e.key(), e.revision()), ("w/by-a", r));
}

/// Two `open`s of one root share watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_two_shared_handles() {
    let dir = tempfile::tempdir().unwrap();
    let a = FileStore::open(dir.path()).unwrap();
    let b = FileStore::open(dir.path().join(".").as_path()).unwrap();
    conformance::run_two_handles(&a, &b).await;
    let mut w = a.watch("w/").await.unwrap();
    let r = b.put("w/x", vec![1], Precondition::Any).await.unwrap();
    assert_eq!(w.recv().await.unwrap().revision(), r);
}

/// The suite again on a reopened store: revisions and logs survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let (rev, deleted) = {
        let s = FileStore::open_unshared(dir.path()).unwrap();
        conformance::run_all(&s).await;
        s.append("keep/log", b"kept".to_vec()).await.unwrap();
        let rev = s.put("keep/key", b"v".to_vec(), Precondition::Any).await.unwrap();
        s.put("keep/gone", b"v".to_vec(), Precondition::Any).await.unwrap();
        let mut w = s.watch("keep/gone").await.unwrap();
        s.delete("keep/gone", Precondition::Any).await.unwrap();
        (rev, w.recv().await.unwrap().revision())
    };
    let s: Arc<dyn StateStore> = Arc::new(FileStore::open_unshared(dir.path()).unwrap());
    assert_eq!(s.get("keep/key").await.unwrap().unwrap().revision, rev);
    assert_eq!(s.read_log("keep/log", 0).await.unwrap(), vec![(0, b"kept".to_vec())]);
    assert_eq!(s.append("keep/log", b"more".to_vec()).await.unwrap(), 1);
    let r = s.put("keep/gone", b"again".to_vec(), Precondition::Absent).await.unwrap();
    assert!(r > deleted, "after reopen, revision {r} must pass the last delete's {deleted}");
}
