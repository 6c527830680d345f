//! The vmove contender: `vmove migrate` streamed, its job's own outage record, and its
//! precheck's prediction.
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::{ms, vmove, Ctx, GuestPlan, Outcome};
use crate::env::Env;
use crate::model::Sample;
use crate::parse::{self, VmoveLine};

/// A `vmove` command running with its output piped: its stdout line by line, its stderr
/// collected in the background.
pub(crate) struct Streamed {
    pub child: tokio::process::Child,
    pub lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    pub err_task: tokio::task::JoinHandle<String>,
}

/// Starts `vmove ARGS` on the lab's cluster file ([`Streamed`]); it is killed if dropped.
pub(crate) fn streamed(env: &Env, args: &[&str]) -> Result<Streamed> {
    let mut child = tokio::process::Command::new(env.bin_dir.join("vmove"))
        .args(args)
        .env("VMOVE_CLUSTER", &env.info.cluster_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("run vmove {}", args.iter().find(|a| !a.starts_with('-')).unwrap_or(&"")))?;
    let mut stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let lines = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?).lines();
    Ok(Streamed { child, lines, err_task })
}

/// `vmove migrate` with its defaults, followed line by line.
pub(super) async fn migrate_vmove(ctx: &Ctx<'_>, g: &GuestPlan) -> Result<Outcome> {
    let t0 = Instant::now();
    let t0_unix = vmove_model::now_ms();
    let budget = format!("{}s", ctx.budget.as_secs());
    let Streamed { mut child, mut lines, err_task } = streamed(ctx.env, &["--json", "migrate", &g.name, "--to", "host2", "--timeout", &budget])?;
    let mut out = Outcome::default();
    let mut ended = None;
    let mut job = None;
    let hard = ctx.budget + Duration::from_secs(120);
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if job.is_none() {
                job = parse::vmove_job_id(&line);
            }
            match parse::vmove_line(&line) {
                Some(VmoveLine::Progress { at_ms, remaining_bytes, transferred_bytes }) => out.samples.push(Sample {
                    t_ms: at_ms.saturating_sub(t0_unix),
                    remaining_bytes,
                    transferred_bytes,
                }),
                Some(e @ VmoveLine::Ended { .. }) => ended = Some(e),
                _ => {}
            }
        }
    };
    if tokio::time::timeout(hard, read).await.is_err() {
        let _ = child.kill().await;
        bail!("vmove migrate did not end within {} s", hard.as_secs());
    }
    let status = child.wait().await?;
    let total = ms(t0.elapsed());
    let err = err_task.await.unwrap_or_default();
    out.total_ms = Some(total);
    match ended {
        Some(VmoveLine::Ended { succeeded, error, total_ms, migration_ms, downtime_ms, transferred_bytes, passes, disk_bytes, disk_copy_ms }) => {
            out.disk_bytes = disk_bytes;
            out.disk_copy_ms = disk_copy_ms;
            out.converged = succeeded && status.success();
            out.error = error.or_else(|| (!status.success()).then(|| err.trim().to_string()));
            out.qemu_total_ms = migration_ms;
            out.downtime_ms = downtime_ms;
            out.transferred_bytes = transferred_bytes;
            out.passes = passes;
            out.notes.push(format!("job total {total_ms} ms"));
            if let Some(id) = &job {
                if let Some(o) = job_outage(ctx, id).await {
                    out.resumed_us = o.dst_resumed_us;
                    out.notes.push(format!("vmove's own outage record (not used for the figures): {}", o.line()));
                }
            }
            if out.converged {
                let last = out.samples.last().map(|s| s.transferred_bytes).unwrap_or(0);
                out.samples.push(Sample { t_ms: total, remaining_bytes: 0, transferred_bytes: transferred_bytes.unwrap_or(last) });
            }
        }
        _ => out.error = Some(format!("no job_ended event: {}", err.trim())),
    }
    Ok(out)
}

/// vmove's own outage record of a job (`vmove --json job show`), once it has the target's
/// first frame (it is completed a moment after the job ends); at most 5 s of waiting.
async fn job_outage(ctx: &Ctx<'_>, job: &str) -> Option<vmove_api::Outage> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let o = vmove(ctx, &["--json", "job", "show", job])
            .await
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| serde_json::from_value::<vmove_api::Outage>(v.get("outage")?.clone()).ok());
        if o.as_ref().is_some_and(|o| o.dst_first_frame_us.is_some()) || Instant::now() > deadline {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// vmove's prediction for the move: `vmove --json migrate --precheck` (it measures the
/// guest's dirty rate and reuses a link measurement up to 10 minutes old).
pub async fn precheck(ctx: &Ctx<'_>, g: &GuestPlan) -> Result<crate::model::Prediction> {
    let budget = format!("{}s", ctx.budget.as_secs());
    let o = tokio::process::Command::new(ctx.env.bin_dir.join("vmove"))
        .args(["--json", "migrate", &g.name, "--to", "host2", "--timeout", &budget, "--precheck"])
        .env("VMOVE_CLUSTER", &ctx.env.info.cluster_file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("run vmove migrate --precheck")?;
    let text = String::from_utf8_lossy(&o.stdout);
    parse::prediction(&text).ok_or_else(|| {
        anyhow!("no predicted-convergence finding: {} {}", text.trim(), String::from_utf8_lossy(&o.stderr).trim())
    })
}
