//! The interpreter: a loaded cluster model, the pending action, the action list, and what
//! each command does to them.
//!
//! The model is the loaded cluster file in memory. `MERGE ACTIONS` validates each saved
//! action with the same prechecks as `vmove migrate --precheck` and applies it to the model
//! (the planned state). `DEPLOY ACTIONS` runs the merged actions as jobs on the target
//! agents, exactly as `vmove migrate` does; the jobs update the loaded file where guests
//! really moved, and the model is reloaded from it (the deployed state).
//!
//! The interpreter is split by phase: this file holds the session, its model and the
//! commands that only touch them; [`super::merge`] validates and merges actions;
//! [`super::deploy`] runs them through the agents.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use vmove_model::Cluster;

use super::merge::check_names;
use super::parse::{quote, Command, Migrate};

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
    pub(super) m: Migrate,
}

/// The loaded cluster file and its model.
pub(super) struct Loaded {
    /// Absolute path.
    pub(super) path: PathBuf,
    /// As given to LOAD FILE.
    pub(super) shown: String,
    /// The model: the file, then the planned state after MERGE, the deployed state after DEPLOY.
    pub(super) model: Cluster,
}

/// What a command did: whether to stop, and its result as JSON (`--json`).
pub struct Outcome {
    /// EXIT or QUIT.
    pub exit: bool,
    /// The command's result, merged into its JSON line.
    pub json: Value,
}

impl Outcome {
    pub(super) fn ok(json: Value) -> Result<Outcome> {
        Ok(Outcome { exit: false, json })
    }
}

/// An oedacli session.
pub struct Session {
    pub(super) json: bool,
    pub(super) loaded: Option<Loaded>,
    pending: Option<Migrate>,
    pub(super) actions: Vec<Action>,
    next_id: u32,
}

/// The commands and their syntax, for HELP.
pub const HELP: &[(&str, &str)] = &[
    ("LOAD FILE NAME=file", "load a cluster file (relative to the current directory); later commands use it"),
    (
        "MIGRATE GUEST HOSTNAME=guest MODE=OFFLINE|OFFLINEFORCE|LIVE SRCHOST=host [TGTHOST=host] [WHERE STEPNAME=step]",
        "record a migration as the pending action; without TGTHOST (a vmove extension, whole migrations only) \
         MERGE ACTIONS lets the planner of `vmove host drain` choose the target and fixes it in the action",
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
            Command::LoadFile { name } => self.load(&name).await,
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

    pub(super) fn loaded(&self, command: &str) -> Result<&Loaded> {
        self.loaded.as_ref().ok_or_else(|| anyhow!("{command}: no cluster file loaded: expected LOAD FILE NAME=file first"))
    }

    /// Loads a cluster file (with an etcd store: the cluster the store holds).
    async fn load(&mut self, name: &str) -> Result<Outcome> {
        let token = format!("NAME={}", quote(name));
        let path = std::path::absolute(name).map_err(|e| anyhow!("LOAD FILE {token}: {e}"))?;
        let model = crate::ctx::Ctx::new(path.clone(), self.json).cluster().await.with_context(|| format!("LOAD FILE {token}"))?;
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
        model.save(&path).with_context(|| format!("SAVE FILE {token}"))?;
        if !self.json {
            println!("File : {name} saved OK");
        }
        Outcome::ok(json!({ "file": path }))
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use vmove_plan::{Mode, Step};

    pub(in crate::oedacli) fn model() -> Cluster {
        crate::testutil::cluster()
    }

    pub(in crate::oedacli) fn mig(mode: Mode, step: Option<Step>) -> Migrate {
        Migrate { guest: "vm1".into(), mode, source: "host1".into(), target: Some("host2".into()), step }
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

    #[test]
    fn help_names_every_command() {
        let h = help_text();
        for c in ["LOAD FILE", "MIGRATE GUEST", "SAVE ACTION", "MERGE ACTIONS", "SAVE FILE", "DEPLOY ACTIONS", "LIST ACTIONS", "HELP", "EXIT"] {
            assert!(h.contains(c), "{c}");
        }
    }
}
