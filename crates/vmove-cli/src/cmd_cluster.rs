//! `vmove cluster check|export|import|members|wait-dead`: drift between the cluster (the
//! file, or etcd) and the agents; the cluster file as an export of etcd and a bootstrap of
//! it; who holds a lease; waiting for a host's lease to expire.
use anyhow::{anyhow, bail, Context, Result};
use futures::future::join_all;
use serde::Serialize;
use vmove_api::{GuestStatus, Request};
use vmove_model::{Cluster, GuestSpec};

use crate::args::ClusterCmd;
use crate::ctx::Ctx;

pub async fn run(ctx: &Ctx, cmd: ClusterCmd) -> Result<()> {
    match cmd {
        ClusterCmd::Init(a) => crate::cmd_setup::init(ctx, a),
        ClusterCmd::Check => check(ctx).await,
        ClusterCmd::Export { out } => export(ctx, out.as_deref()).await,
        ClusterCmd::Import { replace } => import(ctx, replace).await,
        ClusterCmd::Members => members(ctx).await,
        ClusterCmd::WaitDead { host, timeout } => wait_dead(ctx, &host, timeout.as_deref()).await,
    }
}

/// The etcd cluster file in use, or why it is not one.
fn etcd_file(ctx: &Ctx) -> Result<Cluster> {
    let file = ctx.file()?;
    if file.store.is_file() {
        bail!("{} keeps the cluster in the file itself: export and import need [store] kind = \"etcd\"", ctx.cluster_path.display());
    }
    Ok(file)
}

async fn export(ctx: &Ctx, out: Option<&std::path::Path>) -> Result<()> {
    let file = etcd_file(ctx)?;
    let store = ctx.store(&file).await?;
    let c = vmove_registry::export(store.as_ref(), &file).await?;
    match out {
        Some(path) => {
            let c = crate::oedacli::session::rebased(&c, path);
            c.save(path).with_context(|| format!("write {}", path.display()))?;
            if ctx.json {
                crate::out::json(&serde_json::json!({ "exported": path, "hosts": c.hosts.len(), "guests": c.guests.len() }));
            } else {
                eprintln!("exported {} hosts and {} guests to {}", c.hosts.len(), c.guests.len(), path.display());
            }
        }
        None => print!("{}", c.to_toml()),
    }
    Ok(())
}

async fn import(ctx: &Ctx, replace: bool) -> Result<()> {
    let file = etcd_file(ctx)?;
    let store = ctx.store(&file).await?;
    let how = if replace { vmove_registry::Import::Replace } else { vmove_registry::Import::New };
    let n = vmove_registry::import(store.as_ref(), &file, how).await?;
    let ns = file.store.namespace_for(&file.cluster.name);
    if ctx.json {
        crate::out::json(&serde_json::json!({ "imported": file.cluster.name, "namespace": ns, "hosts": file.hosts.len(), "guests": n }));
    } else {
        println!("cluster {} imported into etcd ({ns}): {} hosts, {n} guests", file.cluster.name, file.hosts.len());
    }
    Ok(())
}

async fn members(ctx: &Ctx) -> Result<()> {
    let file = etcd_file(ctx)?;
    let c = ctx.cluster().await?;
    let list = crate::fleet_store::members(ctx, &file).await?;
    if ctx.json {
        crate::out::json(&list);
        return Ok(());
    }
    let mut rows: Vec<Vec<String>> = list
        .iter()
        .map(|m| vec![m.host.clone(), m.address.clone(), format!("{:x}", m.lease), format!("{} s", m.ttl_s), m.agent_version.clone()])
        .collect();
    for h in c.hosts.iter().filter(|h| !list.iter().any(|m| m.host == h.name)) {
        rows.push(vec![h.name.clone(), h.address.clone(), "-".into(), "no lease".into(), String::new()]);
    }
    crate::out::table(&["HOST", "ADDRESS", "LEASE", "TTL", "AGENT"], &rows);
    Ok(())
}

async fn wait_dead(ctx: &Ctx, host: &str, timeout: Option<&str>) -> Result<()> {
    let c = ctx.cluster().await?;
    if c.store.is_file() {
        bail!("the file store has no leases: only an operator can say that {host} is dead");
    }
    let timeout = timeout
        .map(|t| vmove_model::parse_duration_ms(t).map(std::time::Duration::from_millis).map_err(|e| anyhow!(e)))
        .transpose()?;
    let Some(dead) = crate::fleet_store::wait_host_dead(ctx, &c, host, timeout).await? else { return Ok(()) };
    let waited_ms = u64::try_from(dead.waited.as_millis()).unwrap_or(u64::MAX);
    if ctx.json {
        crate::out::json(&serde_json::json!({ "host": host, "dead": true, "waited_ms": waited_ms, "last_seen": dead.last_seen }));
    } else if dead.last_seen.is_none() {
        println!("{host} holds no lease: dead (or never started on etcd)");
    } else {
        println!("{host}: its lease expired after {:.1} s: dead", dead.waited.as_secs_f64());
    }
    Ok(())
}

/// One difference between the file and reality.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drift {
    /// What kind of difference.
    pub kind: &'static str,
    /// The guest, if it is about one.
    pub guest: Option<String>,
    /// The host concerned.
    pub host: String,
    /// One line.
    pub detail: String,
}

/// Compares the file with what every agent reports (pure).
pub fn compare(c: &Cluster, reports: &[(String, Result<Vec<GuestStatus>, String>)]) -> Vec<Drift> {
    let mut out = Vec::new();
    for (host, r) in reports {
        if let Err(e) = r {
            out.push(Drift { kind: "unreachable", guest: None, host: host.clone(), detail: e.clone() });
        }
    }
    for g in &c.guests {
        let found: Vec<(&String, &GuestStatus)> = reports
            .iter()
            .filter_map(|(h, r)| r.as_ref().ok().and_then(|l| l.iter().find(|s| s.spec.name == g.name)).map(|s| (h, s)))
            .collect();
        let file_host_answered = reports.iter().any(|(h, r)| *h == g.host && r.is_ok());
        match found.as_slice() {
            [] if file_host_answered => out.push(Drift {
                kind: "missing",
                guest: Some(g.name.clone()),
                host: g.host.clone(),
                detail: format!("the file puts {} on {}, which does not have it", g.name, g.host),
            }),
            [] => {}
            [(h, s)] => {
                if **h != g.host {
                    out.push(Drift {
                        kind: "elsewhere",
                        guest: Some(g.name.clone()),
                        host: (*h).clone(),
                        detail: format!("the file puts {} on {}, but {} has it", g.name, g.host, h),
                    });
                }
                if let Some(d) = spec_diff(g, &s.spec) {
                    out.push(Drift { kind: "different", guest: Some(g.name.clone()), host: (*h).clone(), detail: d });
                }
            }
            many => out.push(Drift {
                kind: "duplicate",
                guest: Some(g.name.clone()),
                host: many.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>().join(","),
                detail: format!("{} is defined on {} hosts", g.name, many.len()),
            }),
        }
    }
    for (host, r) in reports {
        for s in r.iter().flatten() {
            if c.guest(&s.spec.name).is_none() {
                out.push(Drift {
                    kind: "unknown",
                    guest: Some(s.spec.name.clone()),
                    host: host.clone(),
                    detail: format!("{host} has guest {} that the file does not list", s.spec.name),
                });
            }
        }
    }
    out
}

fn spec_diff(file: &GuestSpec, host: &GuestSpec) -> Option<String> {
    let mut d = Vec::new();
    if file.vcpus != host.vcpus {
        d.push(format!("vCPUs {} in the file, {} on the host", file.vcpus, host.vcpus));
    }
    if file.memory_mib != host.memory_mib {
        d.push(format!("memory {} MiB in the file, {} MiB on the host", file.memory_mib, host.memory_mib));
    }
    if !file.macs().eq(host.macs()) {
        d.push("NIC MACs differ".into());
    }
    if file.disks != host.disks {
        d.push("disks differ".into());
    }
    (!d.is_empty()).then(|| d.join("; "))
}

pub async fn check(ctx: &Ctx) -> Result<()> {
    let c = ctx.cluster().await?;
    let clients = ctx.clients(&c)?;
    let lists = join_all(clients.iter().map(|(_, cl)| cl.call::<Vec<GuestStatus>>(&Request::GuestList))).await;
    let reports: Vec<(String, Result<Vec<GuestStatus>, String>)> =
        clients.iter().zip(lists).map(|((h, _), r)| (h.clone(), r.map_err(crate::out::one_line))).collect();
    let drift = compare(&c, &reports);
    if ctx.json {
        crate::out::json(&serde_json::json!({ "drift": drift, "hosts": c.hosts.len(), "guests": c.guests.len() }));
    } else if drift.is_empty() {
        let what = if c.store.is_file() { "the cluster file" } else { "the cluster in etcd" };
        println!("{what} matches the agents ({} hosts, {} guests)", c.hosts.len(), c.guests.len());
    } else {
        let rows: Vec<Vec<String>> = drift
            .iter()
            .map(|d| vec![d.kind.to_string(), d.guest.clone().unwrap_or_default(), d.host.clone(), d.detail.clone()])
            .collect();
        crate::out::table(&["DRIFT", "GUEST", "HOST", "DETAIL"], &rows);
    }
    if !drift.is_empty() {
        bail!("{} difference(s) between {} and the agents", drift.len(), ctx.truth(&c));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::cluster;
    use vmove_api::GuestState;

    fn st(spec: &GuestSpec) -> GuestStatus {
        GuestStatus { spec: spec.clone(), state: GuestState::Running, pid: None, uptime_s: None }
    }

    #[test]
    fn no_drift_when_file_and_hosts_agree() {
        let c = cluster();
        let r = vec![("host1".into(), Ok(vec![st(&c.guests[0])])), ("host2".into(), Ok(vec![]))];
        assert_eq!(compare(&c, &r), vec![]);
    }

    #[test]
    fn every_kind_of_drift_is_named() {
        let c = cluster();
        let mut moved = c.guests[0].clone();
        moved.memory_mib = 1024;
        let mut stray = c.guests[0].clone();
        stray.name = "ghost".into();
        let r = vec![("host1".into(), Ok(vec![st(&stray)])), ("host2".into(), Ok(vec![st(&moved)]))];
        let d = compare(&c, &r);
        let kinds: Vec<&str> = d.iter().map(|x| x.kind).collect();
        assert_eq!(kinds, vec!["elsewhere", "different", "unknown"]);
        assert_eq!(d[0].detail, "the file puts vm1 on host1, but host2 has it");
        assert_eq!(d[1].detail, "memory 512 MiB in the file, 1024 MiB on the host");
        let r = vec![("host1".into(), Ok(vec![])), ("host2".into(), Err("down".to_string()))];
        let d = compare(&c, &r);
        assert_eq!(d.iter().map(|x| x.kind).collect::<Vec<_>>(), vec!["unreachable", "missing"]);
    }
}
