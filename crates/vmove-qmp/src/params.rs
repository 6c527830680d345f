//! Migration parameters, dirty-rate measurement and self-announce, after
//! QEMU 7.2's `qapi/migration.json` and `qapi/net.json`.
//!
//! Rust field names carry the unit (`_ms`, `_bytes_per_s`, `_pct`); the
//! wire names are QEMU's.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::lenient::{lenient_enum, num};

/// Parameters for `migrate-set-parameters`, also the result of
/// `query-migrate-parameters` ([`MigrationParameters`]).
///
/// Every field is optional and omitted when `None`. Unknown members read
/// from QEMU land in `extra` and are sent back as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct MigrateSetParameters {
    /// Initial delay before the first self-announce, ms.
    #[serde(
        rename = "announce-initial",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub announce_initial_ms: Option<u64>,
    /// Maximum delay between announce packets, ms.
    #[serde(
        rename = "announce-max",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub announce_max_ms: Option<u64>,
    /// Number of self-announce packets.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub announce_rounds: Option<u64>,
    /// Delay increase between announce packets, ms.
    #[serde(
        rename = "announce-step",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub announce_step_ms: Option<u64>,
    /// Dirty/transfer ratio (percent) that triggers throttling.
    #[serde(
        rename = "throttle-trigger-threshold",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub throttle_trigger_threshold_pct: Option<u64>,
    /// Initial auto-converge throttle, percent.
    #[serde(
        rename = "cpu-throttle-initial",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_throttle_initial_pct: Option<u64>,
    /// Auto-converge throttle increment, percent.
    #[serde(
        rename = "cpu-throttle-increment",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_throttle_increment_pct: Option<u64>,
    /// Slow down throttle increments at the tail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_tailslow: Option<bool>,
    /// Maximum auto-converge throttle, percent.
    #[serde(
        rename = "max-cpu-throttle",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_cpu_throttle_pct: Option<u64>,
    /// ID of the `tls-creds-*` object; `""` disables TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_creds: Option<String>,
    /// Hostname to validate the server certificate against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_hostname: Option<String>,
    /// ID of the `authz` object checking the client certificate DN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_authz: Option<String>,
    /// Bandwidth cap, bytes per second.
    #[serde(
        rename = "max-bandwidth",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_bandwidth_bytes_per_s: Option<u64>,
    /// Maximum tolerated downtime, milliseconds.
    #[serde(
        rename = "downtime-limit",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub downtime_limit_ms: Option<u64>,
    /// COLO checkpoint delay, ms.
    #[serde(
        rename = "x-checkpoint-delay",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub x_checkpoint_delay_ms: Option<u64>,
    /// Number of multifd channels.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub multifd_channels: Option<u64>,
    /// XBZRLE cache size, bytes.
    #[serde(
        rename = "xbzrle-cache-size",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub xbzrle_cache_size_bytes: Option<u64>,
    /// Background bandwidth during postcopy, bytes per second (0 = unlimited).
    #[serde(
        rename = "max-postcopy-bandwidth",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_postcopy_bandwidth_bytes_per_s: Option<u64>,
    /// Multifd compression: `none`, `zlib`, `zstd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multifd_compression: Option<String>,
    /// zlib level 0..9.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub multifd_zlib_level: Option<u64>,
    /// zstd level 0..20.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub multifd_zstd_level: Option<u64>,
    /// Dirty-page rate limit per vCPU while the `dirty-limit` capability throttles
    /// the guest, MB/s (QEMU 8.1+; needs KVM with a dirty ring).
    #[serde(
        rename = "vcpu-dirty-limit",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub vcpu_dirty_limit_mb_per_s: Option<u64>,
    /// Period of the dirty-limit calculation, ms (QEMU 8.1+, experimental).
    #[serde(
        rename = "x-vcpu-dirty-limit-period",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub x_vcpu_dirty_limit_period_ms: Option<u64>,
    /// Bandwidth QEMU may assume for the switchover when it decides whether the
    /// rest fits the downtime limit, bytes per second; 0 = the measured rate
    /// (QEMU 8.2+).
    #[serde(
        rename = "avail-switchover-bandwidth",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub avail_switchover_bandwidth_bytes_per_s: Option<u64>,
    /// Members this crate does not model (e.g. `compress-level`), sent as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `query-migrate-parameters` returns the same members.
pub type MigrationParameters = MigrateSetParameters;

lenient_enum! {
    /// `DirtyRateStatus`.
    pub enum DirtyRateStatus {
        /// Never started.
        Unstarted => "unstarted",
        /// Measuring now.
        Measuring => "measuring",
        /// Result available.
        Measured => "measured",
    }
}

/// `query-dirty-rate` result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct DirtyRateInfo {
    /// Estimated dirty rate in MiB/s (only when measured).
    #[serde(
        rename = "dirty-rate",
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub dirty_rate_mib_per_s: Option<u64>,
    /// Measurement state.
    pub status: DirtyRateStatus,
    /// Start of the measurement, seconds since the epoch.
    #[serde(
        rename = "start-time",
        deserialize_with = "num::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub start_time_s: Option<i64>,
    /// Measurement period (seconds unless `calc-time-unit` says otherwise).
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub calc_time: Option<u64>,
    /// Unit of `calc-time` (8.2+): `second` or `millisecond`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calc_time_unit: Option<String>,
    /// Sampled pages per GiB.
    #[serde(
        deserialize_with = "num::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub sample_pages: Option<u64>,
    /// `page-sampling`, `dirty-ring` or `dirty-bitmap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Per-vCPU rates (dirty-ring mode), raw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpu_dirty_rate: Option<Vec<Value>>,
}

/// `announce-self` arguments (`AnnounceParameters`). All delays in ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AnnounceParameters {
    /// Delay before the first packet, ms.
    #[serde(rename = "initial")]
    pub initial_ms: u64,
    /// Maximum delay between packets, ms.
    #[serde(rename = "max")]
    pub max_ms: u64,
    /// Number of packets.
    pub rounds: u64,
    /// Delay increase per packet, ms.
    #[serde(rename = "step")]
    pub step_ms: u64,
    /// Restrict to these NIC ids (all when `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
    /// Announce timer id, so several can run in parallel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Default for AnnounceParameters {
    /// QEMU's defaults: 50 ms initial, 550 ms max, 5 rounds, 100 ms step.
    fn default() -> Self {
        AnnounceParameters {
            initial_ms: 50,
            max_ms: 550,
            rounds: 5,
            step_ms: 100,
            interfaces: None,
            id: None,
        }
    }
}
