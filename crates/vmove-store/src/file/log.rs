//! Logs of the file store: framing, reading, and the writer thread (group commit). The
//! format and the locking rule are described in the parent module.
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use super::fs::{self, io, key_path, Flock, LOG_EXT};
use crate::key::MAX_VALUE_BYTES;
use crate::watch::LogHub;
use crate::{LogRecord, Result, StoreError};

/// First bytes of every log file.
const LOG_MAGIC: &[u8; 8] = b"vmvlog1\n";
const FRAME_HEAD: usize = 8;
/// Most requests the writer takes in one batch.
const MAX_BATCH: usize = 4096;
/// Log files the writer keeps open.
const MAX_OPEN: usize = 64;

/// A record's frame.
pub(crate) fn frame(record: &[u8], out: &mut Vec<u8>) {
    let len = (record.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(record);
    out.extend_from_slice(&len);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(record);
}

/// Calls `f` with each whole, intact record of `buf` (frames only); returns the length of
/// the valid part.
fn frames(buf: &[u8], mut f: impl FnMut(&[u8])) -> usize {
    let mut at = 0;
    while let Some(head) = buf.get(at..at + FRAME_HEAD) {
        let len_bytes = [head[0], head[1], head[2], head[3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(record) = buf.get(at + FRAME_HEAD..at + FRAME_HEAD + len).filter(|_| len <= MAX_VALUE_BYTES) else { break };
        let mut h = crc32fast::Hasher::new();
        h.update(&len_bytes);
        h.update(record);
        if h.finalize() != crc {
            break;
        }
        f(record);
        at += FRAME_HEAD + len;
    }
    at
}

/// The frames part of a log file's bytes, `None` for an empty log (no or partial magic).
fn body<'a>(log: &str, bytes: &'a [u8]) -> Result<Option<&'a [u8]>> {
    if bytes.len() < LOG_MAGIC.len() && LOG_MAGIC.starts_with(bytes) {
        return Ok(None);
    }
    match bytes.strip_prefix(LOG_MAGIC.as_slice()) {
        Some(b) => Ok(Some(b)),
        None => Err(StoreError::Corrupt { key: log.into(), reason: "not a vmove-store log file".into() }),
    }
}

/// Records `from_seq..` of a log file.
pub(crate) fn read(root: &Path, log: &str, from_seq: u64) -> Result<Vec<(u64, Vec<u8>)>> {
    let Some(bytes) = fs::read_opt(&key_path(root, log, LOG_EXT))? else { return Ok(vec![]) };
    let Some(body) = body(log, &bytes)? else { return Ok(vec![]) };
    let mut out = Vec::new();
    let mut seq = 0;
    frames(body, |r| {
        if seq >= from_seq {
            out.push((seq, r.to_vec()));
        }
        seq += 1;
    });
    Ok(out)
}

type Reply<T> = oneshot::Sender<Result<T>>;

/// Appends to one log waiting in a batch: each record and who to answer.
type Group = Vec<(Vec<u8>, Reply<u64>)>;

/// A request to the writer thread.
pub(crate) enum Request {
    /// Append a record, answer its sequence number.
    Append { log: String, record: Vec<u8>, reply: Reply<u64> },
    /// Delete a log.
    Delete { log: String, reply: Reply<()> },
}

/// An open log: where it ends and how many records it has, as of our last look.
struct Open {
    file: File,
    path: PathBuf,
    end: u64,
    count: u64,
}

/// The writer thread's state.
pub(crate) struct Writer {
    root: PathBuf,
    open: HashMap<String, Open>,
    /// The watches of this root's logs (fed after each durable append).
    hub: Arc<LogHub>,
}

/// A copy of an error, to answer every request of a failed group.
fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::Io { context, source } => {
            StoreError::io(context.clone(), std::io::Error::new(source.kind(), source.to_string()))
        }
        StoreError::Corrupt { key, reason } => StoreError::Corrupt { key: key.clone(), reason: reason.clone() },
        other => StoreError::io(other.to_string(), std::io::Error::other("log write failed")),
    }
}

/// Whether `file` is still the file at `path` (not deleted or replaced by another process).
fn same_file(file: &File, path: &Path) -> Result<bool> {
    let a = file.metadata().map_err(io(|| format!("stat {}", path.display())))?;
    Ok(match std::fs::metadata(path) {
        Ok(b) => a.nlink() > 0 && a.dev() == b.dev() && a.ino() == b.ino(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(StoreError::io(format!("stat {}", path.display()), e)),
    })
}

impl Writer {
    /// Starts the writer thread of a store root.
    pub(crate) fn spawn(root: PathBuf, hub: Arc<LogHub>) -> Result<mpsc::Sender<Request>> {
        let (tx, rx) = mpsc::channel();
        let mut w = Writer { root, open: HashMap::new(), hub };
        std::thread::Builder::new()
            .name("vmove-store-log".into())
            .spawn(move || w.run(rx))
            .map_err(|e| StoreError::io("start the log writer", e))?;
        Ok(tx)
    }

    fn run(&mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter().take(MAX_BATCH));
            self.batch(batch);
        }
    }

    /// Runs a batch: each log's appends as one group, a delete after the appends queued
    /// before it.
    fn batch(&mut self, batch: Vec<Request>) {
        let mut groups: Vec<(String, Group)> = Vec::new();
        for req in batch {
            match req {
                Request::Append { log, record, reply } => match groups.iter_mut().find(|(l, _)| *l == log) {
                    Some((_, g)) => g.push((record, reply)),
                    None => groups.push((log, vec![(record, reply)])),
                },
                Request::Delete { log, reply } => {
                    if let Some(i) = groups.iter().position(|(l, _)| *l == log) {
                        let (log, group) = groups.remove(i);
                        self.commit(&log, group);
                    }
                    let _ = reply.send(self.delete(&log));
                }
            }
        }
        for (log, group) in groups {
            self.commit(&log, group);
        }
    }

    /// Appends a group of records to a log and answers each.
    fn commit(&mut self, log: &str, group: Group) {
        let mut buf = Vec::with_capacity(group.iter().map(|(r, _)| r.len() + FRAME_HEAD).sum());
        group.iter().for_each(|(r, _)| frame(r, &mut buf));
        match self.append(log, &buf, group.len() as u64) {
            Ok(first) => {
                // Watchers hear of the records before any appender gets its answer: a
                // watch started after an append returned never receives that record.
                let (records, replies): (Vec<_>, Vec<_>) = group
                    .into_iter()
                    .enumerate()
                    .map(|(i, (record, reply))| (LogRecord { seq: first + i as u64, record }, reply))
                    .unzip();
                self.hub.publish(log, records);
                for (i, reply) in replies.into_iter().enumerate() {
                    let _ = reply.send(Ok(first + i as u64));
                }
            }
            Err(e) => {
                tracing::error!("cannot append to log {log}: {e}");
                for (_, reply) in group {
                    let _ = reply.send(Err(copy(&e)));
                }
            }
        }
    }

    /// The open log, opened (and created) if needed.
    fn open(&mut self, log: &str) -> Result<&mut Open> {
        if !self.open.contains_key(log) {
            if self.open.len() >= MAX_OPEN {
                self.open.clear();
            }
            let path = key_path(&self.root, log, LOG_EXT);
            if let Some(dir) = path.parent() {
                fs::create_dirs(&self.root, dir)?;
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io(|| format!("open {}", path.display())))?;
            // end = 0: scanned in full once locked.
            self.open.insert(log.into(), Open { file, path, end: 0, count: 0 });
        }
        self.open.get_mut(log).ok_or(StoreError::Closed)
    }

    /// Writes the frames of `n` records durably; returns the first one's sequence number.
    fn append(&mut self, log: &str, frames_buf: &[u8], n: u64) -> Result<u64> {
        let r = self.try_append(log, frames_buf, n);
        if r.is_err() {
            // What is on disk is unknown now: look again next time.
            self.open.remove(log);
        }
        r
    }

    fn try_append(&mut self, log: &str, frames_buf: &[u8], n: u64) -> Result<u64> {
        loop {
            let o = self.open(log)?;
            let _lock = Flock::exclusive(&o.file).map_err(io(|| format!("lock {}", o.path.display())))?;
            if !same_file(&o.file, &o.path)? {
                // Deleted (and maybe created again) by another process since we opened it.
                drop(_lock);
                self.open.remove(log);
                continue;
            }
            let path = o.path.clone();
            let err = || format!("append to {}", path.display());
            let len = o.file.metadata().map_err(io(err))?.len();
            if len != o.end {
                // First look, another process appended, or a torn tail: find the valid end.
                o.refresh(log, len)?;
            }
            let mut created = false;
            let mut out = Vec::with_capacity(LOG_MAGIC.len() + frames_buf.len());
            if o.end == 0 {
                out.extend_from_slice(LOG_MAGIC);
                created = true;
            }
            out.extend_from_slice(frames_buf);
            let written = o.file.write_all_at(&out, o.end).and_then(|()| o.file.sync_data());
            if let Err(e) = written {
                // Best effort: the records must not appear later as if they were written.
                let _ = o.file.set_len(o.end);
                return Err(StoreError::io(err(), e));
            }
            if created {
                if let Some(dir) = path.parent() {
                    fs::fsync_dir(dir)?;
                }
            }
            let first = o.count;
            o.end += out.len() as u64;
            o.count += n;
            return Ok(first);
        }
    }

    /// Deletes a log file, under its lock.
    fn delete(&mut self, log: &str) -> Result<()> {
        self.open.remove(log);
        let path = key_path(&self.root, log, LOG_EXT);
        loop {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(StoreError::io(format!("open {}", path.display()), e)),
            };
            let _lock = Flock::exclusive(&file).map_err(io(|| format!("lock {}", path.display())))?;
            if !same_file(&file, &path)? {
                continue;
            }
            std::fs::remove_file(&path).map_err(io(|| format!("delete {}", path.display())))?;
            if let Some(dir) = path.parent() {
                fs::fsync_dir(dir)?;
            }
            return Ok(());
        }
    }
}

impl Open {
    /// Finds the valid end and record count of a file `len` bytes long (we hold its lock),
    /// cutting off a torn tail.
    fn refresh(&mut self, log: &str, len: u64) -> Result<()> {
        let err = || format!("read {}", self.path.display());
        // Only the part after what we know, if the file grew.
        let (from, base) = if len > self.end && self.end > 0 { (self.end, self.count) } else { (0, 0) };
        let mut bytes = vec![0u8; (len - from) as usize];
        self.file.read_exact_at(&mut bytes, from).map_err(io(err))?;
        let (end, count) = if from == 0 {
            match body(log, &bytes)? {
                None => (0, 0),
                Some(b) => {
                    let mut count = 0;
                    let valid = frames(b, |_| count += 1);
                    ((LOG_MAGIC.len() + valid) as u64, count)
                }
            }
        } else {
            let mut count = base;
            let valid = frames(&bytes, |_| count += 1);
            (from + valid as u64, count)
        };
        if end < len {
            tracing::warn!("{}: dropping {} bytes of a torn record at the end", self.path.display(), len - end);
            self.file.set_len(end).map_err(io(|| format!("truncate {}", self.path.display())))?;
        }
        self.end = end;
        self.count = count;
        Ok(())
    }
}
