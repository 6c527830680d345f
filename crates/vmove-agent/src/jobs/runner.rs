//! Runs a job: executes what its [`JobMachine`] asks for (check the source, run or undo a
//! step, wait for a resume), reports the outcome back, and saves the job and the
//! migration record after every transition. A save that fails stops the job (fail-stop).
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmove_api::{ErrorCode, EventKind, JobStatus, StepStatus, Summary};
use vmove_plan::{Action, Direction, EndStatus, FailKind, Input, JobMachine, JobPhase, Note, Side, Step};

use super::{end_record, JobCell, Jobs};
use crate::error::{AgentError, Result};
use crate::steps::{self, StepCx};

/// Runs `m` to its end.
pub async fn run(jobs: Arc<Jobs>, cell: Arc<JobCell>, mut m: JobMachine) {
    let summary = Mutex::new(Summary::default());
    let action = match m.direction() {
        Direction::Migrate => cell.snapshot().action(),
        d => format!(
            "RECOVER {} ({})",
            cell.snapshot().action(),
            if d == Direction::RecoverForward { "going forward on the target" } else { "rolling back to the source" }
        ),
    };
    if m.direction() == Direction::Migrate {
        crate::migrate_dst::sample_dirty_rate_early(&jobs, &cell);
    }
    let mut failed_write = cell.emit(&jobs.agent.state, EventKind::JobStarted { action }).await.err();
    if failed_write.is_none() {
        let notes = m.take_start_notes();
        failed_write = save(&jobs, &cell, &m, notes).await.err();
    }
    while failed_write.is_none() {
        let input = match m.action() {
            Action::Done => break,
            Action::CheckSource => match steps::check_source(&jobs, &cell.snapshot().spec).await {
                Ok(was_running) => Input::SourceAnswered { was_running },
                Err(e) => Input::SourceFailed { error: e.message },
            },
            Action::WaitResume(_) => {
                if cell.wait_resumed().await {
                    Input::Resumed
                } else {
                    Input::CancelRequested
                }
            }
            Action::Run(step) => match run_step(&jobs, &cell, &m, step, &summary).await {
                Ok(i) => i,
                Err(e) => {
                    failed_write = Some(e);
                    break;
                }
            },
            Action::Undo(step) => match undo_step(&jobs, &cell, &m, step).await {
                Ok(i) => i,
                Err(e) => {
                    failed_write = Some(e);
                    break;
                }
            },
        };
        let mut notes = transition(&mut m, input);
        if cell.cancelled() && !m.cancel_requested() && m.action() != Action::Done {
            notes.extend(transition(&mut m, Input::CancelRequested));
        }
        failed_write = save(&jobs, &cell, &m, notes).await.err();
    }
    if let Some(e) = failed_write {
        tracing::error!(job = %cell.id(), "cannot save the job's state: {e}");
        let _ = transition(&mut m, Input::StateWriteFailed { error: e.message });
    }
    finish(&jobs, &cell, &m, summary.into_inner().unwrap_or_else(|p| p.into_inner())).await;
}

fn transition(m: &mut JobMachine, input: Input) -> Vec<Note> {
    match m.on(input) {
        Ok(n) => n,
        Err(e) => {
            // A runner bug: end the job rather than loop.
            tracing::error!("{e}");
            let _ = m.on(Input::StateWriteFailed { error: e.to_string() });
            vec![]
        }
    }
}

/// Saves the migration record and tells the operator what the transition noted.
async fn save(jobs: &Jobs, cell: &JobCell, m: &JobMachine, notes: Vec<Note>) -> Result<()> {
    jobs.save_mig(m.record()).await?;
    for n in notes {
        let message = match n {
            Note::AlreadyDone(step) => {
                cell.set_step(step, StepStatus::AlreadyDone, Some("already completed".into()));
                cell.save(&jobs.agent.state).await?;
                cell.emit(&jobs.agent.state, EventKind::StepDone { step, elapsed_ms: 0, note: "already completed".into() }).await?;
                continue;
            }
            Note::Paused(step) => format!("paused before {step} (test hook)"),
            Note::CancelIgnored => "cancel ignored: the guest already moved (past the point of no return)".into(),
            Note::RollingBack(why) => format!("rolling back the target: {why}"),
        };
        cell.emit(&jobs.agent.state, EventKind::Info { message }).await?;
    }
    Ok(())
}

async fn run_step(jobs: &Arc<Jobs>, cell: &Arc<JobCell>, m: &JobMachine, step: Step, summary: &Mutex<Summary>) -> Result<Input> {
    let spec = cell.snapshot().spec;
    cell.set_step(step, StepStatus::Running, None);
    cell.save(&jobs.agent.state).await?;
    cell.emit(&jobs.agent.state, EventKind::StepStarted { step }).await?;
    let t = Instant::now();
    let r = if crate::hooks::inject_fault(&jobs.agent, &spec, step) {
        Err(AgentError::internal("injected fault"))
    } else {
        let peer = jobs.peer(&spec)?;
        let cx = StepCx { jobs, cell, peer: peer.as_ref(), spec: &spec, record: m.record(), summary };
        steps::work(spec.mode, step).run(&cx).await
    };
    // A state write that failed inside the step stops the job where it is.
    let r = match r {
        Err(e) if e.code == ErrorCode::StateWrite => return Err(e),
        r => r,
    };
    Ok(match r {
        Ok(note) => {
            cell.set_step(step, StepStatus::Done, Some(note.clone()));
            if step == Step::MigrateGuest {
                cell.lock().guest_host = Some(spec.target.clone());
                // On etcd the cluster's placement follows at once (one truth, also for a
                // detached job); a write that fails stops the job, recoverable.
                if let Some(f) = jobs.agent.fleet() {
                    f.place_guest(&spec.guest, &spec.target).await?;
                }
            }
            cell.save(&jobs.agent.state).await?;
            let elapsed_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
            cell.emit(&jobs.agent.state, EventKind::StepDone { step, elapsed_ms, note }).await?;
            Input::StepSucceeded
        }
        Err(e) => {
            cell.set_step(step, StepStatus::Failed, Some(e.message.clone()));
            cell.save(&jobs.agent.state).await?;
            cell.emit(&jobs.agent.state, EventKind::StepFailed { step, error: e.message.clone() }).await?;
            let kind = match e.code {
                ErrorCode::Cancelled => FailKind::Cancelled,
                ErrorCode::Timeout => FailKind::TimedOut,
                ErrorCode::PastNoReturn => FailKind::PastNoReturn,
                _ => FailKind::Error,
            };
            Input::StepFailed { error: e.message, kind }
        }
    })
}

async fn undo_step(jobs: &Arc<Jobs>, cell: &Arc<JobCell>, m: &JobMachine, step: Step) -> Result<Input> {
    let spec = cell.snapshot().spec;
    let listed = m.direction() == Direction::RecoverBack;
    if listed {
        cell.set_step(step, StepStatus::Running, None);
        cell.save(&jobs.agent.state).await?;
        cell.emit(&jobs.agent.state, EventKind::StepStarted { step }).await?;
    }
    let t = Instant::now();
    let summary = Mutex::new(Summary::default());
    let peer = jobs.peer(&spec)?;
    let cx = StepCx { jobs, cell, peer: peer.as_ref(), spec: &spec, record: m.record(), summary: &summary };
    let r = match steps::work(spec.mode, step).undo(&cx).await {
        Err(e) if e.code == ErrorCode::StateWrite => return Err(e),
        r => r,
    };
    Ok(match r {
        Ok(note) => {
            if listed {
                cell.set_step(step, StepStatus::Done, Some(note.clone()));
                cell.save(&jobs.agent.state).await?;
                let elapsed_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
                cell.emit(&jobs.agent.state, EventKind::StepDone { step, elapsed_ms, note }).await?;
            } else {
                cell.emit(&jobs.agent.state, EventKind::Info { message: format!("undone {step}: {note}") }).await?;
            }
            Input::UndoSucceeded
        }
        Err(e) => {
            if listed {
                cell.set_step(step, StepStatus::Failed, Some(e.message.clone()));
                cell.save(&jobs.agent.state).await?;
                cell.emit(&jobs.agent.state, EventKind::StepFailed { step, error: e.message.clone() }).await?;
            } else {
                cell.emit(&jobs.agent.state, EventKind::Info { message: format!("undoing {step} failed: {}", e.message) }).await?;
            }
            Input::UndoFailed { error: e.message }
        }
    })
}

/// Ends the job: the record's status, where the guest is, the final event. Best effort:
/// when the state cannot be written, the job stays "running" on disk and a restarted agent
/// marks it failed, recoverable.
async fn finish(jobs: &Jobs, cell: &JobCell, m: &JobMachine, mut summary: Summary) {
    let (status, error) = match m.phase() {
        JobPhase::Ended { status, reason } => (
            match status {
                EndStatus::Succeeded => JobStatus::Succeeded,
                EndStatus::Failed => JobStatus::Failed,
                EndStatus::Cancelled => JobStatus::Cancelled,
            },
            reason.clone(),
        ),
        p => (JobStatus::Failed, Some(format!("job stopped in phase {p:?}"))),
    };
    let spec = cell.snapshot().spec;
    match m.guest_side() {
        Some(Side::Target) => cell.lock().guest_host = Some(spec.target.clone()),
        Some(Side::Source) => cell.lock().guest_host = Some(spec.source.name.clone()),
        // A forward recovery that succeeded finished the move (the job it recovers ran
        // MIGRATE_GUEST): the guest is on the target, and the record says so, so that the
        // CLI's cluster file (and a drain's) follows it.
        None if m.direction() == Direction::RecoverForward && status == JobStatus::Succeeded => {
            cell.lock().guest_host = Some(spec.target.clone())
        }
        None => {}
    }
    summary.total_ms = crate::now_ms().saturating_sub(cell.lock().created_ms);
    let guest_host = cell.lock().guest_host.clone();
    if let (Some(f), Some(host)) = (jobs.agent.fleet(), &guest_host) {
        if let Err(e) = f.place_guest(&spec.guest, host).await {
            tracing::error!(job = %cell.id(), "cannot record where {} is ({host}): {e}", spec.guest.name);
        }
    }
    // The guest is free for other migrations once this one has ended.
    jobs.unclaim(&cell.id(), &spec.guest.name).await;
    // Counted before the record ends, so that whoever sees the job ended sees it counted.
    let mut ended = cell.snapshot();
    ended.status = status;
    jobs.agent.metrics.job_ended(&ended, &summary);
    end_record(cell, status, error.clone());
    if m.record().finished && m.record().rolled_back {
        release_source(jobs, cell, &spec).await;
    }
    let r = async {
        jobs.save_mig(m.record()).await?;
        cell.save(&jobs.agent.state).await?;
        cell.emit(&jobs.agent.state, EventKind::JobEnded { status, error, summary }).await
    }
    .await;
    if let Err(e) = r {
        tracing::error!(job = %cell.id(), "cannot record the end of the job: {e}");
        // Wake watchers anyway: the record in memory has ended.
        cell.events.send_modify(|n| *n = n.saturating_add(0));
    }
}

/// After a rollback the source no longer serves this migration: it releases the guest for
/// other migrations. Best effort: a source that does not answer keeps its claim until a
/// migration from the same target or an operator's `guest undefine` ends it.
async fn release_source(jobs: &Jobs, cell: &JobCell, spec: &vmove_api::JobSpec) {
    let req = vmove_api::Request::PeerRelease { name: spec.guest.name.clone(), claim: format!("the migration to {}", spec.target) };
    let r = match jobs.peer(spec) {
        Ok(p) => p.call(&req, crate::peer::PEER_TIMEOUT).await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        let message = format!("{} keeps the guest claimed ({e})", spec.source.name);
        let _ = cell.emit(&jobs.agent.state, EventKind::Info { message }).await;
    }
}
