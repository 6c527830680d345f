//! Jobs on the target host: the registry, submission, cancel, resume and recovery. Each
//! job runs as a [`vmove_plan::JobMachine`] driven by [`runner`]; the per-guest migration
//! record (`migrations/<guest>`) ties whole runs, single `--step` runs and recoveries
//! together.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmove_api::{EventKind, JobBrief, JobKind, JobRecord, JobSpec, JobStatus, PeerHost, StepRecord, StepStatus, Summary};
use vmove_plan::{can_run_step, JobMachine, MigrationRecord, Step};

use crate::error::{fail, AgentError, Result};
use crate::guests::Agent;
use crate::peer::{Peer, RemotePeer};
use crate::state::{mig_key, JobRec, MigRec};

pub mod cell;
mod recover;
pub mod runner;
pub mod watch;

pub use cell::JobCell;

/// Job record format version.
const VERSION: u32 = 2;

/// How the target reaches a source agent.
pub type PeerFactory = Box<dyn Fn(&PeerHost) -> Result<Arc<dyn Peer>> + Send + Sync>;

/// The jobs of this host.
pub struct Jobs {
    pub(crate) agent: Arc<Agent>,
    cells: Mutex<BTreeMap<String, Arc<JobCell>>>,
    next: AtomicU64,
    peers: PeerFactory,
    /// Held while a job is accepted and while maintenance changes, so that the limit of
    /// migrations in and the maintenance state are checked against every accepted job.
    admission: tokio::sync::Mutex<()>,
}

impl Jobs {
    /// Loads the jobs; a job that was running when the agent stopped is marked failed with
    /// the step it was in, for `vmove job recover`. Peers are reached over the network.
    pub async fn open(agent: Arc<Agent>) -> Result<Arc<Jobs>> {
        let a = agent.clone();
        let peers: PeerFactory = Box::new(move |h: &PeerHost| Ok(Arc::new(RemotePeer::new(a.peer_client(&h.name, &h.address)?)) as Arc<dyn Peer>));
        Jobs::open_with(agent, peers).await
    }

    /// [`Jobs::open`] with another way to reach peers (unit tests).
    pub async fn open_with(agent: Arc<Agent>, peers: PeerFactory) -> Result<Arc<Jobs>> {
        let mut cells = BTreeMap::new();
        let mut max = match agent.fleet() {
            Some(f) => f.max_job_number().await?,
            None => 0,
        };
        for (_, JobRec(mut rec)) in agent.state.list::<JobRec>("jobs/").await? {
            max = max.max(rec.id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0));
            rec.events = agent.state.events(&rec.id, 0).await?;
            let cell = Arc::new(JobCell::new(rec));
            let r = cell.snapshot();
            if r.status == JobStatus::Running {
                let step = r.steps.iter().find(|s| s.status == StepStatus::Running).map(|s| s.step);
                let msg = match step {
                    Some(s) => format!("the agent on {} restarted during {s}", r.spec.target),
                    None => format!("the agent on {} restarted", r.spec.target),
                };
                if let Some(s) = step {
                    cell.set_step(s, StepStatus::Failed, Some(msg.clone()));
                }
                let error = format!("{msg}; run `vmove job recover {}`", r.id);
                end_record(&cell, JobStatus::Failed, Some(error.clone()));
                cell.emit(&agent.state, EventKind::JobEnded { status: JobStatus::Failed, error: Some(error), summary: Summary::default() })
                    .await?;
                cell.save(&agent.state).await?;
                agent.metrics.job_ended(&cell.snapshot(), &Summary::default());
            }
            cells.insert(r.id.clone(), cell);
        }
        Ok(Arc::new(Jobs {
            agent,
            cells: Mutex::new(cells),
            next: AtomicU64::new(max + 1),
            peers,
            admission: tokio::sync::Mutex::new(()),
        }))
    }

    fn cells(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<JobCell>>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<Arc<JobCell>> {
        self.cells().get(id).cloned().ok_or_else(|| AgentError::not_found(format!("no job {id} on {}", self.agent.cfg.name)))
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<JobBrief> {
        let mut v: Vec<JobBrief> = self.cells().values().map(|c| JobBrief::from(&*c.lock())).collect();
        v.sort_by_key(|b| b.created_ms);
        v
    }

    /// vmove's own time around the memory phase of the last live moves into this host
    /// ([`vmove_api::live_steps_ms`]).
    pub fn live_steps_ms(&self) -> Option<u64> {
        vmove_api::median_of_last(self.cells().values().filter_map(|c| vmove_api::live_steps_of(&c.lock())).collect())
    }

    /// QEMU's memory phase against the model's figure, of the last live moves into this
    /// host, percent ([`vmove_api::memory_model_pct`]).
    pub fn memory_model_pct(&self) -> Option<u32> {
        let moves = self.cells().values().filter_map(|c| vmove_api::memory_model_of(&c.lock())).collect();
        vmove_api::median_of_last(moves).and_then(|p| u32::try_from(p).ok())
    }

    /// The running job of a guest, if any.
    pub fn running_for(&self, guest: &str) -> Option<String> {
        self.cells().values().find_map(|c| {
            let r = c.lock();
            (r.status == JobStatus::Running && r.spec.guest.name == guest).then(|| r.id.clone())
        })
    }

    /// A peer for the job's source.
    pub(crate) fn peer(&self, spec: &JobSpec) -> Result<Arc<dyn Peer>> {
        (self.peers)(&spec.source)
    }

    /// A peer for another host.
    pub(crate) fn peer_for(&self, host: &PeerHost) -> Result<Arc<dyn Peer>> {
        (self.peers)(host)
    }

    pub(crate) async fn load_mig(&self, guest: &str) -> Result<Option<MigrationRecord>> {
        Ok(self.agent.state.get::<MigRec>(&mig_key(guest)).await?.map(|m| m.0))
    }

    pub(crate) async fn save_mig(&self, m: &MigrationRecord) -> Result<()> {
        self.agent.state.put(&mig_key(&m.guest), &MigRec(m.clone())).await
    }

    /// A new job id: `<this host>-<n>`, unique in the cluster (ids are never handed out
    /// twice: on etcd the index's highest number for this host is the floor).
    fn next_id(&self) -> String {
        format!("{}-{}", self.agent.cfg.name, self.next.fetch_add(1, Ordering::SeqCst))
    }

    /// On etcd: claims the guest's migration for job `id` (`busy`, naming the job that
    /// holds it, if another job does).
    pub(crate) async fn claim_for(&self, id: &str, spec: &JobSpec, mode: &str) -> Result<()> {
        let Some(f) = self.agent.fleet() else { return Ok(()) };
        let claim = vmove_registry::MigrationClaim {
            guest: spec.guest.name.clone(),
            job: id.to_string(),
            mode: mode.to_string(),
            source: spec.source.name.clone(),
            target: spec.target.clone(),
            since_ms: crate::now_ms(),
        };
        f.claim_migration(&claim).await
    }

    /// On etcd: ends job `id`'s claim on its guest (best effort: the claim is attached to
    /// this host's lease and goes with it anyway).
    pub(crate) async fn unclaim(&self, id: &str, guest: &str) {
        if let Some(f) = self.agent.fleet() {
            if let Err(e) = f.release_migration(guest, id).await {
                tracing::warn!(job = id, "cannot end the claim on {guest}: {e}");
            }
        }
    }

    async fn new_job(&self, id: String, kind: JobKind, spec: JobSpec, steps: &[Step]) -> Result<Arc<JobCell>> {
        let rec = JobRecord {
            version: VERSION,
            id: id.clone(),
            kind,
            spec,
            status: JobStatus::Running,
            steps: steps
                .iter()
                .map(|&step| StepRecord { step, status: StepStatus::Pending, started_ms: None, ended_ms: None, note: None })
                .collect(),
            created_ms: crate::now_ms(),
            ended_ms: None,
            error: None,
            events: vec![],
            guest_host: None,
            outage: None,
        };
        let cell = Arc::new(JobCell::new(rec));
        cell.save(&self.agent.state).await?;
        self.cells().insert(id, cell.clone());
        Ok(cell)
    }

    /// Jobs running now (every job of this host brings a guest in).
    pub fn running(&self) -> usize {
        self.cells().values().filter(|c| c.lock().status == JobStatus::Running).count()
    }

    /// Puts the host in maintenance or ends it. Once this returns, every job accepted
    /// before is in the job list, and no new migration in is accepted while in maintenance.
    pub async fn set_maintenance(&self, on: bool) -> Result<(Option<vmove_model::inventory::Maintenance>, bool)> {
        let _admission = self.admission.lock().await;
        self.agent.set_maintenance(on).await
    }

    /// Accepts a migration job and starts it: refused while the host is in maintenance
    /// (unless it continues a migration accepted before), and with `at_limit` when the host
    /// already runs `spec.max_incoming` jobs.
    pub async fn submit(self: &Arc<Self>, mut spec: JobSpec) -> Result<JobRecord> {
        let _admission = self.admission.lock().await;
        let me = self.agent.cfg.name.clone();
        if spec.source.name == me && spec.step.is_some() {
            // The cluster file already says the guest is here (MIGRATE_GUEST done): the
            // unfinished migration knows where it came from.
            if let Some(m) = self.load_mig(&spec.guest.name).await?.filter(|m| !m.finished && !m.source_address.is_empty()) {
                spec.source = PeerHost { name: m.source.clone(), address: m.source_address.clone() };
                spec.guest.host = m.source.clone();
            }
        }
        if spec.target != me {
            fail!(InvalidRequest, "this is {me}, not the target {}", spec.target);
        }
        if spec.source.name == me {
            fail!(InvalidRequest, "guest {} is already on {me}: source and target are the same host", spec.guest.name);
        }
        if let Some(id) = self.running_for(&spec.guest.name) {
            fail!(Busy, "guest {} is already being migrated by job {id}", spec.guest.name);
        }
        if let Some(by) = self.agent.claimed_by(&spec.guest.name).await? {
            fail!(Busy, "{me} is itself migrating guest {} away ({by}); a migration to {me} is refused", spec.guest.name);
        }
        crate::hooks::check(&self.agent, &spec)?;
        if spec.step == Some(Step::PrecheckLiveMigration) {
            fail!(InvalidRequest, "PRECHECK_LIVEMIGRATION runs in the CLI (vmove migrate --step PRECHECK_LIVEMIGRATION)");
        }
        let existing = self.load_mig(&spec.guest.name).await?;
        if existing.as_ref().is_none_or(|m| m.finished) {
            self.agent.refuse_in_maintenance(&format!("a migration of {} to {me}", spec.guest.name))?;
        }
        if let Some(max) = spec.max_incoming {
            let n = self.running();
            if n >= max as usize {
                fail!(AtLimit, "{me} already receives {n} guests (limit {max}); try again when one has arrived");
            }
        }
        let mig = match existing {
            Some(m) if !m.finished && (m.mode != spec.mode || m.source != spec.source.name) => fail!(
                Busy,
                "guest {} has an unfinished {} migration from {} (completed: {}); finish it with --step or `vmove job recover`",
                spec.guest.name,
                m.mode.as_str(),
                m.source,
                names(&m.completed)
            ),
            Some(m) if !m.finished => m,
            _ => MigrationRecord::new(&spec.guest.name, spec.mode, &spec.source.name, &spec.source.address),
        };
        let steps = match spec.step {
            Some(step) => {
                if let Err(e) = can_run_step(spec.mode, step, &mig.completed) {
                    fail!(WrongState, "{e}");
                }
                vec![step]
            }
            None => Step::plan(spec.mode).to_vec(),
        };
        let id = self.next_id();
        let guest = spec.guest.name.clone();
        self.claim_for(&id, &spec, spec.mode.as_str()).await?;
        let pause = crate::hooks::pause_before(&self.agent, &spec);
        let started = async {
            self.save_mig(&mig).await?;
            self.new_job(id.clone(), JobKind::Migrate, spec, &steps).await
        };
        let cell = match started.await {
            Ok(c) => c,
            Err(e) => {
                self.unclaim(&id, &guest).await;
                return Err(e);
            }
        };
        let machine = JobMachine::migrate(&cell.id(), mig, steps, pause);
        let rec = cell.snapshot();
        let me = self.clone();
        tokio::spawn(async move { runner::run(me, cell, machine).await });
        Ok(rec)
    }

    /// Requests cancellation.
    pub async fn cancel(&self, id: &str) -> Result<JobRecord> {
        let cell = self.get(id)?;
        let r = cell.snapshot();
        if r.status.is_final() {
            fail!(WrongState, "job {id} has already ended ({:?})", r.status);
        }
        cell.cancel.send_replace(true);
        cell.emit(&self.agent.state, EventKind::Info { message: "cancel requested".into() }).await?;
        Ok(cell.snapshot())
    }

    /// Lets a paused job go on.
    pub fn resume(&self, id: &str) -> Result<JobRecord> {
        let cell = self.get(id)?;
        cell.resume.send_replace(true);
        Ok(cell.snapshot())
    }

    /// Starts the recovery of a failed or cancelled job.
    pub async fn recover(self: &Arc<Self>, id: &str) -> Result<JobRecord> {
        let old = self.get(id)?.snapshot();
        let (mig, forward) = recover::decide(self, &old).await?;
        let spec = JobSpec { step: None, inject_fault: None, pause_before: None, pause_at_switchover: false, max_incoming: None, ..old.spec.clone() };
        let machine = JobMachine::recover("", mig, forward);
        let new_id = self.next_id();
        self.claim_for(&new_id, &spec, "recovery").await?;
        let cell = match self.new_job(new_id.clone(), JobKind::Recover { of: id.to_string() }, spec.clone(), machine.steps()).await {
            Ok(c) => c,
            Err(e) => {
                self.unclaim(&new_id, &spec.guest.name).await;
                return Err(e);
            }
        };
        let machine = JobMachine::recover(&cell.id(), machine.record().clone(), forward);
        let rec = cell.snapshot();
        let me = self.clone();
        tokio::spawn(async move { runner::run(me, cell, machine).await });
        Ok(rec)
    }
}

/// Ends a record in memory.
pub(crate) fn end_record(cell: &JobCell, status: JobStatus, error: Option<String>) {
    let mut r = cell.lock();
    r.status = status;
    r.error = error;
    r.ended_ms = Some(crate::now_ms());
}

pub(crate) fn names(steps: &[Step]) -> String {
    if steps.is_empty() {
        return "none".into();
    }
    steps.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
}
