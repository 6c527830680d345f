//! The CLI's side of the cluster on etcd: the primitive `host evacuate` uses to know that a
//! host is dead ([`wait_host_dead`]), and the member list.
//!
//! # For `host evacuate` (`host_is_dead(cluster, host)`)
//!
//! ```ignore
//! match crate::fleet_store::wait_host_dead(ctx, &cluster, host, None).await? {
//!     // etcd: the host's lease expired; its guests are paused there and their ownership
//!     // and volume leases are free: move them (forced offline migrations).
//!     Some(dead) => { /* dead.waited, dead.last_seen */ }
//!     // The file store has no leases: ask for the operator's word, as before.
//!     None => { /* --i-know-it-is-dead */ }
//! }
//! // Err: the host is alive (it renewed its lease for the whole wait:
//! // `vmove_registry::RegistryError::HostAlive`), or etcd did not answer: refuse.
//! ```
//!
//! The wait is `vmove_registry::dead_wait(&cluster.policy)` unless given: twice the lease
//! TTL and 5 s, so a dead host is known dead at most about one TTL after its last renewal.
use std::time::Duration;

use anyhow::{Context, Result};
use vmove_model::Cluster;
use vmove_registry::{HostDead, Member};

use crate::ctx::Ctx;

/// Waits until `host`'s etcd lease has expired (its membership key is gone), for at most
/// `timeout` (default: [`vmove_registry::dead_wait`] of the cluster's policy).
///
/// `Ok(None)` with the file store (no leases: the caller needs the operator's word);
/// `Ok(Some(_))` once the host is dead; an error if it is still alive after the wait
/// (`vmove_registry::RegistryError::HostAlive`, kept as the error's root) or etcd fails.
pub async fn wait_host_dead(ctx: &Ctx, cluster: &Cluster, host: &str, timeout: Option<Duration>) -> Result<Option<HostDead>> {
    if cluster.store.is_file() {
        return Ok(None);
    }
    if cluster.host(host).is_none() {
        anyhow::bail!("no host named {host} in {}", ctx.truth(cluster));
    }
    let store = ctx.store(cluster).await?;
    let wait = timeout.unwrap_or_else(|| vmove_registry::dead_wait(&cluster.policy));
    let dead = vmove_registry::wait_host_dead(store.as_ref(), host, wait)
        .await
        .with_context(|| format!("wait for the lease of {host} to expire"))?;
    Ok(Some(dead))
}

/// The members of the cluster (hosts whose agents hold a lease); empty with the file store.
pub async fn members(ctx: &Ctx, cluster: &Cluster) -> Result<Vec<Member>> {
    if cluster.store.is_file() {
        return Ok(vec![]);
    }
    let store = ctx.store(cluster).await?;
    Ok(vmove_registry::list_members(store.as_ref()).await?)
}
