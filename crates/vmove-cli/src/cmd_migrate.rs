//! `vmove migrate`: prechecks, then a job on the target agent, followed to its end. Takes a
//! [`MigrateCommand`], whichever front end built it (clap arguments, oedacli, the demo).
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use futures::future::join_all;
use vmove_api::{ConvergenceCheck, JobBrief, JobSpec, JobStatus, PeerHost, Request};
use vmove_model::{Cluster, GuestSpec};
use vmove_plan::{Busy, CheckId, CheckInput, Finding, MigrationRequest, Mode, Reach, Verdict};

use crate::ctx::Ctx;
use crate::request::MigrateCommand;

/// The guest's definition in the cluster file.
pub fn guest_spec(cluster: &Cluster, name: &str) -> Result<GuestSpec> {
    cluster.guest(name).cloned().ok_or_else(|| anyhow!("no guest named {name} in {}", cluster.path.display()))
}

/// Turns the failures of the checks the operator named (`--ignore-check`) into warnings.
pub fn ignore_checks(findings: &mut [Finding], ids: &[CheckId]) {
    for id in ids {
        for f in findings.iter_mut().filter(|f| f.id == *id && f.verdict == Verdict::Fail) {
            f.verdict = Verdict::Warn;
            f.reason = format!("ignored by the operator: {}", f.reason);
        }
    }
}

/// The ids of the failed checks, comma-separated.
pub fn failed_ids(findings: &[Finding]) -> String {
    findings.iter().filter(|f| f.verdict == Verdict::Fail).map(|f| f.id.as_str()).collect::<Vec<_>>().join(", ")
}

/// What the prechecks measured, passed on to the job (the convergence ladder starts from it).
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// "link host1 -> host2: N MB/s over TLS (...)": part of a precheck's report, a
    /// diagnostic (stderr) before a migration, so that `--detach` prints only the job id.
    pub link_line: Option<String>,
    /// The guest's dirty rate, bytes/s.
    pub dirty_rate_bytes_per_s: Option<u64>,
    /// The migration link, bytes/s.
    pub link_bytes_per_s: Option<u64>,
    /// Who decides `predicted-convergence`: the job, when the dirty rate was left to it.
    pub convergence_check: vmove_api::ConvergenceCheck,
}

/// Submits the job to the target agent, with the command's test hooks.
pub async fn submit(ctx: &Ctx, cluster: &Cluster, cmd: &MigrateCommand) -> Result<vmove_api::JobRecord> {
    submit_measured(ctx, cluster, cmd, Measured::default()).await
}

/// Submits the job with what the prechecks measured.
pub async fn submit_measured(ctx: &Ctx, cluster: &Cluster, cmd: &MigrateCommand, m: Measured) -> Result<vmove_api::JobRecord> {
    let spec = job_spec(cluster, cmd, &m)?;
    let client = ctx.client(cluster, &cmd.request.target)?;
    Ok(client.call(&Request::JobSubmit { spec }).await?)
}

/// The job the target agent is asked to run for `cmd`, with what the prechecks measured.
pub fn job_spec(cluster: &Cluster, cmd: &MigrateCommand, m: &Measured) -> Result<JobSpec> {
    let req = &cmd.request;
    let guest = guest_spec(cluster, &req.guest)?;
    let source = &req.source;
    let src = cluster.host(source).ok_or_else(|| anyhow!("no host named {source} in the cluster file"))?;
    Ok(JobSpec {
        guest,
        mode: req.mode,
        source: PeerHost { name: src.name.clone(), address: src.address.clone() },
        target: req.target.clone(),
        step: cmd.step,
        params: req.params.clone(),
        inject_fault: cmd.hooks.inject_fault,
        pause_before: cmd.hooks.pause_before,
        pause_at_switchover: cmd.hooks.pause_at_switchover,
        max_incoming: None,
        dirty_rate_bytes_per_s: m.dirty_rate_bytes_per_s,
        link_bytes_per_s: m.link_bytes_per_s,
        convergence_check: m.convergence_check,
    })
}

/// `vmove migrate`: the prechecks (unless one step only), then the job, followed to its end
/// unless detached.
pub async fn run(ctx: &Ctx, cluster: &Cluster, cmd: MigrateCommand) -> Result<()> {
    let req = &cmd.request;
    guest_spec(cluster, &req.guest)?;
    let mut measured = Measured::default();
    if cmd.runs_prechecks() {
        // A live move leaves the dirty-rate sample to the job, which takes it while the
        // target's QEMU starts (not for local volumes: their copy time counts too).
        let opts = PrecheckOpts { dirty_rate_in_job: !cmd.precheck_only && !has_local_volumes(cluster, &req.guest), ..Default::default() };
        let (mut findings, mut m) = prechecks_with(ctx, cluster, req, &opts).await?;
        if m.convergence_check == ConvergenceCheck::InJob && cmd.ignore_checks.contains(&CheckId::PredictedConvergence) {
            m.convergence_check = ConvergenceCheck::InJobIgnored;
        }
        ignore_checks(&mut findings, &cmd.ignore_checks);
        let failed = vmove_plan::any_failed(&findings);
        if let (Some(l), false) = (&m.link_line, ctx.json) {
            if cmd.precheck_only {
                println!("{l}");
            } else if !failed {
                eprintln!("{l}");
            }
        }
        if cmd.precheck_only || failed {
            print_findings(ctx, req, &findings);
        }
        if failed {
            bail!("precheck failed: {}", failed_ids(&findings));
        }
        if cmd.precheck_only {
            return Ok(());
        }
        measured = m;
        if !ctx.json {
            let warns = findings.iter().filter(|f| f.verdict == Verdict::Warn).count();
            eprintln!("prechecks passed ({} checks, {warns} warnings)", findings.len());
            for f in findings.iter().filter(|f| f.verdict == Verdict::Warn) {
                eprintln!("  WARN {}: {}", f.id.as_str(), f.reason);
            }
        }
    }
    let rec = submit_measured(ctx, cluster, &cmd, measured).await?;
    if cmd.detach {
        if ctx.json {
            crate::out::json(&serde_json::json!({ "job": rec.id, "target": req.target }));
        } else {
            println!("{}", rec.id);
        }
        return Ok(());
    }
    crate::cmd_job::follow(ctx, &req.target, &rec.id).await
}

/// Gathers the live reports and runs every precheck.
pub async fn prechecks(ctx: &Ctx, cluster: &Cluster, req: &MigrationRequest) -> Result<Vec<Finding>> {
    Ok(prechecks_measured(ctx, cluster, req).await?.0)
}

/// [`prechecks`], with what they measured.
pub async fn prechecks_measured(ctx: &Ctx, cluster: &Cluster, req: &MigrationRequest) -> Result<(Vec<Finding>, Measured)> {
    prechecks_with(ctx, cluster, req, &PrecheckOpts::default()).await
}

/// How [`prechecks_with`] gathers what the checks look at.
#[derive(Debug, Clone, Default)]
pub struct PrecheckOpts {
    /// Count only unfinished work on the guest itself, not on its hosts: the moves of a
    /// drain run side by side on purpose, under the drain's limits.
    pub guest_work_only: bool,
    /// The guest's dirty rate, bytes/s, measured already (LIVE): not measured again.
    pub dirty_rate_bytes_per_s: Option<u64>,
    /// LIVE: leave the dirty-rate sample and `predicted-convergence` to the job.
    pub dirty_rate_in_job: bool,
}

/// Whether any of the guest's disks sits in a local pool (copied by a live move).
fn has_local_volumes(cluster: &Cluster, guest: &str) -> bool {
    cluster.guest(guest).is_some_and(|g| {
        g.disks.iter().any(|d| cluster.pool(&d.pool).is_some_and(|p| p.is_local()))
    })
}

/// [`prechecks_measured`] as `opts` says.
pub async fn prechecks_with(
    ctx: &Ctx,
    cluster: &Cluster,
    req: &MigrationRequest,
    opts: &PrecheckOpts,
) -> Result<(Vec<Finding>, Measured)> {
    let short = Duration::from_secs(5);
    let client_of = |h: &str| ctx.client(cluster, h).ok().map(|c| c.with_timeout(short));
    let (src_c, dst_c) = (client_of(&req.source), client_of(&req.target));
    async fn info(c: &Option<vmove_api::AgentClient>) -> Result<vmove_api::HostInfo> {
        match c {
            Some(c) => Ok(c.call(&Request::HostInfo).await?),
            None => Err(anyhow!("not in the cluster file")),
        }
    }
    // Every host's jobs: a guest may be on its way elsewhere, driven by a third host.
    let all: Vec<vmove_api::AgentClient> =
        ctx.clients(cluster).map(|v| v.into_iter().map(|(_, c)| c.with_timeout(short)).collect()).unwrap_or_default();
    let lists = join_all(all.iter().map(|c| c.call::<Vec<JobBrief>>(&Request::JobList)));
    // LIVE: the guest's dirty rate (QEMU, 300 ms; left to the job when it asks) and the
    // migration link (the target times a stream from the source over mutual TLS; a
    // measurement up to 10 minutes old is reused). Everything is asked at once.
    let live = req.mode == Mode::Live;
    let known = opts.dirty_rate_bytes_per_s;
    let src_side = async {
        let si = info(&src_c).await;
        if !live || known.is_some() || opts.dirty_rate_in_job || si.is_err() {
            return (si, known);
        }
        let c = src_c.clone().map(|c| c.with_timeout(Duration::from_secs(15)));
        let ask = Request::GuestDirtyRate { name: req.guest.clone(), calc_s: 1, calc_ms: Some(300) };
        let dirty = match c {
            Some(c) => c.call::<u64>(&ask).await.ok(),
            None => None,
        };
        (si, dirty)
    };
    let dst_side = async {
        let di = info(&dst_c).await;
        let (Some(c), Some(h), true, true) = (dst_c.clone(), cluster.host(&req.source), live, di.is_ok()) else { return (di, None) };
        let source = vmove_api::PeerHost { name: h.name.clone(), address: h.address.clone() };
        let link = c.with_timeout(Duration::from_secs(30)).call::<vmove_api::LinkInfo>(&Request::LinkMeasure { source, max_age_s: 600 }).await;
        (di, Some(link))
    };
    let ((si, dirty), (di, link), lists) = tokio::join!(src_side, dst_side, lists);
    // The link is timed from the source: not when the source did not answer.
    let link = if si.is_ok() { link } else { None };
    let mut link_err = None;
    let mut busy = Vec::new();
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
    if opts.guest_work_only {
        busy.retain(|b| b.guest.as_deref() == Some(req.guest.as_str()));
        for b in &mut busy {
            b.host = None;
        }
    }
    let link = match link {
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            link_err = Some(format!("link {} -> {}: not measured: {e}", req.source, req.target));
            None
        }
        None => None,
    };
    let link_line = link_err.or_else(|| link.as_ref().map(|l| {
        format!(
            "link {} -> {}: {:.0} MB/s over TLS ({})",
            l.source,
            l.target,
            l.bytes_per_s as f64 / 1048576.0,
            if l.cached { format!("measured {} s ago", l.age_s) } else { "measured now".to_string() }
        )
    }));
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
        link_bytes_per_s: link.as_ref().map(|l| l.bytes_per_s).or(cluster.policy.migration_link_bytes_per_s),
    };
    let in_job = live && opts.dirty_rate_in_job && dirty.is_none() && si.is_ok() && di.is_ok();
    let measured = Measured {
        link_line,
        dirty_rate_bytes_per_s: dirty,
        link_bytes_per_s: input.link_bytes_per_s,
        convergence_check: if in_job { ConvergenceCheck::InJob } else { ConvergenceCheck::Decided },
    };
    let mut findings = vmove_plan::run(&input);
    if in_job {
        if let Some(f) = findings.iter_mut().find(|f| f.id == CheckId::PredictedConvergence) {
            f.verdict = Verdict::Pass;
            f.reason = format!("decided by the job: it samples the dirty rate on {} while the target's QEMU starts", req.source);
        }
    }
    Ok((findings, measured))
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
