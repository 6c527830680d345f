//! LIVE-only checks: a running guest, compatible CPUs, the secure channel, policy minimums
//! (predicted convergence: `convergence.rs`).
use std::cmp::Ordering;

use vmove_model::inventory::{GuestState, HostInfo};

use crate::version::compare_versions;

use super::placement::state_name;
use super::{Ctx, Outcome, Verdict};

/// At most this many missing CPU flags are named.
const MAX_FLAGS_LISTED: usize = 5;

pub(crate) fn guest_running(c: &Ctx) -> Outcome {
    let s = c.source()?;
    let (guest, src) = (&c.req.guest, &c.req.source);
    let Some(st) = s.guests.iter().find(|g| &g.spec.name == guest) else {
        return Err(format!(
            "{src} does not report {guest}: LIVE needs a running guest"
        ));
    };
    match (st.state, st.pid) {
        (GuestState::Running, Some(pid)) => Ok((
            Verdict::Pass,
            format!("{guest} is running on {src} (pid {pid})"),
        )),
        (GuestState::Running, None) => Ok((Verdict::Pass, format!("{guest} is running on {src}"))),
        (other, _) => Err(format!(
            "{guest} is {} on {src}: LIVE needs a running guest (use MODE=OFFLINE)",
            state_name(other)
        )),
    }
}

pub(crate) fn same_hardware_and_cpu(c: &Ctx) -> Outcome {
    let s = c.source()?;
    let t = c.target()?;
    let (src, tgt) = (&c.req.source, &c.req.target);
    let mut diff = Vec::new();
    if s.hardware_model != t.hardware_model {
        diff.push(format!(
            "hardware model {} vs {}",
            s.hardware_model, t.hardware_model
        ));
    }
    if s.cpu_count != t.cpu_count {
        diff.push(format!("CPUs {} vs {}", s.cpu_count, t.cpu_count));
    }
    if s.cpu_model != t.cpu_model {
        diff.push(format!("CPU model {} vs {}", s.cpu_model, t.cpu_model));
    }
    if diff.is_empty() {
        return Ok((
            Verdict::Pass,
            format!(
                "{src} and {tgt}: same hardware ({}), {} CPUs, CPU model {}",
                s.hardware_model, s.cpu_count, s.cpu_model
            ),
        ));
    }
    let mut missing: Vec<&str> = Vec::new();
    for f in &s.cpu_flags {
        if !t.cpu_flags.contains(f) && !missing.contains(&f.as_str()) {
            missing.push(f);
        }
    }
    let diff = diff.join(", ");
    if missing.is_empty() {
        return Ok((
            Verdict::Pass,
            format!(
                "{src} and {tgt} differ ({diff}), but {src}'s CPU flags are a subset of {tgt}'s"
            ),
        ));
    }
    let mut listed = missing
        .iter()
        .take(MAX_FLAGS_LISTED)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if missing.len() > MAX_FLAGS_LISTED {
        listed.push_str(&format!(" (+{} more)", missing.len() - MAX_FLAGS_LISTED));
    }
    Err(format!(
        "{src} and {tgt} differ ({diff}) and {tgt} lacks {} of {src}'s CPU flags: {listed}",
        missing.len()
    ))
}

pub(crate) fn encrypted_channel(c: &Ctx) -> Outcome {
    match (
        c.req.params.insecure_transport,
        c.cluster.policy.require_encrypted_migration,
    ) {
        (true, true) => Err(
            "policy requires an encrypted migration channel, but insecure transport was requested"
                .into(),
        ),
        (true, false) => Ok((
            Verdict::Warn,
            "insecure transport: the migration stream is not encrypted (policy allows it)".into(),
        )),
        (false, _) => Ok((
            Verdict::Pass,
            "migration stream encrypted with TLS (cluster CA certificates)".into(),
        )),
    }
}

pub(crate) fn policy_minimums(c: &Ctx) -> Outcome {
    let s = c.source()?;
    let t = c.target()?;
    let p = &c.cluster.policy;
    let hosts: [(&String, &HostInfo); 2] = [(&c.req.source, s), (&c.req.target, t)];
    let mut bad = Vec::new();
    for (name, h) in hosts {
        match compare_versions(&h.agent_version, &p.min_agent_version) {
            None => bad.push(format!(
                "cannot compare {name}'s agent version {:?} with {:?}",
                h.agent_version, p.min_agent_version
            )),
            Some(Ordering::Less) => bad.push(format!(
                "{name} agent {} < {}",
                h.agent_version, p.min_agent_version
            )),
            Some(_) => {}
        }
        if h.hardware_generation < p.min_hardware_generation {
            bad.push(format!(
                "{name} hardware generation {} < {}",
                h.hardware_generation, p.min_hardware_generation
            ));
        }
    }
    if !bad.is_empty() {
        return Err(format!("below policy minimums: {}", bad.join("; ")));
    }
    Ok((
        Verdict::Pass,
        format!(
            "agents {} {}, {} {} >= {}; hardware generations {} {}, {} {} >= {}",
            c.req.source,
            s.agent_version,
            c.req.target,
            t.agent_version,
            p.min_agent_version,
            c.req.source,
            s.hardware_generation,
            c.req.target,
            t.hardware_generation,
            p.min_hardware_generation
        ),
    ))
}
