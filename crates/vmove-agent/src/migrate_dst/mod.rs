//! Live migration, the target's half (`dst`): LIVE MIGRATE_GUEST. The target starts an
//! incoming QEMU ([`setup`]), asks the source to migrate into it and follows the progress,
//! climbing the convergence ladder when the migration does not converge on its own
//! ([`follow`]), and once the guest runs here announces it and ends the source's QEMU
//! ([`switchover`]; see [`crate::migrate_src`] for the protocol). Its undo, used while the
//! guest still runs on the source, cancels the source's migration and removes the incoming
//! QEMU. Once post-copy has started there is no undo: the guest runs here.
use std::time::Duration;

use async_trait::async_trait;
use vmove_api::{ErrorCode, EventKind, GuestState, Request};
use vmove_qmp::AnnounceParameters;

use crate::error::{fail, Result, ResultExt};
use crate::steps::{take_definition, StepCx, StepWork};

mod follow;
mod pause;
mod setup;

pub(crate) use setup::sample_dirty_rate_early;
mod switchover;

/// How long a forward run waits for a source still in post-copy to complete before it
/// gives up ending the source's QEMU.
const POSTCOPY_FINISH_WAIT: Duration = Duration::from_secs(300);

/// How long the switchover keeps asking a source that refuses to end its QEMU for another
/// reason (its store unreachable for a moment, say) before it leaves the QEMU to the
/// source agent's fencing at its restart. Longer than a store lease's TTL: a source cut off
/// from its store for longer has fenced its guests by then.
const SOURCE_FINISH_WAIT: Duration = Duration::from_secs(60);

/// Asks the source to end its QEMU once the guest runs here (`PeerMigrateFinish`), again
/// and again until it confirms or `postcopy_wait` (for a source still in post-copy, which
/// refuses with `wrong_state` until its last pages are sent) or [`SOURCE_FINISH_WAIT`] (any
/// other refusal) runs out. One refusal must not be the end of it: the source's paused QEMU
/// would stay behind. The first refusal of the second kind is a job event.
async fn finish_source(cx: &StepCx<'_>, name: &str, postcopy_wait: Duration) -> Result<serde_json::Value> {
    let ask = Request::PeerMigrateFinish { name: name.to_string() };
    let start = tokio::time::Instant::now();
    let mut said = false;
    loop {
        let e = match cx.peer.call(&ask, Duration::from_secs(30)).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let waited = start.elapsed();
        let budget = if e.code == ErrorCode::WrongState { postcopy_wait } else { SOURCE_FINISH_WAIT };
        if waited >= budget {
            return Err(e);
        }
        if e.code != ErrorCode::WrongState && !said {
            said = true;
            let message = format!(
                "the source has not ended its QEMU yet ({}): asking again for up to {} s",
                e.message,
                SOURCE_FINISH_WAIT.as_secs()
            );
            cx.cell.emit(&cx.agent().state, EventKind::Info { message }).await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// LIVE MIGRATE_GUEST.
pub struct MemoryMigration;

#[async_trait]
impl StepWork for MemoryMigration {
    async fn run(&self, cx: &StepCx<'_>) -> Result<String> {
        let (agent, name) = (cx.agent(), cx.guest().to_string());
        if agent.spec(&name).is_some() && agent.show(&name)?.state == GuestState::Running {
            // The switchover happened while nobody watched (e.g. this agent restarted):
            // end the source's paused QEMU and announce. In post-copy the source has not
            // completed until the last pages have come over: it refuses (`wrong_state`)
            // until then, and is asked again.
            let finish = finish_source(cx, &name, POSTCOPY_FINISH_WAIT).await;
            if let Ok((q, _)) = agent.qmp_of(&name) {
                q.announce_self(&AnnounceParameters::default()).await.ctx("announce-self")?;
            }
            return Ok(match finish {
                Ok(_) => format!("guest already runs on {}; source QEMU ended", agent.name()),
                Err(e) => format!("guest already runs on {}; source not confirmed ({e})", agent.name()),
            });
        }
        take_definition(agent, cx.spec).await?;
        let prepared = setup::prepare(cx).await?;
        let done = follow::follow(cx, prepared).await?;
        switchover::switched_over(cx, done).await
    }

    async fn undo(&self, cx: &StepCx<'_>) -> Result<String> {
        let name = cx.guest().to_string();
        let cancel = cx.peer.call(&Request::PeerMigrateCancel { name: name.clone() }, Duration::from_secs(40)).await;
        if let Err(e) = &cancel {
            if e.code == ErrorCode::WrongState {
                fail!(WrongState, "{}; the guest moved: run `vmove job recover` to go forward", e.message);
            }
        }
        let note = abort_incoming(cx).await?;
        match cancel {
            Ok(_) => Ok(format!("{note}; the migration was cancelled on {}", cx.spec.source.name)),
            Err(e) => Err(e.context(format!("{note}, but {} did not confirm that it stopped migrating", cx.spec.source.name))),
        }
    }
}

/// Removes the incoming QEMU, the definition and the taps of a migration that did not
/// switch over. Refuses when the guest already runs here.
async fn abort_incoming(cx: &StepCx<'_>) -> Result<String> {
    let (agent, name) = (cx.agent(), cx.guest());
    if agent.spec(name).is_none() {
        agent.unplug_taps(&cx.spec.guest).await;
        return Ok(format!("nothing of {name} on {}", agent.name()));
    }
    let st = agent.show(name)?;
    if st.state == GuestState::Running {
        fail!(WrongState, "guest {name} already runs on {}: the migration completed; recover forward", agent.name());
    }
    if st.pid.is_some() {
        agent.stop(name, true, Duration::from_secs(15)).await?;
    }
    agent.forget(name).await?;
    Ok(format!("incoming guest removed from {}", agent.name()))
}
