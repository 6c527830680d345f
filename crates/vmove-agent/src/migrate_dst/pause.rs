//! The memory migration's pre-switchover pause (QEMU's `pause-before-switchover`): taken
//! for the test hook `--pause-at-switchover`, and always when local volumes are copied,
//! since their mirrors must be finished while both guests are stopped (before the target
//! resumes, see [`crate::storage::dst::finish_at_switchover`]).
use std::time::Duration;

use vmove_api::{EventKind, Request};

use crate::error::{fail, Result, ResultExt};
use crate::peer::PEER_TIMEOUT;
use crate::steps::StepCx;

/// How often the target asks the source about the memory migration when volumes are
/// copied: the guest is paused from the moment the source reaches pre-switchover until the
/// target has finished the copy, so the pause is noticed sooner.
pub(super) const POLL_COPYING: Duration = Duration::from_millis(100);

/// At pre-switchover (the source's CPUs stopped, its disks still active, no device state
/// sent): the test hook holds until resumed; the copy of the local volumes is finished;
/// then the source goes on to the switchover.
pub(super) async fn at_pre_switchover(cx: &StepCx<'_>, hook: bool, copying: bool) -> Result<()> {
    let name = cx.guest().to_string();
    if hook {
        cx.cell.emit(&cx.agent().state, EventKind::Info { message: "paused at switchover (test hook)".into() }).await?;
        if !cx.cell.wait_resumed().await {
            fail!(Cancelled, "cancelled by the operator at switchover; the guest keeps running on {}", cx.spec.source.name);
        }
    }
    if copying {
        crate::storage::dst::finish_at_switchover(cx).await?;
    }
    cx.peer.call(&Request::PeerMigrateContinue { name }, PEER_TIMEOUT).await.ctx("continue at switchover")?;
    Ok(())
}
