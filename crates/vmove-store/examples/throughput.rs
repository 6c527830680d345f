//! Prints how fast the file store appends and writes, in a temporary directory (or the
//! directory given as the first argument, e.g. on the shared pool).
//!
//! `cargo run -p vmove-store --release --example throughput [DIR]`
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use vmove_store::{FileStore, Precondition, StateStore};

const RECORD: &[u8] = br#"{"seq":0,"at_ms":1700000000000,"kind":"progress","step":"MIGRATE_MEMORY","done":123456789,"total":987654321}"#;

async fn appends(s: &Arc<FileStore>, writers: usize, each: usize) {
    let t = Instant::now();
    join_all((0..writers).map(|w| {
        let s = s.clone();
        async move {
            let log = format!("bench/log-{writers}-{w}");
            for _ in 0..each {
                s.append(&log, RECORD.to_vec()).await.map(drop).unwrap_or_else(|e| panic!("append: {e}"));
            }
        }
    }))
    .await;
    let n = writers * each;
    let secs = t.elapsed().as_secs_f64();
    println!("append, {writers:>3} writer(s): {n:>5} records in {secs:6.3} s = {:8.0} appends/s", n as f64 / secs);
}

async fn burst(s: &Arc<FileStore>, n: usize) {
    // One job emitting a burst without waiting: group commit writes it with one fsync.
    let t = Instant::now();
    join_all((0..n).map(|_| s.append("bench/burst", RECORD.to_vec()))).await;
    let secs = t.elapsed().as_secs_f64();
    println!("append, burst of {n} on one log: {secs:6.3} s = {:8.0} appends/s", n as f64 / secs);
}

async fn puts(s: &Arc<FileStore>, n: usize) {
    let t = Instant::now();
    for i in 0..n {
        s.put(&format!("bench/key-{}", i % 16), RECORD.to_vec(), Precondition::Any)
            .await
            .unwrap_or_else(|e| panic!("put: {e}"));
    }
    let secs = t.elapsed().as_secs_f64();
    println!("put, sequential: {n:>5} in {secs:6.3} s = {:8.0} puts/s", n as f64 / secs);
}

#[tokio::main]
async fn main() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let root = std::env::args().nth(1).map(Into::into).unwrap_or_else(|| tmp.path().to_path_buf());
    let s = Arc::new(FileStore::open(&root).unwrap_or_else(|e| panic!("open {}: {e}", root.display())));
    println!("store at {}", s.root().display());
    appends(&s, 1, 300).await;
    appends(&s, 8, 100).await;
    appends(&s, 64, 20).await;
    burst(&s, 1000).await;
    puts(&s, 200).await;
}
