//! The target of a `MIGRATE GUEST` without `TGTHOST=` (a vmove extension to Oracle
//! Exadata's oedacli, whose TGTHOST is required): MERGE ACTIONS asks the planner of `vmove
//! host drain` ([`vmove_plan::replan_one`]) over the inventories the drain gathers
//! ([`crate::drain::gather::Inventory`]), then fixes the chosen host in the action, so that
//! DEPLOY runs what MERGE validated.
use std::collections::HashSet;

use anyhow::{bail, Result};
use vmove_api::{GuestState, HostInfo};
use vmove_model::Cluster;
use vmove_plan::placement::fmt_mib;
use vmove_plan::{Mode, MoveRequest, PlannedMove, Unplaced};

use super::parse::Migrate;
use crate::ctx::Ctx;
use crate::drain::gather::{measure_dirty_rates, predict, Inventory};

/// The planner's choice and the line that tells it.
pub(super) struct Chosen {
    /// The move as planned (`to` is the target).
    pub(super) planned: PlannedMove,
    /// `TGTHOST not given: the planner chose host3 (...)`.
    pub(super) line: String,
}

/// Chooses the target of `m` (no `TGTHOST=`) over fresh inventories; `reserved`: the
/// merged, undeployed moves, whose targets count as taken. An error when the planner places
/// the guest nowhere (text: one line per refused host first).
pub(super) async fn choose(ctx: &Ctx, model: &Cluster, m: &Migrate, reserved: &[PlannedMove]) -> Result<Chosen> {
    let inv = Inventory::gather(ctx, model).await?;
    let mut reqs = vec![MoveRequest::new(&m.guest, &m.source, m.mode)];
    if m.mode == Mode::Live {
        measure_dirty_rates(ctx, model, &mut reqs).await;
    }
    let running: HashSet<String> = inv
        .info(&m.source)
        .map(|i| i.guests.iter().filter(|g| g.state == GuestState::Running).map(|g| g.spec.name.clone()).collect())
        .unwrap_or_default();
    predict(model, &mut reqs, &running);
    match pick(&inv, model, reserved, &reqs[0]) {
        Ok(c) => Ok(c),
        Err(u) => {
            if !ctx.json {
                for l in refusals(&u) {
                    println!("  {l}");
                }
            }
            bail!("TGTHOST not given and the planner places {} nowhere: {}", m.guest, u.reason)
        }
    }
}

/// The planner over `inv` (no host drained but those in maintenance), as the drain calls it.
pub(super) fn pick(inv: &Inventory, model: &Cluster, reserved: &[PlannedMove], req: &MoveRequest) -> Result<Chosen, Unplaced> {
    let busy = inv.busy();
    let input = inv.input(model, inv.views(&[]), &busy);
    let planned = vmove_plan::replan_one(&input, reserved, req, &[])?;
    let line = chosen_line(&planned, inv.info(&planned.to));
    Ok(Chosen { planned, line })
}

/// `TGTHOST not given: the planner chose host3 (the least loaded host that passes every
/// precheck: 5.6 GiB available, 1 vCPU committed on 2 CPUs; predicted 9 s)`.
pub(super) fn chosen_line(p: &PlannedMove, info: Option<&HostInfo>) -> String {
    let mut why = String::from("the least loaded host that passes every precheck");
    if let Some(i) = info {
        why.push_str(&format!(
            ": {} available, {} vCPU{} committed on {} CPUs",
            fmt_mib(i.memory_available_mib),
            i.vcpus_committed,
            if i.vcpus_committed == 1 { "" } else { "s" },
            i.cpu_count
        ));
    }
    why.push_str(&format!("; predicted {} s", p.predicted_s));
    for n in &p.notes {
        why.push_str(&format!("; {n}"));
    }
    format!("TGTHOST not given: the planner chose {} ({why})", p.to)
}

/// Why each host was refused, one line each: `REFUSED host2: memory-available: ...`.
pub(super) fn refusals(u: &Unplaced) -> Vec<String> {
    u.rejections
        .iter()
        .map(|r| format!("REFUSED {}: {}: {}", r.host.as_deref().unwrap_or("every host"), r.rule, r.reason))
        .collect()
}

/// A merged action as the planner must count it: its target taken by its guest.
pub(super) fn reserved(m: &Migrate) -> Option<PlannedMove> {
    let to = m.target.as_deref().filter(|_| m.moves_guest())?;
    Some(PlannedMove::counted(&m.guest, &m.source, to, m.mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmove_api::GuestStatus;
    use vmove_plan::Step;

    /// [`crate::testutil::SAMPLE`] with a third host and a second guest `vm2` (2 GiB) on host1.
    fn three_hosts() -> Cluster {
        let text = crate::testutil::SAMPLE.replace(
            "[[networks]]",
            "[[hosts]]\nname = \"host3\"\naddress = \"198.51.100.4:7450\"\n[[networks]]",
        ) + "[[guests]]\nname = \"vm2\"\nhost = \"host1\"\nvcpus = 1\nmemory_mib = 2048\nboot = { kind = \"lab\" }\n";
        Cluster::parse(&text, std::path::Path::new("/lab/cluster.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// An agent's inventory: 6 GiB, 256 MiB reserve, `committed_mib` taken; `guests` run there.
    fn info(name: &str, committed_mib: u64, guests: &[&str], model: &Cluster) -> HostInfo {
        let v = serde_json::json!({
            "name": name, "agent_version": "0.1.0", "qemu_version": "10.0.2", "hardware_model": "lab",
            "hardware_generation": 1, "accel": "tcg", "cpu_model": "qemu64", "cpu_flags": [], "cpu_count": 2,
            "memory_total_mib": 6144, "memory_free_mib": 6000 - committed_mib, "memory_reserve_mib": 256,
            "memory_committed_mib": committed_mib, "memory_available_mib": 5888 - committed_mib, "vcpus_committed": 0,
            "bridges": [{ "name": "lab-net" }], "pools": [], "console_ports_in_use": [],
            "console_port_range": [5900, 5999], "guests": [],
        });
        let mut info: HostInfo = serde_json::from_value(v).expect("inventory");
        for g in guests {
            let spec = model.guest(g).expect("guest").clone();
            info.guests.push(GuestStatus { spec, state: GuestState::Running, pid: None, uptime_s: None });
        }
        info
    }

    fn inventory(hosts: Vec<(&str, Result<HostInfo, &str>)>) -> Inventory {
        Inventory { hosts: hosts.into_iter().map(|(n, r)| (n.to_string(), r.map_err(String::from))).collect(), running: vec![] }
    }

    fn req(guest: &str) -> MoveRequest {
        MoveRequest::new(guest, "host1", Mode::Offline)
    }

    #[test]
    fn the_planner_chooses_the_least_loaded_host_and_says_why() {
        let c = three_hosts();
        let inv = inventory(vec![
            ("host1", Ok(info("host1", 2560, &["vm1", "vm2"], &c))),
            ("host2", Ok(info("host2", 3000, &[], &c))),
            ("host3", Ok(info("host3", 1000, &[], &c))),
        ]);
        let chosen = pick(&inv, &c, &[], &req("vm1")).unwrap_or_else(|u| panic!("{}", u.reason));
        assert_eq!(chosen.planned.to, "host3");
        assert!(chosen.line.starts_with("TGTHOST not given: the planner chose host3 (the least loaded host"), "{}", chosen.line);
        assert!(chosen.line.contains("4.8 GiB available"), "{}", chosen.line);
    }

    #[test]
    fn merged_moves_count_as_taken() {
        let c = three_hosts();
        // host3 has room for vm2 (2 GiB) or vm1 (512 MiB) but not both; host2 is fuller.
        let inv = inventory(vec![
            ("host1", Ok(info("host1", 2560, &["vm1", "vm2"], &c))),
            ("host2", Ok(info("host2", 5500, &[], &c))),
            ("host3", Ok(info("host3", 3700, &[], &c))),
        ]);
        let earlier = Migrate { guest: "vm2".into(), mode: Mode::Offline, source: "host1".into(), target: Some("host3".into()), step: None };
        let r = reserved(&earlier).expect("a whole migration moves its guest");
        let u = pick(&inv, &c, &[r], &req("vm1")).err().expect("no host has room once vm2 is counted on host3");
        assert!(u.reason.contains("vm1"), "{}", u.reason);
        let lines = refusals(&u);
        assert!(lines.iter().any(|l| l.starts_with("REFUSED host3: ")), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("REFUSED host2: ")), "{lines:?}");
        // Without the reservation vm1 fits on host3.
        assert_eq!(pick(&inv, &c, &[], &req("vm1")).map(|x| x.planned.to).ok().as_deref(), Some("host3"));
        // A single step that does not move the guest reserves nothing.
        assert_eq!(reserved(&Migrate { step: Some(Step::StopGuest), ..earlier }), None);
    }

    #[test]
    fn no_host_answering_places_the_guest_nowhere() {
        let c = three_hosts();
        let inv = inventory(vec![
            ("host1", Ok(info("host1", 2560, &["vm1", "vm2"], &c))),
            ("host2", Err("connection refused")),
            ("host3", Err("timed out")),
        ]);
        let u = pick(&inv, &c, &[], &req("vm1")).err().expect("nowhere");
        let lines = refusals(&u);
        assert!(lines.iter().any(|l| l.starts_with("REFUSED host2: ") && l.contains("connection refused")), "{lines:?}");
        assert!(!u.reason.contains('\n'), "{}", u.reason);
    }
}
