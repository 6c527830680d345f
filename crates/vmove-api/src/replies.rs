//! Results of the simpler requests (`health`, `host_drain`/`host_undrain`, `link_measure`,
//! `guest_log`); the requests themselves are in `wire`.
use serde::{Deserialize, Serialize};

use crate::{Maintenance, Role};

/// `health` result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Host name.
    pub host: String,
    /// Agent version.
    pub agent_version: String,
    /// The caller's role as the agent sees it.
    pub caller: Role,
    /// TLS connections the agent accepted since it started.
    #[serde(default)]
    pub connections_accepted: u64,
    /// Requests it answered since it started.
    #[serde(default)]
    pub requests_served: u64,
}

/// `host_drain` and `host_undrain` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceState {
    /// Host name.
    pub host: String,
    /// In maintenance since when, if it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// Whether this call changed it (false: it already was so).
    pub changed: bool,
}

/// `link_measure` result: the migration link from a source to a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// Source host.
    pub source: String,
    /// Target host.
    pub target: String,
    /// Throughput over mutual TLS, bytes/s.
    pub bytes_per_s: u64,
    /// When it was measured, unix ms.
    pub measured_ms: u64,
    /// Its age, seconds.
    pub age_s: u64,
    /// Taken from an earlier measurement.
    pub cached: bool,
}

/// `guest_log` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestLog {
    /// The tail of the serial console log.
    pub text: String,
}
