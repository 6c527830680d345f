//! The parameters of a migration: one typed set, units in the names, shared by the
//! prechecks (in [`crate::MigrationRequest`]), the job the target agent runs, and both QEMUs.
use serde::{Deserialize, Serialize};
use vmove_model::{Converge, Policy};

/// Parameters of a migration: one typed set, units in the names. Applied to both QEMUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationParams {
    /// Cancel an unfinished live migration after this long, seconds (policy default 600).
    pub timeout_s: u64,
    /// Maximum downtime at switchover, milliseconds (QEMU `downtime-limit`; default 300).
    pub max_downtime_ms: u64,
    /// Bandwidth cap, bytes/s. `None` = unlimited (never QEMU's 128 MiB/s default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_bytes_per_s: Option<u64>,
    /// Migrate in clear text instead of TLS with the cluster CA's certificates.
    #[serde(default)]
    pub insecure_transport: bool,
    /// multifd channels; 0 = a single stream.
    #[serde(default)]
    pub multifd_channels: u8,
    /// Whether the migration may switch to post-copy (the cluster policy's
    /// `allow_postcopy`).
    #[serde(default)]
    pub allow_postcopy: bool,
    /// How a migration that does not converge on its own is helped along
    /// ([`crate::converge`]). A request without it (an older sender) means `none`:
    /// a fixed downtime limit, as before convergence policies existed.
    #[serde(default)]
    pub converge: Converge,
    /// First downtime limit of the ladder, milliseconds. `None`: derived from the
    /// measured link and dirty rate ([`crate::converge::initial_downtime_ms`]).
    /// Never above `max_downtime_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_downtime_ms: Option<u64>,
    /// How long a graceful (ACPI) stop may take, seconds.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_s: u64,
    /// Hold the source at switchover until told to continue (QEMU pause-before-switchover).
    #[serde(default)]
    pub pause_before_switchover: bool,
    /// Keep the source's copies of local volumes after the move (released, not deleted).
    #[serde(default)]
    pub keep_source_volumes: bool,
}

fn default_stop_timeout() -> u64 {
    120
}

impl Default for MigrationParams {
    fn default() -> Self {
        MigrationParams {
            timeout_s: 600,
            max_downtime_ms: 300,
            bandwidth_bytes_per_s: None,
            insecure_transport: false,
            multifd_channels: 2,
            allow_postcopy: false,
            converge: Converge::None,
            initial_downtime_ms: None,
            stop_timeout_s: default_stop_timeout(),
            pause_before_switchover: false,
            keep_source_volumes: false,
        }
    }
}

impl MigrationParams {
    /// The cluster policy's parameters (timeout, downtime limit, post-copy), the rest at
    /// their defaults (unlimited bandwidth, TLS, 2 multifd channels): what a migration gets
    /// when the operator names none.
    pub fn from_policy(policy: &Policy) -> MigrationParams {
        MigrationParams {
            timeout_s: policy.live_timeout_s,
            max_downtime_ms: policy.max_downtime_ms,
            allow_postcopy: policy.allow_postcopy,
            converge: policy.converge,
            ..MigrationParams::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_sets_timeout_downtime_and_postcopy() {
        let policy = Policy { live_timeout_s: 60, max_downtime_ms: 500, allow_postcopy: true, ..Policy::default() };
        let p = MigrationParams::from_policy(&policy);
        assert_eq!((p.timeout_s, p.max_downtime_ms, p.allow_postcopy), (60, 500, true));
        assert_eq!(
            p,
            MigrationParams {
                timeout_s: 60,
                max_downtime_ms: 500,
                allow_postcopy: true,
                converge: policy.converge,
                ..MigrationParams::default()
            }
        );
    }
}
