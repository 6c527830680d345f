//! General QMP types: greeting, events, run state, version, CPUs, fds.
//!
//! Every struct tolerates missing and unknown fields; every enum keeps
//! unknown values as `Other(String)`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lenient::{lenient_enum, num};
use crate::migration::MigrationStatus;

/// `{"major":7,"minor":2,"micro":0}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VersionTriple {
    /// Major version.
    #[serde(deserialize_with = "num::u64_or_zero")]
    pub major: u64,
    /// Minor version.
    #[serde(deserialize_with = "num::u64_or_zero")]
    pub minor: u64,
    /// Micro version.
    #[serde(deserialize_with = "num::u64_or_zero")]
    pub micro: u64,
}

/// QEMU's `VersionInfo` (greeting and `query-version`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VersionInfo {
    /// Upstream version numbers.
    pub qemu: VersionTriple,
    /// Distribution package string, e.g. `Debian 1:7.2+dfsg-7+deb12u18`.
    pub package: String,
}

impl VersionInfo {
    /// `(major, minor, micro)` for easy comparisons.
    pub fn triple(&self) -> (u64, u64, u64) {
        (self.qemu.major, self.qemu.minor, self.qemu.micro)
    }

    /// True when QEMU is at least `major.minor`.
    pub fn at_least(&self, major: u64, minor: u64) -> bool {
        (self.qemu.major, self.qemu.minor) >= (major, minor)
    }
}

impl std::fmt::Display for VersionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.qemu.major, self.qemu.minor, self.qemu.micro
        )?;
        if !self.package.trim().is_empty() {
            write!(f, " ({})", self.package.trim())?;
        }
        Ok(())
    }
}

/// The server greeting: `{"QMP": {"version": {...}, "capabilities": [...]}}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Greeting {
    /// QEMU version.
    pub version: VersionInfo,
    /// Offered capabilities (e.g. `oob`); enabled only by `Qmp::connect_oob`.
    pub capabilities: Vec<String>,
    /// The greeting object as received.
    pub raw: Value,
}

impl Greeting {
    /// Parses a greeting line's JSON; `None` if it is not a greeting.
    pub fn from_value(v: &Value) -> Option<Greeting> {
        let qmp = v.get("QMP")?;
        let version = qmp
            .get("version")
            .and_then(|v| VersionInfo::deserialize(v).ok())
            .unwrap_or_default();
        let capabilities = qmp
            .get("capabilities")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|c| match c {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Greeting {
            version,
            capabilities,
            raw: v.clone(),
        })
    }
}

/// Event timestamp, wall clock of the QEMU host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timestamp {
    /// Seconds since the epoch (-1 if QEMU could not read the clock).
    #[serde(deserialize_with = "num::i64_or_zero")]
    pub seconds: i64,
    /// Microseconds within the second.
    #[serde(deserialize_with = "num::i64_or_zero")]
    pub microseconds: i64,
}

/// An asynchronous QMP event, kept raw so unknown events never break
/// anything. Use the helper methods or [`Event::data_as`] to interpret it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name, e.g. `MIGRATION`, `STOP`, `SHUTDOWN`.
    pub event: String,
    /// The `data` member (`Value::Null` when absent).
    pub data: Value,
    /// When QEMU emitted it.
    pub timestamp: Option<Timestamp>,
}

impl Event {
    /// Builds an event from a parsed message; `None` if it has no string
    /// `event` member.
    pub fn from_value(v: &Value) -> Option<Event> {
        let event = v.get("event")?.as_str()?.to_string();
        let data = v.get("data").cloned().unwrap_or(Value::Null);
        let timestamp = v
            .get("timestamp")
            .and_then(|t| Timestamp::deserialize(t).ok());
        Some(Event {
            event,
            data,
            timestamp,
        })
    }

    /// For a `MIGRATION` event: the new status.
    pub fn migration_status(&self) -> Option<MigrationStatus> {
        if self.event != "MIGRATION" {
            return None;
        }
        self.data
            .get("status")
            .and_then(Value::as_str)
            .map(MigrationStatus::from_wire)
    }

    /// For a `MIGRATION_PASS` event: the pass number (1 = first full pass).
    pub fn migration_pass(&self) -> Option<u64> {
        if self.event != "MIGRATION_PASS" {
            return None;
        }
        self.data.get("pass").and_then(Value::as_u64)
    }

    /// For a `STOP`/`RESUME`/`SHUTDOWN`...: true if the name matches.
    pub fn is(&self, name: &str) -> bool {
        self.event == name
    }

    /// Decodes `data` into a caller-chosen type.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.data)
    }
}

lenient_enum! {
    /// QEMU `RunState` (query-status `status`).
    pub enum RunState {
        /// Stopped by the debugger.
        Debug => "debug",
        /// Waiting for an incoming migration.
        Inmigrate => "inmigrate",
        /// An internal error happened.
        InternalError => "internal-error",
        /// Stopped on an I/O error.
        IoError => "io-error",
        /// Paused by the user (`stop`).
        Paused => "paused",
        /// Outgoing migration completed; source stays stopped.
        Postmigrate => "postmigrate",
        /// Started with `-S`, not yet run.
        Prelaunch => "prelaunch",
        /// Final stage of an outgoing migration.
        FinishMigrate => "finish-migrate",
        /// Restoring a snapshot.
        RestoreVm => "restore-vm",
        /// Guest CPUs run.
        Running => "running",
        /// Saving a snapshot.
        SaveVm => "save-vm",
        /// Guest shut down (with `-no-shutdown`).
        Shutdown => "shutdown",
        /// Guest suspended (ACPI S3).
        Suspended => "suspended",
        /// Watchdog fired with action pause.
        Watchdog => "watchdog",
        /// Guest panicked.
        GuestPanicked => "guest-panicked",
        /// COLO fault tolerance.
        Colo => "colo",
    }
}

/// `query-status` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct StatusInfo {
    /// Guest CPUs are running.
    #[serde(deserialize_with = "num::bool_or_false")]
    pub running: bool,
    /// Detailed run state.
    pub status: RunState,
    /// Removed in QEMU 8.1; present in 7.2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub singlestep: Option<bool>,
}

/// `add-fd` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct AddFdInfo {
    /// The fd set the descriptor was added to.
    #[serde(deserialize_with = "num::u64_or_zero")]
    pub fdset_id: u64,
    /// The descriptor number inside QEMU (usable as `/dev/fdset/ID`).
    #[serde(deserialize_with = "num::i64_or_zero")]
    pub fd: i64,
}

/// `CpuInstanceProperties` (topology of one vCPU); all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CpuInstanceProperties {
    /// NUMA node.
    #[serde(
        deserialize_with = "num::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub node_id: Option<i64>,
    /// Socket.
    #[serde(
        deserialize_with = "num::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_id: Option<i64>,
    /// Die.
    #[serde(
        deserialize_with = "num::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub die_id: Option<i64>,
    /// Cluster.
    #[serde(
        deserialize_with = "num::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_id: Option<i64>,
    /// Core.
    #[serde(
        deserialize_with = "num::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub core_id: Option<i64>,
    /// Thread.
    #[serde(
        deserialize_with = "num::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub thread_id: Option<i64>,
}

/// One entry of `query-cpus-fast`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CpuInfoFast {
    /// vCPU index.
    #[serde(deserialize_with = "num::i64_or_zero")]
    pub cpu_index: i64,
    /// QOM path of the vCPU object.
    pub qom_path: String,
    /// Host thread id (TID) of the vCPU thread.
    #[serde(deserialize_with = "num::i64_or_zero")]
    pub thread_id: i64,
    /// Topology properties.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub props: Option<CpuInstanceProperties>,
    /// Target architecture, e.g. `x86_64`.
    pub target: String,
}
