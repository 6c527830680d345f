//! Jobs on the target host: durable records, the per-guest migration record that `--step`
//! and recovery rely on, the runner, cancel and watch.
//!
//! Every change to a job is written (fsync + rename) before the runner goes on, so a
//! restarted agent finds each job as it last stood; a job that was running is marked
//! failed with the step it was in, for `vmove job recover`.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use vmove_api::{
    AgentClient, EventKind, Request, JobBrief, JobEvent, JobKind, JobRecord, JobSpec, JobStatus, StepRecord, StepStatus,
    Summary,
};
use vmove_plan::{can_run_step, Mode, Step, StepReadiness};

use crate::guests::Agent;

/// Job record format version.
const VERSION: u32 = 1;

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Where a guest's migration to this host stands, across jobs (whole runs, single steps,
/// recoveries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationState {
    /// Guest.
    pub guest: String,
    /// Mode.
    pub mode: Mode,
    /// Source host.
    pub source: String,
    /// Source agent address.
    #[serde(default)]
    pub source_address: String,
    /// Steps completed so far.
    pub completed: Vec<Step>,
    /// Whether the guest ran before the migration (it runs again after, or stays stopped).
    pub was_running: Option<bool>,
    /// Finished: every step done, or rolled back.
    pub finished: bool,
    /// Rolled back by a recovery.
    #[serde(default)]
    pub rolled_back: bool,
}

/// A job and its notifications.
pub struct JobCell {
    pub(crate) rec: Mutex<JobRecord>,
    pub(crate) events: watch::Sender<u64>,
    pub(crate) cancel: watch::Sender<bool>,
    pub(crate) resume: watch::Sender<bool>,
}

impl JobCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, JobRecord> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the record.
    pub fn snapshot(&self) -> JobRecord {
        self.lock().clone()
    }

    /// Whether cancel was requested.
    pub fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Waits until the job is resumed or cancelled (test hooks).
    pub async fn wait_resumed(&self) {
        let mut r = self.resume.subscribe();
        let mut c = self.cancel.subscribe();
        loop {
            if *r.borrow_and_update() || *c.borrow_and_update() {
                self.resume.send_replace(false);
                return;
            }
            tokio::select! {
                _ = r.changed() => {}
                _ = c.changed() => {}
            }
        }
    }
}

/// The jobs of this host.
pub struct Jobs {
    pub(crate) agent: Arc<Agent>,
    dir: PathBuf,
    mig_dir: PathBuf,
    cells: Mutex<BTreeMap<String, Arc<JobCell>>>,
    next: AtomicU64,
}

impl Jobs {
    /// Loads job records; jobs that were running when the agent stopped are marked failed.
    pub fn open(agent: Arc<Agent>) -> Result<Arc<Jobs>> {
        let dir = agent.cfg.state_dir.join("jobs");
        let mig_dir = agent.cfg.state_dir.join("migrations");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&mig_dir)?;
        let mut cells = BTreeMap::new();
        let mut max = 0;
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            let Some(mut rec) = std::fs::read_to_string(&p).ok().and_then(|t| serde_json::from_str::<JobRecord>(&t).ok())
            else {
                tracing::warn!("unreadable job record {}", p.display());
                continue;
            };
            max = max.max(rec.id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0));
            if rec.status == JobStatus::Running {
                let step = rec.steps.iter().find(|s| s.status == StepStatus::Running).map(|s| s.step);
                let msg = match step {
                    Some(s) => format!("the agent on {} restarted during {}", rec.spec.target, s.name()),
                    None => format!("the agent on {} restarted", rec.spec.target),
                };
                for s in rec.steps.iter_mut().filter(|s| s.status == StepStatus::Running) {
                    s.status = StepStatus::Failed;
                    s.note = Some(msg.clone());
                }
                let error = format!("{msg}; run `vmove job recover {}`", rec.id);
                push_event(&mut rec, EventKind::JobEnded { status: JobStatus::Failed, error: Some(error.clone()), summary: Summary::default() });
                rec.status = JobStatus::Failed;
                rec.error = Some(error);
                rec.ended_ms = Some(now_ms());
                vmove_model::write_atomic(&p, serde_json::to_string(&rec)?.as_bytes())?;
            }
            let n = rec.events.len() as u64;
            cells.insert(
                rec.id.clone(),
                Arc::new(JobCell { rec: Mutex::new(rec), events: watch::channel(n).0, cancel: watch::channel(false).0, resume: watch::channel(false).0 }),
            );
        }
        Ok(Arc::new(Jobs { agent, dir, mig_dir, cells: Mutex::new(cells), next: AtomicU64::new(max + 1) }))
    }

    fn cells(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<JobCell>>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<Arc<JobCell>> {
        self.cells().get(id).cloned().ok_or_else(|| anyhow!("no job {id} on {}", self.agent.cfg.name))
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<JobBrief> {
        let mut v: Vec<JobBrief> = self.cells().values().map(|c| JobBrief::from(&*c.lock())).collect();
        v.sort_by_key(|b| b.created_ms);
        v
    }

    /// The running job of a guest, if any.
    pub fn running_for(&self, guest: &str) -> Option<String> {
        self.cells().values().find_map(|c| {
            let r = c.lock();
            (r.status == JobStatus::Running && r.spec.guest.name == guest).then(|| r.id.clone())
        })
    }

    pub(crate) fn load_mig(&self, guest: &str) -> Option<MigrationState> {
        std::fs::read_to_string(self.mig_dir.join(format!("{guest}.json"))).ok().and_then(|t| serde_json::from_str(&t).ok())
    }

    pub(crate) fn save_mig(&self, m: &MigrationState) -> Result<()> {
        Ok(vmove_model::write_atomic(&self.mig_dir.join(format!("{}.json", m.guest)), serde_json::to_string_pretty(m)?.as_bytes())?)
    }

    pub(crate) fn persist(&self, rec: &JobRecord) -> Result<()> {
        Ok(vmove_model::write_atomic(&self.dir.join(format!("{}.json", rec.id)), serde_json::to_string(rec)?.as_bytes())?)
    }

    /// Records an event and wakes the watchers.
    pub(crate) fn emit(&self, cell: &JobCell, kind: EventKind) {
        let n = {
            let mut r = cell.lock();
            push_event(&mut r, kind);
            if let Err(e) = self.persist(&r) {
                tracing::error!(job = %r.id, "cannot persist job: {e:#}");
            }
            r.events.len() as u64
        };
        cell.events.send_replace(n);
    }

    /// Changes a step's status (persisted).
    pub(crate) fn set_step(&self, cell: &JobCell, step: Step, status: StepStatus, note: Option<String>) {
        let mut r = cell.lock();
        if let Some(s) = r.steps.iter_mut().find(|s| s.step == step) {
            match status {
                StepStatus::Running => s.started_ms = Some(now_ms()),
                _ => s.ended_ms = Some(now_ms()),
            }
            s.status = status;
            s.note = note;
        }
        if let Err(e) = self.persist(&r) {
            tracing::error!(job = %r.id, "cannot persist job: {e:#}");
        }
    }

    /// Ends a job.
    pub(crate) fn finish(&self, cell: &JobCell, status: JobStatus, error: Option<String>, mut summary: Summary) {
        let created = cell.lock().created_ms;
        summary.total_ms = now_ms().saturating_sub(created);
        {
            let mut r = cell.lock();
            r.status = status;
            r.error = error.clone();
            r.ended_ms = Some(now_ms());
        }
        self.emit(cell, EventKind::JobEnded { status, error, summary });
    }

    /// A client of the source agent, with this host's certificate.
    pub(crate) fn peer(&self, spec: &JobSpec) -> Result<AgentClient> {
        let addr = spec.source.address.parse().map_err(|_| anyhow!("bad source address {}", spec.source.address))?;
        Ok(AgentClient::new(addr, &spec.source.name, self.agent.peer_tls.clone()).with_timeout(std::time::Duration::from_secs(10)))
    }

    fn new_record(&self, kind: JobKind, spec: JobSpec, steps: Vec<Step>) -> Result<Arc<JobCell>> {
        let id = format!("{}-{}", self.agent.cfg.name, self.next.fetch_add(1, Ordering::SeqCst));
        let rec = JobRecord {
            version: VERSION,
            id: id.clone(),
            kind,
            spec,
            status: JobStatus::Running,
            steps: steps
                .into_iter()
                .map(|step| StepRecord { step, status: StepStatus::Pending, started_ms: None, ended_ms: None, note: None })
                .collect(),
            created_ms: now_ms(),
            ended_ms: None,
            error: None,
            events: vec![],
            guest_host: None,
        };
        self.persist(&rec)?;
        let cell = Arc::new(JobCell { rec: Mutex::new(rec), events: watch::channel(0).0, cancel: watch::channel(false).0, resume: watch::channel(false).0 });
        self.cells().insert(id, cell.clone());
        Ok(cell)
    }

    /// Accepts a migration job and starts it.
    pub fn submit(self: &Arc<Self>, mut spec: JobSpec) -> Result<JobRecord> {
        let me = &self.agent.cfg.name;
        if spec.source.name == *me && spec.step.is_some() {
            // The cluster file already says the guest is here (MIGRATE_GUEST done): the
            // unfinished migration knows where it came from.
            if let Some(m) = self.load_mig(&spec.guest.name).filter(|m| !m.finished && !m.source_address.is_empty()) {
                spec.source = vmove_api::PeerHost { name: m.source.clone(), address: m.source_address.clone() };
                spec.guest.host = m.source.clone();
            }
        }
        if spec.target != *me {
            bail!("this is {me}, not the target {}", spec.target);
        }
        if spec.source.name == *me {
            bail!("guest {} is already on {me}: source and target are the same host", spec.guest.name);
        }
        if let Some(id) = self.running_for(&spec.guest.name) {
            bail!("guest {} is already being migrated by job {id}", spec.guest.name);
        }
        if let Some(to) = self.agent.outgoing_to(&spec.guest.name) {
            bail!("{me} is itself migrating guest {} away (to {to}); a migration to {me} is refused", spec.guest.name);
        }
        if (spec.pause_before.is_some() || spec.pause_at_switchover || spec.inject_fault.is_some()) && !self.agent.cfg.allow_fault_injection {
            bail!("test hooks (pause, fault injection) are disabled on {me}");
        }
        if spec.step == Some(Step::PrecheckLiveMigration) {
            bail!("PRECHECK_LIVEMIGRATION runs in the CLI (vmove migrate --step PRECHECK_LIVEMIGRATION)");
        }
        let mig = match self.load_mig(&spec.guest.name) {
            Some(m) if !m.finished && (m.mode != spec.mode || m.source != spec.source.name) => bail!(
                "guest {} has an unfinished {} migration from {} (completed: {}); finish it with --step or `vmove job recover`",
                spec.guest.name,
                m.mode.as_str(),
                m.source,
                names(&m.completed)
            ),
            Some(m) if !m.finished => m,
            _ => MigrationState {
                guest: spec.guest.name.clone(),
                mode: spec.mode,
                source: spec.source.name.clone(),
                source_address: spec.source.address.clone(),
                completed: vec![],
                was_running: None,
                finished: false,
                rolled_back: false,
            },
        };
        let steps = match spec.step {
            Some(step) => {
                if let Err(e) = can_run_step(spec.mode, step, &mig.completed) {
                    bail!("{e}");
                }
                vec![step]
            }
            None => Step::plan(spec.mode).to_vec(),
        };
        self.save_mig(&mig)?;
        let cell = self.new_record(JobKind::Migrate, spec, steps)?;
        let rec = cell.snapshot();
        let me = self.clone();
        tokio::spawn(async move { me.run(cell).await });
        Ok(rec)
    }

    /// Requests cancellation.
    pub fn cancel(&self, id: &str) -> Result<JobRecord> {
        let cell = self.get(id)?;
        let r = cell.snapshot();
        if r.status.is_final() {
            bail!("job {id} has already ended ({:?})", r.status);
        }
        cell.cancel.send_replace(true);
        self.emit(&cell, EventKind::Info { message: "cancel requested".into() });
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
        if old.status == JobStatus::Running {
            bail!("job {id} is still running; cancel it first");
        }
        let guest = old.spec.guest.name.clone();
        if let Some(j) = self.running_for(&guest) {
            bail!("guest {guest} is busy with job {j}");
        }
        let Some(mig) = self.load_mig(&guest) else { bail!("no migration record for guest {guest}") };
        if mig.finished {
            bail!(
                "nothing to recover: the migration of {guest} {}",
                if mig.rolled_back { "was rolled back" } else { "completed" }
            );
        }
        let plan = Step::plan(mig.mode);
        let runs_here = self.agent.show(&guest).is_ok_and(|s| s.state == vmove_api::GuestState::Running);
        let forward = crate::steps::recover_forward(&mig) || (mig.mode == Mode::Live && runs_here);
        let forward = if forward {
            true
        } else {
            // Rolling back needs the source, with the guest still defined there; if the
            // source no longer has it, the guest lives here now: go forward.
            let peer = self.peer(&old.spec)?;
            match peer.call_raw(&Request::PeerGuest { name: guest.clone(), claim: None }).await {
                Ok(_) => false,
                Err(e) if format!("{e:#}").contains("no guest named") && self.agent.spec(&guest).is_some() => true,
                Err(e) => bail!("cannot roll back: the source {} must answer ({e:#}); retry when it is back", old.spec.source.name),
            }
        };
        let steps: Vec<Step> = if forward {
            plan.iter().copied().filter(|s| !mig.completed.contains(s)).collect()
        } else {
            let mut v: Vec<Step> = plan.iter().copied().filter(|s| mig.completed.contains(s) || *s == Step::MigrateGuest).collect();
            v.reverse();
            v
        };
        let spec = JobSpec { step: None, inject_fault: None, ..old.spec.clone() };
        let cell = self.new_record(JobKind::Recover { of: id.to_string() }, spec, steps)?;
        let rec = cell.snapshot();
        let me = self.clone();
        tokio::spawn(async move { me.run_recovery(cell, forward).await });
        Ok(rec)
    }

    /// Runs a migration job to its end.
    async fn run(self: Arc<Self>, cell: Arc<JobCell>) {
        let rec = cell.snapshot();
        self.emit(&cell, EventKind::JobStarted { action: rec.action() });
        let spec = rec.spec.clone();
        let mut mig = match self.load_mig(&spec.guest.name) {
            Some(m) => m,
            None => {
                self.finish(&cell, JobStatus::Failed, Some("migration record lost".into()), Summary::default());
                return;
            }
        };
        if mig.was_running.is_none() {
            match crate::steps::guest_was_running(&self, &spec).await {
                Ok(r) => {
                    mig.was_running = Some(r);
                    let _ = self.save_mig(&mig);
                }
                Err(e) => {
                    // Nothing was done: this migration is over (a new one may start).
                    mig.finished = true;
                    mig.rolled_back = true;
                    let _ = self.save_mig(&mig);
                    self.finish(&cell, JobStatus::Failed, Some(format!("{e:#}")), Summary::default());
                    return;
                }
            }
        }
        let mut summary = Summary::default();
        for step in rec.steps.iter().map(|s| s.step) {
            if cell.cancelled() && !mig.completed.contains(&Step::MigrateGuest) {
                self.finish(
                    &cell,
                    JobStatus::Cancelled,
                    Some(format!("cancelled before {}; run `vmove job recover {}` to roll back", step.name(), rec.id)),
                    summary,
                );
                return;
            }
            if matches!(can_run_step(spec.mode, step, &mig.completed), Ok(StepReadiness::AlreadyCompleted)) {
                self.set_step(&cell, step, StepStatus::AlreadyDone, Some("already completed".into()));
                self.emit(&cell, EventKind::StepDone { step, elapsed_ms: 0, note: "already completed".into() });
                continue;
            }
            if spec.pause_before == Some(step) && self.agent.cfg.allow_fault_injection {
                self.emit(&cell, EventKind::Info { message: format!("paused before {} (test hook)", step.name()) });
                cell.wait_resumed().await;
                if cell.cancelled() {
                    if !mig.completed.contains(&Step::MigrateGuest) {
                        self.finish(
                            &cell,
                            JobStatus::Cancelled,
                            Some(format!("cancelled before {}; run `vmove job recover {}` to roll back", step.name(), rec.id)),
                            summary,
                        );
                        return;
                    }
                    self.emit(
                        &cell,
                        EventKind::Info { message: "cancel ignored: the guest already moved (past the point of no return)".into() },
                    );
                }
            }
            self.set_step(&cell, step, StepStatus::Running, None);
            self.emit(&cell, EventKind::StepStarted { step });
            let t = std::time::Instant::now();
            let r = if spec.inject_fault == Some(step) && self.agent.cfg.allow_fault_injection {
                Err(anyhow!("injected fault"))
            } else {
                crate::steps::run_step(&self, &cell, step, &spec, &mig, &mut summary).await
            };
            match r {
                Ok(note) => {
                    mig.completed.push(step);
                    if let Err(e) = self.save_mig(&mig) {
                        tracing::error!("cannot save the migration record: {e:#}");
                    }
                    if step == Step::MigrateGuest {
                        cell.lock().guest_host = Some(spec.target.clone());
                    }
                    self.set_step(&cell, step, StepStatus::Done, Some(note.clone()));
                    self.emit(&cell, EventKind::StepDone { step, elapsed_ms: t.elapsed().as_millis() as u64, note });
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    let cancelled = cell.cancelled() || msg.contains("cancelled");
                    self.set_step(&cell, step, StepStatus::Failed, Some(msg.clone()));
                    self.emit(&cell, EventKind::StepFailed { step, error: msg.clone() });
                    let live_before_switchover = spec.mode == Mode::Live && step == Step::MigrateGuest;
                    if live_before_switchover {
                        // The guest never left the source: undo the target's preparations
                        // at once, so the target is clean and a new migration can start.
                        let mut clean = true;
                        for done in mig.completed.clone().into_iter().rev() {
                            if let Err(u) = crate::steps::undo_step(&self, done, &spec, &mig).await {
                                tracing::error!("undo {}: {u:#}", done.name());
                                clean = false;
                            }
                        }
                        // Finished only if the source confirms it is not migrating any more
                        // (else `job recover` cancels it there once it answers).
                        let src_idle = self
                            .peer(&spec)
                            .ok()
                            .map(|p| async move { p.call_raw(&vmove_api::Request::PeerMigrateCancel { name: spec.guest.name.clone() }).await.is_ok() });
                        let src_idle = match src_idle {
                            Some(f) => f.await,
                            None => false,
                        };
                        if clean && src_idle {
                            mig.completed.clear();
                            mig.finished = true;
                            mig.rolled_back = true;
                            cell.lock().guest_host = Some(spec.source.name.clone());
                        } else {
                            mig.completed.retain(|s| *s != Step::MigrateGuest);
                        }
                        let _ = self.save_mig(&mig);
                    }
                    let (status, error) = if live_before_switchover {
                        (
                            if cancelled || msg.contains("timed out") { JobStatus::Cancelled } else { JobStatus::Failed },
                            format!("{}: {msg}; the target was cleaned up", step.name()),
                        )
                    } else {
                        (
                            JobStatus::Failed,
                            format!(
                                "{} failed: {msg}; resume with --step {} or run `vmove job recover {}`",
                                step.name(),
                                step.name(),
                                rec.id
                            ),
                        )
                    };
                    self.finish(&cell, status, Some(error), summary);
                    return;
                }
            }
        }
        if Step::plan(spec.mode).iter().all(|s| mig.completed.contains(s)) {
            mig.finished = true;
            let _ = self.save_mig(&mig);
        }
        self.finish(&cell, JobStatus::Succeeded, None, summary);
    }

    async fn run_recovery(self: Arc<Self>, cell: Arc<JobCell>, forward: bool) {
        let rec = cell.snapshot();
        let spec = rec.spec.clone();
        self.emit(
            &cell,
            EventKind::JobStarted {
                action: format!(
                    "RECOVER {} ({})",
                    rec.action(),
                    if forward { "going forward on the target" } else { "rolling back to the source" }
                ),
            },
        );
        let Some(mut mig) = self.load_mig(&spec.guest.name) else {
            self.finish(&cell, JobStatus::Failed, Some("migration record lost".into()), Summary::default());
            return;
        };
        let mut summary = Summary::default();
        for step in rec.steps.iter().map(|s| s.step) {
            self.set_step(&cell, step, StepStatus::Running, None);
            self.emit(&cell, EventKind::StepStarted { step });
            let t = std::time::Instant::now();
            let r = if forward {
                crate::steps::run_step(&self, &cell, step, &spec, &mig, &mut summary).await
            } else {
                crate::steps::undo_step(&self, step, &spec, &mig).await
            };
            match r {
                Ok(note) => {
                    if forward {
                        mig.completed.push(step);
                    } else {
                        mig.completed.retain(|s| *s != step);
                    }
                    let _ = self.save_mig(&mig);
                    self.set_step(&cell, step, StepStatus::Done, Some(note.clone()));
                    self.emit(&cell, EventKind::StepDone { step, elapsed_ms: t.elapsed().as_millis() as u64, note });
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    self.set_step(&cell, step, StepStatus::Failed, Some(msg.clone()));
                    self.emit(&cell, EventKind::StepFailed { step, error: msg.clone() });
                    self.finish(&cell, JobStatus::Failed, Some(format!("recovery step {} failed: {msg}", step.name())), summary);
                    return;
                }
            }
        }
        mig.finished = true;
        mig.rolled_back = !forward;
        let _ = self.save_mig(&mig);
        cell.lock().guest_host = Some(if forward { spec.target.clone() } else { spec.source.name.clone() });
        self.finish(&cell, JobStatus::Succeeded, None, summary);
    }
}

fn push_event(r: &mut JobRecord, kind: EventKind) {
    let seq = r.events.len() as u64;
    r.events.push(JobEvent { seq, at_ms: now_ms(), kind });
}

fn names(steps: &[Step]) -> String {
    if steps.is_empty() {
        return "none".into();
    }
    steps.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(wr: &mut W, e: JobEvent) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut line = serde_json::to_vec(&vmove_api::StreamLine::Event { job_event: e })?;
    line.push(b'\n');
    wr.write_all(&line).await?;
    wr.flush().await?;
    Ok(())
}

/// Streams a job's events from `from` to `wr`, one JSON line each, until the job ends.
pub async fn watch_events<W: tokio::io::AsyncWrite + Unpin>(cell: &JobCell, from: u64, wr: &mut W) -> Result<JobRecord> {
    let mut rx = cell.events.subscribe();
    let mut next = from;
    loop {
        let (batch, done) = {
            let r = cell.lock();
            let batch: Vec<JobEvent> = r.events.iter().skip(next as usize).cloned().collect();
            (batch, r.status.is_final())
        };
        for e in batch {
            next = e.seq + 1;
            send(wr, e).await?;
        }
        if done && next as usize >= cell.lock().events.len() {
            return Ok(cell.snapshot());
        }
        tokio::select! {
            r = rx.changed() => { if r.is_err() { return Ok(cell.snapshot()); } }
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => { send(wr, heartbeat()).await?; }
        }
    }
}

/// A no-op event that keeps an idle stream alive (not stored in the job).
fn heartbeat() -> JobEvent {
    JobEvent { seq: vmove_api::HEARTBEAT_SEQ, at_ms: now_ms(), kind: EventKind::Info { message: String::new() } }
}

