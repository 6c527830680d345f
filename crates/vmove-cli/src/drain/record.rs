//! The drain record: a drain or an evacuation as a job of its own (docs/drain.md "The
//! drain as a job"). Its plan as per-guest rows (guest, from, to, mode, child jobs, state,
//! time, downtime), its overall state, a cancel flag and its runner's identity; kept in the
//! cluster's state store ([`super::store`]) and checked whenever it is read
//! ([`DrainRecord::validate`]).
//!
//! State machine of the drain: `running` until its runner ends it `done` (every guest
//! moved), `incomplete` (some guest not moved), `cancelled` (a cancel was asked: no move
//! started after it; the rows say which guests moved and which stayed) or `failed` (the
//! runner could not run it, e.g. the host did not answer). An ended drain never changes.
//!
//! State machine of a row: `pending` → `running` (a move started) → `moved` | `failed` |
//! `unknown` | `stayed` (cancelled), or back to `pending` (a retry on another target, a
//! target at its limit); `pending` → `stayed` (cancelled before it started); `not_placed`
//! (no host fits). Any row not `moved` may become `moved` when the guest is found on
//! exactly one other host (a move whose runner died before it recorded the end); a `moved`
//! row never changes.
use serde::{Deserialize, Serialize};
use vmove_plan::Mode;
use vmove_store::Record;

use super::report::{Outcome, Row};

/// The most rows (guests) a drain record may hold.
pub const MAX_ROWS: usize = 10_000;
/// The most child jobs of one row (attempts, recoveries, runs after takeovers).
pub const MAX_JOBS_PER_ROW: usize = 32;
/// The longest note or error, bytes.
pub const MAX_TEXT: usize = 4096;
/// The longest downtime a row may report, ms (a day).
pub const MAX_DOWNTIME_MS: u64 = 86_400_000;
/// The longest predicted duration, seconds (ten days).
pub const MAX_PREDICTED_S: u64 = 864_000;
/// The most takeovers of one drain.
pub const MAX_TAKEOVERS: u32 = 10_000;

/// What went wrong with a drain record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrainError {
    /// A stored record that does not hold together.
    #[error("drain record {id}: {what}")]
    Invalid {
        /// The drain.
        id: String,
        /// What is wrong.
        what: String,
    },
    /// The drain has ended: it does not change any more.
    #[error("drain {id} has ended ({state})")]
    Ended {
        /// The drain.
        id: String,
        /// How it ended.
        state: DrainState,
    },
    /// No row for the guest.
    #[error("drain {id} has no guest {guest}")]
    NoRow {
        /// The drain.
        id: String,
        /// The guest.
        guest: String,
    },
    /// A row cannot go from one state to the other.
    #[error("drain {id}: {guest} cannot go from {from} to {to}")]
    Transition {
        /// The drain.
        id: String,
        /// The guest.
        guest: String,
        /// Its state.
        from: RowState,
        /// The state asked for.
        to: RowState,
    },
}

type Result<T> = std::result::Result<T, DrainError>;

/// A drain or an evacuation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainKind {
    /// `host drain`.
    Drain,
    /// `host evacuate`.
    Evacuate,
}

impl DrainKind {
    /// `drain`, `evacuate`: also the id's prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainKind::Drain => "drain",
            DrainKind::Evacuate => "evacuate",
        }
    }
}

/// The state of the whole drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainState {
    /// Its runner works on it (or died: `job watch` takes it over).
    Running,
    /// Every guest moved.
    Done,
    /// Ended with guests not moved.
    Incomplete,
    /// Ended by a cancel.
    Cancelled,
    /// The runner could not run it (see `error`).
    Failed,
}

impl DrainState {
    /// Whether the drain has ended.
    pub fn ended(self) -> bool {
        self != DrainState::Running
    }
}

impl std::fmt::Display for DrainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            DrainState::Running => "running",
            DrainState::Done => "done",
            DrainState::Incomplete => "incomplete",
            DrainState::Cancelled => "cancelled",
            DrainState::Failed => "failed",
        };
        f.write_str(s)
    }
}

/// The state of one guest's move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowState {
    /// Not started yet.
    Pending,
    /// A move runs (its job is the last of `jobs` once known).
    Running,
    /// The guest is on its new host.
    Moved,
    /// The move failed (and its retry); the guest is where it was.
    Failed,
    /// No host fits.
    NotPlaced,
    /// Where the guest is is not known for sure.
    Unknown,
    /// The drain was cancelled: the guest stays where it was.
    Stayed,
}

impl RowState {
    /// Whether the row has ended.
    pub fn ended(self) -> bool {
        !matches!(self, RowState::Pending | RowState::Running)
    }

    fn of(o: Outcome) -> RowState {
        match o {
            Outcome::Moved => RowState::Moved,
            Outcome::Failed => RowState::Failed,
            Outcome::NotPlaced => RowState::NotPlaced,
            Outcome::Unknown => RowState::Unknown,
            Outcome::Cancelled => RowState::Stayed,
        }
    }
}

impl std::fmt::Display for RowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        f.write_str(&s)
    }
}

/// One guest of the drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRow {
    /// The guest.
    pub guest: String,
    /// Its host before.
    pub from: String,
    /// Where it goes (or went, or was last tried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Migration mode.
    pub mode: Mode,
    /// Where the move is.
    pub state: RowState,
    /// Attempts made (over every runner of the drain).
    #[serde(default)]
    pub attempts: u32,
    /// Child jobs, in order (`<target>-<n>`).
    #[serde(default)]
    pub jobs: Vec<String>,
    /// The successful job's start and end on its agent, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// See `started_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// From the first attempt's start to the end, as the runner measured it, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
    /// The client-facing downtime (see the report's header), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// The plan's prediction, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_s: Option<u64>,
    /// What happened, one line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// Who runs the drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    /// Its process.
    pub pid: u32,
    /// The machine it runs on (its host name).
    pub machine: String,
    /// Since when, unix ms.
    pub since_ms: u64,
}

impl Runner {
    /// This process.
    pub fn me() -> Runner {
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default();
        Runner { pid: std::process::id(), machine: if machine.is_empty() { "unknown".into() } else { machine }, since_ms: now_ms() }
    }
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A drain or an evacuation, as kept in the store (`drains/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    /// `drain-<host>-<n>` or `evacuate-<host>-<n>`, unique in the cluster.
    pub id: String,
    /// Drain or evacuation.
    pub kind: DrainKind,
    /// The host being emptied.
    pub host: String,
    /// The mode asked for running guests (`live`, `offline`; `offline_force` to evacuate).
    pub mode: Mode,
    /// Moves at once in the cluster.
    pub parallel: u32,
    /// Moves at once out of any one host and into any one host (records written before
    /// `--per-host` existed: the default, 2).
    #[serde(default = "default_per_host")]
    pub per_host: u32,
    /// Test hook of `host drain --inject-fault`, kept for a detached runner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inject_fault: Vec<String>,
    /// Where it is.
    pub state: DrainState,
    /// A cancel was asked: no new move starts; running moves are cancelled.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who runs it (the last runner, after it ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<Runner>,
    /// How often another process took it over after its runner died.
    #[serde(default)]
    pub takeovers: u32,
    /// Created, unix ms.
    pub created_ms: u64,
    /// Last written, unix ms.
    pub updated_ms: u64,
    /// Ended, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// The plan's predicted duration, seconds (the last plan's, after a takeover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_total_s: Option<u64>,
    /// One row per guest, in plan order.
    #[serde(default)]
    pub rows: Vec<DrainRow>,
}

impl Record for DrainRecord {
    const KIND: &'static str = "drain";
    const VERSION: u32 = 1;
}

/// `drain-host1-3` for (drain, host1, 3).
pub fn drain_id(kind: DrainKind, host: &str, n: u64) -> String {
    format!("{}-{host}-{n}", kind.as_str())
}

/// The kind, host and number of a drain id; `None` if it is not one.
pub fn parse_id(id: &str) -> Option<(DrainKind, &str, u64)> {
    let (kind, rest) = if let Some(r) = id.strip_prefix("drain-") {
        (DrainKind::Drain, r)
    } else {
        (DrainKind::Evacuate, id.strip_prefix("evacuate-")?)
    };
    let (host, n) = rest.rsplit_once('-')?;
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    (valid_name(host) && n.to_string().len() == rest.len() - host.len() - 1).then_some((kind, host, n))
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn default_per_host() -> u32 {
    2
}

impl DrainRecord {
    /// A new drain, running, without rows yet.
    pub fn new(id: String, kind: DrainKind, host: &str, mode: Mode, parallel: u32) -> DrainRecord {
        let now = now_ms();
        DrainRecord {
            id,
            kind,
            host: host.to_string(),
            mode,
            parallel,
            per_host: default_per_host(),
            inject_fault: vec![],
            state: DrainState::Running,
            cancel_requested: false,
            error: None,
            runner: None,
            takeovers: 0,
            created_ms: now,
            updated_ms: now,
            ended_ms: None,
            predicted_total_s: None,
            rows: vec![],
        }
    }

    fn live(&self) -> Result<()> {
        if self.state.ended() {
            return Err(DrainError::Ended { id: self.id.clone(), state: self.state });
        }
        Ok(())
    }

    fn row_mut(&mut self, guest: &str) -> Result<&mut DrainRow> {
        let id = self.id.clone();
        self.rows.iter_mut().find(|r| r.guest == guest).ok_or(DrainError::NoRow { id, guest: guest.to_string() })
    }

    fn transition(&mut self, guest: &str, to: RowState, allowed: &[RowState]) -> Result<&mut DrainRow> {
        self.live()?;
        let id = self.id.clone();
        let row = self.row_mut(guest)?;
        if !allowed.contains(&row.state) {
            return Err(DrainError::Transition { id, guest: guest.to_string(), from: row.state, to });
        }
        row.state = to;
        Ok(row)
    }

    /// The plan's rows: a guest without a row gets one; a row that has not moved is
    /// planned again (a takeover plans what is left); a moved row stays.
    pub fn set_plan(&mut self, rows: Vec<DrainRow>, predicted_total_s: u64) -> Result<()> {
        self.live()?;
        for new in rows {
            match self.rows.iter_mut().find(|r| r.guest == new.guest) {
                Some(r) if r.state == RowState::Moved => {}
                Some(r) => {
                    let jobs = std::mem::take(&mut r.jobs);
                    let attempts = r.attempts;
                    *r = DrainRow { jobs, attempts, ..new };
                }
                None => self.rows.push(new),
            }
        }
        self.predicted_total_s = Some(predicted_total_s);
        Ok(())
    }

    /// A move of `guest` to `to` starts.
    pub fn move_started(&mut self, guest: &str, to: &str) -> Result<()> {
        let row = self.transition(guest, RowState::Running, &[RowState::Pending])?;
        row.to = Some(to.to_string());
        Ok(())
    }

    /// A child job of `guest`'s running move is known; `false` if it was already.
    pub fn job_seen(&mut self, guest: &str, job: &str) -> Result<bool> {
        self.live()?;
        let id = self.id.clone();
        let row = self.row_mut(guest)?;
        if row.jobs.iter().any(|j| j == job) {
            return Ok(false);
        }
        if row.state != RowState::Running {
            return Err(DrainError::Transition { id, guest: guest.to_string(), from: row.state, to: RowState::Running });
        }
        if row.jobs.len() >= MAX_JOBS_PER_ROW {
            return Err(DrainError::Invalid { id, what: format!("{guest}: more than {MAX_JOBS_PER_ROW} jobs") });
        }
        row.jobs.push(job.to_string());
        Ok(true)
    }

    /// `guest`'s move goes back to waiting (a retry on another target, a target at its
    /// limit).
    pub fn move_back(&mut self, guest: &str, to: &str, note: &str) -> Result<()> {
        let row = self.transition(guest, RowState::Pending, &[RowState::Running])?;
        row.to = Some(to.to_string());
        row.note = note.to_string();
        Ok(())
    }

    /// `guest`'s move ended as the runner's row says.
    pub fn move_ended(&mut self, r: &Row) -> Result<()> {
        let to = RowState::of(r.outcome);
        let from: &[RowState] = match to {
            RowState::Stayed => &[RowState::Running, RowState::Pending],
            _ => &[RowState::Running],
        };
        let row = self.transition(&r.guest, to, from)?;
        for j in &r.jobs {
            if !row.jobs.contains(j) && row.jobs.len() < MAX_JOBS_PER_ROW {
                row.jobs.push(j.clone());
            }
        }
        row.to = r.to.clone().or(row.to.take());
        let cap = u32::try_from(MAX_JOBS_PER_ROW).unwrap_or(u32::MAX);
        row.attempts = row.attempts.saturating_add(u32::from(r.attempts)).min(cap);
        row.started_ms = r.started_ms;
        row.ended_ms = r.ended_ms;
        row.elapsed_ms = r.elapsed_ms;
        row.downtime_ms = r.downtime_ms.filter(|d| *d <= MAX_DOWNTIME_MS);
        row.note = r.note.chars().take(MAX_TEXT / 4).collect();
        Ok(())
    }

    /// `guest` was found on `to` alone: it moved (while no runner recorded it);
    /// `downtime_ms` from its job, if known.
    /// `jobs`: its jobs the runner had not recorded (found in the cluster's job list).
    pub fn found_moved(&mut self, guest: &str, to: &str, jobs: &[String], downtime_ms: Option<u64>, note: &str) -> Result<()> {
        let all = [RowState::Pending, RowState::Running, RowState::Failed, RowState::Unknown, RowState::Stayed, RowState::NotPlaced];
        let row = self.transition(guest, RowState::Moved, &all)?;
        row.to = Some(to.to_string());
        row.downtime_ms = downtime_ms.filter(|d| *d <= MAX_DOWNTIME_MS).or(row.downtime_ms);
        for j in jobs {
            if !row.jobs.contains(j) && row.jobs.len() < MAX_JOBS_PER_ROW {
                row.jobs.push(j.clone());
            }
        }
        row.note = note.to_string();
        Ok(())
    }

    /// A running move whose end is not known (no host has the guest alone).
    pub fn lost(&mut self, guest: &str, note: &str) -> Result<()> {
        let row = self.transition(guest, RowState::Unknown, &[RowState::Running])?;
        row.note = note.to_string();
        Ok(())
    }

    /// Asks for the cancel; `false` if it was asked already.
    pub fn request_cancel(&mut self) -> Result<bool> {
        self.live()?;
        Ok(!std::mem::replace(&mut self.cancel_requested, true))
    }

    /// Ends the drain: `cancelled` if a cancel was asked (rows not started: `stayed`),
    /// else `done` or `incomplete`. Refused while a move runs.
    pub fn finish(&mut self) -> Result<DrainState> {
        self.live()?;
        if let Some(r) = self.rows.iter().find(|r| r.state == RowState::Running) {
            return Err(DrainError::Transition { id: self.id.clone(), guest: r.guest.clone(), from: r.state, to: RowState::Moved });
        }
        for r in self.rows.iter_mut().filter(|r| r.state == RowState::Pending) {
            r.state = if self.cancel_requested { RowState::Stayed } else { RowState::Failed };
            if r.note.is_empty() {
                r.note = if self.cancel_requested { "cancelled before it started".into() } else { "never started".into() };
            }
        }
        self.state = if self.cancel_requested {
            DrainState::Cancelled
        } else if self.rows.iter().all(|r| r.state == RowState::Moved) {
            DrainState::Done
        } else {
            DrainState::Incomplete
        };
        self.ended_ms = Some(now_ms().max(self.created_ms));
        Ok(self.state)
    }

    /// Ends the drain `failed`: its runner could not run it. Rows not ended are `unknown`
    /// if a move ran, else `failed`.
    pub fn fail(&mut self, error: &str) -> Result<()> {
        self.live()?;
        for r in self.rows.iter_mut().filter(|r| !r.state.ended()) {
            r.state = if r.state == RowState::Running { RowState::Unknown } else { RowState::Failed };
        }
        self.error = Some(error.chars().take(MAX_TEXT / 4).collect());
        self.state = DrainState::Failed;
        self.ended_ms = Some(now_ms().max(self.created_ms));
        Ok(())
    }

    /// Guests moved, in row order.
    pub fn moved(&self) -> Vec<&str> {
        self.rows.iter().filter(|r| r.state == RowState::Moved).map(|r| r.guest.as_str()).collect()
    }

    /// Guests not moved, in row order.
    pub fn not_moved(&self) -> Vec<&str> {
        self.rows.iter().filter(|r| r.state != RowState::Moved).map(|r| r.guest.as_str()).collect()
    }

    /// The child jobs of running moves (the last job of each), by guest.
    pub fn running_jobs(&self) -> Vec<(&str, &str)> {
        self.rows.iter().filter(|r| r.state == RowState::Running).filter_map(|r| r.jobs.last().map(|j| (r.guest.as_str(), j.as_str()))).collect()
    }
}

/// A planned row (`pending`), or a `not_placed` one.
pub fn planned_row(guest: &str, from: &str, to: Option<&str>, mode: Mode, predicted_s: Option<u64>, note: &str) -> DrainRow {
    DrainRow {
        guest: guest.to_string(),
        from: from.to_string(),
        to: to.map(str::to_string),
        mode,
        state: if to.is_some() { RowState::Pending } else { RowState::NotPlaced },
        attempts: 0,
        jobs: vec![],
        started_ms: None,
        ended_ms: None,
        elapsed_ms: None,
        downtime_ms: None,
        predicted_s: predicted_s.filter(|p| *p <= MAX_PREDICTED_S),
        note: note.chars().take(MAX_TEXT / 4).collect(),
    }
}
