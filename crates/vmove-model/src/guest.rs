//! A guest's definition: what a host needs to run it.
use serde::{Deserialize, Serialize};

/// How the guest boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BootSource {
    /// Direct kernel boot of the lab image (Debian cloud kernel + vmove initramfs).
    Lab {
        /// Memory dirty rate of the lab workload, MB/s (0 = idle).
        #[serde(default)]
        dirty_mb_s: u32,
        /// Working set of the lab workload's memory dirtier, MiB.
        #[serde(default = "default_wss")]
        wss_mib: u32,
        /// Data-disk write rate of the lab workload onto its first disk, MB/s (0 = none
        /// besides the disk log).
        #[serde(default, skip_serializing_if = "is_zero")]
        disk_mb_s: u32,
    },
    /// Boot from a bootable disk volume (the guest's first disk).
    Disk,
}

fn default_wss() -> u32 {
    64
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// What the operator wants the guest to be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    /// Running.
    #[default]
    Running,
    /// Cleanly stopped.
    Stopped,
}

/// One virtual NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// Cluster network the NIC is attached to (its bridge has the same name on every host).
    pub network: String,
    /// MAC address, `52:54:00:xx:xx:xx`.
    pub mac: String,
    /// IPv4 address with prefix, told to the lab image on its kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// One virtual disk: a volume (a file) in a storage pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Storage pool name.
    pub pool: String,
    /// Volume name (a file in the pool).
    pub volume: String,
    /// Size in MiB, used when the volume is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mib: Option<u64>,
}

/// A guest's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestSpec {
    /// Guest name, unique in the cluster.
    pub name: String,
    /// Host the guest lives on.
    pub host: String,
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// QEMU CPU model (`-cpu`).
    #[serde(default = "default_cpu_model")]
    pub cpu_model: String,
    /// How the guest boots.
    pub boot: BootSource,
    /// Desired state.
    #[serde(default)]
    pub desired: DesiredState,
    /// NICs, in guest order.
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// Disks, in guest order.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// Serial console TCP port on the host, if one was assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_port: Option<u16>,
    /// Anti-affinity group: the placement planner keeps two guests of one group on
    /// different hosts whenever another host fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The CPU model used when none is given.
pub fn default_cpu_model() -> String {
    "qemu64".to_string()
}

/// Whether `s` is a valid name for a guest, a volume or an anti-affinity group: 1 to 64
/// letters, digits, `-`, `_` or `.`, not starting with `.`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl GuestSpec {
    /// Every MAC address of the guest.
    pub fn macs(&self) -> impl Iterator<Item = &str> {
        self.nics.iter().map(|n| n.mac.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["db", "vm-1.example_2", "a", &"x".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "../etc", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
