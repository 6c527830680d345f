//! Local volumes: how a migration copies them (COPY_VOLUMES), as the target (`dst`) and
//! the source (`src`) do it, with storage helpers (`-machine none` QEMUs, [`helper`]).
//!
//! ```text
//!  target agent (dst, runs the job)                     source agent (src)
//!  PeerLocalVolumes ───────────────────────────────▶   the guest's local volumes, sizes
//!  record the copies (copies/<guest>), create each file: same size, sparse
//!  helper <guest>+nbd on the copies (nodes disk{i}); NBD server on a socket bound here
//!   and passed with getfd; TLS (tls-creds-x509 server, authz CN=<source>); exports
//!   vmove-export-disk{i}, writable
//!  PeerMirrorStart ────────────────────────────────▶   LIVE: the guest's QEMU; OFFLINE: helper
//!                                                       <guest>+copy on the stopped volumes;
//!                                                       NBD client nodes vmove-nbd-disk{i} (TLS,
//!                                                       tls-hostname = target), blockdev-mirror
//!                                                       vmove-mirror-disk{i}: sync full, background
//!                                                       (LIVE on a QEMU without block-job-change:
//!                                                       write-blocking, said in the answer)
//!  loop PeerMirrorQuery ───────────────────────────▶   query-block-jobs → progress events
//!   no new low for STALL (LIVE, background) → PeerMirrorWriteBlocking: block-job-change
//!  every mirror ready:
//!   OFFLINE: PeerMirrorFinish ─────────────────────▶   cancel (ready: final sync, no pivot), quit
//!            helper down: the copies are complete      the helper
//!   LIVE: the step ends; the mirrors keep the copies in sync during the memory phase;
//!         MIGRATE_GUEST's incoming QEMU opens the copies inactive (no lock: the helper
//!         holds them) and the migration pauses at pre-switchover: PeerMirrorFinish, helper
//!         down (its lock goes), then migrate-continue: the target activates the copies.
//!  after the point of no return: PeerDropVolumes ──▶   release the leases, delete the files
//!                                                       (kept with --keep-source-volumes)
//!  undo: PeerMirrorAbort ──────────────────────────▶   forced cancel, NBD nodes and helper gone
//!        helper down, the copies deleted, the record removed
//! ```
//!
//! Leases: a local pool's lease store lives in the pool (`<pool>/.vmove-leases/`), so it is
//! per host. The source's copy is leased in the source's store, the target's new copy in
//! the target's (taken by ATTACH_VOLUMES before the copy is made). Fencing of a local
//! volume is therefore local: only the host that has the file can run a QEMU on it.
use serde::{Deserialize, Serialize};
use vmove_api::VolumeRef;
use vmove_model::{DiskSpec, GuestSpec};
use vmove_store::Record;

use crate::guests::Agent;

pub mod dst;
pub mod helper;
pub mod src;

/// The TLS credentials object of NBD on both sides: not the memory migration's
/// `vmove-tls`, which the migration's setup deletes and adds again (it cannot while the NBD
/// client uses it).
pub(crate) const NBD_TLS: &str = "vmove-nbd-tls";
/// The target's NBD server admits only the source's certificate.
pub(crate) const NBD_AUTHZ: &str = "vmove-nbd-authz";
/// The listening socket passed to the target's helper.
pub(crate) const NBD_LISTENER: &str = "vmove-nbd-listener";

/// The copies a migration made on this (target) host, written before the first file is
/// created: an undo deletes exactly these, never a file that was there before. Removed once
/// the copies are the guest's volumes (the switchover, or OFFLINE MIGRATE_GUEST).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRec {
    /// The source host.
    pub source: String,
    /// The volumes created.
    pub volumes: Vec<VolumeRef>,
}

impl Record for CopyRec {
    const KIND: &'static str = "copies";
    const VERSION: u32 = 1;
}

/// Key of a guest's copy record.
pub fn copies_key(guest: &str) -> String {
    format!("copies/{guest}")
}

impl Agent {
    /// Whether `pool` is a local pool of this host.
    pub fn pool_is_local(&self, pool: &str) -> bool {
        self.cfg.pools.iter().any(|p| p.name == pool && p.is_local())
    }

    /// The guest's disks in this host's local pools, with their indices.
    pub fn local_disks<'a>(&self, spec: &'a GuestSpec) -> Vec<(usize, &'a DiskSpec)> {
        spec.disks.iter().enumerate().filter(|(_, d)| self.pool_is_local(&d.pool)).collect()
    }
}

/// `256 MiB` (rounded up).
pub(crate) fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}
