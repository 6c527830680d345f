//! Jobs: a migration (or its recovery) run by the target host's agent, step by step, with
//! an event stream the CLI follows.
use serde::{Deserialize, Serialize};
use vmove_model::GuestSpec;
pub use vmove_plan::MigrationParams;
use vmove_plan::{Mode, Step};

/// What the target decided for the source's side of a live migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSetup {
    /// Migration capabilities to set, QEMU's names.
    pub capabilities: Vec<(String, bool)>,
    /// multifd channels (0: one stream).
    pub multifd_channels: u8,
    /// First downtime limit, ms.
    pub downtime_limit_ms: u64,
    /// The parked throttle (auto-converge at its floor until the ladder unparks it).
    #[serde(default)]
    pub throttle: vmove_plan::converge::ThrottleParams,
}

/// Another host, as the cluster file names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHost {
    /// Host name.
    pub name: String,
    /// Agent address, `IP:PORT`.
    pub address: String,
}

/// What the operator asks the target agent to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The guest's definition from the cluster file.
    pub guest: GuestSpec,
    /// Migration mode.
    pub mode: Mode,
    /// Where the guest is now.
    pub source: PeerHost,
    /// The target (the agent that runs the job).
    pub target: String,
    /// Run exactly this step instead of the whole plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    /// Parameters.
    pub params: MigrationParams,
    /// Test hook: fail this step on purpose (honoured only by agents that allow it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject_fault: Option<Step>,
    /// Test hook: wait before this step until `job_resume` (agents that allow fault injection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_before: Option<Step>,
    /// Test hook: hold a live migration at switchover (QEMU pause-before-switchover) until
    /// `job_resume`.
    #[serde(default)]
    pub pause_at_switchover: bool,
    /// Refuse the job with `at_limit` when the target already runs this many migrations in
    /// (drains and evacuations pass their per-host inbound limit; `None`: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_incoming: Option<u32>,
    /// What the prechecks measured: the guest's dirty rate, bytes/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_rate_bytes_per_s: Option<u64>,
    /// What the prechecks measured: the migration link, bytes/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_bytes_per_s: Option<u64>,
    /// LIVE: who decides the `predicted-convergence` precheck.
    #[serde(default, skip_serializing_if = "ConvergenceCheck::is_decided")]
    pub convergence_check: ConvergenceCheck,
}

/// Who decides a live move's `predicted-convergence` precheck. `vmove migrate` leaves it to
/// the job: the source samples the guest's dirty rate while the target's QEMU starts, so
/// the 300 ms sample costs the move nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvergenceCheck {
    /// The operator's prechecks decided it (or nobody asked).
    #[default]
    Decided,
    /// The job measures and decides: a failure fails the move before the memory
    /// migration starts, and the guest stays on the source.
    InJob,
    /// The job measures and decides, and the operator ignores a failure
    /// (`--ignore-check predicted-convergence`): it is reported as a warning.
    InJobIgnored,
}

impl ConvergenceCheck {
    /// Decided before the job.
    pub fn is_decided(&self) -> bool {
        *self == ConvergenceCheck::Decided
    }
}

/// What kind of job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    /// A migration (whole plan or one step).
    Migrate,
    /// Recovery of a failed migration job.
    Recover {
        /// The failed job.
        of: String,
    },
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Running.
    Running,
    /// Finished successfully.
    Succeeded,
    /// A step failed; see the error.
    Failed,
    /// Cancelled (by the operator or the timeout) before it could finish.
    Cancelled,
}

impl JobStatus {
    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        self != JobStatus::Running
    }
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Running.
    Running,
    /// Completed.
    Done,
    /// Completed earlier (a no-op now).
    AlreadyDone,
    /// Failed.
    Failed,
}

/// One step of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step.
    pub step: Step,
    /// Its status.
    pub status: StepStatus,
    /// Start, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// End, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// What happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Live migration progress, from the source QEMU's `query-migrate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// QEMU's migration status (`active`, `device`, `completed`, ...).
    pub status: String,
    /// Memory pass (dirty sync count).
    pub pass: u64,
    /// Bytes sent so far.
    pub transferred_bytes: u64,
    /// RAM bytes still to send.
    pub remaining_bytes: u64,
    /// Guest RAM, bytes.
    pub total_bytes: u64,
    /// Current rate, bytes/s.
    pub rate_bytes_per_s: u64,
    /// Guest dirty rate, bytes/s.
    pub dirty_rate_bytes_per_s: u64,
    /// QEMU's expected downtime, ms.
    pub expected_downtime_ms: u64,
    /// Estimated time to completion, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<u64>,
    /// Time since the migration started, ms.
    pub elapsed_ms: u64,
    /// The convergence ladder's current rung (`rung 2/7: downtime limit 100 ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rung: Option<String>,
    /// QEMU's CPU throttle, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_pct: Option<u64>,
}

impl Progress {
    /// The status of a COPY_VOLUMES progress event (the bytes are the local disks').
    pub const COPYING_VOLUMES: &'static str = "copying-volumes";

    /// Whether this is the progress of COPY_VOLUMES rather than of the memory.
    pub fn is_volume_copy(&self) -> bool {
        self.status == Self::COPYING_VOLUMES
    }
}

/// End-of-migration figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Whole job, ms.
    pub total_ms: u64,
    /// Memory migration (QEMU `total-time`), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_ms: Option<u64>,
    /// Downtime, QEMU's figure, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Bytes sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred_bytes: Option<u64>,
    /// Memory passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passes: Option<u64>,
    /// Bytes of local volumes copied (COPY_VOLUMES).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// How long the copy of the local volumes took until every mirror was in sync (LIVE)
    /// or the copy was complete (OFFLINE), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_copy_ms: Option<u64>,
    /// What the model predicted for QEMU's memory phase when the move began (the target's
    /// own prediction, with the dirty rate it sampled), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_memory_ms: Option<u64>,
}

/// Something that happened in a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The job started.
    JobStarted {
        /// One-line description in oedacli's words.
        action: String,
    },
    /// A step started.
    StepStarted {
        /// Step.
        step: Step,
    },
    /// A step ended well.
    StepDone {
        /// Step.
        step: Step,
        /// How long it took, ms.
        elapsed_ms: u64,
        /// What it did.
        note: String,
    },
    /// A step failed.
    StepFailed {
        /// Step.
        step: Step,
        /// Why.
        error: String,
    },
    /// Live migration progress.
    Progress(Progress),
    /// The convergence ladder climbed a rung (or gave up): what it did, why, and the figures.
    Escalation {
        /// What was done, one line with the reason.
        action: String,
        /// The rung now in force.
        rung: String,
        /// The figures that decided.
        figures: vmove_plan::converge::Figures,
    },
    /// A message for the operator.
    Info {
        /// Text.
        message: String,
    },
    /// The job ended.
    JobEnded {
        /// Final status.
        status: JobStatus,
        /// Why it did not succeed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Figures.
        summary: Summary,
    },
}

impl EventKind {
    /// The line of an escalation of a live migration's convergence ladder (what was done
    /// and why), if this is one. `vmoved`'s metrics
    /// count them and `vmove job plot` marks them.
    pub fn escalation(&self) -> Option<&str> {
        match self {
            EventKind::Escalation { action, .. } => Some(action),
            _ => None,
        }
    }
}

/// An event with its sequence number and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// 0, 1, 2, ... within the job.
    pub seq: u64,
    /// Unix time, ms.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// A job, as the target agent keeps it (durably, rewritten at every change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Format version.
    pub version: u32,
    /// Job id, `<target>-<n>`.
    pub id: String,
    /// Kind.
    pub kind: JobKind,
    /// The request.
    pub spec: JobSpec,
    /// Status.
    pub status: JobStatus,
    /// Steps this job runs, in order.
    pub steps: Vec<StepRecord>,
    /// Created, unix ms.
    pub created_ms: u64,
    /// Ended, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Events so far.
    pub events: Vec<JobEvent>,
    /// Where the guest is defined after this job, once that is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_host: Option<String>,
    /// A live move's outage in parts. Completed in the background just after the
    /// switchover (it waits briefly for the guest's first frame on the target), so it may
    /// appear a moment after the job ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage: Option<crate::Outage>,
}

/// Sequence number of heartbeat events (sent on idle streams, never stored).
pub const HEARTBEAT_SEQ: u64 = u64::MAX;

impl JobRecord {
    /// Whether MIGRATE_GUEST has completed (the guest's definition is on the target).
    pub fn guest_moved(&self) -> bool {
        self.steps.iter().any(|s| s.step == Step::MigrateGuest && matches!(s.status, StepStatus::Done | StepStatus::AlreadyDone))
    }

    /// The one-line description, in oedacli's words.
    pub fn action(&self) -> String {
        let s = &self.spec;
        let mut a = format!(
            "MIGRATE GUEST HOSTNAME={} MODE={} SRCHOST={} TGTHOST={}",
            s.guest.name,
            s.mode.as_str(),
            s.source.name,
            s.target
        );
        if let Some(step) = s.step {
            a.push_str(&format!(" WHERE STEPNAME={}", step.name()));
        }
        a
    }
}

/// A line of a job list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobBrief {
    /// Job id.
    pub id: String,
    /// Kind.
    pub kind: JobKind,
    /// Guest.
    pub guest: String,
    /// Mode.
    pub mode: Mode,
    /// Source host.
    pub source: String,
    /// Target host.
    pub target: String,
    /// Status.
    pub status: JobStatus,
    /// The step running or failed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<Step>,
    /// Created, unix ms.
    pub created_ms: u64,
}

impl From<&JobRecord> for JobBrief {
    fn from(r: &JobRecord) -> Self {
        JobBrief {
            id: r.id.clone(),
            kind: r.kind.clone(),
            guest: r.spec.guest.name.clone(),
            mode: r.spec.mode,
            source: r.spec.source.name.clone(),
            target: r.spec.target.clone(),
            status: r.status,
            current_step: r
                .steps
                .iter()
                .find(|s| matches!(s.status, StepStatus::Running | StepStatus::Failed))
                .map(|s| s.step),
            created_ms: r.created_ms,
        }
    }
}

/// A line of a streaming reply (`job_watch`): an event, or the final reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StreamLine {
    /// A job event.
    Event {
        /// The event.
        job_event: JobEvent,
    },
    /// The final reply.
    Reply(crate::Reply),
}

/// vmove's own time around the memory phase of the last live moves among `records` (the
/// job's total less QEMU's `total-time` and any local-volume copy), median of the last
/// [`vmove_model::inventory::LIVE_STEPS_MOVES`] whole-plan live moves that succeeded
/// without a test hook holding them; ms. What [`vmove_model::inventory::HostInfo::live_steps_ms`]
/// reports.
pub fn live_steps_ms<'a>(records: impl IntoIterator<Item = &'a JobRecord>) -> Option<u64> {
    median_of_last(records.into_iter().filter_map(live_steps_of).collect())
}

/// One record's part of [`live_steps_ms`]: when it was created and vmove's own time, ms.
pub fn live_steps_of(r: &JobRecord) -> Option<(u64, u64)> {
    let counts = r.kind == JobKind::Migrate
        && r.status == JobStatus::Succeeded
        && r.spec.mode == Mode::Live
        && r.spec.step.is_none()
        && r.spec.pause_before.is_none()
        && !r.spec.pause_at_switchover;
    if !counts {
        return None;
    }
    let s = ended_summary(r)?;
    let own = s.total_ms.checked_sub(s.migration_ms?)?.checked_sub(s.disk_copy_ms.unwrap_or(0))?;
    Some((r.created_ms, own))
}

/// QEMU's memory phase against the model's prediction for it, percent, median of the last
/// [`vmove_model::inventory::LIVE_STEPS_MOVES`] live moves among `records` that count for
/// [`live_steps_ms`] and carry a prediction. What
/// [`vmove_model::inventory::HostInfo::memory_model_pct`] reports.
pub fn memory_model_pct<'a>(records: impl IntoIterator<Item = &'a JobRecord>) -> Option<u32> {
    median_of_last(records.into_iter().filter_map(memory_model_of).collect()).and_then(|p| u32::try_from(p).ok())
}

/// One record's part of [`memory_model_pct`]: when it was created and measured ÷ predicted, %.
pub fn memory_model_of(r: &JobRecord) -> Option<(u64, u64)> {
    live_steps_of(r)?;
    let s = ended_summary(r)?;
    let predicted = s.predicted_memory_ms.filter(|&p| p > 0)?;
    let pct = u128::from(s.migration_ms?).checked_mul(100)?.checked_div(u128::from(predicted))?;
    Some((r.created_ms, u64::try_from(pct).ok()?))
}

fn ended_summary(r: &JobRecord) -> Option<&Summary> {
    r.events.iter().rev().find_map(|e| match &e.kind {
        EventKind::JobEnded { summary, .. } => Some(summary),
        _ => None,
    })
}

/// The median of the newest [`vmove_model::inventory::LIVE_STEPS_MOVES`] of `(created, ms)`
/// (of an even count, the lower middle).
pub fn median_of_last(mut moves: Vec<(u64, u64)>) -> Option<u64> {
    moves.sort_unstable_by_key(|m| std::cmp::Reverse(m.0));
    let mut last: Vec<u64> = moves.into_iter().take(vmove_model::inventory::LIVE_STEPS_MOVES).map(|m| m.1).collect();
    last.sort_unstable();
    last.get(last.len().checked_sub(1)? / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live_move(created_ms: u64, status: JobStatus, total_ms: u64, migration_ms: Option<u64>, disk_copy_ms: Option<u64>) -> JobRecord {
        let spec = crate::fixtures::job();
        let summary = Summary { total_ms, migration_ms, disk_copy_ms, ..Default::default() };
        JobRecord {
            version: 1,
            id: format!("host2-{created_ms}"),
            kind: JobKind::Migrate,
            spec,
            status,
            steps: vec![],
            created_ms,
            ended_ms: Some(created_ms + total_ms),
            error: None,
            events: vec![JobEvent { seq: 0, at_ms: created_ms + total_ms, kind: EventKind::JobEnded { status, error: None, summary } }],
            guest_host: None,
            outage: None,
        }
    }

    #[test]
    fn live_steps_are_the_median_of_the_last_live_moves_less_their_memory_phase() {
        assert_eq!(live_steps_ms(&[]), None, "no move yet");
        let mut r = vec![
            live_move(1, JobStatus::Succeeded, 9_000, Some(1_000), None), // the oldest: left out (6 moves)
            live_move(2, JobStatus::Succeeded, 1_500, Some(1_000), None), // 500
            live_move(3, JobStatus::Succeeded, 1_700, Some(1_000), None), // 700
            live_move(4, JobStatus::Succeeded, 5_600, Some(1_000), Some(4_000)), // 600: the disk copy is not the steps'
            live_move(5, JobStatus::Succeeded, 1_400, Some(1_000), None), // 400
            live_move(6, JobStatus::Succeeded, 1_900, Some(1_000), None), // 900
            live_move(7, JobStatus::Failed, 60_000, Some(1_000), None),   // failed: left out
            live_move(8, JobStatus::Succeeded, 800, None, None),          // no memory phase: left out
            live_move(9, JobStatus::Succeeded, 900, Some(1_000), None),   // a clock that went back: left out
        ];
        assert_eq!(live_steps_ms(&r), Some(600));
        let mut held = live_move(10, JobStatus::Succeeded, 30_000, Some(1_000), None);
        held.spec.pause_at_switchover = true;
        let mut step = live_move(11, JobStatus::Succeeded, 30_000, Some(1_000), None);
        step.spec.step = Some(Step::MigrateGuest);
        let mut offline = live_move(12, JobStatus::Succeeded, 30_000, Some(1_000), None);
        offline.spec.mode = Mode::Offline;
        r.extend([held, step, offline]);
        assert_eq!(live_steps_ms(&r), Some(600), "held, single-step and offline moves do not count");
        assert_eq!(live_steps_ms(&r[1..3]), Some(500), "of two, the lower");
    }

    /// A live move whose QEMU memory phase took `measured_ms` against a model's `model_ms`.
    fn modelled(created_ms: u64, measured_ms: u64, model_ms: Option<u64>) -> JobRecord {
        let mut r = live_move(created_ms, JobStatus::Succeeded, measured_ms + 500, Some(measured_ms), None);
        if let Some(EventKind::JobEnded { summary, .. }) = r.events.last_mut().map(|e| &mut e.kind) {
            summary.predicted_memory_ms = model_ms;
        }
        r
    }

    #[test]
    fn the_memory_model_is_calibrated_by_the_median_of_the_last_moves() {
        assert_eq!(memory_model_pct(&[]), None, "no move yet");
        let mut r = vec![
            modelled(1, 5_000, Some(1_000)), // the oldest of six: left out
            modelled(2, 1_300, Some(1_000)), // 130 %
            modelled(3, 1_400, Some(1_000)), // 140 %
            modelled(4, 700, Some(500)),     // 140 %
            modelled(5, 1_500, Some(1_000)), // 150 %
            modelled(6, 1_800, Some(1_000)), // 180 %
            modelled(7, 1_000, None),        // no prediction recorded (an older agent): left out
            modelled(8, 1_000, Some(0)),     // a model of nothing: left out
        ];
        assert_eq!(memory_model_pct(&r), Some(140));
        let mut failed = modelled(9, 60_000, Some(1_000));
        failed.status = JobStatus::Failed;
        r.push(failed);
        assert_eq!(memory_model_pct(&r), Some(140), "a failed move does not count");
        // Figures from a record are never an overflow.
        assert_eq!(memory_model_of(&modelled(10, u64::MAX - 1_000, Some(1))), None);
    }
}
