//! Schedule: in what order the planned moves run, how many at once, and how long the whole
//! drain takes. Pure.
//!
//! Limits ([`Limits`]): at most `max_concurrent` moves in the cluster (default 5), at most
//! `max_out_per_host` moves leaving one host (default 2) and `max_in_per_host` arriving at
//! one host (default 2).
//!
//! [`startable`] is the one rule, shared by the prediction and the runner: given the moves
//! running now and the pending ones in priority order, which pending moves may start now
//! (a move that would break a limit is passed over, later ones may still start).
//! [`schedule`] simulates it with the predicted durations: pending moves longest first
//! (then by guest name), every move that may start starts, time jumps to the next end.
//! Its makespan is the predicted duration of the drain.
//!
//! The runner calls [`startable`] with the pending moves in the order of
//! [`DrainPlan::moves`] each time a move ends, and retries a failed move once on another
//! target ([`crate::placement::replan_one`], excluding the host that failed).
use std::borrow::Borrow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::placement::{Placement, PlannedMove, Unplaced};

#[cfg(test)]
mod tests;

/// How many moves may run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Moves running at once in the cluster.
    pub max_concurrent: usize,
    /// Moves leaving one host at once.
    pub max_out_per_host: usize,
    /// Moves arriving at one host at once.
    pub max_in_per_host: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_concurrent: 5,
            max_out_per_host: 2,
            max_in_per_host: 2,
        }
    }
}

/// Limits that would never let a move start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A limit is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

impl Limits {
    /// Every limit is at least 1.
    pub fn validate(&self) -> Result<(), LimitsError> {
        for (v, what) in [
            (self.max_concurrent, "the cluster's concurrent move limit"),
            (self.max_out_per_host, "the per-host outbound move limit"),
            (self.max_in_per_host, "the per-host inbound move limit"),
        ] {
            if v == 0 {
                return Err(LimitsError::Zero(what));
            }
        }
        Ok(())
    }
}

/// The pending moves (indices into `pending`, in its order) that may start now beside
/// `running` without exceeding `limits`, all of them together. A guest already running is
/// never started twice; zero limits start nothing.
pub fn startable<P: Borrow<PlannedMove>, R: Borrow<PlannedMove>>(
    pending: &[P],
    running: &[R],
    limits: &Limits,
) -> Vec<usize> {
    let mut total = running.len();
    let mut out_n: HashMap<&str, usize> = HashMap::new();
    let mut in_n: HashMap<&str, usize> = HashMap::new();
    let mut busy: Vec<&str> = Vec::new();
    for r in running {
        let r = r.borrow();
        *out_n.entry(&r.from).or_default() += 1;
        *in_n.entry(&r.to).or_default() += 1;
        busy.push(&r.guest);
    }
    let mut picked = Vec::new();
    for (i, p) in pending.iter().enumerate() {
        if total >= limits.max_concurrent {
            break;
        }
        let p = p.borrow();
        let outs = out_n.get(p.from.as_str()).copied().unwrap_or(0);
        let ins = in_n.get(p.to.as_str()).copied().unwrap_or(0);
        if outs >= limits.max_out_per_host
            || ins >= limits.max_in_per_host
            || busy.contains(&p.guest.as_str())
        {
            continue;
        }
        *out_n.entry(&p.from).or_default() += 1;
        *in_n.entry(&p.to).or_default() += 1;
        busy.push(&p.guest);
        total += 1;
        picked.push(i);
    }
    picked
}

/// A move with its predicted start and end, seconds from the start of the drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledMove {
    /// The move.
    #[serde(flatten)]
    pub planned: PlannedMove,
    /// Predicted start, seconds.
    pub start_s: u64,
    /// Predicted end, seconds.
    pub end_s: u64,
}

/// The predicted run of a set of moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Every move, by start time (then in the order they were started).
    pub moves: Vec<ScheduledMove>,
    /// When the last move ends, seconds.
    pub makespan_s: u64,
}

/// Simulates [`startable`] with the moves' predicted durations.
pub fn schedule(moves: &[PlannedMove], limits: &Limits) -> Result<Schedule, LimitsError> {
    limits.validate()?;
    let mut pending: Vec<&PlannedMove> = moves.iter().collect();
    pending.sort_by(|a, b| {
        b.predicted_s
            .cmp(&a.predicted_s)
            .then_with(|| a.guest.cmp(&b.guest))
            .then_with(|| a.to.cmp(&b.to))
    });
    let mut running: Vec<(u64, &PlannedMove)> = Vec::new();
    let mut out = Vec::with_capacity(moves.len());
    let mut now = 0u64;
    loop {
        let now_running: Vec<&PlannedMove> = running.iter().map(|(_, m)| *m).collect();
        let picks = startable(&pending, &now_running, limits);
        for &i in &picks {
            let m = pending[i];
            let end_s = now.saturating_add(m.predicted_s);
            running.push((end_s, m));
            out.push(ScheduledMove {
                planned: m.clone(),
                start_s: now,
                end_s,
            });
        }
        for i in picks.into_iter().rev() {
            pending.remove(i);
        }
        let Some(next) = running.iter().map(|(end, _)| *end).min() else {
            break;
        };
        now = next;
        running.retain(|(end, _)| *end > now);
    }
    let makespan_s = out.iter().map(|m| m.end_s).max().unwrap_or(0);
    Ok(Schedule {
        moves: out,
        makespan_s,
    })
}

/// What `vmove host drain` / `evacuate` show and run: the scheduled moves, the guests that
/// fit nowhere and the predicted total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainPlan {
    /// The moves, by predicted start.
    pub moves: Vec<ScheduledMove>,
    /// Guests with no fitting target, and why.
    pub unplaced: Vec<Unplaced>,
    /// The limits the schedule obeys.
    pub limits: Limits,
    /// Predicted duration of the whole drain (makespan), seconds.
    pub predicted_total_s: u64,
}

impl DrainPlan {
    /// Schedules a placement's moves under `limits`.
    pub fn new(placement: Placement, limits: Limits) -> Result<DrainPlan, LimitsError> {
        let s = schedule(&placement.moves, &limits)?;
        Ok(DrainPlan {
            moves: s.moves,
            unplaced: placement.unplaced,
            limits,
            predicted_total_s: s.makespan_s,
        })
    }

    /// The planned moves, in the order the runner should pass them to [`startable`].
    pub fn pending(&self) -> Vec<&PlannedMove> {
        self.moves.iter().map(|m| &m.planned).collect()
    }
}
