//! The agent's own configuration file (`vmoved --config FILE`).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ModelError, NetworkEntry, PoolEntry, StoreEntry};

/// `vmoved` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Host name (matches the cluster file and the host certificate).
    pub name: String,
    /// Listen address, `IP:PORT`.
    pub listen: String,
    /// Accelerator: `kvm`, `tcg` or `auto`.
    pub accel: String,
    /// Durable state (guest definitions, journal).
    pub state_dir: PathBuf,
    /// Runtime files (QMP sockets, logs, pid files).
    pub run_dir: PathBuf,
    /// Cluster CA certificate.
    pub ca: PathBuf,
    /// This host's certificate.
    pub cert: PathBuf,
    /// This host's key.
    pub key: PathBuf,
    /// Memory kept for the host, MiB.
    #[serde(default = "default_reserve")]
    pub memory_reserve_mib: u64,
    /// Report at most this much memory, MiB (lab hosts share one machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mib: Option<u64>,
    /// Hardware model reported (default: DMI product name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_model: Option<String>,
    /// Hardware generation reported.
    #[serde(default)]
    pub hardware_generation: u32,
    /// Console TCP ports handed out, inclusive.
    #[serde(default = "default_console_ports")]
    pub console_ports: (u16, u16),
    /// Lab image: kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab_kernel: Option<PathBuf>,
    /// Lab image: initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab_initrd: Option<PathBuf>,
    /// Honour `inject_fault` in job requests (labs and tests only).
    #[serde(default)]
    pub allow_fault_injection: bool,
    /// Serve Prometheus metrics over plain HTTP on this `IP:PORT` (`/metrics`); none by
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Storage pools on this host.
    #[serde(default)]
    pub pools: Vec<PoolEntry>,
    /// Networks this host serves (bridges it may create).
    #[serde(default)]
    pub networks: Vec<NetworkEntry>,
    /// Where the agent keeps its state: files in `state_dir` (the default) or etcd (its
    /// namespace is the cluster's; this host's certificate is the client certificate).
    #[serde(default, skip_serializing_if = "StoreEntry::is_file")]
    pub store: StoreEntry,
    /// TTL of the agent's etcd lease, seconds (etcd store only; the cluster's
    /// `policy.lease_ttl_s`).
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_s: u64,
}

fn default_lease_ttl() -> u64 {
    10
}

fn default_reserve() -> u64 {
    256
}
fn default_console_ports() -> (u16, u16) {
    (5900, 5999)
}

impl AgentConfig {
    /// Loads and checks the configuration.
    pub fn load(path: &Path) -> Result<AgentConfig, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
        let cfg: AgentConfig =
            toml::from_str(&text).map_err(|e| ModelError::Parse { path: path.into(), message: e.message().to_string() })?;
        cfg.validate().map_err(|message| ModelError::Invalid { path: path.into(), message })?;
        Ok(cfg)
    }

    /// Checks the store section: an etcd store names its namespace (the agent does not
    /// know the cluster's name) and a lease TTL in range.
    pub fn validate(&self) -> Result<(), String> {
        self.store.validate("store")?;
        if self.store.kind == crate::StoreKind::Etcd {
            if self.store.namespace.is_none() {
                return Err("store.namespace: an agent's etcd store names the cluster's namespace".into());
            }
            let range = crate::cluster::LEASE_TTL_RANGE_S;
            if !range.contains(&self.lease_ttl_s) {
                return Err(format!(
                    "lease_ttl_s: {} is not within {}..={} seconds",
                    self.lease_ttl_s,
                    range.start(),
                    range.end()
                ));
            }
        }
        Ok(())
    }

    /// Saves the configuration.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let text = toml::to_string_pretty(self).map_err(|e| ModelError::Invalid { path: path.into(), message: e.to_string() })?;
        crate::cluster::write_atomic(path, text.as_bytes()).map_err(|source| ModelError::Io { path: path.into(), source })
    }
}
