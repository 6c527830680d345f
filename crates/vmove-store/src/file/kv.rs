//! Keys of the file store: value files, the revision counter, recovery at open.
//!
//! Blocking functions, run on tokio's blocking pool by [`super::FileStore`].
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::fs::{self, io, key_path, RootLock, VALUE_EXT};
use crate::key::validate_key;
use crate::watch::WatchHub;
use crate::{Entry, Precondition, Result, StoreError, WatchEvent};

/// First word of a value file's header line.
const MAGIC: &str = "vmove-store";
/// Format version of value files.
const FORMAT: u32 = 1;
/// The revision counter file.
pub(crate) const REVISION_FILE: &str = ".revision";

/// A value file's bytes: the header line, then the value as is.
pub(crate) fn encode_value(revision: u64, value: &[u8]) -> Vec<u8> {
    let crc = crc32fast::hash(value);
    let mut out = format!("{MAGIC} {FORMAT} revision={revision} length={} crc32={crc:08x}\n", value.len()).into_bytes();
    out.extend_from_slice(value);
    out
}

struct Header {
    revision: u64,
    length: usize,
    crc: u32,
}

fn parse_header(line: &[u8]) -> std::result::Result<Header, String> {
    let line = std::str::from_utf8(line).map_err(|_| "header is not text".to_string())?;
    let mut words = line.split(' ');
    if words.next() != Some(MAGIC) {
        return Err("not a vmove-store value file".into());
    }
    match words.next().map(str::parse::<u32>) {
        Some(Ok(FORMAT)) => {}
        Some(Ok(v)) => return Err(format!("value file format {v} is not supported")),
        _ => return Err("bad header".into()),
    }
    let mut field = |name: &str| {
        words.next().and_then(|w| w.strip_prefix(name)).and_then(|w| w.strip_prefix('=')).ok_or(format!("no {name} in header"))
    };
    let revision = field("revision")?.parse().map_err(|_| "bad revision")?;
    let length = field("length")?.parse().map_err(|_| "bad length")?;
    let crc = u32::from_str_radix(field("crc32")?, 16).map_err(|_| "bad crc32")?;
    Ok(Header { revision, length, crc })
}

fn split_header(bytes: &[u8]) -> std::result::Result<(Header, &[u8]), String> {
    let nl = bytes.iter().take(256).position(|&b| b == b'\n').ok_or("no header line (truncated file?)")?;
    Ok((parse_header(&bytes[..nl])?, &bytes[nl + 1..]))
}

/// A value file's revision and value, checking length and checksum.
pub(crate) fn decode_value(key: &str, bytes: &[u8]) -> Result<(u64, Vec<u8>)> {
    let corrupt = |reason: String| StoreError::Corrupt { key: key.into(), reason };
    let (h, value) = split_header(bytes).map_err(corrupt)?;
    if value.len() != h.length {
        return Err(corrupt(format!("{} bytes of value instead of {} (truncated file?)", value.len(), h.length)));
    }
    if crc32fast::hash(value) != h.crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    if h.revision == 0 {
        return Err(corrupt("revision 0".into()));
    }
    Ok((h.revision, value.to_vec()))
}

/// The entry of a key, reading its file.
pub(crate) fn get(root: &Path, key: &str) -> Result<Option<Entry>> {
    let Some(bytes) = fs::read_opt(&key_path(root, key, VALUE_EXT))? else { return Ok(None) };
    let (revision, value) = decode_value(key, &bytes)?;
    Ok(Some(Entry { key: key.into(), value, revision }))
}

/// The current revision of a key for a precondition; a damaged file only matters if the
/// precondition needs its revision ([`Precondition::Any`] overwrites or deletes it).
fn current(root: &Path, key: &str, cond: Precondition) -> Result<Option<u64>> {
    match get(root, key) {
        Ok(e) => Ok(e.map(|e| e.revision)),
        Err(StoreError::Corrupt { .. }) if cond == Precondition::Any => Ok(Some(0)),
        Err(e) => Err(e),
    }
}

fn parse_counter(bytes: &[u8]) -> Result<u64> {
    std::str::from_utf8(bytes).ok().and_then(|t| t.trim().parse().ok()).ok_or_else(|| StoreError::Corrupt {
        key: REVISION_FILE.into(),
        reason: "not a number; write a revision at least as high as any in the store".into(),
    })
}

/// Takes the next revision: reads `<root>/.revision`, writes it back incremented, in place.
/// `durable`: also `fdatasync` it (deletes: nothing else records their revision).
fn next_revision(root: &Path, durable: bool) -> Result<u64> {
    let path = root.join(REVISION_FILE);
    let err = || format!("revision counter {}", path.display());
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).map_err(io(err))?;
    let mut buf = [0u8; 32];
    let n = f.read_at(&mut buf, 0).map_err(io(err))?;
    let next = parse_counter(&buf[..n])? + 1;
    f.write_all_at(format!("{next:020}\n").as_bytes(), 0).map_err(io(err))?;
    if durable {
        f.sync_data().map_err(io(err))?;
    }
    Ok(next)
}

/// Writes a key if `cond` holds, under the root lock; publishes the change.
pub(crate) fn put(root: &Path, hub: &WatchHub, key: &str, value: Vec<u8>, cond: Precondition) -> Result<u64> {
    let _lock = RootLock::acquire(root)?;
    let actual = current(root, key, cond)?;
    cond.check(key, actual)?;
    // Not synced: the value file, written durably below, records this revision, and the
    // counter is recovered from the value files at open.
    let revision = next_revision(root, false)?;
    let path = key_path(root, key, VALUE_EXT);
    if let Some(dir) = path.parent() {
        fs::create_dirs(root, dir)?;
    }
    fs::write_atomic(&path, &encode_value(revision, &value))?;
    hub.publish(&WatchEvent::Put(Entry { key: key.into(), value, revision }));
    Ok(revision)
}

/// Deletes a key if `cond` holds, under the root lock; publishes the change.
pub(crate) fn delete(root: &Path, hub: &WatchHub, key: &str, cond: Precondition) -> Result<bool> {
    let _lock = RootLock::acquire(root)?;
    let actual = current(root, key, cond)?;
    cond.check(key, actual)?;
    if actual.is_none() {
        return Ok(false);
    }
    // Synced before the unlink: after it no file remembers how far revisions went.
    let revision = next_revision(root, true)?;
    let path = key_path(root, key, VALUE_EXT);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(format!("delete {}", path.display()), e)),
    }
    if let Some(dir) = path.parent() {
        fs::fsync_dir(dir)?;
    }
    hub.publish(&WatchEvent::Delete { key: key.into(), revision });
    Ok(true)
}

/// What a directory holds for listing and recovery.
enum Item {
    Dir(String),
    Value(String),
    Temp,
    Other,
}

fn classify(name: &str, is_dir: bool) -> Item {
    if name.starts_with('.') {
        return if fs::is_temp(name) && !is_dir { Item::Temp } else { Item::Other };
    }
    if is_dir {
        return fs::unescape_dir(name).map_or(Item::Other, |s| Item::Dir(s.into()));
    }
    name.strip_suffix(VALUE_EXT).map_or(Item::Other, |s| Item::Value(s.into()))
}

/// Calls `f(path, name, item)` for each entry of `dir` (none if it does not exist).
fn each_entry(dir: &Path, mut f: impl FnMut(&Path, Item) -> Result<()>) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(format!("list {}", dir.display()), e)),
    };
    for e in rd {
        let e = e.map_err(io(|| format!("list {}", dir.display())))?;
        let Ok(name) = e.file_name().into_string() else { continue };
        let is_dir = e.file_type().map_err(io(|| format!("list {}", dir.display())))?.is_dir();
        f(&e.path(), classify(&name, is_dir))?;
    }
    Ok(())
}

/// The entries whose key starts with `prefix`, sorted by key. Each entry is read on its
/// own (no snapshot across keys); keys deleted meanwhile are left out.
pub(crate) fn list(root: &Path, prefix: &str) -> Result<Vec<Entry>> {
    fn walk(dir: &Path, base: &str, prefix: &str, out: &mut Vec<Entry>) -> Result<()> {
        each_entry(dir, |path, item| {
            match item {
                Item::Dir(seg) => {
                    let sub = format!("{base}{seg}/");
                    if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                        walk(path, &sub, prefix, out)?;
                    }
                }
                Item::Value(seg) => {
                    let key = format!("{base}{seg}");
                    if key.starts_with(prefix) && validate_key(&key).is_ok() {
                        if let Some(bytes) = fs::read_opt(path)? {
                            let (revision, value) = decode_value(&key, &bytes)?;
                            out.push(Entry { key, value, revision });
                        }
                    }
                }
                Item::Temp | Item::Other => {}
            }
            Ok(())
        })
    }
    let (dir, base) = fs::prefix_dir(root, prefix);
    let mut out = Vec::new();
    walk(&dir, &base, prefix, &mut out)?;
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// At open, under the root lock: removes leftover temp files and makes the revision
/// counter at least the highest revision of any value file (puts do not sync the
/// counter). Costs one read of each value file's header.
pub(crate) fn recover(root: &Path) -> Result<()> {
    fn walk(dir: &Path, max: &mut u64) -> Result<()> {
        each_entry(dir, |path, item| {
            match item {
                Item::Dir(_) => walk(path, max)?,
                Item::Value(_) => {
                    let mut buf = [0u8; 256];
                    let f = std::fs::File::open(path).map_err(io(|| format!("read {}", path.display())))?;
                    let n = f.read_at(&mut buf, 0).map_err(io(|| format!("read {}", path.display())))?;
                    match split_header(&buf[..n]) {
                        Ok((h, _)) => *max = (*max).max(h.revision),
                        Err(e) => tracing::warn!("{}: damaged header ({e}); its revision is not counted", path.display()),
                    }
                }
                Item::Temp => {
                    tracing::info!("removing {} (left over by a crash)", path.display());
                    std::fs::remove_file(path).map_err(io(|| format!("remove {}", path.display())))?;
                }
                Item::Other => {}
            }
            Ok(())
        })
    }
    let _lock = RootLock::acquire(root)?;
    let mut max = 0;
    walk(root, &mut max)?;
    let path = root.join(REVISION_FILE);
    let stored = fs::read_opt(&path)?.map(|b| parse_counter(&b)).transpose()?;
    if stored.is_none_or(|s| s < max) {
        fs::write_atomic(&path, format!("{max:020}\n").as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_format() {
        let b = encode_value(42, b"{\"a\":1}");
        assert_eq!(std::str::from_utf8(&b).unwrap(), "vmove-store 1 revision=42 length=7 crc32=561bacaf\n{\"a\":1}");
        assert_eq!(decode_value("k", &b).unwrap(), (42, b"{\"a\":1}".to_vec()));
        for cut in [0, 10, b.len() - 1] {
            assert!(matches!(decode_value("k", &b[..cut]), Err(StoreError::Corrupt { key, .. }) if key == "k"), "{cut}");
        }
        let mut flipped = b.clone();
        *flipped.last_mut().unwrap() = b'x';
        assert!(matches!(decode_value("k", &flipped), Err(StoreError::Corrupt { .. })));
        assert_eq!(decode_value("k", &encode_value(1, b"")).unwrap(), (1, vec![]));
    }
}
