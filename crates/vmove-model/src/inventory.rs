//! What a host reports about itself: the inventory and its guests' states.
use serde::{Deserialize, Serialize};

use crate::GuestSpec;

/// A guest's run state on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestState {
    /// Defined, no QEMU.
    Stopped,
    /// QEMU started, not yet confirmed running.
    Starting,
    /// Running.
    Running,
    /// QEMU paused (stopped vCPUs).
    Paused,
    /// Graceful shutdown requested.
    ShuttingDown,
    /// QEMU waiting for an incoming migration.
    Incoming,
    /// QEMU exited without being asked to.
    Crashed,
}

/// A guest as a host reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestStatus {
    /// Definition.
    pub spec: GuestSpec,
    /// Run state.
    pub state: GuestState,
    /// QEMU's pid, when running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Seconds since QEMU started, when running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u64>,
}

/// A bridge on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeInfo {
    /// Bridge name.
    pub name: String,
    /// VLAN id, if the bridge is a VLAN bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

/// A storage pool as a host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// Pool name.
    pub name: String,
    /// Directory.
    pub path: String,
    /// Whether the host can write it.
    pub writable: bool,
    /// Shared by every host or local to this one (agents older than this field: shared).
    #[serde(default)]
    pub kind: crate::PoolKind,
    /// Size of the file system holding the pool, bytes (`statvfs`; 0 when unknown).
    #[serde(default)]
    pub capacity_bytes: u64,
    /// Bytes an unprivileged writer may still use there (`statvfs` `f_bavail`).
    #[serde(default)]
    pub free_bytes: u64,
    /// The volumes of a local pool (a shared pool's are the same on every host and not
    /// listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeInfo>,
}

/// A volume (file) of a local pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Volume name (the file's name).
    pub name: String,
    /// Its size, bytes (what a copy of it takes at most).
    pub size_bytes: u64,
    /// Bytes the file occupies on disk (less for a sparse file).
    pub allocated_bytes: u64,
}

/// What a host's QEMU can do, learned when the agent starts (`query-version`,
/// `query-migrate-capabilities`, `query-migrate-parameters` on a QEMU with `-machine none`).
/// Migrations decide by these features, never by the version number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuFeatures {
    /// Upstream version, `major.minor.micro`.
    pub version: String,
    /// Distribution package string (e.g. `Debian 1:10.0.2+ds-2+deb13u1~bpo12+1`).
    #[serde(default)]
    pub package: String,
    /// Migration capabilities this QEMU knows (`query-migrate-capabilities`), sorted.
    #[serde(default)]
    pub migration_capabilities: Vec<String>,
    /// Migration parameters and their defaults (`query-migrate-parameters`), sorted by name;
    /// values as QEMU prints them.
    #[serde(default)]
    pub migration_parameters: Vec<(String, String)>,
    /// Whether this QEMU accepts `postcopy-ram` together with `multifd` (QEMU 10.0 refuses:
    /// "Postcopy is not yet compatible with multifd").
    #[serde(default)]
    pub postcopy_with_multifd: bool,
    /// The QMP commands of [`QMP_COMMANDS`] this QEMU has (`query-commands`), sorted;
    /// `None` from an agent that did not ask.
    #[serde(default)]
    pub qmp_commands: Option<Vec<String>>,
}

/// The QMP commands a host's QEMU is asked about: those a migration may do without.
/// `block-job-change` (QEMU 8.2+) switches a running mirror to write-blocking.
pub const QMP_COMMANDS: &[&str] = &["block-job-change"];

impl QemuFeatures {
    /// Whether this QEMU knows the migration capability `name` (e.g. `switchover-ack`).
    pub fn has_capability(&self, name: &str) -> bool {
        self.migration_capabilities.iter().any(|c| c == name)
    }

    /// Whether this QEMU knows the migration parameter `name` (e.g. `tls-creds`).
    pub fn has_parameter(&self, name: &str) -> bool {
        self.migration_parameters.iter().any(|(n, _)| n == name)
    }

    /// Whether this QEMU has the QMP command `name` (one of [`QMP_COMMANDS`]); `None`
    /// when the agent did not say.
    pub fn has_command(&self, name: &str) -> Option<bool> {
        self.qmp_commands.as_ref().map(|c| c.iter().any(|x| x == name))
    }

    /// Whether the features were learned at all (an agent older than this field reports none).
    pub fn known(&self) -> bool {
        !self.migration_capabilities.is_empty()
    }
}

/// A host in maintenance (`vmove host drain`): it takes no new guests and no migrations
/// in; the guests already there keep running until they are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    /// Since when, unix ms.
    pub since_ms: u64,
}

/// `host_info` result: the host inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Host name.
    pub name: String,
    /// Agent version.
    pub agent_version: String,
    /// QEMU version, `major.minor.micro`.
    pub qemu_version: String,
    /// What the host's QEMU can do (migration capabilities and parameters).
    #[serde(default)]
    pub qemu: QemuFeatures,
    /// Hardware model (DMI product name, or a configured value).
    pub hardware_model: String,
    /// Hardware generation (configured).
    pub hardware_generation: u32,
    /// Accelerator setting (`kvm`, `tcg`, `auto`) and what it resolves to.
    pub accel: String,
    /// CPU model name.
    pub cpu_model: String,
    /// CPU flags.
    pub cpu_flags: Vec<String>,
    /// Logical CPUs.
    pub cpu_count: u32,
    /// Memory, MiB.
    pub memory_total_mib: u64,
    /// Memory the kernel reports available, MiB.
    pub memory_free_mib: u64,
    /// Memory reserved for the host itself, MiB.
    pub memory_reserve_mib: u64,
    /// Memory of every defined guest, MiB.
    pub memory_committed_mib: u64,
    /// What a new guest may still use: total − reserve − committed, MiB.
    pub memory_available_mib: u64,
    /// vCPUs of every defined guest.
    pub vcpus_committed: u32,
    /// Bridges.
    pub bridges: Vec<BridgeInfo>,
    /// Storage pools.
    pub pools: Vec<PoolInfo>,
    /// Console TCP ports in use.
    pub console_ports_in_use: Vec<u16>,
    /// Console ports this host hands out.
    pub console_port_range: (u16, u16),
    /// Guests and their states.
    pub guests: Vec<GuestStatus>,
    /// In maintenance since when, if it is (an agent older than this field reports none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// vmove's own time around the memory phase of the last live moves into this host (the
    /// job's total less QEMU's `total-time`: setup, target start, switchover, the source's
    /// end), median of up to [`LIVE_STEPS_MOVES`], ms. The prediction adds it to its model
    /// of the memory phase. None before the first such move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_steps_ms: Option<u64>,
    /// How long QEMU's memory phase of the last live moves into this host took against
    /// what the model predicted for it when each move began, percent (median of up to
    /// [`LIVE_STEPS_MOVES`]): the prediction scales its memory phase by it. None before
    /// the first such move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_model_pct: Option<u32>,
}

/// How many of a host's last live moves in give [`HostInfo::live_steps_ms`].
pub const LIVE_STEPS_MOVES: usize = 5;

/// At most this much of vmove's own time is taken from a peer's inventory, ms (a larger
/// figure is not a measurement of the steps).
pub const LIVE_STEPS_MAX_MS: u64 = 600_000;

/// The range of [`HostInfo::memory_model_pct`] taken from a peer's inventory: a ratio
/// outside it is not a calibration of the model but a move that went wrong.
pub const MEMORY_MODEL_PCT: std::ops::RangeInclusive<u32> = 20..=1_000;

