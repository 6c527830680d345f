//! Real processes sharing one root: compare-and-swap and log appends stay atomic.
//!
//! The test runs copies of this test binary as children (`child`, which does nothing
//! unless `VMOVE_STORE_CHILD` names a root).
use std::path::Path;
use std::process::Command;

use vmove_store::{FileStore, Precondition, StateStore};

const COUNTER: &str = "shared/counter";
const LOG: &str = "shared/log";
const ROUNDS: u64 = 30;

/// Increments the counter `ROUNDS` times with compare-and-swap and appends one log record
/// per increment.
async fn work(root: &Path, me: &str) {
    let s = FileStore::open(root).unwrap();
    for i in 0..ROUNDS {
        loop {
            let e = s.get(COUNTER).await.unwrap().unwrap();
            let n: u64 = String::from_utf8(e.value).unwrap().parse().unwrap();
            match s.put(COUNTER, (n + 1).to_string().into_bytes(), Precondition::Revision(e.revision)).await {
                Ok(_) => break,
                Err(e) if e.is_conflict() => continue,
                Err(e) => panic!("{e}"),
            }
        }
        s.append(LOG, format!("{me} {i}").into_bytes()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child() {
    if let Ok(root) = std::env::var("VMOVE_STORE_CHILD") {
        work(Path::new(&root), &std::process::id().to_string()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_a_root() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(dir.path()).unwrap();
    s.put(COUNTER, b"0".to_vec(), Precondition::Absent).await.unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args(["child", "--exact", "--nocapture", "--test-threads=1"])
                .env("VMOVE_STORE_CHILD", dir.path())
                .spawn()
                .unwrap()
        })
        .collect();
    work(dir.path(), "parent").await;
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let n = s.get(COUNTER).await.unwrap().unwrap().value;
    assert_eq!(String::from_utf8(n).unwrap(), (3 * ROUNDS).to_string(), "no lost update");
    let log = s.read_log(LOG, 0).await.unwrap();
    assert_eq!(log.len() as u64, 3 * ROUNDS);
    assert!(log.iter().enumerate().all(|(i, (seq, _))| *seq == i as u64));
    // Each writer's records in its own order.
    let mut by_writer = std::collections::BTreeMap::<String, Vec<u64>>::new();
    for (_, r) in log {
        let text = String::from_utf8(r).unwrap();
        let (who, i) = text.split_once(' ').unwrap();
        by_writer.entry(who.into()).or_default().push(i.parse().unwrap());
    }
    assert_eq!(by_writer.len(), 3);
    assert!(by_writer.values().all(|v| *v == (0..ROUNDS).collect::<Vec<_>>()), "{by_writer:?}");
}
