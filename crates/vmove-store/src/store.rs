//! The trait and its value types.
use async_trait::async_trait;

use crate::{LogWatch, Result, Watch};

/// A stored key with its value and revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The store revision of the key's last modification (> 0).
    pub revision: u64,
}

/// The condition a write needs (compare-and-swap on the key's modification revision, as
/// an etcd transaction comparing `mod_revision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precondition {
    /// Whatever the key holds, or if it does not exist.
    Any,
    /// Only if the key does not exist.
    Absent,
    /// Only if the key exists at exactly this revision.
    Revision(u64),
}

impl Precondition {
    /// Whether a key at `actual` (`None`: absent) satisfies this condition.
    pub fn holds(self, actual: Option<u64>) -> bool {
        match self {
            Precondition::Any => true,
            Precondition::Absent => actual.is_none(),
            Precondition::Revision(r) => actual == Some(r),
        }
    }

    /// `Ok` if the condition holds, else the [`Conflict`](crate::StoreError::Conflict).
    pub fn check(self, key: &str, actual: Option<u64>) -> Result<()> {
        if self.holds(actual) {
            Ok(())
        } else {
            Err(crate::StoreError::Conflict { key: key.into(), expected: self, actual })
        }
    }
}

impl std::fmt::Display for Precondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Precondition::Any => f.write_str("any revision"),
            Precondition::Absent => f.write_str("no key"),
            Precondition::Revision(r) => write!(f, "revision {r}"),
        }
    }
}

/// A change seen by a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or changed.
    Put(Entry),
    /// A key was deleted, at this store revision.
    Delete {
        /// The key.
        key: String,
        /// The revision of the deletion.
        revision: u64,
    },
}

impl WatchEvent {
    /// The key changed.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(e) => &e.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Put(e) => e.revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// The state store: keys with revisions and compare-and-swap, watches, and append-only
/// logs.
///
/// Rules every implementation keeps (checked by the conformance suite):
/// - keys, log names and prefixes follow [`crate::key`]; breaking them is
///   [`InvalidKey`](crate::StoreError::InvalidKey);
/// - every successful `put`, and every `delete` of an existing key, takes a new store
///   revision, greater than any revision handed out before, also across restarts and
///   deletes (a key deleted and created again never gets an old revision back, so a
///   compare-and-swap cannot succeed on a stale read);
/// - a failed precondition changes nothing and is
///   [`Conflict`](crate::StoreError::Conflict);
/// - a write that returns `Ok` is durable; one that returns `Err` must be treated as
///   possibly not done (fail-stop); one whose future is dropped may still happen;
/// - methods never block the async runtime's worker threads.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The key's value and revision, `None` if it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Entry>>;

    /// Writes a value if `cond` holds; returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, cond: Precondition) -> Result<u64>;

    /// Deletes a key if `cond` holds; returns whether it existed. Deleting a missing key
    /// with [`Precondition::Any`] or [`Precondition::Absent`] is `Ok(false)`.
    async fn delete(&self, key: &str, cond: Precondition) -> Result<bool>;

    /// Every key starting with `prefix` (a raw string prefix, see [`crate::key`]), sorted
    /// by key.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>>;

    /// The changes to keys starting with `prefix` made after this call, in revision order.
    /// What a watch sees depends on the implementation (the file store sees changes made
    /// through this process's handles only).
    async fn watch(&self, prefix: &str) -> Result<Watch>;

    /// Appends a record to a log (created on first append); returns its sequence number,
    /// 0 for a log's first record. Durable when it returns.
    async fn append(&self, log: &str, record: Vec<u8>) -> Result<u64>;

    /// A log's records from sequence number `from_seq` on (empty if the log does not exist
    /// or has fewer records).
    async fn read_log(&self, log: &str, from_seq: u64) -> Result<Vec<(u64, Vec<u8>)>>;

    /// The records appended to `log` after this call, in sequence order. What it sees
    /// depends on the implementation, as for [`StateStore::watch`] (the file store sees
    /// appends made through this process's handles only). A consumer that must not miss a
    /// record starts the watch first, then reads the log ([`StateStore::read_log`]) up to
    /// the end, then takes records from the watch, reading the log again where a record's
    /// sequence number is beyond the one it expects next.
    async fn watch_log(&self, log: &str) -> Result<LogWatch>;

    /// Deletes a log; the next append to the same name starts again at 0. Deleting a
    /// missing log is `Ok`.
    async fn delete_log(&self, log: &str) -> Result<()>;
}
