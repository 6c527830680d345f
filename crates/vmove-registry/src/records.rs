//! The records of the shared keys.
use serde::{Deserialize, Serialize};
use vmove_api::JobBrief;
use vmove_model::{Cluster, ClusterMeta, GuestSpec, HostEntry, NetworkEntry, Policy, PoolEntry};
use vmove_store::Record;

/// `members/<host>`: the host's agent is alive (the key is attached to its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The host.
    pub host: String,
    /// Its agent's address.
    pub address: String,
    /// The agent's lease (etcd's lease ID).
    pub lease: i64,
    /// The lease's TTL, seconds.
    pub ttl_s: u64,
    /// When this lease was granted, unix ms.
    pub since_ms: u64,
    /// The agent's version.
    pub agent_version: String,
}
impl Record for Member {
    const KIND: &'static str = "member";
    const VERSION: u32 = 1;
}

/// `migrations/<guest>`: the one job migrating the guest (attached to the target's lease,
/// removed when the job ends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationClaim {
    /// The guest.
    pub guest: String,
    /// The job (`<target>-<n>`).
    pub job: String,
    /// `live`, `offline`, `offlineforce`, or `recovery`.
    pub mode: String,
    /// The source host.
    pub source: String,
    /// The target host, which runs the job.
    pub target: String,
    /// Since when, unix ms.
    pub since_ms: u64,
}
impl Record for MigrationClaim {
    const KIND: &'static str = "migration-claim";
    const VERSION: u32 = 1;
}

/// `jobs/<id>`: a job of the cluster as `vmove job list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobIndex(pub JobBrief);
impl Record for JobIndex {
    const KIND: &'static str = "job-index";
    const VERSION: u32 = 1;
}

/// `cluster/meta`: the cluster without its guests (they have a key each) and without
/// what is each operator's own (TLS files, the store section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterDef {
    /// Identity.
    pub cluster: ClusterMeta,
    /// Policy.
    pub policy: Policy,
    /// Hosts.
    pub hosts: Vec<HostEntry>,
    /// Networks.
    pub networks: Vec<NetworkEntry>,
    /// Storage pools.
    pub pools: Vec<PoolEntry>,
}
impl Record for ClusterDef {
    const KIND: &'static str = "cluster";
    const VERSION: u32 = 1;
}

impl ClusterDef {
    /// The shared part of a cluster file.
    pub fn of(c: &Cluster) -> ClusterDef {
        ClusterDef {
            cluster: c.cluster.clone(),
            policy: c.policy.clone(),
            hosts: c.hosts.clone(),
            networks: c.networks.clone(),
            pools: c.pools.clone(),
        }
    }
}

/// `cluster/guests/<guest>`: a guest's definition; its `host` is where it is placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GuestEntry(pub GuestSpec);
impl Record for GuestEntry {
    const KIND: &'static str = "guest";
    const VERSION: u32 = 1;
}
