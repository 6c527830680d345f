//! What the target must have for the guest: networks, pools, versions, memory, vCPUs,
//! the guest's name and MACs free, a console port.
use std::cmp::Ordering;

use crate::version::compare_versions;

use super::placement::state_name;
use super::{Ctx, Outcome, Verdict};

fn vlan_str(v: Option<u16>) -> String {
    match v {
        None => "untagged".to_string(),
        Some(v) => format!("VLAN {v}"),
    }
}

pub(crate) fn networks_on_target(c: &Ctx) -> Outcome {
    let g = c.guest()?;
    let t = c.target()?;
    if g.nics.is_empty() {
        return Ok((Verdict::Pass, format!("{} has no NICs", g.name)));
    }
    let (mut ok, mut bad, mut seen) = (Vec::new(), Vec::new(), Vec::new());
    for nic in &g.nics {
        if seen.contains(&&nic.network) {
            continue;
        }
        seen.push(&nic.network);
        let Some(net) = c.cluster.network(&nic.network) else {
            bad.push(format!(
                "network {} is not in the cluster file",
                nic.network
            ));
            continue;
        };
        match t.bridges.iter().find(|b| b.name == net.bridge) {
            None => bad.push(format!(
                "bridge {} (network {}) missing",
                net.bridge, net.name
            )),
            Some(b) if b.vlan != net.vlan => bad.push(format!(
                "bridge {} is {}, network {} is {}",
                b.name,
                vlan_str(b.vlan),
                net.name,
                vlan_str(net.vlan)
            )),
            Some(b) => ok.push(format!("{} ({})", b.name, vlan_str(b.vlan))),
        }
    }
    if !bad.is_empty() {
        return Err(format!("on {}: {}", c.req.target, bad.join("; ")));
    }
    Ok((
        Verdict::Pass,
        format!("bridges on {}: {}", c.req.target, ok.join(", ")),
    ))
}

pub(crate) fn pools_on_target(c: &Ctx) -> Outcome {
    let g = c.guest()?;
    let t = c.target()?;
    if g.disks.is_empty() {
        return Ok((Verdict::Pass, format!("{} has no disks", g.name)));
    }
    let (mut ok, mut bad, mut seen) = (Vec::new(), Vec::new(), Vec::new());
    for d in &g.disks {
        if seen.contains(&&d.pool) {
            continue;
        }
        seen.push(&d.pool);
        match t.pools.iter().find(|p| p.name == d.pool) {
            None => bad.push(format!("pool {} missing", d.pool)),
            Some(p) if !p.writable => {
                bad.push(format!("pool {} ({}) is not writable", p.name, p.path))
            }
            Some(p) => ok.push(p.name.clone()),
        }
    }
    if !bad.is_empty() {
        return Err(format!("on {}: {}", c.req.target, bad.join("; ")));
    }
    Ok((
        Verdict::Pass,
        format!("pools on {}, writable: {}", c.req.target, ok.join(", ")),
    ))
}

pub(crate) fn target_versions(c: &Ctx) -> Outcome {
    if let Some(why) = c.source_not_required() {
        return Ok((Verdict::Pass, format!("not compared: {why}")));
    }
    let s = c.source()?;
    let t = c.target()?;
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (what, tv, sv) in [
        ("agent", &t.agent_version, &s.agent_version),
        ("QEMU", &t.qemu_version, &s.qemu_version),
    ] {
        match compare_versions(tv, sv) {
            None => bad.push(format!("cannot compare {what} versions {tv:?} and {sv:?}")),
            Some(Ordering::Less) => bad.push(format!(
                "{what} {tv} on {} is older than {sv} on {}",
                c.req.target, c.req.source
            )),
            Some(_) => ok.push(format!("{what} {tv} >= {sv}")),
        }
    }
    if !bad.is_empty() {
        return Err(bad.join("; "));
    }
    Ok((
        Verdict::Pass,
        format!("{} vs {}: {}", c.req.target, c.req.source, ok.join(", ")),
    ))
}

pub(crate) fn target_memory(c: &Ctx) -> Outcome {
    let g = c.guest()?;
    let t = c.target()?;
    let have = t.memory_available_mib;
    if have < g.memory_mib {
        return Err(format!(
            "{} has {have} MiB available, {} needs {} MiB (memory is never overcommitted)",
            c.req.target, g.name, g.memory_mib
        ));
    }
    Ok((
        Verdict::Pass,
        format!(
            "{} has {have} MiB available, {} needs {} MiB",
            c.req.target, g.name, g.memory_mib
        ),
    ))
}

pub(crate) fn vcpu_overcommit(c: &Ctx) -> Outcome {
    let g = c.guest()?;
    let t = c.target()?;
    let total = u64::from(t.vcpus_committed) + u64::from(g.vcpus);
    let cpus = u64::from(t.cpu_count);
    let ratio = c.cluster.policy.vcpu_overcommit_ratio;
    let limit = (cpus as f64 * ratio).floor().max(0.0) as u64;
    if total > limit {
        return Err(format!(
            "overcommitted beyond policy: {total} vCPUs on {cpus} CPUs of {}, ratio {ratio} allows {limit}",
            c.req.target
        ));
    }
    if total > cpus {
        return Ok((
            Verdict::Warn,
            format!(
                "overcommitted: {total} vCPUs on {cpus} CPUs of {} (ratio {ratio} allows {limit})",
                c.req.target
            ),
        ));
    }
    Ok((
        Verdict::Pass,
        format!(
            "{total} vCPUs on {cpus} CPUs of {} with {}'s {}, no overcommit",
            c.req.target, g.name, g.vcpus
        ),
    ))
}

pub(crate) fn guest_name_free_on_target(c: &Ctx) -> Outcome {
    let t = c.target()?;
    if let Some(st) = t.guests.iter().find(|s| s.spec.name == c.req.guest) {
        return Err(format!(
            "{} already has a guest named {} ({})",
            c.req.target,
            c.req.guest,
            state_name(st.state)
        ));
    }
    Ok((
        Verdict::Pass,
        format!("no guest named {} on {}", c.req.guest, c.req.target),
    ))
}

pub(crate) fn macs_free_on_target(c: &Ctx) -> Outcome {
    let g = c.guest()?;
    let t = c.target()?;
    if g.nics.is_empty() {
        return Ok((Verdict::Pass, format!("{} has no NICs", g.name)));
    }
    let taken: Vec<String> = g
        .macs()
        .filter_map(|m| {
            let other = t
                .guests
                .iter()
                .find(|o| o.spec.macs().any(|x| x.eq_ignore_ascii_case(m)))?;
            Some(format!("{m} ({})", other.spec.name))
        })
        .collect();
    if !taken.is_empty() {
        return Err(format!("in use on {}: {}", c.req.target, taken.join(", ")));
    }
    let macs: Vec<&str> = g.macs().collect();
    let noun = if macs.len() == 1 { "MAC" } else { "MACs" };
    Ok((
        Verdict::Pass,
        format!(
            "{}'s {noun} {} free on {}",
            g.name,
            macs.join(", "),
            c.req.target
        ),
    ))
}

pub(crate) fn console_port_on_target(c: &Ctx) -> Outcome {
    let t = c.target()?;
    let (lo, hi) = t.console_port_range;
    let in_use = &t.console_ports_in_use;
    let free: Vec<u16> = if lo <= hi {
        (lo..=hi).filter(|p| !in_use.contains(p)).collect()
    } else {
        Vec::new()
    };
    let Some(first) = free.first() else {
        return Err(format!(
            "no free console port on {} (range {lo}-{hi}, {} in use)",
            c.req.target,
            in_use.len()
        ));
    };
    let size = u32::from(hi) - u32::from(lo) + 1;
    let avail = format!("{} of {size} free", free.len());
    let guest = &c.req.guest;
    let reason = match c.guest.and_then(|g| g.console_port) {
        Some(p) if !in_use.contains(&p) => format!(
            "{guest} keeps console port {p} on {} ({avail})",
            c.req.target
        ),
        Some(p) => format!(
            "{guest}'s console port {p} is taken on {}: it gets {first} ({avail})",
            c.req.target
        ),
        None => format!(
            "{guest} gets console port {first} on {} ({avail})",
            c.req.target
        ),
    };
    Ok((Verdict::Pass, reason))
}
