//! `DEPLOY ACTIONS`: the merged actions run as jobs on the target agents, exactly as
//! `vmove migrate` runs them, in order, stopping at the first failure; a failure says how to
//! go on (resume with a step, run again, or recover).
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use vmove_api::{JobRecord, JobStatus, StepStatus};
use vmove_plan::{Finding, Mode, Step};

use super::merge::print_passed;
use super::parse::Migrate;
use super::session::{ActionState, Outcome, Session};
use crate::cmd_job::{follow_with, oedacli_date, FollowOpts};
use crate::cmd_migrate;
use crate::ctx::Ctx;

impl Session {
    pub(super) async fn deploy(&mut self) -> Result<Outcome> {
        let text = !self.json;
        let l = self.loaded("DEPLOY ACTIONS")?;
        let path = l.path.clone();
        let todo: Vec<usize> = (0..self.actions.len()).filter(|&i| self.actions[i].state == ActionState::Merged).collect();
        if todo.is_empty() {
            bail!("DEPLOY ACTIONS: no merged actions: expected MERGE ACTIONS first");
        }
        let ctx = Ctx::new(path.clone(), self.json);
        let t0 = Instant::now();
        let mut results = Vec::new();
        let mut failure = None;
        for i in todo {
            let a = &mut self.actions[i];
            if text {
                println!("Deploying Action ID : {} {}", a.id, a.command);
            }
            let t = Instant::now();
            match deploy_one(&ctx, &a.m).await {
                Ok(Deployed { job, findings }) => {
                    a.state = ActionState::Deployed;
                    a.job = job;
                    if text {
                        println!("Done...");
                    }
                    results.push(json!({
                        "id": a.id, "command": a.command, "state": a.state, "job": a.job,
                        "elapsed_ms": t.elapsed().as_millis() as u64, "findings": findings,
                    }));
                }
                Err(Failure { job, message }) => {
                    a.state = ActionState::Failed;
                    a.job = job;
                    a.error = Some(message.clone());
                    failure = Some(format!("DEPLOY ACTIONS: action {} {message}", a.id));
                    break;
                }
            }
        }
        // The jobs updated the loaded file (or the store) where guests really moved: that is
        // the model now.
        let reloaded = ctx.cluster().await;
        if let (Some(l), Ok(c)) = (self.loaded.as_mut(), &reloaded) {
            l.model = c.clone();
        }
        if let Some(f) = failure {
            bail!(f);
        }
        reloaded.context("DEPLOY ACTIONS: reload the cluster file")?;
        let ms = t0.elapsed().as_millis() as u64;
        if text {
            println!("Done [Elapsed = {ms} mS [{:.1} minutes] {}]", ms as f64 / 60000.0, oedacli_date());
        }
        Outcome::ok(json!({ "actions": results, "elapsed_ms": ms }))
    }
}

struct Deployed {
    job: Option<String>,
    findings: Vec<Finding>,
}

struct Failure {
    job: Option<String>,
    message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure { job: None, message: format!("failed: {}", crate::out::one_line(e)) }
    }
}

/// Runs one action as `vmove migrate` would, against the loaded file as it now is.
async fn deploy_one(ctx: &Ctx, m: &Migrate) -> Result<Deployed, Failure> {
    let text = !ctx.json;
    let real = ctx.cluster().await?;
    let cmd = m.command(&real.policy).map_err(anyhow::Error::from)?;
    let target = m.target_host().map_err(anyhow::Error::from)?;
    cmd_migrate::guest_spec(&real, &m.guest)?;
    let mut findings = Vec::new();
    if cmd.runs_prechecks() {
        findings = cmd_migrate::prechecks(ctx, &real, &cmd.request).await?;
        let failed = vmove_plan::any_failed(&findings);
        if text && (cmd.precheck_only || failed) {
            cmd_migrate::print_findings(ctx, &cmd.request, &findings);
        }
        if failed {
            return Err(Failure {
                job: None,
                message: format!(
                    "failed: precheck failed: {}; the guest stays on {}: fix it and run the action again",
                    cmd_migrate::failed_ids(&findings),
                    m.source
                ),
            });
        }
        if cmd.precheck_only {
            return Ok(Deployed { job: None, findings });
        }
        if text {
            print_passed(&findings);
        }
    }
    let rec = cmd_migrate::submit(ctx, &real, &cmd).await?;
    let opts = FollowOpts {
        started_line: Some(format!("Deploying MIGRATE GUEST (job {} on {target})", rec.id)),
        done_lines: false,
        quiet: ctx.json,
    };
    let rec = follow_with(ctx, target, &rec.id, &opts).await.map_err(|e| Failure {
        job: Some(rec.id.clone()),
        message: format!("(job {}) failed: {}; see `vmove job show {}`", rec.id, crate::out::one_line(e), rec.id),
    })?;
    if rec.status != JobStatus::Succeeded {
        return Err(Failure { job: Some(rec.id.clone()), message: failure_message(m, &JobOutcome::of(&rec)) });
    }
    Ok(Deployed { job: Some(rec.id), findings })
}

/// What a job that did not succeed left behind.
pub struct JobOutcome<'a> {
    /// Job id.
    pub id: &'a str,
    /// How it ended.
    pub status: JobStatus,
    /// Its error.
    pub error: Option<&'a str>,
    /// The step that failed, if one did.
    pub failed_step: Option<Step>,
}

impl<'a> JobOutcome<'a> {
    fn of(rec: &'a JobRecord) -> JobOutcome<'a> {
        JobOutcome {
            id: &rec.id,
            status: rec.status,
            error: rec.error.as_deref(),
            failed_step: rec.steps.iter().find(|s| s.status == StepStatus::Failed).map(|s| s.step),
        }
    }
}

/// Why a job failed and how to go on, on one line.
pub fn failure_message(m: &Migrate, job: &JobOutcome) -> String {
    let error = job.error.unwrap_or("no reason given");
    let error = error.split("; resume with --step").next().unwrap_or(error);
    let status = format!("{:?}", job.status).to_lowercase();
    let again = || format!("the guest stays on {}; run it again with: {}", m.source, Migrate { step: None, ..m.clone() });
    let hint = match job.failed_step {
        _ if job.status == JobStatus::Cancelled => again(),
        Some(Step::MigrateGuest) if m.mode == Mode::Live => again(),
        Some(s) => format!(
            "resume with: {} (then SAVE ACTION, MERGE ACTIONS, DEPLOY ACTIONS), or run `vmove job recover {}`",
            Migrate { step: Some(s), ..m.clone() },
            job.id
        ),
        None => format!("run `vmove job recover {}`", job.id),
    };
    format!("(job {}) {status}: {error}; {hint}", job.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oedacli::session::tests::mig;

    fn failed_job(step: Step, status: JobStatus, error: &str) -> JobOutcome<'_> {
        JobOutcome { id: "host2-3", status, error: Some(error), failed_step: Some(step) }
    }

    #[test]
    fn a_failed_step_says_how_to_resume() {
        let m = mig(Mode::Offline, None);
        let rec = failed_job(
            Step::AttachVolumes,
            JobStatus::Failed,
            "ATTACH_VOLUMES failed: injected fault; resume with --step ATTACH_VOLUMES or run `vmove job recover host2-3`",
        );
        assert_eq!(
            failure_message(&m, &rec),
            "(job host2-3) failed: ATTACH_VOLUMES failed: injected fault; resume with: MIGRATE GUEST HOSTNAME=vm1 \
             MODE=offline SRCHOST=host1 TGTHOST=host2 WHERE STEPNAME=ATTACH_VOLUMES (then SAVE ACTION, MERGE ACTIONS, \
             DEPLOY ACTIONS), or run `vmove job recover host2-3`"
        );
    }

    #[test]
    fn a_job_failed_outside_a_step_is_recovered() {
        let m = mig(Mode::Offline, None);
        let job = JobOutcome { id: "host2-4", status: JobStatus::Failed, error: Some("the agent on host2 restarted"), failed_step: None };
        assert_eq!(failure_message(&m, &job), "(job host2-4) failed: the agent on host2 restarted; run `vmove job recover host2-4`");
    }

    #[test]
    fn a_failed_live_migration_is_run_again_whole() {
        let m = mig(Mode::Live, None);
        let rec = failed_job(Step::MigrateGuest, JobStatus::Cancelled, "MIGRATE_GUEST: timed out after 6 s; the target was cleaned up");
        assert_eq!(
            failure_message(&m, &rec),
            "(job host2-3) cancelled: MIGRATE_GUEST: timed out after 6 s; the target was cleaned up; the guest stays on host1; \
             run it again with: MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 TGTHOST=host2"
        );
    }
}
