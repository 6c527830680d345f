//! Source claims: a source serves one migration of a guest at a time. The first call of a
//! migration job (`peer_guest` with a claim) claims the guest on the source until the
//! migration ends (finish, undefine, cancel, rollback). Claims are kept in the store
//! (`claims/<guest>`), so they survive an agent restart.
use vmove_store::{get_record, put_record, Precondition, StoreError};

use crate::error::{fail, Result};
use crate::guests::Agent;
use crate::jobs::Jobs;
use crate::state::{claim_key, Claim};

impl Agent {
    /// Which migration holds `guest` on this host, if any.
    pub async fn claimed_by(&self, guest: &str) -> Result<Option<String>> {
        Ok(self.state.get::<Claim>(&claim_key(guest)).await?.map(|c| c.by))
    }

    /// Ends the claim on `guest`.
    pub async fn unclaim(&self, guest: &str) -> Result<()> {
        self.state.delete(&claim_key(guest)).await
    }
}

/// Claims `guest` on this (source) host for the migration `by`: refused while this host is
/// itself the target of a job for the guest, or another migration holds it.
pub async fn claim(jobs: &Jobs, guest: &str, by: &str) -> Result<()> {
    let agent = &jobs.agent;
    if let Some(id) = jobs.running_for(guest) {
        fail!(Busy, "guest {guest} is itself being migrated to {} by job {id}", agent.cfg.name);
    }
    let store = agent.state.store().as_ref();
    let key = claim_key(guest);
    let (cond, current) = match get_record::<Claim>(store, &key).await? {
        Some((c, rev)) => (Precondition::Revision(rev), Some(c)),
        None => (Precondition::Absent, None),
    };
    if let Some(c) = &current {
        if c.by != by {
            fail!(Busy, "guest {guest} is already being migrated away from {} by {}", agent.cfg.name, c.by);
        }
        return Ok(());
    }
    match put_record(store, &key, &Claim { by: by.to_string(), since_ms: crate::now_ms() }, cond).await {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict { .. }) => {
            let other = agent.claimed_by(guest).await?.unwrap_or_default();
            if other == by {
                return Ok(());
            }
            fail!(Busy, "guest {guest} is already being migrated away from {} by {other}", agent.cfg.name)
        }
        Err(e) => Err(e.into()),
    }
}
