//! Key rules, shared by every implementation.
//!
//! A key (and a log name) is a `/`-separated path of segments made of `[A-Za-z0-9._-]`:
//! no empty segment (so no leading, trailing or doubled `/`), no segment starting with `.`
//! (so no `.` or `..`, and the file store's own dot-files never collide with keys), at
//! most [`MAX_SEGMENT_BYTES`] bytes a segment (a segment is a file name in the file
//! store) and [`MAX_KEY_BYTES`] bytes in all. Keys and logs are separate namespaces: a log may have the
//! same name as a key.
//!
//! A prefix (for [`list`](crate::StateStore::list) and [`watch`](crate::StateStore::watch))
//! is a raw string prefix, as in etcd: `jobs/host2` matches `jobs/host2-3` and
//! `jobs/host2/x`; `jobs/` matches every key under `jobs`; the empty prefix matches
//! everything. It must itself be the start of some valid key.
use crate::{Result, StoreError};

/// Longest key or log name, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// Longest segment of a key, in bytes (file names are limited to 255 bytes; the file
/// store adds a suffix, and temporary files a prefix and a suffix).
pub const MAX_SEGMENT_BYTES: usize = 200;

/// Largest value and largest log record, in bytes (below etcd's default request limit of
/// 1.5 MiB, so that every implementation accepts the same values).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

fn allowed(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')
}

fn invalid(key: &str, reason: &'static str) -> StoreError {
    StoreError::InvalidKey { key: key.into(), reason }
}

fn check_segment(key: &str, seg: &str, partial: bool) -> Result<()> {
    if seg.is_empty() && !partial {
        return Err(invalid(key, "empty segment"));
    }
    if seg.len() > MAX_SEGMENT_BYTES {
        return Err(invalid(key, "a segment is longer than 200 bytes"));
    }
    if seg.starts_with('.') {
        return Err(invalid(key, "a segment starts with '.'"));
    }
    if !seg.bytes().all(allowed) {
        return Err(invalid(key, "only A-Z a-z 0-9 . _ - and '/' between segments"));
    }
    Ok(())
}

/// Checks a key or log name.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(invalid(key, "empty key"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(key, "longer than 512 bytes"));
    }
    key.split('/').try_for_each(|s| check_segment(key, s, false))
}

/// Checks a prefix: the start of a valid key (possibly empty, possibly ending in `/`).
pub fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(invalid(prefix, "longer than 512 bytes"));
    }
    let segs: Vec<&str> = prefix.split('/').collect();
    let last = segs.len() - 1;
    segs.iter().enumerate().try_for_each(|(i, s)| check_segment(prefix, s, i == last))
}

/// Checks a value's (or log record's) size.
pub fn check_size(key: &str, size: usize) -> Result<()> {
    if size > MAX_VALUE_BYTES {
        return Err(StoreError::TooLarge { key: key.into(), size, limit: MAX_VALUE_BYTES });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for k in ["a", "jobs/host2-3", "A.b_c-d/e", "x.json/y", "a/b/c/d", "v1.2"] {
            assert!(validate_key(k).is_ok(), "{k}");
        }
        let long = vec!["a".repeat(200); 3].join("/") + "/aaaaaaaaa";
        let long_segment = "a".repeat(201);
        for k in ["", "/a", "a/", "a//b", ".a", "a/.b", "a/..", "a b", "a/é", "a\\b", "a:b", &long, &long_segment] {
            assert!(matches!(validate_key(k), Err(StoreError::InvalidKey { .. })), "{k:?}");
        }
        let max = ["a".repeat(200), "a".repeat(200), "a".repeat(110)].join("/");
        assert_eq!(max.len(), MAX_KEY_BYTES);
        assert!(validate_key(&max).is_ok());
        assert!(validate_key(&"a".repeat(200)).is_ok());
    }

    #[test]
    fn prefixes() {
        for p in ["", "jobs", "jobs/", "jobs/host2", "a/b/"] {
            assert!(validate_prefix(p).is_ok(), "{p}");
        }
        for p in ["/", "/a", "a//", "a/.", ".", "a b"] {
            assert!(validate_prefix(p).is_err(), "{p:?}");
        }
    }
}
