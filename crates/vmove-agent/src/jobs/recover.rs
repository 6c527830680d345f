//! Which way a recovery goes.
use vmove_api::{ErrorCode, GuestState, JobRecord, Request};
use vmove_plan::{MigrationRecord, Mode, Step};

use super::Jobs;
use crate::error::{fail, Result};
use crate::peer::PEER_TIMEOUT;

/// The migration record to recover and whether to go forward (finish on the target) or
/// back (roll back to the source).
///
/// Forward when the definition already moved (MIGRATE_GUEST completed), in OFFLINEFORCE
/// (the source is not to be relied on), or when a live guest already runs here. Back
/// otherwise, which needs the source to answer with the guest still defined there; if the
/// source answers that it no longer has the guest and the guest is defined here, forward.
pub(super) async fn decide(jobs: &Jobs, old: &JobRecord) -> Result<(MigrationRecord, bool)> {
    if old.status == vmove_api::JobStatus::Running {
        fail!(WrongState, "job {} is still running; cancel it first", old.id);
    }
    let guest = old.spec.guest.name.clone();
    if let Some(j) = jobs.running_for(&guest) {
        fail!(Busy, "guest {guest} is busy with job {j}");
    }
    let Some(mig) = jobs.load_mig(&guest).await? else { fail!(NotFound, "no migration record for guest {guest}") };
    if mig.finished {
        fail!(
            WrongState,
            "nothing to recover: the migration of {guest} {}",
            if mig.rolled_back { "was rolled back" } else { "completed" }
        );
    }
    let runs_here = jobs.agent.show(&guest).is_ok_and(|s| s.state == GuestState::Running);
    if mig.completed.contains(&Step::MigrateGuest) || mig.mode == Mode::OfflineForce || (mig.mode == Mode::Live && runs_here) {
        return Ok((mig, true));
    }
    let peer = jobs.peer(&old.spec)?;
    match peer.call(&Request::PeerGuest { name: guest.clone(), claim: None }, PEER_TIMEOUT).await {
        Ok(_) => Ok((mig, false)),
        Err(e) if e.code == ErrorCode::NotFound && jobs.agent.spec(&guest).is_some() => Ok((mig, true)),
        Err(e) => fail!(
            Unreachable,
            "cannot roll back: the source {} must answer ({}); retry when it is back",
            old.spec.source.name,
            e.message
        ),
    }
}
