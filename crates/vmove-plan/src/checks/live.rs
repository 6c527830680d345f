//! LIVE-only checks: a running guest, compatible CPUs, the secure channel, policy minimums,
//! predicted convergence.
use std::cmp::Ordering;

use vmove_model::inventory::{GuestState, HostInfo};

use crate::version::compare_versions;

use super::placement::state_name;
use super::{fmt_rate, fmt_secs, Ctx, Outcome, Verdict};

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

pub(crate) fn predicted_convergence(c: &Ctx) -> Outcome {
    let g = c.guest()?;
    let link = match (c.req.params.bandwidth_bytes_per_s, c.input.link_bytes_per_s) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let timeout = fmt_secs(c.req.params.timeout_s);
    let (d, b) = match (c.input.dirty_rate_bytes_per_s, link) {
        (Some(d), Some(b)) => (d, b),
        (None, None) => {
            return Ok((
                Verdict::Warn,
                "not measured: dirty rate and link throughput unknown".into(),
            ))
        }
        (None, _) => {
            return Ok((
                Verdict::Warn,
                format!("not measured: dirty rate of {} unknown", g.name),
            ))
        }
        (_, None) => {
            return Ok((
                Verdict::Warn,
                "not measured: link throughput unknown".into(),
            ))
        }
    };
    let (dirty, moves) = (fmt_rate(d), fmt_rate(b));
    if d >= b {
        return Err(format!(
            "{} dirties {dirty}, link moves {moves}: will not converge; it would time out after {timeout}",
            g.name
        ));
    }
    let bytes = u128::from(g.memory_mib) * 1_048_576;
    let net = u128::from(b - d);
    let secs = u64::try_from(bytes.div_ceil(net)).unwrap_or(u64::MAX);
    // Local volumes are copied before the memory phase (COPY_VOLUMES), over the same link;
    // the mirrors keep up with the guest's disk writes, switching to write-blocking when not.
    let disk = super::storage::copy_bytes(c);
    if disk > 0 {
        let disk_secs = u64::try_from(u128::from(disk).div_ceil(u128::from(b))).unwrap_or(u64::MAX);
        let what = format!(
            "{} of local volumes at {moves}, then {} MiB of memory with {dirty} dirtied",
            super::storage::mib(disk),
            g.memory_mib
        );
        let total = fmt_secs(disk_secs.saturating_add(secs));
        if disk_secs > c.req.params.timeout_s || secs > c.req.params.timeout_s {
            return Err(format!(
                "predicted {total} ({} + {}) to copy {what}: a phase exceeds the timeout of {timeout}",
                fmt_secs(disk_secs),
                fmt_secs(secs)
            ));
        }
        return Ok((
            Verdict::Pass,
            format!(
                "about {total} ({} + {}) to copy {what}, each within the timeout of {timeout}",
                fmt_secs(disk_secs),
                fmt_secs(secs)
            ),
        ));
    }
    let what = format!("{} MiB at {moves} with {dirty} dirtied", g.memory_mib);
    if secs > c.req.params.timeout_s {
        return Err(format!(
            "predicted {} to copy {what} exceeds the timeout of {timeout}",
            fmt_secs(secs)
        ));
    }
    Ok((
        Verdict::Pass,
        format!(
            "about {} to copy {what}, within the timeout of {timeout}",
            fmt_secs(secs)
        ),
    ))
}
