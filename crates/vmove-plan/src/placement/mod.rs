//! Placement: where each guest of a drain (`vmove host drain`) or an evacuation
//! (`vmove host evacuate`) goes. Pure: the caller gathers the inventories.
//!
//! [`plan`] takes the cluster file, every host's inventory (or why it did not answer), which
//! hosts are drained, and the guests to move with their source and mode, and chooses a
//! target for each guest that passes every precheck decidable without running anything —
//! the very check functions of [`crate::checks`] (networks, pools, versions, memory with the
//! host reserve and no overcommit, the vCPU ratio, the name, MACs and console port free,
//! and for LIVE the CPU and the policy minimums) — evaluated against each host's inventory
//! *as projected* with the guests this plan already sent there (memory, vCPUs, names, MACs,
//! console ports). A move may also require QEMU capabilities (`postcopy-ram`, ...) that
//! its target must have.
//!
//! The algorithm, deterministic:
//! 1. Guests are taken largest first (memory, then vCPUs, then name).
//! 2. The target-independent checks run once per guest (in the cluster file, the file
//!    matches the source, the source answers, no outstanding work on the guest or the
//!    source; LIVE: the guest runs, the channel is encrypted, convergence is predicted).
//!    A failure leaves the guest unplaced with that reason.
//! 3. Hosts that are the source, drained, unreachable or excluded by the caller are
//!    skipped (each with its reason). The others are ranked: hosts without a guest of the
//!    guest's anti-affinity group first, then by the utilisation the host would have with
//!    the guest — the larger of its memory share (committed / (total − reserve)) and its
//!    vCPU share (committed / (CPUs × overcommit ratio)) — so the load stays even, then by
//!    the sum of both shares, then by host name (natural order: `host2` < `host10`).
//! 4. The first ranked host that passes every target check gets the guest; its projected
//!    inventory is updated. Warnings of the chosen host's checks, a changed console port
//!    and an anti-affinity group that could not be honoured become the move's notes.
//! 5. When no host passes, the guest is unplaced with, per host, every failing check, and a
//!    one-line summary (`no host has 8 GiB available (best: host3 with 6.2 GiB)`).
//!
//! Memory a guest leaves on its source is not counted as free: sources are drained or
//! dead, and a move that frees it has not run yet.
//!
//! At run time the runner retries a failed move once on another target with
//! [`replan_one`]; [`mod@crate::schedule`] orders the moves and limits how many run at once.
use std::fmt;

use serde::{Deserialize, Serialize};
use vmove_model::Cluster;

use crate::checks::{Busy, CheckId, Reach};
use crate::mode::Mode;

mod choose;
mod duration;
mod project;
mod summary;
#[cfg(test)]
mod tests;

pub use duration::DurationModel;
pub use summary::fmt_mib;

use choose::{place_one, Outcome};
use project::Projection;

/// A host as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostView<'a> {
    /// Host name, as in the cluster file.
    pub name: String,
    /// Its inventory, or why its agent did not answer.
    pub reach: Reach<'a>,
    /// In maintenance (being drained): no new guests, no migrations in.
    pub drained: bool,
    /// QEMU migration capabilities the host supports (`postcopy-ram`, ...), as its agent
    /// reports them (`HostInfo::qemu`).
    pub qemu_capabilities: Vec<String>,
}

impl<'a> HostView<'a> {
    /// A host that answered, drained when its agent reports maintenance, with the QEMU
    /// capabilities it reported.
    pub fn answered(info: &'a vmove_model::inventory::HostInfo) -> HostView<'a> {
        HostView {
            name: info.name.clone(),
            reach: Reach::Answered(info),
            drained: info.maintenance.is_some(),
            qemu_capabilities: info.qemu.migration_capabilities.clone(),
        }
    }

    /// A host whose agent did not answer, with the one-line reason.
    pub fn unreachable(name: &str, why: &str) -> HostView<'a> {
        HostView {
            name: name.to_string(),
            reach: Reach::Unreachable(why.to_string()),
            drained: false,
            qemu_capabilities: Vec::new(),
        }
    }
}

/// One guest to move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    /// Guest name.
    pub guest: String,
    /// The host it is on now.
    pub source: String,
    /// How to move it (a drain: LIVE, or OFFLINE for stopped guests; an evacuation:
    /// OFFLINEFORCE).
    pub mode: Mode,
    /// QEMU capabilities the target must have (`postcopy-ram` for a post-copy move).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_capabilities: Vec<String>,
    /// Memory dirty rate measured on the source, bytes per second (LIVE convergence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_rate_bytes_per_s: Option<u64>,
    /// The caller's predicted duration of the move, seconds; `None`: [`DurationModel`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_s: Option<u64>,
}

impl MoveRequest {
    /// Moves `guest` from `source` in `mode`, nothing else known.
    pub fn new(guest: &str, source: &str, mode: Mode) -> MoveRequest {
        MoveRequest {
            guest: guest.to_string(),
            source: source.to_string(),
            mode,
            required_capabilities: Vec::new(),
            dirty_rate_bytes_per_s: None,
            predicted_s: None,
        }
    }

    /// Every guest the cluster file places on `host`, in name order, moved in `mode`.
    pub fn for_host(cluster: &Cluster, host: &str, mode: Mode) -> Vec<MoveRequest> {
        let mut v: Vec<MoveRequest> = cluster
            .guests
            .iter()
            .filter(|g| g.host == host)
            .map(|g| MoveRequest::new(&g.name, host, mode))
            .collect();
        v.sort_by(|a, b| a.guest.cmp(&b.guest));
        v
    }
}

/// Everything the planner looks at.
#[derive(Debug, Clone)]
pub struct PlacementInput<'a> {
    /// The cluster file (guest definitions, groups, networks, policy).
    pub cluster: &'a Cluster,
    /// The hosts. A host of the cluster file missing here is treated as unreachable; a
    /// host missing from the cluster file is ignored.
    pub hosts: Vec<HostView<'a>>,
    /// Unfinished jobs and pending work.
    pub busy: &'a [Busy],
    /// Migration link throughput, bytes per second (LIVE convergence check).
    pub link_bytes_per_s: Option<u64>,
    /// Predicted durations of moves whose request has none.
    pub durations: DurationModel,
}

impl<'a> PlacementInput<'a> {
    /// No outstanding work, the link and durations of the cluster's policy.
    pub fn new(cluster: &'a Cluster, hosts: Vec<HostView<'a>>) -> PlacementInput<'a> {
        PlacementInput {
            cluster,
            hosts,
            busy: &[],
            link_bytes_per_s: cluster.policy.migration_link_bytes_per_s,
            durations: DurationModel::for_policy(&cluster.policy),
        }
    }
}

/// A move the planner chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMove {
    /// Guest name.
    pub guest: String,
    /// Source host.
    pub from: String,
    /// Target host.
    pub to: String,
    /// Migration mode.
    pub mode: Mode,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// Guest vCPUs.
    pub vcpus: u32,
    /// The guest's anti-affinity group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The console port the guest will have on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_port: Option<u16>,
    /// Predicted duration, seconds.
    pub predicted_s: u64,
    /// Warnings and remarks, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl PlannedMove {
    /// A move that is already decided elsewhere (a running job, an action merged but not
    /// deployed), as the planner's limits and projections count it: its hosts and its
    /// guest, nothing of its size.
    pub fn counted(guest: &str, from: &str, to: &str, mode: Mode) -> PlannedMove {
        PlannedMove {
            guest: guest.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            mode,
            memory_mib: 0,
            vcpus: 0,
            group: None,
            console_port: None,
            predicted_s: 0,
            notes: vec![],
        }
    }
}

/// Rules the planner adds to the prechecks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlannerRule {
    /// The host is drained (maintenance): no migrations in.
    HostDrained,
    /// The caller excluded the host (a move to it failed).
    HostExcluded,
    /// The target lacks a QEMU capability the move asks for (`MoveRequest::required_capabilities`).
    RequiredCapabilities,
    /// The guest appears twice in the request list.
    DuplicateRequest,
}

impl PlannerRule {
    /// The stable id, e.g. `host-drained`.
    pub fn as_str(self) -> &'static str {
        match self {
            PlannerRule::HostDrained => "host-drained",
            PlannerRule::HostExcluded => "host-excluded",
            PlannerRule::RequiredCapabilities => "required-capabilities",
            PlannerRule::DuplicateRequest => "duplicate-request",
        }
    }
}

/// Why a host was refused: a precheck or a planner rule (serialized as its stable id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Rule {
    /// A precheck.
    Check(CheckId),
    /// A planner rule.
    Planner(PlannerRule),
}

impl Rule {
    /// The stable id.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Check(c) => c.as_str(),
            Rule::Planner(p) => p.as_str(),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a guest cannot go to a host (or anywhere, when `host` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The host refused; `None` for a reason that holds for every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The rule.
    pub rule: Rule,
    /// The check's one-line reason.
    pub reason: String,
}

/// A guest the planner could not place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    /// Guest name.
    pub guest: String,
    /// Its source host.
    pub from: String,
    /// The requested mode.
    pub mode: Mode,
    /// One line for an operator: `vm1 (8 GiB, 4 vCPUs) fits no host: no host has 8 GiB
    /// available (best: host3 with 6.2 GiB)`.
    pub reason: String,
    /// Every failing rule, per host (hosts in natural order, rules in check order).
    pub rejections: Vec<Rejection>,
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The chosen moves, in the order they were placed (largest guest first).
    pub moves: Vec<PlannedMove>,
    /// Guests with no fitting target, in the same order.
    pub unplaced: Vec<Unplaced>,
}

/// Chooses a target for every request (see the module documentation for the rules).
pub fn plan(input: &PlacementInput, requests: &[MoveRequest]) -> Placement {
    let mut proj = Projection::new(input);
    let mut order: Vec<&MoveRequest> = requests.iter().collect();
    let size = |r: &MoveRequest| {
        proj.spec(&r.guest)
            .map(|g| (g.memory_mib, g.vcpus))
            .unwrap_or((0, 0))
    };
    order.sort_by(|a, b| size(b).cmp(&size(a)).then_with(|| a.guest.cmp(&b.guest)));
    let mut out = Placement::default();
    let mut seen: Vec<&str> = Vec::new();
    for r in order {
        if seen.contains(&r.guest.as_str()) {
            out.unplaced.push(Unplaced {
                guest: r.guest.clone(),
                from: r.source.clone(),
                mode: r.mode,
                reason: format!("{} appears more than once in the request list", r.guest),
                rejections: vec![Rejection {
                    host: None,
                    rule: Rule::Planner(PlannerRule::DuplicateRequest),
                    reason: format!("{} is already in this plan", r.guest),
                }],
            });
            continue;
        }
        seen.push(&r.guest);
        match place_one(&mut proj, r, &[]) {
            Outcome::Placed(m) => out.moves.push(m),
            Outcome::Unplaced(u) => out.unplaced.push(u),
        }
    }
    out
}

/// Chooses another target for one guest, e.g. after its move failed: hosts in `exclude`
/// are skipped. `reserved` are the moves whose targets must be treated as taken although
/// the inventories do not show them yet: with the inventories the plan was made from, every
/// other move of the plan; with fresh inventories, the moves not finished yet. A reserved
/// move of `request`'s own guest is ignored.
pub fn replan_one(
    input: &PlacementInput,
    reserved: &[PlannedMove],
    request: &MoveRequest,
    exclude: &[String],
) -> Result<PlannedMove, Unplaced> {
    let mut proj = Projection::new(input);
    for m in reserved.iter().filter(|m| m.guest != request.guest) {
        proj.reserve_planned(m);
    }
    match place_one(&mut proj, request, exclude) {
        Outcome::Placed(mut m) => {
            if !exclude.is_empty() {
                m.notes
                    .push(format!("replanned without {}", exclude.join(", ")));
            }
            Ok(m)
        }
        Outcome::Unplaced(u) => Err(u),
    }
}
