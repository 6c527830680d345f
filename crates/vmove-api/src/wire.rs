//! Wire types of the agent API.
use serde::{Deserialize, Serialize};
use vmove_model::GuestSpec;

/// Who is calling, from the client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The operator (`vmove`).
    Operator,
    /// Another host's agent.
    Host,
}

/// One API call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Liveness and identity.
    Health,
    /// The host inventory.
    HostInfo,
    /// Persist a guest definition on this host (checks resources and uniqueness).
    GuestDefine {
        /// The definition.
        spec: GuestSpec,
    },
    /// Start a defined guest.
    GuestStart {
        /// Guest name.
        name: String,
    },
    /// Stop a guest: ACPI powerdown and wait, or kill with `force`.
    GuestStop {
        /// Guest name.
        name: String,
        /// Kill instead of ACPI powerdown.
        #[serde(default)]
        force: bool,
        /// How long to wait for a graceful stop, seconds.
        #[serde(default = "default_stop_timeout")]
        timeout_s: u64,
    },
    /// Remove a stopped guest's definition (its volumes stay).
    GuestUndefine {
        /// Guest name.
        name: String,
    },
    /// All guests on this host.
    GuestList,
    /// One guest.
    GuestShow {
        /// Guest name.
        name: String,
    },
    /// The tail of a guest's serial console log.
    GuestLog {
        /// Guest name.
        name: String,
        /// At most this many bytes from the end.
        #[serde(default = "default_log_bytes")]
        max_bytes: u64,
    },
}

fn default_stop_timeout() -> u64 {
    120
}
fn default_log_bytes() -> u64 {
    64 * 1024
}

impl Request {
    /// Whether a caller with `role` may make this call.
    pub fn allowed_for(&self, role: &Role) -> bool {
        match role {
            Role::Operator => true,
            Role::Host => matches!(self, Request::Health | Request::HostInfo),
        }
    }

    /// The call's name, for logs and errors.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Health => "health",
            Request::HostInfo => "host_info",
            Request::GuestDefine { .. } => "guest_define",
            Request::GuestStart { .. } => "guest_start",
            Request::GuestStop { .. } => "guest_stop",
            Request::GuestUndefine { .. } => "guest_undefine",
            Request::GuestList => "guest_list",
            Request::GuestShow { .. } => "guest_show",
            Request::GuestLog { .. } => "guest_log",
        }
    }
}

/// The final answer to a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the call succeeded.
    pub ok: bool,
    /// The result, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// A one-line reason, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// A successful reply.
    pub fn ok(v: impl Serialize) -> Reply {
        match serde_json::to_value(v) {
            Ok(result) => Reply { ok: true, result: Some(result), error: None },
            Err(e) => Reply::err(format!("cannot encode result: {e}")),
        }
    }
    /// A failed reply.
    pub fn err(msg: impl Into<String>) -> Reply {
        let msg: String = msg.into();
        Reply { ok: false, result: None, error: Some(msg.replace('\n', " ")) }
    }
}

/// `health` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Host name.
    pub host: String,
    /// Agent version.
    pub agent_version: String,
    /// The caller's role as the agent sees it.
    pub caller: Role,
}

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
}

/// `guest_log` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestLog {
    /// The tail of the serial console log.
    pub text: String,
}
