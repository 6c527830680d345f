//! The interpreter: a loaded cluster model, the pending action, the action list, and what
//! each command does to them.
//!
//! The model is the loaded cluster file in memory. `MERGE ACTIONS` validates each saved
//! action with the same prechecks as `vmove migrate --precheck` and applies it to the model
//! (the planned state). `DEPLOY ACTIONS` runs the merged actions as jobs on the target
//! agents, exactly as `vmove migrate` does; the jobs update the loaded file where guests
//! really moved, and the model is reloaded from it (the deployed state).
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use serde_json::{json, Value};
use vmove_api::{JobRecord, JobStatus, StepStatus};
use vmove_model::Cluster;
use vmove_plan::{Finding, Mode, Step, Verdict};

use super::parse::{quote, Command, Migrate};
use crate::args::MigrateArgs;
use crate::cmd_job::{follow_with, oedacli_date, FollowOpts};
use crate::cmd_migrate;
use crate::ctx::Ctx;

/// Where an action is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionState {
    /// In the list (`SAVE ACTION`).
    Saved,
    /// Validated and applied to the model (`MERGE ACTIONS`).
    Merged,
    /// Run through the agents (`DEPLOY ACTIONS`).
    Deployed,
    /// Failed validation or deployment.
    Failed,
}

impl ActionState {
    fn as_str(self) -> &'static str {
        match self {
            ActionState::Saved => "saved",
            ActionState::Merged => "merged",
            ActionState::Deployed => "deployed",
            ActionState::Failed => "failed",
        }
    }
}

/// One saved action.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// Its number in the session.
    pub id: u32,
    /// The command, as Oracle Exadata's oedacli writes it.
    pub command: String,
    /// Where it is.
    pub state: ActionState,
    /// The job that deployed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    m: Migrate,
}

/// The loaded cluster file and its model.
struct Loaded {
    /// Absolute path.
    path: PathBuf,
    /// As given to LOAD FILE.
    shown: String,
    /// The model: the file, then the planned state after MERGE, the deployed state after DEPLOY.
    model: Cluster,
}

/// What a command did: whether to stop, and its result as JSON (`--json`).
pub struct Outcome {
    /// EXIT or QUIT.
    pub exit: bool,
    /// The command's result, merged into its JSON line.
    pub json: Value,
}

impl Outcome {
    fn ok(json: Value) -> Result<Outcome> {
        Ok(Outcome { exit: false, json })
    }
}

/// An oedacli session.
pub struct Session {
    json: bool,
    loaded: Option<Loaded>,
    pending: Option<Migrate>,
    actions: Vec<Action>,
    next_id: u32,
}

/// The commands and their syntax, for HELP.
pub const HELP: &[(&str, &str)] = &[
    ("LOAD FILE NAME=file", "load a cluster file (relative to the current directory); later commands use it"),
    (
        "MIGRATE GUEST HOSTNAME=guest MODE=OFFLINE|OFFLINEFORCE|LIVE SRCHOST=host TGTHOST=host [WHERE STEPNAME=step]",
        "record a migration as the pending action",
    ),
    ("SAVE ACTION", "add the pending action to the action list"),
    ("MERGE ACTIONS", "validate the saved actions (prechecks, against the agents) and apply them to the model"),
    ("SAVE FILE NAME=file", "write the model as it now stands (planned after MERGE, deployed after DEPLOY)"),
    ("DEPLOY ACTIONS", "run the merged actions through the agents, in order; stops at the first failure"),
    ("LIST ACTIONS", "the actions: id, state (saved, merged, deployed, failed), job, command"),
    ("HELP", "this text"),
    ("EXIT | QUIT", "leave"),
];

/// The text of HELP.
pub fn help_text() -> String {
    let mut s = String::from("Commands (keywords and MODE values are case-insensitive; NAME=value pairs in any order):\n");
    for (syntax, what) in HELP {
        s.push_str(&format!("  {syntax}\n      {what}\n"));
    }
    s.push_str(
        "Steps (WHERE STEPNAME=), in order:\n  OFFLINE, OFFLINEFORCE: STOP_GUEST CREATE_BRIDGES DETACH_INTERFACES DETACH_VOLUMES \
         ATTACH_VOLUMES MIGRATE_GUEST ATTACH_INTERFACES STARTUP_GUEST\n  LIVE: ATTACH_VOLUMES CREATE_BRIDGES MIGRATE_GUEST \
         DETACH_VOLUMES; PRECHECK_LIVEMIGRATION runs the live prechecks alone",
    );
    s
}

impl Session {
    /// A session with nothing loaded; `json` turns results into JSON lines.
    pub fn new(json: bool) -> Session {
        Session { json, loaded: None, pending: None, actions: Vec::new(), next_id: 1 }
    }

    /// Runs one command. Text output is printed as it happens; the JSON result is returned.
    pub async fn exec(&mut self, cmd: Command) -> Result<Outcome> {
        match cmd {
            Command::Empty => Outcome::ok(json!({})),
            Command::LoadFile { name } => self.load(&name),
            Command::MigrateGuest(m) => self.migrate(m),
            Command::SaveAction => self.save_action(),
            Command::MergeActions => self.merge().await,
            Command::SaveFile { name } => self.save_file(&name),
            Command::DeployActions => self.deploy().await,
            Command::ListActions => self.list(),
            Command::Help => {
                if !self.json {
                    println!("{}", help_text());
                }
                let cmds: Vec<Value> = HELP.iter().map(|(s, w)| json!({ "syntax": s, "what": w })).collect();
                Outcome::ok(json!({ "help": cmds }))
            }
            Command::Exit => Ok(Outcome { exit: true, json: json!({}) }),
        }
    }

    fn loaded(&self, command: &str) -> Result<&Loaded> {
        self.loaded.as_ref().ok_or_else(|| anyhow!("{command}: no cluster file loaded: expected LOAD FILE NAME=file first"))
    }

    fn load(&mut self, name: &str) -> Result<Outcome> {
        let token = format!("NAME={}", quote(name));
        let path = std::path::absolute(name).map_err(|e| anyhow!("LOAD FILE {token}: {e}"))?;
        let model = Cluster::load(&path).map_err(|e| anyhow!("LOAD FILE {token}: {e}"))?;
        let out = json!({
            "file": path,
            "hosts": model.hosts.iter().map(|h| &h.name).collect::<Vec<_>>(),
            "guests": model.guests.iter().map(|g| json!({ "name": g.name, "host": g.host })).collect::<Vec<_>>(),
        });
        self.loaded = Some(Loaded { path, shown: name.to_string(), model });
        self.pending = None;
        self.actions.clear();
        Outcome::ok(out)
    }

    fn migrate(&mut self, m: Migrate) -> Result<Outcome> {
        let l = self.loaded("MIGRATE GUEST")?;
        check_names(&l.model, &l.shown, &m)?;
        let out = json!({ "pending": m.to_string() });
        self.pending = Some(m);
        Outcome::ok(out)
    }

    fn save_action(&mut self) -> Result<Outcome> {
        let m = self.pending.take().ok_or_else(|| anyhow!("SAVE ACTION: no pending action: expected MIGRATE GUEST first"))?;
        let a = Action { id: self.next_id, command: m.to_string(), state: ActionState::Saved, job: None, error: None, m };
        self.next_id += 1;
        let out = json!({ "action": a });
        self.actions.push(a);
        Outcome::ok(out)
    }

    async fn merge(&mut self) -> Result<Outcome> {
        let text = !self.json;
        let Some(l) = self.loaded.as_mut() else { bail!("MERGE ACTIONS: no cluster file loaded: expected LOAD FILE NAME=file first") };
        let todo: Vec<usize> = (0..self.actions.len()).filter(|&i| self.actions[i].state == ActionState::Saved).collect();
        if todo.is_empty() {
            bail!("MERGE ACTIONS: no saved actions: expected MIGRATE GUEST and SAVE ACTION first");
        }
        let ctx = Ctx { cluster_path: l.path.clone(), json: self.json };
        let mut results = Vec::new();
        let mut failed = Vec::new();
        for i in todo {
            let a = &mut self.actions[i];
            if text {
                println!("Validating Action ID : {} {}", a.id, a.command);
            }
            let findings = match validate(&ctx, &l.model, &l.shown, &a.m).await {
                Ok(f) => f,
                Err(e) => Err(format!("cannot be validated: {e:#}").replace('\n', " ")),
            };
            match findings {
                Ok(findings) => {
                    if text {
                        if let (true, Some(step)) = (findings.is_empty(), a.m.step) {
                            println!("Single step {step}: the target agent checks at DEPLOY that the steps before it are done");
                        } else {
                            print_passed(&findings);
                        }
                        println!("Merging MIGRATE GUEST");
                    }
                    apply(&mut l.model, &a.m);
                    a.state = ActionState::Merged;
                    if text {
                        println!("Action Validated and Merged OK");
                    }
                    results.push(json!({ "id": a.id, "command": a.command, "state": a.state, "findings": findings }));
                }
                Err(why) => {
                    if text {
                        println!("Action ID : {} not merged: {why}", a.id);
                    }
                    a.state = ActionState::Failed;
                    a.error = Some(why.clone());
                    failed.push(format!("action {} {why}", a.id));
                    results.push(json!({ "id": a.id, "command": a.command, "state": a.state, "error": why }));
                }
            }
        }
        if !failed.is_empty() {
            bail!("MERGE ACTIONS: {}", failed.join("; "));
        }
        Outcome::ok(json!({ "actions": results }))
    }

    fn save_file(&mut self, name: &str) -> Result<Outcome> {
        let l = self.loaded("SAVE FILE")?;
        let token = format!("NAME={}", quote(name));
        let path = std::path::absolute(name).map_err(|e| anyhow!("SAVE FILE {token}: {e}"))?;
        let undeployed = self.actions.iter().any(|a| a.state == ActionState::Merged);
        if undeployed && same_file(&path, &l.path) {
            bail!(
                "SAVE FILE {token}: that is the loaded cluster file and the merged actions are not deployed yet: \
                 expected another file name (DEPLOY ACTIONS updates the loaded file)"
            );
        }
        let model = rebased(&l.model, &path);
        model.save(&path).map_err(|e| anyhow!("SAVE FILE {token}: {e}"))?;
        if !self.json {
            println!("File : {name} saved OK");
        }
        Outcome::ok(json!({ "file": path }))
    }

    async fn deploy(&mut self) -> Result<Outcome> {
        let text = !self.json;
        let l = self.loaded("DEPLOY ACTIONS")?;
        let path = l.path.clone();
        let todo: Vec<usize> = (0..self.actions.len()).filter(|&i| self.actions[i].state == ActionState::Merged).collect();
        if todo.is_empty() {
            bail!("DEPLOY ACTIONS: no merged actions: expected MERGE ACTIONS first");
        }
        let ctx = Ctx { cluster_path: path.clone(), json: self.json };
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
        // The jobs updated the loaded file where guests really moved: that is the model now.
        let reloaded = Cluster::load(&path);
        if let (Some(l), Ok(c)) = (self.loaded.as_mut(), &reloaded) {
            l.model = c.clone();
        }
        if let Some(f) = failure {
            bail!(f);
        }
        reloaded.map_err(|e| anyhow!("DEPLOY ACTIONS: reload the cluster file: {e}"))?;
        let ms = t0.elapsed().as_millis() as u64;
        if text {
            println!("Done [Elapsed = {ms} mS [{:.1} minutes] {}]", ms as f64 / 60000.0, oedacli_date());
        }
        Outcome::ok(json!({ "actions": results, "elapsed_ms": ms }))
    }

    fn list(&self) -> Result<Outcome> {
        let mut rows: Vec<Vec<String>> = self
            .actions
            .iter()
            .map(|a| vec![a.id.to_string(), a.state.as_str().into(), a.job.clone().unwrap_or_default(), a.command.clone()])
            .collect();
        if let Some(p) = &self.pending {
            rows.push(vec!["-".into(), "pending".into(), String::new(), p.to_string()]);
        }
        if !self.json {
            if rows.is_empty() {
                println!("no actions");
            } else {
                crate::out::table(&["ID", "STATE", "JOB", "COMMAND"], &rows);
            }
        }
        Outcome::ok(json!({ "actions": self.actions, "pending": self.pending.as_ref().map(|p| p.to_string()) }))
    }
}

/// The guest and the hosts exist in the model; a whole migration starts where the model
/// puts the guest.
fn check_names(model: &Cluster, file: &str, m: &Migrate) -> Result<()> {
    let guest = model
        .guest(&m.guest)
        .ok_or_else(|| anyhow!("HOSTNAME={}: no guest named {} in {file}", quote(&m.guest), m.guest))?;
    for (key, host) in [("SRCHOST", &m.source), ("TGTHOST", &m.target)] {
        if model.host(host).is_none() {
            bail!("{key}={}: no host named {host} in {file}", quote(host));
        }
    }
    if matches!(m.step, None | Some(Step::PrecheckLiveMigration)) && guest.host != m.source {
        bail!("SRCHOST={}: {file} puts {} on {}", quote(&m.source), m.guest, guest.host);
    }
    Ok(())
}

/// What `vmove migrate` gets for the action.
fn migrate_args(m: &Migrate) -> MigrateArgs {
    MigrateArgs {
        guest: m.guest.clone(),
        to: m.target.clone(),
        from: Some(m.source.clone()),
        mode: m.mode.wire_name().into(),
        step: m.step.map(|s| s.name().into()),
        precheck: false,
        timeout: None,
        max_downtime: None,
        bandwidth: None,
        converge: None,
        insecure_transport: false,
        multifd: 2,
        ignore_check: Vec::new(),
        detach: false,
        inject_fault: None,
        pause_before: None,
        pause_at_switchover: false,
    }
}

/// Validates an action against the model: the prechecks for a whole migration or
/// PRECHECK_LIVEMIGRATION (empty for a single step). `Err(Err)`: it could not be checked;
/// `Ok(Err)`: it failed, with the failing checks on one line.
async fn validate(ctx: &Ctx, model: &Cluster, file: &str, m: &Migrate) -> Result<Result<Vec<Finding>, String>> {
    check_names(model, file, m)?;
    let p = cmd_migrate::prepare(model, &migrate_args(m))?;
    if !p.runs_prechecks() {
        return Ok(Ok(Vec::new()));
    }
    let findings = cmd_migrate::prechecks(ctx, model, &p.req).await?;
    if vmove_plan::any_failed(&findings) {
        if !ctx.json {
            for f in findings.iter().filter(|f| f.verdict == Verdict::Fail) {
                println!("  FAIL {}: {}", f.id, f.reason);
            }
        }
        return Ok(Err(format!("failed validation: {}", cmd_migrate::failed_ids(&findings))));
    }
    Ok(Ok(findings))
}

fn print_passed(findings: &[Finding]) {
    let warns: Vec<&Finding> = findings.iter().filter(|f| f.verdict == Verdict::Warn).collect();
    let plural = if warns.len() == 1 { "" } else { "s" };
    println!("Prechecks passed ({} checks, {} warning{plural})", findings.len(), warns.len());
    for f in warns {
        println!("  WARN {}: {}", f.id, f.reason);
    }
}

/// Applies a merged action to the model: the guest is planned on the target when the
/// action moves it.
pub fn apply(model: &mut Cluster, m: &Migrate) {
    if m.moves_guest() {
        if let Some(g) = model.guest_mut(&m.guest) {
            g.host = m.target.clone();
        }
    }
}

/// The model as it must be written to `path`: paths relative to the loaded file's
/// directory (the TLS files) become absolute when `path` is in another directory.
pub fn rebased(model: &Cluster, path: &Path) -> Cluster {
    let mut c = model.clone();
    let dir = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir(path) != dir(&model.path) {
        for p in [&mut c.tls.ca, &mut c.tls.cert, &mut c.tls.key] {
            if p.is_relative() {
                *p = model.resolve(p);
            }
        }
    }
    c
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
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
        Failure { job: None, message: format!("failed: {e:#}").replace('\n', " ") }
    }
}

/// Runs one action as `vmove migrate` would, against the loaded file as it now is.
async fn deploy_one(ctx: &Ctx, m: &Migrate) -> Result<Deployed, Failure> {
    let text = !ctx.json;
    let real = ctx.cluster()?;
    let p = cmd_migrate::prepare(&real, &migrate_args(m))?;
    let mut findings = Vec::new();
    if p.runs_prechecks() {
        findings = cmd_migrate::prechecks(ctx, &real, &p.req).await?;
        let failed = vmove_plan::any_failed(&findings);
        if text && (p.precheck_only || failed) {
            cmd_migrate::print_findings(ctx, &p.req, &findings);
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
        if p.precheck_only {
            return Ok(Deployed { job: None, findings });
        }
        if text {
            print_passed(&findings);
        }
    }
    let rec = cmd_migrate::submit(ctx, &real, &p, None).await?;
    let opts = FollowOpts {
        started_line: Some(format!("Deploying MIGRATE GUEST (job {} on {})", rec.id, m.target)),
        done_lines: false,
        quiet: ctx.json,
    };
    let rec = follow_with(ctx, &m.target, &rec.id, &opts).await.map_err(|e| Failure {
        job: Some(rec.id.clone()),
        message: format!("(job {}) failed: {e:#}; see `vmove job show {}`", rec.id, rec.id).replace('\n', " "),
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

    const SAMPLE: &str = r#"
[cluster]
name = "lab"
[tls]
ca = "pki/ca.pem"
cert = "pki/operator.pem"
key = "/etc/vmove/operator.key"
[[hosts]]
name = "host1"
address = "198.51.100.2:7450"
[[hosts]]
name = "host2"
address = "198.51.100.3:7450"
[[networks]]
name = "lab-net"
bridge = "lab-net"
[[pools]]
name = "shared"
path = "/var/tmp/shared"
[[guests]]
name = "vm1"
host = "host1"
vcpus = 1
memory_mib = 512
boot = { kind = "lab" }
"#;

    fn model() -> Cluster {
        Cluster::parse(SAMPLE, Path::new("/lab/cluster.toml")).unwrap()
    }

    fn mig(mode: Mode, step: Option<Step>) -> Migrate {
        Migrate { guest: "vm1".into(), mode, source: "host1".into(), target: "host2".into(), step }
    }

    #[test]
    fn merge_moves_the_guest_only_for_whole_migrations_and_migrate_guest() {
        for (m, host) in [
            (mig(Mode::Offline, None), "host2"),
            (mig(Mode::Live, None), "host2"),
            (mig(Mode::OfflineForce, Some(Step::MigrateGuest)), "host2"),
            (mig(Mode::Offline, Some(Step::StopGuest)), "host1"),
            (mig(Mode::Live, Some(Step::AttachVolumes)), "host1"),
            (mig(Mode::Live, Some(Step::PrecheckLiveMigration)), "host1"),
        ] {
            let mut c = model();
            apply(&mut c, &m);
            assert_eq!(c.guest("vm1").unwrap().host, host, "{m}");
        }
    }

    #[test]
    fn names_are_checked_against_the_model() {
        let c = model();
        assert!(check_names(&c, "c.toml", &mig(Mode::Offline, None)).is_ok());
        let e = |m: Migrate| check_names(&c, "c.toml", &m).unwrap_err().to_string();
        assert_eq!(e(Migrate { guest: "vm9".into(), ..mig(Mode::Offline, None) }), "HOSTNAME=vm9: no guest named vm9 in c.toml");
        assert_eq!(e(Migrate { source: "host7".into(), ..mig(Mode::Offline, None) }), "SRCHOST=host7: no host named host7 in c.toml");
        assert_eq!(e(Migrate { target: "host8".into(), ..mig(Mode::Live, None) }), "TGTHOST=host8: no host named host8 in c.toml");
        let back = Migrate { source: "host2".into(), target: "host1".into(), ..mig(Mode::Offline, None) };
        assert_eq!(e(back.clone()), "SRCHOST=host2: c.toml puts vm1 on host1");
        // A single step may resume after the guest's definition moved.
        assert!(check_names(&c, "c.toml", &Migrate { step: Some(Step::StartupGuest), ..back }).is_ok());
    }

    #[test]
    fn a_model_saved_elsewhere_keeps_its_tls_files() {
        let c = model();
        let same = rebased(&c, Path::new("/lab/cluster.migration-merged.toml"));
        assert_eq!(same.tls.ca, PathBuf::from("pki/ca.pem"));
        let other = rebased(&c, Path::new("/tmp/plans/merged.toml"));
        assert_eq!(other.tls.ca, PathBuf::from("/lab/pki/ca.pem"));
        assert_eq!(other.tls.cert, PathBuf::from("/lab/pki/operator.pem"));
        assert_eq!(other.tls.key, PathBuf::from("/etc/vmove/operator.key"));
    }

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

    #[test]
    fn help_names_every_command() {
        let h = help_text();
        for c in ["LOAD FILE", "MIGRATE GUEST", "SAVE ACTION", "MERGE ACTIONS", "SAVE FILE", "DEPLOY ACTIONS", "LIST ACTIONS", "HELP", "EXIT"] {
            assert!(h.contains(c), "{c}");
        }
    }
}
