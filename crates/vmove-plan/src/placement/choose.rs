//! One guest: the target-independent checks, the ranking of hosts, the target checks.
use vmove_model::GuestSpec;

use super::project::{console_port, utilisation, Projection, NO_INVENTORY};
use super::{summary, MoveRequest, PlannedMove, PlannerRule, Rejection, Rule, Unplaced};
use crate::checks::{run_one_for, CheckId, CheckInput, Finding, MigrationRequest, Reach, Verdict};

/// What became of one request.
pub(crate) enum Outcome {
    Placed(PlannedMove),
    Unplaced(Unplaced),
}

/// Checks that do not depend on the target, run once per guest.
const GUEST_CHECKS: [CheckId; 7] = [
    CheckId::GuestInClusterFile,
    CheckId::ClusterFileMatchesSource,
    CheckId::SourceReachable,
    CheckId::NoOutstandingWork,
    CheckId::GuestRunning,
    CheckId::EncryptedChannel,
    CheckId::PredictedConvergence,
];

/// Checks of a target, cheapest and most selective first (the first failure ends a
/// candidate while choosing). `NoOutstandingWork` here only finds the target's work: the
/// guest's and the source's failed the guest before.
const TARGET_CHECKS: [CheckId; 15] = [
    CheckId::TargetNotInMaintenance,
    CheckId::TargetMemory,
    CheckId::VcpuOvercommit,
    CheckId::NetworksOnTarget,
    CheckId::PoolsOnTarget,
    CheckId::GuestNameFreeOnTarget,
    CheckId::MacsFreeOnTarget,
    CheckId::ConsolePortOnTarget,
    CheckId::TargetVersions,
    CheckId::SameHardwareAndCpu,
    CheckId::PolicyMinimums,
    CheckId::QemuCapabilities,
    CheckId::NoOutstandingWork,
    CheckId::HostsInCluster,
    CheckId::TargetReachable,
];

/// A rule's verdict on one host.
struct Judged {
    rule: Rule,
    verdict: Verdict,
    reason: String,
}

impl Judged {
    fn check(f: Finding) -> Judged {
        Judged {
            rule: Rule::Check(f.id),
            verdict: f.verdict,
            reason: f.reason,
        }
    }

    /// `WARN vcpu-overcommit: ...`, as a finding prints.
    fn note(&self) -> String {
        format!("{} {}: {}", self.verdict, self.rule, self.reason)
    }
}

/// A host that may take the guest, with its rank.
struct Candidate {
    idx: usize,
    /// Guests of the guest's group already there.
    mates: Vec<String>,
    /// (max share, sum of shares) with the guest.
    load: (f64, f64),
}

/// The evaluation of one guest against the hosts.
struct Eval<'p, 'a> {
    proj: &'p Projection<'a>,
    req: &'p MoveRequest,
    spec: &'a GuestSpec,
    source: Reach<'a>,
    mr: MigrationRequest,
}

impl Eval<'_, '_> {
    fn input<'x>(&'x self, target: Reach<'x>) -> CheckInput<'x> {
        CheckInput {
            cluster: self.proj.input.cluster,
            request: &self.mr,
            source: self.source.clone(),
            target,
            busy: self.proj.input.busy,
            dirty_rate_bytes_per_s: self.req.dirty_rate_bytes_per_s,
            link_bytes_per_s: self.proj.input.link_bytes_per_s,
        }
    }

    fn set_target(&mut self, host: &str) {
        self.mr.target.clear();
        self.mr.target.push_str(host);
    }

    /// One check against `target`.
    fn check(&self, target: Reach, id: CheckId) -> Finding {
        run_one_for(&self.input(target), Some(self.spec), id)
    }

    /// The target checks of the mode and the capability rule on slot `idx`; with
    /// `first_failure`, stops at the first failure.
    fn target_findings(&mut self, idx: usize, first_failure: bool) -> Vec<Judged> {
        let slot = &self.proj.slots[idx];
        self.set_target(slot.name);
        let mut out = Vec::new();
        let Some(info) = slot.info.as_ref() else {
            return out;
        };
        if let Some(why) = self.capabilities(slot.name, slot.view.map(|v| &v.qemu_capabilities[..]))
        {
            out.push(Judged {
                rule: Rule::Planner(PlannerRule::RequiredCapabilities),
                verdict: Verdict::Fail,
                reason: why,
            });
            if first_failure {
                return out;
            }
        }
        let live = self.req.mode.is_live();
        for id in TARGET_CHECKS.iter().filter(|c| live || !c.live_only()) {
            let f = self.check(Reach::Answered(info), *id);
            let failed = f.verdict == Verdict::Fail;
            out.push(Judged::check(f));
            if failed && first_failure {
                break;
            }
        }
        out
    }

    /// Why the host fails the capability rule, if it does.
    fn capabilities(&self, host: &str, have: Option<&[String]>) -> Option<String> {
        let have = have.unwrap_or(&[]);
        let missing: Vec<&str> = self
            .req
            .required_capabilities
            .iter()
            .filter(|c| !have.contains(c))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return None;
        }
        let noun = if missing.len() == 1 {
            "capability"
        } else {
            "capabilities"
        };
        Some(format!("{host} lacks QEMU {noun} {}", missing.join(", ")))
    }

    /// Which rule makes slot `idx` no candidate at all, if any (no text: cheap).
    fn skip_rule(&self, idx: usize, exclude: &[String]) -> Option<Rule> {
        let slot = &self.proj.slots[idx];
        if slot.name == self.req.source {
            return Some(Rule::Check(CheckId::TargetIsNotSource));
        }
        if exclude.iter().any(|e| e == slot.name) {
            return Some(Rule::Planner(PlannerRule::HostExcluded));
        }
        match slot.view {
            Some(v) if v.drained => Some(Rule::Planner(PlannerRule::HostDrained)),
            Some(v) if v.reach.info().is_some() => None,
            _ => Some(Rule::Check(CheckId::TargetReachable)),
        }
    }

    /// The reason for a [`Eval::skip_rule`], from the check where there is one.
    fn skip_reason(&mut self, idx: usize, rule: Rule) -> String {
        let slot = &self.proj.slots[idx];
        let name = slot.name;
        self.set_target(name);
        match rule {
            Rule::Planner(PlannerRule::HostExcluded) => format!("{name} excluded by the caller"),
            Rule::Planner(PlannerRule::HostDrained) => {
                format!("{name} is drained (maintenance: no migrations in)")
            }
            Rule::Check(CheckId::TargetIsNotSource) => {
                self.check(self.source.clone(), CheckId::TargetIsNotSource)
                    .reason
            }
            _ => {
                let reach = match slot.view {
                    Some(v) => v.reach.clone(),
                    None => Reach::Unreachable(NO_INVENTORY.to_string()),
                };
                self.check(reach, CheckId::TargetReachable).reason
            }
        }
    }
}

/// Places one guest on the best host that passes every check, or says why none does.
pub(crate) fn place_one(proj: &mut Projection, req: &MoveRequest, exclude: &[String]) -> Outcome {
    let unplaced = |reason: String, rejections: Vec<Rejection>| {
        Outcome::Unplaced(Unplaced {
            guest: req.guest.clone(),
            from: req.source.clone(),
            mode: req.mode,
            reason,
            rejections,
        })
    };
    let policy = &proj.input.cluster.policy;
    let mr = MigrationRequest::new(&req.guest, &req.source, &req.source, req.mode, policy);
    let source = proj.source_reach(&req.source);
    let Some(spec) = proj.spec(&req.guest) else {
        let input = CheckInput {
            cluster: proj.input.cluster,
            request: &mr,
            source: source.clone(),
            target: source.clone(),
            busy: proj.input.busy,
            dirty_rate_bytes_per_s: None,
            link_bytes_per_s: None,
        };
        let f = run_one_for(&input, None, CheckId::GuestInClusterFile);
        let rej = Rejection {
            host: None,
            rule: Rule::Check(f.id),
            reason: f.reason,
        };
        return unplaced(summary::guest_level(&req.guest, &[&rej]), vec![rej]);
    };
    let mut ev = Eval {
        proj,
        req,
        spec,
        source,
        mr,
    };

    // Target-independent checks, the source standing in for the target.
    let mut notes = Vec::new();
    let mut fails = Vec::new();
    for id in GUEST_CHECKS
        .iter()
        .filter(|c| req.mode.is_live() || !c.live_only())
    {
        let f = ev.check(ev.source.clone(), *id);
        match f.verdict {
            Verdict::Pass => {}
            Verdict::Warn => notes.push(f.to_string()),
            Verdict::Fail => fails.push(Rejection {
                host: None,
                rule: Rule::Check(*id),
                reason: f.reason,
            }),
        }
    }
    if !fails.is_empty() {
        let refs: Vec<&Rejection> = fails.iter().collect();
        return unplaced(summary::guest_level(&req.guest, &refs), fails);
    }

    // Rank the candidates.
    let ratio = ev.proj.input.cluster.policy.vcpu_overcommit_ratio;
    let mut skipped: Vec<(usize, Rule)> = Vec::new();
    let mut cands: Vec<Candidate> = Vec::new();
    for idx in 0..ev.proj.slots.len() {
        if let Some(rule) = ev.skip_rule(idx, exclude) {
            skipped.push((idx, rule));
            continue;
        }
        let slot = &ev.proj.slots[idx];
        let Some(info) = slot.info.as_ref() else {
            continue;
        };
        let mates = spec
            .group
            .as_ref()
            .and_then(|g| slot.groups.get(g))
            .cloned()
            .unwrap_or_default();
        cands.push(Candidate {
            idx,
            mates,
            load: utilisation(info, spec, ratio),
        });
    }
    cands.sort_by(|a, b| {
        (!a.mates.is_empty())
            .cmp(&!b.mates.is_empty())
            .then(a.load.0.total_cmp(&b.load.0))
            .then(a.load.1.total_cmp(&b.load.1))
            .then(a.idx.cmp(&b.idx))
    });

    // The first that passes everything.
    for c in &cands {
        let findings = ev.target_findings(c.idx, true);
        if findings.iter().any(|j| j.verdict == Verdict::Fail) {
            continue;
        }
        let slot = &ev.proj.slots[c.idx];
        let to = slot.name.to_string();
        let Some(info) = slot.info.as_ref() else {
            continue;
        };
        let port = console_port(info, spec.console_port);
        for j in &findings {
            if j.verdict == Verdict::Warn {
                notes.push(j.note());
            } else if j.rule == Rule::Check(CheckId::ConsolePortOnTarget)
                && spec.console_port.is_some()
                && port != spec.console_port
            {
                notes.push(j.reason.clone());
            }
        }
        if !c.mates.is_empty() {
            notes.push(mates_note(spec, &to, &c.mates));
        }
        let m = planned(ev.proj.input, req, spec, &to, port, notes);
        proj.reserve(c.idx, spec, port);
        return Outcome::Placed(m);
    }

    // Nowhere: every failure on every candidate.
    let mut per_host: Vec<(usize, Rejection)> = Vec::new();
    for (idx, rule) in skipped {
        let reason = ev.skip_reason(idx, rule);
        per_host.push((idx, rejection(ev.proj, idx, rule, reason)));
    }
    for c in &cands {
        for j in ev.target_findings(c.idx, false) {
            if j.verdict == Verdict::Fail {
                per_host.push((c.idx, rejection(ev.proj, c.idx, j.rule, j.reason)));
            }
        }
    }
    per_host.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.rule.cmp(&b.1.rule)));
    let candidates: Vec<usize> = cands.iter().map(|c| c.idx).collect();
    let reason = summary::unplaced(ev.proj, spec, &candidates, &per_host);
    unplaced(reason, per_host.into_iter().map(|(_, r)| r).collect())
}

fn rejection(proj: &Projection, idx: usize, rule: Rule, reason: String) -> Rejection {
    Rejection {
        host: Some(proj.slots[idx].name.to_string()),
        rule,
        reason,
    }
}

/// `anti-affinity: no host without a guest of group db fits; db1 shares host3 with db2`.
fn mates_note(spec: &GuestSpec, host: &str, mates: &[String]) -> String {
    format!(
        "anti-affinity: no host without a guest of group {} fits; {} shares {host} with {}",
        spec.group.as_deref().unwrap_or_default(),
        spec.name,
        mates.join(", ")
    )
}

fn planned(
    input: &super::PlacementInput,
    req: &MoveRequest,
    spec: &GuestSpec,
    to: &str,
    console_port: Option<u16>,
    notes: Vec<String>,
) -> PlannedMove {
    let predicted_s = req.predicted_s.unwrap_or_else(|| {
        input
            .durations
            .predict_s(spec.memory_mib, req.mode, req.dirty_rate_bytes_per_s)
    });
    PlannedMove {
        guest: spec.name.clone(),
        from: req.source.clone(),
        to: to.to_string(),
        mode: req.mode,
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        group: spec.group.clone(),
        console_port,
        predicted_s,
        notes,
    }
}
