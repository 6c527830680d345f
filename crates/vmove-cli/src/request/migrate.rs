//! [`MigrateCommand`]: one migration (or one step of it, or its prechecks alone).
use anyhow::{anyhow, bail, Result};
use vmove_model::{parse_duration_ms, parse_rate_bytes_per_s, Cluster, Policy};
use vmove_plan::{CheckId, MigrationParams, MigrationRequest, Mode, Step};

use crate::args::MigrateArgs;

/// Test hooks of a job (honoured by lab agents only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Fail this step on purpose.
    pub inject_fault: Option<Step>,
    /// Wait before this step until `vmove job resume`.
    pub pause_before: Option<Step>,
    /// Hold a live migration at switchover until `vmove job resume`.
    pub pause_at_switchover: bool,
}

/// A migration as the operator asks for it: `vmove migrate`, oedacli's `MIGRATE GUEST`
/// (at MERGE and DEPLOY) and the lab demo all build one and hand it to `cmd_migrate`.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrateCommand {
    /// Guest, source, target, mode and parameters, as the prechecks and the job see them.
    pub request: MigrationRequest,
    /// Exactly one step (`--step`, `WHERE STEPNAME=`), if any.
    pub step: Option<Step>,
    /// Only the prechecks run (`--precheck`, or the step `PRECHECK_LIVEMIGRATION`).
    pub precheck_only: bool,
    /// Checks whose failure becomes a warning (`--ignore-check`).
    pub ignore_checks: Vec<CheckId>,
    /// Return the job id at once instead of following the job.
    pub detach: bool,
    /// Test hooks.
    pub hooks: Hooks,
}

impl MigrateCommand {
    /// A migration with the policy's parameters, followed to its end: what oedacli's
    /// `MIGRATE GUEST` and the demo ask for. `step` must be a step of `mode`.
    pub fn new(policy: &Policy, guest: &str, source: &str, target: &str, mode: Mode, step: Option<Step>) -> MigrateCommand {
        MigrateCommand {
            request: MigrationRequest {
                guest: guest.to_string(),
                source: source.to_string(),
                target: target.to_string(),
                mode,
                params: MigrationParams::from_policy(policy),
            },
            step,
            precheck_only: step == Some(Step::PrecheckLiveMigration),
            ignore_checks: Vec::new(),
            detach: false,
            hooks: Hooks::default(),
        }
    }

    /// Whether the prechecks run: for the whole plan and for the precheck alone, not
    /// for a single step.
    pub fn runs_prechecks(&self) -> bool {
        self.precheck_only || self.step.is_none()
    }
}

fn step_arg(flag: &str, s: Option<&str>) -> Result<Option<Step>> {
    s.map(Step::parse).transpose().map_err(|e| anyhow!("--{flag}: {e}"))
}

impl MigrateArgs {
    /// Checks the arguments against the cluster file (guest, mode, step, parameters,
    /// check names) and makes the command; the source defaults to where the file puts the
    /// guest, the parameters to the file's policy.
    pub fn into_command(self, cluster: &Cluster) -> Result<MigrateCommand> {
        let guest = cluster
            .guest(&self.guest)
            .ok_or_else(|| anyhow!("no guest named {} in {}", self.guest, cluster.path.display()))?;
        let source = self.from.clone().unwrap_or_else(|| guest.host.clone());
        let mode = Mode::parse(&self.mode).map_err(|e| anyhow!("--mode: {e}"))?;
        let step = step_arg("step", self.step.as_deref())?;
        if let Some(s) = step {
            if !s.valid_for(mode) {
                bail!("--step {}: not a step of {} migration", s.name(), mode.as_str());
            }
        }
        let mut cmd = MigrateCommand::new(&cluster.policy, &guest.name, &source, &self.to, mode, step);
        cmd.request.params = self.params(&cluster.policy)?;
        cmd.precheck_only |= self.precheck;
        cmd.ignore_checks = self
            .ignore_check
            .iter()
            .map(|id| CheckId::parse(id).ok_or_else(|| anyhow!("--ignore-check {id:?}: no such check")))
            .collect::<Result<_>>()?;
        cmd.detach = self.detach;
        cmd.hooks = Hooks {
            inject_fault: step_arg("inject-fault", self.inject_fault.as_deref())?,
            pause_before: step_arg("pause-before", self.pause_before.as_deref())?,
            pause_at_switchover: self.pause_at_switchover,
        };
        Ok(cmd)
    }

    /// `--timeout`, `--max-downtime`, `--bandwidth`, `--converge`, `--insecure-transport`
    /// and `--multifd` over the policy's parameters.
    fn params(&self, policy: &Policy) -> Result<MigrationParams> {
        let ms = |s: &Option<String>, what: &str| -> Result<Option<u64>> {
            s.as_deref().map(|v| parse_duration_ms(v).map_err(|e| anyhow!("--{what}: {e}"))).transpose()
        };
        let base = MigrationParams::from_policy(policy);
        let p = MigrationParams {
            timeout_s: ms(&self.timeout, "timeout")?.map_or(base.timeout_s, |m| m.div_ceil(1000)),
            max_downtime_ms: ms(&self.max_downtime, "max-downtime")?.unwrap_or(base.max_downtime_ms),
            bandwidth_bytes_per_s: self
                .bandwidth
                .as_deref()
                .map(|b| parse_rate_bytes_per_s(b).map_err(|e| anyhow!("--bandwidth: {e}")))
                .transpose()?,
            insecure_transport: self.insecure_transport,
            multifd_channels: self.multifd,
            keep_source_volumes: self.keep_source_volumes,
            converge: match self.converge.as_deref() {
                Some(v) => v.parse().map_err(|e| anyhow!("--converge: {e}"))?,
                None => base.converge,
            },
            ..base
        };
        if p.timeout_s == 0 {
            bail!("--timeout must be positive");
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};
    use crate::oedacli::parse::{parse, Command as Oeda};
    use crate::testutil::cluster;

    fn args(argv: &[&str]) -> MigrateArgs {
        let argv: Vec<&str> = ["vmove", "migrate"].iter().chain(argv).copied().collect();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Migrate(a) => a,
            other => panic!("not migrate: {other:?}"),
        }
    }

    fn from_args(argv: &[&str]) -> Result<MigrateCommand> {
        args(argv).into_command(&cluster())
    }

    fn from_oedacli(line: &str) -> MigrateCommand {
        let Ok(Oeda::MigrateGuest(m)) = parse(line) else { panic!("not MIGRATE GUEST: {line}") };
        m.command(&cluster().policy).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn defaults_come_from_the_file() {
        let mut file = cluster();
        (file.policy.live_timeout_s, file.policy.max_downtime_ms) = (300, 200);
        let c = args(&["vm1", "--to", "host2"]).into_command(&file).unwrap();
        let want = MigrateCommand {
            request: MigrationRequest {
                guest: "vm1".into(),
                source: "host1".into(),
                target: "host2".into(),
                mode: Mode::Live,
                params: MigrationParams { timeout_s: 300, max_downtime_ms: 200, converge: file.policy.converge, ..MigrationParams::default() },
            },
            step: None,
            precheck_only: false,
            ignore_checks: vec![],
            detach: false,
            hooks: Hooks::default(),
        };
        assert_eq!(c, want);
        assert!(c.runs_prechecks());
    }

    #[test]
    fn every_flag_lands_in_the_command() {
        let c = from_args(&[
            "vm1", "--to", "host2", "--from", "host1", "--mode", "offline-force", "--step", "stop-guest", "--timeout", "90s",
            "--max-downtime", "1s", "--bandwidth", "100M", "--converge", "throttle", "--insecure-transport", "--multifd", "0", "--ignore-check",
            "no-outstanding-work", "--detach", "--inject-fault", "ATTACH_VOLUMES", "--pause-before", "MIGRATE_GUEST",
            "--keep-source-volumes",
        ])
        .unwrap();
        assert_eq!(c.request.mode, Mode::OfflineForce);
        assert_eq!(c.step, Some(Step::StopGuest));
        assert_eq!(
            c.request.params,
            MigrationParams {
                timeout_s: 90,
                max_downtime_ms: 1000,
                bandwidth_bytes_per_s: Some(100 << 20),
                insecure_transport: true,
                multifd_channels: 0,
                keep_source_volumes: true,
                converge: vmove_plan::Converge::Throttle,
                ..MigrationParams::default()
            }
        );
        assert_eq!(c.ignore_checks, vec![CheckId::parse("no-outstanding-work").unwrap()]);
        assert!(c.detach && !c.precheck_only && !c.runs_prechecks());
        assert_eq!(
            c.hooks,
            Hooks { inject_fault: Some(Step::AttachVolumes), pause_before: Some(Step::MigrateGuest), pause_at_switchover: false }
        );
    }

    #[test]
    fn precheck_flag_and_precheck_step_mean_prechecks_only() {
        let a = from_args(&["vm1", "--to", "host2", "--precheck"]).unwrap();
        let b = from_args(&["vm1", "--to", "host2", "--step", "PRECHECK_LIVEMIGRATION"]).unwrap();
        assert!(a.precheck_only && a.runs_prechecks());
        assert!(b.precheck_only && b.runs_prechecks());
    }

    #[test]
    fn bad_arguments_name_their_flag() {
        let e = |argv: &[&str]| from_args(argv).unwrap_err().to_string();
        assert_eq!(e(&["vm9", "--to", "host2"]), "no guest named vm9 in /lab/cluster.toml");
        assert!(e(&["vm1", "--to", "host2", "--mode", "warp"]).starts_with("--mode: unknown migration mode"));
        assert_eq!(e(&["vm1", "--to", "host2", "--step", "STOP_GUEST"]), "--step STOP_GUEST: not a step of LIVE migration");
        assert!(e(&["vm1", "--to", "host2", "--timeout", "soon"]).starts_with("--timeout: invalid duration"));
        assert_eq!(e(&["vm1", "--to", "host2", "--timeout", "0s"]), "--timeout must be positive");
        assert_eq!(e(&["vm1", "--to", "host2", "--ignore-check", "nope"]), "--ignore-check \"nope\": no such check");
        assert!(e(&["vm1", "--to", "host2", "--inject-fault", "NOPE"]).starts_with("--inject-fault: "));
    }

    /// The same intent gives the same command, typed at the `vmove` prompt or in oedacli.
    #[test]
    fn oedacli_and_migrate_agree() {
        for (argv, line) in [
            (&["vm1", "--to", "host2", "--from", "host1", "--mode", "live"][..], "MIGRATE GUEST HOSTNAME=vm1 MODE=LIVE SRCHOST=host1 TGTHOST=host2"),
            (&["vm1", "--to", "host2", "--mode", "offline"][..], "MIGRATE GUEST HOSTNAME=vm1 MODE=offline SRCHOST=host1 TGTHOST=host2"),
            (
                &["vm1", "--to", "host2", "--mode", "offlineforce", "--step", "ATTACH_VOLUMES"][..],
                "migrate guest tgthost=host2 srchost=host1 mode=OfflineForce hostname=vm1 where stepname=attach_volumes",
            ),
            (
                &["vm1", "--to", "host2", "--step", "PRECHECK_LIVEMIGRATION"][..],
                "MIGRATE GUEST HOSTNAME=vm1 MODE=LIVE SRCHOST=host1 TGTHOST=host2 WHERE STEPNAME=PRECHECK_LIVEMIGRATION",
            ),
        ] {
            assert_eq!(from_args(argv).unwrap(), from_oedacli(line), "{argv:?} vs {line}");
        }
    }
}
