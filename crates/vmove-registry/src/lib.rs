//! The cluster's shared truth on a state store (etcd for fleets; `MemStore` in tests).
//!
//! With the file store every agent keeps its own state and the cluster file is the
//! operators' truth. With etcd, one store holds what every host and every operator must
//! agree on, under the cluster's namespace (`/vmove/<cluster>/`):
//!
//! | key | record | written by | attached to |
//! |---|---|---|---|
//! | `cluster/meta` | [`ClusterDef`]: name, policy, hosts, networks, pools | `vmove cluster import` | — |
//! | `cluster/guests/<guest>` | [`GuestEntry`]: definition and placement (`host`) | `guest create`, the target agent when a migration moves the guest | — |
//! | `members/<host>` | [`Member`]: the host's agent is alive | the agent, at start and after a new lease | the agent's lease |
//! | `owners/<guest>` | a volume-lease record (the agent's `leases::Lease`) naming the host that may run the guest | the agent (start, incoming, switchover) | the holder's lease |
//! | `leases/<pool>/<volume>` | the same record per volume | the agent | the holder's lease |
//! | `migrations/<guest>` | [`MigrationClaim`]: the one job migrating the guest | the target agent, when it accepts the job | the target's lease |
//! | `jobs/<id>` | [`JobIndex`]: every job of the cluster, its status | the target agent, on every change | — |
//! | `drains/<id>` | a drain or evacuation record (`vmove-cli`'s `drain::record`): plan rows, child jobs, state, cancel flag, runner | the `vmove` process running the drain, `job cancel` | — |
//! | `drain-runners/<id>` | the process running a drain (pid, machine) | that process; whoever takes the drain over once it is gone | the runner's lease |
//!
//! Each agent's own state (guest definitions, runs, jobs and their event logs, migration
//! records, source claims, journal) lives in a sub-namespace of its own,
//! `/vmove/<cluster>/hosts/<host>/` (`vmove_store::EtcdStore::sub_namespace`), apart
//! from the keys above.
//!
//! Keys attached to a lease vanish when the lease expires: a host that died or lost etcd
//! loses its membership, its guests' ownership, its volume leases and its migration claims
//! all at once, and nobody needs an operator's word that it is dead —
//! [`wait_host_dead`] waits for its membership key to go.
#![warn(missing_docs)]

mod claims;
mod cluster;
mod error;
pub mod jobs;
pub mod keys;
mod members;
mod open;
mod records;

pub use claims::{claim_migration, list_jobs, release_migration};
pub use cluster::{export, import, load_cluster, put_guest, put_host, remove_guest, remove_host, Import};
pub use error::{RegistryError, Result};
pub use jobs::{follow_job, JobRec};
pub use members::{dead_wait, list_members, wait_host_dead, HostDead};
pub use open::{open_etcd, read_tls};
pub use records::{ClusterDef, GuestEntry, JobIndex, Member, MigrationClaim};
