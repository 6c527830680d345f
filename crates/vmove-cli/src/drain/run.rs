//! The runner of a drain or an evacuation: starts the planned moves with
//! [`vmove_plan::startable`] under the limits (counting every migration running in the
//! cluster, other drains' included), follows them side by side, retries a move that failed
//! once on another target ([`vmove_plan::replan_one`]), and makes the final table.
//!
//! With a [`Journal`] (a drain record), every start, child job, retry and end is written
//! to the record before the runner goes on (a failed write stops the runner), and the
//! record's cancel flag is read every tick: once it is set no move starts, the moves
//! waiting stay where they are, and the running ones' jobs are cancelled (those past their
//! switchover finish).
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use vmove_model::Cluster;
use vmove_plan::{startable, DrainPlan, Limits, Mode, MoveRequest, PlannedMove, Step};

use super::gather::{as_planned, Inventory};
use super::journal::{cancel_jobs, Journal};
use super::one_move::{attempt, Attempt, AttemptSpec, MoveEvent};
use super::report::{offline_downtime_ms, summary, Outcome, Progress, Report, Row};
use crate::ctx::Ctx;

/// How often the runner looks again at moves it could not start (other drains' moves
/// running, a target at its limit).
const TICK: Duration = Duration::from_secs(2);

/// What the runner is asked to do.
pub struct RunSpec {
    /// `drain` or `evacuate`.
    pub kind: &'static str,
    /// The host being emptied (never a target).
    pub host: String,
    /// Dirty rates measured at planning, by guest.
    pub dirty: HashMap<String, u64>,
    /// Guests that ran when the plan was made (an offline move of one has a downtime).
    pub was_running: HashSet<String>,
    /// Test hook: the first attempt of these guests' moves fails this step on purpose.
    pub inject_fault: Vec<(String, Step)>,
}

/// A move waiting to start.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub planned: PlannedMove,
    /// 0: as planned; 1: the retry on another target.
    pub attempt: u8,
    /// When the first attempt started.
    pub first_start: Option<Instant>,
    /// Jobs of earlier attempts.
    pub jobs: Vec<String>,
    /// Why the earlier attempt failed.
    pub earlier: Option<String>,
}

impl Pending {
    fn new(planned: PlannedMove) -> Pending {
        Pending { planned, attempt: 0, first_start: None, jobs: Vec::new(), earlier: None }
    }
}

/// The moves of the run, and what became of them.
pub(crate) struct Book {
    pub limits: Limits,
    pub pending: Vec<Pending>,
    pub running: HashMap<String, Pending>,
    /// Guests whose target said "at limit": not tried again before the next tick or end.
    pub held: HashSet<String>,
    pub rows: Vec<Row>,
    pub max_running: usize,
}

impl Book {
    pub fn new(plan: &DrainPlan) -> Book {
        let rows = plan
            .unplaced
            .iter()
            .map(|u| Row {
                guest: u.guest.clone(),
                from: u.from.clone(),
                to: None,
                mode: u.mode,
                outcome: Outcome::NotPlaced,
                attempts: 0,
                jobs: vec![],
                started_ms: None,
                ended_ms: None,
                elapsed_ms: None,
                downtime_ms: None,
                predicted_s: None,
                note: u.reason.clone(),
            })
            .collect();
        Book {
            limits: plan.limits,
            pending: plan.pending().into_iter().cloned().map(Pending::new).collect(),
            running: HashMap::new(),
            held: HashSet::new(),
            rows,
            max_running: 0,
        }
    }

    /// The moves to start now beside ours and `others` (migrations of someone else),
    /// taken out of the pending list into the running set.
    pub fn start(&mut self, others: &[PlannedMove]) -> Vec<Pending> {
        let mut running: Vec<PlannedMove> = self.running.values().map(|p| p.planned.clone()).collect();
        running.extend(others.iter().filter(|o| !self.running.contains_key(&o.guest)).cloned());
        let candidates: Vec<usize> = (0..self.pending.len()).filter(|&i| !self.held.contains(&self.pending[i].planned.guest)).collect();
        let list: Vec<&PlannedMove> = candidates.iter().map(|&i| &self.pending[i].planned).collect();
        let picks: Vec<usize> = startable(&list, &running, &self.limits).into_iter().map(|k| candidates[k]).collect();
        let mut out = Vec::new();
        for &i in picks.iter().rev() {
            let mut p = self.pending.remove(i);
            p.first_start.get_or_insert_with(Instant::now);
            self.running.insert(p.planned.guest.clone(), p.clone());
            out.push(p);
        }
        out.reverse();
        self.max_running = self.max_running.max(self.running.len());
        out
    }

    /// Whether everything has ended.
    pub fn done(&self) -> bool {
        self.pending.is_empty() && self.running.is_empty()
    }

    /// Every move not finished yet except `guest`'s: the targets they will take.
    pub fn reserved(&self, guest: &str) -> Vec<PlannedMove> {
        self.pending.iter().chain(self.running.values()).filter(|p| p.planned.guest != guest).map(|p| p.planned.clone()).collect()
    }

    /// Ends a move with a row.
    pub fn finish(&mut self, p: Pending, outcome: Outcome, note: String) -> &mut Row {
        let elapsed_ms = p.first_start.map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        self.rows.push(Row {
            guest: p.planned.guest.clone(),
            from: p.planned.from.clone(),
            to: Some(p.planned.to.clone()),
            mode: p.planned.mode,
            outcome,
            attempts: p.attempt + 1,
            jobs: p.jobs,
            started_ms: None,
            ended_ms: None,
            elapsed_ms,
            downtime_ms: None,
            predicted_s: Some(p.planned.predicted_s),
            note,
        });
        let n = self.rows.len() - 1;
        &mut self.rows[n]
    }
}

/// What the record is told after a move's attempt ended.
enum Note {
    /// The move ended: its row.
    Ended(Row),
    /// The move waits again (retry, target at its limit): guest, target, why.
    Back(String, String, String),
}

/// Writes a note to the record.
async fn note(journal: Option<&Journal>, n: Note) -> Result<()> {
    let Some(j) = journal else { return Ok(()) };
    match n {
        Note::Ended(row) => j.write(|r| r.move_ended(&row)).await,
        Note::Back(g, to, why) => j.write(|r| r.move_back(&g, &to, &why)).await,
    }
}

/// Cancel state of a run with a journal.
#[derive(Default)]
struct Cancel {
    asked: bool,
    /// The current attempt's move job of each running move, and whether it was asked to
    /// cancel.
    jobs: HashMap<String, (String, bool)>,
    /// The jobs of each running attempt seen so far (written to the record).
    seen: HashMap<String, Vec<String>>,
}

impl Cancel {
    /// The jobs to cancel now (marked as asked).
    fn due(&mut self) -> Vec<String> {
        if !self.asked {
            return vec![];
        }
        self.jobs.values_mut().filter(|(_, asked)| !*asked).map(|(j, asked)| {
            *asked = true;
            j.clone()
        }).collect()
    }
}

/// Runs the plan's moves to their ends; returns the report. Fails only when the journal
/// cannot be written (the moves that run go on on their agents).
pub async fn run(ctx: &Ctx, cluster: &Cluster, plan: &DrainPlan, spec: RunSpec, journal: Option<&Journal>) -> Result<Report> {
    let shared = Arc::new((Ctx::new(ctx.cluster_path.clone(), ctx.json), cluster.clone()));
    let mut book = Book::new(plan);
    let mut cancel = Cancel::default();
    let mut tasks: JoinSet<(String, Attempt)> = JoinSet::new();
    let mut task_guest: HashMap<tokio::task::Id, String> = HashMap::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<MoveEvent>();
    let mut progress = Progress::new(ctx.json);
    let mut tick = tokio::time::interval(TICK);
    let mut look = true;
    while !book.done() {
        if look && !cancel.asked {
            if let Some(j) = journal {
                if j.read().await?.cancel_requested {
                    cancel.asked = true;
                    progress.say("-", "cancel asked: no new move starts; running moves are cancelled", serde_json::json!({ "cancelling": j.id }));
                    for p in std::mem::take(&mut book.pending) {
                        let mut row = book.finish(p, Outcome::Cancelled, "cancelled before it started".into()).clone();
                        row.attempts = 0;
                        note(journal, Note::Ended(row)).await?;
                    }
                }
            }
        }
        if look && !book.pending.is_empty() {
            let others: Vec<PlannedMove> = Inventory::running_jobs(ctx, cluster).await.iter().map(as_planned).collect();
            for p in book.start(&others) {
                let m = &p.planned;
                if let Some(j) = journal {
                    j.write(|r| r.move_started(&m.guest, &m.to)).await?;
                }
                let fault = spec.inject_fault.iter().find(|(g, _)| p.attempt == 0 && *g == m.guest).map(|(_, s)| *s);
                let what = format!("{} -> {} ({}){}", m.from, m.to, m.mode.as_str().to_lowercase(), if p.attempt > 0 { ", retry" } else { "" });
                progress.say(&m.guest, &format!("start {what}"), serde_json::json!({ "start": m, "attempt": p.attempt }));
                let a = AttemptSpec {
                    planned: m.clone(),
                    dirty_rate_bytes_per_s: spec.dirty.get(&m.guest).copied(),
                    max_incoming: u32::try_from(book.limits.max_in_per_host).unwrap_or(u32::MAX),
                    inject_fault: fault,
                };
                let (sh, tx) = (shared.clone(), tx.clone());
                let guest = m.guest.clone();
                let h = tasks.spawn(async move { (guest, attempt(&sh.0, &sh.1, a, tx).await) });
                task_guest.insert(h.id(), m.guest.clone());
            }
        }
        look = false;
        tokio::select! {
            Some(e) = rx.recv() => {
                // The job goes to the record before anything is said of it.
                if let Some(j) = journal {
                    let seen = cancel.seen.entry(e.guest.clone()).or_default();
                    if !seen.contains(&e.job) {
                        j.write(|r| r.job_seen(&e.guest, &e.job)).await?;
                        seen.push(e.job.clone());
                        // The attempt's first job is the move; a later one is its recovery,
                        // which is never cancelled.
                        cancel.jobs.entry(e.guest.clone()).or_insert_with(|| (e.job.clone(), false));
                    }
                }
                progress.event(&e);
            }
            Some(done) = tasks.join_next_with_id() => {
                look = true;
                book.held.clear();
                let n = match done {
                    Ok((id, (guest, a))) => {
                        task_guest.remove(&id);
                        cancel.jobs.remove(&guest);
                        cancel.seen.remove(&guest);
                        ended(ctx, cluster, &spec, &mut book, &progress, &guest, a, cancel.asked).await
                    }
                    Err(e) => {
                        let guest = task_guest.remove(&e.id()).unwrap_or_default();
                        lost(&mut book, &guest, &e.to_string())
                    }
                };
                if let Some(n) = n {
                    note(journal, n).await?;
                }
            }
            _ = tick.tick() => {
                look = true;
                book.held.clear();
            }
        }
        let due = cancel.due();
        if !due.is_empty() {
            for (job, r) in cancel_jobs(ctx, cluster, &due).await {
                let what = match r {
                    Ok(()) => format!("cancel of {job} asked"),
                    Err(e) => format!("cancel of {job}: {e}"),
                };
                progress.say("-", &what, serde_json::json!({ "cancel": job, "answer": what }));
            }
        }
    }
    while let Ok(e) = rx.try_recv() {
        progress.event(&e);
    }
    let order: Vec<&str> = plan.moves.iter().map(|m| m.planned.guest.as_str()).chain(plan.unplaced.iter().map(|u| u.guest.as_str())).collect();
    book.rows.sort_by_key(|r| order.iter().position(|g| *g == r.guest));
    Ok(Report {
        kind: spec.kind,
        host: spec.host.clone(),
        rows: book.rows,
        predicted_total_s: plan.predicted_total_s,
        actual_total_ms: u64::try_from(progress.elapsed().as_millis()).unwrap_or(u64::MAX),
        max_running: book.max_running,
    })
}

/// A move's task panicked (a bug): its move is reported unknown.
fn lost(book: &mut Book, guest: &str, why: &str) -> Option<Note> {
    let p = book.running.remove(guest)?;
    Some(Note::Ended(book.finish(p, Outcome::Unknown, format!("the runner lost this move ({why}): see `vmove job list`")).clone()))
}

/// One attempt ended: a row, a retry, or back to pending (what the record is told).
/// After a cancel, a move that did not happen ends `cancelled` (no retry).
#[allow(clippy::too_many_arguments)]
async fn ended(ctx: &Ctx, cluster: &Cluster, spec: &RunSpec, book: &mut Book, progress: &Progress, guest: &str, a: Attempt, cancelled: bool) -> Option<Note> {
    let mut p = book.running.remove(guest)?;
    match a {
        Attempt::Deferred | Attempt::NotMoved { .. } if cancelled => {
            if let Attempt::NotMoved { job, why } = a {
                p.jobs.extend(job);
                progress.say(guest, &format!("stays on {}: {why}", p.planned.from), serde_json::json!({ "stayed": guest, "why": why }));
                return Some(Note::Ended(book.finish(p, Outcome::Cancelled, format!("cancelled: {why}")).clone()));
            }
            Some(Note::Ended(book.finish(p, Outcome::Cancelled, "cancelled before it started".into()).clone()))
        }
        Attempt::Deferred => {
            progress.say(guest, &format!("{} is at its limit of moves in: later", p.planned.to), serde_json::json!({ "deferred": guest }));
            book.held.insert(guest.to_string());
            let n = Note::Back(guest.to_string(), p.planned.to.clone(), String::new());
            book.pending.insert(0, p);
            Some(n)
        }
        Attempt::Moved { job, recovery } => {
            p.jobs.push(job.id.clone());
            let last = match &recovery {
                Some(r) => {
                    p.jobs.push(r.id.clone());
                    r.as_ref()
                }
                None => job.as_ref(),
            };
            if let Err(e) = crate::cmd_job::sync_cluster(ctx, last).await {
                eprintln!("vmove: {guest} moved but the cluster file was not updated: {}", crate::out::one_line(e));
            }
            let note = match (&recovery, &p.earlier) {
                (Some(r), _) => format!("job {} failed, recovery {} finished the move", job.id, r.id),
                (None, Some(e)) => format!("retried: {e}"),
                (None, None) => String::new(),
            };
            let downtime_ms = match p.planned.mode {
                Mode::Live => summary(&job).and_then(|s| s.downtime_ms),
                Mode::Offline if spec.was_running.contains(guest) => offline_downtime_ms(&job, last),
                _ => None,
            };
            let row = book.finish(p, Outcome::Moved, note);
            row.started_ms = Some(job.created_ms);
            row.ended_ms = last.ended_ms;
            row.downtime_ms = downtime_ms;
            let to = row.to.clone().unwrap_or_default();
            let n = Note::Ended(row.clone());
            progress.say(guest, &format!("moved to {to}"), serde_json::json!({ "moved": guest, "to": to }));
            Some(n)
        }
        Attempt::NotMoved { job, why } => {
            p.jobs.extend(job);
            let failed_on = p.planned.to.clone();
            progress.say(guest, &format!("move to {failed_on} failed: {why}"), serde_json::json!({ "failed": guest, "to": failed_on, "why": why }));
            if p.attempt > 0 {
                let note = format!("{}; retry on {failed_on}: {why}", p.earlier.clone().unwrap_or_default());
                return Some(Note::Ended(book.finish(p, Outcome::Failed, note).clone()));
            }
            let earlier = format!("{failed_on}: {why}");
            match replan(ctx, cluster, spec, book, &p.planned, &failed_on).await {
                Ok(next) => {
                    progress.say(guest, &format!("retry on {}", next.to), serde_json::json!({ "retry": guest, "to": next.to }));
                    let n = Note::Back(guest.to_string(), next.to.clone(), format!("retry: {earlier}"));
                    p.planned = next;
                    p.attempt = 1;
                    p.earlier = Some(earlier);
                    book.pending.insert(0, p);
                    Some(n)
                }
                Err(no) => Some(Note::Ended(book.finish(p, Outcome::Failed, format!("{earlier}; no other target: {no}")).clone())),
            }
        }
        Attempt::Unknown { job, why } => {
            p.jobs.extend(job);
            progress.say(guest, &format!("UNKNOWN: {why}"), serde_json::json!({ "unknown": guest, "why": why }));
            Some(Note::Ended(book.finish(p, Outcome::Unknown, why).clone()))
        }
    }
}

/// Another target for a failed move, from fresh inventories, without the host that failed.
async fn replan(ctx: &Ctx, cluster: &Cluster, spec: &RunSpec, book: &Book, m: &PlannedMove, failed_on: &str) -> Result<PlannedMove, String> {
    let inv = Inventory::gather(ctx, cluster).await.map_err(crate::out::one_line)?;
    let busy = inv.busy();
    let views = inv.views(&[spec.host.as_str()]);
    let input = inv.input(cluster, views, &busy);
    let mut req = MoveRequest::new(&m.guest, &m.from, m.mode);
    req.dirty_rate_bytes_per_s = spec.dirty.get(&m.guest).copied();
    req.predicted_s = Some(m.predicted_s);
    vmove_plan::replan_one(&input, &book.reserved(&m.guest), &req, &[failed_on.to_string()]).map_err(|u| u.reason)
}
