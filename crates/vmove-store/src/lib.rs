//! The state store of the vmove agent, behind one trait.
//!
//! - [`StateStore`]: keys with revisions and compare-and-swap ([`Precondition`]), prefix
//!   listing, watches, and append-only logs (job events). Object-safe: use
//!   `Arc<dyn StateStore>`.
//! - [`FileStore`]: the embedded default, files in a directory (possibly on a pool shared
//!   by several hosts); see [`file`](mod@file) for the on-disk format and the locking rule.
//! - [`MemStore`]: the same in memory, with fault injection ([`FailPolicy`]), for tests.
//! - `EtcdStore` (feature `etcd`, on by default): the store on etcd, for fleets: keys
//!   under a namespace, TLS with client certificates, deadlines on every call.
//! - [`LeaseStore`], [`Lease`]: leases that expire, keys attached to them, a keep-alive
//!   task with a health to fence on ([`LeaseHealth`]), and [`wait_until_gone`]; on etcd and
//!   in [`MemStore`] (the file store has none: see [`lease`](mod@lease)).
//! - [`Record`], [`get_record`], [`put_record`]: typed, versioned JSON records.
//! - `conformance` (feature `conformance`): the suite every implementation must pass.
//! - `testing` (feature `etcd-test`): a throwaway etcd with TLS for tests.
//!
//! Keys are `/`-separated paths (rules in [`key`]). A write that returns an error may or
//! may not have happened: callers stop (fail-stop) rather than go on as if it had.
#![warn(missing_docs)]

pub mod counted;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
pub mod file;
pub mod key;
pub mod lease;
mod mem;
mod record;
mod store;
mod watch;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "etcd-test")]
pub mod testing;

pub use counted::{CountedStore, OpStats, StoreStats};
pub use error::{Result, StoreError};
#[cfg(feature = "etcd")]
pub use etcd::{EtcdOptions, EtcdStore, EtcdTls};
pub use file::FileStore;
pub use lease::{wait_until_gone, Lease, LeaseHealth, LeaseId, LeasePolicy, LeaseStore};
pub use key::{MAX_KEY_BYTES, MAX_SEGMENT_BYTES, MAX_VALUE_BYTES};
pub use mem::{FailPolicy, MemStore};
pub use record::{decode_record, encode_record, get_record, list_records, put_record, Record};
pub use store::{Entry, Precondition, StateStore, WatchEvent};
pub use watch::{LogRecord, LogWatch, Watch};
