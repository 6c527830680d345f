//! vmove-qmp: an async, lenient client for the QEMU Machine Protocol.
//!
//! # Protocol in short
//!
//! QMP runs over a unix stream socket (`-qmp unix:PATH,server=on,wait=off`)
//! as one JSON object per line:
//!
//! 1. On connect QEMU sends a greeting
//!    `{"QMP": {"version": {"qemu": {"major":7,"minor":2,"micro":0}, "package":".."}, "capabilities": ["oob"]}}`.
//! 2. The client leaves negotiation mode with `{"execute":"qmp_capabilities"}`.
//!    Only then does QEMU accept other commands and send events.
//! 3. Commands are `{"execute": NAME, "arguments": {..}, "id": N}`. The reply
//!    carries the same `id`: `{"return": VALUE, "id": N}` or
//!    `{"error": {"class": "GenericError", "desc": ".."}, "id": N}`.
//! 4. Events may arrive at any time, between replies:
//!    `{"event": "MIGRATION", "data": {"status": "active"}, "timestamp": {"seconds": S, "microseconds": U}}`.
//! 5. File descriptors (`getfd`, `add-fd`) travel as SCM_RIGHTS ancillary
//!    data on the same socket, attached to the bytes of the command that
//!    consumes them.
//!
//! # This client
//!
//! [`Qmp`] is cheap to clone. Each connection has one reader task that
//! matches replies to pending commands by `id` and fans events out on a
//! broadcast channel ([`Qmp::subscribe`]), and one writer task that owns the
//! socket's write half (so fds can be sent with `sendmsg`, and a caller
//! that gives up mid-write never leaves half a command on the wire).
//!
//! It is lenient where the `qapi` crate is strict: unknown events, unknown
//! members and unknown enum values (kept as `Other(String)`) never break the
//! connection. A line that is not JSON is logged and skipped; a reply whose
//! id nobody waits for (e.g. after a timeout) is logged and dropped. When the
//! socket closes, every pending command fails with [`QmpError::Closed`] and
//! [`Qmp::closed`] resolves.
//!
//! For a live storage copy it wraps mirror jobs ([`BlockdevMirror`]) into NBD client
//! nodes ([`NbdClient`]), the NBD server ([`NbdServerStart`]) and its exports
//! ([`NbdExport`]), and decodes the `BLOCK_JOB_*` events ([`Event::block_job`]).
//! # Convergence primitives
//!
//! Post-copy and its recovery ([`Qmp::migrate_start_postcopy`],
//! [`Qmp::migrate_pause`], [`Qmp::migrate_recover`] on the target,
//! [`Qmp::migrate_resume`] on the source), the throttle and dirty-limit
//! parameters of [`MigrateSetParameters`], the figures of [`MigrationInfo`]
//! a convergence ladder watches ([`MigrationInfo::rate_bytes_per_s`],
//! [`MigrationInfo::dirty_rate_bytes_per_s`], `cpu-throttle-percentage`,
//! post-copy statuses), and [`Qmp::refused_capabilities`] to ask a QEMU which
//! capability combinations it accepts. What QEMU 10.0.2 does with them is in
//! docs/DESIGN.md ("Convergence: what QEMU 10 does").
//!
//! With the `fake` feature, [`fake::FakeQmp`] is a scriptable QMP server for
//! other crates' unit tests.

mod block;
mod block_cmds;
mod client;
mod commands;
mod error;
mod lenient;
mod message;
mod migration;
mod params;
mod types;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

#[cfg(test)]
mod tests;

pub use block::{
    BlockExportInfo, BlockInfo, BlockJobEvent, BlockJobEventKind, BlockJobInfo, BlockNodeInfo,
    BlockdevCacheInfo, BlockdevMirror, JobInfo, JobStatus, JobType, MirrorCopyMode, MirrorSyncMode,
    NbdAddr, NbdClient, NbdExport, NbdServerStart,
};
pub use client::{Qmp, DEFAULT_TIMEOUT, EVENT_CAPACITY};
pub use error::QmpError;
pub use message::{classify, parse_line, Message};
pub use migration::{
    MigrationCapability, MigrationCapabilityStatus, MigrationInfo, MigrationStats, MigrationStatus,
    XbzrleCacheStats,
};
pub use params::{
    AnnounceParameters, DirtyRateInfo, DirtyRateStatus, MigrateSetParameters, MigrationParameters,
};
pub use types::{
    AddFdInfo, CpuInfoFast, CpuInstanceProperties, Event, Greeting, RunState, StatusInfo,
    Timestamp, VersionInfo, VersionTriple,
};

/// Re-exported so callers can name the event receiver's error type.
pub use tokio::sync::broadcast::error::RecvError as EventRecvError;
