//! File-system helpers of the file store: key paths, durable writes, `flock`.
use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Result, StoreError};

/// Suffix of value files.
pub(crate) const VALUE_EXT: &str = ".json";
/// Suffix of log files.
pub(crate) const LOG_EXT: &str = ".log";
/// Suffix added to a directory name that would otherwise look like a file of ours.
const DIR_ESCAPE: &str = ".d";

pub(crate) fn io(context: impl FnOnce() -> String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::io(context(), source)
}

fn needs_escape(seg: &str) -> bool {
    seg.ends_with(VALUE_EXT) || seg.ends_with(LOG_EXT) || seg.ends_with(DIR_ESCAPE)
}

/// The directory name of a non-final key segment: the segment itself, unless it ends in
/// `.json`, `.log` or `.d`, which get `.d` appended (so that key `a` = `a.json` and key
/// `a.json/b` = `a.json.d/b.json` never collide; the mapping is one-to-one).
pub(crate) fn escape_dir(seg: &str) -> Cow<'_, str> {
    if needs_escape(seg) {
        Cow::Owned(format!("{seg}{DIR_ESCAPE}"))
    } else {
        Cow::Borrowed(seg)
    }
}

/// The key segment of a directory name, `None` for names `escape_dir` never makes.
pub(crate) fn unescape_dir(name: &str) -> Option<&str> {
    match name.strip_suffix(DIR_ESCAPE) {
        Some(seg) if needs_escape(seg) => Some(seg),
        Some(_) => None,
        None if needs_escape(name) => None,
        None => Some(name),
    }
}

/// The file of a (valid) key or log: `<root>/<dirs>/<last><ext>`.
pub(crate) fn key_path(root: &Path, key: &str, ext: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    let (dirs, last) = key.rsplit_once('/').unwrap_or(("", key));
    dirs.split('/').filter(|s| !s.is_empty()).for_each(|s| p.push(&*escape_dir(s)));
    p.push(format!("{last}{ext}"));
    p
}

/// The directory of the complete segments of a prefix (`jobs/host2` -> `<root>/jobs`),
/// and the key prefix it stands for (`jobs/`).
pub(crate) fn prefix_dir(root: &Path, prefix: &str) -> (PathBuf, String) {
    match prefix.rsplit_once('/') {
        Some((dirs, _)) => {
            let mut p = root.to_path_buf();
            dirs.split('/').for_each(|s| p.push(&*escape_dir(s)));
            (p, format!("{dirs}/"))
        }
        None => (root.to_path_buf(), String::new()),
    }
}

/// Makes a directory entry change (create, rename, unlink) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(|| format!("fsync {}", dir.display())))
}

/// Creates the missing directories from `root` down to `dir`, each one durably.
pub(crate) fn create_dirs(root: &Path, dir: &Path) -> Result<()> {
    let Ok(rel) = dir.strip_prefix(root) else { return Ok(()) };
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        let next = cur.join(c);
        match std::fs::create_dir(&next) {
            Ok(()) => fsync_dir(&cur)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::io(format!("create {}", next.display()), e)),
        }
        cur = next;
    }
    Ok(())
}

/// Whether a file name is one of our temporary files (`.<name>.tmp.<pid>.<n>`).
pub(crate) fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp.")
}

/// Replaces `path` atomically and durably: temp file in the same directory, `fsync`,
/// rename, `fsync` of the directory. Run under the root lock (temp files found at open
/// are leftovers of a crash and removed).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}.{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::io(format!("write {}", path.display()), e));
    }
    fsync_dir(dir)
}

/// Reads a whole file, `None` if it does not exist.
pub(crate) fn read_opt(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(format!("read {}", path.display()), e)),
    }
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor that the borrowed `file` keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// An exclusive `flock` on a file that stays open, released on drop. It holds a duplicate
/// descriptor (same open file description, so the same lock), leaving the file free to
/// use meanwhile.
pub(crate) struct Flock(File);

impl Flock {
    /// Waits for the lock.
    pub(crate) fn exclusive(file: &File) -> std::io::Result<Self> {
        let dup = file.try_clone()?;
        flock(&dup, libc::LOCK_EX).map(|()| Flock(dup))
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // Cannot fail on a valid descriptor; closing the last descriptor would release the
        // lock anyway.
        let _ = flock(&self.0, libc::LOCK_UN);
    }
}

/// The store-wide write lock: `flock` on `<root>/.lock`, on a descriptor of its own (so
/// that two handles in one process exclude each other as two processes do), released
/// when the guard drops and closes it.
pub(crate) struct RootLock {
    _file: File,
}

impl RootLock {
    /// Waits for the lock.
    pub(crate) fn acquire(root: &Path) -> Result<RootLock> {
        let path = root.join(".lock");
        let err = io(|| format!("lock {}", path.display()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path);
        let file = file.map_err(err)?;
        flock(&file, libc::LOCK_EX).map_err(io(|| format!("lock {}", path.display())))?;
        Ok(RootLock { _file: file })
    }
}
