//! Where things are: the cluster file against reality, hosts, reachability, pending work.
use vmove_model::inventory::{GuestState, HostInfo};
use vmove_model::GuestSpec;

use super::{plural, Ctx, Outcome, Reach, Verdict};

/// `running`, `stopped`, ...
pub(crate) fn state_name(s: GuestState) -> &'static str {
    match s {
        GuestState::Stopped => "stopped",
        GuestState::Starting => "starting",
        GuestState::Running => "running",
        GuestState::Paused => "paused",
        GuestState::ShuttingDown => "shutting down",
        GuestState::Incoming => "incoming",
        GuestState::Crashed => "crashed",
    }
}

pub(crate) fn guest_in_cluster_file(c: &Ctx) -> Outcome {
    let Some(g) = c.guest else {
        return Err(format!(
            "no guest named {} in the cluster file of cluster {}",
            c.req.guest, c.cluster.cluster.name
        ));
    };
    Ok((
        Verdict::Pass,
        format!(
            "{} in cluster {}: {}, {} MiB, {}, {}, on {}",
            g.name,
            c.cluster.cluster.name,
            plural(g.vcpus as usize, "vCPU"),
            g.memory_mib,
            plural(g.nics.len(), "NIC"),
            plural(g.disks.len(), "disk"),
            g.host
        ),
    ))
}

/// How the definition a host reports differs from the cluster file's (`field file vs host`).
fn spec_drift(file: &GuestSpec, host: &GuestSpec) -> Vec<String> {
    let mut d = Vec::new();
    if file.vcpus != host.vcpus {
        d.push(format!("vcpus {} vs {}", file.vcpus, host.vcpus));
    }
    if file.memory_mib != host.memory_mib {
        d.push(format!(
            "memory {} MiB vs {} MiB",
            file.memory_mib, host.memory_mib
        ));
    }
    if file.cpu_model != host.cpu_model {
        d.push(format!(
            "cpu model {} vs {}",
            file.cpu_model, host.cpu_model
        ));
    }
    let nics = |g: &GuestSpec| {
        g.nics
            .iter()
            .map(|n| format!("{}/{}", n.network, n.mac.to_ascii_lowercase()))
            .collect::<Vec<_>>()
    };
    if nics(file) != nics(host) {
        d.push(format!(
            "nics [{}] vs [{}]",
            nics(file).join(" "),
            nics(host).join(" ")
        ));
    }
    let disks = |g: &GuestSpec| {
        g.disks
            .iter()
            .map(|x| format!("{}/{}", x.pool, x.volume))
            .collect::<Vec<_>>()
    };
    if disks(file) != disks(host) {
        d.push(format!(
            "disks [{}] vs [{}]",
            disks(file).join(" "),
            disks(host).join(" ")
        ));
    }
    d
}

pub(crate) fn cluster_file_matches_source(c: &Ctx) -> Outcome {
    let g = c.guest()?;
    if g.host != c.req.source {
        return Err(format!(
            "drift: the cluster file places {} on {}, the request names {} as source",
            g.name, g.host, c.req.source
        ));
    }
    if let Some(why) = c.source_not_required() {
        return Ok((
            Verdict::Pass,
            format!(
                "the cluster file places {} on {}; confirming it is {why}",
                g.name, g.host
            ),
        ));
    }
    let src = c.source()?;
    let Some(st) = src.guests.iter().find(|s| s.spec.name == g.name) else {
        return Err(format!(
            "drift: the cluster file places {} on {}, but {} does not report {} defined",
            g.name, g.host, c.req.source, g.name
        ));
    };
    let drift = spec_drift(g, &st.spec);
    if !drift.is_empty() {
        return Err(format!(
            "drift: {} differs between the cluster file and {}: {}",
            g.name,
            c.req.source,
            drift.join(", ")
        ));
    }
    Ok((
        Verdict::Pass,
        format!(
            "{} reports {} defined ({}), as the cluster file says",
            c.req.source,
            g.name,
            state_name(st.state)
        ),
    ))
}

pub(crate) fn hosts_in_cluster(c: &Ctx) -> Outcome {
    let mut missing = Vec::new();
    for (name, role) in [(&c.req.source, "source"), (&c.req.target, "target")] {
        if c.cluster.host(name).is_none() {
            missing.push(format!("{name} ({role})"));
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "not hosts of cluster {}: {}",
            c.cluster.cluster.name,
            missing.join(", ")
        ));
    }
    Ok((
        Verdict::Pass,
        format!(
            "{} and {} are hosts of cluster {}",
            c.req.source, c.req.target, c.cluster.cluster.name
        ),
    ))
}

pub(crate) fn target_is_not_source(c: &Ctx) -> Outcome {
    if c.req.source == c.req.target {
        return Err(format!(
            "source and target are the same host, {}",
            c.req.source
        ));
    }
    Ok((
        Verdict::Pass,
        format!(
            "source {} and target {} are different hosts",
            c.req.source, c.req.target
        ),
    ))
}

fn answered(role: &str, expected: &str, h: &HostInfo) -> Outcome {
    if h.name != expected {
        return Err(format!(
            "the agent reached for {role} {expected} identifies itself as {}",
            h.name
        ));
    }
    Ok((
        Verdict::Pass,
        format!(
            "{role} {expected} answered (agent {}, QEMU {})",
            h.agent_version, h.qemu_version
        ),
    ))
}

pub(crate) fn source_reachable(c: &Ctx) -> Outcome {
    if let Some(why) = c.source_not_required() {
        return Ok((Verdict::Pass, why));
    }
    match &c.input.source {
        Reach::Answered(h) => answered("source", &c.req.source, h),
        Reach::Unreachable(why) => Err(format!("source {} unreachable: {why}", c.req.source)),
    }
}

pub(crate) fn target_reachable(c: &Ctx) -> Outcome {
    match &c.input.target {
        Reach::Answered(h) => answered("target", &c.req.target, h),
        Reach::Unreachable(why) => Err(format!("target {} unreachable: {why}", c.req.target)),
    }
}

pub(crate) fn target_not_in_maintenance(c: &Ctx) -> Outcome {
    let t = c.target()?;
    if t.maintenance.is_some() {
        return Err(format!(
            "target {} is in maintenance (drained): it takes no migrations in until `vmove host undrain {}`",
            c.req.target, c.req.target
        ));
    }
    Ok((Verdict::Pass, format!("target {} is not in maintenance", c.req.target)))
}

pub(crate) fn no_outstanding_work(c: &Ctx) -> Outcome {
    let r = c.req;
    let mine =
        |v: &Option<String>, names: &[&String]| v.as_ref().is_some_and(|x| names.contains(&x));
    let found: Vec<String> = c
        .input
        .busy
        .iter()
        .filter(|b| mine(&b.guest, &[&r.guest]) || mine(&b.host, &[&r.source, &r.target]))
        .map(|b| match (&b.guest, &b.host) {
            (Some(g), Some(h)) => format!("{g} on {h}: {}", b.what),
            (Some(g), None) => format!("{g}: {}", b.what),
            (None, Some(h)) => format!("{h}: {}", b.what),
            (None, None) => b.what.clone(),
        })
        .collect();
    if !found.is_empty() {
        return Err(format!("outstanding work: {}", found.join("; ")));
    }
    Ok((
        Verdict::Pass,
        format!(
            "no unfinished job or pending work on {}, {} or {}",
            r.guest, r.source, r.target
        ),
    ))
}
