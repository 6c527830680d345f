//! Prediction: a geometric model of pre-copy with the ladder applied to it.
//!
//! Pass 1 sends the whole memory `M` at the link rate `b`. Every later pass sends what the
//! guest dirtied during the pass before, `Dₖ₊₁ = min(W, d' · Dₖ / b)` with the working set
//! `W` (the memory when unknown) and the dirty rate `d'` (the measured `d`, less what the
//! throttle takes). QEMU switches over once the dirty set fits the downtime limit,
//! `D ≤ b · L`, and the guest then pauses for `D / b`. The ladder ([`Ladder`]) is fed the
//! model's figures at the end of every pass, exactly as the agent feeds it QEMU's, so the
//! prediction follows the same rules as the migration.
use serde::{Deserialize, Serialize};
use vmove_model::Converge;

use crate::params::MigrationParams;

use super::action::Action;
use super::ladder::{Ladder, Phase, Rung, Sample};
use super::{Features, Start, POSTCOPY_SWITCHOVER_MS, THROTTLE_INCREMENT_PCT, THROTTLE_INITIAL_PCT};

/// More passes than this is a model that does not converge.
const MAX_MODEL_PASSES: u64 = 100_000;
/// Auto-converge raises the throttle only while the guest dirties more than this share of
/// what is sent (QEMU's `throttle-trigger-threshold`, default 50), percent.
const THROTTLE_TRIGGER_PCT: u64 = 50;

/// What the guest does to its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Workload {
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// Dirty rate, bytes per second.
    pub dirty_rate_bytes_per_s: u64,
    /// Memory it keeps rewriting, bytes; `None`: all of it.
    pub working_set_bytes: Option<u64>,
}

/// Pre-copy at one fixed downtime limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precopy {
    /// Passes, the bulk pass included.
    pub passes: u64,
    /// Until the guest runs on the target, milliseconds.
    pub total_ms: u64,
    /// The switchover's pause, milliseconds.
    pub downtime_ms: u64,
}

fn ms(bytes: f64, rate: f64) -> f64 {
    bytes / rate * 1000.0
}

/// The tail of pre-copy from a dirty set of `set_bytes`: `None` when it does not shrink
/// to what `limit_ms` carries (the dirty rate is not below the link rate).
pub(crate) fn precopy_tail_ms(set_bytes: u64, dirty_bytes_per_s: u64, link_bytes_per_s: u64, limit_ms: u64) -> Option<Precopy> {
    tail(set_bytes as f64, dirty_bytes_per_s as f64, link_bytes_per_s as f64, f64::INFINITY, limit_ms)
}

fn tail(mut set: f64, d: f64, b: f64, w: f64, limit_ms: u64) -> Option<Precopy> {
    if b <= 0.0 {
        return None;
    }
    let carries = b * limit_ms as f64 / 1000.0;
    let (mut passes, mut t_ms) = (0u64, 0.0f64);
    while set > carries {
        let next = (d * set / b).min(w);
        if next >= set || passes >= MAX_MODEL_PASSES {
            return None;
        }
        t_ms += ms(set, b);
        passes += 1;
        set = next;
    }
    let downtime = ms(set, b);
    Some(Precopy { passes, total_ms: (t_ms + downtime).ceil() as u64, downtime_ms: downtime.ceil() as u64 })
}

/// Pre-copy alone at a fixed downtime limit (no timeout): `None` when it never converges.
pub fn precopy(w: &Workload, link_bytes_per_s: u64, limit_ms: u64) -> Option<Precopy> {
    let (m, d, b) = (w.memory_bytes as f64, w.dirty_rate_bytes_per_s as f64, link_bytes_per_s as f64);
    if b <= 0.0 {
        return None;
    }
    let ws = w.working_set_bytes.map_or(m, |x| (x as f64).min(m));
    let bulk_ms = ms(m, b);
    let after = (d * bulk_ms / 1000.0).min(ws);
    let t = tail(after, d, b, ws, limit_ms)?;
    Some(Precopy { passes: t.passes + 1, total_ms: t.total_ms + bulk_ms.ceil() as u64, downtime_ms: t.downtime_ms })
}

/// The policy side of a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvergePolicy {
    /// The convergence policy.
    pub converge: Converge,
    /// Maximum downtime, milliseconds.
    pub max_downtime_ms: u64,
    /// First downtime limit, when given.
    pub initial_downtime_ms: Option<u64>,
    /// Timeout of pre-copy, seconds.
    pub timeout_s: u64,
    /// Whether the cluster policy allows post-copy.
    pub allow_postcopy: bool,
    /// What the QEMUs can.
    pub features: Features,
    /// Guest vCPUs.
    pub vcpus: u32,
}

impl ConvergePolicy {
    /// From the migration's parameters.
    pub fn from_params(p: &MigrationParams, features: Features, vcpus: u32) -> ConvergePolicy {
        ConvergePolicy {
            converge: p.converge,
            max_downtime_ms: p.max_downtime_ms,
            initial_downtime_ms: p.initial_downtime_ms,
            timeout_s: p.timeout_s,
            allow_postcopy: p.allow_postcopy,
            features,
            vcpus,
        }
    }

    fn params(&self) -> MigrationParams {
        MigrationParams {
            timeout_s: self.timeout_s,
            max_downtime_ms: self.max_downtime_ms,
            initial_downtime_ms: self.initial_downtime_ms,
            allow_postcopy: self.allow_postcopy,
            converge: self.converge,
            multifd_channels: 0,
            ..MigrationParams::default()
        }
    }
}

/// Shorthand for the rung a prediction needed.
pub type Needed = Rung;

/// What the model says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prediction {
    /// Whether the migration completes under the policy.
    pub converges: bool,
    /// Pre-copy passes, the bulk pass included (QEMU's `dirty-sync-count` reads one or two
    /// higher: it also syncs at setup and at the switchover).
    pub passes: u64,
    /// Until the guest runs on the target (or the timeout cancels), milliseconds.
    pub total_ms: u64,
    /// The switchover's pause, milliseconds (post-copy: the device state only).
    pub downtime_ms: u64,
    /// The rung it converged on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rung_needed: Option<Needed>,
    /// Auto-converge throttle at the switchover, percent (0: not throttled).
    pub throttle_pct: u8,
    /// When it does not converge: the first of throttle, postcopy, auto that would
    /// (postcopy and auto assuming the cluster policy allowed post-copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<Converge>,
}

/// Predicts a move of `w` over a link of `link_bytes_per_s` under `policy`.
pub fn predict(w: &Workload, link_bytes_per_s: u64, policy: &ConvergePolicy) -> Prediction {
    let mut p = simulate(w, link_bytes_per_s, policy);
    if !p.converges {
        p.suggestion = [Converge::Throttle, Converge::Postcopy, Converge::Auto]
            .into_iter()
            .filter(|&c| c != policy.converge)
            .find(|&c| simulate(w, link_bytes_per_s, &ConvergePolicy { converge: c, allow_postcopy: true, ..*policy }).converges);
    }
    p
}

fn simulate(w: &Workload, link_bytes_per_s: u64, policy: &ConvergePolicy) -> Prediction {
    let start = Start {
        memory_bytes: w.memory_bytes,
        working_set_bytes: w.working_set_bytes,
        link_bytes_per_s: Some(link_bytes_per_s),
        dirty_rate_bytes_per_s: Some(w.dirty_rate_bytes_per_s),
        vcpus: policy.vcpus,
    };
    let mut ladder = Ladder::new(&policy.params(), &policy.features, &start);
    let b = link_bytes_per_s as f64;
    let not = |passes: u64, total_ms: f64| Prediction {
        converges: false,
        passes,
        total_ms: total_ms.ceil() as u64,
        downtime_ms: 0,
        rung_needed: None,
        throttle_pct: 0,
        suggestion: None,
    };
    if b <= 0.0 {
        return not(0, 0.0);
    }
    let m = w.memory_bytes as f64;
    let ws = w.working_set_bytes.map_or(m, |x| (x as f64).min(m));
    let d = w.dirty_rate_bytes_per_s as f64;
    let timeout_ms = policy.timeout_s.saturating_mul(1000) as f64;
    let mut limit_ms = ladder.setup().initial_downtime_ms;
    // Throttle state: auto-converge percent and ceiling (0: parked), dirty-limit MB/s.
    let (mut pct, mut ceiling, mut dirty_limit) = (0u64, 0u64, None::<u64>);
    let d_eff = |pct: u64, dl: Option<u64>| {
        let t = d * (100 - pct.min(100)) as f64 / 100.0;
        dl.map_or(t, |mb| t.min((mb * 1_048_576 * u64::from(policy.vcpus.max(1))) as f64))
    };
    let mut t_ms = ms(m, b);
    if t_ms >= timeout_ms {
        // The bulk pass alone outlasts the timeout: the ladder cancels during it.
        let s = Sample { at_ms: policy.timeout_s.saturating_mul(1000), status: Phase::Precopy, pass: 1, rate_bytes_per_s: link_bytes_per_s, ..Sample::default() };
        if ladder.observe(&s).iter().any(|a| matches!(a, Action::Cancel { .. })) {
            return not(1, timeout_ms);
        }
    }
    let mut passes = 1u64;
    let mut set = (d * t_ms / 1000.0).min(ws);
    loop {
        let de = d_eff(pct, dirty_limit);
        if set <= b * limit_ms as f64 / 1000.0 {
            let downtime = ms(set, b);
            return Prediction {
                converges: true,
                passes,
                total_ms: (t_ms + downtime).ceil() as u64,
                downtime_ms: downtime.ceil() as u64,
                rung_needed: Some(ladder.rung().rung),
                throttle_pct: u8::try_from(pct).unwrap_or(100),
                suggestion: None,
            };
        }
        let pass_ms = ms(set, b);
        // The ladder sees the end of each pass, and the timeout if it comes first.
        let at = if t_ms + pass_ms > timeout_ms && t_ms < timeout_ms { timeout_ms } else { t_ms };
        let sample = Sample {
            at_ms: at as u64,
            status: Phase::Precopy,
            pass: passes + 1,
            remaining_bytes: set as u64,
            transferred_bytes: 0,
            rate_bytes_per_s: link_bytes_per_s,
            dirty_rate_bytes_per_s: de as u64,
            expected_downtime_ms: pass_ms.ceil() as u64,
            throttle_pct: (ceiling > 0).then_some(pct),
            in_flight_bytes: 0,
        };
        let mut acted = false;
        for a in ladder.observe(&sample) {
            acted = true;
            match a {
                Action::SetDowntimeLimit { ms, .. } => limit_ms = ms,
                Action::UnparkThrottle { params, .. } | Action::RaiseThrottle { params, .. } => {
                    if let Some(max) = params.max_cpu_throttle_pct {
                        ceiling = u64::from(max);
                    }
                    if let Some(mb) = params.vcpu_dirty_limit_mb_per_s {
                        dirty_limit = Some(mb);
                    }
                }
                Action::StartPostcopy { .. } => {
                    return Prediction {
                        converges: true,
                        passes,
                        total_ms: (at + POSTCOPY_SWITCHOVER_MS as f64 + ms(set, b)).ceil() as u64,
                        downtime_ms: POSTCOPY_SWITCHOVER_MS,
                        rung_needed: Some(Rung::Postcopy),
                        throttle_pct: u8::try_from(pct).unwrap_or(100),
                        suggestion: None,
                    };
                }
                Action::Cancel { .. } => return not(passes, at),
                Action::PausePostcopy { .. } | Action::RecoverPostcopy { .. } | Action::Exhausted { .. } => {}
            }
        }
        if acted && set <= b * limit_ms as f64 / 1000.0 {
            // QEMU checks the limit at its next iteration, within the pass.
            continue;
        }
        if at >= timeout_ms || passes >= MAX_MODEL_PASSES {
            return not(passes, at);
        }
        // The next pass: auto-converge steps every second pass while the guest dirties
        // more than the trigger share of what is sent.
        passes += 1;
        t_ms += pass_ms;
        if ceiling > 0 && passes % 2 == 0 && de * 100.0 > b * THROTTLE_TRIGGER_PCT as f64 {
            pct = if pct == 0 { u64::from(THROTTLE_INITIAL_PCT) } else { pct + u64::from(THROTTLE_INCREMENT_PCT) }.min(ceiling);
        }
        set = (d_eff(pct, dirty_limit) * pass_ms / 1000.0).min(ws);
    }
}
