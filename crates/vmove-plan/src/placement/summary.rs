//! One line for an operator on why a guest fits no host.
use vmove_model::GuestSpec;

use super::project::Projection;
use super::{PlannerRule, Rejection, Rule};
use crate::checks::{plural, CheckId};

/// At most this many host names are listed per rule.
const MAX_HOSTS_LISTED: usize = 3;

/// `512 MiB`, `8 GiB`, `6.2 GiB`.
pub fn fmt_mib(mib: u64) -> String {
    if mib < 1024 {
        return format!("{mib} MiB");
    }
    let tenths = (mib * 10 + 512) / 1024;
    if tenths % 10 == 0 {
        format!("{} GiB", tenths / 10)
    } else {
        format!("{}.{} GiB", tenths / 10, tenths % 10)
    }
}

/// `vm1 cannot move: guest-running: vm1 is stopped on host1: ...`.
pub(crate) fn guest_level(guest: &str, fails: &[&Rejection]) -> String {
    let why: Vec<String> = fails
        .iter()
        .map(|r| format!("{}: {}", r.rule, r.reason))
        .collect();
    format!("{guest} cannot move: {}", why.join("; "))
}

/// `host2, host3, host4 and 5 more`.
fn names(list: &[&str]) -> String {
    let shown = list
        .iter()
        .take(MAX_HOSTS_LISTED)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if list.len() > MAX_HOSTS_LISTED {
        format!("{shown} and {} more", list.len() - MAX_HOSTS_LISTED)
    } else {
        shown
    }
}

/// `vm1 (8 GiB, 4 vCPUs) fits no host: no host has 8 GiB available (best: host3 with
/// 6.2 GiB); networks-on-target fails on 1 of 3 hosts (host2), e.g. on host2: ...;
/// drained: host1`. `candidates` are the slots fully evaluated, `per_host` every
/// rejection with its slot, in slot order.
pub(crate) fn unplaced(
    proj: &Projection,
    spec: &GuestSpec,
    candidates: &[usize],
    per_host: &[(usize, Rejection)],
) -> String {
    let (tried, skipped): (Vec<_>, Vec<_>) = per_host
        .iter()
        .map(|(i, r)| (*i, r))
        .partition(|(i, _)| candidates.contains(i));
    let m = candidates.len();
    let mut parts = Vec::new();
    if m == 0 {
        parts.push("no host left to try".to_string());
    }
    let ratio = proj.input.cluster.policy.vcpu_overcommit_ratio;
    for (rule, hit) in by_rule(&tried) {
        let hosts: Vec<&str> = hit.iter().map(|(i, _)| proj.slots[*i].name).collect();
        let k = hosts.len();
        // The failing host with the most of what is missing (first in name order on ties).
        let best = |value: &dyn Fn(usize) -> u64| {
            hit.iter()
                .map(|(i, _)| (value(*i), *i))
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
                .map(|(v, i)| (proj.slots[i].name, v))
        };
        let info_of = |i: usize| proj.slots[i].info.as_ref();
        let (scope, best_of) = if k == m {
            ("no host has".to_string(), "best")
        } else {
            (format!("{k} of {m} hosts lack"), "best of them")
        };
        match rule {
            Rule::Check(CheckId::TargetMemory) => {
                let avail = |i| info_of(i).map_or(0, |x| x.memory_available_mib);
                let mut s = format!("{scope} {} available", fmt_mib(spec.memory_mib));
                if let Some((h, v)) = best(&avail) {
                    s.push_str(&format!(" ({best_of}: {h} with {})", fmt_mib(v)));
                }
                parts.push(s);
            }
            Rule::Check(CheckId::VcpuOvercommit) => {
                let room = |i| info_of(i).map_or(0, |x| vcpu_room(x, ratio));
                let more = plural(spec.vcpus as usize, "more vCPU");
                let mut s = format!("{scope} room for {more} within ratio {ratio}");
                if let Some((h, v)) = best(&room) {
                    s.push_str(&format!(" ({best_of}: {h} with {v})"));
                }
                parts.push(s);
            }
            _ => parts.push(format!(
                "{rule} fails on {k} of {m} hosts ({}), e.g. {}",
                names(&hosts),
                hit[0].1.reason
            )),
        }
    }
    for (rule, hit) in by_rule(&skipped) {
        let hosts: Vec<&str> = hit.iter().map(|(i, _)| proj.slots[*i].name).collect();
        let what = match rule {
            Rule::Check(CheckId::TargetIsNotSource) => continue,
            Rule::Check(CheckId::TargetReachable) => "unreachable".to_string(),
            Rule::Planner(PlannerRule::HostDrained) => "drained".to_string(),
            Rule::Planner(PlannerRule::HostExcluded) => "excluded".to_string(),
            other => other.to_string(),
        };
        parts.push(format!("{what}: {}", names(&hosts)));
    }
    format!(
        "{} ({}, {}) fits no host: {}",
        spec.name,
        fmt_mib(spec.memory_mib),
        plural(spec.vcpus as usize, "vCPU"),
        parts.join("; ")
    )
}

/// Rejections grouped by rule, rules in order, hosts in slot order.
fn by_rule<'r>(list: &[(usize, &'r Rejection)]) -> Vec<(Rule, Vec<(usize, &'r Rejection)>)> {
    let mut rules: Vec<Rule> = list.iter().map(|(_, r)| r.rule).collect();
    rules.sort();
    rules.dedup();
    rules
        .into_iter()
        .map(|rule| {
            let hit = list
                .iter()
                .filter(|(_, r)| r.rule == rule)
                .copied()
                .collect();
            (rule, hit)
        })
        .collect()
}

/// vCPUs a host may still take within the overcommit ratio.
fn vcpu_room(info: &vmove_model::inventory::HostInfo, ratio: f64) -> u64 {
    let limit = (f64::from(info.cpu_count) * ratio).floor().max(0.0) as u64;
    limit.saturating_sub(u64::from(info.vcpus_committed))
}
