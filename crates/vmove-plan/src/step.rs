//! Migration steps (oedacli `MIGRATE GUEST`'s `STEPNAME=`), the ordered plan of each mode, and whether a
//! single step may run (`--step NAME` / `WHERE STEPNAME=...`).
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::mode::Mode;

/// One step of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// Stop the guest on the source (graceful for OFFLINE, kill or skip for OFFLINEFORCE).
    StopGuest,
    /// Make the guest's bridges ready on the target.
    CreateBridges,
    /// Detach the guest's interfaces (taps) on the source.
    DetachInterfaces,
    /// Detach the guest's volumes from the source (LIVE: after the switchover).
    DetachVolumes,
    /// Attach the guest's volumes on the target.
    AttachVolumes,
    /// Copy the guest's volumes in local pools to the target (NBD over TLS; LIVE: mirrors
    /// that stay in sync until the switchover). Nothing to do for shared volumes.
    CopyVolumes,
    /// Move the guest: define it on the target (OFFLINE) or run the live migration (LIVE).
    MigrateGuest,
    /// Attach the guest's interfaces (taps) on the target.
    AttachInterfaces,
    /// Start the guest on the target.
    StartupGuest,
    /// Run the live-migration prechecks only (standalone, LIVE only).
    PrecheckLiveMigration,
}

// COPY_VOLUMES sits right before MIGRATE_GUEST in both plans: after ATTACH_VOLUMES (the
// target holds the lease of its new copy, in its own lease store) and, OFFLINE, after
// STOP_GUEST (the source's volumes no longer change); before MIGRATE_GUEST, which moves
// the definition (OFFLINE) or runs the memory migration (LIVE: the mirrors it started stay
// in sync during the memory phase and are finished at the pre-switchover pause). A guest
// with no volume in a local pool makes it a no-op.
const OFFLINE_PLAN: [Step; 9] = [
    Step::StopGuest,
    Step::CreateBridges,
    Step::DetachInterfaces,
    Step::DetachVolumes,
    Step::AttachVolumes,
    Step::CopyVolumes,
    Step::MigrateGuest,
    Step::AttachInterfaces,
    Step::StartupGuest,
];

const LIVE_PLAN: [Step; 5] = [
    Step::AttachVolumes,
    Step::CreateBridges,
    Step::CopyVolumes,
    Step::MigrateGuest,
    Step::DetachVolumes,
];

/// A step name that [`Step::parse`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown step {input:?}: expected one of STOP_GUEST, CREATE_BRIDGES, DETACH_INTERFACES, DETACH_VOLUMES, \
     ATTACH_VOLUMES, COPY_VOLUMES, MIGRATE_GUEST, ATTACH_INTERFACES, STARTUP_GUEST, PRECHECK_LIVEMIGRATION"
)]
pub struct StepParseError {
    /// What was given.
    pub input: String,
}

impl Step {
    /// Every step, in declaration order.
    pub const ALL: [Step; 10] = [
        Step::StopGuest,
        Step::CreateBridges,
        Step::DetachInterfaces,
        Step::DetachVolumes,
        Step::AttachVolumes,
        Step::CopyVolumes,
        Step::MigrateGuest,
        Step::AttachInterfaces,
        Step::StartupGuest,
        Step::PrecheckLiveMigration,
    ];

    /// Parses a step name: `STOP_GUEST`, `stop-guest`, `Stop_Guest` are the same step.
    /// `PRECHECK_LIVE_MIGRATION` is accepted for `PRECHECK_LIVEMIGRATION`.
    pub fn parse(s: &str) -> Result<Step, StepParseError> {
        let norm = s.trim().to_ascii_uppercase().replace('-', "_");
        if norm == "PRECHECK_LIVE_MIGRATION" {
            return Ok(Step::PrecheckLiveMigration);
        }
        Step::ALL
            .into_iter()
            .find(|st| st.name() == norm)
            .ok_or_else(|| StepParseError {
                input: s.to_string(),
            })
    }

    /// The oedacli name, e.g. `STOP_GUEST`.
    pub fn name(self) -> &'static str {
        match self {
            Step::StopGuest => "STOP_GUEST",
            Step::CreateBridges => "CREATE_BRIDGES",
            Step::DetachInterfaces => "DETACH_INTERFACES",
            Step::DetachVolumes => "DETACH_VOLUMES",
            Step::AttachVolumes => "ATTACH_VOLUMES",
            Step::CopyVolumes => "COPY_VOLUMES",
            Step::MigrateGuest => "MIGRATE_GUEST",
            Step::AttachInterfaces => "ATTACH_INTERFACES",
            Step::StartupGuest => "STARTUP_GUEST",
            Step::PrecheckLiveMigration => "PRECHECK_LIVEMIGRATION",
        }
    }

    /// The CLI's spelling, e.g. `stop-guest`.
    pub fn cli_name(self) -> String {
        self.name().to_ascii_lowercase().replace('_', "-")
    }

    /// The ordered steps of a whole migration in `mode`. `PRECHECK_LIVEMIGRATION` is in no
    /// plan: every run of a whole plan starts with the prechecks anyway.
    pub fn plan(mode: Mode) -> &'static [Step] {
        match mode {
            Mode::Offline | Mode::OfflineForce => &OFFLINE_PLAN,
            Mode::Live => &LIVE_PLAN,
        }
    }

    /// Where this step is in the plan of `mode`, if it is in it.
    pub fn index_in(self, mode: Mode) -> Option<usize> {
        Step::plan(mode).iter().position(|s| *s == self)
    }

    /// Whether this step may be named with `mode`: a step of its plan, or
    /// `PRECHECK_LIVEMIGRATION` with `LIVE`.
    pub fn valid_for(self, mode: Mode) -> bool {
        self.index_in(mode).is_some() || (self == Step::PrecheckLiveMigration && mode == Mode::Live)
    }

    /// Whether this is the standalone precheck step (no side effects, always repeatable).
    pub fn is_standalone(self) -> bool {
        self == Step::PrecheckLiveMigration
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Step {
    type Err = StepParseError;
    fn from_str(s: &str) -> Result<Step, StepParseError> {
        Step::parse(s)
    }
}

impl Serialize for Step {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Step, D::Error> {
        let s = String::deserialize(d)?;
        Step::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What a caller should do with a step that may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepReadiness {
    /// Every earlier step has completed and this one has not: run it.
    Ready,
    /// The step has already completed: running it again is a no-op.
    AlreadyCompleted,
}

/// Why a step may not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The step is not part of the mode's plan (nor the standalone precheck of LIVE).
    #[error("{}", not_valid_message(*.step, *.mode))]
    NotValidForMode {
        /// The step asked for.
        step: Step,
        /// The migration mode.
        mode: Mode,
    },
    /// A step before it in the plan has not completed.
    #[error("cannot run {step}: {missing}, an earlier step of the {mode} plan, has not completed")]
    EarlierStepIncomplete {
        /// The step asked for.
        step: Step,
        /// The first earlier step of the plan that has not completed.
        missing: Step,
        /// The migration mode.
        mode: Mode,
    },
}

fn not_valid_message(step: Step, mode: Mode) -> String {
    if step == Step::PrecheckLiveMigration {
        return format!("{step} is only valid with MODE=LIVE, not MODE={mode}");
    }
    let plan: Vec<&str> = Step::plan(mode).iter().map(|s| s.name()).collect();
    format!(
        "{step} is not a step of the {mode} plan ({})",
        plan.join(", ")
    )
}

/// Whether `step` may run now in a `mode` migration whose `completed` steps are known
/// (`--step NAME`). Refuses when the step does not belong to the mode or an earlier step of
/// the plan has not completed (naming the first one missing). A step already in `completed`
/// gives [`StepReadiness::AlreadyCompleted`], so that the caller can make it a no-op.
/// `PRECHECK_LIVEMIGRATION` (LIVE) is always [`StepReadiness::Ready`].
pub fn can_run_step(
    mode: Mode,
    step: Step,
    completed: &[Step],
) -> Result<StepReadiness, StepError> {
    if !step.valid_for(mode) {
        return Err(StepError::NotValidForMode { step, mode });
    }
    let Some(idx) = step.index_in(mode) else {
        return Ok(StepReadiness::Ready);
    };
    if let Some(missing) = Step::plan(mode)[..idx]
        .iter()
        .find(|s| !completed.contains(s))
    {
        return Err(StepError::EarlierStepIncomplete {
            step,
            missing: *missing,
            mode,
        });
    }
    if completed.contains(&step) {
        Ok(StepReadiness::AlreadyCompleted)
    } else {
        Ok(StepReadiness::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oedacli_and_cli_spellings() {
        assert_eq!(Step::parse("STOP_GUEST"), Ok(Step::StopGuest));
        assert_eq!(Step::parse("stop-guest"), Ok(Step::StopGuest));
        assert_eq!(Step::parse("Stop_Guest"), Ok(Step::StopGuest));
        assert_eq!(
            Step::parse("precheck_livemigration"),
            Ok(Step::PrecheckLiveMigration)
        );
        assert_eq!(
            Step::parse("precheck-live-migration"),
            Ok(Step::PrecheckLiveMigration)
        );
        for s in Step::ALL {
            assert_eq!(Step::parse(s.name()), Ok(s));
            assert_eq!(s.cli_name().parse::<Step>(), Ok(s));
        }
        assert_eq!(Step::StartupGuest.cli_name(), "startup-guest");
    }

    #[test]
    fn parse_error_lists_the_steps() {
        let e = Step::parse("teleport").unwrap_err();
        assert_eq!(
            e,
            StepParseError {
                input: "teleport".into()
            }
        );
        assert!(
            e.to_string()
                .starts_with("unknown step \"teleport\": expected one of STOP_GUEST, "),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("STARTUP_GUEST, PRECHECK_LIVEMIGRATION"),
            "{e}"
        );
    }

    #[test]
    fn plans_are_in_oedacli_order() {
        let names = |m| {
            Step::plan(m)
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
        };
        let offline = [
            "STOP_GUEST",
            "CREATE_BRIDGES",
            "DETACH_INTERFACES",
            "DETACH_VOLUMES",
            "ATTACH_VOLUMES",
            "COPY_VOLUMES",
            "MIGRATE_GUEST",
            "ATTACH_INTERFACES",
            "STARTUP_GUEST",
        ];
        assert_eq!(names(Mode::Offline), offline);
        assert_eq!(names(Mode::OfflineForce), offline);
        assert_eq!(
            names(Mode::Live),
            [
                "ATTACH_VOLUMES",
                "CREATE_BRIDGES",
                "COPY_VOLUMES",
                "MIGRATE_GUEST",
                "DETACH_VOLUMES"
            ]
        );
    }

    #[test]
    fn index_and_validity() {
        assert_eq!(Step::StopGuest.index_in(Mode::Offline), Some(0));
        assert_eq!(Step::StartupGuest.index_in(Mode::OfflineForce), Some(8));
        assert_eq!(Step::CopyVolumes.index_in(Mode::Offline), Some(5));
        assert_eq!(Step::CopyVolumes.index_in(Mode::Live), Some(2));
        assert_eq!(Step::DetachVolumes.index_in(Mode::Live), Some(4));
        assert_eq!(Step::StopGuest.index_in(Mode::Live), None);
        assert_eq!(Step::PrecheckLiveMigration.index_in(Mode::Live), None);
        assert!(Step::PrecheckLiveMigration.valid_for(Mode::Live));
        assert!(!Step::PrecheckLiveMigration.valid_for(Mode::Offline));
        assert!(!Step::PrecheckLiveMigration.valid_for(Mode::OfflineForce));
        assert!(!Step::StartupGuest.valid_for(Mode::Live));
        assert!(Step::StartupGuest.valid_for(Mode::Offline));
    }

    #[test]
    fn serde_uses_oedacli_names() {
        assert_eq!(
            serde_json::to_string(&Step::MigrateGuest).unwrap(),
            "\"MIGRATE_GUEST\""
        );
        assert_eq!(
            serde_json::from_str::<Step>("\"migrate-guest\"").unwrap(),
            Step::MigrateGuest
        );
        let v: Vec<Step> = serde_json::from_str(r#"["STOP_GUEST","ATTACH_VOLUMES"]"#).unwrap();
        assert_eq!(v, [Step::StopGuest, Step::AttachVolumes]);
        assert!(serde_json::from_str::<Step>("\"NOPE\"").is_err());
    }

    #[test]
    fn first_step_is_ready_with_nothing_done() {
        assert_eq!(
            can_run_step(Mode::Offline, Step::StopGuest, &[]),
            Ok(StepReadiness::Ready)
        );
        assert_eq!(
            can_run_step(Mode::Live, Step::AttachVolumes, &[]),
            Ok(StepReadiness::Ready)
        );
    }

    #[test]
    fn refuses_when_an_earlier_step_is_missing() {
        let done = [
            Step::StopGuest,
            Step::CreateBridges,
            Step::DetachInterfaces,
            Step::AttachVolumes,
            Step::CopyVolumes,
        ];
        let e = can_run_step(Mode::Offline, Step::MigrateGuest, &done).unwrap_err();
        assert_eq!(
            e,
            StepError::EarlierStepIncomplete {
                step: Step::MigrateGuest,
                missing: Step::DetachVolumes,
                mode: Mode::Offline
            }
        );
        assert_eq!(
            e.to_string(),
            "cannot run MIGRATE_GUEST: DETACH_VOLUMES, an earlier step of the OFFLINE plan, has not completed"
        );
        let e = can_run_step(
            Mode::Live,
            Step::DetachVolumes,
            &[Step::AttachVolumes, Step::CreateBridges, Step::CopyVolumes],
        )
        .unwrap_err();
        assert_eq!(
            e,
            StepError::EarlierStepIncomplete {
                step: Step::DetachVolumes,
                missing: Step::MigrateGuest,
                mode: Mode::Live
            }
        );
        // MIGRATE_GUEST needs the copy of the local volumes first, in both plans.
        let e = can_run_step(Mode::Live, Step::MigrateGuest, &[Step::AttachVolumes, Step::CreateBridges]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot run MIGRATE_GUEST: COPY_VOLUMES, an earlier step of the LIVE plan, has not completed"
        );
    }

    #[test]
    fn next_step_is_ready_and_a_repeated_step_is_a_no_op() {
        let done = [Step::StopGuest, Step::CreateBridges];
        assert_eq!(
            can_run_step(Mode::OfflineForce, Step::DetachInterfaces, &done),
            Ok(StepReadiness::Ready)
        );
        assert_eq!(
            can_run_step(Mode::OfflineForce, Step::CreateBridges, &done),
            Ok(StepReadiness::AlreadyCompleted)
        );
        assert_eq!(
            can_run_step(Mode::OfflineForce, Step::StopGuest, &done),
            Ok(StepReadiness::AlreadyCompleted)
        );
    }

    #[test]
    fn refuses_steps_outside_the_mode() {
        let e = can_run_step(Mode::Live, Step::StopGuest, &[]).unwrap_err();
        assert_eq!(
            e,
            StepError::NotValidForMode {
                step: Step::StopGuest,
                mode: Mode::Live
            }
        );
        assert_eq!(
            e.to_string(),
            "STOP_GUEST is not a step of the LIVE plan (ATTACH_VOLUMES, CREATE_BRIDGES, COPY_VOLUMES, MIGRATE_GUEST, DETACH_VOLUMES)"
        );
        let e = can_run_step(Mode::Offline, Step::PrecheckLiveMigration, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PRECHECK_LIVEMIGRATION is only valid with MODE=LIVE, not MODE=OFFLINE"
        );
    }

    #[test]
    fn live_precheck_is_always_ready() {
        assert_eq!(
            can_run_step(Mode::Live, Step::PrecheckLiveMigration, &[]),
            Ok(StepReadiness::Ready)
        );
        assert_eq!(
            can_run_step(
                Mode::Live,
                Step::PrecheckLiveMigration,
                &[Step::PrecheckLiveMigration]
            ),
            Ok(StepReadiness::Ready)
        );
    }
}
