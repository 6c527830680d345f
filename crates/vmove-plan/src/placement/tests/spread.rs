//! Spreading the load, tie-breaks, determinism and anti-affinity.
use super::*;
use crate::checks::CheckId;

/// host1 drained with guests of these sizes (GiB, 1 vCPU each); host2..host(n) empty.
fn drain_world(hosts: usize, sizes: &[(&str, u64)]) -> World {
    let mut w = World::new(hosts);
    for (name, gib) in sizes {
        w.guest(name, "host1", gib * GIB, 1);
    }
    w.drain(&["host1"]);
    w
}

#[test]
fn largest_first_each_to_the_least_loaded_host() {
    // 15 GiB usable per host. a 8 -> host2 (tie, name); b 6 -> host3 (tie with host4);
    // c 4 -> host4; d 4 -> host4 (8/15 < 10/15 < 12/15); e 2 -> host3 (8/15);
    // f 1 -> all at 9/15, host2 has the fewest vCPUs (2/32 against 3/32).
    let w = drain_world(
        4,
        &[("f", 1), ("e", 2), ("d", 4), ("c", 4), ("b", 6), ("a", 8)],
    );
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(
        targets(&p),
        [
            ("a", "host2"),
            ("b", "host3"),
            ("c", "host4"),
            ("d", "host4"),
            ("e", "host3"),
            ("f", "host2"),
        ]
    );
    assert!(p.unplaced.is_empty());
}

#[test]
fn the_vcpu_share_counts_too() {
    let mut w = drain_world(3, &[("vm1", 2)]);
    w.spec("vm1").vcpus = 2;
    w.host("host1").guests[0].spec.vcpus = 2;
    // host2: memory 2/15, vCPUs 30/32; host3: memory 12/15, vCPUs 2/32.
    w.host("host2").vcpus_committed = 28;
    let h3 = w.host("host3");
    h3.memory_committed_mib = 10 * GIB;
    h3.memory_available_mib = 5 * GIB;
    assert_eq!(
        targets(&w.plan_host("host1", Mode::Offline)),
        [("vm1", "host3")]
    );
    w.host("host2").vcpus_committed = 20;
    assert_eq!(
        targets(&w.plan_host("host1", Mode::Offline)),
        [("vm1", "host2")]
    );
}

#[test]
fn ties_go_to_the_first_host_in_natural_order() {
    let mut w = drain_world(10, &[("vm1", 1)]);
    w.drain(&[
        "host2", "host3", "host4", "host5", "host6", "host7", "host8",
    ]);
    assert_eq!(
        targets(&w.plan_host("host1", Mode::Offline)),
        [("vm1", "host9")]
    );
}

#[test]
fn the_plan_does_not_depend_on_request_order_or_repetition() {
    let w = drain_world(
        5,
        &[("a", 3), ("b", 3), ("c", 2), ("d", 2), ("e", 1), ("f", 5)],
    );
    let mut r = MoveRequest::for_host(&w.cluster, "host1", Mode::Live);
    let first = w.plan(&r);
    r.reverse();
    assert_eq!(w.plan(&r), first);
    r.swap(0, 3);
    assert_eq!(w.plan(&r), first);
    assert_eq!(first.moves.len(), 6);
    assert_eq!(
        serde_json::to_string(&w.plan(&r)).unwrap(),
        serde_json::to_string(&first).unwrap()
    );
}

#[test]
fn guests_of_one_group_go_to_different_hosts_when_they_can() {
    // Without the group db2 would join db1 on host2 (8/15 against host3's 10/15).
    let mut w = drain_world(3, &[("db1", 4), ("db2", 4)]);
    w.guest("load", "host3", 6 * GIB, 1);
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(targets(&p), [("db1", "host2"), ("db2", "host2")]);

    for g in ["db1", "db2"] {
        w.spec(g).group = Some("db".into());
    }
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(targets(&p), [("db1", "host2"), ("db2", "host3")]);
    assert!(p.moves.iter().all(|m| m.notes.is_empty()), "{p:#?}");
    assert_eq!(p.moves[1].group.as_deref(), Some("db"));
}

#[test]
fn a_group_member_already_on_a_host_counts() {
    let mut w = drain_world(3, &[("db1", 2)]);
    w.grouped("db");
    w.guest("db0", "host2", GIB, 1).grouped("db");
    w.guest("load", "host3", 4 * GIB, 1);
    assert_eq!(
        targets(&w.plan_host("host1", Mode::Offline)),
        [("db1", "host3")]
    );
}

#[test]
fn the_cluster_files_group_wins_over_the_agents() {
    let mut w = drain_world(3, &[("db1", 2)]);
    w.grouped("db");
    w.guest("x", "host2", GIB, 1);
    w.guest("load", "host3", 4 * GIB, 1);
    // The agent on host2 still thinks x is in group db; the file says it is in none.
    w.host("host2").guests[0].spec.group = Some("db".into());
    assert_eq!(
        targets(&w.plan_host("host1", Mode::Offline)),
        [("db1", "host2")]
    );
    // A guest the file does not know keeps the agent's group.
    w.cluster.guests.retain(|g| g.name != "x");
    assert_eq!(
        targets(&w.plan_host("host1", Mode::Offline)),
        [("db1", "host3")]
    );
}

#[test]
fn without_an_alternative_group_members_share_a_host_and_say_so() {
    let mut w = drain_world(4, &[("db1", 4), ("db2", 4), ("db3", 2)]);
    for g in ["db1", "db2", "db3"] {
        w.spec(g).group = Some("db".into());
    }
    // host4 has no group member but cannot take the guests (no lab-net bridge).
    w.host("host4").bridges.clear();
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(
        targets(&p),
        [("db1", "host2"), ("db2", "host3"), ("db3", "host2")]
    );
    assert_eq!(
        p.moves[2].notes,
        ["anti-affinity: no host without a guest of group db fits; db3 shares host2 with db1"]
    );
    let r = MoveRequest::new("db3", "host1", Mode::Offline);
    let u = replan_one(
        &w.input(),
        &p.moves[..2],
        &r,
        &["host2".into(), "host3".into()],
    )
    .unwrap_err();
    assert_eq!(
        u.rejections[3],
        rej(
            Some("host4"),
            check(CheckId::NetworksOnTarget),
            "on host4: bridge lab-net (network lab-net) missing"
        )
    );
}
