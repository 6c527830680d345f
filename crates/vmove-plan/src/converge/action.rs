//! What the ladder asks the agent to do: one [`Action`] per escalation, each with its
//! reason and figures ([`Why`]).
use serde::{Deserialize, Serialize};

use super::ladder::Why;
use super::{is_zero, ThrottleParams};

/// What the agent does next. Each is one job event (its [`Action::describe`] line, and the
/// [`Why`] as data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// `migrate-set-parameters {"downtime-limit": ms}` on the source.
    SetDowntimeLimit {
        /// The limit QEMU gets: the rung's less `in_flight_ms`.
        ms: u64,
        /// The part of the rung's limit kept for the bytes already in flight (the source's
        /// kernel holds them unacknowledged; they drain after QEMU stops the guest, before
        /// the target can load): 0 when none matter.
        #[serde(default, skip_serializing_if = "is_zero")]
        in_flight_ms: u64,
        /// Why.
        why: Why,
    },
    /// `migrate-set-parameters` with `params` on the source: the throttle starts to work.
    UnparkThrottle {
        /// Parameters to set.
        params: ThrottleParams,
        /// Why.
        why: Why,
    },
    /// `migrate-set-parameters` with `params` on the source: a higher ceiling (or a lower
    /// dirty limit).
    RaiseThrottle {
        /// Parameters to set.
        params: ThrottleParams,
        /// Why.
        why: Why,
    },
    /// `migrate-start-postcopy` on the source. From here on the guest runs on the target;
    /// QEMU refuses `migrate_cancel`, and the timeout no longer applies.
    StartPostcopy {
        /// Why.
        why: Why,
    },
    /// Post-copy moved no byte for [`super::POSTCOPY_STALL_MS`] (the link is down, or hangs
    /// without an error): `migrate-pause` on the target, which then listens for a recovery
    /// (QEMU's own way out of a hung post-copy connection).
    PausePostcopy {
        /// Why.
        why: Why,
    },
    /// Post-copy is paused: `migrate-recover` on the target (a new URI), then `migrate`
    /// with `resume: true` to that URI on the source. A failed attempt changes nothing;
    /// the ladder asks again later.
    RecoverPostcopy {
        /// 1, 2, ...
        attempt: u32,
        /// Why.
        why: Why,
    },
    /// The top rung is stuck too: nothing left but the timeout (an event, no QEMU call).
    Exhausted {
        /// Why.
        why: Why,
    },
    /// `migrate_cancel` on the source: the timeout passed during pre-copy.
    Cancel {
        /// Why.
        why: Why,
    },
}

impl Action {
    /// The reason and figures.
    pub fn why(&self) -> &Why {
        match self {
            Action::SetDowntimeLimit { why, .. }
            | Action::UnparkThrottle { why, .. }
            | Action::RaiseThrottle { why, .. }
            | Action::StartPostcopy { why }
            | Action::PausePostcopy { why }
            | Action::RecoverPostcopy { why, .. }
            | Action::Exhausted { why }
            | Action::Cancel { why } => why,
        }
    }

    /// One line for the job's events.
    pub fn describe(&self) -> String {
        let head = match self {
            Action::SetDowntimeLimit { ms, in_flight_ms: 0, .. } => format!("downtime limit {ms} ms"),
            Action::SetDowntimeLimit { ms, in_flight_ms, .. } => {
                format!("downtime limit {} ms (QEMU's {ms} ms, {in_flight_ms} ms kept for the bytes in flight)", ms.saturating_add(*in_flight_ms))
            }
            Action::UnparkThrottle { params, .. } => format!("throttling the guest ({})", throttle_text(params)),
            Action::RaiseThrottle { params, .. } => format!("throttling harder ({})", throttle_text(params)),
            Action::StartPostcopy { .. } => "switching to post-copy".to_string(),
            Action::PausePostcopy { .. } => "pausing post-copy".to_string(),
            Action::RecoverPostcopy { attempt, .. } => format!("recovering post-copy (attempt {attempt})"),
            Action::Exhausted { .. } => "no rung left".to_string(),
            Action::Cancel { .. } => "cancelling".to_string(),
        };
        format!("{head}: {}", self.why().reason)
    }
}

fn throttle_text(p: &ThrottleParams) -> String {
    match (p.max_cpu_throttle_pct, p.vcpu_dirty_limit_mb_per_s) {
        (Some(max), _) => format!("auto-converge up to {max} %"),
        (None, Some(mb)) => format!("dirty-limit {mb} MB/s per vCPU"),
        (None, None) => "unchanged".to_string(),
    }
}
