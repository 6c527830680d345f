//! Self-fencing: an agent that cannot renew its etcd lease stops its guests from writing
//! before anyone else may take them (as sanlock does with its lease and watchdog).
//!
//! The rule, driven by the lease's health ([`vmove_store::LeaseHealth`]):
//!
//! - **`RenewingLate`** (renewals have failed for TTL/2; the lease is surely held for less
//!   than TTL/2 more): pause every running guest's QEMU (`stop` over QMP; the state the
//!   agent reports is QEMU's answer to `query-status`). A QEMU that does not pause is
//!   killed: nothing of this host may write once the lease can expire. The margin is
//!   TTL/2 (5 s by default) to do it in.
//! - **`Alive`** again (a renewal got through in time): the lease never lapsed, nobody can
//!   have taken a guest: `cont` the guests this fence paused (and only those), also one
//!   asked to shut down meanwhile (paused, it would never see the power button).
//! - **`Lost`** (the hold time passed, or etcd says the lease is gone): the lease's keys
//!   are gone or about to be — membership, ownership, volume leases, migration claims —
//!   and another host may take the guests now. The guests stay paused (those still
//!   running are paused now) and their disks are let go: `blockdev-set-active false`
//!   inactivates every block node, so the paused QEMU can write nothing even if resumed
//!   by mistake, and holds no image locks, so the host that takes the guest over can open
//!   its volumes. A QEMU that cannot do it is killed. The agent grants a new lease
//!   (retrying until etcd answers), registers again, and claims every guest it holds again
//!   by compare-and-swap ([`crate::leases::Leases::reattach`]): a guest whose ownership and
//!   volumes it gets back runs on (`blockdev-set-active true`, then `cont`; a QEMU that
//!   cannot take its disks back — another process has them — is killed); a guest another
//!   host has taken meanwhile is killed here (its definition stays, and the next
//!   restart's reconciliation drops it once the holder confirms having it). Its running
//!   jobs claim their migrations again; a job whose claim another job has taken is
//!   cancelled.
//!
//! A lost quorum that the members prove (a majority answers, none has a leader) never
//! makes the lease late (`vmove_store::lease`, "Quorum lost"): the guests run on. Any
//! other etcd outage (members dead or unreachable) pauses every guest of the cluster and resumes them all when etcd
//! is back, without a restart, and a partitioned host never runs a guest that another host
//! may have started.
//!
//! Nobody else decides by the clock: others wait for this host's keys to be deleted by
//! etcd (`vmove_registry::wait_host_dead`), which happens at least TTL/2 after this host
//! paused its guests. What the fence cannot cover is an agent that dies while its QEMUs
//! live on: nothing pauses them then (a hardware watchdog armed by the agent would), so
//! "the host is dead" means its agent and its guests are.
use std::collections::BTreeSet;
use std::sync::Arc;

use vmove_api::{ErrorCode, GuestState};
use vmove_qmp::RunState;
use vmove_store::LeaseHealth;

use crate::guests::Agent;
use crate::jobs::Jobs;

/// What the fence did to this host's guests.
#[derive(Default)]
struct Fenced {
    /// Guests it paused.
    paused: BTreeSet<String>,
    /// Of those, the ones whose disks it let go.
    released: BTreeSet<String>,
    /// Guests found stopped by their migration (at its switchover, or completed), already
    /// said in the log. They are not in `paused`, so the fence never lets them run; a
    /// migration cancelled meanwhile makes QEMU run one again, and the next look (every
    /// retry while the lease is late) pauses it.
    held: BTreeSet<String>,
}

/// Claims this host's guests on its lease (at start: the lease is new), then keeps
/// fencing them by the lease's health, until the agent ends.
pub async fn run(jobs: Arc<Jobs>) {
    let agent = jobs.agent.clone();
    let Some(fleet) = agent.fleet().cloned() else { return };
    let retry = fleet.policy().retry_every.max(std::time::Duration::from_millis(100));
    let mut fenced = Fenced::default();
    // Whether the guests must be claimed again before they run (at start too: a restarted
    // agent has a new lease).
    let mut must_reclaim = true;
    loop {
        let (lease, mut health) = fleet.subscribe();
        loop {
            let h = *health.borrow_and_update();
            match h {
                LeaseHealth::RenewingLate => fenced.pause_all(&agent, "the lease is renewing late").await,
                LeaseHealth::Alive if must_reclaim => {
                    must_reclaim = !reclaim(&jobs, &mut fenced).await;
                    if !must_reclaim {
                        fenced.resume(&agent).await;
                    }
                }
                LeaseHealth::Alive => fenced.resume(&agent).await,
                LeaseHealth::Lost => break,
            }
            let changed = if must_reclaim || h == LeaseHealth::RenewingLate {
                // Claims that could not be settled are tried again; while the lease is
                // late, the guests are looked at again (a cancelled migration's source
                // runs again).
                tokio::select! {
                    c = health.changed() => c,
                    _ = tokio::time::sleep(retry) => Ok(()),
                }
            } else {
                health.changed().await
            };
            if changed.is_err() {
                break;
            }
        }
        tracing::error!(lease = %lease, "this host's lease is lost: its guests stay paused until they are claimed again");
        fenced.pause_all(&agent, "the lease is lost").await;
        fenced.release_disks(&agent).await;
        must_reclaim = true;
        while let Err(e) = fleet.regrant().await {
            tracing::warn!("no new lease yet: {e}");
            tokio::time::sleep(retry).await;
            fenced.pause_all(&agent, "the lease is lost").await;
            fenced.release_disks(&agent).await;
        }
    }
}

impl Fenced {
    /// Pauses every running guest's QEMU (kills one that does not pause).
    async fn pause_all(&mut self, agent: &Agent, why: &str) {
        for name in agent.guest_names() {
            let Ok((qmp, state)) = agent.qmp_of(&name) else { continue };
            if state != GuestState::Running {
                continue;
            }
            let r = async {
                // A QEMU whose vCPUs are already stopped is not the fence's to pause: an
                // outgoing migration holds it (`finish-migrate`, at its switchover) or has
                // completed (`postmigrate`), or it stopped on its own. `stop` would change
                // nothing, and the fence's `cont` later must never run such a QEMU.
                if !qmp.query_status().await?.running {
                    return Ok(None);
                }
                qmp.stop().await?;
                qmp.query_status().await.map(Some)
            };
            match r.await {
                Ok(Some(st)) if st.status == RunState::Paused => {
                    agent.set_state(&name, GuestState::Paused);
                    tracing::warn!(guest = %name, "fenced: paused ({why})");
                    self.paused.insert(name);
                }
                Ok(Some(st)) if st.running => {
                    tracing::error!(guest = %name, "fenced: QEMU still runs after `stop`; killing it ({why})");
                    agent.kill_guest(&name);
                }
                Ok(st) => {
                    if !self.held.contains(&name) {
                        let status = st.map(|s| s.status);
                        tracing::warn!(guest = %name, ?status, "fenced: not running (its migration holds it); watched while the lease is unsure ({why})");
                    }
                    self.held.insert(name);
                }
                Err(e) => {
                    tracing::error!(guest = %name, "fenced: QEMU did not pause ({e}); killing it ({why})");
                    agent.kill_guest(&name);
                }
            }
        }
    }

    /// Lets the paused guests' disks go (inactive block nodes: no writes, no image locks);
    /// kills a QEMU that cannot.
    async fn release_disks(&mut self, agent: &Agent) {
        for name in self.paused.clone() {
            if self.released.contains(&name) {
                continue;
            }
            let Ok((qmp, _)) = agent.qmp_of(&name) else { continue };
            match qmp.blockdev_set_active(false).await {
                Ok(()) => {
                    tracing::warn!(guest = %name, "fenced: disks inactivated (image locks released)");
                    self.released.insert(name);
                }
                Err(e) => {
                    tracing::error!(guest = %name, "fenced: cannot inactivate its disks ({e}); killing it");
                    self.forget(&name);
                    agent.kill_guest(&name);
                }
            }
        }
    }

    fn forget(&mut self, name: &str) {
        self.paused.remove(name);
        self.released.remove(name);
    }

    /// Lets the guests this fence paused run again, taking their disks back first where it
    /// let them go (a QEMU that cannot — another process opened them — is killed).
    async fn resume(&mut self, agent: &Agent) {
        let released = std::mem::take(&mut self.released);
        self.held.clear();
        for name in std::mem::take(&mut self.paused) {
            let Ok((qmp, state)) = agent.qmp_of(&name) else { continue };
            // A guest asked to shut down while the fence held it (a migration's STOP_GUEST,
            // an operator's stop) is let run too: paused, it could never see the power
            // button, and the stop would wait out its timeout.
            if !matches!(state, GuestState::Paused | GuestState::ShuttingDown) {
                continue;
            }
            // Only a QEMU still in the fence's pause: one that a migration took on meanwhile
            // (`finish-migrate`, `postmigrate`: the guest may run on the target now) stays
            // as it is.
            match qmp.query_status().await {
                Ok(st) if st.status == RunState::Paused => {}
                Ok(st) => {
                    tracing::warn!(guest = %name, status = ?st.status, "fence lifted: not let run (no longer in the fence's pause)");
                    continue;
                }
                Err(e) => {
                    tracing::error!(guest = %name, "fence lifted but its QEMU does not answer: {e}");
                    continue;
                }
            }
            if released.contains(&name) {
                if let Err(e) = qmp.blockdev_set_active(true).await {
                    tracing::error!(guest = %name, "its disks cannot be taken back ({e}): another process has them; killing this copy");
                    agent.kill_guest(&name);
                    continue;
                }
            }
            match qmp.cont().await {
                Ok(()) => {
                    if state == GuestState::Paused {
                        agent.set_state(&name, GuestState::Running);
                    }
                    tracing::info!(guest = %name, "fence lifted: running again");
                }
                Err(e) => tracing::error!(guest = %name, "fence lifted but `cont` failed: {e}"),
            }
        }
    }
}

/// Claims every guest of this host again on the new lease, and its running jobs'
/// migrations. A guest another host holds now is killed here. Returns whether everything
/// was settled (`false`: the store failed; try again).
async fn reclaim(jobs: &Jobs, fenced: &mut Fenced) -> bool {
    let agent = &jobs.agent;
    let mut settled = true;
    for name in agent.guest_names() {
        let Some(spec) = agent.spec(&name) else { continue };
        if agent.qmp_of(&name).is_ok_and(|(_, st)| st == GuestState::Incoming) {
            continue; // an incoming live migration: the source holds the guest
        }
        match agent.reattach(&spec).await {
            Ok(()) => tracing::info!(guest = %name, "claimed again on the new lease"),
            Err(e) if e.code == ErrorCode::Leased => {
                tracing::error!(guest = %name, "another host took the guest while this host's lease was lost ({}); its copy here is killed", e.message);
                fenced.forget(&name);
                agent.kill_guest(&name);
            }
            Err(e) => {
                tracing::warn!(guest = %name, "cannot claim the guest again yet: {e}");
                settled = false;
            }
        }
    }
    settled && jobs.reclaim_migrations().await
}

impl Agent {
    /// The names of the defined guests.
    pub(crate) fn guest_names(&self) -> Vec<String> {
        self.lock_guests().keys().cloned().collect()
    }

    /// Kills a guest's QEMU, if it runs (the exit is handled as any other).
    pub(crate) fn kill_guest(&self, name: &str) {
        let pid = self.lock_guests().get(name).and_then(|g| g.pid);
        if let Some(pid) = pid {
            self.host.kill(pid);
        }
    }
}

impl Jobs {
    /// Claims the migrations of the running jobs again; a job whose claim another job has
    /// taken is cancelled. Returns whether every claim was settled.
    pub(crate) async fn reclaim_migrations(&self) -> bool {
        let mut settled = true;
        for b in self.list().into_iter().filter(|b| b.status == vmove_api::JobStatus::Running) {
            let Ok(cell) = self.get(&b.id) else { continue };
            let spec = cell.snapshot().spec;
            let mode = match b.kind {
                vmove_api::JobKind::Migrate => spec.mode.as_str(),
                vmove_api::JobKind::Recover { .. } => "recovery",
            };
            match self.claim_for(&b.id, &spec, mode).await {
                Ok(()) => {}
                Err(e) if e.code == ErrorCode::Busy => {
                    tracing::error!(job = %b.id, "its migration claim was taken while the lease was lost ({}); cancelling", e.message);
                    cell.cancel.send_replace(true);
                }
                Err(e) => {
                    tracing::warn!(job = %b.id, "cannot claim its migration again yet: {e}");
                    settled = false;
                }
            }
        }
        settled
    }
}
