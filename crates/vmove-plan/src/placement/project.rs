//! Every host's inventory as projected with the guests this plan already sent there.
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use vmove_model::inventory::{GuestState, GuestStatus, HostInfo};
use vmove_model::GuestSpec;

use super::{HostView, PlacementInput, PlannedMove};
use crate::checks::Reach;

/// One host of the cluster file.
pub(crate) struct Slot<'a> {
    /// Host name.
    pub name: &'a str,
    /// What the caller said about it (`None`: nothing).
    pub view: Option<&'a HostView<'a>>,
    /// The inventory with the guests planned onto the host (answered, not drained hosts).
    pub info: Option<HostInfo>,
    /// Anti-affinity group → the guests of that group on the host, defined or planned.
    pub groups: BTreeMap<String, Vec<String>>,
}

/// The hosts (natural name order) and the guest definitions of the cluster file.
pub(crate) struct Projection<'a> {
    pub input: &'a PlacementInput<'a>,
    pub slots: Vec<Slot<'a>>,
    specs: HashMap<&'a str, &'a GuestSpec>,
}

impl<'a> Projection<'a> {
    pub fn new(input: &'a PlacementInput<'a>) -> Projection<'a> {
        let specs: HashMap<&str, &GuestSpec> = input
            .cluster
            .guests
            .iter()
            .map(|g| (g.name.as_str(), g))
            .collect();
        let mut names: Vec<&str> = input
            .cluster
            .hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        names.sort_by(|a, b| natural_cmp(a, b));
        names.dedup();
        let slots = names
            .into_iter()
            .map(|name| {
                let view = input.hosts.iter().find(|h| h.name == name);
                let info = view
                    .filter(|v| !v.drained)
                    .and_then(|v| v.reach.info())
                    .cloned();
                let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for g in info.iter().flat_map(|i| &i.guests) {
                    let group = match specs.get(g.spec.name.as_str()) {
                        Some(file) => file.group.as_ref(),
                        None => g.spec.group.as_ref(),
                    };
                    if let Some(group) = group {
                        groups
                            .entry(group.clone())
                            .or_default()
                            .push(g.spec.name.clone());
                    }
                }
                Slot {
                    name,
                    view,
                    info,
                    groups,
                }
            })
            .collect();
        Projection {
            input,
            slots,
            specs,
        }
    }

    /// The cluster file's definition of a guest.
    pub fn spec(&self, guest: &str) -> Option<&'a GuestSpec> {
        self.specs.get(guest).copied()
    }

    /// The source as the checks see it: its inventory as reported, or why not.
    pub fn source_reach(&self, source: &str) -> Reach<'a> {
        match self.input.hosts.iter().find(|h| h.name == source) {
            Some(v) => v.reach.clone(),
            None => Reach::Unreachable(NO_INVENTORY.to_string()),
        }
    }

    /// Counts `spec` on slot `idx` with console port `port`.
    pub fn reserve(&mut self, idx: usize, spec: &GuestSpec, port: Option<u16>) {
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        if let Some(info) = slot.info.as_mut() {
            let mut s = spec.clone();
            s.host = slot.name.to_string();
            s.console_port = port;
            info.memory_committed_mib += s.memory_mib;
            info.memory_available_mib = info.memory_available_mib.saturating_sub(s.memory_mib);
            info.vcpus_committed += s.vcpus;
            if let Some(p) = port {
                info.console_ports_in_use.push(p);
            }
            info.guests.push(GuestStatus {
                spec: s,
                state: GuestState::Incoming,
                pid: None,
                uptime_s: None,
            });
        }
        if let Some(g) = &spec.group {
            slot.groups
                .entry(g.clone())
                .or_default()
                .push(spec.name.clone());
        }
    }

    /// Counts a move planned earlier on its target.
    pub fn reserve_planned(&mut self, m: &PlannedMove) {
        let (Some(idx), Some(spec)) = (self.slot_index(&m.to), self.spec(&m.guest)) else {
            return;
        };
        self.reserve(idx, spec, m.console_port);
    }

    fn slot_index(&self, host: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == host)
    }
}

/// The reason given for a host the caller said nothing about.
pub(crate) const NO_INVENTORY: &str = "no inventory given to the planner";

/// The utilisation a host would have with `g`: (the larger of the memory and vCPU shares,
/// their sum). Memory share: committed / (total − reserve); vCPU share: committed /
/// (CPUs × `ratio`, rounded down as the vCPU check does). Infinite when the host has none.
pub(crate) fn utilisation(info: &HostInfo, g: &GuestSpec, ratio: f64) -> (f64, f64) {
    let share = |used: u64, cap: u64| {
        if cap == 0 {
            f64::INFINITY
        } else {
            used as f64 / cap as f64
        }
    };
    let usable = info
        .memory_total_mib
        .saturating_sub(info.memory_reserve_mib);
    let mem = share(info.memory_committed_mib + g.memory_mib, usable);
    let limit = (f64::from(info.cpu_count) * ratio).floor().max(0.0) as u64;
    let cpu = share(u64::from(info.vcpus_committed) + u64::from(g.vcpus), limit);
    (mem.max(cpu), mem + cpu)
}

/// The console port `g` gets on the host: its own when free there, else the first free
/// port of the host's range (what the agent does).
pub(crate) fn console_port(info: &HostInfo, wanted: Option<u16>) -> Option<u16> {
    let in_use = &info.console_ports_in_use;
    match wanted {
        Some(p) if !in_use.contains(&p) => Some(p),
        _ => {
            let (lo, hi) = info.console_port_range;
            (lo..=hi).find(|p| !in_use.contains(p))
        }
    }
}

/// `host2` before `host10`: a trailing number compares as a number.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn split(s: &str) -> (&str, Option<u64>) {
        let head = s.trim_end_matches(|c: char| c.is_ascii_digit());
        (head, s[head.len()..].parse().ok())
    }
    split(a).cmp(&split(b)).then_with(|| a.cmp(b))
}
