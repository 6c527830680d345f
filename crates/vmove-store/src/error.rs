//! The one error type of the store.
use crate::Precondition;

/// Results of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Why a store operation failed.
///
/// Every failed write is reported: a caller that cannot record its state must stop
/// (fail-stop), never go on as if the write had happened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The key (or log name, or prefix) breaks the key rules (see [`crate::key`]).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A compare-and-swap failed: the key's revision is not what the caller expected.
    #[error("conflict on {key}: expected {expected}, found {}", found(*.actual))]
    Conflict {
        /// The key.
        key: String,
        /// The precondition that did not hold.
        expected: Precondition,
        /// The key's revision now, `None` if it does not exist.
        actual: Option<u64>,
    },
    /// A value or log record larger than the store accepts.
    #[error("{key}: {size} bytes is more than the limit of {limit}")]
    TooLarge {
        /// The key or log.
        key: String,
        /// Its size.
        size: usize,
        /// The limit ([`crate::MAX_VALUE_BYTES`]).
        limit: usize,
    },
    /// Reading or writing the underlying storage failed (or a fault was injected).
    #[error("{context}")]
    Io {
        /// What the store was doing, with the path or key.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Stored data is damaged (truncated value file, bad header, bad checksum).
    #[error("{key}: damaged: {reason}")]
    Corrupt {
        /// The key, log or internal file.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A record of another kind is stored under the key.
    #[error("{key}: holds a {found:?} record, not a {expected:?}")]
    Kind {
        /// The key.
        key: String,
        /// The kind the caller asked for.
        expected: &'static str,
        /// The kind stored.
        found: String,
    },
    /// A record whose version this code does not read (newer, or older without an upgrade).
    #[error("{key}: {kind} record version {found} is not supported (this build reads version {supported})")]
    Version {
        /// The key.
        key: String,
        /// The record kind.
        kind: &'static str,
        /// The version stored.
        found: u32,
        /// The version this code writes.
        supported: u32,
    },
    /// A value is not the JSON the caller expects.
    #[error("{key}: cannot decode the record")]
    Decode {
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A record could not be serialised.
    #[error("{key}: cannot encode the record")]
    Encode {
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A failure of a remote backend (e.g. an etcd client error).
    #[error("{context}")]
    Backend {
        /// What the store was doing.
        context: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A remote store could not be reached or did not answer in time (connection refused
    /// or lost, no leader, a call's deadline passed). Like every failed write, the write may
    /// or may not have happened.
    #[error("{context}: the store is unreachable")]
    Unreachable {
        /// What the store was doing.
        context: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The store's members answer, but a majority of them do and none has a leader: no
    /// quorum exists anywhere, nothing can be read linearizably or written until it is back
    /// (no lease can expire meanwhile either). Retry later, as for `Unreachable`.
    #[error("{context}: etcd has lost its quorum (a majority of its members answer, none has a leader)")]
    NoQuorum {
        /// What the store was doing.
        context: String,
    },
    /// The lease is gone: it expired or was revoked, and the keys attached to it with it.
    #[error("lease {lease:x} is gone (expired or revoked)")]
    LeaseLost {
        /// The lease.
        lease: i64,
    },
    /// The store is shut down (its writer thread is gone).
    #[error("the store is closed")]
    Closed,
}

fn found(actual: Option<u64>) -> String {
    match actual {
        Some(r) => format!("revision {r}"),
        None => "no key".into(),
    }
}

impl StoreError {
    /// An I/O error with its context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }

    /// Whether this is a failed compare-and-swap (retry after re-reading).
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// Whether the store could not be reached or did not answer in time (retry later;
    /// a write may or may not have happened).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StoreError::Unreachable { .. } | StoreError::NoQuorum { .. })
    }

    /// A copy of this error for another waiter of the same failed operation (the source
    /// is kept as text, the variant and its fields as they are).
    pub fn duplicate(&self) -> StoreError {
        let text = |e: &dyn std::error::Error| -> Box<dyn std::error::Error + Send + Sync> { e.to_string().into() };
        match self {
            StoreError::InvalidKey { key, reason } => StoreError::InvalidKey { key: key.clone(), reason },
            StoreError::Conflict { key, expected, actual } => {
                StoreError::Conflict { key: key.clone(), expected: *expected, actual: *actual }
            }
            StoreError::TooLarge { key, size, limit } => StoreError::TooLarge { key: key.clone(), size: *size, limit: *limit },
            StoreError::Io { context, source } => {
                StoreError::io(context.clone(), std::io::Error::new(source.kind(), source.to_string()))
            }
            StoreError::Corrupt { key, reason } => StoreError::Corrupt { key: key.clone(), reason: reason.clone() },
            StoreError::Unreachable { context, source } => {
                StoreError::Unreachable { context: context.clone(), source: text(source.as_ref()) }
            }
            StoreError::NoQuorum { context } => StoreError::NoQuorum { context: context.clone() },
            StoreError::LeaseLost { lease } => StoreError::LeaseLost { lease: *lease },
            StoreError::Backend { context, source } => StoreError::Backend { context: context.clone(), source: text(source.as_ref()) },
            StoreError::Closed => StoreError::Closed,
            other => StoreError::Backend { context: other.to_string(), source: text(other) },
        }
    }
}
