//! `MERGE ACTIONS`: each saved action is validated against the model with the prechecks of
//! `vmove migrate --precheck`, then applied to it (the planned state).
use anyhow::{anyhow, bail, Result};
use serde_json::json;
use vmove_model::Cluster;
use vmove_plan::{Finding, PlannedMove, Step, Verdict};

use super::parse::{quote, Migrate};
use super::session::{ActionState, Outcome, Session};
use crate::cmd_migrate;
use crate::ctx::Ctx;

impl Session {
    pub(super) async fn merge(&mut self) -> Result<Outcome> {
        let text = !self.json;
        let Some(l) = self.loaded.as_mut() else { bail!("MERGE ACTIONS: no cluster file loaded: expected LOAD FILE NAME=file first") };
        let todo: Vec<usize> = (0..self.actions.len()).filter(|&i| self.actions[i].state == ActionState::Saved).collect();
        if todo.is_empty() {
            bail!("MERGE ACTIONS: no saved actions: expected MIGRATE GUEST and SAVE ACTION first");
        }
        let ctx = Ctx::new(l.path.clone(), self.json);
        let mut results = Vec::new();
        let mut failed = Vec::new();
        let mut chosen = Vec::new();
        // Merged but not deployed: the planner counts their targets as taken.
        let mut reserved: Vec<PlannedMove> =
            self.actions.iter().filter(|a| a.state == ActionState::Merged).filter_map(|a| super::choose::reserved(&a.m)).collect();
        for i in todo {
            let a = &mut self.actions[i];
            if text {
                println!("Validating Action ID : {} {}", a.id, a.command);
            }
            if a.m.target.is_none() {
                match super::choose::choose(&ctx, &l.model, &a.m, &reserved).await {
                    Ok(c) => {
                        if text {
                            println!("{}", c.line);
                        }
                        a.m.target = Some(c.planned.to.clone());
                        a.command = a.m.to_string();
                        if text {
                            println!("Action ID : {} is now {}", a.id, a.command);
                        }
                        chosen.push(json!({ "id": a.id, "target": c.planned.to, "planned": c.planned }));
                    }
                    Err(why) => {
                        let why = format!("failed: {}", crate::out::one_line(why));
                        results.push(not_merged(a, why, text, &mut failed));
                        continue;
                    }
                }
            }
            let findings = match validate(&ctx, &l.model, &l.shown, &a.m).await {
                Ok(f) => f,
                Err(e) => Err(format!("cannot be validated: {}", crate::out::one_line(e))),
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
                    reserved.extend(super::choose::reserved(&a.m));
                    if text {
                        println!("Action Validated and Merged OK");
                    }
                    results.push(json!({ "id": a.id, "command": a.command, "state": a.state, "findings": findings }));
                }
                Err(why) => results.push(not_merged(a, why, text, &mut failed)),
            }
        }
        if !failed.is_empty() {
            bail!("MERGE ACTIONS: {}", failed.join("; "));
        }
        Outcome::ok(json!({ "actions": results, "chosen": chosen }))
    }
}

/// The guest and the hosts exist in the model; a whole migration starts where the model
/// puts the guest.
pub(super) fn check_names(model: &Cluster, file: &str, m: &Migrate) -> Result<()> {
    let guest = model
        .guest(&m.guest)
        .ok_or_else(|| anyhow!("HOSTNAME={}: no guest named {} in {file}", quote(&m.guest), m.guest))?;
    for (key, host) in [("SRCHOST", Some(&m.source)), ("TGTHOST", m.target.as_ref())] {
        let Some(host) = host else { continue };
        if model.host(host).is_none() {
            bail!("{key}={}: no host named {host} in {file}", quote(host));
        }
    }
    if matches!(m.step, None | Some(Step::PrecheckLiveMigration)) && guest.host != m.source {
        bail!("SRCHOST={}: {file} puts {} on {}", quote(&m.source), m.guest, guest.host);
    }
    Ok(())
}

/// Validates an action against the model: the prechecks for a whole migration or
/// PRECHECK_LIVEMIGRATION (empty for a single step). `Err(Err)`: it could not be checked;
/// `Ok(Err)`: it failed, with the failing checks on one line.
/// An action that MERGE could not merge: marked failed, said (in text mode), counted in
/// `failed`; returns its JSON result.
fn not_merged(a: &mut super::session::Action, why: String, text: bool, failed: &mut Vec<String>) -> serde_json::Value {
    if text {
        println!("Action ID : {} not merged: {why}", a.id);
    }
    a.state = ActionState::Failed;
    a.error = Some(why.clone());
    failed.push(format!("action {} {why}", a.id));
    json!({ "id": a.id, "command": a.command, "state": a.state, "error": why })
}

async fn validate(ctx: &Ctx, model: &Cluster, file: &str, m: &Migrate) -> Result<Result<Vec<Finding>, String>> {
    check_names(model, file, m)?;
    let cmd = m.command(&model.policy)?;
    if !cmd.runs_prechecks() {
        return Ok(Ok(Vec::new()));
    }
    let findings = cmd_migrate::prechecks(ctx, model, &cmd.request).await?;
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

pub(super) fn print_passed(findings: &[Finding]) {
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
        if let (Some(g), Some(t)) = (model.guest_mut(&m.guest), &m.target) {
            g.host = t.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oedacli::session::tests::{mig, model};
    use vmove_plan::Mode;

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
        assert_eq!(e(Migrate { target: Some("host8".into()), ..mig(Mode::Live, None) }), "TGTHOST=host8: no host named host8 in c.toml");
        // No TGTHOST=: the planner chooses it at MERGE.
        assert!(check_names(&c, "c.toml", &Migrate { target: None, ..mig(Mode::Live, None) }).is_ok());
        let back = Migrate { source: "host2".into(), target: Some("host1".into()), ..mig(Mode::Offline, None) };
        assert_eq!(e(back.clone()), "SRCHOST=host2: c.toml puts vm1 on host1");
        // A single step may resume after the guest's definition moved.
        assert!(check_names(&c, "c.toml", &Migrate { step: Some(Step::StartupGuest), ..back }).is_ok());
    }
}
