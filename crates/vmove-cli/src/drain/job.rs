//! A drain or an evacuation as a job of its own (docs/drain.md "The drain as a job"): the
//! run of a drain record by the process that holds its runner claim, from its start or,
//! after a takeover, from where its dead runner left it.
//!
//! A takeover needs nothing the dead runner kept in memory: the host is put in maintenance
//! again (idempotent), the runner waits for the migrations out of the host (the dead
//! runner's child jobs, which went on on their agents; cancelled first if a cancel was
//! asked), the rows not ended are settled from the agents' inventories (a guest found on
//! exactly one other host has moved; its job gives the downtime), and what is left is
//! planned and moved as in a first run.
use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use vmove_api::{GuestState, JobRecord, MaintenanceState, Request};
use vmove_model::Cluster;
use vmove_plan::{DrainPlan, Limits, Mode, MoveRequest};

use super::gather::{self, Inventory};
use super::journal::{cancel_jobs, Journal};
use super::record::{planned_row, DrainKind, DrainRecord, RowState, Runner};
use super::report::{self, Report};
use super::store::{DrainStore, RunnerGuard};
use super::{run, say};
use crate::ctx::Ctx;

/// Marks an error of the record's store: the runner stopped, the drain stays `running`
/// (its moves go on on their agents) for a takeover.
#[derive(Debug)]
pub struct JournalStop;

impl std::fmt::Display for JournalStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the drain record could not be written: the runner stops (`vmove job watch` takes the drain over)")
    }
}

/// Runs drain `id`, whose claim `guard` this process holds, to its end; `takeover`: its
/// runner died. Returns the final record and the report of this run's moves (none when
/// there was nothing to move or the drain had ended).
pub async fn run_claimed(ctx: &Ctx, store: Arc<DrainStore>, id: &str, guard: RunnerGuard, takeover: bool) -> Result<(DrainRecord, Option<Report>)> {
    let rec = store.must_get(id).await?;
    if rec.state.ended() {
        guard.release().await;
        return Ok((rec, None));
    }
    let j = Journal::new(store.clone(), id, guard);
    let me = Runner::me();
    j.write(|r| {
        r.runner = Some(me.clone());
        if takeover {
            r.takeovers = r.takeovers.saturating_add(1);
        }
        Ok(())
    })
    .await?;
    let rec = j.read().await?;
    let res = match rec.kind {
        DrainKind::Drain => drain_body(ctx, &j, &rec).await,
        DrainKind::Evacuate => evacuate_body(ctx, &j, &rec).await,
    };
    let rep = match res {
        Ok(rep) => rep,
        Err(e) if e.downcast_ref::<JournalStop>().is_some() => return Err(e),
        Err(e) => {
            // Nothing of this run moves (the runner fails before or after its moves):
            // the drain ends `failed`, saying why.
            let msg = crate::out::one_line(anyhow!("{e:#}"));
            let _ = j.write(|r| r.fail(&msg)).await;
            j.release().await;
            return Err(e);
        }
    };
    let rec = j.read().await?;
    j.release().await;
    Ok((rec, rep))
}

async fn write<T>(j: &Journal, change: impl FnMut(&mut DrainRecord) -> Result<T, super::record::DrainError>) -> Result<T> {
    j.write(change).await.context(JournalStop)
}

/// A cancel asked while no runner ran: the running moves' jobs are cancelled now (those
/// past their switchover finish).
async fn cancel_leftovers(ctx: &Ctx, cluster: &Cluster, j: &Journal) -> Result<()> {
    let rec = j.read().await?;
    if !rec.cancel_requested {
        return Ok(());
    }
    let jobs: Vec<String> = rec.running_jobs().into_iter().map(|(_, job)| job.to_string()).collect();
    for (job, r) in cancel_jobs(ctx, cluster, &jobs).await {
        let text = match &r {
            Ok(()) => format!("cancel of {job} asked"),
            Err(e) => format!("cancel of {job}: {e}"),
        };
        say(ctx, &text, serde_json::json!({ "cancel": job, "answer": text }));
    }
    Ok(())
}

/// Settles the rows not ended from the inventories: a guest found on exactly one other
/// host has moved (its last job gives the downtime); a running move whose guest is
/// nowhere is unknown; a guest still on the host is planned again.
///
/// A move's job that the dead runner started but had not recorded yet is found in the
/// cluster's job list (a migration of the guest out of the host, created after the drain).
async fn settle_rows(ctx: &Ctx, cluster: &Cluster, j: &Journal, inv: &Inventory, host: &str) -> Result<()> {
    let rec = j.read().await?;
    let listed = crate::cmd_job::list_jobs(ctx, cluster).await.unwrap_or_default();
    for row in rec.rows.iter().filter(|r| r.state != RowState::Moved) {
        let jobs: Vec<String> = listed
            .iter()
            .filter(|b| b.guest == row.guest && b.source == host && b.created_ms >= rec.created_ms)
            .map(|b| b.id.clone())
            .collect();
        let on: Vec<&str> = inv
            .hosts
            .iter()
            .filter_map(|(n, r)| r.as_ref().ok().filter(|i| i.guests.iter().any(|g| g.spec.name == row.guest)).map(|_| n.as_str()))
            .collect();
        match on[..] {
            [h] if h == host => {}
            [h] => {
                // The newest job of the guest is the one that moved it.
                let last = jobs.last().or(row.jobs.last());
                let (downtime, job) = match last {
                    Some(job) => (job_downtime(ctx, cluster, job, row.mode).await, format!(" by job {job}")),
                    None => (None, String::new()),
                };
                let note = format!("moved{job} while no runner watched");
                write(j, |r| r.found_moved(&row.guest, h, &jobs, downtime, &note)).await?;
            }
            [] if row.state == RowState::Running => {
                let note = format!("its job {} ended with {} on no host that answered: see `vmove job list`", row.jobs.join(" "), row.guest);
                write(j, |r| r.lost(&row.guest, &note)).await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A finished job's downtime (LIVE: QEMU's figure), if its agent answers.
async fn job_downtime(ctx: &Ctx, cluster: &Cluster, job: &str, mode: Mode) -> Option<u64> {
    let host = job.rsplit_once('-')?.0;
    let rec: JobRecord = ctx.client(cluster, host).ok()?.call(&Request::JobShow { id: job.to_string() }).await.ok()?;
    match mode {
        Mode::Live => report::summary(&rec).and_then(|s| s.downtime_ms),
        _ => report::offline_downtime_ms(&rec, &rec),
    }
}

/// The plan's rows into the record.
async fn record_plan(j: &Journal, plan: &DrainPlan) -> Result<()> {
    let mut rows = Vec::new();
    for m in &plan.moves {
        let p = &m.planned;
        rows.push(planned_row(&p.guest, &p.from, Some(&p.to), p.mode, Some(p.predicted_s), &p.notes.join("; ")));
    }
    for u in &plan.unplaced {
        rows.push(planned_row(&u.guest, &u.from, None, u.mode, None, &u.reason));
    }
    write(j, |r| r.set_plan(rows.clone(), plan.predicted_total_s)).await
}

/// Plans nothing more once a cancel was asked: ends the drain.
async fn cancelled(j: &Journal) -> Result<bool> {
    Ok(j.read().await?.cancel_requested)
}

async fn drain_body(ctx: &Ctx, j: &Journal, rec: &DrainRecord) -> Result<Option<Report>> {
    let host = rec.host.as_str();
    let mut cluster = ctx.cluster().await?;
    super::known_host(&cluster, host)?;
    let limits = super::limits(usize::try_from(rec.parallel).unwrap_or(usize::MAX), usize::try_from(rec.per_host).unwrap_or(usize::MAX))?;
    let inject_fault = super::faults(&rec.inject_fault)?;
    let st: MaintenanceState = ctx
        .client(&cluster, host)?
        .call(&Request::HostDrain)
        .await
        .with_context(|| format!("cannot put {host} in maintenance (a dead host is evacuated: `vmove host evacuate {host}`)"))?;
    say(
        ctx,
        &format!("{host} is in maintenance: no new guests, no migrations in (drain {})", rec.id),
        serde_json::json!({ "maintenance": st, "drain": rec.id }),
    );
    cancel_leftovers(ctx, &cluster, j).await?;
    super::wait_for_moves(ctx, &cluster, host).await?;
    // Guests that arrived meanwhile are in the file now (another drain moved them).
    cluster = ctx.cluster().await?;
    let inv = Inventory::gather(ctx, &cluster).await?;
    let Some(info) = inv.info(host) else {
        bail!(
            "{host} did not answer ({}); a dead host is evacuated: `vmove host evacuate {host}`",
            inv.unreachable(host).unwrap_or("no answer")
        );
    };
    super::reconcile(ctx, &mut cluster, &inv, host, true).await?;
    settle_rows(ctx, &cluster, j, &inv, host).await?;
    let was_running: HashSet<String> = info.guests.iter().filter(|g| g.state == GuestState::Running).map(|g| g.spec.name.clone()).collect();
    let mut reqs = gather::drain_requests(&cluster, host, info, rec.mode);
    let stop = cancelled(j).await?;
    if !stop {
        gather::measure_dirty_rates(ctx, &cluster, &mut reqs).await;
    }
    gather::predict(&cluster, &mut reqs, &was_running);
    let plan = super::plan(&cluster, &inv, host, &reqs, limits)?;
    record_plan(j, &plan).await?;
    report::plan(ctx.json, "drain", host, &plan);
    let rep = if stop {
        None
    } else {
        let spec = run::RunSpec { kind: "drain", host: host.to_string(), dirty: super::dirty_rates(&reqs), was_running, inject_fault };
        Some(run::run(ctx, &cluster, &plan, spec, Some(j)).await.context(JournalStop)?)
    };
    write(j, |r| r.finish()).await?;
    Ok(rep)
}

/// The limits of an evacuation: a dead source does no work, only the cluster's and the
/// targets' limits count.
pub fn evacuation_limits(parallel: usize) -> Result<Limits> {
    let base = super::limits(parallel, Limits::default().max_in_per_host)?;
    Ok(Limits { max_out_per_host: base.max_concurrent, ..base })
}

async fn evacuate_body(ctx: &Ctx, j: &Journal, rec: &DrainRecord) -> Result<Option<Report>> {
    let host = rec.host.as_str();
    let mut cluster = ctx.cluster().await?;
    super::known_host(&cluster, host)?;
    let limits = evacuation_limits(usize::try_from(rec.parallel).unwrap_or(usize::MAX))?;
    cancel_leftovers(ctx, &cluster, j).await?;
    super::wait_for_moves(ctx, &cluster, host).await?;
    cluster = ctx.cluster().await?;
    let inv = Inventory::gather(ctx, &cluster).await?;
    super::reconcile(ctx, &mut cluster, &inv, host, true).await?;
    settle_rows(ctx, &cluster, j, &inv, host).await?;
    let mut reqs = MoveRequest::for_host(&cluster, host, Mode::OfflineForce);
    gather::predict(&cluster, &mut reqs, &HashSet::new());
    let plan = super::plan(&cluster, &inv, host, &reqs, limits)?;
    record_plan(j, &plan).await?;
    report::plan(ctx.json, "evacuate", host, &plan);
    let rep = if cancelled(j).await? {
        None
    } else {
        let spec = run::RunSpec { kind: "evacuate", host: host.to_string(), dirty: Default::default(), was_running: HashSet::new(), inject_fault: vec![] };
        Some(run::run(ctx, &cluster, &plan, spec, Some(j)).await.context(JournalStop)?)
    };
    write(j, |r| r.finish()).await?;
    Ok(rep)
}

/// How long `host drain --detach` waits for its detached runner to take the drain.
const DETACH_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts drain `rec` in a detached process (`vmove job watch ID`, which finds no runner
/// and takes it over), its output in a log file; returns once that process runs it (the
/// record names it), so that a `job watch` started next follows it rather than finding
/// no runner; prints the drain's id.
pub async fn detach(ctx: &Ctx, store: &DrainStore, rec: &DrainRecord) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("find the vmove binary")?;
    let log = match store.runner_dir() {
        Some(d) => d.join(format!("{}.log", rec.id)),
        None => std::env::temp_dir().join(format!("vmove-{}.log", rec.id)),
    };
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let out = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let err = out.try_clone().context("log file")?;
    let cluster = std::path::absolute(&ctx.cluster_path).context("the cluster file's path")?;
    let mut child = std::process::Command::new(exe)
        .arg("--cluster")
        .arg(&cluster)
        .args(["job", "watch", &rec.id])
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .context("start the drain's runner")?;
    let deadline = std::time::Instant::now() + DETACH_WAIT;
    loop {
        let now = store.must_get(&rec.id).await?;
        if now.runner.is_some() || now.state.ended() {
            break;
        }
        if let Some(st) = child.try_wait().context("the drain's runner")? {
            bail!("the drain's runner (process {}) ended ({st}) before it took drain {}: see {}", child.id(), rec.id, log.display());
        }
        if std::time::Instant::now() > deadline {
            bail!("the drain's runner (process {}) did not take drain {} within {} s: see {}", child.id(), rec.id, DETACH_WAIT.as_secs(), log.display());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if ctx.json {
        crate::out::json(&serde_json::json!({ "drain": rec.id, "detached": true, "pid": child.id(), "log": log }));
    } else {
        println!("{}", rec.id);
        eprintln!("drain {} runs in process {} (log {}): `vmove job watch {}`", rec.id, child.id(), log.display(), rec.id);
    }
    Ok(())
}

/// The end of `host drain|evacuate` run by this process: the table of this run's moves,
/// and an error when a guest was not moved.
pub fn finish_cli(ctx: &Ctx, rec: &DrainRecord, rep: Option<&Report>) -> Result<()> {
    if let Some(rep) = rep {
        report::table(ctx.json, rep);
    }
    let not = rec.not_moved();
    let what = rec.kind.as_str();
    let host = &rec.host;
    if rec.state == super::record::DrainState::Cancelled {
        bail!("{what} {} cancelled: {} of {} guests moved; not moved: {}", rec.id, rec.moved().len(), rec.rows.len(), not.join(", "));
    }
    if !not.is_empty() {
        let tail = if rec.kind == DrainKind::Drain { format!("; {host} stays in maintenance") } else { String::new() };
        let verb = if rec.kind == DrainKind::Drain { "drain" } else { "evacuation" };
        bail!("{verb} of {host} incomplete: {} of {} guests not moved ({}){tail}", not.len(), rec.rows.len(), not.join(", "));
    }
    Ok(())
}
