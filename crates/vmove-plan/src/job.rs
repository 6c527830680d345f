//! The job state machine: one type, [`JobMachine`], and one transition function,
//! [`JobMachine::on`], own how every job starts, runs its steps, pauses, is cancelled,
//! times out, rolls back and recovers. The agent's runner only executes what
//! [`JobMachine::action`] asks for and reports back what happened.
//!
//! ```text
//!            SourceAnswered                StepSucceeded (more steps)
//!  Starting ───────────────▶ Running(s1) ─────────────────────────────▶ Running(s2) ─▶ … ─▶ Ended(Succeeded)
//!     │ SourceFailed            │  ▲ Resumed                  │ StepFailed / Cancel
//!     ▼                         ▼  │                          ▼
//!  Ended(Failed)             Paused(s)                 LIVE before the switchover:
//!                         (test hook)                  Undoing(s) … Undoing(first) ─▶ Ended(Cancelled|Failed)
//!                                                      otherwise: Ended(Failed|Cancelled), `job recover`
//! ```
//!
//! Rules:
//! - LIVE: until MIGRATE_GUEST has completed (the switchover) the guest runs on the source,
//!   so a failure, a cancel or a timeout rolls the target back at once: the failed step and
//!   the completed ones are undone in reverse order, and the migration is over.
//! - OFFLINE and OFFLINEFORCE: a failed step stops the job; `--step` resumes it or
//!   `job recover` decides. A cancel stops before the next step.
//! - After MIGRATE_GUEST has completed (the point of no return), a cancel is ignored.
//! - A recovery goes forward (the remaining steps) or back (every completed step undone,
//!   MIGRATE_GUEST included, in reverse order).
//! - A state write that fails stops the job where it is (fail-stop); it stays recoverable.
use serde::{Deserialize, Serialize};

use crate::{Mode, Step};

/// Where a guest's migration to the target stands, across the jobs that work on it
/// (whole runs, single `--step` runs, recoveries). Persisted by the target agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRecord {
    /// Guest.
    pub guest: String,
    /// Mode.
    pub mode: Mode,
    /// Source host.
    pub source: String,
    /// Source agent address.
    #[serde(default)]
    pub source_address: String,
    /// Steps completed so far, in the order they completed.
    pub completed: Vec<Step>,
    /// The step that was started and has not completed (saved before it runs): it may
    /// have done part of its work, so recovery redoes or undoes it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<Step>,
    /// Whether the guest ran before the migration (it runs again after, or stays stopped).
    pub was_running: Option<bool>,
    /// Finished: every step done, or rolled back.
    pub finished: bool,
    /// Rolled back.
    #[serde(default)]
    pub rolled_back: bool,
}

impl MigrationRecord {
    /// A new, empty record.
    pub fn new(guest: &str, mode: Mode, source: &str, source_address: &str) -> MigrationRecord {
        MigrationRecord {
            guest: guest.into(),
            mode,
            source: source.into(),
            source_address: source_address.into(),
            completed: vec![],
            in_progress: None,
            was_running: None,
            finished: false,
            rolled_back: false,
        }
    }

    /// Whether the guest already moved (MIGRATE_GUEST completed).
    pub fn switched_over(&self) -> bool {
        self.completed.contains(&Step::MigrateGuest)
    }
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A migration (the whole plan, or one `--step`).
    Migrate,
    /// A recovery that finishes the migration.
    RecoverForward,
    /// A recovery that rolls the migration back to the source.
    RecoverBack,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndStatus {
    /// Every step done.
    Succeeded,
    /// A step (or a state write) failed.
    Failed,
    /// Cancelled by the operator or by the timeout.
    Cancelled,
}

/// Why a step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailKind {
    /// An error.
    Error,
    /// The operator cancelled it.
    Cancelled,
    /// It ran out of time.
    TimedOut,
    /// It failed past its point of no return (a post-copy migration): nothing to roll back.
    PastNoReturn,
}

/// Which of the two hosts a guest lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The migration's source.
    Source,
    /// The migration's target.
    Target,
}

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum JobPhase {
    /// Asking the source whether the guest runs (and claiming it there).
    Starting,
    /// Held before a step by a test hook.
    Paused {
        /// The step.
        step: Step,
    },
    /// Running a step.
    Running {
        /// The step.
        step: Step,
    },
    /// Undoing a step.
    Undoing {
        /// The step.
        step: Step,
    },
    /// Ended.
    Ended {
        /// How.
        status: EndStatus,
        /// Why it did not succeed.
        reason: Option<String>,
    },
}

/// What happened, reported by the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The source answered: the guest runs there (or not).
    SourceAnswered {
        /// Whether it runs.
        was_running: bool,
    },
    /// The source refused or is needed and did not answer: nothing was done.
    SourceFailed {
        /// Why.
        error: String,
    },
    /// The operator asked to cancel.
    CancelRequested,
    /// A paused job may go on.
    Resumed,
    /// The running step completed.
    StepSucceeded,
    /// The running step failed.
    StepFailed {
        /// Why.
        error: String,
        /// How.
        kind: FailKind,
    },
    /// The step being undone is undone.
    UndoSucceeded,
    /// Undoing failed.
    UndoFailed {
        /// Why.
        error: String,
    },
    /// The job's state could not be saved.
    StateWriteFailed {
        /// Why.
        error: String,
    },
}

/// What the runner must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask the source about the guest (and claim it).
    CheckSource,
    /// Run a step.
    Run(Step),
    /// Wait until resumed or cancelled.
    WaitResume(Step),
    /// Undo a step.
    Undo(Step),
    /// Nothing: the job has ended.
    Done,
}

/// Something the operator should see, produced by a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A step completed by an earlier job was skipped.
    AlreadyDone(Step),
    /// Held before a step by a test hook.
    Paused(Step),
    /// A cancel arrived after the point of no return.
    CancelIgnored,
    /// A rollback begins.
    RollingBack(String),
}

/// Why a transition was refused (a runner bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job state machine: {input} is not expected in phase {phase}")]
pub struct TransitionError {
    /// The phase.
    pub phase: String,
    /// The input.
    pub input: String,
}

/// One job's state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMachine {
    id: String,
    direction: Direction,
    /// Steps of this job, in the order they run (or are undone, going back).
    steps: Vec<Step>,
    /// Index of the current step in `steps`.
    at: usize,
    /// LIVE rollback: steps still to undo after the current one.
    undo_queue: Vec<Step>,
    /// How the job ends once the rollback is through.
    rollback_end: Option<(EndStatus, String)>,
    pause_before: Option<Step>,
    paused_once: bool,
    cancel_requested: bool,
    record: MigrationRecord,
    phase: JobPhase,
    guest_side: Option<Side>,
    /// Notes from entering the first step (taken by [`JobMachine::take_start_notes`]).
    start_notes: Vec<Note>,
}

impl JobMachine {
    /// A migration job running `steps` (the plan of the record's mode, or one step).
    pub fn migrate(id: &str, record: MigrationRecord, steps: Vec<Step>, pause_before: Option<Step>) -> JobMachine {
        let mut m = JobMachine::new(id, Direction::Migrate, record, steps, pause_before);
        if m.record.was_running.is_none() {
            m.phase = JobPhase::Starting;
        } else {
            let mut notes = vec![];
            m.enter_step(&mut notes);
            m.start_notes = notes;
        }
        m
    }

    /// A recovery: forward runs the steps not yet completed, back undoes the completed
    /// ones (and MIGRATE_GUEST) in reverse order.
    pub fn recover(id: &str, record: MigrationRecord, forward: bool) -> JobMachine {
        let plan = Step::plan(record.mode);
        let (direction, steps): (Direction, Vec<Step>) = if forward {
            (Direction::RecoverForward, plan.iter().copied().filter(|s| !record.completed.contains(s)).collect())
        } else {
            let mut v: Vec<Step> = plan
                .iter()
                .copied()
                .filter(|s| record.completed.contains(s) || *s == Step::MigrateGuest || record.in_progress == Some(*s))
                .collect();
            v.reverse();
            (Direction::RecoverBack, v)
        };
        let mut m = JobMachine::new(id, direction, record, steps, None);
        let mut notes = vec![];
        m.enter_step(&mut notes);
        m.start_notes = notes;
        m
    }

    fn new(id: &str, direction: Direction, record: MigrationRecord, steps: Vec<Step>, pause_before: Option<Step>) -> JobMachine {
        JobMachine {
            id: id.into(),
            direction,
            steps,
            at: 0,
            undo_queue: vec![],
            rollback_end: None,
            pause_before,
            paused_once: false,
            cancel_requested: false,
            record,
            phase: JobPhase::Starting,
            guest_side: None,
            start_notes: vec![],
        }
    }

    /// What entering the first step noted (a skipped step, a pause); the runner shows
    /// these before anything else.
    pub fn take_start_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.start_notes)
    }

    /// The current phase.
    pub fn phase(&self) -> &JobPhase {
        &self.phase
    }

    /// The migration record as it now stands (save it after every transition).
    pub fn record(&self) -> &MigrationRecord {
        &self.record
    }

    /// The steps of this job.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Which way the job goes.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Where the guest lives after this job, once that is known (the target after the
    /// switchover, the source after a complete rollback).
    pub fn guest_side(&self) -> Option<Side> {
        self.guest_side
    }

    /// Whether a cancel was requested.
    pub fn cancel_requested(&self) -> bool {
        self.cancel_requested
    }

    /// What the runner must do now.
    pub fn action(&self) -> Action {
        match &self.phase {
            JobPhase::Starting => Action::CheckSource,
            JobPhase::Paused { step } => Action::WaitResume(*step),
            JobPhase::Running { step } => Action::Run(*step),
            JobPhase::Undoing { step } => Action::Undo(*step),
            JobPhase::Ended { .. } => Action::Done,
        }
    }

    /// The one transition function.
    pub fn on(&mut self, input: Input) -> Result<Vec<Note>, TransitionError> {
        let mut notes = vec![];
        match (self.phase.clone(), input) {
            (JobPhase::Ended { .. }, Input::CancelRequested) => {}
            (JobPhase::Ended { .. }, i) => return Err(self.refuse(&i)),
            (_, Input::StateWriteFailed { error }) => {
                let at = match self.action() {
                    Action::Run(s) | Action::Undo(s) | Action::WaitResume(s) => format!(" at {s}"),
                    _ => String::new(),
                };
                self.end(
                    EndStatus::Failed,
                    format!("cannot save the job's state ({error}): stopped{at}; run `vmove job recover {}` once the agent can write its state", self.id),
                );
            }
            (JobPhase::Starting, Input::SourceAnswered { was_running }) => {
                self.record.was_running = Some(was_running);
                self.enter_step(&mut notes);
            }
            (JobPhase::Starting, Input::SourceFailed { error }) => {
                // Nothing was done: this migration is over (a new one may start).
                if self.record.completed.is_empty() {
                    self.record.finished = true;
                    self.record.rolled_back = true;
                }
                self.end(EndStatus::Failed, error);
            }
            (JobPhase::Starting, Input::CancelRequested) => {
                if self.record.completed.is_empty() {
                    self.record.finished = true;
                    self.record.rolled_back = true;
                }
                self.end(EndStatus::Cancelled, "cancelled before the first step; nothing was done".into());
            }
            (JobPhase::Running { step }, Input::CancelRequested) | (JobPhase::Undoing { step }, Input::CancelRequested) => {
                // The step itself sees the cancel (the memory phase polls it); the machine
                // acts on it before the next step.
                self.cancel_requested = true;
                if self.past_no_return() && self.direction == Direction::Migrate {
                    notes.push(Note::CancelIgnored);
                }
                let _ = step;
            }
            (JobPhase::Paused { step }, Input::CancelRequested) => {
                self.cancel_requested = true;
                self.cancel_before(step, &mut notes);
            }
            (JobPhase::Paused { step }, Input::Resumed) => self.run(step),
            (JobPhase::Running { step }, Input::StepSucceeded) => {
                self.record.completed.retain(|s| *s != step);
                self.record.completed.push(step);
                self.record.in_progress = None;
                if step == Step::MigrateGuest {
                    self.guest_side = Some(Side::Target);
                }
                self.at += 1;
                self.enter_step(&mut notes);
            }
            (JobPhase::Running { step }, Input::StepFailed { error, kind }) => self.step_failed(step, error, kind, &mut notes),
            (JobPhase::Undoing { step }, Input::UndoSucceeded) => {
                self.record.completed.retain(|s| *s != step);
                if self.record.in_progress == Some(step) {
                    self.record.in_progress = None;
                }
                self.next_undo(&mut notes);
            }
            (JobPhase::Undoing { step }, Input::UndoFailed { error }) => {
                let what = if self.direction == Direction::RecoverBack { "recovery step" } else { "rollback of" };
                self.end(
                    EndStatus::Failed,
                    format!("{what} {step} failed: {error}; run `vmove job recover {}` when the cause is fixed", self.id),
                );
            }
            (_, i) => return Err(self.refuse(&i)),
        }
        Ok(notes)
    }

    fn refuse(&self, i: &Input) -> TransitionError {
        TransitionError { phase: format!("{:?}", self.phase), input: format!("{i:?}") }
    }

    fn past_no_return(&self) -> bool {
        self.record.switched_over()
    }

    fn end(&mut self, status: EndStatus, reason: String) {
        self.phase = JobPhase::Ended { status, reason: (status != EndStatus::Succeeded).then_some(reason) };
    }

    fn succeed(&mut self) {
        match self.direction {
            Direction::Migrate => {
                if Step::plan(self.record.mode).iter().all(|s| self.record.completed.contains(s)) {
                    self.record.finished = true;
                }
            }
            Direction::RecoverForward => self.record.finished = true,
            Direction::RecoverBack => {
                self.record.finished = true;
                self.record.rolled_back = true;
                self.record.completed.clear();
                self.record.in_progress = None;
                self.guest_side = Some(Side::Source);
            }
        }
        self.phase = JobPhase::Ended { status: EndStatus::Succeeded, reason: None };
    }

    /// Enters `steps[at]`: a cancel, a completed step or a pause hook are resolved here.
    fn enter_step(&mut self, notes: &mut Vec<Note>) {
        loop {
            let Some(&step) = self.steps.get(self.at) else {
                self.succeed();
                return;
            };
            if self.direction == Direction::RecoverBack {
                self.phase = JobPhase::Undoing { step };
                return;
            }
            if self.cancel_requested && (self.direction != Direction::Migrate || !self.past_no_return()) {
                self.cancel_before(step, notes);
                return;
            }
            if self.direction == Direction::Migrate && self.record.completed.contains(&step) {
                notes.push(Note::AlreadyDone(step));
                self.at += 1;
                continue;
            }
            if self.pause_before == Some(step) && !self.paused_once {
                self.paused_once = true;
                notes.push(Note::Paused(step));
                self.phase = JobPhase::Paused { step };
                return;
            }
            self.run(step);
            return;
        }
    }

    /// Enters `Running(step)`, recording it as in progress (saved before it runs).
    fn run(&mut self, step: Step) {
        self.record.in_progress = Some(step);
        self.phase = JobPhase::Running { step };
    }

    /// A cancel that takes effect before `step` runs.
    fn cancel_before(&mut self, step: Step, notes: &mut Vec<Note>) {
        if self.direction == Direction::Migrate && self.past_no_return() {
            notes.push(Note::CancelIgnored);
            self.run(step);
            return;
        }
        if self.rolls_back_by_itself() {
            self.start_rollback(None, EndStatus::Cancelled, format!("cancelled before {step}"), notes);
            return;
        }
        let why = match self.direction {
            Direction::Migrate => format!("cancelled before {step}; run `vmove job recover {}` to roll back", self.id),
            _ => format!("recovery cancelled before {step}; run `vmove job recover {}` again", self.id),
        };
        self.end(EndStatus::Cancelled, why);
    }

    /// LIVE migrations roll the target back by themselves until the switchover.
    fn rolls_back_by_itself(&self) -> bool {
        self.direction == Direction::Migrate && self.record.mode == Mode::Live && !self.past_no_return()
    }

    fn step_failed(&mut self, step: Step, error: String, kind: FailKind, notes: &mut Vec<Note>) {
        if kind == FailKind::PastNoReturn {
            self.end(
                EndStatus::Failed,
                format!("{step} failed past its point of no return (post-copy): {error}; see `vmove job show {}`", self.id),
            );
            return;
        }
        if self.rolls_back_by_itself() {
            let status = if kind == FailKind::Error && !self.cancel_requested { EndStatus::Failed } else { EndStatus::Cancelled };
            self.start_rollback(Some(step), status, format!("{step}: {error}"), notes);
            return;
        }
        let why = match self.direction {
            Direction::Migrate => format!(
                "{step} failed: {error}; resume with --step {step} or run `vmove job recover {}`",
                self.id
            ),
            _ => format!("recovery step {step} failed: {error}"),
        };
        let status = if kind == FailKind::Cancelled { EndStatus::Cancelled } else { EndStatus::Failed };
        self.end(status, why);
    }

    /// Undoes `failed` (whose own partial work may need undoing) and every completed step,
    /// newest first.
    fn start_rollback(&mut self, failed: Option<Step>, status: EndStatus, why: String, notes: &mut Vec<Note>) {
        let mut queue: Vec<Step> = self.record.completed.clone();
        if let Some(f) = failed {
            queue.retain(|s| *s != f);
            queue.push(f);
        }
        // Undo in reverse plan order.
        let plan = Step::plan(self.record.mode);
        queue.sort_by_key(|s| std::cmp::Reverse(plan.iter().position(|p| p == s)));
        notes.push(Note::RollingBack(why.clone()));
        self.rollback_end = Some((status, why));
        self.undo_queue = queue;
        self.next_undo(notes);
    }

    fn next_undo(&mut self, _notes: &mut [Note]) {
        if self.direction == Direction::RecoverBack {
            self.at += 1;
            match self.steps.get(self.at) {
                Some(&step) => self.phase = JobPhase::Undoing { step },
                None => self.succeed(),
            }
            return;
        }
        if self.undo_queue.is_empty() {
            let (status, why) = self.rollback_end.take().unwrap_or((EndStatus::Failed, String::from("rolled back")));
            self.record.completed.clear();
            self.record.in_progress = None;
            self.record.finished = true;
            self.record.rolled_back = true;
            self.guest_side = Some(Side::Source);
            self.end(status, format!("{why}; the target was cleaned up, the guest stays on the source"));
            return;
        }
        let step = self.undo_queue.remove(0);
        self.phase = JobPhase::Undoing { step };
    }
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;
