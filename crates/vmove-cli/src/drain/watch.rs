//! `vmove job watch|show|cancel|list` of drains and evacuations (docs/drain.md "The drain
//! as a job").
//!
//! `job watch DRAIN-ID` shows the drain's table live (each running move's step, bytes,
//! percent and ETA from its child job) until the drain ends, then the final table. When it
//! finds the drain's runner gone (its claim free: [`DrainStore::claim_runner`]), it takes
//! the drain over and runs it to its end itself ([`job::run_claimed`]).
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;
use vmove_api::{EventKind, JobBrief, JobRecord, Request};
use vmove_model::Cluster;

use super::job;
use super::journal::cancel_jobs;
use super::record::{parse_id, DrainRecord, DrainState, RowState};
use super::report::fmt_s;
use super::store::{DrainStore, Wake};
use crate::ctx::Ctx;

/// How often `job watch` looks at a drain (on etcd: refreshes the running moves' figures;
/// the record's changes wake it at once).
const POLL: Duration = Duration::from_secs(2);

/// Whether `id` names a drain rather than a job (`drain-HOST-N`, `evacuate-HOST-N`, where
/// the part before the number is not a host: job ids are `HOST-N`).
pub fn is_drain_id(cluster: &Cluster, id: &str) -> bool {
    parse_id(id).is_some() && id.rsplit_once('-').is_none_or(|(h, _)| cluster.host(h).is_none())
}

/// What a running move's child job says now.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Live {
    /// The job.
    pub job: String,
    /// Its step running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Bytes sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transferred_bytes: Option<u64>,
    /// Guest RAM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// Of the guest's RAM, sent (total − remaining).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u64>,
    /// QEMU's estimate, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<u64>,
}

/// The running moves' figures, by guest (a job whose agent does not answer has none).
async fn live(ctx: &Ctx, cluster: &Cluster, rec: &DrainRecord) -> HashMap<String, Live> {
    let mut out = HashMap::new();
    for (guest, id) in rec.running_jobs() {
        let Some((host, _)) = id.rsplit_once('-') else { continue };
        let Ok(c) = ctx.client(cluster, host) else { continue };
        let Ok(job) = c.with_timeout(Duration::from_secs(5)).call::<JobRecord>(&Request::JobShow { id: id.to_string() }).await else {
            continue;
        };
        let mut l = Live { job: id.to_string(), step: JobBrief::from(&job).current_step.map(|s| s.name().to_string()), ..Live::default() };
        if let Some(p) = job.events.iter().rev().find_map(|e| match &e.kind {
            EventKind::Progress(p) => Some(p),
            _ => None,
        }) {
            l.transferred_bytes = Some(p.transferred_bytes);
            l.total_bytes = Some(p.total_bytes);
            l.percent = p.total_bytes.saturating_sub(p.remaining_bytes).saturating_mul(100).checked_div(p.total_bytes);
            l.eta_s = p.eta_s;
        }
        out.insert(guest.to_string(), l);
    }
    out
}

fn ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
}

/// The drain's table, with the running moves' figures.
fn print_table(rec: &DrainRecord, live: &HashMap<String, Live>) {
    let runner = rec.runner.as_ref().map_or("none yet".to_string(), |r| format!("process {} on {}", r.pid, r.machine));
    println!(
        "{} of {}: {}{}; {} of {} guests moved; predicted {}; runner {runner}{}",
        rec.id,
        rec.host,
        rec.state,
        if rec.cancel_requested && !rec.state.ended() { " (cancel asked)" } else { "" },
        rec.moved().len(),
        rec.rows.len(),
        rec.predicted_total_s.map_or("-".into(), fmt_s),
        if rec.takeovers > 0 { format!(", taken over {} time(s)", rec.takeovers) } else { String::new() }
    );
    let rows: Vec<Vec<String>> = rec
        .rows
        .iter()
        .map(|r| {
            let progress = live.get(&r.guest).map_or(String::new(), |l| {
                let mut s = l.step.clone().unwrap_or_default();
                if let (Some(p), Some(t), Some(b)) = (l.percent, l.total_bytes, l.transferred_bytes) {
                    s.push_str(&format!(" {p}% ({:.0}/{:.0} MiB sent)", b as f64 / 1_048_576.0, t as f64 / 1_048_576.0));
                }
                if let Some(e) = l.eta_s {
                    s.push_str(&format!(" ETA {e}s"));
                }
                s
            });
            vec![
                r.guest.clone(),
                r.from.clone(),
                r.to.clone().unwrap_or_else(|| "-".into()),
                r.mode.as_str().to_lowercase(),
                r.state.to_string(),
                ms(r.elapsed_ms),
                r.downtime_ms.map_or("-".into(), |d| format!("{d} ms")),
                r.jobs.join(" "),
                if progress.is_empty() { r.note.clone() } else { progress },
            ]
        })
        .collect();
    crate::out::table(&["GUEST", "FROM", "TO", "MODE", "STATE", "TIME", "DOWNTIME", "JOBS", "PROGRESS/NOTE"], &rows);
    if let Some(e) = &rec.error {
        println!("error: {e}");
    }
}

/// The record with the running moves' figures, as one JSON value.
fn json_of(rec: &DrainRecord, live: &HashMap<String, Live>, runner_alive: Option<bool>) -> serde_json::Value {
    let mut v = serde_json::to_value(rec).unwrap_or_default();
    if let Some(rows) = v.get_mut("rows").and_then(|r| r.as_array_mut()) {
        for r in rows {
            if let Some(l) = r.get("guest").and_then(|g| g.as_str()).and_then(|g| live.get(g)) {
                r["live"] = serde_json::to_value(l).unwrap_or_default();
            }
        }
    }
    if let Some(a) = runner_alive {
        v["runner_alive"] = a.into();
    }
    v
}

/// The end of a drain as `job watch` reports it: the final table; an error unless every
/// guest moved or the drain was cancelled.
fn final_(ctx: &Ctx, rec: &DrainRecord) -> Result<()> {
    if ctx.json {
        crate::out::json(&serde_json::json!({ "final": rec }));
    } else {
        print_table(rec, &HashMap::new());
    }
    match rec.state {
        DrainState::Done | DrainState::Cancelled => Ok(()),
        s => bail!("{} ended {s}: not moved: {}", rec.id, rec.not_moved().join(", ")),
    }
}

/// `vmove job watch DRAIN-ID`.
pub async fn watch(ctx: &Ctx, cluster: &Cluster, id: &str) -> Result<()> {
    let store = Arc::new(DrainStore::open(ctx, cluster).await?);
    let tty = !ctx.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let start = Instant::now();
    let mut said: HashMap<String, String> = HashMap::new();
    let mut last_json = String::new();
    let mut changes = store.watch(id).await?;
    loop {
        let rec = store.must_get(id).await?;
        if rec.state.ended() {
            return final_(ctx, &rec);
        }
        if let Some(guard) = store.claim_runner(id).await? {
            // No runner ever: a detached drain's own process starts it.
            let takeover = rec.runner.is_some();
            match (&rec.runner, ctx.json) {
                (Some(_), true) => crate::out::json(&serde_json::json!({ "takeover": { "drain": id, "runner": rec.runner, "moved": rec.moved() } })),
                (Some(r), false) => println!(
                    "{id}: its runner (process {} on {}) is gone: this process takes the drain over (moved so far: {})",
                    r.pid,
                    r.machine,
                    rec.moved().join(", ")
                ),
                (None, true) => crate::out::json(&serde_json::json!({ "runs": id })),
                (None, false) => println!("{id}: this process runs the drain"),
            }
            let (rec, _) = job::run_claimed(ctx, store.clone(), id, guard, takeover).await?;
            return final_(ctx, &rec);
        }
        let live = live(ctx, cluster, &rec).await;
        if ctx.json {
            let line = json_of(&rec, &live, None).to_string();
            if line != last_json {
                println!("{line}");
                last_json = line;
            }
        } else if tty {
            print!("\x1b[H\x1b[2J");
            print_table(&rec, &live);
        } else {
            for r in &rec.rows {
                let l = live.get(&r.guest);
                let bucket = l.and_then(|l| l.percent).map_or(String::new(), |p| format!(" {}%", p / 10 * 10));
                let step = l.and_then(|l| l.step.clone()).map_or(String::new(), |s| format!(" {s}"));
                let key = format!("{} {}{step}{bucket}", r.state, r.to.as_deref().unwrap_or("-"));
                if said.get(&r.guest) != Some(&key) {
                    let eta = l.and_then(|l| l.eta_s).map_or(String::new(), |e| format!(" ETA {e}s"));
                    let jobs = if r.jobs.is_empty() { String::new() } else { format!(" [{}]", r.jobs.join(" ")) };
                    println!("[{:>6}] {:<12} {key}{eta}{jobs}", fmt_s(start.elapsed().as_secs()), r.guest);
                    said.insert(r.guest.clone(), key);
                }
            }
        }
        match &mut changes {
            // etcd: a change of the record (a row's state, the cancel flag, the end) or of
            // its runner shows at once; the running moves' figures refresh every POLL.
            Some(w) => {
                if w.changed(POLL).await == Wake::Ended {
                    changes = store.watch(id).await?;
                }
            }
            None => tokio::time::sleep(POLL).await,
        }
    }
}

/// `vmove job show DRAIN-ID`.
pub async fn show(ctx: &Ctx, cluster: &Cluster, id: &str) -> Result<()> {
    let store = DrainStore::open(ctx, cluster).await?;
    let rec = store.must_get(id).await?;
    let alive = if rec.state.ended() { false } else { store.runner_alive(id).await? };
    let live = live(ctx, cluster, &rec).await;
    if ctx.json {
        crate::out::json(&json_of(&rec, &live, Some(alive)));
    } else {
        print_table(&rec, &live);
        if !rec.state.ended() && !alive {
            println!("its runner is gone: `vmove job watch {id}` takes the drain over");
        }
    }
    Ok(())
}

/// `vmove job cancel DRAIN-ID`: the record's cancel flag (the runner starts no new move and
/// ends the drain `cancelled`), and a cancel of every running move's job now.
pub async fn cancel(ctx: &Ctx, cluster: &Cluster, id: &str) -> Result<()> {
    let store = DrainStore::open(ctx, cluster).await?;
    let (rec, _) = store.update(id, |r| r.request_cancel()).await?;
    let jobs: Vec<String> = rec.running_jobs().into_iter().map(|(_, j)| j.to_string()).collect();
    let answers = cancel_jobs(ctx, cluster, &jobs).await;
    let alive = store.runner_alive(id).await?;
    if ctx.json {
        let jobs: Vec<serde_json::Value> = answers
            .iter()
            .map(|(j, r)| serde_json::json!({ "job": j, "ok": r.is_ok(), "error": r.as_ref().err() }))
            .collect();
        crate::out::json(&serde_json::json!({ "ok": true, "drain": id, "cancel_requested": true, "jobs": jobs, "runner_alive": alive }));
    } else {
        println!("cancel requested for {id}: no new move starts");
        for (j, r) in &answers {
            match r {
                Ok(()) => println!("  cancel of job {j} asked (a move past its switchover finishes)"),
                Err(e) => println!("  job {j}: {e}"),
            }
        }
        if !alive {
            println!("its runner is gone: `vmove job watch {id}` finishes the cancel");
        }
    }
    Ok(())
}

/// Every drain of the cluster (none if the cluster never had one).
pub async fn list(ctx: &Ctx, cluster: &Cluster) -> Result<Vec<DrainRecord>> {
    if cluster.store.is_file() {
        let dir = ctx.cluster_path.parent().map(|p| if p.as_os_str().is_empty() { std::path::Path::new(".") } else { p });
        if !dir.is_some_and(|d| d.join("vmove-drains").exists()) {
            return Ok(vec![]);
        }
    }
    DrainStore::open(ctx, cluster).await?.list().await
}

/// `job list`'s lines of drains.
pub fn list_rows(drains: &[DrainRecord]) -> Vec<Vec<String>> {
    drains
        .iter()
        .map(|d| {
            let running = d.rows.iter().filter(|r| r.state == RowState::Running).count();
            vec![
                d.id.clone(),
                d.host.clone(),
                format!("{}{}", d.state, if d.cancel_requested && !d.state.ended() { " (cancel asked)" } else { "" }),
                d.rows.len().to_string(),
                d.moved().len().to_string(),
                running.to_string(),
                d.runner.as_ref().map_or("-".into(), |r| format!("{}@{}", r.pid, r.machine)),
            ]
        })
        .collect()
}

/// `job list --json`'s entries of drains.
pub fn list_json(drains: &[DrainRecord]) -> Vec<serde_json::Value> {
    drains
        .iter()
        .map(|d| {
            serde_json::json!({
                "id": d.id, "drain": { "kind": d.kind, "host": d.host, "state": d.state, "guests": d.rows.len(),
                "moved": d.moved(), "cancel_requested": d.cancel_requested, "created_ms": d.created_ms },
            })
        })
        .collect()
}
