//! Guests placed earlier in the plan (or reserved) count on their target: memory, vCPUs,
//! console ports, MACs, names.
use super::*;
use crate::checks::CheckId;

#[test]
fn memory_of_earlier_placements_counts() {
    let mut w = World::new(3);
    w.guest("vm1", "host1", 8 * GIB, 2)
        .guest("vm2", "host1", 8 * GIB, 2)
        .guest("big", "host3", 10 * GIB, 2)
        .drain(&["host1"]);
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(targets(&p), [("vm1", "host2")]);
    assert_eq!(
        p.unplaced,
        [Unplaced {
            guest: "vm2".into(),
            from: "host1".into(),
            mode: Mode::Offline,
            reason: "vm2 (8 GiB, 2 vCPUs) fits no host: no host has 8 GiB available (best: host2 with 7 GiB)".into(),
            rejections: vec![
                rej(Some("host1"), check(CheckId::TargetIsNotSource), "source and target are the same host, host1"),
                rej(Some("host2"), check(CheckId::TargetMemory), "host2 has 7168 MiB available, vm2 needs 8192 MiB (memory is never overcommitted)"),
                rej(Some("host3"), check(CheckId::TargetMemory), "host3 has 5120 MiB available, vm2 needs 8192 MiB (memory is never overcommitted)"),
            ],
        }]
    );
}

#[test]
fn vcpus_of_earlier_placements_count() {
    let mut w = World::new(2);
    w.cluster.policy.vcpu_overcommit_ratio = 1.0;
    w.guest("g1", "host1", 2 * GIB, 5)
        .guest("g2", "host1", GIB, 4)
        .drain(&["host1"]);
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(targets(&p), [("g1", "host2")]);
    assert_eq!(
        p.unplaced[0].reason,
        "g2 (1 GiB, 4 vCPUs) fits no host: no host has room for 4 more vCPUs within ratio 1 (best: host2 with 3)"
    );
    assert_eq!(
        p.unplaced[0].rejections[1],
        rej(
            Some("host2"),
            check(CheckId::VcpuOvercommit),
            "overcommitted beyond policy: 9 vCPUs on 8 CPUs of host2, ratio 1 allows 8"
        )
    );
}

#[test]
fn console_ports_of_earlier_placements_count() {
    let mut w = World::new(2);
    w.guest("a", "host1", 3 * GIB, 1)
        .guest("b", "host1", 2 * GIB, 1)
        .guest("c", "host1", GIB, 1)
        .drain(&["host1"]);
    for g in ["a", "b", "c"] {
        w.spec(g).console_port = Some(5900);
    }
    w.host("host2").console_port_range = (5900, 5901);
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(targets(&p), [("a", "host2"), ("b", "host2")]);
    assert_eq!(
        (p.moves[0].console_port, p.moves[1].console_port),
        (Some(5900), Some(5901))
    );
    assert_eq!(p.moves[0].notes, Vec::<String>::new());
    assert_eq!(
        p.moves[1].notes,
        ["b's console port 5900 is taken on host2: it gets 5901 (1 of 2 free)"]
    );
    assert_eq!(
        p.unplaced[0].reason,
        "c (1 GiB, 1 vCPU) fits no host: console-port-on-target fails on 1 of 1 hosts (host2), \
         e.g. no free console port on host2 (range 5900-5901, 2 in use)"
    );
}

#[test]
fn macs_of_earlier_placements_count() {
    let mut w = World::new(3);
    w.guest("m1", "host1", 2 * GIB, 1)
        .guest("m2", "host1", GIB, 1)
        .guest("load", "host3", 10 * GIB, 1)
        .drain(&["host1"]);
    for (g, mac) in [("m1", "52:54:00:00:00:0a"), ("m2", "52:54:00:00:00:0A")] {
        w.spec(g).nics[0].mac = mac.into();
        let reported = w.host("host1").guests.iter_mut().find(|s| s.spec.name == g);
        reported.unwrap().spec.nics[0].mac = mac.into();
    }
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(targets(&p), [("m1", "host2"), ("m2", "host3")]);

    let r = MoveRequest::new("m2", "host1", Mode::Offline);
    let u = replan_one(&w.input(), &p.moves[..1], &r, &["host3".into()]).unwrap_err();
    assert_eq!(
        u.rejections[1],
        rej(
            Some("host2"),
            check(CheckId::MacsFreeOnTarget),
            "in use on host2: 52:54:00:00:00:0A (m1)"
        )
    );
}

#[test]
fn a_guest_requested_twice_is_placed_once() {
    let mut w = World::new(3);
    w.guest("vm1", "host1", GIB, 1).drain(&["host1"]);
    let r = MoveRequest::new("vm1", "host1", Mode::Offline);
    let p = w.plan(&[r.clone(), r]);
    assert_eq!(targets(&p), [("vm1", "host2")]);
    assert_eq!(
        p.unplaced,
        [Unplaced {
            guest: "vm1".into(),
            from: "host1".into(),
            mode: Mode::Offline,
            reason: "vm1 appears more than once in the request list".into(),
            rejections: vec![rej(
                None,
                Rule::Planner(PlannerRule::DuplicateRequest),
                "vm1 is already in this plan"
            )],
        }]
    );
}

#[test]
fn replan_counts_reserved_moves_and_skips_excluded_hosts() {
    let mut w = World::new(4);
    w.guest("vm1", "host1", 8 * GIB, 2)
        .guest("vm2", "host1", 8 * GIB, 2)
        .drain(&["host1"]);
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(targets(&p), [("vm1", "host2"), ("vm2", "host3")]);

    // vm2's move to host3 failed: host2 is full with vm1, host4 is free.
    let r = MoveRequest::new("vm2", "host1", Mode::Offline);
    let m = replan_one(&w.input(), &p.moves, &r, &["host3".into()]).unwrap();
    assert_eq!((m.guest.as_str(), m.to.as_str()), ("vm2", "host4"));
    assert_eq!(m.notes, ["replanned without host3"]);

    // Without the reservation host2 would do.
    let m = replan_one(&w.input(), &[], &r, &["host3".into()]).unwrap();
    assert_eq!(m.to, "host2");

    // Nothing left: host4 excluded too.
    let u = replan_one(&w.input(), &p.moves, &r, &["host3".into(), "host4".into()]).unwrap_err();
    assert_eq!(
        u.reason,
        "vm2 (8 GiB, 2 vCPUs) fits no host: no host has 8 GiB available (best: host2 with 7 GiB); \
         excluded: host3, host4"
    );
}

#[test]
fn replan_ignores_the_guests_own_reservation() {
    let mut w = World::new(2);
    w.guest("vm1", "host1", 8 * GIB, 2).drain(&["host1"]);
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(targets(&p), [("vm1", "host2")]);
    let r = MoveRequest::new("vm1", "host1", Mode::Offline);
    let m = replan_one(&w.input(), &p.moves, &r, &[]).unwrap();
    assert_eq!(m, p.moves[0]);
}

#[test]
fn predictions_come_from_the_request_or_the_model() {
    let mut w = World::new(2);
    w.guest("vm1", "host1", 2 * GIB, 1)
        .guest("vm2", "host1", GIB, 1)
        .drain(&["host1"]);
    let mut r1 = MoveRequest::new("vm1", "host1", Mode::Live);
    r1.predicted_s = Some(42);
    let r2 = MoveRequest::new("vm2", "host1", Mode::Live);
    let p = w.plan(&[r1, r2]);
    // 1 GiB over 1 Gbit/s: 1073741824 / 125000000 = 8.6, so 9 s, plus 5 s setup.
    assert_eq!(
        p.moves.iter().map(|m| m.predicted_s).collect::<Vec<_>>(),
        [42, 14]
    );
}

#[test]
fn requests_for_a_host_are_its_guests_in_name_order() {
    let mut w = World::new(2);
    w.guest("b", "host1", GIB, 1)
        .guest("a", "host1", GIB, 1)
        .guest("c", "host2", GIB, 1);
    assert_eq!(
        MoveRequest::for_host(&w.cluster, "host1", Mode::Live),
        [
            MoveRequest::new("a", "host1", Mode::Live),
            MoveRequest::new("b", "host1", Mode::Live)
        ]
    );
}
