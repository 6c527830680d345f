//! `vmove cluster check`: where the cluster file and the agents' reports differ (drift).
use anyhow::{bail, Result};
use futures::future::join_all;
use serde::Serialize;
use vmove_api::{GuestStatus, Request};
use vmove_model::{Cluster, GuestSpec};

use crate::ctx::Ctx;

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
    let c = ctx.cluster()?;
    let clients = ctx.clients(&c)?;
    let lists = join_all(clients.iter().map(|(_, cl)| cl.call::<Vec<GuestStatus>>(&Request::GuestList))).await;
    let reports: Vec<(String, Result<Vec<GuestStatus>, String>)> =
        clients.iter().zip(lists).map(|((h, _), r)| (h.clone(), r.map_err(crate::out::one_line))).collect();
    let drift = compare(&c, &reports);
    if ctx.json {
        crate::out::json(&serde_json::json!({ "drift": drift, "hosts": c.hosts.len(), "guests": c.guests.len() }));
    } else if drift.is_empty() {
        println!("the cluster file matches the agents ({} hosts, {} guests)", c.hosts.len(), c.guests.len());
    } else {
        let rows: Vec<Vec<String>> = drift
            .iter()
            .map(|d| vec![d.kind.to_string(), d.guest.clone().unwrap_or_default(), d.host.clone(), d.detail.clone()])
            .collect();
        crate::out::table(&["DRIFT", "GUEST", "HOST", "DETAIL"], &rows);
    }
    if !drift.is_empty() {
        bail!("{} difference(s) between {} and the agents", drift.len(), ctx.cluster_path.display());
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
