//! The agent in a fleet: its place in the cluster's shared store (etcd), kept by a lease.
//!
//! With the etcd store every agent keeps one lease alive ([`vmove_store::Lease`], TTL from
//! the cluster's policy) and attaches to it everything that must not outlive it (key layout
//! in `vmove_registry`):
//!
//! - `members/<host>`: this host is alive (what `host evacuate` waits on);
//! - `owners/<guest>`: the one host that may run the guest (taken with its volume leases
//!   where a guest starts, passed at a live migration's switchover, released where its
//!   volumes are), kept by [`crate::leases::Leases`] like a volume's lease;
//! - `leases/<pool>/<volume>`: volume leases;
//! - `migrations/<guest>`: the one job migrating the guest (claimed when the target accepts
//!   the job, released when it ends).
//!
//! Every claim is a transaction comparing revisions (`Absent`, or the revision read), so
//! two hosts never both hold one key. The job index (`jobs/<id>`) and guest placement
//! (`cluster/guests/<guest>`) are plain keys: one truth for every operator.
//!
//! The lease's health drives self-fencing ([`fence`]).
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use vmove_api::JobBrief;
use vmove_model::GuestSpec;
use vmove_registry::{keys, JobIndex, Member, MigrationClaim, RegistryError};
use vmove_store::{put_record, Lease, LeaseHealth, LeaseId, LeasePolicy, LeaseStore, Precondition, StateStore};

use crate::error::{AgentError, Result};

pub mod fence;

/// This agent's lease and the cluster's shared store.
pub struct Fleet {
    kv: Arc<dyn StateStore>,
    ls: Arc<dyn LeaseStore>,
    host: String,
    address: String,
    policy: LeasePolicy,
    lease: Mutex<Arc<Lease>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("host", &self.host).field("lease", &self.lease_id()).finish_non_exhaustive()
    }
}

impl From<RegistryError> for AgentError {
    fn from(e: RegistryError) -> AgentError {
        match e {
            RegistryError::Store(s) => s.into(),
            RegistryError::Claimed(_) => AgentError::busy(vmove_api::one_line(&e)),
            other => AgentError::new(vmove_api::ErrorCode::StateWrite, vmove_api::one_line(&other)),
        }
    }
}

impl Fleet {
    /// Grants this host's lease on `store` (the same store as both views) and registers
    /// the host as a member.
    pub async fn join<S: LeaseStore + 'static>(store: Arc<S>, host: &str, address: &str, policy: LeasePolicy) -> Result<Arc<Fleet>> {
        let (kv, ls): (Arc<dyn StateStore>, Arc<dyn LeaseStore>) = (store.clone(), store);
        let lease = Lease::grant(ls.clone(), policy).await.map_err(|e| AgentError::from(e).context("grant this host's lease"))?;
        let fleet = Fleet { kv, ls, host: host.into(), address: address.into(), policy, lease: Mutex::new(Arc::new(lease)) };
        fleet.register().await?;
        tracing::info!(lease = %fleet.lease_id(), ttl = ?fleet.policy.ttl, "joined the cluster's store");
        Ok(Arc::new(fleet))
    }

    /// The shared store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.kv
    }

    /// This host's name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The lease policy.
    pub fn policy(&self) -> LeasePolicy {
        self.policy
    }

    fn current(&self) -> Arc<Lease> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The lease in force.
    pub fn lease_id(&self) -> LeaseId {
        self.current().id()
    }

    /// The health of the lease in force, and a watch of it.
    pub fn subscribe(&self) -> (LeaseId, watch::Receiver<LeaseHealth>) {
        let l = self.current();
        (l.id(), l.subscribe())
    }

    /// The shared store, with its leases (to write keys attached to a lease: this host's,
    /// or a holder's it writes for).
    pub fn lease_store(&self) -> &Arc<dyn LeaseStore> {
        &self.ls
    }

    /// `members/<host>`, attached to the lease in force (a restarted agent's or a new
    /// lease's key replaces the old one).
    pub async fn register(&self) -> Result<()> {
        let l = self.current();
        let m = Member {
            host: self.host.clone(),
            address: self.address.clone(),
            lease: l.id().0,
            ttl_s: l.ttl().as_secs(),
            since_ms: crate::now_ms(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
        };
        let key = keys::member(&self.host);
        let bytes = vmove_store::encode_record(&key, &m)?;
        l.put(&key, bytes, Precondition::Any).await.map_err(|e| AgentError::from(e).context("register as a member"))?;
        Ok(())
    }

    /// After the lease was lost: grants a new one and registers again. The caller claims
    /// again what it holds ([`fence`]).
    pub async fn regrant(&self) -> Result<LeaseId> {
        let lease = Lease::grant(self.ls.clone(), self.policy).await.map_err(|e| AgentError::from(e).context("grant a new lease"))?;
        let id = lease.id();
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(lease);
        self.register().await?;
        tracing::warn!(lease = %id, "a new lease");
        Ok(id)
    }

    /// Claims the migration of a guest for a job (attached to this host's lease): of two
    /// jobs exactly one gets it; the other's error (`busy`) names the winner.
    pub async fn claim_migration(&self, claim: &MigrationClaim) -> Result<()> {
        let key = keys::migration(&claim.guest);
        let lease = self.lease_id();
        vmove_registry::claim_migration(self.kv.as_ref(), claim, |b, cond| self.ls.put_with_lease(&key, b, cond, lease)).await?;
        Ok(())
    }

    /// Ends a job's claim on a guest.
    pub async fn release_migration(&self, guest: &str, job: &str) -> Result<()> {
        vmove_registry::release_migration(self.kv.as_ref(), guest, job).await?;
        Ok(())
    }

    /// The highest job number of this host's jobs in the cluster's index (0 if none): a
    /// host whose own state was lost never hands out a job id again.
    pub async fn max_job_number(&self) -> Result<u64> {
        let prefix = keys::job(&format!("{}-", self.host));
        let entries = self.kv.list(&prefix).await?;
        Ok(entries.iter().filter_map(|e| e.key.strip_prefix(&prefix).and_then(|n| n.parse::<u64>().ok())).max().unwrap_or(0))
    }

    /// Updates a job in the cluster's index.
    pub async fn index_job(&self, brief: &JobBrief) -> Result<()> {
        put_record(self.kv.as_ref(), &keys::job(&brief.id), &JobIndex(brief.clone()), Precondition::Any).await?;
        Ok(())
    }

    /// Records where a guest is (its definition with `host` set).
    pub async fn place_guest(&self, spec: &GuestSpec, host: &str) -> Result<()> {
        let g = GuestSpec { host: host.to_string(), ..spec.clone() };
        vmove_registry::put_guest(self.kv.as_ref(), &g).await?;
        Ok(())
    }
}
