//! Migration types, after QEMU 7.2's `qapi/migration.json`.
//!
//! Field names are QEMU's (kebab-case on the wire). Units: byte counters are
//! bytes, times are milliseconds unless the field name says otherwise,
//! `mbps` is megabits per second.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::lenient::{lenient_enum, num};

lenient_enum! {
    /// `MigrationStatus`.
    pub enum MigrationStatus {
        /// No migration has ever happened.
        None => "none",
        /// Migration initiated.
        Setup => "setup",
        /// Cancel requested.
        Cancelling => "cancelling",
        /// Cancelled.
        Cancelled => "cancelled",
        /// Precopy in progress.
        Active => "active",
        /// Postcopy in progress.
        PostcopyActive => "postcopy-active",
        /// Postcopy paused (network failure).
        PostcopyPaused => "postcopy-paused",
        /// Setting up a postcopy recovery (QEMU 9.1+).
        PostcopyRecoverSetup => "postcopy-recover-setup",
        /// Recovering a paused postcopy.
        PostcopyRecover => "postcopy-recover",
        /// Finished successfully.
        Completed => "completed",
        /// Failed; see `error-desc`.
        Failed => "failed",
        /// COLO.
        Colo => "colo",
        /// Paused before switchover (`pause-before-switchover`); resume with
        /// `migrate-continue`.
        PreSwitchover => "pre-switchover",
        /// Device state serialisation (after pre-switchover).
        Device => "device",
        /// Waiting for the guest to unplug a failover device.
        WaitUnplug => "wait-unplug",
    }
}

impl MigrationStatus {
    /// Completed, failed or cancelled: nothing more will happen.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }

    /// A migration is underway (setup through device / postcopy).
    pub fn is_in_progress(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Setup
                | MigrationStatus::Active
                | MigrationStatus::PostcopyActive
                | MigrationStatus::PostcopyPaused
                | MigrationStatus::PostcopyRecoverSetup
                | MigrationStatus::PostcopyRecover
                | MigrationStatus::PreSwitchover
                | MigrationStatus::Device
                | MigrationStatus::WaitUnplug
                | MigrationStatus::Cancelling
        )
    }
}

impl MigrationStatus {
    /// Post-copy has started (active, paused or recovering): the guest runs on
    /// the target, and QEMU refuses `migrate_cancel` ("Postcopy migration in
    /// progress, cannot cancel").
    pub fn is_postcopy(&self) -> bool {
        matches!(
            self,
            MigrationStatus::PostcopyActive
                | MigrationStatus::PostcopyPaused
                | MigrationStatus::PostcopyRecoverSetup
                | MigrationStatus::PostcopyRecover
        )
    }

    /// Post-copy lost its connection (or was paused with `migrate-pause`):
    /// recover with `migrate-recover` on the target and `migrate` with
    /// `resume: true` on the source.
    pub fn is_postcopy_paused(&self) -> bool {
        matches!(self, MigrationStatus::PostcopyPaused)
    }
}

lenient_enum! {
    /// `MigrationCapability` (7.2 set plus a few later ones).
    pub enum MigrationCapability {
        /// XOR-based zero run length encoding.
        Xbzrle => "xbzrle",
        /// RDMA: pin all memory.
        RdmaPinAll => "rdma-pin-all",
        /// Throttle guest CPUs to converge.
        AutoConverge => "auto-converge",
        /// Block migration: encode zero blocks.
        ZeroBlocks => "zero-blocks",
        /// Compression threads (removed in 9.1).
        Compress => "compress",
        /// Emit `MIGRATION` / `MIGRATION_PASS` events.
        Events => "events",
        /// Allow switching to postcopy.
        PostcopyRam => "postcopy-ram",
        /// COLO.
        XColo => "x-colo",
        /// Free source RAM during postcopy.
        ReleaseRam => "release-ram",
        /// Block migration (removed in 9.1).
        Block => "block",
        /// Use a return path even for precopy.
        ReturnPath => "return-path",
        /// Pause in `pre-switchover` before device state.
        PauseBeforeSwitchover => "pause-before-switchover",
        /// Several parallel channels.
        Multifd => "multifd",
        /// Migrate dirty bitmaps.
        DirtyBitmaps => "dirty-bitmaps",
        /// Measure postcopy blocktime.
        PostcopyBlocktime => "postcopy-blocktime",
        /// Destination activates block devices late.
        LateBlockActivate => "late-block-activate",
        /// Skip shared memory.
        XIgnoreShared => "x-ignore-shared",
        /// Check the source UUID.
        ValidateUuid => "validate-uuid",
        /// Background snapshot.
        BackgroundSnapshot => "background-snapshot",
        /// MSG_ZEROCOPY for multifd sends.
        ZeroCopySend => "zero-copy-send",
        /// Postcopy preemption channel.
        PostcopyPreempt => "postcopy-preempt",
        /// Wait for the destination's switchover ACK (8.1+).
        SwitchoverAck => "switchover-ack",
        /// Dirty limit throttling (8.1+).
        DirtyLimit => "dirty-limit",
        /// Fixed-offset RAM in file migration (9.0+).
        MappedRam => "mapped-ram",
    }
}

/// One element of `query-migrate-capabilities` /
/// `migrate-set-capabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MigrationCapabilityStatus {
    /// Which capability.
    pub capability: MigrationCapability,
    /// Enabled or not.
    #[serde(deserialize_with = "num::bool_or_false")]
    pub state: bool,
}

/// `MigrationStats` (the `ram` member of `query-migrate`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct MigrationStats {
    /// Bytes already transferred.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub transferred: Option<u64>,
    /// Bytes still to transfer (current estimate).
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub remaining: Option<u64>,
    /// Total bytes of guest RAM involved.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub total: Option<u64>,
    /// Number of zero pages.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub duplicate: Option<u64>,
    /// Number of normal (full) pages sent.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub normal: Option<u64>,
    /// Bytes of normal pages sent.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub normal_bytes: Option<u64>,
    /// Pages dirtied per second by the guest.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub dirty_pages_rate: Option<u64>,
    /// Throughput in megabits per second.
    #[serde(
        deserialize_with = "num::opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub mbps: Option<f64>,
    /// Number of dirty bitmap synchronisations (= passes).
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub dirty_sync_count: Option<u64>,
    /// Page requests from the destination during postcopy.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub postcopy_requests: Option<u64>,
    /// Bytes per page for the page counters.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub page_size: Option<u64>,
    /// Bytes sent over multifd channels.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub multifd_bytes: Option<u64>,
    /// Pages transferred per second.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub pages_per_second: Option<u64>,
    /// Bytes sent during precopy.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub precopy_bytes: Option<u64>,
    /// Bytes sent while the guest was paused.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub downtime_bytes: Option<u64>,
    /// Bytes sent during postcopy.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub postcopy_bytes: Option<u64>,
    /// Syncs that could not avoid copying with zero-copy-send (7.1+).
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub dirty_sync_missed_zero_copy: Option<u64>,
    /// Members this crate does not know, kept raw.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `XBZRLECacheStats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct XbzrleCacheStats {
    /// Cache size in bytes.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_size: Option<u64>,
    /// Bytes transferred as XBZRLE.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub bytes: Option<u64>,
    /// Pages transferred as XBZRLE.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub pages: Option<u64>,
    /// Cache misses.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_miss: Option<u64>,
    /// Cache miss rate (0..1).
    #[serde(
        deserialize_with = "num::opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_miss_rate: Option<f64>,
    /// Encoding rate.
    #[serde(
        deserialize_with = "num::opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub encoding_rate: Option<f64>,
    /// Overflows.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub overflow: Option<u64>,
}

/// `query-migrate` result (`MigrationInfo`). Everything is optional: before
/// the first migration QEMU returns `{}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// Absent when no migration was ever started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<MigrationStatus>,
    /// RAM statistics (active / completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram: Option<MigrationStats>,
    /// XBZRLE cache statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xbzrle_cache: Option<XbzrleCacheStats>,
    /// VFIO statistics (`{"transferred": N}`), raw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vfio: Option<Value>,
    /// Compression statistics (7.2, removed later), raw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<Value>,
    /// Milliseconds since the migration started (total when finished).
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub total_time: Option<u64>,
    /// Expected downtime in milliseconds (while active).
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub expected_downtime: Option<u64>,
    /// Actual downtime in milliseconds (when completed).
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub downtime: Option<u64>,
    /// Setup time in milliseconds.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub setup_time: Option<u64>,
    /// Current auto-converge throttle in percent.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_throttle_percentage: Option<u64>,
    /// Error description when failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_desc: Option<String>,
    /// Why an outgoing migration is blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_reasons: Option<Vec<String>>,
    /// Postcopy blocktime (ms), with the capability.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub postcopy_blocktime: Option<u64>,
    /// Per-vCPU postcopy blocktime (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postcopy_vcpu_blocktime: Option<Vec<Value>>,
    /// Time the dirty-limit throttle slept a vCPU per round, microseconds
    /// (QEMU 8.1+, with the `dirty-limit` capability).
    #[serde(
        rename = "dirty-limit-throttle-time-per-round",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub dirty_limit_throttle_time_per_round_us: Option<u64>,
    /// Estimated time a vCPU waits for its full dirty ring to be reaped,
    /// microseconds (QEMU 8.1+, with the `dirty-limit` capability).
    #[serde(
        rename = "dirty-limit-ring-full-time",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub dirty_limit_ring_full_time_us: Option<u64>,
    /// Listening addresses of an incoming migration (raw `SocketAddress`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_address: Option<Vec<Value>>,
    /// Members this crate does not know, kept raw.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MigrationInfo {
    /// The status, `None` mapped to [`MigrationStatus::None`].
    pub fn status_or_none(&self) -> MigrationStatus {
        self.status.clone().unwrap_or(MigrationStatus::None)
    }

    /// Transfer rate of the last interval, bytes per second (`ram.mbps`, which
    /// is megabits per second); 0 when unknown.
    pub fn rate_bytes_per_s(&self) -> u64 {
        let mbps = self.ram.as_ref().and_then(|r| r.mbps).unwrap_or(0.0);
        if mbps.is_finite() && mbps > 0.0 {
            (mbps * 1e6 / 8.0) as u64
        } else {
            0
        }
    }

    /// Dirty rate found at the last bitmap sync, bytes per second
    /// (`ram.dirty-pages-rate` × `ram.page-size`, 4 KiB when absent); 0 when
    /// unknown. It counts distinct pages: a guest rewriting its working set
    /// faster than a pass reads as the working set per pass.
    pub fn dirty_rate_bytes_per_s(&self) -> u64 {
        let Some(ram) = &self.ram else { return 0 };
        let page = ram.page_size.filter(|p| *p > 0).unwrap_or(4096);
        ram.dirty_pages_rate.unwrap_or(0).saturating_mul(page)
    }

    /// Bytes still to send (`ram.remaining`), 0 when unknown.
    pub fn remaining_bytes(&self) -> u64 {
        self.ram.as_ref().and_then(|r| r.remaining).unwrap_or(0)
    }

    /// Bytes sent so far (`ram.transferred`), 0 when unknown.
    pub fn transferred_bytes(&self) -> u64 {
        self.ram.as_ref().and_then(|r| r.transferred).unwrap_or(0)
    }

    /// Dirty bitmap syncs so far (`ram.dirty-sync-count`): pass 1 is the bulk
    /// copy. 0 when unknown.
    pub fn passes(&self) -> u64 {
        self.ram.as_ref().and_then(|r| r.dirty_sync_count).unwrap_or(0)
    }
}
