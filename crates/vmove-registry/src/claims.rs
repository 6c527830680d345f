//! Migration claims (exactly one job migrates a guest) and the job index (every job of the
//! cluster, from any machine).
use vmove_api::JobBrief;
use vmove_store::{get_record, list_records, Precondition, StateStore, StoreError};

use crate::keys::{self, JOBS};
use crate::{JobIndex, MigrationClaim, RegistryError, Result};

/// Claims the migration of `claim.guest` for `claim.job` through `put` (a put of the
/// encoded claim with the given condition, attached to the target's lease by the caller).
/// Of two claimants exactly one wins; the other gets [`RegistryError::Claimed`] naming the
/// winner. Claiming again for the same job succeeds.
pub async fn claim_migration<F, Fut>(store: &dyn StateStore, claim: &MigrationClaim, put: F) -> Result<()>
where
    F: Fn(Vec<u8>, Precondition) -> Fut,
    Fut: std::future::Future<Output = vmove_store::Result<u64>>,
{
    let key = keys::migration(&claim.guest);
    let bytes = vmove_store::encode_record(&key, claim)?;
    for _ in 0..4 {
        let cond = match get_record::<MigrationClaim>(store, &key).await? {
            Some((c, _)) if c.job != claim.job => return Err(RegistryError::Claimed(Box::new(c))),
            // Ours already (a retry, or a new lease re-claiming it): attach it again.
            Some((_, rev)) => Precondition::Revision(rev),
            None => Precondition::Absent,
        };
        match put(bytes.clone(), cond).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    match get_record::<MigrationClaim>(store, &key).await? {
        Some((c, _)) => Err(RegistryError::Claimed(Box::new(c))),
        None => Err(StoreError::Conflict { key, expected: Precondition::Absent, actual: None }.into()),
    }
}

/// Ends `job`'s claim on `guest`, if it holds it; returns whether it did.
pub async fn release_migration(store: &dyn StateStore, guest: &str, job: &str) -> Result<bool> {
    let key = keys::migration(guest);
    match get_record::<MigrationClaim>(store, &key).await? {
        Some((c, rev)) if c.job == job => match store.delete(&key, Precondition::Revision(rev)).await {
            Ok(done) => Ok(done),
            // Changed meanwhile: no longer ours to end.
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        },
        _ => Ok(false),
    }
}

/// Every job of the cluster, oldest first.
pub async fn list_jobs(store: &dyn StateStore) -> Result<Vec<JobBrief>> {
    let mut v: Vec<JobBrief> = list_records::<JobIndex>(store, JOBS).await?.into_iter().map(|(_, JobIndex(b), _)| b).collect();
    v.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then_with(|| a.id.cmp(&b.id)));
    Ok(v)
}
