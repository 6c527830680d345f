//! Volumes in local pools: a migration copies them, so the target's local pool must have
//! room for the copies, and the source must be there to copy from.
use vmove_model::inventory::{HostInfo, PoolInfo};
use vmove_model::{DiskSpec, PoolKind};

use super::{Ctx, Outcome, Verdict};
use crate::mode::Mode;

/// One local volume of the guest and what its copy takes.
pub(crate) struct LocalVolume<'a> {
    pub disk: &'a DiskSpec,
    /// Its size on the source, bytes; `None` when the source has no such file yet (a guest
    /// never started: nothing to copy, the target creates it at the first start).
    pub size_bytes: Option<u64>,
}

/// Whether the cluster file makes `pool` a local pool.
fn is_local(c: &Ctx, pool: &str) -> bool {
    c.cluster.pool(pool).is_some_and(|p| p.kind == PoolKind::Local)
}

fn pool<'a>(h: &'a HostInfo, name: &str) -> Option<&'a PoolInfo> {
    h.pools.iter().find(|p| p.name == name)
}

/// `256 MiB` (rounded up).
pub(crate) fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

/// The guest's disks in local pools, with their sizes from the source's inventory
/// (`Err` when the source did not answer).
pub(crate) fn local_volumes<'a>(c: &Ctx<'a>) -> Result<Vec<LocalVolume<'a>>, String> {
    let g = c.guest()?;
    let disks: Vec<&DiskSpec> = g.disks.iter().filter(|d| is_local(c, &d.pool)).collect();
    if disks.is_empty() {
        return Ok(vec![]);
    }
    let s = c.source()?;
    Ok(disks
        .into_iter()
        .map(|d| {
            let size_bytes =
                pool(s, &d.pool).and_then(|p| p.volumes.iter().find(|v| v.name == d.volume)).map(|v| v.size_bytes);
            LocalVolume { disk: d, size_bytes }
        })
        .collect())
}

/// Bytes a migration copies: the guest's local volumes that exist on the source (0 when
/// there are none, or when the source did not answer).
pub(crate) fn copy_bytes(c: &Ctx) -> u64 {
    local_volumes(c).unwrap_or_default().iter().filter_map(|v| v.size_bytes).fold(0u64, u64::saturating_add)
}

pub(crate) fn local_volume_space(c: &Ctx) -> Outcome {
    let g = c.guest()?;
    let names: Vec<String> =
        g.disks.iter().filter(|d| is_local(c, &d.pool)).map(|d| format!("{}/{}", d.pool, d.volume)).collect();
    if names.is_empty() {
        return Ok((Verdict::Pass, format!("{} has no volumes in local pools: nothing to copy", g.name)));
    }
    if c.req.mode == Mode::OfflineForce && c.source().is_err() {
        let (what, verb, pron) = if names.len() == 1 { ("volume", "lives", "it") } else { ("volumes", "live", "they") };
        return Err(format!(
            "{}'s local {what} {} {verb} on {}, which does not answer: {pron} cannot be copied (OFFLINEFORCE cannot rescue local volumes)",
            g.name,
            names.join(", "),
            c.req.source
        ));
    }
    let t = c.target()?;
    let vols = local_volumes(c)?;
    let mut bad = Vec::new();
    // Per target pool, in the guest's disk order: what its copies need.
    let mut pools: Vec<(&str, u64, Vec<String>)> = Vec::new();
    let mut not_yet = Vec::new();
    for v in &vols {
        let d = v.disk;
        let Some(tp) = pool(t, &d.pool) else {
            bad.push(format!("pool {} missing on {}", d.pool, c.req.target));
            continue;
        };
        if tp.kind != PoolKind::Local {
            bad.push(format!("pool {} is local in the cluster file but shared on {}", d.pool, c.req.target));
            continue;
        }
        if tp.volumes.iter().any(|x| x.name == d.volume) {
            bad.push(format!("{}/{} already exists on {}", d.pool, d.volume, c.req.target));
            continue;
        }
        let Some(size) = v.size_bytes else {
            not_yet.push(format!("{}/{}", d.pool, d.volume));
            continue;
        };
        let at = match pools.iter().position(|(p, _, _)| *p == d.pool) {
            Some(i) => i,
            None => {
                pools.push((&d.pool, 0, vec![]));
                pools.len() - 1
            }
        };
        let entry = &mut pools[at];
        entry.1 = entry.1.saturating_add(size);
        entry.2.push(format!("{}/{} {}", d.pool, d.volume, mib(size)));
    }
    for (p, need, list) in &pools {
        let free = pool(t, p).map_or(0, |x| x.free_bytes);
        if *need > free {
            bad.push(format!(
                "pool {p} on {} has {} free, {}'s local volumes need {} there ({})",
                c.req.target,
                mib(free),
                g.name,
                mib(*need),
                list.join(", ")
            ));
        }
    }
    if !bad.is_empty() {
        return Err(bad.join("; "));
    }
    let mut parts: Vec<String> = pools
        .iter()
        .map(|(p, need, list)| {
            let free = pool(t, p).map_or(0, |x| x.free_bytes);
            format!("copies {} to pool {p} on {} ({} free): {}", mib(*need), c.req.target, mib(free), list.join(", "))
        })
        .collect();
    if !not_yet.is_empty() {
        parts.push(format!("nothing to copy for {} (not created on {} yet)", not_yet.join(", "), c.req.source));
    }
    Ok((Verdict::Pass, parts.join("; ")))
}
