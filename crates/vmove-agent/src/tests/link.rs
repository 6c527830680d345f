//! A host's link to the cluster's store, which a test can cut: every call fails as a store
//! that cannot be reached does ([`StoreError::Unreachable`]), while the store itself (and
//! the other hosts' links) goes on — leases expire on the store's clock.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use vmove_store::{Entry, LeaseId, LeaseStore, MemStore, Precondition, LogWatch, Result, StateStore, StoreError, Watch};

/// One host's view of the shared [`MemStore`].
pub struct Link {
    store: MemStore,
    cut: AtomicBool,
}

impl Link {
    pub fn new(store: MemStore) -> Link {
        Link { store, cut: AtomicBool::new(false) }
    }

    /// Cuts (`true`) or restores the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }

    fn up(&self, what: &str) -> Result<()> {
        if self.cut.load(Ordering::SeqCst) {
            let source = std::io::Error::new(std::io::ErrorKind::TimedOut, "link cut by the test");
            return Err(StoreError::Unreachable { context: what.to_string(), source: source.into() });
        }
        Ok(())
    }
}

#[async_trait]
impl StateStore for Link {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        self.up(key)?;
        self.store.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, cond: Precondition) -> Result<u64> {
        self.up(key)?;
        self.store.put(key, value, cond).await
    }
    async fn delete(&self, key: &str, cond: Precondition) -> Result<bool> {
        self.up(key)?;
        self.store.delete(key, cond).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        self.up(prefix)?;
        self.store.list(prefix).await
    }
    async fn watch(&self, prefix: &str) -> Result<Watch> {
        self.up(prefix)?;
        self.store.watch(prefix).await
    }
    async fn append(&self, log: &str, record: Vec<u8>) -> Result<u64> {
        self.up(log)?;
        self.store.append(log, record).await
    }
    async fn read_log(&self, log: &str, from_seq: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        self.up(log)?;
        self.store.read_log(log, from_seq).await
    }
    async fn watch_log(&self, log: &str) -> Result<LogWatch> {
        self.up(log)?;
        self.store.watch_log(log).await
    }
    async fn delete_log(&self, log: &str) -> Result<()> {
        self.up(log)?;
        self.store.delete_log(log).await
    }
}

#[async_trait]
impl LeaseStore for Link {
    async fn grant_lease(&self, ttl: Duration) -> Result<(LeaseId, Duration)> {
        self.up("grant a lease")?;
        self.store.grant_lease(ttl).await
    }
    async fn renew_lease(&self, lease: LeaseId) -> Result<Duration> {
        self.up("renew a lease")?;
        self.store.renew_lease(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.up("revoke a lease")?;
        self.store.revoke_lease(lease).await
    }
    async fn lease_time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>> {
        self.up("lease TTL")?;
        self.store.lease_time_to_live(lease).await
    }
    async fn put_with_lease(&self, key: &str, value: Vec<u8>, cond: Precondition, lease: LeaseId) -> Result<u64> {
        self.up(key)?;
        self.store.put_with_lease(key, value, cond, lease).await
    }
    async fn quorum_lost_everywhere(&self, timeout: Duration) -> bool {
        // A host cut off reaches no member: it cannot tell.
        self.up("member status").is_ok() && self.store.quorum_lost_everywhere(timeout).await
    }
}
