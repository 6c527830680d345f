//! The convergence ladder: a state machine fed with `query-migrate` samples that answers
//! with the actions the agent carries out.
use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::checks::fmt_rate;
use crate::params::MigrationParams;

use super::action::Action;
use super::predict::precopy_tail_ms;
use super::{
    dirty_limit_rungs, downtime_rungs, fmt_mib, fmt_ms, is_zero, setup, Features, Setup, Start,
    ThrottleKind, ThrottleParams, IN_FLIGHT_WINDOW, MIN_QEMU_DOWNTIME_MS, PROGRESS_PCT, RETUNE_MIN_MS, RECOVER_FIRST_MS, RECOVER_MAX_MS,
    STUCK_PASSES, STUCK_WINDOW_MS, THROTTLE_CEILINGS_PCT, THROTTLE_INCREMENT_PCT,
    THROTTLE_INITIAL_PCT,
};

/// Where a migration is, from QEMU's status (the source's `query-migrate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// `setup`.
    Setup,
    /// `active`: pre-copy.
    Precopy,
    /// `pre-switchover`, `device`, `wait-unplug`: the switchover is under way.
    Switchover,
    /// `postcopy-active`: the guest runs on the target, pages are pulled.
    Postcopy,
    /// `postcopy-paused`: the link broke (or `migrate-pause`); the guest waits on the
    /// target for the pages it lacks.
    PostcopyPaused,
    /// `postcopy-recover-setup`, `postcopy-recover`: reconnecting.
    PostcopyRecovering,
    /// `completed`.
    Completed,
    /// `failed`.
    Failed,
    /// `cancelled`.
    Cancelled,
    /// Anything else (`none`, `cancelling`, `colo`, a status newer than this code).
    #[default]
    Other,
}

impl Phase {
    /// From QEMU's status name; never fails.
    pub fn from_qemu(status: &str) -> Phase {
        match status {
            "setup" => Phase::Setup,
            "active" => Phase::Precopy,
            "pre-switchover" | "device" | "wait-unplug" => Phase::Switchover,
            "postcopy-active" => Phase::Postcopy,
            "postcopy-paused" => Phase::PostcopyPaused,
            "postcopy-recover-setup" | "postcopy-recover" => Phase::PostcopyRecovering,
            "completed" => Phase::Completed,
            "failed" => Phase::Failed,
            "cancelled" => Phase::Cancelled,
            _ => Phase::Other,
        }
    }

    /// Completed, failed or cancelled.
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Cancelled)
    }

    /// Post-copy has started: the guest runs on the target and cannot be cancelled back.
    pub fn is_postcopy(self) -> bool {
        matches!(self, Phase::Postcopy | Phase::PostcopyPaused | Phase::PostcopyRecovering)
    }
}

/// One observation of the outgoing migration (the source's `query-migrate`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Milliseconds since the migration started.
    pub at_ms: u64,
    /// QEMU's status.
    pub status: Phase,
    /// `ram.dirty-sync-count` (pass 1 is the bulk copy).
    pub pass: u64,
    /// `ram.remaining`.
    pub remaining_bytes: u64,
    /// `ram.transferred`.
    pub transferred_bytes: u64,
    /// `ram.mbps` in bytes per second.
    pub rate_bytes_per_s: u64,
    /// `ram.dirty-pages-rate` × page size.
    pub dirty_rate_bytes_per_s: u64,
    /// `expected-downtime` (0 when absent).
    pub expected_downtime_ms: u64,
    /// `cpu-throttle-percentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_pct: Option<u64>,
    /// Bytes QEMU has written to the migration's connections that the source's kernel still
    /// holds unacknowledged (its socket queues): they reach the target only after they
    /// drain, so once QEMU stops the guest they lengthen its pause. 0 when unknown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub in_flight_bytes: u64,
}

impl Sample {
    /// The dirty set found at the last bitmap sync: QEMU 10's `expected-downtime` is that
    /// set divided by the transfer rate, so it is the same all through a pass, while
    /// `remaining` falls from the set to nearly nothing within every pass. Falls back to
    /// `remaining` when QEMU gives no expected downtime.
    pub fn dirty_set_bytes(&self) -> u64 {
        if self.expected_downtime_ms > 0 && self.rate_bytes_per_s > 0 {
            let b = u128::from(self.expected_downtime_ms) * u128::from(self.rate_bytes_per_s) / 1000;
            u64::try_from(b).unwrap_or(u64::MAX)
        } else {
            self.remaining_bytes
        }
    }
}

/// The figures behind an action.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Figures {
    /// When, milliseconds since the migration started.
    pub at_ms: u64,
    /// Pass (`dirty-sync-count`).
    pub pass: u64,
    /// The dirty set now ([`Sample::dirty_set_bytes`]).
    pub dirty_set_bytes: u64,
    /// The lowest dirty set of the window.
    pub window_low_bytes: u64,
    /// How long the window ran without a new low, milliseconds.
    pub window_ms: u64,
    /// How many passes it spanned.
    pub window_passes: u64,
    /// `ram.remaining`.
    pub remaining_bytes: u64,
    /// Transfer rate.
    pub rate_bytes_per_s: u64,
    /// Dirty rate.
    pub dirty_rate_bytes_per_s: u64,
    /// The downtime limit in force.
    pub downtime_limit_ms: u64,
    /// QEMU's expected downtime.
    pub expected_downtime_ms: u64,
    /// Auto-converge throttle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_pct: Option<u64>,
    /// Bytes in flight on the migration's connections ([`Sample::in_flight_bytes`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub in_flight_bytes: u64,
}

/// Why an action was taken: one line and the figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Why {
    /// One line, with the figures that decided.
    pub reason: String,
    /// The figures.
    pub figures: Figures,
}

/// A rung of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rung", rename_all = "kebab-case")]
pub enum Rung {
    /// Pre-copy with this downtime limit.
    Downtime {
        /// The limit.
        limit_ms: u64,
    },
    /// Auto-converge throttling the guest up to `max_pct`.
    AutoConverge {
        /// The ceiling.
        max_pct: u8,
    },
    /// Dirty-limit: each vCPU dirties at most `mb_per_s`.
    DirtyLimit {
        /// The limit.
        mb_per_s: u64,
    },
    /// Post-copy.
    Postcopy,
}

impl fmt::Display for Rung {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rung::Downtime { limit_ms } => write!(f, "downtime limit {limit_ms} ms"),
            Rung::AutoConverge { max_pct } => write!(f, "auto-converge up to {max_pct} %"),
            Rung::DirtyLimit { mb_per_s } => write!(f, "dirty-limit {mb_per_s} MB/s per vCPU"),
            Rung::Postcopy => f.write_str("post-copy"),
        }
    }
}

/// The current rung, for progress display: `rung 2/7: downtime limit 100 ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RungInfo {
    /// The rung.
    pub rung: Rung,
    /// Its place on the ladder, from 1.
    pub step: usize,
    /// How many rungs the ladder has.
    pub of: usize,
    /// The downtime limit in force.
    pub downtime_limit_ms: u64,
}

impl fmt::Display for RungInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rung {}/{}: {}", self.step, self.of, self.rung)
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    /// The anchor: the dirty set must fall below it by PROGRESS_PCT to count as progress.
    anchor_bytes: u64,
    /// The lowest dirty set seen in the window.
    low_bytes: u64,
    since_ms: u64,
    since_pass: u64,
}

/// One sample's bytes in flight and how long they take to drain.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    bytes: u64,
    rate_bytes_per_s: u64,
    drain_ms: u64,
}

/// Post-copy's last progress: the bytes sent and since when they have not grown.
#[derive(Debug, Clone, Copy)]
struct Moving {
    transferred_bytes: u64,
    since_ms: u64,
    pause_asked: bool,
}

#[derive(Debug, Clone, Copy)]
struct Paused {
    since_ms: u64,
    attempts: u32,
    next_ms: u64,
}

/// The ladder of one migration. See the module documentation and docs/DESIGN.md.
#[derive(Debug, Clone)]
pub struct Ladder {
    setup: Setup,
    timeout_ms: u64,
    rungs: Vec<Rung>,
    at: usize,
    /// The rung's downtime limit: the longest pause the guest may have.
    downtime_ms: u64,
    /// The limit QEMU has: `downtime_ms` less what the bytes in flight need to drain.
    applied_ms: u64,
    /// The last samples' bytes in flight and their drain time at the rate of the moment.
    in_flight: VecDeque<InFlight>,
    window: Option<Window>,
    throttle_seen: Option<u64>,
    exhausted: bool,
    postcopy_asked: bool,
    in_postcopy: bool,
    cancelled: bool,
    paused: Option<Paused>,
    moving: Option<Moving>,
    finished: Option<Phase>,
    last: Option<Sample>,
}

impl Ladder {
    /// The ladder for a migration with `params` between QEMUs that can `features`, given
    /// what is known at the start. Apply [`Ladder::setup`] before `migrate`.
    pub fn new(params: &MigrationParams, features: &Features, start: &Start) -> Ladder {
        let setup = setup(params, features, start);
        let max = params.max_downtime_ms.max(1);
        let mut rungs: Vec<Rung> = downtime_rungs(setup.initial_downtime_ms, max)
            .into_iter()
            .map(|limit_ms| Rung::Downtime { limit_ms })
            .collect();
        match setup.throttle {
            Some(ThrottleKind::AutoConverge) => rungs.extend(THROTTLE_CEILINGS_PCT.iter().map(|&max_pct| Rung::AutoConverge { max_pct })),
            Some(ThrottleKind::DirtyLimit) => rungs.extend(dirty_limit_rungs(start).into_iter().map(|mb_per_s| Rung::DirtyLimit { mb_per_s })),
            None => {}
        }
        if setup.postcopy {
            rungs.push(Rung::Postcopy);
        }
        Ladder {
            downtime_ms: setup.initial_downtime_ms,
            applied_ms: setup.initial_downtime_ms,
            in_flight: VecDeque::with_capacity(IN_FLIGHT_WINDOW),
            setup,
            timeout_ms: params.timeout_s.saturating_mul(1000),
            rungs,
            at: 0,
            window: None,
            throttle_seen: None,
            exhausted: false,
            postcopy_asked: false,
            in_postcopy: false,
            cancelled: false,
            paused: None,
            moving: None,
            finished: None,
            last: None,
        }
    }

    /// What to set on both QEMUs before `migrate`.
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// Every rung, bottom first.
    pub fn rungs(&self) -> &[Rung] {
        &self.rungs
    }

    /// The current rung.
    pub fn rung(&self) -> RungInfo {
        RungInfo {
            rung: self.rungs.get(self.at).copied().unwrap_or(Rung::Downtime { limit_ms: self.downtime_ms }),
            step: self.at + 1,
            of: self.rungs.len(),
            downtime_limit_ms: self.downtime_ms,
        }
    }

    /// The agent could not pause a hung post-copy (the target was not in post-copy yet,
    /// say): a stall from now on asks again.
    pub fn pause_failed(&mut self) {
        if let (Some(m), Some(s)) = (self.moving.as_mut(), self.last.as_ref()) {
            *m = Moving { transferred_bytes: m.transferred_bytes, since_ms: s.at_ms, pause_asked: false };
        }
    }

    /// Takes the next sample; returns what to do now (mostly nothing).
    pub fn observe(&mut self, s: &Sample) -> Vec<Action> {
        self.last = Some(s.clone());
        if self.finished.is_some() || self.cancelled {
            return Vec::new();
        }
        match s.status {
            p if p.is_finished() => {
                self.finished = Some(p);
                Vec::new()
            }
            Phase::Postcopy => {
                self.in_postcopy = true;
                self.paused = None;
                self.on_postcopy(s).into_iter().collect()
            }
            Phase::PostcopyRecovering => {
                self.in_postcopy = true;
                self.paused = None;
                self.moving = None;
                Vec::new()
            }
            Phase::PostcopyPaused => {
                self.in_postcopy = true;
                self.moving = None;
                self.on_paused(s).into_iter().collect()
            }
            Phase::Setup | Phase::Precopy if !self.in_postcopy => {
                if s.at_ms >= self.timeout_ms {
                    self.cancelled = true;
                    let reason = format!(
                        "the timeout of {} passed at {} without convergence; the guest stays on the source",
                        fmt_ms(self.timeout_ms),
                        self.rung()
                    );
                    return vec![Action::Cancel { why: self.why(s, reason) }];
                }
                if s.status == Phase::Precopy {
                    let a = self.on_precopy(s);
                    self.keep_for_in_flight(s, a)
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    /// Post-copy runs: it must keep moving bytes. A connection that hangs without an error
    /// (a link down, a partition) never pauses by itself; after [`super::POSTCOPY_STALL_MS`]
    /// without a byte the target pauses it, once per stall.
    fn on_postcopy(&mut self, s: &Sample) -> Option<Action> {
        let m = self.moving.get_or_insert(Moving { transferred_bytes: s.transferred_bytes, since_ms: s.at_ms, pause_asked: false });
        if s.transferred_bytes != m.transferred_bytes {
            *m = Moving { transferred_bytes: s.transferred_bytes, since_ms: s.at_ms, pause_asked: false };
            return None;
        }
        let still = s.at_ms.saturating_sub(m.since_ms);
        if m.pause_asked || still < super::POSTCOPY_STALL_MS || s.remaining_bytes == 0 {
            return None;
        }
        m.pause_asked = true;
        let reason = format!(
            "post-copy moved no byte for {} with {} still on the source: the link hangs",
            fmt_ms(still),
            fmt_mib(s.remaining_bytes)
        );
        Some(Action::PausePostcopy { why: self.why(s, reason) })
    }

    fn on_paused(&mut self, s: &Sample) -> Option<Action> {
        let p = self.paused.get_or_insert(Paused { since_ms: s.at_ms, attempts: 0, next_ms: s.at_ms.saturating_add(RECOVER_FIRST_MS) });
        if s.at_ms < p.next_ms {
            return None;
        }
        p.attempts += 1;
        let backoff = RECOVER_FIRST_MS.saturating_mul(1 << p.attempts.min(16)).min(RECOVER_MAX_MS);
        p.next_ms = s.at_ms.saturating_add(backoff);
        let (attempt, since) = (p.attempts, p.since_ms);
        let reason = format!(
            "post-copy paused for {} with {} still on the source; the guest waits on the target for its missing pages",
            fmt_ms(s.at_ms.saturating_sub(since)),
            fmt_mib(s.remaining_bytes)
        );
        Some(Action::RecoverPostcopy { attempt, why: self.why(s, reason) })
    }

    fn on_throttle_rung(&self) -> bool {
        matches!(self.rungs.get(self.at), Some(Rung::AutoConverge { .. } | Rung::DirtyLimit { .. }))
    }

    fn on_precopy(&mut self, s: &Sample) -> Option<Action> {
        if s.pass < 2 || self.postcopy_asked {
            // The bulk pass always makes progress; after asking for post-copy, wait for it.
            return None;
        }
        let v = s.dirty_set_bytes();
        if let Some(t) = s.throttle_pct {
            // QEMU raised the throttle: the guest was just slowed further, give it a window.
            if self.on_throttle_rung() && self.throttle_seen.is_some_and(|old| t > old) {
                self.window = None;
            }
            self.throttle_seen = Some(t);
        }
        let fresh = Window { anchor_bytes: v, low_bytes: v, since_ms: s.at_ms, since_pass: s.pass };
        let w = self.window.get_or_insert(fresh);
        w.low_bytes = w.low_bytes.min(v);
        if u128::from(v) * 100 < u128::from(w.anchor_bytes) * u128::from(100 - PROGRESS_PCT) {
            *w = fresh;
            return None;
        }
        let w = *w;
        // Within reach: QEMU switches over by itself at its next check.
        if u128::from(v) * 1000 <= u128::from(s.rate_bytes_per_s) * u128::from(self.applied_ms) {
            return None;
        }
        let (window_ms, window_passes) = (s.at_ms.saturating_sub(w.since_ms), s.pass.saturating_sub(w.since_pass));
        if window_ms < STUCK_WINDOW_MS || window_passes < STUCK_PASSES {
            return None;
        }
        let carries = u128::from(s.rate_bytes_per_s) * u128::from(self.applied_ms) / 1000;
        let stuck = format!(
            "stuck at {}: the dirty set stayed at {} or more for {window_passes} passes / {} (no drop of {PROGRESS_PCT} % below {}); {} ms carries {} at {}, dirtied {}",
            self.rung(),
            fmt_mib(w.low_bytes),
            fmt_ms(window_ms),
            fmt_mib(w.anchor_bytes),
            self.applied_ms,
            fmt_mib(u64::try_from(carries).unwrap_or(u64::MAX)),
            fmt_rate(s.rate_bytes_per_s),
            fmt_rate(s.dirty_rate_bytes_per_s),
        );
        let mut why = self.why(s, stuck);
        why.figures.window_low_bytes = w.low_bytes;
        why.figures.window_ms = window_ms;
        why.figures.window_passes = window_passes;
        if self.at + 1 >= self.rungs.len() {
            if self.exhausted {
                return None;
            }
            self.exhausted = true;
            why.reason.push_str(&format!(
                "; nothing left: the timeout cancels in {}",
                fmt_ms(self.timeout_ms.saturating_sub(s.at_ms))
            ));
            return Some(Action::Exhausted { why });
        }
        if self.rungs[self.at + 1] == Rung::Postcopy && s.rate_bytes_per_s == 0 {
            // A link that moves nothing now could break during the switch, when QEMU 10
            // can neither finish nor go back: wait for it to move.
            return None;
        }
        self.at += 1;
        self.window = None;
        let first_throttle = !matches!(self.rungs.get(self.at - 1), Some(Rung::AutoConverge { .. } | Rung::DirtyLimit { .. }));
        Some(match self.rungs[self.at] {
            Rung::Downtime { limit_ms } => {
                self.downtime_ms = limit_ms;
                Action::SetDowntimeLimit { ms: limit_ms, in_flight_ms: 0, why }
            }
            Rung::AutoConverge { max_pct } => {
                let params = if first_throttle {
                    ThrottleParams {
                        cpu_throttle_initial_pct: Some(THROTTLE_INITIAL_PCT.min(max_pct)),
                        cpu_throttle_increment_pct: Some(THROTTLE_INCREMENT_PCT),
                        max_cpu_throttle_pct: Some(max_pct),
                        cpu_throttle_tailslow: Some(false),
                        vcpu_dirty_limit_mb_per_s: None,
                    }
                } else {
                    ThrottleParams { max_cpu_throttle_pct: Some(max_pct), ..ThrottleParams::default() }
                };
                throttle_action(first_throttle, params, why)
            }
            Rung::DirtyLimit { mb_per_s } => {
                let params = ThrottleParams { vcpu_dirty_limit_mb_per_s: Some(mb_per_s), ..ThrottleParams::default() };
                throttle_action(first_throttle, params, why)
            }
            Rung::Postcopy => {
                self.postcopy_asked = true;
                Action::StartPostcopy { why }
            }
        })
    }

    /// Keeps part of the rung's downtime limit for the bytes in flight: QEMU decides to
    /// switch over when what is left fits its limit at the current rate, but what it has
    /// already written and the kernel still holds must reach the target first. QEMU gets
    /// the rung's limit less the longest drain time of the last [`IN_FLIGHT_WINDOW`]
    /// samples (at least [`MIN_QEMU_DOWNTIME_MS`]), set again when that moves by
    /// [`RETUNE_MIN_MS`] and a tenth. A rung's own action carries the adjusted figure.
    fn keep_for_in_flight(&mut self, s: &Sample, a: Option<Action>) -> Vec<Action> {
        if s.rate_bytes_per_s > 0 {
            if self.in_flight.len() == IN_FLIGHT_WINDOW {
                self.in_flight.pop_front();
            }
            let drain = u128::from(s.in_flight_bytes) * 1000 / u128::from(s.rate_bytes_per_s);
            let drain_ms = u64::try_from(drain).unwrap_or(u64::MAX);
            self.in_flight.push_back(InFlight { bytes: s.in_flight_bytes, rate_bytes_per_s: s.rate_bytes_per_s, drain_ms });
        }
        let worst = self.in_flight.iter().copied().max_by_key(|f| f.drain_ms);
        let drain_ms = worst.map_or(0, |f| f.drain_ms);
        let wanted = self.downtime_ms.saturating_sub(drain_ms).max(MIN_QEMU_DOWNTIME_MS.min(self.downtime_ms));
        let kept = self.downtime_ms - wanted;
        let mut out = Vec::new();
        match a {
            Some(Action::SetDowntimeLimit { why, .. }) => {
                self.applied_ms = wanted;
                return vec![Action::SetDowntimeLimit { ms: wanted, in_flight_ms: kept, why }];
            }
            Some(other) => out.push(other),
            None => {}
        }
        if wanted.abs_diff(self.applied_ms) < RETUNE_MIN_MS.max(self.applied_ms / 10) {
            return out;
        }
        self.applied_ms = wanted;
        let reason = match worst {
            Some(f) if kept > 0 => format!(
                "{} in flight (the source's socket queues) drain in {} ms at {}: QEMU's limit {wanted} ms keeps the pause within {} ms",
                fmt_mib(f.bytes),
                f.drain_ms,
                fmt_rate(f.rate_bytes_per_s),
                self.downtime_ms
            ),
            _ => format!("the bytes in flight drain at once now: QEMU's limit back to {} ms", self.downtime_ms),
        };
        let mut why = self.why(s, reason);
        why.figures.in_flight_bytes = worst.map_or(0, |f| f.bytes);
        out.push(Action::SetDowntimeLimit { ms: wanted, in_flight_ms: kept, why });
        out
    }

    fn why(&self, s: &Sample, reason: String) -> Why {
        Why {
            reason,
            figures: Figures {
                at_ms: s.at_ms,
                pass: s.pass,
                dirty_set_bytes: s.dirty_set_bytes(),
                window_low_bytes: 0,
                window_ms: 0,
                window_passes: 0,
                remaining_bytes: s.remaining_bytes,
                rate_bytes_per_s: s.rate_bytes_per_s,
                dirty_rate_bytes_per_s: s.dirty_rate_bytes_per_s,
                downtime_limit_ms: self.downtime_ms,
                expected_downtime_ms: s.expected_downtime_ms,
                throttle_pct: s.throttle_pct,
                in_flight_bytes: s.in_flight_bytes,
            },
        }
    }

    /// Estimated time to completion from the last sample, milliseconds: pre-copy at the
    /// current rung by the geometric model (`None` when it does not converge there), the
    /// rest of post-copy at the current rate, 0 when finished.
    pub fn eta_ms(&self) -> Option<u64> {
        if self.finished.is_some() {
            return Some(0);
        }
        let s = self.last.as_ref()?;
        let per_rate = |bytes: u64| (s.rate_bytes_per_s > 0).then(|| u64::try_from(u128::from(bytes) * 1000 / u128::from(s.rate_bytes_per_s)).unwrap_or(u64::MAX));
        match s.status {
            p if p.is_finished() => Some(0),
            Phase::Postcopy | Phase::PostcopyRecovering => per_rate(s.remaining_bytes),
            Phase::Precopy if s.pass < 2 => per_rate(s.remaining_bytes),
            Phase::Precopy => {
                let tail = precopy_tail_ms(s.dirty_set_bytes(), s.dirty_rate_bytes_per_s, s.rate_bytes_per_s, self.applied_ms)?;
                Some(tail.total_ms)
            }
            _ => None,
        }
    }
}

fn throttle_action(first: bool, params: ThrottleParams, why: Why) -> Action {
    if first {
        Action::UnparkThrottle { params, why }
    } else {
        Action::RaiseThrottle { params, why }
    }
}
