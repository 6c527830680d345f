//! What a drain or an evacuation prints: the plan with its predicted duration, progress
//! lines while the moves run, and the final table; JSON lines with `--json`.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use vmove_api::{EventKind, JobRecord, Summary};
use vmove_plan::placement::fmt_mib;
use vmove_plan::{DrainPlan, Mode, Step};

use super::one_move::MoveEvent;

/// How a guest's move ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The guest is on its new host.
    Moved,
    /// The move failed (and its retry, if there was one); the guest is where it was.
    Failed,
    /// No host could take it; nothing was tried.
    NotPlaced,
    /// Where the guest is is not known for sure: see the note.
    Unknown,
    /// The drain was cancelled before this guest moved: it stays where it was.
    Cancelled,
}

impl Outcome {
    /// `moved`, `FAILED`, `NOT PLACED`, `UNKNOWN`.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Moved => "moved",
            Outcome::Failed => "FAILED",
            Outcome::NotPlaced => "NOT PLACED",
            Outcome::Unknown => "UNKNOWN",
            Outcome::Cancelled => "stayed (cancelled)",
        }
    }
}

/// One line of the final table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The guest.
    pub guest: String,
    /// Its host before.
    pub from: String,
    /// Where it went (or was last tried).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Migration mode.
    pub mode: Mode,
    /// How it ended.
    pub outcome: Outcome,
    /// Attempts made (a failed move is retried once on another target).
    pub attempts: u8,
    /// Jobs, in order (a recovery included).
    pub jobs: Vec<String>,
    /// The successful job's start and end on its agent, unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// See `started_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// From the first attempt's start to the end, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
    /// LIVE: QEMU's downtime figure, ms; OFFLINE of a running guest: from its stop to its
    /// start on the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// The plan's prediction for the move, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_s: Option<u64>,
    /// What happened, one line.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// The end of a drain or an evacuation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `drain` or `evacuate`.
    pub kind: &'static str,
    /// The host emptied.
    pub host: String,
    /// One row per guest.
    pub rows: Vec<Row>,
    /// The plan's prediction, seconds.
    pub predicted_total_s: u64,
    /// How long it took, ms.
    pub actual_total_ms: u64,
    /// The most moves this run had going at once.
    pub max_running: usize,
}

impl Report {
    /// Guests not moved.
    pub fn not_moved(&self) -> Vec<&str> {
        self.rows.iter().filter(|r| r.outcome != Outcome::Moved).map(|r| r.guest.as_str()).collect()
    }
}

/// QEMU's end-of-migration figures in a job's events.
pub fn summary(job: &JobRecord) -> Option<&Summary> {
    job.events.iter().rev().find_map(|e| match &e.kind {
        EventKind::JobEnded { summary, .. } => Some(summary),
        _ => None,
    })
}

/// How long an offline move kept a running guest down: from STOP_GUEST's start to
/// STARTUP_GUEST's end, over the job and the recovery that finished it (`last`).
pub fn offline_downtime_ms(first: &JobRecord, last: &JobRecord) -> Option<u64> {
    let step = |s: Step| first.steps.iter().chain(last.steps.iter()).filter(move |r| r.step == s);
    let stopped = step(Step::StopGuest).find_map(|r| r.started_ms)?;
    let started = step(Step::StartupGuest).filter_map(|r| r.ended_ms).max()?;
    started.checked_sub(stopped)
}

/// `45s`, `2m10s`.
pub fn fmt_s(s: u64) -> String {
    match (s / 60, s % 60) {
        (0, sec) => format!("{sec}s"),
        (m, 0) => format!("{m}m"),
        (m, sec) => format!("{m}m{sec:02}s"),
    }
}

/// Prints the plan.
pub fn plan(json: bool, kind: &str, host: &str, p: &DrainPlan) {
    if json {
        crate::out::json(&serde_json::json!({ "kind": kind, "host": host, "plan": p }));
        return;
    }
    let l = &p.limits;
    println!(
        "{} {host}: {} to move, {} not placed; predicted {} (at most {} moves at once, {} out of and {} into one host)",
        kind.to_uppercase(),
        p.moves.len(),
        p.unplaced.len(),
        fmt_s(p.predicted_total_s),
        l.max_concurrent,
        l.max_out_per_host,
        l.max_in_per_host
    );
    let rows: Vec<Vec<String>> = p
        .moves
        .iter()
        .map(|m| {
            let x = &m.planned;
            vec![
                x.guest.clone(),
                x.mode.as_str().to_lowercase(),
                x.from.clone(),
                x.to.clone(),
                fmt_mib(x.memory_mib),
                x.group.clone().unwrap_or_default(),
                format!("+{}", fmt_s(m.start_s)),
                fmt_s(x.predicted_s),
                x.notes.join("; "),
            ]
        })
        .collect();
    if !rows.is_empty() {
        crate::out::table(&["GUEST", "MODE", "FROM", "TO", "MEMORY", "GROUP", "START", "PREDICTED", "NOTES"], &rows);
    }
    for u in &p.unplaced {
        println!("not placed: {}", u.reason);
    }
}

/// Progress lines, at most one every few seconds per guest for memory progress.
pub struct Progress {
    json: bool,
    start: Instant,
    last: HashMap<String, Instant>,
}

/// Memory progress of one guest is printed at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// Starts the clock.
    pub fn new(json: bool) -> Progress {
        Progress { json, start: Instant::now(), last: HashMap::new() }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// A line of the runner's own (start, retry, end of a move).
    pub fn say(&self, guest: &str, what: &str, json: serde_json::Value) {
        if self.json {
            crate::out::json(&json);
        } else {
            println!("[{:>6}] {guest:<12} {what}", fmt_s(self.start.elapsed().as_secs()));
        }
    }

    /// A job event: steps and, now and then, memory progress (guest, step, percent).
    pub fn event(&mut self, e: &MoveEvent) {
        if self.json {
            crate::out::json(&serde_json::json!({ "guest": e.guest, "job": e.job, "event": e.event }));
            return;
        }
        let line = match &e.event.kind {
            EventKind::StepStarted { step } => format!("{} {step}", e.job),
            EventKind::StepFailed { step, error } => format!("{} {step} FAILED: {error}", e.job),
            EventKind::Progress(p) => {
                let due = self.last.get(&e.guest).is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
                if !due || p.total_bytes == 0 {
                    return;
                }
                self.last.insert(e.guest.clone(), Instant::now());
                let done = p.total_bytes.saturating_sub(p.remaining_bytes);
                format!("{} MIGRATE_GUEST {}% (pass {})", e.job, done.saturating_mul(100) / p.total_bytes, p.pass)
            }
            _ => return,
        };
        println!("[{:>6}] {:<12} {line}", fmt_s(self.start.elapsed().as_secs()), e.guest);
    }
}

/// Prints the final table (text) or the report (JSON).
pub fn table(json: bool, r: &Report) {
    if json {
        crate::out::json(&serde_json::json!({ "report": r }));
        return;
    }
    println!(
        "DOWNTIME: live, QEMU's figure (vCPUs paused at the switchover; a client may see more, nothing here measured it); \
         offline, from the guest's stop to its start on the target"
    );
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|x| {
            vec![
                x.guest.clone(),
                x.from.clone(),
                x.to.clone().unwrap_or_else(|| "-".into()),
                x.mode.as_str().to_lowercase(),
                x.outcome.word().to_string(),
                x.elapsed_ms.map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                x.downtime_ms.map_or("-".into(), |ms| format!("{ms} ms")),
                x.jobs.join(" "),
                x.note.clone(),
            ]
        })
        .collect();
    crate::out::table(&["GUEST", "FROM", "TO", "MODE", "OUTCOME", "TIME", "DOWNTIME", "JOBS", "NOTE"], &rows);
    println!(
        "{} of {}: {} of {} guests moved in {} (predicted {}); at most {} moves at once",
        r.kind,
        r.host,
        r.rows.len() - r.not_moved().len(),
        r.rows.len(),
        fmt_s(r.actual_total_ms.div_ceil(1000)),
        fmt_s(r.predicted_total_s),
        r.max_running
    );
}
