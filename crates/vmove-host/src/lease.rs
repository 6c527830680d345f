//! Exclusive volume leases, kept as files on the shared storage pool itself.
//!
//! `<pool>/.vmove-leases/<volume>.lease` names the one host allowed to run QEMU on the
//! volume. A lease is taken before a guest starts and before a migration target attaches
//! the volume; it is released when the source detaches it. Forced offline migration takes
//! a lease over from a dead host and bumps its epoch: when that host comes back, its agent
//! sees that the lease is someone else's and never starts the guest there again.
//! Changes are serialised by an `flock` on the pool's lease directory.
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmove_model::now_ms;

/// Why a lease could not be read, taken, handed over or released.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The lease directory or a lease file could not be used.
    #[error("{what}")]
    Io {
        /// What was done (`read lease of v.img`, `lock the lease directory`, ...).
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A lease file does not parse.
    #[error("lease of {volume} is damaged")]
    Damaged {
        /// The volume.
        volume: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Another host holds the lease.
    #[error("volume {volume} is leased to {holder} (guest {guest}); it cannot be used on {host}")]
    Taken {
        /// The volume.
        volume: String,
        /// Who holds it.
        holder: String,
        /// For which guest.
        guest: String,
        /// Who asked.
        host: String,
    },
    /// An incoming claim names a source that does not hold the lease.
    #[error("volume {volume} is leased to {holder}, not to the source {src_host}")]
    NotTheSource {
        /// The volume.
        volume: String,
        /// Who holds it.
        holder: String,
        /// The migration's source.
        src_host: String,
    },
    /// The volume has no lease to hand over.
    #[error("volume {volume} has no lease")]
    NoLease {
        /// The volume.
        volume: String,
    },
    /// The host is not the lease's incoming host.
    #[error("volume {volume}: {target} is not its incoming host")]
    NotIncoming {
        /// The volume.
        volume: String,
        /// Who asked.
        target: String,
    },
}

type Result<T> = std::result::Result<T, LeaseError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LeaseError {
    let what = what.into();
    move |source| LeaseError::Io { what, source }
}

/// A lease record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Host allowed to write the volume.
    pub holder: String,
    /// Guest the volume belongs to.
    pub guest: String,
    /// Bumped on every forced takeover.
    pub epoch: u64,
    /// A live-migration target that may open the volume while `holder` still runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<String>,
    /// Unix time of the last change, ms.
    pub since_ms: u64,
    /// The holder's agent address, so that other hosts can ask it about the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_address: Option<String>,
}

fn dir(pool: &Path) -> PathBuf {
    pool.join(".vmove-leases")
}

fn file(pool: &Path, volume: &str) -> PathBuf {
    dir(pool).join(format!("{volume}.lease"))
}

struct Locked(#[allow(dead_code)] std::fs::File);

fn lock(pool: &Path) -> Result<Locked> {
    let d = dir(pool);
    std::fs::create_dir_all(&d).map_err(io(format!("create {}", d.display())))?;
    let f = std::fs::File::open(&d).map_err(io(format!("open {}", d.display())))?;
    // SAFETY: flock on a valid, open descriptor; released when the file is closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io("lock the lease directory")(std::io::Error::last_os_error()));
    }
    Ok(Locked(f))
}

/// The current lease of a volume.
pub fn read(pool: &Path, volume: &str) -> Result<Option<Lease>> {
    match std::fs::read_to_string(file(pool, volume)) {
        Ok(t) => serde_json::from_str(&t).map(Some).map_err(|source| LeaseError::Damaged { volume: volume.into(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(format!("read lease of {volume}"))(e)),
    }
}

fn write(pool: &Path, volume: &str, l: &Lease) -> Result<()> {
    serde_json::to_string(l)
        .map_err(std::io::Error::from)
        .and_then(|text| vmove_model::write_atomic(&file(pool, volume), text.as_bytes()))
        .map_err(io(format!("write lease of {volume}")))
}

/// How to take a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Only if free or already ours.
    Exclusive,
    /// Take it over from whoever holds it (forced offline migration), bumping the epoch.
    Takeover,
}

/// Takes the lease for `host`. Returns the lease now in force.
pub fn acquire(pool: &Path, volume: &str, host: &str, guest: &str, how: Take) -> Result<Lease> {
    let _l = lock(pool)?;
    let cur = read(pool, volume)?;
    let lease = match cur {
        None => Lease { holder: host.into(), guest: guest.into(), epoch: 1, incoming: None, since_ms: now_ms(), holder_address: None },
        Some(c) if c.holder == host => Lease { incoming: None, since_ms: now_ms(), ..c },
        Some(c) if how == Take::Takeover => {
            Lease {
                holder: host.into(),
                guest: guest.into(),
                epoch: c.epoch + 1,
                incoming: None,
                since_ms: now_ms(),
                holder_address: None,
            }
        }
        Some(c) => {
            return Err(LeaseError::Taken { volume: volume.into(), holder: c.holder, guest: c.guest, host: host.into() })
        }
    };
    write(pool, volume, &lease)?;
    Ok(lease)
}

/// Releases the lease if `host` holds it. Returns whether it did.
pub fn release(pool: &Path, volume: &str, host: &str) -> Result<bool> {
    let _l = lock(pool)?;
    match read(pool, volume)? {
        Some(c) if c.holder == host => {
            std::fs::remove_file(file(pool, volume)).map_err(io(format!("remove lease of {volume}")))?;
            Ok(true)
        }
        Some(mut c) if c.incoming.as_deref() == Some(host) => {
            c.incoming = None;
            write(pool, volume, &c)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Lets `target` open the volume for an incoming live migration while `holder` runs it.
pub fn add_incoming(pool: &Path, volume: &str, holder: &str, target: &str, guest: &str) -> Result<Lease> {
    let _l = lock(pool)?;
    let mut c = match read(pool, volume)? {
        Some(c) => c,
        None => Lease {
            holder: holder.into(),
            guest: guest.into(),
            epoch: 1,
            incoming: None,
            since_ms: now_ms(),
            holder_address: None,
        },
    };
    if c.holder != holder && c.holder != target {
        return Err(LeaseError::NotTheSource { volume: volume.into(), holder: c.holder, src_host: holder.into() });
    }
    if c.holder == holder {
        c.incoming = Some(target.into());
        c.since_ms = now_ms();
    }
    write(pool, volume, &c)?;
    Ok(c)
}

/// Hands the lease to the incoming host at switchover.
pub fn switch_to_incoming(pool: &Path, volume: &str, target: &str) -> Result<Lease> {
    let _l = lock(pool)?;
    let c = read(pool, volume)?.ok_or_else(|| LeaseError::NoLease { volume: volume.into() })?;
    if c.holder == target {
        return Ok(c);
    }
    if c.incoming.as_deref() != Some(target) {
        return Err(LeaseError::NotIncoming { volume: volume.into(), target: target.into() });
    }
    let l = Lease { holder: target.into(), incoming: None, since_ms: now_ms(), holder_address: None, ..c };
    write(pool, volume, &l)?;
    Ok(l)
}

/// Records the holder's agent address (if `host` holds the lease).
pub fn record_address(pool: &Path, volume: &str, host: &str, address: &str) -> Result<()> {
    let _l = lock(pool)?;
    if let Some(mut c) = read(pool, volume)? {
        if c.holder == host && c.holder_address.as_deref() != Some(address) {
            c.holder_address = Some(address.into());
            write(pool, volume, &c)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_then_takeover_bumps_epoch() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let a = acquire(p, "v.img", "host1", "vm1", Take::Exclusive).unwrap();
        assert_eq!((a.holder.as_str(), a.epoch), ("host1", 1));
        let e = acquire(p, "v.img", "host2", "vm1", Take::Exclusive).unwrap_err().to_string();
        assert_eq!(e, "volume v.img is leased to host1 (guest vm1); it cannot be used on host2");
        let b = acquire(p, "v.img", "host2", "vm1", Take::Takeover).unwrap();
        assert_eq!((b.holder.as_str(), b.epoch), ("host2", 2));
        assert!(!release(p, "v.img", "host1").unwrap(), "the old holder cannot release it");
        assert_eq!(read(p, "v.img").unwrap().unwrap().holder, "host2");
        assert!(release(p, "v.img", "host2").unwrap());
        assert_eq!(read(p, "v.img").unwrap(), None);
    }

    #[test]
    fn incoming_then_switch() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        acquire(p, "v.img", "host1", "vm1", Take::Exclusive).unwrap();
        let e = switch_to_incoming(p, "v.img", "host2").unwrap_err();
        assert!(matches!(e, LeaseError::NotIncoming { .. }), "{e:?}");
        assert_eq!(e.to_string(), "volume v.img: host2 is not its incoming host");
        let e = add_incoming(p, "v.img", "host3", "host2", "vm1").unwrap_err();
        assert_eq!(e.to_string(), "volume v.img is leased to host1, not to the source host3");
        add_incoming(p, "v.img", "host1", "host2", "vm1").unwrap();
        let l = switch_to_incoming(p, "v.img", "host2").unwrap();
        assert_eq!((l.holder.as_str(), l.incoming), ("host2", None));
        // a cancelled migration instead: the incoming host lets go
        acquire(p, "w.img", "host1", "vm1", Take::Exclusive).unwrap();
        add_incoming(p, "w.img", "host1", "host2", "vm1").unwrap();
        assert!(release(p, "w.img", "host2").unwrap());
        assert_eq!(read(p, "w.img").unwrap().unwrap().incoming, None);
    }

    #[test]
    fn a_damaged_lease_is_named_with_its_cause() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir(d.path())).unwrap();
        std::fs::write(file(d.path(), "v.img"), "{not json").unwrap();
        let e = read(d.path(), "v.img").unwrap_err();
        assert_eq!(e.to_string(), "lease of v.img is damaged");
        assert!(std::error::Error::source(&e).is_some());
        assert!(matches!(switch_to_incoming(d.path(), "w.img", "host2"), Err(LeaseError::NoLease { .. })));
    }
}
