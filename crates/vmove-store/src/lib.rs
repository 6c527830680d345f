//! The state store of the vmove agent, behind one trait.
//!
//! - [`StateStore`]: keys with revisions and compare-and-swap ([`Precondition`]), prefix
//!   listing, watches, and append-only logs (job events). Object-safe: use
//!   `Arc<dyn StateStore>`.
//! - [`FileStore`]: the embedded default, files in a directory (possibly on a pool shared
//!   by several hosts); see [`file`](mod@file) for the on-disk format and the locking rule.
//! - [`MemStore`]: the same in memory, with fault injection ([`FailPolicy`]), for tests.
//! - [`Record`], [`get_record`], [`put_record`]: typed, versioned JSON records.
//! - `conformance` (feature `conformance`): the suite every implementation must pass.
//!
//! Keys are `/`-separated paths (rules in [`key`]). A write that returns an error may or
//! may not have happened: callers stop (fail-stop) rather than go on as if it had.
#![warn(missing_docs)]

mod error;
pub mod file;
pub mod key;
mod mem;
mod record;
mod store;
mod watch;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{Result, StoreError};
pub use file::FileStore;
pub use key::{MAX_KEY_BYTES, MAX_SEGMENT_BYTES, MAX_VALUE_BYTES};
pub use mem::{FailPolicy, MemStore};
pub use record::{decode_record, encode_record, get_record, list_records, put_record, Record};
pub use store::{Entry, Precondition, StateStore, WatchEvent};
pub use watch::Watch;
