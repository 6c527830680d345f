//! [`FileStore`]: the embedded store, files in a directory.
//!
//! # Layout
//!
//! ```text
//! <root>/.lock                  flock'ed by every mutation of a key (never written)
//! <root>/.revision              the store revision counter, 20 decimal digits and '\n'
//! <root>/guests/web1.json       key guests/web1
//! <root>/jobs/host2-3.json      key jobs/host2-3
//! <root>/jobs/host2-3.log       log jobs/host2-3 (logs and keys are separate namespaces)
//! <root>/x.json.d/y.json        key x.json/y (a directory whose name ends in .json, .log
//!                               or .d gets .d appended, so paths never collide)
//! <root>/jobs/.host2-3.json.tmp.<pid>.<n>   a write in progress (or a crash's leftover)
//! ```
//!
//! A value file is one header line, then the value's bytes as they are (for records, one
//! line of JSON):
//!
//! ```text
//! vmove-store 1 revision=42 length=187 crc32=1c291ca3
//! {"kind":"migration","version":1,"data":{...}}
//! ```
//!
//! A file whose length or checksum does not match its header is reported as
//! [`StoreError::Corrupt`] naming the key.
//!
//! A log file starts with the 8-byte magic `vmvlog1\n`, then holds one frame per record:
//! `length: u32 LE | crc32: u32 LE | record`, the CRC-32 covering the length bytes and the
//! record. Sequence numbers are not stored: record `n` is the `n`th frame. A frame cut
//! short or with a bad checksum ends the log (a crash during an append, whose caller got
//! no answer): readers ignore it, the writer cuts it off before its next append. A file
//! shorter than the magic is an empty log; another magic is `Corrupt`.
//!
//! # Writes and locking
//!
//! A `put` or `delete` takes an exclusive `flock` on `<root>/.lock` (on a descriptor of its
//! own, so handles in one process exclude each other like processes do), checks the
//! precondition against the file, takes the next revision from `.revision`, and replaces
//! the value file atomically: temp file in the same directory, `fsync`, `rename`, `fsync`
//! of the directory. A delete unlinks the file and `fsync`s the directory. Several
//! processes (hosts sharing a pool) may use one root: compare-and-swap is atomic across
//! them. Reads take no lock (a rename is atomic: a reader sees the old or the new file).
//!
//! # Revisions
//!
//! `.revision` is read, incremented and written back in place under the lock. A put does
//! not `fsync` it: its value file, written durably, carries the revision. A delete does
//! (`fdatasync` before the unlink), since after it no file remembers the revision. At
//! open, under the lock, the store removes leftover temp files and raises the counter to
//! the highest revision found in any value file's header, so a counter update lost in a
//! crash never makes a revision come back. Cost: a put is two `fsync`s (file, directory),
//! as before; a delete two; open reads the header of every value file.
//!
//! # Logs
//!
//! Appends go to one writer thread per store (per root and process), which takes every
//! request queued while it was busy and writes each log's share with one `write` and one
//! `fdatasync` (group commit: a burst of appends to a log costs one `fsync`; appends to
//! different logs cost one each). It holds an exclusive `flock` on the log file while it
//! writes, and checks that the file is still the one at the path (a delete by another
//! process) and where it ends (appends by another process) once it has the lock. A new
//! log file also gets its directory `fsync`ed. Reads take no lock and read the whole file
//! (logs are meant for job events: thousands of records, not millions).
//!
//! On NFS, `flock` is carried out as a POSIX lock on the server (Linux clients): locking
//! works across hosts.
//!
//! # Watches
//!
//! A watch sees the changes made through the handles of this process that share the root
//! (every [`FileStore::open`] of the same directory), not those of other processes.
mod fs;
mod kv;
mod log;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::key::{check_size, validate_key, validate_prefix};
use crate::watch::{LogHub, WatchHub};
use crate::{Entry, LogWatch, Precondition, Result, StateStore, StoreError, Watch};

struct Shared {
    root: PathBuf,
    hub: WatchHub,
    logs: Arc<LogHub>,
    log: mpsc::Sender<log::Request>,
}

/// The embedded store, rooted at a directory. Clones share the same handle.
#[derive(Clone)]
pub struct FileStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore").field("root", &self.shared.root).finish()
    }
}

/// The handles of this process, by root, so that their watches see each other's changes.
fn registry() -> std::sync::MutexGuard<'static, HashMap<PathBuf, Weak<Shared>>> {
    static R: OnceLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> = OnceLock::new();
    R.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

impl FileStore {
    /// Opens (creating it if needed) the store at `root`: cleans up after a crash and
    /// recovers the revision counter. Blocking (reads every value file's header): call it
    /// at startup or on a blocking thread.
    ///
    /// Handles of one process on the same root share their watches and log writer.
    pub fn open(root: impl AsRef<Path>) -> Result<FileStore> {
        let root = Self::prepare(root.as_ref())?;
        let mut reg = registry();
        reg.retain(|_, w| w.strong_count() > 0);
        if let Some(shared) = reg.get(&root).and_then(Weak::upgrade) {
            return Ok(FileStore { shared });
        }
        let store = Self::start(root.clone())?;
        reg.insert(root, Arc::downgrade(&store.shared));
        Ok(store)
    }

    /// Opens a handle that shares nothing with the others of this process: it behaves as
    /// another process would (its own watches and log writer; locks exclude the other
    /// handles). For tests.
    pub fn open_unshared(root: impl AsRef<Path>) -> Result<FileStore> {
        Self::start(Self::prepare(root.as_ref())?)
    }

    fn prepare(root: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(root).map_err(fs::io(|| format!("create {}", root.display())))?;
        root.canonicalize().map_err(fs::io(|| format!("open {}", root.display())))
    }

    fn start(root: PathBuf) -> Result<FileStore> {
        kv::recover(&root)?;
        let logs = Arc::new(LogHub::default());
        let tx = log::Writer::spawn(root.clone(), logs.clone())?;
        Ok(FileStore { shared: Arc::new(Shared { root, hub: WatchHub::default(), logs, log: tx }) })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// The file of a key (for operators and tests).
    pub fn value_path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(fs::key_path(&self.shared.root, key, fs::VALUE_EXT))
    }

    /// The file of a log (for operators and tests).
    pub fn log_path(&self, log: &str) -> Result<PathBuf> {
        validate_key(log)?;
        Ok(fs::key_path(&self.shared.root, log, fs::LOG_EXT))
    }

    /// Runs blocking file work on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Shared) -> Result<T> + Send + 'static) -> Result<T> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::io("store task failed", std::io::Error::other(e.to_string())))?
    }

    /// Sends a request to the log writer and waits for its answer.
    async fn to_writer<T>(&self, req: impl FnOnce(oneshot::Sender<Result<T>>) -> log::Request) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.shared.log.send(req(tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

#[async_trait]
impl StateStore for FileStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        validate_key(key)?;
        let key = key.to_string();
        self.blocking(move |s| kv::get(&s.root, &key)).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, cond: Precondition) -> Result<u64> {
        validate_key(key)?;
        check_size(key, value.len())?;
        let key = key.to_string();
        self.blocking(move |s| kv::put(&s.root, &s.hub, &key, value, cond)).await
    }

    async fn delete(&self, key: &str, cond: Precondition) -> Result<bool> {
        validate_key(key)?;
        let key = key.to_string();
        self.blocking(move |s| kv::delete(&s.root, &s.hub, &key, cond)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        validate_prefix(prefix)?;
        let prefix = prefix.to_string();
        self.blocking(move |s| kv::list(&s.root, &prefix)).await
    }

    async fn watch(&self, prefix: &str) -> Result<Watch> {
        validate_prefix(prefix)?;
        Ok(self.shared.hub.subscribe(prefix))
    }

    async fn append(&self, log: &str, record: Vec<u8>) -> Result<u64> {
        validate_key(log)?;
        check_size(log, record.len())?;
        let log = log.to_string();
        self.to_writer(|reply| log::Request::Append { log, record, reply }).await
    }

    async fn read_log(&self, log: &str, from_seq: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        validate_key(log)?;
        let log = log.to_string();
        self.blocking(move |s| log::read(&s.root, &log, from_seq)).await
    }

    async fn watch_log(&self, log: &str) -> Result<LogWatch> {
        validate_key(log)?;
        Ok(self.shared.logs.subscribe(log))
    }

    async fn delete_log(&self, log: &str) -> Result<()> {
        validate_key(log)?;
        let log = log.to_string();
        self.to_writer(|reply| log::Request::Delete { log, reply }).await
    }
}
