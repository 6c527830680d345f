//! The cluster model: hosts, networks, storage pools, guests and policy, and the cluster
//! file (TOML) that holds them — the analogue of Oracle Exadata's `es.xml`.
//!
//! Everything here is pure data: loading, validating and saving. Nothing talks to a host.
#![warn(missing_docs)]

mod agent;
mod clock;
mod cluster;
mod converge;
mod guest;
pub mod inventory;
mod store;
mod units;

pub use agent::AgentConfig;
pub use clock::now_ms;
pub use cluster::{
    write_atomic, Cluster, ClusterMeta, HostEntry, ModelError, NetworkEntry, Policy, PoolEntry, PoolKind, TlsFiles,
    LEASE_TTL_RANGE_S,
};
pub use converge::{Converge, ConvergeParseError};
pub use guest::{valid_name, BootSource, DesiredState, DiskSpec, GuestSpec, NicSpec};
pub use store::{valid_namespace, StoreEntry, StoreKind};
pub use units::{parse_duration_ms, parse_rate_bytes_per_s, parse_size_mib, UnitError};
