//! vmove-plan: what a migration is made of, and whether it may start. Pure logic, no I/O.
//!
//! - [`Mode`]: `OFFLINE`, `OFFLINEFORCE`, `LIVE`.
//! - [`Step`]: the step names of Oracle Exadata's `MIGRATE GUEST`, the ordered plan of each mode ([`Step::plan`]) and
//!   whether a single step may run now ([`can_run_step`]).
//! - [`checks`]: the prechecks, pure functions from the cluster file, the request and the
//!   agents' inventories to [`Finding`]s ([`run`]). `docs/prechecks.md` maps every
//!   prerequisite of Oracle Exadata, Oracle VM Server for SPARC and Xen migration to a check.
//! - [`placement`]: where each guest of a drain or an evacuation goes ([`plan`],
//!   [`replan_one`]), reusing the prechecks against projected inventories.
//! - [`mod@schedule`]: order, concurrency limits and predicted duration of the moves
//!   ([`schedule()`], [`startable`], [`DrainPlan`]).
//! - [`converge`]: live migrations that do not converge on their own — the setup of both
//!   QEMUs, the [`Ladder`] that escalates while a migration is stuck, and [`predict`].
#![warn(missing_docs)]

pub mod checks;
pub mod job;
pub mod converge;
mod mode;
mod params;
pub mod placement;
pub mod schedule;
mod step;
mod version;

pub use checks::{
    any_failed, convergence_outcome, predicted_memory_ms, run, run_one, worst, Busy, CheckId, CheckIdParseError, CheckInput, Finding, Measured,
    MigrationRequest, Reach, Verdict,
};
pub use job::{Action, Direction, EndStatus, FailKind, Input, JobMachine, JobPhase, MigrationRecord, Note, Side};
pub use converge::{predict, Ladder};
pub use mode::{Mode, ModeParseError};
pub use vmove_model::{Converge, ConvergeParseError};
pub use params::MigrationParams;
pub use step::{can_run_step, Step, StepError, StepParseError, StepReadiness};
pub use version::{compare_versions, parse_version};
pub use placement::{
    plan, replan_one, DurationModel, HostView, MoveRequest, Placement, PlacementInput,
    PlannedMove, PlannerRule, Rejection, Rule, Unplaced,
};
pub use schedule::{schedule, startable, DrainPlan, Limits, LimitsError, Schedule, ScheduledMove};
