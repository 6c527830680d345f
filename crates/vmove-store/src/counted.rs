//! A store that counts what goes through it: every operation's count and the time spent in
//! it, by operation. The agent wraps its stores in one, and its metrics report the figures
//! (`vmove_store_operations_total`, `vmove_store_operation_seconds_total`), so the cost of a
//! migration on each store kind can be read off two agents before and after it.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::store::{Entry, Precondition, StateStore};
use crate::watch::{LogWatch, Watch};
use crate::Result;

/// The operations counted, in the order of [`StoreStats::snapshot`].
pub const OPS: [&str; 9] = ["get", "put", "delete", "list", "watch", "append", "read_log", "delete_log", "watch_log"];

/// Counts and time spent, per operation (failed calls included).
#[derive(Debug, Default)]
pub struct StoreStats {
    calls: [AtomicU64; OPS.len()],
    nanos: [AtomicU64; OPS.len()],
}

/// One operation's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpStats {
    /// The operation's name (one of [`OPS`]).
    pub op: &'static str,
    /// Calls.
    pub calls: u64,
    /// Time spent in them, ns.
    pub nanos: u64,
}

impl StoreStats {
    fn record(&self, op: usize, since: Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.calls[op].fetch_add(1, Ordering::Relaxed);
        // Saturating: a counter that reached u64::MAX ns (584 years) stays there.
        let _ = self.nanos[op].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_add(ns)));
    }

    /// Every operation's figures so far.
    pub fn snapshot(&self) -> Vec<OpStats> {
        OPS.iter()
            .enumerate()
            .map(|(i, op)| OpStats { op, calls: self.calls[i].load(Ordering::Relaxed), nanos: self.nanos[i].load(Ordering::Relaxed) })
            .collect()
    }
}

/// `inner`, counted into `stats`.
pub struct CountedStore {
    inner: Arc<dyn StateStore>,
    stats: Arc<StoreStats>,
}

impl CountedStore {
    /// Wraps `inner`; several stores may share one `stats`.
    pub fn new(inner: Arc<dyn StateStore>, stats: Arc<StoreStats>) -> CountedStore {
        CountedStore { inner, stats }
    }
}

#[async_trait]
impl StateStore for CountedStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let t = Instant::now();
        let r = self.inner.get(key).await;
        self.stats.record(0, t);
        r
    }

    async fn put(&self, key: &str, value: Vec<u8>, cond: Precondition) -> Result<u64> {
        let t = Instant::now();
        let r = self.inner.put(key, value, cond).await;
        self.stats.record(1, t);
        r
    }

    async fn delete(&self, key: &str, cond: Precondition) -> Result<bool> {
        let t = Instant::now();
        let r = self.inner.delete(key, cond).await;
        self.stats.record(2, t);
        r
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        let t = Instant::now();
        let r = self.inner.list(prefix).await;
        self.stats.record(3, t);
        r
    }

    async fn watch(&self, prefix: &str) -> Result<Watch> {
        let t = Instant::now();
        let r = self.inner.watch(prefix).await;
        self.stats.record(4, t);
        r
    }

    async fn append(&self, log: &str, record: Vec<u8>) -> Result<u64> {
        let t = Instant::now();
        let r = self.inner.append(log, record).await;
        self.stats.record(5, t);
        r
    }

    async fn read_log(&self, log: &str, from_seq: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let t = Instant::now();
        let r = self.inner.read_log(log, from_seq).await;
        self.stats.record(6, t);
        r
    }

    async fn delete_log(&self, log: &str) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.delete_log(log).await;
        self.stats.record(7, t);
        r
    }

    async fn watch_log(&self, log: &str) -> Result<LogWatch> {
        let t = Instant::now();
        let r = self.inner.watch_log(log).await;
        self.stats.record(8, t);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStore;

    #[tokio::test]
    async fn every_operation_is_counted_failures_too() {
        let stats = Arc::new(StoreStats::default());
        let s = CountedStore::new(Arc::new(MemStore::new()), stats.clone());
        s.put("a/1", b"x".to_vec(), Precondition::Any).await.unwrap();
        s.put("a/1", b"y".to_vec(), Precondition::Absent).await.expect_err("exists");
        assert!(s.get("a/1").await.unwrap().is_some());
        assert_eq!(s.list("a/").await.unwrap().len(), 1);
        s.append("log1", b"e".to_vec()).await.unwrap();
        assert_eq!(s.read_log("log1", 0).await.unwrap().len(), 1);
        s.delete_log("log1").await.unwrap();
        assert!(s.delete("a/1", Precondition::Any).await.unwrap());
        let _w = s.watch("a/").await.unwrap();
        let _l = s.watch_log("log1").await.unwrap();
        let calls: Vec<(&str, u64)> = stats.snapshot().iter().map(|o| (o.op, o.calls)).collect();
        assert_eq!(
            calls,
            vec![("get", 1), ("put", 2), ("delete", 1), ("list", 1), ("watch", 1), ("append", 1), ("read_log", 1), ("delete_log", 1), ("watch_log", 1)]
        );
        assert!(stats.snapshot().iter().all(|o| o.calls == 0 || o.nanos > 0), "time is recorded");
    }
}
