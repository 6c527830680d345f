//! `vmove job list|show|plot|watch|cancel|recover`, and following a job as it runs.
//! Drains and evacuations are jobs too (ids `drain-HOST-N`, `evacuate-HOST-N`): `list`,
//! `show`, `watch` and `cancel` take them ([`crate::drain::watch`]).
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::future::join_all;
use vmove_api::{EventKind, JobBrief, JobEvent, JobRecord, JobStatus, Progress, Request};

use crate::args::JobCmd;
use crate::ctx::Ctx;

/// The host that runs a job: ids are `<target>-<n>`.
fn host_of(id: &str) -> Result<&str> {
    id.rsplit_once('-').map(|(h, _)| h).filter(|h| !h.is_empty()).ok_or_else(|| anyhow!("{id:?} is not a job id (HOST-N)"))
}

pub async fn run(ctx: &Ctx, cmd: JobCmd) -> Result<()> {
    match cmd {
        JobCmd::List => {
            let cluster = ctx.cluster().await?;
            let all = list_jobs(ctx, &cluster).await?;
            let drains = crate::drain::watch::list(ctx, &cluster).await?;
            if ctx.json {
                let mut v: Vec<serde_json::Value> = all.iter().map(|j| serde_json::to_value(j).unwrap_or_default()).collect();
                v.extend(crate::drain::watch::list_json(&drains));
                crate::out::json(&v);
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|j| {
                        vec![
                            j.id.clone(),
                            j.guest.clone(),
                            j.mode.as_str().into(),
                            format!("{}->{}", j.source, j.target),
                            status_str(j.status),
                            j.current_step.map(|s| s.name().to_string()).unwrap_or_default(),
                            match &j.kind {
                                vmove_api::JobKind::Migrate => "migrate".into(),
                                vmove_api::JobKind::Recover { of } => format!("recover {of}"),
                            },
                        ]
                    })
                    .collect();
                crate::out::table(&["JOB", "GUEST", "MODE", "HOSTS", "STATUS", "STEP", "KIND"], &rows);
                if !drains.is_empty() {
                    println!();
                    let head = ["DRAIN", "HOST", "STATE", "GUESTS", "MOVED", "RUNNING", "RUNNER"];
                    crate::out::table(&head, &crate::drain::watch::list_rows(&drains));
                }
            }
            Ok(())
        }
        JobCmd::Show { id } => {
            let cluster = ctx.cluster().await?;
            if crate::drain::watch::is_drain_id(&cluster, &id) {
                return crate::drain::watch::show(ctx, &cluster, &id).await;
            }
            let rec: JobRecord = ctx.client(&cluster, host_of(&id)?)?.call(&Request::JobShow { id }).await?;
            sync_cluster(ctx, &rec).await?;
            if ctx.json {
                crate::out::json(&rec);
            } else {
                println!("job {}: {} [{}]", rec.id, rec.action(), status_str(rec.status));
                for s in &rec.steps {
                    let el = match (s.started_ms, s.ended_ms) {
                        (Some(a), Some(b)) => format!(" [Elapsed = {} mS]", b.saturating_sub(a)),
                        _ => String::new(),
                    };
                    println!("  {:<22} {:<12}{el} {}", s.step.name(), format!("{:?}", s.status).to_lowercase(), s.note.clone().unwrap_or_default());
                }
                if let Some(e) = &rec.error {
                    println!("error: {e}");
                }
                if let Some(o) = &rec.outage {
                    println!("outage: {}", o.line());
                }
            }
            Ok(())
        }
        JobCmd::Plot { id, out } => {
            let cluster = ctx.cluster().await?;
            let rec: JobRecord = ctx.client(&cluster, host_of(&id)?)?.call(&Request::JobShow { id: id.clone() }).await?;
            let path = out.unwrap_or_else(|| PathBuf::from(format!("{id}.svg")));
            let (path, d) = write_plot(&rec, &path)?;
            if ctx.json {
                crate::out::json(&serde_json::json!({
                    "ok": true, "job": id, "svg": path, "samples": d.remaining.len(),
                    "escalations": d.escalations.len(), "switchover_s": d.switchover.map(|m| m.t),
                }));
            } else {
                let sw = d.switchover.map_or("no switchover".to_string(), |m| format!("switchover at {:.1} s", m.t));
                println!(
                    "job {id}: {} written ({} samples, {} escalations, {sw})",
                    path.display(),
                    d.remaining.len(),
                    d.escalations.len()
                );
            }
            Ok(())
        }
        JobCmd::Watch { id } => {
            if crate::drain::record::parse_id(&id).is_some() {
                let cluster = ctx.cluster().await?;
                if crate::drain::watch::is_drain_id(&cluster, &id) {
                    return crate::drain::watch::watch(ctx, &cluster, &id).await;
                }
            }
            let host = host_of(&id)?.to_string();
            follow(ctx, &host, &id).await
        }
        JobCmd::Cancel { id } => {
            let cluster = ctx.cluster().await?;
            if crate::drain::watch::is_drain_id(&cluster, &id) {
                return crate::drain::watch::cancel(ctx, &cluster, &id).await;
            }
            let rec: JobRecord = ctx.client(&cluster, host_of(&id)?)?.call(&Request::JobCancel { id: id.clone() }).await?;
            if ctx.json {
                crate::out::json(&serde_json::json!({ "ok": true, "job": rec.id, "cancel_requested": true }));
            } else {
                println!("cancel requested for job {id}");
            }
            Ok(())
        }
        JobCmd::Resume { id } => {
            let cluster = ctx.cluster().await?;
            let _: JobRecord = ctx.client(&cluster, host_of(&id)?)?.call(&Request::JobResume { id: id.clone() }).await?;
            if ctx.json {
                crate::out::json(&serde_json::json!({ "ok": true, "job": id, "resumed": true }));
            } else {
                println!("job {id} resumed");
            }
            Ok(())
        }
        JobCmd::Recover { id } => {
            let host = host_of(&id)?.to_string();
            let cluster = ctx.cluster().await?;
            let rec: JobRecord = ctx.client(&cluster, &host)?.call(&Request::JobRecover { id }).await?;
            follow(ctx, &host, &rec.id).await
        }
    }
}

/// Draws a live job's transfer into an SVG file; returns its absolute path and what it shows.
pub fn write_plot(rec: &JobRecord, path: &Path) -> Result<(PathBuf, crate::plot::PlotData)> {
    let d = crate::plot::PlotData::from_job(rec)?;
    let svg = crate::plot::svg(&d)?;
    std::fs::write(path, svg).with_context(|| format!("write {}", path.display()))?;
    Ok((std::path::absolute(path)?, d))
}

fn status_str(s: JobStatus) -> String {
    format!("{s:?}").to_lowercase()
}

/// Every job of the cluster, oldest first: on etcd the cluster's job index (every job,
/// whichever host runs it, from any machine), else what every agent of the file reports.
pub async fn list_jobs(ctx: &Ctx, cluster: &vmove_model::Cluster) -> Result<Vec<JobBrief>> {
    if !cluster.store.is_file() {
        let store = ctx.store(cluster).await?;
        return Ok(vmove_registry::list_jobs(store.as_ref()).await?);
    }
    let clients = ctx.clients(cluster)?;
    let lists = join_all(clients.iter().map(|(_, c)| c.call::<Vec<JobBrief>>(&Request::JobList))).await;
    let mut all: Vec<JobBrief> = lists.into_iter().flatten().flatten().collect();
    all.sort_by_key(|j| j.created_ms);
    Ok(all)
}

/// Moves the guest in the cluster file to where the job says it is now, once the agent of
/// that host confirms that it has the guest: an older job's record (one rolled back before
/// a later move, say) must not move it back. On etcd there is nothing to do: the target's
/// agent records the placement in the store as the job goes.
pub async fn sync_cluster(ctx: &Ctx, rec: &JobRecord) -> Result<()> {
    let Some(host) = &rec.guest_host else { return Ok(()) };
    let cluster = ctx.file()?;
    if !cluster.store.is_file() {
        return Ok(());
    }
    let name = &rec.spec.guest.name;
    if cluster.guest(name).is_none_or(|g| &g.host == host) {
        return Ok(());
    }
    let has = ctx.client(&cluster, host)?.call::<vmove_api::GuestStatus>(&Request::GuestShow { name: name.clone() }).await;
    if has.is_err() {
        return Ok(());
    }
    ctx.update_cluster(|c| match c.guest_mut(name) {
        Some(g) if &g.host != host => {
            g.host = host.clone();
            true
        }
        _ => false,
    })
    .await
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// How [`follow_with`] shows a job.
pub struct FollowOpts {
    /// Printed instead of `Deploying Action ID : <job> <action>` when the job starts.
    pub started_line: Option<String>,
    /// Print oedacli's `Done...` / `Done [Elapsed = ...]` lines when the job succeeds.
    pub done_lines: bool,
    /// Print nothing at all (the caller reports the outcome).
    pub quiet: bool,
}

impl Default for FollowOpts {
    fn default() -> Self {
        FollowOpts { started_line: None, done_lines: true, quiet: false }
    }
}

/// Follows a job to its end, printing steps and progress; fails if the job did not succeed.
pub async fn follow(ctx: &Ctx, host: &str, id: &str) -> Result<()> {
    let rec = follow_with(ctx, host, id, &FollowOpts::default()).await?;
    match rec.status {
        JobStatus::Succeeded => Ok(()),
        s => bail!("job {} {}: {}", rec.id, status_str(s), rec.error.clone().unwrap_or_default()),
    }
}

/// Follows a job to its end as `opts` says, updates the cluster file where the guest
/// moved, and returns the job's final record whatever its status.
pub async fn follow_with(ctx: &Ctx, host: &str, id: &str, opts: &FollowOpts) -> Result<JobRecord> {
    let cluster = ctx.cluster().await?;
    let client = ctx.client(&cluster, host)?;
    let bar = (!ctx.json && !opts.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {bytes}/{total_bytes} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut last_line = Instant::now() - Duration::from_secs(10);
    let json = ctx.json;
    let show = |e: &JobEvent| {
        if opts.quiet {
            return;
        }
        if json {
            crate::out::json(&serde_json::json!({ "job": id, "event": e }));
            return;
        }
        match &e.kind {
            EventKind::Progress(p) => {
                let line = progress_line(p);
                match &bar {
                    Some(b) => {
                        b.set_length(p.total_bytes.max(1));
                        b.set_position(p.total_bytes.saturating_sub(p.remaining_bytes));
                        b.set_message(line);
                    }
                    None => {
                        if last_line.elapsed() >= Duration::from_secs(2) {
                            println!("    {line}");
                            last_line = Instant::now();
                        }
                    }
                }
            }
            other => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                if let Some(s) = event_line(id, other, opts) {
                    println!("{s}");
                }
            }
        }
    };
    let rec = if cluster.store.is_file() {
        client.watch(id, 0, Duration::from_secs(20), show).await?
    } else {
        // On etcd the job's events are followed through the store's watches (the agent
        // writes each one there before it tells anyone).
        let fleet = ctx.store(&cluster).await?;
        let own = fleet.sub_namespace(&vmove_registry::keys::host_namespace(host))?;
        vmove_registry::follow_job(fleet.as_ref(), &own, host, id, show).await.with_context(|| format!("follow job {id} in etcd"))?
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    sync_cluster(ctx, &rec).await?;
    Ok(rec)
}

fn progress_line(p: &Progress) -> String {
    if p.is_volume_copy() {
        return format!(
            "copying volumes | {:.0}/{:.0} MiB copied, {:.0} MiB left | {:.1} MiB/s | ETA {}",
            mib(p.transferred_bytes),
            mib(p.total_bytes),
            mib(p.remaining_bytes),
            mib(p.rate_bytes_per_s),
            p.eta_s.map_or("-".to_string(), |s| format!("{s} s"))
        );
    }
    let rung = p.rung.as_ref().map_or(String::new(), |r| format!(" | {r}"));
    let throttle = p.throttle_pct.filter(|t| *t > 0).map_or(String::new(), |t| format!(" | throttle {t} %"));
    format!(
        "pass {} | {:.0}/{:.0} MiB sent, {:.0} MiB left | {:.1} MiB/s | dirty {:.1} MiB/s | expected downtime {} ms | ETA {}{rung}{throttle}",
        p.pass,
        mib(p.transferred_bytes),
        mib(p.total_bytes),
        mib(p.remaining_bytes),
        mib(p.rate_bytes_per_s),
        mib(p.dirty_rate_bytes_per_s),
        p.expected_downtime_ms,
        p.eta_s.map_or("-".to_string(), |s| format!("{s} s"))
    )
}

/// Now, as oedacli prints it (`Wed Jul 30 16:14:59 UTC 2025`).
pub fn oedacli_date() -> String {
    let fmt = time::macros::format_description!(
        "[weekday repr:short] [month repr:short] [day] [hour]:[minute]:[second] UTC [year]"
    );
    time::OffsetDateTime::now_utc().format(&fmt).unwrap_or_default()
}

fn event_line(id: &str, e: &EventKind, opts: &FollowOpts) -> Option<String> {
    Some(match e {
        EventKind::JobStarted { .. } if opts.started_line.as_deref() == Some("") => return None,
        EventKind::JobStarted { action } => match &opts.started_line {
            Some(l) => l.clone(),
            None => format!("Deploying Action ID : {id} {action}"),
        },
        EventKind::StepStarted { step } => format!("  {} ...", step.name()),
        EventKind::StepDone { step, elapsed_ms, note } => {
            format!("  Step {} completed successfully [Elapsed = {elapsed_ms} mS]: {note}", step.name())
        }
        EventKind::StepFailed { step, error } => format!("  Step {} FAILED: {error}", step.name()),
        EventKind::Info { message } if message.is_empty() => return None,
        EventKind::Info { message } => format!("    {message}"),
        EventKind::Progress(_) => return None,
        EventKind::Escalation { action, .. } => format!("    escalation: {action}"),
        EventKind::JobEnded { status, error, summary } => {
            let mut s = String::new();
            if let (Some(d), Some(t)) = (summary.downtime_ms, summary.migration_ms) {
                s.push_str(&format!(
                    "Summary: total {} ms, memory migration {t} ms, downtime {d} ms (QEMU), {:.1} MiB sent in {} passes\n",
                    summary.total_ms,
                    mib(summary.transferred_bytes.unwrap_or(0)),
                    summary.passes.unwrap_or(0)
                ));
            }
            if let Some(b) = summary.disk_bytes.filter(|b| *b > 0) {
                let took = summary.disk_copy_ms.map_or(String::new(), |ms| format!(" in {ms} ms"));
                s.push_str(&format!("Local volumes: {:.1} MiB copied{took}\n", mib(b)));
            }
            match status {
                JobStatus::Succeeded if !opts.done_lines => {
                    if s.is_empty() {
                        return None;
                    }
                    s.truncate(s.trim_end().len());
                }
                JobStatus::Succeeded => s.push_str(&format!(
                    "Done...\nDone [Elapsed = {} mS [{:.1} minutes] {}]",
                    summary.total_ms,
                    summary.total_ms as f64 / 60000.0,
                    oedacli_date()
                )),
                other => s.push_str(&format!(
                    "{} [Elapsed = {} mS]: {}",
                    format!("{other:?}").to_uppercase(),
                    summary.total_ms,
                    error.clone().unwrap_or_default()
                )),
            }
            s
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmove_api::Summary;

    #[test]
    fn the_end_of_a_job_shows_memory_and_local_volume_figures() {
        let summary = Summary {
            total_ms: 5200,
            migration_ms: Some(900),
            downtime_ms: Some(40),
            transferred_bytes: Some(150 << 20),
            passes: Some(3),
            disk_bytes: Some(256 << 20),
            disk_copy_ms: Some(2100),
            predicted_memory_ms: Some(700),
        };
        let end = EventKind::JobEnded { status: JobStatus::Succeeded, error: None, summary };
        let opts = FollowOpts { done_lines: false, ..FollowOpts::default() };
        let line = event_line("host2-1", &end, &opts).expect("a summary");
        assert_eq!(
            line,
            "Summary: total 5200 ms, memory migration 900 ms, downtime 40 ms (QEMU), 150.0 MiB sent in 3 passes\nLocal volumes: 256.0 MiB copied in 2100 ms"
        );
        // An offline move of a guest without local volumes says nothing more.
        let end = EventKind::JobEnded { status: JobStatus::Succeeded, error: None, summary: Summary { total_ms: 800, ..Summary::default() } };
        assert_eq!(event_line("host2-2", &end, &opts), None);
    }

    #[test]
    fn the_copy_of_local_volumes_reads_as_a_copy_not_as_memory_passes() {
        let copy = Progress {
            status: Progress::COPYING_VOLUMES.into(),
            transferred_bytes: 64 << 20,
            remaining_bytes: 192 << 20,
            total_bytes: 256 << 20,
            rate_bytes_per_s: 32 << 20,
            eta_s: Some(6),
            ..Progress::default()
        };
        assert_eq!(progress_line(&copy), "copying volumes | 64/256 MiB copied, 192 MiB left | 32.0 MiB/s | ETA 6 s");
        let memory = Progress { status: "active".into(), pass: 2, ..copy };
        assert!(progress_line(&memory).starts_with("pass 2 | 64/256 MiB sent"), "{}", progress_line(&memory));
    }
}
