//! LIVE: both QEMUs have every migration capability the chosen migration needs (post-copy
//! only when the convergence policy may use it and the cluster policy allows it). Decided by
//! the capabilities each agent learned from its QEMU at start, never by version numbers.
use vmove_model::inventory::HostInfo;

use vmove_model::Converge;

use crate::params::MigrationParams;

use super::{Ctx, Outcome, Verdict};

/// A QEMU feature a live migration uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// Capability (or parameter) name, as QEMU spells it.
    pub name: &'static str,
    /// A parameter (`query-migrate-parameters`) rather than a capability.
    pub parameter: bool,
    /// Required (the migration cannot run without it) or used only where both QEMUs have it.
    pub required: bool,
    /// What it is for, a few words.
    pub why: &'static str,
}

/// The QEMU features a live migration with `p` uses.
pub fn needs(p: &MigrationParams) -> Vec<Need> {
    let mut v = vec![Need { name: "events", parameter: false, required: true, why: "progress events" }];
    if p.multifd_channels > 0 {
        v.push(Need { name: "multifd", parameter: false, required: true, why: "parallel channels" });
    }
    if !p.insecure_transport {
        v.push(Need { name: "tls-creds", parameter: true, required: true, why: "TLS" });
    }
    if p.allow_postcopy && p.converge.may_postcopy() {
        // converge=postcopy cannot do without it; converge=auto uses it where both have it.
        let required = p.converge == Converge::Postcopy;
        v.push(Need { name: "postcopy-ram", parameter: false, required, why: "post-copy" });
        v.push(Need { name: "postcopy-preempt", parameter: false, required: false, why: "urgent pages on their own channel" });
    }
    if p.pause_before_switchover {
        v.push(Need { name: "pause-before-switchover", parameter: false, required: true, why: "hold at switchover" });
    }
    v.push(Need { name: "return-path", parameter: false, required: false, why: "target acknowledgements" });
    v.push(Need { name: "switchover-ack", parameter: false, required: false, why: "target ready before switchover" });
    v
}

fn has(h: &HostInfo, n: &Need) -> bool {
    if n.parameter {
        h.qemu.has_parameter(n.name)
    } else {
        h.qemu.has_capability(n.name)
    }
}

pub(crate) fn qemu_capabilities(c: &Ctx) -> Outcome {
    let s = c.source()?;
    let t = c.target()?;
    let hosts: [(&String, &HostInfo); 2] = [(&c.req.source, s), (&c.req.target, t)];
    let unknown: Vec<&str> = hosts.iter().filter(|(_, h)| !h.qemu.known()).map(|(n, _)| n.as_str()).collect();
    if !unknown.is_empty() {
        return Ok((
            Verdict::Warn,
            format!("not evaluated: {} did not report its QEMU's migration capabilities", unknown.join(" and ")),
        ));
    }
    let mut needs = needs(&c.req.params);
    // Local volumes: their mirrors are finished at the pre-switchover pause, always taken.
    let copies = super::storage::local_volumes(c).is_ok_and(|v| !v.is_empty());
    if copies && !needs.iter().any(|n| n.name == "pause-before-switchover") {
        needs.push(Need { name: "pause-before-switchover", parameter: false, required: true, why: "finish the copy of local volumes" });
    }
    let mut missing = Vec::new();
    for n in needs.iter().filter(|n| n.required) {
        for (name, h) in hosts {
            if !has(h, n) {
                let kind = if n.parameter { "parameter" } else { "capability" };
                missing.push(format!("{name}'s QEMU {} lacks migration {kind} {} ({})", h.qemu.version, n.name, n.why));
            }
        }
    }
    if !missing.is_empty() {
        return Err(missing.join("; "));
    }
    let mirrors = copies.then(|| write_blocking(&c.req.source, s));
    let required: Vec<&str> = needs.iter().filter(|n| n.required).map(|n| n.name).collect();
    let optional: Vec<String> = needs
        .iter()
        .filter(|n| !n.required)
        .map(|n| {
            let lacking: Vec<&str> = hosts.iter().filter(|(_, h)| !has(h, n)).map(|(name, _)| name.as_str()).collect();
            if lacking.is_empty() {
                format!("{} used", n.name)
            } else {
                format!("{} not used ({} lacks it)", n.name, lacking.join(", "))
            }
        })
        .collect();
    let mut verdict = Verdict::Pass;
    let mut reason = format!("QEMU {} and {} have {}; {}", s.qemu.version, t.qemu.version, required.join(", "), optional.join(", "));
    if let Some((v, why)) = mirrors {
        verdict = v;
        reason = format!("{reason}; {why}");
    }
    Ok((verdict, reason))
}

/// The mirrors of local volumes switch to write-blocking with `block-job-change` (QEMU
/// 8.2+) when the guest writes faster than the copy moves. A source QEMU without it starts
/// them write-blocking instead (every guest write waits for the target during the copy):
/// a warning, not a failure. An agent that did not report its QEMU's commands: a warning,
/// for its QEMU may lack the command and then fail the copy of a guest that writes fast.
fn write_blocking(source: &str, s: &HostInfo) -> (Verdict, String) {
    match s.qemu.has_command("block-job-change") {
        Some(true) => (Verdict::Pass, format!("block-job-change on {source} (mirrors switch to write-blocking when the guest writes faster than the copy)")),
        Some(false) => (
            Verdict::Warn,
            format!(
                "{source}'s QEMU {} lacks block-job-change (QEMU 8.2+): the mirrors of the local volumes run write-blocking from the start, so every guest write waits for the target until the switchover",
                s.qemu.version
            ),
        ),
        None => (
            Verdict::Warn,
            format!(
                "not evaluated: {source} did not report its QEMU's commands; without block-job-change (QEMU before 8.2) a guest that writes faster than the copy fails COPY_VOLUMES"
            ),
        ),
    }
}
