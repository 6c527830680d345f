//! Membership: which hosts' agents hold a lease, and waiting for a host's to expire.
//!
//! # How `host evacuate` uses it
//!
//! A host whose agent died or lost etcd stops renewing its lease; etcd expires it after
//! its TTL and deletes every key attached to it: `members/<host>`, the ownership of its
//! guests, its volume leases and its migration claims. Before it moves a dead host's guests
//! elsewhere (forced offline migrations), evacuate calls
//! `wait_host_dead(store, host, dead_wait(&cluster.policy))`:
//!
//! - `Ok(HostDead)`: the host's membership key is gone (now, or after waiting): its lease
//!   expired, so its guests' ownership and volume leases are free, and the host itself
//!   paused its guests before that happened (self-fencing). Evacuate goes on; the forced
//!   migrations' lease takeovers succeed (the keys are gone, nothing to take over).
//! - `Err(RegistryError::HostAlive { .. })`: the host kept renewing for the whole wait: it
//!   is alive (perhaps only the operator cannot reach it). Evacuate refuses; no operator
//!   word overrides a live lease.
//! - another error: the store did not answer; evacuate refuses.
//!
//! With the file store there are no leases and no membership: evacuate keeps asking the
//! operator's word (its `host_is_dead` without etcd).
use std::time::Duration;

use tokio::time::Instant;
use vmove_model::Policy;
use vmove_store::{get_record, list_records, wait_until_gone, StateStore};

use crate::keys::{member, MEMBERS};
use crate::{Member, RegistryError, Result};

/// What [`wait_host_dead`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDead {
    /// How long it waited for the membership key to go (zero if it was gone already).
    pub waited: Duration,
    /// The membership it saw before the key went (`None`: the host was not a member when
    /// the wait began).
    pub last_seen: Option<Member>,
}

/// How long to wait for a dead host's lease under a policy: twice the TTL and 5 s (a new
/// etcd leader restarts every countdown once; the rest is margin).
pub fn dead_wait(policy: &Policy) -> Duration {
    Duration::from_secs(policy.lease_ttl_s.saturating_mul(2).saturating_add(5))
}

/// Every member, sorted by host.
pub async fn list_members(store: &dyn StateStore) -> Result<Vec<Member>> {
    Ok(list_records::<Member>(store, MEMBERS).await?.into_iter().map(|(_, m, _)| m).collect())
}

/// Waits until `host` is no member: its agent's lease has expired (or been revoked) and
/// the keys attached to it are gone. Returns at once if it is no member now.
/// [`RegistryError::HostAlive`] if it still is after `timeout`.
pub async fn wait_host_dead(store: &dyn StateStore, host: &str, timeout: Duration) -> Result<HostDead> {
    let key = member(host);
    let start = Instant::now();
    let last_seen = get_record::<Member>(store, &key).await?.map(|(m, _)| m);
    if last_seen.is_none() {
        return Ok(HostDead { waited: Duration::ZERO, last_seen });
    }
    match tokio::time::timeout(timeout, wait_until_gone(store, &key)).await {
        Ok(Ok(())) => Ok(HostDead { waited: start.elapsed(), last_seen }),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => {
            let now = get_record::<Member>(store, &key).await?.map(|(m, _)| m).or(last_seen);
            Err(RegistryError::HostAlive {
                host: host.into(),
                waited: start.elapsed(),
                lease: now.as_ref().map_or(0, |m| m.lease),
                ttl_s: now.as_ref().map_or(0, |m| m.ttl_s),
            })
        }
    }
}
