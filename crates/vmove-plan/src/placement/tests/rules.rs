//! Every rule: a host that passes it takes the guest, a host that fails it is refused with
//! the check's reason.
use super::*;
use crate::checks::CheckId;

/// `vm1` (2 GiB, 2 vCPUs, MAC ...:01) on `host1`, drained; `host2` empty and preferred;
/// `host3` carries `other` (1 GiB), so it comes second.
fn world() -> World {
    let mut w = World::new(3);
    w.guest("vm1", "host1", 2 * GIB, 2)
        .guest("other", "host3", GIB, 1)
        .drain(&["host1"]);
    w
}

fn request(mode: Mode) -> MoveRequest {
    MoveRequest::new("vm1", "host1", mode)
}

#[test]
fn the_least_loaded_host_takes_the_guest() {
    let w = world();
    let p = w.plan(&[request(Mode::Offline)]);
    assert_eq!(
        p,
        Placement {
            moves: vec![PlannedMove {
                guest: "vm1".into(),
                from: "host1".into(),
                to: "host2".into(),
                mode: Mode::Offline,
                memory_mib: 2 * GIB,
                vcpus: 2,
                group: None,
                console_port: Some(5900),
                predicted_s: 65,
                notes: vec![],
            }],
            unplaced: vec![],
        }
    );
}

struct Case {
    what: &'static str,
    mode: Mode,
    /// Breaks `host2` (or the request) for one rule.
    breaks: fn(&mut World, &mut MoveRequest),
    rule: Rule,
    reason: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            what: "missing bridge",
            mode: Mode::Offline,
            breaks: |w, _| w.host("host2").bridges.retain(|b| b.name != "lab-net"),
            rule: check(CheckId::NetworksOnTarget),
            reason: "on host2: bridge lab-net (network lab-net) missing",
        },
        Case {
            what: "wrong VLAN",
            mode: Mode::Offline,
            breaks: |w, _| w.host("host2").bridges[0].vlan = Some(7),
            rule: check(CheckId::NetworksOnTarget),
            reason: "on host2: bridge lab-net is VLAN 7, network lab-net is untagged",
        },
        Case {
            what: "missing pool",
            mode: Mode::Offline,
            breaks: |w, _| w.host("host2").pools.clear(),
            rule: check(CheckId::PoolsOnTarget),
            reason: "on host2: pool shared missing",
        },
        Case {
            what: "read-only pool",
            mode: Mode::Offline,
            breaks: |w, _| w.host("host2").pools[0].writable = false,
            rule: check(CheckId::PoolsOnTarget),
            reason: "on host2: pool shared (/srv/shared) is not writable",
        },
        Case {
            what: "memory",
            mode: Mode::Offline,
            breaks: |w, _| w.host("host2").memory_available_mib = 2047,
            rule: check(CheckId::TargetMemory),
            reason: "host2 has 2047 MiB available, vm1 needs 2048 MiB (memory is never overcommitted)",
        },
        Case {
            what: "vCPU ratio",
            mode: Mode::Offline,
            breaks: |w, _| w.host("host2").vcpus_committed = 31,
            rule: check(CheckId::VcpuOvercommit),
            reason: "overcommitted beyond policy: 33 vCPUs on 8 CPUs of host2, ratio 4 allows 32",
        },
        Case {
            what: "name in use",
            mode: Mode::Offline,
            breaks: |w, _| {
                let mut twin = w.spec("vm1").clone();
                twin.nics.clear();
                w.host("host2").guests.push(GuestStatus {
                    spec: twin,
                    state: GuestState::Stopped,
                    pid: None,
                    uptime_s: None,
                });
            },
            rule: check(CheckId::GuestNameFreeOnTarget),
            reason: "host2 already has a guest named vm1 (stopped)",
        },
        Case {
            what: "MAC in use",
            mode: Mode::Offline,
            breaks: |w, _| {
                let mut twin = w.spec("vm1").clone();
                twin.name = "other2".into();
                twin.nics[0].mac = "52:54:00:00:00:01".into();
                w.host("host2").guests.push(GuestStatus {
                    spec: twin,
                    state: GuestState::Running,
                    pid: None,
                    uptime_s: None,
                });
            },
            rule: check(CheckId::MacsFreeOnTarget),
            reason: "in use on host2: 52:54:00:00:00:01 (other2)",
        },
        Case {
            what: "no console port",
            mode: Mode::Offline,
            breaks: |w, _| {
                let h = w.host("host2");
                h.console_port_range = (5900, 5901);
                h.console_ports_in_use = vec![5900, 5901];
            },
            rule: check(CheckId::ConsolePortOnTarget),
            reason: "no free console port on host2 (range 5900-5901, 2 in use)",
        },
        Case {
            what: "older QEMU",
            mode: Mode::Offline,
            breaks: |w, _| w.host("host2").qemu_version = "7.2.0".into(),
            rule: check(CheckId::TargetVersions),
            reason: "QEMU 7.2.0 on host2 is older than 8.2.2 on host1",
        },
        Case {
            what: "other work on the target",
            mode: Mode::Offline,
            breaks: |w, _| {
                w.busy.push(Busy {
                    guest: None,
                    host: Some("host2".into()),
                    what: "job host2-7 MIGRATE GUEST vm9 running".into(),
                })
            },
            rule: check(CheckId::NoOutstandingWork),
            reason: "outstanding work: host2: job host2-7 MIGRATE GUEST vm9 running",
        },
        Case {
            what: "an agent answering under another name",
            mode: Mode::Offline,
            breaks: |w, _| w.host("host2").name = "host7".into(),
            rule: check(CheckId::TargetReachable),
            reason: "the agent reached for target host2 identifies itself as host7",
        },
        Case {
            what: "LIVE: CPU",
            mode: Mode::Live,
            breaks: |w, _| {
                let h = w.host("host2");
                h.cpu_model = "EPYC".into();
                h.cpu_flags.retain(|f| f != "avx2");
            },
            rule: check(CheckId::SameHardwareAndCpu),
            reason: "host1 and host2 differ (CPU model Xeon-E5 vs EPYC) and host2 lacks 1 of host1's CPU flags: avx2",
        },
        Case {
            what: "LIVE: hardware generation",
            mode: Mode::Live,
            breaks: |w, _| {
                w.cluster.policy.min_hardware_generation = 1;
                w.host("host2").hardware_generation = 0;
            },
            rule: check(CheckId::PolicyMinimums),
            reason: "below policy minimums: host2 hardware generation 0 < 1",
        },
        Case {
            what: "QEMU capability",
            mode: Mode::Live,
            breaks: |w, r| {
                r.required_capabilities = vec!["postcopy-ram".into()];
                w.caps.insert("host2".into(), vec!["multifd".into()]);
                w.caps.insert(
                    "host3".into(),
                    vec!["multifd".into(), "postcopy-ram".into()],
                );
            },
            rule: Rule::Planner(PlannerRule::RequiredCapabilities),
            reason: "host2 lacks QEMU capability postcopy-ram",
        },
    ]
}

#[test]
fn a_host_failing_a_rule_is_passed_over_for_one_that_passes() {
    for c in cases() {
        let mut w = world();
        let mut r = request(c.mode);
        (c.breaks)(&mut w, &mut r);
        let p = w.plan(&[r]);
        assert_eq!(targets(&p), [("vm1", "host3")], "{}: {p:#?}", c.what);
    }
}

#[test]
fn a_host_failing_a_rule_is_refused_with_the_checks_reason() {
    for c in cases() {
        let mut w = world();
        let mut r = request(c.mode);
        (c.breaks)(&mut w, &mut r);
        let u = replan_one(&w.input(), &[], &r, &["host3".into()]).unwrap_err();
        assert_eq!(
            u.rejections,
            [
                rej(
                    Some("host1"),
                    check(CheckId::TargetIsNotSource),
                    "source and target are the same host, host1"
                ),
                rej(Some("host2"), c.rule, c.reason),
                rej(
                    Some("host3"),
                    Rule::Planner(PlannerRule::HostExcluded),
                    "host3 excluded by the caller"
                ),
            ],
            "{}",
            c.what
        );
    }
}

#[test]
fn every_rule_passing_on_both_hosts_keeps_host2() {
    for c in cases() {
        let w = world();
        let mut r = request(c.mode);
        if c.rule == Rule::Planner(PlannerRule::RequiredCapabilities) {
            r.required_capabilities = vec![];
        }
        assert_eq!(targets(&w.plan(&[r])), [("vm1", "host2")], "{}", c.what);
    }
}

#[test]
fn drained_unreachable_and_unknown_hosts_are_skipped() {
    let mut w = World::new(5);
    w.guest("vm1", "host1", 2 * GIB, 2)
        .drain(&["host1", "host2"]);
    w.down.insert("host3".into(), "connection refused".into());
    w.infos.remove("host4");
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(targets(&p), [("vm1", "host5")]);

    w.drain(&["host5"]);
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(
        p.unplaced,
        [Unplaced {
            guest: "vm1".into(),
            from: "host1".into(),
            mode: Mode::Offline,
            reason: "vm1 (2 GiB, 2 vCPUs) fits no host: no host left to try; unreachable: host3, host4; drained: host2, host5".into(),
            rejections: vec![
                rej(Some("host1"), check(CheckId::TargetIsNotSource), "source and target are the same host, host1"),
                rej(Some("host2"), Rule::Planner(PlannerRule::HostDrained), "host2 is drained (maintenance: no migrations in)"),
                rej(Some("host3"), check(CheckId::TargetReachable), "target host3 unreachable: connection refused"),
                rej(Some("host4"), check(CheckId::TargetReachable), "target host4 unreachable: no inventory given to the planner"),
                rej(Some("host5"), Rule::Planner(PlannerRule::HostDrained), "host5 is drained (maintenance: no migrations in)"),
            ],
        }]
    );
    assert!(p.moves.is_empty());
}

#[test]
fn target_independent_failures_leave_the_guest_unplaced_once() {
    let mut w = World::new(2);
    w.guest("vm1", "host1", GIB, 1).drain(&["host1"]);
    w.host("host1").guests[0].state = GuestState::Stopped;
    let p = w.plan_host("host1", Mode::Live);
    assert_eq!(
        p.unplaced[0].rejections,
        [rej(
            None,
            check(CheckId::GuestRunning),
            "vm1 is stopped on host1: LIVE needs a running guest (use MODE=OFFLINE)"
        )]
    );
    assert_eq!(
        p.unplaced[0].reason,
        "vm1 cannot move: guest-running: vm1 is stopped on host1: LIVE needs a running guest (use MODE=OFFLINE)"
    );
    assert_eq!(
        targets(&w.plan_host("host1", Mode::Offline)),
        [("vm1", "host2")]
    );

    let p = w.plan(&[MoveRequest::new("vm9", "host1", Mode::Offline)]);
    assert_eq!(
        p.unplaced[0].reason,
        "vm9 cannot move: guest-in-cluster-file: no guest named vm9 in the cluster file of cluster lab"
    );
}

#[test]
fn a_dead_source_stops_offline_but_not_offlineforce() {
    let mut w = World::new(3);
    w.guest("vm1", "host1", GIB, 1);
    w.down.insert("host1".into(), "timed out".into());
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(
        p.unplaced[0].reason,
        "vm1 cannot move: cluster-file-matches-source: not evaluated: source host1 unreachable (timed out); \
         source-reachable: source host1 unreachable: timed out"
    );
    let p = w.plan_host("host1", Mode::OfflineForce);
    assert_eq!(targets(&p), [("vm1", "host2")]);
    assert_eq!(p.moves[0].notes, Vec::<String>::new());
}

#[test]
fn outstanding_work_on_the_guest_stops_it_before_any_host() {
    let mut w = World::new(2);
    w.guest("vm1", "host1", GIB, 1).drain(&["host1"]);
    w.busy.push(Busy {
        guest: Some("vm1".into()),
        host: None,
        what: "job host1-3 MIGRATE GUEST vm1 failed, not recovered".into(),
    });
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(
        p.unplaced[0].rejections,
        [rej(
            None,
            check(CheckId::NoOutstandingWork),
            "outstanding work: vm1: job host1-3 MIGRATE GUEST vm1 failed, not recovered"
        )]
    );
}

#[test]
fn warnings_become_notes() {
    let mut w = World::new(2);
    w.guest("vm1", "host1", GIB, 4).drain(&["host1"]);
    w.host("host2").vcpus_committed = 6;
    let p = w.plan_host("host1", Mode::Live);
    assert_eq!(
        p.moves[0].notes,
        [
            "WARN predicted-convergence: not measured: dirty rate and link throughput unknown",
            "WARN vcpu-overcommit: overcommitted: 10 vCPUs on 8 CPUs of host2 (ratio 4 allows 32)",
        ]
    );
    w.link = Some(100 * 1_048_576);
    let mut r = MoveRequest::new("vm1", "host1", Mode::Live);
    r.dirty_rate_bytes_per_s = Some(200 * 1_048_576);
    let p = w.plan(&[r]);
    assert_eq!(
        p.unplaced[0].reason,
        "vm1 cannot move: predicted-convergence: will not converge under converge=auto: 1024 MiB at 100 MB/s with 200 MB/s dirtied; it would time out after 10m; no convergence policy would"
    );
}

#[test]
fn a_host_whose_agent_reports_maintenance_takes_no_guest() {
    let mut w = World::new(3);
    w.guest("vm1", "host1", GIB, 1).drain(&["host1"]);
    w.host("host2").maintenance = Some(vmove_model::inventory::Maintenance { since_ms: 7 });
    // As the CLI builds its views: drained from the agent's report.
    let views: Vec<HostView> = w.infos.values().map(HostView::answered).collect();
    assert_eq!(views.iter().filter(|v| v.drained).map(|v| v.name.as_str()).collect::<Vec<_>>(), ["host2"]);
    let p = w.plan_host("host1", Mode::Live);
    // The fixture's own `drained` list does not name host2: the precheck refuses it.
    assert_eq!(targets(&p), [("vm1", "host3")]);
    w.host("host3").maintenance = Some(vmove_model::inventory::Maintenance { since_ms: 8 });
    let p = w.plan_host("host1", Mode::Live);
    assert!(p.moves.is_empty());
    let rules: Vec<(Option<&str>, Rule)> = p.unplaced[0].rejections.iter().map(|r| (r.host.as_deref(), r.rule)).collect();
    assert_eq!(
        rules,
        [
            (Some("host1"), check(CheckId::TargetIsNotSource)),
            (Some("host2"), check(CheckId::TargetNotInMaintenance)),
            (Some("host3"), check(CheckId::TargetNotInMaintenance)),
        ]
    );
    assert_eq!(
        p.unplaced[0].reason,
        "vm1 (1 GiB, 1 vCPU) fits no host: target-not-in-maintenance fails on 2 of 2 hosts (host2, host3), e.g. target host2 \
         is in maintenance (drained): it takes no migrations in until `vmove host undrain host2`"
    );
}
