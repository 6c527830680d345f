//! [`MemStore`]: the store in memory, with fault injection, for unit tests.
//!
//! It keeps every rule of the trait (revisions, compare-and-swap, watches, logs) so that
//! code tested against it behaves the same on the file store. [`MemStore::fail_writes`]
//! makes writes fail with [`StoreError::Io`], to test that the caller stops when it cannot
//! record its state:
//!
//! ```
//! use vmove_store::{FailPolicy, MemStore, Precondition, StateStore};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = MemStore::new();
//! store.fail_writes(FailPolicy::After(1));
//! store.put("a", b"1".to_vec(), Precondition::Any).await.unwrap();
//! assert!(store.put("b", b"2".to_vec(), Precondition::Any).await.is_err());
//! # }
//! ```
//!
//! It has leases ([`LeaseStore`]) as etcd has them, on tokio's clock (so tests may pause
//! time): a lease's keys are deleted, all at one revision, when it expires.
//! [`MemStore::fail_lease_renewals`] and [`MemStore::expire_lease`] play a store that
//! cannot be reached and a server that expires a lease.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::key::{check_size, validate_key, validate_prefix};
use crate::watch::{LogHub, WatchHub};
use crate::{Entry, LeaseId, LeaseStore, LogRecord, LogWatch, Precondition, Result, StateStore, StoreError, Watch, WatchEvent};

/// Which writes (`put`, `delete`, `append`, `delete_log`) fail.
///
/// Every write with a valid key counts, whether it fails or not; a failing write changes
/// nothing (and takes no revision).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FailPolicy {
    /// None (the default).
    #[default]
    Never,
    /// The next `n` writes, then none again.
    Next(u64),
    /// Every write after the next `n` succeed (a disk that dies). `After(k)` for
    /// `k in 0..MemStore::writes()` of a clean run fails "every phase" in turn.
    After(u64),
    /// Writes to keys or logs starting with this prefix.
    Prefix(String),
    /// Every write.
    All,
}

#[derive(Debug)]
struct MemLease {
    ttl: Duration,
    expires: Instant,
    keys: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct State {
    revision: u64,
    kv: BTreeMap<String, (Vec<u8>, u64)>,
    logs: HashMap<String, Vec<Vec<u8>>>,
    fail: FailPolicy,
    writes: u64,
    leases: HashMap<i64, MemLease>,
    key_lease: HashMap<String, i64>,
    last_lease: i64,
    renewals_fail: bool,
    no_quorum: bool,
}

impl State {
    /// Counts a write and applies the fault policy.
    fn attempt(&mut self, target: &str) -> Result<()> {
        self.writes += 1;
        if self.no_quorum {
            let source = std::io::Error::new(std::io::ErrorKind::TimedOut, "no quorum");
            return Err(StoreError::Unreachable { context: format!("write {target}"), source: source.into() });
        }
        let fail = match &mut self.fail {
            FailPolicy::Never => false,
            FailPolicy::Next(0) => {
                self.fail = FailPolicy::Never;
                false
            }
            FailPolicy::Next(n) => {
                *n -= 1;
                true
            }
            FailPolicy::After(0) | FailPolicy::All => true,
            FailPolicy::After(n) => {
                *n -= 1;
                false
            }
            FailPolicy::Prefix(p) => target.starts_with(p.as_str()),
        };
        if fail {
            return Err(StoreError::io(format!("write {target}"), std::io::Error::other("injected fault")));
        }
        Ok(())
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// Detaches a key from its lease, if it has one.
    fn detach(&mut self, key: &str) {
        if let Some(old) = self.key_lease.remove(key) {
            if let Some(l) = self.leases.get_mut(&old) {
                l.keys.remove(key);
            }
        }
    }

    /// Removes a lease and deletes its keys (at one revision, as etcd does); returns the
    /// events to publish.
    fn end_lease(&mut self, id: i64) -> Vec<WatchEvent> {
        let Some(lease) = self.leases.remove(&id) else { return vec![] };
        if lease.keys.is_empty() {
            return vec![];
        }
        let revision = self.next_revision();
        lease
            .keys
            .into_iter()
            .map(|key| {
                self.kv.remove(&key);
                self.key_lease.remove(&key);
                WatchEvent::Delete { key, revision }
            })
            .collect()
    }
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    hub: WatchHub,
    logs: LogHub,
}

/// The store in memory. Clones share the same data.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    inner: Arc<Inner>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets which writes fail from now on (replacing the previous policy).
    pub fn fail_writes(&self, policy: FailPolicy) {
        self.state().fail = policy;
    }

    /// How many writes were attempted so far (failed ones included).
    pub fn writes(&self) -> u64 {
        self.state().writes
    }

    /// The current store revision (the last one handed out, 0 if none).
    pub fn revision(&self) -> u64 {
        self.state().revision
    }

    /// While `fail` holds, lease renewals fail with [`StoreError::Unreachable`] (a holder
    /// cut off from the store); leases still expire on time.
    pub fn fail_lease_renewals(&self, fail: bool) {
        self.state().renewals_fail = fail;
    }

    /// While `lost` holds, the store has no quorum: writes and renewals fail with
    /// [`StoreError::Unreachable`], no lease expires, and
    /// [`LeaseStore::quorum_lost_everywhere`] says so. When quorum returns, every lease gets
    /// its whole TTL again (as etcd's new leader does).
    pub fn lose_quorum(&self, lost: bool) {
        let mut s = self.state();
        s.no_quorum = lost;
        if !lost {
            let now = Instant::now();
            for l in s.leases.values_mut() {
                l.expires = now + l.ttl;
            }
        }
    }

    /// Expires a lease now, as the server does when its TTL runs out: its keys are
    /// deleted. Returns whether it existed.
    pub fn expire_lease(&self, lease: LeaseId) -> bool {
        let mut s = self.state();
        let existed = s.leases.contains_key(&lease.0);
        for ev in s.end_lease(lease.0) {
            self.inner.hub.publish(&ev);
        }
        existed
    }

    /// The leases that exist now.
    pub fn leases(&self) -> Vec<LeaseId> {
        let mut ids: Vec<LeaseId> = self.state().leases.keys().map(|id| LeaseId(*id)).collect();
        ids.sort();
        ids
    }

    fn write(&self, key: &str, value: Vec<u8>, cond: Precondition, lease: Option<i64>) -> Result<u64> {
        validate_key(key)?;
        check_size(key, value.len())?;
        let mut s = self.state();
        s.attempt(key)?;
        cond.check(key, s.kv.get(key).map(|(_, r)| *r))?;
        if let Some(id) = lease {
            if !s.leases.contains_key(&id) {
                return Err(StoreError::LeaseLost { lease: id });
            }
        }
        let revision = s.next_revision();
        s.kv.insert(key.into(), (value.clone(), revision));
        s.detach(key);
        if let Some(id) = lease {
            s.key_lease.insert(key.into(), id);
            if let Some(l) = s.leases.get_mut(&id) {
                l.keys.insert(key.into());
            }
        }
        // Published under the state lock: watches see changes in revision order.
        self.inner.hub.publish(&WatchEvent::Put(Entry { key: key.into(), value, revision }));
        Ok(revision)
    }
}

/// Deletes a lease's keys when it expires (on tokio's clock).
fn reap(inner: Weak<Inner>, id: i64) {
    tokio::spawn(async move {
        loop {
            let Some(inner) = inner.upgrade() else { return };
            let expires = {
                let mut s = inner.state.lock().unwrap_or_else(|p| p.into_inner());
                let no_quorum = s.no_quorum;
                let Some(l) = s.leases.get(&id) else { return };
                if no_quorum {
                    // No leader: nothing expires; look again later.
                    Instant::now() + l.ttl / 10
                } else if Instant::now() < l.expires {
                    l.expires
                } else {
                    tracing::debug!("lease {id:x} expired");
                    for ev in s.end_lease(id) {
                        inner.hub.publish(&ev);
                    }
                    return;
                }
            };
            drop(inner);
            tokio::time::sleep_until(expires).await;
        }
    });
}

#[async_trait]
impl LeaseStore for MemStore {
    async fn grant_lease(&self, ttl: Duration) -> Result<(LeaseId, Duration)> {
        let id = {
            let mut s = self.state();
            s.last_lease += 1;
            let id = s.last_lease;
            s.leases.insert(id, MemLease { ttl, expires: Instant::now() + ttl, keys: BTreeSet::new() });
            id
        };
        reap(Arc::downgrade(&self.inner), id);
        Ok((LeaseId(id), ttl))
    }

    async fn renew_lease(&self, lease: LeaseId) -> Result<Duration> {
        let mut s = self.state();
        if s.renewals_fail || s.no_quorum {
            let source = std::io::Error::new(std::io::ErrorKind::TimedOut, "injected fault");
            return Err(StoreError::Unreachable { context: format!("renew lease {lease}"), source: source.into() });
        }
        let l = s.leases.get_mut(&lease.0).ok_or(StoreError::LeaseLost { lease: lease.0 })?;
        l.expires = Instant::now() + l.ttl;
        Ok(l.ttl)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.expire_lease(lease);
        Ok(())
    }

    async fn lease_time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>> {
        Ok(self.state().leases.get(&lease.0).map(|l| l.expires.saturating_duration_since(Instant::now())))
    }

    async fn put_with_lease(&self, key: &str, value: Vec<u8>, cond: Precondition, lease: LeaseId) -> Result<u64> {
        self.write(key, value, cond, Some(lease.0))
    }

    async fn quorum_lost_everywhere(&self, _timeout: Duration) -> bool {
        self.state().no_quorum
    }
}

#[async_trait]
impl StateStore for MemStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        validate_key(key)?;
        Ok(self.state().kv.get(key).map(|(v, r)| Entry { key: key.into(), value: v.clone(), revision: *r }))
    }

    async fn put(&self, key: &str, value: Vec<u8>, cond: Precondition) -> Result<u64> {
        self.write(key, value, cond, None)
    }

    async fn delete(&self, key: &str, cond: Precondition) -> Result<bool> {
        validate_key(key)?;
        let mut s = self.state();
        s.attempt(key)?;
        let actual = s.kv.get(key).map(|(_, r)| *r);
        cond.check(key, actual)?;
        if actual.is_none() {
            return Ok(false);
        }
        let revision = s.next_revision();
        s.kv.remove(key);
        s.detach(key);
        self.inner.hub.publish(&WatchEvent::Delete { key: key.into(), revision });
        Ok(true)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        validate_prefix(prefix)?;
        let s = self.state();
        Ok(s.kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, r))| Entry { key: k.clone(), value: v.clone(), revision: *r })
            .collect())
    }

    async fn watch(&self, prefix: &str) -> Result<Watch> {
        validate_prefix(prefix)?;
        Ok(self.inner.hub.subscribe(prefix))
    }

    async fn append(&self, log: &str, record: Vec<u8>) -> Result<u64> {
        validate_key(log)?;
        check_size(log, record.len())?;
        let mut s = self.state();
        s.attempt(log)?;
        let records = s.logs.entry(log.into()).or_default();
        records.push(record.clone());
        let seq = records.len() as u64 - 1;
        self.inner.logs.publish(log, [LogRecord { seq, record }]);
        Ok(seq)
    }

    async fn read_log(&self, log: &str, from_seq: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        validate_key(log)?;
        let s = self.state();
        let Some(records) = s.logs.get(log) else { return Ok(vec![]) };
        Ok(records.iter().enumerate().skip_while(|(i, _)| (*i as u64) < from_seq).map(|(i, r)| (i as u64, r.clone())).collect())
    }

    async fn watch_log(&self, log: &str) -> Result<LogWatch> {
        validate_key(log)?;
        Ok(self.inner.logs.subscribe(log))
    }

    async fn delete_log(&self, log: &str) -> Result<()> {
        validate_key(log)?;
        let mut s = self.state();
        s.attempt(log)?;
        s.logs.remove(log);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fail_policies() {
        let m = MemStore::new();
        let put = |k: &'static str| {
            let m = m.clone();
            async move { m.put(k, vec![1], Precondition::Any).await }
        };
        m.fail_writes(FailPolicy::Next(2));
        assert!(matches!(put("a").await, Err(StoreError::Io { .. })));
        assert!(put("a").await.is_err());
        assert_eq!(put("a").await.unwrap(), 1);
        m.fail_writes(FailPolicy::Prefix("jobs/".into()));
        assert!(put("jobs/x").await.is_err());
        assert!(m.append("jobs/x", vec![1]).await.is_err());
        assert_eq!(put("guests/x").await.unwrap(), 2);
        m.fail_writes(FailPolicy::After(1));
        assert!(put("b").await.is_ok());
        assert!(put("b").await.is_err());
        assert!(m.delete("b", Precondition::Any).await.is_err());
        assert!(m.get("b").await.unwrap().is_some(), "a failed delete changes nothing");
        m.fail_writes(FailPolicy::All);
        assert!(m.delete_log("l").await.is_err());
        m.fail_writes(FailPolicy::Never);
        assert_eq!(put("c").await.unwrap(), 4, "failed writes take no revision");
        assert_eq!(m.writes(), 11);
    }
}
