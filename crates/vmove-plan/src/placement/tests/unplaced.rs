//! What an operator reads when a guest fits nowhere, and the serialized forms.
use super::*;
use crate::checks::CheckId;

#[test]
fn no_host_has_the_memory_names_the_best() {
    let mut w = World::new(3);
    w.guest("vm1", "host1", 8 * GIB, 4)
        .guest("a", "host2", 11 * GIB, 1)
        .guest("b", "host3", 8 * GIB + 819, 1)
        .drain(&["host1"]);
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(
        p.unplaced[0].reason,
        "vm1 (8 GiB, 4 vCPUs) fits no host: no host has 8 GiB available (best: host3 with 6.2 GiB)"
    );
}

#[test]
fn several_rules_are_summarised_per_rule() {
    let mut w = World::new(5);
    w.guest("vm1", "host1", 8 * GIB, 4).drain(&["host1"]);
    w.spec("vm1").nics[0].network = "prod".into();
    w.host("host1").guests[0].spec.nics[0].network = "prod".into();
    // host2: too little memory; host3: no prod bridge; host4: both; host5: drained.
    w.host("host2").memory_available_mib = 4 * GIB;
    w.host("host3").bridges.truncate(1);
    let h4 = w.host("host4");
    h4.memory_available_mib = 7 * GIB;
    h4.bridges.truncate(1);
    w.drain(&["host5"]);
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(
        p.unplaced[0].reason,
        "vm1 (8 GiB, 4 vCPUs) fits no host: \
         networks-on-target fails on 2 of 3 hosts (host3, host4), e.g. on host3: bridge br-prod (network prod) missing; \
         2 of 3 hosts lack 8 GiB available (best of them: host4 with 7 GiB); \
         drained: host5"
    );
    let hosts_rules: Vec<(Option<&str>, Rule)> = p.unplaced[0]
        .rejections
        .iter()
        .map(|r| (r.host.as_deref(), r.rule))
        .collect();
    assert_eq!(
        hosts_rules,
        [
            (Some("host1"), check(CheckId::TargetIsNotSource)),
            (Some("host2"), check(CheckId::TargetMemory)),
            (Some("host3"), check(CheckId::NetworksOnTarget)),
            (Some("host4"), check(CheckId::NetworksOnTarget)),
            (Some("host4"), check(CheckId::TargetMemory)),
            (Some("host5"), Rule::Planner(PlannerRule::HostDrained)),
        ]
    );
}

#[test]
fn long_host_lists_are_shortened() {
    let mut w = World::new(7);
    w.guest("vm1", "host1", GIB, 1).drain(&["host1"]);
    for i in 2..=7 {
        w.host(&format!("host{i}")).pools.clear();
    }
    let p = w.plan_host("host1", Mode::Offline);
    assert_eq!(
        p.unplaced[0].reason,
        "vm1 (1 GiB, 1 vCPU) fits no host: pools-on-target fails on 6 of 6 hosts \
         (host2, host3, host4 and 3 more), e.g. on host2: pool shared missing"
    );
}

#[test]
fn sizes_read_naturally() {
    assert_eq!(fmt_mib(512), "512 MiB");
    assert_eq!(fmt_mib(1023), "1023 MiB");
    assert_eq!(fmt_mib(1024), "1 GiB");
    assert_eq!(fmt_mib(8 * 1024), "8 GiB");
    assert_eq!(fmt_mib(6349), "6.2 GiB");
    assert_eq!(fmt_mib(1536), "1.5 GiB");
    assert_eq!(fmt_mib(2047), "2 GiB");
}

#[test]
fn outputs_serialize_with_stable_ids() {
    let mut w = World::new(2);
    w.guest("vm1", "host1", GIB, 1)
        .grouped("db")
        .drain(&["host1"]);
    w.guest("vm2", "host1", 32 * GIB, 1);
    let p = w.plan_host("host1", Mode::Offline);
    let j = serde_json::to_value(&p).unwrap();
    assert_eq!(
        j["moves"][0],
        serde_json::json!({
            "guest": "vm1", "from": "host1", "to": "host2", "mode": "offline",
            "memory_mib": 1024, "vcpus": 1, "group": "db", "console_port": 5900,
            "predicted_s": 65
        })
    );
    assert_eq!(
        j["unplaced"][0]["rejections"],
        serde_json::json!([
            {"host": "host1", "rule": "target-is-not-source", "reason": "source and target are the same host, host1"},
            {"host": "host2", "rule": "target-memory", "reason": "host2 has 15360 MiB available, vm2 needs 32768 MiB (memory is never overcommitted)"}
        ])
    );
    let back: Placement = serde_json::from_value(j).unwrap();
    assert_eq!(back, p);
    for r in [
        Rule::Planner(PlannerRule::HostDrained),
        Rule::Planner(PlannerRule::HostExcluded),
        Rule::Planner(PlannerRule::RequiredCapabilities),
        Rule::Planner(PlannerRule::DuplicateRequest),
        check(CheckId::TargetMemory),
    ] {
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, format!("\"{r}\""));
        assert_eq!(serde_json::from_str::<Rule>(&s).unwrap(), r);
    }
}

#[test]
fn predicted_durations_of_the_default_model() {
    let m = DurationModel::default();
    assert_eq!(m.predict_s(1024, Mode::Live, None), 5 + 9);
    assert_eq!(m.predict_s(8 * 1024, Mode::Live, None), 5 + 69);
    // Half the link dirtied: twice as long.
    assert_eq!(m.predict_s(1024, Mode::Live, Some(62_500_000)), 5 + 18);
    // Dirtying beyond the link counts as 90 %.
    assert_eq!(m.predict_s(1024, Mode::Live, Some(u64::MAX)), 5 + 86);
    assert_eq!(m.predict_s(8 * 1024, Mode::Offline, None), 65);
    assert_eq!(m.predict_s(1024, Mode::OfflineForce, None), 65);
    let p = vmove_model::Policy {
        migration_link_bytes_per_s: Some(1_250_000_000),
        ..vmove_model::Policy::default()
    };
    assert_eq!(
        DurationModel::for_policy(&p).predict_s(1024, Mode::Live, None),
        6
    );
}
