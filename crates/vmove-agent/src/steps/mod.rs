//! The steps of a migration, one module each, run by the target host's agent (`dst`) and
//! calling the source's (`src`) through a [`Peer`]. Each step has a `run` and an `undo`;
//! both are idempotent. Where a step means something else in another mode, it is another
//! type, chosen by [`work`]:
//!
//! | step | OFFLINE / OFFLINEFORCE | LIVE |
//! |---|---|---|
//! | STOP_GUEST | source stops the guest (ACPI; OFFLINEFORCE kills it, or skips a dead source) | — |
//! | CREATE_BRIDGES | target creates missing bridges | target creates missing bridges and the guest's taps |
//! | DETACH_INTERFACES | source removes the guest's taps | — |
//! | DETACH_VOLUMES | source releases its leases | the leases pass to the target (after the switchover); the source drops its copies of local volumes |
//! | ATTACH_VOLUMES | target takes the leases (OFFLINEFORCE takes them over) | target claims the volumes as incoming (local volumes: leases its new copies) |
//! | COPY_VOLUMES | local volumes copied from the stopped guest's files | local volumes mirrored from the running guest, left in sync |
//! | MIGRATE_GUEST | definition moves: target defines, source undefines (and drops its copies of local volumes) | memory migration (`migrate_dst`), the mirrors finished at its pre-switchover pause |
//! | ATTACH_INTERFACES | target creates the guest's taps | — |
//! | STARTUP_GUEST | target starts the guest if it ran before | — |
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use vmove_api::{GuestState, GuestStatus, JobSpec, Request, Summary};
use vmove_plan::{MigrationRecord, Mode, Step};

use crate::error::{AgentError, Result};
use crate::guests::Agent;
use crate::jobs::{JobCell, Jobs};
use crate::peer::{call, Peer, PEER_TIMEOUT};

mod attach_interfaces;
mod attach_volumes;
pub(crate) mod copy_volumes;
mod create_bridges;
mod detach_interfaces;
mod detach_volumes;
mod migrate_guest;
mod startup_guest;
mod stop_guest;

/// What a step works with: the target's agent, the source, the job, the migration record.
pub struct StepCx<'a> {
    /// The target's jobs (and through them its agent and state).
    pub jobs: &'a Arc<Jobs>,
    /// The job.
    pub cell: &'a Arc<JobCell>,
    /// The source's agent.
    pub peer: &'a dyn Peer,
    /// What the job does.
    pub spec: &'a JobSpec,
    /// Where the migration stands.
    pub record: &'a MigrationRecord,
    /// End-of-migration figures (the memory migration fills them).
    pub summary: &'a Mutex<Summary>,
}

impl StepCx<'_> {
    /// The target's agent.
    pub fn agent(&self) -> &Arc<Agent> {
        &self.jobs.agent
    }

    /// The guest's name.
    pub fn guest(&self) -> &str {
        &self.spec.guest.name
    }

    /// Whether the guest ran on the source when the migration began.
    pub fn was_running(&self) -> bool {
        self.record.was_running.unwrap_or(true)
    }

    /// The job's words for a source claim: `the migration to host2`.
    pub fn claim(&self) -> String {
        format!("the migration to {}", self.spec.target)
    }

    /// A call to the source; in OFFLINEFORCE an unreachable source gives `None` (the step
    /// goes on without it).
    pub async fn src_call(&self, req: Request, timeout: Duration) -> Result<Option<serde_json::Value>> {
        match self.peer.call(&req, timeout).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if self.spec.mode == Mode::OfflineForce && e.is_unreachable() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The note of a step that skipped an unreachable source.
pub const SKIPPED: &str = "source unreachable: skipped (OFFLINEFORCE goes on without it)";

/// One step's work.
#[async_trait]
pub trait StepWork: Send + Sync {
    /// Does the step; returns a one-line note of what it did.
    async fn run(&self, cx: &StepCx<'_>) -> Result<String>;
    /// Undoes it (rollback, recovery); returns a one-line note.
    async fn undo(&self, cx: &StepCx<'_>) -> Result<String>;
}

/// The work of `step` in `mode`.
pub fn work(mode: Mode, step: Step) -> &'static dyn StepWork {
    let live = mode == Mode::Live;
    match step {
        Step::StopGuest => &stop_guest::StopGuest,
        Step::CreateBridges if live => &create_bridges::BridgesAndTaps,
        Step::CreateBridges => &create_bridges::Bridges,
        Step::DetachInterfaces => &detach_interfaces::DetachInterfaces,
        Step::DetachVolumes if live => &detach_volumes::LeasesPassToTarget,
        Step::DetachVolumes => &detach_volumes::SourceReleasesLeases,
        Step::AttachVolumes if live => &attach_volumes::ClaimIncoming,
        Step::AttachVolumes => &attach_volumes::TakeLeases,
        Step::CopyVolumes => &copy_volumes::CopyVolumes,
        Step::MigrateGuest if live => &crate::migrate_dst::MemoryMigration,
        Step::MigrateGuest => &migrate_guest::MoveDefinition,
        Step::AttachInterfaces => &attach_interfaces::AttachInterfaces,
        Step::StartupGuest => &startup_guest::StartupGuest,
        Step::PrecheckLiveMigration => &NotAStep,
    }
}

struct NotAStep;

#[async_trait]
impl StepWork for NotAStep {
    async fn run(&self, _: &StepCx<'_>) -> Result<String> {
        Err(AgentError::new(vmove_api::ErrorCode::InvalidRequest, "PRECHECK_LIVEMIGRATION is not a job step"))
    }
    async fn undo(&self, _: &StepCx<'_>) -> Result<String> {
        Ok("nothing to undo".into())
    }
}

/// Asks the source whether the guest runs there, claiming it for this migration.
pub async fn check_source(jobs: &Jobs, spec: &JobSpec) -> Result<bool> {
    let name = &spec.guest.name;
    let claim = Some(format!("the migration to {}", spec.target));
    let peer = jobs.peer(spec)?;
    match call::<GuestStatus>(peer.as_ref(), &Request::PeerGuest { name: name.clone(), claim }, PEER_TIMEOUT).await {
        Ok(st) => {
            let running = matches!(st.state, GuestState::Running | GuestState::Paused | GuestState::Starting);
            if spec.mode == Mode::Live && !running {
                return Err(AgentError::wrong_state(format!(
                    "guest {name} is not running on {} ({:?}): live migration needs a running guest",
                    spec.source.name, st.state
                )));
            }
            Ok(running)
        }
        Err(e) if spec.mode == Mode::OfflineForce && e.is_unreachable() => {
            tracing::warn!("source {} unreachable ({e}); guest assumed {:?}", spec.source.name, spec.guest.desired);
            Ok(spec.guest.desired == vmove_model::DesiredState::Running)
        }
        Err(e) if e.is_unreachable() => {
            Err(e.context(format!("source {} must answer for {} migration", spec.source.name, spec.mode.as_str())))
        }
        Err(e) => Err(e),
    }
}

/// A list of names from a peer's answer, comma-separated.
pub(crate) fn list_note(v: &serde_json::Value) -> String {
    match v.as_array() {
        Some(a) if a.is_empty() => "no leases held".into(),
        Some(a) => a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "),
        None => v.to_string(),
    }
}

/// Defines the guest on this host for a migration (idempotent).
pub async fn take_definition(agent: &Agent, spec: &JobSpec) -> Result<()> {
    let mut g = spec.guest.clone();
    g.host = agent.cfg.name.clone();
    if let Some(existing) = agent.spec(&g.name) {
        if existing.macs().eq(g.macs()) && existing.disks == g.disks {
            return Ok(());
        }
        return Err(AgentError::new(
            vmove_api::ErrorCode::AlreadyExists,
            format!("a different guest named {} is already defined on {}", g.name, agent.cfg.name),
        ));
    }
    if g.console_port.is_some_and(|p| agent.console_ports().contains(&p)) {
        g.console_port = None;
    }
    agent.define(g).await.map(|_| ()).map_err(|e| e.context("define the guest on the target"))
}
