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

#[cfg(test)]
mod tests {
    use vmove_registry::{keys, Member, RegistryError};
    use vmove_store::testing::TestEtcd;
    use vmove_store::{Lease, LeasePolicy, Precondition};

    use super::*;

    /// A cluster file of `dir` for the test etcd (its CA, a client certificate), with
    /// `namespace` and one guest.
    fn cluster_file(etcd: &TestEtcd, dir: &std::path::Path, namespace: &str) -> std::path::PathBuf {
        let pki = etcd.pki();
        std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(dir.join("op.pem"), &pki.client.cert_pem).unwrap();
        std::fs::write(dir.join("op.key"), &pki.client.key_pem).unwrap();
        let text = crate::testutil::SAMPLE
            .replace("pki/ca.pem", "ca.pem")
            .replace("pki/operator.pem", "op.pem")
            .replace("/etc/vmove/operator.key", "op.key")
            .replacen(
                "[[hosts]]",
                &format!("[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\nnamespace = \"{namespace}\"\n\n[[hosts]]", etcd.endpoint()),
                1,
            );
        let path = dir.join("cluster.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Two operators with two cluster files on one etcd: one truth (guests, placement);
    /// `wait_host_dead` on a host that renews, one that stops, one that never joined.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_operators_one_truth_and_waiting_for_a_dead_host() {
        let etcd = TestEtcd::start().await.unwrap();
        let ns = TestEtcd::unique_namespace();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let op1 = Ctx::new(cluster_file(&etcd, d1.path(), &ns), false);
        let op2 = Ctx::new(cluster_file(&etcd, d2.path(), &ns), false);
        let e = op1.cluster().await.unwrap_err();
        assert!(format!("{e:#}").contains("holds no cluster yet"), "{e:#}");
        let file = op1.file().unwrap();
        let store = op1.store(&file).await.unwrap();
        vmove_registry::import(store.as_ref(), &file, vmove_registry::Import::New).await.unwrap();

        // vm1 moves (its agent records it); op2, whose file says nothing of it, sees it.
        let c1 = op1.cluster().await.unwrap();
        let mut g = c1.guest("vm1").unwrap().clone();
        g.host = "host2".into();
        vmove_registry::put_guest(store.as_ref(), &g).await.unwrap();
        // op1 stops vm1 (a change of its definition): recorded in the store, not the file.
        let stopped = vmove_model::DesiredState::Stopped;
        op1.update_cluster(|c| c.guest_mut("vm1").map(|g| g.desired = stopped).is_some()).await.unwrap();
        let c2 = op2.cluster().await.unwrap();
        assert_eq!(c2.guest("vm1").map(|g| (g.host.as_str(), g.desired)), Some(("host2", stopped)));
        assert_eq!(c2.path, d2.path().join("cluster.toml"));
        assert!(vmove_model::Cluster::load(&op1.cluster_path).unwrap().guest("vm1").unwrap().host == "host1", "the file is untouched");

        // host1 renews a lease; host2 never joined.
        let lease = Lease::grant(store.clone(), LeasePolicy::with_ttl(Duration::from_secs(2))).await.unwrap();
        let m = Member { host: "host1".into(), address: "a:1".into(), lease: lease.id().0, ttl_s: 2, since_ms: 0, agent_version: "t".into() };
        lease.put(&keys::member("host1"), vmove_store::encode_record("m", &m).unwrap(), Precondition::Absent).await.unwrap();
        assert_eq!(members(&op2, &c2).await.unwrap().len(), 1);
        let e = wait_host_dead(&op2, &c2, "host1", Some(Duration::from_millis(300))).await.unwrap_err();
        assert!(matches!(e.root_cause().downcast_ref::<RegistryError>(), Some(RegistryError::HostAlive { .. })), "{e:#}");
        let never = wait_host_dead(&op2, &c2, "host2", None).await.unwrap().unwrap();
        assert_eq!(never.last_seen, None);
        lease.abandon();
        let dead = wait_host_dead(&op2, &c2, "host1", None).await.unwrap().unwrap();
        assert_eq!(dead.last_seen.map(|m| m.host), Some("host1".to_string()));
        assert!(wait_host_dead(&op2, &c2, "host9", None).await.is_err(), "not a host of the cluster");

        // The file store: no leases, the operator's word is needed.
        let plain = crate::testutil::cluster();
        assert!(wait_host_dead(&op2, &plain, "host1", None).await.unwrap().is_none());
    }
}
