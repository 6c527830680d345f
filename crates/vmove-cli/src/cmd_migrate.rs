//! `vmove migrate`: prechecks, then a job on the target agent, followed to its end.
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use futures::future::join_all;
use vmove_api::{JobBrief, JobSpec, JobStatus, MigrationParams, PeerHost, Request};
use vmove_model::{parse_duration_ms, parse_rate_bytes_per_s, Cluster, GuestSpec};
use vmove_plan::{Busy, CheckInput, Finding, MigrationRequest, Mode, Reach, Step, Verdict};

use crate::args::MigrateArgs;
use crate::ctx::Ctx;

/// A `vmove migrate` request checked against a cluster file: what `vmove migrate` and
/// oedacli's `MIGRATE GUEST` (at MERGE and DEPLOY) both run.
pub struct Prepared {
    /// The request, as the prechecks see it.
    pub req: MigrationRequest,
    /// The guest's definition in the cluster file.
    pub guest: GuestSpec,
    /// Exactly one step (`--step`, `WHERE STEPNAME=`), if any.
    pub step: Option<Step>,
    /// Migration parameters.
    pub params: MigrationParams,
    /// Only the prechecks run (`--precheck` or `PRECHECK_LIVEMIGRATION`).
    pub precheck_only: bool,
}

impl Prepared {
    /// Whether the prechecks run: for the whole plan and for the precheck alone, not
    /// for a single step.
    pub fn runs_prechecks(&self) -> bool {
        self.precheck_only || self.step.is_none()
    }
}

/// Checks the arguments against the cluster file (names, mode, step, parameters).
pub fn prepare(cluster: &Cluster, a: &MigrateArgs) -> Result<Prepared> {
    let guest = cluster
        .guest(&a.guest)
        .ok_or_else(|| anyhow!("no guest named {} in {}", a.guest, cluster.path.display()))?
        .clone();
    let source = a.from.clone().unwrap_or_else(|| guest.host.clone());
    let mode = Mode::parse(&a.mode).map_err(|e| anyhow!("--mode: {e}"))?;
    let step = a.step.as_deref().map(Step::parse).transpose().map_err(|e| anyhow!("--step: {e}"))?;
    if let Some(s) = step {
        if !s.valid_for(mode) {
            bail!("--step {}: not a step of {} migration", s.name(), mode.as_str());
        }
    }
    let params = params(cluster, a)?;
    let req = MigrationRequest {
        guest: guest.name.clone(),
        source,
        target: a.to.clone(),
        mode,
        params: params.clone(),
    };
    let precheck_only = a.precheck || step == Some(Step::PrecheckLiveMigration);
    Ok(Prepared { req, guest, step, params, precheck_only })
}

/// Turns the failures of the checks the operator named (`--ignore-check`) into warnings.
pub fn ignore_checks(findings: &mut [Finding], ids: &[String]) -> Result<()> {
    for id in ids {
        let id = vmove_plan::CheckId::parse(id).ok_or_else(|| anyhow!("--ignore-check {id:?}: no such check"))?;
        for f in findings.iter_mut().filter(|f| f.id == id && f.verdict == Verdict::Fail) {
            f.verdict = Verdict::Warn;
            f.reason = format!("ignored by the operator: {}", f.reason);
        }
    }
    Ok(())
}

/// The ids of the failed checks, comma-separated.
pub fn failed_ids(findings: &[Finding]) -> String {
    findings.iter().filter(|f| f.verdict == Verdict::Fail).map(|f| f.id.as_str()).collect::<Vec<_>>().join(", ")
}

/// Test hooks of a job (honoured by lab agents only).
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Fail this step on purpose.
    pub inject_fault: Option<Step>,
    /// Wait before this step until `vmove job resume`.
    pub pause_before: Option<Step>,
    /// Hold a live migration at switchover until `vmove job resume`.
    pub pause_at_switchover: bool,
}

/// Submits the job to the target agent.
pub async fn submit(ctx: &Ctx, cluster: &Cluster, p: &Prepared, inject_fault: Option<Step>) -> Result<vmove_api::JobRecord> {
    submit_with(ctx, cluster, p, Hooks { inject_fault, ..Hooks::default() }).await
}

/// Submits the job to the target agent, with test hooks.
pub async fn submit_with(ctx: &Ctx, cluster: &Cluster, p: &Prepared, hooks: Hooks) -> Result<vmove_api::JobRecord> {
    let source = &p.req.source;
    let src = cluster.host(source).ok_or_else(|| anyhow!("no host named {source} in the cluster file"))?;
    let spec = JobSpec {
        guest: p.guest.clone(),
        mode: p.req.mode,
        source: PeerHost { name: src.name.clone(), address: src.address.clone() },
        target: p.req.target.clone(),
        step: p.step,
        params: p.params.clone(),
        inject_fault: hooks.inject_fault,
        pause_before: hooks.pause_before,
        pause_at_switchover: hooks.pause_at_switchover,
    };
    let client = ctx.client(cluster, &p.req.target)?;
    client.call(&Request::JobSubmit { spec }).await
}

pub async fn run(ctx: &Ctx, a: MigrateArgs) -> Result<()> {
    let cluster = ctx.cluster()?;
    let p = prepare(&cluster, &a)?;
    let req = &p.req;
    if p.runs_prechecks() {
        let mut findings = prechecks(ctx, &cluster, req).await?;
        ignore_checks(&mut findings, &a.ignore_check)?;
        let failed = vmove_plan::any_failed(&findings);
        if p.precheck_only || failed {
            print_findings(ctx, req, &findings);
        }
        if failed {
            bail!("precheck failed: {}", failed_ids(&findings));
        }
        if p.precheck_only {
            return Ok(());
        }
        if !ctx.json {
            let warns = findings.iter().filter(|f| f.verdict == Verdict::Warn).count();
            eprintln!("prechecks passed ({} checks, {warns} warnings)", findings.len());
            for f in findings.iter().filter(|f| f.verdict == Verdict::Warn) {
                eprintln!("  WARN {}: {}", f.id.as_str(), f.reason);
            }
        }
    }
    let hooks = Hooks {
        inject_fault: a.inject_fault.as_deref().map(Step::parse).transpose().map_err(|e| anyhow!("--inject-fault: {e}"))?,
        pause_before: a.pause_before.as_deref().map(Step::parse).transpose().map_err(|e| anyhow!("--pause-before: {e}"))?,
        pause_at_switchover: a.pause_at_switchover,
    };
    let rec = submit_with(ctx, &cluster, &p, hooks).await?;
    if a.detach {
        if ctx.json {
            crate::out::json(&serde_json::json!({ "job": rec.id, "target": a.to }));
        } else {
            println!("{}", rec.id);
        }
        return Ok(());
    }
    crate::cmd_job::follow(ctx, &a.to, &rec.id).await
}

fn params(c: &Cluster, a: &MigrateArgs) -> Result<MigrationParams> {
    let ms = |s: &Option<String>, what: &str| -> Result<Option<u64>> {
        s.as_deref().map(|v| parse_duration_ms(v).map_err(|e| anyhow!("--{what}: {e}"))).transpose()
    };
    let p = MigrationParams {
        timeout_s: ms(&a.timeout, "timeout")?.map_or(c.policy.live_timeout_s, |m| m.div_ceil(1000)),
        max_downtime_ms: ms(&a.max_downtime, "max-downtime")?.unwrap_or(c.policy.max_downtime_ms),
        bandwidth_bytes_per_s: a
            .bandwidth
            .as_deref()
            .map(|b| parse_rate_bytes_per_s(b).map_err(|e| anyhow!("--bandwidth: {e}")))
            .transpose()?,
        insecure_transport: a.insecure_transport,
        multifd_channels: a.multifd,
        allow_postcopy: c.policy.allow_postcopy,
        converge: match a.converge.as_deref() {
            Some(v) => v.parse().map_err(|e| anyhow!("--converge: {e}"))?,
            None => c.policy.converge,
        },
        ..MigrationParams::default()
    };
    if p.timeout_s == 0 {
        bail!("--timeout must be positive");
    }
    Ok(p)
}

/// Gathers the live reports and runs every precheck.
pub async fn prechecks(ctx: &Ctx, cluster: &Cluster, req: &MigrationRequest) -> Result<Vec<Finding>> {
    let short = Duration::from_secs(5);
    let client_of = |h: &str| ctx.client(cluster, h).ok().map(|c| c.with_timeout(short));
    let (src_c, dst_c) = (client_of(&req.source), client_of(&req.target));
    async fn info(c: &Option<vmove_api::AgentClient>) -> Result<vmove_api::HostInfo> {
        match c {
            Some(c) => c.call(&Request::HostInfo).await,
            None => Err(anyhow!("not in the cluster file")),
        }
    }
    let (si, di) = tokio::join!(info(&src_c), info(&dst_c));
    let mut busy = Vec::new();
    // Every host's jobs: a guest may be on its way elsewhere, driven by a third host.
    let all: Vec<vmove_api::AgentClient> =
        ctx.clients(cluster).map(|v| v.into_iter().map(|(_, c)| c.with_timeout(short)).collect()).unwrap_or_default();
    let lists = join_all(all.iter().map(|c| c.call::<Vec<JobBrief>>(&Request::JobList))).await;
    for l in lists.into_iter().flatten() {
        for j in l.into_iter().filter(|j| j.status == JobStatus::Running) {
            busy.push(Busy {
                guest: Some(j.guest.clone()),
                host: Some(j.target.clone()),
                what: format!("job {} ({} of {})", j.id, j.mode.as_str(), j.guest),
            });
            busy.push(Busy { guest: None, host: Some(j.source.clone()), what: format!("job {} migrates {} away", j.id, j.guest) });
        }
    }
    let dirty = if req.mode == Mode::Live && si.is_ok() {
        match &src_c {
            Some(c) => c
                .clone()
                .with_timeout(Duration::from_secs(15))
                .call::<u64>(&Request::GuestDirtyRate { name: req.guest.clone(), calc_s: 1 })
                .await
                .ok(),
            None => None,
        }
    } else {
        None
    };
    fn reach(r: &Result<vmove_api::HostInfo>) -> Reach<'_> {
        match r {
            Ok(i) => Reach::Answered(i),
            Err(e) => Reach::Unreachable(format!("{e:#}").replace('\n', " ")),
        }
    }
    let input = CheckInput {
        cluster,
        request: req,
        source: reach(&si),
        target: reach(&di),
        busy: &busy,
        dirty_rate_bytes_per_s: dirty,
        link_bytes_per_s: cluster.policy.migration_link_bytes_per_s,
    };
    Ok(vmove_plan::run(&input))
}

pub fn print_findings(ctx: &Ctx, req: &MigrationRequest, f: &[Finding]) {
    if ctx.json {
        crate::out::json(&serde_json::json!({
            "guest": req.guest, "source": req.source, "target": req.target, "mode": req.mode,
            "passed": !vmove_plan::any_failed(f), "findings": f,
        }));
        return;
    }
    println!(
        "PRECHECK {} migration of {} from {} to {}",
        req.mode.as_str(),
        req.guest,
        req.source,
        req.target
    );
    let rows: Vec<Vec<String>> =
        f.iter().map(|x| vec![x.verdict.as_str().to_uppercase(), x.id.as_str().to_string(), x.reason.clone()]).collect();
    crate::out::table(&["VERDICT", "CHECK", "REASON"], &rows);
}
