//! Convergence of live migrations: what to set up before `migrate`, the ladder that
//! escalates while a migration is stuck, and the prediction the precheck makes. Pure: the
//! agent feeds figures from `query-migrate` and carries out the actions.
//!
//! - [`Ladder::new`] decides the [`Setup`] (capabilities and parameters of both QEMUs,
//!   the first downtime limit, the parked throttle) from the [`MigrationParams`], what the
//!   two QEMUs can ([`Features`]) and the figures known at the start ([`Start`]).
//! - [`Ladder::observe`] takes one [`Sample`] after another and answers with
//!   [`Action`]s: raise the downtime limit, unpark or raise the throttle, start post-copy,
//!   recover a paused post-copy, cancel at the timeout. Each carries its reason and the
//!   figures behind it ([`Why`]), for the job's events.
//! - [`predict`] runs the same ladder on a geometric model of pre-copy and says whether a
//!   move converges under a policy, in how many passes, how long, with what downtime, and
//!   which policy would do if it does not.
//!
//! The rules and constants, and the QEMU 10 behaviour they rest on, are in docs/DESIGN.md
//! ("Convergence").
use serde::{Deserialize, Serialize};
use vmove_model::Converge;

use crate::params::MigrationParams;

mod action;
mod ladder;
mod predict;
#[cfg(test)]
mod tests;

pub use action::Action;
pub use ladder::{Figures, Ladder, Phase, Rung, RungInfo, Sample, Why};
pub use predict::{precopy, predict, ConvergePolicy, Needed, Precopy, Prediction, Workload};

fn is_zero(x: &u64) -> bool {
    *x == 0
}

/// QEMU's downtime limit never goes below this for bytes in flight, milliseconds.
pub const MIN_QEMU_DOWNTIME_MS: u64 = 10;
/// The drain time of the bytes in flight is the highest of this many samples (2 s at the
/// agent's 250 ms poll).
pub const IN_FLIGHT_WINDOW: usize = 8;
/// QEMU's limit is set again for the bytes in flight when it would change by at least
/// this much, milliseconds (and by at least a tenth).
pub const RETUNE_MIN_MS: u64 = 10;
/// The lowest downtime limit the ladder starts from, milliseconds.
pub const DOWNTIME_FLOOR_MS: u64 = 50;
/// Each downtime rung is this many times the one before (the last is the maximum).
pub const DOWNTIME_FACTOR: u64 = 2;
/// A rung is stuck when its window spans at least this many passes ...
pub const STUCK_PASSES: u64 = 3;
/// ... and at least this long, milliseconds, without the dirty set falling to a new low.
pub const STUCK_WINDOW_MS: u64 = 5_000;
/// A new low must be this many percent below the window's anchor to count as progress.
pub const PROGRESS_PCT: u64 = 10;
/// The first downtime limit is the lowest rung with which pre-copy alone is predicted to
/// converge within this share of the timeout, percent.
pub const START_BUDGET_PCT: u64 = 25;
/// Auto-converge while parked: QEMU throttles at most 1 % (its minimum).
pub const PARKED_THROTTLE_PCT: u8 = 1;
/// Auto-converge when unparked: first throttle and step (QEMU raises it every second
/// pass while the guest dirties more than half of what is sent).
pub const THROTTLE_INITIAL_PCT: u8 = 20;
/// See [`THROTTLE_INITIAL_PCT`].
pub const THROTTLE_INCREMENT_PCT: u8 = 20;
/// The ceilings of the auto-converge rungs, percent.
pub const THROTTLE_CEILINGS_PCT: [u8; 3] = [50, 75, 99];
/// Dirty-limit while parked, MB/s per vCPU: far above anything a vCPU dirties.
pub const DIRTY_LIMIT_PARKED_MB_PER_S: u64 = 1 << 20;
/// Dirty-limit when unparked without a measured link, MB/s per vCPU.
pub const DIRTY_LIMIT_DEFAULT_MB_PER_S: u64 = 64;
/// Each dirty-limit rung divides the limit by this (down to 1 MB/s, QEMU's minimum).
pub const DIRTY_LIMIT_DIVISOR: u64 = 4;
/// Post-copy that moves no byte this long is paused by the target, milliseconds.
pub const POSTCOPY_STALL_MS: u64 = 3_000;
/// Post-copy recovery attempts: first after this long paused, then doubling ...
pub const RECOVER_FIRST_MS: u64 = 1_000;
/// ... up to this, milliseconds.
pub const RECOVER_MAX_MS: u64 = 30_000;
/// Switchover pause of post-copy in the model (device state only), milliseconds.
pub const POSTCOPY_SWITCHOVER_MS: u64 = 50;

/// What the two QEMUs can, as far as convergence goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Features {
    /// The source QEMU has the `auto-converge` capability.
    pub auto_converge: bool,
    /// The source QEMU accepted the `dirty-limit` capability (KVM with a dirty ring:
    /// `-accel kvm,dirty-ring-size=N`); ask it with `refused_capabilities`.
    pub dirty_limit: bool,
    /// Both QEMUs have `postcopy-ram`.
    pub postcopy_ram: bool,
    /// Both QEMUs have `postcopy-preempt`.
    pub postcopy_preempt: bool,
    /// Both QEMUs accept `multifd` together with `postcopy-ram` (QEMU 10.0 refuses:
    /// "Postcopy is not yet compatible with multifd").
    pub multifd_with_postcopy: bool,
    /// Both QEMUs have `return-path`.
    pub return_path: bool,
    /// Both QEMUs have `switchover-ack`.
    pub switchover_ack: bool,
}

/// Figures known when the migration starts (from the prechecks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Start {
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// Memory the guest keeps rewriting, bytes, when known.
    pub working_set_bytes: Option<u64>,
    /// Migration link throughput (the lower of measured and capped), bytes per second.
    pub link_bytes_per_s: Option<u64>,
    /// Measured dirty rate, bytes per second.
    pub dirty_rate_bytes_per_s: Option<u64>,
    /// Guest vCPUs (dirty-limit is per vCPU).
    pub vcpus: u32,
}

/// How the throttle rung slows the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThrottleKind {
    /// QEMU's `auto-converge`: vCPUs sleep a growing share of the time.
    AutoConverge,
    /// QEMU's `dirty-limit`: each vCPU may dirty at most so many MB/s (KVM dirty ring).
    DirtyLimit,
}

/// Throttle parameters for `migrate-set-parameters` on the source; `None` leaves one as
/// it is. Field names are QEMU's with the unit appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ThrottleParams {
    /// `cpu-throttle-initial`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_initial_pct: Option<u8>,
    /// `cpu-throttle-increment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_increment_pct: Option<u8>,
    /// `max-cpu-throttle` (QEMU requires it to be at least `cpu-throttle-initial`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_throttle_pct: Option<u8>,
    /// `cpu-throttle-tailslow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_tailslow: Option<bool>,
    /// `vcpu-dirty-limit`, MB/s per vCPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_dirty_limit_mb_per_s: Option<u64>,
}

impl ThrottleParams {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == ThrottleParams::default()
    }
}

/// What to set on both QEMUs before `migrate` (capabilities cannot change while a
/// migration runs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    /// The policy asked for.
    pub converge: Converge,
    /// The throttle the throttle rungs use, `None` when there are none.
    pub throttle: Option<ThrottleKind>,
    /// Post-copy is possible (the post-copy rung exists): `postcopy-ram` on both sides.
    pub postcopy: bool,
    /// `postcopy-preempt` on both sides.
    pub preempt: bool,
    /// multifd channels to use (0 when post-copy is set up and QEMU cannot combine them).
    pub multifd_channels: u8,
    /// First downtime limit, milliseconds (`downtime-limit` on the source).
    pub initial_downtime_ms: u64,
    /// Capabilities for the source, QEMU's names (`migrate-set-capabilities`).
    pub source_capabilities: Vec<(String, bool)>,
    /// Capabilities for the target.
    pub target_capabilities: Vec<(String, bool)>,
    /// The parked throttle for the source (empty without a throttle rung).
    pub parked_throttle: ThrottleParams,
    /// What was given up and why, one line each (for the job's events).
    pub notes: Vec<String>,
}

/// The first downtime limit: the maximum for `none`; an explicit `initial_downtime_ms`
/// (at most the maximum); else the lowest rung of floor × 2ⁿ with which pre-copy alone is
/// predicted to converge within [`START_BUDGET_PCT`] of the timeout; the maximum when no
/// rung is; the floor when the link or the dirty rate is unknown.
pub fn initial_downtime_ms(p: &MigrationParams, start: &Start) -> u64 {
    let max = p.max_downtime_ms.max(1);
    if !p.converge.climbs_downtime() {
        return max;
    }
    if let Some(ms) = p.initial_downtime_ms {
        return ms.clamp(1, max);
    }
    let floor = DOWNTIME_FLOOR_MS.min(max);
    let (Some(link), Some(dirty)) = (start.link_bytes_per_s, start.dirty_rate_bytes_per_s) else {
        return floor;
    };
    let budget_ms = p.timeout_s.saturating_mul(10 * START_BUDGET_PCT);
    let w = Workload {
        memory_bytes: start.memory_bytes,
        dirty_rate_bytes_per_s: dirty,
        working_set_bytes: start.working_set_bytes,
    };
    downtime_rungs(floor, max)
        .into_iter()
        .find(|&ms| precopy(&w, link, ms).is_some_and(|r| r.total_ms <= budget_ms))
        .unwrap_or(max)
}

/// `first`, `first × 2`, ... up to and including `max`.
pub(crate) fn downtime_rungs(first: u64, max: u64) -> Vec<u64> {
    let mut v = vec![first.min(max)];
    while let Some(&last) = v.last() {
        if last >= max {
            break;
        }
        v.push(last.saturating_mul(DOWNTIME_FACTOR).min(max));
    }
    v
}

/// The dirty-limit rungs, MB/s per vCPU: half the link shared by the vCPUs, then divided
/// by [`DIRTY_LIMIT_DIVISOR`] down to 1.
pub(crate) fn dirty_limit_rungs(start: &Start) -> Vec<u64> {
    let vcpus = u64::from(start.vcpus.max(1));
    let first = start
        .link_bytes_per_s
        .map_or(DIRTY_LIMIT_DEFAULT_MB_PER_S, |b| b / 2 / 1_048_576 / vcpus)
        .max(1);
    let mut v = vec![first];
    while let Some(&last) = v.last() {
        if last <= 1 || v.len() == 3 {
            break;
        }
        v.push((last / DIRTY_LIMIT_DIVISOR).max(1));
    }
    v
}

/// Decides the setup; see [`Setup`] and docs/DESIGN.md.
pub fn setup(p: &MigrationParams, f: &Features, start: &Start) -> Setup {
    let mut notes = Vec::new();
    let throttle = if !p.converge.may_throttle() {
        None
    } else if f.dirty_limit {
        Some(ThrottleKind::DirtyLimit)
    } else if f.auto_converge {
        Some(ThrottleKind::AutoConverge)
    } else {
        notes.push("no throttle rung: the source QEMU has neither auto-converge nor dirty-limit".into());
        None
    };
    let postcopy = p.converge.may_postcopy() && p.allow_postcopy && f.postcopy_ram;
    if p.converge.may_postcopy() && !postcopy {
        notes.push(if p.allow_postcopy {
            "no post-copy rung: a QEMU lacks postcopy-ram".into()
        } else {
            "no post-copy rung: the cluster policy does not allow post-copy (allow_postcopy)".into()
        });
    }
    let preempt = postcopy && f.postcopy_preempt;
    let mut multifd_channels = p.multifd_channels;
    if postcopy && multifd_channels > 0 && !f.multifd_with_postcopy {
        notes.push(format!(
            "a single stream instead of {multifd_channels} multifd channels: post-copy may be needed and these QEMUs cannot combine it with multifd"
        ));
        multifd_channels = 0;
    }
    let both = |name: &str, on: bool| (name.to_string(), on);
    let mut common = vec![
        both("events", true),
        both("multifd", multifd_channels > 0),
        both("postcopy-ram", postcopy),
        both("postcopy-preempt", preempt),
        both("pause-before-switchover", p.pause_before_switchover),
    ];
    if f.return_path {
        common.push(both("return-path", true));
    }
    if f.switchover_ack && f.return_path {
        common.push(both("switchover-ack", true));
    }
    let mut source_capabilities = common.clone();
    let mut target_capabilities = common;
    let ac = throttle == Some(ThrottleKind::AutoConverge);
    let dl = throttle == Some(ThrottleKind::DirtyLimit);
    if f.auto_converge {
        source_capabilities.push(both("auto-converge", ac));
    }
    if f.dirty_limit {
        source_capabilities.push(both("dirty-limit", dl));
    }
    // Auto-converge and dirty-limit only act on the source; the target never gets them.
    target_capabilities.retain(|(n, _)| n != "auto-converge" && n != "dirty-limit");
    let parked_throttle = match throttle {
        Some(ThrottleKind::AutoConverge) => ThrottleParams {
            cpu_throttle_initial_pct: Some(PARKED_THROTTLE_PCT),
            cpu_throttle_increment_pct: Some(PARKED_THROTTLE_PCT),
            max_cpu_throttle_pct: Some(PARKED_THROTTLE_PCT),
            cpu_throttle_tailslow: Some(false),
            vcpu_dirty_limit_mb_per_s: None,
        },
        Some(ThrottleKind::DirtyLimit) => ThrottleParams {
            vcpu_dirty_limit_mb_per_s: Some(DIRTY_LIMIT_PARKED_MB_PER_S),
            ..ThrottleParams::default()
        },
        None => ThrottleParams::default(),
    };
    Setup {
        converge: p.converge,
        throttle,
        postcopy,
        preempt,
        multifd_channels,
        initial_downtime_ms: initial_downtime_ms(p, start),
        source_capabilities,
        target_capabilities,
        parked_throttle,
        notes,
    }
}

/// `13.1 MiB`.
pub(crate) fn fmt_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

/// `6.2 s`.
pub(crate) fn fmt_ms(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} s", ms.div_ceil(1000))
    }
}
